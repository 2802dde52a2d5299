package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// seedSinaConnections creates n real SinaCloud grants at the emulator and
// stores them as due connections in table.
func seedSinaConnections(t *testing.T, table string, n int) *store.Store {
	t.Helper()
	ctx := context.Background()
	root, _ := localaws.ModuleRoot()
	db := localaws.DynamoDBClient(stack.Endpoints.DynamoDB)
	if err := localaws.CreateTable(ctx, db, filepath.Join(root, "template.yaml"), table); err != nil {
		t.Fatal(err)
	}
	snap, err := (&config.Loader{SSM: localaws.SSMClient(stack.Endpoints.SSM), Prefix: stack.Prefix}).Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := snap.Ring()
	if err != nil {
		t.Fatal(err)
	}
	p, err := snap.Provider(devstack.SinaCloud)
	if err != nil {
		t.Fatal(err)
	}
	client, err := provider.New(p.Config, p.Secret, provider.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := &store.Store{DB: db, Table: table, Ring: ring, Shards: 8}
	authURL, _ := client.AuthorizeURL(provider.AuthorizeRequest{State: "seed"})
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			_, query := providerRedirect(t, authURL)
			q, _ := url.ParseQuery(query)
			ts, err := client.Exchange(ctx, q.Get("code"), "", "")
			if err != nil {
				t.Error(err)
				return
			}
			now := time.Now()
			c := &store.Connection{Key: store.Key{Provider: devstack.SinaCloud, Connection: fmt.Sprintf("bulk-%04d", i)},
				Kind: "sinacloud", AccessToken: ts.AccessToken, RefreshToken: ts.RefreshToken, TokenType: ts.TokenType,
				ExpiresAt: ts.ExpiresAt, RefreshExpiresAt: ts.RefreshExpiresAt, Status: store.StatusActive,
				CreatedAt: now, RefreshedAt: now, RefreshAt: now.Add(-time.Minute)}
			if err := st.Create(ctx, c); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	return st
}

func TestRefresherRefreshesEachDueConnectionOnce(t *testing.T) {
	const n = 1000
	table := localaws.UniqueName("refresher")
	st := seedSinaConnections(t, table, n)
	env := map[string]string{"TABLE_NAME": table}
	refresher := startFunction(t, "refresher", env)
	tokenFn := startFunction(t, "token", env)
	refreshes, reuses := stack.Sina.RefreshCalls(), stack.Sina.RefreshReuses()

	// Token requests run against the same connections during the tick.
	stop := make(chan struct{})
	var served atomic.Int64
	var readers sync.WaitGroup
	for w := 0; w < 2; w++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				resp := tokenOf(t, tokenFn, devstack.SinaCloud, fmt.Sprintf("bulk-%04d", (i*37+w*500)%n), "")
				if resp.StatusCode != 200 {
					t.Errorf("token during tick: %d %s", resp.StatusCode, resp.Body)
					return
				}
				served.Add(1)
			}
		}()
	}
	t0 := time.Now()
	out, err := refresher.Invoke(context.Background(), []byte(`{"version":"0","detail-type":"Scheduled Event","source":"aws.events","detail":{}}`))
	elapsed := time.Since(t0)
	close(stop)
	readers.Wait()
	if err != nil {
		t.Fatal(err)
	}
	var sum broker.Summary
	if err := json.Unmarshal(out, &sum); err != nil {
		t.Fatalf("summary %s: %v", out, err)
	}
	if sum.Due != n || sum.Refreshed != n || sum.FailedTransient != 0 || sum.NeedsReauth != 0 || sum.SkippedLocked != 0 {
		t.Fatalf("summary %+v, want %d due and refreshed", sum, n)
	}
	if got := stack.Sina.RefreshCalls() - refreshes; got != n {
		t.Fatalf("provider refresh calls %d, want exactly %d", got, n)
	}
	if got := stack.Sina.RefreshReuses() - reuses; got != 0 {
		t.Fatalf("refresh-token reuses %d, want 0", got)
	}
	t.Logf("refresher: %d connections in %v (%.0f/s) with %d token requests served meanwhile", n, elapsed, float64(n)/elapsed.Seconds(), served.Load())

	// Every connection now holds a fresh token, once, and nothing is due.
	stillDue := 0
	if err := st.ScanDue(context.Background(), devstack.SinaCloud, time.Now(), func(*store.DueItem) error { stillDue++; return nil }); err != nil {
		t.Fatal(err)
	}
	if stillDue != 0 {
		t.Fatalf("%d connections still due after the tick", stillDue)
	}
	out, err = refresher.Invoke(context.Background(), []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(out, &sum)
	if sum.Due != 0 || stack.Sina.RefreshCalls()-refreshes != n {
		t.Fatalf("second tick: %+v, provider calls %d", sum, stack.Sina.RefreshCalls()-refreshes)
	}
}
