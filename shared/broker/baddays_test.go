package broker_test

// Bad days seen from the caller (issue 18): forced refreshes that keep
// their word and share one provider call, WeChat's limits on forcing, and
// recovery within seconds after a provider's blip.

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

// holdRefreshUntilAllWait gates the provider's next token call, starts n
// callers, and opens the gate only once every other caller is waiting on
// the lease (each has read the connection before the refresh commits).
func holdRefreshUntilAllWait(t *testing.T, f *fixture, o2 *emulator.OAuth2, n int, call func() (*broker.Token, error)) []string {
	t.Helper()
	gate := make(chan struct{})
	o2.Inject("/token", emulator.Fault{Gate: gate}, 1)
	contended := f.count(t, telemetry.LeaseContended, nil)
	tokens := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := call()
			if err != nil {
				t.Errorf("caller %d: %v", i, err)
				return
			}
			tokens[i] = tok.AccessToken
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for f.count(t, telemetry.LeaseContended, nil)-contended < float64(n-1) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	close(gate)
	wg.Wait()
	return tokens
}

func TestConcurrentForcedRefreshesShareOneProviderCall(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, o2, _ := revokingProvider(t, f, true, func(o *emulator.OAuth2) { o.Rotate = true })
	k := store.Key{Provider: name, Connection: "shared"}
	f.authorize(t, k)
	rejected, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	t.Run("naming the rejected token", func(t *testing.T) {
		before := o2.RefreshCalls()
		tokens := holdRefreshUntilAllWait(t, f, o2, n, func() (*broker.Token, error) {
			return f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: rejected.AccessToken})
		})
		if got := o2.RefreshCalls() - before; got != 1 {
			t.Fatalf("%d provider calls for %d concurrent forced refreshes, want 1", got, n)
		}
		for i, tok := range tokens {
			if tok != tokens[0] || tok == rejected.AccessToken {
				t.Fatalf("caller %d got another token or the rejected one", i)
			}
		}
		for range n {
			tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: rejected.AccessToken})
			if err != nil || tok.AccessToken != tokens[0] {
				t.Fatalf("sequential forced refresh naming the old token: %v", err)
			}
		}
		if got := o2.RefreshCalls() - before; got != 1 {
			t.Fatalf("%d provider calls after %d more naming the old token, want 1 in total", got, n)
		}
	})
	t.Run("without a body", func(t *testing.T) {
		stored, _ := f.store.Get(ctx, k, true)
		before := o2.RefreshCalls()
		tokens := holdRefreshUntilAllWait(t, f, o2, n, func() (*broker.Token, error) {
			return f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
		})
		if got := o2.RefreshCalls() - before; got != 1 {
			t.Fatalf("%d provider calls for %d concurrent forced refreshes, want 1", got, n)
		}
		for i, tok := range tokens {
			if tok != tokens[0] || tok == stored.AccessToken {
				t.Fatalf("caller %d got the token stored when it arrived, or another one", i)
			}
		}
	})
	if o2.RefreshReuses() != 0 {
		t.Fatalf("%d refresh token reuses", o2.RefreshReuses())
	}
}

// WeChat's cgi-bin/token with a daily budget of 3: the first fetch and two
// forced refreshes reach WeChat; further ones get the quota guard's 503.
func TestForcedRefreshesSpendTheWeChatBudgetAndNoMore(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	now := f.clock.Now().UTC() // far from WeChat's midnight (16:00 UTC)
	f.clock.Add(time.Date(now.Year(), now.Month(), now.Day()+1, 1, 0, 0, 0, time.UTC).Sub(now))
	appID := "wxbudget" + strings.ReplaceAll(localaws.UniqueName("b"), "-", "")[:10]
	wx := emulator.NewWeChat(appID, devstack.WeChatSecret)
	wx.SetClock(f.clock.Now)
	srv := startServer(t, wx)
	name := localaws.UniqueName("wxbudget")
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "wechat_mp", "client_id": appID, "api_base": srv,
		"token_api": "token", "daily_quota_budget": 3}, devstack.WeChatSecret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	var errs []error
	for range 4 {
		f.clock.Add(broker.MaxShortBackoff)
		next, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: tok.AccessToken})
		if err == nil {
			if next.AccessToken == tok.AccessToken {
				t.Fatal("a forced refresh answered the rejected token")
			}
			tok = next
		}
		errs = append(errs, err)
	}
	if got := wx.Calls("/cgi-bin/token"); got != 3 {
		t.Fatalf("%d cgi-bin/token calls, want 3 (budget 3)", got)
	}
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("forced refreshes within the budget: %v", errs[:2])
	}
	for _, err := range errs[2:] {
		if broker.ErrorCode(err) != broker.CodeProviderUnavailable || !strings.Contains(err.Error(), "daily budget") || broker.RetryAfter(err) <= 0 {
			t.Fatalf("forced refresh past the budget: %v (retry after %v)", err, broker.RetryAfter(err))
		}
	}
}

// stable_token: a forced refresh asks in normal mode first; only if WeChat
// hands the rejected token back does it force, at most stable_force_budget
// times a China day and never within 30 s of the last force.
func TestForcedStableTokenRefreshKeepsWeChatsLimits(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	now := f.clock.Now().UTC()
	f.clock.Add(time.Date(now.Year(), now.Month(), now.Day()+1, 1, 0, 0, 0, time.UTC).Sub(now))
	appID := "wxstable" + strings.ReplaceAll(localaws.UniqueName("s"), "-", "")[:10]
	wx := emulator.NewWeChat(appID, devstack.WeChatSecret)
	wx.SetClock(f.clock.Now)
	srv := startServer(t, wx)
	name := localaws.UniqueName("wxstable")
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "wechat_mp", "client_id": appID, "api_base": srv,
		"token_api": "stable_token", "stable_force_budget": 2}, devstack.WeChatSecret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	calls := func() int { return wx.Calls("/cgi-bin/stable_token") }
	t1, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil || calls() != 1 {
		t.Fatalf("first fetch: %v, %d calls", err, calls())
	}
	// Normal mode hands T1 back: one forced call replaces it.
	t2, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: t1.AccessToken})
	if err != nil || t2.AccessToken == t1.AccessToken || calls() != 3 || !wx.ValidGlobal(t2.AccessToken) {
		t.Fatalf("forced refresh: %v, %d calls, want 3 (normal, then forced)", err, calls())
	}
	// Within 30 s of that force: normal mode (twice: the second in case
	// another name forced meanwhile), then 503 with Retry-After.
	f.clock.Add(10 * time.Second)
	_, err = f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: t2.AccessToken})
	if broker.ErrorCode(err) != broker.CodeProviderUnavailable || calls() != 5 || wx.StableStats().Forced != 1 {
		t.Fatalf("forced within 30 s: %v, %d calls, want 5 with 1 forced", err, calls())
	}
	if wait := broker.RetryAfter(err); wait < 19*time.Second || wait > 20*time.Second {
		t.Fatalf("Retry-After %v, want the 20 s left of WeChat's spacing", wait)
	}
	// After it: the second and last force of the day (budget 2).
	f.clock.Add(21 * time.Second)
	t3, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: t2.AccessToken})
	if err != nil || t3.AccessToken == t2.AccessToken || calls() != 7 || wx.StableStats().Forced != 2 {
		t.Fatalf("second force: %v, %d calls, want 7 with 2 forced", err, calls())
	}
	f.clock.Add(time.Minute)
	_, err = f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: t3.AccessToken})
	if broker.ErrorCode(err) != broker.CodeProviderUnavailable || calls() != 8 || wx.StableStats().Forced != 2 || broker.RetryAfter(err) < time.Hour {
		t.Fatalf("past the budget: %v (retry after %v), %d calls, want 8 with 2 forced", err, broker.RetryAfter(err), calls())
	}
	// The token is still served to plain requests, and still the same one.
	if tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); err != nil || tok.AccessToken != t3.AccessToken {
		t.Fatalf("plain request after the refusals: %v", err)
	}
}

// After a transient failure with no usable token left, the next attempt
// is allowed within a second or so, not after the long schedule's half
// minute: the first request 2 s after the fault clears gets a live token,
// and requests before that get 503 with Retry-After.
func TestRecoveryWithinSecondsAfterABlip(t *testing.T) {
	faults := []struct {
		name  string
		fault emulator.Fault
	}{
		{"500", emulator.Fault{Status: http.StatusInternalServerError, Body: `{"error":"server_error"}`, ContentType: "application/json"}},
		{"html", emulator.HTMLError(http.StatusBadGateway)},
		{"truncated", emulator.Fault{Truncate: true}},
		{"oversized", emulator.Fault{Huge: true}},
		{"timeout", emulator.Fault{Delay: 3 * time.Second}},
	}
	for _, tc := range faults {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			f.b.Budget = broker.Budget{Provider: time.Second, Commit: 8 * time.Second, Acquire: 3 * time.Second, Skew: 2 * time.Second, Reserve: time.Second}
			// Not rotating: a truncated answer to a rotation is the one loss
			// README admits (the provider spent the grant, the answer is
			// gone); here the blip is only a blip.
			name, o2, _ := revokingProvider(t, f, true, func(o *emulator.OAuth2) { o.Rotate = false })
			k := store.Key{Provider: name, Connection: "blip"}
			f.authorize(t, k)
			f.clock.Add(2 * time.Hour) // expired
			o2.Inject("/token", tc.fault, 1)
			before := o2.Calls("/token")
			_, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
			if broker.ErrorCode(err) != broker.CodeProviderUnavailable {
				t.Fatalf("during the fault: %v", err)
			}
			c, _ := f.store.Get(ctx, k, true)
			if wait := c.RetryAt.Sub(f.clock.Now()); wait <= 0 || wait > time.Second {
				t.Fatalf("first short backoff %v, want at most 1 s", wait)
			}
			// Inside the backoff: 503 with the wait, and no provider call.
			f.clock.Add(100 * time.Millisecond)
			_, err = f.b.Token(ctx, broker.TokenRequest{Key: k})
			if wait := broker.RetryAfter(err); broker.ErrorCode(err) != broker.CodeProviderUnavailable || wait != c.RetryAt.Sub(f.clock.Now()) {
				t.Fatalf("inside the backoff: %v, retry after %v, want %v", err, wait, c.RetryAt.Sub(f.clock.Now()))
			}
			if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); broker.ErrorCode(err) != broker.CodeProviderUnavailable || broker.RetryAfter(err) <= 0 {
				t.Fatalf("forced inside the backoff: %v", err)
			}
			if o2.Calls("/token") != before+1 {
				t.Fatalf("%d provider calls inside the backoff, want 1 (the failed one)", o2.Calls("/token")-before)
			}
			// 2 s after the failure, the fault has cleared: a live token.
			f.clock.Add(1900 * time.Millisecond)
			tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
			if err != nil || !o2.ValidAccess(tok.AccessToken) {
				t.Fatalf("2 s after the blip: %v", err)
			}
		})
	}
}

// The short schedule doubles per consecutive failure up to a minute, and
// each failure counts towards the streak (Refresh Failing after five).
func TestShortBackoffDoublesToAMinute(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, o2, _ := revokingProvider(t, f, true, nil)
	k := store.Key{Provider: name, Connection: "doubling"}
	f.authorize(t, k)
	f.clock.Add(2 * time.Hour)
	o2.Inject("/token", emulator.HTMLError(http.StatusBadGateway), 100)
	var waits []time.Duration
	for range 9 {
		if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); broker.ErrorCode(err) != broker.CodeProviderUnavailable {
			t.Fatalf("failing provider: %v", err)
		}
		c, _ := f.store.Get(ctx, k, true)
		wait := c.RetryAt.Sub(f.clock.Now())
		waits = append(waits, wait)
		f.clock.Add(wait)
	}
	for i, w := range waits {
		ceiling := min(time.Second<<i, broker.MaxShortBackoff)
		if w < ceiling/2 || w > ceiling {
			t.Fatalf("backoff %d: %v, want between %v and %v (all: %v)", i+1, w, ceiling/2, ceiling, waits)
		}
	}
	if got := f.count(t, telemetry.RefreshFailed, map[string]string{"Provider": name}); got != 9 {
		t.Fatalf("%v failures counted, want 9", got)
	}
	c, _ := f.store.Get(ctx, k, true)
	if c.Attempts != 9 || !c.FailingNotified {
		t.Fatalf("streak: %d attempts, announced %v", c.Attempts, c.FailingNotified)
	}
	o2.ClearFaults()
}
