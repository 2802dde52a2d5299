package broker_test

// Regression tests from the adversarial review of the refresh protocol.
// Each one names the scenario that once broke a promise and checks, with
// exact counts, that it holds now.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/local/ddbfault"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

// The hold (and from it the provider call's deadline) is fixed before the
// lease is taken. When taking the lease was slow (a stalled UpdateItem
// answered within the SDK's own attempt bound), the provider call once
// started anyway with only what was left; a provider that rotated and
// answered within Budget.Provider had spent the single-use refresh token
// and the broker threw the answer away. Now the time is measured again
// with the lease held, and the lease is given back when it does not fit.
//
// DESIGN: "no provider call starts unless the caller's own deadline and its
// lease both cover the provider timeout plus the commit".
func TestRegressionSlowLeaseWriteShrinksTheProviderCall(t *testing.T) {
	for _, tc := range []struct {
		name        string
		budget      broker.Budget
		leaseStall  time.Duration // the lease write applies, its answer comes this late
		providerLag time.Duration // the provider rotates, then answers this late (< budget.Provider)
	}{
		{"fast budget", fastBudget, 1500 * time.Millisecond, 1300 * time.Millisecond},
		{"default budget", broker.DefaultBudget(), 2900 * time.Millisecond, 9500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.providerLag >= tc.budget.Provider {
				t.Fatal("the provider must answer within Budget.Provider for this to prove anything")
			}
			ctx := context.Background()
			f, proxy := faultyFixture(t)
			f.b.Budget = tc.budget
			k := store.Key{Provider: devstack.SinaCloud, Connection: fmt.Sprintf("slow-lease-%d", tc.budget.Provider/time.Second)}
			f.authorize(t, k)
			before, _ := f.store.Get(ctx, k, true)
			f.clock.Add(broker.MaxShortBackoff)
			f.clock.Live() // production: the broker's clock is the wall clock
			refreshes, reuses := stack.Sina.RefreshCalls(), stack.Sina.RefreshReuses()

			proxy.Inject("UpdateItem", ddbfault.Fault{Kind: ddbfault.StallAfter, Stall: tc.leaseStall, Match: "lease_owner"}, 1)
			stack.Sina.Inject("/oauth2/access_token", emulator.Fault{After: tc.providerLag}, 1)
			_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
			if proxy.Injected("UpdateItem") != 1 {
				t.Fatal("the lease stall never happened")
			}
			called := stack.Sina.RefreshCalls() - refreshes
			t.Logf("first request: err=%v, provider refreshes=%d", err, called)
			after, _ := f.store.Get(ctx, k, true)
			if called == 1 && err != nil && after.RefreshToken == before.RefreshToken {
				t.Errorf("the provider rotated the grant within Budget.Provider (%v < %v), but the broker had cut its call short "+
					"after the slow lease write; the stored refresh token is the spent one (usable at the provider: %v)",
					tc.providerLag, tc.budget.Provider, stack.Sina.RefreshUsable(after.RefreshToken))
			}
			// The consequence: the next refresh presents the spent token.
			f.clock.Add(broker.MaxShortBackoff)
			_, err = f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
			final, _ := f.store.Get(ctx, k, true)
			if got := stack.Sina.RefreshReuses() - reuses; got != 0 {
				t.Errorf("%d refresh-token reuses at SinaCloud, want 0; next request: %v; final status %s", got, err, final.Status)
			}
		})
	}
}

// The same through RefreshDue, whose hold is taken in work() before
// envFor and the (up to two) lease writes.
func TestRegressionRefresherSlowLeaseWriteShrinksTheProviderCall(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	f.b.Budget = fastBudget
	sink := eventQueue(t)
	k := store.Key{Provider: devstack.SinaCloud, Connection: "slow-lease-tick"}
	f.authorize(t, k)
	c, _ := f.store.Get(ctx, k, true)
	f.clock.Add(c.RefreshAt.Sub(f.clock.Now()) + time.Second)
	f.clock.Live()
	reuses := stack.Sina.RefreshReuses()
	proxy.Inject("UpdateItem", ddbfault.Fault{Kind: ddbfault.StallAfter, Stall: 1500 * time.Millisecond, Match: "lease_owner"}, 1)
	stack.Sina.Inject("/oauth2/access_token", emulator.Fault{After: 1300 * time.Millisecond}, 1)
	sum, err := f.b.RefreshDue(ctx)
	t.Logf("tick 1: %+v %v", sum, err)
	// Next attempt, when its backoff has passed.
	c, _ = f.store.Get(ctx, k, true)
	f.clock.Add(c.RefreshAt.Sub(f.clock.Now()) + time.Second)
	sum, err = f.b.RefreshDue(ctx)
	t.Logf("tick 2: %+v %v", sum, err)
	final, _ := f.store.Get(ctx, k, true)
	if got := stack.Sina.RefreshReuses() - reuses; got != 0 || final.Status != store.StatusActive {
		t.Errorf("%d reuses, final status %s (last error %q); %d needs_reauth events", got, final.Status, final.LastError,
			len(eventsAbout(receiveAll(t, sink), k)))
	}
}

// "Each once per transition": the writer publishes the notice, then its
// DeleteItem is throttled past the SDK's three attempts; the notice must
// not be published again by the refresher.
func TestRegressionNoticePublishedTwiceWhenItsDeleteFails(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	sink := eventQueue(t)
	k := store.Key{Provider: devstack.OAuth2, Connection: "notice-twice"}
	f.authorize(t, k)
	f.clock.Add(broker.MaxShortBackoff)
	stack.OAuth2.Inject("/token", emulator.OAuthError(400, "invalid_grant", "revoked by the user"), 1)
	proxy.Inject("DeleteItem", ddbfault.Fault{Kind: ddbfault.Throttle, Match: "notice#"}, 3)
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); broker.ErrorCode(err) != broker.CodeNeedsReauth {
		t.Fatal(err)
	}
	if proxy.Injected("DeleteItem") != 3 {
		t.Fatalf("%d faults applied", proxy.Injected("DeleteItem"))
	}
	f.clock.Add(store.NoticeGrace + time.Second)
	sum, err := f.sibling(t).RefreshDue(ctx)
	t.Logf("refresher: %+v %v", sum, err)
	evs := eventsAbout(receiveAll(t, sink), k)
	if len(evs) != 1 {
		t.Errorf("%d Connection Needs Reauthorization events for one transition, want 1", len(evs))
	}
	if got := f.count(t, telemetry.NeedsReauth, map[string]string{"Provider": k.Provider}); got != 1 {
		t.Errorf("NeedsReauth metric %v, want 1 (the alarm counts it twice too)", got)
	}
}

// DUE_SHARDS decides where a connection (and a notice) is filed in the due
// index. The refresher once read only shards 0..DUE_SHARDS-1, so after the
// operator lowered DUE_SHARDS (or while functions ran with different values
// during a deploy) connections filed in the higher shards were never
// refreshed again. The scans now read every shard up to store.MaxDueShards.
func TestRegressionLoweringDueShardsStrandsConnections(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, map[string]string{"DUE_SHARDS": "16"})
	s16 := *f.store
	s16.Shards = 16
	var k store.Key
	for i := 0; ; i++ {
		k = store.Key{Provider: devstack.SinaCloud, Connection: fmt.Sprintf("stranded-%d", i)}
		if shardOf(k, 16) >= 8 {
			break
		}
	}
	f.authorize(t, k) // by an instance running with DUE_SHARDS=16
	c, _ := f.store.Get(ctx, k, true)
	f.env["DUE_SHARDS"] = "8"
	refresher := f.sibling(t)
	calls := stack.Sina.Calls("/oauth2/access_token")
	// Due: the refresher, running with fewer shards, still finds it.
	f.clock.Add(c.RefreshAt.Add(time.Second).Sub(f.clock.Now()))
	sum, err := refresher.RefreshDue(ctx)
	if err != nil || sum.Due != 1 || sum.Refreshed != 1 {
		t.Fatalf("connection filed in shard >= 8, refresher with DUE_SHARDS=8: %+v %v", sum, err)
	}
	if got := stack.Sina.Calls("/oauth2/access_token") - calls; got != 1 {
		t.Fatalf("%d provider calls, want 1", got)
	}
}

// shardOf mirrors store.dueShard's number.
func shardOf(k store.Key, shards int) int {
	h := uint32(2166136261)
	for _, c := range []byte("conn#" + k.Provider + "#" + k.Connection) {
		h ^= uint32(c)
		h *= 16777619
	}
	return int(h % uint32(shards))
}

// bigTokenSina is a SinaCloud token endpoint with single-use refresh
// tokens whose access tokens are as big as a test wants.
type bigTokenSina struct {
	mu      sync.Mutex
	size    int
	scope   string
	refresh map[string]bool // token -> used
	grants  int
	reuses  int
}

func (s *bigTokenSina) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := r.PostForm.Get("refresh_token")
	used, ok := s.refresh[rt]
	w.Header().Set("Content-Type", "application/json")
	switch {
	case !ok:
		w.WriteHeader(400)
		_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"unknown"}`))
	case used:
		s.reuses++
		w.WriteHeader(400)
		_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"Refresh token has already been used"}`))
	default:
		s.refresh[rt] = true
		s.grants++
		next := fmt.Sprintf("rt-%d", s.grants)
		s.refresh[next] = false
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": strings.Repeat("A", s.size), "expires_in": 604800,
			"token_type": "Bearer", "refresh_token": next, "scope": s.scope})
	}
}

// A provider answer the broker accepts (under provider.MaxBody) can hold
// an access token over sealing.MaxPlaintext, or a scope over what an item
// holds. The commit once failed as invalid input after the provider had
// rotated the grant, dropping the storable rotated refresh token with it.
func TestRegressionOversizedAccessTokenLosesTheRotatedRefreshToken(t *testing.T) {
	for _, tc := range []struct {
		name  string
		size  int
		scope string
	}{{"65 KiB access token", 65 << 10, ""}, {"2049-byte scope", 100, strings.Repeat("s", 2049)}} {
		t.Run(tc.name, func(t *testing.T) { oversized(t, tc.size, tc.scope) })
	}
}

func oversized(t *testing.T, size int, scope string) {
	ctx := context.Background()
	f := newFixture(t)
	prov := &bigTokenSina{size: size, scope: scope, refresh: map[string]bool{"rt-0": false}}
	srv := startServer(t, prov)
	name := "bigtok" + fmt.Sprint(time.Now().UnixNano()%1e9)
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "sinacloud", "client_id": devstack.SinaClientID, "api_base": srv}, devstack.SinaSecret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	k := store.Key{Provider: name, Connection: "big"}
	now := f.clock.Now()
	if err := f.store.Create(ctx, &store.Connection{Key: k, Kind: "sinacloud", AccessToken: "small", RefreshToken: "rt-0", TokenType: "Bearer",
		ExpiresAt: now.Add(time.Hour), RefreshExpiresAt: now.Add(25 * time.Hour), Status: store.StatusActive, CreatedAt: now, RefreshedAt: now.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	stored, _ := f.store.Get(ctx, k, true)
	t.Logf("forced refresh: %v; RefreshUnsaved %v", err, f.count(t, telemetry.RefreshUnsaved, nil))
	if prov.grants == 1 && stored.RefreshToken != "rt-1" {
		t.Errorf("the provider rotated rt-0 into rt-1; the table still holds %q", stored.RefreshToken)
	}
	f.clock.Add(broker.MaxShortBackoff)
	_, err = f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	if prov.reuses != 0 {
		t.Errorf("%d reuses of the spent token; next request: %v", prov.reuses, err)
	}
}

// Concurrent first fetches of a machine token: one provider call when it
// works, and one when it fails transiently (the waiters are told).
func TestRegressionMachineFirstFetchStampede(t *testing.T) {
	for _, failFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("failFirst=%v", failFirst), func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			o2 := emulator.NewOAuth2(devstack.OAuth2ClientID, devstack.OAuth2Secret, "https://broker.test/callback/x")
			srv := startServer(t, o2)
			name := "cc" + fmt.Sprint(time.Now().UnixNano()%1e9)
			if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "oauth2", "grant": "client_credentials", "client_id": devstack.OAuth2ClientID,
				"token_url": srv + "/token", "auth_style": "basic"}, devstack.OAuth2Secret); err != nil {
				t.Fatal(err)
			}
			brokers := []*broker.Broker{f.b, f.sibling(t), f.sibling(t), f.sibling(t), f.sibling(t), f.sibling(t)}
			f.freshConfig(brokers[1:]...)
			gate := make(chan struct{})
			if failFirst {
				o2.Inject("/token", emulator.Fault{Gate: gate, Status: 503, ContentType: "text/html", Body: "<html>busy</html>"}, 1)
			} else {
				o2.Inject("/token", emulator.Fault{Gate: gate}, 1)
			}
			k := store.Key{Provider: name, Connection: broker.MachineConnection}
			var wg sync.WaitGroup
			errs := make([]error, len(brokers))
			for i, b := range brokers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = b.Token(ctx, broker.TokenRequest{Key: k})
				}()
			}
			for o2.Calls("/token") == 0 {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond) // everyone is waiting on the first fetch
			close(gate)
			wg.Wait()
			t.Logf("errors: %v", errs)
			// One call; after a failed first fetch the waiters are told
			// of its failure (the retry is scheduled) rather than each
			// asking the provider again.
			if got := o2.Calls("/token"); got != 1 {
				t.Errorf("%d concurrent first requests made %d calls to the token endpoint, want 1", len(brokers), got)
			}
			for i, err := range errs {
				if failFirst && broker.ErrorCode(err) != broker.CodeProviderUnavailable || !failFirst && err != nil {
					t.Errorf("caller %d: %v", i, err)
				}
			}
		})
	}
}

// An item written before generations existed (no generation
// attribute) is deleted and re-authorized while a refresh of it is at the
// provider: the old grant's commit must not land on the new grant.
func TestRegressionLegacyItemDeleteAndReauthorizeDuringRefresh(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	k := store.Key{Provider: devstack.SinaCloud, Connection: "legacy-moved"}
	f.authorize(t, k)
	if _, err := f.store.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(f.table),
		Key:              map[string]ddbtypes.AttributeValue{"pk": &ddbtypes.AttributeValueMemberS{Value: "conn#" + k.Provider + "#" + k.Connection}},
		UpdateExpression: aws.String("REMOVE generation")}); err != nil {
		t.Fatal(err)
	}
	if c, _ := f.store.Get(ctx, k, true); c.Generation != "" {
		t.Fatal("generation still there")
	}
	f.clock.Add(broker.MaxShortBackoff)
	gate := make(chan struct{})
	calls := stack.Sina.Calls("/oauth2/access_token")
	stack.Sina.Inject("/oauth2/access_token", emulator.Fault{Gate: gate}, 1)
	done := make(chan error, 1)
	go func() {
		_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
		done <- err
	}()
	for stack.Sina.Calls("/oauth2/access_token") == calls {
		time.Sleep(5 * time.Millisecond)
	}
	if err := f.sibling(t).Delete(ctx, k, "arn:aws:iam::123456789012:role/test"); err != nil {
		t.Fatal(err)
	}
	f.authorize(t, k)
	fresh, _ := f.store.Get(ctx, k, true)
	close(gate)
	err := <-done
	final, _ := f.store.Get(ctx, k, true)
	t.Logf("in-flight refresh: %v", err)
	if final.Generation != fresh.Generation || final.RefreshToken != fresh.RefreshToken || final.Version != fresh.Version {
		t.Errorf("the legacy grant's refresh landed on the new grant")
	}
}

// Three brokers, four callers each, one connection that
// every caller needs refreshed, through DynamoDB faults on every step:
// one provider call, no reuse, one token for all.
func TestRegressionThreeBrokerStampedeThroughFaults(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	k := store.Key{Provider: devstack.SinaCloud, Connection: "stampede"}
	f.authorize(t, k)
	f.clock.Add(6*24*time.Hour + 20*time.Hour) // 4 h left
	f.clock.Live()
	brokers := []*broker.Broker{f.b, f.sibling(t), f.sibling(t)}
	refreshes, reuses := stack.Sina.RefreshCalls(), stack.Sina.RefreshReuses()
	proxy.Inject("UpdateItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward, Match: "lease_owner"}, 2)
	proxy.Inject("PutItem", ddbfault.Fault{Kind: ddbfault.StallAfter, Stall: 4 * time.Second}, 1)
	proxy.Inject("PutItem", ddbfault.Fault{Kind: ddbfault.Throttle}, 4)
	proxy.Inject("GetItem", ddbfault.Fault{Kind: ddbfault.ServerError}, 6)
	stack.Sina.Inject("/oauth2/access_token", emulator.Fault{After: 500 * time.Millisecond}, 1)
	var wg sync.WaitGroup
	var mu sync.Mutex
	tokens := map[string]int{}
	var errs []error
	for _, b := range brokers {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 24 * time.Hour})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				tokens[tok.AccessToken]++
			}()
		}
	}
	wg.Wait()
	t.Logf("tokens %v errors %v", tokens, errs)
	if got := stack.Sina.RefreshCalls() - refreshes; got != 1 {
		t.Errorf("%d refreshes, want 1", got)
	}
	if got := stack.Sina.RefreshReuses() - reuses; got != 0 {
		t.Errorf("%d reuses", got)
	}
	if len(tokens) > 1 {
		t.Errorf("callers got %d different tokens", len(tokens))
	}
	st, _ := f.store.Get(ctx, k, true)
	if !stack.Sina.RefreshUsable(st.RefreshToken) || st.LeaseOwner != "" {
		t.Errorf("stored refresh token usable %v, lease %q", stack.Sina.RefreshUsable(st.RefreshToken), st.LeaseOwner)
	}
}

// A refresh whose commit loses to a newer grant once served whatever that
// grant was. For a machine token deleted during its refresh and fetched
// anew by another caller, that was the new, still pending item: an empty
// access token and no error. The broker now looks at it again.
func TestRegressionLosingCommitServesAPendingItem(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	o2 := emulator.NewOAuth2(devstack.OAuth2ClientID, devstack.OAuth2Secret, "https://broker.test/callback/x")
	srv := startServer(t, o2)
	name := "ccdel" + fmt.Sprint(time.Now().UnixNano()%1e9)
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "oauth2", "grant": "client_credentials", "client_id": devstack.OAuth2ClientID,
		"token_url": srv + "/token", "auth_style": "basic"}, devstack.OAuth2Secret); err != nil {
		t.Fatal(err)
	}
	other := f.sibling(t)
	f.freshConfig(other)
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(broker.MaxShortBackoff)
	gate1, gate2 := make(chan struct{}), make(chan struct{})
	o2.Inject("/token", emulator.Fault{Gate: gate1}, 1)
	o2.Inject("/token", emulator.Fault{Gate: gate2}, 1)
	type res struct {
		tok *broker.Token
		err error
	}
	first, second := make(chan res, 1), make(chan res, 1)
	go func() {
		tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
		first <- res{tok, err}
	}()
	for o2.Calls("/token") < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	if err := other.Delete(ctx, k, "arn:aws:iam::123456789012:role/test"); err != nil {
		t.Fatal(err)
	}
	go func() {
		tok, err := other.Token(ctx, broker.TokenRequest{Key: k})
		second <- res{tok, err}
	}()
	for o2.Calls("/token") < 3 {
		time.Sleep(5 * time.Millisecond)
	}
	close(gate1)
	r1 := <-first
	close(gate2)
	r2 := <-second
	t.Logf("second caller: %v", r2.err)
	if r1.err == nil && r1.tok.AccessToken == "" {
		t.Errorf("the first caller got a token response with an empty access token and no error (expires_at %v)", r1.tok.ExpiresAt)
	} else {
		t.Logf("first caller: %v", r1.err)
	}
}

// Two refresher invocations at once (EventBridge delivers a schedule at
// least once; Lambda retries a failed async invocation) must not both
// publish a pending notice: it is claimed before it is sent.
func TestRegressionOverlappingRefreshersPublishANoticeTwice(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sink := eventQueue(t)
	k := orphanNotice(t, f, "overlap-notice")
	f.clock.Add(store.NoticeGrace + time.Second)
	r1, r2 := f.sibling(t), f.sibling(t)
	var wg sync.WaitGroup
	sums := make([]*broker.Summary, 2)
	for i, r := range []*broker.Broker{r1, r2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sums[i], _ = r.RefreshDue(ctx)
		}()
	}
	wg.Wait()
	evs := eventsAbout(receiveAll(t, sink), k)
	t.Logf("notices sent: %d + %d", sums[0].Notices, sums[1].Notices)
	if len(evs) != 1 {
		t.Errorf("%d Needs Reauthorization events for one transition, want 1", len(evs))
	}
}
