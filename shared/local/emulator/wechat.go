package emulator

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// WeChat emulates the official account's global token (cgi-bin/token,
// cgi-bin/stable_token) and web authorization (connect/oauth2/authorize,
// sns/oauth2/access_token, sns/oauth2/refresh_token) for one app. As at
// WeChat, the tokens of cgi-bin/token and of stable_token are separate:
// a call to one never ends a token of the other.
type WeChat struct {
	core
	AppID, Secret string
	// DailyQuota caps cgi-bin/token calls per day (2000 at WeChat).
	DailyQuota int
	// TokenLength is the length of issued global tokens (WeChat's reach 512).
	TokenLength int
	// StableForceLimit caps stable_token calls with force_refresh that
	// issue a token, per China Standard Time day (20 at WeChat).
	StableForceLimit int

	globalIssued int
	// valid global tokens and when each stops working
	global map[string]time.Time
	// replaced: global tokens whose life a newer token cut short (the API
	// then says 40001 "not latest" rather than 42001 "expired"); killed:
	// ended by KillAccess.
	replaced, killed map[string]bool
	// current is cgi-bin/token's latest token. stableCurrent is
	// stable_token's, and stablePrevious the one it replaced: WeChat keeps
	// the two APIs' tokens apart ("完全隔离，互不影响"), so neither API's
	// calls end the other's tokens.
	current, stableCurrent, stablePrevious string
	forceDay                               string
	forcedToday                            int
	lastForced                             time.Time
	stable                                 StableTokenStats
	killCount                              int
	codes                                  map[string]*wechatCode
	refresh                                map[string]*wechatGrant
	userTokens                             map[string]time.Time
	users                                  int
	quotaDay                               string
	quotaUsed                              int
}

type wechatCode struct {
	openid, scope string
	expires       time.Time
	used          bool
}

type wechatGrant struct {
	openid, scope string
	expires       time.Time
}

// StableTokenStats counts cgi-bin/stable_token calls that passed the
// credential check, by mode and outcome.
type StableTokenStats struct {
	// Normal counts calls without force_refresh; NormalIssued those of
	// them that got a new token (the current one had five minutes or less
	// left, or there was none). The others got the current token back.
	Normal, NormalIssued int
	// Forced counts calls with force_refresh. ForcedIssued got a new
	// token; ForcedIgnored came within 30 s of the last forced issue and
	// got the current token back; ForcedRefused came after the day's
	// StableForceLimit was spent and got errcode 45009.
	Forced, ForcedIssued, ForcedIgnored, ForcedRefused int
}

// Documented lifetimes.
const (
	WeChatTokenTTL    = 7200 * time.Second
	WeChatOverlap     = 5 * time.Minute
	WeChatCodeTTL     = 5 * time.Minute
	WeChatRefreshTTL  = 30 * 24 * time.Hour
	weChatForceMinGap = 30 * time.Second
)

// NewWeChat returns an emulator for one app.
func NewWeChat(appID, secret string) *WeChat {
	return &WeChat{core: newCore(), AppID: appID, Secret: secret, DailyQuota: 2000, TokenLength: 512, StableForceLimit: 20,
		global: map[string]time.Time{}, replaced: map[string]bool{}, killed: map[string]bool{}, codes: map[string]*wechatCode{}, refresh: map[string]*wechatGrant{}, userTokens: map[string]time.Time{}}
}

func (e *WeChat) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.serve(w, r, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/cgi-bin/token":
			e.token(w, r)
		case "/cgi-bin/stable_token":
			e.stableToken(w, r)
		case "/cgi-bin/getcallbackip":
			e.checkGlobal(w, r)
		case "/connect/oauth2/authorize":
			e.authorize(w, r)
		case "/sns/oauth2/access_token":
			e.exchange(w, r)
		case "/sns/oauth2/refresh_token":
			e.refreshToken(w, r)
		case "/sns/auth":
			e.checkUser(w, r)
		case APIPath:
			e.api(w, r)
		default:
			errcode(w, 40066, "invalid url")
		}
	})
}

func errcode(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, http.StatusOK, map[string]any{"errcode": code, "errmsg": msg})
}

// GlobalTokenCalls is how many global tokens were issued (token or stable_token).
func (e *WeChat) GlobalTokenCalls() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.globalIssued
}

// ValidGlobal reports whether a global token works now.
func (e *WeChat) ValidGlobal(token string) bool {
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	exp, ok := e.global[token]
	return ok && now.Before(exp) && !e.killed[token]
}

// StableStats returns the stable_token counters.
func (e *WeChat) StableStats() StableTokenStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stable
}

// CurrentGlobal is the global token stable_token's normal mode hands out
// now ("" before the first).
func (e *WeChat) CurrentGlobal() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stableCurrent
}

// KillAccess ends one access token now, a global or a web-authorization
// one, without ending anything else: a user's refresh token keeps working,
// and a killed global token stays the current one, so stable_token's
// normal mode still hands it back (WeChat does, which is why a client
// that saw it rejected must ask with force_refresh). APIPath answers
// errcode 40001 for it. It reports whether the token was live.
func (e *WeChat) KillAccess(token string) bool {
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if exp, ok := e.global[token]; ok && now.Before(exp) && !e.killed[token] {
		e.killed[token] = true
		e.killCount++
		return true
	}
	if exp, ok := e.userTokens[token]; ok && now.Before(exp) {
		delete(e.userTokens, token)
		e.killCount++
		return true
	}
	return false
}

// Killed counts the access tokens KillAccess ended.
func (e *WeChat) Killed() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.killCount
}

// api stands for any WeChat API that takes ?access_token=: it answers HTTP
// 200 in every case, with errcode 40001 for an unknown, replaced or killed
// token and 42001 for one that simply expired.
func (e *WeChat) api(w http.ResponseWriter, r *http.Request) {
	tok := apiToken(r)
	now := e.clock()
	e.mu.Lock()
	code, msg := 40001, "invalid credential, access_token is invalid or not latest"
	if exp, ok := e.global[tok]; ok && !e.killed[tok] {
		switch {
		case now.Before(exp):
			code = 0
		case !e.replaced[tok]:
			code, msg = 42001, "access_token expired"
		}
	} else if exp, ok := e.userTokens[tok]; ok {
		code = 0
		if !now.Before(exp) {
			code, msg = 42001, "access_token expired"
		}
	}
	e.apiCalls++
	if code != 0 {
		e.apiRejected++
	}
	e.mu.Unlock()
	if code != 0 {
		errcode(w, code, msg+" rid: emulator")
		return
	}
	apiAnswer(w, r, map[string]any{"errcode": 0, "errmsg": "ok"})
}

// ValidUserToken reports whether a web-authorization access token works now.
func (e *WeChat) ValidUserToken(token string) bool {
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	exp, ok := e.userTokens[token]
	return ok && now.Before(exp)
}

// issueGlobal makes a new cgi-bin/token token; the previous one keeps
// working for five more minutes (or until its own expiry, whichever is
// first).
func (e *WeChat) issueGlobal(now time.Time) string {
	e.retire(now, e.current)
	e.current = e.mint(now)
	return e.current
}

// issueStable makes a new stable_token token. Only one earlier token
// keeps working beside it (five more minutes at most): the one before
// that ends now, which is how two forced calls 30 s apart end a leaked
// token at once, as WeChat's guide says.
func (e *WeChat) issueStable(now time.Time) {
	if e.stablePrevious != "" {
		if exp := e.global[e.stablePrevious]; now.Before(exp) {
			e.global[e.stablePrevious] = now
			e.replaced[e.stablePrevious] = true
		}
	}
	e.retire(now, e.stableCurrent)
	e.stablePrevious = e.stableCurrent
	e.stableCurrent = e.mint(now)
}

// retire cuts the life of a replaced token to five minutes from now.
func (e *WeChat) retire(now time.Time, old string) {
	if old == "" {
		return
	}
	if exp := e.global[old]; now.Add(WeChatOverlap).Before(exp) {
		e.global[old] = now.Add(WeChatOverlap)
		e.replaced[old] = true
	}
}

func (e *WeChat) mint(now time.Time) string {
	n := e.TokenLength
	tok := randomToken("WXG", n)[:n]
	e.global[tok] = now.Add(WeChatTokenTTL)
	e.globalIssued++
	return tok
}

func (e *WeChat) checkApp(appid, secret string) (int, string) {
	switch {
	case appid == "":
		return 41002, "appid missing"
	case appid != e.AppID:
		return 40013, "invalid appid"
	case secret == "":
		return 41004, "appsecret missing"
	case secret != e.Secret:
		return 40001, "invalid credential, access_token is invalid or not latest"
	}
	return 0, ""
}

func (e *WeChat) token(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if r.Method != http.MethodGet {
		errcode(w, 43001, "require GET method")
		return
	}
	if q.Get("grant_type") != "client_credential" {
		errcode(w, 40002, "invalid grant_type")
		return
	}
	if code, msg := e.checkApp(q.Get("appid"), q.Get("secret")); code != 0 {
		errcode(w, code, msg)
		return
	}
	now := e.clock()
	e.mu.Lock()
	day := now.UTC().Format("2006-01-02")
	if day != e.quotaDay {
		e.quotaDay, e.quotaUsed = day, 0
	}
	if e.quotaUsed >= e.DailyQuota {
		e.mu.Unlock()
		errcode(w, 45009, "reach max api daily quota limit")
		return
	}
	e.quotaUsed++
	out := map[string]any{"access_token": e.issueGlobal(now), "expires_in": int(WeChatTokenTTL.Seconds())}
	prefix := e.odd(out)
	e.mu.Unlock()
	writeToken(w, prefix, out)
}

// stableToken returns the current token unchanged, with its remaining
// expires_in, while more than five minutes of it remain; in its last five
// minutes a call gets a new token (the old one keeps working until its own
// expiry), so every answer is valid for at least 300 s. force_refresh
// replaces it at once (the old one works five more minutes, or until the
// next replacement), at most
// StableForceLimit times a China Standard Time day (then errcode 45009);
// one within 30 s of the last forced replacement is ignored and gets the
// current token back.
func (e *WeChat) stableToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		errcode(w, 43002, "require POST method")
		return
	}
	var body struct {
		GrantType    string `json:"grant_type"`
		AppID        string `json:"appid"`
		Secret       string `json:"secret"`
		ForceRefresh bool   `json:"force_refresh"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&body); err != nil {
		errcode(w, 47001, "data format error")
		return
	}
	if body.GrantType != "client_credential" {
		errcode(w, 40002, "invalid grant_type")
		return
	}
	if code, msg := e.checkApp(body.AppID, body.Secret); code != 0 {
		errcode(w, code, msg)
		return
	}
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	exp, valid := e.global[e.stableCurrent]
	valid = valid && now.Add(WeChatOverlap).Before(exp)
	if body.ForceRefresh {
		e.stable.Forced++
		if day := now.In(chinaStandardTime).Format("2006-01-02"); day != e.forceDay {
			e.forceDay, e.forcedToday = day, 0
		}
		switch {
		case e.forcedToday >= e.StableForceLimit:
			e.stable.ForcedRefused++
			errcode(w, 45009, "reach max api daily quota limit")
			return
		case !e.lastForced.IsZero() && now.Sub(e.lastForced) < weChatForceMinGap && e.stableCurrent != "":
			e.stable.ForcedIgnored++
			valid = true
		default:
			e.stable.ForcedIssued++
			e.forcedToday++
			e.lastForced = now
			valid = false
		}
	} else {
		e.stable.Normal++
		if !valid {
			e.stable.NormalIssued++
		}
	}
	if !valid {
		e.issueStable(now)
		exp = e.global[e.stableCurrent]
	}
	out := map[string]any{"access_token": e.stableCurrent, "expires_in": int(exp.Sub(now).Seconds())}
	writeToken(w, e.odd(out), out)
}

// chinaStandardTime is UTC+8, whose midnight starts WeChat's day.
var chinaStandardTime = time.FixedZone("CST", 8*3600)

func (e *WeChat) checkGlobal(w http.ResponseWriter, r *http.Request) {
	if !e.ValidGlobal(r.URL.Query().Get("access_token")) {
		errcode(w, 40001, "invalid credential, access_token is invalid or not latest")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ip_list": []string{"127.0.0.1"}})
}

// authorize stands in for the user consenting: WeChat demands exactly the
// order appid, redirect_uri, response_type, scope, state, and the
// #wechat_redirect fragment (which a browser never sends, so it is not
// checked here; the client test compares the URL byte for byte).
func (e *WeChat) authorize(w http.ResponseWriter, r *http.Request) {
	raw := r.URL.RawQuery
	var names []string
	for _, part := range strings.Split(raw, "&") {
		name, _, _ := strings.Cut(part, "=")
		names = append(names, name)
	}
	if strings.Join(names, ",") != "appid,redirect_uri,response_type,scope,state" {
		page(w, http.StatusBadRequest, "参数错误 (parameters must be appid, redirect_uri, response_type, scope, state in this order)")
		return
	}
	q := r.URL.Query()
	if q.Get("appid") != e.AppID {
		page(w, http.StatusBadRequest, "appid 错误")
		return
	}
	scope := q.Get("scope")
	if q.Get("response_type") != "code" || (scope != "snsapi_base" && scope != "snsapi_userinfo") {
		page(w, http.StatusBadRequest, "scope 参数错误或没有 scope 权限")
		return
	}
	redirect, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || redirect.Host == "" {
		page(w, http.StatusBadRequest, "redirect_uri 参数错误")
		return
	}
	now := e.clock()
	e.mu.Lock()
	e.users++
	openid := fmt.Sprintf("oEMU%024d", e.users)
	code := randomToken("WXC", 16)
	e.codes[code] = &wechatCode{openid: openid, scope: scope, expires: now.Add(WeChatCodeTTL)}
	e.mu.Unlock()
	rq := redirect.Query()
	rq.Set("code", code)
	rq.Set("state", q.Get("state"))
	redirect.RawQuery = rq.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

func (e *WeChat) userGrant(now time.Time, openid, scope string, refresh string) map[string]any {
	access := randomToken("WXU", 24)
	e.userTokens[access] = now.Add(WeChatTokenTTL)
	if refresh == "" {
		refresh = randomToken("WXR", 24)
		e.refresh[refresh] = &wechatGrant{openid: openid, scope: scope, expires: now.Add(WeChatRefreshTTL)}
	}
	out := map[string]any{"access_token": access, "expires_in": int(WeChatTokenTTL.Seconds()),
		"refresh_token": refresh, "openid": openid, "scope": scope}
	if scope == "snsapi_userinfo" {
		out["unionid"] = "uEMU" + openid[4:]
	}
	return out
}

func (e *WeChat) exchange(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("grant_type") != "authorization_code" {
		errcode(w, 40002, "invalid grant_type")
		return
	}
	if q.Get("appid") != e.AppID {
		errcode(w, 40013, "invalid appid")
		return
	}
	if q.Get("secret") != e.Secret {
		errcode(w, 40125, "invalid appsecret")
		return
	}
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.codes[q.Get("code")]
	switch {
	case !ok:
		errcode(w, 40029, "invalid code")
	case c.used:
		errcode(w, 40163, "code been used")
	case !now.Before(c.expires):
		errcode(w, 42003, "code expired")
	default:
		c.used = true
		g := e.userGrant(now, c.openid, c.scope, "")
		writeToken(w, e.odd(g), g)
	}
}

// refreshToken renews the access token; the refresh token stays the same
// and keeps its 30-day life from the original grant. No secret is sent.
func (e *WeChat) refreshToken(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("grant_type") != "refresh_token" {
		errcode(w, 40002, "invalid grant_type")
		return
	}
	if q.Get("appid") != e.AppID {
		errcode(w, 40013, "invalid appid")
		return
	}
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	rt := q.Get("refresh_token")
	g, ok := e.refresh[rt]
	switch {
	case !ok:
		errcode(w, 40030, "invalid refresh_token")
	case !now.Before(g.expires):
		errcode(w, 42002, "refresh_token timeout")
	default:
		out := e.userGrant(now, g.openid, g.scope, rt)
		writeToken(w, e.odd(out), out)
	}
}

// RevokeUser makes a refresh token invalid, as a user changing their
// password does (42007 on next use... reported as 40030 here).
func (e *WeChat) RevokeUser(refreshToken string) {
	e.mu.Lock()
	delete(e.refresh, refreshToken)
	e.mu.Unlock()
}

func (e *WeChat) checkUser(w http.ResponseWriter, r *http.Request) {
	if !e.ValidUserToken(r.URL.Query().Get("access_token")) {
		errcode(w, 40001, "invalid credential")
		return
	}
	errcode(w, 0, "ok")
}
