package provider

import (
	"errors"
	"testing"
	"time"
)

func fuzzBase(kind string) base {
	return base{cfg: Config{Name: "fuzz", Kind: kind, ClientID: "c"}, secret: "fuzz-secret", now: func() time.Time { return time.Unix(0, 0) }}
}

// FuzzParseToken feeds arbitrary bodies to the RFC 6749 parser: it must
// return a token set or a classified *Error, never panic.
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
	} {
		f.Add(seed.status, seed.ct, []byte(seed.body))
	}
	o := &oauth2Client{base: fuzzBase(KindOAuth2)}
	f.Fuzz(func(t *testing.T, status int, ct string, body []byte) {
		ts, err := o.parseToken("fuzz", &response{status: status, contentType: ct, body: body})
		if err == nil && (ts == nil || ts.AccessToken == "") {
			t.Fatal("success without an access token")
		}
		var pe *Error
		if err != nil && !errors.As(err, &pe) {
			t.Fatalf("unclassified error %v", err)
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
	} {
		f.Add(200, []byte(seed))
	}
	w := &wechat{base: fuzzBase(KindWeChatOAuth)}
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		reply, err := w.parse("fuzz", &response{status: status, body: body})
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		ts, err := w.tokenSet("fuzz", reply)
		if err == nil && ts.AccessToken == "" {
			t.Fatal("success without an access token")
		}
	})
}
