package client

// The healing client's edges a real broker cannot be steered into on
// demand: exact Retry-After answers, exact request bodies, a refresh slow
// enough that every caller's rejection overlaps it.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestWeChatRejected(t *testing.T) {
	big := `{"errcode":40001,"errmsg":"` + strings.Repeat("x", wechatPeek) + `"}`
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   bool
	}{
		{"invalid credential", 200, `{"errcode":40001,"errmsg":"invalid credential"}`, true},
		{"malformed token", 200, `{"errcode":40014,"errmsg":"invalid access_token"}`, true},
		{"expired token", 200, `{"errcode":42001,"errmsg":"access_token expired"}`, true},
		{"success", 200, `{"errcode":0,"errmsg":"ok","openid":"o-1"}`, false},
		{"an answer without errcode", 200, `{"openid":"o-1"}`, false},
		{"another error", 200, `{"errcode":45009,"errmsg":"reach max api daily quota limit"}`, false},
		{"not 200", 500, `{"errcode":40001}`, false},
		{"not JSON", 200, `<html>40001</html>`, false},
		{"a body too long to be an error", 200, big, false},
		{"empty", 200, ``, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: tc.status, Body: io.NopCloser(strings.NewReader(tc.body))}
			if got := WeChatRejected(resp); got != tc.want {
				t.Fatalf("WeChatRejected = %v, want %v", got, tc.want)
			}
			rest, err := io.ReadAll(resp.Body)
			if err != nil || string(rest) != tc.body {
				t.Fatalf("the body is not readable as it was (%d of %d bytes)", len(rest), len(tc.body))
			}
			if err := resp.Body.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
	if WeChatRejected(nil) {
		t.Fatal("nil response")
	}
}

// fakeRoutes is a broker that answers the token and refresh routes from
// functions and records what it received.
type fakeRoutes struct {
	*httptest.Server
	tokens, refreshes atomic.Int64
	mu                sync.Mutex
	bodies            []string
	arrivals          []time.Time
}

func newFakeRoutes(t *testing.T, token, refresh func(n int64, body []byte, w http.ResponseWriter)) *fakeRoutes {
	t.Helper()
	f := &fakeRoutes{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.arrivals = append(f.arrivals, time.Now())
		f.mu.Unlock()
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/connections/gh/alice/token":
			token(f.tokens.Add(1), body, w)
		case r.Method == http.MethodPost && r.URL.Path == "/connections/gh/alice/refresh":
			f.mu.Lock()
			f.bodies = append(f.bodies, string(body)+"|"+r.Header.Get("Content-Type"))
			f.mu.Unlock()
			refresh(f.refreshes.Add(1), body, w)
		default:
			http.Error(w, "unexpected", http.StatusTeapot)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func TestRefreshSendsTheRejectedTokenOnly(t *testing.T) {
	f := newFakeRoutes(t, nil, func(_ int64, _ []byte, w http.ResponseWriter) { writeToken(w, "new", time.Now().Add(time.Hour)) })
	c := newTestClient(t, f.URL)
	for _, rejected := range []string{"", "the-rejected-token"} {
		tok, err := c.Refresh(context.Background(), "gh", "alice", rejected)
		if err != nil || tok.AccessToken != "new" {
			t.Fatalf("%v %v", tok, err)
		}
	}
	want := []string{"|", `{"rejected_token":"the-rejected-token"}|application/json`}
	if strings.Join(f.bodies, "\n") != strings.Join(want, "\n") {
		t.Fatalf("bodies %q, want %q", f.bodies, want)
	}
}

func TestRefreshErrorsNeverCarryTheToken(t *testing.T) {
	f := newFakeRoutes(t, nil, func(_ int64, body []byte, w http.ResponseWriter) {
		writeError(w, http.StatusConflict, "needs_reauth", "the provider refused the grant")
	})
	c := newTestClient(t, f.URL)
	_, err := c.Refresh(context.Background(), "gh", "alice", "secret-token-value")
	if !errors.Is(err, ErrNeedsReauth) || strings.Contains(err.Error(), "secret-token-value") {
		t.Fatalf("%v", err)
	}
}

func TestRetryAfterIsWaitedOut(t *testing.T) {
	answer := func(n int64, _ []byte, w http.ResponseWriter) {
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, "provider_unavailable", "retried at …")
			return
		}
		writeToken(w, "after-the-wait", time.Now().Add(time.Hour))
	}
	for _, tc := range []struct {
		name string
		call func(c *Client) (string, error)
	}{
		{"TokenSource", func(c *Client) (string, error) {
			tok, err := c.TokenSource(context.Background(), "gh", "alice", 0).Token()
			if err != nil {
				return "", err
			}
			return tok.AccessToken, nil
		}},
		{"Refresh", func(c *Client) (string, error) {
			tok, err := c.Refresh(context.Background(), "gh", "alice", "old")
			if err != nil {
				return "", err
			}
			return tok.AccessToken, nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRoutes(t, answer, answer)
			// The policy's own backoff is a millisecond: only Retry-After
			// can make the client wait a second.
			got, err := tc.call(newTestClient(t, f.URL))
			if err != nil || got != "after-the-wait" {
				t.Fatalf("%q %v", got, err)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.arrivals) != 2 {
				t.Fatalf("%d requests, want 2", len(f.arrivals))
			}
			if gap := f.arrivals[1].Sub(f.arrivals[0]); gap < time.Second {
				t.Fatalf("retried after %v, before the Retry-After of 1 s", gap)
			}
		})
	}
	t.Run("a Retry-After longer than the policy waits is returned at once", func(t *testing.T) {
		f := newFakeRoutes(t, func(_ int64, _ []byte, w http.ResponseWriter) {
			w.Header().Set("Retry-After", "90")
			writeError(w, http.StatusServiceUnavailable, "provider_unavailable", "quota")
		}, nil)
		c := newTestClient(t, f.URL)
		_, err := c.TokenSource(context.Background(), "gh", "alice", 0).Token()
		var e *Error
		if !errors.As(err, &e) || e.Status != 503 || e.RetryAfter != 90*time.Second {
			t.Fatalf("%v, want the 503 with RetryAfter 90s", err)
		}
		if n := f.tokens.Load(); n != 1 {
			t.Fatalf("%d requests, want 1", n)
		}
	})
}

func TestRetryAfterParsing(t *testing.T) {
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		header string
		want   time.Duration
	}{
		{"", 0}, {"0", 0}, {"-3", 0}, {"7", 7 * time.Second}, {" 2 ", 2 * time.Second},
		{"99999999999", maxRetryAfter}, {"soon", 0},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
	} {
		if got := retryAfter(tc.header, now); got != tc.want {
			t.Errorf("Retry-After %q = %v, want %v", tc.header, got, tc.want)
		}
	}
}

// TestConcurrentRejectionsShareOneRefresh: 100 callers whose requests are
// all rejected while the one refresh is still in flight make exactly one
// refresh, and all get through on the replay.
func TestConcurrentRejectionsShareOneRefresh(t *testing.T) {
	const callers = 100
	release := make(chan struct{})
	f := newFakeRoutes(t,
		func(_ int64, _ []byte, w http.ResponseWriter) { writeToken(w, "t1", time.Now().Add(time.Hour)) },
		func(_ int64, body []byte, w http.ResponseWriter) {
			<-release // every caller's rejection arrives while this refresh is out
			var in struct {
				RejectedToken string `json:"rejected_token"`
			}
			if json.Unmarshal(body, &in) != nil || in.RejectedToken != "t1" {
				writeError(w, 400, "bad_request", "want rejected_token t1")
				return
			}
			writeToken(w, "t2", time.Now().Add(time.Hour))
		})
	var rejectedSeen atomic.Int64
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer t2" {
			if rejectedSeen.Add(1) == callers {
				close(release)
			}
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		body, _ := io.ReadAll(r.Body)
		_, _ = w.Write(body)
	}))
	defer api.Close()
	c := newTestClient(t, f.URL)
	hc := c.HTTPClient(context.Background(), "gh", "alice", time.Minute)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := []byte{byte('a' + i%26)}
			resp, err := hc.Post(api.URL, "text/plain", bytes.NewReader(payload))
			if err != nil {
				t.Error(err)
				return
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !bytes.Equal(got, payload) {
				t.Errorf("answered %d %q", resp.StatusCode, got)
			}
		}()
	}
	wg.Wait()
	if f.tokens.Load() != 1 || f.refreshes.Load() != 1 {
		t.Fatalf("%d token requests and %d refreshes, want 1 and 1", f.tokens.Load(), f.refreshes.Load())
	}
	// Later requests use the healed token without asking the broker.
	resp, err := hc.Get(api.URL)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v", err)
	}
	resp.Body.Close()
	if f.tokens.Load()+f.refreshes.Load() != 2 {
		t.Fatal("the healed token was not cached")
	}
}

func TestQueryTokenReplacesOnlyItsParameter(t *testing.T) {
	f := newFakeRoutes(t, func(_ int64, _ []byte, w http.ResponseWriter) { writeToken(w, "tok en", time.Now().Add(time.Hour)) }, nil)
	var seen string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.URL.RawQuery + "|" + r.Header.Get("Authorization")
	}))
	defer api.Close()
	hc := newTestClient(t, f.URL).HTTPClient(context.Background(), "gh", "alice", 0, WithQueryToken("access_token"))
	resp, err := hc.Get(api.URL + "/cgi-bin/user/info?openid=o-1&access_token=stale")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if seen != "access_token=tok+en&openid=o-1|" {
		t.Fatalf("sent %q", seen)
	}
}

// A caller that loaded the rejected token from the cache just before the
// leader's heal stored the new one, and reaches the flight group just
// after that flight ended, must not send a second Refresh: the new flight
// finds the first one's answer still cached. The pause is injected through
// the clock, right after the load in heal's first check (the interleaving
// a preemption gives). Kept from a review.
func TestLateHealerAfterAFlightEndedDoesNotRefreshAgain(t *testing.T) {
	f := newFakeRoutes(t,
		func(_ int64, _ []byte, w http.ResponseWriter) { writeToken(w, "t1", time.Now().Add(time.Hour)) },
		func(n int64, _ []byte, w http.ResponseWriter) { writeToken(w, "t2", time.Now().Add(time.Hour)) })
	c := newTestClient(t, f.URL)
	var armed atomic.Bool
	atCheck, resume := make(chan struct{}), make(chan struct{})
	c.now = func() time.Time {
		if armed.CompareAndSwap(true, false) {
			close(atCheck)
			<-resume
		}
		return time.Now()
	}
	s := c.TokenSource(t.Context(), "gh", "alice", time.Minute).(*tokenSource)
	if _, err := s.Token(); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	done := make(chan *cachedToken)
	go func() { // B: its request with t1 came back 401
		tok, err := s.heal("t1")
		if err != nil {
			t.Error(err)
		}
		done <- tok
	}()
	<-atCheck                                                                  // B has loaded t1 from the cache
	if tok, err := s.heal("t1"); err != nil || tok.token.AccessToken != "t2" { // A heals, flight ends
		t.Fatalf("A: %v %v", tok, err)
	}
	if got := s.cached.Load().token.AccessToken; got != "t2" {
		t.Fatalf("cache %q after A", got)
	}
	close(resume)
	<-done
	if n := f.refreshes.Load(); n != 1 {
		t.Fatalf("%d Refresh requests for one rejected token, want 1", n)
	}
}
