package store

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
)

// ConnectionsIndex is the GSI that lists one provider's connections by name.
const ConnectionsIndex = "connections"

// Listed is a connection as the list shows it: no token, nothing sealed.
type Listed struct {
	Key
	Status      Status
	ExpiresAt   time.Time
	RefreshedAt time.Time
	LastError   string
	Metadata    map[string]string
}

type listedItem struct {
	Provider    string            `dynamodbav:"provider"`
	Connection  string            `dynamodbav:"connection"`
	Status      string            `dynamodbav:"status"`
	ExpiresAt   int64             `dynamodbav:"expires_at"`
	RefreshedAt int64             `dynamodbav:"refreshed_at"`
	LastError   string            `dynamodbav:"last_error"`
	Metadata    map[string]string `dynamodbav:"metadata"`
}

// List returns up to limit connections of provider whose name sorts after
// after (empty: from the start), in name order, optionally only those in
// status. more reports whether another page exists. It reads the
// connections index, never the table.
func (s *Store) List(ctx context.Context, provider string, status Status, after string, limit int) (page []Listed, more bool, err error) {
	if err := s.check(); err != nil {
		return nil, false, err
	}
	if !ValidID(provider) || (after != "" && !ValidID(after)) || limit < 1 || limit > 1000 {
		return nil, false, fmt.Errorf("%w: list needs a valid provider, cursor and limit", ErrInvalid)
	}
	kc := expression.Key("list_provider").Equal(expression.Value(provider))
	if after != "" {
		kc = kc.And(expression.Key("connection").GreaterThan(expression.Value(after)))
	}
	b := expression.NewBuilder().WithKeyCondition(kc)
	if status != "" {
		b = b.WithFilter(expression.Name("status").Equal(expression.Value(string(status))))
	}
	e, err := buildExpr(b)
	if err != nil {
		return nil, false, err
	}
	in := &dynamodb.QueryInput{
		TableName: aws.String(s.Table), IndexName: aws.String(ConnectionsIndex),
		KeyConditionExpression: e.KeyCondition(), FilterExpression: e.Filter(),
		ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
		// One more than asked, to know whether another page exists.
		Limit: aws.Int32(int32(limit + 1)),
	}
	for {
		out, err := s.DB.Query(ctx, in)
		if err != nil {
			return nil, false, fmt.Errorf("store: list %s: %w", provider, err)
		}
		for _, av := range out.Items {
			if len(page) == limit {
				return page, true, nil
			}
			var it listedItem
			if err := attributevalue.UnmarshalMap(av, &it); err != nil {
				return nil, false, fmt.Errorf("%w: listed connection: %v", ErrCorrupt, err)
			}
			page = append(page, Listed{Key: Key{Provider: it.Provider, Connection: it.Connection}, Status: Status(it.Status),
				ExpiresAt: timeOrZero(it.ExpiresAt), RefreshedAt: timeOrZero(it.RefreshedAt), LastError: it.LastError, Metadata: it.Metadata})
		}
		if len(out.LastEvaluatedKey) == 0 {
			return page, false, nil
		}
		in.ExclusiveStartKey = out.LastEvaluatedKey
	}
}
