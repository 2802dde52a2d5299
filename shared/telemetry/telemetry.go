// Package telemetry is how tokenbroker tells operators what it does:
// structured JSON logs (log/slog) that carry the Lambda request id,
// CloudWatch metrics as Embedded Metric Format log lines, and EventBridge
// events for connections that need re-authorization.
package telemetry

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/lambdacontext"
)

// Namespace of every metric.
const Namespace = "tokenbroker"

// NewLogger returns a JSON logger at level ("debug", "info", "warn",
// "error"; info when empty or unknown) that adds the Lambda request id
// found in the context to every line.
func NewLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	return slog.New(requestIDHandler{slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})})
}

type requestIDHandler struct{ slog.Handler }

func (h requestIDHandler) Handle(ctx context.Context, r slog.Record) error {
	if lc, ok := lambdacontext.FromContext(ctx); ok && lc.AwsRequestID != "" {
		r.AddAttrs(slog.String("request_id", lc.AwsRequestID))
	}
	return h.Handler.Handle(ctx, r)
}

func (h requestIDHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return requestIDHandler{h.Handler.WithAttrs(as)}
}

func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name)}
}

// Metric names.
const (
	RefreshSucceeded = "RefreshSucceeded"
	RefreshFailed    = "RefreshFailed"
	LeaseContended   = "LeaseContended"
	ProviderLatency  = "ProviderLatency"
	NeedsReauth      = "NeedsReauth"
	TokenServed      = "TokenServed"
	QuotaRefused     = "QuotaRefused"
	// QuotaUsed is the WeChat cgi-bin/token calls counted so far today, per AppID.
	QuotaUsed = "QuotaUsed"
	// RefreshFailing counts failure streaks announced (Connection Refresh Failing).
	RefreshFailing = "RefreshFailing"
	// RefreshUnsaved counts refreshes the provider answered whose result
	// DynamoDB would not store within the time budget.
	RefreshUnsaved = "RefreshUnsaved"
	// RefreshNotPermitted counts refreshes a provider refused because the
	// app may not refresh at all (the grant is served until it expires).
	RefreshNotPermitted = "RefreshNotPermitted"
	// EventsFailed counts lifecycle events EventBridge would not take.
	EventsFailed = "EventsFailed"
	// RefresherDuration is how long one refresher tick took.
	RefresherDuration = "RefresherDuration"
)

// rollups are the dimension sets a metric publishes besides its full set
// (every dimension it is emitted with). CloudWatch treats each dimension
// combination as a metric of its own: an alarm on RefreshFailed with no
// dimensions receives data only from lines that also name the empty set.
// These are exactly what template.yaml's alarms and dashboard read;
// shared/local/e2e proves it from the functions' own output. A metric not
// listed publishes its full set only.
var rollups = map[string][][]string{
	RefreshSucceeded:    {{}},
	RefreshFailed:       {{"Class"}, {}},
	LeaseContended:      {{}},
	ProviderLatency:     {{"Op"}},
	NeedsReauth:         {{}},
	TokenServed:         {{}},
	QuotaRefused:        {{}},
	RefreshFailing:      {{}},
	RefreshUnsaved:      {{}},
	RefreshNotPermitted: {{}},
	EventsFailed:        {{}},
}

// dimensionSets returns the full set of dims (sorted) followed by the
// metric's rollups whose keys dims carries, without duplicates. Empty sets
// are empty arrays, never null: EMF allows an empty DimensionSet, but a
// null one (or one naming a key missing from the line) invalidates the
// whole line.
func dimensionSets(name string, dims map[string]string) [][]string {
	full := append([]string{}, slices.Sorted(maps.Keys(dims))...)
	sets := [][]string{full}
next:
	for _, r := range rollups[name] {
		set := append([]string{}, r...)
		slices.Sort(set)
		for _, k := range set {
			if _, ok := dims[k]; !ok {
				continue next
			}
		}
		for _, s := range sets {
			if slices.Equal(s, set) {
				continue next
			}
		}
		sets = append(sets, set)
	}
	return sets
}

// Metrics writes EMF lines; CloudWatch turns them into metrics with no API
// call from the function. A nil *Metrics discards.
type Metrics struct {
	W   io.Writer
	Now func() time.Time
	mu  sync.Mutex
}

// Count emits value of a Count metric with the given dimensions.
func (m *Metrics) Count(name string, value float64, dims map[string]string) {
	m.emit(name, "Count", value, dims)
}

// Milliseconds emits a duration metric.
func (m *Metrics) Milliseconds(name string, d time.Duration, dims map[string]string) {
	m.emit(name, "Milliseconds", float64(d.Microseconds())/1000, dims)
}

func (m *Metrics) emit(name, unit string, value float64, dims map[string]string) {
	if m == nil || m.W == nil {
		return
	}
	now := time.Now
	if m.Now != nil {
		now = m.Now
	}
	line := map[string]any{
		"_aws": map[string]any{
			"Timestamp": now().UnixMilli(),
			"CloudWatchMetrics": []any{map[string]any{
				"Namespace":  Namespace,
				"Dimensions": dimensionSets(name, dims),
				"Metrics":    []any{map[string]string{"Name": name, "Unit": unit}},
			}},
		},
		name: value,
	}
	for k, v := range dims {
		line[k] = v
	}
	b, err := json.Marshal(line)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, _ = m.W.Write(append(b, '\n'))
}
