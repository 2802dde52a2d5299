package broker

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/store"
)

// Fan-out mode (template parameter RefreshFanOut). The scheduled tick stays
// the clock, but instead of refreshing it queues the work: one message per
// unit, a unit being one shard of one provider's due index. Workers (a
// Lambda function behind an SQS event source mapping) refresh each unit's
// due connections through refreshOne, exactly as the in-process refresher
// does: the lease, the time budget, notices and the quota guard are the
// same code.
//
// A backlog never multiplies the work: before queuing a unit the tick
// claims it with a conditional put (store.ClaimUnit); while the claim holds
// (UnitClaim while queued, then the worker's own deadline while worked)
// no tick queues it again. A worker first takes the claim by its token: a
// message whose claim ran out and was made anew by a later tick is
// superseded and dropped without work. A finished unit's claim is closed
// (no message's token, UnitSettle more to cover the due index's lag);
// an unfinished one (deadline, failed read) runs out at once and is
// reported as a batch item failure; a lost message's claim runs out by
// itself. Either way the unit is queued again within a tick or two.

// Unit is one piece of fan-out work: one shard of one provider's due index,
// and the token of the claim its message was queued under.
type Unit struct {
	Provider string `json:"provider"`
	Shard    int    `json:"shard"`
	Token    string `json:"token"`
}

// WorkQueue is where the fan-out tick puts units; shared/workqueue's SQS
// queue satisfies it. Send queues one message per unit and returns, per
// unit, nil when it was queued.
type WorkQueue interface {
	Send(ctx context.Context, units []Unit) []error
}

// DefaultUnitClaim is how long a queued unit is not queued again: a few
// ticks. A worker that takes it extends the claim to its own deadline.
const DefaultUnitClaim = 5 * time.Minute

// UnitSettle is how long a finished unit is not queued again: the due
// index (a GSI, eventually consistent) may still show the copies its work
// replaced, and a tick right after would queue it for nothing.
const UnitSettle = 10 * time.Second

// probeConcurrency bounds the tick's parallel one-item queries of the due
// shards.
const probeConcurrency = 16

// ParseUnit reads a unit from a queue message body; anything else is an
// error that names what is wrong (never the body).
func ParseUnit(body string) (Unit, error) {
	var u Unit
	if err := json.Unmarshal([]byte(body), &u); err != nil {
		return Unit{}, fmt.Errorf("broker: queue message is not a unit (JSON with provider, shard, token): %w", err)
	}
	// Claim tokens are the hex ids the tick made; anything else (the
	// "done" a finished claim holds, above all) takes no claim.
	if !store.ValidID(u.Provider) || u.Shard < 0 || u.Shard >= store.MaxDueShards || !hexToken(u.Token) {
		return Unit{}, fmt.Errorf("broker: queue message is not a unit: want a provider name, a shard from 0 to %d and a token", store.MaxDueShards-1)
	}
	return u, nil
}

func hexToken(t string) bool {
	if len(t) < 16 || len(t) > 64 {
		return false
	}
	_, err := hex.DecodeString(t)
	return err == nil
}

// Tick is the scheduled invocation: in fan-out mode (Queue set) it queues
// the due units, otherwise it refreshes in-process.
func (b *Broker) Tick(ctx context.Context) (*Summary, error) {
	if b.Queue != nil {
		return b.Dispatch(ctx)
	}
	return b.RefreshDue(ctx)
}

func (b *Broker) unitClaim() time.Duration {
	if b.UnitClaim > 0 {
		return b.UnitClaim
	}
	return DefaultUnitClaim
}

// Dispatch is the fan-out tick: it probes every shard of every provider's
// due index (all MaxDueShards, so changing DUE_SHARDS strands nothing),
// claims each shard that has due work and no live claim, and queues one
// message per claimed shard. The legacy shards and the notices of writers
// that died are handled in-process, as the in-process tick does: both are
// small.
func (b *Broker) Dispatch(ctx context.Context) (*Summary, error) {
	if !b.IsHome() {
		return b.notHomeSummary(ctx), nil
	}
	c, err := b.current(ctx)
	if err != nil {
		return nil, err
	}
	now := b.now()
	type candidate struct {
		provider string
		shard    int
	}
	var all []candidate
	for _, name := range c.providerNames() {
		for shard := range store.MaxDueShards {
			all = append(all, candidate{name, shard})
		}
	}
	due := make([]bool, len(all))
	var probeErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, probeConcurrency)
	for i, cand := range all {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			has, err := c.store.HasDue(ctx, cand.provider, cand.shard, now)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				probeErr = err
				return
			}
			due[i] = has
		}()
	}
	wg.Wait()
	// Claims in parallel too: at a thousand due units one after the other
	// would cost the tick seconds.
	var claimed []Unit
	already := 0
	until := now.Add(b.unitClaim())
	for i, cand := range all {
		if !due[i] {
			continue
		}
		token, err := b.unitToken()
		if err != nil {
			return nil, wrap(CodeInternal, err, "no randomness for a unit token")
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			got, err := c.store.ClaimUnit(ctx, cand.provider, cand.shard, token, until, now)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				probeErr = err
			case !got:
				already++
			default:
				claimed = append(claimed, Unit{Provider: cand.provider, Shard: cand.shard, Token: token})
			}
		}()
	}
	wg.Wait()
	queued := 0
	if len(claimed) > 0 {
		for i, err := range b.Queue.Send(ctx, claimed) {
			if err == nil {
				queued++
				continue
			}
			u := claimed[i]
			b.log().ErrorContext(ctx, "unit not queued; its claim is released for the next tick", "provider", u.Provider, "shard", u.Shard, "error", err.Error())
			if rerr := c.store.DropClaim(context.WithoutCancel(ctx), u.Provider, u.Shard, u.Token); rerr != nil {
				b.log().WarnContext(ctx, "unit claim not released; it runs out by itself", "provider", u.Provider, "shard", u.Shard, "error", rerr.Error())
			}
			if probeErr == nil {
				probeErr = err
			}
		}
	}
	b.log().InfoContext(ctx, "fan-out tick", "units_due", len(claimed)+already, "queued", queued, "already_queued", already)
	sum, err := b.sweep(ctx, c, nil, true)
	if sum != nil {
		sum.Queued, sum.AlreadyQueued = queued, already
	}
	if err == nil && probeErr != nil {
		err = storeError(probeErr, "due index")
	}
	return sum, err
}

func (b *Broker) unitToken() (string, error) {
	buf := make([]byte, 12)
	if _, err := io.ReadFull(b.random(), buf); err != nil {
		return "", err
	}
	return hex.EncodeToString(buf), nil
}

// Work is a fan-out worker's invocation: it refreshes the due connections
// of units (one batch of messages) through the same sweep as the
// in-process refresher, with the invocation's own deadline as the time
// budget. retry[i] is true when units[i] must come back (a batch item
// failure): its work is not finished, or its claim could not be read.
// Superseded units (their claim was made anew by a later tick) and
// duplicates in one batch are done without work.
func (b *Broker) Work(ctx context.Context, units []Unit) (*Summary, []bool) {
	retry := make([]bool, len(units))
	if !b.IsHome() {
		return b.notHomeSummary(ctx), retry
	}
	c, err := b.current(ctx)
	if err != nil {
		b.log().ErrorContext(ctx, "worker cannot load its configuration", "error", err.Error())
		for i := range retry {
			retry[i] = true
		}
		return &Summary{Unfinished: len(units)}, retry
	}
	bg := b.budget()
	// The claim holds until this invocation is over for sure: its deadline
	// (the reserve included) plus the clock skew.
	until := b.now().Add(b.left(ctx, 15*time.Minute) + bg.Reserve + bg.Skew)
	// This invocation's name on the units it holds.
	holder, err := b.unitToken()
	if err != nil {
		b.log().ErrorContext(ctx, "no randomness for a worker's hold", "error", err.Error())
		for i := range retry {
			retry[i] = true
		}
		return &Summary{Unfinished: len(units)}, retry
	}
	runs := make([]*unitRun, len(units))
	seen := map[Unit]bool{}
	for i, u := range units {
		if seen[u] {
			continue
		}
		seen[u] = true
		took, err := c.store.TakeUnit(ctx, u.Provider, u.Shard, u.Token, holder, until, b.now())
		switch {
		case err != nil:
			b.log().ErrorContext(ctx, "unit claim cannot be taken; the message comes back", "provider", u.Provider, "shard", u.Shard, "error", err.Error())
			retry[i] = true
			// The take may have applied with every answer lost: let go of
			// this holder's hold, or the redelivery would find the unit
			// held and drop it.
			if lerr := c.store.LetGoUnit(ctx, u.Provider, u.Shard, u.Token, holder); lerr != nil {
				b.log().WarnContext(ctx, "unit hold not let go; it runs out by itself", "provider", u.Provider, "shard", u.Shard, "error", lerr.Error())
			}
		case !took:
			b.log().InfoContext(ctx, "unit superseded, done or held by another worker; message dropped", "provider", u.Provider, "shard", u.Shard)
		default:
			runs[i] = &unitRun{provider: u.Provider, shard: u.Shard}
		}
	}
	var active []*unitRun
	for _, r := range runs {
		if r != nil {
			active = append(active, r)
		}
	}
	sum := &Summary{}
	if len(active) > 0 {
		s, err := b.sweep(ctx, c, active, false)
		if s != nil {
			sum = s
		}
		if err != nil {
			b.log().ErrorContext(ctx, "worker sweep failed for some units", "error", err.Error())
		}
	}
	// Claims are let go on a context that outlives the invocation's end by
	// a little: the reserve is there to answer, not to strand a unit.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	for i, r := range runs {
		if r == nil {
			continue
		}
		u := units[i]
		var err error
		if r.unfinished() {
			retry[i] = true
			sum.Unfinished++
			err = c.store.LetGoUnit(rctx, u.Provider, u.Shard, u.Token, holder)
		} else {
			err = c.store.ReleaseUnit(rctx, u.Provider, u.Shard, u.Token, holder, b.now().Add(UnitSettle))
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			b.log().WarnContext(ctx, "unit claim not let go; it runs out by itself", "provider", u.Provider, "shard", u.Shard, "error", err.Error())
		}
	}
	return sum, retry
}
