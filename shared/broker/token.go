package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
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
	// Force asks for a token the provider issued after this request
	// arrived (POST …/refresh): the caller holds evidence that the stored
	// one does not work. A refresh that commits after the request arrived
	// satisfies it, so concurrent forced requests share one provider call.
	Force bool
	// Rejected, with Force, names the access token the caller saw
	// rejected. A stored token that is another one is served as a plain
	// token request would be, with no provider call: someone already
	// replaced the rejected one.
	Rejected string
	// Arrived is when the request arrived (API Gateway's timeEpoch); zero
	// means when Token was called. A forced refresh without Rejected is
	// satisfied by a token stored after it, whoever refreshed.
	Arrived time.Time
	// Caller is the IAM ARN, for the audit line.
	Caller string

	// seen is the access token this request first read.
	seen string
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
	// An arrival time is believed only within the 30 s API Gateway waits
	// for a function: a stale or future one (a replayed or hand-made
	// event) would let a forced refresh take a token it means to replace.
	if now := b.now(); req.Arrived.After(now) || req.Arrived.Before(now.Add(-maxArrivalAge)) {
		req.Arrived = now
	}
	req.Arrived = req.Arrived.Truncate(time.Millisecond) // as stored
	if e.cfg.Machine() && req.Key.Connection != MachineConnection {
		return nil, Errorf(CodeNotFound, "provider %q has only the connection %q", req.Key.Provider, MachineConnection)
	}
	conn, err := e.store.Get(ctx, req.Key, true)
	if errors.Is(err, store.ErrNotFound) && e.cfg.Machine() {
		// The first fetch is issued after the request arrived, which is
		// all a forced request asks.
		req.Force = false
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
	attrs := []any{"audit", true, "caller", req.Caller, "provider", req.Key.Provider, "connection", req.Key.Connection,
		"token_fingerprint", store.Fingerprint(conn.AccessToken), "expires_at", conn.ExpiresAt}
	if req.Force {
		attrs = append(attrs, "forced", true)
	}
	if req.Rejected != "" {
		// Which token the caller saw rejected, for the trail; never the token.
		attrs = append(attrs, "rejected_fingerprint", store.Fingerprint(req.Rejected))
	}
	b.log().InfoContext(ctx, "token released", attrs...)
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
		return nil, b.cannotStart(k, Errorf(CodeProviderUnavailable, "too little time is left in this invocation to fetch %s's token safely; try again", k.Provider))
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
	return b.refreshHeld(ctx, e, conn, hold, false)
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

// stableRenewable is the most of a WeChat stable token's life a caller can
// demand: inside its last five minutes stable_token issues a new token; a
// minute's margin keeps the broker's clock and WeChat's from disagreeing.
const stableRenewable = (provider.WeChatStableRenewWindow - 60) * time.Second

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
	if wechatStable(cfg) {
		// stable_token hands back the same token, with what is left of its
		// life, until its last five minutes: asking sooner brings nothing
		// new and would be repeated for every request that wants more.
		return min(minTTL, stableRenewable)
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
	// A token stored since this request first read it (a successful
	// refresh, or a new grant) is the best the provider will give: use it,
	// even if the provider's lifetime is shorter than min_ttl, rather than
	// refresh again. It also keeps a forced request's word: that token was
	// issued after the request arrived.
	fresh := c.Status == store.StatusActive && c.LastError == "" && c.AccessToken != "" && (c.ExpiresAt.IsZero() || c.ExpiresAt.After(now))
	if fresh && c.Fence() != start && !(req.Force && c.AccessToken == req.seen) {
		return serve, nil
	}
	// A forced request naming no token is also satisfied by a token stored
	// after it arrived, though before it first read (a slow read, or a
	// sandbox that took the request from a queue).
	if fresh && req.Force && req.Rejected == "" && c.RefreshedAt.After(req.Arrived) {
		return serve, nil
	}
	force := req.Force
	if force && req.Rejected != "" && !sameToken(c.AccessToken, req.Rejected) {
		// The rejected token is no longer the stored one: whoever replaced
		// it did what the caller asks. Serve as a plain request would.
		force = false
	}
	if c.Status == store.StatusNeedsReauth && !(force && e.cfg.Machine()) {
		return refuse, needsReauth(c)
	}
	if c.Status == store.StatusActive && !refreshable(c, e.cfg) {
		if force {
			return refuse, Errorf(CodeNotRefreshable, "connection %s has no refresh token: the provider cannot issue a new token without its user; authorize it again to replace the token", c.Key)
		}
		// Nothing to refresh with: hand out what is left (a token with no
		// expiry never needs refreshing), and only once it has expired ask
		// for a new authorization.
		if c.ExpiresAt.IsZero() || c.ExpiresAt.After(now) {
			return serve, nil
		}
		return refuse, b.markNeedsReauth(ctx, e, c, "the access token expired and the provider gave no refresh token", "", nil)
	}
	if force {
		// The caller says the token does not work: only the short schedule
		// of a failure just recorded holds it back.
		if c.LastError != "" && now.Before(c.RetryAt) {
			return refuse, retryLater(c.RetryAt, now, nil, "refreshing %s failed (%s); the next attempt is allowed at %s", c.Key, c.LastError, c.RetryAt.UTC().Format(time.RFC3339))
		}
		return refresh, nil
	}
	if denied(c, now) && c.ExpiresAt.After(now) {
		// The provider refused to refresh for this app a short while ago:
		// serve what is left rather than ask again at every request. At
		// expiry, the provider is asked once more before the user is.
		return serve, nil
	}
	if usable(e.cfg, c, attainable(e.cfg, c, req.MinTTL), now) {
		return serve, nil
	}
	if c.LastError != "" {
		// The last refresh failed: serve the old token while it works and
		// its retry on the long schedule has not come, else tell the caller
		// when the short schedule allows the next attempt, rather than
		// hammer a failing provider from every request.
		if usable(e.cfg, c, 0, now) && now.Before(c.RefreshAt) {
			return serve, nil
		}
		if !usable(e.cfg, c, 0, now) && now.Before(c.RetryAt) {
			return refuse, retryLater(c.RetryAt, now, nil, "refreshing %s failed (%s); the next attempt is allowed at %s", c.Key, c.LastError, c.RetryAt.UTC().Format(time.RFC3339))
		}
	}
	return refresh, nil
}

// sameToken compares two tokens by their digests in constant time, so
// the comparison's duration tells nothing about the stored token.
func sameToken(stored, named string) bool {
	a, b := sha256.Sum256([]byte(stored)), sha256.Sum256([]byte(named))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// ensureFresh is DESIGN.md's refresh protocol: use a valid token; else take
// the lease and refresh; else wait (consistent reads, backing off) until
// the item moves, and take the lease if it runs out unused, but only with
// the time to finish what it starts.
func (b *Broker) ensureFresh(ctx context.Context, e *env, c *store.Connection, req TokenRequest) (*store.Connection, error) {
	start := c.Fence()
	req.seen = c.AccessToken
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
				return nil, b.cannotStart(c.Key, Errorf(CodeProviderUnavailable, "too little time is left in this invocation to refresh %s safely; try again", c.Key))
			}
			held, err := e.store.AcquireLease(ctx, c.Key, c.Fence(), b.newLease(hold))
			if err == nil {
				forced := req.Force && (req.Rejected == "" || sameToken(held.AccessToken, req.Rejected))
				out, err := b.refreshHeld(ctx, e, held, hold, forced)
				var moved *movedOn
				if errors.As(err, &moved) {
					c = moved.current
					continue
				}
				if err == nil && forced && out.RefreshDenied != "" {
					// The caller says this token does not work, and the
					// provider will not replace it: serving it would not help.
					return nil, Errorf(CodeProviderError, "%s", out.RefreshDenied)
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
		if now := b.now(); next.Fence() != c.Fence() && next.Status == store.StatusActive && next.LastError != "" && !next.Leased(now) {
			// The holder failed transiently and recorded it: serve the old
			// token while it works (unless this caller says it does not),
			// else report the failure and when the next attempt is allowed,
			// instead of hammering the provider from every waiter.
			if !req.Force && usable(e.cfg, next, 0, now) {
				return next, nil
			}
			if req.Force && next.RefreshDenied != "" {
				// The provider will not replace the token this caller says
				// does not work; waiting brings nothing.
				return nil, Errorf(CodeProviderError, "%s", next.RefreshDenied)
			}
			if now.Before(next.RetryAt) {
				return nil, retryLater(next.RetryAt, now, nil, "refreshing %s failed: %s", c.Key, next.LastError)
			}
			// The backoff has already run out: look again (and maybe try).
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
