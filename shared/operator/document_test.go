package operator

import (
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/provider"
)

func TestDocumentSet(t *testing.T) {
	d := Document{}
	for _, s := range []string{
		"kind=oauth2", "client_id=abc", "authorize_url=https://idp.example.com/a", "token_url=https://idp.example.com/t",
		"scopes=read,write", "pkce=false", "refresh_lead_seconds=600", "authorize_params.access_type=offline",
		"authorize_params.prompt=consent", "revoke_per_token=true", "default_expires_in=3600",
	} {
		if err := d.Set(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	want := `{"authorize_params":{"access_type":"offline","prompt":"consent"},"authorize_url":"https://idp.example.com/a","client_id":"abc",` +
		`"default_expires_in":3600,"kind":"oauth2","pkce":false,"refresh_lead_seconds":600,"revoke_per_token":true,"scopes":["read","write"],` +
		`"token_url":"https://idp.example.com/t"}`
	if got := string(d.JSON()); got != want {
		t.Fatalf("document\n%s\nwant\n%s", got, want)
	}
	// What Set builds, the functions' parser reads as meant.
	cfg, err := provider.ParseConfig("idp", d.JSON())
	if err != nil {
		t.Fatal(err)
	}
	if *cfg.PKCE || cfg.RefreshLeadSeconds != 600 || cfg.AuthorizeParams["prompt"] != "consent" || len(cfg.Scopes) != 2 || !*cfg.RevokePerToken {
		t.Fatalf("parsed %+v", cfg)
	}
	// JSON forms for lists and maps.
	if err := d.Set(`scopes=["a b","c"]`); err != nil || len(d["scopes"].([]string)) != 2 {
		t.Fatalf("JSON list: %v", err)
	}
	if err := d.Set(`authorize_params={"x":"1"}`); err != nil || d["authorize_params"].(map[string]string)["x"] != "1" {
		t.Fatalf("JSON map: %v", err)
	}
}

func TestDocumentSetRefuses(t *testing.T) {
	for _, tc := range []struct{ setting, about string }{
		{"colour=blue", "unknown field"},
		{"novalue", "field=value"},
		{"=x", "field=value"},
		{"pkce=maybe", "true or false"},
		{"daily_quota_budget=lots", "whole number"},
		{"client_id.x=y", "only a map field"},
		{"authorize_params=notjson", "JSON object"},
		{"scopes=[1,2]", "JSON array"},
	} {
		err := Document{}.Set(tc.setting)
		if err == nil || !strings.Contains(err.Error(), tc.about) {
			t.Errorf("%s: %v, want an error about %q", tc.setting, err, tc.about)
		}
	}
	// Every field DESIGN.md documents can be set (and fields added to
	// provider.Config later come with it).
	got := strings.Join(FieldNames(), " ")
	for _, f := range []string{"kind", "preset", "client_id", "authorize_url", "token_url", "revoke_url", "api_base", "scopes", "auth_style",
		"pkce", "grant", "authorize_params", "token_api", "refresh_lead_seconds", "redirect_uri", "daily_quota_budget"} {
		if !strings.Contains(" "+got+" ", " "+f+" ") {
			t.Errorf("--set cannot set %s", f)
		}
	}
}
