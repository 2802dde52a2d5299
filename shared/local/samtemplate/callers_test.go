package samtemplate_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/local/devfront"
)

// The example caller policies of README's "Restricting callers", checked
// against the routes template.yaml really creates.

// nameChars are the characters of a provider or connection name, the only
// thing a {param} of a route can stand for.
const nameChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"

// routeToken is one piece of a route path: a literal byte or a {param}.
type routeToken struct {
	lit   byte
	param bool
}

func tokens(path string) []routeToken {
	var out []routeToken
	for i := 0; i < len(path); i++ {
		if path[i] == '{' {
			if end := strings.IndexByte(path[i:], '}'); end > 0 {
				out = append(out, routeToken{param: true})
				i += end
				continue
			}
		}
		out = append(out, routeToken{lit: path[i]})
	}
	return out
}

// reaches reports whether some request path of the route (each {param} a
// non-empty name) matches the IAM pattern: the two languages intersect. A
// search over pairs of positions: in the pattern, and in the route with
// whether the current {param} has taken a character yet.
func reaches(pattern, routePath string) bool {
	route := tokens(routePath)
	type state struct {
		p, r    int
		started bool
	}
	seen := map[state]bool{}
	var walk func(s state) bool
	walk = func(s state) bool {
		if seen[s] {
			return false
		}
		seen[s] = true
		if s.p == len(pattern) && s.r == len(route) {
			return true
		}
		// Moves that take no character.
		if s.p < len(pattern) && pattern[s.p] == '*' && walk(state{s.p + 1, s.r, s.started}) {
			return true
		}
		if s.started && walk(state{s.p, s.r + 1, false}) {
			return true
		}
		if s.p == len(pattern) || s.r == len(route) {
			return false
		}
		// Moves that take one character, on both sides at once.
		next := s.p + 1
		if pattern[s.p] == '*' {
			next = s.p
		}
		anyChar := pattern[s.p] == '*' || pattern[s.p] == '?'
		tok := route[s.r]
		switch {
		case tok.param && (anyChar || strings.IndexByte(nameChars, pattern[s.p]) >= 0):
			return walk(state{next, s.r, true})
		case !tok.param && (anyChar || pattern[s.p] == tok.lit):
			return walk(state{next, s.r + 1, false})
		}
		return false
	}
	return walk(state{})
}

func TestReaches(t *testing.T) {
	for _, tc := range []struct {
		pattern, route string
		want           bool
	}{
		{"connections/github/*", "/connections/{provider}/{connection}/token", true},
		{"connections/github", "/connections/{provider}", true},
		{"connections/github", "/connections/{provider}/{connection}", false},
		{"connections/*/*", "/connections/{provider}", false},
		{"connections/*/*", "/connections/{provider}/{connection}/token", true},
		{"connections/gh/t-*", "/connections/gh/{connection}", true},
		{"connections/gh/t-*", "/connections/other/{connection}", false},
		{"connections/gh/t-*", "/connections/gh/x-1/token", false},
		{"connections/g?/x", "/connections/{provider}/x", true},
		{"connections/a/b/c", "/connections/{provider}/{connection}", false},
		{"connections/a b", "/connections/{provider}", false},
		{"callback/*", "/callback/{provider}", true},
	} {
		if got := reaches(tc.pattern, strings.TrimPrefix(tc.route, "/")); got != tc.want {
			t.Errorf("reaches(%q, %q) = %v", tc.pattern, tc.route, got)
		}
	}
}

// callerPolicy is an identity policy as the examples write it; any other
// field (a Condition, a NotResource) fails to decode, so nothing in an
// example escapes the checks.
type callerPolicy struct {
	Version   string
	Statement []struct {
		Sid      string
		Effect   string
		Action   stringList
		Resource stringList
	}
}

// stringList is IAM's "one string or a list of strings".
type stringList []string

func (l *stringList) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*l = []string{one}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(l))
}

// invokeARN is a route ARN of the HTTP API's default stage as API Gateway
// checks it: arn:aws:execute-api:{region}:{account}:{api-id}/$default/{METHOD}/{path}.
var invokeARN = regexp.MustCompile(`^arn:aws:execute-api:REGION:ACCOUNT_ID:API_ID/\$default/([^/]+)/(.+)$`)

func TestCallerPolicyExamplesMatchTheRoutes(t *testing.T) {
	_, root := loadTemplate(t)
	routes, err := devfront.Routes(filepath.Join(root, "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	// What each example must reach, and what it must not.
	type exclusion struct{ provider, connection string }
	for _, tc := range []struct {
		file string
		// want: the route keys the policy must reach, exactly.
		want func(devfront.Route) bool
		// outside: requests the policy must not reach, whatever the route.
		outside []exclusion
	}{
		{
			file:    "one-provider.json",
			want:    func(r devfront.Route) bool { return strings.HasPrefix(r.Path, "/connections/{provider}") },
			outside: []exclusion{{"gitlab", "alice"}, {"github2", "alice"}, {"githu", "b"}},
		},
		{
			file:    "connection-prefix.json",
			want:    func(r devfront.Route) bool { return strings.Contains(r.Path, "{connection}") && r.Method != "PUT" },
			outside: []exclusion{{"github", "tenant-b-1"}, {"github", "tenant-ab"}, {"github", "tenant-a"}, {"gitlab", "tenant-a-1"}},
		},
		{
			file: "read-only.json",
			want: func(r devfront.Route) bool {
				return r.RouteKey() == "GET /connections/{provider}/{connection}/token" || r.RouteKey() == "GET /connections/{provider}/{connection}"
			},
		},
	} {
		t.Run(tc.file, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(root, "docs", "iam", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(readme), "```json\n"+string(raw)+"```") {
				t.Errorf("README does not quote docs/iam/%s verbatim in a json block", tc.file)
			}
			var policy callerPolicy
			dec := json.NewDecoder(strings.NewReader(string(raw)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&policy); err != nil || policy.Version != "2012-10-17" || len(policy.Statement) == 0 {
				t.Fatalf("not an identity policy: %v", err)
			}
			var reached []string
			for _, st := range policy.Statement {
				if st.Effect != "Allow" || !slices.Equal(st.Action, []string{"execute-api:Invoke"}) {
					t.Errorf("statement %+v: want Allow execute-api:Invoke", st)
				}
				for _, resource := range st.Resource {
					m := invokeARN.FindStringSubmatch(resource)
					if m == nil {
						t.Errorf("%s is not a route ARN of the $default stage", resource)
						continue
					}
					method, path := m[1], m[2]
					matched := false
					for _, r := range routes {
						if globMatch(method, r.Method) && reaches(path, strings.TrimPrefix(r.Path, "/")) {
							matched = true
							reached = append(reached, r.RouteKey())
						}
					}
					if !matched {
						t.Errorf("%s reaches no route template.yaml creates", resource)
					}
					for _, ex := range tc.outside {
						for _, r := range routes {
							concrete := strings.NewReplacer("{provider}", ex.provider, "{connection}", ex.connection).Replace(r.Path)
							if globMatch(method, r.Method) && reaches(path, strings.TrimPrefix(concrete, "/")) {
								t.Errorf("%s reaches %s %s", resource, r.Method, concrete)
							}
						}
					}
				}
			}
			var want []string
			for _, r := range routes {
				if tc.want(r) {
					want = append(want, r.RouteKey())
				}
			}
			slices.Sort(reached)
			reached = slices.Compact(reached)
			slices.Sort(want)
			if !slices.Equal(reached, want) {
				t.Errorf("reaches %v\nwant     %v", reached, want)
			}
			// Import replaces a grant with tokens the caller brings: only
			// an operator's role (one-provider.json) may reach it.
			if tc.file != "one-provider.json" && slices.Contains(reached, "PUT /connections/{provider}/{connection}") {
				t.Errorf("%s reaches the import route", tc.file)
			}
			if tc.file == "read-only.json" {
				for _, key := range reached {
					if !strings.HasPrefix(key, "GET ") {
						t.Errorf("the read-only example reaches %s", key)
					}
				}
			}
		})
	}
}
