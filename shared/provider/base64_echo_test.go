package provider_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/provider"
)

// The call's secrets are redacted in raw, URL, JSON and base64 forms: a
// provider echoing the refresh token it was sent, or the client secret
// alone, base64-encoded at any byte alignment, leaks no 8-byte run of it.
// (Once only the Basic credential "id:secret" was masked in base64.)
func TestBase64EchoesOfTheCallsSecretsAreMasked(t *testing.T) {
	rt := "rt_Q8vN2kLx7TzP4mWc9RbJ1yHd6GsF3aKe5Vu0Xo"
	for name, echoed := range map[string]string{
		"refresh token, base64":     base64.StdEncoding.EncodeToString([]byte(rt)),
		"client secret, base64":     base64.StdEncoding.EncodeToString([]byte(echoSecret)),
		"refresh token, html":       html.EscapeString(strings.ReplaceAll(rt, "a", "&")),
		"refresh token, raw (ctrl)": rt,
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"invalid_grant","error_description":"token %s was revoked"}`, echoed)
		}))
		cfg := mustConfig(t, "echo", fmt.Sprintf(`{"kind":"oauth2","client_id":"id","auth_style":"post","authorize_url":"%[1]s/a","token_url":"%[1]s/t"}`, srv.URL))
		_, err := newClient(t, cfg, echoSecret).Refresh(context.Background(), rt)
		srv.Close()
		pe, _ := err.(*provider.Error)
		t.Logf("%s: %v", name, err)
		for i := 0; pe != nil && i+12 <= len(echoed); i++ {
			if strings.Contains(pe.Message, echoed[i:i+12]) {
				t.Errorf("%s: %q of the echo reaches the error: %q", name, echoed[i:i+12], pe.Message)
				break
			}
		}
	}
}
