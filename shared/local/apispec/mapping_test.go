package apispec_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/httpapi"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// core answers every call with canned results, or with err: the seam
// under the HTTP mapping, whose answers are what is checked here.
type core struct {
	err     error
	auth    *broker.AuthorizeResult
	cb      *broker.CallbackResult
	token   *broker.Token
	status  *broker.Status
	page    *broker.ListPage
	created bool
}

func (c *core) StartAuthorization(context.Context, broker.AuthorizeRequest) (*broker.AuthorizeResult, error) {
	return c.auth, c.err
}
func (c *core) CompleteAuthorization(context.Context, broker.CallbackRequest) (*broker.CallbackResult, error) {
	return c.cb, c.err
}
func (c *core) Token(context.Context, broker.TokenRequest) (*broker.Token, error) {
	return c.token, c.err
}
func (c *core) Status(context.Context, store.Key) (*broker.Status, error) { return c.status, c.err }
func (c *core) Delete(context.Context, store.Key, string) error           { return c.err }
func (c *core) Confirm(context.Context, broker.ConfirmRequest) (*broker.Status, error) {
	return c.status, c.err
}
func (c *core) List(context.Context, broker.ListRequest) (*broker.ListPage, error) {
	return c.page, c.err
}
func (c *core) Import(context.Context, broker.ImportRequest) (*broker.Status, bool, error) {
	return c.status, c.created, c.err
}

// call is one request to a route.
type call struct {
	route   string // route key
	path    string
	query   string
	body    string
	noIAM   bool
	headers map[string]string
}

func (c call) event() json.RawMessage {
	method, template, _ := strings.Cut(c.route, " ")
	params := map[string]string{}
	want, got := strings.Split(template, "/"), strings.Split(c.path, "/")
	for i, seg := range want {
		if strings.HasPrefix(seg, "{") && i < len(got) {
			params[strings.Trim(seg, "{}")] = got[i]
		}
	}
	qs := map[string]string{}
	for _, kv := range strings.Split(c.query, "&") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			qs[k] = v
		}
	}
	ev := events.APIGatewayV2HTTPRequest{Version: "2.0", RouteKey: c.route, RawPath: c.path, RawQueryString: c.query,
		QueryStringParameters: qs, PathParameters: params, Body: c.body, Headers: map[string]string{"host": "broker.example.test"},
		RequestContext: events.APIGatewayV2HTTPRequestContext{DomainName: "broker.example.test",
			HTTP: events.APIGatewayV2HTTPRequestContextHTTPDescription{Method: method, Path: c.path}}}
	for k, v := range c.headers {
		ev.Headers[k] = v
	}
	if !c.noIAM {
		ev.RequestContext.Authorizer = &events.APIGatewayV2HTTPRequestContextAuthorizerDescription{
			IAM: &events.APIGatewayV2HTTPRequestContextAuthorizerIAMDescription{AccountID: "123456789012",
				UserARN: "arn:aws:iam::123456789012:role/backend"}}
	}
	raw, _ := json.Marshal(ev)
	return raw
}

// serve routes a call the way template.yaml wires the functions.
func serve(h *httpapi.Handler, c call) (httpapi.Response, error) {
	switch c.route {
	case "POST /connections/{provider}/{connection}/authorize":
		return h.Authorize(context.Background(), c.event())
	case "GET /callback/{provider}":
		return h.Callback(context.Background(), c.event())
	}
	return h.Connections(context.Background(), c.event())
}

const (
	routeAuthorize = "POST /connections/{provider}/{connection}/authorize"
	routeCallback  = "GET /callback/{provider}"
	routeToken     = "GET /connections/{provider}/{connection}/token"
	routeRefresh   = "POST /connections/{provider}/{connection}/refresh"
	routeStatus    = "GET /connections/{provider}/{connection}"
	routeImport    = "PUT /connections/{provider}/{connection}"
	routeDelete    = "DELETE /connections/{provider}/{connection}"
	routeList      = "GET /connections/{provider}"
	routeConfirm   = "POST /connections/{provider}/{connection}/confirm"
)

// codeOf is the error code the mapping answers with status on route:
// where two codes share a status, the one the route gives.
func codeOf(route string, status int) broker.Code {
	if route == routeImport && status == http.StatusConflict {
		return broker.CodeConflict
	}
	for _, c := range []broker.Code{broker.CodeBadRequest, broker.CodeUnauthorized, broker.CodeForbidden, broker.CodeNotFound,
		broker.CodeNeedsReauth, broker.CodeProviderError, broker.CodeProviderUnavailable, broker.CodeInternal} {
		if httpapi.StatusOf(c) == status {
			return c
		}
	}
	return ""
}

// Every answer the real HTTP mapping gives, for every route, in every
// shape the core can make it give (null and set times, empty extras and
// metadata, a pending machine connection, pages with and without a
// cursor, each callback redirect, pages and JSON errors), matches
// openapi.yaml, and every success status the document lists for a route
// is one the mapping gives. Which error codes a route can give is the
// broker core's business: here the core fails with each code the document
// lists, which proves the shape of those answers, not that they occur
// (the e2e tests see the ones that do against the real core).
func TestMappingAnswersMatchSpec(t *testing.T) {
	spec := load(t)
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("CST", 8*3600))
	key := store.Key{Provider: "github", Connection: "alice"}
	tok := &broker.Token{Key: key, AccessToken: "at", TokenType: "Bearer", ExpiresAt: at, Scope: "repo", Extra: map[string]string{"sub": "1"}}
	noExpiry := &broker.Token{Key: key, AccessToken: "at", TokenType: "Bearer"}
	active := &broker.Status{Key: key, Status: store.StatusActive, ExpiresAt: at, RefreshedAt: at, Metadata: map[string]string{"tenant": "acme"}}
	pending := &broker.Status{Key: store.Key{Provider: "wechat-mp", Connection: "app"}, Status: store.StatusPending, LastError: "provider busy"}
	listed := []store.Listed{{Key: key, Status: store.StatusActive, ExpiresAt: at, RefreshedAt: at},
		{Key: store.Key{Provider: "github", Connection: "bob"}, Status: store.StatusNeedsReauth, LastError: "invalid_grant", Metadata: map[string]string{"a": "b"}}}
	back := "https://app.example.test/done?x=1"

	type tc struct {
		name string
		c    call
		core core
		h    *httpapi.Handler // nil: the plain handler
	}
	cases := []tc{
		{"authorize", call{route: routeAuthorize, path: "/connections/github/alice/authorize", body: `{"scopes":["repo"],"return_to":"https://app.example.test/x","metadata":{"t":"a"},"confirm":true}`},
			core{auth: &broker.AuthorizeResult{AuthorizeURL: "https://github.com/login/oauth/authorize?state=s", StateExpiresAt: at}}, nil},
		{"authorize empty body", call{route: routeAuthorize, path: "/connections/github/alice/authorize"},
			core{auth: &broker.AuthorizeResult{AuthorizeURL: "https://open.weixin.qq.com/connect/oauth2/authorize?appid=a#wechat_redirect", StateExpiresAt: at}}, nil},
		{"authorize duplicate key", call{route: routeAuthorize, path: "/connections/github/alice/authorize", body: `{"scopes":[],"scopes":[]}`}, core{}, nil},
		{"authorize bad name", call{route: routeAuthorize, path: "/connections/git%20hub/alice/authorize"}, core{}, nil},
		{"callback connected", call{route: routeCallback, path: "/callback/github", query: "code=c&state=s"},
			core{cb: &broker.CallbackResult{Key: key, ReturnTo: back}}, nil},
		{"callback pending", call{route: routeCallback, path: "/callback/github", query: "code=c&state=s"},
			core{cb: &broker.CallbackResult{Key: key, ReturnTo: back, ConnectID: strings.Repeat("k", 43)}}, nil},
		{"callback page", call{route: routeCallback, path: "/callback/github", query: "code=c&state=s"},
			core{cb: &broker.CallbackResult{Key: key}}, nil},
		{"token", call{route: routeToken, path: "/connections/github/alice/token", query: "min_ttl=300"}, core{token: tok}, nil},
		{"token without expiry or extras", call{route: routeToken, path: "/connections/github/alice/token"}, core{token: noExpiry}, nil},
		{"token bad min_ttl", call{route: routeToken, path: "/connections/github/alice/token", query: "min_ttl=-1"}, core{}, nil},
		{"token no IAM", call{route: routeToken, path: "/connections/github/alice/token", noIAM: true}, core{}, nil},
		{"token other account", call{route: routeToken, path: "/connections/github/alice/token"}, core{token: tok},
			&httpapi.Handler{AllowedAccounts: []string{"210987654321"}}},
		{"refresh", call{route: routeRefresh, path: "/connections/github/alice/refresh"}, core{token: tok}, nil},
		{"status", call{route: routeStatus, path: "/connections/github/alice"}, core{status: active}, nil},
		{"status pending", call{route: routeStatus, path: "/connections/wechat-mp/app"}, core{status: pending}, nil},
		{"import created", call{route: routeImport, path: "/connections/github/alice", body: `{"access_token":"a","expires_in":60}`},
			core{status: active, created: true}, nil},
		{"import replaced", call{route: routeImport, path: "/connections/github/alice", body: `{"refresh_token":"r","replace":true}`},
			core{status: &broker.Status{Key: key, Status: store.StatusActive, RefreshedAt: at}}, nil},
		{"import bad expires_at", call{route: routeImport, path: "/connections/github/alice", body: `{"access_token":"a","expires_at":"soon"}`}, core{}, nil},
		{"confirm", call{route: routeConfirm, path: "/connections/github/alice/confirm", body: `{"connect_id":"` + strings.Repeat("k", 43) + `"}`},
			core{status: active}, nil},
		{"confirm empty", call{route: routeConfirm, path: "/connections/github/alice/confirm", body: `{}`}, core{}, nil},
		{"delete", call{route: routeDelete, path: "/connections/github/alice"}, core{}, nil},
		{"list first page", call{route: routeList, path: "/connections/github", query: "limit=2"},
			core{page: &broker.ListPage{Provider: "github", Connections: listed, NextCursor: "eyJhIjoiYm9iIn0"}}, nil},
		{"list last page", call{route: routeList, path: "/connections/github", query: "status=needs_reauth&cursor=eyJhIjoiYm9iIn0"},
			core{page: &broker.ListPage{Provider: "github", Connections: listed[1:]}}, nil},
		{"list empty", call{route: routeList, path: "/connections/github"}, core{page: &broker.ListPage{Provider: "github"}}, nil},
		{"list unknown parameter", call{route: routeList, path: "/connections/github", query: "sort=name"}, core{}, nil},
	}
	// Every documented error status of every route, from a core that
	// fails with its code (internal: with an error that is no application
	// error at all, as a crash of the store would be).
	paths := map[string]string{routeAuthorize: "/connections/github/alice/authorize", routeCallback: "/callback/github",
		routeToken: "/connections/github/alice/token", routeRefresh: "/connections/github/alice/refresh", routeStatus: "/connections/github/alice",
		routeImport: "/connections/github/alice", routeDelete: "/connections/github/alice", routeList: "/connections/github",
		routeConfirm: "/connections/github/alice/confirm"}
	bodies := map[string]string{routeImport: `{"access_token":"a"}`, routeConfirm: `{"connect_id":"` + strings.Repeat("k", 43) + `"}`}
	for _, route := range spec.Routes() {
		for _, s := range spec.Statuses(route) {
			status, _ := strconv.Atoi(s)
			if status < 400 {
				continue
			}
			code := codeOf(route, status)
			err := error(broker.Errorf(code, "refused with %s", code))
			if status == http.StatusInternalServerError {
				err = errors.New("store: connection reset by peer")
			}
			c := call{route: route, path: paths[route], body: bodies[route]}
			if route == routeCallback {
				c.query = "code=c&state=s"
				cases = append(cases,
					tc{fmt.Sprintf("callback %d before the state, JSON", status), c, core{err: err}, nil},
					tc{fmt.Sprintf("callback %d after the state, no return_to, JSON", status), c, core{cb: &broker.CallbackResult{Key: key, Err: err}}, nil},
					tc{fmt.Sprintf("callback %d after the state, redirect", status), c, core{cb: &broker.CallbackResult{Key: key, ReturnTo: back, Err: err}}, nil})
				c.headers = map[string]string{"accept": "text/html,application/xhtml+xml"}
				cases = append(cases,
					tc{fmt.Sprintf("callback %d before the state, page", status), c, core{err: err}, nil},
					tc{fmt.Sprintf("callback %d after the state, no return_to, page", status), c, core{cb: &broker.CallbackResult{Key: key, Err: err}}, nil})
				continue
			}
			cases = append(cases, tc{fmt.Sprintf("%s %d", route, status), c, core{err: err}, nil})
		}
	}

	seen := map[string]bool{} // "route status"
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h
			if h == nil {
				h = &httpapi.Handler{}
			}
			cr := tc.core
			h.Core = &cr
			resp, err := serve(h, tc.c)
			if err != nil {
				t.Fatal(err)
			}
			if err := spec.CheckAnswer(tc.c.route, resp); err != nil {
				t.Fatalf("%v\nheaders %v\nbody %s", err, resp.Headers, resp.Body)
			}
			seen[fmt.Sprintf("%s %d", tc.c.route, resp.StatusCode)] = true
		})
	}
	for _, route := range spec.Routes() {
		for _, s := range spec.Statuses(route) {
			if s < "400" && !seen[route+" "+s] {
				t.Errorf("%s documents %s, which no answer of the mapping above had", route, s)
			}
		}
	}
	if t.Failed() {
		var keys []string
		for k := range seen {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		t.Logf("seen: %s", strings.Join(keys, ", "))
	}
}
