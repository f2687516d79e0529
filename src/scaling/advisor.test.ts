/**
 * The advisor against a fake Kubernetes scale API and webhook receivers on loopback. The clock is
 * a number the test moves; ticks are called by the test (interval 60 s: the timer never fires).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../core/log.js';
import { ScalingAdvisor, type ScaledService } from './advisor.js';
import { KubernetesTrigger } from './kubernetes.js';
import { scalingPolicyOf, type ScalingSettings } from './policy.js';
import type { ServiceScalingConfig } from './schema.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const dir = mkdtempSync(join(tmpdir(), 'tp-advisor-'));
writeFileSync(join(dir, 'token'), 'sa-token\n');
const settings: ScalingSettings = { intervalMs: 60_000, keda: null, gateway: { targetUtilization: 0.7, minNodes: 1, maxNodes: 10 }, baseDir: dir };
const fail = (_p: unknown, m: string) => { throw new Error(m); };
/** The webhook receivers here are on loopback: allowed as scaling.webhook_allowed_networks would. */
const LOCAL = ['127.0.0.1/32'];

/** A scale subresource: spec follows a PATCH at once, status `statusLagMs` (real ms) later. `down` answers 503. */
async function scaleApi(spec: number) {
  const s = {
    spec, status: spec, patches: [] as number[], reads: 0, down: false, statusLagMs: 0,
    /** metadata.resourceVersion, one more at each change; a PATCH sent with another is answered 409. */
    rv: 1, conflicts: 0,
    /** Someone else (kubectl scale, another controller) sets spec.replicas. */
    set(n: number) { s.spec = n; s.status = n; s.rv++; },
  };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (s.down) return void res.writeHead(503).end('{"kind":"Status","code":503}');
      if (req.method === 'PATCH') {
        const patch = JSON.parse(Buffer.concat(chunks).toString()) as { metadata?: { resourceVersion?: string }; spec: { replicas: number } };
        if (patch.metadata?.resourceVersion !== undefined && patch.metadata.resourceVersion !== String(s.rv)) {
          s.conflicts++;
          return void res.writeHead(409, { 'content-type': 'application/json' }).end('{"kind":"Status","reason":"Conflict","code":409}');
        }
        const n = patch.spec.replicas;
        s.patches.push(n);
        s.spec = n;
        s.rv++;
        setTimeout(() => { s.status = n; }, s.statusLagMs);
      } else s.reads++;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Scale', metadata: { resourceVersion: String(s.rv) }, spec: { replicas: s.spec }, status: { replicas: s.status } }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return Object.assign(s, { url, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) });
}

/** A webhook receiver: answers `status()` and records the desired counts it got. */
async function hookReceiver(status: () => number = () => 204) {
  const got: number[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const code = status();
      if (code < 300) got.push((JSON.parse(Buffer.concat(chunks).toString()) as { desired: number }).desired);
      res.writeHead(code).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  return { url, got, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) };
}

function advisor(scaling: ServiceScalingConfig, opts: { targets?: number; apis?: string[] } = {}) {
  const t = { now: 1_000_000 };
  const a = new ScalingAdvisor(silentLogger, () => t.now);
  const service: ScaledService = {
    name: 'orders', routes: ['list'], healthyTargets: () => opts.targets ?? 1, queued: () => 0,
    scaling: scalingPolicyOf(scaling, fail, opts.apis ?? [], undefined, LOCAL),
  };
  a.configure(settings, [service]);
  return {
    a, t,
    /** One tick `ms` after the last, then a moment for the reads and pushes it started. */
    async tick(ms = 1000, settle = 15) {
      t.now += ms;
      await a.tick();
      await sleep(settle);
    },
    desired: () => (a.report() as { services: { desired_replicas: number | null }[] }).services[0]!.desired_replicas,
  };
}

const k8s = (url: string) => ({ type: 'kubernetes' as const, namespace: 'shop', deployment: 'orders', api_server: url, token_file: './token' });

test('current from the scale subresource: no decision before the first reading; spec.replicas, not status; a late rollout never undoes a decision', async () => {
  const api = await scaleApi(10);
  api.statusLagMs = 3000; // pods take 3 s to come and go: status.replicas lags spec.replicas
  const s = advisor({ target_concurrency: 10, current_replicas: 'trigger', triggers: [k8s(api.url)] }, { apis: [api.url] });
  try {
    // No traffic, 10 running. The first tick only reads; then the start's cooldown and the
    // stabilisation window (seeded with the 10 that run) hold 10 for 30 s.
    await s.tick();
    assert.equal(s.desired(), null, 'no decision before the first reading');
    assert.equal(s.a.lookup('orders')?.pending, true, 'KEDA is told there is no decision yet (not min replicas)');
    assert.deepEqual(api.patches, []);
    for (let i = 0; i < 30; i++) await s.tick();
    assert.deepEqual([api.patches, s.desired()], [[], 10]);
    for (let i = 0; i < 10; i++) await s.tick();
    assert.deepEqual(api.patches, [5], 'one step down (halving) after the cooldown');
    // Every 30 s one more step: 5 -> 2 -> 1; never back up although status.replicas lags.
    for (let i = 0; i < 70; i++) await s.tick();
    assert.deepEqual(api.patches, [5, 2, 1]);
  } finally {
    await s.a.close();
    await api.close();
  }
});

test('with a kubernetes trigger the current count comes from the scale subresource by default; targets with one is a config error', () => {
  const api = 'http://127.0.0.1:1';
  assert.equal(scalingPolicyOf({ target_concurrency: 4, triggers: [k8s(api)] }, fail, [api]).currentFrom, 'trigger');
  assert.equal(scalingPolicyOf({ target_concurrency: 4, triggers: [{ type: 'webhook', url: 'http://x/h', secret: 'whsec-0123456789abcdef' }] }, fail).currentFrom, 'targets');
  const problems: string[] = [];
  scalingPolicyOf({ target_concurrency: 4, current_replicas: 'targets', triggers: [k8s(api)] }, (p, m) => problems.push(`${p.join('.')}: ${m}`), [api]);
  assert.deepEqual(problems.length, 1);
  assert.match(problems[0]!, /^current_replicas: targets cannot be used with a kubernetes trigger/);
});

test('a second kubernetes trigger on a service is a config error (it was dropped unseen: only the first ran)', () => {
  const api = 'http://127.0.0.1:1';
  const problems: string[] = [];
  scalingPolicyOf({ target_concurrency: 4, triggers: [k8s(api), { ...k8s(api), deployment: 'orders-canary' }] }, (p, m) => problems.push(`${p.join('.')}: ${m}`), [api]);
  assert.deepEqual(problems, ['triggers.1: a second kubernetes trigger (the first is triggers[0]): a service has one scale subresource, which gives its current count']);
});

test('a trigger timeout of 0 or past the longest timer is a config error (every call was aborted at once)', () => {
  const problems: string[] = [];
  const hook = { type: 'webhook' as const, url: 'http://127.0.0.1:1/h', secret: 'whsec-0123456789abcdef' };
  const api = 'http://127.0.0.1:1';
  scalingPolicyOf({ target_concurrency: 4, triggers: [{ ...hook, timeout: 0 }, { ...hook, timeout: '30d' }, { ...hook, timeout: '2s' }] }, (p, m) => problems.push(`${p.join('.')}: ${m}`), [], undefined, LOCAL);
  scalingPolicyOf({ target_concurrency: 4, triggers: [{ ...k8s(api), timeout: '0s' }] }, (p, m) => problems.push(`${p.join('.')}: ${m}`), [api]);
  const msg = 'must be above 0 and at most 24d (2147483647 ms, the longest timer)';
  assert.deepEqual(problems, [`triggers.0.timeout: ${msg}`, `triggers.1.timeout: ${msg}`, `triggers.0.timeout: ${msg}`]);
});

test('a webhook URL whose user or password does not percent-decode is a config error (naming neither)', () => {
  const problems: string[] = [];
  scalingPolicyOf({ target_concurrency: 4, triggers: [{ type: 'webhook', url: 'http://hookuser:Bad%zzPw@127.0.0.1:1/h', secret: 'whsec-0123456789abcdef' }] }, (p, m) => problems.push(`${p.join('.')}: ${m}`), [], undefined, LOCAL);
  assert.deepEqual(problems, ['triggers.0.url: the user or password in the URL has a malformed percent-encoding']);
  assert.equal(scalingPolicyOf({ target_concurrency: 4, triggers: [{ type: 'webhook', url: 'http://u:p%40ss@127.0.0.1:1/h', secret: 'whsec-0123456789abcdef' }] }, fail, [], undefined, LOCAL).currentFrom, 'targets');
});

test('webhook only (current from targets): nothing pushed before a full stable window; then the count the receiver took is the current one', async () => {
  const hook = await hookReceiver();
  // One healthy target: a Service address in front of any number of replicas.
  const s = advisor({ target_concurrency: 2, target_utilization: 1, min_replicas: 0, stable_window: '10s', panic_window: '2s', triggers: [{ type: 'webhook', url: hook.url, secret: 'whsec-0123456789abcdef' }] });
  try {
    for (let i = 0; i < 9; i++) await s.tick();
    assert.deepEqual(hook.got, [], 'no push on a guess');
    // 10 s of traffic: 4 in flight -> 2; pushed once the window is full (tick 10 s after the first).
    for (let i = 0; i < 3; i++) {
      for (let k = 0; k < 10; k++) s.a.meter.record('orders', 'list', 200, 400);
      await s.tick();
    }
    assert.deepEqual(hook.got, [2]);
    // From now on current is 2 (the receiver took it), not the 1 target: no panic on 2 replicas' worth.
    for (let i = 0; i < 20; i++) {
      for (let k = 0; k < 10; k++) s.a.meter.record('orders', 'list', 200, 400);
      await s.tick();
    }
    assert.deepEqual(hook.got, [2]);
    assert.equal((s.a.report() as { services: { current_replicas: number; mode: string }[] }).services[0]!.current_replicas, 2);
    assert.equal((s.a.report() as { services: { mode: string }[] }).services[0]!.mode, 'stable');
  } finally {
    await s.a.close();
    await hook.close();
  }
});

test('the default clock is monotonic: a wall clock stepping back an hour does not inflate a tick', async (t) => {
  t.mock.timers.enable({ apis: ['Date'], now: Date.now() });
  const a = new ScalingAdvisor(silentLogger);
  a.configure(settings, [{ name: 'orders', routes: [], healthyTargets: () => 1, queued: () => 0, scaling: scalingPolicyOf({ target_concurrency: 2 }, fail) }]);
  try {
    await a.tick();
    await sleep(200);
    t.mock.timers.setTime(Date.now() - 3_600_000);
    for (let k = 0; k < 10; k++) a.meter.record('orders', 'x', 200, 20);
    await a.tick();
    // 10 requests over ~200 ms: ~50 rps (a 1 ms interval would make it 10000).
    const rps = (a.report() as { services: { signals: { rps: number } }[] }).services[0]!.signals.rps;
    assert.ok(rps > 5 && rps < 100, String(rps));
  } finally {
    t.mock.timers.reset();
    await a.close();
  }
});

test('a push that failed is retried with backoff (5 s, doubling, at most 60 s): Kubernetes API down at decision time, then back', async () => {
  const api = await scaleApi(1);
  let attempts = 0;
  const s = advisor({ target_concurrency: 2, target_utilization: 1, stable_window: '10s', panic_window: '2s', triggers: [k8s(api.url)] }, { apis: [api.url] });
  try {
    await s.tick(); // first reading: 1
    api.down = true;
    const load = () => { for (let k = 0; k < 10; k++) s.a.meter.record('orders', 'list', 200, 600); }; // 6 in flight -> 3
    const before = api.patches.length;
    for (let i = 0; i < 4; i++) { load(); await s.tick(); }
    assert.equal(s.desired(), 3);
    assert.equal(api.patches.length, before, 'nothing taken while down');
    api.down = false;
    for (let i = 0; i < 8 && !api.patches.includes(3); i++) { load(); await s.tick(); attempts++; }
    assert.deepEqual(api.patches, [3], 'sent again once the backoff passed');
    assert.ok(attempts <= 6, String(attempts));
  } finally {
    await s.a.close();
    await api.close();
  }
});

test('a webhook that failed is retried after the backoff, not hammered; delivered once the receiver recovers', async () => {
  let answered = 0;
  let failing = true;
  const hits: number[] = [];
  const hook = await hookReceiver(() => { answered++; return failing ? 500 : 204; });
  const s = advisor({ target_concurrency: 2, target_utilization: 1, stable_window: '2s', panic_window: '1s', current_replicas: 'targets', triggers: [{ type: 'webhook', url: hook.url, secret: 'whsec-0123456789abcdef', retries: 0 }] });
  try {
    const load = () => { for (let k = 0; k < 10; k++) s.a.meter.record('orders', 'list', 200, 600); };
    for (let i = 0; i < 30; i++) { load(); await s.tick(); hits.push(answered); }
    // 30 s of a 500: one attempt per backoff (5 s, 10 s, 20 s...), not one per tick.
    assert.ok(answered >= 2 && answered <= 4, `${answered} attempts: ${hits.join(',')}`);
    assert.deepEqual(hook.got, []);
    failing = false;
    for (let i = 0; i < 45 && hook.got.length === 0; i++) { load(); await s.tick(); }
    assert.deepEqual(hook.got, [3]);
  } finally {
    await s.a.close();
    await hook.close();
  }
});

test('a long-lived request counts while it runs (in-flight gauge), not all at once when it ends', async () => {
  const s = advisor({ target_concurrency: 2, target_utilization: 1, min_replicas: 0, stable_window: '10s', panic_window: '2s' });
  const sampled = () => { for (let k = 0; k < 10; k++) s.a.meter.sample(); };
  try {
    for (let i = 0; i < 3; i++) { sampled(); await s.tick(); }
    // An SSE stream opens and runs 45 s: one request in flight the whole time.
    s.a.meter.begin('orders');
    s.a.meter.stop(); // (the test samples: the 100 ms timer firing between a drain and the end would add a real 1)
    const seen: { c: number; active: boolean; desired: number | null }[] = [];
    for (let i = 0; i < 45; i++) {
      sampled();
      await s.tick(1000, 0);
      const r = s.a.report() as { services: { signals: { concurrency: number } }[] };
      seen.push({ c: r.services[0]!.signals.concurrency, active: s.a.lookup('orders')!.active, desired: s.desired() });
    }
    assert.ok(seen.every((x) => x.c === 1 && x.active && x.desired === 1), JSON.stringify(seen.find((x) => !(x.c === 1 && x.active && x.desired === 1))));
    // It ends: its 45 s are not one tick's concurrency of 45 (no panic, no 23 replicas for one request).
    s.a.meter.record('orders', 'list', 200, 45_000);
    sampled();
    await s.tick();
    const r = s.a.report() as { services: { signals: { concurrency: number }; mode: string; reason: string }[] };
    assert.equal(r.services[0]!.signals.concurrency, 0);
    assert.equal(r.services[0]!.mode, 'stable', r.services[0]!.reason);
    assert.equal(s.desired(), 1);
  } finally {
    await s.a.close();
  }
});

test('workers: in-flight levels count once per worker, however many reports arrive in a tick (none: the last one holds)', async () => {
  const s = advisor({ target_concurrency: 2 });
  const report = (inflight: number) => ({ counts: { services: { orders: { n: 0, errors: 0, timeouts: 0, busyMs: 0, hist: {}, inflight } }, routes: {} }, queued: {}, elu: 0, cpuMs: 0 });
  const concurrency = () => (s.a.report() as { services: { signals: { concurrency: number } }[] }).services[0]!.signals.concurrency;
  try {
    // Worker 1 reports twice in this tick (its timer and the tick drift), worker 2 once.
    s.a.fromWorker(report(3), 1);
    s.a.fromWorker(report(3), 1);
    s.a.fromWorker(report(2), 2);
    await s.tick();
    assert.equal(concurrency(), 5);
    // No report this tick: the levels hold (3 + 2), they do not drop to 0.
    await s.tick();
    assert.equal(concurrency(), 5);
    // A worker silent for more than 3 intervals (here 3 x 60 s) no longer counts.
    s.a.fromWorker(report(3), 1);
    await s.tick(179_000);
    assert.equal(concurrency(), 3);
  } finally {
    await s.a.close();
  }
});

test('workers: the gateway\'s own load is each worker\'s last report, not the reports a tick happened to get (a 100 ms tick without one read an idle gateway)', async () => {
  const s = advisor({ target_concurrency: 2 });
  const nodes = () => s.a.gatewayGauges().desiredNodes;
  const report = (elu: number, cpuMs: number) => ({ counts: { services: {}, routes: {} }, queued: {}, elu, cpuMs, periodMs: 1000 });
  try {
    // Two workers, one busy (event loop 95%, a full CPU), reporting once a second; ticks of 100 ms.
    const seen: number[] = [];
    for (let second = 0; second < 2; second++) {
      s.a.fromWorker(report(0.95, 950), 1);
      s.a.fromWorker(report(0.2, 200), 2);
      for (let i = 0; i < 10; i++) {
        await s.tick(100, 0);
        seen.push(nodes());
      }
    }
    // ceil(0.95 / 0.7) = 2 on every tick.
    assert.deepEqual(seen, Array(20).fill(2));
    // A worker that reported twice within one tick (its timer and the tick drift) is not twice as busy.
    s.a.fromWorker(report(0.3, 300), 1);
    s.a.fromWorker(report(0.3, 300), 1);
    s.a.fromWorker(report(0.3, 300), 2);
    // (the primary's own event loop counts too: this process, running the loop above without a
    // pause, read as busy past 0.7 on a loaded machine; an idle moment makes it the idle primary it stands for)
    await sleep(250);
    await s.tick(100, 0);
    assert.equal(nodes(), 1, 'two CPUs at 30% of two: one node at 0.7');
  } finally {
    await s.a.close();
  }
});

test('workers: requests waiting for a bulkhead slot count once per worker, its last report (two reports in one tick are not twice as many, none is not zero)', async () => {
  const s = advisor({ target_concurrency: 2 });
  const report = (queued: number) => ({ counts: { services: {}, routes: {} }, queued: (queued > 0 ? { orders: queued } : {}) as Record<string, number>, elu: 0, cpuMs: 0 });
  const queued = () => (s.a.report() as { services: { signals: { queued: number } }[] }).services[0]!.signals.queued;
  try {
    s.a.fromWorker(report(3), 1);
    s.a.fromWorker(report(3), 1);
    s.a.fromWorker(report(2), 2);
    await s.tick(100, 0);
    assert.equal(queued(), 5);
    await s.tick(100, 0);
    assert.equal(queued(), 5, 'no report this tick: the queues are as last reported');
    s.a.fromWorker(report(0), 1);
    await s.tick(100, 0);
    assert.equal(queued(), 2, 'worker 1 drained its queue');
    s.a.workerGone(2);
    await s.tick(100, 0);
    assert.equal(queued(), 0);
  } finally {
    await s.a.close();
  }
});

test('webhook only, before a full stable window: a surge (panic) is pushed at once; a quiet start pushes nothing', async () => {
  const hook = await hookReceiver();
  const s = advisor({ target_concurrency: 2, target_utilization: 1, min_replicas: 1, max_replicas: 20, stable_window: '60s', panic_window: '2s', triggers: [{ type: 'webhook', url: hook.url, secret: 'whsec-0123456789abcdef' }] });
  try {
    await s.tick();
    await s.tick();
    assert.deepEqual(hook.got, [], 'nothing to push on a quiet start');
    // 40 requests of 400 ms per second: ~16 in flight, 8 replicas' worth on a guessed 1.
    for (let i = 0; i < 3; i++) {
      for (let k = 0; k < 40; k++) s.a.meter.record('orders', 'list', 200, 400);
      await s.tick();
    }
    assert.ok(hook.got.length >= 1 && hook.got.at(-1)! >= 4, `the surge was pushed within 3 s: ${JSON.stringify(hook.got)}`);
  } finally {
    await s.a.close();
    await hook.close();
  }
});

test('kubernetes trigger: a Scale whose spec omits replicas (omitempty: scaled to 0) reads 0, not the status of pods still stopping', async () => {
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Scale', spec: {}, status: { replicas: 3, selector: 'app=orders' } })));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const k = new KubernetesTrigger(k8s(url), silentLogger, dir);
  try {
    assert.equal(await k.read(), 0);
    assert.equal(k.current, 0);
    // The PATCH to 0 answers the same Scale: what was asked for is 0.
    k.current = 1;
    assert.equal(await k.push(0), true);
    assert.equal(k.current, 0);
  } finally {
    await k.close();
    await new Promise((r) => { server.closeAllConnections(); server.close(r); });
  }
});

test('a webhook\'s ca_file rotated on disk is used after the reload (the same config text kept the trigger, and its old CA, for good)', async () => {
  const { makeCa } = await import('../../test/certs.js');
  const { createServer: createHttpsServer } = await import('node:https');
  const { ConfigInputs } = await import('../config/inputs.js');
  const [oldCa, newCa] = [makeCa('Old Hook CA'), makeCa('New Hook CA')];
  const leaf = newCa.issue('127.0.0.1', { dns: ['127.0.0.1'] });
  const got: number[] = [];
  const server = createHttpsServer({ cert: leaf.cert, key: leaf.key }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => { got.push((JSON.parse(Buffer.concat(chunks).toString()) as { desired: number }).desired); res.writeHead(204).end(); });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  writeFileSync(join(dir, 'hook-ca.pem'), oldCa.cert);
  const cfg: ServiceScalingConfig = {
    target_concurrency: 2, target_utilization: 1, max_replicas: 20, stable_window: '60s', panic_window: '2s',
    triggers: [{ type: 'webhook', url: `https://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, secret: 'whsec-0123456789abcdef', retries: 0, ca_file: './hook-ca.pem' }],
  };
  const t = { now: 1_000_000 };
  const a = new ScalingAdvisor(silentLogger, () => t.now);
  // (what a reload does: the config compiles again, reading its files)
  const compiled = (): ScaledService => ({ name: 'orders', routes: ['list'], healthyTargets: () => 1, queued: () => 0, scaling: scalingPolicyOf(cfg, fail, [], new ConfigInputs(dir), LOCAL) });
  const surge = async () => {
    for (let k = 0; k < 40; k++) a.meter.record('orders', 'list', 200, 400);
    t.now += 1000;
    await a.tick();
    await sleep(100);
  };
  try {
    a.configure(settings, [compiled()]);
    for (let i = 0; i < 3; i++) await surge();
    assert.deepEqual(got, [], 'the receiver\'s certificate is not signed by the CA in the file');
    writeFileSync(join(dir, 'hook-ca.pem'), newCa.cert);
    a.configure(settings, [compiled()]);
    for (let i = 0; i < 3 && got.length === 0; i++) await surge();
    assert.ok(got.length >= 1 && got[0]! >= 4, `delivered with the rotated CA: ${JSON.stringify(got)}`);
  } finally {
    await a.close();
    await new Promise((r) => { server.closeAllConnections(); server.close(r); });
    oldCa.cleanup();
    newCa.cleanup();
  }
});

test('kubernetes trigger: close() ends a PATCH waiting on an API server that never answers at once', async () => {
  let arrived!: () => void;
  const reached = new Promise<void>((r) => { arrived = r; });
  const server = createServer(() => arrived());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const k = new KubernetesTrigger({ ...k8s(`http://127.0.0.1:${(server.address() as AddressInfo).port}`), timeout: '20s' }, silentLogger, dir);
  try {
    const pushed = k.push(3);
    await reached;
    const started = performance.now();
    await k.close();
    assert.ok(performance.now() - started < 2000, `close took ${Math.round(performance.now() - started)} ms`);
    assert.equal(await pushed, false);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test('in an IPv6 cluster (KUBERNETES_SERVICE_HOST is an IPv6 address) the in-pod API server is reached, and may be named in api_server', async () => {
  const { makeCa } = await import('../../test/certs.js');
  const { createServer: createHttpsServer } = await import('node:https');
  const ca = makeCa('Cluster CA');
  const leaf = ca.issue('kubernetes', { dns: ['::1'] });
  const server = createHttpsServer({ cert: leaf.cert, key: leaf.key }, (req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Scale', spec: { replicas: 4 }, status: { replicas: 4 } })));
  });
  await new Promise<void>((r) => server.listen(0, '::1', r));
  const port = (server.address() as AddressInfo).port;
  const env = { KUBERNETES_SERVICE_HOST: '::1', KUBERNETES_SERVICE_PORT: String(port) };
  const k = new KubernetesTrigger({ type: 'kubernetes', namespace: 'shop', deployment: 'orders', token_file: './token', ca_file: ca.certFile }, silentLogger, dir, env);
  const saved = { host: process.env['KUBERNETES_SERVICE_HOST'], port: process.env['KUBERNETES_SERVICE_PORT'] };
  try {
    assert.equal(await k.read(), 4);
    Object.assign(process.env, env);
    const problems: string[] = [];
    scalingPolicyOf({ target_concurrency: 4, triggers: [{ ...k8s(`https://[::1]:${port}`) }] }, (p, m) => problems.push(`${p.join('.')}: ${m}`));
    assert.deepEqual(problems, [], 'its own API server is always allowed');
  } finally {
    for (const [key, v] of [['KUBERNETES_SERVICE_HOST', saved.host], ['KUBERNETES_SERVICE_PORT', saved.port]] as const) {
      if (v === undefined) delete process.env[key];
      else process.env[key] = v;
    }
    await k.close();
    await new Promise((r) => { server.closeAllConnections(); server.close(r); });
    ca.cleanup();
  }
});

test('webhook only: a changed webhook (a rotated secret) keeps the count the receiver took as current; it does not fall back to the healthy targets and scale down', async () => {
  const hook = await hookReceiver();
  const cfg = (secret: string): ServiceScalingConfig => ({
    target_concurrency: 2, target_utilization: 1, max_replicas: 20, stable_window: '10s', panic_window: '2s', max_scale_up_rate: 2,
    triggers: [{ type: 'webhook', url: hook.url, secret }],
  });
  const s = advisor(cfg('whsec-0123456789abcdef'));
  const load = () => { for (let k = 0; k < 40; k++) s.a.meter.record('orders', 'list', 200, 400); }; // 16 in flight -> 8
  try {
    for (let i = 0; i < 15; i++) { load(); await s.tick(); }
    assert.equal(hook.got.at(-1), 8, JSON.stringify(hook.got));
    const before = hook.got.length;
    s.a.configure(settings, [{ name: 'orders', routes: ['list'], healthyTargets: () => 1, queued: () => 0, scaling: scalingPolicyOf(cfg('whsec-rotated-0123456789'), fail, [], undefined, LOCAL) }]);
    for (let i = 0; i < 5; i++) { load(); await s.tick(); }
    assert.deepEqual(hook.got.slice(before).filter((n) => n !== 8), [], `after the rotation: ${JSON.stringify(hook.got.slice(before))}`);
    assert.equal((s.a.report() as { services: { current_replicas: number }[] }).services[0]!.current_replicas, 8);
  } finally {
    await s.a.close();
    await hook.close();
  }
});

test('no trigger (KEDA applies the count): the current count is the last one asked for, so a fleet behind one Service address scales down when demand falls (it stayed in panic at the peak)', async () => {
  const s = advisor({ target_concurrency: 2, target_utilization: 1, max_replicas: 20 }, { targets: 1 });
  const load = (n: number) => { for (let k = 0; k < n; k++) s.a.meter.record('orders', 'list', 200, 1000); };
  try {
    for (let i = 0; i < 90; i++) { load(20); await s.tick(1000, 0); } // 20 in flight -> 10
    assert.equal(s.a.lookup('orders')!.desired, 10);
    for (let i = 0; i < 240; i++) { load(6); await s.tick(1000, 0); } // 6 in flight -> 3
    const r = (s.a.report() as { services: { mode: string; reason: string; current_replicas: number }[] }).services[0]!;
    assert.equal(s.a.lookup('orders')!.desired, 3, r.reason);
    assert.equal(r.mode, 'stable');
    assert.equal(r.current_replicas, 3);
  } finally {
    await s.a.close();
  }
});

test('kubernetes trigger: a 200 that is no Scale object (a proxy\'s {}) is a failed read, not 0 replicas (no decision is made on it)', async () => {
  let body = '{}';
  const server = createServer((req, res) => { req.resume(); req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(body)); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const s = advisor({ target_concurrency: 2, triggers: [k8s(url)] }, { apis: [url] });
  try {
    for (let i = 0; i < 3; i++) await s.tick();
    assert.equal(s.desired(), null, 'no decision on an unreadable count');
    assert.equal(s.a.lookup('orders')?.pending, true);
    // Once it answers a Scale, the count is read.
    body = JSON.stringify({ kind: 'Scale', spec: { replicas: 3 }, status: { replicas: 3 } });
    await sleep(1100); // (the read backoff after one failure: 1 s)
    for (let i = 0; i < 2; i++) await s.tick();
    assert.equal((s.a.report() as { services: { current_replicas: number | null }[] }).services[0]!.current_replicas, 3);
  } finally {
    await s.a.close();
    await new Promise((r) => { server.closeAllConnections(); server.close(r); });
  }
});

test('a kubernetes trigger that could not start (its CA file unreadable at run time): no decision on the targets\' guess, KEDA is told there is none', async () => {
  const s = advisor({ target_concurrency: 2, triggers: [{ ...k8s('http://127.0.0.1:1'), ca_file: '/nonexistent/turnpike-k8s-ca.pem' }] }, { apis: ['http://127.0.0.1:1'] });
  try {
    for (let i = 0; i < 5; i++) {
      for (let k = 0; k < 10; k++) s.a.meter.record('orders', 'list', 200, 800);
      await s.tick();
    }
    assert.equal(s.desired(), null);
    assert.equal(s.a.lookup('orders')?.pending, true);
  } finally {
    await s.a.close();
  }
});

test('/api/scaling says why there is no decision when the scale subresource cannot be read (a 403 was only in a log line once a minute)', async () => {
  const server = createServer((req, res) => { req.resume(); req.on('end', () => res.writeHead(403, { 'content-type': 'application/json' }).end('{"kind":"Status","message":"deployments.apps \\"orders\\" is forbidden"}')); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const s = advisor({ target_concurrency: 2, triggers: [k8s(url)] }, { apis: [url] });
  try {
    await s.tick();
    const report = () => (s.a.report() as { services: { reason: string; triggers: { type: string; read_error?: { error: string } | null }[] }[] }).services[0]!;
    for (let i = 0; i < 40 && report().triggers[0]!.read_error == null; i++) await sleep(50); // (the read runs beside the tick)
    const svc = report();
    assert.match(svc.reason, /^no decision yet: GET scale: HTTP 403 .*forbidden/);
    assert.match(svc.triggers[0]!.read_error!.error, /HTTP 403/);
  } finally {
    await s.a.close();
    await new Promise((r) => { server.closeAllConnections(); server.close(r); });
  }
});

test('kubernetes trigger: an answer larger than 1 MiB (not an API server\'s: a proxy\'s page, a stream) is cut, not buffered whole', async () => {
  const big = JSON.stringify({ kind: 'Scale', spec: { replicas: 2 }, pad: 'x'.repeat(4 << 20) });
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const buf = Buffer.from(big);
      let sent = 0;
      const next = (): void => {
        while (sent < buf.length) {
          const piece = buf.subarray(sent, sent + 65536);
          sent += piece.length;
          if (!res.write(piece)) return void res.once('drain', next);
        }
        res.end();
      };
      res.on('error', () => {});
      next();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const k = new KubernetesTrigger(k8s(`http://127.0.0.1:${(server.address() as AddressInfo).port}`), silentLogger, dir);
  try {
    assert.equal(await k.read(), null);
    assert.match(k.readError?.error ?? '', /larger than 1048576 bytes/);
    k.current = 1;
    assert.equal(await k.push(3), false);
    assert.match(k.last?.error ?? '', /larger than 1048576 bytes/);
  } finally {
    await k.close();
    await new Promise((r) => { server.closeAllConnections(); server.close(r); });
  }
});

test('kubernetes trigger: a PATCH answered 409 Conflict (the object was modified meanwhile) is tried again at once, not left failed for the 5 s backoff', async () => {
  let conflicts = 2;
  const patches: number[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      // (a GET: the read again after a 409 — the count it had)
      if (req.method === 'GET') return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Scale', spec: { replicas: 1 }, status: { replicas: 1 } }));
      const n = (JSON.parse(Buffer.concat(chunks).toString()) as { spec: { replicas: number } }).spec.replicas;
      patches.push(n);
      if (conflicts-- > 0) {
        return void res.writeHead(409, { 'content-type': 'application/json' }).end('{"kind":"Status","reason":"Conflict","message":"Operation cannot be fulfilled on deployments.apps \\"orders\\": the object has been modified; please apply your changes to the latest version and try again","code":409}');
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Scale', spec: { replicas: n }, status: { replicas: 1 } }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const k = new KubernetesTrigger(k8s(`http://127.0.0.1:${(server.address() as AddressInfo).port}`), silentLogger, dir);
  try {
    k.current = 1;
    assert.equal(await k.push(5), true);
    assert.deepEqual(patches, [5, 5, 5]);
    assert.equal(k.current, 5);
    assert.deepEqual({ ok: k.last?.ok, status: k.last?.status }, { ok: true, status: 200 });
    // A conflict that does not go away is reported after a few tries (bounded), not retried forever.
    conflicts = 100;
    patches.length = 0;
    assert.equal(await k.push(6), false);
    assert.deepEqual(patches, [6, 6, 6, 6, 6]);
    assert.equal(k.last?.status, 409);
  } finally {
    await k.close();
    await new Promise((r) => { server.closeAllConnections(); server.close(r); });
  }
});

test('KEDA is told at once when a service turns active without its count changing (traffic to a service a scale-up cooldown holds at 0), not at the stream\'s next heartbeat', async () => {
  const s = advisor({ target_concurrency: 2, min_replicas: 0, scale_up_cooldown: '60s' }, { targets: 0 });
  let told = 0;
  s.a.onChange(() => told++);
  try {
    await s.tick();
    assert.deepEqual(s.a.lookup('orders'), { desired: 0, active: false });
    told = 0;
    // Traffic arrives: the cooldown holds the count at 0, but the service is active now.
    s.a.meter.begin('orders');
    s.a.meter.record('orders', 'list', 200, 40);
    await s.tick();
    assert.deepEqual(s.a.lookup('orders'), { desired: 0, active: true });
    assert.equal(told, 1, 'the change of active was announced');
    // Nothing new: nothing announced.
    s.a.meter.begin('orders');
    s.a.meter.record('orders', 'list', 200, 40);
    await s.tick();
    assert.equal(told, 1);
  } finally {
    await s.a.close();
  }
});

test('kubernetes trigger: an answer that echoes the bearer token (a proxy, an error saying "invalid token ...") leaves it neither in the log nor in /api/scaling, not even a part of it at the cut', async () => {
  const secret = `eyJhbGciOiJSUzI1NiJ9.${'s'.repeat(180)}.sig-${Date.now()}`;
  const tokenDir = mkdtempSync(join(tmpdir(), 'turnpike-k8s-echo-'));
  writeFileSync(join(tokenDir, 'token'), `${secret}\n`);
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const auth = req.headers.authorization ?? '';
      // GET: a 200 that is no Scale (an echo service); PATCH: a 401 quoting the token, 150 characters in (the cut at 300 falls inside it).
      if (req.method === 'GET') return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ headers: { authorization: auth } }));
      res.writeHead(401, { 'content-type': 'application/json' }).end(`{"kind":"Status","pad":"${'p'.repeat(120)}","message":"invalid bearer token ${auth}"}`);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const logged: unknown[] = [];
  const log = { info: (...a: unknown[]) => logged.push(a), warn: (...a: unknown[]) => logged.push(a) };
  const k = new KubernetesTrigger({ ...k8s(`http://127.0.0.1:${(server.address() as AddressInfo).port}`), token_file: join(tokenDir, 'token') }, log, dir);
  try {
    assert.equal(await k.read(), null);
    k.current = 1;
    assert.equal(await k.push(3), false);
    const seen = JSON.stringify([logged, k.readError, k.last]);
    assert.match(seen, /no replica count in the answer/);
    assert.match(seen, /invalid bearer token Bearer \(secret\)|invalid bearer token Bearer eyJ/);
    for (const part of [secret, secret.slice(0, 40), secret.slice(-20)]) assert.ok(!seen.includes(part), `the token (or a part of it) is in ${seen.slice(0, 400)}...`);
  } finally {
    await k.close();
    await new Promise((r) => { server.closeAllConnections(); server.close(r); });
  }
});

test('kubernetes trigger: a read stands for readEveryMs (ticks do not each GET the scale subresource); a count someone else set is learnt within it; a PATCH on an older resourceVersion is answered 409, read again, and made again only if still needed', async () => {
  const api = await scaleApi(3);
  // Through the advisor: 20 ticks (a second each) within the default 10 s of real time: one GET.
  const s = advisor({ target_concurrency: 10, current_replicas: 'trigger', triggers: [k8s(api.url)] }, { apis: [api.url] });
  try {
    for (let i = 0; i < 20; i++) await s.tick(1000, 2);
    assert.equal(api.reads, 1, `${api.reads} GETs in 20 ticks`);
    assert.equal(s.desired(), 3);
  } finally {
    await s.a.close();
  }
  api.reads = 0;
  const k = new KubernetesTrigger(k8s(api.url), silentLogger, dir, process.env, undefined, { readEveryMs: 400 });
  try {
    assert.equal(await k.read(), 3);
    for (let i = 0; i < 10; i++) assert.equal(await k.read(), 3);
    assert.equal(api.reads, 1, 'one GET for 11 reads within the interval');
    api.set(7); // kubectl scale --replicas=7
    assert.equal(await k.read(), 3, 'the last read stands until the interval passed');
    await sleep(450);
    assert.equal(await k.read(), 7, 'learnt at the bound');
    assert.equal(api.reads, 2);
    // The count it has: no PATCH. Another: one, on the version read.
    assert.equal(await k.push(7), true);
    assert.deepEqual(api.patches, []);
    assert.equal(await k.push(4), true);
    assert.deepEqual([api.patches, api.conflicts, k.current], [[4], 0, 4]);
    // Someone else scales to 9 meanwhile: the PATCH on the old version is refused (409), the
    // subresource read again, the PATCH made on the new version.
    api.set(9);
    assert.equal(await k.push(5), true);
    assert.deepEqual([api.patches, api.conflicts, api.reads, k.current], [[4, 5], 1, 3, 5]);
    // Someone else already set what is wanted: the read after the 409 says so, no second PATCH.
    api.set(6);
    assert.equal(await k.push(6), true);
    assert.deepEqual([api.patches, api.conflicts, api.reads, k.current, k.last?.ok], [[4, 5], 2, 4, 6, true]);
    // ... and the count read is taken: the next PATCH needs no read.
    assert.equal(await k.push(2), true);
    assert.deepEqual([api.patches, api.conflicts, api.reads], [[4, 5, 2], 2, 4]);
  } finally {
    await k.close();
    await api.close();
  }
});

test('kubernetes trigger: a CA file rotated on disk (the service account ca.crt, as Kubernetes rotates it) is used for the next connections without a restart; a broken one is logged and the CA in use kept', async () => {
  const { makeCa } = await import('../../test/certs.js');
  const { createServer: createHttpsServer } = await import('node:https');
  const [oldCa, newCa] = [makeCa('Old Cluster CA'), makeCa('New Cluster CA')];
  const [oldLeaf, newLeaf] = [oldCa.issue('127.0.0.1', { dns: ['127.0.0.1'] }), newCa.issue('127.0.0.1', { dns: ['127.0.0.1'] })];
  const server = createHttpsServer({ cert: oldLeaf.cert, key: oldLeaf.key }, (req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end('{"kind":"Scale","spec":{"replicas":3},"status":{"replicas":3}}'));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const caFile = join(dir, 'cluster-ca.crt');
  writeFileSync(caFile, oldCa.cert);
  const warnings: string[] = [];
  const log = { ...silentLogger, warn: (o: unknown, m?: string) => { warnings.push(`${m} ${JSON.stringify(o)}`); } } as typeof silentLogger;
  const k = new KubernetesTrigger({ ...k8s(`https://127.0.0.1:${(server.address() as AddressInfo).port}`), ca_file: './cluster-ca.crt' }, log, dir, process.env, undefined, { readEveryMs: 0, caCheckMs: 50 });
  /** A read on a new connection: ok, or why not. */
  const readNow = async () => {
    server.closeAllConnections();
    const n = await k.read();
    return n === 3 && k.readError === null ? 'ok' : String(k.readError?.error);
  };
  try {
    assert.equal(await readNow(), 'ok');
    // The cluster's CA rotates: the API server serves a certificate of the new CA, the file holds it.
    server.setSecureContext({ cert: newLeaf.cert, key: newLeaf.key });
    writeFileSync(caFile, newCa.cert);
    await sleep(100);
    assert.equal(await readNow(), 'ok', 'the new CA is taken from the file');
    // A broken file (half written, emptied): the CA in use stays, one warning says so.
    writeFileSync(caFile, '-----BEGIN CERTIFICATE-----\nnot base64\n');
    for (let i = 0; i < 3; i++) {
      await sleep(100);
      assert.equal(await readNow(), 'ok');
    }
    assert.equal(warnings.filter((w) => /CA file cannot be used/.test(w)).length, 1, warnings.join('\n'));
  } finally {
    await k.close();
    await new Promise((r) => { server.closeAllConnections(); server.close(r); });
    oldCa.cleanup();
    newCa.cleanup();
  }
});
