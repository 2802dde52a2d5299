package sealing

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func TestSealOpenRoundTripAndRotation(t *testing.T) {
	old, err := NewRing("k1", map[string][]byte{"k1": testKey(1)})
	if err != nil {
		t.Fatal(err)
	}
	sealedOld, err := old.Seal("token-one", "conn#gh#alice/access")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(sealedOld, "token-one") {
		t.Fatalf("sealed value contains the plaintext: %s", sealedOld)
	}
	rotated, err := NewRing("k2", map[string][]byte{"k1": testKey(1), "k2": testKey(2)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := rotated.Open(sealedOld, "conn#gh#alice/access")
	if err != nil || got != "token-one" {
		t.Fatalf("open after rotation = %q, %v", got, err)
	}
	sealedNew, err := rotated.Seal("token-two", "b")
	if err != nil {
		t.Fatal(err)
	}
	if kid, ok := KeyID(sealedNew); !ok || kid != "k2" {
		t.Fatalf("KeyID = %q %v, want k2", kid, ok)
	}
	if _, err := old.Open(sealedNew, "b"); !errors.Is(err, ErrOpen) {
		t.Fatalf("ring without k2 opened a k2 value: %v", err)
	}
}

func TestOpenRejects(t *testing.T) {
	ring, err := NewRing("k1", map[string][]byte{"k1": testKey(1), "k9": testKey(9)})
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := ring.Seal("secret", "itemA/access")
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.SplitN(sealed, ".", 3)
	raw, _ := base64.RawURLEncoding.DecodeString(parts[2])
	raw[len(raw)-1] ^= 1
	tampered := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(raw)
	for name, tc := range map[string]struct{ value, binding string }{
		"other item":      {sealed, "itemB/access"},
		"other field":     {sealed, "itemA/refresh"},
		"relabelled key":  {"v1.k9." + parts[2], "itemA/access"},
		"tampered":        {tampered, "itemA/access"},
		"empty":           {"", "itemA/access"},
		"plaintext":       {"secret", "itemA/access"},
		"bad base64":      {"v1.k1.%%%", "itemA/access"},
		"too short":       {"v1.k1.AAAA", "itemA/access"},
		"unknown key":     {"v1.zz." + parts[2], "itemA/access"},
		"unknown version": {"v0.k1." + parts[2], "itemA/access"},
	} {
		t.Run(name, func(t *testing.T) {
			if got, err := ring.Open(tc.value, tc.binding); !errors.Is(err, ErrOpen) {
				t.Fatalf("Open = %q, %v; want ErrOpen", got, err)
			}
		})
	}
}

func TestParseRing(t *testing.T) {
	k := base64.StdEncoding.EncodeToString(testKey(3))
	short := base64.StdEncoding.EncodeToString([]byte("short"))
	for name, tc := range map[string]struct {
		doc  string
		fail bool
	}{
		"valid":          {`{"active":"k1","keys":{"k1":"` + k + `"}}`, false},
		"not json":       {`active=k1`, true},
		"unknown field":  {`{"active":"k1","keys":{"k1":"` + k + `"},"x":1}`, true},
		"no keys":        {`{"active":"k1","keys":{}}`, true},
		"active missing": {`{"active":"k2","keys":{"k1":"` + k + `"}}`, true},
		"short key":      {`{"active":"k1","keys":{"k1":"` + short + `"}}`, true},
		"bad base64":     {`{"active":"k1","keys":{"k1":"***"}}`, true},
		"bad key id":     {`{"active":"k 1","keys":{"k 1":"` + k + `"}}`, true},
		"wrong type":     {`{"active":1,"keys":{"k1":"` + k + `"}}`, true},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseRing([]byte(tc.doc))
			if (err != nil) != tc.fail {
				t.Fatalf("ParseRing err = %v, want failure %v", err, tc.fail)
			}
		})
	}
}

func TestSealRejectsBadInput(t *testing.T) {
	ring, _ := NewRing("k1", map[string][]byte{"k1": testKey(1)})
	if _, err := ring.Seal(strings.Repeat("x", MaxPlaintext+1), "b"); err == nil {
		t.Fatal("oversized plaintext sealed")
	}
	if _, err := ring.Seal("x", ""); err == nil {
		t.Fatal("empty binding accepted")
	}
	var nilRing *Ring
	if _, err := nilRing.Seal("x", "b"); err == nil {
		t.Fatal("nil ring sealed")
	}
	if _, err := nilRing.Open("x", "b"); err == nil {
		t.Fatal("nil ring opened")
	}
}

func FuzzOpen(f *testing.F) {
	ring, _ := NewRing("k1", map[string][]byte{"k1": testKey(1)})
	s, _ := ring.Seal("hello", "b")
	f.Add(s, "b")
	f.Add("v1.k1.", "b")
	f.Add("v1..", "")
	f.Fuzz(func(t *testing.T, value, binding string) {
		plain, err := ring.Open(value, binding)
		if err == nil && value != s && plain == "" {
			t.Fatalf("opened a forged value %q", value)
		}
	})
}
