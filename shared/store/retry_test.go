package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"

	"github.com/tokenbroker/tokenbroker/shared/local/ddbfault"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/setup"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// faultyStore is a store whose SDK client (configured as the functions'
// is) reaches DynamoDB Local through a fault-injecting proxy, and a direct
// one over the same table to look at what really happened.
func faultyStore(t *testing.T) (faulty, direct *store.Store, proxy *ddbfault.Proxy) {
	t.Helper()
	ctx := context.Background()
	proxy, err := ddbfault.Start(endpoints.DynamoDB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	db := localaws.DynamoDBClient(endpoints.DynamoDB)
	name := localaws.UniqueName("retry")
	if err := localaws.CreateTable(ctx, db, filepath.Join("..", "..", "template.yaml"), name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = db.DeleteTable(context.Background(), &dynamodb.DeleteTableInput{TableName: aws.String(name)})
	})
	ring := testRing(t)
	faulty = &store.Store{DB: setup.DynamoDB(localaws.Config(), aws.String(proxy.URL)), Table: name, Ring: ring, Shards: 2}
	direct = &store.Store{DB: db, Table: name, Ring: ring, Shards: 2}
	return faulty, direct, proxy
}

func countNotices(t *testing.T, s *store.Store) int {
	t.Helper()
	n := 0
	if err := s.ScanNotices(context.Background(), time.Now().Add(time.Hour), func(*store.Notice) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// Every conditional write, when DynamoDB applies it and the client only
// sees its connection reset, is re-sent by the SDK; the re-send fails its
// condition, and the store must recognise its own write instead of
// reporting a conflict (or "state already used", or "lease not granted").
func TestEveryConditionalWriteRecognisesItsOwnRetry(t *testing.T) {
	ctx := context.Background()
	reset := ddbfault.Fault{Kind: ddbfault.ResetAfterForward}
	seeded := func(t *testing.T, s *store.Store, name string) *store.Connection {
		c := &store.Connection{Key: store.Key{Provider: "sina", Connection: name}, AccessToken: "a0", RefreshToken: "r0",
			Status: store.StatusActive, ExpiresAt: time.Now().Add(time.Hour), RefreshAt: time.Now().Add(-time.Minute)}
		if err := s.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, c.Key, true)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, tc := range []struct {
		name, op string
		write    func(t *testing.T, faulty, direct *store.Store) error
		check    func(t *testing.T, direct *store.Store)
	}{
		{"create", "PutItem", func(t *testing.T, faulty, _ *store.Store) error {
			return faulty.Create(ctx, &store.Connection{Key: store.Key{Provider: "sina", Connection: "new"}, AccessToken: "a", Status: store.StatusActive})
		}, func(t *testing.T, direct *store.Store) {
			if c, err := direct.Get(ctx, store.Key{Provider: "sina", Connection: "new"}, true); err != nil || c.AccessToken != "a" || c.Generation == "" {
				t.Fatalf("created: %+v %v", c, err)
			}
		}},
		{"lease", "UpdateItem", func(t *testing.T, faulty, direct *store.Store) error {
			c := seeded(t, direct, "lease")
			got, err := faulty.AcquireLease(ctx, c.Key, c.Fence(), store.Lease{Owner: "me/1", Until: time.Now().Add(time.Minute)})
			if err == nil && (got == nil || got.LeaseOwner != "me/1" || got.AccessToken != "a0") {
				t.Fatalf("lease returned %+v", got)
			}
			return err
		}, func(t *testing.T, direct *store.Store) {
			if c, _ := direct.Get(ctx, store.Key{Provider: "sina", Connection: "lease"}, true); c.LeaseOwner != "me/1" {
				t.Fatalf("lease owner %q", c.LeaseOwner)
			}
		}},
		{"commit", "PutItem", func(t *testing.T, faulty, direct *store.Store) error {
			c := seeded(t, direct, "commit")
			next := *c
			next.AccessToken, next.RefreshToken = "a1", "r1"
			return faulty.Commit(ctx, &next, c.Fence())
		}, func(t *testing.T, direct *store.Store) {
			if c, _ := direct.Get(ctx, store.Key{Provider: "sina", Connection: "commit"}, true); c.Version != 1 || c.RefreshToken != "r1" {
				t.Fatalf("committed %+v", c)
			}
		}},
		{"commit with a notice", "TransactWriteItems", func(t *testing.T, faulty, direct *store.Store) error {
			c := seeded(t, direct, "commit-notice")
			next := *c
			next.RefreshToken = "r1"
			w, err := faulty.PrepareCommit(&next, c.Fence(), faulty.NewNotice(c.Key, "Connection Recovered", []byte(`{}`)))
			if err != nil {
				t.Fatal(err)
			}
			return w.Apply(ctx)
		}, func(t *testing.T, direct *store.Store) {
			if c, _ := direct.Get(ctx, store.Key{Provider: "sina", Connection: "commit-notice"}, true); c.Version != 1 || c.RefreshToken != "r1" {
				t.Fatalf("committed %+v", c)
			}
			if n := countNotices(t, direct); n != 1 {
				t.Fatalf("%d notices, want exactly 1", n)
			}
		}},
		{"record failure", "UpdateItem", func(t *testing.T, faulty, direct *store.Store) error {
			c := seeded(t, direct, "failure")
			return faulty.RecordFailure(ctx, c.Key, c.Fence(), store.Failure{Message: "http_503", Attempts: 1, NextAttempt: time.Now().Add(time.Minute)})
		}, func(t *testing.T, direct *store.Store) {
			if c, _ := direct.Get(ctx, store.Key{Provider: "sina", Connection: "failure"}, true); c.Version != 1 || c.Attempts != 1 {
				t.Fatalf("recorded %+v", c)
			}
		}},
		{"needs_reauth with its event", "TransactWriteItems", func(t *testing.T, faulty, direct *store.Store) error {
			c := seeded(t, direct, "reauth")
			w, err := faulty.PrepareNeedsReauth(c.Key, c.Fence(), "invalid_grant", faulty.NewNotice(c.Key, "Connection Needs Reauthorization", []byte(`{}`)))
			if err != nil {
				t.Fatal(err)
			}
			return w.Apply(ctx)
		}, func(t *testing.T, direct *store.Store) {
			if c, _ := direct.Get(ctx, store.Key{Provider: "sina", Connection: "reauth"}, true); c.Status != store.StatusNeedsReauth || c.Version != 1 {
				t.Fatalf("marked %+v", c)
			}
			if n := countNotices(t, direct); n != 1 {
				t.Fatalf("%d notices, want exactly 1", n)
			}
		}},
		{"delete", "DeleteItem", func(t *testing.T, faulty, direct *store.Store) error {
			c := seeded(t, direct, "delete")
			f := c.Fence()
			return faulty.Delete(ctx, c.Key, &f)
		}, func(t *testing.T, direct *store.Store) {
			if _, err := direct.Get(ctx, store.Key{Provider: "sina", Connection: "delete"}, true); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("after delete: %v", err)
			}
		}},
		{"put state", "PutItem", func(t *testing.T, faulty, _ *store.Store) error {
			return faulty.PutState(ctx, "state-put-0123456789abcdef", &store.State{Key: store.Key{Provider: "sina", Connection: "s"}, ExpiresAt: time.Now().Add(time.Minute)})
		}, func(t *testing.T, direct *store.Store) {
			if st, err := direct.ConsumeState(ctx, "state-put-0123456789abcdef"); err != nil || st.Connection != "s" {
				t.Fatalf("stored state: %+v %v", st, err)
			}
		}},
		{"consume state", "UpdateItem", func(t *testing.T, faulty, direct *store.Store) error {
			if err := direct.PutState(ctx, "state-consume-0123456789ab", &store.State{Key: store.Key{Provider: "sina", Connection: "s"},
				Verifier: "v", ExpiresAt: time.Now().Add(time.Minute)}); err != nil {
				t.Fatal(err)
			}
			st, err := faulty.ConsumeState(ctx, "state-consume-0123456789ab")
			if err == nil && (st.Connection != "s" || st.Verifier != "v") {
				t.Fatalf("consumed %+v", st)
			}
			return err
		}, func(t *testing.T, direct *store.Store) {
			if _, err := direct.ConsumeState(ctx, "state-consume-0123456789ab"); !errors.Is(err, store.ErrStateInvalid) {
				t.Fatalf("a consumed state consumed again: %v", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			faulty, direct, proxy := faultyStore(t)
			proxy.Inject(tc.op, reset, 1)
			if err := tc.write(t, faulty, direct); err != nil {
				t.Fatalf("a write that applied reported %v", err)
			}
			if proxy.Injected(tc.op) != 1 || proxy.Forwarded(tc.op) != 2 {
				t.Fatalf("%s: %d faults applied, %d requests reached DynamoDB; want 1 and 2 (the write and its re-send)",
					tc.op, proxy.Injected(tc.op), proxy.Forwarded(tc.op))
			}
			tc.check(t, direct)
		})
	}
}

// A write that really did lose (another writer got there first) is still
// a conflict after a reset: recognition is by this write's own id.
func TestRetriedWriteStillSeesAnotherWritersConflict(t *testing.T) {
	ctx := context.Background()
	faulty, direct, proxy := faultyStore(t)
	k := store.Key{Provider: "sina", Connection: "race"}
	if err := direct.Create(ctx, &store.Connection{Key: k, AccessToken: "a0", RefreshToken: "r0", Status: store.StatusActive}); err != nil {
		t.Fatal(err)
	}
	c, _ := direct.Get(ctx, k, true)
	other := *c
	other.RefreshToken = "theirs"
	if err := direct.Commit(ctx, &other, c.Fence()); err != nil {
		t.Fatal(err)
	}
	mine := *c
	mine.RefreshToken = "mine"
	proxy.Inject("PutItem", ddbfault.Fault{Kind: ddbfault.ResetAfterForward}, 1)
	err := faulty.Commit(ctx, &mine, c.Fence())
	var ce *store.ConflictError
	if !errors.As(err, &ce) || ce.Current == nil || ce.Current.RefreshToken != "theirs" {
		t.Fatalf("stale commit: %v", err)
	}
	if got, _ := direct.Get(ctx, k, true); got.RefreshToken != "theirs" {
		t.Fatalf("stored %q", got.RefreshToken)
	}
}

// Throttling, server errors and a stall longer than one attempt are
// retried by the SDK within one Apply, and the write lands once.
func TestTransientFaultsAreRetried(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		fault ddbfault.Fault
		n     int
	}{
		{"throttled twice", ddbfault.Fault{Kind: ddbfault.Throttle}, 2},
		{"server error twice", ddbfault.Fault{Kind: ddbfault.ServerError}, 2},
		{"reset before forwarding", ddbfault.Fault{Kind: ddbfault.ResetBeforeForward}, 2},
		{"stalled past the attempt timeout after applying", ddbfault.Fault{Kind: ddbfault.StallAfter, Stall: setup.DynamoDBAttemptTimeout + time.Second}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			faulty, direct, proxy := faultyStore(t)
			k := store.Key{Provider: "sina", Connection: "t"}
			if err := direct.Create(ctx, &store.Connection{Key: k, AccessToken: "a0", RefreshToken: "r0", Status: store.StatusActive}); err != nil {
				t.Fatal(err)
			}
			c, _ := direct.Get(ctx, k, true)
			proxy.Inject("PutItem", tc.fault, tc.n)
			next := *c
			next.RefreshToken = "r1"
			if err := faulty.Commit(ctx, &next, c.Fence()); err != nil {
				t.Fatal(err)
			}
			if got, _ := direct.Get(ctx, k, true); got.Version != 1 || got.RefreshToken != "r1" {
				t.Fatalf("stored %+v", got)
			}
			if proxy.Seen("PutItem") != tc.n+1 {
				t.Fatalf("%d PutItem requests, want %d", proxy.Seen("PutItem"), tc.n+1)
			}
		})
	}
}

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&smithy.GenericAPIError{Code: "ProvisionedThroughputExceededException"}, true},
		{&smithy.GenericAPIError{Code: "ThrottlingException"}, true},
		{&smithy.GenericAPIError{Code: "InternalServerError", Fault: smithy.FaultServer}, true},
		{&types.TransactionCanceledException{}, true},
		{context.DeadlineExceeded, true},
		{&smithy.GenericAPIError{Code: "ValidationException", Message: "Item size has exceeded the maximum allowed size"}, false},
		{&smithy.GenericAPIError{Code: "ResourceNotFoundException"}, false},
		{&store.ConflictError{}, false},
		{store.ErrNotFound, false},
		{store.ErrInvalid, false},
		{nil, false},
	} {
		if got := store.Retryable(tc.err); got != tc.want {
			t.Errorf("Retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// replayingDB stands where nothing local reaches: it cancels the first
// transaction for a passing reason, as DynamoDB does on a
// TransactionConflict, and answers any later call with the same client
// request token with the same cancellation (DynamoDB keeps a token's
// outcome for ten minutes). Calls with another token reach DynamoDB Local.
type replayingDB struct {
	store.DynamoDB
	canceled map[string]bool
	calls    int
}

func (r *replayingDB) TransactWriteItems(ctx context.Context, in *dynamodb.TransactWriteItemsInput, opts ...func(*dynamodb.Options)) (*dynamodb.TransactWriteItemsOutput, error) {
	r.calls++
	token := aws.ToString(in.ClientRequestToken)
	if len(r.canceled) == 0 || r.canceled[token] {
		r.canceled[token] = true
		return nil, &types.TransactionCanceledException{Message: aws.String("Transaction cancelled"),
			CancellationReasons: []types.CancellationReason{{Code: aws.String("TransactionConflict")}, {Code: aws.String("None")}}}
	}
	return r.DynamoDB.TransactWriteItems(ctx, in, opts...)
}

// A transaction canceled for a passing reason is retried under a client
// request token of its own, so a replayed cancellation cannot hold it up
// until the hold ends; the write id still recognises an applied attempt.
func TestCanceledTransactionIsRetriedUnderANewToken(t *testing.T) {
	ctx := context.Background()
	_, direct, _ := faultyStore(t)
	k := store.Key{Provider: "p", Connection: "conflict"}
	c := &store.Connection{Key: k, Status: store.StatusActive, AccessToken: "a", RefreshToken: "r", ExpiresAt: time.Now().Add(time.Hour)}
	if err := direct.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	db := &replayingDB{DynamoDB: direct.DB, canceled: map[string]bool{}}
	s := *direct
	s.DB = db
	notice := store.Notice{ID: "n-conflict", Key: k, DetailType: "Connection Needs Reauthorization", Detail: []byte(`{}`), CreatedAt: time.Now(), DueAt: time.Now()}
	w, err := s.PrepareNeedsReauth(k, c.Fence(), "refused", notice)
	if err != nil {
		t.Fatal(err)
	}
	first := w.Apply(ctx)
	if first == nil || !store.Retryable(first) {
		t.Fatalf("first attempt: %v, want a retryable cancellation", first)
	}
	if err := w.Apply(ctx); err != nil {
		t.Fatalf("retry after a canceled transaction: %v", err)
	}
	got, err := direct.Get(ctx, k, true)
	if err != nil || got.Status != store.StatusNeedsReauth || db.calls != 2 {
		t.Fatalf("stored %+v, %v; %d calls", got, err, db.calls)
	}
}
