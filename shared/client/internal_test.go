package client

// These tests steer what the real broker cannot be made to answer on
// demand (exact expiry instants, malformed bodies, endless 503s) with an
// httptest server standing in for it; client_test.go runs the client
// against the real functions.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"golang.org/x/oauth2"
)

var testCreds = credentials.NewStaticCredentialsProvider("local", "local", "")

// fakeBroker answers the token route with answer(n) for the n-th request
// (1-based) and counts requests.
type fakeBroker struct {
	*httptest.Server
	requests atomic.Int64
	mu       sync.Mutex
	queries  []string
}

func newFakeBroker(t *testing.T, answer func(n int64, w http.ResponseWriter)) *fakeBroker {
	t.Helper()
	f := &fakeBroker{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := f.requests.Add(1)
		f.mu.Lock()
		f.queries = append(f.queries, r.URL.RawQuery)
		f.mu.Unlock()
		if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential=local/") || r.URL.Path != "/connections/gh/alice/token" {
			http.Error(w, "unexpected request "+r.URL.Path, http.StatusTeapot)
			return
		}
		answer(n, w)
	}))
	t.Cleanup(f.Close)
	return f
}

func writeToken(w http.ResponseWriter, access string, expiresAt time.Time) {
	body := map[string]any{"provider": "gh", "connection": "alice", "access_token": access, "token_type": "bearer",
		"expires_at": "", "scope": "repo", "extra": map[string]any{"openid": "o-1"}}
	if !expiresAt.IsZero() {
		body["expires_at"] = expiresAt.UTC().Format(time.RFC3339Nano)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(body)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "message": msg})
}

func newTestClient(t *testing.T, base string) *Client {
	t.Helper()
	c, err := New(base, WithCredentials(testCreds), WithRegion("us-east-1"))
	if err != nil {
		t.Fatal(err)
	}
	c.retry = retryPolicy{attempts: 4, base: time.Millisecond, max: 4 * time.Millisecond}
	return c
}

func TestNewResolvesTheRegion(t *testing.T) {
	for _, tc := range []struct {
		name, base, option, env, want, err string
	}{
		{"WithRegion wins", "https://abc123.execute-api.eu-west-1.amazonaws.com", "ap-south-1", "us-east-1", "ap-south-1", ""},
		{"the API's host before AWS_REGION", "https://abc123.execute-api.eu-west-1.amazonaws.com/", "", "us-east-1", "eu-west-1", ""},
		{"a private API's host", "https://abc123-vpce-0123.execute-api.us-gov-west-1.vpce.amazonaws.com", "", "", "us-gov-west-1", ""},
		{"a China region", "https://abc123.execute-api.cn-north-1.amazonaws.com.cn", "", "", "cn-north-1", ""},
		{"a custom domain takes AWS_REGION", "https://tokens.example.com/v1", "", "eu-central-2", "eu-central-2", ""},
		{"nothing to go by", "https://tokens.example.com", "", "", "", "no region"},
		{"plain http to a remote host", "http://tokens.example.com", "", "us-east-1", "", "loopback"},
		{"plain http to loopback", "http://127.0.0.1:3000", "", "us-east-1", "us-east-1", ""},
		{"not a URL", "tokens.example.com", "", "us-east-1", "", "must look like"},
		{"a query", "https://tokens.example.com/?x=1", "", "us-east-1", "", "must look like"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("AWS_REGION", tc.env)
			opts := []Option{WithCredentials(testCreds)}
			if tc.option != "" {
				opts = append(opts, WithRegion(tc.option))
			}
			c, err := New(tc.base, opts...)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "tokenbroker: ") {
					t.Fatalf("err %v, want one about %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.region != tc.want || strings.HasSuffix(c.base, "/") {
				t.Fatalf("region %q base %q, want %q", c.region, c.base, tc.want)
			}
		})
	}
}

func TestNewUsesTheDefaultChain(t *testing.T) {
	// Only the environment: no shared files, no instance metadata.
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent/config")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_ACCESS_KEY_ID", "ASIAFROMENV")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
	t.Setenv("AWS_SESSION_TOKEN", "session-from-env")
	t.Setenv("AWS_REGION", "sa-east-1")
	c, err := New("https://tokens.example.com")
	if err != nil {
		t.Fatal(err)
	}
	creds, err := c.creds.Retrieve(context.Background())
	if err != nil || creds.AccessKeyID != "ASIAFROMENV" || creds.SessionToken != "session-from-env" || c.region != "sa-east-1" {
		t.Fatalf("creds %+v err %v region %s", creds, err, c.region)
	}
}

func TestWithCredentialsIsCached(t *testing.T) {
	var calls atomic.Int64
	p := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		calls.Add(1)
		return aws.Credentials{AccessKeyID: "local", SecretAccessKey: "local", CanExpire: true, Expires: time.Now().Add(time.Hour)}, nil
	})
	f := newFakeBroker(t, func(_ int64, w http.ResponseWriter) { writeToken(w, "t", time.Time{}) })
	c, err := New(f.URL, WithCredentials(p), WithRegion("us-east-1"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := c.Token(context.Background(), "gh", "alice", 0); err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 1 || f.requests.Load() != 3 {
		t.Fatalf("%d credential retrievals for %d requests, want 1 for 3", calls.Load(), f.requests.Load())
	}
}

func TestInvalidNamesSendNothing(t *testing.T) {
	f := newFakeBroker(t, func(_ int64, w http.ResponseWriter) { writeToken(w, "t", time.Time{}) })
	c := newTestClient(t, f.URL)
	for _, tc := range []struct{ provider, connection string }{
		{"", "alice"}, {"gh", ""}, {"gh/x", "alice"}, {"gh", "al ice"}, {"gh", "../token"}, {"gh", "alice%2f"},
		{"gh", strings.Repeat("a", 129)}, {"ghü", "alice"}, {"gh", "alice\n"},
	} {
		_, err := c.Token(context.Background(), tc.provider, tc.connection, 0)
		if err == nil || !strings.Contains(err.Error(), "must be 1 to 128") {
			t.Errorf("%q/%q: %v", tc.provider, tc.connection, err)
		}
		if _, err := c.TokenSource(context.Background(), tc.provider, tc.connection, 0).Token(); err == nil {
			t.Errorf("TokenSource %q/%q: no error", tc.provider, tc.connection)
		}
	}
	if n := f.requests.Load(); n != 0 {
		t.Fatalf("%d requests for invalid names", n)
	}
	if _, err := c.Token(context.Background(), "gh", "alice", 0); err != nil {
		t.Fatalf("a valid name: %v", err)
	}
}

func TestMinTTLIsSentInWholeSecondsRoundedUp(t *testing.T) {
	f := newFakeBroker(t, func(_ int64, w http.ResponseWriter) { writeToken(w, "t", time.Time{}) })
	c := newTestClient(t, f.URL)
	for _, d := range []time.Duration{0, -time.Second, time.Millisecond, time.Second, 1500 * time.Millisecond, 5 * time.Minute} {
		if _, err := c.Token(context.Background(), "gh", "alice", d); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"min_ttl=0", "min_ttl=0", "min_ttl=1", "min_ttl=1", "min_ttl=2", "min_ttl=300"}
	if fmt.Sprint(f.queries) != fmt.Sprint(want) {
		t.Fatalf("queries %v, want %v", f.queries, want)
	}
}

func TestAnswersAreParsed(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		check      func(*Token) bool
		err        string
	}{
		{"full", `{"provider":"gh","connection":"alice","access_token":"A","token_type":"Bearer","expires_at":"2030-01-02T03:04:05Z","scope":"repo","extra":{"openid":"o","is_snapshotuser":1,"unionid":null}}`,
			func(t *Token) bool {
				return t.AccessToken == "A" && t.ExpiresAt.Equal(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)) && t.Scope == "repo" &&
					t.Extra["openid"] == "o" && t.Extra["is_snapshotuser"] == "1" && len(t.Extra) == 2
			}, ""},
		{"scope null, no expiry, no extra", `{"provider":"gh","connection":"alice","access_token":"A","token_type":"bearer","expires_at":null,"scope":null}`,
			func(t *Token) bool { return t.ExpiresAt.IsZero() && t.Scope == "" && t.Extra == nil }, ""},
		{"no access token", `{"provider":"gh","connection":"alice","access_token":""}`, nil, "no access_token"},
		{"not JSON", `<html>ok</html>`, nil, "not a token"},
		{"bad expiry", `{"access_token":"A","expires_at":"tomorrow"}`, nil, "not RFC 3339"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeBroker(t, func(_ int64, w http.ResponseWriter) { _, _ = w.Write([]byte(tc.body)) })
			tok, err := newTestClient(t, f.URL).Token(context.Background(), "gh", "alice", 0)
			if tc.err != "" {
				var e *Error
				if err == nil || !strings.Contains(err.Error(), tc.err) || errors.As(err, &e) {
					t.Fatalf("err %v, want a plain error about %q", err, tc.err)
				}
				return
			}
			if err != nil || !tc.check(tok) {
				t.Fatalf("%+v %v", tok, err)
			}
		})
	}
}

func TestTokenStringHidesTheToken(t *testing.T) {
	tok := Token{Provider: "gh", Connection: "alice", AccessToken: "s3cr3t", TokenType: "bearer"}
	for _, s := range []string{fmt.Sprint(tok), fmt.Sprintf("%+v", &tok), fmt.Sprintf("%v", []*Token{&tok})} {
		if strings.Contains(s, "s3cr3t") || !strings.Contains(s, "gh/alice") {
			t.Fatalf("%q", s)
		}
	}
}

func TestErrorAnswers(t *testing.T) {
	long := strings.Repeat("x", 5000)
	for _, tc := range []struct {
		name        string
		status      int
		contentType string
		body        string
		code        string
		message     string // prefix
		reauth      bool
	}{
		{"needs_reauth", 409, "application/json", `{"error":"needs_reauth","message":"the user revoked the grant"}`, "needs_reauth", "the user revoked the grant", true},
		{"another 409", 409, "application/json", `{"error":"conflict","message":"x"}`, "conflict", "x", false},
		{"not found", 404, "application/json", `{"error":"not_found","message":"no connection gh/alice; authorize it first"}`, "not_found", "no connection", false},
		{"API Gateway's own 403", 403, "application/json", `{"message":"Forbidden"}`, "http_403", "Forbidden", false},
		{"API Gateway's Message", 403, "application/json", `{"Message":"User is not authorized"}`, "http_403", "User is not authorized", false},
		{"an HTML page", 502, "text/html", "<html>\r\n<head><title>502 Bad Gateway</title></head>\n\t<body>" + long + "</body></html>", "http_502", "<html> <head><title>502 Bad Gateway</title></head> <body>xxx", false},
		{"an empty body", 500, "", "", "http_500", "Internal Server Error", false},
		{"a hostile code", 400, "application/json", `{"error":"needs_reauth\u0000 or else","message":"m"}`, "http_400", "m", false},
		{"control characters and invalid UTF-8", 503, "text/plain", "busy\x00\x1b[31m\xff now", "http_503", "busy [31m now", false},
		{"a long JSON message", 500, "application/json", `{"error":"internal","message":"` + long + `"}`, "internal", "xxxx", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeBroker(t, func(_ int64, w http.ResponseWriter) {
				if tc.contentType != "" {
					w.Header().Set("Content-Type", tc.contentType)
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			})
			_, err := newTestClient(t, f.URL).Token(context.Background(), "gh", "alice", 0)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%T %v, want *Error", err, err)
			}
			if e.Status != tc.status || e.Code != tc.code || !strings.HasPrefix(e.Message, tc.message) || len(e.Message) > 300 {
				t.Fatalf("%+v (%d bytes of message)", e, len(e.Message))
			}
			if errors.Is(err, ErrNeedsReauth) != tc.reauth {
				t.Fatalf("errors.Is(ErrNeedsReauth) = %v", !tc.reauth)
			}
			if want := "tokenbroker: " + tc.code + ": " + e.Message; err.Error() != want {
				t.Fatalf("Error() = %q, want %q", err.Error(), want)
			}
		})
	}
}

func TestTokenSourceRetries503(t *testing.T) {
	for _, tc := range []struct {
		name      string
		failures  int // 503s before success
		status    int // of the failures
		requests  int64
		succeeded bool
	}{
		{"no failure", 0, 503, 1, true},
		{"two 503s", 2, 503, 3, true},
		{"three 503s", 3, 503, 4, true},
		{"four 503s: gives up", 4, 503, 4, false},
		{"502 is not retried", 2, 502, 1, false},
		{"504 is not retried", 2, 504, 1, false},
		{"409 is not retried", 2, 409, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeBroker(t, func(n int64, w http.ResponseWriter) {
				if n <= int64(tc.failures) {
					writeError(w, tc.status, "provider_unavailable", "the provider failed")
					return
				}
				writeToken(w, "fresh", time.Now().Add(time.Hour))
			})
			tok, err := newTestClient(t, f.URL).TokenSource(context.Background(), "gh", "alice", time.Minute).Token()
			if got := f.requests.Load(); got != tc.requests {
				t.Fatalf("%d requests, want %d", got, tc.requests)
			}
			if tc.succeeded != (err == nil) {
				t.Fatalf("err %v", err)
			}
			var e *Error
			if !tc.succeeded && (!errors.As(err, &e) || e.Status != tc.status) {
				t.Fatalf("err %v, want the last *Error %d", err, tc.status)
			}
			if tc.succeeded && tok.AccessToken != "fresh" {
				t.Fatalf("token %q", tok.AccessToken)
			}
		})
	}
}

// cancelAfterFirst cancels a context once the first answer has come back.
type cancelAfterFirst struct {
	cancel context.CancelFunc
	once   sync.Once
}

func (c *cancelAfterFirst) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	c.once.Do(c.cancel)
	return resp, err
}

func TestTokenSourceRetryHonoursTheContext(t *testing.T) {
	f := newFakeBroker(t, func(_ int64, w http.ResponseWriter) { writeError(w, 503, "provider_unavailable", "down") })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := New(f.URL, WithCredentials(testCreds), WithRegion("us-east-1"), WithHTTPClient(&http.Client{Transport: &cancelAfterFirst{cancel: cancel}}))
	if err != nil {
		t.Fatal(err)
	}
	c.retry = retryPolicy{attempts: 4, base: time.Hour, max: time.Hour} // only the context can end the wait
	_, err = c.TokenSource(ctx, "gh", "alice", 0).Token()
	var e *Error
	if !errors.Is(err, context.Canceled) || !errors.As(err, &e) || e.Status != 503 {
		t.Fatalf("err %v, want the 503 and context.Canceled", err)
	}
	if n := f.requests.Load(); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestRetryWaitsAreBoundedAndJittered(t *testing.T) {
	p := defaultRetry
	seen := map[time.Duration]bool{}
	for retry := 1; retry < 64; retry++ {
		for i := 0; i < 50; i++ {
			d := min(p.base<<min(retry-1, 20), p.max)
			w := p.wait(retry)
			if w < d/2 || w > d {
				t.Fatalf("retry %d waited %v, want within [%v, %v]", retry, w, d/2, d)
			}
			seen[w] = true
		}
	}
	if len(seen) < 10 {
		t.Fatalf("only %d distinct waits: no jitter", len(seen))
	}
}

func TestTokenSourceNeverCachesErrors(t *testing.T) {
	f := newFakeBroker(t, func(n int64, w http.ResponseWriter) {
		switch n {
		case 1:
			writeError(w, 500, "internal", "boom")
		case 2:
			writeError(w, 409, "needs_reauth", "authorize again")
		default:
			writeToken(w, "good", time.Now().Add(time.Hour))
		}
	})
	ts := newTestClient(t, f.URL).TokenSource(context.Background(), "gh", "alice", time.Minute)
	if _, err := ts.Token(); err == nil {
		t.Fatal("first: no error")
	}
	if _, err := ts.Token(); !errors.Is(err, ErrNeedsReauth) {
		t.Fatalf("second: %v", err)
	}
	for i := 0; i < 3; i++ {
		if tok, err := ts.Token(); err != nil || tok.AccessToken != "good" {
			t.Fatalf("third: %v %v", tok, err)
		}
	}
	if n := f.requests.Load(); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
}

func TestTokenSourceCachesUntilMinTTLRemains(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	var clock atomic.Pointer[time.Time]
	clock.Store(&now)
	advance := func(d time.Duration) { t := clock.Load().Add(d); clock.Store(&t) }
	for _, tc := range []struct {
		name    string
		life    time.Duration // of each token the broker hands out
		minTTL  time.Duration
		steps   []time.Duration // clock advances, a Token call after each
		fetches int64
	}{
		{"fresh for life − minTTL", time.Hour, 5 * time.Minute, []time.Duration{0, 30 * time.Minute, 25 * time.Minute}, 1},
		{"the boundary instant is still fresh", time.Hour, 5 * time.Minute, []time.Duration{0, 55 * time.Minute}, 1},
		{"one nanosecond past it is not", time.Hour, 5 * time.Minute, []time.Duration{0, 55*time.Minute + 1}, 2},
		{"every stale point fetches once", time.Hour, 5 * time.Minute, []time.Duration{0, 56 * time.Minute, 56 * time.Minute, 56 * time.Minute}, 4},
		{"minTTL zero: until it expires", time.Hour, 0, []time.Duration{0, time.Hour, 1}, 2},
		{"never expires", 0, time.Hour, []time.Duration{0, 1000 * time.Hour, 1000 * time.Hour}, 1},
		{"shorter than minTTL: half its life", 90 * time.Second, 10 * time.Minute, []time.Duration{0, 45 * time.Second, 1, 10 * time.Second}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock.Store(&now)
			f := newFakeBroker(t, func(n int64, w http.ResponseWriter) {
				var exp time.Time
				if tc.life > 0 {
					exp = clock.Load().Add(tc.life)
				}
				writeToken(w, fmt.Sprintf("T%d", n), exp)
			})
			c := newTestClient(t, f.URL)
			c.now = func() time.Time { return *clock.Load() }
			ts := c.TokenSource(context.Background(), "gh", "alice", tc.minTTL)
			for _, step := range tc.steps {
				advance(step)
				tok, err := ts.Token()
				if err != nil {
					t.Fatal(err)
				}
				if want := fmt.Sprintf("T%d", f.requests.Load()); tok.AccessToken != want {
					t.Fatalf("got %s, want the latest %s", tok.AccessToken, want)
				}
			}
			if got := f.requests.Load(); got != tc.fetches {
				t.Fatalf("%d broker requests, want %d", got, tc.fetches)
			}
		})
	}
}

// TestExpiryAgreesWithOAuth2 checks the token's Expiry against x/oauth2's
// own validity (Valid, with its 10 s early expiry, on the real clock): a
// token this source would replace is never still valid to x/oauth2, and
// from minTTL ≥ 10 s on the two switch over at the same instant.
func TestExpiryAgreesWithOAuth2(t *testing.T) {
	const margin = 2 * time.Second // keeps the test off the instant itself
	for _, minTTL := range []time.Duration{0, 5 * time.Second, 10 * time.Second, 30 * time.Second, 5 * time.Minute, 2 * time.Hour} {
		for _, staleIn := range []time.Duration{-margin, margin} {
			t.Run(fmt.Sprintf("minTTL %v, stale in %v", minTTL, staleIn), func(t *testing.T) {
				now := time.Now()
				// A token long-lived enough that minTTL applies, stale at now+staleIn.
				expiresAt := now.Add(staleIn + minTTL)
				ct := newCachedToken(&Token{AccessToken: "A", ExpiresAt: expiresAt}, minTTL, now.Add(-24*time.Hour))
				ours := ct.fresh(time.Now())
				theirs := ct.copy().Valid()
				if ours != (staleIn > 0) {
					t.Fatalf("fresh = %v", ours)
				}
				if theirs && !ours {
					t.Fatal("x/oauth2 still uses a token this source would replace")
				}
				if minTTL >= oauth2ExpiryDelta && theirs != ours {
					t.Fatalf("x/oauth2 says valid=%v, the source fresh=%v", theirs, ours)
				}
				tok := ct.copy()
				if tok.Expiry.After(expiresAt) || tok.Extra("expires_at") != expiresAt.UTC().Format(time.RFC3339) {
					t.Fatalf("Expiry %v after the real expiry %v, or extra %v", tok.Expiry, expiresAt, tok.Extra("expires_at"))
				}
			})
		}
	}
}

// TestOAuth2ClientFollowsTheSource runs oauth2.NewClient over the source
// with tokens that go stale 1.5 s after they arrive: the client must come
// back to the source (and the source to the broker) right then, although
// the token itself is still good for minTTL more, and not before.
func TestOAuth2ClientFollowsTheSource(t *testing.T) {
	const minTTL = 30 * time.Second
	f := newFakeBroker(t, func(n int64, w http.ResponseWriter) {
		writeToken(w, fmt.Sprintf("T%d", n), time.Now().Add(minTTL+1500*time.Millisecond))
	})
	var mu sync.Mutex
	var seen []string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
	}))
	defer api.Close()
	hc := oauth2.NewClient(context.Background(), newTestClient(t, f.URL).TokenSource(context.Background(), "gh", "alice", minTTL))
	get := func() {
		resp, err := hc.Get(api.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	get()
	get()
	if n := f.requests.Load(); n != 1 {
		t.Fatalf("%d broker requests for two calls with a fresh token, want 1", n)
	}
	time.Sleep(2 * time.Second) // past the stale point, 28 s before the real expiry
	get()
	if n := f.requests.Load(); n != 2 {
		t.Fatalf("%d broker requests after the token went stale, want 2", n)
	}
	want := []string{"Bearer T1", "Bearer T1", "Bearer T2"}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("the API saw %v, want %v", seen, want)
	}
}

// TestOAuth2EarlyExpiryCostsNoRequest: with minTTL under x/oauth2's 10 s,
// x/oauth2 gives up on a token before this source does; it then asks the
// source, which answers from its cache.
func TestOAuth2EarlyExpiryCostsNoRequest(t *testing.T) {
	f := newFakeBroker(t, func(n int64, w http.ResponseWriter) {
		writeToken(w, fmt.Sprintf("T%d", n), time.Now().Add(5*time.Second))
	})
	ts := newTestClient(t, f.URL).TokenSource(context.Background(), "gh", "alice", 0)
	reuse := oauth2.ReuseTokenSource(nil, ts)
	for i := 0; i < 3; i++ {
		tok, err := reuse.Token()
		if err != nil || tok.AccessToken != "T1" {
			t.Fatalf("%v %v", tok, err)
		}
	}
	if n := f.requests.Load(); n != 1 {
		t.Fatalf("%d broker requests, want 1", n)
	}
}

func TestReturnedTokensAreCopies(t *testing.T) {
	f := newFakeBroker(t, func(_ int64, w http.ResponseWriter) { writeToken(w, "T", time.Now().Add(time.Hour)) })
	ts := newTestClient(t, f.URL).TokenSource(context.Background(), "gh", "alice", time.Minute)
	a, _ := ts.Token()
	a.AccessToken = "changed by a caller"
	b, err := ts.Token()
	if err != nil || b.AccessToken != "T" || b.Extra("openid") != "o-1" || b.Extra("scope") != "repo" || b.Type() != "Bearer" {
		t.Fatalf("%+v %v", b, err)
	}
	// Two oauth2 clients over one source write to the tokens they get; -race checks they do not share one.
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		reuse := oauth2.ReuseTokenSource(nil, ts)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				if tok, err := reuse.Token(); err != nil || !tok.Valid() {
					t.Error(tok, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
