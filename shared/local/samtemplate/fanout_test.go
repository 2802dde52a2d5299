package samtemplate_test

import (
	"strconv"
	"testing"

	"github.com/tokenbroker/tokenbroker/shared/local/samtemplate"
)

// The fan-out wiring (README, Fan-out): one parameter switches the tick's
// queue and the event source mapping; the mapping reports partial batch
// failures and is bounded by a parameter; the queue dead-letters, with an
// alarm, and never hands a message to a second worker while the first may
// still work it.
func TestFanOutWiring(t *testing.T) {
	tpl, _ := loadTemplate(t)
	p := tpl.Parameters["RefreshFanOut"]
	if p.Default != "false" || len(p.AllowedValues) != 2 {
		t.Errorf("RefreshFanOut default %q, allowed %v; want false of true/false", p.Default, p.AllowedValues)
	}
	worker := tpl.Resources["RefreshWorkerFunction"]
	events := worker.Property("Events")
	if events == nil || len(events.Content) != 2 {
		t.Fatal("RefreshWorkerFunction needs exactly one event: the SQS mapping")
	}
	ev := events.Content[1]
	if typ := samtemplate.Lookup(ev, "Type"); typ == nil || typ.Value != "SQS" {
		t.Fatalf("worker event type %v, want SQS", typ)
	}
	props := samtemplate.Lookup(ev, "Properties")
	if q, _ := samtemplate.Text(samtemplate.Lookup(props, "Queue")); q != "${RefreshQueue.Arn}" {
		t.Errorf("worker reads %q, want RefreshQueue", q)
	}
	enabled := samtemplate.Lookup(props, "Enabled")
	if enabled == nil || enabled.Tag != "!If" || enabled.Content[0].Value != "FanOut" || enabled.Content[1].Value != "true" || enabled.Content[2].Value != "false" {
		t.Error("the mapping must be Enabled: !If [FanOut, true, false]")
	}
	if types := samtemplate.Scalars(samtemplate.Lookup(props, "FunctionResponseTypes")); len(types) != 1 || types[0] != "ReportBatchItemFailures" {
		t.Errorf("FunctionResponseTypes %v, want ReportBatchItemFailures", types)
	}
	if ref, _ := samtemplate.Ref(samtemplate.Lookup(props, "ScalingConfig", "MaximumConcurrency")); ref != "RefreshWorkerMaxConcurrency" {
		t.Errorf("MaximumConcurrency from %q, want the RefreshWorkerMaxConcurrency parameter", ref)
	}
	if ref, _ := samtemplate.Ref(samtemplate.Lookup(props, "BatchSize")); ref != "RefreshWorkerBatchSize" {
		t.Errorf("BatchSize from %q, want the RefreshWorkerBatchSize parameter", ref)
	}
	if number(t, tpl, "RefreshWorkerMaxConcurrency") > number(t, tpl, "RefreshWorkerReservedConcurrency") {
		t.Error("the mapping's default maximum concurrency exceeds the worker's reserved concurrency: it would be throttled")
	}

	queue := tpl.Resources["RefreshQueue"]
	workerTimeout, err := tpl.FunctionTimeout("RefreshWorkerFunction")
	if err != nil {
		t.Fatal(err)
	}
	vis, err := strconv.Atoi(queue.Property("VisibilityTimeout").Value)
	if err != nil || vis < 6*int(workerTimeout.Seconds()) {
		t.Errorf("VisibilityTimeout %d s, want at least six worker timeouts (%v)", vis, workerTimeout)
	}
	if dlq, _ := samtemplate.Text(queue.Property("RedrivePolicy", "deadLetterTargetArn")); dlq != "${RefreshDeadLetterQueue.Arn}" {
		t.Errorf("RedrivePolicy target %q, want RefreshDeadLetterQueue", dlq)
	}
	if n := queue.Property("RedrivePolicy", "maxReceiveCount"); n == nil || n.Value == "" {
		t.Error("RedrivePolicy without maxReceiveCount")
	}
	alarmed := false
	for _, id := range tpl.OfType("AWS::CloudWatch::Alarm") {
		r := tpl.Resources[id]
		dims := r.Property("Dimensions")
		if ns := r.Property("Namespace"); ns != nil && ns.Value == "AWS/SQS" && dims != nil && len(dims.Content) == 1 {
			if v := samtemplate.Lookup(dims.Content[0], "Value"); v != nil && v.Tag == "!GetAtt" && v.Value == "RefreshDeadLetterQueue.QueueName" {
				alarmed = true
			}
		}
	}
	if !alarmed {
		t.Error("no alarm watches the dead-letter queue")
	}

	// The tick queues only in fan-out mode.
	env, _ := tpl.FunctionSetting("RefresherFunction", "Environment")
	url := samtemplate.Lookup(env, "Variables", "REFRESH_QUEUE_URL")
	if url == nil || url.Tag != "!If" || url.Content[0].Value != "FanOut" {
		t.Fatal("RefresherFunction's REFRESH_QUEUE_URL must be !If [FanOut, !Ref RefreshQueue, \"\"]")
	}
	if ref, _ := samtemplate.Ref(url.Content[1]); ref != "RefreshQueue" || url.Content[2].Value != "" {
		t.Errorf("REFRESH_QUEUE_URL is %v / %q", ref, url.Content[2].Value)
	}
	if home, _ := tpl.FunctionSetting("TokenFunction", "Environment"); home == nil {
		t.Fatal("no environment")
	} else if ref, _ := samtemplate.Ref(samtemplate.Lookup(home, "Variables", "HOME_REGION")); ref != "HomeRegion" {
		t.Errorf("HOME_REGION from %q, want the HomeRegion parameter for every function", ref)
	}
}
