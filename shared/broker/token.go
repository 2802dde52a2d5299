package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"tokenbroker/shared/provider"
	"tokenbroker/shared/store"
	"tokenbroker/shared/telemetry"
)

// Token is what a caller receives.
type Token struct {
	Key         store.Key
	AccessToken string
	TokenType   string
	ExpiresAt   time.Time
	Scope       string
	Extra       map[string]string
}

// TokenRequest asks for a token valid at least MinTTL.
type TokenRequest struct {
	Key    store.Key
	MinTTL time.Duration
	// Force refreshes even a valid token (POST …/refresh).
	Force bool
	// Caller is the IAM ARN, for the audit line.
	Caller string
}

// Token returns a token valid for at least req.MinTTL, refreshing first
// under the lease when needed; concurrent callers share one provider call.
// Machine-token providers fetch their "app" connection on first use.
//
// Codes: bad_request, not_found, needs_reauth, provider_error,
// provider_unavailable, internal.
func (b *Broker) Token(ctx context.Context, req TokenRequest) (*Token, error) {
	if err := validKey(req.Key); err != nil {
		return nil, err
	}
	if req.MinTTL < 0 || req.MinTTL > 24*time.Hour {
		return nil, Errorf(CodeBadRequest, "min_ttl must be between 0 and 86400 seconds")
	}
	// However long the caller's context, waiting on another worker's lease
	// is bounded: two leases cover a dead holder and our own takeover.
	ctx, cancel := context.WithTimeout(ctx, 2*b.lease()+provider.DefaultTimeout)
	defer cancel()
	e, err := b.envFor(ctx, req.Key.Provider)
	if err != nil {
		return nil, err
	}
	if e.cfg.Machine() && req.Key.Connection != MachineConnection {
		return nil, Errorf(CodeNotFound, "provider %q has only the connection %q", req.Key.Provider, MachineConnection)
	}
	conn, err := e.store.Get(ctx, req.Key, true)
	if errors.Is(err, store.ErrNotFound) && e.cfg.Machine() {
		conn, err = b.firstMachineToken(ctx, e, req.Key)
	} else if errors.Is(err, store.ErrNotFound) {
		return nil, Errorf(CodeNotFound, "no connection %s; authorize it first", req.Key)
	}
	if err != nil {
		return nil, asAppError(err, "connection")
	}
	conn, err = b.ensureFresh(ctx, e, conn, req.MinTTL, req.Force)
	if err != nil {
		return nil, err
	}
	b.Metrics.Count(telemetry.TokenServed, 1, map[string]string{"Provider": req.Key.Provider})
	b.log().InfoContext(ctx, "token released", "audit", true, "caller", req.Caller,
		"provider", req.Key.Provider, "connection", req.Key.Connection,
		"token_fingerprint", store.Fingerprint(conn.AccessToken), "expires_at", conn.ExpiresAt)
	return &Token{Key: conn.Key, AccessToken: conn.AccessToken, TokenType: conn.TokenType,
		ExpiresAt: effectiveExpiry(e.cfg, conn), Scope: conn.Scope, Extra: conn.Extra}, nil
}

func asAppError(err error, what string) error {
	var ae *Error
	if errors.As(err, &ae) {
		return err
	}
	return storeError(err, what)
}

// firstMachineToken creates the app connection holding the lease, so that
// concurrent first callers wait for this one fetch; whoever loses the
// create reads what the winner wrote.
func (b *Broker) firstMachineToken(ctx context.Context, e *env, k store.Key) (*store.Connection, error) {
	now := b.now()
	conn := &store.Connection{Key: k, Kind: e.cfg.Kind, Status: store.StatusPending, CreatedAt: now,
		LeaseOwner: b.leaseOwner(), LeaseUntil: now.Add(b.lease())}
	err := e.store.Create(ctx, conn)
	if errors.Is(err, store.ErrAlreadyExists) {
		return e.store.Get(ctx, k, true)
	}
	if err != nil {
		return nil, err
	}
	return b.refreshHeld(ctx, e, conn)
}

// effectiveExpiry is when the token stops working. WeChat's cgi-bin/token
// kills the previous token five minutes after issuing a new one, so a token
// the broker plans to replace at refresh_at dies at refresh_at + 5 min,
// before its nominal expiry; callers that cache must know that.
func effectiveExpiry(cfg provider.Config, c *store.Connection) time.Time {
	if cfg.Kind == provider.KindWeChatMP && cfg.TokenAPI == "token" && !c.RefreshAt.IsZero() && !c.ExpiresAt.IsZero() {
		if dies := c.RefreshAt.Add(provider.WeChatStableRenewWindow * time.Second); dies.Before(c.ExpiresAt) {
			return dies
		}
	}
	return c.ExpiresAt
}

// usable reports whether c can be handed out for at least minTTL.
func usable(cfg provider.Config, c *store.Connection, minTTL time.Duration, now time.Time) bool {
	if c.Status != store.StatusActive || c.AccessToken == "" {
		return false
	}
	exp := effectiveExpiry(cfg, c)
	return exp.IsZero() || !exp.Before(now.Add(minTTL))
}

// ensureFresh is DESIGN.md's refresh protocol: use a valid token; else take
// the lease and refresh; else wait (consistent reads, backing off) until
// the version moves, and take the lease if it runs out unused.
func (b *Broker) ensureFresh(ctx context.Context, e *env, c *store.Connection, minTTL time.Duration, force bool) (*store.Connection, error) {
	wait := 20 * time.Millisecond
	startVersion := c.Version
	contended := false
	for {
		now := b.now()
		// A successful refresh committed since we first read the connection
		// is the best the provider will give: use it, even if the provider's
		// lifetime is shorter than minTTL, rather than refreshing again.
		refreshedSince := c.Version > startVersion && c.Status == store.StatusActive && c.LastError == ""
		if refreshedSince && c.AccessToken != "" && (c.ExpiresAt.IsZero() || c.ExpiresAt.After(now)) {
			return c, nil
		}
		if c.Status == store.StatusNeedsReauth && !(force && e.cfg.Machine()) {
			return nil, needsReauth(c)
		}
		if !force && usable(e.cfg, c, minTTL, now) {
			return c, nil
		}
		if c.Status == store.StatusActive && c.RefreshToken == "" && !e.cfg.Machine() {
			// Nothing to refresh with: hand out what is left, and only once
			// it has expired ask for a new authorization.
			if c.ExpiresAt.After(now) {
				return c, nil
			}
			return nil, b.markNeedsReauth(ctx, e, c, "the access token expired and the provider gave no refresh token", "")
		}
		if !c.Leased(now) {
			err := e.store.AcquireLease(ctx, c.Key, c.Version, b.leaseOwner(), now.Add(b.lease()))
			if err == nil {
				c.LeaseOwner, c.LeaseUntil = b.leaseOwner(), now.Add(b.lease())
				return b.refreshHeld(ctx, e, c)
			}
			if !errors.Is(err, store.ErrLeaseNotGranted) {
				return nil, asAppError(err, "connection")
			}
		}
		// Someone else holds the lease (or just took it): wait for their commit.
		if !contended {
			contended = true
			b.Metrics.Count(telemetry.LeaseContended, 1, map[string]string{"Provider": c.Provider})
		}
		select {
		case <-ctx.Done():
			return nil, wrap(CodeProviderUnavailable, ctx.Err(), "timed out waiting for another refresh of %s", c.Key)
		case <-time.After(wait + b.jitter(wait)):
		}
		wait = min(wait*2, 400*time.Millisecond)
		next, err := e.store.Get(ctx, c.Key, true)
		if err != nil {
			return nil, asAppError(err, "connection")
		}
		if next.Version != c.Version && next.Status != store.StatusNeedsReauth && !usable(e.cfg, next, minTTL, b.now()) && next.LastError != "" && !next.Leased(b.now()) {
			// The holder failed transiently and recorded it: report that
			// instead of hammering the provider from every waiter.
			return nil, Errorf(CodeProviderUnavailable, "refreshing %s failed: %s", c.Key, next.LastError)
		}
		c = next
	}
}

func (b *Broker) jitter(d time.Duration) time.Duration {
	var j [1]byte
	_, _ = io.ReadFull(b.random(), j[:])
	return d * time.Duration(j[0]) / 512
}

func needsReauth(c *store.Connection) error {
	reason := c.LastError
	if reason == "" {
		reason = "the provider no longer accepts this grant"
	}
	return Errorf(CodeNeedsReauth, "connection %s needs re-authorization: %s", c.Key, reason)
}

// refreshHeld calls the provider while c's lease is held, then commits at
// c.Version: the new tokens (refresh token first of all) or the failure.
func (b *Broker) refreshHeld(ctx context.Context, e *env, c *store.Connection) (*store.Connection, error) {
	now := b.now()
	dims := map[string]string{"Provider": c.Provider}
	if !e.cfg.Machine() && !c.RefreshExpiresAt.IsZero() && !now.Before(c.RefreshExpiresAt) {
		return nil, b.markNeedsReauth(ctx, e, c, "the refresh token expired", "")
	}
	var ts *provider.TokenSet
	var err error
	if e.cfg.Machine() {
		if err = b.quotaGuard(ctx, e); err == nil {
			ts, err = e.client.MachineToken(ctx)
		}
	} else {
		ts, err = e.client.Refresh(ctx, c.RefreshToken)
	}
	b.Metrics.Milliseconds(telemetry.ProviderLatency, b.now().Sub(now), map[string]string{"Provider": c.Provider, "Op": "refresh"})
	if err != nil {
		return b.refreshFailed(ctx, e, c, err)
	}
	next := *c
	applyTokens(&next, ts)
	now = b.now()
	next.Status, next.Attempts, next.LastError, next.LastErrorAt, next.RefreshedAt = store.StatusActive, 0, "", time.Time{}, now
	scheduleRefresh(&next, e.cfg, now)
	if err := e.store.Commit(ctx, &next, c.Version); err != nil {
		if errors.Is(err, store.ErrVersionConflict) {
			// Our lease ran out and another worker committed: theirs stands.
			b.log().WarnContext(ctx, "refresh lost the version race", "provider", c.Provider, "connection", c.Connection)
			return b.reread(ctx, e, c.Key)
		}
		b.log().ErrorContext(ctx, "refreshed tokens could not be stored", "provider", c.Provider, "connection", c.Connection, "error", err.Error())
		return nil, storeError(err, "connection")
	}
	b.Metrics.Count(telemetry.RefreshSucceeded, 1, dims)
	b.log().InfoContext(ctx, "token refreshed", "provider", c.Provider, "connection", c.Connection,
		"token_fingerprint", store.Fingerprint(next.AccessToken), "expires_at", next.ExpiresAt, "version", next.Version)
	return &next, nil
}

func (b *Broker) reread(ctx context.Context, e *env, k store.Key) (*store.Connection, error) {
	c, err := e.store.Get(ctx, k, true)
	if err != nil {
		return nil, asAppError(err, "connection")
	}
	if c.Status == store.StatusNeedsReauth {
		return nil, needsReauth(c)
	}
	return c, nil
}

// refreshFailed records a failed refresh. A refusal of the grant marks the
// connection needs_reauth (unless another worker already moved it on); a
// configuration or transient failure keeps the tokens and retries later.
func (b *Broker) refreshFailed(ctx context.Context, e *env, c *store.Connection, cause error) (*store.Connection, error) {
	class := provider.ClassOf(cause)
	b.Metrics.Count(telemetry.RefreshFailed, 1, map[string]string{"Provider": c.Provider, "Class": class.String()})
	b.log().WarnContext(ctx, "refresh failed", "provider", c.Provider, "connection", c.Connection, "class", class.String(), "error", cause.Error())
	var pe *provider.Error
	errors.As(cause, &pe)
	if class == provider.ClassReauth && !e.cfg.Machine() {
		current, err := e.store.Get(ctx, c.Key, true)
		if err == nil && current.Version != c.Version {
			// Another worker won (our lease had run out): its result stands.
			if current.Status == store.StatusNeedsReauth {
				return nil, needsReauth(current)
			}
			return current, nil
		}
		code := ""
		if pe != nil {
			code = pe.Code
		}
		return nil, b.markNeedsReauth(ctx, e, c, "the provider refused the refresh: "+describe(cause), code)
	}
	attempts := c.Attempts + 1
	now := b.now()
	f := store.Failure{Message: describe(cause), Attempts: attempts, NextAttempt: now.Add(b.retryDelay(attempts, c.ExpiresAt, now))}
	if err := e.store.RecordFailure(ctx, c.Key, c.Version, f); err != nil && !errors.Is(err, store.ErrVersionConflict) {
		b.log().ErrorContext(ctx, "could not record refresh failure", "provider", c.Provider, "connection", c.Connection, "error", err.Error())
	}
	if errors.Is(cause, errQuota) {
		return nil, wrap(CodeProviderUnavailable, cause, "%s", describe(cause))
	}
	if class == provider.ClassConfig {
		return nil, wrap(CodeProviderError, cause, "the provider rejected the app's credentials or settings (%s); an operator must fix provider %q", describe(cause), c.Provider)
	}
	return nil, wrap(CodeProviderUnavailable, cause, "refreshing %s failed (%s); the old token is kept and the refresh is retried", c.Key, describe(cause))
}

func describe(err error) string {
	var pe *provider.Error
	if errors.As(err, &pe) {
		return fmt.Sprintf("%s: %s", pe.Code, pe.Message)
	}
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Message
	}
	if errors.Is(err, errQuota) {
		return err.Error()
	}
	return "internal error"
}

// markNeedsReauth takes c out of service at its version and tells
// subscribers once; a version conflict means another worker moved it on.
func (b *Broker) markNeedsReauth(ctx context.Context, e *env, c *store.Connection, reason, providerCode string) error {
	err := e.store.MarkNeedsReauth(ctx, c.Key, c.Version, reason)
	if errors.Is(err, store.ErrVersionConflict) {
		_, rerr := b.reread(ctx, e, c.Key)
		if rerr != nil {
			return rerr
		}
		return Errorf(CodeProviderUnavailable, "connection %s changed during the refresh; try again", c.Key)
	}
	if err != nil {
		return storeError(err, "connection")
	}
	b.Metrics.Count(telemetry.NeedsReauth, 1, map[string]string{"Provider": c.Provider})
	b.log().WarnContext(ctx, "connection needs re-authorization", "provider", c.Provider, "connection", c.Connection, "reason", reason)
	if b.Notifier != nil {
		if nerr := b.Notifier.NeedsReauth(ctx, telemetry.NeedsReauthDetail{Provider: c.Provider, Connection: c.Connection, Reason: reason, ProviderError: providerCode}); nerr != nil {
			b.log().ErrorContext(ctx, "needs_reauth event not published", "provider", c.Provider, "connection", c.Connection, "error", nerr.Error())
		}
	}
	c.Status, c.LastError = store.StatusNeedsReauth, reason
	return needsReauth(c)
}

var errQuota = errors.New("quota guard")

// quotaGuard counts WeChat cgi-bin/token calls per app per UTC day and
// refuses before the budget is gone. stable_token has its own generous
// limit and is not counted.
func (b *Broker) quotaGuard(ctx context.Context, e *env) error {
	if e.cfg.Kind != provider.KindWeChatMP || e.cfg.TokenAPI != "token" {
		return nil
	}
	budget := e.cfg.DailyQuotaBudget
	n, err := e.store.CountCall(ctx, e.cfg.Name, b.now(), budget)
	if errors.Is(err, store.ErrQuotaExhausted) {
		b.Metrics.Count(telemetry.QuotaRefused, 1, map[string]string{"Provider": e.cfg.Name})
		return fmt.Errorf("%w: the daily budget of %d cgi-bin/token calls for %q is spent; calls resume at 00:00 UTC (raise daily_quota_budget only if WeChat's 2000 allows)", errQuota, budget, e.cfg.Name)
	}
	if err != nil {
		return err
	}
	b.Metrics.Count(telemetry.QuotaUsed, float64(n), map[string]string{"AppID": e.cfg.ClientID})
	if n*10 >= budget*8 {
		b.log().WarnContext(ctx, "wechat token quota budget almost spent", "provider", e.cfg.Name, "calls_today", n, "budget", budget)
	}
	return nil
}

// Status is a connection's state without secrets.
type Status struct {
	Key         store.Key
	Status      store.Status
	ExpiresAt   time.Time
	RefreshedAt time.Time
	LastError   string
}

// Status reports a connection. Codes: bad_request, not_found, internal.
func (b *Broker) Status(ctx context.Context, k store.Key) (*Status, error) {
	if err := validKey(k); err != nil {
		return nil, err
	}
	e, err := b.envFor(ctx, k.Provider)
	if err != nil {
		return nil, err
	}
	c, err := e.store.Get(ctx, k, true)
	if errors.Is(err, store.ErrNotFound) {
		return nil, Errorf(CodeNotFound, "no connection %s", k)
	}
	if err != nil {
		return nil, asAppError(err, "connection")
	}
	return &Status{Key: k, Status: c.Status, ExpiresAt: c.ExpiresAt, RefreshedAt: c.RefreshedAt, LastError: c.LastError}, nil
}

// Delete forgets a connection, revoking its grant at the provider first
// where the provider has a revoke endpoint (a failed revoke is logged and
// does not keep the connection). Codes: bad_request, not_found, internal.
func (b *Broker) Delete(ctx context.Context, k store.Key) error {
	if err := validKey(k); err != nil {
		return err
	}
	e, err := b.envFor(ctx, k.Provider)
	if err != nil {
		return err
	}
	c, err := e.store.Get(ctx, k, true)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err == nil:
		token, hint := c.RefreshToken, "refresh_token"
		if token == "" {
			token, hint = c.AccessToken, "access_token"
		}
		if rerr := e.client.Revoke(ctx, token, hint); rerr != nil && !errors.Is(rerr, provider.ErrNotSupported) {
			b.log().WarnContext(ctx, "revoke failed; forgetting the connection anyway", "provider", k.Provider, "connection", k.Connection, "error", rerr.Error())
		}
	case !errors.Is(err, store.ErrCorrupt):
		return storeError(err, "connection")
	}
	if err := e.store.Delete(ctx, k); err != nil {
		return storeError(err, "connection")
	}
	b.log().InfoContext(ctx, "connection deleted", "provider", k.Provider, "connection", k.Connection)
	return nil
}
