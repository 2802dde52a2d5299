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
	Conditions map[string]yaml.Node `yaml:"Conditions"`
	Resources  map[string]Resource  `yaml:"Resources"`
	Globals    struct {
		Function yaml.Node `yaml:"Function"`
	} `yaml:"Globals"`
}

// Parameter is one entry of Parameters; Default is as written.
type Parameter struct {
	Type          string   `yaml:"Type"`
	Default       string   `yaml:"Default"`
	MinValue      *float64 `yaml:"MinValue"`
	MaxValue      *float64 `yaml:"MaxValue"`
	AllowedValues []string `yaml:"AllowedValues"`
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

// Text renders a node the way a test compares it: a scalar as itself,
// `!Sub "s"` as s, `!Ref X` as ${X} and `!GetAtt A.B` as ${A.B} (both
// also in their long forms). Anything else is not text.
func Text(n *yaml.Node) (string, bool) {
	if n == nil {
		return "", false
	}
	if s, ok := Sub(n); ok {
		return s, true
	}
	if r, ok := Ref(n); ok {
		return "${" + r + "}", true
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!GetAtt" {
		return "${" + n.Value + "}", true
	}
	if v := Lookup(n, "Fn::GetAtt"); v != nil && len(n.Content) == 2 {
		if v.Kind == yaml.SequenceNode && len(v.Content) == 2 {
			return "${" + v.Content[0].Value + "." + v.Content[1].Value + "}", true
		}
		if v.Kind == yaml.ScalarNode {
			return "${" + v.Value + "}", true
		}
	}
	if n.Kind == yaml.ScalarNode && (n.Tag == "" || n.Tag == "!!str") {
		return n.Value, true
	}
	return "", false
}

// Statement is one inline IAM statement of a function's Policies, its
// intrinsics rendered with Text.
type Statement struct {
	Sid       string
	Effect    string
	Actions   []string
	Resources []string
	// Condition maps an operator (StringLike, ForAllValues:StringLike, …)
	// to its keys and their values.
	Condition map[string]map[string][]string
	// If is the template condition of a statement written as
	// `!If [Cond, {statement}, !Ref AWS::NoValue]`; empty when the
	// statement is always there.
	If string
}

// PolicyStatements returns the statements of a function's Policies.
// Anything there that is not an inline `Statement:` document (a SAM policy
// template, a managed policy name) is an error: its grants could not be
// read, so they could not be checked.
func (t *Template) PolicyStatements(fn string) ([]Statement, error) {
	r, ok := t.Resources[fn]
	if !ok || r.Type != "AWS::Serverless::Function" {
		return nil, fmt.Errorf("samtemplate: no AWS::Serverless::Function %s", fn)
	}
	policies := r.Property("Policies")
	if policies == nil {
		return nil, nil
	}
	if policies.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("samtemplate: %s Policies is not a list of statement documents", fn)
	}
	var out []Statement
	for _, doc := range policies.Content {
		list := Lookup(doc, "Statement")
		if list == nil || list.Kind != yaml.SequenceNode || len(doc.Content) != 2 {
			return nil, fmt.Errorf("samtemplate: %s: a policy that is not an inline Statement document (line %d)", fn, doc.Line)
		}
		for _, n := range list.Content {
			cond := ""
			if n.Tag == "!If" {
				if len(n.Content) != 3 {
					return nil, fmt.Errorf("samtemplate: %s: malformed !If statement (line %d)", fn, n.Line)
				}
				if ref, ok := Ref(n.Content[2]); !ok || ref != "AWS::NoValue" {
					return nil, fmt.Errorf("samtemplate: %s: !If statement whose else branch is not AWS::NoValue (line %d)", fn, n.Line)
				}
				cond, n = n.Content[0].Value, n.Content[1]
			}
			st, err := statement(n)
			if err != nil {
				return nil, fmt.Errorf("samtemplate: %s: %w (line %d)", fn, err, n.Line)
			}
			st.If = cond
			out = append(out, st)
		}
	}
	return out, nil
}

func statement(n *yaml.Node) (Statement, error) {
	if n.Kind != yaml.MappingNode {
		return Statement{}, fmt.Errorf("a statement is not a mapping")
	}
	st := Statement{Condition: map[string]map[string][]string{}}
	texts := func(key string) ([]string, error) {
		v := Lookup(n, key)
		if v == nil {
			return nil, nil
		}
		items := []*yaml.Node{v}
		if v.Kind == yaml.SequenceNode {
			items = v.Content
		}
		var out []string
		for _, it := range items {
			s, ok := Text(it)
			if !ok {
				return nil, fmt.Errorf("%s holds something that is not text", key)
			}
			out = append(out, s)
		}
		return out, nil
	}
	var err error
	if st.Actions, err = texts("Action"); err != nil {
		return st, err
	}
	if st.Resources, err = texts("Resource"); err != nil {
		return st, err
	}
	if v := Lookup(n, "Sid"); v != nil {
		st.Sid = v.Value
	}
	if v := Lookup(n, "Effect"); v != nil {
		st.Effect = v.Value
	}
	for _, key := range []string{"NotAction", "NotResource", "Principal", "NotPrincipal"} {
		if Lookup(n, key) != nil {
			return st, fmt.Errorf("%s is not expected in a function's statement", key)
		}
	}
	if c := Lookup(n, "Condition"); c != nil {
		if c.Kind != yaml.MappingNode {
			return st, fmt.Errorf("the Condition is not a mapping")
		}
		for i := 0; i+1 < len(c.Content); i += 2 {
			op, keys := c.Content[i].Value, c.Content[i+1]
			if keys.Kind != yaml.MappingNode {
				return st, fmt.Errorf("condition %s is not a mapping", op)
			}
			st.Condition[op] = map[string][]string{}
			for j := 0; j+1 < len(keys.Content); j += 2 {
				vals := keys.Content[j+1]
				items := []*yaml.Node{vals}
				if vals.Kind == yaml.SequenceNode {
					items = vals.Content
				}
				for _, it := range items {
					s, ok := Text(it)
					if !ok {
						return st, fmt.Errorf("condition %s %s holds something that is not text", op, keys.Content[j].Value)
					}
					st.Condition[op][keys.Content[j].Value] = append(st.Condition[op][keys.Content[j].Value], s)
				}
			}
		}
	}
	return st, nil
}
