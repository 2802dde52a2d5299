package main

// Every command against make dev's stack: the real functions under the
// Runtime API runner behind the SigV4-verifying front, moto SSM and
// DynamoDB Local (shared/local/localapi).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/localapi"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/sealing"
)

var (
	api  *localapi.API
	logs = &syncBuffer{}
)

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func TestMain(m *testing.M) {
	ctx := context.Background()
	var err error
	api, err = localapi.Start(ctx, localapi.Options{Output: logs})
	if err != nil {
		fmt.Fprintln(os.Stderr, "tokenbroker CLI tests:", err)
		os.Exit(1)
	}
	// The CLI finds SSM and DynamoDB as any SDK program does, from the
	// environment; nothing of this machine's AWS files.
	for k, v := range map[string]string{
		localaws.EnvSSM: api.Stack.Endpoints.SSM, "AWS_ENDPOINT_URL_DYNAMODB": api.Stack.Endpoints.DynamoDB,
		"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_SESSION_TOKEN": "", "AWS_REGION": localaws.Region,
		"AWS_PROFILE": "", "AWS_CONFIG_FILE": os.DevNull, "AWS_SHARED_CREDENTIALS_FILE": os.DevNull, "AWS_EC2_METADATA_DISABLED": "true",
		"TOKENBROKER_API": "", "TOKENBROKER_SSM_PREFIX": "", "TOKENBROKER_TABLE": "",
	} {
		os.Setenv(k, v)
	}
	code := m.Run()
	if code != 0 {
		logs.mu.Lock()
		fmt.Fprintf(os.Stderr, "function logs:\n%s\n", logs.buf.String())
		logs.mu.Unlock()
	}
	api.Close()
	os.Exit(code)
}

// result is one run of the CLI.
type result struct {
	stdout, stderr string
	code           int
}

// raw runs the CLI with exactly args.
func raw(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return result{out.String(), errOut.String(), code}
}

// tb runs the CLI against the test stack: its API and SSM prefix first,
// so that a later flag can override them.
func tb(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	return raw(t, stdin, append([]string{"--api", api.URL, "--ssm-prefix", api.Stack.Prefix}, args...)...)
}

func (r result) want(t *testing.T, code int) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
	return r
}

// jsonOf decodes stdout and checks its top-level keys are exactly keys.
func (r result) jsonOf(t *testing.T, keys ...string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, r.stdout)
	}
	checkKeys(t, m, keys...)
	return m
}

func checkKeys(t *testing.T, m map[string]any, keys ...string) {
	t.Helper()
	var got []string
	for k := range m {
		got = append(got, k)
	}
	sort.Strings(got)
	sort.Strings(keys)
	if !slices.Equal(got, keys) {
		t.Fatalf("JSON keys %v, want %v", got, keys)
	}
}

func ssmClient() *ssm.Client { return localaws.SSMClient(api.Stack.Endpoints.SSM) }

// parametersUnder lists the parameter names under path.
func parametersUnder(t *testing.T, path string) []string {
	t.Helper()
	out, err := ssmClient().DescribeParameters(context.Background(), &ssm.DescribeParametersInput{
		ParameterFilters: []types.ParameterStringFilter{{Key: aws.String("Path"), Option: aws.String("Recursive"), Values: []string{path}}}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range out.Parameters {
		names = append(names, aws.ToString(p.Name))
	}
	return names
}

func parameter(t *testing.T, name string) (string, types.ParameterType) {
	t.Helper()
	out, err := ssmClient().GetParameter(context.Background(), &ssm.GetParameterInput{Name: aws.String(name), WithDecryption: aws.Bool(true)})
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	return aws.ToString(out.Parameter.Value), out.Parameter.Type
}

func TestHelpListsEveryCommandAndFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"provider", "keys", "connect", "status", "list", "token", "refresh", "delete", "import", "doctor", "completion",
			"--api", "--region", "--profile", "--ssm-prefix", "--json", "TOKENBROKER_API", "TOKENBROKER_SSM_PREFIX"}},
		{[]string{"provider", "--help"}, []string{"put", "list", "show", "delete"}},
		{[]string{"provider", "put", "--help"}, []string{"--preset", "--kind", "--client-id", "--scopes", "--set", "--client-secret-stdin", "--kms-key",
			"github", "daily_quota_budget", "redirect_uri"}},
		{[]string{"keys", "--help"}, []string{"init", "rotate", "show"}},
		{[]string{"connect", "--help"}, []string{"--return-to", "--metadata", "--confirm", "--qr"}},
		{[]string{"list", "--help"}, []string{"--status"}},
		{[]string{"token", "--help"}, []string{"--min-ttl", "-q"}},
		{[]string{"refresh", "--help"}, []string{"--rejected-token-stdin"}},
		{[]string{"import", "--help"}, []string{"--refresh-token-stdin", "--expires-at", "--metadata", "--replace"}},
		{[]string{"doctor", "--help"}, []string{"--table"}},
	} {
		r := raw(t, "", tc.args...).want(t, 0)
		for _, w := range tc.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%v does not mention %s", tc.args, w)
			}
		}
	}
}

// TestNoSecretTakesAFlagValue: every flag that carries a secret is a
// switch to read it from stdin, so no secret ever reaches argv.
func TestNoSecretTakesAFlagValue(t *testing.T) {
	root := (&app{}).rootCommand()
	var walk func(c *cobra.Command)
	seen := 0
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			name := f.Name
			if name != "token-type" && (strings.Contains(name, "secret") || strings.Contains(name, "token") || strings.Contains(name, "password")) {
				seen++
				if f.Value.Type() != "bool" || !strings.HasSuffix(name, "-stdin") {
					t.Errorf("%s --%s takes a %s value", c.CommandPath(), name, f.Value.Type())
				}
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if seen != 4 { // client-secret, rejected-token, refresh-token, access-token
		t.Fatalf("%d secret flags seen, want 4", seen)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"nosuchcommand"},
		{"status", "--nosuchflag"},
		{"status", "oauth2"},
		{"token", "oauth2", "a", "b"},
		{"list", "oauth2", "--status", "pending"},
		{"list", "oauth2", "--page-size", "101"},
		{"token", "oauth2", "a", "--min-ttl", "soon"},
		{"import", "oauth2", "a"},
		{"import", "oauth2", "a", "--refresh-token-stdin", "--expires-at", "tomorrow"},
		{"connect", "oauth2", "a", "--metadata", "novalue"},
		{"provider", "put", "bad/name", "--kind", "oauth2"},
		{"provider", "put", "p", "--set", "colour=blue"},
		{"provider", "put", "p", "--set", "pkce=maybe"},
		{"provider", "put", "p", "--set", "refresh_lead_seconds=soon"},
		{"refresh", "oauth2", "a", "--rejected-token-stdin"}, // stdin is empty
	} {
		r := tb(t, "", args...)
		if r.code != exitUsage || r.stdout != "" || !strings.Contains(r.stderr, "Run 'tokenbroker") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
	// Without an API to talk to.
	r := raw(t, "", "status", "oauth2", "a").want(t, exitUsage)
	if !strings.Contains(r.stderr, "TOKENBROKER_API") {
		t.Fatalf("stderr %q", r.stderr)
	}
	// TOKENBROKER_API is the default of --api.
	t.Setenv("TOKENBROKER_API", api.URL)
	raw(t, "", "list", devstack.OAuth2, "--ssm-prefix", api.Stack.Prefix).want(t, exitOK)
}

// TestProviderPutRefusesInvalidConfigs: each refusal carries the reason,
// and nothing at all is written.
func TestProviderPutRefusesInvalidConfigs(t *testing.T) {
	const secret = "s3cr3t-never-shown"
	for _, tc := range []struct {
		name  string
		args  []string
		code  int
		about string
	}{
		{"unknown preset", []string{"--preset", "nope", "--client-id", "x"}, 1, "unknown preset"},
		{"no kind", []string{"--client-id", "x"}, 1, "kind"},
		{"an unknown kind", []string{"--kind", "oauth3", "--client-id", "x"}, 1, "oauth3"},
		{"plain http to a remote host", []string{"--kind", "oauth2", "--client-id", "x", "--set", "authorize_url=http://idp.example.com/a",
			"--set", "token_url=https://idp.example.com/t"}, 1, "https"},
		{"oauth2 without a token URL", []string{"--kind", "oauth2", "--client-id", "x", "--set", "authorize_url=https://idp.example.com/a"}, 1, "token_url"},
		{"an unknown field", []string{"--preset", "github", "--client-id", "x", "--set", "colour=blue"}, 2, "unknown field"},
		{"a new provider without its secret", []string{"--preset", "github", "--client-id", "x"}, 1, "client secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "refused-" + strings.ReplaceAll(tc.name, " ", "-")
			stdin := ""
			args := append([]string{"provider", "put", name}, tc.args...)
			if tc.name != "a new provider without its secret" {
				stdin, args = secret+"\n", append(args, "--client-secret-stdin")
			}
			r := tb(t, stdin, args...).want(t, tc.code)
			if !strings.Contains(r.stderr, tc.about) || r.stdout != "" {
				t.Fatalf("stderr %q, want the reason (%s)", r.stderr, tc.about)
			}
			if strings.Contains(r.stderr, secret) {
				t.Fatal("the secret is in the error")
			}
			if names := parametersUnder(t, config.Prefix(api.Stack.Prefix)+"/providers/"+name); len(names) != 0 {
				t.Fatalf("written although refused: %v", names)
			}
		})
	}
}

func TestProviderPutListShowDelete(t *testing.T) {
	const secret = "gh-secret-never-shown"
	prefix := api.Stack.Prefix
	r := tb(t, secret+"\n", "provider", "put", "cli-gh", "--preset", "github", "--client-id", "Iv1.abc", "--scopes", "repo,user",
		"--set", "authorize_params.allow_signup=false", "--set", "refresh_lead_seconds=600", "--client-secret-stdin").want(t, 0)
	if !strings.Contains(r.stdout, "Register this redirect URI at the provider: "+api.URL+"/callback/cli-gh\n") {
		t.Fatalf("no redirect URI to register:\n%s", r.stdout)
	}
	doc, typ := parameter(t, config.ProviderConfigName(prefix, "cli-gh"))
	want := `{"authorize_params":{"allow_signup":"false"},"client_id":"Iv1.abc","preset":"github","refresh_lead_seconds":600,"scopes":["repo","user"]}`
	if doc != want || typ != types.ParameterTypeString {
		t.Fatalf("stored %s %s, want %s String", doc, typ, want)
	}
	if v, typ := parameter(t, config.ClientSecretName(prefix, "cli-gh")); v != secret || typ != types.ParameterTypeSecureString {
		t.Fatalf("the secret is stored as a %s", typ)
	}
	// The functions' own loader accepts what was written.
	snap, err := (&config.Loader{SSM: ssmClient(), Prefix: prefix}).Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p, err := snap.Provider("cli-gh")
	if err != nil || p.Secret != secret || p.Config.TokenURL != "https://github.com/login/oauth/access_token" || p.Config.RefreshLeadSeconds != 600 {
		t.Fatalf("the functions' loader: %v", err)
	}

	// Changing the config keeps the stored secret.
	r = tb(t, "", "provider", "put", "cli-gh", "--preset", "github", "--client-id", "Iv1.abc", "--scopes", "repo", "--json").want(t, 0)
	put := r.jsonOf(t, "name", "kind", "config_parameter", "secret_parameter", "secret_written", "redirect_uri")
	if put["secret_written"] != false || put["redirect_uri"] != api.URL+"/callback/cli-gh" || put["kind"] != "oauth2" {
		t.Fatalf("put --json %v", put)
	}
	if v, _ := parameter(t, config.ClientSecretName(prefix, "cli-gh")); v != secret {
		t.Fatal("the secret changed")
	}

	list := tb(t, "", "provider", "list", "--json").want(t, 0).jsonOf(t, "providers")
	var names []string
	for _, p := range list["providers"].([]any) {
		p := p.(map[string]any)
		checkKeys(t, p, "name", "client_secret", "problem", "config")
		names = append(names, p["name"].(string))
		if p["client_secret"] != "set" || p["problem"] != nil {
			t.Fatalf("provider %v", p)
		}
	}
	if !slices.Equal(names, []string{"cli-gh", devstack.OAuth2, devstack.SinaCloud, devstack.WeChatMP, devstack.WeChatWeb}) {
		t.Fatalf("listed %v", names)
	}
	human := tb(t, "", "provider", "list").want(t, 0)
	if !strings.HasPrefix(human.stdout, "NAME") || !strings.Contains(human.stdout, "cli-gh") {
		t.Fatalf("table:\n%s", human.stdout)
	}

	show := tb(t, "", "provider", "show", "cli-gh", "--json").want(t, 0)
	m := show.jsonOf(t, "name", "client_secret", "problem", "config", "redirect_uri")
	if cfg := m["config"].(map[string]any); cfg["token_url"] != "https://github.com/login/oauth/access_token" || cfg["client_id"] != "Iv1.abc" {
		t.Fatalf("show: %v", cfg)
	}
	for _, r := range []result{show, tb(t, "", "provider", "show", "cli-gh").want(t, 0), human} {
		if strings.Contains(r.stdout+r.stderr, secret) {
			t.Fatal("the secret is in the output")
		}
	}

	// What the operator must register for each kind.
	r = tb(t, "wx-secret", "provider", "put", "cli-wx", "--kind", "wechat_oauth", "--client-id", "wx0123456789abcdef", "--client-secret-stdin").want(t, 0)
	if u, _ := url.Parse(api.URL); !strings.Contains(r.stdout, "domain") || !strings.Contains(r.stdout, u.Host) {
		t.Fatalf("WeChat web: %s", r.stdout)
	}
	r = tb(t, "wx-secret", "provider", "put", "cli-wxmp", "--kind", "wechat_mp", "--client-id", "wx0123456789abcdef", "--client-secret-stdin").want(t, 0)
	if strings.Contains(r.stdout, "/callback/") || !strings.Contains(r.stdout, "no redirect URI") {
		t.Fatalf("WeChat machine token: %s", r.stdout)
	}

	for _, name := range []string{"cli-gh", "cli-wx", "cli-wxmp"} {
		tb(t, "", "provider", "delete", name).want(t, 0)
		if names := parametersUnder(t, config.Prefix(prefix)+"/providers/"+name); len(names) != 0 {
			t.Fatalf("left after delete: %v", names)
		}
	}
	r = tb(t, "", "provider", "show", "cli-gh").want(t, 1)
	if !strings.Contains(r.stderr, "not found") {
		t.Fatalf("show after delete: %s", r.stderr)
	}
	tb(t, "", "provider", "delete", "cli-gh").want(t, 1)
}

func TestKeys(t *testing.T) {
	prefix := "/" + localaws.UniqueName("clikeys")
	keys := func(args ...string) result {
		return tb(t, "", append([]string{"--ssm-prefix", prefix, "keys"}, args...)...)
	}
	r := keys("show").want(t, 1)
	if !strings.Contains(r.stderr, "keys init") {
		t.Fatalf("show without a ring: %s", r.stderr)
	}
	r = keys("init").want(t, 0)
	if !strings.Contains(r.stdout, "created "+prefix+"/token-keys") {
		t.Fatalf("init: %s", r.stdout)
	}
	ringOf := func() map[string]string {
		raw, typ := parameter(t, config.KeyRingName(prefix))
		if typ != types.ParameterTypeSecureString {
			t.Fatalf("the ring is a %s", typ)
		}
		if _, err := sealing.ParseRing([]byte(raw)); err != nil {
			t.Fatal(err)
		}
		var doc struct{ Keys map[string]string }
		_ = json.Unmarshal([]byte(raw), &doc)
		return doc.Keys
	}
	first := ringOf()
	show := keys("show", "--json").want(t, 0).jsonOf(t, "parameter", "active", "keys", "version")
	if show["active"] != "k1" || fmt.Sprint(show["keys"]) != "[k1]" || show["version"] != float64(1) {
		t.Fatalf("show %v", show)
	}
	// A value sealed now must still open after rotations.
	ring, _ := parameter(t, config.KeyRingName(prefix))
	r1, _ := sealing.ParseRing([]byte(ring))
	sealed, err := r1.Seal("a token", "conn#p#c/access")
	if err != nil {
		t.Fatal(err)
	}

	r = keys("init").want(t, 0)
	if !strings.Contains(r.stdout, "already exists; nothing changed") {
		t.Fatalf("second init: %s", r.stdout)
	}
	if again := keys("show", "--json").want(t, 0).jsonOf(t, "parameter", "active", "keys", "version"); again["version"] != float64(1) {
		t.Fatal("a second init wrote the ring")
	}
	rot := keys("rotate", "--json").want(t, 0).jsonOf(t, "parameter", "active", "keys", "version")
	if rot["active"] != "k2" || fmt.Sprint(rot["keys"]) != "[k1 k2]" {
		t.Fatalf("rotate %v", rot)
	}
	keys("rotate").want(t, 0)
	after := ringOf()
	if after["k1"] != first["k1"] || len(after) != 3 || after["k3"] == "" || after["k2"] == after["k3"] {
		t.Fatal("rotation did not keep k1 and add two fresh keys")
	}
	ring, _ = parameter(t, config.KeyRingName(prefix))
	r3, _ := sealing.ParseRing([]byte(ring))
	if r3.Active() != "k3" {
		t.Fatalf("active %s", r3.Active())
	}
	if plain, err := r3.Open(sealed, "conn#p#c/access"); err != nil || plain != "a token" {
		t.Fatalf("a value sealed under k1 does not open after rotation: %v", err)
	}
	human := keys("show").want(t, 0)
	for _, k := range after {
		if strings.Contains(human.stdout+rot["parameter"].(string), k) {
			t.Fatal("key material in the output")
		}
	}

	// A ring that does not parse is reported, and never overwritten.
	if _, err := ssmClient().PutParameter(context.Background(), &ssm.PutParameterInput{Name: aws.String(config.KeyRingName(prefix)),
		Value: aws.String(`{"active":"k9","keys":{}}`), Type: types.ParameterTypeSecureString, Overwrite: aws.Bool(true)}); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"show", "init", "rotate"} {
		if r := keys(cmd).want(t, 1); !strings.Contains(r.stderr, "token-keys") {
			t.Fatalf("%s on a broken ring: %s", cmd, r.stderr)
		}
	}
	if v, _ := parameter(t, config.KeyRingName(prefix)); v != `{"active":"k9","keys":{}}` {
		t.Fatal("the broken ring was overwritten")
	}
}

// consent plays the user's browser through the emulated provider's
// consent and the callback.
func consent(t *testing.T, authorizeURL string) url.Values {
	t.Helper()
	noRedirect := &http.Client{Timeout: time.Minute, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	next := strings.TrimSuffix(authorizeURL, "#wechat_redirect")
	for range 2 {
		resp, err := noRedirect.Get(next)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, err := resp.Location()
		if err != nil {
			t.Fatalf("%d: %v", resp.StatusCode, err)
		}
		next = loc.String()
	}
	u, _ := url.Parse(next)
	return u.Query()
}

var (
	connectionKeys = []string{"provider", "connection", "status", "expires_at", "refreshed_at", "last_error", "metadata"}
	tokenKeys      = []string{"provider", "connection", "access_token", "token_type", "expires_at", "scope", "extra"}
)

func TestConnectionCommands(t *testing.T) {
	o2 := devstack.OAuth2
	// connect → the user consents → status.
	c := tb(t, "", "connect", o2, "cli-alice", "--metadata", "tenant=acme", "--return-to", api.URL+"/done", "--json").want(t, 0).
		jsonOf(t, "provider", "connection", "authorize_url", "state_expires_at")
	if q := consent(t, c["authorize_url"].(string)); q.Get("status") != "connected" {
		t.Fatalf("the flow ended with %v", q)
	}
	st := tb(t, "", "status", o2, "cli-alice", "--json").want(t, 0).jsonOf(t, connectionKeys...)
	if st["status"] != "active" || st["metadata"].(map[string]any)["tenant"] != "acme" || st["expires_at"] == nil {
		t.Fatalf("status %v", st)
	}
	if r := tb(t, "", "status", o2, "cli-alice").want(t, 0); !strings.Contains(r.stdout, "status        active") || !strings.Contains(r.stdout, "tenant=acme") {
		t.Fatalf("status table:\n%s", r.stdout)
	}
	human := tb(t, "", "connect", o2, "cli-carol").want(t, 0)
	if !strings.Contains(human.stdout, api.Stack.EmulatorURLs["oauth2"]+"/authorize?") || strings.Contains(human.stdout, "▀") {
		t.Fatalf("connect:\n%s", human.stdout)
	}
	// WeChat's URL is for a phone: --qr prints the QR code.
	qr := tb(t, "", "connect", devstack.WeChatWeb, "cli-wx", "--qr").want(t, 0)
	if !strings.Contains(qr.stdout, "#wechat_redirect") || !strings.ContainsAny(qr.stdout, "▀▄█") {
		t.Fatalf("no QR code:\n%s", qr.stdout)
	}

	// token: the table, -q, --json.
	tokQ := tb(t, "", "token", o2, "cli-alice", "-q").want(t, 0)
	access := strings.TrimSuffix(tokQ.stdout, "\n")
	if strings.Contains(access, "\n") || !api.Stack.OAuth2.ValidAccess(access) {
		t.Fatalf("token -q printed %q", tokQ.stdout)
	}
	tj := tb(t, "", "token", o2, "cli-alice", "--min-ttl", "5m", "--json").want(t, 0).jsonOf(t, tokenKeys...)
	if tj["access_token"] != access || tj["token_type"] != "Bearer" {
		t.Fatalf("token --json %v", tj)
	}
	if r := tb(t, "", "token", o2, "cli-alice").want(t, 0); !strings.Contains(r.stdout, access) {
		t.Fatalf("token table:\n%s", r.stdout)
	}

	// refresh: a new token, shown by fingerprint only.
	if err := api.Stack.AgeConnection(context.Background(), "", o2, "cli-alice", time.Hour); err != nil {
		t.Fatal(err)
	}
	rf := tb(t, access+"\n", "refresh", o2, "cli-alice", "--rejected-token-stdin", "--json").want(t, 0)
	m := rf.jsonOf(t, "provider", "connection", "access_token_sha256_prefix", "token_type", "expires_at", "scope", "extra")
	fresh := strings.TrimSpace(tb(t, "", "token", o2, "cli-alice", "-q").want(t, 0).stdout)
	if fresh == access || m["access_token_sha256_prefix"] != fingerprint(fresh) || strings.Contains(rf.stdout+rf.stderr, fresh) {
		t.Fatalf("refresh: %v", m)
	}
	if err := api.Stack.AgeConnection(context.Background(), "", o2, "cli-alice", time.Hour); err != nil {
		t.Fatal(err)
	}
	if r := tb(t, "", "refresh", o2, "cli-alice").want(t, 0); !strings.Contains(r.stdout, "sha256:") || strings.Contains(r.stdout, fresh) {
		t.Fatalf("refresh table:\n%s", r.stdout)
	}

	// import: tokens from stdin only, never echoed.
	const importedAccess, importedRefresh = "imported-access-never-shown", "imported-refresh-never-shown"
	expires := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	im := tb(t, importedAccess+"\n"+importedRefresh+"\n", "import", o2, "cli-bob", "--access-token-stdin", "--refresh-token-stdin",
		"--expires-at", expires, "--metadata", "src=cli", "--json").want(t, 0)
	imj := im.jsonOf(t, append(slices.Clone(connectionKeys), "created")...)
	if imj["created"] != true || imj["expires_at"] != expires || imj["metadata"].(map[string]any)["src"] != "cli" {
		t.Fatalf("import %v", imj)
	}
	if strings.Contains(im.stdout+im.stderr, "never-shown") {
		t.Fatal("an imported token is in the output")
	}
	if got := strings.TrimSpace(tb(t, "", "token", o2, "cli-bob", "-q").want(t, 0).stdout); got != importedAccess {
		t.Fatal("the imported access token is not served")
	}
	tb(t, "only-refresh-never-shown\n", "import", o2, "cli-dave", "--refresh-token-stdin").want(t, 0)

	// list, with and without a filter.
	all := tb(t, "", "list", o2, "--json").want(t, 0).jsonOf(t, "provider", "connections")
	var names []string
	for _, item := range all["connections"].([]any) {
		item := item.(map[string]any)
		checkKeys(t, item, "connection", "status", "expires_at", "refreshed_at", "last_error", "metadata")
		names = append(names, item["connection"].(string))
	}
	for _, want := range []string{"cli-alice", "cli-bob"} {
		if !slices.Contains(names, want) {
			t.Fatalf("list has no %s: %v", want, names)
		}
	}
	if !slices.IsSorted(names) {
		t.Fatalf("list is not in name order: %v", names)
	}
	reauth := tb(t, "", "list", o2, "--status", "needs_reauth", "--json").want(t, 0).jsonOf(t, "provider", "connections")
	for _, item := range reauth["connections"].([]any) {
		if item.(map[string]any)["status"] != "needs_reauth" {
			t.Fatalf("the filter let %v through", item)
		}
	}
	if r := tb(t, "", "list", o2, "--page-size", "2").want(t, 0); !strings.HasPrefix(r.stdout, "CONNECTION") ||
		!strings.Contains(r.stdout, fmt.Sprintf("%d connection(s)", len(names))) {
		t.Fatalf("list table:\n%s", r.stdout)
	}

	// delete, and the errors of a connection that is gone.
	tb(t, "", "delete", o2, "cli-alice", "--json").want(t, 0).jsonOf(t, "provider", "connection", "deleted")
	for _, args := range [][]string{{"status", o2, "cli-alice"}, {"token", o2, "cli-alice"}, {"refresh", o2, "cli-alice"}, {"list", "nosuch"}} {
		r := tb(t, "", args...).want(t, 1)
		if !strings.HasPrefix(r.stderr, "tokenbroker: not_found: ") || r.stdout != "" {
			t.Fatalf("%v: stderr %q", args, r.stderr)
		}
	}
	if r := tb(t, "", "connect", devstack.WeChatMP, "app").want(t, 1); !strings.HasPrefix(r.stderr, "tokenbroker: bad_request: ") {
		t.Fatalf("connect on a machine-token provider: %s", r.stderr)
	}
	if r := tb(t, "", "token", devstack.SinaCloud, "cli-none").want(t, 1); !strings.Contains(r.stderr, "not_found") {
		t.Fatalf("%s", r.stderr)
	}
}

func TestDoctor(t *testing.T) {
	r := tb(t, "", "doctor", "--table", api.Stack.Table, "--json").want(t, 0)
	m := r.jsonOf(t, "ok", "checks")
	var lines []string
	for _, c := range m["checks"].([]any) {
		c := c.(map[string]any)
		if c["ok"] != true {
			t.Fatalf("check %v", c)
		}
		lines = append(lines, c["check"].(string))
	}
	want := []string{"api", "key ring", "provider " + devstack.OAuth2, "provider " + devstack.SinaCloud, "provider " + devstack.WeChatMP,
		"provider " + devstack.WeChatWeb, "table"}
	if !slices.Equal(lines, want) {
		t.Fatalf("checks %v, want %v", lines, want)
	}
	if h := tb(t, "", "doctor", "--table", api.Stack.Table).want(t, 0); strings.Count(h.stdout, "\nok  ") != len(want)-1 {
		t.Fatalf("doctor:\n%s", h.stdout)
	}

	// A broken deployment: no key ring, a provider whose config does not
	// parse, one without its secret, an API that is not there, no table.
	prefix := "/" + localaws.UniqueName("clidoctor")
	put := func(name, value string) {
		if _, err := ssmClient().PutParameter(context.Background(), &ssm.PutParameterInput{Name: aws.String(name), Value: aws.String(value),
			Type: types.ParameterTypeString}); err != nil {
			t.Fatal(err)
		}
	}
	put(config.ProviderConfigName(prefix, "typo"), `{"kind":"oauth2","client_id":"x","tokn_url":"https://idp.example.com/t"}`)
	put(config.ClientSecretName(prefix, "typo"), "x")
	put(config.ProviderConfigName(prefix, "nosecret"), `{"preset":"github","client_id":"x"}`)
	r = raw(t, "", "doctor", "--api", "http://127.0.0.1:1", "--ssm-prefix", prefix, "--table", "no-such-table").want(t, 1)
	for _, want := range []string{
		"FAIL  api", "fix: check --api",
		"FAIL  key ring", prefix + "/token-keys does not exist", "fix: tokenbroker keys init",
		"FAIL  provider nosecret", "client_secret is missing", "fix: tokenbroker provider put nosecret",
		"FAIL  provider typo", "tokn_url",
		"FAIL  table", "no-such-table does not exist",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("doctor does not say %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "5 check(s) failed") {
		t.Fatalf("stderr %q", r.stderr)
	}
	// Without --table the table check is skipped, not failed.
	if r := tb(t, "", "doctor").want(t, 0); !strings.Contains(r.stdout, "skip  table") {
		t.Fatalf("doctor without --table:\n%s", r.stdout)
	}
}

// TestMakeDevCLILines runs the CLI lines make dev prints (the README's
// five commands with the stand-ins' environment, then list and doctor),
// exactly as printed, against the same functions and front: each exits
// 0, and the token at the end works at the provider.
func TestMakeDevCLILines(t *testing.T) {
	lines := api.Stack.CLILines(api.URL)
	if len(lines) != 7 || !strings.HasPrefix(lines[0], "export ") {
		t.Fatalf("lines %q", lines)
	}
	for _, kv := range strings.Fields(strings.TrimPrefix(lines[0], "export ")) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	var token string
	for _, line := range lines[1:] {
		stdin := ""
		if pipe, rest, ok := strings.Cut(line, " | "); ok {
			f := strings.Fields(pipe)
			if len(f) != 3 || f[0] != "printf" || f[1] != "%s" {
				t.Fatalf("cannot run %q", line)
			}
			stdin, line = f[2], rest
		}
		argv := strings.Fields(line)
		if argv[0] != "tokenbroker" {
			t.Fatalf("not a tokenbroker line: %q", line)
		}
		r := raw(t, stdin, argv[1:]...).want(t, 0)
		switch argv[1] {
		case "connect":
			// The user's browser: consent, then the callback's own page
			// (no return_to).
			resp, err := http.Get(regexp.MustCompile(`https?://\S+/authorize\?\S+`).FindString(r.stdout))
			if err != nil {
				t.Fatal(err)
			}
			page, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(page), "is connected") {
				t.Fatalf("the flow ended with %d %s", resp.StatusCode, page)
			}
		case "token":
			token = regexp.MustCompile(`access token\s+(\S+)`).FindStringSubmatch(r.stdout)[1]
		case "doctor":
			if strings.Contains(r.stdout, "FAIL") || strings.Contains(r.stdout, "skip") {
				t.Fatalf("doctor:\n%s", r.stdout)
			}
		}
	}
	if !api.Stack.OAuth2.ValidAccess(token) {
		t.Fatal("the token does not work at the provider")
	}
}
