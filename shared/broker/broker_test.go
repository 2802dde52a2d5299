package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/setup"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

var stack *devstack.Stack

func TestMain(m *testing.M) {
	var err error
	stack, err = devstack.Start(context.Background(), devstack.Options{PublicBaseURL: "https://broker.test"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	stack.Close()
	os.Exit(code)
}

// clock is a steerable time source shared by the broker and the emulators.
// It stands still unless made live, when it runs with the wall clock,
// offset by what was added.
type clock struct {
	mu   sync.Mutex
	t    time.Time
	live bool
	// offset from the wall clock when live
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live {
		return time.Now().Add(c.offset)
	}
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.offset += d
	c.mu.Unlock()
}

// Live makes the clock run from where it stands.
func (c *clock) Live() {
	c.mu.Lock()
	c.offset = time.Until(c.t)
	c.live = true
	c.mu.Unlock()
}

type fixture struct {
	b       *broker.Broker
	clock   *clock
	metrics *bytes.Buffer
	store   *store.Store
	table   string
	env     map[string]string
	mw      *lockedWriter
	// stack is the shared stack under this fixture's own SSM prefix: the
	// providers a test registers there are the only ones its ticks read.
	stack *devstack.Stack
}

// newFixture builds a broker the way the functions do (setup.Broker) over a
// fresh table, with a steerable clock and captured metrics. overrides
// change the functions' environment (a DynamoDB endpoint behind a fault
// proxy, another SSM prefix).
func newFixture(t *testing.T, overrides ...map[string]string) *fixture {
	t.Helper()
	ctx := context.Background()
	root, _ := localaws.ModuleRoot()
	table := localaws.UniqueName("broker")
	if err := localaws.CreateTable(ctx, localaws.DynamoDBClient(stack.Endpoints.DynamoDB), root+"/template.yaml", table); err != nil {
		t.Fatal(err)
	}
	own := *stack
	prefixed := false
	for _, o := range overrides {
		if p, ok := o["SSM_PREFIX"]; ok {
			own.Prefix, prefixed = p, true
		}
	}
	if !prefixed {
		fork, err := stack.Fork(ctx, "/"+localaws.UniqueName("tb"))
		if err != nil {
			t.Fatal(err)
		}
		own = *fork
	}
	env := maps.Clone(own.FunctionEnv)
	env["TABLE_NAME"] = table
	for _, o := range overrides {
		maps.Copy(env, o)
	}
	f := &fixture{clock: &clock{t: time.Now()}, metrics: &bytes.Buffer{}, table: table, env: env, stack: &own}
	f.mw = &lockedWriter{w: f.metrics}
	f.b = f.sibling(t)
	snap, err := f.b.Config.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ring, _ := snap.Ring()
	f.store = &store.Store{DB: localaws.DynamoDBClient(stack.Endpoints.DynamoDB), Table: table, Ring: ring, Shards: 8, Now: f.clock.Now}
	return f
}

// sibling is another instance of the broker (another Lambda sandbox) over
// the same table, clock and metrics, with its own caches and lease owner.
func (f *fixture) sibling(t *testing.T) *broker.Broker {
	t.Helper()
	b, _, err := setup.Broker(context.Background(), func(k string) (string, bool) { v, ok := f.env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	b.Now, b.Store.Now = f.clock.Now, f.clock.Now
	b.Metrics = &telemetry.Metrics{W: f.mw, Now: f.clock.Now}
	b.Log = telemetry.NewLogger(io.Discard, "debug")
	return b
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

var noRedirect = &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// authorize runs the whole connect flow in process.
func (f *fixture) authorize(t *testing.T, k store.Key) {
	t.Helper()
	ctx := context.Background()
	res, err := f.b.StartAuthorization(ctx, broker.AuthorizeRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := noRedirect.Get(strings.TrimSuffix(res.AuthorizeURL, "#wechat_redirect"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := resp.Location()
	q := loc.Query()
	cb, err := f.b.CompleteAuthorization(ctx, broker.CallbackRequest{Provider: k.Provider, Code: q.Get("code"), State: q.Get("state")})
	if err != nil || cb.Err != nil {
		t.Fatalf("complete: %v / %v", err, cb.Err)
	}
}

func (f *fixture) metricLines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	f.mw.mu.Lock()
	raw := append([]byte(nil), f.metrics.Bytes()...)
	f.mw.mu.Unlock()
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("metric line is not JSON: %s", sc.Text())
		}
		out = append(out, m)
	}
	return out
}

// count sums a metric over the EMF lines, optionally filtered by a dimension value.
func (f *fixture) count(t *testing.T, name string, dims map[string]string) float64 {
	var sum float64
	for _, m := range f.metricLines(t) {
		v, ok := m[name].(float64)
		if !ok {
			continue
		}
		match := true
		for k, want := range dims {
			if m[k] != want {
				match = false
			}
		}
		if match {
			sum += v
		}
	}
	return sum
}

func TestTransientFailureBacksOffAndServesOldToken(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	k := store.Key{Provider: devstack.SinaCloud, Connection: "flaky"}
	f.authorize(t, k)
	before, _ := f.store.Get(ctx, k, true)
	f.clock.Add(before.RefreshAt.Sub(f.clock.Now()) + time.Second)

	var delays []time.Duration
	for attempt := 1; attempt <= 4; attempt++ {
		stack.Sina.Inject("/oauth2/access_token", emulator.HTMLError(503), 1)
		sum, err := f.b.RefreshDue(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if sum.Due != 1 || sum.FailedTransient != 1 || sum.Refreshed != 0 {
			t.Fatalf("attempt %d: summary %+v", attempt, sum)
		}
		c, _ := f.store.Get(ctx, k, true)
		if c.Attempts != attempt || c.AccessToken != before.AccessToken || c.RefreshToken != before.RefreshToken || c.Status != store.StatusActive || !strings.Contains(c.LastError, "http_503") {
			t.Fatalf("attempt %d: stored %+v", attempt, c)
		}
		delays = append(delays, c.RefreshAt.Sub(f.clock.Now()))
		// The old token is still served while valid.
		tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Minute})
		if err != nil || tok.AccessToken != before.AccessToken {
			t.Fatalf("attempt %d: old token not served: %v", attempt, err)
		}
		// Nothing is due before the next attempt time.
		if sum, _ := f.b.RefreshDue(ctx); sum.Due != 0 {
			t.Fatalf("attempt %d: retried before its backoff: %+v", attempt, sum)
		}
		f.clock.Add(c.RefreshAt.Sub(f.clock.Now()) + time.Second)
	}
	for i := 1; i < len(delays); i++ {
		if delays[i] <= delays[i-1] {
			t.Fatalf("retry delays do not grow: %v", delays)
		}
	}
	if delays[0] < 15*time.Second || delays[len(delays)-1] > time.Hour {
		t.Fatalf("retry delays out of bounds: %v", delays)
	}
	if got := f.count(t, telemetry.RefreshFailed, map[string]string{"Class": "transient", "Provider": devstack.SinaCloud}); got != 4 {
		t.Fatalf("RefreshFailed{transient} = %v, want 4", got)
	}
	// Recovery resets the attempts.
	sum, err := f.b.RefreshDue(ctx)
	if err != nil || sum.Refreshed != 1 {
		t.Fatalf("recovery: %+v %v", sum, err)
	}
	c, _ := f.store.Get(ctx, k, true)
	if c.Attempts != 0 || c.LastError != "" || c.AccessToken == before.AccessToken {
		t.Fatalf("after recovery: %+v", c)
	}
}

// eventQueue routes tokenbroker needs-reauthorization events on the
// default bus of moto to an SQS queue.
func eventQueue(t *testing.T) *localaws.EventSink {
	return eventQueueFor(t, `{"source":["tokenbroker"],"detail-type":["Connection Needs Reauthorization"]}`)
}

// eventQueueFor routes the events matching pattern to a new SQS queue.
func eventQueueFor(t *testing.T, pattern string) *localaws.EventSink {
	t.Helper()
	sink, err := localaws.NewEventSink(context.Background(), stack.Endpoints.SSM, pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	return sink
}

func receiveAll(t *testing.T, sink *localaws.EventSink) []map[string]any {
	t.Helper()
	evs, err := sink.Receive(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func TestPermanentFailureNeedsReauthOnceAndStops(t *testing.T) {
	f := newFixture(t)
	sink := eventQueue(t)
	ctx := context.Background()
	k := store.Key{Provider: devstack.OAuth2, Connection: "revoked"}
	f.authorize(t, k)
	c, _ := f.store.Get(ctx, k, true)
	f.clock.Add(c.RefreshAt.Sub(f.clock.Now()) + time.Second)
	stack.OAuth2.Inject("/token", emulator.OAuthError(400, "invalid_grant", "refresh token revoked by the user"), 1)
	calls := stack.OAuth2.Calls("/token")
	sum, err := f.b.RefreshDue(ctx)
	if err != nil || sum.NeedsReauth != 1 {
		t.Fatalf("summary %+v %v", sum, err)
	}
	for i := 0; i < 3; i++ {
		if sum, _ := f.b.RefreshDue(ctx); sum.Due != 0 {
			t.Fatalf("needs_reauth connection still due: %+v", sum)
		}
		_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 24 * time.Hour})
		var ae *broker.Error
		if !errors.As(err, &ae) || ae.Code != broker.CodeNeedsReauth || !strings.Contains(ae.Message, "invalid_grant") {
			t.Fatalf("token after refusal: %v", err)
		}
		f.clock.Add(2 * time.Hour)
	}
	if got := stack.OAuth2.Calls("/token") - calls; got != 1 {
		t.Fatalf("provider called %d times, want exactly 1 (no calls after needs_reauth)", got)
	}
	evs := eventsAbout(receiveAll(t, sink), k) // other packages share the bus
	if len(evs) != 1 {
		t.Fatalf("%d events, want exactly 1: %v", len(evs), evs)
	}
	detail, _ := evs[0]["detail"].(map[string]any)
	if evs[0]["source"] != "tokenbroker" || evs[0]["detail-type"] != "Connection Needs Reauthorization" ||
		detail["provider"] != k.Provider || detail["connection"] != k.Connection || detail["provider_error"] != "invalid_grant" || detail["reason"] == "" {
		t.Fatalf("event %v", evs[0])
	}
	if f.count(t, telemetry.NeedsReauth, map[string]string{"Provider": k.Provider}) != 1 {
		t.Fatal("NeedsReauth metric not emitted exactly once")
	}
	// A new authorization restores the connection.
	f.authorize(t, k)
	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Minute})
	if err != nil || !stack.OAuth2.ValidAccess(tok.AccessToken) {
		t.Fatalf("after re-authorization: %v", err)
	}
	st, _ := f.b.Status(ctx, k)
	if st.Status != store.StatusActive || st.LastError != "" {
		t.Fatalf("status after re-authorization: %+v", st)
	}
}

func TestExpiredRefreshTokenNeedsReauthWithoutProviderCall(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	k := store.Key{Provider: devstack.SinaCloud, Connection: "stale"}
	f.authorize(t, k)
	calls := stack.Sina.Calls("/oauth2/access_token")
	f.clock.Add(9 * 24 * time.Hour) // past the access token's 7 days and the refresh token's 8
	_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Minute})
	if broker.ErrorCode(err) != broker.CodeNeedsReauth || !strings.Contains(err.Error(), "refresh token expired") {
		t.Fatalf("token: %v", err)
	}
	if stack.Sina.Calls("/oauth2/access_token") != calls {
		t.Fatal("an expired refresh token was sent to the provider")
	}
}

func TestConfigErrorKeepsConnectionAndRetries(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	k := store.Key{Provider: devstack.OAuth2, Connection: "badsecret"}
	f.authorize(t, k)
	stack.OAuth2.Inject("/token", emulator.OAuthError(401, "invalid_client", "client authentication failed"), 1)
	f.clock.Add(broker.MaxShortBackoff) // a forced refresh right after the authorization would be served the fresh token
	_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	if broker.ErrorCode(err) != broker.CodeProviderError {
		t.Fatalf("force refresh with a bad secret: %v", err)
	}
	st, _ := f.b.Status(ctx, k)
	if st.Status != store.StatusActive || !strings.Contains(st.LastError, "invalid_client") {
		t.Fatalf("a bad secret must not drop the user's grant: %+v", st)
	}
	f.clock.Add(broker.MaxShortBackoff)
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); err != nil {
		t.Fatalf("after the secret is fixed: %v", err)
	}
}

func TestQuotaGuardRefusesBeforeTheQuotaIsGone(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	name, wx := wechatTokenProvider(t, f, 3)
	f.freshConfig()
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	before := wx.Calls("/cgi-bin/token")
	for i := 0; i < 3; i++ {
		if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: i > 0, MinTTL: time.Minute}); err != nil {
			t.Fatalf("call %d within budget: %v", i+1, err)
		}
		f.clock.Add(broker.MaxShortBackoff)
	}
	_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	if broker.ErrorCode(err) != broker.CodeProviderUnavailable || !strings.Contains(broker.ErrorMessage(err), "daily budget of 3") {
		t.Fatalf("4th call: %v", err)
	}
	if got := wx.Calls("/cgi-bin/token") - before; got != 3 {
		t.Fatalf("cgi-bin/token called %d times, want 3", got)
	}
	if f.count(t, telemetry.QuotaRefused, map[string]string{"Provider": name}) != 1 {
		t.Fatal("QuotaRefused metric missing")
	}
	// The current token keeps being served; a new UTC day restores the budget.
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Minute}); err != nil {
		t.Fatalf("valid token not served after the refusal: %v", err)
	}
	f.clock.Add(24 * time.Hour)
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); err != nil {
		t.Fatalf("next day: %v", err)
	}
	if got := wx.Calls("/cgi-bin/token") - before; got != 4 {
		t.Fatalf("cgi-bin/token called %d times in all, want 4", got)
	}
}

func TestLeaseOfACrashedWorkerIsTakenOver(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	k := store.Key{Provider: devstack.OAuth2, Connection: "orphan"}
	f.authorize(t, k)
	f.clock.Add(10 * time.Minute)
	c, _ := f.store.Get(ctx, k, true)
	// A worker took the lease and died: nobody commits.
	if _, err := f.store.AcquireLease(ctx, k, c.Fence(), store.Lease{Owner: "crashed", Until: f.clock.Now().Add(300 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	go func() {
		// Time passes while the caller waits on the dead lease.
		time.Sleep(200 * time.Millisecond)
		f.clock.Add(time.Second)
	}()
	calls := stack.OAuth2.RefreshCalls()
	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 55 * time.Minute})
	if err != nil || tok.AccessToken == c.AccessToken {
		t.Fatalf("takeover: %v", err)
	}
	if stack.OAuth2.RefreshCalls()-calls != 1 {
		t.Fatalf("refresh calls %d, want 1", stack.OAuth2.RefreshCalls()-calls)
	}
	if got := f.count(t, telemetry.LeaseContended, nil); got != 1 {
		t.Fatalf("LeaseContended = %v, want exactly 1 (one waiting caller)", got)
	}
}

func TestPerProviderConcurrencyLimit(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o2 := emulator.NewOAuth2(devstack.OAuth2ClientID, devstack.OAuth2Secret, "https://broker.test/callback/slow")
	o2.SetLatency(40 * time.Millisecond)
	srv := startServer(t, o2)
	name := localaws.UniqueName("slow")
	o2.RedirectURI = "https://broker.test/callback/" + name
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "oauth2", "client_id": devstack.OAuth2ClientID,
		"authorize_url": srv + "/authorize", "token_url": srv + "/token", "auth_style": "basic"}, devstack.OAuth2Secret); err != nil {
		t.Fatal(err)
	}
	f.b.Config = &config.Loader{SSM: localaws.SSMClient(stack.Endpoints.SSM), Prefix: f.stack.Prefix}
	for i := 0; i < 12; i++ {
		f.authorize(t, store.Key{Provider: name, Connection: fmt.Sprintf("c%d", i)})
	}
	f.b.Concurrency, f.b.ProviderConcurrency = 8, 2
	f.clock.Add(56 * time.Minute)
	sum, err := f.b.RefreshDue(ctx)
	if err != nil || sum.Refreshed != 12 {
		t.Fatalf("summary %+v %v", sum, err)
	}
	// The limit must be reached (the refresher does run in parallel) and never passed.
	if got := o2.MaxInFlight(); got != 2 {
		t.Fatalf("%d refreshes in flight at one provider at most, want exactly the limit 2", got)
	}
}

func startServer(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := &http.Server{Handler: h}
	l, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String()
}

func TestEMFLinesAreWellFormed(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	k := store.Key{Provider: devstack.SinaCloud, Connection: "emf"}
	f.authorize(t, k)
	f.clock.Add(broker.MaxShortBackoff)
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{telemetry.RefreshSucceeded: true, telemetry.RefreshFailed: true, telemetry.LeaseContended: true,
		telemetry.ProviderLatency: true, telemetry.NeedsReauth: true, telemetry.TokenServed: true, telemetry.QuotaRefused: true}
	seen := map[string]bool{}
	for _, line := range f.metricLines(t) {
		meta, _ := line["_aws"].(map[string]any)
		if _, ok := meta["Timestamp"].(float64); !ok {
			t.Fatalf("no Timestamp: %v", line)
		}
		cwm, _ := meta["CloudWatchMetrics"].([]any)
		if len(cwm) != 1 {
			t.Fatalf("CloudWatchMetrics: %v", line)
		}
		directive := cwm[0].(map[string]any)
		if directive["Namespace"] != telemetry.Namespace {
			t.Fatalf("namespace %v", directive["Namespace"])
		}
		for _, dimSet := range directive["Dimensions"].([]any) {
			for _, d := range dimSet.([]any) {
				if _, ok := line[d.(string)].(string); !ok {
					t.Fatalf("dimension %v has no value in %v", d, line)
				}
			}
		}
		for _, m := range directive["Metrics"].([]any) {
			name := m.(map[string]any)["Name"].(string)
			if !known[name] {
				t.Fatalf("unknown metric %s", name)
			}
			if _, ok := line[name].(float64); !ok {
				t.Fatalf("metric %s has no numeric value", name)
			}
			seen[name] = true
		}
	}
	for _, want := range []string{telemetry.RefreshSucceeded, telemetry.ProviderLatency, telemetry.TokenServed} {
		if !seen[want] {
			t.Fatalf("metric %s not emitted (saw %v)", want, seen)
		}
	}
}

func TestWeChatTokenModeReportsWhenTheOldTokenDies(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	name, wx := wechatTokenProvider(t, f, 0)
	f.freshConfig()
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := f.store.Get(ctx, k, true)
	// Refreshed 600 s ahead, the old token dies 300 s later: 300 s before its nominal expiry.
	if c.RefreshAt.Unix() != c.ExpiresAt.Unix()-600 || tok.ExpiresAt.Unix() != c.ExpiresAt.Unix()-300 {
		t.Fatalf("stored expiry %v refresh_at %v, reported %v", c.ExpiresAt, c.RefreshAt, tok.ExpiresAt)
	}
	// Each fetch kills the token others hold, so a caller wanting more than
	// what is left of that effective life still gets the current token,
	// with its true expiry, and WeChat is not called.
	calls := wx.Calls("/cgi-bin/token")
	f.clock.Add(c.RefreshAt.Sub(f.clock.Now()) + time.Minute)
	same, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 2 * time.Hour})
	if err != nil || same.AccessToken != tok.AccessToken || same.ExpiresAt.Unix() != tok.ExpiresAt.Unix() {
		t.Fatalf("after refresh_at: %v, same token %v", err, same != nil && same.AccessToken == tok.AccessToken)
	}
	// Within its last minute it is unusable: the next caller gets a new one.
	f.clock.Add(tok.ExpiresAt.Sub(f.clock.Now()) - 30*time.Second)
	next, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 5 * time.Minute})
	if err != nil || next.AccessToken == tok.AccessToken {
		t.Fatalf("in its last minute: %v, same token %v", err, next != nil && next.AccessToken == tok.AccessToken)
	}
	if got := wx.Calls("/cgi-bin/token") - calls; got != 1 {
		t.Fatalf("cgi-bin/token called %d times, want exactly 1", got)
	}
}
