import test from 'node:test';
import assert from 'node:assert/strict';
import { parseConfigText } from '../config/load.js';
import { compile } from '../config/compile.js';
import { ConfigError } from '../config/errors.js';
import { PoolRegistry } from '../upstream/pools.js';

function issuesOf(text: string, env: NodeJS.ProcessEnv = {}) {
  const pools = new PoolRegistry();
  try {
    compile(parseConfigText(text, { env }), { pools }).dispose();
    return [];
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.issues;
  } finally {
    void pools.closeAll();
  }
}

const services = `services:
  - name: users
    url: http://127.0.0.1:9001
  - name: orders
    url: http://127.0.0.1:9002
`;

const withSteps = (steps: string, extra = '') => `${services}routes:
  - name: profile
    paths: ["/profile/{id}"]
    compose:${extra}
      steps:
${steps}`;

test('the contract example compiles: steps, dependencies, the stand-in service', async () => {
  const text = `${services}  - name: loyalty
    url: http://127.0.0.1:9003
routes:
  - name: profile
    paths: ["/profile/{id}"]
    compose:
      steps:
        - {name: user, service: users, path: "/users/{id}"}
        - {name: orders, service: orders, path: /orders, query: {user: "{id}"}, optional: true, timeout: 300ms}
        - {name: tier, service: loyalty, path: "/tiers/{user.body.tier}"}
        - {name: fx, url: https://rates.example.com/latest, optional: true}
`;
  assert.deepEqual(issuesOf(text), []);
  const pools = new PoolRegistry();
  const snap = compile(parseConfigText(text), { pools });
  try {
    const route = snap.routes.find((r) => r.name === 'profile')!;
    assert.ok(route.compose);
    assert.equal(route.service.name, 'profile');
    assert.equal(route.service.targets.length, 0);
    assert.equal(snap.services.some((s) => s.name === 'profile'), false, 'the stand-in is not a service of the snapshot');
    const [user, orders, tier, fx] = route.compose.steps;
    assert.deepEqual([user!.deps, orders!.deps, tier!.deps, fx!.deps], [[], [], [0], []]);
    assert.deepEqual(route.compose.dependents, [[2], [], [], []]);
    assert.equal(orders!.timeout, 300);
    assert.equal(orders!.optional, true);
    assert.equal(user!.optional, false);
    assert.equal(fx!.url!.origin, 'https://rates.example.com');
    assert.equal(route.compose.timeout, 30_000);
    assert.equal(route.compose.readsBody, false);
    // every ordinary route has compose: null
    const m = snap.router.match('GET', 'x', '/profile/7', {});
    assert.ok(m && 'data' in m && m.data === route);
  } finally {
    snap.dispose();
    await pools.closeAll();
  }
});

test('proxy routes keep compose: null', async () => {
  const pools = new PoolRegistry();
  const snap = compile(parseConfigText(`services:\n  - name: a\n    url: http://127.0.0.1:9001\n    routes: [{name: r, paths: [/a]}]\n`), { pools });
  assert.equal(snap.routes[0]!.compose, null);
  snap.dispose();
  await pools.closeAll();
});

test('config errors name the path and line', () => {
  const issues = issuesOf(withSteps(`        - {name: user, service: nobody, path: "/users/{id}"}
        - {name: user, service: users}
        - {name: tier, service: users, path: "/tiers/{ghost.body.tier}"}
        - {name: both, service: users, url: http://example.com}
        - {name: none}
        - {name: a, service: users, path: "/a/{b.body.x}"}
        - {name: b, service: users, depends_on: [c]}
        - {name: c, service: users, query: {x: "{a.status}"}}
        - {name: p, service: users, method: POST, retries: 2}
        - {name: q, service: users, path: "/x/{uid}"}
        - {name: k, service: users, method: POST, cache: {ttl: 1s}}
        - {name: h, service: users, headers: {Content-Length: "1"}}
        - {name: t, service: users, tls: {ca: ca.pem}}
        - {name: body, service: users}
        - {name: s, url: http://example.com, tls: {ca: /nonexistent/ca.pem}}
`));
  const byPath = (p: string) => issues.filter((i) => i.path === p).map((i) => `${i.line}: ${i.message}`);
  assert.deepEqual(byPath('routes[0].compose.steps[0].service'), ['11: unknown service "nobody"']);
  assert.deepEqual(byPath('routes[0].compose.steps[1].name'), ['12: duplicate step name "user" (also steps[0])']);
  assert.deepEqual(byPath('routes[0].compose.steps[2].path'), ['13: {ghost.body.tier}: names an unknown step "ghost"']);
  assert.deepEqual(byPath('routes[0].compose.steps[3]'), ['14: a step calls either a service or a url, not both']);
  assert.deepEqual(byPath('routes[0].compose.steps[4]'), ['15: a step needs a service or a url']);
  // the cycle a -> b -> c -> a (templates and depends_on together)
  const cycle = issues.find((i) => /dependency cycle/.test(i.message));
  assert.ok(cycle, JSON.stringify(issues));
  assert.match(cycle.message, /dependency cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c) \(each step needs the next\)/);
  assert.match(cycle.path, /^routes\[0\]\.compose\.steps\[(5|6|7)\]$/);
  assert.equal(typeof cycle.line, 'number');
  assert.match(byPath('routes[0].compose.steps[8].retries')[0]!, /^19: POST is not idempotent/);
  assert.match(byPath('routes[0].compose.steps[9].path')[0]!, /^20: \{uid\}: the route's paths capture no parameter "uid" \(they capture: id\)/);
  assert.match(byPath('routes[0].compose.steps[10].cache')[0]!, /only GET and HEAD/);
  assert.match(byPath('routes[0].compose.steps[11].headers.Content-Length')[0]!, /content-length is set by the gateway/);
  assert.match(byPath('routes[0].compose.steps[12].tls')[0]!, /tls applies to url steps/);
  assert.match(byPath('routes[0].compose.steps[13].name')[0]!, /"body" cannot name a step/);
  assert.match(byPath('routes[0].compose.steps[14].tls')[0]!, /tls needs an https:\/\/ url/);
  assert.match(byPath('routes[0].compose.steps[14].tls.ca')[0]!, /cannot read \/nonexistent\/ca\.pem/);
});

test('a step depending on itself, unknown depends_on, keys that collide', () => {
  const issues = issuesOf(withSteps(`        - {name: a, service: users, path: "/a/{a.body.x}"}
        - {name: b, service: users, depends_on: [zzz]}
        - {name: c, service: users, as: a}
        - {name: errors, service: users}
`));
  const msgs = issues.map((i) => `${i.path}: ${i.message}`);
  assert.ok(msgs.includes('routes[0].compose.steps[0]: step "a" depends on itself'), msgs.join('\n'));
  assert.ok(msgs.includes('routes[0].compose.steps[1].depends_on[0]: unknown step "zzz"'), msgs.join('\n'));
  assert.ok(msgs.includes('routes[0].compose.steps[2].as: key "a" is already used by steps[0]'), msgs.join('\n'));
  assert.ok(msgs.some((m) => m.startsWith('routes[0].compose.steps[3].name: "errors" is the key of the failed steps')), msgs.join('\n'));
});

test('timeouts past the longest timer (24d) are config errors, never a timer node fires at once', () => {
  const issues = issuesOf(withSteps(`        - {name: a, service: users, timeout: 30d}
        - {name: b, url: http://example.com, connect_timeout: 25d}
        - {name: c, service: users, timeout: 24d}
`, `
      timeout: 2147483648`));
  const msgs = issues.map((i) => `${i.path}: ${i.message}`).sort();
  const why = 'must be at most 24d (2147483647 ms, the longest timer)';
  assert.deepEqual(msgs, [
    `routes[0].compose.steps[0].timeout: ${why}`,
    `routes[0].compose.steps[1].connect_timeout: ${why}`,
    `routes[0].compose.timeout: ${why}`,
  ]);
});

test('unknown keys and missing compose are schema errors; route names are unique across service and top-level routes', () => {
  const unknown = issuesOf(withSteps(`        - {name: a, service: users, bogus: 1}
`));
  assert.deepEqual(unknown.map((i) => [i.path, i.line, i.message]), [['routes[0].compose.steps[0].bogus', 11, 'unknown key "bogus"']]);
  const noCompose = issuesOf(`${services}routes:\n  - name: x\n    paths: [/x]\n`);
  assert.equal(noCompose.length, 1);
  assert.equal(noCompose[0]!.path, 'routes[0].compose');
  assert.match(noCompose[0]!.message, /required/);
  const dup = issuesOf(`services:
  - name: users
    url: http://127.0.0.1:9001
    routes: [{name: profile, paths: [/u]}]
routes:
  - name: profile
    paths: [/profile]
    compose: {steps: [{name: a, service: users}]}
`);
  assert.deepEqual(dup.map((i) => [i.path, i.message]), [['routes[0].name', 'duplicate route name "profile"']]);
  // a composing route that matches the same requests as a proxy route is a conflict like any other
  const conflict = issuesOf(`services:
  - name: users
    url: http://127.0.0.1:9001
    routes: [{name: u, paths: [/profile]}]
routes:
  - name: profile
    paths: [/profile]
    compose: {steps: [{name: a, service: users}]}
`);
  assert.equal(conflict.length, 1);
  assert.match(conflict[0]!.message, /matches the same requests/);
});

test('merge settings are checked', () => {
  const noKey = issuesOf(withSteps(`        - {name: a, service: users}
`, `
      merge: {mode: by_key}`));
  assert.deepEqual(noKey.map((i) => i.path), ['routes[0].compose.merge.key']);
  const stray = issuesOf(withSteps(`        - {name: a, service: users}
`, `
      merge: {mode: flat, key: id}`));
  assert.deepEqual(stray.map((i) => i.path), ['routes[0].compose.merge']);
});

test('plans may name a composing route among their services', () => {
  assert.deepEqual(issuesOf(withSteps(`        - {name: a, service: users}
`) + `plans:
  gold: {services: [users, profile], routes: [profile]}
`), []);
});

test('a url step\'s TLS material is checked as a service\'s: a CA file with no certificate, a client certificate with the wrong key', async () => {
  const { makeCa } = await import('../../test/certs.js');
  const { writeFileSync } = await import('node:fs');
  const ca = makeCa('Compose CA');
  try {
    const c1 = ca.issue('c1', { client: true });
    const c2 = ca.issue('c2', { client: true });
    const garbage = `${ca.dir}/garbage.pem`;
    writeFileSync(garbage, 'not a certificate\n');
    const issues = issuesOf(withSteps(`        - {name: a, url: https://a.example, tls: {ca: "${garbage}"}}
        - {name: b, url: https://b.example, tls: {ca: "${ca.certFile}", cert: "${c1.certFile}", key: "${c2.keyFile}"}}
        - {name: c, url: https://c.example, tls: {ca: "${ca.certFile}", cert: "${c1.certFile}", key: "${c1.keyFile}"}}
`));
    const byPath = (p: string) => issues.filter((i) => i.path === p).map((i) => i.message);
    assert.match(byPath('routes[0].compose.steps[0].tls.ca')[0] ?? '', /holds no PEM certificate/);
    assert.match(byPath('routes[0].compose.steps[1].tls.cert')[0] ?? '', /does not load.*mismatch/i);
    assert.deepEqual(issues.filter((i) => i.path.startsWith('routes[0].compose.steps[2]')), []);
    assert.equal(issues.length, 2, JSON.stringify(issues));
  } finally {
    ca.cleanup();
  }
});
