package broker_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// Review 3 attacks on the fan-out refresher and HomeRegion (issue 20).
// Kept as regressions: each names what it attacked.

// TestFanOutReviewUnitTokenDoneIsRefused: ReleaseUnit closes a claim by setting
// its token to the literal "done"; a message whose token is "done" would
// take a closed claim. ParseUnit should refuse it.
func TestFanOutReviewUnitTokenDoneIsRefused(t *testing.T) {
	if _, err := broker.ParseUnit(`{"provider":"p","shard":1,"token":"done"}`); err == nil {
		t.Fatal(`a unit message with the token "done" is accepted: it takes any closed claim`)
	}
}

// TestFanOutReviewReplicaDoesNotWrite: README's stance is "one home region
// refreshes and writes"; a global table settles concurrent writes by last
// writer wins. A replica that deletes or imports writes a connection that
// the home region may be refreshing at the same moment.
func TestFanOutReviewReplicaDoesNotWrite(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	name, _, counter := ownProvider(t, f)
	k := store.Key{Provider: name, Connection: "replicated"}
	f.authorize(t, k)
	f.env["HOME_REGION"] = "eu-west-1"
	replica := f.sibling(t)
	replica.Config = f.b.Config
	before := counter.calls.Load()
	_, _, ierr := replica.Import(ctx, broker.ImportRequest{Key: store.Key{Provider: name, Connection: "imported"},
		AccessToken: "at-replica-0123456789", RefreshToken: "rt-replica-0123456789", ExpiresIn: ptr(int64(3600))})
	derr := replica.Delete(ctx, k, "review3")
	if got := counter.calls.Load() - before; got != 0 {
		t.Errorf("replica made %d provider calls", got)
	}
	if ierr == nil {
		t.Errorf("a replica imported a connection (a write in a non-home region)")
	}
	if _, err := f.store.Get(ctx, k, true); err != nil {
		t.Errorf("a replica deleted a connection (delete error %v): %v", derr, err)
	}
}

// TestFanOutReviewEscapedKeyLeakReachesLastError: the provider-level leak of a
// token behind a \u-escaped key (provider/review3_attack_test.go) reaches
// the stored last_error and the caller's error text.
func TestFanOutReviewEscapedKeyLeakReachesLastError(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const leaked = "AT.r3leak.QWERTYasdfgh-ZXCVBnm"
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"\u0061ccess_token":"` + leaked + `","refresh_tok`))
	})
	srv := startServer(t, h)
	name := localaws.UniqueName("leak")
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "oauth2", "client_id": "c",
		"authorize_url": srv + "/authorize", "token_url": srv + "/token"}, "secret-0123456789"); err != nil {
		t.Fatal(err)
	}
	f.b.Config = &config.Loader{SSM: localaws.SSMClient(stack.Endpoints.SSM), Prefix: f.stack.Prefix}
	k := store.Key{Provider: name, Connection: "c1"}
	if _, _, err := f.b.Import(ctx, broker.ImportRequest{Key: k, AccessToken: "at-import-0123456789", RefreshToken: "rt-import-0123456789", ExpiresIn: ptr(int64(120))}); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(5 * time.Minute)
	_, terr := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Minute})
	c, err := f.store.Get(ctx, k, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("last_error %q caller error %v", c.LastError, terr)
	if strings.Contains(c.LastError, "QWERTY") || (terr != nil && strings.Contains(terr.Error(), "QWERTY")) {
		t.Fatalf("token in last_error %q / caller error %v", c.LastError, terr)
	}
}

// TestFanOutReviewReplicaCallback: a callback that lands in a replica region
// (a global callback domain routed by latency) must not call the provider
// and must not spend the flow: the home region can still complete it.
func TestFanOutReviewReplicaCallback(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	name, _, counter := ownProvider(t, f)
	k := store.Key{Provider: name, Connection: "cb"}
	res, err := f.b.StartAuthorization(ctx, broker.AuthorizeRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := noRedirect.Get(res.AuthorizeURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := resp.Location()
	q := loc.Query()
	f.env["HOME_REGION"] = "eu-west-1"
	replica := f.sibling(t)
	replica.Config = f.b.Config
	before := counter.calls.Load()
	rcb, rerr := replica.CompleteAuthorization(ctx, broker.CallbackRequest{Provider: k.Provider, Code: q.Get("code"), State: q.Get("state")})
	if got := counter.calls.Load() - before; got != 0 {
		t.Fatalf("replica callback made %d provider calls", got)
	}
	t.Logf("replica callback: %v / %+v", rerr, rcb)
	cb, err := f.b.CompleteAuthorization(ctx, broker.CallbackRequest{Provider: k.Provider, Code: q.Get("code"), State: q.Get("state")})
	if err != nil || cb == nil || cb.Err != nil {
		t.Fatalf("the home region cannot complete the flow after the replica saw its callback: %v / %+v", err, cb)
	}
}

// TestFanOutReviewWorkersAndCallersNeverReuseARefreshToken: two workers with
// the same units (duplicate delivery) and callers asking for the same
// connections at once: SinaCloud's single-use refresh tokens must never
// be presented twice, and every connection ends active.
func TestFanOutReviewWorkersAndCallersNeverReuseARefreshToken(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name := localaws.UniqueName("sinafan")
	sina := emulator.NewSinaCloud(devstack.SinaClientID, devstack.SinaSecret, "https://broker.test/callback/"+name)
	sina.SetClock(f.clock.Now)
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "sinacloud", "client_id": devstack.SinaClientID, "api_base": startServer(t, sina)}, devstack.SinaSecret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	const n = 16
	var keys []store.Key
	for i := range n {
		k := store.Key{Provider: name, Connection: fmt.Sprintf("s%02d", i)}
		f.authorize(t, k)
		keys = append(keys, k)
	}
	q := &memQueue{}
	f.b.Queue = q
	w1, w2, caller := f.sibling(t), f.sibling(t), f.sibling(t)
	w1.Config, w2.Config, caller.Config = f.b.Config, f.b.Config, f.b.Config
	f.clock.Add(56 * time.Minute)
	if _, err := f.b.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	units := q.take()
	var wg sync.WaitGroup
	wg.Add(2 + n)
	go func() { defer wg.Done(); w1.Work(ctx, units) }()
	go func() { defer wg.Done(); w2.Work(ctx, units) }()
	for _, k := range keys {
		go func() {
			defer wg.Done()
			_, _ = caller.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 30 * time.Minute})
		}()
	}
	wg.Wait()
	if r := sina.RefreshReuses(); r != 0 {
		t.Fatalf("%d refresh tokens presented twice", r)
	}
	for _, k := range keys {
		c, err := f.store.Get(ctx, k, true)
		if err != nil || c.Status != store.StatusActive || !sina.RefreshUsable(c.RefreshToken) {
			t.Fatalf("%s: %v status %v usable %v", k, err, c.Status, c != nil && sina.RefreshUsable(c.RefreshToken))
		}
	}
}
