package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/provider"
	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

var errQuota = errors.New("quota guard")

// chinaStandardTime is WeChat's clock: its daily quotas reset at midnight
// UTC+8.
var chinaStandardTime = time.FixedZone("CST", 8*3600)

// nextChinaDay is when WeChat's next day (and its daily quotas) begins.
func nextChinaDay(now time.Time) time.Time {
	d := now.In(chinaStandardTime)
	return time.Date(d.Year(), d.Month(), d.Day()+1, 0, 0, 0, 0, chinaStandardTime)
}

// quotaGuard counts WeChat cgi-bin/token calls per AppID (however many
// provider names share it, they share WeChat's quota) per WeChat day, and
// refuses before the budget is gone. stable_token has its own generous
// limit and is not counted.
func (b *Broker) quotaGuard(ctx context.Context, e *env) error {
	if !wechatGlobalByToken(e.cfg) {
		return nil
	}
	budget := e.cfg.DailyQuotaBudget
	day := b.now().In(chinaStandardTime).Format("2006-01-02")
	n, err := e.store.CountCall(ctx, "wechat:"+e.cfg.ClientID, day, budget)
	if errors.Is(err, store.ErrQuotaExhausted) {
		b.Metrics.Count(telemetry.QuotaRefused, 1, map[string]string{"Provider": e.cfg.Name})
		return fmt.Errorf("%w: the daily budget of %d cgi-bin/token calls for AppID %s is spent; calls resume at 00:00 China Standard Time (16:00 UTC) (raise daily_quota_budget only if WeChat's 2000 allows)", errQuota, budget, e.cfg.ClientID)
	}
	if err != nil {
		return err
	}
	b.Metrics.Count(telemetry.QuotaUsed, float64(n), map[string]string{"AppID": e.cfg.ClientID})
	if n*10 >= budget*8 {
		b.log().WarnContext(ctx, "wechat token quota budget almost spent", "provider", e.cfg.Name, "app_id", e.cfg.ClientID, "calls_today", n, "budget", budget)
	}
	return nil
}

// errForceLimit is a forced stable_token call the broker may not make now.
var errForceLimit = errors.New("stable_token force limit")

// wechatStable is WeChat's stable_token mode, whose normal mode hands back
// the current token until its last five minutes.
func wechatStable(cfg provider.Config) bool {
	return cfg.Kind == provider.KindWeChatMP && cfg.TokenAPI == "stable_token"
}

// forcer is a provider client that can replace a machine token before its
// time (WeChat's stable_token with force_refresh).
type forcer interface {
	ForceMachineToken(ctx context.Context) (*provider.TokenSet, error)
}

// forceStable replaces the WeChat global token a caller saw rejected, after
// stable_token's normal mode handed that same token back. WeChat allows 20
// forced calls a day per AppID and ignores one within 30 s of the last, so
// the broker makes at most stable_force_budget of them per AppID per China
// Standard Time day, 30 s apart, counted before the call. Past either limit
// the answer is an *Error wrapping errForceLimit with the time to wait.
func (b *Broker) forceStable(ctx context.Context, e *env, c *store.Connection, hold time.Time) (*provider.TokenSet, error) {
	f, ok := e.client.(forcer)
	if !ok {
		return nil, fmt.Errorf("broker: provider %q cannot force a new token", e.cfg.Name)
	}
	now := b.now()
	if !b.covers(hold, now) {
		return nil, wrap(CodeProviderUnavailable, errForceLimit, "too little time is left to replace %s's token safely; try again", c.Key)
	}
	day := now.In(chinaStandardTime)
	qctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), b.wallClock(hold.Add(-b.budget().needed())))
	_, err := e.store.CountSpacedCall(qctx, "wechat-force:"+e.cfg.ClientID, day.Format("2006-01-02"), e.cfg.StableForceBudget, now, stableForceSpacing)
	cancel()
	var soon *store.TooSoonError
	switch {
	case errors.As(err, &soon):
		// Another name or instance forced a new token a moment ago: normal
		// mode may already hand that one out.
		pctx, pcancel := context.WithDeadline(context.WithoutCancel(ctx), b.wallClock(b.now().Add(b.budget().Provider)))
		ts, terr := e.client.MachineToken(pctx)
		pcancel()
		if terr == nil && ts.AccessToken != "" && ts.AccessToken != c.AccessToken {
			return ts, nil
		}
		return nil, retryLater(soon.Next, now, errForceLimit, "WeChat replaced AppID %s's token less than %v ago and ignores a forced refresh sooner; try again at %s",
			e.cfg.ClientID, stableForceSpacing, soon.Next.Format(time.RFC3339))
	case errors.Is(err, store.ErrQuotaExhausted):
		b.Metrics.Count(telemetry.QuotaRefused, 1, map[string]string{"Provider": e.cfg.Name})
		return nil, retryLater(nextChinaDay(now), now, errForceLimit, "the %d forced stable_token calls allowed today for AppID %s are spent (stable_force_budget); they resume at 00:00 China Standard Time",
			e.cfg.StableForceBudget, e.cfg.ClientID)
	case err != nil:
		return nil, err
	}
	b.log().InfoContext(ctx, "forcing a new WeChat stable token: the caller's rejected token came back", "provider", c.Provider,
		"token_fingerprint", store.Fingerprint(c.AccessToken))
	pctx, pcancel := context.WithDeadline(context.WithoutCancel(ctx), b.wallClock(b.now().Add(b.budget().Provider)))
	defer pcancel()
	return f.ForceMachineToken(pctx)
}
