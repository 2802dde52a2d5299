package devfront_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/local/devfront"
)

func TestCheckListenAddr(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		expose  bool
		ok      bool
		warning bool
	}{
		{"127.0.0.1:3000", false, true, false},
		{"127.0.0.2:3000", false, true, false},
		{"[::1]:3000", false, true, false},
		{"localhost:3000", false, true, false},
		{"LOCALHOST:3000", false, true, false},
		{"192.168.1.5:3000", false, false, false},
		{"192.168.1.5:3000", true, true, true},
		{"devbox.example:3000", false, false, false},
		{"devbox.example:3000", true, true, true},
		// Every interface: refused with or without -expose.
		{"0.0.0.0:3000", false, false, false},
		{"0.0.0.0:3000", true, false, false},
		{"[::]:3000", true, false, false},
		{":3000", true, false, false},
		{"3000", false, false, false},
	} {
		warning, err := devfront.CheckListenAddr(tc.addr, tc.expose)
		if (err == nil) != tc.ok || (warning != "") != tc.warning {
			t.Errorf("CheckListenAddr(%q, expose=%v) = %q, %v", tc.addr, tc.expose, warning, err)
		}
		if err != nil && !tc.expose && !strings.Contains(tc.addr, "0.0.0.0") && tc.addr != "3000" && !strings.Contains(err.Error(), "-expose") {
			t.Errorf("%s: the refusal does not say how to go ahead: %v", tc.addr, err)
		}
		if warning != "" && !strings.HasPrefix(warning, "WARNING: ") {
			t.Errorf("%s: warning %q", tc.addr, warning)
		}
	}
}

func TestAllowedHosts(t *testing.T) {
	for _, tc := range []struct {
		addr, named string
		want        []string
	}{
		{"127.0.0.1:3000", "127.0.0.1:3000", []string{"127.0.0.1:3000", "localhost:3000"}},
		{"127.0.0.1:3000", "localhost:3000", []string{"127.0.0.1:3000", "localhost:3000"}},
		{"[::1]:4000", "[::1]:4000", []string{"[::1]:4000", "localhost:4000", "127.0.0.1:4000"}},
		{"192.168.1.5:3000", "devbox.example:3000", []string{"192.168.1.5:3000", "devbox.example:3000"}},
	} {
		got := devfront.AllowedHosts(tc.addr, tc.named)
		slices.Sort(got)
		want := slices.Clone(tc.want)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("AllowedHosts(%q, %q) = %v, want %v", tc.addr, tc.named, got, tc.want)
		}
	}
}

func TestHostGuardRefusesOtherNames(t *testing.T) {
	var served atomic.Int32
	h := devfront.HostGuard(devfront.AllowedHosts("127.0.0.1:3000", "127.0.0.1:3000"), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
	}))
	for host, want := range map[string]int{
		"127.0.0.1:3000":    http.StatusOK,
		"localhost:3000":    http.StatusOK,
		"LocalHost:3000":    http.StatusOK,
		"rebound.evil:3000": http.StatusMisdirectedRequest,
		"127.0.0.1":         http.StatusMisdirectedRequest,
		"localhost:3001":    http.StatusMisdirectedRequest,
		"":                  http.StatusMisdirectedRequest,
	} {
		before := served.Load()
		req := httptest.NewRequest("GET", "/connections/gh/alice/token", nil)
		req.Host = host
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("Host %q: %d, want %d", host, rec.Code, want)
		}
		if ran := served.Load() != before; ran != (want == http.StatusOK) {
			t.Errorf("Host %q: handler ran = %v", host, ran)
		}
	}
}

func TestSameOrigin(t *testing.T) {
	origins := []string{"http://127.0.0.1:3000", "http://localhost:3000"}
	for _, tc := range []struct {
		site, origin string
		want         bool
	}{
		{"same-origin", "http://127.0.0.1:3000", true},
		{"same-origin", "http://localhost:3000", true},
		{"same-origin", "", true},
		{"", "http://127.0.0.1:3000", true},
		{"cross-site", "http://127.0.0.1:3000", false},
		{"same-site", "http://127.0.0.1:3000", false},
		{"none", "", false},
		{"", "http://evil.example", false},
		{"same-origin", "http://evil.example", false},
		{"", "null", false},
		{"", "", false},
	} {
		req := httptest.NewRequest("POST", "/dev/connect/gh/demo", nil)
		if tc.site != "" {
			req.Header.Set("Sec-Fetch-Site", tc.site)
		}
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		if got := devfront.SameOrigin(req, origins); got != tc.want {
			t.Errorf("Sec-Fetch-Site %q, Origin %q: %v, want %v", tc.site, tc.origin, got, tc.want)
		}
	}
}

func TestConnectGate(t *testing.T) {
	gate := &devfront.ConnectGate{Origins: []string{"http://127.0.0.1:3000"}}
	link, err := gate.Link("/dev/connect/gh/demo")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := gate.Link("/dev/connect/gh/demo")
	if link == other || !strings.HasPrefix(link, "/dev/connect/gh/demo?once=") || len(link) < len("/dev/connect/gh/demo?once=")+32 {
		t.Fatalf("links %q and %q", link, other)
	}
	get := func(target string) bool { return gate.Allow(httptest.NewRequest("GET", target, nil)) }

	// A token opens its own path only, and only once.
	token := strings.TrimPrefix(link, "/dev/connect/gh/demo?once=")
	if get("/dev/connect/gh/other?once=" + token) {
		t.Error("a token opened another connection's path")
	}
	if !get(link) {
		t.Fatal("a fresh link was refused")
	}
	if get(link) {
		t.Fatal("a link worked twice")
	}
	for _, target := range []string{"/dev/connect/gh/demo", "/dev/connect/gh/demo?once=", "/dev/connect/gh/demo?once=00112233445566778899aabbccddeeff"} {
		if get(target) {
			t.Errorf("GET %s allowed", target)
		}
	}

	// A POST counts when it comes from the local page.
	post := func(site, origin string) bool {
		req := httptest.NewRequest("POST", "/dev/connect/gh/demo", nil)
		req.Header.Set("Sec-Fetch-Site", site)
		req.Header.Set("Origin", origin)
		return gate.Allow(req)
	}
	if !post("same-origin", "http://127.0.0.1:3000") {
		t.Error("a same-origin form POST was refused")
	}
	if post("cross-site", "http://evil.example") {
		t.Error("a cross-site POST was allowed")
	}
	if gate.Allow(httptest.NewRequest("PUT", other, nil)) {
		t.Error("a PUT was allowed")
	}

	// Racing uses of one link: exactly one wins.
	link, _ = gate.Link("/dev/connect/gh/race")
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if get(link) {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d concurrent uses of one link succeeded", wins.Load())
	}
}
