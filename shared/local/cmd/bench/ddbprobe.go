package main

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// writeProbe is what DynamoDB Local does with writes shaped like a
// refresh's (a conditional UpdateItem that moves the item in the due
// index and returns it) from conc writers at once.
type writeProbe struct {
	conc    int
	rate    float64       // writes a second
	latency time.Duration // mean round trip
}

// probeWrites runs conc writers, each on its own item of a fresh table,
// for d, and measures the write rate and the mean round trip.
func probeWrites(ctx context.Context, e *benchEnv, conc int, d time.Duration) (writeProbe, error) {
	table, err := e.table(ctx, "bench-probe")
	if err != nil {
		return writeProbe{}, err
	}
	var n, total atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	start := time.Now()
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pk := "conn#probe#" + strconv.Itoa(w)
			for i := 0; time.Now().Before(end); i++ {
				t0 := time.Now()
				_, err := e.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{
					TableName: aws.String(table), Key: map[string]types.AttributeValue{"pk": &types.AttributeValueMemberS{Value: pk}},
					UpdateExpression:    aws.String("SET n = :n, due_shard = :s, refresh_at = :r"),
					ConditionExpression: aws.String("attribute_not_exists(n) OR n < :n"),
					ExpressionAttributeValues: map[string]types.AttributeValue{
						":n": &types.AttributeValueMemberN{Value: strconv.Itoa(i)},
						":s": &types.AttributeValueMemberS{Value: "probe#" + strconv.Itoa(w%8)},
						":r": &types.AttributeValueMemberN{Value: strconv.FormatInt(time.Now().Unix()+int64(i), 10)},
					},
					ReturnValues: types.ReturnValueAllNew,
				})
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				n.Add(1)
				total.Add(int64(time.Since(t0)))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return writeProbe{}, firstErr
	}
	p := writeProbe{conc: conc, rate: float64(n.Load()) / elapsed.Seconds()}
	if n.Load() > 0 {
		p.latency = time.Duration(total.Load() / n.Load())
	}
	return p, nil
}
