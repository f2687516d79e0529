/**
 * Where a webhook trigger may send (SSRF guard). A service's triggers may be written through the
 * admin API, and the node then POSTs to the URL from inside the cluster: a writer must not turn
 * that into a request to the cloud metadata service (169.254.169.254: instance credentials) or to
 * the node itself (its admin listener, a sidecar on localhost).
 *
 * Refused, unless the node-local `scaling.webhook_allowed_networks` lists the address: loopback
 * (127.0.0.0/8, ::1), link-local (169.254.0.0/16 with the metadata address, fe80::/10), "this
 * host" and unspecified (0.0.0.0/8, ::), multicast and reserved (224.0.0.0/3, ff00::/8), the
 * other clouds' metadata addresses (100.100.100.200, fd00:ec2::254) and the node's own interface
 * addresses, and those addresses written as IPv6 (IPv4-mapped, IPv4-compatible, NAT64, 6to4: see
 * `plain`; Teredo and local-use NAT64, whose IPv4 part is hidden, are refused). Private networks
 * (10/8, 172.16/12, 192.168/16, fc00::/7) are allowed: receivers are usually in-cluster services.
 *
 * The check is made on the address connected to: a name is resolved by `lookup` (given to the
 * connection), which keeps only the allowed addresses, so a name that resolves to a public
 * address at one moment and to 169.254.169.254 at the next (DNS rebinding) gains nothing. An IP
 * literal (never looked up) is checked by `refusal` before the request, and when the config
 * compiles. Redirects are never followed (undici's request does not).
 */
import { BlockList, isIP, type LookupFunction } from 'node:net';
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { networkInterfaces } from 'node:os';

const REFUSED: readonly [string, number, 'ipv4' | 'ipv6', string][] = [
  ['0.0.0.0', 8, 'ipv4', 'a "this host" address'],
  ['127.0.0.0', 8, 'ipv4', 'a loopback address'],
  ['169.254.0.0', 16, 'ipv4', 'a link-local address (169.254.169.254: the cloud metadata service)'],
  ['100.100.100.200', 32, 'ipv4', 'a cloud metadata address'],
  ['224.0.0.0', 3, 'ipv4', 'a multicast or reserved address'],
  ['::', 128, 'ipv6', 'the unspecified address'],
  ['::1', 128, 'ipv6', 'a loopback address'],
  ['fe80::', 10, 'ipv6', 'a link-local address'],
  ['fd00:ec2::254', 128, 'ipv6', 'a cloud metadata address'],
  ['64:ff9b:1::', 48, 'ipv6', 'a local-use NAT64 address (RFC 8215: its IPv4 part cannot be checked)'],
  ['2001::', 32, 'ipv6', 'a Teredo address (RFC 4380: its IPv4 parts cannot be checked)'],
  ['ff00::', 8, 'ipv6', 'a multicast address'],
];

const refusedLists = REFUSED.map(([addr, bits, type, why]) => {
  const list = new BlockList();
  list.addSubnet(addr, bits, type);
  return { list, type, why };
});

/** An IPv6 address's eight 16-bit groups (a trailing dotted IPv4 part is two of them); null when it is none. */
function groups(ip: string): number[] | null {
  let s = ip.toLowerCase();
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (v4 !== null) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    s = `${s.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const halves = s.split('::');
  if (halves.length > 2) return null;
  const part = (h: string | undefined) => (h === undefined || h === '' ? [] : h.split(':').map((g) => parseInt(g, 16)));
  const head = part(halves[0]);
  const tail = part(halves[1]);
  const fill = 8 - head.length - tail.length;
  if (halves.length === 1 ? fill !== 0 : fill < 1) return null;
  const all = [...head, ...(halves.length === 2 ? new Array<number>(fill).fill(0) : []), ...tail];
  return all.every((g) => g >= 0 && g <= 0xffff) ? all : null;
}

const dotted = (hi: number, lo: number) => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;

/**
 * The IPv4 address an IPv6 address stands for, checked as that address: IPv4-mapped
 * (`::ffff:1.2.3.4`, also as a URL writes it, `::ffff:102:304`), IPv4-compatible (`::1.2.3.4`,
 * deprecated), NAT64's well-known prefix (RFC 6052, `64:ff9b::a9fe:a9fe` is 169.254.169.254 where
 * a NAT64 gateway translates it) and 6to4 (RFC 3056, `2002:a9fe:a9fe::`). Anything else as given.
 */
function plain(ip: string): string {
  if (isIP(ip) !== 6) return ip;
  const g = groups(ip);
  if (g === null) return ip;
  const zero = (from: number, to: number) => g.slice(from, to).every((x) => x === 0);
  if (zero(0, 5) && g[5] === 0xffff) return dotted(g[6]!, g[7]!);
  if (zero(0, 6) && (g[6]! !== 0 || g[7]! > 1)) return dotted(g[6]!, g[7]!);
  if (g[0] === 0x64 && g[1] === 0xff9b && zero(2, 6)) return dotted(g[6]!, g[7]!);
  if (g[0] === 0x2002) return dotted(g[1]!, g[2]!);
  return ip;
}

/** A CIDR (or a bare address) of `webhook_allowed_networks`: null when it is none. */
export function parseNetwork(raw: string): { addr: string; bits: number; type: 'ipv4' | 'ipv6' } | null {
  const [addr = '', bits, ...rest] = raw.trim().split('/');
  const family = isIP(addr);
  if (family === 0 || rest.length > 0) return null;
  const max = family === 6 ? 128 : 32;
  if (bits !== undefined && (!/^\d{1,3}$/.test(bits) || Number(bits) > max)) return null;
  return { addr, bits: bits === undefined ? max : Number(bits), type: family === 6 ? 'ipv6' : 'ipv4' };
}

export class WebhookDestinations {
  private readonly allowed = new BlockList();
  private readonly anyAllowed: boolean;

  /** `allowedNetworks`: the node's scaling.webhook_allowed_networks (entries that are no CIDR are skipped: the config reports them). */
  constructor(allowedNetworks: readonly string[] = []) {
    let n = 0;
    for (const raw of allowedNetworks) {
      const net = parseNetwork(raw);
      if (net === null) continue;
      this.allowed.addSubnet(net.addr, net.bits, net.type);
      n++;
    }
    this.anyAllowed = n > 0;
  }

  /** Why a request may not go to `ip` (an IP address), or null when it may. */
  refusal(ip: string): string | null {
    const a = plain(ip);
    const family = isIP(a);
    if (family === 0) return 'not an IP address';
    const type = family === 6 ? 'ipv6' : 'ipv4';
    if (this.anyAllowed && (this.allowed.check(a, type) || (a !== ip && this.allowed.check(ip, 'ipv6')))) return null;
    for (const r of refusedLists) if (r.type === type && r.list.check(a, type)) return r.why;
    for (const list of Object.values(networkInterfaces())) {
      for (const i of list ?? []) if (plain(i.address).toLowerCase() === a.toLowerCase()) return 'an address of this node';
    }
    return null;
  }

  /** The refusal of a URL's host when it is an IP literal (a name is checked when it is resolved). */
  literalRefusal(hostname: string): string | null {
    const h = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
    return isIP(h) === 0 ? null : this.refusal(h);
  }

  /** dns.lookup keeping only the allowed addresses (an error when none is). For net/tls.connect's `lookup`. */
  readonly lookup: LookupFunction = (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses: LookupAddress[]) => {
      if (err) return callback(err, '', 0);
      const ok = addresses.filter((a) => this.refusal(a.address) === null);
      if (ok.length === 0) {
        const first = addresses[0];
        const why = first ? `${first.address}, ${this.refusal(first.address)}` : 'no address';
        const e = Object.assign(new Error(`webhook destination refused: ${hostname} resolves to ${why} (scaling.webhook_allowed_networks can allow it)`), { code: 'ERR_WEBHOOK_DESTINATION' });
        return callback(e, '', 0);
      }
      if ((options as { all?: boolean }).all === true) (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, ok);
      else callback(null, ok[0]!.address, ok[0]!.family);
    });
  };
}
