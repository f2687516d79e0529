/**
 * A step's response cache (`cache: {ttl}`): successful JSON responses (never no-store, private
 * or no-cache ones, none past its max-age: see run.ts keepFor) by method, final URL,
 * request headers and body, in memory, bounded by entries and bytes (least recently used
 * first out). One per step per config snapshot: a reload starts empty.
 */
import { LRUCache } from 'lru-cache';

export interface CachedResponse {
  status: number;
  headers: Readonly<Record<string, string>>;
  /** Parsed JSON: shared by every request that reads it, never modified. */
  body: unknown;
  /** Size of the body once decoded (bytes): a small gzip body can hold a big value. */
  size: number;
}

export class StepCache {
  private readonly lru: LRUCache<string, CachedResponse>;
  constructor(readonly ttl: number, maxEntries: number, maxBytes: number) {
    this.lru = new LRUCache<string, CachedResponse>({
      max: maxEntries,
      maxSize: maxBytes,
      // (key and headers counted roughly; the body by its decoded bytes, not its bytes on the wire)
      sizeCalculation: (v, k) => Math.max(1, v.size + k.length + 64),
      ttl,
      ttlAutopurge: false,
    });
  }

  get(key: string): CachedResponse | undefined {
    return this.lru.get(key);
  }

  /** `ttl`: how long this one is kept (ms; at most the step's). */
  set(key: string, value: CachedResponse, ttl = this.ttl): void {
    this.lru.set(key, value, { ttl });
  }

  get size(): number {
    return this.lru.size;
  }
}
