/** Several targets: weighted round-robin, and retries of connection failures (idempotent, bodiless only). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { freePort, startGateway, startUpstream, request } from './helpers.js';


test('weighted round-robin spreads requests by weight', async () => {
  const a = await startUpstream((_q, res) => res.end('a'));
  const b = await startUpstream((_q, res) => res.end('b'));
  const c = await startUpstream((_q, res) => res.end('c'));
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${a.url}, weight: 3}, {url: ${b.url}, weight: 1}, {url: ${c.url}, weight: 0}]\n    routes: [{paths: [/]}]\n`);
  try {
    const seen: string[] = [];
    for (let i = 0; i < 8; i++) seen.push((await request(`${g.url}/x`)).body);
    assert.equal(seen.filter((x) => x === 'a').length, 6);
    assert.equal(seen.filter((x) => x === 'b').length, 2);
  } finally {
    await g.close();
    await a.close();
    await b.close();
    await c.close();
  }
});

test('connection failures are retried on another target (any method: nothing was sent); without retries they fail', async () => {
  const live = await startUpstream((req, res) => res.end(`live ${req.method}`));
  const dead = await freePort(); // nothing listens there
  const cfg = (retries: number) => `services:\n  - name: s\n    upstream:\n      targets: [{url: "http://127.0.0.1:${dead}"}, {url: ${live.url}}]\n    retries: ${retries}\n    routes: [{paths: [/]}]\n`;
  const withRetry = await startGateway(cfg(1));
  const without = await startGateway(cfg(0));
  try {
    for (let i = 0; i < 4; i++) {
      const r = await request(`${withRetry.url}/x`);
      assert.equal(r.status, 200, `GET ${i}`);
      assert.equal(r.body, 'live GET');
    }
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await request(`${without.url}/x`)).status);
    assert.deepEqual(statuses.sort(), [200, 200, 502, 502]);
    // A refused connection sent nothing: a POST with its body goes to the next target too.
    for (let i = 0; i < 4; i++) {
      const r = await request(`${withRetry.url}/x`, { method: 'POST', body: 'payload' });
      assert.equal(r.status, 200, `POST ${i}`);
      assert.equal(r.body, 'live POST');
    }
    assert.deepEqual(live.requests.filter((q) => q.method === 'POST').map((q) => q.body.toString()), Array(4).fill('payload'));
  } finally {
    await withRetry.close();
    await without.close();
    await live.close();
  }
});

test('the retry budget starts full: a process, worker or service just started can retry at once (min_per_second counted from its start, on the monotonic clock, gave it only its age in seconds)', async () => {
  const { compile } = await import('../src/config/compile.js');
  const { parseConfigText } = await import('../src/config/load.js');
  const { PoolRegistry } = await import('../src/upstream/pools.js');
  const { spendRetry } = await import('../src/upstream/forward.js');
  const pools = new PoolRegistry();
  const snap = compile(parseConfigText('services: [{name: s, url: "http://127.0.0.1:9", retry_budget: {ratio: 0.2, min_per_second: 1}, routes: [{paths: [/]}]}]\n', { env: {} }), { pools });
  try {
    const svc = snap.services[0]!;
    // 300 ms into the process's life: the whole budget (max(10, ratio x 100, min_per_second) = 20), then none.
    const granted = Array.from({ length: 21 }, () => spendRetry(svc, 300)).filter(Boolean).length;
    assert.equal(granted, 20);
    // and min_per_second refills it from then on
    assert.equal(spendRetry(svc, 1400), true);
    assert.equal(spendRetry(svc, 1400), false);
  } finally {
    snap.dispose();
  }
});
