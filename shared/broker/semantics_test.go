package broker_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/tokenbroker/tokenbroker/shared/broker"
	"github.com/tokenbroker/tokenbroker/shared/config"
	"github.com/tokenbroker/tokenbroker/shared/local/devstack"
	"github.com/tokenbroker/tokenbroker/shared/local/emulator"
	"github.com/tokenbroker/tokenbroker/shared/local/localaws"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

// freshConfig makes the fixture's brokers see providers added to SSM
// after they loaded their configuration.
func (f *fixture) freshConfig(bs ...*broker.Broker) {
	for _, b := range append(bs, f.b) {
		b.Config = &config.Loader{SSM: localaws.SSMClient(stack.Endpoints.SSM), Prefix: f.env["SSM_PREFIX"]}
	}
}

// oauth2Provider serves a dedicated OAuth 2.0 emulator and registers it
// as a provider under a unique name.
func oauth2Provider(t *testing.T, f *fixture, prefix string, tune func(*emulator.OAuth2)) (string, *emulator.OAuth2) {
	t.Helper()
	name := localaws.UniqueName(prefix)
	o2 := emulator.NewOAuth2(devstack.OAuth2ClientID, devstack.OAuth2Secret, "https://broker.test/callback/"+name)
	if tune != nil {
		tune(o2)
	}
	srv := startServer(t, o2)
	if err := f.stack.PutProvider(context.Background(), name, map[string]any{"kind": "oauth2", "client_id": devstack.OAuth2ClientID,
		"authorize_url": srv + "/authorize", "token_url": srv + "/token", "revoke_url": srv + "/revoke", "auth_style": "basic"}, devstack.OAuth2Secret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	return name, o2
}

// Defect 5: POST …/refresh on a token that never expires and came with
// no refresh token (GitHub OAuth Apps) marked the connection needs_reauth.
// A forced refresh there answers not_refreshable and changes nothing.
func TestForcedRefreshOfATokenThatCannotBeRefreshed(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, o2 := oauth2Provider(t, f, "ghapp", func(o *emulator.OAuth2) { o.ExpiresIn, o.NoRefresh = 0, true })
	k := store.Key{Provider: name, Connection: "octocat"}
	f.authorize(t, k)
	first, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	for _, rejected := range []string{"", first.AccessToken} {
		if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: rejected}); broker.ErrorCode(err) != broker.CodeNotRefreshable {
			t.Fatalf("forced refresh (rejected %v) of a token that cannot be refreshed: %v, want not_refreshable", rejected != "", err)
		}
	}
	if st, _ := f.b.Status(ctx, k); st.Status != store.StatusActive || st.LastError != "" {
		t.Fatalf("status %+v", st)
	}
	again, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil || again.AccessToken != first.AccessToken || !again.ExpiresAt.IsZero() {
		t.Fatalf("after: %v", err)
	}
	if o2.Calls("/token") != 1 {
		t.Fatalf("%d calls to the token endpoint, want only the code exchange", o2.Calls("/token"))
	}
}

// Defect 6: a min_ttl at or above the provider's lifetime refreshed on
// every request.
func TestUnsatisfiableMinTTLRefreshesOncePerToken(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	k := store.Key{Provider: devstack.OAuth2, Connection: "hour-long"}
	f.authorize(t, k)
	f.clock.Add(30 * time.Minute)
	calls := stack.OAuth2.RefreshCalls()
	var first string
	for i := 0; i < 5; i++ {
		tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = tok.AccessToken
		} else if tok.AccessToken != first {
			t.Fatalf("request %d got another token", i+1)
		}
		f.clock.Add(time.Second)
	}
	if got := stack.OAuth2.RefreshCalls() - calls; got != 1 {
		t.Fatalf("five requests for min_ttl=3600 on 1-hour tokens caused %d refreshes, want 1", got)
	}
}

// A forced refresh keeps its word: each one that names the stored token
// (or none) reaches the provider and answers a token issued after it
// arrived; one that names a token already replaced gets the replacement
// with no provider call.
func TestForcedRefreshesReplaceTheRejectedToken(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	k := store.Key{Provider: devstack.OAuth2, Connection: localaws.UniqueName("forced")}
	f.authorize(t, k)
	calls := stack.OAuth2.RefreshCalls()
	prev, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{prev.AccessToken: true}
	for i := range 3 {
		rejected := ""
		if i == 1 {
			rejected = prev.AccessToken
		}
		tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: rejected})
		if err != nil || seen[tok.AccessToken] {
			t.Fatalf("forced refresh %d answered a token already seen: %v", i+1, err)
		}
		seen[tok.AccessToken] = true
		prev = tok
	}
	if got := stack.OAuth2.RefreshCalls() - calls; got != 3 {
		t.Fatalf("%d refreshes for three forced requests, want 3", got)
	}
	// Naming a replaced token: the current one, nothing asked.
	for range 5 {
		tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true, Rejected: "not-the-stored-token"})
		if err != nil || tok.AccessToken != prev.AccessToken {
			t.Fatalf("forced refresh naming an old token: %v", err)
		}
	}
	if got := stack.OAuth2.RefreshCalls() - calls; got != 3 {
		t.Fatalf("after naming old tokens: %d refreshes, want 3", got)
	}
}

// wechatTokenProvider registers a WeChat provider on cgi-bin/token.
func wechatTokenProvider(t *testing.T, f *fixture, budget int) (string, *emulator.WeChat) {
	t.Helper()
	// An AppID of its own: two token-mode names on one AppID are refused
	// (each fetch would kill the other's token).
	appID := "wx" + strings.ReplaceAll(localaws.UniqueName("t"), "-", "")
	wx := emulator.NewWeChat(appID, devstack.WeChatSecret)
	wx.SetClock(f.clock.Now)
	name := localaws.UniqueName("wxtok")
	cfg := map[string]any{"kind": "wechat_mp", "client_id": appID, "api_base": startServer(t, wx), "token_api": "token"}
	if budget > 0 {
		cfg["daily_quota_budget"] = budget
	}
	if err := f.stack.PutProvider(context.Background(), name, cfg, devstack.WeChatSecret); err != nil {
		t.Fatal(err)
	}
	return name, wx
}

// Defect 6, WeChat: with cgi-bin/token each fetch kills the token others
// hold and spends the daily quota: 25 requests for min_ttl=7200 must not
// become 18 calls.
func TestWeChatTokenModeFetchesOnlyWhenUnusable(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, wx := wechatTokenProvider(t, f, 0)
	f.freshConfig()
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	calls := wx.Calls("/cgi-bin/token")
	var first *broker.Token
	for i := 0; i < 25; i++ {
		tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 2 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = tok
		}
		if tok.AccessToken != first.AccessToken || !wx.ValidGlobal(tok.AccessToken) {
			t.Fatalf("request %d got another or a dead token", i+1)
		}
		// What the broker reports never outlives the token.
		if tok.ExpiresAt.After(first.ExpiresAt) {
			t.Fatalf("request %d: expires_at moved later", i+1)
		}
		f.clock.Add(time.Minute)
	}
	if got := wx.Calls("/cgi-bin/token") - calls; got != 1 {
		t.Fatalf("%d cgi-bin/token calls for 25 requests, want 1", got)
	}
}

// WeChat's quota is per AppID and per WeChat day (midnight UTC+8): it
// resets at 16:00 UTC.
func TestWeChatQuotaPerAppIDAndChinaDay(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	name, wx := wechatTokenProvider(t, f, 3)
	f.freshConfig()
	// 15:00 UTC is 23:00 in China: one hour before WeChat's day ends.
	now := f.clock.Now()
	f.clock.Add(time.Date(now.Year(), now.Month(), now.Day()+1, 15, 0, 0, 0, time.UTC).Sub(now))
	k := store.Key{Provider: name, Connection: broker.MachineConnection}
	force := func() error {
		f.clock.Add(broker.MaxShortBackoff)
		_, err := f.b.Token(ctx, broker.TokenRequest{Key: k, Force: true})
		return err
	}
	for i := range 3 {
		if err := force(); err != nil {
			t.Fatalf("call %d within the budget: %v", i+1, err)
		}
	}
	if err := force(); broker.ErrorCode(err) != broker.CodeProviderUnavailable {
		t.Fatalf("4th call: %v", err)
	}
	if wx.Calls("/cgi-bin/token") != 3 {
		t.Fatalf("%d calls reached WeChat, want 3", wx.Calls("/cgi-bin/token"))
	}
	// 16:05 UTC: a new day in China, though not in UTC.
	f.clock.Add(time.Hour + 5*time.Minute)
	if err := force(); err != nil {
		t.Fatalf("after midnight in China: %v", err)
	}
	if wx.Calls("/cgi-bin/token") != 4 {
		t.Fatalf("%d calls reached WeChat, want 4", wx.Calls("/cgi-bin/token"))
	}
}

// Defect 8: an instance whose cached key ring predates a new active key
// could not open values sealed under it.
func TestNewActiveKeyIsPickedUpOnFirstSight(t *testing.T) {
	ctx := context.Background()
	prefix := "/" + localaws.UniqueName("rotation")
	client := localaws.SSMClient(stack.Endpoints.SSM)
	put := func(name, value string, typ ssmtypes.ParameterType) {
		if _, err := client.PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String(prefix + name), Value: aws.String(value),
			Type: typ, Overwrite: aws.Bool(true)}); err != nil {
			t.Fatal(err)
		}
	}
	ring := func(active string, ids ...string) string {
		keys := map[string]string{}
		for i, id := range ids {
			keys[id] = base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("%032d", i+1)))
		}
		raw, _ := json.Marshal(map[string]any{"active": active, "keys": keys})
		return string(raw)
	}
	cfg, _ := json.Marshal(stack.ProviderConfigs()[devstack.OAuth2])
	put("/providers/"+devstack.OAuth2+"/config", string(cfg), ssmtypes.ParameterTypeString)
	put("/providers/"+devstack.OAuth2+"/client_secret", devstack.OAuth2Secret, ssmtypes.ParameterTypeSecureString)
	put("/token-keys", ring("k1", "k1"), ssmtypes.ParameterTypeSecureString)
	f := newFixture(t, map[string]string{"SSM_PREFIX": prefix})
	k := store.Key{Provider: devstack.OAuth2, Connection: "rotated"}
	f.authorize(t, k) // this instance now holds the k1-only ring
	// The operator adds k2 and makes it active; a new instance seals with it.
	put("/token-keys", ring("k2", "k1", "k2"), ssmtypes.ParameterTypeSecureString)
	fresh := f.sibling(t)
	f.clock.Add(broker.MaxShortBackoff)
	sealedK2, err := fresh.Token(ctx, broker.TokenRequest{Key: k, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k})
	if err != nil || tok.AccessToken != sealedK2.AccessToken {
		t.Fatalf("old instance reading a value sealed under the new key: %v", err)
	}
}

// Defect 9: the refresher held a global slot while waiting for a slow
// provider's slot, so every other provider waited behind it.
func TestSlowProviderDoesNotStallOthers(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	slow, slowEmu := oauth2Provider(t, f, "slow", nil)
	fast, fastEmu := oauth2Provider(t, f, "fast", nil)
	const n = 6
	for i := 0; i < n; i++ {
		f.authorize(t, store.Key{Provider: slow, Connection: fmt.Sprintf("s%d", i)})
		f.authorize(t, store.Key{Provider: fast, Connection: fmt.Sprintf("f%d", i)})
	}
	f.clock.Add(56 * time.Minute)
	f.b.Concurrency, f.b.ProviderConcurrency = 4, 2
	gate := make(chan struct{})
	slowEmu.Inject("/token", emulator.Fault{Gate: gate}, n)
	var sum *broker.Summary
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		sum, err = f.b.RefreshDue(ctx)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for fastEmu.RefreshCalls() < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	fastDone := fastEmu.RefreshCalls()
	close(gate)
	<-done
	if fastDone != n {
		t.Fatalf("with the slow provider hanging, %d of %d refreshes of the other provider happened", fastDone, n)
	}
	if err != nil || sum.Refreshed != 2*n {
		t.Fatalf("summary %+v, %v", sum, err)
	}
	if slowEmu.MaxInFlight() != 2 {
		t.Fatalf("the slow provider had %d refreshes in flight, want its limit 2", slowEmu.MaxInFlight())
	}
}

// Due items are read page by page: with one provider hanging, the
// refresher reads about a page ahead, not the whole backlog.
func TestRefresherReadsDueItemsPageByPage(t *testing.T) {
	ctx := context.Background()
	f, proxy := faultyFixture(t)
	name, emu := oauth2Provider(t, f, "backlog", nil)
	const n, page = 60, 5
	for i := 0; i < n; i++ {
		f.authorize(t, store.Key{Provider: name, Connection: fmt.Sprintf("b%02d", i)})
	}
	f.clock.Add(56 * time.Minute)
	f.b.Store.DuePageSize = page
	f.freshConfig() // the store copy with the page size is made on first use
	f.b.Concurrency, f.b.ProviderConcurrency = 2, 2
	gate := make(chan struct{})
	emu.Inject("/token", emulator.Fault{Gate: gate}, n)
	shardOf := `"` + name + `#`
	queries := proxy.SeenMatching("Query", shardOf)
	done := make(chan *broker.Summary)
	go func() {
		sum, err := f.b.RefreshDue(ctx)
		if err != nil {
			t.Error(err)
		}
		done <- sum
	}()
	for emu.Calls("/token") < 2 {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let the reader run as far ahead as it would
	read := proxy.SeenMatching("Query", shardOf) - queries
	close(gate)
	sum := <-done
	if sum.Refreshed != n {
		t.Fatalf("summary %+v", sum)
	}
	// Two in flight, a queue of one page and one page being handed over:
	// about a dozen items, three or four pages of five, where the whole
	// backlog takes sixteen or more (eight shards, two pages each).
	if read < 1 || read > 6 {
		t.Fatalf("%d due-index pages read while the provider hung, want 1 to 6 (a page or so ahead)", read)
	}
}

// A refresh that keeps failing is announced once per streak, when the
// access token has expired or after FailingAfter attempts, and its end
// once; the status carries the last error meanwhile.
func TestRefreshFailingAndRecoveredAnnouncedOncePerStreak(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sink := eventQueueFor(t, `{"source":["tokenbroker"],"detail-type":["Connection Refresh Failing","Connection Recovered"]}`)
	name, emu := oauth2Provider(t, f, "streak", func(o *emulator.OAuth2) { o.ExpiresIn = 24 * time.Hour })
	k := store.Key{Provider: name, Connection: "flaky-streak"}
	f.authorize(t, k)
	emu.Inject("/token", emulator.HTMLError(503), broker.FailingAfter+2)
	for attempt := 1; attempt <= broker.FailingAfter+2; attempt++ {
		c, _ := f.store.Get(ctx, k, true)
		f.clock.Add(c.RefreshAt.Sub(f.clock.Now()) + time.Second)
		sum, err := f.b.RefreshDue(ctx)
		if err != nil || sum.FailedTransient != 1 {
			t.Fatalf("attempt %d: %+v %v", attempt, sum, err)
		}
	}
	st, _ := f.b.Status(ctx, k)
	if st.Status != store.StatusActive || st.LastError == "" {
		t.Fatalf("status during the streak: %+v", st)
	}
	c, _ := f.store.Get(ctx, k, true)
	f.clock.Add(c.RefreshAt.Sub(f.clock.Now()) + time.Second)
	if sum, err := f.b.RefreshDue(ctx); err != nil || sum.Refreshed != 1 {
		t.Fatalf("recovery: %+v %v", sum, err)
	}
	evs := eventsAbout(receiveAll(t, sink), k)
	var types []string
	for _, ev := range evs {
		types = append(types, ev["detail-type"].(string))
	}
	if len(types) != 2 || types[0] != telemetry.DetailTypeRefreshFailing || types[1] != telemetry.DetailTypeRecovered {
		t.Fatalf("events %v, want one Refresh Failing then one Recovered", types)
	}
	d := evs[0]["detail"].(map[string]any)
	if d["attempts"] != float64(broker.FailingAfter) || d["last_error"] == "" || d["expires_at"] == nil {
		t.Fatalf("failing detail %v", d)
	}
	if got := f.count(t, telemetry.RefreshFailing, map[string]string{"Provider": k.Provider}); got != 1 {
		t.Fatalf("RefreshFailing metric %v, want 1", got)
	}
}

// A refresh failing after the access token has expired is announced at
// once, not after FailingAfter attempts.
func TestRefreshFailingAfterExpiryAnnouncedAtOnce(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sink := eventQueueFor(t, `{"source":["tokenbroker"],"detail-type":["Connection Refresh Failing"]}`)
	k := store.Key{Provider: devstack.OAuth2, Connection: "expired-streak"}
	f.authorize(t, k)
	f.clock.Add(2 * time.Hour)
	stack.OAuth2.Inject("/token", emulator.HTMLError(502), 1)
	if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k}); broker.ErrorCode(err) != broker.CodeProviderUnavailable {
		t.Fatalf("expired token, failing provider: %v", err)
	}
	if evs := eventsAbout(receiveAll(t, sink), k); len(evs) != 1 {
		t.Fatalf("%d Refresh Failing events, want 1", len(evs))
	}
}

// A notice whose writer died before publishing it is published by the
// refresher, once.
func TestOrphanedNoticeIsPublishedByTheRefresher(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sink := eventQueue(t)
	k := orphanNotice(t, f, "orphan-notice")
	if evs := eventsAbout(receiveAll(t, sink), k); len(evs) != 0 {
		t.Fatalf("%d events before the refresher ran", len(evs))
	}
	refresher := f.sibling(t)
	f.clock.Add(store.NoticeGrace + time.Second)
	sum, err := refresher.RefreshDue(ctx)
	if err != nil || sum.Notices != 1 {
		t.Fatalf("refresher: %+v %v", sum, err)
	}
	if sum, _ := refresher.RefreshDue(ctx); sum.Notices != 0 {
		t.Fatalf("second tick published %d notices again", sum.Notices)
	}
	if evs := eventsAbout(receiveAll(t, sink), k); len(evs) != 1 {
		t.Fatalf("%d events, want 1", len(evs))
	}
	if got := f.count(t, telemetry.EventsFailed, nil); got != 1 {
		t.Fatalf("EventsFailed %v, want 1", got)
	}
}

// orphanNotice leaves a needs_reauth notice of connection conn unsent:
// EventBridge refuses the writer's publish, which as far as the event goes
// is as if the writer had died right after its write.
func orphanNotice(t *testing.T, f *fixture, conn string) store.Key {
	t.Helper()
	k := store.Key{Provider: devstack.OAuth2, Connection: conn}
	f.authorize(t, k)
	f.clock.Add(broker.MaxShortBackoff)
	stack.OAuth2.Inject("/token", emulator.OAuthError(400, "invalid_grant", "gone"), 1)
	writer := f.b.Notifier
	f.b.Notifier = failingNotifier{}
	defer func() { f.b.Notifier = writer }()
	if _, err := f.b.Token(context.Background(), broker.TokenRequest{Key: k, Force: true}); broker.ErrorCode(err) != broker.CodeNeedsReauth {
		t.Fatal(err)
	}
	return k
}

type failingNotifier struct{}

func (failingNotifier) Publish(context.Context, string, []byte) error {
	return fmt.Errorf("eventbridge unavailable")
}

// SinaCloud's unauthorized_client on a refresh means the app may not
// refresh at all: the token keeps serving until it expires, the provider is
// not asked again, and at expiry the connection needs its user, with one
// event that names the missing permission.
func TestSinaCloudWithoutRefreshPermission(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sink := eventQueue(t)
	name := localaws.UniqueName("sinanorefresh")
	emu := emulator.NewSinaCloud(devstack.SinaClientID, devstack.SinaSecret, "https://broker.test/callback/"+name)
	srv := startServer(t, emu)
	if err := f.stack.PutProvider(ctx, name, map[string]any{"kind": "sinacloud", "client_id": devstack.SinaClientID, "api_base": srv}, devstack.SinaSecret); err != nil {
		t.Fatal(err)
	}
	f.freshConfig()
	k := store.Key{Provider: name, Connection: "no-refresh"}
	f.authorize(t, k)
	first, _ := f.store.Get(ctx, k, true)
	emu.NoRefreshPermission = true
	f.clock.Add(6*24*time.Hour + 12*time.Hour) // due (a week's token, 10% lead)
	tok, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 24 * time.Hour})
	if err != nil || tok.AccessToken != first.AccessToken {
		t.Fatalf("a refused refresh must keep serving the token: %v", err)
	}
	st, _ := f.b.Status(ctx, k)
	if st.Status != store.StatusActive || !strings.Contains(st.LastError, "refresh permission") {
		t.Fatalf("status %+v", st)
	}
	if got := f.count(t, telemetry.RefreshNotPermitted, map[string]string{"Provider": name}); got != 1 {
		t.Fatalf("RefreshNotPermitted %v, want 1", got)
	}
	// Nothing more is asked of the provider while the refusal is
	// remembered (DenialMemory), by requests or ticks.
	calls := emu.Calls("/oauth2/access_token")
	for i := 0; i < 3; i++ {
		f.clock.Add(15 * time.Minute)
		if _, err := f.b.Token(ctx, broker.TokenRequest{Key: k, MinTTL: 24 * time.Hour}); err != nil {
			t.Fatal(err)
		}
		if sum, err := f.b.RefreshDue(ctx); err != nil || sum.Due != 0 {
			t.Fatalf("due while the refusal is remembered: %+v %v", sum, err)
		}
	}
	if emu.Calls("/oauth2/access_token") != calls {
		t.Fatal("the provider was asked again while its refusal is remembered")
	}
	// At expiry the refresher asks once more, is refused, and ends it.
	f.clock.Add(first.ExpiresAt.Sub(f.clock.Now()) + time.Second)
	sum, err := f.b.RefreshDue(ctx)
	if err != nil || sum.NeedsReauth != 1 {
		t.Fatalf("at expiry: %+v %v", sum, err)
	}
	calls++
	evs := eventsAbout(receiveAll(t, sink), k)
	if len(evs) != 1 || !strings.Contains(fmt.Sprint(evs[0]["detail"]), "refresh permission") {
		t.Fatalf("events %v", evs)
	}
	if emu.Calls("/oauth2/access_token") != calls {
		t.Fatal("the provider was asked at expiry")
	}
}
