package provider

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// oauth2Client speaks RFC 6749 to token endpoints: the generic kind and
// SinaCloud, which is RFC 6749 with single-use refresh tokens. The token
// request is hand-built rather than left to golang.org/x/oauth2's Exchange
// because the broker needs the HTTP status, the raw error code and the
// body cap to classify every failure; x/oauth2 still builds the PKCE pair
// and the generic authorize URL.
type oauth2Client struct{ base }

// SinaCloudRefreshGrace is how much longer a SinaCloud refresh token lives
// than its access token.
const SinaCloudRefreshGrace = 24 * time.Hour

// NewVerifier returns a fresh PKCE code verifier (RFC 7636, 32 random bytes).
func NewVerifier() string { return oauth2.GenerateVerifier() }

// S256Challenge derives the S256 code challenge of a verifier.
func S256Challenge(verifier string) string { return oauth2.S256ChallengeFromVerifier(verifier) }

func (o *oauth2Client) AuthorizeURL(ar AuthorizeRequest) (string, error) {
	if o.cfg.Kind == KindOAuth2 && o.cfg.Grant == GrantClientCredentials {
		return "", ErrNotSupported
	}
	if o.cfg.Kind == KindSinaCloud {
		// SinaCloud's documented form: exactly these parameters.
		q := url.Values{"response_type": {"code"}, "client_id": {o.cfg.ClientID}, "state": {ar.State}}
		return withQuery(o.cfg.AuthorizeURL, q), nil
	}
	scopes := ar.Scopes
	if len(scopes) == 0 {
		scopes = o.cfg.Scopes
	}
	conf := oauth2.Config{ClientID: o.cfg.ClientID, Endpoint: oauth2.Endpoint{AuthURL: o.cfg.AuthorizeURL}, RedirectURL: ar.RedirectURI, Scopes: scopes}
	opts := make([]oauth2.AuthCodeOption, 0, len(o.cfg.AuthorizeParams)+2)
	for k, v := range o.cfg.AuthorizeParams {
		opts = append(opts, oauth2.SetAuthURLParam(k, v))
	}
	if ar.CodeChallenge != "" {
		opts = append(opts, oauth2.SetAuthURLParam("code_challenge", ar.CodeChallenge), oauth2.SetAuthURLParam("code_challenge_method", "S256"))
	}
	return conf.AuthCodeURL(ar.State, opts...), nil
}

func withQuery(base string, q url.Values) string {
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	return base + sep + q.Encode()
}

func (o *oauth2Client) Exchange(ctx context.Context, code, redirectURI, verifier string) (*TokenSet, error) {
	if o.cfg.Kind == KindOAuth2 && o.cfg.Grant == GrantClientCredentials {
		return nil, ErrNotSupported
	}
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}}
	if o.cfg.Kind == KindOAuth2 {
		// RFC 6749 §4.1.3: redirect_uri is required when the authorization
		// request carried it, which ours always does for this kind.
		if redirectURI != "" {
			form.Set("redirect_uri", redirectURI)
		}
		if verifier != "" {
			form.Set("code_verifier", verifier)
		}
	}
	return o.token(ctx, call{op: opExchange, secrets: []string{code, verifier}}, form)
}

func (o *oauth2Client) Refresh(ctx context.Context, refreshToken string) (*TokenSet, error) {
	if o.cfg.Kind == KindOAuth2 && o.cfg.Grant == GrantClientCredentials {
		return nil, ErrNotSupported
	}
	return o.token(ctx, call{op: opRefresh, secrets: []string{refreshToken}}, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refreshToken}})
}

func (o *oauth2Client) MachineToken(ctx context.Context) (*TokenSet, error) {
	if o.cfg.Kind != KindOAuth2 || o.cfg.Grant != GrantClientCredentials {
		return nil, ErrNotSupported
	}
	form := url.Values{"grant_type": {"client_credentials"}}
	if len(o.cfg.Scopes) > 0 {
		form.Set("scope", strings.Join(o.cfg.Scopes, " "))
	}
	return o.token(ctx, call{op: opToken}, form)
}

// post sends a form to an endpoint with client authentication:
// client_secret_basic (RFC 6749 §2.3.1: both parts form-encoded before
// base64) or client_secret_post.
func (o *oauth2Client) post(ctx context.Context, c call, endpoint string, form url.Values) (*response, error) {
	if o.cfg.AuthStyle != "basic" {
		form.Set("client_id", o.cfg.ClientID)
		form.Set("client_secret", o.secret)
	}
	req, err := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, o.fail(c, "config", "cannot build request: endpoint is not a URL", 0, ClassConfig)
	}
	if o.cfg.AuthStyle == "basic" {
		cred := url.QueryEscape(o.cfg.ClientID) + ":" + url.QueryEscape(o.secret)
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(cred)))
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return o.do(ctx, c, req)
}

func (o *oauth2Client) token(ctx context.Context, c call, form url.Values) (*TokenSet, error) {
	r, err := o.post(ctx, c, o.cfg.TokenURL, form)
	if err != nil {
		return nil, err
	}
	return o.parseToken(c, r)
}

// parseToken reads an RFC 6749 §5.1 answer, JSON or form-encoded (GitHub
// without Accept), and §5.2 errors, including those sent with HTTP 200.
//
// A 2xx answer that carries a token is a success whatever else it holds
// (see fields.go): an "error" beside tokens is ignored, an unreadable
// expiry is unknown. An "error" wins only where no token came back.
func (o *oauth2Client) parseToken(c call, r *response) (*TokenSet, error) {
	c = c.answered(r)
	fields, perr := decodeTokenBody(r)
	if perr != nil {
		if r.status < 200 || r.status > 299 {
			return nil, o.httpStatusError(c, r)
		}
		return nil, o.fail(c, "bad_response", perr.Error(), r.status, ClassTransient)
	}
	access, refresh := fieldString(fields["access_token"]), fieldString(fields["refresh_token"])
	// Whatever the answer says next is redacted of the credentials it holds.
	c = c.with(access, refresh, fieldString(fields["id_token"]), fieldString(fields["mac_key"]))
	ok := r.status >= 200 && r.status <= 299
	// A token the answer merely echoes (the refresh token just presented)
	// is not a new one: an error answer quoting it stays an error.
	presented := ""
	if c.op == opRefresh && len(c.secrets) > 0 {
		presented = c.secrets[0]
	}
	if refresh == presented {
		refresh = ""
	}
	if code := fieldString(fields["error"]); code != "" && !(ok && (access != "" || refresh != "")) {
		return nil, o.fail(c, code, fieldString(fields["error_description"]), r.status, classifyOAuth(o.cfg.Kind, c.op, code, r.status))
	}
	if !ok {
		return nil, o.httpStatusError(c, r)
	}
	if access == "" && refresh == "" {
		return nil, o.fail(c, "bad_response", "no access_token in the response", r.status, ClassTransient)
	}
	now := o.now()
	ts := &TokenSet{
		AccessToken: access, RefreshToken: refresh,
		TokenType: textField(fields["token_type"]), Scope: scopeField(fields["scope"]),
	}
	if ts.TokenType == "" || strings.EqualFold(ts.TokenType, "bearer") {
		ts.TokenType = "Bearer"
	}
	var known bool
	if access != "" {
		ts.ExpiresAt, known = o.expiry(now, fields["expires_in"])
	}
	if known && o.cfg.Kind == KindSinaCloud && refresh != "" {
		ts.RefreshExpiresAt = ts.ExpiresAt.Add(SinaCloudRefreshGrace)
	}
	// GitHub names the refresh token's lifetime refresh_token_expires_in,
	// Keycloak refresh_expires_in.
	for _, k := range []string{"refresh_token_expires_in", "refresh_expires_in"} {
		if secs, ok := secondsField(fields[k]); ok {
			ts.RefreshExpiresAt = now.Add(time.Duration(secs) * time.Second)
			break
		}
	}
	candidates := make(map[string]string, len(extraFields))
	for _, k := range extraFields {
		candidates[k] = fieldString(fields[k])
	}
	ts.Extra = keepExtra(candidates)
	return ts, nil
}

// Revoke calls the RFC 7009 endpoint where the provider has one.
func (o *oauth2Client) Revoke(ctx context.Context, token, hint string) error {
	if o.cfg.RevokeURL == "" || token == "" {
		return ErrNotSupported
	}
	form := url.Values{"token": {token}}
	if hint != "" {
		form.Set("token_type_hint", hint)
	}
	c := call{op: opRevoke, secrets: []string{token}}
	r, err := o.post(ctx, c, o.cfg.RevokeURL, form)
	if err != nil {
		return err
	}
	if r.status >= 200 && r.status <= 299 {
		return nil
	}
	_, err = o.parseToken(c, r)
	return err
}
