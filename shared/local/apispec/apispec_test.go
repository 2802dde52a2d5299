package apispec_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-lambda-go/events"

	"github.com/tokenbroker/tokenbroker/shared/local/apispec"
	"github.com/tokenbroker/tokenbroker/shared/local/devfront"
)

var root = filepath.Join("..", "..", "..")

func load(t *testing.T) *apispec.Spec {
	t.Helper()
	spec, err := apispec.Load(filepath.Join(root, "openapi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// The document loads, resolves and validates as OpenAPI 3.1; documents
// broken in the ways an edit breaks them do not.
func TestSpecIsValidOpenAPI31(t *testing.T) {
	load(t)
	orig, err := os.ReadFile(filepath.Join(root, "openapi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, old, new string }{
		{"OpenAPI 3.0", "openapi: 3.1.0", "openapi: 3.0.3"},
		{"dangling $ref", `$ref: "#/components/schemas/ConfirmRequest"`, `$ref: "#/components/schemas/ConfirmBody"`},
		{"example against its schema", "expires_in: 28800", "expires_in: -1"},
		{"path parameter not declared", "/callback/{provider}:", "/callback/{provider}/{extra}:"},
		{"unknown field of an operation", "operationId: getToken", "operationId: getToken\n      response: {}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(string(orig), tc.old) {
				t.Fatalf("openapi.yaml no longer has %q; update the test", tc.old)
			}
			path := filepath.Join(t.TempDir(), "openapi.yaml")
			if err := os.WriteFile(path, []byte(strings.Replace(string(orig), tc.old, tc.new, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := apispec.Load(path); err == nil {
				t.Fatal("loaded and validated")
			} else {
				t.Log(err)
			}
		})
	}
}

// The document describes exactly the HttpApi routes template.yaml creates,
// and only the public ones (Auth.Authorizer: NONE) without SigV4.
func TestRoutesAreTheTemplates(t *testing.T) {
	spec := load(t)
	routes, err := devfront.Routes(filepath.Join(root, "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var inTemplate []string
	for _, r := range routes {
		inTemplate = append(inTemplate, r.RouteKey())
		if spec.Public(r.RouteKey()) != r.Public {
			t.Errorf("%s: public in template.yaml %v, in openapi.yaml %v", r.RouteKey(), r.Public, spec.Public(r.RouteKey()))
		}
	}
	slices.Sort(inTemplate)
	for _, k := range inTemplate {
		if !slices.Contains(spec.Routes(), k) {
			t.Errorf("template.yaml routes %s; openapi.yaml does not describe it", k)
		}
	}
	for _, k := range spec.Routes() {
		if !slices.Contains(inTemplate, k) {
			t.Errorf("openapi.yaml describes %s; template.yaml has no such route", k)
		}
	}
	if len(inTemplate) != 9 {
		t.Errorf("%d routes in template.yaml, the test expects 9 (update it with the spec)", len(inTemplate))
	}
}

// Every sample request event under events/ is a valid request of the
// route it names, and every route has one. An event named *-no-iam.json
// lacks the IAM caller on purpose and must fail on exactly that.
func TestSampleEventsAreValidRequests(t *testing.T) {
	spec := load(t)
	files, err := filepath.Glob(filepath.Join(root, "events", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no events: %v", err)
	}
	covered := map[string]bool{}
	for _, file := range files {
		name := filepath.Base(file)
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var probe struct {
			RouteKey string `json:"routeKey"`
		}
		if json.Unmarshal(raw, &probe) != nil || probe.RouteKey == "" {
			t.Logf("%s: not an HTTP API event (no routeKey), skipped", name)
			continue
		}
		t.Run(name, func(t *testing.T) {
			route, err := spec.CheckEvent(raw)
			if strings.HasSuffix(name, "-no-iam.json") {
				if !apispec.IsSecurityError(err) {
					t.Fatalf("want a failed IAM requirement, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			covered[route] = true
		})
	}
	for _, r := range spec.Routes() {
		if !covered[r] {
			t.Errorf("no sample event under events/ for %s", r)
		}
	}
}

// CheckEvent refuses requests the document forbids, so the sample events
// test above cannot pass by checking nothing.
func TestCheckEventRejects(t *testing.T) {
	spec := load(t)
	base, err := os.ReadFile(filepath.Join(root, "events", "import.json"))
	if err != nil {
		t.Fatal(err)
	}
	tokenEv, err := os.ReadFile(filepath.Join(root, "events", "token.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		edit func(*events.APIGatewayV2HTTPRequest)
	}{
		{"unknown field", base, func(ev *events.APIGatewayV2HTTPRequest) { ev.Body = `{"access_token":"a","acces_token":"b"}` }},
		{"neither token", base, func(ev *events.APIGatewayV2HTTPRequest) { ev.Body = `{"expires_in":60}` }},
		{"both expiries", base, func(ev *events.APIGatewayV2HTTPRequest) {
			ev.Body = `{"access_token":"a","expires_in":60,"expires_at":"2030-01-01T00:00:00Z"}`
		}},
		{"eleven metadata keys", base, func(ev *events.APIGatewayV2HTTPRequest) {
			ev.Body = `{"access_token":"a","metadata":{"a":"","b":"","c":"","d":"","e":"","f":"","g":"","h":"","i":"","j":"","k":""}}`
		}},
		{"metadata key", base, func(ev *events.APIGatewayV2HTTPRequest) { ev.Body = `{"access_token":"a","metadata":{"a b":"x"}}` }},
		{"extra key", base, func(ev *events.APIGatewayV2HTTPRequest) { ev.Body = `{"access_token":"a","extra":{"email":"x"}}` }},
		{"no body", base, func(ev *events.APIGatewayV2HTTPRequest) { ev.Body = "" }},
		{"bad name", base, func(ev *events.APIGatewayV2HTTPRequest) {
			ev.RawPath, ev.PathParameters["connection"] = "/connections/github/a%20b", "a b"
		}},
		{"path and parameters disagree", base, func(ev *events.APIGatewayV2HTTPRequest) { ev.PathParameters["connection"] = "bob" }},
		{"min_ttl too large", tokenEv, func(ev *events.APIGatewayV2HTTPRequest) { ev.RawQueryString = "min_ttl=86401" }},
		{"min_ttl not a number", tokenEv, func(ev *events.APIGatewayV2HTTPRequest) { ev.RawQueryString = "min_ttl=soon" }},
		{"unknown route", tokenEv, func(ev *events.APIGatewayV2HTTPRequest) {
			ev.RouteKey = "GET /connections/{provider}/{connection}/secret"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ev events.APIGatewayV2HTTPRequest
			if err := json.Unmarshal(tc.raw, &ev); err != nil {
				t.Fatal(err)
			}
			tc.edit(&ev)
			raw, _ := json.Marshal(ev)
			if _, err := spec.CheckEvent(raw); err == nil {
				t.Fatal("accepted")
			} else {
				t.Log(err)
			}
		})
	}
}

// CheckAnswer refuses answers the document does not allow, and names the
// route and the status, so the checks of the mapping and of the e2e
// answers cannot pass by checking nothing.
func TestCheckAnswerRejects(t *testing.T) {
	spec := load(t)
	json := map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
	without := func(h map[string]string, name string) map[string]string {
		out := map[string]string{}
		for k, v := range h {
			if k != name {
				out[k] = v
			}
		}
		return out
	}
	const tokenRoute = "GET /connections/{provider}/{connection}/token"
	const good = `{"provider":"p","connection":"c","access_token":"a","token_type":"Bearer","expires_at":null,"scope":"","extra":{}}`
	answer := func(status int, headers map[string]string, body string) events.APIGatewayV2HTTPResponse {
		return events.APIGatewayV2HTTPResponse{StatusCode: status, Headers: headers, Body: body}
	}
	if err := spec.CheckAnswer(tokenRoute, answer(200, json, good)); err != nil {
		t.Fatalf("a good token answer: %v", err)
	}
	redirect := func(loc string) map[string]string {
		return map[string]string{"Location": loc, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
	}
	for _, tc := range []struct {
		name, route string
		resp        events.APIGatewayV2HTTPResponse
	}{
		{"status not documented", tokenRoute, answer(418, json, `{"error":"bad_request","message":"m"}`)},
		{"error code of another status", tokenRoute, answer(404, json, `{"error":"bad_request","message":"m"}`)},
		{"error without message", tokenRoute, answer(409, json, `{"error":"needs_reauth","message":""}`)},
		{"unknown field", tokenRoute, answer(200, json, strings.Replace(good, `"scope"`, `"refresh_token":"r","scope"`, 1))},
		{"field missing", tokenRoute, answer(200, json, strings.Replace(good, `,"extra":{}`, "", 1))},
		{"extra null", tokenRoute, answer(200, json, strings.Replace(good, `"extra":{}`, `"extra":null`, 1))},
		{"time not UTC", tokenRoute, answer(200, json, strings.Replace(good, "null", `"2026-01-02T15:04:05+08:00"`, 1))},
		{"time with fraction", tokenRoute, answer(200, json, strings.Replace(good, "null", `"2026-01-02T15:04:05.5Z"`, 1))},
		{"no Cache-Control", tokenRoute, answer(200, without(json, "Cache-Control"), good)},
		{"cacheable", tokenRoute, answer(200, map[string]string{"Content-Type": "application/json", "Cache-Control": "max-age=60", "X-Content-Type-Options": "nosniff"}, good)},
		{"not JSON", tokenRoute, answer(200, map[string]string{"Content-Type": "text/plain", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}, good)},
		{"body on 204", "DELETE /connections/{provider}/{connection}", answer(204, map[string]string{"Cache-Control": "no-store"}, "{}")},
		{"empty next_cursor", "GET /connections/{provider}", answer(200, json, `{"provider":"p","connections":[],"next_cursor":""}`)},
		{"list status unknown", "GET /connections/{provider}", answer(200, json,
			`{"provider":"p","connections":[{"connection":"c","status":"revoked","expires_at":null,"refreshed_at":null,"last_error":"","metadata":{}}]}`)},
		{"redirect without status", "GET /callback/{provider}", answer(302, redirect("https://app.example/x?provider=p&connection=c"), "")},
		{"pending without connect_id", "GET /callback/{provider}", answer(302, redirect("https://app.example/x?connection=c&provider=p&status=pending"), "")},
		{"error redirect with an unknown code", "GET /callback/{provider}", answer(302,
			redirect("https://app.example/x?connection=c&error=oops&message=m&provider=p&status=error"), "")},
		{"redirect leaking the referrer", "GET /callback/{provider}", answer(302,
			without(redirect("https://app.example/x?connection=c&provider=p&status=connected"), "Referrer-Policy"), "")},
		{"page that may be framed", "GET /callback/{provider}", answer(200, map[string]string{"Content-Type": "text/html; charset=utf-8",
			"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
			"Content-Security-Policy": "default-src 'none'"}, "<!doctype html><p>hi</p>")},
		{"unknown route", "GET /connections/{provider}/{connection}/secret", answer(200, json, good)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := spec.CheckAnswer(tc.route, tc.resp)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.HasPrefix(err.Error(), tc.route) || (tc.name != "unknown route" && !strings.Contains(err.Error(), fmt.Sprint(tc.resp.StatusCode))) {
				t.Fatalf("the error does not name the route and status: %v", err)
			}
			t.Log(err)
		})
	}
}
