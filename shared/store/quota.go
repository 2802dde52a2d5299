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
	return s.CountSpacedCall(ctx, counter, day, budget, time.Time{}, 0)
}

// TooSoonError is CountSpacedCall's refusal of a call that comes less
// than the spacing after the last one counted.
type TooSoonError struct {
	// Next is when the next call may be counted.
	Next time.Time
}

func (e *TooSoonError) Error() string {
	return fmt.Sprintf("store: the last call was counted less than the spacing ago; the next may be at %s", e.Next.UTC().Format(time.RFC3339))
}

// CountSpacedCall is CountCall for a budget whose calls must also be at
// least spacing apart (WeChat ignores a forced stable_token call within
// 30 s of the last): a call less than spacing after the last counted one
// is refused with a *TooSoonError and counts nothing. now is the caller's
// clock; spacing 0 counts as CountCall does.
func (s *Store) CountSpacedCall(ctx context.Context, counter, day string, budget int, now time.Time, spacing time.Duration) (int, error) {
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
	if spacing > 0 {
		cond = cond.And(expression.Or(expression.AttributeNotExists(expression.Name("last_ms")),
			expression.Name("last_ms").LessThanEqual(expression.Value(now.Add(-spacing).UnixMilli()))))
		upd = upd.Set(expression.Name("last_ms"), expression.Value(now.UnixMilli()))
	}
	e, err := buildExpr(expression.NewBuilder().WithCondition(cond).WithUpdate(upd))
	if err != nil {
		return 0, err
	}
	out, err := s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(s.Table), Key: keyAttr(pk),
		ConditionExpression: e.Condition(), UpdateExpression: e.Update(),
		ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
		ReturnValues:                        "UPDATED_NEW",
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld,
	})
	var got struct {
		Calls  int   `dynamodbav:"calls"`
		LastMs int64 `dynamodbav:"last_ms"`
	}
	var ccf *types.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		_ = attributevalue.UnmarshalMap(ccf.Item, &got)
		if got.Calls < budget && spacing > 0 {
			return got.Calls, &TooSoonError{Next: time.UnixMilli(got.LastMs).Add(spacing).UTC()}
		}
		return budget, fmt.Errorf("%w: %s used %d of %d calls on %s", ErrQuotaExhausted, counter, budget, budget, day)
	}
	if err != nil {
		return 0, fmt.Errorf("store: count call %s: %w", counter, err)
	}
	if err := attributevalue.UnmarshalMap(out.Attributes, &got); err != nil {
		return 0, fmt.Errorf("%w: quota counter: %v", ErrCorrupt, err)
	}
	return got.Calls, nil
}
