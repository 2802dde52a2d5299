package broker_test

// Regression tests for the review findings of issue 16 (the edges of the
// refresh protocol), each written to fail on the code before its fix.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/sealing"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// recorder is a Notifier that keeps what was published, for tests that
// need an event's detail (the e2e suite checks delivery through moto).
type recorder struct {
	mu     sync.Mutex
	events []recorded
}

type recorded struct {
	kind   string
	detail map[string]any
}

func (r *recorder) Publish(_ context.Context, kind string, detail []byte) error {
	var d map[string]any
	_ = json.Unmarshal(detail, &d)
	r.mu.Lock()
	r.events = append(r.events, recorded{kind, d})
	r.mu.Unlock()
	return nil
}

func (r *recorder) of(kind, connection string) []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]any
	for _, e := range r.events {
		if e.kind == kind && e.detail["connection"] == connection {
			out = append(out, e.detail)
		}
	}
	return out
}

// revokingProvider registers a dedicated OAuth 2.0 emulator with a
// revoke_url, with revoke_per_token as given.
func revokingProvider(t *testing.T, f *fixture, perToken bool, tune func(*emulator.OAuth2)) (string, *emulator.OAuth2, string) {
	t.Helper()
	name := localaws.UniqueName("rvk")
	o2 := emulator.NewOAuth2(devstack.OAuth2ClientID, devstack.OAuth2Secret, "https://broker.test/callback/"+name)
	o2.ExpiresIn = time.Hour
	if tune != nil {
		tune(o2)
	}
	o2.SetClock(f.clock.Now)
	srv := startServer(t, o2)
	if err := f.stack.PutProvider(context.Background(), name, map[string]any{"kind": "oauth2", "client_id": devstack.OAuth2ClientID,
		"authorize_url": srv + "/authorize", "token_url": srv + "/token", "revoke_url": srv + "/revoke", "auth_style": "basic",
		"revoke_per_token": perToken}, devstack.OAuth2Secret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	return name, o2, srv
}

// inFlight waits until the emulator has n requests to path.
func inFlight(t *testing.T, o2 interface{ Calls(string) int }, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for o2.Calls(path) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s never reached %d calls", path, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Item 2: a refresh of grant G1 is at the provider when the user consents
// again (G2). G1's commit loses on generation and its new tokens are
// orphans. At a provider whose revocation ends the user's whole grant
// (Google), revoking them would end G2 too: they are revoked only where
// revocation is per token.
func TestOrphanRevokedOnlyWhereRevocationIsPerToken(t *testing.T) {
	for _, perToken := range []bool{false, true} {
		t.Run(map[bool]string{false: "whole-grant", true: "per-token"}[perToken], func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			name, o2, _ := revokingProvider(t, f, perToken, func(o *emulator.OAuth2) { o.Rotate = true })
			k := store.Key{Provider: name, Connection: "alice"}
			f.authorize(t, k)
			gate := make(chan struct{})
			o2.Inject("/token", emulator.Fault{Gate: gate}, 1)
			done := make(chan error, 1)
			go func() {
				_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
				done <- err
			}()
			inFlight(t, o2, "/token", 2) // the code exchange, then the held refresh
			f.authorize(t, k)            // G2 replaces G1 while G1's refresh is out
			close(gate)
			if err := <-done; err != nil {
				t.Logf("refresh of the replaced grant: %v", err)
			}
			want := 0
			if perToken {
				want = 1
			}
			if got := o2.Calls("/revoke"); got != want {
				t.Fatalf("%d revocations of the orphaned tokens, want %d", got, want)
			}
			tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
			if err != nil || !o2.ValidAccess(tok.AccessToken) {
				t.Fatalf("the new grant does not work after the race: %v", err)
			}
		})
	}
}

// Item 3: one unauthorized_client (SinaCloud: the app lacks the refresh
// permission) doomed the grant. The refusal is now remembered for an hour;
// then a refresh asks again, and a forced refresh always asks.
func TestRefreshDenialIsRememberedForABoundedTime(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	stack.Sina.SetClock(f.clock.Now)
	k := store.Key{Provider: devstack.SinaCloud, Connection: localaws.UniqueName("denied")}
	f.authorize(t, k)
	first, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	calls := func() int { return stack.Sina.Calls("/oauth2/access_token") }
	base := calls()
	// Due for a refresh (a week's token, 10% lead): the provider refuses.
	f.clock.Add(6*24*time.Hour + 12*time.Hour)
	stack.Sina.Inject("/oauth2/access_token", emulator.OAuthError(http.StatusBadRequest, "unauthorized_client", "no refresh permission"), 1)
	got, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 24 * time.Hour})
	if err != nil || got.AccessToken != first.AccessToken || calls() != base+1 {
		t.Fatalf("refused refresh: %v, %d calls", err, calls()-base)
	}
	// Within the hour the refusal holds: the token is served, nobody asks.
	f.clock.Add(30 * time.Minute)
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 24 * time.Hour}); err != nil || calls() != base+1 {
		t.Fatalf("within the hour: %v, %d calls, want 1", err, calls()-base)
	}
	if sum, err := f.b.RefreshDue(ctx); err != nil || sum.Refreshed != 0 || calls() != base+1 {
		t.Fatalf("refresher within the hour: %+v %v, %d calls", sum, err, calls()-base)
	}
	// After it, the permission has been granted: the refresher asks again.
	f.clock.Add(31 * time.Minute)
	if sum, err := f.b.RefreshDue(ctx); err != nil || sum.Refreshed != 1 || calls() != base+2 {
		t.Fatalf("refresher after the hour: %+v %v, %d calls, want 2", sum, err, calls()-base)
	}
	st, _ := f.b.Status(ctx, k)
	if st.Status != store.StatusActive || st.LastError != "" {
		t.Fatalf("status after the permission came back: %+v", st)
	}
	// A forced refresh asks at once, even right after a refusal.
	stack.Sina.Inject("/oauth2/access_token", emulator.OAuthError(http.StatusBadRequest, "unauthorized_client", "no refresh permission"), 1)
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); broker.ErrorCode(err) != broker.CodeProviderError {
		t.Fatalf("forced refresh refused by the provider: %v, want provider_error", err)
	}
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); err != nil || calls() != base+4 {
		t.Fatalf("second forced refresh: %v, %d calls, want 4", err, calls()-base)
	}
}

// Item 4: DELETE read RT1 and revoked it while a refresh committed RT2; the
// delete, fenced on generation only, succeeded and RT2 lived on. Fenced on
// the version too, the delete goes round again and revokes RT2.
func TestDeleteRacingARefreshRevokesWhatIsCurrent(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	events := &recorder{}
	f.b.Notifier = events
	name, o2, srv := revokingProvider(t, f, true, func(o *emulator.OAuth2) { o.Rotate = true })
	k := store.Key{Provider: name, Connection: "bob"}
	f.authorize(t, k)
	gate := make(chan struct{})
	o2.Inject("/revoke", emulator.Fault{Gate: gate}, 1)
	done := make(chan error, 1)
	go func() { done <- f.b.Delete(ctx, k, "arn:aws:iam::123456789012:role/test") }()
	inFlight(t, o2, "/revoke", 1)
	other := f.sibling(t)
	if _, err := other.Token(ctx, broker.TokenRequest{Key: k, Force: true}); err != nil {
		t.Fatal(err)
	}
	current, err := f.store.Get(ctx, k, true)
	if err != nil {
		t.Fatal(err)
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Get(ctx, k, true); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("connection still there: %v", err)
	}
	if o2.Calls("/revoke") != 2 {
		t.Fatalf("%d revocations, want 2 (RT1, then the RT2 committed meanwhile)", o2.Calls("/revoke"))
	}
	resp, err := http.PostForm(srv+"/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {current.RefreshToken},
		"client_id": {devstack.OAuth2ClientID}, "client_secret": {devstack.OAuth2Secret}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatal("the refresh token current at the delete still works")
	}
	deleted := events.of("Connection Deleted", "bob")
	if len(deleted) != 1 || deleted[0]["revoked"] != true {
		t.Fatalf("Connection Deleted events: %v", deleted)
	}
}

// Item 4, the other half: revoked says whether the token current at the
// delete was revoked, so a provider that fails the revocation gives false.
func TestDeletedEventSaysWhetherTheCurrentTokenWasRevoked(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	events := &recorder{}
	f.b.Notifier = events
	name, o2, _ := revokingProvider(t, f, true, nil)
	k := store.Key{Provider: name, Connection: "carol"}
	f.authorize(t, k)
	o2.Inject("/revoke", emulator.HTMLError(http.StatusBadGateway), 1)
	if err := f.b.Delete(ctx, k, "arn:aws:iam::123456789012:role/test"); err != nil {
		t.Fatal(err)
	}
	if d := events.of("Connection Deleted", "carol"); len(d) != 1 || d[0]["revoked"] != false {
		t.Fatalf("Connection Deleted events: %v", d)
	}
}

// Item 7: stable_token hands back the same token with what is left of its
// life; min_ttl above that refetched it again and again (30 requests at
// min_ttl=62m made 8 calls). Now one token is asked for once.
func TestStableTokenMinTTLAsksOncePerToken(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	wx := emulator.NewWeChat(devstack.WeChatAppID, devstack.WeChatSecret)
	wx.SetClock(f.clock.Now)
	srv := startServer(t, wx)
	name := localaws.UniqueName("stable")
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "wechat_mp", "client_id": devstack.WeChatAppID, "api_base": srv,
		"token_api": "stable_token"}, devstack.WeChatSecret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	first, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		f.clock.Add(3 * time.Minute) // 90 minutes of a 2-hour token
		tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 62 * time.Minute})
		if err != nil || tok.AccessToken != first.AccessToken {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if n := wx.Calls("/cgi-bin/stable_token"); n != 1 {
		t.Fatalf("%d stable_token calls for one token, want 1", n)
	}
	// Inside its last five minutes the next request gets a new token, once.
	f.clock.Add(2*time.Hour - 90*time.Minute - 4*time.Minute)
	for range 3 {
		tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 62 * time.Minute})
		if err != nil || tok.AccessToken == first.AccessToken {
			t.Fatalf("in the last minutes: %v", err)
		}
	}
	if n := wx.Calls("/cgi-bin/stable_token"); n != 2 {
		t.Fatalf("%d stable_token calls, want 2", n)
	}
}

// Item 8: a five-minute token (Keycloak's default) had a lead of its whole
// lifetime and was rotated on every tick. The lead is at most half the
// lifetime now: ten one-minute ticks rotate it three times.
func TestShortLivedTokensAreUsedForHalfTheirLife(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, o2, _ := revokingProvider(t, f, true, func(o *emulator.OAuth2) { o.ExpiresIn = 5 * time.Minute; o.Rotate = true })
	k := store.Key{Provider: name, Connection: "dave"}
	f.authorize(t, k)
	for range 10 {
		f.clock.Add(time.Minute)
		if _, err := f.b.RefreshDue(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := o2.RefreshCalls(); n != 3 {
		t.Fatalf("%d rotations in ten minutes of five-minute tokens, want 3", n)
	}
}

// Item 9a: the refresher read shards 0→63 every tick, so under a lasting
// backlog the last shards waited. ScanDueFrom starts where it is told and
// goes round, and the refresher starts each tick at a random shard.
func TestDueScanStartsAtTheGivenShard(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	now := f.clock.Now()
	perShard := map[string]int{}
	for i := range 40 {
		k := store.Key{Provider: "shards", Connection: fmt.Sprintf("c%02d", i)}
		c := &store.Connection{Key: k, Status: store.StatusActive, AccessToken: "a", RefreshToken: "r",
			ExpiresAt: now.Add(time.Hour), RefreshAt: now.Add(-time.Minute)}
		if err := f.store.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
		perShard[f.store.DueShard(k)]++
	}
	for first := range 8 {
		want := fmt.Sprintf("shards#%d", first)
		var visited []string
		err := f.store.ScanDueFrom(ctx, "shards", now, first, func(d *store.DueItem) error {
			visited = append(visited, f.store.DueShard(d.Key))
			return nil
		})
		if err != nil || len(visited) != 40 {
			t.Fatalf("scan from %d: %d items, %v", first, len(visited), err)
		}
		if perShard[want] > 0 && visited[0] != want {
			t.Fatalf("scan from %d began at %s, want %s", first, visited[0], want)
		}
	}
}

// countingConfig counts the broker's forced reloads of the real loader.
type countingConfig struct {
	broker.Configuration
	mu      sync.Mutex
	reloads int
}

func (c *countingConfig) Reload(ctx context.Context) (*config.Snapshot, error) {
	c.mu.Lock()
	c.reloads++
	c.mu.Unlock()
	return c.Configuration.Reload(ctx)
}

// Item 9b: a value sealed under a key removed from the ring made every
// read reload the configuration (about once a second per instance, so a
// fleet of a hundred hammered SSM). A key id a fresh load did not bring is
// not asked for again until the ring changes.
func TestRemovedKeyIsReloadedForOnce(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	gone, err := sealing.NewRing("gone", map[string][]byte{"gone": make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	old := *f.store
	old.Ring = gone
	k := store.Key{Provider: devstack.OAuth2, Connection: "sealed-under-a-removed-key"}
	if err := old.Create(ctx, &store.Connection{Key: k, Status: store.StatusActive, AccessToken: "a", RefreshToken: "r",
		ExpiresAt: f.clock.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	counting := &countingConfig{Configuration: f.b.Config}
	f.b.Config = counting
	for range 10 {
		if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); broker.ErrorCode(err) != broker.CodeInternal {
			t.Fatalf("a value no key opens: %v", err)
		}
	}
	if counting.reloads != 1 {
		t.Fatalf("%d reloads for ten reads of a value sealed under a removed key, want 1", counting.reloads)
	}
}

// An answer with a rotated refresh token and no access token (the lenient
// parser keeps it) is stored, and the caller gets provider_error, never a
// 200 with an empty token.
func TestRefreshTokenWithoutAccessTokenIsKeptNotServed(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, o2, _ := revokingProvider(t, f, true, nil)
	k := store.Key{Provider: name, Connection: "no-access"}
	f.authorize(t, k)
	o2.Inject("/token", emulator.Fault{Status: http.StatusOK, ContentType: "application/json",
		Body: `{"refresh_token":"rotated-refresh-token-0123456789","token_type":"Bearer","expires_in":3600}`}, 1)
	_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	if broker.ErrorCode(err) != broker.CodeProviderError {
		t.Fatalf("an answer with no access token: %v, want provider_error", err)
	}
	c, _ := f.store.Get(ctx, k, true)
	if c.RefreshToken != "rotated-refresh-token-0123456789" || c.AccessToken != "" || c.LastError == "" || c.RetryAt.IsZero() {
		t.Fatalf("stored: refresh %q, access %q, last_error %q, retry_at %v", c.RefreshToken, c.AccessToken, c.LastError, c.RetryAt)
	}
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); broker.ErrorCode(err) != broker.CodeProviderUnavailable || broker.RetryAfter(err) <= 0 {
		t.Fatalf("right after: %v, want 503 with Retry-After", err)
	}
}
