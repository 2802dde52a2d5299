// Command invoke runs one real bootstrap under the Runtime API runner with
// one event, the way `sam local invoke` does, against a throwaway local
// stack (DynamoDB Local, moto, the provider emulators, demo providers in
// SSM). It prints the function's answer on stdout and its logs on stderr.
//
//	go run ./shared/local/cmd/invoke -bootstrap .build/local/token/bootstrap -function token -event events/token.json
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
)

func main() {
	bootstrap := flag.String("bootstrap", "", "path of the built bootstrap")
	function := flag.String("function", "function", "function name")
	event := flag.String("event", "", "event JSON file")
	timeout := flag.Duration("timeout", 30*time.Second, "invoke timeout")
	flag.Parse()
	if *bootstrap == "" || *event == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*bootstrap, *function, *event, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "invoke:", err)
		os.Exit(1)
	}
}

func run(bootstrap, function, eventPath string, timeout time.Duration) error {
	payload, err := os.ReadFile(eventPath)
	if err != nil {
		return err
	}
	ctx := context.Background()
	stack, err := devstack.Start(ctx, devstack.Options{LogLevel: "info"})
	if err != nil {
		return err
	}
	defer stack.Close()
	r, err := lambdarun.Start(lambdarun.Config{Bootstrap: bootstrap, FunctionName: function, Env: stack.FunctionEnv,
		Timeout: timeout, Stdout: os.Stderr, Stderr: os.Stderr})
	if err != nil {
		return err
	}
	defer r.Close()
	out, err := r.Invoke(ctx, payload)
	var fe *lambdarun.FunctionError
	if errors.As(err, &fe) {
		fmt.Printf("{\"errorType\":%q,\"errorMessage\":%q}\n", fe.Type, fe.Message)
		return errors.New("the function returned an error")
	}
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}
