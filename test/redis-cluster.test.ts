/**
 * RedisStore against a real 3-master Redis Cluster on loopback (made here with
 * `redis-cli --cluster create`): every key of a decision in one slot (no CROSSSLOT), exact
 * counts from 3 store instances, keys spread over the masters, the same arithmetic as
 * MemoryStore, and failing fast while a master is down.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { RedisStore } from '../src/state/redis.js';
import { MemoryStore } from '../src/state/memory.js';
import type { RateQuery } from '../src/state/types.js';
import { rawCommand, startRedisCluster, type RedisClusterHandle } from './redis-server.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
let cluster: RedisClusterHandle;
const stores: RedisStore[] = [];
let seq = 0;
const fresh = (what: string) => `c${process.pid}-${++seq}-${what}`;

function store(timeout = 1000, clock?: () => number): RedisStore {
  const s = new RedisStore({ cluster: cluster.seeds, timeout, prefix: 'tpc:' }, clock ? { clock } : {});
  stores.push(s);
  return s;
}

before(async () => { cluster = await startRedisCluster(3); });
after(async () => {
  await Promise.all(stores.map((s) => s.close()));
  await cluster?.stop();
});

async function hammer(nodes: RedisStore[], algorithm: RateQuery['algorithm'], key: string) {
  const q: RateQuery[] = [{ key, limit: 100, periodMs: 60_000, cost: 1, algorithm }];
  const t0 = performance.now();
  const results = await Promise.allSettled(Array.from({ length: 1000 }, (_, i) => nodes[i % nodes.length]!.rate(q)));
  const elapsedMs = performance.now() - t0;
  const errors = results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason));
  const allowed = results.filter((r) => r.status === 'fulfilled' && r.value[0]!.allowed).length;
  return { allowed, errors: errors.length, firstError: errors[0], elapsedMs: Math.round(elapsedMs) };
}

test('cluster: 3 store instances, 1,000 concurrent decisions of 100/min on one key -> exactly 100 allowed; several keys on every master', async (t) => {
  const nodes = [store(), store(), store()];
  await Promise.all(nodes.map((n) => n.waitReady(5000)));
  for (const algorithm of ['sliding-window', 'gcra'] as const) {
    for (let round = 0; round < 3; round++) {
      const r = await hammer(nodes, algorithm, fresh(`hammer-${algorithm}`));
      t.diagnostic(`${algorithm} round ${round}: ${JSON.stringify(r)}`);
      assert.equal(r.errors, 0, r.firstError);
      const extra = algorithm === 'gcra' || r.elapsedMs >= 600 ? Math.floor(r.elapsedMs / 600) : 0;
      assert.ok(r.allowed >= 100 && r.allowed <= 100 + extra, `allowed ${r.allowed} (tolerance +${extra})`);
    }
  }
  // Many keys, two windows each (a cross-slot decision would fail with CROSSSLOT).
  const keys = Array.from({ length: 60 }, (_, i) => fresh(`spread-${i}`));
  await Promise.all(keys.map((key, i) => nodes[i % 3]!.rate([
    { key, limit: 5, periodMs: 10_000, cost: 1, algorithm: 'gcra' },
    { key, limit: 50, periodMs: 600_000, cost: 1, algorithm: 'gcra' },
  ])));
  const sizes = await Promise.all(cluster.nodes.map(async (n) => Number(/:(\d+)/.exec(await rawCommand(n.port, ['DBSIZE']))![1])));
  t.diagnostic(`keys per master: ${sizes.join(', ')}`);
  for (const s of sizes) assert.ok(s > 0, 'every master holds some keys');
});

test('cluster: all-or-none across windows, and decisions equal MemoryStore with the same clock', async () => {
  let now = 1_700_000_000_000;
  const clock = () => now;
  const redis = store(1000, clock);
  await redis.waitReady(5000);
  const memory = new MemoryStore(clock);
  const key = fresh('eq');
  const windows: [number, number][] = [[4, 1000], [10, 10_000]];
  for (const algorithm of ['gcra', 'sliding-window'] as const) {
    for (let i = 0; i < 300; i++) {
      const q = windows.map(([limit, periodMs]) => ({ key: `${key}-${algorithm}`, limit, periodMs, cost: 1 + (i % 2), algorithm }));
      assert.deepEqual(await redis.rate(q), memory.rateNow(q), `${algorithm} step ${i}`);
      now += (i * 37) % 450;
    }
  }
  await memory.close();
  // Quotas live in the key's slot too.
  const qk = fresh('quota');
  assert.deepEqual(await redis.quota({ key: qk, limit: 3, cost: 2, periodEnd: Date.now() + 60_000 }), { allowed: true, used: 2, remaining: 1 });
  assert.deepEqual(await redis.quota({ key: qk, limit: 3, cost: 2, periodEnd: Date.now() + 60_000 }), { allowed: false, used: 2, remaining: 1 });
  assert.equal(await redis.quotaUsage(qk), 2);
});

test('cluster: a master killed -> calls reject within timeout + slack; restarted on its port, the store works again by itself', async (t) => {
  const TIMEOUT = 50;
  const SLACK = 50;
  const s = store(TIMEOUT);
  await s.waitReady(5000);
  // A key served by the master we kill.
  const victim = cluster.nodes[1]!;
  let key = '';
  for (let i = 0; ; i++) {
    key = fresh(`victim-${i}`);
    // The victim answers MOVED for a slot it does not serve.
    const reply = await rawCommand(victim.port, ['GET', s.rateKey({ key, algorithm: 'gcra', periodMs: 60_000, limit: 1_000_000 })]);
    if (!reply.startsWith('-MOVED')) break;
  }
  const q: RateQuery[] = [{ key, limit: 1_000_000, periodMs: 60_000, cost: 1, algorithm: 'gcra' }];
  await s.rate(q);
  await victim.kill('SIGKILL');
  const lat: number[] = [];
  let ok = 0;
  const errors = new Set<string>();
  const end = performance.now() + 800;
  while (performance.now() < end) {
    const t0 = performance.now();
    try { await s.rate(q); ok++; } catch (err) { errors.add((err as Error).message); }
    lat.push(performance.now() - t0);
    await sleep(5);
  }
  const max = Math.max(...lat);
  t.diagnostic(`master down: ${lat.length} calls, ${ok} ok, max latency ${max.toFixed(1)} ms; errors: ${[...errors].join(' | ')}`);
  assert.equal(ok, 0);
  assert.ok(max <= TIMEOUT + SLACK, `max latency ${max.toFixed(1)} ms`);
  const t0 = performance.now();
  await victim.restart();
  for (;;) {
    try { await s.rate(q); break; } catch {
      if (performance.now() - t0 > 15_000) assert.fail('the store did not recover within 15 s');
      await sleep(50);
    }
  }
  t.diagnostic(`recovered ${(performance.now() - t0).toFixed(0)} ms after the master restarted`);
});
