/** Accept-Encoding negotiation (RFC 9110 §12.5.3), what is compressed and how. The plugin end to end: test/transform.test.ts. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Transform } from 'node:stream';
import { createBrotliDecompress, createGunzip } from 'node:zlib';
import compression, { negotiate } from './index.js';
import { HEADERS_ONLY } from '../types.js';

const OFFER = ['br', 'gzip'];

test('negotiate: the best offered coding by q-value, x-gzip as gzip, * for the rest, none without the field', () => {
  assert.equal(negotiate('gzip, br', OFFER), 'br');
  assert.equal(negotiate('gzip;q=1, br;q=0.5', OFFER), 'gzip');
  assert.equal(negotiate('x-gzip', OFFER), 'gzip');
  assert.equal(negotiate('*', OFFER), 'br');
  assert.equal(negotiate('*;q=0.1, br;q=0', OFFER), 'gzip');
  assert.equal(negotiate(undefined, OFFER), null);
  assert.equal(negotiate('deflate', OFFER), null);
});

test('negotiate: q=0 refuses (any spelling); an invalid qvalue makes its member unusable; identity preferred wins', () => {
  for (const v of ['gzip;q=0', 'gzip;Q=0', 'gzip;q=0.000', 'gzip; q = 0']) assert.equal(negotiate(v, ['gzip']), null, v);
  for (const v of ['gzip;q=0.0001', 'gzip;q=', 'gzip;q=2', 'gzip;q=1.5', 'gzip;q=abc']) assert.equal(negotiate(v, ['gzip']), null, v);
  assert.equal(negotiate('gzip;q=0.5, identity', ['gzip']), null);
  assert.equal(negotiate('gzip, identity;q=0.5', ['gzip']), 'gzip');
});

/** The plugin's encodeResponse for a response with these fields, the client accepting `coding`. */
function encoderFor(config: Parameters<typeof compression.create>[0], coding: string, headers: string[], method = 'GET') {
  const inst = compression.create(config, {} as never);
  const ctx = { method, header: (n: string) => (n === 'accept-encoding' ? coding : undefined) };
  const t = inst.encodeResponse!(ctx as never, 200, headers);
  assert.notEqual(t, HEADERS_ONLY, 'a GET gets a stream or nothing');
  return t as Transform | null;
}

test('HEAD: the fields a GET\'s answer would have (Content-Encoding, Vary, weak ETag), and no coder built for a body that is never sent', () => {
  const inst = compression.create({}, {} as never);
  const ctx = { method: 'HEAD', header: (n: string) => (n === 'accept-encoding' ? 'gzip' : undefined) };
  const headers = ['content-type', 'application/json', 'content-length', '5000', 'etag', '"v1"'];
  assert.equal(inst.encodeResponse!(ctx as never, 200, headers), HEADERS_ONLY);
  assert.deepEqual(headers, ['content-type', 'application/json', 'content-length', '5000', 'etag', 'W/"v1"', 'vary', 'Accept-Encoding', 'content-encoding', 'gzip']);
});

test('a request saying Cache-Control: no-transform gets the upstream\'s bytes: no coder, and a 304 keeps the strong ETag its 200 would (RFC 9110 §7.7)', () => {
  const inst = compression.create({}, {} as never);
  const ctx = { method: 'GET', header: (n: string) => (n === 'accept-encoding' ? 'gzip' : n === 'cache-control' ? 'no-cache, no-transform' : undefined) };
  const ok = ['content-type', 'application/json', 'content-length', '5000', 'etag', '"v1"'];
  assert.equal(inst.encodeResponse!(ctx as never, 200, ok), null);
  assert.deepEqual(ok, ['content-type', 'application/json', 'content-length', '5000', 'etag', '"v1"', 'vary', 'Accept-Encoding']);
  const nm = ['etag', '"v1"', 'content-type', 'application/json'];
  inst.encodeResponse!(ctx as never, 304, nm);
  assert.deepEqual(nm, ['etag', '"v1"', 'content-type', 'application/json', 'vary', 'Accept-Encoding']);
});

test('streams by nature: text/event-stream only when listed by name, gRPC never (whatever is listed)', () => {
  assert.equal(encoderFor({}, 'gzip', ['content-type', 'text/event-stream']), null);
  assert.equal(encoderFor({ types: ['text/*'] }, 'gzip', ['content-type', 'Text/Event-Stream; charset=utf-8']), null);
  const listed = encoderFor({ types: ['text/event-stream'] }, 'gzip', ['content-type', 'text/event-stream']);
  assert.ok(listed !== null);
  listed.destroy();
  for (const ct of ['application/grpc', 'application/grpc+json', 'application/grpc-web+json', 'application/grpc-web-text']) {
    assert.equal(encoderFor({ types: ['application/*', 'application/json', ct] }, 'gzip', ['content-type', ct]), null, ct);
  }
  const plain = encoderFor({}, 'gzip', ['content-type', 'text/plain']);
  assert.ok(plain !== null);
  plain.destroy();
});

/** Writes one small chunk into the encoder and says whether any of it decodes before the end. */
async function decodesBeforeEnd(enc: Transform, coding: string): Promise<boolean> {
  const dec = coding === 'br' ? createBrotliDecompress() : createGunzip();
  let got = '';
  dec.on('data', (c: Buffer) => (got += c.toString()));
  enc.pipe(dec);
  enc.write('event one\n');
  // (up to 500 ms: zlib works on the threadpool, which a loaded machine may be slow to give)
  await Promise.race([once(dec, 'data'), new Promise((r) => setTimeout(r, 500))]);
  const early = got;
  enc.end();
  await once(dec, 'end');
  assert.equal(got, 'event one\n');
  return early === 'event one\n';
}

test('a streamed body (no Content-Length) is flushed after each write; a body of known length is not', async () => {
  for (const coding of ['gzip', 'br']) {
    assert.equal(await decodesBeforeEnd(encoderFor({}, coding, ['content-type', 'text/plain'])!, coding), true, coding);
    assert.equal(await decodesBeforeEnd(encoderFor({}, coding, ['content-type', 'text/plain', 'content-length', '5000'])!, coding), false, coding);
  }
});

test('compressed: digests of the uncompressed bytes (Content-Digest, Repr-Digest, Digest, Content-MD5: RFC 9530 §2-3) are dropped; uncompressed they stay', () => {
  const digests = ['content-digest', 'sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:', 'Repr-Digest', 'sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:', 'digest', 'SHA-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=', 'content-md5', 'Q2hlY2sgSW50ZWdyaXR5IQ=='];
  const headers = ['content-type', 'application/json', ...digests];
  const enc = encoderFor({}, 'gzip', headers);
  assert.ok(enc !== null);
  enc.destroy();
  assert.deepEqual(headers.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase()).filter((n) => n.includes('digest') || n === 'content-md5'), []);
  const plain = ['content-type', 'application/json', ...digests];
  assert.equal(encoderFor({}, 'identity', plain), null);
  assert.deepEqual(plain, ['content-type', 'application/json', ...digests, 'vary', 'Accept-Encoding']);
});
