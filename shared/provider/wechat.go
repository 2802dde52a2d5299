package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// wechat serves both WeChat kinds: the official account's global token
// (wechat_mp) and web authorization (wechat_oauth).
type wechat struct{ base }

// WeChatRefreshTokenLifetime is how long a web-authorization refresh token
// lives from the code exchange.
const WeChatRefreshTokenLifetime = 30 * 24 * time.Hour

// wechatReply is a WeChat answer that carries tokens: its fields as raw
// JSON, read leniently (see fields.go).
type wechatReply struct {
	fields          map[string]json.RawMessage
	access, refresh string
}

// parse turns a WeChat answer into a reply or a classified error. WeChat
// reports errors with HTTP 200 and an errcode body; a 2xx answer with no
// non-zero errcode that carries a token is a success, whatever else in it
// cannot be read.
func (w *wechat) parse(c call, r *response) (*wechatReply, error) {
	c = c.answered(r)
	if r.status < 200 || r.status > 299 {
		return nil, w.httpStatusError(c, r)
	}
	text := bodyText(r)
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(text), &fields); err != nil {
		msg := "response is not a JSON object: " + err.Error()
		if strings.HasPrefix(text, "<") {
			msg = "HTML page instead of a JSON response"
		}
		return nil, w.fail(c, "bad_response", msg, r.status, ClassTransient)
	}
	reply := &wechatReply{fields: fields, access: fieldString(fields["access_token"]), refresh: fieldString(fields["refresh_token"])}
	c = c.with(reply.access, reply.refresh)
	if code, ok := errcodeField(fields["errcode"]); ok && code != 0 {
		class, known := wechatClasses[code]
		if !known {
			class = ClassTransient
		}
		return nil, w.fail(c, strconv.Itoa(code), fieldString(fields["errmsg"]), r.status, class)
	}
	if reply.access == "" && reply.refresh == "" {
		return nil, w.fail(c, "bad_response", "no access_token in the response", r.status, ClassTransient)
	}
	return reply, nil
}

// errcodeField reads WeChat's errcode, a number or a numeric string.
func errcodeField(raw json.RawMessage) (int, bool) {
	n, err := strconv.Atoi(strings.TrimSpace(fieldString(raw)))
	return n, err == nil
}

func (w *wechat) tokenSet(reply *wechatReply) *TokenSet {
	ts := &TokenSet{AccessToken: reply.access, RefreshToken: reply.refresh, TokenType: "Bearer", Scope: scopeField(reply.fields["scope"])}
	if ts.AccessToken != "" {
		ts.ExpiresAt, _ = w.expiry(w.now(), reply.fields["expires_in"])
	}
	ts.Extra = keepExtra(map[string]string{
		"openid": fieldString(reply.fields["openid"]), "unionid": fieldString(reply.fields["unionid"]),
		"is_snapshotuser": fieldString(reply.fields["is_snapshotuser"]),
	})
	return ts
}

func (w *wechat) MachineToken(ctx context.Context) (*TokenSet, error) {
	return w.machineToken(ctx, false)
}

// ForceMachineToken asks stable_token with force_refresh=true: a new
// token even before the current one's last five minutes, which ends the
// current one. WeChat allows it 20 times a day and ignores one within
// 30 s of the last; only the cgi-bin/stable_token mode has it.
func (w *wechat) ForceMachineToken(ctx context.Context) (*TokenSet, error) {
	if w.cfg.Kind != KindWeChatMP || w.cfg.TokenAPI != "stable_token" {
		return nil, ErrNotSupported
	}
	return w.machineToken(ctx, true)
}

func (w *wechat) machineToken(ctx context.Context, force bool) (*TokenSet, error) {
	if w.cfg.Kind != KindWeChatMP {
		return nil, ErrNotSupported
	}
	c := call{op: opToken}
	api := strings.TrimRight(w.cfg.APIBase, "/")
	var req *http.Request
	var err error
	if w.cfg.TokenAPI == "token" {
		q := url.Values{"grant_type": {"client_credential"}, "appid": {w.cfg.ClientID}, "secret": {w.secret}}
		req, err = http.NewRequest(http.MethodGet, api+"/cgi-bin/token?"+q.Encode(), nil)
	} else {
		body, _ := json.Marshal(map[string]any{
			"grant_type": "client_credential", "appid": w.cfg.ClientID, "secret": w.secret, "force_refresh": force,
		})
		req, err = http.NewRequest(http.MethodPost, api+"/cgi-bin/stable_token", bytes.NewReader(body))
		if req != nil {
			req.Header.Set("Content-Type", "application/json")
		}
	}
	if err != nil {
		return nil, w.fail(c, "config", "cannot build request: api_base is not a URL", 0, ClassConfig)
	}
	r, err := w.do(ctx, c, req)
	if err != nil {
		return nil, err
	}
	reply, err := w.parse(c, r)
	if err != nil {
		return nil, err
	}
	return w.tokenSet(reply), nil
}

// AuthorizeURL builds WeChat's URL with its required parameter order and
// the #wechat_redirect fragment; url.Values would sort the parameters.
func (w *wechat) AuthorizeURL(ar AuthorizeRequest) (string, error) {
	if w.cfg.Kind != KindWeChatOAuth {
		return "", ErrNotSupported
	}
	scopes := ar.Scopes
	if len(scopes) == 0 {
		scopes = w.cfg.Scopes
	}
	for _, s := range scopes {
		if s != "snsapi_base" && s != "snsapi_userinfo" {
			return "", fmt.Errorf("provider: %s: scope %q is not snsapi_base or snsapi_userinfo", w.cfg.Name, s)
		}
	}
	return w.cfg.AuthorizeURL +
		"?appid=" + url.QueryEscape(w.cfg.ClientID) +
		"&redirect_uri=" + url.QueryEscape(ar.RedirectURI) +
		"&response_type=code" +
		"&scope=" + strings.Join(scopes, ",") +
		"&state=" + url.QueryEscape(ar.State) +
		"#wechat_redirect", nil
}

func (w *wechat) get(ctx context.Context, c call, path string, q url.Values) (*wechatReply, error) {
	req, err := http.NewRequest(http.MethodGet, strings.TrimRight(w.cfg.APIBase, "/")+path+"?"+q.Encode(), nil)
	if err != nil {
		return nil, w.fail(c, "config", "cannot build request: api_base is not a URL", 0, ClassConfig)
	}
	r, err := w.do(ctx, c, req)
	if err != nil {
		return nil, err
	}
	return w.parse(c, r)
}

func (w *wechat) Exchange(ctx context.Context, code, _, _ string) (*TokenSet, error) {
	if w.cfg.Kind != KindWeChatOAuth {
		return nil, ErrNotSupported
	}
	c := call{op: opExchange, secrets: []string{code}}
	reply, err := w.get(ctx, c, "/sns/oauth2/access_token", url.Values{
		"appid": {w.cfg.ClientID}, "secret": {w.secret}, "code": {code}, "grant_type": {"authorization_code"}})
	if err != nil {
		return nil, err
	}
	ts := w.tokenSet(reply)
	if ts.RefreshToken != "" {
		ts.RefreshExpiresAt = w.now().Add(WeChatRefreshTokenLifetime)
	}
	return ts, nil
}

// Refresh needs no secret. WeChat keeps the refresh token's 30-day life
// from the original grant, so its known expiry is left as it is unless a
// new refresh token comes back.
func (w *wechat) Refresh(ctx context.Context, refreshToken string) (*TokenSet, error) {
	if w.cfg.Kind != KindWeChatOAuth {
		return nil, ErrNotSupported
	}
	c := call{op: opRefresh, secrets: []string{refreshToken}}
	reply, err := w.get(ctx, c, "/sns/oauth2/refresh_token", url.Values{
		"appid": {w.cfg.ClientID}, "grant_type": {"refresh_token"}, "refresh_token": {refreshToken}})
	if err != nil {
		return nil, err
	}
	ts := w.tokenSet(reply)
	if ts.RefreshToken != "" && ts.RefreshToken != refreshToken {
		ts.RefreshExpiresAt = w.now().Add(WeChatRefreshTokenLifetime)
	}
	return ts, nil
}

func (w *wechat) Revoke(context.Context, string, string) error { return ErrNotSupported }
