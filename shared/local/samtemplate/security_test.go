package samtemplate_test

import (
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/local/samtemplate"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

// globMatch is IAM's wildcard match: * is any run of characters (slashes
// included), ? is one character, everything else is itself.
func globMatch(pattern, s string) bool {
	// Classic two-pointer wildcard match with backtracking to the last *.
	p, i, star, mark := 0, 0, -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == s[i]):
			p, i = p+1, i+1
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case star >= 0:
			p, mark = star+1, mark+1
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"conn#*", "conn#gh#alice", true},
		{"conn#*", "state#x", false},
		{"a/*/config", "a/b/c/config", true},
		{"a/*/config", "a/b/client_secret", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"*", "", true},
		{"x*y*z", "x--y--z", true},
		{"x*y*z", "x--y--", false},
	} {
		if got := globMatch(tc.pattern, tc.s); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v", tc.pattern, tc.s, got)
		}
	}
}

func loadTemplate(t *testing.T) (*samtemplate.Template, string) {
	t.Helper()
	root, err := localaws.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	tpl, err := samtemplate.Load(filepath.Join(root, "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return tpl, root
}

const (
	table     = "${TokenTable.Arn}"
	parameter = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${SsmPrefix}"
	// aSecret is the ARN of a client secret as an IAM pattern sees it.
	aSecret = parameter + "/providers/some-provider/client_secret"
)

// wantItems is, per function, every DynamoDB item action it may take on
// each kind of item (the partition key's prefix, shared/store). Widening
// one is a decision: change it here with the template, and say why.
var wantItems = map[string]map[string][]string{
	"AuthorizeFunction": {
		"state#*": {"PutItem"},
	},
	"CallbackFunction": {
		"state#*":  {"UpdateItem"},
		"conn#*":   {"PutItem"},
		"notice#*": {"DeleteItem", "PutItem"},
		"parked#*": {"PutItem"},
	},
	"TokenFunction": {
		"conn#*":   {"DeleteItem", "GetItem", "PutItem", "UpdateItem"},
		"notice#*": {"DeleteItem", "PutItem"},
		"quota#*":  {"UpdateItem"},
		"parked#*": {"GetItem", "UpdateItem"},
	},
	"RefresherFunction": {
		"conn#*":   {"PutItem", "UpdateItem"},
		"notice#*": {"DeleteItem", "PutItem", "UpdateItem"},
		"quota#*":  {"UpdateItem"},
		// Fan-out: a unit's claim is put if none holds, and removed when
		// its message could not be sent.
		"fanout#*": {"DeleteItem", "PutItem"},
	},
	// The fan-out worker refreshes as the refresher does, but publishes
	// no other writer's notices (no claim, so no UpdateItem on them), and
	// takes and lets go a unit's claim.
	"RefreshWorkerFunction": {
		"conn#*":   {"PutItem", "UpdateItem"},
		"notice#*": {"DeleteItem", "PutItem"},
		"quota#*":  {"UpdateItem"},
		"fanout#*": {"UpdateItem"},
	},
}

// wantQuery is the one index each function may query (none: no Query).
var wantQuery = map[string]string{"TokenFunction": "connections", "RefresherFunction": "due", "RefreshWorkerFunction": "due"}

// readsSecrets: the functions that exchange codes or refresh and revoke
// tokens, and so read client secrets.
var readsSecrets = map[string]bool{"CallbackFunction": true, "TokenFunction": true, "RefresherFunction": true, "RefreshWorkerFunction": true}

func TestFunctionRolesAreLeastPrivilege(t *testing.T) {
	tpl, _ := loadTemplate(t)
	fns := tpl.OfType("AWS::Serverless::Function")
	if len(fns) != len(wantItems) {
		t.Fatalf("functions %v; every function needs its row in wantItems", fns)
	}
	for _, fn := range fns {
		t.Run(fn, func(t *testing.T) {
			statements, err := tpl.PolicyStatements(fn)
			if err != nil {
				t.Fatal(err)
			}
			gotItems := map[string][]string{}
			var queried []string
			var pathReads, byName, decryptContexts, sends []string
			for _, st := range statements {
				if st.Effect != "Allow" || len(st.Actions) == 0 || len(st.Resources) == 0 {
					t.Errorf("%s: want an Allow with actions and resources: %+v", st.Sid, st)
				}
				for _, action := range st.Actions {
					if strings.ContainsAny(action, "*?") {
						t.Errorf("%s: wildcard action %s", st.Sid, action)
					}
					if slices.Contains(st.Resources, "*") && action != "ssm:DescribeParameters" {
						t.Errorf("%s: %s on Resource *; only actions without resource-level permissions may have it", st.Sid, action)
					}
					service, op, _ := strings.Cut(action, ":")
					switch {
					case action == "dynamodb:Query":
						if st.If != "" || len(st.Resources) != 1 || !strings.HasPrefix(st.Resources[0], table+"/index/") || len(st.Actions) != 1 {
							t.Errorf("%s: Query must stand alone, on one index: %v", st.Sid, st.Resources)
							continue
						}
						queried = append(queried, strings.TrimPrefix(st.Resources[0], table+"/index/"))
					case service == "dynamodb":
						leading := st.Condition["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
						if len(leading) == 0 || len(st.Condition) != 1 {
							t.Errorf("%s: %s without exactly a ForAllValues:StringLike dynamodb:LeadingKeys condition: %v", st.Sid, action, st.Condition)
						}
						if !slices.Equal(st.Resources, []string{table}) {
							t.Errorf("%s: %s on %v, want the table only (no index, no other table)", st.Sid, action, st.Resources)
						}
						for _, prefix := range leading {
							gotItems[prefix] = append(gotItems[prefix], op)
						}
					case action == "ssm:GetParametersByPath":
						pathReads = append(pathReads, st.Resources...)
					case action == "ssm:GetParameters":
						byName = append(byName, st.Resources...)
					case action == "ssm:DescribeParameters":
						if !slices.Equal(st.Resources, []string{"*"}) {
							t.Errorf("%s: DescribeParameters on %v", st.Sid, st.Resources)
						}
					case action == "kms:Decrypt":
						contexts := st.Condition["StringLike"]["kms:EncryptionContext:PARAMETER_ARN"]
						if st.If != "HasParametersKey" || !slices.Equal(st.Resources, []string{"${ParametersKmsKeyArn}"}) || len(contexts) == 0 || len(st.Condition) != 1 {
							t.Errorf("%s: kms:Decrypt must be under HasParametersKey, on ParametersKmsKeyArn, with only the PARAMETER_ARN encryption-context condition: %+v", st.Sid, st)
						}
						decryptContexts = append(decryptContexts, contexts...)
					case action == "sqs:SendMessage":
						// Only the fan-out tick sends, only to the unit queue,
						// and only in fan-out mode.
						if st.If != "FanOut" || !slices.Equal(st.Resources, []string{"${RefreshQueue.Arn}"}) || len(st.Actions) != 1 {
							t.Errorf("%s: sqs:SendMessage must stand alone under FanOut, on RefreshQueue: %+v", st.Sid, st)
						}
						sends = append(sends, st.Resources...)
					case action == "events:PutEvents":
						if src := st.Condition["StringEquals"]["events:source"]; !slices.Equal(src, []string{telemetry.EventSource}) || len(st.Condition) != 1 {
							t.Errorf("%s: PutEvents must carry StringEquals events:source = %s, got %v", st.Sid, telemetry.EventSource, st.Condition)
						}
					default:
						t.Errorf("%s: unexpected action %s", st.Sid, action)
					}
				}
			}

			for prefix := range gotItems {
				sort.Strings(gotItems[prefix])
			}
			if !mapsEqual(gotItems, wantItems[fn]) {
				t.Errorf("item actions by key prefix:\n got  %v\n want %v", gotItems, wantItems[fn])
			}
			if (fn == "RefresherFunction") != (len(sends) == 1) {
				t.Errorf("sends to %v; only RefresherFunction sends, once", sends)
			}
			if want := wantQuery[fn]; (want == "" && len(queried) > 0) || (want != "" && !slices.Equal(queried, []string{want})) {
				t.Errorf("queries %v, want index %q only", queried, want)
			}

			if readsSecrets[fn] {
				if !slices.Equal(pathReads, []string{parameter, parameter + "/*"}) || len(byName) > 0 {
					t.Errorf("reads %v by path and %v by name; want the prefix by path", pathReads, byName)
				}
				for _, c := range decryptContexts {
					if c != parameter+"/*" {
						t.Errorf("decrypts parameters %q, want the prefix's", c)
					}
				}
				return
			}
			// The one function that never sees a client secret.
			if len(pathReads) > 0 {
				t.Errorf("GetParametersByPath on %v: it is authorized on the path and returns the secrets under it", pathReads)
			}
			want := []string{parameter + "/providers/*/config", parameter + "/token-keys"}
			if !slices.Equal(byName, want) {
				t.Errorf("GetParameters on %v, want %v", byName, want)
			}
			for _, r := range append(slices.Clone(byName), decryptContexts...) {
				if globMatch(r, aSecret) || strings.Contains(r, "client_secret") {
					t.Errorf("%q reaches a client secret", r)
				}
			}
			if !globMatch(want[0], parameter+"/providers/github/config") {
				t.Error("the config pattern does not match a config: the check above proves nothing")
			}
		})
	}
}

func mapsEqual(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// A policy the parser cannot read is an error, not silently skipped: a
// SAM policy template would grant what no check here sees.
func TestPolicyStatementsRefuseWhatTheyCannotRead(t *testing.T) {
	for name, doc := range map[string]string{
		"policy template": "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Policies:\n        - DynamoDBCrudPolicy: {TableName: t}\n",
		"managed name":    "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Policies: AmazonDynamoDBFullAccess\n",
		"NotAction":       "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Policies:\n        - Statement:\n            - Effect: Allow\n              NotAction: [iam:*]\n              Resource: \"*\"\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "template.yaml")
			writeFile(t, path, doc)
			tpl, err := samtemplate.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tpl.PolicyStatements("F"); err == nil {
				t.Fatal("read without an error")
			}
		})
	}
}
