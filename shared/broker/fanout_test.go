package broker_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/local/ddbfault"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// memQueue is a WorkQueue that keeps what it is sent.
type memQueue struct {
	mu    sync.Mutex
	units []broker.Unit
}

func (q *memQueue) Send(_ context.Context, units []broker.Unit) []error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.units = append(q.units, units...)
	return make([]error, len(units))
}

func (q *memQueue) take() []broker.Unit {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.units
	q.units = nil
	return out
}

// countingProvider is a provider emulator behind a counter of every
// request that reaches it.
type countingProvider struct {
	h     http.Handler
	calls atomic.Int64
}

func (c *countingProvider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.calls.Add(1)
	c.h.ServeHTTP(w, r)
}

// ownProvider puts a provider of its own (an OAuth2 emulator behind a
// counter) into SSM for f's broker.
func ownProvider(t *testing.T, f *fixture) (string, *emulator.OAuth2, *countingProvider) {
	t.Helper()
	name := localaws.UniqueName("fan")
	o2 := emulator.NewOAuth2(devstack.OAuth2ClientID, devstack.OAuth2Secret, "https://broker.test/callback/"+name)
	counter := &countingProvider{h: o2}
	srv := startServer(t, counter)
	if err := f.stack.PutProvider(context.Background(), name, map[string]any{"kind": "oauth2", "client_id": devstack.OAuth2ClientID,
		"authorize_url": srv + "/authorize", "token_url": srv + "/token", "auth_style": "basic"}, devstack.OAuth2Secret); err != nil {
		t.Fatal(err)
	}
	f.b.Config = &config.Loader{SSM: localaws.SSMClient(stack.Endpoints.SSM), Prefix: f.stack.Prefix}
	return name, o2, counter
}

// A fan-out tick queues each due shard once, however many ticks run
// before the workers get to it; a worker refreshes each due connection of
// its units exactly once; a redelivered message does nothing; a message
// whose claim ran out is superseded by the next tick's, and only that one
// works; an unfinished unit is handed back and queued again at once.
func TestFanOutQueuesEachDueShardOnce(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	name, o2, _ := ownProvider(t, f)
	const n = 24
	shards := map[string]bool{}
	for i := range n {
		k := store.Key{Provider: name, Connection: fmt.Sprintf("c%02d", i)}
		f.authorize(t, k)
		shards[f.store.DueShard(k)] = true
	}
	q := &memQueue{}
	f.b.Queue = q
	worker := f.sibling(t)
	worker.Config = f.b.Config
	f.clock.Add(56 * time.Minute)

	sum, err := f.b.Tick(ctx)
	if err != nil || sum.Queued != len(shards) || sum.AlreadyQueued != 0 || sum.Refreshed != 0 {
		t.Fatalf("first tick %+v %v; want %d shards queued and nothing refreshed by the tick", sum, err, len(shards))
	}
	first := q.take()
	// A backlog: the workers have not started, and two more ticks come.
	for tick := 2; tick <= 3; tick++ {
		f.clock.Add(time.Minute)
		sum, err = f.b.Tick(ctx)
		if err != nil || sum.Queued != 0 || sum.AlreadyQueued != len(shards) {
			t.Fatalf("tick %d %+v %v; want every shard left alone (already queued)", tick, sum, err)
		}
	}
	if got := q.take(); len(got) != 0 {
		t.Fatalf("%d more messages while the first were queued", len(got))
	}

	calls := o2.RefreshCalls()
	sum, retry := worker.Work(ctx, first)
	if sum.Refreshed != n || strings.Contains(fmt.Sprint(retry), "true") {
		t.Fatalf("worker %+v retry %v; want %d refreshed, nothing back", sum, retry, n)
	}
	if got := o2.RefreshCalls() - calls; got != n {
		t.Fatalf("%d provider calls, want exactly %d", got, n)
	}
	// SQS delivers at least once: the same messages again do nothing.
	sum, retry = worker.Work(ctx, first)
	if sum.Refreshed != 0 || sum.Due != 0 || strings.Contains(fmt.Sprint(retry), "true") || o2.RefreshCalls()-calls != n {
		t.Fatalf("redelivery %+v retry %v, provider calls %d", sum, retry, o2.RefreshCalls()-calls)
	}
	if sum, err = f.b.Tick(ctx); err != nil || sum.Queued != 0 || sum.AlreadyQueued != 0 {
		t.Fatalf("tick after the work %+v %v; nothing is due", sum, err)
	}

	// Lost messages: the claims run out and the next tick queues anew; the
	// old messages, should they turn up, are superseded.
	f.clock.Add(56 * time.Minute)
	if sum, err = f.b.Tick(ctx); err != nil || sum.Queued != len(shards) {
		t.Fatalf("tick %+v %v", sum, err)
	}
	lost := q.take()
	f.clock.Add(broker.DefaultUnitClaim + time.Second)
	if sum, err = f.b.Tick(ctx); err != nil || sum.Queued != len(shards) || sum.AlreadyQueued != 0 {
		t.Fatalf("tick after the claims ran out %+v %v; want every shard queued again", sum, err)
	}
	again := q.take()
	calls = o2.RefreshCalls()
	if sum, _ = worker.Work(ctx, lost); sum.Refreshed != 0 || o2.RefreshCalls() != calls {
		t.Fatalf("superseded messages worked: %+v", sum)
	}

	// Too little time left in the invocation: nothing starts, every unit
	// is handed back and its claim let go, so the next tick queues it.
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	sum, retry = worker.Work(short, again)
	cancel()
	if sum.Refreshed != 0 || sum.Unfinished != len(again) || strings.Contains(fmt.Sprint(retry), "false") || o2.RefreshCalls() != calls {
		t.Fatalf("short invocation %+v retry %v", sum, retry)
	}
	if sum, err = f.b.Tick(ctx); err != nil || sum.Queued != len(shards) {
		t.Fatalf("tick after unfinished units %+v %v; want them queued again at once", sum, err)
	}
	if sum, _ = worker.Work(ctx, q.take()); sum.Refreshed != n || o2.RefreshCalls()-calls != n {
		t.Fatalf("worker %+v, provider calls %d; want %d", sum, o2.RefreshCalls()-calls, n)
	}
	// A message that is not a unit is refused with a clear error.
	for _, body := range []string{`{`, `{"provider":"a#b","shard":1,"token":"x"}`, `{"provider":"p","shard":64,"token":"x"}`, `{"provider":"p","shard":1}`} {
		if _, err := broker.ParseUnit(body); err == nil || !strings.Contains(err.Error(), "not a unit") {
			t.Errorf("ParseUnit(%s) = %v", body, err)
		}
	}
}

// SQS may hand one message to two workers at once. The first to take the
// unit works it; the other drops its copy without reading the due index,
// so a duplicate costs one conditional write, not a second sweep. A
// holder that dies lets go when its hold runs out: then the message's
// redelivery works the unit.
func TestFanOutDuplicateDeliveryIsWorkedOnce(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	name, o2, _ := ownProvider(t, f)
	const n = 12
	for i := range n {
		f.authorize(t, store.Key{Provider: name, Connection: fmt.Sprintf("d%02d", i)})
	}
	q := &memQueue{}
	f.b.Queue = q
	worker := f.sibling(t)
	worker.Config = f.b.Config
	f.clock.Add(56 * time.Minute)
	if _, err := f.b.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	units := q.take()
	if len(units) == 0 {
		t.Fatal("nothing queued")
	}
	// Another worker holds every unit: it got the same messages first. Its
	// own take sent again (an SDK retry after a lost answer) still holds;
	// any other holder's is refused, and so is a tick's attempt to drop
	// the claim (a send that reported an error may have gone out).
	held := f.clock.Now().Add(time.Minute)
	for _, u := range units {
		for _, try := range []struct {
			holder string
			want   bool
		}{{"aaaaaaaaaaaaaaaa", true}, {"aaaaaaaaaaaaaaaa", true}, {"bbbbbbbbbbbbbbbb", false}} {
			if took, err := f.store.TakeUnit(ctx, u.Provider, u.Shard, u.Token, try.holder, held, f.clock.Now()); err != nil || took != try.want {
				t.Fatalf("hold on %+v by %s: %v %v, want %v", u, try.holder, took, err, try.want)
			}
		}
		if err := f.store.DropClaim(ctx, u.Provider, u.Shard, u.Token); err != nil {
			t.Fatal(err)
		}
		if got, err := f.store.ClaimUnit(ctx, u.Provider, u.Shard, "cccccccccccccccc", f.clock.Now().Add(time.Hour), f.clock.Now()); err != nil || got {
			t.Fatalf("a held unit was dropped and claimed anew: %v %v", got, err)
		}
	}
	calls := o2.RefreshCalls()
	sum, retry := worker.Work(ctx, units)
	if sum.Due != 0 || sum.Refreshed != 0 || strings.Contains(fmt.Sprint(retry), "true") || o2.RefreshCalls() != calls {
		t.Fatalf("duplicate delivery swept held units: %+v retry %v, %d provider calls", sum, retry, o2.RefreshCalls()-calls)
	}
	// The holder died; past its hold the redelivered messages work.
	f.clock.Add(time.Minute + time.Second)
	sum, retry = worker.Work(ctx, units)
	if sum.Refreshed != n || strings.Contains(fmt.Sprint(retry), "true") || o2.RefreshCalls()-calls != n {
		t.Fatalf("redelivery after the hold ran out: %+v retry %v, %d provider calls; want %d", sum, retry, o2.RefreshCalls()-calls, n)
	}
}

// Claims and holds whose answers are lost (the connection resets after
// DynamoDB applied the write) are retried by the SDK, and each retry must
// find its own write: the tick's claim is queued, not counted as someone
// else's; a worker's take is kept, not dropped; and a take whose every
// answer was lost is let go, so the redelivered message works the unit.
func TestFanOutRetriedTakeKeepsTheUnit(t *testing.T) {
	f, proxy := faultyFixture(t)
	ctx := context.Background()
	name, o2, _ := ownProvider(t, f)
	const n = 4
	shards := map[string]bool{}
	for i := range n {
		k := store.Key{Provider: name, Connection: fmt.Sprintf("r%02d", i)}
		f.authorize(t, k)
		shards[f.store.DueShard(k)] = true
	}
	q := &memQueue{}
	f.b.Queue = q
	f.clock.Add(56 * time.Minute)
	proxy.Inject("PutItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward, Match: "unit_token"}, 1)
	if sum, err := f.b.Tick(ctx); err != nil || sum.Queued != len(shards) || sum.AlreadyQueued != 0 {
		t.Fatalf("tick after a lost claim answer: %+v %v; want %d queued", sum, err, len(shards))
	}
	worker := f.sibling(t)
	worker.Config = f.b.Config
	calls := o2.RefreshCalls()
	units := q.take()
	proxy.Inject("UpdateItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward, Match: "unit_taken"}, 1)
	sum, retry := worker.Work(ctx, units)
	if sum.Refreshed != n || strings.Contains(fmt.Sprint(retry), "true") || o2.RefreshCalls()-calls != n {
		t.Fatalf("worker after a lost take answer: %+v retry %v, %d provider calls; want all %d refreshed", sum, retry, o2.RefreshCalls()-calls, n)
	}

	// Every attempt of the take loses its answer: the message comes back,
	// and its redelivery (another worker) works the unit at once.
	f.clock.Add(56 * time.Minute)
	if _, err := f.b.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	units = q.take()
	// The SDK makes three attempts; each loses its answer.
	proxy.Inject("UpdateItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward, Match: "unit_taken"}, 3)
	sum, retry = worker.Work(ctx, units[:1])
	if sum.Refreshed != 0 || fmt.Sprint(retry) != "[true]" || proxy.Pending("UpdateItem") != 0 {
		t.Fatalf("worker whose take lost every answer: %+v retry %v; want its message back", sum, retry)
	}
	other := f.sibling(t)
	other.Config = f.b.Config
	if sum, _ = other.Work(ctx, units); sum.Refreshed != n || o2.RefreshCalls()-calls != 2*n {
		t.Fatalf("redelivery: %+v, %d provider calls; want %d more refreshed", sum, o2.RefreshCalls()-calls-n, n)
	}
}

// A deployment outside HOME_REGION never calls a provider: it serves a
// token that is still valid, answers 503 naming the home region for one
// that needs a refresh, and its ticks and workers do nothing.
func TestReplicaRegionNeverCallsAProvider(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	name, _, counter := ownProvider(t, f)
	k := store.Key{Provider: name, Connection: "replicated"}
	f.authorize(t, k)
	f.env["HOME_REGION"] = "eu-west-1"
	replica := f.sibling(t)
	replica.Config = f.b.Config
	replica.Queue = &memQueue{}
	if replica.IsHome() {
		t.Fatal("the replica thinks it is home")
	}
	before := counter.calls.Load()

	if tok, err := replica.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Minute}); err != nil || tok.AccessToken == "" {
		t.Fatalf("a valid token is not served: %v", err)
	}
	f.clock.Add(56 * time.Minute)
	_, err := replica.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 10 * time.Minute})
	if broker.ErrorCode(err) != broker.CodeProviderUnavailable || !strings.Contains(err.Error(), "eu-west-1") || !strings.Contains(err.Error(), "replica") {
		t.Fatalf("a token that needs a refresh: %v; want provider_unavailable naming the home region", err)
	}
	_, err = replica.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Minute, Force: true})
	if broker.ErrorCode(err) != broker.CodeProviderUnavailable {
		t.Fatalf("a forced refresh: %v", err)
	}
	for _, tick := range []func(context.Context) (*broker.Summary, error){replica.Tick, replica.RefreshDue, replica.Dispatch} {
		if sum, err := tick(ctx); err != nil || !sum.NotHome || sum.Due != 0 || sum.Queued != 0 {
			t.Fatalf("replica tick %+v %v", sum, err)
		}
	}
	if sum, _ := replica.Work(ctx, []broker.Unit{{Provider: name, Shard: 0, Token: "t"}}); !sum.NotHome || sum.Refreshed != 0 {
		t.Fatalf("replica worker %+v", sum)
	}
	if _, err := replica.StartAuthorization(ctx, broker.AuthorizeRequest{Key: store.Key{Provider: name, Connection: "new"}}); err == nil {
		t.Fatal("a replica started an authorization")
	}
	if got := counter.calls.Load() - before; got != 0 {
		t.Fatalf("the replica made %d provider calls, want 0", got)
	}
	c, err := f.store.Get(ctx, k, true)
	if err != nil || c.LeaseOwner != "" || c.LastError != "" {
		t.Fatalf("the replica wrote to the connection: lease %q, last error %q, %v", c.LeaseOwner, c.LastError, err)
	}
	// The home deployment refreshes it.
	if tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 10 * time.Minute}); err != nil || tok.AccessToken == "" {
		t.Fatalf("home: %v", err)
	}
	if got := counter.calls.Load() - before; got != 1 {
		t.Fatalf("home made %d provider calls, want 1", got)
	}
}
