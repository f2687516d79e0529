/** AccountService in process, with an in-memory document as its store (the CLI-level tests: test/portal-accounts.test.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AccountService, type AccountRequest } from './accounts.js';
import type { PortalSettings } from './catalog.js';
import { hashPasswordAsync, parseHash } from '../plugins/basic-auth/hash.js';

const settings: PortalSettings = {
  base: '/portal', hosts: null, title: 'Portal', description: '', apis: [],
  accounts: { defaultPlan: null, plans: [], approval: 'auto', planApproval: 'auto', secret: 'unit-secret-0123456789abcdefghij', sessionTtlMs: 3_600_000, maxKeys: 3, signupsPerHour: 100, nodeSignupsPerHour: 1000, verification: null },
};

function service(portal: PortalSettings = settings, backend: { readOnly?: () => { reason: string; transient: boolean } | null; down?: () => boolean } = {}) {
  let doc: Record<string, unknown> = { consumers: [] };
  const accounts = new AccountService(
    {
      document: () => doc,
      readOnly: backend.readOnly ?? (() => null),
      edit: async (_actor, _action, change) => {
        if (backend.down?.()) throw Object.assign(new Error('the store is down'), { name: 'StoreUnavailable' });
        const copy = structuredClone(doc); change(copy); doc = copy;
      },
    },
    { settings: () => portal, usage: async () => ({ quotas: [], last_hour: null, last_day: null }) },
    { info() {}, warn() {}, error() {} },
  );
  const call = (method: string, path: string, opts: { cookie?: string; body?: Record<string, string>; clientIp?: string; tls?: boolean } = {}) => accounts.handle({
    method, path, query: '', host: 'dev.test', tls: opts.tls ?? false, clientIp: opts.clientIp ?? '192.0.2.1', cookie: opts.cookie,
    contentType: opts.body ? 'application/x-www-form-urlencoded' : undefined, body: opts.body ? new URLSearchParams(opts.body).toString() : '',
  } satisfies AccountRequest);
  return { call, doc: () => doc };
}

const cookieOf = (headers: Record<string, string | string[]>) => String(headers['set-cookie']).split(';')[0]!;

test('two tp_portal cookies in one request are no session (cookie tossing from a sibling origin), whichever comes first', async () => {
  const { call } = service();
  const a = await call('POST', '/signup', { body: { email: 'victim@example.com', password: 'victim-password-01' } });
  const b = await call('POST', '/signup', { body: { email: 'attacker@example.com', password: 'attacker-password-1' } });
  assert.equal(a.status, 303);
  assert.equal(b.status, 303);
  const [ca, cb] = [cookieOf(a.headers), cookieOf(b.headers)];
  assert.equal((await call('GET', '/account', { cookie: ca })).status, 200);
  assert.equal((await call('GET', '/account', { cookie: `x=1; ${ca}; y=2` })).status, 200, 'one tp_portal among other cookies');
  for (const cookie of [`${cb}; ${ca}`, `${ca}; ${cb}`, `${ca}; tp_portal=garbage`, `tp_portal=; ${ca}`]) {
    const r = await call('GET', '/account', { cookie });
    assert.equal(r.status, 303, cookie);
    assert.equal(r.headers['location'], '/portal/login');
  }
});

test('over https the session cookie is __Host-tp_portal (Secure, Path=/), and only it carries a session there: a tossed tp_portal (from a sibling host or a plain-HTTP page) stands for nothing', async () => {
  const { call } = service();
  const victim = await call('POST', '/signup', { tls: true, body: { email: 'victim-tls@example.com', password: 'victim-password-01' } });
  assert.equal(victim.status, 303);
  const set = String(victim.headers['set-cookie']);
  assert.match(set, /^__Host-tp_portal=/);
  const attrs = set.split(';').slice(1).map((x) => x.trim());
  for (const a of ['Secure', 'Path=/', 'HttpOnly', 'SameSite=Strict']) assert.ok(attrs.includes(a), `${a} in ${set}`);
  assert.ok(!attrs.some((a) => /^domain=/i.test(a)), set);
  const mine = cookieOf(victim.headers);
  assert.equal((await call('GET', '/account', { tls: true, cookie: mine })).status, 200);
  // The attacker's own valid session, made over plain HTTP (or set by a sibling host) as tp_portal:
  const attacker = cookieOf((await call('POST', '/signup', { body: { email: 'attacker-tls@example.com', password: 'attacker-password-1' } })).headers);
  assert.match(attacker, /^tp_portal=/);
  const tossed = await call('GET', '/account', { tls: true, cookie: attacker });
  assert.equal(tossed.status, 303, 'no session over https from a tp_portal cookie');
  assert.equal(tossed.headers['location'], '/portal/login');
  assert.equal((await call('GET', '/account', { tls: true, cookie: `${attacker}; ${mine}` })).status, 200, 'the tossed one beside it changes nothing');
  const csrf = /name="csrf" value="([^"]+)"/.exec((await call('GET', '/account', { tls: true, cookie: mine })).body)![1]!;
  const out = await call('POST', '/logout', { tls: true, cookie: mine, body: { csrf } });
  assert.match(String(out.headers['set-cookie']), /^__Host-tp_portal=; Path=\/;.*Max-Age=0; Secure/);
});

test('sign-out raises the developer\'s session epoch in the store: every session ends; past 30 sign-outs an hour only the cookie is cleared (429, said so)', async () => {
  const { call } = service();
  const email = 'epoch-unit@example.com';
  const password = 'epoch-unit-password-1';
  const first = cookieOf((await call('POST', '/signup', { body: { email, password } })).headers);
  const login = async () => cookieOf((await call('POST', '/login', { body: { email, password } })).headers);
  const csrfOf = async (cookie: string) => /name="csrf" value="([^"]+)"/.exec((await call('GET', '/account', { cookie })).body)![1]!;
  const second = await login();
  const out = await call('POST', '/logout', { cookie: second, body: { csrf: await csrfOf(second) } });
  assert.equal(out.status, 303);
  assert.match(String(out.headers['set-cookie']), /^tp_portal=;.*Max-Age=0/);
  assert.equal((await call('GET', '/account', { cookie: second })).status, 303);
  assert.equal((await call('GET', '/account', { cookie: first })).status, 303, 'the other session ended too');
  for (let i = 1; i < 30; i++) {
    const c = await login();
    assert.equal((await call('POST', '/logout', { cookie: c, body: { csrf: await csrfOf(c) } })).status, 303, `sign-out ${i + 1}`);
  }
  const c = await login();
  const other = await login();
  const limited = await call('POST', '/logout', { cookie: c, body: { csrf: await csrfOf(c) } });
  assert.equal(limited.status, 429);
  assert.match(String(limited.headers['set-cookie']), /^tp_portal=;.*Max-Age=0/, 'the cookie is cleared all the same');
  assert.match(limited.body, /signed out in this browser/);
  assert.ok(Number(limited.headers['retry-after']) > 0 && Number(limited.headers['retry-after']) <= 3600, `Retry-After: ${String(limited.headers['retry-after'])}`);
  assert.equal((await call('GET', '/account', { cookie: other })).status, 200, 'no revision: other sessions stay');
});

test('sign-up with an email longer than 254 characters (RFC 5321 §4.5.3.1.3) is a 400 form error, not a store write the config refuses (500)', async () => {
  const { call } = service();
  const long = `${'a'.repeat(64)}@${'b'.repeat(185)}.com`; // 254: the longest address
  assert.equal(long.length, 254);
  assert.equal((await call('POST', '/signup', { body: { email: long, password: 'long-email-password-1' } })).status, 303);
  for (const email of [`${'a'.repeat(64)}@${'b'.repeat(186)}.com`, `${'a'.repeat(64)}@${'b'.repeat(189)}.com`]) {
    const r = await call('POST', '/signup', { body: { email, password: 'long-email-password-1' } });
    assert.equal(r.status, 400, `${email.length} characters`);
    assert.match(r.body, /Give a valid email address/);
    assert.equal(r.headers['set-cookie'], undefined);
  }
});

test('signups_per_hour counts an IPv6 client by its /64 (one subscriber holds all of it), as the login limits do; an IPv4 client by its address; its 429 says when (Retry-After)', async () => {
  const { call } = service({ ...settings, accounts: { ...settings.accounts!, signupsPerHour: 2 } });
  const signup = (n: number, clientIp: string) => call('POST', '/signup', { clientIp, body: { email: `v6-${n}@example.com`, password: 'signup-limit-password' } });
  assert.equal((await signup(1, '2001:db8:1:2::1')).status, 303);
  assert.equal((await signup(2, '2001:db8:1:2::2')).status, 303);
  const third = await signup(3, '2001:db8:1:2:ffff:1:2:3');
  assert.equal(third.status, 429, 'another address of the same /64 is the same client');
  const wait = Number(third.headers['retry-after']);
  assert.ok(Number.isInteger(wait) && wait > 3000 && wait <= 3600, `Retry-After: ${String(third.headers['retry-after'])} (the hour's window)`);
  assert.equal(third.headers['set-cookie'], undefined);
  assert.equal((await signup(4, '2001:db8:1:3::1')).status, 303, 'another /64 is another client');
  assert.equal((await signup(5, '192.0.2.10')).status, 303);
  assert.equal((await signup(6, '192.0.2.11')).status, 303, 'IPv4: per address');
});

test('node_signups_per_hour caps sign-ups from all clients together (one holding many IPv6 /64s passes signups_per_hour: each sign-up is a revision every node reloads); its 429 says when', async () => {
  const { call, doc } = service({ ...settings, accounts: { ...settings.accounts!, signupsPerHour: 1, nodeSignupsPerHour: 3 } });
  const signup = (n: number) => call('POST', '/signup', { clientIp: `2001:db8:0:${n.toString(16)}::1`, body: { email: `many-${n}@example.com`, password: 'signup-limit-password' } });
  for (let n = 1; n <= 3; n++) assert.equal((await signup(n)).status, 303, `sign-up ${n}, its own /64`);
  const fourth = await signup(4);
  assert.equal(fourth.status, 429);
  assert.match(fourth.body, /Too many sign-ups right now/);
  const wait = Number(fourth.headers['retry-after']);
  assert.ok(Number.isInteger(wait) && wait > 3000 && wait <= 3600, `Retry-After: ${String(fourth.headers['retry-after'])}`);
  assert.equal((doc()['consumers'] as unknown[]).length, 3, 'nothing stored past the cap');
});

test('the JSON answers (usage.json, its 401) carry the pages\' security fields: nosniff, no framing, the CSP', async () => {
  const { call } = service();
  const cookie = cookieOf((await call('POST', '/signup', { body: { email: 'json-headers@example.com', password: 'json-headers-password' } })).headers);
  for (const [r, status] of [[await call('GET', '/account/usage.json'), 401], [await call('GET', '/account/usage.json', { cookie }), 200]] as const) {
    assert.equal(r.status, status);
    assert.equal(r.headers['x-content-type-options'], 'nosniff');
    assert.equal(r.headers['x-frame-options'], 'DENY');
    assert.match(String(r.headers['content-security-policy']), /default-src 'none'.*frame-ancestors 'none'/);
    // (styles by the one block's hash: markup an escaping slip let in cannot style itself)
    assert.match(String(r.headers['content-security-policy']), /style-src 'sha256-[A-Za-z0-9+/]{43}='; /);
    assert.doesNotMatch(String(r.headers['content-security-policy']), /unsafe-inline/);
  }
});

test('a 503 of an unreachable store says when to come back (Retry-After); one of a node that can never write accounts does not', async () => {
  let down = false;
  let transient = true;
  const { call } = service(settings, { down: () => down, readOnly: () => (down ? { reason: 'the store cannot be reached', transient } : null) });
  const ok = await call('POST', '/signup', { body: { email: 'early@example.com', password: 'early-password-0001' } });
  assert.equal(ok.status, 303);
  down = true;
  const r = await call('POST', '/signup', { body: { email: 'later@example.com', password: 'later-password-0001' } });
  assert.equal(r.status, 503);
  assert.equal(r.headers['retry-after'], '60');
  transient = false;
  const never = await call('POST', '/signup', { body: { email: 'later@example.com', password: 'later-password-0001' } });
  assert.equal(never.status, 503);
  assert.equal(never.headers['retry-after'], undefined);
  // a write that finds the store gone (StoreUnavailable) mid-request: 503 with Retry-After too
  const cookie = cookieOf(ok.headers);
  const csrf = /name="csrf" value="([^"]+)"/.exec((await call('GET', '/account', { cookie })).body)![1]!;
  const write = await call('POST', '/account/keys', { cookie, body: { csrf, name: 'k1' } });
  assert.equal(write.status, 503, write.body);
  assert.equal(write.headers['retry-after'], '60');
});

test('emails are compared in Unicode NFC, as passwords are: an address typed decomposed (e + U+0301) and precomposed (é) is one account — one sign-up, either spelling logs in', async () => {
  const { call } = service();
  const nfd = 'jose\u0301@example.com';
  const nfc = 'jos\u00e9@example.com';
  assert.equal((await call('POST', '/signup', { body: { email: nfd, password: 'unicode-email-password' } })).status, 303);
  const again = await call('POST', '/signup', { body: { email: nfc.toUpperCase(), password: 'another-password-123' } });
  assert.equal(again.status, 409, 'the same address, spelt the other way, is not a second account');
  for (const email of [nfc, nfd, ` ${nfc.toUpperCase()} `]) {
    const r = await call('POST', '/login', { body: { email, password: 'unicode-email-password' }, clientIp: '192.0.2.77' });
    assert.equal(r.status, 303, email);
  }
});

test('passwords are hashed at OWASP\'s scrypt cost (N·r·p at least 2^13·8·10, memory at least 8 MiB: OWASP Password Storage Cheat Sheet), and an unknown email costs as much', async () => {
  const { call, doc } = service();
  assert.equal((await call('POST', '/signup', { body: { email: 'cost@example.com', password: 'cost-check-password' } })).status, 303);
  const cred = ((doc()['consumers'] as { credentials: { type: string; password_hash: string }[] }[])[0]!.credentials).find((c) => c.type === 'portal')!;
  const m = /^scrypt\$([0-9]+)\$([0-9]+)\$([0-9]+)\$/.exec(cred.password_hash);
  assert.ok(m, cred.password_hash.slice(0, 20));
  const [N, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  assert.ok(N * r * p >= 2 ** 13 * 8 * 10, `scrypt N=${N} r=${r} p=${p}`);
  assert.ok(128 * N * r >= 8 * 2 ** 20, `memory ${128 * N * r} bytes`);
  // a wrong password and an unknown email take about as long (the same cost)
  const time = async (email: string) => {
    const t = process.hrtime.bigint();
    assert.equal((await call('POST', '/login', { body: { email, password: 'not-the-password-1' }, clientIp: '192.0.2.200' })).status, 401);
    return Number(process.hrtime.bigint() - t) / 1e6;
  };
  await time('nobody@example.com'); // (the dummy hash is made once)
  // (interleaved, the least of three each: a loaded machine's burst falls on one reading of a kind, not on all)
  let known = Infinity;
  let unknown = Infinity;
  for (let i = 0; i < 3; i++) {
    known = Math.min(known, await time('cost@example.com'));
    unknown = Math.min(unknown, await time('nobody@example.com'));
  }
  assert.ok(unknown > known / 3 && unknown < known * 3, `known ${known.toFixed(0)} ms, unknown ${unknown.toFixed(0)} ms`);
});

test('a password hashed with less work than OWASP\'s minimum (an older release\'s scrypt p=1) is re-hashed at a successful login where the store can be written; the new session holds', async () => {
  const email = 'rehash@example.com';
  const password = 'rehash-password-01';
  const weak = await hashPasswordAsync(password, { N: 16384, r: 8, p: 1, keylen: 32 });
  const seed = (d: Record<string, unknown>) => (d['consumers'] as unknown[]).push({ name: 'rehash', credentials: [{ type: 'portal', email, password_hash: weak }] });
  const stored = (d: Record<string, unknown>) => ((d['consumers'] as { credentials: { password_hash: string }[] }[])[0]!.credentials[0]!.password_hash);
  let readOnly: { reason: string; transient: boolean } | null = { reason: 'a replica', transient: false };
  const { call, doc } = service(settings, { readOnly: () => readOnly });
  seed(doc());
  // a node that cannot write: the login stands, the hash stays
  const ro = await call('POST', '/login', { body: { email, password } });
  assert.equal(ro.status, 303, ro.body);
  assert.equal(stored(doc()), weak);
  readOnly = null;
  const a = await call('POST', '/login', { body: { email, password } });
  assert.equal(a.status, 303, a.body);
  const now = parseHash(stored(doc()))!;
  assert.ok(now.N * now.r * now.p >= 2 ** 13 * 8 * 10, `scrypt N=${now.N} r=${now.r} p=${now.p}`);
  assert.equal((await call('GET', '/account', { cookie: cookieOf(a.headers) })).status, 200);
  // and the new hash verifies: a second login changes nothing
  const again = stored(doc());
  assert.equal((await call('POST', '/login', { body: { email, password } })).status, 303);
  assert.equal(stored(doc()), again);
});

test('a wrong password for an account whose hash predates p=5 (an older release\'s p=1, 5x less work) takes as long as one for an unknown email: no timing tells which accounts exist until they are re-hashed', async () => {
  const email = 'old-hash@example.com';
  const weak = await hashPasswordAsync('old-hash-password-1', { N: 16384, r: 8, p: 1, keylen: 32 });
  const { call, doc } = service();
  (doc()['consumers'] as unknown[]).push({ name: 'old', credentials: [{ type: 'portal', email, password_hash: weak }] });
  const time = async (who: string, ip: string) => {
    const t = process.hrtime.bigint();
    assert.equal((await call('POST', '/login', { body: { email: who, password: 'not-the-password-1' }, clientIp: ip })).status, 401);
    return Number(process.hrtime.bigint() - t) / 1e6;
  };
  await time('nobody@example.com', '192.0.2.201'); // (the dummy hash is made once)
  const old = Math.min(await time(email, '192.0.2.202'), await time(email, '192.0.2.203'));
  const unknown = Math.min(await time('nobody@example.com', '192.0.2.204'), await time('nobody@example.com', '192.0.2.205'));
  // (without the padding: old ~1/5 of unknown)
  assert.ok(old > unknown / 2 && old < unknown * 2, `old hash ${old.toFixed(0)} ms, unknown ${unknown.toFixed(0)} ms`);
  // the padding makes up N·r·p to the floor in its N and r
  const { paddingFor, SCRYPT } = await import('../plugins/basic-auth/hash.js');
  assert.deepEqual((({ N, r, p }) => ({ N, r, p }))(paddingFor(parseHash(weak)!)!), { N: SCRYPT.N, r: SCRYPT.r, p: SCRYPT.p - 1 });
  assert.equal(paddingFor(parseHash(await hashPasswordAsync('x'))!), null);
});

test('an account page asked with a method it does not take is 405 with its own Allow (RFC 9110 §15.5.6), not 404 as if it did not exist; an unknown page is still 404', async () => {
  const { call } = service();
  const s = await call('POST', '/signup', { body: { email: 'methods@example.com', password: 'methods-password-01' } });
  const cookie = cookieOf(s.headers);
  for (const [method, path, allow] of [
    ['POST', '/account', 'GET, HEAD'], ['DELETE', '/account', 'GET, HEAD'], ['POST', '/account/usage.json', 'GET, HEAD'],
    ['GET', '/logout', 'POST'], ['GET', '/account/keys', 'POST'], ['GET', '/account/keys/k-1/rotate', 'POST'], ['GET', '/account/plan', 'POST'], ['GET', '/account/verify', 'POST'],
    ['PUT', '/login', 'GET, HEAD, POST'], ['DELETE', '/signup', 'GET, HEAD, POST'],
  ] as const) {
    for (const c of [cookie, undefined]) {
      const r = await call(method, path, { cookie: c, ...(method === 'POST' ? { body: { x: '1' } } : {}) });
      assert.equal(r.status, 405, `${method} ${path} ${c ? 'signed in' : 'anonymous'}: ${r.status}`);
      assert.equal(r.headers['allow'], allow, `${method} ${path}`);
    }
  }
  assert.equal((await call('GET', '/account/nope', { cookie })).status, 404);
  assert.equal((await call('POST', '/account/nope', { cookie, body: { x: '1' } })).status, 403, '(no form token: refused before anything)');
  assert.equal((await call('GET', '/account', { cookie })).status, 200);
});

test('sign-up with an email holding ${...} is a 400 form error, nothing stored: every node would read it as a reference to its environment (a 500 for an unset one; a set one substituted)', async () => {
  const { call, doc } = service();
  for (const email of ['${HOME}@example.com', 'a${PATH:-x}b@example.com']) {
    const r = await call('POST', '/signup', { body: { email, password: 'env-ref-password-01' } });
    assert.equal(r.status, 400, email);
    assert.match(r.body, /Give a valid email address/);
    assert.equal(r.headers['set-cookie'], undefined);
  }
  assert.deepEqual(doc(), { consumers: [] });
  // ($ and braces apart are still an address, as RFC 5322 allows)
  assert.equal((await call('POST', '/signup', { body: { email: 'a$b{c}@example.com', password: 'env-ref-password-01' } })).status, 303);
});
