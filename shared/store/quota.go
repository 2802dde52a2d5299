package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// validCounter: a counter is named like an id, with ':' allowed to scope
// it ("wechat:wx0123…").
func validCounter(s string) bool {
	for _, part := range strings.Split(s, ":") {
		if !ValidID(part) {
			return false
		}
	}
	return len(s) <= 200
}

// CountCall records one call against a daily budget and returns the count
// including this call. counter names what is budgeted (one WeChat AppID,
// whatever provider names use it); day is the budget's own calendar day
// (WeChat's resets at midnight China Standard Time), as "2006-01-02". When
// the budget is spent it returns ErrQuotaExhausted and counts nothing: the
// call must not be made. A retried count may count twice, which errs on
// the side of the quota.
func (s *Store) CountCall(ctx context.Context, counter, day string, budget int) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	d, err := time.Parse("2006-01-02", day)
	if !validCounter(counter) || budget <= 0 || err != nil {
		return 0, fmt.Errorf("%w: quota needs a valid counter, a day and a positive budget", ErrInvalid)
	}
	pk := "quota#" + counter + "#" + day
	cond := expression.Or(expression.AttributeNotExists(expression.Name("calls")),
		expression.Name("calls").LessThan(expression.Value(budget)))
	upd := expression.Add(expression.Name("calls"), expression.Value(1)).
		Set(expression.Name("type"), expression.Value("quota")).
		Set(expression.Name("ttl"), expression.Value(d.Add(72*time.Hour).Unix()))
	e, err := buildExpr(expression.NewBuilder().WithCondition(cond).WithUpdate(upd))
	if err != nil {
		return 0, err
	}
	out, err := s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(s.Table), Key: keyAttr(pk),
		ConditionExpression: e.Condition(), UpdateExpression: e.Update(),
		ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
		ReturnValues: "UPDATED_NEW",
	})
	var ccf *types.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		return budget, fmt.Errorf("%w: %s used %d of %d calls on %s", ErrQuotaExhausted, counter, budget, budget, day)
	}
	if err != nil {
		return 0, fmt.Errorf("store: count call %s: %w", counter, err)
	}
	var got struct {
		Calls int `dynamodbav:"calls"`
	}
	if err := attributevalue.UnmarshalMap(out.Attributes, &got); err != nil {
		return 0, fmt.Errorf("%w: quota counter: %v", ErrCorrupt, err)
	}
	return got.Calls, nil
}
