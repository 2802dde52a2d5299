package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

func TestLogLinesCarryTheRequestID(t *testing.T) {
	var buf bytes.Buffer
	log := telemetry.NewLogger(&buf, "info")
	ctx := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{AwsRequestID: "req-123"})
	log.InfoContext(ctx, "hello", "provider", "p")
	log.With("component", "x").InfoContext(ctx, "with attrs")
	log.DebugContext(ctx, "hidden at info")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines: %q", len(lines), buf.String())
	}
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil || m["request_id"] != "req-123" {
			t.Fatalf("line %s", l)
		}
	}
}

func TestEMFLine(t *testing.T) {
	var buf bytes.Buffer
	m := &telemetry.Metrics{W: &buf, Now: func() time.Time { return time.UnixMilli(1700000000123) }}
	m.Count(telemetry.RefreshFailed, 1, map[string]string{"Provider": "p", "Class": "transient"})
	m.Milliseconds(telemetry.ProviderLatency, 1500*time.Microsecond, map[string]string{"Provider": "p"})
	var nilMetrics *telemetry.Metrics
	nilMetrics.Count("x", 1, nil) // discards, no panic
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("lines %q", buf.String())
	}
	var first struct {
		AWS struct {
			Timestamp         int64
			CloudWatchMetrics []struct {
				Namespace  string
				Dimensions [][]string
				Metrics    []struct{ Name, Unit string }
			}
		} `json:"_aws"`
		RefreshFailed float64
		Provider      string
		Class         string
	}
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	d := first.AWS.CloudWatchMetrics[0]
	if first.AWS.Timestamp != 1700000000123 || d.Namespace != "tokenbroker" || strings.Join(d.Dimensions[0], ",") != "Class,Provider" ||
		d.Metrics[0].Name != "RefreshFailed" || d.Metrics[0].Unit != "Count" || first.RefreshFailed != 1 || first.Class != "transient" {
		t.Fatalf("EMF line %s", lines[0])
	}
	if !strings.Contains(lines[1], `"ProviderLatency":1.5`) || !strings.Contains(lines[1], `"Unit":"Milliseconds"`) {
		t.Fatalf("latency line %s", lines[1])
	}
}

// TestEMFDimensionSets checks what each metric publishes: its full set and
// the rollups the alarms and dashboard read (an alarm with no dimensions
// needs the empty set), as valid EMF: every set an array (never null),
// every key a string member of the line, the metric a number.
func TestEMFDimensionSets(t *testing.T) {
	for _, tc := range []struct {
		metric string
		dims   map[string]string
		want   string
	}{
		{telemetry.RefreshFailed, map[string]string{"Provider": "p", "Class": "reauth"}, `[["Class","Provider"],["Class"],[]]`},
		{telemetry.RefreshSucceeded, map[string]string{"Provider": "p"}, `[["Provider"],[]]`},
		{telemetry.NeedsReauth, map[string]string{"Provider": "p"}, `[["Provider"],[]]`},
		{telemetry.QuotaRefused, map[string]string{"Provider": "p"}, `[["Provider"],[]]`},
		{telemetry.TokenServed, map[string]string{"Provider": "p"}, `[["Provider"],[]]`},
		{telemetry.LeaseContended, map[string]string{"Provider": "p"}, `[["Provider"],[]]`},
		{telemetry.ProviderLatency, map[string]string{"Provider": "p", "Op": "refresh"}, `[["Op","Provider"],["Op"]]`},
		// A rollup whose key the line lacks is left out, not published invalid.
		{telemetry.ProviderLatency, map[string]string{"Provider": "p"}, `[["Provider"]]`},
		{telemetry.RefreshFailing, map[string]string{"Provider": "p"}, `[["Provider"],[]]`},
		{telemetry.RefreshUnsaved, map[string]string{"Provider": "p"}, `[["Provider"],[]]`},
		{telemetry.RefreshNotPermitted, map[string]string{"Provider": "p"}, `[["Provider"],[]]`},
		{telemetry.EventsFailed, nil, `[[]]`},
		{telemetry.QuotaUsed, map[string]string{"AppID": "wx1"}, `[["AppID"]]`},
		{telemetry.RefresherDuration, nil, `[[]]`},
		// Already the empty set: not repeated.
		{telemetry.NeedsReauth, nil, `[[]]`},
		{"SomethingNew", map[string]string{"Provider": "p"}, `[["Provider"]]`},
	} {
		t.Run(tc.metric+"/"+strings.Join(slices.Sorted(maps.Keys(tc.dims)), ","), func(t *testing.T) {
			var buf bytes.Buffer
			(&telemetry.Metrics{W: &buf}).Count(tc.metric, 3, tc.dims)
			var line map[string]json.RawMessage
			if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
				t.Fatalf("%v: %s", err, buf.String())
			}
			var meta struct {
				CloudWatchMetrics []struct {
					Dimensions json.RawMessage
				}
			}
			if err := json.Unmarshal(line["_aws"], &meta); err != nil || len(meta.CloudWatchMetrics) != 1 {
				t.Fatalf("_aws %s: %v", line["_aws"], err)
			}
			if got := string(meta.CloudWatchMetrics[0].Dimensions); got != tc.want {
				t.Fatalf("Dimensions %s, want %s", got, tc.want)
			}
			var sets [][]string
			_ = json.Unmarshal(meta.CloudWatchMetrics[0].Dimensions, &sets)
			for _, set := range sets {
				for _, k := range set {
					var v string
					if err := json.Unmarshal(line[k], &v); err != nil || v != tc.dims[k] {
						t.Fatalf("dimension %s is not the string member %q: %s", k, tc.dims[k], line[k])
					}
				}
			}
			if string(line[tc.metric]) != "3" {
				t.Fatalf("metric member %s", line[tc.metric])
			}
		})
	}
}
