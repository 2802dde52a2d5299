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
// call must not be made. A count whose answer was lost and that the SDK
// sent again recognises itself (the write carries an id) and counts once.
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
//
// The last call's time is kept in an item of its own that does not roll
// over with the day, so the spacing holds across midnight; it is claimed
// first, so a refused spacing spends no budget (a spent budget after a
// claimed spacing only delays the next try). Both writes carry an id and
// recognise their own applied retry, so an answer lost on the way back
// neither counts twice nor refuses its own call as too soon.
func (s *Store) CountSpacedCall(ctx context.Context, counter, day string, budget int, now time.Time, spacing time.Duration) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	d, err := time.Parse("2006-01-02", day)
	if !validCounter(counter) || budget <= 0 || err != nil {
		return 0, fmt.Errorf("%w: quota needs a valid counter, a day and a positive budget", ErrInvalid)
	}
	id := NewWriteID()
	if spacing > 0 {
		if err := s.claimSpacing(ctx, counter, id, now, spacing); err != nil {
			return 0, err
		}
	}
	cond := expression.Or(expression.AttributeNotExists(expression.Name("calls")),
		expression.Name("calls").LessThan(expression.Value(budget)))
	upd := expression.Add(expression.Name("calls"), expression.Value(1)).
		Set(expression.Name("type"), expression.Value("quota")).
		Set(expression.Name("last_id"), expression.Value(id)).
		Set(expression.Name("ttl"), expression.Value(d.Add(72*time.Hour).Unix()))
	var got struct {
		Calls  int    `dynamodbav:"calls"`
		LastID string `dynamodbav:"last_id"`
	}
	err = s.conditionalCount(ctx, "quota#"+counter+"#"+day, cond, upd, &got)
	switch {
	case errors.Is(err, errConditionFailed) && got.LastID == id:
		return got.Calls, nil // our own count, applied by an earlier attempt
	case errors.Is(err, errConditionFailed):
		return budget, fmt.Errorf("%w: %s used %d of %d calls on %s", ErrQuotaExhausted, counter, budget, budget, day)
	case err != nil:
		return 0, err
	}
	return got.Calls, nil
}

// claimSpacing records now as the last call of counter unless the last
// one was less than spacing ago (a *TooSoonError).
func (s *Store) claimSpacing(ctx context.Context, counter, id string, now time.Time, spacing time.Duration) error {
	cond := expression.Or(expression.AttributeNotExists(expression.Name("last_ms")),
		expression.Name("last_ms").LessThanEqual(expression.Value(now.Add(-spacing).UnixMilli())))
	upd := expression.Set(expression.Name("last_ms"), expression.Value(now.UnixMilli())).
		Set(expression.Name("last_id"), expression.Value(id)).
		Set(expression.Name("type"), expression.Value("quota")).
		Set(expression.Name("ttl"), expression.Value(now.Add(48*time.Hour).Unix()))
	var got struct {
		LastMs int64  `dynamodbav:"last_ms"`
		LastID string `dynamodbav:"last_id"`
	}
	err := s.conditionalCount(ctx, "quota#"+counter+"#last", cond, upd, &got)
	switch {
	case errors.Is(err, errConditionFailed) && got.LastID == id:
		return nil
	case errors.Is(err, errConditionFailed):
		return &TooSoonError{Next: time.UnixMilli(got.LastMs).Add(spacing).UTC()}
	}
	return err
}

// conditionalCount applies upd to pk under cond and decodes into out the
// item as written, or, when the condition failed (errConditionFailed), as
// it stood.
func (s *Store) conditionalCount(ctx context.Context, pk string, cond expression.ConditionBuilder, upd expression.UpdateBuilder, out any) error {
	e, err := buildExpr(expression.NewBuilder().WithCondition(cond).WithUpdate(upd))
	if err != nil {
		return err
	}
	res, err := s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(s.Table), Key: keyAttr(pk),
		ConditionExpression: e.Condition(), UpdateExpression: e.Update(),
		ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
		ReturnValues:                        types.ReturnValueAllNew,
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld,
	})
	var ccf *types.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		if uerr := attributevalue.UnmarshalMap(ccf.Item, out); uerr != nil {
			return fmt.Errorf("%w: quota counter: %v", ErrCorrupt, uerr)
		}
		return errConditionFailed
	}
	if err != nil {
		return fmt.Errorf("store: count call %s: %w", pk, err)
	}
	if err := attributevalue.UnmarshalMap(res.Attributes, out); err != nil {
		return fmt.Errorf("%w: quota counter: %v", ErrCorrupt, err)
	}
	return nil
}
