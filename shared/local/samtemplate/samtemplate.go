// Package samtemplate reads template.yaml the way the local tools and the
// tests need it: resources by logical id, parameters, each function's
// settings with SAM's Globals applied, and CloudFormation's short-form
// intrinsics (!Ref, !Sub, !GetAtt, !If) kept as tagged YAML nodes rather
// than resolved, so a test can see exactly what the template says.
package samtemplate

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// Template is a parsed SAM template.
type Template struct {
	Parameters map[string]Parameter `yaml:"Parameters"`
	Resources  map[string]Resource  `yaml:"Resources"`
	Globals    struct {
		Function yaml.Node `yaml:"Function"`
	} `yaml:"Globals"`
}

// Parameter is one entry of Parameters; Default is as written.
type Parameter struct {
	Type     string   `yaml:"Type"`
	Default  string   `yaml:"Default"`
	MinValue *float64 `yaml:"MinValue"`
	MaxValue *float64 `yaml:"MaxValue"`
}

// Resource is one entry of Resources.
type Resource struct {
	Type       string    `yaml:"Type"`
	Properties yaml.Node `yaml:"Properties"`
}

// Load parses the template at path.
func Load(path string) (*Template, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("samtemplate: %w", err)
	}
	var t Template
	if err := yaml.Unmarshal(raw, &t); err != nil {
		return nil, fmt.Errorf("samtemplate: parse %s: %w", path, err)
	}
	return &t, nil
}

// OfType returns the logical ids of the resources of type typ, sorted.
func (t *Template) OfType(typ string) []string {
	var ids []string
	for id, r := range t.Resources {
		if r.Type == typ {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// Property returns the node at path under r's Properties, or nil.
func (r Resource) Property(path ...string) *yaml.Node {
	return Lookup(&r.Properties, path...)
}

// Lookup follows mapping keys from n; nil when one is missing.
func Lookup(n *yaml.Node, path ...string) *yaml.Node {
	for _, key := range path {
		if n == nil || n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				next = n.Content[i+1]
			}
		}
		n = next
	}
	return n
}

// FunctionSetting returns a function's property, its own or else the one
// in Globals.Function, as SAM applies it; nil when neither sets it.
func (t *Template) FunctionSetting(id, name string) (*yaml.Node, error) {
	r, ok := t.Resources[id]
	if !ok || r.Type != "AWS::Serverless::Function" {
		return nil, fmt.Errorf("samtemplate: no AWS::Serverless::Function %s", id)
	}
	if n := r.Property(name); n != nil {
		return n, nil
	}
	return Lookup(&t.Globals.Function, name), nil
}

// FunctionTimeout is a function's Timeout (Lambda's default of 3 s when
// the template sets none).
func (t *Template) FunctionTimeout(id string) (time.Duration, error) {
	n, err := t.FunctionSetting(id, "Timeout")
	if err != nil || n == nil {
		return 3 * time.Second, err
	}
	s, err := strconv.Atoi(n.Value)
	if err != nil || n.Kind != yaml.ScalarNode {
		return 0, fmt.Errorf("samtemplate: %s Timeout %q is not a number of seconds", id, n.Value)
	}
	return time.Duration(s) * time.Second, nil
}

// Ref returns what a `!Ref X` or `{Ref: X}` node names.
func Ref(n *yaml.Node) (string, bool) {
	if n == nil {
		return "", false
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!Ref" {
		return n.Value, true
	}
	if v := Lookup(n, "Ref"); v != nil && v.Kind == yaml.ScalarNode && len(n.Content) == 2 {
		return v.Value, true
	}
	return "", false
}

// Sub returns the template string of a `!Sub "…"` or `{Fn::Sub: "…"}`
// node (the one-argument form).
func Sub(n *yaml.Node) (string, bool) {
	if n == nil {
		return "", false
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!Sub" {
		return n.Value, true
	}
	if v := Lookup(n, "Fn::Sub"); v != nil && v.Kind == yaml.ScalarNode && len(n.Content) == 2 {
		return v.Value, true
	}
	return "", false
}

// Scalars returns every scalar value under n, depth first: for reading
// things like every action a policy grants, whatever !If wraps them.
func Scalars(n *yaml.Node) []string {
	if n == nil {
		return nil
	}
	if n.Kind == yaml.ScalarNode {
		return []string{n.Value}
	}
	var out []string
	for _, c := range n.Content {
		out = append(out, Scalars(c)...)
	}
	return out
}
