/** The Redis cache store against real redis-server processes (one server, and a 3-master cluster). */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { RedisStore } from '../../state/redis.js';
import { silenceableProxy, startRedis, startRedisCluster, type RedisServer } from '../../../test/redis-server.js';
import { RedisCacheStore, MAX_FIELDS, INVALIDATION_MEMORY_MS } from './store-redis.js';
import type { Entry } from './entry.js';
import { freshness, HEURISTIC_STATUSES, type PolicyOptions } from './policy.js';

const o: PolicyOptions = {
  shared: true, heuristicMs: 30_000, maxTtlMs: Infinity, statuses: new Set(HEURISTIC_STATUSES),
  cacheAuthorized: false, cacheSetCookie: false, staleWhileRevalidateMs: 0, staleIfErrorMs: 0, keepMs: 0,
};
let seq = 0;
function entry(now: number, p: Partial<Entry> = {}): Entry {
  const f = freshness(['cache-control', 'max-age=60'], now, now, o);
  return {
    id: `id${++seq}`, sub: 'svc\n', q: '', vary: [], varyValues: [], t: now, status: 200,
    headers: ['content-type', 'application/octet-stream', 'etag', '"x"'], body: Buffer.from([0, 1, 2, 250, 13, 10]), f, until: now + 60_000, ...p,
  };
}
const any = () => true;
const B = { host: 'api.example', path: '/users/1' };

let server: RedisServer;
let store: RedisStore;
before(async () => {
  server = await startRedis();
  store = new RedisStore({ url: server.url, prefix: 'tc:', timeout: 500 });
  await store.waitReady();
});
after(async () => {
  await store?.close();
  await server?.stop();
});

test('put / find: binary body intact, Vary picks the variant, the most recent wins; the key expires when the entry is of no more use', async () => {
  const now = Date.now();
  const zone = new RedisCacheStore(store, 'z1');
  const en = entry(now, { vary: ['accept-language'], varyValues: ['en'] });
  const none = entry(now, { vary: ['accept-language'], varyValues: [null], t: now + 1, until: now + 30_000 });
  await zone.put(B, en, now);
  await zone.put(B, none, now);
  const got = await zone.find(B, 'svc\n', (h) => h.varyValues[0] === 'en', now);
  assert.deepEqual(got, en);
  assert.equal((await zone.find(B, 'svc\n', (h) => h.varyValues[0] === null, now))?.id, none.id);
  assert.equal((await zone.find(B, 'svc\n', any, now))?.id, none.id);
  assert.equal(await zone.find(B, 'svc\n', (h) => h.varyValues[0] === 'fr', now), null);
  assert.equal(await zone.find(B, 'other\n', any, now), null);
  // past its time: not returned even while the key lives
  assert.equal(await zone.find(B, 'svc\n', (h) => h.varyValues[0] === null, now + 31_000), null);
  // PEXPIRE only ever extended: the longest-kept entry decides
  const ttl = await store.client.pttl(zone.key(B));
  assert.ok(ttl > 55_000 && ttl <= 60_000, String(ttl));
  await zone.put(B, entry(now, { sub: 'svc\n?short', until: now + 5000 }), now);
  assert.ok(await store.client.pttl(zone.key(B)) > 55_000);
});

test('the same variant is replaced (its body field removed); a sub key keeps at most 32 variants; a crowded bucket starts over', async () => {
  const now = Date.now();
  const zone = new RedisCacheStore(store, 'z2');
  await zone.put(B, entry(now), now);
  await zone.put(B, entry(now, { body: Buffer.from('new') }), now);
  assert.equal(await store.client.hlen(zone.key(B)), 2); // one heads field, one entry
  assert.equal((await zone.find(B, 'svc\n', any, now))?.body.toString(), 'new');
  for (let i = 0; i < 40; i++) await zone.put(B, entry(now, { vary: ['x'], varyValues: [String(i)], t: now + i }), now);
  assert.equal(await store.client.hlen(zone.key(B)), 1 + 32);
  assert.equal(await zone.find(B, 'svc\n', (h) => h.varyValues[0] === '0', now), null);
  assert.notEqual(await zone.find(B, 'svc\n', (h) => h.varyValues[0] === '39', now), null);
  const crowded = { host: 'api.example', path: '/search' };
  for (let i = 0; i < MAX_FIELDS / 2 + 5; i++) await zone.put(crowded, entry(now, { sub: `svc\n?q=${i}`, q: `?q=${i}` }), now);
  assert.ok(await store.client.hlen(zone.key(crowded)) <= MAX_FIELDS);
});

test('invalidate drops the bucket; purge: by key (one URL), by path and host, by path on every host, everything under the prefix only', async () => {
  await store.client.flushdb(); // (earlier tests' buckets out of the counts)
  const now = Date.now();
  const z1 = new RedisCacheStore(store, 'p1');
  const z2 = new RedisCacheStore(store, 'p2');
  const other = { host: 'other.example', path: '/users/1' };
  await z1.put(B, entry(now, { sub: 'svc\n?a=1', q: '?a=1' }), now);
  await z1.put(B, entry(now, { sub: 'svc\n?a=2', q: '?a=2' }), now);
  await z1.invalidate(B);
  // every entry gone; the bucket keeps its next generation for a while (writes of requests that
  // looked before the invalidation are refused, whichever node they are on)
  assert.deepEqual(await store.client.hgetall(z1.key(B)), { g: '1' });
  const ttl = await store.client.pttl(z1.key(B));
  assert.ok(ttl > 0 && ttl <= INVALIDATION_MEMORY_MS, String(ttl));
  const seen: { gen?: string } = {};
  assert.equal(await z1.find(B, 'svc\n?a=1', any, now, seen), null);
  assert.equal(seen.gen, '1');
  await z1.put(B, entry(now, { sub: 'svc\n?a=1', q: '?a=1' }), now, '');
  assert.equal(await z1.find(B, 'svc\n?a=1', any, now), null, 'a write that saw the generation before the invalidation was stored');
  await z1.put(B, entry(now, { sub: 'svc\n?a=1', q: '?a=1' }), now, '1');
  assert.notEqual(await z1.find(B, 'svc\n?a=1', any, now), null);
  await z1.invalidate(B);

  await z1.put(B, entry(now, { sub: 'svc\n?a=1', q: '?a=1' }), now);
  await z1.put(B, entry(now, { sub: 'svc\n?a=2', q: '?a=2' }), now);
  await z2.put(B, entry(now, { sub: 'svc\n?a=1', q: '?a=1' }), now);
  await z1.put(other, entry(now), now);
  await z1.put({ host: 'api.example', path: '/users/2' }, entry(now), now);
  await store.client.set('unrelated', 'v');
  await store.client.set('tc:unrelated', 'v');

  assert.equal(await z1.purge({ host: 'api.example', path: '/users/1', query: '?a=1' }), 2); // both zones
  assert.equal(await z1.find(B, 'svc\n?a=1', any, now), null);
  assert.notEqual(await z1.find(B, 'svc\n?a=2', any, now), null);
  // p2's bucket went with its last entry; p1's holds ?a=2
  assert.equal(await store.client.exists(z2.key(B)), 0);
  assert.equal(await z1.purge({ path: '/users/1', host: 'api.example' }), 1);
  assert.equal(await z1.find(B, 'svc\n?a=2', any, now), null);
  assert.notEqual(await z1.find(other, 'svc\n', any, now), null);
  assert.equal(await z1.purge({ path: '/users/1' }), 1);
  assert.equal(await z1.find(other, 'svc\n', any, now), null);
  assert.ok(await z1.purge({}) >= 1);
  assert.equal(await store.client.get('unrelated'), 'v');
  assert.equal(await store.client.get('tc:unrelated'), 'v');
  assert.deepEqual(await store.client.keys('tc:cache:*'), []);
});

test('damaged values are misses, never errors', async () => {
  const now = Date.now();
  const zone = new RedisCacheStore(store, 'bad');
  await zone.put(B, entry(now), now);
  const key = zone.key(B);
  const fields = await store.client.hkeys(key);
  const heads = fields.find((f) => f.startsWith('m:'))!;
  const body = fields.find((f) => f.startsWith('e:'))!;
  await store.client.hset(key, body, 'garbage');
  assert.equal(await zone.find(B, 'svc\n', any, now), null);
  await store.client.hset(key, heads, 'not json\n{"id":5}\n[]');
  assert.equal(await zone.find(B, 'svc\n', any, now), null);
  // a put over damaged heads still works
  await zone.put(B, entry(now), now);
  assert.notEqual(await zone.find(B, 'svc\n', any, now), null);
});

test('a hung Redis: reads and writes fail within the timeout', async () => {
  const r = await startRedis();
  const s = new RedisStore({ url: r.url, prefix: 'h:', timeout: 100 });
  await s.waitReady();
  const zone = new RedisCacheStore(s, 'z');
  try {
    r.pause();
    const t0 = Date.now();
    await assert.rejects(zone.find(B, 'svc\n', any, t0));
    await assert.rejects(zone.put(B, entry(t0), t0));
    assert.ok(Date.now() - t0 < 1500, `took ${Date.now() - t0} ms`);
  } finally {
    r.resume();
    await s.close();
    await r.stop();
  }
});

test('Redis Cluster: entries on every master are found, and purged by one SCAN per master', async () => {
  const cluster = await startRedisCluster(3);
  const s = new RedisStore({ cluster: cluster.seeds, prefix: 'cl:', timeout: 1000 });
  try {
    await s.waitReady(5000);
    const zone = new RedisCacheStore(s, 'z');
    const now = Date.now();
    const buckets = Array.from({ length: 30 }, (_, i) => ({ host: 'api.example', path: `/p/${i}` }));
    for (const b of buckets) await zone.put(b, entry(now), now);
    for (const b of buckets) assert.notEqual(await zone.find(b, 'svc\n', any, now), null);
    assert.equal(await zone.purge({ path: '/p/7' }), 1);
    assert.equal(await zone.find(buckets[7]!, 'svc\n', any, now), null);
    assert.equal(await zone.purge({}), 29);
    for (const b of buckets) assert.equal(await zone.find(b, 'svc\n', any, now), null);
  } finally {
    await s.close();
    await cluster.stop();
  }
});

test('a connection left open but silent (a partition without FIN or RST): cache lookups fail within their timeout, and once nothing has been answered for ~2 s the connection is replaced', async () => {
  const proxy = await silenceableProxy(server.port);
  const s = new RedisStore({ url: proxy.url, prefix: 'tc:', timeout: 50 });
  try {
    await s.waitReady();
    const zone = new RedisCacheStore(s, 'silent');
    const now = Date.now();
    await zone.put(B, entry(now), now);
    assert.ok(await zone.find(B, 'svc\n', any, now));
    proxy.silence();
    const t0 = performance.now();
    let found = false;
    while (!found && performance.now() - t0 < 6000) {
      found = await zone.find(B, 'svc\n', any, now).then((e) => e !== null, () => false);
      if (!found) await new Promise((r) => setTimeout(r, 5));
    }
    assert.ok(found, 'no answer 6 s after the partition (before: only TCP keepalive would end that connection, ~11 min)');
    assert.ok(performance.now() - t0 < 4000, `answered again after ${(performance.now() - t0).toFixed(0)} ms`);
  } finally {
    await s.close();
    proxy.close();
  }
});
