package store

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Status of a connection.
type Status string

// Connection statuses.
const (
	// StatusActive: the broker holds a usable grant.
	StatusActive Status = "active"
	// StatusPending: a machine token whose first fetch has not succeeded yet.
	StatusPending Status = "pending"
	// StatusNeedsReauth: the provider refused the grant for good; only a new
	// authorization restores the connection.
	StatusNeedsReauth Status = "needs_reauth"
)

// MaxExtra bounds the number of provider extras kept on a connection.
const MaxExtra = 32

// Connection is one (provider, connection) grant with its tokens in the clear.
// The store seals AccessToken and RefreshToken on write and opens them on read.
type Connection struct {
	Key
	Kind             string
	AccessToken      string
	RefreshToken     string
	TokenType        string
	Scope            string
	ExpiresAt        time.Time // zero: the provider gave no expiry
	RefreshExpiresAt time.Time // zero: unknown
	Extra            map[string]string
	Status           Status
	Version          int64
	LeaseOwner       string
	LeaseUntil       time.Time
	// RefreshAt puts the connection in the due index; zero keeps it out.
	RefreshAt   time.Time
	RefreshedAt time.Time
	CreatedAt   time.Time
	LastError   string
	LastErrorAt time.Time
	Attempts    int
}

// Leased reports whether a live lease is held at now.
func (c *Connection) Leased(now time.Time) bool {
	return c.LeaseOwner != "" && c.LeaseUntil.After(now)
}

// connectionItem is the stored form. Times are Unix seconds, the lease is in
// milliseconds; zero values are omitted so that a connection with no
// refresh_at is absent from the sparse due index.
type connectionItem struct {
	PK               string            `dynamodbav:"pk"`
	Type             string            `dynamodbav:"type"`
	Provider         string            `dynamodbav:"provider"`
	Connection       string            `dynamodbav:"connection"`
	Kind             string            `dynamodbav:"kind,omitempty"`
	AccessToken      string            `dynamodbav:"access_token,omitempty"`
	RefreshToken     string            `dynamodbav:"refresh_token,omitempty"`
	TokenType        string            `dynamodbav:"token_type,omitempty"`
	Scope            string            `dynamodbav:"scope,omitempty"`
	ExpiresAt        int64             `dynamodbav:"expires_at,omitempty"`
	RefreshExpiresAt int64             `dynamodbav:"refresh_expires_at,omitempty"`
	Extra            map[string]string `dynamodbav:"extra,omitempty"`
	Status           string            `dynamodbav:"status"`
	Version          int64             `dynamodbav:"version"`
	LeaseOwner       string            `dynamodbav:"lease_owner,omitempty"`
	LeaseUntilMs     int64             `dynamodbav:"lease_until,omitempty"`
	DueShard         string            `dynamodbav:"due_shard,omitempty"`
	RefreshAt        int64             `dynamodbav:"refresh_at,omitempty"`
	RefreshedAt      int64             `dynamodbav:"refreshed_at,omitempty"`
	CreatedAt        int64             `dynamodbav:"created_at,omitempty"`
	LastError        string            `dynamodbav:"last_error,omitempty"`
	LastErrorAt      int64             `dynamodbav:"last_error_at,omitempty"`
	Attempts         int               `dynamodbav:"attempts,omitempty"`
}

const (
	fieldAccess  = "access_token"
	fieldRefresh = "refresh_token"
	maxText      = 2048
)

func binding(pk, field string) string { return pk + "/" + field }

func (s *Store) toItem(c *Connection) (map[string]types.AttributeValue, error) {
	if err := c.Key.Validate(); err != nil {
		return nil, err
	}
	if len(c.Extra) > MaxExtra {
		return nil, fmt.Errorf("%w: %d extras, at most %d", ErrInvalid, len(c.Extra), MaxExtra)
	}
	for k, v := range c.Extra {
		if len(k) > 128 || len(v) > maxText {
			return nil, fmt.Errorf("%w: extra %.32q too long", ErrInvalid, k)
		}
	}
	if len(c.TokenType) > 64 || len(c.Scope) > maxText || len(c.Kind) > 64 {
		return nil, fmt.Errorf("%w: token type, scope or kind too long", ErrInvalid)
	}
	pk := c.Key.pk()
	it := connectionItem{
		PK: pk, Type: "connection", Provider: c.Provider, Connection: c.Connection, Kind: c.Kind,
		TokenType: c.TokenType, Scope: c.Scope,
		ExpiresAt: unixOrZero(c.ExpiresAt), RefreshExpiresAt: unixOrZero(c.RefreshExpiresAt),
		Extra: c.Extra, Status: string(c.Status), Version: c.Version,
		LeaseOwner: c.LeaseOwner, RefreshedAt: unixOrZero(c.RefreshedAt), CreatedAt: unixOrZero(c.CreatedAt),
		LastError: truncate(c.LastError, maxText), LastErrorAt: unixOrZero(c.LastErrorAt), Attempts: c.Attempts,
	}
	if it.Status == "" {
		it.Status = string(StatusActive)
	}
	if !c.LeaseUntil.IsZero() {
		it.LeaseUntilMs = c.LeaseUntil.UnixMilli()
	}
	if !c.RefreshAt.IsZero() && c.Status != StatusNeedsReauth {
		it.RefreshAt = c.RefreshAt.Unix()
		it.DueShard = s.dueShard(c.Key)
	}
	var err error
	if c.AccessToken != "" {
		if it.AccessToken, err = s.Ring.Seal(c.AccessToken, binding(pk, fieldAccess)); err != nil {
			return nil, fmt.Errorf("%w: access token: %v", ErrInvalid, err)
		}
	}
	if c.RefreshToken != "" {
		if it.RefreshToken, err = s.Ring.Seal(c.RefreshToken, binding(pk, fieldRefresh)); err != nil {
			return nil, fmt.Errorf("%w: refresh token: %v", ErrInvalid, err)
		}
	}
	av, err := attributevalue.MarshalMap(it)
	if err != nil {
		return nil, fmt.Errorf("store: marshal %s: %w", c.Key, err)
	}
	return av, nil
}

func (s *Store) fromItem(av map[string]types.AttributeValue) (*Connection, error) {
	var it connectionItem
	if err := attributevalue.UnmarshalMap(av, &it); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	c := &Connection{
		Key:  Key{Provider: it.Provider, Connection: it.Connection},
		Kind: it.Kind, TokenType: it.TokenType, Scope: it.Scope,
		ExpiresAt: timeOrZero(it.ExpiresAt), RefreshExpiresAt: timeOrZero(it.RefreshExpiresAt),
		Extra: it.Extra, Status: Status(it.Status), Version: it.Version, LeaseOwner: it.LeaseOwner,
		RefreshAt: timeOrZero(it.RefreshAt), RefreshedAt: timeOrZero(it.RefreshedAt), CreatedAt: timeOrZero(it.CreatedAt),
		LastError: it.LastError, LastErrorAt: timeOrZero(it.LastErrorAt), Attempts: it.Attempts,
	}
	if it.LeaseUntilMs != 0 {
		c.LeaseUntil = time.UnixMilli(it.LeaseUntilMs).UTC()
	}
	if c.Key.Validate() != nil || it.PK != c.Key.pk() || it.Type != "connection" {
		return nil, fmt.Errorf("%w: item %.80q is not a connection", ErrCorrupt, it.PK)
	}
	var err error
	if it.AccessToken != "" {
		if c.AccessToken, err = s.Ring.Open(it.AccessToken, binding(it.PK, fieldAccess)); err != nil {
			return nil, fmt.Errorf("%w: %s access token: %v", ErrCorrupt, c.Key, err)
		}
	}
	if it.RefreshToken != "" {
		if c.RefreshToken, err = s.Ring.Open(it.RefreshToken, binding(it.PK, fieldRefresh)); err != nil {
			return nil, fmt.Errorf("%w: %s refresh token: %v", ErrCorrupt, c.Key, err)
		}
	}
	return c, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// Get reads a connection. consistent asks for a strongly consistent read,
// which waiters on a lease need to see a fresh commit.
func (s *Store) Get(ctx context.Context, k Key, consistent bool) (*Connection, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := k.Validate(); err != nil {
		return nil, err
	}
	out, err := s.DB.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String(s.Table), Key: keyAttr(k.pk()), ConsistentRead: aws.Bool(consistent),
	})
	if err != nil {
		return nil, fmt.Errorf("store: get %s: %w", k, err)
	}
	if len(out.Item) == 0 {
		return nil, fmt.Errorf("%w: connection %s", ErrNotFound, k)
	}
	return s.fromItem(out.Item)
}

// Create writes a new connection at the given version only if none exists
// for its key: ErrAlreadyExists otherwise. A machine token's first fetch
// uses it with a lease already set, so concurrent first callers wait on the
// lease instead of all calling the provider.
func (s *Store) Create(ctx context.Context, c *Connection) error {
	if err := s.check(); err != nil {
		return err
	}
	av, err := s.toItem(c)
	if err != nil {
		return err
	}
	if err := s.putIfAbsent(ctx, av); err != nil {
		return fmt.Errorf("%w: connection %s", err, c.Key)
	}
	return nil
}

// Commit replaces the connection with c at version expect+1, clearing any
// lease, only if the stored version is still expect. On success c.Version is
// updated. A stale commit returns ErrVersionConflict and writes nothing.
func (s *Store) Commit(ctx context.Context, c *Connection, expect int64) error {
	if err := s.check(); err != nil {
		return err
	}
	next := *c
	next.Version = expect + 1
	next.LeaseOwner, next.LeaseUntil = "", time.Time{}
	av, err := s.toItem(&next)
	if err != nil {
		return err
	}
	cond, err := buildExpr(expression.NewBuilder().WithCondition(
		expression.Name("version").Equal(expression.Value(expect))))
	if err != nil {
		return err
	}
	_, err = s.DB.PutItem(ctx, &dynamodb.PutItemInput{
		TableName: aws.String(s.Table), Item: av,
		ConditionExpression: cond.Condition(), ExpressionAttributeNames: cond.Names(), ExpressionAttributeValues: cond.Values(),
	})
	if isConditionFailed(err) {
		return fmt.Errorf("%w: commit %s at version %d", ErrVersionConflict, c.Key, expect)
	}
	if err != nil {
		return fmt.Errorf("store: commit %s: %w", c.Key, err)
	}
	c.Version, c.LeaseOwner, c.LeaseUntil = next.Version, "", time.Time{}
	return nil
}

// AcquireLease takes the refresh lease on k if the stored version is still
// version and no live lease exists. ErrLeaseNotGranted otherwise.
func (s *Store) AcquireLease(ctx context.Context, k Key, version int64, owner string, until time.Time) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := k.Validate(); err != nil {
		return err
	}
	if owner == "" || len(owner) > 256 {
		return fmt.Errorf("%w: lease owner must be 1-256 bytes", ErrInvalid)
	}
	now := s.now()
	cond := expression.Name("version").Equal(expression.Value(version)).And(
		expression.Or(
			expression.AttributeNotExists(expression.Name("lease_until")),
			expression.Name("lease_until").LessThan(expression.Value(now.UnixMilli())),
		))
	upd := expression.Set(expression.Name("lease_owner"), expression.Value(owner)).
		Set(expression.Name("lease_until"), expression.Value(until.UnixMilli()))
	failed, err := s.conditionalUpdate(ctx, k.pk(), cond, upd)
	if failed {
		return fmt.Errorf("%w: %s at version %d", ErrLeaseNotGranted, k, version)
	}
	if err != nil {
		return fmt.Errorf("store: acquire lease %s: %w", k, err)
	}
	return nil
}

// Failure records a failed refresh that keeps the current tokens.
type Failure struct {
	Message     string
	Attempts    int
	NextAttempt time.Time // becomes refresh_at; zero takes the connection out of the due index
}

// RecordFailure stores a transient failure at version expect+1, keeping the
// tokens, moving refresh_at to the next attempt and clearing the lease.
func (s *Store) RecordFailure(ctx context.Context, k Key, expect int64, f Failure) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := k.Validate(); err != nil {
		return err
	}
	now := s.now()
	upd := expression.Set(expression.Name("last_error"), expression.Value(truncate(f.Message, maxText))).
		Set(expression.Name("last_error_at"), expression.Value(now.Unix())).
		Set(expression.Name("attempts"), expression.Value(f.Attempts)).
		Set(expression.Name("version"), expression.Value(expect+1)).
		Remove(expression.Name("lease_owner")).Remove(expression.Name("lease_until"))
	if f.NextAttempt.IsZero() {
		upd = upd.Remove(expression.Name("refresh_at")).Remove(expression.Name("due_shard"))
	} else {
		upd = upd.Set(expression.Name("refresh_at"), expression.Value(f.NextAttempt.Unix())).
			Set(expression.Name("due_shard"), expression.Value(s.dueShard(k)))
	}
	return s.updateAtVersion(ctx, k, expect, upd, "record failure")
}

// MarkNeedsReauth sets the connection to needs_reauth at version expect+1,
// with the reason, and takes it out of the due index.
func (s *Store) MarkNeedsReauth(ctx context.Context, k Key, expect int64, reason string) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := k.Validate(); err != nil {
		return err
	}
	now := s.now()
	upd := expression.Set(expression.Name("status"), expression.Value(string(StatusNeedsReauth))).
		Set(expression.Name("last_error"), expression.Value(truncate(reason, maxText))).
		Set(expression.Name("last_error_at"), expression.Value(now.Unix())).
		Set(expression.Name("version"), expression.Value(expect+1)).
		Remove(expression.Name("lease_owner")).Remove(expression.Name("lease_until")).
		Remove(expression.Name("refresh_at")).Remove(expression.Name("due_shard"))
	return s.updateAtVersion(ctx, k, expect, upd, "mark needs_reauth")
}

func (s *Store) updateAtVersion(ctx context.Context, k Key, expect int64, upd expression.UpdateBuilder, what string) error {
	failed, err := s.conditionalUpdate(ctx, k.pk(), expression.Name("version").Equal(expression.Value(expect)), upd)
	if failed {
		return fmt.Errorf("%w: %s %s at version %d", ErrVersionConflict, what, k, expect)
	}
	if err != nil {
		return fmt.Errorf("store: %s %s: %w", what, k, err)
	}
	return nil
}

// conditionalUpdate applies upd to the item under pk if cond holds, and
// reports whether the condition failed.
func (s *Store) conditionalUpdate(ctx context.Context, pk string, cond expression.ConditionBuilder, upd expression.UpdateBuilder) (conditionFailed bool, err error) {
	e, err := buildExpr(expression.NewBuilder().WithCondition(cond).WithUpdate(upd))
	if err != nil {
		return false, err
	}
	_, err = s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(s.Table), Key: keyAttr(pk),
		ConditionExpression: e.Condition(), UpdateExpression: e.Update(),
		ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
	})
	if isConditionFailed(err) {
		return true, nil
	}
	return false, err
}

// putIfAbsent writes an item only where none exists under its key:
// ErrAlreadyExists otherwise.
func (s *Store) putIfAbsent(ctx context.Context, av map[string]types.AttributeValue) error {
	cond, err := buildExpr(expression.NewBuilder().WithCondition(expression.AttributeNotExists(expression.Name("pk"))))
	if err != nil {
		return err
	}
	_, err = s.DB.PutItem(ctx, &dynamodb.PutItemInput{
		TableName: aws.String(s.Table), Item: av,
		ConditionExpression: cond.Condition(), ExpressionAttributeNames: cond.Names(),
	})
	if isConditionFailed(err) {
		return ErrAlreadyExists
	}
	if err != nil {
		return fmt.Errorf("store: put: %w", err)
	}
	return nil
}

// Delete removes a connection. Deleting one that does not exist is not an error.
func (s *Store) Delete(ctx context.Context, k Key) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := k.Validate(); err != nil {
		return err
	}
	if _, err := s.DB.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(s.Table), Key: keyAttr(k.pk())}); err != nil {
		return fmt.Errorf("store: delete %s: %w", k, err)
	}
	return nil
}

// RawVersion reads only the version of a connection, for overwriting an
// item that can no longer be decoded (a re-authorization replaces it).
func (s *Store) RawVersion(ctx context.Context, k Key) (int64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	if err := k.Validate(); err != nil {
		return 0, err
	}
	out, err := s.DB.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String(s.Table), Key: keyAttr(k.pk()), ConsistentRead: aws.Bool(true),
		ProjectionExpression: aws.String("version"),
	})
	if err != nil {
		return 0, fmt.Errorf("store: get version %s: %w", k, err)
	}
	if len(out.Item) == 0 {
		return 0, fmt.Errorf("%w: connection %s", ErrNotFound, k)
	}
	var v struct {
		Version int64 `dynamodbav:"version"`
	}
	if err := attributevalue.UnmarshalMap(out.Item, &v); err != nil {
		return 0, fmt.Errorf("%w: version of %s: %v", ErrCorrupt, k, err)
	}
	return v.Version, nil
}
