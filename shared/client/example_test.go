package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/shared/client"
)

// A backend calls a provider's API as the user of the connection
// "example": the broker hands out the token, oauth2.NewClient puts it on
// every request and asks again only when less than five minutes of it
// remain. (Here TOKENBROKER_URL is the local API the tests start, and
// PROVIDER_API the emulated OAuth 2.0 provider; credentials come from the
// AWS SDK's default chain.)
func Example() {
	ctx := context.Background()
	broker, err := client.New(os.Getenv("TOKENBROKER_URL")) // https://{id}.execute-api.{region}.amazonaws.com
	if err != nil {
		log.Fatal(err)
	}
	ts := broker.TokenSource(ctx, "oauth2", "example", 5*time.Minute)
	api := oauth2.NewClient(ctx, ts)

	resp, err := api.Get(os.Getenv("PROVIDER_API") + "/userinfo")
	if errors.Is(err, client.ErrNeedsReauth) {
		log.Fatal("the user must connect again") // send them a new authorize link
	}
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status)
	// Output: 200 OK
}

// One request, no cache: for a job that runs once, or to see what the
// broker answers.
func ExampleClient_Token() {
	ctx := context.Background()
	broker, err := client.New(os.Getenv("TOKENBROKER_URL"))
	if err != nil {
		log.Fatal(err)
	}
	tok, err := broker.Token(ctx, "wechat-mp", "app", time.Minute)
	var refused *client.Error
	if errors.As(err, &refused) {
		log.Fatalf("the broker answered %d %s: %s", refused.Status, refused.Code, refused.Message)
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tok.Provider, tok.Connection, time.Until(tok.ExpiresAt) > time.Minute)
	// Output: wechat-mp app true
}
