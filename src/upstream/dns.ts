/**
 * DNS for upstream targets given by name. Every name is resolved before a snapshot is
 * compiled, and each address becomes a target of its own (own pool, own health, own share of
 * the balancer), sent the name as Host and, over TLS, as SNI. A name is asked again when its
 * answer runs out: with `dns.servers`, at the answer's TTL (the lowest of its records), held
 * between `dns.min_ttl` and `dns.refresh`; from the system resolver (which gives no TTL) and
 * after a failed lookup, every `dns.refresh`. When an answer changes, the gateway recompiles the
 * same config with the new addresses (in-flight requests finish on the old snapshot). A lookup
 * the resolvers could not answer (a timeout, SERVFAIL, refused: RFC 8767's serve-stale case)
 * keeps the last good answer, for up to `dns.max_stale` after it came; an authoritative "no such
 * name" or "no address" (NXDOMAIN, NODATA), given twice in a row (one odd answer does not empty a
 * pool), drops it. A name without an answer has no targets (503 no-healthy-target) until it has
 * one.
 *
 * Resolver: the system's (getaddrinfo: /etc/hosts, nsswitch) by default, or the DNS servers
 * given in `dns.servers` (A and AAAA queries). Either way a lookup is given up after
 * `dns.timeout`; a hung getaddrinfo is not started again for the same name while it hangs.
 */
import { promises as dns } from 'node:dns';
import { performance } from 'node:perf_hooks';
import { isIP } from 'node:net';
import { withDeadline } from '../state/deadline.js';

/** The system resolver (getaddrinfo: /etc/hosts, nsswitch); a test stands a hung resolver in for it. */
export const systemResolver = {
  async lookup(host: string): Promise<string[]> {
    return (await dns.lookup(host, { all: true })).map((a) => a.address);
  },
};

/** Resolver errors that mean the name has no records of the family asked (not that the query failed). */
const NO_RECORDS = new Set(['ENODATA', 'ENOTFOUND']);
/** Authoritative "no such name" / "no address" answers in a row that drop a name's last answer. */
const GONE_AFTER = 2;

/** System lookups still running, by name (process-wide: a refresh's copy of the cache shares them). */
const hanging = new Map<string, Promise<string[]>>();

export interface DnsSettings {
  servers: string[] | null;
  /** The longest an answer is used before the name is asked again (and the interval without a TTL). */
  refreshMs: number;
  /** The shortest: a lower TTL (0 included) is raised to it. */
  minTtlMs: number;
  timeoutMs: number;
  /** How long after its last good answer a name that cannot be resolved keeps it (serve-stale). */
  maxStaleMs: number;
}

/**
 * When a name was last asked, and its answer's TTL in ms (null: none known, or the lookup failed).
 * Times are performance.now() ms: on the wall clock, one stepped back (NTP, a resumed VM) left
 * every name unasked for the step's length, a moved target's old address in use all that time.
 */
interface Asked {
  at: number;
  ttlMs: number | null;
  /** When it last resolved (0: never). */
  goodAt: number;
  /** Authoritative "no such name" answers in a row since then. */
  gone: number;
}

export class DnsCache {
  private readonly answers: Map<string, string[]>;
  private readonly asked: Map<string, Asked>;
  private readonly resolver: dns.Resolver | null = null;

  constructor(readonly settings: DnsSettings, answers?: Map<string, string[]>, asked?: Map<string, Asked>) {
    this.answers = answers ?? new Map();
    this.asked = asked ?? new Map();
    if (settings.servers) {
      this.resolver = new dns.Resolver({ timeout: settings.timeoutMs, tries: 2 });
      this.resolver.setServers(settings.servers);
    }
  }

  static fromTable(settings: DnsSettings, table: Record<string, string[]>): DnsCache {
    return new DnsCache(settings, new Map(Object.entries(table)));
  }

  /**
   * A copy to resolve into: a reload or refresh works on a copy, and the gateway adopts it
   * only with the snapshot compiled from it (a rejected config changes nothing). Other
   * resolver settings start from no answers. `keep`: the names of the config it is for (a
   * reload); the answers of others are left behind, so names a reload took out do not live on
   * in every later snapshot (and in the table sent to the workers).
   */
  fork(settings: DnsSettings, keep?: readonly string[]): DnsCache {
    const same = JSON.stringify([settings.servers, settings.timeoutMs]) === JSON.stringify([this.settings.servers, this.settings.timeoutMs]);
    if (!same) return new DnsCache(settings);
    if (keep === undefined) return new DnsCache(settings, new Map(this.answers), new Map(this.asked));
    const answers = new Map<string, string[]>();
    const asked = new Map<string, Asked>();
    for (const h of keep) {
      const a = this.answers.get(h);
      if (a !== undefined) answers.set(h, a);
      const k = this.asked.get(h);
      if (k !== undefined) asked.set(h, k);
    }
    return new DnsCache(settings, answers, asked);
  }

  get refreshMs(): number {
    return this.settings.refreshMs;
  }

  /**
   * When `host` is to be asked again: its TTL held between min_ttl and refresh (min_ttl above
   * refresh: refresh), or refresh when no TTL is known; now for a name never asked.
   */
  dueAt(host: string, now = performance.now()): number {
    const a = this.asked.get(host);
    if (a === undefined) return now;
    const { refreshMs, minTtlMs } = this.settings;
    return a.at + (a.ttlMs === null ? refreshMs : Math.min(refreshMs, Math.max(minTtlMs, a.ttlMs)));
  }

  /** The TTL of the last answer for `host` in ms (null: none known). */
  ttlMs(host: string): number | null {
    return this.asked.get(host)?.ttlMs ?? null;
  }

  /** Takes on when `hosts` were asked (and their TTLs) from the cache they were resolved into. */
  adoptAsked(from: DnsCache, hosts: Iterable<string>): void {
    for (const h of hosts) {
      const a = from.asked.get(h);
      if (a !== undefined) this.asked.set(h, a);
    }
  }

  /** Addresses of `host` (sorted), [] when it never resolved, undefined when never asked. */
  get(host: string): string[] | undefined {
    return this.answers.get(host);
  }

  /** The whole table, for workers (they use the primary's answers, never their own). */
  table(): Record<string, string[]> {
    return Object.fromEntries(this.answers);
  }

  /** The addresses of `host`, and the lowest TTL of their records in ms (null from the system resolver). */
  private async lookup(host: string): Promise<{ addrs: string[]; ttlMs: number | null }> {
    const ms = this.settings.timeoutMs;
    if (this.resolver) {
      const r = this.resolver;
      // c-ares's timeout is per try, and it tries again with a longer one: a server that never
      // answers held the lookup about four times dns.timeout; the lookup itself is bounded here.
      const [v4, v6] = await withDeadline(Promise.allSettled([r.resolve4(host, { ttl: true }), r.resolve6(host, { ttl: true })]), ms, `no answer within ${ms} ms`)
        .catch((err: Error) => {
          throw Object.assign(err, { code: 'ETIMEOUT' });
        });
      const records = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
      if (records.length === 0) {
        // "No such name" only when neither query failed otherwise: a family whose query timed
        // out or got SERVFAIL is unknown (serve-stale), whatever the other one said.
        const failed = [v4, v6].find((r) => r.status === 'rejected' && !NO_RECORDS.has((r.reason as { code?: string }).code ?? ''));
        if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
        throw v4.status === 'rejected' ? v4.reason : Object.assign(new Error(`no address for ${host}`), { code: 'ENODATA' });
      }
      let ttl = Infinity;
      for (const rec of records) if (rec.ttl < ttl) ttl = rec.ttl;
      const addrs = records.map((rec) => rec.address);
      // A family whose query failed (SERVFAIL, a timeout: not "no such records") is unknown, not
      // empty: its last addresses stay, else a lost A answer beside a good AAAA one moved every
      // request to IPv6 addresses (unreachable on many networks) until the next refresh.
      const prev = this.answers.get(host);
      if (prev !== undefined) {
        for (const [res, family] of [[v4, 4], [v6, 6]] as const) {
          if (res.status === 'rejected' && !NO_RECORDS.has((res.reason as { code?: string }).code ?? '')) {
            for (const a of prev) if (isIP(a) === family) addrs.push(a);
          }
        }
      }
      return { addrs, ttlMs: ttl * 1000 };
    }
    // getaddrinfo cannot be cancelled and holds one of libuv's four threadpool threads (shared
    // with file and crypto work) while it waits: a name whose lookup still hangs is not asked
    // again, and its answer is given up after dns.timeout (the last good one is kept).
    let p = hanging.get(host);
    if (p === undefined) {
      p = systemResolver.lookup(host).finally(() => hanging.delete(host));
      hanging.set(host, p);
    }
    const addrs = await withDeadline(p, ms, `no answer within ${ms} ms`).catch((err: Error) => {
      throw err.message === `no answer within ${ms} ms` ? Object.assign(err, { code: 'ETIMEOUT' }) : err;
    });
    return { addrs, ttlMs: null };
  }

  /**
   * Resolves `hosts`. A name that fails now keeps its last good answer (`kept`), unless it was
   * told twice in a row that the name or its addresses do not exist (NXDOMAIN, NODATA: RFC 8767
   * serves stale data only when the resolvers cannot be reached) or that answer is older than
   * dns.max_stale. Returns whether any answer changed, and the names that failed: whether each
   * kept its addresses, or lost them now.
   */
  async refresh(hosts: Iterable<string>): Promise<{ changed: boolean; failed: { host: string; error: string; kept: boolean; dropped: boolean }[] }> {
    let changed = false;
    const failed: { host: string; error: string; kept: boolean; dropped: boolean }[] = [];
    await Promise.all([...new Set(hosts)].map(async (host) => {
      let addrs: string[];
      try {
        const got = await this.lookup(host);
        addrs = [...new Set(got.addrs)].sort();
        const now = performance.now();
        this.asked.set(host, { at: now, ttlMs: got.ttlMs, goodAt: now, gone: 0 });
      } catch (err) {
        const code = (err as { code?: string }).code ?? '';
        const was = this.asked.get(host);
        const now = performance.now();
        const asked = { at: now, ttlMs: null, goodAt: was?.goodAt ?? 0, gone: NO_RECORDS.has(code) ? (was?.gone ?? 0) + 1 : was?.gone ?? 0 };
        this.asked.set(host, asked);
        const prev = this.answers.get(host);
        const kept = prev !== undefined && prev.length > 0;
        const dropped = kept && (asked.gone >= GONE_AFTER || (asked.goodAt > 0 && now - asked.goodAt > this.settings.maxStaleMs));
        failed.push({ host, error: code || (err as Error).message, kept: kept && !dropped, dropped });
        if (prev === undefined || dropped) {
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
