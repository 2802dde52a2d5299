// Package setup builds the broker from the environment the way every
// function needs it: the variables DESIGN.md lists, the AWS SDK's default
// configuration (which honours AWS_ENDPOINT_URL_<SERVICE> for the local
// stand-ins), and JSON logs and EMF metrics on stdout.
package setup

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"tokenbroker/shared/broker"
	"tokenbroker/shared/config"
	"tokenbroker/shared/provider"
	"tokenbroker/shared/store"
	"tokenbroker/shared/telemetry"
)

// Env reads a variable; tests pass a map's lookup.
type Env func(string) (string, bool)

// Broker builds a broker and its logger from the environment. A missing
// TABLE_NAME or a malformed number is an error naming the variable.
func Broker(ctx context.Context, env Env) (*broker.Broker, *slog.Logger, error) {
	if env == nil {
		env = os.LookupEnv
	}
	get := func(name, def string) string {
		if v, ok := env(name); ok && strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v)
		}
		return def
	}
	number := func(name string, def, lo, hi int) (int, error) {
		v := get(name, "")
		if v == "" {
			return def, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return 0, fmt.Errorf("setup: %s=%q must be a whole number from %d to %d", name, v, lo, hi)
		}
		return n, nil
	}
	log := telemetry.NewLogger(os.Stdout, get("LOG_LEVEL", "info"))
	table := get("TABLE_NAME", "")
	if table == "" {
		return nil, log, fmt.Errorf("setup: TABLE_NAME is not set; it names the DynamoDB table (template.yaml sets it)")
	}
	concurrency, err := number("REFRESH_CONCURRENCY", 8, 1, 256)
	if err != nil {
		return nil, log, err
	}
	shards, err := number("DUE_SHARDS", 8, 1, 256)
	if err != nil {
		return nil, log, err
	}
	providerConcurrency, err := number("PROVIDER_CONCURRENCY", 0, 0, 256)
	if err != nil {
		return nil, log, err
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, log, fmt.Errorf("setup: AWS configuration: %w", err)
	}
	var allow []string
	for _, o := range strings.Split(get("RETURN_TO_ALLOWLIST", ""), ",") {
		if o = strings.TrimSpace(o); o != "" {
			allow = append(allow, o)
		}
	}
	b := &broker.Broker{
		Store:               &store.Store{DB: dynamodb.NewFromConfig(cfg), Table: table, Shards: shards},
		Config:              &config.Loader{SSM: ssm.NewFromConfig(cfg), Prefix: get("SSM_PREFIX", config.DefaultPrefix)},
		HTTP:                &http.Client{Timeout: provider.DefaultTimeout},
		Log:                 log,
		Metrics:             &telemetry.Metrics{W: os.Stdout},
		Notifier:            &telemetry.EventBridge{Client: eventbridge.NewFromConfig(cfg), Bus: get("EVENT_BUS_NAME", "default")},
		PublicBaseURL:       strings.TrimRight(get("PUBLIC_BASE_URL", ""), "/"),
		ReturnToAllowlist:   allow,
		Concurrency:         concurrency,
		ProviderConcurrency: providerConcurrency,
	}
	return b, log, nil
}

// Fail reports a setup error the way Lambda shows init failures (the
// runtime client turns the exit into Runtime.ExitError) and exits.
func Fail(log *slog.Logger, err error) {
	log.Error("function cannot start", "error", err.Error())
	os.Exit(1)
}
