/**
 * A stored response and the interface both stores (memory, Redis) implement.
 *
 * Entries are grouped in buckets by host and path: an unsafe request invalidates its URI's
 * bucket whatever the query, the variant or the key parts (§4.4 asks for at least that URI), and
 * a purge by path is one bucket per host. Inside a bucket an entry is found by its `sub` key
 * (service, query, configured key parts) and its Vary values, both kept as digests.
 */
import { hash } from 'node:crypto';
import type { Freshness } from './policy.js';

export interface Bucket {
  /** Host as the client sent it, lower-case. */
  host: string;
  /** Normalized path (no query). */
  path: string;
}

/** What finding an entry needs (kept apart from the body, so Redis reads a body only once chosen). */
export interface EntryHead {
  id: string;
  /** Digest of the service, query part and key parts: must be equal. */
  sub: string;
  /** Digest of the query part of the key (for purges by URL). */
  q: string;
  /** Vary names (lower-case) and digests of the request's values for them when stored (null: absent). */
  vary: string[];
  varyValues: (string | null)[];
  /** When it arrived: the most recent matching entry is used (§4.1). */
  t: number;
}

export interface Entry extends EntryHead {
  status: number;
  /** Flat list, names lower-case; framing and the gateway's per-request fields left out. */
  headers: string[];
  body: Buffer;
  f: Freshness;
  /** Until when it is kept (epoch ms). */
  until: number;
}

/**
 * What an entry keeps of its key (sub, q, Vary values): a SHA-256 digest, so that no API key,
 * Authorization value or cookie is ever stored in clear (in memory or in Redis).
 */
export const digest = (s: string): string => hash('sha256', s, 'base64url');

/** Picks an entry among those of a sub key: the caller's Vary check. */
export type Matcher = (head: EntryHead) => boolean;

/** Which entries a purge removes (all of them when every member is absent). */
export interface PurgeFilter {
  path?: string;
  host?: string;
  /** With path: only this query part (e.g. '?a=1', or '' for none; CacheStores.purge hands the stores its digest, as entries keep it). */
  query?: string;
}

/** One cache zone's storage. Memory answers synchronously; Redis with promises. */
export interface CacheStore {
  /**
   * The most recent entry of `sub` in the bucket that `match` accepts, or null. A store shared
   * by nodes sets `seen.gen` to the bucket's invalidation generation as read.
   */
  find(b: Bucket, sub: string, match: Matcher, now: number, seen?: { gen?: string }): Entry | null | Promise<Entry | null>;
  /**
   * Stores an entry, replacing the one of the same sub and Vary values. `gen`: the generation
   * `find` saw before the request went upstream; a shared store refuses the write when the bucket
   * was invalidated since (by any node: the answer may predate the write).
   */
  put(b: Bucket, e: Entry, now: number, gen?: string): void | Promise<void>;
  /** Drops the bucket (every entry of the URI path on that host). */
  invalidate(b: Bucket): void | Promise<void>;
  /** Removes what the filter names; resolves with the number of entries (memory) or keys/entries (Redis) removed. */
  purge(filter: PurgeFilter): Promise<number>;
}

/** Bytes an entry holds in memory (body, fields, bookkeeping). */
export function entrySize(e: Entry): number {
  let n = e.body.length + 256 + e.sub.length + e.q.length;
  for (const h of e.headers) n += h.length;
  for (const v of e.varyValues) n += (v?.length ?? 0) + 8;
  return n;
}

/** Same sub and same Vary values: a newer response for the same variant replaces it. */
export function sameVariant(a: EntryHead, b: EntryHead): boolean {
  if (a.sub !== b.sub || a.vary.length !== b.vary.length) return false;
  for (let i = 0; i < a.vary.length; i++) if (a.vary[i] !== b.vary[i] || a.varyValues[i] !== b.varyValues[i]) return false;
  return true;
}

/** An entry as bytes: [u32 length of the JSON meta][meta][body] (Redis values). */
export function encodeEntry(e: Entry): Buffer {
  const { body, ...meta } = e;
  const json = Buffer.from(JSON.stringify(meta));
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(json.length, 0);
  return Buffer.concat([head, json, body]);
}

/** The inverse of encodeEntry; null for anything that is not one (a foreign or damaged value). */
export function decodeEntry(b: Buffer | null): Entry | null {
  if (b === null || b.length < 4) return null;
  const n = b.readUInt32BE(0);
  if (4 + n > b.length) return null;
  try {
    const meta = JSON.parse(b.subarray(4, 4 + n).toString('utf8')) as Omit<Entry, 'body'>;
    if (typeof meta.id !== 'string' || typeof meta.status !== 'number' || !Array.isArray(meta.headers) || typeof meta.f !== 'object' || meta.f === null) return null;
    return { ...meta, body: Buffer.from(b.subarray(4 + n)) };
  } catch {
    return null;
  }
}
