package provider_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/redact"
)

// Tokens a provider puts into an answer the broker cannot use. They were
// never sent by the broker, so only their place in the body (after a
// token key) can tell the redactor about them.
const (
	liveGlobal  = "WXG_live_9d8c7b6a5f4e3d2c1b0a_global_token_value"
	liveAccess  = "AT.live.0123456789abcdefghijklmnop"
	liveRefresh = "RT-live-zyxwvutsrqponm9876543210"
)

// assertNoTokenPiece fails if any MinRun-byte piece of a token, in any ASCII
// case, is in the error text.
func assertNoTokenPiece(t *testing.T, err error, tokens ...string) {
	t.Helper()
	var pe *provider.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is not a *provider.Error", err)
	}
	text := strings.ToLower(err.Error())
	for _, tok := range tokens {
		for i := 0; i+redact.MinRun <= len(tok); i++ {
			if piece := strings.ToLower(tok[i : i+redact.MinRun]); strings.Contains(text, piece) {
				t.Fatalf("error text keeps %q of a token: %v", piece, err)
			}
		}
	}
}

// TestAnswerTokensNeverInErrorText: issue 17 item 2. A non-2xx answer, a
// cut-off body or an errcode answer that carries tokens becomes an error
// whose text holds no piece of them.
func TestAnswerTokensNeverInErrorText(t *testing.T) {
	wechatBodies := []struct {
		name   string
		status int
		ct     string
		body   string
	}{
		{"500 with the global token", 500, "application/json", `{"access_token":"` + liveGlobal + `","expires_in":7200}`},
		{"503 plain text with the token", 503, "text/plain", `upstream said access_token=` + liveGlobal + ` expires_in=7200`},
		{"200 cut in the token", 200, "application/json", `{"access_token":"` + liveGlobal[:30]},
		{"200 errcode quoting the token", 200, "application/json", `{"errcode":40001,"errmsg":"invalid credential, access_token is ` + liveGlobal + ` rid: 1"}`},
		{"500 escaped JSON in a string", 500, "application/json", `{"msg":"{\"access_token\":\"` + liveGlobal + `\"}"}`},
	}
	for _, b := range wechatBodies {
		for _, api := range []string{"token", "stable_token"} {
			t.Run("wechat "+api+"/"+b.name, func(t *testing.T) {
				srv := answer(t, b.status, b.ct, b.body)
				c := newClient(t, mustConfig(t, "wx", `{"kind":"wechat_mp","client_id":"wx1","token_api":"`+api+`","api_base":"`+srv.URL+`"}`), "wxsecret")
				_, err := c.MachineToken(context.Background())
				assertNoTokenPiece(t, err, liveGlobal, liveGlobal[:30])
			})
		}
	}
	oauthBodies := []struct {
		name   string
		status int
		ct     string
		body   string
	}{
		{"200 truncated in the refresh token", 200, "application/json", `{"access_token":"` + liveAccess + `","refresh_token":"` + liveRefresh[:20]},
		{"200 truncated after the access token", 200, "application/json", `{"access_token":"` + liveAccess + `","expi`},
		{"500 truncated in the refresh token", 500, "application/json", `{"access_token":"` + liveAccess + `","refresh_token":"` + liveRefresh[:20]},
		{"500 with both tokens", 500, "application/json", `{"access_token":"` + liveAccess + `","refresh_token":"` + liveRefresh + `"}`},
		{"502 form body", 502, "application/x-www-form-urlencoded", `access_token=` + liveAccess + `&refresh_token=` + liveRefresh},
		{"400 error quoting a token", 400, "application/json", `{"error":"invalid_request","error_description":"id_token ` + liveAccess + ` is malformed"}`},
		{"500 text with a URL", 500, "text/plain", `redirect to https://x.example/cb#access_token=` + liveAccess + `&refresh_token=` + liveRefresh},
	}
	for _, b := range oauthBodies {
		t.Run("oauth2/"+b.name, func(t *testing.T) {
			srv := answer(t, b.status, b.ct, b.body)
			c := newClient(t, mustConfig(t, "p", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/a","token_url":"`+srv.URL+`/t"}`), "secret")
			_, err := c.Refresh(context.Background(), "rt-old-0123456789")
			assertNoTokenPiece(t, err, liveAccess, liveRefresh, liveRefresh[:20])
		})
	}
	t.Run("oauth2 revoke 500 with a token", func(t *testing.T) {
		srv := answer(t, http.StatusInternalServerError, "text/plain", `refresh_token: `+liveRefresh)
		c := newClient(t, mustConfig(t, "p", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/a","token_url":"`+srv.URL+`/t","revoke_url":"`+srv.URL+`/r"}`), "secret")
		err := c.Revoke(context.Background(), "other-token-0123456789", "refresh_token")
		assertNoTokenPiece(t, err, liveRefresh)
	})
}
