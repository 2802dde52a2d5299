package e2e_test

import (
	"bufio"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// auditLines returns the audit lines logged so far whose msg is msg and
// whose connection is connection.
func auditLines(t *testing.T, msg, connection string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil || line["audit"] != true || line["msg"] != msg || line["connection"] != connection {
			continue
		}
		out = append(out, line)
	}
	return out
}

// The confirmed connect flow binds the grant to the app's logged-in user:
// the callback only parks it, and only the app's confirm call, for the
// connection the flow was started for, stores it, once.
func TestConfirmedConnectFlow(t *testing.T) {
	w := newSinaWorld(t, "confirm", 7*24*time.Hour)
	sink := eventsSink(t, w.name)
	authorize := startFunction(t, "authorize", w.env())
	callback := startFunction(t, "callback", w.env())
	tokenFn := startFunction(t, "token", w.env())
	k := store.Key{Provider: w.name, Connection: "alice"}
	base := "/connections/" + k.Provider + "/" + k.Connection

	// confirm without a page to return to is refused.
	expectStatus(t, invoke(t, authorize, request{method: "POST", path: base + "/authorize", body: `{"confirm":true}`, iam: true}), 400, "bad_request")

	resp := invoke(t, authorize, request{method: "POST", path: base + "/authorize",
		body: `{"confirm":true,"return_to":"` + returnOrigin + `/connected","metadata":{"user":"alice"}}`, iam: true})
	expectStatus(t, resp, 200, "")
	path, query := providerRedirect(t, resp.json["authorize_url"].(string))
	cb := invoke(t, callback, request{method: "GET", path: path, query: query})
	expectStatus(t, cb, 302, "")
	loc, _ := url.Parse(cb.Headers["Location"])
	connectID := loc.Query().Get("connect_id")
	if loc.Query().Get("status") != "pending" || len(connectID) < 32 || cb.Headers["Referrer-Policy"] != "no-referrer" {
		t.Fatalf("callback redirected to %q (%v)", cb.Headers["Location"], cb.Headers)
	}
	// Parked, not stored: nothing to read or use until confirmed.
	expectStatus(t, tokenOf(t, tokenFn, k.Provider, k.Connection, ""), 404, "not_found")
	expectStatus(t, invoke(t, tokenFn, request{method: "GET", path: base, iam: true}), 404, "not_found")
	if evs := receive(t, sink); len(evs) != 0 {
		t.Fatalf("%d events before the confirmation", len(evs))
	}

	confirm := func(conn, body string) response {
		return invoke(t, tokenFn, request{method: "POST", path: "/connections/" + k.Provider + "/" + conn + "/confirm", body: body, iam: true})
	}
	// Another connection (the victim's, in the attack the flow prevents)
	// cannot claim it; nor can garbage.
	expectStatus(t, confirm("mallory", `{"connect_id":"`+connectID+`"}`), 400, "bad_request")
	for _, body := range []string{`{"connect_id":"` + strings.Repeat("A", 43) + `"}`, `{"connect_id":""}`, `{}`, `{"connect_id":"` + connectID + `","x":1}`, `not json`} {
		expectStatus(t, confirm(k.Connection, body), 400, "bad_request")
	}
	ok := confirm(k.Connection, `{"connect_id":"`+connectID+`"}`)
	expectStatus(t, ok, 200, "")
	if ok.json["status"] != "active" || ok.json["connection"] != k.Connection || strings.Contains(ok.Body, "SCA") {
		t.Fatalf("confirm answer %s", ok.Body)
	}
	tok := tokenOf(t, tokenFn, k.Provider, k.Connection, "")
	expectStatus(t, tok, 200, "")
	if !w.emu.ValidAccess(tok.json["access_token"].(string)) {
		t.Fatal("the confirmed token is not valid at the provider")
	}
	// A connect id works once.
	expectStatus(t, confirm(k.Connection, `{"connect_id":"`+connectID+`"}`), 400, "bad_request")
	expectEvents(t, receive(t, sink), "Connection Authorized", map[string]any{"provider": k.Provider, "connection": k.Connection,
		"via": "confirm", "account": "", "scope": "", "metadata": map[string]any{"user": "alice"}})
	var lines []map[string]any
	for _, l := range auditLines(t, "connection authorized", k.Connection) {
		if l["provider"] == k.Provider { // other tests connect an "alice" too
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || lines[0]["caller"] != "arn:aws:iam::123456789012:user/backend" || lines[0]["via"] != "confirm" {
		t.Fatalf("confirm audit lines %v", lines)
	}
}

// Every release or change writes one audit line naming its caller.
func TestEveryChangeIsAudited(t *testing.T) {
	f := fns(t)
	const caller = "arn:aws:iam::123456789012:user/backend"
	conn := "audit-trail"
	connect(t, f, devstack.WeChatWeb, conn)
	expectStatus(t, tokenOf(t, f.token, devstack.WeChatWeb, conn, ""), 200, "")
	expectStatus(t, invoke(t, f.token, request{method: "POST", path: "/connections/wechat-web/" + conn + "/refresh", iam: true}), 200, "")
	expectStatus(t, invoke(t, f.token, request{method: "PUT", path: "/connections/oauth2/" + conn, body: `{"access_token":"imported-at"}`, iam: true}), 201, "")
	expectStatus(t, invoke(t, f.token, request{method: "DELETE", path: "/connections/oauth2/" + conn, iam: true}), 204, "")
	for _, tc := range []struct {
		msg   string
		n     int
		check func(map[string]any) bool
	}{
		{"authorization started", 1, func(l map[string]any) bool { return l["caller"] == caller && l["state_fingerprint"] != "" }},
		{"connection authorized", 1, func(l map[string]any) bool {
			return l["via"] == "callback" && strings.HasPrefix(l["account"].(string), "oEMU")
		}},
		{"token released", 2, func(l map[string]any) bool { return l["caller"] == caller && len(l["token_fingerprint"].(string)) == 8 }},
		{"connection imported", 1, func(l map[string]any) bool { return l["caller"] == caller && l["created"] == true }},
		{"connection deleted", 1, func(l map[string]any) bool { return l["caller"] == caller && l["existed"] == true }},
	} {
		lines := auditLines(t, tc.msg, conn)
		if len(lines) != tc.n {
			t.Fatalf("%d %q audit lines, want %d", len(lines), tc.msg, tc.n)
		}
		for _, l := range lines {
			if !tc.check(l) {
				t.Fatalf("%q audit line %v", tc.msg, l)
			}
		}
	}
}

// ALLOWED_ACCOUNTS and ALLOWED_ORG_ID refuse IAM callers from anywhere
// else, whatever their own policies allow.
func TestCallerAllowlists(t *testing.T) {
	f := fns(t)
	connect(t, f, devstack.OAuth2, "allowlisted")
	for name, env := range map[string]map[string]string{
		"account": {"ALLOWED_ACCOUNTS": "111111111111,222222222222"},
		"org":     {"ALLOWED_ORG_ID": "o-abcdefghij"},
	} {
		t.Run(name, func(t *testing.T) {
			r := startFunction(t, "token", env)
			expectStatus(t, tokenOf(t, r, devstack.OAuth2, "allowlisted", ""), 403, "forbidden")
		})
	}
	r := startFunction(t, "token", map[string]string{"ALLOWED_ACCOUNTS": "111111111111,123456789012"})
	expectStatus(t, tokenOf(t, r, devstack.OAuth2, "allowlisted", ""), 200, "")
}
