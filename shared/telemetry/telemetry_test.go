package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambdacontext"

	"tokenbroker/shared/telemetry"
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
