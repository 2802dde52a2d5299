package broker

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tokenbroker/tokenbroker/shared/store"
)

// Metadata bounds.
const (
	MaxMetadataKeys   = 10
	MaxMetadataValue  = 256 // characters
	maxMetadataKeyLen = 64
)

// ValidateMetadata checks a connection's metadata: at most 10 keys of
// [A-Za-z0-9_.-]{1,64}, values of at most 256 characters. Metadata is
// stored in the clear and returned by status, list and events: never a
// secret. Code: bad_request.
func ValidateMetadata(m map[string]string) error {
	if len(m) > MaxMetadataKeys {
		return Errorf(CodeBadRequest, "metadata has %d keys, at most %d", len(m), MaxMetadataKeys)
	}
	for k, v := range m {
		if len(k) > maxMetadataKeyLen || !store.ValidID(k) {
			return Errorf(CodeBadRequest, "metadata key %.70q must match [A-Za-z0-9_.-]{1,64}", k)
		}
		if !utf8.ValidString(v) || utf8.RuneCountInString(v) > MaxMetadataValue {
			return Errorf(CodeBadRequest, "metadata value of %q must be text of at most %d characters", k, MaxMetadataValue)
		}
	}
	return nil
}

// ListRequest asks for one page of a provider's connections.
type ListRequest struct {
	Provider string
	// Status filters: active or needs_reauth; empty for all.
	Status store.Status
	// Limit is 1 to 100; 50 when zero.
	Limit int
	// Cursor is the next_cursor of the previous page; empty for the first.
	Cursor string
}

// ListPage is one page of connections, in name order.
type ListPage struct {
	Provider    string
	Connections []store.Listed
	// NextCursor is empty on the last page.
	NextCursor string
}

type cursor struct {
	After string `json:"a"`
}

// List pages through a provider's connections, from an index, with no
// secret. Codes: bad_request (status, limit, cursor), not_found (provider),
// internal.
func (b *Broker) List(ctx context.Context, req ListRequest) (*ListPage, error) {
	switch req.Status {
	case "", store.StatusActive, store.StatusNeedsReauth:
	default:
		return nil, Errorf(CodeBadRequest, "status must be active or needs_reauth")
	}
	if req.Limit == 0 {
		req.Limit = 50
	}
	if req.Limit < 1 || req.Limit > 100 {
		return nil, Errorf(CodeBadRequest, "limit must be from 1 to 100")
	}
	after := ""
	if req.Cursor != "" {
		raw, err := base64.RawURLEncoding.DecodeString(req.Cursor)
		var c cursor
		if err != nil || len(raw) > 512 || json.Unmarshal(raw, &c) != nil || !store.ValidID(c.After) {
			return nil, Errorf(CodeBadRequest, "cursor is not one this API returned")
		}
		after = c.After
	}
	e, err := b.envFor(ctx, req.Provider)
	if err != nil {
		return nil, err
	}
	page, more, err := e.store.List(ctx, req.Provider, req.Status, after, req.Limit)
	if err != nil {
		return nil, storeError(err, "connections")
	}
	out := &ListPage{Provider: req.Provider, Connections: page}
	if more {
		raw, _ := json.Marshal(cursor{After: page[len(page)-1].Connection})
		out.NextCursor = base64.RawURLEncoding.EncodeToString(raw)
	}
	return out, nil
}

// ImportRequest brings an existing grant (from another tool) into the
// broker.
type ImportRequest struct {
	Key          store.Key
	AccessToken  string
	RefreshToken string
	// ExpiresIn (seconds) or ExpiresAt: at most one.
	ExpiresIn *int64
	ExpiresAt *time.Time
	TokenType string
	Scope     string
	// Extra holds what the importer says the provider told it (openid,
	// unionid, uid, sub, is_snapshotuser). It is the importer's word, not
	// the provider's: each is kept as asserted_<name> (a name already
	// spelled asserted_<name> is taken as is), never under the name the
	// provider's own answers use, and never as the account of Connection
	// Authorized.
	Extra    map[string]string
	Metadata map[string]string
	// Replace allows replacing an existing connection's grant; without it
	// an existing connection is a conflict and nothing changes.
	Replace bool
	Caller  string
}

// importableExtra are the provider identifiers an import may carry; like
// a provider's answer, nothing else is stored outside the sealed tokens.
var importableExtra = map[string]bool{"openid": true, "unionid": true, "uid": true, "sub": true, "is_snapshotuser": true}

// AssertedPrefix marks an extra that an importer asserted, as opposed to
// one the provider itself answered: an import's extra.sub is served as
// extra.asserted_sub, so a backend never takes it for the provider's word.
const AssertedPrefix = "asserted_"

// assertedExtra renames an import's extras to their asserted_ names.
func assertedExtra(in map[string]string) (map[string]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(in))
	for k, v := range in {
		name := strings.TrimPrefix(k, AssertedPrefix)
		if !importableExtra[name] || len(v) > 256 {
			return nil, Errorf(CodeBadRequest, "extra may hold only openid, unionid, uid, sub and is_snapshotuser (at most 256 characters each); %.40q is not kept", k)
		}
		if prev, dup := out[AssertedPrefix+name]; dup && prev != v {
			return nil, Errorf(CodeBadRequest, "extra gives %s and %s%s with different values", name, AssertedPrefix, name)
		}
		out[AssertedPrefix+name] = v
	}
	return out, nil
}

// Import stores an existing grant, sealed and scheduled like any other.
// An existing connection is replaced only with req.Replace (conflict
// otherwise, nothing changed); created reports a new connection. A grant
// with a refresh token but no known expiry is refreshed right away, so
// its expiry becomes known. Identity fields in req.Extra are kept as
// asserted (see ImportRequest.Extra).
//
// Codes: bad_request (body, machine providers), conflict (exists, no
// replace), not_found (provider), internal.
func (b *Broker) Import(ctx context.Context, req ImportRequest) (st *Status, created bool, err error) {
	if err := b.homeWrites("importing a grant"); err != nil {
		return nil, false, err
	}
	if err := validKey(req.Key); err != nil {
		return nil, false, err
	}
	if req.AccessToken == "" && req.RefreshToken == "" {
		return nil, false, Errorf(CodeBadRequest, "an import needs an access_token, a refresh_token or both")
	}
	if req.ExpiresIn != nil && req.ExpiresAt != nil {
		return nil, false, Errorf(CodeBadRequest, "give expires_in or expires_at, not both")
	}
	if len(req.TokenType) > 64 || len(req.Scope) > 2048 {
		return nil, false, Errorf(CodeBadRequest, "token_type or scope too long")
	}
	extra, err := assertedExtra(req.Extra)
	if err != nil {
		return nil, false, err
	}
	if err := ValidateMetadata(req.Metadata); err != nil {
		return nil, false, err
	}
	e, err := b.envFor(ctx, req.Key.Provider)
	if err != nil {
		return nil, false, err
	}
	if e.cfg.Machine() {
		return nil, false, Errorf(CodeBadRequest, "provider %q issues app tokens itself; there is nothing to import", req.Key.Provider)
	}
	now := b.now()
	conn := &store.Connection{Key: req.Key, Kind: e.cfg.Kind, AccessToken: req.AccessToken, RefreshToken: req.RefreshToken,
		TokenType: req.TokenType, Scope: req.Scope, Extra: extra, Metadata: req.Metadata, Status: store.StatusActive,
		CreatedAt: now, RefreshedAt: now}
	if conn.TokenType == "" {
		conn.TokenType = "Bearer"
	}
	switch {
	case req.ExpiresIn != nil:
		if *req.ExpiresIn < 0 || *req.ExpiresIn > 10*365*24*3600 {
			return nil, false, Errorf(CodeBadRequest, "expires_in must be from 0 to ten years in seconds")
		}
		conn.ExpiresAt = now.Add(time.Duration(*req.ExpiresIn) * time.Second)
	case req.ExpiresAt != nil:
		if req.ExpiresAt.After(now.Add(10*365*24*time.Hour)) || req.ExpiresAt.Year() < 2000 {
			return nil, false, Errorf(CodeBadRequest, "expires_at must be a time between 2000 and ten years from now")
		}
		conn.ExpiresAt = req.ExpiresAt.UTC()
	case req.RefreshToken != "" || req.AccessToken == "":
		conn.ExpiresAt = now // unknown: refresh at once
	}
	scheduleRefresh(conn, e.cfg, now)
	created, stored, err := b.storeGrant(ctx, e, conn, "import", req.Replace, func(pre store.Precondition, notices []store.Notice) (*store.Write, error) {
		conn.ImportedAs = importDigest(req, !pre.Replace)
		return e.store.PrepareReplace(conn, pre, notices...)
	})
	if errors.Is(err, errAlreadyImported) {
		// The grant this very import made, refreshed or not since: the
		// import is not written again; the answer is the grant as it is.
		b.log().InfoContext(ctx, "import already applied; nothing written", "audit", true, "caller", req.Caller, "provider", req.Key.Provider,
			"connection", req.Key.Connection)
		return &Status{Key: req.Key, Status: stored.Status, ExpiresAt: stored.ExpiresAt, RefreshedAt: stored.RefreshedAt, Metadata: stored.Metadata}, created, nil
	}
	if err != nil {
		if ErrorCode(err) == CodeConflict {
			b.log().WarnContext(ctx, "import refused: the connection exists and replace was not asked", "audit", true, "caller", req.Caller,
				"provider", req.Key.Provider, "connection", req.Key.Connection)
		}
		return nil, false, err
	}
	b.log().InfoContext(ctx, "connection imported", "audit", true, "caller", req.Caller, "provider", req.Key.Provider,
		"connection", req.Key.Connection, "created", created, "token_fingerprint", store.Fingerprint(conn.AccessToken))
	return &Status{Key: req.Key, Status: conn.Status, ExpiresAt: conn.ExpiresAt, RefreshedAt: conn.RefreshedAt, Metadata: conn.Metadata}, created, nil
}

// importDigest names an import request, for the grant it makes: a mark
// ("c" when the import created the connection, "r" when it replaced one),
// a digest of the token pair, and a digest of everything the request asks
// to store, so that the same request sent again (a retry after a lost
// answer) is recognised, and so is the same token pair in a request built
// anew. expires_in is taken as sent, not as the time it makes.
func importDigest(req ImportRequest, created bool) string {
	mark := "r"
	if created {
		mark = "c"
	}
	return mark + ":" + digest(struct{ Access, Refresh string }{req.AccessToken, req.RefreshToken}) + ":" + digest(struct {
		Provider, Connection, Access, Refresh, TokenType, Scope string
		ExpiresIn                                               *int64
		ExpiresAt                                               *time.Time
		Extra, Metadata                                         map[string]string
	}{req.Key.Provider, req.Key.Connection, req.AccessToken, req.RefreshToken, req.TokenType, req.Scope, req.ExpiresIn, req.ExpiresAt, req.Extra, req.Metadata})
}

func digest(v any) string {
	body, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:16])
}

// importParts reads an import digest back: whether that import created
// the connection, and the digests of its token pair and of its request
// (empty for a grant no import made).
func importParts(d string) (created bool, tokens, request string) {
	parts := strings.Split(d, ":")
	if len(parts) != 3 {
		return false, "", ""
	}
	return parts[0] == "c", parts[1], parts[2]
}
