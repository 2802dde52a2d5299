package provider

import (
	"errors"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/redact"
)

// planted is a token a provider put into its answer. The broker never
// sent it, so only its place after a token key can reveal it.
const planted = "Zq7PlantedTok3nVal0e9xKw2Mv5Rr8"

// plantedKeys are the spellings of a token key the fuzzer picks from.
var plantedKeys = []string{"access_token", "refresh_token", "id_token", "accessToken", "REFRESH-TOKEN", "access%5Ftoken"}

// plantedSeparators are what may stand between a key and its value.
const plantedSeparators = "\":= \\'"

// plantedBody builds an answer body with planted written after a token
// key: before, a quote, the key, a separator (always holding an
// assignment), planted, after; then cut to cut bytes when that is shorter.
func plantedBody(before string, key uint8, sep string, after string, cut uint16) string {
	if len(before) > 160 {
		// Each key in before adds values the redactor must learn; a body
		// stuffed with more of them than redact keeps is out of scope.
		before = before[:160]
	}
	var s strings.Builder
	for i := 0; i < len(sep) && i < 4; i++ {
		s.WriteByte(plantedSeparators[int(sep[i])%len(plantedSeparators)])
	}
	if !strings.ContainsAny(s.String(), ":=") {
		s.WriteByte(':')
	}
	body := before + `"` + plantedKeys[int(key)%len(plantedKeys)] + s.String() + planted + after
	if int(cut) > 0 && int(cut) < len(body) {
		body = body[:cut]
	}
	return body
}

// FuzzAnswerRedaction: whatever surrounds a token in an answer — any
// status, content type, truncation, HTML, errcode JSON or free text — no
// MinRun-byte piece of it reaches the text of the error that answer
// becomes (issue 17 item 2).
func FuzzAnswerRedaction(f *testing.F) {
	f.Add(500, "application/json", `{"errcode":-1,"errmsg":"busy",`, uint8(0), `":"`, `","expires_in":7200}`, uint16(0))
	f.Add(200, "application/json", `{`, uint8(1), `":"`, `"}`, uint16(40))
	f.Add(502, "text/html", `<html><body>`, uint8(0), `=`, `</body></html>`, uint16(0))
	f.Add(400, "application/json", `{"error":"invalid_request","error_description":"bad `, uint8(2), ` `, ` here"}`, uint16(0))
	f.Add(200, "application/json", `{"errcode":40001,"errmsg":"invalid credential, `, uint8(0), ` : `, ` rid: 1"}`, uint16(0))
	f.Add(503, "text/plain", `see https://x.example/cb?a=1&`, uint8(5), `=`, `&b=2`, uint16(0))
	f.Add(200, "application/x-www-form-urlencoded", `token_type=bearer&`, uint8(3), `=`, `&scope=x`, uint16(60))
	clients := []interface {
		parseAnswer(r *response) error
	}{
		oauth2Parser{&oauth2Client{base: fuzzBase(KindOAuth2)}},
		oauth2Parser{&oauth2Client{base: fuzzBase(KindSinaCloud)}},
		wechatParser{&wechat{base: fuzzBase(KindWeChatMP)}},
	}
	f.Fuzz(func(t *testing.T, status int, ct, before string, key uint8, sep, after string, cut uint16) {
		body := plantedBody(before, key, sep, after, cut)
		for _, c := range clients {
			err := c.parseAnswer(&response{status: status, contentType: ct, body: []byte(body)})
			if err == nil {
				continue
			}
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("unclassified error %v", err)
			}
			text := strings.ToLower(pe.Code + " " + pe.Message)
			for i := 0; i+redact.MinRun <= len(planted); i++ {
				if piece := strings.ToLower(planted[i : i+redact.MinRun]); strings.Contains(text, piece) {
					t.Fatalf("error keeps %q of the planted token\nbody: %q\nerror: %v", piece, body, err)
				}
			}
		}
	})
}

type oauth2Parser struct{ o *oauth2Client }

func (p oauth2Parser) parseAnswer(r *response) error {
	_, err := p.o.parseToken(fuzzCall, r)
	return err
}

type wechatParser struct{ w *wechat }

func (p wechatParser) parseAnswer(r *response) error {
	_, err := p.w.parse(fuzzCall, r)
	return err
}
