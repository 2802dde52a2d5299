package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
)

// benchAlternatives: what a team would do without a broker — every
// instance keeps its own golang.org/x/oauth2 ReuseTokenSource over the same
// grant — against tokenbroker, on the same emulator and the same expiry.
func benchAlternatives(ctx context.Context, e *benchEnv, rep *report, quick bool) error {
	table, err := e.table(ctx, "bench-alt")
	if err != nil {
		return err
	}
	conf := &oauth2.Config{ClientID: devstack.SinaClientID, ClientSecret: devstack.SinaSecret,
		Endpoint: oauth2.Endpoint{TokenURL: e.stack.EmulatorURLs["sinacloud"] + "/oauth2/access_token", AuthStyle: oauth2.AuthStyleInParams}}
	var rows []string
	for _, n := range []int{10, 100} {
		access, refresh, _ := e.stack.Sina.IssueGrant()
		expired := &oauth2.Token{AccessToken: access, RefreshToken: refresh, TokenType: "Bearer", Expiry: time.Now().Add(-time.Second)}
		calls, reuses := e.stack.Sina.Calls("/oauth2/access_token"), e.stack.Sina.RefreshReuses()
		var wg sync.WaitGroup
		var mu sync.Mutex
		lost := 0
		start := make(chan struct{})
		for i := 0; i < n; i++ {
			src := conf.TokenSource(ctx, expired) // one per simulated instance
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if _, err := src.Token(); err != nil {
					mu.Lock()
					lost++
					mu.Unlock()
				}
			}()
		}
		close(start)
		wg.Wait()
		xCalls, xReuses := e.stack.Sina.Calls("/oauth2/access_token")-calls, e.stack.Sina.RefreshReuses()-reuses
		r, err := stampedeInProcess(ctx, e, table, n, fmt.Sprintf("alt-%d", n))
		if err != nil {
			return err
		}
		rows = append(rows,
			fmt.Sprintf("| %d | x/oauth2 ReuseTokenSource per instance | %d | %d | %d of %d |", n, xCalls, xReuses, lost, n),
			fmt.Sprintf("| %d | tokenbroker (one lease per expiry) | %d | %d | %d of %d |", n, r.providerCalls, r.reuses, r.failures, n))
	}
	rep.add("5. Against what users would use instead", fmt.Sprintf(`
N simulated instances share one SinaCloud grant whose access token has just
expired, and all ask for a token at once. With golang.org/x/oauth2 each
instance refreshes on its own: SinaCloud refresh tokens are single-use, so
every refresh after the first presents a spent token and fails — and the
one that succeeded rotated the grant, so the others' copies are dead too.

| instances | approach | provider calls per expiry | refresh-token reuses | instances left without a token |
|---|---|---|---|---|
%s
`, strings.Join(rows, "\n")))
	return nil
}
