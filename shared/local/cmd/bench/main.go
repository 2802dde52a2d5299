// Command bench is `make bench`: it measures tokenbroker against DynamoDB
// Local and the provider emulators and rewrites BENCHMARKS.md. Ratios
// measured in the same run are the headline; absolute times are context
// (these machines are shared and noisy).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
)

func main() {
	testing.Init()
	out := flag.String("out", "BENCHMARKS.md", "report to write")
	quick := flag.Bool("quick", false, "smaller sizes, for trying the harness")
	only := flag.String("only", "", "run only the steps whose name contains this, and replace only their parts of -out")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	if err := run(*out, *quick, *only); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// report collects each step's sections. In BENCHMARKS.md every step's
// part sits between <!-- bench:NAME --> markers (invisible when rendered),
// so that -only can rerun one step and replace just its part.
type report struct {
	step  string              // the step running now
	parts map[string][]string // by step
}

// add is a section of the running step.
func (r *report) add(title, body string) { r.addPart("## "+title, body) }

// addSub is a subsection of the running step, under the section before it.
func (r *report) addSub(title, body string) { r.addPart("### "+title, body) }

func (r *report) addPart(heading, body string) {
	if r.parts == nil {
		r.parts = map[string][]string{}
	}
	r.parts[r.step] = append(r.parts[r.step], heading+"\n\n"+strings.TrimSpace(body)+"\n")
	fmt.Printf("\n%s\n%s\n", heading, body)
}

func beginMarker(step string) string { return "<!-- bench:" + step + " -->\n" }
func endMarker(step string) string   { return "<!-- /bench:" + step + " -->\n" }

// block is a step's part of the file, markers included.
func (r *report) block(step string) string {
	return beginMarker(step) + strings.Join(r.parts[step], "\n") + "\n" + endMarker(step)
}

// splice puts a step's block into an existing report: in place of the
// step's old block, else after the block of the closest step before it
// (earlier in the steps' order), else at the end.
func splice(doc, step, block string, earlier []string) string {
	if i := strings.Index(doc, beginMarker(step)); i >= 0 {
		if j := strings.Index(doc[i:], endMarker(step)); j >= 0 {
			return doc[:i] + block + doc[i+j+len(endMarker(step)):]
		}
	}
	for k := len(earlier) - 1; k >= 0; k-- {
		if i := strings.Index(doc, endMarker(earlier[k])); i >= 0 {
			at := i + len(endMarker(earlier[k]))
			return doc[:at] + "\n" + block + doc[at:]
		}
	}
	return strings.TrimRight(doc, "\n") + "\n\n" + block
}

func run(outPath string, quick bool, only string) error {
	start := time.Now()
	ctx := context.Background()
	root, err := localaws.ModuleRoot()
	if err != nil {
		return err
	}
	stack, err := devstack.Start(ctx, devstack.Options{PublicBaseURL: "https://broker.bench", Root: root})
	if err != nil {
		return err
	}
	defer stack.Close()
	env, err := newEnv(ctx, stack, root)
	if err != nil {
		return err
	}
	defer env.close()
	rep := &report{}
	steps := []struct {
		name string
		fn   func(context.Context, *benchEnv, *report, bool) error
	}{
		{"token overhead", benchTokenOverhead},
		{"stampede", benchStampede},
		{"refresher", benchRefresher},
		{"cold start", benchColdStart},
		{"alternatives", benchAlternatives},
		{"client", benchClient},
		{"capacity", benchCapacity},
		{"fanout", benchFanOut},
	}
	var ran, names []string
	for _, s := range steps {
		names = append(names, s.name)
		if only != "" && !strings.Contains(s.name, only) {
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: %s…\n", s.name)
		rep.step = s.name
		if err := s.fn(ctx, env, rep, quick); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		ran = append(ran, s.name)
	}
	if len(ran) == 0 {
		return fmt.Errorf("no benchmark step matches -only %q (steps: %s)", only, strings.Join(names, ", "))
	}
	if !filepath.IsAbs(outPath) {
		outPath = filepath.Join(root, outPath)
	}
	if only != "" {
		// Rerun of some steps: their parts replace the old ones, the rest
		// of the file (and its header) stays as the last full run wrote it.
		if old, err := os.ReadFile(outPath); err == nil {
			doc := string(old)
			for _, step := range ran {
				earlier := names[:slices.Index(names, step)]
				doc = splice(doc, step, rep.block(step), earlier)
			}
			if err := os.WriteFile(outPath, []byte(doc), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "bench: replaced %s in %s in %s\n", strings.Join(ran, ", "), outPath, time.Since(start).Round(time.Second))
			return nil
		}
	}
	header := fmt.Sprintf(`# Benchmarks

Regenerate with `+"`make bench`"+` (it rewrites this file; about %s on this machine);
`+"`make bench ONLY=<step>`"+` reruns one step (%s) and replaces only its part.
Everything runs against DynamoDB Local and the project's provider emulators on
loopback. Ratios measured in the same run are the headline; absolute times
are context, because these machines are shared and noisy.

| | |
|---|---|
| date | %s |
| machine | %d cores (nproc), %s memory, %s/%s |
| Go | %s |
| command | `+"`make bench`"+` (`+"`go run ./shared/local/cmd/standins -- go run ./shared/local/cmd/bench`"+`) |
`, time.Since(start).Round(time.Second), strings.Join(names, ", "), time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), memTotal(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	blocks := make([]string, len(ran))
	for i, step := range ran {
		blocks[i] = rep.block(step)
	}
	doc := header + "\n" + strings.Join(blocks, "\n")
	if err := os.WriteFile(outPath, []byte(doc), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s in %s\n", outPath, time.Since(start).Round(time.Second))
	return nil
}

func memTotal() string {
	raw, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			var kb float64
			fmt.Sscan(f[1], &kb)
			return fmt.Sprintf("%.1f GiB", kb/1024/1024)
		}
	}
	return "?"
}
