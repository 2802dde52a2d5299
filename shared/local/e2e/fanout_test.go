package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// fanOut is fan-out mode over a sinaWorld: the unit queue and its
// dead-letter queue on moto, the refresher with REFRESH_QUEUE_URL, and the
// worker function behind lambdarun's event source mapping.
type fanOut struct {
	sqs       *sqs.Client
	queue     string
	dlq       string
	refresher *lambdarun.Runner
	mapping   *lambdarun.Mapping
	workers   atomic.Int64 // instances started
}

type fanOutOptions struct {
	instances, batch int
	workerTimeout    time.Duration
	visibility       time.Duration
	env              map[string]string
}

func startFanOut(t *testing.T, w *sinaWorld, o fanOutOptions) *fanOut {
	t.Helper()
	ctx := context.Background()
	f := &fanOut{sqs: sqs.NewFromConfig(localaws.Config(), func(so *sqs.Options) { so.BaseEndpoint = aws.String(stack.Endpoints.SSM) })}
	dlq, err := f.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(w.table + "-dlq")})
	if err != nil {
		t.Fatal(err)
	}
	f.dlq = aws.ToString(dlq.QueueUrl)
	attrs, err := f.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: dlq.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		t.Fatal(err)
	}
	redrive, _ := json.Marshal(map[string]any{"deadLetterTargetArn": attrs.Attributes["QueueArn"], "maxReceiveCount": 5})
	q, err := f.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(w.table), Attributes: map[string]string{
		"VisibilityTimeout": strconv.Itoa(int(o.visibility.Seconds())), "RedrivePolicy": string(redrive)}})
	if err != nil {
		t.Fatal(err)
	}
	f.queue = aws.ToString(q.QueueUrl)
	env := w.env()
	env["REFRESH_QUEUE_URL"] = f.queue
	env["AWS_ENDPOINT_URL_SQS"] = stack.Endpoints.SSM
	for k, v := range o.env {
		env[k] = v
	}
	f.refresher = startFunction(t, "refresher", env)
	f.mapping, err = lambdarun.StartMapping(lambdarun.MappingConfig{SQS: f.sqs, QueueURL: f.queue, BatchSize: o.batch,
		MaximumConcurrency: o.instances, ReportBatchItemFailures: true, Log: t.Logf,
		Function: func() (*lambdarun.Runner, error) {
			f.workers.Add(1)
			return lambdarun.Start(lambdarun.Config{Bootstrap: bootstraps["worker"], FunctionName: "worker", Env: mergeEnv(env),
				Timeout: o.workerTimeout, Stdout: &lineWriter{to: logs}, Stderr: &lineWriter{to: logs}})
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.mapping.Close)
	return f
}

// inQueue is what the queue holds: waiting, and received but not deleted.
func (f *fanOut) inQueue(t *testing.T, url string) (visible, inFlight int) {
	t.Helper()
	out, err := f.sqs.GetQueueAttributes(context.Background(), &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url),
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameApproximateNumberOfMessages, sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible}})
	if err != nil {
		t.Fatal(err)
	}
	visible, _ = strconv.Atoi(out.Attributes[string(sqstypes.QueueAttributeNameApproximateNumberOfMessages)])
	inFlight, _ = strconv.Atoi(out.Attributes[string(sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible)])
	return visible, inFlight
}

// drained waits until the unit queue holds nothing, waiting or in flight:
// no message stays in flight forever.
func (f *fanOut) drained(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		visible, inFlight := f.inQueue(t, f.queue)
		if visible == 0 && inFlight == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v the unit queue still holds %d messages waiting and %d in flight", within, visible, inFlight)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (w *sinaWorld) dueNow(t *testing.T) int {
	t.Helper()
	n := 0
	if err := w.store.ScanDue(context.Background(), w.name, time.Now(), func(*store.DueItem) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// Fan-out mode with the real bootstraps: one tick queues each due shard
// once, however often it ticks meanwhile; several worker instances refresh
// every due connection exactly once; the same messages delivered again do
// nothing; the queue ends empty and nothing is dead-lettered.
func TestFanOutRefreshesEachDueConnectionOnce(t *testing.T) {
	const n = 400
	w := newSinaWorld(t, "fanout", 7*24*time.Hour)
	keys := w.seed(t, n)
	shards := map[string]bool{}
	for _, k := range keys {
		shards[w.store.DueShard(k)] = true
	}
	f := startFanOut(t, w, fanOutOptions{instances: 4, batch: 2, workerTimeout: 30 * time.Second, visibility: 40 * time.Second})
	w.emu.SetLatency(20 * time.Millisecond)

	var messages []string
	sum, err := tick(t, f.refresher)
	if err != nil || sum.Queued != len(shards) || sum.Refreshed != 0 {
		t.Fatalf("tick %+v %v; want %d units queued, nothing refreshed by the tick", sum, err, len(shards))
	}
	// Ticks while the units are queued or worked queue nothing more.
	for i := 0; i < 3; i++ {
		sum, err = tick(t, f.refresher)
		if err != nil || sum.Queued != 0 {
			t.Fatalf("tick during the work %+v %v; a unit was queued twice", sum, err)
		}
	}
	for deadline := time.Now().Add(60 * time.Second); w.dueNow(t) > 0; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still due", w.dueNow(t))
		}
	}
	f.drained(t, 30*time.Second)
	if calls, reuses := w.emu.RefreshCalls(), w.emu.RefreshReuses(); calls != n || reuses != 0 {
		t.Fatalf("%d provider refreshes, %d reuses; want exactly %d and 0", calls, reuses, n)
	}
	stats := f.mapping.Stats()
	if stats.Deleted != int64(len(shards)) || stats.FunctionErrors != 0 || stats.ItemFailures != 0 || f.workers.Load() < 2 {
		t.Fatalf("mapping %+v over %d instances; want %d messages deleted, no failure, several instances", stats, f.workers.Load(), len(shards))
	}
	for _, k := range keys {
		if c, _ := w.store.Get(context.Background(), k, true); !w.emu.RefreshUsable(c.RefreshToken) || c.LeaseOwner != "" {
			t.Fatalf("%s does not hold the newest grant", k)
		}
	}

	// SQS delivers at least once, and a message may turn up after its
	// claim was let go: a unit whose claim is not the message's does
	// nothing.
	for shard := range store.MaxDueShards {
		messages = append(messages, fmt.Sprintf(`{"provider":%q,"shard":%d,"token":"0123456789abcdef0123456789abcdef"}`, w.name, shard))
	}
	for _, body := range messages {
		if _, err := f.sqs.SendMessage(context.Background(), &sqs.SendMessageInput{QueueUrl: aws.String(f.queue), MessageBody: aws.String(body)}); err != nil {
			t.Fatal(err)
		}
	}
	f.drained(t, 30*time.Second)
	if f.mapping.Stats().Deleted != int64(len(shards)+store.MaxDueShards) {
		t.Fatalf("mapping %+v; every stale message must be deleted", f.mapping.Stats())
	}
	if sum, err = tick(t, f.refresher); err != nil || sum.Queued != 0 || w.emu.RefreshCalls() != n {
		t.Fatalf("after the work: tick %+v %v, provider refreshes %d", sum, err, w.emu.RefreshCalls())
	}
	if visible, inFlight := f.inQueue(t, f.dlq); visible+inFlight != 0 {
		t.Fatalf("%d messages dead-lettered", visible+inFlight)
	}
	t.Logf("fan-out: %d connections over %d units, %d invokes on %d instances", n, len(shards), stats.Invokes, f.workers.Load())
}

// settleFanOut lets every lease a killed holder left run out, then ticks
// until nothing is leased, every announcement is out and the unit queue is
// empty (a killed invocation's messages come back after the visibility
// timeout and are dropped or worked).
func settleFanOut(t *testing.T, w *sinaWorld, f *fanOut, visibility time.Duration) {
	t.Helper()
	bg := broker.DefaultBudget()
	time.Sleep(bg.Provider + bg.Commit + bg.Acquire + 2*bg.Skew)
	for settle := time.Now().Add(store.NoticeGrace + 2*visibility + 30*time.Second); ; {
		if _, err := tick(t, f.refresher); err != nil {
			t.Fatalf("calm tick: %v", err)
		}
		f.drained(t, visibility+20*time.Second)
		leased, notices := w.pending(t)
		if leased == 0 && notices == 0 {
			return
		}
		if time.Now().After(settle) {
			t.Fatalf("not settled: %d leases, %d unsent notices", leased, notices)
		}
		time.Sleep(2 * time.Second)
	}
}

// surfacePendingLosses sends, through a token function, one forced
// refresh for every active connection whose stored refresh token the
// provider has already spent, and returns how many it sent. A kill between
// the provider's answer and the commit leaves such a token stored; the loss
// shows at the connection's next refresh, which for a connection refreshed
// by force before it was due can come a refresh interval after the calm.
// This makes that refresh happen now, as a caller would on a rejected
// token: each must end in needs_reauth (409), and each spent token must
// look lost on the way, not overwritten (lostOnTheWay). A stale access
// token with a usable refresh token is left for checkNoSilentLoss to
// report: the refresher lost track of that connection.
func surfacePendingLosses(t *testing.T, w *sinaWorld, fn *lambdarun.Runner, keys []store.Key) int {
	t.Helper()
	sent := 0
	for _, k := range keys {
		c, err := w.store.Get(context.Background(), k, true)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if c.Status != store.StatusActive || w.emu.RefreshUsable(c.RefreshToken) {
			continue
		}
		if err := lostOnTheWay(w, c.RefreshToken); err != nil {
			t.Errorf("%s: %v", k, err)
		}
		sent++
		rq := request{method: "POST", path: "/connections/" + k.Provider + "/" + k.Connection + "/refresh", iam: true}
		out, err := fn.Invoke(context.Background(), rq.event())
		if err != nil {
			t.Fatalf("forced refresh of %s after the calm: %v", k, err)
		}
		var resp struct {
			StatusCode int `json:"statusCode"`
		}
		_ = json.Unmarshal(out, &resp)
		if resp.StatusCode != 409 {
			t.Fatalf("forced refresh of %s's spent grant after the calm answered %d, want 409 needs_reauth: %s", k, resp.StatusCode, out)
		}
	}
	return sent
}

// lostOnTheWay tells a stored refresh token whose rotation was lost on
// the way (nil) from an older grant written over a newer one. A lost
// answer was never stored, so its grant was never served and its refresh
// token never used; a grant that was stored and then overwritten would
// usually have been served, or refreshed again.
func lostOnTheWay(w *sinaWorld, refresh string) error {
	next, nextAccess, ok := w.emu.Successor(refresh)
	switch {
	case !ok:
		return errors.New("its refresh token is spent, but the provider never traded it")
	case !w.emu.RefreshUsable(next):
		return errors.New("the grant its refresh token was traded for was refreshed again: an older grant was stored over a newer one")
	}
	if _, served := w.served.Load(nextAccess); served {
		return errors.New("the grant its refresh token was traded for was served to a caller, so it had been stored: an older grant was written over it")
	}
	return nil
}

// A grant rotated at the provider whose answer never reached the table (a
// kill between the provider's answer and the commit) is stored active and
// not yet due. It is not silent: the next refresh presents the spent
// refresh token and the connection ends in needs_reauth with one event.
// Here the rotation is made directly at the emulator; the test pins that
// end and the helper the chaos runs use to reach it.
func TestSpentGrantEndsVisiblyAtItsNextRefresh(t *testing.T) {
	w := newSinaWorld(t, "spent", time.Hour)
	keys := w.seed(t, 3)
	sink := w.reauthEvents(t)
	fn := startFunction(t, "token", w.env())
	spent, err := w.store.Get(context.Background(), keys[1], true)
	if err != nil {
		t.Fatal(err)
	}
	rotate := func(refresh string) {
		t.Helper()
		resp, err := http.PostForm(w.url+"/oauth2/access_token", url.Values{"grant_type": {"refresh_token"}, "client_id": {devstack.SinaClientID},
			"client_secret": {devstack.SinaSecret}, "refresh_token": {refresh}})
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || w.emu.RefreshUsable(refresh) {
			t.Fatalf("rotation at the emulator: %d", resp.StatusCode)
		}
	}
	rotate(spent.RefreshToken)
	if err := lostOnTheWay(w, spent.RefreshToken); err != nil {
		t.Fatalf("a rotation lost on the way judged an overwrite: %v", err)
	}
	// A grant stored in no connection, rotated once: had its successor been
	// served (stored, then overwritten), or refreshed again, it is an
	// overwrite, not a loss on the way.
	_, other, _ := w.emu.IssueGrant()
	rotate(other)
	next, nextAccess, _ := w.emu.Successor(other)
	w.served.Store(nextAccess, true)
	if err := lostOnTheWay(w, other); err == nil {
		t.Fatal("a served successor not judged an overwrite")
	}
	w.served.Delete(nextAccess)
	rotate(next)
	if err := lostOnTheWay(w, other); err == nil {
		t.Fatal("a successor refreshed again not judged an overwrite")
	}
	if n := surfacePendingLosses(t, w, fn, keys); n != 1 {
		t.Fatalf("%d forced refreshes, want 1 (only the spent grant)", n)
	}
	evs, err := sink.Receive(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if lost := checkNoSilentLoss(t, w, keys, evs, 1); lost != 1 {
		t.Fatalf("%d grants lost, want 1", lost)
	}
	if w.emu.RefreshCalls() != 3 {
		t.Fatalf("%d rotations, want only the three made here", w.emu.RefreshCalls())
	}
}

// checkNoSilentLoss: every connection is active with the provider's
// newest grant and no needs-reauthorization event, or needs
// re-authorization with at least one and at most maxEvents; every
// refresh-token reuse is one such visible loss. It returns the losses.
// maxEvents is 2 where a kill can fall between publishing an event and
// deleting its notice (delivery is then at least once), 1 elsewhere.
func checkNoSilentLoss(t *testing.T, w *sinaWorld, keys []store.Key, sinkEvents []map[string]any, maxEvents int) int {
	t.Helper()
	events := map[string]int{}
	for _, ev := range sinkEvents {
		d, _ := ev["detail"].(map[string]any)
		events[fmt.Sprint(d["connection"])]++
	}
	lost := 0
	for _, k := range keys {
		c, err := w.store.Get(context.Background(), k, true)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		switch c.Status {
		case store.StatusActive:
			if access, refresh := w.emu.ValidAccess(c.AccessToken), w.emu.RefreshUsable(c.RefreshToken); !access || !refresh {
				now := time.Now()
				t.Errorf("%s is active but does not hold the newest grant: access token valid %v, refresh token usable %v; "+
					"expires in %v, refresh due in %v, refreshed %v ago, attempts %d, last error %q, lease %q until %v",
					k, access, refresh, c.ExpiresAt.Sub(now).Round(time.Millisecond), c.RefreshAt.Sub(now).Round(time.Millisecond),
					now.Sub(c.RefreshedAt).Round(time.Millisecond), c.Attempts, c.LastError, c.LeaseOwner, c.LeaseUntil)
			}
			if events[k.Connection] != 0 {
				t.Errorf("%s is active yet was announced as needing re-authorization", k)
			}
		case store.StatusNeedsReauth:
			lost++
			// Never none. Where a worker can be killed between publishing
			// the event and deleting its notice, the tick sends it again.
			if events[k.Connection] < 1 || events[k.Connection] > maxEvents {
				t.Errorf("%s needs re-authorization with %d events, want 1 to %d", k, events[k.Connection], maxEvents)
			}
		default:
			t.Errorf("%s ended %s", k, c.Status)
		}
	}
	if reuses := w.emu.RefreshReuses(); reuses != lost {
		t.Errorf("%d refresh-token reuses for %d lost grants: a reuse that did not end its connection visibly, or a loss without one", reuses, lost)
	}
	return lost
}

// A worker SIGKILLed in the middle of its batch, with provider calls
// answered (the grants rotated) but not yet committed: its units are not
// queued again while its claim may still be worked, then are within a few
// ticks; the connections it had not reached are refreshed once, the ones
// whose answer died with it end in needs_reauth with one event each, and
// the killed messages do not stay in flight.
func TestFanOutKilledWorkerLosesNothingSilently(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a killed worker's deadline and the visibility timeout")
	}
	const n = 12
	w := newSinaWorld(t, "fankill", 7*24*time.Hour)
	keys := w.seed(t, n)
	sink := w.reauthEvents(t)
	workerTimeout, visibility := 22*time.Second, 25*time.Second
	f := startFanOut(t, w, fanOutOptions{instances: 2, batch: 10, workerTimeout: workerTimeout, visibility: visibility,
		env: map[string]string{"REFRESH_CONCURRENCY": "4", "PROVIDER_CONCURRENCY": "4"}})
	// The provider rotates each grant at once and answers 3 s later.
	w.emu.Inject("/oauth2/access_token", emulator.Fault{After: 3 * time.Second}, n)
	sum, err := tick(t, f.refresher)
	if err != nil || sum.Queued == 0 {
		t.Fatalf("tick %+v %v", sum, err)
	}
	units := sum.Queued
	for deadline := time.Now().Add(20 * time.Second); w.emu.Calls("/oauth2/access_token") == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no worker reached the provider")
		}
	}
	time.Sleep(200 * time.Millisecond)
	killed := f.mapping.KillBusy()
	killedAt := time.Now()
	rotated := w.emu.Calls("/oauth2/access_token")
	if killed == 0 {
		t.Fatal("no worker was busy to kill")
	}
	// While the dead worker's claims may still be worked, ticks queue
	// nothing; once they run out, the next tick queues the units again.
	// Either path brings the units back: the next tick once the claim ran
	// out, or SQS redelivering the killed message after its visibility
	// timeout (its token still matches the claim). Whichever comes first.
	var requeued time.Duration
	redelivered := false
	for {
		sum, err := tick(t, f.refresher)
		if err != nil {
			t.Fatal(err)
		}
		if sum.Queued > 0 {
			requeued = time.Since(killedAt)
			break
		}
		if time.Since(killedAt) > visibility && w.dueNow(t) == 0 {
			redelivered = true
			break
		}
		if time.Since(killedAt) > workerTimeout+2*time.Minute {
			t.Fatal("the killed worker's units were never queued again")
		}
		time.Sleep(time.Second)
	}
	// The claim runs out at the worker's deadline plus the skew; then the
	// next tick (one a second here) queues it. 15 s of slack for a busy
	// machine, far less than a real tick's minute.
	if !redelivered && (requeued < time.Second || requeued > workerTimeout+broker.DefaultBudget().Skew+15*time.Second) {
		t.Errorf("units queued again %v after the kill; want after a worker's deadline (%v) and within a few ticks", requeued, workerTimeout)
	}
	settleFanOut(t, w, f, visibility)
	evs, err := sink.Receive(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	lost := checkNoSilentLoss(t, w, keys, evs, 2)
	if lost != rotated {
		t.Errorf("%d grants lost, want exactly the %d whose rotation the kill cut off", lost, rotated)
	}
	if got := w.emu.RefreshCalls(); got != n {
		t.Errorf("%d provider refreshes granted, want %d: exactly one per connection (a lost grant's second try is a reuse)", got, n)
	}
	if visible, inFlight := f.inQueue(t, f.dlq); visible+inFlight != 0 {
		t.Errorf("%d messages dead-lettered", visible+inFlight)
	}
	t.Logf("killed %d worker(s) of %d units with %d rotations in flight; units queued again %v after the kill; mapping %+v",
		killed, units, rotated, requeued.Round(time.Second), f.mapping.Stats())
}

// The chaos run in fan-out mode: token requests, ticks every second and
// workers over single-use grants, while token sandboxes and workers are
// SIGKILLed at random, workers mid-batch. Every loss is a kill between a
// provider's answer and the commit and ends visibly; no message stays in
// flight.
func TestFanOutChaosKilledWorkersNeverLoseAGrantSilently(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos run takes about a minute")
	}
	const conns, callers = 16, 3
	// 20-second tokens are due 10 s after each refresh: every unit comes
	// back every few ticks, and forced refreshes race the workers.
	w := newSinaWorld(t, "fanchaos", 20*time.Second)
	w.emu.SetLatency(200 * time.Millisecond)
	keys := w.seed(t, conns)
	sink := w.reauthEvents(t)
	visibility := 25 * time.Second
	// Two shards: a connection moves there at its first refresh, so units
	// are large enough to be killed in the middle.
	f := startFanOut(t, w, fanOutOptions{instances: 3, batch: 2, workerTimeout: 24 * time.Second, visibility: visibility,
		env: map[string]string{"DUE_SHARDS": "2"}})
	tokenFns := []*lambdarun.Runner{startFunction(t, "token", w.env()), startFunction(t, "token", w.env())}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var served, ticks, kills, workerKills atomic.Int64
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
				if err != nil {
					continue // a killed sandbox
				}
				var resp struct {
					StatusCode int    `json:"statusCode"`
					Body       string `json:"body"`
				}
				_ = json.Unmarshal(out, &resp)
				switch resp.StatusCode {
				case 200:
					served.Add(1)
					w.recordServed(resp.Body)
				case 409, 503:
				default:
					t.Errorf("token answered %d: %s", resp.StatusCode, out)
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
			if _, err := tick(t, f.refresher); err == nil {
				ticks.Add(1)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			// Workers run in short bursts: look often, kill now and then.
			if rand.IntN(15) == 0 {
				if n := f.mapping.KillBusy(); n > 0 {
					workerKills.Add(int64(n))
					kills.Add(int64(n))
				}
			}
			if rand.IntN(20) != 0 {
				continue
			}
			if pid := tokenFns[rand.IntN(len(tokenFns))].PID(); pid > 0 && syscall.Kill(-pid, syscall.SIGKILL) == nil {
				kills.Add(1)
			}
		}
	}()
	time.Sleep(20 * time.Second)
	close(stop)
	wg.Wait()
	settleFanOut(t, w, f, visibility)
	surfaced := surfacePendingLosses(t, w, tokenFns[0], keys)
	evs, err := sink.Receive(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	lost := checkNoSilentLoss(t, w, keys, evs, 2)
	if surfaced > int(kills.Load()) {
		t.Errorf("%d spent grants found after the calm, more than the %d kills that could have lost an answer", surfaced, kills.Load())
	}
	if workerKills.Load() == 0 || ticks.Load() == 0 || served.Load() == 0 {
		t.Fatalf("the run did nothing: %d worker kills, %d ticks, %d tokens served", workerKills.Load(), ticks.Load(), served.Load())
	}
	visible, inFlight := f.inQueue(t, f.dlq)
	t.Logf("fan-out chaos: %d kills (%d workers mid-batch), %d ticks, %d tokens served, %d provider refreshes, %d grants lost visibly (%d surfaced by a forced refresh after the calm), %d dead-lettered; mapping %+v",
		kills.Load(), workerKills.Load(), ticks.Load(), served.Load(), w.emu.RefreshCalls(), lost, surfaced, visible+inFlight, f.mapping.Stats())
}

// A deployment outside HOME_REGION, with the real bootstraps: it serves a
// token still valid, answers 503 naming the home region for one that
// needs a refresh, and its refresher does nothing; the provider sees no
// call from it.
func TestReplicaRegionNeverCallsAProviderEndToEnd(t *testing.T) {
	w := newSinaWorld(t, "replica", 7*24*time.Hour)
	k := w.seed(t, 1)[0]
	env := w.env()
	env["HOME_REGION"] = "eu-west-1" // the functions run in us-east-1
	tokenFn := startFunction(t, "token", env)
	refresher := startFunction(t, "refresher", env)
	expectStatus(t, tokenOf(t, tokenFn, k.Provider, k.Connection, "min_ttl=0"), 200, "")
	ageConnection(t, w.table, k.Provider, k.Connection, 30*time.Second)
	resp := tokenOf(t, tokenFn, k.Provider, k.Connection, "min_ttl=600")
	expectStatus(t, resp, 503, "provider_unavailable")
	if msg, _ := resp.json["message"].(string); !strings.Contains(msg, "eu-west-1") {
		t.Fatalf("the 503 does not name the home region: %s", resp.Body)
	}
	sum, err := tick(t, refresher)
	if err != nil || !sum.NotHome || sum.Due != 0 {
		t.Fatalf("replica tick %+v %v", sum, err)
	}
	if calls := w.emu.Calls("/oauth2/access_token"); calls != 0 {
		t.Fatalf("the replica made %d provider calls, want 0", calls)
	}
	c, err := w.store.Get(context.Background(), k, true)
	if err != nil || c.LeaseOwner != "" || c.LastError != "" {
		t.Fatalf("the replica wrote to the connection: lease %q, last error %q, %v", c.LeaseOwner, c.LastError, err)
	}
}
