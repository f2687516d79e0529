/**
 * request-size-limit end to end: a gateway in-process (HTTP/1.1 and h2c), upstreams that record
 * what they receive (node:http, and a raw TCP origin for the exact bytes), raw-socket clients.
 */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { connect as h2connect, constants as h2constants, type ClientHttp2Session, type IncomingHttpHeaders } from 'node:http2';
import { connect, type Socket } from 'node:net';
import { parseConfigText } from '../../config/load.js';
import { compile } from '../../config/compile.js';
import { ConfigError } from '../../config/errors.js';
import { PoolRegistry } from '../../upstream/pools.js';
import {
  eventually, rawRequest, request, sleep, startGateway, startRawOrigin, startUpstream, statuses,
  type RawOrigin, type TestGateway, type TestUpstream,
} from '../../../test/helpers.js';

const T = { timeout: 20_000 };
const MAX = 1024;
const ALICE_KEY = 'alice-key-0001';
const BOB_KEY = 'bob-key-00002';

let up: TestUpstream;
/** Requests the upstream saw begin (complete or not): `up.requests` only has complete ones. */
let started = 0;
let origin: RawOrigin;
/** The origin's sockets, in connection order, with whether each closed. */
const originSockets: { socket: Socket; closed: boolean }[] = [];
let t: TestGateway;

/** Answers once a whole request (Content-Length or chunked) arrived, and closes: one request per connection. */
function respondWhenComplete(data: Buffer, socket: Socket): string | null {
  if (!originSockets.some((o) => o.socket === socket)) {
    const o = { socket, closed: false };
    originSockets.push(o);
    socket.once('close', () => (o.closed = true));
  }
  const text = data.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  if (end === -1) return null;
  const head = text.slice(0, end).toLowerCase();
  const body = text.slice(end + 4);
  const cl = /\r\ncontent-length: *(\d+)/.exec(head);
  const complete = /\r\ntransfer-encoding: *chunked/.test(head) ? body.endsWith('0\r\n\r\n') : body.length >= Number(cl?.[1] ?? 0);
  return complete ? 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok' : null;
}

const config = () => `http2: {h2c: true}
consumers:
  - name: alice
    credentials: [{type: key-auth, key: '${ALICE_KEY}'}]
    plugins: [{name: request-size-limit, config: {max: 100b}}]
  - name: bob
    credentials: [{type: key-auth, key: '${BOB_KEY}'}]
services:
  - name: s
    url: ${up.url}
    routes:
      - {name: limited, paths: [/limited], plugins: [{name: request-size-limit, config: {max: ${MAX}}}]}
      - {name: units, paths: [/units], plugins: [{name: request-size-limit, config: {max: 2kb}}]}
      - {name: auth, paths: [/auth], plugins: [{name: key-auth}, {name: request-size-limit, config: {max: 1kb}}]}
      - {name: open, paths: [/open]}
  - name: raw
    url: ${origin.url}
    routes:
      - {name: raw-limited, paths: [/raw], plugins: [{name: request-size-limit, config: {max: ${MAX}}}]}
`;

before(async () => {
  up = await startUpstream();
  up.server.on('request', () => started++);
  origin = await startRawOrigin(respondWhenComplete);
  t = await startGateway(config());
});
after(async () => {
  await t?.close();
  await up?.close();
  await origin?.close();
});

function assertTooLarge(status: number, body: string): void {
  assert.equal(status, 413, body);
  const p = JSON.parse(body) as { type: string; status: number; detail: string };
  assert.equal(p.type, 'urn:turnpike:problem:payload-too-large');
  assert.equal(p.status, 413);
  assert.match(p.detail, /larger than \d+ bytes/);
}

/** The body of a raw HTTP/1.1 response text (after the first blank line). */
const bodyOf = (raw: string) => raw.slice(raw.indexOf('\r\n\r\n') + 4);

test('Content-Length over max: 413 problem before any of the body is read; the upstream never called', T, async () => {
  const before = started;
  const r = await request(`${t.url}/limited`, { method: 'POST', body: Buffer.alloc(MAX + 1, 0x61) });
  assertTooLarge(r.status, r.body);
  assert.equal(r.headers['connection'], 'close');
  // Declared but not sent at all: answered at once from the header alone.
  const raw = await rawRequest(t.port, `POST /limited HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n`, 1000);
  assert.deepEqual(statuses(raw.text), [413]);
  assertTooLarge(413, bodyOf(raw.text));
  assert.ok(raw.closed, 'the connection stays open with an unread body on it');
  // Units: 2kb = 2048 bytes.
  assert.equal((await request(`${t.url}/units`, { method: 'POST', body: Buffer.alloc(2048) })).status, 200);
  assert.equal((await request(`${t.url}/units`, { method: 'POST', body: Buffer.alloc(2049) })).status, 413);
  assert.equal(started, before + 1, 'the upstream saw a refused request');
});

test('exactly max passes, byte for byte', T, async () => {
  const body = Buffer.alloc(MAX, 0x62);
  const r = await request(`${t.url}/limited`, { method: 'POST', body });
  assert.equal(r.status, 200, r.body);
  assert.equal((JSON.parse(r.body) as { body: string }).body, body.toString());
});

test('Expect: 100-continue with a Content-Length over max: 413 without a 100 first; under max: 100 then 200', T, async () => {
  const before = started;
  const big = await rawRequest(t.port, `POST /limited HTTP/1.1\r\nHost: x\r\nContent-Length: ${MAX + 1}\r\nExpect: 100-continue\r\n\r\n`, 1000);
  assert.deepEqual(statuses(big.text), [413], big.text);
  assert.doesNotMatch(big.text, /HTTP\/1\.1 100/);
  assert.equal(started, before);

  // Under max, the client waits for the 100 before sending the body.
  const small = await new Promise<string>((resolve, reject) => {
    const s = connect(t.port, '127.0.0.1');
    let got = '';
    s.on('connect', () => s.write(`POST /limited HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`));
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (got.startsWith('HTTP/1.1 100 ') && !got.includes('hello')) s.write('hello');
    });
    s.on('close', () => resolve(got));
    s.on('error', reject);
  });
  assert.deepEqual(statuses(small), [100, 200], small);
  assert.match(small, /"body":"hello"/);
});

/** Sends a chunked request in steps on a raw socket: each step is written, then `gapMs` waited. */
function chunkedRequest(path: string, chunks: Buffer[], gapMs: number, extraHead = ''): Promise<{ text: string; writeError: boolean }> {
  return new Promise((resolve) => {
    const s: Socket = connect(t.port, '127.0.0.1');
    let text = '';
    let writeError = false;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      s.destroy();
      resolve({ text, writeError });
    };
    s.on('data', (d) => (text += d.toString('latin1')));
    s.on('error', () => { writeError = true; });
    s.on('close', finish);
    s.on('connect', async () => {
      s.write(`POST ${path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n${extraHead}\r\n`);
      for (const c of chunks) {
        await sleep(gapMs);
        if (s.destroyed) break;
        s.write(`${c.length.toString(16)}\r\n`);
        s.write(c);
        s.write('\r\n');
      }
      if (!s.destroyed) s.write('0\r\n\r\n');
      // A keep-alive answer leaves the socket open: give it time, then stop.
      setTimeout(finish, 1500);
    });
  });
}

test('chunked body under max: passes intact (every byte value, many chunks)', T, async () => {
  const bytes = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 256));
  const parts = [bytes.subarray(0, 1), bytes.subarray(1, 300), bytes.subarray(300, 999), bytes.subarray(999)];
  const conns = origin.connections.length;
  const r = await chunkedRequest('/raw', parts, 20, 'Connection: close\r\n');
  assert.deepEqual(statuses(r.text), [200], r.text);
  // What the origin got: the same bytes (re-chunked, or with a length: decoded and compared).
  await eventually(() => origin.connections.length > conns);
  const got = Buffer.concat(origin.connections.slice(conns));
  const head = got.subarray(0, got.indexOf('\r\n\r\n')).toString('latin1').toLowerCase();
  let body: Buffer = got.subarray(got.indexOf('\r\n\r\n') + 4);
  if (/transfer-encoding: *chunked/.test(head)) body = dechunk(body);
  assert.equal(createHash('sha256').update(body).digest('hex'), createHash('sha256').update(bytes).digest('hex'));
});

/** Decodes a complete chunked body. */
function dechunk(b: Buffer): Buffer {
  const out: Buffer[] = [];
  let i = 0;
  for (;;) {
    const eol = b.indexOf('\r\n', i);
    const size = parseInt(b.subarray(i, eol).toString('latin1'), 16);
    if (!size) return Buffer.concat(out);
    out.push(b.subarray(eol + 2, eol + 2 + size));
    i = eol + 2 + size + 2;
  }
}

test('chunked body over max, sent at once: 413, no complete request reaches the upstream', T, async () => {
  const conns = origin.connections.length;
  const r = await chunkedRequest('/raw', [Buffer.alloc(MAX + 100, 0x63)], 0);
  assert.deepEqual(statuses(r.text), [413], r.text);
  assertTooLarge(413, bodyOf(r.text));
  await sleep(200);
  const got = Buffer.concat(origin.connections.slice(conns)).toString('latin1');
  report('chunked over max in one write', got);
  assert.ok(!got.endsWith('0\r\n\r\n'), 'the upstream received a complete (truncated) request');
});

test('chunked body over max after a first chunk went upstream: 413 to the client; the upstream sees a cut, never a complete request', T, async () => {
  const conns = origin.connections.length;
  const upBefore = up.requests.length;
  const r = await chunkedRequest('/raw', [Buffer.alloc(600, 0x64), Buffer.alloc(600, 0x65)], 150);
  assert.deepEqual(statuses(r.text), [413], r.text);
  await sleep(200);
  const got = Buffer.concat(origin.connections.slice(conns)).toString('latin1');
  report('chunked over max in two writes 150 ms apart', got);
  assert.ok(!got.endsWith('0\r\n\r\n'), 'the upstream received a complete (truncated) request');
  assert.ok(!got.includes('e'.repeat(600)), 'the chunk past the limit reached the upstream');
  // The upstream connection with the cut body on it is closed, never reused for another request.
  const sock = originSockets[originSockets.length - 1]!;
  await eventually(() => sock.closed, 2000);

  // The same through a node:http upstream: its request never ends normally.
  const r2 = await chunkedRequest('/limited', [Buffer.alloc(600, 0x64), Buffer.alloc(600, 0x65)], 150);
  assert.deepEqual(statuses(r2.text), [413], r2.text);
  await sleep(200);
  assert.equal(up.requests.length, upBefore, 'the node:http upstream saw a complete request');
});

/** What an upstream received, summarized for the report (TURNPIKE_TEST_REPORT=1 prints it). */
function report(what: string, raw: string): void {
  const end = raw.indexOf('\r\n\r\n');
  const summary = end === -1 ? `${raw.length} bytes, no complete head` : `head ${JSON.stringify(raw.slice(0, end).split('\r\n')[0])}, ${raw.length - end - 4} body bytes (framing included), ends ${JSON.stringify(raw.slice(-12))}`;
  if (process.env['TURNPIKE_TEST_REPORT']) console.log(`# upstream after ${what}: ${summary}`);
}

test('bound to a consumer: the smaller limit applies once authenticated', T, async () => {
  const alice = await request(`${t.url}/auth`, { method: 'POST', headers: { apikey: ALICE_KEY }, body: Buffer.alloc(500) });
  assertTooLarge(alice.status, alice.body);
  const bob = await request(`${t.url}/auth`, { method: 'POST', headers: { apikey: BOB_KEY }, body: Buffer.alloc(500) });
  assert.equal(bob.status, 200, bob.body);
  // The route's 1kb still holds for bob; and without a key auth answers first (401, not 413).
  assert.equal((await request(`${t.url}/auth`, { method: 'POST', headers: { apikey: BOB_KEY }, body: Buffer.alloc(1025) })).status, 413);
  assert.equal((await request(`${t.url}/auth`, { method: 'POST', body: Buffer.alloc(5000) })).status, 401);
});

async function h2(): Promise<ClientHttp2Session> {
  const c = h2connect(t.url);
  c.on('error', () => {});
  await new Promise<void>((r, j) => { c.once('connect', () => r()); c.once('error', j); });
  return c;
}

interface H2Result { status: number | undefined; body: string; rstCode: number | undefined; error: string | undefined }

/** POSTs DATA frames (no content-length unless given) with gaps; resolves however the stream ends. */
function h2post(c: ClientHttp2Session, path: string, chunks: Buffer[], gapMs: number, headers: Record<string, string> = {}): Promise<H2Result> {
  return new Promise((resolve) => {
    const s = c.request({ ':method': 'POST', ':path': path, ...headers });
    let status: number | undefined;
    let body = '';
    let error: string | undefined;
    s.on('response', (h: IncomingHttpHeaders) => { status = Number(h[':status']); });
    s.on('data', (d: Buffer) => (body += d.toString()));
    s.on('error', (e) => { error = (e as NodeJS.ErrnoException).code ?? e.message; });
    s.on('close', () => resolve({ status, body, rstCode: s.rstCode, error }));
    void (async () => {
      for (const chunk of chunks) {
        await sleep(gapMs);
        if (s.closed || s.destroyed) return;
        s.write(chunk);
      }
      if (!s.closed && !s.destroyed) s.end();
    })();
  });
}

test('HTTP/2 (h2c): a body without content-length over max is answered 413 as it crosses the limit', T, async () => {
  const c = await h2();
  try {
    const upBefore = up.requests.length;
    const r = await h2post(c, '/limited', [Buffer.alloc(600), Buffer.alloc(600), Buffer.alloc(600)], 100);
    if (process.env['TURNPIKE_TEST_REPORT']) console.log(`# h2 over max: status ${r.status}, rst ${r.rstCode}, error ${r.error}`);
    assert.equal(r.status, 413, JSON.stringify(r));
    assertTooLarge(r.status!, r.body);
    // The stream is then reset (NO_ERROR or CANCEL: the rest of the body is not wanted) or ends.
    assert.ok(r.rstCode === undefined || [h2constants.NGHTTP2_NO_ERROR, h2constants.NGHTTP2_CANCEL].includes(r.rstCode), `rst ${r.rstCode}`);
    await sleep(100);
    assert.equal(up.requests.length, upBefore, 'the upstream saw a complete request');

    // The session survives for the next stream.
    const ok = await h2post(c, '/limited', [Buffer.alloc(500), Buffer.alloc(500)], 20);
    assert.equal(ok.status, 200, JSON.stringify(ok));
    assert.equal((JSON.parse(ok.body) as { body: string }).body.length, 1000);

    // A declared content-length over max: 413 before any DATA is sent.
    const declared = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const s = c.request({ ':method': 'POST', ':path': '/limited', 'content-length': String(MAX + 1) });
      let body = '';
      s.on('response', (h) => {
        s.on('data', (d: Buffer) => (body += d.toString()));
        s.on('end', () => resolve({ status: Number(h[':status']), body }));
      });
      s.on('error', reject);
    });
    assertTooLarge(declared.status, declared.body);
  } finally {
    c.close();
  }
});

// ---- config errors -------------------------------------------------------------------------

function issuesOf(text: string): { path: string; message: string }[] {
  const pools = new PoolRegistry();
  try {
    compile(parseConfigText(text, { env: {} }), { pools }).dispose();
    return [];
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.issues;
  } finally {
    void pools.closeAll();
  }
}

test('config: max is required and is a size', T, () => {
  const at = 'plugins[0].config';
  assert.ok(issuesOf('plugins: [{name: request-size-limit}]').some((i) => i.path.startsWith(at)));
  assert.ok(issuesOf('plugins: [{name: request-size-limit, config: {max: 10 megs}}]').some((i) => i.path === `${at}.max`));
  assert.ok(issuesOf('plugins: [{name: request-size-limit, config: {max: -1}}]').some((i) => i.path === `${at}.max`));
  assert.deepEqual(issuesOf('plugins: [{name: request-size-limit, config: {max: 1.5mb}}]'), []);
});
