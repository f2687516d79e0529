/**
 * What a reload leaves behind: each one must release what the snapshot it replaces held
 * (series, timers, sockets, listeners), so a gateway reloaded for weeks stays flat.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { parseConfigText } from '../src/config/load.js';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually, freePort, promSamples, request, sleep, startCli, startGateway, startUpstream, waitFor } from './helpers.js';

test('metrics: the series of a route a reload removed leave /metrics; a route that stays keeps counting', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const cfg = (i: number) => `admin: {listen: 127.0.0.1:0}
access_log: {enabled: false}
metrics: {enabled: true}
services:
  - name: stable
    url: ${up.url}
    routes: [{name: keep, paths: [/keep]}]
  - name: churn${i}
    url: ${up.url}
    routes: [{name: r${i}, paths: [/r]}]
`;
  const g = await startGateway(cfg(0));
  try {
    const n = 300;
    for (let i = 1; i <= n; i++) {
      await g.gw.reloadAsync(parseConfigText(cfg(i)));
      assert.equal((await request(`${g.url}/r`)).status, 200);
      assert.equal((await request(`${g.url}/keep`)).status, 200);
    }
    const samples = promSamples((await request(`${g.adminUrl}/metrics`)).body).filter((s) => s.name === 'turnpike_requests_total');
    const routes = new Set(samples.map((s) => `${s.labels['service']}/${s.labels['route']}`));
    assert.deepEqual([...routes].sort(), [`churn${n}/r${n}`, 'stable/keep'], `${routes.size} routes in /metrics after ${n} reloads`);
    assert.equal(samples.find((s) => s.labels['route'] === 'keep')?.value, n);
    assert.equal(samples.find((s) => s.labels['route'] === `r${n}`)?.value, 1);
  } finally {
    await g.close();
    await up.close();
  }
});

test('dns: names a reload took out of the config are forgotten, not carried into every later snapshot', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  // (`.invalid` never resolves, RFC 6761: each reload asks a new name, which fails at once)
  const cfg = (i: number) => `access_log: {enabled: false}
services:
  - name: s
    url: ${up.url}
    routes: [{name: r, paths: [/]}]
  - name: gone
    url: http://n${i}.invalid:1
    routes: [{name: g, paths: [/g]}]
`;
  const g = await startGateway(cfg(0));
  try {
    const n = 40;
    for (let i = 1; i <= n; i++) await g.gw.reloadAsync(parseConfigText(cfg(i)));
    assert.deepEqual(Object.keys(g.gw.dns.table()), [`n${n}.invalid`]);
    assert.equal((await request(`${g.url}/`)).status, 200);
  } finally {
    await g.close();
    await up.close();
  }
});

test('tracing: a reload that replaces the tracer closes the connections its exporter opened to the collector', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  let open = 0;
  let batches = 0;
  const collector = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      batches++;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  collector.keepAliveTimeout = 60_000; // (the collector keeps them: closing is the exporter's job)
  collector.on('connection', (s) => {
    open++;
    s.on('close', () => open--);
  });
  await new Promise<void>((r) => collector.listen(0, '127.0.0.1', r));
  const at = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`;
  const cfg = (i: number) => `access_log: {enabled: false}
tracing: {enabled: true, endpoint: "${at}/v1/traces?r=${i}", sample: 1}
services:
  - name: s
    url: ${up.url}
    routes: [{name: r, paths: [/]}]
`;
  const g = await startGateway(cfg(0));
  try {
    const n = 60;
    for (let i = 1; i <= n; i++) {
      assert.equal((await request(`${g.url}/`)).status, 200);
      // (the replaced tracer exports the span it holds as it closes)
      await g.gw.reloadAsync(parseConfigText(cfg(i)));
    }
    await eventually(() => batches >= n, 5000, 20);
    await sleep(200);
    assert.ok(open <= 2, `${open} connections to the collector left open after ${n} reloads (${batches} batches)`);
  } finally {
    await g.close();
    await up.close();
    collector.closeAllConnections();
    await new Promise((r) => collector.close(r));
  }
});

test('scaling: the in-flight gauge of a service a reload removed is dropped, not reported in every later tick', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const cfg = (i: number) => `access_log: {enabled: false}
services:
  - name: s${i}
    url: ${up.url}
    scaling: {min_replicas: 1, max_replicas: 5, target_concurrency: 10}
    routes: [{name: r, paths: [/]}]
`;
  const g = await startGateway(cfg(0));
  try {
    const n = 200;
    for (let i = 1; i <= n; i++) {
      await g.gw.reloadAsync(parseConfigText(cfg(i)));
      assert.equal((await request(`${g.url}/`)).status, 200);
    }
    g.gw.demand.drain(); // (the requests counted since the advisor's last tick)
    // What every tick reports from now on: the services with an in-flight gauge.
    assert.deepEqual(Object.keys(g.gw.demand.drain().services), [`s${n}`]);
  } finally {
    await g.close();
    await up.close();
  }
});

test('metrics with workers: the counts exited workers left behind drop the routes a later reload removed', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const [p, a] = [await freePort(), await freePort()];
  const file = join(mkdtempSync(join(tmpdir(), 'turnpike-leaks-')), 'c.yaml');
  const cfg = (route: string) => `listen: 127.0.0.1:${p}
admin: {listen: 127.0.0.1:${a}}
workers: 2
access_log: {enabled: false}
services:
  - name: app
    url: ${up.url}
    routes: [{name: keep, paths: [/keep]}, {name: ${route}, paths: [/churn]}]
`;
  writeFileSync(file, cfg('old'));
  const run = startCli(['start', '--config', file], {});
  const routes = async () => new Set(promSamples((await request(`http://127.0.0.1:${a}/metrics`)).body)
    .filter((s) => s.name === 'turnpike_requests_total').map((s) => s.labels['route']));
  try {
    await waitFor(`http://127.0.0.1:${a}/status`, 15_000);
    await eventually(async () => JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).workers.filter((w: { state: string }) => w.state === 'listening').length === 2, 15_000);
    for (const path of ['/keep', '/churn']) assert.equal((await request(`http://127.0.0.1:${p}${path}`, { headers: { connection: 'close' } })).status, 200);
    // Both workers are replaced: what they counted stays in the primary's view.
    run.child.kill('SIGUSR2');
    await eventually(() => /rolling restart done/.test(run.stderr()), 20_000);
    assert.deepEqual([...await routes()].sort(), ['keep', 'old']);
    writeFileSync(file, cfg('new'));
    await eventually(() => /reload applied/.test(run.stderr()), 10_000);
    assert.equal((await request(`http://127.0.0.1:${p}/churn`, { headers: { connection: 'close' } })).status, 200);
    assert.deepEqual([...await routes()].sort(), ['keep', 'new']);
  } finally {
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
    await up.close();
  }
});

test('oauth2-introspection: a call the IdP answered leaves no timer behind (one per call lived on for the whole timeout)', async () => {
  const idp = await startUpstream((_q, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"active":true,"client_id":"c"}'));
  const up = await startUpstream((_q, res) => res.end('ok'));
  const g = await startGateway(`services:
  - name: s
    url: ${up.url}
    routes: [{name: r, paths: [/]}]
    plugins: [{name: oauth2-introspection, config: {introspection_url: "${idp.url}/introspect", client_id: a, client_secret: b, timeout: 30s}}]
`);
  const timers = new Set<number>();
  const hook = createHook({
    init(id, type) { if (type === 'Timeout') timers.add(id); },
    destroy(id) { timers.delete(id); },
  }).enable();
  try {
    await request(`${g.url}/`, { headers: { authorization: 'Bearer warm-up' } });
    await sleep(50);
    const before = timers.size;
    const n = 200;
    for (let i = 0; i < n; i++) assert.equal((await request(`${g.url}/`, { headers: { authorization: `Bearer token-${i}` } })).status, 200);
    await sleep(50);
    assert.ok(timers.size - before < 20, `${timers.size - before} more timers after ${n} introspection calls`);
  } finally {
    hook.disable();
    await g.close();
    await up.close();
    await idp.close();
  }
});

test('cache: a stale-while-revalidate refresh that ended leaves no timer behind (one per refresh lived on for 30 s)', async () => {
  const up = await startUpstream((_q, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('ok'));
  const g = await startGateway(`services:
  - name: s
    url: ${up.url}
    routes: [{name: r, paths: [/]}]
    plugins: [{name: cache, config: {ttl: 1s, stale_while_revalidate: 1m}}]
`);
  const timers = new Set<number>();
  const hook = createHook({
    init(id, type) { if (type === 'Timeout') timers.add(id); },
    destroy(id) { timers.delete(id); },
  }).enable();
  try {
    const n = 100;
    for (let i = 0; i < n; i++) assert.equal((await request(`${g.url}/p${i}`)).status, 200);
    await sleep(1100);
    const before = timers.size;
    // Each answer is stale now: served at once, refreshed in the background.
    for (let i = 0; i < n; i++) assert.equal((await request(`${g.url}/p${i}`)).status, 200);
    await eventually(() => up.requests.length >= 2 * n, 5000, 20);
    await sleep(100);
    assert.ok(timers.size - before < 20, `${timers.size - before} more timers after ${n} refreshes`);
  } finally {
    hook.disable();
    await g.close();
    await up.close();
  }
});
