package telemetry

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
)

// Event source and detail type of the needs-reauthorization event.
const (
	EventSource           = "tokenbroker"
	DetailTypeNeedsReauth = "Connection Needs Reauthorization"
)

// NeedsReauthDetail is the event's detail.
type NeedsReauthDetail struct {
	Provider      string `json:"provider"`
	Connection    string `json:"connection"`
	Reason        string `json:"reason"`
	ProviderError string `json:"provider_error,omitempty"`
}

// PutEventsAPI is the part of the EventBridge client used here.
type PutEventsAPI interface {
	PutEvents(ctx context.Context, in *eventbridge.PutEventsInput, optFns ...func(*eventbridge.Options)) (*eventbridge.PutEventsOutput, error)
}

// EventBridge publishes needs-reauthorization events to a bus.
type EventBridge struct {
	Client PutEventsAPI
	Bus    string
}

// NeedsReauth publishes one event.
func (e *EventBridge) NeedsReauth(ctx context.Context, d NeedsReauthDetail) error {
	if e == nil || e.Client == nil {
		return nil
	}
	detail, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("telemetry: event detail: %w", err)
	}
	bus := e.Bus
	if bus == "" {
		bus = "default"
	}
	out, err := e.Client.PutEvents(ctx, &eventbridge.PutEventsInput{Entries: []ebtypes.PutEventsRequestEntry{{
		Source: aws.String(EventSource), DetailType: aws.String(DetailTypeNeedsReauth),
		Detail: aws.String(string(detail)), EventBusName: aws.String(bus),
		Resources: []string{},
	}}})
	if err != nil {
		return fmt.Errorf("telemetry: put event: %w", err)
	}
	if out.FailedEntryCount > 0 {
		return fmt.Errorf("telemetry: put event: %d entries failed", out.FailedEntryCount)
	}
	return nil
}
