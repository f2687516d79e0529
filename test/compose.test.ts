/**
 * Composition endpoints end to end: a running gateway, real loopback upstreams (and an HTTPS
 * provider with a self-signed CA), plain HTTP clients.
 */
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpsServer } from 'node:https';
import { connect, type AddressInfo } from 'node:net';
import type { ServerResponse } from 'node:http';
import { makeCa } from './certs.js';
import { eventually, freePort, promValue, request, startGateway, startUpstream, type TestGateway, type TestUpstream } from './helpers.js';

const cleanups: (() => Promise<void> | void)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const json = (res: ServerResponse, body: unknown, status = 200) => {
  if (res.destroyed) return;
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
};

async function gateway(yaml: string, env: NodeJS.ProcessEnv = {}): Promise<TestGateway> {
  const gw = await startGateway(yaml, env);
  cleanups.push(() => gw.close());
  return gw;
}

async function upstream(...args: Parameters<typeof startUpstream>): Promise<TestUpstream> {
  const u = await startUpstream(...args);
  cleanups.push(() => u.close());
  return u;
}

test('a composed profile: parallel steps, a chained step, partial answers and failures as problems', async () => {
  // (parallel steps: the orders request arrives before the users answer is sent, whatever the load)
  let usersAnswered = Infinity;
  let ordersArrived = Infinity;
  const users = await upstream((req, res) => {
    if (req.url === '/users/7') return setTimeout(() => { usersAnswered = Date.now(); json(res, { id: 7, name: 'Ann', tier: 'gold' }); }, 200);
    if (req.url === '/users/500') return json(res, { error: 'boom' }, 500);
    json(res, { error: 'not found' }, 404);
  });
  const orders = await upstream((req, res) => {
    // /orders?user=slow never answers in time
    if (req.url === '/orders?user=slow') return setTimeout(() => json(res, []), 2000);
    if (req.url === '/orders?user=7') ordersArrived = Math.min(ordersArrived, Date.now());
    setTimeout(() => json(res, [{ id: 1, user: req.url }]), 200);
  });
  const loyalty = await upstream((req, res) => json(res, { level: req.url === '/tiers/gold' ? 3 : 0 }));
  const admin = await freePort();
  const gw = await gateway(`admin: {listen: "127.0.0.1:${admin}"}
services:
  - {name: users, url: "${users.url}"}
  - {name: orders, url: "${orders.url}"}
  - {name: loyalty, url: "${loyalty.url}"}
routes:
  - name: profile
    paths: ["/profile/{id}"]
    methods: [GET]
    compose:
      steps:
        - {name: user, service: users, path: "/users/{id}"}
        - {name: orders, service: orders, path: /orders, query: {user: "{id}"}, optional: true, timeout: 500ms}
        - {name: tier, service: loyalty, path: "/tiers/{user.body.tier}"}
  - name: orders-first
    paths: ["/slow/{id}"]
    compose:
      steps:
        - {name: orders, service: orders, path: /orders, query: {user: "{id}"}, timeout: 300ms}
`);
  const ok = await request(`${gw.url}/profile/7`, { headers: { 'x-request-id': 'rid-1' } });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers['content-type'], 'application/json');
  assert.equal(ok.headers['x-request-id'], 'rid-1');
  assert.equal(ok.headers['turnpike-partial'], undefined);
  assert.deepEqual(JSON.parse(ok.body), { user: { id: 7, name: 'Ann', tier: 'gold' }, orders: [{ id: 1, user: '/orders?user=7' }], tier: { level: 3 } });
  assert.ok(ordersArrived < usersAnswered, `user and orders ran in parallel (orders came ${ordersArrived - usersAnswered} ms after users answered)`);
  assert.equal(users.requests.at(-1)!.headers['x-request-id'], 'rid-1');

  // a required step timing out: 504 naming it
  const slowPartial = await request(`${gw.url}/slow/slow`);
  assert.equal(slowPartial.status, 504);
  assert.equal(slowPartial.headers['content-type'], 'application/problem+json');
  const sp = JSON.parse(slowPartial.body);
  assert.equal(sp.type, 'urn:turnpike:problem:step-timeout');
  assert.equal(sp.step, 'orders');
  assert.equal(sp.step_status, null);
  assert.match(sp.detail, /step "orders" timed out: did not answer within 300 ms/);

  // a required step answering 500: 502 naming it and its status
  const failed = await request(`${gw.url}/profile/500`);
  assert.equal(failed.status, 502);
  const fp = JSON.parse(failed.body);
  assert.equal(fp.type, 'urn:turnpike:problem:step-failed');
  assert.deepEqual([fp.step, fp.step_status, fp.detail], ['user', 500, 'step "user" failed: answered 500']);
  assert.equal(fp.request_id, failed.headers['x-request-id']);
  assert.equal(fp.status, 502);

  // metrics label the composition by its route (service = route name)
  const metrics = (await request(`http://127.0.0.1:${admin}/metrics`)).body;
  assert.equal(promValue(metrics, 'turnpike_requests_total', { service: 'profile', route: 'profile', method: 'GET', status: '200' }), 1);
  assert.equal(promValue(metrics, 'turnpike_requests_total', { service: 'profile', route: 'profile', method: 'GET', status: '502' }), 1);
  assert.equal(promValue(metrics, 'turnpike_requests_total', { service: 'orders-first', route: 'orders-first', method: 'GET', status: '504' }), 1);
  // a method the route does not list
  assert.equal((await request(`${gw.url}/profile/7`, { method: 'POST', body: '{}' })).status, 405);
});

test('an optional step that times out: 200 with Turnpike-Partial and errors', async () => {
  const fast = await upstream((req, res) => json(res, { id: 1 }));
  const slow = await upstream((req, res) => setTimeout(() => json(res, { late: true }), 2000));
  const gw = await gateway(`services:
  - {name: fast, url: "${fast.url}"}
  - {name: slow, url: "${slow.url}"}
routes:
  - name: home
    paths: [/home]
    compose:
      steps:
        - {name: user, service: fast}
        - {name: recs, service: slow, optional: true, timeout: 250ms}
`);
  const t0 = Date.now();
  const r = await request(`${gw.url}/home`);
  assert.ok(Date.now() - t0 < 1500);
  assert.equal(r.status, 200);
  assert.equal(r.headers['turnpike-partial'], 'recs');
  assert.deepEqual(JSON.parse(r.body), { user: { id: 1 }, errors: [{ step: 'recs', status: null, error: 'did not answer within 250 ms' }] });
});

test('every step optional and every one failed (no fallback): a 502 naming them, not a 200 holding nothing but errors', async () => {
  const down = await upstream((req, res) => res.writeHead(503).end());
  const gw = await gateway(`services:
  - {name: down, url: "${down.url}"}
routes:
  - name: feed
    paths: [/feed]
    compose:
      steps:
        - {name: a, service: down, optional: true}
        - {name: b, service: down, optional: true}
  - name: degraded
    paths: [/degraded]
    compose:
      steps:
        - {name: a, service: down, optional: true}
        - {name: b, service: down, optional: true, fallback: []}
`);
  const r = await request(`${gw.url}/feed`);
  assert.equal(r.status, 502, r.body);
  assert.match(String(r.headers['content-type']), /problem\+json/);
  const p = JSON.parse(r.body);
  assert.equal(p.type, 'urn:turnpike:problem:step-failed');
  assert.deepEqual(p.errors.map((e: { step: string; status: number }) => [e.step, e.status]), [['a', 503], ['b', 503]]);
  // A fallback is an answer (a known-degraded one): 200 as before.
  const d = await request(`${gw.url}/degraded`);
  assert.equal(d.status, 200, d.body);
  assert.equal(d.headers['turnpike-partial'], 'a, b');
});

test('hostile path parameters through the router are encoded upstream, never re-interpreted', async () => {
  const users = await upstream((req, res) => json(res, { url: req.url }));
  const gw = await gateway(`services:
  - {name: users, url: "${users.url}"}
routes:
  - name: profile
    paths: ["/profile/{id}"]
    compose:
      steps:
        - {name: user, service: users, path: "/users/{id}/card", query: {q: "{query.q:-none}"}}
`);
  const cases: [string, string][] = [
    ['/profile/a%3Fadmin=1', '/users/a%3Fadmin%3D1/card?q=none'],
    ['/profile/a%2Fb', '/users/a%2Fb/card?q=none'],
    ['/profile/x%23frag?q=1%262=3', '/users/x%23frag/card?q=1%262%3D3'],
    ['/profile/%252e%252e', '/users/%252e%252e/card?q=none'],
  ];
  for (const [path, expected] of cases) {
    const r = await request(`${gw.url}${path}`);
    assert.equal(r.status, 200, `${path}: ${r.body}`);
    assert.equal(JSON.parse(r.body).user.url, expected, path);
  }
  // a value that is a dot segment by itself (from the query) fails the step before it is sent
  const gw2 = await gateway(`services:
  - {name: users, url: "${users.url}"}
routes:
  - name: p
    paths: [/p]
    compose:
      steps:
        - {name: user, service: users, path: "/users/{query.id}"}
`);
  const before = users.requests.length;
  const r = await request(`${gw2.url}/p?id=..`);
  assert.equal(r.status, 400); // (the client's value: its fault)
  assert.match(JSON.parse(r.body).detail, /path segment/);
  assert.equal(users.requests.length, before);
});

test('client credentials reach no step unless templated; route plugins run before the composition', async () => {
  const svc = await upstream((req, res) => json(res, { auth: req.headers.authorization ?? null, cookie: req.headers.cookie ?? null, apikey: req.headers.apikey ?? null, consumer: req.headers['x-consumer-name'] ?? null }));
  const gw = await gateway(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: me
    paths: [/me]
    plugins: [{name: key-auth}]
    compose:
      steps:
        - {name: plain, service: svc}
        - {name: forwarded, service: svc, headers: {authorization: "{header.authorization}"}}
        - {name: who, service: svc, headers: {x-consumer-name: "{consumer.name}"}}
        - {name: proto, service: svc, headers: {authorization: "{header.constructor:-none}"}}
consumers:
  - name: acme
    credentials: [{type: key-auth, key: k-1234567890}]
`);
  assert.equal((await request(`${gw.url}/me`)).status, 401);
  const r = await request(`${gw.url}/me`, { headers: { apikey: 'k-1234567890', authorization: 'Bearer client', cookie: 'sid=1' } });
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(JSON.parse(r.body), {
    plain: { auth: null, cookie: null, apikey: null, consumer: null },
    forwarded: { auth: 'Bearer client', cookie: null, apikey: null, consumer: null },
    who: { auth: null, cookie: null, apikey: null, consumer: 'acme' },
    // (a name the request's header object inherits is no header: not "function Object() ...")
    proto: { auth: 'none', cookie: null, apikey: null, consumer: null },
  });
});

test('a POST composition reads the client\'s JSON body into a step; non-JSON and oversized step bodies fail', async () => {
  const svc = await upstream((req, res, body) => {
    if (req.url === '/html') return res.writeHead(200, { 'content-type': 'text/html' }).end('<p>no</p>');
    if (req.url === '/big') return json(res, { blob: 'x'.repeat(5000) });
    if (req.url === '/utf16') return res.writeHead(200, { 'content-type': 'application/json; charset=utf-16le' }).end(Buffer.from('{"a":1}', 'utf16le'));
    json(res, { received: JSON.parse(body.toString() || 'null') });
  });
  const gw = await gateway(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: order
    paths: [/order]
    methods: [POST]
    compose:
      steps:
        - name: create
          service: svc
          method: POST
          body: {item: "{body.item}", qty: "{body.qty}"}
  - name: html
    paths: [/html]
    compose:
      steps: [{name: page, service: svc, path: /html}]
  - name: big
    paths: [/big]
    compose:
      max_body: 1kb
      steps: [{name: blob, service: svc, path: /big}]
  - name: utf16
    paths: [/utf16]
    compose:
      steps: [{name: wide, service: svc, path: /utf16}]
`);
  const r = await request(`${gw.url}/order`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ item: 'pen', qty: 2 }) });
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(JSON.parse(r.body), { create: { received: { item: 'pen', qty: 2 } } });
  // The body is read as UTF-8: one declared in another charset is a 415 (in UTF-7,
  // {"item":"x+ACIALAAi-qty+ACIAOgAi-9"} is {"item":"x","qty":"9"} to a peer that honours it)
  const before = svc.requests.length;
  for (const ct of ['application/json; charset=utf-7', 'application/json; charset=utf-16']) {
    const r7 = await request(`${gw.url}/order`, { method: 'POST', headers: { 'content-type': ct }, body: '{"item":"x+ACIALAAi-qty+ACIAOgAi-9"}' });
    assert.equal(r7.status, 415, ct);
    assert.match(JSON.parse(r7.body).detail, /charset "(utf-7|utf-16)" is not accepted/);
  }
  // ISO-8859-1 (an old Java client's default) reads ASCII as ASCII: a body with other bytes
  // (é as latin1 0xE9) is a 415, one of ASCII bytes is the same text and is read
  const latin = await request(`${gw.url}/order`, { method: 'POST', headers: { 'content-type': 'application/json; charset="ISO-8859-1"' }, body: Buffer.from('{"item":"caf\xe9","qty":1}', 'latin1') });
  assert.equal(latin.status, 415);
  assert.match(JSON.parse(latin.body).detail, /charset "iso-8859-1" is not accepted/);
  assert.equal(svc.requests.length, before);
  const ascii = await request(`${gw.url}/order`, { method: 'POST', headers: { 'content-type': 'application/json; charset=ISO-8859-1' }, body: '{"item":"caf\\u00e9","qty":3}' });
  assert.equal(ascii.status, 200, ascii.body);
  assert.deepEqual(JSON.parse(ascii.body), { create: { received: { item: 'café', qty: 3 } } });
  assert.equal((await request(`${gw.url}/order`, { method: 'POST', headers: { 'content-type': 'application/json; charset=UTF-8' }, body: '{"item":"pen","qty":1}' })).status, 200);
  // a step's answer in another charset is not read as UTF-8 either
  const wide = await request(`${gw.url}/utf16`);
  assert.equal(wide.status, 502);
  assert.match(JSON.parse(wide.body).detail, /not JSON in UTF-8 \(charset "utf-16le"\)/);
  const bad = await request(`${gw.url}/order`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{oops' });
  assert.equal(bad.status, 400);
  const html = await request(`${gw.url}/html`);
  assert.equal(html.status, 502);
  assert.deepEqual([JSON.parse(html.body).step, JSON.parse(html.body).step_status], ['page', 200]);
  assert.match(JSON.parse(html.body).detail, /not JSON \(content-type text\/html\)/);
  const big = await request(`${gw.url}/big`);
  assert.equal(big.status, 502);
  assert.match(JSON.parse(big.body).detail, /response too large/);
});

test('an external provider over HTTPS with a self-signed CA', async () => {
  const ca = makeCa();
  cleanups.push(() => ca.cleanup());
  const leaf = ca.issue('localhost', { dns: ['localhost', '127.0.0.1'] });
  const server = createHttpsServer({ cert: leaf.cert, key: leaf.key }, (req, res) => {
    if (req.headers.authorization !== 'Bearer t0k') return json(res, {}, 401);
    json(res, { base: 'EUR', path: req.url });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  const port = (server.address() as AddressInfo).port;
  const gw = await gateway(`routes:
  - name: fx
    paths: [/fx]
    compose:
      steps:
        - {name: rates, url: "https://127.0.0.1:${port}/latest", tls: {ca: "${ca.certFile}"}, auth: {bearer: "\${FX_TOKEN}"}}
        - {name: unverified, url: "https://127.0.0.1:${port}/latest", optional: true}
`, { FX_TOKEN: 't0k' });
  const r = await request(`${gw.url}/fx`);
  assert.equal(r.status, 200, r.body);
  const body = JSON.parse(r.body);
  assert.deepEqual(body.rates, { base: 'EUR', path: '/latest' });
  assert.equal(r.headers['turnpike-partial'], 'unverified');
  assert.match(body.errors[0].error, /TLS failed/);
});

test('a client that goes away aborts the running steps', async () => {
  const closed: string[] = [];
  const svc = await upstream((req, res) => {
    res.on('close', () => closed.push(req.url!));
    setTimeout(() => json(res, {}), 5000);
  });
  const gw = await gateway(`services:
  - {name: svc, url: "${svc.url}"}
routes:
  - name: r
    paths: [/r]
    compose:
      steps:
        - {name: a, service: svc, path: /a}
        - {name: b, service: svc, path: /b}
`);
  const sock = connect(gw.port, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  sock.write('GET /r HTTP/1.1\r\nHost: x\r\n\r\n');
  await eventually(() => svc.requests.length === 2, 2000, 20);
  sock.destroy();
  await eventually(() => closed.length === 2, 2000, 20);
  assert.deepEqual(closed.sort(), ['/a', '/b']);
});
