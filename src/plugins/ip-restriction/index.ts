/**
 * ip-restriction: allows or refuses requests by the client IP the gateway computed
 * (ctx.clientIp: the peer, or X-Forwarded-For only when the peer is in trusted_proxies). Deny
 * wins over allow; an address that is not an IP (none known) is refused. IPv4-mapped IPv6
 * addresses (::ffff:10.1.2.3) are matched as the IPv4 address they carry, and IPv4 clients only
 * by IPv4 rules (::/0 is every IPv6 client, not every IPv4 one).
 *
 * Runs in onRequest (before authentication, so refused clients never reach an auth plugin);
 * bound to a consumer it can only act in access, once the consumer is known.
 */
import { BlockList, isIP } from 'node:net';
import { definePlugin, type Reply, type RequestCtx } from '../types.js';
import { TrustedProxies, plainIp } from '../../core/forwarded.js';
import { IpRestrictionConfig } from './schema.js';

const DEFAULT_MESSAGE = 'your IP address is not allowed';

/** IPv4-mapped IPv6 addresses (::ffff:0:0/96): the IPv4 clients of a dual-stack socket. */
const MAPPED = new BlockList();
MAPPED.addSubnet('::ffff:0:0', 96, 'ipv6');

/** Whether a rule is about IPv4 addresses: an IPv4 CIDR, or one inside ::ffff:0:0/96. */
function ipv4Rule(cidr: string): boolean {
  const [addr, bits] = cidr.trim().split('/');
  const family = isIP(addr ?? '');
  if (family === 4) return true;
  return family === 6 && MAPPED.check(addr!, 'ipv6') && (bits === undefined || Number(bits) >= 96);
}

/**
 * A rule list judged per family, as nginx and Kong do: an IPv4 client (or an IPv4-mapped one)
 * only by the IPv4 rules (mapped ones included); an IPv6 rule that merely spans the mapped range
 * (`::/0`, `::/8`) is about IPv6 clients, not every IPv4 one.
 */
function ruleSet(list: readonly string[]): { v4: TrustedProxies; v6: TrustedProxies } {
  return { v4: new TrustedProxies(list.filter(ipv4Rule)), v6: new TrustedProxies(list) };
}
const inSet = (set: { v4: TrustedProxies; v6: TrustedProxies }, ip: string, v4: boolean) => (v4 ? set.v4 : set.v6).has(ip);

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
    const allow = config.allow?.length ? ruleSet(config.allow) : null;
    const deny = config.deny?.length ? ruleSet(config.deny) : null;
    const status = config.status ?? 403;
    /** Requests this binding already judged in onRequest (its access then has nothing to add). */
    const judged = new WeakSet<RequestCtx>();
    const decide = (ctx: RequestCtx): Reply | undefined => {
      const ip = plainIp(ctx.clientIp);
      const family = isIP(ip);
      const v4 = family === 4 || (family === 6 && MAPPED.check(ip, 'ipv6'));
      const allowed = family !== 0 && !(deny !== null && inSet(deny, ip, v4)) && (allow === null || inSet(allow, ip, v4));
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
