/**
 * Resilience: passive and active health, retries (what, where, how many: retry_on, the
 * non-idempotent rule, the budget, the deadline), the circuit breaker and the bulkhead, and
 * isolation of a slow service from a fast one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, createServer, request as httpRequest, type ClientRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { createHash } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { WebSocket, WebSocketServer } from 'ws';
import { connect as h2connect, constants as h2constants } from 'node:http2';
import { countRequests, freePort, sleep, startGateway, startRawOrigin, startUpstream, request, type SimpleResponse, type TestUpstream } from './helpers.js';

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** One GET over a keep-alive agent: status and body, or status 0 and the error for a transport failure. */
function get(url: string, agent: Agent): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = httpRequest(url, { agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() }));
      res.on('error', (e) => resolve({ status: 0, body: String(e) }));
    });
    req.on('error', (e) => resolve({ status: 0, body: String(e) }));
    req.end();
  });
}

function assertProblem(r: SimpleResponse, status: number, code: string): Record<string, unknown> {
  assert.equal(r.status, status, r.body);
  assert.match(String(r.headers['content-type']), /^application\/problem\+json/);
  const p = JSON.parse(r.body) as Record<string, unknown>;
  assert.equal(p.type, `urn:turnpike:problem:${code}`);
  assert.equal(p.status, status);
  return p;
}

/** Answers with its name after 2 ms, so that a kill finds requests in flight (they see a reset). */
const nameHandler = (name: string) => (req: IncomingMessage, res: ServerResponse) => {
  if (req.url === '/healthz') return void res.writeHead(200).end();
  setTimeout(() => res.end(name), 2);
};

/**
 * Three targets under 4 parallel request loops; one is killed (listener closed, connections
 * cut) at ~0.5 s; the load runs 1.3 s more (to ~1.8 s). Passive checks eject the dead target
 * for 500 ms, readmit it (~+0.5 s), eject it again for 1 s (doubled, = max_ejection), which
 * outlasts the load. Returns the failures the client saw (`at`: ms after the kill).
 */
async function killUnderLoad(retries: number, restart: boolean) {
  const CONCURRENCY = 4;
  const ups = await Promise.all(['a', 'b', 'c'].map((n) => startUpstream(nameHandler(n))));
  const victim = ups[2]!;
  const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  const g = await startGateway(
    `services:\n  - name: s\n    upstream:\n      targets: [${ups.map((u) => `{url: ${u.url}}`).join(', ')}]\n` +
    `      healthcheck:\n        passive: {failures: 3, ejection: 500ms, max_ejection: 1s}\n` +
    `    retries: ${retries}\n    retry_on: [connect-error, reset, 502, 503]\n    routes: [{paths: [/]}]\n`,
  );
  let revived: Server | null = null;
  const revivedSeen: string[] = [];
  try {
    const failures: { at: number; status: number; body: string }[] = [];
    let total = 0;
    let killedAt = 0;
    let stop = false;
    const loops = Array.from({ length: CONCURRENCY }, async () => {
      while (!stop) {
        const r = await get(`${g.url}/x`, agent);
        total++;
        if (r.status !== 200) failures.push({ at: killedAt ? Date.now() - killedAt : -1, status: r.status, body: r.body.slice(0, 160) });
      }
    });
    await sleep(500);
    // (a loaded machine serves fewer in 500 ms: the kill waits for the victim's share, up to 5 s more)
    for (let i = 0; i < 100 && victim.requests.length <= 20; i++) await sleep(50);
    const victimBefore = victim.requests.length;
    victim.server.close();
    victim.server.closeAllConnections();
    killedAt = Date.now();
    await sleep(1300);
    stop = true;
    await Promise.all(loops);
    const counts = ups.map((u) => u.requests.length);
    console.log(`kill under load (retries ${retries}): ${total} requests, ${failures.length} failed, per target ${counts.join('/')} (victim ${victimBefore} before the kill)`);
    for (const f of failures) console.log(`  failure +${f.at} ms: ${f.status} ${f.body}`);
    assert.ok(victimBefore > 20, 'the victim served traffic before the kill');

    if (restart) {
      // Bring it back on the same port: once its ejection runs out it gets traffic again.
      revived = createServer((req, res) => {
        revivedSeen.push(req.url!);
        res.end('c');
      });
      await new Promise<void>((r) => revived!.listen(victim.port, '127.0.0.1', r));
      const restartedAt = Date.now();
      const after: number[] = [];
      while (revivedSeen.length < 3 && Date.now() - restartedAt < 1800) {
        after.push((await get(`${g.url}/x`, agent)).status);
        await sleep(10);
      }
      console.log(`  restarted target got traffic after ${Date.now() - restartedAt} ms (${after.length} requests)`);
      assert.ok(revivedSeen.length >= 3, 'the restarted target gets traffic again once its ejection expired');
      assert.ok(after.every((s) => s === 200), `requests after the restart: ${after.filter((s) => s !== 200)}`);
    }
    return { failures, total, concurrency: CONCURRENCY };
  } finally {
    agent.destroy();
    await g.close();
    await Promise.all(ups.map((u) => u.close()));
    if (revived) {
      revived.closeAllConnections();
      await new Promise((r) => revived!.close(r));
    }
  }
}

test('ACCEPTANCE: a target killed under load costs no failed GET with retries, and comes back after its ejection', { timeout: 5000 }, async () => {
  const { failures, total } = await killUnderLoad(2, true);
  assert.ok(total > 200, `steady load (${total} requests)`);
  assert.equal(failures.length, 0, `failed GETs: ${JSON.stringify(failures.slice(0, 5))}`);
});

test('ACCEPTANCE: without retries a killed target costs a bounded number of errors', { timeout: 5000 }, async () => {
  const { failures, concurrency } = await killUnderLoad(0, false);
  for (const f of failures) assert.ok(f.at >= 0 && (f.status === 502 || f.status === 503), `failure ${JSON.stringify(f)}`);
  // Until the first ejection ends: the passive threshold plus what was already on its way to the dead target.
  const first = failures.filter((f) => f.at < 500).length;
  assert.ok(first >= 3, `${first} errors before the ejection: the threshold is 3 consecutive failures`);
  assert.ok(first <= 3 + concurrency, `${first} errors before the first ejection ended > passive threshold 3 + concurrency ${concurrency}`);
  // Passive health learns about a dead target only from live traffic: when the ejection runs
  // out, it is readmitted and costs one more round before it is ejected again (for 1 s, past the load).
  assert.ok(failures.length <= 2 * (3 + concurrency), `${failures.length} errors > 2 rounds of (3 + ${concurrency})`);
});

test('circuit breaker: requests refused for want of a healthy target are not counted as the service failing — once a probe passes, traffic flows (no circuit-open for open_for)', { timeout: 8000 }, async () => {
  const health = { status: 200 };
  const up = await startUpstream((req, res) => {
    if (req.url === '/healthz') return void res.writeHead(health.status).end();
    res.end('ok');
  });
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${up.url}}]\n      healthcheck:\n        active: {path: /healthz, interval: 100ms, timeout: 100ms, healthy: 1, unhealthy: 1, statuses: [200]}\n    circuit_breaker: {failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 30s}\n    routes: [{paths: [/]}]\n`);
  const down = () => g.gw.health!.report().targets[`s|${up.url}`]?.down;
  try {
    assert.equal((await request(`${g.url}/x`)).status, 200);
    health.status = 503;
    await until(() => down() === true, 2000, 'the target to be marked down');
    for (let i = 0; i < 10; i++) assertProblem(await request(`${g.url}/x`), 503, 'no-healthy-target');
    health.status = 200;
    await until(() => down() === false, 2000, 'the target to come back');
    const r = await request(`${g.url}/x`);
    assert.equal(r.status, 200, `${r.status} ${r.body}`);
  } finally {
    await g.close();
    await up.close();
  }
});

test('active health: a target failing its probe gets no traffic, returns when it passes; all down -> 503 no-healthy-target', { timeout: 5000 }, async () => {
  const health = { a: 200, b: 200 };
  const mk = (n: 'a' | 'b') => startUpstream((req, res) => {
    if (req.url === '/healthz') return void res.writeHead(health[n]).end();
    res.end(n);
  });
  const a = await mk('a');
  const b = await mk('b');
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${a.url}}, {url: ${b.url}}]\n      healthcheck:\n        active: {path: /healthz, interval: 100ms, timeout: 100ms, healthy: 2, unhealthy: 2, statuses: [200]}\n    routes: [{paths: [/]}]\n`);
  const traffic = (u: TestUpstream) => u.requests.filter((r) => r.url !== '/healthz').length;
  const down = (u: TestUpstream) => g.gw.health!.report().targets[`s|${u.url}`]?.down;
  try {
    for (let i = 0; i < 4; i++) assert.equal((await request(`${g.url}/x`)).status, 200);
    assert.equal(traffic(b), 2);
    health.b = 503;
    const failedAt = Date.now();
    await until(() => down(b) === true, 2000, 'b to be marked down');
    const tookDown = Date.now() - failedAt;
    assert.ok(tookDown >= 80, `two failing probes 100 ms apart take time (${tookDown} ms)`);
    const bBefore = traffic(b);
    for (let i = 0; i < 10; i++) assert.equal((await request(`${g.url}/x`)).body, 'a');
    assert.equal(traffic(b), bBefore, 'no traffic to the target failing its probes');

    health.b = 200;
    await until(() => down(b) === false, 2000, 'b to come back');
    const back: string[] = [];
    for (let i = 0; i < 10; i++) back.push((await request(`${g.url}/x`)).body);
    assert.equal(back.filter((x) => x === 'b').length, 5);

    health.a = health.b = 503;
    await until(() => down(a) === true && down(b) === true, 2000, 'both targets down');
    const ta = traffic(a);
    const tb = traffic(b);
    const r = await request(`${g.url}/x`);
    assertProblem(r, 503, 'no-healthy-target');
    assert.equal(traffic(a) + traffic(b), ta + tb, 'no upstream was contacted');
  } finally {
    await g.close();
    await a.close();
    await b.close();
  }
});

test('no-healthy-target says when to retry: Retry-After = the active probe interval (rounded up), for HTTP and for a WebSocket handshake', { timeout: 5000 }, async () => {
  const dead = await freePort(); // nothing listens: the first probe (at once) takes the target down
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: http://127.0.0.1:${dead}}]\n      healthcheck:\n        active: {path: /healthz, interval: 2500ms, timeout: 100ms, unhealthy: 1}\n    routes: [{paths: [/], websocket: true}]\n`);
  try {
    await until(() => g.gw.health!.report().targets[`s|http://127.0.0.1:${dead}`]?.down === true, 2000, 'the target to be down');
    const r = await request(`${g.url}/x`);
    assertProblem(r, 503, 'no-healthy-target');
    assert.equal(r.headers['retry-after'], '3', 'the next probe is at most 2.5 s away');
    const ws = await new Promise<string>((resolve, reject) => {
      const s = connect(g.port, '127.0.0.1');
      let raw = '';
      s.on('data', (d) => { raw += d.toString('latin1'); });
      s.on('close', () => resolve(raw));
      s.on('error', reject);
      s.write('GET /chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
    });
    assert.match(ws, /^HTTP\/1\.1 503 /);
    assert.match(ws, /urn:turnpike:problem:no-healthy-target/);
    assert.match(ws, /\r\nretry-after: 3\r\n/i);
  } finally {
    await g.close();
  }
});

/** A raw origin that reads each whole request (head + Content-Length body), then drops the connection unanswered. */
function resetAfterRequest() {
  return startRawOrigin((data, socket) => {
    const text = data.toString('latin1');
    const end = text.indexOf('\r\n\r\n');
    if (end === -1) return null;
    const cl = /\r\ncontent-length:\s*(\d+)/i.exec(text.slice(0, end));
    if (data.length >= end + 4 + (cl ? Number(cl[1]) : 0)) socket.destroy();
    return null;
  });
}

test('ACCEPTANCE: a POST whose connection is reset after the origin read it is never replayed (502, exactly one POST at the origin)', { timeout: 5000 }, async () => {
  const origin = await resetAfterRequest();
  const good = await startUpstream((req, res) => res.end(`good ${req.method}`));
  const base = `    retries: 3\n    retry_on: [connect-error, reset, 502]\n`;
  const strict = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${origin.url}}]\n${base}    routes: [{paths: [/]}]\n`);
  const lenient = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${origin.url}}, {url: ${good.url}}]\n${base}    routes: [{paths: [/], retry_non_idempotent: true}]\n`);
  const posts = () => countRequests(origin.received());
  try {
    const r = await request(`${strict.url}/orders`, { method: 'POST', body: '{"amount":100}', headers: { 'content-type': 'application/json' } });
    assertProblem(r, 502, 'bad-gateway');
    assert.equal(posts(), 1, 'the origin saw exactly one POST');
    assert.match(origin.received(), /\{"amount":100\}$/, 'it read the whole body before dropping the connection');

    // A bodiless POST is not replayed either on a route that does not allow it.
    assertProblem(await request(`${strict.url}/orders`, { method: 'POST' }), 502, 'bad-gateway');
    assert.equal(posts(), 2);

    // Control: a GET on the same service is retried (1 + 3 attempts, all on the only target).
    assertProblem(await request(`${strict.url}/orders`), 502, 'bad-gateway');
    assert.equal(posts(), 6, 'GET was tried 4 times');

    // retry_non_idempotent: a bodiless POST goes on to the next target.
    const before = posts();
    const ok = await request(`${lenient.url}/orders`, { method: 'POST' });
    assert.equal(ok.status, 200, ok.body);
    assert.equal(ok.body, 'good POST');
    assert.equal(posts(), before + 1, 'the first attempt went to the resetting origin');
    assert.equal(good.requests.length, 1);

    // retry_non_idempotent with a small body: the body was read first, so the retry resends it whole.
    const p0 = posts();
    const g0 = good.requests.length;
    for (let i = 0; i < 4; i++) {
      const r2 = await request(`${lenient.url}/orders`, { method: 'POST', body: `{"n":${i}}`, headers: { 'content-type': 'application/json' } });
      assert.equal(r2.status, 200, r2.body);
    }
    assert.equal(good.requests.length - g0, 4);
    assert.deepEqual(good.requests.slice(g0).map((q) => q.body.toString()), ['{"n":0}', '{"n":1}', '{"n":2}', '{"n":3}']);
    assert.ok(posts() - p0 >= 1, 'some first attempts went to the resetting origin');
  } finally {
    await strict.close();
    await lenient.close();
    await origin.close();
    await good.close();
  }
});

test('a connection lost with EHOSTUNREACH after the request went out (the route to the host gone mid-exchange) is a lost connection, not a connect error: a POST is never sent again (502, one POST in all), a GET is retried', { timeout: 8000 }, async () => {
  // The gateway's own upstream sockets (this process), as undici writes a request on them.
  const sockets = new Set<Socket>();
  const onSend = (msg: unknown) => { const s = (msg as { socket?: Socket }).socket; if (s) sockets.add(s); };
  subscribe('undici:client:sendHeaders', onSend);
  // Once it read a whole request, the origin has the kernel fail the gateway's end of that
  // connection as an ICMP host unreachable does (the socket errors with EHOSTUNREACH).
  const origin = await startRawOrigin((data, socket) => {
    const text = data.toString('latin1');
    const end = text.indexOf('\r\n\r\n');
    if (end === -1) return null;
    const cl = /\r\ncontent-length:\s*(\d+)/i.exec(text.slice(0, end));
    if (data.length < end + 4 + (cl ? Number(cl[1]) : 0)) return null;
    for (const s of sockets) {
      if (s.localPort === socket.remotePort && !s.destroyed) s.destroy(Object.assign(new Error('read EHOSTUNREACH'), { code: 'EHOSTUNREACH', errno: -113, syscall: 'read' }));
    }
    return null;
  });
  const good = await startUpstream((req, res) => res.end(`good ${req.method}`));
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${origin.url}}, {url: ${good.url}}]\n      healthcheck: {passive: {failures: 1000}}\n    retries: 2\n    retry_on: [connect-error, reset]\n    routes: [{paths: [/]}]\n`);
  try {
    // Round-robin: one of two requests goes to the origin first. A bodiless POST (nothing of a
    // body to tell whether it went out) and one with a body.
    for (const body of [undefined, '{"amount":100}']) {
      const seen = countRequests(origin.received());
      const sent = good.requests.length;
      const posts: number[] = [];
      for (let i = 0; i < 2; i++) {
        const r = await request(`${g.url}/orders`, { method: 'POST', ...(body !== undefined ? { body, headers: { 'content-type': 'application/json' } } : {}) });
        posts.push(r.status);
        if (r.status !== 200) assertProblem(r, 502, 'bad-gateway');
      }
      assert.deepEqual(posts.sort(), [200, 502], `body ${body}`);
      assert.equal(countRequests(origin.received()) - seen, 1, 'the origin read one POST');
      assert.equal(good.requests.length - sent, 1, 'the POST the origin read was not sent again');
    }
    // An idempotent request on a connection lost so is retried (retry_on reset).
    for (let i = 0; i < 2; i++) {
      const r = await request(`${g.url}/orders`);
      assert.equal(r.status, 200, r.body);
      assert.equal(r.body, 'good GET');
    }
    assert.equal(countRequests(origin.received()), 3);
    assert.equal(good.requests.length, 4);
  } finally {
    unsubscribe('undici:client:sendHeaders', onSend);
    await g.close();
    await origin.close();
    await good.close();
  }
});

test('EHOSTUNREACH after the request went out is a lost connection for a WebSocket handshake and a composition step too, as for a proxied request: the handshake is not sent again to another target (502), the step says the connection was lost', { timeout: 8000 }, async () => {
  // Every client socket of this process (the gateway's undici and ws connections among them).
  const sockets = new Set<Socket>();
  const onSocket = (msg: unknown) => { const s = (msg as { socket?: Socket }).socket; if (s) sockets.add(s); };
  subscribe('net.client.socket', onSocket);
  // Once it read a request head, the origin has the gateway's end of that connection fail as an
  // ICMP host unreachable does.
  const origin = await startRawOrigin((data, socket) => {
    if (!data.includes('\r\n\r\n')) return null;
    for (const s of sockets) {
      if (s.localPort === socket.remotePort && !s.destroyed) s.destroy(Object.assign(new Error('read EHOSTUNREACH'), { code: 'EHOSTUNREACH', errno: -113, syscall: 'read' }));
    }
    return null;
  });
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  let handshakes = 0;
  wss.on('connection', () => handshakes++);
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const good = `http://127.0.0.1:${(wss.address() as { port: number }).port}`;
  const g = await startGateway(`services:\n` +
    `  - name: ws\n    upstream:\n      targets: [{url: ${origin.url}}, {url: ${good}}]\n    retries: 2\n    retry_on: [connect-error]\n    routes: [{paths: [/ws], websocket: true}]\n` +
    `  - name: api\n    url: ${origin.url}\n` +
    `routes:\n  - name: composed\n    paths: [/composed]\n    compose:\n      steps:\n        - {name: a, service: api, path: /a}\n`);
  try {
    // round-robin: the first handshake is offered the origin first
    const status = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${g.port}/ws`, { handshakeTimeout: 3000 });
      ws.once('open', () => { ws.terminate(); resolve(101); });
      ws.once('unexpected-response', (_q, res) => { res.resume(); resolve(res.statusCode!); });
      ws.once('error', () => resolve(0));
    });
    assert.equal(status, 502, 'the handshake the origin read was sent again to another target');
    assert.equal(countRequests(origin.received()), 1);
    assert.equal(handshakes, 0);

    const r = await request(`${g.url}/composed`);
    assert.equal(r.status, 502, r.body);
    assert.match(r.body, /connection lost \(EHOSTUNREACH\)/);
  } finally {
    unsubscribe('net.client.socket', onSocket);
    await g.close();
    await origin.close();
    await new Promise((r) => wss.close(r));
  }
});

test('a PUT body up to 64 KiB is resent on a retry; a chunked or larger body is never resent', { timeout: 5000 }, async () => {
  const origin = await resetAfterRequest();
  const good = await startUpstream((req, res, body) => res.end(`good ${req.method} ${body.length}`));
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${origin.url}}, {url: ${good.url}}]\n    retries: 1\n    retry_on: [reset]\n    routes: [{paths: [/]}]\n`);
  const seenAtOrigin = () => countRequests(origin.received());
  try {
    const small = 'a'.repeat(60_000);
    for (let i = 0; i < 2; i++) {
      const r = await request(`${g.url}/doc`, { method: 'PUT', body: small });
      assert.equal(r.status, 200, r.body);
      assert.equal(r.body, 'good PUT 60000');
    }
    assert.equal(seenAtOrigin(), 1, 'one of the two went to the resetting origin first');
    // Over 64 KiB: streamed, so never resent; the attempt that hits the resetting origin fails.
    const big = 'b'.repeat(100_000);
    const codes: number[] = [];
    for (let i = 0; i < 2; i++) codes.push((await request(`${g.url}/doc`, { method: 'PUT', body: big })).status);
    assert.deepEqual(codes.sort(), [200, 502]);
    // Chunked (no Content-Length): streamed too.
    const chunkedCodes: number[] = [];
    for (let i = 0; i < 2; i++) {
      chunkedCodes.push((await request(`${g.url}/doc`, { method: 'PUT', body: 'c', headers: { 'transfer-encoding': 'chunked' } })).status);
    }
    assert.deepEqual(chunkedCodes.sort(), [200, 502]);
    assert.equal(seenAtOrigin(), 3);
  } finally {
    await g.close();
    await origin.close();
    await good.close();
  }
});

test('a request whose connection was refused is retried whatever its method: nothing was sent (a streamed body goes whole to the next target)', { timeout: 8000 }, async () => {
  const dead = await freePort();
  const good = await startUpstream((req, res, body) => res.end(`good ${req.method} ${body.length} ${createHash('sha256').update(body).digest('hex').slice(0, 12)}`));
  // Round-robin over a closed port and a live origin: every other first attempt is refused.
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: http://127.0.0.1:${dead}}, {url: ${good.url}}]\n      healthcheck: {passive: {failures: 1000}}\n    retries: 1\n    routes:\n      - {paths: [/orders]}\n      - {paths: [/capped], plugins: [{name: request-size-limit, config: {max: 1mb}}]}\n`);
  const digest = (b: string | Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 12);
  try {
    const small = '{"amount":100}';
    const big = Buffer.alloc(300_000, 'x'); // streamed: past the 64 KiB read ahead for retries
    for (let i = 0; i < 4; i++) {
      const r = await request(`${g.url}/orders`, { method: 'POST', body: small, headers: { 'content-type': 'application/json' } });
      assert.equal(r.status, 200, r.body);
      assert.equal(r.body, `good POST ${small.length} ${digest(small)}`);
      const p = await request(`${g.url}/orders`, { method: 'PATCH', body: big });
      assert.equal(p.status, 200, p.body);
      assert.equal(p.body, `good PATCH ${big.length} ${digest(big)}`);
      const c = await request(`${g.url}/orders`, { method: 'POST', body: 'chunked body', headers: { 'transfer-encoding': 'chunked' } });
      assert.equal(c.status, 200, c.body);
      assert.equal(c.body, `good POST 12 ${digest('chunked body')}`);
      const e = await request(`${g.url}/orders`, { method: 'POST' });
      assert.equal(e.status, 200, e.body);
      // A capped body streams through the gateway's counter: still unread when the connection fails.
      const k = await request(`${g.url}/capped`, { method: 'POST', body: big });
      assert.equal(k.status, 200, k.body);
      assert.equal(k.body, `good POST ${big.length} ${digest(big)}`);
    }
    assert.equal(good.requests.length, 20, 'each request reached the live origin exactly once');
  } finally {
    await g.close();
    await good.close();
  }
});

test('a status in retry_on is retried on another target', { timeout: 5000 }, async () => {
  const a = await startUpstream((_q, res) => res.writeHead(503).end('a down'));
  const b = await startUpstream((_q, res) => res.end('b'));
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${a.url}}, {url: ${b.url}}]\n    retries: 2\n    retry_on: [503]\n    routes: [{paths: [/]}]\n`);
  try {
    const r = await request(`${g.url}/x`);
    assert.equal(r.status, 200);
    assert.equal(r.body, 'b');
    assert.equal(a.requests.length, 1, 'A saw the first attempt once');
    assert.equal(b.requests.length, 1);
  } finally {
    await g.close();
    await a.close();
    await b.close();
  }
});

test('a status in retry_on with a Retry-After goes to another target, never back to the one that said it: a one-target service passes the answer on, Retry-After included (without one it is retried)', { timeout: 5000 }, async () => {
  let wait = true;
  const a = await startUpstream((_q, res) => res.writeHead(503, wait ? { 'retry-after': '30' } : {}).end('a busy'));
  const b = await startUpstream((_q, res) => res.end('b'));
  const g = await startGateway(`services:\n` +
    `  - name: one\n    url: ${a.url}\n    retries: 2\n    retry_on: [503]\n    routes: [{paths: [/one]}]\n` +
    `  - name: two\n    upstream:\n      targets: [{url: ${a.url}}, {url: ${b.url}}]\n    retries: 2\n    retry_on: [503]\n    routes: [{paths: [/two]}]\n`);
  try {
    const r = await request(`${g.url}/one`);
    assert.equal(r.status, 503);
    assert.equal(r.body, 'a busy');
    assert.equal(r.headers['retry-after'], '30');
    assert.equal(a.requests.length, 1, 'the target that asked to wait was asked again at once');
    // with another target there, the retry goes to it
    for (let i = 0; i < 2; i++) assert.equal((await request(`${g.url}/two`)).body, 'b');
    assert.equal(b.requests.length, 2);
    // no Retry-After: the one target is tried again, as before
    wait = false;
    const n = a.requests.length;
    assert.equal((await request(`${g.url}/one`)).status, 503);
    assert.equal(a.requests.length - n, 3);
  } finally {
    await g.close();
    await a.close();
    await b.close();
  }
});

test('ACCEPTANCE: the retry budget caps upstream attempts at 1.2x the requests', { timeout: 5000 }, async () => {
  const a = await startUpstream((_q, res) => res.writeHead(503).end('a down'));
  const b = await startUpstream((_q, res) => res.end('b'));
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${a.url}}, {url: ${b.url}}]\n    retries: 3\n    retry_on: [503]\n    retry_budget: {ratio: 0.2, min_per_second: 0}\n    routes: [{paths: [/]}]\n`);
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  try {
    const N = 300;
    let next = 0;
    const statuses: number[] = [];
    await Promise.all(Array.from({ length: 8 }, async () => {
      while (next++ < N) statuses.push((await get(`${g.url}/x`, agent)).status);
    }));
    assert.equal(statuses.length, N);
    const attempts = a.requests.length + b.requests.length;
    console.log(`retry budget: ${N} requests -> ${attempts} upstream attempts (A ${a.requests.length}, B ${b.requests.length}), ${statuses.filter((s) => s === 503).length} x 503 to the client`);
    assert.ok(attempts > N, 'some requests were retried');
    assert.ok(attempts <= 1.2 * N, `${attempts} attempts > 1.2 x ${N}`);
    // Every retry turns a 503 into a 200 (it goes to B): the 503s the client sees are A's unretried ones.
    assert.equal(statuses.filter((s) => s === 503).length, a.requests.length - (attempts - N));
  } finally {
    agent.destroy();
    await g.close();
    await a.close();
    await b.close();
  }
});

test('the total deadline bounds all attempts: 504 at ~500 ms, not 4 x 300 ms', { timeout: 5000 }, async () => {
  const a = await startUpstream(() => {});
  const b = await startUpstream(() => {});
  const g = await startGateway(`services:\n  - name: s\n    upstream:\n      targets: [{url: ${a.url}}, {url: ${b.url}}]\n    timeouts: {response: 300ms, total: 500ms}\n    retries: 3\n    retry_on: [timeout]\n    routes: [{paths: [/]}]\n`);
  const single = await startGateway(`services:\n  - name: s\n    url: ${a.url}\n    timeouts: {response: 300ms}\n    routes: [{paths: [/]}]\n`);
  try {
    // The response timeout itself is kept to the millisecond (not to undici's ~0.5 s timer ticks).
    const s0 = performance.now();
    assertProblem(await request(`${single.url}/x`), 504, 'gateway-timeout');
    const sms = performance.now() - s0;
    assert.ok(sms >= 290 && sms < 450, `response: 300ms answered after ${sms.toFixed(0)} ms`);
    a.requests.length = 0;

    const t0 = performance.now();
    const r = await request(`${g.url}/x`);
    const ms = performance.now() - t0;
    console.log(`deadline: 504 after ${ms.toFixed(0)} ms, attempts A ${a.requests.length} B ${b.requests.length}`);
    assertProblem(r, 504, 'gateway-timeout');
    assert.ok(ms >= 480 && ms < 900, `answered after ${ms.toFixed(0)} ms`);
    assert.equal(a.requests.length + b.requests.length, 2, 'a 300 ms attempt, then one cut to the 200 ms left');
  } finally {
    await single.close();
    await g.close();
    await a.close();
    await b.close();
  }
});

test('circuit breaker: opens after min_requests failures, half-open trial after open_for, closes when the upstream recovers', { timeout: 5000 }, async () => {
  let mode: 'fail' | 'slow-ok' = 'fail';
  const u = await startUpstream((_q, res) => {
    if (mode === 'fail') res.writeHead(500).end('boom');
    else setTimeout(() => res.end('ok'), 100);
  });
  const g = await startGateway(`services:\n  - name: s\n    url: ${u.url}\n    circuit_breaker: {failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 500ms, half_open_requests: 1}\n    routes: [{paths: [/]}]\n`);
  try {
    for (let i = 0; i < 4; i++) assert.equal((await request(`${g.url}/x`)).status, 500, `failure ${i} is forwarded`);
    assert.equal(u.requests.length, 4);
    const openedAt = Date.now();
    const r = await request(`${g.url}/x`);
    assertProblem(r, 503, 'circuit-open');
    assert.ok(Number(r.headers['retry-after']) >= 1, `Retry-After: ${r.headers['retry-after']}`);
    assert.equal(u.requests.length, 4, 'an open circuit does not contact the upstream');
    assertProblem(await request(`${g.url}/x`), 503, 'circuit-open');

    // After open_for: one trial; it fails, so the circuit opens again at once.
    await sleep(openedAt + 560 - Date.now());
    assert.equal((await request(`${g.url}/x`)).status, 500, 'the half-open trial reaches the upstream');
    assert.equal(u.requests.length, 5);
    assertProblem(await request(`${g.url}/x`), 503, 'circuit-open');
    assert.equal(u.requests.length, 5);

    // Fixed upstream: after open_for, one trial goes through (a second one meanwhile is refused), and it closes the circuit.
    mode = 'slow-ok';
    await sleep(560);
    const [t1, t2] = await Promise.all([request(`${g.url}/x`), sleep(30).then(() => request(`${g.url}/x`))]);
    assert.equal(t1.status, 200, t1.body);
    assertProblem(t2, 503, 'circuit-open');
    assert.equal(u.requests.length, 6);
    for (let i = 0; i < 4; i++) assert.equal((await request(`${g.url}/x`)).status, 200, 'closed again');
    assert.equal(u.requests.length, 10);
  } finally {
    await g.close();
    await u.close();
  }
});

for (const frees of [false, true]) {
  test(`bulkhead: 2 in flight, 1 waiting, the 4th refused at once; the waiter ${frees ? 'is served when a slot frees' : 'gets 503 after max_wait'}`, { timeout: 5000 }, async () => {
    const held: ServerResponse[] = [];
    const u = await startUpstream((_q, res) => void held.push(res));
    const g = await startGateway(`services:\n  - name: s\n    url: ${u.url}\n    circuit_breaker: {max_concurrent: 2, max_pending: 1, max_wait: 200ms}\n    routes: [{paths: [/]}]\n`);
    const st = g.gw.snapshot.services[0]!.state;
    try {
      const first = [request(`${g.url}/1`), request(`${g.url}/2`)];
      await until(() => held.length === 2, 2000, 'two requests at the upstream');
      const t3 = performance.now();
      const third = request(`${g.url}/3`).then((r) => ({ r, ms: performance.now() - t3 }));
      await until(() => st.queue.length === 1, 2000, 'the third request to wait');
      const t4 = performance.now();
      const fourth = await request(`${g.url}/4`);
      const ms4 = performance.now() - t4;
      assertProblem(fourth, 503, 'service-overloaded');
      assert.ok(ms4 < 100, `refused at once (${ms4.toFixed(0)} ms)`);
      if (frees) {
        await sleep(50);
        held.shift()!.end('one');
        await until(() => held.length === 2, 2000, 'the waiter to reach the upstream');
        held.at(-1)!.end('three');
        const { r, ms } = await third;
        assert.equal(r.status, 200);
        assert.equal(r.body, 'three');
        assert.ok(ms < 200, `served when the slot freed (${ms.toFixed(0)} ms)`);
        assert.deepEqual(u.requests.map((q) => q.url), ['/1', '/2', '/3']);
      } else {
        const { r, ms } = await third;
        assertProblem(r, 503, 'service-overloaded');
        assert.ok(ms >= 190 && ms < 600, `refused after max_wait (${ms.toFixed(0)} ms)`);
        assert.equal(u.requests.length, 2);
      }
      for (const h of held.splice(0)) h.end('done');
      for (const r of await Promise.all(first)) assert.equal(r.status, 200);
      assert.equal(st.active, 0);
      assert.equal(st.queue.length, 0);
    } finally {
      for (const h of held.splice(0)) h.end();
      await g.close();
      await u.close();
    }
  });
}

test('bulkhead: a wait the request\'s deadline (timeouts.total) ends before max_wait is that timeout, a 504 naming it (it was a 503 "no free slot within 5000 ms" after 300 ms)', { timeout: 5000 }, async () => {
  const held: ServerResponse[] = [];
  // (the first answer streams: its slot is held past its own deadline, which bounds its headers)
  const u = await startUpstream((_q, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('streaming ');
    held.push(res);
  });
  const g = await startGateway(`services:\n  - name: s\n    url: ${u.url}\n    timeouts: {response: 300ms, total: 300ms}\n    circuit_breaker: {max_concurrent: 1, max_pending: 1, max_wait: 5s}\n    routes: [{paths: [/]}]\n`);
  try {
    const first = request(`${g.url}/1`);
    await until(() => held.length === 1, 2000, 'one request at the upstream');
    const t = performance.now();
    const r = await request(`${g.url}/2`);
    const ms = performance.now() - t;
    assertProblem(r, 504, 'gateway-timeout');
    assert.match(JSON.parse(r.body).detail, /no free slot within the 300 ms deadline/);
    assert.ok(ms >= 250 && ms < 2000, `after the deadline (${ms.toFixed(0)} ms)`);
    assert.equal(u.requests.length, 1);
    held.shift()!.end('done');
    assert.equal((await first).body, 'streaming done');
  } finally {
    for (const h of held.splice(0)) h.end();
    await g.close();
    await u.close();
  }
});

test('ACCEPTANCE: a slow service does not slow a fast one (300 requests held open on the slow one)', { timeout: 5000 }, async () => {
  const slow = await startUpstream(() => {}); // never answers within the test
  const fast = await startUpstream((_q, res) => res.end('fast'));
  const g = await startGateway(
    `timeouts: {drain: 1s}\nservices:\n  - name: slow\n    url: ${slow.url}\n    timeouts: {response: 30s}\n    routes: [{paths: [/slow]}]\n` +
    `  - name: fast\n    url: ${fast.url}\n    routes: [{paths: [/fast]}]\n`,
  );
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const held: ClientRequest[] = [];
  const p99 = async (n: number) => {
    const times: number[] = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      const r = await get(`${g.url}/fast`, agent);
      times.push(performance.now() - t0);
      assert.equal(r.status, 200);
    }
    times.sort((x, y) => x - y);
    return { p50: times[Math.floor(n / 2)]!, p99: times[Math.ceil(n * 0.99) - 1]! };
  };
  try {
    await p99(50); // warm-up
    const base = await p99(300);
    for (let i = 0; i < 300; i++) {
      const req = httpRequest(`${g.url}/slow/${i}`, { agent: false });
      req.on('error', () => {});
      req.end();
      held.push(req);
    }
    await until(() => slow.requests.length === 300, 4000, '300 requests held at the slow upstream');
    const loaded = await p99(300);
    console.log(`isolation: fast p50/p99 baseline ${base.p50.toFixed(2)}/${base.p99.toFixed(2)} ms; with 300 held on slow ${loaded.p50.toFixed(2)}/${loaded.p99.toFixed(2)} ms`);
    assert.ok(loaded.p99 <= Math.max(3 * base.p99, base.p99 + 25), `p99 ${loaded.p99.toFixed(2)} ms vs baseline ${base.p99.toFixed(2)} ms`);
    assert.equal(slow.requests.length, 300, 'the slow requests are still held');
  } finally {
    for (const r of held) r.destroy();
    agent.destroy();
    await g.close();
    await slow.close();
    await fast.close();
  }
});

test('active health over HTTPS uses the service\'s TLS settings (a private CA): a healthy target stays up; a probe whose body stalls fails', { timeout: 8000 }, async () => {
  const { makeCa } = await import('./certs.js');
  const { createServer: createHttpsServer } = await import('node:https');
  const ca = makeCa();
  const pem = ca.issue('localhost', { dns: ['localhost'] });
  let stall = false;
  const srv = createHttpsServer({ cert: pem.cert, key: pem.key }, (req, res) => {
    if (req.url === '/healthz' && stall) {
      res.writeHead(200, { 'content-length': '100' });
      res.write('x'); // then nothing: the probe's timeout must fail it
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain' }).end('hello');
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  const g = await startGateway(`services:
  - name: s
    tls: {ca: ${ca.certFile}}
    upstream:
      targets: [{url: "https://localhost:${port}"}]
      healthcheck:
        active: {path: /healthz, interval: 200ms, timeout: 150ms, healthy: 1, unhealthy: 2}
    routes: [{paths: [/]}]
`);
  try {
    await sleep(800);
    const r = await request(`${g.url}/x`);
    assert.equal(r.status, 200, `the target was taken down by TLS-less probes: ${r.body}`);
    stall = true;
    let down = false;
    for (let i = 0; i < 30 && !down; i++) {
      await sleep(100);
      down = (await request(`${g.url}/x`)).status === 503;
    }
    assert.ok(down, 'a probe whose body stalls past its timeout counted as healthy');
  } finally {
    await g.close();
    srv.closeAllConnections();
    await new Promise((r) => srv.close(r));
    ca.cleanup();
  }
});

test('a target that stalls or cuts bodies after its headers is charged by passive health (ejected); retries are spaced by a backoff', { timeout: 8000 }, async () => {
  const stalling = await startRawOrigin((data) => (data.toString('latin1').includes('\r\n\r\n') ? 'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nx' : null));
  const good = await startUpstream((_q, res) => res.end('good'));
  const g = await startGateway(`services:
  - name: s
    timeouts: {read: 300ms}
    upstream:
      targets: [{url: ${stalling.url}}, {url: ${good.url}}]
      healthcheck:
        passive: {failures: 2, ejection: 30s}
    routes: [{paths: [/]}]
`);
  try {
    const bodies: string[] = [];
    for (let i = 0; i < 8; i++) {
      const r = await request(`${g.url}/x`).catch(() => null);
      bodies.push(r?.body ?? 'cut');
    }
    // Round robin: the stalling target's first two answers break, then it is out.
    assert.deepEqual(bodies.slice(-4), ['good', 'good', 'good', 'good'], JSON.stringify(bodies));
  } finally {
    await g.close();
    await stalling.close();
    await good.close();
  }
  // Backoff: three attempts on an overloaded target are not fired within the same millisecond.
  const at: number[] = [];
  const busy = await startUpstream((_q, res) => { at.push(performance.now()); res.writeHead(503).end('busy'); });
  const g2 = await startGateway(`services:\n  - name: b\n    url: ${busy.url}\n    retries: 2\n    retry_on: [503]\n    routes: [{paths: [/]}]\n`);
  try {
    const r = await request(`${g2.url}/x`);
    assert.equal(r.status, 503);
    assert.equal(at.length, 3);
    assert.ok(at[1]! - at[0]! >= 10 && at[2]! - at[1]! >= 20, `gaps ${at[1]! - at[0]!} ms, ${at[2]! - at[1]!} ms`);
  } finally {
    await g2.close();
    await busy.close();
  }
});

test('a request body over the route\'s cap (413) is the client\'s doing: it neither fails nor clears the target in passive health (its run of failures goes on)', { timeout: 5000 }, async () => {
  const u = await startUpstream((_q, res) => res.writeHead(500).end('boom'));
  const g = await startGateway(`
admin: {listen: 127.0.0.1:0}
services:
  - name: s
    upstream:
      targets: [{url: "${u.url}"}]
      healthcheck: {passive: {failures: 5, ejection: 30s}}
    routes: [{paths: [/], plugins: [{name: request-size-limit, config: {max: 10b}}]}]
`);
  const failures = async () => (Object.values((JSON.parse((await request(`${g.adminUrl}/health`)).body) as { targets: Record<string, { failures: number }> }).targets)[0]!.failures);
  try {
    assert.equal((await request(`${g.url}/x`)).status, 500);
    assert.equal(await failures(), 1);
    // a chunked body (no Content-Length to refuse it up front): it streams to the target until the cap
    const big = await fetch(`${g.url}/x`, {
      method: 'POST', duplex: 'half',
      body: new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('x'.repeat(100))); c.close(); } }),
    } as RequestInit);
    assert.equal(big.status, 413);
    await big.text();
    assert.equal(await failures(), 1, 'the client\'s oversized body counted as a success of the target');
    assert.equal((await request(`${g.url}/x`)).status, 500);
    assert.equal(await failures(), 2);
  } finally {
    await g.close();
    await u.close();
  }
});

test('an HTTP/2 upload that stalls, read first for a retry, gets its 408 and nothing more: the stream the gateway then resets (NO_ERROR) ends its body short of its Content-Length, which is neither run as a request nor counted as a failure of the circuit', { timeout: 5000 }, async () => {
  const u = await startUpstream((_q, res) => res.end('ok'));
  const g = await startGateway(`
http2: {h2c: true}
timeouts: {client_body: 200ms}
services:
  - name: s
    url: ${u.url}
    retries: 1
    circuit_breaker: {min_requests: 1, failure_ratio: 0.5}
    routes: [{paths: [/]}]
`);
  const session = h2connect(g.url);
  try {
    const status = await new Promise<number>((resolve) => {
      const s = session.request({ ':method': 'PUT', ':path': '/x', 'content-length': '1000' }, { endStream: false });
      s.on('response', (h) => resolve(Number(h[':status'])));
      s.on('error', () => {});
      s.write('hello'); // and nothing more
    });
    assert.equal(status, 408);
    // (the session goes on: the gateway's reset of the stalled stream goes out with its next frames)
    const again = session.request({ ':method': 'PUT', ':path': '/x', 'content-length': '1000' }, { endStream: false });
    again.on('error', () => {});
    again.write('hello');
    await sleep(400);
    assert.equal(g.gw.health!.report().circuits.s, 'closed', 'the client\'s stalled upload opened the circuit');
    assert.equal((await request(`${g.url}/x`)).status, 200);
    assert.equal(u.requests.length, 1, 'the 5 bytes it had went on as a request');
  } finally {
    session.destroy(); // (its stream was never read: close() would wait for it)
    await g.close();
    await u.close();
  }
});

test('half-open: a trial is judged by its answer\'s status, not by the end of its body: a long stream closes the circuit at once and does not hold the trial place', { timeout: 8000 }, async () => {
  let mode: 'fail' | 'stream' = 'fail';
  const streams: ServerResponse[] = [];
  const u = await startUpstream((_q, res) => {
    if (mode === 'fail') return res.writeHead(500).end('boom');
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: hello\n\n');
    streams.push(res);
  });
  const g = await startGateway(`services:\n  - name: s\n    url: ${u.url}\n    circuit_breaker: {failure_ratio: 0.5, min_requests: 2, window: 10s, open_for: 300ms, half_open_requests: 1}\n    routes: [{paths: [/]}]\n`);
  const held: ClientRequest[] = [];
  try {
    for (let i = 0; i < 2; i++) assert.equal((await request(`${g.url}/x`)).status, 500);
    assertProblem(await request(`${g.url}/x`), 503, 'circuit-open');
    await sleep(360);
    mode = 'stream';
    // the trial: an event stream that stays open
    const first = await new Promise<IncomingMessage>((resolve, reject) => {
      const r = httpRequest(`${g.url}/events`, resolve);
      r.on('error', reject);
      r.end();
      held.push(r);
    });
    assert.equal(first.statusCode, 200);
    await until(() => streams.length === 1, 2000, 'the stream at the upstream');
    // while it streams, the circuit is closed: other requests go through
    const other = await new Promise<IncomingMessage>((resolve, reject) => {
      const r = httpRequest(`${g.url}/events`, resolve);
      r.on('error', reject);
      r.end();
      held.push(r);
    });
    assert.equal(other.statusCode, 200, 'a request during the trial\'s stream was refused (circuit-open)');
  } finally {
    for (const r of held) r.destroy();
    for (const s of streams) s.destroy();
    await g.close();
    await u.close();
  }
});
