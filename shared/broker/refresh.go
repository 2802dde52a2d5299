package broker

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/sealing"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

// refreshHeld calls the provider while c's lease is held (its holder works
// until hold), then stores the outcome: the new tokens (a rotated refresh
// token above all) or the failure, durably.
//
// forced says the caller saw c's access token rejected: for WeChat's
// stable_token, whose normal mode hands the same token back until its last
// five minutes, that token is then replaced with force_refresh, within
// WeChat's limits.
func (b *Broker) refreshHeld(ctx context.Context, e *env, c *store.Connection, hold time.Time, forced bool) (*store.Connection, error) {
	now := b.now()
	if !e.cfg.Machine() && !c.RefreshExpiresAt.IsZero() && !now.Before(c.RefreshExpiresAt) {
		return b.refusedFor(ctx, e, c, "the refresh token expired", "", hold)
	}
	bg := b.budget()
	if !b.covers(hold, now) {
		return b.giveBack(ctx, e, c, hold)
	}
	if e.cfg.Machine() {
		// The quota count must leave the provider call and the commit
		// their time.
		qctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), b.wallClock(hold.Add(-bg.needed())))
		err := b.quotaGuard(qctx, e)
		cancel()
		if err != nil && !b.covers(hold, b.now()) {
			return b.giveBack(ctx, e, c, hold)
		}
		if err != nil {
			return b.refreshFailed(ctx, e, c, err, hold)
		}
	}
	now = b.now()
	if !b.covers(hold, now) {
		return b.giveBack(ctx, e, c, hold)
	}
	// The call is detached from the caller's cancellation (a request given
	// up half way must not cut a rotation in half) and bounded so that the
	// commit budget is left after it.
	pctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), b.wallClock(now.Add(bg.Provider)))
	var ts *provider.TokenSet
	var err error
	if e.cfg.Machine() {
		ts, err = e.client.MachineToken(pctx)
	} else {
		ts, err = e.client.Refresh(pctx, c.RefreshToken)
	}
	cancel()
	b.Metrics.Milliseconds(telemetry.ProviderLatency, b.now().Sub(now), map[string]string{"Provider": c.Provider, "Op": "refresh"})
	if err == nil && forced && ts.AccessToken != "" && ts.AccessToken == c.AccessToken && wechatStable(e.cfg) {
		ts, err = b.forceStable(ctx, e, c, hold)
		if errors.Is(err, errForceLimit) {
			return b.giveBackFor(ctx, e, c, hold, err)
		}
	}
	if err != nil {
		return b.refreshFailed(ctx, e, c, err, hold)
	}
	next := *c
	applyTokens(&next, ts)
	now = b.now()
	next.Status, next.Attempts, next.LastError, next.LastErrorAt, next.RefreshedAt = store.StatusActive, 0, "", time.Time{}, now
	next.RefreshDenied, next.RetryAt = "", time.Time{}
	if next.AccessToken == c.AccessToken && !c.RefreshedAt.IsZero() {
		// The same token handed back (stable_token before its last five
		// minutes): it was not issued now, and no forced request waiting
		// for a new one may take it for one.
		next.RefreshedAt = c.RefreshedAt
	}
	unusable := fitForStorage(&next)
	if unusable != "" {
		// The grant (its rotated refresh token above all) is stored; the
		// access token the provider sent cannot be, and the next refresh
		// waits its backoff instead of asking the provider again at once.
		b.log().ErrorContext(ctx, "provider answer not fully storable", "provider", c.Provider, "connection", c.Connection, "problem", unusable)
		next.Attempts, next.LastError, next.LastErrorAt = c.Attempts+1, unusable, now
	}
	var notices []store.Notice
	switch {
	case unusable != "" && !c.FailingNotified && next.Attempts >= FailingAfter:
		// Nothing usable again and again: the streak goes on.
		next.FailingNotified = true
		notices = append(notices, b.failingNotice(e.store, c, next.Attempts, unusable))
	case unusable == "" && c.FailingNotified:
		next.FailingNotified = false
		notices = append(notices, b.recoveredNotice(e.store, c))
	}
	scheduleRefresh(&next, e.cfg, now)
	if unusable != "" {
		next.RetryAt = now.Add(b.shortDelay(next.Attempts))
		next.RefreshAt = next.RetryAt
	}
	w, err := e.store.PrepareCommit(&next, c.Fence(), notices...)
	if err == nil {
		err = b.durably(ctx, hold, w)
	}
	var ce *store.ConflictError
	switch {
	case err == nil:
		next.Version, next.LeaseOwner, next.LeaseUntil = c.Version+1, "", time.Time{}
		b.Metrics.Count(telemetry.RefreshSucceeded, 1, map[string]string{"Provider": c.Provider})
		b.log().InfoContext(ctx, "token refreshed", "provider", c.Provider, "connection", c.Connection,
			"token_fingerprint", store.Fingerprint(next.AccessToken), "expires_at", next.ExpiresAt, "version", next.Version)
		b.publish(ctx, e.store, notices...)
		if unusable != "" {
			return nil, Errorf(CodeProviderError, "provider %q sent what the broker cannot store: %s", c.Provider, unusable)
		}
		return &next, nil
	case errors.Is(err, store.ErrNotFound):
		b.log().WarnContext(ctx, "connection deleted during its refresh; new tokens discarded", "provider", c.Provider, "connection", c.Connection)
		b.revokeOrphan(ctx, e, c, ts)
		return nil, Errorf(CodeNotFound, "connection %s was deleted while it was being refreshed", c.Key)
	case errors.As(err, &ce) && ce.Current != nil:
		if ce.Current.Generation != c.Generation {
			// Re-authorized (maybe by another account) while we refreshed
			// the old grant: the new grant stands, the old one's tokens go.
			b.log().WarnContext(ctx, "connection re-authorized during its refresh; the old grant's new tokens discarded", "provider", c.Provider, "connection", c.Connection)
			b.revokeOrphan(ctx, e, c, ts)
		} else {
			b.log().ErrorContext(ctx, "refresh lost the version race: the lease ran out under its holder", "provider", c.Provider, "connection", c.Connection)
		}
		return nil, &movedOn{current: ce.Current}
	default:
		// DynamoDB refused every write until the hold ran out. The provider
		// may have rotated the grant: the next refresh presents the old
		// refresh token, and a provider that refuses it ends the connection
		// in needs_reauth, visibly.
		b.Metrics.Count(telemetry.RefreshUnsaved, 1, map[string]string{"Provider": c.Provider})
		b.log().ErrorContext(ctx, "refreshed tokens could not be stored; the previous refresh token may be spent",
			"provider", c.Provider, "connection", c.Connection, "error", err.Error())
		return nil, storeError(err, "connection")
	}
}

// Limits of what a connection item holds (the store refuses more).
const (
	maxScope     = 2048
	maxTokenType = 64
)

// fitForStorage makes a provider's answer storable, so that a rotated
// refresh token is never lost because something beside it is too large:
// an overlong scope or token type is cut, an access token over the
// sealing limit is dropped (the connection then has none to serve). It
// returns why the access token was dropped, or "".
func fitForStorage(c *store.Connection) string {
	c.Scope = clipUTF8(c.Scope, maxScope)
	c.TokenType = clipUTF8(c.TokenType, maxTokenType)
	if c.AccessToken == "" {
		// A rotated refresh token alone: kept, but nothing to serve.
		c.ExpiresAt = time.Time{}
		return "the provider's answer carried a refresh token but no access token"
	}
	if len(c.AccessToken) > sealing.MaxPlaintext {
		n := len(c.AccessToken)
		c.AccessToken, c.ExpiresAt = "", time.Time{}
		return fmt.Sprintf("the access token is %d bytes, more than the %d the broker stores", n, sealing.MaxPlaintext)
	}
	return ""
}

func clipUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// errNoTime is a refresh given up before the provider call because the
// holder's time no longer covered it.
var errNoTime = errors.New("broker: too little time left for the provider call and its commit")

// giveBack ends a refresh before the provider call because taking the
// lease (or counting the quota) was slow and the call and its commit no
// longer fit before the hold ends: the lease is given back unused and
// nothing is spent.
func (b *Broker) giveBack(ctx context.Context, e *env, c *store.Connection, hold time.Time) (*store.Connection, error) {
	return b.giveBackFor(ctx, e, c, hold, wrap(CodeProviderUnavailable, errNoTime, "too little time is left to refresh %s safely; try again", c.Key))
}

// giveBackFor releases c's lease unused and returns err.
func (b *Broker) giveBackFor(ctx context.Context, e *env, c *store.Connection, hold time.Time, err error) (*store.Connection, error) {
	w := e.store.PrepareRelease(c.Key, c.Fence(), c.LeaseOwner)
	if werr := b.durably(ctx, hold, w); werr != nil {
		b.log().WarnContext(ctx, "unused lease not released; it runs out by itself", "provider", c.Provider, "connection", c.Connection, "error", werr.Error())
	}
	return nil, err
}

// revokeOrphan revokes tokens fetched for a grant that was deleted or
// replaced while they were being fetched, so that no live credential of it
// is left behind; but only where the provider's revocation ends just the
// token revoked (revoke_per_token). Where it ends the user's whole grant
// (Google), the grant that replaced this one may be that same user's new
// consent, and revoking would end it too; the orphan then lives until it
// expires.
func (b *Broker) revokeOrphan(ctx context.Context, e *env, c *store.Connection, ts *provider.TokenSet) {
	if !e.cfg.RevokesPerToken() {
		if e.cfg.RevokeURL != "" {
			b.log().InfoContext(ctx, "discarded tokens not revoked: the provider's revocation may end the user's whole grant (revoke_per_token is false)",
				"provider", c.Provider, "connection", c.Connection)
		}
		return
	}
	token, hint := ts.RefreshToken, "refresh_token"
	if token == "" || token == c.RefreshToken {
		token, hint = ts.AccessToken, "access_token"
	}
	if err := b.revokeWithin(ctx, e, token, hint); err != nil {
		b.log().WarnContext(ctx, "revoking the discarded tokens failed", "provider", c.Provider, "connection", c.Connection, "error", err.Error())
	}
}

// refreshFailed records a failed refresh. A refusal of the grant marks the
// connection needs_reauth (unless another worker already moved it on); a
// configuration or transient failure keeps the tokens and retries later,
// and a streak that goes on past the token's expiry (or FailingAfter
// attempts) is announced once.
func (b *Broker) refreshFailed(ctx context.Context, e *env, c *store.Connection, cause error, hold time.Time) (*store.Connection, error) {
	class := provider.ClassOf(cause)
	b.Metrics.Count(telemetry.RefreshFailed, 1, map[string]string{"Provider": c.Provider, "Class": class.String()})
	b.log().WarnContext(ctx, "refresh failed", "provider", c.Provider, "connection", c.Connection, "class", class.String(), "error", cause.Error())
	var pe *provider.Error
	code := ""
	if errors.As(cause, &pe) {
		code = pe.Code
	}
	if class == provider.ClassReauth && !e.cfg.Machine() {
		return b.refusedFor(ctx, e, c, "the provider refused the refresh: "+describe(cause), code, hold)
	}
	if class == provider.ClassNoRefresh && !e.cfg.Machine() {
		return b.refreshDenied(ctx, e, c, cause, hold)
	}
	attempts := c.Attempts + 1
	now := b.now()
	// Two schedules: while the old token works it is served and the next
	// attempt follows the long one; once none is usable, callers have
	// nothing, and the short one lets a passing fault cost seconds.
	f := store.Failure{Message: describe(cause), Attempts: attempts, RetryAt: now.Add(b.shortDelay(attempts)),
		FailingNotified: c.FailingNotified}
	if errors.Is(cause, errQuota) {
		// The daily budget is spent: nothing is allowed before WeChat's
		// next day, however short the backoff.
		f.RetryAt = nextChinaDay(now)
	}
	f.NextAttempt = f.RetryAt
	if usable(e.cfg, c, 0, now) {
		f.NextAttempt = now.Add(b.retryDelay(attempts, c.ExpiresAt, now))
	}
	var notices []store.Notice
	if !c.FailingNotified && (attempts >= FailingAfter || (!c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt))) {
		f.FailingNotified = true
		notices = append(notices, b.failingNotice(e.store, c, attempts, f.Message))
	}
	w, err := e.store.PrepareFailure(c.Key, c.Fence(), f, notices...)
	if err == nil {
		err = b.durably(ctx, hold, w)
	}
	switch {
	case err == nil:
		b.publish(ctx, e.store, notices...)
	case errors.Is(err, store.ErrVersionConflict) || errors.Is(err, store.ErrNotFound):
		// Deleted, re-authorized or refreshed by someone else meanwhile.
	default:
		b.log().ErrorContext(ctx, "could not record refresh failure", "provider", c.Provider, "connection", c.Connection, "error", err.Error())
	}
	if errors.Is(cause, errQuota) {
		return nil, retryLater(f.RetryAt, now, cause, "%s", describe(cause))
	}
	if class == provider.ClassConfig {
		return nil, wrap(CodeProviderError, cause, "the provider rejected the app's credentials or settings (%s); an operator must fix provider %q", describe(cause), c.Provider)
	}
	return nil, retryLater(f.RetryAt, now, cause, "refreshing %s failed (%s); the old token is kept and the refresh is retried", c.Key, describe(cause))
}

// refreshDenied handles a provider that will not refresh for this app
// (SinaCloud's unauthorized_client on a refresh: the client id lacks the
// refresh permission). The grant is not revoked and the refresh token may
// still work once the permission is granted: the token is served until it
// expires, and the refusal is remembered for DenialMemory, after which (or
// at expiry, whichever is first) a refresh asks again. Asked at expiry and
// refused again, the connection needs its user.
func (b *Broker) refreshDenied(ctx context.Context, e *env, c *store.Connection, cause error, hold time.Time) (*store.Connection, error) {
	b.Metrics.Count(telemetry.RefreshNotPermitted, 1, map[string]string{"Provider": c.Provider})
	why := fmt.Sprintf("provider %q does not let this app refresh tokens (%s); ask the provider for the refresh permission", c.Provider, describe(cause))
	now := b.now()
	if !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt) {
		return b.refusedFor(ctx, e, c, "the access token expired and "+why, "", hold)
	}
	again := now.Add(DenialMemory)
	if !c.ExpiresAt.IsZero() && c.ExpiresAt.Before(again) {
		again = c.ExpiresAt
	}
	f := store.Failure{Message: why, Attempts: c.Attempts + 1, NextAttempt: again, RefreshDenied: why, FailingNotified: c.FailingNotified}
	w, err := e.store.PrepareFailure(c.Key, c.Fence(), f)
	if err == nil {
		err = b.durably(ctx, hold, w)
	}
	if err != nil && !errors.Is(err, store.ErrVersionConflict) && !errors.Is(err, store.ErrNotFound) {
		b.log().ErrorContext(ctx, "could not record that the provider refuses refreshes", "provider", c.Provider, "connection", c.Connection, "error", err.Error())
	}
	b.log().WarnContext(ctx, "provider refuses refreshes for this app; serving the token until it expires", "provider", c.Provider,
		"connection", c.Connection, "expires_at", c.ExpiresAt)
	next := *c
	next.RefreshDenied, next.LastError, next.LastErrorAt, next.Attempts = why, why, now, f.Attempts
	next.LeaseOwner, next.LeaseUntil, next.RefreshAt, next.RetryAt = "", time.Time{}, again, time.Time{}
	if usable(e.cfg, &next, 0, now) {
		return &next, nil
	}
	return nil, Errorf(CodeNeedsReauth, "connection %s needs re-authorization: %s", c.Key, why)
}

// refusedFor ends a grant the provider refused: needs_reauth, unless the
// write finds that another worker moved the connection on (a *movedOn).
func (b *Broker) refusedFor(ctx context.Context, e *env, c *store.Connection, reason, providerCode string, hold time.Time) (*store.Connection, error) {
	return nil, b.markNeedsReauth(ctx, e, c, reason, providerCode, &hold)
}

// movedOn is what a write for c found instead of c: another worker
// committed, the connection was re-authorized, or a new first fetch
// began. Its caller looks at current again (it may be pending, expired or
// another grant) instead of serving it as it is.
type movedOn struct{ current *store.Connection }

func (m *movedOn) Error() string {
	return fmt.Sprintf("broker: connection %s changed during the refresh", m.current.Key)
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

// markNeedsReauth takes c out of service at its fence and announces it,
// once: the needs_reauth state and its event are written in one
// transaction, so the event is published by this process or, if it dies
// first, by the refresher. When the write finds the connection moved on,
// it returns the needs_reauth error of a mark someone else made (who also
// announced it), or a *movedOn with what is there.
func (b *Broker) markNeedsReauth(ctx context.Context, e *env, c *store.Connection, reason, providerCode string, hold *time.Time) error {
	until := b.now().Add(b.budget().Commit)
	if hold != nil {
		until = *hold
	}
	notice := b.needsReauthNotice(e.store, c, reason, providerCode)
	w, err := e.store.PrepareNeedsReauth(c.Key, c.Fence(), reason, notice)
	if err == nil {
		err = b.durably(ctx, until, w)
	}
	var ce *store.ConflictError
	switch {
	case err == nil:
		b.log().WarnContext(ctx, "connection needs re-authorization", "provider", c.Provider, "connection", c.Connection, "reason", reason)
		b.publish(ctx, e.store, notice)
		c.Status, c.LastError = store.StatusNeedsReauth, reason
		return needsReauth(c)
	case errors.Is(err, store.ErrNotFound):
		return Errorf(CodeNotFound, "connection %s was deleted", c.Key)
	case errors.As(err, &ce) && ce.Current != nil:
		if ce.Current.Status == store.StatusNeedsReauth {
			return needsReauth(ce.Current)
		}
		return &movedOn{current: ce.Current}
	}
	return storeError(err, "connection")
}
