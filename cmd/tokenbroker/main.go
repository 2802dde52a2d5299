// Command tokenbroker is the operator's tool for a tokenbroker
// deployment: it registers providers and the token key ring in SSM (with
// the functions' own parsers, so what it accepts the functions accept),
// starts connections, answers "who must re-authorize?", hands out and
// refreshes tokens, imports grants, and checks a deployment.
//
// It speaks to the API with shared/client (SigV4, the AWS SDK's default
// credentials) and to SSM and DynamoDB with the SDK. Secrets are read
// from stdin only, never from flags, and never printed, except the access
// token that `tokenbroker token` is asked for.
//
// Exit status: 0 on success, 1 when the broker or AWS answers an error, 2
// on a usage error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/spf13/cobra"

	"github.com/tokenbroker/tokenbroker/shared/client"
	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/operator"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// usageError is a command line the CLI cannot act on: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// app holds the global flags and what the commands share.
type app struct {
	api, region, profile, prefix string
	json                         bool

	stdin          io.Reader
	stdout, stderr io.Writer

	awsCfg *aws.Config
}

// run is the whole CLI, for main and for the tests.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	// The client's errors already say where they come from.
	msg := err.Error()
	if !strings.HasPrefix(msg, "tokenbroker: ") {
		msg = "tokenbroker: " + msg
	}
	fmt.Fprintln(stderr, msg)
	if isUsage(err) {
		if cmd != nil {
			fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
		return exitUsage
	}
	return exitError
}

// isUsage tells usage errors from failures. cobra reports an unknown
// command with a plain error, which is recognised by its text, the only
// thing cobra offers.
func isUsage(err error) bool {
	var u usageError
	return errors.As(err, &u) || strings.HasPrefix(err.Error(), "unknown command ")
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "tokenbroker",
		Short: "Operate a tokenbroker deployment: providers, keys, connections and tokens",
		Long: `tokenbroker operates a tokenbroker deployment.

It writes provider configs and the token key ring to SSM Parameter Store
(validated by the functions' own parsers first), and calls the broker's API
(signed with SigV4 by the AWS SDK's default credentials) to connect users,
list and check connections, and fetch, refresh, import and delete tokens.

Secrets are read from stdin (--client-secret-stdin, --refresh-token-stdin,
--rejected-token-stdin), never from flags, and never printed.

Exit status: 0 on success, 1 on an error answer, 2 on a usage error.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: false},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	prefix := os.Getenv("TOKENBROKER_SSM_PREFIX")
	if prefix == "" {
		prefix = config.DefaultPrefix
	}
	f := root.PersistentFlags()
	f.StringVar(&a.api, "api", os.Getenv("TOKENBROKER_API"), "base URL of the broker's API, the stack's ApiUrl output (env TOKENBROKER_API)")
	f.StringVar(&a.region, "region", "", "AWS region (default: the SDK's: AWS_REGION, the profile)")
	f.StringVar(&a.profile, "profile", "", "AWS shared-config profile (default: the SDK's: AWS_PROFILE)")
	f.StringVar(&a.prefix, "ssm-prefix", prefix, "root of the SSM parameters (env TOKENBROKER_SSM_PREFIX)")
	f.BoolVar(&a.json, "json", false, "print JSON for scripts instead of tables")

	root.AddGroup(&cobra.Group{ID: "setup", Title: "Set up a deployment:"}, &cobra.Group{ID: "conn", Title: "Connections and tokens:"})
	for _, c := range []*cobra.Command{a.providerCommand(), a.keysCommand(), a.doctorCommand()} {
		c.GroupID = "setup"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{a.connectCommand(), a.statusCommand(), a.listCommand(), a.tokenCommand(),
		a.refreshCommand(), a.deleteCommand(), a.importCommand()} {
		c.GroupID = "conn"
		root.AddCommand(c)
	}
	return root
}

// args checks the positional arguments, as a usage error.
func args(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, got []string) error {
		if len(got) != len(names) {
			return usagef("%s takes %d arguments (%s), got %d", cmd.CommandPath(), len(names), strings.Join(names, " "), len(got))
		}
		return nil
	}
}

// aws loads the SDK's default configuration with --region and --profile.
func (a *app) aws(ctx context.Context) (aws.Config, error) {
	if a.awsCfg != nil {
		return *a.awsCfg, nil
	}
	var opts []func(*awsconfig.LoadOptions) error
	if a.region != "" {
		opts = append(opts, awsconfig.WithRegion(a.region))
	}
	if a.profile != "" {
		opts = append(opts, awsconfig.WithSharedConfigProfile(a.profile))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("load the AWS configuration: %w", err)
	}
	a.awsCfg = &cfg
	return cfg, nil
}

// operator is the SSM side, under --ssm-prefix.
func (a *app) operator(ctx context.Context) (*operator.Operator, error) {
	cfg, err := a.aws(ctx)
	if err != nil {
		return nil, err
	}
	if cfg.Region == "" {
		return nil, usagef("no AWS region: pass --region or set AWS_REGION")
	}
	return &operator.Operator{SSM: ssm.NewFromConfig(cfg), Prefix: a.prefix}, nil
}

// dynamodb is a DynamoDB client from the same configuration.
func (a *app) dynamodb(ctx context.Context) (*dynamodb.Client, error) {
	cfg, err := a.aws(ctx)
	if err != nil {
		return nil, err
	}
	return dynamodb.NewFromConfig(cfg), nil
}

// client is the API side, at --api.
func (a *app) client(ctx context.Context) (*client.Client, error) {
	if a.api == "" {
		return nil, usagef("no API: pass --api or set TOKENBROKER_API (the stack's ApiUrl output)")
	}
	cfg, err := a.aws(ctx)
	if err != nil {
		return nil, err
	}
	if cfg.Credentials == nil {
		return nil, errors.New("the AWS configuration has no credentials to sign with")
	}
	opts := []client.Option{client.WithCredentials(cfg.Credentials)}
	// --region wins; otherwise the client takes an execute-api host's own
	// region, and a custom domain falls back to the SDK's region.
	if a.region != "" {
		opts = append(opts, client.WithRegion(a.region))
	} else if !strings.Contains(a.api, ".execute-api.") && cfg.Region != "" {
		opts = append(opts, client.WithRegion(cfg.Region))
	}
	c, err := client.New(a.api, opts...)
	if err != nil {
		return nil, usageError{err}
	}
	return c, nil
}

// print writes v as JSON with --json, else calls human.
func (a *app) print(v any, human func(w io.Writer)) error {
	if a.json {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	human(a.stdout)
	return nil
}

// readSecret reads one secret from stdin: at most 64 KiB, surrounding
// white space (a trailing newline) dropped. It is never echoed.
func (a *app) readSecret(what string) (string, error) {
	raw, err := io.ReadAll(io.LimitReader(a.stdin, 64<<10+1))
	if err != nil {
		return "", fmt.Errorf("read the %s from stdin: %w", what, err)
	}
	if len(raw) > 64<<10 {
		return "", usagef("the %s on stdin is longer than 64 KiB", what)
	}
	s := strings.TrimSpace(string(raw))
	if s == "" {
		return "", usagef("stdin is empty: pipe the %s in, e.g. printf %%s \"$SECRET\" | tokenbroker …", what)
	}
	return s, nil
}

// rfc3339 is t in UTC, or nil (JSON null) when zero.
func rfc3339(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(time.RFC3339)
}

// human is t for a table: "-" when zero, else UTC and how far away.
func human(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Until(t).Round(time.Second)
	rel := "in " + d.String()
	if d < 0 {
		rel = (-d).String() + " ago"
	}
	return t.UTC().Format(time.RFC3339) + " (" + rel + ")"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
