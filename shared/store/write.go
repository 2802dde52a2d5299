package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"
)

// ConflictError is a conditional write that found the item at another
// generation or version (or, for a lease, held by someone else). Current is
// what the table holds, read from the failed write itself
// (ReturnValuesOnConditionCheckFailure), so the caller needs no extra read.
// Current is nil when the stored item cannot be decoded.
type ConflictError struct {
	What    string
	Key     Key
	Want    Fence
	Current *Connection
	lease   bool
}

func (e *ConflictError) Error() string {
	if e.lease {
		return fmt.Sprintf("store: lease not granted: %s %s at %s", e.What, e.Key, e.Want)
	}
	return fmt.Sprintf("store: version conflict: %s %s at %s", e.What, e.Key, e.Want)
}

// Is makes errors.Is(err, ErrVersionConflict) (or ErrLeaseNotGranted for a
// lease) true.
func (e *ConflictError) Is(target error) bool {
	return target == ErrVersionConflict || (e.lease && target == ErrLeaseNotGranted)
}

// NewWriteID returns a fresh identifier for one logical write.
func NewWriteID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Write is one conditional write, prepared once so that every retry sends
// the very same request (sealed values included). The item records the
// write's id, so when a retry fails its condition because an earlier
// attempt of the same write already applied (the SDK re-sends after a
// reset connection; a caller retries after a timeout), Apply recognises
// it and reports success instead of a conflict.
type Write struct {
	ID   string
	s    *Store
	what string
	key  Key
	want Fence

	put    *dynamodb.PutItemInput
	update *dynamodb.UpdateItemInput
	del    *dynamodb.DeleteItemInput
	tx     *dynamodb.TransactWriteItemsInput

	// goneIsDone: a missing item means the write's purpose is achieved.
	goneIsDone bool
	// create: a condition failure means the item exists (ErrAlreadyExists).
	create bool
	// claim: a condition failure means what was claimed is unknown, used,
	// expired or someone else's (ErrStateInvalid).
	claim bool
	// appliedBy tells from the stored item whether this write applied.
	appliedBy func(old map[string]types.AttributeValue) bool
	// keep decodes the item the write returned into Result.
	keep bool
	// Result is the connection as written, when the write returns it.
	Result *Connection
	// Existing is the connection a grant-storing write found in its way
	// (ErrAlreadyExists, or a *ConflictError), decoded from the failed
	// write itself; its tokens are empty where they cannot be opened.
	Existing *Connection
	// connIndex is the connection's place in a transaction whose first
	// item is something else (a confirm's claim); 0 otherwise.
	connIndex int
	// failed is returned by Apply: the write could not be prepared.
	failed error
	// Noop is set when Apply succeeded because the item was already gone
	// (a delete): nothing was written, the write's notices included.
	Noop bool
}

func (w *Write) fail(err error) error {
	return fmt.Errorf("store: %s %s: %w", w.what, w.key, err)
}

// Apply sends the write once (the SDK may retry it on its own). It
// returns nil when the write applied, now or in an earlier attempt;
// ErrNotFound when the item is gone (unless that is what the write wanted);
// ErrAlreadyExists for a create; a *ConflictError when the item is at
// another fence; anything else is a store failure, which Retryable judges.
func (w *Write) Apply(ctx context.Context) error {
	if w.failed != nil {
		return w.failed
	}
	var old map[string]types.AttributeValue
	var err error
	// connFailed: the condition that failed is the connection's own (for
	// a write that is not a transaction, there is only that one).
	connFailed := true
	switch {
	case w.tx != nil:
		_, err = w.s.DB.TransactWriteItems(ctx, w.tx)
		var tce *types.TransactionCanceledException
		if errors.As(err, &tce) {
			failedAt := -1
			for i, r := range tce.CancellationReasons {
				if aws.ToString(r.Code) == "ConditionalCheckFailed" {
					failedAt = i
					break
				}
			}
			if failedAt != 0 && (w.connIndex == 0 || failedAt != w.connIndex) {
				if failedAt < 0 {
					// Canceled for a passing reason (TransactionConflict, a
					// throttle): nothing was applied. DynamoDB keeps a client
					// request token's outcome for ten minutes, and a retry
					// with the same token may be answered with the same
					// cancellation until then, so the next attempt gets a
					// token of its own. An earlier attempt that did apply is
					// still recognised by the write id stored in the item.
					w.tx.ClientRequestToken = aws.String(NewWriteID())
				}
				return w.fail(err)
			}
			old, err = tce.CancellationReasons[failedAt].Item, errConditionFailed
			connFailed = failedAt == w.connIndex
		}
	case w.put != nil:
		_, err = w.s.DB.PutItem(ctx, w.put)
	case w.update != nil:
		var out *dynamodb.UpdateItemOutput
		out, err = w.s.DB.UpdateItem(ctx, w.update)
		if err == nil && w.keep {
			if w.Result, err = w.s.fromItem(out.Attributes); err != nil {
				return w.fail(err)
			}
		}
	case w.del != nil:
		_, err = w.s.DB.DeleteItem(ctx, w.del)
	}
	var ccf *types.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		old, err = ccf.Item, errConditionFailed
	}
	if err == nil {
		return nil
	}
	if err != errConditionFailed {
		return w.fail(err)
	}
	switch {
	case w.appliedBy != nil && len(old) > 0 && w.appliedBy(old):
		if w.keep {
			if w.Result, err = w.s.fromItem(old); err != nil {
				return w.fail(err)
			}
		}
		return nil
	case w.claim && !(connFailed && w.connIndex > 0):
		return fmt.Errorf("%w: %s %s", ErrStateInvalid, w.what, w.key)
	case w.create:
		w.Existing = w.s.existing(old)
		return fmt.Errorf("%w: %s %s", ErrAlreadyExists, w.what, w.key)
	case len(old) == 0 && w.goneIsDone:
		w.Noop = true
		return nil
	case len(old) == 0:
		return fmt.Errorf("%w: %s %s: the connection is gone", ErrNotFound, w.what, w.key)
	}
	ce := &ConflictError{What: w.what, Key: w.key, Want: w.want, lease: w.update != nil && w.keep}
	ce.Current, _ = w.s.fromItem(old)
	w.Existing = w.s.existing(old)
	return ce
}

var errConditionFailed = errors.New("condition failed")

// Retryable reports whether a failed Apply may succeed if sent again: a
// throttle, a server error, a transaction conflict, a timeout or a broken
// connection. Conflicts, missing items, invalid input and requests
// DynamoDB refuses outright (an item over its size limit) are not.
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	for _, final := range []error{ErrVersionConflict, ErrLeaseNotGranted, ErrNotFound, ErrAlreadyExists, ErrInvalid, ErrCorrupt, ErrStateInvalid, ErrQuotaExhausted} {
		if errors.Is(err, final) {
			return false
		}
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
			"InternalServerError", "ServiceUnavailable", "TransactionConflictException", "TransactionInProgressException",
			"TransactionCanceledException":
			return true
		}
		return api.ErrorFault() == smithy.FaultServer
	}
	return true
}

// writtenBy recognises a write by the id it stored in the item.
func writtenBy(id string) func(map[string]types.AttributeValue) bool {
	return func(old map[string]types.AttributeValue) bool {
		v, ok := old["write_id"].(*types.AttributeValueMemberS)
		return ok && v.Value == id
	}
}

// fenceCondition holds when the item is at f. Items written before
// generations existed have none; their fence has an empty generation.
func fenceCondition(f Fence) expression.ConditionBuilder {
	v := expression.Name("version").Equal(expression.Value(f.Version))
	if f.Generation == "" {
		return v.And(expression.AttributeNotExists(expression.Name("generation")))
	}
	return v.And(expression.Name("generation").Equal(expression.Value(f.Generation)))
}

// withNotices turns a single-item write into a transaction that also
// stores the notices, so a state change and its announcement are written
// together or not at all. The write id doubles as the transaction's
// idempotency token.
func (w *Write) withNotices(notices []Notice) error {
	if len(notices) == 0 {
		return nil
	}
	item := types.TransactWriteItem{}
	switch {
	case w.put != nil:
		item.Put = &types.Put{TableName: w.put.TableName, Item: w.put.Item, ConditionExpression: w.put.ConditionExpression,
			ExpressionAttributeNames: w.put.ExpressionAttributeNames, ExpressionAttributeValues: w.put.ExpressionAttributeValues,
			ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld}
	case w.update != nil:
		item.Update = &types.Update{TableName: w.update.TableName, Key: w.update.Key, UpdateExpression: w.update.UpdateExpression,
			ConditionExpression: w.update.ConditionExpression, ExpressionAttributeNames: w.update.ExpressionAttributeNames,
			ExpressionAttributeValues: w.update.ExpressionAttributeValues, ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld}
	case w.del != nil:
		item.Delete = &types.Delete{TableName: w.del.TableName, Key: w.del.Key, ConditionExpression: w.del.ConditionExpression,
			ExpressionAttributeNames: w.del.ExpressionAttributeNames, ExpressionAttributeValues: w.del.ExpressionAttributeValues,
			ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld}
	}
	items := []types.TransactWriteItem{item}
	for _, n := range notices {
		av, err := w.s.noticeItem(n)
		if err != nil {
			return err
		}
		items = append(items, types.TransactWriteItem{Put: &types.Put{TableName: aws.String(w.s.Table), Item: av}})
	}
	w.tx = &dynamodb.TransactWriteItemsInput{TransactItems: items, ClientRequestToken: aws.String(w.ID)}
	w.put, w.update, w.del = nil, nil, nil
	return nil
}

func (s *Store) newWrite(what string, k Key, want Fence) *Write {
	id := NewWriteID()
	return &Write{ID: id, s: s, what: what, key: k, want: want, appliedBy: writtenBy(id)}
}

// conditionalPut prepares a PutItem of c under cond.
func (s *Store) conditionalPut(w *Write, c *Connection, cond *expression.ConditionBuilder, notices []Notice) (*Write, error) {
	av, err := s.toItem(c, w.ID)
	if err != nil {
		return nil, err
	}
	w.put = &dynamodb.PutItemInput{TableName: aws.String(s.Table), Item: av,
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld}
	if cond != nil {
		e, err := buildExpr(expression.NewBuilder().WithCondition(*cond))
		if err != nil {
			return nil, err
		}
		w.put.ConditionExpression, w.put.ExpressionAttributeNames, w.put.ExpressionAttributeValues = e.Condition(), e.Names(), e.Values()
	}
	return w, w.withNotices(notices)
}

// conditionalUpdate prepares an UpdateItem of k under cond that also
// records the write's id.
func (s *Store) conditionalUpdate(w *Write, cond expression.ConditionBuilder, upd expression.UpdateBuilder, notices []Notice) (*Write, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := w.key.Validate(); err != nil {
		return nil, err
	}
	upd = upd.Set(expression.Name("write_id"), expression.Value(w.ID))
	e, err := buildExpr(expression.NewBuilder().WithCondition(cond).WithUpdate(upd))
	if err != nil {
		return nil, err
	}
	w.update = &dynamodb.UpdateItemInput{
		TableName: aws.String(s.Table), Key: keyAttr(w.key.pk()),
		ConditionExpression: e.Condition(), UpdateExpression: e.Update(),
		ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld,
	}
	return w, w.withNotices(notices)
}

// putNew writes an item where none exists under its key (ErrAlreadyExists
// otherwise), recognising its own retry; item marshals the item with the
// write's id in its write_id.
func (s *Store) putNew(ctx context.Context, what string, k Key, item func(writeID string) (map[string]types.AttributeValue, error)) error {
	w := s.newWrite(what, k, Fence{})
	w.create = true
	av, err := item(w.ID)
	if err != nil {
		return fmt.Errorf("store: marshal %s: %w", what, err)
	}
	cond, err := buildExpr(expression.NewBuilder().WithCondition(expression.AttributeNotExists(expression.Name("pk"))))
	if err != nil {
		return err
	}
	w.put = &dynamodb.PutItemInput{TableName: aws.String(s.Table), Item: av,
		ConditionExpression: cond.Condition(), ExpressionAttributeNames: cond.Names(),
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld}
	return w.Apply(ctx)
}

// PrepareCreate prepares writing a new connection where none exists for
// its key (ErrAlreadyExists otherwise). A missing generation is filled in.
func (s *Store) PrepareCreate(c *Connection, notices ...Notice) (*Write, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if c.Generation == "" {
		c.Generation = NewWriteID()
	}
	cond := expression.AttributeNotExists(expression.Name("pk"))
	w := s.newWrite("create", c.Key, Fence{})
	w.create = true
	return s.conditionalPut(w, c, &cond, notices)
}

// Precondition is what a write storing a new grant (callback, confirm,
// import) expects of the connection it replaces. The zero value expects
// none: the write creates the connection.
type Precondition struct {
	// Replace allows a connection to be there.
	Replace bool
	// At, with Replace, is the fence the replaced connection must still
	// be at, so that what the caller decided from it (announcing the end
	// of its failure streak, revoking its tokens) happens once; nil
	// replaces whatever is there (an item that cannot be decoded).
	At *Fence
}

func (p Precondition) condition() *expression.ConditionBuilder {
	switch {
	case !p.Replace:
		c := expression.AttributeNotExists(expression.Name("pk"))
		return &c
	case p.At != nil:
		c := fenceCondition(*p.At)
		return &c
	}
	return nil
}

// PrepareReplace prepares storing c (a new authorization) under pre,
// under a new generation, so that nothing written for the old grant can
// land on it. A connection in the way of a create is ErrAlreadyExists; one
// that moved from pre.At is a *ConflictError (ErrNotFound if it is gone);
// either way Write.Existing holds what was found.
func (s *Store) PrepareReplace(c *Connection, pre Precondition, notices ...Notice) (*Write, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	c.Generation = NewWriteID()
	w := s.newWrite("replace", c.Key, Fence{})
	w.create = !pre.Replace
	if pre.At != nil {
		w.want = *pre.At
	}
	return s.conditionalPut(w, c, pre.condition(), notices)
}

// PrepareCommit prepares replacing the connection with c at the next
// version of expect, clearing any lease, only if the stored item is still
// at expect. The version, not the lease, is the fence: a commit can never
// overwrite a newer token.
func (s *Store) PrepareCommit(c *Connection, expect Fence, notices ...Notice) (*Write, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	next := *c
	next.Generation, next.Version = expect.Generation, expect.Version+1
	next.LeaseOwner, next.LeaseUntil = "", time.Time{}
	cond := fenceCondition(expect)
	w, err := s.conditionalPut(s.newWrite("commit", c.Key, expect), &next, &cond, notices)
	if err != nil {
		return nil, err
	}
	return w, nil
}

// Failure records a failed refresh that keeps the current tokens.
type Failure struct {
	Message     string
	Attempts    int
	NextAttempt time.Time // becomes refresh_at; zero takes the connection out of the due index
	// FailingNotified is stored as the streak's announcement state.
	FailingNotified bool
	// RefreshDenied, when set, is stored: the provider refused to refresh
	// this grant for this app. A failure without it clears an earlier one.
	RefreshDenied string
	// RetryAt is the short schedule's next attempt (see
	// Connection.RetryAt); zero removes it.
	RetryAt time.Time
}

// PrepareFailure prepares recording a transient failure at the next
// version of expect, keeping the tokens, moving refresh_at to the next
// attempt and clearing the lease.
func (s *Store) PrepareFailure(k Key, expect Fence, f Failure, notices ...Notice) (*Write, error) {
	now := s.now()
	upd := expression.Set(expression.Name("last_error"), expression.Value(truncate(f.Message, maxText))).
		Set(expression.Name("last_error_at"), expression.Value(now.Unix())).
		Set(expression.Name("attempts"), expression.Value(f.Attempts)).
		Set(expression.Name("version"), expression.Value(expect.Version+1)).
		Remove(expression.Name("lease_owner")).Remove(expression.Name("lease_until"))
	if f.FailingNotified {
		upd = upd.Set(expression.Name("failing_notified"), expression.Value(true))
	}
	if f.RefreshDenied != "" {
		upd = upd.Set(expression.Name("refresh_denied"), expression.Value(truncate(f.RefreshDenied, maxText)))
	} else {
		upd = upd.Remove(expression.Name("refresh_denied"))
	}
	if f.RetryAt.IsZero() {
		upd = upd.Remove(expression.Name("retry_at"))
	} else {
		upd = upd.Set(expression.Name("retry_at"), expression.Value(f.RetryAt.UnixMilli()))
	}
	if f.NextAttempt.IsZero() {
		upd = upd.Remove(expression.Name("refresh_at")).Remove(expression.Name("due_shard"))
	} else {
		upd = upd.Set(expression.Name("refresh_at"), expression.Value(ceilUnix(f.NextAttempt))).
			Set(expression.Name("due_shard"), expression.Value(s.dueShard(k)))
	}
	return s.conditionalUpdate(s.newWrite("record failure", k, expect), fenceCondition(expect), upd, notices)
}

// ceilUnix is t in whole seconds, rounded up: the due index compares
// refresh_at with the refresher's now in seconds, and a connection must
// not look due before its time (a short backoff ends mid-second).
func ceilUnix(t time.Time) int64 {
	s := t.Unix()
	if t.After(time.Unix(s, 0)) {
		s++
	}
	return s
}

// PrepareNeedsReauth prepares setting the connection to needs_reauth at
// the next version of expect, with the reason, out of the due index.
func (s *Store) PrepareNeedsReauth(k Key, expect Fence, reason string, notices ...Notice) (*Write, error) {
	now := s.now()
	upd := expression.Set(expression.Name("status"), expression.Value(string(StatusNeedsReauth))).
		Set(expression.Name("last_error"), expression.Value(truncate(reason, maxText))).
		Set(expression.Name("last_error_at"), expression.Value(now.Unix())).
		Set(expression.Name("version"), expression.Value(expect.Version+1)).
		Remove(expression.Name("lease_owner")).Remove(expression.Name("lease_until")).
		Remove(expression.Name("refresh_at")).Remove(expression.Name("due_shard"))
	return s.conditionalUpdate(s.newWrite("mark needs_reauth", k, expect), fenceCondition(expect), upd, notices)
}

// PrepareDelete prepares removing a connection. With expect, only the
// grant at that generation and version is removed (a newer authorization
// or a refresh that committed meanwhile is a conflict); a connection already gone counts as deleted,
// which also makes a retried delete succeed.
func (s *Store) PrepareDelete(k Key, expect *Fence, notices ...Notice) (*Write, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := k.Validate(); err != nil {
		return nil, err
	}
	w := s.newWrite("delete", k, Fence{})
	w.goneIsDone, w.appliedBy = true, nil
	w.del = &dynamodb.DeleteItemInput{TableName: aws.String(s.Table), Key: keyAttr(k.pk()),
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld}
	if expect != nil {
		// Fenced on the version too: a refresh that commits a rotated
		// refresh token between the caller's read (and revocation) and
		// this delete must send the caller back to revoke that one.
		w.want = *expect
		e, err := buildExpr(expression.NewBuilder().WithCondition(fenceCondition(*expect)))
		if err != nil {
			return nil, err
		}
		w.del.ConditionExpression, w.del.ExpressionAttributeNames, w.del.ExpressionAttributeValues = e.Condition(), e.Names(), e.Values()
	}
	return w, w.withNotices(notices)
}

// Create writes a new connection (see PrepareCreate) in one Apply.
func (s *Store) Create(ctx context.Context, c *Connection) error {
	w, err := s.PrepareCreate(c)
	if err != nil {
		return err
	}
	return w.Apply(ctx)
}

// Commit stores c at the next version of expect (see PrepareCommit) in
// one Apply; on success c carries its new fence and no lease.
func (s *Store) Commit(ctx context.Context, c *Connection, expect Fence) error {
	w, err := s.PrepareCommit(c, expect)
	if err != nil {
		return err
	}
	if err := w.Apply(ctx); err != nil {
		return err
	}
	c.Generation, c.Version, c.LeaseOwner, c.LeaseUntil = expect.Generation, expect.Version+1, "", time.Time{}
	return nil
}

// RecordFailure records a failure (see PrepareFailure) in one Apply.
func (s *Store) RecordFailure(ctx context.Context, k Key, expect Fence, f Failure) error {
	w, err := s.PrepareFailure(k, expect, f)
	if err != nil {
		return err
	}
	return w.Apply(ctx)
}

// MarkNeedsReauth marks the connection (see PrepareNeedsReauth) in one Apply.
func (s *Store) MarkNeedsReauth(ctx context.Context, k Key, expect Fence, reason string) error {
	w, err := s.PrepareNeedsReauth(k, expect, reason)
	if err != nil {
		return err
	}
	return w.Apply(ctx)
}

// Delete removes a connection (see PrepareDelete) in one Apply.
func (s *Store) Delete(ctx context.Context, k Key, expect *Fence) error {
	w, err := s.PrepareDelete(k, expect)
	if err != nil {
		return err
	}
	return w.Apply(ctx)
}
