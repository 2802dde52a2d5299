package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/httpapi"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// fakeCore is the seam under the mapping: the mapping is what is tested
// here, the core is tested against real stand-ins elsewhere.
type fakeCore struct {
	start    func(broker.AuthorizeRequest) (*broker.AuthorizeResult, error)
	complete func(broker.CallbackRequest) (*broker.CallbackResult, error)
	token    func(broker.TokenRequest) (*broker.Token, error)
	list     func(broker.ListRequest) (*broker.ListPage, error)
	imp      func(broker.ImportRequest) (*broker.Status, bool, error)
	confirm  func(broker.ConfirmRequest) (*broker.Status, error)
	status   func(store.Key) (*broker.Status, error)
	del      func(store.Key) error
}

func (f *fakeCore) StartAuthorization(_ context.Context, r broker.AuthorizeRequest) (*broker.AuthorizeResult, error) {
	return f.start(r)
}
func (f *fakeCore) CompleteAuthorization(_ context.Context, r broker.CallbackRequest) (*broker.CallbackResult, error) {
	return f.complete(r)
}
func (f *fakeCore) Token(_ context.Context, r broker.TokenRequest) (*broker.Token, error) {
	return f.token(r)
}
func (f *fakeCore) Status(_ context.Context, k store.Key) (*broker.Status, error) { return f.status(k) }
func (f *fakeCore) Delete(_ context.Context, k store.Key, _ string) error         { return f.del(k) }
func (f *fakeCore) Confirm(_ context.Context, r broker.ConfirmRequest) (*broker.Status, error) {
	return f.confirm(r)
}
func (f *fakeCore) List(_ context.Context, r broker.ListRequest) (*broker.ListPage, error) {
	return f.list(r)
}
func (f *fakeCore) Import(_ context.Context, r broker.ImportRequest) (*broker.Status, bool, error) {
	return f.imp(r)
}

func loadEvent(t *testing.T, name string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "events", name))
	if err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	if err := json.Unmarshal(raw, &ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

func marshal(t *testing.T, ev map[string]any) json.RawMessage {
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestErrorCodeTable(t *testing.T) {
	want := map[broker.Code]int{
		broker.CodeBadRequest: 400, broker.CodeUnauthorized: 401, broker.CodeForbidden: 403, broker.CodeNotFound: 404,
		broker.CodeNeedsReauth: 409, broker.CodeConflict: 409, broker.CodeProviderError: 502, broker.CodeProviderUnavailable: 503, broker.CodeInternal: 500,
	}
	for code, status := range want {
		core := &fakeCore{token: func(broker.TokenRequest) (*broker.Token, error) { return nil, broker.Errorf(code, "msg for %s", code) }}
		h := &httpapi.Handler{Core: core}
		resp, err := h.Connections(context.Background(), marshal(t, loadEvent(t, "token.json")))
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]string
		_ = json.Unmarshal([]byte(resp.Body), &body)
		if resp.StatusCode != status || body["error"] != string(code) || body["message"] != "msg for "+string(code) {
			t.Errorf("%s: %d %s", code, resp.StatusCode, resp.Body)
		}
	}
	// Anything that is not an application error is "internal error", with no detail.
	core := &fakeCore{token: func(broker.TokenRequest) (*broker.Token, error) {
		return nil, errors.New("dynamodb: connection refused at 10.0.0.1 secret=abc")
	}}
	resp, _ := (&httpapi.Handler{Core: core}).Connections(context.Background(), marshal(t, loadEvent(t, "token.json")))
	if resp.StatusCode != 500 || strings.Contains(resp.Body, "dynamodb") || !strings.Contains(resp.Body, `"internal"`) {
		t.Fatalf("internal error leaked: %s", resp.Body)
	}
}

func TestTokenRouteShapesAndParameters(t *testing.T) {
	var got broker.TokenRequest
	exp := time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)
	core := &fakeCore{token: func(r broker.TokenRequest) (*broker.Token, error) {
		got = r
		return &broker.Token{Key: r.Key, AccessToken: "tok", TokenType: "Bearer", ExpiresAt: exp, Extra: map[string]string{"openid": "o"}}, nil
	}}
	h := &httpapi.Handler{Core: core}
	resp, _ := h.Connections(context.Background(), marshal(t, loadEvent(t, "token.json")))
	if resp.StatusCode != 200 || resp.Headers["Cache-Control"] != "no-store" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Headers)
	}
	var body map[string]any
	_ = json.Unmarshal([]byte(resp.Body), &body)
	if body["expires_at"] != "2026-11-23T14:00:00Z" || body["access_token"] != "tok" || body["provider"] != "wechat-mp" || body["connection"] != "app" {
		t.Fatalf("body %s", resp.Body)
	}
	for _, field := range []string{"provider", "connection", "access_token", "token_type", "expires_at", "scope", "extra"} {
		if _, ok := body[field]; !ok {
			t.Fatalf("field %s missing: %s", field, resp.Body)
		}
	}
	if got.MinTTL != 300*time.Second || got.Caller != "arn:aws:iam::123456789012:role/orders-service" || got.Force {
		t.Fatalf("request %+v", got)
	}
	refresh := loadEvent(t, "refresh.json")
	_, _ = h.Connections(context.Background(), marshal(t, refresh))
	if !got.Force {
		t.Fatal("POST …/refresh did not force")
	}
	for _, bad := range []string{"-1", "86401", "1.5", "x"} {
		ev := loadEvent(t, "token.json")
		ev["queryStringParameters"] = map[string]any{"min_ttl": bad}
		resp, _ := h.Connections(context.Background(), marshal(t, ev))
		if resp.StatusCode != 400 {
			t.Errorf("min_ttl=%s: %d", bad, resp.StatusCode)
		}
	}
}

func TestMalformedEventsAndIAM(t *testing.T) {
	core := &fakeCore{token: func(broker.TokenRequest) (*broker.Token, error) { t.Fatal("core reached"); return nil, nil }}
	h := &httpapi.Handler{Core: core}
	for name, raw := range map[string]string{
		"not an object":  `[1,2]`,
		"wrong types":    `{"requestContext":{"http":{"method":7}}}`,
		"no method":      `{"rawPath":"/connections/a/b/token"}`,
		"schedule event": `{"source":"aws.events","detail":{}}`,
	} {
		resp, err := h.Connections(context.Background(), json.RawMessage(raw))
		if err != nil || resp.StatusCode != 400 {
			t.Errorf("%s: %d %v", name, resp.StatusCode, err)
		}
	}
	resp, _ := h.Connections(context.Background(), marshal(t, loadEvent(t, "token-no-iam.json")))
	if resp.StatusCode != 401 {
		t.Fatalf("no IAM: %d", resp.StatusCode)
	}
	ev := loadEvent(t, "token.json")
	ev["pathParameters"] = map[string]any{"provider": "wechat-mp", "connection": "a/b"}
	if resp, _ := h.Connections(context.Background(), marshal(t, ev)); resp.StatusCode != 400 {
		t.Fatalf("bad connection: %d", resp.StatusCode)
	}
}

func TestAuthorizeBody(t *testing.T) {
	var got broker.AuthorizeRequest
	core := &fakeCore{start: func(r broker.AuthorizeRequest) (*broker.AuthorizeResult, error) {
		got = r
		return &broker.AuthorizeResult{AuthorizeURL: "https://p/auth", StateExpiresAt: time.Date(2026, 1, 1, 0, 10, 0, 0, time.UTC)}, nil
	}}
	h := &httpapi.Handler{Core: core}
	resp, _ := h.Authorize(context.Background(), marshal(t, loadEvent(t, "authorize.json")))
	if resp.StatusCode != 200 || !strings.Contains(resp.Body, `"state_expires_at":"2026-01-01T00:10:00Z"`) {
		t.Fatalf("%d %s", resp.StatusCode, resp.Body)
	}
	if got.Key.Connection != "alice" || len(got.Scopes) != 1 || got.RequestBase != "https://abc123.execute-api.us-east-1.amazonaws.com" {
		t.Fatalf("request %+v", got)
	}
	for _, body := range []string{`{"scopes":"x"}`, `{"unknown":1}`, `not json`, `{"scopes":[1]}`} {
		ev := loadEvent(t, "authorize.json")
		ev["body"] = body
		if resp, _ := h.Authorize(context.Background(), marshal(t, ev)); resp.StatusCode != 400 {
			t.Errorf("body %s: %d", body, resp.StatusCode)
		}
	}
	ev := loadEvent(t, "authorize.json")
	ev["body"] = "eyJzY29wZXMiOlsiYSJdfQ==" // {"scopes":["a"]}
	ev["isBase64Encoded"] = true
	if resp, _ := h.Authorize(context.Background(), marshal(t, ev)); resp.StatusCode != 200 || got.Scopes[0] != "a" {
		t.Errorf("base64 body: %d %+v", resp.StatusCode, got)
	}
}

func TestCallbackRedirects(t *testing.T) {
	core := &fakeCore{complete: func(r broker.CallbackRequest) (*broker.CallbackResult, error) {
		if r.State == "bad" {
			return nil, broker.Errorf(broker.CodeBadRequest, "start again")
		}
		res := &broker.CallbackResult{Key: store.Key{Provider: r.Provider, Connection: "alice"}, ReturnTo: "https://app.example.com/done?keep=1"}
		if r.Error != "" {
			res.Err = broker.Errorf(broker.CodeForbidden, "denied")
		}
		return res, nil
	}}
	h := &httpapi.Handler{Core: core}
	ev := loadEvent(t, "callback.json")
	resp, _ := h.Callback(context.Background(), marshal(t, ev))
	loc, _ := url.Parse(resp.Headers["Location"])
	if resp.StatusCode != http.StatusFound || loc.Query().Get("status") != "connected" || loc.Query().Get("keep") != "1" {
		t.Fatalf("%d %s", resp.StatusCode, resp.Headers["Location"])
	}
	ev["rawQueryString"] = "error=access_denied&state=s"
	resp, _ = h.Callback(context.Background(), marshal(t, ev))
	loc, _ = url.Parse(resp.Headers["Location"])
	if loc.Query().Get("status") != "error" || loc.Query().Get("error") != "forbidden" {
		t.Fatalf("denied: %s", resp.Headers["Location"])
	}
	ev["rawQueryString"] = "code=c&state=bad"
	resp, _ = h.Callback(context.Background(), marshal(t, ev))
	if resp.StatusCode != 400 || !strings.Contains(resp.Headers["Content-Type"], "text/html") || !strings.Contains(resp.Body, "start again") {
		t.Fatalf("bad state for a browser: %d %s", resp.StatusCode, resp.Body)
	}
}

// POST …/refresh takes an optional {"rejected_token"} under the strict
// body rules; a 503 that knows when the broker tries again says so in
// Retry-After (whole seconds, rounded up); not_refreshable is a 409.
func TestRefreshBodyRetryAfterAndNotRefreshable(t *testing.T) {
	var got broker.TokenRequest
	var answer error
	core := &fakeCore{token: func(r broker.TokenRequest) (*broker.Token, error) {
		got = r
		if answer != nil {
			return nil, answer
		}
		return &broker.Token{Key: r.Key, AccessToken: "new"}, nil
	}}
	h := &httpapi.Handler{Core: core}
	send := func(body string) httpapi.Response {
		ev := loadEvent(t, "refresh.json")
		ev["body"] = body
		got = broker.TokenRequest{}
		resp, _ := h.Connections(context.Background(), marshal(t, ev))
		return resp
	}
	if resp := send(`{"rejected_token":"old-token"}`); resp.StatusCode != 200 || !got.Force || got.Rejected != "old-token" {
		t.Fatalf("named: %d %+v", resp.StatusCode, got)
	}
	if resp := send(""); resp.StatusCode != 200 || !got.Force || got.Rejected != "" {
		t.Fatalf("no body: %d %+v", resp.StatusCode, got)
	}
	for _, bad := range []string{`{"rejected_token":""}`, `{"rejected_token":1}`, `{"token":"x"}`, `{"rejected_token":"a","rejected_token":"b"}`, `{"rejected_token":"a"} {}`, `[]`} {
		if resp := send(bad); resp.StatusCode != 400 || strings.Contains(resp.Body, `"a"`) {
			t.Errorf("body %s: %d %s", bad, resp.StatusCode, resp.Body)
		}
	}
	answer = &broker.Error{Code: broker.CodeProviderUnavailable, Message: "later", RetryAfter: 1300 * time.Millisecond}
	if resp := send(""); resp.StatusCode != 503 || resp.Headers["Retry-After"] != "2" {
		t.Fatalf("503: %d %v", resp.StatusCode, resp.Headers)
	}
	answer = broker.Errorf(broker.CodeProviderUnavailable, "no idea when")
	if resp := send(""); resp.StatusCode != 503 || resp.Headers["Retry-After"] != "" {
		t.Fatalf("503 without a known time: %v", resp.Headers)
	}
	answer = broker.Errorf(broker.CodeNotRefreshable, "no refresh token")
	if resp := send(""); resp.StatusCode != 409 || !strings.Contains(resp.Body, `"not_refreshable"`) {
		t.Fatalf("not_refreshable: %d %s", resp.StatusCode, resp.Body)
	}
}

// PUT /connections/{p}/{c} passes "replace" to the core and maps its
// answers: 201 created, 200 replaced, 409 conflict without replace.
func TestImportReplacePrecondition(t *testing.T) {
	exists := map[string]bool{"alice": true}
	var got []broker.ImportRequest
	core := &fakeCore{imp: func(r broker.ImportRequest) (*broker.Status, bool, error) {
		got = append(got, r)
		if exists[r.Key.Connection] && !r.Replace {
			return nil, false, broker.Errorf(broker.CodeConflict, "connection exists")
		}
		return &broker.Status{Key: r.Key, Status: store.StatusActive}, !exists[r.Key.Connection], nil
	}}
	h := &httpapi.Handler{Core: core}
	for _, tc := range []struct {
		conn, body string
		status     int
		replace    bool
	}{
		{"alice", `{"access_token":"a"}`, 409, false},
		{"alice", `{"access_token":"a","replace":false}`, 409, false},
		{"alice", `{"access_token":"a","replace":true}`, 200, true},
		{"bob", `{"access_token":"a"}`, 201, false},
		{"bob", `{"access_token":"a","replace":true}`, 201, true},
	} {
		got = nil
		ev := loadEvent(t, "authorize.json")
		ev["body"] = tc.body
		ev["rawPath"] = "/connections/oauth2/" + tc.conn
		ev["pathParameters"] = map[string]any{"provider": "oauth2", "connection": tc.conn}
		ev["requestContext"].(map[string]any)["http"].(map[string]any)["method"] = "PUT"
		resp, err := h.Connections(context.Background(), marshal(t, ev))
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		_ = json.Unmarshal([]byte(resp.Body), &body)
		if resp.StatusCode != tc.status || len(got) != 1 || got[0].Replace != tc.replace {
			t.Errorf("%s %s: %d %s (core saw %+v)", tc.conn, tc.body, resp.StatusCode, resp.Body, got)
		}
		if tc.status == 409 && body["error"] != "conflict" {
			t.Errorf("%s %s: error %v, want conflict", tc.conn, tc.body, body["error"])
		}
	}
}

// review2: spellings of "replace" and of extra that are not
// the documented ones never reach the core; a 409's body names no token.
func TestImportReviewImportBodyTricks(t *testing.T) {
	var got []broker.ImportRequest
	core := &fakeCore{imp: func(r broker.ImportRequest) (*broker.Status, bool, error) {
		got = append(got, r)
		if !r.Replace {
			return nil, false, broker.Errorf(broker.CodeConflict, "connection exists")
		}
		return &broker.Status{Key: r.Key, Status: store.StatusActive}, false, nil
	}}
	h := &httpapi.Handler{Core: core}
	for _, tc := range []struct {
		body   string
		status int
	}{
		{`{"access_token":"SECRET-AT-0123456789","Replace":true}`, 400},
		{`{"access_token":"SECRET-AT-0123456789","REPLACE":true}`, 400},
		{`{"access_token":"SECRET-AT-0123456789","replace":"true"}`, 400},
		{`{"access_token":"SECRET-AT-0123456789","replace":1}`, 400},
		{`{"access_token":"SECRET-AT-0123456789","replace":true,"replace":false}`, 400},
		{`{"access_token":"SECRET-AT-0123456789","replace":false,"replace":true}`, 400},
		{`{"access_token":"SECRET-AT-0123456789","Extra":{"sub":"x"},"replace":true}`, 400},
		{`{"access_token":"SECRET-AT-0123456789","extra":{"sub":"x","sub":"y"},"replace":true}`, 400},
		{`{"access_token":"SECRET-AT-0123456789","replace":null}`, 409},
		{`{"access_token":"SECRET-AT-0123456789"}`, 409},
	} {
		got = nil
		ev := loadEvent(t, "authorize.json")
		ev["body"] = tc.body
		ev["rawPath"] = "/connections/oauth2/alice"
		ev["pathParameters"] = map[string]any{"provider": "oauth2", "connection": "alice"}
		ev["requestContext"].(map[string]any)["http"].(map[string]any)["method"] = "PUT"
		resp, err := h.Connections(context.Background(), marshal(t, ev))
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.body, resp.StatusCode, resp.Body, tc.status)
		}
		if tc.status == 400 && len(got) != 0 {
			t.Errorf("%s: reached the core: %+v", tc.body, got)
		}
		if strings.Contains(resp.Body, "SECRET-AT") {
			t.Errorf("%s: answer holds the token: %s", tc.body, resp.Body)
		}
	}
}
