// Command refresher runs on the EventBridge schedule. In-process mode
// (the default) it refreshes every connection whose refresh time has come;
// in fan-out mode (REFRESH_QUEUE_URL set) it queues that work for the
// worker function. Either way it returns a JSON summary.
package main

import (
	"context"
	"encoding/json"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/setup"
)

func main() {
	b, log, err := setup.Broker(context.Background(), nil)
	if err != nil {
		setup.Fail(log, err)
	}
	lambda.Start(func(ctx context.Context, _ json.RawMessage) (*broker.Summary, error) {
		return b.Tick(ctx)
	})
}
