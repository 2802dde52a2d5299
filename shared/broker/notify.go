package broker

import (
	"context"
	"encoding/json"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

// publishTimeout bounds publishing one batch of notices.
const publishTimeout = 5 * time.Second

// publish sends notices that were written together with a state change
// and deletes each one sent. A notice that cannot be sent stays in the
// table and the refresher sends it later; a user's request never fails
// because of it.
//
// It takes at most publishTimeout, and never the time the invocation needs
// to answer: with too little left it leaves the notices to the refresher.
func (b *Broker) publish(ctx context.Context, st *store.Store, notices ...store.Notice) {
	left := b.left(ctx, publishTimeout)
	if len(notices) == 0 || left <= 0 {
		return
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), left)
	defer cancel()
	for _, n := range notices {
		if b.send(pctx, n) {
			b.forget(pctx, st, n)
		}
	}
}

// forget deletes a published notice, retrying through DynamoDB faults: a
// notice left behind would be published again by the refresher.
func (b *Broker) forget(ctx context.Context, st *store.Store, n store.Notice) {
	wait := 50 * time.Millisecond
	for {
		err := st.DeleteNotice(ctx, n.ID)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			b.log().WarnContext(ctx, "published notice not deleted; it may be sent again", "detail_type", n.DetailType, "error", err.Error())
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// send publishes one notice and emits its metric.
func (b *Broker) send(ctx context.Context, n store.Notice) bool {
	if b.Notifier != nil {
		if err := b.Notifier.Publish(ctx, n.DetailType, n.Detail); err != nil {
			b.Metrics.Count(telemetry.EventsFailed, 1, nil)
			b.log().ErrorContext(ctx, "lifecycle event not published; the refresher retries it", "detail_type", n.DetailType,
				"provider", n.Key.Provider, "connection", n.Key.Connection, "error", err.Error())
			return false
		}
	}
	dims := map[string]string{"Provider": n.Key.Provider}
	switch n.DetailType {
	case telemetry.DetailTypeNeedsReauth:
		b.Metrics.Count(telemetry.NeedsReauth, 1, dims)
	case telemetry.DetailTypeRefreshFailing:
		b.Metrics.Count(telemetry.RefreshFailing, 1, dims)
	}
	return true
}

func (b *Broker) notice(st *store.Store, k store.Key, detailType string, detail any) store.Notice {
	raw, err := json.Marshal(detail)
	if err != nil {
		raw = []byte(`{}`)
	}
	return st.NewNotice(k, detailType, raw)
}

func (b *Broker) needsReauthNotice(st *store.Store, c *store.Connection, reason, providerCode string) store.Notice {
	return b.notice(st, c.Key, telemetry.DetailTypeNeedsReauth, telemetry.NeedsReauthDetail{Provider: c.Provider, Connection: c.Connection,
		Reason: reason, ProviderError: providerCode, Metadata: telemetry.Labels(c.Metadata)})
}

func (b *Broker) failingNotice(st *store.Store, c *store.Connection, attempts int, lastError string) store.Notice {
	var expires *string
	if !c.ExpiresAt.IsZero() {
		s := c.ExpiresAt.UTC().Format(time.RFC3339)
		expires = &s
	}
	return b.notice(st, c.Key, telemetry.DetailTypeRefreshFailing, telemetry.RefreshFailingDetail{Provider: c.Provider, Connection: c.Connection,
		Attempts: attempts, LastError: lastError, ExpiresAt: expires, Metadata: telemetry.Labels(c.Metadata)})
}

func (b *Broker) recoveredNotice(st *store.Store, c *store.Connection) store.Notice {
	return b.notice(st, c.Key, telemetry.DetailTypeRecovered, telemetry.RecoveredDetail{Provider: c.Provider, Connection: c.Connection,
		Metadata: telemetry.Labels(c.Metadata)})
}

func (b *Broker) authorizedNotice(st *store.Store, c *store.Connection, via string) store.Notice {
	return b.notice(st, c.Key, telemetry.DetailTypeAuthorized, telemetry.AuthorizedDetail{Provider: c.Provider, Connection: c.Connection,
		Via: via, Account: account(c), Scope: c.Scope, Metadata: telemetry.Labels(c.Metadata)})
}

func (b *Broker) deletedNotice(st *store.Store, c *store.Connection, revoked bool) store.Notice {
	return b.notice(st, c.Key, telemetry.DetailTypeDeleted, telemetry.DeletedDetail{Provider: c.Provider, Connection: c.Connection,
		Revoked: revoked, Metadata: telemetry.Labels(c.Metadata)})
}

// publishPending sends the notices whose writers did not (a process that
// died between its write and the publish); the refresher calls it.
func (b *Broker) publishPending(ctx context.Context, st *store.Store) (sent int, err error) {
	err = st.ScanNotices(ctx, b.now(), func(n *store.Notice) error {
		// Claimed first, so a second refresher running now skips it; a
		// claim that is never followed by a delete lapses after a minute.
		claimed, err := st.ClaimNotice(ctx, n, b.now().Add(time.Minute))
		if err != nil {
			b.log().WarnContext(ctx, "notice not claimed", "detail_type", n.DetailType, "error", err.Error())
		}
		if claimed && b.send(ctx, *n) {
			sent++
			fctx, cancel := context.WithTimeout(ctx, publishTimeout)
			b.forget(fctx, st, *n)
			cancel()
		}
		return ctx.Err()
	})
	return sent, err
}
