package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

type stampedeResult struct {
	providerCalls, reuses, failures int
	writes                          int64
	p50, p99                        time.Duration
	distinctTokens                  int
}

// stampedeInProcess: n separate broker instances ask at once for one
// expired SinaCloud token.
func stampedeInProcess(ctx context.Context, e *benchEnv, table string, n int, name string) (stampedeResult, error) {
	db := &countingDB{DynamoDB: e.db}
	st := e.store(db, table)
	if err := e.expiredSina(ctx, st, name); err != nil {
		return stampedeResult{}, err
	}
	brokers := make([]*broker.Broker, n)
	for i := range brokers {
		brokers[i] = e.broker(db, table)
	}
	calls, reuses := e.stack.Sina.Calls("/oauth2/access_token"), e.stack.Sina.RefreshReuses()
	before := db.snapshot()
	lat := make([]time.Duration, n)
	toks := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			tok, err := brokers[i].Token(ctx, broker.TokenRequest{Key: store.Key{Provider: devstack.SinaCloud, Connection: name}, MinTTL: time.Minute})
			lat[i] = time.Since(t0)
			errs[i] = err
			if err == nil {
				toks[i] = tok.AccessToken
			}
		}()
	}
	close(start)
	wg.Wait()
	r := stampedeResult{providerCalls: e.stack.Sina.Calls("/oauth2/access_token") - calls, reuses: e.stack.Sina.RefreshReuses() - reuses,
		writes: db.snapshot().minus(before).writes(), p50: percentile(lat, 0.5), p99: percentile(lat, 0.99)}
	distinct := map[string]bool{}
	for i, err := range errs {
		if err != nil {
			r.failures++
		} else {
			distinct[toks[i]] = true
		}
	}
	r.distinctTokens = len(distinct)
	return r, nil
}

// stampedeProcesses: callers spread over sandboxes (real bootstraps under
// the runner), each invoke going through the token function.
func stampedeProcesses(ctx context.Context, e *benchEnv, table string, sandboxes, callers int, name string) (stampedeResult, error) {
	st := e.store(e.db, table)
	if err := e.expiredSina(ctx, st, name); err != nil {
		return stampedeResult{}, err
	}
	env := map[string]string{}
	for k, v := range e.stack.FunctionEnv {
		env[k] = v
	}
	env["TABLE_NAME"] = table
	runners := make([]*lambdarun.Runner, sandboxes)
	for i := range runners {
		r, err := lambdarun.Start(lambdarun.Config{Bootstrap: e.bootstraps["token"], FunctionName: "token", Env: env, Timeout: 30 * time.Second})
		if err != nil {
			return stampedeResult{}, err
		}
		defer r.Close()
		runners[i] = r
	}
	ev := func(path string) []byte {
		b, _ := json.Marshal(events.APIGatewayV2HTTPRequest{Version: "2.0", RawPath: path,
			PathParameters: map[string]string{"provider": devstack.SinaCloud, "connection": name},
			RequestContext: events.APIGatewayV2HTTPRequestContext{DomainName: "bench", HTTP: events.APIGatewayV2HTTPRequestContextHTTPDescription{Method: "GET", Path: path},
				Authorizer: &events.APIGatewayV2HTTPRequestContextAuthorizerDescription{IAM: &events.APIGatewayV2HTTPRequestContextAuthorizerIAMDescription{UserARN: "arn:aws:iam::1:user/bench"}}}})
		return b
	}
	// Warm each sandbox (status route: no refresh) so cold starts are not measured.
	for _, r := range runners {
		if _, err := r.Invoke(ctx, ev("/connections/sinacloud/"+name)); err != nil {
			return stampedeResult{}, err
		}
	}
	calls, reuses := e.stack.Sina.Calls("/oauth2/access_token"), e.stack.Sina.RefreshReuses()
	lat := make([]time.Duration, callers)
	bodies := make([]string, callers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			out, err := runners[i%sandboxes].Invoke(ctx, ev("/connections/sinacloud/"+name+"/token"))
			lat[i] = time.Since(t0)
			if err == nil {
				bodies[i] = string(out)
			}
		}()
	}
	close(start)
	wg.Wait()
	r := stampedeResult{providerCalls: e.stack.Sina.Calls("/oauth2/access_token") - calls, reuses: e.stack.Sina.RefreshReuses() - reuses,
		writes: -1, p50: percentile(lat, 0.5), p99: percentile(lat, 0.99)}
	distinct := map[string]bool{}
	for _, b := range bodies {
		if !strings.Contains(b, `"statusCode":200`) {
			r.failures++
			continue
		}
		var resp events.APIGatewayV2HTTPResponse
		_ = json.Unmarshal([]byte(b), &resp)
		var tok map[string]any
		_ = json.Unmarshal([]byte(resp.Body), &tok)
		distinct[fmt.Sprint(tok["access_token"])] = true
	}
	r.distinctTokens = len(distinct)
	return r, nil
}

func benchStampede(ctx context.Context, e *benchEnv, rep *report, quick bool) error {
	table, err := e.table(ctx, "bench-stampede")
	if err != nil {
		return err
	}
	sizes := []int{10, 100, 1000}
	reps := 3
	if quick {
		sizes, reps = []int{10, 100}, 1
	}
	var rows []string
	for _, n := range sizes {
		var p50s, p99s []float64
		var last stampedeResult
		worst := stampedeResult{}
		for rep := 0; rep < reps; rep++ {
			r, err := stampedeInProcess(ctx, e, table, n, fmt.Sprintf("inproc-%d-%d", n, rep))
			if err != nil {
				return err
			}
			p50s, p99s = append(p50s, float64(r.p50)), append(p99s, float64(r.p99))
			worst.providerCalls = max(worst.providerCalls, r.providerCalls)
			worst.reuses = max(worst.reuses, r.reuses)
			worst.failures = max(worst.failures, r.failures)
			worst.distinctTokens = max(worst.distinctTokens, r.distinctTokens)
			last = r
		}
		rows = append(rows, fmt.Sprintf("| %d in process (separate broker instances) | %d | %d | %d | %d | %s | %s | %d |", n,
			worst.providerCalls, worst.reuses, worst.failures, worst.distinctTokens, ms(time.Duration(median(p50s))), ms(time.Duration(median(p99s))), last.writes))
	}
	sandboxes, callers := 10, 100
	r, err := stampedeProcesses(ctx, e, table, sandboxes, callers, "processes")
	if err != nil {
		return err
	}
	rows = append(rows, fmt.Sprintf("| %d callers over %d token-function processes (runner) | %d | %d | %d | %d | %s | %s | n/a |",
		callers, sandboxes, r.providerCalls, r.reuses, r.failures, r.distinctTokens, ms(r.p50), ms(r.p99)))
	rep.add("2. Stampede on an expired token", fmt.Sprintf(`
N callers ask at once for one expired SinaCloud token (single-use refresh
tokens). In-process rows: %d repetitions each, worst count and median
latency; DynamoDB writes are counted by a wrapper around the SDK client
(the lease and the commit, plus one refused conditional write for each
caller that tried to take the lease in the moment another took it; the
others see it taken and only read).

| callers | provider calls | refresh-token reuses | failed callers | distinct tokens handed out | p50 | p99 | DynamoDB writes |
|---|---|---|---|---|---|---|---|
%s
`, reps, strings.Join(rows, "\n")))
	return nil
}
