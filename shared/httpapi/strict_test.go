package httpapi_test

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/httpapi"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// The strict body reader: every malformed body is a
// 400 before the core is reached, and nothing panics.
func TestStrictBodies(t *testing.T) {
	reached := 0
	ok := func(k store.Key) *broker.Status { return &broker.Status{Key: k, Status: store.StatusActive} }
	core := &fakeCore{
		start: func(r broker.AuthorizeRequest) (*broker.AuthorizeResult, error) {
			reached++
			return &broker.AuthorizeResult{AuthorizeURL: "https://p/a", StateExpiresAt: time.Now()}, nil
		},
		imp:     func(r broker.ImportRequest) (*broker.Status, bool, error) { reached++; return ok(r.Key), true, nil },
		confirm: func(r broker.ConfirmRequest) (*broker.Status, error) { reached++; return ok(r.Key), nil },
	}
	h := &httpapi.Handler{Core: core}
	deepArr := `{"scopes":` + strings.Repeat("[", 70000) + strings.Repeat("]", 70000) + `}`
	deepObj := `{"metadata":` + strings.Repeat(`{"a":`, 20) + `1` + strings.Repeat("}", 20) + `}`
	for _, tc := range []struct {
		route, body string
		b64         bool
	}{
		{"authorize", `{"scopes":["a"],"sc\u006fpes":["b"]}`, false},
		{"authorize", `{"Return_To":"https://x"}`, false},
		{"authorize", `{"ſcopes":["a"]}`, false},
		{"authorize", `{"confirm":true}{"confirm":false}`, false},
		{"authorize", `{"confirm":true} x`, false},
		{"authorize", `{"metadata":{"a":"1","a":"2"}}`, false},
		{"authorize", `{"metadata":{"a":"1","\u0061":"2"}}`, false},
		{"authorize", deepArr, false},
		{"authorize", deepObj, false},
		{"authorize", `{"scopes":["a"]`, false},
		{"authorize", `"just a string"`, false},
		{"authorize", "\ufeff{}", false},
		{"authorize", "{\"m\xff\":1}", false},
		{"authorize", `{"confirm":"true"}`, false},
		{"authorize", `!!notbase64`, true},
		{"authorize", base64.StdEncoding.EncodeToString([]byte(`{"scopes":["a"],"scopes":["b"]}`)), true},
		{"import", `{"access_token":"a","expires_in":1e3}`, false},
		{"import", `{"access_token":"a","expires_in":"3600"}`, false},
		{"import", `{"access_token":"a","expires_at":"2030-01-01"}`, false},
		{"import", `{"access_token":"` + strings.Repeat("x", 161<<10) + `"}`, false},
		{"confirm", `{"connect_id":"x","connect_id":"y"}`, false},
		{"confirm", `{"Connect_ID":"xxxxxxxxxxxxxxxxxxxxx"}`, false},
		{"confirm", `{"connect_id":12345678901234567890}`, false},
	} {
		ev := loadEvent(t, "authorize.json")
		ev["body"], ev["isBase64Encoded"] = tc.body, tc.b64
		handle := h.Authorize
		switch tc.route {
		case "import":
			ev["rawPath"], ev["routeKey"] = "/connections/oauth2/alice", "PUT /connections/{provider}/{connection}"
			ev["pathParameters"] = map[string]any{"provider": "oauth2", "connection": "alice"}
			ev["requestContext"].(map[string]any)["http"].(map[string]any)["method"] = "PUT"
			handle = h.Connections
		case "confirm":
			ev["rawPath"], ev["routeKey"] = "/connections/oauth2/alice/confirm", "POST /connections/{provider}/{connection}/confirm"
			ev["pathParameters"] = map[string]any{"provider": "oauth2", "connection": "alice"}
			handle = h.Connections
		}
		before := reached
		resp, err := handle(context.Background(), marshal(t, ev))
		if err != nil || resp.StatusCode != 400 || reached != before {
			t.Errorf("%s %.60q: %d (core reached %v) %s", tc.route, tc.body, resp.StatusCode, reached != before, resp.Body)
		}
	}
}

func TestStrictBodiesPositiveControl(t *testing.T) {
	ok := func(k store.Key) *broker.Status { return &broker.Status{Key: k, Status: store.StatusActive} }
	core := &fakeCore{
		imp:     func(r broker.ImportRequest) (*broker.Status, bool, error) { return ok(r.Key), true, nil },
		confirm: func(r broker.ConfirmRequest) (*broker.Status, error) { return ok(r.Key), nil },
	}
	h := &httpapi.Handler{Core: core}
	ev := loadEvent(t, "authorize.json")
	ev["body"] = `{"access_token":"a","expires_in":3600}`
	ev["rawPath"], ev["routeKey"] = "/connections/oauth2/alice", "PUT /connections/{provider}/{connection}"
	ev["pathParameters"] = map[string]any{"provider": "oauth2", "connection": "alice"}
	ev["requestContext"].(map[string]any)["http"].(map[string]any)["method"] = "PUT"
	if resp, _ := h.Connections(context.Background(), marshal(t, ev)); resp.StatusCode != 201 {
		t.Fatalf("import control: %d %s", resp.StatusCode, resp.Body)
	}
	ev = loadEvent(t, "authorize.json")
	ev["body"] = `{"connect_id":"xxxxxxxxxxxxxxxxxxxxxxxx"}`
	ev["rawPath"], ev["routeKey"] = "/connections/oauth2/alice/confirm", "POST /connections/{provider}/{connection}/confirm"
	ev["pathParameters"] = map[string]any{"provider": "oauth2", "connection": "alice"}
	if resp, _ := h.Connections(context.Background(), marshal(t, ev)); resp.StatusCode != 200 {
		t.Fatalf("confirm control: %d %s", resp.StatusCode, resp.Body)
	}
}
