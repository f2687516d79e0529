/** The developer portal (slice 1): the catalog of published APIs and their generated OpenAPI documents, on the proxy listener. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { launchChromium } from './browser.js';
import { request, startGateway, startUpstream, type TestGateway, type TestUpstream } from './helpers.js';

let up: TestUpstream;
let gw: TestGateway;
before(async () => {
  up = await startUpstream();
  gw = await startGateway(`
portal: {enabled: true, title: "Acme <APIs>", description: "Everything we publish & more"}
services:
  - name: orders
    url: ${up.url}
    published: true
    description: "Orders <script>alert(1)</script>"
    routes:
      - {name: list, paths: [/orders], methods: [GET], description: List orders}
      - {name: one, paths: ["/orders/{id}"], methods: [GET, DELETE]}
      - {name: internal, paths: [/orders-admin], published: false}
  - name: billing
    url: ${up.url}
    routes:
      - {name: invoices, paths: [/invoices], published: true}
      - {name: secret, paths: [/billing-secret]}
  - name: hidden
    url: ${up.url}
    routes: [{paths: [/hidden]}]
`);
});
after(async () => {
  await gw?.close();
  await up?.close();
});

test('the catalog lists published services and routes only, escaped, with a strict CSP and no script', async () => {
  const r = await request(`${gw.url}/portal/`);
  assert.equal(r.status, 200);
  assert.match(String(r.headers['content-type']), /^text\/html/);
  assert.match(String(r.headers['content-security-policy']), /default-src 'none'/);
  assert.match(r.body, /<h1>Acme &lt;APIs&gt;<\/h1>/);
  assert.match(r.body, /href="\/portal\/apis\/orders"/);
  assert.match(r.body, /href="\/portal\/apis\/billing"/);
  assert.doesNotMatch(r.body, /hidden/);
  assert.doesNotMatch(r.body, /<script/i);
  assert.match(r.body, /Orders &lt;script&gt;/);
  assert.equal((await request(`${gw.url}/portal`)).status, 308);
  assert.equal(up.requests.length, 0, 'the portal never reaches an upstream');
});

test('an API page and its OpenAPI 3.1 document: operations from its routes, path parameters, unpublished routes left out', async () => {
  const page = await request(`${gw.url}/portal/apis/orders`);
  assert.equal(page.status, 200);
  assert.match(page.body, /<code>\/orders\/\{id\}<\/code>/);
  assert.doesNotMatch(page.body, /orders-admin/);
  const doc = JSON.parse((await request(`${gw.url}/portal/apis/orders/openapi.json`, { headers: { host: 'api.example.com' } })).body);
  assert.equal(doc.openapi, '3.1.0');
  assert.deepEqual(doc.servers, [{ url: 'http://api.example.com' }]);
  assert.deepEqual(Object.keys(doc.paths).sort(), ['/orders', '/orders/{id}']);
  assert.deepEqual(Object.keys(doc.paths['/orders/{id}']).sort(), ['delete', 'get']);
  assert.deepEqual(doc.paths['/orders/{id}'].get.parameters, [{ name: 'id', in: 'path', required: true, schema: { type: 'string' } }]);
  assert.equal(doc.paths['/orders'].get.summary, 'List orders');
  const billing = JSON.parse((await request(`${gw.url}/portal/apis/billing/openapi.json`)).body);
  assert.deepEqual(Object.keys(billing.paths), ['/invoices'], 'only the published route of an unpublished service');
});

test('hostile paths and methods: unknown or unpublished APIs 404, traversal and bad escapes 4xx, writes 405; the routes keep working', async () => {
  for (const p of ['/portal/apis/hidden', '/portal/apis/hidden/openapi.json', '/portal/apis/%E0%A4%A', '/portal/apis/orders/../hidden', '/portal/nope', '/portal/apis/']) {
    const r = await request(`${gw.url}${p}`);
    assert.ok(r.status >= 400 && r.status < 500, `${p} -> ${r.status}`);
  }
  const post = await request(`${gw.url}/portal/`, { method: 'POST', body: 'x' });
  assert.equal(post.status, 405);
  assert.equal(post.headers['allow'], 'GET, HEAD');
  assert.equal((await request(`${gw.url}/orders`)).status, 200);
  assert.equal((await request(`${gw.url}/hidden`)).status, 200);
});

test('the portal\'s problems (404, 405) carry the request id, as every problem the gateway answers does (request_id and X-Request-Id)', async () => {
  for (const [method, path] of [['GET', '/portal/nope'], ['GET', '/portal/apis/hidden'], ['POST', '/portal/'], ['DELETE', '/portal/apis/orders']] as const) {
    const r = await request(`${gw.url}${path}`, { method, headers: { 'x-request-id': 'portal-trace-42' } });
    assert.ok(r.status === 404 || r.status === 405, `${method} ${path}: ${r.status}`);
    assert.equal(r.headers['content-type'], 'application/problem+json');
    assert.equal(r.headers['x-request-id'], 'portal-trace-42');
    assert.equal(JSON.parse(r.body).request_id, 'portal-trace-42', `${method} ${path}`);
  }
});

test('off by default: /portal/ is just a path', async () => {
  const t = await startGateway(`services: [{name: s, url: "${up.url}", published: true, routes: [{paths: [/x]}]}]`);
  try {
    assert.equal((await request(`${t.url}/portal/`)).status, 404);
  } finally {
    await t.close();
  }
});

test('portal.hosts: the portal answers on its hosts only; elsewhere its path is routed like any other', async () => {
  const t = await startGateway(`
portal: {enabled: true, hosts: [Developer.Example.com], accounts: {enabled: false}}
services:
  - {name: s, url: "${up.url}", published: true, routes: [{paths: [/x]}, {name: app, hosts: [app.example.com], paths: [/]}]}
`);
  try {
    const own = await request(`${t.url}/portal/`, { headers: { host: 'developer.example.com:8443' } });
    assert.equal(own.status, 200);
    assert.match(own.headers['content-type'] as string, /text\/html/);
    // another host: the upstream's route answers /portal/ (the portal does not)
    const other = await request(`${t.url}/portal/`, { headers: { host: 'app.example.com' } });
    assert.equal(other.status, 200);
    assert.equal(JSON.parse(other.body).url, '/portal/', 'the upstream answered');
    // a host with no route: 404 problem, not the portal
    const none = await request(`${t.url}/portal/apis/s`, { headers: { host: 'evil.example' } });
    assert.equal(none.status, 404);
    assert.match(none.headers['content-type'] as string, /problem\+json/);
  } finally {
    await t.close();
  }
});

test('in Chromium: the catalog links to the API page (screenshots in docs/screenshots/)', async () => {
  const shots = join(process.cwd(), 'docs/screenshots/');
  mkdirSync(shots, { recursive: true });
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
    const errors: string[] = [];
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    await page.goto(`${gw.url}/portal/`);
    assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Acme <APIs>');
    await page.screenshot({ path: join(shots, 'portal-catalog.png') });
    await page.getByRole('link', { name: 'orders' }).click();
    await page.getByRole('heading', { name: 'Operations' }).waitFor();
    assert.match(await page.locator('main').innerText(), /DELETE\s*\/orders\/\{id\}/);
    await page.screenshot({ path: join(shots, 'portal-api.png') });
    assert.deepEqual(errors, [], 'no CSP violations or script errors');
  } finally {
    await browser.close();
  }
});
