package broker

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/redact"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// AuthorizeRequest starts an authorization.
type AuthorizeRequest struct {
	Key      store.Key
	Scopes   []string
	ReturnTo string
	// Metadata is stored with the connection when the authorization
	// completes; see ValidateMetadata.
	Metadata map[string]string
	// Confirm asks for the confirmed flow: the callback parks the grant
	// and only the app's Confirm call stores it. ReturnTo is required.
	Confirm bool
	// Caller is the IAM ARN, for the audit line.
	Caller string
	// RequestBase is https://{domainName} of the incoming request, used for
	// the callback URL when no PUBLIC_BASE_URL or redirect_uri is set.
	RequestBase string
}

// AuthorizeResult is where to send the user's browser.
type AuthorizeResult struct {
	AuthorizeURL   string
	StateExpiresAt time.Time
}

// StartAuthorization stores a single-use state (with the PKCE verifier)
// and returns the provider's authorize URL.
//
// Codes: bad_request (names, scopes, return_to, machine providers),
// not_found (unknown provider), internal.
func (b *Broker) StartAuthorization(ctx context.Context, req AuthorizeRequest) (*AuthorizeResult, error) {
	if err := validKey(req.Key); err != nil {
		return nil, err
	}
	e, err := b.envFor(ctx, req.Key.Provider)
	if err != nil {
		return nil, err
	}
	if e.cfg.Machine() {
		return nil, Errorf(CodeBadRequest, "provider %q issues app tokens without a user: GET /connections/%s/%s/token instead", req.Key.Provider, req.Key.Provider, MachineConnection)
	}
	if len(req.Scopes) > 32 {
		return nil, Errorf(CodeBadRequest, "at most 32 scopes")
	}
	for _, s := range req.Scopes {
		if s == "" || len(s) > 256 || strings.ContainsAny(s, " \t\r\n") {
			return nil, Errorf(CodeBadRequest, "each scope must be 1-256 characters without spaces")
		}
	}
	if err := b.checkReturnTo(req.ReturnTo); err != nil {
		return nil, err
	}
	if err := ValidateMetadata(req.Metadata); err != nil {
		return nil, err
	}
	if req.Confirm && req.ReturnTo == "" {
		return nil, Errorf(CodeBadRequest, "a confirmed flow needs return_to: the app's page that receives connect_id and confirms it")
	}
	redirect, err := b.redirectURI(e.cfg, req.RequestBase)
	if err != nil {
		return nil, err
	}
	state, err := b.randomString(32)
	if err != nil {
		return nil, wrap(CodeInternal, err, "no randomness")
	}
	var verifier, challenge string
	if e.cfg.UsesPKCE() {
		verifier = provider.NewVerifier()
		challenge = provider.S256Challenge(verifier)
	}
	authURL, err := e.client.AuthorizeURL(provider.AuthorizeRequest{State: state, RedirectURI: redirect, Scopes: req.Scopes, CodeChallenge: challenge})
	if err != nil {
		return nil, wrap(CodeBadRequest, err, "cannot build the authorize URL: %s", strings.TrimPrefix(err.Error(), "provider: "))
	}
	now := b.now()
	st := &store.State{Key: req.Key, Verifier: verifier, ReturnTo: req.ReturnTo, RedirectURI: redirect,
		Scopes: req.Scopes, Metadata: req.Metadata, Confirm: req.Confirm, CreatedAt: now, ExpiresAt: now.Add(StateLifetime)}
	if err := e.store.PutState(ctx, state, st); err != nil {
		return nil, storeError(err, "state")
	}
	b.log().InfoContext(ctx, "authorization started", "audit", true, "caller", req.Caller, "provider", req.Key.Provider,
		"connection", req.Key.Connection, "confirm", req.Confirm, "state_fingerprint", store.Fingerprint(state))
	return &AuthorizeResult{AuthorizeURL: authURL, StateExpiresAt: st.ExpiresAt.UTC().Truncate(time.Second)}, nil
}

func (b *Broker) checkReturnTo(returnTo string) error {
	if returnTo == "" {
		return nil
	}
	u, err := url.Parse(returnTo)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || u.User != nil || len(returnTo) > 2048 {
		return Errorf(CodeBadRequest, "return_to must be an absolute http(s) URL")
	}
	origin := strings.ToLower(u.Scheme + "://" + u.Host)
	for _, allowed := range b.ReturnToAllowlist {
		if strings.EqualFold(strings.TrimRight(strings.TrimSpace(allowed), "/"), origin) {
			return nil
		}
	}
	return Errorf(CodeBadRequest, "return_to origin %s is not in RETURN_TO_ALLOWLIST", origin)
}

func (b *Broker) redirectURI(cfg provider.Config, requestBase string) (string, error) {
	if cfg.RedirectURI != "" {
		return cfg.RedirectURI, nil
	}
	base := b.PublicBaseURL
	if base == "" {
		base = requestBase
	}
	if base == "" {
		return "", Errorf(CodeInternal, "no PUBLIC_BASE_URL and no request domain to build the callback URL")
	}
	return strings.TrimRight(base, "/") + "/callback/" + cfg.Name, nil
}

// CallbackRequest is what the provider sent to /callback/{provider}.
type CallbackRequest struct {
	Provider         string
	Code             string
	State            string
	Error            string
	ErrorDescription string
}

// CallbackResult says how an authorization ended, for the redirect.
type CallbackResult struct {
	Key      store.Key
	ReturnTo string
	// ConnectID is set in a confirmed flow: the grant is parked under it
	// until the app confirms it.
	ConnectID string
	// Err is nil when the connection was stored (or parked).
	Err error
}

// ParkLifetime is how long a confirmed flow's grant waits for the app.
const ParkLifetime = 10 * time.Minute

// CompleteAuthorization consumes the state once, exchanges the code (never
// retried: the code may be spent) and stores the connection, replacing any
// previous grant of the same connection, needs_reauth included.
//
// The returned error is set when there is nowhere to send the user back
// (bad or replayed state); otherwise the outcome is in the result.
func (b *Broker) CompleteAuthorization(ctx context.Context, req CallbackRequest) (*CallbackResult, error) {
	if req.State == "" {
		return nil, Errorf(CodeBadRequest, "the callback has no state; start the authorization again")
	}
	e, err := b.envFor(ctx, req.Provider)
	if err != nil {
		return nil, err
	}
	st, err := e.store.ConsumeState(ctx, req.State)
	if errors.Is(err, store.ErrStateInvalid) {
		return nil, Errorf(CodeBadRequest, "this authorization link is unknown, already used or expired; start again")
	}
	if err != nil {
		return nil, storeError(err, "state")
	}
	if st.Provider != req.Provider {
		return nil, Errorf(CodeBadRequest, "this authorization was started for another provider; start again")
	}
	res := &CallbackResult{Key: st.Key, ReturnTo: st.ReturnTo}
	if req.Error != "" {
		res.Err = Errorf(CodeForbidden, "the provider reported %s: %s", redact.Printable(req.Error, 64), redact.Printable(req.ErrorDescription, 200))
		return res, nil
	}
	if req.Code == "" {
		res.Err = Errorf(CodeBadRequest, "the callback has no code; start the authorization again")
		return res, nil
	}
	start := b.now()
	ts, err := e.client.Exchange(ctx, req.Code, st.RedirectURI, st.Verifier)
	b.Metrics.Milliseconds("ProviderLatency", b.now().Sub(start), map[string]string{"Provider": req.Provider, "Op": "exchange"})
	if err != nil {
		b.log().WarnContext(ctx, "code exchange failed", "provider", req.Provider, "connection", st.Connection, "error", err.Error())
		res.Err = exchangeError(err)
		return res, nil
	}
	now := b.now()
	conn := &store.Connection{Key: st.Key, Kind: e.cfg.Kind, Status: store.StatusActive, CreatedAt: now, RefreshedAt: now, Metadata: st.Metadata}
	applyTokens(conn, ts)
	if st.Confirm {
		return b.park(ctx, e, conn, res)
	}
	scheduleRefresh(conn, e.cfg, now)
	if _, err := b.storeGrant(ctx, e.store, conn, "callback"); err != nil {
		res.Err = err
		return res, nil
	}
	b.log().InfoContext(ctx, "connection authorized", "audit", true, "via", "callback", "provider", st.Provider, "connection", st.Connection,
		"account", account(conn), "token_fingerprint", store.Fingerprint(conn.AccessToken), "expires_at", conn.ExpiresAt)
	return res, nil
}

// park holds a confirmed flow's grant, sealed, for ParkLifetime; the
// connection itself is untouched.
func (b *Broker) park(ctx context.Context, e *env, conn *store.Connection, res *CallbackResult) (*CallbackResult, error) {
	id, err := b.randomString(32)
	if err != nil {
		res.Err = wrap(CodeInternal, err, "no randomness")
		return res, nil
	}
	now := b.now()
	p := &store.Parked{Key: conn.Key, Grant: conn, CreatedAt: now, ExpiresAt: now.Add(ParkLifetime)}
	if err := e.store.Park(ctx, id, p); err != nil {
		res.Err = storeError(err, "parked grant")
		return res, nil
	}
	res.ConnectID = id
	b.log().InfoContext(ctx, "grant parked for confirmation", "audit", true, "provider", conn.Provider, "connection", conn.Connection,
		"account", account(conn), "connect_id_fingerprint", store.Fingerprint(id), "token_fingerprint", store.Fingerprint(conn.AccessToken))
	return res, nil
}

// ConfirmRequest finishes a confirmed connect flow.
type ConfirmRequest struct {
	Key       store.Key
	ConnectID string
	Caller    string
}

// Confirm stores the grant parked under req.ConnectID as req.Key's
// connection: the app, which knows its logged-in user, vouches that this
// user completed this flow. The claim and the store are one transaction,
// so a connect id works once. Codes: bad_request (unknown, used, expired
// or foreign connect id), not_found (provider), internal.
func (b *Broker) Confirm(ctx context.Context, req ConfirmRequest) (*Status, error) {
	if err := validKey(req.Key); err != nil {
		return nil, err
	}
	bad := Errorf(CodeBadRequest, "connect_id is unknown, already used, expired or not for this connection; start the authorization again")
	if len(req.ConnectID) < 16 || len(req.ConnectID) > 512 {
		return nil, bad
	}
	e, err := b.envFor(ctx, req.Key.Provider)
	if err != nil {
		return nil, err
	}
	p, err := e.store.GetParked(ctx, req.ConnectID, req.Key)
	if errors.Is(err, store.ErrStateInvalid) {
		return nil, bad
	}
	if err != nil {
		return nil, storeError(err, "parked grant")
	}
	now := b.now()
	conn := p.Grant
	conn.CreatedAt, conn.RefreshedAt = now, now
	scheduleRefresh(conn, e.cfg, now)
	notice := b.authorizedNotice(e.store, conn, "confirm")
	w, err := e.store.PrepareConfirm(req.ConnectID, conn, notice)
	if err == nil {
		err = b.durably(ctx, now.Add(b.budget().Commit), w)
	}
	if errors.Is(err, store.ErrStateInvalid) {
		return nil, bad
	}
	if err != nil {
		return nil, storeError(err, "connection")
	}
	b.publish(ctx, e.store, notice)
	b.log().InfoContext(ctx, "connection authorized", "audit", true, "via", "confirm", "caller", req.Caller, "provider", req.Key.Provider,
		"connection", req.Key.Connection, "account", account(conn), "token_fingerprint", store.Fingerprint(conn.AccessToken))
	return &Status{Key: req.Key, Status: conn.Status, ExpiresAt: conn.ExpiresAt, RefreshedAt: conn.RefreshedAt, Metadata: conn.Metadata}, nil
}

// account is the provider's identifier of the user, where it gives one.
func account(c *store.Connection) string {
	for _, k := range []string{"openid", "sub", "uid"} {
		if v := c.Extra[k]; v != "" {
			return v
		}
	}
	return ""
}

// exchangeError explains a failed code exchange: the user must start
// again, because retrying could hit a spent code.
func exchangeError(err error) error {
	var pe *provider.Error
	if !errors.As(err, &pe) {
		return wrap(CodeProviderUnavailable, err, "the provider could not be reached; start the authorization again")
	}
	if pe.Class == provider.ClassTransient {
		return wrap(CodeProviderUnavailable, err, "the provider failed (%s: %s); start the authorization again", pe.Code, pe.Message)
	}
	return wrap(CodeProviderError, err, "the provider refused the code (%s: %s); start the authorization again", pe.Code, pe.Message)
}

// storeGrant stores a freshly authorized connection over whatever is
// there, under a new generation, so any refresh in flight on the old grant
// loses; the Connection Authorized event is written with it. It reports
// whether the connection is new.
func (b *Broker) storeGrant(ctx context.Context, st *store.Store, conn *store.Connection, via string) (created bool, err error) {
	until := b.now().Add(b.budget().Commit)
	notice := b.authorizedNotice(st, conn, via)
	w, err := st.PrepareCreate(conn, notice)
	if err == nil {
		err = b.durably(ctx, until, w)
	}
	created = err == nil
	if errors.Is(err, store.ErrAlreadyExists) {
		if w, err = st.PrepareReplace(conn, notice); err == nil {
			err = b.durably(ctx, until, w)
		}
	}
	if err != nil {
		return false, storeError(err, "connection")
	}
	b.publish(ctx, st, notice)
	return created, nil
}

// applyTokens writes a provider's answer onto a connection. A refresh
// answer without a refresh token keeps the old one (and its expiry); a
// rotated one replaces it.
func applyTokens(c *store.Connection, ts *provider.TokenSet) {
	c.AccessToken = ts.AccessToken
	c.TokenType = ts.TokenType
	if ts.Scope != "" {
		c.Scope = ts.Scope
	}
	c.ExpiresAt = ts.ExpiresAt
	if ts.RefreshToken != "" && ts.RefreshToken != c.RefreshToken {
		c.RefreshToken = ts.RefreshToken
		c.RefreshExpiresAt = ts.RefreshExpiresAt
	} else if !ts.RefreshExpiresAt.IsZero() {
		c.RefreshExpiresAt = ts.RefreshExpiresAt
	}
	if len(ts.Extra) > 0 {
		if c.Extra == nil {
			c.Extra = map[string]string{}
		}
		for k, v := range ts.Extra {
			if len(c.Extra) < store.MaxExtra || c.Extra[k] != "" {
				c.Extra[k] = v
			}
		}
	}
}
