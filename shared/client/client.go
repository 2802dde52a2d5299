package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	"golang.org/x/sync/singleflight"
)

const (
	signingService = "execute-api"
	// emptyPayloadHash is the hex SHA-256 of an empty body, what SigV4
	// signs for a GET.
	emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	// maxAnswer bounds an answer: a token (a WeChat token is 512 bytes or
	// more, extras are few) or a page of 100 connections with metadata.
	maxAnswer = 1 << 20
	// defaultTimeout outlives API Gateway's 30 s integration limit, so the
	// broker's own answer (even a 504) arrives first.
	defaultTimeout = 40 * time.Second
)

// Client calls one tokenbroker API. It is safe for concurrent use.
type Client struct {
	base   string // without a trailing slash
	region string
	creds  aws.CredentialsProvider
	http   *http.Client
	signer *v4.Signer
	// now is the clock for signing and for the token cache.
	now   func() time.Time
	retry retryPolicy
	// heals shares one Refresh among concurrent heals of one rejected
	// token (HTTPClient).
	heals singleflight.Group
}

// Option configures New.
type Option func(*settings)

type settings struct {
	creds  aws.CredentialsProvider
	region string
	http   *http.Client
}

// WithCredentials signs with p instead of the SDK's default credential
// chain. p is wrapped in an aws.CredentialsCache unless it is one.
func WithCredentials(p aws.CredentialsProvider) Option {
	return func(s *settings) { s.creds = p }
}

// WithRegion sets the region requests are signed for. Without it: the
// region of an execute-api host, else AWS_REGION, else the SDK's shared
// configuration (when the default credentials are used).
func WithRegion(region string) Option {
	return func(s *settings) { s.region = region }
}

// WithHTTPClient sends requests with c instead of a client with a 40 s
// timeout that follows no redirects.
func WithHTTPClient(c *http.Client) Option {
	return func(s *settings) { s.http = c }
}

// executeAPIHost matches API Gateway's default hosts, public and private
// (VPC endpoint), and captures the region.
var executeAPIHost = regexp.MustCompile(`^[a-z0-9-]+\.execute-api\.([a-z]{2}(?:-[a-z]+)+-[0-9]+)\.(?:vpce\.)?amazonaws\.com(?:\.cn)?$`)

// New returns a client for the API at baseURL, e.g.
// https://abc123.execute-api.eu-west-1.amazonaws.com or a custom domain
// (with its base path, if any). Plain http is accepted only for loopback
// hosts, because the answers carry access tokens.
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("tokenbroker: base URL %q must look like https://host[/base-path]", baseURL)
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		return nil, fmt.Errorf("tokenbroker: base URL %q: plain http is only for loopback hosts, use https", baseURL)
	}
	var s settings
	for _, opt := range opts {
		opt(&s)
	}
	region := s.region
	if region == "" {
		if m := executeAPIHost.FindStringSubmatch(strings.ToLower(u.Hostname())); m != nil {
			region = m[1]
		}
	}
	if region == "" {
		region = os.Getenv("AWS_REGION")
	}
	creds := s.creds
	if creds == nil {
		cfg, err := config.LoadDefaultConfig(context.Background())
		if err != nil {
			return nil, fmt.Errorf("tokenbroker: load the default AWS configuration: %w", err)
		}
		if cfg.Credentials == nil {
			return nil, errors.New("tokenbroker: the default AWS configuration has no credentials; use WithCredentials")
		}
		creds = cfg.Credentials
		if region == "" {
			region = cfg.Region
		}
	} else if _, cached := creds.(*aws.CredentialsCache); !cached {
		creds = aws.NewCredentialsCache(creds)
	}
	if region == "" {
		return nil, fmt.Errorf("tokenbroker: no region to sign requests to %s for: use WithRegion, set AWS_REGION, or use the API's execute-api URL", u.Host)
	}
	httpClient := s.http
	if httpClient == nil {
		httpClient = &http.Client{Timeout: defaultTimeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return &Client{base: strings.TrimRight(u.String(), "/"), region: region, creds: creds, http: httpClient,
		signer: v4.NewSigner(), now: time.Now, retry: defaultRetry}, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Token is a connection's access token as the broker hands it out.
type Token struct {
	Provider, Connection, AccessToken, TokenType, Scope string
	// ExpiresAt is when the access token stops working; zero when the
	// provider did not say, and then it never expires as far as the
	// client knows.
	ExpiresAt time.Time
	// Extra holds what the provider sent besides the token, such as
	// WeChat's openid and unionid.
	Extra map[string]string
}

// String describes t without its access token, so that logging a Token
// never leaks one.
func (t Token) String() string {
	exp := "never"
	if !t.ExpiresAt.IsZero() {
		exp = t.ExpiresAt.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("tokenbroker token %s/%s (%s, expires %s)", t.Provider, t.Connection, t.TokenType, exp)
}

// answer is the token route's 200 body (DESIGN.md).
type answer struct {
	Provider    string                     `json:"provider"`
	Connection  string                     `json:"connection"`
	AccessToken string                     `json:"access_token"`
	TokenType   string                     `json:"token_type"`
	ExpiresAt   string                     `json:"expires_at"`
	Scope       string                     `json:"scope"`
	Extra       map[string]json.RawMessage `json:"extra"`
}

// Token asks the broker for a token of provider's connection that stays
// valid for at least minTTL (rounded up to whole seconds), refreshing it
// at the provider first if needed. It makes exactly one request and
// caches nothing: use TokenSource for that. A non-2xx answer is an *Error.
func (c *Client) Token(ctx context.Context, provider, connection string, minTTL time.Duration) (*Token, error) {
	if err := checkName("provider", provider); err != nil {
		return nil, err
	}
	if err := checkName("connection", connection); err != nil {
		return nil, err
	}
	seconds := int64(0)
	if minTTL > 0 {
		seconds = int64((minTTL + time.Second - 1) / time.Second)
	}
	raw, _, err := c.send(ctx, http.MethodGet, connectionPath(provider, connection)+"/token", url.Values{"min_ttl": {strconv.FormatInt(seconds, 10)}}, nil)
	if err != nil {
		return nil, err
	}
	return parseAnswer(raw)
}

// connectionPath is /connections/{provider}/{connection}, escaped.
func connectionPath(provider, connection string) string {
	return "/connections/" + url.PathEscape(provider) + "/" + url.PathEscape(connection)
}

// send makes one signed request and reads a 2xx answer (at most
// maxAnswer bytes); any other answer is an *Error. body, when not nil, is
// sent as JSON. It returns the answer's body and status.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, body any) ([]byte, int, error) {
	target := c.base + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return nil, 0, fmt.Errorf("tokenbroker: encode the request: %w", err)
		}
	}
	var reader io.Reader
	if payload != nil {
		reader = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, reader)
	if err != nil {
		return nil, 0, fmt.Errorf("tokenbroker: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	payloadHash := emptyPayloadHash
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
		sum := sha256.Sum256(payload)
		payloadHash = hex.EncodeToString(sum[:])
	}
	creds, err := c.creds.Retrieve(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("tokenbroker: AWS credentials: %w", err)
	}
	if err := c.signer.SignHTTP(ctx, creds, req, payloadHash, signingService, c.region, c.now()); err != nil {
		return nil, 0, fmt.Errorf("tokenbroker: sign: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("tokenbroker: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, resp.StatusCode, errorFrom(resp, c.now())
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, resp.StatusCode, fmt.Errorf("tokenbroker: read the answer: %w", err)
	}
	if len(raw) > maxAnswer {
		return nil, resp.StatusCode, fmt.Errorf("tokenbroker: the answer is larger than %d bytes", maxAnswer)
	}
	return raw, resp.StatusCode, nil
}

func parseAnswer(raw []byte) (*Token, error) {
	var a answer
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, fmt.Errorf("tokenbroker: the answer is not a token: %w", err)
	}
	if a.AccessToken == "" {
		return nil, errors.New("tokenbroker: the answer has no access_token")
	}
	tok := &Token{Provider: a.Provider, Connection: a.Connection, AccessToken: a.AccessToken, TokenType: a.TokenType, Scope: a.Scope}
	if a.ExpiresAt != "" {
		at, err := time.Parse(time.RFC3339, a.ExpiresAt)
		if err != nil {
			return nil, fmt.Errorf("tokenbroker: expires_at %q is not RFC 3339", snippet([]byte(a.ExpiresAt), 64))
		}
		tok.ExpiresAt = at
	}
	if len(a.Extra) > 0 {
		tok.Extra = make(map[string]string, len(a.Extra))
		for k, v := range a.Extra {
			var s string
			switch {
			case string(v) == "null":
				continue
			case json.Unmarshal(v, &s) == nil:
				tok.Extra[k] = s
			default: // a number or a flag, kept as its JSON text
				tok.Extra[k] = string(v)
			}
		}
	}
	return tok, nil
}

// checkName applies DESIGN.md's rule for provider and connection names,
// [A-Za-z0-9._-]{1,128}, before anything is sent.
func checkName(kind, name string) error {
	ok := len(name) >= 1 && len(name) <= 128
	for i := 0; ok && i < len(name); i++ {
		b := name[i]
		ok = b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '.' || b == '_' || b == '-'
	}
	if !ok {
		return fmt.Errorf("tokenbroker: %s name %q must be 1 to 128 of A-Z a-z 0-9 . _ -", kind, snippet([]byte(name), 64))
	}
	return nil
}
