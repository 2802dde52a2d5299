package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// seedDue stores n SinaCloud connections, all due now.
func seedDue(ctx context.Context, e *benchEnv, st *store.Store, n int) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	now := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			access, refresh, ttl := e.stack.Sina.IssueGrant()
			err := st.Create(ctx, &store.Connection{Key: store.Key{Provider: devstack.SinaCloud, Connection: fmt.Sprintf("due-%05d", i)},
				Kind: "sinacloud", AccessToken: access, RefreshToken: refresh, TokenType: "Bearer", ExpiresAt: now.Add(ttl),
				RefreshExpiresAt: now.Add(ttl + 24*time.Hour), Status: store.StatusActive, CreatedAt: now, RefreshedAt: now,
				RefreshAt: now.Add(-time.Minute)})
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func benchRefresher(ctx context.Context, e *benchEnv, rep *report, quick bool) error {
	n := 10000
	if quick {
		n = 1000
	}
	latency := 20 * time.Millisecond
	e.stack.Sina.SetLatency(latency)
	defer e.stack.Sina.SetLatency(0)
	var rows []string
	for _, concurrency := range []int{8, 32} {
		table, err := e.table(ctx, "bench-refresher")
		if err != nil {
			return err
		}
		if err := seedDue(ctx, e, e.store(e.db, table), n); err != nil {
			return err
		}
		db := &countingDB{DynamoDB: e.db}
		b := e.broker(db, table)
		b.Concurrency = concurrency
		calls := e.stack.Sina.RefreshCalls()
		before := db.snapshot()
		tickCtx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		t0 := time.Now()
		sum, err := b.RefreshDue(tickCtx)
		elapsed := time.Since(t0)
		cancel()
		if err != nil {
			return err
		}
		c := db.snapshot().minus(before)
		providerCalls := e.stack.Sina.RefreshCalls() - calls
		if sum.Refreshed != n || providerCalls != n {
			return fmt.Errorf("concurrency %d: refreshed %d, provider calls %d, want %d (%+v)", concurrency, sum.Refreshed, providerCalls, n, sum)
		}
		rate := float64(n) / elapsed.Seconds()
		bound := float64(concurrency) / latency.Seconds()
		per := float64(n)
		rows = append(rows, fmt.Sprintf("| %d | %d | %s | %.0f/s | %.0f/s | **%.0f%%** | %.2f | %.2f | %.3f | %d |",
			concurrency, n, elapsed.Round(10*time.Millisecond), rate, bound, 100*rate/bound,
			float64(c.updates)/per, float64(c.puts)/per, float64(c.gets)/per, c.queries))
	}
	rep.add("3. Refresher", fmt.Sprintf(`
One refresher tick over %d due SinaCloud connections (8 due-index shards,
each provider read by its own reader, page by page), the emulator answering every refresh
after %v. The provider-bound limit is concurrency / latency. DynamoDB calls
are counted by a wrapper around the SDK client: per refresh, one
conditional UpdateItem (the lease) and one conditional PutItem (the commit);
the lease write returns the item as it stands, so no extra read.

| concurrency | connections | time per tick | refreshes/s | provider-bound limit | of the limit | UpdateItem/refresh | PutItem/refresh | GetItem/refresh | Query pages (total) |
|---|---|---|---|---|---|---|---|---|---|
%s

Every connection was refreshed exactly once (provider calls = connections, checked).
`, n, latency, strings.Join(rows, "\n")))
	return nil
}
