// Command callback completes an authorization: GET /callback/{provider}.
package main

import (
	"context"

	"github.com/aws/aws-lambda-go/lambda"

	"tokenbroker/shared/httpapi"
	"tokenbroker/shared/setup"
)

func main() {
	b, log, err := setup.Broker(context.Background(), nil)
	if err != nil {
		setup.Fail(log, err)
	}
	h := &httpapi.Handler{Core: b, Log: log}
	lambda.Start(h.Callback)
}
