package e2e_test

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
)

func TestConnectFlowEachKind(t *testing.T) {
	f := fns(t)
	for _, tc := range []struct {
		provider string
		valid    func(string) bool
		extra    string
	}{
		{devstack.WeChatWeb, stack.WeChat.ValidUserToken, "openid"},
		{devstack.SinaCloud, stack.Sina.ValidAccess, ""},
		{devstack.OAuth2, stack.OAuth2.ValidAccess, ""},
	} {
		t.Run(tc.provider, func(t *testing.T) {
			conn := "flow-" + tc.provider
			cbPath, cbQuery := connect(t, f, tc.provider, conn)
			tok := tokenOf(t, f.token, tc.provider, conn, "")
			expectStatus(t, tok, 200, "")
			access, _ := tok.json["access_token"].(string)
			if !tc.valid(access) {
				t.Fatalf("token %s is not valid at the emulator", tok.Body)
			}
			if tok.Headers["Cache-Control"] != "no-store" || tok.json["provider"] != tc.provider || tok.json["connection"] != conn || tok.json["token_type"] != "Bearer" {
				t.Fatalf("token response %v %s", tok.Headers, tok.Body)
			}
			if _, err := time.Parse(time.RFC3339, fmt.Sprint(tok.json["expires_at"])); err != nil {
				t.Fatalf("expires_at: %v", tok.json["expires_at"])
			}
			if tc.extra != "" {
				extra, _ := tok.json["extra"].(map[string]any)
				if extra[tc.extra] == "" || extra[tc.extra] == nil {
					t.Fatalf("extra %s missing: %s", tc.extra, tok.Body)
				}
			}
			// Replay of the same callback: rejected, nothing changed.
			replay := invoke(t, f.callback, request{method: "GET", path: cbPath, query: cbQuery})
			expectStatus(t, replay, 400, "bad_request")
			again := tokenOf(t, f.token, tc.provider, conn, "")
			if again.json["access_token"] != access {
				t.Fatal("a replayed callback changed the stored token")
			}
			// The same replay from a browser gets a page, not JSON.
			page := invoke(t, f.callback, request{method: "GET", path: cbPath, query: cbQuery, headers: map[string]string{"accept": "text/html"}})
			if page.StatusCode != 400 || !strings.Contains(page.Headers["Content-Type"], "text/html") {
				t.Fatalf("browser replay: %d %v", page.StatusCode, page.Headers)
			}
			st := invoke(t, f.token, request{method: "GET", path: "/connections/" + tc.provider + "/" + conn, iam: true})
			expectStatus(t, st, 200, "")
			if st.json["status"] != "active" || strings.Contains(st.Body, access) {
				t.Fatalf("status %s", st.Body)
			}
		})
	}
}

func TestStateForAnotherProviderIsRejected(t *testing.T) {
	f := fns(t)
	resp := invoke(t, f.authorize, request{method: "POST", path: "/connections/sinacloud/cross/authorize", iam: true})
	expectStatus(t, resp, 200, "")
	_, query := providerRedirect(t, resp.json["authorize_url"].(string))
	cb := invoke(t, f.callback, request{method: "GET", path: "/callback/oauth2", query: query})
	expectStatus(t, cb, 400, "bad_request")
	if !strings.Contains(cb.json["message"].(string), "another provider") {
		t.Fatalf("message %q", cb.json["message"])
	}
	missing := tokenOf(t, f.token, "sinacloud", "cross", "")
	expectStatus(t, missing, 404, "not_found")
}

func TestCallbackWithoutReturnToShowsPage(t *testing.T) {
	f := fns(t)
	resp := invoke(t, f.authorize, request{method: "POST", path: "/connections/oauth2/pagey/authorize", iam: true})
	expectStatus(t, resp, 200, "")
	path, query := providerRedirect(t, resp.json["authorize_url"].(string))
	cb := invoke(t, f.callback, request{method: "GET", path: path, query: query})
	if cb.StatusCode != 200 || !strings.Contains(cb.Headers["Content-Type"], "text/html") || !strings.Contains(cb.Body, "connected") {
		t.Fatalf("callback without return_to: %d %s", cb.StatusCode, cb.Body)
	}
	// A user who denies consent comes back with ?error=…
	resp = invoke(t, f.authorize, request{method: "POST", path: "/connections/oauth2/denied/authorize", iam: true, body: `{"return_to":"` + returnOrigin + `/x"}`})
	u, _ := url.Parse(resp.json["authorize_url"].(string))
	q := u.Query()
	q.Set("deny", "1")
	u.RawQuery = q.Encode()
	path, query = providerRedirect(t, u.String())
	cb = invoke(t, f.callback, request{method: "GET", path: path, query: query})
	loc, _ := url.Parse(cb.Headers["Location"])
	if cb.StatusCode != 302 || loc.Query().Get("status") != "error" || loc.Query().Get("error") != "forbidden" {
		t.Fatalf("denied: %d %s", cb.StatusCode, cb.Headers["Location"])
	}
}

func TestBadRequests(t *testing.T) {
	f := fns(t)
	for _, tc := range []struct {
		name   string
		fn     *lambdarun.Runner
		rq     request
		status int
		code   string
	}{
		{"unknown provider token", f.token, request{method: "GET", path: "/connections/nope/app/token", iam: true}, 404, "not_found"},
		{"unknown provider authorize", f.authorize, request{method: "POST", path: "/connections/nope/x/authorize", iam: true}, 404, "not_found"},
		{"unknown provider callback", f.callback, request{method: "GET", path: "/callback/nope", query: "code=c&state=s"}, 404, "not_found"},
		{"malformed connection", f.token, request{method: "GET", path: "/connections/oauth2/bad%20id/token", iam: true}, 400, "bad_request"},
		{"malformed provider", f.authorize, request{method: "POST", path: "/connections/" + strings.Repeat("p", 129) + "/x/authorize", iam: true}, 400, "bad_request"},
		{"no IAM on token", f.token, request{method: "GET", path: "/connections/oauth2/x/token"}, 401, "unauthorized"},
		{"no IAM on authorize", f.authorize, request{method: "POST", path: "/connections/oauth2/x/authorize"}, 401, "unauthorized"},
		{"no IAM on delete", f.token, request{method: "DELETE", path: "/connections/oauth2/x"}, 401, "unauthorized"},
		{"bad body", f.authorize, request{method: "POST", path: "/connections/oauth2/x/authorize", iam: true, body: `{"scopes":"read"}`}, 400, "bad_request"},
		{"return_to not allowed", f.authorize, request{method: "POST", path: "/connections/oauth2/x/authorize", iam: true, body: `{"return_to":"https://evil.example/x"}`}, 400, "bad_request"},
		{"machine provider authorize", f.authorize, request{method: "POST", path: "/connections/wechat-mp/app/authorize", iam: true}, 400, "bad_request"},
		{"machine provider other connection", f.token, request{method: "GET", path: "/connections/wechat-mp/other/token", iam: true}, 404, "not_found"},
		{"bad min_ttl", f.token, request{method: "GET", path: "/connections/oauth2/x/token", query: "min_ttl=soon", iam: true}, 400, "bad_request"},
		{"no state", f.callback, request{method: "GET", path: "/callback/oauth2", query: "code=abc"}, 400, "bad_request"},
		{"forged state", f.callback, request{method: "GET", path: "/callback/oauth2", query: "code=abc&state=forged-state-value-0123456789"}, 400, "bad_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectStatus(t, invoke(t, tc.fn, tc.rq), tc.status, tc.code)
		})
	}
	// An event that is not an HTTP API event at all.
	out, err := f.token.Invoke(context.Background(), []byte(`{"hello":"world"}`))
	if err != nil || !strings.Contains(string(out), `"statusCode":400`) {
		t.Fatalf("non-HTTP event: %s, %v", out, err)
	}
}

func TestWeChatGlobalTokenFetchedOnceAndShared(t *testing.T) {
	const sandboxes, callers = 4, 40
	runners := make([]*lambdarun.Runner, sandboxes)
	for i := range runners {
		runners[i] = startFunction(t, "token", nil)
	}
	before := stack.WeChat.GlobalTokenCalls()
	tokens := make([]string, callers)
	var wg sync.WaitGroup
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := tokenOf(t, runners[i%sandboxes], devstack.WeChatMP, "app", "")
			if resp.StatusCode != 200 {
				t.Errorf("caller %d: %d %s", i, resp.StatusCode, resp.Body)
				return
			}
			tokens[i], _ = resp.json["access_token"].(string)
		}()
	}
	wg.Wait()
	if got := stack.WeChat.GlobalTokenCalls() - before; got != 1 {
		t.Fatalf("WeChat issued %d global tokens for %d callers, want 1", got, callers)
	}
	for i, tok := range tokens {
		if tok != tokens[0] || len(tok) != 512 {
			t.Fatalf("caller %d got a different token (len %d)", i, len(tok))
		}
	}
	if !stack.WeChat.ValidGlobal(tokens[0]) {
		t.Fatal("shared token is not valid at WeChat")
	}
}

func TestProviderErrorsKeepTheStoredToken(t *testing.T) {
	f := fns(t)
	conn := "errors"
	connect(t, f, devstack.SinaCloud, conn)
	ageConnection(t, stack.Table, devstack.SinaCloud, conn, 90*time.Second)
	first := tokenOf(t, f.token, devstack.SinaCloud, conn, "")
	expectStatus(t, first, 200, "")
	for _, tc := range []struct {
		name   string
		path   string
		fault  func()
		status int
		code   string
	}{
		{"html 502", "/oauth2/access_token", func() { stack.Sina.Inject("/oauth2/access_token", htmlFault(502), 1) }, 503, "provider_unavailable"},
		{"truncated", "/oauth2/access_token", func() { stack.Sina.Inject("/oauth2/access_token", truncFault(), 1) }, 503, "provider_unavailable"},
		{"huge", "/oauth2/access_token", func() { stack.Sina.Inject("/oauth2/access_token", hugeFault(), 1) }, 503, "provider_unavailable"},
		{"invalid_client", "/oauth2/access_token", func() {
			stack.Sina.Inject("/oauth2/access_token", oauthFault(401, "invalid_client", "bad client"), 1)
		}, 502, "provider_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.fault()
			// min_ttl above what is left of the token forces a refresh.
			ageConnection(t, stack.Table, devstack.SinaCloud, conn, 90*time.Second)
			resp := tokenOf(t, f.token, devstack.SinaCloud, conn, "min_ttl=600")
			expectStatus(t, resp, tc.status, tc.code)
			after := tokenOf(t, f.token, devstack.SinaCloud, conn, "min_ttl=0")
			expectStatus(t, after, 200, "")
			if after.json["access_token"] != first.json["access_token"] {
				t.Fatal("a failed refresh changed the stored token")
			}
			st := invoke(t, f.token, request{method: "GET", path: "/connections/sinacloud/" + conn, iam: true})
			if st.json["status"] != "active" || st.json["last_error"] == "" {
				t.Fatalf("status after failure: %s", st.Body)
			}
		})
	}
	// A refused grant: 409 needs_reauth, and the connection says so.
	stack.Sina.Inject("/oauth2/access_token", oauthFault(400, "invalid_grant", "refresh token revoked"), 1)
	ageConnection(t, stack.Table, devstack.SinaCloud, conn, 90*time.Second)
	expectStatus(t, tokenOf(t, f.token, devstack.SinaCloud, conn, "min_ttl=600"), 409, "needs_reauth")
	expectStatus(t, tokenOf(t, f.token, devstack.SinaCloud, conn, "min_ttl=0"), 409, "needs_reauth")
	calls := stack.Sina.Calls("/oauth2/access_token")
	expectStatus(t, tokenOf(t, f.token, devstack.SinaCloud, conn, "min_ttl=600"), 409, "needs_reauth")
	if stack.Sina.Calls("/oauth2/access_token") != calls {
		t.Fatal("a needs_reauth connection was sent to the provider again")
	}
	// Authorizing again restores it.
	connect(t, f, devstack.SinaCloud, conn)
	expectStatus(t, tokenOf(t, f.token, devstack.SinaCloud, conn, ""), 200, "")
}

func TestStampedeOneRefresh(t *testing.T) {
	f := fns(t)
	conn := "stampede"
	connect(t, f, devstack.SinaCloud, conn)
	const sandboxes, callers = 10, 100
	runners := make([]*lambdarun.Runner, sandboxes)
	for i := range runners {
		runners[i] = startFunction(t, "token", nil)
	}
	// Warm every sandbox first so the measurement is of the refresh, not cold starts.
	var wg sync.WaitGroup
	for _, r := range runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			expectStatus(t, tokenOf(t, r, devstack.SinaCloud, conn, "min_ttl=0"), 200, "")
		}()
	}
	wg.Wait()
	ageConnection(t, stack.Table, devstack.SinaCloud, conn, 90*time.Second)
	refreshes, reuses := stack.Sina.RefreshCalls(), stack.Sina.RefreshReuses()
	tokens := make([]string, callers)
	latencies := make([]time.Duration, callers)
	start := make(chan struct{})
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			resp := tokenOf(t, runners[i%sandboxes], devstack.SinaCloud, conn, "min_ttl=600")
			latencies[i] = time.Since(t0)
			if resp.StatusCode != 200 {
				t.Errorf("caller %d: %d %s", i, resp.StatusCode, resp.Body)
				return
			}
			tokens[i], _ = resp.json["access_token"].(string)
		}()
	}
	close(start)
	wg.Wait()
	if got := stack.Sina.RefreshCalls() - refreshes; got != 1 {
		t.Fatalf("%d provider refreshes for %d concurrent callers, want exactly 1", got, callers)
	}
	if got := stack.Sina.RefreshReuses() - reuses; got != 0 {
		t.Fatalf("%d refresh-token reuses, want 0", got)
	}
	for i := range tokens {
		if tokens[i] != tokens[0] || !stack.Sina.ValidAccess(tokens[i]) {
			t.Fatalf("caller %d got %q, caller 0 %q", i, tokens[i], tokens[0])
		}
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	t.Logf("stampede: %d callers over %d sandboxes: p50 %v p99 %v max %v", callers, sandboxes,
		latencies[callers/2], latencies[callers*99/100], latencies[callers-1])
}

func TestDeleteRevokesAndForgets(t *testing.T) {
	f := fns(t)
	connect(t, f, devstack.OAuth2, "to-delete")
	revokes := stack.OAuth2.Calls("/revoke")
	tok := tokenOf(t, f.token, devstack.OAuth2, "to-delete", "")
	expectStatus(t, tok, 200, "")
	del := invoke(t, f.token, request{method: "DELETE", path: "/connections/oauth2/to-delete", iam: true})
	if del.StatusCode != 204 {
		t.Fatalf("delete: %d %s", del.StatusCode, del.Body)
	}
	expectStatus(t, tokenOf(t, f.token, devstack.OAuth2, "to-delete", ""), 404, "not_found")
	if got := stack.OAuth2.Calls("/revoke") - revokes; got != 1 {
		t.Fatalf("delete revoked %d times at the provider, want exactly 1", got)
	}
}

func TestLogsCarryNoSecrets(t *testing.T) {
	f := fns(t)
	connect(t, f, devstack.OAuth2, "audited")
	tok := tokenOf(t, f.token, devstack.OAuth2, "audited", "")
	expectStatus(t, tok, 200, "")
	access := tok.json["access_token"].(string)
	out := logs.String()
	if !strings.Contains(out, `"audit":true`) || !strings.Contains(out, "arn:aws:iam::123456789012:user/backend") {
		t.Fatal("no audit line with the caller's ARN")
	}
	for _, secret := range []string{access, devstack.OAuth2Secret, devstack.SinaSecret, devstack.WeChatSecret} {
		if strings.Contains(out, secret) {
			t.Fatalf("function output contains a secret or token (%.6s…)", secret)
		}
	}
}
