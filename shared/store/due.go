package store

import (
	"context"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// MaxDueShards is how many shards of the due index the scans read,
// whatever DUE_SHARDS is now: items are filed under one of DUE_SHARDS
// shards, and an instance (or an earlier deployment) with another setting
// may have filed them under any shard up to this. Lowering DUE_SHARDS
// therefore strands nothing.
const MaxDueShards = 64

// defaultDuePage is how many items one page of the due index holds; with
// the refresher's queues it bounds what is in memory whatever the backlog.
const defaultDuePage = 100

// PageSize is how many items one page of the due index holds.
func (s *Store) PageSize() int {
	return int(s.pageSize())
}

func (s *Store) pageSize() int32 {
	if s.DuePageSize > 0 {
		return s.DuePageSize
	}
	return defaultDuePage
}

// DueItem is the due index's copy of a connection: enough to schedule it,
// no tokens (they are read, consistently, when the lease is taken). The
// index is eventually consistent, so Fence is a hint the lease condition
// checks.
type DueItem struct {
	Key
	PK         string
	Kind       string
	Status     Status
	Fence      Fence
	LeaseOwner string
	LeaseUntil time.Time
	RefreshAt  time.Time
	// Err is set when the item cannot be decoded; the refresher reports it
	// and moves on.
	Err error
}

// Leased reports whether the copy shows a live lease at now.
func (d *DueItem) Leased(now time.Time) bool {
	return d.LeaseOwner != "" && d.LeaseUntil.After(now)
}

func dueItem(av map[string]types.AttributeValue) *DueItem {
	it, err := decodeConnection(av)
	if err != nil {
		d := &DueItem{Err: err}
		if v, ok := av["pk"].(*types.AttributeValueMemberS); ok {
			d.PK = v.Value
		}
		return d
	}
	d := &DueItem{Key: Key{Provider: it.Provider, Connection: it.Connection}, PK: it.PK, Kind: it.Kind, Status: Status(it.Status),
		Fence: Fence{Generation: it.Generation, Version: it.Version}, LeaseOwner: it.LeaseOwner, RefreshAt: timeOrZero(it.RefreshAt)}
	if it.LeaseUntilMs != 0 {
		d.LeaseUntil = time.UnixMilli(it.LeaseUntilMs).UTC()
	}
	return d
}

// ScanDue calls visit, page by page, with every connection of provider
// whose refresh_at is at or before now, across the provider's shards of
// the due index. Only one page is held at a time; visit may block to push
// back. An error from visit stops the scan and is returned.
func (s *Store) ScanDue(ctx context.Context, provider string, now time.Time, visit func(*DueItem) error) error {
	return s.ScanDueFrom(ctx, provider, now, 0, visit)
}

// ScanDueFrom is ScanDue starting at shard first (modulo the configured
// shard count) and going round: the configured shards first, then the
// rest up to MaxDueShards. A refresher that starts each tick at another
// shard cannot leave the last shards unread under a lasting backlog,
// which reading 0, 1, 2, … every tick would.
func (s *Store) ScanDueFrom(ctx context.Context, provider string, now time.Time, first int, visit func(*DueItem) error) error {
	if err := s.check(); err != nil {
		return err
	}
	for _, shard := range shardOrder(s.shards(), first) {
		if err := s.queryDue(ctx, provider+"#"+strconv.Itoa(shard), now, func(av map[string]types.AttributeValue) error {
			return visit(dueItem(av))
		}); err != nil {
			return err
		}
	}
	return nil
}

// shardOrder lists every shard up to MaxDueShards once: the configured
// ones from first round to first-1, then those beyond the configuration.
func shardOrder(configured, first int) []int {
	order := make([]int, 0, MaxDueShards)
	first = ((first % configured) + configured) % configured
	for i := range configured {
		order = append(order, (first+i)%configured)
	}
	for shard := configured; shard < MaxDueShards; shard++ {
		order = append(order, shard)
	}
	return order
}

// ScanLegacyDue visits due connections still filed under the shard names
// used before shards were per provider ("0", "1", …). Any write by the
// broker moves a connection to its provider's shards, so these drain.
func (s *Store) ScanLegacyDue(ctx context.Context, now time.Time, visit func(*DueItem) error) error {
	if err := s.check(); err != nil {
		return err
	}
	for shard := 0; shard < MaxDueShards; shard++ {
		if err := s.queryDue(ctx, strconv.Itoa(shard), now, func(av map[string]types.AttributeValue) error {
			return visit(dueItem(av))
		}); err != nil {
			return err
		}
	}
	return nil
}
