package store

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/expression"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Lease is the right to call the provider for one connection. Owner is
// unique per acquisition (not just per process), so a retried acquisition
// can tell its own lease from another worker's.
type Lease struct {
	Owner string
	Until time.Time
}

// AcquireLease takes the refresh lease on k if the item is still at
// expect and no live lease exists, and returns the connection as it now
// stands (read from the write itself: consistent, no extra read). A lease
// that is not granted is a *ConflictError (errors.Is ErrLeaseNotGranted)
// carrying the stored connection; a deleted connection is ErrNotFound.
func (s *Store) AcquireLease(ctx context.Context, k Key, expect Fence, l Lease) (*Connection, error) {
	if l.Owner == "" || len(l.Owner) > 256 {
		return nil, fmt.Errorf("%w: lease owner must be 1-256 bytes", ErrInvalid)
	}
	now := s.now()
	cond := fenceCondition(expect).And(
		expression.Or(
			expression.AttributeNotExists(expression.Name("lease_until")),
			expression.Name("lease_until").LessThan(expression.Value(now.UnixMilli())),
		))
	upd := expression.Set(expression.Name("lease_owner"), expression.Value(l.Owner)).
		Set(expression.Name("lease_until"), expression.Value(l.Until.UnixMilli()))
	w := s.newWrite("acquire lease", k, expect)
	w.keep = true
	w.appliedBy = func(old map[string]types.AttributeValue) bool {
		v, ok := old["lease_owner"].(*types.AttributeValueMemberS)
		return ok && v.Value == l.Owner
	}
	w, err := s.conditionalUpdate(w, cond, upd, nil)
	if err != nil {
		return nil, err
	}
	w.update.ReturnValues = types.ReturnValueAllNew
	if err := w.Apply(ctx); err != nil {
		return nil, err
	}
	return w.Result, nil
}

// PrepareRelease prepares giving back a lease its owner will not use, at
// the fence it was taken at: nothing was called and nothing changes but the
// lease; a lease that is no longer the owner's is left alone. The caller
// applies (and retries) it. An invalid key makes a write whose Apply
// returns the error.
func (s *Store) PrepareRelease(k Key, expect Fence, owner string) *Write {
	cond := fenceCondition(expect).And(expression.Name("lease_owner").Equal(expression.Value(owner)))
	upd := expression.Remove(expression.Name("lease_owner")).Remove(expression.Name("lease_until"))
	w, err := s.conditionalUpdate(s.newWrite("release lease", k, expect), cond, upd, nil)
	if err != nil {
		return &Write{ID: NewWriteID(), s: s, what: "release lease", key: k, failed: err}
	}
	return w
}
