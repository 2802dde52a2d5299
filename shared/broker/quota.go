package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tokenbroker/tokenbroker/shared/store"
	"github.com/tokenbroker/tokenbroker/shared/telemetry"
)

var errQuota = errors.New("quota guard")

// chinaStandardTime is WeChat's clock: its daily quotas reset at midnight
// UTC+8.
var chinaStandardTime = time.FixedZone("CST", 8*3600)

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
