package e2e_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/local/oidc"
)

// The connect flow through the real functions against oidc-provider, a
// certified OpenID server (shared/local/oidc), as an operator would run
// it: the browser comes back to GET /callback/{provider} with code, state
// and iss (RFC 9207); a forced refresh and DELETE go through the token
// function. The server counts what it was asked.
func TestOIDCProviderThroughTheFunctions(t *testing.T) {
	ctx := context.Background()
	name := localaws.UniqueName("oidce2e")
	callback := publicBase + "/callback/" + name
	srv, err := oidc.Start(ctx, oidc.Options{ClientID: devstack.OAuth2ClientID, Secret: devstack.OAuth2Secret, RedirectURI: callback})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Close()
		if t.Failed() {
			t.Logf("oidc-provider stderr:\n%s", srv.Stderr())
		}
	})
	if err := stack.PutProvider(ctx, name, map[string]any{"kind": "oauth2", "client_id": devstack.OAuth2ClientID,
		"authorize_url": srv.AuthorizeURL(), "token_url": srv.TokenURL(), "revoke_url": srv.RevokeURL(), "auth_style": "basic",
		"scopes": []string{"openid", "offline_access"}, "authorize_params": map[string]string{"prompt": "consent"}}, devstack.OAuth2Secret); err != nil {
		t.Fatal(err)
	}
	authorize, cb, token := startFunction(t, "authorize", nil), startFunction(t, "callback", nil), startFunction(t, "token", nil)

	start := invoke(t, authorize, request{method: "POST", path: "/connections/" + name + "/alice/authorize",
		body: `{"return_to":"` + returnOrigin + `/done"}`, iam: true})
	expectStatus(t, start, 200, "")
	authURL, _ := start.json["authorize_url"].(string)
	q, err := oidc.Browse(ctx, authURL, callback)
	if err != nil {
		t.Fatal(err)
	}
	if q.Get("iss") != srv.Issuer || q.Get("code") == "" {
		t.Fatalf("the server's authorization response: iss %q (want %q), code present %v", q.Get("iss"), srv.Issuer, q.Get("code") != "")
	}
	back := invoke(t, cb, request{method: "GET", path: "/callback/" + name, query: q.Encode()})
	expectStatus(t, back, 302, "")
	loc, _ := url.Parse(back.Headers["Location"])
	if loc == nil || !strings.HasPrefix(loc.String(), returnOrigin+"/done") || loc.Query().Get("status") != "connected" {
		t.Fatalf("callback redirected to %q", back.Headers["Location"])
	}

	first := tokenOf(t, token, name, "alice", "")
	expectStatus(t, first, 200, "")
	access, _ := first.json["access_token"].(string)
	forced := forceRefresh(t, token, name, "alice", access)
	expectStatus(t, forced, 200, "")
	if forced.json["access_token"] == access || forced.json["access_token"] == nil {
		t.Fatal("a forced refresh naming the stored token answered the same token")
	}
	del := invoke(t, token, request{method: "DELETE", path: "/connections/" + name + "/alice", iam: true})
	if del.StatusCode != 204 {
		t.Fatalf("delete: %d %s", del.StatusCode, del.Body)
	}
	got, err := srv.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k, n := range map[string]int{"interaction.login": 1, "interaction.consent": 1, "POST /token authorization_code 200": 1,
		"POST /token refresh_token 200": 1, "refresh_token.consumed": 1, "POST /token/revocation 200": 1, "grant.revoked": 1} {
		if got[k] != n {
			t.Errorf("server counted %q %d times, want %d (all: %v)", k, got[k], n, got)
		}
	}
	for k := range got {
		if strings.HasPrefix(k, "grant.error.") || k == "server_error" {
			t.Errorf("server counted an unexpected %q (all: %v)", k, got)
		}
	}
}
