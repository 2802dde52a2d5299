// Package broker is tokenbroker's domain: starting and completing
// authorizations, handing out tokens valid for at least a wanted time,
// refreshing each token exactly once under the store's lease however many
// callers ask at once, and the refresher's sweep of due connections.
//
// It knows no HTTP routes and no DynamoDB attributes: it talks to the
// store, the configuration, the provider clients and telemetry.
package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"tokenbroker/shared/config"
	"tokenbroker/shared/provider"
	"tokenbroker/shared/store"
	"tokenbroker/shared/telemetry"
)

// Configuration is where provider settings and the key ring come from;
// *config.Loader satisfies it.
type Configuration interface {
	Snapshot(ctx context.Context) (*config.Snapshot, error)
}

// Notifier publishes needs-reauthorization events; *telemetry.EventBridge
// satisfies it.
type Notifier interface {
	NeedsReauth(ctx context.Context, d telemetry.NeedsReauthDetail) error
}

// MachineConnection is the one connection of app-token providers.
const MachineConnection = "app"

// Defaults.
const (
	DefaultLease       = 25 * time.Second
	DefaultMinTTL      = 60 * time.Second
	StateLifetime      = 10 * time.Minute
	maxBackoff         = time.Hour
	firstBackoff       = 30 * time.Second
	defaultMinLead     = 300 * time.Second
	defaultConcurrency = 8
)

// Broker is the core. Store (with DB and Table set; the ring comes from
// the configuration) and Config are required; the rest have defaults.
type Broker struct {
	Store    *store.Store
	Config   Configuration
	HTTP     *http.Client
	Log      *slog.Logger
	Metrics  *telemetry.Metrics
	Notifier Notifier
	// PublicBaseURL, when set, is the base of the callback URL.
	PublicBaseURL string
	// ReturnToAllowlist holds the origins return_to may point at.
	ReturnToAllowlist []string
	// Lease is how long a refresh lease lasts; it must outlive the
	// provider call (HTTP timeout) and be shorter than the function timeout.
	Lease time.Duration
	// Concurrency bounds the refresher's parallel refreshes.
	Concurrency int
	// ProviderConcurrency bounds parallel refreshes per provider (0: Concurrency).
	ProviderConcurrency int
	Now                 func() time.Time
	Rand                io.Reader

	owner     string
	ownerOnce sync.Once
	cacheMu   sync.Mutex
	cache     *snapshotCache
}

// snapshotCache holds what is derived from one configuration snapshot.
type snapshotCache struct {
	snap    *config.Snapshot
	store   *store.Store
	clients map[string]provider.Client
}

func (b *Broker) now() time.Time {
	if b.Now != nil {
		return b.Now()
	}
	return time.Now()
}

func (b *Broker) log() *slog.Logger {
	if b.Log != nil {
		return b.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (b *Broker) random() io.Reader {
	if b.Rand != nil {
		return b.Rand
	}
	return rand.Reader
}

func (b *Broker) lease() time.Duration {
	if b.Lease > 0 {
		return b.Lease
	}
	return DefaultLease
}

// leaseOwner names this process in lease fields: random per instance, so
// an operator can tell which instance holds a lease.
func (b *Broker) leaseOwner() string {
	b.ownerOnce.Do(func() {
		buf := make([]byte, 8)
		_, _ = io.ReadFull(b.random(), buf)
		b.owner = "tb-" + hex.EncodeToString(buf)
	})
	return b.owner
}

func (b *Broker) randomString(n int) (string, error) {
	buf := make([]byte, n)
	if _, err := io.ReadFull(b.random(), buf); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(buf), nil
}

// env is what one operation needs: the store bound to the current key
// ring, and the provider's resolved config and client.
type env struct {
	store  *store.Store
	cfg    provider.Config
	client provider.Client
}

func (b *Broker) current(ctx context.Context) (*snapshotCache, error) {
	snap, err := b.Config.Snapshot(ctx)
	if err != nil {
		return nil, wrap(CodeInternal, err, "configuration unavailable")
	}
	b.cacheMu.Lock()
	defer b.cacheMu.Unlock()
	if b.cache != nil && b.cache.snap == snap {
		return b.cache, nil
	}
	ring, err := snap.Ring()
	if err != nil {
		return nil, wrap(CodeInternal, err, "token key ring unavailable")
	}
	st := *b.Store
	st.Ring = ring
	b.cache = &snapshotCache{snap: snap, store: &st, clients: map[string]provider.Client{}}
	return b.cache, nil
}

// envFor resolves a provider: not_found when unknown, internal when its
// parameters are broken (the details go to the log).
func (b *Broker) envFor(ctx context.Context, name string) (*env, error) {
	if !store.ValidID(name) {
		return nil, Errorf(CodeBadRequest, "provider name must match [A-Za-z0-9._-]{1,128}")
	}
	c, err := b.current(ctx)
	if err != nil {
		return nil, err
	}
	p, err := c.snap.Provider(name)
	if errors.Is(err, config.ErrUnknownProvider) {
		return nil, Errorf(CodeNotFound, "unknown provider %q", name)
	}
	if err != nil {
		return nil, wrap(CodeInternal, err, "provider %q is misconfigured; see the broker's log", name)
	}
	b.cacheMu.Lock()
	defer b.cacheMu.Unlock()
	client, ok := c.clients[name]
	if !ok {
		client, err = provider.New(p.Config, p.Secret, provider.Options{HTTP: b.HTTP, Now: b.Now})
		if err != nil {
			return nil, wrap(CodeInternal, err, "provider %q is misconfigured; see the broker's log", name)
		}
		c.clients[name] = client
	}
	return &env{store: c.store, cfg: p.Config, client: client}, nil
}

func validKey(k store.Key) error {
	if err := k.Validate(); err != nil {
		return Errorf(CodeBadRequest, "provider and connection must match [A-Za-z0-9._-]{1,128}")
	}
	return nil
}

// storeError maps a store failure that is not part of the protocol.
func storeError(err error, what string) error {
	if errors.Is(err, store.ErrCorrupt) {
		return wrap(CodeInternal, err, "stored %s cannot be read; see the broker's log", what)
	}
	return wrap(CodeInternal, err, "token store unavailable")
}

// refreshLead is how long before expiry a token is refreshed: the
// provider's refresh_lead_seconds, else max(300 s, 10% of the lifetime).
func refreshLead(cfg provider.Config, lifetime time.Duration) time.Duration {
	if cfg.RefreshLeadSeconds > 0 {
		return time.Duration(cfg.RefreshLeadSeconds) * time.Second
	}
	return max(defaultMinLead, lifetime/10)
}

// scheduleRefresh sets when the refresher should renew c: only for
// connections that can be renewed without the user and whose token expires.
func scheduleRefresh(c *store.Connection, cfg provider.Config, now time.Time) {
	c.RefreshAt = time.Time{}
	if c.ExpiresAt.IsZero() || (c.RefreshToken == "" && !cfg.Machine()) {
		return
	}
	at := c.ExpiresAt.Add(-refreshLead(cfg, c.ExpiresAt.Sub(now)))
	if at.Before(now) {
		at = now
	}
	c.RefreshAt = at
}

// retryDelay grows exponentially with the attempt, with jitter, capped at
// an hour, and never later than half the token's remaining life.
func (b *Broker) retryDelay(attempts int, expiresAt, now time.Time) time.Duration {
	d := firstBackoff << min(attempts-1, 10)
	d = min(d, maxBackoff)
	var j [2]byte
	_, _ = io.ReadFull(b.random(), j[:])
	jitter := time.Duration(int(j[0])<<8|int(j[1])) * d / 4 / 65536
	d = d - d/8 + jitter
	if !expiresAt.IsZero() {
		if half := expiresAt.Sub(now) / 2; half > 15*time.Second && half < d {
			d = half
		}
	}
	return max(d, 15*time.Second)
}
