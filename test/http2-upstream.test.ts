/**
 * HTTP/2 upstreams (h2c, grpc) under clients that go away or do not read: cancels reach the
 * upstream as RST_STREAM CANCEL, and the upstream is held back by flow control (gateway memory
 * bounded) while the body and trailers still reach a slow client whole.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { connect as h2connect, constants as h2constants, createServer as createH2Server, type ServerHttp2Stream, type Settings } from 'node:http2';
import { request as httpRequest } from 'node:http';
import { createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rawRequest, startGateway } from './helpers.js';
import { H2_CANCEL, H2_ENHANCE_YOUR_CALM, H2_INTERNAL_ERROR, H2_NO_ERROR, H2_PROTOCOL_ERROR, H2_REFUSED_STREAM, startRawH2Origin, type RawH2Stream } from './h2-raw-origin.js';

interface Upstream {
  url: string;
  /** Streams opened, and those closed with their RST_STREAM code (0: none, or NO_ERROR). */
  opened: number;
  closed: number[];
  /** Body bytes the handlers wrote (each write waits for 'drain': what the gateway was sent, within a window). */
  written: number;
  close(): Promise<void>;
}

/**
 * A node:http2 upstream. `/forever`: streams without end, writing only when the stream drains
 * (a response that waits on flow control); `/ok`: a short answer; `/silent`: 1 KiB, then
 * nothing; `/grpc/<bytes>`: a gRPC-like answer, `bytes` of patterned body (written as the
 * stream drains) then trailers (grpc-status, grpc-message and the body's sha256).
 */
async function h2upstream(settings: Settings = {}): Promise<Upstream> {
  const server = createH2Server({ settings });
  const sessions = new Set<{ destroy(): void }>();
  server.on('session', (s) => { sessions.add(s); s.on('close', () => sessions.delete(s)); });
  const up: Upstream = {
    url: '', opened: 0, closed: [], written: 0,
    close: () => new Promise<void>((r) => { for (const s of sessions) s.destroy(); server.close(() => r()); }),
  };
  server.on('stream', (stream: ServerHttp2Stream, headers) => {
    up.opened++;
    stream.on('error', () => {});
    stream.on('close', () => up.closed.push(stream.rstCode ?? 0));
    const path = String(headers[':path']);
    if (path === '/ok') {
      stream.respond({ ':status': 200 });
      stream.end('ok');
      return;
    }
    if (path === '/length') {
      // answers once the request body has ended: its length
      let n = 0;
      stream.on('data', (c: Buffer) => (n += c.length));
      stream.on('end', () => {
        stream.respond({ ':status': 200 });
        stream.end(String(n));
      });
      return;
    }
    if (path === '/silent') {
      stream.respond({ ':status': 200 });
      stream.write('x'.repeat(1024)); // then nothing, the stream left open
      return;
    }
    const grpc = /^\/grpc\/(\d+)$/.exec(path);
    if (grpc) {
      const body = pattern(Number(grpc[1]));
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'grpc-message': 'all%20sent', 'x-sha256': sha(body) }));
      let at = 0;
      const pump = (): void => {
        while (at < body.length && !stream.destroyed) {
          const chunk = body.subarray(at, at + 16384);
          at += chunk.length;
          up.written += chunk.length;
          if (!stream.write(chunk)) return;
        }
        if (at >= body.length) stream.end();
      };
      stream.on('drain', pump);
      pump();
      return;
    }
    stream.respond({ ':status': 200, 'content-type': 'application/octet-stream' });
    const chunk = Buffer.alloc(16384, 120);
    const pump = (): void => {
      while (!stream.destroyed) {
        up.written += chunk.length;
        if (!stream.write(chunk)) return;
      }
    };
    stream.on('drain', pump);
    pump();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  up.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return up;
}

/** Bytes that show a dropped, repeated or reordered chunk (not one repeated value). */
function pattern(n: number): Buffer {
  let b = patterns.get(n);
  if (b === undefined) {
    b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = (i * 7 + (i >> 14)) & 0xff;
    patterns.set(n, b);
  }
  return b;
}
const patterns = new Map<number, Buffer>();
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function until(what: string, cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A plain GET through the gateway: status and body. */
function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, (res) => {
      let body = '';
      res.setEncoding('latin1');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('clients that cancel mid-response (HTTP/1.1 connection closed, HTTP/2 stream reset): each upstream stream is reset with CANCEL, and 110 of them do not use up its 100 concurrent streams', async () => {
  // (SETTINGS_MAX_CONCURRENT_STREAMS 100, as many servers advertise.) A stream reset with
  // NO_ERROR is, to a node:http2 server, a client done sending: a response whose writes wait on
  // flow control never finishes, the stream stays open and counts against the limit.
  const up = await h2upstream({ maxConcurrentStreams: 100 });
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: up, url: '${up.url}', protocol: h2c, retries: 0, routes: [{paths: [/]}]}
`);
  try {
    const cancelOne = (i: number): Promise<void> => new Promise<void>((resolve) => {
      if (i % 2 === 0) {
        // HTTP/1.1: the client closes its connection once the body has started.
        const req = httpRequest(`${g.url}/forever`, (res) => res.once('data', () => { req.destroy(); resolve(); }));
        req.on('error', () => {});
        req.end();
      } else {
        // HTTP/2: the client resets its stream (the connection stays).
        const session = h2connect(g.url);
        session.on('error', () => {});
        const s = session.request({ ':path': '/forever' });
        s.on('error', () => {});
        s.once('data', () => {
          s.close(h2constants.NGHTTP2_CANCEL);
          s.on('close', () => { session.close(); resolve(); });
        });
      }
    });
    for (let i = 0; i < 110; i += 10) await Promise.all(Array.from({ length: 10 }, (_, k) => cancelOne(i + k)));
    await until('the upstream to see every cancelled stream closed', () => up.closed.length >= 110, 5000);
    assert.deepEqual([...new Set(up.closed)], [h2constants.NGHTTP2_CANCEL], 'RST_STREAM codes the upstream saw');
    // The upstream connection still takes streams.
    const after = await get(`${g.url}/ok`);
    assert.equal(after.status, 200, after.body);
    assert.equal(after.body, 'ok');
  } finally {
    await g.close();
    await up.close();
  }
});

test('a client that reads none of 100 HTTP/2 streams from an HTTP/2 upstream: the upstream is held back by flow control (gateway memory bounded), and the streams are cut after timeouts.read', async () => {
  const up = await h2upstream();
  const g = await startGateway(`
http2: {h2c: true}
services:
  - name: up
    protocol: grpc
    retries: 0
    timeouts: {read: 1500ms}
    # (a stall charged to the target would eject it, and the circuit would open)
    upstream: {targets: [{url: '${up.url}'}], healthcheck: {passive: {failures: 3}}}
    circuit_breaker: {min_requests: 20}
    routes: [{paths: [/]}]
`);
  const STREAMS = 100;
  const BODY = 8 * 1024 * 1024;
  const session = h2connect(g.url);
  session.on('error', () => {});
  try {
    const rss0 = process.memoryUsage().rss;
    const outcomes: Promise<{ ended: boolean }>[] = [];
    for (let i = 0; i < STREAMS; i++) {
      const s = session.request({ ':method': 'POST', ':path': `/grpc/${BODY}`, 'content-type': 'application/grpc', te: 'trailers' });
      s.end(Buffer.from([0, 0, 0, 0, 0]));
      s.on('error', () => {});
      // Never read: no 'data' listener, the stream stays paused (its window is not given back).
      outcomes.push(new Promise((resolve) => {
        let ended = false;
        s.on('trailers', () => (ended = true));
        s.on('close', () => resolve({ ended: ended && s.rstCode === h2constants.NGHTTP2_NO_ERROR }));
      }));
    }
    await until('every stream to reach the upstream', () => up.opened >= STREAMS, 5000);
    // Let the upstream send all it can (until it stops for a moment, or for 5 s), then measure
    // what left it.
    let last = -1;
    for (let i = 0; i < 50 && (up.written === 0 || up.written !== last); i++) {
      last = up.written;
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, 300));
    const written = up.written;
    const grown = process.memoryUsage().rss - rss0;
    // Per stream: the gateway's stream window (256 KiB), the upstream's and the gateway's write
    // buffers, the client's window (64 KiB). Without backpressure the whole 8 MiB bodies came.
    assert.ok(written < STREAMS * 1024 * 1024, `the upstream sent ${written} bytes for ${STREAMS} streams nobody reads`);
    assert.ok(grown < 256 * 1024 * 1024, `RSS grew by ${grown} bytes`);
    // The read timeout applies to the client too: every stream is cut (none ends as complete),
    // and the upstream sees each cancelled.
    const results = await Promise.race([
      Promise.all(outcomes),
      new Promise<null>((r) => setTimeout(() => r(null), 6000)),
    ]);
    assert.ok(results !== null, 'the streams of a client that reads nothing were not cut after timeouts.read');
    assert.equal(results.filter((r) => r.ended).length, 0);
    await until('the upstream streams to close', () => up.closed.length >= STREAMS, 3000);
    assert.deepEqual([...new Set(up.closed)], [h2constants.NGHTTP2_CANCEL]);
    console.log(`# ${STREAMS} unread streams: upstream sent ${(written / 1048576).toFixed(1)} MiB, RSS +${(grown / 1048576).toFixed(1)} MiB`);
    // The client's stall is not the target's failure.
    const after = await get(`${g.url}/ok`);
    assert.equal(after.status, 200, after.body);
  } finally {
    session.destroy();
    await g.close();
    await up.close();
  }
});

test('a slow-reading client gets an HTTP/2 upstream\'s gRPC body byte-exact and its trailers (HTTP/2 and HTTP/1.1 clients), with the upstream held back meanwhile', async () => {
  const up = await h2upstream();
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: up, url: '${up.url}', protocol: grpc, retries: 0, routes: [{paths: [/]}]}
`);
  const BODY = 6 * 1024 * 1024;
  const expected = pattern(BODY);
  try {
    // Reads 64 KiB, then nothing for 8 ms: far slower than the upstream sends.
    const slowly = (onChunk: (c: Buffer) => void, pause: () => void, resume: () => void): (c: Buffer) => void => {
      let since = 0;
      return (c: Buffer) => {
        onChunk(c);
        since += c.length;
        if (since >= 65536) {
          since = 0;
          pause();
          setTimeout(resume, 8);
        }
      };
    };
    let lead = 0;
    const watch = (received: number): void => { lead = Math.max(lead, up.written - received); };

    // HTTP/2 client.
    const session = h2connect(g.url);
    try {
      const start = up.written;
      const r = await new Promise<{ status: number; body: Buffer; trailers: Record<string, unknown>; rstCode: number | undefined }>((resolve, reject) => {
        const s = session.request({ ':method': 'POST', ':path': `/grpc/${BODY}`, 'content-type': 'application/grpc', te: 'trailers' });
        s.end(Buffer.from([0, 0, 0, 0, 0]));
        const chunks: Buffer[] = [];
        let got = 0;
        let status = 0;
        let trailers: Record<string, unknown> = {};
        s.on('response', (h) => (status = Number(h[':status'])));
        s.on('trailers', (t) => (trailers = t));
        s.on('data', slowly((c) => { chunks.push(c); got += c.length; watch(got + start); }, () => s.pause(), () => s.resume()));
        s.on('error', reject);
        s.on('close', () => resolve({ status, body: Buffer.concat(chunks), trailers, rstCode: s.rstCode }));
      });
      assert.equal(r.status, 200);
      assert.equal(r.rstCode, h2constants.NGHTTP2_NO_ERROR);
      assert.equal(r.body.length, BODY, 'body length');
      assert.ok(r.body.equals(expected), 'body bytes');
      assert.equal(r.trailers['grpc-status'], '0');
      assert.equal(r.trailers['grpc-message'], 'all%20sent');
      assert.equal(r.trailers['x-sha256'], sha(expected));
    } finally {
      session.close();
    }
    // The upstream never ran far ahead of the client: the gateway paused it (without, the whole
    // body came at once).
    assert.ok(lead < 1024 * 1024, `the upstream ran ${lead} bytes ahead of a slow client`);
    console.log(`# slow HTTP/2 reader: the upstream ran at most ${(lead / 1024).toFixed(0)} KiB ahead`);

    // A client that reads nothing for a while: the whole body (within the gateway's stream
    // window) and the trailers arrive while the gateway holds the stream paused. With the
    // request still open, the upstream also resets the stream with NO_ERROR once it answered
    // (RFC 9113 §8.1; node:http2 does it for a request it did not read): 'aborted' at the
    // gateway. That client's stream is reset with NO_ERROR too once answered, after the
    // trailers (a bidi gRPC call the server finishes first gets its grpc-status).
    for (const requestOpen of [false, true]) {
      const late = h2connect(g.url);
      try {
        const SMALL = 200 * 1024;
        const r = await new Promise<{ body: Buffer; trailers: Record<string, unknown> }>((resolve, reject) => {
          const s = late.request({ ':method': 'POST', ':path': `/grpc/${SMALL}`, 'content-type': 'application/grpc', te: 'trailers' });
          if (requestOpen) s.write(Buffer.from([0, 0, 0, 0, 0]));
          else s.end(Buffer.from([0, 0, 0, 0, 0]));
          const chunks: Buffer[] = [];
          let trailers: Record<string, unknown> = {};
          s.on('trailers', (t) => (trailers = t));
          s.on('response', () => setTimeout(() => s.on('data', (c: Buffer) => chunks.push(c)), 300));
          s.on('end', () => {
            resolve({ body: Buffer.concat(chunks), trailers });
            s.close();
          });
          s.on('error', reject);
          s.on('close', () => reject(new Error(`closed before its end (${s.rstCode})`)));
        });
        const what = requestOpen ? 'late reader, request open' : 'late reader';
        assert.equal(r.body.length, SMALL, `body length (${what})`);
        assert.ok(r.body.equals(pattern(SMALL)), `body bytes (${what})`);
        assert.equal(r.trailers['x-sha256'], sha(pattern(SMALL)), what);
        assert.equal(r.trailers['grpc-status'], '0', what);
      } finally {
        late.close();
      }
    }

    // HTTP/1.1 client (chunked, trailers after the last chunk). (Its lead is not measured: the
    // sockets' kernel buffers on loopback hold megabytes.)
    const r1 = await new Promise<{ status: number; body: Buffer; trailers: Record<string, string | undefined> }>((resolve, reject) => {
      const req = httpRequest(`${g.url}/grpc/${BODY}`, { method: 'POST', headers: { 'content-type': 'application/grpc', te: 'trailers' } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', slowly((c) => chunks.push(c), () => res.pause(), () => res.resume()));
        res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks), trailers: res.trailers }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(r1.status, 200);
    assert.equal(r1.body.length, BODY, 'body length (HTTP/1.1)');
    assert.ok(r1.body.equals(expected), 'body bytes (HTTP/1.1)');
    assert.equal(r1.trailers['grpc-status'], '0');
    assert.equal(r1.trailers['x-sha256'], sha(expected));
  } finally {
    await g.close();
    await up.close();
  }
});

test('a client reading an HTTP/2 upstream\'s answer slowly, each pause shorter than timeouts.read, is not cut however long it takes to read what the gateway holds', async () => {
  const up = await h2upstream();
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: up, url: '${up.url}', protocol: grpc, retries: 0, timeouts: {read: 300ms}, routes: [{paths: [/]}]}
`);
  const BODY = 512 * 1024;
  const session = h2connect(g.url);
  try {
    // 16 KiB every 40 ms: what the gateway holds once the upstream is done (its stream window,
    // ~256 KiB) takes well over 300 ms to go out, with no byte from the upstream meanwhile.
    const t0 = Date.now();
    const r = await new Promise<{ body: Buffer; trailers: Record<string, unknown>; rstCode: number | undefined }>((resolve, reject) => {
      const s = session.request({ ':method': 'POST', ':path': `/grpc/${BODY}`, 'content-type': 'application/grpc', te: 'trailers' });
      s.end(Buffer.from([0, 0, 0, 0, 0]));
      const chunks: Buffer[] = [];
      let trailers: Record<string, unknown> = {};
      s.on('trailers', (t) => (trailers = t));
      s.on('data', (c: Buffer) => {
        chunks.push(c);
        s.pause();
        setTimeout(() => s.resume(), 40);
      });
      s.on('error', reject);
      s.on('close', () => resolve({ body: Buffer.concat(chunks), trailers, rstCode: s.rstCode }));
    });
    assert.ok(Date.now() - t0 > 600, 'the client read slowly');
    assert.equal(r.rstCode, h2constants.NGHTTP2_NO_ERROR);
    assert.equal(r.body.length, BODY);
    assert.ok(r.body.equals(pattern(BODY)));
    assert.equal(r.trailers['x-sha256'], sha(pattern(BODY)));
  } finally {
    session.close();
    await g.close();
    await up.close();
  }
});

test('an HTTP/2 upstream silent mid-body past timeouts.read: the client\'s stream is cut (never ended as complete) and the upstream stream cancelled', async () => {
  const up = await h2upstream();
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: up, url: '${up.url}', protocol: h2c, retries: 0, timeouts: {read: 300ms}, routes: [{paths: [/]}]}
`);
  const session = h2connect(g.url);
  session.on('error', () => {});
  try {
    const t0 = Date.now();
    const r = await new Promise<{ got: number; ended: boolean }>((resolve) => {
      const s = session.request({ ':path': '/silent' });
      let got = 0;
      let ended = false;
      s.on('data', (c: Buffer) => (got += c.length));
      s.on('end', () => (ended = s.rstCode === undefined || s.rstCode === h2constants.NGHTTP2_NO_ERROR));
      s.on('error', () => {});
      s.on('close', () => resolve({ got, ended }));
    });
    assert.equal(r.got, 1024);
    assert.equal(r.ended, false);
    assert.ok(Date.now() - t0 < 3000, `cut after ${Date.now() - t0} ms`);
    await until('the upstream stream to close', () => up.closed.length >= 1, 2000);
    assert.deepEqual(up.closed, [h2constants.NGHTTP2_CANCEL]);
  } finally {
    session.destroy();
    await g.close();
    await up.close();
  }
});

test('an empty request body whose end is known before the upstream stream opens still ends it (undici sent no END_STREAM: the upstream waited until 504)', async () => {
  const up = await h2upstream();
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: up, url: '${up.url}', protocol: h2c, retries: 0, timeouts: {response: 3s}, routes: [{paths: [/]}]}
`);
  const session = h2connect(g.url);
  session.on('error', () => {});
  try {
    // HTTP/2 client: HEADERS without END_STREAM, then an empty DATA frame with it. The first
    // request also waits for the upstream connection, so its body has ended by then.
    for (const method of ['POST', 'PUT', 'DELETE']) {
      const t0 = Date.now();
      const r = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const s = session.request({ ':method': method, ':path': '/length' }, { endStream: false });
        let body = '';
        let status = 0;
        s.on('response', (h) => (status = Number(h[':status'])));
        s.setEncoding('latin1');
        s.on('data', (d: string) => (body += d));
        s.on('end', () => resolve({ status, body }));
        s.on('error', reject);
        s.end();
      });
      assert.deepEqual(r, { status: 200, body: '0' }, method);
      assert.ok(Date.now() - t0 < 2000, `${method}: ${Date.now() - t0} ms`);
    }
    // HTTP/1.1 client: a chunked body that is only its last chunk
    const raw = await new Promise<string>((resolve, reject) => {
      const req = httpRequest(`${g.url}/length`, { method: 'POST', headers: { 'transfer-encoding': 'chunked' } }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve(`${res.statusCode} ${body}`));
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(raw, '200 0');
  } finally {
    session.destroy();
    await g.close();
    await up.close();
  }
});

/**
 * How an HTTP/2 upstream breaks off its response after 10 body bytes: RST_STREAM with a code
 * (no END_STREAM before it), a GOAWAY then the connection closed, or the connection closed or
 * reset outright. 'whole' ends the body with END_STREAM (and 'whole-then-rst' resets the
 * stream with NO_ERROR after that, which is allowed: RFC 9113 §8.1).
 */
const CUTS: Record<string, (s: RawH2Stream) => void> = {
  'rst-no-error': (s) => s.rst(H2_NO_ERROR),
  'rst-cancel': (s) => s.rst(H2_CANCEL),
  'rst-internal-error': (s) => s.rst(H2_INTERNAL_ERROR),
  'rst-protocol-error': (s) => s.rst(H2_PROTOCOL_ERROR),
  'rst-refused-stream': (s) => s.rst(H2_REFUSED_STREAM),
  'rst-enhance-your-calm': (s) => s.rst(H2_ENHANCE_YOUR_CALM),
  'goaway-then-fin': (s) => (s.goaway(H2_NO_ERROR), s.end()),
  'connection-fin': (s) => s.end(),
  'connection-reset': (s) => s.destroy(),
};

/**
 * The RST_STREAM code an HTTP/2 client gets for each break: the upstream's when it means
 * something to the client (it refused the stream, or sheds load), else INTERNAL_ERROR — a
 * PROTOCOL_ERROR is the upstream connection's, never the client's; a CANCEL goes on only to gRPC
 * calls (test/grpc.test.ts): a node:http2 client ends a body reset with CANCEL as if it were whole.
 */
const CLIENT_RST: Record<string, number> = { 'rst-refused-stream': H2_REFUSED_STREAM, 'rst-enhance-your-calm': H2_ENHANCE_YOUR_CALM };

/** A raw HTTP/2 origin: `script` picks the break per request (by the count of requests it saw). */
async function breakingOrigin(script: (index: number) => { cut: string; length?: number }) {
  return startRawH2Origin((s) => {
    const { cut, length } = script(s.index);
    s.headers(200, { 'content-type': 'text/plain', ...(length !== undefined ? { 'content-length': String(length) } : {}) });
    s.data('0123456789');
    setTimeout(() => {
      if (cut === 'whole') s.data('', true);
      else if (cut === 'whole-then-rst') (s.data('', true), s.rst(H2_NO_ERROR));
      else CUTS[cut]!(s);
    }, 50);
  });
}

/** An HTTP/2 client's view of one request: status, body bytes, END_STREAM seen, RST_STREAM code. */
function h2get(url: string, path: string): Promise<{ status: number; got: number; ended: boolean; rstCode: number | undefined }> {
  return new Promise((resolve) => {
    const session = h2connect(url);
    session.on('error', () => {});
    const s = session.request({ ':path': path });
    let status = 0;
    let got = 0;
    let ended = false;
    s.on('response', (h) => (status = Number(h[':status'])));
    s.on('data', (c: Buffer) => (got += c.length));
    s.on('end', () => (ended = true));
    s.on('error', () => {});
    s.on('close', () => {
      resolve({ status, got, ended, rstCode: s.rstCode });
      session.destroy();
    });
  });
}

test('an HTTP/2 upstream that breaks off a body without Content-Length (RST_STREAM NO_ERROR / CANCEL / INTERNAL_ERROR / PROTOCOL_ERROR / REFUSED_STREAM / ENHANCE_YOUR_CALM, GOAWAY, connection closed or reset): HTTP/1.1 clients get no last chunk and a closed connection, HTTP/2 clients RST_STREAM with the upstream\'s REFUSED_STREAM or ENHANCE_YOUR_CALM, else INTERNAL_ERROR, never END_STREAM', async () => {
  let cut = '';
  const up = await breakingOrigin(() => ({ cut }));
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: up, url: '${up.url}', protocol: h2c, retries: 0, routes: [{paths: [/]}]}
`);
  try {
    for (const c of ['whole', 'whole-then-rst']) {
      cut = c;
      const h1 = await rawRequest(g.port, 'GET /x HTTP/1.1\r\nhost: gw.test\r\n\r\n', 500);
      assert.match(h1.text, /^HTTP\/1\.1 200 [\s\S]*\r\n\r\na\r\n0123456789\r\n0\r\n\r\n$/, `${c}: ${JSON.stringify(h1.text)}`);
      assert.equal(h1.closed, false, c);
      assert.deepEqual(await h2get(g.url, '/x'), { status: 200, got: 10, ended: true, rstCode: h2constants.NGHTTP2_NO_ERROR }, c);
    }
    for (const c of Object.keys(CUTS)) {
      cut = c;
      const h1 = await rawRequest(g.port, 'GET /x HTTP/1.1\r\nhost: gw.test\r\n\r\n', 3000);
      assert.match(h1.text, /^HTTP\/1\.1 200 /, `${c}: ${JSON.stringify(h1.text)}`);
      assert.match(h1.text, /transfer-encoding: chunked/i, c);
      assert.ok(h1.text.endsWith('\r\n\r\na\r\n0123456789\r\n'), `${c}: the body went on or was ended as complete: ${JSON.stringify(h1.text)}`);
      assert.equal(h1.closed, true, `${c}: the connection was kept`);
      assert.deepEqual(await h2get(g.url, '/x'), { status: 200, got: 10, ended: false, rstCode: CLIENT_RST[c] ?? H2_INTERNAL_ERROR }, c);
    }
  } finally {
    await g.close();
    await up.close();
  }
});

test('an HTTP/2 upstream that breaks off a body shorter than its Content-Length: the HTTP/1.1 client\'s connection closes before the length, the HTTP/2 client\'s stream is reset', async () => {
  let cut = '';
  const up = await breakingOrigin(() => ({ cut, length: 100 }));
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: up, url: '${up.url}', protocol: h2c, retries: 0, routes: [{paths: [/]}]}
`);
  try {
    for (const c of Object.keys(CUTS)) {
      cut = c;
      const h1 = await rawRequest(g.port, 'GET /x HTTP/1.1\r\nhost: gw.test\r\n\r\n', 3000);
      assert.match(h1.text, /^HTTP\/1\.1 200 [\s\S]*content-length: 100\r\n[\s\S]*\r\n\r\n0123456789$/i, `${c}: ${JSON.stringify(h1.text)}`);
      assert.equal(h1.closed, true, c);
      assert.deepEqual(await h2get(g.url, '/x'), { status: 200, got: 10, ended: false, rstCode: CLIENT_RST[c] ?? H2_INTERNAL_ERROR }, c);
    }
  } finally {
    await g.close();
    await up.close();
  }
});

test('an HTTP/2 upstream stream reset mid-body (NO_ERROR, INTERNAL_ERROR) counts against the target: a passive-health failure each, access log error response-cut', async () => {
  const up = await breakingOrigin((i) => ({ cut: ['rst-no-error', 'rst-internal-error'][i] ?? 'whole' }));
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-h2cut-'));
  const log = join(dir, 'access.log');
  const g = await startGateway(`
access_log: {destination: file, path: ${log}}
admin: {listen: 127.0.0.1:0}
services:
  - name: up
    protocol: h2c
    retries: 0
    upstream: {targets: [{url: '${up.url}'}], healthcheck: {passive: {failures: 3}}}
    routes: [{paths: [/]}]
`);
  const failures = async (): Promise<number> => {
    const r = await new Promise<string>((resolve, reject) => {
      httpRequest(`${g.adminUrl}/health`, (res) => {
        let b = '';
        res.on('data', (d: Buffer) => (b += d));
        res.on('end', () => resolve(b));
      }).on('error', reject).end();
    });
    return (JSON.parse(r) as { targets: Record<string, { failures: number }> }).targets[`up|${up.url}`]!.failures;
  };
  try {
    const first = await rawRequest(g.port, 'GET /x HTTP/1.1\r\nhost: gw.test\r\n\r\n', 3000);
    assert.ok(first.closed && first.text.endsWith('\r\n\r\na\r\n0123456789\r\n'), JSON.stringify(first.text));
    assert.equal(await failures(), 1);
    const again = await rawRequest(g.port, 'GET /x HTTP/1.1\r\nhost: gw.test\r\n\r\n', 3000);
    assert.ok(again.closed && again.text.endsWith('\r\n\r\na\r\n0123456789\r\n'), JSON.stringify(again.text));
    assert.equal(await failures(), 2);
    // a whole answer clears the count
    const second = await rawRequest(g.port, 'GET /x HTTP/1.1\r\nhost: gw.test\r\n\r\n', 500);
    assert.ok(second.text.endsWith('\r\n0\r\n\r\n'), JSON.stringify(second.text));
    assert.equal(await failures(), 0);
    await until('three access log lines', () => { try { return readFileSync(log, 'utf8').trim().split('\n').length >= 3; } catch { return false; } }, 3000);
    const [cut, cut2, whole] = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const l of [cut!, cut2!]) {
      assert.equal(l.status, 200);
      assert.equal(l.error, 'response-cut');
      assert.equal(l.upstream, up.url);
    }
    assert.equal(whole!.error, null);
  } finally {
    await g.close();
    await up.close();
  }
});

test('an HTTP/2 upstream stream refused (RST_STREAM REFUSED_STREAM: nothing processed, RFC 9113 §8.7) is sent again under retries, whatever the method; without retries a 502 that says so to an HTTP/1.1 client, REFUSED_STREAM itself to an HTTP/2 client (which may send it again)', async () => {
  const REFUSED_STREAM = 0x7;
  const refuse = new Set<number>([0, 2]);
  const origin = await startRawH2Origin((s) => {
    if (refuse.has(s.index)) return s.rst(REFUSED_STREAM);
    s.headers(200, { 'content-length': '2' });
    s.data('ok', true);
  });
  const gw = await startGateway(`
http2: {h2c: true}
services:
  - {name: h2r, url: '${origin.url}', protocol: h2c, retries: 1, routes: [{paths: [/r]}]}
  - {name: h2n, url: '${origin.url}', protocol: h2c, routes: [{paths: [/n]}]}
`);
  try {
    const get = await rawRequest(gw.port, 'GET /r HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(get.text, /^HTTP\/1\.1 200 /, get.text);
    // a POST without a body: refused, nothing was processed, so it goes again too
    const post = await rawRequest(gw.port, 'POST /r HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    assert.match(post.text, /^HTTP\/1\.1 200 /, post.text);
    refuse.add(4);
    const none = await rawRequest(gw.port, 'GET /n HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(none.text, /^HTTP\/1\.1 502 /);
    assert.match(none.text, /refused the request's HTTP\/2 stream \(REFUSED_STREAM\)/);
    refuse.add(5).add(6);
    assert.deepEqual(await h2get(gw.url, '/n'), { status: 0, got: 0, ended: false, rstCode: H2_REFUSED_STREAM });
    assert.deepEqual(await h2get(gw.url, '/r'), { status: 200, got: 2, ended: true, rstCode: H2_NO_ERROR }, 'refused, then sent again');
  } finally {
    await gw.close();
    await origin.close();
  }
});

test('retry_on reset: an HTTP/2 upstream that resets a stream before any answer (RST_STREAM INTERNAL_ERROR, CANCEL or NO_ERROR) has an idempotent request sent again, as a lost HTTP/1.1 connection does; a POST so reset is a 502, sent once', async () => {
  const codes: Record<number, number> = { 0: H2_INTERNAL_ERROR, 2: H2_CANCEL, 4: H2_NO_ERROR, 6: H2_INTERNAL_ERROR };
  const seen: number[] = [];
  const origin = await startRawH2Origin((s) => {
    seen.push(s.index);
    const code = codes[s.index];
    if (code !== undefined) return s.rst(code);
    s.headers(200, { 'content-length': '2' });
    s.data('ok', true);
  });
  const gw = await startGateway(`
services:
  - {name: h2x, url: '${origin.url}', protocol: h2c, retries: 1, retry_on: [reset], routes: [{paths: [/x]}]}
`);
  try {
    for (const code of ['INTERNAL_ERROR', 'CANCEL', 'NO_ERROR']) {
      const r = await rawRequest(gw.port, 'GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      assert.match(r.text, /^HTTP\/1\.1 200 /, `reset with ${code}: ${r.text}`);
    }
    const post = await rawRequest(gw.port, 'POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    assert.match(post.text, /^HTTP\/1\.1 502 /, post.text);
    assert.deepEqual(seen, [0, 1, 2, 3, 4, 5, 6], 'each reset GET went once more; the POST once');
  } finally {
    await gw.close();
    await origin.close();
  }
});

test('a GOAWAY whose last-stream-id is below the request\'s stream (an idle connection the upstream closed as the request went out: not processed, RFC 9113 §6.8) sends the request again on a new connection under retries; a GOAWAY that covers it does not', async () => {
  let script: (s: RawH2Stream) => void = () => {};
  const origin = await startRawH2Origin((s) => script(s));
  const gw = await startGateway(`
services:
  - {name: h2g, url: '${origin.url}', protocol: h2c, retries: 1, routes: [{paths: [/g]}]}
`);
  const seen: number[] = [];
  try {
    // a request on a connection that served one before, its stream above the GOAWAY's last
    // stream: not processed, sent again
    script = (s) => {
      seen.push(s.index);
      if (s.index === 1 || s.index === 3) return s.goaway(H2_NO_ERROR, s.id - 2);
      s.headers(200, { 'content-length': '2' });
      s.data('ok', true);
    };
    for (const method of ['GET', 'GET', 'POST']) {
      const r = await rawRequest(gw.port, `${method} /g HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      assert.match(r.text, /^HTTP\/1\.1 200 /, `${method}: ${r.text}`);
    }
    assert.deepEqual(seen, [0, 1, 2, 3, 4], 'each refused request went once more');
    // a GOAWAY naming the request's own stream as processed: it may have been acted on (502, once,
    // when the connection then closes without the answer; the upstream may finish it first, see
    // the graceful shutdown test)
    script = (s) => {
      seen.push(s.index);
      s.goaway(H2_NO_ERROR);
      setTimeout(() => s.end(), 50);
    };
    const r = await rawRequest(gw.port, 'POST /g HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    assert.match(r.text, /^HTTP\/1\.1 502 /, r.text);
    assert.deepEqual(seen, [0, 1, 2, 3, 4, 5]);
  } finally {
    await gw.close();
    await origin.close();
  }
});

test('an HTTP/2 upstream that shuts down gracefully (GOAWAY NO_ERROR covering the stream, then finishes it) has its in-flight responses relayed whole, trailers included; the next request goes on a new connection', async () => {
  const server = createH2Server();
  let streams = 0;
  server.on('stream', (stream, headers) => {
    streams++;
    stream.resume();
    stream.respond({ ':status': 200, 'content-type': 'text/plain' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'x-sum': 'done' }));
    stream.write('first;');
    if (headers[':path'] === '/drain') {
      // a rolling deploy: no new streams on this connection, those in flight finish
      setTimeout(() => stream.session!.close(), 50);
      setTimeout(() => stream.end('second'), 200);
    } else stream.end('second');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const gw = await startGateway(`
http2: {h2c: true}
services:
  - {name: h2d, url: 'http://127.0.0.1:${(server.address() as AddressInfo).port}', protocol: h2c, retries: 0, routes: [{paths: [/]}]}
`);
  try {
    const r = await rawRequest(gw.port, 'GET /drain HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n', 1000);
    assert.match(r.text, /^HTTP\/1\.1 200 /, r.text);
    assert.match(r.text, /\r\n6\r\nfirst;\r\n6\r\nsecond\r\n0\r\nx-sum: done\r\n\r\n$/i, JSON.stringify(r.text));
    const next = await rawRequest(gw.port, 'GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 500);
    assert.match(next.text, /^HTTP\/1\.1 200 [\s\S]*first;[\s\S]*second/, next.text);
    assert.equal(streams, 2);
  } finally {
    await gw.close();
    await new Promise((r) => server.close(r));
  }
});

test('the streams the gateway resets for an upstream that breaks off its bodies are not the client\'s resets: an HTTP/2 client on one connection outlasts many more of them than http2.max_resets (no GOAWAY ENHANCE_YOUR_CALM)', async () => {
  const cuts = ['rst-internal-error', 'rst-no-error', 'rst-cancel', 'goaway-then-fin'];
  const up = await breakingOrigin((i) => ({ cut: i < 8 ? cuts[i % cuts.length]! : 'whole' }));
  const g = await startGateway(`
http2: {h2c: true, max_resets: 3}
services:
  - {name: up, url: '${up.url}', protocol: h2c, retries: 0, routes: [{paths: [/]}]}
`);
  const session = h2connect(g.url);
  let goaway: number | null = null;
  session.on('goaway', (code) => (goaway = code));
  session.on('error', () => {});
  try {
    const one = () => new Promise<{ status: number; rstCode: number | undefined }>((resolve) => {
      const s = session.request({ ':path': '/x' });
      let status = 0;
      s.on('response', (h) => (status = Number(h[':status'])));
      s.on('error', () => {});
      s.resume();
      s.on('close', () => resolve({ status, rstCode: s.rstCode }));
    });
    for (let i = 0; i < 8; i++) {
      const r = await one();
      assert.equal(r.status, 200, `request ${i}`);
      assert.notEqual(r.rstCode, h2constants.NGHTTP2_NO_ERROR, `request ${i}: cut`);
    }
    assert.deepEqual(await one(), { status: 200, rstCode: h2constants.NGHTTP2_NO_ERROR });
    assert.equal(goaway, null, 'the connection was kept');
  } finally {
    session.destroy();
    await g.close();
    await up.close();
  }
});
