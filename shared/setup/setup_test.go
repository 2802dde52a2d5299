package setup_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/setup"
)

// Rounds of concurrent provider calls to one host reuse their
// connections: one per call in flight, not one per call.
func TestProviderHTTPKeepsAConnectionPerCallInFlight(t *testing.T) {
	var opened atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"access_token":"x"}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	const inFlight, rounds = 8, 5
	count := func(c *http.Client) int64 {
		before := opened.Load()
		for range rounds {
			var wg sync.WaitGroup
			for range inFlight {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := c.Get(srv.URL)
					if err != nil {
						t.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}()
			}
			wg.Wait()
		}
		return opened.Load() - before
	}
	if n := count(setup.ProviderHTTP()); n > inFlight {
		t.Fatalf("%d rounds of %d calls opened %d connections; want at most %d", rounds, inFlight, n, inFlight)
	}
	// The default transport, for contrast: it keeps two per host.
	t.Logf("net/http's default transport opened %d for the same calls", count(&http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}))
}
