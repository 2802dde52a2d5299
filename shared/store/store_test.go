package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/sealing"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

var endpoints localaws.Endpoints

func TestMain(m *testing.M) { os.Exit(localaws.RunTests(m.Run, &endpoints)) }

func testRing(t testing.TB) *sealing.Ring {
	t.Helper()
	r, err := sealing.NewRing("k1", map[string][]byte{"k1": bytes.Repeat([]byte{7}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// newStore creates a fresh table from template.yaml and a store over it.
func newStore(t testing.TB) (*store.Store, *dynamodb.Client) {
	t.Helper()
	ctx := context.Background()
	db := localaws.DynamoDBClient(endpoints.DynamoDB)
	name := localaws.UniqueName("store")
	if err := localaws.CreateTable(ctx, db, filepath.Join("..", "..", "template.yaml"), name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = db.DeleteTable(context.Background(), &dynamodb.DeleteTableInput{TableName: aws.String(name)})
	})
	return &store.Store{DB: db, Table: name, Ring: testRing(t), Shards: 3}, db
}

func seed(t *testing.T, s *store.Store, k store.Key, access string) *store.Connection {
	t.Helper()
	c := &store.Connection{
		Key: k, Kind: "sinacloud", AccessToken: access, RefreshToken: "refresh-" + access,
		TokenType: "Bearer", ExpiresAt: time.Now().Add(time.Hour).Truncate(time.Second), Status: store.StatusActive,
		Extra: map[string]string{"openid": "o-1"}, RefreshAt: time.Now().Add(50 * time.Minute),
	}
	if err := s.Create(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLeaseRaceExactlyOneWinner(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	k := store.Key{Provider: "sina", Connection: "race"}
	seed(t, s, k, "tok-0")
	const rounds, racers = 20, 50
	for round := 0; round < rounds; round++ {
		c, err := s.Get(ctx, k, true)
		if err != nil {
			t.Fatal(err)
		}
		var wins, refused atomic.Int32
		var winner atomic.Value
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < racers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				owner := fmt.Sprintf("w%d", i)
				_, err := s.AcquireLease(ctx, k, c.Fence(), store.Lease{Owner: owner, Until: time.Now().Add(30 * time.Second)})
				switch {
				case err == nil:
					wins.Add(1)
					winner.Store(owner)
				case errors.Is(err, store.ErrLeaseNotGranted):
					refused.Add(1)
				default:
					t.Errorf("round %d: unexpected error %v", round, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 || refused.Load() != racers-1 {
			t.Fatalf("round %d: %d winners, %d refused; want 1 and %d", round, wins.Load(), refused.Load(), racers-1)
		}
		held, err := s.Get(ctx, k, true)
		if err != nil {
			t.Fatal(err)
		}
		if held.LeaseOwner != winner.Load().(string) {
			t.Fatalf("round %d: stored owner %q, winner %q", round, held.LeaseOwner, winner.Load())
		}
		held.AccessToken = fmt.Sprintf("tok-%d", round+1)
		if err := s.Commit(ctx, held, c.Fence()); err != nil {
			t.Fatalf("round %d: commit: %v", round, err)
		}
	}
	final, _ := s.Get(ctx, k, true)
	if final.Version != rounds || final.AccessToken != fmt.Sprintf("tok-%d", rounds) || final.LeaseOwner != "" {
		t.Fatalf("final = version %d token %q lease %q", final.Version, final.AccessToken, final.LeaseOwner)
	}
}

func TestLeaseExpiresAndCanBeRetaken(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	k := store.Key{Provider: "sina", Connection: "expiry"}
	c := seed(t, s, k, "tok")
	lease := func(v int64, owner string, until time.Time) error {
		_, err := s.AcquireLease(ctx, k, store.Fence{Generation: c.Generation, Version: v}, store.Lease{Owner: owner, Until: until})
		return err
	}
	if err := lease(c.Version, "a", time.Now().Add(-time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	// The first lease is already past: another worker may take it.
	if err := lease(c.Version, "b", time.Now().Add(time.Minute)); err != nil {
		t.Fatalf("expired lease not retaken: %v", err)
	}
	if err := lease(c.Version, "c", time.Now().Add(time.Minute)); !errors.Is(err, store.ErrLeaseNotGranted) {
		t.Fatalf("live lease taken twice: %v", err)
	}
	if err := lease(c.Version+1, "d", time.Now().Add(time.Minute)); !errors.Is(err, store.ErrLeaseNotGranted) {
		t.Fatalf("lease at a version that does not exist: %v", err)
	}
	var ce *store.ConflictError
	if err := lease(c.Version, "e", time.Now().Add(time.Minute)); !errors.As(err, &ce) || ce.Current == nil || ce.Current.LeaseOwner != "b" {
		t.Fatalf("a refused lease must carry the stored item: %v", err)
	}
}

func TestStaleCommitChangesNothing(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	k := store.Key{Provider: "gh", Connection: "alice"}
	seed(t, s, k, "old-token")
	v0, _ := s.Get(ctx, k, true)

	newer := *v0
	newer.AccessToken = "newer-token"
	if err := s.Commit(ctx, &newer, v0.Fence()); err != nil {
		t.Fatal(err)
	}
	older := *v0
	older.AccessToken = "older-token"
	older.RefreshToken = "older-refresh"
	if err := s.Commit(ctx, &older, v0.Fence()); !errors.Is(err, store.ErrVersionConflict) {
		t.Fatalf("stale commit: %v, want ErrVersionConflict", err)
	}
	if err := s.RecordFailure(ctx, k, v0.Fence(), store.Failure{Message: "x", Attempts: 1, NextAttempt: time.Now()}); !errors.Is(err, store.ErrVersionConflict) {
		t.Fatalf("stale RecordFailure: %v", err)
	}
	if err := s.MarkNeedsReauth(ctx, k, v0.Fence(), "x"); !errors.Is(err, store.ErrVersionConflict) {
		t.Fatalf("stale MarkNeedsReauth: %v", err)
	}
	got, _ := s.Get(ctx, k, true)
	if got.AccessToken != "newer-token" || got.RefreshToken != "refresh-old-token" || got.Version != v0.Version+1 ||
		got.Status != store.StatusActive || got.LastError != "" {
		t.Fatalf("after stale writes: %+v", got)
	}
}

func TestFailureAndNeedsReauthLeaveDueIndex(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now()
	a := store.Key{Provider: "p", Connection: "a"}
	b := store.Key{Provider: "p", Connection: "b"}
	for _, k := range []store.Key{a, b} {
		c := seed(t, s, k, "t-"+k.Connection)
		c.RefreshAt = now.Add(-time.Minute)
		if err := s.Commit(ctx, c, c.Fence()); err != nil {
			t.Fatal(err)
		}
	}
	due := dueKeys(t, s, now)
	if len(due) != 2 {
		t.Fatalf("due = %v, want a and b", due)
	}
	ca, _ := s.Get(ctx, a, true)
	if err := s.RecordFailure(ctx, a, ca.Fence(), store.Failure{Message: "provider 503", Attempts: 1, NextAttempt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	cb, _ := s.Get(ctx, b, true)
	if err := s.MarkNeedsReauth(ctx, b, cb.Fence(), "invalid_grant"); err != nil {
		t.Fatal(err)
	}
	if due := dueKeys(t, s, now); len(due) != 0 {
		t.Fatalf("due after failure and needs_reauth = %v, want none", due)
	}
	if due := dueKeys(t, s, now.Add(2*time.Hour)); len(due) != 1 || due[0] != "p/a" {
		t.Fatalf("due in 2h = %v, want only p/a (b needs reauth)", due)
	}
	ga, _ := s.Get(ctx, a, true)
	if ga.AccessToken != "t-a" || ga.Attempts != 1 || ga.LastError != "provider 503" || ga.Version != ca.Version+1 {
		t.Fatalf("after failure: %+v", ga)
	}
	gb, _ := s.Get(ctx, b, true)
	if gb.Status != store.StatusNeedsReauth || gb.LastError != "invalid_grant" || !gb.RefreshAt.IsZero() {
		t.Fatalf("after needs_reauth: %+v", gb)
	}
}

func dueKeys(t *testing.T, s *store.Store, now time.Time) []string {
	t.Helper()
	var keys []string
	err := s.ScanDue(context.Background(), "p", now, func(d *store.DueItem) error {
		if d.Err != nil {
			t.Errorf("due item %s: %v", d.PK, d.Err)
		}
		keys = append(keys, d.Key.String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestDueAcrossShardsWithPagination(t *testing.T) {
	s, db := newStore(t)
	s.DuePageSize = 4
	ctx := context.Background()
	now := time.Now()
	const n = 45
	for i := 0; i < n; i++ {
		c := &store.Connection{Key: store.Key{Provider: "p", Connection: fmt.Sprintf("c%02d", i)}, AccessToken: "t",
			RefreshToken: "r", Status: store.StatusActive, RefreshAt: now.Add(-time.Duration(i) * time.Second)}
		if err := s.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	// Not yet due, and not refreshable: both stay out of the result.
	if err := s.Create(ctx, &store.Connection{Key: store.Key{Provider: "p", Connection: "later"}, AccessToken: "t", RefreshAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, &store.Connection{Key: store.Key{Provider: "p", Connection: "norefresh"}, AccessToken: "t"}); err != nil {
		t.Fatal(err)
	}
	// Another provider's due connection is not in this provider's scan.
	if err := s.Create(ctx, &store.Connection{Key: store.Key{Provider: "q", Connection: "c00"}, AccessToken: "t",
		RefreshToken: "r", Status: store.StatusActive, RefreshAt: now.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, k := range dueKeys(t, s, now) {
		seen[k]++
	}
	if len(seen) != n {
		t.Fatalf("due returned %d distinct, want %d: %v", len(seen), n, seen)
	}
	for k, times := range seen {
		if times != 1 || !strings.HasPrefix(k, "p/c") {
			t.Fatalf("due %s seen %d times", k, times)
		}
	}
	// Every shard must hold some of them, or the test proves nothing about shards.
	for shard := 0; shard < 3; shard++ {
		out, err := db.Query(ctx, &dynamodb.QueryInput{TableName: aws.String(s.Table), IndexName: aws.String(store.DueIndex),
			KeyConditionExpression:    aws.String("due_shard = :s"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":s": &types.AttributeValueMemberS{Value: fmt.Sprintf("p#%d", shard)}}})
		if err != nil {
			t.Fatal(err)
		}
		if out.Count == 0 {
			t.Fatalf("shard p#%d is empty", shard)
		}
	}
	// The scan stops when the visitor says so, within one page.
	visited := 0
	stop := errors.New("enough")
	if err := s.ScanDue(ctx, "p", now, func(*store.DueItem) error {
		visited++
		if visited == 10 {
			return stop
		}
		return nil
	}); !errors.Is(err, stop) || visited != 10 {
		t.Fatalf("stopped scan: %d visited, %v", visited, err)
	}
}

func TestStateIsSingleUseAndExpires(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now()
	clock := now
	s.Now = func() time.Time { return clock }
	st := &store.State{Key: store.Key{Provider: "gh", Connection: "alice"}, Verifier: "verifier-abc",
		ReturnTo: "https://app.example/done", RedirectURI: "https://api.example/callback/gh",
		Scopes: []string{"repo"}, CreatedAt: now, ExpiresAt: now.Add(10 * time.Minute)}
	value := "state-value-0123456789abcdef"
	if err := s.PutState(ctx, value, st); err != nil {
		t.Fatal(err)
	}
	got, err := s.ConsumeState(ctx, value)
	if err != nil {
		t.Fatal(err)
	}
	if got.Verifier != "verifier-abc" || got.ReturnTo != st.ReturnTo || got.Provider != "gh" || got.Connection != "alice" || len(got.Scopes) != 1 {
		t.Fatalf("consumed %+v", got)
	}
	if _, err := s.ConsumeState(ctx, value); !errors.Is(err, store.ErrStateInvalid) {
		t.Fatalf("second consume: %v, want ErrStateInvalid", err)
	}

	expiring := "state-value-expiring-000000"
	st.ExpiresAt = now.Add(time.Minute)
	if err := s.PutState(ctx, expiring, st); err != nil {
		t.Fatal(err)
	}
	clock = now.Add(2 * time.Minute) // DynamoDB has not deleted it: the store must refuse it itself.
	if _, err := s.ConsumeState(ctx, expiring); !errors.Is(err, store.ErrStateInvalid) {
		t.Fatalf("expired consume: %v, want ErrStateInvalid", err)
	}
	for _, bad := range []string{"", "short", strings.Repeat("x", 600), "never-stored-state-value-123"} {
		if _, err := s.ConsumeState(ctx, bad); !errors.Is(err, store.ErrStateInvalid) {
			t.Fatalf("consume %.20q: %v", bad, err)
		}
	}
}

func TestNoPlaintextTokenInTable(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	secrets := []string{"ACCESS-PLAINTEXT-1", "REFRESH-PLAINTEXT-1", "VERIFIER-PLAINTEXT-1"}
	if err := s.Create(ctx, &store.Connection{Key: store.Key{Provider: "gh", Connection: "a"}, AccessToken: secrets[0], RefreshToken: secrets[1]}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutState(ctx, "state-value-xyz-0123456789", &store.State{Key: store.Key{Provider: "gh", Connection: "a"},
		Verifier: secrets[2], ExpiresAt: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	out, err := db.Scan(ctx, &dynamodb.ScanInput{TableName: aws.String(s.Table)})
	if err != nil {
		t.Fatal(err)
	}
	if out.Count != 2 {
		t.Fatalf("scanned %d items, want 2", out.Count)
	}
	dump := fmt.Sprintf("%#v", out.Items)
	for _, item := range out.Items {
		for _, v := range item {
			dump += fmt.Sprintf("%v", v)
		}
	}
	for _, secret := range append(secrets, "state-value-xyz") {
		if strings.Contains(dump, secret) {
			t.Fatalf("raw table contains %q", secret)
		}
	}
}

func TestSealedValueCopiedToAnotherItemDoesNotOpen(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	seed(t, s, store.Key{Provider: "gh", Connection: "a"}, "token-a")
	seed(t, s, store.Key{Provider: "gh", Connection: "b"}, "token-b")
	a, err := db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(s.Table), Key: map[string]types.AttributeValue{"pk": &types.AttributeValueMemberS{Value: "conn#gh#a"}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(s.Table),
		Key:                       map[string]types.AttributeValue{"pk": &types.AttributeValueMemberS{Value: "conn#gh#b"}},
		UpdateExpression:          aws.String("SET access_token = :a"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":a": a.Item["access_token"]}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, store.Key{Provider: "gh", Connection: "b"}, true); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("copied sealed value opened: %v", err)
	}
}

func TestBadInputIsAnErrorNotAPanic(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	good := store.Key{Provider: "gh", Connection: "ok"}
	long := strings.Repeat("a", 129)
	for name, k := range map[string]store.Key{"empty provider": {Connection: "c"}, "empty connection": {Provider: "p"},
		"slash": {Provider: "p/q", Connection: "c"}, "hash": {Provider: "p#", Connection: "c"}, "too long": {Provider: long, Connection: "c"},
		"unicode": {Provider: "pé", Connection: "c"}} {
		t.Run(name, func(t *testing.T) {
			if _, err := s.Get(ctx, k, false); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("Get: %v", err)
			}
			if err := s.Create(ctx, &store.Connection{Key: k}); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("Create: %v", err)
			}
			if _, err := s.AcquireLease(ctx, k, store.Fence{}, store.Lease{Owner: "o", Until: time.Now()}); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("AcquireLease: %v", err)
			}
			if err := s.MarkNeedsReauth(ctx, k, store.Fence{}, "r"); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("MarkNeedsReauth: %v", err)
			}
			if err := s.RecordFailure(ctx, k, store.Fence{}, store.Failure{}); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("RecordFailure: %v", err)
			}
			if err := s.Delete(ctx, k, nil); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("Delete: %v", err)
			}
		})
	}
	if err := s.Create(ctx, &store.Connection{Key: good, AccessToken: strings.Repeat("x", sealing.MaxPlaintext+1)}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("oversized token: %v", err)
	}
	many := map[string]string{}
	for i := 0; i <= store.MaxExtra; i++ {
		many[fmt.Sprint(i)] = "v"
	}
	if err := s.Create(ctx, &store.Connection{Key: good, Extra: many}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("too many extras: %v", err)
	}
	if _, err := s.AcquireLease(ctx, good, store.Fence{}, store.Lease{Until: time.Now()}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("empty owner: %v", err)
	}
	if _, err := s.CountCall(ctx, "", "2026-11-23", 10); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("quota without provider: %v", err)
	}
	if err := s.PutState(ctx, "short", &store.State{Key: good, ExpiresAt: time.Now()}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("short state: %v", err)
	}
	if err := s.PutState(ctx, "long-enough-state-value", &store.State{Key: good}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("state without expiry: %v", err)
	}
	var unconfigured *store.Store
	if _, err := unconfigured.Get(ctx, good, false); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("nil store: %v", err)
	}
	if _, err := s.AcquireLease(ctx, store.Key{Provider: "gh", Connection: "missing"}, store.Fence{}, store.Lease{Owner: "o", Until: time.Now()}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("lease on a missing item: %v", err)
	}
	if _, err := s.Get(ctx, store.Key{Provider: "gh", Connection: "missing"}, false); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing: %v", err)
	}

	// Wrong types in stored items: written behind the store's back.
	for name, attrs := range map[string]map[string]types.AttributeValue{
		"version is a string": {"version": &types.AttributeValueMemberS{Value: "seven"}},
		"token is a number":   {"access_token": &types.AttributeValueMemberN{Value: "1"}},
		"token not sealed":    {"access_token": &types.AttributeValueMemberS{Value: "plain"}},
		"extra is a list":     {"extra": &types.AttributeValueMemberL{}},
		"not a connection":    {"type": &types.AttributeValueMemberS{Value: "state"}},
	} {
		t.Run(name, func(t *testing.T) {
			item := map[string]types.AttributeValue{
				"pk": &types.AttributeValueMemberS{Value: "conn#gh#weird"}, "type": &types.AttributeValueMemberS{Value: "connection"},
				"provider": &types.AttributeValueMemberS{Value: "gh"}, "connection": &types.AttributeValueMemberS{Value: "weird"},
				"status": &types.AttributeValueMemberS{Value: "active"}, "version": &types.AttributeValueMemberN{Value: "1"},
			}
			for k, v := range attrs {
				item[k] = v
			}
			if _, err := db.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(s.Table), Item: item}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Get(ctx, store.Key{Provider: "gh", Connection: "weird"}, true); !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("Get: %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestQuotaBudget(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		n, err := s.CountCall(ctx, "wechat:wx1", "2026-11-23", 3)
		if err != nil || n != i {
			t.Fatalf("call %d: count %d, %v", i, n, err)
		}
	}
	if _, err := s.CountCall(ctx, "wechat:wx1", "2026-11-23", 3); !errors.Is(err, store.ErrQuotaExhausted) {
		t.Fatalf("4th call of 3: %v", err)
	}
	if n, err := s.CountCall(ctx, "wechat:wx1", "2026-11-24", 3); err != nil || n != 1 {
		t.Fatalf("next day: %d, %v", n, err)
	}
	for _, bad := range []string{"wechat:", "a b", "2026-13-01"} {
		if _, err := s.CountCall(ctx, bad, bad, 3); !errors.Is(err, store.ErrInvalid) {
			t.Fatalf("counter %q: %v", bad, err)
		}
	}
	if n, err := s.CountCall(ctx, "wechat:other", "2026-11-23", 3); err != nil || n != 1 {
		t.Fatalf("other app: %d, %v", n, err)
	}
}

// refreshed_ms refines refreshed_at only while the two agree: a writer
// that knows only refreshed_at (an older version during a deploy, an
// operator's repair) must not be overruled by a stale refreshed_ms.
func TestRefreshedMillisecondsOnlyWhileTheyAgree(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	k := store.Key{Provider: "p", Connection: "ms"}
	at := time.UnixMilli(time.Now().UnixMilli())
	if err := s.Create(ctx, &store.Connection{Key: k, Status: store.StatusActive, AccessToken: "a", RefreshedAt: at}); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Get(ctx, k, true); !c.RefreshedAt.Equal(at) {
		t.Fatalf("refreshed_at %v, want %v to the millisecond", c.RefreshedAt, at)
	}
	later := at.Add(-time.Hour).Unix()
	if _, err := s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(s.Table),
		Key:                       map[string]types.AttributeValue{"pk": &types.AttributeValueMemberS{Value: "conn#p#ms"}},
		UpdateExpression:          aws.String("SET refreshed_at = :r"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":r": &types.AttributeValueMemberN{Value: strconv.FormatInt(later, 10)}}}); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Get(ctx, k, true); c.RefreshedAt.Unix() != later {
		t.Fatalf("refreshed_at %v after a seconds-only write, want %v", c.RefreshedAt, time.Unix(later, 0))
	}
}
