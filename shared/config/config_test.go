package config_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"tokenbroker/shared/config"
	"tokenbroker/shared/local/localaws"
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
