package broker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/local/ddbfault"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

// faultyFixture is a broker whose DynamoDB traffic passes a fault proxy.
func faultyFixture(t *testing.T) (*fixture, *ddbfault.Proxy) {
	t.Helper()
	proxy, err := ddbfault.Start(stack.Endpoints.DynamoDB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	return newFixture(t, map[string]string{localaws.EnvDynamoDB: proxy.URL}), proxy
}

// fastBudget keeps tests that run a budget out short; the proportions of
// the real one are kept.
var fastBudget = broker.Budget{Provider: 2 * time.Second, Commit: 1500 * time.Millisecond, Acquire: 300 * time.Millisecond,
	Skew: 500 * time.Millisecond, Reserve: 100 * time.Millisecond}

// eventsAbout keeps the events about one connection.
func eventsAbout(evs []map[string]any, k store.Key) []map[string]any {
	var out []map[string]any
	for _, ev := range evs {
		d, _ := ev["detail"].(map[string]any)
		if d["provider"] == k.Provider && d["connection"] == k.Connection {
			out = append(out, ev)
		}
	}
	return out
}

// Defect 2: the provider rotated the grant, then storing it failed on a
// DynamoDB fault; the new refresh token existed only in memory.
func TestCommitSurvivesDynamoDBFaults(t *testing.T) {
	ctx := context.Background()
	for i, tc := range []struct {
		name  string
		fault ddbfault.Fault
		n     int
	}{
		{"throttled past the SDK's own retries", ddbfault.Fault{Kind: ddbfault.Throttle}, 7},
		{"server errors past the SDK's own retries", ddbfault.Fault{Kind: ddbfault.ServerError}, 7},
		{"reset after DynamoDB applied it", ddbfault.Fault{Kind: ddbfault.ResetAfterForward}, 1},
		{"stalled after DynamoDB applied it", ddbfault.Fault{Kind: ddbfault.StallAfter, Stall: 4 * time.Second}, 1},
		{"resets before it reached DynamoDB", ddbfault.Fault{Kind: ddbfault.ResetBeforeForward}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, proxy := faultyFixture(t)
			k := store.Key{Provider: devstack.SinaCloud, Connection: fmt.Sprintf("commit-%d", i)}
			f.authorize(t, k)
			f.clock.Add(broker.MaxShortBackoff)
			refreshes, reuses := stack.Sina.RefreshCalls(), stack.Sina.RefreshReuses()
			proxy.Inject("PutItem", tc.fault, tc.n)
			tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
			if err != nil {
				t.Fatalf("refresh through %s: %v", tc.name, err)
			}
			if proxy.Pending("PutItem") != 0 || proxy.Injected("PutItem") != tc.n {
				t.Fatalf("%d of %d faults applied", proxy.Injected("PutItem"), tc.n)
			}
			stored, err := f.store.Get(ctx, k, true)
			if err != nil || stored.AccessToken != tok.AccessToken || !stack.Sina.ValidAccess(tok.AccessToken) || !stack.Sina.RefreshUsable(stored.RefreshToken) {
				t.Fatalf("stored grant is not the one the provider issued: %v", err)
			}
			// The stored refresh token is the live one: the next refresh works.
			f.clock.Add(broker.MaxShortBackoff)
			if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); err != nil {
				t.Fatalf("next refresh: %v", err)
			}
			if got := stack.Sina.RefreshCalls() - refreshes; got != 2 {
				t.Fatalf("%d refreshes at the provider, want 2", got)
			}
			if got := stack.Sina.RefreshReuses() - reuses; got != 0 {
				t.Fatalf("%d refresh-token reuses, want 0", got)
			}
		})
	}
}

// When DynamoDB refuses every write for the holder's whole time budget,
// the rotated grant is lost; the connection must still end visibly: the
// next refresh presents the spent token, the provider refuses it, and the
// connection needs re-authorization with exactly one event.
func TestCommitRefusedForTheWholeBudgetEndsVisibly(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	f.b.Budget = fastBudget
	sink := eventQueue(t)
	k := store.Key{Provider: devstack.SinaCloud, Connection: "refused"}
	f.authorize(t, k)
	f.clock.Add(broker.MaxShortBackoff)
	reuses := stack.Sina.RefreshReuses()
	proxy.Inject("PutItem", ddbfault.Fault{Kind: ddbfault.Throttle}, 100000)
	_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	if broker.ErrorCode(err) != broker.CodeInternal {
		t.Fatalf("refresh whose result cannot be stored: %v", err)
	}
	if got := f.count(t, telemetry.RefreshUnsaved, map[string]string{"Provider": k.Provider}); got != 1 {
		t.Fatalf("RefreshUnsaved = %v, want 1", got)
	}
	proxy.Clear()
	// The holder's lease runs out; nothing is stuck behind it.
	f.clock.Add(time.Minute)
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); broker.ErrorCode(err) != broker.CodeNeedsReauth {
		t.Fatalf("after the lost grant: %v, want needs_reauth", err)
	}
	if got := stack.Sina.RefreshReuses() - reuses; got != 1 {
		t.Fatalf("%d reuses, want exactly the one that discovers the loss", got)
	}
	if evs := eventsAbout(receiveAll(t, sink), k); len(evs) != 1 {
		t.Fatalf("%d needs_reauth events, want exactly 1", len(evs))
	}
	st, _ := f.store.Get(ctx, k, true)
	if st.Status != store.StatusNeedsReauth || st.LeaseOwner != "" {
		t.Fatalf("final state %s, lease %q", st.Status, st.LeaseOwner)
	}
}

// Defect 7: the needs_reauth write applied, the connection reset, the SDK
// re-sent it and the re-send failed its condition; the broker read that as
// someone else's write and never told the user.
func TestNeedsReauthAnnouncedOnceThroughAReset(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	sink := eventQueue(t)
	k := store.Key{Provider: devstack.OAuth2, Connection: "reauth-reset"}
	f.authorize(t, k)
	f.clock.Add(broker.MaxShortBackoff)
	stack.OAuth2.Inject("/token", emulator.OAuthError(400, "invalid_grant", "revoked by the user"), 1)
	proxy.Inject("TransactWriteItems", ddbfault.Fault{Kind: ddbfault.ResetAfterForward}, 1)
	proxy.Inject("UpdateItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward, Match: "needs_reauth"}, 1)
	_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	if broker.ErrorCode(err) != broker.CodeNeedsReauth {
		t.Fatalf("refused grant: %v", err)
	}
	proxy.Clear()
	if proxy.Injected("TransactWriteItems")+proxy.Injected("UpdateItem") != 1 {
		t.Fatal("the reset never happened: the test proves nothing")
	}
	evs := eventsAbout(receiveAll(t, sink), k)
	if len(evs) != 1 {
		t.Fatalf("%d events, want exactly 1", len(evs))
	}
	if d, _ := evs[0]["detail"].(map[string]any); d["provider_error"] != "invalid_grant" {
		t.Fatalf("event %v", evs[0])
	}
	if got := f.count(t, telemetry.NeedsReauth, map[string]string{"Provider": k.Provider}); got != 1 {
		t.Fatalf("NeedsReauth metric %v, want 1", got)
	}
}

// Defect 7: the lease write applied, the SDK's re-send failed, and the
// broker waited on its own lease.
func TestLeaseAcquiredThroughAReset(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	k := store.Key{Provider: devstack.OAuth2, Connection: "lease-reset"}
	f.authorize(t, k)
	f.clock.Add(40 * time.Minute) // 20 minutes left of a 1-hour token
	calls := stack.OAuth2.RefreshCalls()
	proxy.Inject("UpdateItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward, Match: "lease_owner"}, 1)
	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 30 * time.Minute})
	if err != nil || !stack.OAuth2.ValidAccess(tok.AccessToken) {
		t.Fatalf("token: %v", err)
	}
	if proxy.Injected("UpdateItem") != 1 {
		t.Fatal("the reset never happened")
	}
	if got := stack.OAuth2.RefreshCalls() - calls; got != 1 {
		t.Fatalf("%d refreshes, want 1", got)
	}
	if got := f.count(t, telemetry.LeaseContended, nil); got != 0 {
		t.Fatalf("the broker waited on its own lease (LeaseContended %v)", got)
	}
	if c, _ := f.store.Get(ctx, k, true); c.LeaseOwner != "" || c.AccessToken != tok.AccessToken {
		t.Fatalf("after the refresh: lease %q", c.LeaseOwner)
	}
}

// Defect 7: the state was consumed, the connection reset, and the user was
// told the authorization link had already been used.
func TestCallbackThroughAResetOnTheState(t *testing.T) {
	f, proxy := faultyFixture(t)
	k := store.Key{Provider: devstack.OAuth2, Connection: "state-reset"}
	proxy.Inject("UpdateItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward, Match: "consumed_by"}, 1)
	proxy.Inject("DeleteItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward, Match: "state#"}, 1)
	f.authorize(t, k) // fails the test unless the connection is stored
	if proxy.Injected("UpdateItem")+proxy.Injected("DeleteItem") != 1 {
		t.Fatal("the reset never happened")
	}
	proxy.Clear()
}

// Defect 3: a commit that stalled past the lease let a second worker take
// the lease at the same version and present the spent refresh token.
func TestSlowCommitKeepsOthersOut(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	k := store.Key{Provider: devstack.SinaCloud, Connection: "slow-commit"}
	f.authorize(t, k)
	f.clock.Add(broker.MaxShortBackoff)
	f.clock.Live()
	other := f.sibling(t)
	// Both name the token they saw rejected: the second is satisfied by
	// the first's refresh whenever it reads, before or after the commit.
	rejected, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	refreshes, reuses := stack.Sina.RefreshCalls(), stack.Sina.RefreshReuses()
	// The commit applies at once; its answer comes back after longer than
	// any lease: only a holder that bounds each attempt and recognises its
	// own write finishes before the lease ends.
	proxy.Inject("PutItem", ddbfault.Fault{Kind: ddbfault.StallAfter, Stall: 30 * time.Second}, 1)
	var held atomic.Bool
	stack.Sina.Inject("/oauth2/access_token", emulator.Fault{After: 50 * time.Millisecond}, 1)
	var wg sync.WaitGroup
	var mine, theirs *broker.Token
	var errMine, errTheirs error
	wg.Add(2)
	go func() {
		defer wg.Done()
		mine, errMine = f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: rejected.AccessToken})
		held.Store(true)
	}()
	go func() {
		defer wg.Done()
		for stack.Sina.RefreshCalls() == refreshes && !held.Load() {
			time.Sleep(5 * time.Millisecond)
		}
		theirs, errTheirs = other.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: rejected.AccessToken})
	}()
	wg.Wait()
	if errMine != nil || errTheirs != nil {
		t.Fatalf("holder: %v, other: %v", errMine, errTheirs)
	}
	if mine.AccessToken != theirs.AccessToken {
		t.Fatal("the second worker got another token: it refreshed again")
	}
	if got := stack.Sina.RefreshCalls() - refreshes; got != 1 {
		t.Fatalf("%d refreshes, want exactly 1", got)
	}
	if got := stack.Sina.RefreshReuses() - reuses; got != 0 {
		t.Fatalf("%d reuses, want 0", got)
	}
}

// Defect 4: after a delete, a new grant started again at version 0, and a
// refresh in flight for the old grant committed "at version 0" over it.
func TestDeleteAndReauthorizationDuringARefresh(t *testing.T) {
	ctx := context.Background()
	for _, reauthorize := range []bool{true, false} {
		t.Run(fmt.Sprintf("reauthorized=%v", reauthorize), func(t *testing.T) {
			f := newFixture(t)
			k := store.Key{Provider: devstack.WeChatWeb, Connection: fmt.Sprintf("moved-%v", reauthorize)}
			f.authorize(t, k)
			old, _ := f.store.Get(ctx, k, true)
			f.clock.Add(broker.MaxShortBackoff)
			gate := make(chan struct{})
			calls := stack.WeChat.Calls("/sns/oauth2/refresh_token")
			stack.WeChat.Inject("/sns/oauth2/refresh_token", emulator.Fault{Gate: gate}, 1)
			type result struct {
				tok *broker.Token
				err error
			}
			done := make(chan result, 1)
			go func() {
				tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
				done <- result{tok, err}
			}()
			for stack.WeChat.Calls("/sns/oauth2/refresh_token") == calls {
				time.Sleep(5 * time.Millisecond)
			}
			// The refresh of the old grant is at the provider. Meanwhile the
			// connection is deleted and, maybe, authorized by another user.
			if err := f.sibling(t).Delete(ctx, k, "arn:aws:iam::123456789012:role/test"); err != nil {
				t.Fatal(err)
			}
			var fresh *store.Connection
			if reauthorize {
				f.authorize(t, k)
				fresh, _ = f.store.Get(ctx, k, true)
				if fresh.Extra["openid"] == old.Extra["openid"] {
					t.Fatal("the emulator gave the second user the same openid")
				}
			}
			close(gate)
			res := <-done
			final, err := f.store.Get(ctx, k, true)
			if !reauthorize {
				if broker.ErrorCode(res.err) != broker.CodeNotFound || !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("in-flight refresh of a deleted connection: %v; stored: %v", res.err, err)
				}
				return
			}
			if err != nil || final.Extra["openid"] != fresh.Extra["openid"] || final.AccessToken != fresh.AccessToken || final.Generation != fresh.Generation {
				t.Fatalf("the stored grant is not the new user's: %v", err)
			}
			if res.err != nil || res.tok.AccessToken != fresh.AccessToken {
				t.Fatalf("the in-flight caller got %v", res.err)
			}
		})
	}
}

// Defect 1 (token route): a request with too little of its invocation
// left must not start a refresh it cannot finish.
func TestTokenRequestWithoutTimeToRefreshSafely(t *testing.T) {
	f := newFixture(t)
	k := store.Key{Provider: devstack.SinaCloud, Connection: "short-deadline"}
	f.authorize(t, k)
	f.clock.Add(broker.MaxShortBackoff)
	calls := stack.Sina.Calls("/oauth2/access_token")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	if broker.ErrorCode(err) != broker.CodeProviderUnavailable {
		t.Fatalf("refresh with 5 s left: %v", err)
	}
	if stack.Sina.Calls("/oauth2/access_token") != calls {
		t.Fatal("the provider was called without the time to store its answer")
	}
	if c, _ := f.store.Get(context.Background(), k, true); c.LeaseOwner != "" {
		t.Fatal("a lease was taken")
	}
}

// Defect 1 (refresher): refreshes started seconds before the deadline; the
// provider rotated, the deadline cut the call, and the next tick presented
// the spent token. A provider that applies the rotation and then answers
// slowly must cause no reuse over several short ticks.
func TestRefresherStartsOnlyWhatItCanFinish(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.b.Budget = fastBudget
	f.b.Concurrency, f.b.ProviderConcurrency = 1, 1
	const n = 4
	for i := 0; i < n; i++ {
		f.authorize(t, store.Key{Provider: devstack.SinaCloud, Connection: fmt.Sprintf("deadline-%d", i)})
	}
	f.clock.Add(6*24*time.Hour + 12*time.Hour) // due, not expired
	refreshes, reuses := stack.Sina.RefreshCalls(), stack.Sina.RefreshReuses()
	stack.Sina.Inject("/oauth2/access_token", emulator.Fault{After: 1200 * time.Millisecond}, n)
	refreshed, ticks := 0, 0
	for refreshed < n && ticks < 3*n {
		ticks++
		// Room for one refresh (3.5 s budget) but not two.
		tctx, cancel := context.WithTimeout(ctx, fastBudget.Provider+fastBudget.Commit+fastBudget.Reserve+800*time.Millisecond)
		sum, err := f.b.RefreshDue(tctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if sum.FailedTransient != 0 || sum.NeedsReauth != 0 || sum.Refreshed > 1 {
			t.Fatalf("tick %d: %+v", ticks, sum)
		}
		refreshed += sum.Refreshed
	}
	if refreshed != n {
		t.Fatalf("%d refreshed in %d ticks, want %d", refreshed, ticks, n)
	}
	if got := stack.Sina.RefreshCalls() - refreshes; got != n {
		t.Fatalf("%d refreshes at the provider, want exactly %d", got, n)
	}
	if got := stack.Sina.RefreshReuses() - reuses; got != 0 {
		t.Fatalf("%d reuses, want 0", got)
	}
}
