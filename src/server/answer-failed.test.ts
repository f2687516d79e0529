/**
 * The fallback answer of Gateway.onRequest (its catch and its promise-rejection handler) when a
 * request's handling failed after fields the protocol refuses were left on the response (here a
 * field allowed once, ETag, set twice on an HTTP/2 response, which node:http2 refuses only when
 * the headers go out): writing the 500 problem throws too. That second throw escaped the event
 * handler and ended the process; now the stream is reset and it is logged once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer } from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pino } from 'pino';
import { answerFailed } from './gateway.js';

test('a problem that cannot be written resets the HTTP/2 stream instead of throwing', async () => {
  const lines: string[] = [];
  const log = pino({ level: 'error' }, { write: (s: string) => void lines.push(s) });
  const thrown: unknown[] = [];
  const server = createServer((req, res) => {
    res.setHeader('etag', ['"a"', '"b"']); // (what a failed handler left behind)
    try {
      answerFailed(log, req as unknown as IncomingMessage, res as unknown as ServerResponse);
    } catch (err) {
      thrown.push(err); // (in the gateway: the process ends)
      res.stream.close(0);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const client = connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  try {
    const rst = await new Promise<number>((resolve) => {
      const s = client.request({ ':path': '/' });
      s.on('error', () => {});
      s.resume();
      s.on('close', () => resolve(s.rstCode));
      s.end();
    });
    assert.deepEqual(thrown, []);
    assert.equal(rst, 2); // INTERNAL_ERROR
    assert.equal(lines.filter((l) => l.includes('could not be written')).length, 1);
  } finally {
    client.close();
    await new Promise((r) => server.close(r));
  }
});

test('a failed request whose response can take the problem gets the 500 problem', async () => {
  const server = createServer((req, res) => answerFailed(pino({ level: 'silent' }), req as unknown as IncomingMessage, res as unknown as ServerResponse));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const client = connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  try {
    const [status, type] = await new Promise<[unknown, unknown]>((resolve, reject) => {
      const s = client.request({ ':path': '/' });
      s.on('error', reject);
      s.on('response', (h) => resolve([h[':status'], h['content-type']]));
      s.resume();
      s.end();
    });
    assert.equal(status, 500);
    assert.equal(type, 'application/problem+json');
  } finally {
    client.close();
    await new Promise((r) => server.close(r));
  }
});

test('a request whose handling failed after its response started: the HTTP/2 stream is reset with INTERNAL_ERROR, never NO_ERROR (which a node:http2 or undici client reads as the end of a whole body)', async () => {
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('part of the body;');
    setTimeout(() => answerFailed(pino({ level: 'silent' }), req as unknown as IncomingMessage, res as unknown as ServerResponse), 20);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const client = connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  try {
    const r = await new Promise<{ ended: boolean; rst: number }>((resolve) => {
      const s = client.request({ ':path': '/' });
      let ended = false;
      s.on('error', () => {});
      s.on('end', () => (ended = true));
      s.resume();
      s.on('close', () => resolve({ ended, rst: s.rstCode }));
      s.end();
    });
    assert.deepEqual(r, { ended: false, rst: 2 }); // INTERNAL_ERROR
  } finally {
    client.close();
    await new Promise((r) => server.close(r));
  }
});
