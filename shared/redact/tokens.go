package redact

import (
	"net/url"
	"strings"
	"unicode/utf8"
)

// Token fields in answer bodies.
//
// A provider's answer is text the broker may quote in an error (a 500 page,
// a truncated JSON object, an errcode answer whose errmsg repeats the
// request). When that answer also carries tokens, nothing has parsed them
// yet — the body may not even parse — so they are not among the secrets a
// Redactor was told about. TokenValues finds them by their keys instead,
// in whatever shape the body has: JSON (whole, escaped inside another
// string, or cut off), form or query encoding, or free text such as
// "access_token is 0123…".

// tokenKeys are the names, lower case, that announce a token. Each is also
// recognised with "-", "%5f" or nothing in place of "_", and in any ASCII
// case (accessToken, ACCESS-TOKEN).
var tokenKeys = []string{"access", "refresh", "id"}

// TokenRun is the length of the shortest run of token-like characters
// that counts as a token value when it is near a token key without being
// its value (free text: "refresh_token abc… is invalid").
const TokenRun = 16

// maxTokenValue bounds one value taken from a body, and maxTokenValues
// how many are taken: every value costs the Redactor a window per byte and
// form, and a provider's tokens are far shorter (WeChat's reach 512 bytes,
// JWTs a few kilobytes) and few.
const (
	maxTokenValue  = 8 << 10
	maxTokenValues = 32
)

// nearKey is how far after a token key a run of TokenRun token-like
// characters is still taken for its value.
const nearKey = 64

// TokenValues returns the values that follow a token key (access_token,
// refresh_token, id_token and their spellings) in body, parsed or not:
// the value written right after the key (JSON, form, query, escaped JSON),
// cut off or whole, and every run of TokenRun or more token-like
// characters that starts within a few dozen bytes after the key. Each
// value is also returned JSON- and query-unescaped when that differs, so
// that an echo of it elsewhere in the text is masked too. JSON literals
// (null, true, false) are not values.
func TokenValues(body string) []string {
	var out []string
	seen := map[string]bool{}
	add := func(v string) {
		if v == "" || v == "null" || v == "true" || v == "false" || seen[v] {
			return
		}
		seen[v] = true
		out = append(out, v)
		if u := strings.ReplaceAll(v, `\/`, "/"); u != v {
			out = append(out, u)
		}
		if u, err := url.QueryUnescape(v); err == nil && u != v {
			out = append(out, u)
		}
	}
	folded := foldASCII(body)
	for i := 0; i < len(folded) && len(seen) < maxTokenValues; {
		end := keyAt(folded, i)
		if end < 0 {
			i++
			continue
		}
		add(valueAfter(body, end))
		for _, run := range runsNear(body, end) {
			add(run)
		}
		i = end
	}
	return out
}

// WithTokensIn returns a copy of r that also masks every token value that
// TokenValues finds in body. It is the one way an answer body's tokens are
// made known before any part of the body becomes text.
func (r *Redactor) WithTokensIn(body string) *Redactor {
	out := r.clone()
	for _, v := range TokenValues(body) {
		if len(v) >= MinSecret {
			out.add(forms(v)...)
		}
	}
	return out
}

// keyAt returns the end of a token key that starts at folded[i], or -1.
// A key must not continue a word on either side ("invalid_token" is not
// "id_token"; "refresh_token_expires_in" is not "refresh_token").
func keyAt(folded string, i int) int {
	if i > 0 && wordByte(folded[i-1]) && folded[i-1] != '_' {
		return -1
	}
	for _, k := range tokenKeys {
		if !strings.HasPrefix(folded[i:], k) {
			continue
		}
		j := i + len(k)
		for _, sep := range []string{"_", "-", "%5f", ""} {
			if strings.HasPrefix(folded[j:], sep+"token") {
				end := j + len(sep) + len("token")
				if end < len(folded) && (wordByte(folded[end]) || folded[end] == '_') {
					return -1
				}
				return end
			}
		}
	}
	return -1
}

func wordByte(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
}

// valueAfter returns the value written right after a key that ends at
// body[end]: after the quotes, colon or equals sign that separate them
// (also percent-encoded or backslash-escaped), up to the closing quote of
// a JSON string, or up to the delimiter of a form or query value, or to
// the end of a cut-off body. It returns "" when no such separator follows
// the key.
func valueAfter(body string, end int) string {
	i, assigned, quoted := end, false, false
separators:
	for i < len(body) {
		switch lower := foldASCII(body[i:min(i+3, len(body))]); {
		case body[i] == ':' || body[i] == '=':
			assigned = true
			i++
		case body[i] == '"' || body[i] == '\'':
			quoted = assigned
			i++
		case body[i] == '\\' || body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n':
			i++
		case lower == "%3a" || lower == "%3d":
			assigned = true
			i += 3
		case lower == "%22" || lower == "%27":
			quoted = assigned
			i += 3
		default:
			break separators
		}
	}
	if !assigned {
		return ""
	}
	j := i
	for ; j < len(body) && j-i < maxTokenValue; j++ {
		c := body[j]
		if quoted {
			if c == '"' || c == '\'' || (c == '\\' && j+1 < len(body) && body[j+1] == '"') || strings.HasPrefix(foldASCII(body[j:min(j+3, len(body))]), "%22") {
				break
			}
			continue
		}
		if strings.IndexByte("&\"',;<>{}[]()# \t\r\n\\", c) >= 0 {
			break
		}
	}
	return body[i:j]
}

// tokenByte reports whether c may be part of a token: the base64 and
// base64url alphabets, hex, and what JWTs, percent-escapes and opaque
// provider tokens use.
func tokenByte(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.IndexByte("-._~+/=%*", c) >= 0
}

// runsNear returns every run of at least TokenRun token-like bytes that
// starts within nearKey bytes after end.
func runsNear(body string, end int) []string {
	var runs []string
	limit := min(len(body), end+nearKey)
	for i := end; i < limit; {
		if !tokenByte(body[i]) {
			i++
			continue
		}
		j := i
		for j < len(body) && j-i < maxTokenValue && tokenByte(body[j]) {
			j++
		}
		if j-i >= TokenRun {
			runs = append(runs, body[i:j])
		}
		i = j
	}
	return runs
}

// TokenLike masks, in text that came from a provider, every run of 12 or
// more token-like characters (letters, digits and -._~+/=) that holds both
// a letter and a digit, whatever key or words precede it: the keys
// TokenValues knows cannot list every way a provider may echo a token
// (an escaped key, "Access Token", "newAccessToken", "Bearer …"). Words
// of letters alone ("invalid_client_credentials") are kept.
func TokenLike(s string) string {
	var b strings.Builder
	run := func(r rune) bool {
		return r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._~+/=", r))
	}
	for i := 0; i < len(s); {
		j := i
		letter, digit := false, false
		for j < len(s) && run(rune(s[j])) {
			c := s[j]
			letter = letter || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
			digit = digit || c >= '0' && c <= '9'
			j++
		}
		switch {
		case j-i >= 12 && letter && digit:
			b.WriteString(Mask)
			i = j
		case j > i:
			b.WriteString(s[i:j])
			i = j
		default:
			_, size := utf8.DecodeRuneInString(s[i:])
			b.WriteString(s[i : i+size])
			i += size
		}
	}
	return b.String()
}
