// Command refresher runs on the EventBridge schedule and refreshes every connection
// whose refresh time has come, returning a JSON summary.
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
		return b.RefreshDue(ctx)
	})
}
