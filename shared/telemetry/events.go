package telemetry

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
)

// EventSource is the source of every lifecycle event.
const EventSource = "tokenbroker"

// Detail types of the lifecycle events, one per transition.
const (
	DetailTypeAuthorized     = "Connection Authorized"
	DetailTypeNeedsReauth    = "Connection Needs Reauthorization"
	DetailTypeRefreshFailing = "Connection Refresh Failing"
	DetailTypeRecovered      = "Connection Recovered"
	DetailTypeDeleted        = "Connection Deleted"
)

// NeedsReauthDetail is the detail of Connection Needs Reauthorization.
type NeedsReauthDetail struct {
	Provider      string            `json:"provider"`
	Connection    string            `json:"connection"`
	Reason        string            `json:"reason"`
	ProviderError string            `json:"provider_error"`
	Metadata      map[string]string `json:"metadata"`
}

// RefreshFailingDetail is the detail of Connection Refresh Failing.
type RefreshFailingDetail struct {
	Provider   string            `json:"provider"`
	Connection string            `json:"connection"`
	Attempts   int               `json:"attempts"`
	LastError  string            `json:"last_error"`
	ExpiresAt  *string           `json:"expires_at"`
	Metadata   map[string]string `json:"metadata"`
}

// RecoveredDetail is the detail of Connection Recovered.
type RecoveredDetail struct {
	Provider   string            `json:"provider"`
	Connection string            `json:"connection"`
	Metadata   map[string]string `json:"metadata"`
}

// AuthorizedDetail is the detail of Connection Authorized.
type AuthorizedDetail struct {
	Provider   string            `json:"provider"`
	Connection string            `json:"connection"`
	Via        string            `json:"via"`
	Account    string            `json:"account"`
	Scope      string            `json:"scope"`
	Metadata   map[string]string `json:"metadata"`
}

// DeletedDetail is the detail of Connection Deleted.
type DeletedDetail struct {
	Provider   string            `json:"provider"`
	Connection string            `json:"connection"`
	Revoked    bool              `json:"revoked"`
	Metadata   map[string]string `json:"metadata"`
}

// Labels returns m, or an empty map so that events always carry an object.
func Labels(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// PutEventsAPI is the part of the EventBridge client used here.
type PutEventsAPI interface {
	PutEvents(ctx context.Context, in *eventbridge.PutEventsInput, optFns ...func(*eventbridge.Options)) (*eventbridge.PutEventsOutput, error)
}

// EventBridge publishes lifecycle events to a bus.
type EventBridge struct {
	Client PutEventsAPI
	Bus    string
	// Attempts bounds the tries per event (3 when zero).
	Attempts int
}

// Publish sends one event, retrying a failed call or a failed entry a few
// times with a short backoff. The caller decides what a final failure
// means; for lifecycle events it is never the user's request failing.
func (e *EventBridge) Publish(ctx context.Context, detailType string, detail []byte) error {
	if e == nil || e.Client == nil {
		return nil
	}
	bus := e.Bus
	if bus == "" {
		bus = "default"
	}
	attempts := e.Attempts
	if attempts <= 0 {
		attempts = 3
	}
	in := &eventbridge.PutEventsInput{Entries: []ebtypes.PutEventsRequestEntry{{
		Source: aws.String(EventSource), DetailType: aws.String(detailType),
		Detail: aws.String(string(detail)), EventBusName: aws.String(bus),
		Resources: []string{},
	}}}
	var err error
	for i := 0; i < attempts; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("telemetry: put event: %w (after %v)", ctx.Err(), err)
			case <-time.After(time.Duration(50<<i) * time.Millisecond):
			}
		}
		var out *eventbridge.PutEventsOutput
		out, err = e.Client.PutEvents(ctx, in)
		if err == nil && out.FailedEntryCount == 0 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("%d entries failed", out.FailedEntryCount)
		}
	}
	return fmt.Errorf("telemetry: put event %q: %w", detailType, err)
}
