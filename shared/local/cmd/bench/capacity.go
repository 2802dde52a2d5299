package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/samtemplate"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// capacityLatency is the provider's answer time in the capacity scenario:
// a realistic token endpoint across the internet.
const capacityLatency = 100 * time.Millisecond

// capacityRun is one measured refresher configuration.
type capacityRun struct {
	label                    string
	concurrency, perProvider int
	backlog                  int
	refreshed, notStarted    int
	elapsed                  time.Duration
}

// perTick is how many connections one tick refreshed: the scenario's
// measurement, whatever the refresher's internals.
func (r capacityRun) perTick() int { return r.refreshed }

func (r capacityRun) rate() float64 { return float64(r.refreshed) / r.elapsed.Seconds() }

// benchCapacity answers "how many connections does one deployment keep
// fresh": it gives refresher ticks the function's real timeout (from
// template.yaml) over a backlog of due connections larger than they can
// finish, at the default concurrency and at the template's maximum, counts
// what one tick refreshes, measures the refresh lead the broker schedules
// for 1 h, 2 h and 7 d tokens, and turns both into connections per
// deployment.
func benchCapacity(ctx context.Context, e *benchEnv, rep *report, quick bool) error {
	tpl, err := samtemplate.Load(filepath.Join(e.root, "template.yaml"))
	if err != nil {
		return err
	}
	timeout, err := tpl.FunctionTimeout("RefresherFunction")
	if err != nil {
		return err
	}
	param := func(name string) (def, maxValue int, err error) {
		p, ok := tpl.Parameters[name]
		if !ok || p.MaxValue == nil {
			return 0, 0, fmt.Errorf("template.yaml: parameter %s with a MaxValue is missing", name)
		}
		def, err = strconv.Atoi(p.Default)
		return def, int(*p.MaxValue), err
	}
	defConc, maxConc, err := param("RefreshConcurrency")
	if err != nil {
		return err
	}
	defPerProvider, _, err := param("ProviderConcurrency")
	if err != nil {
		return err
	}

	lifetimes := []time.Duration{time.Hour, 2 * time.Hour, 7 * 24 * time.Hour}
	leads, err := measureLeads(ctx, e, lifetimes)
	if err != nil {
		return err
	}

	e.stack.Sina.SetLatency(capacityLatency)
	defer e.stack.Sina.SetLatency(0)
	runs := []capacityRun{
		{label: "template defaults, one provider", concurrency: defConc, perProvider: defPerProvider},
		{label: "default concurrency, several providers", concurrency: defConc, perProvider: defConc},
		{label: "template maximum (RefreshConcurrency MaxValue)", concurrency: maxConc, perProvider: maxConc},
	}
	if quick {
		runs = runs[1:2]
	}
	for i := range runs {
		if err := runCapacityTick(ctx, e, &runs[i], timeout); err != nil {
			return err
		}
	}

	var measured, capacity strings.Builder
	for _, r := range runs {
		bound := float64(min(r.concurrency, r.perProvider)) / capacityLatency.Seconds()
		fmt.Fprintf(&measured, "| %s | %d | %d | %d | **%d** | %d | %s | %.0f/s | %.0f/s |\n", r.label, r.concurrency, r.perProvider,
			r.backlog, r.perTick(), r.notStarted, r.elapsed.Round(100*time.Millisecond), r.rate(), bound)
	}
	fmt.Fprintf(&capacity, "| token lifetime L | measured lead(L) | refreshed every L − lead |")
	for _, r := range runs {
		fmt.Fprintf(&capacity, " N, %d/%d | burst B, %d/%d |", r.concurrency, r.perProvider, r.concurrency, r.perProvider)
	}
	capacity.WriteString("\n|---|---|---|" + strings.Repeat("---|---|", len(runs)) + "\n")
	for i, l := range lifetimes {
		every := l - leads[i]
		fmt.Fprintf(&capacity, "| %s | %s | %s |", human(l), human(leads[i]), human(every))
		for _, r := range runs {
			n := float64(r.perTick()) * every.Minutes()
			b := r.perTick() * int(leads[i]/time.Minute)
			fmt.Fprintf(&capacity, " **%s** | %s |", count(n), count(float64(b)))
		}
		capacity.WriteString("\n")
	}
	maxRun := runs[len(runs)-1]
	rep.add("6. Capacity: connections one deployment keeps fresh", fmt.Sprintf(`
How many connections one deployment keeps fresh, measured rather than
assumed. Each refresher tick is given RefresherFunction's Timeout from
template.yaml (T = %s) over a backlog of due SinaCloud connections larger
than it can finish, the emulator answering every refresh after %v. The
tick stops starting refreshes when its deadline is near (its stop margin
m), so what it finished is what one tick does, every minute: C = r × (T − m),
with r its refresh rate and T − m its working time, both measured.
Connections here all belong to one provider, so PROVIDER_CONCURRENCY caps
them; "several providers" sets it to REFRESH_CONCURRENCY, as a deployment
whose due connections are spread over enough providers would see.

| configuration | REFRESH_CONCURRENCY | PROVIDER_CONCURRENCY | backlog | refreshed in one tick (C) | left for the next tick | working time (T − m) | r | provider-bound limit |
|---|---|---|---|---|---|---|---|---|
%s
A connection whose tokens live L is refreshed once per L − lead(L). The
lead is measured too: one connection each with a %s lifetime refreshed
through the broker, lead = expires_at − refresh_at (the default is
max(300 s, 10%% of L)). The refresher runs once a minute, so at steady
state one deployment keeps fresh

    N(L) = C × (L − lead(L)) / 1 min

connections, provided their due times are spread over the lifetime.
Connections that fall due together (a bulk import, a provider outage that
ends, every token issued in the same minute) must be refreshed within
their lead by the refresher alone:

    B(L) = C × ⌊lead(L) / 1 min⌋

%s
Beyond that, callers still get valid tokens — the token route refreshes on
demand under the same lease — but pay the provider's latency on those
requests, and the refresher-duration alarm fires. What to turn, in order:

- **REFRESH_CONCURRENCY** (RefreshConcurrency, up to %d): C grows with it
  until the provider, DynamoDB or the function's CPU is the limit; compare
  r with the provider-bound limit above. These ticks ran in process on this
  machine's cores; Lambda gives a 256 MB function a fraction of one vCPU,
  so at high concurrency raise the refresher's MemorySize (CPU grows with
  it) and watch its Duration on the dashboard.
- **PROVIDER_CONCURRENCY** (ProviderConcurrency, default %d): the share of
  one provider; a deployment with a single provider gets at most
  PROVIDER_CONCURRENCY / latency refreshes a second (first row). Raise it
  as far as the provider's rate limit allows.
- **Provider rate limits**: at steady state N(L) / (L − lead(L)) = C
  refreshes a minute go to the providers (%.0f a second at the last row). WeChat's
  stable_token allows 10,000 calls a minute per app, cgi-bin/token 2,000 a
  day; OAuth providers publish per-app limits. A tighter limit caps N
  whatever the refresher does; lower PROVIDER_CONCURRENCY to stay under it.
- **DUE_SHARDS** (DueShards): how many partitions of each provider's part
  of the due index a connection is filed under (each provider is read by
  its own reader, every partition up to 64 whatever the setting, so it can
  be changed either way). Raise it when one provider's due set runs into
  the thousands, so that no single partition is hot.
- **Fan out** (RefreshFanOut=true): past one tick's C, the tick queues
  the work instead, one SQS message per provider due shard, and worker
  instances behind an event source mapping refresh it, so the rate grows
  with the instances until DynamoDB's write quota (two writes per
  refresh: the lease, the commit) or a provider's own limit binds.
  Section 7 measures it and gives its capacity.

Every refresh above was exactly one provider call (checked: provider
calls = refreshed, no refresh-token reuse).
`, timeout, capacityLatency, measured.String(), strings.Join(humanAll(lifetimes), ", "), capacity.String(),
		maxConc, defPerProvider, float64(maxRun.perTick())/60))
	return nil
}

// runCapacityTick seeds more due connections than one tick can refresh in
// timeout and runs one tick with that deadline.
func runCapacityTick(ctx context.Context, e *benchEnv, r *capacityRun, timeout time.Duration) error {
	// No tick refreshes faster than the provider-bound limit, so this
	// backlog cannot run out before the deadline.
	bound := float64(min(r.concurrency, r.perProvider)) / capacityLatency.Seconds()
	r.backlog = int(math.Ceil(bound*timeout.Seconds())) + r.concurrency
	table, err := e.table(ctx, "bench-capacity")
	if err != nil {
		return err
	}
	if err := seedDue(ctx, e, e.store(e.db, table), r.backlog); err != nil {
		return err
	}
	b := e.broker(e.db, table)
	b.Concurrency, b.ProviderConcurrency = r.concurrency, r.perProvider
	calls, reuses := e.stack.Sina.RefreshCalls(), e.stack.Sina.RefreshReuses()
	tickCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	sum, err := b.RefreshDue(tickCtx)
	r.elapsed = time.Since(t0)
	if err != nil {
		return err
	}
	// Whatever the tick read of the due index, every seeded connection it
	// did not refresh is still due: left for the next tick.
	r.refreshed, r.notStarted = sum.Refreshed, r.backlog-sum.Refreshed
	providerCalls := e.stack.Sina.RefreshCalls() - calls
	switch {
	case providerCalls != sum.Refreshed || e.stack.Sina.RefreshReuses() != reuses:
		return fmt.Errorf("%s: %d refreshed but %d provider calls, %d reuses", r.label, sum.Refreshed, providerCalls, e.stack.Sina.RefreshReuses()-reuses)
	case sum.Refreshed == 0 || sum.FailedTransient != 0:
		return fmt.Errorf("%s: tick %+v", r.label, sum)
	case r.notStarted == 0:
		return fmt.Errorf("%s: the tick finished all %d connections, so it did not measure its capacity; raise the backlog", r.label, r.backlog)
	}
	fmt.Fprintf(os.Stderr, "bench: capacity %s: %d refreshed in %v, %d left\n", r.label, r.refreshed, r.elapsed.Round(time.Millisecond), r.notStarted)
	return nil
}

// measureLeads refreshes one connection per lifetime through the broker
// and reads back the lead it scheduled: expires_at − refresh_at.
func measureLeads(ctx context.Context, e *benchEnv, lifetimes []time.Duration) ([]time.Duration, error) {
	defer func(ttl time.Duration) { e.stack.Sina.AccessTTL = ttl }(e.stack.Sina.AccessTTL)
	var leads []time.Duration
	for _, l := range lifetimes {
		e.stack.Sina.AccessTTL = l
		table, err := e.table(ctx, "bench-lead")
		if err != nil {
			return nil, err
		}
		st := e.store(e.db, table)
		if err := seedDue(ctx, e, st, 1); err != nil {
			return nil, err
		}
		sum, err := e.broker(e.db, table).RefreshDue(ctx)
		if err != nil || sum.Refreshed != 1 {
			return nil, fmt.Errorf("lead probe for %v: %+v, %v", l, sum, err)
		}
		c, err := st.Get(ctx, store.Key{Provider: devstack.SinaCloud, Connection: "due-00000"}, true)
		if err != nil {
			return nil, err
		}
		leads = append(leads, c.ExpiresAt.Sub(c.RefreshAt).Round(time.Second))
	}
	return leads, nil
}

func human(d time.Duration) string {
	trim := func(v float64, unit string) string {
		return strings.TrimSuffix(strconv.FormatFloat(v, 'f', 1, 64), ".0") + " " + unit
	}
	switch {
	case d >= 24*time.Hour:
		return trim(d.Hours()/24, "d")
	case d >= time.Hour:
		return trim(d.Hours(), "h")
	case d >= time.Minute:
		return trim(d.Minutes(), "min")
	}
	return trim(d.Seconds(), "s")
}

func humanAll(ds []time.Duration) []string {
	var out []string
	for _, d := range ds {
		out = append(out, human(d))
	}
	return out
}

// count writes a connection count readably: 185,760 or 31.2 million.
func count(n float64) string {
	if n >= 10e6 {
		return fmt.Sprintf("%.1f million", n/1e6)
	}
	s := strconv.FormatInt(int64(math.Round(n)), 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
