// Package broker is tokenbroker's domain: starting and completing
// authorizations, handing out tokens valid for at least a wanted time,
// refreshing each token exactly once under the store's lease however many
// callers ask at once, and the refresher's sweep of due connections.
//
// It knows no HTTP routes and no DynamoDB attributes: it talks to the
// store, the configuration, the provider clients and telemetry.
//
// The files follow the concerns: budget.go (the time budget every refresh
// obeys), token.go (serving a token, deciding when to refresh, waiting on
// another worker's lease), refresh.go (the provider call under the lease
// and storing its outcome durably), notify.go (lifecycle events), quota.go
// (WeChat's daily budget), connection.go (status and delete),
// authorize.go (the connect flow) and refresher.go (the scheduled sweep).
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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/sealing"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

// Configuration is where provider settings and the key ring come from;
// *config.Loader satisfies it.
type Configuration interface {
	Snapshot(ctx context.Context) (*config.Snapshot, error)
	// Reload loads a fresh snapshot now, ignoring the cache's age.
	Reload(ctx context.Context) (*config.Snapshot, error)
}

// Notifier publishes lifecycle events; *telemetry.EventBridge satisfies it.
type Notifier interface {
	Publish(ctx context.Context, detailType string, detail []byte) error
}

// MachineConnection is the one connection of app-token providers.
const MachineConnection = "app"

// Defaults.
const (
	DefaultMinTTL      = 60 * time.Second
	StateLifetime      = 10 * time.Minute
	maxBackoff         = time.Hour
	firstBackoff       = 30 * time.Second
	defaultMinLead     = 300 * time.Second
	defaultConcurrency = 8
	// firstShortBackoff and MaxShortBackoff bound the short schedule: after
	// a failed refresh that left no usable token (or failed a forced
	// refresh, whose caller says the token is not usable), the next
	// provider call waits at most firstShortBackoff, then twice as long per
	// consecutive failure, up to MaxShortBackoff. A one-second blip costs
	// callers about a second, not the long schedule's half minute.
	firstShortBackoff = time.Second
	MaxShortBackoff   = 60 * time.Second
	// DenialMemory is how long a provider's refusal to refresh for this app
	// (SinaCloud's unauthorized_client) is remembered before a refresh asks
	// again: the operator may have been granted the permission meanwhile.
	DenialMemory = time.Hour
	// maxArrivalAge bounds how old a request's arrival time may be: API
	// Gateway gives up on a function after 30 s.
	maxArrivalAge = 30 * time.Second
	// stableForceSpacing: WeChat ignores a forced stable_token call within
	// 30 s of the last one.
	stableForceSpacing = 30 * time.Second
	// FailingAfter consecutive failed refreshes announce a failure streak
	// (Connection Refresh Failing) even before the access token expires.
	FailingAfter = 5
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
	// Budget is the time budget of every refresh; DefaultBudget when zero.
	Budget Budget
	// Concurrency bounds the refresher's parallel refreshes.
	Concurrency int
	// ProviderConcurrency bounds parallel refreshes per provider (0: Concurrency).
	ProviderConcurrency int
	// Queue, when set, is where the scheduled tick hands out the refresh
	// work (fan-out mode, fanout.go); nil refreshes in-process.
	Queue WorkQueue
	// UnitClaim is how long a queued unit is not queued again while its
	// message waits; DefaultUnitClaim when zero.
	UnitClaim time.Duration
	// HomeRegion, when set and not Region, makes this deployment a replica
	// that never calls a provider (region.go).
	HomeRegion, Region string
	Now                func() time.Time
	Rand               io.Reader

	owner     string
	ownerOnce sync.Once
	cacheMu   sync.Mutex
	cache     *snapshotCache
	ring      liveRing
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

// processID names this process in lease fields: random per instance, so
// an operator can tell which instance holds a lease.
func (b *Broker) processID() string {
	b.ownerOnce.Do(func() {
		buf := make([]byte, 8)
		_, _ = io.ReadFull(b.random(), buf)
		b.owner = "tb-" + hex.EncodeToString(buf)
	})
	return b.owner
}

// newLeaseOwner is unique per acquisition, so a retried acquisition can
// recognise its own lease.
func (b *Broker) newLeaseOwner() string {
	buf := make([]byte, 6)
	_, _ = io.ReadFull(b.random(), buf)
	return b.processID() + "/" + hex.EncodeToString(buf)
}

func (b *Broker) randomString(n int) (string, error) {
	buf := make([]byte, n)
	if _, err := io.ReadFull(b.random(), buf); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(buf), nil
}

// env is what one operation needs: the store bound to the key ring, and
// the provider's resolved config and client.
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
	return b.adopt(snap)
}

// adopt makes snap the current snapshot (its ring, fresh provider clients).
func (b *Broker) adopt(snap *config.Snapshot) (*snapshotCache, error) {
	b.cacheMu.Lock()
	defer b.cacheMu.Unlock()
	if b.cache != nil && b.cache.snap == snap {
		return b.cache, nil
	}
	ring, err := snap.Ring()
	if err != nil {
		return nil, wrap(CodeInternal, err, "token key ring unavailable")
	}
	b.ring.set(b, ring)
	st := *b.Store
	st.Ring = &b.ring
	b.cache = &snapshotCache{snap: snap, store: &st, clients: map[string]provider.Client{}}
	return b.cache, nil
}

// liveRing is the key ring the store seals and opens with. A value sealed
// under a key id the cached ring does not know (another instance loaded a
// newer ring, with a new active key) triggers one fresh load of the
// configuration before it is declared unreadable. A key id that a fresh
// load did not bring (a key removed from the ring too early) is not asked
// for again until the ring changes: otherwise every instance of the fleet
// would reload from SSM for each such value it reads, about once a second
// each, and a hundred instances would exhaust SSM's rate for everyone.
type liveRing struct {
	b    *Broker
	ring atomic.Pointer[sealing.Ring]

	mu      sync.Mutex
	missing map[string]*sealing.Ring // key id → the ring a reload did not find it in
}

func (r *liveRing) set(b *Broker, ring *sealing.Ring) {
	r.b = b
	r.ring.Store(ring)
}

func (r *liveRing) Seal(plaintext, binding string) (string, error) {
	return r.ring.Load().Seal(plaintext, binding)
}

func (r *liveRing) Open(sealed, binding string) (string, error) {
	ring := r.ring.Load()
	plain, err := ring.Open(sealed, binding)
	if !errors.Is(err, sealing.ErrUnknownKey) {
		return plain, err
	}
	kid, _ := sealing.KeyID(sealed)
	r.mu.Lock()
	known := r.missing[kid] == ring
	r.mu.Unlock()
	if known {
		return "", err
	}
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	snap, rerr := r.b.Config.Reload(ctx)
	if rerr != nil {
		return "", err
	}
	if !snap.LoadedAt.Before(began) {
		// Only a load that read SSM after this value was met says the key
		// is gone (a reload inside the loader's spacing, or one whose read
		// failed, hands back the cached snapshot).
		defer func() {
			if fresh := r.ring.Load(); !slices.Contains(fresh.KeyIDs(), kid) {
				r.mu.Lock()
				if r.missing == nil || len(r.missing) > 64 {
					r.missing = map[string]*sealing.Ring{}
				}
				r.missing[kid] = fresh
				r.mu.Unlock()
			}
		}()
	}
	if _, rerr := r.b.adopt(snap); rerr != nil {
		return "", err
	}
	if fresh := r.ring.Load(); fresh != ring {
		r.b.log().Info("token key ring reloaded for a value sealed under a newer key")
		return fresh.Open(sealed, binding)
	}
	return "", err
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
		client = b.homeOnly(client)
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
	if errors.Is(err, store.ErrInvalid) {
		return wrap(CodeBadRequest, err, "the %s cannot be stored: %s", what, strings.TrimPrefix(err.Error(), "store: invalid input: "))
	}
	if errors.Is(err, store.ErrCorrupt) {
		return wrap(CodeInternal, err, "stored %s cannot be read; see the broker's log", what)
	}
	return wrap(CodeInternal, err, "token store unavailable")
}

func asAppError(err error, what string) error {
	var ae *Error
	if errors.As(err, &ae) {
		return err
	}
	return storeError(err, what)
}

// refreshLead is how long before expiry a token is refreshed: the
// provider's refresh_lead_seconds as given, else max(300 s, 10% of the
// lifetime) but never more than half the lifetime, so that a short-lived
// token (Keycloak's 5 minutes) is used for half its life, not rotated on
// every tick.
func refreshLead(cfg provider.Config, lifetime time.Duration) time.Duration {
	if cfg.RefreshLeadSeconds > 0 {
		return time.Duration(cfg.RefreshLeadSeconds) * time.Second
	}
	return min(max(defaultMinLead, lifetime/10), lifetime/2)
}

// refreshable reports whether c can be renewed without its user.
func refreshable(c *store.Connection, cfg provider.Config) bool {
	return cfg.Machine() || c.RefreshToken != ""
}

// denied reports whether the provider's refusal to refresh c for this app
// is still remembered at now (see DenialMemory).
func denied(c *store.Connection, now time.Time) bool {
	return c.RefreshDenied != "" && now.Before(c.LastErrorAt.Add(DenialMemory))
}

// scheduleRefresh sets when the refresher should renew c: only for
// connections that can be renewed without the user and whose token expires.
func scheduleRefresh(c *store.Connection, cfg provider.Config, now time.Time) {
	c.RefreshAt = time.Time{}
	if c.ExpiresAt.IsZero() || !refreshable(c, cfg) {
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

// shortDelay is the short schedule's wait after the attempts-th
// consecutive failure: up to 1 s, doubling, capped at MaxShortBackoff,
// with jitter (between half and all of it) so that instances spread out.
func (b *Broker) shortDelay(attempts int) time.Duration {
	d := min(firstShortBackoff<<min(max(attempts-1, 0), 10), MaxShortBackoff)
	var j [2]byte
	_, _ = io.ReadFull(b.random(), j[:])
	return d/2 + time.Duration(int(j[0])<<8|int(j[1]))*(d/2)/65536
}

func (b *Broker) jitter(d time.Duration) time.Duration {
	var j [1]byte
	_, _ = io.ReadFull(b.random(), j[:])
	return d * time.Duration(j[0]) / 512
}
