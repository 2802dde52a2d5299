package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/sealing"
	"github.com/tokenbroker/tokenbroker/shared/setup"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// countingDB counts the DynamoDB calls the store makes.
type countingDB struct {
	store.DynamoDB
	gets, puts, updates, deletes, queries atomic.Int64
}

func (c *countingDB) GetItem(ctx context.Context, in *dynamodb.GetItemInput, o ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error) {
	c.gets.Add(1)
	return c.DynamoDB.GetItem(ctx, in, o...)
}
func (c *countingDB) PutItem(ctx context.Context, in *dynamodb.PutItemInput, o ...func(*dynamodb.Options)) (*dynamodb.PutItemOutput, error) {
	c.puts.Add(1)
	return c.DynamoDB.PutItem(ctx, in, o...)
}
func (c *countingDB) UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, o ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	c.updates.Add(1)
	return c.DynamoDB.UpdateItem(ctx, in, o...)
}
func (c *countingDB) DeleteItem(ctx context.Context, in *dynamodb.DeleteItemInput, o ...func(*dynamodb.Options)) (*dynamodb.DeleteItemOutput, error) {
	c.deletes.Add(1)
	return c.DynamoDB.DeleteItem(ctx, in, o...)
}
func (c *countingDB) Query(ctx context.Context, in *dynamodb.QueryInput, o ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error) {
	c.queries.Add(1)
	return c.DynamoDB.Query(ctx, in, o...)
}

type counts struct{ gets, puts, updates, deletes, queries int64 }

func (c *countingDB) snapshot() counts {
	return counts{c.gets.Load(), c.puts.Load(), c.updates.Load(), c.deletes.Load(), c.queries.Load()}
}

func (a counts) minus(b counts) counts {
	return counts{a.gets - b.gets, a.puts - b.puts, a.updates - b.updates, a.deletes - b.deletes, a.queries - b.queries}
}

func (a counts) writes() int64 { return a.puts + a.updates + a.deletes }

// benchEnv is what every benchmark shares.
type benchEnv struct {
	stack      *devstack.Stack
	root       string
	db         *dynamodb.Client
	ring       *sealing.Ring
	loader     *config.Loader
	bootstraps map[string]string
	tmp        string
}

func newEnv(ctx context.Context, stack *devstack.Stack, root string) (*benchEnv, error) {
	loader := &config.Loader{SSM: localaws.SSMClient(stack.Endpoints.SSM), Prefix: stack.Prefix}
	snap, err := loader.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	ring, err := snap.Ring()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "tokenbroker-bench-")
	if err != nil {
		return nil, err
	}
	e := &benchEnv{stack: stack, root: root, db: localaws.DynamoDBClient(stack.Endpoints.DynamoDB), ring: ring, loader: loader,
		bootstraps: map[string]string{}, tmp: tmp}
	for _, fn := range []string{"authorize", "callback", "token", "refresher", "worker"} {
		out := filepath.Join(tmp, "local", fn, "bootstrap")
		cmd := exec.Command("go", "build", "-tags", "lambda.norpc", "-trimpath", "-ldflags=-s -w", "-o", out, "./functions/"+fn)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s: %v\n%s", fn, err, b)
		}
		e.bootstraps[fn] = out
	}
	return e, nil
}

func (e *benchEnv) close() { os.RemoveAll(e.tmp) }

// table creates a fresh table from template.yaml.
func (e *benchEnv) table(ctx context.Context, prefix string) (string, error) {
	name := localaws.UniqueName(prefix)
	return name, localaws.CreateTable(ctx, e.db, filepath.Join(e.root, "template.yaml"), name)
}

// broker builds an in-process broker over db; each one is a separate
// "instance" with its own lease owner.
func (e *benchEnv) broker(db store.DynamoDB, table string) *broker.Broker {
	return &broker.Broker{
		Store:  &store.Store{DB: db, Table: table, Shards: 8},
		Config: e.loader, HTTP: setup.ProviderHTTP(),
		Log: slog.New(slog.NewJSONHandler(io.Discard, nil)),
	}
}

func (e *benchEnv) store(db store.DynamoDB, table string) *store.Store {
	return &store.Store{DB: db, Table: table, Ring: e.ring, Shards: 8}
}

// expiredSina stores a SinaCloud connection whose access token has expired
// and whose refresh token is live at the emulator.
func (e *benchEnv) expiredSina(ctx context.Context, st *store.Store, name string) error {
	access, refresh, _ := e.stack.Sina.IssueGrant()
	now := time.Now()
	return st.Create(ctx, &store.Connection{Key: store.Key{Provider: devstack.SinaCloud, Connection: name}, Kind: "sinacloud",
		AccessToken: access, RefreshToken: refresh, TokenType: "Bearer", ExpiresAt: now.Add(-time.Second),
		RefreshExpiresAt: now.Add(24 * time.Hour), Status: store.StatusActive, CreatedAt: now, RefreshedAt: now})
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p * float64(len(s)-1))
	return s[i]
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
