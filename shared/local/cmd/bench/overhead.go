package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/tokenbroker/tokenbroker/shared/httpapi"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// benchTokenOverhead compares the token handler serving a valid token
// (event parse, IAM check, consistent GetItem, unseal, JSON, audit log)
// with a bare consistent GetItem of the same item on the same client.
func benchTokenOverhead(ctx context.Context, e *benchEnv, rep *report, quick bool) error {
	table, err := e.table(ctx, "bench-overhead")
	if err != nil {
		return err
	}
	st := e.store(e.db, table)
	k := store.Key{Provider: devstack.OAuth2, Connection: "overhead"}
	if err := st.Create(ctx, &store.Connection{Key: k, Kind: "oauth2", AccessToken: "bench-access-token-0123456789", RefreshToken: "r",
		TokenType: "Bearer", ExpiresAt: time.Now().Add(24 * time.Hour), Status: store.StatusActive}); err != nil {
		return err
	}
	b := e.broker(e.db, table)
	h := &httpapi.Handler{Core: b, Log: b.Log}
	raw, err := os.ReadFile(filepath.Join(e.root, "events", "token.json"))
	if err != nil {
		return err
	}
	var ev map[string]any
	_ = json.Unmarshal(raw, &ev)
	ev["rawPath"] = "/connections/oauth2/overhead/token"
	ev["pathParameters"] = map[string]any{"provider": devstack.OAuth2, "connection": "overhead"}
	event, _ := json.Marshal(ev)
	handler := func() error {
		resp, err := h.Connections(ctx, event)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("handler answered %d: %s", resp.StatusCode, resp.Body)
		}
		return err
	}
	key := map[string]types.AttributeValue{"pk": &types.AttributeValueMemberS{Value: "conn#oauth2#overhead"}}
	getItem := func() error {
		_, err := e.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(table), Key: key, ConsistentRead: aws.Bool(true)})
		return err
	}
	if err := handler(); err != nil {
		return err
	}
	rounds := 5
	if quick {
		rounds = 2
	}
	var hNs, gNs []float64
	var hRes, gRes testing.BenchmarkResult
	var failure error
	bench := func(f func() error) testing.BenchmarkResult {
		return testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if err := f(); err != nil {
					failure = err
					b.FailNow()
				}
			}
		})
	}
	for i := 0; i < rounds; i++ { // interleaved, so drift hits both alike
		hRes = bench(handler)
		gRes = bench(getItem)
		hNs = append(hNs, float64(hRes.NsPerOp()))
		gNs = append(gNs, float64(gRes.NsPerOp()))
	}
	if failure != nil {
		return failure
	}
	samples := 2000
	if quick {
		samples = 300
	}
	var hLat, gLat []time.Duration
	for i := 0; i < samples; i++ {
		t0 := time.Now()
		_ = handler()
		hLat = append(hLat, time.Since(t0))
		t0 = time.Now()
		_ = getItem()
		gLat = append(gLat, time.Since(t0))
	}
	ratio := median(hNs) / median(gNs)
	rep.add("1. Token retrieval overhead", fmt.Sprintf(`
The token handler serving a valid token, in process (event parse, IAM check,
one consistent GetItem, AES-GCM open, JSON, audit log line), against a bare
consistent GetItem of the same item through the same SDK client and DynamoDB
Local. %d interleaved `+"`testing.Benchmark`"+` rounds; medians.

| | median per request | p50 | p99 | allocs/op | bytes/op |
|---|---|---|---|---|---|
| token handler | %s | %s | %s | %d | %d |
| raw GetItem | %s | %s | %s | %d | %d |

**Ratio of medians: %.3f** (target ≤ 1.15). Per-request latencies from %d sequential requests each.
`, rounds, ms(time.Duration(median(hNs))), ms(percentile(hLat, 0.5)), ms(percentile(hLat, 0.99)), hRes.AllocsPerOp(), hRes.AllocedBytesPerOp(),
		ms(time.Duration(median(gNs))), ms(percentile(gLat, 0.5)), ms(percentile(gLat, 0.99)), gRes.AllocsPerOp(), gRes.AllocedBytesPerOp(),
		ratio, samples))
	return nil
}
