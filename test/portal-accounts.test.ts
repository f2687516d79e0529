/**
 * Developer accounts on the portal (src/portal/accounts.ts), adversarially, against real
 * `turnpike start` processes on 127.0.0.1:
 *   G1  sqlite store, workers: 2 (account requests cross the IPC to the primary), analytics,
 *       plans free (quota 3/day) and pro, plan_approval auto: isolation between developers,
 *       sessions and CSRF, secrets at rest and in logs, rotation / revocation, login limits.
 *   G2  sqlite store, workers: 1, approval: manual, signups_per_hour: 2.
 *   G3  sqlite store, email verification through a signed hook (a loopback node:http receiver).
 *   G4  file store (no `store:`), accounts enabled: sign-up is refused with 503.
 *   G5  sqlite store, workers: 3, probed with sign-ups while it starts (the startup window).
 * Client addresses other than 127.0.0.1 (127.0.0.2...) are used where a per-address limit is
 * tested, so that the limit does not spill over the other tests.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, createHash } from 'node:crypto';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, readdirSync, readFileSync } from 'node:fs';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep, startCli, startUpstream, type Running, type TestUpstream } from './helpers.js';

const TOKEN = 'portal-accounts-admin-token-0123';
const HOOK_SECRET = 'hook-secret-0123456789abcdef';
const G3_SECRET = 'g3-account-secret-0123456789abcdefghij';
const LINK_BASE = 'https://developer.example.test';
const work = mkdtempSync(join(tmpdir(), 'turnpike-portal-accounts-'));

interface Gw { name: string; dir: string; proxy: string; admin: string; run: Running }
const gws: Gw[] = [];
let g1: Gw;
let g2: Gw;
let g3: Gw;
let g4: Gw;
let g5: Gw;
/** Sign-ups made on G5 while it was starting: the status of the account page fetched right after each. */
const early: { email: string; password: string; cookie: string; pageStatus: number; bannerSeen: boolean }[] = [];
let up: TestUpstream;
let hook: Server;
const hookCalls: { headers: IncomingHttpHeaders; body: string }[] = [];
let hookStatus = 204;

// ---- HTTP ----

interface Res { status: number; headers: IncomingHttpHeaders; body: string }

/** One request (node:http, no agent reuse); `from` is the local address to connect from. */
function http(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string | Buffer; from?: string; timeoutMs?: number } = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: opts.method ?? 'GET', headers: opts.headers, agent: false, timeout: opts.timeoutMs ?? 10_000, ...(opts.from ? { localAddress: opts.from } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`no answer from ${url} within ${opts.timeoutMs ?? 10_000} ms`)));
    req.end(opts.body);
  });
}

const FORM = 'application/x-www-form-urlencoded';
const form = (fields: Record<string, string>) => new URLSearchParams(fields).toString();

/** A POST of a form to the portal (`cookie`: the session, if any). */
function post(g: Gw, path: string, fields: Record<string, string>, opts: { cookie?: string; headers?: Record<string, string>; from?: string } = {}): Promise<Res> {
  return http(`${g.proxy}/portal${path}`, {
    method: 'POST', from: opts.from,
    headers: { 'content-type': FORM, ...(opts.cookie ? { cookie: opts.cookie } : {}), ...opts.headers },
    body: form(fields),
  });
}

const get = (g: Gw, path: string, cookie?: string) => http(`${g.proxy}/portal${path}`, { headers: cookie ? { cookie } : {} });
const csrfOf = (html: string) => /name="csrf" value="([^"]+)"/.exec(html)?.[1] ?? null;
const cookieOf = (r: Res) => {
  const sc = r.headers['set-cookie']?.find((c) => c.startsWith('tp_portal='));
  assert.ok(sc, `no tp_portal cookie: ${r.status} ${JSON.stringify(r.headers)}`);
  return sc.split(';')[0]!;
};
const apiCall = (g: Gw, key: string) => http(`${g.proxy}/echo`, { headers: { apikey: key } }).then((r) => r.status);

async function admin(g: Gw, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Res & { json: () => any }> {
  const r = await http(`${g.admin}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  return { ...r, json: () => JSON.parse(r.body) };
}

// ---- developers ----

interface Dev { email: string; password: string; cookie: string; csrf: string; name: string }
interface Key { id: string; key: string }

async function signup(g: Gw, email: string, password: string, from?: string): Promise<Dev> {
  const r = await post(g, '/signup', { email, password }, { from });
  assert.equal(r.status, 303, `sign-up of ${email}: ${r.status} ${r.body.slice(0, 400)}`);
  assert.equal(r.headers.location, '/portal/account');
  const cookie = cookieOf(r);
  const page = await get(g, '/account', cookie);
  assert.equal(page.status, 200);
  const csrf = csrfOf(page.body);
  assert.ok(csrf, 'the account page carries the form token');
  const name = /consumer <code>([^<]+)<\/code>/.exec(page.body)?.[1];
  assert.ok(name);
  return { email, password, cookie, csrf, name };
}

async function issueKey(g: Gw, d: Dev): Promise<Key> {
  const r = await post(g, '/account/keys', { csrf: d.csrf }, { cookie: d.cookie });
  assert.equal(r.status, 200, `key for ${d.email}: ${r.status} ${r.body.slice(0, 400)}`);
  const key = /<p class="key" id="new-key">([^<]+)<\/p>/.exec(r.body)?.[1];
  const id = /Your new API key <code>([^<]+)<\/code>/.exec(r.body)?.[1];
  assert.ok(key && id, 'the page shows the new key and its id');
  return { id, key };
}

async function usage(g: Gw, d: Dev): Promise<any> {
  const r = await get(g, '/account/usage.json', d.cookie);
  assert.equal(r.status, 200, r.body);
  return JSON.parse(r.body);
}

// ---- processes ----

/** Distinct free loopback ports (held open together, so no two are the same). */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(Array.from({ length: n }, () => new Promise<Server>((r) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => r(s));
  })));
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/**
 * Starts `turnpike start` and waits until it is fully up: the banner is printed (the control
 * plane follows the store only after it, see the startup-window test) and the proxy answers an
 * account page (with workers: through the primary).
 */
async function startGw(name: string, yaml: string, [p, a]: number[]): Promise<Gw> {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}, token: ${TOKEN}}\n${yaml}`);
  const run = startCli(['start', '--config', file], {});
  const g = { name, dir, proxy: `http://127.0.0.1:${p}`, admin: `http://127.0.0.1:${a}`, run };
  gws.push(g);
  const end = Date.now() + 60_000;
  let last = '';
  for (;;) {
    if (/turnpike \S+ proxy on /.test(run.stderr())) {
      const r = await http(`${g.proxy}/portal/login`, { timeoutMs: 2000 }).catch((e: Error) => ({ status: 0, body: e.message }));
      if (r.status === 200) break;
      last = `${r.status} ${r.body.slice(0, 200)}`;
    }
    if (Date.now() > end) throw new Error(`${name} did not start (${last}): ${run.stderr().slice(-3000)}`);
    await sleep(50);
  }
  await sleep(100); // (the banner is printed just before the control plane starts following the store)
  return g;
}

const service = () => `services:
  - name: echo
    url: ${up.url}
    published: true
    plugins: [{name: key-auth}]
    routes: [{name: echo, paths: [/echo]}]
`;

/**
 * While `g` starts: sign-ups as soon as its proxy answers (four at a time), each followed at once
 * by its account page, until 300 ms after the banner.
 */
async function probeStartup(proxy: string, run: () => Running | undefined): Promise<void> {
  // (as long as startGw waits for a node: five start at once, one of them with three workers)
  const end = Date.now() + 60_000;
  let bannerAt = 0;
  let n = 0;
  const loop = async (lane: number) => {
    // (on a loaded machine the first sign-up can take longer than the 300 ms: the probe then
    // goes on until it has one, so the tests below always have sign-ups to check)
    while (Date.now() < end && (bannerAt === 0 || Date.now() - bannerAt < 300 || early.length === 0)) {
      if (!bannerAt && /turnpike \S+ proxy on /.test(run()?.stderr() ?? '')) bannerAt = Date.now();
      const email = `early-${lane}-${n++}@example.com`;
      const password = 'early-password-0001';
      const r = await http(`${proxy}/portal/signup`, { method: 'POST', headers: { 'content-type': FORM }, body: form({ email, password }), timeoutMs: 3000 }).catch(() => null);
      if (r?.status !== 303) {
        await sleep(5);
        continue;
      }
      const cookie = cookieOf(r);
      const page = await http(`${proxy}/portal/account`, { headers: { cookie }, timeoutMs: 3000 });
      early.push({ email, password, cookie, pageStatus: page.status, bannerSeen: bannerAt !== 0 });
    }
  };
  await Promise.all([0, 1, 2, 3].map(loop));
}

before(async () => {
  up = await startUpstream();
  hook = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      hookCalls.push({ headers: req.headers, body: Buffer.concat(chunks).toString() });
      res.writeHead(hookStatus).end();
    });
  });
  await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
  const hookUrl = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/send-verification`;
  const ports = await freePorts(10);
  const g5Start = startGw('g5', `workers: 3
store: sqlite:./t.db
access_log: {enabled: false}
portal:
  enabled: true
  accounts: {enabled: true, signups_per_hour: 1000}
${service()}`, ports.slice(8, 10));
  const g5Probe = probeStartup(`http://127.0.0.1:${ports[8]}`, () => gws.find((g) => g.name === 'g5')?.run);
  [g1, g2, g3, g4, g5] = await Promise.all([
    startGw('g1', `workers: 2
store: sqlite:./t.db
analytics: {enabled: true}
portal:
  enabled: true
  accounts: {enabled: true, default_plan: free, plans: [free, pro], plan_approval: auto, signups_per_hour: 100}
plans:
  free: {plugins: [{name: quota, config: {limit: 3, period: day}}]}
  pro: {plugins: [{name: quota, config: {limit: 1000, period: day, name: pro}}]}
${service()}`, ports.slice(0, 2)),
    startGw('g2', `workers: 1
store: sqlite:./t.db
access_log: {enabled: false}
portal:
  enabled: true
  accounts: {enabled: true, approval: manual, signups_per_hour: 2}
${service()}`, ports.slice(2, 4)),
    startGw('g3', `store: sqlite:./t.db
access_log: {enabled: false}
portal:
  enabled: true
  accounts:
    enabled: true
    secret: ${G3_SECRET}
    verification: {url: "${hookUrl}", link_base: "${LINK_BASE}", secret: ${HOOK_SECRET}, timeout: 2s}
${service()}`, ports.slice(4, 6)),
    startGw('g4', `access_log: {enabled: false}
portal:
  enabled: true
  accounts: {enabled: true}
${service()}`, ports.slice(6, 8)),
    g5Start,
  ]);
  await g5Probe;
});

after(async () => {
  await Promise.all(gws.map(async (g) => {
    g.run.child.kill('SIGTERM');
    await g.run.exit;
  }));
  await up?.close();
  hook?.closeAllConnections();
  await new Promise((r) => hook?.close(r));
  rmSync(work, { recursive: true, force: true });
});

// ---- G1: two developers, sessions, secrets, rotation, login ----

let A: Dev;
let B: Dev;
let keyA: Key;
let keyB: Key;

test('isolation: B cannot revoke or rotate A\'s key, never sees A\'s email / key id / consumer, and A\'s calls count for A only', async () => {
  A = await signup(g1, 'alice.isolation@example.com', 'alice-password-0001');
  B = await signup(g1, 'bob.isolation@example.com', 'bob-password-00002');
  assert.notEqual(A.name, B.name);
  keyA = await issueKey(g1, A);
  keyB = await issueKey(g1, B);
  assert.match(keyA.key, /^tpk_[A-Za-z0-9_-]{32}$/);

  // B, with B's session and B's form token, on A's key id
  for (const act of ['revoke', 'rotate']) {
    const r = await post(g1, `/account/keys/${keyA.id}/${act}`, { csrf: B.csrf }, { cookie: B.cookie });
    assert.equal(r.status, 404, `${act} of another developer's key: ${r.status}`);
    assert.doesNotMatch(r.body, /id="new-key"/);
  }
  // nor with A's form token in B's session
  assert.equal((await post(g1, `/account/keys/${keyA.id}/revoke`, { csrf: A.csrf }, { cookie: B.cookie })).status, 403);
  // A's key still works (A: call 1 of 3)
  assert.equal(await apiCall(g1, keyA.key), 200);
  const ua0 = await usage(g1, A);
  assert.deepEqual(ua0.keys.map((k: { id: string }) => k.id), [keyA.id], 'A still holds the one key, unchanged');

  // A uses the quota up (3 a day on plan free): calls 2 and 3 pass, the 4th is refused
  assert.equal(await apiCall(g1, keyA.key), 200);
  assert.equal(await apiCall(g1, keyA.key), 200);
  assert.equal(await apiCall(g1, keyA.key), 429);
  // B's key: B's own quota, untouched by A
  assert.equal(await apiCall(g1, keyB.key), 200);

  const ua = await usage(g1, A);
  const ub = await usage(g1, B);
  assert.equal(ua.consumer, A.name);
  assert.equal(ub.consumer, B.name);
  const qa = ua.usage.quotas.find((q: { limit: number }) => q.limit === 3);
  const qb = ub.usage.quotas.find((q: { limit: number }) => q.limit === 3);
  assert.equal(qa.used, 3);
  assert.equal(qa.remaining, 0);
  assert.equal(qb.used, 1, 'B\'s count holds B\'s call only');
  assert.equal(qb.remaining, 2);
  // analytics per consumer (workers report to the primary): A 4 requests, B 1
  assert.ok(ua.usage.last_hour, 'analytics is on');
  assert.equal(ua.usage.last_hour.requests, 4, JSON.stringify(ua.usage));
  assert.equal(ub.usage.last_hour.requests, 1, JSON.stringify(ub.usage));

  // nothing of A on B's pages
  const pageB = await get(g1, '/account', B.cookie);
  for (const [what, body] of [['account page', pageB.body], ['usage.json', JSON.stringify(ub)]] as const) {
    for (const secret of [A.email, A.name, keyA.id, keyA.key]) assert.ok(!body.includes(secret), `B's ${what} contains ${secret}`);
  }
  assert.ok(pageB.body.includes(B.email) && pageB.body.includes(keyB.id));
});

test('sessions: tampered cookies are no session; logout ends the cookie; POSTs without / with a wrong form token or from another site are refused and change nothing; cookie flags', async () => {
  const s = await post(g1, '/signup', { email: 'sessions@example.com', password: 'session-password-1' });
  assert.equal(s.status, 303);
  const sc = s.headers['set-cookie']!.find((c) => c.startsWith('tp_portal='))!;
  const attrs = sc.split(';').slice(1).map((x) => x.trim());
  assert.ok(attrs.includes('HttpOnly'), sc);
  assert.ok(attrs.includes('SameSite=Strict'), sc);
  assert.ok(attrs.includes('Path=/portal/'), sc);
  assert.ok(!attrs.includes('Secure'), 'plain http: no Secure flag');
  const cookie = sc.split(';')[0]!;
  const S = { cookie, csrf: csrfOf((await get(g1, '/account', cookie)).body)! };
  assert.ok(S.csrf);

  const isLogin = (r: Res) => r.status === 303 && r.headers.location === '/portal/login';
  // one character of the MAC changed
  const [n, exp, sid, mac] = cookie.slice('tp_portal='.length).split('.');
  const flipped = mac!.slice(0, -2) + (mac!.at(-2) === 'A' ? 'B' : 'A') + mac!.at(-1);
  assert.ok(isLogin(await get(g1, '/account', `tp_portal=${n}.${exp}.${sid}.${flipped}`)), 'a flipped MAC character');
  // B's name part swapped for A's (B's MAC)
  const [, bexp, bsid, bmac] = B.cookie.slice('tp_portal='.length).split('.');
  const aName = A.cookie.slice('tp_portal='.length).split('.')[0];
  assert.ok(isLogin(await get(g1, '/account', `tp_portal=${aName}.${bexp}.${bsid}.${bmac}`)), 'A\'s name with B\'s MAC');
  // a later expiry with the same MAC, an extra part, a truncated one
  assert.ok(isLogin(await get(g1, '/account', `tp_portal=${n}.${Number(exp) + 1}.${sid}.${mac}`)), 'a pushed expiry');
  assert.ok(isLogin(await get(g1, '/account', `${cookie}.x`)), 'an extra part');
  assert.ok(isLogin(await get(g1, '/account', `tp_portal=${n}.${exp}.${sid}`)), 'no MAC');
  const j = await get(g1, '/account/usage.json', `tp_portal=${aName}.${bexp}.${bsid}.${bmac}`);
  assert.equal(j.status, 401);
  assert.ok(!j.body.includes(A.email));
  // the real one still works
  assert.equal((await get(g1, '/account', cookie)).status, 200);

  // POSTs in the session: without the form token, with a wrong one, with another session's
  const keysBefore = (await get(g1, '/account/usage.json', cookie)).body;
  const badForms: Record<string, string>[] = [{}, { csrf: 'x'.repeat(S.csrf.length) }, { csrf: B.csrf }, { csrf: `${S.csrf}x` }];
  for (const fields of badForms) {
    const r = await post(g1, '/account/keys', fields, { cookie });
    assert.equal(r.status, 403, `key with form ${JSON.stringify(fields)}: ${r.status}`);
    assert.doesNotMatch(r.body, /id="new-key"/);
    assert.equal((await post(g1, '/account/plan', { ...fields, plan: 'pro' }, { cookie })).status, 403);
  }
  // from another site: refused even with the right form token
  const foreign: Record<string, string>[] = [{ origin: 'http://evil.example' }, { origin: 'null' }, { 'sec-fetch-site': 'cross-site' }, { 'sec-fetch-site': 'same-site' }, { origin: g1.proxy.replace('127.0.0.1', 'localhost') }];
  for (const headers of foreign) {
    const r = await post(g1, '/account/keys', { csrf: S.csrf }, { cookie, headers });
    assert.equal(r.status, 403, `key from ${JSON.stringify(headers)}: ${r.status}`);
    assert.equal((await post(g1, '/account/plan', { csrf: S.csrf, plan: 'pro' }, { cookie, headers })).status, 403);
    assert.equal((await post(g1, '/logout', { csrf: S.csrf }, { cookie, headers })).status, 403);
  }
  // a cross-site sign-up / login is refused too (login CSRF)
  assert.equal((await post(g1, '/login', { email: A.email, password: A.password }, { headers: { origin: 'http://evil.example' } })).status, 403);
  assert.equal((await post(g1, '/signup', { email: 'csrf-signup@example.com', password: 'whatever-password-1' }, { headers: { 'sec-fetch-site': 'cross-site' } })).status, 403);
  assert.equal((await post(g1, '/login', { email: 'nobody-x@example.com', password: 'x' }, { headers: { 'sec-fetch-site': 'same-site' } })).status, 403);
  // nothing changed
  assert.equal((await get(g1, '/account/usage.json', cookie)).body, keysBefore);
  const u = JSON.parse(keysBefore);
  assert.equal(u.plan, 'free');
  assert.deepEqual(u.keys, []);
  // the same origin and same-origin fetch metadata are fine
  const ok = await post(g1, '/account/plan', { csrf: S.csrf, plan: 'pro' }, { cookie, headers: { origin: g1.proxy, 'sec-fetch-site': 'same-origin' } });
  assert.equal(ok.status, 303);
  assert.equal(JSON.parse((await get(g1, '/account/usage.json', cookie)).body).plan, 'pro');

  // logout: without the form token refused; with it, the old cookie is dead
  assert.equal((await post(g1, '/logout', {}, { cookie })).status, 403);
  assert.equal((await get(g1, '/account', cookie)).status, 200);
  const out = await post(g1, '/logout', { csrf: S.csrf }, { cookie });
  assert.equal(out.status, 303);
  assert.match(out.headers['set-cookie']!.join('\n'), /tp_portal=;.*Max-Age=0/);
  assert.ok(isLogin(await get(g1, '/account', cookie)), 'the cookie after logout');
  assert.equal((await get(g1, '/account/usage.json', cookie)).status, 401);
  assert.equal((await post(g1, '/account/keys', { csrf: S.csrf }, { cookie })).status, 401);
  // a new login gives a new, working session
  const again = await post(g1, '/login', { email: 'SESSIONS@example.com', password: 'session-password-1' });
  assert.equal(again.status, 303);
  assert.notEqual(cookieOf(again), cookie);
  assert.equal((await get(g1, '/account', cookieOf(again))).status, 200);
});

test('secrets: neither the password nor the key is stored or logged; the key is kept as key_sha256; the admin listing shows no hash', async () => {
  const export_ = await admin(g1, 'GET', '/api/config?secrets=true');
  assert.equal(export_.status, 200, export_.body);
  const exportJson = await admin(g1, 'GET', '/api/config?secrets=true', undefined, { accept: 'application/json' });
  assert.equal(exportJson.status, 200);
  const doc = exportJson.json();
  const plain = [A.password, B.password, keyA.key, keyB.key, 'session-password-1'];
  // the store: the admin export with secrets, and the sqlite files themselves
  const dbFiles = readdirSync(g1.dir).filter((f) => f.startsWith('t.db')).map((f) => readFileSync(join(g1.dir, f)).toString('latin1'));
  assert.ok(dbFiles.length > 0);
  for (const s of plain) {
    assert.ok(!export_.body.includes(s), 'a plain secret in the export');
    assert.ok(!exportJson.body.includes(s), 'a plain secret in the JSON export');
    for (const f of dbFiles) assert.ok(!f.includes(s), 'a plain secret in the sqlite files');
    for (const g of gws) assert.ok(!g.run.stderr().includes(s), `a plain secret in ${g.name}'s log`);
  }
  const consumer = doc.consumers.find((c: { name: string }) => c.name === A.name);
  assert.ok(consumer, 'A is a consumer of the document');
  assert.deepEqual(consumer.tags, ['portal']);
  assert.equal(consumer.plan, 'free');
  const portalCred = consumer.credentials.find((c: { type: string }) => c.type === 'portal');
  assert.equal(portalCred.email, A.email);
  assert.match(portalCred.password_hash, /^scrypt\$/);
  const keyCred = consumer.credentials.find((c: { type: string }) => c.type === 'key-auth');
  assert.equal(keyCred.id, keyA.id);
  assert.equal(keyCred.key, undefined, 'no plain key');
  assert.equal(keyCred.key_sha256, createHash('sha256').update(keyA.key).digest('hex'));

  // the export without secrets and the admin listing: no hash, no digest
  const masked = await admin(g1, 'GET', '/api/config');
  assert.ok(!masked.body.includes(portalCred.password_hash) && !masked.body.includes(keyCred.key_sha256));
  const creds = await admin(g1, 'GET', `/api/consumers/${A.name}/credentials`);
  assert.equal(creds.status, 200, creds.body);
  assert.doesNotMatch(creds.body, /password_hash|key_sha256|scrypt\$/);
  assert.ok(!creds.body.includes(keyCred.key_sha256));
  assert.ok(creds.body.includes(keyA.id) && creds.body.includes(A.email));
  const consumers = await admin(g1, 'GET', '/api/consumers');
  assert.equal(consumers.status, 200);
  assert.doesNotMatch(consumers.body, /password_hash|key_sha256|scrypt\$/);
  // a read-only caller cannot ask for the secrets either (no token: 401)
  assert.equal((await http(`${g1.admin}/api/config?secrets=true`)).status, 401);
  // the key is not shown again on the account page
  assert.ok(!(await get(g1, '/account', A.cookie)).body.includes(keyA.key));
});

test('rotation and revocation: after rotate the old key is 401 and the new one 200; after revoke, 401', async () => {
  const C = await signup(g1, 'carol.rotation@example.com', 'carol-password-0003');
  // plan pro (plan_approval: auto) so that the quota does not get in the way
  assert.equal((await post(g1, '/account/plan', { csrf: C.csrf, plan: 'pro' }, { cookie: C.cookie })).status, 303);
  assert.equal((await usage(g1, C)).plan, 'pro');
  assert.equal((await post(g1, '/account/plan', { csrf: C.csrf, plan: 'enterprise' }, { cookie: C.cookie })).status, 400, 'a plan not offered');
  const k1 = await issueKey(g1, C);
  const k2 = await issueKey(g1, C);
  assert.equal(await apiCall(g1, k1.key), 200);
  assert.equal(await apiCall(g1, k2.key), 200);
  const r = await post(g1, `/account/keys/${k1.id}/rotate`, { csrf: C.csrf }, { cookie: C.cookie });
  assert.equal(r.status, 200);
  const rotated = /<p class="key" id="new-key">([^<]+)<\/p>/.exec(r.body)?.[1];
  assert.ok(rotated && rotated !== k1.key);
  assert.ok(r.body.includes(k1.id), 'the id stays');
  // at once, on both workers (several calls: the connections land on either)
  for (let i = 0; i < 4; i++) {
    assert.equal(await apiCall(g1, k1.key), 401, 'the old key after rotation');
    assert.equal(await apiCall(g1, rotated), 200, 'the new key after rotation');
  }
  assert.equal(await apiCall(g1, k2.key), 200, 'the other key is untouched');
  const rv = await post(g1, `/account/keys/${k1.id}/revoke`, { csrf: C.csrf }, { cookie: C.cookie });
  assert.equal(rv.status, 303);
  for (let i = 0; i < 4; i++) assert.equal(await apiCall(g1, rotated), 401, 'the rotated key after revocation');
  assert.equal(await apiCall(g1, k2.key), 200);
  assert.deepEqual((await usage(g1, C)).keys.map((k: { id: string }) => k.id), [k2.id]);
  // a second revoke, a rotate of the revoked id, an id of the wrong shape
  assert.equal((await post(g1, `/account/keys/${k1.id}/revoke`, { csrf: C.csrf }, { cookie: C.cookie })).status, 404);
  assert.equal((await post(g1, `/account/keys/${k1.id}/rotate`, { csrf: C.csrf }, { cookie: C.cookie })).status, 404);
  assert.equal((await post(g1, `/account/keys/${'k'.repeat(101)}/revoke`, { csrf: C.csrf }, { cookie: C.cookie })).status, 404);
  // (a dot segment hidden behind %2F is refused by the gateway's path guard before the portal)
  assert.equal((await post(g1, `/account/keys/${encodeURIComponent('../x')}/revoke`, { csrf: C.csrf }, { cookie: C.cookie })).status, 400);
  assert.equal((await post(g1, `/account/keys/${encodeURIComponent(`${k2.id}/../${k2.id}`)}/revoke`, { csrf: C.csrf }, { cookie: C.cookie })).status, 400);
  // a plain GET on an action changes nothing (405: the action takes POST only)
  const getAction = await get(g1, `/account/keys/${k2.id}/revoke`, C.cookie);
  assert.equal(getAction.status, 405);
  assert.equal(getAction.headers['allow'], 'POST');
  assert.equal(await apiCall(g1, k2.key), 200);
});

test('login and sign-up: generic 401, per-address limit (429 on the 11th), 409 on an existing email in any case, 400 / 415 / 413', async () => {
  // wrong password and unknown email: the same answer
  const wrong = await post(g1, '/login', { email: A.email, password: 'not-the-password-1' });
  const unknown = await post(g1, '/login', { email: 'nobody.at.all@example.com', password: 'not-the-password-1' });
  assert.equal(wrong.status, 401);
  assert.equal(unknown.status, 401);
  const alert = (r: Res) => /<p class="error" role="alert" id="form-error">([^<]*)<\/p>/.exec(r.body)?.[1];
  assert.equal(alert(wrong), 'Wrong email or password.');
  assert.equal(alert(unknown), alert(wrong));
  assert.equal(wrong.headers['set-cookie'], undefined);
  assert.equal(wrong.body.replace(A.email, 'E'), unknown.body.replace('nobody.at.all@example.com', 'E'), 'the pages differ only by the email echoed');
  // the right password logs in (email in any case, surrounding spaces)
  assert.equal((await post(g1, '/login', { email: `  ${A.email.toUpperCase()} `, password: A.password })).status, 303);

  // 10 failures from 127.0.0.2 (on a developer's email): the 11th attempt is 429, even with the right password
  const E = await signup(g1, 'erin.limits@example.com', 'erin-password-00005');
  for (let i = 0; i < 10; i++) {
    const r = await post(g1, '/login', { email: E.email, password: `wrong-password-${i}` }, { from: '127.0.0.2' });
    assert.equal(r.status, 401, `attempt ${i + 1}`);
  }
  const eleventh = await post(g1, '/login', { email: E.email, password: 'wrong-password-x' }, { from: '127.0.0.2' });
  assert.equal(eleventh.status, 429);
  assert.match(eleventh.body, /Too many failed attempts/);
  const other = await post(g1, '/login', { email: A.email, password: A.password }, { from: '127.0.0.2' });
  assert.equal(other.status, 429, 'the address is held, whatever the account');
  assert.match(other.body, /try again in \d+ seconds/, 'the address is held for the rest of its minute');
  assert.ok(Number(other.headers['retry-after']) <= 60, String(other.headers['retry-after']));
  // another address logs in to another account
  assert.equal((await post(g1, '/login', { email: B.email, password: B.password }, { from: '127.0.0.3' })).status, 303);
  // and E's email is held for a while (10 failures per email) from that network (/24), and the page says how long
  const held = await post(g1, '/login', { email: E.email, password: E.password }, { from: '127.0.0.4' });
  assert.equal(held.status, 429);
  assert.match(held.body, /try again in 1[45] minutes/);
  assert.ok(Number(held.headers['retry-after']) > 800, String(held.headers['retry-after']));
  assert.match(eleventh.body, /try again in 1[45] minutes/, 'the longer of the two holds (address: 1 min, email from this network: 15 min)');
  // but not from elsewhere: the owner (another network) signs in; failures there count on their own
  assert.equal((await post(g1, '/login', { email: E.email, password: E.password }, { from: '127.0.1.4' })).status, 303, 'the owner is not locked out');
  assert.equal((await post(g1, '/login', { email: E.email, password: 'wrong-password-y' }, { from: '127.0.1.5' })).status, 401);
  assert.equal((await get(g1, '/account', E.cookie)).status, 200, 'an existing session is not ended by the failures');

  // sign-up with an existing email, any case
  for (const email of [A.email, A.email.toUpperCase(), 'Alice.Isolation@Example.COM', ` ${A.email} `]) {
    const r = await post(g1, '/signup', { email, password: 'another-password-1' });
    assert.equal(r.status, 409, `${email}: ${r.status}`);
    assert.equal(r.headers['set-cookie'], undefined);
  }
  // bad input
  for (const [email, password] of [['not-an-email', 'long-enough-password'], ['a@b', 'long-enough-password'], ['<x>@example.com', 'long-enough-password'], ['', 'long-enough-password'], ['fine@example.com', 'short-pw1'], ['fine@example.com', ''], ['fine@example.com', 'x'.repeat(257)]]) {
    const r = await post(g1, '/signup', { email: email!, password: password! });
    assert.equal(r.status, 400, `${email} / ${password!.length} chars: ${r.status}`);
    assert.equal(r.headers['set-cookie'], undefined);
  }
  assert.equal((await post(g1, '/signup', { email: 'fine@example.com', password: 'x'.repeat(256) })).status, 303, '256 characters are allowed');
  // not a form
  for (const type of ['application/json', 'text/plain', 'multipart/form-data; boundary=x', 'application/x-www-form-urlencodedx']) {
    const r = await http(`${g1.proxy}/portal/signup`, { method: 'POST', headers: { 'content-type': type }, body: 'email=json%40example.com&password=long-enough-password' });
    assert.equal(r.status, 415, `${type}: ${r.status}`);
  }
  assert.equal((await http(`${g1.proxy}/portal/login`, { method: 'POST', body: 'email=x' })).status, 415, 'no content type');
  // over 16 KB: declared, and chunked
  const big = form({ email: 'big@example.com', password: 'long-enough-password', pad: 'x'.repeat(17 * 1024) });
  const r413 = await http(`${g1.proxy}/portal/signup`, { method: 'POST', headers: { 'content-type': FORM }, body: big });
  assert.equal(r413.status, 413);
  const r413c = await http(`${g1.proxy}/portal/signup`, { method: 'POST', headers: { 'content-type': FORM, 'transfer-encoding': 'chunked' }, body: big });
  assert.equal(r413c.status, 413);
  const inAccount = await post(g1, '/account/keys', { csrf: A.csrf, pad: 'x'.repeat(17 * 1024) }, { cookie: A.cookie });
  assert.equal(inAccount.status, 413);
  assert.equal((await post(g1, '/login', { email: 'big@example.com', password: 'long-enough-password' })).status, 401, 'the refused sign-up made no account');
  // other methods
  assert.equal((await http(`${g1.proxy}/portal/signup`, { method: 'PUT', headers: { 'content-type': FORM }, body: 'x=1' })).status, 405);
  // a password typed in decomposed form (NFD): it signs up, and the same bytes sign in (so does its NFC form)
  const nfd = 'pa\u0301ssword-with-o\u0308-accents';
  const N = await signup(g1, 'nfd.password@example.com', nfd, '127.0.2.1');
  assert.equal((await post(g1, '/login', { email: N.email, password: nfd }, { from: '127.0.2.1' })).status, 303, 'the same bytes');
  assert.equal((await post(g1, '/login', { email: N.email, password: nfd.normalize('NFC') }, { from: '127.0.2.1' })).status, 303, 'the composed form');
});

test('races: concurrent key requests never exceed max_keys; concurrent sign-ups with one email make one account', async () => {
  const R = await signup(g1, 'rita.races@example.com', 'rita-password-000010');
  assert.equal((await post(g1, '/account/plan', { csrf: R.csrf, plan: 'pro' }, { cookie: R.cookie })).status, 303);
  const issued = await Promise.all(Array.from({ length: 9 }, () => post(g1, '/account/keys', { csrf: R.csrf }, { cookie: R.cookie })));
  const codes = issued.map((r) => r.status).sort();
  assert.equal(codes.filter((c) => c === 200).length, 5, `statuses: ${codes.join(',')}`);
  assert.ok(codes.every((c) => c === 200 || c === 409), `statuses: ${codes.join(',')}`);
  const held = (await usage(g1, R)).keys;
  assert.equal(held.length, 5);
  assert.equal(new Set(held.map((k: { id: string }) => k.id)).size, 5);
  const keys = issued.filter((r) => r.status === 200).map((r) => /id="new-key">([^<]+)</.exec(r.body)![1]!);
  for (const k of keys) assert.equal(await apiCall(g1, k), 200);
  const page = await get(g1, '/account', R.cookie);
  assert.match(page.body, /the most keys allowed \(5\)/);
  assert.doesNotMatch(page.body, /Create a key/);
  assert.equal((await post(g1, '/account/keys', { csrf: R.csrf }, { cookie: R.cookie })).status, 409);

  const email = 'twin.signup@example.com';
  const tries = await Promise.all(['twin.signup@example.com', 'TWIN.signup@example.com', 'twin.SIGNUP@example.com', ' twin.signup@example.com'].map((e) => post(g1, '/signup', { email: e, password: 'twin-password-00011' })));
  const ok = tries.filter((r) => r.status === 303);
  assert.equal(ok.length, 1, `statuses: ${tries.map((r) => r.status).join(',')}`);
  assert.ok(tries.every((r) => r.status === 303 || r.status === 409));
  const doc = (await admin(g1, 'GET', '/api/config', undefined, { accept: 'application/json' })).json();
  const twins = doc.consumers.filter((c: { credentials?: { type: string; email?: string }[] }) => c.credentials?.some((x) => x.type === 'portal' && x.email === email));
  assert.equal(twins.length, 1);
});

test('the portal session cookie never reaches an upstream; account pages are not cacheable', async () => {
  const before_ = up.requests.length;
  const r = await http(`${g1.proxy}/echo`, { headers: { apikey: keyB.key, cookie: `a=1; ${B.cookie}; b=2` } });
  assert.equal(r.status, 200);
  const seen = up.requests.slice(before_);
  assert.equal(seen.length, 1);
  const sent = JSON.stringify(seen[0]!.headers);
  assert.ok(!sent.includes(B.cookie.slice('tp_portal='.length)), `the session went upstream: ${sent}`);
  assert.doesNotMatch(sent, /tp_portal/);
  assert.match(String(seen[0]!.headers.cookie), /a=1/);
  // (the key page, the account page and usage.json: no-store)
  for (const res of [await get(g1, '/account', B.cookie), await get(g1, '/account/usage.json', B.cookie)]) {
    assert.equal(res.headers['cache-control'], 'no-store');
  }
});

// ---- G2: manual approval; sign-up limit ----

test('manual approval: no key until an admin approves; the key works; approved:false again stops it', async () => {
  const M = await signup(g2, 'mallory.manual@example.com', 'manual-password-0006');
  const page = await get(g2, '/account', M.cookie);
  assert.match(page.body, /id="pending"/);
  assert.doesNotMatch(page.body, /Create a key/);
  assert.equal((await usage(g2, M)).status, 'pending-approval');
  const refused = await post(g2, '/account/keys', { csrf: M.csrf }, { cookie: M.cookie });
  assert.equal(refused.status, 403);
  assert.match(refused.body, /awaiting approval by an administrator/);
  assert.deepEqual((await usage(g2, M)).keys, []);

  const credId = encodeURIComponent(`${M.name}/portal/1`);
  const listed = await admin(g2, 'GET', `/api/consumers/${M.name}/credentials`);
  assert.equal(listed.status, 200);
  assert.ok(listed.body.includes(`"${M.name}/portal/1"`) && listed.body.includes('"approved":false'), listed.body);
  const ok = await admin(g2, 'PATCH', `/api/consumers/${M.name}/credentials/${credId}`, { approved: true });
  assert.equal(ok.status, 200, ok.body);
  assert.doesNotMatch(ok.body, /password_hash|scrypt\$/);
  // the session survives the admin's change (the password hash was kept)
  assert.equal((await usage(g2, M)).status, 'active');
  const k = await issueKey(g2, M);
  assert.equal(await apiCall(g2, k.key), 200);
  // the developer can still log in (the PATCH did not lose the password hash)
  assert.equal((await post(g2, '/login', { email: M.email, password: M.password })).status, 303);

  const held = await admin(g2, 'PATCH', `/api/consumers/${M.name}/credentials/${credId}`, { approved: false });
  assert.equal(held.status, 200, held.body);
  assert.equal(await apiCall(g2, k.key), 401, 'a held developer\'s key does not authenticate');
  assert.equal((await post(g2, '/account/keys', { csrf: M.csrf }, { cookie: M.cookie })).status, 403);
  assert.equal((await post(g2, `/account/keys/${k.id}/rotate`, { csrf: M.csrf }, { cookie: M.cookie })).status, 403, 'no rotation while held');
  assert.equal(await apiCall(g2, k.key), 401);
  // approved again: the same key works again
  assert.equal((await admin(g2, 'PATCH', `/api/consumers/${M.name}/credentials/${credId}`, { approved: true })).status, 200);
  assert.equal(await apiCall(g2, k.key), 200);
});

test('sign-up limit: signups_per_hour per client address (429), other addresses unaffected', async () => {
  await signup(g2, 'limit-one@example.com', 'limit-password-0001', '127.0.0.5');
  await signup(g2, 'limit-two@example.com', 'limit-password-0002', '127.0.0.5');
  const third = await post(g2, '/signup', { email: 'limit-three@example.com', password: 'limit-password-0003' }, { from: '127.0.0.5' });
  assert.equal(third.status, 429);
  assert.equal(third.headers['set-cookie'], undefined);
  await signup(g2, 'limit-three@example.com', 'limit-password-0003', '127.0.0.6');
});

test('an admin deletes a developer: the session ends and their key stops at once', async () => {
  const D = await signup(g2, 'dora.deleted@example.com', 'deleted-password-0012');
  const credId = encodeURIComponent(`${D.name}/portal/1`);
  assert.equal((await admin(g2, 'PATCH', `/api/consumers/${D.name}/credentials/${credId}`, { approved: true })).status, 200);
  const k = await issueKey(g2, D);
  assert.equal(await apiCall(g2, k.key), 200);
  const del = await admin(g2, 'DELETE', `/api/consumers/${D.name}`);
  assert.ok(del.status === 204 || del.status === 200, `${del.status} ${del.body}`);
  assert.equal(await apiCall(g2, k.key), 401);
  const page = await get(g2, '/account', D.cookie);
  assert.equal(page.status, 303);
  assert.equal((await post(g2, '/account/keys', { csrf: D.csrf }, { cookie: D.cookie })).status, 401);
  assert.equal((await post(g2, '/login', { email: D.email, password: D.password })).status, 401);
});

// ---- G3: email verification ----

test('verification: one signed hook call with a link on link_base; no key before; a tampered token is 400; the real one verifies and a key is issued', async () => {
  const V = await signup(g3, 'victor.verify@example.com', 'verify-password-0007');
  assert.equal(hookCalls.length, 1, 'one call to the hook');
  const call = hookCalls[0]!;
  assert.match(String(call.headers['content-type']), /application\/json/);
  const sig = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(String(call.headers['x-turnpike-signature']));
  assert.ok(sig, `signature header: ${call.headers['x-turnpike-signature']}`);
  assert.ok(Math.abs(Number(sig[1]) - Date.now() / 1000) < 60);
  assert.equal(sig[2], createHmac('sha256', HOOK_SECRET).update(`${sig[1]}.${call.body}`).digest('hex'), 'HMAC-SHA256(secret, t + "." + body)');
  assert.notEqual(sig[2], createHmac('sha256', 'another-secret-0123456').update(`${sig[1]}.${call.body}`).digest('hex'));
  const payload = JSON.parse(call.body);
  assert.equal(payload.event, 'developer.verify');
  assert.equal(payload.consumer, V.name);
  assert.equal(payload.email, V.email);
  assert.ok(Date.parse(payload.expires_at) > Date.now());
  assert.ok(payload.link.startsWith(`${LINK_BASE}/portal/verify?token=`), payload.link);
  const token = new URL(payload.link).searchParams.get('token')!;
  assert.ok(!call.body.includes(V.password));

  // before verifying
  const page = await get(g3, '/account', V.cookie);
  assert.match(page.body, /Verify your email address/);
  assert.equal((await usage(g3, V)).status, 'unverified');
  const refused = await post(g3, '/account/keys', { csrf: V.csrf }, { cookie: V.cookie });
  assert.equal(refused.status, 403);
  assert.match(refused.body, /Verify your email address first/);

  // the link's page: a form that posts the token (GET alone verifies nothing)
  const form_ = await get(g3, `/verify?token=${encodeURIComponent(token)}`);
  assert.equal(form_.status, 200);
  assert.ok(form_.body.includes(`name="token" value="${token}"`));
  assert.equal((await usage(g3, V)).status, 'unverified', 'a GET of the link does not verify');

  // tampered tokens
  const [n, exp, mac] = token.split('.');
  const tampered = [
    `${n}.${exp}.${mac!.slice(0, -2)}${mac!.at(-2) === 'A' ? 'B' : 'A'}${mac!.at(-1)}`,
    `${n}.${Number(exp) + 1000}.${mac}`,
    `${Buffer.from(V.name + 'x').toString('base64url')}.${exp}.${mac}`,
    `${n}.${exp}`,
    `${token}.x`,
    '',
  ];
  for (const t of tampered) {
    const r = await post(g3, '/verify', { token: t });
    assert.equal(r.status, 400, `token ${t}: ${r.status}`);
  }
  // from another site: refused
  assert.equal((await post(g3, '/verify', { token }, { headers: { origin: 'http://evil.example' } })).status, 403);
  assert.equal((await usage(g3, V)).status, 'unverified');
  assert.equal((await post(g3, '/account/keys', { csrf: V.csrf }, { cookie: V.cookie })).status, 403);

  // the real token (no session needed: the link is opened from a mail client)
  const ok = await post(g3, '/verify', { token });
  assert.equal(ok.status, 200, ok.body);
  assert.match(ok.body, /Email verified/);
  assert.equal((await usage(g3, V)).status, 'active');
  assert.equal((await post(g3, '/verify', { token })).status, 200, 'a second use of the link is harmless');
  const k = await issueKey(g3, V);
  assert.equal(await apiCall(g3, k.key), 200);
  assert.equal(hookCalls.length, 1, 'no further hook call');
  for (const s of [V.password, k.key, HOOK_SECRET, G3_SECRET]) assert.ok(!g3.run.stderr().includes(s));
  // the accounts' and the hook's secrets are masked in the export for every reader
  const exported = await admin(g3, 'GET', '/api/config');
  assert.equal(exported.status, 200);
  assert.ok(!exported.body.includes(HOOK_SECRET) && !exported.body.includes(G3_SECRET), exported.body);
});

test('verification: a developer\'s token does not verify another developer', async () => {
  const W = await signup(g3, 'wendy.verify@example.com', 'verify-password-0008');
  assert.equal(hookCalls.length, 2);
  const wToken = new URL(JSON.parse(hookCalls[1]!.body).link).searchParams.get('token')!;
  const vToken = new URL(JSON.parse(hookCalls[0]!.body).link).searchParams.get('token')!;
  const [, wexp, wmac] = wToken.split('.');
  const [vn] = vToken.split('.');
  // W's MAC with V's name part, and the other way round
  assert.equal((await post(g3, '/verify', { token: `${vn}.${wexp}.${wmac}` })).status, 400);
  assert.equal((await usage(g3, W)).status, 'unverified');
});

test('verification: the link never takes the request\'s Host; a failing hook leaves the account unverified and the link can be sent again (limited)', async () => {
  const n0 = hookCalls.length;
  // a spoofed Host on sign-up
  const port = new URL(g3.proxy).port;
  const r = await http(`${g3.proxy}/portal/signup`, { method: 'POST', headers: { host: `evil.example:${port}`, 'content-type': FORM }, body: form({ email: 'hosty@example.com', password: 'hosty-password-0013' }) });
  assert.equal(r.status, 303);
  assert.equal(hookCalls.length, n0 + 1);
  assert.ok(JSON.parse(hookCalls[n0]!.body).link.startsWith(`${LINK_BASE}/portal/verify?token=`));
  assert.ok(!hookCalls[n0]!.body.includes('evil.example'));

  // the hook fails: the account exists, unverified; resend answers 502, then (hook back) 200
  hookStatus = 500;
  try {
    const F = await signup(g3, 'failing.hook@example.com', 'failing-password-0014');
    assert.equal(hookCalls.length, n0 + 2, 'the hook was called');
    assert.equal((await usage(g3, F)).status, 'unverified');
    const again = await post(g3, '/account/verify', { csrf: F.csrf }, { cookie: F.cookie });
    assert.equal(again.status, 502);
    hookStatus = 204;
    const sent = await post(g3, '/account/verify', { csrf: F.csrf }, { cookie: F.cookie });
    assert.equal(sent.status, 200);
    assert.equal(hookCalls.length, n0 + 4);
    // without the form token: refused, no call
    assert.equal((await post(g3, '/account/verify', {}, { cookie: F.cookie })).status, 403);
    assert.equal(hookCalls.length, n0 + 4);
    // 5 resends an hour: 3 more pass, the next is 429
    for (let i = 0; i < 3; i++) assert.equal((await post(g3, '/account/verify', { csrf: F.csrf }, { cookie: F.cookie })).status, 200);
    assert.equal((await post(g3, '/account/verify', { csrf: F.csrf }, { cookie: F.cookie })).status, 429);
    assert.equal(hookCalls.length, n0 + 7);
    // the latest link verifies
    const token = new URL(JSON.parse(hookCalls.at(-1)!.body).link).searchParams.get('token')!;
    assert.equal((await post(g3, '/verify', { token })).status, 200);
    assert.equal((await usage(g3, F)).status, 'active');
  } finally {
    hookStatus = 204;
  }
});

// ---- G4: file store ----

test('file store: sign-up answers 503 naming the sqlite / postgres store; nothing is written', async () => {
  const r = await post(g4, '/signup', { email: 'filey@example.com', password: 'file-password-00009' });
  assert.equal(r.status, 503, r.body);
  assert.match(r.body, /sqlite or postgres config store/);
  assert.equal(r.headers['retry-after'], undefined, 'no Retry-After: this node will never take sign-ups');
  assert.equal(r.headers['set-cookie'], undefined);
  const login = await post(g4, '/login', { email: 'filey@example.com', password: 'file-password-00009' });
  assert.equal(login.status, 401);
  assert.equal((await get(g4, '/account')).headers.location, '/portal/login');
  assert.equal((await get(g4, '/signup')).status, 200);
  // the account service's own problem (usage.json without a session) carries the request id
  const usage = await http(`${g4.proxy}/portal/account/usage.json`, { headers: { 'x-request-id': 'usage-trace-7' } });
  assert.equal(usage.status, 401);
  assert.equal(usage.headers['content-type'], 'application/problem+json');
  assert.equal(usage.headers['x-request-id'], 'usage-trace-7');
  assert.equal(JSON.parse(usage.body).request_id, 'usage-trace-7');
});

// ---- G5: the startup window ----

test('startup: sign-ups answered while the node starts are kept (their sessions work once it is up)', async () => {
  assert.ok(early.length > 0, 'the probe made sign-ups');
  for (const e of early) {
    const page = await get(g5, '/account', e.cookie);
    assert.equal(page.status, 200, `${e.email} (made ${e.bannerSeen ? 'after' : 'before'} the banner)`);
    assert.ok(page.body.includes(e.email));
  }
});

test('startup: a sign-up answered 303 while the node starts has a working session at once', () => {
  assert.ok(early.length > 0, 'the probe made sign-ups');
  const stale = early.filter((e) => e.pageStatus !== 200);
  assert.deepEqual(stale.map((e) => `${e.email}: ${e.pageStatus}${e.bannerSeen ? ' (after the banner)' : ''}`), [], `${stale.length} of ${early.length} early sign-ups had no session right after the 303`);
});

test('a burst of concurrent wrong logins is limited (counted before the scrypt); a plan request that changes nothing writes no revision; control characters in an email are refused', async () => {
  const burst = await Promise.all(Array.from({ length: 20 }, () => post(g1, '/login', { email: 'burst@example.com', password: 'wrong-password-000' }, { from: '127.0.0.9' })));
  const counts = { 401: 0, 429: 0 } as Record<number, number>;
  for (const r of burst) counts[r.status] = (counts[r.status] ?? 0) + 1;
  assert.equal(counts[401], 10, JSON.stringify(counts));
  assert.equal(counts[429], 10, JSON.stringify(counts));

  const D = await signup(g1, 'steady@example.com', 'steady-password-0001', '127.0.0.10');
  const rev = async () => (await admin(g1, 'GET', '/status')).json().config.revision as number;
  const before = await rev();
  const same = await post(g1, '/account/plan', { csrf: D.csrf, plan: 'free' }, { cookie: D.cookie });
  assert.equal(same.status, 303);
  assert.equal(await rev(), before, 'no revision for a plan the developer already has');

  for (const email of ['a\u0000b@example.com', 'x\u202Ey@example.com', 'z\u200Bw@example.com']) {
    assert.equal((await post(g1, '/signup', { email, password: 'control-password-01' }, { from: '127.0.0.11' })).status, 400, JSON.stringify(email));
  }
});

// ---- G6 (two nodes on one sqlite store, one secret): sign-out everywhere, across a restart ----

test('sign-out ends every session of the developer on every node sharing the store, and stays so across a restart (the session epoch is in the store)', async () => {
  const yaml = `store: sqlite:${join(work, 'g6-shared.db')}
access_log: {enabled: false}
portal:
  enabled: true
  accounts: {enabled: true, secret: g6-account-secret-0123456789abcdefghij}
${service()}`;
  const ports = await freePorts(4);
  let ga = await startGw('g6a', yaml, ports.slice(0, 2));
  const gb = await startGw('g6b', yaml, ports.slice(2, 4));
  const D = await signup(ga, 'epoch@example.com', 'epoch-password-0001');
  // The other node knows the developer (and the session: same secret) once it has the revision.
  const until = async (what: string, check: () => Promise<boolean>) => {
    const end = Date.now() + 10_000;
    while (!(await check())) {
      if (Date.now() > end) throw new Error(`not within 10 s: ${what}`);
      await sleep(100);
    }
  };
  await until('node b knows the developer', async () => (await get(gb, '/account', D.cookie)).status === 200);
  // A second session, from another browser, on node b.
  const second = await post(gb, '/login', { email: D.email, password: D.password });
  assert.equal(second.status, 303);
  const secondCookie = cookieOf(second);
  assert.equal((await get(gb, '/account', secondCookie)).status, 200);

  const out = await post(ga, '/logout', { csrf: D.csrf }, { cookie: D.cookie });
  assert.equal(out.status, 303);
  assert.equal((await get(ga, '/account', D.cookie)).status, 303, 'signed out on node a');
  assert.equal((await get(ga, '/account', secondCookie)).status, 303, 'the other session ended too (sign out everywhere)');
  await until('node b sees the sign-out', async () => (await get(gb, '/account', D.cookie)).status === 303);
  assert.equal((await get(gb, '/account', secondCookie)).status, 303);
  assert.equal((await post(gb, '/account/keys', { csrf: D.csrf }, { cookie: D.cookie })).status, 401, 'the old form token issues no key on node b');

  // Node a restarts: the old cookie and its form token are still nothing.
  ga.run.child.kill('SIGTERM');
  await ga.run.exit;
  gws.splice(gws.indexOf(ga), 1);
  ga = await startGw('g6a', yaml, ports.slice(0, 2));
  assert.equal((await get(ga, '/account', D.cookie)).status, 303, 'after a restart');
  const k = await post(ga, '/account/keys', { csrf: D.csrf }, { cookie: D.cookie });
  assert.equal(k.status, 401);
  assert.doesNotMatch(k.body, /id="new-key"/);
  const creds = await admin(ga, 'GET', `/api/consumers/${D.name}/credentials`);
  assert.equal(creds.status, 200);
  assert.doesNotMatch(creds.body, /key-auth/, 'no key was issued');
  assert.match((await admin(ga, 'GET', '/api/config?secrets=true')).body, /session_epoch"?:\s*1\b/, 'the sign-out is stored with the developer');
  // Signing in again works (a new session, on the new epoch).
  const again = await post(ga, '/login', { email: D.email, password: D.password });
  assert.equal(again.status, 303);
  assert.equal((await get(ga, '/account', cookieOf(again))).status, 200);
  await until('node b takes the new session', async () => (await get(gb, '/account', cookieOf(again))).status === 200);
});
