package main_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !strings.Contains(string(stat), ") Z ")
}

func TestDevStackEndToEnd(t *testing.T) {
	root, err := localaws.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "dev")
	build := exec.Command("go", "build", "-o", bin, "./shared/local/cmd/dev")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	port, _ := localaws.FreePort()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	base := "http://" + addr
	cmd := exec.Command(bin, "-addr", addr, "-refresh-every", "2s")
	cmd.Dir = root
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_ENDPOINT_URL") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var printed []string
	ready := time.After(3 * time.Minute)
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("make dev exited before it was ready: %v", printed)
			}
			printed = append(printed, l)
			if strings.Contains(l, "The refresher runs every minute") {
				break wait
			}
		case <-ready:
			t.Fatalf("make dev not ready in 3 minutes: %v", printed)
		}
	}
	all := strings.Join(printed, "\n")
	for _, want := range []string{base + "/dev/connect/wechat-web/demo", `curl --aws-sigv4 "aws:amz:us-east-1:execute-api"`, base + "/connections/wechat-web/demo/token"} {
		if !strings.Contains(all, want) {
			t.Fatalf("try-it block lacks %q:\n%s", want, all)
		}
	}

	// A second make dev on the same address says so and leaves.
	second := exec.Command(bin, "-addr", addr)
	second.Dir = root
	out, err := second.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "already in use") {
		t.Fatalf("second make dev: %v %s", err, out)
	}
	// Beyond loopback only when asked, never on every interface; both
	// refusals come before anything starts.
	for _, args := range [][]string{{"-addr", "192.0.2.1:" + strconv.Itoa(port)}, {"-addr", "0.0.0.0:" + strconv.Itoa(port), "-expose"}} {
		refused := exec.Command(bin, args...)
		refused.Dir = root
		out, err := refused.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "make dev: -addr") {
			t.Fatalf("make dev %v: %v %s", args, err, out)
		}
	}

	// The connect flow, as a browser follows it, from the one-time link
	// make dev printed.
	link := regexp.MustCompile(regexp.QuoteMeta(base+"/dev/connect/wechat-web/demo?once=") + `[0-9a-f]{32}`).FindString(all)
	if link == "" {
		t.Fatalf("no one-time link for wechat-web in:\n%s", all)
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 20 * time.Second}
	connect := func(req *http.Request) (int, string) {
		t.Helper()
		resp, err := browser.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(page)
	}
	get := func(url string) *http.Request { req, _ := http.NewRequest("GET", url, nil); return req }
	if code, page := connect(get(link)); code != 200 || !strings.Contains(page, "is connected") {
		t.Fatalf("connect flow ended with %d: %s", code, page)
	}
	// The link is spent; without a token there is no flow either.
	for _, url := range []string{link, base + "/dev/connect/wechat-web/demo"} {
		if code, _ := connect(get(url)); code != http.StatusForbidden {
			t.Fatalf("GET %s: %d, want 403", url, code)
		}
	}
	// The connect page's form: a same-origin POST works, any number of
	// times; one from another site does not.
	if code, page := connect(get(base + "/dev/")); code != 200 || !strings.Contains(page, `<form method="post" action="/dev/connect/wechat-web/demo">`) {
		t.Fatalf("connect page %d: %s", code, page)
	}
	post := func(site, origin string) *http.Request {
		req, _ := http.NewRequest("POST", base+"/dev/connect/wechat-web/demo", nil)
		req.Header.Set("Sec-Fetch-Site", site)
		req.Header.Set("Origin", origin)
		return req
	}
	for range 2 {
		if code, page := connect(post("same-origin", base)); code != 200 || !strings.Contains(page, "is connected") {
			t.Fatalf("same-origin form POST ended with %d: %s", code, page)
		}
	}
	if code, _ := connect(post("cross-site", "http://evil.example")); code != http.StatusForbidden {
		t.Fatalf("cross-site POST: %d, want 403", code)
	}
	// Any request naming another host (a DNS-rebound page) is refused.
	for _, path := range []string{"/connections/wechat-web/demo/token", "/dev/"} {
		req := get(base + path)
		req.Host = "rebound.example:" + strconv.Itoa(port)
		if code, _ := connect(req); code != http.StatusMisdirectedRequest {
			t.Fatalf("Host %s on %s: %d, want 421", req.Host, path, code)
		}
	}

	// Every port make dev opens, found from /proc rather than listed: the
	// front, the three emulators, the guards of DynamoDB Local and moto and
	// the Runtime API of each of the 7 sandboxes (4 token, 1 each for the
	// others) — 13, all held by make dev itself (DynamoDB Local and moto
	// hold none here), each loopback only, 421 to a foreign Host, no CORS.
	devPIDs := append([]int{cmd.Process.Pid}, devstack.Descendants(cmd.Process.Pid)...)
	found, err := devstack.Listeners(devPIDs)
	if err != nil {
		t.Fatal(err)
	}
	outside, err := devstack.OutsideAddrs()
	if err != nil {
		t.Fatal(err)
	}
	owned := 0
	for _, l := range found {
		if l.PID != cmd.Process.Pid {
			cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(l.PID) + "/cmdline")
			t.Errorf("port %s is held by a child, not behind a guard: %s", l.Addr, strings.ReplaceAll(string(cmdline), "\x00", " "))
			continue
		}
		owned++
		for _, problem := range devstack.ProbeListener(l, outside) {
			t.Error(problem)
		}
	}
	if owned != 13 {
		t.Errorf("make dev listens on %d ports, want 13: %v", owned, found)
	}

	// The token, with a request signed as local:local, the credentials make dev prints.
	req, _ := http.NewRequest("GET", base+"/connections/wechat-web/demo/token", nil)
	empty := sha256.Sum256(nil)
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "local", SecretAccessKey: "local"},
		req, hex.EncodeToString(empty[:]), "execute-api", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tok map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(tok["access_token"].(string), "WXU") || tok["connection"] != "demo" {
		t.Fatalf("signed token request: %d %v", resp.StatusCode, tok)
	}
	resp, err = http.Get(base + "/connections/wechat-web/demo/token")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("unsigned request: %d, want 401", resp.StatusCode)
	}
	req, _ = http.NewRequest("GET", base+"/connections/wechat-web/demo/token", nil)
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "local", SecretAccessKey: "not-local"},
		req, hex.EncodeToString(empty[:]), "execute-api", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("wrongly signed request: %d, want 403", resp.StatusCode)
	}

	// The refresher ticks (every 2 s here) and prints its summary.
	tickSeen := time.After(30 * time.Second)
tick:
	for {
		select {
		case l := <-lines:
			if strings.Contains(l, "refresher:") && strings.Contains(l, `"refreshed"`) {
				break tick
			}
		case <-tickSeen:
			t.Fatal("no refresher summary printed")
		}
	}

	// Ctrl-C stops every process it started.
	children := devstack.Descendants(cmd.Process.Pid)
	if len(children) < 6 { // java, moto, and the function sandboxes at least
		t.Fatalf("only %d child processes found: %v", len(children), children)
	}
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("make dev did not stop within 30 s of Ctrl-C")
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range children {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if alive(pid) {
			cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			t.Errorf("process %d left running: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	if c, err := (&http.Client{Timeout: time.Second}).Get(base + "/"); err == nil {
		c.Body.Close()
		t.Fatal("the local API still answers after Ctrl-C")
	}
}
