package provider_test

import (
	"context"
	"testing"
)

// Review 3 attacks on answer parsing and redaction (issue 16 item 1,
// issue 17 item 2). Each subtest is one answer shape.

const (
	r3Access  = "AT.r3live.QWERTYasdfgh-ZXCVBnm"
	r3Refresh = "RT-r3live-zyxwvutsrqponm98765"
	r3Short   = "shrt9Tok2x7Q" // 12 bytes: shorter than redact.TokenRun
)

func r3oauth(t *testing.T, status int, ct, body string) error {
	t.Helper()
	srv := answer(t, status, ct, body)
	c := newClient(t, mustConfig(t, "p", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/a","token_url":"`+srv.URL+`/t"}`), "secret")
	_, err := c.Refresh(context.Background(), "rt-presented-0123456789")
	return err
}

// TestAnswerReviewEscapedKeyLeaks: a JSON key written with a \u escape is the
// same key to encoding/json, but redact.TokenValues looks for it in the raw
// body, so the value after it is not masked.
func TestAnswerReviewEscapedKeyLeaks(t *testing.T) {
	cases := []struct {
		name   string
		status int
		ct     string
		body   string
	}{
		{"500 truncated JSON, escaped key", 500, "application/json", `{"\u0061ccess_token":"` + r3Access + `","refresh_tok`},
		{"400 error_description with an escaped key inside", 400, "application/json", `{"error":"invalid_request","error_description":"bad \u0061ccess_token=` + r3Access + `"}`},
		{"400 error_description with an escaped underscore", 400, "application/json", `{"error":"invalid_request","error_description":"access\u005ftoken: ` + r3Access + `"}`},
	}
	for _, b := range cases {
		t.Run(b.name, func(t *testing.T) {
			assertNoTokenPiece(t, r3oauth(t, b.status, b.ct, b.body), r3Access)
		})
	}
	t.Run("wechat 500 truncated, escaped key", func(t *testing.T) {
		srv := answer(t, 500, "application/json", `{"\u0061ccess_token":"`+r3Access+`","expi`)
		c := newClient(t, mustConfig(t, "wx", `{"kind":"wechat_mp","client_id":"wx1","token_api":"token","api_base":"`+srv.URL+`"}`), "wxsecret")
		_, err := c.MachineToken(context.Background())
		assertNoTokenPiece(t, err, r3Access)
	})
}

// TestAnswerReviewFreeTextKeyWithSpace: "access token XYZ" (a space between the
// words) is not a token key to TokenValues.
func TestAnswerReviewFreeTextKeyWithSpace(t *testing.T) {
	err := r3oauth(t, 400, "application/json", `{"error":"invalid_grant","error_description":"Access Token `+r3Access+` was revoked"}`)
	assertNoTokenPiece(t, err, r3Access)
}

// TestAnswerReviewShortTokenInFreeText: a token shorter than TokenRun quoted in
// free text near its key (no ':' or '=') is not masked.
func TestAnswerReviewShortTokenInFreeText(t *testing.T) {
	err := r3oauth(t, 500, "text/plain", `upstream rejected access_token `+r3Short+` (expired)`)
	assertNoTokenPiece(t, err, r3Short)
}

// TestAnswerReviewErrorEchoingPresentedTokenIsAnError: a 200 answer whose
// "error" is invalid_grant and which merely echoes the refresh token the
// broker presented carries no new grant: it must be the error, not a
// success whose "new" refresh token is the spent one.
func TestAnswerReviewErrorEchoingPresentedTokenIsAnError(t *testing.T) {
	srv := answer(t, 200, "application/json", `{"error":"invalid_grant","error_description":"refresh token revoked","refresh_token":"rt-presented-0123456789"}`)
	c := newClient(t, mustConfig(t, "p", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/a","token_url":"`+srv.URL+`/t"}`), "secret")
	ts, err := c.Refresh(context.Background(), "rt-presented-0123456789")
	if err == nil {
		t.Fatalf("invalid_grant echoing the presented refresh token was taken as a success: access %q, refresh echoed %v", ts.AccessToken, ts.RefreshToken == "rt-presented-0123456789")
	}
}

// TestAnswerReviewKeysInOtherCaseKeepRotation: a 200 answer whose keys are
// written in another case ("Access_Token") carries a rotation; it is
// refused as "no access_token" and the new refresh token is thrown away.
func TestAnswerReviewKeysInOtherCaseKeepRotation(t *testing.T) {
	srv := answer(t, 200, "application/json", `{"Access_Token":"`+r3Access+`","Refresh_Token":"`+r3Refresh+`","Expires_In":3600}`)
	c := newClient(t, mustConfig(t, "p", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/a","token_url":"`+srv.URL+`/t"}`), "secret")
	ts, err := c.Refresh(context.Background(), "rt-presented-0123456789")
	if err != nil {
		assertNoTokenPiece(t, err, r3Access, r3Refresh)
		t.Fatalf("rotation in an answer with other-case keys thrown away: %v", err)
	}
	if ts.RefreshToken != r3Refresh {
		t.Fatalf("refresh token %q", ts.RefreshToken)
	}
}

// TestAnswerReviewDuplicateKeyLastEmpty: {"refresh_token":"new","refresh_token":""}
// — encoding/json keeps the last; the rotation in the first is lost.
func TestAnswerReviewDuplicateKeyLastEmpty(t *testing.T) {
	srv := answer(t, 200, "application/json", `{"access_token":"`+r3Access+`","refresh_token":"`+r3Refresh+`","refresh_token":null,"expires_in":3600}`)
	c := newClient(t, mustConfig(t, "p", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/a","token_url":"`+srv.URL+`/t"}`), "secret")
	ts, err := c.Refresh(context.Background(), "rt-presented-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	if ts.RefreshToken != r3Refresh {
		t.Logf("duplicate refresh_token key, last null: refresh %q (first value lost)", ts.RefreshToken)
	}
}

// TestAnswerReviewRotationShapesKept: 200 answers that carry a full rotation in
// a shape a server may send by mistake. Each refusal spends the refresh
// token the broker presented (SinaCloud's are single-use).
func TestAnswerReviewRotationShapesKept(t *testing.T) {
	json := `{"access_token":"` + r3Access + `","refresh_token":"` + r3Refresh + `","expires_in":3600}`
	form := `access_token=` + r3Access + `&refresh_token=` + r3Refresh + `&expires_in=3600`
	cases := []struct{ name, ct, body string }{
		{"JSON labelled as a form", "application/x-www-form-urlencoded", json},
		{"form labelled as JSON", "application/json", form},
		{"JSON with trailing garbage", "application/json", json + "\n{}"},
		{"JSON with a trailing semicolon", "application/json", json + ";"},
		{"JSON in a one-element array", "application/json", "[" + json + "]"},
	}
	for _, b := range cases {
		t.Run(b.name, func(t *testing.T) {
			srv := answer(t, 200, b.ct, b.body)
			c := newClient(t, mustConfig(t, "p", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/a","token_url":"`+srv.URL+`/t"}`), "secret")
			ts, err := c.Refresh(context.Background(), "rt-presented-0123456789")
			if err != nil {
				assertNoTokenPiece(t, err, r3Access, r3Refresh)
				t.Fatalf("rotation thrown away: %v", err)
			}
			if ts.RefreshToken != r3Refresh {
				t.Fatalf("refresh %q", ts.RefreshToken)
			}
		})
	}
}

// TestAnswerReviewTokenAfterManyDecoys: TokenValues stops after 32 values; a
// body whose first 32 token keys are decoys hides the real token behind
// them, and the error text quotes it.
func TestAnswerReviewTokenAfterManyDecoys(t *testing.T) {
	decoys := ""
	for i := range 40 {
		decoys += "id_token=d" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + "x&"
	}
	body := `{"note":"` + decoys + `","error":"invalid_request","error_description":"access_token=` + r3Access + `"}`
	assertNoTokenPiece(t, r3oauth(t, 400, "application/json", body), r3Access)
}

// TestAnswerReviewOtherTokenKeyNames: a 500 page quoting a token under a key
// TokenValues does not know (a prefix glued to the key, a suffix, "token"
// alone, a Bearer header echo).
func TestAnswerReviewOtherTokenKeyNames(t *testing.T) {
	for _, body := range []string{
		`{"newAccessToken":"` + r3Access + `"}`,
		`{"accessTokenValue":"` + r3Access + `"}`,
		`{"token":"` + r3Access + `"}`,
		`upstream request had Authorization: Bearer ` + r3Access,
	} {
		t.Run(body[:12], func(t *testing.T) {
			assertNoTokenPiece(t, r3oauth(t, 500, "application/json", body), r3Access)
		})
	}
}
