/** The memory store, the zones that outlive reloads, and the collapsing flights. */
import test from 'node:test';
import assert from 'node:assert/strict';
import { MemoryCacheStore, MAX_PER_BUCKET } from './store-memory.js';
import { CacheStores, Flights, purgeFilter } from './stores.js';
import { decodeEntry, encodeEntry, entrySize, type Entry } from './entry.js';
import { freshness, type PolicyOptions, HEURISTIC_STATUSES } from './policy.js';

const T0 = 1_800_000_000_000;
const o: PolicyOptions = {
  shared: true, heuristicMs: 30_000, maxTtlMs: Infinity, statuses: new Set(HEURISTIC_STATUSES),
  cacheAuthorized: false, cacheSetCookie: false, staleWhileRevalidateMs: 0, staleIfErrorMs: 0, keepMs: 0,
};
let seq = 0;
function entry(p: Partial<Entry> & { body?: Buffer } = {}): Entry {
  const f = freshness(['cache-control', 'max-age=60'], T0, T0, o);
  return {
    id: `e${++seq}`, sub: 'svc\n', q: '', vary: [], varyValues: [], t: T0, status: 200,
    headers: ['content-type', 'text/plain'], body: Buffer.from('hello'), f, until: T0 + 60_000, ...p,
  };
}
const B = { host: 'a.example', path: '/x' };
const any = () => true;

test('find: by sub key and Vary match, the most recent wins, expired entries are skipped', () => {
  const s = new MemoryCacheStore(1 << 20);
  assert.equal(s.find(B, 'svc\n', any, T0), null);
  const en = entry({ vary: ['accept-language'], varyValues: ['en'], t: T0 });
  const de = entry({ vary: ['accept-language'], varyValues: ['de'], t: T0 + 1 });
  s.put(B, en, T0);
  s.put(B, de, T0);
  const lang = (v: string) => (h: { vary: string[]; varyValues: (string | null)[] }) => h.varyValues[0] === v;
  assert.equal(s.find(B, 'svc\n', lang('en'), T0)?.id, en.id);
  assert.equal(s.find(B, 'svc\n', lang('de'), T0)?.id, de.id);
  assert.equal(s.find(B, 'svc\n', lang('fr'), T0), null);
  assert.equal(s.find(B, 'other\n', any, T0), null);
  assert.equal(s.find({ host: 'b.example', path: '/x' }, 'svc\n', any, T0), null);
  // the most recent of those that match
  assert.equal(s.find(B, 'svc\n', any, T0)?.id, de.id);
  // past `until`: gone for find
  assert.equal(s.find(B, 'svc\n', any, T0 + 60_000), null);
});

test('put replaces the same variant, keeps others; a bucket holds at most MAX_PER_BUCKET entries', () => {
  const s = new MemoryCacheStore(64 << 20);
  const a1 = entry({ body: Buffer.from('one') });
  s.put(B, a1, T0);
  const a2 = entry({ body: Buffer.from('two'), t: T0 + 5 });
  s.put(B, a2, T0 + 5);
  assert.equal(s.stats().entries, 1);
  assert.equal(s.find(B, 'svc\n', any, T0 + 5)?.body.toString(), 'two');
  for (let i = 0; i < MAX_PER_BUCKET + 10; i++) s.put(B, entry({ sub: `svc\n?i=${i}`, q: `?i=${i}`, t: T0 + 10 + i }), T0 + 10);
  assert.equal(s.stats().entries, MAX_PER_BUCKET);
  // the oldest went first
  assert.equal(s.find(B, 'svc\n?i=0', any, T0 + 10), null);
  assert.notEqual(s.find(B, `svc\n?i=${MAX_PER_BUCKET + 9}`, any, T0 + 10), null);
});

test('bounded by bytes: least recently used buckets are evicted; a bucket larger than the whole cache is not stored', () => {
  const body = Buffer.alloc(10_000);
  const one = entrySize(entry({ body }));
  const s = new MemoryCacheStore(one * 3 + 100);
  for (let i = 0; i < 3; i++) s.put({ host: 'h', path: `/${i}` }, entry({ body }), T0);
  assert.equal(s.stats().buckets, 3);
  // /0 used: /1 is now the least recently used
  assert.notEqual(s.find({ host: 'h', path: '/0' }, 'svc\n', any, T0), null);
  s.put({ host: 'h', path: '/3' }, entry({ body }), T0);
  assert.equal(s.stats().buckets, 3);
  assert.equal(s.find({ host: 'h', path: '/1' }, 'svc\n', any, T0), null);
  assert.notEqual(s.find({ host: 'h', path: '/0' }, 'svc\n', any, T0), null);
  assert.ok(s.stats().bytes <= one * 3 + 100);
  s.put({ host: 'h', path: '/big' }, entry({ body: Buffer.alloc(one * 4) }), T0);
  assert.equal(s.find({ host: 'h', path: '/big' }, 'svc\n', any, T0), null);
  assert.ok(s.stats().bytes <= one * 3 + 100);
});

test('invalidate drops the whole bucket (every query, variant, key part); purge by path, host, query, all', async () => {
  const s = new MemoryCacheStore(1 << 20);
  s.put(B, entry({ sub: 'svc\n?a=1', q: '?a=1' }), T0);
  s.put(B, entry({ sub: 'svc\n?a=2', q: '?a=2' }), T0);
  s.put({ host: 'b.example', path: '/x' }, entry(), T0);
  s.put({ host: 'a.example', path: '/y' }, entry(), T0);
  s.invalidate(B);
  assert.equal(s.find(B, 'svc\n?a=1', any, T0), null);
  assert.equal(s.stats().entries, 2);
  s.put(B, entry({ sub: 'svc\n?a=1', q: '?a=1' }), T0);
  s.put(B, entry({ sub: 'svc\n?a=2', q: '?a=2' }), T0);
  assert.equal(s.purgeNow({ path: '/x', host: 'a.example', query: '?a=1' }, T0), 1);
  assert.notEqual(s.find(B, 'svc\n?a=2', any, T0), null);
  assert.equal(s.purgeNow({ path: '/x' }, T0), 2);
  assert.equal(s.purgeNow({ path: '/nothing' }, T0), 0);
  assert.equal(await s.purge({}), 1);
  assert.equal(s.stats().entries, 0);
});

test('resize keeps the most recently used entries that fit', () => {
  const body = Buffer.alloc(10_000);
  const one = entrySize(entry({ body }));
  const s = new MemoryCacheStore(one * 10);
  for (let i = 0; i < 5; i++) s.put({ host: 'h', path: `/${i}` }, entry({ body }), T0);
  s.resize(one * 2 + 10);
  assert.equal(s.stats().buckets, 2);
  assert.notEqual(s.find({ host: 'h', path: '/4' }, 'svc\n', any, T0), null);
  assert.notEqual(s.find({ host: 'h', path: '/3' }, 'svc\n', any, T0), null);
});

test('entry encoding round-trips; damaged bytes decode to null', () => {
  const e = entry({ vary: ['a'], varyValues: [null], body: Buffer.from([0, 1, 2, 255]) });
  const d = decodeEntry(encodeEntry(e));
  assert.deepEqual(d, e);
  for (const bad of [null, Buffer.alloc(0), Buffer.from([0, 0, 0, 50, 1]), Buffer.concat([Buffer.from([0, 0, 0, 2]), Buffer.from('{x')]), Buffer.concat([Buffer.from([0, 0, 0, 2]), Buffer.from('{}')])]) {
    assert.equal(decodeEntry(bad), null);
  }
});

test('zones: a reload acquires before the old snapshot releases, so entries live on; the last release drops them', async () => {
  const caches = new CacheStores();
  const a = caches.acquireMemory('z1', 1 << 20);
  a.put(B, entry(), T0);
  const b = caches.acquireMemory('z1', 1 << 20); // the new snapshot's instance
  assert.equal(a, b);
  caches.release('memory', 'z1'); // the old one retires
  assert.notEqual(b.find(B, 'svc\n', any, T0), null);
  // a new size: the same store, resized in place
  const c = caches.acquireMemory('z1', 2 << 20);
  assert.equal(c, a);
  assert.equal(c.maxSize, 2 << 20);
  caches.acquireMemory('z2', 1 << 20).put(B, entry(), T0);
  assert.equal((await caches.purge({ path: '/x' })).purged, 2);
  caches.release('memory', 'z1');
  caches.release('memory', 'z1');
  assert.deepEqual(Object.keys(caches.stats()), ['z2']);
  caches.close();
});

test('invalidation reaches every memory zone', () => {
  const caches = new CacheStores();
  const z1 = caches.acquireMemory('z1', 1 << 20);
  const z2 = caches.acquireMemory('z2', 1 << 20);
  z1.put(B, entry(), T0);
  z2.put(B, entry(), T0);
  caches.invalidate(B);
  assert.equal(z1.find(B, 'svc\n', any, T0), null);
  assert.equal(z2.find(B, 'svc\n', any, T0), null);
  caches.close();
});

test('flights: one leader, waiters get its outcome; a timeout releases them; an unusable outcome marks the key pass', async () => {
  const f = new Flights();
  const lead = f.lead('k', 10_000);
  assert.equal(f.get('k'), lead);
  const e = entry();
  const waiting = [f.get('k')!.done, f.get('k')!.done];
  f.settle(lead, { entry: e });
  f.settle(lead, null); // once only
  for (const w of await Promise.all(waiting)) assert.deepEqual(w, { entry: e });
  assert.equal(f.get('k'), undefined);
  assert.equal(f.passing('k'), false);

  const l2 = f.lead('k', 10_000);
  f.settle(l2, null, true);
  assert.equal(await l2.done, null);
  assert.equal(f.passing('k'), true);
  const l3 = f.lead('k', 10_000);
  f.settle(l3, { entry: e });
  assert.equal(f.passing('k'), false);

  const started = Date.now();
  const slow = f.lead('slow', 50);
  const alive = setTimeout(() => {}, 5000); // (the flight's own timer does not hold the process)
  assert.equal(await slow.done, null);
  clearTimeout(alive);
  assert.ok(Date.now() - started < 1000);
  assert.equal(f.get('slow'), undefined);
  f.close();
});

test('purge filters from the admin query string', () => {
  const q = (s: string) => purgeFilter(new URLSearchParams(s));
  assert.deepEqual(q(''), {});
  assert.deepEqual(q('path=/users/1'), { path: '/users/1' });
  assert.deepEqual(q('path=/a/./b/../c&host=API.example.com'), { path: '/a/c', host: 'api.example.com' });
  assert.deepEqual(q(`key=${encodeURIComponent('api.example.com/users/1?a=1&b=2')}`), { host: 'api.example.com', path: '/users/1', query: '?a=1&b=2' });
  assert.deepEqual(q('key=api.example.com/users/1'), { host: 'api.example.com', path: '/users/1', query: '' });
  for (const bad of ['key=/nohost', 'key=nopath', 'path=relative', 'host=a', 'key=a/b&path=/b', 'path=/%zz']) assert.equal(typeof q(bad), 'string', bad);
});

test('redis failures are logged at most every 10 s on the monotonic clock: a wall clock stepped back an hour silenced them for that hour', () => {
  const warned: string[] = [];
  const caches = new CacheStores({ warn: (o: { op: string }) => warned.push(o.op) } as never);
  const realNow = Date.now;
  const realPerf = performance.now;
  const perf0 = performance.now();
  try {
    caches.fail(new Error('down'), 'read');
    caches.fail(new Error('down'), 'read');
    assert.deepEqual(warned, ['read']);
    // 11 s later, the wall clock having been stepped back an hour meanwhile
    Date.now = () => realNow() - 3_600_000 + 11_000;
    performance.now = () => perf0 + 11_000;
    caches.fail(new Error('down'), 'write');
    assert.deepEqual(warned, ['read', 'write']);
  } finally {
    Date.now = realNow;
    performance.now = realPerf;
    caches.close();
  }
});

test('flights: a collapse timeout past the longest timer (collapse_timeout: 30d) keeps the waiters on the leader, not released after 1 ms', async () => {
  const f = new Flights();
  const lead = f.lead('k', 30 * 86_400_000);
  let settled = false;
  void lead.done.then(() => { settled = true; });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(settled, false);
  assert.equal(f.get('k'), lead);
  const e = entry();
  f.settle(lead, { entry: e });
  assert.deepEqual(await lead.done, { entry: e });
  f.close();
});
