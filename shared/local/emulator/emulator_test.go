package emulator_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
)

// noRedirect is a client that hands back the authorize redirect.
var noRedirect = &http.Client{
	Timeout:       5 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// answer is a decoded HTTP answer.
type answer struct {
	status int
	header http.Header
	raw    []byte
	fields map[string]any
}

func do(t *testing.T, req *http.Request) answer {
	t.Helper()
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(bytes.TrimPrefix(raw, []byte("\uFEFF")), &a.fields)
	return a
}

func get(t *testing.T, u string, header ...string) answer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return do(t, req)
}

func postForm(t *testing.T, u string, form url.Values, user, pass string) answer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	return do(t, req)
}

func postJSON(t *testing.T, u string, v any) answer {
	t.Helper()
	body, _ := json.Marshal(v)
	req, _ := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	return do(t, req)
}

func str(a answer, k string) string { s, _ := a.fields[k].(string); return s }

// --- OAuth2 helpers ---

func newOAuth2(t *testing.T) (*emulator.OAuth2, *httptest.Server) {
	emu := emulator.NewOAuth2("cid", "csecret", "https://app.example/cb")
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	return emu, srv
}

// consent runs one authorization of user and exchanges its code.
func consent(t *testing.T, srv *httptest.Server, user string) (access, refresh string) {
	t.Helper()
	verifier := "verifier-0123456789-0123456789-0123456789"
	sum := sha256.Sum256([]byte(verifier))
	q := url.Values{"client_id": {"cid"}, "redirect_uri": {"https://app.example/cb"}, "response_type": {"code"}, "state": {"s"},
		"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"}, "user": {user}}
	a := get(t, srv.URL+"/authorize?"+q.Encode())
	loc, err := url.Parse(a.header.Get("Location"))
	if a.status != http.StatusFound || err != nil || loc.Query().Get("code") == "" {
		t.Fatalf("authorize: %d %s", a.status, a.raw)
	}
	tok := postForm(t, srv.URL+"/token", url.Values{"grant_type": {"authorization_code"}, "code": {loc.Query().Get("code")},
		"redirect_uri": {"https://app.example/cb"}, "code_verifier": {verifier}}, "cid", "csecret")
	if tok.status != 200 || str(tok, "access_token") == "" || str(tok, "refresh_token") == "" {
		t.Fatalf("exchange: %d %s", tok.status, tok.raw)
	}
	return str(tok, "access_token"), str(tok, "refresh_token")
}

func refreshOAuth2(t *testing.T, srv *httptest.Server, rt string) answer {
	t.Helper()
	return postForm(t, srv.URL+"/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, "cid", "csecret")
}

// --- tests ---

// TestOddityOnTokenAnswers: the switch writes every successful token
// answer of every emulator with the odd expires_in and the BOM, counts
// them, leaves error answers alone, and switches off again.
func TestOddityOnTokenAnswers(t *testing.T) {
	oddities := []struct {
		name string
		o    emulator.Oddity
		raw  string // expires_in as written
	}{
		{"never", emulator.Oddity{ExpiresIn: 2147483647}, `"expires_in":2147483647`},
		{"negative with BOM", emulator.Oddity{ExpiresIn: -1, BOM: true}, `"expires_in":-1`},
		{"unit string", emulator.Oddity{ExpiresIn: "3600s"}, `"expires_in":"3600s"`},
		{"BOM only", emulator.Oddity{BOM: true}, `"expires_in":`},
	}
	type target struct {
		name  string
		odd   func(emulator.Oddity)
		count func() int
		// success makes one successful token answer; failure one error.
		success, failure func(t *testing.T) answer
	}
	o2, o2srv := newOAuth2(t)
	_, o2rt := consent(t, o2srv, "alice")
	gh := emulator.NewOAuth2("cid", "csecret", "https://app.example/cb")
	gh.GitHubStyle = true
	ghsrv := httptest.NewServer(gh)
	defer ghsrv.Close()
	sina := emulator.NewSinaCloud("sid", "ssecret", "https://app.example/cb")
	sinasrv := httptest.NewServer(sina)
	defer sinasrv.Close()
	wx := emulator.NewWeChat("wxid", "wxsecret")
	wxsrv := httptest.NewServer(wx)
	defer wxsrv.Close()
	var sinaRT string
	_, sinaRT, _ = sina.IssueGrant()
	targets := []target{
		{"oauth2 refresh", o2.SetOddity, o2.OddAnswers, func(t *testing.T) answer {
			a := refreshOAuth2(t, o2srv, o2rt)
			o2rt = str(a, "refresh_token")
			return a
		}, func(t *testing.T) answer { return refreshOAuth2(t, o2srv, "nope") }},
		{"oauth2 client_credentials", o2.SetOddity, o2.OddAnswers, func(t *testing.T) answer {
			return postForm(t, o2srv.URL+"/token", url.Values{"grant_type": {"client_credentials"}}, "cid", "csecret")
		}, func(t *testing.T) answer {
			return postForm(t, o2srv.URL+"/token", url.Values{"grant_type": {"client_credentials"}}, "cid", "wrong")
		}},
		{"sinacloud refresh", sina.SetOddity, sina.OddAnswers, func(t *testing.T) answer {
			a := postForm(t, sinasrv.URL+"/oauth2/access_token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {sinaRT}, "client_id": {"sid"}, "client_secret": {"ssecret"}}, "", "")
			sinaRT = str(a, "refresh_token")
			return a
		}, func(t *testing.T) answer {
			return postForm(t, sinasrv.URL+"/oauth2/access_token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"nope"}, "client_id": {"sid"}, "client_secret": {"ssecret"}}, "", "")
		}},
		{"wechat cgi-bin/token", wx.SetOddity, wx.OddAnswers, func(t *testing.T) answer {
			return get(t, wxsrv.URL+"/cgi-bin/token?grant_type=client_credential&appid=wxid&secret=wxsecret")
		}, func(t *testing.T) answer {
			return get(t, wxsrv.URL+"/cgi-bin/token?grant_type=client_credential&appid=wxid&secret=bad")
		}},
		{"wechat stable_token", wx.SetOddity, wx.OddAnswers, func(t *testing.T) answer {
			return postJSON(t, wxsrv.URL+"/cgi-bin/stable_token", map[string]any{"grant_type": "client_credential", "appid": "wxid", "secret": "wxsecret"})
		}, func(t *testing.T) answer {
			return postJSON(t, wxsrv.URL+"/cgi-bin/stable_token", map[string]any{"grant_type": "client_credential", "appid": "wxid", "secret": "bad"})
		}},
	}
	for _, tg := range targets {
		for _, od := range oddities {
			t.Run(tg.name+"/"+od.name, func(t *testing.T) {
				tg.odd(od.o)
				defer tg.odd(emulator.Oddity{})
				before := tg.count()
				a := tg.success(t)
				if a.status != 200 || str(a, "access_token") == "" {
					t.Fatalf("success: %d %s", a.status, a.raw)
				}
				if got := bytes.HasPrefix(a.raw, []byte("\uFEFF")); got != od.o.BOM {
					t.Fatalf("BOM %v, want %v: %q", got, od.o.BOM, a.raw[:8])
				}
				if !bytes.Contains(a.raw, []byte(od.raw)) {
					t.Fatalf("answer %s lacks %s", a.raw, od.raw)
				}
				if n := tg.count() - before; n != 1 {
					t.Fatalf("OddAnswers grew by %d, want 1", n)
				}
				e := tg.failure(t)
				if bytes.HasPrefix(e.raw, []byte("\uFEFF")) || bytes.Contains(e.raw, []byte("expires_in")) || tg.count()-before != 1 {
					t.Fatalf("error answer made odd: %s", e.raw)
				}
			})
		}
	}
	// GitHub-style form answers carry the odd value too.
	gh.SetOddity(emulator.Oddity{ExpiresIn: "3600s", BOM: true})
	req, _ := http.NewRequest(http.MethodPost, ghsrv.URL+"/token", strings.NewReader("grant_type=client_credentials"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("cid", "csecret")
	a := do(t, req)
	form, err := url.ParseQuery(string(bytes.TrimPrefix(a.raw, []byte("\uFEFF"))))
	if a.status != 200 || !bytes.HasPrefix(a.raw, []byte("\uFEFF")) || err != nil || form.Get("expires_in") != "3600s" || form.Get("access_token") == "" {
		t.Fatalf("github form answer %d %q", a.status, a.raw)
	}
	// Switched off: normal answers, no count.
	o2.SetOddity(emulator.Oddity{})
	before := o2.OddAnswers()
	if a := refreshOAuth2(t, o2srv, o2rt); a.status != 200 || a.fields["expires_in"] != float64(3600) || o2.OddAnswers() != before {
		t.Fatalf("after switching off: %s", a.raw)
	}
}

// TestOAuth2RevocationModes: per token (RFC 7009), revoking one grant's
// refresh token leaves the same user's other grant alone; whole grant
// (Google), it ends every token of that user for the client, and nobody
// else's.
func TestOAuth2RevocationModes(t *testing.T) {
	for _, whole := range []bool{false, true} {
		name := "per token"
		if whole {
			name = "whole grant"
		}
		t.Run(name, func(t *testing.T) {
			emu, srv := newOAuth2(t)
			emu.RevokeWholeGrant = whole
			a1, r1 := consent(t, srv, "alice")
			a2, r2 := consent(t, srv, "alice") // the same user consents again: G2
			a3, r3 := consent(t, srv, "bob")
			revoke := postForm(t, srv.URL+"/revoke", url.Values{"token": {r1}, "token_type_hint": {"refresh_token"}}, "cid", "csecret")
			if revoke.status != 200 {
				t.Fatalf("revoke: %d %s", revoke.status, revoke.raw)
			}
			if emu.RefreshUsable(r1) {
				t.Fatal("revoked refresh token still usable")
			}
			if emu.Calls("/revoke") != 1 {
				t.Fatalf("%d revoke calls", emu.Calls("/revoke"))
			}
			if !emu.RefreshUsable(r3) || !emu.ValidAccess(a3) {
				t.Fatal("another user's grant was ended")
			}
			if whole {
				if emu.RefreshUsable(r2) || emu.ValidAccess(a2) || emu.ValidAccess(a1) {
					t.Fatal("whole-grant revocation left a token of the user's grant alive")
				}
				if n := emu.RevokedTokens(); n != 4 {
					t.Fatalf("RevokedTokens = %d, want 4 (two refresh, two access)", n)
				}
				if a := refreshOAuth2(t, srv, r2); a.status != 400 || str(a, "error") != "invalid_grant" {
					t.Fatalf("refresh of G2 after revoking G1: %d %s", a.status, a.raw)
				}
				return
			}
			if !emu.RefreshUsable(r2) || !emu.ValidAccess(a2) {
				t.Fatal("per-token revocation ended the user's other grant")
			}
			if n := emu.RevokedTokens(); n != 1 {
				t.Fatalf("RevokedTokens = %d, want 1", n)
			}
			// Revoking an access token ends it alone.
			postForm(t, srv.URL+"/revoke", url.Values{"token": {a2}}, "cid", "csecret")
			if emu.ValidAccess(a2) || !emu.RefreshUsable(r2) || emu.RevokedTokens() != 2 {
				t.Fatalf("access revocation: valid %v refresh usable %v revoked %d", emu.ValidAccess(a2), emu.RefreshUsable(r2), emu.RevokedTokens())
			}
			if a := refreshOAuth2(t, srv, r2); a.status != 200 {
				t.Fatalf("refresh of G2: %d %s", a.status, a.raw)
			}
		})
	}
}

// TestSinaCloudRefreshPermissionSwitch: with the permission off a refresh
// is refused with unauthorized_client and spends nothing; switched on
// again, the same refresh token works, once.
func TestSinaCloudRefreshPermissionSwitch(t *testing.T) {
	emu := emulator.NewSinaCloud("sid", "ssecret", "https://app.example/cb")
	srv := httptest.NewServer(emu)
	defer srv.Close()
	_, rt, _ := emu.IssueGrant()
	refresh := func() answer {
		return postForm(t, srv.URL+"/oauth2/access_token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {"sid"}, "client_secret": {"ssecret"}}, "", "")
	}
	emu.SetRefreshPermission(false)
	for i := 0; i < 3; i++ {
		if a := refresh(); a.status != 400 || str(a, "error") != "unauthorized_client" {
			t.Fatalf("refresh without permission: %d %s", a.status, a.raw)
		}
	}
	if emu.RefreshRefusals() != 3 || emu.RefreshCalls() != 0 || !emu.RefreshUsable(rt) {
		t.Fatalf("refusals %d grants %d usable %v", emu.RefreshRefusals(), emu.RefreshCalls(), emu.RefreshUsable(rt))
	}
	emu.SetRefreshPermission(true)
	a := refresh()
	if a.status != 200 || str(a, "access_token") == "" || str(a, "refresh_token") == "" || !emu.ValidAccess(str(a, "access_token")) {
		t.Fatalf("refresh with the permission back: %d %s", a.status, a.raw)
	}
	if emu.RefreshCalls() != 1 || emu.RefreshRefusals() != 3 || emu.RefreshUsable(rt) {
		t.Fatalf("grants %d refusals %d old usable %v", emu.RefreshCalls(), emu.RefreshRefusals(), emu.RefreshUsable(rt))
	}
	if a := refresh(); a.status != 400 || str(a, "error") != "invalid_grant" || emu.RefreshReuses() != 1 {
		t.Fatalf("second use: %d %s", a.status, a.raw)
	}
}

// clock is a settable clock for the emulators.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }
func (c *clock) Set(t time.Time)         { c.mu.Lock(); c.now = t; c.mu.Unlock() }
func newClock(t time.Time) *clock        { return &clock{now: t} }
func num(a answer, k string) int         { f, _ := a.fields[k].(float64); return int(f) }
func stableBody(force bool) map[string]any {
	return map[string]any{"grant_type": "client_credential", "appid": "wxid", "secret": "wxsecret", "force_refresh": force}
}

// TestWeChatStableToken: normal mode hands back the current token with its
// remaining life and renews only in its last five minutes; force_refresh
// renews at once, is ignored within 30 s of the last forced renewal (the
// current token comes back), and is refused with 45009 after 20 a China
// Standard Time day, until the next one. cgi-bin/token is unchanged.
func TestWeChatStableToken(t *testing.T) {
	// 10:00 China Standard Time.
	clk := newClock(time.Date(2026, 12, 6, 2, 0, 0, 0, time.UTC))
	emu := emulator.NewWeChat("wxid", "wxsecret")
	emu.SetClock(clk.Now)
	srv := httptest.NewServer(emu)
	defer srv.Close()
	stable := func(force bool) answer {
		t.Helper()
		a := postJSON(t, srv.URL+"/cgi-bin/stable_token", stableBody(force))
		if a.status != 200 {
			t.Fatalf("stable_token: %d %s", a.status, a.raw)
		}
		return a
	}
	first := stable(false)
	t1 := str(first, "access_token")
	if t1 == "" || num(first, "expires_in") != 7200 {
		t.Fatalf("first: %s", first.raw)
	}
	clk.Advance(time.Hour)
	if a := stable(false); str(a, "access_token") != t1 || num(a, "expires_in") != 3600 {
		t.Fatalf("an hour later: %s", a.raw)
	}
	clk.Advance(time.Hour - 301*time.Second)
	if a := stable(false); str(a, "access_token") != t1 || num(a, "expires_in") != 301 {
		t.Fatalf("301 s left: %s", a.raw)
	}
	clk.Advance(2 * time.Second)
	renewed := stable(false)
	t2 := str(renewed, "access_token")
	if t2 == t1 || num(renewed, "expires_in") != 7200 || !emu.ValidGlobal(t1) {
		t.Fatalf("in the last five minutes: same=%v %s, old valid %v", t2 == t1, renewed.raw, emu.ValidGlobal(t1))
	}
	if s := emu.StableStats(); s != (emulator.StableTokenStats{Normal: 4, NormalIssued: 2}) || emu.GlobalTokenCalls() != 2 {
		t.Fatalf("stats %+v, issued %d", s, emu.GlobalTokenCalls())
	}

	// Forced: a new token at once; the old one keeps five minutes.
	forced := stable(true)
	t3 := str(forced, "access_token")
	if t3 == t2 || num(forced, "expires_in") != 7200 {
		t.Fatalf("forced: %s", forced.raw)
	}
	clk.Advance(10 * time.Second)
	if a := stable(true); str(a, "access_token") != t3 || num(a, "expires_in") != 7190 {
		t.Fatalf("forced 10 s later must be ignored: %s", a.raw)
	}
	if !emu.ValidGlobal(t2) {
		t.Fatal("the token a forced renewal replaced must keep working a while")
	}
	clk.Advance(21 * time.Second)
	if a := stable(true); str(a, "access_token") == t3 {
		t.Fatalf("forced 31 s after the last: %s", a.raw)
	}
	if s := emu.StableStats(); s.Forced != 3 || s.ForcedIssued != 2 || s.ForcedIgnored != 1 || s.ForcedRefused != 0 || s.Normal != 4 {
		t.Fatalf("stats %+v", s)
	}
	// Two forced renewals 30 s apart end the token before them at once
	// (WeChat's remedy for a leaked token); the one just replaced keeps
	// its five minutes.
	if emu.ValidGlobal(t2) || !emu.ValidGlobal(t3) {
		t.Fatalf("after the second forced renewal: t2 valid %v, t3 valid %v", emu.ValidGlobal(t2), emu.ValidGlobal(t3))
	}
	clk.Advance(5 * time.Minute)
	if emu.ValidGlobal(t3) {
		t.Fatal("a token replaced by a forced renewal lives past five minutes")
	}

	// The 20 a day: 2 spent, 18 more, then 45009.
	for i := 0; i < 18; i++ {
		clk.Advance(31 * time.Second)
		stable(true)
	}
	clk.Advance(31 * time.Second)
	if a := postJSON(t, srv.URL+"/cgi-bin/stable_token", stableBody(true)); num(a, "errcode") != 45009 {
		t.Fatalf("21st forced call: %s", a.raw)
	}
	if s := emu.StableStats(); s.ForcedIssued != 20 || s.ForcedRefused != 1 {
		t.Fatalf("stats %+v", s)
	}
	// Normal mode still works; the next China Standard Time day resets.
	current := emu.CurrentGlobal()
	if a := stable(false); str(a, "access_token") != current {
		t.Fatalf("normal mode after the force limit: %s", a.raw)
	}
	clk.Set(time.Date(2026, 12, 6, 16, 0, 1, 0, time.UTC)) // 00:00:01 the next CST day
	if a := stable(true); str(a, "access_token") == current {
		t.Fatalf("forced the next day: %s", a.raw)
	}
	if s := emu.StableStats(); s.ForcedIssued != 21 || s.ForcedRefused != 1 {
		t.Fatalf("stats %+v", s)
	}

	// cgi-bin/token: a new token every call, the previous one five
	// minutes; its tokens and stable_token's never end each other.
	stableNow := emu.CurrentGlobal()
	before := emu.GlobalTokenCalls()
	a := get(t, srv.URL+"/cgi-bin/token?grant_type=client_credential&appid=wxid&secret=wxsecret")
	b := get(t, srv.URL+"/cgi-bin/token?grant_type=client_credential&appid=wxid&secret=wxsecret")
	if str(a, "access_token") == str(b, "access_token") || emu.GlobalTokenCalls() != before+2 || emu.Calls("/cgi-bin/token") != 2 {
		t.Fatalf("cgi-bin/token: %s %s", a.raw, b.raw)
	}
	clk.Advance(6 * time.Minute)
	if emu.ValidGlobal(str(a, "access_token")) || !emu.ValidGlobal(str(b, "access_token")) {
		t.Fatal("cgi-bin/token's replaced token must end five minutes later, its latest live on")
	}
	if !emu.ValidGlobal(stableNow) || emu.CurrentGlobal() != stableNow {
		t.Fatal("cgi-bin/token calls ended stable_token's token")
	}
	clk.Advance(31 * time.Second)
	stable(true)
	if !emu.ValidGlobal(str(b, "access_token")) {
		t.Fatal("a forced stable_token renewal ended cgi-bin/token's token")
	}
}

// TestDownstreamAPI: each emulator's API takes a live token as a Bearer
// header or ?access_token=, rejects a dead one in the provider's way, and
// KillAccess ends one access token while its refresh token keeps working.
func TestDownstreamAPI(t *testing.T) {
	t.Run("oauth2", func(t *testing.T) {
		emu, srv := newOAuth2(t)
		at, rt := consent(t, srv, "alice")
		apiOAuthStyle(t, srv.URL, at, func() bool { return emu.KillAccess(at) }, func() string {
			a := refreshOAuth2(t, srv, rt)
			if a.status != 200 {
				t.Fatalf("refresh after the kill: %d %s", a.status, a.raw)
			}
			return str(a, "access_token")
		})
		if emu.APICalls() != 7 || emu.APIRejected() != 3 || emu.Killed() != 1 || emu.RefreshCalls() != 1 {
			t.Fatalf("api %d rejected %d killed %d refreshes %d", emu.APICalls(), emu.APIRejected(), emu.Killed(), emu.RefreshCalls())
		}
	})
	t.Run("sinacloud", func(t *testing.T) {
		emu := emulator.NewSinaCloud("sid", "ssecret", "https://app.example/cb")
		srv := httptest.NewServer(emu)
		defer srv.Close()
		at, rt, _ := emu.IssueGrant()
		apiOAuthStyle(t, srv.URL, at, func() bool { return emu.KillAccess(at) }, func() string {
			a := postForm(t, srv.URL+"/oauth2/access_token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {"sid"}, "client_secret": {"ssecret"}}, "", "")
			if a.status != 200 {
				t.Fatalf("refresh after the kill: %d %s", a.status, a.raw)
			}
			return str(a, "access_token")
		})
		if emu.APICalls() != 7 || emu.APIRejected() != 3 || emu.Killed() != 1 || emu.RefreshCalls() != 1 {
			t.Fatalf("api %d rejected %d killed %d refreshes %d", emu.APICalls(), emu.APIRejected(), emu.Killed(), emu.RefreshCalls())
		}
	})
	t.Run("wechat global", func(t *testing.T) {
		clk := newClock(time.Date(2026, 12, 6, 2, 0, 0, 0, time.UTC))
		emu := emulator.NewWeChat("wxid", "wxsecret")
		emu.SetClock(clk.Now)
		srv := httptest.NewServer(emu)
		defer srv.Close()
		api := func(tok string) answer { return get(t, srv.URL+emulator.APIPath+"?access_token="+url.QueryEscape(tok)) }
		t1 := str(postJSON(t, srv.URL+"/cgi-bin/stable_token", stableBody(false)), "access_token")
		if a := api(t1); a.status != 200 || num(a, "errcode") != 0 || a.fields["ok"] != true {
			t.Fatalf("live token: %d %s", a.status, a.raw)
		}
		if a := get(t, srv.URL+emulator.APIPath, "Authorization", "Bearer "+t1); num(a, "errcode") != 0 || a.fields["ok"] != true {
			t.Fatalf("live token as Bearer: %s", a.raw)
		}
		if !emu.KillAccess(t1) || emu.KillAccess(t1) {
			t.Fatal("KillAccess of a live token must report true once")
		}
		if a := api(t1); a.status != 200 || num(a, "errcode") != 40001 {
			t.Fatalf("killed token: %d %s", a.status, a.raw)
		}
		// Normal mode hands the killed token back; only a forced call renews.
		if a := postJSON(t, srv.URL+"/cgi-bin/stable_token", stableBody(false)); str(a, "access_token") != t1 {
			t.Fatalf("normal mode after the kill: %s", a.raw)
		}
		t2 := str(postJSON(t, srv.URL+"/cgi-bin/stable_token", stableBody(true)), "access_token")
		if t2 == t1 || num(api(t2), "errcode") != 0 {
			t.Fatal("forced renewal did not give a working token")
		}
		// A token that ran out (nothing replaced it) is 42001.
		clk.Advance(7201 * time.Second)
		if a := api(t2); num(a, "errcode") != 42001 {
			t.Fatalf("expired token: %s", a.raw)
		}
		// A token replaced by cgi-bin/token is 40001 once its five minutes end.
		t3 := str(get(t, srv.URL+"/cgi-bin/token?grant_type=client_credential&appid=wxid&secret=wxsecret"), "access_token")
		get(t, srv.URL+"/cgi-bin/token?grant_type=client_credential&appid=wxid&secret=wxsecret")
		clk.Advance(301 * time.Second)
		if a := api(t3); num(a, "errcode") != 40001 {
			t.Fatalf("replaced token: %s", a.raw)
		}
		if a := api("unknown"); num(a, "errcode") != 40001 {
			t.Fatalf("unknown token: %s", a.raw)
		}
		if emu.APICalls() != 7 || emu.APIRejected() != 4 || emu.Killed() != 1 {
			t.Fatalf("api %d rejected %d killed %d", emu.APICalls(), emu.APIRejected(), emu.Killed())
		}
	})
	t.Run("wechat web authorization", func(t *testing.T) {
		emu := emulator.NewWeChat("wxid", "wxsecret")
		srv := httptest.NewServer(emu)
		defer srv.Close()
		a := get(t, srv.URL+"/connect/oauth2/authorize?appid=wxid&redirect_uri="+url.QueryEscape("https://app.example/cb")+"&response_type=code&scope=snsapi_base&state=s")
		loc, _ := url.Parse(a.header.Get("Location"))
		g := get(t, srv.URL+"/sns/oauth2/access_token?appid=wxid&secret=wxsecret&code="+loc.Query().Get("code")+"&grant_type=authorization_code")
		at, rt := str(g, "access_token"), str(g, "refresh_token")
		if at == "" || rt == "" {
			t.Fatalf("exchange: %s", g.raw)
		}
		if a := get(t, srv.URL+emulator.APIPath+"?access_token="+at); num(a, "errcode") != 0 {
			t.Fatalf("live user token: %s", a.raw)
		}
		if !emu.KillAccess(at) {
			t.Fatal("KillAccess of a live user token")
		}
		if a := get(t, srv.URL+emulator.APIPath+"?access_token="+at); num(a, "errcode") != 40001 {
			t.Fatalf("killed user token: %s", a.raw)
		}
		r := get(t, srv.URL+"/sns/oauth2/refresh_token?appid=wxid&grant_type=refresh_token&refresh_token="+rt)
		if num(get(t, srv.URL+emulator.APIPath+"?access_token="+str(r, "access_token")), "errcode") != 0 {
			t.Fatalf("refresh after the kill: %s", r.raw)
		}
		if emu.APICalls() != 3 || emu.APIRejected() != 1 {
			t.Fatalf("api %d rejected %d", emu.APICalls(), emu.APIRejected())
		}
	})
}

// apiOAuthStyle runs the RFC 6750 API checks: 7 API calls, 3 rejected.
func apiOAuthStyle(t *testing.T, base, at string, kill func() bool, refresh func() string) {
	t.Helper()
	u := base + emulator.APIPath
	if a := get(t, u, "Authorization", "Bearer "+at); a.status != 200 || a.fields["ok"] != true {
		t.Fatalf("live token as Bearer: %d %s", a.status, a.raw)
	}
	if a := get(t, u+"?access_token="+url.QueryEscape(at)); a.status != 200 {
		t.Fatalf("live token in the query: %d %s", a.status, a.raw)
	}
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(`{"n":1}`))
	req.Header.Set("Authorization", "Bearer "+at)
	if a := do(t, req); a.status != 200 || a.fields["method"] != "POST" || a.fields["body"] != `{"n":1}` {
		t.Fatalf("POST: %d %s", a.status, a.raw)
	}
	if a := get(t, u); a.status != 401 {
		t.Fatalf("no token: %d %s", a.status, a.raw)
	}
	if !kill() || kill() {
		t.Fatal("KillAccess of a live token must report true once")
	}
	a := get(t, u, "Authorization", "Bearer "+at)
	if a.status != 401 || !strings.Contains(a.header.Get("WWW-Authenticate"), `error="invalid_token"`) || str(a, "error") != "invalid_token" {
		t.Fatalf("killed token: %d %v %s", a.status, a.header, a.raw)
	}
	if a := get(t, u+"?access_token="+url.QueryEscape(at)); a.status != 401 {
		t.Fatalf("killed token in the query: %d", a.status)
	}
	if a := get(t, u, "Authorization", "Bearer "+refresh()); a.status != 200 {
		t.Fatalf("new token after refresh: %d %s", a.status, a.raw)
	}
}
