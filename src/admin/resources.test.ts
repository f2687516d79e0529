import { test } from 'node:test';
import assert from 'node:assert/strict';
import { COLLECTIONS, apiErrors, describe, parsePath } from './resources.js';
import { findEntry } from './collection.js';
import { documentValidator, sampleDocument } from './testing.js';
import { credentialIds, restoreSecrets, secretValues, stripSecrets } from './secrets.js';
import { ApiError } from './errors.js';
import { consumerId } from '../plugins/pipeline.js';
import type { Obj } from './document.js';

const doc = () => sampleDocument() as Obj;
const names = (d: Obj, c: keyof typeof COLLECTIONS, parent?: string) => COLLECTIONS[c].list(d, parent).map((e) => e.name);
const valid = documentValidator();
const code = (f: () => unknown): string => {
  try {
    f();
  } catch (err) {
    if (err instanceof ApiError) return err.code;
    throw err;
  }
  return 'none';
};

test('services: listed without routes and plugins, with an id; create / rename / delete (409 with routes unless cascade)', () => {
  const d = doc();
  const svcs = COLLECTIONS.services.list(d);
  assert.deepEqual(svcs.map((e) => e.name), ['orders', 'users']);
  assert.deepEqual(Object.keys(svcs[0]!.view), ['id', 'name', 'url', 'tags', 'retries']);
  assert.equal(findEntry(svcs, svcs[1]!.id, 'service').name, 'users');
  assert.equal(code(() => COLLECTIONS.services.create(d, { name: 'orders', url: 'http://x' })), 'conflict');
  assert.deepEqual(COLLECTIONS.services.create(d, { id: 'ignored', name: 'billing', url: 'http://127.0.0.1:9009' }), ['services', 2]);
  assert.deepEqual((d['services'] as Obj[])[2], { name: 'billing', url: 'http://127.0.0.1:9009' });
  // PUT keeps the routes and plugins it does not mention; may rename
  const orders = findEntry(COLLECTIONS.services.list(d), 'orders', 'service');
  COLLECTIONS.services.replace(d, orders, { name: 'orders2', url: 'http://127.0.0.1:9001' });
  const s0 = (d['services'] as Obj[])[0]!;
  assert.equal(s0['name'], 'orders2');
  assert.equal((s0['routes'] as unknown[]).length, 2);
  assert.equal(s0['retries'], undefined);
  assert.equal(code(() => COLLECTIONS.services.replace(d, findEntry(COLLECTIONS.services.list(d), 'users', 's'), { name: 'orders2' })), 'conflict');
  const users = findEntry(COLLECTIONS.services.list(d), 'users', 'service');
  assert.equal(code(() => COLLECTIONS.services.remove(d, users, { cascade: false })), 'conflict');
  COLLECTIONS.services.remove(d, users, { cascade: true });
  assert.deepEqual(names(d, 'services'), ['orders2', 'billing']);
});

test('routes: flattened with service; unnamed ones go by <service>.<index>; moves between services and to top level', () => {
  const d = doc();
  assert.deepEqual(names(d, 'routes'), ['orders-api', 'orders.1', 'users-api', 'profile']);
  const r = COLLECTIONS.routes.list(d);
  assert.deepEqual(r[0]!.view, { id: r[0]!.id, name: 'orders-api', service: 'orders', paths: ['/orders'], methods: ['GET', 'POST'], tags: ['public'] });
  assert.equal(r[3]!.view['service'], undefined);
  assert.ok(r[3]!.view['compose']);
  // create needs a name and a known service (or compose)
  assert.equal(code(() => COLLECTIONS.routes.create(d, { service: 'orders', paths: ['/x'] })), 'validation-failed');
  assert.equal(code(() => COLLECTIONS.routes.create(d, { name: 'x', service: 'nope', paths: ['/x'] })), 'validation-failed');
  assert.equal(code(() => COLLECTIONS.routes.create(d, { name: 'x', paths: ['/x'] })), 'validation-failed');
  assert.equal(code(() => COLLECTIONS.routes.create(d, { name: 'orders-api', service: 'orders' })), 'conflict');
  assert.deepEqual(COLLECTIONS.routes.create(d, { name: 'u2', service: 'users', paths: ['/u2'] }), ['services', 1, 'routes', 1]);
  // an unnamed route replaced in place keeps having no name
  const unnamed = findEntry(COLLECTIONS.routes.list(d), 'orders.1', 'route');
  COLLECTIONS.routes.replace(d, unnamed, { ...unnamed.view, paths: ['/o3'] });
  assert.deepEqual(((d['services'] as Obj[])[0]!['routes'] as Obj[])[1], { paths: ['/o3'] });
  // moving keeps its plugins, and names it
  const api = findEntry(COLLECTIONS.routes.list(d), 'orders-api', 'route');
  assert.deepEqual(COLLECTIONS.routes.replace(d, api, { name: 'orders-api', service: 'users', paths: ['/orders'] }), ['services', 1, 'routes', 2]);
  assert.deepEqual(((d['services'] as Obj[])[1]!['routes'] as Obj[])[2], { name: 'orders-api', paths: ['/orders'], plugins: [{ name: 'cors', config: { origins: ['*'] } }] });
  assert.deepEqual(names(d, 'routes'), ['orders.0', 'users-api', 'u2', 'orders-api', 'profile']);
  COLLECTIONS.routes.remove(d, findEntry(COLLECTIONS.routes.list(d), 'profile', 'route'), { cascade: false });
  assert.equal((d['routes'] as unknown[]).length, 0);
});

test('upstreams: a url service shows one target and stays a url when written back as one; targets add and remove', () => {
  const d = doc();
  const ups = COLLECTIONS.upstreams.list(d);
  assert.deepEqual(ups[0]!.view, { id: ups[0]!.id, name: 'orders', service: 'orders', targets: [{ url: 'http://127.0.0.1:9001' }] });
  assert.equal(ups[1]!.view['balancer'], 'least-connections');
  COLLECTIONS.upstreams.replace(d, ups[0]!, { targets: [{ url: 'http://127.0.0.1:9005' }] });
  assert.equal((d['services'] as Obj[])[0]!['url'], 'http://127.0.0.1:9005');
  COLLECTIONS.upstreams.replace(d, COLLECTIONS.upstreams.list(d)[0]!, { targets: [{ url: 'http://127.0.0.1:9005' }], balancer: 'latency' });
  const s0 = (d['services'] as Obj[])[0]!;
  assert.equal(s0['url'], undefined);
  assert.deepEqual(s0['upstream'], { targets: [{ url: 'http://127.0.0.1:9005' }], balancer: 'latency' });
  assert.deepEqual(Object.keys(s0).slice(0, 2), ['name', 'upstream']); // where url was
  assert.equal(code(() => COLLECTIONS.upstreams.replace(d, COLLECTIONS.upstreams.list(d)[0]!, { service: 'users', targets: [] })), 'validation-failed');
  // targets of users
  assert.deepEqual(names(d, 'targets', 'users'), ['http://127.0.0.1:9002', 'http://127.0.0.1:9003']);
  assert.equal(code(() => COLLECTIONS.targets.list(d, 'nope')), 'not-found');
  assert.equal(code(() => COLLECTIONS.targets.create(d, { url: 'http://127.0.0.1:9002' }, 'users')), 'conflict');
  assert.deepEqual(COLLECTIONS.targets.create(d, { url: 'http://127.0.0.1:9004', weight: 5 }, 'users'), ['services', 1, 'upstream', 'targets', 2]);
  const t = findEntry(COLLECTIONS.targets.list(d, 'users'), 'http://127.0.0.1:9002', 'target');
  COLLECTIONS.targets.replace(d, t, { weight: 7 }, 'users');
  COLLECTIONS.targets.remove(d, findEntry(COLLECTIONS.targets.list(d, 'users'), 'http://127.0.0.1:9003', 'target'), { cascade: false }, 'users');
  assert.deepEqual(((d['services'] as Obj[])[1]!['upstream'] as Obj)['targets'], [{ url: 'http://127.0.0.1:9002', weight: 7 }, { url: 'http://127.0.0.1:9004', weight: 5 }]);
  // a target added to a url service turns it into an upstream block
  const d2 = doc();
  COLLECTIONS.targets.create(d2, { url: 'http://127.0.0.1:9008' }, 'orders');
  assert.deepEqual((d2['services'] as Obj[])[0]!['upstream'], { targets: [{ url: 'http://127.0.0.1:9001' }, { url: 'http://127.0.0.1:9008' }] });
});

test('consumers: derived or configured id; PUT keeps credentials and plugins; delete with bindings naming it is 409 unless cascade', () => {
  const d = doc();
  const cs = COLLECTIONS.consumers.list(d);
  assert.deepEqual(cs[0]!.view, { id: consumerId('acme'), name: 'acme', plan: 'gold', groups: ['partners'], tags: ['public'] });
  assert.equal(cs[1]!.id, 'globex-1');
  assert.equal(findEntry(cs, consumerId('acme'), 'consumer').name, 'acme');
  // GET -> PUT round trip stores no derived id and keeps the children
  COLLECTIONS.consumers.replace(d, cs[0]!, { ...cs[0]!.view, groups: ['x'] });
  const c0 = (d['consumers'] as Obj[])[0]!;
  assert.equal(c0['id'], undefined);
  assert.deepEqual(c0['groups'], ['x']);
  assert.equal((c0['credentials'] as unknown[]).length, 2);
  assert.equal(code(() => COLLECTIONS.consumers.create(d, { name: 'n', id: 'globex-1' })), 'conflict');
  assert.equal(code(() => COLLECTIONS.consumers.remove(d, findEntry(COLLECTIONS.consumers.list(d), 'acme', 'c'), { cascade: false })), 'conflict');
  COLLECTIONS.consumers.remove(d, findEntry(COLLECTIONS.consumers.list(d), 'acme', 'c'), { cascade: true });
  assert.deepEqual((d['services'] as Obj[])[0]!['plugins'], [{ name: 'key-auth' }]);
  assert.deepEqual(names(d, 'consumers'), ['globex']);
});

test('credentials: ids, no secrets in views, 409 on a duplicate id, PATCH base carries the secrets', async () => {
  const d = doc();
  assert.deepEqual(credentialIds((d['consumers'] as Obj[])[0]!), ['acme/key-auth/1', 'acme/basic-auth/acme']);
  const list = COLLECTIONS.credentials.list(d, 'acme');
  assert.deepEqual(list.map((e) => e.view), [{ id: 'acme/key-auth/1', type: 'key-auth' }, { id: 'acme/basic-auth/acme', type: 'basic-auth', username: 'acme' }]);
  assert.deepEqual(COLLECTIONS.credentials.list(d, 'globex').map((e) => e.view), [{ id: 'gk', type: 'key-auth' }]);
  assert.equal(code(() => COLLECTIONS.credentials.create(d, { type: 'basic-auth', username: 'acme', password: 'x' }, 'acme')), 'conflict');
  assert.equal(code(() => COLLECTIONS.credentials.list(d, 'nobody')), 'not-found');
  assert.equal((COLLECTIONS.credentials.patchBase!(d, list[0]!) as Obj)['key'], 'acme-secret-key-0001');
  // prepare: key-auth gets an id on POST, basic-auth passwords are hashed
  const k = await COLLECTIONS.credentials.prepare!({ type: 'key-auth', key: 'k'.repeat(20) }, 'POST');
  assert.match(String(k['id']), /^[0-9a-f-]{36}$/);
  const b = await COLLECTIONS.credentials.prepare!({ type: 'basic-auth', username: 'u', password: 'pw' }, 'PUT');
  assert.equal(b['password'], undefined);
  assert.match(String(b['password_hash']), /^scrypt\$/);
  const p = await COLLECTIONS.credentials.prepare!({ password: 'pw' }, 'PATCH');
  assert.equal(p['password'], null);
  assert.match(String(p['password_hash']), /^scrypt\$/);
  // An mtls-auth pin is no secret (a hash of a public certificate): shown, so a reader can tell the credentials apart.
  const fp = 'AB:'.repeat(31) + 'AB';
  COLLECTIONS.credentials.create(d, { type: 'mtls-auth', fingerprint_sha256: fp }, 'acme');
  assert.deepEqual(COLLECTIONS.credentials.list(d, 'acme').at(-1)!.view, { id: 'acme/mtls-auth/1', type: 'mtls-auth', fingerprint_sha256: fp });
});

test('plugins: every scope in one list with ids; create / move / 409 on a second binding in one place', () => {
  const d = doc();
  const ps = COLLECTIONS.plugins.list(d);
  assert.deepEqual(ps.map((e) => e.id), [
    'global:request-size-limit', 'service:orders:key-auth', 'service:orders:rate-limit@acme', 'route:orders-api:cors', 'consumer:acme:rate-limit',
  ]);
  assert.deepEqual(ps[2]!.view, { id: 'service:orders:rate-limit@acme', name: 'rate-limit', enabled: true, config: { limit: 10, window: '60s' }, scope: 'service', service: 'orders', consumer: 'acme' });
  assert.deepEqual(ps[3]!.view['route'], 'orders-api');
  assert.deepEqual(ps[3]!.view['service'], 'orders');
  assert.equal(code(() => findEntry(ps, 'rate-limit', 'plugin')), 'conflict'); // ambiguous by name
  assert.equal(findEntry(ps, 'cors', 'plugin').id, 'route:orders-api:cors');
  assert.equal(code(() => COLLECTIONS.plugins.create(d, { name: 'key-auth', service: 'orders' })), 'conflict');
  assert.equal(code(() => COLLECTIONS.plugins.create(d, { name: 'key-auth', route: 'nope' })), 'validation-failed');
  assert.equal(code(() => COLLECTIONS.plugins.create(d, { name: 'key-auth', route: 'orders-api', service: 'users' })), 'validation-failed');
  assert.deepEqual(COLLECTIONS.plugins.create(d, { name: 'key-auth', route: 'users-api', enabled: true, config: {} }), ['services', 1, 'routes', 0, 'plugins', 0]);
  assert.deepEqual(((d['services'] as Obj[])[1]!['routes'] as Obj[])[0]!['plugins'], [{ name: 'key-auth' }]);
  assert.deepEqual(COLLECTIONS.plugins.create(d, { name: 'acl', consumer: 'globex', config: { allow: ['x'] } }), ['consumers', 1, 'plugins', 0]);
  // PUT without placement keeps it; with placement moves it
  const rl = findEntry(COLLECTIONS.plugins.list(d), 'service:orders:rate-limit@acme', 'plugin');
  COLLECTIONS.plugins.replace(d, rl, { name: 'rate-limit', config: { limit: 5, window: '1s' } });
  assert.deepEqual(((d['services'] as Obj[])[0]!['plugins'] as Obj[])[1], { name: 'rate-limit', config: { limit: 5, window: '1s' }, consumer: 'acme' });
  const moved = COLLECTIONS.plugins.replace(d, findEntry(COLLECTIONS.plugins.list(d), 'service:orders:rate-limit@acme', 'plugin'), { name: 'rate-limit', enabled: false, scope: 'global' });
  assert.deepEqual(moved, ['plugins', 1]);
  assert.deepEqual((d['plugins'] as Obj[])[1], { name: 'rate-limit', enabled: false });
  assert.equal(code(() => COLLECTIONS.plugins.replace(d, findEntry(COLLECTIONS.plugins.list(d), 'global:rate-limit', 'p'), { name: 'rate-limit', scope: 'service' })), 'validation-failed');
});

test('plans: a map in the document; delete while consumers use it is 409 unless cascade', () => {
  const d = doc();
  const pl = COLLECTIONS.plans.list(d);
  assert.deepEqual(pl[0]!.view, { id: pl[0]!.id, name: 'gold', services: ['orders'], description: 'Gold tier' });
  assert.equal(code(() => COLLECTIONS.plans.create(d, { name: '__proto__' })), 'validation-failed');
  assert.equal(code(() => COLLECTIONS.plans.create(d, { name: 'gold' })), 'conflict');
  COLLECTIONS.plans.create(d, { name: 'silver', routes: ['orders-api'] });
  COLLECTIONS.plans.replace(d, findEntry(COLLECTIONS.plans.list(d), 'gold', 'plan'), { name: 'platinum', services: ['users'] });
  assert.deepEqual(Object.keys(d['plans'] as Obj), ['platinum', 'silver']);
  assert.equal(code(() => COLLECTIONS.plans.remove(d, findEntry(COLLECTIONS.plans.list(d), 'silver', 'plan'), { cascade: false })), 'none');
  (d['consumers'] as Obj[])[0]!['plan'] = 'platinum';
  assert.equal(code(() => COLLECTIONS.plans.remove(d, findEntry(COLLECTIONS.plans.list(d), 'platinum', 'plan'), { cascade: false })), 'conflict');
  COLLECTIONS.plans.remove(d, findEntry(COLLECTIONS.plans.list(d), 'platinum', 'plan'), { cascade: true });
  assert.equal(d['plans'], undefined);
  assert.equal((d['consumers'] as Obj[])[0]!['plan'], undefined);
});

test('every write above leaves a document the validator accepts, or it names the problem in API terms', () => {
  const d = doc();
  assert.deepEqual(valid(d), { ok: true });
  // a route whose path clashes with another route, written as a route
  const at = COLLECTIONS.routes.create(d, { name: 'clash', service: 'users', paths: ['/orders'], methods: ['GET'] });
  const r = valid(d);
  assert.equal(r.ok, false);
  const errors = apiErrors(d, (r as { errors: { path: string; message: string }[] }).errors, { at, coll: COLLECTIONS.routes });
  assert.deepEqual(errors, [{ path: '(root)', message: 'matches the same requests as routes/orders-api (host *, path /orders); give one of them a method, header or host to tell them apart', pointer: '#' }]);
  // a field of the item; and one elsewhere
  const d2 = doc();
  const at2 = COLLECTIONS.plugins.create(d2, { name: 'rate-limit', service: 'users', config: { limit: 0 } });
  const e2 = apiErrors(d2, (valid(d2) as { errors: { path: string; message: string }[] }).errors, { at: at2, coll: COLLECTIONS.plugins });
  assert.equal(e2[0]!.path, 'config.limit');
  assert.equal(describe(d2, ['consumers', 0, 'credentials', 1, 'password']), 'consumers/acme/credentials/acme%2Fbasic-auth%2Facme.password');
  assert.equal(describe(d2, ['services', 1, 'upstream', 'targets', 0, 'url']), 'upstreams/users.targets[0].url');
  assert.equal(describe(d2, ['plans', 'gold', 'services', 0]), 'plans/gold.services[0]');
  assert.equal(describe(d2, ['services', 0, 'plugins', 1, 'consumer']), 'plugins/service%3Aorders%3Arate-limit%40acme.consumer');
  assert.equal(describe(d2, ['listen']), 'listen');
  assert.deepEqual(parsePath('plans["a.b"].services[0]'), ['plans', 'a.b', 'services', 0]);
  assert.deepEqual(parsePath('(root)'), []);
  assert.equal(parsePath('(syntax)'), null);
});

test('secrets: stripped for export, restored from the stored document when a credential comes back without them', () => {
  const d = doc();
  const stripped = stripSecrets(d);
  assert.deepEqual(secretValues(stripped), []);
  assert.equal(secretValues(d).length, 3);
  assert.equal(JSON.stringify(stripped).includes('secret'), false);
  const next = structuredClone(stripped);
  assert.equal(restoreSecrets(next, d), 3);
  assert.deepEqual(next, d);
  // a changed key is kept as given; an unknown credential is left for validation to refuse
  const changed = structuredClone(stripped);
  ((changed['consumers'] as Obj[])[0]!['credentials'] as Obj[])[0]!['key'] = 'new-key-000000000';
  ((changed['consumers'] as Obj[])[1]!['credentials'] as Obj[])[0]!['id'] = 'other';
  assert.equal(restoreSecrets(changed, d), 1);
  assert.equal(((changed['consumers'] as Obj[])[0]!['credentials'] as Obj[])[0]!['key'], 'new-key-000000000');
  assert.equal(((changed['consumers'] as Obj[])[1]!['credentials'] as Obj[])[0]!['key'], undefined);
});

test('secrets: an exported consumer with two keys, applied back with the first removed, keeps the second key (not the first)', () => {
  const stored: Obj = { consumers: [{ name: 'acme', credentials: [
    { type: 'key-auth', key: 'first-key-AAAAAAAA' },
    { type: 'key-auth', key: 'second-key-BBBBBBBB' },
  ] }] };
  const exported = stripSecrets(stored);
  const creds = (exported['consumers'] as Obj[])[0]!['credentials'] as Obj[];
  creds.shift(); // the operator revokes the first key
  restoreSecrets(exported, stored);
  const kept = ((exported['consumers'] as Obj[])[0]!['credentials'] as Obj[]);
  assert.equal(kept.length, 1);
  assert.equal(kept[0]!['key'], 'second-key-BBBBBBBB');
  assert.equal(kept[0]!['id'], 'acme/key-auth/2', 'it keeps its identity (X-Credential-Identifier)');
  // Unchanged, an export applied back is the stored document itself.
  const same = stripSecrets(stored);
  restoreSecrets(same, stored);
  assert.deepEqual(same, stored);
});
