package provider_test

import (
	"context"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
)

// Only non-secret identifiers reach TokenSet.Extra; id_token, mac_key and
// anything unknown are dropped.
func TestExtraKeepsOnlyIdentifiers(t *testing.T) {
	long := strings.Repeat("u", 257)
	for _, tc := range []struct {
		name, contentType, body string
		want                    map[string]string
	}{
		{"json", "application/json", `{"access_token":"a","token_type":"bearer","expires_in":60,"refresh_token":"r","scope":"s",
			"id_token":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln","mac_key":"mac-secret","mac_algorithm":"hmac-sha-256",
			"openid":"o-1","unionid":"un-1","uid":1234567,"sub":"sub-1","is_snapshotuser":1,"refresh_token_expires_in":600,
			"session_key":"wx-session-secret","unknown":"z","nested":{"a":1}}`,
			map[string]string{"openid": "o-1", "unionid": "un-1", "uid": "1234567", "sub": "sub-1", "is_snapshotuser": "1"}},
		{"form", "application/x-www-form-urlencoded", "access_token=a&token_type=bearer&id_token=x.y.z&uid=42&private_key=k",
			map[string]string{"uid": "42"}},
		{"none", "application/json", `{"access_token":"a","id_token":"x.y.z","mac_key":"k"}`, nil},
		{"too long", "application/json", `{"access_token":"a","sub":"` + long + `","openid":""}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.contentType)
				_, _ = w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			c := newClient(t, mustConfig(t, "g", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/a","token_url":"`+srv.URL+`/t"}`), "s")
			ts, err := c.Refresh(context.Background(), "rt")
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(ts.Extra, tc.want) || (tc.want == nil) != (ts.Extra == nil) {
				t.Fatalf("Extra = %v, want %v", ts.Extra, tc.want)
			}
		})
	}
}

func TestWeChatExtraKeepsOnlyIdentifiers(t *testing.T) {
	emu := emulator.NewWeChat("wxweb", "websecret")
	srv := httptest.NewServer(emu)
	defer srv.Close()
	c := newClient(t, mustConfig(t, "wx", `{"kind":"wechat_oauth","client_id":"wxweb","api_base":"`+srv.URL+`"}`), "websecret")
	emu.Inject("/sns/oauth2/refresh_token", emulator.Fault{Status: 200, ContentType: "application/json",
		Body: `{"access_token":"a","expires_in":7200,"refresh_token":"r","openid":"o-1","scope":"snsapi_base","is_snapshotuser":1,"session_key":"k","id_token":"x","unionid":"un-1"}`}, 1)
	ts, err := c.Refresh(context.Background(), "r")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"openid": "o-1", "unionid": "un-1", "is_snapshotuser": "1"}
	if !maps.Equal(ts.Extra, want) {
		t.Fatalf("Extra = %v, want %v", ts.Extra, want)
	}
}
