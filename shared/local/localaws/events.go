package localaws

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
)

// EventSink is an SQS queue on moto that an EventBridge rule on the
// default bus feeds: it receives what a subscriber of the rule would.
type EventSink struct {
	sqs  *sqs.Client
	eb   *eventbridge.Client
	url  string
	rule string
}

// NewEventSink creates the queue and a rule with pattern targeting it.
func NewEventSink(ctx context.Context, endpoint, pattern string) (*EventSink, error) {
	cfg := Config()
	s := &EventSink{
		sqs:  sqs.NewFromConfig(cfg, func(o *sqs.Options) { o.BaseEndpoint = aws.String(endpoint) }),
		eb:   eventbridge.NewFromConfig(cfg, func(o *eventbridge.Options) { o.BaseEndpoint = aws.String(endpoint) }),
		rule: UniqueName("events"),
	}
	created, err := s.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(s.rule)})
	if err != nil {
		return nil, fmt.Errorf("localaws: create queue: %w", err)
	}
	s.url = aws.ToString(created.QueueUrl)
	if _, err := s.eb.PutRule(ctx, &eventbridge.PutRuleInput{Name: aws.String(s.rule), EventPattern: aws.String(pattern)}); err != nil {
		return nil, fmt.Errorf("localaws: put rule: %w", err)
	}
	arn := "arn:aws:sqs:" + Region + ":123456789012:" + s.rule
	if _, err := s.eb.PutTargets(ctx, &eventbridge.PutTargetsInput{Rule: aws.String(s.rule),
		Targets: []ebtypes.Target{{Id: aws.String("q"), Arn: aws.String(arn)}}}); err != nil {
		return nil, fmt.Errorf("localaws: put targets: %w", err)
	}
	return s, nil
}

// Receive takes every event waiting in the queue (deleting them), as
// decoded EventBridge envelopes.
func (s *EventSink) Receive(ctx context.Context) ([]map[string]any, error) {
	var out []map[string]any
	for empty := 0; empty < 2; {
		msgs, err := s.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(s.url), MaxNumberOfMessages: 10, WaitTimeSeconds: 1})
		if err != nil {
			return out, fmt.Errorf("localaws: receive: %w", err)
		}
		if len(msgs.Messages) == 0 {
			empty++
			continue
		}
		for _, m := range msgs.Messages {
			var ev map[string]any
			if err := json.Unmarshal([]byte(aws.ToString(m.Body)), &ev); err != nil {
				return out, fmt.Errorf("localaws: event body is not JSON: %.200s", aws.ToString(m.Body))
			}
			out = append(out, ev)
			_, _ = s.sqs.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(s.url), ReceiptHandle: m.ReceiptHandle})
		}
	}
	return out, nil
}

// Close removes the rule (the queue is left to moto's end).
func (s *EventSink) Close() {
	ctx := context.Background()
	_, _ = s.eb.RemoveTargets(ctx, &eventbridge.RemoveTargetsInput{Rule: aws.String(s.rule), Ids: []string{"q"}})
	_, _ = s.eb.DeleteRule(ctx, &eventbridge.DeleteRuleInput{Name: aws.String(s.rule)})
}
