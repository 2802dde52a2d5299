package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/operator"
	"github.com/tokenbroker/tokenbroker/shared/provider"
)

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

func (a *app) providerCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "provider", Short: "Register, list, show and delete providers (SSM)"}
	cmd.AddCommand(a.providerPut(), a.providerList(), a.providerShow(), a.providerDelete())
	return cmd
}

func (a *app) providerPut() *cobra.Command {
	var preset, kind, clientID, kmsKey string
	var scopes, sets []string
	var secretStdin bool
	cmd := &cobra.Command{
		Use:   "put NAME",
		Short: "Write a provider's config (String) and client secret (SecureString)",
		Long: `Write a provider's config and client secret under {ssm-prefix}/providers/NAME/.

The config is built from the flags and checked with the functions' own
parser before anything is written: an invalid config is refused with the
parser's message and nothing changes. The client secret is read from stdin
(--client-secret-stdin); without it, the stored secret is kept.

Fields (--set field=value, field.key=value for maps): ` + strings.Join(operator.FieldNames(), ", ") + `.
Presets: ` + strings.Join(provider.Presets(), ", ") + `.`,
		Example: `  printf %s "$GITHUB_CLIENT_SECRET" | tokenbroker provider put github --preset github --client-id Iv1.0123 --scopes repo --client-secret-stdin
  tokenbroker provider put wechat-mp --kind wechat_mp --client-id wx0123456789abcdef --client-secret-stdin < appsecret.txt
  tokenbroker provider put google --preset google --client-id 123.apps.googleusercontent.com --set authorize_params.login_hint=a@b.c --client-secret-stdin < secret`,
		Args: args("NAME"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			name := argv[0]
			if err := operator.CheckName(name); err != nil {
				return usageError{err}
			}
			doc := operator.Document{}
			if preset != "" {
				doc["preset"] = preset
			}
			if kind != "" {
				doc["kind"] = kind
			}
			if clientID != "" {
				doc["client_id"] = clientID
			}
			if cmd.Flags().Changed("scopes") {
				doc["scopes"] = scopes
			}
			for _, s := range sets {
				if err := doc.Set(s); err != nil {
					return usageError{err}
				}
			}
			// The parser first, so that a bad config costs no stdin read
			// and no AWS call.
			if _, err := provider.ParseConfig(name, doc.JSON()); err != nil {
				return err
			}
			secret := ""
			if secretStdin {
				var err error
				if secret, err = a.readSecret("client secret"); err != nil {
					return err
				}
			}
			op, err := a.operator(cmd.Context())
			if err != nil {
				return err
			}
			op.KMSKey = kmsKey
			cfg, err := op.PutProvider(cmd.Context(), name, doc.JSON(), secret)
			if err != nil {
				return err
			}
			redirect, note := a.redirectURI(cfg)
			out := map[string]any{"name": name, "kind": cfg.Kind, "config_parameter": config.ProviderConfigName(a.prefix, name),
				"secret_parameter": config.ClientSecretName(a.prefix, name), "secret_written": secret != "", "redirect_uri": redirect}
			return a.print(out, func(w io.Writer) {
				fmt.Fprintf(w, "wrote %s (String)\n", config.ProviderConfigName(a.prefix, name))
				if secret != "" {
					fmt.Fprintf(w, "wrote %s (SecureString)\n", config.ClientSecretName(a.prefix, name))
				} else {
					fmt.Fprintf(w, "kept  %s\n", config.ClientSecretName(a.prefix, name))
				}
				if redirect != "" {
					fmt.Fprintf(w, "Register this redirect URI at the provider: %s\n", redirect)
				}
				if note != "" {
					fmt.Fprintln(w, note)
				}
				fmt.Fprintln(w, "Running functions pick the change up within 5 minutes (their config cache).")
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&preset, "preset", "", "a well-known provider ("+strings.Join(provider.Presets(), ", ")+")")
	f.StringVar(&kind, "kind", "", "wechat_mp, wechat_oauth, sinacloud or oauth2 (a preset implies oauth2)")
	f.StringVar(&clientID, "client-id", "", "the client id (WeChat: the AppID)")
	f.StringSliceVar(&scopes, "scopes", nil, "scopes, comma-separated")
	f.StringArrayVar(&sets, "set", nil, "field=value for any config field (repeatable)")
	f.BoolVar(&secretStdin, "client-secret-stdin", false, "read the client secret from stdin")
	f.StringVar(&kmsKey, "kms-key", "", "KMS key id or ARN for the SecureString (default: aws/ssm)")
	return cmd
}

// redirectURI is what to register at the provider: the config's own
// redirect_uri, else {api}/callback/{name}. Machine-token providers have
// none; WeChat registers a domain rather than a URI.
func (a *app) redirectURI(cfg provider.Config) (uri, note string) {
	if cfg.Machine() {
		return "", "A machine-token provider needs no redirect URI: its one connection is \"app\"."
	}
	uri = cfg.RedirectURI
	if uri == "" {
		base := strings.TrimRight(a.api, "/")
		if base == "" {
			base = "https://{api-id}.execute-api.{region}.amazonaws.com"
			note = "(Pass --api, or set PUBLIC_BASE_URL's custom domain, to see the exact URI.)"
		}
		uri = base + "/callback/" + cfg.Name
	}
	if cfg.Kind == provider.KindWeChatOAuth {
		if u, err := url.Parse(uri); err == nil {
			note = "WeChat takes the domain, not the URI: set the web authorization domain (网页授权域名) to " + u.Host + "."
		}
	}
	return uri, note
}

func (a *app) providerList() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the providers, with any problem the functions would see",
		Args:  args(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			op, err := a.operator(cmd.Context())
			if err != nil {
				return err
			}
			infos, err := op.Providers(cmd.Context())
			if err != nil {
				return err
			}
			out := make([]map[string]any, 0, len(infos))
			for _, p := range infos {
				out = append(out, providerJSON(p))
			}
			return a.print(map[string]any{"providers": out}, func(w io.Writer) {
				tw := table(w)
				fmt.Fprintln(tw, "NAME\tKIND\tCLIENT ID\tSECRET\tPROBLEM")
				for _, p := range infos {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Name, orDash(p.Config.Kind), orDash(p.Config.ClientID), secretState(p.HasSecret), problem(p.Problem))
				}
				tw.Flush()
			})
		},
	}
}

func (a *app) providerShow() *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a provider's config as the functions see it (never the secret)",
		Args:  args("NAME"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			op, err := a.operator(cmd.Context())
			if err != nil {
				return err
			}
			p, err := op.Provider(cmd.Context(), argv[0])
			if err != nil {
				return err
			}
			redirect, _ := a.redirectURI(p.Config)
			out := providerJSON(*p)
			if p.Problem == nil {
				out["redirect_uri"] = redirect
			}
			return a.print(out, func(w io.Writer) {
				fmt.Fprintf(w, "provider       %s\n", p.Name)
				fmt.Fprintf(w, "config         %s\n", config.ProviderConfigName(a.prefix, p.Name))
				fmt.Fprintf(w, "client secret  %s (%s)\n", config.ClientSecretName(a.prefix, p.Name), secretState(p.HasSecret))
				fmt.Fprintf(w, "stored         %s\n", orDash(p.Stored))
				if p.Problem != nil {
					fmt.Fprintf(w, "problem        %s\n", p.Problem)
					return
				}
				fmt.Fprintln(w, "effective (presets and defaults applied):")
				tw := table(w)
				fields := effective(p.Config)
				keys := make([]string, 0, len(fields))
				for k := range fields {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				for _, k := range keys {
					fmt.Fprintf(tw, "  %s\t%v\n", k, fields[k])
				}
				tw.Flush()
				if redirect != "" {
					fmt.Fprintf(w, "redirect URI   %s\n", redirect)
				}
			})
		},
	}
}

func (a *app) providerDelete() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a provider's config and client secret (its connections stay in the table)",
		Args:  args("NAME"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			op, err := a.operator(cmd.Context())
			if err != nil {
				return err
			}
			if err := op.DeleteProvider(cmd.Context(), argv[0]); err != nil {
				return err
			}
			return a.print(map[string]any{"name": argv[0], "deleted": true}, func(w io.Writer) {
				fmt.Fprintf(w, "deleted the parameters of provider %s\n", argv[0])
			})
		},
	}
}

func providerJSON(p operator.ProviderInfo) map[string]any {
	out := map[string]any{"name": p.Name, "client_secret": secretState(p.HasSecret), "problem": nil, "config": nil}
	if p.Problem != nil {
		out["problem"] = p.Problem.Error()
	} else {
		out["config"] = effective(p.Config)
	}
	return out
}

// effective is the parsed config as JSON fields.
func effective(cfg provider.Config) map[string]any {
	raw, _ := json.Marshal(cfg)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return m
}

func secretState(has bool) string {
	if has {
		return "set"
	}
	return "missing"
}

func problem(err error) string {
	if err == nil {
		return "-"
	}
	return err.Error()
}

func (a *app) keysCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Create, rotate and show the token key ring (SSM)"}
	var kmsKey string
	cmd.PersistentFlags().StringVar(&kmsKey, "kms-key", "", "KMS key id or ARN for the SecureString (default: aws/ssm)")
	ring := func(r *operator.KeyRing, note string) error {
		return a.print(map[string]any{"parameter": config.KeyRingName(a.prefix), "active": r.Active, "keys": r.IDs, "version": r.Version}, func(w io.Writer) {
			if note != "" {
				fmt.Fprintln(w, note)
			}
			tw := table(w)
			fmt.Fprintln(tw, "KEY\tACTIVE")
			for _, id := range r.IDs {
				active := ""
				if id == r.Active {
					active = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\n", id, active)
			}
			tw.Flush()
		})
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "init",
		Short: "Create the key ring with one fresh key (does nothing if it exists)",
		Args:  args(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			op, err := a.operator(cmd.Context())
			if err != nil {
				return err
			}
			op.KMSKey = kmsKey
			r, created, err := op.InitKeys(cmd.Context())
			if err != nil {
				return err
			}
			note := "created " + config.KeyRingName(a.prefix) + " (SecureString)"
			if !created {
				note = config.KeyRingName(a.prefix) + " already exists; nothing changed (rotate with: tokenbroker keys rotate)"
			}
			return ring(r, note)
		},
	}, &cobra.Command{
		Use:   "rotate",
		Short: "Add a fresh key and make it active; old keys stay so old values still open",
		Args:  args(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			op, err := a.operator(cmd.Context())
			if err != nil {
				return err
			}
			op.KMSKey = kmsKey
			r, err := op.RotateKeys(cmd.Context())
			if err != nil {
				return err
			}
			return ring(r, "rotated "+config.KeyRingName(a.prefix)+": new values are sealed under "+r.Active+
				" once the functions reload (within 5 minutes); keep the old keys while values sealed under them remain")
		},
	}, &cobra.Command{
		Use:   "show",
		Short: "Show the key ids and which one is active (never key material)",
		Args:  args(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			op, err := a.operator(cmd.Context())
			if err != nil {
				return err
			}
			r, err := op.Keys(cmd.Context())
			if err != nil {
				return err
			}
			return ring(r, "")
		},
	})
	return cmd
}
