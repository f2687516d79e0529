/**
 * The admin API end to end: a node:http server on 127.0.0.1 with createApiHandler over a real
 * SqliteStore in a temporary directory, validated by the file's schema and compiler.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYamlText } from 'yaml';
import { SqliteStore } from '../config/stores/sqlite.js';
import type { ConfigStore } from '../config/stores/types.js';
import { silentLogger } from '../core/log.js';
import { createApiHandler } from './api.js';
import type { ApiToken } from './auth.js';
import { documentValidator, sampleDocument } from './testing.js';
import { hashCredential, secretValues } from './secrets.js';
import { hashPasswordAsync, parseHash, rememberHash, verifyPassword } from '../plugins/basic-auth/hash.js';
import { ControlPlane } from '../server/control-plane.js';
import { loadConfigFile } from '../config/load.js';
import type { Obj } from './document.js';
import { loopBlockMeter } from '../../test/loop-block.js';

const ADMIN = 'admin-token-0123456789';
const READER = 'reader-token-0123456789';
const TOKENS: ApiToken[] = [
  { name: 'ops', token: ADMIN, role: 'admin' },
  { name: 'dashboard', token: READER, role: 'read-only' },
];

interface Api {
  url: string;
  store: SqliteStore;
  dir: string;
  file: string;
  call(method: string, path: string, opts?: { body?: unknown; raw?: string | Buffer; type?: string | null; token?: string | null; headers?: Record<string, string> }): Promise<Res>;
  reopen(): Promise<SqliteStore>;
  close(): Promise<void>;
}

interface Res {
  status: number;
  headers: Headers;
  text: string;
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

async function serve(handler: ReturnType<typeof createApiHandler>): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    if ((req.url ?? '').startsWith('/api/')) void handler(req, res);
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/**
 * sampleDocument as the admin API stores it: its basic-auth password as a hash (made once for
 * the file). A plain password left in the store is hashed again (scrypt, ~250 ms of CPU) by
 * the validation of every later write: the tests that write many times seed this one.
 */
let hashedSampleDocument: Obj | undefined;
function hashedSample(): Obj {
  if (!hashedSampleDocument) {
    const doc = sampleDocument() as Obj;
    for (const c of doc['consumers'] as Obj[]) c['credentials'] = ((c['credentials'] ?? []) as unknown[]).map(hashCredential);
    hashedSampleDocument = doc;
  }
  return structuredClone(hashedSampleDocument);
}

async function start(opts: { tokens?: ApiToken[]; seed?: Obj; dir?: string; store?: ConfigStore; onWritten?: () => Promise<unknown>; applyWaitMs?: number } = {}): Promise<Api> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'tp-admin-api-'));
  const file = join(dir, 'config.db');
  const store = new SqliteStore({ path: file });
  await store.open();
  if (opts.seed) await store.write({ actor: 'seed', action: 'seed' }, () => opts.seed!);
  const tokens = opts.tokens ?? TOKENS;
  const handler = createApiHandler({ store: opts.store ?? store, validate: documentValidator(), tokens, log: silentLogger, onWritten: opts.onWritten, applyWaitMs: opts.applyWaitMs });
  const { server, url } = await serve(handler);
  const api: Api = {
    url, store, dir, file,
    async call(method, path, o = {}) {
      const headers: Record<string, string> = { ...o.headers };
      const token = o.token === undefined ? ADMIN : o.token;
      if (token !== null) headers['authorization'] = `Bearer ${token}`;
      let body: string | Buffer | undefined;
      if (o.raw !== undefined) body = o.raw;
      else if (o.body !== undefined) body = JSON.stringify(o.body);
      if (body !== undefined && o.type !== null) headers['content-type'] = o.type ?? (method === 'PATCH' ? 'application/merge-patch+json' : 'application/json');
      const r = await fetch(`${url}${path}`, { method, headers, body });
      const text = await r.text();
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
      return { status: r.status, headers: r.headers, text, json };
    },
    async reopen() {
      const again = new SqliteStore({ path: file });
      await again.open();
      return again;
    },
    async close() {
      await new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      });
      await store.close();
      if (!opts.dir) rmSync(dir, { recursive: true, force: true });
    },
  };
  return api;
}

const isProblem = (r: Res, status: number, type: string) => {
  assert.equal(r.status, status, r.text);
  assert.equal(r.headers.get('content-type'), 'application/problem+json', r.text);
  assert.equal(r.json.type, `urn:turnpike:problem:${type}`, r.text);
  assert.equal(r.json.status, status);
  assert.ok(r.json.detail);
};

test('services, routes, upstreams and targets: CRUD over HTTP with ETags, Location, 404 / 409 and cascade', async () => {
  const api = await start();
  try {
    assert.deepEqual((await api.call('GET', '/api/services')).json, { data: [], total: 0, offset: 0, limit: 100, next: null });
    const created = await api.call('POST', '/api/services', { body: { name: 'orders', url: 'http://127.0.0.1:9001', tags: ['a'] } });
    assert.equal(created.status, 201, created.text);
    assert.equal(created.headers.get('location'), `/api/services/${created.json.id}`);
    assert.equal(created.headers.get('x-config-revision'), '1');
    assert.deepEqual(created.json, { id: created.json.id, name: 'orders', url: 'http://127.0.0.1:9001', tags: ['a'] });
    const etag = created.headers.get('etag')!;
    isProblem(await api.call('POST', '/api/services', { body: { name: 'orders', url: 'http://127.0.0.1:9001' } }), 409, 'conflict');

    // by name and by id, same ETag; If-None-Match -> 304
    const byName = await api.call('GET', '/api/services/orders');
    const byId = await api.call('GET', `/api/services/${created.json.id}`);
    assert.equal(byName.headers.get('etag'), etag);
    assert.deepEqual(byId.json, byName.json);
    assert.equal((await api.call('GET', '/api/services/orders', { headers: { 'if-none-match': etag } })).status, 304);
    isProblem(await api.call('GET', '/api/services/nope'), 404, 'not-found');

    // routes: created with service: NAME, listed flat, filtered
    const route = await api.call('POST', '/api/routes', { body: { name: 'orders-api', service: 'orders', paths: ['/orders'] } });
    assert.equal(route.status, 201, route.text);
    assert.deepEqual(route.json, { id: route.json.id, name: 'orders-api', service: 'orders', paths: ['/orders'] });
    await api.call('POST', '/api/services', { body: { name: 'users', url: 'http://127.0.0.1:9002' } });
    assert.equal((await api.call('POST', '/api/routes', { body: { name: 'users-api', service: 'users', paths: ['/users'] } })).status, 201);
    assert.deepEqual((await api.call('GET', '/api/routes?service=users')).json.data.map((r: Obj) => r['name']), ['users-api']);
    // PUT moves the route to another service
    const moved = await api.call('PUT', '/api/routes/orders-api', { body: { name: 'orders-api', service: 'users', paths: ['/orders'], methods: ['GET'] } });
    assert.equal(moved.status, 200, moved.text);
    assert.equal(moved.json.service, 'users');
    const doc = (await api.call('GET', '/api/config', { headers: { accept: 'application/json' } })).json;
    assert.equal(doc.services[0].routes.length, 0);
    assert.deepEqual(doc.services[1].routes.map((r: Obj) => r['name']), ['users-api', 'orders-api']);

    // PATCH (merge patch) with If-Match; a stale ETag is 412 and changes nothing
    const patched = await api.call('PATCH', '/api/services/orders', { body: { retries: 2, tags: null }, headers: { 'if-match': etag } });
    assert.equal(patched.status, 200, patched.text);
    assert.deepEqual(patched.json, { id: created.json.id, name: 'orders', url: 'http://127.0.0.1:9001', retries: 2 });
    isProblem(await api.call('PATCH', '/api/services/orders', { body: { retries: 3 }, headers: { 'if-match': etag } }), 412, 'precondition-failed');
    // A weakened tag (a compressing proxy on the way) never matches: 412, not a blind write.
    isProblem(await api.call('PATCH', '/api/services/orders', { body: { retries: 3 }, headers: { 'if-match': `W/${patched.headers.get('etag')}` } }), 412, 'precondition-failed');
    isProblem(await api.call('PUT', '/api/services/nope', { body: { name: 'nope', url: 'http://x' }, headers: { 'if-match': '*' } }), 412, 'precondition-failed');
    assert.equal((await api.call('GET', '/api/services/orders')).json.retries, 2);

    // upstreams: addressed by the service; writing several targets turns url into upstream
    const up = await api.call('GET', '/api/upstreams/orders');
    assert.deepEqual(up.json, { id: up.json.id, name: 'orders', service: 'orders', targets: [{ url: 'http://127.0.0.1:9001' }] });
    const put = await api.call('PUT', '/api/upstreams/orders', { body: { targets: [{ url: 'http://127.0.0.1:9001', weight: 3 }, { url: 'http://127.0.0.1:9011' }], balancer: 'least-connections' }, headers: { 'if-match': up.headers.get('etag')! } });
    assert.equal(put.status, 200, put.text);
    assert.equal((await api.call('GET', '/api/services/orders')).json.upstream.balancer, 'least-connections');
    isProblem(await api.call('POST', '/api/upstreams', { body: { name: 'x' } }), 405, 'method-not-allowed');
    isProblem(await api.call('DELETE', '/api/upstreams/orders'), 405, 'method-not-allowed');
    const t = await api.call('POST', '/api/upstreams/orders/targets', { body: { url: 'http://127.0.0.1:9012', weight: 0 } });
    assert.equal(t.status, 201, t.text);
    assert.equal(t.headers.get('location'), `/api/upstreams/orders/targets/${t.json.id}`);
    assert.equal((await api.call('PATCH', `/api/upstreams/orders/targets/${t.json.id}`, { body: { weight: 4 } })).json.weight, 4);
    assert.equal((await api.call('DELETE', `/api/upstreams/orders/targets/${encodeURIComponent('http://127.0.0.1:9012')}`)).status, 204);
    assert.deepEqual((await api.call('GET', '/api/upstreams/orders/targets')).json.data.map((x: Obj) => x['url']), ['http://127.0.0.1:9001', 'http://127.0.0.1:9011']);
    // a target URL the compiler refuses names the field
    const bad = await api.call('POST', '/api/upstreams/orders/targets', { body: { url: 'http://u:p@127.0.0.1:1' } });
    isProblem(bad, 400, 'validation-failed');
    assert.deepEqual(bad.json.errors, [{ path: 'url', message: 'credentials in upstream URLs are not supported', pointer: '#/url' }]);

    // deleting a service with routes: 409 unless cascade
    const del = await api.call('DELETE', '/api/services/users');
    isProblem(del, 409, 'conflict');
    assert.deepEqual(del.json.routes, ['users-api', 'orders-api']);
    assert.equal((await api.call('DELETE', '/api/services/users?cascade=true')).status, 204);
    assert.deepEqual((await api.call('GET', '/api/routes')).json.total, 0);
    isProblem(await api.call('DELETE', '/api/services/users'), 404, 'not-found');
  } finally {
    await api.close();
  }
});

test('consumers, credentials (write-only), plugins and plans: CRUD; no secret ever comes back', async () => {
  const api = await start({ seed: sampleDocument() as Obj });
  const secrets = secretValues(sampleDocument() as Obj);
  const responses: string[] = [];
  const call: Api['call'] = async (m, p, o) => {
    const r = await api.call(m, p, o);
    responses.push(r.text);
    return r;
  };
  try {
    const acme = await call('GET', '/api/consumers/acme');
    assert.deepEqual(Object.keys(acme.json), ['id', 'name', 'plan', 'groups', 'tags']);
    const creds = await call('GET', '/api/consumers/acme/credentials');
    assert.deepEqual(creds.json.data, [{ id: 'acme/key-auth/1', type: 'key-auth' }, { id: 'acme/basic-auth/acme', type: 'basic-auth', username: 'acme' }]);
    assert.deepEqual((await call('GET', '/api/consumers/acme/credentials/acme%2Fkey-auth%2F1')).json, { id: 'acme/key-auth/1', type: 'key-auth' });

    // a new key: returned without its key, with an id that stays
    const key = 'brand-new-secret-key-42';
    secrets.push(key);
    const made = await call('POST', `/api/consumers/${acme.json.id}/credentials`, { body: { type: 'key-auth', key } });
    assert.equal(made.status, 201, made.text);
    assert.deepEqual(Object.keys(made.json), ['id', 'type']);
    assert.match(made.json.id, /^[0-9a-f-]{36}$/);
    isProblem(await call('POST', '/api/consumers/acme/credentials', { body: { type: 'key-auth', key, id: made.json.id } }), 409, 'conflict');
    // a duplicate key (another consumer's) is refused by the plugin, naming the field
    const dup = await call('POST', '/api/consumers/globex/credentials', { body: { type: 'key-auth', key } });
    isProblem(dup, 400, 'validation-failed');
    // basic-auth: the password is stored hashed; PATCH keeps what it does not name
    secrets.push('another-password');
    const b = await call('PATCH', '/api/consumers/acme/credentials/acme%2Fbasic-auth%2Facme', { body: { password: 'another-password' } });
    assert.equal(b.status, 200, b.text);
    const stored = (await api.store.current())!.document as Obj;
    const acmeCreds = ((stored['consumers'] as Obj[])[0]!['credentials'] as Obj[]);
    assert.match(String(acmeCreds[1]!['password_hash']), /^scrypt\$/);
    assert.equal(acmeCreds[1]!['password'], undefined);
    assert.equal(acmeCreds[2]!['key'], key);
    isProblem(await call('POST', '/api/consumers/acme/credentials', { body: { type: 'nope' } }), 400, 'validation-failed');
    isProblem(await call('GET', '/api/consumers/nobody/credentials'), 404, 'not-found');
    assert.equal((await call('DELETE', `/api/consumers/acme/credentials/${made.json.id}`)).status, 204);

    // consumers: PUT keeps credentials; delete with bindings naming it -> 409, cascade removes them
    // a group name with a comma would reach upstreams as two groups (X-Consumer-Groups): refused as in a file
    isProblem(await call('PUT', '/api/consumers/acme', { body: { ...acme.json, groups: ['ops, admin'] } }), 400, 'validation-failed');
    const put = await call('PUT', '/api/consumers/acme', { body: { ...acme.json, groups: ['gold-partners'] } });
    assert.equal(put.status, 200, put.text);
    assert.equal((await call('GET', '/api/consumers/acme/credentials')).json.total, 2);
    assert.equal((await call('POST', '/api/consumers', { body: { name: 'initech', credentials: [{ type: 'key-auth', key: 'initech-secret-key-1' }] } })).status, 201);
    secrets.push('initech-secret-key-1');
    assert.equal((await call('GET', '/api/consumers/initech/credentials')).json.data[0].type, 'key-auth');

    // plugins: every scope; create, move, delete
    const all = await call('GET', '/api/plugins');
    assert.deepEqual(all.json.data.map((p: Obj) => p['id']), ['global:request-size-limit', 'service:orders:key-auth', 'service:orders:rate-limit@acme', 'route:orders-api:cors', 'consumer:acme:rate-limit']);
    assert.deepEqual((await call('GET', '/api/plugins?scope=consumer')).json.data.map((p: Obj) => p['id']), ['consumer:acme:rate-limit']);
    const p = await call('POST', '/api/plugins', { body: { name: 'rate-limit', route: 'users-api', config: { limit: 5, window: '1s' } } });
    assert.equal(p.status, 201, p.text);
    assert.equal(p.json.id, 'route:users-api:rate-limit');
    assert.equal(p.headers.get('location'), '/api/plugins/route%3Ausers-api%3Arate-limit');
    const badConfig = await call('PATCH', '/api/plugins/route:users-api:rate-limit', { body: { config: { limit: 0 } } });
    isProblem(badConfig, 400, 'validation-failed');
    assert.equal(badConfig.json.errors[0].path, 'config.limit');
    const moved = await call('PATCH', '/api/plugins/route:users-api:rate-limit', { body: { route: null, service: 'users' } });
    assert.equal(moved.status, 200, moved.text);
    assert.equal(moved.json.id, 'service:users:rate-limit');
    assert.equal(moved.headers.get('content-location'), '/api/plugins/service%3Ausers%3Arate-limit');
    isProblem(await call('POST', '/api/plugins', { body: { name: 'rate-limit', service: 'users', config: { limit: 1, window: '1s' } } }), 409, 'conflict');
    isProblem(await call('POST', '/api/plugins', { body: { name: 'no-such-plugin' } }), 400, 'validation-failed');
    assert.equal((await call('DELETE', '/api/plugins/service:users:rate-limit')).status, 204);
    const delAcme = await call('DELETE', '/api/consumers/acme');
    isProblem(delAcme, 409, 'conflict');

    // plans
    const plan = await call('POST', '/api/plans', { body: { name: 'silver', services: ['users'], description: 'Silver' } });
    assert.equal(plan.status, 201, plan.text);
    isProblem(await call('POST', '/api/plans', { body: { name: 'bronze', services: ['nope'] } }), 400, 'validation-failed');
    assert.equal((await call('PATCH', '/api/consumers/globex', { body: { plan: 'silver' } })).json.plan, 'silver');
    isProblem(await call('DELETE', '/api/plans/silver'), 409, 'conflict');
    assert.equal((await call('DELETE', '/api/plans/silver?cascade=true')).status, 204);
    assert.equal((await call('GET', '/api/consumers/globex')).json.plan, undefined);
    assert.equal((await call('DELETE', '/api/consumers/acme?cascade=true')).status, 204);
    assert.deepEqual((await call('GET', '/api/plugins')).json.data.map((x: Obj) => x['id']), ['global:request-size-limit', 'service:orders:key-auth', 'route:orders-api:cors']);

    // exports and revisions leave secrets out too (unless an admin asks)
    await call('GET', '/api/config');
    await call('GET', '/api/config', { headers: { accept: 'application/json' } });
    await call('GET', '/api/revisions/1');
    await call('GET', '/api/revisions/1', { headers: { accept: 'application/yaml' } });
    await call('PUT', '/api/config?dry_run=true', { raw: (await api.call('GET', '/api/config?secrets=true')).text, type: 'application/yaml' });
    for (const text of responses) for (const s of secrets) assert.ok(!text.includes(s), `a secret came back: ${text.slice(0, 300)}`);
    const full = await api.call('GET', '/api/revisions/1?secrets=true&format=json');
    assert.ok(full.text.includes('acme-secret-key-0001'));
  } finally {
    await api.close();
  }
});

test('bad input: 400 / 404 / 405 / 413 / 415 problems naming the problem; nothing is partially applied', async () => {
  const api = await start({ seed: sampleDocument() as Obj });
  try {
    const before = (await api.store.current())!.revision;
    isProblem(await api.call('POST', '/api/services', { raw: '{"name": "x",', type: 'application/json' }), 400, 'bad-request');
    isProblem(await api.call('POST', '/api/services', { raw: '[1,2]', type: 'application/json' }), 400, 'bad-request');
    isProblem(await api.call('POST', '/api/services', { body: { name: 'x', url: 'http://x' }, type: 'text/plain' }), 415, 'unsupported-media-type');
    isProblem(await api.call('POST', '/api/services', { body: { name: 'x', url: 'http://x' }, type: null }), 415, 'unsupported-media-type');
    isProblem(await api.call('PUT', '/api/config', { raw: 'services: []', type: 'text/plain' }), 415, 'unsupported-media-type');
    const unknown = await api.call('POST', '/api/services', { body: { name: 'x', url: 'http://127.0.0.1:1', colour: 'red' } });
    isProblem(unknown, 400, 'validation-failed');
    assert.deepEqual(unknown.json.errors, [{ path: 'colour', message: 'unknown key "colour"', pointer: '#/colour' }]);
    const types = await api.call('POST', '/api/services', { body: { name: 'x', url: 'http://127.0.0.1:1', retries: 'two' } });
    isProblem(types, 400, 'validation-failed');
    assert.equal(types.json.errors[0].path, 'retries');
    const routePath = await api.call('POST', '/api/routes', { body: { name: 'r', service: 'orders', paths: ['no-slash'] } });
    isProblem(routePath, 400, 'validation-failed');
    assert.equal(routePath.json.errors[0].path, 'paths[0]');
    isProblem(await api.call('POST', '/api/routes', { body: { name: 'r', paths: ['/r'] } }), 400, 'validation-failed');
    isProblem(await api.call('GET', '/api/services?limit=0'), 400, 'bad-request');
    isProblem(await api.call('GET', '/api/services?colour=red'), 400, 'bad-request');
    isProblem(await api.call('DELETE', '/api/services/orders?cascade=maybe'), 400, 'bad-request');
    isProblem(await api.call('PATCH', '/api/services/orders', { body: { retries: 1 }, headers: { 'if-match': 'not-a-tag' } }), 400, 'bad-request');
    isProblem(await api.call('GET', '/api/nothing'), 404, 'not-found');
    isProblem(await api.call('GET', '/api/revisions/999'), 404, 'not-found');
    const m = await api.call('DELETE', '/api/config');
    isProblem(m, 405, 'method-not-allowed');
    assert.equal(m.headers.get('allow'), 'GET, HEAD, PUT');
    isProblem(await api.call('PUT', '/api/config', { raw: 'services: [', type: 'application/yaml' }), 400, 'bad-request');
    isProblem(await api.call('PUT', '/api/config', { raw: '- a\n- b\n', type: 'application/yaml' }), 400, 'bad-request');
    const local = await api.call('PUT', '/api/config', { raw: 'services: []\nlisten: 0.0.0.0:80\n', type: 'application/yaml' });
    isProblem(local, 400, 'validation-failed');
    assert.equal(local.json.errors[0].path, 'listen');
    assert.equal(local.json.errors[0].line, 2, 'a YAML body\'s error names its line, as the file\'s do');
    const badYaml = await api.call('PUT', '/api/config?dry_run=true', { raw: '# mine\nservices:\n  - name: a\n    url: http://127.0.0.1:9\n    routes:\n      - {name: r, paths: [r]}\n', type: 'application/yaml' });
    isProblem(badYaml, 400, 'validation-failed');
    assert.deepEqual(badYaml.json.errors.map((e: { path: string; pointer?: string; line?: number }) => [e.path, e.pointer, e.line]), [['services[0].routes[0].paths[0]', '#/services/0/routes/0/paths/0', 6]]);
    const deep = await api.call('PUT', '/api/config', { raw: `services: ${'['.repeat(200)}${']'.repeat(200)}`, type: 'application/yaml' });
    assert.equal(deep.status, 400, deep.text);
    const invalidDoc = await api.call('PUT', '/api/config', { body: { services: [{ name: 'a', url: 'ftp://x' }] } });
    isProblem(invalidDoc, 400, 'validation-failed');
    assert.equal(invalidDoc.json.errors[0].path, 'services[0].url');
    assert.equal(invalidDoc.json.errors[0].line, undefined, 'a JSON body has no lines to name');
    // 413: declared over the cap (answered before the body is read), and streamed over it
    const declared = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = httpRequest(`${api.url}/api/config`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/yaml', 'content-length': String(9 * 1024 * 1024) } }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      });
      req.on('error', reject);
      req.write('services: []\n');
    });
    assert.equal(declared.status, 413);
    assert.equal(JSON.parse(declared.body).type, 'urn:turnpike:problem:payload-too-large');
    const streamed = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(`${api.url}/api/services`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json', 'transfer-encoding': 'chunked' } }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on('error', (err) => (/EPIPE|ECONNRESET/.test(String(err)) ? undefined : reject(err)));
      const chunk = Buffer.alloc(1024 * 1024, 0x20);
      let sent = 0;
      const pump = () => {
        while (sent < 10) {
          sent++;
          if (!req.write(chunk)) return void req.once('drain', pump);
        }
        req.end();
      };
      pump();
    });
    assert.equal(streamed, 413);
    assert.equal((await api.store.current())!.revision, before, 'nothing was written');
  } finally {
    await api.close();
  }
});

test('tokens and roles: 401 with WWW-Authenticate, read-only may only read, secrets need admin; the audit log names the token', async () => {
  const api = await start({ seed: sampleDocument() as Obj });
  try {
    for (const token of [null, 'wrong-token-0123456789']) {
      const r = await api.call('GET', '/api/services', { token });
      isProblem(r, 401, 'unauthorized');
      assert.match(r.headers.get('www-authenticate')!, /^Bearer realm="turnpike-admin"/);
    }
    isProblem(await api.call('GET', '/api/services', { token: null, headers: { authorization: `Basic ${Buffer.from(`x:${ADMIN}`).toString('base64')}` } }), 401, 'unauthorized');
    assert.equal((await api.call('GET', '/api/services', { token: READER })).status, 200);
    assert.equal((await api.call('GET', '/api/config', { token: READER })).status, 200);
    assert.equal((await api.call('GET', '/api/openapi.json', { token: READER })).json.openapi, '3.1.0');
    isProblem(await api.call('POST', '/api/services', { token: READER, body: { name: 'x', url: 'http://127.0.0.1:1' } }), 403, 'forbidden');
    isProblem(await api.call('DELETE', '/api/services/orders?cascade=true', { token: READER }), 403, 'forbidden');
    isProblem(await api.call('PUT', '/api/config?dry_run=true', { token: READER, raw: '{}', type: 'application/yaml' }), 403, 'forbidden');
    isProblem(await api.call('GET', '/api/config?secrets=true', { token: READER }), 403, 'forbidden');
    assert.equal((await api.call('POST', '/api/services', { body: { name: 'x', url: 'http://127.0.0.1:1' } })).status, 201);
    const log = await api.call('GET', '/api/revisions', { token: READER });
    assert.deepEqual(log.json.data.map((r: Obj) => [r['revision'], r['actor'], r['action']]), [[2, 'ops', 'POST /api/services'], [1, 'seed', 'seed']]);
    const page = await api.call('GET', '/api/revisions?limit=1');
    assert.equal(page.json.next, '/api/revisions?limit=1&before=2');
    assert.deepEqual((await api.call('GET', page.json.next)).json.data.map((r: Obj) => r['revision']), [1]);
  } finally {
    await api.close();
  }
  // without tokens (loopback only) every caller is the anonymous admin
  const open = await start({ tokens: [] });
  try {
    assert.equal((await open.call('POST', '/api/services', { token: null, body: { name: 'x', url: 'http://127.0.0.1:1' } })).status, 201);
    assert.equal((await open.store.history(1))[0]!.actor, 'anonymous');
  } finally {
    await open.close();
  }
});

test('200 concurrent writes with stale ETags: 412s, and every acknowledged write is in the store after it is reopened', async () => {
  const api = await start({ seed: hashedSample() });
  try {
    const rev0 = (await api.store.current())!.revision;
    const svc = await api.call('GET', '/api/services/orders');
    const tag = svc.headers.get('etag')!;
    const N = 200;
    // half patch the same service with the same (soon stale) ETag; half create consumers, with
    // and without a revision precondition
    const results = await Promise.all(Array.from({ length: N }, (_, i) => {
      if (i % 2 === 0) return api.call('PATCH', '/api/services/orders', { body: { retries: (i / 2) % 10, tags: [`w${i}`] }, headers: { 'if-match': tag } }).then((r) => ({ i, kind: 'patch', r }));
      const headers: Record<string, string> = i % 4 === 1 ? { 'if-match': `"r${rev0}"` } : {};
      return api.call('POST', '/api/consumers', { body: { name: `c${i}`, tags: [`w${i}`] }, headers }).then((r) => ({ i, kind: 'post', r }));
    }));
    const statuses = results.map((x) => x.r.status);
    assert.ok(statuses.every((s) => s === 200 || s === 201 || s === 412), JSON.stringify(statuses));
    const patches = results.filter((x) => x.kind === 'patch');
    const okPatches = patches.filter((x) => x.r.status === 200);
    assert.equal(okPatches.length, 1, 'exactly one writer held the current ETag');
    assert.ok(patches.filter((x) => x.r.status === 412).every((x) => x.r.json.type === 'urn:turnpike:problem:precondition-failed'));
    const guarded = results.filter((x) => x.kind === 'post' && x.i % 4 === 1);
    assert.ok(guarded.filter((x) => x.r.status === 201).length <= 1, 'at most one write could still be at the revision it named');
    const free = results.filter((x) => x.kind === 'post' && x.i % 4 === 3);
    assert.ok(free.every((x) => x.r.status === 201), 'writes without If-Match all land');
    const acknowledged = results.filter((x) => x.r.status === 200 || x.r.status === 201);
    const revisions = acknowledged.map((x) => Number(x.r.headers.get('x-config-revision')));
    assert.equal(new Set(revisions).size, acknowledged.length, 'each acknowledged write has its own revision');

    const again = await api.reopen();
    try {
      const head = (await again.current())!;
      assert.equal(head.revision, rev0 + acknowledged.length);
      const doc = head.document as Obj;
      const consumers = new Set((doc['consumers'] as Obj[]).map((c) => c['name']));
      for (const x of results.filter((y) => y.kind === 'post')) assert.equal(consumers.has(`c${x.i}`), x.r.status === 201, `c${x.i}`);
      const orders = (doc['services'] as Obj[]).find((s) => s['name'] === 'orders')!;
      assert.deepEqual(orders['tags'], [`w${okPatches[0]!.i}`]);
      // every acknowledged revision is in the audit log with its action
      const log = await again.history(1000);
      for (const rev of revisions) assert.ok(log.some((r) => r.revision === rev && r.actor === 'ops'));
    } finally {
      await again.close();
    }
  } finally {
    await api.close();
  }
});

test('export -> apply on an empty store -> export gives the same document; dry_run answers the diff without writing', async () => {
  const a = await start({ seed: hashedSample() });
  const b = await start();
  try {
    // with secrets (an admin's backup): identical, byte for byte
    const full = await a.call('GET', '/api/config?secrets=true');
    assert.equal(full.headers.get('content-type'), 'application/yaml');
    assert.equal(full.headers.get('etag'), '"r1"');
    assert.deepEqual(parseYamlText(full.text), hashedSample());
    const applied = await b.call('PUT', '/api/config', { raw: full.text, type: 'application/yaml', headers: { 'if-match': '"r0"' } });
    assert.equal(applied.status, 200, applied.text);
    assert.equal(applied.json.changed, true);
    assert.deepEqual(applied.json.changes.services.added, ['orders', 'users']);
    assert.equal((await b.call('GET', '/api/config?secrets=true')).text, full.text);
    assert.deepEqual((await b.store.current())!.document, (await a.store.current())!.document);
    // the same again: no new revision
    const same = await b.call('PUT', '/api/config', { raw: full.text, type: 'application/yaml' });
    assert.deepEqual(same.json, { revision: 1, changed: false });
    // without secrets (the default, e.g. for git): applied back, the stored keys stay
    const plain = await b.call('GET', '/api/config');
    assert.ok(!plain.text.includes('acme-secret-key-0001'));
    assert.deepEqual((await b.call('PUT', '/api/config', { raw: plain.text, type: 'application/yaml' })).json, { revision: 1, changed: false });
    // JSON export is the same document
    const json = await b.call('GET', '/api/config?secrets=true', { headers: { accept: 'application/json' } });
    assert.deepEqual(json.json, parseYamlText(full.text));
    isProblem(await b.call('GET', '/api/config', { headers: { accept: 'text/html' } }), 406, 'not-acceptable');

    // dry run: structured and text diff, nothing written
    const edited = (parseYamlText(plain.text) as Obj);
    (edited['services'] as Obj[])[0]!['retries'] = 3;
    (edited['services'] as Obj[]).push({ name: 'billing', url: 'http://127.0.0.1:9100' });
    delete edited['plans'];
    (edited['consumers'] as Obj[])[0]!['plan'] = undefined;
    delete (edited['consumers'] as Obj[])[0]!['plan'];
    const dry = await b.call('PUT', '/api/config?dry_run=true', { body: edited });
    assert.equal(dry.status, 200, dry.text);
    assert.equal(dry.json.dry_run, true);
    assert.deepEqual(dry.json.changes.services, { added: ['billing'], removed: [], changed: ['orders'] });
    assert.deepEqual(dry.json.changes.plans, { added: [], removed: ['gold'], changed: [] });
    assert.deepEqual(dry.json.changes.consumers, { added: [], removed: [], changed: ['acme'] });
    assert.match(dry.json.diff, /^--- revision 1\n\+\+\+ proposed\n@@ /);
    assert.match(dry.json.diff, /\n-    retries: 1\n\+    retries: 3\n/);
    assert.match(dry.json.diff, /\n\+  - name: billing\n/);
    assert.ok(!dry.json.diff.includes('secret-key'));
    assert.equal((await b.store.current())!.revision, 1);
    // a dry run of an invalid document is a 400 naming the field
    const badDry = await b.call('PUT', '/api/config?dry_run=true', { body: { services: [{ name: 'a' }] } });
    isProblem(badDry, 400, 'validation-failed');
    assert.equal(badDry.json.errors[0].path, 'services[0]');
    // a stale revision precondition
    isProblem(await b.call('PUT', '/api/config', { body: edited, headers: { 'if-match': '"r0"' } }), 412, 'precondition-failed');
    const write = await b.call('PUT', '/api/config', { body: edited, headers: { 'if-match': '"r1"' } });
    assert.equal(write.json.revision, 2, write.text);
  } finally {
    await a.close();
    await b.close();
  }
});

test('If-Match with a list of tags holds when any of them matches (RFC 9110 §13.1.1): revision tags, an item\'s ETag, both; evaluated in the write\'s transaction; * and weak tags as before', async () => {
  const api = await start({ seed: hashedSample() });
  try {
    const rev = async () => (await api.store.current())!.revision;
    const tagOf = async () => (await api.call('GET', '/api/services/orders')).headers.get('etag')!;
    const patch = (ifMatch: string, retries: number) => api.call('PATCH', '/api/services/orders', { body: { retries }, headers: { 'if-match': ifMatch } });
    // Revision tags only: an older one and the current one.
    let r = await rev();
    const ok1 = await patch(`"r${r - 1}", "r${r}"`, 2);
    assert.equal(ok1.status, 200, ok1.text);
    r = await rev();
    assert.equal((await patch(`"r${r}", "r${r + 5}"`, 3)).status, 200, 'the current one listed first');
    // None of them current: 412, nothing written, the current revision told.
    r = await rev();
    const stale = await patch(`"r${r - 2}", "r${r - 1}"`, 4);
    isProblem(stale, 412, 'precondition-failed');
    assert.equal(stale.json.current_revision, r);
    assert.equal(await rev(), r, 'nothing written');
    // An item's ETag beside a stale tag, or a stale revision beside the item's ETag.
    assert.equal((await patch(`"stale-tag", ${await tagOf()}`, 5)).status, 200);
    r = await rev();
    assert.equal((await patch(`"r${r - 1}", ${await tagOf()}`, 6)).status, 200, 'the item is unchanged: its tag matches');
    r = await rev();
    assert.equal((await patch(`"r${r}", "stale-tag"`, 7)).status, 200, 'the config is at the revision listed');
    // Neither matches: 412 (a stale revision no longer lets a stale item tag through, nor the reverse).
    const oldTag = await tagOf();
    assert.equal((await patch(oldTag, 8)).status, 200);
    r = await rev();
    const neither = await patch(`"r${r - 1}", ${oldTag}`, 9);
    isProblem(neither, 412, 'precondition-failed');
    assert.match(neither.json.detail, /has changed.*and the config changed: it is at revision/);
    assert.equal((await api.call('GET', '/api/services/orders')).json.retries, 8);
    // Weak tags never match, whatever else is listed: only the strong ones count.
    isProblem(await patch(`W/${await tagOf()}, "r${r - 1}"`, 10), 412, 'precondition-failed');
    assert.equal((await patch(`W/"x", "r${r}"`, 10)).status, 200);
    // POST: a revision in the list can match; an item tag cannot (a new item has none).
    r = await rev();
    assert.equal((await api.call('POST', '/api/consumers', { body: { name: 'listed' }, headers: { 'if-match': `"some-tag", "r${r}"` } })).status, 201);
    isProblem(await api.call('POST', '/api/consumers', { body: { name: 'unlisted' }, headers: { 'if-match': `"some-tag", "r${r}"` } }), 412, 'precondition-failed');
    // The whole config and rollback: any listed revision; an opaque tag beside a stale revision is no pass.
    const doc = (await api.call('GET', '/api/config?format=json&secrets=true')).json;
    doc.consumers.push({ name: 'via-put' });
    r = await rev();
    isProblem(await api.call('PUT', '/api/config', { body: doc, headers: { 'if-match': `"stale-tag", "r${r - 1}"` } }), 412, 'precondition-failed');
    assert.equal(await rev(), r, 'nothing written');
    const put = await api.call('PUT', '/api/config', { body: doc, headers: { 'if-match': `"r${r - 1}", "r${r}"` } });
    assert.equal(put.status, 200, put.text);
    assert.equal(put.json.revision, r + 1);
    r = await rev();
    isProblem(await api.call('POST', '/api/revisions/1/rollback', { headers: { 'if-match': `"x", "r${r - 1}"` } }), 412, 'precondition-failed');
    assert.equal((await api.call('POST', '/api/revisions/1/rollback', { headers: { 'if-match': `"r${r - 1}", "r${r}"` } })).status, 201);
    // *: the item must exist, nothing else.
    assert.equal((await patch('*', 2)).status, 200);
    isProblem(await api.call('PATCH', '/api/services/nope', { body: { retries: 1 }, headers: { 'if-match': '*' } }), 412, 'precondition-failed');

    // Concurrent writes listing the same two revisions: whoever comes first at the current one
    // wins; after it the config is at a revision none of the others listed.
    r = await rev();
    const racing = await Promise.all(Array.from({ length: 10 }, (_, i) => api.call('POST', '/api/consumers', { body: { name: `race-${i}` }, headers: { 'if-match': `"r${r - 1}", "r${r}"` } })));
    assert.deepEqual(racing.map((x) => x.status).sort(), [201, ...Array(9).fill(412)]);
    assert.equal(await rev(), r + 1);
  } finally {
    await api.close();
  }
});

test('rollback writes a new revision with an old document; revisions show who did what', async () => {
  const api = await start({ seed: hashedSample() });
  try {
    assert.equal((await api.call('DELETE', '/api/routes/orders-api')).status, 204);
    assert.equal((await api.call('POST', '/api/services', { body: { name: 'billing', url: 'http://127.0.0.1:9100' } })).status, 201);
    const dry = await api.call('POST', '/api/revisions/1/rollback?dry_run=true');
    assert.equal(dry.status, 200, dry.text);
    assert.deepEqual(dry.json.changes.services.removed, ['billing']);
    // (the unnamed route of orders goes by its index: orders.1 became orders.0 when orders-api went)
    assert.deepEqual(dry.json.changes.routes, { added: ['orders-api', 'orders.1'], removed: ['orders.0'], changed: [] });
    assert.equal((await api.store.current())!.revision, 3);
    // a dry run judges If-Match as the real one does
    isProblem(await api.call('POST', '/api/revisions/1/rollback?dry_run=true', { headers: { 'if-match': '"r2"' } }), 412, 'precondition-failed');
    assert.equal((await api.call('POST', '/api/revisions/1/rollback?dry_run=true', { headers: { 'if-match': '"r3"' } })).status, 200);
    isProblem(await api.call('POST', '/api/revisions/1/rollback', { headers: { 'if-match': '"r2"' } }), 412, 'precondition-failed');
    const rb = await api.call('POST', '/api/revisions/1/rollback', { headers: { 'if-match': '"r3"' } });
    assert.equal(rb.status, 201, rb.text);
    assert.deepEqual({ revision: rb.json.revision, to: rb.json.rolled_back_to }, { revision: 4, to: 1 });
    assert.equal(rb.headers.get('location'), '/api/revisions/4');
    assert.deepEqual((await api.store.current())!.document, hashedSample());
    const log = (await api.call('GET', '/api/revisions')).json.data;
    assert.deepEqual(log.map((r: Obj) => r['action']), ['rollback to 1', 'POST /api/services', 'DELETE /api/routes/orders-api', 'seed']);
    const r2 = await api.call('GET', '/api/revisions/2');
    assert.equal(r2.json.revision, 2);
    assert.equal(r2.json.actor, 'ops');
    assert.deepEqual(r2.json.document.services[0].routes.map((r: Obj) => r['name'] ?? '-'), ['-']);
    isProblem(await api.call('POST', '/api/revisions/99/rollback'), 404, 'not-found');
  } finally {
    await api.close();
  }
});

test('lists: pagination with next links, tag filters (all / any), HEAD and OPTIONS', async () => {
  const api = await start({ seed: hashedSample() });
  try {
    for (let i = 0; i < 5; i++) await api.call('POST', '/api/services', { body: { name: `s${i}`, url: `http://127.0.0.1:${9200 + i}`, tags: i % 2 ? ['odd', 'x'] : ['even', 'x'] } });
    const first = await api.call('GET', '/api/services?limit=3');
    assert.deepEqual(first.json.data.map((s: Obj) => s['name']), ['orders', 'users', 's0']);
    assert.equal(first.json.total, 7);
    assert.equal(first.json.next, '/api/services?limit=3&offset=3');
    const second = await api.call('GET', first.json.next);
    assert.deepEqual(second.json.data.map((s: Obj) => s['name']), ['s1', 's2', 's3']);
    assert.deepEqual((await api.call('GET', '/api/services?tags=odd,x')).json.data.map((s: Obj) => s['name']), ['s1', 's3']);
    assert.deepEqual((await api.call('GET', '/api/services?tags=team-a/odd')).json.data.map((s: Obj) => s['name']), ['orders', 's1', 's3']);
    assert.deepEqual((await api.call('GET', '/api/routes?tags=public')).json.data.map((s: Obj) => s['name']), ['orders-api']);
    const head = await api.call('HEAD', '/api/services');
    assert.equal(head.status, 200);
    assert.equal(head.text, '');
    assert.ok(head.headers.get('etag'));
    const opts = await api.call('OPTIONS', '/api/services/orders');
    assert.equal(opts.status, 204);
    assert.equal(opts.headers.get('allow'), 'GET, HEAD, PUT, PATCH, DELETE, OPTIONS');
  } finally {
    await api.close();
  }
});

test('store failures: a closed (unavailable) store answers 503, a read-only store 409', async () => {
  const api = await start({ seed: sampleDocument() as Obj });
  const readOnly: ConfigStore = {
    kind: 'file',
    open: async () => {},
    current: () => api.store.current(),
    write: async () => {
      const { StoreReadOnly } = await import('../config/stores/types.js');
      throw new StoreReadOnly('the config comes from the file turnpike.yaml');
    },
    revision: (n) => api.store.revision(n),
    history: (l, b) => api.store.history(l, b),
    watch: () => () => {},
    close: async () => {},
  };
  const ro = await serve(createApiHandler({ store: readOnly, validate: documentValidator(), tokens: TOKENS, log: silentLogger }));
  try {
    const r = await fetch(`${ro.url}/api/services`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'x', url: 'http://127.0.0.1:1' }) });
    assert.equal(r.status, 409);
    assert.equal(((await r.json()) as Obj)['type'], 'urn:turnpike:problem:read-only');
    assert.equal((await fetch(`${ro.url}/api/services`, { headers: { authorization: `Bearer ${ADMIN}` } })).status, 200);
    await api.store.close();
    const down = await api.call('POST', '/api/services', { body: { name: 'x', url: 'http://127.0.0.1:1' } });
    isProblem(down, 503, 'service-unavailable');
    assert.equal(down.headers.get('retry-after'), '5');
    isProblem(await api.call('GET', '/api/services'), 503, 'service-unavailable');
  } finally {
    await new Promise<void>((r) => ro.server.close(() => r()));
    await api.close();
  }
});

test('developers: listed with their status; approve takes a sign-up and a requested plan, reject deletes a pending sign-up; read-only tokens may only read', async () => {
  const hash = 'scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g=';
  const seed: Obj = {
    services: [{ name: 'orders', url: 'http://127.0.0.1:9001', plugins: [{ name: 'key-auth' }], routes: [{ name: 'o', paths: ['/o'] }] }],
    plans: { free: {}, pro: {} },
    consumers: [
      { name: 'dev-ann-1', plan: 'free', tags: ['portal'], credentials: [{ type: 'portal', email: 'ann@example.com', password_hash: hash, approved: false }, { type: 'key-auth', id: 'k-1', key_sha256: 'a'.repeat(64) }] },
      { name: 'dev-bob-2', plan: 'free', tags: ['portal'], credentials: [{ type: 'portal', email: 'bob@example.com', password_hash: hash, requested_plan: 'pro' }] },
      { name: 'dev-cid-3', tags: ['portal'], credentials: [{ type: 'portal', email: 'cid@example.com', password_hash: hash, approved: false }] },
      { name: 'plain', credentials: [{ type: 'key-auth', key: 'plain-key-00000001' }] },
    ],
  };
  const api = await start({ seed });
  try {
    const all = await api.call('GET', '/api/developers');
    assert.equal(all.status, 200, all.text);
    assert.deepEqual(all.json.data.map((d: { consumer: string; status: string; keys: number }) => [d.consumer, d.status, d.keys]), [['dev-ann-1', 'pending-approval', 1], ['dev-bob-2', 'active', 0], ['dev-cid-3', 'pending-approval', 0]]);
    assert.doesNotMatch(all.text, /scrypt|aaaa/, 'no password hash or key digest');
    assert.deepEqual((await api.call('GET', '/api/developers?pending=true')).json.total, 3);
    assert.deepEqual((await api.call('GET', '/api/developers?status=active')).json.data.map((d: { consumer: string }) => d.consumer), ['dev-bob-2']);
    isProblem(await api.call('POST', '/api/developers/dev-ann-1/approve', { token: READER }), 403, 'forbidden');

    const a = await api.call('POST', '/api/developers/dev-ann-1/approve');
    assert.equal(a.status, 200, a.text);
    assert.deepEqual(a.json.approved, ['sign-up']);
    assert.equal(a.json.developer.status, 'active');
    const b = await api.call('POST', '/api/developers/dev-bob-2/approve');
    assert.deepEqual(b.json.approved, ['plan pro']);
    assert.equal((await api.call('GET', '/api/consumers/dev-bob-2')).json.plan, 'pro');
    isProblem(await api.call('POST', '/api/developers/dev-bob-2/approve'), 409, 'conflict');
    const c = await api.call('POST', '/api/developers/dev-cid-3/reject');
    assert.deepEqual(c.json, { rejected: ['sign-up'], developer: null });
    assert.equal((await api.call('GET', '/api/consumers/dev-cid-3')).status, 404);
    isProblem(await api.call('POST', '/api/developers/plain/approve'), 404, 'not-found');
    isProblem(await api.call('GET', '/api/developers/dev-ann-1/approve'), 405, 'method-not-allowed');
    assert.equal((await api.call('GET', '/api/developers?pending=true')).json.total, 0);
  } finally {
    await api.close();
  }
});

test('If-Match on approve / reject (RFC 9110 §13.1.1: evaluated, not ignored): a plan the developer asked for after the admin read revision N is a 412 and nothing is approved; the current revision lets it through', async () => {
  const hash = 'scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g=';
  const seed: Obj = {
    plans: { free: {}, pro: {}, enterprise: {} },
    consumers: [{ name: 'dev-bob-2', plan: 'free', tags: ['portal'], credentials: [{ type: 'portal', email: 'bob@example.com', password_hash: hash, requested_plan: 'pro' }] }],
  };
  const api = await start({ seed });
  try {
    const seen = await api.call('GET', '/api/developers');
    assert.equal(seen.json.data[0].requested_plan, 'pro');
    const revision = Number(seen.headers.get('x-config-revision'));
    // the developer asks for another plan meanwhile (the portal writes the same credential)
    const moved = await api.call('PATCH', '/api/consumers/dev-bob-2/credentials/dev-bob-2%2Fportal%2F1', { body: { requested_plan: 'enterprise' }, type: 'application/merge-patch+json' });
    assert.equal(moved.status, 200, moved.text);
    for (const decision of ['approve', 'reject']) {
      isProblem(await api.call('POST', `/api/developers/dev-bob-2/${decision}`, { headers: { 'if-match': `"r${revision}"` } }), 412, 'precondition-failed');
    }
    isProblem(await api.call('POST', '/api/developers/dev-bob-2/approve', { headers: { 'if-match': '"some-etag"' } }), 412, 'precondition-failed');
    isProblem(await api.call('POST', '/api/developers/dev-bob-2/approve', { headers: { 'if-match': 'nonsense' } }), 400, 'bad-request');
    const after = await api.call('GET', '/api/consumers/dev-bob-2');
    assert.equal(after.json.plan, 'free');
    const now = Number(after.headers.get('x-config-revision'));
    const ok = await api.call('POST', '/api/developers/dev-bob-2/approve', { headers: { 'if-match': `"r${now}"` } });
    assert.equal(ok.status, 200, ok.text);
    assert.equal((await api.call('GET', '/api/consumers/dev-bob-2')).json.plan, 'enterprise');
  } finally {
    await api.close();
  }
});

test('developer accounts survive whole-document writes: a rollback keeps revoked keys revoked and newer sign-ups; a PUT without developers keeps them', async () => {
  const hash = 'scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g=';
  const dev = (name: string, email: string, keys: string[]): Obj => ({
    name, plan: 'free', tags: ['portal'],
    credentials: [{ type: 'portal', email, password_hash: hash }, ...keys.map((k) => ({ type: 'key-auth', id: k, key_sha256: k.slice(-1).repeat(64) }))],
  });
  const seed: Obj = {
    services: [{ name: 'orders', url: 'http://127.0.0.1:9001', plugins: [{ name: 'key-auth' }], routes: [{ name: 'o', paths: ['/o'] }] }],
    plans: { free: {} },
    consumers: [{ name: 'partner', credentials: [{ type: 'key-auth', key: 'partner-key-0000001' }] }, dev('dev-ann-1', 'ann@example.com', ['ann-a', 'ann-b'])],
  };
  const api = await start({ seed });
  const keysOf = async (c: string) => ((await api.store.current())!.document['consumers'] as Obj[]).find((x) => x['name'] === c)?.['credentials'] as Obj[] | undefined;
  try {
    // r2: ann revokes a leaked key; r3: bob signs up; r4: an admin adds a service
    assert.equal((await api.call('DELETE', '/api/consumers/dev-ann-1/credentials/ann-a')).status, 204);
    assert.equal((await api.call('POST', '/api/consumers', { body: dev('dev-bob-2', 'bob@example.com', ['bob-c']) })).status, 201);
    assert.equal((await api.call('POST', '/api/services', { body: { name: 'extra', url: 'http://127.0.0.1:9002' } })).status, 201);

    const dry = await api.call('POST', '/api/revisions/1/rollback?dry_run=true');
    assert.equal(dry.status, 200, dry.text);
    assert.doesNotMatch(dry.text, /dev-bob-2|ann-a/, 'the dry run shows no developer change');
    const rb = await api.call('POST', '/api/revisions/1/rollback');
    assert.equal(rb.status, 201, rb.text);
    const doc = (await api.store.current())!.document;
    assert.deepEqual((doc['services'] as Obj[]).map((s) => s['name']), ['orders'], 'the configuration is rolled back');
    assert.deepEqual(((await keysOf('dev-ann-1')) ?? []).map((c) => c['id'] ?? c['type']), ['portal', 'ann-b'], 'the revoked key stays revoked');
    assert.ok(await keysOf('dev-bob-2'), 'the newer developer is kept');
    assert.ok(await keysOf('partner'), 'other consumers follow the revision');

    // PUT of a document without developers (a GitOps file): the accounts stay
    const put = await api.call('PUT', '/api/config', { body: { services: seed['services'], plans: { free: {} }, consumers: [{ name: 'partner', credentials: [{ type: 'key-auth', key: 'partner-key-0000002' }] }] } });
    assert.equal(put.status, 200, put.text);
    assert.ok(await keysOf('dev-ann-1'));
    assert.ok(await keysOf('dev-bob-2'));
    // a document that lists developers is taken as written (the admin manages them explicitly)
    const explicit = await api.call('PUT', '/api/config', { body: { services: seed['services'], plans: { free: {} }, consumers: [dev('dev-ann-1', 'ann@example.com', [])] } });
    assert.equal(explicit.status, 200, explicit.text);
    assert.deepEqual(((await keysOf('dev-ann-1')) ?? []).map((c) => c['type']), ['portal']);
    assert.equal(await keysOf('dev-bob-2'), undefined);
  } finally {
    await api.close();
  }
});

test('developer accounts across whole-document writes are matched by name: no duplicate, no lost consumer', async () => {
  const hash = 'scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g=';
  const portal = (email: string): Obj => ({ type: 'portal', email, password_hash: hash });
  const seed: Obj = {
    services: [{ name: 'orders', url: 'http://127.0.0.1:9001', plugins: [{ name: 'key-auth' }, { name: 'rate-limit', consumer: 'was-dev', config: { limit: 5, window: '1m' } }], routes: [{ name: 'o', paths: ['/o'] }] }],
    consumers: [
      { name: 'acme', credentials: [{ type: 'key-auth', key: 'acme-key-000000001' }] },
      { name: 'was-dev', tags: ['portal'], credentials: [portal('was@example.com'), { type: 'key-auth', id: 'w-1', key_sha256: 'b'.repeat(64) }] },
    ],
  };
  const api = await start({ seed });
  const consumers = async () => ((await api.store.current())!.document['consumers'] as Obj[]);
  const creds = (c: Obj | undefined) => ((c?.['credentials'] as Obj[] | undefined) ?? []).map((x) => x['type']).sort();
  try {
    // r2: acme becomes a developer; r3: was-dev's portal credential is removed (it stays a consumer)
    assert.equal((await api.call('POST', '/api/consumers/acme/credentials', { body: portal('acme@example.com') })).status, 201);
    assert.equal((await api.call('DELETE', `/api/consumers/was-dev/credentials/${encodeURIComponent('was-dev/portal/1')}`)).status, 204);
    const rb = await api.call('POST', '/api/revisions/1/rollback');
    assert.equal(rb.status, 201, rb.text);
    const after = await consumers();
    assert.deepEqual(after.map((c) => c['name']), ['acme', 'was-dev'], 'each once, in the revision\'s order');
    assert.deepEqual(creds(after[0]), ['key-auth', 'portal'], 'acme is the developer it is now');
    assert.deepEqual(creds(after[1]), ['key-auth'], 'was-dev stays as it is now (its rate-limit binding still names it)');
    // a GitOps PUT naming a current developer without its portal credential: the account wins, once
    const put = await api.call('PUT', '/api/config', { body: { services: [{ name: 'orders', url: 'http://127.0.0.1:9001', routes: [{ name: 'o', paths: ['/o'] }] }], consumers: [{ name: 'acme', credentials: [{ type: 'key-auth', key: 'acme-key-000000002' }] }] } });
    assert.equal(put.status, 200, put.text);
    const last = await consumers();
    assert.deepEqual(last.map((c) => c['name']), ['acme']);
    assert.deepEqual(creds(last[0]), ['key-auth', 'portal']);
  } finally {
    await api.close();
  }
});

test('a JSON body with a key given twice in one object is a 400 naming the key (also spelled with escapes); nothing is written (YAML bodies already refuse it)', async () => {
  const api = await start({ seed: sampleDocument() });
  try {
    const before = (await api.call('GET', '/api/config?format=json')).text;
    const dup = await api.call('POST', '/api/services', { raw: '{"name": "a", "url": "http://127.0.0.1:9001", "name": "b"}' });
    isProblem(dup, 400, 'bad-request');
    assert.match(dup.json.detail, /"name".*twice/);
    const escaped = await api.call('POST', '/api/services', { raw: '{"name": "a", "url": "http://127.0.0.1:9001", "\\u006eame": "b"}' });
    isProblem(escaped, 400, 'bad-request');
    const nested = await api.call('PATCH', '/api/services/orders', { raw: '{"retries": 2, "routes": [{"x": {"a": 1, "b": [{"c": 1, "c": 2}]}}]}' });
    isProblem(nested, 400, 'bad-request');
    assert.match(nested.json.detail, /"c".*twice/);
    // a whole document as JSON: two `services` keys dropped every service but the last list's
    const whole = await api.call('PUT', '/api/config', { raw: '{"services": [{"name": "q", "url": "http://127.0.0.1:1"}], "services": []}' });
    isProblem(whole, 400, 'bad-request');
    assert.match(whole.json.detail, /"services".*twice/);
    assert.equal((await api.call('GET', '/api/config?format=json')).text, before);
    // the same key in sibling objects, and a key equal to a value, are fine
    const ok = await api.call('POST', '/api/services', { raw: '{"name": "name", "url": "http://127.0.0.1:9001", "routes": [{"name": "r1", "paths": ["/r1"]}, {"name": "r2", "paths": ["/r2"]}]}' });
    assert.equal(ok.status, 201, ok.text);
  } finally {
    await api.close();
  }
});

test('If-None-Match on writes (RFC 9110 §13.1.2): * or the current tag is a 412 and nothing is written; another tag lets the write through; a malformed one is a 400', async () => {
  const api = await start({ seed: sampleDocument() });
  try {
    const got = await api.call('GET', '/api/services/orders');
    const etag = got.headers.get('etag')!;
    const body = { name: 'orders', url: 'http://127.0.0.1:9009' };
    // a create-only PUT must not overwrite what exists
    isProblem(await api.call('PUT', '/api/services/orders', { body, headers: { 'if-none-match': '*' } }), 412, 'precondition-failed');
    isProblem(await api.call('PUT', '/api/services/orders', { body, headers: { 'if-none-match': etag } }), 412, 'precondition-failed');
    isProblem(await api.call('PATCH', '/api/services/orders', { body: { retries: 3 }, headers: { 'if-none-match': `"x", W/${etag}` } }), 412, 'precondition-failed');
    isProblem(await api.call('DELETE', '/api/routes/orders-api', { headers: { 'if-none-match': '*' } }), 412, 'precondition-failed');
    isProblem(await api.call('PUT', '/api/services/orders', { body, headers: { 'if-none-match': 'nope' } }), 400, 'bad-request');
    const doc = await api.call('GET', '/api/config');
    const rev = doc.headers.get('etag')!;
    isProblem(await api.call('PUT', '/api/config', { raw: doc.text, type: 'application/yaml', headers: { 'if-none-match': rev } }), 412, 'precondition-failed');
    isProblem(await api.call('PUT', '/api/config?dry_run=true', { raw: 'services: []\n', type: 'application/yaml', headers: { 'if-none-match': '*' } }), 412, 'precondition-failed');
    assert.equal((await api.call('GET', '/api/config')).headers.get('etag'), rev);
    assert.equal((await api.call('GET', '/api/services/orders')).json.url, 'http://127.0.0.1:9001');
    // a tag that is not the current one: the write goes through
    const put = await api.call('PUT', '/api/services/orders', { body, headers: { 'if-none-match': '"something-else"' } });
    assert.equal(put.status, 200, put.text);
    assert.equal((await api.call('GET', '/api/services/orders')).json.url, 'http://127.0.0.1:9009');
    const patch = await api.call('PATCH', '/api/services/orders', { body: { retries: 2 }, headers: { 'if-none-match': etag } });
    assert.equal(patch.status, 200, patch.text);
  } finally {
    await api.close();
  }
});

test('PATCH takes JSON Merge Patch only: a JSON Patch (RFC 6902, application/json-patch+json) is a 415 with Accept-Patch, never applied as a merge; OPTIONS advertises Accept-Patch', async () => {
  const api = await start({ seed: sampleDocument() });
  try {
    const jsonPatch = await api.call('PATCH', '/api/services/orders', { raw: '[{"op": "replace", "path": "/retries", "value": 3}]', type: 'application/json-patch+json' });
    isProblem(jsonPatch, 415, 'unsupported-media-type');
    assert.equal(jsonPatch.headers.get('accept-patch'), 'application/merge-patch+json, application/json');
    // an object under the JSON Patch type is not taken as a merge patch either
    isProblem(await api.call('PATCH', '/api/services/orders', { raw: '{"retries": 3}', type: 'application/json-patch+json' }), 415, 'unsupported-media-type');
    assert.equal((await api.call('GET', '/api/services/orders')).json.retries, 1);
    const ok = await api.call('PATCH', '/api/services/orders', { raw: '{"retries": 3}', type: 'application/merge-patch+json; charset=utf-8' });
    assert.equal(ok.status, 200, ok.text);
    const opts = await api.call('OPTIONS', '/api/services/orders');
    assert.equal(opts.status, 204);
    assert.equal(opts.headers.get('accept-patch'), 'application/merge-patch+json, application/json');
    assert.equal((await api.call('OPTIONS', '/api/services')).headers.get('accept-patch'), null);
  } finally {
    await api.close();
  }
});

test('a 304 carries the header fields its 200 would have (RFC 9110 §15.4.5): ETag, Vary: Accept on /api/config, X-Config-Revision', async () => {
  const api = await start({ seed: sampleDocument() });
  try {
    const full = await api.call('GET', '/api/config');
    assert.equal(full.headers.get('vary'), 'Accept');
    const nm = await api.call('GET', '/api/config', { headers: { 'if-none-match': full.headers.get('etag')! } });
    assert.equal(nm.status, 304);
    assert.equal(nm.headers.get('etag'), full.headers.get('etag'));
    assert.equal(nm.headers.get('vary'), 'Accept');
    assert.equal(nm.headers.get('x-config-revision'), full.headers.get('x-config-revision'));
    assert.equal(nm.text, '');
    const item = await api.call('GET', '/api/services/orders');
    const nm2 = await api.call('HEAD', '/api/services/orders', { headers: { 'if-none-match': item.headers.get('etag')! } });
    assert.equal(nm2.status, 304);
    assert.equal(nm2.headers.get('x-config-revision'), item.headers.get('x-config-revision'));
  } finally {
    await api.close();
  }
});

test('GET /api/revisions/N answers JSON or YAML by Accept, and says so with Vary: Accept in both (a cache must not hand one to a client asking for the other)', async () => {
  const api = await start({ seed: sampleDocument() });
  try {
    const asJson = await api.call('GET', '/api/revisions/1');
    assert.equal(asJson.headers.get('content-type'), 'application/json');
    assert.equal(asJson.headers.get('vary'), 'Accept');
    const asYaml = await api.call('GET', '/api/revisions/1', { headers: { accept: 'application/yaml' } });
    assert.equal(asYaml.headers.get('content-type'), 'application/yaml');
    assert.equal(asYaml.headers.get('vary'), 'Accept');
  } finally {
    await api.close();
  }
});

test('a JSON-only read asked with an Accept that rules JSON out is a 406 problem (RFC 9110 §12.5.1), as GET /api/config is, not JSON regardless; */*, application/* and a listed application/json are answered', async () => {
  const api = await start({ seed: sampleDocument() });
  try {
    for (const path of ['/api/services', '/api/services/orders', '/api/consumers/acme/credentials', '/api/revisions', '/api/developers', '/api/openapi.json']) {
      for (const accept of ['text/html', 'application/xml', 'application/json;q=0', 'text/html, application/json;q=0']) {
        const r = await api.call('GET', path, { headers: { accept } });
        isProblem(r, 406, 'not-acceptable');
        assert.equal((await api.call('HEAD', path, { headers: { accept } })).status, 406, `HEAD ${path} (${accept})`);
      }
      for (const accept of ['application/json', 'application/*', '*/*', 'text/html, application/json;q=0.5', 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8']) {
        const r = await api.call('GET', path, { headers: { accept } });
        assert.equal(r.status, 200, `${path} (${accept}): ${r.text}`);
        assert.equal(r.headers.get('content-type'), 'application/json');
      }
    }
    // a write answers as before whatever Accept says (it is made; its answer is JSON)
    const w = await api.call('PATCH', '/api/services/orders', { body: { retries: 2 }, type: 'application/merge-patch+json', headers: { accept: 'text/html' } });
    assert.equal(w.status, 200, w.text);
  } finally {
    await api.close();
  }
});

test('PUT /api/config with YAML: a key given twice is a 400 naming its path, line and column; a syntax error names its line; nothing is written', async () => {
  const api = await start({ seed: sampleDocument() });
  try {
    const before = (await api.call('GET', '/api/config')).headers.get('etag');
    const dup = await api.call('PUT', '/api/config', { raw: 'services:\n  - name: a\n    url: http://127.0.0.1:1\n    name: b\n', type: 'application/yaml' });
    isProblem(dup, 400, 'bad-request');
    assert.deepEqual(dup.json.errors, [{ path: 'services[0].name', message: 'line 4: duplicate key "name" (column 5): a key may appear once in a mapping' }]);
    assert.match(dup.json.detail, /^invalid YAML: services\[0\]\.name: line 4: duplicate key "name"/);
    const syntax = await api.call('PUT', '/api/config', { raw: 'services:\n  - name: a\n    url: [unclosed\n', type: 'application/yaml' });
    isProblem(syntax, 400, 'bad-request');
    assert.match(syntax.json.errors[0].message, /^line [34]: /);
    assert.equal((await api.call('GET', '/api/config')).headers.get('etag'), before);
  } finally {
    await api.close();
  }
});

test('a compressed request body (Content-Encoding: gzip) is a 415 with Accept-Encoding: identity, not a 400 about its bytes; nothing is written', async () => {
  const { gzipSync } = await import('node:zlib');
  const api = await start({ seed: sampleDocument() });
  try {
    const before = (await api.call('GET', '/api/config')).headers.get('etag');
    const r = await api.call('POST', '/api/services', { raw: gzipSync(JSON.stringify({ name: 'gz', url: 'http://127.0.0.1:9001' })), headers: { 'content-encoding': 'gzip' } });
    isProblem(r, 415, 'unsupported-media-type');
    assert.equal(r.headers.get('accept-encoding'), 'identity');
    assert.equal((await api.call('GET', '/api/config')).headers.get('etag'), before);
    const plain = await api.call('POST', '/api/services', { body: { name: 'plain', url: 'http://127.0.0.1:9001' }, headers: { 'content-encoding': 'identity' } });
    assert.equal(plain.status, 201, plain.text);
  } finally {
    await api.close();
  }
});

test('invalid JSON in a body is a 400 naming the position with its line and column (a multi-line body from a file)', async () => {
  const api = await start({ seed: sampleDocument() });
  try {
    const r = await api.call('POST', '/api/services', { raw: '{\n  "name": "x",\n  "url": "http://127.0.0.1:9001",\n}\n' });
    isProblem(r, 400, 'bad-request');
    assert.match(r.json.detail, /^invalid JSON: .*position 51 \(line 4, column 1\)$/);
    assert.deepEqual([r.json.position, r.json.line, r.json.column], [51, 4, 1]);
    const cut = await api.call('PUT', '/api/config', { raw: '{"services": [\n', type: 'application/json' });
    isProblem(cut, 400, 'bad-request');
    assert.match(cut.json.detail, /\(line 2, column 1\)$/);
  } finally {
    await api.close();
  }
});

test('If-Match on a read (RFC 9110 §13.2.2): GET / HEAD answer 412 unless it holds (*, the current tag, the current revision "rN")', async () => {
  const api = await start({ seed: sampleDocument() });
  try {
    const item = await api.call('GET', '/api/services/orders');
    const tag = item.headers.get('etag')!;
    const rev = item.headers.get('x-config-revision')!;
    for (const h of [tag, '*', `"r${rev}"`, `"nope", ${tag}`]) assert.equal((await api.call('GET', '/api/services/orders', { headers: { 'if-match': h } })).status, 200, h);
    isProblem(await api.call('GET', '/api/services/orders', { headers: { 'if-match': '"stale"' } }), 412, 'precondition-failed');
    assert.equal((await api.call('HEAD', '/api/services/orders', { headers: { 'if-match': `W/${tag}` } })).status, 412);
    isProblem(await api.call('GET', '/api/services/orders', { headers: { 'if-match': 'unquoted' } }), 400, 'bad-request');
    // the whole config: its revision
    const conf = await api.call('GET', '/api/config');
    assert.equal((await api.call('GET', '/api/config', { headers: { 'if-match': conf.headers.get('etag')! } })).status, 200);
    await api.call('PATCH', '/api/services/orders', { body: { retries: 2 } });
    isProblem(await api.call('GET', '/api/config', { headers: { 'if-match': conf.headers.get('etag')! } }), 412, 'precondition-failed');
    isProblem(await api.call('GET', '/api/services/orders', { headers: { 'if-match': tag } }), 412, 'precondition-failed');
  } finally {
    await api.close();
  }
});

test('validation errors point into the request body (RFC 9457 §3: errors[].pointer, a JSON Pointer as a fragment); errors elsewhere in the config have none', async () => {
  const api = await start({ seed: hashedSample() });
  try {
    const pointers = (r: Res) => {
      isProblem(r, 400, 'validation-failed');
      return (r.json.errors as { path: string; pointer?: string }[]).map((e) => [e.path, e.pointer ?? null]);
    };
    assert.deepEqual(pointers(await api.call('POST', '/api/routes', { body: { name: 'r', service: 'orders', paths: ['/ok', 'no-slash'] } })), [['paths[1]', '#/paths/1']]);
    assert.deepEqual(pointers(await api.call('POST', '/api/routes', { body: { name: 'r', service: 'nowhere', paths: ['/r'] } })), [['service', '#/service']]);
    assert.deepEqual(pointers(await api.call('POST', '/api/services', { body: { name: 'x', url: 'http://127.0.0.1:1', colour: 'red' } })), [['colour', '#/colour']]);
    assert.deepEqual(pointers(await api.call('POST', '/api/services', { body: { name: 'x', url: 'http://127.0.0.1:1', routes: [{ paths: ['/x', 'bad'] }] } })), [['routes[0].paths[1]', '#/routes/0/paths/1']]);
    assert.deepEqual(pointers(await api.call('PATCH', '/api/plugins/global:request-size-limit', { body: { config: { max: 'lots' } } })), [['config.max', '#/config/max']]);
    // a key holding "/" or "~" is escaped (RFC 6901 §3), and the fragment percent-encoded (§6)
    const odd = pointers(await api.call('POST', '/api/plugins', { body: { name: 'request-size-limit', service: 'users', config: { max: '1mb', 'a/b~c d': 1 } } }));
    assert.deepEqual(odd.map((e) => e[1]), ['#/config/a~1b~0c%20d']);
    // the whole document: paths are the body's
    const doc = sampleDocument() as Obj;
    (doc['services'] as Obj[])[1]!['retries'] = 'two';
    assert.deepEqual(pointers(await api.call('PUT', '/api/config', { body: doc })), [['services[1].retries', '#/services/1/retries']]);
    assert.deepEqual(pointers(await api.call('PUT', '/api/config', { body: { ...doc, admin: {} } })), [['admin', '#/admin']]);
    // a write that breaks another item: that item is not in the body, so no pointer
    const clash = await api.call('POST', '/api/routes', { body: { name: 'again', service: 'orders', paths: ['/orders'], methods: ['GET', 'POST'] } });
    const errs = pointers(clash);
    assert.ok(errs.length > 0);
    for (const [path, pointer] of errs) assert.ok(pointer === null ? true : !String(path).includes('/'), JSON.stringify(errs));
    assert.equal((await api.store.current())!.revision, 1, 'nothing was written');
  } finally {
    await api.close();
  }
});

test('GET /api/developers pages like every other list (limit 1..1000, offset, next; a bad one is a 400), and an unknown ?status= is a 400, not an empty list', async () => {
  const hash = 'scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g=';
  const consumers = Array.from({ length: 5 }, (_, i) => ({ name: `dev-${i}`, tags: ['portal'], credentials: [{ type: 'portal', email: `d${i}@example.com`, password_hash: hash, ...(i % 2 ? { approved: false } : {}) }] }));
  const api = await start({ seed: { consumers } as Obj });
  try {
    const first = await api.call('GET', '/api/developers?limit=2');
    assert.equal(first.status, 200, first.text);
    assert.deepEqual(first.json.data.map((d: { consumer: string }) => d.consumer), ['dev-0', 'dev-1']);
    assert.equal(first.json.total, 5);
    assert.equal(first.json.limit, 2);
    assert.equal(first.json.offset, 0);
    const second = await api.call('GET', first.json.next);
    assert.deepEqual(second.json.data.map((d: { consumer: string }) => d.consumer), ['dev-2', 'dev-3']);
    const last = await api.call('GET', second.json.next);
    assert.deepEqual(last.json.data.map((d: { consumer: string }) => d.consumer), ['dev-4']);
    assert.equal(last.json.next, null);
    const pending = await api.call('GET', '/api/developers?status=pending-approval&limit=1');
    assert.deepEqual([pending.json.data[0].consumer, pending.json.total], ['dev-1', 2]);
    assert.match(pending.json.next, /status=pending-approval/);
    assert.deepEqual((await api.call('GET', '/api/developers?offset=99999999999')).json.data, []);
    for (const q of ['limit=0', 'limit=-1', 'limit=1001', 'limit=abc', 'offset=-1', 'offset=1e3', 'status=bogus', 'status=active&status=active']) {
      isProblem(await api.call('GET', `/api/developers?${q}`), 400, 'bad-request');
    }
  } finally {
    await api.close();
  }
});

test('If-Match: * on PUT /api/config of an empty store (no revision yet) is a 412 (RFC 9110 §13.1.1: * is false when there is no current representation); once there is one it holds', async () => {
  const api = await start();
  try {
    const doc = { services: [{ name: 'first', url: 'http://127.0.0.1:9001' }] };
    const blind = await api.call('PUT', '/api/config', { body: doc, headers: { 'if-match': '*' } });
    isProblem(blind, 412, 'precondition-failed');
    assert.equal(await api.store.current(), null, 'nothing written');
    isProblem(await api.call('PUT', '/api/config?dry_run=true', { body: doc, headers: { 'if-match': '*' } }), 412, 'precondition-failed');
    assert.equal((await api.call('PUT', '/api/config', { body: doc, headers: { 'if-none-match': '*' } })).status, 200, 'If-None-Match: * creates it');
    const again = await api.call('PUT', '/api/config', { body: { services: [{ name: 'second', url: 'http://127.0.0.1:9002' }] }, headers: { 'if-match': '*' } });
    assert.equal(again.status, 200, again.text);
    assert.equal(again.json.revision, 2);
  } finally {
    await api.close();
  }
});

test('a basic-auth password replaced by PUT without `type` (the credential keeps its type) is stored as its scrypt hash, never in clear', async () => {
  const api = await start({ seed: sampleDocument() as Obj });
  try {
    const url = '/api/consumers/acme/credentials/acme%2Fbasic-auth%2Facme';
    const put = await api.call('PUT', url, { body: { username: 'acme', password: 'put-without-type-password' } });
    assert.equal(put.status, 200, put.text);
    assert.deepEqual(put.json, { id: 'acme/basic-auth/acme', type: 'basic-auth', username: 'acme' });
    const text = JSON.stringify((await api.store.current())!.document);
    assert.ok(!text.includes('put-without-type-password'), 'the password is in the store in clear');
    const cred = (((await api.store.current())!.document['consumers'] as Obj[])[0]!['credentials'] as Obj[])[1]!;
    assert.equal(cred['type'], 'basic-auth');
    assert.match(String(cred['password_hash']), /^scrypt\$/);
  } finally {
    await api.close();
  }
});

test('a string that is one ${VAR} reference is exported quoted: applied back it stays that reference (unquoted it read as the number or boolean the variable holds on the node — the value stored in its place, or a 400 where a string belongs)', async () => {
  process.env['TP_EXPORT_REF_ID'] = '424242';
  process.env['TP_EXPORT_REF_FLAG'] = 'true';
  const seed = {
    services: [{
      name: 'orders', url: 'http://127.0.0.1:9001', routes: [{ name: 'o', paths: ['/o'], hosts: ['h${TP_EXPORT_REF_ID}.example'] }],
      plugins: [{ name: 'oauth2-introspection', config: { introspection_url: 'http://127.0.0.1:9/i', client_id: '${TP_EXPORT_REF_ID}', client_secret: '${TP_EXPORT_REF_FLAG}' } }],
    }],
  };
  const api = await start({ seed: seed as Obj });
  try {
    const full = await api.call('GET', '/api/config?secrets=true');
    assert.equal(full.status, 200, full.text);
    const put = await api.call('PUT', '/api/config', { raw: full.text, type: 'application/yaml' });
    assert.equal(put.status, 200, put.text);
    assert.deepEqual(put.json, { revision: 1, changed: false });
    const plain = await api.call('GET', '/api/config');
    assert.deepEqual((await api.call('PUT', '/api/config', { raw: plain.text, type: 'application/yaml' })).json, { revision: 1, changed: false });
    assert.deepEqual((await api.store.current())!.document, seed);
  } finally {
    await api.close();
    delete process.env['TP_EXPORT_REF_ID'];
    delete process.env['TP_EXPORT_REF_FLAG'];
  }
});

test('a write whose apply on this node hangs is answered once applyWaitMs passed (it is committed): the client is not left to retry a write that was made', async () => {
  let applies = 0;
  const api = await start({ onWritten: () => { applies++; return new Promise(() => {}); }, applyWaitMs: 300 });
  try {
    const t0 = performance.now();
    const r = await api.call('POST', '/api/services', { body: { name: 'late', url: 'http://127.0.0.1:9' } });
    assert.equal(r.status, 201, r.text);
    assert.ok(performance.now() - t0 < 5000, 'answered after the bound, not never');
    assert.equal(applies, 1);
    assert.equal((await api.call('GET', '/api/services/late')).status, 200, 'stored');
  } finally {
    await api.close();
  }
});

/** The consumers' basic-auth credentials of a stored document. */
const basicCreds = (doc: Obj): Obj[] => (doc['consumers'] as Obj[]).flatMap((c) => (c['credentials'] as Obj[] | undefined) ?? []).filter((c) => c['type'] === 'basic-auth');

test('PUT /api/config and rollback store no plain basic-auth password (a scrypt hash, made off the event loop); the same document PUT again (the plain password) changes nothing, also against a hash this node never made', async () => {
  // revision 1: as a node of an older release stored it (the plain password); 2: its hash, made
  // elsewhere (at a low cost: a quick check)
  const legacy = sampleDocument() as Obj;
  const elsewhere = await hashPasswordAsync('acme-secret-password', { N: 1024, r: 8, p: 1, keylen: 32 });
  const api = await start({ seed: legacy });
  try {
    await api.store.write({ actor: 'other-node', action: 'hash' }, (cur) => {
      const doc = structuredClone(cur!) as Obj;
      const c = basicCreds(doc)[0]!;
      delete c['password'];
      c['password_hash'] = elsewhere;
      return doc;
    });
    // a GitOps client applies its file (the plain password) again: the stored hash verifies, kept
    const dry = await api.call('PUT', '/api/config?dry_run=true', { body: sampleDocument() });
    assert.equal(dry.status, 200, dry.text);
    assert.equal(dry.json.changed, false, dry.text);
    const same = await api.call('PUT', '/api/config', { body: sampleDocument() });
    assert.equal(same.status, 200, same.text);
    assert.deepEqual({ revision: same.json.revision, changed: same.json.changed }, { revision: 2, changed: false });
    // a new password: stored as a new hash of it, never in clear
    const next = sampleDocument() as Obj;
    basicCreds(next)[0]!['password'] = 'a-new-acme-password';
    const put = await api.call('PUT', '/api/config', { body: next });
    assert.equal(put.status, 200, put.text);
    assert.equal(put.json.changed, true);
    let head = (await api.store.current())!;
    assert.ok(!secretValues(head.document as Obj).includes('a-new-acme-password'), 'the password is in the store in clear');
    const hash = String(basicCreds(head.document as Obj)[0]!['password_hash']);
    assert.ok(await verifyPassword('a-new-acme-password', parseHash(hash)!));
    assert.equal(basicCreds(head.document as Obj)[0]!['password'], undefined);
    // ... and sent again: unchanged
    const again = await api.call('PUT', '/api/config', { body: next });
    assert.deepEqual({ revision: again.json.revision, changed: again.json.changed }, { revision: 3, changed: false });
    // a rollback to the revision that held it in clear stores its hash
    const rb = await api.call('POST', '/api/revisions/1/rollback');
    assert.equal(rb.status, 201, rb.text);
    head = (await api.store.current())!;
    assert.ok(!secretValues(head.document as Obj).includes('acme-secret-password'), 'the rollback stored the password in clear');
    assert.equal(basicCreds(head.document as Obj)[0]!['password_hash'], elsewhere, 'the hash this node checked before');
    // too many plain passwords in one write: a 400 before any scrypt run, nothing written
    const many = sampleDocument() as Obj;
    (many['consumers'] as Obj[]).push(...Array.from({ length: 300 }, (_, i) => ({ name: `bulk-${i}`, credentials: [{ type: 'basic-auth', username: `bulk-${i}`, password: `bulk-password-${i}` }] })));
    const t0 = performance.now();
    isProblem(await api.call('PUT', '/api/config', { body: many }), 400, 'bad-request');
    assert.ok(performance.now() - t0 < 2000);
    assert.equal((await api.store.current())!.revision, head.revision);
  } finally {
    await api.close();
  }
});

test('a store seeded from a config file with a plain basic-auth password holds its hash; the file read again (a restart) is not said to differ from the store', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tp-admin-seed-'));
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, 'listen: 127.0.0.1:0\nstore: sqlite:./turnpike.db\naccess_log: {enabled: false}\nservices: [{name: s0, url: "http://127.0.0.1:1", routes: [{name: r0, paths: [/x]}]}]\nconsumers:\n  - name: alice\n    credentials: [{type: basic-auth, username: alice, password: seed-file-password-1}]\n');
  const said: string[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => void said.push(l) });
  try {
    const first = await ControlPlane.open({ file, loaded: loadConfigFile(file), setting: 'sqlite:./turnpike.db', log, apply: async () => true });
    const doc = first.served!.document as Obj;
    await first.close();
    assert.ok(!secretValues(doc).includes('seed-file-password-1'), 'the seed stored the password in clear');
    assert.ok(await verifyPassword('seed-file-password-1', parseHash(String(basicCreds(doc)[0]!['password_hash']))!));
    assert.ok(!readFileSync(join(dir, 'turnpike.db')).toString('latin1').includes('seed-file-password-1'));
    const second = await ControlPlane.open({ file, loaded: loadConfigFile(file), setting: 'sqlite:./turnpike.db', log, apply: async () => true });
    assert.equal(second.served!.revision, 1);
    await second.close();
    assert.doesNotMatch(said.join(''), /differ from the config store/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a consumer written with plain basic-auth passwords (POST /api/consumers; a credential\'s POST, PUT and PATCH hash as it does) has them hashed off the event loop: no request waits ~250 ms a password behind it', async () => {
  const api = await start({ seed: hashedSample() });
  const meter = loopBlockMeter();
  try {
    const post = await api.call('POST', '/api/consumers', { body: { name: 'loop', credentials: [0, 1].map((i) => ({ type: 'basic-auth', username: `loop-${i}`, password: `loop-password-${i}` })) } });
    assert.equal(post.status, 201, post.text);
    const blockedMs = meter.stop();
    assert.ok(blockedMs < 300, `the event loop was blocked for ${blockedMs.toFixed(0)} ms`);
    const creds = basicCreds((await api.store.current())!.document as Obj).filter((c) => String(c['username']).startsWith('loop-'));
    assert.equal(creds.length, 2);
    assert.ok(!secretValues((await api.store.current())!.document as Obj).some((v) => v.startsWith('loop-password')), 'a password is in the store in clear');
    assert.ok(await verifyPassword('loop-password-1', parseHash(String(creds[1]!['password_hash']))!));
  } finally {
    meter.stop();
    await api.close();
  }
});

test('a store an older release left with more plain basic-auth passwords than one write may hash is not locked: a node that compiled them (and so hashed them) takes an unrelated write, which stores their hashes', async () => {
  const legacy = sampleDocument() as Obj;
  const bulk = Array.from({ length: 300 }, (_, i) => ({ username: `legacy-${i}`, password: `legacy-password-${i}` }));
  (legacy['consumers'] as Obj[]).push(...bulk.map((b) => ({ name: b.username, credentials: [{ type: 'basic-auth', ...b }] })));
  // what this node's compile of that revision remembered (a cheap hash: the compile's own is ~250 ms each)
  for (const b of bulk) rememberHash(b.username, b.password, await hashPasswordAsync(b.password, { N: 16, r: 1, p: 1, keylen: 16 }));
  const api = await start({ seed: legacy });
  try {
    const post = await api.call('POST', '/api/services', { body: { name: 'unrelated', url: 'http://127.0.0.1:9100' } });
    assert.equal(post.status, 201, post.text);
    const doc = (await api.store.current())!.document as Obj;
    assert.ok(!secretValues(doc).some((v) => v.startsWith('legacy-password-')), 'a legacy password is still in the store in clear');
    assert.equal(basicCreds(doc).filter((c) => String(c['password_hash']).startsWith('scrypt$16$1$1$')).length, 300);
  } finally {
    await api.close();
  }
});
