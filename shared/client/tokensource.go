package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/sync/singleflight"
)

// oauth2ExpiryDelta is x/oauth2's defaultExpiryDelta: oauth2.Token.Valid,
// and so oauth2.ReuseTokenSource and oauth2.NewClient, treat a token as
// expired this long before its Expiry.
const oauth2ExpiryDelta = 10 * time.Second

// retryPolicy is how TokenSource retries the broker's 503 answers.
type retryPolicy struct {
	attempts  int           // in all, the first one included
	base, max time.Duration // the wait before retry n is base·2ⁿ⁻¹, capped, jittered to [½, 1] of it
	// maxRetryAfter is the longest Retry-After that is waited out; an
	// answer asking for more is returned at once.
	maxRetryAfter time.Duration
}

var defaultRetry = retryPolicy{attempts: 4, base: 200 * time.Millisecond, max: 2 * time.Second, maxRetryAfter: 20 * time.Second}

func (p retryPolicy) wait(retry int) time.Duration {
	d := p.max
	if retry < 31 && p.base<<(retry-1) < p.max {
		d = p.base << (retry - 1)
	}
	// Jitter spreads the retries of many processes that failed together.
	return d/2 + rand.N(d/2+1)
}

// TokenSource returns an oauth2.TokenSource for one connection, for
// oauth2.NewClient or anything else that takes one. It keeps the token in
// the process until less than minTTL of it remains (a token whose
// ExpiresAt is zero never goes stale), so a process asks the broker about
// once per token lifetime however often it calls Token. Concurrent callers
// share one request; a 503 answer is retried up to 3 times with jittered
// exponential backoff; errors are returned, never cached. Requests, and
// the waits between retries, use ctx: once it is done, Token fails.
//
// When the broker hands out a token that already has less than minTTL
// left (a provider whose tokens live shorter than minTTL), it is used for
// half of its remaining life before the source asks again, rather than
// asking again at once.
//
// The returned token's Expiry is ExpiresAt brought forward by
// minTTL − 10 s when minTTL is longer than 10 s, so that x/oauth2's own
// 10 s early expiry (oauth2.NewClient, oauth2.ReuseTokenSource) ends the
// token's use exactly when this source would fetch a new one; it is never
// later than ExpiresAt. The broker's own expires_at, scope and extras are
// in Extra.
func (c *Client) TokenSource(ctx context.Context, provider, connection string, minTTL time.Duration) oauth2.TokenSource {
	if ctx == nil {
		ctx = context.Background()
	}
	return &tokenSource{client: c, ctx: ctx, provider: provider, connection: connection, minTTL: max(minTTL, 0)}
}

type tokenSource struct {
	client               *Client
	ctx                  context.Context
	provider, connection string
	minTTL               time.Duration

	cached atomic.Pointer[cachedToken]
	flight singleflight.Group
	// healed is this source's last heal: the rejected token and what the
	// broker gave for it.
	healed atomic.Pointer[healAnswer]
}

type healAnswer struct {
	rejected string
	token    *Token
}

// cachedToken is a fetched token and when it stops being good enough.
type cachedToken struct {
	token   oauth2.Token // copied out to each caller
	staleAt time.Time    // zero: never
}

// fresh reports whether t still has what the source promises at now. Like
// oauth2.Token.Valid, the boundary instant still counts as valid.
func (t *cachedToken) fresh(now time.Time) bool {
	return t != nil && (t.staleAt.IsZero() || !t.staleAt.Before(now))
}

func (t *cachedToken) copy() *oauth2.Token {
	out := t.token // oauth2.Transport and ReuseTokenSource write to the tokens they get
	return &out
}

// Token returns a token valid for at least minTTL, from the cache when it
// can.
func (s *tokenSource) Token() (*oauth2.Token, error) {
	t, err := s.current()
	if err != nil {
		return nil, err
	}
	return t.copy(), nil
}

// current is Token without the copy.
func (s *tokenSource) current() (*cachedToken, error) {
	if t := s.cached.Load(); t.fresh(s.client.now()) {
		return t, nil
	}
	v, err, _ := s.flight.Do("", func() (any, error) {
		// A flight that ended while this caller was on its way may have
		// filled the cache already.
		if t := s.cached.Load(); t.fresh(s.client.now()) {
			return t, nil
		}
		tok, err := s.fetch()
		if err != nil {
			return nil, err
		}
		t := newCachedToken(tok, s.minTTL, s.client.now())
		s.cached.Store(t)
		return t, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*cachedToken), nil
}

// fetch asks the broker, retrying 503 answers.
func (s *tokenSource) fetch() (*Token, error) {
	return s.client.retrying(s.ctx, func() (*Token, error) {
		return s.client.Token(s.ctx, s.provider, s.connection, s.minTTL)
	})
}

// heal replaces a token a downstream API rejected: unless the cache holds
// another fresh token already (a heal that finished while this caller's
// request was out), it asks the broker with Refresh naming the rejected
// token and caches the answer. Concurrent heals of one token of one
// connection, through any source of the same Client, share one Refresh.
func (s *tokenSource) heal(rejected string) (*cachedToken, error) {
	if t := s.cached.Load(); t.fresh(s.client.now()) && t.token.AccessToken != rejected {
		return t, nil
	}
	key := s.provider + "\x00" + s.connection + "\x00" + rejected
	v, err, _ := s.client.heals.Do(key, func() (any, error) {
		// A flight for this token that ended while this caller was on its
		// way may have answered it already, and its answer is still the
		// cached token: no second Refresh.
		if h := s.healed.Load(); h != nil && h.rejected == rejected {
			if t := s.cached.Load(); t.fresh(s.client.now()) && t.token.AccessToken == h.token.AccessToken {
				return h.token, nil
			}
		}
		tok, err := s.client.Refresh(s.ctx, s.provider, s.connection, rejected)
		if err == nil {
			// Cached before the flight ends, so that a caller whose request
			// with the rejected token comes back just after finds it.
			s.healed.Store(&healAnswer{rejected: rejected, token: tok})
			s.keep(newCachedToken(tok, s.minTTL, s.client.now()), rejected)
		}
		return tok, err
	})
	if err != nil {
		// The broker says the grant is gone: the cached token is known to
		// be bad and nothing will replace it, so the next call asks the
		// broker (and gets its error) instead of sending it again.
		if errors.Is(err, ErrNeedsReauth) || errors.Is(err, ErrNotFound) {
			if old := s.cached.Load(); old != nil && old.token.AccessToken == rejected {
				s.cached.CompareAndSwap(old, nil)
			}
		}
		return nil, err
	}
	t := newCachedToken(v.(*Token), s.minTTL, s.client.now())
	s.keep(t, rejected) // for another source of the Client that shared the flight
	return t, nil
}

// keep caches t, which replaces rejected, unless the cache already holds
// a fresh token other than rejected.
func (s *tokenSource) keep(t *cachedToken, rejected string) {
	if old := s.cached.Load(); old == nil || old.token.AccessToken == rejected || !old.fresh(s.client.now()) {
		s.cached.Store(t)
	}
}

// newCachedToken works out, for a token fetched at now, when it goes
// stale for minTTL and the Expiry x/oauth2 should see.
func newCachedToken(tok *Token, minTTL time.Duration, now time.Time) *cachedToken {
	t := &cachedToken{token: oauth2.Token{AccessToken: tok.AccessToken, TokenType: tok.TokenType}}
	if !tok.ExpiresAt.IsZero() {
		margin := minTTL
		if remaining := tok.ExpiresAt.Sub(now); remaining < minTTL {
			margin = max(remaining/2, 0)
		}
		t.staleAt = tok.ExpiresAt.Add(-margin)
		t.token.Expiry = tok.ExpiresAt.Add(-max(margin-oauth2ExpiryDelta, 0))
	}
	extra := make(map[string]any, len(tok.Extra)+2)
	for k, v := range tok.Extra {
		extra[k] = v
	}
	if tok.Scope != "" {
		extra["scope"] = tok.Scope
	}
	if !tok.ExpiresAt.IsZero() {
		extra["expires_at"] = tok.ExpiresAt.UTC().Format(time.RFC3339)
	}
	t.token = *t.token.WithExtra(extra)
	return t
}
