/**
 * Limits across gateway nodes on one real Redis: three nodes round-robined count as one, and a
 * Redis killed mid-load never holds a request past the limit's timeout; each `fault` mode does
 * what it says, and the limiter is exact again once Redis is back.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, request as undiciRequest } from 'undici';
import { sleep, startGateway, startUpstream, type TestGateway, type TestUpstream } from './helpers.js';
import { startRedis, type RedisServer } from './redis-server.js';

let redis: RedisServer;
let up: TestUpstream;
before(async () => {
  redis = await startRedis();
  up = await startUpstream();
});
after(async () => {
  await up?.close();
  await redis?.stop();
});

const config = (prefix: string, fault: string, limit = 100) => `
redis: {url: "${redis.url}", prefix: "${prefix}:", timeout: 50}
services:
  - name: api
    url: ${up.url}
    routes:
      - name: limited
        paths: [/l]
        plugins: [{name: rate-limit, config: {limit: ${limit}, window: 1m, by: route, policy: redis, fault: ${fault}, timeout: 60ms}}]
`;

/** n requests over `conns` connections, round-robin over the gateways; statuses and the slowest answer. */
async function load(gws: TestGateway[], n: number, conns: number, agent: Agent): Promise<{ statuses: number[]; maxMs: number; elapsed: number }> {
  const statuses: number[] = [];
  let maxMs = 0;
  let next = 0;
  const started = Date.now();
  await Promise.all(Array.from({ length: conns }, async () => {
    while (next < n) {
      const i = next++;
      const t0 = Date.now();
      const r = await undiciRequest(`${gws[i % gws.length]!.url}/l`, { dispatcher: agent });
      await r.body.text();
      maxMs = Math.max(maxMs, Date.now() - t0);
      statuses.push(r.statusCode);
    }
  }));
  return { statuses, maxMs, elapsed: Date.now() - started };
}

test('three nodes round-robined share one limit: 1,000 requests, limit 100/min -> within 1% of 100', { timeout: 60_000 }, async () => {
  const gws = await Promise.all([1, 2, 3].map(() => startGateway(config('nodes', 'closed'))));
  const agent = new Agent({ connections: 64 });
  try {
    const { statuses, elapsed } = await load(gws, 1000, 64, agent);
    const allowed = statuses.filter((s) => s === 200).length;
    assert.equal(statuses.filter((s) => s === 429).length + allowed, 1000, `other statuses: ${[...new Set(statuses)]}`);
    // GCRA: the burst of 100, plus one per 600 ms the run lasts.
    assert.ok(allowed >= 99 && allowed <= 101 + Math.floor(elapsed / 600), `${allowed} allowed in ${elapsed} ms`);
    console.log(`three nodes: ${allowed} of 1000 allowed in ${elapsed} ms`);
  } finally {
    await agent.close();
    await Promise.all(gws.map((g) => g.close()));
  }
});

test('Redis killed mid-load: no request waits past the timeout; fault open lets through, closed answers 503, local counts on the node; back up, exact again', { timeout: 60_000 }, async () => {
  const open = await startGateway(config('f-open', 'open', 20));
  const closed = await startGateway(config('f-closed', 'closed', 20));
  const local = await startGateway(config('f-local', 'local', 20));
  const agent = new Agent({ connections: 16 });
  try {
    // Up: each spends its 20.
    for (const g of [open, closed, local]) {
      const { statuses } = await load([g], 30, 4, agent);
      assert.equal(statuses.filter((s) => s === 200).length, 20);
    }
    await redis.kill();
    const results: Record<string, { statuses: number[]; maxMs: number }> = {};
    for (const [name, g] of [['open', open], ['closed', closed], ['local', local]] as const) results[name] = await load([g], 200, 16, agent);
    for (const [name, r] of Object.entries(results)) {
      // Each answer within the limit's timeout (60 ms) plus the request's own time: never hanging on Redis.
      assert.ok(r.maxMs < 400, `${name}: slowest answer ${r.maxMs} ms with Redis down`);
    }
    assert.deepEqual([...new Set(results['open']!.statuses)], [200], 'fault open: everything through');
    assert.deepEqual([...new Set(results['closed']!.statuses)], [503], 'fault closed: 503');
    const localAllowed = results['local']!.statuses.filter((s) => s === 200).length;
    assert.ok(localAllowed >= 20 && localAllowed <= 22, `fault local: the node's own count (${localAllowed} allowed)`);
    assert.ok(results['local']!.statuses.every((s) => s === 200 || s === 429));

    await redis.restart();
    // The store reconnects by itself; Redis restarted empty, so the limit starts over: exactly 20 again.
    const deadline = Date.now() + 10_000;
    let statuses: number[] = [];
    for (;;) {
      statuses = (await load([closed], 1, 1, agent)).statuses;
      if (statuses[0] === 200 || Date.now() > deadline) break;
      await sleep(100);
    }
    assert.equal(statuses[0], 200, 'the limiter answers again after Redis came back');
    const again = await load([closed], 40, 4, agent);
    assert.equal(again.statuses.filter((s) => s === 200).length, 19, 'exact again (one was spent by the probe)');
  } finally {
    await agent.close();
    await Promise.all([open, closed, local].map((g) => g.close()));
  }
});
