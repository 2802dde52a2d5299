package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// userHZ is the kernel's clock tick for /proc's CPU times (USER_HZ, 100 on
// every Linux this runs on).
const userHZ = 100.0

// Components of the fan-out bench whose CPU time is counted apart.
const (
	cpuDynamo  = "DynamoDB Local"
	cpuMoto    = "moto (SQS)"
	cpuWorkers = "worker instances"
	cpuTick    = "refresher (the tick)"
	cpuBench   = "bench and stand-in processes (provider emulator, SQS poller, guard proxies)"
	cpuOther   = "rest of the machine"
)

var cpuComponents = []string{cpuWorkers, cpuDynamo, cpuMoto, cpuBench, cpuTick, cpuOther}

// cpuSample is the CPU time, in seconds, each component had used when it
// was taken, with the machine's busy total from /proc/stat.
type cpuSample map[string]float64

// sampleCPU reads every process's user and system time from /proc and
// files it under its component: a worker or refresher bootstrap by its
// executable, DynamoDB Local and moto by their command lines, the rest of
// this bench's own process tree (this process, the stand-ins and their
// guard proxies) together. What is left of the machine's busy time is "rest of
// the machine" (other work on a shared machine, and processes that exited
// between samples).
func sampleCPU(bootstraps map[string]string) cpuSample {
	type proc struct {
		ppid int
		used float64
		exe  string
		cmd  string
	}
	procs := map[int]proc{}
	entries, _ := os.ReadDir("/proc")
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", ent.Name())
		raw, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue
		}
		// The command name is in parentheses and may hold spaces: the
		// fields that follow start after the last ')'.
		text := string(raw)
		end := strings.LastIndexByte(text, ')')
		if end < 0 {
			continue
		}
		fields := strings.Fields(text[end+1:])
		if len(fields) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		utime, _ := strconv.ParseFloat(fields[11], 64)
		stime, _ := strconv.ParseFloat(fields[12], 64)
		exe, _ := os.Readlink(filepath.Join(dir, "exe"))
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		procs[pid] = proc{ppid: ppid, used: (utime + stime) / userHZ, exe: exe, cmd: string(cmdline)}
	}
	// Only this bench's own processes count: those under the stand-ins
	// that started it (make bench), or under this process. Another
	// DynamoDB Local on the machine is the rest of the machine.
	root := os.Getpid()
	for p := os.Getppid(); p > 1; p = procs[p].ppid {
		if filepath.Base(procs[p].exe) == "standins" {
			root = p
		}
		if _, ok := procs[p]; !ok {
			break
		}
	}
	ours := func(pid int) bool {
		for hops := 0; pid > 1 && hops < 64; hops++ {
			if pid == root {
				return true
			}
			pid = procs[pid].ppid
		}
		return false
	}
	s := cpuSample{}
	for pid, p := range procs {
		if !ours(pid) {
			continue
		}
		switch {
		case p.exe == bootstraps["worker"]:
			s[cpuWorkers] += p.used
		case p.exe == bootstraps["refresher"]:
			s[cpuTick] += p.used
		case strings.Contains(p.cmd, "DynamoDBLocal"):
			s[cpuDynamo] += p.used
		case strings.Contains(p.cmd, "moto"):
			s[cpuMoto] += p.used
		default: // this process, the stand-ins and go run
			s[cpuBench] += p.used
		}
	}
	s["machine"] = cpuBusyTicks() / userHZ
	return s
}

// cpuUse is what each component used between two samples, in seconds,
// with the rest of the machine's busy time under cpuOther.
func cpuUse(before, after cpuSample) map[string]float64 {
	use := map[string]float64{}
	var known float64
	for _, c := range cpuComponents {
		if c == cpuOther {
			continue
		}
		d := after[c] - before[c]
		if d < 0 { // processes that ended between the samples
			d = 0
		}
		use[c] = d
		known += d
	}
	use[cpuOther] = max(0, after["machine"]-before["machine"]-known)
	use["machine"] = after["machine"] - before["machine"]
	return use
}
