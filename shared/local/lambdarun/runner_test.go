package lambdarun_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
)

// The test binary doubles as a bootstrap when this variable is set.
const modeEnv = "LAMBDARUN_TEST_BOOTSTRAP"

type command struct {
	SleepMs int    `json:"sleep_ms"`
	Fail    string `json:"fail"`
	Exit    bool   `json:"exit"`
	Echo    string `json:"echo"`
}

func TestMain(m *testing.M) {
	switch os.Getenv(modeEnv) {
	case "":
		os.Exit(m.Run())
	case "init-exit":
		fmt.Fprintln(os.Stderr, "TABLE_NAME is not set")
		os.Exit(1)
	case "sqs":
		lambda.Start(sqsWorker)
	default:
		lambda.Start(func(ctx context.Context, c command) (map[string]any, error) {
			lc, _ := lambdacontext.FromContext(ctx)
			deadline, _ := ctx.Deadline()
			switch {
			case c.Exit:
				os.Exit(3)
			case c.Fail != "":
				return nil, errors.New(c.Fail)
			case c.SleepMs > 0:
				time.Sleep(time.Duration(c.SleepMs) * time.Millisecond)
			}
			return map[string]any{"echo": c.Echo, "request_id": lc.AwsRequestID, "pid": os.Getpid(),
				"deadline_in_ms": time.Until(deadline).Milliseconds(), "fn": lambdacontext.FunctionName}, nil
		})
	}
}

func start(t *testing.T, mode string, timeout time.Duration) *lambdarun.Runner {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r, err := lambdarun.Start(lambdarun.Config{Bootstrap: self, FunctionName: "probe", Timeout: timeout, Env: map[string]string{modeEnv: mode}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func call(t *testing.T, r *lambdarun.Runner, c command) (map[string]any, error) {
	t.Helper()
	payload, _ := json.Marshal(c)
	out, err := r.Invoke(context.Background(), payload)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("answer %s", out)
	}
	return m, nil
}

func TestInvokeWarmAndContext(t *testing.T) {
	r := start(t, "serve", 5*time.Second)
	a, err := call(t, r, command{Echo: "one"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := call(t, r, command{Echo: "two"})
	if err != nil {
		t.Fatal(err)
	}
	if a["echo"] != "one" || b["echo"] != "two" || a["pid"] != b["pid"] || a["request_id"] == b["request_id"] || a["fn"] != "probe" {
		t.Fatalf("answers %v %v", a, b)
	}
	if d := a["deadline_in_ms"].(float64); d <= 0 || d > 5000 {
		t.Fatalf("deadline %v ms", d)
	}
	if r.Starts() != 1 {
		t.Fatalf("%d cold starts for two invokes", r.Starts())
	}
}

func TestInvokesAreSerialised(t *testing.T) {
	r := start(t, "serve", 5*time.Second)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := call(t, r, command{SleepMs: 100}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// One sandbox runs one invoke at a time: four 100 ms invokes cannot overlap.
	if elapsed := time.Since(t0); elapsed < 400*time.Millisecond {
		t.Fatalf("4 invokes of 100 ms took %v: they overlapped", elapsed)
	}
}

func TestFunctionErrorCrashAndTimeout(t *testing.T) {
	// 3 s: a cold start of a race-built binary can take over a second while
	// make test runs every package at once, and a timeout of its init is
	// not what this tests. The sleeping invoke costs only the timeout.
	r := start(t, "serve", 3*time.Second)
	_, err := call(t, r, command{Fail: "boom"})
	var fe *lambdarun.FunctionError
	if !errors.As(err, &fe) || fe.Message != "boom" {
		t.Fatalf("function error: %v", err)
	}
	first, _ := call(t, r, command{})
	_, err = call(t, r, command{SleepMs: 20000})
	if !errors.As(err, &fe) || fe.Type != "Sandbox.Timedout" {
		t.Fatalf("timeout: %v", err)
	}
	after, err := call(t, r, command{Echo: "back"})
	if err != nil || after["echo"] != "back" || after["pid"] == first["pid"] || r.Starts() != 2 {
		t.Fatalf("after a timeout the next invoke must cold-start: %v %v starts=%d", after, err, r.Starts())
	}
	_, err = call(t, r, command{Exit: true})
	if !errors.As(err, &fe) || fe.Type != "Runtime.ExitError" {
		t.Fatalf("crash: %v", err)
	}
	if again, err := call(t, r, command{Echo: "again"}); err != nil || again["echo"] != "again" {
		t.Fatalf("after a crash: %v %v", again, err)
	}
}

// A process killed while it waits in /next (an idle sandbox reclaimed, or
// an outside SIGKILL) leaves that request's handler waiting until the
// server notices the closed connection. The next invoke cold-starts a new
// process, and that process, not the dead one's handler, gets the event.
func TestInvokeAfterAnIdleProcessWasKilled(t *testing.T) {
	r := start(t, "serve", 5*time.Second)
	for i := range 5 {
		before, err := call(t, r, command{Echo: "warm"})
		if err != nil {
			t.Fatal(err)
		}
		pid := r.PID()
		if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for r.PID() == pid {
			time.Sleep(time.Millisecond)
		}
		after, err := call(t, r, command{Echo: "again"})
		if err != nil || after["echo"] != "again" || after["pid"] == before["pid"] {
			t.Fatalf("round %d: the invoke after an idle kill: %v %v", i, after, err)
		}
	}
	if r.Starts() != 6 {
		t.Fatalf("%d starts, want 6 (one, then one per kill)", r.Starts())
	}
}

func TestInitFailure(t *testing.T) {
	r := start(t, "init-exit", 2*time.Second)
	_, err := call(t, r, command{})
	var fe *lambdarun.FunctionError
	if !errors.As(err, &fe) || !strings.HasPrefix(fe.Type, "Runtime.") {
		t.Fatalf("init failure: %v", err)
	}
}

func TestRejectsBadPayload(t *testing.T) {
	r := start(t, "serve", time.Second)
	if _, err := r.Invoke(context.Background(), []byte("not json")); err == nil {
		t.Fatal("non-JSON payload accepted")
	}
}

// TestRuntimeAPIRefusesForeignHost: the Runtime API listens on loopback
// and serves only requests naming it, so a DNS-rebound web page can
// neither take an invoke (/next) nor answer one; a preflight gets no CORS.
func TestRuntimeAPIRefusesForeignHost(t *testing.T) {
	r := start(t, "serve", 5*time.Second)
	host, port, err := net.SplitHostPort(r.RuntimeAPI())
	if err != nil || !net.ParseIP(host).IsLoopback() {
		t.Fatalf("Runtime API on %q: not loopback", r.RuntimeAPI())
	}
	// Warm: the bootstrap now waits in /next.
	if _, err := call(t, r, command{Echo: "warm"}); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 2 * time.Second}
	for _, probe := range []struct{ method, path string }{
		{"GET", "/2018-06-01/runtime/invocation/next"},
		{"POST", "/2018-06-01/runtime/invocation/x/response"},
		{"POST", "/2018-06-01/runtime/init/error"},
	} {
		for _, h := range []string{"evil.example:" + port, "evil.example"} {
			req, _ := http.NewRequest(probe.method, "http://"+r.RuntimeAPI()+probe.path, strings.NewReader("{}"))
			req.Host = h
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%s %s with Host %s: %v", probe.method, probe.path, h, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMisdirectedRequest {
				t.Errorf("%s %s with Host %s: %d, want 421", probe.method, probe.path, h, resp.StatusCode)
			}
		}
	}
	req, _ := http.NewRequest("OPTIONS", "http://"+r.RuntimeAPI()+"/2018-06-01/runtime/invocation/next", nil)
	req.Header.Set("Origin", "http://evil.example")
	req.Header.Set("Access-Control-Request-Method", "GET")
	if resp, err := client.Do(req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if v := resp.Header.Get("Access-Control-Allow-Origin"); v != "" {
			t.Errorf("preflight: Access-Control-Allow-Origin %q", v)
		}
	}
	// The refusals took nothing: the next invoke is answered by the same
	// warm process, which saw exactly the two invokes.
	got, err := call(t, r, command{Echo: "after"})
	if err != nil || got["echo"] != "after" || r.Starts() != 1 {
		t.Fatalf("after the probes: %v %v starts=%d", got, err, r.Starts())
	}
}
