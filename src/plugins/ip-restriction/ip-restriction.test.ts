/** ip-restriction end to end: gateways in-process (IPv4, IPv6, dual stack), a real upstream, loopback sockets. */
import { configIssues as issuesOf } from '../../../test/helpers.js';
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { parseConfigText } from '../../config/load.js';
import { compile } from '../../config/compile.js';
import { ConfigError } from '../../config/errors.js';
import { PoolRegistry } from '../../upstream/pools.js';
import { request, startGateway, startUpstream, type SimpleResponse, type TestGateway, type TestUpstream } from '../../../test/helpers.js';

const T = { timeout: 15_000 };
const ALICE_KEY = 'alice-key-0001';
const BOB_KEY = 'bob-key-00002';

let up: TestUpstream;
let t: TestGateway;
/** The same routes behind `trusted_proxies: [127.0.0.1]`. */
let tp: TestGateway;

const routes = () => `consumers:
  - name: alice
    credentials: [{type: key-auth, key: '${ALICE_KEY}'}]
    plugins: [{name: ip-restriction, config: {deny: [127.0.0.1]}}]
  - name: bob
    credentials: [{type: key-auth, key: '${BOB_KEY}'}]
services:
  - name: s
    url: ${up.url}
    routes:
      - {name: allow-lo, paths: [/allow-lo], plugins: [{name: ip-restriction, config: {allow: [127.0.0.1/32]}}]}
      - {name: deny-lo, paths: [/deny-lo], plugins: [{name: ip-restriction, config: {deny: [127.0.0.0/8]}}]}
      - {name: allow-ten, paths: [/allow-ten], plugins: [{name: ip-restriction, config: {allow: [10.0.0.0/8]}}]}
      - {name: both, paths: [/both], plugins: [{name: ip-restriction, config: {allow: [127.0.0.0/8], deny: [127.0.0.1]}}]}
      - {name: mapped-rule, paths: [/mapped-rule], plugins: [{name: ip-restriction, config: {allow: ['::ffff:127.0.0.0/104']}}]}
      - {name: v6-only, paths: [/v6-only], plugins: [{name: ip-restriction, config: {allow: ['::1/128', '2001:db8::/32']}}]}
      - {name: hidden, paths: [/hidden], plugins: [{name: ip-restriction, config: {deny: [127.0.0.1], status: 404}}]}
      - {name: message, paths: [/message], plugins: [{name: ip-restriction, config: {deny: [127.0.0.1], message: office network only}}]}
      - {name: auth-deny, paths: [/auth-deny], plugins: [{name: key-auth}, {name: ip-restriction, config: {deny: [127.0.0.1]}}]}
      - {name: auth, paths: [/auth], plugins: [{name: key-auth}]}
      - {name: no-v6, paths: [/no-v6], plugins: [{name: ip-restriction, config: {deny: ['::/0']}}]}
      - {name: any-v6, paths: [/any-v6], plugins: [{name: ip-restriction, config: {allow: ['::/0']}}]}
      - {name: any-v4, paths: [/any-v4], plugins: [{name: ip-restriction, config: {allow: [0.0.0.0/0]}}]}
      - {name: ten-noncanon, paths: [/ten-noncanon], plugins: [{name: ip-restriction, config: {allow: [10.0.0.1/8, '2001:db8::1/128']}}]}
`;

before(async () => {
  up = await startUpstream();
  t = await startGateway(routes());
  tp = await startGateway(`trusted_proxies: [127.0.0.1]\n${routes()}`);
});
after(async () => {
  await t?.close();
  await tp?.close();
  await up?.close();
});

function assertRefused(r: SimpleResponse, detail = /your IP address is not allowed/): void {
  assert.equal(r.status, 403, r.body);
  assert.equal(r.headers['content-type'], 'application/problem+json');
  const p = JSON.parse(r.body) as { type: string; status: number; detail: string };
  assert.equal(p.type, 'urn:turnpike:problem:forbidden');
  assert.equal(p.status, 403);
  assert.match(p.detail, detail);
}

test('allow 127.0.0.1/32 lets a loopback client through; allow 10.0.0.0/8 refuses it', T, async () => {
  const ok = await request(`${t.url}/allow-lo`);
  assert.equal(ok.status, 200, ok.body);
  const before = up.requests.length;
  assertRefused(await request(`${t.url}/allow-ten`));
  assert.equal(up.requests.length, before, 'the upstream was called for a refused client');
});

test('deny 127.0.0.0/8: 403 problem, upstream not called; deny wins over allow', T, async () => {
  const before = up.requests.length;
  assertRefused(await request(`${t.url}/deny-lo`));
  assertRefused(await request(`${t.url}/both`));
  assert.equal(up.requests.length, before);
});

test('status 404 answers like an unknown route; message sets the detail', T, async () => {
  const h = await request(`${t.url}/hidden/x`);
  assert.equal(h.status, 404, h.body);
  const p = JSON.parse(h.body) as { type: string; detail: string };
  assert.equal(p.type, 'urn:turnpike:problem:no-route');
  assert.equal(p.detail, 'no route matches GET /hidden/x');
  const unknown = JSON.parse((await request(`${t.url}/nowhere/x`)).body) as { type: string; detail: string };
  assert.equal(unknown.type, p.type);

  assertRefused(await request(`${t.url}/message`), /^office network only$/);
});

test('X-Forwarded-For from an untrusted peer is ignored: spoofing 10.1.2.3 does not pass allow [10.0.0.0/8]', T, async () => {
  const before = up.requests.length;
  for (const xff of ['10.1.2.3', '10.1.2.3, 10.9.9.9', '::ffff:10.1.2.3']) {
    assertRefused(await request(`${t.url}/allow-ten`, { headers: { 'x-forwarded-for': xff } }));
  }
  // Nor any other field claiming a client address.
  assertRefused(await request(`${t.url}/allow-ten`, { headers: { 'x-real-ip': '10.1.2.3', forwarded: 'for=10.1.2.3', 'true-client-ip': '10.1.2.3', 'x-client-ip': '10.1.2.3' } }));
  // And the peer (127.0.0.1) is still judged: deny 127.0.0.0/8 refuses whatever XFF says.
  assertRefused(await request(`${t.url}/deny-lo`, { headers: { 'x-forwarded-for': '192.0.2.1' } }));
  assert.equal(up.requests.length, before);
});

test('from a trusted proxy, the X-Forwarded-For client is the one judged', T, async () => {
  const ok = await request(`${tp.url}/allow-ten`, { headers: { 'x-forwarded-for': '10.1.2.3' } });
  assert.equal(ok.status, 200, ok.body);
  // IPv4-mapped, dotted or hex: the IPv4 address it carries.
  for (const xff of ['::ffff:10.1.2.3', '::FFFF:a01:203', '[::ffff:10.1.2.3]:4711']) {
    const r = await request(`${tp.url}/allow-ten`, { headers: { 'x-forwarded-for': xff } });
    assert.equal(r.status, 200, `${xff}: ${r.body}`);
  }
  // The right-most untrusted address counts: what the client put in front of it does not.
  assertRefused(await request(`${tp.url}/allow-ten`, { headers: { 'x-forwarded-for': '10.1.2.3, 203.0.113.7' } }));
  // The loopback proxy itself is no longer the client.
  const viaProxy = await request(`${tp.url}/deny-lo`, { headers: { 'x-forwarded-for': '203.0.113.7' } });
  assert.equal(viaProxy.status, 200, viaProxy.body);
  assertRefused(await request(`${tp.url}/deny-lo`, { headers: { 'x-forwarded-for': '127.0.0.5' } }));
  // No XFF: the peer.
  assertRefused(await request(`${tp.url}/allow-ten`));
});

test('an IPv6 rule in IPv4-mapped form matches IPv4 clients', T, async () => {
  const r = await request(`${t.url}/mapped-rule`);
  assert.equal(r.status, 200, r.body);
  assertRefused(await request(`${tp.url}/mapped-rule`, { headers: { 'x-forwarded-for': '10.1.2.3' } }));
});

test("/0 rules are per family (as nginx, Kong): '::/0' is every IPv6 client, not every IPv4 one; 0.0.0.0/0 every IPv4 client, no IPv6 one; non-canonical CIDRs are their network", T, async () => {
  const from = (path: string, xff: string) => request(`${tp.url}${path}`, { headers: { 'x-forwarded-for': xff } });
  // deny ::/0 ("no IPv6 clients") must not lock out IPv4 ones (plain, or IPv4-mapped)
  for (const ip of ['10.1.2.3', '::ffff:10.1.2.3']) assert.equal((await from('/no-v6', ip)).status, 200, ip);
  assert.equal((await request(`${t.url}/no-v6`)).status, 200, 'the loopback peer 127.0.0.1');
  for (const ip of ['2001:db8::7', '::1']) assertRefused(await from('/no-v6', ip));
  assert.equal((await from('/any-v6', '2001:db8::7')).status, 200);
  assertRefused(await from('/any-v6', '10.1.2.3'));
  assert.equal((await from('/any-v4', '198.51.100.9')).status, 200);
  assert.equal((await from('/any-v4', '::ffff:198.51.100.9')).status, 200);
  assertRefused(await from('/any-v4', '2001:db8::7'));
  for (const ip of ['10.0.0.1', '10.255.1.2', '2001:db8::1']) assert.equal((await from('/ten-noncanon', ip)).status, 200, ip);
  for (const ip of ['11.0.0.1', '2001:db8::2']) assertRefused(await from('/ten-noncanon', ip));
});

test('runs before authentication: a refused client gets 403 without a key, not 401', T, async () => {
  const before = up.requests.length;
  assertRefused(await request(`${t.url}/auth-deny`));
  assertRefused(await request(`${t.url}/auth-deny`, { headers: { apikey: BOB_KEY } }));
  assert.equal(up.requests.length, before);
});

test('bound to a consumer: applied once that consumer is authenticated', T, async () => {
  assertRefused(await request(`${t.url}/auth`, { headers: { apikey: ALICE_KEY } }));
  const bob = await request(`${t.url}/auth`, { headers: { apikey: BOB_KEY } });
  assert.equal(bob.status, 200, bob.body);
  // The same consumer from an address outside the rule passes (behind the trusted proxy).
  const alice = await request(`${tp.url}/auth`, { headers: { apikey: ALICE_KEY, 'x-forwarded-for': '198.51.100.4' } });
  assert.equal(alice.status, 200, alice.body);
});

/** Whether this machine can listen on an address (IPv6 may be disabled in containers). */
function canListen(host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(0, host, () => s.close(() => resolve(true)));
  });
}

test('an IPv6 client (::1)', T, async (tc) => {
  if (!(await canListen('::1'))) return tc.skip('no IPv6 loopback on this machine');
  const g = await startGateway(`listen: '[::1]:0'\n${routes()}`);
  try {
    const base = `http://[::1]:${g.port}`;
    const ok = await request(`${base}/v6-only`);
    assert.equal(ok.status, 200, ok.body);
    assert.match(String((JSON.parse(ok.body) as { headers: Record<string, string> }).headers['x-forwarded-for']), /^::1$/);
    // IPv4 rules do not match it; a deny on 127.0.0.1 does not either.
    assertRefused(await request(`${base}/allow-lo`));
    assertRefused(await request(`${base}/allow-ten`));
    assert.equal((await request(`${base}/deny-lo`)).status, 200);
    // And an IPv4 client is not in ::1/128.
    assertRefused(await request(`${t.url}/v6-only`));
  } finally {
    await g.close();
  }
});

test('a dual-stack listener ([::]): an IPv4 client (peer ::ffff:127.0.0.1) is judged as 127.0.0.1', T, async (tc) => {
  if (!(await canListen('::'))) return tc.skip('no IPv6 on this machine');
  const g = await startGateway(`listen: '[::]:0'\n${routes()}`);
  try {
    const base = `http://127.0.0.1:${g.port}`;
    const ok = await request(`${base}/allow-lo`);
    assert.equal(ok.status, 200, ok.body);
    assert.equal((JSON.parse(ok.body) as { headers: Record<string, string> }).headers['x-forwarded-for'], '127.0.0.1');
    assertRefused(await request(`${base}/deny-lo`));
    assert.equal((await request(`${base}/mapped-rule`)).status, 200);
    assertRefused(await request(`${base}/v6-only`));
  } finally {
    await g.close();
  }
});

// ---- config errors -------------------------------------------------------------------------


const withRule = (cfg: string) => `services:
  - name: s
    url: http://127.0.0.1:9
    routes:
      - name: r
        paths: [/r]
        plugins:
          - name: ip-restriction
            config: ${cfg}
`;

test('config: bad CIDRs are named by list and index; one list is required', T, () => {
  let issues = issuesOf(withRule(`{allow: [10.0.0.0/8, 10.0.0.0/33, '2001:db8::/129', ::1, nonsense, 1.2.3.4/8/1, '010.0.0.1', 192.168.0.0/], deny: [ok, '::1']}`));
  const at = 'services[0].routes[0].plugins[0].config';
  assert.deepEqual(issues.map((i) => [i.path, i.message]), [
    [at, 'allow[1]: invalid CIDR "10.0.0.0/33"'],
    [at, 'allow[2]: invalid CIDR "2001:db8::/129"'],
    [at, 'allow[4]: invalid CIDR "nonsense"'],
    [at, 'allow[5]: invalid CIDR "1.2.3.4/8/1"'],
    [at, 'allow[6]: invalid CIDR "010.0.0.1"'],
    [at, 'allow[7]: invalid CIDR "192.168.0.0/"'],
    [at, 'deny[0]: invalid CIDR "ok"'],
  ]);

  issues = issuesOf(withRule('{status: 403}'));
  assert.equal(issues.length, 1, JSON.stringify(issues));
  assert.match(issues[0]!.message, /allow or deny/);

  issues = issuesOf(withRule('{deny: [10.0.0.0/8], status: 500}'));
  assert.ok(issues.some((i) => i.path === `${at}.status`), JSON.stringify(issues));

  assert.deepEqual(issuesOf(withRule(`{allow: ['::ffff:10.0.0.0/104', 'fe80::/10', 0.0.0.0/0], deny: [10.1.2.3/32]}`)), []);
});
