package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

func apiEvent(method, path string, params map[string]string, query string, iam bool) []byte {
	ev := events.APIGatewayV2HTTPRequest{Version: "2.0", RawPath: path, RawQueryString: query, PathParameters: params,
		RequestContext: events.APIGatewayV2HTTPRequestContext{DomainName: "bench.example", HTTP: events.APIGatewayV2HTTPRequestContextHTTPDescription{Method: method, Path: path}}}
	if iam {
		ev.RequestContext.Authorizer = &events.APIGatewayV2HTTPRequestContextAuthorizerDescription{IAM: &events.APIGatewayV2HTTPRequestContextAuthorizerIAMDescription{UserARN: "arn:aws:iam::1:user/bench"}}
	}
	b, _ := json.Marshal(ev)
	return b
}

// peakRSS reads VmHWM (the peak resident set) of a process, in KiB.
func peakRSS(pid int) int {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

func benchColdStart(ctx context.Context, e *benchEnv, rep *report, quick bool) error {
	table, err := e.table(ctx, "bench-cold")
	if err != nil {
		return err
	}
	st := e.store(e.db, table)
	if err := st.Create(ctx, &store.Connection{Key: store.Key{Provider: devstack.OAuth2, Connection: "cold"}, AccessToken: "a", RefreshToken: "r",
		TokenType: "Bearer", ExpiresAt: time.Now().Add(24 * time.Hour), Status: store.StatusActive}); err != nil {
		return err
	}
	env := map[string]string{}
	for k, v := range e.stack.FunctionEnv {
		env[k] = v
	}
	env["TABLE_NAME"] = table
	p := map[string]string{"provider": devstack.OAuth2, "connection": "cold"}
	eventsByFn := map[string][]byte{
		"authorize": apiEvent("POST", "/connections/oauth2/cold/authorize", p, "", true),
		"callback":  apiEvent("GET", "/callback/oauth2", map[string]string{"provider": devstack.OAuth2}, "code=c&state=not-a-state-of-ours-0123456789", false),
		"token":     apiEvent("GET", "/connections/oauth2/cold/token", p, "", true),
		"refresher": []byte(`{"source":"aws.events","detail-type":"Scheduled Event","detail":{}}`),
	}
	runs := 20
	if quick {
		runs = 5
	}
	var rows []string
	for _, fn := range []string{"authorize", "callback", "token", "refresher"} {
		var starts []float64
		rss := 0
		for i := 0; i < runs; i++ {
			t0 := time.Now()
			r, err := lambdarun.Start(lambdarun.Config{Bootstrap: e.bootstraps[fn], FunctionName: fn, Env: env, Timeout: 30 * time.Second})
			if err != nil {
				return err
			}
			out, err := r.Invoke(ctx, eventsByFn[fn])
			elapsed := time.Since(t0)
			if err == nil && fn != "refresher" && !strings.Contains(string(out), `"statusCode"`) {
				err = fmt.Errorf("unexpected answer %s", out)
			}
			if pid := r.PID(); pid != 0 {
				rss = max(rss, peakRSS(pid))
			}
			r.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", fn, err)
			}
			starts = append(starts, float64(elapsed))
		}
		size, err := armSize(e, fn)
		if err != nil {
			return err
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %.2f MiB | %.1f MiB |", fn, ms(time.Duration(median(starts))), float64(size)/(1<<20), float64(rss)/1024))
	}
	rep.add("4. Cold start and footprint", fmt.Sprintf(`
Process start to first answered invoke of each bootstrap under the Runtime
API runner (median of %d; includes loading SSM configuration from moto and
the first DynamoDB call). Binary size is the deployable linux/arm64 build
(`+"`-tags lambda.norpc -trimpath -ldflags=\"-s -w\"`"+`, as `+"`make build`"+`); peak RSS
(VmHWM) is of the local build after its first invoke.

| function | cold start to first answer | binary (linux/arm64) | peak RSS |
|---|---|---|---|
%s

Targets: binary ≤ 10 MiB, peak RSS ≤ 40 MiB.
`, runs, strings.Join(rows, "\n")))
	return nil
}

func armSize(e *benchEnv, fn string) (int64, error) {
	out := filepath.Join(e.tmp, "arm64", fn, "bootstrap")
	cmd := exec.Command("go", "build", "-tags", "lambda.norpc", "-trimpath", "-ldflags=-s -w", "-o", out, "./functions/"+fn)
	cmd.Dir = e.root
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("build arm64 %s: %v\n%s", fn, err, b)
	}
	fi, err := os.Stat(out)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
