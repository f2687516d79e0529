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
 * addresses. Private networks (10/8, 172.16/12, 192.168/16, fc00::/7) are allowed: receivers are
 * usually in-cluster services.
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
  ['ff00::', 8, 'ipv6', 'a multicast address'],
];

const refusedLists = REFUSED.map(([addr, bits, type, why]) => {
  const list = new BlockList();
  list.addSubnet(addr, bits, type);
  return { list, type, why };
});

/** `::ffff:1.2.3.4` and `::ffff:102:304` (as a URL writes it) -> `1.2.3.4`: an IPv4-mapped address is its IPv4 one here. */
function plain(ip: string): string {
  if (/^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(ip)) return ip.slice(7);
  const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(ip);
  if (m === null) return ip;
  const [hi, lo] = [parseInt(m[1]!, 16), parseInt(m[2]!, 16)];
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
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
    if (this.anyAllowed && this.allowed.check(a, type)) return null;
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
