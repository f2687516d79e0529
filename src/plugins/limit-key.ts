/** Shared by rate-limit and quota: the `by` setting, the key it makes of a request, the store timeout. */
import { hash } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import type { PluginDeps, RequestCtx } from './types.js';
import { REFRESH_HEADER } from './cache/refresh.js';
import { parseDuration } from '../config/units.js';
import { withDeadline } from '../state/deadline.js';
import { ipNetwork } from '../core/forwarded.js';

const ByItem = Type.String({ pattern: "^(consumer|credential|ip|route|service|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+)$" });

export const By = Type.Optional(Type.Union([ByItem, Type.Array(ByItem, { minItems: 1, uniqueItems: true })], {
  default: 'consumer',
  description: 'What is counted: consumer (the client IP when there is none), credential, ip (the computed client IP; an IPv6 client by its /64), route (its name; an unnamed route by what it matches), service, header:NAME (the client IP when the request has no such header, or an empty one), or a list (combined). A header value is chosen by the client: pair it with an authenticated key. The local store keeps at most 1,000,000 keys per map (rates, quotas); at that cap the least telling go (rate entries closest to expiry, quotas least used) and a warning is logged.',
}));

/** Header values longer than this are counted by their digest. */
const MAX_PLAIN = 64;

export const byList = (by: string | string[] | undefined): string[] => (Array.isArray(by) ? by : [by ?? 'consumer']);

/**
 * The client as an IP key: an IPv4 address, or an IPv6 address's /64 — one host or home gets a
 * /64 and can send from any of its 2^64 addresses (as admin logins and portal sign-ups count).
 */
const clientKey = (ip: string): string => (ip.includes(':') ? `ip:${ipNetwork(ip)}` : `ip:${ip}`);

/** The key parts of a request for `by` (the computed client IP stands in for a missing consumer or credential). */
export function limitKey(by: readonly string[], ctx: RequestCtx): string {
  const parts: string[] = [];
  for (const b of by) {
    switch (b) {
      case 'consumer': parts.push(ctx.consumer ? `c:${ctx.consumer.name}` : ctx.identity ? `i:${ctx.identity}` : clientKey(ctx.clientIp)); break;
      case 'credential': parts.push(ctx.credential ? `cr:${ctx.credential}` : clientKey(ctx.clientIp)); break;
      case 'ip': parts.push(clientKey(ctx.clientIp)); break;
      // (an unnamed route by what it matches, not by its position: CompiledRoute.counterId)
      case 'route': parts.push(`r:${ctx.route.counterId ?? ctx.route.name}`); break;
      case 'service': parts.push(`s:${ctx.service.name}`); break;
      default: {
        // A request without the header is counted by its client IP (as Kong does), not in one
        // bucket shared by every such request; so is an empty value (a client library sending
        // `X-Api-Key: $UNSET`): any client could spend that one bucket for all of them.
        const v = ctx.header(b.slice(7).toLowerCase());
        // A long value (the client's to choose, up to the header size limit) counts by its
        // digest: counters in memory and Redis keep a bounded key per client.
        parts.push(v === undefined || v === '' ? clientKey(ctx.clientIp) : v.length > MAX_PLAIN ? `hd:${hash('sha256', v, 'base64url')}` : `h:${v}`);
      }
    }
  }
  return parts.join('|');
}

/**
 * How long a counter decision may take before `fault` applies: the binding's `timeout`, else
 * (Redis) the top-level `redis.timeout`, else 50 ms. The node-local store is exact by
 * contract: with workers it is the primary, one IPC round trip away, which a busy or
 * CPU-starved node can delay past 50 ms with nothing wrong — failing open then over-admits
 * (seen: 126 of a limit of 100 on a loaded 2-core machine). It gets at least the IPC
 * channel's own bound (1 s).
 */
export function storeTimeoutMs(timeout: string | number | undefined, policy: string | undefined, redisDefaultMs?: number): number {
  const ms = timeout !== undefined ? parseDuration(timeout) : policy === 'redis' && redisDefaultMs !== undefined ? redisDefaultMs : 50;
  // (capped at what a timer can hold: past 2^31-1 ms Node fires it at once)
  return Math.min(Math.max(ms, policy === 'redis' ? 0 : 1000), 2 ** 31 - 1);
}

/** A store's answer, or an error once `ms` passed (the limit's `fault` applies then). */
export const withTimeout = <T>(p: Promise<T>, ms: number): Promise<T> => withDeadline(p, ms, `the counter store did not answer within ${ms} ms`);

/**
 * A test for the gateway's own stale-while-revalidate refresh (cache/refresh.ts: it comes on
 * behalf of a client whose request was counted already). Limits let it through uncounted, as
 * nginx's limit_req does its background-update subrequests: one request of the client is one
 * unit of its limits, not two. The refresh carries this node's secret token: a client cannot
 * pass as one.
 */
export function refreshTest(deps: PluginDeps): (ctx: RequestCtx) => boolean {
  const refresher = deps.caches?.refresher;
  if (refresher === undefined) return () => false;
  return (ctx) => {
    // A refresh comes from this host to its own listener (source address = the listener's):
    // any other peer's fields are not looked at (node builds req.headers on first read).
    const s = ctx.req.socket as { remoteAddress?: string; localAddress?: string } | null;
    if (s === null || s.remoteAddress === undefined || s.remoteAddress !== s.localAddress) return false;
    const t = ctx.header(REFRESH_HEADER);
    return t !== undefined && refresher.valid(t);
  };
}
