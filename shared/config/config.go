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
package config

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"tokenbroker/shared/provider"
	"tokenbroker/shared/sealing"
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

// SSM is the part of the SDK client the loader uses; *ssm.Client satisfies it.
type SSM interface {
	GetParametersByPath(ctx context.Context, in *ssm.GetParametersByPathInput, optFns ...func(*ssm.Options)) (*ssm.GetParametersByPathOutput, error)
}

// Provider is one provider's settings and secret.
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
	SSM    SSM
	Prefix string
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

func (l *Loader) prefix() string {
	p := strings.TrimRight(l.Prefix, "/")
	if p == "" {
		return DefaultPrefix
	}
	return p
}

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
	snap, err := l.load(ctx)
	if err != nil {
		if l.snap != nil && now.Sub(l.snap.LoadedAt) < maxStale {
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
	snap, err := l.load(ctx)
	if err != nil {
		if l.snap != nil {
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
	if l.SSM == nil {
		return nil, fmt.Errorf("%w: no SSM client", ErrInvalid)
	}
	root := l.prefix()
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
	snap := &Snapshot{providers: map[string]*Provider{}, problems: map[string]error{}, LoadedAt: l.now()}

	keysName := root + "/token-keys"
	if raw, ok := params[keysName]; !ok {
		snap.ringErr = fmt.Errorf("%w: %s is missing (a SecureString key ring, see README)", ErrInvalid, keysName)
	} else if ring, err := sealing.ParseRing([]byte(raw)); err != nil {
		snap.ringErr = fmt.Errorf("%w: %s: %v", ErrInvalid, keysName, err)
	} else {
		snap.ring = ring
	}

	type parts struct{ config, secret *string }
	found := map[string]*parts{}
	provPrefix := root + "/providers/"
	for name, value := range params {
		rest, ok := strings.CutPrefix(name, provPrefix)
		if !ok {
			continue
		}
		prov, leaf, ok := strings.Cut(rest, "/")
		if !ok || strings.Contains(leaf, "/") {
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
		cfgName := provPrefix + prov + "/config"
		secretName := provPrefix + prov + "/client_secret"
		switch {
		case pp.config == nil:
			snap.problems[prov] = fmt.Errorf("%w: %s is missing", ErrInvalid, cfgName)
			continue
		case pp.secret == nil || strings.TrimSpace(*pp.secret) == "":
			snap.problems[prov] = fmt.Errorf("%w: %s is missing or empty", ErrInvalid, secretName)
			continue
		}
		cfg, err := provider.ParseConfig(prov, []byte(*pp.config))
		if err != nil {
			snap.problems[prov] = fmt.Errorf("%w: %s: %v", ErrInvalid, cfgName, err)
			continue
		}
		snap.providers[prov] = &Provider{Config: cfg, Secret: strings.TrimSpace(*pp.secret)}
	}
	return snap, nil
}
