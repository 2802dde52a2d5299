package devfront_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/tokenbroker/tokenbroker/shared/local/devfront"
)

var (
	akidLocal   = aws.Credentials{AccessKeyID: "AKIDLOCAL", SecretAccessKey: "local-secret"}
	sessionUser = aws.Credentials{AccessKeyID: "ASIALOCAL", SecretAccessKey: "session-secret", SessionToken: "the-session-token"}
)

// sign signs req as aws-sdk-go-v2 clients do.
func sign(t *testing.T, req *http.Request, creds aws.Credentials, service, region string, at time.Time, body []byte) {
	t.Helper()
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hex.EncodeToString(sum[:]), service, region, at); err != nil {
		t.Fatal(err)
	}
}

// echoFront serves the template's routes with a function that answers 200
// with the event it got; invokes counts the calls that reached it.
func echoFront(t *testing.T, creds []aws.Credentials, now func() time.Time) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	routes, err := devfront.Routes("../../../template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	invokes := &atomic.Int64{}
	front := &devfront.Front{Routes: routes, Domain: "local", Credentials: creds, Now: now,
		Invoke: func(_ context.Context, _ string, payload []byte) ([]byte, error) {
			invokes.Add(1)
			return json.Marshal(events.APIGatewayV2HTTPResponse{StatusCode: 200, Headers: map[string]string{"Content-Type": "application/json"}, Body: string(payload)})
		}}
	srv := httptest.NewServer(front)
	t.Cleanup(srv.Close)
	return srv, invokes
}

func TestSigV4IsVerified(t *testing.T) {
	clock := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	srv, invokes := echoFront(t, []aws.Credentials{akidLocal, sessionUser}, func() time.Time { return clock })
	token := srv.URL + "/connections/gh/alice/token?min_ttl=30"
	authorize := srv.URL + "/connections/gh/alice/authorize"
	get := func(url string) *http.Request {
		req, _ := http.NewRequest("GET", url, nil)
		return req
	}
	post := func(url, body string) *http.Request {
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		return req
	}
	for _, tc := range []struct {
		name    string
		request func() *http.Request
		status  int
		code    string
		message string // a part of it
	}{
		{"signed GET", func() *http.Request {
			req := get(token)
			sign(t, req, akidLocal, "execute-api", "us-east-1", clock, nil)
			return req
		}, 200, "", ""},
		{"signed POST with a body", func() *http.Request {
			req := post(authorize, `{"scopes":["read"]}`)
			sign(t, req, akidLocal, "execute-api", "us-east-1", clock, []byte(`{"scopes":["read"]}`))
			return req
		}, 200, "", ""},
		{"session credentials", func() *http.Request {
			req := get(token)
			sign(t, req, sessionUser, "execute-api", "us-east-1", clock, nil)
			return req
		}, 200, "", ""},
		{"signed four minutes ago", func() *http.Request {
			req := get(token)
			sign(t, req, akidLocal, "execute-api", "us-east-1", clock.Add(-4*time.Minute), nil)
			return req
		}, 200, "", ""},
		{"no Authorization header", func() *http.Request { return get(token) }, 401, "unauthorized", "SigV4"},
		{"a bearer token instead", func() *http.Request {
			req := get(token)
			req.Header.Set("Authorization", "Bearer abc")
			return req
		}, 401, "unauthorized", "SigV4"},
		{"malformed SigV4 header", func() *http.Request {
			req := get(token)
			req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDLOCAL, Signature=abc")
			return req
		}, 403, "forbidden", "Credential"},
		{"wrong secret", func() *http.Request {
			req := get(token)
			sign(t, req, aws.Credentials{AccessKeyID: "AKIDLOCAL", SecretAccessKey: "guess"}, "execute-api", "us-east-1", clock, nil)
			return req
		}, 403, "forbidden", "signature we calculated does not match"},
		{"unknown access key", func() *http.Request {
			req := get(token)
			sign(t, req, aws.Credentials{AccessKeyID: "AKIDOTHER", SecretAccessKey: "local-secret"}, "execute-api", "us-east-1", clock, nil)
			return req
		}, 403, "forbidden", "security token"},
		{"wrong service", func() *http.Request {
			req := get(token)
			sign(t, req, akidLocal, "lambda", "us-east-1", clock, nil)
			return req
		}, 403, "forbidden", "execute-api"},
		{"wrong region", func() *http.Request {
			req := get(token)
			sign(t, req, akidLocal, "execute-api", "eu-west-1", clock, nil)
			return req
		}, 403, "forbidden", "region"},
		{"X-Amz-Date removed", func() *http.Request {
			req := get(token)
			sign(t, req, akidLocal, "execute-api", "us-east-1", clock, nil)
			req.Header.Del("X-Amz-Date")
			return req
		}, 403, "forbidden", "X-Amz-Date"},
		{"X-Amz-Date changed after signing", func() *http.Request {
			req := get(token)
			sign(t, req, akidLocal, "execute-api", "us-east-1", clock, nil)
			req.Header.Set("X-Amz-Date", clock.Add(time.Minute).Format("20060102T150405Z"))
			return req
		}, 403, "forbidden", "does not match"},
		{"signed six minutes ago", func() *http.Request {
			req := get(token)
			sign(t, req, akidLocal, "execute-api", "us-east-1", clock.Add(-6*time.Minute), nil)
			return req
		}, 403, "forbidden", "Signature expired"},
		{"signed six minutes ahead", func() *http.Request {
			req := get(token)
			sign(t, req, akidLocal, "execute-api", "us-east-1", clock.Add(6*time.Minute), nil)
			return req
		}, 403, "forbidden", "not yet current"},
		{"query changed after signing", func() *http.Request {
			req := get(token)
			sign(t, req, akidLocal, "execute-api", "us-east-1", clock, nil)
			req.URL.RawQuery = "min_ttl=3000"
			return req
		}, 403, "forbidden", "does not match"},
		{"path changed after signing", func() *http.Request {
			req := get(token)
			sign(t, req, akidLocal, "execute-api", "us-east-1", clock, nil)
			req.URL.Path = "/connections/gh/bob/token"
			return req
		}, 403, "forbidden", "does not match"},
		{"body changed after signing", func() *http.Request {
			req := post(authorize, `{"scopes":["admin"]}`)
			sign(t, req, akidLocal, "execute-api", "us-east-1", clock, []byte(`{"scopes":["read"]}`))
			return req
		}, 403, "forbidden", "does not match"},
		{"session token missing", func() *http.Request {
			req := get(token)
			sign(t, req, aws.Credentials{AccessKeyID: "ASIALOCAL", SecretAccessKey: "session-secret"}, "execute-api", "us-east-1", clock, nil)
			return req
		}, 403, "forbidden", "security token"},
		{"session token replaced", func() *http.Request {
			req := get(token)
			sign(t, req, sessionUser, "execute-api", "us-east-1", clock, nil)
			req.Header.Set("X-Amz-Security-Token", "another-token")
			return req
		}, 403, "forbidden", "security token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := invokes.Load()
			resp, err := http.DefaultClient.Do(tc.request())
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.status == 200 {
				if got := invokes.Load() - before; got != 1 {
					t.Fatalf("%d invokes, want 1", got)
				}
				var ev events.APIGatewayV2HTTPRequest
				if err := json.Unmarshal(body, &ev); err != nil || ev.RequestContext.Authorizer == nil || ev.RequestContext.Authorizer.IAM == nil {
					t.Fatalf("event without an IAM caller: %s", body)
				}
				return
			}
			if got := invokes.Load() - before; got != 0 {
				t.Fatalf("a refused request reached the function (%d invokes)", got)
			}
			var e struct{ Error, Message string }
			if err := json.Unmarshal(body, &e); err != nil || e.Error != tc.code || !strings.Contains(e.Message, tc.message) {
				t.Fatalf("body %s, want error %q with %q", body, tc.code, tc.message)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
		})
	}
}

// TestSigV4FromCurl checks that the curl line make dev prints works
// against the verifier, and that the default credentials are local:local.
func TestSigV4FromCurl(t *testing.T) {
	if out, err := exec.Command("curl", "--help", "all").Output(); err != nil || !bytes.Contains(out, []byte("--aws-sigv4")) {
		t.Skip("curl with --aws-sigv4 is not installed")
	}
	srv, invokes := echoFront(t, nil, nil)
	curl := func(user string, args ...string) string {
		t.Helper()
		argv := append([]string{"-s", "-o", "/dev/null", "-w", "%{http_code}", "--aws-sigv4", "aws:amz:us-east-1:execute-api", "--user", user}, args...)
		out, err := exec.Command("curl", argv...).Output()
		if err != nil {
			t.Fatalf("curl %v: %v", argv, err)
		}
		return string(out)
	}
	if got := curl("local:local", srv.URL+"/connections/wechat-mp/app/token?min_ttl=300"); got != "200" {
		t.Fatalf("curl GET: %s", got)
	}
	if got := curl("local:local", "-X", "POST", "-H", "Content-Type: application/json", "--data", `{"scopes":["read"]}`, srv.URL+"/connections/gh/alice/authorize"); got != "200" {
		t.Fatalf("curl POST: %s", got)
	}
	if got := curl("local:wrong", srv.URL+"/connections/wechat-mp/app/token"); got != "403" {
		t.Fatalf("curl with a wrong secret: %s", got)
	}
	if got := invokes.Load(); got != 2 {
		t.Fatalf("%d invokes, want 2", got)
	}
}
