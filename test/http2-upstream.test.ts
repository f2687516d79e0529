/** HTTP/2 upstreams (h2c, grpc) under clients that go away: cancels reach the upstream as RST_STREAM CANCEL. */
import test from 'node:test';
import assert from 'node:assert/strict';
import { connect as h2connect, constants as h2constants, createServer as createH2Server, type ServerHttp2Stream, type Settings } from 'node:http2';
import { request as httpRequest } from 'node:http';
import { createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { startGateway } from './helpers.js';

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
