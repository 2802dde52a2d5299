// Package emulator holds HTTP emulators of the providers tokenbroker
// speaks to, written from their documented behaviour: WeChat (global token
// with its daily quota and five-minute overlap, stable_token, web
// authorization), SinaCloud (single-use refresh tokens) and a generic
// OAuth 2.0 server (PKCE, client authentication, GitHub-style form answers
// and HTTP-200 errors, refresh rotation with reuse detection).
//
// Each emulator is an http.Handler: tests wrap it in httptest.NewServer,
// make dev serves it on a port. Each counts calls per endpoint and can be
// told to answer the next calls to an endpoint with a Fault.
package emulator

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"html"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"
)

// Fault replaces the next answers of an endpoint.
type Fault struct {
	// Delay holds the answer back (a slow provider); the request's own
	// context still ends it.
	Delay time.Duration
	// After handles the request first (a rotation takes effect) and then
	// holds the answer back: a client that gives up meanwhile never sees
	// what it was granted.
	After time.Duration
	// Gate holds the request until the channel is closed (or the client
	// gives up), then handles it: a provider that hangs until a test says.
	Gate <-chan struct{}
	// Status and Body replace the answer when Status is set.
	Status      int
	Body        string
	ContentType string
	// Location is sent as the Location header (a redirect, with a 3xx
	// Status).
	Location string
	// Huge answers 2 MiB of JSON-looking bytes with HTTP 200.
	Huge bool
	// Truncate serves the real answer cut in half (the call takes effect).
	Truncate bool
}

// HTMLError is a gateway error page, as proxies in front of providers send.
func HTMLError(status int) Fault {
	return Fault{Status: status, ContentType: "text/html", Body: "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"}
}

// Redirect answers with a 3xx status pointing at location, as a moved or
// hijacked endpoint would. A client that follows it re-sends its request,
// credentials included, to wherever location points.
func Redirect(status int, location string) Fault {
	return Fault{Status: status, Location: location, ContentType: "text/html", Body: `<a href="` + html.EscapeString(location) + `">moved</a>`}
}

// WeChatError is WeChat's error shape: HTTP 200 with errcode.
func WeChatError(code int, msg string) Fault {
	b, _ := json.Marshal(map[string]any{"errcode": code, "errmsg": msg})
	return Fault{Status: http.StatusOK, ContentType: "application/json", Body: string(b)}
}

// OAuthError is an RFC 6749 §5.2 error with the given HTTP status.
func OAuthError(status int, code, desc string) Fault {
	b, _ := json.Marshal(map[string]any{"error": code, "error_description": desc})
	return Fault{Status: status, ContentType: "application/json", Body: string(b)}
}

// core is what every emulator shares: counters, faults, latency, clock.
type core struct {
	mu     sync.Mutex
	calls  map[string]int
	faults map[string][]Fault
	// latency is added to every answer.
	latency     time.Duration
	now         func() time.Time
	inFlight    int
	maxInFlight int
}

func newCore() core {
	return core{calls: map[string]int{}, faults: map[string][]Fault{}, now: time.Now}
}

// Calls returns how many requests reached path (faulted ones included).
func (c *core) Calls(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[path]
}

// MaxInFlight is the most requests served at the same time so far.
func (c *core) MaxInFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxInFlight
}

// Inject makes the next n requests to path answer with f.
func (c *core) Inject(path string, f Fault, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := 0; i < n; i++ {
		c.faults[path] = append(c.faults[path], f)
	}
}

// ClearFaults drops every fault not yet served: the provider is back.
func (c *core) ClearFaults() {
	c.mu.Lock()
	c.faults = map[string][]Fault{}
	c.mu.Unlock()
}

// SetLatency adds d to every answer.
func (c *core) SetLatency(d time.Duration) {
	c.mu.Lock()
	c.latency = d
	c.mu.Unlock()
}

// SetClock replaces the emulator's clock (token and code expiry).
func (c *core) SetClock(now func() time.Time) {
	c.mu.Lock()
	c.now = now
	c.mu.Unlock()
}

func (c *core) clock() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now()
}

// serve counts the call, applies latency and any fault, then runs h.
func (c *core) serve(w http.ResponseWriter, r *http.Request, h http.HandlerFunc) {
	path := r.URL.Path
	c.mu.Lock()
	c.calls[path]++
	c.inFlight++
	c.maxInFlight = max(c.maxInFlight, c.inFlight)
	latency := c.latency
	var fault *Fault
	if q := c.faults[path]; len(q) > 0 {
		fault, c.faults[path] = &q[0], q[1:]
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.inFlight--
		c.mu.Unlock()
	}()
	delay := latency
	if fault != nil {
		delay += fault.Delay
		if fault.Gate != nil {
			select {
			case <-fault.Gate:
			case <-r.Context().Done():
				return
			}
		}
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	switch {
	case fault != nil && fault.After > 0:
		rec := httptest.NewRecorder()
		h(rec, r)
		select {
		case <-time.After(fault.After):
		case <-r.Context().Done():
			return
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	case fault == nil || (fault.Status == 0 && !fault.Huge && !fault.Truncate):
		h(w, r)
	case fault.Huge:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{"access_token":"`))
		_, _ = w.Write(bytes.Repeat([]byte("A"), 2<<20))
		_, _ = w.Write([]byte(`"}`))
	case fault.Truncate:
		rec := httptest.NewRecorder()
		h(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.Code)
		body := rec.Body.Bytes()
		_, _ = w.Write(body[:len(body)/2])
	default:
		if fault.ContentType != "" {
			w.Header().Set("Content-Type", fault.ContentType)
		}
		if fault.Location != "" {
			w.Header().Set("Location", fault.Location)
		}
		w.WriteHeader(fault.Status)
		_, _ = w.Write([]byte(fault.Body))
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func randomToken(prefix string, n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// page writes a small HTML page, as a provider's authorize screen would
// when it refuses a request.
func page(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte("<!doctype html><title>error</title><p>" + strings.NewReplacer("<", "&lt;", ">", "&gt;", "&", "&amp;").Replace(msg) + "</p>"))
}
