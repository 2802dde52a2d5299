package provider_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/provider"
)

// Secrets with characters that every escaping treats differently, and a
// refresh token far longer than an error message.
const (
	echoClientID = "client id/1"
	echoSecret   = "cs/+= secret&value-0123456789"
	echoCode     = "code/+=&-0123456789abcdef"
	echoVerifier = "verifier-0123456789abcdefghijklmnopqrstuvwxyz-._~"
)

var (
	echoRefresh = "RT." + strings.Repeat("Zx81-kq_Pw2/Ab+", 20)
	echoRevoke  = "AT." + strings.Repeat("0123456789abcdef", 12)
)

// echo answers every request with an error whose text repeats all of it:
// the query, the body (decoded and raw) and the Authorization header.
func echo(mode string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		decoded, _ := url.ParseQuery(string(raw))
		query := r.URL.Query()
		var parts []string
		for _, v := range []url.Values{decoded, query} {
			for k := range v {
				parts = append(parts, k+"="+v.Get(k))
			}
		}
		text := "invalid " + strings.Join(parts, " ") + " raw=" + string(raw) + " query=" + r.URL.RawQuery + " auth=" + r.Header.Get("Authorization")
		switch mode {
		case "json400":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"invalid_request","error_description":%q}`, text)
		case "code400":
			// The echo in the error code itself.
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":%q}`, r.Header.Get("Authorization")+string(raw)+r.URL.RawQuery)
		case "text500":
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(text))
		case "form200":
			w.Header().Set("Content-Type", "application/x-www-form-urlencoded")
			_, _ = w.Write([]byte(url.Values{"error": {"bad_verification_code"}, "error_description": {text}}.Encode()))
		case "wechat":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"errcode":40001,"errmsg":%q}`, text)
		case "redirect":
			w.Header().Set("Location", "https://elsewhere.example/"+url.PathEscape(text)+"?"+string(raw))
			w.WriteHeader(http.StatusTemporaryRedirect)
		}
	}
}

// assertNoPiece fails if the error's code or message holds any 8-byte run
// of any secret, raw, escaped or in a Basic header, in any ASCII case.
func assertNoPiece(t *testing.T, err error, secrets ...string) {
	t.Helper()
	var pe *provider.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is not a *provider.Error", err)
	}
	text := strings.ToLower(pe.Code + "\n" + pe.Message)
	var forms []string
	for _, s := range secrets {
		forms = append(forms, s, url.QueryEscape(s), url.PathEscape(s))
	}
	basic := url.QueryEscape(echoClientID) + ":" + url.QueryEscape(echoSecret)
	forms = append(forms, base64.StdEncoding.EncodeToString([]byte(basic)))
	for _, f := range forms {
		for i := 0; i+8 <= len(f); i++ {
			if strings.Contains(text, strings.ToLower(f[i:i+8])) {
				t.Fatalf("error leaks %q of %q: %v", f[i:i+8], f, err)
			}
		}
	}
	if len(pe.Message) > 200 || len(pe.Code) > 64 {
		t.Fatalf("error text too long: code %d, message %d bytes", len(pe.Code), len(pe.Message))
	}
}

// A provider that echoes the whole request, in any of the ways an error
// reaches the broker, leaks no piece of any credential of the call.
func TestEchoedSecretsAreRedacted(t *testing.T) {
	all := []string{echoSecret, echoCode, echoVerifier, echoRefresh, echoRevoke}
	calls := map[string]func(provider.Client) error{
		"exchange": func(c provider.Client) error {
			_, err := c.Exchange(context.Background(), echoCode, "https://b/cb", echoVerifier)
			return err
		},
		"refresh": func(c provider.Client) error {
			_, err := c.Refresh(context.Background(), echoRefresh)
			return err
		},
		"revoke": func(c provider.Client) error { return c.Revoke(context.Background(), echoRevoke, "access_token") },
		"machine": func(c provider.Client) error {
			_, err := c.MachineToken(context.Background())
			return err
		},
	}
	for _, mode := range []string{"json400", "code400", "text500", "form200", "redirect"} {
		for _, doc := range []string{
			`{"kind":"oauth2","auth_style":"basic","revoke_url":"%[1]s/r","authorize_url":"%[1]s/a","token_url":"%[1]s/t"}`,
			`{"kind":"oauth2","auth_style":"post","revoke_url":"%[1]s/r","authorize_url":"%[1]s/a","token_url":"%[1]s/t"}`,
			`{"kind":"oauth2","grant":"client_credentials","token_url":"%[1]s/t"}`,
			`{"kind":"sinacloud","api_base":"%[1]s"}`,
		} {
			srv := httptest.NewServer(echo(mode))
			cfg := mustConfig(t, "echo", strings.Replace(fmt.Sprintf(doc, srv.URL), "{", `{"client_id":"`+echoClientID+`",`, 1))
			c := newClient(t, cfg, echoSecret)
			for name, call := range calls {
				err := call(c)
				if errors.Is(err, provider.ErrNotSupported) || (err == nil && name == "revoke" && mode == "form200") {
					continue // RFC 7009 §2.2: any 200 means revoked
				}
				t.Run(mode+"/"+cfg.Kind+"/"+cfg.AuthStyle+"/"+cfg.Grant+"/"+name, func(t *testing.T) {
					assertNoPiece(t, err, all...)
				})
			}
			srv.Close()
		}
	}
	for _, doc := range []string{`{"kind":"wechat_oauth"`, `{"kind":"wechat_mp","token_api":"token"`, `{"kind":"wechat_mp","token_api":"stable_token"`} {
		srv := httptest.NewServer(echo("wechat"))
		c := newClient(t, mustConfig(t, "wx", doc+`,"client_id":"wx","api_base":"`+srv.URL+`"}`), echoSecret)
		for name, call := range calls {
			err := call(c)
			if errors.Is(err, provider.ErrNotSupported) {
				continue
			}
			t.Run("wechat/"+c.Config().Kind+"/"+c.Config().TokenAPI+"/"+name, func(t *testing.T) {
				assertNoPiece(t, err, all...)
				var pe *provider.Error
				if errors.As(err, &pe); pe.Code != "40001" || !strings.HasPrefix(pe.Message, "invalid ") {
					t.Fatalf("the useful part is gone: %v", err)
				}
			})
		}
		srv.Close()
	}
}

// The bug this replaces: the message was clipped to 200 bytes before the
// secret was replaced, so a long echoed refresh token kept its head.
func TestLongEchoedRefreshTokenLeaksNothing(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"error":"invalid_grant","error_description":"refresh token %s is revoked"}`, r.PostForm.Get("refresh_token"))
	}))
	defer srv.Close()
	c := newClient(t, mustConfig(t, "g", `{"kind":"oauth2","client_id":"c","authorize_url":"`+srv.URL+`/a","token_url":"`+srv.URL+`/t"}`), "client-secret")
	_, err := c.Refresh(context.Background(), echoRefresh)
	assertError(t, err, provider.ClassReauth, "invalid_grant")
	assertNoPiece(t, err, echoRefresh)
	var pe *provider.Error
	errors.As(err, &pe)
	if pe.Message != "refresh token [redacted] is revoked" {
		t.Fatalf("message %q", pe.Message)
	}
}
