/**
 * gRPC-Web codec (src/protocols/grpc-web.ts): grpc-web-text request decoding at every split, padded
 * runs and invalid input; trailer frame bytes; the text response encoder round trip; grpc-timeout
 * parsing and HTTP -> gRPC status mapping. Plus the test.Echo gRPC fixture, called directly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import type { IncomingHttpHeaders, IncomingHttpStatusHeader } from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import {
  grpcWebKind, requestDecoder, ResponseEncoder, webResponseHeaders, trailerFrame,
  encodeGrpcMessage, encodeGrpcTimeout, parseGrpcTimeout, grpcStatusFromHttp, type GrpcWebKind,
} from '../src/protocols/grpc-web.js';
import { grpcStatusOf } from '../src/core/problem.js';
import {
  startGrpcServer, echoClient, sayP, sumP, chatP, collect, metadata, jsonFrame, frame, parseFrames,
  parseTrailerBlock, deserializeJson,
} from './grpc-fixture.js';

const TEXT = grpcWebKind('application/grpc-web-text')!;
const BIN = grpcWebKind('application/grpc-web+proto')!;
const T = { timeout: 10_000 };

/** Runs chunks through a request decoder; resolves with the output or rejects with its error. */
async function decode(kind: GrpcWebKind, chunks: (Buffer | string)[]): Promise<Buffer> {
  const out: Buffer[] = [];
  const dec = requestDecoder(kind);
  Readable.from(chunks.map((c) => Buffer.from(c))).pipe(dec);
  for await (const c of dec) out.push(c as Buffer);
  return Buffer.concat(out);
}

/** Decodes base64 made of several padded runs (Buffer's decoder stops at the first '='). */
const decodeRuns = (s: string): Buffer => Buffer.concat((s.match(/[A-Za-z0-9+/]+=*/g) ?? []).map((r) => Buffer.from(r, 'base64')));

test('grpcWebKind maps content types, ignoring case and parameters', T, () => {
  assert.deepEqual(grpcWebKind('application/grpc-web'), { text: false, grpcContentType: 'application/grpc', webContentType: 'application/grpc-web' });
  assert.deepEqual(grpcWebKind('Application/GRPC-Web+JSON; charset=utf-8'), { text: false, grpcContentType: 'application/grpc+json', webContentType: 'application/grpc-web+json' });
  assert.deepEqual(grpcWebKind('application/grpc-web-text+proto'), { text: true, grpcContentType: 'application/grpc+proto', webContentType: 'application/grpc-web-text+proto' });
  assert.equal(grpcWebKind('application/grpc-web-text')!.text, true);
  for (const ct of [undefined, '', 'application/grpc', 'application/grpc+proto', 'application/json', 'application/grpc-webx']) {
    assert.equal(grpcWebKind(ct), null, String(ct));
  }
});

test('grpc-web-text request: frames split across chunks at every offset decode back', T, async () => {
  const frames = Buffer.concat([jsonFrame({ text: 'hello' }), jsonFrame({ v: 1 }), frame(Buffer.alloc(0)), jsonFrame({ text: 'é€😀' })]);
  const b64 = frames.toString('base64');
  for (let i = 0; i <= b64.length; i++) {
    assert.deepEqual(await decode(TEXT, [b64.slice(0, i), b64.slice(i)]), frames, `split at ${i}`);
  }
  // One byte per chunk, and three-way splits around a quantum boundary.
  assert.deepEqual(await decode(TEXT, [...b64]), frames);
  for (let i = 1; i < 9; i++) assert.deepEqual(await decode(TEXT, [b64.slice(0, i), b64.slice(i, i + 3), b64.slice(i + 3)]), frames);
  assert.deepEqual(await decode(TEXT, []), Buffer.alloc(0));
});

test('grpc-web-text request: several padded base64 runs, split anywhere', T, async () => {
  const parts = [jsonFrame({ v: 1 }), jsonFrame({ v: 22 }), jsonFrame({ v: 333 }), frame(Buffer.from('x'))];
  const text = parts.map((p) => p.toString('base64')).join('');
  assert.ok((text.match(/=/g) ?? []).length >= 2, 'fixture has padding mid-stream');
  const whole = Buffer.concat(parts);
  for (let i = 0; i <= text.length; i++) assert.deepEqual(await decode(TEXT, [text.slice(0, i), text.slice(i)]), whole, `split at ${i}`);
  // A final unpadded quantum is tolerated.
  const unpadded = jsonFrame({ v: 4444 }).toString('base64').replace(/=+$/, '');
  assert.deepEqual(await decode(TEXT, [unpadded]), jsonFrame({ v: 4444 }));
});

test('grpc-web-text request: invalid base64 errors the stream', T, async () => {
  const good = jsonFrame({ v: 1 }).toString('base64');
  for (const bad of ['AAA*', 'A===', '=AAA', 'AA=A', 'AAAAA', 'AA AA', 'AA\nAA', '-_AA', good + 'A', good.replace(/.$/, '') + '%']) {
    await assert.rejects(decode(TEXT, [bad]), (e: Error & { code?: string }) => e.code === 'ERR_GRPC_WEB_BASE64', JSON.stringify(bad));
  }
  // Binary kinds pass bytes through untouched.
  const raw = Buffer.from([0, 0, 0, 0, 3, 0xff, 0x3d, 0x2a]);
  assert.deepEqual(await decode(BIN, [raw.subarray(0, 3), raw.subarray(3)]), raw);
});

test('trailer frame bytes are exactly per spec', T, () => {
  const f = trailerFrame({ 'Grpc-Status': '0', 'grpc-message': 'OK', 'x-multi': ['a', 'b'], ':status': '200' });
  const block = 'grpc-status: 0\r\ngrpc-message: OK\r\nx-multi: a\r\nx-multi: b\r\n';
  assert.deepEqual(f, Buffer.concat([Buffer.from([0x80, 0, 0, 0, block.length]), Buffer.from(block)]));
  // Binary encoder: data passes through; finish returns the same frame.
  const enc = new ResponseEncoder(BIN);
  const data = jsonFrame({ i: 1 });
  assert.equal(enc.data(data), data);
  assert.deepEqual(enc.finish({ 'grpc-status': '0' }), Buffer.from('\x80\x00\x00\x00\x10grpc-status: 0\r\n', 'latin1'));
  // grpc-message is percent-encoded.
  assert.equal(encodeGrpcMessage('upstream 100% down: é'), 'upstream 100%25 down: %C3%A9');
  assert.equal(encodeGrpcMessage('a\r\nb\t~'), 'a%0D%0Ab%09~');
});

test('text response encoder output decodes back to the same frames, chunked any way', T, () => {
  const frames = [jsonFrame({ i: 0 }), jsonFrame({ i: 10 }), jsonFrame({ text: 'a longer message 😀' }), frame(Buffer.alloc(0))];
  const body = Buffer.concat(frames);
  const trailers = { 'grpc-status': '0', 'grpc-message': '', 'x-total': '3' };
  for (const size of [1, 2, 3, 4, 5, 7, 16, body.length]) {
    const enc = new ResponseEncoder(TEXT);
    let out = '';
    for (let i = 0; i < body.length; i += size) {
      const piece = enc.data(body.subarray(i, i + size));
      assert.equal(typeof piece, 'string');
      assert.equal((piece as string).length % 4, 0, 'whole quanta only');
      out += piece;
    }
    out += enc.finish(trailers);
    assert.match(out, /^[A-Za-z0-9+/=]*$/);
    assert.deepEqual(decodeRuns(out), Buffer.concat([body, trailerFrame(trailers)]), `chunk size ${size}`);
  }
  // Complete frames are never held back: each ends its chunk's output (padded as needed).
  const enc = new ResponseEncoder(TEXT);
  for (const f of frames) assert.deepEqual(decodeRuns(enc.data(f) as string), f);
  // A frame cut mid-way keeps < 3 bytes back, flushed (padded) before the trailer frame.
  const enc2 = new ResponseEncoder(TEXT);
  const cut = jsonFrame({ text: 'abcd' }).subarray(0, 17); // of 20 bytes: 15 encoded now, 2 carried
  const a = enc2.data(cut) as string;
  assert.equal(a, cut.subarray(0, 15).toString('base64'));
  const tail = enc2.finish({ 'grpc-status': '13' }) as string;
  assert.equal(tail, cut.subarray(15).toString('base64') + trailerFrame({ 'grpc-status': '13' }).toString('base64'));
});

test('webResponseHeaders rewrites content-type, drops hop-by-hop, keeps trailers-only status', T, () => {
  // Compile-time check: node's http2 response headers (':status' a number) are accepted as they are.
  const fromNode = (headers: IncomingHttpHeaders & IncomingHttpStatusHeader) => webResponseHeaders(TEXT, headers);
  void fromNode;
  const upstream = {
    ':status': 200, 'content-type': 'application/grpc', 'content-length': '0', te: 'trailers', connection: 'x',
    'transfer-encoding': 'chunked', 'grpc-status': '5', 'grpc-message': 'not%20found', 'x-custom': ['a', 'b'],
  };
  const h = webResponseHeaders(TEXT, upstream);
  assert.deepEqual(h, { 'content-type': 'application/grpc-web-text', 'grpc-status': '5', 'grpc-message': 'not%20found', 'x-custom': ['a', 'b'] });
});

test('parseGrpcTimeout edge cases', T, () => {
  const cases: [string | undefined, number | null][] = [
    ['0m', 0], ['0H', 0], ['1m', 1], ['1S', 1000], ['2M', 120_000], ['1H', 3_600_000], ['1u', 1], ['1000u', 1], ['1001u', 2],
    ['1n', 1], ['1000000n', 1], ['1000001n', 2], ['99999999m', 99_999_999], ['99999999H', 99_999_999 * 3_600_000], ['00000005S', 5000],
    [undefined, null], ['', null], ['0', null], ['100', null], ['123456789m', null], ['5s', null], ['5h', null], ['5x', null],
    ['m', null], [' 5m', null], ['5m ', null], ['-5m', null], ['1.5S', null], ['5mm', null],
  ];
  for (const [v, want] of cases) assert.equal(parseGrpcTimeout(v), want, String(v));
});

test('encodeGrpcTimeout: at most 8 digits, the finest unit that holds the value, never more time than given', T, () => {
  const cases: [number, string][] = [
    [0, '0m'], [-5, '0m'], [1, '1m'], [1.9, '1m'], [99_999_999, '99999999m'], [100_000_000, '100000S'], [100_000_999, '100000S'],
    [99_999_999_000, '99999999S'], [99_999_999_001, '1666666M'], [99_999_999 * 60_000, '99999999M'], [99_999_999 * 60_000 + 60_000, '1666666H'],
    [99_999_999 * 3_600_000, '99999999H'], [1e18, '99999999H'],
  ];
  for (const [ms, want] of cases) {
    const v = encodeGrpcTimeout(ms);
    assert.equal(v, want, String(ms));
    assert.match(v, /^\d{1,8}[HMSm]$/);
    if (ms >= 0 && ms <= 99_999_999 * 3_600_000) assert.ok(parseGrpcTimeout(v)! <= Math.max(0, ms), `${ms} -> ${v}`);
  }
});

test('HTTP -> gRPC status: an upstream answer without grpc-status per gRPC\'s table; the gateway\'s own answers by their cause', T, () => {
  // doc/http-grpc-status-mapping.md
  for (const [http, code] of [[400, 13], [401, 16], [403, 7], [404, 12], [429, 14], [502, 14], [503, 14], [504, 14], [200, 2], [500, 2], [409, 2]]) {
    assert.equal(grpcStatusFromHttp(http!), code, `upstream ${http}`);
  }
  // the gateway's own: its timeouts DEADLINE_EXCEEDED, its limits RESOURCE_EXHAUSTED, a refused request INVALID_ARGUMENT
  for (const [http, code] of [[400, 3], [401, 16], [403, 7], [404, 12], [408, 4], [413, 8], [429, 8], [502, 14], [503, 14], [504, 4], [500, 13]]) {
    assert.equal(grpcStatusOf(http!), code, `gateway ${http}`);
  }
});

test('gRPC fixture: Say, Count, Sum, Chat, errors and deadlines against test.Echo directly', T, async () => {
  const srv = await startGrpcServer();
  const client = echoClient(srv.address);
  try {
    const res = await sayP(client, 'hi', metadata({ 'x-request-id': 'r1', authorization: 'Bearer t' }));
    assert.deepEqual(res, { text: 'hi', metadata: { 'x-request-id': 'r1', 'x-forwarded-for': null, authorization: true, deadline: false } });

    // fail: status, details and trailing metadata.
    const err = await sayP(client, 'fail').then(() => null, (e: grpc.ServiceError) => e);
    assert.ok(err);
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(err.details, 'bad text');
    assert.deepEqual(err.metadata.get('x-detail'), ['why']);

    // Deadline exceeded; the service sees the cancellation and stops its timer.
    const t0 = Date.now();
    const late = await sayP(client, 'sleep:500', undefined, { deadline: Date.now() + 100 }).then(() => null, (e: grpc.ServiceError) => e);
    assert.equal(late?.code, grpc.status.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - t0 < 450, `took ${Date.now() - t0} ms`);
    for (let i = 0; i < 50 && !srv.cancelled.includes('Say'); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(srv.cancelled.includes('Say'));
    assert.equal((await sayP(client, 'sleep:20', undefined, { deadline: Date.now() + 5000 })).metadata.deadline, true);

    // Server streaming with trailing metadata, and a stream that fails after messages.
    const count = await collect(client.Count({ n: 3, delayMs: 5 }));
    assert.deepEqual(count.messages, [{ i: 0 }, { i: 1 }, { i: 2 }]);
    assert.equal(count.status.code, grpc.status.OK);
    assert.deepEqual(count.status.metadata.get('x-total'), ['3']);
    const broken = await collect(client.Count({ n: 5, failAfter: 2 }));
    assert.deepEqual(broken.messages, [{ i: 0 }, { i: 1 }]);
    assert.equal(broken.status.code, grpc.status.ABORTED);

    assert.deepEqual(await sumP(client, [1, 2, 3, 4]), { sum: 10 });
    assert.deepEqual(await sumP(client, []), { sum: 0 });

    const chat = await chatP(client, ['a', 'b', 'c']);
    assert.deepEqual(chat.messages, [{ text: 'echo:a' }, { text: 'echo:b' }, { text: 'echo:c' }]);
    assert.equal(chat.status.code, grpc.status.OK);

    assert.deepEqual(deserializeJson(parseFrames(jsonFrame({ a: 1 }))[0]!.payload), { a: 1 });
  } finally {
    client.close();
    await srv.close();
  }
});
