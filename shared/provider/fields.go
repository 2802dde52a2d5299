package provider

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Reading a token answer.
//
// Once a provider's answer carries tokens, the grant may already have
// rotated at the provider: the refresh token the broker presented is spent.
// Refusing the answer over anything beside the tokens (an expiry of
// "3600s", a scope sent as an array, a byte-order mark before the JSON)
// keeps the spent token, and the next refresh ends the connection. So the
// fields beside the tokens are read leniently where their meaning is clear
// and left out where it is not; only the absence of any token is an error.

// bom is the UTF-8 byte-order mark some servers put before a body.
const bom = "\uFEFF"

// bodyText is the answer with surrounding whitespace and byte-order marks
// taken off.
func bodyText(r *response) string {
	text := strings.TrimSpace(string(r.body))
	for strings.HasPrefix(text, bom) {
		text = strings.TrimSpace(strings.TrimPrefix(text, bom))
	}
	return text
}

// decodeTokenBody returns the top-level fields of a JSON object or a
// form-encoded body, as raw JSON values. A form body with an undecodable
// part keeps the parts that decode.
func decodeTokenBody(r *response) (map[string]json.RawMessage, error) {
	text := bodyText(r)
	if text == "" {
		return nil, fmt.Errorf("empty response")
	}
	// The body's own first character decides, not the Content-Type a
	// server may get wrong: a JSON object labelled as a form (or the other
	// way round) still carries its rotation.
	if strings.HasPrefix(text, "[") {
		// A one-element array around the object.
		var one []json.RawMessage
		if json.Unmarshal([]byte(text), &one) == nil && len(one) == 1 {
			text = strings.TrimSpace(string(one[0]))
		}
	}
	if !strings.HasPrefix(text, "{") && !strings.HasPrefix(text, "<") && !strings.HasPrefix(text, "[") {
		q, err := url.ParseQuery(text)
		if err != nil && len(q) == 0 {
			return nil, fmt.Errorf("form response: %v", err)
		}
		fields := make(map[string]json.RawMessage, len(q))
		for k := range q {
			raw, _ := json.Marshal(q.Get(k))
			fields[k] = raw
		}
		return foldKeys(fields), nil
	}
	if strings.HasPrefix(text, "<") {
		return nil, fmt.Errorf("HTML page instead of a token response")
	}
	var fields map[string]json.RawMessage
	// The first JSON value; whatever trails it (a newline and "{}", a ";")
	// is not the answer.
	if err := json.NewDecoder(strings.NewReader(text)).Decode(&fields); err != nil || fields == nil {
		return nil, fmt.Errorf("response is not a JSON object")
	}
	return foldKeys(fields), nil
}

// foldKeys adds, for every key not in lower case, its lower-case form
// (where that is not a key already): Access_Token is access_token.
func foldKeys(fields map[string]json.RawMessage) map[string]json.RawMessage {
	out := maps.Clone(fields)
	for k, v := range fields {
		if lk := strings.ToLower(k); lk != k {
			if _, exact := fields[lk]; !exact {
				out[lk] = v
			}
		}
	}
	return out
}

// fieldString reads a JSON string, number or bool as text; null, arrays
// and objects are empty.
func fieldString(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return strconv.FormatBool(b)
	}
	return ""
}

// textField reads a JSON string only: a token type or an error message
// sent as a number or an object is not one.
func textField(raw json.RawMessage) string {
	var s string
	if len(raw) == 0 || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// scopeField reads a scope: a string as it is, a JSON array of strings
// space-joined (RFC 6749 §3.3's form); anything else is "".
func scopeField(raw json.RawMessage) string {
	if s := textField(raw); s != "" {
		return s
	}
	var list []json.RawMessage
	if len(raw) == 0 || json.Unmarshal(raw, &list) != nil {
		return ""
	}
	parts := make([]string, 0, len(list))
	for _, item := range list {
		if s := strings.TrimSpace(textField(item)); s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, " ")
}

// wholeSeconds is a whole number of seconds, written with or without a
// zero fraction ("3600", "3600.0").
var wholeSeconds = regexp.MustCompile(`^[0-9]{1,12}(\.0*)?$`)

// secondsField reads a lifetime in seconds: a JSON number or a numeric
// string (surrounding spaces and a zero fraction allowed). It reports
// false — unknown — for anything else: missing, null, zero, negative,
// fractional, above MaxExpiresIn (2147483647 is a common "never"), a unit
// ("3600s"), an object.
func secondsField(raw json.RawMessage) (int64, bool) {
	s := strings.TrimSpace(fieldString(raw))
	if !wholeSeconds.MatchString(s) {
		return 0, false
	}
	whole, _, _ := strings.Cut(s, ".")
	n, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || n <= 0 || n > MaxExpiresIn {
		return 0, false
	}
	return n, true
}

// expiry turns an answer's expires_in into ExpiresAt: now plus the
// lifetime read, else plus the provider's default_expires_in, else zero
// (unknown). known says whether the provider's own lifetime was read.
func (b *base) expiry(now time.Time, raw json.RawMessage) (at time.Time, known bool) {
	if secs, ok := secondsField(raw); ok {
		return now.Add(time.Duration(secs) * time.Second), true
	}
	if b.cfg.DefaultExpiresIn > 0 {
		return now.Add(time.Duration(b.cfg.DefaultExpiresIn) * time.Second), false
	}
	return time.Time{}, false
}
