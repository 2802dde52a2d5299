package httpapi_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/httpapi"
)

// Hostile POST …/refresh bodies: each is refused with 400 (or, for a
// JSON null, treated as no name), and the would-be token never shows in
// the answer or the log.
func TestRefreshReviewHostileRefreshBodies(t *testing.T) {
	var got *broker.TokenRequest
	core := &fakeCore{token: func(r broker.TokenRequest) (*broker.Token, error) {
		got = &r
		return &broker.Token{Key: r.Key, AccessToken: "new"}, nil
	}}
	var logs bytes.Buffer
	h := &httpapi.Handler{Core: core, Log: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	send := func(body string) httpapi.Response {
		ev := loadEvent(t, "refresh.json")
		ev["body"] = body
		got = nil
		resp, _ := h.Connections(context.Background(), marshal(t, ev))
		return resp
	}
	const s = "supersecrettok"
	for _, bad := range []string{
		`{"rejected_token":supersecrettok}`, `{"rejected_token":"supersecrettok",}`, `{"rejected_token":["supersecrettok"]}`,
		`{"rejected_token":{"x":"supersecrettok"}}`, `"supersecrettok"`, `{"rejected_token":"supersecrettok"}supersecrettok`,
		`{"Rejected_Token":"supersecrettok"}`, `{"rejected_token":"supersecrettok"`, `{"supersecrettok":1}`,
		`{"rejected_token":"supersecrettok","rejected_token":"supersecrettok"}`, `{"rejected_token":true}`,
		`{"rejected_token":"` + strings.Repeat("A", 1<<20) + `"}`,
	} {
		resp := send(bad)
		if resp.StatusCode != 400 || got != nil {
			t.Errorf("body %.60s: %d %s (core called: %v)", bad, resp.StatusCode, resp.Body, got != nil)
		}
		if strings.Contains(resp.Body, s) {
			t.Errorf("body %.60s: answer echoes the token: %s", bad, resp.Body)
		}
	}
	if strings.Contains(logs.String(), s) {
		t.Errorf("log echoes the token: %s", logs.String())
	}
	resp := send(`{"rejected_token":null}`)
	t.Logf("null: %d %s, request %+v", resp.StatusCode, resp.Body, got)
	resp = send(`{"rejected_token":"\u0000\ud800"}`)
	t.Logf("odd escapes: %d %s, request %+v", resp.StatusCode, resp.Body, got)
}
