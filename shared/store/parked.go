package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Parked is a grant the callback obtained in a confirmed connect flow,
// held (sealed) until the app confirms it for its logged-in user. It is
// stored under a hash of its connect id and never becomes a connection
// unless confirmed, once, before it expires, for the connection it was
// started for.
type Parked struct {
	Key
	Grant *Connection // the tokens, in the clear after Get
	// Principal is the flow's starting principal (State.Principal): only
	// it may confirm.
	Principal string
	// StateFingerprint is Fingerprint of the flow's state value, so the
	// confirm's audit line links to the authorize and callback ones.
	StateFingerprint string
	CreatedAt        time.Time
	ExpiresAt        time.Time
}

type parkedItem struct {
	PK               string            `dynamodbav:"pk"`
	Type             string            `dynamodbav:"type"`
	Provider         string            `dynamodbav:"provider"`
	Connection       string            `dynamodbav:"connection"`
	Kind             string            `dynamodbav:"kind,omitempty"`
	AccessToken      string            `dynamodbav:"access_token,omitempty"`
	RefreshToken     string            `dynamodbav:"refresh_token,omitempty"`
	TokenType        string            `dynamodbav:"token_type,omitempty"`
	Scope            string            `dynamodbav:"scope,omitempty"`
	TokenExpiresAt   int64             `dynamodbav:"token_expires_at,omitempty"`
	RefreshExpiresAt int64             `dynamodbav:"refresh_expires_at,omitempty"`
	Extra            map[string]string `dynamodbav:"extra,omitempty"`
	Metadata         map[string]string `dynamodbav:"metadata,omitempty"`
	Principal        string            `dynamodbav:"principal,omitempty"`
	StateFingerprint string            `dynamodbav:"state_fingerprint,omitempty"`
	CreatedAt        int64             `dynamodbav:"created_at"`
	ExpiresAt        int64             `dynamodbav:"expires_at"`
	TTL              int64             `dynamodbav:"ttl"`
	WriteID          string            `dynamodbav:"write_id,omitempty"`
	Claimed          bool              `dynamodbav:"claimed,omitempty"`
}

func parkedPK(connectID string) string {
	sum := sha256.Sum256([]byte(connectID))
	return "parked#" + hex.EncodeToString(sum[:])
}

// Park stores a grant under connectID until p.ExpiresAt.
func (s *Store) Park(ctx context.Context, connectID string, p *Parked) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := validState(connectID); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := p.Key.Validate(); err != nil {
		return err
	}
	if p.Grant == nil || p.ExpiresAt.IsZero() || len(p.Principal) > maxText || len(p.StateFingerprint) > 64 {
		return fmt.Errorf("%w: a parked grant needs tokens and an expiry, and a principal within bounds", ErrInvalid)
	}
	pk := parkedPK(connectID)
	g := p.Grant
	it := parkedItem{PK: pk, Type: "parked", Provider: p.Provider, Connection: p.Connection, Kind: g.Kind,
		TokenType: g.TokenType, Scope: truncate(g.Scope, maxText), TokenExpiresAt: unixOrZero(g.ExpiresAt),
		RefreshExpiresAt: unixOrZero(g.RefreshExpiresAt), Extra: g.Extra, Metadata: g.Metadata,
		Principal: p.Principal, StateFingerprint: p.StateFingerprint, CreatedAt: unixOrZero(p.CreatedAt), ExpiresAt: p.ExpiresAt.Unix(), TTL: p.ExpiresAt.Add(time.Hour).Unix()}
	var err error
	if g.AccessToken != "" {
		if it.AccessToken, err = s.Ring.Seal(g.AccessToken, binding(pk, fieldAccess)); err != nil {
			return fmt.Errorf("%w: access token: %v", ErrInvalid, err)
		}
	}
	if g.RefreshToken != "" {
		if it.RefreshToken, err = s.Ring.Seal(g.RefreshToken, binding(pk, fieldRefresh)); err != nil {
			return fmt.Errorf("%w: refresh token: %v", ErrInvalid, err)
		}
	}
	return s.putNew(ctx, "park grant", p.Key, func(id string) (map[string]types.AttributeValue, error) {
		it.WriteID = id
		return attributevalue.MarshalMap(it)
	})
}

// GetParked reads the grant parked under connectID for k: ErrStateInvalid
// when there is none, it expired, it was claimed already, or it was parked
// for another connection. Nothing is changed.
func (s *Store) GetParked(ctx context.Context, connectID string, k Key) (*Parked, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := validState(connectID); err != nil {
		return nil, err
	}
	pk := parkedPK(connectID)
	out, err := s.DB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(s.Table), Key: keyAttr(pk), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return nil, fmt.Errorf("store: get parked grant: %w", err)
	}
	var it parkedItem
	if len(out.Item) == 0 || attributevalue.UnmarshalMap(out.Item, &it) != nil || it.Type != "parked" || it.Claimed ||
		it.Provider != k.Provider || it.Connection != k.Connection || !s.now().Before(time.Unix(it.ExpiresAt, 0)) {
		return nil, fmt.Errorf("%w: connect id", ErrStateInvalid)
	}
	g := &Connection{Key: k, Kind: it.Kind, TokenType: it.TokenType, Scope: it.Scope, ExpiresAt: timeOrZero(it.TokenExpiresAt),
		RefreshExpiresAt: timeOrZero(it.RefreshExpiresAt), Extra: it.Extra, Metadata: it.Metadata, Status: StatusActive}
	if it.AccessToken != "" {
		if g.AccessToken, err = s.Ring.Open(it.AccessToken, binding(pk, fieldAccess)); err != nil {
			return nil, fmt.Errorf("%w: parked access token: %w", ErrCorrupt, err)
		}
	}
	if it.RefreshToken != "" {
		if g.RefreshToken, err = s.Ring.Open(it.RefreshToken, binding(pk, fieldRefresh)); err != nil {
			return nil, fmt.Errorf("%w: parked refresh token: %w", ErrCorrupt, err)
		}
	}
	return &Parked{Key: k, Grant: g, Principal: it.Principal, StateFingerprint: it.StateFingerprint,
		CreatedAt: timeOrZero(it.CreatedAt), ExpiresAt: time.Unix(it.ExpiresAt, 0).UTC()}, nil
}

// PrepareConfirm prepares, in one transaction: claiming the grant parked
// under connectID (only if still unclaimed, unexpired, parked for c's key
// and started by principal), storing c under pre (see PrepareReplace)
// under a new generation, and the notices. A claim that fails is
// ErrStateInvalid; a connection not as pre expects is ErrAlreadyExists or
// a *ConflictError, with Write.Existing; a retry of this very write is
// recognised as success.
func (s *Store) PrepareConfirm(connectID, principal string, c *Connection, pre Precondition, notices ...Notice) (*Write, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := validState(connectID); err != nil {
		return nil, err
	}
	c.Generation = NewWriteID()
	w := s.newWrite("confirm", c.Key, Fence{})
	w.create = !pre.Replace
	if pre.At != nil {
		w.want = *pre.At
	}
	connItem, err := s.toItem(c, w.ID)
	if err != nil {
		return nil, err
	}
	byPrincipal := expression.Name("principal").Equal(expression.Value(principal))
	if principal == "" {
		byPrincipal = expression.AttributeNotExists(expression.Name("principal"))
	}
	cond := expression.AttributeNotExists(expression.Name("claimed")).And(
		expression.Name("type").Equal(expression.Value("parked")),
		expression.Name("provider").Equal(expression.Value(c.Provider)),
		expression.Name("connection").Equal(expression.Value(c.Connection)),
		expression.Name("expires_at").GreaterThan(expression.Value(s.now().Unix())),
		byPrincipal)
	connPut := &types.Put{TableName: aws.String(s.Table), Item: connItem,
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld}
	if pc := pre.condition(); pc != nil {
		ce, err := buildExpr(expression.NewBuilder().WithCondition(*pc))
		if err != nil {
			return nil, err
		}
		connPut.ConditionExpression, connPut.ExpressionAttributeNames, connPut.ExpressionAttributeValues = ce.Condition(), ce.Names(), ce.Values()
	}
	upd := expression.Set(expression.Name("claimed"), expression.Value(true)).Set(expression.Name("write_id"), expression.Value(w.ID))
	e, err := buildExpr(expression.NewBuilder().WithCondition(cond).WithUpdate(upd))
	if err != nil {
		return nil, err
	}
	items := []types.TransactWriteItem{
		{Update: &types.Update{TableName: aws.String(s.Table), Key: keyAttr(parkedPK(connectID)),
			ConditionExpression: e.Condition(), UpdateExpression: e.Update(), ExpressionAttributeNames: e.Names(),
			ExpressionAttributeValues: e.Values(), ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld}},
		{Put: connPut},
	}
	for _, n := range notices {
		av, err := s.noticeItem(n)
		if err != nil {
			return nil, err
		}
		items = append(items, types.TransactWriteItem{Put: &types.Put{TableName: aws.String(s.Table), Item: av}})
	}
	w.tx = &dynamodb.TransactWriteItemsInput{TransactItems: items, ClientRequestToken: aws.String(w.ID)}
	w.claim, w.connIndex = true, 1
	return w, nil
}
