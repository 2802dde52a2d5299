package provider_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/provider"
)

var fixed = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func newClient(t *testing.T, cfg provider.Config, secret string) provider.Client {
	t.Helper()
	c, err := provider.New(cfg, secret, provider.Options{HTTP: &http.Client{Timeout: 2 * time.Second}, Now: func() time.Time { return fixed }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustConfig(t *testing.T, name, doc string) provider.Config {
	t.Helper()
	cfg, err := provider.ParseConfig(name, []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// assertError checks the classification and the provider's own code, and
// that no secret leaked into the text.
func assertError(t *testing.T, err error, class provider.Class, code string, secrets ...string) {
	t.Helper()
	var pe *provider.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is not a *provider.Error", err)
	}
	if pe.Class != class || pe.Code != code {
		t.Fatalf("got class %v code %q (%v), want %v %q", pe.Class, pe.Code, err, class, code)
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Fatalf("error text leaks a secret: %v", err)
		}
	}
}

func TestWeChatAuthorizeURLByteForByte(t *testing.T) {
	cfg := mustConfig(t, "wx", `{"kind":"wechat_oauth","client_id":"wx520c15f417810387","scopes":["snsapi_userinfo"]}`)
	c := newClient(t, cfg, "s")
	got, err := c.AuthorizeURL(provider.AuthorizeRequest{State: "st ate&1", RedirectURI: "https://api.example.com/callback/wx?x=1"})
	if err != nil {
		t.Fatal(err)
	}
	want := "https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx520c15f417810387&redirect_uri=https%3A%2F%2Fapi.example.com%2Fcallback%2Fwx%3Fx%3D1&response_type=code&scope=snsapi_userinfo&state=st+ate%261#wechat_redirect"
	if got != want {
		t.Fatalf("authorize URL\n got %s\nwant %s", got, want)
	}
	if _, err := c.AuthorizeURL(provider.AuthorizeRequest{State: "s", RedirectURI: "https://x", Scopes: []string{"repo"}}); err == nil {
		t.Fatal("non-WeChat scope accepted")
	}
}

func TestWeChatGlobalToken(t *testing.T) {
	for _, api := range []string{"token", "stable_token"} {
		t.Run(api, func(t *testing.T) {
			emu := emulator.NewWeChat("wxapp", "wxsecret-123")
			srv := httptest.NewServer(emu)
			defer srv.Close()
			cfg := mustConfig(t, "wx-mp", `{"kind":"wechat_mp","client_id":"wxapp","token_api":"`+api+`","api_base":"`+srv.URL+`"}`)
			c := newClient(t, cfg, "wxsecret-123")
			ts, err := c.MachineToken(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(ts.AccessToken) != 512 || !emu.ValidGlobal(ts.AccessToken) || !ts.ExpiresAt.Equal(fixed.Add(7200*time.Second)) {
				t.Fatalf("token len %d valid %v expires %v", len(ts.AccessToken), emu.ValidGlobal(ts.AccessToken), ts.ExpiresAt)
			}
			path := "/cgi-bin/" + api
			if emu.Calls(path) != 1 {
				t.Fatalf("%s called %d times", path, emu.Calls(path))
			}
			faults := []struct {
				name  string
				fault emulator.Fault
				class provider.Class
				code  string
			}{
				{"busy", emulator.WeChatError(-1, "system error"), provider.ClassTransient, "-1"},
				{"quota", emulator.WeChatError(45009, "reach max api daily quota limit"), provider.ClassTransient, "45009"},
				{"frequency", emulator.WeChatError(45011, "api minute-quota reach limit"), provider.ClassTransient, "45011"},
				{"bad secret", emulator.WeChatError(40001, "invalid credential"), provider.ClassConfig, "40001"},
				{"bad secret 40125", emulator.WeChatError(40125, "invalid appsecret"), provider.ClassConfig, "40125"},
				{"ip", emulator.WeChatError(40164, "invalid ip 1.2.3.4, not in whitelist"), provider.ClassConfig, "40164"},
				{"unknown errcode", emulator.WeChatError(99999, "new thing"), provider.ClassTransient, "99999"},
				{"html 502", emulator.HTMLError(502), provider.ClassTransient, "http_502"},
				{"html 200", emulator.Fault{Status: 200, ContentType: "text/html", Body: "<html>maintenance</html>"}, provider.ClassTransient, "bad_response"},
				{"truncated", emulator.Fault{Truncate: true}, provider.ClassTransient, "bad_response"},
				{"huge", emulator.Fault{Huge: true}, provider.ClassTransient, "too_large"},
				{"slow", emulator.Fault{Delay: 5 * time.Second}, provider.ClassTransient, "timeout"},
				{"empty 200", emulator.Fault{Status: 200, Body: "{}"}, provider.ClassTransient, "bad_response"},
			}
			for _, f := range faults {
				t.Run(f.name, func(t *testing.T) {
					emu.Inject(path, f.fault, 1)
					_, err := c.MachineToken(context.Background())
					assertError(t, err, f.class, f.code, "wxsecret-123")
				})
			}
		})
	}
}

func TestWeChatGlobalTokenRealErrors(t *testing.T) {
	emu := emulator.NewWeChat("wxapp", "right")
	srv := httptest.NewServer(emu)
	defer srv.Close()
	bad := newClient(t, mustConfig(t, "wx", `{"kind":"wechat_mp","client_id":"wxapp","token_api":"token","api_base":"`+srv.URL+`"}`), "wrong-secret")
	_, err := bad.MachineToken(context.Background())
	assertError(t, err, provider.ClassConfig, "40001", "wrong-secret")
	badApp := newClient(t, mustConfig(t, "wx", `{"kind":"wechat_mp","client_id":"nope","api_base":"`+srv.URL+`"}`), "right")
	_, err = badApp.MachineToken(context.Background())
	assertError(t, err, provider.ClassConfig, "40013", "right")

	emu.DailyQuota = 2
	good := newClient(t, mustConfig(t, "wx", `{"kind":"wechat_mp","client_id":"wxapp","token_api":"token","api_base":"`+srv.URL+`"}`), "right")
	first, err := good.MachineToken(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	second, err := good.MachineToken(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !emu.ValidGlobal(first.AccessToken) || !emu.ValidGlobal(second.AccessToken) {
		t.Fatal("old token must stay valid during the five-minute overlap")
	}
	emu.SetClock(func() time.Time { return time.Now().Add(6 * time.Minute) })
	if emu.ValidGlobal(first.AccessToken) || !emu.ValidGlobal(second.AccessToken) {
		t.Fatal("after five minutes only the newest token works")
	}
	_, err = good.MachineToken(context.Background())
	assertError(t, err, provider.ClassTransient, "45009")
}

func TestStableTokenDoesNotInvalidate(t *testing.T) {
	emu := emulator.NewWeChat("wxapp", "s3cret")
	srv := httptest.NewServer(emu)
	defer srv.Close()
	c := newClient(t, mustConfig(t, "wx", `{"kind":"wechat_mp","client_id":"wxapp","api_base":"`+srv.URL+`"}`), "s3cret")
	a, err := c.MachineToken(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.MachineToken(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if a.AccessToken != b.AccessToken || emu.GlobalTokenCalls() != 1 {
		t.Fatalf("stable_token issued %d tokens, same=%v", emu.GlobalTokenCalls(), a.AccessToken == b.AccessToken)
	}
}

// recordQueries wraps an emulator and records each request's query.
type recorder struct {
	h       http.Handler
	mu      sync.Mutex
	queries []string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.queries = append(r.queries, req.URL.Path+"?"+req.URL.RawQuery)
	r.mu.Unlock()
	r.h.ServeHTTP(w, req)
}

// authorizeCode walks the emulator's authorize page and returns the code.
func authorizeCode(t *testing.T, authURL string) string {
	t.Helper()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize page answered %d", resp.StatusCode)
	}
	loc, _ := resp.Location()
	code := loc.Query().Get("code")
	if code == "" {
		t.Fatalf("no code in redirect %s", loc.Redacted())
	}
	return code
}

func TestWeChatWebAuthorization(t *testing.T) {
	emu := emulator.NewWeChat("wxweb", "websecret")
	rec := &recorder{h: emu}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	cfg := mustConfig(t, "wx-web", `{"kind":"wechat_oauth","client_id":"wxweb","scopes":["snsapi_userinfo"],"api_base":"`+srv.URL+`","authorize_url":"`+srv.URL+`/connect/oauth2/authorize"}`)
	c := newClient(t, cfg, "websecret")
	ctx := context.Background()
	authURL, _ := c.AuthorizeURL(provider.AuthorizeRequest{State: "state123", RedirectURI: "https://broker.example/callback/wx-web"})
	code := authorizeCode(t, authURL)

	ts, err := c.Exchange(ctx, code, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if ts.Extra["openid"] == "" || ts.Extra["unionid"] == "" || ts.RefreshToken == "" || ts.Scope != "snsapi_userinfo" {
		t.Fatalf("exchange = %+v", ts)
	}
	if !ts.RefreshExpiresAt.Equal(fixed.Add(30 * 24 * time.Hour)) {
		t.Fatalf("refresh expiry %v", ts.RefreshExpiresAt)
	}
	_, err = c.Exchange(ctx, code, "", "")
	assertError(t, err, provider.ClassReauth, "40163", code)
	_, err = c.Exchange(ctx, "no-such-code", "", "")
	assertError(t, err, provider.ClassReauth, "40029")

	refreshed, err := c.Refresh(ctx, ts.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if refreshed.AccessToken == ts.AccessToken || !emu.ValidUserToken(refreshed.AccessToken) || !refreshed.RefreshExpiresAt.IsZero() {
		t.Fatalf("refresh = %+v (same refresh token must keep its original expiry)", refreshed)
	}
	for _, q := range rec.queries {
		if strings.HasPrefix(q, "/sns/oauth2/refresh_token") && strings.Contains(q, "websecret") {
			t.Fatalf("refresh sent the secret: %s", q)
		}
	}
	_, err = c.Refresh(ctx, "bogus-refresh")
	assertError(t, err, provider.ClassReauth, "40030", "bogus-refresh")
	for _, tc := range []struct {
		code  int
		class provider.Class
	}{{42002, provider.ClassReauth}, {42007, provider.ClassReauth}, {-1, provider.ClassTransient}, {45011, provider.ClassTransient}, {40001, provider.ClassConfig}} {
		emu.Inject("/sns/oauth2/refresh_token", emulator.WeChatError(tc.code, "x"), 1)
		_, err = c.Refresh(ctx, ts.RefreshToken)
		var pe *provider.Error
		if !errors.As(err, &pe) || pe.Class != tc.class {
			t.Fatalf("errcode %d: %v, want class %v", tc.code, err, tc.class)
		}
	}
	emu.Inject("/sns/oauth2/access_token", emulator.WeChatError(-1, "system error"), 1)
	_, err = c.Exchange(ctx, "anything", "", "")
	if !provider.Ambiguous(err) {
		t.Fatalf("-1 on exchange must be ambiguous: %v", err)
	}
	emu.SetClock(func() time.Time { return time.Now().Add(6 * time.Minute) })
	code2 := authorizeCode(t, authURL)
	emu.SetClock(func() time.Time { return time.Now().Add(12 * time.Minute) })
	_, err = c.Exchange(ctx, code2, "", "")
	assertError(t, err, provider.ClassReauth, "42003")
}

func TestSinaCloud(t *testing.T) {
	emu := emulator.NewSinaCloud("sina-id", "sina-secret", "https://broker.example/callback/sina")
	srv := httptest.NewServer(emu)
	defer srv.Close()
	cfg := mustConfig(t, "sina", `{"kind":"sinacloud","client_id":"sina-id","api_base":"`+srv.URL+`"}`)
	c := newClient(t, cfg, "sina-secret")
	ctx := context.Background()
	authURL, _ := c.AuthorizeURL(provider.AuthorizeRequest{State: "abc", RedirectURI: "ignored"})
	if !strings.HasPrefix(authURL, srv.URL+"/oauth2/authorize?") || strings.Contains(authURL, "redirect_uri") {
		t.Fatalf("authorize URL %s", authURL)
	}
	ts, err := c.Exchange(ctx, authorizeCode(t, authURL), "", "")
	if err != nil {
		t.Fatal(err)
	}
	if !ts.ExpiresAt.Equal(fixed.Add(604800*time.Second)) || !ts.RefreshExpiresAt.Equal(ts.ExpiresAt.Add(24*time.Hour)) || ts.TokenType != "Bearer" || ts.Scope != "" {
		t.Fatalf("exchange = %+v", ts)
	}
	next, err := c.Refresh(ctx, ts.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if next.RefreshToken == "" || next.RefreshToken == ts.RefreshToken {
		t.Fatal("SinaCloud must hand out a new refresh token")
	}
	_, err = c.Refresh(ctx, ts.RefreshToken)
	assertError(t, err, provider.ClassReauth, "invalid_grant", ts.RefreshToken)
	if emu.RefreshReuses() != 1 {
		t.Fatalf("reuses = %d", emu.RefreshReuses())
	}
	bad := newClient(t, cfg, "wrong-secret")
	_, err = bad.Refresh(ctx, next.RefreshToken)
	assertError(t, err, provider.ClassConfig, "invalid_client", "wrong-secret")
	emu.Inject("/oauth2/access_token", emulator.HTMLError(503), 1)
	_, err = c.Refresh(ctx, next.RefreshToken)
	assertError(t, err, provider.ClassTransient, "http_503")
}

// SinaCloud grants refresh permission separately: without it a refresh is
// answered unauthorized_client, which means "serve the current token until
// it expires, then the user authorizes again", not a broken configuration.
func TestSinaCloudWithoutRefreshPermission(t *testing.T) {
	emu := emulator.NewSinaCloud("sina-id", "sina-secret", "https://broker.example/callback/sina")
	emu.NoRefreshPermission = true
	srv := httptest.NewServer(emu)
	defer srv.Close()
	c := newClient(t, mustConfig(t, "sina", `{"kind":"sinacloud","client_id":"sina-id","api_base":"`+srv.URL+`"}`), "sina-secret")
	ctx := context.Background()
	authURL, _ := c.AuthorizeURL(provider.AuthorizeRequest{State: "abc"})
	ts, err := c.Exchange(ctx, authorizeCode(t, authURL), "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Refresh(ctx, ts.RefreshToken)
	assertError(t, err, provider.ClassNoRefresh, "unauthorized_client", ts.RefreshToken, "sina-secret")
	var pe *provider.Error
	if errors.As(err, &pe); !pe.Permanent() || provider.Ambiguous(err) || provider.ClassOf(err).String() != "no_refresh" {
		t.Fatalf("no_refresh must be permanent and not ambiguous: %+v", pe)
	}
	if !emu.ValidAccess(ts.AccessToken) || emu.RefreshCalls() != 0 {
		t.Fatalf("the current access token must stay valid (valid=%v, refreshes=%d)", emu.ValidAccess(ts.AccessToken), emu.RefreshCalls())
	}
	// On a code exchange the same code means the client itself is refused.
	emu.Inject("/oauth2/access_token", emulator.OAuthError(400, "unauthorized_client", "client not allowed"), 1)
	_, err = c.Exchange(ctx, authorizeCode(t, authURL), "", "")
	assertError(t, err, provider.ClassConfig, "unauthorized_client")
}

func TestOAuth2Generic(t *testing.T) {
	for _, tc := range []struct {
		name            string
		authStyle       string
		github          bool
		expiresInString bool
		expiresIn       time.Duration
		rotate          bool
	}{
		{"basic json rotating", "basic", false, false, time.Hour, true},
		{"post github-style", "post", true, false, 8 * time.Hour, false},
		{"expires_in as string", "basic", false, true, time.Hour, true},
		{"no expires_in", "post", false, false, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			redirect := "https://broker.example/callback/gen"
			emu := emulator.NewOAuth2("cid:with/odd chars", "sec ret+%", redirect)
			emu.AuthStyle, emu.GitHubStyle, emu.ExpiresInString, emu.ExpiresIn, emu.Rotate = tc.authStyle, tc.github, tc.expiresInString, tc.expiresIn, tc.rotate
			srv := httptest.NewServer(emu)
			defer srv.Close()
			cfg := mustConfig(t, "gen", `{"kind":"oauth2","client_id":"cid:with/odd chars","auth_style":"`+tc.authStyle+`","authorize_url":"`+srv.URL+`/authorize","token_url":"`+srv.URL+`/token","revoke_url":"`+srv.URL+`/revoke","scopes":["read","write"]}`)
			c := newClient(t, cfg, "sec ret+%")
			ctx := context.Background()
			verifier := provider.NewVerifier()
			authURL, _ := c.AuthorizeURL(provider.AuthorizeRequest{State: "st", RedirectURI: redirect, CodeChallenge: provider.S256Challenge(verifier)})
			code := authorizeCode(t, authURL)
			if _, err := c.Exchange(ctx, code, redirect, "wrong-verifier-000000000000000000000000000"); err == nil {
				t.Fatal("wrong PKCE verifier accepted")
			}
			code = authorizeCode(t, authURL)
			ts, err := c.Exchange(ctx, code, redirect, verifier)
			if err != nil {
				t.Fatal(err)
			}
			if !emu.ValidAccess(ts.AccessToken) || ts.Scope != "read write" || ts.TokenType != "Bearer" {
				t.Fatalf("exchange = %+v", ts)
			}
			if tc.expiresIn == 0 && !ts.ExpiresAt.IsZero() || tc.expiresIn > 0 && !ts.ExpiresAt.Equal(fixed.Add(tc.expiresIn)) {
				t.Fatalf("expires_at %v for expires_in %v", ts.ExpiresAt, tc.expiresIn)
			}
			next, err := c.Refresh(ctx, ts.RefreshToken)
			if err != nil {
				t.Fatal(err)
			}
			if tc.rotate == (next.RefreshToken == "") {
				t.Fatalf("rotate=%v but refresh token %q", tc.rotate, next.RefreshToken)
			}
			if tc.rotate {
				_, err = c.Refresh(ctx, ts.RefreshToken)
				assertError(t, err, provider.ClassReauth, "invalid_grant", ts.RefreshToken)
				if emu.RefreshReuses() != 1 {
					t.Fatalf("reuse not detected")
				}
			}
			wrong := newClient(t, cfg, "not-the-secret")
			_, err = wrong.Refresh(ctx, "x")
			assertError(t, err, provider.ClassConfig, "invalid_client", "not-the-secret")
			if err := c.Revoke(ctx, ts.AccessToken, "access_token"); err != nil {
				t.Fatal(err)
			}
			if emu.ValidAccess(ts.AccessToken) {
				t.Fatal("revoked token still valid")
			}
		})
	}
}

func TestOAuth2RefreshWithoutRefreshTokenKeepsOld(t *testing.T) {
	emu := emulator.NewOAuth2("c", "s", "https://b/cb")
	emu.RequirePKCE, emu.Rotate, emu.OmitRefresh = false, false, true
	srv := httptest.NewServer(emu)
	defer srv.Close()
	c := newClient(t, mustConfig(t, "g", `{"kind":"oauth2","client_id":"c","pkce":false,"authorize_url":"`+srv.URL+`/authorize","token_url":"`+srv.URL+`/token"}`), "s")
	ts, err := c.Exchange(context.Background(), authorizeCode(t, mustAuth(t, c, "https://b/cb")), "https://b/cb", "")
	if err != nil {
		t.Fatal(err)
	}
	next, err := c.Refresh(context.Background(), ts.RefreshToken)
	if err != nil || next.RefreshToken != "" {
		t.Fatalf("refresh = %+v, %v; want no refresh token (keep the old one)", next, err)
	}
	if _, err := c.Refresh(context.Background(), ts.RefreshToken); err != nil {
		t.Fatalf("old refresh token must still work: %v", err)
	}
}

func mustAuth(t *testing.T, c provider.Client, redirect string) string {
	u, err := c.AuthorizeURL(provider.AuthorizeRequest{State: "s", RedirectURI: redirect})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestOAuth2ErrorsWithHTTP200AndFormBodies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault emulator.Fault
		class provider.Class
		code  string
	}{
		{"github 200 form error", emulator.Fault{Status: 200, ContentType: "application/x-www-form-urlencoded", Body: "error=bad_verification_code&error_description=The+code+passed+is+incorrect+or+expired."}, provider.ClassTransient, "bad_verification_code"},
		{"github 200 json invalid_grant", emulator.Fault{Status: 200, ContentType: "application/json", Body: `{"error":"invalid_grant","error_description":"revoked"}`}, provider.ClassReauth, "invalid_grant"},
		{"400 invalid_grant", emulator.OAuthError(400, "invalid_grant", "expired"), provider.ClassReauth, "invalid_grant"},
		{"400 invalid_scope", emulator.OAuthError(400, "invalid_scope", "x"), provider.ClassReauth, "invalid_scope"},
		{"401 invalid_client", emulator.OAuthError(401, "invalid_client", "x"), provider.ClassConfig, "invalid_client"},
		{"400 unauthorized_client", emulator.OAuthError(400, "unauthorized_client", "x"), provider.ClassConfig, "unauthorized_client"},
		{"oidc interaction_required", emulator.OAuthError(400, "interaction_required", "x"), provider.ClassReauth, "interaction_required"},
		{"oidc login_required", emulator.OAuthError(400, "login_required", "x"), provider.ClassReauth, "login_required"},
		{"oidc consent_required", emulator.OAuthError(400, "consent_required", "x"), provider.ClassReauth, "consent_required"},
		{"oidc account_selection_required", emulator.OAuthError(400, "account_selection_required", "x"), provider.ClassReauth, "account_selection_required"},
		{"400 unsupported_grant_type", emulator.OAuthError(400, "unsupported_grant_type", "x"), provider.ClassConfig, "unsupported_grant_type"},
		{"503 temporarily_unavailable", emulator.OAuthError(503, "temporarily_unavailable", "x"), provider.ClassTransient, "temporarily_unavailable"},
		{"500 with invalid_grant is still transient", emulator.OAuthError(500, "invalid_grant", "x"), provider.ClassTransient, "invalid_grant"},
		{"429", emulator.Fault{Status: 429, Body: "slow down"}, provider.ClassTransient, "http_429"},
		{"html 500", emulator.HTMLError(500), provider.ClassTransient, "http_500"},
		{"truncated error page", emulator.Fault{Truncate: true}, provider.ClassTransient, "http_400"},
		{"truncated 200", emulator.Fault{Status: 200, ContentType: "application/json", Body: `{"access_token":"abc","expi`}, provider.ClassTransient, "bad_response"},
		{"huge", emulator.Fault{Huge: true}, provider.ClassTransient, "too_large"},
		{"slow", emulator.Fault{Delay: 5 * time.Second}, provider.ClassTransient, "timeout"},
		{"no access token", emulator.Fault{Status: 200, ContentType: "application/json", Body: `{"token_type":"bearer"}`}, provider.ClassTransient, "bad_response"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			emu := emulator.NewOAuth2("c", "topsecret", "https://b/cb")
			srv := httptest.NewServer(emu)
			defer srv.Close()
			c := newClient(t, mustConfig(t, "g", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/authorize","token_url":"`+srv.URL+`/token"}`), "topsecret")
			emu.Inject("/token", tc.fault, 1)
			_, err := c.Refresh(context.Background(), "rt-value-123")
			assertError(t, err, tc.class, tc.code, "topsecret", "rt-value-123")
		})
	}
}

func TestClientCredentials(t *testing.T) {
	emu := emulator.NewOAuth2("m2m", "m2m-secret", "https://unused")
	srv := httptest.NewServer(emu)
	defer srv.Close()
	c := newClient(t, mustConfig(t, "m2m", `{"kind":"oauth2","grant":"client_credentials","client_id":"m2m","token_url":"`+srv.URL+`/token","scopes":["api"]}`), "m2m-secret")
	ts, err := c.MachineToken(context.Background())
	if err != nil || !emu.ValidAccess(ts.AccessToken) || ts.Scope != "api" {
		t.Fatalf("client_credentials = %+v, %v", ts, err)
	}
	if _, err := c.AuthorizeURL(provider.AuthorizeRequest{}); !errors.Is(err, provider.ErrNotSupported) {
		t.Fatalf("authorize on a machine provider: %v", err)
	}
}

func TestParseConfig(t *testing.T) {
	gh := mustConfig(t, "github", `{"preset":"github","client_id":"Iv1.x"}`)
	if gh.Kind != "oauth2" || gh.TokenURL != "https://github.com/login/oauth/access_token" || gh.AuthStyle != "post" {
		t.Fatalf("github preset = %+v", gh)
	}
	g := mustConfig(t, "google", `{"preset":"google","client_id":"x","token_url":"https://override.example/token"}`)
	if g.TokenURL != "https://override.example/token" || g.AuthorizeParams["access_type"] != "offline" {
		t.Fatalf("google override = %+v", g)
	}
	mp := mustConfig(t, "wx", `{"kind":"wechat_mp","client_id":"x"}`)
	if mp.TokenAPI != "stable_token" || mp.RefreshLeadSeconds != 240 || mp.DailyQuotaBudget != 1500 || !mp.Machine() {
		t.Fatalf("wechat_mp defaults = %+v", mp)
	}
	if legacy := mustConfig(t, "wx", `{"kind":"wechat_mp","client_id":"x","token_api":"token"}`); legacy.RefreshLeadSeconds != 600 {
		t.Fatalf("cgi-bin/token lead = %d, want 600", legacy.RefreshLeadSeconds)
	}
	for name, doc := range map[string]string{
		"not json":        `kind=oauth2`,
		"unknown field":   `{"kind":"oauth2","client_id":"x","token_url":"https://t","authorize_url":"https://a","clientid":"y"}`,
		"no client id":    `{"kind":"oauth2","token_url":"https://t","authorize_url":"https://a"}`,
		"no kind":         `{"client_id":"x"}`,
		"bad kind":        `{"kind":"saml","client_id":"x"}`,
		"bad preset":      `{"preset":"myspace","client_id":"x"}`,
		"relative url":    `{"kind":"oauth2","client_id":"x","token_url":"/token","authorize_url":"https://a"}`,
		"bad auth style":  `{"kind":"oauth2","client_id":"x","token_url":"https://t","authorize_url":"https://a","auth_style":"jwt"}`,
		"bad token_api":   `{"kind":"wechat_mp","client_id":"x","token_api":"v3"}`,
		"budget too high": `{"kind":"wechat_mp","client_id":"x","daily_quota_budget":2500}`,
		"wrong type":      `{"kind":"oauth2","client_id":7}`,
		"bad scope":       `{"kind":"wechat_oauth","client_id":"x","scopes":["email"]}`,
		"trailing":        `{"kind":"wechat_mp","client_id":"x"} {}`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := provider.ParseConfig("p", []byte(doc)); err == nil {
				t.Fatalf("accepted %s", doc)
			}
		})
	}
}

func TestStableTokenRenewsInItsLastFiveMinutes(t *testing.T) {
	emu := emulator.NewWeChat("wxapp", "s3cret")
	srv := httptest.NewServer(emu)
	defer srv.Close()
	c := newClient(t, mustConfig(t, "wx", `{"kind":"wechat_mp","client_id":"wxapp","api_base":"`+srv.URL+`"}`), "s3cret")
	first, err := c.MachineToken(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	lead := time.Duration(c.Config().RefreshLeadSeconds) * time.Second
	// Where the refresher's lead puts the next call: inside the window.
	emu.SetClock(func() time.Time { return time.Now().Add(2*time.Hour - lead) })
	second, err := c.MachineToken(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if second.AccessToken == first.AccessToken || emu.GlobalTokenCalls() != 2 {
		t.Fatal("a call inside the last five minutes must return a new token")
	}
	if !emu.ValidGlobal(first.AccessToken) || !emu.ValidGlobal(second.AccessToken) {
		t.Fatal("old and new must both work during the hand-over")
	}
}
