package store_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/sealing"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// A write storing a new grant states what it replaces: nothing (a create),
// or exactly the grant at a fence. What it finds instead comes back in
// Write.Existing, from the failed write itself, even when its tokens were
// sealed under a key the store no longer has.
func TestReplacePreconditions(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	k := store.Key{Provider: "sina", Connection: "replace-pre"}
	old := seed(t, s, k, "tok-old")
	grant := func(at string) *store.Connection {
		return &store.Connection{Key: k, Kind: "sinacloud", AccessToken: at, TokenType: "Bearer", Status: store.StatusActive}
	}
	// A create over it: ErrAlreadyExists, with the old grant.
	w, err := s.PrepareReplace(grant("tok-new"), store.Precondition{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Apply(ctx); !errors.Is(err, store.ErrAlreadyExists) || w.Existing == nil ||
		w.Existing.AccessToken != "tok-old" || w.Existing.Fence() != old.Fence() {
		t.Fatalf("create over a connection: %v, existing %+v", err, w.Existing)
	}
	// At a stale fence: a conflict, nothing written, the current grant found.
	stale := store.Fence{Generation: old.Generation, Version: old.Version + 7}
	w, _ = s.PrepareReplace(grant("tok-new"), store.Precondition{Replace: true, At: &stale})
	if err := w.Apply(ctx); !errors.Is(err, store.ErrVersionConflict) || w.Existing == nil || w.Existing.Fence() != old.Fence() {
		t.Fatalf("replace at a stale fence: %v, existing %+v", err, w.Existing)
	}
	if c, _ := s.Get(ctx, k, true); c.AccessToken != "tok-old" {
		t.Fatalf("a refused replace wrote %q", c.AccessToken)
	}
	// At the right fence: replaced, under a new generation.
	at := old.Fence()
	w, _ = s.PrepareReplace(grant("tok-new"), store.Precondition{Replace: true, At: &at})
	if err := w.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	c, _ := s.Get(ctx, k, true)
	if c.AccessToken != "tok-new" || c.Generation == old.Generation {
		t.Fatalf("after the replace: %q at %v", c.AccessToken, c.Fence())
	}
	// Tokens sealed under a key this store lacks: the fence and the
	// streak still come back, the tokens empty.
	other, err := sealing.NewRing("k9", map[string][]byte{"k9": bytes.Repeat([]byte{9}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	foreign := &store.Store{DB: s.DB, Table: s.Table, Ring: other, Shards: 3}
	k2 := store.Key{Provider: "sina", Connection: "replace-foreign"}
	if err := foreign.Create(ctx, &store.Connection{Key: k2, Kind: "sinacloud", AccessToken: "sealed-elsewhere", Status: store.StatusActive,
		FailingNotified: true, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	w, _ = s.PrepareReplace(&store.Connection{Key: k2, Kind: "sinacloud", AccessToken: "x", Status: store.StatusActive}, store.Precondition{})
	if err := w.Apply(ctx); !errors.Is(err, store.ErrAlreadyExists) || w.Existing == nil || !w.Existing.FailingNotified ||
		w.Existing.AccessToken != "" || w.Existing.Generation == "" {
		t.Fatalf("create over an item sealed elsewhere: %v, existing %+v", err, w.Existing)
	}
}

// The state carries the flow's principal to the parked grant, which
// carries it, with the state's fingerprint, to the confirm; a claim by
// another principal fails inside the transaction too.
func TestPrincipalTravelsWithTheFlow(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	k := store.Key{Provider: "sina", Connection: "principal"}
	const who = "arn:aws:iam::111122223333:role/app"
	if err := s.PutState(ctx, "state-principal-0123456789", &store.State{Key: k, Principal: who, ExpiresAt: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	st, err := s.ConsumeState(ctx, "state-principal-0123456789")
	if err != nil || st.Principal != who {
		t.Fatalf("consumed state: %+v %v", st, err)
	}
	const id = "connect-id-principal-0123456789"
	g := &store.Connection{Key: k, Kind: "sinacloud", AccessToken: "parked-at", Status: store.StatusActive}
	if err := s.Park(ctx, id, &store.Parked{Key: k, Grant: g, Principal: who, StateFingerprint: "0a1b2c3d", ExpiresAt: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	p, err := s.GetParked(ctx, id, k)
	if err != nil || p.Principal != who || p.StateFingerprint != "0a1b2c3d" {
		t.Fatalf("parked: %+v %v", p, err)
	}
	w, err := s.PrepareConfirm(id, "arn:aws:iam::111122223333:user/mallory", p.Grant, store.Precondition{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Apply(ctx); !errors.Is(err, store.ErrStateInvalid) {
		t.Fatalf("claim by another principal: %v, want ErrStateInvalid", err)
	}
	if _, err := s.Get(ctx, k, true); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused claim stored the connection: %v", err)
	}
	w, _ = s.PrepareConfirm(id, who, p.Grant, store.Precondition{})
	if err := w.Apply(ctx); err != nil {
		t.Fatalf("claim by the starting principal: %v", err)
	}
}
