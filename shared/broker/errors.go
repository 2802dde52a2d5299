package broker

import (
	"errors"
	"fmt"
	"time"
)

// Code is an application error code; the HTTP mapping turns each into one
// status.
type Code string

// Codes, as DESIGN.md's Routes section lists them.
const (
	CodeBadRequest          Code = "bad_request"
	CodeUnauthorized        Code = "unauthorized"
	CodeForbidden           Code = "forbidden"
	CodeNotFound            Code = "not_found"
	CodeNeedsReauth         Code = "needs_reauth"
	CodeNotRefreshable      Code = "not_refreshable"
	CodeConflict            Code = "conflict"
	CodeProviderError       Code = "provider_error"
	CodeProviderUnavailable Code = "provider_unavailable"
	CodeInternal            Code = "internal"
)

// Error is an application error: a code and a message safe to show the
// caller. Err, if set, is the cause, for logs only.
type Error struct {
	Code    Code
	Message string
	Err     error
	// RetryAfter, when positive, is how long the caller should wait before
	// asking again (Retry-After on a 503).
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func wrap(code Code, err error, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: err}
}

// ErrorCode returns the code of an application error, or internal for
// anything else.
func ErrorCode(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrorMessage returns the caller-safe message: an application error's own,
// or "internal error" for anything else.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// RetryAfter returns how long an application error asks the caller to
// wait, or 0.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// retryLater is provider_unavailable telling the caller when the broker
// will try again.
func retryLater(until time.Time, now time.Time, cause error, format string, args ...any) *Error {
	e := wrap(CodeProviderUnavailable, cause, format, args...)
	e.RetryAfter = max(until.Sub(now), time.Millisecond)
	return e
}
