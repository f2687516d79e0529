/**
 * The cache plugin end to end (RFC 9111): real loopback upstreams that count their calls, a
 * gateway in process, its admin API, and real redis-servers for the shared backend.
 */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { request as httpRequest } from 'node:http';
import { connect as h2connect } from 'node:http2';
import { gunzipSync } from 'node:zlib';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfigText } from '../src/config/load.js';
import { freePort, rawRequest, request, sleep, startGateway, startRawOrigin, startUpstream, type TestGateway, type TestUpstream } from './helpers.js';
import { H2_CANCEL, H2_NO_ERROR, startRawH2Origin } from './h2-raw-origin.js';
import { startRedis, type RedisServer } from './redis-server.js';

/** What the upstream answers for a path: called with the path's call count (1, 2, ...). */
type Answer = { status?: number; headers?: Record<string, string | string[] | undefined>; body?: string; delay?: number; noDate?: boolean };
type Handler = (n: number, req: IncomingMessage) => Answer;

/** An upstream whose answers are set per path; it counts calls per path (query left out). */
async function programmable(): Promise<TestUpstream & { on(path: string, h: Handler): void; calls(path: string): number; seen(path: string): IncomingMessage['headers'][] }> {
  const handlers = new Map<string, Handler>();
  const counts = new Map<string, number>();
  const up = await startUpstream((req: IncomingMessage, res: ServerResponse) => {
    const path = req.url!.split('?')[0]!;
    const n = (counts.get(path) ?? 0) + 1;
    counts.set(path, n);
    const a: Answer = (handlers.get(path) ?? (() => ({ body: `${path} ${n}` })))(n, req);
    const send = () => {
      if (a.noDate) res.sendDate = false;
      const headers: Record<string, string | string[]> = { 'content-type': 'text/plain' };
      for (const [k, v] of Object.entries(a.headers ?? {})) if (v !== undefined) headers[k] = v;
      res.writeHead(a.status ?? 200, headers).end(a.body ?? `${path} ${n}`);
    };
    if (a.delay) setTimeout(send, a.delay);
    else send();
  });
  return Object.assign(up, {
    on: (path: string, h: Handler) => { handlers.set(path, h); },
    calls: (path: string) => counts.get(path) ?? 0,
    seen: (path: string) => up.requests.filter((r) => r.url.split('?')[0] === path).map((r) => r.headers),
  });
}

let up: Awaited<ReturnType<typeof programmable>>;
let flaky: Awaited<ReturnType<typeof programmable>>;
let gw: TestGateway;
let text = '';
const config = (extra = '') => `
listen: 127.0.0.1:0
access_log: {enabled: false}
admin: {listen: 127.0.0.1:0}
consumers:
  - {name: alice, credentials: [{type: key-auth, key: alice-key-123}]}
  - {name: bob, credentials: [{type: key-auth, key: bob-key-1234}]}
  - {name: guest}
services:
  - name: api
    url: ${up.url}
    plugins: [{name: cache, config: {ttl: 30s}}]
    routes:
      - {name: main, paths: [/c]}
      - name: keyed
        paths: [/k]
        plugins: [{name: key-auth}]
      - name: keyed-shared
        paths: [/ks]
        plugins: [{name: key-auth}, {name: cache, config: {per_consumer: false}}]
      - name: cookies
        paths: [/sc]
        plugins: [{name: cache, config: {cache_set_cookie: true}}]
      - name: tenant
        paths: [/t]
        plugins: [{name: cache, config: {key: ["header:x-tenant"], max_body: 1kb}}]
      - name: defaults
        paths: [/d]
        plugins: [{name: cache, config: {stale_if_error: 1m, stale_while_revalidate: 1m}}]
      - name: transformed
        paths: [/rt]
        plugins: [{name: response-transform, config: {json: {remove: [secret], set: {api_version: 2}}, headers: {set: {x-transformed: "yes"}}}}]
      - name: status-mapped
        paths: [/rs]
        plugins: [{name: response-transform, config: {status: {"500": 200, "403": 200}}}]
      - name: uncollapsed
        paths: [/u]
        plugins: [{name: cache, config: {collapse: false}}]
      - name: authorized
        paths: [/ca]
        plugins: [{name: cache, config: {cache_authorized: true}}]
      - name: paged
        paths: [/qp]
        plugins: [{name: cache, config: {key: ["query:page"]}}]
      - name: keyed-anonymous
        paths: [/ka]
        plugins: [{name: key-auth, config: {header: x-gw-key, anonymous: guest}}]
      - name: compressed
        paths: [/z]
        plugins: [{name: compression, config: {min_size: 10b}}]
      - name: validated
        paths: [/v]
        plugins:
          - name: request-validator
            config:
              validate_response: true
              spec:
                openapi: 3.0.3
                info: {title: t, version: "1"}
                paths:
                  /v/{id}:
                    get:
                      parameters: [{name: id, in: path, required: true, schema: {type: string}}]
                      responses:
                        "200":
                          description: ok
                          content: {application/json: {schema: {type: object, required: [id], properties: {id: {type: integer}}}}}
${extra}
  - name: flaky
    url: ${flaky.url}
    plugins: [{name: cache}]
    routes: [{name: flaky, paths: [/f]}]
  - name: writer
    url: ${up.url}
    routes: [{name: writes, paths: [/c/w], methods: [POST, PUT, DELETE, PATCH]}]
`;

before(async () => {
  up = await programmable();
  flaky = await programmable();
  text = config();
  gw = await startGateway(text);
});
after(async () => {
  await gw?.close();
  await up?.close();
  await flaky?.close();
});

const get = (path: string, headers: Record<string, string> = {}, method = 'GET') => request(`${gw.url}${path}`, { method, headers });
const status = (r: { headers: IncomingMessage['headers'] }) => r.headers['x-cache-status'];

test('MISS then HIT from memory; HEAD is answered from the GET entry; Age on every cached response, counting the upstream Age', async () => {
  up.on('/c/basic', () => ({ headers: { 'cache-control': 'max-age=60', etag: '"b1"' }, body: 'basic body' }));
  const a = await get('/c/basic');
  assert.equal(a.status, 200);
  assert.equal(status(a), 'MISS');
  const b = await get('/c/basic');
  assert.equal(b.body, 'basic body');
  assert.equal(status(b), 'HIT');
  assert.match(String(b.headers.age), /^[01]$/);
  assert.equal(b.headers.etag, '"b1"');
  assert.equal(b.headers['content-type'], 'text/plain');
  const h = await get('/c/basic', {}, 'HEAD');
  assert.equal(h.status, 200);
  assert.equal(status(h), 'HIT');
  assert.equal(h.headers['content-length'], String('basic body'.length));
  assert.equal(h.body, '');
  assert.equal(up.calls('/c/basic'), 1);
  // a HEAD miss goes upstream as HEAD and stores nothing
  const hm = await get('/c/head-only', {}, 'HEAD');
  assert.equal(hm.status, 200);
  assert.equal(up.calls('/c/head-only'), 1);
  assert.equal(status(await get('/c/head-only')), 'MISS');

  up.on('/c/aged', () => ({ headers: { 'cache-control': 'max-age=60', age: '10' } }));
  await get('/c/aged');
  const aged = await get('/c/aged');
  assert.equal(status(aged), 'HIT');
  assert.ok(Number(aged.headers.age) >= 10 && Number(aged.headers.age) <= 12, String(aged.headers.age));
  // already older than its lifetime when it arrives: never served from the cache
  up.on('/c/old', () => ({ headers: { 'cache-control': 'max-age=60', age: '100' } }));
  await get('/c/old');
  assert.equal(status(await get('/c/old')), 'MISS');
  assert.equal(up.calls('/c/old'), 2);
});

test('an upstream answer without Date is stored with the time it arrived (RFC 9110 §6.6.1): a hit says when it was made, not when it was served, consistent with its Age', async () => {
  up.on('/c/undated', () => ({ headers: { 'cache-control': 'max-age=60' }, noDate: true }));
  const miss = await get('/c/undated');
  assert.equal(status(miss), 'MISS');
  const arrived = Date.parse(String(miss.headers.date));
  await sleep(2100);
  const hit = await get('/c/undated');
  assert.equal(status(hit), 'HIT');
  assert.ok(Number(hit.headers.age) >= 2, String(hit.headers.age));
  const dated = Date.parse(String(hit.headers.date));
  assert.ok(Math.abs(dated - arrived) <= 1000, `a hit of a response that arrived at ${String(miss.headers.date)} is dated ${String(hit.headers.date)}`);
  assert.equal(hit.rawHeaders.filter((h) => h.toLowerCase() === 'date').length, 1);
});

test('freshness: s-maxage over max-age (shared cache), Expires - Date, the ttl heuristic when there is none, expiry', async () => {
  up.on('/c/smax', () => ({ headers: { 'cache-control': 's-maxage=0, max-age=600' } }));
  await get('/c/smax');
  assert.equal(status(await get('/c/smax')), 'MISS');
  up.on('/c/expires', () => ({ headers: { expires: new Date(Date.now() + 60_000).toUTCString() } }));
  await get('/c/expires');
  assert.equal(status(await get('/c/expires')), 'HIT');
  up.on('/c/expired', () => ({ headers: { expires: '0' } }));
  await get('/c/expired');
  assert.equal(status(await get('/c/expired')), 'MISS');
  // no freshness given: ttl (30s) applies
  up.on('/c/heuristic', () => ({}));
  await get('/c/heuristic');
  const hh = await get('/c/heuristic');
  assert.equal(status(hh), 'HIT');
  assert.equal(hh.body, '/c/heuristic 1');
  up.on('/c/short', () => ({ headers: { 'cache-control': 'max-age=1' }, noDate: true }));
  await get('/c/short');
  assert.equal(status(await get('/c/short')), 'HIT');
  await sleep(1100);
  const late = await get('/c/short');
  assert.equal(status(late), 'MISS');
  assert.equal(late.body, '/c/short 2');
});

test('private or no-cache naming no field (private="", private=, private=", ") is taken whole: never shared, revalidated on every use (it was stored and served to every client, no field left out)', async () => {
  for (const [i, v] of ['private=""', 'private=', 'private=", "', 'private="\\"'].entries()) {
    const path = `/c/private-empty-${i}`;
    up.on(path, (n) => ({ headers: { 'cache-control': `${v}, max-age=60` }, body: `account of caller ${n}` }));
    await get(path);
    const other = await get(path);
    assert.equal(other.body, `account of caller 2`, v);
    assert.equal(up.calls(path), 2, v);
  }
  // no-cache naming no valid field: revalidated on every use, as a bare no-cache
  up.on('/c/nocache-empty', () => ({ headers: { 'cache-control': 'no-cache=", ", max-age=60' } }));
  await get('/c/nocache-empty');
  assert.notEqual(status(await get('/c/nocache-empty')), 'HIT');
  assert.equal(up.calls('/c/nocache-empty'), 2);
  // (with a field name: stored, without that field)
  up.on('/c/private-named', () => ({ headers: { 'cache-control': 'private="x-user", max-age=60', 'x-user': 'alice' } }));
  await get('/c/private-named');
  const named = await get('/c/private-named');
  assert.equal(status(named), 'HIT');
  assert.equal(named.headers['x-user'], undefined);
});

test('what is not stored: no-store, private, Set-Cookie (unless cache_set_cookie), Authorization (unless public), request no-store, 500s, POST, bodies over max_body', async () => {
  const twice = async (path: string, headers: Record<string, string> = {}) => {
    const first = await get(path, headers);
    const second = await get(path);
    return { first, second, calls: up.calls(path) };
  };
  up.on('/c/nostore', () => ({ headers: { 'cache-control': 'no-store, max-age=60' } }));
  assert.equal((await twice('/c/nostore')).calls, 2);
  up.on('/c/private', () => ({ headers: { 'cache-control': 'private, max-age=60' } }));
  assert.equal((await twice('/c/private')).calls, 2);
  up.on('/c/cookie', () => ({ headers: { 'cache-control': 'max-age=60', 'set-cookie': 'session=secret' } }));
  assert.equal((await twice('/c/cookie')).calls, 2);
  up.on('/sc/cookie', () => ({ headers: { 'cache-control': 'max-age=60', 'set-cookie': 'session=secret' } }));
  const sc = await twice('/sc/cookie');
  assert.equal(sc.calls, 1);
  assert.deepEqual(sc.first.headers['set-cookie'], ['session=secret']);
  assert.equal(status(sc.second), 'HIT');
  assert.equal(sc.second.headers['set-cookie'], undefined);
  up.on('/c/auth', () => ({ headers: { 'cache-control': 'max-age=60' } }));
  const auth = await twice('/c/auth', { authorization: 'Bearer abc' });
  assert.equal(auth.calls, 2);
  up.on('/c/auth-public', () => ({ headers: { 'cache-control': 'public, max-age=60' } }));
  assert.equal((await twice('/c/auth-public', { authorization: 'Bearer abc' })).calls, 1);
  up.on('/c/req-nostore', () => ({ headers: { 'cache-control': 'max-age=60' } }));
  assert.equal((await twice('/c/req-nostore', { 'cache-control': 'no-store' })).calls, 2);
  up.on('/c/err', () => ({ status: 500, headers: { 'cache-control': 'max-age=60' } }));
  assert.equal((await twice('/c/err')).calls, 2);
  up.on('/c/gone', () => ({ status: 404, headers: { 'cache-control': 'max-age=60' } }));
  const gone = await twice('/c/gone');
  assert.equal(gone.calls, 1);
  assert.equal(gone.second.status, 404);
  up.on('/c/post', () => ({ headers: { 'cache-control': 'max-age=60' } }));
  const p1 = await get('/c/post', {}, 'POST');
  assert.equal(status(p1), 'BYPASS');
  await get('/c/post', {}, 'POST');
  assert.equal(up.calls('/c/post'), 2);
  // larger than max_body (1kb on /t): served whole, not stored
  up.on('/t/big', () => ({ headers: { 'cache-control': 'max-age=60' }, body: 'x'.repeat(5000) }));
  const big = await twice('/t/big');
  assert.equal(big.first.body.length, 5000);
  assert.equal(big.second.body.length, 5000);
  assert.equal(big.calls, 2);
});

test('with response-transform: what is stored is what the client got (the transform runs before the cache stores)', async () => {
  up.on('/rt/doc', (n) => ({ headers: { 'cache-control': 'max-age=60', 'content-type': 'application/json', etag: '"raw"' }, body: JSON.stringify({ n, secret: 's3cr3t' }) }));
  const miss = await get('/rt/doc');
  const hit = await get('/rt/doc');
  assert.equal(status(miss), 'MISS');
  assert.equal(status(hit), 'HIT');
  assert.deepEqual(JSON.parse(miss.body), { n: 1, api_version: 2 });
  assert.equal(hit.body, miss.body);
  assert.equal(hit.headers['x-transformed'], 'yes');
  assert.equal(hit.headers.etag, undefined);
  assert.equal(hit.headers['content-length'], String(Buffer.byteLength(miss.body)));
  assert.equal(up.calls('/rt/doc'), 1);
});

test('with response-transform mapping an upstream 500 or 403 to 200: the cache decides on the upstream\'s answer (the error body was stored and served as a 200 for ttl)', async () => {
  up.on('/rs/err', (n) => ({ status: 500, body: `error ${n}` }));
  up.on('/rs/denied', (n) => ({ status: 403, body: `denied ${n}` }));
  for (const path of ['/rs/err', '/rs/denied']) {
    const first = await get(path);
    const second = await get(path);
    assert.equal(first.status, 200);
    assert.equal(status(second), 'MISS', path);
    assert.match(second.body, / 2$/);
    assert.equal(up.calls(path), 2);
  }
});

test('Range: a GET for one byte range is answered from a fresh stored 200 (206, Content-Range; If-Range honoured, a 304 first); several ranges, unsatisfiable ones and HEAD go to the origin', async () => {
  const body = 'abcdefghijklmnopqrstuvwxyz';
  const lm = 'Mon, 01 Jan 2024 00:00:00 GMT';
  for (const path of ['/c/range', '/z/range']) up.on(path, () => ({ headers: { 'cache-control': 'max-age=60', etag: '"r1"', 'last-modified': lm }, body }));
  await get('/c/range');
  const part = async (range: string, extra: Record<string, string> = {}, path = '/c/range') => {
    const r = await get(path, { range, ...extra });
    return [r.status, status(r), r.headers['content-range'], r.body, r.headers['content-length']];
  };
  assert.deepEqual(await part('bytes=2-5'), [206, 'HIT', 'bytes 2-5/26', 'cdef', '4']);
  assert.deepEqual(await part('bytes=-3'), [206, 'HIT', 'bytes 23-25/26', 'xyz', '3']);
  assert.deepEqual(await part('bytes=20-'), [206, 'HIT', 'bytes 20-25/26', 'uvwxyz', '6']);
  assert.deepEqual(await part('bytes=24-999'), [206, 'HIT', 'bytes 24-25/26', 'yz', '2']);
  assert.deepEqual(await part('bytes=0-0', { 'if-range': '"r1"' }), [206, 'HIT', 'bytes 0-0/26', 'a', '1']);
  assert.deepEqual(await part('bytes=0-0', { 'if-range': lm }), [206, 'HIT', 'bytes 0-0/26', 'a', '1']);
  for (const other of ['"r0"', 'W/"r1"', 'Tue, 02 Jan 2024 00:00:00 GMT']) {
    assert.deepEqual(await part('bytes=0-0', { 'if-range': other }), [200, 'HIT', undefined, body, '26'], other);
  }
  assert.deepEqual((await part('bytes=0-0', { 'if-none-match': '"r1"' })).slice(0, 2), [304, 'HIT']);
  assert.equal(up.calls('/c/range'), 1);
  for (const range of ['bytes=0-1,4-5', 'bytes=26-', 'bytes=5-2', 'items=0-1']) {
    assert.equal((await part(range))[1], 'BYPASS', range);
  }
  assert.equal((await get('/c/range', { range: 'bytes=0-1' }, 'HEAD')).headers['x-cache-status'], 'BYPASS');
  assert.equal(up.calls('/c/range'), 6);
  // compression leaves a 206 alone
  await get('/z/range');
  const z = await get('/z/range', { range: 'bytes=1-2', 'accept-encoding': 'gzip' });
  assert.deepEqual([z.status, z.headers['content-encoding'], z.body], [206, undefined, 'bc']);
});

test('an upstream that encodes by Accept-Encoding but sends no Vary: its encoded answer is kept for the Accept-Encoding it answered, never served to a client that did not ask for that coding (one request with Accept-Encoding: zstd poisoned the entry for every browser)', async () => {
  up.on('/c/enc', (n, req) => (String(req.headers['accept-encoding'] ?? '').includes('gzip')
    ? { headers: { 'cache-control': 'max-age=60', 'content-encoding': 'gzip' }, body: `gz ${n}` }
    : { headers: { 'cache-control': 'max-age=60' }, body: `plain ${n}` }));
  await get('/c/enc', { 'accept-encoding': 'gzip' });
  const again = await get('/c/enc', { 'accept-encoding': 'gzip' });
  assert.deepEqual([status(again), again.body, again.headers['content-encoding']], ['HIT', 'gz 1', 'gzip']);
  const plain = await get('/c/enc');
  assert.deepEqual([plain.body, plain.headers['content-encoding']], ['plain 2', undefined]);
  const plainHit = await get('/c/enc');
  assert.deepEqual([status(plainHit), plainHit.body], ['HIT', 'plain 2']);
});

test('Vary: one entry per variant, the right one served; Vary: * never matches', async () => {
  up.on('/c/vary', (_n, req) => ({ headers: { 'cache-control': 'max-age=60', vary: 'Accept-Language' }, body: `lang ${req.headers['accept-language'] ?? 'none'}` }));
  const en1 = await get('/c/vary', { 'accept-language': 'en' });
  const de1 = await get('/c/vary', { 'accept-language': 'de' });
  const en2 = await get('/c/vary', { 'accept-language': 'en' });
  const de2 = await get('/c/vary', { 'accept-language': 'de' });
  const none = await get('/c/vary');
  assert.deepEqual([en1, de1, en2, de2, none].map(status), ['MISS', 'MISS', 'HIT', 'HIT', 'MISS']);
  assert.deepEqual([en2.body, de2.body, none.body], ['lang en', 'lang de', 'lang none']);
  assert.equal(up.calls('/c/vary'), 3);
  up.on('/c/vary-star', () => ({ headers: { 'cache-control': 'max-age=60', vary: '*' } }));
  await get('/c/vary-star');
  assert.equal(status(await get('/c/vary-star')), 'MISS');
});

test('revalidation: a stale entry goes upstream with If-None-Match / If-Modified-Since; a 304 refreshes the stored fields and the client gets the stored 200', async () => {
  up.on('/c/reval', (n, req) => (n === 1
    ? { headers: { 'cache-control': 'max-age=1', etag: '"r1"', 'x-version': '1' }, body: 'the stored body', noDate: true }
    : req.headers['if-none-match'] === '"r1"'
      ? { status: 304, headers: { 'cache-control': 'max-age=60', etag: '"r1"', 'x-version': '2' }, noDate: true }
      : { body: 'unexpected' }));
  up.on('/c/lm', (n, req) => (n === 1
    ? { headers: { 'cache-control': 'max-age=1', 'last-modified': 'Tue, 01 Jan 2030 00:00:00 GMT' }, body: 'lm body', noDate: true }
    : req.headers['if-modified-since'] === 'Tue, 01 Jan 2030 00:00:00 GMT' ? { status: 304, headers: { 'cache-control': 'max-age=60' } } : { body: 'unexpected' }));
  up.on('/c/changed', (n) => ({ headers: { 'cache-control': 'max-age=1', etag: `"v${n}"` }, body: `version ${n}`, noDate: true }));
  await get('/c/reval');
  await get('/c/lm');
  await get('/c/changed');
  await sleep(1100);
  const r = await get('/c/reval');
  assert.equal(r.status, 200);
  assert.equal(status(r), 'REVALIDATED');
  assert.equal(r.body, 'the stored body');
  assert.equal(r.headers['x-version'], '2');
  assert.equal(r.headers['cache-control'], 'max-age=60');
  assert.equal(up.seen('/c/reval')[1]!['if-none-match'], '"r1"');
  const again = await get('/c/reval');
  assert.equal(status(again), 'HIT');
  assert.equal(again.headers['x-version'], '2');
  assert.equal(up.calls('/c/reval'), 2);

  const lm = await get('/c/lm');
  assert.equal(status(lm), 'REVALIDATED');
  assert.equal(lm.body, 'lm body');
  assert.equal(status(await get('/c/lm')), 'HIT');

  const changed = await get('/c/changed');
  assert.equal(status(changed), 'MISS');
  assert.equal(changed.body, 'version 2');
  assert.equal(up.seen('/c/changed')[1]!['if-none-match'], '"v1"');
  assert.equal((await get('/c/changed')).body, 'version 2');
});

test('client conditional requests: If-None-Match / If-Modified-Since matching the stored response get a 304 from the cache', async () => {
  up.on('/c/cond', () => ({ headers: { 'cache-control': 'max-age=60', etag: '"c1"', 'last-modified': 'Mon, 01 Jan 2024 00:00:00 GMT' }, body: 'cond' }));
  // A miss: the client's validator is not sent upstream (the whole response is stored), and answered here.
  const first = await get('/c/cond', { 'if-none-match': '"c1"' });
  assert.equal(first.status, 304);
  assert.equal(first.body, '');
  assert.equal(up.seen('/c/cond')[0]!['if-none-match'], undefined);
  const hit = await get('/c/cond', { 'if-none-match': 'W/"c1"' });
  assert.equal(hit.status, 304);
  assert.equal(status(hit), 'HIT');
  assert.equal(hit.headers.etag, '"c1"');
  assert.equal(hit.headers['content-type'], undefined);
  const other = await get('/c/cond', { 'if-none-match': '"zz"' });
  assert.equal(other.status, 200);
  assert.equal(other.body, 'cond');
  assert.equal((await get('/c/cond', { 'if-modified-since': 'Tue, 02 Jan 2024 00:00:00 GMT' })).status, 304);
  assert.equal((await get('/c/cond', { 'if-modified-since': 'Sun, 31 Dec 2023 00:00:00 GMT' })).status, 200);
  assert.equal(up.calls('/c/cond'), 1);
});

test('stale-while-revalidate: every client gets the stale entry at once; the gateway revalidates it in the background, once', async () => {
  up.on('/c/swr', (n) => ({ headers: { 'cache-control': 'max-age=1, stale-while-revalidate=30', etag: `"e${n}"` }, body: `swr ${n}`, noDate: true, delay: n === 1 ? 0 : 400 }));
  await get('/c/swr', { 'x-turnpike-refresh': 'forged-token-0123456789' });
  await sleep(1100);
  const t0 = Date.now();
  const all = await Promise.all([get('/c/swr'), get('/c/swr'), get('/c/swr'), get('/c/swr')]);
  assert.ok(Date.now() - t0 < 300, `stale answers took ${Date.now() - t0} ms (the upstream takes 400)`);
  for (const o of all) {
    assert.equal(o.body, 'swr 1');
    assert.equal(status(o), 'STALE');
  }
  // The background refresh: one upstream request, revalidating with the entry's validator.
  for (let i = 0; i < 40 && up.calls('/c/swr') < 2; i++) await sleep(25);
  await sleep(500);
  assert.equal(up.calls('/c/swr'), 2);
  const seen = up.seen('/c/swr');
  assert.equal(seen[1]!['if-none-match'], '"e1"');
  for (const h of seen) assert.equal(h['x-turnpike-refresh'], undefined, 'the marker never reaches the upstream');
  const after = await get('/c/swr');
  assert.equal(after.body, 'swr 2');
  assert.equal(status(after), 'HIT');
  assert.equal(up.calls('/c/swr'), 2);
});

test('stale-while-revalidate: a forged refresh marker is an ordinary request (served from the cache, not forced upstream)', async () => {
  up.on('/c/forged', (n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `f ${n}` }));
  await get('/c/forged');
  const r = await get('/c/forged', { 'x-turnpike-refresh': 'a'.repeat(24) });
  assert.equal(status(r), 'HIT');
  assert.equal(up.calls('/c/forged'), 1);
});

test('stale-if-error: a 5xx or an upstream that is gone is answered with the stale entry; never past must-revalidate; config defaults apply', async () => {
  flaky.on('/f/sie', (n) => (n === 1 ? { headers: { 'cache-control': 'max-age=1, stale-if-error=60' }, body: 'good', noDate: true } : { status: 503, body: 'down' }));
  flaky.on('/f/strict', (n) => (n === 1 ? { headers: { 'cache-control': 'max-age=1, must-revalidate, stale-if-error=60' }, body: 'good', noDate: true } : { status: 503, body: 'down' }));
  up.on('/d/sie', (n) => (n === 1 ? { headers: { 'cache-control': 'max-age=1' }, body: 'default window', noDate: true } : { status: 502, body: 'bad' }));
  up.on('/c/nosie', (n) => (n === 1 ? { headers: { 'cache-control': 'max-age=1' }, body: 'no window', noDate: true } : { status: 503, body: 'down' }));
  for (const p of ['/f/sie', '/f/strict', '/d/sie', '/c/nosie']) await get(p);
  await sleep(1100);
  const s = await get('/f/sie');
  assert.equal(s.status, 200);
  assert.equal(s.body, 'good');
  assert.equal(status(s), 'STALE');
  assert.ok(Number(s.headers.age) >= 1);
  const strict = await get('/f/strict');
  assert.equal(strict.status, 503);
  assert.equal(strict.body, 'down');
  const d = await get('/d/sie');
  assert.equal(d.status, 200);
  assert.equal(d.body, 'default window');
  assert.equal((await get('/c/nosie')).status, 503);
  // the upstream goes away: the gateway's 502 becomes the stale entry
  await flaky.close();
  const gone = await get('/f/sie');
  assert.equal(gone.status, 200);
  assert.equal(gone.body, 'good');
  assert.equal(status(gone), 'STALE');
  assert.equal((await get('/f/strict')).status, 502);
});

test('no-cache responses are revalidated on every use; request no-cache / max-age=0 revalidate; only-if-cached gets 504 on a miss; max-stale accepts stale', async () => {
  up.on('/c/nocache', (n, req) => (n > 1 && req.headers['if-none-match'] === '"n1"' ? { status: 304, headers: { etag: '"n1"' } } : { headers: { 'cache-control': 'no-cache', etag: '"n1"' }, body: 'nc' }));
  await get('/c/nocache');
  const n2 = await get('/c/nocache');
  const n3 = await get('/c/nocache');
  assert.deepEqual([n2, n3].map(status), ['REVALIDATED', 'REVALIDATED']);
  assert.equal(n3.body, 'nc');
  assert.equal(up.calls('/c/nocache'), 3);

  up.on('/c/rd', (n, req) => (req.headers['if-none-match'] === '"d1"' ? { status: 304, headers: { etag: '"d1"', 'cache-control': 'max-age=60' } } : { headers: { 'cache-control': 'max-age=60', etag: '"d1"' }, body: `rd ${n}` }));
  await get('/c/rd');
  assert.equal(status(await get('/c/rd', { 'cache-control': 'no-cache' })), 'REVALIDATED');
  assert.equal(status(await get('/c/rd', { pragma: 'no-cache' })), 'REVALIDATED');
  assert.equal(up.calls('/c/rd'), 3);
  const oic = await get('/c/rd', { 'cache-control': 'only-if-cached' });
  assert.equal(oic.status, 200);
  assert.equal(status(oic), 'HIT');
  const miss = await get('/c/never-stored', { 'cache-control': 'only-if-cached' });
  assert.equal(miss.status, 504);
  assert.equal(up.calls('/c/never-stored'), 0);

  // (a stale entry is kept past its stale windows only with a validator: `keep`)
  up.on('/c/maxstale', (n) => ({ headers: { 'cache-control': 'max-age=1', 'last-modified': 'Mon, 01 Jan 2024 00:00:00 GMT' }, body: `ms ${n}`, noDate: true }));
  await get('/c/maxstale');
  await sleep(1100);
  const ms = await get('/c/maxstale', { 'cache-control': 'max-stale=60' });
  assert.equal(status(ms), 'STALE');
  assert.equal(ms.body, 'ms 1');
  assert.equal(status(await get('/c/maxstale', { 'cache-control': 'max-age=0' })), 'MISS');
  assert.equal(up.calls('/c/maxstale'), 2);
});

test('invalidation (§4.4): a successful POST/PUT/DELETE/PATCH invalidates its URI (every query), and Location / Content-Location on the same host; a failed one does not', async () => {
  up.on('/c/inv', (n, req) => (req.method === 'GET' ? { headers: { 'cache-control': 'max-age=60' }, body: `inv ${n}` } : { status: 201 }));
  up.on('/c/inv-other', (n, req) => (req.method === 'GET' ? { headers: { 'cache-control': 'max-age=60' }, body: `other ${n}` } : { status: 200 }));
  up.on('/c/inv-fail', (n, req) => (req.method === 'GET' ? { headers: { 'cache-control': 'max-age=60' } } : { status: 500 }));
  const warm = async (p: string) => { await get(p); assert.equal(status(await get(p)), 'HIT', p); };
  await warm('/c/inv');
  await warm('/c/inv?x=1');
  await warm('/c/inv-other');
  await warm('/c/inv-fail');
  assert.equal((await get('/c/inv', {}, 'POST')).status, 201);
  assert.equal(status(await get('/c/inv')), 'MISS');
  assert.equal(status(await get('/c/inv?x=1')), 'MISS');
  for (const m of ['PUT', 'DELETE', 'PATCH']) {
    await get('/c/inv');
    assert.equal(status(await get('/c/inv')), 'HIT');
    await get('/c/inv', {}, m);
    assert.equal(status(await get('/c/inv')), 'MISS', m);
  }
  up.on('/c/inv-loc', (_n, req) => (req.method === 'GET' ? { headers: { 'cache-control': 'max-age=60' } } : { status: 201, headers: { location: '/c/inv-other', 'content-location': 'http://elsewhere.example/c/inv-fail' } }));
  await get('/c/inv-loc', {}, 'POST');
  assert.equal(status(await get('/c/inv-other')), 'MISS');
  assert.equal(status(await get('/c/inv-fail')), 'HIT');
  await get('/c/inv-fail', {}, 'DELETE');
  assert.equal(status(await get('/c/inv-fail')), 'HIT');
});

test('request collapsing: 100 concurrent misses make exactly one upstream call; an uncacheable leader lets the waiters go upstream themselves', async () => {
  up.on('/c/collapse', (n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `collapsed ${n}`, delay: 300 }));
  const all = await Promise.all(Array.from({ length: 100 }, () => get('/c/collapse')));
  assert.equal(up.calls('/c/collapse'), 1);
  assert.ok(all.every((r) => r.status === 200 && r.body === 'collapsed 1'));
  assert.equal(all.filter((r) => status(r) === 'MISS').length, 1);
  assert.equal(all.filter((r) => status(r) === 'HIT').length, 99);

  // a stale entry: one conditional request, the others wait for its 304
  up.on('/c/collapse-reval', (n) => (n === 1
    ? { headers: { 'cache-control': 'max-age=1', etag: '"cr"' }, body: 'reval body', noDate: true }
    : { status: 304, headers: { 'cache-control': 'max-age=60', etag: '"cr"' }, delay: 200 }));
  await get('/c/collapse-reval');
  await sleep(1100);
  const rv = await Promise.all(Array.from({ length: 50 }, () => get('/c/collapse-reval')));
  assert.equal(up.calls('/c/collapse-reval'), 2);
  assert.ok(rv.every((r) => r.status === 200 && r.body === 'reval body'));
  assert.equal(rv.filter((r) => status(r) === 'REVALIDATED').length, 1);

  up.on('/c/collapse-nostore', (n) => ({ headers: { 'cache-control': 'no-store' }, body: `ns ${n}`, delay: 100 }));
  const t0 = Date.now();
  const ns = await Promise.all(Array.from({ length: 100 }, () => get('/c/collapse-nostore')));
  assert.ok(ns.every((r) => r.status === 200 && r.body.startsWith('ns ')));
  assert.equal(up.calls('/c/collapse-nostore'), 100);
  assert.ok(Date.now() - t0 < 5000);
  // collapse: false: every miss goes upstream
  up.on('/u/c', () => ({ headers: { 'cache-control': 'max-age=60' }, delay: 200 }));
  await Promise.all(Array.from({ length: 5 }, () => get('/u/c')));
  assert.equal(up.calls('/u/c'), 5);
});

test('key parts: header:x-tenant keeps tenants apart', async () => {
  up.on('/t/k', (_n, req) => ({ headers: { 'cache-control': 'max-age=60' }, body: `tenant ${req.headers['x-tenant'] ?? '-'}` }));
  const a = await get('/t/k', { 'x-tenant': 'a' });
  const b = await get('/t/k', { 'x-tenant': 'b' });
  const a2 = await get('/t/k', { 'x-tenant': 'a' });
  const none = await get('/t/k');
  assert.deepEqual([a, b, a2, none].map(status), ['MISS', 'MISS', 'HIT', 'MISS']);
  assert.deepEqual([a2.body, b.body, none.body], ['tenant a', 'tenant b', 'tenant -']);
});

test('a key part the client names in Connection (X-Tenant, a key cookie) never reaches the upstream: the key holds it as the upstream got it (absent), and the answer without it is not stored as that tenant\'s', async () => {
  up.on('/t/hop', (_n, req) => ({ headers: { 'cache-control': 'max-age=60' }, body: `tenant ${req.headers['x-tenant'] ?? '-'}` }));
  const poison = await get('/t/hop', { 'x-tenant': 'a', connection: 'x-tenant' });
  assert.equal(poison.body, 'tenant -');
  const a = await get('/t/hop', { 'x-tenant': 'a' });
  assert.deepEqual([status(a), a.body], ['MISS', 'tenant a']);
  assert.equal((await get('/t/hop')).body, 'tenant -');
});

test('per consumer: what an auth plugin let in is cached per consumer; per_consumer: false shares it', async () => {
  const as = (who: string, path: string) => get(path, { apikey: who === 'alice' ? 'alice-key-123' : 'bob-key-1234' });
  up.on('/k/me', (_n, req) => ({ headers: { 'cache-control': 'max-age=60' }, body: `me ${req.headers['x-consumer-name']}` }));
  up.on('/ks/all', (n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `all ${n}` }));
  const a1 = await as('alice', '/k/me');
  const b1 = await as('bob', '/k/me');
  const a2 = await as('alice', '/k/me');
  assert.deepEqual([a1, b1, a2].map(status), ['MISS', 'MISS', 'HIT']);
  assert.deepEqual([b1.body, a2.body], ['me bob', 'me alice']);
  assert.equal((await get('/k/me')).status, 401);
  await as('alice', '/ks/all');
  const shared = await as('bob', '/ks/all');
  assert.equal(status(shared), 'HIT');
  assert.equal(shared.body, 'all 1');
});

test('purge through the admin API: one URL (key), a path, everything; bad filters are 400', async () => {
  for (const p of ['/c/p1', '/c/p2?a=1', '/c/p2?a=2', '/c/p3']) {
    up.on(p.split('?')[0]!, () => ({ headers: { 'cache-control': 'max-age=60' } }));
    await get(p);
    assert.equal(status(await get(p)), 'HIT');
  }
  const purge = (q: string) => request(`${gw.adminUrl}/cache${q}`, { method: 'DELETE' });
  const byKey = await purge(`?key=${encodeURIComponent(`127.0.0.1:${gw.port}/c/p2?a=1`)}`);
  assert.equal(byKey.status, 200);
  assert.deepEqual(JSON.parse(byKey.body), { purged: 1 });
  assert.equal(status(await get('/c/p2?a=1')), 'MISS');
  assert.equal(status(await get('/c/p2?a=2')), 'HIT');
  assert.deepEqual(JSON.parse((await purge('?path=/c/p1')).body), { purged: 1 });
  assert.equal(status(await get('/c/p1')), 'MISS');
  assert.equal(status(await get('/c/p3')), 'HIT');
  const all = await purge('');
  assert.ok(JSON.parse(all.body).purged >= 3);
  assert.equal(status(await get('/c/p3')), 'MISS');
  assert.equal((await purge('?key=nopath')).status, 400);
  assert.equal((await purge('?host=a')).status, 400);
});

test('the cache survives config reloads (plugin instances are re-created, the zone is not)', async () => {
  up.on('/c/reload', () => ({ headers: { 'cache-control': 'max-age=60' } }));
  await get('/c/reload');
  const rev = gw.gw.revision;
  gw.gw.reload(parseConfigText(config(`      - {name: added, paths: [/added]}`)));
  assert.equal(gw.gw.revision, rev + 1);
  assert.equal(status(await get('/c/reload')), 'HIT');
  // a new max_size for the binding: resized, still there
  gw.gw.reload(parseConfigText(config(`      - {name: added, paths: [/added]}`).replace('config: {ttl: 30s}', 'config: {ttl: 30s, max_size: 32mb}')));
  assert.equal(gw.gw.revision, rev + 2);
  assert.equal(status(await get('/c/reload')), 'HIT');
  assert.equal(up.calls('/c/reload'), 1);
  gw.gw.reload(parseConfigText(text));
});

test('an Age that came as a list (an intermediary folded two) counts by its first member (RFC 9111 §5.1), not as no Age at all: an answer older than its max-age is not served as fresh', async () => {
  up.on('/c/age-list', () => ({ headers: { 'cache-control': 'max-age=60', age: '70, 5' } }));
  await get('/c/age-list');
  assert.notEqual(status(await get('/c/age-list')), 'HIT');
  assert.equal(up.calls('/c/age-list'), 2);
  up.on('/c/age-list2', () => ({ headers: { 'cache-control': 'max-age=600', age: '50, 5' } }));
  await get('/c/age-list2');
  const hit = await get('/c/age-list2');
  assert.equal(status(hit), 'HIT');
  assert.ok(Number(hit.headers.age) >= 50, String(hit.headers.age));
});

test('hostile upstream and client fields never break a request: bogus Cache-Control, huge max-age, negative Age, malformed dates, Vary with 1000 names', async () => {
  up.on('/c/h1', () => ({ headers: { 'cache-control': 'max-age=99999999999999999999999, , =, "x, =y, \u00e9' } }));
  await get('/c/h1');
  assert.equal(status(await get('/c/h1')), 'HIT');
  up.on('/c/h2', () => ({ headers: { 'cache-control': 'max-age=60', age: '-5' } }));
  await get('/c/h2');
  const h2 = await get('/c/h2');
  assert.equal(status(h2), 'HIT');
  assert.match(String(h2.headers.age), /^[01]$/);
  up.on('/c/h3', () => ({ headers: { expires: 'Thu, 99 Foo 20xx', date: 'yesterday' } }));
  await get('/c/h3');
  assert.equal(status(await get('/c/h3')), 'MISS');
  up.on('/c/h4', () => ({ headers: { 'cache-control': 'max-age=60', vary: Array.from({ length: 1000 }, (_, i) => `h${i}`).join(',') } }));
  assert.equal((await get('/c/h4')).status, 200);
  assert.equal(status(await get('/c/h4')), 'MISS');
  // names the request's header object inherits (constructor, __proto__...) are just absent fields
  up.on('/c/h7', () => ({ headers: { 'cache-control': 'max-age=60', vary: 'constructor, __proto__, toString, hasOwnProperty' } }));
  assert.equal((await get('/c/h7')).status, 200);
  const h7 = await get('/c/h7');
  assert.equal(h7.status, 200);
  assert.equal(status(h7), 'HIT');
  assert.equal(status(await get('/c/h7', { constructor: 'x' })), 'MISS');
  up.on('/c/h5', () => ({ headers: { 'cache-control': 'max-age=60, max-age=1, s-maxage=abc', date: 'garbage', 'last-modified': '\u00ff' } }));
  await get('/c/h5');
  assert.equal((await get('/c/h5')).status, 200);
  up.on('/c/h6', () => ({ headers: { 'cache-control': 'max-age=60', etag: 'no-quotes' } }));
  await get('/c/h6');
  for (const cc of ['max-age=abc, max-stale=-1, min-fresh=99999999999999999999', '"', ',,,,', 'no-cache="']) {
    const r = await get('/c/h6', { 'cache-control': cc, 'if-none-match': '"', 'if-modified-since': 'garbage' });
    assert.equal(r.status, 200, cc);
  }
  // an unterminated no-cache="... still asks for revalidation, which only-if-cached forbids
  assert.equal((await get('/c/h6', { 'cache-control': 'only-if-cached=x, no-cache="' })).status, 504);
  assert.equal((await get('/c/h6', { 'if-none-match': 'no-quotes' })).status, 200);
});

test('check: backend redis without the redis setting, max_body over max_size, and unknown fields are config errors', async () => {
  const { configIssues } = await import('./helpers.js');
  const issues = (cfg: string) => configIssues(`services: [{name: s, url: "http://127.0.0.1:1", routes: [{name: r, paths: [/]}], plugins: [{name: cache, config: ${cfg}}]}]`).map((i) => `${i.path}: ${i.message}`).join('; ');
  assert.match(issues('{backend: redis}'), /backend redis needs the top-level redis setting/);
  assert.match(issues('{max_body: 10mb, max_size: 1mb}'), /max_body is larger than max_size/);
  assert.match(issues('{ttl: soon}'), /ttl/);
  assert.match(issues('{key: ["header:"]}'), /key/);
  assert.match(issues('{bogus: 1}'), /bogus|additional/i);
  assert.equal(issues('{ttl: 30s, key: [consumer, "query:page", "cookie:sid"], methods: [GET]}'), '');
});

test('redis backend: two gateways share entries (TTL set in Redis), invalidation and purge reach both, collapsing still holds', async () => {
  const redis: RedisServer = await startRedis();
  const shared = await programmable();
  const cfg = `
admin: {listen: 127.0.0.1:0}
redis: {url: "${redis.url}", prefix: "tpc:", timeout: 500}
services:
  - name: api
    url: ${shared.url}
    plugins: [{name: cache, config: {backend: redis, ttl: 30s}}]
    routes: [{name: r, paths: [/]}]
`;
  const a = await startGateway(cfg);
  const b = await startGateway(cfg);
  try {
    shared.on('/r/1', (n) => ({ headers: { 'cache-control': 'max-age=60', etag: '"x"' }, body: `shared ${n}` }));
    const first = await request(`${a.url}/r/1`);
    assert.equal(status(first), 'MISS');
    // b's host differs (its own port): entries are keyed by the host clients ask for, so ask for a's.
    // (the write to Redis is not awaited by the request: a few tries)
    const viaB = () => request(`${b.url}/r/1`, { headers: { host: `127.0.0.1:${a.port}` } });
    let fromB = await viaB();
    for (let i = 0; i < 20 && status(fromB) !== 'HIT'; i++) {
      await sleep(25);
      fromB = await viaB();
    }
    assert.equal(status(fromB), 'HIT');
    assert.equal(fromB.body, 'shared 1');
    assert.equal(shared.calls('/r/1'), 1);
    const { rawCommand } = await import('./redis-server.js');
    const keys = await rawCommand(redis.port, ['KEYS', 'tpc:cache:*']);
    const key = /\$\d+\r\n(tpc:cache:[^\r]+)/.exec(keys)![1]!;
    const ttl = Number((await rawCommand(redis.port, ['PTTL', key])).slice(1));
    assert.ok(ttl > 0 && ttl <= 60_000 + 3_600_000, String(ttl));
    // an unsafe request through b invalidates for a
    shared.on('/r/1', (n, req) => (req.method === 'GET' ? { headers: { 'cache-control': 'max-age=60' }, body: `shared ${n}` } : { status: 204 }));
    await request(`${b.url}/r/1`, { method: 'POST', headers: { host: `127.0.0.1:${a.port}` } });
    await sleep(50);
    assert.equal(status(await request(`${a.url}/r/1`)), 'MISS');
    await sleep(50);
    assert.equal(status(await request(`${a.url}/r/1`)), 'HIT');
    const purged = await request(`${b.adminUrl}/cache?path=/r/1`, { method: 'DELETE' });
    assert.equal(JSON.parse(purged.body).purged, 1);
    assert.equal(status(await request(`${a.url}/r/1`)), 'MISS');
    // collapsing in front of Redis
    shared.on('/r/c', () => ({ headers: { 'cache-control': 'max-age=60' }, delay: 300 }));
    const many = await Promise.all(Array.from({ length: 50 }, () => request(`${a.url}/r/c`)));
    assert.ok(many.every((r) => r.status === 200));
    assert.equal(shared.calls('/r/c'), 1);
    // Redis gone: requests are still served (misses), never errors
    await redis.kill();
    shared.on('/r/down', () => ({ headers: { 'cache-control': 'max-age=60' } }));
    const down = await request(`${a.url}/r/down`);
    assert.equal(down.status, 200);
    assert.equal((await request(`${a.url}/r/down`)).status, 200);
  } finally {
    await a.close();
    await b.close();
    await shared.close();
    await redis.stop();
  }
});

test('a route without the plugin is untouched (no status header), and a port nobody listens on gives the plain 502', async () => {
  const port = await freePort();
  const g = await startGateway(`
services:
  - name: none
    url: http://127.0.0.1:${port}
    routes: [{name: r, paths: [/]}]
  - name: cached
    url: http://127.0.0.1:${port}
    plugins: [{name: cache}]
    routes: [{name: c, paths: [/c]}]
`);
  try {
    const r = await request(`${g.url}/x`);
    assert.equal(r.status, 502);
    assert.equal(r.headers['x-cache-status'], undefined);
    const c = await request(`${g.url}/c/x`);
    assert.equal(c.status, 502);
    assert.equal(c.headers['content-type'], 'application/problem+json');
  } finally {
    await g.close();
  }
});

test('with compression: hits are compressed like misses (the entry is stored uncompressed)', async () => {
  up.on('/z/doc', () => ({ headers: { 'cache-control': 'max-age=60', 'content-type': 'text/plain' }, body: 'z'.repeat(2000) }));
  const fetchGz = (headers: Record<string, string>) => new Promise<{ headers: IncomingMessage['headers']; body: Buffer }>((resolve, reject) => {
    const req = httpRequest(`${gw.url}/z/doc`, { headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
  const miss = await fetchGz({ 'accept-encoding': 'gzip' });
  const hit = await fetchGz({ 'accept-encoding': 'gzip' });
  const plain = await fetchGz({});
  assert.equal(miss.headers['x-cache-status'], 'MISS');
  assert.equal(hit.headers['x-cache-status'], 'HIT');
  assert.equal(hit.headers['content-encoding'], 'gzip');
  assert.equal(gunzipSync(hit.body).toString(), 'z'.repeat(2000));
  assert.equal(plain.headers['x-cache-status'], 'HIT');
  assert.equal(plain.headers['content-encoding'], undefined);
  assert.equal(plain.body.toString(), 'z'.repeat(2000));
  assert.match(String(plain.headers.vary), /Accept-Encoding/);
  assert.equal(up.calls('/z/doc'), 1);
});

test('with compression: a 304 carries the ETag and Vary its 200 would (the weak ETag of a compressed variant, Vary: Accept-Encoding), from the cache and from the upstream', async () => {
  up.on('/z/etag', () => ({ headers: { 'cache-control': 'max-age=60', 'content-type': 'text/plain', etag: '"e1"' }, body: 'e'.repeat(2000) }));
  const gz = { 'accept-encoding': 'gzip' };
  const full = await get('/z/etag', gz);
  assert.equal(full.headers['content-encoding'], 'gzip');
  assert.equal(full.headers.etag, 'W/"e1"');
  // the browser revalidates with the validator it got
  const hit = await get('/z/etag', { ...gz, 'if-none-match': 'W/"e1"' });
  assert.equal(hit.status, 304);
  assert.equal(status(hit), 'HIT');
  assert.equal(hit.headers.etag, 'W/"e1"');
  assert.match(String(hit.headers.vary), /Accept-Encoding/);
  // an upstream's own 304 (no cache on the way): the same
  const origin = await startUpstream((req, res) => {
    const inm = req.headers['if-none-match'];
    // (a 304's Content-Length is the 200's, RFC 9110 §8.6)
    if (inm !== undefined && inm.replace(/^W\//, '') === '"o1"') res.writeHead(304, { etag: '"o1"', 'cache-control': 'max-age=60', 'content-length': req.url === '/small' ? '4' : '2000' }).end();
    else {
      const body = req.url === '/small' ? 'tiny' : 'o'.repeat(2000);
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length, etag: '"o1"', 'cache-control': 'max-age=60' }).end(body);
    }
  });
  const g = await startGateway(`services:
  - name: web
    url: ${origin.url}
    plugins: [{name: compression}]
    routes: [{name: r, paths: [/]}]
`);
  try {
    const first = await request(`${g.url}/big`, { headers: gz });
    assert.equal(first.headers.etag, 'W/"o1"');
    const again = await request(`${g.url}/big`, { headers: { ...gz, 'if-none-match': first.headers.etag! } });
    assert.equal(again.status, 304);
    assert.equal(again.headers.etag, 'W/"o1"');
    assert.match(String(again.headers.vary), /Accept-Encoding/);
    assert.equal(again.headers['content-length'], undefined, 'the compressed 200 has no Content-Length: its 304 none either');
    // a body sent uncompressed (under min_size) kept its strong ETag: its 304 keeps it too
    const small = await request(`${g.url}/small`, { headers: gz });
    assert.equal(small.headers.etag, '"o1"');
    const smallAgain = await request(`${g.url}/small`, { headers: { ...gz, 'if-none-match': '"o1"' } });
    assert.equal(smallAgain.status, 304);
    assert.equal(smallAgain.headers.etag, '"o1"');
    assert.equal(smallAgain.headers['content-length'], '4');
  } finally {
    await g.close();
    await origin.close();
  }
});

test('the wall clock stepping (NTP, a VM restored) changes no freshness: time stored is measured on a monotonic clock (an hour forward made every entry stale, an hour back kept them fresh an hour longer)', async () => {
  let calls = 0;
  const origin = await startUpstream((req, res) => {
    calls++;
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': req.url === '/back' ? 'max-age=1' : 'max-age=30' }).end(`v${calls}`);
  });
  const g = await startGateway(`services:
  - name: web
    url: ${origin.url}
    plugins: [{name: cache}]
    routes: [{name: r, paths: [/]}]
`);
  const realNow = Date.now;
  try {
    assert.equal((await request(`${g.url}/fwd`)).headers['x-cache-status'], 'MISS');
    assert.equal((await request(`${g.url}/back`)).headers['x-cache-status'], 'MISS');
    Date.now = () => realNow() + 3_600_000;
    const fwd = await request(`${g.url}/fwd`);
    Date.now = realNow;
    assert.equal(fwd.headers['x-cache-status'], 'HIT');
    assert.match(String(fwd.headers.age), /^[0-9]$/);
    Date.now = () => realNow() - 3_600_000;
    await sleep(1300);
    const back = await request(`${g.url}/back`);
    Date.now = realNow;
    assert.notEqual(back.headers['x-cache-status'], 'HIT', 'max-age=1 was fresh 1.3 s later');
    assert.equal(calls, 3);
  } finally {
    Date.now = realNow;
    await g.close();
    await origin.close();
  }
});

test('with request-validator: an upstream answer the validator refuses is never stored; a valid one is', async () => {
  up.on('/v/bad', () => ({ headers: { 'cache-control': 'max-age=60', 'content-type': 'application/json' }, body: JSON.stringify({ id: 'not-a-number' }) }));
  up.on('/v/good', () => ({ headers: { 'cache-control': 'max-age=60', 'content-type': 'application/json' }, body: JSON.stringify({ id: 1 }) }));
  for (let i = 0; i < 2; i++) assert.equal((await get('/v/bad')).status, 502);
  assert.equal(up.calls('/v/bad'), 2);
  assert.equal(status(await get('/v/good')), 'MISS');
  assert.equal(status(await get('/v/good')), 'HIT');
  assert.equal(up.calls('/v/good'), 1);
});

test('a 304 during revalidation that makes the entry unstorable (Set-Cookie, private) or names another ETag never reaches other clients', async () => {
  let step = 0;
  up.on('/c/reval-cookie', (_n, req) => (step === 1 && req.headers['if-none-match'] === '"a"'
    ? { status: 304, headers: { etag: '"a"', 'set-cookie': 'session=VICTIM', 'cache-control': 'max-age=60' }, body: '' }
    : { headers: { 'cache-control': 'max-age=1', etag: '"a"' }, body: 'public body' }));
  assert.equal(status(await get('/c/reval-cookie')), 'MISS');
  await sleep(2100);
  step = 1;
  const victim = await get('/c/reval-cookie', { cookie: 'sid=1' });
  assert.equal(victim.status, 200);
  assert.equal(victim.headers['set-cookie']?.[0], 'session=VICTIM', 'the client that caused it gets its cookie');
  const other = await get('/c/reval-cookie');
  assert.equal(other.headers['set-cookie'], undefined, 'another client never gets that Set-Cookie');
  assert.notEqual(status(other), 'HIT');

  let v = 0;
  up.on('/c/reval-etag', () => (v++ === 0
    ? { headers: { 'cache-control': 'max-age=1', etag: '"v1"' }, body: 'version one' }
    : { status: 304, headers: { etag: '"v2"', 'cache-control': 'max-age=60' }, body: '' }));
  await get('/c/reval-etag');
  await sleep(2100);
  const r = await get('/c/reval-etag');
  assert.notEqual(r.headers.etag, '"v2"', 'the v1 body is never labelled v2');
  const again = await get('/c/reval-etag');
  assert.notEqual(status(again), 'HIT', 'an entry the origin no longer stands for is not served fresh');
});

test('cache_authorized without an auth plugin keeps answers per Authorization value', async () => {
  up.on('/ca/me', (_n, req) => ({ headers: { 'cache-control': 'max-age=60' }, body: `secret of ${req.headers.authorization ?? 'nobody'}` }));
  const alice = await get('/ca/me', { authorization: 'Bearer alice' });
  assert.equal(alice.body, 'secret of Bearer alice');
  assert.equal(status(await get('/ca/me', { authorization: 'Bearer alice' })), 'HIT');
  const bob = await get('/ca/me', { authorization: 'Bearer bob' });
  assert.equal(bob.body, 'secret of Bearer bob');
  const none = await get('/ca/me');
  assert.equal(none.body, 'secret of nobody');
});

test('an API key the upstream gets that no auth plugin vouched for (its own X-API-Key; key-auth\'s header or parameter refused, the caller let on as the anonymous consumer) never has one caller\'s answer shared: unless public, s-maxage or Vary names it; cache_authorized keys on it', async () => {
  const mine = (_n: number, req: IncomingMessage) => ({ body: `data of ${req.headers['x-api-key'] ?? req.headers['x-gw-key'] ?? req.url!.split('?')[1] ?? 'nobody'}` });
  up.on('/c/xkey', mine);
  const a = await get('/c/xkey', { 'x-api-key': 'key-a' });
  const b = await get('/c/xkey', { 'x-api-key': 'key-b' });
  const none = await get('/c/xkey');
  assert.deepEqual([a.body, b.body, none.body], ['data of key-a', 'data of key-b', 'data of nobody']);
  assert.equal(up.calls('/c/xkey'), 3);
  // key-auth's own header (x-gw-key here), a key it refused, the caller let on anonymously
  up.on('/ka/me', mine);
  const ka = await get('/ka/me', { 'x-gw-key': 'upstream-only-key-1' });
  const kb = await get('/ka/me', { 'x-gw-key': 'upstream-only-key-2' });
  const kn = await get('/ka/me');
  assert.deepEqual([ka.body, kb.body, kn.body], ['data of upstream-only-key-1', 'data of upstream-only-key-2', 'data of nobody']);
  // ... and its query parameter (left out of the key: the consumer was to be in it)
  up.on('/ka/q', mine);
  const qa = await get('/ka/q?apikey=upstream-only-key-1');
  const qb = await get('/ka/q?apikey=upstream-only-key-2');
  assert.deepEqual([qa.body, qb.body], ['data of apikey=upstream-only-key-1', 'data of apikey=upstream-only-key-2']);
  // an API key parameter a key: [query:NAME] selection leaves out of the key
  up.on('/qp/list', mine);
  const pa = await get('/qp/list?page=1&api_key=key-a');
  const pb = await get('/qp/list?page=1&api_key=key-b');
  assert.deepEqual([pa.body, pb.body], ['data of page=1&api_key=key-a', 'data of page=1&api_key=key-b']);
  await get('/qp/list?page=2&utm=x');
  assert.equal(status(await get('/qp/list?page=2&utm=y')), 'HIT');
  // what the upstream says may be shared is
  up.on('/c/xkey-public', (n) => ({ headers: { 'cache-control': 'public' }, body: `public ${n}` }));
  await get('/c/xkey-public', { 'x-api-key': 'key-a' });
  assert.equal((await get('/c/xkey-public', { 'x-api-key': 'key-b' })).body, 'public 1');
  // Vary: X-API-Key keeps them apart
  up.on('/c/xkey-vary', (n, req) => ({ headers: { vary: 'X-API-Key' }, body: `${n} ${req.headers['x-api-key']}` }));
  await get('/c/xkey-vary', { 'x-api-key': 'key-a' });
  const va = await get('/c/xkey-vary', { 'x-api-key': 'key-a' });
  const vb = await get('/c/xkey-vary', { 'x-api-key': 'key-b' });
  assert.deepEqual([status(va), va.body, status(vb), vb.body], ['HIT', '1 key-a', 'MISS', '2 key-b']);
  // cache_authorized: kept per key
  up.on('/ca/xkey', mine);
  await get('/ca/xkey', { 'x-api-key': 'key-a' });
  const ca = await get('/ca/xkey', { 'x-api-key': 'key-a' });
  const cb = await get('/ca/xkey', { 'x-api-key': 'key-b' });
  assert.deepEqual([status(ca), ca.body, cb.body], ['HIT', 'data of key-a', 'data of key-b']);
});

test('never stored: a GET with a body (fat GET), a cookie request whose answer has no explicit freshness, a repeated Vary field; If-Match goes to the origin', async () => {
  up.on('/c/fat', (_n, req) => ({ headers: { 'cache-control': 'max-age=60' }, body: `rendered with ${req.headers['content-length'] ?? 'no'} body` }));
  const fat = await request(`${gw.url}/c/fat`, { method: 'GET', headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': '13' }, body: 'callback=evil' });
  assert.match(fat.body, /rendered with 13 body/);
  const plain = await get('/c/fat');
  assert.equal(plain.body, 'rendered with no body', 'the fat GET poisoned the entry');

  up.on('/c/account.php/x.css', (_n, req) => ({ body: `account of ${req.headers.cookie ?? 'nobody'}` }));
  assert.equal((await get('/c/account.php/x.css', { cookie: 'sid=victim' })).body, 'account of sid=victim');
  assert.equal((await get('/c/account.php/x.css')).body, 'account of nobody', 'a cookie request was cached by the heuristic (cache deception)');
  up.on('/c/cookie-public', (_n, req) => ({ headers: { 'cache-control': 'public, max-age=60' }, body: `page for ${req.headers.cookie ?? 'nobody'}` }));
  await get('/c/cookie-public', { cookie: 'analytics=1' });
  assert.equal(status(await get('/c/cookie-public')), 'HIT', 'an explicit lifetime still lets it be shared');

  up.on('/c/vary-ua', (_n, req) => ({ headers: { 'cache-control': 'max-age=60', vary: 'User-Agent' }, body: `for ${JSON.stringify(req.headers['user-agent'])}` }));
  await request(`${gw.url}/c/vary-ua`, { headers: ['User-Agent', 'VictimBrowser/1.0', 'User-Agent', '<script>evil</script>'] });
  const victim = await get('/c/vary-ua', { 'user-agent': 'VictimBrowser/1.0' });
  assert.equal(status(victim), 'MISS', 'a response to a request with two User-Agent fields was stored');

  up.on('/c/im', () => ({ headers: { 'cache-control': 'max-age=60', etag: '"x"' }, body: 'im' }));
  await get('/c/im');
  const calls = up.calls('/c/im');
  const pre = await get('/c/im', { 'if-match': '"other"' });
  assert.equal(up.calls('/c/im'), calls + 1, 'If-Match is for the origin to judge');
  assert.notEqual(status(pre), 'HIT');
});

test('stale-if-error in the request (RFC 5861 §4): the client takes the stale entry when the upstream fails, though the response gave no window; a client that asked for revalidation (max-age=0) and waited for another request is not handed it', async () => {
  up.on('/c/rsie', (n) => (n === 1 ? { headers: { 'cache-control': 'max-age=1', etag: '"r"' }, body: 'good', noDate: true } : { status: 503, body: 'down' }));
  up.on('/c/wsie', (n) => (n === 1 ? { headers: { 'cache-control': 'max-age=1, stale-if-error=60' }, body: 'good', noDate: true } : { status: 503, body: 'down', delay: n === 2 ? 300 : 0 }));
  await get('/c/rsie');
  await get('/c/wsie');
  await sleep(1100);
  const asked = await get('/c/rsie', { 'cache-control': 'stale-if-error=60' });
  assert.equal(asked.status, 200);
  assert.equal(asked.body, 'good');
  assert.equal(status(asked), 'STALE');
  assert.equal((await get('/c/rsie', { 'cache-control': 'stale-if-error=0' })).status, 503);
  assert.equal((await get('/c/rsie')).status, 503, 'no window: the error');
  assert.equal((await get('/c/rsie', { 'cache-control': 'max-age=0, stale-if-error=60' })).body, 'good', 'revalidate, but stale on an error');

  const leader = get('/c/wsie');
  await sleep(100);
  const waiter = await get('/c/wsie', { 'cache-control': 'max-age=0' });
  assert.equal((await leader).body, 'good', 'the leader takes the stale entry (the response\'s window)');
  assert.equal(waiter.status, 503, 'the client asked for revalidation: the stale entry is not its answer');
});

test('a client that asked for revalidation (no-cache) is not handed the stale entry when the upstream fails', async () => {
  // (route /d has stale_if_error: 1m: without the request's no-cache the stored entry would stand in)
  let n = 0;
  up.on('/d/forced', () => (n++ === 0 ? { headers: { 'cache-control': 'max-age=60' }, body: 'stored' } : { status: 503, body: 'down' }));
  await get('/d/forced');
  const r = await get('/d/forced', { 'cache-control': 'no-cache' });
  assert.equal(r.status, 503);
  assert.notEqual(status(r), 'STALE');
});

test('invalidation (§4.4) by a write through another route, one without the cache plugin: the URI\'s entries go (they stayed stale for their lifetime)', async () => {
  up.on('/c/w/doc', (n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `doc ${n}` }));
  up.on('/c/w/other', (n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `other ${n}` }));
  await get('/c/w/doc');
  await get('/c/w/other');
  assert.equal(status(await get('/c/w/doc')), 'HIT');
  up.on('/c/w/new', () => ({ status: 201, headers: { location: '/c/w/other' } }));
  const put = await get('/c/w/doc', {}, 'PUT');
  assert.equal(put.headers['x-cache-status'], undefined);
  const after = await get('/c/w/doc');
  assert.deepEqual([status(after), after.body], ['MISS', 'doc 3']); // (the PUT was call 2)
  // a failed write invalidates nothing; Location on the same host is invalidated too
  up.on('/c/w/fail', () => ({ status: 409 }));
  await get('/c/w/fail', {}, 'POST');
  assert.equal(status(await get('/c/w/doc')), 'HIT');
  await get('/c/w/new', {}, 'POST');
  assert.deepEqual([status(await get('/c/w/other')), status(await get('/c/w/doc'))], ['MISS', 'HIT']);
});

test('a write with a body on a closing connection (Connection: close, the socket let go by the time the answer comes) invalidates, and is answered: the plugin read the TLS state of a socket that was gone (a 500 to every such POST with a Location)', async () => {
  up.on('/c/closing', (n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `closing ${n}` }));
  await get('/c/closing');
  assert.equal(status(await get('/c/closing')), 'HIT');
  up.on('/c/closing-post', () => ({ status: 201, headers: { location: '/c/closing' } }));
  const post = await request(`${gw.url}/c/closing-post`, { method: 'POST', headers: { connection: 'close', 'content-type': 'text/plain' }, body: 'x' });
  assert.equal(post.status, 201);
  assert.equal(status(await get('/c/closing')), 'MISS');
});

test('invalidation through Location names paths as the cache keys them (%7E is ~)', async () => {
  up.on('/c/~u', () => ({ headers: { 'cache-control': 'max-age=60' }, body: 'tilde' }));
  await get('/c/~u');
  assert.equal(status(await get('/c/~u')), 'HIT');
  up.on('/c/post-here', () => ({ status: 201, headers: { location: '/c/%7Eu' }, body: '' }));
  await get('/c/post-here', {}, 'POST');
  assert.equal(status(await get('/c/~u')), 'MISS');
});

test('a GET in flight when a POST invalidates its path does not store its (older) answer', async () => {
  up.on('/c/race', (_n, req) => (req.method === 'POST' ? { status: 200, body: 'written' } : { headers: { 'cache-control': 'max-age=60' }, body: 'before the write', delay: 300 }));
  const slow = get('/c/race');
  await sleep(100);
  assert.equal((await get('/c/race', {}, 'POST')).status, 200);
  assert.equal((await slow).body, 'before the write');
  const next = await get('/c/race');
  assert.equal(status(next), 'MISS', 'the answer from before the write was stored');
});

test('a GET that comes after a POST invalidated its path does not wait for a GET that went upstream before the write (collapsing): it gets the answer from after the write', async () => {
  let written = false;
  up.on('/c/race-collapse', (_n, req) => {
    if (req.method === 'POST') {
      written = true;
      return { status: 200, body: 'written' };
    }
    return written ? { headers: { 'cache-control': 'max-age=60' }, body: 'after the write' } : { headers: { 'cache-control': 'max-age=60' }, body: 'before the write', delay: 500 };
  });
  const slow = get('/c/race-collapse');
  await sleep(100);
  assert.equal((await get('/c/race-collapse', {}, 'POST')).status, 200);
  const next = await get('/c/race-collapse');
  assert.equal(next.body, 'after the write', 'a GET made after the write was answered with what the upstream said before it');
  assert.equal((await slow).body, 'before the write');
});

/**
 * Credentials are never stored in clear: key-auth's query key is left out of the key (the
 * consumer is in it: one entry for all of a consumer's keys), and what is stored of the key
 * (sub, query, Vary values, key parts) is a digest. `dump` returns everything the backend holds.
 */
async function credentialsNotStored(backend: 'memory' | 'redis'): Promise<void> {
  const redis: RedisServer | null = backend === 'redis' ? await startRedis() : null;
  const origin = await programmable();
  const K1 = 'SuperSecretApiKey0001';
  const K2 = 'SuperSecretApiKey0002';
  const BASIC = 'Basic c2VjcmV0dXNlcjpzZWNyZXRwYXNzd29yZA==';
  const COOKIE = 'SessionCookieSecret42';
  const TOKEN = 'HeaderKeyPartSecret77';
  const cache = `{name: cache, config: {backend: ${backend}, ttl: 60s}}`;
  const cfg = `
admin: {listen: 127.0.0.1:0}
${redis ? `redis: {url: "${redis.url}", prefix: "tpk:", timeout: 500}` : ''}
consumers:
  - {name: acme, credentials: [{type: key-auth, key: ${K1}}, {type: key-auth, key: ${K2}}]}
services:
  - name: api
    url: ${origin.url}
    routes:
      - {name: hidden, paths: [/kcache], plugins: [{name: key-auth, config: {hide_credentials: true}}, ${cache}]}
      - {name: shown, paths: [/kshown], plugins: [{name: key-auth}, ${cache}]}
      - name: authz
        paths: [/authz]
        plugins: [{name: cache, config: {backend: ${backend}, cache_authorized: true, key: ["header:x-token", "cookie:session"]}}]
`;
  const g = await startGateway(cfg);
  const dump = async (): Promise<string> => {
    if (redis !== null) {
      const { Redis } = await import('ioredis');
      const c = new Redis(redis.url, { lazyConnect: true });
      await c.connect();
      try {
        const parts: Buffer[] = [];
        for (const k of await c.keys('*')) {
          parts.push(Buffer.from(k));
          const type = await c.type(k);
          if (type === 'hash') for (const [f, v] of Object.entries(await c.hgetallBuffer(k))) parts.push(Buffer.from(f), v);
          else if (type === 'string') parts.push((await c.getBuffer(k))!);
          else assert.fail(`unexpected ${type} key ${k}`);
        }
        return Buffer.concat(parts).toString('latin1');
      } finally {
        c.disconnect();
      }
    }
    // (the memory zones' entries, as the process holds them)
    const zones = (g.gw.caches as unknown as { memoryZones: Map<string, { store: { lru: { values(): Iterable<unknown> } } }> }).memoryZones;
    const held: unknown[] = [];
    for (const z of zones.values()) held.push(...z.store.lru.values());
    return JSON.stringify(held, (_k, v: unknown) => {
      const b = v as { type?: unknown; data?: number[] } | null;
      return b !== null && typeof b === 'object' && b.type === 'Buffer' && Array.isArray(b.data) ? Buffer.from(b.data).toString('latin1') : v;
    });
  };
  const get = (path: string, headers: Record<string, string> = {}) => request(`${g.url}${path}`, { headers });
  /** Asks until it is a HIT (a Redis write is not awaited by the request that makes it). */
  const hit = async (path: string, headers: Record<string, string> = {}) => {
    let r = await get(path, headers);
    for (let i = 0; i < 40 && status(r) !== 'HIT'; i++) {
      await sleep(25);
      r = await get(path, headers);
    }
    return r;
  };
  try {
    origin.on('/kcache/x', (n, req) => ({ headers: { 'cache-control': 'max-age=60' }, body: `x ${n} ${req.url!.includes('apikey') ? 'KEY' : 'nokey'}` }));
    origin.on('/kshown/x', (n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `shown ${n}` }));
    origin.on('/authz/me', (n) => ({ headers: { 'cache-control': 'public, max-age=60', vary: 'Authorization, Cookie' }, body: `me ${n}` }));

    const first = await get(`/kcache/x?apikey=${K1}&a=1`);
    assert.equal(status(first), 'MISS');
    assert.equal(first.body, 'x 1 nokey');
    const again = await hit(`/kcache/x?apikey=${K1}&a=1`);
    assert.equal(status(again), 'HIT');
    // another key of the same consumer: the same entry
    const other = await get(`/kcache/x?a=1&apikey=${K2}`);
    assert.equal(status(other), 'HIT');
    assert.equal(other.body, 'x 1 nokey');
    assert.equal(origin.calls('/kcache/x'), 1);

    // without hide_credentials (the upstream gets the key), the key is not stored either
    assert.equal(status(await get(`/kshown/x?apikey=${K1}&a=1`)), 'MISS');
    assert.equal(status(await hit(`/kshown/x?apikey=${K1}&a=1`)), 'HIT');
    assert.equal(status(await get(`/kshown/x?apikey=${K2}&a=1`)), 'HIT');

    // Authorization (cache_authorized, and Vary'd), a cookie and a header as key parts
    const as = { authorization: BASIC, cookie: `session=${COOKIE}`, 'x-token': TOKEN };
    assert.equal(status(await get('/authz/me', as)), 'MISS');
    assert.equal(status(await hit('/authz/me', as)), 'HIT');
    assert.equal(status(await get('/authz/me', { ...as, authorization: 'Basic b3RoZXI6b3RoZXI=' })), 'MISS');

    const all = await dump();
    assert.ok(all.length > 0 && all.includes('x 1 nokey'), 'the dump holds the entries');
    for (const secret of [K1, K2, BASIC, BASIC.slice(6), COOKIE, TOKEN]) {
      assert.ok(!all.includes(secret), `${backend} holds ${secret} in clear`);
    }

    // purge by URL: the URL without the credential
    const purged = await request(`${g.adminUrl}/cache?key=${encodeURIComponent(`127.0.0.1:${g.port}/kcache/x?a=1`)}`, { method: 'DELETE' });
    assert.deepEqual(JSON.parse(purged.body), { purged: 1 });
    assert.equal(status(await get(`/kcache/x?apikey=${K2}&a=1`)), 'MISS');
  } finally {
    await g.close();
    await origin.close();
    await redis?.stop();
  }
}

test('credentials are not stored in clear (redis): no query API key, Authorization, key cookie or header in any key or value; one entry for a consumer\'s keys; purge by URL', () => credentialsNotStored('redis'));
test('credentials are not stored in clear (memory): the same in the process\'s entries', () => credentialsNotStored('memory'));

test('with cors bound, the upstream\'s own Vary still keys the entry (cors\'s vary: Origin took it along: a French visitor got the English page); an HTTP/2 GET with a body is never stored', async () => {
  const up = await startUpstream((req, res, body) => {
    if (req.url === '/home') {
      const fr = (req.headers['accept-language'] ?? '').startsWith('fr');
      res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=60', vary: 'Accept-Language' }).end(fr ? 'Bonjour' : 'Hello');
    } else res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=60' }).end(`results for ${body.toString() || 'nothing'}`);
  });
  const g = await startGateway(`http2: {h2c: true}
services:
  - name: web
    url: ${up.url}
    plugins: [{name: cors, config: {origins: ["https://app.example"]}}, {name: cache}]
    routes: [{name: r, paths: [/]}]
`);
  try {
    const origin = { origin: 'https://app.example' };
    assert.equal((await request(`${g.url}/home`, { headers: { ...origin, 'accept-language': 'en' } })).body, 'Hello');
    const fr = await request(`${g.url}/home`, { headers: { ...origin, 'accept-language': 'fr' } });
    assert.equal(fr.body, 'Bonjour');
    assert.match(String(fr.headers.vary), /accept-language/i);
    const en = await request(`${g.url}/home`, { headers: { ...origin, 'accept-language': 'en' } });
    assert.equal(en.body, 'Hello');
    // HTTP/2: HEADERS without END_STREAM and a DATA frame, no content-length (a "fat GET")
    const { connect: h2connect } = await import('node:http2');
    const s = h2connect(g.url);
    try {
      const fat = await new Promise<string>((resolve, reject) => {
        const st = s.request({ ':method': 'GET', ':path': '/search' }, { endStream: false });
        let b = '';
        st.setEncoding('utf8');
        st.on('data', (d: string) => (b += d));
        st.on('end', () => resolve(b));
        st.on('error', reject);
        st.end('<script>x</script>');
      });
      assert.equal(fat, 'results for <script>x</script>');
    } finally {
      s.close();
    }
    assert.equal((await request(`${g.url}/search`)).body, 'results for nothing', 'the fat GET\'s answer was served to a plain GET');
  } finally {
    await g.close();
    await up.close();
  }
});

test('with cors bound, a cache hit carries the cors plugin\'s fields for this request\'s origin, not the stored answer\'s (an upstream\'s Access-Control-Allow-Origin: * replayed to a credentialed origin is refused by browsers)', async () => {
  const up = await startUpstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=60', 'access-control-allow-origin': '*' }).end('data');
  });
  const g = await startGateway(`services:
  - name: web
    url: ${up.url}
    plugins: [{name: cors, config: {origins: ["https://app.example"], credentials: true}}, {name: cache}]
    routes: [{name: r, paths: [/]}]
`);
  try {
    const origin = { origin: 'https://app.example' };
    // stored from a request without Origin (a server-side client, a crawler)
    const miss = await request(`${g.url}/d`);
    assert.equal(miss.headers['x-cache-status'], 'MISS');
    await request(`${g.url}/d`, { headers: origin });
    const hit = await request(`${g.url}/d`, { headers: origin });
    assert.equal(hit.body, 'data');
    assert.equal(hit.headers['x-cache-status'], 'HIT');
    assert.equal(hit.headers['access-control-allow-origin'], 'https://app.example', 'the stored * was replayed');
    assert.equal(hit.headers['access-control-allow-credentials'], 'true');
    assert.match(String(hit.headers.vary), /origin/i);
  } finally {
    await g.close();
    await up.close();
  }
});

test('the key is what the upstream answered to: the scheme a trusted TLS terminator forwards, the route, Vary\'d fields the gateway set (X-Consumer-Name), the default port; a method override is never cached', async () => {
  const up = await startUpstream((req, res) => {
    const u = req.url!;
    const h = req.headers;
    if (u === '/login') {
      // an origin that redirects plain http to https (behind a TLS terminator)
      if (h['x-forwarded-proto'] !== 'https') res.writeHead(301, { location: `https://${h['x-forwarded-host']}/login`, 'cache-control': 'max-age=60' }).end();
      else res.writeHead(200, { 'cache-control': 'max-age=60' }).end('login form');
    } else if (u === '/split') {
      res.writeHead(200, { 'cache-control': 'max-age=60' }).end(`version ${h['x-api-version'] ?? '1'}`);
    } else if (u === '/me') {
      res.writeHead(200, { 'cache-control': 'public, max-age=60', vary: 'X-Consumer-Name' }).end(`profile of ${h['x-consumer-name']}`);
    } else if (u.startsWith('/item')) {
      const m = String(h['x-http-method-override'] ?? req.method);
      res.writeHead(200, { 'cache-control': 'max-age=60' }).end(m === 'DELETE' ? 'deleted' : `item via ${m}`);
    } else res.writeHead(200, { 'cache-control': 'max-age=60' }).end(`${u} ${h.host}`);
  });
  const g = await startGateway(`trusted_proxies: [127.0.0.1]
consumers:
  - {name: alice, credentials: [{type: key-auth, key: alice-key-123}]}
  - {name: bob, credentials: [{type: key-auth, key: bob-key-1234}]}
services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache}]
    routes:
      - {name: login, paths: [/login]}
      - name: v2
        paths: [/split]
        headers: {x-version: "2"}
        plugins: [{name: request-transform, config: {headers: {set: {x-api-version: "2"}}}}]
      - {name: v1, paths: [/split]}
      - name: me
        paths: [/me]
        plugins: [{name: key-auth}, {name: cache, config: {per_consumer: false}}]
      - {name: items, paths: [/item, /p]}
`);
  try {
    const st = (r: { headers: Record<string, unknown> }) => r.headers['x-cache-status'];
    // behind a TLS terminator: plain http first (a 301 to https), then the https clients
    const plain = await request(`${g.url}/login`, { headers: { 'x-forwarded-proto': 'http', 'x-forwarded-host': 'shop.example' } });
    assert.equal(plain.status, 301);
    const tls = await request(`${g.url}/login`, { headers: { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'shop.example' } });
    assert.equal(tls.status, 200, 'an https client got the http redirect from the cache (a redirect loop)');
    assert.equal(tls.body, 'login form');
    assert.equal(st(await request(`${g.url}/login`, { headers: { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'shop.example' } })), 'HIT');
    // another forwarded host: its own entry (absolute links name the host)
    assert.match(String((await request(`${g.url}/login`, { headers: { 'x-forwarded-proto': 'http', 'x-forwarded-host': 'other.example' } })).headers.location), /other\.example/);

    // one path, two routes told apart by a header (one transforms the request)
    assert.equal((await request(`${g.url}/split`)).body, 'version 1');
    assert.equal((await request(`${g.url}/split`, { headers: { 'x-version': '2' } })).body, 'version 2');
    assert.equal((await request(`${g.url}/split`)).body, 'version 1');

    // per_consumer: false, the upstream varies on the consumer the gateway names
    assert.equal((await request(`${g.url}/me`, { headers: { apikey: 'alice-key-123' } })).body, 'profile of alice');
    const bob = await request(`${g.url}/me`, { headers: { apikey: 'bob-key-1234' } });
    assert.equal(bob.body, 'profile of bob', 'bob got alice\'s cached profile');
    // a client's own X-Consumer-Name (never forwarded) does not select another's entry
    assert.equal((await request(`${g.url}/me`, { headers: { apikey: 'bob-key-1234', 'x-consumer-name': 'alice' } })).body, 'profile of bob');
    assert.equal(st(await request(`${g.url}/me`, { headers: { apikey: 'alice-key-123' } })), 'HIT');

    // a GET a framework runs as DELETE: neither stored nor answered from the cache
    assert.equal((await request(`${g.url}/item/1`)).body, 'item via GET');
    const over = await request(`${g.url}/item/1`, { headers: { 'x-http-method-override': 'DELETE' } });
    assert.equal(over.body, 'deleted');
    assert.equal(st(over), 'BYPASS');
    assert.equal((await request(`${g.url}/item/2`, { headers: { 'x-http-method-override': 'DELETE' } })).body, 'deleted');
    assert.equal((await request(`${g.url}/item/2`)).body, 'item via GET', 'the override\'s answer was stored for the GET');

    // `host:80` and `host` are one URI: one entry, invalidated together
    assert.equal(st(await request(`${g.url}/p/a`, { headers: { host: 'shop.example' } })), 'MISS');
    assert.equal(st(await request(`${g.url}/p/a`, { headers: { host: 'shop.example:80' } })), 'HIT');
    await request(`${g.url}/p/a`, { method: 'POST', headers: { host: 'shop.example:80' } });
    assert.equal(st(await request(`${g.url}/p/a`, { headers: { host: 'shop.example' } })), 'MISS');
  } finally {
    await g.close();
    await up.close();
  }
});

test('a stale-while-revalidate refresh is the gateway\'s own: it takes nothing from the client\'s rate limit or quota (2 requests are 2 of each, not 3)', async () => {
  let n = 0;
  const up = await startUpstream((_req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=1, stale-while-revalidate=60', etag: `"v${++n}"` }).end(`version ${n}`);
  });
  const dir = mkdtempSync(join(tmpdir(), 'tp-swr-limits-'));
  const g = await startGateway(`state_file: ${join(dir, 'state.db')}
services:
  - name: web
    url: ${up.url}
    plugins:
      - {name: rate-limit, config: {limit: 3, window: 1h, by: ip}}
      - {name: quota, config: {limit: 3, period: day, by: ip}}
      - {name: cache}
    routes: [{name: r, paths: [/]}]
`);
  try {
    const first = await request(`${g.url}/x`);
    assert.equal(first.headers['x-cache-status'], 'MISS', `${first.status} ${first.body.slice(0, 300)}`);
    await sleep(1100);
    const stale = await request(`${g.url}/x`);
    assert.equal(stale.headers['x-cache-status'], 'STALE');
    for (let i = 0; i < 200 && n < 2; i++) await sleep(25);
    assert.equal(n, 2, 'the background refresh reached the upstream');
    const third = await request(`${g.url}/x`);
    assert.equal(third.status, 200, `the third request is within both limits: ${third.body.slice(0, 200)}`);
    const state = String(third.headers['ratelimit']);
    assert.match(state, /"default";r=0;t=\d+/, state);
    assert.match(state, /"quota";r=0;t=\d+/, state);
    const forged = await request(`${g.url}/x`, { headers: { 'x-turnpike-refresh': 'a-forged-refresh-token-value' } });
    assert.equal(forged.status, 429, 'the fourth is not, whatever refresh marker it forges');
    assert.equal((await request(`${g.url}/x`)).status, 429);
  } finally {
    await g.close();
    await up.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a stale-while-revalidate refresh comes from the client it refreshes for, not the loopback (ip-restriction let the client in and refused the refresh)', async () => {
  let n = 0;
  const seen: (string | undefined)[] = [];
  const up = await startUpstream((req, res) => {
    seen.push(req.headers['x-forwarded-for'] as string | undefined);
    res.writeHead(200, { 'cache-control': 'max-age=1, stale-while-revalidate=60', etag: `"v${++n}"` }).end(`version ${n}`);
  });
  const g = await startGateway(`services:
  - name: web
    url: ${up.url}
    plugins: [{name: ip-restriction, config: {allow: [127.0.0.2]}}, {name: cache}]
    routes: [{name: r, paths: [/]}]
`);
  const from2 = (path: string) => new Promise<{ status: number; body: string; cache: string | undefined }>((resolve, reject) => {
    httpRequest(`${g.url}${path}`, { localAddress: '127.0.0.2', agent: false }, (res) => {
      let b = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (b += c));
      res.on('end', () => resolve({ status: res.statusCode!, body: b, cache: res.headers['x-cache-status'] as string | undefined }));
    }).on('error', reject).end();
  });
  try {
    assert.equal((await request(`${g.url}/x`)).status, 403, '127.0.0.1 is not allowed');
    assert.equal((await from2('/x')).body, 'version 1');
    await sleep(1100);
    const stale = await from2('/x');
    assert.equal(stale.cache, 'STALE');
    for (let i = 0; i < 40 && n < 2; i++) await sleep(25);
    assert.equal(n, 2, 'the background refresh never reached the upstream');
    assert.equal(seen[1], '127.0.0.2');
    for (let i = 0; i < 40; i++) {
      const r = await from2('/x');
      if (r.body === 'version 2') break;
      await sleep(25);
    }
    // (the refreshed answer is served; on a loaded machine its max-age=1, counted from a
    // whole-second Date, may have run out again, and a later refresh stored version 3)
    assert.match((await from2('/x')).body, /^version [2-9]$/);
  } finally {
    await g.close();
    await up.close();
  }
});

test('an upstream that sends no Date: a 304 revalidation freshens the entry from its own arrival, not from the first answer\'s (the entry was stale again at once, every request revalidated)', async () => {
  let full = 0;
  let notModified = 0;
  const up = await startUpstream((req, res) => {
    res.sendDate = false;
    if (req.headers['if-none-match'] === '"a"') {
      notModified++;
      res.writeHead(304, { etag: '"a"', 'cache-control': 'max-age=2' }).end();
      return;
    }
    full++;
    res.writeHead(200, { etag: '"a"', 'cache-control': 'max-age=2', 'content-type': 'text/plain' }).end('hello');
  });
  const g = await startGateway(`services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache}]
    routes: [{paths: [/]}]
`);
  try {
    assert.equal((await request(`${g.url}/d`)).headers['x-cache-status'], 'MISS');
    await sleep(2600);
    const again = await request(`${g.url}/d`);
    assert.equal(again.headers['x-cache-status'], 'REVALIDATED');
    assert.equal(notModified, 1);
    // fresh for max-age=2 from the 304's arrival
    const hit = await request(`${g.url}/d`);
    assert.equal(hit.headers['x-cache-status'], 'HIT', 'the revalidated entry was stale at once');
    assert.equal(hit.body, 'hello');
    assert.equal(full, 1);
  } finally {
    await g.close();
    await up.close();
  }
});

test('HEAD answered from the cache carries the fields the GET would (Content-Length; with compression Content-Encoding, Vary, the weak ETag); only-if-cached with several ranges or If-Match is a 504, never the upstream', async () => {
  let calls = 0;
  const up = await startUpstream((req, res) => {
    calls++;
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=60', etag: '"v1"' }).end('x'.repeat(2000));
  });
  const g = await startGateway(`services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache}]
    routes:
      - {name: plain, paths: [/plain]}
      - {name: zipped, paths: [/zip], plugins: [{name: compression}]}
`);
  try {
    for (const path of ['/plain/a', '/zip/a']) assert.equal((await request(`${g.url}${path}`)).status, 200);
    const head = await request(`${g.url}/plain/a`, { method: 'HEAD' });
    assert.equal(head.headers['x-cache-status'], 'HIT');
    assert.equal(head.headers['content-length'], '2000');
    const get = await request(`${g.url}/zip/a`, { headers: { 'accept-encoding': 'gzip' } });
    const zhead = await request(`${g.url}/zip/a`, { method: 'HEAD', headers: { 'accept-encoding': 'gzip' } });
    assert.equal(zhead.headers['x-cache-status'], 'HIT');
    for (const f of ['content-encoding', 'vary', 'etag']) assert.equal(zhead.headers[f], get.headers[f], f);
    assert.equal(zhead.headers['content-encoding'], 'gzip');
    assert.equal(zhead.headers['content-length'], undefined, 'the stored length is not the encoded one');
    const before = calls;
    for (const h of [{ range: 'bytes=0-1,5-9' }, { 'if-match': '"v1"' }, { 'if-unmodified-since': 'Sat, 28 Nov 2026 00:00:00 GMT' }] as Record<string, string>[]) {
      const r = await request(`${g.url}/plain/a`, { headers: { ...h, 'cache-control': 'only-if-cached' } });
      assert.equal(r.status, 504, JSON.stringify(h));
    }
    assert.equal(calls, before, 'only-if-cached went upstream');
  } finally {
    await g.close();
    await up.close();
  }
});

test('redis backend: a GET in flight on one node when a POST through another node invalidates the path does not store its (older) answer', async () => {
  const redis: RedisServer = await startRedis();
  let version = 1;
  const origin = await startUpstream((req, res) => {
    if (req.method === 'POST') {
      version++;
      res.writeHead(204).end();
      return;
    }
    const v = version;
    setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=60' }).end(`version ${v}`), req.url === '/doc/slow' ? 600 : 0);
  });
  const cfg = `
redis: {url: "${redis.url}", prefix: "tpr:", timeout: 500}
services:
  - name: api
    url: ${origin.url}
    plugins: [{name: cache, config: {backend: redis}}]
    routes: [{name: r, paths: [/doc]}]
`;
  const a = await startGateway(cfg);
  const b = await startGateway(cfg);
  try {
    const host = { host: `127.0.0.1:${a.port}` };
    const slow = request(`${a.url}/doc/slow`, { headers: host });
    await sleep(150);
    assert.equal((await request(`${b.url}/doc/slow`, { method: 'POST', headers: host })).status, 204);
    assert.equal((await slow).body, 'version 1');
    await sleep(100); // (the store write is not awaited by the request)
    for (const g of [a, b]) {
      const r = await request(`${g.url}/doc/slow`, { headers: host });
      assert.equal(r.body, 'version 2', 'the answer from before the write was stored and served');
    }
    // an ordinary store after the invalidation still works (the bucket's next generation)
    await sleep(100);
    assert.equal((await request(`${a.url}/doc/slow`, { headers: host })).headers['x-cache-status'], 'HIT');
  } finally {
    await a.close();
    await b.close();
    await origin.close();
    await redis.stop();
  }
});

test('a body the upstream cut short is never stored: HTTP/2 (RST_STREAM NO_ERROR or CANCEL before END_STREAM, no Content-Length) and HTTP/1.1 (short of Content-Length, chunked cut); the client gets a 502', async () => {
  // Each upstream breaks off its first answer to each path after 10 bytes, then answers whole.
  const calls = new Map<string, number>();
  const h2 = await startRawH2Origin((s) => {
    // (request headers are not decoded: the 1st and 2nd request are cut, then whole answers)
    s.headers(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=60' });
    s.data('0123456789');
    setTimeout(() => {
      if (s.index === 0) s.rst(H2_NO_ERROR);
      else if (s.index === 1) s.rst(H2_CANCEL);
      else s.data('abcdef', true);
    }, 50);
  });
  const h1 = await startRawOrigin((data, socket) => {
    const path = /^GET (\S+)/.exec(data.toString('latin1'))?.[1];
    if (path === undefined || !data.includes('\r\n\r\n')) return null;
    const n = (calls.get(path) ?? 0) + 1;
    calls.set(path, n);
    const head = 'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncache-control: max-age=60\r\n';
    // (one answer per connection: startRawOrigin answers once)
    if (n > 1) return `${head}connection: close\r\ncontent-length: 16\r\n\r\n0123456789abcdef`;
    setTimeout(() => socket.end(), 50);
    return path === '/h1/length' ? `${head}content-length: 16\r\n\r\n0123456789` : `${head}transfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n6\r\nab`;
  });
  const g = await startGateway(`
services:
  - name: h2
    url: ${h2.url}
    protocol: h2c
    retries: 0
    plugins: [{name: cache}]
    routes: [{paths: [/h2]}]
  - name: h1
    url: ${h1.url}
    retries: 0
    plugins: [{name: cache}]
    routes: [{paths: [/h1]}]
`);
  try {
    for (const path of ['/h2/a', '/h2/a', '/h1/length', '/h1/chunked']) {
      const cut = await rawRequest(g.port, `GET ${path} HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n`, 3000);
      assert.match(cut.text, /^HTTP\/1\.1 502 /, `${path}: ${JSON.stringify(cut.text)}`);
      assert.doesNotMatch(cut.text, /0123456789/, path);
    }
    for (const path of ['/h2/a', '/h1/length', '/h1/chunked']) {
      const miss = await request(`${g.url}${path}`);
      assert.equal(miss.status, 200, path);
      assert.equal(miss.body, '0123456789abcdef', `${path}: a stored cut body was served`);
      assert.equal(status(miss), 'MISS', path);
      const hit = await request(`${g.url}${path}`);
      assert.equal(hit.body, '0123456789abcdef', path);
      assert.equal(status(hit), 'HIT', path);
    }
  } finally {
    await g.close();
    await h2.close();
    await h1.close();
  }
});

test('stale-while-revalidate for an HTTP/1.0 request without Host: the entry is still refreshed (a background refresh with an empty Host is refused 400)', async () => {
  let n = 0;
  const up = await startUpstream((_req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=1, stale-while-revalidate=60', etag: `"v${++n}"` }).end(`version ${n}`);
  });
  const g = await startGateway(`services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache}]
    routes: [{name: r, paths: [/]}]
`);
  const get10 = async () => (await rawRequest(g.port, 'GET /old HTTP/1.0\r\n\r\n', 1000)).text;
  try {
    assert.match(await get10(), /version 1$/);
    await sleep(1100);
    await get10(); // stale: served, and revalidated
    for (let i = 0; i < 80 && n < 2; i++) await sleep(25);
    assert.equal(n, 2, 'the stale entry was never revalidated');
  } finally {
    await g.close();
    await up.close();
  }
});

test('a response past max_body streams whole however long it lasts: spilling what was held arms one client-stall timer, not one per held chunk (the extra ones cut it after timeouts.read)', async () => {
  const up = await startUpstream((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'cache-control': 'max-age=60' });
    // 256 KiB at once (held up to max_body, then spilled in one go past the socket's
    // highWaterMark), then a byte every 150 ms for ~1.8 s: longer than the read timeout,
    // though neither side is ever silent that long.
    for (let i = 0; i < 16; i++) res.write(Buffer.alloc(16384, 97));
    let n = 0;
    const t = setInterval(() => {
      res.write('b');
      if (++n === 12) {
        clearInterval(t);
        res.end();
      }
    }, 150);
  });
  const g = await startGateway(`services:
  - name: big
    url: ${up.url}
    timeouts: {read: 1s}
    plugins: [{name: cache, config: {max_body: 64kb}}]
    routes: [{paths: [/big]}]
`);
  try {
    const r = await request(`${g.url}/big/file`);
    assert.equal(r.status, 200);
    assert.equal(r.body.length, 16 * 16384 + 12, 'the response was cut');
    assert.equal(status(r), 'MISS');
  } finally {
    await g.close();
    await up.close();
  }
});

test('a key cookie named twice in the request (lang=en; lang=evil) is never cached: the key read the first, an upstream may read the last, and the stored answer would reach every lang=en client; HTTP/2 cookie crumbs are one Cookie field (cached, also under Vary: Cookie)', async () => {
  // As Python's http.cookies and others do: the last of a repeated cookie wins.
  const up = await startUpstream((req, res) => {
    const langs = [...String(req.headers.cookie ?? '').matchAll(/(?:^|;\s*)lang=([^;]*)/g)].map((m) => m[1]);
    const vary = req.url!.startsWith('/vary') ? { vary: 'Cookie' } : {};
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=60', ...vary }).end(`page in ${langs.at(-1) ?? 'none'}`);
  });
  const g = await startGateway(`http2: {h2c: true}
services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache, config: {key: ["cookie:lang"]}}]
    routes: [{paths: [/home]}, {paths: [/vary], plugins: [{name: cache}]}]
`);
  const session = h2connect(g.url);
  // (browsers send each cookie as a field of its own over HTTP/2: crumbs, RFC 9113 §8.2.3)
  const h2get = (path: string, cookies: string[]) => new Promise<{ status: string; body: string }>((resolve, reject) => {
    const s = session.request({ ':path': path, cookie: cookies });
    let label = '';
    let body = '';
    s.on('response', (h) => { label = String(h['x-cache-status']); });
    s.on('data', (d: Buffer) => { body += d.toString(); });
    s.on('end', () => resolve({ status: label, body }));
    s.on('error', reject);
  });
  try {
    const poison = await request(`${g.url}/home`, { headers: { cookie: 'lang=en; lang=evil' } });
    assert.equal(poison.body, 'page in evil');
    assert.equal(status(poison), 'BYPASS');
    const lines = await request(`${g.url}/home`, { headers: ['host', `127.0.0.1:${g.port}`, 'cookie', 'lang=en', 'cookie', 'lang=evil'] });
    assert.equal(status(lines), 'BYPASS', `the same in two Cookie lines: ${lines.status} ${lines.body}`);
    const victim = await request(`${g.url}/home`, { headers: { cookie: 'lang=en' } });
    assert.equal(victim.body, 'page in en', 'the answer to lang=evil was served to lang=en');
    assert.equal(status(victim), 'MISS');
    assert.equal(status(await request(`${g.url}/home`, { headers: { cookie: 'theme=dark; lang=en' } })), 'HIT', 'one lang cookie among others is keyed as before');

    assert.deepEqual(await h2get('/home', ['lang=fr', 'theme=dark']), { status: 'MISS', body: 'page in fr' });
    assert.deepEqual(await h2get('/home', ['theme=light', 'lang=fr']), { status: 'HIT', body: 'page in fr' }, 'HTTP/2 cookie crumbs were taken for a repeated field');
    assert.deepEqual(await h2get('/home', ['lang=fr', 'lang=evil']), { status: 'BYPASS', body: 'page in evil' });
    assert.deepEqual(await h2get('/vary', ['lang=de', 'theme=dark']), { status: 'MISS', body: 'page in de' });
    assert.deepEqual(await h2get('/vary', ['lang=de', 'theme=dark']), { status: 'HIT', body: 'page in de' }, 'Vary: Cookie over HTTP/2 crumbs was never stored');
    assert.equal((await h2get('/vary', ['lang=de', 'theme=light'])).status, 'MISS', 'another Cookie is another variant');
  } finally {
    session.close();
    await g.close();
    await up.close();
  }
});

test('key query:NAME keeps the other parameters out of the key, but not a selected one cloaked behind a ";" (utm=x;lang=evil: a separator to Rack, older Python and others)', async () => {
  // An upstream that splits the query on & and ; and takes the first of a name.
  const up = await startUpstream((req, res) => {
    const q = req.url!.split('?')[1] ?? '';
    const lang = q.split(/[&;]/).map((p) => p.split('=')).find(([k]) => k === 'lang')?.[1] ?? 'none';
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=60' }).end(`page in ${lang}`);
  });
  const g = await startGateway(`services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache, config: {key: ["query:lang"]}}]
    routes: [{paths: [/p]}]
`);
  const get = (q: string) => request(`${g.url}/p${q}`);
  try {
    assert.equal(status(await get('?lang=en&utm=1')), 'MISS');
    const hit = await get('?utm=2&lang=en');
    assert.equal(status(hit), 'HIT', 'utm is not part of the key');
    assert.equal(hit.body, 'page in en');
    const cloaked = await get('?utm=x;lang=evil&lang=de');
    assert.equal(cloaked.body, 'page in evil');
    const victim = await get('?lang=de');
    assert.equal(victim.body, 'page in de', 'the answer to the cloaked lang=evil was served to lang=de');
  } finally {
    await g.close();
    await up.close();
  }
});

test('scheme and host fields an upstream framework may trust and the gateway passes on from a trusted proxy (X-Scheme, X-Forwarded-Protocol, X-Host, X-Original-Host, X-HTTP-Host-Override) are in the key: a redirect or link they caused never reaches other clients', async () => {
  // As Tornado (xheaders) reads X-Scheme, and other frameworks the host variants. (An untrusted
  // client's copies never reach the upstream: test/hardening.test.ts; a trusted proxy's do.)
  const up = await startUpstream((req, res) => {
    const scheme = req.headers['x-scheme'] ?? req.headers['x-forwarded-protocol'];
    const host = req.headers['x-host'] ?? req.headers['x-original-host'] ?? req.headers['x-http-host-override'] ?? req.headers.host;
    if (scheme === 'http') res.writeHead(301, { location: `https://${String(host)}${req.url}` }).end();
    else res.writeHead(200, { 'content-type': 'text/html', 'cache-control': 'max-age=60' }).end(`<a href="//${String(host)}/next">next</a>`);
  });
  const g = await startGateway(`trusted_proxies: [127.0.0.1]
services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache}]
    routes: [{paths: [/]}]
`);
  try {
    for (const [name, value] of [['x-scheme', 'http'], ['x-forwarded-protocol', 'http'], ['x-host', 'evil.test'], ['x-original-host', 'evil.test'], ['x-http-host-override', 'evil.test']]) {
      const path = `/page-${name}`;
      const poison = await request(`${g.url}${path}`, { headers: { [name!]: value! } });
      assert.ok(poison.status === 301 || poison.body.includes('evil.test'), `${name}: the upstream did not read it`);
      const victim = await request(`${g.url}${path}`);
      assert.equal(victim.status, 200, `${name}: the redirect it caused was served to others`);
      assert.doesNotMatch(victim.body, /evil\.test/, `${name}: the link it caused was served to others`);
    }
  } finally {
    await g.close();
    await up.close();
  }
});

test('the URL, path and scheme fields frameworks obey that a trusted proxy passes on (X-Original-URL, X-Rewrite-URL, X-Forwarded-Prefix, X-Forwarded-Scheme...), and the keyed ones spelt as clients send them (X-Host), are in the key: what they caused never reaches other clients', async () => {
  // Symfony and IIS's URL Rewrite serve X-Original-URL / X-Rewrite-URL's path instead of the
  // request's (the /admin page then cached under /public: CVE-2018-14773); Spring and others
  // build links from X-Forwarded-Prefix, Rack and Flask-style apps redirect on X-Forwarded-Scheme
  // / X-Forwarded-Ssl / Front-End-Https / X-Url-Scheme. Names keep the client's case (nginx passes
  // X-Host as it came).
  const up = await startUpstream((req, res) => {
    const h = req.headers;
    const path = String(h['x-original-url'] ?? h['x-rewrite-url'] ?? h['x-original-uri'] ?? h['x-forwarded-uri'] ?? h['x-forwarded-path'] ?? req.url);
    const plain = h['x-forwarded-scheme'] === 'http' || h['x-forwarded-ssl'] === 'off' || h['front-end-https'] === 'off' || h['x-url-scheme'] === 'http';
    const host = String(h['x-host'] ?? h['x-forwarded-server'] ?? 'good.test');
    if (plain) res.writeHead(301, { location: `https://${host}${req.url}` }).end();
    else res.writeHead(200, { 'content-type': 'text/html', 'cache-control': 'max-age=60' }).end(`${String(h['x-forwarded-prefix'] ?? '')}${path} on ${host}`);
  });
  const g = await startGateway(`trusted_proxies: [127.0.0.1]
services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache}]
    routes: [{paths: [/]}]
`);
  try {
    const fields: [string, string][] = [
      ['X-Original-URL', '/admin'], ['X-Rewrite-URL', '/admin'], ['X-Original-URI', '/admin'], ['X-Forwarded-Uri', '/admin'],
      ['X-Forwarded-Path', '/admin'], ['X-Forwarded-Prefix', '/evil'], ['X-Forwarded-Scheme', 'http'], ['X-Forwarded-Ssl', 'off'],
      ['Front-End-Https', 'off'], ['X-Url-Scheme', 'http'], ['X-Forwarded-Server', 'evil.test'], ['X-Host', 'evil.test'], ['X-Scheme', 'http'],
    ];
    for (const [name, value] of fields) {
      const path = `/page-${name.toLowerCase()}`;
      const poison = await request(`${g.url}${path}`, { headers: { [name]: value } });
      assert.ok(poison.status === 301 || /admin|evil/.test(poison.body) || name === 'X-Scheme', `${name}: the upstream did not read it`);
      const victim = await request(`${g.url}${path}`);
      assert.equal(victim.status, 200, `${name}: the redirect it caused was served to others`);
      assert.equal(victim.body, `${path} on good.test`, `${name}: the page it caused was served to others`);
    }
  } finally {
    await g.close();
    await up.close();
  }
});

test('a request-transform that builds the upstream request, or a response-transform the answer, from what the key does not hold (a path or field from {header.x}, {client_ip}, {request_id}, a {query.x} beside key: [query:NAME]) never has one client\'s answer served to another', async () => {
  // The cache looks before request-transform runs: the key is the client's path and query, so
  // what the transform puts in the upstream request from elsewhere must key the entry too.
  const up = await startUpstream((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=60', vary: 'X-Tenant' })
      .end(`${req.url} ${String(req.headers['x-tenant'] ?? '-')}`);
  });
  const g = await startGateway(`trusted_proxies: [127.0.0.1]
services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache, config: {key: ["query:page"], per_consumer: false}}]
    routes:
      - {name: p, paths: [/p], plugins: [{name: request-transform, config: {path: "/tenants/{header.x-org}/data"}}]}
      - {name: h, paths: [/h], plugins: [{name: request-transform, config: {headers: {set: {x-tenant: "{header.x-org}"}}}}]}
      - {name: ip, paths: [/ip], plugins: [{name: request-transform, config: {query: {set: {ip: "{client_ip}"}}}}]}
      - {name: q, paths: [/q], plugins: [{name: request-transform, config: {path: "/q/{query.user}"}}]}
      - {name: id, paths: [/id], plugins: [{name: request-transform, config: {query: {set: {rid: "{request_id}"}}}}]}
      - {name: corr, paths: [/corr], plugins: [{name: request-transform, config: {headers: {set: {x-correlation-id: "{request_id}"}}}}]}
      - {name: r, paths: [/r], plugins: [{name: response-transform, config: {headers: {set: {x-org: "{header.x-org}"}}, json: {set: {org: "{header.x-org}"}}}}]}
`);
  try {
    const get = (path: string, headers: Record<string, string>) => request(`${g.url}${path}`, { headers });
    const a = await get('/p', { 'x-org': 'a' });
    assert.equal(a.body, '/tenants/a/data -');
    assert.equal((await get('/p', { 'x-org': 'a' })).headers['x-cache-status'], 'HIT', 'the same input is still answered from the cache');
    assert.equal((await get('/p', { 'x-org': 'b' })).body, '/tenants/b/data -', "{header.x} in the path: tenant a's answer was served to b");
    await get('/h', { 'x-org': 'a' });
    assert.equal((await get('/h', { 'x-org': 'b' })).body, '/h b', "{header.x} in a field the upstream varies on: a's answer was served to b");
    await get('/ip', { 'x-forwarded-for': '192.0.2.1' });
    assert.equal((await get('/ip', { 'x-forwarded-for': '192.0.2.2' })).body, '/ip?ip=192.0.2.2 -', '{client_ip}: one client address\'s answer was served to another');
    await get('/q?user=a', {});
    assert.equal((await get('/q?user=b', {})).body, '/q/b?user=b -', '{query.user} with key [query:page]: user a\'s answer was served to b');
    const first = await get('/id', {});
    const second = await get('/id', {});
    assert.notEqual(second.body, first.body, '{request_id}: one request\'s answer was served to another');
    // (a correlation id in a field, like the gateway's own X-Request-Id, keeps answers storable)
    await get('/corr', {});
    assert.equal((await get('/corr', {})).headers['x-cache-status'], 'HIT');
    await get('/r', { 'x-org': 'a' });
    assert.equal((await get('/r', { 'x-org': 'a' })).headers['x-cache-status'], 'HIT');
    const r = await get('/r', { 'x-org': 'b' });
    assert.equal(r.headers['x-org'], 'b', "response-transform's {header.x}: the answer made for a was served to b");
  } finally {
    await g.close();
    await up.close();
  }
});

test('statuses that are not heuristically cacheable (302, 307, 403, 500...) listed in statuses are stored only with explicit freshness or public (RFC 9111 §3, §4.2.2): a login redirect carrying one client\'s state is not served to the next', async () => {
  let n = 0;
  const up = await startUpstream((req, res) => {
    n++;
    if (req.url === '/login') res.writeHead(302, { location: `/sso?state=${n}` }).end();
    else if (req.url === '/explicit') res.writeHead(302, { location: `/sso?state=${n}`, 'cache-control': 'max-age=60' }).end();
    else if (req.url === '/public') res.writeHead(302, { location: `/sso?state=${n}`, 'cache-control': 'public' }).end();
    else res.writeHead(403, { 'content-type': 'text/plain' }).end(`denied ${n}`);
  });
  const g = await startGateway(`services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache, config: {statuses: [200, 302, 403]}}]
    routes: [{paths: [/]}]
`);
  try {
    const first = await request(`${g.url}/login`);
    const second = await request(`${g.url}/login`);
    assert.equal(first.status, 302);
    assert.notEqual(second.headers.location, first.headers.location, 'a 302 without freshness information was given the heuristic ttl');
    assert.equal(second.headers['x-cache-status'], 'MISS');
    const d1 = await request(`${g.url}/forbidden`);
    assert.notEqual((await request(`${g.url}/forbidden`)).body, d1.body, 'a 403 without freshness information was given the heuristic ttl');
    // (explicit freshness, or public, lets a listed status be stored)
    const e1 = await request(`${g.url}/explicit`);
    const e2 = await request(`${g.url}/explicit`);
    assert.equal(e2.headers['x-cache-status'], 'HIT');
    assert.equal(e2.headers.location, e1.headers.location);
    await request(`${g.url}/public`);
    assert.equal((await request(`${g.url}/public`)).headers['x-cache-status'], 'HIT');
  } finally {
    await g.close();
    await up.close();
  }
});

test('a key with cookie:NAME still keeps other cookies\' answers without explicit freshness from being shared: keyed by lang, a session cookie\'s personal page is not served to the next visitor of that language', async () => {
  const up = await startUpstream((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' }).end(`page for ${req.headers.cookie ?? 'nobody'}`);
  });
  const g = await startGateway(`services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache, config: {key: ["cookie:lang"]}}]
    routes: [{paths: [/]}]
`);
  try {
    const victim = await request(`${g.url}/account/x.css`, { headers: { cookie: 'lang=en; session=victim' } });
    assert.equal(victim.body, 'page for lang=en; session=victim');
    const other = await request(`${g.url}/account/x.css`, { headers: { cookie: 'lang=en; session=attacker' } });
    assert.equal(other.body, 'page for lang=en; session=attacker', "the victim's personal page was served to another visitor of its language");
    // (the keyed cookie alone: its answers are the key's, shared on the heuristic as before)
    await request(`${g.url}/home`, { headers: { cookie: 'lang=en' } });
    const hit = await request(`${g.url}/home`, { headers: { cookie: 'lang=en' } });
    assert.equal(hit.headers['x-cache-status'], 'HIT');
    assert.equal((await request(`${g.url}/home`, { headers: { cookie: 'lang=de' } })).body, 'page for lang=de');
    // (a key cookie the client names in Connection never reaches the upstream: not stored as lang=fr's)
    assert.equal((await request(`${g.url}/hop`, { headers: { cookie: 'lang=fr', connection: 'cookie' } })).body, 'page for nobody');
    assert.equal((await request(`${g.url}/hop`, { headers: { cookie: 'lang=fr' } })).body, 'page for lang=fr');
  } finally {
    await g.close();
    await up.close();
  }
});

test('a response that will not be stored is not held: server-sent events (no-cache, or even max-age) reach the client as they are sent, not when the stream ends or max_body is reached', async () => {
  const up = await startUpstream((req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': req.url!.includes('fresh') ? 'max-age=60' : 'no-cache' });
    let n = 0;
    const t = setInterval(() => {
      res.write(`data: ${n}\n\n`);
      if (++n === 12) {
        clearInterval(t);
        res.end();
      }
    }, 150);
  });
  const g = await startGateway(`services:
  - name: web
    url: ${up.url}
    plugins: [{name: cache}]
    routes: [{paths: [/events]}]
`);
  const first = (path: string) => new Promise<{ ms: number; data: string; label: unknown }>((resolve, reject) => {
    const t0 = Date.now();
    httpRequest(`${g.url}${path}`, (res) => {
      res.once('data', (d: Buffer) => resolve({ ms: Date.now() - t0, data: d.toString(), label: res.headers['x-cache-status'] }));
      res.resume();
    }).on('error', reject).end();
  });
  try {
    for (const path of ['/events/live', '/events/fresh']) {
      const r = await first(path);
      assert.ok(r.ms < 1200, `${path}: the first event came after ${r.ms} ms (the stream lasts 1.8 s)`);
      assert.doesNotMatch(r.data, /data: 11/, `${path}: held until the stream ended`);
      assert.equal(r.label, 'MISS');
    }
  } finally {
    await g.close();
    await up.close();
  }
});
