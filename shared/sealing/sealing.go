// Package sealing encrypts tokens before they reach the table.
//
// A sealed value is "v1.<key id>.<base64url(nonce || ciphertext)>". It is
// AES-256-GCM under one key of a Ring, with the caller's binding (the item
// key and the field name) as additional data, so a sealed value copied to
// another item or another field does not open.
package sealing

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
)

// KeySize is the length in bytes of every key of a Ring (AES-256).
const KeySize = 32

// MaxPlaintext bounds what Seal accepts. Provider tokens are far smaller;
// the bound keeps a corrupt response from becoming a 400 KB item.
const MaxPlaintext = 64 << 10

const version = "v1"

var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ErrOpen is returned (wrapped) when a sealed value cannot be opened: it is
// malformed, sealed under an unknown key, tampered with, or bound to another
// item.
var ErrOpen = errors.New("sealing: cannot open sealed value")

// ErrUnknownKey is returned (wrapped, together with ErrOpen) when a value
// was sealed under a key id the ring does not hold: a ring loaded before a
// new key became active, most likely, which a fresh load would fix.
var ErrUnknownKey = errors.New("sealing: key id not in the ring")

// Ring is a set of AES-256 keys with one active key used for sealing. Any key
// of the ring opens values sealed under it, which is what makes key rotation
// possible: add a key, make it active, and old values keep opening.
type Ring struct {
	active string
	aeads  map[string]cipher.AEAD
	// Rand is the nonce source; crypto/rand unless a test steers it.
	Rand io.Reader
}

// ringJSON is the document stored in SSM under {prefix}/token-keys.
type ringJSON struct {
	Active string            `json:"active"`
	Keys   map[string]string `json:"keys"`
}

// ParseRing reads the token-keys document:
// {"active":"k2","keys":{"k1":"<base64 32 bytes>","k2":"…"}}.
func ParseRing(doc []byte) (*Ring, error) {
	var rj ringJSON
	dec := json.NewDecoder(strings.NewReader(string(doc)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rj); err != nil {
		return nil, fmt.Errorf("sealing: key ring is not valid JSON of the form {\"active\":…,\"keys\":{…}}: %w", err)
	}
	keys := make(map[string][]byte, len(rj.Keys))
	for id, b64 := range rj.Keys {
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return nil, fmt.Errorf("sealing: key %q is not standard base64: %w", id, err)
		}
		keys[id] = raw
	}
	return NewRing(rj.Active, keys)
}

// NewRing builds a ring from raw 32-byte keys; active must be one of them.
func NewRing(active string, keys map[string][]byte) (*Ring, error) {
	if len(keys) == 0 {
		return nil, errors.New("sealing: key ring has no keys")
	}
	r := &Ring{active: active, aeads: make(map[string]cipher.AEAD, len(keys)), Rand: rand.Reader}
	for id, key := range keys {
		if !keyIDPattern.MatchString(id) {
			return nil, fmt.Errorf("sealing: key id %q must match %s", id, keyIDPattern)
		}
		if len(key) != KeySize {
			return nil, fmt.Errorf("sealing: key %q is %d bytes, want %d", id, len(key), KeySize)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("sealing: key %q: %w", id, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("sealing: key %q: %w", id, err)
		}
		r.aeads[id] = aead
	}
	if _, ok := r.aeads[active]; !ok {
		return nil, fmt.Errorf("sealing: active key %q is not in the ring", active)
	}
	return r, nil
}

// Active is the id of the key new values are sealed under.
func (r *Ring) Active() string { return r.active }

// KeyIDs lists the ids of the ring, sorted.
func (r *Ring) KeyIDs() []string {
	ids := make([]string, 0, len(r.aeads))
	for id := range r.aeads {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Seal encrypts plaintext under the active key, bound to binding (for
// example the item key and the field name).
func (r *Ring) Seal(plaintext, binding string) (string, error) {
	if r == nil {
		return "", errors.New("sealing: no key ring")
	}
	if len(plaintext) > MaxPlaintext {
		return "", fmt.Errorf("sealing: value of %d bytes exceeds %d", len(plaintext), MaxPlaintext)
	}
	if binding == "" {
		return "", errors.New("sealing: empty binding")
	}
	aead := r.aeads[r.active]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := io.ReadFull(r.Rand, nonce); err != nil {
		return "", fmt.Errorf("sealing: nonce: %w", err)
	}
	out := aead.Seal(nonce, nonce, []byte(plaintext), additionalData(r.active, binding))
	return version + "." + r.active + "." + base64.RawURLEncoding.EncodeToString(out), nil
}

// Open decrypts a value produced by Seal with the same binding, under
// whichever key of the ring sealed it.
func (r *Ring) Open(sealed, binding string) (string, error) {
	if r == nil {
		return "", errors.New("sealing: no key ring")
	}
	parts := strings.SplitN(sealed, ".", 3)
	if len(parts) != 3 || parts[0] != version {
		return "", fmt.Errorf("%w: not a %s sealed value", ErrOpen, version)
	}
	kid := parts[1]
	aead, ok := r.aeads[kid]
	if !ok {
		return "", fmt.Errorf("%w: %w: %q", ErrOpen, ErrUnknownKey, kid)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return "", fmt.Errorf("%w: bad encoding", ErrOpen)
	}
	if len(raw) < aead.NonceSize()+aead.Overhead() {
		return "", fmt.Errorf("%w: too short", ErrOpen)
	}
	nonce, ct := raw[:aead.NonceSize()], raw[aead.NonceSize():]
	plain, err := aead.Open(nil, nonce, ct, additionalData(kid, binding))
	if err != nil {
		return "", fmt.Errorf("%w: authentication failed (wrong item, field or key)", ErrOpen)
	}
	return string(plain), nil
}

// KeyID reports which key sealed a value, without opening it; operators use
// it to find values still sealed under a retired key.
func KeyID(sealed string) (string, bool) {
	parts := strings.SplitN(sealed, ".", 3)
	if len(parts) != 3 || parts[0] != version {
		return "", false
	}
	return parts[1], true
}

// additionalData binds the format version, the key id and the caller's
// binding, so none of them can be swapped without failing authentication.
func additionalData(kid, binding string) []byte {
	return []byte(version + "\x00" + kid + "\x00" + binding)
}
