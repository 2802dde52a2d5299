package broker_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/local/oidc"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// The generic oauth2 kind against panva's oidc-provider, a certified
// OpenID Connect server the project did not write (shared/local/oidc).
// It is stricter than our emulator in ways a real provider is: RFC 9207
// iss on the authorization response, PKCE S256 only, refresh tokens
// rotated on every use with the whole grant revoked on reuse, an id_token
// in the token answer, login and consent pages with cookies.

// oidcProvider starts an oidc-provider for one test and registers it as
// a provider of kind oauth2 under a unique name; authStyle is "basic" or
// "post". tune, when not nil, changes the server's options and the
// provider document before either is used.
func oidcProvider(t *testing.T, f *fixture, prefix, authStyle string, tune func(*oidc.Options, map[string]any)) (string, *oidc.Server) {
	t.Helper()
	ctx := context.Background()
	name := localaws.UniqueName(prefix)
	method := map[string]string{"basic": "client_secret_basic", "post": "client_secret_post"}[authStyle]
	opts := oidc.Options{ClientID: devstack.OAuth2ClientID, Secret: devstack.OAuth2Secret,
		RedirectURI: "https://broker.test/callback/" + name, AuthMethod: method}
	// What a real OpenID provider needs for a refresh token: offline_access,
	// which OpenID Connect only honours with prompt=consent.
	doc := map[string]any{"kind": "oauth2", "client_id": devstack.OAuth2ClientID, "auth_style": authStyle,
		"scopes": []string{"openid", "offline_access"}, "authorize_params": map[string]string{"prompt": "consent"}}
	if tune != nil {
		tune(&opts, doc)
	}
	srv, err := oidc.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Close()
		if t.Failed() {
			t.Logf("oidc-provider stderr:\n%s", srv.Stderr())
		}
	})
	doc["authorize_url"], doc["token_url"], doc["revoke_url"] = srv.AuthorizeURL(), srv.TokenURL(), srv.RevokeURL()
	if err := f.stack.PutProvider(ctx, name, doc, devstack.OAuth2Secret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	return name, srv
}

// connectOIDC runs the connect flow: the broker's authorize URL, the
// server's login and consent pages, the callback with what the server
// sent the browser back with (code, state and iss).
func (f *fixture) connectOIDC(t *testing.T, srv *oidc.Server, k store.Key) {
	t.Helper()
	ctx := context.Background()
	res, err := f.b.StartAuthorization(ctx, broker.AuthorizeRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	q, err := oidc.Browse(ctx, res.AuthorizeURL, "https://broker.test/callback/"+k.Provider)
	if err != nil {
		t.Fatal(err)
	}
	if q.Get("iss") != srv.Issuer || q.Get("code") == "" || q.Get("error") != "" {
		t.Fatalf("authorization response: iss %q (want %q), code %v, error %q %q", q.Get("iss"), srv.Issuer, q.Get("code") != "", q.Get("error"), q.Get("error_description"))
	}
	cb, err := f.b.CompleteAuthorization(ctx, broker.CallbackRequest{Provider: k.Provider, Code: q.Get("code"), State: q.Get("state")})
	if err != nil || cb.Err != nil {
		t.Fatalf("complete: %v / %v", err, cb.Err)
	}
}

// counters reads the server's counts and checks the ones named.
func checkCounters(t *testing.T, srv *oidc.Server, step string, want map[string]int) map[string]int {
	t.Helper()
	got, err := srv.Counters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: server counted %q %d times, want %d (all: %v)", step, k, got[k], n, got)
		}
	}
	for k := range got {
		if strings.HasPrefix(k, "grant.error.") || k == "server_error" {
			if _, expected := want[k]; !expected {
				t.Errorf("%s: server counted an unexpected %q (all: %v)", step, k, got)
			}
		}
	}
	t.Logf("%s: server counted %v", step, got)
	return got
}

// userinfo asks the server's userinfo endpoint whether an access token
// still works.
func userinfo(t *testing.T, srv *oidc.Server, access string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.Issuer+"/me", nil)
	req.Header.Set("Authorization", "Bearer "+access)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Connect, token, three sequential forced refreshes (one naming the
// rejected token), twenty concurrent forced refreshes naming the same
// token from four broker instances, and a refresh after the user
// withdrew the grant at the server.
func TestOIDCProviderRefreshes(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, srv := oidcProvider(t, f, "oidc", "basic", nil)
	k := store.Key{Provider: name, Connection: "alice"}
	f.connectOIDC(t, srv, k)
	checkCounters(t, srv, "connect", map[string]int{"interaction.login": 1, "interaction.consent": 1,
		"POST /token authorization_code 200": 1, "grant.success.authorization_code": 1})

	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	if userinfo(t, srv, tok.AccessToken) != http.StatusOK {
		t.Fatal("the stored access token does not work at the server's userinfo endpoint")
	}
	seen := map[string]bool{tok.AccessToken: true}
	for i, rejected := range []bool{false, false, true} {
		req := broker.TokenRequest{Key: k, Force: true}
		if rejected {
			req.Rejected = tok.AccessToken
		}
		next, err := f.b.Token(ctx, req)
		if err != nil {
			t.Fatalf("forced refresh %d: %v", i+1, err)
		}
		if seen[next.AccessToken] {
			t.Fatalf("forced refresh %d handed back a token already seen", i+1)
		}
		seen[next.AccessToken] = true
		tok = next
	}
	checkCounters(t, srv, "3 forced refreshes", map[string]int{"POST /token refresh_token 200": 3,
		"grant.success.refresh_token": 3, "refresh_token.consumed": 3, "grant.revoked": 0})

	// Twenty callers across four broker instances (four Lambda sandboxes:
	// only the store's lease keeps them to one refresh).
	const callers = 20
	brokers := []*broker.Broker{f.b, f.sibling(t), f.sibling(t), f.sibling(t)}
	var wg sync.WaitGroup
	got := make([]string, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := brokers[i%len(brokers)].Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: tok.AccessToken})
			if err == nil {
				got[i] = r.AccessToken
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("concurrent forced refresh %d: %v", i, errs[i])
		}
		if got[i] != got[0] || seen[got[i]] {
			t.Fatalf("concurrent forced refresh %d got another token than caller 0, or an old one", i)
		}
	}
	checkCounters(t, srv, "20 concurrent forced refreshes", map[string]int{"POST /token refresh_token 200": 4,
		"grant.success.refresh_token": 4, "refresh_token.consumed": 4, "grant.revoked": 0})
	if userinfo(t, srv, got[0]) != http.StatusOK {
		t.Fatal("the refreshed access token does not work at the server's userinfo endpoint")
	}

	// The user withdraws the app's access at the server.
	if err := srv.RevokeGrants(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: got[0]}); broker.ErrorCode(err) != broker.CodeNeedsReauth {
		t.Fatalf("forced refresh of a withdrawn grant: %v, want needs_reauth", err)
	}
	if st, err := f.b.Status(ctx, k); err != nil || st.Status != store.StatusNeedsReauth {
		t.Fatalf("status after the grant was withdrawn: %+v, %v", st, err)
	}
	checkCounters(t, srv, "withdrawn grant", map[string]int{"POST /token refresh_token 400": 1,
		"grant.error.refresh_token.invalid_grant": 1, "grant.success.refresh_token": 4})
}

// DELETE revokes the grant at the server: its revocation endpoint ends
// the whole grant, so the access token in hand stops working too.
func TestOIDCProviderDeleteRevokes(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, srv := oidcProvider(t, f, "oidcdel", "post", nil)
	k := store.Key{Provider: name, Connection: "alice"}
	f.connectOIDC(t, srv, k)
	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	if userinfo(t, srv, tok.AccessToken) != http.StatusOK {
		t.Fatal("the stored access token does not work at the server's userinfo endpoint")
	}
	if err := f.b.Delete(ctx, k, "test"); err != nil {
		t.Fatal(err)
	}
	checkCounters(t, srv, "delete", map[string]int{"POST /token/revocation 200": 1, "grant.revoked": 1})
	if code := userinfo(t, srv, tok.AccessToken); code != http.StatusUnauthorized {
		t.Fatalf("the access token still works after DELETE: userinfo HTTP %d", code)
	}
	if _, err := f.b.Status(ctx, k); broker.ErrorCode(err) != broker.CodeNotFound {
		t.Fatalf("status after delete: %v", err)
	}
}

// client_credentials against the same server: the app token is fetched
// once, served from the store after that, and a forced refresh naming it
// fetches exactly one more.
func TestOIDCProviderClientCredentials(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, srv := oidcProvider(t, f, "oidccc", "basic", nil)
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "oauth2", "grant": "client_credentials", "client_id": devstack.OAuth2ClientID,
		"token_url": srv.TokenURL(), "auth_style": "basic", "scopes": []string{"api"}}, devstack.OAuth2Secret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	first, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	again, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil || again.AccessToken != first.AccessToken {
		t.Fatalf("second token request: %v (same token: %v)", err, err == nil && again.AccessToken == first.AccessToken)
	}
	checkCounters(t, srv, "fetch", map[string]int{"POST /token client_credentials 200": 1, "grant.success.client_credentials": 1})
	forced, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: first.AccessToken})
	if err != nil || forced.AccessToken == first.AccessToken {
		t.Fatalf("forced: %v", err)
	}
	checkCounters(t, srv, "forced", map[string]int{"POST /token client_credentials 200": 2, "grant.success.client_credentials": 2})
}

// A wrong client secret: the server answers 401 invalid_client with
// WWW-Authenticate. That is the app's configuration, not the user's
// grant: the connection stays active with its token, and the next good
// refresh works.
func TestOIDCProviderWrongSecretIsNotTheUsersFault(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, srv := oidcProvider(t, f, "oidcsec", "basic", nil)
	k := store.Key{Provider: name, Connection: "alice"}
	f.connectOIDC(t, srv, k)
	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	doc := map[string]any{"kind": "oauth2", "client_id": devstack.OAuth2ClientID, "authorize_url": srv.AuthorizeURL(), "token_url": srv.TokenURL(),
		"revoke_url": srv.RevokeURL(), "auth_style": "basic", "scopes": []string{"openid", "offline_access"}, "authorize_params": map[string]string{"prompt": "consent"}}
	if err := f.stack.PutProvider(ctx, name, doc, "not-the-secret"); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	_, err = f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: tok.AccessToken})
	if code := broker.ErrorCode(err); code != broker.CodeProviderError {
		t.Fatalf("forced refresh with a wrong client secret: %v, want provider_error", err)
	}
	if st, err := f.b.Status(ctx, k); err != nil || st.Status != store.StatusActive {
		t.Fatalf("status after a wrong secret: %+v, %v", st, err)
	}
	checkCounters(t, srv, "wrong secret", map[string]int{"POST /token refresh_token 401": 1, "grant.error.refresh_token.invalid_client": 1, "grant.revoked": 0})
	if err := f.stack.PutProvider(ctx, name, doc, devstack.OAuth2Secret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	f.clock.Add(5 * time.Minute) // past the failed refresh's backoff
	next, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: tok.AccessToken})
	if err != nil || next.AccessToken == tok.AccessToken {
		t.Fatalf("forced refresh with the secret fixed: %v", err)
	}
	checkCounters(t, srv, "secret fixed", map[string]int{"POST /token refresh_token 200": 1, "grant.error.refresh_token.invalid_client": 1})
}

// With oidc-provider's own refresh token policy, offline_access is what
// brings a refresh token, and OpenID Connect honours it only with
// prompt=consent: the provider document decides whether the connection
// can be refreshed at all. Without prompt=consent the server drops
// offline_access, the grant has no refresh token, and a forced refresh
// answers not_refreshable without calling the server.
func TestOIDCProviderOfflineAccessNeedsConsentPrompt(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		prompt  bool
		refresh bool
	}{{"prompt=consent", true, true}, {"no prompt", false, false}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			name, srv := oidcProvider(t, f, "oidcoff", "basic", func(o *oidc.Options, doc map[string]any) {
				o.OfflineAccessOnly = true
				if !tc.prompt {
					delete(doc, "authorize_params")
				}
			})
			k := store.Key{Provider: name, Connection: "alice"}
			f.connectOIDC(t, srv, k)
			tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
			if err != nil {
				t.Fatal(err)
			}
			next, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: tok.AccessToken})
			switch {
			case tc.refresh && (err != nil || next.AccessToken == tok.AccessToken):
				t.Fatalf("forced refresh with offline_access granted: %v", err)
			case !tc.refresh && broker.ErrorCode(err) != broker.CodeNotRefreshable:
				t.Fatalf("forced refresh without a refresh token: %v, want not_refreshable", err)
			}
			refreshes := map[bool]int{true: 1, false: 0}[tc.refresh]
			checkCounters(t, srv, tc.name, map[string]int{"POST /token authorization_code 200": 1, "POST /token refresh_token 200": refreshes})
		})
	}
}
