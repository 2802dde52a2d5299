// Package redact removes secrets from text before the text leaves the
// process: a provider's error message, a log line, an API answer.
//
// A Redactor knows a set of secrets (client secrets, codes, PKCE
// verifiers, refresh and access tokens) and every form in which a
// provider is likely to echo them: raw, query-escaped, path-escaped,
// JSON-escaped, and base64 of "client_id:secret" as HTTP Basic
// authentication carries it. Redactor.String, in this order:
//
//  1. makes the text printable (control and format characters become
//     spaces, invalid UTF-8 becomes U+FFFD), so that what is matched is
//     exactly what is written out;
//  2. masks every run of at least MinRun bytes that also occurs in some
//     form of a secret (ASCII case ignored), so a token cut anywhere by the
//     provider, or escaped, loses every byte that could identify it;
//  3. only then clips the result to a bound, so clipping can never expose
//     the start of a secret that the masking would have caught whole.
//
// Why runs of MinRun (8) bytes rather than whole secrets or prefixes: a
// provider that echoes a token may cut it, and a cut token is a substring
// of the token, not the token. Masking every 8-byte window of every form
// catches any cut at either end and any escaped piece. Eight bytes of a
// random token carry 32 (hex) to 48 (base64) bits, so an 8-byte window of
// a secret essentially never occurs in ordinary text by chance (no false
// masks),
// while what can survive — fewer than 8 bytes at an edge where the
// provider itself cut its echo — is too little of a 20-plus byte token to
// help anyone guess it.
//
// Secrets the caller never knew — tokens inside a provider's answer that
// did not parse, or came with an error status — are found by their keys
// (TokenValues) and added with Redactor.WithTokensIn before any part of
// the answer becomes text.
package redact

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"maps"
	"net/url"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Mask replaces every masked run of text.
const Mask = "[redacted]"

// MinRun is the length in bytes of the shortest piece of a secret that is
// masked wherever it occurs. A secret (or a form of it) shorter than MinRun
// is masked only where it occurs whole.
const MinRun = 8

// MinSecret is the length in bytes below which a secret is not redacted at
// all: masking every "ab" or "x" in a text would destroy it and protect
// nothing.
const MinSecret = 4

// ellipsis ends a clipped text.
const ellipsis = "…"

// Redactor masks a fixed set of secrets. The zero value and nil both know
// no secret and still make text printable and clip it. A Redactor is
// immutable and safe for concurrent use.
type Redactor struct {
	// windows holds, by window length, every ASCII-lowercased window of
	// every form of every secret: MinRun-byte windows of the long forms,
	// whole short forms.
	windows map[int]map[string]struct{}
	// lengths are the keys of windows, ascending.
	lengths []int
}

// New returns a Redactor for secrets. Empty secrets and those shorter than
// MinSecret are ignored.
func New(secrets ...string) *Redactor {
	r := &Redactor{windows: map[int]map[string]struct{}{}}
	for _, s := range secrets {
		if len(s) >= MinSecret {
			r.add(forms(s)...)
		}
	}
	return r
}

// WithBasicAuth returns a copy of r that also masks the HTTP Basic
// credentials of clientID and secret, in the two ways clients build them
// (RFC 7617 "id:secret", and RFC 6749 §2.3.1 with both parts
// form-encoded first), each in standard and URL base64. The secret itself
// is added too. Nothing is added when secret is shorter than MinSecret.
func (r *Redactor) WithBasicAuth(clientID, secret string) *Redactor {
	out := r.clone()
	if len(secret) < MinSecret {
		return out
	}
	out.add(forms(secret)...)
	for _, cred := range []string{clientID + ":" + secret, url.QueryEscape(clientID) + ":" + url.QueryEscape(secret)} {
		out.add(base64.StdEncoding.EncodeToString([]byte(cred)), base64.URLEncoding.EncodeToString([]byte(cred)))
	}
	return out
}

// forms returns the ways a secret is written in requests and echoed in
// answers: raw, url.QueryEscape, url.PathEscape, JSON-escaped as
// json.Marshal writes it (without the quotes), JSON-escaped without HTML
// escaping, JSON-escaped with "\/" for "/" (PHP's json_encode), and each
// of these made printable as String makes text printable. Duplicates are
// removed.
func forms(secret string) []string {
	htmlSafe := jsonEscape(secret, true)
	written := []string{
		secret,
		url.QueryEscape(secret),
		url.PathEscape(secret),
		htmlSafe,
		jsonEscape(secret, false),
		strings.ReplaceAll(htmlSafe, "/", `\/`),
	}
	forms := slices.Clone(written)
	for _, f := range written {
		forms = append(forms, printable(f))
	}
	forms = append(forms, base64Forms(secret)...)
	slices.Sort(forms)
	return slices.Compact(forms)
}

// base64Forms are what every base64 encoding of a text holding secret
// surely contains, whatever came before or after it: the secret is
// encoded at each of the three byte alignments, in the standard and the
// URL alphabet, and the characters that also depend on neighbouring bytes
// (the first group when the secret does not start one, the last group when
// it does not end one) are left out.
func base64Forms(secret string) []string {
	var out []string
	for align := 0; align < 3; align++ {
		b := append(make([]byte, align), secret...)
		start := 0
		if align > 0 {
			start = 4
		}
		end := len(b) / 3 * 4
		if end-start < MinRun {
			continue
		}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			out = append(out, enc.EncodeToString(b)[start:end])
		}
	}
	return out
}

func jsonEscape(s string, escapeHTML bool) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(escapeHTML)
	_ = enc.Encode(s) // a string always encodes
	out := strings.TrimSuffix(buf.String(), "\n")
	return out[1 : len(out)-1]
}

func (r *Redactor) clone() *Redactor {
	out := &Redactor{windows: map[int]map[string]struct{}{}}
	if r != nil {
		for n, set := range r.windows {
			out.windows[n] = maps.Clone(set)
		}
		out.lengths = slices.Clone(r.lengths)
	}
	return out
}

func (r *Redactor) add(forms ...string) {
	for _, f := range forms {
		if len(f) < MinSecret {
			continue
		}
		f = foldASCII(f)
		n := min(len(f), MinRun)
		set := r.windows[n]
		if set == nil {
			set = map[string]struct{}{}
			r.windows[n] = set
			r.lengths = append(r.lengths, n)
			slices.Sort(r.lengths)
		}
		for i := 0; i+n <= len(f); i++ {
			set[f[i:i+n]] = struct{}{}
		}
	}
}

// String returns s made printable, with every piece of a known secret
// masked, then clipped to at most maxBytes bytes, "…" included, when
// maxBytes > 0 (maxBytes <= 0: no bound). Masks and characters are never
// cut in half; a text clipped to a bound below len("…") becomes "".
//
// The result never contains a run of MinRun bytes (or a whole short form)
// of any form of a known secret, in any ASCII case. Should the inserted
// Mask or "…" happen to line up with neighbouring text into such a run
// (possible only for a secret that itself contains pieces of them), the
// whole result is replaced by Mask, or by "" if even Mask would match.
func (r *Redactor) String(s string, maxBytes int) string {
	out := r.mask(printable(s), maxBytes)
	if r.matches(out) {
		if r.matches(Mask) {
			return ""
		}
		return Mask
	}
	return out
}

// mask writes p with every covered rune replaced, one Mask per covered
// run, and stops as soon as the output outgrows maxBytes.
func (r *Redactor) mask(p string, maxBytes int) string {
	folded := foldASCII(p)
	var b strings.Builder
	coverEnd := 0   // p[:coverEnd] is covered by matched windows
	fits := 0       // b.Len() at the last piece boundary that left room for the ellipsis
	inMask := false // the last piece written was a Mask
	for i := 0; i < len(p); {
		_, size := utf8.DecodeRuneInString(p[i:])
		// A window may start inside a multi-byte rune; any covered byte
		// covers the whole rune.
		for j := i; j < i+size; j++ {
			if n := r.matchAt(folded, j); n > 0 {
				coverEnd = max(coverEnd, j+n)
			}
		}
		piece := p[i : i+size]
		switch {
		case coverEnd > i && inMask:
			piece = ""
		case coverEnd > i:
			piece, inMask = Mask, true
		default:
			inMask = false
		}
		if maxBytes > 0 && b.Len()+len(piece) > maxBytes {
			if maxBytes < len(ellipsis) {
				return ""
			}
			return b.String()[:fits] + ellipsis
		}
		b.WriteString(piece)
		if b.Len()+len(ellipsis) <= maxBytes {
			fits = b.Len()
		}
		i += size
	}
	return b.String()
}

// matchAt returns the length of the longest known window that starts at
// folded[i], or 0.
func (r *Redactor) matchAt(folded string, i int) int {
	if r == nil {
		return 0
	}
	for k := len(r.lengths) - 1; k >= 0; k-- {
		n := r.lengths[k]
		if i+n > len(folded) {
			continue
		}
		if _, ok := r.windows[n][folded[i:i+n]]; ok {
			return n
		}
	}
	return 0
}

// matches reports whether s contains any known window.
func (r *Redactor) matches(s string) bool {
	folded := foldASCII(s)
	for i := 0; i < len(folded); i++ {
		if r.matchAt(folded, i) > 0 {
			return true
		}
	}
	return false
}

// Printable returns s made printable and clipped to maxBytes as String
// does, with no secret known: for text that carries none by construction.
func Printable(s string, maxBytes int) string {
	return (*Redactor)(nil).String(s, maxBytes)
}

// printable replaces invalid UTF-8 with U+FFFD and control, format and
// line/paragraph separator characters with a space, so that a provider's
// text cannot forge log lines or reorder what a reader sees.
func printable(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return strings.Map(func(r rune) rune {
		if unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp) {
			return ' '
		}
		return r
	}, s)
}

// foldASCII lowercases ASCII letters only, so offsets stay the same.
func foldASCII(s string) string {
	i := strings.IndexFunc(s, func(r rune) bool { return 'A' <= r && r <= 'Z' })
	if i < 0 {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if 'A' <= b[i] && b[i] <= 'Z' {
			b[i] += 'a' - 'A'
		}
	}
	return string(b)
}
