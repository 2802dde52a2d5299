package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/redact"
)

// MaxBody caps every provider response read into memory.
const MaxBody = 1 << 20

// DefaultTimeout bounds one provider call. It must stay shorter than the
// refresh lease, which stays shorter than the function timeout.
const DefaultTimeout = 10 * time.Second

// UserAgent is sent on every provider call.
const UserAgent = "github.com/tokenbroker/tokenbroker/1 (+https://github.com/tokenbroker)"

// TokenSet is what a provider grants. It carries at least one token: an
// answer with a refresh token and no access token is still a TokenSet, so
// that a rotation the provider has made is never thrown away.
type TokenSet struct {
	// AccessToken is empty only when the answer carried a refresh token
	// alone.
	AccessToken  string
	RefreshToken string
	TokenType    string
	Scope        string
	// ExpiresAt is zero when the expiry is unknown: the answer gave none,
	// or one that cannot be read (0, negative, above MaxExpiresIn, not a
	// whole number of seconds), and the config sets no default_expires_in.
	ExpiresAt time.Time
	// RefreshExpiresAt is zero when unknown; on a refresh, zero means the
	// refresh token's known expiry does not change.
	RefreshExpiresAt time.Time
	// Extra holds only the non-secret identifiers of extraFields (openid,
	// unionid, uid, sub, is_snapshotuser); nil when there are none.
	Extra map[string]string
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
	// HTTP is the client for provider calls; one with DefaultTimeout when
	// nil. New uses a copy that never follows redirects.
	HTTP *http.Client
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// New builds the client for cfg's kind with the client secret.
//
// The client never follows a redirect, whatever opts.HTTP says: every
// provider call carries a credential (the client secret in a form, a Basic
// header or a WeChat query; a code, a PKCE verifier or a refresh token),
// and following a 307 or 308 would re-send it to wherever the Location
// points and accept that host's tokens (RFC 9700 §4.12). New uses a copy
// of opts.HTTP whose CheckRedirect stops at the first response; the
// caller's client is left as it is. A 3xx answer is an *Error (see
// redirectClass).
func New(cfg Config, secret string, opts Options) (Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	b := base{cfg: cfg, secret: secret, http: withoutRedirects(opts.HTTP), now: opts.Now}
	switch cfg.Kind {
	case KindWeChatMP, KindWeChatOAuth:
		return &wechat{base: b}, nil
	case KindSinaCloud, KindOAuth2:
		return &oauth2Client{base: b}, nil
	}
	return nil, fmt.Errorf("provider: %s: unknown kind %q", cfg.Name, cfg.Kind)
}

// withoutRedirects returns a copy of hc (a client with DefaultTimeout when
// nil) that hands back the first response instead of following it.
func withoutRedirects(hc *http.Client) *http.Client {
	c := http.Client{Timeout: DefaultTimeout}
	if hc != nil {
		c = *hc
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

type base struct {
	cfg    Config
	secret string
	http   *http.Client
	now    func() time.Time
}

func (b *base) Config() Config { return b.cfg }

// Operations, as named in Error.Op.
const (
	opExchange = "exchange"
	opRefresh  = "refresh"
	opToken    = "token"
	opRevoke   = "revoke"
)

// Bounds of the provider text kept in an Error, applied after redaction.
const (
	maxCode    = 64
	maxMessage = 200
)

// call is one request to a provider: the operation named in its errors
// and the per-call secrets it carries (a code, a PKCE verifier, a refresh
// token, a token to revoke, and tokens found in the answer). Every error
// of the call is built from it, so the error text is redacted of all of
// them, and of the client secret, before it is clipped.
type call struct {
	op      string
	secrets []string
	// answer is the provider's answer body, once there is one: every
	// token value in it is masked too (redact.Redactor.WithTokensIn),
	// parsed or not, so that a 500 page or a cut-off JSON object carrying
	// tokens never puts them into error text.
	answer string
}

// answered returns c knowing the body of r.
func (c call) answered(r *response) call {
	c.answer = string(r.body)
	return c
}

// with returns c also carrying secrets; c itself is unchanged.
func (c call) with(secrets ...string) call {
	c.secrets = append(slices.Clip(c.secrets), secrets...)
	return c
}

// fail builds the *Error of call c. Code and msg are provider text: they
// go through redact with every secret of the call before being clipped.
func (b *base) fail(c call, code, msg string, status int, class Class) *Error {
	r := redact.New(c.secrets...).WithBasicAuth(b.cfg.ClientID, b.secret).WithTokensIn(c.answer)
	// After the known values, anything shaped like a token: a provider can
	// echo one under a key nobody listed.
	return &Error{Provider: b.cfg.Name, Op: c.op, Code: redact.TokenLike(r.String(code, maxCode)),
		Message: redact.TokenLike(r.String(msg, maxMessage)), HTTPStatus: status, Class: class}
}

// response is a provider answer read within MaxBody.
type response struct {
	status      int
	contentType string
	body        []byte
}

// do sends req and reads at most MaxBody of the answer. Transport failures
// become transient *Errors whose text never includes the request URL (a
// WeChat URL carries the AppSecret in its query). A 3xx answer is an
// *Error too: the client never follows it (see New).
func (b *base) do(ctx context.Context, c call, req *http.Request) (*response, error) {
	req = req.WithContext(ctx)
	req.Header.Set("User-Agent", UserAgent)
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json")
	}
	resp, err := b.http.Do(req)
	if err != nil {
		return nil, b.transportError(c, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 && resp.StatusCode <= 399 {
		return nil, b.redirectError(c, req, resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return nil, b.transportError(c, err)
	}
	if len(body) > MaxBody {
		return nil, b.fail(c, "too_large", fmt.Sprintf("response larger than %d bytes", MaxBody), resp.StatusCode, ClassTransient)
	}
	return &response{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), body: body}, nil
}

// redirectError reports a 3xx answer that was not followed. It names only
// the origin the Location points at: enough for an operator to see a
// moved endpoint, never a path or query that may carry an echoed secret.
func (b *base) redirectError(c call, req *http.Request, resp *http.Response) *Error {
	where := "nowhere usable"
	if raw := resp.Header.Get("Location"); raw != "" {
		if loc, err := req.URL.Parse(raw); err == nil && loc.Host != "" {
			where = loc.Scheme + "://" + loc.Host
		}
	}
	msg := fmt.Sprintf("redirect to %s not followed: provider calls carry credentials and go only to the configured endpoint", where)
	return b.fail(c, fmt.Sprintf("http_%d", resp.StatusCode), msg, resp.StatusCode, redirectClass(resp.StatusCode))
}

func (b *base) transportError(c call, err error) *Error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return b.fail(c, "timeout", "no answer in time", 0, ClassTransient)
	case errors.Is(err, context.Canceled):
		return b.fail(c, "canceled", "request canceled", 0, ClassTransient)
	}
	return b.fail(c, "network", err.Error(), 0, ClassTransient)
}

// httpStatusError classifies a non-2xx answer that carried no parseable
// provider error: a 5xx, 429 or HTML page is transient; a 4xx with nothing
// we understand is too (an outage page is likelier than a revoked grant).
func (b *base) httpStatusError(c call, r *response) *Error {
	return b.fail(c.answered(r), fmt.Sprintf("http_%d", r.status), snippet(r), r.status, ClassTransient)
}

// snippet is the provider text kept from an unparseable answer. fail
// redacts and clips it.
func snippet(r *response) string {
	text := bodyText(r)
	if strings.Contains(r.contentType, "html") || strings.HasPrefix(text, "<") {
		return "HTML page instead of a token response"
	}
	return text
}

// extraFields are the only token-response fields kept in TokenSet.Extra:
// identifiers of the user that backends need (WeChat's openid, unionid and
// is_snapshotuser, a Weibo-style uid, an OIDC-style sub). Anything else —
// id_token, mac_key, whatever a provider adds later — may be a credential
// and is dropped: Extra is stored unsealed and returned to every caller.
var extraFields = []string{"openid", "unionid", "uid", "sub", "is_snapshotuser"}

// maxExtra bounds one kept Extra value.
const maxExtra = 256

// keepExtra returns the allowed, non-empty, bounded fields of candidates,
// or nil when none is left.
func keepExtra(candidates map[string]string) map[string]string {
	var extra map[string]string
	for _, k := range extraFields {
		if v := candidates[k]; v != "" && len(v) <= maxExtra {
			if extra == nil {
				extra = map[string]string{}
			}
			extra[k] = v
		}
	}
	return extra
}
