package client_test

// The client against the real functions: their bootstraps under the
// Runtime API runner, behind make dev's API Gateway stand-in, which
// verifies SigV4 (shared/local/localapi).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/shared/client"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/localapi"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

// listingProvider holds only TestList250's connections.
const listingProvider = "listing"

var (
	api  *localapi.API
	logs = &syncBuffer{}
	// sessionUser is a second identity the front accepts: temporary
	// credentials, whose session token must be sent and signed.
	sessionUser = aws.Credentials{AccessKeyID: "ASIALOCALSESSION", SecretAccessKey: "session-secret", SessionToken: "the-session-token"}
)

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client tests:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	ctx := context.Background()
	var err error
	api, err = localapi.Start(ctx, localapi.Options{Output: logs,
		Credentials: []aws.Credentials{{AccessKeyID: "local", SecretAccessKey: "local"}, sessionUser}})
	if err != nil {
		return 0, err
	}
	defer api.Close()
	// TestList250's own provider, registered before any function loads
	// its configuration (they keep it for 5 minutes).
	if err := api.Stack.PutProvider(ctx, listingProvider, api.Stack.ProviderConfigs()[devstack.OAuth2], devstack.OAuth2Secret); err != nil {
		return 0, err
	}
	// The example runs as a backend would: the default credential chain
	// from the environment (and nothing from this machine's files), the
	// broker's URL from its configuration.
	if err := api.Connect(ctx, devstack.OAuth2, "example"); err != nil {
		return 0, err
	}
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_SESSION_TOKEN": "", "AWS_REGION": localaws.Region,
		"AWS_PROFILE": "", "AWS_CONFIG_FILE": os.DevNull, "AWS_SHARED_CREDENTIALS_FILE": os.DevNull, "AWS_EC2_METADATA_DISABLED": "true",
		"TOKENBROKER_URL": api.URL, "PROVIDER_API": api.Stack.EmulatorURLs["oauth2"],
	} {
		os.Setenv(k, v)
	}
	code := m.Run()
	if code != 0 {
		logs.mu.Lock()
		fmt.Fprintf(os.Stderr, "function logs:\n%s\n", logs.buf.String())
		logs.mu.Unlock()
	}
	return code, nil
}

// countingTransport counts the requests that leave the client.
type countingTransport struct {
	n atomic.Int64
	// before, when set, runs before each request is sent.
	before func()
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	if c.before != nil {
		c.before()
	}
	return http.DefaultTransport.RoundTrip(r)
}

// newClient returns a client signing as creds and counting its requests.
func newClient(t testing.TB, creds aws.Credentials, opts ...client.Option) (*client.Client, *countingTransport) {
	t.Helper()
	counter := &countingTransport{}
	opts = append([]client.Option{client.WithRegion(localaws.Region),
		client.WithCredentials(credentials.StaticCredentialsProvider{Value: creds}),
		client.WithHTTPClient(&http.Client{Transport: counter, Timeout: time.Minute})}, opts...)
	c, err := client.New(api.URL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c, counter
}

var local = aws.Credentials{AccessKeyID: "local", SecretAccessKey: "local"}

func expectRequests(t testing.TB, counter *countingTransport, want int64) {
	t.Helper()
	if got := counter.n.Load(); got != want {
		t.Fatalf("%d requests to the broker, want %d", got, want)
	}
}

func TestRealTokens(t *testing.T) {
	ctx := context.Background()
	if err := api.Connect(ctx, devstack.WeChatWeb, "real"); err != nil {
		t.Fatal(err)
	}
	if err := api.Connect(ctx, devstack.SinaCloud, "real"); err != nil {
		t.Fatal(err)
	}
	c, counter := newClient(t, local)
	for _, tc := range []struct {
		provider, connection string
		validAtProvider      func(string) bool
		extra                string
	}{
		{devstack.WeChatMP, "app", api.Stack.WeChat.ValidGlobal, ""},
		{devstack.WeChatWeb, "real", api.Stack.WeChat.ValidUserToken, "openid"},
		{devstack.SinaCloud, "real", api.Stack.Sina.ValidAccess, ""},
		{devstack.OAuth2, "example", api.Stack.OAuth2.ValidAccess, ""},
	} {
		t.Run(tc.provider, func(t *testing.T) {
			before := time.Now()
			tok, err := c.Token(ctx, tc.provider, tc.connection, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if tok.Provider != tc.provider || tok.Connection != tc.connection || tok.AccessToken == "" || tok.TokenType == "" {
				t.Fatalf("token %v", tok)
			}
			if !tc.validAtProvider(tok.AccessToken) {
				t.Fatal("the token does not work at the provider")
			}
			if !tok.ExpiresAt.After(before.Add(time.Minute)) {
				t.Fatalf("expires at %v, less than the minute asked for", tok.ExpiresAt)
			}
			if tc.extra != "" && tok.Extra[tc.extra] == "" {
				t.Fatalf("no %s in the extras %v", tc.extra, tok.Extra)
			}
		})
	}
	expectRequests(t, counter, 4)
}

func TestSessionTokensAreSentAndSigned(t *testing.T) {
	c, _ := newClient(t, sessionUser)
	if _, err := c.Token(context.Background(), devstack.WeChatMP, "app", 0); err != nil {
		t.Fatal(err)
	}
	withoutToken := sessionUser
	withoutToken.SessionToken = ""
	c, _ = newClient(t, withoutToken)
	_, err := c.Token(context.Background(), devstack.WeChatMP, "app", 0)
	var e *client.Error
	if !errors.As(err, &e) || e.Status != http.StatusForbidden || e.Code != "forbidden" {
		t.Fatalf("without the session token: %v", err)
	}
}

func TestBadSignaturesAre403(t *testing.T) {
	for _, tc := range []struct {
		name  string
		creds aws.Credentials
		opts  []client.Option
		about string
	}{
		{"wrong secret", aws.Credentials{AccessKeyID: "local", SecretAccessKey: "not-local"}, nil, "signature"},
		{"unknown key", aws.Credentials{AccessKeyID: "AKIDUNKNOWN", SecretAccessKey: "local"}, nil, "security token"},
		{"another region", local, []client.Option{client.WithRegion("eu-west-1")}, "region"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, counter := newClient(t, tc.creds, tc.opts...)
			_, err := c.Token(context.Background(), devstack.WeChatMP, "app", 0)
			var e *client.Error
			if !errors.As(err, &e) || e.Status != http.StatusForbidden || e.Code != "forbidden" || !strings.Contains(e.Message, tc.about) {
				t.Fatalf("%v, want *Error 403 forbidden about %q", err, tc.about)
			}
			if errors.Is(err, client.ErrNeedsReauth) || !strings.HasPrefix(err.Error(), "tokenbroker: forbidden: ") {
				t.Fatalf("Error() = %q", err)
			}
			// A refusal is not retried by TokenSource either.
			if _, err := c.TokenSource(context.Background(), devstack.WeChatMP, "app", 0).Token(); !errors.As(err, &e) || e.Status != 403 {
				t.Fatalf("TokenSource: %v", err)
			}
			expectRequests(t, counter, 2)
		})
	}
}

// expireSoon makes a connection's token look as if it expires in
// expiresIn (negative: expired), so that the broker refreshes it.
func expireSoon(t *testing.T, provider, conn string, expiresIn time.Duration) {
	t.Helper()
	if err := api.Stack.AgeConnection(context.Background(), "", provider, conn, expiresIn); err != nil {
		t.Fatal(err)
	}
}

func TestNeedsReauth(t *testing.T) {
	ctx := context.Background()
	const conn = "revoked"
	if err := api.Connect(ctx, devstack.SinaCloud, conn); err != nil {
		t.Fatal(err)
	}
	// The provider refuses the next refresh for good; the forced refresh
	// (of a connection old enough to be refreshed again) marks it
	// needs_reauth.
	expireSoon(t, devstack.SinaCloud, conn, time.Minute)
	api.Stack.Sina.Inject("/oauth2/access_token", emulator.OAuthError(http.StatusBadRequest, "invalid_grant", "refresh token revoked"), 1)
	resp, err := api.Do(ctx, "POST", "/connections/sinacloud/"+conn+"/refresh", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("forced refresh answered %d, want 409", resp.StatusCode)
	}
	c, counter := newClient(t, local)
	_, err = c.Token(ctx, devstack.SinaCloud, conn, 0)
	var e *client.Error
	if !errors.Is(err, client.ErrNeedsReauth) || !errors.As(err, &e) || e.Status != http.StatusConflict || e.Code != "needs_reauth" || e.Message == "" {
		t.Fatalf("%v, want needs_reauth", err)
	}
	if want := "tokenbroker: needs_reauth: " + e.Message; err.Error() != want {
		t.Fatalf("Error() = %q, want %q", err, want)
	}
	ts := c.TokenSource(ctx, devstack.SinaCloud, conn, time.Minute)
	for i := 0; i < 2; i++ {
		if _, err := ts.Token(); !errors.Is(err, client.ErrNeedsReauth) {
			t.Fatalf("TokenSource call %d: %v", i, err)
		}
	}
	// Not retried, not cached: one request per call.
	expectRequests(t, counter, 3)

	// Authorizing again restores it, and the same source recovers.
	if err := api.Connect(ctx, devstack.SinaCloud, conn); err != nil {
		t.Fatal(err)
	}
	tok, err := ts.Token()
	if err != nil || !api.Stack.Sina.ValidAccess(tok.AccessToken) {
		t.Fatalf("after re-authorizing: %v", err)
	}
	expectRequests(t, counter, 4)
}

func TestRetriesTheBrokers503s(t *testing.T) {
	ctx := context.Background()
	const conn = "flaky"
	if err := api.Connect(ctx, devstack.OAuth2, conn); err != nil {
		t.Fatal(err)
	}
	// The stored token has expired and, before each request, the broker's
	// backoff after a failure is made to have passed (the test ages the
	// connection), so every request makes the broker ask the provider and
	// each fault injected there is one 503 from the broker.
	const minTTL = time.Minute
	for _, tc := range []struct {
		name     string
		faults   int
		requests int64
		ok       bool
	}{
		{"two 503s, then a token", 2, 3, true},
		{"three 503s, then a token", 3, 4, true},
		{"four 503s: gives up", 4, 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, counter := newClient(t, local)
			counter.before = func() { expireSoon(t, devstack.OAuth2, conn, -time.Minute) }
			calls := api.Stack.OAuth2.Calls("/token")
			api.Stack.OAuth2.Inject("/token", emulator.HTMLError(http.StatusBadGateway), tc.faults)
			tok, err := c.TokenSource(ctx, devstack.OAuth2, conn, minTTL).Token()
			expectRequests(t, counter, tc.requests)
			if got := api.Stack.OAuth2.Calls("/token") - calls; got != int(tc.requests) {
				t.Fatalf("%d provider calls, want %d", got, tc.requests)
			}
			if !tc.ok {
				var e *client.Error
				if !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable || e.Code != "provider_unavailable" {
					t.Fatalf("%v, want the last 503", err)
				}
				return
			}
			if err != nil || !api.Stack.OAuth2.ValidAccess(tok.AccessToken) {
				t.Fatalf("%v", err)
			}
		})
	}
}

func TestBrokerErrorsAreNeverCached(t *testing.T) {
	ctx := context.Background()
	const conn = "recovering"
	if err := api.Connect(ctx, devstack.OAuth2, conn); err != nil {
		t.Fatal(err)
	}
	c, counter := newClient(t, local)
	ts := c.TokenSource(ctx, devstack.OAuth2, conn, time.Minute)
	// Each request finds the token expired and the broker's backoff over.
	counter.before = func() { expireSoon(t, devstack.OAuth2, conn, -time.Minute) }
	// Five faults: the first call spends four (its retries) and fails; the
	// next spends the fifth, retries, and gets a token.
	api.Stack.OAuth2.Inject("/token", emulator.HTMLError(http.StatusBadGateway), 5)
	if _, err := ts.Token(); err == nil {
		t.Fatal("no error while the provider fails")
	}
	expectRequests(t, counter, 4)
	tok, err := ts.Token()
	if err != nil || !api.Stack.OAuth2.ValidAccess(tok.AccessToken) {
		t.Fatalf("after the faults: %v", err)
	}
	expectRequests(t, counter, 6)
	// An unknown connection is 404, every time it is asked.
	missing := c.TokenSource(ctx, devstack.OAuth2, "nobody", 0)
	for i := 0; i < 2; i++ {
		var e *client.Error
		if _, err := missing.Token(); !errors.As(err, &e) || e.Status != http.StatusNotFound || e.Code != "not_found" {
			t.Fatalf("unknown connection: %v", err)
		}
	}
	expectRequests(t, counter, 8)
}

func TestTokenSourceSingleFlight(t *testing.T) {
	const callers = 64
	c, counter := newClient(t, local)
	ts := c.TokenSource(context.Background(), devstack.WeChatMP, "app", 5*time.Minute)
	tokens := make([]string, callers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			tok, err := ts.Token()
			if err != nil {
				t.Error(err)
				return
			}
			tokens[i] = tok.AccessToken
		}()
	}
	close(start)
	wg.Wait()
	expectRequests(t, counter, 1)
	for i, tok := range tokens {
		if tok != tokens[0] {
			t.Fatalf("caller %d got another token", i)
		}
	}
	if !api.Stack.WeChat.ValidGlobal(tokens[0]) {
		t.Fatal("the shared token does not work at WeChat")
	}
}

func TestOAuth2NewClientCallsAProviderAPI(t *testing.T) {
	ctx := context.Background()
	c, counter := newClient(t, local)
	hc := oauth2.NewClient(ctx, c.TokenSource(ctx, devstack.OAuth2, "example", 5*time.Minute))
	for i := 0; i < 3; i++ {
		resp, err := hc.Get(api.Stack.EmulatorURLs["oauth2"] + "/userinfo")
		if err != nil {
			t.Fatal(err)
		}
		var user struct{ Sub string }
		err = json.NewDecoder(resp.Body).Decode(&user)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil || user.Sub != "emulated-user" {
			t.Fatalf("userinfo answered %d %+v %v", resp.StatusCode, user, err)
		}
	}
	expectRequests(t, counter, 1)
}

// TestFunctionsDoNotImportTheClient keeps the Lambda binaries small: the
// client and the SDK's config module (credential chain, SSO, STS) are for
// backends, not for the broker's own functions.
func TestFunctionsDoNotImportTheClient(t *testing.T) {
	root, err := localaws.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	// As make build compiles them for Lambda, and as tests compile them here.
	for _, env := range [][]string{{"GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0"}, nil} {
		cmd := exec.Command("go", "list", "-deps", "-tags", "lambda.norpc", "./functions/...")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list: %v", err)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 50 || !strings.Contains(string(out), "github.com/aws/aws-lambda-go/lambda\n") {
			t.Fatalf("go list -deps listed only %d packages", len(deps))
		}
		for _, dep := range deps {
			if dep == "github.com/tokenbroker/tokenbroker/shared/client" || strings.HasPrefix(dep, "github.com/aws/aws-sdk-go-v2/config") {
				t.Errorf("%v: the functions depend on %s", env, dep)
			}
		}
	}
}
