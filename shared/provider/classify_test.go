package provider

import "testing"

// The one classification table of RFC 6749 / OIDC answers, row by row.
func TestClassifyOAuth(t *testing.T) {
	for _, tc := range []struct {
		kind, op, code string
		status         int
		want           Class
	}{
		{KindOAuth2, opRefresh, "invalid_grant", 400, ClassReauth},
		{KindOAuth2, opRefresh, "invalid_scope", 400, ClassReauth},
		{KindOAuth2, opExchange, "access_denied", 400, ClassReauth},
		// OpenID Connect Core 1.0 §3.1.2.6: the user must come back.
		{KindOAuth2, opRefresh, "interaction_required", 400, ClassReauth},
		{KindOAuth2, opRefresh, "login_required", 400, ClassReauth},
		{KindOAuth2, opRefresh, "consent_required", 400, ClassReauth},
		{KindOAuth2, opRefresh, "account_selection_required", 400, ClassReauth},
		{KindOAuth2, opExchange, "login_required", 200, ClassReauth},
		{KindOAuth2, opRefresh, "invalid_client", 401, ClassConfig},
		{KindOAuth2, opRefresh, "unsupported_grant_type", 400, ClassConfig},
		{KindOAuth2, opRefresh, "invalid_request", 400, ClassConfig},
		{KindOAuth2, opRevoke, "unsupported_token_type", 400, ClassConfig},
		{KindOAuth2, opRefresh, "server_error", 400, ClassTransient},
		{KindOAuth2, opRefresh, "temporarily_unavailable", 400, ClassTransient},
		{KindOAuth2, opRefresh, "slow_down", 400, ClassTransient},
		{KindOAuth2, opRefresh, "bad_verification_code", 200, ClassTransient},
		// unauthorized_client: no refresh permission only for SinaCloud's refresh.
		{KindSinaCloud, opRefresh, "unauthorized_client", 400, ClassNoRefresh},
		{KindSinaCloud, opRefresh, "unauthorized_client", 401, ClassNoRefresh},
		{KindSinaCloud, opRefresh, "unauthorized_client", 200, ClassNoRefresh},
		{KindSinaCloud, opExchange, "unauthorized_client", 400, ClassConfig},
		{KindOAuth2, opRefresh, "unauthorized_client", 400, ClassConfig},
		{KindOAuth2, opToken, "unauthorized_client", 400, ClassConfig},
		{KindSinaCloud, opRefresh, "invalid_client", 401, ClassConfig},
		{KindSinaCloud, opRefresh, "invalid_grant", 400, ClassReauth},
		// A failing server says nothing about the grant.
		{KindOAuth2, opRefresh, "invalid_grant", 500, ClassTransient},
		{KindOAuth2, opRefresh, "login_required", 503, ClassTransient},
		{KindSinaCloud, opRefresh, "unauthorized_client", 502, ClassTransient},
		{KindOAuth2, opRefresh, "invalid_client", 429, ClassTransient},
	} {
		if got := classifyOAuth(tc.kind, tc.op, tc.code, tc.status); got != tc.want {
			t.Errorf("%s %s %s HTTP %d: %v, want %v", tc.kind, tc.op, tc.code, tc.status, got, tc.want)
		}
	}
}

func TestRedirectClass(t *testing.T) {
	for status, want := range map[int]Class{301: ClassConfig, 308: ClassConfig, 300: ClassTransient, 302: ClassTransient, 303: ClassTransient, 304: ClassTransient, 307: ClassTransient} {
		if got := redirectClass(status); got != want {
			t.Errorf("%d: %v, want %v", status, got, want)
		}
	}
}

func TestClassNames(t *testing.T) {
	for class, want := range map[Class]string{ClassTransient: "transient", ClassReauth: "reauth", ClassConfig: "config", ClassNoRefresh: "no_refresh"} {
		if got := class.String(); got != want {
			t.Errorf("%d: %q, want %q", class, got, want)
		}
		if got := (&Error{Class: class}).Permanent(); got != (class != ClassTransient) {
			t.Errorf("%v: Permanent %v", class, got)
		}
	}
}
