// Package localapi runs the broker's HTTP API on a loopback port the way a
// backend meets it in AWS: the real function bootstraps under the Runtime
// API runner (lambdarun), behind make dev's API Gateway stand-in
// (devfront, which verifies SigV4), over a devstack (DynamoDB Local, moto,
// the provider emulators). Tests and benchmarks that call the broker over
// HTTP, such as those of the Go client, stand on it.
package localapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/tokenbroker/tokenbroker/shared/local/devfront"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

// routed are the functions behind HTTP routes, by LogicalId, with their
// folder under functions/ (the refresher has no route).
var routed = map[string]string{"AuthorizeFunction": "authorize", "CallbackFunction": "callback", "TokenFunction": "token"}

// Options shape an API.
type Options struct {
	// Root is the module root; found from the working directory when empty.
	Root string
	// Bootstraps are already built executables by function folder
	// ("token", …); the missing ones are built into a temporary folder.
	Bootstraps map[string]string
	// TokenSandboxes serve the token function at once; 2 when zero.
	TokenSandboxes int
	// Credentials the front accepts; devfront.DefaultCredentials when empty.
	Credentials []aws.Credentials
	// Output receives the functions' logs; discarded when nil.
	Output io.Writer
	// LogLevel of the functions; "warn" when empty.
	LogLevel string
}

// API is a running local broker API.
type API struct {
	// URL is the API's base, http://127.0.0.1:port.
	URL string
	// Stack holds the stand-ins and the emulators (faults, counters).
	Stack *devstack.Stack
	// Credentials are the first ones the front accepts (for Connect and tests).
	Credentials aws.Credentials

	srv   *http.Server
	pools map[string]pool
	tmp   string
}

// pool hands invokes to the sandboxes of one function, as Lambda scales
// out under concurrent requests.
type pool chan *lambdarun.Runner

func (p pool) invoke(ctx context.Context, payload []byte) ([]byte, error) {
	select {
	case r := <-p:
		defer func() { p <- r }()
		return r.Invoke(ctx, payload)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Start builds what is missing and brings the API up; Close stops it.
func Start(ctx context.Context, opts Options) (api *API, err error) {
	if opts.Root == "" {
		if opts.Root, err = localaws.ModuleRoot(); err != nil {
			return nil, err
		}
	}
	if opts.TokenSandboxes <= 0 {
		opts.TokenSandboxes = 2
	}
	if len(opts.Credentials) == 0 {
		opts.Credentials = []aws.Credentials{devfront.DefaultCredentials}
	}
	if opts.Output == nil {
		opts.Output = io.Discard
	}
	api = &API{Credentials: opts.Credentials[0], pools: map[string]pool{}}
	defer func() {
		if err != nil {
			api.Close()
			api = nil
		}
	}()
	// The address comes first: callback URLs and the return_to allowlist derive from it.
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return api, fmt.Errorf("localapi: %w", err)
	}
	api.URL = "http://" + listener.Addr().String()
	api.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second}

	bootstraps := map[string]string{}
	for _, fn := range routed {
		if path := opts.Bootstraps[fn]; path != "" {
			bootstraps[fn] = path
			continue
		}
		if api.tmp == "" {
			if api.tmp, err = os.MkdirTemp("", "tokenbroker-localapi-"); err != nil {
				listener.Close()
				return api, err
			}
		}
		out := filepath.Join(api.tmp, fn, "bootstrap")
		cmd := exec.CommandContext(ctx, "go", "build", "-tags", "lambda.norpc", "-trimpath", "-o", out, "./functions/"+fn)
		cmd.Dir = opts.Root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			listener.Close()
			return api, fmt.Errorf("localapi: build %s: %v\n%s", fn, err, b)
		}
		bootstraps[fn] = out
	}
	api.Stack, err = devstack.Start(ctx, devstack.Options{PublicBaseURL: api.URL, Root: opts.Root,
		ReturnToAllowlist: api.URL, LogLevel: opts.LogLevel})
	if err != nil {
		listener.Close()
		return api, err
	}
	for id, fn := range routed {
		size := 1
		if id == "TokenFunction" {
			size = opts.TokenSandboxes
		}
		p := make(pool, size)
		api.pools[id] = p
		for i := 0; i < size; i++ {
			r, err := lambdarun.Start(lambdarun.Config{Bootstrap: bootstraps[fn], FunctionName: "tokenbroker-" + fn,
				Env: api.Stack.FunctionEnv, Timeout: 30 * time.Second, Stdout: opts.Output, Stderr: opts.Output})
			if err != nil {
				listener.Close()
				return api, err
			}
			p <- r
		}
	}
	routes, err := devfront.Routes(filepath.Join(opts.Root, devstack.DefaultTemplate))
	if err != nil {
		listener.Close()
		return api, err
	}
	api.srv.Handler = &devfront.Front{Routes: routes, Domain: listener.Addr().String(), Credentials: opts.Credentials,
		Invoke: func(ctx context.Context, function string, payload []byte) ([]byte, error) {
			p, ok := api.pools[function]
			if !ok {
				return nil, fmt.Errorf("localapi: no function %s runs here", function)
			}
			return p.invoke(ctx, payload)
		}}
	go func() { _ = api.srv.Serve(listener) }()
	return api, nil
}

// Close stops the front, the sandboxes and the stack, and removes what
// Start built.
func (a *API) Close() {
	if a == nil {
		return
	}
	if a.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_ = a.srv.Shutdown(ctx)
		cancel()
	}
	for _, p := range a.pools {
		for len(p) > 0 {
			(<-p).Close()
		}
	}
	a.Stack.Close()
	if a.tmp != "" {
		os.RemoveAll(a.tmp)
	}
}

// Do sends a request signed with a.Credentials to the API; body may be
// nil. Redirects are not followed.
func (a *API) Do(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	var reader io.Reader = http.NoBody
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.URL+path, reader)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(ctx, a.Credentials, req, hex.EncodeToString(sum[:]), "execute-api", devfront.DefaultRegion, time.Now()); err != nil {
		return nil, err
	}
	return noRedirect.Do(req)
}

var noRedirect = &http.Client{Timeout: 40 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// Connect authorizes a connection as a user's browser would: the
// authorize route, the emulated provider's consent page (which consents at
// once), the callback.
func (a *API) Connect(ctx context.Context, provider, connection string) error {
	body, _ := json.Marshal(map[string]string{"return_to": a.URL + "/connected"})
	resp, err := a.Do(ctx, "POST", "/connections/"+url.PathEscape(provider)+"/"+url.PathEscape(connection)+"/authorize", body)
	if err != nil {
		return fmt.Errorf("localapi: authorize: %w", err)
	}
	var answer struct {
		AuthorizeURL string `json:"authorize_url"`
	}
	err = json.NewDecoder(resp.Body).Decode(&answer)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || answer.AuthorizeURL == "" {
		return fmt.Errorf("localapi: authorize answered %d", resp.StatusCode)
	}
	callback, err := redirectOf(ctx, strings.TrimSuffix(answer.AuthorizeURL, "#wechat_redirect"))
	if err != nil {
		return fmt.Errorf("localapi: provider consent: %w", err)
	}
	if !strings.HasPrefix(callback.String(), a.URL+"/callback/") {
		return fmt.Errorf("localapi: the provider redirected to %s, not to the callback", callback.Redacted())
	}
	done, err := redirectOf(ctx, callback.String())
	if err != nil {
		return fmt.Errorf("localapi: callback: %w", err)
	}
	if status := done.Query().Get("status"); status != "connected" {
		return fmt.Errorf("localapi: the callback ended with status=%s error=%s", status, done.Query().Get("error"))
	}
	return nil
}

// redirectOf GETs target and returns where its 302 points.
func redirectOf(ctx context.Context, target string) (*url.URL, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", target, nil)
	if err != nil {
		return nil, err
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return nil, fmt.Errorf("answered %d, not a redirect", resp.StatusCode)
	}
	return resp.Location()
}
