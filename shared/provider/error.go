package provider

import (
	"errors"
	"fmt"
	"net/http"
)

// Class says what a failure means for the connection.
type Class int

// Classes of failure.
const (
	// ClassTransient: keep the current tokens and try again later.
	ClassTransient Class = iota
	// ClassReauth: the grant is gone (revoked, expired, code used); only a
	// new authorization by the user restores the connection.
	ClassReauth
	// ClassConfig: the app's own settings are wrong (bad secret, client id,
	// IP allowlist, an endpoint that moved); every connection of the
	// provider fails until an operator fixes them, and no user action helps.
	ClassConfig
	// ClassNoRefresh: the provider will not refresh for this client id at
	// all, though the current grant is fine. SinaCloud answers a refresh
	// with unauthorized_client when the client id lacks its separately
	// granted refresh permission. The access token in hand stays valid
	// until it expires: keep serving it, stop scheduling refreshes (each
	// one would fail the same way), and only at expiry mark the connection
	// as needing a new authorization. Retrying cannot help, so Permanent
	// reports true; an operator may also ask SinaCloud for the permission.
	ClassNoRefresh
)

// String returns the class's name as metrics and logs use it: "transient",
// "reauth", "config" or "no_refresh".
func (c Class) String() string {
	switch c {
	case ClassReauth:
		return "reauth"
	case ClassConfig:
		return "config"
	case ClassNoRefresh:
		return "no_refresh"
	default:
		return "transient"
	}
}

// Error is a failure of a call to a provider. Code and Message are the
// provider's own (for example "40029" / "invalid code", or "invalid_grant")
// or, for transport failures, one of "timeout", "canceled", "network",
// "http_<status>" (including a 3xx that was not followed), "bad_response",
// "too_large". Both are printable, at most 64 and 200 bytes, and redacted
// of the client secret and of every secret the call carried (code, PKCE
// verifier, refresh token, token being revoked, tokens in the answer)
// before they were clipped, so no piece of 8 or more bytes of any of them
// is ever part of it (see package redact).
type Error struct {
	Provider   string
	Op         string
	Code       string
	Message    string
	HTTPStatus int
	Class      Class
}

// Error returns "provider: {Provider} {Op}: {Code}: {Message}".
func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = "no description"
	}
	return fmt.Sprintf("provider: %s %s: %s: %s", e.Provider, e.Op, e.Code, msg)
}

// Permanent reports whether retrying cannot help without someone acting.
func (e *Error) Permanent() bool { return e.Class != ClassTransient }

// ClassOf returns the class of err: the *Error's, or transient for anything
// else (a context cancellation, say).
func ClassOf(err error) Class {
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Class
	}
	return ClassTransient
}

// ErrNotSupported is returned by operations a provider does not offer
// (revoke without a revoke endpoint, refresh of a machine token).
var ErrNotSupported = errors.New("provider: operation not supported")

// rfc6749Classes classifies the error codes of RFC 6749 §5.2 and §4.1.2.1,
// RFC 7009 §2.2.1 for revocation, and OpenID Connect Core 1.0 §3.1.2.6.
// Codes not listed are transient: wrongly retrying costs a little quota,
// wrongly dropping a grant loses a user. classifyOAuth applies it.
var rfc6749Classes = map[string]Class{
	"invalid_grant": ClassReauth,
	"invalid_scope": ClassReauth,
	"access_denied": ClassReauth,
	// OIDC: the provider needs the user in front of it (to log in, consent
	// or pick an account) before it grants anything again.
	"interaction_required":       ClassReauth,
	"login_required":             ClassReauth,
	"consent_required":           ClassReauth,
	"account_selection_required": ClassReauth,
	"invalid_client":             ClassConfig,
	"unauthorized_client":        ClassConfig,
	"unsupported_grant_type":     ClassConfig,
	"invalid_request":            ClassConfig,
	"unsupported_response_type":  ClassConfig,
	"unsupported_token_type":     ClassConfig,
	"server_error":               ClassTransient,
	"temporarily_unavailable":    ClassTransient,
	"slow_down":                  ClassTransient,
}

// classifyOAuth classifies an RFC 6749 §5.2 error answer of a provider of
// kind to operation op (opExchange, opRefresh, opToken, opRevoke):
//
//   - HTTP 5xx or 429: transient, whatever the code (a server that fails
//     says little about the grant);
//   - SinaCloud, refresh, unauthorized_client: ClassNoRefresh (its document:
//     the client id has no refresh permission); for a code exchange and for
//     every other kind unauthorized_client stays ClassConfig;
//   - otherwise rfc6749Classes, and transient for codes it does not list.
func classifyOAuth(kind, op, code string, status int) Class {
	if status >= 500 || status == http.StatusTooManyRequests {
		return ClassTransient
	}
	if kind == KindSinaCloud && op == opRefresh && code == "unauthorized_client" {
		return ClassNoRefresh
	}
	if class, known := rfc6749Classes[code]; known {
		return class
	}
	return ClassTransient
}

// redirectClass classifies a 3xx answer, which is never followed (see
// New). 301 and 308 say the endpoint has moved for good (RFC 9110 §15.4.2,
// §15.4.9): the configured URL is stale and retrying cannot help, so an
// operator must fix it (ClassConfig). Any other 3xx (302, 303, 307, …) is
// likelier a maintenance, login or captive page in front of the provider:
// transient. Neither is the user's fault, and neither loses a grant: the
// request never reached the token endpoint.
func redirectClass(status int) Class {
	if status == http.StatusMovedPermanently || status == http.StatusPermanentRedirect {
		return ClassConfig
	}
	return ClassTransient
}

// wechatClasses classifies WeChat errcodes from the official account and
// web authorization documents.
var wechatClasses = map[int]Class{
	-1:    ClassTransient, // system busy; a code may already be spent
	40029: ClassReauth,    // invalid code
	40163: ClassReauth,    // code already used
	42003: ClassReauth,    // code expired
	40030: ClassReauth,    // invalid refresh_token
	42002: ClassReauth,    // refresh_token expired
	42007: ClassReauth,    // user changed password: grant revoked
	40001: ClassConfig,    // invalid credential / AppSecret
	40125: ClassConfig,    // invalid AppSecret
	40013: ClassConfig,    // invalid AppID
	40002: ClassConfig,    // invalid grant_type
	40164: ClassConfig,    // caller IP not in the allowlist
	41002: ClassConfig,    // appid missing
	41004: ClassConfig,    // secret missing
	45009: ClassTransient, // daily API quota reached
	45011: ClassTransient, // API frequency limit
}

// Ambiguous reports whether a failed call may still have taken effect at
// the provider (a timeout, a 5xx, WeChat's -1). A code exchange that failed
// this way must not be retried: the code may be spent.
func Ambiguous(err error) bool {
	var pe *Error
	if !errors.As(err, &pe) {
		return true
	}
	switch {
	case pe.Code == "timeout" || pe.Code == "network" || pe.Code == "bad_response" || pe.Code == "too_large" || pe.Code == "-1":
		return true
	case pe.HTTPStatus >= 500:
		return true
	}
	return false
}
