/** Scaling across nodes sharing a real redis-server: every node sees the cluster's demand; one node (the lease holder) pushes. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { silentLogger } from '../core/log.js';
import { startRedis, type RedisServer } from '../../test/redis-server.js';
import { ScalingAdvisor, type ScaledService } from './advisor.js';
import { scalingPolicyOf, type ScalingSettings } from './policy.js';

let redis: RedisServer;
const clients: Redis[] = [];
before(async () => { redis = await startRedis(); });
after(async () => {
  for (const c of clients) c.disconnect();
  await redis?.stop();
});

const settings: ScalingSettings = { intervalMs: 60_000, keda: null, gateway: { targetUtilization: 0.7, minNodes: 1, maxNodes: 10 }, baseDir: '/' };
const fail = (p: unknown, m: string) => { throw new Error(m); };

function node(id: string, clock: () => number): ScalingAdvisor {
  const a = new ScalingAdvisor(silentLogger, clock);
  const service: ScaledService = {
    name: 'orders', routes: ['list'], healthyTargets: () => 1, queued: () => 0,
    scaling: scalingPolicyOf({ target_concurrency: 2, target_utilization: 1, min_replicas: 1, max_replicas: 20, stable_window: '10s', panic_window: '2s' }, fail),
  };
  a.configure(settings, [service]);
  const c = new Redis({ port: redis.port, host: '127.0.0.1', lazyConnect: false });
  clients.push(c);
  a.share(c, 'tp-test:', id);
  return a;
}

test('two nodes, each with half the traffic: both decide on the sum; exactly one holds the lease; a node that leaves hands it over', async () => {
  let now = 1_000_000;
  const clock = () => now;
  const a = node('node-a', clock);
  const b = node('node-b', clock);
  try {
    for (let tick = 0; tick < 6; tick++) {
      now += 1000;
      // Each node: 10 requests of 400 ms in the interval -> 4 in flight on each, 8 in all.
      for (let i = 0; i < 10; i++) {
        a.meter.record('orders', 'list', 200, 400);
        b.meter.record('orders', 'list', 200, 400);
      }
      await a.tick();
      await b.tick();
    }
    const ra = a.report() as { services: { signals: { rps: number; concurrency: number }; desired_replicas: number; routes: { name: string; rps: number }[] }[]; cluster: { nodes: number; pushes_triggers: boolean } };
    const rb = b.report() as typeof ra;
    // b merged a's tick of this round, a merged b's previous one: both see ~20 rps / 8 in flight.
    assert.equal(rb.services[0]!.signals.rps, 20);
    assert.equal(rb.services[0]!.signals.concurrency, 8);
    assert.equal(ra.services[0]!.signals.rps, 20);
    assert.equal(ra.services[0]!.routes[0]!.rps, 20);
    assert.equal(ra.services[0]!.desired_replicas, 4, '8 in flight / 2 per replica');
    assert.equal(rb.services[0]!.desired_replicas, 4);
    assert.equal(ra.cluster.nodes, 2);
    assert.equal([ra.cluster.pushes_triggers, rb.cluster.pushes_triggers].filter(Boolean).length, 1, 'one leader');
    const leader = ra.cluster.pushes_triggers ? a : b;
    const other = leader === a ? b : a;
    await leader.close();
    now += 1000;
    await other.tick();
    assert.equal((other.report() as typeof ra).cluster.pushes_triggers, true, 'the lease passes on');
  } finally {
    await a.close();
    await b.close();
  }
});

test('a node restarted under the same id is counted again (a new boot, a new sequence)', async () => {
  let now = 3_000_000;
  const clock = () => now;
  const b = node('steady', clock);
  let a = node('restarts', clock);
  try {
    for (let t = 0; t < 5; t++) {
      now += 1000;
      a.meter.record('orders', 'list', 200, 100);
      await a.tick();
      await b.tick();
    }
    await a.close();
    a = node('restarts', clock); // same id, new process
    now += 1000;
    for (let i = 0; i < 10; i++) a.meter.record('orders', 'list', 200, 100);
    await a.tick();
    await b.tick();
    const r = b.report() as { services: { signals: { rps: number } }[] };
    assert.equal(r.services[0]!.signals.rps, 10, 'the restarted node\'s first tick is merged');
  } finally {
    await a.close();
    await b.close();
  }
});

test('redis down: a node decides alone on its own traffic and pushes', async () => {
  let now = 2_000_000;
  const a = new ScalingAdvisor(silentLogger, () => now);
  a.configure(settings, [{ name: 'orders', routes: [], healthyTargets: () => 1, queued: () => 0, scaling: scalingPolicyOf({ target_concurrency: 2, target_utilization: 1 }, fail) }]);
  const dead = new Redis({ port: 1, host: '127.0.0.1', lazyConnect: true, enableOfflineQueue: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  clients.push(dead);
  a.share(dead, 'tp-test:', 'lonely');
  try {
    now += 1000;
    for (let i = 0; i < 10; i++) a.meter.record('orders', 'x', 200, 400);
    await a.tick();
    const r = a.report() as { services: { signals: { rps: number } }[]; cluster: { nodes: number; pushes_triggers: boolean } };
    assert.equal(r.services[0]!.signals.rps, 10);
    assert.deepEqual([r.cluster.nodes, r.cluster.pushes_triggers], [1, true]);
  } finally {
    await a.close();
  }
});

test('redis goes down: KEDA, the gauges and /api/scaling keep the cluster-wide count (a node alone sees only its share)', async () => {
  const own = await startRedis();
  let now = 5_000_000;
  const mk = (id: string) => {
    const a = new ScalingAdvisor(silentLogger, () => now);
    a.configure(settings, [{
      name: 'orders', routes: ['list'], healthyTargets: () => 4, queued: () => 0,
      // (no stabilisation, no cooldown: the local count would follow the local traffic at once)
      scaling: scalingPolicyOf({ target_concurrency: 2, target_utilization: 1, min_replicas: 1, max_replicas: 20, stable_window: '10s', panic_window: '2s', scale_down_stabilization: 0, scale_down_cooldown: 0 }, fail),
    }]);
    const c = new Redis({ port: own.port, host: '127.0.0.1', enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => 1000 });
    c.on('error', () => undefined);
    clients.push(c);
    a.share(c, 'tp-down:', id);
    return { a, ready: new Promise((r) => c.once('ready', r)) };
  };
  const [na, nb] = [mk('a'), mk('b')];
  const { a } = na;
  const b = nb.a;
  let stopped = false;
  try {
    await Promise.all([na.ready, nb.ready]);
    const round = async () => {
      now += 1000;
      for (let i = 0; i < 10; i++) {
        a.meter.record('orders', 'list', 200, 400);
        b.meter.record('orders', 'list', 200, 400);
      }
      await a.tick();
      await b.tick();
    };
    for (let t = 0; t < 12; t++) await round();
    assert.deepEqual([a.lookup('orders')!.desired, b.lookup('orders')!.desired], [4, 4], '8 in flight in all / 2');
    await own.stop();
    stopped = true;
    for (let t = 0; t < 12; t++) await round();
    // Each node alone: 4 in flight -> 2; but the answer stays at the cluster's 4.
    const r = a.report() as { services: { signals: { concurrency: number }; desired_replicas: number }[] };
    assert.equal(r.services[0]!.signals.concurrency, 4);
    assert.deepEqual([a.lookup('orders')!.desired, b.lookup('orders')!.desired, r.services[0]!.desired_replicas], [4, 4, 4]);
    assert.equal(a.gauges()[0]!.desired, 4);
  } finally {
    await a.close();
    await b.close();
    if (!stopped) await own.stop();
  }
});

test('a node that publishes twice between another\'s looks loses no tick: both are merged (counts add up, the in-flight level is their mean)', async () => {
  let now = 7_000_000;
  const clock = () => now;
  const a = node('twice-a', clock);
  const b = node('twice-b', clock);
  try {
    await a.tick();
    await b.tick();
    for (let round = 0; round < 3; round++) {
      // a: two ticks of 10 requests of 400 ms each (1 s apart); b looks once, 2 s after its last look.
      for (let k = 0; k < 2; k++) {
        now += 1000;
        for (let i = 0; i < 10; i++) a.meter.record('orders', 'list', 200, 400);
        await a.tick();
      }
      await b.tick();
    }
    // b: 20 requests of a over its 2 s interval = 10 rps (one of a's ticks lost would read 5).
    const r = b.report() as { services: { signals: { rps: number } }[] };
    assert.equal(r.services[0]!.signals.rps, 10);
    // A stream open on a: one in flight, whether b merges two of a's ticks or none since its last look.
    a.meter.begin('orders');
    const concurrency = () => (b.report() as { services: { signals: { concurrency: number } }[] }).services[0]!.signals.concurrency;
    for (let k = 0; k < 2; k++) {
      now += 1000;
      a.meter.sample();
      await a.tick();
    }
    await b.tick();
    assert.equal(concurrency(), 1, 'two ticks of a: their mean, not their sum');
    now += 500;
    await b.tick();
    assert.equal(concurrency(), 1, 'no new tick of a: its level carries over');
  } finally {
    await a.close();
    await b.close();
  }
});

test('redis down from the start (no count decided on the cluster\'s traffic yet): a node never scales below what runs on its own share', async () => {
  const got: number[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => { got.push((JSON.parse(Buffer.concat(chunks).toString()) as { desired: number }).desired); res.writeHead(204).end(); });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  let now = 9_000_000;
  const a = new ScalingAdvisor(silentLogger, () => now);
  a.configure(settings, [{
    name: 'orders', routes: [], healthyTargets: () => 4, queued: () => 0,
    scaling: scalingPolicyOf({
      target_concurrency: 2, target_utilization: 1, stable_window: '10s', panic_window: '2s',
      triggers: [{ type: 'webhook', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, secret: 'whsec-0123456789abcdef' }],
    }, fail, [], undefined, ['127.0.0.1/32']),
  }]);
  const dead = new Redis({ port: 1, host: '127.0.0.1', lazyConnect: true, enableOfflineQueue: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  clients.push(dead);
  a.share(dead, 'tp-test:', 'partitioned');
  try {
    // 4 replicas run; this node sees 1 in flight (its share): alone it would ask for 1.
    for (let t = 0; t < 60; t++) {
      now += 1000;
      for (let i = 0; i < 10; i++) a.meter.record('orders', 'x', 200, 100);
      await a.tick();
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.deepEqual(got.filter((n) => n < 4), [], `pushed ${JSON.stringify(got)}`);
    assert.equal(a.lookup('orders')!.desired, 4, 'KEDA is told what runs, not the node\'s share');
  } finally {
    await a.close();
    await new Promise((r) => { server.closeAllConnections(); server.close(r); });
  }
});

test('a node whose wall clock is off by more than three intervals still counts (freshness is when its entry last changed, on this node\'s clock), and its field is not deleted', async () => {
  const { SharedDemand } = await import('./shared.js');
  const c = new Redis({ port: redis.port, host: '127.0.0.1' });
  clients.push(c);
  const counts = (n: number) => ({ orders: { n, errors: 0, timeouts: 0, busyMs: 0, hist: {} } });
  // "behind" runs 2 minutes late (a node without NTP): its entries look 2 minutes old to the others.
  const behind = new SharedDemand(c, 'tp-skew:', 'behind', silentLogger, 1000, () => Date.now() - 120_000);
  const ahead = new SharedDemand(c, 'tp-skew:', 'on-time', silentLogger, 1000);
  const got: number[] = [];
  for (let t = 0; t < 4; t++) {
    await behind.exchange({ counts: counts(5), routes: {}, utilization: 0.5 }, 1000);
    const others = await ahead.exchange({ counts: counts(1), routes: {}, utilization: 0.1 }, 1000);
    got.push(others.reduce((a, o) => a + (o.counts['orders']?.n ?? 0), 0));
    await new Promise((r) => setTimeout(r, 20));
  }
  // The first look cannot tell (it only has the time stamp); from the second, each new entry once.
  assert.deepEqual(got.slice(1), [5, 5, 5]);
  assert.equal(ahead.nodes, 2);
  assert.equal(ahead.utilization.get('behind'), 0.5);
  assert.ok(await c.hexists('tp-skew:{scaling}', 'behind'), 'the late node\'s field is kept');
  await Promise.all([behind.leave(), ahead.leave()]);
});

test('a field of the shared hash this node cannot read (null, an entry without counts, garbage) is skipped and logged once: the others still merge, one node still pushes', async () => {
  const { SharedDemand } = await import('./shared.js');
  const c = new Redis({ port: redis.port, host: '127.0.0.1' });
  clients.push(c);
  const warned: unknown[] = [];
  const a = new SharedDemand(c, 'tp-garbage:', 'a', { warn: (o: unknown) => void warned.push(o) }, 1000);
  const b = new SharedDemand(c, 'tp-garbage:', 'b', silentLogger, 1000);
  const counts = { orders: { n: 5, errors: 0, timeouts: 0, busyMs: 500, hist: { 10: 5 } } };
  const entry = (at: number) => ({ boot: 'old', seq: 1, at, routes: {}, utilization: 0.1 });
  await c.hset('tp-garbage:{scaling}', {
    'is-null': 'null',
    'no-counts': JSON.stringify([entry(Date.now())]),
    'null-in-list': JSON.stringify([null]),
    'bad-count': JSON.stringify({ ...entry(Date.now()), counts: { orders: null } }),
    'a-number': '42',
  });
  for (let tick = 0; tick < 3; tick++) {
    await a.exchange({ counts, routes: {}, utilization: 0.2 }, 1000);
    const got = await b.exchange({ counts, routes: {}, utilization: 0.2 }, 1000);
    assert.equal(a.ok && b.ok, true, 'redis answered: not taken for down');
    assert.equal([a.leader, b.leader].filter(Boolean).length, 1, 'one node pushes');
    if (tick > 0) {
      assert.equal(b.nodes, 2);
      assert.equal(got.reduce((s, e) => s + e.counts.orders!.n, 0), 5, 'a\'s entry merged');
    }
  }
  assert.equal(warned.length, 5, 'each unreadable field logged once (by a, which saw all five)');
  // (a value that is no object or list is deleted, as an unparsable one is)
  assert.deepEqual((await c.hkeys('tp-garbage:{scaling}')).sort(), ['a', 'b', 'bad-count', 'no-counts', 'null-in-list']);
});
