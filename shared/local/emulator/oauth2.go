package emulator

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// OAuth2 emulates an RFC 6749 authorization server for one client:
// authorization code with PKCE S256, client_secret_basic and
// client_secret_post, refresh tokens with optional rotation and reuse
// detection (a reused rotated token revokes its whole family), and
// client_credentials. GitHubStyle answers form-encoded unless the client
// asks for JSON, and reports errors with HTTP 200, as GitHub does.
//
// Every authorization is a grant of one user (the authorize request's
// user or login_hint parameter, which stands for who logged in; default
// DefaultUser). RevokeWholeGrant says what a revocation ends.
type OAuth2 struct {
	core
	ClientID, Secret string
	RedirectURI      string
	// AuthStyle the server accepts: "basic", "post" or "" for either.
	AuthStyle   string
	RequirePKCE bool
	Rotate      bool
	GitHubStyle bool
	// ExpiresIn is sent as a number; ExpiresInString sends it as a string;
	// zero omits it.
	ExpiresIn       time.Duration
	ExpiresInString bool
	// OmitRefresh leaves refresh_token out of refresh answers.
	OmitRefresh bool
	// NoRefresh issues no refresh tokens at all (GitHub OAuth Apps).
	NoRefresh bool
	// RevokeWholeGrant revokes as Google does: revoking any token of a
	// user's grant ends every access and refresh token of that user for
	// this client, the grants of earlier and later consents alike. Unset,
	// revocation is per token (RFC 7009, GitLab): a refresh token ends with
	// the refresh tokens rotated from it, an access token alone.
	RevokeWholeGrant bool

	codes    map[string]*o2Code
	refresh  map[string]*o2Refresh
	access   map[string]*o2Access
	reuses   int
	refreshN int
	// revokedTokens counts tokens a revocation ended; killed counts
	// KillAccess calls that ended a token.
	revokedTokens, killed int
}

// DefaultUser is the user an authorization belongs to when the authorize
// request names none.
const DefaultUser = "emulated-user"

type o2Code struct {
	redirect, challenge, scope, user string
	expires                          time.Time
}

type o2Refresh struct {
	// family is the authorization the token descends from.
	family, user string
	scope        string
	rotated      bool
}

type o2Access struct {
	family, user string
	// expires is zero for a token that never expires.
	expires time.Time
}

// NewOAuth2 returns a strict server for one client.
func NewOAuth2(clientID, secret, redirectURI string) *OAuth2 {
	return &OAuth2{core: newCore(), ClientID: clientID, Secret: secret, RedirectURI: redirectURI,
		RequirePKCE: true, Rotate: true, ExpiresIn: time.Hour,
		codes: map[string]*o2Code{}, refresh: map[string]*o2Refresh{}, access: map[string]*o2Access{}}
}

func (e *OAuth2) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.serve(w, r, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/authorize":
			e.authorize(w, r)
		case "/token":
			e.token(w, r)
		case "/revoke":
			e.revoke(w, r)
		case "/userinfo":
			e.userinfo(w, r)
		case APIPath:
			e.serveOAuthAPI(w, r, e.ValidAccess)
		default:
			http.NotFound(w, r)
		}
	})
}

// RefreshReuses counts rotated refresh tokens presented again.
func (e *OAuth2) RefreshReuses() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.reuses
}

// RefreshCalls counts successful refresh grants.
func (e *OAuth2) RefreshCalls() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.refreshN
}

// ValidAccess reports whether an access token works now.
func (e *OAuth2) ValidAccess(tok string) bool {
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	a, ok := e.access[tok]
	return ok && (a.expires.IsZero() || now.Before(a.expires))
}

// RefreshUsable reports whether a refresh token would be accepted now:
// issued here, not revoked, not rotated away.
func (e *OAuth2) RefreshUsable(tok string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	rt, ok := e.refresh[tok]
	return ok && !rt.rotated
}

// KillAccess ends one access token now, leaving its grant alone: the
// refresh token keeps working, and APIPath answers 401 for the token. It
// reports whether the token was live.
func (e *OAuth2) KillAccess(tok string) bool {
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	a, ok := e.access[tok]
	if !ok || (!a.expires.IsZero() && !now.Before(a.expires)) {
		return false
	}
	delete(e.access, tok)
	e.killed++
	return true
}

// Killed counts the access tokens KillAccess ended.
func (e *OAuth2) Killed() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.killed
}

// RevokedTokens counts the tokens (access and refresh) that revocations
// ended, so a test sees how far one revocation reached.
func (e *OAuth2) RevokedTokens() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.revokedTokens
}

func (e *OAuth2) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != e.ClientID {
		page(w, http.StatusBadRequest, "unknown client_id")
		return
	}
	if q.Get("redirect_uri") != e.RedirectURI {
		// RFC 6749 §4.1.2.1: never redirect to an unregistered URI.
		page(w, http.StatusBadRequest, "redirect_uri mismatch")
		return
	}
	redirect, _ := url.Parse(e.RedirectURI)
	rq := redirect.Query()
	if s := q.Get("state"); s != "" {
		rq.Set("state", s)
	}
	fail := func(code, desc string) {
		rq.Set("error", code)
		rq.Set("error_description", desc)
		redirect.RawQuery = rq.Encode()
		http.Redirect(w, r, redirect.String(), http.StatusFound)
	}
	if q.Get("response_type") != "code" {
		fail("unsupported_response_type", "response_type must be code")
		return
	}
	challenge := q.Get("code_challenge")
	if e.RequirePKCE && (challenge == "" || q.Get("code_challenge_method") != "S256") {
		fail("invalid_request", "PKCE S256 code_challenge required")
		return
	}
	if q.Get("deny") != "" {
		fail("access_denied", "the user denied the request")
		return
	}
	code := randomToken("O2C", 16)
	user := q.Get("user")
	if user == "" {
		user = q.Get("login_hint")
	}
	if user == "" {
		user = DefaultUser
	}
	now := e.clock()
	e.mu.Lock()
	e.codes[code] = &o2Code{redirect: q.Get("redirect_uri"), challenge: challenge, scope: q.Get("scope"), user: user, expires: now.Add(time.Minute)}
	e.mu.Unlock()
	rq.Set("code", code)
	redirect.RawQuery = rq.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

// reply answers in JSON, or form-encoded for a GitHub-style server when
// the client did not ask for JSON. A successful token answer gets the
// Oddity, if one is set; e.mu is held for it.
func (e *OAuth2) reply(w http.ResponseWriter, r *http.Request, status int, fields map[string]string) {
	out := map[string]any{}
	for k, s := range fields {
		out[k] = s
	}
	if n, err := strconv.Atoi(fields["expires_in"]); err == nil && !e.ExpiresInString {
		out["expires_in"] = n
	}
	var prefix []byte
	if status == http.StatusOK && fields["access_token"] != "" {
		prefix = e.odd(out)
	}
	if e.GitHubStyle && !strings.Contains(r.Header.Get("Accept"), "application/json") {
		v := url.Values{}
		for k, s := range out {
			if b, err := json.Marshal(s); err == nil && k == "expires_in" {
				v.Set(k, strings.Trim(string(b), `"`))
			} else {
				v.Set(k, fmt.Sprint(s))
			}
		}
		w.Header().Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
		w.WriteHeader(status)
		_, _ = w.Write(append(prefix, v.Encode()...))
		return
	}
	if status == http.StatusOK && fields["access_token"] != "" {
		writeToken(w, prefix, out)
		return
	}
	writeJSON(w, status, out)
}

func (e *OAuth2) oauthError(w http.ResponseWriter, r *http.Request, status int, code, desc string) {
	if e.GitHubStyle {
		status = http.StatusOK
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="emulator"`)
	}
	e.reply(w, r, status, map[string]string{"error": code, "error_description": desc})
}

// clientAuth checks client_secret_basic or client_secret_post; using both
// at once is an error (RFC 6749 §2.3).
func (e *OAuth2) clientAuth(r *http.Request) bool {
	user, pass, basic := r.BasicAuth()
	_, postID := r.PostForm["client_secret"]
	if basic && postID {
		return false
	}
	if basic {
		u, err1 := url.QueryUnescape(user)
		p, err2 := url.QueryUnescape(pass)
		return err1 == nil && err2 == nil && e.AuthStyle != "post" && u == e.ClientID && p == e.Secret
	}
	return e.AuthStyle != "basic" && r.PostForm.Get("client_id") == e.ClientID && r.PostForm.Get("client_secret") == e.Secret
}

// issue mints an access token of a grant (family, user; both "" for
// client_credentials) and, withRefresh, a refresh token of it.
func (e *OAuth2) issue(now time.Time, scope, family, user string, withRefresh bool) map[string]string {
	access := randomToken("O2A", 20)
	out := map[string]string{"access_token": access, "token_type": "bearer", "scope": scope}
	a := &o2Access{family: family, user: user}
	if e.ExpiresIn > 0 {
		a.expires = now.Add(e.ExpiresIn)
		out["expires_in"] = strconv.Itoa(int(e.ExpiresIn.Seconds()))
	}
	e.access[access] = a
	if withRefresh && family != "" && !e.NoRefresh {
		rt := randomToken("O2R", 20)
		e.refresh[rt] = &o2Refresh{family: family, user: user, scope: scope}
		out["refresh_token"] = rt
	}
	return out
}

func (e *OAuth2) token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		e.oauthError(w, r, http.StatusMethodNotAllowed, "invalid_request", "POST required")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		e.oauthError(w, r, http.StatusBadRequest, "invalid_request", "form body required")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := r.ParseForm(); err != nil {
		e.oauthError(w, r, http.StatusBadRequest, "invalid_request", "malformed form")
		return
	}
	if !e.clientAuth(r) {
		e.oauthError(w, r, http.StatusUnauthorized, "invalid_client", "client authentication failed")
		return
	}
	f := r.PostForm
	now := e.clock()
	e.mu.Lock()
	defer e.mu.Unlock()
	switch f.Get("grant_type") {
	case "authorization_code":
		c, ok := e.codes[f.Get("code")]
		delete(e.codes, f.Get("code"))
		switch {
		case !ok || !now.Before(c.expires):
			e.oauthError(w, r, http.StatusBadRequest, "invalid_grant", "code invalid, expired or used")
		case f.Get("redirect_uri") != c.redirect:
			e.oauthError(w, r, http.StatusBadRequest, "invalid_grant", "redirect_uri does not match the authorization request")
		case c.challenge != "" && s256(f.Get("code_verifier")) != c.challenge:
			e.oauthError(w, r, http.StatusBadRequest, "invalid_grant", "PKCE verification failed")
		case c.challenge == "" && f.Get("code_verifier") != "":
			e.oauthError(w, r, http.StatusBadRequest, "invalid_grant", "code_verifier without a challenge")
		default:
			e.reply(w, r, http.StatusOK, e.issue(now, c.scope, randomToken("fam", 8), c.user, true))
		}
	case "refresh_token":
		rt, ok := e.refresh[f.Get("refresh_token")]
		switch {
		case !ok:
			e.oauthError(w, r, http.StatusBadRequest, "invalid_grant", "refresh token invalid or revoked")
		case rt.rotated:
			e.reuses++
			for k, v := range e.refresh {
				if v.family == rt.family {
					delete(e.refresh, k)
				}
			}
			e.oauthError(w, r, http.StatusBadRequest, "invalid_grant", "refresh token reuse detected; grant revoked")
		default:
			e.refreshN++
			out := e.issue(now, rt.scope, rt.family, rt.user, e.Rotate)
			if e.Rotate {
				rt.rotated = true
			}
			if e.OmitRefresh {
				delete(out, "refresh_token")
			}
			e.reply(w, r, http.StatusOK, out)
		}
	case "client_credentials":
		e.reply(w, r, http.StatusOK, e.issue(now, f.Get("scope"), "", "", false))
	default:
		e.oauthError(w, r, http.StatusBadRequest, "unsupported_grant_type", "grant type not supported")
	}
}

func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// RevokeAll drops every refresh token, as a user revoking the app does.
func (e *OAuth2) RevokeAll() {
	e.mu.Lock()
	e.refresh = map[string]*o2Refresh{}
	e.mu.Unlock()
}

func (e *OAuth2) revoke(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := r.ParseForm(); err != nil || !e.clientAuth(r) {
		e.oauthError(w, r, http.StatusUnauthorized, "invalid_client", "client authentication failed")
		return
	}
	tok := r.PostForm.Get("token")
	e.mu.Lock()
	e.revokeLocked(tok)
	e.mu.Unlock()
	// RFC 7009 §2.2: an unknown or already invalid token is answered 200 too.
	w.WriteHeader(http.StatusOK)
}

// revokeLocked ends what revoking tok ends; e.mu is held.
func (e *OAuth2) revokeLocked(tok string) {
	user, family := "", ""
	if rt, ok := e.refresh[tok]; ok {
		user, family = rt.user, rt.family
	} else if a, ok := e.access[tok]; ok {
		user = a.user
	}
	switch {
	case e.RevokeWholeGrant && user != "":
		for k, v := range e.refresh {
			if v.user == user {
				delete(e.refresh, k)
				e.revokedTokens++
			}
		}
		for k, v := range e.access {
			if v.user == user {
				delete(e.access, k)
				e.revokedTokens++
			}
		}
	case family != "":
		for k, v := range e.refresh {
			if v.family == family {
				delete(e.refresh, k)
				e.revokedTokens++
			}
		}
	default:
		if _, ok := e.access[tok]; ok {
			delete(e.access, tok)
			e.revokedTokens++
		}
	}
}

func (e *OAuth2) userinfo(w http.ResponseWriter, r *http.Request) {
	auth := r.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "Bearer ") || !e.ValidAccess(strings.TrimPrefix(auth, "Bearer ")) {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "invalid_token"})
		return
	}
	sub := DefaultUser
	e.mu.Lock()
	if a := e.access[strings.TrimPrefix(auth, "Bearer ")]; a != nil && a.user != "" {
		sub = a.user
	}
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"sub": sub})
}
