// Command standins starts DynamoDB Local and moto_server, each behind its
// guard proxy on a free loopback port (Host checked, no CORS; see
// localaws), runs a command with AWS_ENDPOINT_URL_DYNAMODB, _SSM and
// _EVENTBRIDGE pointing at the proxies, and stops all when the command ends or
// on Ctrl-C. make test runs the whole suite under it, so every test package
// shares one pair of stand-ins and none is left running.
//
//	go run ./shared/local/cmd/standins -- go test ./...
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: standins -- command [args…]")
		os.Exit(2)
	}
	os.Exit(run(args))
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Always start fresh stand-ins: endpoints inherited from a shell would
	// point at something this command does not own.
	os.Unsetenv(localaws.EnvDynamoDB)
	os.Unsetenv(localaws.EnvSSM)
	ep, stopStandins, err := localaws.Setup(ctx)
	defer stopStandins()
	if err != nil {
		fmt.Fprintln(os.Stderr, "standins:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "standins: DynamoDB Local at %s, moto (SSM, EventBridge) at %s (guard proxies: loopback, Host checked, no CORS)\n", ep.DynamoDB, ep.SSM)
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(),
		localaws.EnvDynamoDB+"="+ep.DynamoDB, localaws.EnvSSM+"="+ep.SSM, localaws.EnvEventBridge+"="+ep.SSM,
		"AWS_ACCESS_KEY_ID=local", "AWS_SECRET_ACCESS_KEY=local", "AWS_REGION="+localaws.Region)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "standins:", err)
		return 1
	}
	return 0
}
