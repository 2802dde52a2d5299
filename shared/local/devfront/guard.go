package devfront

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// make dev serves a broker whose IAM routes accept the published
// credentials local:local and whose /dev/connect helper calls the
// authorize function on the visitor's behalf. What keeps other machines
// and other web sites out is here: a loopback address unless told
// otherwise, a Host check against DNS rebinding, and a connect helper that
// only a same-origin form or a printed one-time link can drive.

// CheckListenAddr says whether make dev may listen on addr. A loopback
// address (127.0.0.0/8, ::1, localhost) always may. Any other needs
// expose, and then comes with a warning line to print. A wildcard address
// (0.0.0.0, ::, no host) is refused even so: it has no name the Host check
// could hold requests to; name the interface's own address instead.
func CheckListenAddr(addr string, expose bool) (warning string, err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("-addr %q is not host:port: %v", addr, err)
	}
	ip := net.ParseIP(host)
	switch {
	case strings.EqualFold(host, "localhost") || (ip != nil && ip.IsLoopback()):
		return "", nil
	case host == "" || (ip != nil && ip.IsUnspecified()):
		return "", fmt.Errorf("-addr %s listens on every interface; give one address (127.0.0.1:3000, or with -expose the address of the interface to serve on)", addr)
	case !expose:
		return "", fmt.Errorf("-addr %s is not a loopback address: make dev serves tokens to anyone who can reach it (its credentials are the printed local:local); pass -expose as well if that is what you want", addr)
	}
	return fmt.Sprintf("WARNING: make dev listens on %s, beyond this machine: anyone who can reach it can start connect flows and, signing with the printed local:local, read every token it holds. Use it only on a network you trust.", addr), nil
}

// AllowedHosts are the Host header values a request to a listener on addr
// (the address it really bound) may carry: the address itself, named is
// the -addr the user gave (so a host name given there works too), and for
// a loopback listener localhost and 127.0.0.1 on the same port.
func AllowedHosts(addr, named string) []string {
	var hosts []string
	add := func(h string) {
		if h = strings.ToLower(h); h != "" && !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	add(addr)
	add(named)
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			add(net.JoinHostPort("localhost", port))
			add(net.JoinHostPort("127.0.0.1", port))
		}
	}
	return hosts
}

// HostGuard answers 421 Misdirected Request to a request whose Host is not
// one of hosts, before next sees it. A web page whose DNS name an attacker
// rebinds to 127.0.0.1 reaches the local API as same-origin to itself, but
// its requests still carry its own name in Host.
func HostGuard(hosts []string, next http.Handler) http.Handler {
	allowed := map[string]bool{}
	for _, h := range hosts {
		allowed[strings.ToLower(h)] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowed[strings.ToLower(r.Host)] {
			jsonError(w, http.StatusMisdirectedRequest, "forbidden", "this server answers only to "+strings.Join(hosts, ", "))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// SameOrigin reports whether r comes from a page of one of origins, as a
// browser tells: Sec-Fetch-Site must be same-origin when the browser sends
// it, Origin must be one of origins when it sends one, and at least one of
// the two must be there (every current browser sends Origin on a POST).
func SameOrigin(r *http.Request, origins []string) bool {
	site, origin := r.Header.Get("Sec-Fetch-Site"), r.Header.Get("Origin")
	if site == "" && origin == "" {
		return false
	}
	if site != "" && site != "same-origin" {
		return false
	}
	if origin == "" {
		return true
	}
	for _, o := range origins {
		if strings.EqualFold(origin, o) {
			return true
		}
	}
	return false
}

// OneTimeLinks hands out random tokens, each good for one use of one path.
// It is safe for concurrent use.
type OneTimeLinks struct {
	// Rand is the source of tokens; crypto/rand when nil.
	Rand io.Reader

	mu     sync.Mutex
	tokens map[string]string // token → path
}

// New returns a fresh token for path.
func (l *OneTimeLinks) New(path string) (string, error) {
	src := l.Rand
	if src == nil {
		src = rand.Reader
	}
	b := make([]byte, 16)
	if _, err := io.ReadFull(src, b); err != nil {
		return "", fmt.Errorf("devfront: no randomness for a one-time link: %w", err)
	}
	token := hex.EncodeToString(b)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tokens == nil {
		l.tokens = map[string]string{}
	}
	if _, dup := l.tokens[token]; dup {
		return "", errors.New("devfront: a one-time link token repeated; the randomness source is broken")
	}
	l.tokens[token] = path
	return token, nil
}

// Use spends token if it was made for path and not used yet.
func (l *OneTimeLinks) Use(path, token string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.tokens[token]
	if !ok || p != path || token == "" {
		return false
	}
	delete(l.tokens, token)
	return true
}

// ConnectGate decides who may drive make dev's connect helper, which calls
// the authorize function as an IAM caller would and so must not answer
// another web site: a form POSTed from the local pages themselves, or a GET
// of a link make dev printed, each link good once.
type ConnectGate struct {
	// Origins are the local pages' origins (http://host:port).
	Origins []string
	links   OneTimeLinks
}

// OnceParam is the query parameter that carries a one-time link's token.
const OnceParam = "once"

// Link returns path with a fresh one-time token.
func (g *ConnectGate) Link(path string) (string, error) {
	token, err := g.links.New(path)
	if err != nil {
		return "", err
	}
	return path + "?" + OnceParam + "=" + token, nil
}

// Allow reports whether r may start a connect flow, spending its one-time
// token if it carries one.
func (g *ConnectGate) Allow(r *http.Request) bool {
	switch r.Method {
	case http.MethodPost:
		return SameOrigin(r, g.Origins)
	case http.MethodGet:
		return g.links.Use(r.URL.Path, r.URL.Query().Get(OnceParam))
	}
	return false
}
