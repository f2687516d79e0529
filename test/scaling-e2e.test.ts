/**
 * The scaling advisor end to end (issue 10), all on loopback with real processes:
 * - backends are real node processes with a known service time (20 ms) and 4 requests at a
 *   time each (more wait in their queue), so one replica saturates and latency grows;
 * - a small Kubernetes-style scale API (GET/PATCH .../deployments/orders/scale) spawns and
 *   stops backend processes on PATCH and registers them as the service's targets through
 *   Turnpike's admin API (sqlite store);
 * - a test KEDA client (gRPC, built from the same externalscaler.proto) polls Turnpike every
 *   500 ms, applies the HPA formula and PATCHes the scale API, as KEDA + the HPA would;
 * - a closed-loop load generator steps from 2 to 12 concurrent clients and back.
 * The number of backend processes follows the load up and back down, and the clients' p95
 * returns under the SLO after the scale-up. A second test checks Turnpike's own kubernetes
 * trigger (bearer token from a file, PATCH merge-patch, dryRun) against the same scale API.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Agent, request as undiciRequest } from 'undici';
import { freePort, request, sleep, startCli, type Running } from './helpers.js';
import { kedaClient } from '../src/scaling/keda.js';

const work = mkdtempSync(join(tmpdir(), 'turnpike-scaling-'));
const TOKEN = 'k8s-token-0123456789';
const cleanups: (() => Promise<unknown> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
  rmSync(work, { recursive: true, force: true });
});

/** A backend process: 20 ms per request, 4 at a time (the rest queue). Resolves with its port. */
const BACKEND = `
const http = require('node:http');
let active = 0; const queue = [];
const serve = (res) => { active++; setTimeout(() => { res.end('ok'); active--; const next = queue.shift(); if (next) serve(next); }, 20); };
const srv = http.createServer((req, res) => { req.resume(); if (active < 4) serve(res); else queue.push(res); });
srv.keepAliveTimeout = 60000;
srv.listen(0, '127.0.0.1', () => process.stdout.write(String(srv.address().port) + '\\n'));
process.on('SIGTERM', () => process.exit(0));
`;

function spawnBackend(): Promise<{ port: number; child: ChildProcess }> {
  const child = spawn(process.execPath, ['-e', BACKEND], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.stdout!.once('data', (d: Buffer) => resolve({ port: Number(String(d).trim()), child }));
    child.once('exit', (code) => reject(new Error(`backend exited ${code}`)));
  });
}

/** The scale API: a Deployment's scale subresource whose replicas are real processes. */
async function startScaleApi(admin: string) {
  const pods: { port: number; child: ChildProcess }[] = [];
  const patches: { replicas: number; dryRun: boolean; auth: string | undefined }[] = [];
  /** spec.replicas: what was last asked for (as an API server answers it at once; the pods follow, status.replicas). */
  let asked: number | null = null;
  let chain: Promise<unknown> = Promise.resolve();
  const setTargets = async () => {
    const r = await undiciRequest(`${admin}/api/upstreams/orders`, {
      method: 'PUT', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ targets: pods.map((p) => ({ url: `http://127.0.0.1:${p.port}` })) }),
    });
    const text = await r.body.text();
    if (r.statusCode !== 200) throw new Error(`targets: ${r.statusCode} ${text}`);
  };
  const reconcile = (n: number) => (chain = chain.then(async () => {
    while (pods.length < n) pods.push(await spawnBackend());
    if (pods.length > n) {
      const gone = pods.splice(n);
      await setTargets(); // out of rotation first, then stopped
      await sleep(300);
      for (const p of gone) p.child.kill('SIGTERM');
    } else await setTargets();
  }).catch((err: unknown) => console.error('reconcile', err)));
  const path = '/apis/apps/v1/namespaces/shop/deployments/orders/scale';
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url!, 'http://x');
      if (url.pathname !== path) return void res.writeHead(404).end();
      if (req.headers.authorization !== `Bearer ${TOKEN}`) return void res.writeHead(401).end('{"kind":"Status","code":401}');
      if (req.method === 'PATCH') {
        if (req.headers['content-type'] !== 'application/merge-patch+json') return void res.writeHead(415).end();
        const replicas = (JSON.parse(Buffer.concat(chunks).toString()) as { spec: { replicas: number } }).spec.replicas;
        const dryRun = url.searchParams.get('dryRun') === 'All';
        patches.push({ replicas, dryRun, auth: req.headers.authorization });
        if (!dryRun) {
          asked = replicas;
          void reconcile(replicas);
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kind: 'Scale', spec: { replicas: asked ?? pods.length }, status: { replicas: pods.length } }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    pods, patches, reconcile: (n: number) => reconcile(n).then(() => undefined),
    close: async () => {
      await chain;
      for (const p of pods) p.child.kill('SIGTERM');
      await new Promise((r) => server.close(r));
    },
  };
}

async function startTurnpike(name: string, scaling: string, top: string) {
  const [proxy, admin] = [await freePort(), await freePort()];
  const dir = join(work, name);
  const file = join(dir, 'turnpike.yaml');
  rmSync(dir, { recursive: true, force: true });
  const { mkdirSync } = await import('node:fs');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'token'), `${TOKEN}\n`);
  writeFileSync(file, `listen: 127.0.0.1:${proxy}
admin: {listen: 127.0.0.1:${admin}}
store: sqlite:./turnpike.db
access_log: {enabled: false}
${top}
services:
  - name: orders
    url: http://127.0.0.1:1
    upstream:
      targets: [{url: "http://127.0.0.1:1"}]
      healthcheck: {passive: {failures: 2, ejection: 2s}}
    retries: 1
    retry_on: [connect-error]
    scaling:
${scaling.split('\n').map((l) => `      ${l}`).join('\n')}
    routes: [{paths: [/orders]}]
`.replace('    url: http://127.0.0.1:1\n', ''));
  const run: Running = startCli(['start', '--config', file], {});
  cleanups.push(async () => {
    run.child.kill('SIGTERM');
    await run.exit;
  });
  const end = Date.now() + 15_000;
  for (;;) {
    if ((await request(`http://127.0.0.1:${admin}/status`).catch(() => null))?.status === 200) break;
    if (Date.now() > end) throw new Error(`turnpike did not start: ${run.stderr()}`);
    await sleep(50);
  }
  return { proxy: `http://127.0.0.1:${proxy}`, admin: `http://127.0.0.1:${admin}`, run };
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

test('load steps 2 -> 12 -> 2 clients: KEDA (gRPC, HPA formula) scales real backend processes up to meet the SLO and back down', { timeout: 90_000 }, async () => {
  const kedaPort = await freePort();
  const tp = await startTurnpike('keda', `target_concurrency: 4
target_utilization: 0.75
min_replicas: 1
max_replicas: 4
stable_window: 4s
panic_window: 1s
scale_down_cooldown: 1s
scale_down_stabilization: 2s
slo: {p95: 60ms}`, `scaling: {interval: 500ms, keda: {listen: "127.0.0.1:${kedaPort}"}}`);
  const scale = await startScaleApi(tp.admin);
  cleanups.push(() => scale.close());
  await scale.reconcile(1);

  // KEDA + HPA: poll, compute ceil(metric / target), PATCH the scale subresource when it differs.
  const keda = kedaClient(`127.0.0.1:${kedaPort}`);
  cleanups.push(() => keda.close());
  const ref = { name: 'orders', namespace: 'shop', scalerMetadata: { service: 'orders' } };
  let polling = true;
  const history: { t: number; desired: number; pods: number }[] = [];
  const t0 = performance.now();
  const poller = (async () => {
    while (polling) {
      const desired = await keda.desiredReplicas(ref).catch(() => null);
      if (desired !== null) {
        history.push({ t: performance.now() - t0, desired, pods: scale.pods.length });
        if (desired !== scale.pods.length) {
          await undiciRequest(`${scale.url}/apis/apps/v1/namespaces/shop/deployments/orders/scale`, {
            method: 'PATCH', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/merge-patch+json' }, body: JSON.stringify({ spec: { replicas: desired } }),
          }).then((r) => r.body.dump());
        }
      }
      await sleep(500);
    }
  })();

  // Closed-loop clients: `clients` of them, each sends the next request when the last one answered.
  const agent = new Agent({ connections: 32 });
  cleanups.push(() => agent.close());
  let clients = 2;
  const latencies: { t: number; ms: number; status: number }[] = [];
  let loading = true;
  const loops = Array.from({ length: 12 }, async (_, i) => {
    while (loading) {
      if (i >= clients) {
        await sleep(20);
        continue;
      }
      const s = performance.now();
      const r = await undiciRequest(`${tp.proxy}/orders`, { dispatcher: agent }).catch(() => null);
      await r?.body.dump();
      latencies.push({ t: s - t0, ms: performance.now() - s, status: r?.statusCode ?? 0 });
    }
  });
  const window = (from: number, to: number) => latencies.filter((l) => l.t >= from && l.t < to);
  try {
    await sleep(4000);
    const lowPods = scale.pods.length;
    clients = 12;
    const stepAt = performance.now() - t0;
    // Up: the processes follow within the panic window and a few decisions.
    const upBy = performance.now() + 15_000;
    while (scale.pods.length < 4 && performance.now() < upBy) await sleep(100);
    const upAfter = performance.now() - t0 - stepAt;
    assert.ok(scale.pods.length >= 3, `scaled up to ${scale.pods.length} processes (history ${JSON.stringify(history.slice(-5))})`);
    await sleep(3000);
    const highEnd = performance.now() - t0;
    const before = pct(window(stepAt, stepAt + 1000).map((l) => l.ms), 95);
    const settled = pct(window(highEnd - 2000, highEnd).map((l) => l.ms), 95);
    const report = JSON.parse((await request(`${tp.admin}/api/scaling`)).body);
    const svc = report.services[0];
    clients = 2;
    const downAt = performance.now() - t0;
    const downBy = performance.now() + 25_000;
    while (scale.pods.length > 1 && performance.now() < downBy) await sleep(100);
    const downAfter = performance.now() - t0 - downAt;
    console.log(`# scaling: ${lowPods} process at 2 clients; 12 clients -> ${svc.desired_replicas} desired (${svc.mode}: ${svc.reason}); processes reached 4 after ${upAfter.toFixed(0)} ms; client p95 ${before.toFixed(1)} ms in the first second of the step -> ${settled.toFixed(1)} ms settled (SLO 60 ms); back to ${scale.pods.length} after ${downAfter.toFixed(0)} ms`);
    assert.equal(lowPods, 1, 'one replica for 2 clients');
    assert.ok(settled < 60, `p95 after the scale-up ${settled} ms is under the SLO`);
    assert.ok(before > settled, 'the step hurt before the scale-up');
    assert.equal(scale.pods.length, 1, `scaled back down (history ${JSON.stringify(history.slice(-8))})`);
    // Scale-down at most halves per decision: 4 -> 2 -> 1, never 4 -> 1.
    const ds = history.map((h) => h.desired);
    for (let i = 1; i < ds.length; i++) if (ds[i]! < ds[i - 1]!) assert.ok(ds[i]! >= Math.floor(ds[i - 1]! / 2), `halving at most: ${ds.join(',')}`);
    assert.deepEqual(Object.keys(svc.signals).sort(), ['concurrency', 'error_rate', 'healthy_targets', 'latency_mean_ms', 'latency_p95_ms', 'queued', 'rps', 'timeout_rate']);
    const errors = latencies.filter((l) => l.status !== 200).length;
    assert.ok(errors <= latencies.length * 0.01, `${errors} of ${latencies.length} requests failed while scaling`);
    const metrics = (await request(`${tp.admin}/metrics`)).body;
    assert.match(metrics, /turnpike_scaling_desired_replicas\{service="orders"\} 1/);
    assert.match(metrics, /turnpike_scaling_gateway_desired_nodes \d/);
  } finally {
    loading = false;
    polling = false;
    await Promise.all(loops);
    await poller;
  }
});

test('the kubernetes trigger: PATCH of the scale subresource with the token from its file (merge-patch); current replicas read from it; a refused token is reported, not fatal', { timeout: 60_000 }, async () => {
  // The scale API exists before the config names it; it registers targets through the admin port chosen here.
  const adminPort = await freePort();
  const scale = await startScaleApi(`http://127.0.0.1:${adminPort}`);
  cleanups.push(() => scale.close());
  const [proxy] = [await freePort()];
  const dir = join(work, 'k8s');
  const { mkdirSync } = await import('node:fs');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'token'), `${TOKEN}\n`);
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${proxy}
admin: {listen: 127.0.0.1:${adminPort}}
store: sqlite:./turnpike.db
access_log: {enabled: false}
scaling: {interval: 300ms, kubernetes_api_servers: ["${scale.url}"]}
services:
  - name: orders
    upstream: {targets: [{url: "http://127.0.0.1:1"}]}
    scaling:
      target_concurrency: 4
      target_utilization: 1
      min_replicas: 2
      max_replicas: 3
      current_replicas: trigger
      triggers:
        - {type: kubernetes, namespace: shop, deployment: orders, api_server: "${scale.url}", token_file: ./token}
    routes: [{paths: [/orders]}]
`);
  const run = startCli(['start', '--config', file], {});
  cleanups.push(async () => {
    run.child.kill('SIGTERM');
    await run.exit;
  });
  // No traffic, 0 replicas running: the advisor asks for min_replicas (2) and the trigger PATCHes it.
  const end = Date.now() + 15_000;
  while (scale.pods.length < 2 && Date.now() < end) await sleep(100);
  assert.equal(scale.pods.length, 2, run.stderr().slice(-2000));
  assert.equal(scale.patches[0]!.replicas, 2);
  assert.equal(scale.patches[0]!.auth, `Bearer ${TOKEN}`);
  assert.equal(scale.patches[0]!.dryRun, false);
  let report: { services: { current_replicas: number; desired_replicas: number; triggers: { last: { ok: boolean } }[] }[] } = { services: [] };
  const until = Date.now() + 5000;
  do {
    await sleep(100);
    report = JSON.parse((await request(`http://127.0.0.1:${adminPort}/api/scaling`)).body);
  } while (report.services[0]?.current_replicas !== 2 && Date.now() < until);
  assert.equal(report.services[0]!.current_replicas, 2, 'current replicas come from the scale subresource');
  assert.equal(report.services[0]!.desired_replicas, 2);
  assert.equal(report.services[0]!.triggers[0]!.last.ok, true);
  // A token the API server refuses: reported in the log, the gateway keeps serving.
  writeFileSync(join(dir, 'token'), 'wrong-token\n');
  // (the next rounds, every 300 ms, read the new token: wait for the refusal, not a fixed time)
  const refusedBy = Date.now() + 10_000;
  while (!(/cannot read the scale subresource/.test(run.stderr()) && /HTTP 401/.test(run.stderr())) && Date.now() < refusedBy) await sleep(50);
  assert.match(run.stderr(), /cannot read the scale subresource/);
  assert.match(run.stderr(), /HTTP 401/);
  assert.doesNotMatch(run.stderr(), /wrong-token/, 'the token is never logged');
  assert.equal((await request(`http://127.0.0.1:${adminPort}/status`)).status, 200);
});

test('the kubernetes trigger: a token_file that is no regular file (a FIFO, whose open waited for a writer for ever, on the event loop) is a read error reported, the gateway keeps answering', { timeout: 60_000 }, async () => {
  const { execFileSync } = await import('node:child_process');
  const { mkdirSync } = await import('node:fs');
  const dir = join(work, 'fifo');
  mkdirSync(dir, { recursive: true });
  execFileSync('mkfifo', [join(dir, 'token')]);
  const api = createServer((req, res) => { req.resume(); res.writeHead(200, { 'content-type': 'application/json' }).end('{"kind":"Scale","spec":{"replicas":1},"status":{"replicas":1}}'); });
  await new Promise<void>((r) => api.listen(0, '127.0.0.1', r));
  const apiUrl = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
  const [proxy, admin] = [await freePort(), await freePort()];
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${proxy}
admin: {listen: 127.0.0.1:${admin}}
access_log: {enabled: false}
scaling: {interval: 200ms, kubernetes_api_servers: ["${apiUrl}"]}
services:
  - name: orders
    url: http://127.0.0.1:1
    scaling:
      target_concurrency: 4
      triggers:
        - {type: kubernetes, namespace: shop, deployment: orders, api_server: "${apiUrl}", token_file: ./token}
    routes: [{paths: [/orders]}]
`);
  const run = startCli(['start', '--config', file], {});
  try {
    const up = Date.now() + 30_000;
    while (!/admin on http:/.test(run.stderr()) && run.child.exitCode === null && Date.now() < up) await sleep(50);
    assert.match(run.stderr(), /admin on http:/);
    await sleep(1000); // several ticks, each reading the scale subresource with the token
    const dispatcher = new Agent({ headersTimeout: 3000, bodyTimeout: 3000 });
    const r = await undiciRequest(`http://127.0.0.1:${admin}/api/scaling`, { dispatcher }).then(async (x) => ({ status: x.statusCode, body: await x.body.text() }), (err: Error) => ({ status: 0, body: err.message }));
    await dispatcher.close();
    assert.equal(r.status, 200, `the gateway does not answer: ${r.body}`);
    const report = JSON.parse(r.body) as { services: { reason: string; triggers: { read_error: { error: string } | null }[] }[] };
    assert.match(report.services[0]!.triggers[0]!.read_error?.error ?? '', /is not a regular file/);
    assert.match(report.services[0]!.reason, /no decision yet: token_file .* is not a regular file/);
  } finally {
    run.child.kill('SIGKILL');
    await run.exit;
    await new Promise((r) => { api.closeAllConnections(); api.close(r); });
  }
});

test('a kubernetes trigger may only name an API server of the node\'s own list (its token goes there)', async () => {
  const { configIssues } = await import('./helpers.js');
  const issues = configIssues(`services:
  - name: orders
    url: http://127.0.0.1:1
    scaling:
      target_concurrency: 4
      triggers: [{type: kubernetes, namespace: shop, deployment: orders, api_server: "https://evil.example"}]
`);
  assert.match(JSON.stringify(issues), /not in scaling.kubernetes_api_servers/);
  assert.deepEqual(configIssues(`scaling: {kubernetes_api_servers: ["https://k8s.internal:6443"]}
services:
  - name: orders
    url: http://127.0.0.1:1
    scaling:
      target_concurrency: 4
      triggers: [{type: kubernetes, namespace: shop, deployment: orders, api_server: "https://k8s.internal:6443/"}]
`), []);
});

test('a trigger\'s ca_file that cannot be read is a config error naming it (the trigger did not start, with the config accepted)', async () => {
  const { configIssues } = await import('./helpers.js');
  const issues = configIssues(`services:
  - name: orders
    url: http://127.0.0.1:1
    scaling:
      target_concurrency: 4
      triggers: [{type: webhook, url: "https://hooks.internal/scale", secret: whsec-0123456789abcdef, ca_file: /nonexistent/turnpike-hook-ca.pem}]
`);
  assert.deepEqual(issues.map((i) => [i.path, i.message]), [['services[0].scaling.triggers[0].ca_file', 'cannot read /nonexistent/turnpike-hook-ca.pem: ENOENT']]);
});
