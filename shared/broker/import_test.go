package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

// Tests of the grant-replacing paths (callback, confirm, import): who may
// replace a grant, what an importer may claim about it, and what a
// replacement announces and revokes.

// An import's extra.sub (openid, uid, unionid) was once stored and served
// as the provider's own, and published as the account of Connection
// Authorized: a caller allowed PUT could tell backends its tokens belonged
// to someone else. It is kept as asserted_<name> now, and the event names
// no account.
func TestImportedIdentityIsOnlyAsserted(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sink := eventQueueFor(t, `{"source":["tokenbroker"],"detail-type":["Connection Authorized"]}`)
	k := store.Key{Provider: devstack.OAuth2, Connection: "imp-asserted"}
	extra := map[string]string{"sub": "victim-sub", "openid": "victim-openid", "uid": "victim-uid", "unionid": "victim-union", "is_snapshotuser": "1"}
	if _, _, err := f.b.Import(ctx, broker.ImportRequest{Key: k, AccessToken: "at-asserted-0123456789", ExpiresIn: ptr(int64(3600)), Extra: extra}); err != nil {
		t.Fatal(err)
	}
	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range extra {
		if got, ok := tok.Extra[name]; ok {
			t.Errorf("extra.%s = %q served as the provider's", name, got)
		}
		if got := tok.Extra[broker.AssertedPrefix+name]; got != v {
			t.Errorf("extra.%s%s = %q, want %q", broker.AssertedPrefix, name, got, v)
		}
	}
	if len(tok.Extra) != len(extra) {
		t.Errorf("extra %v: want exactly the %d asserted fields", tok.Extra, len(extra))
	}
	evs := eventsAbout(receiveAll(t, sink), k)
	if len(evs) != 1 {
		t.Fatalf("%d Connection Authorized events, want 1", len(evs))
	}
	if d := evs[0]["detail"].(map[string]any); d["account"] != "" {
		t.Errorf("Connection Authorized account %q from an import, want none", d["account"])
	}
	// The asserted name itself is accepted (a round trip of an export);
	// two spellings that disagree are not.
	k2 := store.Key{Provider: devstack.OAuth2, Connection: "imp-asserted-2"}
	if _, _, err := f.b.Import(ctx, broker.ImportRequest{Key: k2, AccessToken: "at-asserted-2", Extra: map[string]string{"sub": "a", "asserted_sub": "b"}}); broker.ErrorCode(err) != broker.CodeBadRequest {
		t.Errorf("sub and asserted_sub disagreeing: %v, want bad_request", err)
	}
	if _, _, err := f.b.Import(ctx, broker.ImportRequest{Key: k2, AccessToken: "at-asserted-2", Extra: map[string]string{"asserted_sub": "b"}}); err != nil {
		t.Errorf("asserted_sub: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// PUT /connections/{p}/{c} once replaced an active grant with no
// precondition. Replacing now needs Replace; without it the answer is
// conflict and the stored grant, its version and the events are untouched.
func TestImportReplacesOnlyWithReplace(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sink := eventQueueFor(t, `{"source":["tokenbroker"],"detail-type":["Connection Authorized"]}`)
	k := store.Key{Provider: devstack.OAuth2, Connection: "imp-replace"}
	imp := func(at string, replace bool) (bool, error) {
		_, created, err := f.b.Import(ctx, broker.ImportRequest{Key: k, AccessToken: at, ExpiresIn: ptr(int64(3600)), Replace: replace})
		return created, err
	}
	if created, err := imp("at-first-0123456789", false); err != nil || !created {
		t.Fatalf("first import: created %v, %v", created, err)
	}
	before, _ := f.store.Get(ctx, k, true)
	// The same import again (a caller retrying after its answer was lost)
	// answers as the first did, and writes and announces nothing.
	if created, err := imp("at-first-0123456789", false); err != nil || !created {
		t.Fatalf("the same import again: created %v, %v", created, err)
	}
	if again, _ := f.store.Get(ctx, k, true); again.Fence() != before.Fence() {
		t.Fatalf("the same import again wrote: at %v, was at %v", again.Fence(), before.Fence())
	}
	if _, err := imp("at-second-0123456789", false); broker.ErrorCode(err) != broker.CodeConflict {
		t.Fatalf("import over an existing connection without replace: %v, want conflict", err)
	}
	after, _ := f.store.Get(ctx, k, true)
	if after.AccessToken != "at-first-0123456789" || after.Fence() != before.Fence() {
		t.Fatalf("a refused import changed the connection: %s at %v, was at %v", after.AccessToken, after.Fence(), before.Fence())
	}
	if created, err := imp("at-third-0123456789", true); err != nil || created {
		t.Fatalf("import with replace: created %v, %v", created, err)
	}
	if tok, _ := f.b.Token(ctx, broker.TokenRequest{Key: k}); tok == nil || tok.AccessToken != "at-third-0123456789" {
		t.Fatalf("after the replacing import: %+v", tok)
	}
	// Replace on a new connection is allowed and creates it.
	k2 := store.Key{Provider: devstack.OAuth2, Connection: "imp-replace-new"}
	if _, created, err := f.b.Import(ctx, broker.ImportRequest{Key: k2, AccessToken: "at-new", Replace: true}); err != nil || !created {
		t.Fatalf("replace on a new connection: created %v, %v", created, err)
	}
	if evs := eventsAbout(receiveAll(t, sink), k); len(evs) != 2 {
		t.Fatalf("%d Connection Authorized events, want 2 (create, replace)", len(evs))
	}
}

// An import whose answer was lost is retried after the broker has already
// refreshed the grant it made (an import without expiry is refreshed at
// once): the retry, with or without replace, is recognised as the import
// that made the grant and writes nothing, so the spent refresh token is
// never written back. The same tokens asked with a different scope are a
// different import: conflict.
func TestRetriedImportAfterARefreshKeepsTheRefreshedGrant(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	src := store.Key{Provider: devstack.OAuth2, Connection: "imp-retry-src"}
	f.authorize(t, src)
	s, err := f.store.Get(ctx, src, true)
	if err != nil {
		t.Fatal(err)
	}
	k := store.Key{Provider: devstack.OAuth2, Connection: "imp-retry"}
	req := broker.ImportRequest{Key: k, RefreshToken: s.RefreshToken, Metadata: map[string]string{"tenant": "t1"}}
	if _, created, err := f.b.Import(ctx, req); err != nil || !created {
		t.Fatalf("import: created %v, %v", created, err)
	}
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); err != nil {
		t.Fatal(err)
	}
	refreshed, _ := f.store.Get(ctx, k, true)
	if refreshed.RefreshToken == s.RefreshToken {
		t.Fatal("the emulator did not rotate the refresh token; the test shows nothing")
	}
	unchanged := func(what string) {
		t.Helper()
		if now, _ := f.store.Get(ctx, k, true); now.Fence() != refreshed.Fence() || now.RefreshToken != refreshed.RefreshToken {
			t.Fatalf("%s wrote: at %v, was at %v", what, now.Fence(), refreshed.Fence())
		}
	}
	for _, replace := range []bool{false, true} {
		req.Replace = replace
		st, created, err := f.b.Import(ctx, req)
		// Answered as the import that made the grant was: it created it.
		if err != nil || !created || st == nil || !st.ExpiresAt.Equal(refreshed.ExpiresAt) {
			t.Fatalf("retried import (replace %v): %+v created %v, %v; want the refreshed grant", replace, st, created, err)
		}
		unchanged(fmt.Sprintf("retried import (replace %v)", replace))
	}
	// The same tokens in a request built anew (another scope, expires_in
	// counted again): they started the grant and are spent now, so they
	// are not written back, even with replace.
	for _, change := range []func(*broker.ImportRequest){
		func(r *broker.ImportRequest) { r.Scope = "more" },
		func(r *broker.ImportRequest) { r.ExpiresIn, r.Replace = ptr(int64(59)), true },
	} {
		again := req
		again.Replace = false
		change(&again)
		if _, _, err := f.b.Import(ctx, again); broker.ErrorCode(err) != broker.CodeConflict {
			t.Fatalf("the imported tokens again in another request %+v: %v, want conflict", again, err)
		}
		unchanged("the imported tokens in another request")
	}
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); err != nil {
		t.Fatalf("the grant after the retries: %v", err)
	}
}

func TestPrincipal(t *testing.T) {
	for in, want := range map[string]string{
		"arn:aws:sts::111122223333:assumed-role/app-backend/i-0abc":     "arn:aws:iam::111122223333:role/app-backend",
		"arn:aws:sts::111122223333:assumed-role/app-backend/a/b":        "arn:aws:iam::111122223333:role/app-backend",
		"arn:aws-cn:sts::111122223333:assumed-role/app/s":               "arn:aws-cn:iam::111122223333:role/app",
		"arn:aws:iam::111122223333:user/alice":                          "arn:aws:iam::111122223333:user/alice",
		"arn:aws:iam::111122223333:role/app-backend":                    "arn:aws:iam::111122223333:role/app-backend",
		"arn:aws:sts::111122223333:federated-user/bob":                  "arn:aws:sts::111122223333:federated-user/bob",
		"arn:aws:sts::111122223333:assumed-role/app-backend":            "arn:aws:sts::111122223333:assumed-role/app-backend",
		"arn:aws:sts::111122223333:assumed-role//s":                     "arn:aws:sts::111122223333:assumed-role//s",
		"arn:aws:sts:us-east-1:111122223333:assumed-role/app-backend/s": "arn:aws:sts:us-east-1:111122223333:assumed-role/app-backend/s",
		"AIDAEXAMPLE": "AIDAEXAMPLE",
		"":            "",
	} {
		if got := broker.Principal(in); got != want {
			t.Errorf("Principal(%q) = %q, want %q", in, got, want)
		}
	}
}

// auditLog captures a broker's log lines.
func auditLog(b *broker.Broker) *lockedWriter {
	w := &lockedWriter{w: &bytes.Buffer{}}
	b.Log = telemetry.NewLogger(w, "debug")
	return w
}

func (l *lockedWriter) lines(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	raw := append([]byte(nil), l.w.Bytes()...)
	l.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %s", sc.Text())
		}
		out = append(out, m)
	}
	return out
}

// The state item once stored no caller: any principal allowed POST
// …/confirm could confirm a flow another principal started. Confirm is
// bound to the starting principal now (assumed-role sessions count as
// their role); another gets forbidden and the grant stays claimable. Every
// audit line of the flow carries the state's fingerprint.
func TestConfirmBoundToTheStartingPrincipal(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.b.ReturnToAllowlist = []string{"https://app.test"}
	logs := auditLog(f.b)
	const starter = "arn:aws:sts::111122223333:assumed-role/app-backend/i-0abc"
	k := store.Key{Provider: devstack.OAuth2, Connection: "confirm-principal"}
	res, err := f.b.StartAuthorization(ctx, broker.AuthorizeRequest{Key: k, Confirm: true, ReturnTo: "https://app.test/done", Caller: starter})
	if err != nil {
		t.Fatal(err)
	}
	code, state := followAuthorize(t, res.AuthorizeURL)
	cb, err := f.b.CompleteAuthorization(ctx, broker.CallbackRequest{Provider: k.Provider, Code: code, State: state})
	if err != nil || cb.Err != nil || cb.ConnectID == "" {
		t.Fatalf("callback: %v / %+v", err, cb)
	}
	for _, other := range []string{
		"arn:aws:sts::111122223333:assumed-role/other-role/i-0abc",
		"arn:aws:iam::111122223333:user/mallory",
		"arn:aws:sts::444455556666:assumed-role/app-backend/i-0abc",
		"",
	} {
		if _, err := f.b.Confirm(ctx, broker.ConfirmRequest{Key: k, ConnectID: cb.ConnectID, Caller: other}); broker.ErrorCode(err) != broker.CodeForbidden {
			t.Errorf("confirm by %q: %v, want forbidden", other, err)
		}
	}
	if _, err := f.store.Get(ctx, k, true); err == nil {
		t.Fatal("a refused confirm stored the connection")
	}
	// Another session of the same role: the same principal.
	if _, err := f.b.Confirm(ctx, broker.ConfirmRequest{Key: k, ConnectID: cb.ConnectID, Caller: "arn:aws:sts::111122223333:assumed-role/app-backend/i-0def"}); err != nil {
		t.Fatalf("confirm by another session of the starting role: %v", err)
	}
	want := store.Fingerprint(state)
	seen := map[string]int{}
	for _, l := range logs.lines(t) {
		if l["audit"] != true {
			continue
		}
		msg, _ := l["msg"].(string)
		seen[msg]++
		if l["state_fingerprint"] != want {
			t.Errorf("audit line %q has state_fingerprint %v, want %s", msg, l["state_fingerprint"], want)
		}
	}
	for msg, n := range map[string]int{"authorization started": 1, "grant parked for confirmation": 1,
		"confirm refused: another principal started this flow": 4, "connection authorized": 1} {
		if seen[msg] != n {
			t.Errorf("%d audit lines %q, want %d (all: %v)", seen[msg], msg, n, seen)
		}
	}
}

// The plain flow's callback line carries the fingerprint too.
func TestCallbackAuditLineCarriesTheStateFingerprint(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	logs := auditLog(f.b)
	k := store.Key{Provider: devstack.OAuth2, Connection: "callback-fingerprint"}
	res, err := f.b.StartAuthorization(ctx, broker.AuthorizeRequest{Key: k, Caller: "arn:aws:iam::111122223333:user/ops"})
	if err != nil {
		t.Fatal(err)
	}
	code, state := followAuthorize(t, res.AuthorizeURL)
	if cb, err := f.b.CompleteAuthorization(ctx, broker.CallbackRequest{Provider: k.Provider, Code: code, State: state}); err != nil || cb.Err != nil {
		t.Fatalf("callback: %v / %+v", err, cb)
	}
	n := 0
	for _, l := range logs.lines(t) {
		if l["msg"] == "connection authorized" && l["audit"] == true {
			n++
			if l["state_fingerprint"] != store.Fingerprint(state) || l["principal"] != "arn:aws:iam::111122223333:user/ops" {
				t.Errorf("callback audit line %v", l)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d connection authorized lines, want 1", n)
	}
}

// replaceVia replaces k's grant by a new authorization through via:
// callback, confirm or import.
func replaceVia(t *testing.T, f *fixture, k store.Key, via string, n int) {
	t.Helper()
	ctx := context.Background()
	switch via {
	case "callback":
		f.authorize(t, k)
	case "confirm":
		f.b.ReturnToAllowlist = []string{"https://app.test"}
		res, err := f.b.StartAuthorization(ctx, broker.AuthorizeRequest{Key: k, Confirm: true, ReturnTo: "https://app.test/done", Caller: "arn:aws:iam::111122223333:user/app"})
		if err != nil {
			t.Fatal(err)
		}
		code, state := followAuthorize(t, res.AuthorizeURL)
		cb, err := f.b.CompleteAuthorization(ctx, broker.CallbackRequest{Provider: k.Provider, Code: code, State: state})
		if err != nil || cb.Err != nil {
			t.Fatalf("callback: %v / %+v", err, cb)
		}
		if _, err := f.b.Confirm(ctx, broker.ConfirmRequest{Key: k, ConnectID: cb.ConnectID, Caller: "arn:aws:iam::111122223333:user/app"}); err != nil {
			t.Fatalf("confirm: %v", err)
		}
	case "import":
		tag := localaws.UniqueName("imp")
		if _, created, err := f.b.Import(ctx, broker.ImportRequest{Key: k, AccessToken: "at-" + tag, RefreshToken: "rt-" + tag,
			ExpiresIn: ptr(int64(3600)), Replace: true}); err != nil || created {
			t.Fatalf("import %d: created %v, %v", n, created, err)
		}
	default:
		t.Fatalf("no way %q", via)
	}
}

// A failure streak announced by Connection Refresh Failing was never
// resolved when the user re-authorized: no Connection Recovered followed a
// new grant. Now the grant that replaces an announced streak sends
// Recovered, once, whichever way it arrives.
func TestReauthorizationEndsAnAnnouncedStreak(t *testing.T) {
	for _, via := range []string{"callback", "confirm", "import"} {
		t.Run(via, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			sink := eventQueueFor(t, `{"source":["tokenbroker"],"detail-type":["Connection Recovered"]}`)
			k := store.Key{Provider: devstack.OAuth2, Connection: localaws.UniqueName("streak-" + via)}
			now := f.clock.Now()
			if err := f.store.Create(ctx, &store.Connection{Key: k, Kind: "oauth2", AccessToken: "old-at-" + k.Connection, RefreshToken: "old-rt-" + k.Connection,
				TokenType: "Bearer", ExpiresAt: now.Add(-time.Minute), Status: store.StatusActive, CreatedAt: now.Add(-24 * time.Hour),
				RefreshedAt: now.Add(-2 * time.Hour), Attempts: broker.FailingAfter, LastError: "http_503: HTML page", LastErrorAt: now,
				FailingNotified: true, RefreshAt: now.Add(time.Minute)}); err != nil {
				t.Fatal(err)
			}
			replaceVia(t, f, k, via, 1)
			c, err := f.store.Get(ctx, k, true)
			if err != nil || c.FailingNotified || c.Attempts != 0 {
				t.Fatalf("after re-authorization: %+v %v", c, err)
			}
			// A second re-authorization has no streak to end.
			replaceVia(t, f, k, via, 2)
			if evs := eventsAbout(receiveAll(t, sink), k); len(evs) != 1 {
				t.Fatalf("%d Connection Recovered events, want 1", len(evs))
			}
		})
	}
}

// revokeProvider serves a dedicated OAuth 2.0 emulator registered with a
// revoke_url and the given revoke_per_token.
func revokeProvider(t *testing.T, f *fixture, perToken bool) (string, *emulator.OAuth2) {
	t.Helper()
	name := localaws.UniqueName("revoke")
	o2 := emulator.NewOAuth2(devstack.OAuth2ClientID, devstack.OAuth2Secret, "https://broker.test/callback/"+name)
	srv := startServer(t, o2)
	if err := f.stack.PutProvider(context.Background(), name, map[string]any{"kind": "oauth2", "client_id": devstack.OAuth2ClientID,
		"authorize_url": srv + "/authorize", "token_url": srv + "/token", "revoke_url": srv + "/revoke", "auth_style": "basic",
		"revoke_per_token": perToken}, devstack.OAuth2Secret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	return name, o2
}

// Replacing a grant revokes the old grant's tokens only where the
// provider's revocation is per token: where it ends the user's whole
// grant (Google), it would end the new grant of the same user too. An
// import never revokes: it may bring the same grant's newer tokens.
func TestReplacedGrantRevokedOnlyWherePerToken(t *testing.T) {
	for _, perToken := range []bool{false, true} {
		name := map[bool]string{false: "whole-grant", true: "per-token"}[perToken]
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t)
			prov, o2 := revokeProvider(t, f, perToken)
			k := store.Key{Provider: prov, Connection: "replaced"}
			f.authorize(t, k) // a new connection: nothing to revoke
			if n := o2.Calls("/revoke"); n != 0 {
				t.Fatalf("%d revocations creating the connection, want 0", n)
			}
			want := 0
			for i, via := range []string{"callback", "import", "confirm"} {
				replaceVia(t, f, k, via, i)
				if perToken && via != "import" {
					want++
				}
				if n := o2.Calls("/revoke"); n != want {
					t.Fatalf("after replacing via %s: %d revocations, want %d", via, n, want)
				}
			}
			// Importing the very tokens the connection holds revokes nothing:
			// they are the new grant's too.
			cur, err := f.store.Get(ctx, k, true)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := f.b.Import(ctx, broker.ImportRequest{Key: k, AccessToken: cur.AccessToken, RefreshToken: cur.RefreshToken,
				ExpiresIn: ptr(int64(3600)), Replace: true}); err != nil {
				t.Fatal(err)
			}
			if n := o2.Calls("/revoke"); n != want {
				t.Fatalf("after importing the current tokens: %d revocations, want %d", n, want)
			}
			// The grant that replaced the others is alive.
			if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true}); err != nil {
				t.Fatalf("forced refresh of the last grant: %v", err)
			}
		})
	}
}
