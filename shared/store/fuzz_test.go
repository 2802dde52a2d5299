package store

import (
	"regexp"
	"testing"
)

var idReference = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// FuzzValidID checks the byte loop against the pattern it implements.
func FuzzValidID(f *testing.F) {
	for _, s := range []string{"", "a", "wechat-mp", "bad id", "p/q", "é", "a.b_c-D9", string(make([]byte, 129))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidID(s) != idReference.MatchString(s) {
			t.Fatalf("ValidID(%q) = %v, pattern says %v", s, ValidID(s), idReference.MatchString(s))
		}
	})
}
