package broker

import (
	"context"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// Budget is the time budget every refresh obeys. What it protects is the
// provider call, because that is what spends a single-use refresh token:
//
//   - A provider call starts only when the caller's own time (its Lambda
//     deadline, less Reserve to answer) covers Provider + Commit, measured
//     again after it holds the lease: a lease write that was slow to answer
//     leaves less, and then the lease is given back and nothing is called.
//   - The lease is sized to its holder: it lasts until the holder's own
//     hold deadline (now + Provider + Commit + Acquire at most, never past
//     the invocation's deadline) plus Skew for other instances' clocks. The
//     holder stops working by its hold deadline, so while it may still
//     commit, nobody else can take the lease and present the same refresh
//     token.
//   - After the provider answered, the commit is retried through DynamoDB
//     faults, on a context detached from the caller's cancellation, until
//     the hold deadline.
//   - Waiters never wait past their own deadline, and never take over a
//     lease they could not finish: they answer provider_unavailable.
//
// With the defaults (10 s, 8 s, 3 s, 2 s, 1 s) a lease lasts at most 23 s,
// the token function (30 s) can start a refresh with up to 11 s already
// spent, and the refresher (55 s) starts new refreshes until 19 s before
// its end.
type Budget struct {
	// Provider bounds one provider call.
	Provider time.Duration
	// Commit is kept after the provider call to store its result.
	Commit time.Duration
	// Acquire is what taking the lease may cost on top (one slow DynamoDB
	// attempt) before the holder still has Provider + Commit.
	Acquire time.Duration
	// Skew is the margin for clocks: added to the hold to size the lease.
	Skew time.Duration
	// Reserve is left at the end of an invocation to answer.
	Reserve time.Duration
}

// DefaultBudget is the budget the functions run with.
func DefaultBudget() Budget {
	return Budget{Provider: provider.DefaultTimeout, Commit: 8 * time.Second, Acquire: 3 * time.Second, Skew: 2 * time.Second, Reserve: time.Second}
}

func (b *Broker) budget() Budget {
	if b.Budget.Provider > 0 {
		return b.Budget
	}
	return DefaultBudget()
}

// needed is the time a holder must have left before calling the provider.
func (bg Budget) needed() time.Duration { return bg.Provider + bg.Commit }

// maxHold is the longest one holder works under one lease.
func (bg Budget) maxHold() time.Duration { return bg.needed() + bg.Acquire }

// left is how long the invocation may still work (its deadline less the
// reserve to answer), or limit when that is more or there is no deadline.
// Deadlines are wall-clock; the result is a duration, so it applies to the
// broker's own clock too.
func (b *Broker) left(ctx context.Context, limit time.Duration) time.Duration {
	if d, has := ctx.Deadline(); has {
		return min(limit, time.Until(d)-b.budget().Reserve)
	}
	return limit
}

// hold is when a refresh that starts now must be finished by: its own
// bound, or the invocation's deadline less the reserve. ok is false when
// that leaves too little time to call the provider and store the result.
func (b *Broker) hold(ctx context.Context, now time.Time) (deadline time.Time, ok bool) {
	if !b.IsHome() {
		// A replica region takes no lease and calls no provider (region.go).
		return now, false
	}
	bg := b.budget()
	left := b.left(ctx, bg.maxHold())
	return now.Add(left), left > bg.needed()
}

// covers reports whether a holder working until hold still has, at now,
// the time for a provider call and the commit after it.
func (b *Broker) covers(hold, now time.Time) bool { return hold.Sub(now) >= b.budget().needed() }

// wallClock turns a time of the broker's clock into a wall-clock deadline.
func (b *Broker) wallClock(t time.Time) time.Time { return time.Now().Add(t.Sub(b.now())) }

// newLease is a lease for a holder that works until hold.
func (b *Broker) newLease(hold time.Time) store.Lease {
	return store.Lease{Owner: b.newLeaseOwner(), Until: hold.Add(b.budget().Skew)}
}

// waitDeadline is the wall-clock time until which a caller may wait for
// another worker: its own deadline less the reserve, and without a
// deadline two leases' worth.
func (b *Broker) waitDeadline(ctx context.Context) time.Time {
	bg := b.budget()
	return time.Now().Add(b.left(ctx, 2*(bg.maxHold()+bg.Skew)))
}

// durably applies w until it succeeds, fails for good, or hold passes;
// it runs on a context detached from the caller's cancellation, because
// what it stores (a rotated refresh token) exists nowhere else. Each
// attempt is bounded so that one stalled connection does not eat the
// whole budget.
func (b *Broker) durably(ctx context.Context, hold time.Time, w *store.Write) error {
	dctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), b.wallClock(hold))
	defer cancel()
	perAttempt := max(b.budget().Commit/3, 500*time.Millisecond)
	wait := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, acancel := context.WithTimeout(dctx, perAttempt)
		err := w.Apply(actx)
		acancel()
		if err == nil || !store.Retryable(err) || dctx.Err() != nil {
			return err
		}
		b.log().WarnContext(ctx, "store write failed; retrying", "write", w.ID[:8], "attempt", attempt, "error", err.Error())
		select {
		case <-dctx.Done():
			return err
		case <-time.After(wait + b.jitter(wait)):
		}
		wait = min(2*wait, time.Second)
	}
}
