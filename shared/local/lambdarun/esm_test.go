package lambdarun_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/tokenbroker/tokenbroker/shared/local/lambdarun"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

const dirEnv = "LAMBDARUN_TEST_DIR"

// sqsWorker is the test bootstrap behind a mapping: it writes one line
// per message it sees ("start" and "end" of the invoke with the time, for
// the concurrency check), reports "fail-*" bodies as batch item
// failures, and crashes once on "crash-once".
func sqsWorker(ctx context.Context, ev events.SQSEvent) (events.SQSEventResponse, error) {
	dir := os.Getenv(dirEnv)
	log := func(line string) {
		f, err := os.OpenFile(filepath.Join(dir, "log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintln(f, line)
			f.Close()
		}
	}
	log(fmt.Sprintf("start %d", time.Now().UnixNano()))
	var resp events.SQSEventResponse
	for _, m := range ev.Records {
		log("msg " + m.Body)
		switch {
		case strings.HasPrefix(m.Body, "fail-"):
			resp.BatchItemFailures = append(resp.BatchItemFailures, events.SQSBatchItemFailure{ItemIdentifier: m.MessageId})
		case m.Body == "crash-once":
			if _, err := os.Stat(filepath.Join(dir, "crashed")); err != nil {
				_ = os.WriteFile(filepath.Join(dir, "crashed"), nil, 0o644)
				log(fmt.Sprintf("end %d", time.Now().UnixNano()))
				os.Exit(3)
			}
		}
	}
	time.Sleep(100 * time.Millisecond)
	log(fmt.Sprintf("end %d", time.Now().UnixNano()))
	return resp, nil
}

// The mapping behaves as Lambda's: batches of at most BatchSize, at most
// MaximumConcurrency invokes at once, succeeded messages deleted, reported
// failures and a crashed invoke's whole batch back after the visibility
// timeout, and the queue's redrive policy moving a message that keeps
// failing to the dead-letter queue.
func TestMappingAsLambdaDoes(t *testing.T) {
	ctx := context.Background()
	ep, stop, err := localaws.Setup(ctx)
	defer stop()
	if err != nil {
		t.Fatal(err)
	}
	client := sqs.NewFromConfig(localaws.Config(), func(o *sqs.Options) { o.BaseEndpoint = aws.String(ep.SSM) })
	name := localaws.UniqueName("esm")
	dlq, err := client.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name + "-dlq")})
	if err != nil {
		t.Fatal(err)
	}
	dlqAttrs, err := client.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: dlq.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		t.Fatal(err)
	}
	redrive, _ := json.Marshal(map[string]any{"deadLetterTargetArn": dlqAttrs.Attributes["QueueArn"], "maxReceiveCount": 2})
	q, err := client.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name), Attributes: map[string]string{
		"VisibilityTimeout": "2", "RedrivePolicy": string(redrive)}})
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for i := range 18 {
		bodies = append(bodies, fmt.Sprintf("ok-%02d", i))
	}
	bodies = append(bodies, "fail-1", "fail-2")
	// The crash goes alone, first: a crashed invoke fails its whole batch,
	// so messages sharing it would (rightly) be handled twice.
	if _, err := client.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: q.QueueUrl, MessageBody: aws.String("crash-once")}); err != nil {
		t.Fatal(err)
	}
	send := func() {
		for start := 0; start < len(bodies); start += 10 {
			var entries []sqstypes.SendMessageBatchRequestEntry
			for i := start; i < min(start+10, len(bodies)); i++ {
				entries = append(entries, sqstypes.SendMessageBatchRequestEntry{Id: aws.String(fmt.Sprint(i)), MessageBody: aws.String(bodies[i])})
			}
			if _, err := client.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: q.QueueUrl, Entries: entries}); err != nil {
				t.Fatal(err)
			}
		}
	}
	dir := t.TempDir()
	self, _ := os.Executable()
	m, err := lambdarun.StartMapping(lambdarun.MappingConfig{SQS: client, QueueURL: aws.ToString(q.QueueUrl), BatchSize: 4, MaximumConcurrency: 3,
		ReportBatchItemFailures: true, Log: t.Logf,
		Function: func() (*lambdarun.Runner, error) {
			return lambdarun.Start(lambdarun.Config{Bootstrap: self, FunctionName: "worker", Timeout: 10 * time.Second,
				Env: map[string]string{modeEnv: "sqs", dirEnv: dir}})
		}})
	if err != nil {
		t.Fatal(err)
	}
	for wait := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "crashed")); err == nil {
			break
		}
		if time.Now().After(wait) {
			t.Fatal("the crashing message was never handed to the function")
		}
	}
	send()
	bodies = append(bodies, "crash-once")
	// Done when both failing messages are dead-lettered and the 19 others
	// are deleted.
	deadline := time.Now().Add(60 * time.Second)
	var dead []string
	for time.Now().Before(deadline) && (len(dead) < 2 || m.Stats().Deleted < 19) {
		out, err := client.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: dlq.QueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, msg := range out.Messages {
			dead = append(dead, aws.ToString(msg.Body))
		}
	}
	m.Close()
	stats := m.Stats()
	sort.Strings(dead)
	if strings.Join(dead, ",") != "fail-1,fail-2" {
		t.Errorf("dead-lettered %v, want fail-1 and fail-2", dead)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "log"))
	seen := map[string]int{}
	type edge struct {
		at    int64
		delta int
	}
	var edges []edge
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		word, rest, _ := strings.Cut(line, " ")
		switch word {
		case "msg":
			seen[rest]++
		case "start", "end":
			var at int64
			fmt.Sscan(rest, &at)
			d := 1
			if word == "end" {
				d = -1
			}
			edges = append(edges, edge{at, d})
		}
	}
	for _, b := range bodies {
		want := 1
		switch {
		case strings.HasPrefix(b, "fail-"):
			want = 2 // maxReceiveCount
		case b == "crash-once":
			want = 2 // the crashed invoke, then again after the visibility timeout
		}
		if seen[b] != want {
			t.Errorf("%s handled %d times, want %d", b, seen[b], want)
		}
	}
	sort.Slice(edges, func(i, j int) bool { return edges[i].at < edges[j].at })
	running, most := 0, 0
	for _, e := range edges {
		running += e.delta
		most = max(most, running)
	}
	if most > 3 {
		t.Errorf("%d invokes ran at once, want at most MaximumConcurrency 3", most)
	}
	if stats.Deleted != 19 || stats.ItemFailures != 4 || stats.FunctionErrors != 1 {
		t.Errorf("stats %+v, want 19 deleted, 4 item failures (2 messages × 2 receives), 1 function error (the crash)", stats)
	}
	t.Logf("stats %+v, at most %d invokes at once", stats, most)
}
