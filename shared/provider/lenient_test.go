package provider_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/provider"
)

// answer serves one fixed answer to every request.
func answer(t *testing.T, status int, contentType, body string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// shape is one way a provider writes the fields beside the tokens.
type shape struct {
	name string
	// field is the JSON text of the field under test: `"expires_in":…`.
	field string
	// secs is the lifetime that must be read; 0: unknown.
	secs int
}

// expiryShapes: issue 16 item 1. Each is an answer a provider really
// sends after it has rotated the grant; none may cost the tokens.
var expiryShapes = []shape{
	{"number", `"expires_in":3600`, 3600},
	{"numeric string", `"expires_in":"3600"`, 3600},
	{"string with spaces", `"expires_in":" 3600 "`, 3600},
	{"string with zero fraction", `"expires_in":"3600.0"`, 3600},
	{"float with zero fraction", `"expires_in":3600.0`, 3600},
	{"ten years exactly", `"expires_in":315360000`, 315360000},
	{"int32 max (never)", `"expires_in":2147483647`, 0},
	{"above ten years", `"expires_in":315360001`, 0},
	{"zero", `"expires_in":0`, 0},
	{"negative", `"expires_in":-1`, 0},
	{"unit suffix", `"expires_in":"3600s"`, 0},
	{"fraction", `"expires_in":3600.5`, 0},
	{"exponent", `"expires_in":3.6e3`, 0},
	{"null", `"expires_in":null`, 0},
	{"object", `"expires_in":{"seconds":3600}`, 0},
	{"array", `"expires_in":[3600]`, 0},
	{"bool", `"expires_in":true`, 0},
	{"missing", `"other":1`, 0},
}

// wantExpiry is what ExpiresAt must be for a shape, with and without a
// provider default_expires_in.
func wantExpiry(s shape, defaultSecs int) time.Time {
	switch {
	case s.secs > 0:
		return fixed.Add(time.Duration(s.secs) * time.Second)
	case defaultSecs > 0:
		return fixed.Add(time.Duration(defaultSecs) * time.Second)
	}
	return time.Time{}
}

const (
	rotatedAccess  = "at-rotated-0123456789abcdef"
	rotatedRefresh = "rt-rotated-0123456789abcdef"
)

// TestRotationKeptWhateverTheExpiry: an OAuth2 or SinaCloud refresh answer
// carrying tokens is a TokenSet for every expires_in shape; an unreadable
// expiry is unknown, or the provider's default_expires_in.
func TestRotationKeptWhateverTheExpiry(t *testing.T) {
	for _, kind := range []string{"oauth2", "sinacloud"} {
		for _, def := range []int{0, 900} {
			for _, s := range expiryShapes {
				t.Run(kind+"/default="+strconv.Itoa(def)+"/"+s.name, func(t *testing.T) {
					srv := answer(t, 200, "application/json", `{"access_token":"`+rotatedAccess+`","refresh_token":"`+rotatedRefresh+`","token_type":"bearer",`+s.field+`}`)
					doc := `{"kind":"oauth2","client_id":"c","authorize_url":"` + srv.URL + `/a","token_url":"` + srv.URL + `/t"`
					if kind == "sinacloud" {
						doc = `{"kind":"sinacloud","client_id":"c","api_base":"` + srv.URL + `"`
					}
					if def > 0 {
						doc += `,"default_expires_in":` + strconv.Itoa(def)
					}
					c := newClient(t, mustConfig(t, "p", doc+"}"), "secret")
					ts, err := c.Refresh(context.Background(), "rt-old-0123456789")
					if err != nil {
						t.Fatalf("rotation thrown away: %v", err)
					}
					if ts.AccessToken != rotatedAccess || ts.RefreshToken != rotatedRefresh {
						t.Fatalf("tokens %q %q", ts.AccessToken, ts.RefreshToken)
					}
					if want := wantExpiry(s, def); !ts.ExpiresAt.Equal(want) {
						t.Fatalf("ExpiresAt %v, want %v", ts.ExpiresAt, want)
					}
					// SinaCloud's refresh token lifetime derives only from an
					// expiry the provider gave.
					if kind == "sinacloud" {
						want := time.Time{}
						if s.secs > 0 {
							want = wantExpiry(s, 0).Add(provider.SinaCloudRefreshGrace)
						}
						if !ts.RefreshExpiresAt.Equal(want) {
							t.Fatalf("RefreshExpiresAt %v, want %v", ts.RefreshExpiresAt, want)
						}
					}
				})
			}
		}
	}
}

// TestWeChatTokensKeptWhateverTheExpiry: the same for WeChat's global
// token (both APIs) and web-authorization refresh.
func TestWeChatTokensKeptWhateverTheExpiry(t *testing.T) {
	for _, def := range []int{0, 900} {
		for _, s := range expiryShapes {
			for _, flow := range []string{"token", "stable_token", "oauth refresh"} {
				t.Run(flow+"/default="+strconv.Itoa(def)+"/"+s.name, func(t *testing.T) {
					body := `{"access_token":"` + rotatedAccess + `",` + s.field + `}`
					if flow == "oauth refresh" {
						body = `{"errcode":0,"access_token":"` + rotatedAccess + `","refresh_token":"` + rotatedRefresh + `","openid":"o1",` + s.field + `}`
					}
					srv := answer(t, 200, "application/json", body)
					doc := `{"kind":"wechat_mp","client_id":"wx1","token_api":"` + flow + `","api_base":"` + srv.URL + `"`
					if flow == "oauth refresh" {
						doc = `{"kind":"wechat_oauth","client_id":"wx1","api_base":"` + srv.URL + `"`
					}
					if def > 0 {
						doc += `,"default_expires_in":` + strconv.Itoa(def)
					}
					c := newClient(t, mustConfig(t, "wx", doc+"}"), "wxsecret")
					var ts *provider.TokenSet
					var err error
					if flow == "oauth refresh" {
						ts, err = c.Refresh(context.Background(), "rt-old-0123456789")
					} else {
						ts, err = c.MachineToken(context.Background())
					}
					if err != nil {
						t.Fatalf("token thrown away: %v", err)
					}
					if ts.AccessToken != rotatedAccess {
						t.Fatalf("access token %q", ts.AccessToken)
					}
					if want := wantExpiry(s, def); !ts.ExpiresAt.Equal(want) {
						t.Fatalf("ExpiresAt %v, want %v", ts.ExpiresAt, want)
					}
				})
			}
		}
	}
}

// TestFieldsBesideTheTokens: framing, scope, token type, refresh expiry,
// extras and a stray error field never cost the tokens; what cannot be
// read is left out.
func TestFieldsBesideTheTokens(t *testing.T) {
	for _, tc := range []struct {
		name, contentType, body string
		check                   func(t *testing.T, ts *provider.TokenSet)
	}{
		{"json after a BOM", "application/json", "\uFEFF" + `{"access_token":"A1","refresh_token":"R1","expires_in":60}`, nil},
		{"json in whitespace", "application/json", " \r\n\t{\"access_token\":\"A1\",\"refresh_token\":\"R1\",\"expires_in\":60}\n\n", nil},
		{"BOM and whitespace", "application/json", "\n\uFEFF  {\"access_token\":\"A1\",\"refresh_token\":\"R1\",\"expires_in\":60}  ", nil},
		{"form after a BOM", "application/x-www-form-urlencoded", "\uFEFFaccess_token=A1&refresh_token=R1&expires_in=60\n", nil},
		{"form with a bad escape beside", "application/x-www-form-urlencoded", "access_token=A1&refresh_token=R1&expires_in=60&note=%zz", nil},
		{"scope array", "application/json", `{"access_token":"A1","refresh_token":"R1","expires_in":60,"scope":["openid"," email",3]}`, func(t *testing.T, ts *provider.TokenSet) {
			if ts.Scope != "openid email" {
				t.Fatalf("scope %q", ts.Scope)
			}
		}},
		{"scope null, number, object", "application/json", `{"access_token":"A1","refresh_token":"R1","expires_in":60,"scope":{"a":1}}`, func(t *testing.T, ts *provider.TokenSet) {
			if ts.Scope != "" {
				t.Fatalf("scope %q", ts.Scope)
			}
		}},
		{"token_type number", "application/json", `{"access_token":"A1","refresh_token":"R1","expires_in":60,"token_type":7}`, func(t *testing.T, ts *provider.TokenSet) {
			if ts.TokenType != "Bearer" {
				t.Fatalf("token type %q", ts.TokenType)
			}
		}},
		{"token_type object", "application/json", `{"access_token":"A1","refresh_token":"R1","expires_in":60,"token_type":{"x":"mac"}}`, func(t *testing.T, ts *provider.TokenSet) {
			if ts.TokenType != "Bearer" {
				t.Fatalf("token type %q", ts.TokenType)
			}
		}},
		{"refresh expiry unreadable", "application/json", `{"access_token":"A1","refresh_token":"R1","expires_in":60,"refresh_token_expires_in":"15897600s","refresh_expires_in":-1}`, func(t *testing.T, ts *provider.TokenSet) {
			if !ts.RefreshExpiresAt.IsZero() {
				t.Fatalf("refresh expiry %v", ts.RefreshExpiresAt)
			}
		}},
		{"refresh_expires_in (Keycloak)", "application/json", `{"access_token":"A1","refresh_token":"R1","expires_in":60,"refresh_expires_in":"1800"}`, func(t *testing.T, ts *provider.TokenSet) {
			if !ts.RefreshExpiresAt.Equal(fixed.Add(1800 * time.Second)) {
				t.Fatalf("refresh expiry %v", ts.RefreshExpiresAt)
			}
		}},
		{"extras unreadable left out", "application/json", `{"access_token":"A1","refresh_token":"R1","expires_in":60,"uid":{"n":1},"sub":["x"],"openid":null,"unionid":"u1"}`, func(t *testing.T, ts *provider.TokenSet) {
			if len(ts.Extra) != 1 || ts.Extra["unionid"] != "u1" {
				t.Fatalf("extra %v", ts.Extra)
			}
		}},
		{"error beside the tokens", "application/json", `{"error":"invalid_grant","access_token":"A1","refresh_token":"R1","expires_in":60}`, nil},
		{"refresh token only", "application/json", `{"refresh_token":"R1","expires_in":60}`, func(t *testing.T, ts *provider.TokenSet) {
			if ts.AccessToken != "" || !ts.ExpiresAt.IsZero() {
				t.Fatalf("access %q expires %v", ts.AccessToken, ts.ExpiresAt)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := answer(t, 200, tc.contentType, tc.body)
			c := newClient(t, mustConfig(t, "p", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/a","token_url":"`+srv.URL+`/t"}`), "secret")
			ts, err := c.Refresh(context.Background(), "rt-old-0123456789")
			if err != nil {
				t.Fatalf("tokens thrown away: %v", err)
			}
			if ts.RefreshToken != "R1" {
				t.Fatalf("refresh token %q", ts.RefreshToken)
			}
			if tc.check != nil {
				tc.check(t, ts)
			} else if ts.AccessToken != "A1" || !ts.ExpiresAt.Equal(fixed.Add(time.Minute)) {
				t.Fatalf("access %q expires %v", ts.AccessToken, ts.ExpiresAt)
			}
		})
	}
}

// TestErrorsWithoutTokensStayErrors: the leniency is for answers that
// carry tokens; without one, RFC 6749 and WeChat errors are what they were.
func TestErrorsWithoutTokensStayErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		code       string
		class      provider.Class
	}{
		{"200 error, no token", `{"error":"invalid_grant","error_description":"revoked"}`, "invalid_grant", provider.ClassReauth},
		{"200 BOM error, no token", "\uFEFF" + `{"error":"invalid_grant"}`, "invalid_grant", provider.ClassReauth},
		{"200 nothing", `{"expires_in":3600}`, "bad_response", provider.ClassTransient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := answer(t, 200, "application/json", tc.body)
			c := newClient(t, mustConfig(t, "p", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/a","token_url":"`+srv.URL+`/t"}`), "secret")
			_, err := c.Refresh(context.Background(), "rt-old-0123456789")
			assertError(t, err, tc.class, tc.code)
		})
	}
	for _, tc := range []struct {
		name, body string
		code       string
		class      provider.Class
	}{
		{"errcode beside a token", `{"errcode":40001,"errmsg":"invalid credential","access_token":"A1"}`, "40001", provider.ClassConfig},
		{"errcode as a string", "\uFEFF" + `{"errcode":"42002","errmsg":"refresh_token timeout"}`, "42002", provider.ClassReauth},
		{"no token", `{"errcode":0,"errmsg":"ok"}`, "bad_response", provider.ClassTransient},
	} {
		t.Run("wechat "+tc.name, func(t *testing.T) {
			srv := answer(t, 200, "application/json", tc.body)
			c := newClient(t, mustConfig(t, "wx", `{"kind":"wechat_oauth","client_id":"wx1","api_base":"`+srv.URL+`"}`), "wxsecret")
			_, err := c.Refresh(context.Background(), "rt-old-0123456789")
			assertError(t, err, tc.class, tc.code)
		})
	}
}
