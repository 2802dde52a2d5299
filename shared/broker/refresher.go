package broker

import (
	"context"
	"errors"
	"sync"
	"time"

	"tokenbroker/shared/store"
	"tokenbroker/shared/telemetry"
)

// Summary is what one refresher tick did.
type Summary struct {
	Due             int `json:"due"`
	Refreshed       int `json:"refreshed"`
	SkippedLocked   int `json:"skipped_locked"`
	FailedTransient int `json:"failed_transient"`
	NeedsReauth     int `json:"needs_reauth"`
	// NotStarted counts due connections left for the next tick because the
	// deadline came near.
	NotStarted int `json:"not_started"`
	// Broken counts due items that could not be decoded or whose provider
	// is unknown or misconfigured.
	Broken int `json:"broken"`
}

// stopMargin is how long before the deadline no new refresh starts: one
// provider call plus the commit must still fit.
const stopMargin = 12 * time.Second

// RefreshDue refreshes every connection whose refresh time has come, with
// bounded concurrency overall and per provider, and stops taking new work
// when the context's deadline is near.
func (b *Broker) RefreshDue(ctx context.Context) (*Summary, error) {
	start := b.now()
	c, err := b.current(ctx)
	if err != nil {
		return nil, err
	}
	due, err := c.store.Due(ctx, b.now(), 0)
	if err != nil {
		return nil, storeError(err, "due index")
	}
	sum := &Summary{Due: len(due.Connections) + len(due.Broken), Broken: len(due.Broken)}
	for _, br := range due.Broken {
		b.log().ErrorContext(ctx, "due item cannot be read", "pk", br.PK, "error", br.Err.Error())
	}
	concurrency := b.Concurrency
	if concurrency <= 0 {
		concurrency = defaultConcurrency
	}
	perProvider := b.ProviderConcurrency
	if perProvider <= 0 || perProvider > concurrency {
		perProvider = concurrency
	}
	var mu sync.Mutex
	count := func(f func(*Summary)) { mu.Lock(); f(sum); mu.Unlock() }
	slots := make(chan struct{}, concurrency)
	providerSlots := map[string]chan struct{}{}
	var wg sync.WaitGroup
	deadline, hasDeadline := ctx.Deadline()
	for i, conn := range due.Connections {
		if hasDeadline && time.Until(deadline) < stopMargin {
			count(func(s *Summary) { s.NotStarted += len(due.Connections) - i })
			break
		}
		ps, ok := providerSlots[conn.Provider]
		if !ok {
			ps = make(chan struct{}, perProvider)
			providerSlots[conn.Provider] = ps
		}
		slots <- struct{}{}
		ps <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-ps; <-slots; wg.Done() }()
			outcome := b.refreshOne(ctx, conn)
			count(func(s *Summary) {
				switch outcome {
				case outcomeRefreshed:
					s.Refreshed++
				case outcomeLocked:
					s.SkippedLocked++
				case outcomeReauth:
					s.NeedsReauth++
				case outcomeBroken:
					s.Broken++
				default:
					s.FailedTransient++
				}
			})
		}()
	}
	wg.Wait()
	b.log().InfoContext(ctx, "refresher tick", "due", sum.Due, "refreshed", sum.Refreshed, "skipped_locked", sum.SkippedLocked,
		"failed_transient", sum.FailedTransient, "needs_reauth", sum.NeedsReauth, "not_started", sum.NotStarted, "broken", sum.Broken)
	b.Metrics.Milliseconds(telemetry.RefresherDuration, b.now().Sub(start), nil)
	return sum, nil
}

type outcome int

const (
	outcomeRefreshed outcome = iota
	outcomeLocked
	outcomeFailed
	outcomeReauth
	outcomeBroken
)

// refreshOne uses the due index's copy of the item: its version is a hint
// the lease condition checks, so no extra read is needed.
func (b *Broker) refreshOne(ctx context.Context, conn *store.Connection) outcome {
	e, err := b.envFor(ctx, conn.Provider)
	if err != nil {
		b.log().ErrorContext(ctx, "due connection's provider unusable", "provider", conn.Provider, "connection", conn.Connection, "error", err.Error())
		return outcomeBroken
	}
	now := b.now()
	if conn.Status == store.StatusNeedsReauth {
		return outcomeReauth
	}
	if conn.Leased(now) {
		return outcomeLocked
	}
	if err := e.store.AcquireLease(ctx, conn.Key, conn.Version, b.leaseOwner(), now.Add(b.lease())); err != nil {
		if errors.Is(err, store.ErrLeaseNotGranted) {
			return outcomeLocked
		}
		b.log().ErrorContext(ctx, "lease failed", "provider", conn.Provider, "connection", conn.Connection, "error", err.Error())
		return outcomeFailed
	}
	_, err = b.refreshHeld(ctx, e, conn)
	switch {
	case err == nil:
		return outcomeRefreshed
	case ErrorCode(err) == CodeNeedsReauth:
		return outcomeReauth
	}
	return outcomeFailed
}
