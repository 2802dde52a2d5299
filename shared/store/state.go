package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// State is one authorization in flight. It is stored under a hash of the
// state value, never the value itself, and consumed exactly once.
type State struct {
	Key
	Verifier    string // PKCE code verifier; sealed at rest
	ReturnTo    string
	RedirectURI string
	Scopes      []string
	// Metadata is stored with the connection when the authorization completes.
	Metadata map[string]string
	// Confirm parks the grant for the app to confirm instead of storing it.
	Confirm bool
	// Principal is the IAM principal that started the flow, normalised
	// by the caller (an assumed role's sessions are one principal): in a
	// confirmed flow, only it may confirm.
	Principal string
	CreatedAt time.Time
	ExpiresAt time.Time
}

type stateItem struct {
	PK          string            `dynamodbav:"pk"`
	Type        string            `dynamodbav:"type"`
	Provider    string            `dynamodbav:"provider"`
	Connection  string            `dynamodbav:"connection"`
	Verifier    string            `dynamodbav:"verifier,omitempty"`
	ReturnTo    string            `dynamodbav:"return_to,omitempty"`
	RedirectURI string            `dynamodbav:"redirect_uri,omitempty"`
	Scopes      []string          `dynamodbav:"scopes,omitempty"`
	Metadata    map[string]string `dynamodbav:"metadata,omitempty"`
	Confirm     bool              `dynamodbav:"confirm,omitempty"`
	Principal   string            `dynamodbav:"principal,omitempty"`
	CreatedAt   int64             `dynamodbav:"created_at"`
	ExpiresAt   int64             `dynamodbav:"expires_at"`
	TTL         int64             `dynamodbav:"ttl"`
	WriteID     string            `dynamodbav:"write_id,omitempty"`
	ConsumedBy  string            `dynamodbav:"consumed_by,omitempty"`
}

func statePK(value string) string {
	sum := sha256.Sum256([]byte(value))
	return "state#" + hex.EncodeToString(sum[:])
}

const (
	minStateLen = 16
	maxStateLen = 512
)

func validState(value string) error {
	if len(value) < minStateLen || len(value) > maxStateLen {
		return fmt.Errorf("%w: state must be %d-%d characters", ErrStateInvalid, minStateLen, maxStateLen)
	}
	return nil
}

// PutState stores a new authorization state under the hash of value.
func (s *Store) PutState(ctx context.Context, value string, st *State) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := validState(value); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := st.Key.Validate(); err != nil {
		return err
	}
	if st.ExpiresAt.IsZero() || len(st.ReturnTo) > maxText || len(st.RedirectURI) > maxText || len(st.Scopes) > 64 || len(st.Principal) > maxText {
		return fmt.Errorf("%w: state needs an expiry, and return_to, redirect_uri, scopes and principal within bounds", ErrInvalid)
	}
	if err := checkLabels("metadata", st.Metadata, MaxMetadata, 64, 1024); err != nil {
		return err
	}
	pk := statePK(value)
	it := stateItem{
		PK: pk, Type: "state", Provider: st.Provider, Connection: st.Connection,
		ReturnTo: st.ReturnTo, RedirectURI: st.RedirectURI, Scopes: st.Scopes, Metadata: st.Metadata, Confirm: st.Confirm,
		Principal: st.Principal, CreatedAt: unixOrZero(st.CreatedAt), ExpiresAt: st.ExpiresAt.Unix(),
		// DynamoDB deletes expired items late; consumers check expires_at themselves.
		TTL: st.ExpiresAt.Add(time.Hour).Unix(),
	}
	if st.Verifier != "" {
		v, err := s.Ring.Seal(st.Verifier, binding(pk, "verifier"))
		if err != nil {
			return fmt.Errorf("%w: verifier: %v", ErrInvalid, err)
		}
		it.Verifier = v
	}
	return s.putNew(ctx, "put state", st.Key, func(id string) (map[string]types.AttributeValue, error) {
		it.WriteID = id
		return attributevalue.MarshalMap(it)
	})
}

// ConsumeState marks the state used in one conditional write that also
// checks its expiry, and returns what it held. A second consume of the same
// value, an unknown value or an expired one returns ErrStateInvalid. The
// state is marked rather than deleted so that a retry of this very consume
// (the SDK re-sends after a dropped connection) recognises its own mark
// instead of telling the user the link was already used; the item then
// ages out with its ttl.
func (s *Store) ConsumeState(ctx context.Context, value string) (*State, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := validState(value); err != nil {
		return nil, err
	}
	pk := statePK(value)
	id := NewWriteID()
	cond := expression.AttributeExists(expression.Name("pk")).And(
		expression.Name("type").Equal(expression.Value("state")),
		expression.Name("expires_at").GreaterThan(expression.Value(s.now().Unix())),
		expression.AttributeNotExists(expression.Name("consumed_by")))
	e, err := buildExpr(expression.NewBuilder().WithCondition(cond).
		WithUpdate(expression.Set(expression.Name("consumed_by"), expression.Value(id))))
	if err != nil {
		return nil, err
	}
	out, err := s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(s.Table), Key: keyAttr(pk),
		ConditionExpression: e.Condition(), UpdateExpression: e.Update(),
		ExpressionAttributeNames: e.Names(), ExpressionAttributeValues: e.Values(),
		ReturnValues: types.ReturnValueAllNew, ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld,
	})
	var stored map[string]types.AttributeValue
	var ccf *types.ConditionalCheckFailedException
	switch {
	case errors.As(err, &ccf):
		if v, ok := ccf.Item["consumed_by"].(*types.AttributeValueMemberS); !ok || v.Value != id {
			return nil, fmt.Errorf("%w", ErrStateInvalid)
		}
		stored = ccf.Item // our own consume, applied by an earlier attempt
	case err != nil:
		return nil, fmt.Errorf("store: consume state: %w", err)
	default:
		stored = out.Attributes
	}
	var it stateItem
	if err := attributevalue.UnmarshalMap(stored, &it); err != nil {
		return nil, fmt.Errorf("%w: state: %v", ErrCorrupt, err)
	}
	st := &State{
		Key:      Key{Provider: it.Provider, Connection: it.Connection},
		ReturnTo: it.ReturnTo, RedirectURI: it.RedirectURI, Scopes: it.Scopes, Metadata: it.Metadata, Confirm: it.Confirm,
		Principal: it.Principal, CreatedAt: timeOrZero(it.CreatedAt), ExpiresAt: timeOrZero(it.ExpiresAt),
	}
	if err := st.Key.Validate(); err != nil {
		return nil, fmt.Errorf("%w: state: %v", ErrCorrupt, err)
	}
	if it.Verifier != "" {
		if st.Verifier, err = s.Ring.Open(it.Verifier, binding(pk, "verifier")); err != nil {
			return nil, fmt.Errorf("%w: state verifier: %w", ErrCorrupt, err)
		}
	}
	return st, nil
}
