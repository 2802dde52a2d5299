package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/tokenbroker/tokenbroker/shared/local/apispec"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

const publicBase = "https://broker.example.test"
const returnOrigin = "https://app.example.test"

var (
	stack      *devstack.Stack
	bootstraps = map[string]string{}
	logs       = &syncBuffer{}
	// contract is openapi.yaml; invoke checks every answer against it and
	// counts the valid ones in checked.
	contract *apispec.Spec
	checked  apispec.Tally
)

// syncBuffer collects every function's output, to check log lines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lineWriter hands only whole lines on, so the output of concurrent
// sandboxes interleaves line by line, never inside one (the EMF lines are
// parsed back).
type lineWriter struct {
	mu      sync.Mutex
	to      io.Writer
	pending []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending = append(l.pending, p...)
	if i := bytes.LastIndexByte(l.pending, '\n'); i >= 0 {
		if _, err := l.to.Write(l.pending[:i+1]); err != nil {
			return 0, err
		}
		l.pending = append(l.pending[:0], l.pending[i+1:]...)
	}
	return len(p), nil
}

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	root, err := localaws.ModuleRoot()
	if err != nil {
		return 0, err
	}
	if contract, err = apispec.Load(filepath.Join(root, "openapi.yaml")); err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "tokenbroker-e2e-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	for _, fn := range []string{"authorize", "callback", "token", "refresher", "worker"} {
		out := filepath.Join(dir, fn, "bootstrap")
		cmd := exec.Command("go", "build", "-tags", "lambda.norpc", "-trimpath", "-o", out, "./functions/"+fn)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("build %s: %v\n%s", fn, err, b)
		}
		bootstraps[fn] = out
	}
	stack, err = devstack.Start(context.Background(), devstack.Options{
		PublicBaseURL: publicBase, ReturnToAllowlist: returnOrigin, LogLevel: "info",
	})
	if err != nil {
		return 0, err
	}
	defer stack.Close()
	code := m.Run()
	closeRunners()
	routes := contract.Routes()
	fmt.Println(checked.Summary(routes))
	// Only a run of every test must have seen every route: -run or -skip
	// choose some tests, and then some routes are not called at all.
	if missing := checked.Missing(routes); len(missing) > 0 && flag.Lookup("test.run").Value.String() == "" &&
		flag.Lookup("test.skip").Value.String() == "" {
		fmt.Fprintf(os.Stderr, "e2e: no answer of %s was checked against openapi.yaml; a test must call each route\n", strings.Join(missing, ", "))
		if code == 0 {
			code = 1
		}
	}
	return code, nil
}

var (
	runnersMu sync.Mutex
	runners   []*lambdarun.Runner
)

func closeRunners() {
	runnersMu.Lock()
	defer runnersMu.Unlock()
	for _, r := range runners {
		r.Close()
	}
	runners = nil
}

// newSandbox starts one sandbox of fn with the stack's environment plus env.
func newSandbox(t testing.TB, fn string, env map[string]string) *lambdarun.Runner {
	t.Helper()
	fullEnv := map[string]string{}
	for k, v := range stack.FunctionEnv {
		fullEnv[k] = v
	}
	for k, v := range env {
		fullEnv[k] = v
	}
	timeout := 30 * time.Second
	if fn == "refresher" {
		timeout = 55 * time.Second
	}
	r, err := lambdarun.Start(lambdarun.Config{Bootstrap: bootstraps[fn], FunctionName: fn, Env: fullEnv, Timeout: timeout,
		Stdout: &lineWriter{to: logs}, Stderr: &lineWriter{to: logs}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// startFunction starts one sandbox of fn, closed when the test ends.
func startFunction(t testing.TB, fn string, env map[string]string) *lambdarun.Runner {
	t.Helper()
	r := newSandbox(t, fn, env)
	t.Cleanup(r.Close)
	return r
}

// request describes an API Gateway HTTP API call.
type request struct {
	method, path string
	query        string
	body         string
	iam          bool
	headers      map[string]string
}

// route is the route key API Gateway matches rq to (its routeKey) and
// the path parameters it passes.
func (rq request) route() (string, map[string]string) {
	segs := strings.Split(strings.Trim(rq.path, "/"), "/")
	params := map[string]string{}
	route := rq.method + " " + rq.path
	switch {
	case segs[0] == "callback" && len(segs) == 2:
		params["provider"] = segs[1]
		route = "GET /callback/{provider}"
	case segs[0] == "connections" && len(segs) == 2:
		params["provider"] = segs[1]
		route = rq.method + " /connections/{provider}"
	case segs[0] == "connections" && len(segs) >= 3:
		params["provider"], params["connection"] = segs[1], segs[2]
		route = rq.method + " /connections/{provider}/{connection}"
		if len(segs) == 4 {
			route += "/" + segs[3]
		}
	}
	return route, params
}

// event builds a payload 2.0 event as API Gateway sends it.
func (rq request) event() []byte {
	route, params := rq.route()
	qs := map[string]string{}
	if parsed, err := url.ParseQuery(rq.query); err == nil {
		for k := range parsed {
			qs[k] = parsed.Get(k)
		}
	}
	ev := events.APIGatewayV2HTTPRequest{
		Version: "2.0", RouteKey: route, RawPath: rq.path, RawQueryString: rq.query,
		Headers: map[string]string{"host": "broker.example.test"}, QueryStringParameters: qs, PathParameters: params,
		Body: rq.body,
		RequestContext: events.APIGatewayV2HTTPRequestContext{
			DomainName: "broker.example.test", Stage: "$default", RequestID: "req",
			HTTP: events.APIGatewayV2HTTPRequestContextHTTPDescription{Method: rq.method, Path: rq.path, Protocol: "HTTP/1.1", SourceIP: "127.0.0.1"},
		},
	}
	for k, v := range rq.headers {
		ev.Headers[k] = v
	}
	if rq.iam {
		ev.RequestContext.Authorizer = &events.APIGatewayV2HTTPRequestContextAuthorizerDescription{
			IAM: &events.APIGatewayV2HTTPRequestContextAuthorizerIAMDescription{
				AccessKey: "AKIAEXAMPLE", AccountID: "123456789012", CallerID: "AIDAEXAMPLE",
				UserARN: "arn:aws:iam::123456789012:user/backend", UserID: "AIDAEXAMPLE",
			}}
	}
	b, _ := json.Marshal(ev)
	return b
}

type response struct {
	events.APIGatewayV2HTTPResponse
	json map[string]any
}

func invoke(t testing.TB, r *lambdarun.Runner, rq request) response {
	t.Helper()
	out, err := r.Invoke(context.Background(), rq.event())
	if err != nil {
		t.Fatalf("%s %s: %v", rq.method, rq.path, err)
	}
	var resp response
	if err := json.Unmarshal(out, &resp.APIGatewayV2HTTPResponse); err != nil {
		t.Fatalf("%s %s: response is not an HTTP API response: %s", rq.method, rq.path, out)
	}
	// Every answer a function gives must be one openapi.yaml allows. A
	// function error (a killed sandbox) never gets here: Invoke returned it.
	route, _ := rq.route()
	if err := contract.CheckAnswer(route, resp.APIGatewayV2HTTPResponse); err != nil {
		t.Errorf("%s %s: the answer breaks openapi.yaml: %v", rq.method, rq.path, err)
	} else {
		checked.Add(route, resp.StatusCode)
	}
	if strings.HasPrefix(resp.Headers["Content-Type"], "application/json") && resp.Body != "" {
		if err := json.Unmarshal([]byte(resp.Body), &resp.json); err != nil {
			t.Fatalf("%s %s: body is not JSON: %s", rq.method, rq.path, resp.Body)
		}
	}
	return resp
}

func expectStatus(t testing.TB, resp response, status int, errCode string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, resp.Body)
	}
	if errCode != "" && (resp.json["error"] != errCode || resp.json["message"] == "") {
		t.Fatalf("body %s, want error %q with a message", resp.Body, errCode)
	}
}

// noRedirect follows nothing, so the test sees each 302.
var noRedirect = &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// providerRedirect opens the emulator's authorize page as a browser would
// and returns the callback path and query it redirects to.
func providerRedirect(t testing.TB, authorizeURL string) (path, query string) {
	t.Helper()
	resp, err := noRedirect.Get(strings.TrimSuffix(authorizeURL, "#wechat_redirect"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("provider authorize page answered %d", resp.StatusCode)
	}
	loc, err := resp.Location()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(loc.String(), publicBase+"/callback/") {
		t.Fatalf("provider redirected to %s, want the broker's callback", loc.Redacted())
	}
	return loc.Path, loc.RawQuery
}

// connect walks authorize → provider page → callback and returns the
// callback's redirect.
func connect(t testing.TB, fns *functions, provider, connection string) (callbackPath, callbackQuery string) {
	t.Helper()
	resp := invoke(t, fns.authorize, request{method: "POST", path: "/connections/" + provider + "/" + connection + "/authorize",
		body: `{"return_to":"` + returnOrigin + `/done?x=1"}`, iam: true})
	expectStatus(t, resp, 200, "")
	authURL, _ := resp.json["authorize_url"].(string)
	if _, err := time.Parse(time.RFC3339, fmt.Sprint(resp.json["state_expires_at"])); err != nil || authURL == "" {
		t.Fatalf("authorize answer %s", resp.Body)
	}
	path, query := providerRedirect(t, authURL)
	cb := invoke(t, fns.callback, request{method: "GET", path: path, query: query})
	expectStatus(t, cb, 302, "")
	loc, _ := url.Parse(cb.Headers["Location"])
	if loc == nil || !strings.HasPrefix(loc.String(), returnOrigin+"/done") || loc.Query().Get("status") != "connected" || loc.Query().Get("x") != "1" {
		t.Fatalf("callback redirected to %q", cb.Headers["Location"])
	}
	return path, query
}

type functions struct {
	authorize, callback, token, refresher *lambdarun.Runner
}

var (
	sharedFns     *functions
	sharedFnsOnce sync.Once
)

// fns returns one sandbox of each function, shared by the tests.
func fns(t testing.TB) *functions {
	sharedFnsOnce.Do(func() {
		start := func(fn string) *lambdarun.Runner {
			r := newSandbox(t, fn, nil)
			runnersMu.Lock()
			runners = append(runners, r)
			runnersMu.Unlock()
			return r
		}
		sharedFns = &functions{authorize: start("authorize"), callback: start("callback"), token: start("token"), refresher: start("refresher")}
	})
	return sharedFns
}

// ageConnection makes a stored connection's access token look as if it
// expires in expiresIn (see devstack.Stack.AgeConnection).
func ageConnection(t testing.TB, table, provider, connection string, expiresIn time.Duration) {
	t.Helper()
	if err := stack.AgeConnection(context.Background(), table, provider, connection, expiresIn); err != nil {
		t.Fatal(err)
	}
}

func tokenOf(t testing.TB, r *lambdarun.Runner, provider, connection, query string) response {
	t.Helper()
	return invoke(t, r, request{method: "GET", path: "/connections/" + provider + "/" + connection + "/token", query: query, iam: true})
}
