// Command authorize starts an authorization: POST /connections/{provider}/{connection}/authorize.
package main

import (
	"context"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/tokenbroker/tokenbroker/shared/setup"
)

func main() {
	// Authorize only builds authorize URLs: it never reads a client secret,
	// and its role in template.yaml may not.
	b, log, err := setup.Broker(context.Background(), nil, setup.WithoutClientSecrets())
	if err != nil {
		setup.Fail(log, err)
	}
	h, err := setup.Handler(b, log, nil)
	if err != nil {
		setup.Fail(log, err)
	}
	lambda.Start(h.Authorize)
}
