package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/shared/client"
	"github.com/tokenbroker/tokenbroker/shared/local/devfront"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/localapi"
)

// countingTransport counts the requests a client sends to the broker.
type countingTransport struct{ n atomic.Int64 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

// tokenSourceFunc adapts a function to oauth2.TokenSource.
type tokenSourceFunc func() (*oauth2.Token, error)

func (f tokenSourceFunc) Token() (*oauth2.Token, error) { return f() }

// benchClient: the Go client in one backend process. Many goroutines call
// Token on one source during one token lifetime; the broker must see
// exactly one request. Next to it, what a team would write with
// x/oauth2 alone over one broker call, and no cache at all.
func benchClient(ctx context.Context, e *benchEnv, rep *report, quick bool) error {
	api, err := localapi.Start(ctx, localapi.Options{Root: e.root, Bootstraps: e.bootstraps})
	if err != nil {
		return err
	}
	defer api.Close()
	const goroutines = 100
	const minTTL = 5 * time.Minute
	calls, uncachedCalls, runs, uncachedRuns := 1000, 10, 11, 3
	if quick {
		calls, runs, uncachedRuns = 100, 1, 1
	}
	newClient := func() (*client.Client, *countingTransport, error) {
		counter := &countingTransport{}
		creds := devfront.DefaultCredentials
		c, err := client.New(api.URL, client.WithRegion(devfront.DefaultRegion),
			client.WithCredentials(credentials.NewStaticCredentialsProvider(creds.AccessKeyID, creds.SecretAccessKey, "")),
			client.WithHTTPClient(&http.Client{Transport: counter, Timeout: time.Minute}))
		return c, counter, err
	}
	// The broker fetches WeChat's token first, so that the rows measure
	// the client and one warm broker answer, not the provider call.
	warm, _, err := newClient()
	if err != nil {
		return err
	}
	if _, err := warm.Token(ctx, devstack.WeChatMP, "app", minTTL); err != nil {
		return err
	}
	type row struct {
		name    string
		calls   int
		source  func(*client.Client) oauth2.TokenSource
		perCall bool // one broker request per call is the expected count
	}
	rows := []row{
		{"tokenbroker client `TokenSource`, called directly", calls, func(c *client.Client) oauth2.TokenSource {
			return c.TokenSource(ctx, devstack.WeChatMP, "app", minTTL)
		}, false},
		{"`TokenSource` inside x/oauth2's `ReuseTokenSource` (what `oauth2.NewClient` builds)", calls, func(c *client.Client) oauth2.TokenSource {
			return oauth2.ReuseTokenSource(nil, c.TokenSource(ctx, devstack.WeChatMP, "app", minTTL))
		}, false},
		{"x/oauth2 `ReuseTokenSource` over `client.Token`, no `TokenSource`", calls, func(c *client.Client) oauth2.TokenSource {
			return oauth2.ReuseTokenSource(nil, tokenSourceFunc(func() (*oauth2.Token, error) {
				t, err := c.Token(ctx, devstack.WeChatMP, "app", minTTL)
				if err != nil {
					return nil, err
				}
				return &oauth2.Token{AccessToken: t.AccessToken, TokenType: t.TokenType, Expiry: t.ExpiresAt}, nil
			}))
		}, false},
		{"`client.Token` on every call (no cache)", uncachedCalls, func(c *client.Client) oauth2.TokenSource {
			return tokenSourceFunc(func() (*oauth2.Token, error) {
				t, err := c.Token(ctx, devstack.WeChatMP, "app", minTTL)
				if err != nil {
					return nil, err
				}
				return &oauth2.Token{AccessToken: t.AccessToken}, nil
			})
		}, true},
	}
	// Rounds interleave the rows, so that a noisy moment of this shared
	// machine does not land on one row only.
	nsPerCall := make([][]float64, len(rows))
	requests := make([]int64, len(rows))
	for round := 0; round < runs; round++ {
		for i, r := range rows {
			if r.perCall && round >= uncachedRuns {
				continue
			}
			c, counter, err := newClient()
			if err != nil {
				return err
			}
			elapsed, err := hammer(r.source(c), goroutines, r.calls)
			if err != nil {
				return fmt.Errorf("%s: %w", r.name, err)
			}
			want := int64(1)
			if r.perCall {
				want = int64(goroutines * r.calls)
			}
			if got := counter.n.Load(); got != want {
				return fmt.Errorf("%s: %d broker requests for %d×%d calls, want %d", r.name, got, goroutines, r.calls, want)
			}
			requests[i] = counter.n.Load()
			nsPerCall[i] = append(nsPerCall[i], float64(elapsed.Nanoseconds())/float64(goroutines*r.calls))
		}
	}
	var lines []string
	for i, r := range rows {
		lines = append(lines, fmt.Sprintf("| %s | %d × %d | %d | %s |", r.name, goroutines, r.calls, requests[i], nsOrMs(median(nsPerCall[i]))))
	}
	rep.addSub("In one backend process: the Go client", fmt.Sprintf(`
One process, %d goroutines calling `+"`Token()`"+` on one token source during
one token lifetime (WeChat's global token, 2 h; minTTL %v), against the real
token function behind the local API Gateway stand-in, which verifies SigV4.
Broker requests are counted by the client's `+"`http.RoundTripper`"+` and checked
exactly. Time per call is the wall time of all calls over their number,
the one broker request included: median of %d interleaved rounds (%d for
the uncached row), a fresh source each. Measured %s.

| approach | goroutines × calls | broker requests per token lifetime | time per `+"`Token()`"+` call |
|---|---|---|---|
%s

Every cached row asks the broker once. Called directly, `+"`TokenSource`"+` hands
each caller its own copy of the token (x/oauth2 writes to the tokens it is
given, so one shared token would be a data race), and that small
allocation per call is most of its time here; inside x/oauth2's
`+"`ReuseTokenSource`"+`, as `+"`oauth2.NewClient`"+` uses it, x/oauth2's own cache answers and
the source is asked once per token lifetime. x/oauth2 alone over
`+"`client.Token`"+` is as fast, but it holds its mutex across the fetch (after a
failed fetch every caller that waited tries again in turn, where
`+"`TokenSource`"+` shares the one answer), and keeps a token until 10 s before
its expiry whatever minTTL was asked. Without a cache every call is a
signed round trip through API Gateway, Lambda and DynamoDB.
`, goroutines, minTTL, runs, uncachedRuns, time.Now().UTC().Format("2006-01-02 15:04 UTC"), strings.Join(lines, "\n")))
	return nil
}

// hammer runs goroutines × calls Token calls at once and returns the
// wall time from the start signal to the last answer.
func hammer(ts oauth2.TokenSource, goroutines, calls int) (time.Duration, error) {
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	start := make(chan struct{})
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for range calls {
				if _, err := ts.Token(); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)
	if err := firstErr.Load(); err != nil {
		return 0, *err
	}
	return elapsed, nil
}

// nsOrMs prints nanoseconds as ns below a microsecond, else as ms.
func nsOrMs(ns float64) string {
	if ns < 1000 {
		return fmt.Sprintf("%.0f ns", ns)
	}
	return fmt.Sprintf("%.3f ms", ns/1e6)
}
