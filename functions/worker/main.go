// Command worker is the refresher's fan-out worker (RefreshFanOut=true):
// Lambda's SQS event source mapping hands it a batch of units (one shard
// of one provider's due index each), it refreshes their due connections
// and reports the units it did not finish as batch item failures.
package main

import (
	"context"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/setup"
)

func main() {
	b, log, err := setup.Broker(context.Background(), nil)
	if err != nil {
		setup.Fail(log, err)
	}
	lambda.Start(func(ctx context.Context, ev events.SQSEvent) (events.SQSEventResponse, error) {
		resp := events.SQSEventResponse{BatchItemFailures: []events.SQSBatchItemFailure{}}
		var units []broker.Unit
		var ids []string
		for _, m := range ev.Records {
			u, err := broker.ParseUnit(m.Body)
			if err != nil {
				// Kept, not dropped: it comes back and ends in the
				// dead-letter queue, whose alarm shows it.
				log.ErrorContext(ctx, "queue message refused", "message_id", m.MessageId, "error", err.Error())
				resp.BatchItemFailures = append(resp.BatchItemFailures, events.SQSBatchItemFailure{ItemIdentifier: m.MessageId})
				continue
			}
			units = append(units, u)
			ids = append(ids, m.MessageId)
		}
		_, retry := b.Work(ctx, units)
		for i, again := range retry {
			if again {
				resp.BatchItemFailures = append(resp.BatchItemFailures, events.SQSBatchItemFailure{ItemIdentifier: ids[i]})
			}
		}
		return resp, nil
	})
}
