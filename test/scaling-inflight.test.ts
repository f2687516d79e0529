/** The in-flight gauge through a real gateway: a request counts from when it goes on to the service (past its plugins) until it ends (an SSE stream while it runs). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { children, freePort, request, startCli, startGateway, startUpstream, sleep, eventually, stopGroup } from './helpers.js';

test('an SSE stream is in flight for the scaling meter while it runs, and no longer once the client leaves', async () => {
  const up = await startUpstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: hello\n\n'); // and never ends
  });
  const tp = await startGateway(`scaling: {interval: 60s}
services:
  - name: orders
    url: ${up.url}
    scaling: {target_concurrency: 2, min_replicas: 0}
    routes: [{paths: [/events]}]
`);
  try {
    const req = httpRequest(`${tp.url}/events`);
    const got = new Promise<void>((ok) => req.on('response', (res) => res.once('data', () => ok())));
    req.on('error', () => undefined);
    req.end();
    await got;
    tp.gw.demand.drain();
    await sleep(400); // a few samples of the gauge (every 100 ms)
    const running = tp.gw.demand.drain().services['orders'];
    assert.equal(running?.inflight, 1, JSON.stringify(running));
    assert.equal(running?.n, 0, 'not ended: no request counted yet');
    req.destroy();
    await eventually(() => { const d = tp.gw.demand.drain().services['orders']; return d !== undefined && d.n === 1; });
    await sleep(300);
    assert.equal(tp.gw.demand.drain().services['orders']?.inflight, 0);
  } finally {
    await tp.close();
    await up.close();
  }
});

test('a WebSocket relay is in flight for the scaling meter while it is open, and no longer once it closes', async () => {
  const { WebSocket, WebSocketServer } = await import('ws');
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((ok) => wss.once('listening', () => ok()));
  wss.on('connection', (ws) => ws.on('message', (m) => ws.send(m)));
  const port = (wss.address() as { port: number }).port;
  const tp = await startGateway(`scaling: {interval: 60s}
services:
  - name: chat
    url: http://127.0.0.1:${port}
    scaling: {target_concurrency: 2, min_replicas: 0}
    routes: [{paths: [/ws], websocket: true}]
`);
  try {
    const ws = new WebSocket(`${tp.url.replace('http', 'ws')}/ws`);
    await new Promise<void>((ok, fail) => { ws.once('open', () => ok()); ws.once('error', fail); });
    const echoed = new Promise<string>((ok) => ws.once('message', (m) => ok(String(m))));
    ws.send('ping');
    assert.equal(await echoed, 'ping');
    tp.gw.demand.drain();
    await sleep(400); // a few samples of the gauge (every 100 ms)
    const open = tp.gw.demand.drain().services['chat'];
    assert.equal(open?.inflight, 1, JSON.stringify(open));
    ws.close();
    await eventually(() => { const d = tp.gw.demand.drain().services['chat']; return d !== undefined && d.n === 1; });
    await sleep(300);
    assert.equal(tp.gw.demand.drain().services['chat']?.inflight, 0);
  } finally {
    await tp.close();
    await new Promise<void>((ok) => wss.close(() => ok()));
  }
});

test('a bulkhead shedding load (503 service-overloaded) is no upstream error for the scaling guard: it is demand the service could not take', async () => {
  const up = await startUpstream((_req, res) => { setTimeout(() => res.end('ok'), 300); });
  const tp = await startGateway(`scaling: {interval: 60s}
services:
  - name: orders
    url: ${up.url}
    circuit_breaker: {max_concurrent: 1, max_pending: 1}
    scaling: {target_concurrency: 1}
    routes: [{paths: [/o]}]
`);
  try {
    tp.gw.demand.drain();
    const statuses = await Promise.all(Array.from({ length: 8 }, () => fetch(`${tp.url}/o`).then(async (r) => { await r.arrayBuffer(); return r.status; })));
    assert.deepEqual(statuses.filter((s) => s === 200).length, 2);
    assert.deepEqual(statuses.filter((s) => s === 503).length, 6);
    const seen = { n: 0, errors: 0 };
    await eventually(() => {
      const c = tp.gw.demand.drain().services['orders'];
      seen.n += c?.n ?? 0;
      seen.errors += c?.errors ?? 0;
      return seen.n === 8;
    });
    assert.deepEqual(seen, { n: 8, errors: 0 });
  } finally {
    await tp.close();
    await up.close();
  }
});

test('requests the gateway refuses for the service (401 after a slow introspection, 429) are no demand on it: not in flight while their plugins run, not counted when they end', async () => {
  const up = await startUpstream((_req, res) => res.end('ok'));
  // The IdP takes 600 ms, then says the token is inactive (good-token: active).
  const idp = await startUpstream((_req, res, raw) => {
    const good = raw.toString().includes('good-token');
    setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(good ? { active: true, client_id: 'c' } : { active: false })), good ? 0 : 600);
  });
  const tp = await startGateway(`scaling: {interval: 60s}
services:
  - name: orders
    url: ${up.url}
    scaling: {target_concurrency: 2, min_replicas: 0}
    routes:
      - {name: guarded, paths: [/o], plugins: [{name: oauth2-introspection, config: {introspection_url: "${idp.url}/introspect", client_id: a, client_secret: b, negative_cache_ttl: 0s}}]}
      - {name: limited, paths: [/l], plugins: [{name: rate-limit, config: {limit: 1, window: 60s}}]}
`);
  try {
    tp.gw.demand.drain();
    // Six made-up tokens at once: each waits 600 ms on the IdP, then 401.
    const refused = Promise.all(Array.from({ length: 6 }, (_, i) => fetch(`${tp.url}/o`, { headers: { authorization: `Bearer made-up-${i}` } }).then(async (r) => { await r.arrayBuffer(); return r.status; })));
    await sleep(450); // a few samples of the gauge (every 100 ms) while they wait
    const waiting = tp.gw.demand.drain().services['orders'];
    assert.equal(waiting?.inflight ?? 0, 0, `refused requests counted as in flight: ${JSON.stringify(waiting)}`);
    assert.deepEqual(await refused, [401, 401, 401, 401, 401, 401]);
    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push((await fetch(`${tp.url}/l`).then(async (r) => { await r.arrayBuffer(); return r.status; })));
    assert.deepEqual(statuses, [200, 429, 429]);
    assert.equal((await fetch(`${tp.url}/o`, { headers: { authorization: 'Bearer good-token' } })).status, 200);
    const seen = { n: 0, routes: {} as Record<string, number> };
    await eventually(() => {
      const d = tp.gw.demand.drain();
      seen.n += d.services['orders']?.n ?? 0;
      for (const [r, c] of Object.entries(d.routes)) seen.routes[r] = (seen.routes[r] ?? 0) + c.n;
      return seen.n >= 2;
    });
    await sleep(200);
    seen.n += tp.gw.demand.drain().services['orders']?.n ?? 0;
    // What reached the upstream: the one request the rate limit let through and the good token's.
    assert.deepEqual(seen, { n: 2, routes: { guarded: 1, limited: 1 } });
  } finally {
    await tp.close();
    await up.close();
    await idp.close();
  }
});

test('a composition\'s service steps are demand on those services: in flight while they run, counted when they end (a service called only by compositions read idle)', async () => {
  const up = await startUpstream((_req, res) => setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}'), 700));
  const tp = await startGateway(`scaling: {interval: 60s}
services:
  - name: orders
    url: ${up.url}
    scaling: {target_concurrency: 2, min_replicas: 0}
routes:
  - name: summary
    paths: [/summary]
    methods: [GET]
    compose:
      steps:
        - {name: orders, service: orders, path: /orders}
`);
  try {
    tp.gw.demand.drain();
    const answers = Promise.all(Array.from({ length: 4 }, () => fetch(`${tp.url}/summary`).then(async (r) => { await r.arrayBuffer(); return r.status; })));
    await eventually(() => up.requests.length === 4, 3000, 10); // (the upstream answers 700 ms after each arrived)
    tp.gw.demand.drain(); // (from here on, every sample sees the 4 steps running)
    await sleep(350);
    const running = tp.gw.demand.drain().services['orders'];
    assert.equal(running?.inflight, 4, `the composition's steps in flight on orders: ${JSON.stringify(running)}`);
    assert.deepEqual(await answers, [200, 200, 200, 200]);
    const seen = { n: 0, errors: 0 };
    await eventually(() => {
      const c = tp.gw.demand.drain().services['orders'];
      seen.n += c?.n ?? 0;
      seen.errors += c?.errors ?? 0;
      return seen.n >= 4;
    });
    assert.deepEqual(seen, { n: 4, errors: 0 });
  } finally {
    await tp.close();
    await up.close();
  }
});

test('workers: 2 — a worker that dies holding a request is no longer in flight at the next tick (its last level held for three intervals)', { timeout: 60_000 }, async () => {
  const up = await startUpstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: hello\n\n'); // and never ends
  });
  const [port, admin] = [await freePort(), await freePort()];
  const file = join(mkdtempSync(join(tmpdir(), 'turnpike-scl-')), 'c.yaml');
  // Ticks of 2 s: a silent worker would count for 6 s.
  writeFileSync(file, `listen: 127.0.0.1:${port}\nadmin: {listen: 127.0.0.1:${admin}, token: scaling-test-token-0123456789}\nworkers: 2\nscaling: {interval: 2s}\nservices:\n  - name: orders\n    url: ${up.url}\n    scaling: {target_concurrency: 2, min_replicas: 0}\n    routes: [{paths: [/events]}]\n`);
  const run = startCli(['start', '--config', file], {});
  const concurrency = async () => {
    const r = await request(`http://127.0.0.1:${admin}/api/scaling`, { headers: { authorization: 'Bearer scaling-test-token-0123456789' } });
    return (JSON.parse(r.body) as { services: { signals: { concurrency: number } }[] }).services[0]!.signals.concurrency;
  };
  try {
    // (both workers listening: one that dies before it does fails the start)
    await eventually(() => /admin on http:/.test(run.stderr()) || run.child.exitCode !== null, 30_000, 50);
    assert.equal(children(run.child.pid!).length, 2, run.stderr());
    const req = httpRequest(`http://127.0.0.1:${port}/events`);
    req.on('error', () => undefined);
    await new Promise<void>((ok) => { req.on('response', (res) => { res.on('error', () => undefined); res.once('data', () => ok()); }); req.end(); });
    await eventually(async () => (await concurrency()) >= 0.9, 10_000, 100);
    // Both workers die (SIGKILL: nothing sent on the way out); the primary starts new ones.
    for (const pid of children(run.child.pid!)) process.kill(pid, 'SIGKILL');
    const killed = Date.now();
    await eventually(async () => (await concurrency()) === 0, 12_000, 100).catch((err: Error) => assert.fail(`${err.message}\n${run.stderr()}`));
    const took = Date.now() - killed;
    assert.ok(took < 4500, `the dead workers' request counted for ${took} ms after they died`);
    req.destroy();
  } finally {
    await stopGroup(run.child.pid!);
    await up.close();
  }
});
