/**
 * Payload edge cases of compose, request-transform, response-transform and request-validator:
 * client values in upstream paths and headers, deep and broken JSON, media types and content
 * codings, where a fault is blamed (client 4xx, upstream 502). Real loopback servers.
 */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { pino } from 'pino';
import { eventually, request, sleep, startGateway, startUpstream, type TestGateway, type TestUpstream } from './helpers.js';
import { Gateway } from '../src/server/gateway.js';
import { parseConfigText } from '../src/config/load.js';

let echo: TestUpstream;
let odd: TestUpstream;
let gw: TestGateway;

const DEEP = '['.repeat(100_000) + ']'.repeat(100_000);
const SECRET = 'Xinternal error: password=hunter2';
/** {"kind":"click","name":"<C0 BC>script"}: an overlong '<' (not UTF-8). */
const BAD_UTF8 = Buffer.concat([Buffer.from('{"kind":"click","name":"'), Buffer.from([0xc0, 0xbc]), Buffer.from('script"}')]);

before(async () => {
  echo = await startUpstream();
  // JSON bodies no gateway should choke on: by path
  odd = await startUpstream((req, res) => {
    const send = (body: string | Buffer) => res.writeHead(200, { 'content-type': 'application/json' }).end(body);
    if (req.url!.startsWith('/deep')) return send(DEEP);
    if (req.url!.startsWith('/secret')) return send(SECRET);
    if (req.url!.startsWith('/badutf8')) return send(BAD_UTF8);
    if (req.url!.startsWith('/ctl')) return send('{"v":"a\\u0001b"}');
    // a response field holding UTF-8 bytes (node writes a string's characters as latin1 bytes)
    if (req.url!.startsWith('/named')) return res.writeHead(200, { 'content-type': 'application/json', 'x-name': Buffer.from('Zoë', 'utf8').toString('latin1') }).end('{}');
    send('{"ok":true}');
  });
  gw = await startGateway(`
routes:
  - name: c-deep
    paths: [/c/deep]
    compose:
      steps:
        - {name: deep, service: odd, path: /deep, optional: true}
        - {name: fine, service: odd, path: /fine}
  - name: c-deep-required
    paths: [/c/deep-required]
    compose:
      steps: [{name: deep, service: odd, path: /deep}]
  - name: c-secret
    paths: [/c/secret]
    compose:
      steps: [{name: s, service: odd, path: /secret}]
  - name: c-shaped
    paths: [/c/shaped]
    plugins:
      - {name: response-transform, config: {status: {"200": 203}, headers: {set: {x-shaped: "yes"}}, json: {remove: [internal], set: {via: gateway}}}}
    compose:
      steps:
        - {name: fine, service: odd, path: /fine}
        - {name: internal, service: odd, path: /fine}
  - name: c-param
    paths: ["/c/p/{id}"]
    compose:
      steps: [{name: user, service: echo, path: "/users/{id}"}]
  - name: c-pq
    paths: [/pq]
    compose:
      steps: [{name: user, service: echo, path: "/users/{query.u}"}]
  - name: c-pq-mid
    paths: [/pq/mid]
    compose:
      steps: [{name: orders, service: echo, path: "/users/{query.u}/orders"}]
  - name: c-hdr
    paths: [/c/hdr]
    compose:
      steps:
        - {name: ctl, service: odd, path: /ctl}
        - {name: echo, service: echo, path: /h, headers: {x-v: "{ctl.body.v}"}}
  - name: c-qhdr
    paths: [/c/qhdr]
    compose:
      steps: [{name: echo, service: echo, path: /h, headers: {x-n: "{query.n}"}}]
  - name: c-body
    paths: [/c/body]
    methods: [POST]
    compose:
      steps:
        - {name: echo, service: echo, method: POST, path: /, body: {name: "{body.name}"}}
  - name: c-hdrtext
    paths: [/c/hdrtext]
    compose:
      steps:
        - {name: named, service: odd, path: /named}
        - {name: echo, service: echo, method: POST, path: "/n/{header.x-name}", query: {q: "{header.x-name}", r: "{named.headers.x-name}"}, headers: {x-n: "{header.x-name}"}, body: {n: "{header.x-name}", s: "hi {header.x-name}", r: "{named.headers.x-name}"}}
services:
  - name: odd
    url: ${odd.url}
    routes:
      - name: rs-hdr
        paths: [/rsh]
        strip_path: true
        plugins:
          - {name: response-transform, config: {headers: {set: {x-q: "{query.q}"}}}}
      - name: rs-json
        paths: [/rs]
        strip_path: true
        plugins:
          - {name: response-transform, config: {json: {remove: [x]}}}
  - name: echo
    url: ${echo.url}
    routes:
      - name: rt-hdr
        paths: [/rt/hdr]
        plugins:
          - {name: request-transform, config: {headers: {set: {x-user: "{query.u}"}}}}
      - name: rt-json
        paths: [/rt/json]
        plugins:
          - {name: request-transform, config: {json: {set: {via: gateway}}}}
      - name: validated
        paths: [/events]
        plugins:
          - name: request-validator
            config:
              body_schema:
                type: object
                properties: {kind: {type: string}, name: {type: string, pattern: "^[^<>]*$"}}
      - name: rt-path
        paths: [/rt/path]
        plugins:
          - {name: request-transform, config: {path: "/api/v1/users/{query.p}"}}
      - name: rt-hdrtext
        paths: [/rt/hdrtext]
        plugins:
          - {name: request-transform, config: {path: "/n/{header.x-name}", query: {set: {q: "{header.x-name}"}}, headers: {set: {x-n: "{header.x-name}"}}, json: {set: {n: "{header.x-name}"}, expression: '$merge([$, {"e": $request.headers."x-name"}])'}}}
      - name: rt-param
        paths: ["/rt/param/{id}"]
        plugins:
          - {name: request-transform, config: {path: "/things/{path.id}"}}
      - name: rt-paramtext
        paths: ["/rt/pt/{id}"]
        plugins:
          - {name: request-transform, config: {query: {set: {q: "{path.id}"}}, headers: {set: {x-id: "{path.id}"}}, json: {set: {id: "{path.id}"}}}}
`);
});

after(async () => {
  await gw?.close();
  await echo?.close();
  await odd?.close();
});

const last = () => echo.requests[echo.requests.length - 1]!;

test('request-transform path templates: client values are percent-encoded data in one segment; dot segments and bad bytes are 400', async () => {
  const ok: [string, string][] = [
    ['/rt/path?p=abc', '/api/v1/users/abc'],
    ['/rt/path?p=a%2Fb', '/api/v1/users/a%2Fb'],
    ['/rt/path?p=a%3Fb%23c', '/api/v1/users/a%3Fb%23c'],
    ['/rt/path?p=%C3%A9', '/api/v1/users/%C3%A9'],
    ['/rt/path?p=%01', '/api/v1/users/%01'],
    ['/rt/param/a%2Fb', '/things/a%2Fb'],
    ['/rt/param/a%20b', '/things/a%20b'],
  ];
  for (const [path, expected] of ok) {
    const r = await request(`${gw.url}${path}`);
    assert.equal(r.status, 200, `${path}: ${r.body}`);
    assert.equal(last().url.split('?')[0], expected, path);
  }
  // (an empty or missing value would leave the segment empty: /api/v1/users/, the collection)
  for (const path of ['/rt/path?p=', '/rt/path', '/rt/path?p=admin%00', '/rt/path?p=..', '/rt/path?p=%2e%2e', '/rt/path?p=.', '/rt/path?p=..%2F..%2Fadmin', '/rt/param/%ff', '/rt/path?p=%ff', '/rt/path?p=a%C0%AFb']) {
    const before = echo.requests.length;
    const r = await request(`${gw.url}${path}`);
    assert.equal(r.status, 400, `${path}: ${r.body}`);
    assert.equal(r.headers['content-type'], 'application/problem+json');
    assert.equal(echo.requests.length, before, `${path} never reaches the upstream`);
  }
});

const JSON_CT = { 'content-type': 'application/json' };
const problem = (r: { status: number; headers: Record<string, unknown>; body: string }, status: number) => {
  assert.equal(r.status, status, r.body);
  assert.equal(r.headers['content-type'], 'application/problem+json');
  return JSON.parse(r.body) as { detail: string; errors?: unknown[] };
};

test('JSON nested deeper than the gateway recurses: a problem blaming the right side, never a 500', async () => {
  // an upstream step: the step fails (optional: partial 200; required: 502), the gateway carries on
  const partial = await request(`${gw.url}/c/deep`);
  assert.equal(partial.status, 200, partial.body);
  const body = JSON.parse(partial.body);
  assert.deepEqual(body.fine, { ok: true });
  assert.match(body.errors[0].error, /nested deeper than/);
  assert.match(problem(await request(`${gw.url}/c/deep-required`), 502).detail, /nested deeper than/);
  // a client body on a compose route that reads it: 400
  const deepBody = '['.repeat(300_000) + ']'.repeat(300_000);
  assert.match(problem(await request(`${gw.url}/c/body`, { method: 'POST', headers: JSON_CT, body: deepBody }), 400).detail, /nested deeper than/);
  // request-transform: 400; response-transform of an upstream's body: 502
  assert.match(problem(await request(`${gw.url}/rt/json`, { method: 'POST', headers: JSON_CT, body: deepBody }), 400).detail, /nested deeper than/);
  const rs = await request(`${gw.url}/rs/deep`);
  assert.equal(JSON.parse(rs.body).type, 'urn:turnpike:problem:invalid-upstream-response');
  assert.match(problem(rs, 502).detail, /nested deeper than/);
});

test('bodies that are not UTF-8 are refused (RFC 8259 §8.1), never checked as U+FFFD while the raw bytes go on', async () => {
  const before = echo.requests.length;
  assert.match(problem(await request(`${gw.url}/events`, { method: 'POST', headers: JSON_CT, body: BAD_UTF8 }), 400).detail, /UTF-8/);
  assert.match(problem(await request(`${gw.url}/rt/json`, { method: 'POST', headers: JSON_CT, body: BAD_UTF8 }), 400).detail, /UTF-8/);
  assert.match(problem(await request(`${gw.url}/c/body`, { method: 'POST', headers: JSON_CT, body: BAD_UTF8 }), 400).detail, /UTF-8/);
  assert.equal(echo.requests.length, before, 'nothing reached the upstream');
  assert.match(problem(await request(`${gw.url}/rs/badutf8`), 502).detail, /UTF-8/);
  // (valid UTF-8 goes through)
  const ok = await request(`${gw.url}/events`, { method: 'POST', headers: JSON_CT, body: JSON.stringify({ kind: 'click', name: 'é' }) });
  assert.equal(ok.status, 200, ok.body);
});

test('JSON parse errors name a position and never echo the body', async () => {
  const c = problem(await request(`${gw.url}/c/secret`), 502);
  assert.doesNotMatch(JSON.stringify(c), /password|hunter2|internal/);
  assert.match(c.detail, /line 1, column 1/);
  const rs = problem(await request(`${gw.url}/rs/secret`), 502);
  assert.doesNotMatch(JSON.stringify(rs), /password|hunter2|internal/);
  const rt = problem(await request(`${gw.url}/rt/json`, { method: 'POST', headers: JSON_CT, body: SECRET }), 400);
  assert.doesNotMatch(JSON.stringify(rt), /password|hunter2|internal/);
  const cb = problem(await request(`${gw.url}/c/body`, { method: 'POST', headers: JSON_CT, body: SECRET }), 400);
  assert.doesNotMatch(JSON.stringify(cb), /password|hunter2|internal/);
});

test('a body read as JSON must say it is JSON and be unencoded: 415 otherwise (compose, request-transform, request-validator)', async () => {
  const before = echo.requests.length;
  const body = '{"name":"x"}';
  // compose reads the body only as JSON: text/plain (a CORS-simple POST) and a form are 415
  // (a 415 for a media type must not carry Accept-Encoding, RFC 9110 §12.5.3)
  for (const ct of ['text/plain', 'application/x-www-form-urlencoded']) {
    const r = await request(`${gw.url}/c/body`, { method: 'POST', headers: { 'content-type': ct }, body });
    problem(r, 415);
    assert.equal(r.headers['accept-encoding'], undefined);
  }
  problem(await request(`${gw.url}/c/body`, { method: 'POST', body }), 415);
  // one for a content coding says which codings are accepted: identity only (RFC 9110 §15.5.16)
  const gz = { 'content-type': 'application/json', 'content-encoding': 'gzip' };
  for (const path of ['/c/body', '/rt/json', '/events']) {
    const r = await request(`${gw.url}${path}`, { method: 'POST', headers: gz, body });
    problem(r, 415);
    assert.equal(r.headers['accept-encoding'], 'identity', path);
  }
  assert.equal(echo.requests.length, before, 'nothing reached the upstream');
  // application/json and +json are read
  for (const ct of ['application/json', 'application/vnd.api+json; charset=utf-8']) {
    const ok = await request(`${gw.url}/c/body`, { method: 'POST', headers: { 'content-type': ct, 'content-encoding': 'identity' }, body });
    assert.equal(ok.status, 200, ok.body);
    assert.equal(JSON.parse(last().body.toString()).name, 'x');
  }
});

test('compose: a step the client\'s request cannot fill is 400 (not a 502 blaming a backend), without the internal path', async () => {
  const before = echo.requests.length;
  for (const [path, why] of [['/pq', /\{query\.u\} has no value/], ['/pq?u=..', /"\.\." path segment/], ['/pq?u=%2e', /"\." path segment/], ['/pq?u=', /\{query\.u\} is empty/], ['/pq/mid?u', /\{query\.u\} is empty/], ['/pq?u=secret%00', /\{query\.u\} holds a NUL/]] as const) {
    const p = problem(await request(`${gw.url}${path}`), 400);
    assert.match(p.detail, why, path);
    assert.doesNotMatch(p.detail, /\/users/, path);
  }
  // a POST whose body the step needs, without a body
  assert.match(problem(await request(`${gw.url}/c/body`, { method: 'POST' }), 400).detail, /\{body\.name\} has no value/);
  assert.equal(echo.requests.length, before, 'nothing reached the upstream');
  assert.equal((await request(`${gw.url}/pq?u=7`)).status, 200);
  assert.equal(last().url, '/users/7');
});

test('template values in header fields: control characters never reach a field, non-Latin-1 text goes as UTF-8 bytes; never a 500', async () => {
  const utf8Of = (v: string | string[] | undefined) => Buffer.from(String(v), 'latin1').toString('utf8');
  // request-transform: controls become spaces, a snowman goes as its UTF-8 bytes
  assert.equal((await request(`${gw.url}/rt/hdr?u=%E2%98%83`)).status, 200);
  assert.equal(utf8Of(last().headers['x-user']), '☃');
  assert.equal((await request(`${gw.url}/rt/hdr?u=a%01b`)).status, 200);
  assert.equal(last().headers['x-user'], 'a b');
  // escapes that are not UTF-8 would go on as U+FFFD (another value than the client's): 400, nothing sent
  const before = echo.requests.length;
  const notUtf8 = await request(`${gw.url}/rt/hdr?u=%FF`);
  assert.equal(notUtf8.status, 400, notUtf8.body);
  assert.match(JSON.parse(notUtf8.body).detail, /the query parameter "u" is not valid UTF-8 once percent-decoded/);
  assert.equal(echo.requests.length, before);
  // response-transform: the same on the way out
  const rs = await request(`${gw.url}/rsh/fine?q=%E2%98%83`);
  assert.equal(rs.status, 200, rs.body);
  assert.equal(utf8Of(rs.headers['x-q']), '☃');
  assert.equal((await request(`${gw.url}/rsh/fine?q=a%01b`)).headers['x-q'], 'a b');
  // (an answer cannot refuse the request for it: read as URLSearchParams does, never a 500)
  assert.equal((await request(`${gw.url}/rsh/fine?q=%FF`)).status, 200);
  // compose: a control character from a step's body fails that step, saying why
  const c = problem(await request(`${gw.url}/c/hdr`), 502);
  assert.match(c.detail, /control character/);
  assert.doesNotMatch(c.detail, /UND_ERR/);
  // ... and from the client's query it is the client's fault
  assert.match(problem(await request(`${gw.url}/c/qhdr?n=a%01b`), 400).detail, /control character/);
  assert.equal((await request(`${gw.url}/c/qhdr?n=%E2%98%83`)).status, 200);
  assert.equal(utf8Of(last().headers['x-n']), '☃');
});

test('a header value with UTF-8 bytes goes into a path, a query or a JSON string as its text (not each byte as a character: caf%C3%83%C2%A9), into a field as the bytes it was', async () => {
  const cafe = Buffer.from('café', 'utf8').toString('latin1'); // (what a client puts on the wire)
  const c = await request(`${gw.url}/c/hdrtext`, { headers: { 'x-name': cafe } });
  assert.equal(c.status, 200, c.body);
  let up = last();
  assert.equal(up.url, '/n/caf%C3%A9?q=caf%C3%A9&r=Zo%C3%AB');
  assert.deepEqual(JSON.parse(up.body.toString('utf8')), { n: 'café', s: 'hi café', r: 'Zoë' });
  assert.equal(up.headers['x-n'], cafe, 'the bytes as they came');
  const t = await request(`${gw.url}/rt/hdrtext`, { method: 'POST', headers: { 'x-name': cafe, 'content-type': 'application/json' }, body: Buffer.from('{}') }); // (a Buffer: node writes a string body and the head together as UTF-8)
  assert.equal(t.status, 200, t.body);
  up = last();
  assert.equal(up.url, '/n/caf%C3%A9?q=caf%C3%A9');
  assert.deepEqual(JSON.parse(up.body.toString('utf8')), { n: 'café', e: 'café' });
  assert.equal(up.headers['x-n'], cafe);
  // bytes that are not UTF-8 are read as latin1 (obs-text's charset): one character each
  assert.equal((await request(`${gw.url}/c/hdrtext`, { headers: { 'x-name': 'caf\xe9' } })).status, 200);
  assert.equal(last().url, '/n/caf%C3%A9?q=caf%C3%A9&r=Zo%C3%AB');
});

test('a route parameter goes into a query, a field or a JSON string as its text (decoded once, as {query.x} is), never encoded twice', async () => {
  const r = await request(`${gw.url}/rt/pt/caf%C3%A9%20%26%20co`, { method: 'POST', headers: JSON_CT, body: Buffer.from('{}') });
  assert.equal(r.status, 200, r.body);
  const up = last();
  assert.equal(up.url, '/rt/pt/caf%C3%A9%20%26%20co?q=caf%C3%A9%20%26%20co');
  assert.deepEqual(JSON.parse(up.body.toString('utf8')), { id: 'café & co' });
  assert.equal(up.headers['x-id'], 'café & co', 'as {query.x} goes: text up to U+00FF as its latin1 byte');
  // not UTF-8 once decoded: the client's error, as in a path
  const before = echo.requests.length;
  problem(await request(`${gw.url}/rt/pt/%ff`, { method: 'POST', headers: JSON_CT, body: Buffer.from('{}') }), 400);
  assert.equal(echo.requests.length, before);
});

test('response-transform on a composing route shapes the merged answer (json and status too, not only headers)', async () => {
  const r = await request(`${gw.url}/c/shaped`);
  assert.equal(r.status, 203, r.body);
  assert.equal(r.headers['x-shaped'], 'yes');
  assert.deepEqual(JSON.parse(r.body), { fine: { ok: true }, via: 'gateway' });
  assert.equal(Number(r.headers['content-length']), Buffer.byteLength(r.body));
});

test('a client that aborts its body on a composing route is not an error-level event', async () => {
  const lines: { level: number; msg: string }[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as { level: number; msg: string }) });
  const g = await Gateway.start(parseConfigText(`listen: 127.0.0.1:0
access_log: {enabled: false}
services: [{name: echo, url: "${echo.url}"}]
routes:
  - name: c-body
    paths: [/c/body]
    compose:
      steps: [{name: echo, service: echo, method: POST, body: {name: "{body.name}"}}]
`), { logger });
  try {
    const sock = connect(g.proxyAddress!.port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    sock.write('POST /c/body HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name":');
    await sleep(100);
    sock.destroy();
    await eventually(() => lines.some((l) => /request body/.test(l.msg) || l.level >= 50), 2000, 20);
    await sleep(50);
    assert.deepEqual(lines.filter((l) => l.level >= 40).map((l) => l.msg), [], 'nothing at warn or error level');
  } finally {
    await g.stop();
  }
});

test('compose: a route parameter that is not UTF-8 once decoded is 400, never double-encoded upstream', async () => {
  const before = echo.requests.length;
  for (const p of ['%ff', 'a%C0%BC', '%ED%A0%80']) problem(await request(`${gw.url}/c/p/${p}`), 400);
  assert.equal(echo.requests.length, before);
  assert.equal((await request(`${gw.url}/c/p/%C3%A9%2F`)).status, 200);
  assert.equal(last().url, '/users/%C3%A9%2F');
});

test('two Content-Type fields on a request whose body the gateway reads by its type: 400 (the upstream might read the other one)', async () => {
  const before = echo.requests.length;
  const two = ['host', 'x', 'content-type', 'application/json', 'content-type', 'text/plain'];
  for (const path of ['/c/body', '/rt/json', '/events']) {
    assert.match(problem(await request(`${gw.url}${path}`, { method: 'POST', headers: two, body: '{"name":"x"}' }), 400).detail, /more than one Content-Type/, path);
  }
  assert.equal(echo.requests.length, before);
  // (one is fine)
  assert.equal((await request(`${gw.url}/events`, { method: 'POST', headers: ['host', 'x', 'content-type', 'application/json'], body: '{"name":"x"}' })).status, 200);
});
