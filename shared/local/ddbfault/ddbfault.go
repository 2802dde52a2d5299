// Package ddbfault is a fault-injecting HTTP proxy to put between an AWS
// SDK client and DynamoDB Local. Tests point AWS_ENDPOINT_URL_DYNAMODB (or
// a client's BaseEndpoint) at it and choose, per DynamoDB operation and
// optionally per request content, what the next requests suffer:
// throttling and server errors answered without reaching DynamoDB, stalls
// before or after the write reaches it, and the nastiest one for a
// conditional write: forward-then-reset, where DynamoDB applies the write
// and the client only sees its connection drop, so the SDK retries a write
// that has already happened.
//
// It listens on 127.0.0.1 only and counts, per operation, every request it
// saw and every request it forwarded.
package ddbfault

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Kind is what a fault does to a request.
type Kind int

// Kinds of fault.
const (
	// Throttle answers ProvisionedThroughputExceededException (HTTP 400)
	// without forwarding: the SDK retries it as a throttle.
	Throttle Kind = iota + 1
	// ServerError answers InternalServerError (HTTP 500) without forwarding.
	ServerError
	// StallBefore holds the request for Stall, then forwards it (unless
	// the client gave up meanwhile, in which case nothing reaches DynamoDB).
	StallBefore
	// StallAfter forwards the request (it applies) and holds the answer for
	// Stall; a client that times out meanwhile never learns it applied.
	StallAfter
	// ResetAfterForward forwards the request (it applies) and then resets
	// the client's connection instead of answering.
	ResetAfterForward
	// ResetBeforeForward resets the connection without forwarding.
	ResetBeforeForward
)

func (k Kind) String() string {
	switch k {
	case Throttle:
		return "throttle"
	case ServerError:
		return "server-error"
	case StallBefore:
		return "stall-before"
	case StallAfter:
		return "stall-after"
	case ResetAfterForward:
		return "reset-after-forward"
	case ResetBeforeForward:
		return "reset-before-forward"
	}
	return "none"
}

// Fault is one injected misbehaviour.
type Fault struct {
	Kind  Kind
	Stall time.Duration
	// Match, when set, limits the fault to requests whose JSON body
	// contains it (an attribute name such as "lease_owner", a key value).
	Match string
}

// Proxy is a running fault-injecting proxy.
type Proxy struct {
	// URL is the proxy's endpoint, http://127.0.0.1:port.
	URL string

	target   string
	srv      *http.Server
	client   *http.Client
	mu       sync.Mutex
	pending  map[string][]Fault // by operation
	seen     map[string]int
	fwd      map[string]int
	injected map[string]int
	bodies   map[string][][]byte
}

// Start serves a proxy to target (DynamoDB Local's endpoint).
func Start(target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("ddbfault: listen: %w", err)
	}
	p := &Proxy{
		URL: "http://" + l.Addr().String(), target: strings.TrimRight(target, "/"),
		client:  &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		pending: map[string][]Fault{}, seen: map[string]int{}, fwd: map[string]int{}, injected: map[string]int{}, bodies: map[string][][]byte{},
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(l) }()
	return p, nil
}

// Close stops the proxy.
func (p *Proxy) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
	_ = p.srv.Close()
}

// Inject makes the next n requests of op (for example "UpdateItem")
// matching f.Match suffer f. Faults of one operation apply in order.
func (p *Proxy) Inject(op string, f Fault, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := 0; i < n; i++ {
		p.pending[op] = append(p.pending[op], f)
	}
}

// Clear drops every fault not yet applied.
func (p *Proxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pending = map[string][]Fault{}
}

// Pending is how many injected faults of op have not been applied yet.
func (p *Proxy) Pending(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending[op])
}

// Seen counts the requests of op that reached the proxy.
func (p *Proxy) Seen(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[op]
}

// SeenMatching counts the requests of op whose body contained match.
func (p *Proxy) SeenMatching(op, match string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, b := range p.bodies[op] {
		if bytes.Contains(b, []byte(match)) {
			n++
		}
	}
	return n
}

// Forwarded counts the requests of op that reached DynamoDB.
func (p *Proxy) Forwarded(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fwd[op]
}

// Injected counts the faults applied to requests of op.
func (p *Proxy) Injected(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.injected[op]
}

// take returns the first pending fault of op that matches body.
func (p *Proxy) take(op string, body []byte) *Fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen[op]++
	p.bodies[op] = append(p.bodies[op], body)
	for i, f := range p.pending[op] {
		if f.Match == "" || bytes.Contains(body, []byte(f.Match)) {
			p.pending[op] = append(p.pending[op][:i:i], p.pending[op][i+1:]...)
			p.injected[op]++
			return &f
		}
	}
	return nil
}

func operation(r *http.Request) string {
	_, op, _ := strings.Cut(r.Header.Get("X-Amz-Target"), ".")
	return op
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	op := operation(r)
	f := p.take(op, body)
	if f == nil {
		p.forwardAndAnswer(w, r, op, body, 0)
		return
	}
	switch f.Kind {
	case Throttle:
		awsError(w, http.StatusBadRequest, "ProvisionedThroughputExceededException", "injected: the level of configured provisioned throughput for the table was exceeded")
	case ServerError:
		awsError(w, http.StatusInternalServerError, "InternalServerError", "injected: internal server error")
	case StallBefore:
		select {
		case <-time.After(f.Stall):
		case <-r.Context().Done():
			return
		}
		p.forwardAndAnswer(w, r, op, body, 0)
	case StallAfter:
		p.forwardAndAnswer(w, r, op, body, f.Stall)
	case ResetAfterForward:
		if _, _, err := p.forward(r, op, body); err != nil {
			return
		}
		reset(w)
	case ResetBeforeForward:
		reset(w)
	default:
		p.forwardAndAnswer(w, r, op, body, 0)
	}
}

// forward sends the request to DynamoDB and returns its answer. Once the
// request is sent it is counted as forwarded, whatever the client does.
func (p *Proxy) forward(r *http.Request, op string, body []byte) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(context.WithoutCancel(r.Context()), r.Method, p.target+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	for k, vs := range r.Header {
		req.Header[k] = vs
	}
	p.mu.Lock()
	p.fwd[op]++
	p.mu.Unlock()
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp, out, err
}

func (p *Proxy) forwardAndAnswer(w http.ResponseWriter, r *http.Request, op string, body []byte, stall time.Duration) {
	resp, out, err := p.forward(r, op, body)
	if err != nil {
		awsError(w, http.StatusBadGateway, "InternalServerError", "proxy: "+err.Error())
		return
	}
	if stall > 0 {
		select {
		case <-time.After(stall):
		case <-r.Context().Done():
			return
		}
	}
	for k, vs := range resp.Header {
		if k == "Content-Length" || k == "Connection" {
			continue
		}
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(out)
}

func awsError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	w.Header().Set("X-Amzn-ErrorType", code)
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"__type":"com.amazonaws.dynamodb.v20120810#%s","message":%q}`, code, msg)
}

// reset closes the client's connection with a TCP RST, so the client sees
// "connection reset by peer" rather than a clean close.
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}
