package samtemplate_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/local/samtemplate"
)

func TestReadsTheProjectTemplate(t *testing.T) {
	root, err := localaws.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	tpl, err := samtemplate.Load(filepath.Join(root, "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	fns := tpl.OfType("AWS::Serverless::Function")
	if len(fns) != 5 {
		t.Fatalf("functions %v", fns)
	}
	for _, tc := range []struct {
		fn   string
		want time.Duration
	}{{"RefresherFunction", 55 * time.Second}, {"TokenFunction", 30 * time.Second}} {
		if got, err := tpl.FunctionTimeout(tc.fn); err != nil || got != tc.want {
			t.Errorf("%s timeout %v, %v; want %v (own setting, else Globals)", tc.fn, got, err, tc.want)
		}
	}
	if _, err := tpl.FunctionTimeout("TokenTable"); err == nil {
		t.Error("a table has no function timeout")
	}
	p := tpl.Parameters["RefreshConcurrency"]
	if p.Default != "8" || p.MaxValue == nil || *p.MaxValue < 8 {
		t.Errorf("RefreshConcurrency %+v", p)
	}
	env, _ := tpl.FunctionSetting("TokenFunction", "Environment")
	if ref, ok := samtemplate.Ref(samtemplate.Lookup(env, "Variables", "TABLE_NAME")); !ok || ref != "TokenTable" {
		t.Errorf("TABLE_NAME ref %q %v", ref, ok)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
