package broker_test

// Attack tests of review1 (issue 16 / 18 changes), kept as regressions. Each test
// states what the contract promises and fails where the code breaks it.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/tokenbroker/tokenbroker/shared/local/ddbfault"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/sealing"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// The quota guard's 503 tells the caller to come back in about a second,
// but nothing changes before 00:00 China Standard Time: Retry-After must
// say when the next attempt can succeed (forceStable's budget refusal
// does compute the midnight).
func TestRefreshReviewQuotaGuardRetryAfterPointsAtMidnight(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	now := f.clock.Now().UTC()
	f.clock.Add(time.Date(now.Year(), now.Month(), now.Day()+1, 1, 0, 0, 0, time.UTC).Sub(now)) // 09:00 CST: 15 h to midnight
	name, _ := wechatTokenProvider(t, f, 1)
	f.freshConfig()
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	t1, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: t1.AccessToken})
	if broker.ErrorCode(err) != broker.CodeProviderUnavailable {
		t.Fatalf("forced past the budget: %v", err)
	}
	if wait := broker.RetryAfter(err); wait < time.Hour {
		t.Fatalf("quota guard 503: Retry-After %v, but the budget resumes in ~15 h (00:00 CST)", wait)
	}
}

// After a failure that leaves no usable token, the short schedule allows
// the next provider call at retry_at (ms). The refresher reads the due
// index by refresh_at in whole seconds (floored), so it calls the
// provider inside the backoff window the callers are told to respect.
func TestRefreshReviewRefresherKeepsTheShortBackoff(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, o2, _ := revokingProvider(t, f, true, func(o *emulator.OAuth2) { o.Rotate = false })
	k := store.Key{Provider: name, Connection: "blip"}
	f.authorize(t, k)
	f.clock.Add(2 * time.Hour) // expired
	f.clock.Add(-time.Duration(f.clock.Now().Nanosecond()) + time.Millisecond)
	o2.Inject("/token", emulator.Fault{Status: http.StatusInternalServerError, Body: `{"error":"server_error"}`, ContentType: "application/json"}, 1)
	before := o2.Calls("/token")
	_, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if broker.ErrorCode(err) != broker.CodeProviderUnavailable || broker.RetryAfter(err) <= 0 {
		t.Fatalf("first failure: %v", err)
	}
	c, _ := f.store.Get(ctx, k, true)
	t.Logf("now %s retry_at %s refresh_at %s", f.clock.Now().Format(time.RFC3339Nano), c.RetryAt.Format(time.RFC3339Nano), c.RefreshAt.Format(time.RFC3339Nano))
	// Still inside the backoff (the clock has not moved).
	sum, err := f.b.RefreshDue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := o2.Calls("/token") - before; got != 1 {
		t.Fatalf("%d provider calls inside one backoff window (refresher summary %+v), want 1", got, sum)
	}
}

// A forced stable_token call is counted before it is made (budget and
// 30 s spacing in one conditional update). When DynamoDB applies that
// count but the answer is lost, the retried count finds its own last_ms
// and refuses as "too soon": the day's budget is spent with no call made,
// and the caller waits 30 s for a token it was promised.
func TestRefreshReviewForcedStableCountAppliedButAnswerLost(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	now := f.clock.Now().UTC()
	f.clock.Add(time.Date(now.Year(), now.Month(), now.Day()+1, 1, 0, 0, 0, time.UTC).Sub(now))
	appID := "wxr1" + strings.ReplaceAll(localaws.UniqueName("s"), "-", "")[:12]
	wx := emulator.NewWeChat(appID, devstack.WeChatSecret)
	wx.SetClock(f.clock.Now)
	srv := startServer(t, wx)
	name := localaws.UniqueName("wxr1")
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "wechat_mp", "client_id": appID, "api_base": srv,
		"token_api": "stable_token", "stable_force_budget": 2}, devstack.WeChatSecret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	t1, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	proxy.Inject("UpdateItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward, Match: "wechat-force"}, 1)
	t2, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: t1.AccessToken})
	calls := wx.Calls("/cgi-bin/stable_token")
	if err != nil || t2.AccessToken == t1.AccessToken || calls != 3 {
		t.Fatalf("forced refresh over a lost count answer: %v (Retry-After %v), %d stable_token calls, want 3 (normal, forced)",
			err, broker.RetryAfter(err), calls)
	}
}

// Many instances, one connection with no usable token and a provider that
// keeps failing: each backoff window lets exactly one provider call
// through, whatever the number of instances asking.
func TestRefreshReviewShortBackoffAcrossInstances(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, o2, _ := revokingProvider(t, f, true, func(o *emulator.OAuth2) { o.Rotate = true })
	k := store.Key{Provider: name, Connection: "fleet"}
	f.authorize(t, k)
	f.clock.Add(2 * time.Hour)
	var bs []*broker.Broker
	for range 6 {
		b := f.sibling(t)
		f.freshConfig(b)
		bs = append(bs, b)
	}
	fail := emulator.Fault{Status: http.StatusInternalServerError, Body: `{"error":"server_error"}`, ContentType: "application/json"}
	before := o2.Calls("/token")
	for round := 1; round <= 4; round++ {
		o2.Inject("/token", fail, 100)
		var wg sync.WaitGroup
		errs := make([]error, len(bs)*3)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = bs[i%len(bs)].Token(ctx, broker.TokenRequest{Key: k, Force: i%2 == 0})
			}()
		}
		wg.Wait()
		o2.ClearFaults()
		for i, err := range errs {
			if broker.ErrorCode(err) != broker.CodeProviderUnavailable {
				t.Fatalf("round %d request %d: %v", round, i, err)
			}
			if broker.RetryAfter(err) <= 0 && !strings.Contains(err.Error(), "still running") {
				t.Errorf("round %d request %d: 503 without Retry-After: %v", round, i, err)
			}
		}
		if got := o2.Calls("/token") - before; got != round {
			t.Fatalf("round %d: %d provider calls, want %d (one per window)", round, got, round)
		}
		if o2.RefreshReuses() != 0 {
			t.Fatal("refresh token reused")
		}
		f.clock.Add(MaxShortBackoffForTest)
	}
	c, _ := f.store.Get(ctx, k, true)
	if c.Attempts != 4 {
		t.Fatalf("attempts %d, want 4", c.Attempts)
	}
}

var MaxShortBackoffForTest = broker.MaxShortBackoff + time.Second

// The removed-key memory blocks a legitimately rotated key: a value sealed
// under a removed key makes a forced reload (fine); the operator then adds
// k2 and another instance seals with it. The first k2 value this instance
// reads comes within minForcedGap of that reload, so Reload hands back the
// cached snapshot, the ring does not change, and k2 is filed as "missing"
// under the unchanged ring. From then on every k2 value is unreadable
// without a reload until the snapshot's TTL (5 min) replaces the ring:
// before the memory, the next read a second later reloaded and worked.
func TestRefreshReviewRotatedKeyNotBlockedByRemovedKeyMemory(t *testing.T) {
	ctx := context.Background()
	prefix := "/" + localaws.UniqueName("r1rot")
	client := localaws.SSMClient(stack.Endpoints.SSM)
	put := func(name, value string, typ ssmtypes.ParameterType) {
		if _, err := client.PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String(prefix + name), Value: aws.String(value),
			Type: typ, Overwrite: aws.Bool(true)}); err != nil {
			t.Fatal(err)
		}
	}
	keyOf := func(i int) []byte { return []byte(fmt.Sprintf("%032d", i)) }
	ring := func(active string, ids ...string) string {
		keys := map[string]string{}
		for i, id := range ids {
			keys[id] = base64.StdEncoding.EncodeToString(keyOf(i + 1))
		}
		raw, _ := json.Marshal(map[string]any{"active": active, "keys": keys})
		return string(raw)
	}
	cfg, _ := json.Marshal(stack.ProviderConfigs()[devstack.OAuth2])
	put("/providers/"+devstack.OAuth2+"/config", string(cfg), ssmtypes.ParameterTypeString)
	put("/providers/"+devstack.OAuth2+"/client_secret", devstack.OAuth2Secret, ssmtypes.ParameterTypeSecureString)
	put("/token-keys", ring("k1", "k1"), ssmtypes.ParameterTypeSecureString)
	f := newFixture(t, map[string]string{"SSM_PREFIX": prefix})
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: store.Key{Provider: devstack.OAuth2, Connection: "nothing"}}); broker.ErrorCode(err) != broker.CodeNotFound {
		t.Fatalf("warm-up: %v", err)
	}
	// A value sealed under a key removed too early.
	gone, _ := sealing.NewRing("gone", map[string][]byte{"gone": make([]byte, 32)})
	old := *f.store
	old.Ring = gone
	kGone := store.Key{Provider: devstack.OAuth2, Connection: "under-gone"}
	if err := old.Create(ctx, &store.Connection{Key: kGone, Status: store.StatusActive, AccessToken: "a", RefreshToken: "r",
		ExpiresAt: f.clock.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	// k2 sealed value, prepared before the clock starts.
	r2, err := sealing.NewRing("k2", map[string][]byte{"k1": keyOf(1), "k2": keyOf(2)})
	if err != nil {
		t.Fatal(err)
	}
	newer := *f.store
	newer.Ring = r2
	k := store.Key{Provider: devstack.OAuth2, Connection: "under-k2"}
	started := time.Now()
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: kGone}); broker.ErrorCode(err) != broker.CodeInternal {
		t.Fatalf("removed key: %v", err)
	}
	// The operator rotates; another instance seals under k2.
	put("/token-keys", ring("k2", "k1", "k2"), ssmtypes.ParameterTypeSecureString)
	if err := newer.Create(ctx, &store.Connection{Key: k, Status: store.StatusActive, AccessToken: "fresh", RefreshToken: "r2",
		ExpiresAt: f.clock.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	_, first := f.b.Token(ctx, broker.TokenRequest{Key: k})
	t.Logf("first k2 read %v after the removed-key reload: %v", time.Since(started), first)
	time.Sleep(1500 * time.Millisecond) // past minForcedGap
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); err != nil {
		t.Fatalf("a value sealed under the newly rotated key k2, read 1.5 s later: %v (blocked until the config TTL)", err)
	}
}

// "A refresh that committed after a request arrived satisfies that
// request": B arrives first, but its first read is slow; A arrives later,
// refreshes and commits before B's read lands. B then takes A's token as
// "what was stored when it arrived" and calls the provider again: two
// provider calls for two concurrent forced refreshes.
func TestRefreshReviewForcedRefreshArrivedBeforeACommitSharesIt(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	name, o2, _ := revokingProvider(t, f, true, func(o *emulator.OAuth2) { o.Rotate = true })
	k := store.Key{Provider: name, Connection: "slowread"}
	f.authorize(t, k)
	f.clock.Live() // arrival and commit times must differ, as they do
	other := f.sibling(t)
	f.freshConfig(other)
	if _, err := other.Token(ctx, broker.TokenRequest{Key: k}); err != nil { // warm config
		t.Fatal(err)
	}
	before := o2.RefreshCalls()
	seen := proxy.Seen("GetItem")
	proxy.Inject("GetItem", ddbfault.Fault{Kind: ddbfault.StallBefore, Stall: 2 * time.Second, Match: "slowread"}, 1)
	done := make(chan *broker.Token, 1)
	go func() {
		tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
		if err != nil {
			t.Error(err)
		}
		done <- tok
	}()
	for proxy.Seen("GetItem") == seen {
		time.Sleep(2 * time.Millisecond)
	}
	a, err := other.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	b := <-done
	if got := o2.RefreshCalls() - before; got != 1 {
		t.Fatalf("%d provider calls for two concurrent forced refreshes (A %s, B %s), want 1",
			got, store.Fingerprint(a.AccessToken), store.Fingerprint(b.AccessToken))
	}
}

// A waiter whose holder failed sees the failure only after the short
// backoff has already run out (its polls back off to 400 ms; the first
// short backoff is 0.5-1 s, and the clock may pass it meanwhile). It then
// answers 503 with no Retry-After although the next attempt is allowed at
// once: it should try the refresh itself (or at least say Retry-After: 0/1).
func TestRefreshReviewWaiterAfterBackoffRanOut(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, o2, _ := revokingProvider(t, f, true, func(o *emulator.OAuth2) { o.Rotate = true })
	k := store.Key{Provider: name, Connection: "waiter"}
	f.authorize(t, k)
	f.clock.Add(2 * time.Hour) // expired
	other := f.sibling(t)
	f.freshConfig(other)
	gate := make(chan struct{})
	o2.Inject("/token", emulator.Fault{Gate: gate, Status: http.StatusInternalServerError, Body: `{"error":"server_error"}`, ContentType: "application/json"}, 1)
	before := o2.Calls("/token")
	holder := make(chan error, 1)
	go func() { _, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); holder <- err }()
	inFlight(t, o2, "/token", before+1)
	waiter := make(chan error, 1)
	go func() { _, err := other.Token(ctx, broker.TokenRequest{Key: k}); waiter <- err }()
	time.Sleep(1500 * time.Millisecond) // the waiter is polling at 400 ms
	close(gate)
	if err := <-holder; broker.ErrorCode(err) != broker.CodeProviderUnavailable {
		t.Fatalf("holder: %v", err)
	}
	f.clock.Add(5 * time.Second) // the short backoff has run out
	err := <-waiter
	if err != nil && broker.RetryAfter(err) <= 0 {
		t.Fatalf("waiter: 503 without Retry-After after the backoff ran out: %v (provider calls %d)", err, o2.Calls("/token")-before)
	}
	t.Logf("waiter: %v, provider calls %d", err, o2.Calls("/token")-before)
}

// A randomized storm over one rotating grant: several instances making
// plain and forced requests (with and without the rejected token), the
// refresher, re-authorizations and transient provider faults (nothing
// applied), with the clock moving past expiry now and then. Invariants:
// no refresh token presented twice, no forced request answered with the
// token it named, no token served past its expiry, and at the end a live
// token once the provider is healthy.
func TestRefreshReviewRandomStorm(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, o2, _ := revokingProvider(t, f, true, func(o *emulator.OAuth2) { o.Rotate = true; o.ExpiresIn = 20 * time.Minute })
	k := store.Key{Provider: name, Connection: "storm"}
	f.authorize(t, k)
	var bs []*broker.Broker
	for range 4 {
		b := f.sibling(t)
		f.freshConfig(b)
		bs = append(bs, b)
	}
	var mu sync.Mutex
	var seen []string
	remember := func(s string) {
		mu.Lock()
		seen = append(seen, s)
		mu.Unlock()
	}
	pick := func(i int) string {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 0 {
			return ""
		}
		return seen[(len(seen)-1-i%3+len(seen))%len(seen)]
	}
	fail := emulator.Fault{Status: http.StatusInternalServerError, Body: `{"error":"server_error"}`, ContentType: "application/json"}
	for round := range 20 {
		f.clock.Add(time.Duration(round%4) * 7 * time.Minute)
		now := f.clock.Now()
		if round%7 == 6 {
			f.authorize(t, k)
		}
		if round%3 == 1 {
			o2.Inject("/token", fail, 1+round%3)
		}
		var wg sync.WaitGroup
		for i := range 12 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b := bs[(i+round)%len(bs)]
				switch (i + round) % 5 {
				case 0, 1:
					tok, err := b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Duration(i) * time.Minute})
					if err == nil {
						remember(tok.AccessToken)
						if !tok.ExpiresAt.After(now) {
							t.Errorf("round %d: token served past its expiry", round)
						}
					}
				case 2:
					rej := pick(i)
					if rej == "" {
						return
					}
					tok, err := b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: rej})
					if err == nil {
						remember(tok.AccessToken)
						if tok.AccessToken == rej {
							t.Errorf("round %d: forced refresh answered the rejected token", round)
						}
					} else if broker.ErrorCode(err) == broker.CodeProviderUnavailable && broker.RetryAfter(err) <= 0 && !strings.Contains(err.Error(), "still running") {
						t.Logf("round %d: forced 503 without Retry-After: %v", round, err)
					}
				case 3:
					c, _ := f.store.Get(ctx, k, true)
					tok, err := b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
					if err == nil {
						remember(tok.AccessToken)
						if c != nil && tok.AccessToken == c.AccessToken {
							t.Errorf("round %d: bodiless forced refresh answered the token stored before it", round)
						}
					}
				case 4:
					if _, err := b.RefreshDue(ctx); err != nil {
						t.Errorf("refresher: %v", err)
					}
				}
			}()
		}
		wg.Wait()
		o2.ClearFaults()
		if n := o2.RefreshReuses(); n != 0 {
			t.Fatalf("round %d: %d refresh tokens presented twice", round, n)
		}
	}
	f.clock.Add(broker.MaxShortBackoff + time.Second)
	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil || !o2.ValidAccess(tok.AccessToken) {
		t.Fatalf("after the storm: %v", err)
	}
	t.Logf("provider refreshes %d, tokens seen %d", o2.RefreshCalls(), len(seen))
}

// Two provider names on one AppID in stable_token mode hold the same
// global token T. Both callers see T rejected and force. B's normal-mode
// call answers T (slowly); meanwhile A forces T' (WeChat's one force per
// 30 s for the AppID). B then wants to force too and is refused for 30 s,
// although T is dead and a normal-mode call now returns the live T'.
func TestRefreshReviewStableTwoNamesOneAppIDForce(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	now := f.clock.Now().UTC()
	f.clock.Add(time.Date(now.Year(), now.Month(), now.Day()+1, 1, 0, 0, 0, time.UTC).Sub(now))
	appID := "wxr2" + strings.ReplaceAll(localaws.UniqueName("s"), "-", "")[:12]
	wx := emulator.NewWeChat(appID, devstack.WeChatSecret)
	wx.SetClock(f.clock.Now)
	srv := startServer(t, wx)
	var names []string
	for range 2 {
		name := localaws.UniqueName("wxr2")
		if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "wechat_mp", "client_id": appID, "api_base": srv,
			"token_api": "stable_token"}, devstack.WeChatSecret); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	f.freshConfig()
	ka := store.Key{Provider: names[0], Connection: broker.MachineConnection}
	kb := store.Key{Provider: names[1], Connection: broker.MachineConnection}
	ta, err := f.b.Token(ctx, broker.TokenRequest{Key: ka})
	if err != nil {
		t.Fatal(err)
	}
	tb, err := f.b.Token(ctx, broker.TokenRequest{Key: kb})
	if err != nil || tb.AccessToken != ta.AccessToken {
		t.Fatalf("one AppID, one token: %v", err)
	}
	calls := wx.Calls("/cgi-bin/stable_token")
	wx.Inject("/cgi-bin/stable_token", emulator.Fault{After: 500 * time.Millisecond}, 1)
	other := f.sibling(t)
	f.freshConfig(other)
	done := make(chan error, 1)
	var got *broker.Token
	go func() {
		var err error
		got, err = other.Token(ctx, broker.TokenRequest{Key: kb, Force: true, Rejected: tb.AccessToken})
		done <- err
	}()
	inFlight(t, wx, "/cgi-bin/stable_token", calls+1)
	a2, err := f.b.Token(ctx, broker.TokenRequest{Key: ka, Force: true, Rejected: ta.AccessToken})
	if err != nil || a2.AccessToken == ta.AccessToken {
		t.Fatalf("A's forced refresh: %v", err)
	}
	if wx.ValidGlobal(ta.AccessToken) {
		t.Log("note: the emulator keeps T alive after a force")
	}
	if err := <-done; err != nil {
		t.Fatalf("B's forced refresh, T already replaced by A: %v (Retry-After %v); a normal-mode call would answer the live token", err, broker.RetryAfter(err))
	}
	if !wx.ValidGlobal(got.AccessToken) {
		t.Fatal("B got a dead token")
	}
}

// Issue 16 item 6: two provider names on one WeChat AppID in token mode.
// B's first fetch kills A's token five minutes later; A must not keep
// serving it (or the configuration must be refused with a clear error).
func TestRefreshReviewTokenModeTwoNamesOneAppID(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	appID := "wxr3" + strings.ReplaceAll(localaws.UniqueName("s"), "-", "")[:12]
	wx := emulator.NewWeChat(appID, devstack.WeChatSecret)
	wx.SetClock(f.clock.Now)
	srv := startServer(t, wx)
	var keys []store.Key
	for range 2 {
		name := localaws.UniqueName("wxr3")
		if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "wechat_mp", "client_id": appID, "api_base": srv,
			"token_api": "token"}, devstack.WeChatSecret); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, store.Key{Provider: name, Connection: broker.MachineConnection})
	}
	f.freshConfig()
	ta, errA := f.b.Token(ctx, broker.TokenRequest{Key: keys[0]})
	_, errB := f.b.Token(ctx, broker.TokenRequest{Key: keys[1]})
	if errA != nil || errB != nil {
		t.Logf("refused: %v / %v", errA, errB)
		return
	}
	f.clock.Add(10 * time.Minute)
	again, err := f.b.Token(ctx, broker.TokenRequest{Key: keys[0]})
	if err != nil {
		t.Fatal(err)
	}
	if !wx.ValidGlobal(again.AccessToken) {
		t.Fatalf("A serves a token B's fetch killed (same as first: %v, expires_at %s)", again.AccessToken == ta.AccessToken, again.ExpiresAt)
	}
}

// Issue 16 item 5: a failure streak announced with Refresh Failing, then
// the user re-consents: Connection Recovered must follow.
func TestRefreshReviewRecoveredAfterReauthorization(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	events := &recorder{}
	f.b.Notifier = events
	name, o2, _ := revokingProvider(t, f, true, func(o *emulator.OAuth2) { o.Rotate = true })
	k := store.Key{Provider: name, Connection: "streak"}
	f.authorize(t, k)
	fail := emulator.Fault{Status: http.StatusInternalServerError, Body: `{"error":"server_error"}`, ContentType: "application/json"}
	for range broker.FailingAfter {
		o2.Inject("/token", fail, 1)
		if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); broker.ErrorCode(err) != broker.CodeProviderUnavailable {
			t.Fatalf("forced against a failing provider: %v", err)
		}
		f.clock.Add(broker.MaxShortBackoff + time.Second)
	}
	if n := len(events.of("Connection Refresh Failing", "streak")); n != 1 {
		t.Fatalf("%d Refresh Failing events, want 1", n)
	}
	f.authorize(t, k)
	if n := len(events.of("Connection Recovered", "streak")); n != 1 {
		t.Fatalf("%d Connection Recovered events after re-authorization, want 1", n)
	}
}

// bomming prepends a UTF-8 BOM (or rewrites expires_in) to the token
// endpoint's answers once on is set: the provider's rotation happens, only
// the framing differs.
type bomming struct {
	h      http.Handler
	on     atomic.Bool
	mutate func([]byte) []byte
}

func (b *bomming) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !b.on.Load() || r.URL.Path != "/token" {
		b.h.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	b.h.ServeHTTP(rec, r)
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	body := b.mutate(rec.Body.Bytes())
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(rec.Code)
	_, _ = w.Write(body)
}

// Issue 16 item 1: once an answer carries tokens, store them — a BOM, an
// expires_in of 2147483647, negative or "3600s" must not throw away a
// rotation (the next refresh would present the spent token).
func TestRefreshReviewRotationKeptWhateverTheFraming(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func([]byte) []byte
	}{
		{"bom", func(b []byte) []byte { return append([]byte("\xEF\xBB\xBF"), b...) }},
		{"never", func(b []byte) []byte {
			return regexp.MustCompile(`"expires_in":\s*\d+`).ReplaceAll(b, []byte(`"expires_in":2147483647`))
		}},
		{"negative", func(b []byte) []byte {
			return regexp.MustCompile(`"expires_in":\s*\d+`).ReplaceAll(b, []byte(`"expires_in":-5`))
		}},
		{"suffixed", func(b []byte) []byte {
			return regexp.MustCompile(`"expires_in":\s*\d+`).ReplaceAll(b, []byte(`"expires_in":"3600s"`))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			name := localaws.UniqueName("bom")
			o2 := emulator.NewOAuth2(devstack.OAuth2ClientID, devstack.OAuth2Secret, "https://broker.test/callback/"+name)
			o2.SetClock(f.clock.Now)
			wrap := &bomming{h: o2, mutate: tc.mutate}
			srv := startServer(t, wrap)
			if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "oauth2", "client_id": devstack.OAuth2ClientID,
				"authorize_url": srv + "/authorize", "token_url": srv + "/token", "auth_style": "basic"}, devstack.OAuth2Secret); err != nil {
				t.Fatal(err)
			}
			f.freshConfig()
			k := store.Key{Provider: name, Connection: "framed"}
			f.authorize(t, k)
			wrap.on.Store(true)
			_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
			t.Logf("forced refresh with odd framing: %v", err)
			wrap.on.Store(false)
			f.clock.Add(broker.MaxShortBackoff + time.Second)
			tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
			if err != nil || o2.RefreshReuses() != 0 || !o2.ValidAccess(tok.AccessToken) {
				t.Fatalf("after a rotation answered with odd framing: %v, reuses %d", err, o2.RefreshReuses())
			}
		})
	}
}

// Two forced refreshes of a SinaCloud connection whose app lacks the
// refresh permission: the holder gets provider_error (the provider will
// not replace the token), the concurrent waiter a 503 without Retry-After
// ("try again"), although nothing will change on a retry.
func TestRefreshReviewForcedWaiterOnADenial(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	// A SinaCloud of its own: nothing else may take the injected fault.
	name := localaws.UniqueName("sinadenw")
	sina := emulator.NewSinaCloud(devstack.SinaClientID, devstack.SinaSecret, "https://broker.test/callback/"+name)
	sina.SetClock(f.clock.Now)
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "sinacloud", "client_id": devstack.SinaClientID, "api_base": startServer(t, sina)}, devstack.SinaSecret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	k := store.Key{Provider: name, Connection: "denw"}
	f.authorize(t, k)
	other := f.sibling(t)
	gate := make(chan struct{})
	denial := emulator.OAuthError(http.StatusBadRequest, "unauthorized_client", "no refresh permission")
	denial.Gate = gate
	before := sina.Calls("/oauth2/access_token")
	sina.Inject("/oauth2/access_token", denial, 1)
	holder := make(chan error, 1)
	go func() { _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); holder <- err }()
	inFlight(t, sina, "/oauth2/access_token", before+1)
	waiter := make(chan error, 1)
	go func() { _, err := other.Token(ctx, broker.TokenRequest{Key: k, Force: true}); waiter <- err }()
	time.Sleep(500 * time.Millisecond)
	close(gate)
	errH, errW := <-holder, <-waiter
	if broker.ErrorCode(errH) != broker.CodeProviderError {
		t.Fatalf("holder: %v", errH)
	}
	if broker.ErrorCode(errW) != broker.ErrorCode(errH) {
		t.Fatalf("waiter: %v (Retry-After %v); holder: %v", errW, broker.RetryAfter(errW), errH)
	}
}
