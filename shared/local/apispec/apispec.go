// Package apispec holds the functions to openapi.yaml, the contract of the
// HTTP API: it loads and validates the document (OpenAPI 3.1, with
// kin-openapi, whose 3.1 support validates schemas as JSON Schema 2020-12)
// and checks a function's answer to a route, or a sample request event,
// against it.
//
// Routes are named by API Gateway's route key, "METHOD /path/{param}",
// which is also how template.yaml and the events' routeKey name them.
package apispec

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/aws/aws-lambda-go/events"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
)

// Spec is a loaded, validated openapi.yaml.
type Spec struct {
	doc    *openapi3.T
	routes map[string]*routers.Route // by route key
}

var registerHTML sync.Once

// Load reads the OpenAPI document at path, resolves its references and
// validates it: it must be OpenAPI 3.1 and valid as such, examples
// included.
func Load(path string) (*Spec, error) {
	// The callback answers HTML pages; kin-openapi decodes no text/html
	// body unless told to, and a page is plain text to its schema.
	registerHTML.Do(func() { openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.PlainBodyDecoder) })
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("apispec: load %s: %w", path, err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") {
		return nil, fmt.Errorf("apispec: %s is OpenAPI %q, want 3.1.x", path, doc.OpenAPI)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("apispec: %s is not valid OpenAPI 3.1: %w", path, err)
	}
	s := &Spec{doc: doc, routes: map[string]*routers.Route{}}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			s.routes[method+" "+path] = &routers.Route{Spec: doc, Path: path, PathItem: item, Method: method, Operation: op}
		}
	}
	return s, nil
}

// Routes returns the route keys the document describes, sorted.
func (s *Spec) Routes() []string {
	keys := make([]string, 0, len(s.routes))
	for k := range s.routes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Public reports whether a route needs no authentication (its operation
// overrides the document's security with an empty list).
func (s *Spec) Public(routeKey string) bool {
	r, ok := s.routes[routeKey]
	return ok && r.Operation.Security != nil && len(*r.Operation.Security) == 0
}

// Statuses returns the statuses a route documents, sorted.
func (s *Spec) Statuses(routeKey string) []string {
	r, ok := s.routes[routeKey]
	if !ok {
		return nil
	}
	var codes []string
	for code := range r.Operation.Responses.Map() {
		codes = append(codes, code)
	}
	slices.Sort(codes)
	return codes
}

func (s *Spec) route(routeKey string) (*routers.Route, error) {
	r, ok := s.routes[routeKey]
	if !ok {
		return nil, fmt.Errorf("%s is not a route of openapi.yaml", routeKey)
	}
	return r, nil
}

// CheckAnswer checks a function's answer to the route routeKey: the
// status is documented for the route, the documented headers are there
// with their values, the Content-Type is one the status documents and the
// body matches its schema, or is empty where the status documents none.
// The error names the route, the status and the first mismatch.
func (s *Spec) CheckAnswer(routeKey string, resp events.APIGatewayV2HTTPResponse) error {
	r, err := s.route(routeKey)
	if err != nil {
		return err
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%s answered %d: %s", routeKey, resp.StatusCode, fmt.Sprintf(format, args...))
	}
	documented := r.Operation.Responses.Status(resp.StatusCode)
	if documented == nil || documented.Value == nil {
		return fail("status not documented (documented: %s)", strings.Join(s.Statuses(routeKey), ", "))
	}
	body := []byte(resp.Body)
	if resp.IsBase64Encoded {
		if body, err = base64.StdEncoding.DecodeString(resp.Body); err != nil {
			return fail("body is not valid base64")
		}
	}
	header := http.Header{}
	for k, v := range resp.Headers {
		header.Set(k, v)
	}
	for k, vs := range resp.MultiValueHeaders {
		for _, v := range vs {
			header.Add(k, v)
		}
	}
	if len(documented.Value.Content) == 0 && len(body) != 0 {
		return fail("a body (%d bytes) where the status documents none", len(body))
	}
	req, _ := http.NewRequest(r.Method, r.Path, nil)
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, Route: r},
		Status:                 resp.StatusCode,
		Header:                 header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true},
	}
	in.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		return &checkError{msg: fail("%s", firstError(err)).Error(), err: err}
	}
	return nil
}

// CheckEvent checks a sample API Gateway HTTP API (payload 2.0) event
// against the document: its routeKey is a route of the document, its
// rawPath fits the route's path and agrees with pathParameters, and its
// parameters and body are valid requests of the route. An IAM route's
// event must carry the caller API Gateway adds once SigV4 checks out
// (requestContext.authorizer.iam). It returns the event's route key.
func (s *Spec) CheckEvent(raw []byte) (string, error) {
	var ev events.APIGatewayV2HTTPRequest
	if err := json.Unmarshal(raw, &ev); err != nil {
		return "", fmt.Errorf("not an HTTP API event: %w", err)
	}
	r, err := s.route(ev.RouteKey)
	if err != nil {
		return ev.RouteKey, err
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s", ev.RouteKey, fmt.Sprintf(format, args...))
	}
	if ev.RequestContext.HTTP.Method != r.Method {
		return ev.RouteKey, fail("requestContext.http.method is %q", ev.RequestContext.HTTP.Method)
	}
	params, ok := matchPath(r.Path, ev.RawPath)
	if !ok {
		return ev.RouteKey, fail("rawPath %q does not fit the route", ev.RawPath)
	}
	for name, v := range params {
		if ev.PathParameters[name] != v {
			return ev.RouteKey, fail("pathParameters.%s is %q, the path says %q", name, ev.PathParameters[name], v)
		}
	}
	query := ev.RawQueryString
	if query == "" && len(ev.QueryStringParameters) > 0 {
		q := url.Values{}
		for k, v := range ev.QueryStringParameters {
			q.Set(k, v)
		}
		query = q.Encode()
	}
	body := []byte(ev.Body)
	if ev.IsBase64Encoded {
		if body, err = base64.StdEncoding.DecodeString(ev.Body); err != nil {
			return ev.RouteKey, fail("body is not valid base64")
		}
	}
	req, err := http.NewRequest(r.Method, ev.RawPath+"?"+query, bytes.NewReader(body))
	if err != nil {
		return ev.RouteKey, fail("%v", err)
	}
	for k, v := range ev.Headers {
		req.Header.Set(k, v)
	}
	if len(body) > 0 && req.Header.Get("Content-Type") == "" {
		// The functions read a body as JSON whatever its Content-Type.
		req.Header.Set("Content-Type", "application/json")
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: r, Options: &openapi3filter.Options{
		AuthenticationFunc: func(_ context.Context, a *openapi3filter.AuthenticationInput) error {
			if ev.RequestContext.Authorizer == nil || ev.RequestContext.Authorizer.IAM == nil {
				return fmt.Errorf("%s: no IAM caller in requestContext.authorizer.iam", a.SecuritySchemeName)
			}
			return nil
		},
	}}
	if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
		return ev.RouteKey, &checkError{msg: fail("%s", firstError(err)).Error(), err: err}
	}
	return ev.RouteKey, nil
}

// checkError is a short message (route, status, the first line of the
// validator's error) that still unwraps to the validator's error.
type checkError struct {
	msg string
	err error
}

func (e *checkError) Error() string { return e.msg }
func (e *checkError) Unwrap() error { return e.err }

// IsSecurityError reports whether CheckEvent failed on the route's
// security requirement rather than on a parameter or the body.
func IsSecurityError(err error) bool {
	var se *openapi3filter.SecurityRequirementsError
	return errors.As(err, &se)
}

// matchPath fits a path to a route's path template, returning the
// template's parameters, unescaped, as API Gateway passes them.
func matchPath(template, path string) (map[string]string, bool) {
	want := strings.Split(strings.Trim(template, "/"), "/")
	got := strings.Split(strings.Trim(path, "/"), "/")
	if len(want) != len(got) {
		return nil, false
	}
	params := map[string]string{}
	for i, seg := range want {
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
			v, err := url.PathUnescape(got[i])
			if err != nil {
				return nil, false
			}
			params[seg[1:len(seg)-1]] = v
			continue
		}
		if seg != got[i] {
			return nil, false
		}
	}
	return params, true
}

// firstError is the first line of a validation error: kin-openapi goes on
// with the whole schema and the value, which may hold a token.
func firstError(err error) string {
	msg, _, _ := strings.Cut(err.Error(), "\n")
	if len(msg) > 400 {
		msg = msg[:400] + "…"
	}
	return msg
}
