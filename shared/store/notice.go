package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Notice is an announcement (a lifecycle event) written in the same
// transaction as the state change it announces, so the change cannot
// happen without it. Whoever made the change publishes it and deletes it;
// if that process dies first, the notice is due in the index a little
// later and the refresher publishes it. Delivery is at least once.
type Notice struct {
	ID         string
	Key        Key
	DetailType string
	Detail     []byte
	CreatedAt  time.Time
	// DueAt is when the refresher publishes it if nobody did before.
	DueAt time.Time
}

// NoticeGrace is how long a notice is left to the process that wrote it
// before the refresher publishes it.
const NoticeGrace = 30 * time.Second

// noticePrefix is a notice's key prefix.
const noticePrefix = "notice#"

// noticeShard prefixes a notice's due-index shard. Connections are filed
// under "{provider}#{n}"; a provider name cannot hold '#', so no provider
// (not even one called "notice") shares a shard with notices.
const noticeShard = "#notice#"

type noticeItem struct {
	PK         string `dynamodbav:"pk"`
	Type       string `dynamodbav:"type"`
	Provider   string `dynamodbav:"provider"`
	Connection string `dynamodbav:"connection"`
	DetailType string `dynamodbav:"detail_type"`
	Detail     string `dynamodbav:"detail"`
	CreatedAt  int64  `dynamodbav:"created_at"`
	DueShard   string `dynamodbav:"due_shard"`
	RefreshAt  int64  `dynamodbav:"refresh_at"`
	TTL        int64  `dynamodbav:"ttl"`
}

// NewNotice builds a notice about k, due for the refresher after NoticeGrace.
func (s *Store) NewNotice(k Key, detailType string, detail []byte) Notice {
	now := s.now()
	return Notice{ID: NewWriteID(), Key: k, DetailType: detailType, Detail: detail, CreatedAt: now, DueAt: now.Add(NoticeGrace)}
}

func (s *Store) noticeItem(n Notice) (map[string]types.AttributeValue, error) {
	if n.ID == "" || n.DetailType == "" || len(n.Detail) > 64<<10 {
		return nil, fmt.Errorf("%w: a notice needs an id, a detail type and a detail under 64 KiB", ErrInvalid)
	}
	pk := noticePrefix + n.ID
	av, err := attributevalue.MarshalMap(noticeItem{PK: pk, Type: "notice", Provider: n.Key.Provider, Connection: n.Key.Connection,
		DetailType: n.DetailType, Detail: string(n.Detail), CreatedAt: n.CreatedAt.Unix(),
		DueShard: noticeShard + s.shardNumber(pk), RefreshAt: n.DueAt.Unix(),
		// Kept a week at most: an announcement nobody could deliver for that long is moot.
		TTL: n.CreatedAt.Add(7 * 24 * time.Hour).Unix()})
	if err != nil {
		return nil, fmt.Errorf("store: marshal notice: %w", err)
	}
	return av, nil
}

// DeleteNotice removes a published notice; deleting one that is gone is
// not an error.
func (s *Store) DeleteNotice(ctx context.Context, id string) error {
	if err := s.check(); err != nil {
		return err
	}
	if _, err := s.DB.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(s.Table), Key: keyAttr(noticePrefix + id)}); err != nil {
		return fmt.Errorf("store: delete notice: %w", err)
	}
	return nil
}

// ClaimNotice takes a due notice for the caller to publish, so that two
// refreshers running at once (a retried or overlapping tick) cannot both
// send it: a compare-and-set on the time it became due, which also hides
// it from scans until until. false: someone else has it, or it is gone.
func (s *Store) ClaimNotice(ctx context.Context, n *Notice, until time.Time) (bool, error) {
	if err := s.check(); err != nil {
		return false, err
	}
	e, err := buildExpr(expression.NewBuilder().
		WithCondition(expression.Name("refresh_at").Equal(expression.Value(n.DueAt.Unix()))).
		WithUpdate(expression.Set(expression.Name("refresh_at"), expression.Value(until.Unix()))))
	if err != nil {
		return false, err
	}
	_, err = s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(s.Table), Key: keyAttr(noticePrefix + n.ID),
		ConditionExpression: e.Condition(), UpdateExpression: e.Update(), ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values()})
	var ccf *types.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: claim notice: %w", err)
	}
	n.DueAt = until
	return true, nil
}

// ScanNotices calls visit with every notice due at now, page by page.
func (s *Store) ScanNotices(ctx context.Context, now time.Time, visit func(*Notice) error) error {
	if err := s.check(); err != nil {
		return err
	}
	for shard := 0; shard < MaxDueShards; shard++ {
		err := s.queryDue(ctx, noticeShard+fmt.Sprint(shard), now, func(av map[string]types.AttributeValue) error {
			var it noticeItem
			if err := attributevalue.UnmarshalMap(av, &it); err != nil || it.Type != "notice" || len(it.PK) <= len(noticePrefix) {
				return nil // not ours to judge; it ages out with its ttl
			}
			return visit(&Notice{ID: it.PK[len(noticePrefix):], Key: Key{Provider: it.Provider, Connection: it.Connection},
				DetailType: it.DetailType, Detail: []byte(it.Detail), CreatedAt: timeOrZero(it.CreatedAt), DueAt: timeOrZero(it.RefreshAt)})
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// queryDue reads one shard of the due index up to now, page by page.
func (s *Store) queryDue(ctx context.Context, shard string, now time.Time, visit func(map[string]types.AttributeValue) error) error {
	kc := expression.Key("due_shard").Equal(expression.Value(shard)).
		And(expression.Key("refresh_at").LessThanEqual(expression.Value(now.Unix())))
	e, err := buildExpr(expression.NewBuilder().WithKeyCondition(kc))
	if err != nil {
		return err
	}
	p := dynamodb.NewQueryPaginator(s.DB, &dynamodb.QueryInput{
		TableName: aws.String(s.Table), IndexName: aws.String(DueIndex),
		KeyConditionExpression: e.KeyCondition(), ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
		Limit: aws.Int32(s.pageSize()),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("store: query due shard %s: %w", shard, err)
		}
		for _, av := range page.Items {
			if err := visit(av); err != nil {
				return err
			}
		}
	}
	return nil
}
