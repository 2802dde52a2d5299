package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxBody caps every provider response read into memory.
const MaxBody = 1 << 20

// DefaultTimeout bounds one provider call. It must stay shorter than the
// refresh lease, which stays shorter than the function timeout.
const DefaultTimeout = 10 * time.Second

// UserAgent is sent on every provider call.
const UserAgent = "tokenbroker/1 (+https://github.com/tokenbroker)"

// TokenSet is what a provider grants.
type TokenSet struct {
	AccessToken  string
	RefreshToken string
	TokenType    string
	Scope        string
	// ExpiresAt is zero when the provider gave no expiry.
	ExpiresAt time.Time
	// RefreshExpiresAt is zero when unknown; on a refresh, zero means the
	// refresh token's known expiry does not change.
	RefreshExpiresAt time.Time
	Extra            map[string]string
}

// AuthorizeRequest is what the broker supplies to build an authorize URL.
type AuthorizeRequest struct {
	State         string
	RedirectURI   string
	Scopes        []string // empty: the config's scopes
	CodeChallenge string   // S256 challenge; empty when the provider does not use PKCE
}

// Client is what the broker uses of a provider. Implementations are safe
// for concurrent use.
type Client interface {
	// Config is the provider's resolved configuration.
	Config() Config
	// AuthorizeURL builds the URL the user's browser goes to.
	AuthorizeURL(AuthorizeRequest) (string, error)
	// Exchange trades an authorization code for tokens. Never retried.
	Exchange(ctx context.Context, code, redirectURI, verifier string) (*TokenSet, error)
	// Refresh uses a refresh token. A result without a refresh token means
	// the old one stays valid.
	Refresh(ctx context.Context, refreshToken string) (*TokenSet, error)
	// MachineToken fetches an app token with no user (WeChat global token,
	// client_credentials).
	MachineToken(ctx context.Context) (*TokenSet, error)
	// Revoke invalidates a token at the provider, or returns ErrNotSupported.
	Revoke(ctx context.Context, token, hint string) error
}

// Options are the shared parts every kind needs.
type Options struct {
	// HTTP is the client for provider calls; one with DefaultTimeout when nil.
	HTTP *http.Client
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// New builds the client for cfg's kind with the client secret.
func New(cfg Config, secret string, opts Options) (Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("provider: %s: %w", cfg.Name, err)
	}
	if opts.HTTP == nil {
		opts.HTTP = &http.Client{Timeout: DefaultTimeout}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	b := base{cfg: cfg, secret: secret, http: opts.HTTP, now: opts.Now}
	switch cfg.Kind {
	case KindWeChatMP, KindWeChatOAuth:
		return &wechat{base: b}, nil
	case KindSinaCloud, KindOAuth2:
		return &oauth2Client{base: b}, nil
	}
	return nil, fmt.Errorf("provider: %s: unknown kind %q", cfg.Name, cfg.Kind)
}

type base struct {
	cfg    Config
	secret string
	http   *http.Client
	now    func() time.Time
}

func (b *base) Config() Config { return b.cfg }

func (b *base) fail(op, code, msg string, status int, class Class) *Error {
	return &Error{Provider: b.cfg.Name, Op: op, Code: clean(code), Message: clean(redact(msg, b.secret)), HTTPStatus: status, Class: class}
}

// redact removes secrets a provider might echo back in an error text.
func redact(s string, secrets ...string) string {
	for _, secret := range secrets {
		if len(secret) >= 4 {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	return s
}

// scrub redacts per-call secrets (a code, a refresh token) from an error.
func scrub(err error, secrets ...string) error {
	var pe *Error
	if errors.As(err, &pe) {
		pe.Message = redact(pe.Message, secrets...)
	}
	return err
}

// response is a provider answer read within MaxBody.
type response struct {
	status      int
	contentType string
	body        []byte
}

// do sends req and reads at most MaxBody of the answer. Transport failures
// become transient *Errors whose text never includes the request URL (a
// WeChat URL carries the AppSecret in its query).
func (b *base) do(ctx context.Context, op string, req *http.Request) (*response, error) {
	req = req.WithContext(ctx)
	req.Header.Set("User-Agent", UserAgent)
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json")
	}
	resp, err := b.http.Do(req)
	if err != nil {
		return nil, b.transportError(op, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return nil, b.transportError(op, err)
	}
	if len(body) > MaxBody {
		return nil, b.fail(op, "too_large", fmt.Sprintf("response larger than %d bytes", MaxBody), resp.StatusCode, ClassTransient)
	}
	return &response{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), body: body}, nil
}

func (b *base) transportError(op string, err error) *Error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return b.fail(op, "timeout", "no answer in time", 0, ClassTransient)
	case errors.Is(err, context.Canceled):
		return b.fail(op, "canceled", "request canceled", 0, ClassTransient)
	}
	return b.fail(op, "network", err.Error(), 0, ClassTransient)
}

// httpStatusError classifies a non-2xx answer that carried no parseable
// provider error: a 5xx, 429 or HTML page is transient; a 4xx with nothing
// we understand is too (an outage page is likelier than a revoked grant).
func (b *base) httpStatusError(op string, r *response) *Error {
	return b.fail(op, fmt.Sprintf("http_%d", r.status), snippet(r), r.status, ClassTransient)
}

func snippet(r *response) string {
	if strings.Contains(r.contentType, "html") || strings.HasPrefix(strings.TrimSpace(string(r.body)), "<") {
		return "HTML page instead of a token response"
	}
	return string(r.body)
}

// clean keeps provider text printable and short for error strings and logs.
func clean(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "?")
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
