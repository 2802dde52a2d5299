package devstack_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

func portOf(t *testing.T, endpoint string) uint16 {
	t.Helper()
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.ParseUint(u.Port(), 10, 16)
	if err != nil {
		t.Fatalf("%s: %v", endpoint, err)
	}
	return uint16(p)
}

// TestEveryPortIsLoopbackHostCheckedWithoutCORS starts the stand-ins and
// emulators as make dev and the standins launcher do, finds every port
// they (and the processes they started) listen on in this network
// namespace, and probes each: bound to loopback, not reachable on any
// other address of this machine, a foreign Host refused with 421, no
// Access-Control-* header to a foreign origin's preflight or request.
// DynamoDB Local and moto themselves must hold no port here at all: they
// are reachable only through their guards. Exactly five ports: the two
// guards and the three emulators.
func TestEveryPortIsLoopbackHostCheckedWithoutCORS(t *testing.T) {
	// Fresh stand-ins, started by this test as make dev starts its own.
	t.Setenv(localaws.EnvDynamoDB, "")
	t.Setenv(localaws.EnvSSM, "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := devstack.Start(ctx, devstack.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	self := os.Getpid()
	children := devstack.Descendants(self)
	if len(children) < 2 {
		t.Fatalf("expected DynamoDB Local and moto below this process, found %v", children)
	}
	found, err := devstack.Listeners(append([]int{self}, children...))
	if err != nil {
		t.Fatal(err)
	}
	var ports []uint16
	var guarded []devstack.Listener
	for _, l := range found {
		if l.PID != self {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", l.PID))
			cmd := strings.ReplaceAll(string(cmdline), "\x00", " ")
			if os.Geteuid() != 0 && strings.Contains(cmd, "DynamoDBLocal.jar") {
				// Without root there is no network namespace to put it in:
				// the documented fallback, which this machine cannot close.
				t.Logf("not root: DynamoDB Local holds %s itself (the README's fallback)", l.Addr)
				continue
			}
			t.Errorf("a stand-in holds port %s of its own, outside its guard: %s", l.Addr, cmd)
			continue
		}
		ports = append(ports, l.Addr.Port())
		guarded = append(guarded, l)
	}
	want := []uint16{portOf(t, st.Endpoints.DynamoDB), portOf(t, st.Endpoints.SSM)}
	for _, u := range st.EmulatorURLs {
		want = append(want, portOf(t, u))
	}
	slices.Sort(ports)
	slices.Sort(want)
	if len(want) != 5 || !slices.Equal(ports, want) {
		t.Errorf("listening ports %v, want exactly the guards' and emulators' %v", ports, want)
	}
	outside, err := devstack.OutsideAddrs()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("this machine's other addresses: %v", outside)
	for _, l := range guarded {
		for _, p := range devstack.ProbeListener(l, outside) {
			t.Error(p)
		}
	}
}
