/**
 * Malformed and failing upstream responses through one gateway: a raw origin scripted per path
 * sends ambiguous framing, truncated bodies, garbage, closes, resets and stalls. Before the
 * response started the client gets 502/504 problem+json (with the request id); after it started
 * the client sees a broken response, never a clean short one; and no upstream leftovers ever
 * answer a later request (no response desync). The gateway survives all of it.
 */
// (first: sets the precise-timeout bound forward.ts reads at load)
import { PRECISE_TIMEOUT_MS } from './precise-timeout.js';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer as createNetServer, type Socket, type AddressInfo } from 'node:net';
import { connect as h2connect, constants as h2constants } from 'node:http2';
import { createServer as createTlsServer } from 'node:tls';
import { fetch, Agent } from 'undici';
import { countRequests, rawRequest, request, startGateway, startRawOrigin, startUpstream, type TestGateway, type RawOrigin, type TestUpstream } from './helpers.js';
import { startRawH2Origin } from './h2-raw-origin.js';
import { makeCa } from './certs.js';
import { header, parseOne, type Msg } from './framing.js';
import { PRECISE_TIMEOUT_BELOW_MS } from '../src/upstream/forward.js';

/** A raw keep-alive client connection: send requests one at a time, read whole responses. */
class RawClient {
  private buf = '';
  private ended = false;
  private wake: (() => void) | null = null;
  private constructor(private readonly sock: Socket) {
    sock.on('data', (d: Buffer) => { this.buf += d.toString('latin1'); this.wake?.(); });
    const end = () => { this.ended = true; this.wake?.(); };
    sock.on('end', end);
    sock.on('close', end);
    sock.on('error', end);
  }

  static open(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => { s.off('error', reject); resolve(new RawClient(s)); });
      s.once('error', reject);
    });
  }

  get closed(): boolean {
    return this.ended;
  }

  get pending(): string {
    return this.buf;
  }

  send(data: string): void {
    this.sock.write(data);
  }

  /** The next complete response, or null when the server closed the connection before one was complete. */
  async next(timeoutMs = 3000): Promise<Msg | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const got = parseOne(this.buf, 'response', this.ended);
      if (got) {
        this.buf = this.buf.slice(got.used);
        return got.msg;
      }
      if (this.ended) return null;
      if (Date.now() > deadline) throw new Error(`no complete response within ${timeoutMs} ms; got ${JSON.stringify(this.buf)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.wake = () => { clearTimeout(t); r(); };
      });
      this.wake = null;
    }
  }

  close(): void {
    this.sock.destroy();
  }
}

// --------------------------------------------------------------------------------------------
// The scripted origin: one behaviour per path under /u.
// --------------------------------------------------------------------------------------------
const GOOD = 'HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood';
/** An unsolicited response left on the upstream connection: must never answer anything. */
const POISON = 'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled';

const timers = new Set<NodeJS.Timeout>();
function later(ms: number, fn: () => void): void {
  const t = setTimeout(() => { timers.delete(t); fn(); }, ms);
  timers.add(t);
}

/** Returns 'done' when the script finished with this connection (closed or reset it). */
const SCRIPTS: Record<string, (s: Socket) => 'keep' | 'done'> = {
  '/good': (s) => (s.write(GOOD), 'keep'),
  '/cl-te': (s) => (s.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' + POISON), 'keep'),
  '/te-cl': (s) => (s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n' + POISON), 'keep'),
  '/dup-cl': (s) => (s.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: ${2 + POISON.length}\r\n\r\nok${POISON}`), 'keep'),
  '/extra': (s) => (s.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok${POISON}`), 'keep'),
  '/truncated': (s) => {
    s.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789');
    later(50, () => s.end());
    return 'done';
  },
  '/chunk-cut': (s) => {
    s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n5\r\nab');
    later(50, () => s.end());
    return 'done';
  },
  '/garbage': (s) => (s.write('this is not HTTP at all\r\n\r\n'), 'keep'),
  '/huge-head': (s) => (s.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: ${'a'.repeat(70_000)}\r\n\r\nok`), 'keep'),
  // A 304 keeps its (representation's) Content-Length; a 204 carries none (RFC 9110 §8.6); both end at their head (RFC 9112 §6.3).
  '/304-cl': (s) => (s.write('HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: "a"\r\n\r\n'), 'keep'),
  '/204-cl': (s) => (s.write('HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n'), 'keep'),
  '/204-cl0': (s) => (s.write('HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n'), 'keep'),
  // Trailer announces trailers (RFC 9110 §6.6.2): with a Content-Length there can be none.
  '/trailer-cl': (s) => (s.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTrailer: X-T\r\n\r\nhello'), 'keep'),
  '/trailer-chunked': (s) => (s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n'), 'keep'),
  '/status-999': (s) => (s.write('HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok'), 'keep'),
  '/status-099': (s) => (s.write('HTTP/1.1 099 Weird\r\nContent-Length: 2\r\n\r\nok'), 'keep'),
  // chunked applied twice (RFC 9112 §6.1 forbids it): two fields, or one listing it twice.
  '/te-twice': (s) => (s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n'), 'keep'),
  '/te-list-twice': (s) => (s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n'), 'keep'),
  '/te-gzip': (s) => {
    s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc');
    later(50, () => s.end());
    return 'done';
  },
  '/silent-close': (s) => (s.end(), 'done'),
  '/reset': (s) => (s.resetAndDestroy(), 'done'),
  '/slow-headers': (s) => {
    later(2000, () => { if (!s.destroyed) s.write(GOOD); });
    return 'keep';
  },
  '/slow-body': (s) => {
    s.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc'); // then nothing: read timeout is 500ms
    return 'keep';
  },
};

let origin: RawOrigin;
let healthy: TestUpstream;
let gw: TestGateway;
let agent: Agent;
let deadPort: number;

before(async () => {
  const handled = new WeakMap<Socket, number>();
  const finished = new WeakSet<Socket>();
  origin = await startRawOrigin((data, socket) => {
    if (finished.has(socket)) return null;
    let text = data.toString('latin1');
    // skip requests already handled on this connection, then act on each new complete one
    for (let i = 0; i < (handled.get(socket) ?? 0); i++) text = text.slice(parseOne(text, 'request')!.used);
    for (let got = parseOne(text, 'request'); got; got = parseOne(text, 'request')) {
      handled.set(socket, (handled.get(socket) ?? 0) + 1);
      text = text.slice(got.used);
      const path = got.msg.start.split(' ')[1]!.replace(/^\/u/, '');
      const script = SCRIPTS[path] ?? ((s: Socket) => (s.write('HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope'), 'keep' as const));
      if (script(socket) === 'done') {
        finished.add(socket);
        break;
      }
    }
    return null;
  });
  healthy = await startUpstream();
  // a port with nothing listening: bind, note it, close
  const probe = createNetServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  deadPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));

  gw = await startGateway(`
timeouts: {drain: 500ms}
services:
  - name: flaky
    url: ${origin.url}
    timeouts: {connect: 1s, response: 300ms, read: 500ms}
    routes: [{paths: [/u]}]
  - name: gone
    url: http://127.0.0.1:${deadPort}
    timeouts: {connect: 1s, response: 1s}
    routes: [{paths: [/gone]}]
  - name: healthy
    url: ${healthy.url}
    routes: [{paths: [/healthy]}]
`);
  agent = new Agent({ keepAliveTimeout: 1000, connect: { timeout: 1000 }, headersTimeout: 5000, bodyTimeout: 5000 });
});

after(async () => {
  for (const t of timers) clearTimeout(t);
  await agent?.close().catch(() => agent.destroy());
  await gw?.close();
  await origin?.close();
  await healthy?.close();
});

const get = (path: string, headers: Record<string, string> = {}) => fetch(`${gw.url}${path}`, { dispatcher: agent, headers });

/** problem+json with type/title/status/detail/request_id, and X-Request-Id equal to request_id. */
function assertProblem(
  status: number, type: string, headers: { get(name: string): string | null | undefined }, bodyText: string, detail?: RegExp,
): Record<string, unknown> {
  assert.equal(headers.get('content-type'), 'application/problem+json', bodyText);
  const p = JSON.parse(bodyText) as Record<string, unknown>;
  assert.equal(p.type, `urn:turnpike:problem:${type}`, bodyText);
  assert.equal(typeof p.title, 'string');
  assert.ok((p.title as string).length > 0);
  assert.equal(p.status, status);
  assert.equal(typeof p.detail, 'string');
  if (detail) assert.match(p.detail as string, detail);
  assert.equal(typeof p.request_id, 'string');
  assert.ok((p.request_id as string).length > 0);
  assert.equal(headers.get('x-request-id'), p.request_id, 'X-Request-Id must match request_id');
  return p;
}

const rawGet = (path: string, extra = '') => `GET ${path} HTTP/1.1\r\nHost: gw.test\r\n${extra}\r\n`;
const msgHeaders = (m: Msg) => ({ get: (n: string) => header(m, n) ?? null });

/**
 * The upstream answers `path` with broken framing followed by a stray response. The client gets
 * a 502 problem+json (or a cut connection), and the next request on the same client connection
 * (or a fresh one after a cut) gets its own answer, never the stray bytes.
 */
async function expectNoResponseDesync(path: string, opts: { allowCut: boolean }) {
  let c = await RawClient.open(gw.port);
  try {
    c.send(rawGet(path));
    const first = await c.next();
    if (first === null) {
      assert.ok(opts.allowCut, `the gateway cut the connection instead of answering 502; got ${JSON.stringify(c.pending)}`);
      assert.doesNotMatch(c.pending, /smuggled/);
      c.close();
      c = await RawClient.open(gw.port);
    } else {
      assert.match(first.start, /^HTTP\/1\.1 502 /, `expected 502, got ${first.start}: ${first.body}`);
      const p = assertProblem(502, 'bad-gateway', msgHeaders(first), first.body, /"flaky"/);
      assert.doesNotMatch(first.body, /smuggled/);
      assert.ok(!c.closed || header(first, 'connection') === 'close', 'closed without saying so');
      if (c.closed) c = await RawClient.open(gw.port);
      // the next request on the same client connection gets its own, correct answer
      c.send(rawGet('/u/good'));
      const second = await c.next();
      assert.ok(second, `no response to the follow-up request; got ${JSON.stringify(c.pending)}`);
      assert.match(second.start, /^HTTP\/1\.1 200 /, `${second.start}: ${second.body}`);
      assert.equal(second.body, 'good', 'the follow-up request was answered with leftover upstream bytes');
      assert.notEqual(header(second, 'x-request-id'), p.request_id);
      return;
    }
    c.send(rawGet('/u/good'));
    const second = await c.next();
    assert.ok(second);
    assert.equal(second.body, 'good', 'a later request was answered with leftover upstream bytes');
  } finally {
    c.close();
  }
}

// --------------------------------------------------------------------------------------------

test('baseline: a well-formed upstream answer passes through', { timeout: 10_000 }, async () => {
  const res = await get('/u/good');
  assert.equal(res.status, 200);
  assert.equal(await res.text(), 'good');
});

test('upstream sends Content-Length and Transfer-Encoding: 502 problem+json, no desync', { timeout: 10_000 }, async () => {
  await expectNoResponseDesync('/u/cl-te', { allowCut: true });
});

test('upstream sends Transfer-Encoding then Content-Length: 502 problem+json, no desync', { timeout: 10_000 }, async () => {
  await expectNoResponseDesync('/u/te-cl', { allowCut: true });
});

test('upstream sends two different Content-Length values: 502 problem+json, no desync', { timeout: 10_000 }, async () => {
  await expectNoResponseDesync('/u/dup-cl', { allowCut: false });
});

test('upstream sends bytes after a complete response: they never answer the next request', { timeout: 10_000 }, async () => {
  const c = await RawClient.open(gw.port);
  try {
    c.send(rawGet('/u/extra'));
    const first = await c.next();
    assert.ok(first);
    assert.match(first.start, /^HTTP\/1\.1 200 /);
    assert.equal(first.body, 'ok');
    for (let i = 0; i < 3; i++) {
      c.send(rawGet('/u/good'));
      const next = await c.next();
      assert.ok(next, `no answer; got ${JSON.stringify(c.pending)}`);
      assert.equal(next.body, 'good', `request ${i + 2} got someone else's response`);
    }
  } finally {
    c.close();
  }
});

test('truncated body (Content-Length: 100, 10 bytes, close): the client read fails, never a clean short body', { timeout: 10_000 }, async () => {
  const res = await get('/u/truncated');
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-length'), '100');
  await assert.rejects(res.arrayBuffer(), 'the body read completed although the upstream cut it short');
  // on the wire: the gateway closes the connection without completing the message
  const c = await RawClient.open(gw.port);
  try {
    c.send(rawGet('/u/truncated'));
    assert.equal(await c.next(), null, 'the gateway completed a truncated response');
    assert.ok(c.closed);
  } finally {
    c.close();
  }
});

test('chunked response cut mid-stream: the client read fails', { timeout: 10_000 }, async () => {
  const res = await get('/u/chunk-cut');
  assert.equal(res.status, 200);
  await assert.rejects(res.text(), 'the body read completed although the upstream cut it short');
  const c = await RawClient.open(gw.port);
  try {
    c.send(rawGet('/u/chunk-cut'));
    assert.equal(await c.next(), null, 'the gateway sent a terminating chunk for a cut response');
    assert.doesNotMatch(c.pending, /\r\n0\r\n\r\n$/);
  } finally {
    c.close();
  }
});

test('an HTTP/1.1 upstream that cuts its body (short of its Content-Length, or mid-chunked): an HTTP/2 client\'s stream is reset (INTERNAL_ERROR), never ended with END_STREAM', { timeout: 10_000 }, async () => {
  const g = await startGateway(`
http2: {h2c: true}
services:
  - name: flaky
    url: ${origin.url}
    timeouts: {connect: 1s, response: 300ms, read: 500ms}
    routes: [{paths: [/u]}]
`);
  const session = h2connect(g.url);
  session.on('error', () => {});
  try {
    for (const [path, got] of [['/u/truncated', 10], ['/u/chunk-cut', 12]] as const) {
      const r = await new Promise<{ status: number; got: number; ended: boolean; rstCode: number | undefined }>((resolve) => {
        const st = session.request({ ':path': path });
        let status = 0;
        let n = 0;
        let ended = false;
        st.on('response', (h) => (status = Number(h[':status'])));
        st.on('data', (c: Buffer) => (n += c.length));
        st.on('end', () => (ended = true));
        st.on('error', () => {});
        st.on('close', () => resolve({ status, got: n, ended, rstCode: st.rstCode }));
      });
      assert.deepEqual(r, { status: 200, got, ended: false, rstCode: h2constants.NGHTTP2_INTERNAL_ERROR }, path);
    }
  } finally {
    session.destroy();
    await g.close();
  }
});

test('upstream body stalls beyond timeouts.read: the client read fails, bounded', { timeout: 10_000 }, async () => {
  const t0 = Date.now();
  const res = await get('/u/slow-body');
  assert.equal(res.status, 200);
  await assert.rejects(res.text());
  assert.ok(Date.now() - t0 < 3000, `took ${Date.now() - t0} ms`);
});

test('garbage instead of a status line: 502 problem+json', { timeout: 10_000 }, async () => {
  const res = await get('/u/garbage');
  assert.equal(res.status, 502);
  assertProblem(502, 'bad-gateway', res.headers, await res.text(), /"flaky"/);
});

test('upstream closes without answering: 502 problem+json', { timeout: 10_000 }, async () => {
  const res = await get('/u/silent-close');
  assert.equal(res.status, 502);
  assertProblem(502, 'bad-gateway', res.headers, await res.text(), /"flaky"/);
});

test('upstream resets the connection: 502 problem+json', { timeout: 10_000 }, async () => {
  const res = await get('/u/reset');
  assert.equal(res.status, 502);
  assertProblem(502, 'bad-gateway', res.headers, await res.text(), /"flaky"/);
});

test('connection refused: 502 problem+json naming the service', { timeout: 10_000 }, async () => {
  const res = await get('/gone/x');
  assert.equal(res.status, 502);
  assertProblem(502, 'bad-gateway', res.headers, await res.text(), /"gone".*ECONNREFUSED|ECONNREFUSED.*"gone"/);
});

test('upstream slow to send headers beyond timeouts.response (300ms): 504 problem+json', { timeout: 10_000 }, async () => {
  const t0 = Date.now();
  const res = await get('/u/slow-headers');
  const ms = Date.now() - t0;
  assert.equal(res.status, 504);
  assertProblem(504, 'gateway-timeout', res.headers, await res.text(), /"flaky".*300/);
  assert.ok(ms >= 250 && ms < 1500, `answered after ${ms} ms`);
});

/**
 * A response timeout on undici's headers timeout (from PRECISE_TIMEOUT_BELOW_MS up: 10 s in
 * production, PRECISE_TIMEOUT_MS in this file), not on a native timer from the start.
 */
const LONG_TIMEOUT_MS = 3000;

test('long timeouts (from 10 s in production, on undici\'s headers timeout): an upstream that sends a 102 Processing every 300 ms and never a final answer is a 504 at timeouts.response, not held forever (undici restarts its headers timeout at each 1xx); so is one whose TLS handshake took 1.5 s (undici counts from the write: the connect came on top)', { timeout: 20_000 }, async () => {
  // The hook took: a 3 s timeout is on undici's path here, as a 10 s one is in production.
  assert.equal(PRECISE_TIMEOUT_BELOW_MS, PRECISE_TIMEOUT_MS);
  assert.ok(LONG_TIMEOUT_MS >= PRECISE_TIMEOUT_BELOW_MS);
  // (both at once: each waits LONG_TIMEOUT_MS)
  const slowConnect = slowHandshakeTimeout();
  const timers: NodeJS.Timeout[] = [];
  const origin = await startRawOrigin((data, socket) => {
    if (!data.includes('\r\n\r\n')) return null;
    const beat = setInterval(() => { if (!socket.destroyed) socket.write('HTTP/1.1 102 Processing\r\n\r\n'); }, 300);
    timers.push(beat);
    socket.on('close', () => clearInterval(beat));
    return 'HTTP/1.1 102 Processing\r\n\r\n';
  });
  const g = await startGateway(`
services:
  - {name: busy, url: '${origin.url}', timeouts: {response: ${LONG_TIMEOUT_MS}ms}, routes: [{paths: [/busy]}]}
`);
  try {
    const t0 = Date.now();
    const r = await fetch(`${g.url}/busy`, { dispatcher: new Agent({ headersTimeout: 10_000 }) });
    const ms = Date.now() - t0;
    assert.equal(r.status, 504);
    assertProblem(504, 'gateway-timeout', r.headers, await r.text(), new RegExp(`"busy" did not answer within ${LONG_TIMEOUT_MS} ms`));
    assert.ok(ms >= LONG_TIMEOUT_MS - 500 && ms < LONG_TIMEOUT_MS + 1500, `answered after ${ms} ms`);
  } finally {
    for (const t of timers) clearInterval(t);
    await g.close();
    await origin.close();
  }
  await slowConnect;
});

/** An HTTPS upstream whose handshake starts 1.5 s after the connection (a relay holds the bytes) and that never answers. */
async function slowHandshakeTimeout(): Promise<void> {
  const ca = makeCa();
  const leaf = ca.issue('127.0.0.1');
  const silent = createTlsServer({ cert: leaf.cert, key: leaf.key }, (s) => s.on('error', () => {}));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  const sockets = new Set<Socket>();
  const relay = createNetServer((c) => {
    sockets.add(c);
    c.pause();
    c.on('error', () => {});
    const t = setTimeout(() => {
      const u = connect((silent.address() as AddressInfo).port, '127.0.0.1');
      sockets.add(u);
      u.on('error', () => c.destroy());
      c.on('close', () => u.destroy());
      c.pipe(u).pipe(c);
      c.resume();
    }, 1_500);
    c.on('close', () => clearTimeout(t));
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
services:
  - {name: handshake, url: 'https://127.0.0.1:${(relay.address() as AddressInfo).port}', tls: {ca: ${ca.certFile}}, timeouts: {response: ${LONG_TIMEOUT_MS}ms}, routes: [{paths: [/slow]}]}
`);
  try {
    const t0 = Date.now();
    const r = await fetch(`${g.url}/slow`, { dispatcher: new Agent({ headersTimeout: 10_000 }) });
    const ms = Date.now() - t0;
    assert.equal(r.status, 504);
    assertProblem(504, 'gateway-timeout', r.headers, await r.text(), new RegExp(`"handshake" did not answer within ${LONG_TIMEOUT_MS} ms`));
    // (undici's own timeout, counted from the write after the 1.5 s connect, would answer at 4.5 s or later)
    assert.ok(ms >= LONG_TIMEOUT_MS - 500 && ms < LONG_TIMEOUT_MS + 1000, `answered after ${ms} ms (the handshake took 1.5 s)`);
  } finally {
    await g.close();
    for (const s of sockets) s.destroy();
    relay.close();
    silent.close();
    ca.cleanup();
  }
}

test('response headers over 64 KiB: 502 problem+json that says so (not undici\'s error code)', { timeout: 10_000 }, async () => {
  const res = await get('/u/huge-head');
  assert.equal(res.status, 502);
  assertProblem(502, 'bad-gateway', res.headers, await res.text(), /"flaky" sent response headers larger than 64 KiB/);
});

test('a client-supplied X-Request-Id is the problem request_id', { timeout: 10_000 }, async () => {
  const res = await get('/u/garbage', { 'x-request-id': 'probe-42' });
  assert.equal(res.status, 502);
  const p = assertProblem(502, 'bad-gateway', res.headers, await res.text());
  assert.equal(p.request_id, 'probe-42');
});

test('an unrequested 100 Continue: from an HTTP/1.1 upstream a 502 invalid-upstream-response that names it, the request sent once (undici refuses any 100 and drops the connection: no "stale connection" replay); from an HTTP/2 upstream the 1xx are dropped and the final answer forwarded', { timeout: 10_000 }, async () => {
  // (the gateway never sends Expect upstream: undici refuses the header, so any 100 is unrequested)
  const h1 = await startRawOrigin((data) => (data.includes('\r\n\r\n') ? 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok' : null));
  const h2 = await startRawH2Origin((s) => {
    s.headers(100);
    s.headers(103, { link: '</a.css>; rel=preload' });
    s.headers(200, { 'content-length': '2' });
    s.data('ok', true);
  });
  const g = await startGateway(`
services:
  - {name: h1, url: '${h1.url}', retries: 2, routes: [{paths: [/h1]}]}
  - {name: h2, url: '${h2.url}', protocol: h2c, routes: [{paths: [/h2]}]}
`);
  try {
    const r = await fetch(`${g.url}/h1/x`, { dispatcher: agent });
    assert.equal(r.status, 502);
    assertProblem(502, 'invalid-upstream-response', r.headers, await r.text(), /"h1" sent a 100 Continue it was not asked for/);
    assert.equal(countRequests(h1.received()), 1, 'the request was sent again');
    const post = await fetch(`${g.url}/h1/x`, { dispatcher: agent, method: 'POST', body: 'hello' });
    assert.equal(post.status, 502);
    await post.text();
    assert.equal(countRequests(h1.received()), 2);
    const ok = await request(`${g.url}/h2/x`);
    assert.equal(ok.status, 200);
    assert.equal(ok.body, 'ok');
    assert.deepEqual(ok.informational, [], 'undici\'s HTTP/2 client reports no 1xx: none is forwarded');
  } finally {
    await g.close();
    await h1.close();
    await h2.close();
  }
});

test('an unrequested 101 Switching Protocols: 502 invalid-upstream-response that names it, sent once (no retry on `reset`, no stale-connection replay)', { timeout: 10_000 }, async () => {
  // (an origin that upgrades a plain request: undici drops the connection with "bad upgrade")
  const origin = await startRawOrigin((data) => (data.includes('\r\n\r\n') ? 'HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n' : null));
  const g = await startGateway(`
services:
  - {name: up101, url: '${origin.url}', retries: 2, retry_on: [reset, connect-error], routes: [{paths: [/u]}]}
`);
  try {
    const r = await fetch(`${g.url}/u/x`, { dispatcher: agent });
    assert.equal(r.status, 502);
    assertProblem(502, 'invalid-upstream-response', r.headers, await r.text(), /"up101" sent a 101 Switching Protocols to a request that asked for no upgrade/);
    assert.equal(countRequests(origin.received()), 1, 'the request was sent again');
  } finally {
    await g.close();
    await origin.close();
  }
});

test('204 and 304 from the upstream end at their head whatever Content-Length says; the connection goes on', { timeout: 10_000 }, async () => {
  const c = await RawClient.open(gw.port);
  try {
    c.send(rawGet('/u/304-cl'));
    const m304 = await c.next();
    assert.ok(m304, `no answer to a 304 with Content-Length; got ${JSON.stringify(c.pending)}`);
    assert.match(m304.start, /^HTTP\/1\.1 304 /);
    assert.equal(header(m304, 'etag'), '"a"');
    assert.equal(header(m304, 'content-length'), '5', 'a 304 may say the length of what it stands for');
    for (const path of ['/u/204-cl', '/u/204-cl0']) {
      c.send(rawGet(path));
      const m = await c.next();
      assert.ok(m, `no answer to ${path}; got ${JSON.stringify(c.pending)}`);
      assert.match(m.start, /^HTTP\/1\.1 204 /);
      assert.equal(header(m, 'content-length'), undefined, 'no Content-Length on a 204');
      assert.equal(header(m, 'transfer-encoding'), undefined);
    }
    c.send(rawGet('/u/good'));
    const next = await c.next();
    assert.ok(next);
    assert.equal(next.body, 'good');
  } finally {
    c.close();
  }
});

test('a status outside 100-599, or a transfer coding other than chunked: 502, never forwarded as it is', { timeout: 10_000 }, async () => {
  for (const [path, what] of [['/u/status-999', /status 999/], ['/u/te-gzip', /Transfer-Encoding gzip/]] as const) {
    const res = await get(path);
    const body = await res.text();
    assert.equal(res.status, 502, `${path}: ${body}`);
    assertProblem(502, 'invalid-upstream-response', res.headers, body, what);
  }
});

test('a status below 100 (099) is a 502 invalid-upstream-response that names it', { timeout: 10_000 }, async () => {
  const res = await get('/u/status-099');
  const body = await res.text();
  assert.equal(res.status, 502, body);
  assertProblem(502, 'invalid-upstream-response', res.headers, body, /status 99/);
});

test('chunked applied twice (two Transfer-Encoding fields, or `chunked, chunked`): 502 invalid-upstream-response (RFC 9112 §6.1)', { timeout: 10_000 }, async () => {
  for (const path of ['/u/te-twice', '/u/te-list-twice']) {
    const res = await get(path);
    const body = await res.text();
    assert.equal(res.status, 502, `${path}: ${body}`);
    assertProblem(502, 'invalid-upstream-response', res.headers, body, /Transfer-Encoding/);
  }
});

test('a Trailer field the answer cannot honour (a Content-Length, an HTTP/1.0 client) is dropped, the answer forwarded', { timeout: 10_000 }, async () => {
  const res = await get('/u/trailer-cl');
  assert.equal(res.status, 200);
  assert.equal(await res.text(), 'hello');
  assert.equal(res.headers.get('trailer'), null);
  const chunked = await get('/u/trailer-chunked');
  assert.equal(await chunked.text(), 'hello');
  assert.equal(chunked.headers.get('trailer'), 'X-T');
  // An HTTP/1.0 client gets no chunked body, so no trailers either.
  const r10 = await rawRequest(gw.port, 'GET /u/trailer-chunked HTTP/1.0\r\nHost: x\r\n\r\n', 500);
  assert.match(r10.text, /^HTTP\/1\.1 200 OK\r\n/);
  assert.doesNotMatch(r10.text, /\r\ntrailer:/i);
  assert.match(r10.text, /\r\n\r\nhello$/);
});

test('the gateway survived all of it: normal requests succeed, nothing left in flight', { timeout: 10_000 }, async () => {
  const a = await get('/healthy/ping');
  assert.equal(a.status, 200);
  assert.equal((JSON.parse(await a.text()) as { url: string }).url, '/healthy/ping');
  const b = await get('/u/good');
  assert.equal(b.status, 200);
  assert.equal(await b.text(), 'good');
  for (let i = 0; i < 40 && gw.gw.inFlight > 0; i++) await new Promise((r) => setTimeout(r, 25));
  assert.equal(gw.gw.inFlight, 0);
});

test('a kept-alive upstream connection closed as the next request arrives: an idempotent request goes once more on a new connection, a POST is 502', { timeout: 15_000 }, async () => {
  // The origin answers the first request of each connection and closes (FIN, or RST) on the
  // next one: the race of an origin's idle timeout with a request sent on a pooled connection.
  for (const how of ['fin', 'rst'] as const) {
    const conns: Socket[] = [];
    const staleServer = createNetServer((socket) => {
      conns.push(socket);
      let buf = '';
      let served = false;
      socket.on('error', () => {});
      socket.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        const got = parseOne(buf, 'request');
        if (!got) return;
        buf = buf.slice(got.used);
        if (served) {
          if (how === 'fin') socket.end(); else socket.resetAndDestroy();
          return;
        }
        served = true;
        socket.write('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh');
      });
    });
    await new Promise<void>((r) => staleServer.listen(0, '127.0.0.1', r));
    const stale = {
      url: `http://127.0.0.1:${(staleServer.address() as AddressInfo).port}`,
      connections: conns,
      close: () => new Promise<void>((r) => { for (const s of conns) s.destroy(); staleServer.close(() => r()); }),
    };
    const g = await startGateway(`
services:
  - name: stale
    url: ${stale.url}
    routes: [{paths: [/s]}]
`);
    try {
      const a = await fetch(`${g.url}/s/1`, { dispatcher: agent });
      assert.equal(await a.text(), 'fresh');
      // (the first connection is idle in the gateway's pool now)
      const b = await fetch(`${g.url}/s/2`, { dispatcher: agent });
      assert.equal(b.status, 200, `${how}: ${await b.clone().text()}`);
      assert.equal(await b.text(), 'fresh');
      assert.equal(stale.connections.length, 2, `${how}: the GET went once more, on a new connection`);
      // A POST on the (again kept-alive) connection may have been acted on: never sent twice.
      const c = await fetch(`${g.url}/s/3`, { dispatcher: agent, method: 'POST', body: 'x' });
      assert.equal(c.status, 502, how);
      await c.text();
      assert.equal(stale.connections.length, 2, `${how}: the POST was not sent again`);
      // A connection that fails before it answered anything is not "kept-alive": no second try.
      const fresh = await startRawOrigin((_d, socket) => { socket.end(); return null; });
      const g2 = await startGateway(`
services:
  - name: dead
    url: ${fresh.url}
    routes: [{paths: [/d]}]
`);
      try {
        const d = await fetch(`${g2.url}/d`, { dispatcher: agent });
        assert.equal(d.status, 502);
        await d.text();
        assert.equal(fresh.connections.length, 1);
      } finally {
        await g2.close();
        await fresh.close();
      }
    } finally {
      await g.close();
      await stale.close();
    }
  }
});

test('an answer that breaks off after some of its bytes is not a stale kept-alive connection: sent once (retries: 0), fresh or reused', { timeout: 15_000 }, async () => {
  // The origin answers the first request of each connection whole, then starts an answer to
  // the next and closes mid-head; with `partialFirst` the very first answer breaks off so.
  for (const partialFirst of [true, false]) {
    const conns: Socket[] = [];
    let requests = 0;
    const server = createNetServer((socket) => {
      conns.push(socket);
      let buf = '';
      let served = partialFirst;
      socket.on('error', () => {});
      socket.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        const got = parseOne(buf, 'request');
        if (!got) return;
        buf = buf.slice(got.used);
        requests++;
        if (served) {
          socket.end('HTTP/1.1 200 OK\r\nContent-Ty');
          return;
        }
        served = true;
        socket.write('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const g = await startGateway(`
services:
  - name: broken
    url: http://127.0.0.1:${(server.address() as AddressInfo).port}
    routes: [{paths: [/b]}]
`);
    try {
      if (!partialFirst) {
        const a = await fetch(`${g.url}/b/1`, { dispatcher: agent });
        assert.equal(await a.text(), 'fresh');
      }
      const before = requests;
      const b = await fetch(`${g.url}/b/2`, { dispatcher: agent });
      assert.equal(b.status, 502);
      await b.text();
      assert.equal(requests - before, 1, `partialFirst=${partialFirst}: the GET was sent again after an answer that broke off`);
      assert.equal(conns.length, 1, 'no second connection');
    } finally {
      await g.close();
      await new Promise<void>((r) => { for (const s of conns) s.destroy(); server.close(() => r()); });
    }
  }
});
