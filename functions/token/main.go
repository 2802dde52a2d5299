// Command token hands out tokens and manages connections: GET …/token, GET status, POST …/refresh, DELETE.
package main

import (
	"context"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/tokenbroker/tokenbroker/shared/setup"
)

func main() {
	b, log, err := setup.Broker(context.Background(), nil)
	if err != nil {
		setup.Fail(log, err)
	}
	h, err := setup.Handler(b, log, nil)
	if err != nil {
		setup.Fail(log, err)
	}
	lambda.Start(h.Connections)
}
