/** acl end to end: key-auth consumers in groups, a gateway in-process, a real upstream, loopback sockets. */
import { configIssues as issuesOf } from '../../../test/helpers.js';
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfigText } from '../../config/load.js';
import { compile } from '../../config/compile.js';
import { ConfigError } from '../../config/errors.js';
import { PoolRegistry } from '../../upstream/pools.js';
import { Type } from '@sinclair/typebox';
import { registerPlugin } from '../registry.js';
import { definePlugin, type PluginDef } from '../types.js';
import { request, startGateway, startUpstream, type SimpleResponse, type TestGateway, type TestUpstream } from '../../../test/helpers.js';

const T = { timeout: 15_000 };
const KEYS = { alice: 'alice-key-0001', bob: 'bob-key-00002', carol: 'carol-key-0003', dave: 'dave-key-00004' };

/** An auth plugin that vouches for an identity without a consumer (like jwt without require_consumer). */
registerPlugin(definePlugin({
  name: 'test-idp-identity',
  priority: 1300,
  description: 'test: authenticates x-test-identity as an identity without a consumer',
  schema: Type.Object({}),
  scopes: ['route'],
  create() {
    return {
      authenticate(ctx) {
        const id = ctx.header('x-test-identity');
        return id ? { ok: true, consumer: null, identity: id, credential: 'idp' } : { ok: false, missing: true, challenge: 'Test' };
      },
    };
  },
}) as PluginDef);

let up: TestUpstream;
let t: TestGateway;

const config = () => `consumers:
  - name: alice
    groups: [admins, dev]
    credentials: [{type: key-auth, key: '${KEYS.alice}'}]
  - name: bob
    groups: [dev]
    credentials: [{type: key-auth, key: '${KEYS.bob}'}]
  - name: carol
    groups: [dev, banned]
    credentials: [{type: key-auth, key: '${KEYS.carol}'}]
  - name: dave
    credentials: [{type: key-auth, key: '${KEYS.dave}'}]
  - name: guest
    groups: [public]
services:
  - name: s
    url: ${up.url}
    routes:
      - {name: admins, paths: [/admins], plugins: [{name: key-auth}, {name: acl, config: {allow: [admins]}}]}
      - {name: devs, paths: [/devs], plugins: [{name: key-auth}, {name: acl, config: {allow: [dev, admins]}}]}
      - {name: nobanned, paths: [/nobanned], plugins: [{name: key-auth}, {name: acl, config: {deny: [banned]}}]}
      - {name: both, paths: [/both], plugins: [{name: key-auth}, {name: acl, config: {allow: [dev], deny: [banned]}}]}
      - {name: hidden, paths: [/hidden], plugins: [{name: key-auth}, {name: acl, config: {allow: [dev], hide_groups_header: true}}]}
      - {name: noauth, paths: [/noauth], plugins: [{name: acl, config: {allow: [dev]}}]}
      - {name: anon-public, paths: [/anon-public], plugins: [{name: key-auth, config: {anonymous: guest}}, {name: acl, config: {allow: [public, dev]}}]}
      - {name: anon-devs, paths: [/anon-devs], plugins: [{name: key-auth, config: {anonymous: guest}}, {name: acl, config: {allow: [dev]}}]}
      - {name: idp-allow, paths: [/idp-allow], plugins: [{name: test-idp-identity}, {name: acl, config: {allow: [dev]}}]}
      - {name: idp-deny, paths: [/idp-deny], plugins: [{name: test-idp-identity}, {name: acl, config: {deny: [banned]}}]}
  - name: svc-acl
    url: ${up.url}
    plugins: [{name: key-auth}, {name: acl, config: {allow: [admins]}}]
    routes:
      - {name: svc-default, paths: [/svc]}
      - {name: svc-override, paths: [/svc-open], plugins: [{name: acl, config: {allow: [dev]}}]}
`;

before(async () => {
  up = await startUpstream();
  t = await startGateway(config());
});
after(async () => {
  await t?.close();
  await up?.close();
});

const get = (path: string, who?: keyof typeof KEYS) => request(`${t.url}${path}`, { headers: who ? { apikey: KEYS[who] } : {} });
const upstreamHeaders = (r: SimpleResponse) => (JSON.parse(r.body) as { headers: Record<string, string | undefined> }).headers;

function assertProblem(r: SimpleResponse, status: number, type: string, detail?: RegExp): void {
  assert.equal(r.status, status, r.body);
  assert.equal(r.headers['content-type'], 'application/problem+json');
  const p = JSON.parse(r.body) as { type: string; status: number; detail: string };
  assert.equal(p.type, `urn:turnpike:problem:${type}`);
  assert.equal(p.status, status);
  if (detail) assert.match(p.detail, detail);
}

test('allow: a consumer in one of the groups passes, others get 403 and the upstream is not called', T, async () => {
  const ok = await get('/admins', 'alice');
  assert.equal(ok.status, 200, ok.body);
  assert.equal(upstreamHeaders(ok)['x-consumer-groups'], 'admins, dev');

  const before = up.requests.length;
  assertProblem(await get('/admins', 'bob'), 403, 'forbidden', /you cannot consume this service/);
  // A consumer without any group is not in an allow list.
  assertProblem(await get('/admins', 'dave'), 403, 'forbidden', /you cannot consume this service/);
  assert.equal(up.requests.length, before, 'the upstream was called for a denied consumer');

  // Any one of several allowed groups is enough.
  for (const who of ['alice', 'bob', 'carol'] as const) assert.equal((await get('/devs', who)).status, 200, who);
  assert.equal((await get('/devs', 'dave')).status, 403);
});

test('deny: a consumer in a denied group gets 403, everyone else (groupless too) passes', T, async () => {
  assertProblem(await get('/nobanned', 'carol'), 403, 'forbidden', /you cannot consume this service/);
  for (const who of ['alice', 'bob', 'dave'] as const) assert.equal((await get('/nobanned', who)).status, 200, who);
});

test('allow and deny: deny wins', T, async () => {
  // carol is in dev (allowed) and banned (denied).
  assertProblem(await get('/both', 'carol'), 403, 'forbidden');
  assert.equal((await get('/both', 'bob')).status, 200);
  assert.equal((await get('/both', 'alice')).status, 200);
  assertProblem(await get('/both', 'dave'), 403, 'forbidden');
});

test('authentication comes first: no key is key-auth\'s 401, not the acl\'s 403', T, async () => {
  const r = await get('/admins');
  assertProblem(r, 401, 'unauthorized');
  assert.equal(r.headers['www-authenticate'], 'Key realm="turnpike"');
});

test('a route with acl and no authentication: 401 problem as Kong (nobody authenticated, no credential), no WWW-Authenticate (no scheme to offer), upstream not called', T, async () => {
  const before = up.requests.length;
  const r = await get('/noauth');
  assertProblem(r, 401, 'unauthorized', /no consumer was identified/);
  assert.equal(r.headers['www-authenticate'], undefined);
  // A key is meaningless there (no auth plugin reads it).
  assertProblem(await get('/noauth', 'alice'), 401, 'unauthorized');
  assert.equal(up.requests.length, before);
});

test('the anonymous consumer is judged by its own groups; refused, it is a 401 with the route\'s challenge (a credential could let the caller in), an identified consumer a 403', T, async () => {
  const a = await get('/anon-public');
  assert.equal(a.status, 200, a.body);
  assert.equal(upstreamHeaders(a)['x-consumer-name'], 'guest');
  const before = up.requests.length;
  const anon = await get('/anon-devs');
  assertProblem(anon, 401, 'unauthorized', /anonymous callers cannot consume this service/);
  assert.equal(anon.headers['www-authenticate'], 'Key realm="turnpike"');
  // A key that is not valid falls back to the anonymous consumer: 401 too.
  const bad = await request(`${t.url}/anon-devs`, { headers: { apikey: 'no-such-key-000' } });
  assertProblem(bad, 401, 'unauthorized', /anonymous callers/);
  assert.equal(bad.headers['www-authenticate'], 'Key realm="turnpike"');
  // A real key still authenticates as its consumer; identified and not allowed: 403.
  assert.equal((await get('/anon-devs', 'bob')).status, 200);
  const dave = await get('/anon-devs', 'dave');
  assertProblem(dave, 403, 'forbidden', /you cannot consume this service/);
  assert.equal(dave.headers['www-authenticate'], undefined);
  assert.equal(up.requests.length, before + 1, 'only bob reached the upstream');
});

test('an identity without a consumer (no groups known): 403 with allow and with deny (Kong)', T, async () => {
  for (const path of ['/idp-allow', '/idp-deny']) {
    const before = up.requests.length;
    assertProblem(await request(`${t.url}${path}`, { headers: { 'x-test-identity': 'someone' } }), 403, 'forbidden', /you cannot consume this service/);
    assert.equal(up.requests.length, before);
    // Not authenticated at all: the auth plugin's 401.
    assertProblem(await request(`${t.url}${path}`), 401, 'unauthorized');
  }
});

test('hide_groups_header: the groups do not go upstream', T, async () => {
  const r = await get('/hidden', 'alice');
  assert.equal(r.status, 200, r.body);
  const h = upstreamHeaders(r);
  assert.equal(h['x-consumer-groups'], undefined);
  assert.equal(h['x-consumer-name'], 'alice');
  // A client's own copy is stripped as always.
  const s = await request(`${t.url}/hidden`, { headers: { apikey: KEYS.bob, 'x-consumer-groups': 'admins' } });
  assert.equal(s.status, 200, s.body);
  assert.equal(upstreamHeaders(s)['x-consumer-groups'], undefined);
});

test('hide_groups_header with a renamed groups header (consumer_headers.groups)', { ...T }, async () => {
  const g = await startGateway(`consumer_headers: {groups: X-Roles}
consumers:
  - name: alice
    groups: [dev]
    credentials: [{type: key-auth, key: '${KEYS.alice}'}]
services:
  - name: s
    url: ${up.url}
    routes:
      - {name: hidden, paths: [/hidden], plugins: [{name: key-auth}, {name: acl, config: {allow: [dev], hide_groups_header: true}}]}
`);
  try {
    const r = await request(`${g.url}/hidden`, { headers: { apikey: KEYS.alice } });
    assert.equal(r.status, 200, r.body);
    assert.equal(upstreamHeaders(r)['x-roles'], undefined);
  } finally {
    await g.close();
  }
});

test('service binding, and a route binding replacing it', T, async () => {
  assert.equal((await get('/svc', 'alice')).status, 200);
  assertProblem(await get('/svc', 'bob'), 403, 'forbidden');
  // The route's acl (allow dev) replaces the service's (allow admins).
  assert.equal((await get('/svc-open', 'bob')).status, 200);
  assertProblem(await get('/svc-open', 'dave'), 403, 'forbidden');
});

// ---- config errors -------------------------------------------------------------------------


const withAcl = (cfg: string) => `services:
  - name: s
    url: http://127.0.0.1:9
    routes:
      - name: r
        paths: [/r]
        plugins:
          - name: acl
            config: ${cfg}
`;

test('config: allow or deny is required; empty lists, unknown fields and consumer bindings are errors', T, () => {
  let issues = issuesOf(withAcl('{}'));
  assert.equal(issues.length, 1, JSON.stringify(issues));
  assert.equal(issues[0]!.path, 'services[0].routes[0].plugins[0].config');
  assert.match(issues[0]!.message, /allow or deny/);

  issues = issuesOf(withAcl('{allow: []}'));
  assert.equal(issues.length, 1, JSON.stringify(issues));
  assert.equal(issues[0]!.path, 'services[0].routes[0].plugins[0].config.allow');

  issues = issuesOf(withAcl('{allow: [a], whitelist: [b]}'));
  assert.ok(issues.some((i) => i.path === 'services[0].routes[0].plugins[0].config.whitelist'), JSON.stringify(issues));

  assert.deepEqual(issuesOf(withAcl('{allow: [a], deny: [b]}')), []);

  issues = issuesOf(`consumers:
  - name: c
    plugins: [{name: acl, config: {allow: [a]}}]
`);
  assert.equal(issues.length, 1, JSON.stringify(issues));
  assert.match(issues[0]!.message, /cannot be bound to a consumer/);
});

test('config: a group name with a comma (X-Consumer-Groups joins groups with ", ": "ops, admin" would reach the upstream as two), edge whitespace or a control character is an error naming the path and line, in consumers[].groups and acl lists alike', T, () => {
  for (const bad of ['"ops, admin"', '"a,b"', '" ops"', '"ops "', '"a\\tb"', '"a\\nb"']) {
    const issues = issuesOf(`consumers:
  - name: c
    groups: [fine, ${bad}]
`);
    assert.equal(issues.length, 1, `${bad}: ${JSON.stringify(issues)}`);
    assert.equal(issues[0]!.path, 'consumers[0].groups[1]');
    assert.equal(issues[0]!.line, 3);
    assert.match(issues[0]!.message, /no comma/);
    const acl = issuesOf(withAcl(`{allow: [fine], deny: [${bad}]}`));
    assert.equal(acl.length, 1, `${bad}: ${JSON.stringify(acl)}`);
    assert.equal(acl[0]!.path, 'services[0].routes[0].plugins[0].config.deny[0]');
  }
  assert.deepEqual(issuesOf('consumers:\n  - {name: c, groups: [ops admin, "gold-partners", 管理者]}\n'), []);
});
