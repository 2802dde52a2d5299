package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/local/ddbfault"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// sinaWorld is a SinaCloud provider of its own (emulator, SSM entry) over a
// table of its own, so a test can count everything that happens to it.
type sinaWorld struct {
	name  string
	emu   *emulator.SinaCloud
	url   string // the emulator's base URL
	table string
	store *store.Store
	// served holds every access token a token answer (200) carried.
	served sync.Map
}

// recordServed notes the access token of a 200 token answer's body.
func (w *sinaWorld) recordServed(body string) {
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if json.Unmarshal([]byte(body), &tok) == nil && tok.AccessToken != "" {
		w.served.Store(tok.AccessToken, true)
	}
}

func newSinaWorld(t *testing.T, prefix string, accessTTL time.Duration) *sinaWorld {
	t.Helper()
	ctx := context.Background()
	w := &sinaWorld{name: localaws.UniqueName(prefix), table: localaws.UniqueName(prefix)}
	w.emu = emulator.NewSinaCloud(devstack.SinaClientID, devstack.SinaSecret, publicBase+"/callback/"+w.name)
	w.emu.AccessTTL = accessTTL
	srv := httptest.NewServer(w.emu)
	t.Cleanup(srv.Close)
	w.url = srv.URL
	if err := stack.PutProvider(ctx, w.name, map[string]any{"kind": "sinacloud", "client_id": devstack.SinaClientID, "api_base": srv.URL}, devstack.SinaSecret); err != nil {
		t.Fatal(err)
	}
	root, _ := localaws.ModuleRoot()
	db := localaws.DynamoDBClient(stack.Endpoints.DynamoDB)
	if err := localaws.CreateTable(ctx, db, filepath.Join(root, "template.yaml"), w.table); err != nil {
		t.Fatal(err)
	}
	snap, err := (&config.Loader{SSM: localaws.SSMClient(stack.Endpoints.SSM), Prefix: stack.Prefix}).Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := snap.Ring()
	if err != nil {
		t.Fatal(err)
	}
	w.store = &store.Store{DB: db, Table: w.table, Ring: ring, Shards: 8}
	return w
}

// seed stores n connections holding real grants of the emulator, all due.
func (w *sinaWorld) seed(t *testing.T, n int) []store.Key {
	t.Helper()
	keys := make([]store.Key, n)
	for i := range keys {
		access, refresh, ttl := w.emu.IssueGrant()
		now := time.Now()
		keys[i] = store.Key{Provider: w.name, Connection: fmt.Sprintf("c%03d", i)}
		if err := w.store.Create(context.Background(), &store.Connection{Key: keys[i], Kind: "sinacloud", AccessToken: access, RefreshToken: refresh,
			TokenType: "Bearer", ExpiresAt: now.Add(ttl), RefreshExpiresAt: now.Add(ttl + 24*time.Hour), Status: store.StatusActive,
			CreatedAt: now, RefreshedAt: now, RefreshAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func (w *sinaWorld) env() map[string]string { return map[string]string{"TABLE_NAME": w.table} }

// reauthEvents collects the needs-reauthorization events about w's provider.
func (w *sinaWorld) reauthEvents(t *testing.T) *localaws.EventSink {
	t.Helper()
	sink, err := localaws.NewEventSink(context.Background(), stack.Endpoints.SSM,
		`{"source":["tokenbroker"],"detail-type":["Connection Needs Reauthorization"],"detail":{"provider":["`+w.name+`"]}}`)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	return sink
}

func tick(t *testing.T, r *lambdarun.Runner) (broker.Summary, error) {
	t.Helper()
	var sum broker.Summary
	out, err := r.Invoke(context.Background(), []byte(`{"source":"aws.events","detail-type":"Scheduled Event","detail":{}}`))
	if err != nil {
		return sum, err
	}
	if err := json.Unmarshal(out, &sum); err != nil {
		t.Fatalf("refresher answer %s", out)
	}
	return sum, nil
}

// The chaos run: a stampede of token requests and refresher ticks over
// single-use SinaCloud grants while the functions' processes are killed at
// random. A kill after the provider answered and before the commit is the
// one loss nothing can prevent; it must end in needs_reauth with exactly
// one event, never in a stuck lease, a silent 500 or a second reuse.
func TestChaosKilledProcessesNeverLoseAGrantSilently(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos run takes about a minute")
	}
	const conns, tokenSandboxes, callers = 16, 4, 6
	chaosFor := 20 * time.Second
	// 90-second tokens live less than the refresh lead: every connection is
	// due at every tick, and requests refresh them too.
	w := newSinaWorld(t, "chaos", 90*time.Second)
	keys := w.seed(t, conns)
	sink := w.reauthEvents(t)
	tokenFns := make([]*lambdarun.Runner, tokenSandboxes)
	for i := range tokenFns {
		tokenFns[i] = startFunction(t, "token", w.env())
	}
	refresher := startFunction(t, "refresher", w.env())

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var served, killed, ticks, refused, unavailable atomic.Int64
	var unexpected sync.Map
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := keys[rand.IntN(len(keys))]
				rq := request{method: "GET", path: "/connections/" + k.Provider + "/" + k.Connection + "/token", iam: true}
				if i%5 == 0 {
					rq = request{method: "POST", path: "/connections/" + k.Provider + "/" + k.Connection + "/refresh", iam: true}
				}
				out, err := tokenFns[rand.IntN(len(tokenFns))].Invoke(context.Background(), rq.event())
				var fe *lambdarun.FunctionError
				if errors.As(err, &fe) {
					killed.Add(1) // the sandbox was killed under this request
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				var resp events.APIGatewayV2HTTPResponse
				_ = json.Unmarshal(out, &resp)
				route, _ := rq.route()
				if err := contract.CheckAnswer(route, resp); err != nil {
					unexpected.Store(resp.StatusCode, "breaks openapi.yaml: "+err.Error())
				} else {
					checked.Add(route, resp.StatusCode)
				}
				switch resp.StatusCode {
				case 200:
					served.Add(1)
					w.recordServed(resp.Body)
				case 409:
					refused.Add(1)
				case 503:
					unavailable.Add(1)
				default:
					unexpected.Store(resp.StatusCode, resp.Body)
				}
			}
		}()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			if _, err := tick(t, refresher); err == nil {
				ticks.Add(1)
			}
		}
	}()
	kills := 0
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(150+rand.IntN(350)) * time.Millisecond):
			}
			victim := tokenFns[rand.IntN(len(tokenFns))]
			if rand.IntN(4) == 0 {
				victim = refresher
			}
			if pid := victim.PID(); pid > 0 && syscall.Kill(-pid, syscall.SIGKILL) == nil {
				kills++
			}
		}
	}()
	time.Sleep(chaosFor)
	close(stop)
	wg.Wait()
	unexpected.Range(func(code, body any) bool {
		t.Errorf("answer %v: %v", code, body)
		return true
	})

	// Calm: let every lease a killed holder left run out, then tick until
	// nothing is leased and every announcement is out.
	time.Sleep(broker.DefaultBudget().Provider + broker.DefaultBudget().Commit + 2*broker.DefaultBudget().Skew + time.Second)
	var last broker.Summary
	for settle := time.Now().Add(store.NoticeGrace + 20*time.Second); ; {
		sum, err := tick(t, refresher)
		if err != nil {
			t.Fatalf("calm tick: %v", err)
		}
		last = sum
		leased, notices := w.pending(t)
		if leased == 0 && notices == 0 && sum.FailedTransient == 0 && sum.SkippedLocked == 0 {
			break
		}
		if time.Now().After(settle) {
			t.Fatalf("not settled: %d leases, %d unsent notices, last tick %+v", leased, notices, sum)
		}
		time.Sleep(2 * time.Second)
	}

	surfaced := surfacePendingLosses(t, w, tokenFns[0], keys)
	evs, err := sink.Receive(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	lost := checkNoSilentLoss(t, w, keys, evs, 1)
	// A spent grant still pending after the calm comes from a forced
	// refresh before its due time, lost with its token sandbox (one invoke
	// at a time, so one per kill); the refresher's losses are due and end
	// in the calm's ticks.
	if surfaced > kills {
		t.Errorf("%d spent grants found after the calm, more than the %d kills that could have lost an answer", surfaced, kills)
	}
	if kills == 0 || ticks.Load() == 0 || served.Load() == 0 {
		t.Fatalf("the run did nothing: %d kills, %d ticks, %d tokens served", kills, ticks.Load(), served.Load())
	}
	t.Logf("chaos: %d kills, %d requests killed, %d ticks, %d tokens served, %d refused, %d unavailable, %d provider refreshes, %d grants lost to a kill between the provider's answer and the commit (each ended in needs_reauth with one event; %d of them surfaced by a forced refresh after the calm); last tick %+v",
		kills, killed.Load(), ticks.Load(), served.Load(), refused.Load(), unavailable.Load(), w.emu.RefreshCalls(), lost, surfaced, last)
}

// pending counts live leases and unsent notices in w's table.
func (w *sinaWorld) pending(t *testing.T) (leased, notices int) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	for i := 0; i < 1000; i++ {
		c, err := w.store.Get(ctx, store.Key{Provider: w.name, Connection: fmt.Sprintf("c%03d", i)}, true)
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if c.Leased(now) {
			leased++
		}
	}
	if err := w.store.ScanNotices(ctx, now.Add(time.Hour), func(*store.Notice) error { notices++; return nil }); err != nil {
		t.Fatal(err)
	}
	return leased, notices
}

// Short Lambda deadlines and a provider that applies the rotation and then
// answers slowly: the refresher starts only the refreshes its invocation
// can finish, and a token request with too little time left starts none.
func TestShortDeadlinesNeverSpendARefreshToken(t *testing.T) {
	if testing.Short() {
		t.Skip("runs several refresher ticks of about 7 seconds")
	}
	const n = 4
	w := newSinaWorld(t, "deadline", 7*24*time.Hour)
	keys := w.seed(t, n)
	env := w.env()
	env["REFRESH_CONCURRENCY"], env["PROVIDER_CONCURRENCY"] = "1", "1"
	r, err := lambdarun.Start(lambdarun.Config{Bootstrap: bootstraps["refresher"], FunctionName: "refresher", Env: mergeEnv(env),
		Timeout: 24 * time.Second, Stdout: logs, Stderr: logs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	delay := 6 * time.Second
	w.emu.Inject("/oauth2/access_token", emulator.Fault{After: delay}, n)

	// A token function with 15 s to live cannot fit a provider call and its
	// commit: it answers 503 and spends nothing.
	short, err := lambdarun.Start(lambdarun.Config{Bootstrap: bootstraps["token"], FunctionName: "token", Env: mergeEnv(env),
		Timeout: 15 * time.Second, Stdout: logs, Stderr: logs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(short.Close)
	ageConnection(t, w.table, keys[0].Provider, keys[0].Connection, 30*time.Second)
	expectStatus(t, tokenOf(t, short, keys[0].Provider, keys[0].Connection, "min_ttl=600"), 503, "provider_unavailable")
	if w.emu.Calls("/oauth2/access_token") != 0 {
		t.Fatal("a token request without the time to store the answer called the provider")
	}

	refreshed := 0
	for i := 0; i < n+2 && refreshed < n; i++ {
		sum, err := tick(t, r)
		if err != nil {
			t.Fatalf("tick %d: %v (the invocation ran out of time)", i, err)
		}
		if sum.Refreshed != 1 || sum.FailedTransient != 0 || sum.NeedsReauth != 0 {
			t.Fatalf("tick %d: %+v, want exactly one refresh (a second would not fit)", i, sum)
		}
		refreshed += sum.Refreshed
	}
	if refreshed != n || w.emu.RefreshCalls() != n || w.emu.RefreshReuses() != 0 {
		t.Fatalf("%d refreshed, %d provider refreshes, %d reuses; want %d, %d, 0", refreshed, w.emu.RefreshCalls(), w.emu.RefreshReuses(), n, n)
	}
	for _, k := range keys {
		if c, _ := w.store.Get(context.Background(), k, true); !w.emu.RefreshUsable(c.RefreshToken) || c.LeaseOwner != "" {
			t.Fatalf("%s does not hold the newest grant", k)
		}
	}
}

func mergeEnv(extra map[string]string) map[string]string {
	env := map[string]string{}
	for k, v := range stack.FunctionEnv {
		env[k] = v
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// A stampede of callers over several sandboxes while DynamoDB drops the
// connection after applying the lease and the commit, and throttles the
// commit's re-sends: one refresh, no reuse, one token for everyone.
func TestStampedeThroughDynamoDBFaults(t *testing.T) {
	proxy, err := ddbfault.Start(stack.Endpoints.DynamoDB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	w := newSinaWorld(t, "faulty", 7*24*time.Hour)
	k := w.seed(t, 1)[0]
	env := w.env()
	env[localaws.EnvDynamoDB] = proxy.URL
	runners := make([]*lambdarun.Runner, 3)
	for i := range runners {
		runners[i] = startFunction(t, "token", env)
		expectStatus(t, tokenOf(t, runners[i], k.Provider, k.Connection, "min_ttl=0"), 200, "")
	}
	ageConnection(t, w.table, k.Provider, k.Connection, 90*time.Second)
	proxy.Inject("UpdateItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward, Match: "lease_owner"}, 1)
	proxy.Inject("PutItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward}, 1)
	proxy.Inject("PutItem", ddbfault.Fault{Kind: ddbfault.Throttle}, 4)
	const callers = 30
	tokens := make([]string, callers)
	var wg sync.WaitGroup
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := tokenOf(t, runners[i%len(runners)], k.Provider, k.Connection, "min_ttl=600")
			if resp.StatusCode != 200 {
				t.Errorf("caller %d: %d %s", i, resp.StatusCode, resp.Body)
				return
			}
			tokens[i], _ = resp.json["access_token"].(string)
		}()
	}
	wg.Wait()
	if proxy.Injected("UpdateItem") != 1 || proxy.Injected("PutItem") != 5 {
		t.Fatalf("faults applied: %d lease, %d commit; want 1 and 5", proxy.Injected("UpdateItem"), proxy.Injected("PutItem"))
	}
	if w.emu.RefreshCalls() != 1 || w.emu.RefreshReuses() != 0 {
		t.Fatalf("%d refreshes, %d reuses; want 1 and 0", w.emu.RefreshCalls(), w.emu.RefreshReuses())
	}
	for i := range tokens {
		if tokens[i] != tokens[0] || !w.emu.ValidAccess(tokens[i]) {
			t.Fatalf("caller %d got another or an invalid token", i)
		}
	}
}

// The one loss nothing can prevent, made to happen on purpose: the
// provider has rotated the grant and the process dies before its commit
// reaches DynamoDB. Nothing is stuck: the lease runs out, the next refresh
// presents the spent token, and the connection ends in needs_reauth with
// exactly one event.
func TestKillBetweenProviderAnswerAndCommitEndsVisibly(t *testing.T) {
	proxy, err := ddbfault.Start(stack.Endpoints.DynamoDB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	w := newSinaWorld(t, "killed", 7*24*time.Hour)
	k := w.seed(t, 1)[0]
	sink := w.reauthEvents(t)
	env := w.env()
	env[localaws.EnvDynamoDB] = proxy.URL
	victim := startFunction(t, "token", env)
	expectStatus(t, tokenOf(t, victim, k.Provider, k.Connection, "min_ttl=0"), 200, "")
	ageConnection(t, w.table, k.Provider, k.Connection, 90*time.Second)
	// Every commit attempt hangs before it reaches DynamoDB.
	proxy.Inject("PutItem", ddbfault.Fault{Kind: ddbfault.StallBefore, Stall: time.Minute}, 20)
	done := make(chan error, 1)
	go func() {
		_, err := victim.Invoke(context.Background(), request{method: "GET", path: "/connections/" + k.Provider + "/" + k.Connection + "/token",
			query: "min_ttl=600", iam: true}.event())
		done <- err
	}()
	for w.emu.RefreshCalls() == 0 || proxy.Seen("PutItem") == 0 {
		time.Sleep(2 * time.Millisecond)
	}
	if err := syscall.Kill(-victim.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var fe *lambdarun.FunctionError
	if err := <-done; !errors.As(err, &fe) {
		t.Fatalf("the killed invocation answered: %v", err)
	}
	proxy.Clear()
	if proxy.Forwarded("PutItem") != 0 {
		t.Fatal("the commit reached DynamoDB: the kill came too late to test the loss")
	}
	held, _ := w.store.Get(context.Background(), k, true)
	if !held.Leased(time.Now()) {
		t.Fatal("the dead holder's lease is gone already")
	}
	leaseLeft := time.Until(held.LeaseUntil)
	time.Sleep(leaseLeft + 100*time.Millisecond)
	survivor := startFunction(t, "token", w.env())
	expectStatus(t, tokenOf(t, survivor, k.Provider, k.Connection, "min_ttl=600"), 409, "needs_reauth")
	expectStatus(t, tokenOf(t, survivor, k.Provider, k.Connection, ""), 409, "needs_reauth")
	if w.emu.RefreshCalls() != 1 || w.emu.RefreshReuses() != 1 {
		t.Fatalf("%d refreshes, %d reuses; want the lost one and the one reuse that found it", w.emu.RefreshCalls(), w.emu.RefreshReuses())
	}
	evs, err := sink.Receive(context.Background())
	if err != nil || len(evs) != 1 {
		t.Fatalf("%d events (%v), want exactly 1", len(evs), err)
	}
	final, _ := w.store.Get(context.Background(), k, true)
	if final.Status != store.StatusNeedsReauth || final.LeaseOwner != "" {
		t.Fatalf("final %s with lease %q", final.Status, final.LeaseOwner)
	}
	t.Logf("the dead holder's lease ran out %v after the kill", leaseLeft.Round(time.Millisecond))
}
