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

// TestRevokePerToken: presets say how their provider revokes, a document
// overrides them, and without a revoke_url nothing is per token.
func TestRevokePerToken(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      bool
	}{
		{"google preset: revoking ends the whole grant", `{"preset":"google","client_id":"x"}`, false},
		{"gitlab preset: per token", `{"preset":"gitlab","client_id":"x"}`, true},
		{"github preset: no revoke_url", `{"preset":"github","client_id":"x"}`, false},
		{"google overridden", `{"preset":"google","client_id":"x","revoke_per_token":true}`, true},
		{"gitlab overridden", `{"preset":"gitlab","client_id":"x","revoke_per_token":false}`, false},
		{"oauth2 unset", `{"kind":"oauth2","client_id":"x","authorize_url":"https://a.example/a","token_url":"https://a.example/t","revoke_url":"https://a.example/r"}`, false},
		{"oauth2 set", `{"kind":"oauth2","client_id":"x","authorize_url":"https://a.example/a","token_url":"https://a.example/t","revoke_url":"https://a.example/r","revoke_per_token":true}`, true},
		{"set without revoke_url", `{"kind":"oauth2","client_id":"x","authorize_url":"https://a.example/a","token_url":"https://a.example/t","revoke_per_token":true}`, false},
		{"github with a revoke_url and the field", `{"preset":"github","client_id":"x","revoke_url":"https://g.example/r","revoke_per_token":true}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := mustConfig(t, "p", tc.doc).RevokesPerToken(); got != tc.want {
				t.Fatalf("RevokesPerToken = %v, want %v", got, tc.want)
			}
		})
	}
	_, err := provider.ParseConfig("p", []byte(`{"preset":"gitlab","client_id":"x","revoke_per_token":"yes"}`))
	if err == nil || !strings.Contains(err.Error(), "revoke_per_token") {
		t.Fatalf("a string revoke_per_token: %v", err)
	}
}

// TestDefaultExpiresInBounds: 0 (no assumed lifetime) or 60 s to ten
// years; anything else is refused with an error naming the field.
func TestDefaultExpiresInBounds(t *testing.T) {
	base := `{"kind":"oauth2","client_id":"x","authorize_url":"https://a.example/a","token_url":"https://a.example/t","default_expires_in":`
	for _, v := range []string{"0", "60", "3600", "315360000"} {
		cfg, err := provider.ParseConfig("p", []byte(base+v+`}`))
		if err != nil {
			t.Fatalf("%s refused: %v", v, err)
		}
		if strings.TrimLeft(v, "0") != "" && cfg.DefaultExpiresIn == 0 {
			t.Fatalf("%s not kept", v)
		}
	}
	for _, v := range []string{"-1", "1", "59", "315360001", "2147483647"} {
		_, err := provider.ParseConfig("p", []byte(base+v+`}`))
		if err == nil || !strings.HasPrefix(err.Error(), "provider: p: default_expires_in ") || !strings.Contains(err.Error(), v) {
			t.Fatalf("%s: got %v, want an error naming default_expires_in and the value", v, err)
		}
	}
	for _, v := range []string{`"3600"`, `3600.5`, `null`} {
		_, err := provider.ParseConfig("p", []byte(base+v+`}`))
		if v == `null` {
			if err != nil {
				t.Fatalf("null refused: %v", err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "default_expires_in") {
			t.Fatalf("%s: got %v, want an error naming default_expires_in", v, err)
		}
	}
	// Every kind takes it: a WeChat or SinaCloud answer may lack an expiry too.
	for _, doc := range []string{
		`{"kind":"wechat_mp","client_id":"wx","default_expires_in":7200}`,
		`{"kind":"wechat_oauth","client_id":"wx","default_expires_in":7200}`,
		`{"kind":"sinacloud","client_id":"s","default_expires_in":604800}`,
	} {
		if cfg := mustConfig(t, "p", doc); cfg.DefaultExpiresIn == 0 {
			t.Fatalf("%s: not kept", doc)
		}
	}
}
