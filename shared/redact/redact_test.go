package redact_test

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/tokenbroker/tokenbroker/shared/redact"
)

const clientID = "client:id/1"

// encodings are the forms a test expects to be masked, built here
// independently of redact.Forms.
func encodings(secret string) map[string]string {
	j, _ := json.Marshal(secret)
	basic := clientID + ":" + secret
	basicForm := url.QueryEscape(clientID) + ":" + url.QueryEscape(secret)
	return map[string]string{
		"raw":               secret,
		"query":             url.QueryEscape(secret),
		"query lowercase":   lowerPercent(url.QueryEscape(secret)),
		"path":              url.PathEscape(secret),
		"json":              string(j[1 : len(j)-1]),
		"json slash":        strings.ReplaceAll(string(j[1:len(j)-1]), "/", `\/`),
		"basic std":         base64.StdEncoding.EncodeToString([]byte(basic)),
		"basic url":         base64.URLEncoding.EncodeToString([]byte(basic)),
		"basic form std":    base64.StdEncoding.EncodeToString([]byte(basicForm)),
		"basic form url":    base64.URLEncoding.EncodeToString([]byte(basicForm)),
		"basic form rawurl": base64.RawURLEncoding.EncodeToString([]byte(basicForm)),
	}
}

// lowerPercent writes percent-escapes in lower case, as some servers echo them.
func lowerPercent(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = byte(unicode.ToLower(rune(b[i+1]))), byte(unicode.ToLower(rune(b[i+2])))
		}
	}
	return string(b)
}

// assertNoLeak fails if out holds the secret, any of its forms, or any run
// of redact.MinRun bytes of them, in any ASCII case.
func assertNoLeak(t *testing.T, out, secret string) {
	t.Helper()
	type origin struct {
		form string
		at   int
	}
	pieces := map[int]map[string]origin{} // by length: lowercased piece -> where it comes from
	for name, form := range encodings(secret) {
		if len(form) < redact.MinSecret {
			continue
		}
		lower := asciiLower(form)
		n := min(len(form), redact.MinRun)
		if pieces[n] == nil {
			pieces[n] = map[string]origin{}
		}
		for i := 0; i+n <= len(lower); i++ {
			pieces[n][lower[i:i+n]] = origin{name, i}
		}
	}
	lower := asciiLower(out)
	for n, set := range pieces {
		for i := 0; i+n <= len(lower); i++ {
			if o, ok := set[lower[i:i+n]]; ok {
				t.Fatalf("output leaks %q, bytes %d..%d of the %s form:\n%q", out[i:i+n], o.at, o.at+n, o.form, out)
			}
		}
	}
}

// asciiLower folds A-Z only: the redactor promises ASCII case, and this
// keeps byte offsets (strings.ToLower rewrites invalid UTF-8).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func newRedactor(secrets ...string) *redact.Redactor {
	return redact.New(secrets...).WithBasicAuth(clientID, secrets[0])
}

func TestEachEncoding(t *testing.T) {
	secrets := map[string]string{
		"token":      "rt-3f9a1c77e0b14d2a9c5e8b6f4a2d1c0e",
		"symbols":    `s3cr/t+k&y=v"a\l<u>e%20 x`,
		"non-ascii":  "пароль-секрет-ключ-42",
		"jwt-like":   "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-value",
		"whitespace": "tab\there\nnewline-secret",
	}
	for sname, secret := range secrets {
		for ename, form := range encodings(secret) {
			t.Run(sname+"/"+ename, func(t *testing.T) {
				text := `{"error":"invalid_grant","error_description":"token ` + form + ` is revoked"}`
				out := newRedactor(secret).String(text, 0)
				assertNoLeak(t, out, secret)
				if !strings.Contains(out, redact.Mask) || !strings.HasPrefix(out, `{"error":"invalid_grant"`) || !strings.HasSuffix(out, ` is revoked"}`) {
					t.Fatalf("masked the wrong part: %q", out)
				}
			})
		}
	}
}

// A long echoed token must lose every byte, whatever bound the text is
// clipped to and wherever the provider itself cut its echo.
func TestLongEchoClippedOrCut(t *testing.T) {
	secret := "RT." + strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", 8)
	r := newRedactor(secret)
	for _, maxBytes := range []int{0, 10, 13, 20, 40, 200, 4096} {
		for cut := 0; cut <= len(secret); cut += 7 {
			for _, text := range []string{
				"refresh token " + secret[:cut] + " invalid",
				secret[cut:] + " was the token",
				"echo: " + secret[:cut],
				url.QueryEscape(secret)[:cut],
			} {
				out := r.String(text, maxBytes)
				if cut >= redact.MinRun {
					assertNoLeak(t, out, secret)
				}
				if maxBytes > 0 && len(out) > maxBytes {
					t.Fatalf("len %d > %d: %q", len(out), maxBytes, out)
				}
			}
		}
	}
	// The bug this package replaces: clipping first kept the token's head.
	out := r.String("invalid refresh_token: "+secret, 200)
	if out != "invalid refresh_token: "+redact.Mask {
		t.Fatalf("got %q", out)
	}
}

func TestShortAndEmptySecrets(t *testing.T) {
	r := redact.New("", "ab", "pin42")
	if got := r.String("ab pin42 PIN42 pin4", 0); got != "ab [redacted] [redacted] pin4" {
		t.Fatalf("got %q", got)
	}
	if got := redact.New().String("nothing secret here", 0); got != "nothing secret here" {
		t.Fatalf("got %q", got)
	}
	var nilRedactor *redact.Redactor
	if got := nilRedactor.String("a\x00b", 0); got != "a b" {
		t.Fatalf("nil redactor: %q", got)
	}
	if got := nilRedactor.WithBasicAuth("id", "secret-value").String("x secret-value", 0); got != "x "+redact.Mask {
		t.Fatalf("nil WithBasicAuth: %q", got)
	}
}

func TestWithBasicAuthCopies(t *testing.T) {
	base := redact.New("first-0123456789")
	more := base.WithBasicAuth("id", "second-abcdefghij")
	if got := base.String("second-abcdefghij", 0); got != "second-abcdefghij" {
		t.Fatalf("WithBasicAuth changed its receiver: %q", got)
	}
	if got := more.String("first-0123456789 second-abcdefghij", 0); got != redact.Mask+" "+redact.Mask {
		t.Fatalf("got %q", got)
	}
}

func TestPrintable(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"line\nforged=1\r\tx", "line forged=1  x"},
		{"esc\x1b[31mred\x7f", "esc [31mred "},
		{"bidi \u202eevil\u2066 \u2028sep", "bidi  evil   sep"},
		{"bad \xff\xfe utf8", "bad \uFFFD utf8"},
		{"c1 \u0085 next", "c1   next"},
		{"ok 中文 ✓", "ok 中文 ✓"},
	} {
		if got := redact.Printable(tc.in, 0); got != tc.want {
			t.Errorf("Printable(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestClip(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"eleven byte", 10, "eleven …"},
		{"中文中文中文", 10, "中文…"},
		{"abc", 2, ""},
		{"abcd", 3, "…"},
		{"", 5, ""},
		{"no bound at all", 0, "no bound at all"},
	} {
		got := redact.Printable(tc.in, tc.max)
		if got != tc.want || !utf8.ValidString(got) {
			t.Errorf("Printable(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
	// A mask is never cut in half.
	r := redact.New("secret-token-value")
	if got := r.String("ab secret-token-value cd", 12); got != "ab …" {
		t.Fatalf("got %q", got)
	}
	if got := r.String("ab secret-token-value cdef", 16); got != "ab [redacted]…" {
		t.Fatalf("got %q", got)
	}
}

// A secret containing the mask text itself: the masked output would show
// a piece of it, so nothing is shown.
func TestSecretContainingTheMask(t *testing.T) {
	secret := "x" + redact.Mask + "y"
	out := redact.New(secret).String("a "+secret+" b and again "+redact.Mask, 0)
	if out != "" {
		t.Fatalf("got %q", out)
	}
	secret = "abc…defghij"
	out = redact.New(secret).String("abc…defghij abc"+strings.Repeat("z", 50), 20)
	assertNoLeak(t, out, secret)
}

// FuzzRedact writes a secret in one of its encodings into arbitrary text,
// cuts the text anywhere, and checks that no piece of the secret survives.
func FuzzRedact(f *testing.F) {
	f.Add("rt-0123456789abcdef0123456789abcdef", `{"error_description":"bad token `, `"}`, uint8(0), uint16(0), uint16(200), uint16(200))
	f.Fuzz(func(t *testing.T, secret, prefix, suffix string, encoding uint8, from, to, maxBytes uint16) {
		if len(secret) < redact.MinSecret {
			return
		}
		forms := encodings(secret)
		names := make([]string, 0, len(forms))
		for name := range forms {
			names = append(names, name)
		}
		slices.Sort(names)
		text := prefix + forms[names[int(encoding)%len(names)]] + suffix
		a, b := int(from)%(len(text)+1), int(to)%(len(text)+1)
		if a > b {
			a, b = b, a
		}
		out := newRedactor(secret).String(text[a:b], int(maxBytes))
		assertNoLeak(t, out, secret)
		if !utf8.ValidString(out) {
			t.Fatalf("invalid UTF-8: %q", out)
		}
		if maxBytes > 0 && len(out) > int(maxBytes) {
			t.Fatalf("len %d > %d", len(out), maxBytes)
		}
		for _, r := range out {
			if unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp) {
				t.Fatalf("unprintable %U in %q", r, out)
			}
		}
	})
}
