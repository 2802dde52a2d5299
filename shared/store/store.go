package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/tokenbroker/tokenbroker/shared/sealing"
)

// DueIndex is the name of the sparse GSI the refresher queries.
const DueIndex = "due"

// Errors the store returns, wrapped with context. Callers use errors.Is.
var (
	// ErrNotFound: no item for the key (or the item has expired); a
	// conditional write finds it when the connection was deleted.
	ErrNotFound = errors.New("store: not found")
	// ErrVersionConflict: the item is not at the generation and version
	// the write expected (a *ConflictError carries what is stored).
	ErrVersionConflict = errors.New("store: version conflict")
	// ErrLeaseNotGranted: another worker holds a live lease, or the item
	// moved past the expected fence (a *ConflictError carries it).
	ErrLeaseNotGranted = errors.New("store: lease not granted")
	// ErrAlreadyExists: a create found an item already there.
	ErrAlreadyExists = errors.New("store: already exists")
	// ErrStateInvalid: the state is unknown, already used or expired.
	ErrStateInvalid = errors.New("store: state unknown, already used or expired")
	// ErrQuotaExhausted: the daily call budget is spent.
	ErrQuotaExhausted = errors.New("store: daily quota budget exhausted")
	// ErrInvalid: the caller passed something the store refuses to write.
	ErrInvalid = errors.New("store: invalid input")
	// ErrCorrupt: a stored item cannot be decoded or its tokens cannot be opened.
	ErrCorrupt = errors.New("store: corrupt item")
)

// DynamoDB is the part of the SDK client the store uses; *dynamodb.Client
// satisfies it.
type DynamoDB interface {
	TransactWriteItems(ctx context.Context, in *dynamodb.TransactWriteItemsInput, optFns ...func(*dynamodb.Options)) (*dynamodb.TransactWriteItemsOutput, error)
	GetItem(ctx context.Context, in *dynamodb.GetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error)
	PutItem(ctx context.Context, in *dynamodb.PutItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.PutItemOutput, error)
	UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error)
	DeleteItem(ctx context.Context, in *dynamodb.DeleteItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.DeleteItemOutput, error)
	Query(ctx context.Context, in *dynamodb.QueryInput, optFns ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error)
}

// Keys seals tokens before they are written and opens them after they are
// read; *sealing.Ring satisfies it.
type Keys interface {
	Seal(plaintext, binding string) (string, error)
	Open(sealed, binding string) (string, error)
}

// Store reads and writes the table. All fields but Now are required.
type Store struct {
	DB    DynamoDB
	Table string
	Ring  Keys
	// Shards is the number of due-index shards (DUE_SHARDS); 8 when zero.
	Shards int
	// DuePageSize bounds the items per page of a due-index query; DynamoDB's
	// 1 MB page when zero.
	DuePageSize int32
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Store) shards() int {
	if s.Shards > 0 {
		return min(s.Shards, MaxDueShards)
	}
	return 8
}

// ValidID reports whether s may be a provider or connection name:
// [A-Za-z0-9._-]{1,128}. It runs on every request, so it is a byte loop
// rather than a regexp.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Key names one connection.
type Key struct {
	Provider   string
	Connection string
}

// Validate checks both names against [A-Za-z0-9._-]{1,128}.
func (k Key) Validate() error {
	if !ValidID(k.Provider) {
		return fmt.Errorf("%w: provider name must match [A-Za-z0-9._-]{1,128}", ErrInvalid)
	}
	if !ValidID(k.Connection) {
		return fmt.Errorf("%w: connection name must match [A-Za-z0-9._-]{1,128}", ErrInvalid)
	}
	return nil
}

func (k Key) String() string { return k.Provider + "/" + k.Connection }

// pk is the item key. '#' cannot occur in a valid name, so keys never collide.
func (k Key) pk() string { return "conn#" + k.Provider + "#" + k.Connection }

func keyAttr(pk string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{"pk": &types.AttributeValueMemberS{Value: pk}}
}

// dueShard places a connection in a shard of the due index: its
// provider's name and a number that depends only on the key and the shard
// count, so a connection's shard is stable and the refresher can read each
// provider's due connections on their own, without one provider's backlog
// standing in front of another's.
// DueShard is the due-index shard k is filed under.
func (s *Store) DueShard(k Key) string { return s.dueShard(k) }

func (s *Store) dueShard(k Key) string {
	return k.Provider + "#" + s.shardNumber(k.pk())
}

func (s *Store) shardNumber(pk string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(pk))
	return strconv.Itoa(int(h.Sum32() % uint32(s.shards())))
}

// Fingerprint is the first 8 hex digits of SHA-256 of a secret: safe to log,
// enough for an operator to correlate.
func Fingerprint(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:4])
}

func (s *Store) check() error {
	if s == nil || s.DB == nil || s.Table == "" || s.Ring == nil || isNilKeys(s.Ring) {
		return fmt.Errorf("%w: store is not configured (DB, Table and Ring are required)", ErrInvalid)
	}
	return nil
}

func buildExpr(b expression.Builder) (expression.Expression, error) {
	e, err := b.Build()
	if err != nil {
		return e, fmt.Errorf("store: build expression: %w", err)
	}
	return e, nil
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func timeOrZero(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

// isNilKeys catches a typed nil (*sealing.Ring)(nil) in the Keys interface.
func isNilKeys(k Keys) bool {
	r, ok := k.(*sealing.Ring)
	return ok && r == nil
}
