package lambdarun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// SQSAPI is the part of the SQS client the mapping uses; *sqs.Client
// satisfies it.
type SQSAPI interface {
	ReceiveMessage(ctx context.Context, in *sqs.ReceiveMessageInput, optFns ...func(*sqs.Options)) (*sqs.ReceiveMessageOutput, error)
	DeleteMessageBatch(ctx context.Context, in *sqs.DeleteMessageBatchInput, optFns ...func(*sqs.Options)) (*sqs.DeleteMessageBatchOutput, error)
}

// MappingConfig describes an SQS event source mapping.
type MappingConfig struct {
	SQS      SQSAPI
	QueueURL string
	// QueueARN goes into each record's eventSourceARN.
	QueueARN string
	// BatchSize is the most messages one invoke gets (1–10); 10 when zero.
	BatchSize int
	// MaximumConcurrency is how many instances run at once (Lambda's
	// ScalingConfig.MaximumConcurrency); 2 when zero.
	MaximumConcurrency int
	// VisibilityTimeout asks each receive for this timeout; the queue's own
	// when zero.
	VisibilityTimeout time.Duration
	// ReportBatchItemFailures: the function answers which messages failed
	// (FunctionResponseTypes: [ReportBatchItemFailures]); without it any
	// function error fails the whole batch and a success deletes all.
	ReportBatchItemFailures bool
	// Function starts one instance (a sandbox) of the worker.
	Function func() (*Runner, error)
	// Log, when set, receives one line per event worth knowing (a failed
	// invoke, a receive error).
	Log func(format string, args ...any)
}

// MappingStats counts what the mapping did.
type MappingStats struct {
	Invokes, Messages, Deleted, ItemFailures, FunctionErrors int64
}

// Mapping is a running event source mapping: MaximumConcurrency pollers,
// each with its own instance, each receiving a batch, invoking the
// function with it as Lambda does, and deleting the messages that did not
// fail. A failed message is left alone: it comes back when its visibility
// timeout runs out, and the queue's redrive policy counts it.
type Mapping struct {
	cfg    MappingConfig
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	instances []*Runner
	busy      []bool

	invokes, messages, deleted, itemFailures, functionErrors atomic.Int64
}

// StartMapping starts polling. Close stops it and every instance.
func StartMapping(cfg MappingConfig) (*Mapping, error) {
	if cfg.SQS == nil || cfg.QueueURL == "" || cfg.Function == nil {
		return nil, errors.New("lambdarun: a mapping needs an SQS client, a queue URL and a function")
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 10
	}
	if cfg.BatchSize > 10 {
		return nil, fmt.Errorf("lambdarun: batch size %d; SQS hands out at most 10 messages a receive", cfg.BatchSize)
	}
	if cfg.MaximumConcurrency <= 0 {
		cfg.MaximumConcurrency = 2
	}
	if cfg.Log == nil {
		cfg.Log = func(string, ...any) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Mapping{cfg: cfg, cancel: cancel, instances: make([]*Runner, cfg.MaximumConcurrency), busy: make([]bool, cfg.MaximumConcurrency)}
	for i := range cfg.MaximumConcurrency {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.poll(ctx, i)
		}()
	}
	return m, nil
}

// Stats returns the counts so far.
func (m *Mapping) Stats() MappingStats {
	return MappingStats{Invokes: m.invokes.Load(), Messages: m.messages.Load(), Deleted: m.deleted.Load(),
		ItemFailures: m.itemFailures.Load(), FunctionErrors: m.functionErrors.Load()}
}

// KillBusy SIGKILLs the process of every instance that is in the middle of
// an invoke, as a crash or an out-of-memory kill would, and returns how
// many it killed. Their batches fail as a whole.
func (m *Mapping) KillBusy() int {
	m.mu.Lock()
	var victims []*Runner
	for i, r := range m.instances {
		if r != nil && m.busy[i] {
			victims = append(victims, r)
		}
	}
	m.mu.Unlock()
	for _, r := range victims {
		r.kill()
	}
	return len(victims)
}

// Close stops polling (an invoke under way is cut) and every instance.
func (m *Mapping) Close() {
	m.cancel()
	m.mu.Lock()
	instances := append([]*Runner(nil), m.instances...)
	m.mu.Unlock()
	for _, r := range instances {
		if r != nil {
			r.Close()
		}
	}
	m.wg.Wait()
}

func (m *Mapping) poll(ctx context.Context, slot int) {
	for ctx.Err() == nil {
		in := &sqs.ReceiveMessageInput{QueueUrl: aws.String(m.cfg.QueueURL), MaxNumberOfMessages: int32(m.cfg.BatchSize),
			WaitTimeSeconds: 1, MessageSystemAttributeNames: []types.MessageSystemAttributeName{types.MessageSystemAttributeNameAll}}
		if m.cfg.VisibilityTimeout > 0 {
			in.VisibilityTimeout = int32(m.cfg.VisibilityTimeout / time.Second)
		}
		out, err := m.cfg.SQS.ReceiveMessage(ctx, in)
		if err != nil {
			if ctx.Err() == nil {
				m.cfg.Log("mapping: receive: %v", err)
				sleep(ctx, 500*time.Millisecond)
			}
			continue
		}
		if len(out.Messages) == 0 {
			continue
		}
		m.handle(ctx, slot, out.Messages)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// handle invokes the slot's instance with one batch and deletes what
// succeeded.
func (m *Mapping) handle(ctx context.Context, slot int, msgs []types.Message) {
	m.messages.Add(int64(len(msgs)))
	r, err := m.instance(slot)
	if err != nil {
		m.cfg.Log("mapping: start an instance: %v", err)
		m.functionErrors.Add(1)
		sleep(ctx, time.Second)
		return
	}
	payload, err := json.Marshal(m.event(msgs))
	if err != nil {
		m.cfg.Log("mapping: event: %v", err)
		return
	}
	m.setBusy(slot, true)
	m.invokes.Add(1)
	out, err := r.Invoke(ctx, payload)
	m.setBusy(slot, false)
	if err != nil {
		// A function error (a crash, a timeout, an error answer) fails the
		// whole batch: nothing is deleted, every message comes back.
		m.functionErrors.Add(1)
		m.cfg.Log("mapping: invoke failed, %d messages come back: %v", len(msgs), err)
		return
	}
	failed := map[string]bool{}
	if m.cfg.ReportBatchItemFailures {
		var resp events.SQSEventResponse
		if err := json.Unmarshal(out, &resp); err != nil {
			// Lambda treats an unreadable answer as a failure of the batch.
			m.functionErrors.Add(1)
			m.cfg.Log("mapping: the answer is not a batch response, %d messages come back", len(msgs))
			return
		}
		known := map[string]bool{}
		for _, msg := range msgs {
			known[aws.ToString(msg.MessageId)] = true
		}
		for _, f := range resp.BatchItemFailures {
			if !known[f.ItemIdentifier] {
				// An identifier that is no message of the batch fails it all.
				m.functionErrors.Add(1)
				m.cfg.Log("mapping: batch item failure names no message of the batch, %d messages come back", len(msgs))
				return
			}
			failed[f.ItemIdentifier] = true
		}
	}
	m.itemFailures.Add(int64(len(failed)))
	var entries []types.DeleteMessageBatchRequestEntry
	for i, msg := range msgs {
		if !failed[aws.ToString(msg.MessageId)] {
			entries = append(entries, types.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: msg.ReceiptHandle})
		}
	}
	if len(entries) == 0 {
		return
	}
	del, err := m.cfg.SQS.DeleteMessageBatch(context.WithoutCancel(ctx), &sqs.DeleteMessageBatchInput{QueueUrl: aws.String(m.cfg.QueueURL), Entries: entries})
	if err != nil {
		m.cfg.Log("mapping: delete: %v", err)
		return
	}
	m.deleted.Add(int64(len(del.Successful)))
	for _, f := range del.Failed {
		m.cfg.Log("mapping: delete %s: %s", aws.ToString(f.Id), aws.ToString(f.Code))
	}
}

func (m *Mapping) setBusy(slot int, busy bool) {
	m.mu.Lock()
	m.busy[slot] = busy
	m.mu.Unlock()
}

func (m *Mapping) instance(slot int) (*Runner, error) {
	m.mu.Lock()
	r := m.instances[slot]
	m.mu.Unlock()
	if r != nil {
		return r, nil
	}
	r, err := m.cfg.Function()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.instances[slot] = r
	m.mu.Unlock()
	return r, nil
}

// event is the SQS event Lambda hands the function for msgs.
func (m *Mapping) event(msgs []types.Message) events.SQSEvent {
	var ev events.SQSEvent
	for _, msg := range msgs {
		attrs := map[string]string{}
		for k, v := range msg.Attributes {
			attrs[k] = v
		}
		ev.Records = append(ev.Records, events.SQSMessage{
			MessageId: aws.ToString(msg.MessageId), ReceiptHandle: aws.ToString(msg.ReceiptHandle), Body: aws.ToString(msg.Body),
			Md5OfBody: aws.ToString(msg.MD5OfBody), Attributes: attrs, EventSource: "aws:sqs", EventSourceARN: m.cfg.QueueARN,
			AWSRegion: "us-east-1",
		})
	}
	return ev
}

// NewQueue creates an SQS queue with a dead-letter queue (maxReceive
// deliveries, then dead-lettered) and the given visibility timeout, as
// template.yaml's RefreshQueue: for make dev, the benchmarks and tests.
// It returns both queues' URLs and the queue's ARN.
func NewQueue(ctx context.Context, client interface {
	CreateQueue(context.Context, *sqs.CreateQueueInput, ...func(*sqs.Options)) (*sqs.CreateQueueOutput, error)
	GetQueueAttributes(context.Context, *sqs.GetQueueAttributesInput, ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error)
}, name string, visibility time.Duration, maxReceive int) (queueURL, dlqURL, queueARN string, err error) {
	arn := func(url *string) (string, error) {
		out, err := client.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: url, AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameQueueArn}})
		if err != nil {
			return "", fmt.Errorf("lambdarun: queue attributes: %w", err)
		}
		return out.Attributes[string(types.QueueAttributeNameQueueArn)], nil
	}
	dlq, err := client.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name + "-dlq")})
	if err != nil {
		return "", "", "", fmt.Errorf("lambdarun: create dead-letter queue: %w", err)
	}
	dlqARN, err := arn(dlq.QueueUrl)
	if err != nil {
		return "", "", "", err
	}
	redrive, _ := json.Marshal(map[string]any{"deadLetterTargetArn": dlqARN, "maxReceiveCount": maxReceive})
	q, err := client.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name), Attributes: map[string]string{
		"VisibilityTimeout": strconv.Itoa(int(visibility / time.Second)), "RedrivePolicy": string(redrive)}})
	if err != nil {
		return "", "", "", fmt.Errorf("lambdarun: create queue: %w", err)
	}
	qARN, err := arn(q.QueueUrl)
	if err != nil {
		return "", "", "", err
	}
	return aws.ToString(q.QueueUrl), aws.ToString(dlq.QueueUrl), qARN, nil
}
