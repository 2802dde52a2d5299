// Package config reads provider settings, client secrets and the token key
// ring from SSM Parameter Store, once per cold start, and keeps them for a
// bounded time.
//
// Layout under the prefix (default /tokenbroker):
//
//	{prefix}/providers/{provider}/config         String: provider JSON
//	{prefix}/providers/{provider}/client_secret  SecureString
//	{prefix}/token-keys                          SecureString: the key ring
//
// One recursive, decrypted GetParametersByPath walk (every page) loads it
// all. A missing or malformed parameter is an error that names it; one bad
// provider does not hide the others.
//
// A loader with NoSecrets set never reads a client secret: it lists the
// names under the prefix with DescribeParameters and reads only the
// provider configs and the key ring, by name, with GetParameters. IAM
// authorizes GetParametersByPath on the path, not on what the walk
// returns, so a function that must not see client secrets (authorize,
// which only builds authorize URLs) is granted GetParameters on exactly
// those names and loads its configuration this way.
package config

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/sealing"
)

// DefaultPrefix is the SSM root when SSM_PREFIX is unset.
const DefaultPrefix = "/tokenbroker"

// DefaultTTL bounds how long a loaded snapshot is used before reloading.
const DefaultTTL = 5 * time.Minute

// retryAfterFailure is how soon a failed reload is tried again while the
// previous snapshot keeps serving.
const retryAfterFailure = 30 * time.Second

// maxStale bounds how long a snapshot may keep serving while reloads fail.
const maxStale = time.Hour

// Errors, wrapped with the parameter's name.
var (
	// ErrUnknownProvider: no parameters exist for the provider.
	ErrUnknownProvider = errors.New("config: unknown provider")
	// ErrInvalid: a parameter is missing or malformed.
	ErrInvalid = errors.New("config: invalid parameter")
)

// Prefix is prefix as the loader reads it: without a trailing slash, and
// DefaultPrefix when empty.
func Prefix(prefix string) string {
	p := strings.TrimRight(prefix, "/")
	if p == "" {
		return DefaultPrefix
	}
	return p
}

// ProviderConfigName is the SSM name of provider's config document.
func ProviderConfigName(prefix, provider string) string {
	return Prefix(prefix) + "/providers/" + provider + "/config"
}

// ClientSecretName is the SSM name of provider's client secret.
func ClientSecretName(prefix, provider string) string {
	return Prefix(prefix) + "/providers/" + provider + "/client_secret"
}

// KeyRingName is the SSM name of the token key ring.
func KeyRingName(prefix string) string { return Prefix(prefix) + "/token-keys" }

// ProviderParameter splits a name under prefix of the form
// {prefix}/providers/{provider}/{leaf}; ok is false for any other name.
func ProviderParameter(prefix, name string) (provider, leaf string, ok bool) {
	return providerParameter(Prefix(prefix), name)
}

// SSM is the part of the SDK client the loader uses; *ssm.Client satisfies it.
type SSM interface {
	GetParametersByPath(ctx context.Context, in *ssm.GetParametersByPathInput, optFns ...func(*ssm.Options)) (*ssm.GetParametersByPathOutput, error)
}

// NamedSSM is the part of the SDK client a loader without secrets uses:
// it lists names and reads parameters by name. *ssm.Client satisfies it.
type NamedSSM interface {
	DescribeParameters(ctx context.Context, in *ssm.DescribeParametersInput, optFns ...func(*ssm.Options)) (*ssm.DescribeParametersOutput, error)
	GetParameters(ctx context.Context, in *ssm.GetParametersInput, optFns ...func(*ssm.Options)) (*ssm.GetParametersOutput, error)
}

// getParametersBatch is the most names one GetParameters call accepts.
const getParametersBatch = 10

// Provider is one provider's settings and secret. Secret is empty when the
// snapshot was loaded without secrets.
type Provider struct {
	Config provider.Config
	Secret string
}

// Snapshot is everything loaded in one walk.
type Snapshot struct {
	providers map[string]*Provider
	problems  map[string]error
	ring      *sealing.Ring
	ringErr   error
	LoadedAt  time.Time
}

// Provider returns the named provider, ErrUnknownProvider, or the error
// that names its missing or malformed parameter.
func (s *Snapshot) Provider(name string) (*Provider, error) {
	if err, ok := s.problems[name]; ok {
		return nil, err
	}
	p, ok := s.providers[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownProvider, name)
	}
	return p, nil
}

// Names lists the usable providers, sorted.
func (s *Snapshot) Names() []string {
	names := make([]string, 0, len(s.providers))
	for n := range s.providers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Problems returns the providers that could not be loaded, with why.
func (s *Snapshot) Problems() map[string]error { return s.problems }

// Ring returns the token key ring or the error naming its parameter.
func (s *Snapshot) Ring() (*sealing.Ring, error) { return s.ring, s.ringErr }

// Loader loads and caches snapshots. It is safe for concurrent use.
type Loader struct {
	// SSM reads everything under the prefix, client secrets included.
	SSM SSM
	// NoSecrets, when set, is used instead of SSM: the loader lists the
	// names under the prefix and reads only {prefix}/providers/*/config and
	// {prefix}/token-keys, never a client_secret. Every Provider then has
	// an empty Secret, and a missing secret is not a problem.
	NoSecrets NamedSSM
	Prefix    string
	// TTL is how long a snapshot serves; DefaultTTL when zero.
	TTL time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time

	mu         sync.Mutex
	snap       *Snapshot
	nextLoad   time.Time
	lastForced time.Time
}

// minForcedGap spaces forced reloads, so a run of values that no key opens
// cannot turn into a stream of SSM calls.
const minForcedGap = time.Second

func (l *Loader) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

func (l *Loader) prefix() string { return Prefix(l.Prefix) }

// Snapshot returns the cached snapshot, loading it when none is cached or
// it is older than the TTL. When a reload fails, the previous snapshot keeps
// serving (for at most an hour) so an SSM hiccup does not stop token
// delivery; the first load has no such fallback.
func (l *Loader) Snapshot(ctx context.Context) (*Snapshot, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if l.snap != nil && now.Before(l.nextLoad) {
		return l.snap, nil
	}
	return l.refresh(ctx, now, l.snap != nil && now.Sub(l.snap.LoadedAt) < maxStale)
}

// Reload loads a fresh snapshot now, whatever the cached one's age: the
// broker calls it when a stored value was sealed under a key id the cached
// ring does not know (another instance has a newer ring). Forced reloads
// are at least a second apart; within that, the cached snapshot is
// returned. A failed reload keeps the cached snapshot.
func (l *Loader) Reload(ctx context.Context) (*Snapshot, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if l.snap != nil && !l.lastForced.IsZero() && now.Sub(l.lastForced) < minForcedGap {
		return l.snap, nil
	}
	l.lastForced = now
	return l.refresh(ctx, now, l.snap != nil)
}

// refresh loads a snapshot and caches it for the TTL. When the load fails
// and keepOld, the cached snapshot keeps serving and the load is tried
// again soon. l.mu is held.
func (l *Loader) refresh(ctx context.Context, now time.Time, keepOld bool) (*Snapshot, error) {
	snap, err := l.load(ctx)
	if err != nil {
		if keepOld {
			l.nextLoad = now.Add(retryAfterFailure)
			return l.snap, nil
		}
		return nil, err
	}
	ttl := l.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	l.snap, l.nextLoad = snap, now.Add(ttl)
	return snap, nil
}

// Provider is a shortcut for Snapshot then Provider.
func (l *Loader) Provider(ctx context.Context, name string) (*Provider, error) {
	s, err := l.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	return s.Provider(name)
}

func (l *Loader) load(ctx context.Context) (*Snapshot, error) {
	root := l.prefix()
	var params map[string]string
	var err error
	switch {
	case l.NoSecrets != nil:
		params, err = l.readWithoutSecrets(ctx, root)
	case l.SSM != nil:
		params, err = l.readAll(ctx, root)
	default:
		return nil, fmt.Errorf("%w: no SSM client", ErrInvalid)
	}
	if err != nil {
		return nil, err
	}
	return l.build(root, params, l.NoSecrets == nil), nil
}

// readAll is one recursive, decrypted GetParametersByPath walk.
func (l *Loader) readAll(ctx context.Context, root string) (map[string]string, error) {
	params := map[string]string{}
	p := ssm.NewGetParametersByPathPaginator(l.SSM, &ssm.GetParametersByPathInput{
		Path: aws.String(root), Recursive: aws.Bool(true), WithDecryption: aws.Bool(true),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("config: read SSM parameters under %s: %w", root, err)
		}
		for _, prm := range page.Parameters {
			params[aws.ToString(prm.Name)] = aws.ToString(prm.Value)
		}
	}
	return params, nil
}

// readWithoutSecrets lists the names under root and reads the provider
// configs and the key ring by name, ten at a time. A client secret appears
// in the result only by its name, with an empty value it was never read
// for, so that a provider with a secret and no config is still reported.
func (l *Loader) readWithoutSecrets(ctx context.Context, root string) (map[string]string, error) {
	params := map[string]string{}
	var wanted []string
	p := ssm.NewDescribeParametersPaginator(l.NoSecrets, &ssm.DescribeParametersInput{
		ParameterFilters: []types.ParameterStringFilter{{Key: aws.String("Path"), Option: aws.String("Recursive"), Values: []string{root}}},
		MaxResults:       aws.Int32(50),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("config: list SSM parameters under %s: %w", root, err)
		}
		for _, md := range page.Parameters {
			name := aws.ToString(md.Name)
			switch _, leaf, ok := providerParameter(root, name); {
			case name == root+"/token-keys", ok && leaf == "config":
				wanted = append(wanted, name)
			case ok && leaf == "client_secret":
				params[name] = ""
			}
		}
	}
	sort.Strings(wanted)
	for batch := range slices.Chunk(wanted, getParametersBatch) {
		out, err := l.NoSecrets.GetParameters(ctx, &ssm.GetParametersInput{Names: batch, WithDecryption: aws.Bool(true)})
		if err != nil {
			return nil, fmt.Errorf("config: read SSM parameters %s: %w", strings.Join(batch, ", "), err)
		}
		// A name listed but gone by now (InvalidParameters) stays absent
		// and is reported as missing, like any other missing parameter.
		for _, prm := range out.Parameters {
			params[aws.ToString(prm.Name)] = aws.ToString(prm.Value)
		}
	}
	return params, nil
}

// providerParameter splits {root}/providers/{provider}/{leaf}.
func providerParameter(root, name string) (prov, leaf string, ok bool) {
	rest, ok := strings.CutPrefix(name, root+"/providers/")
	if !ok {
		return "", "", false
	}
	prov, leaf, ok = strings.Cut(rest, "/")
	if !ok || prov == "" || strings.Contains(leaf, "/") {
		return "", "", false
	}
	return prov, leaf, true
}

// build turns the parameters read into a snapshot. withSecrets: every
// provider needs a non-empty client secret.
func (l *Loader) build(root string, params map[string]string, withSecrets bool) *Snapshot {
	snap := &Snapshot{providers: map[string]*Provider{}, problems: map[string]error{}, LoadedAt: l.now()}

	keysName := KeyRingName(root)
	if raw, ok := params[keysName]; !ok {
		snap.ringErr = fmt.Errorf("%w: %s is missing (a SecureString key ring, see README)", ErrInvalid, keysName)
	} else if ring, err := sealing.ParseRing([]byte(raw)); err != nil {
		snap.ringErr = fmt.Errorf("%w: %s: %v", ErrInvalid, keysName, err)
	} else {
		snap.ring = ring
	}

	type parts struct{ config, secret *string }
	found := map[string]*parts{}
	for name, value := range params {
		prov, leaf, ok := providerParameter(root, name)
		if !ok {
			continue
		}
		if found[prov] == nil {
			found[prov] = &parts{}
		}
		v := value
		switch leaf {
		case "config":
			found[prov].config = &v
		case "client_secret":
			found[prov].secret = &v
		}
	}
	for prov, pp := range found {
		cfgName := ProviderConfigName(root, prov)
		secretName := ClientSecretName(root, prov)
		switch {
		case pp.config == nil:
			snap.problems[prov] = fmt.Errorf("%w: %s is missing", ErrInvalid, cfgName)
			continue
		case withSecrets && (pp.secret == nil || strings.TrimSpace(*pp.secret) == ""):
			snap.problems[prov] = fmt.Errorf("%w: %s is missing or empty", ErrInvalid, secretName)
			continue
		}
		cfg, err := provider.ParseConfig(prov, []byte(*pp.config))
		if err != nil {
			snap.problems[prov] = fmt.Errorf("%w: %s: %v", ErrInvalid, cfgName, err)
			continue
		}
		secret := ""
		if withSecrets {
			secret = strings.TrimSpace(*pp.secret)
		}
		snap.providers[prov] = &Provider{Config: cfg, Secret: secret}
	}
	refuseSharedTokenAppIDs(snap, root)
	return snap
}

// refuseSharedTokenAppIDs moves to the problems every wechat_mp provider
// with token_api "token" whose AppID another such provider also uses.
// Each cgi-bin/token call ends the previous token of that AppID five
// minutes later, and a provider name knows only its own fetches: the other
// name would go on serving a token WeChat has killed. stable_token's tokens
// are kept apart from cgi-bin/token's at WeChat ("完全隔离，互不影响"), so
// names on stable_token never clash with a token-mode name and are left
// alone. The other providers load as usual.
func refuseSharedTokenAppIDs(snap *Snapshot, root string) {
	byAppID := map[string][]string{}
	for name, p := range snap.providers {
		if p.Config.Kind == provider.KindWeChatMP && p.Config.TokenAPI == "token" {
			byAppID[p.Config.ClientID] = append(byAppID[p.Config.ClientID], name)
		}
	}
	for appID, names := range byAppID {
		if len(names) < 2 {
			continue
		}
		sort.Strings(names)
		for _, name := range names {
			others := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == name })
			snap.problems[name] = fmt.Errorf("%w: %s: client_id %q (a wechat_mp AppID) with token_api \"token\" is also used by provider(s) %s with token_api \"token\": every cgi-bin/token fetch by one name kills the token another name holds. Keep one token-mode provider name per AppID, or set token_api \"stable_token\"",
				ErrInvalid, ProviderConfigName(root, name), appID, strings.Join(others, ", "))
			delete(snap.providers, name)
		}
	}
}
