// Package operator is what an operator does to a deployment's SSM
// parameters: register providers and make and rotate the token key ring.
// It writes exactly the layout shared/config reads, and it validates a
// provider document with the functions' own parser (provider.ParseConfig)
// and a key ring with sealing.ParseRing before anything is written, so
// what it accepts is what the functions accept. The tokenbroker CLI and
// make dev's seeding both go through it.
//
// Nothing here returns or logs a client secret or key material: errors
// name parameters, never values.
package operator

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/sealing"
)

// SSM is the part of the SDK client the operator uses; *ssm.Client
// satisfies it.
type SSM interface {
	PutParameter(ctx context.Context, in *ssm.PutParameterInput, optFns ...func(*ssm.Options)) (*ssm.PutParameterOutput, error)
	GetParameter(ctx context.Context, in *ssm.GetParameterInput, optFns ...func(*ssm.Options)) (*ssm.GetParameterOutput, error)
	GetParameters(ctx context.Context, in *ssm.GetParametersInput, optFns ...func(*ssm.Options)) (*ssm.GetParametersOutput, error)
	DescribeParameters(ctx context.Context, in *ssm.DescribeParametersInput, optFns ...func(*ssm.Options)) (*ssm.DescribeParametersOutput, error)
	DeleteParameters(ctx context.Context, in *ssm.DeleteParametersInput, optFns ...func(*ssm.Options)) (*ssm.DeleteParametersOutput, error)
}

// Operator acts on the parameters under one prefix.
type Operator struct {
	SSM SSM
	// Prefix is the SSM root (config.DefaultPrefix when empty).
	Prefix string
	// KMSKey, when set, encrypts the SecureStrings it writes (client
	// secrets, the key ring) instead of the AWS-managed aws/ssm key.
	KMSKey string
	// Rand is where keys come from; crypto/rand when nil.
	Rand io.Reader
}

// ErrNotFound is returned (wrapped) for a provider or key ring that does
// not exist.
var ErrNotFound = errors.New("operator: not found")

var nameRule = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// CheckName applies DESIGN.md's rule for provider names.
func CheckName(name string) error {
	if !nameRule.MatchString(name) {
		return fmt.Errorf("provider name %q must be 1 to 128 of A-Z a-z 0-9 . _ -", name)
	}
	return nil
}

// PutProvider validates doc (a provider JSON document) with the
// functions' parser and then writes it as name's config (String) and,
// when secret is not empty, secret as its client secret (SecureString).
// An empty secret keeps the one already stored, and is refused when
// there is none. Nothing is written when anything is refused. It returns
// the config as the functions will see it (presets and defaults applied).
func (o *Operator) PutProvider(ctx context.Context, name string, doc []byte, secret string) (provider.Config, error) {
	if err := CheckName(name); err != nil {
		return provider.Config{}, err
	}
	cfg, err := provider.ParseConfig(name, doc)
	if err != nil {
		return provider.Config{}, err
	}
	secret = strings.TrimSpace(secret)
	secretName := config.ClientSecretName(o.Prefix, name)
	if secret == "" {
		found, err := o.exists(ctx, secretName)
		if err != nil {
			return provider.Config{}, err
		}
		if !found {
			return provider.Config{}, fmt.Errorf("%s does not exist yet: give the client secret on stdin (--client-secret-stdin)", secretName)
		}
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, doc); err != nil {
		return provider.Config{}, fmt.Errorf("provider: %s: provider JSON: %w", name, err)
	}
	// The secret first: a config without its secret is a problem the
	// functions report, a secret without its config is invisible.
	if secret != "" {
		if err := o.put(ctx, secretName, secret, types.ParameterTypeSecureString, true); err != nil {
			return provider.Config{}, err
		}
	}
	if err := o.put(ctx, config.ProviderConfigName(o.Prefix, name), compact.String(), types.ParameterTypeString, true); err != nil {
		return provider.Config{}, err
	}
	return cfg, nil
}

// ProviderInfo is what Providers and Provider report of one provider.
type ProviderInfo struct {
	Name string
	// Stored is the config document as stored ("" when missing).
	Stored string
	// Config is the parsed config; valid only when Problem is nil.
	Config provider.Config
	// HasSecret reports that the client secret parameter exists; its
	// value is never read.
	HasSecret bool
	// Problem is why the functions cannot use the provider, if they
	// cannot: a missing or empty parameter, or the parser's message.
	Problem error
}

// Providers lists every provider under the prefix, sorted by name,
// reading configs and listing secrets by name only.
func (o *Operator) Providers(ctx context.Context) ([]ProviderInfo, error) {
	names, err := o.list(ctx)
	if err != nil {
		return nil, err
	}
	found := map[string]*ProviderInfo{}
	var configs []string
	for _, n := range names {
		prov, leaf, ok := config.ProviderParameter(o.Prefix, n)
		if !ok {
			continue
		}
		if found[prov] == nil {
			found[prov] = &ProviderInfo{Name: prov}
		}
		switch leaf {
		case "config":
			configs = append(configs, n)
		case "client_secret":
			found[prov].HasSecret = true
		}
	}
	values, err := o.values(ctx, configs, false)
	if err != nil {
		return nil, err
	}
	out := make([]ProviderInfo, 0, len(found))
	for _, p := range found {
		cfgName := config.ProviderConfigName(o.Prefix, p.Name)
		doc, ok := values[cfgName]
		switch {
		case !ok:
			p.Problem = fmt.Errorf("%s is missing", cfgName)
		default:
			p.Stored = doc
			if p.Config, err = provider.ParseConfig(p.Name, []byte(doc)); err != nil {
				p.Problem = fmt.Errorf("%s: %w", cfgName, err)
			} else if !p.HasSecret {
				p.Problem = fmt.Errorf("%s is missing", config.ClientSecretName(o.Prefix, p.Name))
			}
		}
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Provider reports one provider; ErrNotFound when neither of its
// parameters exists.
func (o *Operator) Provider(ctx context.Context, name string) (*ProviderInfo, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	all, err := o.Providers(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range all {
		if p.Name == name {
			return &p, nil
		}
	}
	return nil, fmt.Errorf("%w: provider %q has no parameters under %s", ErrNotFound, name, config.Prefix(o.Prefix))
}

// DeleteProvider deletes a provider's config and client secret;
// ErrNotFound when neither exists.
func (o *Operator) DeleteProvider(ctx context.Context, name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	out, err := o.SSM.DeleteParameters(ctx, &ssm.DeleteParametersInput{Names: []string{
		config.ProviderConfigName(o.Prefix, name), config.ClientSecretName(o.Prefix, name)}})
	if err != nil {
		return fmt.Errorf("delete the parameters of %s: %w", name, err)
	}
	if len(out.DeletedParameters) == 0 {
		return fmt.Errorf("%w: provider %q has no parameters under %s", ErrNotFound, name, config.Prefix(o.Prefix))
	}
	return nil
}

// KeyRing describes the key ring without its key material.
type KeyRing struct {
	Active string
	IDs    []string
	// Version is the SSM parameter's version.
	Version int64
}

// ringDoc is the document config reads under {prefix}/token-keys.
type ringDoc struct {
	Active string            `json:"active"`
	Keys   map[string]string `json:"keys"`
}

// InitKeys creates the key ring with one fresh key, "k1". When a ring
// already exists it is left as it is and returned, created false (init is
// safe to run again); a ring that exists and does not parse is an error.
func (o *Operator) InitKeys(ctx context.Context) (ring *KeyRing, created bool, err error) {
	existing, err := o.Keys(ctx)
	switch {
	case err == nil:
		return existing, false, nil
	case !errors.Is(err, ErrNotFound):
		return nil, false, err
	}
	doc, err := o.addKey(ringDoc{Keys: map[string]string{}})
	if err != nil {
		return nil, false, err
	}
	// Overwrite false: two inits at once cannot replace each other's ring.
	if err := o.writeRing(ctx, doc, false); err != nil {
		return nil, false, err
	}
	ring, err = o.Keys(ctx)
	return ring, err == nil, err
}

// RotateKeys adds a fresh key and makes it active; the old keys stay, so
// every value sealed under them still opens. Functions pick the new ring
// up within their config cache time (5 minutes), and at once when they
// meet a value sealed under a key id they do not know.
func (o *Operator) RotateKeys(ctx context.Context) (*KeyRing, error) {
	doc, _, err := o.readRing(ctx)
	if err != nil {
		return nil, err
	}
	if doc, err = o.addKey(doc); err != nil {
		return nil, err
	}
	if err := o.writeRing(ctx, doc, true); err != nil {
		return nil, err
	}
	return o.Keys(ctx)
}

// Keys reads the key ring: ErrNotFound when it does not exist, the
// parser's error when it does not parse.
func (o *Operator) Keys(ctx context.Context) (*KeyRing, error) {
	_, ring, err := o.readRing(ctx)
	return ring, err
}

func (o *Operator) readRing(ctx context.Context) (ringDoc, *KeyRing, error) {
	name := config.KeyRingName(o.Prefix)
	out, err := o.SSM.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(name), WithDecryption: aws.Bool(true)})
	var missing *types.ParameterNotFound
	if errors.As(err, &missing) {
		return ringDoc{}, nil, fmt.Errorf("%w: %s does not exist (tokenbroker keys init creates it)", ErrNotFound, name)
	}
	if err != nil {
		return ringDoc{}, nil, fmt.Errorf("read %s: %w", name, err)
	}
	raw := aws.ToString(out.Parameter.Value)
	ring, err := sealing.ParseRing([]byte(raw))
	if err != nil {
		return ringDoc{}, nil, fmt.Errorf("%s: %w", name, err)
	}
	var doc ringDoc
	if err := json.Unmarshal([]byte(raw), &doc); err != nil {
		return ringDoc{}, nil, fmt.Errorf("%s: %w", name, err)
	}
	return doc, &KeyRing{Active: ring.Active(), IDs: ring.KeyIDs(), Version: out.Parameter.Version}, nil
}

// addKey adds a fresh 32-byte key under the next free id k<n> and makes
// it active.
func (o *Operator) addKey(doc ringDoc) (ringDoc, error) {
	next := 1
	for id := range doc.Keys {
		if n, err := strconv.Atoi(strings.TrimPrefix(id, "k")); err == nil && strings.HasPrefix(id, "k") && n >= next {
			next = n + 1
		}
	}
	id := "k" + strconv.Itoa(next)
	for doc.Keys[id] != "" { // ids that are not k<n> cannot collide, but be sure
		next++
		id = "k" + strconv.Itoa(next)
	}
	key := make([]byte, sealing.KeySize)
	r := o.Rand
	if r == nil {
		r = rand.Reader
	}
	if _, err := io.ReadFull(r, key); err != nil {
		return ringDoc{}, fmt.Errorf("make a key: %w", err)
	}
	keys := make(map[string]string, len(doc.Keys)+1)
	for k, v := range doc.Keys {
		keys[k] = v
	}
	keys[id] = base64.StdEncoding.EncodeToString(key)
	return ringDoc{Active: id, Keys: keys}, nil
}

func (o *Operator) writeRing(ctx context.Context, doc ringDoc, overwrite bool) error {
	raw, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	// What is written is what the functions will parse.
	if _, err := sealing.ParseRing(raw); err != nil {
		return err
	}
	return o.put(ctx, config.KeyRingName(o.Prefix), string(raw), types.ParameterTypeSecureString, overwrite)
}

func (o *Operator) put(ctx context.Context, name, value string, typ types.ParameterType, overwrite bool) error {
	in := &ssm.PutParameterInput{Name: aws.String(name), Value: aws.String(value), Type: typ, Overwrite: aws.Bool(overwrite)}
	if typ == types.ParameterTypeSecureString && o.KMSKey != "" {
		in.KeyId = aws.String(o.KMSKey)
	}
	if _, err := o.SSM.PutParameter(ctx, in); err != nil {
		var exists *types.ParameterAlreadyExists
		if errors.As(err, &exists) {
			return fmt.Errorf("%s already exists", name)
		}
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

func (o *Operator) exists(ctx context.Context, name string) (bool, error) {
	out, err := o.SSM.DescribeParameters(ctx, &ssm.DescribeParametersInput{
		ParameterFilters: []types.ParameterStringFilter{{Key: aws.String("Name"), Option: aws.String("Equals"), Values: []string{name}}}})
	if err != nil {
		return false, fmt.Errorf("look up %s: %w", name, err)
	}
	return len(out.Parameters) > 0, nil
}

// list names every parameter under the prefix, by DescribeParameters:
// no value is read.
func (o *Operator) list(ctx context.Context) ([]string, error) {
	root := config.Prefix(o.Prefix)
	var names []string
	p := ssm.NewDescribeParametersPaginator(o.SSM, &ssm.DescribeParametersInput{
		ParameterFilters: []types.ParameterStringFilter{{Key: aws.String("Path"), Option: aws.String("Recursive"), Values: []string{root}}},
		MaxResults:       aws.Int32(50),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list the SSM parameters under %s: %w", root, err)
		}
		for _, md := range page.Parameters {
			names = append(names, aws.ToString(md.Name))
		}
	}
	return names, nil
}

// values reads parameters by name, ten at a time.
func (o *Operator) values(ctx context.Context, names []string, decrypt bool) (map[string]string, error) {
	out := map[string]string{}
	sort.Strings(names)
	for batch := range slices.Chunk(names, 10) {
		res, err := o.SSM.GetParameters(ctx, &ssm.GetParametersInput{Names: batch, WithDecryption: aws.Bool(decrypt)})
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", strings.Join(batch, ", "), err)
		}
		for _, p := range res.Parameters {
			out[aws.ToString(p.Name)] = aws.ToString(p.Value)
		}
	}
	return out, nil
}
