package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/httpapi"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// documented is every error code and the status it must travel with.
var documented = map[string]int{
	"bad_request": 400, "unauthorized": 401, "forbidden": 403, "not_found": 404, "needs_reauth": 409,
	"provider_error": 502, "provider_unavailable": 503, "internal": 500,
}

// anyCore answers every call, succeeding or failing with some code
// depending on what it was asked, so the fuzzer reaches both paths.
func anyCore() *fakeCore {
	codes := []broker.Code{broker.CodeBadRequest, broker.CodeNotFound, broker.CodeNeedsReauth, broker.CodeProviderError,
		broker.CodeProviderUnavailable, broker.CodeInternal}
	pick := func(s string) error {
		if len(s)%3 == 0 {
			return nil
		}
		return broker.Errorf(codes[len(s)%len(codes)], "failed: %s", s)
	}
	status := func(k store.Key) *broker.Status {
		return &broker.Status{Key: k, Status: store.StatusActive, ExpiresAt: time.Unix(2000000000, 0)}
	}
	return &fakeCore{
		start: func(r broker.AuthorizeRequest) (*broker.AuthorizeResult, error) {
			if err := pick(r.Key.Connection); err != nil {
				return nil, err
			}
			return &broker.AuthorizeResult{AuthorizeURL: "https://p.example/auth?state=x", StateExpiresAt: time.Unix(2000000000, 0)}, nil
		},
		complete: func(r broker.CallbackRequest) (*broker.CallbackResult, error) {
			if err := pick(r.State); err != nil {
				return nil, err
			}
			res := &broker.CallbackResult{Key: store.Key{Provider: r.Provider, Connection: "c"}, ReturnTo: r.Code}
			if len(r.Code)%2 == 1 {
				res.Err = broker.Errorf(broker.CodeForbidden, "denied")
			}
			return res, nil
		},
		token: func(r broker.TokenRequest) (*broker.Token, error) {
			if err := pick(r.Key.Connection); err != nil {
				return nil, err
			}
			return &broker.Token{Key: r.Key, AccessToken: "t", TokenType: "Bearer"}, nil
		},
		status: func(k store.Key) (*broker.Status, error) { return status(k), pick(k.Connection) },
		del:    func(k store.Key) error { return pick(k.Connection) },
		list: func(r broker.ListRequest) (*broker.ListPage, error) {
			return &broker.ListPage{Provider: r.Provider}, pick(r.Cursor)
		},
		imp: func(r broker.ImportRequest) (*broker.Status, bool, error) {
			return status(r.Key), len(r.AccessToken)%2 == 0, pick(r.AccessToken)
		},
		confirm: func(r broker.ConfirmRequest) (*broker.Status, error) { return status(r.Key), pick(r.ConnectID) },
	}
}

// FuzzHandlers feeds arbitrary events to every handler. None may panic or
// fail the invocation, and every answer is a JSON success, a JSON error
// with a documented code and its status, or (from the callback only) a
// redirect or an HTML page with its security headers. The seed corpus is
// every sample event under events/ plus testdata/fuzz/FuzzHandlers.
func FuzzHandlers(f *testing.F) {
	samples, _ := filepath.Glob(filepath.Join("..", "..", "events", "*.json"))
	for _, p := range samples {
		if raw, err := os.ReadFile(p); err == nil && !strings.HasSuffix(p, "env.json") {
			f.Add(raw)
		}
	}
	h := &httpapi.Handler{Core: anyCore(), AllowedAccounts: nil}
	handlers := map[string]func(context.Context, json.RawMessage) (httpapi.Response, error){
		"authorize": h.Authorize, "callback": h.Callback, "connections": h.Connections,
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		for name, handle := range handlers {
			resp, err := handle(context.Background(), raw)
			if err != nil {
				t.Fatalf("%s: the handler failed the invocation: %v", name, err)
			}
			checkAnswer(t, name, resp)
		}
	})
}

func checkAnswer(t *testing.T, handler string, resp httpapi.Response) {
	t.Helper()
	ct := resp.Headers["Content-Type"]
	switch {
	case resp.StatusCode == http.StatusFound && handler == "callback":
		if resp.Headers["Location"] == "" {
			t.Fatalf("redirect without a Location")
		}
	case strings.HasPrefix(ct, "text/html") && handler == "callback":
		for _, h := range []string{"Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options"} {
			if resp.Headers[h] == "" {
				t.Fatalf("HTML page without %s", h)
			}
		}
		if !strings.Contains(resp.Headers["Content-Security-Policy"], "frame-ancestors 'none'") {
			t.Fatalf("CSP %q", resp.Headers["Content-Security-Policy"])
		}
	case resp.StatusCode == http.StatusNoContent:
		if resp.Body != "" {
			t.Fatalf("204 with a body")
		}
	case ct == "application/json":
		var body map[string]any
		if err := json.Unmarshal([]byte(resp.Body), &body); err != nil {
			t.Fatalf("%s answered %d with a body that is not a JSON object: %.200s", handler, resp.StatusCode, resp.Body)
		}
		if resp.StatusCode >= 400 {
			code, _ := body["error"].(string)
			if want, ok := documented[code]; !ok || want != resp.StatusCode || body["message"] == "" {
				t.Fatalf("%s answered %d with %v: not a documented error", handler, resp.StatusCode, body)
			}
		} else if resp.StatusCode != 200 && resp.StatusCode != 201 {
			t.Fatalf("%s answered %d", handler, resp.StatusCode)
		}
		if resp.Headers["Cache-Control"] != "no-store" || resp.Headers["X-Content-Type-Options"] != "nosniff" {
			t.Fatalf("%s JSON answer headers %v", handler, resp.Headers)
		}
	default:
		t.Fatalf("%s answered %d with %q", handler, resp.StatusCode, ct)
	}
}
