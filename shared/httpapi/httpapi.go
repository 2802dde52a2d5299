// Package httpapi maps API Gateway HTTP API (payload format 2.0) events to
// broker calls and back: path parameters validated, the IAM caller checked,
// JSON bodies in and out, and one table from error code to HTTP status.
//
// Handlers take the raw event so that a malformed one is a 400 with a
// clear message, not a runtime unmarshal failure.
package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// statusOf is the one table from error code to HTTP status.
var statusOf = map[broker.Code]int{
	broker.CodeBadRequest:          http.StatusBadRequest,
	broker.CodeUnauthorized:        http.StatusUnauthorized,
	broker.CodeForbidden:           http.StatusForbidden,
	broker.CodeNotFound:            http.StatusNotFound,
	broker.CodeNeedsReauth:         http.StatusConflict,
	broker.CodeNotRefreshable:      http.StatusConflict,
	broker.CodeConflict:            http.StatusConflict,
	broker.CodeProviderError:       http.StatusBadGateway,
	broker.CodeProviderUnavailable: http.StatusServiceUnavailable,
	broker.CodeInternal:            http.StatusInternalServerError,
}

// StatusOf returns the HTTP status of an error code.
func StatusOf(code broker.Code) int {
	if s, ok := statusOf[code]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// Core is what the handlers need of the broker; *broker.Broker satisfies it.
type Core interface {
	StartAuthorization(ctx context.Context, req broker.AuthorizeRequest) (*broker.AuthorizeResult, error)
	CompleteAuthorization(ctx context.Context, req broker.CallbackRequest) (*broker.CallbackResult, error)
	Token(ctx context.Context, req broker.TokenRequest) (*broker.Token, error)
	Status(ctx context.Context, k store.Key) (*broker.Status, error)
	Delete(ctx context.Context, k store.Key, caller string) error
	Confirm(ctx context.Context, req broker.ConfirmRequest) (*broker.Status, error)
	List(ctx context.Context, req broker.ListRequest) (*broker.ListPage, error)
	Import(ctx context.Context, req broker.ImportRequest) (*broker.Status, bool, error)
}

// Handler serves the routes.
type Handler struct {
	Core Core
	Log  *slog.Logger
	// AllowedAccounts, when set, are the only AWS accounts whose callers
	// the IAM routes serve (ALLOWED_ACCOUNTS); others get 403.
	AllowedAccounts []string
	// AllowedOrgID, when set, is the only AWS Organization whose callers
	// the IAM routes serve (ALLOWED_ORG_ID); others get 403.
	AllowedOrgID string
}

// Response is the API Gateway v2 response type.
type Response = events.APIGatewayV2HTTPResponse

func (h *Handler) log() *slog.Logger {
	if h.Log != nil {
		return h.Log
	}
	return slog.New(slog.DiscardHandler)
}

func jsonResponse(status int, v any) Response {
	body, _ := json.Marshal(v)
	return Response{StatusCode: status, Body: string(body), Headers: map[string]string{
		"Content-Type": "application/json", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
	}}
}

// errorResponse writes {"error","message"}; causes go to the log only.
func (h *Handler) errorResponse(ctx context.Context, err error) Response {
	code := broker.ErrorCode(err)
	status := StatusOf(code)
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelError
	}
	h.log().Log(ctx, level, "request failed", "code", string(code), "status", status, "error", err.Error())
	resp := jsonResponse(status, map[string]string{"error": string(code), "message": broker.ErrorMessage(err)})
	if wait := broker.RetryAfter(err); wait > 0 && status == http.StatusServiceUnavailable {
		// Whole seconds, rounded up: a caller that waits this long finds
		// the next attempt allowed.
		resp.Headers["Retry-After"] = strconv.FormatInt(int64((wait+time.Second-1)/time.Second), 10)
	}
	return resp
}

// request is the part of an HTTP API payload 2.0 event the handlers read.
// Decoding only these fields, instead of events.APIGatewayV2HTTPRequest
// whole, keeps the token path's overhead over its one GetItem small.
type request struct {
	RouteKey              string            `json:"routeKey"`
	RawPath               string            `json:"rawPath"`
	RawQueryString        string            `json:"rawQueryString"`
	Headers               map[string]string `json:"headers"`
	QueryStringParameters map[string]string `json:"queryStringParameters"`
	PathParameters        map[string]string `json:"pathParameters"`
	Body                  string            `json:"body"`
	IsBase64Encoded       bool              `json:"isBase64Encoded"`
	RequestContext        struct {
		DomainName string `json:"domainName"`
		// TimeEpoch is when API Gateway received the request, in ms.
		TimeEpoch int64 `json:"timeEpoch"`
		HTTP      struct {
			Method string `json:"method"`
		} `json:"http"`
		Authorizer *struct {
			IAM *struct {
				AccessKey      string `json:"accessKey"`
				AccountID      string `json:"accountId"`
				CallerID       string `json:"callerId"`
				UserARN        string `json:"userArn"`
				PrincipalOrgID string `json:"principalOrgId"`
			} `json:"iam"`
		} `json:"authorizer"`
	} `json:"requestContext"`
}

func parseEvent(raw json.RawMessage) (*request, error) {
	var ev request
	if err := json.Unmarshal(raw, &ev); err != nil {
		return nil, broker.Errorf(broker.CodeBadRequest, "the event is not an API Gateway HTTP API (2.0) request: %s", firstLine(err.Error()))
	}
	if ev.RequestContext.HTTP.Method == "" {
		return nil, broker.Errorf(broker.CodeBadRequest, "the event has no requestContext.http.method; is it an HTTP API payload 2.0 event?")
	}
	return &ev, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}

// Route keys, as template.yaml and the events' routeKey spell them.
const (
	routeAuthorize = "POST /connections/{provider}/{connection}/authorize"
	routeCallback  = "GET /callback/{provider}"
	routeList      = "GET /connections/{provider}"
	routeStatus    = "GET /connections/{provider}/{connection}"
	routeToken     = "GET /connections/{provider}/{connection}/token"
	routeRefresh   = "POST /connections/{provider}/{connection}/refresh"
	routeImport    = "PUT /connections/{provider}/{connection}"
	routeDelete    = "DELETE /connections/{provider}/{connection}"
	routeConfirm   = "POST /connections/{provider}/{connection}/confirm"
)

// connectionRoutes are the token function's routes.
var connectionRoutes = []string{routeList, routeStatus, routeToken, routeRefresh, routeImport, routeDelete, routeConfirm}

// looseSegments is the path as a lenient server would read it: percent
// escapes decoded, empty and "." segments dropped, ".." applied. It only
// picks the route a request was meant for; whether the request may be
// served is decided by comparing its raw path with the canonical one.
func looseSegments(rawPath string) []string {
	p, err := url.PathUnescape(rawPath)
	if err != nil {
		p = rawPath
	}
	var out []string
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, seg)
		}
	}
	return out
}

// basePrefix reports whether p is what API Gateway itself may put before
// the route's path in rawPath: a named stage or a custom domain's API
// mapping key, one or more plain segments such as /prod or /v1/broker.
// Routing already happened on the rest, so the prefix names nothing the
// handler acts on; it may still not hide an empty, dot or encoded segment.
func basePrefix(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for _, seg := range strings.Split(p[1:], "/") {
		if seg == "" {
			return false
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
				return false
			}
		}
	}
	return true
}

// templateSegments splits a route key's path: "GET /a/{b}" → [a {b}].
func templateSegments(routeKey string) (method string, segs []string) {
	method, path, _ := strings.Cut(routeKey, " ")
	return method, strings.Split(strings.TrimPrefix(path, "/"), "/")
}

// resolveRoute finds which of routes ev is for and its path parameters,
// and refuses (400) a request whose rawPath is not exactly the canonical
// path of that route with those parameters. API Gateway routes
// /connections/git%68ub/alice/token, /connections/github/, //connections/…
// or /connections/./github/… to a route with decoded pathParameters, while
// an IAM policy or a log reads the raw path: served, such a request would
// act on a resource other than the one its path names. Nothing is read
// before this check.
//
// The route is the event's routeKey when it is one of routes; otherwise
// (a hand-built event) the one whose words the path matches leniently. No
// route at all is 404. Parameters come from pathParameters, or from the
// path when the event has none.
func resolveRoute(ev *request, routes []string) (route string, params map[string]string, err error) {
	method := ev.RequestContext.HTTP.Method
	loose := looseSegments(ev.RawPath)
	if slices.Contains(routes, ev.RouteKey) {
		route = ev.RouteKey
	} else {
	search:
		for _, r := range routes {
			m, tmpl := templateSegments(r)
			if m != method || len(tmpl) != len(loose) {
				continue
			}
			for i, t := range tmpl {
				if !strings.HasPrefix(t, "{") && !strings.EqualFold(t, loose[i]) {
					continue search
				}
			}
			route = r
			break
		}
	}
	if route == "" {
		return "", nil, broker.Errorf(broker.CodeNotFound, "no route %s %.100q", method, ev.RawPath)
	}
	_, tmpl := templateSegments(route)
	params = map[string]string{}
	canonical := make([]string, len(tmpl))
	for i, t := range tmpl {
		if !strings.HasPrefix(t, "{") {
			canonical[i] = t
			continue
		}
		name := strings.Trim(t, "{}")
		v, ok := ev.PathParameters[name]
		if !ok && len(loose) == len(tmpl) {
			v = loose[i]
		}
		if !store.ValidID(v) {
			return "", nil, broker.Errorf(broker.CodeBadRequest, "%s must match [A-Za-z0-9._-]{1,128}", name)
		}
		if v == "." || v == ".." {
			return "", nil, broker.Errorf(broker.CodeBadRequest, "%s may not be %q: it is a dot segment, which clients and proxies remove from paths", name, v)
		}
		params[name] = v
		canonical[i] = url.PathEscape(v)
	}
	want := "/" + strings.Join(canonical, "/")
	if ev.RawPath != want && !(strings.HasSuffix(ev.RawPath, want) && basePrefix(strings.TrimSuffix(ev.RawPath, want))) {
		return "", nil, broker.Errorf(broker.CodeBadRequest,
			"the path %.160q is not in canonical form (for %s with these parameters it is %q): percent-encoded letters, double or trailing slashes, dot segments and other case are refused",
			ev.RawPath, route, want)
	}
	return route, params, nil
}

// iamCaller returns the caller's ARN; API Gateway has verified the
// signature, and the check here keeps a route misconfigured without IAM
// auth from serving tokens.
//
// With an account or organization allowlist, a caller from anywhere else
// is refused (403), whatever its own IAM policy allows.
func (h *Handler) iamCaller(ev *request) (string, error) {
	auth := ev.RequestContext.Authorizer
	if auth == nil || auth.IAM == nil || (auth.IAM.UserARN == "" && auth.IAM.AccessKey == "" && auth.IAM.CallerID == "") {
		return "", broker.Errorf(broker.CodeUnauthorized, "this route needs an IAM-signed request (SigV4)")
	}
	if len(h.AllowedAccounts) > 0 && !slices.Contains(h.AllowedAccounts, auth.IAM.AccountID) {
		return "", broker.Errorf(broker.CodeForbidden, "callers from AWS account %.12q may not use this broker", auth.IAM.AccountID)
	}
	if h.AllowedOrgID != "" && auth.IAM.PrincipalOrgID != h.AllowedOrgID {
		return "", broker.Errorf(broker.CodeForbidden, "callers outside AWS Organization %s may not use this broker", h.AllowedOrgID)
	}
	if auth.IAM.UserARN != "" {
		return auth.IAM.UserARN, nil
	}
	if auth.IAM.CallerID != "" {
		return auth.IAM.CallerID, nil
	}
	return auth.IAM.AccessKey, nil
}

func requestBase(ev *request) string {
	if ev.RequestContext.DomainName == "" {
		return ""
	}
	return "https://" + ev.RequestContext.DomainName
}

func body(ev *request) ([]byte, error) {
	if !ev.IsBase64Encoded {
		return []byte(ev.Body), nil
	}
	return base64.StdEncoding.DecodeString(ev.Body)
}

func rfc3339(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(time.RFC3339)
}

// Authorize serves POST /connections/{provider}/{connection}/authorize.
func (h *Handler) Authorize(ctx context.Context, raw json.RawMessage) (Response, error) {
	ev, err := parseEvent(raw)
	if err != nil {
		return h.errorResponse(ctx, err), nil
	}
	caller, err := h.iamCaller(ev)
	if err != nil {
		return h.errorResponse(ctx, err), nil
	}
	_, ids, err := resolveRoute(ev, []string{routeAuthorize})
	if err != nil {
		return h.errorResponse(ctx, err), nil
	}
	var req struct {
		Scopes   []string          `json:"scopes"`
		ReturnTo string            `json:"return_to"`
		Metadata map[string]string `json:"metadata"`
		Confirm  bool              `json:"confirm"`
	}
	if err := readJSON(ev, &req, `{"scopes":[…],"return_to":"https://…","metadata":{…},"confirm":true}`); err != nil {
		return h.errorResponse(ctx, err), nil
	}
	res, err := h.Core.StartAuthorization(ctx, broker.AuthorizeRequest{
		Key: store.Key{Provider: ids["provider"], Connection: ids["connection"]}, Scopes: req.Scopes, ReturnTo: req.ReturnTo, Metadata: req.Metadata,
		Confirm: req.Confirm, Caller: caller, RequestBase: requestBase(ev),
	})
	if err != nil {
		return h.errorResponse(ctx, err), nil
	}
	return jsonResponse(http.StatusOK, map[string]any{"authorize_url": res.AuthorizeURL, "state_expires_at": rfc3339(res.StateExpiresAt)}), nil
}

// Callback serves GET /callback/{provider}: a 302 to return_to with
// status=connected|error, or a small HTML page when there is none.
func (h *Handler) Callback(ctx context.Context, raw json.RawMessage) (Response, error) {
	ev, err := parseEvent(raw)
	if err != nil {
		return h.errorResponse(ctx, err), nil
	}
	_, ids, err := resolveRoute(ev, []string{routeCallback})
	if err != nil {
		return h.callbackPage(ctx, ev, err), nil
	}
	q := ev.QueryStringParameters
	if ev.RawQueryString != "" {
		if parsed, perr := url.ParseQuery(ev.RawQueryString); perr == nil {
			q = map[string]string{}
			for k := range parsed {
				q[k] = parsed.Get(k)
			}
		}
	}
	res, err := h.Core.CompleteAuthorization(ctx, broker.CallbackRequest{
		Provider: ids["provider"], Code: q["code"], State: q["state"], Error: q["error"], ErrorDescription: q["error_description"],
	})
	if err != nil {
		return h.callbackPage(ctx, ev, err), nil
	}
	if res.ReturnTo != "" {
		u, perr := url.Parse(res.ReturnTo)
		if perr == nil {
			rq := u.Query()
			rq.Set("provider", res.Key.Provider)
			rq.Set("connection", res.Key.Connection)
			switch {
			case res.Err == nil && res.ConnectID != "":
				rq.Set("status", "pending")
				rq.Set("connect_id", res.ConnectID)
			case res.Err == nil:
				rq.Set("status", "connected")
			default:
				h.log().WarnContext(ctx, "authorization failed", "provider", res.Key.Provider, "connection", res.Key.Connection, "error", res.Err.Error())
				rq.Set("status", "error")
				rq.Set("error", string(broker.ErrorCode(res.Err)))
				rq.Set("message", broker.ErrorMessage(res.Err))
			}
			u.RawQuery = rq.Encode()
			return Response{StatusCode: http.StatusFound, Headers: map[string]string{"Location": u.String(), "Cache-Control": "no-store",
				"Referrer-Policy": "no-referrer"}}, nil
		}
	}
	if res.Err != nil {
		return h.callbackPage(ctx, ev, res.Err), nil
	}
	return htmlPage(http.StatusOK, "Connected", fmt.Sprintf("%s / %s is connected. You can close this window.", res.Key.Provider, res.Key.Connection)), nil
}

// callbackPage answers a callback that cannot redirect: HTML for a
// browser, the JSON error otherwise.
func (h *Handler) callbackPage(ctx context.Context, ev *request, err error) Response {
	resp := h.errorResponse(ctx, err)
	accept := ev.Headers["accept"]
	if accept == "" {
		accept = ev.Headers["Accept"]
	}
	if strings.Contains(accept, "text/html") {
		return htmlPage(resp.StatusCode, "Authorization failed", broker.ErrorMessage(err))
	}
	return resp
}

func htmlPage(status int, title, msg string) Response {
	body := "<!doctype html><html><head><meta charset=\"utf-8\"><title>" + html.EscapeString(title) +
		"</title></head><body><h1>" + html.EscapeString(title) + "</h1><p>" + html.EscapeString(msg) + "</p></body></html>"
	return Response{StatusCode: status, Body: body, Headers: htmlHeaders()}
}

// htmlHeaders are sent with every HTML page: nothing loads, nothing frames
// it, no referrer leaks the callback's query, no content sniffing.
func htmlHeaders() map[string]string {
	return map[string]string{
		"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
		"Content-Security-Policy": "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
		"X-Content-Type-Options":  "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
	}
}

// arrived is when API Gateway received the request (zero when the event
// does not say): a forced refresh is satisfied by a token stored after it.
func (r *request) arrived() time.Time {
	if r.RequestContext.TimeEpoch <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(r.RequestContext.TimeEpoch)
}

// Connections serves the token function's routes: GET …/token, GET status,
// POST …/refresh and DELETE.
func (h *Handler) Connections(ctx context.Context, raw json.RawMessage) (Response, error) {
	ev, err := parseEvent(raw)
	if err != nil {
		return h.errorResponse(ctx, err), nil
	}
	caller, err := h.iamCaller(ev)
	if err != nil {
		return h.errorResponse(ctx, err), nil
	}
	route, ids, err := resolveRoute(ev, connectionRoutes)
	if err != nil {
		return h.errorResponse(ctx, err), nil
	}
	key := store.Key{Provider: ids["provider"], Connection: ids["connection"]}
	switch route {
	case routeList:
		return h.list(ctx, ev, key.Provider), nil
	case routeToken:
		minTTL := broker.DefaultMinTTL
		if v, ok := ev.QueryStringParameters["min_ttl"]; ok {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 86400 {
				return h.errorResponse(ctx, broker.Errorf(broker.CodeBadRequest, "min_ttl must be a whole number of seconds from 0 to 86400")), nil
			}
			minTTL = time.Duration(n) * time.Second
		}
		return h.token(ctx, broker.TokenRequest{Key: key, MinTTL: minTTL, Caller: caller}), nil
	case routeRefresh:
		var in struct {
			RejectedToken json.RawMessage `json:"rejected_token"`
		}
		if err := readJSON(ev, &in, `{"rejected_token":"…"}`); err != nil {
			return h.errorResponse(ctx, err), nil
		}
		req := broker.TokenRequest{Key: key, MinTTL: broker.DefaultMinTTL, Force: true, Caller: caller, Arrived: ev.arrived()}
		if in.RejectedToken != nil {
			if json.Unmarshal(in.RejectedToken, &req.Rejected) != nil || req.Rejected == "" {
				return h.errorResponse(ctx, broker.Errorf(broker.CodeBadRequest, "rejected_token must be the access token (a string) the caller saw rejected; send no body to force a refresh without naming one")), nil
			}
		}
		return h.token(ctx, req), nil
	case routeStatus:
		st, err := h.Core.Status(ctx, key)
		if err != nil {
			return h.errorResponse(ctx, err), nil
		}
		return jsonResponse(http.StatusOK, statusBody(st)), nil
	case routeImport:
		return h.importGrant(ctx, ev, key, caller), nil
	case routeConfirm:
		var in struct {
			ConnectID string `json:"connect_id"`
		}
		if err := readJSON(ev, &in, `{"connect_id":"…"}`); err != nil {
			return h.errorResponse(ctx, err), nil
		}
		if in.ConnectID == "" {
			return h.errorResponse(ctx, broker.Errorf(broker.CodeBadRequest, "the body must be JSON like {\"connect_id\":\"…\"}")), nil
		}
		st, err := h.Core.Confirm(ctx, broker.ConfirmRequest{Key: key, ConnectID: in.ConnectID, Caller: caller})
		if err != nil {
			return h.errorResponse(ctx, err), nil
		}
		return jsonResponse(http.StatusOK, statusBody(st)), nil
	case routeDelete:
		if err := h.Core.Delete(ctx, key, caller); err != nil {
			return h.errorResponse(ctx, err), nil
		}
		return Response{StatusCode: http.StatusNoContent, Headers: map[string]string{"Cache-Control": "no-store"}}, nil
	}
	return h.errorResponse(ctx, broker.Errorf(broker.CodeNotFound, "no route %s", route)), nil
}

// statusBody is a connection's state without secrets: the status route's
// and the import route's answer.
func statusBody(st *broker.Status) map[string]any {
	return map[string]any{"provider": st.Key.Provider, "connection": st.Key.Connection, "status": st.Status,
		"expires_at": rfc3339(st.ExpiresAt), "refreshed_at": rfc3339(st.RefreshedAt), "last_error": st.LastError,
		"metadata": labels(st.Metadata)}
}

func labels(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// list serves GET /connections/{provider}?status&limit&cursor.
func (h *Handler) list(ctx context.Context, ev *request, provider string) Response {
	q := ev.QueryStringParameters
	for name := range q {
		if name != "status" && name != "limit" && name != "cursor" {
			return h.errorResponse(ctx, broker.Errorf(broker.CodeBadRequest, "unknown query parameter %.40q (status, limit, cursor)", name))
		}
	}
	req := broker.ListRequest{Provider: provider, Status: store.Status(q["status"]), Cursor: q["cursor"]}
	if v, ok := q["limit"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			return h.errorResponse(ctx, broker.Errorf(broker.CodeBadRequest, "limit must be a whole number from 1 to 100"))
		}
		req.Limit = n
	}
	if _, ok := q["status"]; ok && req.Status == "" {
		return h.errorResponse(ctx, broker.Errorf(broker.CodeBadRequest, "status must be active or needs_reauth"))
	}
	page, err := h.Core.List(ctx, req)
	if err != nil {
		return h.errorResponse(ctx, err)
	}
	conns := make([]map[string]any, 0, len(page.Connections))
	for _, c := range page.Connections {
		conns = append(conns, map[string]any{"connection": c.Connection, "status": c.Status, "expires_at": rfc3339(c.ExpiresAt),
			"refreshed_at": rfc3339(c.RefreshedAt), "last_error": c.LastError, "metadata": labels(c.Metadata)})
	}
	body := map[string]any{"provider": page.Provider, "connections": conns}
	if page.NextCursor != "" {
		body["next_cursor"] = page.NextCursor
	}
	return jsonResponse(http.StatusOK, body)
}

// importBody is PUT /connections/{provider}/{connection}'s body.
type importBody struct {
	AccessToken  string            `json:"access_token"`
	RefreshToken string            `json:"refresh_token"`
	ExpiresIn    *int64            `json:"expires_in"`
	ExpiresAt    *string           `json:"expires_at"`
	TokenType    string            `json:"token_type"`
	Scope        string            `json:"scope"`
	Extra        map[string]string `json:"extra"`
	Metadata     map[string]string `json:"metadata"`
	// Replace is the precondition for replacing an existing connection.
	Replace bool `json:"replace"`
}

// importGrant serves PUT /connections/{provider}/{connection}: 201 when
// created, 200 when it replaced a connection (only with "replace": true;
// 409 conflict otherwise), with the status body.
func (h *Handler) importGrant(ctx context.Context, ev *request, key store.Key, caller string) Response {
	var in importBody
	if err := readJSON(ev, &in, `{"access_token":"…","refresh_token":"…","expires_in":3600,"metadata":{…},"replace":true}`); err != nil {
		return h.errorResponse(ctx, err)
	}
	req := broker.ImportRequest{Key: key, AccessToken: in.AccessToken, RefreshToken: in.RefreshToken, ExpiresIn: in.ExpiresIn,
		TokenType: in.TokenType, Scope: in.Scope, Extra: in.Extra, Metadata: in.Metadata, Replace: in.Replace, Caller: caller}
	if in.ExpiresAt != nil {
		at, err := time.Parse(time.RFC3339, *in.ExpiresAt)
		if err != nil {
			return h.errorResponse(ctx, broker.Errorf(broker.CodeBadRequest, "expires_at must be an RFC 3339 time like 2026-01-02T15:04:05Z"))
		}
		req.ExpiresAt = &at
	}
	st, created, err := h.Core.Import(ctx, req)
	if err != nil {
		return h.errorResponse(ctx, err)
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return jsonResponse(status, statusBody(st))
}

// tokenBody is the token routes' answer.
type tokenBody struct {
	Provider    string            `json:"provider"`
	Connection  string            `json:"connection"`
	AccessToken string            `json:"access_token"`
	TokenType   string            `json:"token_type"`
	ExpiresAt   any               `json:"expires_at"`
	Scope       string            `json:"scope"`
	Extra       map[string]string `json:"extra"`
}

func (h *Handler) token(ctx context.Context, req broker.TokenRequest) Response {
	tok, err := h.Core.Token(ctx, req)
	if err != nil {
		return h.errorResponse(ctx, err)
	}
	extra := tok.Extra
	if extra == nil {
		extra = map[string]string{}
	}
	return jsonResponse(http.StatusOK, tokenBody{Provider: tok.Key.Provider, Connection: tok.Key.Connection, AccessToken: tok.AccessToken,
		TokenType: tok.TokenType, ExpiresAt: rfc3339(tok.ExpiresAt), Scope: tok.Scope, Extra: extra})
}
