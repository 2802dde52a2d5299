// Package devstack brings up tokenbroker's whole local world: DynamoDB
// Local and moto (or the ones already named in the environment), the table
// created from template.yaml, the provider emulators on loopback ports, and
// SSM seeded with demo providers and a fresh token key ring. The end-to-end
// tests, make invoke-<fn> and make dev all stand on it.
//
// Every port it opens is on loopback and answers only requests whose Host
// names it; the AWS stand-ins sit behind localaws's guard proxies.
package devstack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/local/devfront"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/operator"
)

// Demo provider names seeded into SSM.
const (
	WeChatMP  = "wechat-mp"
	WeChatWeb = "wechat-web"
	SinaCloud = "sinacloud"
	OAuth2    = "oauth2"
)

// Demo credentials the emulators accept.
const (
	WeChatAppID     = "wxd0e1m2o3a4p5p6"
	WeChatSecret    = "demo-wechat-appsecret"
	SinaClientID    = "demo-sina-client"
	SinaSecret      = "demo-sina-secret"
	OAuth2ClientID  = "demo-oauth2-client"
	OAuth2Secret    = "demo-oauth2-secret"
	DefaultTemplate = "template.yaml"
)

// Options shape a stack.
type Options struct {
	// PublicBaseURL is the broker's public base (callback URLs derive from it).
	PublicBaseURL string
	// Root is the module root (template.yaml, DynamoDB Local); found from
	// the working directory when empty.
	Root string
	// Table and Prefix default to unique names.
	Table, Prefix string
	// EmulatorAddrs pins the emulators' listen addresses (make dev);
	// free ports when empty.
	EmulatorAddrs map[string]string
	// ReturnToAllowlist for the functions' environment.
	ReturnToAllowlist string
	// LogLevel for the functions; "warn" when empty.
	LogLevel string
}

// Stack is a running local world.
type Stack struct {
	Endpoints localaws.Endpoints
	Table     string
	Prefix    string
	WeChat    *emulator.WeChat
	Sina      *emulator.SinaCloud
	OAuth2    *emulator.OAuth2
	// EmulatorURLs by provider kind: "wechat", "sinacloud", "oauth2".
	EmulatorURLs map[string]string
	// FunctionEnv is the environment every function gets.
	FunctionEnv map[string]string

	stopStandins func()
	servers      []*http.Server
}

// Start brings the stack up. Close stops everything it started.
func Start(ctx context.Context, opts Options) (st *Stack, err error) {
	if opts.Root == "" {
		if opts.Root, err = localaws.ModuleRoot(); err != nil {
			return nil, err
		}
	}
	if opts.PublicBaseURL == "" {
		opts.PublicBaseURL = "http://127.0.0.1:3000"
	}
	if opts.Table == "" {
		opts.Table = localaws.UniqueName("tokenbroker")
	}
	if opts.Prefix == "" {
		opts.Prefix = "/" + localaws.UniqueName("tokenbroker")
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "warn"
	}
	st = &Stack{Table: opts.Table, Prefix: opts.Prefix, EmulatorURLs: map[string]string{}}
	defer func() {
		if err != nil {
			st.Close()
			st = nil
		}
	}()
	ep, stop, err := localaws.Setup(ctx)
	st.stopStandins = stop
	if err != nil {
		return st, err
	}
	st.Endpoints = ep
	db := localaws.DynamoDBClient(ep.DynamoDB)
	if err := localaws.CreateTable(ctx, db, filepath.Join(opts.Root, DefaultTemplate), opts.Table); err != nil {
		return st, err
	}
	callback := func(p string) string { return strings.TrimRight(opts.PublicBaseURL, "/") + "/callback/" + p }
	st.WeChat = emulator.NewWeChat(WeChatAppID, WeChatSecret)
	st.Sina = emulator.NewSinaCloud(SinaClientID, SinaSecret, callback(SinaCloud))
	st.OAuth2 = emulator.NewOAuth2(OAuth2ClientID, OAuth2Secret, callback(OAuth2))
	for name, h := range map[string]http.Handler{"wechat": st.WeChat, "sinacloud": st.Sina, "oauth2": st.OAuth2} {
		addr := opts.EmulatorAddrs[name]
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		// The emulators hand out codes and tokens: loopback only, and only
		// to requests that name them (DNS rebinding), like every port here.
		if _, err := devfront.CheckListenAddr(addr, false); err != nil {
			return st, fmt.Errorf("devstack: %s emulator: %w", name, err)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return st, fmt.Errorf("devstack: %s emulator on %s: %w", name, addr, err)
		}
		bound := l.Addr().String()
		srv := &http.Server{Handler: devfront.HostGuard(devfront.AllowedHosts(bound, bound), h), ReadHeaderTimeout: 10 * time.Second}
		st.servers = append(st.servers, srv)
		go func() { _ = srv.Serve(l) }()
		st.EmulatorURLs[name] = "http://" + l.Addr().String()
	}
	if err := st.seed(ctx, localaws.SSMClient(ep.SSM)); err != nil {
		return st, err
	}
	st.FunctionEnv = map[string]string{
		"TABLE_NAME": opts.Table, "SSM_PREFIX": opts.Prefix, "PUBLIC_BASE_URL": opts.PublicBaseURL,
		"RETURN_TO_ALLOWLIST": opts.ReturnToAllowlist, "LOG_LEVEL": opts.LogLevel, "DUE_SHARDS": "8",
		localaws.EnvDynamoDB: ep.DynamoDB, localaws.EnvSSM: ep.SSM, localaws.EnvEventBridge: ep.SSM,
		"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": localaws.Region,
		"AWS_EC2_METADATA_DISABLED": "true",
	}
	return st, nil
}

// ProviderConfigs are the demo providers' SSM documents.
func (st *Stack) ProviderConfigs() map[string]map[string]any {
	wx, sina, o2 := st.EmulatorURLs["wechat"], st.EmulatorURLs["sinacloud"], st.EmulatorURLs["oauth2"]
	return map[string]map[string]any{
		WeChatMP:  {"kind": "wechat_mp", "client_id": WeChatAppID, "api_base": wx, "token_api": "stable_token"},
		WeChatWeb: {"kind": "wechat_oauth", "client_id": WeChatAppID, "api_base": wx, "authorize_url": wx + "/connect/oauth2/authorize", "scopes": []string{"snsapi_userinfo"}},
		SinaCloud: {"kind": "sinacloud", "client_id": SinaClientID, "api_base": sina},
		OAuth2: {"kind": "oauth2", "client_id": OAuth2ClientID, "authorize_url": o2 + "/authorize", "token_url": o2 + "/token",
			"revoke_url": o2 + "/revoke", "scopes": []string{"read"}, "auth_style": "basic"},
	}
}

var secrets = map[string]string{WeChatMP: WeChatSecret, WeChatWeb: WeChatSecret, SinaCloud: SinaSecret, OAuth2: OAuth2Secret}

// seed registers the demo providers and creates the key ring through
// shared/operator, the code path of `tokenbroker provider put` and
// `tokenbroker keys init`, so make dev proves those commands.
func (st *Stack) seed(ctx context.Context, client *ssm.Client) error {
	op := &operator.Operator{SSM: client, Prefix: st.Prefix}
	for name, cfg := range st.ProviderConfigs() {
		doc, _ := json.Marshal(cfg)
		if _, err := op.PutProvider(ctx, name, doc, secrets[name]); err != nil {
			return fmt.Errorf("devstack: provider %s: %w", name, err)
		}
	}
	if _, _, err := op.InitKeys(ctx); err != nil {
		return fmt.Errorf("devstack: key ring: %w", err)
	}
	return nil
}

// CLILines are tokenbroker CLI commands that work against this stack as
// they are, for an API at base: the environment to export (the stand-ins'
// endpoints, local credentials), then the README's deploy-to-first-token
// commands (keys init, provider put re-registering the demo OAuth2
// provider through the seeding's own code path, connect, token), then
// list and doctor. make dev prints them; a test of the CLI runs them.
func (st *Stack) CLILines(base string) []string {
	o2 := st.EmulatorURLs["oauth2"]
	global := "--api " + base
	if st.Prefix != config.DefaultPrefix {
		global += " --ssm-prefix " + st.Prefix
	}
	return []string{
		fmt.Sprintf("export AWS_ENDPOINT_URL_SSM=%s AWS_ENDPOINT_URL_DYNAMODB=%s AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_REGION=%s",
			st.Endpoints.SSM, st.Endpoints.DynamoDB, localaws.Region),
		"tokenbroker keys init " + global,
		fmt.Sprintf("printf %%s %s | tokenbroker provider put %s %s --kind oauth2 --client-id %s --scopes read --set authorize_url=%s/authorize --set token_url=%s/token --set revoke_url=%s/revoke --client-secret-stdin",
			OAuth2Secret, OAuth2, global, OAuth2ClientID, o2, o2, o2),
		"tokenbroker connect " + OAuth2 + " alice " + global,
		"tokenbroker token " + OAuth2 + " alice " + global,
		"tokenbroker list " + OAuth2 + " " + global,
		"tokenbroker doctor " + global + " --table " + st.Table,
	}
}

// Fork is this stack under another SSM prefix, seeded as Start seeds its
// own: the demo providers (on the same emulators) and a key ring of its
// own. Tests that register providers of their own each fork, so a
// refresher tick in one test reads the due index of its providers only,
// not of every provider every earlier test registered. Closing a fork
// stops nothing.
func (st *Stack) Fork(ctx context.Context, prefix string) (*Stack, error) {
	f := *st
	f.Prefix = config.Prefix(prefix)
	f.FunctionEnv = maps.Clone(st.FunctionEnv)
	f.FunctionEnv["SSM_PREFIX"] = f.Prefix
	f.stopStandins, f.servers = nil, nil
	if err := f.seed(ctx, localaws.SSMClient(st.Endpoints.SSM)); err != nil {
		return nil, err
	}
	return &f, nil
}

// PutProvider writes (or replaces) one provider's parameters.
func (st *Stack) PutProvider(ctx context.Context, name string, cfg map[string]any, secret string) error {
	client := localaws.SSMClient(st.Endpoints.SSM)
	doc, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	for _, p := range []struct {
		name, value string
		typ         ssmtypes.ParameterType
	}{{st.Prefix + "/providers/" + name + "/config", string(doc), ssmtypes.ParameterTypeString},
		{st.Prefix + "/providers/" + name + "/client_secret", secret, ssmtypes.ParameterTypeSecureString}} {
		if _, err := client.PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String(p.name), Value: aws.String(p.value), Type: p.typ, Overwrite: aws.Bool(true)}); err != nil {
			return err
		}
	}
	return nil
}

// Close stops the emulators and any stand-in this stack started.
func (st *Stack) Close() {
	if st == nil {
		return
	}
	var errs []error
	for _, s := range st.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		errs = append(errs, s.Shutdown(ctx))
		cancel()
	}
	_ = errors.Join(errs...)
	if st.stopStandins != nil {
		st.stopStandins()
	}
}

// AgeConnection rewrites a stored connection's clock fields (never its
// sealed tokens) so that its access token looks as if it expires in
// expiresIn (negative: expired that long ago), with its refresh due and no
// recent attempt: the next request that wants more than that must refresh.
// The tokens at the provider are untouched, so what the broker then does
// is real. table is the stack's own when empty.
func (st *Stack) AgeConnection(ctx context.Context, table, provider, connection string, expiresIn time.Duration) error {
	if table == "" {
		table = st.Table
	}
	now := time.Now()
	expires := now.Add(expiresIn)
	num := func(v int64) types.AttributeValue {
		return &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
	}
	_, err := localaws.DynamoDBClient(st.Endpoints.DynamoDB).UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:           aws.String(table),
		Key:                 map[string]types.AttributeValue{"pk": &types.AttributeValueMemberS{Value: "conn#" + provider + "#" + connection}},
		UpdateExpression:    aws.String("SET expires_at = :e, refreshed_at = :r, refresh_at = :d, last_error_at = :l REMOVE retry_at"),
		ConditionExpression: aws.String("attribute_exists(pk)"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":e": num(expires.Unix()), ":r": num(expires.Add(-7 * 24 * time.Hour).Unix()),
			":d": num(now.Add(-time.Second).Unix()), ":l": num(now.Add(-time.Hour).Unix())},
	})
	if err != nil {
		return fmt.Errorf("devstack: age %s/%s: %w", provider, connection, err)
	}
	return nil
}
