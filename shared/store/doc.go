// Package store keeps connections, authorization states and quota counters
// in the one DynamoDB table, and implements the refresh lease on top of
// conditional writes.
//
// It is the only package that knows item attributes. Tokens are sealed with
// a sealing.Ring before they are written and opened after they are read, so
// no plaintext token reaches the table.
//
// The lease follows DESIGN.md: AcquireLease succeeds only at the version the
// caller read and when no live lease exists; Commit, RecordFailure and
// MarkNeedsReauth succeed only at that same version and bump it. The version,
// not the lease, is the fence: a write at a stale version fails with
// ErrVersionConflict and changes nothing.
package store
