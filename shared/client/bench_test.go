package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
)

// BenchmarkTokenSource: many goroutines of one process calling Token on
// one TokenSource during one token lifetime (WeChat's global token lives
// two hours) reach the broker exactly once; ns/op is the cached path.
func BenchmarkTokenSource(b *testing.B) {
	c, counter := newClient(b, local)
	ts := c.TokenSource(context.Background(), devstack.WeChatMP, "app", 5*time.Minute)
	b.SetParallelism(50) // 50 goroutines per GOMAXPROCS
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ts.Token(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	expectRequests(b, counter, 1)
	b.ReportMetric(float64(counter.n.Load()), "broker-requests")
}

// BenchmarkToken is one uncached request per op: SigV4, the local API
// Gateway stand-in, the token function and DynamoDB Local.
func BenchmarkToken(b *testing.B) {
	c, counter := newClient(b, local)
	ctx := context.Background()
	for b.Loop() {
		if _, err := c.Token(ctx, devstack.WeChatMP, "app", 5*time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(counter.n.Load())/float64(b.N), "broker-requests/op")
}
