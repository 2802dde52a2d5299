// Package setup builds the broker from the environment the way every
// function needs it: the variables DESIGN.md lists, the AWS SDK's default
// configuration (which honours AWS_ENDPOINT_URL_<SERVICE> for the local
// stand-ins), and JSON logs and EMF metrics on stdout.
package setup

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/httpapi"
	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
	"github.com/tokenbroker/tokenbroker/shared/workqueue"
)

// Env reads a variable; tests pass a map's lookup.
type Env func(string) (string, bool)

// Option changes what Broker builds.
type Option func(*options)

type options struct {
	withoutClientSecrets bool
}

// WithoutClientSecrets builds a broker whose configuration never reads a
// client secret (config.Loader.NoSecrets): provider configs and the key
// ring are read by name, and every provider's secret is empty. It is for
// the authorize function, which only builds authorize URLs and stores
// states, and whose role in template.yaml may not read the secrets.
func WithoutClientSecrets() Option {
	return func(o *options) { o.withoutClientSecrets = true }
}

// Broker builds a broker and its logger from the environment. A missing
// TABLE_NAME or a malformed number is an error naming the variable.
func Broker(ctx context.Context, env Env, opts ...Option) (*broker.Broker, *slog.Logger, error) {
	var want options
	for _, opt := range opts {
		opt(&want)
	}
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
	shards, err := number("DUE_SHARDS", 8, 1, store.MaxDueShards)
	if err != nil {
		return nil, log, err
	}
	providerConcurrency, err := number("PROVIDER_CONCURRENCY", 0, 0, 256)
	if err != nil {
		return nil, log, err
	}
	cfg, err := awsConfig(get)
	if err != nil {
		return nil, log, err
	}
	var allow []string
	for _, o := range strings.Split(get("RETURN_TO_ALLOWLIST", ""), ",") {
		if o = strings.TrimSpace(o); o != "" {
			allow = append(allow, o)
		}
	}
	parameters := ssm.NewFromConfig(cfg, func(o *ssm.Options) { o.BaseEndpoint = endpoint(get, "SSM") })
	loader := &config.Loader{SSM: parameters, Prefix: get("SSM_PREFIX", config.DefaultPrefix)}
	if want.withoutClientSecrets {
		loader = &config.Loader{NoSecrets: parameters, Prefix: loader.Prefix}
	}
	b := &broker.Broker{
		Store:   &store.Store{DB: DynamoDB(cfg, endpoint(get, "DYNAMODB")), Table: table, Shards: shards},
		Config:  loader,
		HTTP:    ProviderHTTP(),
		Log:     log,
		Metrics: &telemetry.Metrics{W: os.Stdout},
		Notifier: &telemetry.EventBridge{Client: eventbridge.NewFromConfig(cfg, func(o *eventbridge.Options) {
			o.BaseEndpoint = endpoint(get, "EVENTBRIDGE")
		}), Bus: get("EVENT_BUS_NAME", "default")},
		PublicBaseURL:       strings.TrimRight(get("PUBLIC_BASE_URL", ""), "/"),
		ReturnToAllowlist:   allow,
		Concurrency:         concurrency,
		ProviderConcurrency: providerConcurrency,
		HomeRegion:          get("HOME_REGION", ""),
		Region:              cfg.Region,
	}
	// Fan-out mode: the tick queues units on REFRESH_QUEUE_URL (template.yaml
	// sets it only when RefreshFanOut is true).
	if queueURL := get("REFRESH_QUEUE_URL", ""); queueURL != "" {
		b.Queue = &workqueue.Queue{URL: queueURL, SQS: sqs.NewFromConfig(cfg, func(o *sqs.Options) { o.BaseEndpoint = endpoint(get, "SQS") })}
	}
	if claim := get("UNIT_CLAIM_SECONDS", ""); claim != "" {
		n, err := number("UNIT_CLAIM_SECONDS", 0, 1, 3600)
		if err != nil {
			return nil, log, err
		}
		b.UnitClaim = time.Duration(n) * time.Second
	}
	return b, log, nil
}

// MaxProviderConns is how many idle connections to one provider host the
// functions keep: RefreshConcurrency's maximum, the most refreshes one
// instance has in flight.
const MaxProviderConns = 64

// ProviderHTTP is the client for provider calls. net/http's default keeps
// two idle connections per host, so of a round of eight refreshes to one
// provider six would open a new connection (a TCP and a TLS handshake,
// across the internet) and drop it afterwards; this one keeps as many as
// the refreshes in flight.
func ProviderHTTP() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = MaxProviderConns
	t.MaxIdleConns = 4 * MaxProviderConns
	return &http.Client{Timeout: provider.DefaultTimeout, Transport: t}
}

// DynamoDBAttemptTimeout bounds one HTTP attempt to DynamoDB, so a stalled
// connection is retried instead of eating the refresh's time budget.
const DynamoDBAttemptTimeout = 3 * time.Second

// DynamoDB is the DynamoDB client the functions use. Its own retries fit
// the broker's time budget: three attempts, each bounded, a few tens of
// milliseconds apart (the SDK's default backoff waits up to seconds, and
// its retry quota can stop retrying in the middle of a fault storm). The
// broker retries the writes that must survive on top of this, with the
// same request. endpoint overrides the service endpoint when set.
func DynamoDB(cfg aws.Config, endpoint *string) *dynamodb.Client {
	return dynamodb.NewFromConfig(cfg, func(o *dynamodb.Options) {
		o.BaseEndpoint = endpoint
		o.HTTPClient = awshttp.NewBuildableClient().WithTimeout(DynamoDBAttemptTimeout)
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = 3
			so.RateLimiter = ratelimit.None
			so.Backoff = retry.BackoffDelayerFunc(func(attempt int, _ error) (time.Duration, error) {
				d := min(25*time.Millisecond<<min(attempt, 4), 200*time.Millisecond)
				return d/2 + time.Duration(rand.Int64N(int64(d/2))), nil
			})
		})
	})
}

// awsConfig builds the SDK configuration from the environment Lambda
// provides: AWS_REGION and the execution role's credentials in
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN. In Lambda
// that is exactly what config.LoadDefaultConfig resolves to; building it
// here leaves out the shared-file, SSO, STS and IMDS providers that can
// never apply, which keeps each bootstrap about a megabyte smaller.
func awsConfig(get func(string, string) string) (aws.Config, error) {
	region := get("AWS_REGION", get("AWS_DEFAULT_REGION", ""))
	if region == "" {
		return aws.Config{}, fmt.Errorf("setup: AWS_REGION is not set (Lambda sets it; set it for local runs)")
	}
	key, secret := get("AWS_ACCESS_KEY_ID", ""), get("AWS_SECRET_ACCESS_KEY", "")
	if key == "" || secret == "" {
		return aws.Config{}, fmt.Errorf("setup: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set (Lambda sets them from the execution role; set them for local runs)")
	}
	return aws.Config{
		Region:      region,
		Credentials: aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(key, secret, get("AWS_SESSION_TOKEN", ""))),
	}, nil
}

// endpoint honours the SDK's service-specific override
// (AWS_ENDPOINT_URL_<SERVICE>, then AWS_ENDPOINT_URL), as the local
// stand-ins need.
func endpoint(get func(string, string) string, service string) *string {
	if v := get("AWS_ENDPOINT_URL_"+service, get("AWS_ENDPOINT_URL", "")); v != "" {
		return &v
	}
	return nil
}

// Fail reports a setup error the way Lambda shows init failures (the
// runtime client turns the exit into Runtime.ExitError) and exits.
func Fail(log *slog.Logger, err error) {
	log.Error("function cannot start", "error", err.Error())
	os.Exit(1)
}

// Handler builds the HTTP mapping over b, with the caller allowlists of
// the environment: ALLOWED_ACCOUNTS (comma-separated 12-digit account ids)
// and ALLOWED_ORG_ID (an AWS Organization id). A malformed value is an
// error naming the variable.
func Handler(b *broker.Broker, log *slog.Logger, env Env) (*httpapi.Handler, error) {
	if env == nil {
		env = os.LookupEnv
	}
	h := &httpapi.Handler{Core: b, Log: log}
	if v, _ := env("ALLOWED_ACCOUNTS"); strings.TrimSpace(v) != "" {
		for _, id := range strings.Split(v, ",") {
			id = strings.TrimSpace(id)
			if len(id) != 12 || strings.Trim(id, "0123456789") != "" {
				return nil, fmt.Errorf("setup: ALLOWED_ACCOUNTS=%q must be 12-digit AWS account ids, comma-separated", v)
			}
			h.AllowedAccounts = append(h.AllowedAccounts, id)
		}
	}
	if v, _ := env("ALLOWED_ORG_ID"); strings.TrimSpace(v) != "" {
		v = strings.TrimSpace(v)
		if !strings.HasPrefix(v, "o-") || len(v) < 12 || len(v) > 34 {
			return nil, fmt.Errorf("setup: ALLOWED_ORG_ID=%q is not an AWS Organization id (o-…)", v)
		}
		h.AllowedOrgID = v
	}
	return h, nil
}
