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

// CountCall records one call against a per-provider daily budget (UTC day)
// and returns the count including this call. When the budget is spent it
// returns ErrQuotaExhausted and counts nothing: the call must not be made.
func (s *Store) CountCall(ctx context.Context, provider string, day time.Time, budget int) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	if !ValidID(provider) || budget <= 0 {
		return 0, fmt.Errorf("%w: quota needs a valid provider and a positive budget", ErrInvalid)
	}
	dayStr := day.UTC().Format("2006-01-02")
	pk := "quota#" + provider + "#" + dayStr
	cond := expression.Or(expression.AttributeNotExists(expression.Name("calls")),
		expression.Name("calls").LessThan(expression.Value(budget)))
	upd := expression.Add(expression.Name("calls"), expression.Value(1)).
		Set(expression.Name("type"), expression.Value("quota")).
		Set(expression.Name("ttl"), expression.Value(day.UTC().Truncate(24*time.Hour).Add(72*time.Hour).Unix()))
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
	if isConditionFailed(err) {
		return budget, fmt.Errorf("%w: %s used %d of %d calls on %s", ErrQuotaExhausted, provider, budget, budget, dayStr)
	}
	if err != nil {
		return 0, fmt.Errorf("store: count call %s: %w", provider, err)
	}
	var got struct {
		Calls int `dynamodbav:"calls"`
	}
	if err := attributevalue.UnmarshalMap(out.Attributes, &got); err != nil {
		return 0, fmt.Errorf("%w: quota counter: %v", ErrCorrupt, err)
	}
	return got.Calls, nil
}
