/**
 * The memory store of one cache zone: an LRU of buckets (host + path) bounded by bytes
 * (lru-cache's maxSize), each bucket holding up to MAX_PER_BUCKET entries (variants, queries,
 * key parts). A bucket lives as long as its longest-kept entry (per-item TTL); entries past
 * their time are skipped when read and dropped when the bucket is next written.
 */
import { LRUCache } from 'lru-cache';
import { monotonic } from '../../state/memory.js';
import { entrySize, sameVariant, type Bucket, type CacheStore, type Entry, type Matcher, type PurgeFilter } from './entry.js';

/** Entries one bucket keeps (the oldest go first): a URI with endless variants cannot grow past it. */
export const MAX_PER_BUCKET = 64;
/** No bucket is kept longer than this, whatever the response said. */
const MAX_KEEP_MS = 365 * 24 * 3600 * 1000;

interface Held {
  host: string;
  path: string;
  entries: readonly Entry[];
  size: number;
}

const keyOf = (b: Bucket) => `${b.host}\n${b.path}`;

export class MemoryCacheStore implements CacheStore {
  private lru: LRUCache<string, Held>;

  constructor(public maxSize: number) {
    this.lru = MemoryCacheStore.make(maxSize);
  }

  private static make(maxSize: number): LRUCache<string, Held> {
    return new LRUCache<string, Held>({ maxSize: Math.max(1, maxSize), sizeCalculation: (v) => Math.max(1, v.size) });
  }

  /** Bytes held and entries (for tests and the admin API). */
  stats(): { bytes: number; entries: number; buckets: number } {
    let entries = 0;
    for (const v of this.lru.values()) entries += v.entries.length;
    return { bytes: this.lru.calculatedSize, entries, buckets: this.lru.size };
  }

  find(b: Bucket, sub: string, match: Matcher, now: number): Entry | null {
    const held = this.lru.get(keyOf(b));
    if (held === undefined) return null;
    let best: Entry | null = null;
    for (const e of held.entries) {
      if (e.sub !== sub || e.until <= now || (best !== null && best.t >= e.t)) continue;
      if (match(e)) best = e;
    }
    return best;
  }

  put(b: Bucket, e: Entry, now: number): void {
    const key = keyOf(b);
    const old = this.lru.peek(key);
    let entries = (old?.entries ?? []).filter((x) => x.until > now && !sameVariant(x, e));
    entries.push(e);
    if (entries.length > MAX_PER_BUCKET) entries = entries.sort((x, y) => y.t - x.t).slice(0, MAX_PER_BUCKET);
    this.setHeld(key, b.host, b.path, entries, now);
  }

  private setHeld(key: string, host: string, path: string, entries: Entry[], now: number): void {
    if (entries.length === 0) {
      this.lru.delete(key);
      return;
    }
    let size = 0;
    let until = 0;
    for (const x of entries) {
      size += entrySize(x);
      until = Math.max(until, x.until);
    }
    const ttl = Math.ceil(Math.min(MAX_KEEP_MS, until - now));
    if (ttl <= 0) {
      this.lru.delete(key);
      return;
    }
    // A new object each time: lru-cache recomputes the size of a replaced value.
    this.lru.set(key, { host, path, entries, size }, { ttl });
    // Larger than the whole cache: not stored (lru-cache refuses it), and the old one is gone.
    if (size > this.maxSize) this.lru.delete(key);
  }

  invalidate(b: Bucket): void {
    this.lru.delete(keyOf(b));
  }

  purge(filter: PurgeFilter): Promise<number> {
    return Promise.resolve(this.purgeNow(filter, monotonic()));
  }

  purgeNow(filter: PurgeFilter, now: number): number {
    let n = 0;
    for (const [key, held] of [...this.lru.entries()]) {
      if (filter.path !== undefined && held.path !== filter.path) continue;
      if (filter.host !== undefined && held.host !== filter.host) continue;
      if (filter.query === undefined) {
        n += held.entries.length;
        this.lru.delete(key);
        continue;
      }
      const kept = held.entries.filter((e) => e.q !== filter.query);
      if (kept.length === held.entries.length) continue;
      n += held.entries.length - kept.length;
      this.setHeld(key, held.host, held.path, kept, now);
    }
    return n;
  }

  /** Changes the size in place: the most recently used buckets that fit are kept. */
  resize(maxSize: number): void {
    if (maxSize === this.maxSize) return;
    const old = this.lru;
    const next = MemoryCacheStore.make(maxSize);
    // Least recently used first, so the most recent end up most recent again.
    for (const key of [...old.rkeys()]) {
      const held = old.peek(key);
      const ttl = old.getRemainingTTL(key);
      if (held !== undefined && ttl > 0 && held.size <= maxSize) next.set(key, held, { ttl: Number.isFinite(ttl) ? Math.ceil(ttl) : MAX_KEEP_MS });
    }
    this.lru = next;
    this.maxSize = maxSize;
  }

  clear(): void {
    this.lru.clear();
  }
}
