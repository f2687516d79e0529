/**
 * Edge cases of the resilience machinery found in review: state that must survive reloads,
 * long bulkhead queues, half-open trials, DNS answers and rejected reloads, latency decay.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { spawn } from 'node:child_process';
import { connect, createServer as createNetServer } from 'node:net';
import { parseConfigText } from '../src/config/load.js';
import { TargetState } from '../src/upstream/state.js';
import { HealthAuthority } from '../src/upstream/authority.js';
import { compile } from '../src/config/compile.js';
import { PoolRegistry } from '../src/upstream/pools.js';
import { configIssues, sleep, startGateway, startRawOrigin, startUpstream, request } from './helpers.js';

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** An upstream that holds every request until release() (or answers at once when open). */
async function holdingUpstream() {
  const held: ServerResponse[] = [];
  let open = false;
  const up = await startUpstream((_req: IncomingMessage, res: ServerResponse) => (open ? res.end('ok') : held.push(res)));
  return {
    up, held,
    release(n = held.length) { for (const r of held.splice(0, n)) r.end('ok'); },
    openUp() { open = true; this.release(); },
  };
}

test('a request queued in the bulkhead survives a reload that retires its pool', { timeout: 8000 }, async () => {
  const h = await holdingUpstream();
  const cfg = (connect: string) => `services:\n  - name: s\n    url: ${h.up.url}\n    timeouts: {connect: ${connect}}\n    circuit_breaker: {max_concurrent: 1, max_pending: 5, max_wait: 5s}\n    routes: [{paths: [/]}]\n`;
  const g = await startGateway(cfg('3s'));
  try {
    const a = request(`${g.url}/a`);
    await until(() => h.held.length === 1, 2000, 'A at the upstream');
    const b = request(`${g.url}/b`);
    await sleep(50);
    g.gw.reload(parseConfigText(`listen: 127.0.0.1:0\n${cfg('4s')}`)); // another connect timeout = another pool
    h.openUp();
    assert.equal((await a).status, 200);
    const rb = await b;
    assert.equal(rb.status, 200, rb.body);
  } finally {
    await g.close();
    await h.up.close();
  }
});

test('3000 queued requests, target down, slot holder leaves: the queue drains without a stack overflow', { timeout: 20000 }, async () => {
  const h = await holdingUpstream();
  const g = await startGateway(`services:\n  - name: s\n    upstream: {targets: [{url: "${h.up.url}"}]}\n    circuit_breaker: {max_concurrent: 1, max_pending: 3000, max_wait: 15s}\n    routes: [{paths: [/]}]\n`);
  const svc = () => g.gw.snapshot.services[0]!;
  try {
    const holder = httpRequest(`${g.url}/hold`);
    holder.on('error', () => {});
    holder.end();
    await until(() => h.held.length === 1, 2000, 'the holder at the upstream');
    // 3000 waiters over raw sockets (no client-side pool limits).
    const results: Promise<number>[] = [];
    for (let i = 0; i < 3000; i++) {
      results.push(new Promise((resolve) => {
        const r = httpRequest(`${g.url}/q${i}`, { agent: false }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode!)); });
        r.on('error', () => resolve(0));
        r.end();
      }));
    }
    await until(() => svc().state.queue.length === 3000, 10000, '3000 queued');
    svc().targets[0]!.state.down = true;
    holder.destroy(); // its slot is handed down the queue; every waiter fails at once (no healthy target)
    const codes = await Promise.all(results);
    assert.equal(codes.filter((c) => c === 503).length, 3000);
    assert.equal(svc().state.queue.length, 0);
    assert.equal(svc().state.active, 0);
  } finally {
    h.release();
    await g.close();
    await h.up.close();
  }
});

test('lowering max_concurrent by reload applies to requests already queued', { timeout: 8000 }, async () => {
  const h = await holdingUpstream();
  const cfg = (n: number) => `services:\n  - name: s\n    url: ${h.up.url}\n    circuit_breaker: {max_concurrent: ${n}, max_pending: 50, max_wait: 5s}\n    routes: [{paths: [/]}]\n`;
  const g = await startGateway(cfg(4));
  try {
    const all = Array.from({ length: 12 }, (_, i) => request(`${g.url}/${i}`));
    await until(() => h.held.length === 4, 2000, '4 at the upstream');
    g.gw.reload(parseConfigText(`listen: 127.0.0.1:0\n${cfg(1)}`));
    const inFlight: number[] = [];
    for (let k = 0; k < 6; k++) {
      h.release(1);
      await sleep(30);
      inFlight.push(h.held.length);
    }
    // 4 -> 3 -> 2 -> 1 and then it stays at 1 (not refilled to 4 from the queue).
    assert.deepEqual(inFlight, [3, 2, 1, 1, 1, 1]);
    h.openUp();
    for (const r of await Promise.all(all)) assert.equal(r.status, 200);
  } finally {
    await g.close();
    await h.up.close();
  }
});

test('half-open: only a trial closes the circuit, not a request admitted before it opened', { timeout: 8000 }, async () => {
  let mode: 'fail' | 'ok' = 'fail';
  const up = await startUpstream((req, res) => {
    if (req.url === '/slow') setTimeout(() => res.end('slow ok'), 700);
    else if (mode === 'fail') res.writeHead(500).end('no');
    else res.end('ok');
  });
  const g = await startGateway(`services:\n  - name: s\n    url: ${up.url}\n    circuit_breaker: {failure_ratio: 0.5, min_requests: 2, open_for: 300ms}\n    routes: [{paths: [/]}]\n`);
  const state = () => g.gw.snapshot.services[0]!.state;
  try {
    const slow = request(`${g.url}/slow`);
    await sleep(50);
    assert.equal((await request(`${g.url}/x`)).status, 500);
    assert.equal((await request(`${g.url}/x`)).status, 500);
    assert.equal(state().circuit, 'open');
    await until(() => state().circuit === 'half-open', 1000, 'half-open');
    assert.equal((await slow).status, 200); // admitted before: says nothing about now
    assert.equal(state().circuit, 'half-open');
    mode = 'ok';
    assert.equal((await request(`${g.url}/x`)).status, 200); // the trial
    assert.equal(state().circuit, 'closed');
  } finally {
    await g.close();
    await up.close();
  }
});

test('half-open: exactly half_open_requests trials per period: a trial of an earlier period still in flight holds no place of the next one, and its late answer neither closes nor reopens it', { timeout: 8000 }, async () => {
  let mode: 'fail' | 'ok' = 'fail';
  const held: ServerResponse[] = [];
  const up = await startUpstream((req, res) => {
    if (req.url === '/hold') held.push(res);
    else if (mode === 'fail') res.writeHead(500).end('no');
    else res.end('ok');
  });
  const g = await startGateway(`services:\n  - name: s\n    url: ${up.url}\n    circuit_breaker: {failure_ratio: 0.5, min_requests: 2, open_for: 200ms, half_open_requests: 2}\n    routes: [{paths: [/]}]\n`);
  const state = () => g.gw.snapshot.services[0]!.state;
  try {
    assert.equal((await request(`${g.url}/x`)).status, 500);
    assert.equal((await request(`${g.url}/x`)).status, 500);
    assert.equal(state().circuit, 'open');
    await until(() => state().circuit === 'half-open', 2000, 'half-open');
    // Period 1: trial A is held, trial B fails: the circuit opens again with A in flight.
    const a = request(`${g.url}/hold`);
    await until(() => held.length === 1, 2000, 'trial A upstream');
    assert.equal((await request(`${g.url}/x`)).status, 500);
    assert.equal(state().circuit, 'open');
    await until(() => state().circuit === 'half-open', 2000, 'half-open again');
    // Period 2: two trial places, both taken (C, D); a third request is refused.
    const c = request(`${g.url}/hold`);
    const d = request(`${g.url}/hold`);
    await until(() => held.length === 3, 2000, 'trials C and D upstream');
    assert.equal((await request(`${g.url}/x`)).status, 503);
    // A answers now, 200: no trial of this period — the circuit stays half-open, no place freed.
    held[0]!.end('late');
    assert.equal((await a).status, 200);
    await sleep(50);
    assert.equal(state().circuit, 'half-open', 'a trial of the earlier period closed the circuit');
    assert.equal(state().trials, 2);
    const e = await request(`${g.url}/x`);
    assert.equal(e.status, 503, 'a third trial was admitted');
    // This period's own trials decide it.
    mode = 'ok';
    held[1]!.end('ok');
    held[2]!.end('ok');
    assert.equal((await c).status, 200);
    assert.equal((await d).status, 200);
    assert.equal(state().circuit, 'closed');
    assert.equal((await request(`${g.url}/x`)).status, 200);
  } finally {
    for (const r of held) if (!r.writableEnded) r.end();
    await g.close();
    await up.close();
  }
});

test('latency balancer: a slow sample decays while a target gets no traffic', () => {
  const t = new TargetState('k');
  t.sample(400, 1_000);
  assert.equal(t.latency(1_000), 400);
  assert.ok(t.latency(11_000) < 400 / 2.7 + 1);
  assert.ok(t.latency(61_000) < 2);
  // The wall clock stepped back an hour (NTP, a restored VM): the average neither grows nor becomes Infinity.
  const s = new TargetState('k2');
  s.sample(400, 10_000_000);
  const back = 10_000_000 - 3_600_000;
  assert.equal(s.latency(back), 400);
  s.sample(100, back);
  assert.ok(s.latency(back) <= 400 && s.latency(back) >= 100, String(s.latency(back)));
});

test('DNS: a rejected reload changes neither the answers nor the settings in use', { timeout: 8000 }, async () => {
  const ups = await startUpstream();
  const good = `services:\n  - name: s\n    url: http://localhost:${ups.port}\n    routes: [{paths: [/]}]\n`;
  const g = await startGateway(good);
  try {
    const before = JSON.stringify(g.gw.dns.table());
    const dnsBefore = g.gw.dns;
    // Valid schema, invalid compile (duplicate service), other DNS servers and a name that never resolves.
    const bad = `listen: 127.0.0.1:0\ndns: {servers: ["127.0.0.1:9"], timeout: 100ms, refresh: 100ms}\nservices:\n  - name: s\n    url: http://nowhere.invalid:${ups.port}\n    routes: [{paths: [/]}]\n  - name: s\n    url: http://localhost:${ups.port}\n`;
    await assert.rejects(g.gw.reloadAsync(parseConfigText(bad)), /duplicate service name/);
    assert.equal(g.gw.dns, dnsBefore);
    assert.equal(JSON.stringify(g.gw.dns.table()), before);
    assert.equal(g.gw.dns.refreshMs, 30_000);
  } finally {
    await g.close();
    await ups.close();
  }
});

test('a connect that hangs is bounded by the response timeout and the deadline, not by timeouts.connect', { timeout: 10000 }, async () => {
  // A listener whose process is stopped: the kernel completes handshakes until the backlog is
  // full, then drops SYNs, so further connects hang (a black hole on loopback).
  const child = spawn(process.execPath, ['-e', `
    const s = require('node:net').createServer();
    s.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
      process.stdout.write(s.address().port + '\\n', () => process.kill(process.pid, 'SIGSTOP'));
    });`], { stdio: ['ignore', 'pipe', 'ignore'] });
  const port = await new Promise<number>((resolve) => child.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
  const fillers = Array.from({ length: 4 }, () => connect(port, '127.0.0.1').on('error', () => {}));
  await sleep(200);
  const g = await startGateway(`services:\n  - name: s\n    url: http://127.0.0.1:${port}\n    timeouts: {connect: 4s, response: 300ms, total: 500ms}\n    retries: 2\n    retry_on: [timeout]\n    routes: [{paths: [/]}]\n`);
  try {
    const t0 = Date.now();
    const r = await request(`${g.url}/x`);
    const took = Date.now() - t0;
    assert.equal(r.status, 504, r.body);
    assert.equal(JSON.parse(r.body).type, 'urn:turnpike:problem:gateway-timeout');
    assert.ok(took >= 450 && took < 1500, `504 after ${took} ms (deadline 500 ms, connect timeout 4 s)`);
  } finally {
    for (const f of fillers) f.destroy();
    child.kill('SIGKILL');
    await g.close();
  }
});

test('passive ejection: a wall clock stepped back (NTP, a restored VM) does not multiply the next ejection (the decay runs on the monotonic clock)', { timeout: 6000 }, async (t) => {
  const pools = new PoolRegistry();
  const snap = compile(parseConfigText(`services:\n  - name: s\n    upstream:\n      targets: [{url: "http://127.0.0.1:1"}, {url: "http://127.0.0.1:2"}]\n      healthcheck: {passive: {failures: 1, ejection: 100ms, max_ejection: 1s}}\n`, { env: {} }), { pools });
  const events: boolean[] = [];
  const authority = new HealthAuthority((d) => { if (d.t === 'target') events.push(d.down); });
  const key = snap.services[0]!.targets[0]!.state.key;
  const ejectedFor = async () => {
    const start = performance.now();
    authority.passive(key, false);
    assert.equal(events.at(-1), true);
    await until(() => events.at(-1) === false, 3000, 'readmission');
    return performance.now() - start;
  };
  try {
    authority.sync(snap);
    const first = await ejectedFor();
    assert.ok(first >= 95 && first < 400, `first ejection ${first} ms (100)`);
    // The system clock steps back an hour just after the readmission.
    const realNow = Date.now;
    t.mock.method(Date, 'now', () => realNow.call(Date) - 3_600_000);
    const second = await ejectedFor();
    assert.ok(second >= 195 && second < 700, `second ejection ${second.toFixed(0)} ms: 200 (a repeat), not max_ejection's 1000`);
  } finally {
    await authority.stop();
    snap.dispose();
    await pools.closeAll();
  }
});

test('circuit breaker: failures older than its window do not count after the wall clock stepped back (its buckets run on the monotonic clock)', { timeout: 6000 }, async (t) => {
  const pools = new PoolRegistry();
  const snap = compile(parseConfigText(`services:\n  - name: s\n    url: http://127.0.0.1:1\n    circuit_breaker: {failure_ratio: 0.5, min_requests: 4, window: 300ms, open_for: 10s}\n`, { env: {} }), { pools });
  const states: string[] = [];
  const authority = new HealthAuthority((d) => { if (d.t === 'circuit') states.push(d.state); });
  try {
    authority.sync(snap);
    for (let i = 0; i < 3; i++) authority.outcome('s', false, false);
    assert.deepEqual(states, [], 'three of min_requests 4: still closed');
    const realNow = Date.now;
    t.mock.method(Date, 'now', () => realNow.call(Date) - 3_600_000);
    await sleep(420); // past the window
    authority.outcome('s', false, false);
    assert.deepEqual(states, [], 'the three earlier failures left the window: one failure opens nothing');
  } finally {
    await authority.stop();
    snap.dispose();
    await pools.closeAll();
  }
});

test('retries, the deadline and the latency balancer\'s samples run on the monotonic clock: a wall clock stepped mid-request (NTP, a resumed VM) neither ends the retries at once, nor lets them run past the deadline, nor feeds the balancer a negative latency', { timeout: 8000 }, async (t) => {
  const realNow = Date.now;
  let offset = 0;
  t.mock.method(Date, 'now', () => realNow.call(Date) + offset);
  const step = (ms: number) => { offset = ms; };
  // Stepped forward an hour while the first target answers 503: the retry still goes to the second.
  const a = await startUpstream((_q, res) => { step(3_600_000); res.writeHead(503).end('a'); });
  const b = await startUpstream((_q, res) => res.end('b'));
  // Stepped back an hour as the first attempt starts: the deadline still ends the attempts at 500 ms.
  const hang = await startUpstream(() => { step(-3_600_000); });
  // Stepped back an hour while the request is at the target: its latency sample is ~0, not -1 h.
  const back = await startUpstream((_q, res) => { step(-3_600_000); res.end('back'); });
  const g = await startGateway(`services:\n` +
    `  - name: retry\n    upstream:\n      targets: [{url: ${a.url}}, {url: ${b.url}}]\n      balancer: round-robin\n    retries: 2\n    retry_on: [503]\n    timeouts: {response: 5s, total: 10s}\n    routes: [{paths: [/retry]}]\n` +
    `  - name: deadline\n    url: ${hang.url}\n    timeouts: {response: 300ms, total: 500ms}\n    retries: 3\n    retry_on: [timeout]\n    routes: [{paths: [/deadline]}]\n` +
    `  - name: latency\n    upstream:\n      balancer: latency\n      targets: [{url: ${back.url}}]\n    routes: [{paths: [/latency]}]\n`);
  try {
    const r = await request(`${g.url}/retry`);
    offset = 0;
    assert.equal(r.status, 200, `the retry gave up at once: ${r.status} ${r.body}`);
    assert.equal(r.body, 'b');
    assert.equal(a.requests.length + b.requests.length, 2);

    const t0 = performance.now();
    const d = await request(`${g.url}/deadline`);
    const ms = performance.now() - t0;
    offset = 0;
    assert.equal(d.status, 504);
    assert.ok(ms < 900, `answered after ${ms.toFixed(0)} ms, past the 500 ms deadline`);
    assert.equal(hang.requests.length, 2, 'a 300 ms attempt, then one cut to the 200 ms left');

    assert.equal((await request(`${g.url}/latency`)).body, 'back');
    offset = 0;
    const ewma = g.gw.snapshot.services.find((s) => s.name === 'latency')!.targets[0]!.state.ewma;
    assert.ok(ewma > 0 && ewma < 1000, `latency sample ${ewma} ms`);
  } finally {
    t.mock.restoreAll();
    await g.close();
    await Promise.all([a, b, hang, back].map((u) => u.close()));
  }
});

test('passive ejection doubles on each repeat, capped at max_ejection; a success does not reset it (a flapping target), time in works it off (one step per `ejection` up, Envoy\'s decrement per healthy interval); the last target up is never ejected', { timeout: 6000 }, async () => {
  const pools = new PoolRegistry();
  const snap = compile(parseConfigText(`services:\n  - name: s\n    upstream:\n      targets: [{url: "http://127.0.0.1:1"}, {url: "http://127.0.0.1:2"}]\n      healthcheck: {passive: {failures: 1, ejection: 100ms, max_ejection: 250ms}}\n`, { env: {} }), { pools });
  const events: { down: boolean; at: number; key: string }[] = [];
  const t0 = Date.now();
  const authority = new HealthAuthority((d) => { if (d.t === 'target') events.push({ down: d.down, at: Date.now() - t0, key: d.key }); });
  const key = snap.services[0]!.targets[0]!.state.key;
  const other = snap.services[0]!.targets[1]!.state.key;
  const ejectedFor = async () => {
    const start = Date.now();
    authority.passive(key, false);
    assert.equal(events.at(-1)?.down, true);
    await until(() => events.at(-1)?.down === false, 2000, 'readmission');
    return Date.now() - start;
  };
  try {
    authority.sync(snap);
    const first = await ejectedFor();
    const second = await ejectedFor();
    const third = await ejectedFor();
    assert.ok(first >= 95 && first < 180, `first ejection ${first} ms (100)`);
    assert.ok(second >= 195 && second < 280, `second ejection ${second} ms (200)`);
    assert.ok(third >= 245 && third < 330, `third ejection ${third} ms (capped at 250)`);
    authority.passive(key, true); // a success after readmission, then failing again at once: still the cap
    const flapping = await ejectedFor();
    assert.ok(flapping >= 245 && flapping < 330, `ejection after a success ${flapping} ms (still capped at 250)`);
    // In for one `ejection` (100 ms, not two): one step off the multiplier.
    await sleep(140);
    const decayed = await ejectedFor();
    assert.ok(decayed >= 195 && decayed < 280, `ejection after ${'>'}100 ms in ${decayed} ms (200)`);
    // In for two: back to the base.
    await sleep(250);
    const after = await ejectedFor();
    assert.ok(after >= 95 && after < 180, `ejection after ${'>'}200 ms in ${after} ms (100)`);
    // With the first one out, the second is the last target up: its failures eject nothing.
    authority.passive(key, false);
    assert.equal(events.at(-1)?.down, true);
    authority.passive(other, false);
    authority.passive(other, false);
    assert.equal(events.filter((e) => e.key === other).length, 0, 'the last target up was ejected');
  } finally {
    await authority.stop();
    snap.dispose();
    await pools.closeAll();
  }
});

test('passive health: max_ejection_percent bounds how many of a service\'s targets are ejected at once (one always may be); without it all but the last one up are', { timeout: 5000 }, async () => {
  const pools = new PoolRegistry();
  const targets = '[{url: "http://127.0.0.1:1"}, {url: "http://127.0.0.1:2"}, {url: "http://127.0.0.1:3"}, {url: "http://127.0.0.1:4"}]';
  const snap = compile(parseConfigText(`services:
  - name: capped
    upstream:
      targets: ${targets}
      healthcheck: {passive: {failures: 1, ejection: 10s, max_ejection_percent: 50}}
  - name: one
    upstream:
      targets: ${targets}
      healthcheck: {passive: {failures: 1, ejection: 10s, max_ejection_percent: 10}}
  - name: plain
    upstream:
      targets: ${targets}
      healthcheck: {passive: {failures: 1, ejection: 10s}}
`, { env: {} }), { pools });
  const down = new Set<string>();
  const authority = new HealthAuthority((d) => { if (d.t === 'target') { if (d.down) down.add(d.key); else down.delete(d.key); } });
  const keys = (i: number) => snap.services[i]!.targets.map((t) => t.state.key);
  const failAll = (ks: string[]) => { for (const k of ks) authority.passive(k, false); };
  const ejected = (ks: string[]) => ks.filter((k) => down.has(k)).length;
  try {
    authority.sync(snap);
    failAll(keys(0));
    assert.equal(ejected(keys(0)), 2, '50% of 4 targets');
    failAll(keys(1));
    assert.equal(ejected(keys(1)), 1, 'one target may always be ejected, whatever the percentage');
    failAll(keys(2));
    assert.equal(ejected(keys(2)), 3, 'the default (100%): all but the last target up');
    // Failing again changes nothing: the bound holds while the first ones are out.
    failAll(keys(0));
    assert.equal(ejected(keys(0)), 2);
  } finally {
    await authority.stop();
    snap.dispose();
    await pools.closeAll();
  }
  assert.match(configIssues(`services:\n  - name: s\n    url: http://127.0.0.1:1\n    upstream:\n      healthcheck: {passive: {max_ejection_percent: 101}}\n`).map((i) => `${i.path} (line ${i.line})`).join('\n'), /max_ejection_percent \(line 5\)/);
});

test('passive health: a target of weight 0 (drained, no traffic) does not count as another target up: the last one with weight is not ejected', { timeout: 5000 }, async () => {
  const pools = new PoolRegistry();
  const snap = compile(parseConfigText(`services:\n  - name: s\n    upstream:\n      targets: [{url: "http://127.0.0.1:1"}, {url: "http://127.0.0.1:2", weight: 0}]\n      healthcheck: {passive: {failures: 1, ejection: 10s}}\n`, { env: {} }), { pools });
  const events: { down: boolean; key: string }[] = [];
  const authority = new HealthAuthority((d) => { if (d.t === 'target') events.push({ down: d.down, key: d.key }); });
  const svc = snap.services[0]!;
  const live = svc.targets[0]!;
  try {
    authority.sync(snap);
    authority.passive(live.state.key, false);
    authority.passive(live.state.key, false);
    assert.deepEqual(events, [], 'the only target with weight was ejected: every request would get 503 no-healthy-target');
    assert.equal(svc.balancer.pick('', null), live);
  } finally {
    await authority.stop();
    snap.dispose();
    await pools.closeAll();
  }
});

test('the response timeout counts from the last byte of the request sent: a slow upload is not a slow upstream; a stall after it still is', { timeout: 8000 }, async () => {
  // (the helper hands over the whole body: the answer goes out at once after the last byte)
  const up = await startUpstream((req: IncomingMessage, res: ServerResponse, body: Buffer) => {
    if (req.url !== '/stall') res.end(`got ${body.length}`);
  });
  const g = await startGateway(`services:\n  - name: s\n    url: ${up.url}\n    timeouts: {response: 400ms}\n    routes: [{paths: [/]}]\n`);
  const upload = (path: string) => new Promise<{ status: number; body: string; took: number }>((resolve, reject) => {
    const t0 = Date.now();
    const req = httpRequest(`${g.url}${path}`, { method: 'POST', headers: { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' } }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => { body += c; }).on('end', () => resolve({ status: res.statusCode!, body, took: Date.now() - t0 }));
    });
    req.on('error', reject);
    let i = 0;
    const tick = setInterval(() => {
      if (i++ < 6) req.write('x'.repeat(100));
      else { clearInterval(tick); req.end(); }
    }, 150);
  });
  try {
    // ~1 s of upload with a 400 ms response timeout: answered at once after the last byte.
    const ok = await upload('/up');
    assert.equal(ok.status, 200, ok.body);
    assert.equal(ok.body, 'got 600');
    const stalled = await upload('/stall');
    assert.equal(stalled.status, 504, stalled.body);
    assert.ok(stalled.took >= 900 + 350 && stalled.took < 2500, `504 after ${stalled.took} ms (upload ~1 s + 400 ms)`);
  } finally {
    await g.close();
    await up.close();
  }
});

test('a read timeout below 10 s is precise: a body that stalls is cut within the timeout, not up to a second late; a body that trickles inside it is whole', { timeout: 8000 }, async () => {
  const up = await startUpstream((req: IncomingMessage, res: ServerResponse) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('first');
    if (req.url === '/stall') return; // never another byte
    let n = 0;
    const tick = setInterval(() => {
      if (++n < 5) res.write('.');
      else { clearInterval(tick); res.end('end'); }
    }, 150);
  });
  const g = await startGateway(`services:\n  - name: s\n    url: ${up.url}\n    timeouts: {read: 300ms}\n    routes: [{paths: [/]}]\n`);
  const fetchBody = (path: string) => new Promise<{ body: string; gap: number; complete: boolean }>((resolve) => {
    httpRequest(`${g.url}${path}`, (res) => {
      let body = '';
      let firstAt = 0;
      res.on('data', (c: Buffer) => { body += c.toString(); firstAt ||= Date.now(); });
      res.on('close', () => resolve({ body, gap: Date.now() - firstAt, complete: res.complete }));
      res.on('error', () => {});
    }).on('error', () => {}).end();
  });
  try {
    const ok = await fetchBody('/trickle');
    assert.equal(ok.body, 'first....end');
    assert.ok(ok.complete);
    const cut = await fetchBody('/stall');
    assert.equal(cut.body, 'first');
    assert.equal(cut.complete, false, 'a stalled body is cut, never ended as complete');
    assert.ok(cut.gap >= 280 && cut.gap < 650, `cut ${cut.gap} ms after the last byte (read timeout 300 ms)`);
  } finally {
    await g.close();
    await up.close();
  }
});

test('active health over HTTPS: a reload that changes the service\'s TLS settings closes the probe agent of the old ones (no idle TLS connection or agent kept per reload)', { timeout: 8000 }, async () => {
  const { makeCa } = await import('./certs.js');
  const { createServer: createHttpsServer } = await import('node:https');
  const { writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const ca = makeCa();
  const pem = ca.issue('localhost', { dns: ['localhost'] });
  // (the same CA in a second file, with a comment: other TLS settings, same trust)
  const caCopy = join(ca.dir, 'ca-copy.pem');
  writeFileSync(caCopy, `# rotated bundle\n${ca.cert.toString()}`);
  const open = new Set<import('node:net').Socket>();
  const srv = createHttpsServer({ cert: pem.cert, key: pem.key, keepAliveTimeout: 60_000 }, (_req, res) => res.end('ok'));
  srv.on('secureConnection', (s) => { open.add(s); s.on('close', () => open.delete(s)); });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  const pools = new PoolRegistry();
  const snapFor = (caFile: string) => compile(parseConfigText(`services:\n  - name: s\n    tls: {ca: ${caFile}}\n    upstream:\n      targets: [{url: "https://localhost:${port}"}]\n      healthcheck: {active: {path: /healthz, interval: 100ms, timeout: 80ms, healthy: 1, unhealthy: 2}}\n`, { env: {} }), { pools });
  const authority = new HealthAuthority(() => {});
  let first: ReturnType<typeof snapFor> | undefined;
  let second: ReturnType<typeof snapFor> | undefined;
  try {
    first = snapFor(ca.certFile);
    second = snapFor(caCopy);
    authority.sync(first);
    await until(() => open.size === 1, 3000, 'the first probe connection');
    authority.sync(second);
    await sleep(400); // probes of the new settings run; the old agent's idle connection must be gone
    assert.equal(open.size, 1, `${open.size} TLS connections open at the target after the reload: the old probe agent was kept`);
  } finally {
    await authority.stop();
    first?.dispose();
    second?.dispose();
    await pools.closeAll();
    srv.closeAllConnections();
    await new Promise((r) => srv.close(r));
    ca.cleanup();
  }
});

test('a target taken out by a reload while down, and put back by another while a request of the first config still runs, gets traffic again', { timeout: 10000 }, async () => {
  const held: ServerResponse[] = [];
  const a = await startUpstream((req, res) => (req.url === '/long' ? held.push(res) : res.end('a')));
  let bBroken = true;
  const b = await startUpstream((_req, res) => (bBroken ? res.writeHead(502).end('no') : res.end('b')));
  const svc = (targets: string[]) => `services:\n  - name: s\n    upstream:\n      targets: [${targets.map((u) => `{url: "${u}"}`).join(', ')}]\n` +
    `      healthcheck: {passive: {failures: 1, ejection: 60s}}\n    routes: [{paths: [/]}]\n`;
  const both = svc([a.url, b.url]);
  const g = await startGateway(both);
  try {
    // B fails once: ejected for 60 s (A is up).
    for (let i = 0; i < 4 && b.requests.length === 0; i++) await request(`${g.url}/x`);
    await until(() => g.gw.snapshot.services[0]!.targets[1]!.state.down, 2000, 'B ejected');
    // A long request (a stream, a download) holds the first config's snapshot.
    const long = request(`${g.url}/long`);
    await until(() => held.length === 1, 2000, 'the long request at A');
    g.gw.reload(parseConfigText(`listen: 127.0.0.1:0\naccess_log: {enabled: false}\n${svc([a.url])}`)); // B taken out
    bBroken = false; // (repaired meanwhile)
    g.gw.reload(parseConfigText(`listen: 127.0.0.1:0\naccess_log: {enabled: false}\n${both}`)); // and put back
    const before = b.requests.length;
    for (let i = 0; i < 10; i++) assert.equal((await request(`${g.url}/y`)).status, 200);
    assert.ok(b.requests.length - before >= 4, `B got ${b.requests.length - before} of 10 requests after it was put back: its old 'down' stuck`);
    held.pop()!.end('long');
    assert.equal((await long).status, 200);
  } finally {
    for (const r of held) r.end();
    await g.close();
    await a.close();
    await b.close();
  }
});

test('raising max_concurrent by reload (or dropping the bulkhead) admits the requests already queued at once, not when a running one ends or their wait expires', { timeout: 8000 }, async () => {
  const held: ServerResponse[] = [];
  const up = await startUpstream((req, res) => (req.url === '/long' ? held.push(res) : res.end('ok')));
  const cfg = (cb: string) => `listen: 127.0.0.1:0\naccess_log: {enabled: false}\nservices:\n  - name: s\n    url: ${up.url}\n${cb}    routes: [{paths: [/]}]\n`;
  try {
    for (const after of ['    circuit_breaker: {max_concurrent: 4, max_pending: 10, max_wait: 3s}\n', '']) {
      const g = await startGateway(cfg('    circuit_breaker: {max_concurrent: 1, max_pending: 10, max_wait: 3s}\n'));
      try {
        const long = request(`${g.url}/long`); // holds the only slot (a stream, a slow download)
        await until(() => held.length === 1, 2000, 'the long request at the upstream');
        const queued = request(`${g.url}/q`);
        await until(() => g.gw.snapshot.services[0]!.state.queue.length === 1, 2000, 'one request queued');
        g.gw.reload(parseConfigText(cfg(after)));
        const t0 = Date.now();
        const r = await queued;
        assert.equal(r.status, 200, r.body);
        assert.ok(Date.now() - t0 < 1000, `the queued request waited ${Date.now() - t0} ms after the limit was raised`);
        held.pop()!.end('long');
        assert.equal((await long).status, 200);
      } finally {
        for (const r of held.splice(0)) r.end();
        await g.close();
      }
    }
  } finally {
    await up.close();
  }
});

test('active health of an HTTP/2 service (h2c, grpcs) probes in HTTP/2: a target that speaks only HTTP/2 is not taken down by probes it cannot read', { timeout: 10000 }, async () => {
  const { createServer: createH2Server, createSecureServer } = await import('node:http2');
  const { makeCa } = await import('./certs.js');
  const ca = makeCa();
  const pem = ca.issue('h2.test', { dns: ['h2.test'] });
  const handler = (req: import('node:http2').Http2ServerRequest, res: import('node:http2').Http2ServerResponse) => res.end(req.url === '/healthz' ? 'healthy' : 'ok');
  // (neither accepts HTTP/1.1, as gRPC servers and many h2c services do not)
  const plain = createH2Server(handler);
  const secure = createSecureServer({ cert: pem.cert, key: pem.key, allowHTTP1: false }, handler);
  for (const s of [plain, secure]) await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s: typeof plain | typeof secure) => (s.address() as { port: number }).port;
  const hc = `      healthcheck: {active: {path: /healthz, interval: 100ms, timeout: 80ms, healthy: 1, unhealthy: 2}}\n`;
  const g = await startGateway(`services:\n` +
    `  - name: c\n    protocol: h2c\n    upstream:\n      targets: [{url: "http://127.0.0.1:${port(plain)}"}]\n${hc}    routes: [{paths: [/c]}]\n` +
    `  - name: s\n    protocol: grpcs\n    tls: {ca: ${ca.certFile}, server_name: h2.test}\n    upstream:\n      targets: [{url: "https://127.0.0.1:${port(secure)}"}]\n${hc}    routes: [{paths: [/s]}]\n`);
  try {
    await sleep(600); // several probes
    const health = (g.gw as unknown as { health: HealthAuthority }).health.report();
    assert.deepEqual(Object.values(health.targets).map((t) => t.failing_probes), [false, false], JSON.stringify(health));
    assert.equal((await request(`${g.url}/c`)).status, 200);
  } finally {
    await g.close();
    for (const s of [plain, secure]) await new Promise((r) => s.close(r));
    ca.cleanup();
  }
});

test('a target a reload removed is left no idle connection: neither the request pool\'s nor the active probes\' (which lived on for the target\'s keep-alive hint, up to 10 minutes)', { timeout: 8000 }, async () => {
  const { createServer } = await import('node:http');
  type Sock = import('node:net').Socket;
  const open = new Map<Sock, string>();
  const start = async (name: string) => {
    // (Keep-Alive: timeout=60 in every answer, as node and many servers send)
    const s = createServer({ keepAliveTimeout: 60_000 }, (_q, r) => r.end(name));
    s.on('connection', (c: Sock) => { open.set(c, name); c.on('close', () => open.delete(c)); });
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    return { s, url: `http://127.0.0.1:${(s.address() as { port: number }).port}` };
  };
  const a = await start('a');
  const b = await start('b');
  const cfg = (urls: string[]) => `services:\n  - name: s\n    upstream:\n      targets: [${urls.map((u) => `{url: "${u}"}`).join(', ')}]\n` +
    `      healthcheck: {active: {path: /h, interval: 100ms, timeout: 80ms}}\n    routes: [{paths: [/]}]\n`;
  const g = await startGateway(cfg([a.url, b.url]));
  const at = (name: string) => [...open.values()].filter((n) => n === name).length;
  try {
    for (let i = 0; i < 4; i++) assert.equal((await request(`${g.url}/x`)).status, 200);
    await until(() => at('b') === 2, 2000, 'a request connection and a probe connection at B');
    g.gw.reload(parseConfigText(`listen: 127.0.0.1:0\naccess_log: {enabled: false}\n${cfg([a.url])}`));
    await until(() => at('b') === 0, 1500, 'the connections to B closed').catch((err: Error) => assert.fail(`${err.message}: ${at('b')} connection(s) to the removed target left open`));
    assert.equal((await request(`${g.url}/x`)).body, 'a');
  } finally {
    await g.close();
    for (const x of [a, b]) { x.s.closeAllConnections(); await new Promise((r) => x.s.close(r)); }
  }
});

test('active health: a health endpoint whose answer breaks off (short of its Content-Length, or mid-chunk) fails the probe; a big body (1 MiB) does not', { timeout: 8000 }, async () => {
  const mode: Record<string, 'ok' | 'short' | 'chunked' | 'big'> = {};
  const mk = async (name: string) => {
    const u = await startUpstream((req, res) => {
      if (req.url !== '/healthz') return void res.end(name);
      switch (mode[name]) {
        case 'short': // 10 of the 100 bytes announced, then the connection is cut
          res.writeHead(200, { 'content-length': '100' });
          res.write('0123456789', () => res.socket?.destroy());
          return;
        case 'chunked': // one chunk, then the connection is cut before the last chunk
          res.writeHead(200);
          res.write('0123456789', () => res.socket?.destroy());
          return;
        case 'big':
          return void res.writeHead(200, { 'content-length': String(1 << 20) }).end(Buffer.alloc(1 << 20, 0x61));
        default:
          return void res.writeHead(200).end('ok');
      }
    });
    mode[name] = 'ok';
    return u;
  };
  const ups = [await mk('a'), await mk('b'), await mk('c')];
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [${ups.map((u) => `{url: ${u.url}}`).join(', ')}]\n` +
    `      healthcheck:\n        active: {path: /healthz, interval: 200ms, timeout: 180ms, healthy: 1, unhealthy: 2}\n    routes: [{paths: [/]}]\n`);
  const report = () => g.gw.health!.report().targets;
  try {
    mode.a = 'short';
    mode.b = 'chunked';
    mode.c = 'big';
    await until(() => report()[`s|${ups[0]!.url}`]?.down === true && report()[`s|${ups[1]!.url}`]?.down === true, 4000,
      `both targets whose health answers break off to be down: ${JSON.stringify(report())}`);
    await sleep(600); // (several more probes)
    assert.equal(report()[`s|${ups[2]!.url}`]?.down, false, 'a whole 1 MiB health answer is healthy');
    for (let i = 0; i < 3; i++) assert.equal((await request(`${g.url}/x`)).body, 'c');
  } finally {
    await g.close();
    await Promise.all(ups.map((u) => u.close()));
  }
});

test('a client that stalls its upload (before its first body byte or after) is no slow upstream: no 504, nothing charged to the target or the circuit, and the request goes on when the client does; an upstream that stops reading the body still gets its 504', { timeout: 10000 }, async () => {
  const up = await startUpstream((_req, res, body) => res.end(`got ${body.length}`));
  // (reads nothing: the gateway's writes to it back up)
  const deafSockets: import('node:net').Socket[] = [];
  const deaf = createNetServer((s) => { deafSockets.push(s); s.pause(); s.on('error', () => {}); });
  await new Promise<void>((r) => deaf.listen(0, '127.0.0.1', r));
  const deafUrl = `http://127.0.0.1:${(deaf.address() as { port: number }).port}`;
  const g = await startGateway(`services:\n` +
    `  - name: s\n    timeouts: {response: 150ms}\n` +
    `    upstream: {targets: [{url: ${up.url}}], healthcheck: {passive: {failures: 5}}}\n` +
    `    circuit_breaker: {min_requests: 1, failure_ratio: 0.5}\n    routes: [{paths: [/s]}]\n` +
    `  - name: d\n    url: ${deafUrl}\n    timeouts: {response: 300ms}\n    routes: [{paths: [/d]}]\n`);
  try {
    const s = connect(g.port, '127.0.0.1');
    let got = '';
    s.on('data', (d: Buffer) => { got += d.toString('latin1'); });
    s.on('error', () => {});
    await new Promise((r) => s.on('connect', r));
    s.write('POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n');
    await sleep(350); // more than 2 response timeouts with no byte of the body yet
    assert.equal(got, '', 'answered while the client had sent no byte of its body');
    s.write('x'.repeat(10));
    await sleep(350); // and again mid-body
    assert.equal(got, '', 'answered while the client still uploads');
    s.write('y'.repeat(990));
    await until(() => got.includes('got 1000'), 3000, 'the answer once the body is whole');
    assert.match(got, /^HTTP\/1\.1 200 /);
    s.destroy();
    const health = g.gw.health!.report();
    assert.equal(health.targets[`s|${up.url}`]?.failures, 0, JSON.stringify(health));
    assert.equal(health.circuits.s, 'closed');

    // The upstream takes nothing: the body backs up (undici pauses it) and the timeout is its.
    const t0 = Date.now();
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(`${g.url}/d`, { method: 'PUT', headers: { 'transfer-encoding': 'chunked' } }, (res) => { res.resume(); resolve(res.statusCode!); });
      req.on('error', reject);
      const chunk = Buffer.alloc(256 * 1024, 0x61);
      const pump = () => { while (req.write(chunk)); };
      req.on('drain', pump);
      pump();
    });
    assert.equal(status, 504);
    assert.ok(Date.now() - t0 < 4000, `504 after ${Date.now() - t0} ms`);
  } finally {
    await g.close();
    await up.close();
    for (const s of deafSockets) s.destroy(); // (paused, they would never see the gateway close them)
    await new Promise((r) => { deaf.close(r); });
  }
});

test('active health: a health endpoint that sends an unrequested 100 Continue before its answer is judged by that answer (RFC 9110 §15.2: a client reads past a 1xx it did not expect), not taken down', { timeout: 8000 }, async () => {
  const final: Record<string, string> = { a: '200 OK', b: '503 Service Unavailable' };
  const mk = (name: string) => startRawOrigin((data) => {
    const text = data.toString('latin1');
    if (!text.includes('\r\n\r\n')) return null;
    if (!text.startsWith('GET /healthz ')) return `HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n${name}`;
    return `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 ${final[name]}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok`;
  });
  const a = await mk('a');
  const b = await mk('b');
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${a.url}}, {url: ${b.url}}]\n` +
    `      healthcheck:\n        active: {path: /healthz, interval: 200ms, timeout: 180ms, healthy: 1, unhealthy: 2}\n    routes: [{paths: [/]}]\n`);
  const report = () => g.gw.health!.report().targets;
  try {
    await until(() => report()[`s|${b.url}`]?.down === true, 4000, `the target whose health answer is a 503 to be down: ${JSON.stringify(report())}`);
    await sleep(400); // (more probes)
    assert.equal(report()[`s|${a.url}`]?.down, false, `a 100 Continue then a 200 is healthy: ${JSON.stringify(report())}`);
    for (let i = 0; i < 3; i++) assert.equal((await request(`${g.url}/x`)).body, 'a');
  } finally {
    await g.close();
    await a.close();
    await b.close();
  }
});

test('timeouts.client_body_min_rate: a body trickled a byte at a time within the idle timeout (slow POST) gets a 408 and its upstream request is aborted, nothing charged to the target; an upload at a pace above the minimum goes through', { timeout: 15000 }, async () => {
  let aborted = 0;
  const up = await startUpstream((_req, res, body) => res.end(`got ${body.length}`));
  // (the upstream sees the request come and go: its connection closed before the body ended)
  up.server.on('request', (req: IncomingMessage) => req.once('close', () => { if (!req.complete) aborted++; }));
  const g = await startGateway(`timeouts: {client_body: 400ms, client_body_min_rate: 1kb}\nservices:\n` +
    `  - name: s\n    upstream: {targets: [{url: ${up.url}}], healthcheck: {passive: {failures: 1}}}\n` +
    `    circuit_breaker: {min_requests: 1, failure_ratio: 0.5}\n    routes: [{paths: [/]}]\n`);
  try {
    const s = connect(g.port, '127.0.0.1');
    let got = '';
    let closed = false;
    s.on('data', (d: Buffer) => { got += d.toString('latin1'); });
    s.on('close', () => { closed = true; });
    s.on('error', () => {});
    await new Promise((r) => s.on('connect', r));
    const t0 = Date.now();
    s.write('POST /slow HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n');
    // a byte every 100 ms: never idle for client_body, 10 bytes/s
    const iv = setInterval(() => { if (!s.destroyed) s.write('x'); }, 100);
    try {
      await until(() => closed, 4000, 'the trickling connection to be answered and closed');
    } finally {
      clearInterval(iv);
    }
    assert.match(got, /^HTTP\/1\.1 408 /, got);
    assert.match(got, /application\/problem\+json/);
    assert.match(got, /bytes\/s/);
    assert.ok(Date.now() - t0 < 3000, `answered after ${Date.now() - t0} ms`);
    await until(() => aborted === 1, 2000, 'the upstream request to be aborted');
    const health = g.gw.health!.report();
    assert.equal(health.targets[`s|${up.url}`]?.failures, 0, JSON.stringify(health));
    assert.equal(health.circuits.s, 'closed');

    // 300 bytes every 100 ms (3 kB/s) for 1.5 s: slow, yet above the minimum
    const ok = await new Promise<string>((resolve, reject) => {
      const req = httpRequest(`${g.url}/fast`, { method: 'POST', headers: { 'content-length': 4500 } }, (res) => {
        let b = '';
        res.on('data', (d: Buffer) => (b += d.toString()));
        res.on('end', () => resolve(`${res.statusCode} ${b}`));
      });
      req.on('error', reject);
      let n = 0;
      const iv2 = setInterval(() => {
        req.write('y'.repeat(300));
        if (++n === 15) {
          clearInterval(iv2);
          req.end();
        }
      }, 100);
    });
    assert.equal(ok, '200 got 4500');
  } finally {
    await g.close();
    await up.close();
  }
});

test('a request whose body came whole and waits unread longer than timeouts.client_body (in a bulkhead queue) is served, not cut without an answer as an idle client, nor taken for a slow one (client_body_min_rate)', { timeout: 10000 }, async () => {
  const h = await holdingUpstream();
  const g = await startGateway(`timeouts: {client_body: 150ms, client_body_min_rate: 1kb}\nservices:\n` +
    `  - name: q\n    url: ${h.up.url}\n    circuit_breaker: {max_concurrent: 1, max_pending: 5, max_wait: 5s}\n    routes: [{paths: [/q]}]\n`);
  try {
    const a = request(`${g.url}/q/a`);
    await until(() => h.held.length === 1, 2000, 'A at the upstream');
    const b = request(`${g.url}/q/b`, { method: 'POST', headers: { 'content-length': '1000' }, body: 'z'.repeat(1000) });
    await sleep(500); // more than 3 periods of client_body
    h.openUp();
    assert.equal((await a).status, 200);
    const rb = await b;
    assert.equal(rb.status, 200, rb.body);
  } finally {
    await g.close();
    await h.up.close();
  }
});
