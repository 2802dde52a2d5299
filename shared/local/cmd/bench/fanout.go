package main

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/local/samtemplate"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// fanOutShards is the bench's DUE_SHARDS: as many units as the most
// instances measured, so each instance has a unit to work.
const fanOutShards = 64

// fanOutPerUnit is each unit's share of the backlog: deep enough (20
// rounds of REFRESH_CONCURRENCY 8) that a unit's own overhead (its claim,
// its query, its message) and its last partial round do not hide the
// refresh rate, and the same in every run so the runs compare.
const fanOutPerUnit = 160

// fanOutRun is one measured fan-out configuration.
type fanOutRun struct {
	instances  int
	concurrent int // REFRESH_CONCURRENCY of each instance
	batch      int // the mapping's batch size (1 when zero)
	backlog    int
	elapsed    time.Duration
	load       string // the machine's 1-minute load average when the run began
	cpu        map[string]float64
	invokes    int64
	ticks      int
	calls      int
	reuses     int
	itemBytes  int // the largest refreshed connection item, as DynamoDB bills it
}

func (r fanOutRun) rate() float64 { return float64(r.backlog) / r.elapsed.Seconds() }
func (r fanOutRun) bound() float64 {
	return float64(r.instances*r.concurrent) / capacityLatency.Seconds()
}
func (r fanOutRun) share() float64 { return r.rate() / r.bound() }

// cores is how many CPUs the component kept busy on average during the run.
func (r fanOutRun) cores(component string) float64 { return r.cpu[component] / r.elapsed.Seconds() }

// cpuBusy is the machine's CPU busy share during the run.
func (r fanOutRun) cpuBusy() float64 { return r.cores("machine") / float64(runtime.NumCPU()) }

// cpuBusyTicks reads the machine's busy jiffies (all but idle and
// iowait) from /proc/stat.
func cpuBusyTicks() (busy float64) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	fields := strings.Fields(strings.SplitN(string(raw), "\n", 2)[0])
	for i, f := range fields[1:] {
		if i != 3 && i != 4 { // idle, iowait
			v, _ := strconv.ParseFloat(f, 64)
			busy += v
		}
	}
	return busy
}

// benchFanOut measures fan-out mode with the real bootstraps: the
// refresher queues one unit per due shard on SQS (moto), lambdarun's event
// source mapping runs 1, 4, 16 and 64 worker processes, and each
// refreshes the due connections of its units through the provider
// answering after 100 ms. Every run has the same backlog, and counts the
// CPU each part of the machine used; a probe of DynamoDB Local's write
// rate names the bound. Two more runs give one instance the template's
// batch size at REFRESH_CONCURRENCY 8 and 32, for what one instance
// reaches and what bounds it.
func benchFanOut(ctx context.Context, e *benchEnv, rep *report, quick bool) error {
	tpl, err := samtemplate.Load(filepath.Join(e.root, "template.yaml"))
	if err != nil {
		return err
	}
	p, ok := tpl.Parameters["RefreshWorkerBatchSize"]
	if !ok {
		return fmt.Errorf("template.yaml: parameter RefreshWorkerBatchSize is missing")
	}
	batch, err := strconv.Atoi(p.Default)
	if err != nil {
		return fmt.Errorf("template.yaml: RefreshWorkerBatchSize default %q: %w", p.Default, err)
	}
	e.stack.Sina.SetLatency(capacityLatency)
	defer e.stack.Sina.SetLatency(0)
	counts := []int{1, 4, 16, 64}
	perUnit := fanOutPerUnit
	if quick {
		counts, perUnit = []int{1, 4}, 16
	}
	const perInstance = 8
	var runs []fanOutRun
	for _, n := range counts {
		r := fanOutRun{instances: n, concurrent: perInstance, batch: 1, backlog: fanOutShards * perUnit}
		if err := runFanOut(ctx, e, &r); err != nil {
			return err
		}
		runs = append(runs, r)
	}
	var single []fanOutRun
	for _, c := range []int{perInstance, 32} {
		r := fanOutRun{instances: 1, concurrent: c, batch: batch, backlog: fanOutShards * perUnit}
		if err := runFanOut(ctx, e, &r); err != nil {
			return err
		}
		single = append(single, r)
	}
	var probes []writeProbe
	for _, conc := range []int{perInstance, 32, 64} {
		pr, err := probeWrites(ctx, e, conc, 5*time.Second)
		if err != nil {
			return fmt.Errorf("DynamoDB Local write probe: %w", err)
		}
		fmt.Fprintf(os.Stderr, "bench: DynamoDB Local, %d writers: %.0f writes/s, %v each\n", conc, pr.rate, pr.latency.Round(100*time.Microsecond))
		probes = append(probes, pr)
	}
	first := runs[0]
	row := func(b *strings.Builder, r fanOutRun, scaling, check string) {
		fmt.Fprintf(b, "| %d | %d | %d | %s | **%.0f/s** | %.0f/s | %.0f%% | %s | %s | %.0f%% | %s | %d | %d |\n", r.instances, r.concurrent, r.batch,
			r.elapsed.Round(100*time.Millisecond), r.rate(), r.bound(), 100*r.share(), scaling, check, 100*r.cpuBusy(), r.load, r.invokes, r.ticks)
	}
	var rows, singleRows strings.Builder
	for i, r := range runs {
		scaling := "—"
		if i > 0 {
			prev := runs[i-1]
			scaling = fmt.Sprintf("%.2f", (r.rate()/prev.rate())/(float64(r.instances)/float64(prev.instances)))
		}
		// The formula's R_lambda for this row (d = 1: each run is shorter
		// than a worker's working time), with e the one-instance share.
		formula := r.bound() * first.share()
		row(&rows, r, scaling, fmt.Sprintf("%.0f/s (%.2f)", formula, r.rate()/formula))
	}
	for _, r := range single {
		row(&singleRows, r, "—", "—")
	}
	var cpuRows strings.Builder
	for _, r := range append(append([]fanOutRun{}, runs...), single...) {
		fmt.Fprintf(&cpuRows, "| %d × %d, batch %d | %.0f/s |", r.instances, r.concurrent, r.batch, r.rate())
		for _, c := range cpuComponents {
			fmt.Fprintf(&cpuRows, " %.2f |", r.cores(c))
		}
		fmt.Fprintf(&cpuRows, " **%.2f** | %.1f ms |\n", r.cores("machine"), 1000*(r.cpu["machine"]-r.cpu[cpuOther])/float64(r.backlog))
	}
	var probeRows strings.Builder
	for _, pr := range probes {
		fmt.Fprintf(&probeRows, "| %d | %.0f/s | %.1f ms | %.0f/s |\n", pr.conc, pr.rate, float64(pr.latency)/float64(time.Millisecond), pr.rate/2)
	}
	header := "| worker instances N | c | batch | elapsed | rate | provider-bound | of bound | scaling per ×4 step | formula (measured ÷ formula) | machine CPU busy | load average at start | invokes | ticks |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
	rep.add("7. Fan-out: refresh throughput over worker instances", fmt.Sprintf(`
Fan-out mode (RefreshFanOut=true) with the real bootstraps: the refresher
queues one message per due shard (DUE_SHARDS=%d) on an SQS queue in moto,
and lambdarun's event source mapping runs N worker processes (each with
REFRESH_CONCURRENCY=c), as Lambda would run N instances. The provider
answers every refresh after %v, so N instances can do at most N × c /
%v refreshes a second (the provider-bound rate). Every run has the same
backlog (%d due connections, %d per unit); the refresher ticks every
minute, as on AWS, and the time runs from the first tick to the last
provider answer. Scaling compares each row with the one
before: 1.00 is perfect scaling of the rate with the instances. The
formula column is the capacity table's R_lambda = N × c / latency × e for
the row, with e the one-instance row's share of its bound, and in
parentheses measured ÷ formula.

Over instances (batch size 1, so that 64 instances have 64 units to work):

%s%s
One instance at the template's batch size (RefreshWorkerBatchSize %d: the
units of a batch share the instance's slots, so one unit's last round
overlaps the next one's):

%s%s
Every refresh was exactly one provider call, with no refresh-token reuse
(checked per run).

CPU each part used during each run, in cores (CPU-seconds per second;
the machine has %d), counted from /proc, and the CPU the stand-in
deployment spent per refresh (everything but the rest of the machine):

| run | rate |%s machine | CPU per refresh |
|---|---|%s---|---|
%s
DynamoDB Local's own write rate, probed after the runs: W writers, each
on its own item, send conditional UpdateItems shaped like a lease (the
item moves in the due index and comes back) for 5 s. A refresh makes two
such writes (the lease and the commit), so half the write rate is the most
refreshes a second DynamoDB Local can take:

| writers | writes/s | mean round trip | refreshes/s it allows |
|---|---|---|---|
%s
What bounds it here: %s

Within one instance: %s

On Lambda every instance has its own CPU, and the shared parts are
DynamoDB's and SQS's (the capacity table below takes their published
limits).
`, fanOutShards, capacityLatency, capacityLatency, first.backlog, first.backlog/fanOutShards, header, rows.String(),
		batch, header, singleRows.String(),
		runtime.NumCPU(), " "+strings.Join(cpuComponents, " | ")+" |", strings.Repeat("---|", len(cpuComponents)), cpuRows.String(),
		probeRows.String(), fanOutBound(runs, probes[len(probes)-1]), instanceBound(single[0], single[1], probes)))

	// The published table: computed from the formula, not measured (no
	// machine here has 1000 cores), with e measured by the one-instance
	// run at the template's batch size.
	rep.addSub("Capacity of fan-out mode (computed, checked against the runs above)", capacityTable(single[0].share(), first.share(), runs))
	return nil
}

// fanOutBound says, from the runs, where this machine became the bound:
// the first ×4 step that scaled by less than 0.8, with what the CPU
// counters and the write probe show at that step.
func fanOutBound(runs []fanOutRun, ceiling writeProbe) string {
	for i := 1; i < len(runs); i++ {
		prev, r := runs[i-1], runs[i]
		eff := (r.rate() / prev.rate()) / (float64(r.instances) / float64(prev.instances))
		if eff >= 0.8 {
			continue
		}
		best := slices.MaxFunc(runs, func(a, b fanOutRun) int { return cmp.Compare(a.rate(), b.rate()) })
		perRefresh := (r.cpu["machine"] - r.cpu[cpuOther]) / float64(r.backlog) // CPU-seconds per refresh
		ceilingCPU := float64(runtime.NumCPU()) / perRefresh
		top, _ := topCPU(r, cpuWorkers, cpuDynamo)
		return fmt.Sprintf("up to %d instances the rate follows the instances (scaling ≥ 0.8 per ×4 step); the step to %d scaled by %.2f, "+
			"and from there the rate stays near %.0f/s however many instances ask (%.0f/s at %d). The counters name the bound: at %d instances "+
			"the stand-in deployment spent %.1f ms of CPU per refresh (CPU table), so the machine's %d cores allow at most %.0f refreshes a second, "+
			"and the run reached %.0f%% of that with the cores %.0f%% busy (%s %.2f cores, the workers %.2f, DynamoDB Local %.2f). "+
			"DynamoDB Local's write rate alone would allow %.0f/s (probe), and the provider %.0f/s. So this machine's CPU, shared by the "+
			"stand-ins and every worker process, is the bound from %d instances on, not the design: on Lambda each instance has its own CPU "+
			"and DynamoDB spreads a table's writes over partitions.",
			prev.instances, r.instances, eff, best.rate(), r.rate(), r.instances, r.instances,
			1000*perRefresh, runtime.NumCPU(), ceilingCPU, 100*r.rate()/ceilingCPU, 100*r.cpuBusy(), top, r.cores(top), r.cores(cpuWorkers), r.cores(cpuDynamo),
			ceiling.rate/2, r.bound(), r.instances)
	}
	return "nothing on this machine: every ×4 step scaled by 0.8 or more."
}

// topCPU names the two parts of the deployment, other than those left
// out, that used the most CPU in r.
func topCPU(r fanOutRun, leftOut ...string) (string, string) {
	var names []string
	for _, c := range cpuComponents {
		if c != cpuOther && !slices.Contains(leftOut, c) {
			names = append(names, c)
		}
	}
	sort.Slice(names, func(i, j int) bool { return r.cpu[names[i]] > r.cpu[names[j]] })
	return names[0], names[1]
}

// instanceBound says what one instance reaches at REFRESH_CONCURRENCY 8
// and what bounds it at 32, from the time each refresh took beyond the
// provider's answer and the probe's write round trips.
func instanceBound(at8, at32 fanOutRun, probes []writeProbe) string {
	beyond := func(r fanOutRun) float64 { // ms per refresh beyond the provider's answer
		return 1000*float64(r.concurrent)/r.rate() - float64(capacityLatency)/float64(time.Millisecond)
	}
	roundTrip := func(conc int) float64 {
		for _, p := range probes {
			if p.conc == conc {
				return float64(p.latency) / float64(time.Millisecond)
			}
		}
		return 0
	}
	lat := float64(capacityLatency) / float64(time.Millisecond)
	s := fmt.Sprintf("one worker at REFRESH_CONCURRENCY 8 reached %.0f%% of its provider-bound rate (%.0f/s of %.0f/s). "+
		"A slot holds a refresh from its lease to its commit, so its share of the bound is latency / (latency + t), t being the time a refresh "+
		"spends outside the provider's answer: here t = %.1f ms, mostly its two DynamoDB round trips (lease, commit; the probe's 8 writers, "+
		"more than 8 refreshes keep in flight, take %.1f ms each), and 90%% needs t ≤ %.1f ms. ",
		100*at8.share(), at8.rate(), at8.bound(), beyond(at8), roundTrip(8), lat/0.9-lat)
	s += fmt.Sprintf("At 32 it reached %.0f%% (%.0f/s of %.0f/s), %.1f ms beyond the answer per refresh, against 2 × %.1f ms for the writes at 32 writers; "+
		"the machine's cores were %.0f%% busy, the worker itself %.2f cores and DynamoDB Local %.2f. ",
		100*at32.share(), at32.rate(), at32.bound(), beyond(at32), roundTrip(32), 100*at32.cpuBusy(), at32.cores(cpuWorkers), at32.cores(cpuDynamo))
	if 2*at32.rate() >= 0.7*probes[len(probes)-1].rate {
		s += fmt.Sprintf("What bounds it at 32 is DynamoDB Local's write rate: %.0f writes/s, against the probe's %.0f at %d writers. ",
			2*at32.rate(), probes[len(probes)-1].rate, probes[len(probes)-1].conc)
	} else {
		s += "What bounds it at 32 is waiting on DynamoDB Local's round trips, which grow with the writers in flight, not the worker's CPU. "
	}
	return s + "Against DynamoDB itself, a write is a few milliseconds at any concurrency, so an instance on Lambda keeps nearer its bound; " +
		"on Lambda, give the worker more memory (CPU grows with it) before more concurrency."
}

// runFanOut seeds r.backlog due connections over the bench's shards and
// runs fan-out ticks until the workers have refreshed them all.
func runFanOut(ctx context.Context, e *benchEnv, r *fanOutRun) error {
	table, err := e.table(ctx, "bench-fanout")
	if err != nil {
		return err
	}
	st := &store.Store{DB: e.db, Table: table, Ring: e.ring, Shards: fanOutShards}
	if err := seedDue(ctx, e, st, r.backlog); err != nil {
		return err
	}
	client := sqs.NewFromConfig(localaws.Config(), func(o *sqs.Options) { o.BaseEndpoint = aws.String(e.stack.Endpoints.SSM) })
	queueURL, _, queueARN, err := lambdarun.NewQueue(ctx, client, table, 360*time.Second, 5)
	if err != nil {
		return err
	}
	env := map[string]string{}
	for k, v := range e.stack.FunctionEnv {
		env[k] = v
	}
	for k, v := range map[string]string{"TABLE_NAME": table, "REFRESH_QUEUE_URL": queueURL, "AWS_ENDPOINT_URL_SQS": e.stack.Endpoints.SSM,
		"DUE_SHARDS": strconv.Itoa(fanOutShards), "REFRESH_CONCURRENCY": strconv.Itoa(r.concurrent),
		"PROVIDER_CONCURRENCY": strconv.Itoa(r.concurrent), "LOG_LEVEL": "warn"} {
		env[k] = v
	}
	refresher, err := lambdarun.Start(lambdarun.Config{Bootstrap: e.bootstraps["refresher"], FunctionName: "refresher", Env: env, Timeout: 55 * time.Second})
	if err != nil {
		return err
	}
	defer refresher.Close()
	mapping, err := lambdarun.StartMapping(lambdarun.MappingConfig{SQS: client, QueueURL: queueURL, QueueARN: queueARN, BatchSize: max(1, r.batch),
		MaximumConcurrency: r.instances, ReportBatchItemFailures: true,
		Function: func() (*lambdarun.Runner, error) {
			return lambdarun.Start(lambdarun.Config{Bootstrap: e.bootstraps["worker"], FunctionName: "worker", Env: env, Timeout: 60 * time.Second})
		}})
	if err != nil {
		return err
	}
	defer mapping.Close()
	calls, reuses := e.stack.Sina.RefreshCalls(), e.stack.Sina.RefreshReuses()
	tickEvent := []byte(`{"source":"aws.events","detail-type":"Scheduled Event","detail":{}}`)
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		r.load = strings.Fields(string(raw))[0]
	}
	cpu0 := sampleCPU(e.bootstraps)
	t0 := time.Now()
	nextTick := t0
	for e.stack.Sina.RefreshCalls()-calls < r.backlog {
		if time.Now().After(t0.Add(10 * time.Minute)) {
			return fmt.Errorf("fan-out with %d instances: %d of %d refreshed after 10 minutes", r.instances, e.stack.Sina.RefreshCalls()-calls, r.backlog)
		}
		// The tick is the clock: it queues what is due and not queued,
		// every minute as on AWS. The first tick queues the whole backlog;
		// a faster clock would only add its probes of every due shard to
		// DynamoDB Local's load.
		if time.Now().After(nextTick) {
			if _, err := refresher.Invoke(ctx, tickEvent); err != nil {
				return fmt.Errorf("tick: %w", err)
			}
			r.ticks++
			nextTick = time.Now().Add(time.Minute)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.elapsed = time.Since(t0)
	r.cpu = cpuUse(cpu0, sampleCPU(e.bootstraps))
	r.calls, r.reuses = e.stack.Sina.RefreshCalls()-calls, e.stack.Sina.RefreshReuses()-reuses
	r.invokes = mapping.Stats().Invokes
	if r.itemBytes, err = connectionItemBytes(ctx, e, table); err != nil {
		return err
	}
	if r.calls != r.backlog || r.reuses != 0 {
		return fmt.Errorf("fan-out with %d instances: %d provider refreshes for %d connections, %d reuses", r.instances, r.calls, r.backlog, r.reuses)
	}
	fmt.Fprintf(os.Stderr, "bench: fan-out %d instances × %d: %d in %v (%.0f/s), CPU busy %.0f%%, cores: workers %.2f DynamoDB Local %.2f moto %.2f bench %.2f other %.2f\n",
		r.instances, r.concurrent, r.backlog, r.elapsed.Round(time.Millisecond), r.rate(), 100*r.cpuBusy(),
		r.cores(cpuWorkers), r.cores(cpuDynamo), r.cores(cpuMoto), r.cores(cpuBench), r.cores(cpuOther))
	return nil
}

// capacityTable is the published capacity of fan-out mode: connections one
// deployment keeps fresh at 1 h and 2 h lifetimes for worker concurrency
// 10, 100 and 1000, with the limit that binds each row.
func capacityTable(eff, effBatch1 float64, runs []fanOutRun) string {
	const (
		perWorker = 8                  // REFRESH_CONCURRENCY
		working   = 41.0 / 60.0        // duty: a 60 s worker starts refreshes for 41 s of each 60 s tick under a backlog
		ddbWRU    = 40000.0            // DynamoDB on-demand default per-table write quota (write request units/s)
		lambdaMax = 1000               // ESM MaximumConcurrency ceiling, and the default account concurrency
		every1h   = 54.0 * 60          // L − lead for 1 h tokens (lead 6 min), seconds
		every2h   = 108.0 * 60         // L − lead for 2 h tokens (lead 12 min)
		latency   = 0.1                // provider answer, seconds
		units     = store.MaxDueShards // units per provider: at most this many messages work one provider at once
	)
	// Writes per refresh: the lease and the commit (section 3 counts them),
	// each billed a write request unit per KB of the item.
	itemKB := math.Ceil(float64(runs[0].itemBytes) / 1024)
	perRefr := 2 * itemKB
	ddbBound := ddbWRU / perRefr
	var b strings.Builder
	fmt.Fprintf(&b, `
Computed, not measured: R = min(R_lambda, R_dynamodb, R_sqs, R_provider)
refreshes a second, and a deployment keeps N(L) = R × (L − lead(L))
connections fresh (L − lead = 54 min at 1 h, 108 min at 2 h, measured in
section 6).

- R_lambda = W × c / latency × e × d: W worker instances
  (RefreshWorkerMaxConcurrency), c = %d refreshes each (REFRESH_CONCURRENCY,
  with PROVIDER_CONCURRENCY at least as high: a worker's batch may hold
  one provider only), a %v provider, e = %.2f the one-instance share of
  its provider-bound rate measured above (one worker process, the same
  refresh code with a CPU to share), d = 41/60 the share of each minute a
  60 s worker starts refreshes under a backlog (it stops 19 s before its
  deadline, section 6's measured stop margin, and its unit is queued again
  at the next tick).
- R_dynamodb = %.0f write request units/s (the default per-table quota of
  an on-demand table; AWS raises it on request) / %.0f units per refresh =
  %.0f/s: two writes per refresh (the lease and the commit, counted in
  section 3), each billed %.0f unit(s) for a connection item of up to %d
  bytes (the largest refreshed item of these runs, sized by DynamoDB's
  rules: a unit per started KB).
- R_sqs: one message per unit per tick, at most %d units per provider a
  minute: a standard queue's throughput never binds.
- R_provider: the provider's own rate limit per app, a ceiling on its
  share whatever the broker does (e.g. WeChat stable_token 10,000 a minute).
- Parallelism needs units: W instances work at once only with at least W
  units queued, and each provider has at most %d (its due shards). With
  RefreshWorkerBatchSize 1, W = 100 needs 2 providers with a backlog and
  W = 1000 needs 16; fewer providers reach the same R with larger c
  (RefreshConcurrency up to 64) on fewer instances.

| worker concurrency W | R_lambda | R_dynamodb | binds | R | N at 1 h | N at 2 h |
|---|---|---|---|---|---|---|
`, perWorker, time.Duration(latency*float64(time.Second)), eff, ddbWRU, perRefr, ddbBound, itemKB, runs[0].itemBytes, units, units)
	for _, w := range []int{10, 100, 1000} {
		rl := float64(w) * perWorker / latency * eff * working
		r, binds := rl, "Lambda concurrency (W × c)"
		if ddbBound < r {
			r, binds = ddbBound, "DynamoDB write quota"
		}
		if w >= lambdaMax {
			binds += "; W = 1000 is the mapping's MaximumConcurrency ceiling and the default account concurrency (raise it for the other functions)"
		}
		fmt.Fprintf(&b, "| %d | %.0f/s | %.0f/s | %s | %.0f/s | **%s** | **%s** |\n", w, rl, ddbBound, binds, r, count(r*every1h), count(r*every2h))
	}
	// The check: the formula's R_lambda against each measured row (d = 1
	// there: every run is shorter than a worker's working time).
	var checks []string
	for _, r := range runs[1:] {
		checks = append(checks, fmt.Sprintf("%.2f at W = %d", r.rate()/(r.bound()*effBatch1), r.instances))
	}
	fmt.Fprintf(&b, `
Checked against the measured runs above: R_lambda (with d = 1, each run
being shorter than a worker's working time, and e the batch-1 one-instance
share, as those runs are batch 1) predicts each row's rate, and measured
÷ formula is %s. Where it falls below 0.8 the machine is the bound, not
the formula: its two cores, shared by every worker process and the
stand-ins ("What bounds it here" above), where on Lambda each instance
has a CPU of its own and DynamoDB's limit is R_dynamodb below.
`, strings.Join(checks, ", "))
	top := math.Min(float64(1000)*perWorker/latency*eff*working, ddbBound)
	fmt.Fprintf(&b, `
The in-process refresher at its maximum (section 6) keeps about 1 million
1 h connections; switch to fan-out (RefreshFanOut=true) before the due
backlog outgrows one tick, i.e. when the refresher-duration alarm fires at
RefreshConcurrency 64, or when you plan past 1 million 1 h connections.
The W = 1000 row keeps %s 1 h connections fresh; past that it is %s
that stops it, and %s lifts it.
`, count(top*every1h), map[bool]string{true: "DynamoDB's default write quota", false: "Lambda concurrency"}[top == ddbBound],
		map[bool]string{true: "a quota increase (or provisioned capacity)", false: "a higher account concurrency and MaximumConcurrency"}[top == ddbBound])
	return b.String()
}

// itemBytes is the size DynamoDB bills a connection item by, by its
// documented rules: attribute names and string and binary values by their
// bytes, a number by about half its digits plus one, a boolean or null by
// one byte, a map or list by 3 bytes plus its elements at one byte each.
func itemBytes(item map[string]types.AttributeValue) int {
	n := 0
	for name, v := range item {
		n += len(name) + valueBytes(v)
	}
	return n
}

func valueBytes(v types.AttributeValue) int {
	switch v := v.(type) {
	case *types.AttributeValueMemberS:
		return len(v.Value)
	case *types.AttributeValueMemberN:
		return (len(strings.TrimLeft(v.Value, "-0"))+1)/2 + 1
	case *types.AttributeValueMemberB:
		return len(v.Value)
	case *types.AttributeValueMemberBOOL, *types.AttributeValueMemberNULL:
		return 1
	case *types.AttributeValueMemberM:
		return 3 + itemBytes(v.Value) + len(v.Value)
	case *types.AttributeValueMemberL:
		n := 3 + len(v.Value)
		for _, e := range v.Value {
			n += valueBytes(e)
		}
		return n
	case *types.AttributeValueMemberSS:
		n := 0
		for _, e := range v.Value {
			n += len(e)
		}
		return n
	}
	return 0
}

// connectionItemBytes is the largest billed size of the refreshed
// connection items in table (a sample of them).
func connectionItemBytes(ctx context.Context, e *benchEnv, table string) (int, error) {
	out, err := e.db.Scan(ctx, &dynamodb.ScanInput{TableName: aws.String(table), Limit: aws.Int32(200)})
	if err != nil {
		return 0, err
	}
	largest := 0
	for _, item := range out.Items {
		if pk, ok := item["pk"].(*types.AttributeValueMemberS); ok && strings.HasPrefix(pk.Value, "conn#") {
			largest = max(largest, itemBytes(item))
		}
	}
	if largest == 0 {
		return 0, fmt.Errorf("no connection item in %s", table)
	}
	return largest, nil
}
