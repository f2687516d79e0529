/**
 * RedisStore against a real redis-server (started here, on a free loopback port): the Lua
 * arithmetic equals algorithms.ts / MemoryStore, all-or-none across windows, exact counts
 * under concurrency from several store instances (several gateway nodes), quotas, and failing
 * fast (and coming back by itself) when Redis dies or hangs.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { RedisStore } from '../src/state/redis.js';
import { MemoryStore } from '../src/state/memory.js';
import { gcra, sliding, type GcraState, type SlidingState } from '../src/state/algorithms.js';
import type { RateDecision, RateQuery } from '../src/state/types.js';
import { createServer, connect, type Socket } from 'node:net';
import { startRedis, freePort, rawCommand, silenceableProxy, type RedisServer } from './redis-server.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
let server: RedisServer;
const stores: RedisStore[] = [];
let seq = 0;
/** A key no other test uses. */
const fresh = (what: string) => `t${process.pid}-${++seq}-${what}`;

function store(opts: ConstructorParameters<typeof RedisStore>[0] = { url: server.url, timeout: 1000 }, extra: ConstructorParameters<typeof RedisStore>[1] = {}): RedisStore {
  const s = new RedisStore(opts, extra);
  stores.push(s);
  return s;
}

before(async () => { server = await startRedis(); });
after(async () => {
  await Promise.all(stores.map((s) => s.close()));
  await server?.stop();
});

/** A small deterministic PRNG (mulberry32). */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('with the same clock, every decision equals MemoryStore (algorithms.ts) exactly: GCRA, sliding window, several windows, cost > 1', async () => {
  let now = 1_700_000_000_123;
  const clock = () => now;
  const redis = store({ url: server.url, timeout: 1000 }, { clock });
  await redis.waitReady();
  const memory = new MemoryStore(clock);
  const base = fresh('eq');
  type Shape = { algorithm: RateQuery['algorithm']; windows: [number, number][]; maxCost: number };
  const shapes: Shape[] = [
    { algorithm: 'gcra', windows: [[7, 1000]], maxCost: 2 }, // emission interval 142.857… ms (fractional TAT)
    { algorithm: 'gcra', windows: [[10, 1000], [25, 60_000]], maxCost: 3 },
    { algorithm: 'gcra', windows: [[3, 1000]], maxCost: 4 }, // cost 4 > limit: never allowed
    { algorithm: 'sliding-window', windows: [[5, 1000]], maxCost: 2 },
    { algorithm: 'sliding-window', windows: [[3, 700], [10, 5000]], maxCost: 2 },
    { algorithm: 'sliding-window', windows: [[100, 60_000]], maxCost: 5 },
  ];
  const rnd = prng(42);
  let compared = 0;
  let allowed = 0;
  for (let step = 0; step < 2500; step++) {
    const shape = shapes[Math.floor(rnd() * shapes.length)]!;
    const key = `${base}:${shapes.indexOf(shape)}:${Math.floor(rnd() * 3)}`;
    const cost = 1 + Math.floor(rnd() * shape.maxCost);
    const queries: RateQuery[] = shape.windows.map(([limit, periodMs]) => ({ key, limit, periodMs, cost, algorithm: shape.algorithm }));
    const want = memory.rateNow(queries);
    const got = await redis.rate(queries);
    assert.deepEqual(got, want, `step ${step} at ${now}: ${JSON.stringify(queries)}`);
    compared += want.length;
    if (want[0]!.allowed) allowed++;
    // Mostly small steps (bursts), sometimes a jump past one or several windows.
    const r = rnd();
    now += r < 0.5 ? Math.floor(rnd() * 40) : r < 0.95 ? Math.floor(rnd() * 400) : Math.floor(rnd() * 5000);
  }
  await memory.close();
  assert.ok(allowed > 300 && allowed < 2400, `a mix of allowed and refused (allowed ${allowed})`);
  assert.ok(compared > 2500);
});

test('on the Redis clock: a burst gives the same allowed/remaining sequence as algorithms.ts (timing-insensitive)', async () => {
  const redis = store();
  await redis.waitReady();
  const limit = 10;
  const periodMs = 3_600_000; // 1/h: nothing comes back during the test
  for (const algorithm of ['gcra', 'sliding-window'] as const) {
    const key = fresh(algorithm);
    const t0 = Date.now();
    const got: RateDecision[] = [];
    for (let i = 0; i < limit + 5; i++) got.push((await redis.rate([{ key, limit, periodMs, cost: 1, algorithm }]))[0]!);
    const elapsed = Date.now() - t0 + 2;
    // The model at a fixed instant (1 h into a window for sliding, so nothing slides out).
    let g: GcraState | undefined;
    let s: SlidingState | undefined;
    const at = Math.floor(t0 / periodMs) * periodMs + 1;
    const want = got.map(() => {
      if (algorithm === 'gcra') { const r = gcra(g, limit, periodMs, 1, at); g = r.next ?? g; return r.decision; }
      const r = sliding(s, limit, periodMs, 1, at); s = r.next; return r.decision;
    });
    assert.deepEqual(got.map((d) => d.allowed), want.map((d) => d.allowed), algorithm);
    assert.deepEqual(got.map((d) => d.remaining), want.map((d) => d.remaining), algorithm);
    assert.equal(got.filter((d) => d.allowed).length, limit);
    if (algorithm === 'gcra') {
      for (let i = 0; i < got.length; i++) {
        assert.ok(Math.abs(got[i]!.resetMs - want[i]!.resetMs) <= elapsed, `resetMs ${got[i]!.resetMs} vs ${want[i]!.resetMs}`);
        assert.ok(Math.abs(got[i]!.retryAfterMs - want[i]!.retryAfterMs) <= elapsed, `retryAfterMs ${got[i]!.retryAfterMs} vs ${want[i]!.retryAfterMs}`);
      }
      assert.ok(got.at(-1)!.retryAfterMs > 360_000 - elapsed && got.at(-1)!.retryAfterMs <= 360_000);
    } else {
      // Whole again two windows after the current window's start. Retry once the window turned
      // and a tenth of the full count (then the previous window's) has slid out: 10 * 0.9 + 1 <= 10
      // (when the window turns, the 10 still weigh fully).
      for (const d of got) assert.ok(d.resetMs > periodMs && d.resetMs <= 2 * periodMs, String(d.resetMs));
      const turn = Math.floor(t0 / periodMs) * periodMs + periodMs - t0;
      for (const d of got.filter((x) => !x.allowed)) {
        assert.ok(d.retryAfterMs >= turn + periodMs / 10 - elapsed && d.retryAfterMs <= turn + periodMs / 10 + 1, `retryAfterMs ${d.retryAfterMs}, window turns in ${turn}`);
      }
    }
  }
});

test('Redis\'s clock stepped back (a failover to a replica, a slot moved to a master whose clock is behind): active clients are not refused for the step (GCRA), nor given a fresh burst (sliding window); same as MemoryStore', async () => {
  let now = 1_700_000_000_000;
  const clock = () => now;
  const redis = store({ url: server.url, timeout: 1000 }, { clock });
  await redis.waitReady();
  const memory = new MemoryStore(clock);
  const both = async (q: RateQuery[]) => {
    const got = await redis.rate(q);
    assert.deepEqual(got, memory.rateNow(q), `at ${now}: ${JSON.stringify(q)}`);
    return got[0]!;
  };
  // 10 per second: a client at its limit, then the clock one minute behind.
  const g: RateQuery[] = [{ key: fresh('back-gcra'), limit: 10, periodMs: 1000, cost: 1, algorithm: 'gcra' }];
  for (let i = 0; i < 10; i++) assert.equal((await both(g)).allowed, true);
  now -= 60_000;
  const d = await both(g);
  // Its bucket is full (it used it up a moment ago), no more: one emission interval (100 ms) to wait, not a minute.
  assert.equal(d.allowed, false);
  assert.ok(d.retryAfterMs <= 100, `retry after ${d.retryAfterMs} ms`);
  assert.ok(d.resetMs <= 1000, `reset in ${d.resetMs} ms`);
  now += 100;
  assert.equal((await both(g)).allowed, true, 'allowed again one emission interval later');
  // Sliding window: what was counted still counts in the earlier window (not a fresh burst of 10).
  now = 1_700_000_100_500;
  const s: RateQuery[] = [{ key: fresh('back-sliding'), limit: 10, periodMs: 1000, cost: 1, algorithm: 'sliding-window' }];
  for (let i = 0; i < 10; i++) assert.equal((await both(s)).allowed, true);
  now -= 60_000;
  assert.equal((await both(s)).allowed, false, 'the 10 counted a moment ago are still counted');
  now += 2000;
  assert.equal((await both(s)).allowed, true, 'slid out two windows later');
  await memory.close();
});

test('several windows are all-or-none: a refusal by one takes nothing from the others', async () => {
  const redis = store();
  await redis.waitReady();
  for (const algorithm of ['gcra', 'sliding-window'] as const) {
    const key = fresh(`multi-${algorithm}`);
    const windows = [{ limit: 3, periodMs: 3_600_000 }, { limit: 10, periodMs: 86_400_000 }];
    const q = (cost = 1): RateQuery[] => windows.map((w) => ({ key, ...w, cost, algorithm }));
    const results: RateDecision[][] = [];
    for (let i = 0; i < 6; i++) results.push(await redis.rate(q()));
    assert.deepEqual(results.map((r) => r.map((d) => d.allowed)), [[true, true], [true, true], [true, true], [false, false], [false, false], [false, false]]);
    // The 10/day window was only charged for the 3 allowed requests (and says so).
    assert.deepEqual(results.map((r) => r[1]!.remaining), [9, 8, 7, 7, 7, 7]);
    const refused = results[3]!;
    assert.equal(refused[1]!.retryAfterMs, refused[0]!.retryAfterMs, 'the window that allowed reports the refusing window\'s retry');
    assert.ok(refused[0]!.retryAfterMs > 0);
    // Reading the state directly: the day window holds exactly 3.
    const dayKey = redis.rateKey({ key, algorithm, ...windows[1]! });
    if (algorithm === 'sliding-window') assert.equal(await redis.client.hget(dayKey, 'c'), '3');
    else assert.ok(Math.abs(Number(await redis.client.get(dayKey)) - Date.now() - 3 * 8_640_000) < 5000);
    // A cost no window can take is refused by all of them and takes nothing either.
    const big = await redis.rate(q(8));
    assert.deepEqual(big.map((d) => d.allowed), [false, false]);
  }
});

test('keys: prefix, hash tag = the rate key (all windows of a decision in one slot), braces and empty keys digested', async () => {
  const redis = store({ url: server.url, timeout: 1000, prefix: 'tp-test:' });
  await redis.waitReady();
  const w = { algorithm: 'gcra' as const, periodMs: 1000, limit: 5 };
  assert.equal(redis.rateKey({ key: 'rl:abc:ip:1.2.3.4', ...w }), 'tp-test:{rl:abc:ip:1.2.3.4}:g:1000:5');
  assert.equal(redis.rateKey({ key: 'k', ...w, algorithm: 'sliding-window' }), 'tp-test:{k}:s:1000:5');
  assert.equal(redis.quotaKey('k'), 'tp-test:{k}:q');
  for (const odd of ['', 'h:}{', 'a{b}c', '#x']) {
    const k = redis.rateKey({ key: odd, ...w });
    assert.match(k, /^tp-test:\{#[A-Za-z0-9_-]{43}\}:g:1000:5$/, odd);
    // Every window of a decision hashes to the same slot.
    const slots = new Set(await Promise.all([k, redis.rateKey({ key: odd, ...w, periodMs: 60_000, limit: 9 }), redis.quotaKey(odd)]
      .map((x) => redis.client.call('CLUSTER', 'KEYSLOT', x).catch(() => slotOf(x)))));
    assert.equal(slots.size, 1);
  }
  assert.notEqual(redis.rateKey({ key: 'a{b}c', ...w }), redis.rateKey({ key: 'a{b}d', ...w }));
  assert.throws(() => new RedisStore({ url: server.url, prefix: 'x{' }), /must not contain/);
});

/** CRC16 slot of a key (hash tag rule), for a non-cluster server that has no CLUSTER KEYSLOT. */
function slotOf(key: string): number {
  const s = key.indexOf('{');
  if (s >= 0) { const e = key.indexOf('}', s + 1); if (e > s + 1) key = key.slice(s + 1, e); }
  let crc = 0;
  for (const b of Buffer.from(key)) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc % 16384;
}

/** 1,000 decisions of a 100/min limit from 3 store instances (3 gateway nodes) at once. */
async function hammer(nodes: RedisStore[], algorithm: RateQuery['algorithm'], key: string): Promise<{ allowed: number; errors: number; elapsedMs: number }> {
  const q: RateQuery[] = [{ key, limit: 100, periodMs: 60_000, cost: 1, algorithm }];
  const t0 = performance.now();
  const results = await Promise.allSettled(Array.from({ length: 1000 }, (_, i) => nodes[i % nodes.length]!.rate(q)));
  const elapsedMs = performance.now() - t0;
  let allowed = 0;
  let errors = 0;
  for (const r of results) {
    if (r.status === 'rejected') errors++;
    else if (r.value[0]!.allowed) allowed++;
  }
  return { allowed, errors, elapsedMs };
}

test('3 store instances hammering one key: 1,000 concurrent decisions of 100/min -> exactly 100 allowed', async (t) => {
  const nodes = [store(), store(), store()];
  await Promise.all(nodes.map((n) => n.waitReady()));
  for (const algorithm of ['sliding-window', 'gcra'] as const) {
    const r = await hammer(nodes, algorithm, fresh(`hammer-${algorithm}`));
    t.diagnostic(`${algorithm}: ${JSON.stringify(r)}`);
    assert.equal(r.errors, 0);
    // Sliding window: exactly 100 (a window turn mid-burst could free one unit only after 600 ms).
    // GCRA: the burst of 100, plus one per emission interval (600 ms) that elapsed during the test.
    const extra = algorithm === 'gcra' || r.elapsedMs >= 600 ? Math.floor(r.elapsedMs / 600) : 0;
    assert.ok(r.allowed >= 100 && r.allowed <= 100 + extra, `allowed ${r.allowed} (tolerance +${extra})`);
  }
});

test('quota: INCRBY within the limit, atomic, expiring at the period end; usage by GET', async () => {
  const redis = store();
  await redis.waitReady();
  const memory = new MemoryStore();
  const key = fresh('quota');
  const periodEnd = Date.now() + 400;
  const seqs = [2, 2, 2, 1, 1, 3];
  const got = [];
  for (const cost of seqs) got.push(await redis.quota({ key, limit: 5, cost, periodEnd }));
  const want = seqs.map((cost) => memory.quotaNow({ key, limit: 5, cost, periodEnd }));
  assert.deepEqual(got, want);
  assert.deepEqual(got.map((d) => d.allowed), [true, true, false, true, false, false]);
  assert.equal(await redis.quotaUsage(key), 5);
  assert.equal(await redis.quotaUsage(fresh('never')), 0);
  const pexpire = await redis.client.pexpiretime(redis.quotaKey(key));
  assert.equal(pexpire, periodEnd);
  // Concurrency: 200 concurrent costs of 1 against a limit of 50 from 2 stores -> exactly 50.
  const other = store();
  await other.waitReady();
  const k2 = fresh('quota-c');
  const rs = await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 ? redis : other).quota({ key: k2, limit: 50, cost: 1, periodEnd: Date.now() + 60_000 })));
  assert.equal(rs.filter((d) => d.allowed).length, 50);
  assert.equal(await other.quotaUsage(k2), 50);
  await sleep(Math.max(0, periodEnd - Date.now()) + 50);
  assert.equal(await redis.quotaUsage(key), 0, 'expired at the period end');
  assert.deepEqual(await redis.quota({ key, limit: 5, cost: 2, periodEnd: Date.now() + 1000 }), { allowed: true, used: 2, remaining: 3 });
  await memory.close();
});

test('quota from a node whose clock is behind Redis\'s: in the last moments of its period (already over by Redis\'s clock) the count is kept, not deleted at each request (unlimited then)', async () => {
  const redis = store();
  await redis.waitReady();
  const key = fresh('quota-skew');
  // The node's period ends 5 s in Redis's past: the node's clock is more than 5 s behind.
  const periodEnd = Date.now() - 5000;
  const got = [];
  for (let i = 0; i < 5; i++) got.push((await redis.quota({ key, limit: 2, cost: 1, periodEnd })).allowed);
  assert.deepEqual(got, [true, true, false, false, false]);
  assert.equal(await redis.quotaUsage(key), 2);
  const ttl = await redis.client.pttl(redis.quotaKey(key));
  assert.ok(ttl > 0 && ttl <= 60_000, `expires a little later, not never: ${ttl}`);
});

/** Calls the store from `workers` loops (a request every ~2 ms each) until stop(); every latency recorded. */
function load(s: RedisStore, key: string, workers = 10) {
  const calls: { start: number; ms: number; ok: boolean; err?: string }[] = [];
  let running = true;
  const q: RateQuery[] = [{ key, limit: 1_000_000, periodMs: 60_000, cost: 1, algorithm: 'gcra' }];
  const loops = Array.from({ length: workers }, async () => {
    while (running) {
      const start = performance.now();
      try {
        await s.rate(q);
        calls.push({ start, ms: performance.now() - start, ok: true });
      } catch (err) {
        calls.push({ start, ms: performance.now() - start, ok: false, err: (err as Error).message });
      }
      await sleep(2);
    }
  });
  return { calls, stop: async () => { running = false; await Promise.all(loops); } };
}

async function recovers(s: RedisStore, key: string, ms: number): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    try {
      await s.rate([{ key, limit: 10, periodMs: 1000, cost: 1, algorithm: 'gcra' }]);
      return performance.now() - t0;
    } catch {
      if (performance.now() - t0 > ms) throw new Error(`the store did not recover within ${ms} ms`);
      await sleep(20);
    }
  }
}

const TIMEOUT = 50;
/** Event-loop and scheduling slack on a small (2-core) machine. */
const SLACK = 50;

test('Redis killed mid-load: every call settles within timeout + slack, then the store reconnects by itself after a restart on the same port', async (t) => {
  const r = await startRedis();
  try {
    const s = store({ url: r.url, timeout: TIMEOUT });
    await s.waitReady();
    const key = fresh('kill');
    const l = load(s, key);
    await sleep(300);
    const killedAt = performance.now();
    await r.kill('SIGKILL');
    await sleep(700);
    await l.stop();
    const before = l.calls.filter((c) => c.start < killedAt);
    const afterKill = l.calls.filter((c) => c.start >= killedAt + 5);
    const maxMs = Math.max(...l.calls.map((c) => c.ms));
    const maxAfter = Math.max(...afterKill.map((c) => c.ms));
    t.diagnostic(`kill: ${before.length} calls before (${before.filter((c) => c.ok).length} ok), ${afterKill.length} after (${afterKill.filter((c) => c.ok).length} ok); max latency ${maxMs.toFixed(1)} ms overall, ${maxAfter.toFixed(1)} ms after the kill; errors: ${[...new Set(afterKill.map((c) => c.err))].join(' | ')}`);
    assert.ok(before.filter((c) => c.ok).length > 100, 'the load ran against a live Redis first');
    assert.ok(afterKill.length > 500);
    assert.equal(afterKill.filter((c) => c.ok).length, 0, 'nothing succeeds against a dead Redis');
    assert.ok(maxMs <= TIMEOUT + SLACK, `max latency ${maxMs.toFixed(1)} ms > ${TIMEOUT} + ${SLACK}`);

    // Back on the same port: the store reconnects on its own (backoff capped at 1 s).
    const restartAt = performance.now();
    await r.restart();
    const upMs = await recovers(s, key, 5000);
    t.diagnostic(`recovered ${(performance.now() - restartAt).toFixed(0)} ms after the restart began (${upMs.toFixed(0)} ms after redis answered PING)`);
    assert.ok(upMs < 3000);
    // The script cache is empty after a restart: EVALSHA falls back to EVAL by itself.
    const d = await s.rate([{ key: fresh('after'), limit: 2, periodMs: 60_000, cost: 1, algorithm: 'sliding-window' }]);
    assert.equal(d[0]!.allowed, true);
  } finally {
    await r.stop();
  }
});

test('Redis hung (SIGSTOP): every call rejects within timeout + slack; after SIGCONT it answers again', async (t) => {
  const r = await startRedis();
  try {
    const s = store({ url: r.url, timeout: TIMEOUT });
    await s.waitReady();
    const key = fresh('hang');
    const l = load(s, key, 5);
    await sleep(150);
    const pausedAt = performance.now();
    r.pause();
    await sleep(500);
    await l.stop();
    const during = l.calls.filter((c) => c.start >= pausedAt + 1);
    const maxMs = Math.max(...l.calls.map((c) => c.ms));
    t.diagnostic(`hang: ${during.length} calls while stopped (${during.filter((c) => c.ok).length} ok), max latency ${maxMs.toFixed(1)} ms`);
    assert.ok(during.length > 20);
    assert.equal(during.filter((c) => c.ok).length, 0);
    assert.ok(maxMs <= TIMEOUT + SLACK, `max latency ${maxMs.toFixed(1)} ms`);
    r.resume();
    const upMs = await recovers(s, key, 3000);
    t.diagnostic(`answers again ${upMs.toFixed(0)} ms after SIGCONT`);
  } finally {
    r.resume();
    await r.stop();
  }
});

test('no Redis at start: calls fail at once (no offline queue); the store connects when Redis appears; close() is bounded', async (t) => {
  const port = await freePort();
  const s = store({ url: `redis://127.0.0.1:${port}`, timeout: TIMEOUT });
  let max = 0;
  for (let i = 0; i < 20; i++) {
    const t0 = performance.now();
    await assert.rejects(s.rate([{ key: 'x', limit: 1, periodMs: 1000, cost: 1, algorithm: 'gcra' }]));
    await assert.rejects(s.quota({ key: 'x', limit: 1, cost: 1, periodEnd: Date.now() + 1000 }));
    await assert.rejects(s.quotaUsage('x'));
    max = Math.max(max, performance.now() - t0);
    await sleep(10);
  }
  assert.ok(max <= TIMEOUT + SLACK, `max ${max.toFixed(1)} ms`);
  const r = await startRedis({ port });
  try {
    const upMs = await recovers(s, fresh('late'), 5000);
    t.diagnostic(`connected ${upMs.toFixed(0)} ms after Redis came up`);
    assert.ok(upMs < 3000);
    // close() while connected, and close() of a store whose Redis is gone: both bounded.
    let t0 = performance.now();
    await s.close();
    assert.ok(performance.now() - t0 < 300);
    await assert.rejects(s.rate([{ key: 'x', limit: 1, periodMs: 1000, cost: 1, algorithm: 'gcra' }]), /closed/);
    const s2 = store({ url: r.url, timeout: TIMEOUT });
    await s2.waitReady();
    r.pause();
    t0 = performance.now();
    await s2.close();
    const closeMs = performance.now() - t0;
    r.resume();
    t.diagnostic(`close() against a hung Redis took ${closeMs.toFixed(0)} ms`);
    assert.ok(closeMs < 400);
  } finally {
    r.resume();
    await r.stop();
  }
});

test('Redis hung (SIGSTOP) then resumed: the decisions the callers gave up on change nothing (the full limit and quota stay); ones answered in time count', async (t) => {
  // (was: the stalled EVALSHAs all ran at SIGCONT and charged the limit for requests that had
  // been answered 503 / let through / counted on the node)
  const r = await startRedis();
  try {
    const s = store({ url: r.url, timeout: TIMEOUT });
    await s.waitReady();
    const rk = fresh('late-rate');
    const qk = fresh('late-quota');
    const periodEnd = Date.now() + 60_000;
    const rq = (algorithm: 'gcra' | 'sliding-window'): RateQuery[] => [
      { key: `${rk}-${algorithm}`, limit: 30, periodMs: 60_000, cost: 1, algorithm },
      { key: `${rk}-${algorithm}`, limit: 100, periodMs: 3_600_000, cost: 1, algorithm },
    ];
    r.pause();
    const given = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => (i % 3 === 2
      ? s.quota({ key: qk, limit: 10, cost: 1, periodEnd })
      : s.rate(rq(i % 3 === 0 ? 'gcra' : 'sliding-window')))));
    assert.ok(given.every((g) => g.status === 'rejected'), 'every call gave up while Redis was stopped');
    await sleep(100);
    r.resume();
    // One connection, answered in order: once PING answers, the stalled scripts have run.
    assert.equal(await s.client.ping(), 'PONG');
    for (const algorithm of ['gcra', 'sliding-window'] as const) {
      const ds = [];
      for (let i = 0; i < 35; i++) ds.push(await s.rate(rq(algorithm)));
      const allowed = ds.filter((d) => d.every((w) => w.allowed)).length;
      t.diagnostic(`${algorithm}: ${allowed} of 35 allowed after the stall; first remaining ${ds[0]![0]!.remaining}`);
      assert.equal(allowed, 30, `${algorithm}: the whole limit is left`);
      assert.equal(ds[0]![0]!.remaining, 29);
    }
    assert.equal(await s.quotaUsage(qk), 0, 'the quota was not charged');
    assert.deepEqual(await s.quota({ key: qk, limit: 10, cost: 1, periodEnd }), { allowed: true, used: 1, remaining: 9 });

    // A stall shorter than the caller's deadline: decided, and counted, as always.
    const patient = store({ url: r.url, timeout: 2000 });
    await patient.waitReady();
    const pk = fresh('in-time');
    r.pause();
    const waiting = Promise.all([
      patient.rate([{ key: pk, limit: 5, periodMs: 60_000, cost: 1, algorithm: 'sliding-window' }]),
      patient.quota({ key: pk, limit: 5, cost: 2, periodEnd }),
    ]);
    await sleep(300);
    r.resume();
    const [rate, quota] = await waiting;
    assert.equal(rate[0]!.allowed, true);
    assert.equal(rate[0]!.remaining, 4);
    assert.deepEqual(quota, { allowed: true, used: 2, remaining: 3 });
    assert.equal(await patient.quotaUsage(pk), 2);
  } finally {
    r.resume();
    await r.stop();
  }
});

test('Redis\'s clock stepped forward past the measured bound: a decision it skipped while the caller still waits is measured and sent once more (counted once)', async () => {
  const s = store({ url: server.url, timeout: 1000 });
  await s.waitReady();
  // As if Redis's clock had jumped 10 s ahead since it was measured (an NTP step): every
  // give-up time computed from the old bound is 10 s in Redis's past.
  const off = s as unknown as { offsetNow: number; offsetBefore: number };
  off.offsetNow -= 10_000;
  off.offsetBefore -= 10_000;
  const key = fresh('step');
  const d = await s.rate([{ key, limit: 5, periodMs: 60_000, cost: 1, algorithm: 'gcra' }]);
  assert.equal(d[0]!.allowed, true);
  assert.equal(d[0]!.remaining, 4, 'counted once');
  off.offsetNow -= 10_000;
  off.offsetBefore -= 10_000;
  assert.deepEqual(await s.quota({ key, limit: 5, cost: 2, periodEnd: Date.now() + 60_000 }), { allowed: true, used: 2, remaining: 3 });
  assert.equal(await s.quotaUsage(key), 2);
});

test('failover behind one address (a DNS name or VIP moved to the promoted replica): a connection left on the old primary, now a replica answering READONLY, is replaced; decisions work again within a second', async (t) => {
  const [a, b] = [await startRedis(), await startRedis()];
  // The address the store is given: new connections go to `target`, existing ones stay where they are (as with DNS).
  let target = a.port;
  const sockets = new Set<Socket>();
  const proxy = createServer((client) => {
    const upstream = connect(target, '127.0.0.1');
    for (const [x, y] of [[client, upstream], [upstream, client]] as const) {
      sockets.add(x);
      x.on('error', () => y.destroy());
      x.on('close', () => { sockets.delete(x); y.destroy(); });
      x.pipe(y);
    }
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  try {
    const s = store({ url: `redis://127.0.0.1:${(proxy.address() as { port: number }).port}`, timeout: 500 });
    await s.waitReady();
    const q = (): RateQuery[] => [{ key: fresh('failover'), limit: 10, periodMs: 60_000, cost: 1, algorithm: 'gcra' }];
    assert.equal((await s.rate(q()))[0]!.allowed, true);
    // The failover: b is promoted (it is a primary already), a follows it, the name points at b.
    assert.match(await rawCommand(a.port, ['REPLICAOF', '127.0.0.1', String(b.port)]), /^\+OK/);
    target = b.port;
    const errors = new Set<string>();
    const t0 = performance.now();
    let ok = false;
    while (!ok && performance.now() - t0 < 3000) {
      try {
        ok = (await s.rate(q()))[0]!.allowed;
      } catch (err) {
        errors.add((err as Error).message.slice(0, 60));
        await sleep(20);
      }
    }
    const took = performance.now() - t0;
    t.diagnostic(`decisions again after ${took.toFixed(0)} ms; errors meanwhile: ${[...errors].join(' | ')}`);
    assert.ok(ok, `still failing 3 s after the failover (before: READONLY for as long as the connection lived): ${[...errors].join(' | ')}`);
    assert.ok(took < 1500, `decisions again only after ${took.toFixed(0)} ms`);
  } finally {
    for (const x of sockets) x.destroy();
    proxy.close();
    await Promise.all([a.stop(), b.stop()]);
  }
});

test('a partition that leaves the connection open (no FIN, no RST: a NAT or load balancer lost it): nothing answered for ~2 s while calls wait, the connection is replaced; its unanswered commands do not pile up meanwhile', async (t) => {
  const r = await startRedis();
  const proxy = await silenceableProxy(r.port);
  try {
    const s = store({ url: proxy.url, timeout: TIMEOUT });
    await s.waitReady();
    const key = fresh('partition');
    const q: RateQuery[] = [{ key, limit: 1_000_000, periodMs: 60_000, cost: 1, algorithm: 'gcra' }];
    assert.equal((await s.rate(q))[0]!.allowed, true);
    proxy.silence();
    const t0 = performance.now();
    let ok = false;
    let most = 0;
    let calls = 0;
    // 10 callers, as a node under load: every call waits its deadline while the connection is silent.
    await Promise.all(Array.from({ length: 10 }, async () => {
      while (!ok && performance.now() - t0 < 6000) {
        calls++;
        try {
          await s.rate(q);
          ok = true;
        } catch {
          most = Math.max(most, (s.client as import('ioredis').Redis).commandQueue.length);
          await sleep(1);
        }
      }
    }));
    const took = performance.now() - t0;
    t.diagnostic(`answered again after ${took.toFixed(0)} ms (${calls} calls; at most ${most} commands awaiting an answer)`);
    assert.ok(ok, `no answer 6 s after the partition (before: the silent connection was kept until TCP keepalive gave up, ~11 min)`);
    assert.ok(took < 4000, `answered again only after ${took.toFixed(0)} ms`);
    assert.ok((s.client as import('ioredis').Redis).commandQueue.length < 10, 'the silent connection\'s queue is gone');
  } finally {
    proxy.close();
    await r.stop();
  }
});

test('a redis URL whose password is not percent-encoded (/ ? # @ in it) is refused with a reason (a config error), not a store that never connects; the password is not in the message', () => {
  const cases: [string, ConstructorParameters<typeof RedisStore>[0]][] = [
    ['12/x@y', 'redis://app:12/x@y@127.0.0.1:6379'],
    ['12#x@y', { url: 'redis://:12#x@y@127.0.0.1:6379' }],
    ['ab?c', { cluster: ['redis://127.0.0.1:7000', 'redis://u:ab?c@127.0.0.1:7001'] }],
  ];
  for (const [password, setting] of cases) {
    assert.throws(() => new RedisStore(setting, { connect: false }), (err: Error) => /the redis URL .*percent-encoded/.test(err.message) && !err.message.includes(password), password);
  }
  void new RedisStore({ url: 'redis://app:12%2Fx%40y@127.0.0.1:6379/2' }, { connect: false }).close();
});

test('a URL pointing at a replica for a while (the DNS of a failover not caught up yet, a misconfiguration): READONLY answers under load replace the connection at most once a second, not at every answer (no connect storm, no log flood)', async (t) => {
  const [primary, replica] = [await startRedis(), await startRedis()];
  try {
    assert.match(await rawCommand(replica.port, ['REPLICAOF', '127.0.0.1', String(primary.port)]), /^\+OK/);
    const said: string[] = [];
    const log = { info: (_o: object, msg: string) => void said.push(msg), warn: (_o: object, msg: string) => void said.push(msg), debug: () => undefined } as unknown as import('../src/core/log.js').Logger;
    const s = store({ url: replica.url, timeout: 200 }, { log });
    await s.waitReady();
    const t0 = performance.now();
    const key = fresh('replica');
    await Promise.all(Array.from({ length: 5 }, async () => {
      while (performance.now() - t0 < 2000) {
        await s.rate([{ key, limit: 1000, periodMs: 60_000, cost: 1, algorithm: 'gcra' }]).catch(() => undefined);
        await sleep(2);
      }
    }));
    const connects = said.filter((m) => m === 'redis counter store connected').length;
    t.diagnostic(`2 s of decisions against a replica: ${connects} connects`);
    assert.ok(connects <= 4, `${connects} connects in 2 s`);
  } finally {
    await Promise.all([primary.stop(), replica.stop()]);
  }
});
