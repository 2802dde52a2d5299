package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"time"
)

// Refresh makes the broker refresh a connection's token now (POST
// …/refresh) and returns the new one. rejectedToken names the access token
// the downstream API rejected: when the broker already holds another,
// usable token it answers that one without asking the provider, so many
// callers that saw the same token fail cause one provider call. Without
// it ("") the request has no body and the answer is a token the provider
// issued after the request arrived. 503 answers are retried like
// TokenSource's, never sooner than their Retry-After. A connection whose
// token cannot be refreshed is an *Error 409 not_refreshable.
//
// The rejected token is sent only in the request body, over the same
// signed connection as every answer; it never appears in an error.
func (c *Client) Refresh(ctx context.Context, provider, connection, rejectedToken string) (*Token, error) {
	if err := checkNames(provider, connection); err != nil {
		return nil, err
	}
	var body any
	if rejectedToken != "" {
		body = map[string]string{"rejected_token": rejectedToken}
	}
	return c.retrying(ctx, func() (*Token, error) {
		raw, _, err := c.send(ctx, http.MethodPost, connectionPath(provider, connection)+"/refresh", nil, body)
		if err != nil {
			return nil, err
		}
		return parseAnswer(raw)
	})
}

// retrying calls do until it answers something other than a 503, at most
// c.retry.attempts times. Between attempts it waits the answer's
// Retry-After, or, when there is none, the policy's jittered backoff; an
// answer that asks for a longer wait than the policy allows is returned
// at once, for the caller to decide.
func (c *Client) retrying(ctx context.Context, do func() (*Token, error)) (*Token, error) {
	policy := c.retry
	if policy.maxRetryAfter <= 0 {
		policy.maxRetryAfter = defaultRetry.maxRetryAfter
	}
	for attempt := 1; ; attempt++ {
		tok, err := do()
		var answer *Error
		if err == nil || !errors.As(err, &answer) || answer.Status != http.StatusServiceUnavailable || attempt >= policy.attempts {
			return tok, err
		}
		wait := policy.wait(attempt)
		if answer.RetryAfter > 0 {
			if answer.RetryAfter > policy.maxRetryAfter {
				return nil, err
			}
			// Never sooner than asked; a little later, so that callers
			// told the same instant do not all arrive at once.
			wait = answer.RetryAfter + rand.N(answer.RetryAfter/10+1)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("%w (no retry: %w)", err, ctx.Err())
		case <-timer.C:
		}
	}
}

// TransportOption configures HTTPClient.
type TransportOption func(*transportOptions)

type transportOptions struct {
	rejected   func(*http.Response) bool
	queryParam string
	base       http.RoundTripper
}

// WithRejection decides which downstream answers mean "this access token
// is no good". The default is an HTTP 401. rejected may read the body if
// it leaves it readable for the caller (WeChatRejected does).
func WithRejection(rejected func(*http.Response) bool) TransportOption {
	return func(o *transportOptions) { o.rejected = rejected }
}

// WithQueryToken sends the token as the query parameter param (WeChat's
// APIs take access_token=…) instead of an Authorization header.
func WithQueryToken(param string) TransportOption {
	return func(o *transportOptions) { o.queryParam = param }
}

// WeChat's errcodes for an access token that is invalid (40001), malformed
// (40014) or expired (42001). WeChat reports them with HTTP 200.
var wechatTokenErrors = map[int64]bool{40001: true, 40014: true, 42001: true}

// wechatPeek is how much of a WeChat answer WeChatRejected reads; its
// error answers are a few dozen bytes.
const wechatPeek = 64 << 10

// WeChatRejected reports whether a WeChat API answered that the access
// token is invalid, malformed or expired: HTTP 200 with errcode 40001,
// 40014 or 42001. Use it with WithRejection. It reads the start of the
// body and puts it back, so the caller still reads the whole answer.
func WeChatRejected(resp *http.Response) bool {
	if resp == nil || resp.StatusCode != http.StatusOK || resp.Body == nil || resp.Body == http.NoBody {
		return false
	}
	head, err := io.ReadAll(io.LimitReader(resp.Body, wechatPeek))
	resp.Body = &rewoundBody{Reader: io.MultiReader(bytes.NewReader(head), resp.Body), Closer: resp.Body}
	if err != nil {
		return false
	}
	var answer struct {
		ErrCode *int64 `json:"errcode"`
	}
	if json.Unmarshal(head, &answer) != nil || answer.ErrCode == nil {
		return false
	}
	return wechatTokenErrors[*answer.ErrCode]
}

// rewoundBody is a body whose start was read and put back in front.
type rewoundBody struct {
	io.Reader
	io.Closer
}

func unauthorized(resp *http.Response) bool { return resp.StatusCode == http.StatusUnauthorized }

// HTTPClient returns an *http.Client for a downstream API that puts a
// token of provider's connection on every request: the header
// "Authorization: Bearer …", or a query parameter (WithQueryToken). Tokens
// come from a source like TokenSource's (cached until less than minTTL
// remains, one request for concurrent callers, 503s retried); ctx is the
// one the source's requests to the broker use.
//
// When the downstream API rejects the token (a 401 unless WithRejection
// says otherwise), the client asks the broker for a new one with Refresh,
// naming the rejected token, keeps the answer in the source's cache, and
// sends the request once more with it, where the body can be sent again
// (no body, or Request.GetBody set, as http.NewRequest does for in-memory
// bodies). Otherwise, and when the refresh fails or the second answer is
// rejected too, the caller gets the rejection as it is. Concurrent
// rejections of one token through one Client make one Refresh.
func (c *Client) HTTPClient(ctx context.Context, provider, connection string, minTTL time.Duration, opts ...TransportOption) *http.Client {
	o := transportOptions{rejected: unauthorized, base: http.DefaultTransport}
	for _, opt := range opts {
		opt(&o)
	}
	if o.rejected == nil {
		o.rejected = unauthorized
	}
	source := c.TokenSource(ctx, provider, connection, minTTL).(*tokenSource)
	return &http.Client{Transport: &healingTransport{source: source, opts: o}}
}

// healingTransport is HTTPClient's RoundTripper.
type healingTransport struct {
	source *tokenSource
	opts   transportOptions
}

// RoundTrip sends req with the current token and heals a rejection once.
func (t *healingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	current, err := t.source.current()
	if err != nil {
		if req.Body != nil {
			req.Body.Close() // a RoundTripper closes the body, even on errors
		}
		return nil, err
	}
	resp, err := t.send(req, req.Body, current.token.AccessToken)
	if err != nil || !t.opts.rejected(resp) {
		return resp, err
	}
	hasBody := req.Body != nil && req.Body != http.NoBody
	if hasBody && req.GetBody == nil {
		return resp, nil // cannot be sent again: the caller sees the rejection
	}
	healed, err := t.source.heal(current.token.AccessToken)
	if err != nil {
		return resp, nil
	}
	body := io.ReadCloser(nil)
	if hasBody {
		if body, err = req.GetBody(); err != nil {
			return resp, nil
		}
	}
	// The rejection is dropped for the replay's answer; reading a little
	// of it lets the connection be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	return t.send(req, body, healed.token.AccessToken)
}

// send sends a copy of req carrying token and body.
func (t *healingTransport) send(req *http.Request, body io.ReadCloser, token string) (*http.Response, error) {
	out := req.Clone(req.Context()) // Clone copies the URL and the headers
	out.Body = body
	if t.opts.queryParam != "" {
		q := out.URL.Query()
		q.Set(t.opts.queryParam, token)
		out.URL.RawQuery = q.Encode()
	} else {
		out.Header.Set("Authorization", "Bearer "+token)
	}
	return t.opts.base.RoundTrip(out)
}
