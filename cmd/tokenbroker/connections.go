package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/mdp/qrterminal/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tokenbroker/tokenbroker/shared/client"
)

// metadataFlag parses repeated --metadata k=v.
func metadataFlag(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, usagef("--metadata %q: want key=value", p)
		}
		m[k] = v
	}
	return m, nil
}

func connectionJSON(c *client.Connection) map[string]any {
	return map[string]any{"provider": c.Provider, "connection": c.Connection, "status": c.Status,
		"expires_at": rfc3339(c.ExpiresAt), "refreshed_at": rfc3339(c.RefreshedAt), "last_error": c.LastError, "metadata": c.Metadata}
}

func printConnection(w io.Writer, c *client.Connection) {
	tw := table(w)
	fmt.Fprintf(tw, "provider\t%s\n", c.Provider)
	fmt.Fprintf(tw, "connection\t%s\n", c.Connection)
	fmt.Fprintf(tw, "status\t%s\n", c.Status)
	fmt.Fprintf(tw, "expires at\t%s\n", human(c.ExpiresAt))
	fmt.Fprintf(tw, "refreshed at\t%s\n", human(c.RefreshedAt))
	fmt.Fprintf(tw, "last error\t%s\n", orDash(c.LastError))
	fmt.Fprintf(tw, "metadata\t%s\n", labels(c.Metadata))
	tw.Flush()
}

func labels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// fingerprint is the first 8 hex of a token's SHA-256, to tell tokens
// apart without showing them.
func fingerprint(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:4])
}

func (a *app) connectCommand() *cobra.Command {
	var returnTo string
	var meta, scopes []string
	var confirm, qr bool
	cmd := &cobra.Command{
		Use:   "connect PROVIDER CONNECTION",
		Short: "Start an authorization and print the URL to open (a QR code for WeChat)",
		Long: `Start an authorization of PROVIDER for CONNECTION and print the URL the
user must open. When the URL is WeChat's (it ends in #wechat_redirect) and
stdout is a terminal, a QR code is printed too, for a phone to scan;
--qr forces it on or off.`,
		Example: `  tokenbroker connect github alice
  tokenbroker connect wechat-web alice --metadata tenant=acme --return-to https://app.example.com/connected --confirm`,
		Args: args("PROVIDER", "CONNECTION"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			md, err := metadataFlag(meta)
			if err != nil {
				return err
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			auth, err := c.Authorize(cmd.Context(), argv[0], argv[1], client.AuthorizeRequest{Scopes: scopes, ReturnTo: returnTo, Metadata: md, Confirm: confirm})
			if err != nil {
				return err
			}
			showQR := strings.HasSuffix(auth.URL, "#wechat_redirect") && isTerminal(a.stdout)
			if cmd.Flags().Changed("qr") {
				showQR = qr
			}
			return a.print(map[string]any{"provider": argv[0], "connection": argv[1], "authorize_url": auth.URL,
				"state_expires_at": rfc3339(auth.StateExpiresAt)}, func(w io.Writer) {
				fmt.Fprintf(w, "Open this URL to connect %s / %s (valid until %s):\n\n  %s\n\n", argv[0], argv[1], human(auth.StateExpiresAt), auth.URL)
				if showQR {
					qrterminal.GenerateWithConfig(auth.URL, qrterminal.Config{Level: qrterminal.L, Writer: w, HalfBlocks: true,
						BlackChar: qrterminal.BLACK_BLACK, WhiteBlackChar: qrterminal.WHITE_BLACK, WhiteChar: qrterminal.WHITE_WHITE,
						BlackWhiteChar: qrterminal.BLACK_WHITE, QuietZone: 2})
				}
				if confirm {
					fmt.Fprintln(w, "Confirmed flow: your app's return_to page receives connect_id and must confirm it.")
				} else {
					fmt.Fprintf(w, "Then: tokenbroker status %s %s\n", argv[0], argv[1])
				}
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&returnTo, "return-to", "", "where to send the user back (its origin must be in RETURN_TO_ALLOWLIST)")
	f.StringArrayVar(&meta, "metadata", nil, "key=value label of the connection (repeatable; never a secret)")
	f.StringSliceVar(&scopes, "scopes", nil, "scopes instead of the provider's, comma-separated")
	f.BoolVar(&confirm, "confirm", false, "a confirmed flow: the app confirms the parked grant (needs --return-to)")
	f.BoolVar(&qr, "qr", false, "print a QR code of the URL (default: for WeChat URLs on a terminal)")
	return cmd
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (a *app) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status PROVIDER CONNECTION",
		Short: "Show a connection's status (no secrets)",
		Args:  args("PROVIDER", "CONNECTION"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			conn, err := c.Status(cmd.Context(), argv[0], argv[1])
			if err != nil {
				return err
			}
			return a.print(connectionJSON(conn), func(w io.Writer) { printConnection(w, conn) })
		},
	}
}

func (a *app) listCommand() *cobra.Command {
	var status string
	var pageSize int
	cmd := &cobra.Command{
		Use:     "list PROVIDER",
		Short:   "List a provider's connections (--status needs_reauth: who must re-authorize)",
		Example: "  tokenbroker list github --status needs_reauth",
		Args:    args("PROVIDER"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			if status != "" && status != "active" && status != "needs_reauth" {
				return usagef("--status must be active or needs_reauth")
			}
			if pageSize < 0 || pageSize > 100 {
				return usagef("--page-size must be 1 to 100")
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			var conns []*client.Connection
			for conn, err := range c.List(cmd.Context(), argv[0], client.ListOptions{Status: status, PageSize: pageSize}) {
				if err != nil {
					return err
				}
				conns = append(conns, conn)
			}
			items := make([]map[string]any, 0, len(conns))
			for _, conn := range conns {
				item := connectionJSON(conn)
				delete(item, "provider")
				items = append(items, item)
			}
			return a.print(map[string]any{"provider": argv[0], "connections": items}, func(w io.Writer) {
				tw := table(w)
				fmt.Fprintln(tw, "CONNECTION\tSTATUS\tEXPIRES AT\tREFRESHED AT\tLAST ERROR\tMETADATA")
				for _, conn := range conns {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", conn.Connection, conn.Status, human(conn.ExpiresAt), human(conn.RefreshedAt),
						orDash(conn.LastError), labels(conn.Metadata))
				}
				tw.Flush()
				fmt.Fprintf(w, "%d connection(s)\n", len(conns))
			})
		},
	}
	cmd.Flags().StringVar(&status, "status", "", "only active or needs_reauth connections")
	cmd.Flags().IntVar(&pageSize, "page-size", 0, "connections per request, 1 to 100 (default: the broker's)")
	return cmd
}

func tokenJSON(t *client.Token) map[string]any {
	extra := t.Extra
	if extra == nil {
		extra = map[string]string{}
	}
	return map[string]any{"provider": t.Provider, "connection": t.Connection, "access_token": t.AccessToken,
		"token_type": t.TokenType, "expires_at": rfc3339(t.ExpiresAt), "scope": t.Scope, "extra": extra}
}

func (a *app) tokenCommand() *cobra.Command {
	var minTTL time.Duration
	var quiet bool
	cmd := &cobra.Command{
		Use:   "token PROVIDER CONNECTION",
		Short: "Print a valid access token (the one command that prints a secret)",
		Example: `  tokenbroker token github alice
  curl -H "Authorization: Bearer $(tokenbroker token github alice -q)" https://api.github.com/user`,
		Args: args("PROVIDER", "CONNECTION"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			if minTTL < 0 || minTTL > 24*time.Hour {
				return usagef("--min-ttl must be 0 to 24h")
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			tok, err := c.Token(cmd.Context(), argv[0], argv[1], minTTL)
			if err != nil {
				return err
			}
			if quiet {
				_, err := fmt.Fprintln(a.stdout, tok.AccessToken)
				return err
			}
			return a.print(tokenJSON(tok), func(w io.Writer) {
				tw := table(w)
				fmt.Fprintf(tw, "access token\t%s\n", tok.AccessToken)
				fmt.Fprintf(tw, "token type\t%s\n", orDash(tok.TokenType))
				fmt.Fprintf(tw, "expires at\t%s\n", human(tok.ExpiresAt))
				fmt.Fprintf(tw, "scope\t%s\n", orDash(tok.Scope))
				fmt.Fprintf(tw, "extra\t%s\n", labels(tok.Extra))
				tw.Flush()
			})
		},
	}
	cmd.Flags().DurationVar(&minTTL, "min-ttl", time.Minute, "the token must stay valid at least this long")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print the access token only")
	return cmd
}

func (a *app) refreshCommand() *cobra.Command {
	var rejectedStdin bool
	cmd := &cobra.Command{
		Use:   "refresh PROVIDER CONNECTION",
		Short: "Refresh a connection's token now (prints its fingerprint, not the token)",
		Long: `Refresh a connection's token now. With --rejected-token-stdin, stdin names
the access token an API rejected: if the broker already holds another one,
it answers that one without asking the provider.`,
		Args: args("PROVIDER", "CONNECTION"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			rejected := ""
			if rejectedStdin {
				var err error
				if rejected, err = a.readSecret("rejected access token"); err != nil {
					return err
				}
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			tok, err := c.Refresh(cmd.Context(), argv[0], argv[1], rejected)
			if err != nil {
				return err
			}
			out := tokenJSON(tok)
			delete(out, "access_token")
			out["access_token_sha256_prefix"] = fingerprint(tok.AccessToken)
			return a.print(out, func(w io.Writer) {
				tw := table(w)
				fmt.Fprintf(tw, "refreshed\t%s / %s\n", tok.Provider, tok.Connection)
				fmt.Fprintf(tw, "token\tsha256:%s… (tokenbroker token %s %s prints it)\n", fingerprint(tok.AccessToken), argv[0], argv[1])
				fmt.Fprintf(tw, "expires at\t%s\n", human(tok.ExpiresAt))
				tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&rejectedStdin, "rejected-token-stdin", false, "read the access token an API rejected from stdin")
	return cmd
}

func (a *app) deleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete PROVIDER CONNECTION",
		Short: "Forget a connection (revoking it at the provider where it can)",
		Args:  args("PROVIDER", "CONNECTION"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			if err := c.Delete(cmd.Context(), argv[0], argv[1]); err != nil {
				return err
			}
			return a.print(map[string]any{"provider": argv[0], "connection": argv[1], "deleted": true}, func(w io.Writer) {
				fmt.Fprintf(w, "deleted %s / %s\n", argv[0], argv[1])
			})
		},
	}
}

func (a *app) importCommand() *cobra.Command {
	var refreshStdin, accessStdin, replace bool
	var expiresAt, tokenType, scope string
	var meta []string
	cmd := &cobra.Command{
		Use:   "import PROVIDER CONNECTION --refresh-token-stdin",
		Short: "Import a grant obtained elsewhere (tokens from stdin)",
		Long: `Import a grant obtained elsewhere. The refresh token is read from stdin
(--refresh-token-stdin). With --access-token-stdin as well, stdin holds the
access token on its first line and the refresh token on its second; with
--access-token-stdin alone, only the access token.`,
		Example: `  tokenbroker import github alice --refresh-token-stdin --metadata tenant=acme < refresh_token.txt`,
		Args:    args("PROVIDER", "CONNECTION"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			if !refreshStdin && !accessStdin {
				return usagef("give the tokens on stdin: --refresh-token-stdin and/or --access-token-stdin")
			}
			md, err := metadataFlag(meta)
			if err != nil {
				return err
			}
			g := client.Grant{TokenType: tokenType, Scope: scope, Metadata: md, Replace: replace}
			if expiresAt != "" {
				if g.ExpiresAt, err = time.Parse(time.RFC3339, expiresAt); err != nil {
					return usagef("--expires-at must be RFC 3339, like 2026-01-02T15:04:05Z")
				}
			}
			what := "refresh token"
			if accessStdin {
				what = "access token"
				if refreshStdin {
					what = "access and refresh tokens"
				}
			}
			in, err := a.readSecret(what)
			if err != nil {
				return err
			}
			switch {
			case accessStdin && refreshStdin:
				access, refresh, ok := strings.Cut(in, "\n")
				g.AccessToken, g.RefreshToken = strings.TrimSpace(access), strings.TrimSpace(refresh)
				if !ok || g.AccessToken == "" || g.RefreshToken == "" {
					return usagef("stdin must hold the access token, a newline, then the refresh token")
				}
			case accessStdin:
				g.AccessToken = in
			default:
				g.RefreshToken = in
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			conn, created, err := c.Import(cmd.Context(), argv[0], argv[1], g)
			if err != nil {
				return err
			}
			out := connectionJSON(conn)
			out["created"] = created
			return a.print(out, func(w io.Writer) {
				if created {
					fmt.Fprintf(w, "imported %s / %s (created)\n", conn.Provider, conn.Connection)
				} else {
					fmt.Fprintf(w, "imported %s / %s (replaced the connection)\n", conn.Provider, conn.Connection)
				}
				printConnection(w, conn)
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&refreshStdin, "refresh-token-stdin", false, "read the refresh token from stdin")
	f.BoolVar(&accessStdin, "access-token-stdin", false, "read the access token from stdin (first line, when both)")
	f.StringVar(&expiresAt, "expires-at", "", "when the access token expires, RFC 3339")
	f.StringVar(&tokenType, "token-type", "", "the token type (default Bearer)")
	f.StringVar(&scope, "scope", "", "the granted scope")
	f.StringArrayVar(&meta, "metadata", nil, "key=value label of the connection (repeatable; never a secret)")
	f.BoolVar(&replace, "replace", false, "replace an existing connection (without it, 409 conflict)")
	return cmd
}
