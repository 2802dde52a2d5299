package main

import "testing"

func TestSpliceReplacesOnlyTheRerunStep(t *testing.T) {
	rep := &report{}
	rep.step = "b"
	rep.addSub("B", "new b")
	block := rep.block("b")
	full := "# head\n\n" + beginMarker("a") + "## A\n\nold a\n\n" + endMarker("a") + "\n" + beginMarker("b") + "### B\n\nold b\n\n" + endMarker("b") + "\n" + beginMarker("c") + "## C\n\nold c\n\n" + endMarker("c")
	for _, tc := range []struct {
		name, doc string
		earlier   []string
		want      string
	}{
		{"in place", full, []string{"a"},
			"# head\n\n" + beginMarker("a") + "## A\n\nold a\n\n" + endMarker("a") + "\n" + block + "\n" + beginMarker("c") + "## C\n\nold c\n\n" + endMarker("c")},
		{"after the step before it", "# head\n\n" + beginMarker("a") + "## A\n\nold a\n\n" + endMarker("a") + "\n" + beginMarker("c") + "## C\n\nold c\n\n" + endMarker("c"), []string{"a"},
			"# head\n\n" + beginMarker("a") + "## A\n\nold a\n\n" + endMarker("a") + "\n" + block + "\n" + beginMarker("c") + "## C\n\nold c\n\n" + endMarker("c")},
		{"at the end of a file without markers", "# head\n\n## A\n", []string{"a"}, "# head\n\n## A\n\n" + block},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := splice(tc.doc, "b", block, tc.earlier); got != tc.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
	if want := "<!-- bench:b -->\n### B\n\nnew b\n\n<!-- /bench:b -->\n"; block != want {
		t.Fatalf("block %q, want %q", block, want)
	}
}
