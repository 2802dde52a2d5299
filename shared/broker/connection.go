package broker

import (
	"context"
	"errors"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// Status is a connection's state without secrets.
type Status struct {
	Key         store.Key
	Status      store.Status
	ExpiresAt   time.Time
	RefreshedAt time.Time
	LastError   string
	Metadata    map[string]string
}

// Status reports a connection. Codes: bad_request, not_found, internal.
func (b *Broker) Status(ctx context.Context, k store.Key) (*Status, error) {
	if err := validKey(k); err != nil {
		return nil, err
	}
	e, err := b.envFor(ctx, k.Provider)
	if err != nil {
		return nil, err
	}
	c, err := e.store.Get(ctx, k, true)
	if errors.Is(err, store.ErrNotFound) {
		return nil, Errorf(CodeNotFound, "no connection %s", k)
	}
	if err != nil {
		return nil, asAppError(err, "connection")
	}
	return &Status{Key: k, Status: c.Status, ExpiresAt: c.ExpiresAt, RefreshedAt: c.RefreshedAt, LastError: c.LastError, Metadata: c.Metadata}, nil
}

// Delete forgets a connection, revoking its grant at the provider first
// where the provider has a revoke endpoint (a failed revoke is logged and
// does not keep the connection). The delete is fenced by the grant's
// generation, so a re-authorization that lands meanwhile is not deleted
// unseen; a refresh in flight for the deleted grant finds it gone and
// stores nothing. Codes: bad_request, not_found, internal.
func (b *Broker) Delete(ctx context.Context, k store.Key, caller string) error {
	if err := validKey(k); err != nil {
		return err
	}
	if err := b.homeWrites("deleting a connection"); err != nil {
		return err
	}
	e, err := b.envFor(ctx, k.Provider)
	if err != nil {
		return err
	}
	for attempt := 0; attempt < 3; attempt++ {
		c, err := e.store.Get(ctx, k, true)
		var fence *store.Fence
		revoked := false
		subject := &store.Connection{Key: k}
		switch {
		case errors.Is(err, store.ErrNotFound):
			b.log().InfoContext(ctx, "connection deleted", "audit", true, "caller", caller, "provider", k.Provider, "connection", k.Connection,
				"revoked", false, "existed", false)
			return nil
		case err == nil:
			f := c.Fence()
			fence, subject = &f, c
			revoked = b.revoke(ctx, e, c)
		case !errors.Is(err, store.ErrCorrupt):
			return storeError(err, "connection")
		}
		notice := b.deletedNotice(e.store, subject, revoked)
		w, err := e.store.PrepareDelete(k, fence, notice)
		if err == nil {
			err = b.durably(ctx, b.now().Add(b.budget().Commit), w)
		}
		if errors.Is(err, store.ErrVersionConflict) {
			continue // re-authorized between our read and the delete: look again
		}
		if err != nil {
			return storeError(err, "connection")
		}
		if !w.Noop {
			b.publish(ctx, e.store, notice)
		}
		b.log().InfoContext(ctx, "connection deleted", "audit", true, "caller", caller, "provider", k.Provider, "connection", k.Connection,
			"revoked", revoked, "existed", !w.Noop)
		return nil
	}
	return Errorf(CodeInternal, "connection %s kept changing while being deleted; try again", k)
}

// revoke asks the provider to invalidate c's grant; it reports whether the
// provider confirmed.
func (b *Broker) revoke(ctx context.Context, e *env, c *store.Connection) bool {
	token, hint := c.RefreshToken, "refresh_token"
	if token == "" {
		token, hint = c.AccessToken, "access_token"
	}
	rctx, cancel := context.WithTimeout(ctx, b.budget().Provider)
	defer cancel()
	err := e.client.Revoke(rctx, token, hint)
	if err != nil && !errors.Is(err, provider.ErrNotSupported) {
		b.log().WarnContext(ctx, "revoke failed; forgetting the connection anyway", "provider", c.Provider, "connection", c.Connection, "error", err.Error())
	}
	return err == nil
}
