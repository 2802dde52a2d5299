// Package client is how a Go backend gets access tokens from tokenbroker.
//
//	broker, err := client.New("https://abc123.execute-api.eu-west-1.amazonaws.com")
//	ts := broker.TokenSource(ctx, "github", "alice", 5*time.Minute)
//	api := oauth2.NewClient(ctx, ts) // every request carries a valid token
//
// Requests go to GET /connections/{provider}/{connection}/token, signed
// with SigV4 for service execute-api by aws-sdk-go-v2's v4 signer. The
// calling role needs execute-api:Invoke on that route. Credentials come
// from the SDK's default chain (environment, shared files, SSO, the Lambda
// or ECS role, IMDS) unless WithCredentials names others; session tokens
// are sent and signed. The region to sign for is WithRegion's, else the
// one in an {id}.execute-api.{region}.amazonaws.com host (the API's own
// region, which is what SigV4 must be scoped to even when the caller runs
// elsewhere), else AWS_REGION, else the shared configuration's.
//
// Client.Token makes one request and caches nothing. Client.TokenSource
// is what most code wants: an oauth2.TokenSource that keeps the token in
// the process until less than minTTL of it remains, shares one request
// among concurrent callers, retries the broker's 503 answers (the
// provider is briefly unavailable) a few times with jittered backoff, and
// never caches an error. The *oauth2.Token it returns works with
// oauth2.NewClient and oauth2.Transport as they are: its Expiry is set so
// that x/oauth2's own ten-second early expiry ends the token's use
// exactly when this source would fetch a new one, never later.
//
// Client.HTTPClient returns an *http.Client for a downstream API that
// carries such a token on every request, and heals a rejected one: when
// the API answers that the token is no good (401 by default,
// WithRejection to say otherwise, WeChatRejected for WeChat's errcodes),
// it calls Client.Refresh naming the rejected token, so that the broker
// refreshes once however many callers saw it fail, and sends the request
// once more where its body allows. The 503 retries of TokenSource,
// Refresh and HTTPClient wait at least as long as the broker's
// Retry-After asks.
//
// Every other route has its method too: Authorize and Confirm for the
// connect flow, Status, List (an iter.Seq2 over every page), Import,
// Delete.
//
// Every answer that is not 2xx is returned as *Error, carrying the
// broker's error code (bad_request, unauthorized, forbidden, not_found,
// conflict, needs_reauth, not_refreshable, provider_error,
// provider_unavailable, internal) or "http_<status>" when the body says
// none, as API Gateway's own refusals do. errors.Is(err, ErrNeedsReauth)
// reports a connection whose user must authorize again, and
// errors.Is(err, ErrNotFound) one (or a provider) that does not exist.
//
// Functions of the broker itself must not import this package (it pulls
// in the SDK's config module, which their binaries do without).
package client
