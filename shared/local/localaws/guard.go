package localaws

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/tokenbroker/tokenbroker/shared/local/devfront"
)

// The stand-ins hold every client secret and the token key ring (moto) and
// every sealed token (DynamoDB Local). Neither guards itself: moto answers
// any origin's CORS preflight and checks no Host, DynamoDB Local has no
// bind flag and checks no Host either. So neither is reachable on its own:
// moto listens on a Unix socket in a private directory, DynamoDB Local runs
// in a network namespace of its own, and what the SDKs get is the address
// of a guard proxy in front of each: loopback only, its own name required
// in Host (421 otherwise, against DNS rebinding), preflights refused and no
// Access-Control-* header ever passed on.

// guard is one loopback proxy in front of one stand-in.
type guard struct {
	srv *http.Server
	tr  *http.Transport
	url string
}

// startGuard serves a proxy on a free port of 127.0.0.1 that forwards to
// upstream (host:port) through dial.
func startGuard(dial func(ctx context.Context, network, addr string) (net.Conn, error), upstream string) (*guard, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("localaws: guard proxy: %w", err)
	}
	// Every test and the benchmarks go through here on every call, so the
	// proxy stays lean: connections to the stand-in are kept alive and
	// reused, bodies stream through unbuffered, no environment proxy.
	tr := &http.Transport{
		DialContext:           dial,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   512,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme = "http"
			r.Out.URL.Host = upstream
			// The Host the client signed stays: moto builds SQS queue URLs
			// from it, and they must point back at this proxy.
			r.Out.Host = r.In.Host
			r.Out.Header.Del("Origin")
		},
		Transport:  tr,
		BufferPool: bufferPool{},
		ModifyResponse: func(resp *http.Response) error {
			stripCORS(resp.Header)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = fmt.Fprintln(w, "the stand-in behind this proxy does not answer")
		},
	}
	addr := l.Addr().String()
	srv := &http.Server{Handler: devfront.HostGuard(devfront.AllowedHosts(addr, addr), noPreflight(rp)), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return &guard{srv: srv, tr: tr, url: "http://" + addr}, nil
}

// bufferPool recycles the proxy's copy buffers: without it every
// request allocates 32 KiB.
type bufferPool struct{}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *copyBuffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }

// noPreflight refuses every OPTIONS request: the SDKs never send one, a
// browser sends one before a cross-origin call, and the refusal carries
// no Access-Control-* header, so the browser stops there.
func noPreflight(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusForbidden)
			_, _ = fmt.Fprintln(w, "no cross-origin requests: this stand-in serves local tools only")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// stripCORS drops every Access-Control-* header the stand-in sent.
func stripCORS(h http.Header) {
	for k := range h {
		if strings.HasPrefix(http.CanonicalHeaderKey(k), "Access-Control-") {
			delete(h, k)
		}
	}
}

func (g *guard) close() {
	if g == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = g.srv.Shutdown(ctx)
	g.tr.CloseIdleConnections()
}

// unixDialer dials the Unix socket at path whatever address it is asked for.
func unixDialer(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// netns is a network namespace of its own that a stand-in runs in: it
// holds nothing but a loopback interface, so nothing outside it, on this
// machine or beyond, reaches the stand-in's port. The proxy reaches it by
// opening its sockets inside the namespace (setns on a locked thread);
// a socket stays in the namespace it was made in.
type netns struct {
	target, home *os.File
}

// openNetns opens the network namespace of process pid and brings its
// loopback interface up.
func openNetns(pid int) (*netns, error) {
	target, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, err
	}
	home, err := os.Open("/proc/self/ns/net")
	if err != nil {
		target.Close()
		return nil, err
	}
	n := &netns{target: target, home: home}
	if err := n.inside(loopbackUp); err != nil {
		n.close()
		return nil, fmt.Errorf("localaws: loopback in the stand-in's namespace: %w", err)
	}
	return n, nil
}

func (n *netns) close() {
	n.target.Close()
	n.home.Close()
}

// sysSetns is setns(2)'s number; package syscall's tables predate it.
var sysSetns = map[string]uintptr{"amd64": 308, "arm64": 268, "riscv64": 268, "386": 346, "arm": 375}[runtime.GOARCH]

func setns(f *os.File) error {
	if sysSetns == 0 {
		return errors.New("setns: unknown system call number on " + runtime.GOARCH)
	}
	if _, _, e := syscall.Syscall(sysSetns, f.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
		return e
	}
	return nil
}

// inside runs fn on a thread switched into the namespace. A thread that
// cannot be switched back is left locked, so the runtime ends it with the
// goroutine instead of reusing it for anything else.
func (n *netns) inside(fn func() error) error {
	runtime.LockOSThread()
	if err := setns(n.target); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	err := fn()
	if berr := setns(n.home); berr != nil {
		return errors.Join(err, fmt.Errorf("localaws: cannot leave the stand-in's namespace: %w", berr))
	}
	runtime.UnlockOSThread()
	return err
}

func (n *netns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := n.inside(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil && conn != nil {
		conn.Close()
		conn = nil
	}
	return conn, err
}

// loopbackUp sets the IFF_UP flag of lo in the current thread's namespace
// (a new namespace starts with it down).
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: name[16], then the flags as a short
	copy(ifr[:], "lo")
	ioctl := func(req uintptr) error {
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
			return e
		}
		return nil
	}
	if err := ioctl(syscall.SIOCGIFFLAGS); err != nil {
		return err
	}
	flags := binary.NativeEndian.Uint16(ifr[16:18]) | syscall.IFF_UP
	binary.NativeEndian.PutUint16(ifr[16:18], flags)
	return ioctl(syscall.SIOCSIFFLAGS)
}
