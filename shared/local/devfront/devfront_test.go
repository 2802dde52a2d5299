package devfront_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/tokenbroker/tokenbroker/shared/local/devfront"
)

func TestRoutesComeFromTheTemplate(t *testing.T) {
	routes, err := devfront.Routes("../../../template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range routes {
		got[r.RouteKey()] = r.Function
		if r.Public != strings.HasPrefix(r.Path, "/callback/") {
			t.Errorf("%s public=%v", r.RouteKey(), r.Public)
		}
	}
	want := map[string]string{
		"POST /connections/{provider}/{connection}/authorize": "AuthorizeFunction",
		"GET /callback/{provider}":                            "CallbackFunction",
		"GET /connections/{provider}/{connection}/token":      "TokenFunction",
		"GET /connections/{provider}/{connection}":            "TokenFunction",
		"POST /connections/{provider}/{connection}/refresh":   "TokenFunction",
		"DELETE /connections/{provider}/{connection}":         "TokenFunction",
		"GET /connections/{provider}":                         "TokenFunction",
		"PUT /connections/{provider}/{connection}":            "TokenFunction",
		"POST /connections/{provider}/{connection}/confirm":   "TokenFunction",
	}
	if len(got) != len(want) {
		t.Fatalf("routes %v", got)
	}
	for k, fn := range want {
		if got[k] != fn {
			t.Errorf("%s -> %q, want %s", k, got[k], fn)
		}
	}
}

func TestFrontBuildsEventsAndChecksSigV4(t *testing.T) {
	routes, err := devfront.Routes("../../../template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var seen events.APIGatewayV2HTTPRequest
	var fn string
	front := &devfront.Front{Routes: routes, Domain: "127.0.0.1:3000", Credentials: []aws.Credentials{akidLocal}, Invoke: func(_ context.Context, function string, payload []byte) ([]byte, error) {
		fn = function
		seen = events.APIGatewayV2HTTPRequest{}
		_ = json.Unmarshal(payload, &seen)
		return json.Marshal(events.APIGatewayV2HTTPResponse{StatusCode: 200, Headers: map[string]string{"Content-Type": "application/json"}, Body: `{"ok":true}`})
	}}
	srv := httptest.NewServer(front)
	defer srv.Close()

	resp, _ := http.Get(srv.URL + "/connections/gh/alice/token")
	if resp.StatusCode != 401 {
		t.Fatalf("unsigned: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/connections/gh/alice/token?min_ttl=30", nil)
	sign(t, req, akidLocal, "execute-api", "us-east-1", time.Now(), nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != `{"ok":true}` || fn != "TokenFunction" {
		t.Fatalf("%d %s via %s", resp.StatusCode, body, fn)
	}
	if seen.RouteKey != "GET /connections/{provider}/{connection}/token" || seen.PathParameters["connection"] != "alice" ||
		seen.QueryStringParameters["min_ttl"] != "30" || seen.RequestContext.Authorizer.IAM.AccessKey != "AKIDLOCAL" || seen.RequestContext.HTTP.Method != "GET" {
		t.Fatalf("event %+v", seen)
	}
	resp, _ = http.Get(srv.URL + "/callback/gh?code=c&state=s")
	if resp.StatusCode != 200 || fn != "CallbackFunction" || seen.RequestContext.Authorizer != nil {
		t.Fatalf("public callback: %d %s", resp.StatusCode, fn)
	}
	resp, _ = http.Get(srv.URL + "/nowhere")
	if resp.StatusCode != 404 {
		t.Fatalf("unknown route: %d", resp.StatusCode)
	}
}
