/** cors end to end: a gateway in-process (HTTP/1.1 and h2c), a real upstream, loopback sockets. */
import { configIssues as issuesOf } from '../../../test/helpers.js';
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { connect as h2connect, type IncomingHttpHeaders } from 'node:http2';
import { parseConfigText } from '../../config/load.js';
import { compile } from '../../config/compile.js';
import { ConfigError } from '../../config/errors.js';
import { PoolRegistry } from '../../upstream/pools.js';
import { rawRequest, request, startGateway, startUpstream, type SimpleResponse, type TestGateway, type TestUpstream } from '../../../test/helpers.js';

const T = { timeout: 15_000 };
const KEY = 'alice-key-0001';
const APP = 'https://app.example.com';

let up: TestUpstream;
let t: TestGateway;

/**
 * The upstream echoes the request; `x-respond-headers` (JSON flat list) adds response headers,
 * so a test can make it send its own CORS fields.
 */
async function upstream(): Promise<TestUpstream> {
  return startUpstream((req, res, body) => {
    const extra = req.headers['x-respond-headers'];
    const list = typeof extra === 'string' ? (JSON.parse(extra) as string[]) : [];
    const out = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: body.toString() });
    res.writeHead(200, ['content-type', 'application/json', ...list]).end(out);
  });
}

const config = () => `http2: {h2c: true}
consumers:
  - name: alice
    credentials: [{type: key-auth, key: '${KEY}'}]
services:
  - name: s
    url: ${up.url}
    routes:
      - name: api
        paths: [/api]
        methods: [GET, POST]
        plugins:
          - name: key-auth
          - name: cors
            config:
              origins: ['${APP}', '~^https://[a-z0-9-]+\\.example\\.org$']
              exposed_headers: [X-Total, X-Page]
              max_age: 10m
      - {name: cred, paths: [/cred], plugins: [{name: cors, config: {origins: ['*'], credentials: true, methods: [GET, POST]}}]}
      - {name: listed-cred, paths: [/listed-cred], plugins: [{name: cors, config: {origins: ['${APP}', 'null'], credentials: true}}]}
      - {name: star, paths: [/star], plugins: [{name: cors, config: {origins: ['*']}}]}
      - {name: fixed, paths: [/fixed], plugins: [{name: cors, config: {origins: ['${APP}'], headers: [Content-Type, X-Custom]}}]}
      - {name: continue, paths: [/continue], plugins: [{name: cors, config: {origins: ['${APP}'], preflight_continue: true}}]}
      - {name: normalized, paths: [/normalized], plugins: [{name: cors, config: {origins: ['HTTPS://App.Example.com:443']}}]}
      - {name: pna, paths: [/pna], plugins: [{name: cors, config: {origins: ['${APP}'], private_network: true}}]}
      - {name: plain, paths: [/plain]}
      - {name: narrow, paths: [/narrow], methods: [GET, PUT, DELETE], plugins: [{name: cors, config: {origins: ['${APP}'], methods: [GET, PUT]}}]}
      - {name: any-method, paths: [/any-method], plugins: [{name: cors, config: {origins: ['${APP}'], methods: ['*']}}]}
      - {name: star-headers, paths: [/star-headers], plugins: [{name: cors, config: {origins: ['${APP}'], headers: ['*']}}]}
      - {name: expose-all, paths: [/expose-all], plugins: [{name: cors, config: {origins: ['${APP}'], exposed_headers: ['*']}}]}
      - {name: expose-all-cred, paths: [/expose-all-cred], plugins: [{name: cors, config: {origins: ['${APP}'], credentials: true, exposed_headers: ['*', X-Extra]}}]}
      - {name: star-cred, paths: [/star-cred], plugins: [{name: cors, config: {origins: ['${APP}'], credentials: true, methods: ['*'], headers: ['*']}}]}
      - {name: limited, paths: [/limited], plugins: [{name: cors, config: {origins: ['${APP}'], credentials: true}}, {name: request-size-limit, config: {max: 16}}]}
  - name: dead
    url: http://127.0.0.1:1
    retries: 0
    routes:
      - {name: dead, paths: [/dead], plugins: [{name: cors, config: {origins: ['${APP}'], credentials: true}}]}
      - {name: dead-cached, paths: [/dead-cached], plugins: [{name: cors, config: {origins: ['${APP}']}}, {name: cache}]}
`;

before(async () => {
  up = await upstream();
  t = await startGateway(config());
});
after(async () => {
  await t?.close();
  await up?.close();
});

const PREFLIGHT_VARY = 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers';
const preflight = (path: string, origin: string | null, method = 'POST', extra: Record<string, string> = {}) => request(`${t.url}${path}`, {
  method: 'OPTIONS',
  headers: { ...(origin !== null ? { origin } : {}), 'access-control-request-method': method, ...extra },
});

/** Every value of a response header (any case) as sent. */
function rawValues(r: SimpleResponse, name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < r.rawHeaders.length; i += 2) if (r.rawHeaders[i]!.toLowerCase() === name) out.push(r.rawHeaders[i + 1]!);
  return out;
}

test('the gateway\'s own 502 (upstream refused) carries the origin\'s fields: the page can read why its call failed', T, async () => {
  for (const path of ['/dead', '/dead-cached']) {
    const r = await request(`${t.url}${path}/x`, { headers: { origin: APP } });
    assert.equal(r.status, 502, path);
    assert.equal(r.headers['content-type'], 'application/problem+json');
    assert.equal(r.headers['access-control-allow-origin'], APP, path);
    assert.equal(r.headers['access-control-allow-credentials'], path === '/dead' ? 'true' : undefined, path);
    assert.deepEqual(rawValues(r, 'vary'), ['Origin'], path);
    // another origin: nothing to read
    const other = await request(`${t.url}${path}/x`, { headers: { origin: 'https://evil.example' } });
    assert.equal(other.status, 502);
    assert.equal(other.headers['access-control-allow-origin'], undefined);
  }
});

const corsFields = (r: SimpleResponse) => r.rawHeaders.filter((h, i) => i % 2 === 0 && h.toLowerCase().startsWith('access-control-')).map((h) => h.toLowerCase());

test('preflight from an allowed origin on a route with key-auth and methods [GET, POST]: 204 without a key, upstream not called', T, async () => {
  const before = up.requests.length;
  const r = await preflight('/api/items', APP, 'POST', { 'access-control-request-headers': 'Content-Type, X-Requested-With' });
  assert.equal(r.status, 204, r.body);
  assert.equal(r.body, '');
  assert.equal(r.headers['access-control-allow-origin'], APP);
  assert.equal(r.headers['access-control-allow-methods'], 'GET, HEAD, PUT, PATCH, POST, DELETE');
  assert.equal(r.headers['access-control-allow-headers'], 'Content-Type, X-Requested-With');
  assert.equal(r.headers['access-control-max-age'], '600');
  assert.equal(r.headers['access-control-allow-credentials'], undefined);
  assert.equal(r.headers['access-control-expose-headers'], undefined, 'expose headers are for actual responses');
  assert.equal(r.headers['vary'], PREFLIGHT_VARY);
  assert.equal(r.headers['www-authenticate'], undefined);
  assert.ok(r.headers['x-request-id']);
  assert.equal(up.requests.length, before, 'the preflight went upstream');

  // GET is on the route too; the method asked about decides the routing, the answer is the same.
  const g = await preflight('/api', APP, 'GET');
  assert.equal(g.status, 204);
  assert.equal(g.headers['access-control-allow-origin'], APP);
  assert.equal(g.headers['access-control-allow-headers'], undefined, 'nothing asked, nothing echoed');
  assert.equal(up.requests.length, before);
});

test('preflight: regex origins match the whole origin only', T, async () => {
  for (const o of ['https://shop.example.org', 'https://a-b.example.org']) {
    const r = await preflight('/api', o);
    assert.equal(r.status, 204);
    assert.equal(r.headers['access-control-allow-origin'], o);
  }
  for (const o of ['https://shop.example.org.evil.test', 'http://shop.example.org', 'https://example.org', 'https://x.y.example.org', 'https://app.example.com.evil.test', 'null']) {
    const r = await preflight('/api', o);
    assert.equal(r.status, 204, o);
    assert.deepEqual(corsFields(r), [], `${o} got ${corsFields(r).join(', ')}`);
  }
});

test('private_network: a Private Network Access preflight of an allowed origin gets Access-Control-Allow-Private-Network (only where configured)', T, async () => {
  const pna = { 'access-control-request-private-network': 'true' };
  const r = await preflight('/pna', APP, 'GET', pna);
  assert.equal(r.status, 204);
  assert.equal(r.headers['access-control-allow-private-network'], 'true');
  assert.equal(r.headers['vary'], `${PREFLIGHT_VARY}, Access-Control-Request-Private-Network`);
  assert.equal((await preflight('/pna', 'https://evil.test', 'GET', pna)).headers['vary'], `${PREFLIGHT_VARY}, Access-Control-Request-Private-Network`);
  assert.equal((await preflight('/pna', 'https://evil.test', 'GET', pna)).headers['access-control-allow-private-network'], undefined);
  assert.equal((await preflight('/pna', APP, 'GET')).headers['access-control-allow-private-network'], undefined);
  assert.equal((await preflight('/api', APP, 'GET', pna)).headers['access-control-allow-private-network'], undefined, 'not configured there');
});

test('preflight from a disallowed origin: 204 without any Access-Control-* field (the browser refuses), the same Vary as an allowed one', T, async () => {
  const before = up.requests.length;
  const r = await preflight('/api', 'https://evil.test', 'POST', { 'access-control-request-headers': 'x-a' });
  assert.equal(r.status, 204);
  assert.deepEqual(corsFields(r), []);
  assert.equal(r.headers['vary'], PREFLIGHT_VARY);
  assert.equal(up.requests.length, before);
});

test('preflight asking for a method the route does not take: 405 (the route is not matched)', T, async () => {
  const r = await preflight('/api', APP, 'DELETE');
  assert.equal(r.status, 405, r.body);
  assert.equal(JSON.parse(r.body).type, 'urn:turnpike:problem:method-not-allowed');
});

test('preflight asking for a method the route takes but cors `methods` does not list: 204 without any Access-Control-* field', T, async () => {
  const before = up.requests.length;
  const no = await preflight('/narrow', APP, 'DELETE', { 'access-control-request-headers': 'x-a' });
  assert.equal(no.status, 204, no.body);
  assert.deepEqual(corsFields(no), [], 'the page must not be told it may DELETE');
  // The answer depends on the method asked for: a cache must not hand it to a PUT preflight
  // (nor an allowed PUT's answer to a DELETE preflight).
  assert.equal(no.headers['vary'], PREFLIGHT_VARY);
  for (const m of ['PUT', 'put', 'GET']) {
    const yes = await preflight('/narrow', APP, m);
    assert.equal(yes.status, 204);
    assert.equal(yes.headers['access-control-allow-origin'], APP, m);
    assert.equal(yes.headers['vary'], PREFLIGHT_VARY, m);
    assert.equal(yes.headers['access-control-allow-methods'], 'GET, PUT');
  }
  const any = await preflight('/any-method', APP, 'PATCH');
  assert.equal(any.headers['access-control-allow-origin'], APP);
  assert.equal(any.headers['access-control-allow-methods'], '*');
  assert.equal(up.requests.length, before, 'preflights never reach the upstream');
});

test('preflight: a configured headers list is announced as is; echoed names are filtered to tokens', T, async () => {
  const f = await preflight('/fixed', APP, 'PUT', { 'access-control-request-headers': 'x-other' });
  assert.equal(f.status, 204);
  assert.equal(f.headers['access-control-allow-headers'], 'Content-Type, X-Custom');
  assert.equal(f.headers['vary'], PREFLIGHT_VARY);
  assert.equal(f.headers['access-control-allow-methods'], 'GET, HEAD, PUT, PATCH, POST, DELETE');

  const e = await preflight('/star', 'https://any.test', 'GET', { 'access-control-request-headers': 'x-a, bad header, x-b,,"q"' });
  assert.equal(e.headers['access-control-allow-headers'], 'x-a, x-b');
});

test("'*' in methods / headers as browsers read it (Fetch §4.8): Authorization is never taken by '*'; with credentials '*' is literal, so what was asked is named", T, async () => {
  const ask = { 'access-control-request-headers': 'authorization,content-type,x-trace' };
  const plain = await preflight('/star-headers', APP, 'PUT', ask);
  assert.equal(plain.headers['access-control-allow-origin'], APP);
  assert.equal(plain.headers['access-control-allow-headers'], '*, Authorization', 'a browser refuses Authorization unless it is named');
  assert.equal((await preflight('/star-headers', APP, 'PUT', { 'access-control-request-headers': 'x-trace' })).headers['access-control-allow-headers'], '*');
  const cred = await preflight('/star-cred', APP, 'PATCH', ask);
  assert.equal(cred.status, 204);
  assert.equal(cred.headers['access-control-allow-origin'], APP, "methods ['*'] with credentials allows any method");
  assert.equal(cred.headers['access-control-allow-credentials'], 'true');
  assert.equal(cred.headers['access-control-allow-methods'], 'PATCH', "a credentialed request takes '*' as a method named '*'");
  assert.equal(cred.headers['access-control-allow-headers'], 'authorization, content-type, x-trace', "a credentialed request takes '*' as a header named '*'");
  assert.equal(cred.headers['vary'], PREFLIGHT_VARY);
  // (a method a browser does not normalize is compared case-sensitively: echoed as asked)
  assert.equal((await preflight('/star-cred', APP, 'patch')).headers['access-control-allow-methods'], 'patch');
});

test("exposed_headers ['*']: sent as '*' without credentials; with credentials (where browsers take '*' literally) the response's own field names are listed", T, async () => {
  const respond = JSON.stringify(['X-Total', '5', 'ETag', '"v1"', 'Set-Cookie', 'a=b', 'Cache-Control', 'no-store']);
  const plain = await request(`${t.url}/expose-all`, { headers: { origin: APP, 'x-respond-headers': respond } });
  assert.deepEqual(rawValues(plain, 'access-control-expose-headers'), ['*']);
  const cred = await request(`${t.url}/expose-all-cred`, { headers: { origin: APP, 'x-respond-headers': respond } });
  assert.equal(cred.status, 200);
  assert.equal(cred.headers['access-control-allow-credentials'], 'true');
  const [aceh, ...more] = rawValues(cred, 'access-control-expose-headers');
  assert.deepEqual(more, []);
  const names = aceh!.split(',').map((n) => n.trim());
  for (const n of ['x-extra', 'x-total', 'etag', 'x-request-id']) assert.ok(names.includes(n), `${n} in ${aceh}`);
  for (const n of ['*', 'set-cookie', 'content-type', 'cache-control']) assert.ok(!names.includes(n), `${n} not in ${aceh}`);
});

test('actual request from an allowed origin: ACAO, Expose-Headers and Vary added to the upstream response', T, async () => {
  const r = await request(`${t.url}/api`, { headers: { origin: APP, apikey: KEY } });
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(rawValues(r, 'access-control-allow-origin'), [APP]);
  assert.deepEqual(rawValues(r, 'access-control-expose-headers'), ['X-Total, X-Page']);
  assert.deepEqual(rawValues(r, 'access-control-allow-credentials'), []);
  assert.deepEqual(rawValues(r, 'vary'), ['Origin']);
  // The request went upstream with its Origin.
  assert.equal(JSON.parse(r.body).headers.origin, APP);

  const post = await request(`${t.url}/api`, { method: 'POST', headers: { origin: 'https://shop.example.org', apikey: KEY, 'content-type': 'text/plain' }, body: 'x' });
  assert.equal(post.status, 200, post.body);
  assert.equal(post.headers['access-control-allow-origin'], 'https://shop.example.org');
});

test('actual request from a disallowed origin, and without Origin: no Access-Control-* fields (Vary: Origin still)', T, async () => {
  const bad = await request(`${t.url}/api`, { headers: { origin: 'https://evil.test', apikey: KEY } });
  assert.equal(bad.status, 200);
  assert.deepEqual(corsFields(bad), []);
  assert.deepEqual(rawValues(bad, 'vary'), ['Origin']);

  const none = await request(`${t.url}/api`, { headers: { apikey: KEY } });
  assert.equal(none.status, 200);
  assert.deepEqual(corsFields(none), []);
  assert.deepEqual(rawValues(none, 'vary'), ['Origin'], 'the answer depends on Origin: caches must know (Fetch §3.2.5)');

  // A route without cors: nothing at all.
  const plain = await request(`${t.url}/plain`, { headers: { origin: APP } });
  assert.deepEqual(corsFields(plain), []);
  assert.deepEqual(rawValues(plain, 'vary'), []);
});

test("the upstream's own CORS fields are replaced by the gateway's; its Vary is extended, not duplicated", T, async () => {
  const own = JSON.stringify([
    'Access-Control-Allow-Origin', '*', 'access-control-allow-credentials', 'true', 'Access-Control-Expose-Headers', 'X-Secret',
    'Vary', 'Accept-Encoding', 'access-control-allow-methods', 'PATCH',
  ]);
  const r = await request(`${t.url}/api`, { headers: { origin: APP, apikey: KEY, 'x-respond-headers': own } });
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(rawValues(r, 'access-control-allow-origin'), [APP]);
  assert.deepEqual(rawValues(r, 'access-control-allow-credentials'), []);
  assert.deepEqual(rawValues(r, 'access-control-expose-headers'), ['X-Total, X-Page']);
  assert.deepEqual(rawValues(r, 'vary'), ['Accept-Encoding, Origin']);

  // A disallowed origin does not get the upstream's '*' either.
  const bad = await request(`${t.url}/api`, { headers: { origin: 'https://evil.test', apikey: KEY, 'x-respond-headers': own } });
  assert.deepEqual(rawValues(bad, 'access-control-allow-origin'), []);
  assert.deepEqual(rawValues(bad, 'access-control-allow-credentials'), []);

  // Vary already naming Origin (any case), or `*`: left as is.
  const v1 = await request(`${t.url}/api`, { headers: { origin: APP, apikey: KEY, 'x-respond-headers': JSON.stringify(['Vary', 'accept, origin']) } });
  assert.deepEqual(rawValues(v1, 'vary'), ['accept, origin']);
  const v2 = await request(`${t.url}/api`, { headers: { origin: APP, apikey: KEY, 'x-respond-headers': JSON.stringify(['Vary', '*']) } });
  assert.deepEqual(rawValues(v2, 'vary'), ['*']);

  // Without Origin the upstream's fields pass untouched.
  const none = await request(`${t.url}/api`, { headers: { apikey: KEY, 'x-respond-headers': own } });
  assert.deepEqual(rawValues(none, 'access-control-allow-origin'), ['*']);
});

test('credentials: the origin itself (never *), Access-Control-Allow-Credentials: true, on preflights and responses', T, async () => {
  const p = await preflight('/cred', 'https://any.test', 'GET', { 'access-control-request-headers': 'authorization' });
  assert.equal(p.status, 204);
  assert.equal(p.headers['access-control-allow-origin'], 'https://any.test');
  assert.equal(p.headers['access-control-allow-credentials'], 'true');
  assert.equal(p.headers['access-control-allow-methods'], 'GET, POST');
  assert.equal(p.headers['access-control-allow-headers'], 'authorization');
  assert.match(String(p.headers['vary']), /Origin/);

  const r = await request(`${t.url}/cred`, { headers: { origin: 'https://any.test', cookie: 'a=1' } });
  assert.deepEqual(rawValues(r, 'access-control-allow-origin'), ['https://any.test']);
  assert.deepEqual(rawValues(r, 'access-control-allow-credentials'), ['true']);
  assert.deepEqual(rawValues(r, 'vary'), ['Origin']);

  // The opaque origin "null" (sandboxed pages) is never given credentialed access by "*"...
  const n = await request(`${t.url}/cred`, { headers: { origin: 'null' } });
  assert.deepEqual(corsFields(n), []);
  assert.deepEqual(corsFields(await preflight('/cred', 'null', 'GET')), []);
  // ...only when listed.
  const listed = await request(`${t.url}/listed-cred`, { headers: { origin: 'null' } });
  assert.deepEqual(rawValues(listed, 'access-control-allow-origin'), ['null']);
  assert.deepEqual(rawValues(listed, 'access-control-allow-credentials'), ['true']);
});

test("origins ['*'] without credentials: ACAO *", T, async () => {
  const p = await preflight('/star', 'https://any.test', 'DELETE');
  assert.equal(p.status, 204);
  assert.equal(p.headers['access-control-allow-origin'], '*');
  assert.equal(p.headers['access-control-allow-credentials'], undefined);
  const r = await request(`${t.url}/star`, { headers: { origin: 'https://any.test' } });
  assert.deepEqual(rawValues(r, 'access-control-allow-origin'), ['*']);
  // A plain OPTIONS (no Access-Control-Request-Method) is no preflight: it goes upstream.
  const before = up.requests.length;
  const o = await request(`${t.url}/star`, { method: 'OPTIONS', headers: { origin: 'https://any.test' } });
  assert.equal(o.status, 200, o.body);
  assert.equal(up.requests.length, before + 1);
  assert.equal(JSON.parse(o.body).method, 'OPTIONS');
  assert.deepEqual(rawValues(o, 'access-control-allow-origin'), ['*']);
});

test('exact origins are compared as browsers serialize them (case, default port)', T, async () => {
  const r = await request(`${t.url}/normalized`, { headers: { origin: APP } });
  assert.deepEqual(rawValues(r, 'access-control-allow-origin'), [APP]);
  const other = await request(`${t.url}/normalized`, { headers: { origin: `${APP}:8443` } });
  assert.deepEqual(corsFields(other), []);
});

test('preflight_continue: the upstream answers the preflight (as OPTIONS), the gateway adds the origin fields', T, async () => {
  const before = up.requests.length;
  const r = await preflight('/continue', APP, 'PUT', { 'x-respond-headers': JSON.stringify(['Access-Control-Allow-Methods', 'PUT']) });
  assert.equal(r.status, 200, r.body);
  assert.equal(up.requests.length, before + 1);
  const seen = JSON.parse(r.body) as { method: string; headers: Record<string, string> };
  assert.equal(seen.method, 'OPTIONS');
  assert.equal(seen.headers['access-control-request-method'], 'PUT');
  assert.deepEqual(rawValues(r, 'access-control-allow-origin'), [APP]);
  assert.deepEqual(rawValues(r, 'access-control-allow-methods'), ['PUT']);
});

test('a 204 preflight answer carries no body and no Content-Length (RFC 9110 §8.6)', { ...T }, async () => {
  const raw = await rawRequest(t.port, `OPTIONS /api HTTP/1.1\r\nHost: x\r\nOrigin: ${APP}\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n`);
  assert.match(raw.text, /^HTTP\/1\.1 204 /);
  const head = raw.text.split('\r\n\r\n')[0]!;
  assert.doesNotMatch(head, /\r\ncontent-length:/i, head);
  assert.doesNotMatch(head, /\r\ntransfer-encoding:/i, head);
  assert.equal(raw.text.slice(head.length + 4), '');
});

test('HTTP/2 (h2c): a preflight is answered the same way', T, async () => {
  const c = h2connect(t.url);
  try {
    const headers = await new Promise<IncomingHttpHeaders>((resolve, reject) => {
      const s = c.request({ ':method': 'OPTIONS', ':path': '/api', origin: APP, 'access-control-request-method': 'POST' }, { endStream: true });
      s.on('response', (h) => {
        s.resume();
        s.on('end', () => resolve(h));
      });
      s.on('error', reject);
    });
    assert.equal(headers[':status'], 204);
    assert.equal(headers['access-control-allow-origin'], APP);
    assert.equal(headers['access-control-allow-methods'], 'GET, HEAD, PUT, PATCH, POST, DELETE');
    assert.equal(headers['vary'], PREFLIGHT_VARY);
  } finally {
    c.close();
  }
});

test('a reply made by another plugin (key-auth 401) to an allowed origin carries the CORS fields', T, async () => {
  const r = await request(`${t.url}/api`, { headers: { origin: APP } });
  assert.equal(r.status, 401);
  assert.deepEqual(rawValues(r, 'access-control-allow-origin'), [APP], 'a browser cannot read this 401');
  assert.deepEqual(rawValues(r, 'access-control-expose-headers'), ['X-Total, X-Page']);
  assert.deepEqual(rawValues(r, 'vary'), ['Origin'], 'a shared cache must not hand this 401 to another origin');
  assert.equal(r.headers['www-authenticate'], 'Key realm="turnpike"');
  const c = await request(`${t.url}/api`, { headers: { origin: 'https://evil.test' } });
  assert.equal(c.status, 401);
  assert.deepEqual(corsFields(c), []);
  assert.deepEqual(rawValues(c, 'vary'), ['Origin']);
});

test('request-size-limit\'s 413 (declared Content-Length, or a chunked body cut at the limit) to an allowed origin carries the CORS fields', T, async () => {
  const before = up.requests.length;
  for (const chunked of [false, true]) {
    const r = await request(`${t.url}/limited`, {
      method: 'POST', headers: { origin: APP, 'content-type': 'text/plain', ...(chunked ? { 'transfer-encoding': 'chunked' } : {}) }, body: 'x'.repeat(200),
    });
    assert.equal(r.status, 413, r.body);
    assert.deepEqual(rawValues(r, 'access-control-allow-origin'), [APP], `a browser cannot read this 413 (chunked: ${chunked})`);
    assert.deepEqual(rawValues(r, 'access-control-allow-credentials'), ['true']);
    assert.deepEqual(rawValues(r, 'vary'), ['Origin'], 'a shared cache must not hand this 413 to another origin');
    const other = await request(`${t.url}/limited`, {
      method: 'POST', headers: { origin: 'https://evil.test', 'content-type': 'text/plain', ...(chunked ? { 'transfer-encoding': 'chunked' } : {}) }, body: 'x'.repeat(200),
    });
    assert.equal(other.status, 413);
    assert.deepEqual(corsFields(other), []);
  }
  // (a small body still goes through)
  const ok = await request(`${t.url}/limited`, { method: 'POST', headers: { origin: APP, 'content-type': 'text/plain' }, body: 'small' });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers['access-control-allow-origin'], APP);
  assert.ok(up.requests.length >= before + 1);
});

// ---- config errors -------------------------------------------------------------------------


const withCors = (cfg: string) => `services:
  - name: s
    url: http://127.0.0.1:9
    routes:
      - name: r
        paths: [/r]
        plugins:
          - name: cors
            config: ${cfg}
`;

test('config: bad origins are named by index; origins is required; consumer bindings refused', T, () => {
  const at = 'services[0].routes[0].plugins[0].config';
  let issues = issuesOf(withCors(`{origins: ['${APP}', '~^https://(unclosed$', 'https://a.test/path', 'app.example.com', '~', '*', 'null']}`));
  assert.deepEqual(issues.map((i) => i.path), [at, at, at, at]);
  assert.match(issues[0]!.message, /^origins\[1\]: an invalid regular expression/);
  assert.match(issues[1]!.message, /^origins\[2\]: "https:\/\/a.test\/path" is not an origin/);
  assert.match(issues[2]!.message, /^origins\[3\]: "app.example.com" is not an origin/);
  assert.match(issues[3]!.message, /^origins\[4\]: an empty regular expression/);

  // A wildcard subdomain written as in other products is refused (it would match nothing), pointing to "~".
  issues = issuesOf(withCors("{origins: ['https://*.example.com', 'http://localhost:*']}"));
  assert.deepEqual(issues.map((i) => i.path), [at, at]);
  assert.match(issues[0]!.message, /^origins\[0\]: "https:\/\/\*\.example\.com": a wildcard inside an origin is not a pattern .*use "~"/);
  assert.match(issues[1]!.message, /^origins\[1\]: /);

  issues = issuesOf(withCors('{}'));
  assert.ok(issues.some((i) => i.path === `${at}.origins` && /required/.test(i.message)), JSON.stringify(issues));
  issues = issuesOf(withCors('{origins: []}'));
  assert.ok(issues.some((i) => i.path === `${at}.origins`), JSON.stringify(issues));
  issues = issuesOf(withCors("{origins: ['*'], methods: ['GET POST'], max_age: soon}"));
  assert.ok(issues.some((i) => i.path === `${at}.methods[0]`), JSON.stringify(issues));
  assert.ok(issues.some((i) => i.path === `${at}.max_age`), JSON.stringify(issues));

  issues = issuesOf(`consumers:
  - name: c
    plugins: [{name: cors, config: {origins: ['*']}}]
`);
  assert.match(issues[0]!.message, /cannot be bound to a consumer/);
});

test('a preflight-shaped OPTIONS to a route without cors is the OPTIONS it is: 405 where only GET is allowed, never forwarded', async () => {
  const origin = await startUpstream();
  const t = await startGateway(`
consumers: [{name: c, credentials: [{type: key-auth, key: a-long-key-123}]}]
services:
  - {name: s, url: ${origin.url}, routes: [{paths: [/get-only], methods: [GET], plugins: [{name: key-auth}]}]}
`);
  try {
    const r = await request(`${t.url}/get-only`, { method: 'OPTIONS', headers: { origin: 'https://app.example.com', 'access-control-request-method': 'GET', apikey: 'a-long-key-123' } });
    assert.equal(r.status, 405);
    assert.equal(origin.requests.length, 0);
  } finally {
    await t.close();
    await origin.close();
  }
});

test('an OPTIONS with Origin and Access-Control-Request-Method but a body or a method override is no preflight (a browser\'s has neither): never sent, unvalidated, to the upstream of the route it names (preflight_continue)', async () => {
  const origin = await startUpstream();
  const cors = `{name: cors, config: {origins: ['${APP}'], preflight_continue: true}}`;
  const t = await startGateway(`http2: {h2c: true}
consumers: [{name: c, credentials: [{type: key-auth, key: a-long-key-123}]}]
services:
  - name: s
    url: ${origin.url}
    routes:
      - {name: create, paths: [/users], methods: [POST], plugins: [${cors}, {name: request-validator, config: {body_schema: {type: object, additionalProperties: false, properties: {name: {type: string}}}}}]}
      - {name: list, paths: [/users], methods: [GET], plugins: [${cors}]}
      - {name: drop, paths: [/users], methods: [DELETE], plugins: [${cors}, {name: key-auth}]}
`);
  const options = (headers: Record<string, string>, body?: string) => request(`${t.url}/users`, {
    // (node's client frames no OPTIONS body by itself)
    method: 'OPTIONS', headers: { origin: APP, 'content-type': 'application/json', ...headers, ...(body !== undefined ? { 'content-length': String(body.length) } : {}) },
    ...(body !== undefined ? { body } : {}),
  });
  try {
    // A body the route's validator refuses, as a POST, rides an OPTIONS "preflight" for POST.
    const body = await options({ 'access-control-request-method': 'POST' }, '{"role":"admin"}');
    assert.equal(body.status, 405, body.body);
    // An override to DELETE (protected) on a "preflight" for GET (public).
    const override = await options({ 'access-control-request-method': 'GET', 'x-http-method-override': 'DELETE' });
    assert.equal(override.status, 405, override.body);
    // HTTP/2: a preflight stream with DATA is no preflight either
    const c = h2connect(t.url);
    try {
      const status = await new Promise<number>((resolve, reject) => {
        const s = c.request({ ':method': 'OPTIONS', ':path': '/users', origin: APP, 'access-control-request-method': 'POST', 'content-type': 'application/json' });
        s.on('response', (h) => resolve(Number(h[':status'])));
        s.on('error', reject);
        s.end('{"role":"admin"}');
        s.resume();
      });
      assert.equal(status, 405);
    } finally {
      c.close();
    }
    assert.deepEqual(origin.requests.map((q) => `${q.method} ${q.body.toString()}`), []);
    // A browser's preflight (no body, no override) goes on to the upstream, as configured.
    const real = await options({ 'access-control-request-method': 'POST' });
    assert.equal(real.status, 200, real.body);
    assert.deepEqual(origin.requests.map((q) => q.method), ['OPTIONS']);
  } finally {
    await t.close();
    await origin.close();
  }
});
