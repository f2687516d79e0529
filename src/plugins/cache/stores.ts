/**
 * What the cache keeps across config reloads, made once by the gateway (PluginDeps.caches):
 * the memory zones (one LRU per binding, found again by the binding's identity when a reload
 * re-creates the plugin), the Redis zones in use, and the requests in flight that others wait
 * for (collapsing).
 *
 * A zone is held by the plugin instances that use it (acquired in create, released in close):
 * a reload acquires it again before the old snapshot releases it, so it lives on; a binding
 * that went away leaves its zone with nobody, and it is dropped.
 */
import { Refresher } from './refresh.js';
import { LRUCache } from 'lru-cache';
import type { RedisStore } from '../../state/redis.js';
import type { Logger } from '../../core/log.js';
import { digest, type Bucket, type CacheStore, type Entry, type PurgeFilter } from './entry.js';
import { MemoryCacheStore } from './store-memory.js';
import { RedisCacheStore } from './store-redis.js';
import { normalizePath } from '../../router/path.js';
import { monotonic } from '../../state/memory.js';
import { MAX_TIMER_MS } from '../../config/units.js';
import { invalidatedPaths } from './policy.js';

/**
 * The filter of `DELETE /cache?...` (admin API), or what is wrong with it:
 * nothing (everything), `path=/p` (that path, any host and query) with an optional `host=`,
 * or `key=host/path?query` (that URL's entries; `key=host/path` is the URL without a query).
 */
export function purgeFilter(q: URLSearchParams): PurgeFilter | string {
  const key = q.get('key');
  const path = q.get('path');
  const host = q.get('host');
  if (key !== null) {
    if (path !== null || host !== null) return 'give key, or path (and host), not both';
    const slash = key.indexOf('/');
    if (slash <= 0) return 'key is host/path?query, as the client asked for it (e.g. api.example.com/users/1?a=1)';
    const qi = key.indexOf('?', slash);
    const p = normalizePath(qi === -1 ? key.slice(slash) : key.slice(slash, qi));
    if (p === null) return 'key has a malformed path';
    return { host: key.slice(0, slash).toLowerCase(), path: p, query: qi === -1 ? '' : key.slice(qi) };
  }
  if (path !== null) {
    const p = path.startsWith('/') ? normalizePath(path) : null;
    if (p === null) return 'path must be an absolute, well-formed path';
    return host !== null ? { path: p, host: host.toLowerCase() } : { path: p };
  }
  if (host !== null) return 'host needs a path';
  return {};
}

/** How a leader's request ended, for those waiting for it. */
export type FlightOutcome =
  /** A response was stored (or refreshed): the waiters may use it. */
  | { entry: Entry }
  /** The upstream failed (5xx, no answer): a waiter may use its own stale entry (stale-if-error). */
  | { error: true }
  /** Nothing usable (not storable, too large, the leader gave up, the wait timed out). */
  | null;

export interface Flight {
  readonly key: string;
  readonly done: Promise<FlightOutcome>;
  settled: boolean;
}

interface FlightImpl extends Flight {
  resolve(o: FlightOutcome): void;
  timer: NodeJS.Timeout;
}

/**
 * Requests in flight per cache key. The first miss leads (goes upstream), the others wait for
 * its outcome (at most `timeoutMs`). After an outcome that nobody could use, the key is marked
 * "pass" for a while: later misses go upstream at once instead of queueing behind each other
 * (Varnish's hit-for-miss); a stored response clears the mark.
 */
export class Flights {
  private readonly live = new Map<string, FlightImpl>();
  private readonly passes = new LRUCache<string, true>({ max: 10_000, ttl: 30_000 });

  get(key: string): Flight | undefined {
    return this.live.get(key);
  }

  get size(): number {
    return this.live.size;
  }

  lead(key: string, timeoutMs: number): Flight {
    let resolve!: (o: FlightOutcome) => void;
    const done = new Promise<FlightOutcome>((r) => { resolve = r; });
    const f: FlightImpl = {
      key, done, settled: false, resolve,
      // (collapse_timeout: 30d waits as long as a timer can, 24.8 days, not 1 ms — setTimeout's overflow)
      timer: setTimeout(() => this.settle(f, null), Math.min(MAX_TIMER_MS, Math.max(1, timeoutMs))),
    };
    f.timer.unref();
    this.live.set(key, f);
    return f;
  }

  settle(flight: Flight, outcome: FlightOutcome, pass = false): void {
    const f = flight as FlightImpl;
    if (f.settled) return;
    f.settled = true;
    clearTimeout(f.timer);
    if (this.live.get(f.key) === f) this.live.delete(f.key);
    if (outcome !== null && 'entry' in outcome) this.passes.delete(f.key);
    else if (pass) this.passes.set(f.key, true);
    f.resolve(outcome);
  }

  /**
   * A bucket was invalidated (a write went through): requests of its keys that come from now on
   * do not wait for those in flight, which went upstream before the write (their waiters so far
   * still get their answer; they asked before it).
   */
  forget(b: Bucket): void {
    if (this.live.size === 0) return;
    const mid = `\n${b.host}\n${b.path}\n`;
    for (const k of this.live.keys()) if (k.startsWith(mid, k.indexOf('\n'))) this.live.delete(k);
  }

  /** Whether misses of this key skip waiting (a recent response for it could not be stored). */
  passing(key: string): boolean {
    return this.passes.has(key);
  }

  clearPass(key: string): void {
    this.passes.delete(key);
  }

  close(): void {
    for (const f of [...this.live.values()]) this.settle(f, null);
  }
}

export class CacheStores {
  private readonly memoryZones = new Map<string, { store: MemoryCacheStore; refs: number }>();
  private readonly redisZones = new Map<string, { store: RedisCacheStore; refs: number }>();
  readonly flights = new Flights();
  /** stale-while-revalidate refreshes through the gateway's own listener. */
  readonly refresher = new Refresher();
  private lastError = 0;

  constructor(private readonly log?: Logger) {}

  /** The memory zone `zone` with `maxSize` bytes (made, or resized keeping what fits); release it in close. */
  acquireMemory(zone: string, maxSize: number): MemoryCacheStore {
    const z = this.memoryZones.get(zone);
    if (z === undefined) {
      const store = new MemoryCacheStore(maxSize);
      this.memoryZones.set(zone, { store, refs: 1 });
      return store;
    }
    z.refs++;
    z.store.resize(maxSize);
    return z.store;
  }

  acquireRedis(redis: RedisStore, zone: string): RedisCacheStore {
    const id = `${zone}\n${redis.prefix}`;
    const z = this.redisZones.get(id);
    if (z !== undefined && z.store.store === redis) {
      z.refs++;
      return z.store;
    }
    const store = new RedisCacheStore(redis, zone);
    this.redisZones.set(id, { store, refs: (z?.refs ?? 0) + 1 });
    return store;
  }

  release(kind: 'memory' | 'redis', zone: string, redis?: RedisStore): void {
    const map = kind === 'memory' ? this.memoryZones : this.redisZones;
    const id = kind === 'memory' ? zone : `${zone}\n${redis?.prefix ?? ''}`;
    const z = map.get(id);
    if (z === undefined) return;
    if (--z.refs <= 0) {
      map.delete(id);
      if (z.store instanceof MemoryCacheStore) z.store.clear();
    }
  }

  /** Every zone of this process, and each Redis store once (a Redis purge covers all its zones). */
  private stores(): CacheStore[] {
    const out: CacheStore[] = [];
    for (const z of this.memoryZones.values()) out.push(z.store);
    const seen = new Set<RedisStore>();
    for (const z of this.redisZones.values()) {
      if (seen.has(z.store.store) || z.store.store.client.status === 'end') continue;
      seen.add(z.store.store);
      out.push(z.store);
    }
    return out;
  }

  /**
   * Drops a URI's bucket in every zone (an unsafe request went through one of them, §4.4): memory
   * at once, Redis in the background (failures logged).
   */
  /** When each recently invalidated bucket was invalidated (bounded; insertion order = recency). */
  private readonly invalidatedAt = new Map<string, number>();

  private noteInvalidation(b: Bucket): void {
    const k = `${b.host}\n${b.path}`;
    this.invalidatedAt.delete(k);
    this.invalidatedAt.set(k, monotonic());
    if (this.invalidatedAt.size > 10_000) this.invalidatedAt.delete(this.invalidatedAt.keys().next().value!);
  }

  /**
   * Whether the bucket was invalidated at or after `t` (when a request went upstream): its
   * response may predate the write and must not be stored (a GET in flight across a POST).
   */
  invalidatedSince(b: Bucket, t: number): boolean {
    const at = this.invalidatedAt.get(`${b.host}\n${b.path}`);
    return at !== undefined && at >= t;
  }

  invalidate(b: Bucket): void {
    this.noteInvalidation(b);
    this.flights.forget(b);
    this.onInvalidate?.(b);
    for (const z of this.memoryZones.values()) z.store.invalidate(b);
    for (const z of this.redisZones.values()) {
      if (z.store.store.client.status === 'end') continue;
      z.store.invalidate(b).catch((err: Error) => this.fail(err, 'invalidate'));
    }
  }

  /**
   * §4.4: a non-error answer to an unsafe request invalidates its URI (`bucket`, made when the
   * request came: its socket may be gone by the answer) and the same host's paths in Location /
   * Content-Location (`host`: as the client sent it). From the cache
   * plugin, and from the request path for a write through a route without it (CompiledRoute.cacheWrites).
   */
  invalidateWrite(bucket: Bucket, host: string, headers: readonly string[]): void {
    this.invalidate(bucket);
    for (const p of invalidatedPaths(headers, host, bucket.path)) this.invalidate({ host: bucket.host, path: p });
  }

  /**
   * Set in a worker: an invalidation here is told to the other workers (through the primary),
   * whose memory zones hold their own copies.
   */
  onInvalidate: ((b: Bucket) => void) | null = null;

  /** Another worker's invalidation: this process's memory zones only (Redis was done there). */
  invalidateMemory(b: Bucket): void {
    this.noteInvalidation(b);
    this.flights.forget(b);
    for (const z of this.memoryZones.values()) z.store.invalidate(b);
  }

  /** DELETE /cache: removes what the filter names from every zone; resolves with the count. */
  async purge(filter: PurgeFilter): Promise<{ purged: number }> {
    // (entries keep a digest of their query part)
    const f = filter.query === undefined ? filter : { ...filter, query: digest(filter.query) };
    let purged = 0;
    for (const s of this.stores()) purged += await s.purge(f);
    return { purged };
  }

  /** Memory held per zone (for tests and operators). */
  stats(): Record<string, { bytes: number; entries: number; buckets: number }> {
    const out: Record<string, { bytes: number; entries: number; buckets: number }> = {};
    for (const [zone, z] of this.memoryZones) out[zone] = z.store.stats();
    return out;
  }

  /** A Redis failure, logged at most every 10 s (of the monotonic clock: a wall clock stepped back must not silence it). */
  fail(err: Error, op: string): void {
    const now = monotonic();
    if (now - this.lastError < 10_000) return;
    this.lastError = now;
    this.log?.warn({ err: err.message, op }, 'cache: the redis store failed (served without it)');
  }

  close(): void {
    this.flights.close();
    this.refresher.close();
    for (const z of this.memoryZones.values()) z.store.clear();
    this.memoryZones.clear();
    this.redisZones.clear();
  }
}
