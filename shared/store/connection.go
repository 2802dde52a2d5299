package store

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
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

// MaxMetadata bounds the number of metadata entries of a connection.
const MaxMetadata = 10

// Fence is what a conditional write expects to find: the grant's
// generation, which changes on every create, re-authorization and delete,
// and its version, which every write of that grant increases. A write for
// an old grant can never land on a new one, even at an equal version.
type Fence struct {
	Generation string
	Version    int64
}

func (f Fence) String() string { return fmt.Sprintf("%.8s/v%d", f.Generation, f.Version) }

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
	// Metadata is the caller's own labels (tenant, user id); never secret.
	Metadata   map[string]string
	Status     Status
	Generation string
	Version    int64
	LeaseOwner string
	LeaseUntil time.Time
	// RefreshAt puts the connection in the due index; zero keeps it out.
	RefreshAt   time.Time
	RefreshedAt time.Time
	CreatedAt   time.Time
	LastError   string
	LastErrorAt time.Time
	Attempts    int
	// FailingNotified records that the current failure streak has been
	// announced (Connection Refresh Failing), so it is announced once and
	// its end (Connection Recovered) can be.
	FailingNotified bool
	// ImportedAs names the import request that made this grant (empty
	// for one that came any other way): whether it created the
	// connection, a digest of its token pair and one of the whole request.
	// A refresh keeps it, a new grant drops it, so the same import sent
	// again is recognised however often the grant was refreshed since.
	ImportedAs string
	// RefreshDenied, when set, says why the provider will not refresh this
	// grant (the app lacks the permission): the token is served until it
	// expires and the connection then needs re-authorization.
	RefreshDenied string
	// RetryAt is the earliest next provider call after a failed refresh
	// when no usable token is left (the short schedule): callers before it
	// are told to come back then. Zero: no failure waits.
	RetryAt time.Time
}

// Fence is the connection's current generation and version.
func (c *Connection) Fence() Fence { return Fence{Generation: c.Generation, Version: c.Version} }

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
	ListProvider     string            `dynamodbav:"list_provider"`
	Kind             string            `dynamodbav:"kind,omitempty"`
	AccessToken      string            `dynamodbav:"access_token,omitempty"`
	RefreshToken     string            `dynamodbav:"refresh_token,omitempty"`
	TokenType        string            `dynamodbav:"token_type,omitempty"`
	Scope            string            `dynamodbav:"scope,omitempty"`
	ExpiresAt        int64             `dynamodbav:"expires_at,omitempty"`
	RefreshExpiresAt int64             `dynamodbav:"refresh_expires_at,omitempty"`
	Extra            map[string]string `dynamodbav:"extra,omitempty"`
	Metadata         map[string]string `dynamodbav:"metadata,omitempty"`
	Status           string            `dynamodbav:"status"`
	Generation       string            `dynamodbav:"generation,omitempty"`
	Version          int64             `dynamodbav:"version"`
	WriteID          string            `dynamodbav:"write_id,omitempty"`
	LeaseOwner       string            `dynamodbav:"lease_owner,omitempty"`
	LeaseUntilMs     int64             `dynamodbav:"lease_until,omitempty"`
	DueShard         string            `dynamodbav:"due_shard,omitempty"`
	RefreshAt        int64             `dynamodbav:"refresh_at,omitempty"`
	RefreshedAt      int64             `dynamodbav:"refreshed_at,omitempty"`
	CreatedAt        int64             `dynamodbav:"created_at,omitempty"`
	LastError        string            `dynamodbav:"last_error,omitempty"`
	LastErrorAt      int64             `dynamodbav:"last_error_at,omitempty"`
	Attempts         int               `dynamodbav:"attempts,omitempty"`
	FailingNotified  bool              `dynamodbav:"failing_notified,omitempty"`
	RefreshDenied    string            `dynamodbav:"refresh_denied,omitempty"`
	RetryAtMs        int64             `dynamodbav:"retry_at,omitempty"`
	ImportedAs       string            `dynamodbav:"imported_as,omitempty"`
	// RefreshedAtMs is refreshed_at to the millisecond (refreshed_at stays
	// in seconds for what reads it): a forced refresh compares it with
	// when the request arrived.
	RefreshedAtMs int64 `dynamodbav:"refreshed_ms,omitempty"`
}

const (
	fieldAccess  = "access_token"
	fieldRefresh = "refresh_token"
	maxText      = 2048
)

func binding(pk, field string) string { return pk + "/" + field }

func checkLabels(what string, m map[string]string, maxEntries, maxKey, maxValue int) error {
	if len(m) > maxEntries {
		return fmt.Errorf("%w: %d %s entries, at most %d", ErrInvalid, len(m), what, maxEntries)
	}
	for k, v := range m {
		if k == "" || len(k) > maxKey || len(v) > maxValue {
			return fmt.Errorf("%w: %s %.32q empty or too long", ErrInvalid, what, k)
		}
	}
	return nil
}

// toItem is the stored form of c as written by writeID.
func (s *Store) toItem(c *Connection, writeID string) (map[string]types.AttributeValue, error) {
	if err := c.Key.Validate(); err != nil {
		return nil, err
	}
	if err := checkLabels("extra", c.Extra, MaxExtra, 128, maxText); err != nil {
		return nil, err
	}
	if err := checkLabels("metadata", c.Metadata, MaxMetadata, 64, 1024); err != nil {
		return nil, err
	}
	if len(c.TokenType) > 64 || len(c.Scope) > maxText || len(c.Kind) > 64 || len(c.Generation) > 64 {
		return nil, fmt.Errorf("%w: token type, scope, kind or generation too long", ErrInvalid)
	}
	pk := c.Key.pk()
	it := connectionItem{
		PK: pk, Type: "connection", Provider: c.Provider, Connection: c.Connection, ListProvider: c.Provider, Kind: c.Kind,
		TokenType: c.TokenType, Scope: c.Scope,
		ExpiresAt: unixOrZero(c.ExpiresAt), RefreshExpiresAt: unixOrZero(c.RefreshExpiresAt),
		Extra: c.Extra, Metadata: c.Metadata, Status: string(c.Status), Generation: c.Generation, Version: c.Version, WriteID: writeID,
		LeaseOwner: c.LeaseOwner, RefreshedAt: unixOrZero(c.RefreshedAt), CreatedAt: unixOrZero(c.CreatedAt),
		LastError: truncate(c.LastError, maxText), LastErrorAt: unixOrZero(c.LastErrorAt), Attempts: c.Attempts,
		FailingNotified: c.FailingNotified, RefreshDenied: truncate(c.RefreshDenied, maxText), ImportedAs: truncate(c.ImportedAs, 80),
	}
	if it.Status == "" {
		it.Status = string(StatusActive)
	}
	if !c.LeaseUntil.IsZero() {
		it.LeaseUntilMs = c.LeaseUntil.UnixMilli()
	}
	if !c.RetryAt.IsZero() {
		it.RetryAtMs = c.RetryAt.UnixMilli()
	}
	if !c.RefreshedAt.IsZero() {
		it.RefreshedAtMs = c.RefreshedAt.UnixMilli()
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

func decodeConnection(av map[string]types.AttributeValue) (*connectionItem, error) {
	var it connectionItem
	if err := attributevalue.UnmarshalMap(av, &it); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	k := Key{Provider: it.Provider, Connection: it.Connection}
	if k.Validate() != nil || it.PK != k.pk() || it.Type != "connection" {
		return nil, fmt.Errorf("%w: item %.80q is not a connection", ErrCorrupt, it.PK)
	}
	return &it, nil
}

func (s *Store) fromItem(av map[string]types.AttributeValue) (*Connection, error) {
	it, err := decodeConnection(av)
	if err != nil {
		return nil, err
	}
	c := it.clear()
	if it.AccessToken != "" {
		if c.AccessToken, err = s.Ring.Open(it.AccessToken, binding(it.PK, fieldAccess)); err != nil {
			return nil, fmt.Errorf("%w: %s access token: %w", ErrCorrupt, c.Key, err)
		}
	}
	if it.RefreshToken != "" {
		if c.RefreshToken, err = s.Ring.Open(it.RefreshToken, binding(it.PK, fieldRefresh)); err != nil {
			return nil, fmt.Errorf("%w: %s refresh token: %w", ErrCorrupt, c.Key, err)
		}
	}
	return c, nil
}

// existing decodes the connection a write found in its way. Unlike
// fromItem it does not fail on tokens it cannot open (sealed under a key
// since removed): a new grant replacing such an item still needs its
// fence and streak, not its tokens, which are then left empty. Nil when
// the item is not a connection at all.
func (s *Store) existing(av map[string]types.AttributeValue) *Connection {
	if len(av) == 0 {
		return nil
	}
	if c, err := s.fromItem(av); err == nil {
		return c
	}
	it, err := decodeConnection(av)
	if err != nil {
		return nil
	}
	return it.clear()
}

// clear is the item's connection without its tokens.
func (it *connectionItem) clear() *Connection {
	c := &Connection{
		Key:  Key{Provider: it.Provider, Connection: it.Connection},
		Kind: it.Kind, TokenType: it.TokenType, Scope: it.Scope,
		ExpiresAt: timeOrZero(it.ExpiresAt), RefreshExpiresAt: timeOrZero(it.RefreshExpiresAt),
		Extra: it.Extra, Metadata: it.Metadata, Status: Status(it.Status), Generation: it.Generation, Version: it.Version,
		LeaseOwner: it.LeaseOwner, RefreshAt: timeOrZero(it.RefreshAt), RefreshedAt: timeOrZero(it.RefreshedAt),
		CreatedAt: timeOrZero(it.CreatedAt), LastError: it.LastError, LastErrorAt: timeOrZero(it.LastErrorAt),
		Attempts: it.Attempts, FailingNotified: it.FailingNotified, RefreshDenied: it.RefreshDenied, ImportedAs: it.ImportedAs,
	}
	if it.LeaseUntilMs != 0 {
		c.LeaseUntil = time.UnixMilli(it.LeaseUntilMs).UTC()
	}
	if it.RetryAtMs != 0 {
		c.RetryAt = time.UnixMilli(it.RetryAtMs).UTC()
	}
	if it.RefreshedAtMs != 0 && it.RefreshedAtMs/1000 == it.RefreshedAt {
		// Only while it agrees with refreshed_at: a writer that knows only
		// refreshed_at (an older version mid-deploy, an operator's fix)
		// leaves refreshed_ms behind, and then the seconds are the truth.
		c.RefreshedAt = time.UnixMilli(it.RefreshedAtMs).UTC()
	}
	return c
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
