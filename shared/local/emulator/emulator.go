// Package emulator holds HTTP emulators of the providers tokenbroker
// speaks to, written from their documented behaviour: WeChat (global token
// with its daily quota and five-minute overlap, stable_token, web
// authorization), SinaCloud (single-use refresh tokens) and a generic
// OAuth 2.0 server (PKCE, client authentication, GitHub-style form answers
// and HTTP-200 errors, refresh rotation with reuse detection).
//
// Each emulator is an http.Handler: tests wrap it in httptest.NewServer,
// make dev serves it on a port. Each counts calls per endpoint and can be
// told to answer the next calls to an endpoint with a Fault, or to write
// its successful token answers oddly (SetOddity).
//
// Each also serves a downstream API, APIPath, that stands for the
// provider's resource server: it accepts a live access token as
// "Authorization: Bearer …" or "?access_token=…" and rejects a dead one as
// that provider does (OAuth2 and SinaCloud: HTTP 401; WeChat: HTTP 200
// with errcode 40001 or 42001). KillAccess ends one access token there
// without ending its grant, as a provider does when it revokes a token
// early; the grant's refresh token keeps working.
package emulator

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"html"
	"io"
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

// Oddity changes how an emulator writes its successful token answers (code
// exchange, refresh, client credentials, WeChat global token), the way
// real providers do. Error answers are never changed.
type Oddity struct {
	// ExpiresIn, when not nil, is written as expires_in instead of the
	// real lifetime: 2147483647 (a common "never"), -1, "3600s", nil
	// cannot be written (use a json.RawMessage("null")). The token itself
	// still lives its configured lifetime at the emulator.
	ExpiresIn any
	// BOM puts a UTF-8 byte-order mark before the body.
	BOM bool
}

// APIPath is the downstream API every emulator serves (any method).
const APIPath = "/api/resource"

// core is what every emulator shares: counters, faults, latency, clock.
type core struct {
	mu     sync.Mutex
	calls  map[string]int
	faults map[string][]Fault
	// oddity applies to successful token answers; oddAnswers counts them.
	oddity     Oddity
	oddAnswers int
	// apiCalls and apiRejected count APIPath requests handled.
	apiCalls, apiRejected int
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

// SetOddity makes every later successful token answer odd as o says; the
// zero Oddity writes them normally again.
func (c *core) SetOddity(o Oddity) {
	c.mu.Lock()
	c.oddity = o
	c.mu.Unlock()
}

// OddAnswers counts the token answers written with an Oddity.
func (c *core) OddAnswers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.oddAnswers
}

// APICalls counts the requests APIPath handled (faulted ones excluded).
func (c *core) APICalls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.apiCalls
}

// APIRejected counts the APIPath requests refused for their token.
func (c *core) APIRejected() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.apiRejected
}

// odd applies the oddity to a successful token answer's fields and returns
// what goes before the body. c.mu is held.
func (c *core) odd(fields map[string]any) []byte {
	o := c.oddity
	if o.ExpiresIn == nil && !o.BOM {
		return nil
	}
	c.oddAnswers++
	if o.ExpiresIn != nil {
		fields["expires_in"] = o.ExpiresIn
	}
	if o.BOM {
		return []byte("\uFEFF")
	}
	return nil
}

// writeToken writes a successful token answer as JSON, after prefix.
func writeToken(w http.ResponseWriter, prefix []byte, v any) {
	body, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(prefix, body...))
}

// apiToken is the access token of a downstream API request: the Bearer
// header, else the access_token query parameter.
func apiToken(r *http.Request) string {
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(tok)
	}
	return r.URL.Query().Get("access_token")
}

// apiAnswer is what APIPath answers for a live token: who called, how,
// and the body it sent (bounded), so a test can see a replayed request.
func apiAnswer(w http.ResponseWriter, r *http.Request, extra map[string]any) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	out := map[string]any{"ok": true, "method": r.Method, "body": string(body)}
	for k, v := range extra {
		out[k] = v
	}
	writeJSON(w, http.StatusOK, out)
}

// serveOAuthAPI answers APIPath as an RFC 6750 resource server: 401 with
// WWW-Authenticate for a missing or dead token.
func (c *core) serveOAuthAPI(w http.ResponseWriter, r *http.Request, live func(string) bool) {
	tok := apiToken(r)
	ok := tok != "" && live(tok)
	c.mu.Lock()
	c.apiCalls++
	if !ok {
		c.apiRejected++
	}
	c.mu.Unlock()
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="The access token is invalid or expired"`)
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "invalid_token", "error_description": "The access token is invalid or expired"})
		return
	}
	apiAnswer(w, r, nil)
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
