package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// AuthorizeRequest is what Authorize asks the broker for. Every field is
// optional.
type AuthorizeRequest struct {
	// Scopes replace the provider's configured scopes.
	Scopes []string
	// ReturnTo is where the callback sends the user's browser back; its
	// origin must be in the broker's RETURN_TO_ALLOWLIST. Empty: the
	// callback shows a page of its own.
	ReturnTo string
	// Metadata labels the connection (status, list and events return it).
	// It is stored in the clear: never put a secret here.
	Metadata map[string]string
	// Confirm starts a confirmed flow: the callback parks the grant and
	// redirects to ReturnTo with status=pending&connect_id=…, and only
	// Confirm stores it. Recommended for multi-user apps; needs ReturnTo.
	Confirm bool
}

// Authorization is a started authorization.
type Authorization struct {
	// URL is where to send the user's browser.
	URL string
	// StateExpiresAt is when the authorization can no longer complete.
	StateExpiresAt time.Time
}

// Connection is a connection's state, without secrets.
type Connection struct {
	// Status is "active", "needs_reauth", or "pending" (a machine token
	// whose first fetch has not succeeded yet). LastError is the last
	// refresh failure, empty when there is none.
	Provider, Connection, Status, LastError string
	// ExpiresAt and RefreshedAt are zero when the broker does not know
	// them (a token without expiry).
	ExpiresAt, RefreshedAt time.Time
	// Metadata is the app's labels of the connection; never nil.
	Metadata map[string]string
}

// Grant is an existing grant Import hands to the broker. At least one of
// the two tokens must be set.
type Grant struct {
	AccessToken, RefreshToken, TokenType, Scope string
	// ExpiresAt is when AccessToken expires; zero when it is not known (a
	// grant with a refresh token is then refreshed at once).
	ExpiresAt time.Time
	// Extra keeps only the provider's identifiers of the user (openid,
	// unionid, uid, sub, is_snapshotuser); Metadata labels the connection.
	Extra, Metadata map[string]string
	// Replace replaces an existing connection; without it, importing over
	// one is refused (409 conflict).
	Replace bool
}

// ListOptions narrow List.
type ListOptions struct {
	// Status is "" (every connection), "active" or "needs_reauth".
	Status string
	// PageSize is how many connections each request asks for, 1 to 100;
	// 0 is the broker's default.
	PageSize int
}

// Authorize starts an authorization of provider's connection: send the
// user's browser to the answer's URL. POST …/authorize; errors are
// *Error (400 for a machine-token provider or a return_to outside the
// allowlist, 404 for an unknown provider).
func (c *Client) Authorize(ctx context.Context, provider, connection string, req AuthorizeRequest) (*Authorization, error) {
	if err := checkNames(provider, connection); err != nil {
		return nil, err
	}
	body := struct {
		Scopes   []string          `json:"scopes,omitempty"`
		ReturnTo string            `json:"return_to,omitempty"`
		Metadata map[string]string `json:"metadata,omitempty"`
		Confirm  bool              `json:"confirm,omitempty"`
	}{req.Scopes, req.ReturnTo, req.Metadata, req.Confirm}
	raw, _, err := c.send(ctx, http.MethodPost, connectionPath(provider, connection)+"/authorize", nil, body)
	if err != nil {
		return nil, err
	}
	var a struct {
		AuthorizeURL   string `json:"authorize_url"`
		StateExpiresAt string `json:"state_expires_at"`
	}
	if err := json.Unmarshal(raw, &a); err != nil || a.AuthorizeURL == "" {
		return nil, errors.New("tokenbroker: the answer is not an authorization")
	}
	out := &Authorization{URL: a.AuthorizeURL}
	if out.StateExpiresAt, err = parseTime("state_expires_at", &a.StateExpiresAt); err != nil {
		return nil, err
	}
	return out, nil
}

// Confirm finishes a confirmed flow: it stores the grant the callback
// parked under connectID as this connection. Only the caller that started
// the flow may (403 otherwise); a connect id works once, within 10
// minutes (400 otherwise).
func (c *Client) Confirm(ctx context.Context, provider, connection, connectID string) (*Connection, error) {
	if err := checkNames(provider, connection); err != nil {
		return nil, err
	}
	if connectID == "" {
		return nil, errors.New("tokenbroker: empty connect id")
	}
	raw, _, err := c.send(ctx, http.MethodPost, connectionPath(provider, connection)+"/confirm", nil,
		map[string]string{"connect_id": connectID})
	if err != nil {
		return nil, err
	}
	return parseConnection(raw, "")
}

// Status returns a connection's state. A missing connection is an *Error
// that errors.Is(err, ErrNotFound) matches.
func (c *Client) Status(ctx context.Context, provider, connection string) (*Connection, error) {
	if err := checkNames(provider, connection); err != nil {
		return nil, err
	}
	raw, _, err := c.send(ctx, http.MethodGet, connectionPath(provider, connection), nil, nil)
	if err != nil {
		return nil, err
	}
	return parseConnection(raw, "")
}

// List yields provider's connections in name order, page by page (one
// request per page, following next_cursor), without secrets. An error
// ends the sequence: it is yielded once, with a nil connection.
func (c *Client) List(ctx context.Context, provider string, opts ListOptions) iter.Seq2[*Connection, error] {
	return func(yield func(*Connection, error) bool) {
		if err := checkName("provider", provider); err != nil {
			yield(nil, err)
			return
		}
		query := url.Values{}
		if opts.Status != "" {
			query.Set("status", opts.Status)
		}
		if opts.PageSize != 0 {
			if opts.PageSize < 1 || opts.PageSize > 100 {
				yield(nil, fmt.Errorf("tokenbroker: page size %d must be 1 to 100 (0: the broker's default)", opts.PageSize))
				return
			}
			query.Set("limit", strconv.Itoa(opts.PageSize))
		}
		for {
			raw, _, err := c.send(ctx, http.MethodGet, "/connections/"+url.PathEscape(provider), query, nil)
			if err != nil {
				yield(nil, err)
				return
			}
			var page struct {
				Provider    string            `json:"provider"`
				Connections []json.RawMessage `json:"connections"`
				NextCursor  string            `json:"next_cursor"`
			}
			if err := json.Unmarshal(raw, &page); err != nil {
				yield(nil, fmt.Errorf("tokenbroker: the answer is not a page of connections: %w", err))
				return
			}
			for _, item := range page.Connections {
				conn, err := parseConnection(item, provider)
				if !yield(conn, err) || err != nil {
					return
				}
			}
			if page.NextCursor == "" {
				return
			}
			if page.NextCursor == query.Get("cursor") {
				yield(nil, errors.New("tokenbroker: the broker answered the same cursor twice"))
				return
			}
			query.Set("cursor", page.NextCursor)
		}
	}
}

// Import stores a grant obtained elsewhere as provider's connection.
// created is true when the connection is new (201), false when g.Replace
// replaced one (200). Importing over an existing connection without
// Replace is an *Error 409 conflict.
func (c *Client) Import(ctx context.Context, provider, connection string, g Grant) (conn *Connection, created bool, err error) {
	if err := checkNames(provider, connection); err != nil {
		return nil, false, err
	}
	body := struct {
		AccessToken  string            `json:"access_token,omitempty"`
		RefreshToken string            `json:"refresh_token,omitempty"`
		ExpiresAt    string            `json:"expires_at,omitempty"`
		TokenType    string            `json:"token_type,omitempty"`
		Scope        string            `json:"scope,omitempty"`
		Extra        map[string]string `json:"extra,omitempty"`
		Metadata     map[string]string `json:"metadata,omitempty"`
		// Sent only when set, so that a broker from before replace
		// existed still takes an import that does not replace.
		Replace bool `json:"replace,omitempty"`
	}{AccessToken: g.AccessToken, RefreshToken: g.RefreshToken, TokenType: g.TokenType, Scope: g.Scope,
		Extra: g.Extra, Metadata: g.Metadata, Replace: g.Replace}
	if !g.ExpiresAt.IsZero() {
		body.ExpiresAt = g.ExpiresAt.UTC().Format(time.RFC3339)
	}
	raw, status, err := c.send(ctx, http.MethodPut, connectionPath(provider, connection), nil, body)
	if err != nil {
		return nil, false, err
	}
	conn, err = parseConnection(raw, "")
	if err != nil {
		return nil, false, err
	}
	return conn, status == http.StatusCreated, nil
}

// Delete forgets a connection, revoking its grant at the provider where
// the provider has a revoke endpoint. The broker's delete is idempotent:
// a connection that does not exist (any more) is no error, while an
// unknown provider is an *Error that errors.Is(err, ErrNotFound) matches.
func (c *Client) Delete(ctx context.Context, provider, connection string) error {
	if err := checkNames(provider, connection); err != nil {
		return err
	}
	_, _, err := c.send(ctx, http.MethodDelete, connectionPath(provider, connection), nil, nil)
	return err
}

func checkNames(provider, connection string) error {
	if err := checkName("provider", provider); err != nil {
		return err
	}
	return checkName("connection", connection)
}

// parseConnection reads a status body, or a list item (which has no
// provider: the page's is given).
func parseConnection(raw []byte, provider string) (*Connection, error) {
	var s struct {
		Provider    string            `json:"provider"`
		Connection  string            `json:"connection"`
		Status      string            `json:"status"`
		ExpiresAt   *string           `json:"expires_at"`
		RefreshedAt *string           `json:"refreshed_at"`
		LastError   string            `json:"last_error"`
		Metadata    map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(raw, &s); err != nil || s.Connection == "" || s.Status == "" {
		return nil, errors.New("tokenbroker: the answer is not a connection")
	}
	conn := &Connection{Provider: s.Provider, Connection: s.Connection, Status: s.Status, LastError: s.LastError, Metadata: s.Metadata}
	if conn.Provider == "" {
		conn.Provider = provider
	}
	if conn.Metadata == nil {
		conn.Metadata = map[string]string{}
	}
	var err error
	if conn.ExpiresAt, err = parseTime("expires_at", s.ExpiresAt); err != nil {
		return nil, err
	}
	if conn.RefreshedAt, err = parseTime("refreshed_at", s.RefreshedAt); err != nil {
		return nil, err
	}
	return conn, nil
}

// parseTime reads an RFC 3339 field; null or "" is the zero time.
func parseTime(field string, v *string) (time.Time, error) {
	if v == nil || *v == "" {
		return time.Time{}, nil
	}
	at, err := time.Parse(time.RFC3339, *v)
	if err != nil {
		return time.Time{}, fmt.Errorf("tokenbroker: %s %q is not RFC 3339", field, snippet([]byte(*v), 64))
	}
	return at, nil
}
