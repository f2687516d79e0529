/** Target selection: least-connections, consistent-hash (header, cookie, ip; reloads), latency, and round-robin around a down target. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest, type ServerResponse } from 'node:http';
import { parseConfigText } from '../src/config/load.js';
import { sleep, startGateway, startUpstream, request, type TestUpstream } from './helpers.js';

/** An upstream that answers with its own name (health probes on /healthz get `health()`'s status). */
async function named(name: string, opts: { delayMs?: number; health?: () => number } = {}): Promise<TestUpstream> {
  return startUpstream((req, res) => {
    if (req.url === '/healthz') return void res.writeHead(opts.health?.() ?? 200).end();
    if (opts.delayMs) setTimeout(() => res.end(name), opts.delayMs);
    else res.end(name);
  });
}

/** Requests the upstream saw, health probes excluded. */
const traffic = (u: TestUpstream) => u.requests.filter((r) => r.url !== '/healthz').length;

/** An upstream that holds every request until release() is called. */
async function holding(name: string): Promise<TestUpstream & { held: ServerResponse[]; release(): void }> {
  const held: ServerResponse[] = [];
  const u = await startUpstream((_req, res) => void held.push(res));
  return Object.assign(u, { held, release: () => { for (const r of held.splice(0)) r.end(name); } });
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** GET from a given loopback source address (Linux routes all of 127/8 to lo). */
function getFrom(url: string, localAddress: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false, localAddress }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve(Buffer.concat(chunks).toString()));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** Runs fn over items with at most `n` in flight, keeping order of results. */
async function mapLimit<T, R>(items: T[], n: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  }));
  return out;
}

for (const [weights, expected, freed, more, after] of [
  // 4 held -> 2/2; b's two finish, so the next two both go to b (a still holds 2).
  [[1, 1], [2, 2], 'b', 2, [2, 2]],
  // 4 held -> 3/1; a's three finish, so the next four all go to a: (k+1)/3 stays below b's (1+1)/1 for k < 5.
  [[3, 1], [3, 1], 'a', 4, [4, 1]],
] as const) {
  test(`least-connections spreads held requests by (inflight+1)/weight: weights ${weights.join(':')} -> ${expected.join('/')}`, { timeout: 30_000 }, async () => {
    const a = await holding('a');
    const b = await holding('b');
    const g = await startGateway(`services:\n  - name: s\n    upstream:\n      balancer: least-connections\n      targets: [{url: ${a.url}, weight: ${weights[0]}}, {url: ${b.url}, weight: ${weights[1]}}]\n    routes: [{paths: [/]}]\n`);
    try {
      let answered = 0;
      const pending = Array.from({ length: 4 }, () => request(`${g.url}/x`).then((r) => (answered++, r)));
      await until(() => a.held.length + b.held.length === 4, 2000, 'all 4 requests to reach the upstreams');
      assert.deepEqual([a.held.length, b.held.length], [...expected]);
      // Unlike round-robin, the next picks follow what is still in flight.
      const freedCount = expected[freed === 'a' ? 0 : 1];
      (freed === 'a' ? a : b).release();
      // The gateway releases a target's in-flight count before it ends the client's response.
      await until(() => answered === freedCount, 2000, 'the freed requests to be answered');
      const next = Array.from({ length: more }, () => request(`${g.url}/y`));
      await until(() => a.held.length + b.held.length === 4 - freedCount + more, 2000, `the next ${more} requests`);
      assert.deepEqual([a.held.length, b.held.length], [...after]);
      a.release();
      b.release();
      const bodies = (await Promise.all([...pending, ...next])).map((r) => r.body).sort();
      assert.equal(bodies.length, 4 + more);
      assert.ok(bodies.every((x) => x === 'a' || x === 'b'));
    } finally {
      a.release();
      b.release();
      await g.close();
      await a.close();
      await b.close();
    }
  });
}

test('consistent-hash on a header: stable mapping; adding a target moves keys only to it, removing one moves only its keys', { timeout: 30_000 }, async () => {
  const ups = await Promise.all(['a', 'b', 'c', 'd'].map((n) => named(n)));
  const [a, b, c, d] = ups as [TestUpstream, TestUpstream, TestUpstream, TestUpstream];
  const cfg = (ts: TestUpstream[]) =>
    `listen: 127.0.0.1:0\nservices:\n  - name: s\n    upstream:\n      balancer: consistent-hash\n      hash_on: header:x-user-id\n      targets: [${ts.map((t) => `{url: ${t.url}}`).join(', ')}]\n    routes: [{paths: [/]}]\n`;
  const g = await startGateway(cfg([a, b, c]));
  const keys = Array.from({ length: 200 }, (_, i) => `user-${i}-${(i * 7919) % 1000}`);
  const map = () => mapLimit(keys, 16, async (k) => (await request(`${g.url}/x`, { headers: { 'x-user-id': k } })).body);
  try {
    const first = await map();
    const again = await map();
    assert.deepEqual(again, first, 'repeat requests go to the same target');
    const counts = Object.fromEntries(['a', 'b', 'c'].map((n) => [n, first.filter((x) => x === n).length]));
    for (const n of ['a', 'b', 'c']) assert.ok(counts[n]! >= 20, `every target owns a fair share of 200 keys: ${JSON.stringify(counts)}`);

    g.gw.reload(parseConfigText(cfg([a, b, c, d])));
    const grown = await map();
    const moved = keys.filter((_, i) => grown[i] !== first[i]);
    for (const k of moved) assert.equal(grown[keys.indexOf(k)], 'd', `key ${k} moved from ${first[keys.indexOf(k)]} to a target other than the new one`);
    const share = moved.length / keys.length;
    assert.ok(share >= 0.10 && share <= 0.45, `moved share ${share} should be between 10% and 45% (ideal 25%)`);

    g.gw.reload(parseConfigText(cfg([a, c, d])));
    const shrunk = await map();
    for (let i = 0; i < keys.length; i++) {
      if (grown[i] !== 'b') assert.equal(shrunk[i], grown[i], `key ${keys[i]} was on ${grown[i]}, not on the removed target, yet moved to ${shrunk[i]}`);
      else assert.notEqual(shrunk[i], 'b');
    }
    assert.ok(grown.some((x) => x === 'b'), 'the removed target owned keys');
  } finally {
    await g.close();
    await Promise.all(ups.map((u) => u.close()));
  }
});

test('consistent-hash on a cookie: same cookie, same target; no cookie falls back to the client IP', { timeout: 30_000 }, async () => {
  const ups = await Promise.all(['a', 'b', 'c'].map((n) => named(n)));
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      balancer: consistent-hash\n      hash_on: cookie:sid\n      targets: [${ups.map((t) => `{url: ${t.url}}`).join(', ')}]\n    routes: [{paths: [/]}]\n`);
  try {
    const seen = new Set<string>();
    for (let i = 0; i < 30; i++) {
      const cookie = `theme=dark; sid=session-${i}; lang=en`;
      const one = (await request(`${g.url}/x`, { headers: { cookie } })).body;
      for (let k = 0; k < 3; k++) assert.equal((await request(`${g.url}/x`, { headers: { cookie } })).body, one, `sid=session-${i}`);
      // Only the named cookie counts.
      assert.equal((await request(`${g.url}/x`, { headers: { cookie: `sid=session-${i}; theme=light` } })).body, one);
      seen.add(one);
    }
    assert.ok(seen.size >= 2, 'different sessions spread over targets');
    // No sid cookie (absent, or empty): the key is the client IP, so one stable target, the one
    // a cookie whose value is the IP itself hashes to.
    const byIp = (await request(`${g.url}/x`, { headers: { cookie: 'sid=127.0.0.1' } })).body;
    for (const headers of [{}, { cookie: 'theme=dark' }, { cookie: 'sid=' }] as Record<string, string>[]) {
      for (let k = 0; k < 3; k++) assert.equal((await request(`${g.url}/x`, { headers })).body, byIp, JSON.stringify(headers));
    }
  } finally {
    await g.close();
    await Promise.all(ups.map((u) => u.close()));
  }
});

test('consistent-hash on ip (and header fallback to ip): each client address sticks to one target', { timeout: 30_000 }, async () => {
  const ups = await Promise.all(['a', 'b', 'c'].map((n) => named(n)));
  const targets = `targets: [${ups.map((t) => `{url: ${t.url}}`).join(', ')}]`;
  const byIp = await startGateway(`services:\n  - name: s\n    upstream:\n      balancer: consistent-hash\n      hash_on: ip\n      ${targets}\n    routes: [{paths: [/]}]\n`);
  const byHeader = await startGateway(`services:\n  - name: s\n    upstream:\n      balancer: consistent-hash\n      hash_on: header:x-user-id\n      ${targets}\n    routes: [{paths: [/]}]\n`);
  try {
    const ips = Array.from({ length: 20 }, (_, i) => `127.0.0.${i + 1}`);
    const seen = new Set<string>();
    for (const ip of ips) {
      const one = await getFrom(`${byIp.url}/x`, ip);
      for (let k = 0; k < 2; k++) assert.equal(await getFrom(`${byIp.url}/x`, ip), one, `from ${ip}`);
      // The header service without the header hashes the same IP to the same target.
      assert.equal(await getFrom(`${byHeader.url}/x`, ip), one, `header fallback from ${ip}`);
      assert.equal((await request(`${byHeader.url}/x`, { headers: { 'x-user-id': ip } })).body, one, `header value ${ip}`);
      seen.add(one);
    }
    assert.ok(seen.size >= 2, `20 client addresses spread over targets (saw ${[...seen]})`);
  } finally {
    await byIp.close();
    await byHeader.close();
    await Promise.all(ups.map((u) => u.close()));
  }
});

test('latency balancer sends most traffic to the faster target', { timeout: 30_000 }, async () => {
  const slow = await named('slow', { delayMs: 40 });
  const fast = await named('fast');
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      balancer: latency\n      targets: [{url: ${slow.url}}, {url: ${fast.url}}]\n    routes: [{paths: [/]}]\n`);
  try {
    const seen: string[] = [];
    for (let i = 0; i < 100; i++) seen.push((await request(`${g.url}/x`)).body);
    const share = seen.filter((x) => x === 'fast').length / seen.length;
    assert.ok(share > 0.75, `fast target share ${share}`);
  } finally {
    await g.close();
    await slow.close();
    await fast.close();
  }
});

test('latency balancer: a target that fails at once (5xx) is not the fastest', { timeout: 30_000 }, async () => {
  const failing = await startUpstream((_q, res) => res.writeHead(500).end('failing'));
  const slower = await named('ok', { delayMs: 20 });
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      balancer: latency\n      targets: [{url: ${failing.url}}, {url: ${slower.url}}]\n    routes: [{paths: [/]}]\n`);
  try {
    const seen: string[] = [];
    for (let i = 0; i < 60; i++) seen.push((await request(`${g.url}/x`)).body);
    const share = seen.filter((x) => x === 'ok').length / seen.length;
    assert.ok(share > 0.75, `working target share ${share}`);
  } finally {
    await g.close();
    await failing.close();
    await slower.close();
  }
});

test('round-robin skips a target the active health check marks down', { timeout: 30_000 }, async () => {
  let bStatus = 503;
  const a = await named('a');
  const b = await named('b', { health: () => bStatus });
  const c = await named('c');
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${a.url}}, {url: ${b.url}}, {url: ${c.url}}]\n      healthcheck:\n        active: {path: /healthz, interval: 100ms, timeout: 100ms, healthy: 2, unhealthy: 2, statuses: [200]}\n    routes: [{paths: [/]}]\n`);
  const report = () => g.gw.health!.report().targets;
  try {
    await until(() => report()[`s|${b.url}`]?.down === true, 2000, 'b to be marked down');
    assert.equal(report()[`s|${a.url}`]?.down, false);
    const before = traffic(b);
    const seen: string[] = [];
    for (let i = 0; i < 12; i++) seen.push((await request(`${g.url}/x`)).body);
    assert.equal(traffic(b), before, 'the down target got no traffic');
    assert.deepEqual([seen.filter((x) => x === 'a').length, seen.filter((x) => x === 'c').length], [6, 6]);

    bStatus = 200;
    await until(() => report()[`s|${b.url}`]?.down === false, 2000, 'b to come back');
    const back: string[] = [];
    for (let i = 0; i < 12; i++) back.push((await request(`${g.url}/x`)).body);
    assert.deepEqual(['a', 'b', 'c'].map((n) => back.filter((x) => x === n).length), [4, 4, 4]);
  } finally {
    await g.close();
    await a.close();
    await b.close();
    await c.close();
  }
});

test('consistent-hash weights stay proportional past 100 (1:1000 was flattened to about 1:100)', async () => {
  const { createBalancer } = await import('../src/upstream/balancer.js');
  type T = Parameters<typeof createBalancer>[1][number];
  const target = (name: string, weight: number) => ({ origin: `http://${name}:80`, basePath: '', hostHeader: name, weight, state: { down: false } }) as unknown as T;
  const light = target('light', 1);
  const heavy = target('heavy', 1000);
  const b = createBalancer('consistent-hash', [light, heavy]);
  let onLight = 0;
  for (let i = 0; i < 50_000; i++) if (b.pick(`key-${i}`, null) === light) onLight++;
  // ideal 50,000 / 1001 = 50; the old per-target cap gave ~1:100 (~495)
  assert.ok(onLight > 10 && onLight < 150, `${onLight} of 50,000 keys on the weight-1 target`);
  const even = createBalancer('consistent-hash', [target('x', 3), target('y', 1)]);
  let onX = 0;
  for (let i = 0; i < 20_000; i++) if ((even.pick(`k${i}`, null) as unknown as { hostHeader: string }).hostHeader === 'x') onX++;
  assert.ok(onX > 13_500 && onX < 16_500, `3:1 gives ${onX} of 20,000 to the weight-3 target`);
});
