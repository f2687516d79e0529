/**
 * Client address and the X-Forwarded-* / Forwarded headers. Inbound forwarding headers are
 * believed only from a peer inside `trusted_proxies`; from anyone else they are discarded and
 * replaced. The computed client IP is what logs, limits and ACLs use.
 */
import { BlockList, isIP } from 'node:net';

export class TrustedProxies {
  private readonly list = new BlockList();
  readonly empty: boolean;

  /** Throws with a message naming the bad entry. */
  constructor(cidrs: readonly string[]) {
    for (const raw of cidrs) {
      const [addr, bits, ...rest] = raw.trim().split('/');
      const family = isIP(addr ?? '');
      if (!family || rest.length) throw new Error(`invalid CIDR "${raw}"`);
      const type = family === 6 ? 'ipv6' : 'ipv4';
      if (bits === undefined) this.list.addAddress(addr!, type);
      else {
        const n = Number(bits);
        if (!/^[0-9]+$/.test(bits) || n > (family === 6 ? 128 : 32)) throw new Error(`invalid CIDR "${raw}"`);
        this.list.addSubnet(addr!, n, type);
      }
    }
    this.empty = cidrs.length === 0;
  }

  has(ip: string): boolean {
    if (this.empty) return false;
    const family = isIP(ip);
    return family !== 0 && this.list.check(ip, family === 6 ? 'ipv6' : 'ipv4');
  }
}

/** `::ffff:1.2.3.4` -> `1.2.3.4`. */
export function plainIp(addr: string | undefined): string {
  if (!addr) return '';
  return addr.startsWith('::ffff:') && addr.includes('.') ? addr.slice(7) : addr;
}

function stripPortAndBrackets(entry: string): string {
  let s = entry.trim();
  if (s.startsWith('"') && s.endsWith('"')) s = s.slice(1, -1);
  if (s.startsWith('[')) {
    const end = s.indexOf(']');
    return end === -1 ? s : s.slice(1, end);
  }
  // 1.2.3.4:5678 -> 1.2.3.4 (an IPv6 address has more than one colon)
  const c = s.indexOf(':');
  if (c !== -1 && c === s.lastIndexOf(':')) s = s.slice(0, c);
  return s;
}

/**
 * The client IP: the peer, unless the peer is a trusted proxy; then the right-most address in
 * X-Forwarded-For that is not itself a trusted proxy (a malformed entry stops the walk).
 */
export function clientIp(peer: string, xff: string | undefined, trusted: TrustedProxies): string {
  if (!xff || !trusted.has(peer)) return peer;
  const hops = xff.split(',');
  let ip = peer;
  for (let i = hops.length - 1; i >= 0; i--) {
    const candidate = plainIp(stripPortAndBrackets(hops[i]!));
    if (!isIP(candidate)) break;
    ip = candidate;
    if (!trusted.has(candidate)) break;
  }
  return ip;
}

/** The `for=` part of a Forwarded (RFC 7239) element for this hop. */
export function forwardedElement(peer: string): string {
  return isIP(peer) === 6 ? `for="[${peer}]"` : `for=${peer || 'unknown'}`;
}

/** An RFC 7239 node (an X-Forwarded-For entry) as a `for=` value: a token, or quoted (IPv6, a port...). */
function forwardedNode(entry: string): string {
  if (isIP(entry) === 6) return `"[${entry}]"`;
  if (/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(entry)) return entry;
  return `"${entry.replace(/["\\]/g, '\\$&')}"`;
}

/**
 * The Forwarded elements (RFC 7239 §7.4) for the hops a trusted proxy described only in
 * X-Forwarded-For/-Proto/-Host: one `for=` per X-Forwarded-For entry (`unknown` without one),
 * the first with the client's scheme and Host. Without them an upstream that prefers Forwarded
 * (Spring's ForwardedHeaderFilter, Tomcat's RemoteIpValve...) would take the proxy for the
 * client, and this hop's scheme for the client's.
 */
export function forwardedFromX(xff: string | undefined, proto: string | undefined, host: string | undefined): string {
  const nodes: string[] = [];
  for (const e of (xff ?? '').split(',')) {
    const v = e.trim();
    if (v !== '') nodes.push(forwardedNode(v));
  }
  if (nodes.length === 0) nodes.push('unknown');
  let out = `for=${nodes[0]}`;
  if (proto !== undefined) out += `;proto=${proto}`;
  if (host !== undefined) out += `;host="${host}"`;
  for (let i = 1; i < nodes.length; i++) out += `, for=${nodes[i]}`;
  return out;
}

/** One `name=value` pair of a Forwarded element (value a token or a quoted-string), and what follows it. */
const FORWARDED_PAIR = /[\t ]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)[\t ]*=[\t ]*("(?:[^"\\]|\\.)*"|[^;,"\t ]*)[\t ]*([;,]|$)/y;

/**
 * What a trusted proxy that speaks RFC 7239 only (HAProxy's `option forwarded`, nginx or Envoy
 * set up to send Forwarded) says in X-Forwarded-* terms: `for` one entry per element (its node
 * as a plain IP, or `unknown` / an obfuscated `_name`: anything else is `unknown`, so no value
 * adds hops; none when no element names an address), `proto` and `host` of the first element
 * (the client's). Null when the field is malformed (then it is passed on and nothing is taken
 * from it).
 */
export function xFromForwarded(value: string): { for: string | undefined; proto: string | undefined; host: string | undefined } | null {
  const nodes: string[] = [];
  let proto: string | undefined;
  let host: string | undefined;
  let node: string | undefined;
  let pos = 0;
  let open = false;
  while (pos < value.length) {
    FORWARDED_PAIR.lastIndex = pos;
    const m = FORWARDED_PAIR.exec(value);
    if (m === null) return null;
    pos = FORWARDED_PAIR.lastIndex;
    let v = m[2]!;
    if (v.startsWith('"')) v = v.slice(1, -1).replace(/\\(.)/g, '$1');
    const key = m[1]!.toLowerCase();
    if (key === 'for') {
      const ip = plainIp(stripPortAndBrackets(v));
      node = isIP(ip) ? ip : /^_[A-Za-z0-9._-]+$/.test(v) ? v : 'unknown';
    } else if (nodes.length === 0 && key === 'proto') proto = v;
    else if (nodes.length === 0 && key === 'host') host = v;
    open = m[3] === ';';
    if (!open) {
      nodes.push(node ?? 'unknown');
      node = undefined;
    }
  }
  // (an element ended by a `;` and nothing after it)
  if (open) nodes.push(node ?? 'unknown');
  if (nodes.length === 0) return null;
  // (no address at all: X-Forwarded-For stays this hop's alone, not `unknown, <peer>`)
  return { for: nodes.some((n) => isIP(n) !== 0) ? nodes.join(', ') : undefined, proto, host };
}

/**
 * The network an address belongs to, for limits one client should not dodge by changing its
 * address: an IPv4 address itself (or its /24 with `v4Prefix`; in any IPv4-mapped or NAT64
 * well-known-prefix IPv6 form too), an IPv6 address's /64 (what one host or home gets).
 * Anything that is not an IP address is returned as given.
 */
export function ipNetwork(addr: string, v4Prefix: 24 | 32 = 32): string {
  const ip = plainIp(addr);
  const family = isIP(ip);
  if (family === 4) return v4Prefix === 24 ? `${ip.slice(0, ip.lastIndexOf('.'))}.0/24` : ip;
  if (family !== 6) return ip;
  // Expand "::" and an embedded IPv4 tail to eight groups; keep the first four.
  let s = ip.toLowerCase().split('%')[0]!;
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (v4) s = `${s.slice(0, v4.index)}${((+v4[1]! << 8) | +v4[2]!).toString(16)}:${((+v4[3]! << 8) | +v4[4]!).toString(16)}`;
  const [head, tail] = s.split('::') as [string, string | undefined];
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const g = groups.map((x) => parseInt(x, 16));
  // An IPv4 client written as IPv6 (by a trusted proxy: ::FFFF:a.b.c.d, 0:0:0:0:0:ffff:xxxx:xxxx,
  // or NAT64's well-known 64:ff9b::/96) is that IPv4 client: not the /64 every IPv4 client shares.
  if ((g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff)
    || (g[0] === 0x64 && g[1] === 0xff9b && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0)) {
    return ipNetwork(`${g[6]! >> 8}.${g[6]! & 255}.${g[7]! >> 8}.${g[7]! & 255}`, v4Prefix);
  }
  return `${g.slice(0, 4).map((x) => x.toString(16)).join(':')}::/64`;
}
