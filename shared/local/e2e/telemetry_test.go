package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tokenbroker/tokenbroker/shared/local/ddbfault"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/local/samtemplate"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

// Providers of this test only, each on its own emulator, so its faults,
// its held call and the quota it spends touch no other test.
const (
	alarmSina   = "alarm-sina"
	alarmWeChat = "alarm-wechat"
)

// TestAlarmsAndDashboardReceiveData proves, from the EMF lines the real
// functions print, that every alarm in template.yaml and every metric on
// its dashboard watches a metric somebody publishes — namespace, metric
// name and exact dimension set, since CloudWatch treats each dimension
// combination as a metric of its own and an alarm on one nobody publishes
// never fires. It first makes the functions publish each metric: a
// connect, tokens served, a refresh, a transient, a config and a reauth
// failure, a lease contended while a refresh is held at the provider, a
// WeChat call refused by a budget of 1, and a refresher tick. Metrics AWS
// publishes (AWS/Lambda, AWS/DynamoDB) are checked against the template:
// the function or table exists, and the metric and dimensions are ones
// that namespace publishes.
func TestAlarmsAndDashboardReceiveData(t *testing.T) {
	ctx := context.Background()
	root, err := localaws.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	tpl, err := samtemplate.Load(filepath.Join(root, "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	from := len(logs.String())

	sina := emulator.NewSinaCloud(devstack.SinaClientID, devstack.SinaSecret, publicBase+"/callback/"+alarmSina)
	gate := &providerGate{Handler: sina, path: "/oauth2/access_token"}
	sinaSrv := httptest.NewServer(gate)
	defer sinaSrv.Close()
	wechat := emulator.NewWeChat(devstack.WeChatAppID, devstack.WeChatSecret)
	wechatSrv := httptest.NewServer(wechat)
	defer wechatSrv.Close()
	if err := stack.PutProvider(ctx, alarmSina, map[string]any{"kind": "sinacloud", "client_id": devstack.SinaClientID, "api_base": sinaSrv.URL}, devstack.SinaSecret); err != nil {
		t.Fatal(err)
	}
	if err := stack.PutProvider(ctx, alarmWeChat, map[string]any{"kind": "wechat_mp", "client_id": devstack.WeChatAppID, "api_base": wechatSrv.URL,
		"token_api": "token", "daily_quota_budget": 1}, devstack.WeChatSecret); err != nil {
		t.Fatal(err)
	}
	// Fresh sandboxes: configuration is read once per cold start.
	table := localaws.UniqueName("alarms")
	if err := localaws.CreateTable(ctx, localaws.DynamoDBClient(stack.Endpoints.DynamoDB), filepath.Join(root, "template.yaml"), table); err != nil {
		t.Fatal(err)
	}
	f := &functions{authorize: startFunction(t, "authorize", nil), callback: startFunction(t, "callback", nil),
		token: startFunction(t, "token", nil), refresher: startFunction(t, "refresher", map[string]string{"TABLE_NAME": table})}
	secondToken := startFunction(t, "token", nil)
	// A refresh the broker must do: the stored token looks 30 s from
	// expiry (less than any caller is handed, WeChat's quota-saving cap
	// included) and the caller wants 10 minutes.
	refresh := func(provider, conn string) response {
		ageConnection(t, stack.Table, provider, conn, 30*time.Second)
		return tokenOf(t, f.token, provider, conn, "min_ttl=600")
	}

	const conn = "alarms"
	connect(t, f, alarmSina, conn)                                     // ProviderLatency Op=exchange
	expectStatus(t, tokenOf(t, f.token, alarmSina, conn, ""), 200, "") // TokenServed
	expectStatus(t, refresh(alarmSina, conn), 200, "")                 // RefreshSucceeded, ProviderLatency Op=refresh
	sina.Inject("/oauth2/access_token", emulator.HTMLError(502), 1)
	expectStatus(t, refresh(alarmSina, conn), 503, "provider_unavailable") // RefreshFailed Class=transient
	sina.Inject("/oauth2/access_token", emulator.OAuthError(401, "invalid_client", "bad client secret"), 1)
	expectStatus(t, refresh(alarmSina, conn), 502, "provider_error") // RefreshFailed Class=config

	// LeaseContended: one caller's refresh is held at the provider, a
	// second caller in another sandbox finds the lease taken and waits.
	// The second sandbox is warmed first, so its cold start cannot outlast
	// the held call's HTTP timeout.
	// min_ttl=0: the token is served as it is, whatever the last failure left.
	expectStatus(t, tokenOf(t, secondToken, alarmSina, conn, "min_ttl=0"), 200, "")
	refreshesBefore := sina.RefreshCalls()
	ageConnection(t, stack.Table, alarmSina, conn, 30*time.Second)
	arrived, release := gate.hold()
	var holder, waiter response
	holderDone, waiterDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(holderDone)
		holder = tokenOf(t, f.token, alarmSina, conn, "min_ttl=600")
	}()
	select {
	case <-arrived:
	case <-holderDone:
		t.Fatalf("the refresh returned without reaching the provider: %d %s", holder.StatusCode, holder.Body)
	}
	go func() {
		defer close(waiterDone)
		waiter = tokenOf(t, secondToken, alarmSina, conn, "min_ttl=600")
	}()
	for countPoints(parseEMF(t, logs.String()[from:]), telemetry.LeaseContended, map[string]string{"Provider": alarmSina}) == 0 {
		select {
		case <-waiterDone:
			release()
			t.Fatalf("the second caller returned without waiting for the lease: %d %s", waiter.StatusCode, waiter.Body)
		case <-time.After(10 * time.Millisecond):
		}
	}
	release()
	<-holderDone
	<-waiterDone
	expectStatus(t, holder, 200, "")
	expectStatus(t, waiter, 200, "")
	if holder.json["access_token"] != waiter.json["access_token"] {
		t.Fatal("the waiting caller got a different token than the lease holder")
	}
	if got := sina.RefreshCalls() - refreshesBefore; got != 1 {
		t.Fatalf("%d provider refreshes for the holder and the waiter, want exactly 1", got)
	}

	sina.Inject("/oauth2/access_token", emulator.OAuthError(400, "invalid_grant", "revoked"), 1)
	expectStatus(t, refresh(alarmSina, conn), 409, "needs_reauth") // NeedsReauth, RefreshFailed Class=reauth

	// WeChat with a budget of one cgi-bin/token call a day.
	expectStatus(t, tokenOf(t, f.token, alarmWeChat, "app", ""), 200, "")     // QuotaUsed 1
	expectStatus(t, refresh(alarmWeChat, "app"), 503, "provider_unavailable") // QuotaRefused
	if got := wechat.GlobalTokenCalls(); got != 1 {
		t.Fatalf("WeChat issued %d tokens, want exactly 1 (the budget is 1)", got)
	}

	// The metrics of grants at risk, on a provider of their own so the
	// counts above stay exact.
	atRisk := provokeGrantsAtRisk(t)

	if _, err := f.refresher.Invoke(ctx, []byte(`{"source":"aws.events","detail-type":"Scheduled Event","detail":{}}`)); err != nil {
		t.Fatal(err) // RefresherDuration
	}

	// A sandbox's output is copied to logs asynchronously; once its process
	// has exited (Close waits for that) every line it printed is there.
	for _, r := range append([]*lambdarun.Runner{f.authorize, f.callback, f.token, f.refresher, secondToken}, atRisk...) {
		r.Close()
	}
	points := parseEMF(t, logs.String()[from:])
	// Exact counts: each transition is published once.
	for _, tc := range []struct {
		metric string
		dims   map[string]string
		want   int
	}{
		{telemetry.TokenServed, map[string]string{"Provider": alarmSina}, 5},
		{telemetry.RefreshSucceeded, map[string]string{"Provider": alarmSina}, 2},
		{telemetry.RefreshFailed, map[string]string{"Provider": alarmSina, "Class": "transient"}, 1},
		{telemetry.RefreshFailed, map[string]string{"Provider": alarmSina, "Class": "config"}, 1},
		{telemetry.RefreshFailed, map[string]string{"Provider": alarmSina, "Class": "reauth"}, 1},
		{telemetry.NeedsReauth, map[string]string{"Provider": alarmSina}, 1},
		{telemetry.LeaseContended, map[string]string{"Provider": alarmSina}, 1},
		{telemetry.ProviderLatency, map[string]string{"Provider": alarmSina, "Op": "exchange"}, 1},
		{telemetry.QuotaUsed, map[string]string{"AppID": devstack.WeChatAppID}, 1},
		{telemetry.QuotaRefused, map[string]string{"Provider": alarmWeChat}, 1},
		{telemetry.RefresherDuration, map[string]string{}, 1},
		{telemetry.RefreshUnsaved, map[string]string{"Provider": alarmAtRisk}, 1},
		{telemetry.RefreshFailing, map[string]string{"Provider": alarmAtRisk}, 1},
		{telemetry.RefreshNotPermitted, map[string]string{"Provider": alarmAtRisk}, 1},
		{telemetry.EventsFailed, map[string]string{}, 1},
	} {
		if got := countPoints(points, tc.metric, tc.dims); got != tc.want {
			t.Errorf("%s %v: %d data points, want %d", tc.metric, tc.dims, got, tc.want)
		}
	}
	for _, p := range points {
		if p.metric == telemetry.QuotaUsed && p.value != 1 {
			t.Errorf("QuotaUsed %v, want 1 (calls counted so far today)", p.value)
		}
	}

	proof := &metricProof{tpl: tpl, points: points}
	alarms := alarmRefs(t, tpl)
	dashboard := dashboardRefs(t, tpl)
	if len(alarms) == 0 || len(dashboard) == 0 {
		t.Fatalf("%d alarm and %d dashboard metric references in template.yaml", len(alarms), len(dashboard))
	}
	t.Logf("%-34s %-13s %-18s %-28s %s", "alarm / dashboard widget", "namespace", "metric", "dimensions", "receives data")
	for _, ref := range append(alarms, dashboard...) {
		evidence, err := proof.check(ref)
		if err != nil {
			t.Errorf("%s: %v", ref.where, err)
			continue
		}
		t.Logf("%-34s %-13s %-18s %-28s %s", ref.where, ref.namespace, ref.metric, ref.dimString(), evidence)
	}
	checkAlarmWiring(t, tpl, alarms)
	// Every metric the functions publish is somewhere on the dashboard.
	for _, name := range publishedNames(points) {
		if !slices.ContainsFunc(dashboard, func(r metricRef) bool { return r.namespace == telemetry.Namespace && r.metric == name }) {
			t.Errorf("the functions publish %s but the dashboard does not show it", name)
		}
	}
}

const alarmAtRisk = "alarm-at-risk"

// provokeGrantsAtRisk makes the functions publish the metrics of grants at
// risk, each exactly once: a refresh whose answer DynamoDB would not store
// (RefreshUnsaved), a failure streak past expiry (RefreshFailing), a
// provider that will not refresh for the app (RefreshNotPermitted) and a
// lifecycle event EventBridge would not take (EventsFailed). It returns
// the sandboxes it started, for the caller to close.
func provokeGrantsAtRisk(t *testing.T) []*lambdarun.Runner {
	t.Helper()
	ctx := context.Background()
	sina := emulator.NewSinaCloud(devstack.SinaClientID, devstack.SinaSecret, publicBase+"/callback/"+alarmAtRisk)
	srv := httptest.NewServer(sina)
	t.Cleanup(srv.Close)
	if err := stack.PutProvider(ctx, alarmAtRisk, map[string]any{"kind": "sinacloud", "client_id": devstack.SinaClientID, "api_base": srv.URL}, devstack.SinaSecret); err != nil {
		t.Fatal(err)
	}
	proxy, err := ddbfault.Start(stack.Endpoints.DynamoDB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	token := startFunction(t, "token", nil)
	throttled := startFunction(t, "token", map[string]string{localaws.EnvDynamoDB: proxy.URL})
	deaf := startFunction(t, "token", map[string]string{localaws.EnvEventBridge: "http://127.0.0.1:1"})
	grant := func(conn string) {
		access, refresh, ttl := sina.IssueGrant()
		expectStatus(t, invoke(t, token, request{method: "PUT", path: "/connections/" + alarmAtRisk + "/" + conn, iam: true,
			body: fmt.Sprintf(`{"access_token":%q,"refresh_token":%q,"expires_in":%d}`, access, refresh, int(ttl.Seconds()))}), 201, "")
	}
	for _, conn := range []string{"unsaved", "failing", "not-permitted", "deaf"} {
		grant(conn)
	}
	// RefreshUnsaved: every commit throttled for the whole time budget.
	expectStatus(t, tokenOf(t, throttled, alarmAtRisk, "unsaved", ""), 200, "")
	ageConnection(t, stack.Table, alarmAtRisk, "unsaved", 30*time.Second)
	proxy.Inject("PutItem", ddbfault.Fault{Kind: ddbfault.Throttle}, 1000000)
	expectStatus(t, tokenOf(t, throttled, alarmAtRisk, "unsaved", "min_ttl=600"), 500, "internal")
	proxy.Clear()
	// RefreshFailing: the access token has expired and the refresh fails.
	ageConnection(t, stack.Table, alarmAtRisk, "failing", -time.Minute)
	sina.Inject("/oauth2/access_token", emulator.HTMLError(503), 1)
	expectStatus(t, tokenOf(t, token, alarmAtRisk, "failing", ""), 503, "provider_unavailable")
	// RefreshNotPermitted: the token is still served.
	ageConnection(t, stack.Table, alarmAtRisk, "not-permitted", 30*time.Second)
	sina.NoRefreshPermission = true
	expectStatus(t, tokenOf(t, token, alarmAtRisk, "not-permitted", "min_ttl=600"), 200, "")
	sina.NoRefreshPermission = false
	// EventsFailed: the needs_reauth is stored with its notice; the
	// sandbox cannot reach EventBridge, so the refresher will send it.
	ageConnection(t, stack.Table, alarmAtRisk, "deaf", 30*time.Second)
	sina.Inject("/oauth2/access_token", emulator.OAuthError(400, "invalid_grant", "revoked"), 1)
	expectStatus(t, tokenOf(t, deaf, alarmAtRisk, "deaf", "min_ttl=600"), 409, "needs_reauth")
	return []*lambdarun.Runner{token, throttled, deaf}
}

// providerGate holds calls to one path of a provider until released, so a
// test can act while a refresh is provably in flight.
type providerGate struct {
	http.Handler
	path    string
	mu      sync.Mutex
	held    chan struct{}
	arrived chan struct{}
}

func (g *providerGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	held, arrived := g.held, g.arrived
	g.mu.Unlock()
	if held != nil && r.URL.Path == g.path {
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-held:
		case <-r.Context().Done():
			return
		}
	}
	g.Handler.ServeHTTP(w, r)
}

// hold makes the next calls wait; arrived signals the first one.
func (g *providerGate) hold() (arrived <-chan struct{}, release func()) {
	held, arr := make(chan struct{}), make(chan struct{}, 1)
	g.mu.Lock()
	g.held, g.arrived = held, arr
	g.mu.Unlock()
	var once sync.Once
	return arr, func() {
		once.Do(func() {
			g.mu.Lock()
			g.held = nil
			g.mu.Unlock()
			close(held)
		})
	}
}

// emfPoint is one metric of one dimension set of one EMF line: one data
// point of one CloudWatch metric.
type emfPoint struct {
	namespace, metric string
	dims              map[string]string
	value             float64
}

func (p emfPoint) dimSet() string { return strings.Join(slices.Sorted(maps.Keys(p.dims)), ",") }

// parseEMF reads the EMF lines of out as CloudWatch Logs would, failing
// the test on a line CloudWatch would reject (it would drop every metric
// of that line).
func parseEMF(t *testing.T, out string) []emfPoint {
	t.Helper()
	var points []emfPoint
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, `"_aws"`) {
			continue
		}
		var root map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &root); err != nil {
			continue // not a JSON line (a plain log message quoting "_aws")
		}
		var meta struct {
			CloudWatchMetrics []struct {
				Namespace  string
				Dimensions []json.RawMessage
				Metrics    []struct{ Name, Unit string }
			}
		}
		if err := json.Unmarshal(root["_aws"], &meta); err != nil || len(meta.CloudWatchMetrics) == 0 {
			t.Errorf("invalid EMF metadata: %s", line)
			continue
		}
		for _, d := range meta.CloudWatchMetrics {
			if len(d.Dimensions) == 0 {
				t.Errorf("EMF directive without dimension sets: %s", line)
			}
			for _, rawSet := range d.Dimensions {
				var set []string
				if err := json.Unmarshal(rawSet, &set); err != nil || set == nil {
					t.Errorf("EMF dimension set %s is not an array of names: %s", rawSet, line)
					continue
				}
				dims := map[string]string{}
				for _, k := range set {
					if err := json.Unmarshal(root[k], new(string)); err != nil {
						t.Errorf("EMF dimension %s is not a string member: %s", k, line)
					}
					var v string
					_ = json.Unmarshal(root[k], &v)
					dims[k] = v
				}
				for _, m := range d.Metrics {
					var v float64
					if err := json.Unmarshal(root[m.Name], &v); err != nil {
						t.Errorf("EMF metric %s is not a number: %s", m.Name, line)
					}
					points = append(points, emfPoint{namespace: d.Namespace, metric: m.Name, dims: dims, value: v})
				}
			}
		}
	}
	return points
}

// countPoints counts the data points of metric whose dimension set is
// exactly dims' keys, with dims' values.
func countPoints(points []emfPoint, metric string, dims map[string]string) int {
	n := 0
	for _, p := range points {
		if p.metric == metric && p.namespace == telemetry.Namespace && sameDims(p.dims, dims) {
			n++
		}
	}
	return n
}

func sameDims(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func publishedNames(points []emfPoint) []string {
	var names []string
	for _, p := range points {
		if p.namespace == telemetry.Namespace && !slices.Contains(names, p.metric) {
			names = append(names, p.metric)
		}
	}
	slices.Sort(names)
	return names
}

// metricRef is one metric an alarm or a dashboard graph reads. Dimension
// values are literal, "ref:X" for `!Ref X` / `${X}`, or "" where a SEARCH
// names only the dimension keys.
type metricRef struct {
	where             string
	namespace, metric string
	dims              map[string]string
	search            bool
}

func (r metricRef) dimString() string {
	if len(r.dims) == 0 {
		return "[]"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(r.dims)) {
		if v := r.dims[k]; v != "" {
			parts = append(parts, k+"="+v)
		} else {
			parts = append(parts, k+"=*")
		}
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// alarmRefs reads every AWS::CloudWatch::Alarm: a single metric
// (Namespace, MetricName, Dimensions) or the MetricStats of a metric math
// alarm.
func alarmRefs(t *testing.T, tpl *samtemplate.Template) []metricRef {
	t.Helper()
	var refs []metricRef
	for _, id := range tpl.OfType("AWS::CloudWatch::Alarm") {
		r := tpl.Resources[id]
		var metrics []*yaml.Node
		if ns := r.Property("Namespace"); ns != nil {
			metrics = append(metrics, &r.Properties)
		}
		if list := r.Property("Metrics"); list != nil {
			for _, q := range list.Content {
				if m := samtemplate.Lookup(q, "MetricStat", "Metric"); m != nil {
					metrics = append(metrics, m)
				}
			}
		}
		if len(metrics) == 0 {
			t.Errorf("alarm %s watches no metric", id)
		}
		for _, m := range metrics {
			ref := metricRef{where: "alarm " + id, dims: map[string]string{}}
			if n := samtemplate.Lookup(m, "Namespace"); n != nil {
				ref.namespace = n.Value
			}
			if n := samtemplate.Lookup(m, "MetricName"); n != nil {
				ref.metric = n.Value
			}
			if d := samtemplate.Lookup(m, "Dimensions"); d != nil {
				for _, dim := range d.Content {
					name, value := samtemplate.Lookup(dim, "Name"), samtemplate.Lookup(dim, "Value")
					if name == nil || value == nil {
						t.Errorf("alarm %s: dimension without Name and Value", id)
						continue
					}
					if target, ok := samtemplate.Ref(value); ok {
						ref.dims[name.Value] = "ref:" + target
					} else if value.Tag == "!GetAtt" {
						ref.dims[name.Value] = "ref:" + value.Value
					} else {
						ref.dims[name.Value] = value.Value
					}
				}
			}
			refs = append(refs, ref)
		}
	}
	return refs
}

var (
	subVariable = regexp.MustCompile(`\$\{([^}]*)\}`)
	searchExpr  = regexp.MustCompile(`^SEARCH\(\s*'\s*\{([^}]*)\}([^']*)'`)
	searchName  = regexp.MustCompile(`MetricName\s*=\s*"([^"]+)"`)
)

const testRegion = "us-east-1"

// dashboard is the part of a CloudWatch dashboard body this test reads.
type dashboard struct {
	Widgets []struct {
		Type       string
		Properties struct {
			Title       string
			Region      string
			Alarms      []string
			Metrics     [][]any
			Annotations struct {
				Horizontal []struct {
					Label string
					Value float64
				}
			}
		}
	}
}

// loadDashboard resolves the dashboard's !Sub body as CloudFormation
// would (region, resource names as "ref:X") and parses it.
func loadDashboard(t *testing.T, tpl *samtemplate.Template) (string, dashboard) {
	t.Helper()
	ids := tpl.OfType("AWS::CloudWatch::Dashboard")
	if len(ids) != 1 {
		t.Fatalf("template.yaml has %d dashboards, want 1", len(ids))
	}
	body, ok := samtemplate.Sub(tpl.Resources[ids[0]].Property("DashboardBody"))
	if !ok {
		t.Fatalf("dashboard %s: DashboardBody is not a !Sub string", ids[0])
	}
	body = subVariable.ReplaceAllStringFunc(body, func(m string) string {
		name := m[2 : len(m)-1]
		switch {
		case strings.HasPrefix(name, "!"):
			return "${" + name[1:] + "}"
		case name == "AWS::Region":
			return testRegion
		case strings.HasPrefix(name, "AWS::"):
			return "pseudo:" + name
		}
		resource, _, _ := strings.Cut(name, ".")
		if _, ok := tpl.Resources[resource]; !ok {
			t.Errorf("dashboard names ${%s}, which is no resource of template.yaml", name)
		}
		return "ref:" + name
	})
	var d dashboard
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatalf("dashboard body is not JSON once substituted: %v", err)
	}
	return ids[0], d
}

// dashboardRefs reads every metric the dashboard's graphs show: explicit
// [namespace, name, dim, value, …, {options}] rows and SEARCH expressions.
func dashboardRefs(t *testing.T, tpl *samtemplate.Template) []metricRef {
	t.Helper()
	_, d := loadDashboard(t, tpl)
	var refs []metricRef
	for _, w := range d.Widgets {
		if w.Type != "metric" {
			continue
		}
		where := fmt.Sprintf("dashboard %.24q", w.Properties.Title)
		if w.Properties.Region != testRegion {
			t.Errorf("%s: region %q, want ${AWS::Region}", where, w.Properties.Region)
		}
		for _, row := range w.Properties.Metrics {
			if len(row) == 1 {
				opts, _ := row[0].(map[string]any)
				expr, _ := opts["expression"].(string)
				m := searchExpr.FindStringSubmatch(expr)
				if m == nil {
					t.Errorf("%s: expression %q is not a SEARCH this test can check", where, expr)
					continue
				}
				schema := strings.Split(m[1], ",")
				name := searchName.FindStringSubmatch(m[2])
				if name == nil {
					t.Errorf("%s: SEARCH %q names no MetricName", where, expr)
					continue
				}
				ref := metricRef{where: where, namespace: strings.Trim(strings.TrimSpace(schema[0]), `"`), metric: name[1], dims: map[string]string{}, search: true}
				for _, k := range schema[1:] {
					ref.dims[strings.Trim(strings.TrimSpace(k), `"`)] = ""
				}
				refs = append(refs, ref)
				continue
			}
			var words []string
			for _, v := range row {
				if s, ok := v.(string); ok {
					words = append(words, s)
				}
			}
			if len(words) < 2 || len(words)%2 != 0 || slices.ContainsFunc(words, func(s string) bool { return strings.Trim(s, ".") == "" }) {
				t.Errorf("%s: metric row %v is not [namespace, name, dimension, value, …] (no \"…\" shorthand)", where, row)
				continue
			}
			ref := metricRef{where: where, namespace: words[0], metric: words[1], dims: map[string]string{}}
			for i := 2; i < len(words); i += 2 {
				ref.dims[words[i]] = words[i+1]
			}
			refs = append(refs, ref)
		}
	}
	return refs
}

// metricProof checks one reference against what is published.
type metricProof struct {
	tpl    *samtemplate.Template
	points []emfPoint
}

// What AWS publishes, by namespace and metric: the dimension sets (sorted
// names) it publishes them with. Only what this template reads.
var awsMetrics = map[string]map[string][]string{
	"AWS/Lambda": {
		"Errors": {"FunctionName"}, "Throttles": {"FunctionName"}, "Duration": {"FunctionName"},
		"Invocations": {"FunctionName"}, "ConcurrentExecutions": {"FunctionName"},
	},
	"AWS/DynamoDB": {
		"ThrottledRequests": {"Operation,TableName"}, "SystemErrors": {"Operation,TableName"},
		"ReadThrottleEvents":  {"TableName", "GlobalSecondaryIndexName,TableName"},
		"WriteThrottleEvents": {"TableName", "GlobalSecondaryIndexName,TableName"},
	},
	"AWS/SQS": {
		"ApproximateNumberOfMessagesVisible": {"QueueName"}, "ApproximateNumberOfMessagesNotVisible": {"QueueName"},
		"ApproximateAgeOfOldestMessage": {"QueueName"},
	},
}

// dynamoOperations are the Operation values DynamoDB publishes that this
// broker's calls can produce.
var dynamoOperations = []string{"GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem", "BatchWriteItem", "TransactWriteItems", "TransactGetItems"}

func (p *metricProof) check(ref metricRef) (string, error) {
	set := strings.Join(slices.Sorted(maps.Keys(ref.dims)), ",")
	if ref.namespace == telemetry.Namespace {
		n, sameName := 0, map[string]bool{}
		for _, pt := range p.points {
			if pt.namespace != ref.namespace || pt.metric != ref.metric {
				continue
			}
			sameName["["+pt.dimSet()+"]"] = true
			if pt.dimSet() != set {
				continue
			}
			match := true
			for k, v := range ref.dims {
				if v != "" && pt.dims[k] != v {
					match = false
				}
			}
			if match {
				n++
			}
		}
		if n == 0 {
			return "", fmt.Errorf("no function publishes %s/%s with dimensions %s (published with: %v)", ref.namespace, ref.metric, ref.dimString(), slices.Sorted(maps.Keys(sameName)))
		}
		return fmt.Sprintf("%d EMF data points", n), nil
	}
	metrics, ok := awsMetrics[ref.namespace]
	if !ok {
		return "", fmt.Errorf("namespace %q is neither %s nor one this test knows AWS publishes", ref.namespace, telemetry.Namespace)
	}
	sets, ok := metrics[ref.metric]
	if !ok {
		return "", fmt.Errorf("%s does not publish %q (known here: %v)", ref.namespace, ref.metric, slices.Sorted(maps.Keys(metrics)))
	}
	if !slices.Contains(sets, set) {
		return "", fmt.Errorf("%s publishes %s with dimensions %v, not [%s]", ref.namespace, ref.metric, sets, set)
	}
	var resource string
	for k, v := range ref.dims {
		switch k {
		case "FunctionName":
			resource = strings.TrimPrefix(v, "ref:")
			if err := p.refersTo(v, "AWS::Serverless::Function"); err != nil {
				return "", err
			}
		case "TableName":
			resource = strings.TrimPrefix(v, "ref:")
			if err := p.refersTo(v, "AWS::DynamoDB::Table"); err != nil {
				return "", err
			}
		case "QueueName":
			// !GetAtt Queue.QueueName: the queue's name follows the stack.
			id, _, _ := strings.Cut(v, ".")
			resource = strings.TrimPrefix(id, "ref:")
			if err := p.refersTo(id, "AWS::SQS::Queue"); err != nil {
				return "", err
			}
		case "Operation":
			if !slices.Contains(dynamoOperations, v) {
				return "", fmt.Errorf("Operation %q is not a DynamoDB operation", v)
			}
		}
	}
	return "AWS publishes it for " + resource, nil
}

func (p *metricProof) refersTo(value, typ string) error {
	id, ok := strings.CutPrefix(value, "ref:")
	if !ok {
		return fmt.Errorf("%q names a resource by hand; use !Ref so it follows the stack", value)
	}
	if r, ok := p.tpl.Resources[id]; !ok || r.Type != typ {
		return fmt.Errorf("%s is not a %s of template.yaml", id, typ)
	}
	return nil
}

// checkAlarmWiring checks what the alarms must cover besides receiving
// data: the refresher's errors and its duration against its timeout,
// throttles of every function and of every table operation the functions
// may call, every alarm sent to AlarmTopicArn and shown on the dashboard,
// and the dashboard's duration graph marked at the real timeout.
func checkAlarmWiring(t *testing.T, tpl *samtemplate.Template, alarms []metricRef) {
	t.Helper()
	timeout, err := tpl.FunctionTimeout("RefresherFunction")
	if err != nil {
		t.Fatal(err)
	}
	timeoutMS := float64(timeout.Milliseconds())
	watched := func(ns, metric string, dims map[string]string) []string {
		var ids []string
		for _, a := range alarms {
			if a.namespace == ns && a.metric == metric && sameDims(a.dims, dims) {
				ids = append(ids, strings.TrimPrefix(a.where, "alarm "))
			}
		}
		return ids
	}
	refresher := map[string]string{"FunctionName": "ref:RefresherFunction"}
	if len(watched("AWS/Lambda", "Errors", refresher)) == 0 {
		t.Error("no alarm on the refresher's Errors")
	}
	durationAlarms := watched("AWS/Lambda", "Duration", refresher)
	if len(durationAlarms) != 1 {
		t.Errorf("%d alarms on the refresher's Duration, want 1", len(durationAlarms))
	}
	for _, id := range durationAlarms {
		r := tpl.Resources[id]
		stat, threshold := r.Property("Statistic"), r.Property("Threshold")
		if stat == nil || stat.Value != "Maximum" || threshold == nil {
			t.Errorf("%s: want Statistic Maximum and a Threshold", id)
			continue
		}
		var got float64
		if _, err := fmt.Sscan(threshold.Value, &got); err != nil || math.Abs(got-0.8*timeoutMS) > 0.5 {
			t.Errorf("%s: Threshold %s ms, want 80%% of RefresherFunction's Timeout (%v) = %.0f ms", id, threshold.Value, timeout, 0.8*timeoutMS)
		}
	}
	for _, fn := range tpl.OfType("AWS::Serverless::Function") {
		if len(watched("AWS/Lambda", "Throttles", map[string]string{"FunctionName": "ref:" + fn})) == 0 {
			t.Errorf("no alarm on Throttles of %s", fn)
		}
	}
	// Every DynamoDB operation the store calls (the methods of the client
	// interface it takes) and every one a function's policy allows.
	storeAPI := reflect.TypeFor[store.DynamoDB]()
	for i := range storeAPI.NumMethod() {
		op := storeAPI.Method(i).Name
		if len(watched("AWS/DynamoDB", "ThrottledRequests", map[string]string{"TableName": "ref:TokenTable", "Operation": op})) == 0 {
			t.Errorf("the store calls %s, but no alarm watches ThrottledRequests for it", op)
		}
	}
	for _, fn := range tpl.OfType("AWS::Serverless::Function") {
		statements, err := tpl.PolicyStatements(fn)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range statements {
			for _, action := range st.Actions {
				op, ok := strings.CutPrefix(action, "dynamodb:")
				if !ok {
					continue
				}
				if len(watched("AWS/DynamoDB", "ThrottledRequests", map[string]string{"TableName": "ref:TokenTable", "Operation": op})) == 0 {
					t.Errorf("%s may call %s, but no alarm watches ThrottledRequests for it", fn, op)
				}
			}
		}
	}
	for _, id := range tpl.OfType("AWS::CloudWatch::Alarm") {
		if !sendsToAlarmTopic(tpl.Resources[id].Property("AlarmActions")) {
			t.Errorf("%s: AlarmActions must be !If [HasAlarmTopic, [!Ref AlarmTopicArn], !Ref AWS::NoValue]", id)
		}
	}
	_, d := loadDashboard(t, tpl)
	var shown []string
	durationMarked := false
	for _, w := range d.Widgets {
		shown = append(shown, w.Properties.Alarms...)
		for _, row := range w.Properties.Metrics {
			if len(row) >= 4 && row[0] == "AWS/Lambda" && row[1] == "Duration" && row[3] == "ref:RefresherFunction" {
				var marks []float64
				for _, h := range w.Properties.Annotations.Horizontal {
					marks = append(marks, h.Value)
				}
				if !slices.Contains(marks, timeoutMS) || !slices.Contains(marks, 0.8*timeoutMS) {
					t.Errorf("dashboard %q marks %v, want the refresher's timeout %.0f ms and the alarm at %.0f ms", w.Properties.Title, marks, timeoutMS, 0.8*timeoutMS)
				}
				durationMarked = true
			}
		}
	}
	if !durationMarked {
		t.Error("the dashboard does not graph the refresher's Duration")
	}
	for _, id := range tpl.OfType("AWS::CloudWatch::Alarm") {
		if !slices.Contains(shown, "ref:"+id+".Arn") {
			t.Errorf("the dashboard's alarm widget does not show %s", id)
		}
	}
}

func sendsToAlarmTopic(n *yaml.Node) bool {
	if n == nil || n.Tag != "!If" || len(n.Content) != 3 || n.Content[0].Value != "HasAlarmTopic" {
		return false
	}
	topics := n.Content[1]
	ref, _ := samtemplate.Ref(n.Content[2])
	if topics.Kind != yaml.SequenceNode || len(topics.Content) != 1 || ref != "AWS::NoValue" {
		return false
	}
	topic, _ := samtemplate.Ref(topics.Content[0])
	return topic == "AlarmTopicArn"
}
