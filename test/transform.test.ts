/**
 * request-transform, response-transform and compression end to end: a gateway in-process,
 * real loopback upstreams that record what they received, node:http clients.
 */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { createBrotliDecompress, createGunzip, deflateRawSync, deflateSync, gzipSync, gunzipSync, brotliDecompressSync } from 'node:zlib';
import { configIssues, rawRequest, request, startGateway, startUpstream, type TestGateway, type TestUpstream } from './helpers.js';

const T = { timeout: 20_000 };

let echo: TestUpstream;
let shaped: TestUpstream;
let gw: TestGateway;

/** When the paced upstream wrote each piece, by request URL. */
const pacedSent = new Map<string, number[]>();
const PIECES = 3;
const piece = (sse: boolean, n: number) => (sse ? `data: #${n}#\n\n` : `#${n}# ${'p'.repeat(300)}\n`);

/** A small body whose members an expression can repeat: a 60 kB customer and 300 orders (61 kB). */
const FANOUT = JSON.stringify({ customer: { note: 'n'.repeat(240_000) }, orders: Array.from({ length: 75 }, () => ({})) });

const BIG = JSON.stringify({ items: Array.from({ length: 5000 }, (_, i) => ({ id: i, name: `item-${i}`, internal_id: `x${i}` })) });

before(async () => {
  echo = await startUpstream();
  // Answers by path: JSON shapes, statuses and encodings the response transforms meet.
  shaped = await startUpstream((req, res) => {
    const url = req.url ?? '';
    const json = (status: number, v: unknown, extra: Record<string, string> = {}) =>
      res.writeHead(status, { 'content-type': 'application/json', server: 'secret-server/1.2', etag: '"v1"', ...extra }).end(JSON.stringify(v));
    // Negotiates its format, as many frameworks do: XML for a client that asks for it.
    if (url.startsWith('/negotiated')) {
      if (/xml/.test(req.headers.accept ?? '')) return res.writeHead(200, { 'content-type': 'application/xml; charset=utf-8' }).end('<user><id>7</id><internal_id>db-7</internal_id></user>');
      return json(200, { id: 7, internal_id: 'db-7' });
    }
    if (url.startsWith('/user')) {
      const digests = { 'content-digest': 'sha-256=:dXBzdHJlYW0tYnl0ZXM=:', 'repr-digest': 'sha-256=:dXBzdHJlYW0tYnl0ZXM=:', digest: 'SHA-256=dXBzdHJlYW0=', 'accept-ranges': 'bytes' };
      return json(200, { id: 7, name: 'Ada', internal_id: 'db-7', meta: { tier: 'gold' } }, digests);
    }
    if (url.startsWith('/list')) return json(200, [{ id: 1, internal_id: 'a' }, { id: 2, internal_id: 'b' }]);
    if (url.startsWith('/missing')) return json(404, { error: 'nope' });
    if (url.startsWith('/fanout')) return res.writeHead(200, { 'content-type': 'application/json' }).end(FANOUT);
    if (url.startsWith('/big')) return res.writeHead(200, { 'content-type': 'application/json' }).end(BIG);
    if (url.startsWith('/chunked-big')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write(BIG.slice(0, 1000));
      setTimeout(() => res.end(BIG.slice(1000)), 10);
      return;
    }
    // Honours Range (as a static file server does): 206 with the bytes asked for.
    if (url.startsWith('/ranged')) {
      const full = JSON.stringify({ id: 3, internal_id: 'r-3', name: 'ranged' });
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (m === null) return res.writeHead(200, { 'content-type': 'application/json', 'accept-ranges': 'bytes' }).end(full);
      return res.writeHead(206, { 'content-type': 'application/json', 'content-range': `bytes ${m[1]}-${m[2]}/${full.length}` }).end(full.slice(Number(m[1]), Number(m[2]) + 1));
    }
    if (url.startsWith('/huge-number')) return res.writeHead(200, { 'content-type': 'application/json' }).end('{"id": 1, "n": 1e999}');
    // UTF-7 (a client that decodes by the charset reads {"id":1,"note":"x","internal_id":"db-1"})
    if (url.startsWith('/utf7')) return res.writeHead(200, { 'content-type': `application/json; charset=${req.headers['x-charset'] ?? 'utf-7'}` }).end('{"id":1,"note":"x+ACIALAAi-internal_id+ACIAOgAi-db-1"}');
    if (url.startsWith('/broken')) return res.writeHead(200, { 'content-type': 'application/json' }).end('{"id": 1,');
    if (url.startsWith('/raw-deflate')) return res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'deflate' }).end(deflateRawSync(JSON.stringify({ id: 10, internal_id: 'r' })));
    if (url.startsWith('/zlib-deflate')) return res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'deflate' }).end(deflateSync(JSON.stringify({ id: 11, internal_id: 'z' })));
    if (url.startsWith('/gz')) return res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' }).end(gzipSync(JSON.stringify({ id: 9, internal_id: 'z' })));
    if (url.startsWith('/text')) return res.writeHead(200, { 'content-type': 'text/plain' }).end('x'.repeat(5000));
    if (url.startsWith('/small')) return res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '4' }).end('tiny');
    if (url.startsWith('/notransform')) return res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-transform' }).end('y'.repeat(5000));
    // no-transform in a second Cache-Control line counts too
    if (url.startsWith('/nt2')) return res.writeHead(200, [['content-type', 'text/plain'], ['cache-control', 'max-age=60'], ['cache-control', 'no-transform']].flat()).end('y'.repeat(5000));
    if (url.startsWith('/png')) return res.writeHead(200, { 'content-type': 'image/png' }).end(Buffer.alloc(5000, 1));
    // A long-poll / SSE-like stream: PIECES chunks 200 ms apart, the end 200 ms after the last.
    if (url.startsWith('/paced') || url.startsWith('/sse')) {
      const sse = url.startsWith('/sse');
      const sent: number[] = [];
      pacedSent.set(url, sent);
      res.writeHead(200, { 'content-type': sse ? 'text/event-stream' : 'text/plain', 'cache-control': 'no-cache' });
      let n = 0;
      const next = () => {
        if (n === PIECES) return void res.end();
        sent.push(performance.now());
        res.write(piece(sse, n++));
        setTimeout(next, 200);
      };
      next();
      return;
    }
    if (url.startsWith('/stream')) {
      res.writeHead(200, { 'content-type': 'text/plain' });
      let n = 0;
      const t = setInterval(() => {
        res.write('line '.repeat(200) + '\n');
        if (++n === 20) {
          clearInterval(t);
          res.end();
        }
      }, 2);
      return;
    }
    res.writeHead(500).end();
  });
  gw = await startGateway(`
services:
  - name: echo
    url: ${echo.url}
    retries: 1
    routes:
      - name: rewrite
        paths: ["/api/v1/users/{id}"]
        plugins:
          - name: request-transform
            config:
              method: POST
              path: {pattern: "^/api/v1/users/([0-9]+)$", replace: "/v2/people/$1/{header.x-tenant}"}
              headers: {remove: [x-secret], rename: {x-old: x-new}, set: {x-set: "id={path.id}"}, add: {x-added: "{query.q}"}, append: {x-app: "a"}}
              query: {remove: [drop], rename: {from: to}, set: {forced: "1"}, add: {dflt: "d"}}
      - name: body
        paths: [/body]
        plugins:
          - name: request-transform
            config:
              json: {remove: [password], rename: {name: user.full_name}, set: {source: gateway, "user.tenant": "{header.x-tenant}"}, wrap: data}
              max_body: 2kb
      - name: validated-body
        paths: [/validated-body]
        plugins:
          - name: request-validator
            config: {body_schema: {type: object}}
          - name: request-transform
            config: {json: {set: {source: gateway}}, max_body: 2kb}
      - name: expr
        paths: [/expr]
        plugins:
          - name: request-transform
            config:
              json:
                expression: '{"total": $sum(items.price), "count": $count(items), "by": $request.headers."x-user", "c": $request.headers.constructor}'
      - name: expr-param
        paths: ["/exprp/{id}"]
        plugins:
          - name: request-transform
            config: {json: {expression: '{"id": $request.params.id}'}}
      - name: fanout
        paths: [/fanout]
        plugins:
          - name: request-transform
            config: {json: {expression: 'orders.{"customer": $$.customer}'}, max_body: 256kb}
      - name: runaway
        paths: [/runaway]
        plugins:
          - name: request-transform
            config:
              json:
                expression: '($f := function($n){ $n = 0 ? 0 : 1 + $f($n - 1) }; $f(100000))'
      - name: legacy-prefix
        paths: [/legacy]
        plugins:
          - name: request-transform
            config:
              path: {pattern: "^/legacy", replace: "/modern"}
      - name: template-path
        paths: ["/t/{id}"]
        plugins:
          - name: request-transform
            config: {path: "/things/{path.id}/detail"}
  - name: shaped
    url: ${shaped.url}
    routes:
      - name: out
        paths: [/out]
        strip_path: true
        plugins:
          - name: response-transform
            config:
              status: {"404": 200}
              headers: {remove: [server], set: {x-shaped: "yes"}}
              json: {remove: [internal_id], rename: {meta.tier: tier}, set: {via_gateway: true}}
              max_body: 64kb
      - name: out-strict
        paths: [/ostrict]
        strip_path: true
        plugins:
          - name: response-transform
            config: {json: {remove: [internal_id]}, non_json: refuse, statuses: [200]}
      - name: out-expr
        paths: [/oexpr]
        strip_path: true
        plugins:
          - name: response-transform
            config:
              json:
                expression: '{"name": name, "upper": $uppercase(name), "c": $request.headers.constructor}'
                wrap: result
      - name: out-failing-expr
        paths: [/ofail]
        strip_path: true
        plugins:
          - name: response-transform
            config: {json: {expression: '{"id": id, "n": $number(internal_id)}'}}
      - name: out-fanout
        paths: [/ofan]
        strip_path: true
        plugins:
          - name: response-transform
            config: {json: {expression: 'orders.{"customer": $$.customer}'}, max_body: 256kb}
      - name: zipped
        paths: [/zip]
        strip_path: true
        plugins:
          - name: compression
            config: {min_size: 1kb}
      - name: both
        paths: [/both]
        strip_path: true
        plugins:
          - name: compression
            config: {min_size: 10b}
          - name: response-transform
            config: {json: {remove: [internal_id]}}
`);
});

after(async () => {
  await gw?.close();
  await echo?.close();
  await shaped?.close();
});

const last = () => echo.requests[echo.requests.length - 1]!;

test('request-transform: method, regex path with captures and templates, headers, query', { ...T }, async () => {
  const r = await request(`${gw.url}/api/v1/users/42?drop=1&from=x&keep=%20a&forced=0&q=hello`, {
    // (X_Secret and X_Set are x-secret and x-set to CGI, WSGI, Rack and PHP: removed and replaced too)
    headers: { 'x-secret': 's3', 'x_secret': 's3', 'x-old': 'o', 'x-tenant': 'acme', 'x-app': 'client', 'X_Set': 'id=admin' },
  });
  assert.equal(r.status, 200);
  const up = last();
  assert.equal(up.method, 'POST');
  const [path, q] = up.url.split('?');
  assert.equal(path, '/v2/people/42/acme');
  const params = new URLSearchParams(q);
  assert.equal(params.get('drop'), null);
  assert.equal(params.get('to'), 'x');
  assert.equal(params.get('keep'), ' a');
  assert.deepEqual(params.getAll('forced'), ['1']);
  assert.equal(params.get('dflt'), 'd');
  assert.ok(q!.includes('keep=%20a'), 'untouched parameters keep their bytes');
  assert.equal(up.headers['x-secret'], undefined);
  assert.equal(up.headers['x_secret'], undefined);
  assert.equal(up.headers['x_set'], undefined);
  assert.equal(up.headers['x-old'], undefined);
  assert.equal(up.headers['x-new'], 'o');
  assert.equal(up.headers['x-set'], 'id=42');
  assert.equal(up.headers['x-added'], 'hello');
  assert.equal(up.headers['x-app'], 'client, a');
});

test('request-transform query: a parameter after a \';\' (a separator to Rack < 3, Python\'s old parse_qs, old servlets) is removed, renamed and replaced too', { ...T }, async () => {
  const r = await request(`${gw.url}/api/v1/users/42?keep=1;drop=secret;from=x&a=b;forced=0;dflt=client`, { headers: { 'x-tenant': 'acme' } });
  assert.equal(r.status, 200);
  const q = last().url.split('?')[1]!;
  // what remains keeps its bytes and its separators; the gateway's own go after '&'
  assert.equal(q, 'keep=1;to=x&a=b;dflt=client&forced=1');
  assert.doesNotMatch(q, /secret|forced=0/);
});

test('request-transform: values from the request go in literally ($1 in a header is no capture; CR/LF never reach a field)', { ...T }, async () => {
  const r = await request(`${gw.url}/api/v1/users/5?q=a%0d%0aX-Injected:%201`, { headers: { 'x-tenant': '$1$&' } });
  assert.equal(r.status, 200);
  const up = last();
  // (a template value is one segment's data: percent-encoded, '$' included)
  assert.equal(up.url.split('?')[0], `/v2/people/5/${encodeURIComponent('$1$&')}`);
  assert.equal(up.headers['x-injected'], undefined);
  assert.equal(up.headers['x-added'], 'a  X-Injected: 1');
  // a value whose encoded slashes hide dot segments (/v2/people/5/..%2F..%2Fadmin is /v2/admin
  // to an upstream that decodes %2F, then normalizes), or an empty one (/v2/people/5/, another
  // resource): refused, nothing sent
  for (const evil of ['../../admin', '..\\..\\admin', '']) {
    const before = echo.requests.length;
    const bad = await request(`${gw.url}/api/v1/users/5`, { headers: { 'x-tenant': evil } });
    assert.equal(bad.status, 400, evil);
    assert.equal(echo.requests.length, before, `${evil}: nothing reached the upstream`);
  }
});

test('request-transform: a regex rewrite keeps the client\'s own path characters (as a route without one forwards them); never ?, # or a dot segment', { ...T }, async () => {
  // `[`, `]`, `|`, `"`, `{`, `^` and raw UTF-8 bytes are accepted in a client's path and
  // forwarded as they are on a plain route; a rewrite of the prefix must not make them a 400
  // (sent raw: an HTTP client library would percent-encode some of them itself)
  const port = Number(new URL(gw.url).port);
  for (const tail of ['/a[1]', '/x|y', '/q"uote', '/b{r}^c`', '/caf%C3%A9', '/p;v=1/@:!$&\'()*+,=~']) {
    const r = await rawRequest(port, `GET /legacy${tail} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n`);
    assert.match(r.text, /^HTTP\/1\.1 200 /, `${tail}: ${r.text}`);
    assert.equal(last().url, `/modern${tail}`, tail);
  }
  // a hidden dot segment after the rewrite is still refused: /legacy%2e → /modern%2e is a
  // segment of its own only with a slash; ..%2F is caught by the router before
  const before = echo.requests.length;
  const r = await request(`${gw.url}/legacy/%2e%2e/admin`);
  assert.ok(r.status === 400 || r.status === 404, `${r.status}`);
  assert.equal(echo.requests.length, before, 'nothing reached the upstream');
});

test('request-transform: path template with a route parameter', { ...T }, async () => {
  const r = await request(`${gw.url}/t/abc?z=1`);
  assert.equal(r.status, 200);
  assert.equal(last().url, '/things/abc/detail?z=1');
});

test('request-transform: JSON body mapping (remove, move into a nested path, set with template, wrap), Content-Length follows', { ...T }, async () => {
  const r = await request(`${gw.url}/body`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json', 'x-tenant': 'acme',
      // digests of the bytes the client sent: not of what goes upstream
      'content-digest': 'sha-256=:Y2xpZW50:', 'repr-digest': 'sha-256=:Y2xpZW50:', digest: 'SHA-256=Y2xpZW50', 'content-md5': 'Y2xpZW50',
    },
    body: JSON.stringify({ name: 'Ada', password: 'hunter2', age: 36 }),
  });
  assert.equal(r.status, 200);
  const up = last();
  for (const name of ['content-digest', 'repr-digest', 'digest', 'content-md5']) assert.equal(up.headers[name], undefined, name);
  const sent = JSON.parse(up.body.toString());
  assert.deepEqual(sent, { data: { age: 36, user: { full_name: 'Ada', tenant: 'acme' }, source: 'gateway' } });
  assert.equal(Number(up.headers['content-length']), up.body.length);
  assert.equal(up.headers['transfer-encoding'], undefined);
});

test('request-transform: a chunked JSON body is read whole and sent with a length', { ...T }, async () => {
  const status = await new Promise<number>((resolve, reject) => {
    const req = httpRequest(`${gw.url}/body`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    });
    req.on('error', reject);
    req.write('{"name":');
    setTimeout(() => req.end('"Bo"}'), 20);
  });
  assert.equal(status, 200);
  assert.deepEqual(JSON.parse(last().body.toString()), { data: { user: { full_name: 'Bo', tenant: '' }, source: 'gateway' } });
  assert.equal(last().headers['content-length'], String(last().body.length));
});

test('request-transform: $request.params holds a route parameter\'s text (decoded once, as $request.query does), not its escapes', { ...T }, async () => {
  const r = await request(`${gw.url}/exprp/caf%C3%A9%20%2F%20co`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(JSON.parse(last().body.toString('utf8')), { id: 'café / co' });
});

test('request-transform: JSONata expression with $request', { ...T }, async () => {
  const r = await request(`${gw.url}/expr`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-user': 'u1', constructor: 'k' },
    body: JSON.stringify({ items: [{ price: 2 }, { price: 3.5 }] }),
  });
  assert.equal(r.status, 200);
  // (a field named constructor is the client's value, not Object's)
  assert.deepEqual(JSON.parse(last().body.toString()), { total: 5.5, count: 2, by: 'u1', c: 'k' });
});

test('request-transform: invalid JSON -> 400 problem naming the error; upstream untouched', { ...T }, async () => {
  const before = echo.requests.length;
  const r = await request(`${gw.url}/body`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name": "Ada",' });
  assert.equal(r.status, 400);
  assert.match(r.headers['content-type']!, /application\/problem\+json/);
  const p = JSON.parse(r.body);
  assert.equal(p.type, 'urn:turnpike:problem:bad-request');
  assert.match(p.detail, /not valid JSON/);
  assert.ok(p.request_id);
  assert.equal(echo.requests.length, before);
});

test('request-transform: oversized bodies -> 413 (declared, and chunked past the cap); nothing reaches the upstream', { ...T }, async () => {
  const before = echo.requests.length;
  const big = JSON.stringify({ name: 'x'.repeat(5000) });
  const declared = await request(`${gw.url}/body`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: big });
  assert.equal(declared.status, 413);
  assert.equal(JSON.parse(declared.body).type, 'urn:turnpike:problem:payload-too-large');
  const chunked = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = httpRequest(`${gw.url}/body`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      let b = '';
      res.on('data', (c) => (b += c));
      res.on('end', () => resolve({ status: res.statusCode!, body: b }));
    });
    req.on('error', reject);
    for (let i = 0; i < 10; i++) req.write('x'.repeat(1000));
    req.end();
  });
  assert.equal(chunked.status, 413);
  assert.equal(echo.requests.length, before);
  // The body read before by a plugin with a larger cap (request-validator, 1mb): the
  // transform's 2kb holds all the same.
  const validated = await request(`${gw.url}/validated-body`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: big });
  assert.equal(validated.status, 413);
  assert.match(JSON.parse(validated.body).detail, /larger than 2048 bytes/);
  assert.equal(echo.requests.length, before);
  const small = await request(`${gw.url}/validated-body`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"a":1}' });
  assert.equal(small.status, 200);
  assert.deepEqual(JSON.parse(last().body.toString()), { a: 1, source: 'gateway' });
  // The gateway serves on.
  assert.equal((await request(`${gw.url}/t/ok`)).status, 200);
});

test('request-transform: 100-continue is sent when the body is read for a transform', { ...T }, async () => {
  const res = await rawRequest(gw.port, 'POST /body HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n', 300);
  assert.match(res.text, /^HTTP\/1\.1 100 Continue/);
});

test('request-transform: a runaway expression fails that request within its time box; the gateway carries on', { ...T }, async () => {
  const t0 = Date.now();
  const r = await request(`${gw.url}/runaway`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
  assert.equal(r.status, 400);
  assert.match(JSON.parse(r.body).detail, /could not be transformed/);
  assert.ok(Date.now() - t0 < 5000);
  assert.equal((await request(`${gw.url}/t/ok`)).status, 200);
});

test('transforms: an expression whose result repeats a part of the body (text the body times N) is refused by its size, before it is serialised', { ...T }, async () => {
  // (75 x 240 kB = 18 MB of text from a 241 kB body, few elements: the expression's 100 ms
  // time box holds on a loaded machine; with a 900 kB part and 2000 elements,
  // serialising took 8 s and 2 GB out of the expression's time box)
  const before = echo.requests.length;
  const r = await request(`${gw.url}/fanout`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: FANOUT });
  assert.equal(r.status, 400, r.body.slice(0, 300));
  assert.match(JSON.parse(r.body).detail, /result is larger than 16777216 bytes/);
  assert.equal(echo.requests.length, before, 'nothing sent upstream');
  const o = await request(`${gw.url}/ofan/fanout`);
  assert.equal(o.status, 502, o.body.slice(0, 300));
  assert.match(JSON.parse(o.body).detail, /result is larger than/);
});

test('response-transform non_json: refuse — an upstream that negotiates its format cannot hand a client the fields the json edits remove (502, HEAD too); by default other types pass untouched', { ...T }, async () => {
  const j = await request(`${gw.url}/ostrict/negotiated`);
  assert.equal(j.status, 200);
  assert.deepEqual(JSON.parse(j.body), { id: 7 });
  const x = await request(`${gw.url}/ostrict/negotiated`, { headers: { accept: 'application/xml' } });
  assert.equal(x.status, 502, x.body);
  assert.equal(x.headers['content-type'], 'application/problem+json');
  assert.doesNotMatch(x.body, /db-7/);
  assert.match(JSON.parse(x.body).detail, /"application\/xml", not JSON/);
  const head = await request(`${gw.url}/ostrict/negotiated`, { method: 'HEAD', headers: { accept: 'application/xml' } });
  assert.equal(head.status, 502);
  // the default (pass): other types go untouched
  const other = await request(`${gw.url}/out/negotiated`, { headers: { accept: 'application/xml' } });
  assert.equal(other.status, 200);
  assert.match(other.body, /<internal_id>db-7</);
});

test('request-transform: bodies of other media types pass through untouched', { ...T }, async () => {
  const r = await request(`${gw.url}/body`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'name=Ada' });
  assert.equal(r.status, 200);
  assert.equal(last().body.toString(), 'name=Ada');
});

test('response-transform: JSON fields, headers, status mapping; ETag of the upstream bytes dropped', { ...T }, async () => {
  const r = await request(`${gw.url}/out/user`);
  assert.equal(r.status, 200);
  assert.deepEqual(JSON.parse(r.body), { id: 7, name: 'Ada', meta: {}, tier: 'gold', via_gateway: true });
  assert.equal(r.headers.server, undefined);
  assert.equal(r.headers['x-shaped'], 'yes');
  assert.equal(r.headers.etag, undefined);
  assert.equal(Number(r.headers['content-length']), Buffer.byteLength(r.body));
  // digests of the upstream's bytes (RFC 3230, RFC 9530) and its ranges describe other bytes
  for (const name of ['content-digest', 'repr-digest', 'digest', 'accept-ranges']) assert.equal(r.headers[name], undefined, name);
  const list = await request(`${gw.url}/out/list`);
  assert.deepEqual(JSON.parse(list.body), [{ id: 1, via_gateway: true }, { id: 2, via_gateway: true }]);
  const mapped = await request(`${gw.url}/out/missing`);
  assert.equal(mapped.status, 200);
  assert.deepEqual(JSON.parse(mapped.body), { error: 'nope', via_gateway: true });
});

test('response-transform: an expression that fails on the upstream\'s data is a 502 that never quotes that data (JSONata puts values in its messages)', { ...T }, async () => {
  const r = await request(`${gw.url}/ofail/user`);
  assert.equal(r.status, 502, r.body);
  assert.equal(r.headers['content-type'], 'application/problem+json');
  const p = JSON.parse(r.body) as { type: string; detail: string };
  assert.equal(p.type, 'urn:turnpike:problem:invalid-upstream-response');
  assert.doesNotMatch(p.detail, /db-7/, 'the field the transform reads stays the upstream\'s');
  assert.match(p.detail, /D3030/, 'the error code, for the operator');
});

test('response-transform: HEAD gets the headers and no body; not the upstream\'s length or validators, which the GET loses', { ...T }, async () => {
  const r = await request(`${gw.url}/out/user`, { method: 'HEAD' });
  assert.equal(r.status, 200);
  assert.equal(r.body, '');
  assert.equal(r.headers['x-shaped'], 'yes');
  // (RFC 9110 §9.3.2: the fields the GET's answer would have; its length is not the upstream's 47)
  assert.equal(r.headers.etag, undefined);
  assert.equal(r.headers['content-length'], undefined);
  const get = await request(`${gw.url}/out/user`);
  assert.equal(get.headers.etag, undefined);
});

test('transforms: a JSON body declared in a charset other than UTF-8 is not transformed as UTF-8 — the client\'s is a 415, the upstream\'s a 502 (in UTF-7 a removed field comes back)', { ...T }, async () => {
  // Read as UTF-8, the name is one string, which json.remove [password] leaves; an upstream that
  // honours charset=utf-7 (Express's body-parser) reads {"name":"x","password":"p"}.
  const smuggled = '{"name":"x+ACIALAAi-password+ACIAOgAi-p"}';
  const before = echo.requests.length;
  for (const ct of ['application/json; charset=utf-7', 'application/json;charset="UTF-7"', 'application/json; charset=utf-8; charset=utf-16le', 'application/json; charset=iso-8859-1; charset=utf-7']) {
    const r = await request(`${gw.url}/body`, { method: 'POST', headers: { 'content-type': ct }, body: smuggled });
    assert.equal(r.status, 415, ct);
    assert.equal(r.headers['content-type'], 'application/problem+json', ct);
    assert.match(JSON.parse(r.body).detail, /charset "(utf-7|utf-16le)" is not accepted/, ct);
  }
  // ISO-8859-1 (an old Java client's default) or windows-1252 reads ASCII as ASCII: a body of
  // ASCII bytes is the same text and is transformed; one with other bytes (é as latin1 0xE9) is not
  for (const ct of ['application/merge-patch+json; charset=iso-8859-1', 'application/json; charset="ISO-8859-1"', 'application/json; charset=windows-1252']) {
    const r = await request(`${gw.url}/body`, { method: 'POST', headers: { 'content-type': ct }, body: Buffer.from('{"name":"caf\xe9","password":"p"}', 'latin1') });
    assert.equal(r.status, 415, ct);
    assert.match(JSON.parse(r.body).detail, /charset "(iso-8859-1|windows-1252)" is not accepted/, ct);
  }
  assert.equal(echo.requests.length, before);
  // (a value the gateway puts in, past ASCII, goes as a \u escape: the same text in the client's charset)
  const latin = await request(`${gw.url}/body`, { method: 'POST', headers: { 'content-type': 'application/json; charset=ISO-8859-1', 'x-tenant': 'café' }, body: '{"name":"caf\\u00e9","password":"p"}' });
  assert.equal(latin.status, 200, latin.body);
  const sent = last();
  assert.equal(sent.headers['content-type'], 'application/json; charset=ISO-8859-1');
  assert.ok(sent.body.every((b) => b < 0x80), sent.body.toString('latin1'));
  assert.deepEqual(JSON.parse(sent.body.toString('latin1')), { data: { user: { full_name: 'café', tenant: 'café' }, source: 'gateway' } });
  for (const ct of ['application/json; charset=utf-8', 'application/json; Charset="UTF-8"']) {
    assert.equal((await request(`${gw.url}/body`, { method: 'POST', headers: { 'content-type': ct }, body: smuggled })).status, 200, ct);
  }
  // An upstream's JSON is read as UTF-8 too (RFC 8259 §8.1): one in another charset is a 502
  for (const cs of ['utf-7', '"UTF-16"']) {
    const r = await request(`${gw.url}/out/utf7`, { headers: { 'x-charset': cs } });
    assert.equal(r.status, 502, cs);
    const p = JSON.parse(r.body);
    assert.equal(p.type, 'urn:turnpike:problem:invalid-upstream-response');
    assert.match(p.detail, /charset "utf-(7|16)"/);
    assert.doesNotMatch(r.body, /db-1/);
  }
  assert.equal((await request(`${gw.url}/out/utf7`, { headers: { 'x-charset': 'utf-8' } })).status, 200);
  // ASCII bytes only, in a charset that reads ASCII as ASCII (an older upstream's ISO-8859-1
  // default), or utf8 (a label of UTF-8): the same text, transformed
  for (const cs of ['ISO-8859-1', 'windows-1252', 'utf8']) assert.equal((await request(`${gw.url}/out/utf7`, { headers: { 'x-charset': cs } })).status, 200, cs);
});

test('response-transform: an upstream body over max_body -> 502 problem (declared or streamed); invalid JSON -> 502', { ...T }, async () => {
  for (const path of ['/out/big', '/out/chunked-big']) {
    const r = await request(`${gw.url}${path}`);
    assert.equal(r.status, 502, path);
    assert.equal(JSON.parse(r.body).type, 'urn:turnpike:problem:upstream-response-too-large');
  }
  const broken = await request(`${gw.url}/out/broken`);
  assert.equal(broken.status, 502);
  assert.equal(JSON.parse(broken.body).type, 'urn:turnpike:problem:invalid-upstream-response');
  assert.equal((await request(`${gw.url}/out/user`)).status, 200);
});

test('transforms: a number beyond a double (1e400) is refused, never sent on as null; big but finite numbers and such text in strings pass', { ...T }, async () => {
  const before = echo.requests.length;
  for (const body of ['{"name": "Ada", "n": 1e400}', '{"name": "Ada", "n": [-1E+0400]}', `{"name": "Ada", "n": ${'9'.repeat(400)}}`]) {
    const r = await request(`${gw.url}/body`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    assert.equal(r.status, 400, body.slice(0, 40));
    assert.equal(JSON.parse(r.body).type, 'urn:turnpike:problem:bad-request');
  }
  assert.equal(echo.requests.length, before, 'nothing went upstream');
  const ok = await request(`${gw.url}/body`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name": "Ada", "n": 1e300, "s": "1e400"}' });
  assert.equal(ok.status, 200);
  const sent = JSON.parse(last().body.toString());
  assert.equal(sent.data.n, 1e300);
  assert.equal(sent.data.s, "1e400");
  const huge = await request(`${gw.url}/out/huge-number`);
  assert.equal(huge.status, 502, 'an upstream body that cannot be transformed faithfully');
  assert.equal(JSON.parse(huge.body).type, 'urn:turnpike:problem:invalid-upstream-response');
});

test('response-transform: the upstream is asked for an unencoded body; one that encodes anyway is decoded', { ...T }, async () => {
  const r = await request(`${gw.url}/out/gz`, { headers: { 'accept-encoding': 'gzip' } });
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-encoding'], undefined);
  assert.deepEqual(JSON.parse(r.body), { id: 9, via_gateway: true });
  assert.equal(shaped.requests[shaped.requests.length - 1]!.headers['accept-encoding'], undefined);
  // deflate: zlib-wrapped (RFC 9110) or raw, as some servers send it
  assert.deepEqual(JSON.parse((await request(`${gw.url}/out/zlib-deflate`)).body), { id: 11, via_gateway: true });
  const raw = await request(`${gw.url}/out/raw-deflate`);
  assert.equal(raw.status, 200, raw.body);
  assert.deepEqual(JSON.parse(raw.body), { id: 10, via_gateway: true });
});

test('response-transform: a Range request gets the whole transformed body (the upstream is asked for all of it), never a 502 over a partial JSON', { ...T }, async () => {
  const r = await request(`${gw.url}/out/ranged`, { headers: { range: 'bytes=0-9', 'if-range': '"v1"' } });
  assert.equal(r.status, 200);
  assert.deepEqual(JSON.parse(r.body), { id: 3, name: 'ranged', via_gateway: true });
  assert.equal(r.headers['content-range'], undefined);
  const up = shaped.requests[shaped.requests.length - 1]!;
  assert.equal(up.headers.range, undefined);
  assert.equal(up.headers['if-range'], undefined);
  // a route without a JSON transform passes Range on
  const plain = await request(`${gw.url}/zip/ranged`, { headers: { range: 'bytes=0-9' } });
  assert.equal(plain.status, 206);
  assert.equal(plain.body, '{"id":3,"i');
});

test('response-transform: JSONata expression and wrap', { ...T }, async () => {
  const r = await request(`${gw.url}/oexpr/user`);
  assert.deepEqual(JSON.parse(r.body), { result: { name: 'Ada', upper: 'ADA' } });
  const c = await request(`${gw.url}/oexpr/user`, { headers: { constructor: 'k' } });
  assert.deepEqual(JSON.parse(c.body), { result: { name: 'Ada', upper: 'ADA', c: 'k' } });
});

function fetchRaw(url: string, headers: Record<string, string>, method = 'GET'): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers, agent: false, method }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('compression: br preferred, gzip by q-value, identity when refused; Vary and no Content-Length', { ...T }, async () => {
  const br = await fetchRaw(`${gw.url}/zip/text`, { 'accept-encoding': 'gzip, br' });
  assert.equal(br.headers['content-encoding'], 'br');
  assert.equal(br.headers['content-length'], undefined);
  assert.match(String(br.headers.vary), /Accept-Encoding/);
  assert.equal(brotliDecompressSync(br.body).toString(), 'x'.repeat(5000));
  assert.ok(br.body.length < 200);
  const gz = await fetchRaw(`${gw.url}/zip/text`, { 'accept-encoding': 'br;q=0.5, gzip;q=0.9' });
  assert.equal(gz.headers['content-encoding'], 'gzip');
  assert.equal(gunzipSync(gz.body).toString(), 'x'.repeat(5000));
  // HEAD: the fields the GET would carry (RFC 9110 §9.3.2), no body.
  const head = await fetchRaw(`${gw.url}/zip/text`, { 'accept-encoding': 'br;q=0.5, gzip;q=0.9' }, 'HEAD');
  assert.equal(head.headers['content-encoding'], 'gzip');
  assert.match(String(head.headers.vary), /Accept-Encoding/);
  assert.equal(head.headers['content-length'], undefined);
  assert.equal(head.body.length, 0);
  const star = await fetchRaw(`${gw.url}/zip/text`, { 'accept-encoding': '*;q=0.1, br;q=0' });
  assert.equal(star.headers['content-encoding'], 'gzip');
  const none = await fetchRaw(`${gw.url}/zip/text`, { 'accept-encoding': 'identity' });
  assert.equal(none.headers['content-encoding'], undefined);
  assert.equal(none.body.toString(), 'x'.repeat(5000));
  assert.match(String(none.headers.vary), /Accept-Encoding/);
  const absent = await fetchRaw(`${gw.url}/zip/text`, {});
  assert.equal(absent.headers['content-encoding'], undefined);
});

test('compression: small bodies, no-transform (the response\'s or the request\'s), other types and already-encoded bodies are left alone', { ...T }, async () => {
  for (const path of ['/zip/small', '/zip/notransform', '/zip/nt2', '/zip/png']) {
    const r = await fetchRaw(`${gw.url}${path}`, { 'accept-encoding': 'gzip' });
    assert.equal(r.headers['content-encoding'], undefined, path);
  }
  // the request's no-transform binds the gateway too (RFC 9110 §7.7, RFC 9111 §5.2.1.6)
  for (const cc of ['no-transform', 'max-age=0, No-Transform']) {
    const nt = await fetchRaw(`${gw.url}/zip/text`, { 'accept-encoding': 'gzip, br', 'cache-control': cc });
    assert.equal(nt.headers['content-encoding'], undefined, cc);
    assert.equal(nt.body.toString(), 'x'.repeat(5000));
  }
  const gz = await fetchRaw(`${gw.url}/zip/gz`, { 'accept-encoding': 'gzip, br' });
  assert.equal(gz.headers['content-encoding'], 'gzip');
  assert.deepEqual(JSON.parse(gunzipSync(gz.body).toString()), { id: 9, internal_id: 'z' });
});

test('compression: a 205 (no content, RFC 9110 §15.3.6) or an empty body is left alone, even with min_size 0 (a streamed 205 went out with 20 bytes of gzip)', { ...T }, async () => {
  const origin = await startUpstream((req, res) => {
    if (req.url === '/empty') {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '0' }).end();
      return;
    }
    res.writeHead(205, { 'content-type': 'text/plain' });
    res.flushHeaders(); // (chunked: no length known when the head goes)
    res.end();
  });
  const g = await startGateway(`services:
  - name: web
    url: ${origin.url}
    plugins: [{name: compression, config: {min_size: 0b}}]
    routes: [{name: r, paths: [/]}]
`);
  try {
    const reset = await fetchRaw(`${g.url}/reset`, { 'accept-encoding': 'gzip' });
    assert.equal(reset.status, 205);
    assert.equal(reset.headers['content-encoding'], undefined);
    assert.equal(reset.body.length, 0);
    const empty = await fetchRaw(`${g.url}/empty`, { 'accept-encoding': 'gzip' });
    assert.equal(empty.headers['content-encoding'], undefined);
    assert.equal(empty.body.length, 0);
  } finally {
    await g.close();
    await origin.close();
  }
});

test('compression: a streamed body is compressed as it streams; a strong ETag becomes weak', { ...T }, async () => {
  const r = await fetchRaw(`${gw.url}/zip/stream`, { 'accept-encoding': 'gzip' });
  assert.equal(r.headers['content-encoding'], 'gzip');
  assert.equal(gunzipSync(r.body).toString(), ('line '.repeat(200) + '\n').repeat(20));
  const j = await fetchRaw(`${gw.url}/zip/big`, { 'accept-encoding': 'gzip' });
  assert.equal(j.headers['content-encoding'], 'gzip');
  assert.equal(gunzipSync(j.body).toString(), BIG);
});

/** GETs a paced stream, decoding as it comes: the content coding, the text, when each piece was decoded. */
function fetchPaced(path: string, headers: Record<string, string>): Promise<{ coding: string | undefined; text: string; at: number[] }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${gw.url}${path}`, { headers, agent: false }, (res) => {
      const coding = res.headers['content-encoding'];
      const body = coding === 'gzip' ? res.pipe(createGunzip()) : coding === 'br' ? res.pipe(createBrotliDecompress()) : res;
      let text = '';
      const at: number[] = [];
      body.on('data', (c: Buffer) => {
        text += c.toString();
        while (at.length < PIECES && text.includes(`#${at.length}#`)) at.push(performance.now());
      });
      body.on('error', reject);
      body.on('end', () => resolve({ coding, text, at }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('compression: a streamed body is flushed chunk by chunk (each piece decodes when it was sent, not at the end)', { ...T }, async () => {
  for (const coding of ['gzip', 'br']) {
    const path = `/zip/paced?c=${coding}`;
    const r = await fetchPaced(path, { 'accept-encoding': coding });
    assert.equal(r.coding, coding);
    assert.equal(r.text, Array.from({ length: PIECES }, (_, n) => piece(false, n)).join(''));
    const sent = pacedSent.get(`/paced?c=${coding}`)!;
    for (let n = 0; n < PIECES; n++) assert.ok(r.at[n]! - sent[n]! < 150, `${coding} piece ${n} decoded ${Math.round(r.at[n]! - sent[n]!)} ms after it was sent`);
  }
});

test('compression: text/event-stream is not compressed (text/* does not take it) and its events arrive as sent', { ...T }, async () => {
  for (const coding of ['gzip', 'br']) {
    const r = await fetchPaced(`/zip/sse?c=${coding}`, { 'accept-encoding': coding });
    assert.equal(r.coding, undefined);
    assert.equal(r.text, Array.from({ length: PIECES }, (_, n) => piece(true, n)).join(''));
    const sent = pacedSent.get(`/sse?c=${coding}`)!;
    for (let n = 0; n < PIECES; n++) assert.ok(r.at[n]! - sent[n]! < 150, `${coding} event ${n} arrived ${Math.round(r.at[n]! - sent[n]!)} ms after it was sent`);
  }
});

test('compression after a response transform: the transformed body is what gets compressed', { ...T }, async () => {
  const r = await fetchRaw(`${gw.url}/both/user`, { 'accept-encoding': 'gzip' });
  assert.equal(r.headers['content-encoding'], 'gzip');
  assert.deepEqual(JSON.parse(gunzipSync(r.body).toString()), { id: 7, name: 'Ada', meta: { tier: 'gold' } });
});

test('config errors: bad regex, bad JSONata, reserved path names, unknown template', () => {
  const base = (cfg: string) => `
services:
  - name: a
    url: http://127.0.0.1:1
    plugins:
      - name: request-transform
        config: ${cfg}
`;
  const cases: [string, RegExp][] = [
    ['{path: {pattern: "([", replace: "/"}}', /path\.pattern/],
    ['{json: {expression: "$sum("}}', /JSONata/],
    ['{json: {remove: [a.__proto__.b]}}', /reserved/],
    ['{headers: {set: {x-a: "{nope.x}"}}}', /unknown template/],
    // framing, connection management and Host are the gateway's (they broke every request)
    ['{headers: {set: {upgrade: h2c}}}', /set\.upgrade: upgrade is the gateway's/],
    ['{headers: {set: {Transfer-Encoding: chunked}}}', /transfer-encoding is the gateway's/],
    ['{headers: {add: {content-length: "3"}}}', /content-length is the gateway's/],
    ['{headers: {append: {connection: close}}}', /connection is the gateway's/],
    ['{headers: {rename: {x-a: te}}}', /rename\.x-a: te is the gateway's/],
    ['{headers: {remove: [host]}}', /remove: host is the gateway's/],
    ['{headers: {set: {keep-alive: "1", trailer: x, expect: 100-continue}}}', /the gateway's/],
  ];
  for (const [cfg, re] of cases) {
    const issues = configIssues(base(cfg));
    assert.ok(issues.some((i) => re.test(i.message) && i.path.startsWith('services[0].plugins[0]') && i.line !== undefined), `${cfg}: ${JSON.stringify(issues)}`);
  }
  // response-transform too
  const out = configIssues(base('{headers: {set: {content-length: "3"}}}').replace('request-transform', 'response-transform'));
  assert.ok(out.some((i) => /content-length is the gateway's/.test(i.message)), JSON.stringify(out));
});

test('header operations (rename / set / add / append) refuse a key that is no header name, with path and line (it was taken unchecked: set {"x y": v} loaded, rename {"x y": 5} threw a TypeError at load)', () => {
  const cfg = (ops: string) => `services:\n  - name: s\n    url: http://127.0.0.1:9\n    routes:\n      - paths: [/a]\n        plugins:\n          - name: request-transform\n            config: {headers: ${ops}}\n`;
  for (const op of ['rename', 'set', 'add', 'append']) {
    const issues = configIssues(cfg(`{${op}: {"x y": "v"}}`));
    assert.equal(issues.length, 1, `${op}: ${JSON.stringify(issues)}`);
    assert.equal(issues[0]!.path, `services[0].routes[0].plugins[0].config.headers.${op}["x y"]`);
    assert.equal(issues[0]!.line, 8);
    assert.match(issues[0]!.message, /^invalid key "x y"/);
  }
  assert.equal(configIssues(cfg('{rename: {"x y": 5}}')).length, 1);
  assert.deepEqual(configIssues(cfg('{set: {x-ok: v}, rename: {x-a: x-b}}')), []);
});

test('request-transform query set: an identity with a lone surrogate (a JWT sub of "\\ud800" is valid JSON) is a 400 problem, not a URIError (a 500)', async () => {
  const { compileQueryOps } = await import('../src/plugins/transform-common.js');
  const { ProblemError } = await import('../src/core/problem.js');
  const edit = compileQueryOps({ set: { user: '{consumer}' }, add: { who: 'x{consumer}' } })!;
  const ctx = (identity: string) => ({ consumer: null, identity }) as unknown as Parameters<typeof edit>[0];
  assert.equal(edit(ctx('ad\u00e9'), '?a=1'), '?a=1&user=ad%C3%A9&who=xad%C3%A9');
  assert.throws(() => edit(ctx('a\ud800b'), '?a=1'), (e: unknown) => e instanceof ProblemError && /well-formed Unicode/.test((e as Error).message));
});
