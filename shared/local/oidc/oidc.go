// Package oidc runs panva's oidc-provider, a certified OpenID Connect and
// OAuth 2.0 server, as a child process for tests: the generic oauth2 kind
// is proved against a server the project did not write, with its own
// strictness (PKCE S256 only, refresh tokens rotated on every use and the
// whole grant revoked on reuse, RFC 9207 iss on the authorization
// response, RFC 6749 errors with WWW-Authenticate, login and consent
// pages). The npm package is pinned in this folder and installed by make
// deps; server.mjs is the server, which listens on 127.0.0.1 only.
package oidc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

// Options configure the server's one confidential client.
type Options struct {
	ClientID, Secret string
	RedirectURI      string
	// AuthMethod is client_secret_basic (when empty) or client_secret_post.
	AuthMethod string
	// AccessTTL is the access tokens' lifetime; 10 minutes when zero.
	AccessTTL time.Duration
	// Account is the user the interaction logs in; "alice" when empty.
	Account string
	// OfflineAccessOnly applies oidc-provider's own refresh token policy:
	// a refresh token only for the offline_access scope, which OpenID
	// Connect grants only with prompt=consent. Otherwise every code
	// exchange gets one.
	OfflineAccessOnly bool
}

// Server is a running oidc-provider.
type Server struct {
	// Issuer is http://127.0.0.1:PORT; the endpoints hang off it.
	Issuer string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *lockedBuffer
	done   chan struct{}
	http   *http.Client
}

// AuthorizeURL is the authorization endpoint (oidc-provider's default
// routes, as the other endpoints).
func (s *Server) AuthorizeURL() string { return s.Issuer + "/auth" }

// TokenURL is the token endpoint.
func (s *Server) TokenURL() string { return s.Issuer + "/token" }

// RevokeURL is the RFC 7009 revocation endpoint.
func (s *Server) RevokeURL() string { return s.Issuer + "/token/revocation" }

// Dir is the folder holding server.mjs and its pinned node_modules.
func Dir() (string, error) {
	root, err := localaws.ModuleRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "shared", "local", "oidc")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "oidc-provider", "package.json")); err != nil {
		return "", errors.New("oidc: oidc-provider is not installed; run: make deps (npm ci in shared/local/oidc)")
	}
	return dir, nil
}

// Start runs server.mjs with node and waits for it to listen. Close stops it.
func Start(ctx context.Context, o Options) (*Server, error) {
	dir, err := Dir()
	if err != nil {
		return nil, err
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, errors.New("oidc: node is missing: sudo apt-get install -y nodejs npm")
	}
	if o.AccessTTL == 0 {
		o.AccessTTL = 10 * time.Minute
	}
	if o.AuthMethod == "" {
		o.AuthMethod = "client_secret_basic"
	}
	policy := "always"
	if o.OfflineAccessOnly {
		policy = "offline_access"
	}
	cmd := exec.Command(node, "server.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"OIDC_CLIENT_ID="+o.ClientID, "OIDC_CLIENT_SECRET="+o.Secret, "OIDC_REDIRECT_URI="+o.RedirectURI,
		"OIDC_AUTH_METHOD="+o.AuthMethod, "OIDC_ACCESS_TTL="+strconv.Itoa(int(o.AccessTTL/time.Second)),
		"OIDC_ACCOUNT="+o.Account, "OIDC_REFRESH="+policy, "NODE_NO_WARNINGS=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	s := &Server{cmd: cmd, stdin: stdin, stderr: &lockedBuffer{}, done: make(chan struct{}),
		http: &http.Client{Timeout: 5 * time.Second}}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("oidc: start node: %w", err)
	}
	go func() { _ = cmd.Wait(); close(s.done) }()
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			first <- sc.Text()
		}
		close(first)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case line, ok := <-first:
		var hello struct {
			Issuer string `json:"issuer"`
		}
		if !ok || json.Unmarshal([]byte(line), &hello) != nil || !strings.HasPrefix(hello.Issuer, "http://127.0.0.1:") {
			s.Close()
			return nil, fmt.Errorf("oidc: server did not start: %s", s.stderr.tail())
		}
		s.Issuer = hello.Issuer
		return s, nil
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("oidc: server did not start in time: %s", s.stderr.tail())
	}
}

// Close stops the server: closing its stdin ends it, and a kill follows if
// it lingers.
func (s *Server) Close() {
	_ = s.stdin.Close()
	select {
	case <-s.done:
	case <-time.After(3 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Stderr is what the server printed on its standard error (its warnings
// and server errors), for a failing test's message.
func (s *Server) Stderr() string { return s.stderr.tail() }

// Counters are the server's own counts of what it was asked and did:
// "POST /token refresh_token 200", "grant.success.refresh_token",
// "grant.error.refresh_token.invalid_grant", "refresh_token.consumed",
// "grant.revoked", "interaction.login", …
func (s *Server) Counters(ctx context.Context) (map[string]int, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.Issuer+"/test/counters", nil)
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]int{}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("oidc: counters: %w", err)
	}
	return out, nil
}

// RevokeGrants withdraws every grant the user gave, with its tokens, as
// the user would on the server's account page.
func (s *Server) RevokeGrants(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.Issuer+"/test/revoke-grants", nil)
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("oidc: revoke-grants: HTTP %d", resp.StatusCode)
	}
	return nil
}

// Browse plays the user's browser: it opens authorizeURL, follows the
// server's redirects through its login and consent interactions (cookies
// kept) and stops at the first redirect to redirectURI, whose query it
// returns (code, state, iss; or error, error_description, state, iss).
// The browser is redirected, never the broker's callback called.
func Browse(ctx context.Context, authorizeURL, redirectURI string) (url.Values, error) {
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	next := authorizeURL
	for hop := 0; hop < 10; hop++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, next, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", "text/html")
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		loc, err := resp.Location()
		if err != nil {
			return nil, fmt.Errorf("oidc: %s answered HTTP %d without a redirect: %.300s", req.URL.Path, resp.StatusCode, body)
		}
		if strings.HasPrefix(loc.String(), redirectURI+"?") {
			return loc.Query(), nil
		}
		next = loc.String()
	}
	return nil, errors.New("oidc: more than 10 redirects before the callback")
}

type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	if len(l.b) > 64<<10 {
		l.b = l.b[len(l.b)-32<<10:]
	}
	return len(p), nil
}

func (l *lockedBuffer) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := string(l.b)
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return strings.TrimSpace(s)
}
