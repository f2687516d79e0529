/**
 * The Redis store of one cache zone, on the connection the gateway already has for `redis:`
 * (the counter store's client: same prefix, timeout and fail-fast settings).
 *
 * One Redis hash per bucket (host + path): `${prefix}cache:${zone}:${H(path)}:${H(host)}` with
 *   m:<H(sub)>  the heads of that sub key's entries, one JSON line each (Vary values, time...)
 *   e:<id>      an entry: [u32 meta length][meta JSON][body]
 * and `g`, the bucket's invalidation generation, so a lookup is two reads (heads and generation,
then the chosen body) and invalidating a URI drops every entry and moves `g` on (kept
INVALIDATION_MEMORY_MS): a response whose request looked before that, on any node, is not
stored (RFC 9111 §4.4 across nodes: a GET in flight across another node's POST). The
 * hash expires (PEXPIRE, only ever extended) when its longest-kept entry is of no more use, so
 * Redis drops what nobody asks for. A bucket that collected more than MAX_FIELDS fields starts
 * over on the next write (an endless query space cannot grow one key without bound).
 *
 * Errors and timeouts are thrown: the plugin treats a failed read as a miss and logs a failed
 * write; the request never waits past the store's timeout.
 */
import { createHash } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import { isCluster, type RedisStore } from '../../state/redis.js';
import { decodeEntry, encodeEntry, type Bucket, type CacheStore, type Entry, type EntryHead, type Matcher, type PurgeFilter } from './entry.js';

/** Fields one bucket hash may collect before a write starts it over. */
export const MAX_FIELDS = 256;
/** Entries (variants) kept per sub key. */
const MAX_PER_SUB = 32;
const MAX_KEEP_MS = 365 * 24 * 3600 * 1000;

/**
 * How long an invalidated bucket keeps its generation (the `g` field) once nothing is stored in
 * it: a response in flight longer than this when another node invalidated its URI could still be
 * stored.
 */
export const INVALIDATION_MEMORY_MS = 10 * 60 * 1000;

/**
 * KEYS[1]: the bucket. ARGV: heads field, the new head (JSON line), entry field, entry bytes,
 * keep ms, the new head's variant signature, the generation the request saw ('*': unknown).
 * Returns 0 (nothing written) when the bucket was invalidated since that generation.
 */
const PUT_LUA = `
local g = redis.call('HGET', KEYS[1], 'g') or ''
if ARGV[7] ~= '*' and g ~= ARGV[7] then return 0 end
if redis.call('HLEN', KEYS[1]) >= ${MAX_FIELDS} then
  redis.call('DEL', KEYS[1])
  if g ~= '' then redis.call('HSET', KEYS[1], 'g', g) end
end
local kept = {}
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  for line in string.gmatch(raw, '[^\\n]+') do
    local ok, h = pcall(cjson.decode, line)
    if ok and type(h) == 'table' and h.sig ~= ARGV[6] then
      kept[#kept + 1] = line
    elseif ok and type(h) == 'table' and type(h.id) == 'string' then
      redis.call('HDEL', KEYS[1], 'e:' .. h.id)
    end
  end
end
while #kept >= ${MAX_PER_SUB} do
  local ok, h = pcall(cjson.decode, kept[1])
  if ok and type(h) == 'table' and type(h.id) == 'string' then redis.call('HDEL', KEYS[1], 'e:' .. h.id) end
  table.remove(kept, 1)
end
kept[#kept + 1] = ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], table.concat(kept, '\\n'), ARGV[3], ARGV[4])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return 1
`;

/**
 * KEYS[1]: a bucket. ARGV[1]: ms to remember the invalidation. Drops every entry and moves the
 * bucket to its next generation (writes of requests that saw an older one are refused).
 */
const INVALIDATE_LUA = `
local g = tonumber(redis.call('HGET', KEYS[1], 'g') or '0') or 0
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'g', tostring(g + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return g + 1
`;

/** KEYS[1]: a bucket. ARGV[1]: a query part. Removes the entries stored for it; returns how many. */
const PURGE_QUERY_LUA = `
local n = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field = all[i]
  if string.sub(field, 1, 2) == 'm:' then
    local kept = {}
    for line in string.gmatch(all[i + 1], '[^\\n]+') do
      local ok, h = pcall(cjson.decode, line)
      if ok and type(h) == 'table' and h.q == ARGV[1] then
        if type(h.id) == 'string' then redis.call('HDEL', KEYS[1], 'e:' .. h.id) end
        n = n + 1
      else
        kept[#kept + 1] = line
      end
    end
    if #kept == 0 then redis.call('HDEL', KEYS[1], field) else redis.call('HSET', KEYS[1], field, table.concat(kept, '\\n')) end
  end
end
return n
`;

interface Scripts {
  tpCachePut(key: string, headsField: string, head: string, entryField: string, entry: Buffer, keepMs: number, sig: string, gen: string): Promise<number>;
  tpCacheInvalidate(key: string, rememberMs: number): Promise<number>;
  tpCachePurgeQuery(key: string, query: string): Promise<number>;
}

const H = (s: string) => createHash('sha256').update(s).digest('base64url').slice(0, 16);
const glob = (s: string) => s.replace(/[*?[\]\\]/g, '\\$&');

/** A head as stored: what finding needs, the variant signature and when it is of no more use. */
interface StoredHead extends EntryHead {
  sig: string;
  until: number;
}

const scripted = new WeakSet<object>();
function scripts(client: Redis | Cluster): Scripts {
  if (!scripted.has(client)) {
    client.defineCommand('tpCachePut', { lua: PUT_LUA, numberOfKeys: 1 });
    client.defineCommand('tpCachePurgeQuery', { lua: PURGE_QUERY_LUA, numberOfKeys: 1 });
    client.defineCommand('tpCacheInvalidate', { lua: INVALIDATE_LUA, numberOfKeys: 1 });
    scripted.add(client);
  }
  return client as unknown as Scripts;
}

export class RedisCacheStore implements CacheStore {
  private readonly client: Redis | Cluster;
  private readonly scripts: Scripts;
  private readonly prefix: string;
  private readonly timeoutMs: number;

  constructor(readonly store: RedisStore, readonly zone: string) {
    this.client = store.client;
    this.scripts = scripts(this.client);
    this.prefix = store.prefix;
    this.timeoutMs = store.timeoutMs;
  }

  /** The Redis key of a bucket (exported shape, for tests and operators). */
  key(b: Bucket): string {
    return `${this.prefix}cache:${this.zone}:${H(b.path)}:${H(b.host)}`;
  }

  /** Settles with `p` or rejects past the store's timeout (a backstop to ioredis's own; a silent connection is then replaced: RedisStore.noAnswer). */
  private deadline<T>(p: Promise<T>, ms = this.timeoutMs): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`redis did not answer within ${ms} ms`));
        this.store.noAnswer();
      }, ms);
      p.then((v) => { clearTimeout(timer); resolve(v); }, (e: unknown) => { clearTimeout(timer); reject(e as Error); });
    });
  }

  async find(b: Bucket, sub: string, match: Matcher, now: number, seen?: { gen?: string }): Promise<Entry | null> {
    const key = this.key(b);
    const [raw, gen] = await this.deadline(this.client.hmget(key, `m:${H(sub)}`, 'g'));
    if (seen !== undefined) seen.gen = gen ?? '';
    if (raw === null || raw === undefined) return null;
    const heads: StoredHead[] = [];
    for (const line of raw.split('\n')) {
      try {
        const h = JSON.parse(line) as StoredHead;
        if (typeof h.id === 'string' && h.sub === sub && h.until > now && Array.isArray(h.vary) && Array.isArray(h.varyValues)) heads.push(h);
      } catch {
        /* a damaged line is skipped */
      }
    }
    heads.sort((x, y) => y.t - x.t);
    const head = heads.find((h) => match(h));
    if (head === undefined) return null;
    const e = decodeEntry(await this.deadline(this.client.hgetBuffer(key, `e:${head.id}`)));
    return e !== null && e.id === head.id ? e : null;
  }

  async put(b: Bucket, e: Entry, now: number, gen = '*'): Promise<void> {
    const sig = JSON.stringify([e.vary, e.varyValues]);
    const head: StoredHead = { id: e.id, sub: e.sub, q: e.q, vary: e.vary, varyValues: e.varyValues, t: e.t, sig, until: e.until };
    const keep = Math.ceil(Math.min(MAX_KEEP_MS, e.until - now));
    if (keep <= 0) return;
    // A write carries the body: a little more time than a read.
    await this.deadline(this.scripts.tpCachePut(this.key(b), `m:${H(e.sub)}`, JSON.stringify(head), `e:${e.id}`, encodeEntry(e), keep, sig, gen), this.timeoutMs * 4);
  }

  async invalidate(b: Bucket): Promise<void> {
    await this.deadline(this.scripts.tpCacheInvalidate(this.key(b), INVALIDATION_MEMORY_MS));
  }

  /** Purges in every zone under this prefix (SCAN on every master). */
  async purge(filter: PurgeFilter): Promise<number> {
    const p = glob(this.prefix);
    const match = filter.path === undefined
      ? `${p}cache:*`
      : `${p}cache:*:${H(filter.path)}:${filter.host === undefined ? '*' : H(filter.host)}`;
    const nodes: Redis[] = isCluster(this.client) ? this.client.nodes('master') : [this.client as Redis];
    let n = 0;
    for (const node of nodes) {
      let cursor = '0';
      do {
        const [next, keys] = await this.deadline(node.scan(cursor, 'MATCH', match, 'COUNT', 500), Math.max(this.timeoutMs, 1000));
        cursor = next;
        for (const k of keys) {
          if (filter.path !== undefined && filter.query !== undefined) n += await this.deadline(this.scripts.tpCachePurgeQuery(k, filter.query), Math.max(this.timeoutMs, 1000));
          else n += await this.deadline(this.client.del(k), Math.max(this.timeoutMs, 1000));
        }
      } while (cursor !== '0');
    }
    return n;
  }
}
