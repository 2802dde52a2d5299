package client

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ErrNeedsReauth is what errors.Is matches for a 409 needs_reauth answer:
// the provider refused the grant, and the connection's user must
// authorize again before the broker can hand out a token.
var ErrNeedsReauth = errors.New("tokenbroker: needs_reauth")

// ErrNotFound is what errors.Is matches for a 404 not_found answer: the
// connection (or the provider) does not exist.
var ErrNotFound = errors.New("tokenbroker: not_found")

// Error is a non-2xx answer from the broker or from API Gateway in front
// of it.
type Error struct {
	// Status is the HTTP status.
	Status int
	// Code is the broker's error code (DESIGN.md: bad_request,
	// unauthorized, forbidden, not_found, conflict, needs_reauth,
	// not_refreshable, provider_error, provider_unavailable, internal), or
	// "http_<status>" when the body
	// names none (API Gateway's own refusals, a proxy's HTML page).
	Code string
	// Message is the human text of the answer, or a short printable
	// snippet of a body that is not the broker's JSON; a few hundred bytes
	// at most.
	Message string
	// RetryAfter is how long the broker asked the caller to wait before
	// trying again (its Retry-After header, on a 503 most often); zero
	// when it said nothing.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "tokenbroker: " + e.Code
	}
	return "tokenbroker: " + e.Code + ": " + e.Message
}

// Is reports whether target is ErrNeedsReauth and e is the broker's
// 409 needs_reauth, or target is ErrNotFound and e is its 404 not_found.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNeedsReauth:
		return e.Status == http.StatusConflict && e.Code == "needs_reauth"
	case ErrNotFound:
		return e.Status == http.StatusNotFound && e.Code == "not_found"
	}
	return false
}

const (
	// maxErrorBody is how much of an error answer is read.
	maxErrorBody = 16 << 10
	// maxMessage bounds Error.Message.
	maxMessage = 256
)

// errorFrom turns a non-2xx answer into an *Error.
func errorFrom(resp *http.Response, now time.Time) *Error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &Error{Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), now)}
	// The broker answers {"error","message"}; API Gateway {"message"} or
	// {"Message"} (encoding/json matches names case-insensitively).
	var body struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &body) == nil {
		e.Code, e.Message = body.Error, snippet([]byte(body.Message), maxMessage)
	} else {
		e.Message = snippet(raw, maxMessage)
	}
	if !isCode(e.Code) {
		e.Code = "http_" + strconv.Itoa(resp.StatusCode)
	}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	return e
}

// maxRetryAfter bounds what a Retry-After header can make the client
// believe, so a hostile or broken answer cannot park a caller for days.
const maxRetryAfter = time.Hour

// retryAfter reads a Retry-After header: whole seconds or an HTTP date
// (RFC 9110 10.2.3). Anything else, or a time already past, is zero.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		d = time.Duration(n) * time.Second
	} else if at, err := http.ParseTime(v); err == nil {
		d = at.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// isCode accepts the shape of the broker's codes, so a hostile body cannot
// put arbitrary text where callers switch on codes.
func isCode(code string) bool {
	if code == "" || len(code) > 64 {
		return false
	}
	for _, r := range code {
		if (r < 'a' || r > 'z') && r != '_' && (r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// snippet is raw as one printable line of at most limit bytes: control
// characters and invalid UTF-8 become spaces, runs of spaces one.
func snippet(raw []byte, limit int) string {
	var b strings.Builder
	space := false
	for len(raw) > 0 && b.Len() < limit {
		r, size := utf8.DecodeRune(raw)
		raw = raw[size:]
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			r = ' '
		}
		if r == ' ' {
			if space || b.Len() == 0 {
				continue
			}
			space = true
		} else {
			space = false
		}
		if b.Len()+utf8.RuneLen(r) > limit {
			break
		}
		b.WriteRune(r)
	}
	out := strings.TrimRight(b.String(), " ")
	if len(raw) > 0 && out != "" {
		out += "…"
	}
	return out
}
