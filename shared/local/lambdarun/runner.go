// Package lambdarun runs a real Lambda bootstrap the way the Lambda
// service (or sam local invoke) does, with no Docker: it serves the
// documented Runtime API (/2018-06-01/runtime/invocation/next, …/response,
// …/error, /init/error) on a free loopback port, starts the bootstrap with
// AWS_LAMBDA_RUNTIME_API pointing at it, and hands it one invoke at a time,
// as one sandbox does. An invoke that outlives the timeout kills the
// process; the next invoke starts a fresh one (a cold start). The Runtime
// API answers only requests whose Host is its own loopback address.
package lambdarun

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/devfront"
)

const apiPrefix = "/2018-06-01/runtime"

// maxPayload is Lambda's synchronous invoke limit.
const maxPayload = 6 << 20

// Config describes one function.
type Config struct {
	// Bootstrap is the path of the built executable.
	Bootstrap string
	// FunctionName appears in the context and the ARN.
	FunctionName string
	// Env is added to a minimal environment (PATH, HOME) for the process.
	Env map[string]string
	// Timeout of one invoke; 30 s when zero.
	Timeout time.Duration
	// Stdout and Stderr receive the process's output; discarded when nil.
	Stdout, Stderr io.Writer
}

// FunctionError is an error the function itself reported (/error, or an
// init failure, or a crash/timeout), as Lambda returns it.
type FunctionError struct {
	Type    string `json:"errorType"`
	Message string `json:"errorMessage"`
}

func (e *FunctionError) Error() string {
	return "lambdarun: function error " + e.Type + ": " + e.Message
}

// Runner is one warm sandbox.
type Runner struct {
	cfg      Config
	srv      *http.Server
	addr     string
	invokeMu sync.Mutex // one invoke at a time, as one sandbox

	mu     sync.Mutex
	proc   *exec.Cmd
	exited chan struct{}
	// pending hands an invoke to the current process's /next. Each
	// process gets its own, so a /next left waiting by a process that died
	// (its request not yet seen as closed) cannot take the next process's
	// invoke.
	pending chan *invocation
	current *invocation
	initErr *FunctionError
	starts  int
}

type invocation struct {
	id       string
	payload  []byte
	deadline time.Time
	done     chan result
	once     sync.Once
}

type result struct {
	body []byte
	ferr *FunctionError
}

func (inv *invocation) finish(r result) { inv.once.Do(func() { inv.done <- r }) }

// Start serves the Runtime API and starts the bootstrap.
func Start(cfg Config) (*Runner, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.FunctionName == "" {
		cfg.FunctionName = "function"
	}
	if _, err := os.Stat(cfg.Bootstrap); err != nil {
		return nil, fmt.Errorf("lambdarun: bootstrap: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("lambdarun: listen: %w", err)
	}
	r := &Runner{cfg: cfg, addr: l.Addr().String()}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+apiPrefix+"/invocation/next", r.next)
	mux.HandleFunc("POST "+apiPrefix+"/invocation/{id}/response", r.response)
	mux.HandleFunc("POST "+apiPrefix+"/invocation/{id}/error", r.invocationError)
	mux.HandleFunc("POST "+apiPrefix+"/init/error", r.initError)
	// Loopback only, and only to requests that name it: a web page whose
	// DNS name is rebound to 127.0.0.1 could otherwise take the invokes
	// (with their tokens) or answer them.
	r.srv = &http.Server{Handler: devfront.HostGuard(devfront.AllowedHosts(r.addr, r.addr), mux), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.srv.Serve(l) }()
	if err := r.spawn(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// RuntimeAPI is the host:port the Runtime API listens on, the value of
// the bootstrap's AWS_LAMBDA_RUNTIME_API.
func (r *Runner) RuntimeAPI() string { return r.addr }

// Starts counts process starts (cold starts).
func (r *Runner) Starts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.starts
}

// PID of the running bootstrap, 0 when none.
func (r *Runner) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil || r.proc.Process == nil {
		return 0
	}
	return r.proc.Process.Pid
}

func (r *Runner) spawn() error {
	cmd := exec.Command(r.cfg.Bootstrap)
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir(), "TZ=UTC",
		"AWS_LAMBDA_RUNTIME_API=" + r.addr,
		"AWS_LAMBDA_FUNCTION_NAME=" + r.cfg.FunctionName,
		"AWS_LAMBDA_FUNCTION_VERSION=$LATEST",
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE=256",
		"AWS_REGION=us-east-1", "AWS_DEFAULT_REGION=us-east-1",
		"_HANDLER=bootstrap",
	}
	for k, v := range r.cfg.Env {
		env = append(env, k+"="+v)
	}
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = r.cfg.Stdout, r.cfg.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// The new process's channel is in place before it can ask /next.
	r.mu.Lock()
	r.pending = make(chan *invocation)
	r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("lambdarun: start %s: %w", r.cfg.Bootstrap, err)
	}
	exited := make(chan struct{})
	r.mu.Lock()
	r.proc, r.exited, r.initErr = cmd, exited, nil
	r.starts++
	r.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		// Forget the process before announcing its end: kill returns on
		// exited, and an Invoke right after must see no process and start
		// a new one, not hand its event to the dead one's closed channel.
		r.mu.Lock()
		cur := r.current
		if r.proc == cmd {
			r.proc = nil
		}
		r.mu.Unlock()
		close(exited)
		if cur != nil {
			cur.finish(result{ferr: &FunctionError{Type: "Runtime.ExitError", Message: "the process exited before answering"}})
		}
	}()
	return nil
}

func (r *Runner) kill() {
	r.mu.Lock()
	cmd, exited := r.proc, r.exited
	r.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
}

// Invoke sends one event and waits for the function's answer. A function
// error is returned as *FunctionError; other errors are the runner's.
func (r *Runner) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	if len(payload) > maxPayload {
		return nil, fmt.Errorf("lambdarun: payload of %d bytes exceeds %d", len(payload), maxPayload)
	}
	if !json.Valid(payload) {
		return nil, errors.New("lambdarun: payload is not JSON")
	}
	r.invokeMu.Lock()
	defer r.invokeMu.Unlock()
	r.mu.Lock()
	alive := r.proc != nil
	r.mu.Unlock()
	if !alive {
		if err := r.spawn(); err != nil {
			return nil, err
		}
	}
	idb := make([]byte, 16)
	_, _ = rand.Read(idb)
	inv := &invocation{id: hex.EncodeToString(idb), payload: payload, deadline: time.Now().Add(r.cfg.Timeout), done: make(chan result, 1)}
	timer := time.NewTimer(r.cfg.Timeout)
	defer timer.Stop()
	r.mu.Lock()
	exited, pending := r.exited, r.pending
	r.mu.Unlock()
	// Hand the invoke to the process's next /next call.
	select {
	case pending <- inv:
	case <-exited:
		r.mu.Lock()
		ierr := r.initErr
		r.mu.Unlock()
		if ierr != nil {
			return nil, ierr
		}
		return nil, &FunctionError{Type: "Runtime.ExitError", Message: "the process exited during init"}
	case <-timer.C:
		r.kill()
		return nil, &FunctionError{Type: "Sandbox.Timedout", Message: "init did not finish within the timeout"}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case res := <-inv.done:
		r.clearCurrent(inv)
		if res.ferr != nil {
			return nil, res.ferr
		}
		return res.body, nil
	case <-timer.C:
		r.kill()
		r.clearCurrent(inv)
		return nil, &FunctionError{Type: "Sandbox.Timedout", Message: fmt.Sprintf("Task timed out after %.2f seconds", r.cfg.Timeout.Seconds())}
	case <-ctx.Done():
		r.kill()
		r.clearCurrent(inv)
		return nil, ctx.Err()
	}
}

func (r *Runner) clearCurrent(inv *invocation) {
	r.mu.Lock()
	if r.current == inv {
		r.current = nil
	}
	r.mu.Unlock()
}

func (r *Runner) next(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	pending := r.pending
	r.mu.Unlock()
	select {
	case inv := <-pending:
		// The process that asked may have died since (its request waits
		// until the server sees the connection closed). Under the lock the
		// exit goroutine takes: either it sees this invoke as current and
		// fails it, or this sees the process gone and fails it here, so the
		// invoke never waits out its timeout for a dead process.
		r.mu.Lock()
		alive := r.proc != nil && r.pending == pending
		if alive {
			r.current = inv
		}
		r.mu.Unlock()
		if !alive {
			inv.finish(result{ferr: &FunctionError{Type: "Runtime.ExitError", Message: "the process exited before answering"}})
			return
		}
		h := w.Header()
		h.Set("Lambda-Runtime-Aws-Request-Id", inv.id)
		h.Set("Lambda-Runtime-Deadline-Ms", strconv.FormatInt(inv.deadline.UnixMilli(), 10))
		h.Set("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:000000000000:function:"+r.cfg.FunctionName)
		h.Set("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000;Sampled=0")
		h.Set("Content-Type", "application/json")
		_, _ = w.Write(inv.payload)
	case <-req.Context().Done():
	}
}

func (r *Runner) byID(id string) *invocation {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current != nil && r.current.id == id {
		return r.current
	}
	return nil
}

func (r *Runner) response(w http.ResponseWriter, req *http.Request) {
	inv := r.byID(req.PathValue("id"))
	if inv == nil {
		http.Error(w, `{"errorMessage":"unknown request id","errorType":"InvalidRequestID"}`, http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, maxPayload+1))
	if err != nil || len(body) > maxPayload {
		inv.finish(result{ferr: &FunctionError{Type: "Function.ResponseSizeTooLarge", Message: "response larger than 6 MB"}})
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		return
	}
	inv.finish(result{body: body})
	w.WriteHeader(http.StatusAccepted)
}

func readError(req *http.Request) *FunctionError {
	var fe FunctionError
	body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if json.Unmarshal(body, &fe) != nil || fe.Message == "" {
		fe.Message = strings.TrimSpace(string(body))
	}
	if fe.Type == "" {
		fe.Type = req.Header.Get("Lambda-Runtime-Function-Error-Type")
	}
	if fe.Type == "" {
		fe.Type = "Unhandled"
	}
	return &fe
}

func (r *Runner) invocationError(w http.ResponseWriter, req *http.Request) {
	inv := r.byID(req.PathValue("id"))
	if inv == nil {
		http.Error(w, `{"errorMessage":"unknown request id","errorType":"InvalidRequestID"}`, http.StatusBadRequest)
		return
	}
	inv.finish(result{ferr: readError(req)})
	w.WriteHeader(http.StatusAccepted)
}

func (r *Runner) initError(w http.ResponseWriter, req *http.Request) {
	fe := readError(req)
	r.mu.Lock()
	r.initErr = fe
	r.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

// Close stops the process and the Runtime API server.
func (r *Runner) Close() {
	r.kill()
	if r.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = r.srv.Shutdown(ctx)
	}
}
