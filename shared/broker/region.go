package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// IsHome reports whether this deployment may call providers: always,
// unless HomeRegion is set and is not the deployment's own Region.
//
// Why one home region: a DynamoDB global table resolves concurrent writes
// by last writer wins, and a conditional write (the lease, the commit) is
// checked only in the region that takes it. Two regions refreshing one
// connection would each take "the" lease and present the same single-use
// refresh token, and one of them would lose the grant. So only the home
// region takes leases and calls providers; a replica serves tokens that
// are still valid and sends everything else to the home region.
func (b *Broker) IsHome() bool {
	return b.HomeRegion == "" || b.HomeRegion == b.Region
}

// errNotHome is what a replica's provider client answers: it is never
// reached through the token path (hold refuses first), only guards it.
var errNotHome = errors.New("broker: this deployment is not in the home region and calls no provider")

// notHomeError is the answer to a request that needs a provider call in
// a replica region.
func (b *Broker) notHomeError(k store.Key) error {
	return Errorf(CodeProviderUnavailable, "%s needs a refresh, and this deployment (region %s) is a replica that never calls a provider; ask the home region (%s)", k, b.Region, b.HomeRegion)
}

// cannotStart is the answer when a caller may not start a refresh now:
// in a replica region, that it never does; otherwise tooLittleTime.
func (b *Broker) cannotStart(k store.Key, tooLittleTime error) error {
	if !b.IsHome() {
		return b.notHomeError(k)
	}
	return tooLittleTime
}

// notHomeSummary is a tick in a replica region: nothing read, nothing
// refreshed.
func (b *Broker) notHomeSummary(ctx context.Context) *Summary {
	b.log().InfoContext(ctx, "refresher tick skipped: not the home region", "region", b.Region, "home_region", b.HomeRegion)
	return &Summary{NotHome: true}
}

// homeOnly wraps a provider client so that a replica region cannot call
// the provider by any path (authorize, exchange, refresh, revoke).
func (b *Broker) homeOnly(c provider.Client) provider.Client {
	if b.IsHome() {
		return c
	}
	return notHomeClient{Client: c, region: b.Region, home: b.HomeRegion}
}

type notHomeClient struct {
	provider.Client
	region, home string
}

func (n notHomeClient) refuse() error {
	return fmt.Errorf("%w (region %s, home region %s)", errNotHome, n.region, n.home)
}

func (n notHomeClient) AuthorizeURL(provider.AuthorizeRequest) (string, error) { return "", n.refuse() }

func (n notHomeClient) Exchange(context.Context, string, string, string) (*provider.TokenSet, error) {
	return nil, n.refuse()
}

func (n notHomeClient) Refresh(context.Context, string) (*provider.TokenSet, error) {
	return nil, n.refuse()
}

func (n notHomeClient) MachineToken(context.Context) (*provider.TokenSet, error) {
	return nil, n.refuse()
}

func (n notHomeClient) Revoke(context.Context, string, string) error { return n.refuse() }

// homeWrites refuses, in a replica region, a change of a connection's
// grant (callback, confirm, import, delete): with a last-writer-wins
// global table it would race the home region's refreshes, and a callback
// would spend its single-use state here for nothing.
func (b *Broker) homeWrites(what string) error {
	if b.IsHome() {
		return nil
	}
	return Errorf(CodeProviderUnavailable, "this deployment (region %s) is a replica: %s happens only in the home region (%s)", b.Region, what, b.HomeRegion)
}
