package provider

import "testing"

func TestRedirectClass(t *testing.T) {
	for status, want := range map[int]Class{301: ClassConfig, 308: ClassConfig, 300: ClassTransient, 302: ClassTransient, 303: ClassTransient, 304: ClassTransient, 307: ClassTransient} {
		if got := redirectClass(status); got != want {
			t.Errorf("%d: %v, want %v", status, got, want)
		}
	}
}
