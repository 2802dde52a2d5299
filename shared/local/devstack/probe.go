package devstack

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// The probe below is what the tests use to hold every port make dev and
// the stand-ins open to the rule: loopback only, a foreign Host refused
// with 421, no CORS. It finds the ports from /proc instead of taking a
// list, so a port someone adds later is probed too.

// Listener is one listening TCP socket of this network namespace.
type Listener struct {
	PID  int
	Addr netip.AddrPort
}

// Descendants lists every process below pid, from /proc.
func Descendants(pid int) []int {
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
		binary.BigEndian.PutUint32(raw[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q", s)
	}
	ip, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
}

// Listeners returns the listening TCP sockets of this network namespace
// that the processes pids hold. A process in a namespace of its own holds
// none here, whatever it listens on there.
func Listeners(pids []int) ([]Listener, error) {
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
	var out []Listener
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		raw, err := os.ReadFile(table)
		if err != nil {
			return nil, err
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
				return nil, err
			}
			out = append(out, Listener{PID: pid, Addr: addr})
		}
	}
	return out, nil
}

// OutsideAddrs are this machine's addresses other than loopback (and
// link-local ones, which need a zone to dial).
func OutsideAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
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
	return out, nil
}

// ProbeListener says how l breaks the rule, if it does: it must listen on
// loopback, not answer on any of outside, send no Access-Control-* header
// to a foreign origin's preflight or request, refuse a foreign Host with
// 421 and serve its own names (127.0.0.1 and localhost with its port).
func ProbeListener(l Listener, outside []netip.Addr) []string {
	var problems []string
	port := strconv.Itoa(int(l.Addr.Port()))
	if !l.Addr.Addr().IsLoopback() {
		problems = append(problems, fmt.Sprintf("port %s listens on %s, not on loopback", port, l.Addr.Addr()))
	}
	for _, ip := range outside {
		if c, err := net.DialTimeout("tcp", netip.AddrPortFrom(ip, l.Addr.Port()).String(), time.Second); err == nil {
			c.Close()
			problems = append(problems, fmt.Sprintf("port %s answers on %s", port, ip))
		}
	}
	client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	base := "http://127.0.0.1:" + port + "/"
	do := func(method, host string, hdr map[string]string) (*http.Response, error) {
		req, _ := http.NewRequest(method, base, nil)
		if host != "" {
			req.Host = host
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		return resp, nil
	}
	evil := map[string]string{"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
		"Access-Control-Request-Headers": "authorization,x-amz-target,content-type"}
	for _, method := range []string{http.MethodOptions, http.MethodGet, http.MethodPost} {
		resp, err := do(method, "", evil)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s %s: %v", method, base, err))
			continue
		}
		for k, v := range resp.Header {
			if strings.HasPrefix(k, "Access-Control-") {
				problems = append(problems, fmt.Sprintf("%s %s from a foreign origin: %s %q", method, base, k, v))
			}
		}
	}
	for _, host := range []string{"evil.example:" + port, "evil.example", "127.0.0.1.evil.example:" + port} {
		if resp, err := do(http.MethodGet, host, nil); err != nil || resp.StatusCode != http.StatusMisdirectedRequest {
			problems = append(problems, fmt.Sprintf("Host %s on port %s: %v %v, want 421", host, port, statusOf(resp), err))
		}
	}
	for _, host := range []string{"127.0.0.1:" + port, "localhost:" + port} {
		if resp, err := do(http.MethodGet, host, nil); err != nil || resp.StatusCode == http.StatusMisdirectedRequest {
			problems = append(problems, fmt.Sprintf("Host %s on port %s: %v %v, want served", host, port, statusOf(resp), err))
		}
	}
	return problems
}

func statusOf(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}
