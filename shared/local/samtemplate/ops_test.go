package samtemplate_test

import (
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/tokenbroker/tokenbroker/shared/local/samtemplate"
)

// cloudWatchRetentions are the values CloudWatch Logs accepts for a log
// group's RetentionInDays.
var cloudWatchRetentions = []string{"1", "3", "5", "7", "14", "30", "60", "90", "120", "150", "180", "365", "400", "545", "731", "1096", "1827", "2192", "2557", "2922", "3288", "3653"}

func TestEveryLogGroupIsDeclaredWithRetention(t *testing.T) {
	tpl, _ := loadTemplate(t)
	p := tpl.Parameters["LogRetentionDays"]
	if p.Default != "90" || !slices.Equal(p.AllowedValues, cloudWatchRetentions) {
		t.Errorf("LogRetentionDays default %s, allowed %v; want 90 and CloudWatch's values", p.Default, p.AllowedValues)
	}
	names := map[string]string{}
	for _, id := range tpl.OfType("AWS::Logs::LogGroup") {
		r := tpl.Resources[id]
		if ref, ok := samtemplate.Ref(r.Property("RetentionInDays")); !ok || ref != "LogRetentionDays" {
			t.Errorf("%s: RetentionInDays must be !Ref LogRetentionDays", id)
		}
		name, ok := samtemplate.Text(r.Property("LogGroupName"))
		if !ok {
			t.Errorf("%s: no LogGroupName", id)
		}
		names[name] = id
	}
	for _, fn := range tpl.OfType("AWS::Serverless::Function") {
		if names["/aws/lambda/${"+fn+"}"] == "" {
			t.Errorf("%s writes to /aws/lambda/<its name>, and no AWS::Logs::LogGroup declares it", fn)
		}
	}

	// API Gateway's access log: to a declared group, one JSON object per
	// request with what an operator needs to answer "who called what".
	settings := tpl.Resources["HttpApi"].Property("AccessLogSettings")
	dest, _ := samtemplate.Text(samtemplate.Lookup(settings, "DestinationArn"))
	group, _, _ := strings.Cut(strings.TrimPrefix(dest, "${"), ".Arn}")
	if tpl.Resources[group].Type != "AWS::Logs::LogGroup" {
		t.Fatalf("HttpApi AccessLogSettings.DestinationArn %q is not a declared log group's Arn", dest)
	}
	format := samtemplate.Lookup(settings, "Format")
	if format == nil {
		t.Fatal("HttpApi has no access log Format")
	}
	// Variables API Gateway fills in; messageString is already quoted.
	sample := strings.ReplaceAll(format.Value, "$context.error.messageString", `"an error"`)
	sample = regexp.MustCompile(`\$context\.[A-Za-z.]+`).ReplaceAllString(sample, "v")
	var line map[string]string
	if err := json.Unmarshal([]byte(sample), &line); err != nil {
		t.Fatalf("access log format is not one JSON object: %v\n%s", err, format.Value)
	}
	for field, variable := range map[string]string{
		"requestId": "$context.requestId", "ip": "$context.identity.sourceIp", "caller": "$context.identity.userArn",
		"routeKey": "$context.routeKey", "status": "$context.status", "latency": "$context.responseLatency",
	} {
		if !strings.Contains(format.Value, `"`+field+`":"`+variable+`"`) {
			t.Errorf("access log lacks %q: %s", field, variable)
		}
	}
}

func TestPublicRoutesAreThrottled(t *testing.T) {
	tpl, _ := loadTemplate(t)
	public := 0
	for _, fn := range tpl.OfType("AWS::Serverless::Function") {
		events := tpl.Resources[fn].Property("Events")
		for i := 0; events != nil && i+1 < len(events.Content); i += 2 {
			ev := events.Content[i+1]
			if samtemplate.Lookup(ev, "Type").Value != "HttpApi" {
				continue
			}
			if a := samtemplate.Lookup(ev, "Properties", "Auth", "Authorizer"); a == nil || a.Value != "NONE" {
				continue
			}
			public++
			settings := samtemplate.Lookup(ev, "Properties", "RouteSettings")
			for _, limit := range []string{"ThrottlingRateLimit", "ThrottlingBurstLimit"} {
				ref, ok := samtemplate.Ref(samtemplate.Lookup(settings, limit))
				if !ok {
					t.Errorf("public route %s.%s: no %s parameter", fn, events.Content[i].Value, limit)
					continue
				}
				if n := number(t, tpl, ref); n < 1 {
					t.Errorf("%s default %v", ref, n)
				}
			}
		}
	}
	if public != 1 {
		t.Errorf("%d public routes; GET /callback/{provider} is the one this test expects", public)
	}
}

func TestReservedConcurrencyPerFunction(t *testing.T) {
	tpl, _ := loadTemplate(t)
	defaults := map[string]float64{}
	for _, fn := range tpl.OfType("AWS::Serverless::Function") {
		n := tpl.Resources[fn].Property("ReservedConcurrentExecutions")
		param := strings.TrimSuffix(fn, "Function") + "ReservedConcurrency"
		// !If [Reserves…, !Ref <param>, !Ref AWS::NoValue]: 0 reserves none
		// instead of Lambda's 0, which would stop the function.
		if n == nil || n.Tag != "!If" || len(n.Content) != 3 {
			t.Errorf("%s: ReservedConcurrentExecutions must be !If [cond, !Ref %s, !Ref AWS::NoValue]", fn, param)
			continue
		}
		ref, _ := samtemplate.Ref(n.Content[1])
		none, _ := samtemplate.Ref(n.Content[2])
		if ref != param || none != "AWS::NoValue" || !conditionIsNonZero(tpl, n.Content[0].Value, param) {
			t.Errorf("%s: ReservedConcurrentExecutions %v %v %v", fn, n.Content[0].Value, ref, none)
		}
		defaults[fn] = number(t, tpl, param)
		if tpl.Parameters[param].MinValue == nil || *tpl.Parameters[param].MinValue != 0 {
			t.Errorf("%s: MinValue must be 0 (reserve none)", param)
		}
	}
	for fn, d := range defaults {
		if d < 1 {
			t.Errorf("%s reserves %v by default", fn, d)
		}
		if fn != "TokenFunction" && d >= defaults["TokenFunction"] {
			t.Errorf("%s reserves %v, not less than the token function's %v (the hot path)", fn, d, defaults["TokenFunction"])
		}
		if fn != "RefresherFunction" && d <= defaults["RefresherFunction"] {
			t.Errorf("%s reserves %v, not more than the refresher's %v (one tick a minute)", fn, d, defaults["RefresherFunction"])
		}
	}
}

// conditionIsNonZero: Conditions.<name> is !Not [!Equals [!Ref param, 0]].
func conditionIsNonZero(tpl *samtemplate.Template, name, param string) bool {
	raw, err := yaml.Marshal(tpl.Conditions[name])
	if err != nil {
		return false
	}
	return strings.TrimSpace(string(raw)) == "!Not [!Equals [!Ref "+param+", 0]]"
}

func number(t *testing.T, tpl *samtemplate.Template, param string) float64 {
	t.Helper()
	p, ok := tpl.Parameters[param]
	if !ok || p.Type != "Number" {
		t.Fatalf("no Number parameter %s", param)
	}
	n, err := strconv.ParseFloat(p.Default, 64)
	if err != nil {
		t.Fatalf("%s default %q", param, p.Default)
	}
	return n
}
