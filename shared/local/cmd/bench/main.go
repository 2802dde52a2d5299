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
	"strings"
	"testing"
	"time"

	"tokenbroker/shared/local/devstack"
	"tokenbroker/shared/local/localaws"
)

func main() {
	testing.Init()
	out := flag.String("out", "BENCHMARKS.md", "report to write")
	quick := flag.Bool("quick", false, "smaller sizes, for trying the harness")
	only := flag.String("only", "", "run only the benchmark whose name contains this")
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

type report struct {
	sections []string
}

func (r *report) add(title, body string) {
	r.sections = append(r.sections, "## "+title+"\n\n"+strings.TrimSpace(body)+"\n")
	fmt.Printf("\n## %s\n%s\n", title, body)
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
		{"capacity", benchCapacity},
	}
	for _, s := range steps {
		if only != "" && !strings.Contains(s.name, only) {
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: %s…\n", s.name)
		if err := s.fn(ctx, env, rep, quick); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	header := fmt.Sprintf(`# Benchmarks

Regenerate with `+"`make bench`"+` (it rewrites this file; about %s on this machine).
Everything runs against DynamoDB Local and the project's provider emulators on
loopback. Ratios measured in the same run are the headline; absolute times
are context, because these machines are shared and noisy.

| | |
|---|---|
| date | %s |
| machine | %d cores (nproc), %s memory, %s/%s |
| Go | %s |
| command | `+"`make bench`"+` (`+"`go run ./shared/local/cmd/standins -- go run ./shared/local/cmd/bench`"+`) |
`, time.Since(start).Round(time.Second), time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), memTotal(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	doc := header + "\n" + strings.Join(rep.sections, "\n")
	if !filepath.IsAbs(outPath) {
		outPath = filepath.Join(root, outPath)
	}
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
