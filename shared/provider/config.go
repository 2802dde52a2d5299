package provider

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
)

// Kinds of provider.
const (
	KindWeChatMP    = "wechat_mp"
	KindWeChatOAuth = "wechat_oauth"
	KindSinaCloud   = "sinacloud"
	KindOAuth2      = "oauth2"
)

// Grants of the generic kind.
const (
	GrantAuthorizationCode = "authorization_code"
	GrantClientCredentials = "client_credentials"
)

// Config is a provider's JSON document from SSM, after presets and kind
// defaults are applied. Every field may be overridden.
type Config struct {
	// Name is the provider's path segment; not part of the JSON.
	Name string `json:"-"`

	Kind               string            `json:"kind"`
	Preset             string            `json:"preset,omitempty"`
	ClientID           string            `json:"client_id"`
	AuthorizeURL       string            `json:"authorize_url,omitempty"`
	TokenURL           string            `json:"token_url,omitempty"`
	RevokeURL          string            `json:"revoke_url,omitempty"`
	APIBase            string            `json:"api_base,omitempty"`
	Scopes             []string          `json:"scopes,omitempty"`
	AuthStyle          string            `json:"auth_style,omitempty"`
	PKCE               *bool             `json:"pkce,omitempty"`
	Grant              string            `json:"grant,omitempty"`
	AuthorizeParams    map[string]string `json:"authorize_params,omitempty"`
	TokenAPI           string            `json:"token_api,omitempty"`
	RefreshLeadSeconds int               `json:"refresh_lead_seconds,omitempty"`
	RedirectURI        string            `json:"redirect_uri,omitempty"`
	DailyQuotaBudget   int               `json:"daily_quota_budget,omitempty"`
	// RevokePerToken says the provider's revocation ends only the token
	// revoked. Where it ends the user's whole grant (Google), the broker
	// never revokes the tokens of a grant that lost a race: the grant that
	// won may be that same user's new one. Unset: false, unless a preset
	// says otherwise.
	RevokePerToken *bool `json:"revoke_per_token,omitempty"`
	// DefaultExpiresIn, in seconds, is the lifetime assumed for an access
	// token whose answer gives no expiry or one the broker cannot read.
	// 0: such a token has no known expiry.
	DefaultExpiresIn int `json:"default_expires_in,omitempty"`
	// StableForceBudget caps stable_token calls with force_refresh=true per
	// AppID per China Standard Time day (WeChat allows 20); 10 when unset.
	StableForceBudget int `json:"stable_force_budget,omitempty"`
}

// preset fills endpoints of a well-known provider; the document overrides it.
type preset struct {
	authorizeURL, tokenURL, revokeURL string
	authStyle                         string
	pkce                              bool
	// revokePerToken: revoking one token leaves the rest of the grant.
	revokePerToken  bool
	authorizeParams map[string]string
	scopes          []string
}

var presets = map[string]preset{
	"github": {
		authorizeURL: "https://github.com/login/oauth/authorize",
		tokenURL:     "https://github.com/login/oauth/access_token",
		authStyle:    "post", pkce: true,
	},
	"google": {
		authorizeURL: "https://accounts.google.com/o/oauth2/v2/auth",
		tokenURL:     "https://oauth2.googleapis.com/token",
		revokeURL:    "https://oauth2.googleapis.com/revoke",
		authStyle:    "post", pkce: true,
		// Google issues a refresh token only with offline access, and again
		// only when the user is asked to consent.
		authorizeParams: map[string]string{"access_type": "offline", "prompt": "consent"},
		scopes:          []string{"openid", "email"},
	},
	"gitlab": {
		authorizeURL: "https://gitlab.com/oauth/authorize",
		tokenURL:     "https://gitlab.com/oauth/token",
		revokeURL:    "https://gitlab.com/oauth/revoke",
		authStyle:    "basic", pkce: true,
		// GitLab (Doorkeeper) revokes the token it is given and nothing else.
		revokePerToken: true,
	},
}

// Presets returns the names of the presets, sorted.
func Presets() []string {
	names := make([]string, 0, len(presets))
	for n := range presets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// WeChatStableRenewWindow is how long before expiry stable_token (normal
// mode) starts returning a new token, in seconds.
const WeChatStableRenewWindow = 300

const (
	defaultWeChatAPI       = "https://api.weixin.qq.com"
	defaultWeChatAuthorize = "https://open.weixin.qq.com/connect/oauth2/authorize"
	// SinaCloud's document: https://api.sinaapp.com/oauth2/authorize and
	// https://api.sinaapp.com/oauth2/access_token.
	defaultSinaCloudAPI = "https://api.sinaapp.com"
)

// ParseConfig decodes a provider document strictly (unknown fields are an
// error, so a typo cannot silently fall back to a default), applies the
// preset and kind defaults, and validates the result. Errors read
// "provider: {name}: …" and name the offending field.
func ParseConfig(name string, doc []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("provider: %s: provider JSON: %w", name, err)
	}
	if dec.More() {
		return Config{}, fmt.Errorf("provider: %s: provider JSON: trailing data after the object", name)
	}
	c.Name = name
	if err := c.applyDefaults(); err != nil {
		return Config{}, fmt.Errorf("provider: %s: %w", name, err)
	}
	return c, c.Validate()
}

func (c *Config) applyDefaults() error {
	if c.Preset != "" {
		p, ok := presets[c.Preset]
		if !ok {
			return fmt.Errorf("unknown preset %q (known: %s)", c.Preset, strings.Join(Presets(), ", "))
		}
		if c.Kind == "" {
			c.Kind = KindOAuth2
		}
		setDefault(&c.AuthorizeURL, p.authorizeURL)
		setDefault(&c.TokenURL, p.tokenURL)
		setDefault(&c.RevokeURL, p.revokeURL)
		setDefault(&c.AuthStyle, p.authStyle)
		if c.PKCE == nil {
			c.PKCE = &p.pkce
		}
		if c.RevokePerToken == nil {
			c.RevokePerToken = &p.revokePerToken
		}
		if c.AuthorizeParams == nil && p.authorizeParams != nil {
			c.AuthorizeParams = p.authorizeParams
		}
		if c.Scopes == nil {
			c.Scopes = p.scopes
		}
	}
	switch c.Kind {
	case KindWeChatMP:
		setDefault(&c.APIBase, defaultWeChatAPI)
		setDefault(&c.TokenAPI, "stable_token")
		if c.RefreshLeadSeconds == 0 {
			// cgi-bin/token issues a new token on every call: 600 s ahead is
			// about 13 calls a day. stable_token in normal mode hands back the
			// same token until its last five minutes, so a refresh must land
			// inside that window to get a new one.
			c.RefreshLeadSeconds = 600
			if c.TokenAPI == "stable_token" {
				c.RefreshLeadSeconds = WeChatStableRenewWindow - 60
			}
		}
		if c.DailyQuotaBudget == 0 {
			c.DailyQuotaBudget = 1500
		}
		if c.StableForceBudget == 0 {
			c.StableForceBudget = 10
		}
	case KindWeChatOAuth:
		setDefault(&c.APIBase, defaultWeChatAPI)
		setDefault(&c.AuthorizeURL, defaultWeChatAuthorize)
		if c.Scopes == nil {
			c.Scopes = []string{"snsapi_base"}
		}
	case KindSinaCloud:
		setDefault(&c.APIBase, defaultSinaCloudAPI)
		setDefault(&c.AuthorizeURL, strings.TrimRight(c.APIBase, "/")+"/oauth2/authorize")
		setDefault(&c.TokenURL, strings.TrimRight(c.APIBase, "/")+"/oauth2/access_token")
		setDefault(&c.AuthStyle, "post")
	case KindOAuth2:
		setDefault(&c.Grant, GrantAuthorizationCode)
		setDefault(&c.AuthStyle, "basic")
		if c.PKCE == nil {
			t := true
			c.PKCE = &t
		}
	}
	return nil
}

func setDefault(field *string, value string) {
	if *field == "" {
		*field = value
	}
}

// Validate checks that the config is complete and coherent for its kind.
// Every endpoint (authorize_url, token_url, revoke_url, api_base,
// redirect_uri) must be an absolute https URL; http is accepted only for a
// loopback host (127.0.0.0/8, ::1, localhost), which the local emulators
// use, because these URLs carry client secrets, codes and tokens. Errors
// read "provider: {name}: …" and name the offending field.
func (c Config) Validate() error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("provider: %s: %w", c.Name, err)
	}
	return nil
}

func (c Config) validate() error {
	if c.ClientID == "" {
		return fmt.Errorf("client_id is required")
	}
	if len(c.ClientID) > 256 {
		return fmt.Errorf("client_id is longer than 256 characters")
	}
	checkURL := func(field, v string, required bool) error {
		if v == "" {
			if required {
				return fmt.Errorf("%s is required for kind %s", field, c.Kind)
			}
			return nil
		}
		return checkEndpoint(field, v)
	}
	if c.RefreshLeadSeconds < 0 || c.DailyQuotaBudget < 0 {
		return fmt.Errorf("refresh_lead_seconds and daily_quota_budget must not be negative")
	}
	if c.DefaultExpiresIn != 0 && (c.DefaultExpiresIn < 60 || c.DefaultExpiresIn > MaxExpiresIn) {
		return fmt.Errorf("default_expires_in must be 0 (no known expiry) or between 60 and %d seconds, not %d", MaxExpiresIn, c.DefaultExpiresIn)
	}
	// Every endpoint that is set is checked, whether or not the kind uses
	// it: a stray http:// URL is a mistake worth reporting either way.
	for _, e := range []struct{ field, value string }{
		{"authorize_url", c.AuthorizeURL}, {"token_url", c.TokenURL}, {"revoke_url", c.RevokeURL},
		{"api_base", c.APIBase}, {"redirect_uri", c.RedirectURI},
	} {
		if err := checkURL(e.field, e.value, false); err != nil {
			return err
		}
	}
	switch c.Kind {
	case KindWeChatMP:
		if c.TokenAPI != "token" && c.TokenAPI != "stable_token" {
			return fmt.Errorf("token_api must be \"token\" or \"stable_token\", not %q", c.TokenAPI)
		}
		if c.DailyQuotaBudget > 2000 {
			return fmt.Errorf("daily_quota_budget %d exceeds WeChat's 2000 calls a day", c.DailyQuotaBudget)
		}
		if c.StableForceBudget < 0 || c.StableForceBudget > 20 {
			return fmt.Errorf("stable_force_budget %d must be between 1 and WeChat's 20 forced stable_token calls a day", c.StableForceBudget)
		}
		return checkURL("api_base", c.APIBase, true)
	case KindWeChatOAuth:
		for _, s := range c.Scopes {
			if s != "snsapi_base" && s != "snsapi_userinfo" {
				return fmt.Errorf("wechat_oauth scope %q must be snsapi_base or snsapi_userinfo", s)
			}
		}
		if err := checkURL("authorize_url", c.AuthorizeURL, true); err != nil {
			return err
		}
		return checkURL("api_base", c.APIBase, true)
	case KindSinaCloud, KindOAuth2:
		if c.AuthStyle != "basic" && c.AuthStyle != "post" {
			return fmt.Errorf("auth_style must be \"basic\" or \"post\", not %q", c.AuthStyle)
		}
		if c.Kind == KindOAuth2 && c.Grant != GrantAuthorizationCode && c.Grant != GrantClientCredentials {
			return fmt.Errorf("grant must be %q or %q, not %q", GrantAuthorizationCode, GrantClientCredentials, c.Grant)
		}
		if err := checkURL("token_url", c.TokenURL, true); err != nil {
			return err
		}
		return checkURL("authorize_url", c.AuthorizeURL, c.Grant != GrantClientCredentials)
	case "":
		return fmt.Errorf("kind is required (wechat_mp, wechat_oauth, sinacloud, oauth2) unless a preset supplies it")
	default:
		return fmt.Errorf("unknown kind %q (wechat_mp, wechat_oauth, sinacloud, oauth2)", c.Kind)
	}
}

// checkEndpoint accepts an absolute https URL, or an http URL of a
// loopback host. The URL is echoed without its user info.
func checkEndpoint(field, v string) error {
	u, err := url.Parse(v)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%s is not an absolute https URL", field)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if loopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%s %q must use https: plain http is accepted only for loopback hosts (127.0.0.0/8, ::1, localhost)", field, u.Redacted())
	}
	return fmt.Errorf("%s %q must use https, not %q", field, u.Redacted(), u.Scheme)
}

// loopback reports whether host is localhost or a loopback address.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Machine reports whether the provider issues app tokens with no user (the
// single "app" connection).
func (c Config) Machine() bool {
	return c.Kind == KindWeChatMP || (c.Kind == KindOAuth2 && c.Grant == GrantClientCredentials)
}

// RevokesPerToken reports whether revoking one token at this provider
// leaves the rest of the user's grant alone (see RevokePerToken).
func (c Config) RevokesPerToken() bool {
	return c.RevokeURL != "" && c.RevokePerToken != nil && *c.RevokePerToken
}

// MaxExpiresIn is the longest lifetime, in seconds (ten years), read as
// an expiry; a longer one (2147483647 is a common "never") is unknown.
const MaxExpiresIn = 10 * 365 * 24 * 3600

// UsesPKCE reports whether authorizations carry a PKCE S256 challenge.
func (c Config) UsesPKCE() bool {
	return c.Kind == KindOAuth2 && c.PKCE != nil && *c.PKCE
}
