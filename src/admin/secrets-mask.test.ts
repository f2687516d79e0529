/** Secrets outside credentials (plugin configs, scaling webhooks): read as "(secret)", kept when written back. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { silentLogger } from '../core/log.js';
import { createApiHandler } from './api.js';
import { MemoryStore, documentValidator } from './testing.js';
import { MASK } from './secrets.js';

const ADMIN = 'admin-token-0123456789abcdef';
const READER = 'reader-token-0123456789abcdef';

test('plugin and trigger secrets: masked for every reader (read-only included) in items, lists, exports and diffs; a write that sends the mask back keeps the stored value; a mask with nothing stored is refused', async () => {
  const store = new MemoryStore();
  await store.write({ actor: 'seed', action: 'seed' }, () => ({
    services: [{
      name: 'orders', url: 'http://127.0.0.1:9001',
      scaling: { target_concurrency: 4, triggers: [{ type: 'webhook', url: 'http://hook:hookpass-0123@hooks.internal:9/hook', secret: 'webhook-secret-0123456789' }] },
      plugins: [
        // (a secret in a URL's query: ?api_key= is masked like the userinfo password; ?realm= is not;
        // ;token= too, a parameter to servers that split on ';')
        { name: 'oauth2-introspection', config: { introspection_url: 'http://127.0.0.1:9/introspect?realm=r1;token=semi-secret-321;v=2&api_key=query-secret-789', client_id: 'gw', client_secret: 'client-secret-value-xyz' } },
        // a credential header set by a transform is a secret too (any case of the name)
        { name: 'request-transform', config: { headers: { set: { Authorization: 'Bearer UPSTREAM-SECRET-abc123', 'x-api-key': 'UPSTREAM-KEY-456' } } } },
      ],
      routes: [{ name: 'r', paths: ['/o'] }],
    }],
    plugins: [{ name: 'oauth2-introspection', config: { introspection_url: 'http://127.0.0.1:9/i', client_id: 'gw2', client_secret: '${ENV_SECRET}' } }],
  }));
  const handler = createApiHandler({ store, validate: documentValidator({}, { env: { ENV_SECRET: 'from-env' } }), tokens: [{ name: 'ops', token: ADMIN, role: 'admin' }, { name: 'viewer', token: READER, role: 'read-only' }], log: silentLogger });
  const server = createServer((req, res) => void handler(req, res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const call = async (method: string, path: string, token = ADMIN, body?: unknown, headers: Record<string, string> = {}) => {
    const r = await request(`${base}${path}`, { method: method as 'GET', headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: r.statusCode, headers: r.headers, text: await r.body.text() };
  };
  try {
    for (const [path, token] of [['/api/services/orders', READER], ['/api/services', READER], ['/api/plugins', READER], ['/api/config', READER], ['/api/config?format=json', ADMIN], ['/api/revisions/1', READER]] as const) {
      const r = await call('GET', path, token);
      assert.equal(r.status, 200, `${path}: ${r.text}`);
      // (a URL's password too: the webhook's http://hook:PASSWORD@...)
      assert.doesNotMatch(r.text, /webhook-secret-0123456789|client-secret-value-xyz|UPSTREAM-SECRET|UPSTREAM-KEY|hookpass-0123|query-secret-789|semi-secret-321/, path);
      assert.match(r.text, /\(secret\)|\$\{ENV_SECRET\}/, path);
    }
    // A reference is not a secret: shown as written.
    assert.match((await call('GET', '/api/config', READER)).text, /\$\{ENV_SECRET\}/);
    // The admin can still ask for everything.
    assert.match((await call('GET', '/api/config?secrets=true', ADMIN)).text, /client-secret-value-xyz/);
    assert.match((await call('GET', '/api/plugins', READER)).text, /introspect\?realm=r1;token=\(secret\)&api_key=\(secret\)/);
    // Export (masked) -> apply back: the stored secrets stay.
    const exported = JSON.parse((await call('GET', '/api/config?format=json', ADMIN)).text);
    exported.services[0].retries = 1;
    const put = await call('PUT', '/api/config', ADMIN, exported);
    assert.equal(put.status, 200, put.text);
    const stored = (await store.current())!.document as { services: { retries: number; plugins: { config: { client_secret: string; introspection_url: string } }[]; scaling: { triggers: { secret: string; url: string }[] } }[] };
    assert.equal(stored.services[0]!.plugins[0]!.config.introspection_url, 'http://127.0.0.1:9/introspect?realm=r1;token=semi-secret-321;v=2&api_key=query-secret-789');
    assert.equal(stored.services[0]!.scaling.triggers[0]!.url, 'http://hook:hookpass-0123@hooks.internal:9/hook');
    assert.equal(stored.services[0]!.retries, 1);
    assert.equal(stored.services[0]!.plugins[0]!.config.client_secret, 'client-secret-value-xyz');
    assert.equal((stored.services[0]!.plugins[1]!.config as unknown as { headers: { set: Record<string, string> } }).headers.set['Authorization'], 'Bearer UPSTREAM-SECRET-abc123');
    assert.equal(stored.services[0]!.scaling.triggers[0]!.secret, 'webhook-secret-0123456789');
    // PATCH of a service with the masked view: kept too.
    const item = await call('GET', '/api/services/orders');
    const view = JSON.parse(item.text);
    const patched = await call('PUT', '/api/services/orders', ADMIN, { ...view, retries: 2 }, { 'if-match': String(item.headers['etag']) });
    assert.ok(patched.status === 200, patched.text);
    assert.equal(((await store.current())!.document as typeof stored).services[0]!.scaling.triggers[0]!.secret, 'webhook-secret-0123456789');
    // The mask where nothing is stored: refused, nothing written.
    const rev = (await store.current())!.revision;
    const bad = await call('POST', '/api/plugins', ADMIN, { name: 'oauth2-introspection', route: 'r', config: { introspection_url: 'http://127.0.0.1:9/x', client_id: 'new', client_secret: MASK } });
    assert.equal(bad.status, 400, bad.text);
    assert.match(bad.text, /stands for a stored secret/);
    assert.equal((await store.current())!.revision, rev);
    // a masked query secret with nothing stored behind it: refused too
    const badUrl = await call('POST', '/api/plugins', ADMIN, { name: 'oauth2-introspection', route: 'r', config: { introspection_url: `http://127.0.0.1:9/x?token=${MASK}`, client_id: 'new', client_secret: 'new-secret-value-0000' } });
    assert.equal(badUrl.status, 400, badUrl.text);
    assert.equal((await store.current())!.revision, rev);
  } finally {
    await new Promise((r) => server.close(r));
  }
});

test('a secret-named field under a `credentials` object of a plugin config (a JSON body set upstream), or holding a number, reads "(secret)" too; written back, the stored value stays', async () => {
  const store = new MemoryStore();
  const json = { set: { credentials: { username: 'svc', password: 'BODY-CRED-PW-0123' }, 'account.token': 'x', password: 987654321 } };
  await store.write({ actor: 'seed', action: 'seed' }, () => ({
    services: [{ name: 'orders', url: 'http://127.0.0.1:9001', plugins: [{ name: 'request-transform', config: { json } }], routes: [{ name: 'r', paths: ['/o'] }] }],
  }));
  const handler = createApiHandler({ store, validate: documentValidator(), tokens: [{ name: 'ops', token: ADMIN, role: 'admin' }, { name: 'viewer', token: READER, role: 'read-only' }], log: silentLogger });
  const server = createServer((req, res) => void handler(req, res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const call = async (method: string, path: string, token = ADMIN, body?: unknown) => {
    const r = await request(`${base}${path}`, { method: method as 'GET', headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: r.statusCode, text: await r.body.text() };
  };
  try {
    for (const path of ['/api/plugins', '/api/config?format=json', '/api/revisions/1']) {
      const r = await call('GET', path, READER);
      assert.equal(r.status, 200, `${path}: ${r.text}`);
      assert.doesNotMatch(r.text, /BODY-CRED-PW-0123|987654321/, path);
      assert.match(r.text, /"svc"/, path);
    }
    const exported = JSON.parse((await call('GET', '/api/config?format=json')).text);
    exported.services[0].retries = 1;
    const put = await call('PUT', '/api/config', ADMIN, exported);
    assert.equal(put.status, 200, put.text);
    const stored = (await store.current())!.document as { services: { retries: number; plugins: { config: { json: unknown } }[] }[] };
    assert.equal(stored.services[0]!.retries, 1);
    assert.deepEqual(stored.services[0]!.plugins[0]!.config.json, json);
  } finally {
    await new Promise((r) => server.close(r));
  }
});

test('header and query values set or matched under a credential-like name (X-Access-Token, Private-Token, ?access_token=...) read "(secret)" for every reader: transforms, a route\'s header match, a composition step; written back, the stored values stay', async () => {
  const store = new MemoryStore();
  const transform = { headers: { set: { 'X-Access-Token': 'HDR-TOKEN-0001', 'Private-Token': 'HDR-TOKEN-0002', 'X-Team': 'blue' }, rename: { 'X-Old': 'X-New' } }, query: { set: { access_token: 'QUERY-TOKEN-0003', page: '1' } } };
  const routeHeaders = { 'X-Internal-Token': ['MATCH-TOKEN-0004', 'MATCH-TOKEN-0005'], 'X-Env': 'prod' };
  const step = { name: 'user', service: 'orders', path: '/u', headers: { 'X-Vault-Token': 'STEP-TOKEN-0006' }, query: { api_token: 'STEP-TOKEN-0007' } };
  await store.write({ actor: 'seed', action: 'seed' }, () => ({
    services: [{ name: 'orders', url: 'http://127.0.0.1:9001', plugins: [{ name: 'request-transform', config: transform }], routes: [{ name: 'r', paths: ['/o'], headers: routeHeaders }] }],
    routes: [{ name: 'c', paths: ['/c'], compose: { steps: [step] } }],
  }));
  const handler = createApiHandler({ store, validate: documentValidator(), tokens: [{ name: 'ops', token: ADMIN, role: 'admin' }, { name: 'viewer', token: READER, role: 'read-only' }], log: silentLogger });
  const server = createServer((req, res) => void handler(req, res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const call = async (method: string, path: string, token = ADMIN, body?: unknown) => {
    const r = await request(`${base}${path}`, { method: method as 'GET', headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: r.statusCode, text: await r.body.text() };
  };
  try {
    for (const path of ['/api/plugins', '/api/routes', '/api/routes/r', '/api/routes/c', '/api/config?format=json', '/api/config', '/api/revisions/1']) {
      const r = await call('GET', path, READER);
      assert.equal(r.status, 200, `${path}: ${r.text}`);
      assert.doesNotMatch(r.text, /(HDR|QUERY|MATCH|STEP)-TOKEN-000/, path);
    }
    // (names that hold nothing secret, and a rename's target name, read as written)
    const plugins = (await call('GET', '/api/plugins', READER)).text;
    assert.match(plugins, /"X-Team":"blue"/);
    assert.match(plugins, /"X-Old":"X-New"/);
    assert.match(plugins, /"page":"1"/);
    assert.match((await call('GET', '/api/routes/r', READER)).text, /"X-Env":"prod"/);
    // Export (masked) -> apply back: every stored value stays.
    const exported = JSON.parse((await call('GET', '/api/config?format=json')).text);
    exported.services[0].retries = 1;
    const put = await call('PUT', '/api/config', ADMIN, exported);
    assert.equal(put.status, 200, put.text);
    const stored = (await store.current())!.document as { services: { retries: number; plugins: { config: unknown }[]; routes: { headers: unknown }[] }[]; routes: { compose: { steps: unknown[] } }[] };
    assert.equal(stored.services[0]!.retries, 1);
    assert.deepEqual(stored.services[0]!.plugins[0]!.config, transform);
    assert.deepEqual(stored.services[0]!.routes[0]!.headers, routeHeaders);
    assert.deepEqual(stored.routes[0]!.compose.steps[0], step);
  } finally {
    await new Promise((r) => server.close(r));
  }
});

test('written back, a masked secret keeps its own stored value: one of two unnamed scaling triggers removed does not hand its secrets to the other, and a URL moved to another host with its password masked is refused (the stored password never goes to the new host)', async () => {
  const store = new MemoryStore();
  const a = { type: 'webhook', url: 'https://ops:PASSWORD-OF-A-0001@a.hooks.example/hook', secret: 'hmac-secret-of-a-0123456' };
  const b = { type: 'webhook', url: 'https://ops:PASSWORD-OF-B-0002@b.other.example/hook?api_key=QUERY-KEY-OF-B', secret: 'hmac-secret-of-b-0123456' };
  await store.write({ actor: 'seed', action: 'seed' }, () => ({
    services: [{ name: 'orders', url: 'http://127.0.0.1:9001', routes: [{ name: 'r', paths: ['/o'] }], scaling: { target_concurrency: 4, triggers: [a, b] } }],
  }));
  const handler = createApiHandler({ store, validate: documentValidator(), tokens: [{ name: 'ops', token: ADMIN, role: 'admin' }], log: silentLogger });
  const server = createServer((req, res) => void handler(req, res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const call = async (method: string, path: string, body?: unknown) => {
    const r = await request(`${base}${path}`, { method: method as 'GET', headers: { authorization: `Bearer ${ADMIN}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: r.statusCode, text: await r.body.text() };
  };
  const triggers = async () => ((await store.current())!.document as { services: { scaling: { triggers: unknown[] } }[] }).services[0]!.scaling.triggers;
  try {
    // The first trigger removed from the (masked) item, the second sent back as read: it keeps B's secrets.
    const view = JSON.parse((await call('GET', '/api/services/orders')).text);
    assert.match(JSON.stringify(view.scaling), /ops:\(secret\)@b\.other\.example/);
    view.scaling.triggers.shift();
    const put = await call('PUT', '/api/services/orders', view);
    assert.equal(put.status, 200, put.text);
    assert.deepEqual(await triggers(), [b]);
    // Its URL moved to another host, the password left masked: refused, nothing written.
    const rev = (await store.current())!.revision;
    const moved = JSON.parse((await call('GET', '/api/services/orders')).text);
    moved.scaling.triggers[0].url = moved.scaling.triggers[0].url.replace('b.other.example', 'elsewhere.example');
    const bad = await call('PUT', '/api/services/orders', moved);
    assert.equal(bad.status, 400, bad.text);
    assert.match(bad.text, /scaling\.triggers\[0\]\.url/);
    assert.equal((await store.current())!.revision, rev);
    // The same host with another path keeps the password and the query key.
    const repathed = JSON.parse((await call('GET', '/api/services/orders')).text);
    repathed.scaling.triggers[0].url = repathed.scaling.triggers[0].url.replace('/hook', '/hook2');
    const ok = await call('PUT', '/api/services/orders', repathed);
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(await triggers(), [{ ...b, url: b.url.replace('/hook', '/hook2') }]);
  } finally {
    await new Promise((r) => server.close(r));
  }
});
