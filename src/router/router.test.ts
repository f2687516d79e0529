import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Router, hostName, type RouteSpec } from './router.js';
import { normalizePath } from './path.js';

const specs: RouteSpec<string>[] = [
  { paths: ['/'], data: 'root' },
  { paths: ['/orders'], data: 'orders' },
  { paths: ['/orders/{id}'], data: 'order-by-id' },
  { paths: ['/orders/special'], data: 'orders-special' },
  { paths: ['/orders/{id}/items'], methods: ['GET'], data: 'order-items-get' },
  { paths: ['/orders/{id}/items'], data: 'order-items-any' },
  { paths: ['/api'], hosts: ['api.example.com'], data: 'api-exact' },
  { paths: ['/api'], hosts: ['*.example.com'], data: 'api-wild' },
  { paths: ['/api'], hosts: ['*.eu.example.com'], data: 'api-wild-eu' },
  { paths: ['/api'], data: 'api-any' },
  { paths: ['/v'], headers: { 'x-version': '2' }, data: 'v2' },
  { paths: ['/v'], headers: { 'x-version': ['3', '4'], 'x-beta': 'yes' }, data: 'v34-beta' },
  { paths: ['/v'], data: 'v-default' },
  { paths: ['/write'], methods: ['POST', 'PUT'], data: 'write' },
  { paths: ['/only-host'], hosts: ['only.example.com'], data: 'only-host' },
  { paths: ['/users/{uid}/posts/{pid}'], data: 'user-post' },
];

const router = new Router(specs);

// [method, host, path, headers, expected route or status, expected params]
const table: [string, string, string, Record<string, string>, string, Record<string, string>?][] = [
  ['GET', 'x', '/', {}, 'root'],
  ['GET', 'x', '/unknown', {}, 'root'],
  ['GET', 'x', '/orders', {}, 'orders'],
  ['GET', 'x', '/orders/', {}, 'orders'],
  ['GET', 'x', '/ordersX', {}, 'root'], // prefix only on segment boundaries
  ['GET', 'x', '/orders/7', {}, 'order-by-id', { id: '7' }],
  ['GET', 'x', '/orders/7/other', {}, 'order-by-id', { id: '7' }],
  ['GET', 'x', '/orders/special', {}, 'orders-special'], // literal beats {param}
  ['GET', 'x', '/orders/special/x', {}, 'orders-special'],
  ['GET', 'x', '/orders/7/items', {}, 'order-items-get', { id: '7' }], // method-specific first
  ['POST', 'x', '/orders/7/items', {}, 'order-items-any', { id: '7' }],
  ['GET', 'x', '/orders/special/items', {}, 'orders-special'], // leftmost literal wins
  ['GET', 'x', '/orders//items', {}, 'orders'], // an empty segment is not a {param}
  ['GET', 'api.example.com', '/api', {}, 'api-exact'],
  ['GET', 'www.example.com', '/api', {}, 'api-wild'],
  ['GET', 'a.b.example.com', '/api', {}, 'api-wild'],
  ['GET', 'x.eu.example.com', '/api', {}, 'api-wild-eu'], // longer wildcard suffix wins
  ['GET', 'example.com', '/api', {}, 'api-any'], // *.example.com needs a subdomain
  ['GET', 'other.org', '/api', {}, 'api-any'],
  ['GET', 'api.example.com', '/orders', {}, 'orders'], // falls through the host classes
  ['GET', 'x', '/v', { 'x-version': '2' }, 'v2'],
  ['GET', 'x', '/v', { 'x-version': '3', 'x-beta': 'yes' }, 'v34-beta'], // more header matches first
  ['GET', 'x', '/v', { 'x-version': '3' }, 'v-default'],
  ['GET', 'x', '/v', {}, 'v-default'],
  ['PUT', 'x', '/write', {}, 'write'],
  ['GET', 'x', '/write', {}, 'root'], // a less specific route still serves other methods
  ['GET', 'only.example.com', '/only-host', {}, 'only-host'],
  ['GET', 'x', '/only-host', {}, 'root'],
  ['GET', 'x', '/users/u1/posts/p9/c', {}, 'user-post', { uid: 'u1', pid: 'p9' }],
];

test('router conformance table', () => {
  for (const [method, host, path, headers, want, params] of table) {
    const m = router.match(method, host, path, headers);
    assert.ok(m && 'data' in m, `${method} ${host}${path}: no match`);
    assert.equal(m.data, want, `${method} ${host}${path}`);
    if (params) assert.deepEqual(m.params, params, `${method} ${host}${path} params`);
  }
});

test('405 when the path matches only routes of other methods; 404 when nothing matches', () => {
  const r = new Router<string>([
    { paths: ['/w'], methods: ['POST', 'PUT'], data: 'w' },
    { paths: ['/r'], methods: ['GET'], data: 'r' },
  ]);
  assert.deepEqual(r.match('GET', 'x', '/w/1', {}), { methodNotAllowed: ['POST', 'PUT'] });
  assert.equal(r.match('GET', 'x', '/nothing', {}), null);
});

test('HEAD is served by a route listing GET (RFC 9110 §9.1, §9.3.2); one listing HEAD itself wins; Allow names HEAD with GET', () => {
  const r = new Router<string>([
    { paths: ['/g'], methods: ['GET'], data: 'get' },
    { paths: ['/g'], data: 'any' },
    { paths: ['/only-get'], methods: ['GET'], data: 'only-get' },
    { paths: ['/h'], methods: ['GET'], data: 'h-get' },
    { paths: ['/h'], methods: ['HEAD'], data: 'h-head' },
    { paths: ['/p'], methods: ['POST'], data: 'post' },
  ]);
  const name = (m: string, p: string) => { const x = r.match(m, 'h', p, {}); return x && 'data' in x ? x.data : x; };
  assert.equal(name('HEAD', '/only-get/x'), 'only-get');
  assert.equal(name('HEAD', '/g'), 'get'); // as GET /g would go
  assert.equal(name('POST', '/g'), 'any');
  assert.equal(name('HEAD', '/h'), 'h-head');
  assert.equal(name('GET', '/h'), 'h-get');
  assert.deepEqual(r.match('HEAD', 'h', '/p', {}), { methodNotAllowed: ['POST'] });
  assert.deepEqual(r.match('DELETE', 'h', '/only-get', {}), { methodNotAllowed: ['GET', 'HEAD'] });
});

test('prefixLength covers exactly the matched segments (strip_path)', () => {
  const r = new Router<string>([{ paths: ['/a/{x}'], data: 'a' }]);
  const m = r.match('GET', 'h', '/a/b/c/d', {});
  assert.ok(m && 'data' in m);
  assert.equal('/a/b/c/d'.slice(m.prefixLength), '/c/d');
  const m2 = r.match('GET', 'h', '/a/b', {});
  assert.ok(m2 && 'data' in m2);
  assert.equal('/a/b'.slice(m2.prefixLength), '');
});

test('identical routes are reported as conflicts; distinguishable ones are not', () => {
  const r = new Router<number>([
    { paths: ['/x'], data: 0 },
    { paths: ['/x/'], data: 1 }, // same as /x
    { paths: ['/x'], methods: ['GET'], data: 2 }, // more specific: fine
    { paths: ['/x'], methods: ['GET', 'POST'], data: 3 }, // overlaps 2 on GET
    { paths: ['/x'], headers: { a: 'b' }, data: 4 },
    { paths: ['/x'], hosts: ['h.example'], data: 5 },
  ]);
  assert.deepEqual(r.conflicts.map((c) => [c.a, c.b]), [[0, 1], [2, 3]]);
});

test('hostName lower-cases and strips ports and a trailing dot', () => {
  assert.equal(hostName('API.Example.COM:8080'), 'api.example.com');
  assert.equal(hostName('[::1]:80'), '[::1]');
  assert.equal(hostName('example.com.'), 'example.com');
});

test('a route host written fully qualified (a trailing dot) matches its requests: they are matched without the dot', () => {
  const r = new Router<string>([
    { paths: ['/'], hosts: ['Admin.Example.com.'], data: 'admin' },
    { paths: ['/'], hosts: ['*.internal.example.com.'], data: 'internal' },
    { paths: ['/'], data: 'public' },
  ]);
  // (hostName is what request.ts hands the router: `admin.example.com.` and `...:443` alike)
  for (const host of ['admin.example.com', 'ADMIN.example.com.', 'admin.example.com.:443']) {
    const m = r.match('GET', hostName(host), '/', {});
    assert.equal(m && 'data' in m && m.data, 'admin', host);
  }
  const w = r.match('GET', hostName('db.internal.example.com.'), '/', {});
  assert.equal(w && 'data' in w && w.data, 'internal');
  const o = r.match('GET', hostName('other.example.com'), '/', {});
  assert.equal(o && 'data' in o && o.data, 'public');
});

test('path normalization: dot segments and percent-encoding', () => {
  const cases: [string, string | null][] = [
    ['/a/b', '/a/b'],
    ['/a/./b', '/a/b'],
    ['/a/../b', '/b'],
    ['/public/../admin', '/admin'],
    ['/../../etc/passwd', '/etc/passwd'],
    ['/a/%2e%2e/b', '/b'],
    ['/%61dmin', '/admin'],
    ['/a%2fb', '/a%2Fb'], // an encoded slash stays encoded: it is not a segment boundary
    ['/a/b/..', '/a/'],
    ['/a%zz', null],
    ['/a%2', null],
    ['/admin%00', null], // NUL ends the path for servers in C
    ['/a%000', null],
    ['/a\\b', null], // a backslash is ambiguous (some servers read it as /)
    ['/x/..%2Fy', null], // a dot segment hidden behind an encoded slash
    ['/x/..;/y', null], // ... or behind a ;param (Tomcat)
    ['/x/a.b%2Fc', '/x/a.b%2Fc'], // an encoded slash alone is kept
  ];
  for (const [input, want] of cases) assert.equal(normalizePath(input), want, input);
  const r = new Router<string>([{ paths: ['/public'], data: 'public' }, { paths: ['/admin'], data: 'admin' }]);
  const m = r.match('GET', 'h', normalizePath('/public/%2e%2e/admin')!, {});
  assert.ok(m && 'data' in m);
  assert.equal(m.data, 'admin');
});

test('a node with one literal child matches that segment exactly, not a prefix of it; a second child turns it into a map', () => {
  const r = new Router<string>([{ paths: ['/a/post'], data: 'post' }, { paths: ['/b/{x}/y'], data: 'by' }]);
  const name = (p: string) => { const m = r.match('GET', 'h', p, {}); return m && 'data' in m ? m.data : null; };
  assert.equal(name('/a/post'), 'post');
  assert.equal(name('/a/post/more'), 'post');
  assert.equal(name('/a/posts'), null);
  assert.equal(name('/a/pos'), null);
  assert.equal(name('/a/'), null);
  assert.equal(name('/b/1/y'), 'by');
  assert.equal(name('/b/1/yy'), null);
  const r2 = new Router<string>([{ paths: ['/a/post'], data: 'post' }, { paths: ['/a/page'], data: 'page' }, { paths: ['/a/post/{id}'], data: 'one' }]);
  const m = (p: string) => { const x = r2.match('GET', 'h', p, {}); return x && 'data' in x ? [x.data, x.params] : null; };
  assert.deepEqual(m('/a/post'), ['post', null]);
  assert.deepEqual(m('/a/page'), ['page', null]);
  assert.deepEqual(m('/a/post/7'), ['one', { id: '7' }]);
  assert.equal(m('/a/pag'), null);
});

test('caseVariant / match(..., fold): a segment in another case than a route literal, and the route a case-insensitive server would read it as', () => {
  const r = new Router<string>([
    { paths: ['/'], data: 'root' },
    { paths: ['/admin'], data: 'admin' },
    { paths: ['/Reports/{id}'], data: 'reports' },
    { paths: ['/pkg.Echo'], data: 'grpc' },
  ]);
  const folded = (p: string) => { const m = r.match('GET', 'x', p, {}, true); return m && 'data' in m ? m.data : null; };
  assert.equal(r.caseVariant('/ADMIN/x'), true);
  assert.equal(folded('/ADMIN/x'), 'admin');
  // a route literal with capitals: the lower-case path is a variant of it too
  assert.equal(r.caseVariant('/reports/7'), true);
  assert.equal(folded('/reports/7'), 'reports');
  // spelled as the route's own literal, or naming no literal: nothing to fold
  for (const p of ['/admin', '/Reports/ABC', '/pkg.Echo/Say', '/Other/Thing', '/']) assert.equal(r.caseVariant(p), false, p);
  // no literal with letters at all: never (a router of `/` and params only)
  const plain = new Router<string>([{ paths: ['/'], data: 'root' }, { paths: ['/{id}'], data: 'id' }]);
  assert.equal(plain.caseVariant('/ABC'), false);
});

test('match(..., fold): a segment spelled as one of several literals that differ only in case folds to its own (routes /Users and /users are two routes, neither ambiguous)', () => {
  const r = new Router<string>([
    { paths: ['/'], data: 'root' },
    { paths: ['/Users'], data: 'upper' },
    { paths: ['/users'], data: 'lower' },
    { paths: ['/v1/Items/{id}'], data: 'items-upper' },
    { paths: ['/v1/items/{id}'], data: 'items-lower' },
  ]);
  const folded = (p: string) => { const m = r.match('GET', 'x', p, {}, true); return m && 'data' in m ? m.data : null; };
  assert.equal(folded('/users'), 'lower');
  assert.equal(folded('/Users'), 'upper');
  assert.equal(folded('/v1/items/7'), 'items-lower');
  assert.equal(folded('/v1/Items/7'), 'items-upper');
});
