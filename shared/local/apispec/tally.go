package apispec

import (
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Tally counts the answers checked against the document, per route and
// status, so that a test run can show that the check ran and which
// documented routes it never saw. The zero value is ready; it is safe for
// concurrent use.
type Tally struct {
	mu     sync.Mutex
	counts map[string]map[int]int // route key → status → answers
}

// Add counts one checked answer.
func (t *Tally) Add(routeKey string, status int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts == nil {
		t.counts = map[string]map[int]int{}
	}
	if t.counts[routeKey] == nil {
		t.counts[routeKey] = map[int]int{}
	}
	t.counts[routeKey][status]++
}

// Count returns the answers checked for a route.
func (t *Tally) Count(routeKey string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.counts[routeKey] {
		n += c
	}
	return n
}

// Missing returns the routes of routes with no checked answer.
func (t *Tally) Missing(routes []string) []string {
	var out []string
	for _, r := range routes {
		if t.Count(r) == 0 {
			out = append(out, r)
		}
	}
	return out
}

// Summary is one line: the answers checked in all, then per route (in the
// order of routes) how many, with the statuses seen.
func (t *Tally) Summary(routes []string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	total := 0
	parts := make([]string, 0, len(routes))
	for _, r := range routes {
		n := 0
		var statuses []int
		for st, c := range t.counts[r] {
			n += c
			statuses = append(statuses, st)
		}
		total += n
		slices.Sort(statuses)
		seen := make([]string, len(statuses))
		for i, st := range statuses {
			seen[i] = fmt.Sprint(st)
		}
		parts = append(parts, fmt.Sprintf("%s %d [%s]", r, n, strings.Join(seen, " ")))
	}
	return fmt.Sprintf("openapi.yaml: %d answers valid; %s", total, strings.Join(parts, "; "))
}
