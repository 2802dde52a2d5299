// Command dev is `make dev`: the whole broker on this machine. It starts
// DynamoDB Local, moto and the provider emulators, creates the table from
// template.yaml, seeds demo providers into SSM, builds the bootstraps
// and runs them under the Runtime API runner behind a local API Gateway on
// http://127.0.0.1:3000, runs the refresher every minute, and prints what to
// open and what to curl. Ctrl-C stops everything it started. With -fanout
// (make dev FANOUT=1) the refresher queues its work on an SQS queue in moto
// and worker instances take it through lambdarun's event source mapping,
// as RefreshFanOut=true deploys it.
//
// It serves tokens to anyone who can sign with the printed local:local, so
// it keeps to this machine and to its own pages: it listens on loopback
// unless -expose says otherwise (with a warning), answers only requests
// whose Host names it (DNS rebinding), and its connect helper starts a flow
// only from a same-origin form or a one-time link printed at start.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/tokenbroker/tokenbroker/shared/local/devfront"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

var functions = map[string]string{
	"AuthorizeFunction": "authorize", "CallbackFunction": "callback",
	"TokenFunction": "token", "RefresherFunction": "refresher",
}

func main() {
	addr := flag.String("addr", "127.0.0.1:3000", "where the local API listens (a loopback address unless -expose)")
	expose := flag.Bool("expose", false, "allow -addr to be a non-loopback address: anyone who reaches it can read the tokens")
	tick := flag.Duration("refresh-every", time.Minute, "how often the refresher runs")
	flag.BoolVar(&fanOut, "fanout", false, "fan-out mode (RefreshFanOut=true): the tick queues units on SQS (moto) and worker instances refresh them")
	flag.Parse()
	warning, err := devfront.CheckListenAddr(*addr, *expose)
	if err != nil {
		fmt.Fprintln(os.Stderr, "make dev:", err)
		os.Exit(1)
	}
	if warning != "" {
		fmt.Fprintln(os.Stderr, warning)
	}
	if err := run(*addr, *tick); err != nil {
		fmt.Fprintln(os.Stderr, "make dev:", err)
		os.Exit(1)
	}
}

// fanOut is -fanout: the refresher's fan-out mode.
var fanOut bool

// pool hands invokes to a few sandboxes of one function, as Lambda scales
// out under concurrent requests.
type pool chan *lambdarun.Runner

func (p pool) invoke(ctx context.Context, payload []byte) ([]byte, error) {
	select {
	case r := <-p:
		defer func() { p <- r }()
		return r.Invoke(ctx, payload)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func run(addr string, tick time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, err := localaws.ModuleRoot()
	if err != nil {
		return err
	}
	// Claim the address first: a second make dev stops here with a clear line.
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s is already in use — is another `make dev` running? Stop it with Ctrl-C in its terminal, or pass -addr", addr)
	}
	defer listener.Close()
	base := "http://" + listener.Addr().String()

	// make dev owns its stand-ins; endpoints from the shell are not ours.
	for _, v := range []string{localaws.EnvDynamoDB, localaws.EnvSSM, localaws.EnvEventBridge} {
		os.Unsetenv(v)
	}
	buildDir := filepath.Join(root, ".build", "dev")
	step("building the bootstraps for this machine")
	built := []string{}
	for _, fn := range functions {
		built = append(built, fn)
	}
	if fanOut {
		built = append(built, "worker")
	}
	for _, fn := range built {
		cmd := exec.CommandContext(ctx, "go", "build", "-tags", "lambda.norpc", "-trimpath", "-o", filepath.Join(buildDir, fn, "bootstrap"), "./functions/"+fn)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", fn, err, out)
		}
	}
	step("starting DynamoDB Local, moto and the provider emulators")
	stack, err := devstack.Start(ctx, devstack.Options{PublicBaseURL: base, Root: root, Table: "tokenbroker-dev",
		Prefix: "/tokenbroker", LogLevel: "info", ReturnToAllowlist: base})
	if err != nil {
		return err
	}
	defer stack.Close()
	logPath := filepath.Join(buildDir, "functions.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()

	if fanOut {
		mapping, err := startFanOut(ctx, stack, filepath.Join(buildDir, "worker", "bootstrap"), logFile)
		if err != nil {
			return err
		}
		defer mapping.Close()
	}
	pools := map[string]pool{}
	defer func() {
		for _, p := range pools {
			for len(p) > 0 {
				(<-p).Close()
			}
		}
	}()
	for id, fn := range functions {
		size := 1
		if id == "TokenFunction" {
			size = 4
		}
		p := make(pool, size)
		for i := 0; i < size; i++ {
			timeout := 30 * time.Second
			if id == "RefresherFunction" {
				timeout = 55 * time.Second
			}
			r, err := lambdarun.Start(lambdarun.Config{Bootstrap: filepath.Join(buildDir, fn, "bootstrap"), FunctionName: "tokenbroker-" + fn,
				Env: stack.FunctionEnv, Timeout: timeout, Stdout: logFile, Stderr: logFile})
			if err != nil {
				return err
			}
			p <- r
		}
		pools[id] = p
	}
	routes, err := devfront.Routes(filepath.Join(root, "template.yaml"))
	if err != nil {
		return err
	}
	invoke := func(ctx context.Context, function string, payload []byte) ([]byte, error) {
		p, ok := pools[function]
		if !ok {
			return nil, fmt.Errorf("no function %s", function)
		}
		return p.invoke(ctx, payload)
	}
	// IAM routes verify SigV4 against the one local identity the curl lines use.
	front := &devfront.Front{Routes: routes, Invoke: invoke, Domain: listener.Addr().String(),
		Credentials: []aws.Credentials{devfront.DefaultCredentials}}
	hosts := devfront.AllowedHosts(listener.Addr().String(), addr)
	gate := &devfront.ConnectGate{}
	for _, h := range hosts {
		gate.Origins = append(gate.Origins, "http://"+h)
	}
	mux := http.NewServeMux()
	mux.Handle("/", front)
	connect := func(w http.ResponseWriter, r *http.Request) {
		if !gate.Allow(r) {
			refusedPage(w)
			return
		}
		connectHelper(w, r, invoke, base)
	}
	mux.HandleFunc("GET /dev/connect/{provider}/{connection}", connect)
	mux.HandleFunc("POST /dev/connect/{provider}/{connection}", connect)
	mux.HandleFunc("GET /dev/{$}", func(w http.ResponseWriter, r *http.Request) {
		indexPage(w)
	})
	mux.HandleFunc("GET /dev/connected", func(w http.ResponseWriter, r *http.Request) {
		connectedPage(w, r, base)
	})
	links := map[string]string{}
	for _, p := range demoUserProviders {
		if links[p], err = gate.Link("/dev/connect/" + p + "/demo"); err != nil {
			return err
		}
	}
	srv := &http.Server{Handler: devfront.HostGuard(hosts, mux), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(listener) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	go refresher(ctx, pools["RefresherFunction"], tick)
	printTryIt(base, stack, logPath, links)
	<-ctx.Done()
	fmt.Println("\nstopping: the local API, the functions, the emulators, moto and DynamoDB Local")
	return nil
}

func step(msg string) { fmt.Println("· " + msg) }

// startFanOut creates the unit queue and its dead-letter queue in moto,
// points the functions' environment at it (the refresher then queues
// instead of refreshing) and starts the event source mapping with up to
// four worker instances, as the template's defaults scale down.
func startFanOut(ctx context.Context, stack *devstack.Stack, bootstrap string, logFile io.Writer) (*lambdarun.Mapping, error) {
	step("fan-out mode: the unit queue in moto and up to 4 worker instances")
	client := sqs.NewFromConfig(localaws.Config(), func(o *sqs.Options) { o.BaseEndpoint = aws.String(stack.Endpoints.SSM) })
	queueURL, _, queueARN, err := lambdarun.NewQueue(ctx, client, "tokenbroker-dev-refresh", 360*time.Second, 5)
	if err != nil {
		return nil, err
	}
	stack.FunctionEnv["REFRESH_QUEUE_URL"] = queueURL
	stack.FunctionEnv["AWS_ENDPOINT_URL_SQS"] = stack.Endpoints.SSM
	return lambdarun.StartMapping(lambdarun.MappingConfig{SQS: client, QueueURL: queueURL, QueueARN: queueARN, BatchSize: 4,
		MaximumConcurrency: 4, ReportBatchItemFailures: true,
		Log: func(format string, args ...any) { fmt.Fprintf(logFile, "mapping: "+format+"\n", args...) },
		Function: func() (*lambdarun.Runner, error) {
			return lambdarun.Start(lambdarun.Config{Bootstrap: bootstrap, FunctionName: "tokenbroker-worker",
				Env: stack.FunctionEnv, Timeout: 60 * time.Second, Stdout: logFile, Stderr: logFile})
		}})
}

func refresher(ctx context.Context, p pool, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			ev, _ := json.Marshal(map[string]any{"version": "0", "detail-type": "Scheduled Event", "source": "aws.events",
				"time": time.Now().UTC().Format(time.RFC3339), "detail": map[string]any{}})
			out, err := p.invoke(ctx, ev)
			if err != nil {
				if ctx.Err() == nil {
					fmt.Fprintln(os.Stderr, "refresher:", err)
				}
				continue
			}
			fmt.Printf("%s refresher: %s\n", time.Now().Format("15:04:05"), out)
		}
	}
}

// demoUserProviders are the seeded providers with a user to connect.
var demoUserProviders = []string{devstack.WeChatWeb, devstack.SinaCloud, devstack.OAuth2}

// localPage sets what every page of make dev's own sends: no framing by
// another site (a hidden frame could make a user click a connect button),
// no Referer carrying a one-time link's token onwards, HTML.
func localPage(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Cache-Control", "no-store")
}

// indexPage offers a connect button per demo provider: a same-origin form
// POST, which the connect gate accepts any number of times.
func indexPage(w http.ResponseWriter) {
	localPage(w)
	page := "<!doctype html><title>tokenbroker make dev</title><h1>Connect a demo user</h1>"
	for _, p := range demoUserProviders {
		page += `<form method="post" action="/dev/connect/` + html.EscapeString(p) + `/demo"><button>Connect ` + html.EscapeString(p) + ` / demo</button></form>`
	}
	_, _ = io.WriteString(w, page)
}

// refusedPage answers a connect request that is neither a same-origin form
// POST nor a one-time link not used before.
func refusedPage(w http.ResponseWriter) {
	localPage(w)
	w.WriteHeader(http.StatusForbidden)
	_, _ = io.WriteString(w, `<!doctype html><title>not allowed</title><h1>This link does not start a connection</h1>`+
		`<p>Each link make dev printed works once. Start again from <a href="/dev/">the connect page</a>.</p>`)
}

// connectHelper lets a browser start a connect flow: it calls the
// authorize function as an IAM caller would and redirects to the provider.
// The connect gate has already decided that the request may.
func connectHelper(w http.ResponseWriter, r *http.Request, invoke devfront.Invoker, base string) {
	prov, conn := r.PathValue("provider"), r.PathValue("connection")
	body, _ := json.Marshal(map[string]any{"return_to": base + "/dev/connected"})
	path := "/connections/" + url.PathEscape(prov) + "/" + url.PathEscape(conn) + "/authorize"
	ev := events.APIGatewayV2HTTPRequest{
		Version: "2.0", RouteKey: "POST /connections/{provider}/{connection}/authorize", RawPath: path, Body: string(body),
		PathParameters: map[string]string{"provider": prov, "connection": conn}, Headers: map[string]string{},
		RequestContext: events.APIGatewayV2HTTPRequestContext{DomainName: strings.TrimPrefix(base, "http://"), Stage: "$default",
			HTTP: events.APIGatewayV2HTTPRequestContextHTTPDescription{Method: "POST", Path: path},
			Authorizer: &events.APIGatewayV2HTTPRequestContextAuthorizerDescription{IAM: &events.APIGatewayV2HTTPRequestContextAuthorizerIAMDescription{
				AccessKey: "local", UserARN: "arn:aws:iam::000000000000:user/make-dev"}}},
	}
	payload, _ := json.Marshal(ev)
	out, err := invoke(r.Context(), "AuthorizeFunction", payload)
	var resp events.APIGatewayV2HTTPResponse
	if err == nil {
		err = json.Unmarshal(out, &resp)
	}
	var answer struct {
		AuthorizeURL string `json:"authorize_url"`
		Message      string `json:"message"`
	}
	if err == nil {
		_ = json.Unmarshal([]byte(resp.Body), &answer)
	}
	if err != nil || resp.StatusCode != http.StatusOK {
		localPage(w)
		w.WriteHeader(http.StatusBadRequest)
		msg := answer.Message
		if err != nil {
			msg = err.Error()
		}
		_, _ = io.WriteString(w, "<!doctype html><title>cannot connect</title><h1>Cannot start the authorization</h1><p>"+html.EscapeString(msg)+"</p>")
		return
	}
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, answer.AuthorizeURL, http.StatusSeeOther)
}

func connectedPage(w http.ResponseWriter, r *http.Request, base string) {
	q := r.URL.Query()
	prov, conn, status := q.Get("provider"), q.Get("connection"), q.Get("status")
	localPage(w)
	if status != "connected" {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, "<!doctype html><title>not connected</title><h1>Not connected</h1><p>"+
			html.EscapeString(q.Get("error")+": "+q.Get("message"))+"</p>")
		return
	}
	curl := curlLine(base, prov, conn)
	_, _ = io.WriteString(w, "<!doctype html><title>connected</title><h1>"+html.EscapeString(prov+" / "+conn)+" is connected</h1>"+
		"<p>Fetch its token:</p><pre>"+html.EscapeString(curl)+"</pre><p><a href=\"/dev/\">Connect another</a></p>")
}

func curlLine(base, prov, conn string) string {
	creds := devfront.DefaultCredentials
	return fmt.Sprintf(`curl --aws-sigv4 "aws:amz:%s:execute-api" --user "%s:%s" %s/connections/%s/%s/token`,
		devfront.DefaultRegion, creds.AccessKeyID, creds.SecretAccessKey, base, prov, conn)
}

func printTryIt(base string, stack *devstack.Stack, logPath string, links map[string]string) {
	fmt.Printf(`
tokenbroker is running at %[1]s  (Ctrl-C stops everything)

Connect a user (open in a browser; the emulated provider consents at once;
each link works once, then use %[1]s/dev/):
  WeChat web   %[1]s%[2]s
  SinaCloud    %[1]s%[3]s
  OAuth2       %[1]s%[4]s

Then fetch the token (signed as local:local; unsigned gets 401, wrongly signed 403):
  %[5]s

The WeChat global token needs no user:
  %[6]s

Status, refresh, delete:  GET|POST …/refresh|DELETE %[1]s/connections/{provider}/{connection}
Function logs:            %[7]s
Emulators:                WeChat %[8]s  SinaCloud %[9]s  OAuth2 %[10]s
The refresher runs every minute and prints its summary here (with -fanout, "queued" counts the units it handed to the workers).
%[11]s`, base, links[devstack.WeChatWeb], links[devstack.SinaCloud], links[devstack.OAuth2],
		curlLine(base, devstack.WeChatWeb, "demo"), curlLine(base, devstack.WeChatMP, "app"), logPath,
		stack.EmulatorURLs["wechat"], stack.EmulatorURLs["sinacloud"], stack.EmulatorURLs["oauth2"], cliLines(base, stack))
}

// cliLines are the tokenbroker CLI commands that work against this stack.
func cliLines(base string, stack *devstack.Stack) string {
	lines := stack.CLILines(base)
	return "\nThe operator CLI against this stack (go install ./cmd/tokenbroker, or go run ./cmd/tokenbroker);\n" +
		"open the URL connect prints before asking for the token:\n  " + strings.Join(lines, "\n  ") + "\n"
}
