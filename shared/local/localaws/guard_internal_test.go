package localaws

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestGuardHostCORSAndPreflight puts the guard in front of a server that,
// like moto and DynamoDB Local's default, allows every origin: a foreign
// Host (421) and a preflight (403) never reach it, what does reach it
// comes without Origin, and no Access-Control-* header comes back.
func TestGuardHostCORSAndPreflight(t *testing.T) {
	var reached atomic.Int32
	var sawOrigin atomic.Bool
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		if r.Header.Get("Origin") != "" {
			sawOrigin.Store(true)
		}
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
		w.Header().Set("access-control-expose-headers", "x-amzn-requestid")
		w.Header().Set("X-Stand-In", "yes")
		_, _ = w.Write([]byte("ok"))
	}))
	defer upstream.Close()
	g, err := startGuard((&net.Dialer{}).DialContext, strings.TrimPrefix(upstream.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.close()
	host := strings.TrimPrefix(g.url, "http://")
	if h, _, _ := net.SplitHostPort(host); h != "127.0.0.1" {
		t.Fatalf("guard on %s, not 127.0.0.1", host)
	}
	do := func(method, hostHeader string) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(context.Background(), method, g.url+"/", strings.NewReader("{}"))
		req.Host = hostHeader
		req.Header.Set("Origin", "http://evil.example")
		req.Header.Set("Access-Control-Request-Method", "POST")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		for k := range resp.Header {
			if strings.HasPrefix(strings.ToLower(k), "access-control-") {
				t.Errorf("%s with Host %s: %s came back", method, hostHeader, k)
			}
		}
		return resp
	}
	_, port, _ := net.SplitHostPort(host)
	for _, h := range []string{"evil.example:" + port, "evil.example", "localhost.evil.example:" + port} {
		if resp := do(http.MethodPost, h); resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("Host %s: %d, want 421", h, resp.StatusCode)
		}
	}
	if resp := do(http.MethodOptions, host); resp.StatusCode != http.StatusForbidden {
		t.Errorf("preflight: %d, want 403", resp.StatusCode)
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("refused requests reached the stand-in %d times", n)
	}
	for _, h := range []string{host, "localhost:" + port} {
		if resp := do(http.MethodPost, h); resp.StatusCode != http.StatusOK || resp.Header.Get("X-Stand-In") != "yes" {
			t.Errorf("Host %s: %d %v, want the stand-in's answer", h, resp.StatusCode, resp.Header)
		}
	}
	if n := reached.Load(); n != 2 || sawOrigin.Load() {
		t.Fatalf("stand-in reached %d times (want 2), saw an Origin header: %v", n, sawOrigin.Load())
	}
}

// TestMotoListensOnAPrivateSocket: moto opens no TCP port; its Unix socket
// sits in a directory only this user may enter, and the guard reaches it.
func TestMotoListensOnAPrivateSocket(t *testing.T) {
	p, err := StartMoto(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	sock, ok := strings.CutPrefix(p.Backend, "unix:")
	if !ok {
		t.Fatalf("moto's backend is %q, want a Unix socket", p.Backend)
	}
	dir, err := os.Stat(filepath.Dir(sock))
	if err != nil {
		t.Fatal(err)
	}
	if perm := dir.Mode().Perm(); perm != 0o700 {
		t.Fatalf("moto's socket directory has mode %o, want 700", perm)
	}
	resp, err := http.Get(p.Endpoint + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("moto through its guard: %d", resp.StatusCode)
	}
	p.Stop()
	if _, err := os.Stat(filepath.Dir(sock)); !os.IsNotExist(err) {
		t.Fatalf("moto's socket directory is left after Stop: %v", err)
	}
}
