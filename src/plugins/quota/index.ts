/**
 * quota: `limit` per calendar `period` (hour, day, ISO week, month, year) in `time_zone`, per
 * `by` key. Local quotas live in the node's store and on disk (state_file), so a restart keeps
 * them; `policy: redis` shares them between nodes. The response carries the quota as a second
 * RateLimit-Policy / RateLimit item; over it: 429 with Retry-After = the period's end.
 * Usage per consumer: GET /quotas?consumer=NAME on the admin listener.
 */
import { createHash } from 'node:crypto';
import { definePlugin, type Reply } from '../types.js';
import { byList, limitKey, refreshTest, withTimeout, storeTimeoutMs } from '../limit-key.js';
import { periodOf, validTimeZone, type Period } from '../../state/calendar.js';
import type { QuotaDecision } from '../../state/types.js';
import { MemoryStore } from '../../state/memory.js';
import { QuotaConfig } from './schema.js';

/** Every quota binding of the live config, for usage reports (by consumer). */
export interface QuotaView {
  /** Where it is bound (plans.<plan>.plugins.<i>, services.<i>..., plugins.<i>). */
  where: string;
  /** Counted per consumer alone (`by: consumer`): then usage(consumer) is that consumer's. */
  byConsumer: boolean;
  name: string; limit: number; period: Period; timeZone: string; usage(consumer: string, now?: number): Promise<{ used: number; remaining: number; period: string; resets_at: string }> }
export const quotaViews = new Set<QuotaView>();

export default definePlugin({
  name: 'quota',
  priority: 905,
  description: 'Requests per calendar period (day, month... in a time zone), kept across restarts, shared across nodes with Redis.',
  schema: QuotaConfig,
  scopes: ['global', 'service', 'route', 'consumer'],
  check(config, deps) {
    const out: string[] = [];
    if (!validTimeZone(config.time_zone ?? 'UTC')) out.push(`unknown time zone "${config.time_zone}"`);
    if (config.policy === 'redis' && deps.counters.redis === null) out.push('policy redis needs the top-level redis setting');
    if ((config.cost ?? 1) > config.limit) out.push(`cost ${config.cost} is more than the limit ${config.limit}: every request would be refused`);
    return out;
  },
  create(config, deps) {
    const by = byList(config.by);
    const tz = config.time_zone ?? 'UTC';
    const cost = config.cost ?? 1;
    const fault = config.fault ?? 'open';
    const timeoutMs = storeTimeoutMs(config.timeout, config.policy, deps.counters.redis?.defaultTimeoutMs);
    const store = config.policy === 'redis' ? deps.counters.redis! : deps.counters.local;
    const name = config.name ?? 'quota';
    // A named quota is one count wherever it is bound (moving the binding keeps it); an unnamed
    // one is its binding's own (two services' quotas are not one), known by its owner's name
    // (counterScope, hashed: a bounded key), not its position in the config — adding or moving
    // other services, routes or bindings keeps the count; renaming the service, route, consumer
    // or plan it is bound to starts a new one. The limit is not part of the key: raising it
    // mid-period keeps what was used.
    const owner = createHash('sha256').update(deps.counterScope).digest('base64url').slice(0, 16);
    const base = `q:${config.name !== undefined ? `n=${config.name}` : `at=${owner}`}:${config.period}:${tz}`;
    let warnedAt = -Infinity;
    const decide = async (key: string, end: number): Promise<QuotaDecision | 'unavailable'> => {
      const q = { key, limit: config.limit, cost, periodEnd: end };
      try {
        return await withTimeout(store.quota(q, timeoutMs), timeoutMs);
      } catch (err) {
        if (Date.now() - warnedAt >= 10_000) {
          // (one line per 10 s: a store outage must not write one per request)
          warnedAt = Date.now();
          deps.log.warn({ err: (err as Error).message, plugin: 'quota', fault }, 'quota store failed');
        }
        if (fault === 'open') return 'unavailable';
        if (fault === 'local' && store !== deps.counters.local) return deps.counters.local.quota(q);
        throw err;
      }
    };
    const view: QuotaView = {
      where: deps.where, byConsumer: by.length === 1 && by[0] === 'consumer',
      name, limit: config.limit, period: config.period, timeZone: tz,
      async usage(consumer, now = Date.now()) {
        const p = periodOf(now, config.period, tz);
        const used = await store.quotaUsage(`${base}:${p.id}:c:${consumer}`);
        return { used, remaining: Math.max(0, config.limit - used), period: p.id, resets_at: new Date(p.end).toISOString() };
      },
    };
    quotaViews.add(view);
    const isRefresh = refreshTest(deps);
    const inProcess = store instanceof MemoryStore ? store : null;
    return {
      async access(ctx): Promise<Reply | undefined> {
        if (isRefresh(ctx)) return undefined;
        const now = Date.now();
        const p = periodOf(now, config.period, tz);
        let d: QuotaDecision | 'unavailable';
        const key = `${base}:${p.id}:${limitKey(by, ctx)}`;
        // (this process's own memory, no workers: decided at once, no timer raced against it)
        if (inProcess !== null) d = inProcess.quotaNow({ key, limit: config.limit, cost, periodEnd: p.end });
        else {
          try {
            d = await decide(key, p.end);
          } catch {
            return { code: 'service-overloaded', detail: 'the quota store is unavailable', headers: { 'retry-after': '1' } };
          }
        }
        if (d === 'unavailable') return undefined;
        const resetS = Math.max(1, Math.ceil((p.end - now) / 1000));
        const policy = `"${name}";q=${config.limit};w=${Math.round((p.end - p.start) / 1000)}`;
        const state = `"${name}";r=${d.remaining};t=${resetS}`;
        ctx.limited('quota', d.allowed);
        // Added to the items earlier plugins put (a rate limit's): a refusal lists them all too.
        ctx.addResponseHeader('ratelimit-policy', policy);
        ctx.addResponseHeader('ratelimit', state);
        if (!d.allowed) {
          return { code: 'too-many-requests', detail: `the ${config.period === 'day' ? 'daily' : `${config.period}ly`} quota of ${config.limit} is used up (it resets at ${new Date(p.end).toISOString()})`, headers: { 'retry-after': String(resetS) } };
        }
        return undefined;
      },
      close() {
        quotaViews.delete(view);
      },
    };
  },
});
