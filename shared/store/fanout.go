package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// unitPrefix is the key prefix of a fan-out unit's marker: one item per
// (provider, due shard) that says a message for that shard is queued or
// being worked, and until when that claim holds.
const unitPrefix = "fanout#"

func unitPK(provider string, shard int) string {
	return unitPrefix + provider + "#" + strconv.Itoa(shard)
}

func validUnit(provider string, shard int) error {
	if !ValidID(provider) || shard < 0 || shard >= MaxDueShards {
		return fmt.Errorf("%w: a unit is a provider name and a shard from 0 to %d", ErrInvalid, MaxDueShards-1)
	}
	return nil
}

// HasDue reports whether one shard of provider's due index holds anything
// due at now: a query of one item, which is what the fan-out tick pays per
// shard to decide whether to queue it.
func (s *Store) HasDue(ctx context.Context, provider string, shard int, now time.Time) (bool, error) {
	if err := s.check(); err != nil {
		return false, err
	}
	if err := validUnit(provider, shard); err != nil {
		return false, err
	}
	kc := expression.Key("due_shard").Equal(expression.Value(provider + "#" + strconv.Itoa(shard))).
		And(expression.Key("refresh_at").LessThanEqual(expression.Value(now.Unix())))
	e, err := buildExpr(expression.NewBuilder().WithKeyCondition(kc))
	if err != nil {
		return false, err
	}
	out, err := s.DB.Query(ctx, &dynamodb.QueryInput{
		TableName: aws.String(s.Table), IndexName: aws.String(DueIndex),
		KeyConditionExpression: e.KeyCondition(), ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
		Limit: aws.Int32(1), Select: types.SelectAllProjectedAttributes,
	})
	if err != nil {
		return false, fmt.Errorf("store: probe due shard %s#%d: %w", provider, shard, err)
	}
	return len(out.Items) > 0, nil
}

// ScanDueShard is ScanDue over one shard of provider's due index: the
// work of one fan-out unit.
func (s *Store) ScanDueShard(ctx context.Context, provider string, shard int, now time.Time, visit func(*DueItem) error) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := validUnit(provider, shard); err != nil {
		return err
	}
	return s.queryDue(ctx, provider+"#"+strconv.Itoa(shard), now, func(av map[string]types.AttributeValue) error {
		return visit(dueItem(av))
	})
}

// ClaimUnit marks the unit (provider, shard) as queued under token until
// until, unless a claim that has not run out holds it: it reports whether
// this caller got it (and so must queue the one message for it). A claim
// runs out by itself, so a message that is lost never strands its shard.
func (s *Store) ClaimUnit(ctx context.Context, provider string, shard int, token string, until, now time.Time) (bool, error) {
	if err := s.check(); err != nil {
		return false, err
	}
	if err := validUnit(provider, shard); err != nil || token == "" {
		return false, fmt.Errorf("%w: a unit claim needs a unit and a token", ErrInvalid)
	}
	// The caller's own token too: the SDK's retry of a put that applied
	// but whose answer was lost must find its claim, not count the unit
	// as queued by someone else (no message would be sent for it).
	cond := expression.AttributeNotExists(expression.Name("pk")).
		Or(expression.Name("unit_until").LessThan(expression.Value(now.UnixMilli()))).
		Or(expression.Name("unit_token").Equal(expression.Value(token)))
	e, err := buildExpr(expression.NewBuilder().WithCondition(cond))
	if err != nil {
		return false, err
	}
	_, err = s.DB.PutItem(ctx, &dynamodb.PutItemInput{
		TableName: aws.String(s.Table),
		Item: map[string]types.AttributeValue{
			"pk":         &types.AttributeValueMemberS{Value: unitPK(provider, shard)},
			"type":       &types.AttributeValueMemberS{Value: "unit"},
			"unit_token": &types.AttributeValueMemberS{Value: token},
			"unit_until": &types.AttributeValueMemberN{Value: strconv.FormatInt(until.UnixMilli(), 10)},
			// Removed by DynamoDB a day later: only an operator looking at
			// the table would ever see a stale one, and it holds nothing.
			"ttl": &types.AttributeValueMemberN{Value: strconv.FormatInt(until.Add(24*time.Hour).Unix(), 10)},
		},
		ConditionExpression: e.Condition(), ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
	})
	var ccf *types.ConditionalCheckFailedException
	switch {
	case errors.As(err, &ccf):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("store: claim unit %s#%d: %w", provider, shard, err)
	}
	return true, nil
}

// TakeUnit is a worker's hold on a unit whose message it received: the
// claim must still carry the message's token (a newer claim means the tick
// queued the unit again after this claim ran out, and that message is the
// one to work), and no other holder may have it now. holder names this
// invocation, so that the same take sent again (an SDK retry after a lost
// answer) still succeeds. The hold lasts until until, and the claim with
// it. false means the message is superseded, its work was already done,
// or another worker has it (SQS delivers a message at least once, so two
// workers can get the same one at the same time): drop it. A hold whose
// worker died runs out at until; then the next tick's claim, or the
// message's redelivery, takes the unit.
func (s *Store) TakeUnit(ctx context.Context, provider string, shard int, token, holder string, until, now time.Time) (bool, error) {
	free := expression.AttributeNotExists(expression.Name("unit_taken")).
		Or(expression.Name("unit_taken").LessThan(expression.Value(now.UnixMilli()))).
		Or(expression.Name("unit_holder").Equal(expression.Value(holder)))
	return s.holdWrite(ctx, provider, shard, token, holder, expression.NewBuilder().
		WithCondition(expression.Name("unit_token").Equal(expression.Value(token)).And(free)).
		WithUpdate(expression.Set(expression.Name("unit_until"), expression.Value(until.UnixMilli())).
			Set(expression.Name("unit_taken"), expression.Value(until.UnixMilli())).
			Set(expression.Name("unit_holder"), expression.Value(holder))))
}

// LetGoUnit ends a hold whose work is not finished: the claim runs out at
// once, and so does the hold, so the next tick queues the unit again (or
// this message's redelivery takes it first, whichever comes first; the
// other is dropped). A claim or hold that is no longer holder's is left
// alone.
func (s *Store) LetGoUnit(ctx context.Context, provider string, shard int, token, holder string) error {
	_, err := s.holdWrite(ctx, provider, shard, token, holder, expression.NewBuilder().
		WithCondition(heldBy(token, holder)).
		WithUpdate(expression.Set(expression.Name("unit_until"), expression.Value(int64(0))).
			Remove(expression.Name("unit_taken")).Remove(expression.Name("unit_holder"))))
	return err
}

func heldBy(token, holder string) expression.ConditionBuilder {
	return expression.Name("unit_token").Equal(expression.Value(token)).And(expression.Name("unit_holder").Equal(expression.Value(holder)))
}

// holdWrite is one conditional write by a worker to a unit's claim: true
// when it applied, false when its condition failed.
func (s *Store) holdWrite(ctx context.Context, provider string, shard int, token, holder string, b expression.Builder) (bool, error) {
	if err := s.check(); err != nil {
		return false, err
	}
	if err := validUnit(provider, shard); err != nil || token == "" || holder == "" {
		return false, fmt.Errorf("%w: a unit hold needs a provider, a shard, a token and a holder", ErrInvalid)
	}
	e, err := buildExpr(b)
	if err != nil {
		return false, err
	}
	_, err = s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(s.Table), Key: keyAttr(unitPK(provider, shard)),
		UpdateExpression: e.Update(), ConditionExpression: e.Condition(),
		ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
	})
	var ccf *types.ConditionalCheckFailedException
	switch {
	case errors.As(err, &ccf):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("store: hold unit %s#%d: %w", provider, shard, err)
	}
	return true, nil
}

// ReleaseUnit ends the hold of a unit whose work is done, if it is still
// holder's under token: the claim now holds no token any message carries
// (a redelivered message is dropped) and lasts only until settled, which
// covers the due index's lag (a GSI is eventually consistent: right after
// the work it may still show the old copies, and a tick would queue the
// unit again for nothing). A gone, newer or otherwise held claim is left
// alone.
func (s *Store) ReleaseUnit(ctx context.Context, provider string, shard int, token, holder string, settled time.Time) error {
	_, err := s.holdWrite(ctx, provider, shard, token, holder, expression.NewBuilder().
		WithCondition(heldBy(token, holder)).
		WithUpdate(expression.Set(expression.Name("unit_token"), expression.Value("done")).
			Set(expression.Name("unit_until"), expression.Value(settled.UnixMilli()))))
	return err
}

// DropClaim removes a claim whose message was never sent, if it is still
// the one with token and no worker has taken it (a send that reported an
// error may have gone out after all), so the next tick can queue the unit.
func (s *Store) DropClaim(ctx context.Context, provider string, shard int, token string) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := validUnit(provider, shard); err != nil || token == "" {
		return fmt.Errorf("%w: a unit needs a provider, a shard and a token", ErrInvalid)
	}
	e, err := buildExpr(expression.NewBuilder().WithCondition(expression.Name("unit_token").Equal(expression.Value(token)).
		And(expression.AttributeNotExists(expression.Name("unit_taken")))))
	if err != nil {
		return err
	}
	_, err = s.DB.DeleteItem(ctx, &dynamodb.DeleteItemInput{
		TableName: aws.String(s.Table), Key: keyAttr(unitPK(provider, shard)),
		ConditionExpression: e.Condition(), ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
	})
	var ccf *types.ConditionalCheckFailedException
	if err != nil && !errors.As(err, &ccf) {
		return fmt.Errorf("store: drop unit claim %s#%d: %w", provider, shard, err)
	}
	return nil
}
