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
