package devstack_test

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
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

// listener is one listening TCP socket of this network namespace.
type listener struct {
	pid  int
	addr netip.AddrPort
}

// descendants lists every process below pid, from /proc.
func descendants(pid int) []int {
	parent := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces, so cut after ')'.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 {
			parent[p], _ = strconv.Atoi(fields[1])
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for child, pp := range parent {
			if pp == p {
				out = append(out, child)
				walk(child)
			}
		}
	}
	walk(pid)
	return out
}

// parseProcAddr reads /proc/net/tcp{,6}'s local_address: the address as
// 32-bit words in host order, then the port in hex.
func parseProcAddr(s string) (netip.AddrPort, error) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	raw, err := hex.DecodeString(hexIP)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q", s)
	}
	ip, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
}

// listeners returns the listening TCP sockets of this network namespace
// that the processes pids hold.
func listeners(t *testing.T, pids []int) []listener {
	t.Helper()
	owner := map[string]int{} // socket inode → pid
	for _, pid := range pids {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if err == nil && strings.HasPrefix(link, "socket:[") {
				owner[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = pid
			}
		}
	}
	var out []listener
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		raw, err := os.ReadFile(table)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(raw), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" { // 0A: LISTEN
				continue
			}
			pid, ok := owner[f[9]]
			if !ok {
				continue
			}
			addr, err := parseProcAddr(f[1])
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, listener{pid: pid, addr: addr})
		}
	}
	return out
}

// outsideAddrs are this machine's addresses other than loopback (and
// link-local ones, which need a zone to dial).
func outsideAddrs(t *testing.T) []netip.Addr {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		if ip := p.Addr(); !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
			out = append(out, ip)
		}
	}
	return out
}

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
// Access-Control-Allow-Origin to a foreign origin's preflight or request.
// DynamoDB Local and moto themselves must hold no port here at all: they
// are reachable only through their guards.
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
	children := descendants(self)
	if len(children) < 2 {
		t.Fatalf("expected DynamoDB Local and moto below this process, found %v", children)
	}
	found := listeners(t, append([]int{self}, children...))
	var ports []uint16
	var guarded []listener
	for _, l := range found {
		if l.pid != self {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", l.pid))
			cmd := strings.ReplaceAll(string(cmdline), "\x00", " ")
			if os.Geteuid() != 0 && strings.Contains(cmd, "DynamoDBLocal.jar") {
				// Without root there is no network namespace to put it in:
				// the documented fallback, which this machine cannot close.
				t.Logf("not root: DynamoDB Local holds %s itself (the README's fallback)", l.addr)
				continue
			}
			t.Errorf("a stand-in holds port %s of its own, outside its guard: %s", l.addr, cmd)
			continue
		}
		ports = append(ports, l.addr.Port())
		guarded = append(guarded, l)
	}
	// The guards (DynamoDB, moto) and the three emulators; nothing else.
	want := []uint16{portOf(t, st.Endpoints.DynamoDB), portOf(t, st.Endpoints.SSM)}
	for _, u := range st.EmulatorURLs {
		want = append(want, portOf(t, u))
	}
	slices.Sort(ports)
	slices.Sort(want)
	if !slices.Equal(ports, want) {
		t.Errorf("listening ports %v, want exactly the guards' and emulators' %v", ports, want)
	}

	client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	outside := outsideAddrs(t)
	t.Logf("this machine's other addresses: %v", outside)
	for _, l := range guarded {
		port := strconv.Itoa(int(l.addr.Port()))
		if !l.addr.Addr().IsLoopback() {
			t.Errorf("port %s listens on %s, not on loopback", port, l.addr.Addr())
		}
		for _, ip := range outside {
			if c, err := net.DialTimeout("tcp", netip.AddrPortFrom(ip, l.addr.Port()).String(), time.Second); err == nil {
				c.Close()
				t.Errorf("port %s answers on %s", port, ip)
			}
		}
		base := "http://127.0.0.1:" + port + "/"
		do := func(method, host string, hdr map[string]string) *http.Response {
			t.Helper()
			req, _ := http.NewRequest(method, base, nil)
			if host != "" {
				req.Host = host
			}
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", method, base, err)
			}
			resp.Body.Close()
			return resp
		}
		evil := map[string]string{"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
			"Access-Control-Request-Headers": "authorization,x-amz-target,content-type"}
		for _, method := range []string{http.MethodOptions, http.MethodGet, http.MethodPost} {
			resp := do(method, "", evil)
			for k, v := range resp.Header {
				if strings.HasPrefix(k, "Access-Control-") {
					t.Errorf("%s %s from a foreign origin: %s %q", method, base, k, v)
				}
			}
		}
		for _, host := range []string{"evil.example:" + port, "evil.example", "127.0.0.1.evil.example:" + port} {
			if resp := do(http.MethodGet, host, nil); resp.StatusCode != http.StatusMisdirectedRequest {
				t.Errorf("Host %s on port %s: %d, want 421", host, port, resp.StatusCode)
			}
		}
		for _, host := range []string{"127.0.0.1:" + port, "localhost:" + port} {
			if resp := do(http.MethodGet, host, nil); resp.StatusCode == http.StatusMisdirectedRequest {
				t.Errorf("Host %s on port %s: refused, want served", host, port)
			}
		}
	}
}
