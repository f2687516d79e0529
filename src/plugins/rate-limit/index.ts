/**
 * rate-limit: `limit` per `window` (or several `limits`), counted per `by` key with GCRA or a
 * sliding window, in this node's store (`policy: local`, shared by its workers) or in Redis
 * (`policy: redis`, shared by nodes). Every response carries RateLimit-Policy / RateLimit
 * (draft-ietf-httpapi-ratelimit-headers); a refused request gets 429 problem+json with
 * Retry-After. A store that fails or is slower than `timeout` is handled per `fault`.
 */
import { createHash } from 'node:crypto';
import { definePlugin, type Reply, type RequestCtx } from '../types.js';
import { MemoryStore } from '../../state/memory.js';
import { byList, limitKey, refreshTest, withTimeout, storeTimeoutMs } from '../limit-key.js';
import { parseDuration } from '../../config/units.js';
import type { CounterStore, RateDecision, RateQuery } from '../../state/types.js';
import { RateLimitConfig } from './schema.js';

export default definePlugin({
  name: 'rate-limit',
  priority: 910,
  description: 'Requests per window (GCRA or sliding window) per consumer, credential, IP, route, service or header, on this node or across nodes (Redis).',
  schema: RateLimitConfig,
  scopes: ['global', 'service', 'route', 'consumer'],
  check(config, deps) {
    const out: string[] = [];
    if ((config.limit === undefined) !== (config.window === undefined)) out.push('give limit and window together');
    if (config.limit === undefined && !config.limits) out.push('give limit and window, or limits');
    if (config.limit !== undefined && config.limits) out.push('give limit/window or limits, not both');
    for (const l of [...(config.limits ?? []), ...(config.window !== undefined ? [{ window: config.window }] : [])]) {
      if (parseDuration(l.window) < 1) out.push('a window must be at least 1ms');
    }
    if (config.policy === 'redis' && deps.counters.redis === null) out.push('policy redis needs the top-level redis setting');
    const cost = config.cost ?? 1;
    for (const l of [...(config.limits ?? []), ...(config.limit !== undefined ? [{ limit: config.limit }] : [])]) {
      if (cost > l.limit) out.push(`cost ${cost} is more than the limit ${l.limit}: every request would be refused`);
    }
    return out;
  },
  create(config, deps) {
    const windows = (config.limits ?? [{ limit: config.limit!, window: config.window! }]).map((l) => ({ limit: l.limit, periodMs: parseDuration(l.window) }));
    const by = byList(config.by);
    const algorithm = config.algorithm ?? 'gcra';
    const cost = config.cost ?? 1;
    const fault = config.fault ?? 'open';
    const timeoutMs = storeTimeoutMs(config.timeout, config.policy, deps.counters.redis?.defaultTimeoutMs);
    const store: CounterStore = config.policy === 'redis' ? deps.counters.redis! : deps.counters.local;
    // Counters survive reloads that keep the binding's owner (service, route, consumer or plan
    // by name: counterScope, not its position in the config), windows, algorithm and `by`.
    const scope = createHash('sha256').update(`${deps.counterScope}|${algorithm}|${JSON.stringify(windows)}|${by.join(',')}`).digest('base64url').slice(0, 12);
    const name = config.name ?? 'default';
    // (a window of 100 ms and one of 400 ms are not both "-0s": the name says what the window is)
    const names = windows.map((w) => (windows.length === 1 ? name : `${name}-${w.periodMs % 1000 === 0 ? `${w.periodMs / 1000}s` : `${w.periodMs}ms`}`));
    // w in whole seconds, rounded up: the reset (t, at most a window) is never past it
    const seconds = windows.map((w) => Math.max(1, Math.ceil(w.periodMs / 1000)));
    const policyHeader = windows.map((w, i) => `"${names[i]}";q=${w.limit};w=${seconds[i]}`).join(', ');
    /** The reset in whole seconds, never past the window (a sliding window's count takes up to two to slide out). */
    const resetS = (i: number, d: RateDecision) => Math.min(Math.ceil(d.resetMs / 1000), seconds[i]!);
    const rateLimitField = (i: number, d: RateDecision) => `"${names[i]}";r=${d.remaining};t=${resetS(i, d)}`;

    const queriesFor = (key: string): RateQuery[] => windows.map((w) => ({ key: `rl:${scope}:${key}`, limit: w.limit, periodMs: w.periodMs, cost, algorithm }));
    let warnedAt = -Infinity;
    const decide = async (key: string): Promise<RateDecision[] | 'unavailable'> => {
      const queries = queriesFor(key);
      try {
        return await withTimeout(store.rate(queries, timeoutMs), timeoutMs);
      } catch (err) {
        if (Date.now() - warnedAt >= 10_000) {
          // (one line per 10 s: a store outage must not write one per request)
          warnedAt = Date.now();
          deps.log.warn({ err: (err as Error).message, plugin: 'rate-limit', fault }, 'rate limit store failed');
        }
        if (fault === 'open') return 'unavailable';
        if (fault === 'local' && store !== deps.counters.local) return deps.counters.local.rate(queries);
        throw Object.assign(new Error('rate limit store unavailable'), { closed: true });
      }
    };

    /** The headers and answer for a set of decisions. */
    const judge = (ctx: RequestCtx, decisions: RateDecision[] | 'unavailable'): Reply | undefined => {
      if (decisions === 'unavailable') return undefined;
      // The window closest to its limit is the one reported; of several as close, the one the
      // client waits longest for (refused: Retry-After's window, not a 1 s one listed first).
      let worst = 0;
      for (let i = 1; i < decisions.length; i++) {
        const x = decisions[i]!;
        const w = decisions[worst]!;
        if (x.remaining < w.remaining || (x.remaining === w.remaining && (x.retryAfterMs > w.retryAfterMs || (x.retryAfterMs === w.retryAfterMs && x.resetMs > w.resetMs)))) worst = i;
      }
      const d = decisions[worst]!;
      let refused = false;
      for (const x of decisions) if (!x.allowed) refused = true;
      ctx.limited('rate-limit', !refused);
      if (!refused) {
        if (config.headers !== false) {
          ctx.addResponseHeader('ratelimit-policy', policyHeader);
          ctx.addResponseHeader('ratelimit', rateLimitField(worst, d));
        }
        if (config.legacy_headers) {
          ctx.addResponseHeader('x-ratelimit-limit', String(windows[worst]!.limit));
          ctx.addResponseHeader('x-ratelimit-remaining', String(d.remaining));
          ctx.addResponseHeader('x-ratelimit-reset', String(resetS(worst, d)));
        }
        return undefined;
      }
      const headers: Record<string, string> = {};
      if (config.headers !== false) {
        headers['ratelimit-policy'] = policyHeader;
        headers['ratelimit'] = rateLimitField(worst, d);
      }
      if (config.legacy_headers) {
        headers['x-ratelimit-limit'] = String(windows[worst]!.limit);
        headers['x-ratelimit-remaining'] = String(d.remaining);
        headers['x-ratelimit-reset'] = String(resetS(worst, d));
      }
      const retry = Math.max(1, Math.ceil(Math.max(...decisions.map((x) => x.retryAfterMs)) / 1000));
      headers['retry-after'] = String(retry);
      return { code: 'too-many-requests', detail: `rate limit exceeded: try again in ${retry} s`, headers };
    };
    // This process's own memory (one process, no workers): decided synchronously, nothing to wait for.
    const inProcess = store instanceof MemoryStore ? store : null;
    const isRefresh = refreshTest(deps);

    return {
      access(ctx) {
        if (isRefresh(ctx)) return undefined;
        const key = limitKey(by, ctx);
        if (inProcess !== null) return judge(ctx, inProcess.rateNow(queriesFor(key)));
        return decide(key).then((d) => judge(ctx, d), (): Reply => ({ code: 'service-overloaded', detail: 'the rate limiter is unavailable', headers: { 'retry-after': '1' } }));
      },
    };
  },
});
