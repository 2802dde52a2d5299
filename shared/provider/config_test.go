package provider_test

import (
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/provider"
)

// Every endpoint must be https, except on a loopback host (the emulators).
func TestEndpointsMustBeHTTPS(t *testing.T) {
	docs := map[string]func(field, u string) string{
		"authorize_url": func(f, u string) string {
			return `{"kind":"oauth2","client_id":"x","token_url":"https://t.example/token","authorize_url":"` + u + `"}`
		},
		"token_url": func(f, u string) string {
			return `{"kind":"oauth2","client_id":"x","authorize_url":"https://a.example/auth","token_url":"` + u + `"}`
		},
		"revoke_url": func(f, u string) string {
			return `{"preset":"github","client_id":"x","revoke_url":"` + u + `"}`
		},
		"api_base": func(f, u string) string {
			return `{"kind":"wechat_mp","client_id":"x","api_base":"` + u + `"}`
		},
		"redirect_uri": func(f, u string) string {
			return `{"kind":"wechat_oauth","client_id":"x","redirect_uri":"` + u + `"}`
		},
	}
	accepted := []string{
		"https://provider.example/x",
		"http://127.0.0.1:8080/x",
		"http://127.9.8.7/x",
		"http://[::1]:9000/x",
		"http://localhost:3000/x",
		"http://LocalHost/x",
	}
	refused := []string{
		"http://provider.example/x",
		"http://10.0.0.1/x",
		"http://128.0.0.1/x",
		"http://localhost.evil.example/x",
		"http://127.0.0.1.nip.io/x",
		"http://[::2]/x",
		"ftp://provider.example/x",
		"//provider.example/x",
		"/relative",
	}
	for field, doc := range docs {
		for _, u := range accepted {
			if _, err := provider.ParseConfig("p", []byte(doc(field, u))); err != nil {
				t.Errorf("%s %s refused: %v", field, u, err)
			}
		}
		for _, u := range refused {
			_, err := provider.ParseConfig("p", []byte(doc(field, u)))
			if err == nil || !strings.HasPrefix(err.Error(), "provider: p: "+field+" ") || !strings.Contains(err.Error(), "https") {
				t.Errorf("%s %s: got %v, want an error naming the field and https", field, u, err)
			}
		}
	}
	// An endpoint's user info is not echoed.
	_, err := provider.ParseConfig("p", []byte(docs["token_url"]("token_url", "http://user:hunter2-secret@provider.example/token")))
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("got %v", err)
	}
	// Validate says the same for a Config built in code, and New refuses it.
	cfg := provider.Config{Name: "p", Kind: provider.KindOAuth2, ClientID: "x", AuthStyle: "basic", Grant: provider.GrantClientCredentials, TokenURL: "http://provider.example/token"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "token_url") {
		t.Fatalf("Validate: %v", err)
	}
	if _, err := provider.New(cfg, "s", provider.Options{}); err == nil {
		t.Fatal("New accepted an http token_url")
	}
}

func TestSinaCloudDefaultsFollowItsDocument(t *testing.T) {
	cfg := mustConfig(t, "sina", `{"kind":"sinacloud","client_id":"x"}`)
	if cfg.AuthorizeURL != "https://api.sinaapp.com/oauth2/authorize" || cfg.TokenURL != "https://api.sinaapp.com/oauth2/access_token" || cfg.AuthStyle != "post" {
		t.Fatalf("sinacloud defaults = %+v", cfg)
	}
}
