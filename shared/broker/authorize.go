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
	// Caller is the IAM ARN, for the audit line; its principal (see
	// Principal) is the only one that may confirm a confirmed flow.
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
		Scopes: req.Scopes, Metadata: req.Metadata, Confirm: req.Confirm, Principal: Principal(req.Caller),
		CreatedAt: now, ExpiresAt: now.Add(StateLifetime)}
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

// Principal is the IAM principal behind a caller's ARN, as a confirmed
// flow is bound to it: an assumed-role session
// (arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION) becomes its role,
// arn:aws:iam::ACCOUNT:role/ROLE, because every Lambda instance or task of
// one app signs as another session of the same role. The session ARN does
// not carry the role's path, so neither does the result. Any other caller
// is taken as it is.
func Principal(caller string) string {
	parts := strings.SplitN(caller, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "sts" || parts[3] != "" {
		return caller
	}
	rest, ok := strings.CutPrefix(parts[5], "assumed-role/")
	if !ok {
		return caller
	}
	role, session, ok := strings.Cut(rest, "/")
	if !ok || role == "" || session == "" {
		return caller
	}
	return "arn:" + parts[1] + ":iam::" + parts[4] + ":role/" + role
}

// CompleteAuthorization consumes the state once, exchanges the code (never
// retried: the code may be spent) and stores the connection, replacing any
// previous grant of the same connection, needs_reauth included.
//
// The returned error is set when there is nowhere to send the user back
// (bad or replayed state); otherwise the outcome is in the result.
func (b *Broker) CompleteAuthorization(ctx context.Context, req CallbackRequest) (out *CallbackResult, failed error) {
	stateFP, audited := "", false
	if req.State != "" {
		stateFP = store.Fingerprint(req.State)
	}
	defer func() {
		// Every callback that stores nothing leaves a line too, with the
		// fingerprint of the state it presented, so the trail from
		// authorize to callback holds when something goes wrong.
		if audited {
			return
		}
		why := failed
		if why == nil && out != nil {
			why = out.Err
		}
		if why != nil {
			b.log().WarnContext(ctx, "callback stored nothing", "audit", true, "provider", req.Provider, "state_fingerprint", stateFP,
				"code", string(ErrorCode(why)), "reason", ErrorMessage(why))
		}
	}()
	if req.State == "" {
		return nil, Errorf(CodeBadRequest, "the callback has no state; start the authorization again")
	}
	if err := b.homeWrites("completing an authorization"); err != nil {
		return nil, err
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
		b.log().InfoContext(ctx, "authorization refused at the provider", "audit", true, "principal", st.Principal, "provider", st.Provider,
			"connection", st.Connection, "state_fingerprint", stateFP, "error", redact.Printable(req.Error, 64))
		audited = true
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
		b.log().WarnContext(ctx, "code exchange failed", "audit", true, "principal", st.Principal, "provider", req.Provider, "connection", st.Connection,
			"state_fingerprint", stateFP, "error", err.Error())
		res.Err = exchangeError(err)
		audited = true
		return res, nil
	}
	now := b.now()
	conn := &store.Connection{Key: st.Key, Kind: e.cfg.Kind, Status: store.StatusActive, CreatedAt: now, RefreshedAt: now, Metadata: st.Metadata}
	applyTokens(conn, ts)
	if st.Confirm {
		res, err := b.park(ctx, e, conn, st.Principal, stateFP, res)
		audited = res != nil && res.Err == nil
		return res, err
	}
	scheduleRefresh(conn, e.cfg, now)
	_, old, err := b.storeGrant(ctx, e, conn, "callback", true, func(pre store.Precondition, notices []store.Notice) (*store.Write, error) {
		return e.store.PrepareReplace(conn, pre, notices...)
	})
	if err != nil {
		res.Err = err
		return res, nil
	}
	b.log().InfoContext(ctx, "connection authorized", "audit", true, "via", "callback", "principal", st.Principal, "provider", st.Provider,
		"connection", st.Connection, "account", account(conn), "state_fingerprint", stateFP, "token_fingerprint", store.Fingerprint(conn.AccessToken),
		"expires_at", conn.ExpiresAt, "replaced", old != nil)
	audited = true
	return res, nil
}

// park holds a confirmed flow's grant, sealed, for ParkLifetime; the
// connection itself is untouched.
func (b *Broker) park(ctx context.Context, e *env, conn *store.Connection, principal, stateFP string, res *CallbackResult) (*CallbackResult, error) {
	id, err := b.randomString(32)
	if err != nil {
		res.Err = wrap(CodeInternal, err, "no randomness")
		return res, nil
	}
	now := b.now()
	p := &store.Parked{Key: conn.Key, Grant: conn, Principal: principal, StateFingerprint: stateFP, CreatedAt: now, ExpiresAt: now.Add(ParkLifetime)}
	if err := e.store.Park(ctx, id, p); err != nil {
		res.Err = storeError(err, "parked grant")
		return res, nil
	}
	res.ConnectID = id
	b.log().InfoContext(ctx, "grant parked for confirmation", "audit", true, "principal", principal, "provider", conn.Provider, "connection", conn.Connection,
		"account", account(conn), "state_fingerprint", stateFP, "connect_id_fingerprint", store.Fingerprint(id), "token_fingerprint", store.Fingerprint(conn.AccessToken))
	return res, nil
}

// ConfirmRequest finishes a confirmed connect flow.
type ConfirmRequest struct {
	Key       store.Key
	ConnectID string
	// Caller is the IAM ARN; its principal must be the one that started
	// the flow.
	Caller string
}

// Confirm stores the grant parked under req.ConnectID as req.Key's
// connection: the app, which knows its logged-in user, vouches that this
// user completed this flow. The claim and the store are one transaction,
// so a connect id works once. Only the principal that started the flow
// may confirm it (see Principal): another gets forbidden, and the grant
// stays parked for the right one until it expires.
//
// Codes: bad_request (unknown, used, expired or foreign connect id),
// forbidden (another principal), not_found (provider), internal.
func (b *Broker) Confirm(ctx context.Context, req ConfirmRequest) (*Status, error) {
	if err := b.homeWrites("confirming a connection"); err != nil {
		return nil, err
	}
	if err := validKey(req.Key); err != nil {
		return nil, err
	}
	// A confirm whose answer was lost finds its connect id used: the
	// message sends that caller to the status, which tells whether the
	// grant was stored, before a user is sent through consent again.
	bad := Errorf(CodeBadRequest, "connect_id is unknown, already used, expired or not for this connection; "+
		"if an earlier confirm's answer was lost, read the connection's status first, else start the authorization again")
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
	if principal := Principal(req.Caller); principal != p.Principal {
		b.log().WarnContext(ctx, "confirm refused: another principal started this flow", "audit", true, "caller", req.Caller,
			"principal", principal, "started_by", p.Principal, "provider", req.Key.Provider, "connection", req.Key.Connection,
			"state_fingerprint", p.StateFingerprint, "connect_id_fingerprint", store.Fingerprint(req.ConnectID))
		return nil, Errorf(CodeForbidden, "this connect flow was started by another IAM principal; only that principal may confirm it")
	}
	now := b.now()
	conn := p.Grant
	conn.CreatedAt, conn.RefreshedAt = now, now
	scheduleRefresh(conn, e.cfg, now)
	_, old, err := b.storeGrant(ctx, e, conn, "confirm", true, func(pre store.Precondition, notices []store.Notice) (*store.Write, error) {
		return e.store.PrepareConfirm(req.ConnectID, p.Principal, conn, pre, notices...)
	})
	if errors.Is(err, store.ErrStateInvalid) {
		return nil, bad
	}
	if err != nil {
		return nil, err
	}
	b.log().InfoContext(ctx, "connection authorized", "audit", true, "via", "confirm", "caller", req.Caller, "principal", p.Principal,
		"provider", req.Key.Provider, "connection", req.Key.Connection, "account", account(conn), "state_fingerprint", p.StateFingerprint,
		"connect_id_fingerprint", store.Fingerprint(req.ConnectID), "token_fingerprint", store.Fingerprint(conn.AccessToken), "replaced", old != nil)
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

// grantWrite prepares the write that stores a new grant under pre, with
// the notices announcing it.
type grantWrite func(pre store.Precondition, notices []store.Notice) (*store.Write, error)

// storeGrant stores a freshly authorized connection under a new
// generation, so any refresh in flight on an old grant loses. It first
// tries to create the connection; if one is there, and replace allows it,
// it replaces exactly the grant it found (fenced on its generation and
// version, learned from the failed create itself, without a read). So what
// it decides from the old grant happens once: the Connection Authorized
// event, and Connection Recovered when the old grant's failure streak had
// been announced, are written in the same transaction; the old grant's
// tokens are revoked after the write, only where the provider's revocation
// is per token. Without replace, an existing connection is a conflict.
// It returns whether the connection is new and the grant it replaced (nil
// when new, or when the stored item could not be decoded). An import that
// made the live grant already writes nothing and returns that grant with
// errAlreadyImported.
func (b *Broker) storeGrant(ctx context.Context, e *env, conn *store.Connection, via string, replace bool, prepare grantWrite) (created bool, old *store.Connection, err error) {
	st := e.store
	until := b.now().Add(b.budget().Commit)
	var pre store.Precondition
	for attempt := 1; ; attempt++ {
		notices := []store.Notice{b.authorizedNotice(st, conn, via)}
		if old != nil && old.FailingNotified {
			notices = append(notices, b.recoveredNotice(st, conn))
		}
		w, err := prepare(pre, notices)
		if err == nil {
			err = b.durably(ctx, until, w)
		}
		if err == nil {
			b.publish(ctx, st, notices...)
			if old != nil && via != "import" {
				// An import may well bring the same grant's newer tokens
				// (a migration re-run after the old tool refreshed), and
				// revoking the older ones would end that grant: only a new
				// consent (callback, confirm) revokes what it replaced.
				b.revokeReplaced(ctx, e, old, conn)
			}
			return !pre.Replace, old, nil
		}
		moved := errors.Is(err, store.ErrAlreadyExists) || errors.Is(err, store.ErrVersionConflict) || errors.Is(err, store.ErrNotFound)
		if !moved {
			return false, nil, asAppError(err, "connection")
		}
		// Others keep replacing it: go round again, spread out, for as long
		// as the commit budget lasts; then the caller may try again.
		pause := time.Duration(attempt) * 20 * time.Millisecond
		if time.Now().Add(pause).After(b.wallClock(until)) {
			return false, nil, wrap(CodeProviderUnavailable, err, "connection %s kept changing while being stored; try again", conn.Key)
		}
		select {
		case <-ctx.Done():
			return false, nil, wrap(CodeProviderUnavailable, ctx.Err(), "connection %s kept changing while being stored; try again", conn.Key)
		case <-time.After(pause + b.jitter(pause)):
		}
		old = w.Existing
		// Only an import names its request (conn.ImportedAs).
		_, tokens, request := importParts(conn.ImportedAs)
		if old != nil && old.Status == store.StatusActive && tokens != "" {
			oldCreated, oldTokens, oldRequest := importParts(old.ImportedAs)
			switch {
			case oldTokens != tokens:
				// Another grant: the usual rules below.
			case oldRequest == request:
				// The live grant was made by this same import request (a
				// retry after its answer was lost), perhaps refreshed
				// since. Nothing is written, no event is sent twice, and
				// the stored grant is the answer, as the import made it.
				return oldCreated, old, errAlreadyImported
			case old.AccessToken != conn.AccessToken || old.RefreshToken != conn.RefreshToken:
				// The same tokens in a request built anew (expires_in
				// counted again, metadata changed), after the broker has
				// refreshed the grant they started: writing them back
				// would bring back spent tokens, replace or not.
				return false, nil, Errorf(CodeConflict, "connection %s holds the grant these tokens were imported with, refreshed since; importing them again would bring back spent tokens, so nothing changed (to change its metadata, import the tokens it holds now, or re-authorize)", conn.Key)
			}
		}
		switch {
		case old == nil && errors.Is(err, store.ErrNotFound):
			pre = store.Precondition{} // deleted meanwhile: create it
		case !replace:
			return false, nil, Errorf(CodeConflict, "connection %s exists; send \"replace\": true to replace its grant", conn.Key)
		case old == nil:
			pre = store.Precondition{Replace: true} // an item that cannot be decoded: overwrite it
		default:
			at := old.Fence()
			pre = store.Precondition{Replace: true, At: &at}
		}
	}
}

// errAlreadyImported says an import found the live grant made by the same
// import request: nothing was written.
var errAlreadyImported = errors.New("broker: the live grant was made by this import")

// revokeReplaced revokes, where the provider's revocation is per token,
// the grant a new authorization replaced, so no live credential of it is
// left behind. Where revocation ends the user's whole grant (Google), it
// would end the new grant of the same user too, so nothing is revoked. A
// token the new grant still holds (an import of the same tokens) is kept.
func (b *Broker) revokeReplaced(ctx context.Context, e *env, old, now *store.Connection) {
	if !e.cfg.RevokesPerToken() {
		return
	}
	current := func(t string) bool { return t == now.AccessToken || t == now.RefreshToken }
	token, hint := old.RefreshToken, "refresh_token"
	if token == "" || current(token) {
		token, hint = old.AccessToken, "access_token"
	}
	if token == "" || current(token) {
		return
	}
	if err := b.revokeWithin(ctx, e, token, hint); err != nil {
		b.log().WarnContext(ctx, "revoking the replaced grant failed", "provider", old.Provider, "connection", old.Connection,
			"token_fingerprint", store.Fingerprint(token), "error", err.Error())
	}
}

// revokeWithin revokes token at the provider within what is left of the
// provider budget, and outlives the caller's cancel (the write it follows
// is done). Nothing is tried without time left; a provider that has no
// revocation is not an error.
func (b *Broker) revokeWithin(ctx context.Context, e *env, token, hint string) error {
	left := b.left(ctx, b.budget().Provider)
	if left <= 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), left)
	defer cancel()
	if err := e.client.Revoke(rctx, token, hint); err != nil && !errors.Is(err, provider.ErrNotSupported) {
		return err
	}
	return nil
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
