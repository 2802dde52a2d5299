package store

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"golang.org/x/sync/errgroup"
)

// Broken is a due item that could not be decoded; the refresher reports it
// and moves on instead of failing the whole tick.
type Broken struct {
	PK  string
	Err error
}

// DueResult is what Due found.
type DueResult struct {
	Connections []*Connection
	Broken      []Broken
}

// Due returns connections whose refresh_at is at or before now, querying
// every shard of the due index in parallel and following every page. limit
// caps the total (0: no cap). The index is eventually consistent: callers
// treat the version they get as a hint the lease condition will check.
func (s *Store) Due(ctx context.Context, now time.Time, limit int) (*DueResult, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	shards := s.shards()
	perShard := make([]DueResult, shards)
	g, gctx := errgroup.WithContext(ctx)
	for i := 0; i < shards; i++ {
		g.Go(func() error {
			return s.queryShard(gctx, strconv.Itoa(i), now, limit, &perShard[i])
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := &DueResult{}
	for _, r := range perShard {
		out.Connections = append(out.Connections, r.Connections...)
		out.Broken = append(out.Broken, r.Broken...)
	}
	if limit > 0 && len(out.Connections) > limit {
		out.Connections = out.Connections[:limit]
	}
	return out, nil
}

func (s *Store) queryShard(ctx context.Context, shard string, now time.Time, limit int, into *DueResult) error {
	kc := expression.Key("due_shard").Equal(expression.Value(shard)).
		And(expression.Key("refresh_at").LessThanEqual(expression.Value(now.Unix())))
	e, err := buildExpr(expression.NewBuilder().WithKeyCondition(kc))
	if err != nil {
		return err
	}
	p := dynamodb.NewQueryPaginator(s.DB, &dynamodb.QueryInput{
		TableName: aws.String(s.Table), IndexName: aws.String(DueIndex),
		KeyConditionExpression: e.KeyCondition(), ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
		Limit: pageLimit(s.DuePageSize),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("store: query due shard %s: %w", shard, err)
		}
		for _, av := range page.Items {
			c, err := s.fromItem(av)
			if err != nil {
				pk := ""
				if v, ok := av["pk"].(*types.AttributeValueMemberS); ok {
					pk = v.Value
				}
				into.Broken = append(into.Broken, Broken{PK: pk, Err: err})
				continue
			}
			into.Connections = append(into.Connections, c)
		}
		if limit > 0 && len(into.Connections) >= limit {
			break
		}
	}
	return nil
}

func pageLimit(n int32) *int32 {
	if n <= 0 {
		return nil
	}
	return &n
}
