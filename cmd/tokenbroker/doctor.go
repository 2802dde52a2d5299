package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/spf13/cobra"

	"github.com/tokenbroker/tokenbroker/shared/client"
	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/operator"
)

// check is one line of doctor's report.
type check struct {
	Check   string `json:"check"`
	OK      bool   `json:"ok"`
	Skipped bool   `json:"skipped,omitempty"`
	Detail  string `json:"detail"`
	Fix     string `json:"fix,omitempty"`
}

func (a *app) doctorCommand() *cobra.Command {
	var tableName string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check a deployment: the API, the key ring, every provider, the table",
		Long: `Check a deployment, one line per check, each failure with how to fix it:
the API answers a signed request; the key ring exists and parses; every
provider config parses and has its client secret; the table exists.
Exit status 1 when any check fails.`,
		Args: args(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var checks []check
			checks = append(checks, a.checkAPI(ctx))
			op, err := a.operator(ctx)
			if err != nil {
				checks = append(checks, check{Check: "ssm", Detail: err.Error(), Fix: "pass --region/--profile, or set AWS_REGION and credentials"})
			} else {
				checks = append(checks, a.checkKeys(ctx, op))
				checks = append(checks, a.checkProviders(ctx, op)...)
			}
			checks = append(checks, a.checkTable(ctx, tableName))
			failed := 0
			for _, c := range checks {
				if !c.OK && !c.Skipped {
					failed++
				}
			}
			if err := a.print(map[string]any{"ok": failed == 0, "checks": checks}, func(w io.Writer) {
				for _, c := range checks {
					mark := "ok  "
					switch {
					case c.Skipped:
						mark = "skip"
					case !c.OK:
						mark = "FAIL"
					}
					fmt.Fprintf(w, "%s  %-22s %s\n", mark, c.Check, c.Detail)
					if c.Fix != "" && !c.OK {
						fmt.Fprintf(w, "      %-22s fix: %s\n", "", c.Fix)
					}
				}
			}); err != nil {
				return err
			}
			if failed > 0 {
				return fmt.Errorf("%d check(s) failed", failed)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&tableName, "table", os.Getenv("TOKENBROKER_TABLE"), "the DynamoDB table, the stack's TableName output (env TOKENBROKER_TABLE)")
	return cmd
}

func (a *app) checkAPI(ctx context.Context) check {
	c := check{Check: "api"}
	if a.api == "" {
		c.Detail, c.Fix = "no API URL", "pass --api or set TOKENBROKER_API to the stack's ApiUrl output"
		return c
	}
	cl, err := a.client(ctx)
	if err != nil {
		c.Detail, c.Fix = err.Error(), "check --api, --region and the AWS credentials"
		return c
	}
	// A status request for a provider no one configures: the broker's own
	// 404 proves the signature was accepted and the function ran.
	_, err = cl.Status(ctx, "tokenbroker-doctor", "check")
	var answer *client.Error
	switch {
	case err == nil || errors.Is(err, client.ErrNotFound):
		c.OK, c.Detail = true, a.api+" answers signed requests"
	case errors.As(err, &answer) && (answer.Status == http.StatusForbidden || answer.Status == http.StatusUnauthorized):
		c.Detail = fmt.Sprintf("%s refused the signed request (%d %s: %s)", a.api, answer.Status, answer.Code, answer.Message)
		c.Fix = "sign for the API's region (--region), and give the caller execute-api:Invoke on the API (docs/iam/)"
	default:
		c.Detail = fmt.Sprintf("%s: %v", a.api, err)
		c.Fix = "check --api: the stack's ApiUrl output (sam list stack-outputs)"
	}
	return c
}

func (a *app) checkKeys(ctx context.Context, op *operator.Operator) check {
	c := check{Check: "key ring"}
	ring, err := op.Keys(ctx)
	switch {
	case errors.Is(err, operator.ErrNotFound):
		c.Detail, c.Fix = config.KeyRingName(a.prefix)+" does not exist", "tokenbroker keys init"
	case err != nil:
		c.Detail, c.Fix = err.Error(), "repair "+config.KeyRingName(a.prefix)+", or check the SSM and KMS permissions"
	default:
		c.OK, c.Detail = true, fmt.Sprintf("%s parses: %d key(s), active %s", config.KeyRingName(a.prefix), len(ring.IDs), ring.Active)
	}
	return c
}

func (a *app) checkProviders(ctx context.Context, op *operator.Operator) []check {
	infos, err := op.Providers(ctx)
	if err != nil {
		return []check{{Check: "providers", Detail: err.Error(), Fix: "check the SSM permissions (ssm:DescribeParameters, ssm:GetParameters)"}}
	}
	if len(infos) == 0 {
		return []check{{Check: "providers", Detail: "no provider under " + config.Prefix(a.prefix) + "/providers/",
			Fix: "tokenbroker provider put NAME --preset … --client-id … --client-secret-stdin"}}
	}
	var out []check
	for _, p := range infos {
		c := check{Check: "provider " + p.Name}
		if p.Problem != nil {
			c.Detail = p.Problem.Error()
			c.Fix = "tokenbroker provider put " + p.Name + " … --client-secret-stdin (tokenbroker provider put --help lists the fields)"
		} else {
			c.OK, c.Detail = true, fmt.Sprintf("%s config parses and has its client secret", p.Config.Kind)
		}
		out = append(out, c)
	}
	return out
}

func (a *app) checkTable(ctx context.Context, name string) check {
	c := check{Check: "table"}
	if name == "" {
		c.Skipped, c.Detail = true, "pass --table (the stack's TableName output) or set TOKENBROKER_TABLE to check it"
		return c
	}
	db, err := a.dynamodb(ctx)
	if err != nil {
		c.Detail = err.Error()
		return c
	}
	out, err := db.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(name)})
	var missing *types.ResourceNotFoundException
	switch {
	case errors.As(err, &missing):
		c.Detail, c.Fix = "table "+name+" does not exist", "deploy the stack (sam deploy), or pass its TableName output with --table"
	case err != nil:
		c.Detail, c.Fix = fmt.Sprintf("describe table %s: %v", name, err), "check the region and dynamodb:DescribeTable permission"
	case out.Table.TableStatus != types.TableStatusActive:
		c.Detail = fmt.Sprintf("table %s is %s", name, out.Table.TableStatus)
		c.Fix = "wait for the stack update to finish"
	default:
		c.OK, c.Detail = true, "table "+name+" is ACTIVE"
	}
	return c
}
