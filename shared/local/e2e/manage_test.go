package e2e_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

func importGrant(t *testing.T, r *lambdarun.Runner, k store.Key, body string) response {
	t.Helper()
	return invoke(t, r, request{method: "PUT", path: "/connections/" + k.Provider + "/" + k.Connection, body: body, iam: true})
}

// eventsSink collects every lifecycle event about provider.
func eventsSink(t *testing.T, provider string) *localaws.EventSink {
	t.Helper()
	sink, err := localaws.NewEventSink(context.Background(), stack.Endpoints.SSM,
		`{"source":["tokenbroker"],"detail":{"provider":["`+provider+`"]}}`)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	return sink
}

func receive(t *testing.T, sink *localaws.EventSink) []map[string]any {
	t.Helper()
	evs, err := sink.Receive(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// expectEvents checks the events received, in any order, against
// (detail-type, detail) pairs, exactly: no event missing, none extra.
func expectEvents(t *testing.T, got []map[string]any, want ...any) {
	t.Helper()
	type ev struct {
		Type   string
		Detail string
	}
	norm := func(typ string, detail any) ev {
		raw, _ := json.Marshal(detail)
		var m any
		_ = json.Unmarshal(raw, &m)
		canon, _ := json.Marshal(m)
		return ev{typ, string(canon)}
	}
	var g, w []ev
	for _, e := range got {
		g = append(g, norm(fmt.Sprint(e["detail-type"]), e["detail"]))
	}
	for i := 0; i+1 < len(want); i += 2 {
		w = append(w, norm(want[i].(string), want[i+1]))
	}
	less := func(s []ev) func(i, j int) bool {
		return func(i, j int) bool { return s[i].Type+s[i].Detail < s[j].Type+s[j].Detail }
	}
	sort.Slice(g, less(g))
	sort.Slice(w, less(w))
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("events:\n got  %v\n want %v", g, w)
	}
}

func TestImportThenRefreshASingleUseGrant(t *testing.T) {
	w := newSinaWorld(t, "import", 7*24*time.Hour)
	sink := eventsSink(t, w.name)
	tokenFn := startFunction(t, "token", w.env())
	access, refresh, ttl := w.emu.IssueGrant()
	k := store.Key{Provider: w.name, Connection: "migrated"}
	body := fmt.Sprintf(`{"access_token":%q,"refresh_token":%q,"expires_in":%d,"token_type":"bearer","scope":"all","extra":{"uid":"u-42"},"metadata":{"tenant":"acme","plan":"gold"}}`,
		access, refresh, int(ttl.Seconds()))
	resp := importGrant(t, tokenFn, k, body)
	expectStatus(t, resp, 201, "")
	if resp.json["status"] != "active" || resp.json["connection"] != k.Connection || strings.Contains(resp.Body, access) || strings.Contains(resp.Body, refresh) {
		t.Fatalf("import answer %s", resp.Body)
	}
	if md, _ := resp.json["metadata"].(map[string]any); md["tenant"] != "acme" {
		t.Fatalf("metadata %v", resp.json["metadata"])
	}
	tok := tokenOf(t, tokenFn, k.Provider, k.Connection, "")
	if tok.json["access_token"] != access {
		t.Fatalf("imported token not served: %s", tok.Body)
	}
	// The importer's uid is its word, not SinaCloud's.
	if extra, _ := tok.json["extra"].(map[string]any); extra["asserted_uid"] != "u-42" || extra["uid"] != nil {
		t.Fatalf("imported extra served as %v, want only asserted_uid", tok.json["extra"])
	}
	// Refreshed under the lease like any other: the single-use refresh
	// token is spent once, and the new one is stored.
	ageConnection(t, w.table, k.Provider, k.Connection, 90*time.Second)
	fresh := tokenOf(t, tokenFn, k.Provider, k.Connection, "min_ttl=600")
	expectStatus(t, fresh, 200, "")
	if fresh.json["access_token"] == access || !w.emu.ValidAccess(fresh.json["access_token"].(string)) {
		t.Fatal("the imported grant was not refreshed")
	}
	c, _ := w.store.Get(context.Background(), k, true)
	if w.emu.RefreshCalls() != 1 || w.emu.RefreshReuses() != 0 || !w.emu.RefreshUsable(c.RefreshToken) {
		t.Fatalf("%d refreshes, %d reuses; stored refresh token usable: %v", w.emu.RefreshCalls(), w.emu.RefreshReuses(), w.emu.RefreshUsable(c.RefreshToken))
	}
	// Importing again without "replace" changes nothing: 409. With it,
	// the grant is replaced: 200.
	access2, refresh2, _ := w.emu.IssueGrant()
	second := fmt.Sprintf(`{"access_token":%q,"refresh_token":%q,"expires_at":%q`, access2, refresh2, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	expectStatus(t, importGrant(t, tokenFn, k, second+`}`), 409, "conflict")
	if tok := tokenOf(t, tokenFn, k.Provider, k.Connection, ""); tok.json["access_token"] != fresh.json["access_token"] {
		t.Fatal("an import refused with 409 changed the connection")
	}
	again := importGrant(t, tokenFn, k, second+`,"replace":true}`)
	expectStatus(t, again, 200, "")
	md := map[string]any{"tenant": "acme", "plan": "gold"}
	expectEvents(t, receive(t, sink),
		"Connection Authorized", map[string]any{"provider": k.Provider, "connection": k.Connection, "via": "import", "account": "", "scope": "all", "metadata": md},
		"Connection Authorized", map[string]any{"provider": k.Provider, "connection": k.Connection, "via": "import", "account": "", "scope": "", "metadata": map[string]any{}})
}

func TestImportRefusesWhatItCannotKeep(t *testing.T) {
	w := newSinaWorld(t, "badimport", 7*24*time.Hour)
	tokenFn := startFunction(t, "token", w.env())
	k := store.Key{Provider: w.name, Connection: "x"}
	tooMany := map[string]string{}
	for i := 0; i < 11; i++ {
		tooMany[fmt.Sprintf("k%d", i)] = "v"
	}
	many, _ := json.Marshal(map[string]any{"access_token": "a", "metadata": tooMany})
	for name, body := range map[string]string{
		"no token":           `{"expires_in":60}`,
		"empty body":         ``,
		"unknown field":      `{"access_token":"a","password":"p"}`,
		"case-folded field":  `{"Access_Token":"a"}`,
		"duplicate key":      `{"access_token":"a","access_token":"b"}`,
		"duplicate in map":   `{"access_token":"a","metadata":{"t":"1","t":"2"}}`,
		"trailing data":      `{"access_token":"a"} {"x":1}`,
		"both expiries":      `{"access_token":"a","expires_in":60,"expires_at":"2030-01-01T00:00:00Z"}`,
		"negative expiry":    `{"access_token":"a","expires_in":-1}`,
		"bad expires_at":     `{"access_token":"a","expires_at":"tomorrow"}`,
		"not an object":      `["access_token"]`,
		"wrong type":         `{"access_token":42}`,
		"secret in extra":    `{"access_token":"a","extra":{"id_token":"eyJ"}}`,
		"metadata key chars": `{"access_token":"a","metadata":{"a b":"v"}}`,
		"metadata too long":  `{"access_token":"a","metadata":{"k":"` + strings.Repeat("é", 257) + `"}}`,
		"eleven metadata":    string(many),
		"token too large":    `{"access_token":"` + strings.Repeat("A", 65<<10) + `"}`,
		"body too large":     `{"access_token":"` + strings.Repeat("A", 161<<10) + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			expectStatus(t, importGrant(t, tokenFn, k, body), 400, "bad_request")
		})
	}
	if _, err := w.store.Get(context.Background(), k, true); err == nil {
		t.Fatal("a refused import stored something")
	}
	expectStatus(t, importGrant(t, tokenFn, store.Key{Provider: devstack.WeChatMP, Connection: "app"}, `{"access_token":"a"}`), 400, "bad_request")
	expectStatus(t, importGrant(t, tokenFn, store.Key{Provider: "no-such-provider", Connection: "x"}, `{"access_token":"a"}`), 404, "not_found")
	unsigned := invoke(t, tokenFn, request{method: "PUT", path: "/connections/" + k.Provider + "/x", body: `{"access_token":"a"}`})
	expectStatus(t, unsigned, 401, "unauthorized")
}

func TestListPagesOverConnectionsWithFilters(t *testing.T) {
	const n = 250
	w := newSinaWorld(t, "list", 7*24*time.Hour)
	tokenFn := startFunction(t, "token", w.env())
	ctx := context.Background()
	var names []string
	needs := map[string]bool{}
	for i := 0; i < n; i++ {
		k := store.Key{Provider: w.name, Connection: fmt.Sprintf("user-%03d", (i*37)%n)}
		body := fmt.Sprintf(`{"access_token":"at-%d","metadata":{"i":"%d"}}`, i, i)
		if i%7 == 0 {
			body = fmt.Sprintf(`{"access_token":"at-%d","refresh_token":"rt-%d","expires_in":3600}`, i, i)
		}
		expectStatus(t, importGrant(t, tokenFn, k, body), 201, "")
		names = append(names, k.Connection)
		if i%5 == 0 {
			c, _ := w.store.Get(ctx, k, true)
			if err := w.store.MarkNeedsReauth(ctx, k, c.Fence(), "revoked in a test"); err != nil {
				t.Fatal(err)
			}
			needs[k.Connection] = true
		}
	}
	sort.Strings(names)
	// Another provider's connections never show.
	other := store.Key{Provider: devstack.OAuth2, Connection: "user-000"}
	expectStatus(t, importGrant(t, tokenFn, other, `{"access_token":"x"}`), 201, "")

	walk := func(query string, limit int) []string {
		var got []string
		cursor := ""
		for pages := 0; ; pages++ {
			q := query + fmt.Sprintf("&limit=%d", limit)
			if cursor != "" {
				q += "&cursor=" + url.QueryEscape(cursor)
			}
			resp := invoke(t, tokenFn, request{method: "GET", path: "/connections/" + w.name, query: strings.TrimPrefix(q, "&"), iam: true})
			expectStatus(t, resp, 200, "")
			if strings.Contains(resp.Body, "at-") || strings.Contains(resp.Body, "rt-") {
				t.Fatal("the list carries tokens")
			}
			conns, _ := resp.json["connections"].([]any)
			if len(conns) > limit || (len(conns) < limit && resp.json["next_cursor"] != nil) {
				t.Fatalf("page of %d with limit %d, next_cursor %v", len(conns), limit, resp.json["next_cursor"])
			}
			for _, c := range conns {
				m := c.(map[string]any)
				for _, field := range []string{"connection", "status", "expires_at", "refreshed_at", "last_error", "metadata"} {
					if _, ok := m[field]; !ok {
						t.Fatalf("listed connection without %s: %v", field, m)
					}
				}
				got = append(got, m["connection"].(string)+"/"+m["status"].(string))
			}
			next, _ := resp.json["next_cursor"].(string)
			if next == "" {
				return got
			}
			cursor = next
			if pages > n {
				t.Fatal("paging does not end")
			}
		}
	}
	var all, active, reauth []string
	for _, name := range names {
		status := "active"
		if needs[name] {
			status = "needs_reauth"
			reauth = append(reauth, name+"/"+status)
		} else {
			active = append(active, name+"/"+status)
		}
		all = append(all, name+"/"+status)
	}
	for _, tc := range []struct {
		query string
		limit int
		want  []string
	}{{"", 100, all}, {"", 7, all}, {"status=active", 100, active}, {"status=needs_reauth", 100, reauth}, {"status=needs_reauth", 13, reauth}} {
		if got := walk(tc.query, tc.limit); !reflect.DeepEqual(got, tc.want) {
			t.Fatalf("%q limit %d: got %d connections, want %d (or out of order)", tc.query, tc.limit, len(got), len(tc.want))
		}
	}
	// Default limit 50, and the exact last page has no cursor.
	resp := invoke(t, tokenFn, request{method: "GET", path: "/connections/" + w.name, iam: true})
	if conns, _ := resp.json["connections"].([]any); len(conns) != 50 || resp.json["next_cursor"] == nil {
		t.Fatalf("default page: %d connections", len(conns))
	}
	resp = invoke(t, tokenFn, request{method: "GET", path: "/connections/" + w.name, query: "status=needs_reauth&limit=50", iam: true})
	if conns, _ := resp.json["connections"].([]any); len(conns) != 50 || resp.json["next_cursor"] != nil {
		t.Fatalf("exactly 50 needs_reauth: %d, cursor %v", len(conns), resp.json["next_cursor"])
	}
	badCursor := base64.RawURLEncoding.EncodeToString([]byte(`{"a":"../etc"}`))
	for name, q := range map[string]string{
		"limit 0": "limit=0", "limit 101": "limit=101", "limit word": "limit=ten", "status": "status=expired",
		"empty status": "status=", "cursor not base64": "cursor=%25%25", "cursor not ours": "cursor=" + badCursor,
		"cursor garbage": "cursor=" + base64.RawURLEncoding.EncodeToString([]byte("garbage")), "unknown parameter": "sort=desc",
	} {
		t.Run(name, func(t *testing.T) {
			expectStatus(t, invoke(t, tokenFn, request{method: "GET", path: "/connections/" + w.name, query: q, iam: true}), 400, "bad_request")
		})
	}
	expectStatus(t, invoke(t, tokenFn, request{method: "GET", path: "/connections/no-such-provider", iam: true}), 404, "not_found")
	expectStatus(t, invoke(t, tokenFn, request{method: "GET", path: "/connections/" + w.name}), 401, "unauthorized")
}

// Every lifecycle event, exactly once and with its documented detail,
// through the real functions, as an EventBridge subscriber receives it.
func TestLifecycleEventsExactlyOnce(t *testing.T) {
	w := newSinaWorld(t, "events", 7*24*time.Hour)
	sink := eventsSink(t, w.name)
	authorize := startFunction(t, "authorize", w.env())
	callback := startFunction(t, "callback", w.env())
	tokenFn := startFunction(t, "token", w.env())
	refresher := startFunction(t, "refresher", w.env())
	k := store.Key{Provider: w.name, Connection: "life"}
	md := map[string]any{"tenant": "acme"}

	// Authorized via the callback, with the metadata given to authorize.
	resp := invoke(t, authorize, request{method: "POST", path: "/connections/" + k.Provider + "/" + k.Connection + "/authorize",
		body: `{"return_to":"` + returnOrigin + `/done","metadata":{"tenant":"acme"}}`, iam: true})
	expectStatus(t, resp, 200, "")
	path, query := providerRedirect(t, resp.json["authorize_url"].(string))
	expectStatus(t, invoke(t, callback, request{method: "GET", path: path, query: query}), 302, "")
	st := invoke(t, tokenFn, request{method: "GET", path: "/connections/" + k.Provider + "/" + k.Connection, iam: true})
	if got, _ := st.json["metadata"].(map[string]any); got["tenant"] != "acme" {
		t.Fatalf("status metadata %s", st.Body)
	}
	expectEvents(t, receive(t, sink), "Connection Authorized",
		map[string]any{"provider": k.Provider, "connection": k.Connection, "via": "callback", "account": "", "scope": "", "metadata": md})

	// A failure streak that outlives the access token: Refresh Failing once,
	// then Recovered once.
	w.emu.Inject("/oauth2/access_token", htmlFault(503), 2)
	ageConnection(t, w.table, k.Provider, k.Connection, -time.Minute)
	expectStatus(t, tokenOf(t, tokenFn, k.Provider, k.Connection, ""), 503, "provider_unavailable")
	c, _ := w.store.Get(context.Background(), k, true)
	expectEvents(t, receive(t, sink), "Connection Refresh Failing", map[string]any{"provider": k.Provider, "connection": k.Connection,
		"attempts": 1, "last_error": "http_503: HTML page instead of a token response", "expires_at": c.ExpiresAt.UTC().Format(time.RFC3339), "metadata": md})
	ageConnection(t, w.table, k.Provider, k.Connection, -time.Minute)
	tick(t, refresher) // the second injected failure: the streak goes on, nothing new
	ageConnection(t, w.table, k.Provider, k.Connection, -time.Minute)
	expectStatus(t, tokenOf(t, tokenFn, k.Provider, k.Connection, ""), 200, "")
	expectEvents(t, receive(t, sink), "Connection Recovered", map[string]any{"provider": k.Provider, "connection": k.Connection, "metadata": md})

	// Needs re-authorization, once, however often it is asked.
	w.emu.Inject("/oauth2/access_token", oauthFault(400, "invalid_grant", "revoked"), 1)
	ageConnection(t, w.table, k.Provider, k.Connection, 30*time.Second)
	expectStatus(t, tokenOf(t, tokenFn, k.Provider, k.Connection, "min_ttl=600"), 409, "needs_reauth")
	expectStatus(t, tokenOf(t, tokenFn, k.Provider, k.Connection, "min_ttl=600"), 409, "needs_reauth")
	tick(t, refresher)
	expectEvents(t, receive(t, sink), "Connection Needs Reauthorization", map[string]any{"provider": k.Provider, "connection": k.Connection,
		"reason": "the provider refused the refresh: invalid_grant: revoked", "provider_error": "invalid_grant", "metadata": md})

	// Deleted, once; SinaCloud has no revoke endpoint.
	del := request{method: "DELETE", path: "/connections/" + k.Provider + "/" + k.Connection, iam: true}
	expectStatus(t, invoke(t, tokenFn, del), 204, "")
	expectStatus(t, invoke(t, tokenFn, del), 204, "")
	expectEvents(t, receive(t, sink), "Connection Deleted", map[string]any{"provider": k.Provider, "connection": k.Connection, "revoked": false, "metadata": md})
}
