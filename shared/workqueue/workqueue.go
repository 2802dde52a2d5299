// Package workqueue is the SQS side of the refresher's fan-out mode: the
// tick's messages, one per unit of work (broker.Unit), sent in batches of
// ten. The worker function receives them from Lambda's event source
// mapping, so nothing here receives.
package workqueue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/tokenbroker/tokenbroker/shared/broker"
)

// SQSAPI is the part of the SQS client the queue uses; *sqs.Client
// satisfies it.
type SQSAPI interface {
	SendMessageBatch(ctx context.Context, in *sqs.SendMessageBatchInput, optFns ...func(*sqs.Options)) (*sqs.SendMessageBatchOutput, error)
}

// Queue sends units to one SQS queue.
type Queue struct {
	SQS SQSAPI
	URL string
}

// batch is SQS's limit of entries per SendMessageBatch.
const batch = 10

// Send queues one message per unit; the result holds, per unit, nil when
// SQS accepted it. A batch that fails as a whole fails each of its units.
func (q *Queue) Send(ctx context.Context, units []broker.Unit) []error {
	errs := make([]error, len(units))
	for start := 0; start < len(units); start += batch {
		end := min(start+batch, len(units))
		entries := make([]types.SendMessageBatchRequestEntry, 0, end-start)
		for i := start; i < end; i++ {
			body, err := json.Marshal(units[i])
			if err != nil {
				errs[i] = err
				continue
			}
			entries = append(entries, types.SendMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), MessageBody: aws.String(string(body))})
		}
		out, err := q.SQS.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: aws.String(q.URL), Entries: entries})
		if err != nil {
			for i := start; i < end; i++ {
				if errs[i] == nil {
					errs[i] = fmt.Errorf("workqueue: send: %w", err)
				}
			}
			continue
		}
		for _, f := range out.Failed {
			i, convErr := strconv.Atoi(aws.ToString(f.Id))
			if convErr != nil || i < start || i >= end {
				continue
			}
			errs[i] = fmt.Errorf("workqueue: message refused: %s %s", aws.ToString(f.Code), aws.ToString(f.Message))
		}
		// An entry SQS reports neither way is not known to be queued.
		ok := map[string]bool{}
		for _, s := range out.Successful {
			ok[aws.ToString(s.Id)] = true
		}
		for i := start; i < end; i++ {
			if errs[i] == nil && !ok[strconv.Itoa(i)] {
				errs[i] = errors.New("workqueue: SQS did not report the message as sent")
			}
		}
	}
	return errs
}
