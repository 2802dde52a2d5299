package config_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

var endpoints localaws.Endpoints

func TestMain(m *testing.M) { os.Exit(localaws.RunTests(m.Run, &endpoints)) }

func put(t *testing.T, c *ssm.Client, name, value string, secure bool) {
	t.Helper()
	typ := ssmtypes.ParameterTypeString
	if secure {
		typ = ssmtypes.ParameterTypeSecureString
	}
	if _, err := c.PutParameter(context.Background(), &ssm.PutParameterInput{Name: aws.String(name), Value: aws.String(value), Type: typ, Overwrite: aws.Bool(true)}); err != nil {
		t.Fatal(err)
	}
}

const ring = `{"active":"k1","keys":{"k1":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}`

func TestLoadsEveryPageAndNamesBadParameters(t *testing.T) {
	client := localaws.SSMClient(endpoints.SSM)
	prefix := "/" + localaws.UniqueName("cfg")
	for i := 0; i < 14; i++ {
		name := fmt.Sprintf("gh%02d", i)
		put(t, client, prefix+"/providers/"+name+"/config", `{"preset":"github","client_id":"id-`+name+`"}`, false)
		put(t, client, prefix+"/providers/"+name+"/client_secret", "secret-"+name, true)
	}
	put(t, client, prefix+"/providers/nosecret/config", `{"preset":"github","client_id":"x"}`, false)
	put(t, client, prefix+"/providers/noconfig/client_secret", "s", true)
	put(t, client, prefix+"/providers/broken/config", `{"preset":"github","client_id":`, false)
	put(t, client, prefix+"/providers/broken/client_secret", "s", true)
	put(t, client, prefix+"/token-keys", ring, true)

	calls := 0
	counting := ssmFunc(func(ctx context.Context, in *ssm.GetParametersByPathInput, opts ...func(*ssm.Options)) (*ssm.GetParametersByPathOutput, error) {
		calls++
		return client.GetParametersByPath(ctx, in, opts...)
	})
	now := time.Now()
	l := &config.Loader{SSM: counting, Prefix: prefix, TTL: time.Minute, Now: func() time.Time { return now }}
	snap, err := l.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := len(snap.Names()); got != 14 {
		t.Fatalf("loaded %d providers, want 14: %v", got, snap.Names())
	}
	if calls < 2 {
		t.Fatalf("%d SSM pages for 33 parameters: pagination not exercised", calls)
	}
	p, err := snap.Provider("gh13")
	if err != nil || p.Secret != "secret-gh13" || p.Config.ClientID != "id-gh13" || p.Config.TokenURL == "" {
		t.Fatalf("gh13 = %+v, %v", p, err)
	}
	for name, wantParam := range map[string]string{
		"nosecret": prefix + "/providers/nosecret/client_secret",
		"noconfig": prefix + "/providers/noconfig/config",
		"broken":   prefix + "/providers/broken/config",
	} {
		_, err := snap.Provider(name)
		if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), wantParam) {
			t.Errorf("%s: %v, want ErrInvalid naming %s", name, err, wantParam)
		}
	}
	if _, err := snap.Provider("nobody"); !errors.Is(err, config.ErrUnknownProvider) {
		t.Errorf("unknown provider: %v", err)
	}
	if r, err := snap.Ring(); err != nil || r.Active() != "k1" {
		t.Fatalf("ring: %v", err)
	}

	// Cached within the TTL: no further SSM call.
	before := calls
	if _, err := l.Provider(context.Background(), "gh01"); err != nil {
		t.Fatal(err)
	}
	if calls != before {
		t.Fatalf("cached snapshot re-read SSM (%d -> %d calls)", before, calls)
	}
	now = now.Add(2 * time.Minute)
	if _, err := l.Snapshot(context.Background()); err != nil {
		t.Fatal(err)
	}
	if calls == before {
		t.Fatal("snapshot past its TTL was not reloaded")
	}
}

type ssmFunc func(context.Context, *ssm.GetParametersByPathInput, ...func(*ssm.Options)) (*ssm.GetParametersByPathOutput, error)

func (f ssmFunc) GetParametersByPath(ctx context.Context, in *ssm.GetParametersByPathInput, o ...func(*ssm.Options)) (*ssm.GetParametersByPathOutput, error) {
	return f(ctx, in, o...)
}

func TestMissingKeyRingAndSSMFailure(t *testing.T) {
	client := localaws.SSMClient(endpoints.SSM)
	prefix := "/" + localaws.UniqueName("cfg")
	put(t, client, prefix+"/providers/a/config", `{"kind":"wechat_mp","client_id":"x"}`, false)
	put(t, client, prefix+"/providers/a/client_secret", "s", true)
	l := &config.Loader{SSM: client, Prefix: prefix}
	snap, err := l.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Ring(); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), prefix+"/token-keys") {
		t.Fatalf("missing ring: %v", err)
	}
	put(t, client, prefix+"/token-keys", `{"active":"k1","keys":{"k1":"`+base64.StdEncoding.EncodeToString([]byte("short"))+`"}}`, true)
	snap, _ = (&config.Loader{SSM: client, Prefix: prefix}).Snapshot(context.Background())
	if _, err := snap.Ring(); !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("short key: %v", err)
	}

	failing := ssmFunc(func(context.Context, *ssm.GetParametersByPathInput, ...func(*ssm.Options)) (*ssm.GetParametersByPathOutput, error) {
		return nil, errors.New("throttled")
	})
	if _, err := (&config.Loader{SSM: failing, Prefix: prefix}).Snapshot(context.Background()); err == nil {
		t.Fatal("first load with SSM failing returned no error")
	}
	// A reload failure keeps serving the previous snapshot.
	now := time.Now()
	l2 := &config.Loader{SSM: client, Prefix: prefix, TTL: time.Second, Now: func() time.Time { return now }}
	if _, err := l2.Snapshot(context.Background()); err != nil {
		t.Fatal(err)
	}
	l2.SSM = failing
	now = now.Add(time.Minute)
	if p, err := l2.Provider(context.Background(), "a"); err != nil || p.Config.Kind != "wechat_mp" {
		t.Fatalf("stale snapshot not served during SSM failure: %v", err)
	}
}

// recorder is an http.RoundTripper that keeps every request's operation
// (X-Amz-Target) and body, so a test sees exactly what was asked of SSM.
type recorder struct {
	mu       sync.Mutex
	requests []recorded
}

type recorded struct{ target, body string }

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	r.mu.Lock()
	r.requests = append(r.requests, recorded{target: req.Header.Get("X-Amz-Target"), body: string(body)})
	r.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

// namedFunc is a NamedSSM made of functions.
type namedFunc struct {
	describe func(context.Context, *ssm.DescribeParametersInput, ...func(*ssm.Options)) (*ssm.DescribeParametersOutput, error)
	get      func(context.Context, *ssm.GetParametersInput, ...func(*ssm.Options)) (*ssm.GetParametersOutput, error)
}

func (f namedFunc) DescribeParameters(ctx context.Context, in *ssm.DescribeParametersInput, o ...func(*ssm.Options)) (*ssm.DescribeParametersOutput, error) {
	return f.describe(ctx, in, o...)
}

func (f namedFunc) GetParameters(ctx context.Context, in *ssm.GetParametersInput, o ...func(*ssm.Options)) (*ssm.GetParametersOutput, error) {
	return f.get(ctx, in, o...)
}

func TestLoadsWithoutEverAskingForASecret(t *testing.T) {
	seed := localaws.SSMClient(endpoints.SSM)
	prefix := "/" + localaws.UniqueName("cfg")
	var configs []string
	for i := 0; i < 14; i++ {
		name := fmt.Sprintf("gh%02d", i)
		put(t, seed, prefix+"/providers/"+name+"/config", `{"preset":"github","client_id":"id-`+name+`"}`, false)
		put(t, seed, prefix+"/providers/"+name+"/client_secret", "secret-"+name, true)
		configs = append(configs, prefix+"/providers/"+name+"/config")
	}
	// Without secrets, a provider with no secret is usable (authorize
	// needs none); one with no config or a broken one is still reported.
	put(t, seed, prefix+"/providers/nosecret/config", `{"kind":"wechat_oauth","client_id":"wx-nosecret"}`, false)
	put(t, seed, prefix+"/providers/noconfig/client_secret", "s", true)
	put(t, seed, prefix+"/providers/broken/config", `{"preset":"github","client_id":`, false)
	put(t, seed, prefix+"/providers/broken/client_secret", "s", true)
	put(t, seed, prefix+"/token-keys", ring, true)
	// Neither of these is read: another leaf, and a parameter of a
	// sibling prefix that merely starts with the same characters.
	put(t, seed, prefix+"/providers/gh00/notes", "n", false)
	put(t, seed, prefix+"x/providers/other/config", `{"preset":"github","client_id":"other"}`, false)
	configs = append(configs, prefix+"/providers/nosecret/config", prefix+"/providers/broken/config", prefix+"/token-keys")

	rec := &recorder{}
	client := ssm.NewFromConfig(localaws.Config(), func(o *ssm.Options) {
		o.BaseEndpoint = aws.String(endpoints.SSM)
		o.HTTPClient = &http.Client{Transport: rec}
	})
	var batches [][]string
	named := namedFunc{describe: client.DescribeParameters, get: func(ctx context.Context, in *ssm.GetParametersInput, o ...func(*ssm.Options)) (*ssm.GetParametersOutput, error) {
		batches = append(batches, slices.Clone(in.Names))
		return client.GetParameters(ctx, in, o...)
	}}
	snap, err := (&config.Loader{NoSecrets: named, Prefix: prefix}).Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	if got := snap.Names(); len(got) != 15 || !slices.Contains(got, "nosecret") || slices.Contains(got, "other") {
		t.Fatalf("loaded %v, want gh00…gh13 and nosecret", got)
	}
	for _, name := range snap.Names() {
		p, _ := snap.Provider(name)
		if p.Secret != "" || p.Config.ClientID == "" {
			t.Errorf("%s: secret %q, client id %q; want no secret and its config", name, p.Secret, p.Config.ClientID)
		}
	}
	for name, wantParam := range map[string]string{
		"noconfig": prefix + "/providers/noconfig/config",
		"broken":   prefix + "/providers/broken/config",
	} {
		if _, err := snap.Provider(name); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), wantParam) {
			t.Errorf("%s: %v, want ErrInvalid naming %s", name, err, wantParam)
		}
	}
	if r, err := snap.Ring(); err != nil || r.Active() != "k1" {
		t.Fatalf("ring: %v", err)
	}

	// What was asked of SSM: names, then exactly the configs and the ring,
	// ten at a time; never a path walk, never a client secret.
	var asked []string
	for _, b := range batches {
		if len(b) > 10 {
			t.Errorf("GetParameters with %d names; the API takes at most 10", len(b))
		}
		asked = append(asked, b...)
	}
	slices.Sort(asked)
	slices.Sort(configs)
	if !slices.Equal(asked, configs) {
		t.Errorf("read %v\nwant %v", asked, configs)
	}
	if len(batches) != 2 {
		t.Errorf("%d GetParameters calls for %d names, want 2", len(batches), len(configs))
	}
	described, got := 0, 0
	for _, r := range rec.requests {
		switch r.target {
		case "AmazonSSM.DescribeParameters":
			described++
		case "AmazonSSM.GetParameters":
			got++
			// The recorder sees the names on the wire (so the check
			// below is not vacuous).
			if !strings.Contains(r.body, "/config") && !strings.Contains(r.body, "/token-keys") {
				t.Errorf("GetParameters body without the names it reads: %s", r.body)
			}
		default:
			t.Errorf("request %s: only DescribeParameters and GetParameters are allowed", r.target)
		}
		if strings.Contains(r.body, "client_secret") {
			t.Errorf("request %s names a client secret: %s", r.target, r.body)
		}
	}
	if described == 0 || got != len(batches) {
		t.Errorf("%d DescribeParameters and %d GetParameters requests on the wire", described, got)
	}
}

func TestLoadWithoutSecretsFailures(t *testing.T) {
	prefix := "/tb"
	list := func(names ...string) func(context.Context, *ssm.DescribeParametersInput, ...func(*ssm.Options)) (*ssm.DescribeParametersOutput, error) {
		return func(context.Context, *ssm.DescribeParametersInput, ...func(*ssm.Options)) (*ssm.DescribeParametersOutput, error) {
			out := &ssm.DescribeParametersOutput{}
			for _, n := range names {
				out.Parameters = append(out.Parameters, ssmtypes.ParameterMetadata{Name: aws.String(n)})
			}
			return out, nil
		}
	}
	// Parameters listed but deleted before they were read count as absent:
	// the ring is reported missing, the provider is unknown.
	vanished := namedFunc{describe: list(prefix+"/providers/a/config", prefix+"/token-keys"),
		get: func(_ context.Context, in *ssm.GetParametersInput, _ ...func(*ssm.Options)) (*ssm.GetParametersOutput, error) {
			return &ssm.GetParametersOutput{InvalidParameters: in.Names}, nil
		}}
	snap, err := (&config.Loader{NoSecrets: vanished, Prefix: prefix}).Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Ring(); !errors.Is(err, config.ErrInvalid) {
		t.Errorf("vanished ring: %v", err)
	}
	if len(snap.Names()) != 0 {
		t.Errorf("providers %v from parameters that were never read", snap.Names())
	}
	// A refused read fails the load, naming what it asked for.
	refused := namedFunc{describe: list(prefix + "/token-keys"),
		get: func(context.Context, *ssm.GetParametersInput, ...func(*ssm.Options)) (*ssm.GetParametersOutput, error) {
			return nil, errors.New("AccessDeniedException")
		}}
	if _, err := (&config.Loader{NoSecrets: refused, Prefix: prefix}).Snapshot(context.Background()); err == nil || !strings.Contains(err.Error(), prefix+"/token-keys") {
		t.Errorf("refused read: %v", err)
	}
	failing := namedFunc{describe: func(context.Context, *ssm.DescribeParametersInput, ...func(*ssm.Options)) (*ssm.DescribeParametersOutput, error) {
		return nil, errors.New("throttled")
	}}
	if _, err := (&config.Loader{NoSecrets: failing, Prefix: prefix}).Snapshot(context.Background()); err == nil {
		t.Error("a failed listing loaded a snapshot")
	}
}

// TestSharedWeChatAppIDWithTokenAPIRefused: issue 16 item 6. Two wechat_mp
// names on one AppID with token_api "token" would each kill the other's
// token; both are refused, each naming the parameter, the field and the
// other name. stable_token's tokens are apart from cgi-bin/token's at
// WeChat, so names on stable_token may share an AppID with anything, and
// every other provider loads.
func TestSharedWeChatAppIDWithTokenAPIRefused(t *testing.T) {
	client := localaws.SSMClient(endpoints.SSM)
	prefix := "/" + localaws.UniqueName("appid")
	docs := map[string]string{
		"wx-a":      `{"kind":"wechat_mp","client_id":"wxshared","token_api":"token"}`,
		"wx-b":      `{"kind":"wechat_mp","client_id":"wxshared","token_api":"token","daily_quota_budget":10}`,
		"wx-c":      `{"kind":"wechat_mp","client_id":"wxshared","token_api":"token"}`,
		"wx-stable": `{"kind":"wechat_mp","client_id":"wxshared"}`,
		"wx-solo":   `{"kind":"wechat_mp","client_id":"wxsolo","token_api":"token"}`,
		"wx-st1":    `{"kind":"wechat_mp","client_id":"wxstable"}`,
		"wx-st2":    `{"kind":"wechat_mp","client_id":"wxstable","token_api":"stable_token"}`,
		"wx-web":    `{"kind":"wechat_oauth","client_id":"wxsolo"}`,
		"gh":        `{"preset":"github","client_id":"wxshared"}`,
		"gl-expiry": `{"preset":"gitlab","client_id":"g","default_expires_in":7200,"revoke_per_token":false}`,
		"bad-exp":   `{"preset":"gitlab","client_id":"g","default_expires_in":30}`,
	}
	for name, doc := range docs {
		put(t, client, prefix+"/providers/"+name+"/config", doc, false)
		put(t, client, prefix+"/providers/"+name+"/client_secret", "s-"+name, true)
	}
	put(t, client, prefix+"/token-keys", ring, true)
	l := &config.Loader{SSM: client, Prefix: prefix}
	snap, err := l.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"gh", "gl-expiry", "wx-solo", "wx-st1", "wx-st2", "wx-stable", "wx-web"}
	if got := snap.Names(); !slices.Equal(got, want) {
		t.Fatalf("loaded %v, want %v", got, want)
	}
	for name, others := range map[string]string{"wx-a": "wx-b, wx-c", "wx-b": "wx-a, wx-c", "wx-c": "wx-a, wx-b"} {
		_, err := snap.Provider(name)
		if !errors.Is(err, config.ErrInvalid) {
			t.Fatalf("%s: %v, want ErrInvalid", name, err)
		}
		for _, part := range []string{prefix + "/providers/" + name + "/config", "client_id", `"wxshared"`, "provider(s) " + others + ` with token_api "token"`} {
			if !strings.Contains(err.Error(), part) {
				t.Fatalf("%s: %q does not say %q", name, err, part)
			}
		}
	}
	if len(snap.Problems()) != 4 {
		t.Fatalf("problems %v, want wx-a, wx-b, wx-c and bad-exp", snap.Problems())
	}
	if _, err := snap.Provider("bad-exp"); err == nil || !strings.Contains(err.Error(), "default_expires_in") || !strings.Contains(err.Error(), prefix+"/providers/bad-exp/config") {
		t.Fatalf("bad-exp: %v", err)
	}
	p, err := snap.Provider("gl-expiry")
	if err != nil || p.Config.DefaultExpiresIn != 7200 || p.Config.RevokesPerToken() {
		t.Fatalf("gl-expiry = %+v, %v", p, err)
	}
	if p, err := snap.Provider("gh"); err != nil || p.Config.ClientID != "wxshared" {
		t.Fatalf("an oauth2 provider with the same client_id: %+v, %v", p, err)
	}
}
