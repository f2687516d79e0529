/**
 * DNS for upstream targets given by name. Every name is resolved before a snapshot is
 * compiled, and each address becomes a target of its own (own pool, own health, own share of
 * the balancer), sent the name as Host and, over TLS, as SNI. Names are re-resolved every
 * `dns.refresh`; when an answer changes, the gateway recompiles the same config with the new
 * addresses (in-flight requests finish on the old snapshot). A failed lookup keeps the last
 * good answer; a name that never resolved has no targets (503 no-healthy-target) until it does.
 *
 * Resolver: the system's (getaddrinfo: /etc/hosts, nsswitch) by default, or the DNS servers
 * given in `dns.servers` (A and AAAA queries).
 */
import { promises as dns } from 'node:dns';
import { isIP } from 'node:net';

export interface DnsSettings {
  servers: string[] | null;
  refreshMs: number;
  timeoutMs: number;
}

export class DnsCache {
  private readonly answers = new Map<string, string[]>();
  private resolver: dns.Resolver | null = null;
  private settingsKey = '';

  constructor(private settings: DnsSettings) {
    this.configure(settings);
  }

  configure(settings: DnsSettings): void {
    const key = JSON.stringify([settings.servers, settings.timeoutMs]);
    this.settings = settings;
    if (key === this.settingsKey) return;
    this.settingsKey = key;
    if (settings.servers) {
      this.resolver = new dns.Resolver({ timeout: settings.timeoutMs, tries: 2 });
      this.resolver.setServers(settings.servers);
    } else this.resolver = null;
    this.answers.clear();
  }

  get refreshMs(): number {
    return this.settings.refreshMs;
  }

  /** Addresses of `host` (sorted), [] when it never resolved, undefined when never asked. */
  get(host: string): string[] | undefined {
    return this.answers.get(host);
  }

  /** The whole table, for workers (they use the primary's answers, never their own). */
  table(): Record<string, string[]> {
    return Object.fromEntries(this.answers);
  }

  load(table: Record<string, string[]>): void {
    this.answers.clear();
    for (const [k, v] of Object.entries(table)) this.answers.set(k, v);
  }

  private async lookup(host: string): Promise<string[]> {
    if (this.resolver) {
      const r = this.resolver;
      const [v4, v6] = await Promise.allSettled([r.resolve4(host), r.resolve6(host)]);
      const out = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
      if (out.length === 0) throw v4.status === 'rejected' ? v4.reason : new Error(`no address for ${host}`);
      return out;
    }
    const all = await dns.lookup(host, { all: true });
    return all.map((a) => a.address);
  }

  /**
   * Resolves `hosts`; keeps the last good answer of a name that fails now. Returns whether any
   * answer changed, and the names that failed.
   */
  async refresh(hosts: Iterable<string>): Promise<{ changed: boolean; failed: { host: string; error: string }[] }> {
    let changed = false;
    const failed: { host: string; error: string }[] = [];
    await Promise.all([...new Set(hosts)].map(async (host) => {
      let addrs: string[];
      try {
        addrs = [...new Set(await this.lookup(host))].sort();
      } catch (err) {
        failed.push({ host, error: (err as { code?: string }).code ?? (err as Error).message });
        if (!this.answers.has(host)) {
          this.answers.set(host, []);
          changed = true;
        }
        return;
      }
      const prev = this.answers.get(host);
      if (!prev || prev.join(',') !== addrs.join(',')) {
        this.answers.set(host, addrs);
        changed = true;
      }
    }));
    return { changed, failed };
  }
}

/** Host names (not IP literals) of the upstream URLs in a config. */
export function upstreamNames(config: { services?: { url?: string; upstream?: { targets: { url: string }[] } }[] }): string[] {
  const names = new Set<string>();
  for (const s of config.services ?? []) {
    for (const url of [s.url, ...(s.upstream?.targets.map((t) => t.url) ?? [])]) {
      if (!url) continue;
      try {
        const h = new URL(url).hostname;
        if (h && isIP(h.replace(/^\[|\]$/g, '')) === 0) names.add(h);
      } catch {
        /* invalid URL: compile reports it */
      }
    }
  }
  return [...names];
}
