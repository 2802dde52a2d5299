package broker

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

// Summary is what one refresher tick did.
type Summary struct {
	Due             int `json:"due"`
	Refreshed       int `json:"refreshed"`
	SkippedLocked   int `json:"skipped_locked"`
	FailedTransient int `json:"failed_transient"`
	NeedsReauth     int `json:"needs_reauth"`
	// NotPermitted counts connections whose provider refused to refresh
	// them at all; they are served until they expire.
	NotPermitted int `json:"refresh_not_permitted"`
	// Stale counts due-index copies that no longer matched the table
	// (refreshed, re-authorized or deleted since): nothing to do.
	Stale int `json:"stale"`
	// NotStarted counts due connections left for the next tick because the
	// deadline came near.
	NotStarted int `json:"not_started"`
	// Broken counts due items that could not be decoded or whose provider
	// is unknown or misconfigured.
	Broken int `json:"broken"`
	// Notices counts lifecycle events published for writers that could not.
	Notices int `json:"notices"`
	// Queued counts the fan-out units (a provider's due shard) this tick
	// handed to the queue; AlreadyQueued those it left alone because a
	// message for them is still queued or being worked.
	Queued        int `json:"queued,omitempty"`
	AlreadyQueued int `json:"already_queued,omitempty"`
	// Unfinished counts the fan-out units a worker hands back (its
	// deadline came, or a read failed): they are due again at once.
	Unfinished int `json:"unfinished,omitempty"`
	// NotHome is set when this deployment's region is not the home
	// region: it refreshes nothing.
	NotHome bool `json:"not_home,omitempty"`
}

type outcome int

const (
	outcomeRefreshed outcome = iota
	outcomeLocked
	outcomeFailed
	outcomeReauth
	outcomeBroken
	outcomeStale
	outcomeNotStarted
	outcomeNotPermitted
)

// tally counts outcomes from many goroutines.
type tally struct {
	mu  sync.Mutex
	sum Summary
}

func (t *tally) add(o outcome) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch o {
	case outcomeRefreshed:
		t.sum.Refreshed++
	case outcomeLocked:
		t.sum.SkippedLocked++
	case outcomeReauth:
		t.sum.NeedsReauth++
	case outcomeBroken:
		t.sum.Broken++
	case outcomeStale:
		t.sum.Stale++
	case outcomeNotStarted:
		t.sum.NotStarted++
	case outcomeNotPermitted:
		t.sum.NotPermitted++
	default:
		t.sum.FailedTransient++
	}
}

func (t *tally) due() {
	t.mu.Lock()
	t.sum.Due++
	t.mu.Unlock()
}

var errStopped = errors.New("refresher: stopping")

// RefreshDue refreshes every connection whose refresh time has come.
//
// Each provider has its own reader of the due index (its own shards, page
// by page, into a queue of one page) and its own workers (at most
// ProviderConcurrency), and every worker needs one of Concurrency global
// slots only while it refreshes. A worker never holds a global slot while
// waiting for anything else, so a slow provider occupies at most its own
// workers and never stalls another provider's refreshes; memory is a page
// per provider whatever the backlog. A refresh starts only when, with its
// slot in hand, the invocation still has the time budget to finish it.
func (b *Broker) RefreshDue(ctx context.Context) (*Summary, error) {
	if !b.IsHome() {
		return b.notHomeSummary(ctx), nil
	}
	c, err := b.current(ctx)
	if err != nil {
		return nil, err
	}
	var units []*unitRun
	for _, name := range c.providerNames() {
		units = append(units, &unitRun{provider: name, shard: -1})
	}
	return b.sweep(ctx, c, units, true)
}

// providerNames are the configured providers and those whose
// configuration is broken (their due connections are reported).
func (c *snapshotCache) providerNames() []string {
	names := c.snap.Names()
	for name := range c.snap.Problems() {
		names = append(names, name)
	}
	return names
}

// unitRun is one reader's share of a sweep: one provider's whole due index
// (shard -1, the in-process refresher) or one shard of it (a fan-out unit),
// with its own count, so a fan-out worker knows which units it finished.
type unitRun struct {
	provider string
	shard    int
	t        tally
	err      error
}

// job is a due connection and the unit it was read for.
type job struct {
	d *store.DueItem
	u *unitRun
}

// unfinished reports whether the unit left due work behind (the deadline
// came, or its read failed).
func (u *unitRun) unfinished() bool {
	u.t.mu.Lock()
	defer u.t.mu.Unlock()
	return u.err != nil || u.t.sum.NotStarted > 0
}

// sweep refreshes what the units' readers find due, with per-provider
// queues and workers and the global slots described at RefreshDue; the
// in-process refresher and each fan-out worker run it. housekeeping adds
// the legacy shards and the notices left by writers that died, which only
// the scheduled tick does.
func (b *Broker) sweep(ctx context.Context, c *snapshotCache, units []*unitRun, housekeeping bool) (*Summary, error) {
	started := b.now()
	concurrency := b.Concurrency
	if concurrency <= 0 {
		concurrency = defaultConcurrency
	}
	perProvider := b.ProviderConcurrency
	if perProvider <= 0 || perProvider > concurrency {
		perProvider = concurrency
	}
	names := c.providerNames()
	t := &tally{}
	slots := make(chan struct{}, concurrency)
	var stopOnce sync.Once
	stopped := make(chan struct{})
	stop := func() { stopOnce.Do(func() { close(stopped) }) }
	queues := make(map[string]chan job, len(names))
	for _, name := range names {
		queues[name] = make(chan job, c.store.PageSize())
	}
	var readers, workers sync.WaitGroup
	errs := make(chan error, len(units)+2)
	now := b.now()
	enqueue := func(q chan job, d *store.DueItem, u *unitRun, wait bool) error {
		count := func(o outcome) {
			t.add(o)
			if u != nil {
				u.t.add(o)
			}
		}
		t.due()
		if u != nil {
			u.t.due()
		}
		switch {
		case d.Err != nil:
			b.log().ErrorContext(ctx, "due item cannot be read", "pk", d.PK, "error", d.Err.Error())
			count(outcomeBroken)
			return nil
		case d.Leased(now):
			count(outcomeLocked)
			return nil
		case q == nil:
			b.log().ErrorContext(ctx, "due connection of an unknown provider", "provider", d.Provider, "connection", d.Connection)
			count(outcomeBroken)
			return nil
		}
		if !wait {
			select {
			case q <- job{d, u}:
			default:
				count(outcomeNotStarted)
			}
			return nil
		}
		select {
		case q <- job{d, u}:
			return nil
		case <-stopped:
			count(outcomeNotStarted)
			return errStopped
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, u := range units {
		q := queues[u.provider]
		readers.Add(1)
		go func() {
			defer readers.Done()
			visit := func(d *store.DueItem) error { return enqueue(q, d, u, true) }
			var err error
			if u.shard < 0 {
				err = c.store.ScanDueFrom(ctx, u.provider, now, b.firstShard(), visit)
			} else {
				err = c.store.ScanDueShard(ctx, u.provider, u.shard, now, visit)
			}
			if err != nil && !errors.Is(err, errStopped) {
				u.t.mu.Lock()
				u.err = err
				u.t.mu.Unlock()
				// A sweep whose time ran out while reading the index stops
				// there (its unit is unfinished); what it did not read is
				// due next tick. Anything else is the index failing.
				if ctx.Err() == nil {
					errs <- err
				}
			}
		}()
	}
	for _, q := range queues {
		for range perProvider {
			workers.Add(1)
			go func() {
				defer workers.Done()
				for j := range q {
					o := b.work(ctx, j.d, slots, stopped, stop)
					t.add(o)
					if j.u != nil {
						j.u.t.add(o)
					}
				}
			}()
		}
	}
	if housekeeping {
		// Connections still filed under the shard names used before shards
		// were per provider; a write moves each to its provider's shards.
		readers.Add(1)
		go func() {
			defer readers.Done()
			if err := c.store.ScanLegacyDue(ctx, now, func(d *store.DueItem) error { return enqueue(queues[d.Provider], d, nil, false) }); err != nil {
				errs <- err
			}
		}()
		// Lifecycle events whose writers died before publishing them.
		readers.Add(1)
		go func() {
			defer readers.Done()
			sent, err := b.publishPending(ctx, c.store)
			t.mu.Lock()
			t.sum.Notices = sent
			t.mu.Unlock()
			if err != nil {
				errs <- err
			}
		}()
	}
	readers.Wait()
	for _, q := range queues {
		close(q)
	}
	workers.Wait()
	close(errs)
	sum := t.sum
	if housekeeping {
		// The tick's duration, against the refresher's timeout; a fan-out
		// worker's sweeps have their own function and timeout.
		b.Metrics.Milliseconds(telemetry.RefresherDuration, b.now().Sub(started), nil)
	}
	b.log().InfoContext(ctx, "refresher tick", "due", sum.Due, "refreshed", sum.Refreshed, "skipped_locked", sum.SkippedLocked,
		"failed_transient", sum.FailedTransient, "needs_reauth", sum.NeedsReauth, "stale", sum.Stale, "not_started", sum.NotStarted,
		"broken", sum.Broken, "notices", sum.Notices, "refresh_not_permitted", sum.NotPermitted, "units", len(units))
	for err := range errs {
		return &sum, storeError(err, "due index")
	}
	return &sum, nil
}

// work refreshes one due connection with a global slot held, if the
// invocation still has the time to finish it; otherwise it stops the tick.
func (b *Broker) work(ctx context.Context, d *store.DueItem, slots chan struct{}, stopped chan struct{}, stop func()) outcome {
	select {
	case <-stopped:
		return outcomeNotStarted
	case <-ctx.Done():
		return outcomeNotStarted
	case slots <- struct{}{}:
	}
	defer func() { <-slots }()
	hold, ok := b.hold(ctx, b.now())
	if !ok {
		stop()
		return outcomeNotStarted
	}
	return b.refreshOne(ctx, d, hold)
}

// refreshOne takes the lease at the due copy's fence; the lease write
// returns the item as it stands, so the refresh acts on a consistent read,
// never on the index's copy. A copy that no longer matches is looked at
// again once, at the stored fence.
func (b *Broker) refreshOne(ctx context.Context, d *store.DueItem, hold time.Time) outcome {
	e, err := b.envFor(ctx, d.Provider)
	if err != nil {
		b.log().ErrorContext(ctx, "due connection's provider unusable", "provider", d.Provider, "connection", d.Connection, "error", err.Error())
		return outcomeBroken
	}
	fence := d.Fence
	var conn *store.Connection
	for try := 0; try < 2 && conn == nil; try++ {
		now := b.now()
		c, err := e.store.AcquireLease(ctx, d.Key, fence, b.newLease(hold))
		var ce *store.ConflictError
		switch {
		case err == nil:
			conn = c
		case errors.Is(err, store.ErrNotFound):
			return outcomeStale
		case errors.As(err, &ce) && ce.Current != nil:
			cur := ce.Current
			if cur.Leased(now) {
				return outcomeLocked
			}
			if cur.Status == store.StatusNeedsReauth || cur.RefreshAt.IsZero() || cur.RefreshAt.After(now) {
				return outcomeStale
			}
			fence = cur.Fence()
		case errors.Is(err, store.ErrCorrupt):
			b.log().ErrorContext(ctx, "due connection cannot be read", "provider", d.Provider, "connection", d.Connection, "error", err.Error())
			return outcomeBroken
		default:
			b.log().ErrorContext(ctx, "lease failed", "provider", d.Provider, "connection", d.Connection, "error", err.Error())
			return outcomeFailed
		}
	}
	if conn == nil {
		return outcomeStale
	}
	if !refreshable(conn, e.cfg) {
		// Nothing to refresh with (an item filed before the rules of today):
		// at its due time it needs its user.
		if err := b.markNeedsReauth(ctx, e, conn, "the access token expired and the provider gave no refresh token", "", &hold); ErrorCode(err) == CodeNeedsReauth {
			return outcomeReauth
		}
		return outcomeFailed
	}
	after, err := b.refreshHeld(ctx, e, conn, hold, false)
	var moved *movedOn
	switch {
	case errors.As(err, &moved):
		return outcomeStale
	case errors.Is(err, errNoTime):
		return outcomeNotStarted
	case err == nil && after.RefreshDenied != "":
		return outcomeNotPermitted
	case err == nil:
		return outcomeRefreshed
	case ErrorCode(err) == CodeNeedsReauth:
		return outcomeReauth
	case ErrorCode(err) == CodeNotFound:
		return outcomeStale
	}
	return outcomeFailed
}

// firstShard picks where a provider's scan of the due index starts this
// tick: at random, so that under a backlog no shard always comes last.
func (b *Broker) firstShard() int {
	var r [1]byte
	_, _ = io.ReadFull(b.random(), r[:])
	return int(r[0]) % store.MaxDueShards
}
