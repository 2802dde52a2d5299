package moduletest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

const module = "github.com/tokenbroker/tokenbroker"

// backend is a program another repository could hold: it uses every
// kind of thing the client offers.
const backend = `package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/client"
)

func main() {
	ctx := context.Background()
	broker, err := client.New(os.Getenv("TOKENBROKER_URL"), client.WithRegion("eu-west-1"))
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = broker.TokenSource(ctx, "github", "alice", 5*time.Minute)
	_ = broker.HTTPClient(ctx, "wechat-mp", "app", time.Minute, client.WithQueryToken("access_token"), client.WithRejection(client.WeChatRejected))
	if len(os.Args) < 2 { // building is the point; listing needs a broker
		fmt.Println("built")
		return
	}
	for conn, err := range broker.List(ctx, "github", client.ListOptions{Status: "needs_reauth"}) {
		if errors.Is(err, client.ErrNotFound) {
			break
		}
		fmt.Println(conn)
	}
}
`

// TestAnotherModuleBuildsAgainstTheClient builds backend in a module of
// its own that requires this one, replaced by the checkout: what `go get
// github.com/tokenbroker/tokenbroker` gives once the repository is
// published at that path. It runs offline: dependencies come from the
// module cache and their checksums from this module's go.sum.
func TestAnotherModuleBuildsAgainstTheClient(t *testing.T) {
	root, err := localaws.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gomod := "module example.com/backend\n\ngo 1.26.0\n\nrequire " + module + " v0.0.0\n\nreplace " + module + " => " + root + "\n"
	sums, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{"go.mod": []byte(gomod), "go.sum": sums, "main.go": []byte(backend)} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	for _, args := range [][]string{{"build", "-o", filepath.Join(dir, "backend"), "."}, {"list", "-m", module}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s in another module: %v\n%s", strings.Join(args, " "), err, out)
		}
		if args[0] == "list" && !strings.Contains(string(out), module+" v0.0.0 => "+root) {
			t.Fatalf("the module resolved as %s", out)
		}
	}
	run := exec.Command(filepath.Join(dir, "backend"))
	run.Env = append(os.Environ(), "TOKENBROKER_URL=https://abc123.execute-api.eu-west-1.amazonaws.com", "AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=y",
		"AWS_CONFIG_FILE="+os.DevNull, "AWS_SHARED_CREDENTIALS_FILE="+os.DevNull)
	out, err := run.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "built") {
		t.Fatalf("the backend ran with %v: %s", err, out)
	}
}

// TestClientImportGraphIsLean keeps what a backend pulls in by importing
// the client to the client's needs: no local tooling, no OpenAPI
// validator, no Lambda runtime, no CLI library.
func TestClientImportGraphIsLean(t *testing.T) {
	root, err := localaws.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-deps", "./shared/client")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if !containsDep(deps, "github.com/aws/aws-sdk-go-v2/aws/signer/v4") || !containsDep(deps, "golang.org/x/oauth2") {
		t.Fatalf("go list -deps listed %d packages, not the client's", len(deps))
	}
	banned := []string{
		"github.com/getkin/kin-openapi", "github.com/aws/aws-lambda-go", module + "/shared/local",
		"github.com/spf13/cobra", "github.com/spf13/pflag", "github.com/mdp/qrterminal", "rsc.io/qr",
		module + "/cmd", module + "/shared/broker", module + "/shared/store", module + "/shared/operator",
		"gopkg.in/yaml", "go.yaml.in/yaml",
	}
	for _, dep := range deps {
		for _, b := range banned {
			if dep == b || strings.HasPrefix(dep, b+"/") {
				t.Errorf("shared/client depends on %s", dep)
			}
		}
	}
}

func containsDep(deps []string, want string) bool {
	for _, d := range deps {
		if d == want {
			return true
		}
	}
	return false
}
