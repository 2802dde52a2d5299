package provider

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// The secrets every fuzzed call carries: the client secret and a refresh
// token, which the fuzzer may echo in the body in any form.
const (
	fuzzSecret  = "fuzz-client-secret-0123"
	fuzzRefresh = "fuzz-refresh-token-abcdefghij"
)

func fuzzBase(kind string) base {
	return base{cfg: Config{Name: "fuzz", Kind: kind, ClientID: "c"}, secret: fuzzSecret, now: func() time.Time { return time.Unix(0, 0) }}
}

var fuzzCall = call{op: opRefresh, secrets: []string{fuzzRefresh}}

// checkFuzzError fails unless err is nil or a classified *Error whose code
// and message hold no 8-byte piece of the call's secrets.
func checkFuzzError(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("unclassified error %v", err)
	}
	for _, secret := range []string{fuzzSecret, fuzzRefresh} {
		for i := 0; i+8 <= len(secret); i++ {
			piece := strings.ToLower(secret[i : i+8])
			if strings.Contains(strings.ToLower(pe.Code), piece) || strings.Contains(strings.ToLower(pe.Message), piece) {
				t.Fatalf("error leaks %q: %v", piece, err)
			}
		}
	}
	if len(pe.Code) > maxCode || len(pe.Message) > maxMessage {
		t.Fatalf("error text not bounded: %d / %d bytes", len(pe.Code), len(pe.Message))
	}
}

// FuzzParseToken feeds arbitrary bodies to the RFC 6749 parser: it must
// return a token set or a classified *Error that leaks no secret, never
// panic.
func FuzzParseToken(f *testing.F) {
	for _, seed := range []struct {
		status int
		ct     string
		body   string
	}{
		{200, "application/json", `{"access_token":"a","expires_in":3600,"refresh_token":"r","token_type":"bearer"}`},
		{200, "application/json", `{"access_token":"a","expires_in":"3600"}`},
		{200, "application/x-www-form-urlencoded", "access_token=a&scope=repo%2Cgist&token_type=bearer"},
		{200, "application/x-www-form-urlencoded", "error=bad_verification_code"},
		{400, "application/json", `{"error":"invalid_grant"}`},
		{200, "application/json", `{"access_token":"a","expi`},
		{502, "text/html", "<html>bad gateway</html>"},
		{200, "application/json", `[1,2,3]`},
		{200, "application/json", `{"access_token":{"x":1},"expires_in":1e400}`},
		// Redirect answers reach the parser only if do let them through.
		{307, "text/html", `<a href="https://evil.example/token?refresh_token=` + fuzzRefresh + `">moved</a>`},
		{308, "application/json", `{"error":"moved","error_description":"see https://evil.example/token"}`},
		// Echoed secrets, whole, escaped and cut.
		{400, "application/json", `{"error":"invalid_grant","error_description":"refresh token ` + fuzzRefresh + ` is revoked"}`},
		{400, "application/json", `{"error":"invalid_client","error_description":"client_secret=` + fuzzSecret[:15] + `"}`},
		{400, "text/plain", "refresh_token=" + strings.ReplaceAll(fuzzRefresh, "-", "%2D") + "&client_secret=" + fuzzSecret},
		{200, "application/json", `{"access_token":"tok-0123456789","expires_in":"tok-0123456789"}`},
		{400, "application/json", `{"error":"` + fuzzRefresh + `"}`},
		{400, "application/json", `{"error":"login_required","error_description":"` + strings.Repeat("x", 190) + fuzzRefresh + `"}`},
		{400, "application/json", `{"error":"unauthorized_client","error_description":"no refresh permission"}`},
		{200, "application/json", `{"access_token":"a","id_token":"eyJ.x.y","mac_key":"k","openid":"o","uid":"u","sub":"s","unknown":"z"}`},
		// Issue 16: an answer with tokens is a success whatever else it holds.
		{200, "application/json", `{"access_token":"a","refresh_token":"r","expires_in":2147483647}`},
		{200, "application/json", `{"access_token":"a","refresh_token":"r","expires_in":-1}`},
		{200, "application/json", `{"access_token":"a","refresh_token":"r","expires_in":0}`},
		{200, "application/json", `{"access_token":"a","refresh_token":"r","expires_in":"3600s"}`},
		{200, "application/json", `{"access_token":"a","refresh_token":"r","expires_in":3600.5}`},
		{200, "application/json", `{"access_token":"a","refresh_token":"r","expires_in":null}`},
		{200, "application/json", `{"access_token":"a","refresh_token":"r","expires_in":{"s":1}}`},
		{200, "application/json", `{"access_token":"a","expires_in":" 3600 "}`},
		{200, "application/json", `{"access_token":"a","expires_in":"3600.0"}`},
		{200, "application/json", `{"access_token":"a","expires_in":3600.0}`},
		{200, "application/json", "\uFEFF{\"access_token\":\"a\",\"expires_in\":3600}"},
		{200, "application/json", " \r\n\t{\"access_token\":\"a\"}\n\n"},
		{200, "application/x-www-form-urlencoded", "\uFEFFaccess_token=a&expires_in=3600s\n"},
		{200, "application/json", `{"access_token":"a","scope":["openid","email"],"token_type":7,"refresh_expires_in":"x","uid":{"n":1}}`},
		{200, "application/json", `{"access_token":"a","scope":null,"token_type":null,"refresh_token_expires_in":-5}`},
		{200, "application/json", `{"refresh_token":"r"}`},
		{200, "application/json", `{"error":"invalid_grant","access_token":"a","refresh_token":"r"}`},
		{500, "application/json", `{"access_token":"a","refresh_token":"` + fuzzRefresh + `"}`},
	} {
		f.Add(seed.status, seed.ct, []byte(seed.body))
	}
	clients := []*oauth2Client{{base: fuzzBase(KindOAuth2)}, {base: fuzzBase(KindSinaCloud)}}
	f.Fuzz(func(t *testing.T, status int, ct string, body []byte) {
		for _, o := range clients {
			ts, err := o.parseToken(fuzzCall, &response{status: status, contentType: ct, body: body})
			if err == nil && (ts == nil || ts.AccessToken == "" && ts.RefreshToken == "") {
				t.Fatal("success without a token")
			}
			if ts != nil && !ts.ExpiresAt.IsZero() && ts.ExpiresAt.After(time.Unix(MaxExpiresIn, 0)) {
				t.Fatalf("expiry %v beyond MaxExpiresIn", ts.ExpiresAt)
			}
			checkFuzzError(t, err)
			if ts != nil {
				for k := range ts.Extra {
					if !slices.Contains(extraFields, k) {
						t.Fatalf("extra %q is not allowed", k)
					}
				}
			}
		}
	})
}

// FuzzParseWeChat does the same for WeChat's errcode-or-token answers.
func FuzzParseWeChat(f *testing.F) {
	for _, seed := range []string{
		`{"access_token":"a","expires_in":7200}`,
		`{"errcode":40029,"errmsg":"invalid code"}`,
		`{"errcode":0,"errmsg":"ok","access_token":"a","expires_in":7200,"openid":"o","is_snapshotuser":1}`,
		`{"errcode":"40029"}`,
		`<html>`,
		`{"access_token":"a","expires_in":"7200"}`,
		``,
		// Echoed secrets: WeChat quotes parts of the request in errmsg.
		`{"errcode":40030,"errmsg":"invalid refresh_token: ` + fuzzRefresh + ` rid: 1"}`,
		`{"errcode":40001,"errmsg":"invalid credential, secret=` + fuzzSecret + `"}`,
		`{"errcode":40125,"errmsg":"` + strings.Repeat("y", 195) + fuzzSecret + `"}`,
		`{"access_token":"wx-token-0123456789","expires_in":"wx-token-0123456789"}`,
		// Issue 16: a token answer is a success whatever else it holds.
		`{"access_token":"a","expires_in":2147483647}`,
		`{"access_token":"a","expires_in":-1}`,
		`{"access_token":"a","expires_in":"3600s"}`,
		`{"access_token":"a","expires_in":7200.0,"scope":["snsapi_base"],"openid":{"x":1},"is_snapshotuser":null}`,
		`{"errcode":0,"errmsg":"ok","access_token":"a","expires_in":null}`,
		`{"errcode":"0","access_token":"a","expires_in":" 7200 "}`,
		`{"errcode":{},"access_token":"a"}`,
		"\uFEFF{\"access_token\":\"a\",\"expires_in\":7200}",
		" \n{\"access_token\":\"a\",\"expires_in\":\"7200.0\"}\r\n",
	} {
		f.Add(200, []byte(seed))
	}
	f.Add(302, []byte(`<a href="https://evil.example/cgi-bin/token?secret=`+fuzzSecret+`">`))
	w := &wechat{base: fuzzBase(KindWeChatOAuth)}
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		reply, err := w.parse(fuzzCall, &response{status: status, body: body})
		if err != nil {
			checkFuzzError(t, err)
			return
		}
		ts := w.tokenSet(reply)
		if ts.AccessToken == "" && ts.RefreshToken == "" {
			t.Fatal("success without a token")
		}
		if !ts.ExpiresAt.IsZero() && ts.ExpiresAt.After(time.Unix(MaxExpiresIn, 0)) {
			t.Fatalf("expiry %v beyond MaxExpiresIn", ts.ExpiresAt)
		}
	})
}
