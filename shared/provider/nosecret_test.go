package provider_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/provider"
)

// The authorize function loads its configuration without client secrets
// (its role may not read them), so every user flow's authorize URL must
// come out of a client built with an empty secret.
func TestAuthorizeURLNeedsNoSecret(t *testing.T) {
	for _, tc := range []struct{ name, doc, idParam string }{
		{"github", `{"preset":"github","client_id":"gh-id"}`, "client_id"},
		{"google", `{"preset":"google","client_id":"g-id","authorize_params":{"access_type":"offline"}}`, "client_id"},
		{"gitlab", `{"preset":"gitlab","client_id":"gl-id"}`, "client_id"},
		{"generic", `{"kind":"oauth2","client_id":"o-id","authorize_url":"https://id.example/authorize","token_url":"https://id.example/token"}`, "client_id"},
		{"sina", `{"kind":"sinacloud","client_id":"s-id"}`, "client_id"},
		{"wechat-web", `{"kind":"wechat_oauth","client_id":"wx-id","scopes":["snsapi_base"]}`, "appid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, mustConfig(t, tc.name, tc.doc), "")
			raw, err := c.AuthorizeURL(provider.AuthorizeRequest{State: "st", RedirectURI: "https://broker.example/callback/" + tc.name,
				CodeChallenge: provider.S256Challenge(provider.NewVerifier())})
			if err != nil {
				t.Fatal(err)
			}
			u, err := url.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			q := u.Query()
			if q.Get(tc.idParam) == "" || q.Get("state") != "st" || strings.Contains(raw, "secret") {
				t.Fatalf("authorize URL %s", raw)
			}
		})
	}
}
