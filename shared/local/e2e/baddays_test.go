package e2e_test

import (
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
)

func forceRefresh(t testing.TB, r *lambdarun.Runner, provider, connection, rejected string) response {
	t.Helper()
	body := ""
	if rejected != "" {
		b, _ := json.Marshal(map[string]string{"rejected_token": rejected})
		body = string(b)
	}
	return invoke(t, r, request{method: "POST", path: "/connections/" + provider + "/" + connection + "/refresh", body: body, iam: true})
}

// A forced refresh keeps its word through the real token function: each
// one that names the stored token (or none) answers a new token, and a
// crowd naming the same rejected token shares one provider call.
func TestForcedRefreshKeepsItsWord(t *testing.T) {
	f := fns(t)
	conn := "forced-word"
	connect(t, f, devstack.OAuth2, conn)
	first := tokenOf(t, f.token, devstack.OAuth2, conn, "")
	expectStatus(t, first, 200, "")
	calls := stack.OAuth2.RefreshCalls()
	seen := map[any]bool{first.json["access_token"]: true}
	current := first.json["access_token"].(string)
	for i, named := range []bool{false, true, false} {
		rejected := ""
		if named {
			rejected = current
		}
		resp := forceRefresh(t, f.token, devstack.OAuth2, conn, rejected)
		expectStatus(t, resp, 200, "")
		if seen[resp.json["access_token"]] {
			t.Fatalf("forced refresh %d answered a token already seen", i+1)
		}
		current = resp.json["access_token"].(string)
		seen[current] = true
	}
	if got := stack.OAuth2.RefreshCalls() - calls; got != 3 {
		t.Fatalf("%d provider refreshes for 3 forced refreshes, want 3", got)
	}
	const sandboxes, callers = 4, 100
	runners := []*lambdarun.Runner{f.token}
	for len(runners) < sandboxes {
		runners = append(runners, startFunction(t, "token", nil))
	}
	stack.OAuth2.Inject("/token", emulator.Fault{Delay: 500 * time.Millisecond}, 1)
	calls = stack.OAuth2.RefreshCalls()
	tokens := make([]string, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := forceRefresh(t, runners[i%sandboxes], devstack.OAuth2, conn, current)
			if resp.StatusCode != http.StatusOK {
				t.Errorf("caller %d: %d %s", i, resp.StatusCode, resp.Body)
				return
			}
			tokens[i], _ = resp.json["access_token"].(string)
		}()
	}
	wg.Wait()
	if got := stack.OAuth2.RefreshCalls() - calls; got != 1 {
		t.Fatalf("%d provider refreshes for %d forced refreshes naming one token, want 1", got, callers)
	}
	for i, tok := range tokens {
		if tok != tokens[0] || tok == current || !stack.OAuth2.ValidAccess(tok) {
			t.Fatalf("caller %d got %q (first %q, rejected %q)", i, tok, tokens[0], current)
		}
	}
}

// A one-second blip costs about a second: the failed refresh of an expired
// token answers 503 with Retry-After, and the first request two seconds
// later gets a live token.
func TestRecoveryWithinSeconds(t *testing.T) {
	f := fns(t)
	conn := "blip"
	connect(t, f, devstack.SinaCloud, conn)
	ageConnection(t, stack.Table, devstack.SinaCloud, conn, -time.Minute)
	stack.Sina.Inject("/oauth2/access_token", emulator.Fault{Status: 500, Body: "upstream failed", ContentType: "text/plain"}, 1)
	failed := tokenOf(t, f.token, devstack.SinaCloud, conn, "")
	expectStatus(t, failed, 503, "provider_unavailable")
	if failed.Headers["Retry-After"] != "1" {
		t.Fatalf("Retry-After %q after the first failure, want 1", failed.Headers["Retry-After"])
	}
	time.Sleep(2 * time.Second)
	resp := tokenOf(t, f.token, devstack.SinaCloud, conn, "")
	expectStatus(t, resp, 200, "")
	if !stack.Sina.ValidAccess(resp.json["access_token"].(string)) {
		t.Fatal("the token served after the blip does not work")
	}
}
