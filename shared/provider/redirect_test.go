package provider_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/provider"
)

// thief is a second server a redirect points at. It counts every request
// and would hand out tokens, so a client that followed would "succeed".
type thief struct {
	srv   *httptest.Server
	calls atomic.Int64
}

func newThief(t *testing.T) *thief {
	th := &thief{}
	th.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		th.calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"stolen-access","expires_in":7200,"refresh_token":"stolen-refresh","openid":"o"}`))
	}))
	t.Cleanup(th.srv.Close)
	return th
}

// location is where the redirect points: a path and query that must never
// show up in an error.
func (th *thief) location(path string) string {
	return th.srv.URL + "/collect" + path + "?loot=1"
}

// redirectCase is one provider call type whose endpoint answers a redirect.
type redirectCase struct {
	name string
	path string // endpoint the fault is injected at
	// setup returns the emulator (to inject into), the client and the call.
	setup func(t *testing.T) (inject func(string, emulator.Fault, int), calls func(string) int, run func(context.Context) error)
}

const (
	redirCode     = "code-0123456789abcdef-exchange"
	redirVerifier = "verifier-0123456789abcdef0123456789abcdef012"
	redirRefresh  = "refresh-0123456789abcdef-refresh"
	redirRevoke   = "revoke-me-0123456789abcdef"
)

func oauth2Redirect(grant string, run func(c provider.Client, ctx context.Context) error) func(t *testing.T) (func(string, emulator.Fault, int), func(string) int, func(context.Context) error) {
	return func(t *testing.T) (func(string, emulator.Fault, int), func(string) int, func(context.Context) error) {
		emu := emulator.NewOAuth2("cid", "oauth2-secret-value", "https://b/cb")
		srv := httptest.NewServer(emu)
		t.Cleanup(srv.Close)
		c := newClient(t, mustConfig(t, "gen", `{"kind":"oauth2","grant":"`+grant+`","client_id":"cid","authorize_url":"`+srv.URL+`/authorize","token_url":"`+srv.URL+`/token","revoke_url":"`+srv.URL+`/revoke"}`), "oauth2-secret-value")
		return emu.Inject, emu.Calls, func(ctx context.Context) error { return run(c, ctx) }
	}
}

func sinaRedirect(run func(c provider.Client, ctx context.Context) error) func(t *testing.T) (func(string, emulator.Fault, int), func(string) int, func(context.Context) error) {
	return func(t *testing.T) (func(string, emulator.Fault, int), func(string) int, func(context.Context) error) {
		emu := emulator.NewSinaCloud("sina-id", "sina-secret-value", "https://b/cb")
		srv := httptest.NewServer(emu)
		t.Cleanup(srv.Close)
		c := newClient(t, mustConfig(t, "sina", `{"kind":"sinacloud","client_id":"sina-id","api_base":"`+srv.URL+`"}`), "sina-secret-value")
		return emu.Inject, emu.Calls, func(ctx context.Context) error { return run(c, ctx) }
	}
}

func wechatRedirect(doc string, run func(c provider.Client, ctx context.Context) error) func(t *testing.T) (func(string, emulator.Fault, int), func(string) int, func(context.Context) error) {
	return func(t *testing.T) (func(string, emulator.Fault, int), func(string) int, func(context.Context) error) {
		emu := emulator.NewWeChat("wxapp", "wechat-app-secret-value")
		srv := httptest.NewServer(emu)
		t.Cleanup(srv.Close)
		c := newClient(t, mustConfig(t, "wx", `{`+doc+`,"client_id":"wxapp","api_base":"`+srv.URL+`"}`), "wechat-app-secret-value")
		return emu.Inject, emu.Calls, func(ctx context.Context) error { return run(c, ctx) }
	}
}

func exchange(c provider.Client, ctx context.Context) error {
	_, err := c.Exchange(ctx, redirCode, "https://b/cb", redirVerifier)
	return err
}

func refresh(c provider.Client, ctx context.Context) error {
	_, err := c.Refresh(ctx, redirRefresh)
	return err
}

func machine(c provider.Client, ctx context.Context) error {
	_, err := c.MachineToken(ctx)
	return err
}

func revoke(c provider.Client, ctx context.Context) error {
	return c.Revoke(ctx, redirRevoke, "refresh_token")
}

var redirectCases = []redirectCase{
	{"exchange/oauth2", "/token", oauth2Redirect("authorization_code", exchange)},
	{"exchange/sinacloud", "/oauth2/access_token", sinaRedirect(exchange)},
	{"exchange/wechat sns", "/sns/oauth2/access_token", wechatRedirect(`"kind":"wechat_oauth"`, exchange)},
	{"refresh/oauth2", "/token", oauth2Redirect("authorization_code", refresh)},
	{"refresh/sinacloud", "/oauth2/access_token", sinaRedirect(refresh)},
	{"refresh/wechat sns", "/sns/oauth2/refresh_token", wechatRedirect(`"kind":"wechat_oauth"`, refresh)},
	{"machine/client_credentials", "/token", oauth2Redirect("client_credentials", machine)},
	{"machine/wechat cgi-bin token", "/cgi-bin/token", wechatRedirect(`"kind":"wechat_mp","token_api":"token"`, machine)},
	{"machine/wechat stable_token", "/cgi-bin/stable_token", wechatRedirect(`"kind":"wechat_mp","token_api":"stable_token"`, machine)},
	{"revoke/oauth2", "/revoke", oauth2Redirect("authorization_code", revoke)},
}

// Every call type: a 307 from the provider's endpoint is an error, the
// credentials never reach the Location's host, and the error names only
// that host's origin.
func TestRedirectsAreNeverFollowed(t *testing.T) {
	for _, tc := range redirectCases {
		t.Run(tc.name, func(t *testing.T) {
			th := newThief(t)
			inject, calls, run := tc.setup(t)
			inject(tc.path, emulator.Redirect(http.StatusTemporaryRedirect, th.location(tc.path)), 1)
			err := run(context.Background())
			assertError(t, err, provider.ClassTransient, "http_307", redirCode, redirVerifier, redirRefresh, redirRevoke,
				"oauth2-secret-value", "sina-secret-value", "wechat-app-secret-value", "/collect", "loot")
			if got := th.calls.Load(); got != 0 {
				t.Fatalf("the redirect target got %d requests, want 0", got)
			}
			if got := calls(tc.path); got != 1 {
				t.Fatalf("the endpoint got %d requests, want 1 (no retry)", got)
			}
			var pe *provider.Error
			errors.As(err, &pe)
			if pe.HTTPStatus != 307 || !strings.Contains(pe.Message, th.srv.URL) || provider.Ambiguous(err) {
				t.Fatalf("error %+v: want status 307, the target's origin %s named, not ambiguous", pe, th.srv.URL)
			}
		})
	}
}

func TestRedirectClassesAndLocations(t *testing.T) {
	for _, tc := range []struct {
		status   int
		location string // "" : none; "/x": relative; "thief": the thief
		class    provider.Class
		names    string // what the message must name; "emu" for the endpoint's own origin
	}{
		{http.StatusMovedPermanently, "thief", provider.ClassConfig, "thief"},
		{http.StatusPermanentRedirect, "thief", provider.ClassConfig, "thief"},
		{http.StatusFound, "thief", provider.ClassTransient, "thief"},
		{http.StatusSeeOther, "thief", provider.ClassTransient, "thief"},
		{http.StatusTemporaryRedirect, "/maintenance?refresh_token=" + redirRefresh, provider.ClassTransient, "emu"},
		{http.StatusTemporaryRedirect, "", provider.ClassTransient, "nowhere usable"},
		{http.StatusNotModified, "", provider.ClassTransient, "nowhere usable"},
	} {
		t.Run(http.StatusText(tc.status)+" "+tc.location, func(t *testing.T) {
			th := newThief(t)
			emu := emulator.NewOAuth2("cid", "oauth2-secret-value", "https://b/cb")
			srv := httptest.NewServer(emu)
			defer srv.Close()
			c := newClient(t, mustConfig(t, "gen", `{"kind":"oauth2","client_id":"cid","authorize_url":"`+srv.URL+`/authorize","token_url":"`+srv.URL+`/token"}`), "oauth2-secret-value")
			loc := tc.location
			if loc == "thief" {
				loc = th.location("/token")
			}
			emu.Inject("/token", emulator.Fault{Status: tc.status, Location: loc}, 1)
			err := refresh(c, context.Background())
			assertError(t, err, tc.class, "http_"+strconv.Itoa(tc.status), redirRefresh, "oauth2-secret-value", "/collect", "maintenance")
			want := map[string]string{"thief": th.srv.URL, "emu": srv.URL}[tc.names]
			if want == "" {
				want = tc.names
			}
			if msg := err.Error(); !strings.Contains(msg, want) {
				t.Fatalf("message %q does not name %q", msg, want)
			}
			if th.calls.Load() != 0 || emu.Calls("/token") != 1 || emu.Calls("/maintenance") != 0 {
				t.Fatalf("thief %d, endpoint %d, maintenance %d requests", th.calls.Load(), emu.Calls("/token"), emu.Calls("/maintenance"))
			}
		})
	}
}

// New stops redirects on a copy: the caller's client, and its own
// CheckRedirect, are neither changed nor consulted.
func TestNewKeepsTheCallersClient(t *testing.T) {
	th := newThief(t)
	emu := emulator.NewOAuth2("cid", "oauth2-secret-value", th.srv.URL+"/cb")
	srv := httptest.NewServer(emu)
	defer srv.Close()
	var consulted atomic.Int64
	follow := func(*http.Request, []*http.Request) error { consulted.Add(1); return nil }
	mine := &http.Client{CheckRedirect: follow}
	var none *http.Client
	for _, hc := range []*http.Client{mine, none} {
		c, err := provider.New(mustConfig(t, "gen", `{"kind":"oauth2","client_id":"cid","authorize_url":"`+srv.URL+`/authorize","token_url":"`+srv.URL+`/token"}`), "oauth2-secret-value", provider.Options{HTTP: hc})
		if err != nil {
			t.Fatal(err)
		}
		emu.Inject("/token", emulator.Redirect(http.StatusTemporaryRedirect, th.location("/token")), 1)
		assertError(t, refresh(c, context.Background()), provider.ClassTransient, "http_307")
	}
	if th.calls.Load() != 0 || consulted.Load() != 0 {
		t.Fatalf("thief got %d requests, caller's CheckRedirect consulted %d times", th.calls.Load(), consulted.Load())
	}
	// The caller's client still follows redirects for its own use.
	resp, err := mine.Get(srv.URL + "/authorize?client_id=cid&redirect_uri=" + url.QueryEscape(th.srv.URL+"/cb") + "&response_type=code&code_challenge=x&code_challenge_method=S256")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if consulted.Load() != 1 || th.calls.Load() != 1 {
		t.Fatalf("caller's own request: CheckRedirect consulted %d times, target reached %d times; want 1 and 1", consulted.Load(), th.calls.Load())
	}
}
