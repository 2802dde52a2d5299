package workqueue_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/workqueue"
)

// sqsFunc is an SQS client made of one function.
type sqsFunc func(*sqs.SendMessageBatchInput) (*sqs.SendMessageBatchOutput, error)

func (f sqsFunc) SendMessageBatch(_ context.Context, in *sqs.SendMessageBatchInput, _ ...func(*sqs.Options)) (*sqs.SendMessageBatchOutput, error) {
	return f(in)
}

// Units go out ten to a batch, one message each that the worker can parse
// back; a refused entry fails exactly its unit, a failed batch its ten,
// and an entry SQS reports neither way is not taken as sent.
func TestSendReportsEachUnit(t *testing.T) {
	var units []broker.Unit
	for i := range 23 {
		units = append(units, broker.Unit{Provider: "github", Shard: i % 64, Token: "0123456789abcdef0123456789abcdef"})
	}
	var batches []int
	q := &workqueue.Queue{URL: "https://sqs.example/q", SQS: sqsFunc(func(in *sqs.SendMessageBatchInput) (*sqs.SendMessageBatchOutput, error) {
		batches = append(batches, len(in.Entries))
		if len(batches) == 2 {
			return nil, errors.New("throttled")
		}
		out := &sqs.SendMessageBatchOutput{}
		for i, e := range in.Entries {
			var u broker.Unit
			if err := json.Unmarshal([]byte(aws.ToString(e.MessageBody)), &u); err != nil {
				t.Fatalf("message body %s", aws.ToString(e.MessageBody))
			}
			if _, err := broker.ParseUnit(aws.ToString(e.MessageBody)); err != nil {
				t.Fatalf("the worker cannot parse what is sent: %v", err)
			}
			switch i {
			case 0:
				out.Failed = append(out.Failed, types.BatchResultErrorEntry{Id: e.Id, Code: aws.String("InternalError"), SenderFault: false})
			case 1:
				// reported neither way
			default:
				out.Successful = append(out.Successful, types.SendMessageBatchResultEntry{Id: e.Id})
			}
		}
		return out, nil
	})}
	errs := q.Send(context.Background(), units)
	if len(batches) != 3 || batches[0] != 10 || batches[1] != 10 || batches[2] != 3 {
		t.Fatalf("batches %v, want 10, 10, 3", batches)
	}
	failed := 0
	for i, err := range errs {
		wantFail := i%10 == 0 || i%10 == 1 || (i >= 10 && i < 20)
		if (err != nil) != wantFail {
			t.Errorf("unit %d: %v, want failed %v", i, err, wantFail)
		}
		if err != nil {
			failed++
		}
	}
	if failed != 14 {
		t.Errorf("%d units failed, want 14 (2 + 10 + 2)", failed)
	}
}
