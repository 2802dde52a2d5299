package httpapi_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/httpapi"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// countingCore answers every call with success and counts the calls: a
// refused path must reach none of them (so no store or config access).
func countingCore(calls *int) *fakeCore {
	ok := func(k store.Key) *broker.Status { return &broker.Status{Key: k, Status: store.StatusActive} }
	return &fakeCore{
		start: func(broker.AuthorizeRequest) (*broker.AuthorizeResult, error) {
			*calls++
			return &broker.AuthorizeResult{AuthorizeURL: "https://p.example/auth"}, nil
		},
		complete: func(r broker.CallbackRequest) (*broker.CallbackResult, error) {
			*calls++
			return &broker.CallbackResult{Key: store.Key{Provider: r.Provider, Connection: "alice"}}, nil
		},
		token: func(r broker.TokenRequest) (*broker.Token, error) {
			*calls++
			return &broker.Token{Key: r.Key, AccessToken: "t", TokenType: "Bearer"}, nil
		},
		list: func(r broker.ListRequest) (*broker.ListPage, error) {
			*calls++
			return &broker.ListPage{Provider: r.Provider}, nil
		},
		imp:     func(r broker.ImportRequest) (*broker.Status, bool, error) { *calls++; return ok(r.Key), true, nil },
		confirm: func(r broker.ConfirmRequest) (*broker.Status, error) { *calls++; return ok(r.Key), nil },
		status:  func(k store.Key) (*broker.Status, error) { *calls++; return ok(k), nil },
		del:     func(store.Key) error { *calls++; return nil },
	}
}

type routeCase struct {
	key     string // routeKey
	path    string // its canonical raw path for github/alice
	handler string
	body    string
}

var everyRoute = []routeCase{
	{"POST /connections/{provider}/{connection}/authorize", "/connections/github/alice/authorize", "authorize", `{}`},
	{"GET /callback/{provider}", "/callback/github", "callback", ""},
	{"GET /connections/{provider}", "/connections/github", "connections", ""},
	{"GET /connections/{provider}/{connection}", "/connections/github/alice", "connections", ""},
	{"GET /connections/{provider}/{connection}/token", "/connections/github/alice/token", "connections", ""},
	{"POST /connections/{provider}/{connection}/refresh", "/connections/github/alice/refresh", "connections", ""},
	{"PUT /connections/{provider}/{connection}", "/connections/github/alice", "connections", `{"access_token":"a","expires_in":3600}`},
	{"DELETE /connections/{provider}/{connection}", "/connections/github/alice", "connections", ""},
	{"POST /connections/{provider}/{connection}/confirm", "/connections/github/alice/confirm", "connections", `{"connect_id":"xxxxxxxxxxxxxxxxxxxxxxxx"}`},
}

// event is an HTTP API event for rc with rawPath path. apiGateway: the
// routeKey and the decoded pathParameters API Gateway would send along
// (github, and alice where the route has a connection); otherwise a
// hand-built event with neither, whose parameters come from the path.
func (rc routeCase) event(t *testing.T, path string, apiGateway bool) json.RawMessage {
	t.Helper()
	ev := loadEvent(t, "token.json")
	method, _, _ := strings.Cut(rc.key, " ")
	ev["rawPath"] = path
	ev["requestContext"].(map[string]any)["http"].(map[string]any)["method"] = method
	ev["body"] = rc.body
	delete(ev, "queryStringParameters")
	if rc.handler == "callback" {
		ev["rawQueryString"] = "code=c&state=s"
	}
	delete(ev, "routeKey")
	delete(ev, "pathParameters")
	if apiGateway {
		ev["routeKey"] = rc.key
		params := map[string]any{"provider": "github"}
		if strings.Contains(rc.key, "{connection}") {
			params["connection"] = "alice"
		}
		ev["pathParameters"] = params
	}
	return marshal(t, ev)
}

func (rc routeCase) serve(h *httpapi.Handler, raw json.RawMessage) (httpapi.Response, error) {
	switch rc.handler {
	case "authorize":
		return h.Authorize(context.Background(), raw)
	case "callback":
		return h.Callback(context.Background(), raw)
	}
	return h.Connections(context.Background(), raw)
}

// lastSlash replaces the last "/" of p with with.
func lastSlash(p, with string) string {
	i := strings.LastIndexByte(p, '/')
	return p[:i] + with + p[i+1:]
}

// upperLastWord writes the last literal word of the path (token, refresh,
// …, or connections/callback where the path ends in a parameter) in
// upper case.
func upperLastWord(p string) string {
	segs := strings.Split(p, "/")
	last := len(segs) - 1
	if segs[last] == "github" || segs[last] == "alice" {
		last = 1
	}
	segs[last] = strings.ToUpper(segs[last])
	return strings.Join(segs, "/")
}

// TestNonCanonicalPathsAreRefused: for every route, a raw path that is not
// exactly the canonical form of the route and its parameters is a 400
// bad_request that reaches the core zero times — both as API Gateway
// sends it (routeKey and decoded pathParameters that name github/alice)
// and as a hand-built event with parameters taken from the path. The
// canonical path itself is served, reaching the core exactly once.
func TestNonCanonicalPathsAreRefused(t *testing.T) {
	variants := []struct {
		name string
		of   func(string) string
	}{
		{"trailing slash", func(p string) string { return p + "/" }},
		{"two trailing slashes", func(p string) string { return p + "//" }},
		{"percent-encoded letter", func(p string) string { return strings.Replace(p, "github", "git%68ub", 1) }},
		{"percent-encoded first letter", func(p string) string { return strings.Replace(p, "github", "%67ithub", 1) }},
		{"percent-encoded route word", func(p string) string { return strings.Replace(p, "/c", "/%63", 1) }},
		{"encoded slash", func(p string) string { return lastSlash(p, "%2F") }},
		{"encoded slash, lower case", func(p string) string { return lastSlash(p, "%2f") }},
		{"encoded slash before the provider", func(p string) string { return strings.Replace(p, "/github", "%2Fgithub", 1) }},
		{"leading double slash", func(p string) string { return "/" + p }},
		{"inner double slash", func(p string) string { return strings.Replace(p, "/github", "//github", 1) }},
		{"dot segment", func(p string) string { return strings.Replace(p, "/github", "/./github", 1) }},
		{"dot segment at the end", func(p string) string { return p + "/." }},
		{"dot-dot segment", func(p string) string { return strings.Replace(p, "/github", "/other/../github", 1) }},
		{"encoded dot-dot segment", func(p string) string { return strings.Replace(p, "/github", "/other/%2e%2e/github", 1) }},
		{"route word in capitals", func(p string) string { return strings.Replace(p, "/c", "/C", 1) }},
		{"last route word in upper case", upperLastWord},
	}
	for _, rc := range everyRoute {
		for _, v := range variants {
			path := v.of(rc.path)
			if path == rc.path {
				t.Fatalf("%s on %s: the variant is the canonical path", v.name, rc.key)
			}
			for _, apiGateway := range []bool{true, false} {
				calls := 0
				h := &httpapi.Handler{Core: countingCore(&calls)}
				resp, err := rc.serve(h, rc.event(t, path, apiGateway))
				if err != nil {
					t.Fatalf("%s %q: %v", rc.key, path, err)
				}
				if resp.StatusCode != 400 || !strings.Contains(resp.Body, `"bad_request"`) || calls != 0 {
					t.Errorf("%s, %s %q (routeKey and pathParameters: %v): %d, core reached %d times: %s",
						v.name, rc.key, path, apiGateway, resp.StatusCode, calls, resp.Body)
				}
			}
		}
		for _, apiGateway := range []bool{true, false} {
			calls := 0
			h := &httpapi.Handler{Core: countingCore(&calls)}
			resp, _ := rc.serve(h, rc.event(t, rc.path, apiGateway))
			if resp.StatusCode >= 400 || calls != 1 {
				t.Errorf("canonical %s %s (routeKey and pathParameters: %v): %d, core reached %d times: %s",
					rc.key, rc.path, apiGateway, resp.StatusCode, calls, resp.Body)
			}
		}
	}
}

// TestPathParametersMustMatchThePath: API Gateway decodes pathParameters;
// when they name something other than the raw path does (or a dot
// segment the path spells out as it is), the request is refused unread.
func TestPathParametersMustMatchThePath(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		params     map[string]any
		want       int
	}{
		{"parameters name another provider", "/connections/github/alice/token", map[string]any{"provider": "gitlab", "connection": "alice"}, 400},
		{"parameters name another connection", "/connections/github/alice/token", map[string]any{"provider": "github", "connection": "bob"}, 400},
		{"connection is ..", "/connections/github/../token", map[string]any{"provider": "github", "connection": ".."}, 400},
		{"connection is .", "/connections/github/./token", map[string]any{"provider": "github", "connection": "."}, 400},
		{"a dot inside a name is fine", "/connections/github/a.b/token", map[string]any{"provider": "github", "connection": "a.b"}, 200},
		{"a named stage prefixes the raw path", "/prod/connections/github/alice/token", map[string]any{"provider": "github", "connection": "alice"}, 200},
		{"an API mapping key prefixes the raw path", "/v1/broker/connections/github/alice/token", map[string]any{"provider": "github", "connection": "alice"}, 200},
		{"a prefix with a dot segment", "/./connections/github/alice/token", map[string]any{"provider": "github", "connection": "alice"}, 400},
		{"a prefix with an empty segment", "/v1//connections/github/alice/token", map[string]any{"provider": "github", "connection": "alice"}, 400},
		{"a prefix with an escape", "/v%31/connections/github/alice/token", map[string]any{"provider": "github", "connection": "alice"}, 400},
	} {
		calls := 0
		h := &httpapi.Handler{Core: countingCore(&calls)}
		ev := loadEvent(t, "token.json")
		ev["rawPath"], ev["pathParameters"] = tc.path, tc.params
		delete(ev, "queryStringParameters")
		resp, _ := h.Connections(context.Background(), marshal(t, ev))
		wantCalls := 0
		if tc.want == 200 {
			wantCalls = 1
		}
		if resp.StatusCode != tc.want || calls != wantCalls {
			t.Errorf("%s: %d with %d core calls, want %d with %d: %s", tc.name, resp.StatusCode, calls, tc.want, wantCalls, resp.Body)
		}
	}
}
