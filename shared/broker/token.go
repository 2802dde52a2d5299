package broker

import (
	"context"
	"errors"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
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
	// Force refreshes even a valid token (POST …/refresh), at most once
	// per ForceWindow per connection.
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
		var moved *movedOn
		if errors.As(err, &moved) {
			conn, err = moved.current, nil
		}
	} else if errors.Is(err, store.ErrNotFound) {
		return nil, Errorf(CodeNotFound, "no connection %s; authorize it first", req.Key)
	}
	if err != nil {
		return nil, asAppError(err, "connection")
	}
	conn, err = b.ensureFresh(ctx, e, conn, req)
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

// firstMachineToken creates the app connection holding the lease, so that
// concurrent first callers wait for this one fetch; whoever loses the
// create reads what the winner wrote.
func (b *Broker) firstMachineToken(ctx context.Context, e *env, k store.Key) (*store.Connection, error) {
	now := b.now()
	hold, ok := b.hold(ctx, now)
	if !ok {
		return nil, Errorf(CodeProviderUnavailable, "too little time is left in this invocation to fetch %s's token safely; try again", k.Provider)
	}
	lease := b.newLease(hold)
	conn := &store.Connection{Key: k, Kind: e.cfg.Kind, Status: store.StatusPending, CreatedAt: now,
		LeaseOwner: lease.Owner, LeaseUntil: lease.Until}
	err := e.store.Create(ctx, conn)
	if errors.Is(err, store.ErrAlreadyExists) {
		return e.store.Get(ctx, k, true)
	}
	if err != nil {
		return nil, err
	}
	return b.refreshHeld(ctx, e, conn, hold)
}

// wechatGlobalByToken is WeChat's cgi-bin/token mode, where every fetch
// kills the previous token five minutes later.
func wechatGlobalByToken(cfg provider.Config) bool {
	return cfg.Kind == provider.KindWeChatMP && cfg.TokenAPI == "token"
}

// effectiveExpiry is when the token stops working. WeChat's cgi-bin/token
// kills the previous token five minutes after issuing a new one, so a token
// the broker plans to replace at refresh_at dies at refresh_at + 5 min,
// before its nominal expiry; callers that cache must know that.
func effectiveExpiry(cfg provider.Config, c *store.Connection) time.Time {
	if wechatGlobalByToken(cfg) && !c.RefreshAt.IsZero() && !c.ExpiresAt.IsZero() {
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

// attainable caps what a caller may ask of c's provider. A min_ttl that
// the provider's own lifetime cannot satisfy must not refresh on every
// request: a token is refreshed for it at most once, when less than its
// lifetime minus the refresh lead (at least half its lifetime) is left. For
// WeChat's cgi-bin/token, where each fetch kills the token others hold,
// only a token about to die (within the minute) is refreshed on demand.
func attainable(cfg provider.Config, c *store.Connection, minTTL time.Duration) time.Duration {
	if wechatGlobalByToken(cfg) {
		return min(minTTL, time.Minute)
	}
	if c.ExpiresAt.IsZero() || c.RefreshedAt.IsZero() {
		return minTTL
	}
	life := c.ExpiresAt.Sub(c.RefreshedAt)
	if life <= 0 {
		return minTTL
	}
	limit := max(life-refreshLead(cfg, life), life/2)
	return min(minTTL, limit)
}

// lastAttempt is when a refresh of c last completed, well or not.
func lastAttempt(c *store.Connection) time.Time {
	if c.LastErrorAt.After(c.RefreshedAt) {
		return c.LastErrorAt
	}
	return c.RefreshedAt
}

// decision is what a reader does with what it read.
type decision int

const (
	serve decision = iota
	refresh
	refuse
)

// decide looks at c, read at now, and says whether to serve it, refresh
// it, or refuse (err says why). start is the fence first read by this
// request.
func (b *Broker) decide(ctx context.Context, e *env, c *store.Connection, req TokenRequest, start store.Fence, now time.Time) (decision, error) {
	// A successful refresh of this grant committed since this request first
	// read it is the best the provider will give: use it, even if the
	// provider's lifetime is shorter than min_ttl, rather than refresh again.
	if c.Generation == start.Generation && c.Version > start.Version && c.Status == store.StatusActive &&
		c.LastError == "" && c.AccessToken != "" && (c.ExpiresAt.IsZero() || c.ExpiresAt.After(now)) {
		return serve, nil
	}
	if c.Status == store.StatusNeedsReauth && !(req.Force && e.cfg.Machine()) {
		return refuse, needsReauth(c)
	}
	if c.Status == store.StatusActive && !refreshable(c, e.cfg) {
		// Nothing to refresh with: hand out what is left (a token with no
		// expiry never needs refreshing), and only once it has expired ask
		// for a new authorization.
		if c.ExpiresAt.IsZero() || c.ExpiresAt.After(now) {
			return serve, nil
		}
		reason := "the access token expired and the provider gave no refresh token"
		if c.RefreshDenied != "" {
			reason = "the access token expired and " + c.RefreshDenied
		}
		return refuse, b.markNeedsReauth(ctx, e, c, reason, "", nil)
	}
	if req.Force {
		if usable(e.cfg, c, 0, now) && now.Sub(lastAttempt(c)) < ForceWindow {
			return serve, nil
		}
		return refresh, nil
	}
	if usable(e.cfg, c, attainable(e.cfg, c, req.MinTTL), now) {
		return serve, nil
	}
	if c.LastError != "" && now.Before(c.RefreshAt) {
		// The last refresh failed and its retry is scheduled: serve the old
		// token while it works, else say why there is none, rather than
		// hammer a failing provider from every request.
		if usable(e.cfg, c, 0, now) {
			return serve, nil
		}
		return refuse, Errorf(CodeProviderUnavailable, "refreshing %s failed (%s); it is retried at %s", c.Key, c.LastError, c.RefreshAt.UTC().Format(time.RFC3339))
	}
	return refresh, nil
}

// ensureFresh is DESIGN.md's refresh protocol: use a valid token; else take
// the lease and refresh; else wait (consistent reads, backing off) until
// the item moves, and take the lease if it runs out unused, but only with
// the time to finish what it starts.
func (b *Broker) ensureFresh(ctx context.Context, e *env, c *store.Connection, req TokenRequest) (*store.Connection, error) {
	start := c.Fence()
	wait := 20 * time.Millisecond
	contended := false
	var waitUntil time.Time
	for {
		now := b.now()
		switch d, err := b.decide(ctx, e, c, req, start, now); d {
		case serve:
			return c, nil
		case refuse:
			var moved *movedOn
			if errors.As(err, &moved) {
				c = moved.current // look again at what is there now
				continue
			}
			return nil, err
		}
		if !c.Leased(now) {
			hold, ok := b.hold(ctx, now)
			if !ok {
				return nil, Errorf(CodeProviderUnavailable, "too little time is left in this invocation to refresh %s safely; try again", c.Key)
			}
			held, err := e.store.AcquireLease(ctx, c.Key, c.Fence(), b.newLease(hold))
			if err == nil {
				out, err := b.refreshHeld(ctx, e, held, hold)
				var moved *movedOn
				if errors.As(err, &moved) {
					c = moved.current
					continue
				}
				return out, err
			}
			var ce *store.ConflictError
			switch {
			case errors.Is(err, store.ErrNotFound):
				return nil, Errorf(CodeNotFound, "connection %s was deleted", c.Key)
			case errors.As(err, &ce) && ce.Current != nil:
				moved := ce.Current.Fence() != c.Fence()
				c = ce.Current
				if moved {
					continue // someone committed or re-authorized: look again at once
				}
			case !errors.Is(err, store.ErrLeaseNotGranted):
				return nil, asAppError(err, "connection")
			}
		}
		// Someone else holds the lease: wait for their commit.
		if !contended {
			contended = true
			waitUntil = b.waitDeadline(ctx)
			b.Metrics.Count(telemetry.LeaseContended, 1, map[string]string{"Provider": c.Provider})
		}
		sleep := wait + b.jitter(wait)
		if time.Now().Add(sleep).After(waitUntil) {
			return nil, Errorf(CodeProviderUnavailable, "another refresh of %s is still running; try again", c.Key)
		}
		select {
		case <-ctx.Done():
			return nil, wrap(CodeProviderUnavailable, ctx.Err(), "timed out waiting for another refresh of %s", c.Key)
		case <-time.After(sleep):
		}
		wait = min(wait*2, 400*time.Millisecond)
		next, err := e.store.Get(ctx, c.Key, true)
		if errors.Is(err, store.ErrNotFound) {
			return nil, Errorf(CodeNotFound, "connection %s was deleted", c.Key)
		}
		if err != nil {
			return nil, asAppError(err, "connection")
		}
		if next.Fence() != c.Fence() && next.Status == store.StatusActive && next.LastError != "" && !next.Leased(b.now()) {
			// The holder failed transiently and recorded it: serve the old
			// token while it works, else report the failure, instead of
			// hammering the provider from every waiter.
			if usable(e.cfg, next, 0, b.now()) {
				return next, nil
			}
			return nil, Errorf(CodeProviderUnavailable, "refreshing %s failed: %s", c.Key, next.LastError)
		}
		c = next
	}
}

func needsReauth(c *store.Connection) error {
	reason := c.LastError
	if reason == "" {
		reason = "the provider no longer accepts this grant"
	}
	return Errorf(CodeNeedsReauth, "connection %s needs re-authorization: %s", c.Key, reason)
}
