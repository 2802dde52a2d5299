package broker_test

// Tests from the second adversarial review (security and the refresh
// protocol's fixes): each function held to the DynamoDB role template.yaml
// gives it, the confirmed flow's claims, backoff that spares the provider,
// and the edge cases that once broke a promise.

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/local/ddbfault"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/local/samtemplate"
	"github.com/tokenbroker/tokenbroker/shared/store"
)

// roleDB answers every DynamoDB call the way AWS would for a function whose
// role is the one template.yaml gives it: item actions only on the key
// prefixes its dynamodb:LeadingKeys allow, Query only on its index, and a
// TransactWriteItems authorized item by item (Put → PutItem, Update →
// UpdateItem, Delete → DeleteItem, ConditionCheck → ConditionCheckItem).
// A refused call gets AccessDeniedException and is recorded.
type roleDB struct {
	inner   store.DynamoDB
	fn      string
	items   map[string][]string // LeadingKeys pattern -> actions
	indexes map[string]bool

	mu     sync.Mutex
	denied []string
}

func newRoleDB(t *testing.T, inner store.DynamoDB, fn string) *roleDB {
	t.Helper()
	root, err := localaws.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	tpl, err := samtemplate.Load(filepath.Join(root, "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	statements, err := tpl.PolicyStatements(fn)
	if err != nil {
		t.Fatal(err)
	}
	r := &roleDB{inner: inner, fn: fn, items: map[string][]string{}, indexes: map[string]bool{}}
	for _, st := range statements {
		for _, action := range st.Actions {
			op, ok := strings.CutPrefix(action, "dynamodb:")
			if !ok {
				continue
			}
			if op == "Query" {
				for _, res := range st.Resources {
					if _, idx, ok := strings.Cut(res, "/index/"); ok {
						r.indexes[idx] = true
					}
				}
				continue
			}
			for _, p := range st.Condition["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] {
				r.items[p] = append(r.items[p], op)
			}
		}
	}
	return r
}

func (r *roleDB) allowed(op, pk string) bool {
	for p, ops := range r.items {
		if (strings.HasSuffix(p, "*") && strings.HasPrefix(pk, strings.TrimSuffix(p, "*")) || p == pk) && slices.Contains(ops, op) {
			return true
		}
	}
	return false
}

func (r *roleDB) deny(op, what string) error {
	r.mu.Lock()
	r.denied = append(r.denied, op+" "+what)
	r.mu.Unlock()
	return &smithy.GenericAPIError{Code: "AccessDeniedException", Fault: smithy.FaultClient,
		Message: fmt.Sprintf("%s is not authorized to perform dynamodb:%s on %s", r.fn, op, what)}
}

// Denied lists the refused calls as "Action pk-prefix", sorted, distinct.
func (r *roleDB) Denied() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.denied)
	sort.Strings(out)
	return slices.Compact(out)
}

func pkOf(m map[string]types.AttributeValue) string {
	if v, ok := m["pk"].(*types.AttributeValueMemberS); ok {
		return v.Value
	}
	return ""
}

func kind(pk string) string {
	if i := strings.IndexByte(pk, '#'); i >= 0 {
		return pk[:i+1] + "*"
	}
	return pk
}

func (r *roleDB) check(op, pk string) error {
	if !r.allowed(op, pk) {
		return r.deny(op, kind(pk))
	}
	return nil
}

func (r *roleDB) TransactWriteItems(ctx context.Context, in *dynamodb.TransactWriteItemsInput, o ...func(*dynamodb.Options)) (*dynamodb.TransactWriteItemsOutput, error) {
	for _, it := range in.TransactItems {
		var err error
		switch {
		case it.Put != nil:
			err = r.check("PutItem", pkOf(it.Put.Item))
		case it.Update != nil:
			err = r.check("UpdateItem", pkOf(it.Update.Key))
		case it.Delete != nil:
			err = r.check("DeleteItem", pkOf(it.Delete.Key))
		case it.ConditionCheck != nil:
			err = r.check("ConditionCheckItem", pkOf(it.ConditionCheck.Key))
		}
		if err != nil {
			return nil, err
		}
	}
	return r.inner.TransactWriteItems(ctx, in, o...)
}

func (r *roleDB) GetItem(ctx context.Context, in *dynamodb.GetItemInput, o ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error) {
	if err := r.check("GetItem", pkOf(in.Key)); err != nil {
		return nil, err
	}
	return r.inner.GetItem(ctx, in, o...)
}

func (r *roleDB) PutItem(ctx context.Context, in *dynamodb.PutItemInput, o ...func(*dynamodb.Options)) (*dynamodb.PutItemOutput, error) {
	if err := r.check("PutItem", pkOf(in.Item)); err != nil {
		return nil, err
	}
	return r.inner.PutItem(ctx, in, o...)
}

func (r *roleDB) UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, o ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	if err := r.check("UpdateItem", pkOf(in.Key)); err != nil {
		return nil, err
	}
	return r.inner.UpdateItem(ctx, in, o...)
}

func (r *roleDB) DeleteItem(ctx context.Context, in *dynamodb.DeleteItemInput, o ...func(*dynamodb.Options)) (*dynamodb.DeleteItemOutput, error) {
	if err := r.check("DeleteItem", pkOf(in.Key)); err != nil {
		return nil, err
	}
	return r.inner.DeleteItem(ctx, in, o...)
}

func (r *roleDB) Query(ctx context.Context, in *dynamodb.QueryInput, o ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error) {
	idx := aws.ToString(in.IndexName)
	if !r.indexes[idx] {
		return nil, r.deny("Query", "index/"+idx)
	}
	return r.inner.Query(ctx, in, o...)
}

// asFunction is another broker instance over the fixture's table whose
// DynamoDB calls are held to fn's role in template.yaml.
func (f *fixture) asFunction(t *testing.T, fn string) (*broker.Broker, *roleDB) {
	t.Helper()
	b := f.sibling(t)
	r := newRoleDB(t, b.Store.DB, fn)
	b.Store.DB = r
	b.ReturnToAllowlist = []string{"https://app.test"}
	return b, r
}

// followAuthorize takes an authorize URL to the emulated provider and
// returns the code and state it redirects back with.
func followAuthorize(t *testing.T, authorizeURL string) (code, state string) {
	t.Helper()
	resp, err := noRedirect.Get(strings.TrimSuffix(authorizeURL, "#wechat_redirect"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("provider did not redirect: %v", err)
	}
	return loc.Query().Get("code"), loc.Query().Get("state")
}

// The refresher claims an orphaned notice with an UpdateItem on notice#…
// (store.ClaimNotice); its role once granted only PutItem and DeleteItem
// there, so in AWS every claim would have been AccessDenied and an event
// whose writer died before publishing it never delivered. The local
// stand-ins have no IAM: the refresher here runs held to its template role.
func TestRefresherRoleMayClaimAnOrphanedNotice(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sink := eventQueue(t)
	k := orphanNotice(t, f, "sec-orphan-iam")
	refresher, role := f.asFunction(t, "RefresherFunction")
	f.clock.Add(store.NoticeGrace + time.Second)
	sum, err := refresher.RefreshDue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	evs := eventsAbout(receiveAll(t, sink), k)
	t.Logf("refresher role refused: %v", role.Denied())
	if sum.Notices != 1 || len(evs) != 1 {
		t.Errorf("with the refresher's template role: %d notices published, %d events delivered; want 1 and 1", sum.Notices, len(evs))
	}
}

// Every DynamoDB call each function makes on the paths the README
// describes, held to that function's role in template.yaml. Any refused
// call is a function that fails in AWS and passes locally.
func TestEveryFunctionStaysInItsRole(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, o2 := oauth2Provider(t, f, "secroles", nil)
	authorizeFn, authorizeRole := f.asFunction(t, "AuthorizeFunction")
	callbackFn, callbackRole := f.asFunction(t, "CallbackFunction")
	tokenFn, tokenRole := f.asFunction(t, "TokenFunction")
	refresherFn, refresherRole := f.asFunction(t, "RefresherFunction")

	connect := func(k store.Key, confirm bool) string {
		t.Helper()
		req := broker.AuthorizeRequest{Key: k, Confirm: confirm}
		if confirm {
			req.ReturnTo = "https://app.test/done"
		}
		res, err := authorizeFn.StartAuthorization(ctx, req)
		if err != nil {
			t.Fatalf("authorize: %v", err)
		}
		code, state := followAuthorize(t, res.AuthorizeURL)
		cb, err := callbackFn.CompleteAuthorization(ctx, broker.CallbackRequest{Provider: k.Provider, Code: code, State: state})
		if err != nil || cb.Err != nil {
			t.Fatalf("callback: %v / %v", err, cb.Err)
		}
		return cb.ConnectID
	}
	k := store.Key{Provider: name, Connection: "sec-roles"}
	connect(k, false)
	connect(k, false) // a re-authorization replaces
	kc := store.Key{Provider: name, Connection: "sec-roles-confirmed"}
	id := connect(kc, true)
	if _, err := tokenFn.Confirm(ctx, broker.ConfirmRequest{Key: kc, ConnectID: id}); err != nil {
		t.Errorf("confirm: %v", err)
	}
	if _, err := tokenFn.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Minute}); err != nil {
		t.Errorf("token: %v", err)
	}
	f.clock.Add(broker.MaxShortBackoff)
	if _, err := tokenFn.Token(ctx, broker.TokenRequest{Key: k, Force: true}); err != nil {
		t.Errorf("refresh: %v", err)
	}
	if _, err := tokenFn.Status(ctx, k); err != nil {
		t.Errorf("status: %v", err)
	}
	if _, err := tokenFn.List(ctx, broker.ListRequest{Provider: name}); err != nil {
		t.Errorf("list: %v", err)
	}
	if _, _, err := tokenFn.Import(ctx, broker.ImportRequest{Key: store.Key{Provider: name, Connection: "sec-roles-imported"}, AccessToken: "at-imported-0123456789"}); err != nil {
		t.Errorf("import: %v", err)
	}
	if _, err := tokenFn.Token(ctx, broker.TokenRequest{Key: store.Key{Provider: devstack.WeChatMP, Connection: broker.MachineConnection}}); err != nil {
		t.Errorf("machine token: %v", err)
	}
	// A transient failure, a recovery and a refusal, through the token function.
	f.clock.Add(broker.MaxShortBackoff)
	o2.Inject("/token", emulator.HTMLError(502), 1)
	_, _ = tokenFn.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	f.clock.Add(broker.MaxShortBackoff)
	_, _ = tokenFn.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	f.clock.Add(broker.MaxShortBackoff)
	o2.Inject("/token", emulator.OAuthError(400, "invalid_grant", "gone"), 1)
	_, _ = tokenFn.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	if err := tokenFn.Delete(ctx, k, "arn:aws:iam::123456789012:user/x"); err != nil {
		t.Errorf("delete: %v", err)
	}
	// The refresher: a due connection refreshed, then failing, then
	// refused with its writer unable to publish; the orphaned notice.
	k2 := store.Key{Provider: name, Connection: "sec-roles-due"}
	connect(k2, false)
	f.clock.Add(3 * time.Hour)
	if _, err := refresherFn.RefreshDue(ctx); err != nil {
		t.Errorf("refresher: %v", err)
	}
	f.clock.Add(3 * time.Hour)
	o2.Inject("/token", emulator.HTMLError(502), 2)
	_, _ = refresherFn.RefreshDue(ctx)
	f.clock.Add(3 * time.Hour)
	o2.Inject("/token", emulator.OAuthError(400, "invalid_grant", "gone"), 2)
	refresherFn.Notifier = failingNotifier{}
	_, _ = refresherFn.RefreshDue(ctx)
	refresherFn.Notifier = f.b.Notifier
	f.clock.Add(time.Hour)
	_, _ = refresherFn.RefreshDue(ctx)

	for fn, r := range map[string]*roleDB{"AuthorizeFunction": authorizeRole, "CallbackFunction": callbackRole, "TokenFunction": tokenRole, "RefresherFunction": refresherRole} {
		if d := r.Denied(); len(d) > 0 {
			t.Errorf("%s: calls its template role refuses: %v", fn, d)
		}
	}
}

// While a failed refresh waits for its retry, requests get the old token
// if it still works, and otherwise the last error (503), instead of each
// asking the provider again. decide() once refused only when there was no
// access token at all, so an expired one sent every request to the
// provider, backoff or not.
func TestExpiredTokenInBackoffAsksTheProviderOnce(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, o2 := oauth2Provider(t, f, "secbackoff", nil)
	k := store.Key{Provider: name, Connection: "expired-backoff"}
	f.authorize(t, k)
	f.clock.Add(2 * time.Hour) // the 1-hour token has expired
	o2.Inject("/token", emulator.HTMLError(502), 5)
	before := o2.Calls("/token")
	var codes []broker.Code
	for i := 0; i < 5; i++ {
		_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Minute})
		codes = append(codes, broker.ErrorCode(err))
		if broker.RetryAfter(err) <= 0 {
			t.Errorf("answer %d (%v) says nothing of when to come back", i, err)
		}
		f.clock.Add(100 * time.Millisecond) // the first short backoff is 0.5–1 s
	}
	c, _ := f.store.Get(ctx, k, true)
	calls := o2.Calls("/token") - before
	t.Logf("answers %v; attempts %d; next attempt in %v", codes, c.Attempts, c.RetryAt.Sub(f.clock.Now()))
	if calls != 1 {
		t.Errorf("5 requests within the backoff of a failed refresh made %d provider calls, want 1 (then 503s until %v)", calls, c.RetryAt)
	}
	o2.Inject("/token", emulator.HTMLError(502), 0)
}

// Probes of the confirmed connect flow (sound at 6676ebb): a connect id
// works once, only for its connection, only within ParkLifetime, and two
// confirms racing store one grant with one event.
func TestConfirmedFlowClaims(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sink := eventQueueFor(t, `{"source":["tokenbroker"],"detail-type":["Connection Authorized"]}`)
	f.b.ReturnToAllowlist = []string{"https://app.test"}
	park := func(k store.Key) (string, broker.CallbackRequest) {
		t.Helper()
		res, err := f.b.StartAuthorization(ctx, broker.AuthorizeRequest{Key: k, Confirm: true, ReturnTo: "https://app.test/x"})
		if err != nil {
			t.Fatal(err)
		}
		code, state := followAuthorize(t, res.AuthorizeURL)
		req := broker.CallbackRequest{Provider: k.Provider, Code: code, State: state}
		cb, err := f.b.CompleteAuthorization(ctx, req)
		if err != nil || cb.Err != nil || cb.ConnectID == "" {
			t.Fatalf("callback: %v / %+v", err, cb)
		}
		return cb.ConnectID, req
	}
	k := store.Key{Provider: devstack.OAuth2, Connection: "sec-confirm"}
	id, cbReq := park(k)
	// Replaying the callback does not park (or store) anything again.
	if _, err := f.b.CompleteAuthorization(ctx, cbReq); broker.ErrorCode(err) != broker.CodeBadRequest {
		t.Errorf("callback replay: %v", err)
	}
	// Nothing is served, listed or shown before the confirmation.
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); broker.ErrorCode(err) != broker.CodeNotFound {
		t.Errorf("token of a parked grant: %v", err)
	}
	if page, _ := f.b.List(ctx, broker.ListRequest{Provider: k.Provider}); page != nil && len(page.Connections) != 0 {
		t.Errorf("parked grant listed: %+v", page.Connections)
	}
	// Another connection of the same provider, or the same name at another provider.
	for _, other := range []store.Key{{Provider: k.Provider, Connection: "sec-confirm-mallory"}, {Provider: devstack.SinaCloud, Connection: k.Connection}} {
		if _, err := f.b.Confirm(ctx, broker.ConfirmRequest{Key: other, ConnectID: id}); broker.ErrorCode(err) != broker.CodeBadRequest {
			t.Errorf("confirm for %s: %v", other, err)
		}
	}
	// Two confirms at once, from two instances.
	b2 := f.sibling(t)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, b := range []*broker.Broker{f.b, b2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = b.Confirm(ctx, broker.ConfirmRequest{Key: k, ConnectID: id})
		}()
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Errorf("two racing confirms: %v / %v, want exactly one success", errs[0], errs[1])
	}
	if _, err := f.b.Confirm(ctx, broker.ConfirmRequest{Key: k, ConnectID: id}); broker.ErrorCode(err) != broker.CodeBadRequest {
		t.Errorf("third confirm: %v", err)
	}
	if evs := eventsAbout(receiveAll(t, sink), k); len(evs) != 1 {
		t.Errorf("%d Connection Authorized events, want 1", len(evs))
	}
	// Expiry: the clock passes ParkLifetime.
	k2 := store.Key{Provider: devstack.OAuth2, Connection: "sec-confirm-late"}
	id2, _ := park(k2)
	f.clock.Add(broker.ParkLifetime)
	if _, err := f.b.Confirm(ctx, broker.ConfirmRequest{Key: k2, ConnectID: id2}); broker.ErrorCode(err) != broker.CodeBadRequest {
		t.Errorf("confirm after ParkLifetime: %v", err)
	}
}

// An answer whose access token is too large to store is not a successful
// refresh (callers get 502, then 503; there is no token to serve). It once
// cleared FailingNotified and announced "Connection Recovered", and the
// streak after it was never announced again.
func TestOversizedAnswerAnnouncesNoRecovery(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sink := eventQueueFor(t, `{"source":["tokenbroker"],"detail-type":["Connection Refresh Failing","Connection Recovered"]}`)
	prov := &bigTokenSina{size: 65 << 10, refresh: map[string]bool{"rt-0": false}}
	srv := startServer(t, prov)
	name := localaws.UniqueName("secbig")
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "sinacloud", "client_id": devstack.SinaClientID, "api_base": srv}, devstack.SinaSecret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	k := store.Key{Provider: name, Connection: "streak"}
	now := f.clock.Now()
	// In a failing streak, already announced; the old token has expired.
	if err := f.store.Create(ctx, &store.Connection{Key: k, Kind: "sinacloud", AccessToken: "old", RefreshToken: "rt-0", TokenType: "Bearer",
		ExpiresAt: now.Add(-time.Minute), RefreshExpiresAt: now.Add(24 * time.Hour), Status: store.StatusActive, CreatedAt: now.Add(-8 * 24 * time.Hour),
		RefreshedAt: now.Add(-7 * 24 * time.Hour), Attempts: broker.FailingAfter, LastError: "http_503: HTML page", LastErrorAt: now.Add(-time.Minute),
		FailingNotified: true, RefreshAt: now}); err != nil {
		t.Fatal(err)
	}
	var answers []string
	for i := 0; i < broker.FailingAfter+2; i++ {
		c, _ := f.store.Get(ctx, k, true)
		if c.RefreshAt.After(f.clock.Now()) {
			f.clock.Add(c.RefreshAt.Sub(f.clock.Now()) + time.Second)
		}
		sum, err := f.b.RefreshDue(ctx)
		_, terr := f.b.Token(ctx, broker.TokenRequest{Key: k})
		answers = append(answers, fmt.Sprintf("%+v/%v/%s", sum.Refreshed, err, broker.ErrorCode(terr)))
	}
	c, _ := f.store.Get(ctx, k, true)
	var types []string
	for _, ev := range eventsAbout(receiveAll(t, sink), k) {
		types = append(types, ev["detail-type"].(string))
	}
	t.Logf("refresher ticks (refreshed/err/token answer): %v", answers)
	t.Logf("stored: access token %d bytes, attempts %d, failing_notified %v, last_error %q", len(c.AccessToken), c.Attempts, c.FailingNotified, c.LastError)
	if len(types) != 0 {
		t.Errorf("events %v while no refresh produced a usable token; want none (the streak was announced before and has not ended)", types)
	}
}

// The same gap with WeChat's cgi-bin/token: once the global token has
// expired and WeChat answers -1 (busy), every request spends a call of the
// daily quota, so a burst of requests during an outage spends the whole
// budget, and after WeChat recovers the app gets no token until 16:00 UTC.
func TestExpiredWeChatTokenInBackoffSparesTheQuota(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	// Far from WeChat's day boundary (16:00 UTC): 01:00 UTC tomorrow.
	now := f.clock.Now().UTC()
	f.clock.Add(time.Date(now.Year(), now.Month(), now.Day()+1, 1, 0, 0, 0, time.UTC).Sub(now))
	wx := emulator.NewWeChat("wxsecquota0000001", "sec-quota-secret")
	wx.SetClock(f.clock.Now)
	srv := startServer(t, wx)
	name := localaws.UniqueName("secquota")
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "wechat_mp", "client_id": "wxsecquota0000001", "api_base": srv,
		"token_api": "token", "daily_quota_budget": 10}, "sec-quota-secret"); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(3 * time.Hour) // expired; WeChat is busy for a while
	wx.Inject("/cgi-bin/token", emulator.WeChatError(-1, "system error"), 9)
	for i := 0; i < 9; i++ {
		_, _ = f.b.Token(ctx, broker.TokenRequest{Key: k})
		f.clock.Add(50 * time.Millisecond) // all inside the first short backoff
	}
	calls := wx.Calls("/cgi-bin/token")
	// WeChat is back; the retry is due.
	wx.ClearFaults()
	c, _ := f.store.Get(ctx, k, true)
	f.clock.Add(c.RefreshAt.Sub(f.clock.Now()) + time.Second)
	_, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	t.Logf("cgi-bin/token calls: %d; after WeChat recovered: %v", calls, err)
	if calls > 2 {
		t.Errorf("9 requests in one backoff made %d cgi-bin/token calls (quota budget 10), want 2 (first fetch + one retry)", calls)
	}
	if err != nil {
		t.Errorf("after WeChat recovered, the app gets %v", err)
	}
}

// An import with expires_at "0001-01-01T00:00:00Z" (Go's zero time, what
// a client serializing an unset time.Time sends) was once accepted as "no
// expiry": never refreshed, its token served forever. It is refused now.
func TestImportRefusesAZeroExpiresAt(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	k := store.Key{Provider: devstack.OAuth2, Connection: "sec-zero-expiry"}
	zero, _ := time.Parse(time.RFC3339, "0001-01-01T00:00:00Z")
	st, _, err := f.b.Import(ctx, broker.ImportRequest{Key: k, AccessToken: "at-imported-zero", RefreshToken: "rt-imported-zero", ExpiresAt: &zero})
	if err != nil {
		t.Logf("refused: %v", err)
		return
	}
	c, _ := f.store.Get(ctx, k, true)
	f.clock.Add(365 * 24 * time.Hour)
	tok, terr := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Hour})
	t.Logf("import answered expires_at %v; stored expires_at %v, refresh_at %v; a year later: %v %v", st.ExpiresAt, c.ExpiresAt, c.RefreshAt, tok != nil && tok.AccessToken == "at-imported-zero", terr)
	if c.RefreshAt.IsZero() {
		t.Errorf("expires_at 0001-01-01 was stored as no expiry, with no refresh scheduled; want 400 (or a refresh at once)")
	}
}

// When the lease write was slow, "the lease is given back and nothing is
// called". For WeChat's cgi-bin/token the quota count once ran first, on a
// context whose deadline (hold - Provider - Commit) had already passed; the
// count failed and was recorded as a failed refresh ("internal error",
// attempts+1, a backoff) instead of the lease being given back.
func TestSlowLeaseBeforeTheQuotaCountGivesTheLeaseBack(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	f.b.Budget = fastBudget
	wx := emulator.NewWeChat("wxsecslowlease001", "sec-slow-secret")
	wx.SetClock(f.clock.Now)
	srv := startServer(t, wx)
	name := localaws.UniqueName("secslow")
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "wechat_mp", "client_id": "wxsecslowlease001", "api_base": srv,
		"token_api": "token"}, "sec-slow-secret"); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(broker.MaxShortBackoff)
	f.clock.Live()
	calls := wx.Calls("/cgi-bin/token")
	proxy.Inject("UpdateItem", ddbfault.Fault{Kind: ddbfault.StallAfter, Stall: 2 * fastBudget.Acquire, Match: "lease_owner"}, 1)
	_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	c, _ := f.store.Get(ctx, k, true)
	t.Logf("answer: %v; provider calls %d; stored attempts %d, last_error %q, lease %q", err, wx.Calls("/cgi-bin/token")-calls, c.Attempts, c.LastError, c.LeaseOwner)
	if c.Attempts != 0 || c.LastError != "" {
		t.Errorf("a lease that no longer fitted was recorded as a failed refresh (attempts %d, last_error %q); want it released with nothing recorded", c.Attempts, c.LastError)
	}
}

// Probe (sound at 6676ebb): a confirm whose transaction applied but whose
// answer was lost (the connection reset after forwarding) is retried and
// recognised as its own: 200, one grant, one event.
func TestConfirmThroughAResetTransaction(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	sink := eventQueueFor(t, `{"source":["tokenbroker"],"detail-type":["Connection Authorized"]}`)
	f.b.ReturnToAllowlist = []string{"https://app.test"}
	k := store.Key{Provider: devstack.OAuth2, Connection: "sec-confirm-reset"}
	res, err := f.b.StartAuthorization(ctx, broker.AuthorizeRequest{Key: k, Confirm: true, ReturnTo: "https://app.test/x"})
	if err != nil {
		t.Fatal(err)
	}
	code, state := followAuthorize(t, res.AuthorizeURL)
	cb, err := f.b.CompleteAuthorization(ctx, broker.CallbackRequest{Provider: k.Provider, Code: code, State: state})
	if err != nil || cb.Err != nil {
		t.Fatal(err, cb.Err)
	}
	proxy.Inject("TransactWriteItems", ddbfault.Fault{Kind: ddbfault.ResetAfterForward, Match: "claimed"}, 1)
	_, err = f.b.Confirm(ctx, broker.ConfirmRequest{Key: k, ConnectID: cb.ConnectID})
	if proxy.Injected("TransactWriteItems") != 1 {
		t.Fatal("the reset never happened")
	}
	if err != nil {
		t.Errorf("confirm through a reset: %v", err)
	}
	if evs := eventsAbout(receiveAll(t, sink), k); len(evs) != 1 {
		t.Errorf("%d Connection Authorized events, want 1", len(evs))
	}
}
