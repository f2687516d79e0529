/**
 * ip-restriction: allows or refuses requests by the client IP the gateway computed
 * (ctx.clientIp: the peer, or X-Forwarded-For only when the peer is in trusted_proxies). Deny
 * wins over allow; an address that is not an IP (none known) is refused. IPv4-mapped IPv6
 * addresses (::ffff:10.1.2.3) are matched as the IPv4 address they carry.
 *
 * Runs in onRequest (before authentication, so refused clients never reach an auth plugin);
 * bound to a consumer it can only act in access, once the consumer is known.
 */
import { isIP } from 'node:net';
import { definePlugin, type Reply, type RequestCtx } from '../types.js';
import { TrustedProxies, plainIp } from '../../core/forwarded.js';
import { IpRestrictionConfig } from './schema.js';

const DEFAULT_MESSAGE = 'your IP address is not allowed';

/** One message per bad entry, naming its list and index. */
function cidrProblems(field: string, list: readonly string[] | undefined): string[] {
  const out: string[] = [];
  list?.forEach((c, i) => {
    try {
      new TrustedProxies([c]);
    } catch (e) {
      out.push(`${field}[${i}]: ${(e as Error).message}`);
    }
  });
  return out;
}

export default definePlugin({
  name: 'ip-restriction',
  priority: 990,
  description: 'Allows or refuses requests by client IP (IPv4/IPv6 CIDRs; deny wins), before authentication.',
  schema: IpRestrictionConfig,
  scopes: ['global', 'service', 'route', 'consumer'],
  check(config) {
    const problems = [...cidrProblems('allow', config.allow), ...cidrProblems('deny', config.deny)];
    if ((config.allow?.length ?? 0) + (config.deny?.length ?? 0) === 0) problems.push('allow or deny (a non-empty list of CIDRs) is required');
    return problems;
  },
  create(config) {
    // TrustedProxies is the gateway's CIDR set (node:net BlockList): IPv4 rules match
    // IPv4-mapped IPv6 addresses too.
    const allow = config.allow?.length ? new TrustedProxies(config.allow) : null;
    const deny = config.deny?.length ? new TrustedProxies(config.deny) : null;
    const status = config.status ?? 403;
    /** Requests this binding already judged in onRequest (its access then has nothing to add). */
    const judged = new WeakSet<RequestCtx>();
    const decide = (ctx: RequestCtx): Reply | undefined => {
      const ip = plainIp(ctx.clientIp);
      const allowed = isIP(ip) !== 0 && !(deny !== null && deny.has(ip)) && (allow === null || allow.has(ip));
      if (allowed) return undefined;
      if (status === 404) return { code: 'no-route', detail: config.message ?? `no route matches ${ctx.method} ${ctx.path}` };
      return { code: 'forbidden', detail: config.message ?? DEFAULT_MESSAGE };
    };
    return {
      onRequest(ctx) {
        judged.add(ctx);
        return decide(ctx);
      },
      // Bound to a consumer, it only runs here (the consumer's chain): judged then.
      access(ctx) {
        if (judged.has(ctx)) return undefined;
        return decide(ctx);
      },
    };
  },
});
