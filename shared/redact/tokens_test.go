package redact_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/redact"
)

const (
	plantedAccess  = "AT0123456789abcdefGHIJ-_.~+/xyz"
	plantedRefresh = "rt_9f8e7d6c5b4a39281706"
)

// TestTokenValuesShapes: the value after a token key is found in every
// shape a body may have, and nothing is taken from fields that only look
// like token keys.
func TestTokenValuesShapes(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string // each must be among the values
		none       bool     // no value at all
	}{
		{"json", `{"access_token":"` + plantedAccess + `","expires_in":3600}`, []string{plantedAccess}, false},
		{"json spaced", `{ "refresh_token" : "` + plantedRefresh + `" }`, []string{plantedRefresh}, false},
		{"json cut in the value", `{"access_token":"` + plantedAccess[:20], []string{plantedAccess[:20]}, false},
		{"json cut after the colon", `{"access_token":`, nil, true},
		{"json escaped in a string", `{"error":"x","raw":"{\"id_token\":\"` + plantedAccess + `\"}"}`, []string{plantedAccess}, false},
		{"php slash", `{"access_token":"` + strings.ReplaceAll(plantedAccess, "/", `\/`) + `"}`, []string{plantedAccess}, false},
		{"form", "token_type=bearer&access_token=" + plantedRefresh + "&scope=x", []string{plantedRefresh}, false},
		{"query in a URL", `see https://x.example/cb?refresh_token=` + plantedRefresh + `#f`, []string{plantedRefresh}, false},
		{"percent-encoded form", `access_token%3D` + plantedRefresh + `%26x`, []string{plantedRefresh + "%26x"}, false},
		{"camel case", `{"accessToken":"` + plantedRefresh + `"}`, []string{plantedRefresh}, false},
		{"upper case", `ACCESS_TOKEN=` + plantedRefresh, []string{plantedRefresh}, false},
		{"free text", `errmsg: invalid access_token is ` + plantedAccess + ` rid: 1`, []string{plantedAccess}, false},
		{"html", `<td>refresh_token</td><td>` + plantedRefresh + `</td>`, []string{plantedRefresh}, false},
		{"null", `{"access_token":null}`, nil, true},
		{"invalid_token is no id_token", `{"error":"invalid_token"}`, nil, true},
		{"expiry field is no token field", `{"refresh_token_expires_in":15897600}`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := redact.TokenValues(tc.body)
			if tc.none && len(got) > 0 {
				t.Fatalf("values %q, want none", got)
			}
			for _, w := range tc.want {
				if !slices.Contains(got, w) {
					t.Fatalf("values %q, want %q among them", got, w)
				}
			}
		})
	}
}

// TestWithTokensInMasksEchoes: once a body's tokens are known, they are
// masked wherever they appear, whole, cut or escaped, and the key names
// themselves stay readable.
func TestWithTokensInMasksEchoes(t *testing.T) {
	body := `{"errmsg":"token ` + plantedAccess[:12] + ` rejected","access_token":"` + plantedAccess + `","refresh_token":"` + plantedRefresh + `"}`
	r := redact.New().WithTokensIn(body)
	out := r.String(body, 0)
	for _, secret := range []string{plantedAccess, plantedRefresh} {
		assertNoLeak(t, out, secret)
	}
	if !strings.Contains(out, `"access_token":"`+redact.Mask) || !strings.Contains(out, "rejected") {
		t.Fatalf("masked text lost its shape: %s", out)
	}
	// The original Redactor is unchanged.
	if redact.New().String(body, 0) != body {
		t.Fatal("New() masks without secrets")
	}
}

// TestTokenValuesBounded: a body stuffed with keys costs a bounded amount.
func TestTokenValuesBounded(t *testing.T) {
	body := strings.Repeat(`"access_token":"`+strings.Repeat("a", 20000)+`",`, 100)
	got := redact.TokenValues(body)
	if len(got) > 64 {
		t.Fatalf("%d values", len(got))
	}
	for _, v := range got {
		if len(v) > 8<<10 {
			t.Fatalf("value of %d bytes", len(v))
		}
	}
}

// FuzzTokenValues: any body, however broken, yields bounded values and
// never a panic; a value written after "access_token" and an assignment
// is always among them.
func FuzzTokenValues(f *testing.F) {
	f.Add(`{"access_token":"abc`, "0123456789abcdefXYZ")
	f.Add(`access%5Ftoken%3D`, "tok%2Bvalue-0123456789")
	f.Add(`<p>refresh_token</p>`, "zzzzzzzzzzzzzzzzzzzzzzzz")
	f.Add(`\"id_token\":\"`, `eyJhbGciOi.J9.x`)
	f.Fuzz(func(t *testing.T, body, value string) {
		values := redact.TokenValues(body)
		if len(values) > 3*64 {
			t.Fatalf("%d values", len(values))
		}
		for _, v := range values {
			if len(v) > 3*(8<<10) {
				t.Fatalf("value of %d bytes", len(v))
			}
		}
		// Separators before a value are skipped, and JSON literals are no
		// values: such a "value" is not expected back.
		if value == "" || len(value) > 1024 || strings.ContainsAny(value, "&\"',;<>{}[]()# \t\r\n\\%") ||
			strings.ContainsAny(value[:1], ":=") || value == "null" || value == "true" || value == "false" {
			return
		}
		got := redact.TokenValues(`{"x":1,"access_token=` + value)
		if !slices.Contains(got, value) {
			t.Fatalf("value %q not found: %q", value, got)
		}
	})
}
