/** basic-auth end to end: a gateway in-process, a real upstream, loopback sockets. */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { parseConfigText } from '../../config/load.js';
import { compile, compileAsync } from '../../config/compile.js';
import { PoolRegistry } from '../../upstream/pools.js';
import { consumerId } from '../pipeline.js';
import { hashPassword, hashPasswordAsync, parseHash, verifyPassword } from './hash.js';
import { hashCredential } from '../../admin/secrets.js';
import { loopBlockMeter } from '../../../test/loop-block.js';
import { configIssues, request, startGateway, startUpstream, type SimpleResponse, type TestGateway, type TestUpstream } from '../../../test/helpers.js';

const T = { timeout: 20_000 };
const CHALLENGE = 'Basic realm="turnpike", charset="UTF-8"';
const UNICODE_USER = 'jürgen';
const UNICODE_PASSWORD = 'pässwörd-✓-密码-🔑';
const BOB_HASH = hashPassword('bob-secret');

let up: TestUpstream;
let t: TestGateway;

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`, 'utf8').toString('base64')}`;

const config = () => `consumers:
  - name: alice
    groups: [ops, billing]
    credentials: [{type: basic-auth, username: alice, password: 'correct horse battery'}]
  - name: bob
    id: bob-id
    credentials: [{type: basic-auth, username: bob, password_hash: '${BOB_HASH}'}]
  - name: juergen
    credentials: [{type: basic-auth, username: '${UNICODE_USER}', password: '${UNICODE_PASSWORD}'}]
  - name: colon
    credentials: [{type: basic-auth, username: colon, password: 'a:b:c'}]
  - name: timer
    credentials: [{type: basic-auth, username: timer, password: 'timer-password'}]
services:
  - name: s
    url: ${up.url}
    routes:
      - {name: basic, paths: [/basic], plugins: [{name: basic-auth}]}
      - {name: hidden, paths: [/hidden], plugins: [{name: basic-auth, config: {hide_credentials: true}}]}
      - {name: timed, paths: [/timed], plugins: [{name: basic-auth}]}
      - {name: realm, paths: [/realm], plugins: [{name: basic-auth, config: {realm: 'Back office'}}]}
      - {name: open, paths: [/open]}
`;

before(async () => {
  up = await startUpstream();
  t = await startGateway(config());
});
after(async () => {
  await t?.close();
  await up?.close();
});

interface Echo { method: string; url: string; headers: Record<string, string | string[] | undefined> }
const echo = (r: SimpleResponse): Echo => JSON.parse(r.body) as Echo;

function assertUnauthorized(r: SimpleResponse, challenge = CHALLENGE, ...secrets: string[]): void {
  assert.equal(r.status, 401, r.body);
  assert.equal(r.headers['content-type'], 'application/problem+json');
  assert.equal(r.headers['www-authenticate'], challenge);
  const p = JSON.parse(r.body) as { type: string; status: number };
  assert.equal(p.type, 'urn:turnpike:problem:unauthorized');
  assert.equal(p.status, 401);
  const everything = r.body + '\n' + r.rawHeaders.join('\n');
  for (const s of secrets) assert.ok(!everything.includes(s), `the response echoes ${JSON.stringify(s)}`);
}

test('the right password: 200, consumer headers upstream', T, async () => {
  const r = await request(`${t.url}/basic/x`, { headers: { authorization: basic('alice', 'correct horse battery') } });
  assert.equal(r.status, 200, r.body);
  const h = echo(r).headers;
  assert.equal(h['x-consumer-name'], 'alice');
  assert.equal(h['x-consumer-id'], consumerId('alice'));
  assert.equal(h['x-consumer-groups'], 'ops, billing');
  assert.equal(h['x-credential-identifier'], 'basic-auth:alice');
  assert.ok(!String(h['x-credential-identifier']).includes('correct horse'));
  assert.equal(h['x-anonymous-consumer'], undefined);
  // Without hide_credentials, Authorization goes upstream as sent.
  assert.equal(h['authorization'], basic('alice', 'correct horse battery'));

  // The scheme name is case-insensitive (RFC 9110 §11.1).
  const lower = await request(`${t.url}/basic/x`, { headers: { authorization: basic('alice', 'correct horse battery').replace('Basic', 'basic') } });
  assert.equal(lower.status, 200, lower.body);

  // A password with colons: the user name ends at the first one (RFC 7617 §2).
  const colon = await request(`${t.url}/basic/x`, { headers: { authorization: basic('colon', 'a:b:c') } });
  assert.equal(colon.status, 200, colon.body);
  assert.equal(echo(colon).headers['x-consumer-name'], 'colon');
});

test('password_hash from hashPassword() works', T, async () => {
  // OWASP's scrypt minimum (Password Storage Cheat Sheet: N=2^17 r=8 p=1, or its equivalents
  // down to N=2^13 r=8 p=10), as the portal's; and so are passwords written through the admin API.
  for (const h of [BOB_HASH, (hashCredential({ type: 'basic-auth', username: 'x', password: 'x-secret' }) as { password_hash: string }).password_hash]) {
    const { N, r, p } = parseHash(h)!;
    assert.ok(N * r * p >= 2 ** 13 * 8 * 10 && 128 * N * r >= 8 * 2 ** 20, `scrypt N=${N} r=${r} p=${p}`);
  }
  const r = await request(`${t.url}/basic`, { headers: { authorization: basic('bob', 'bob-secret') } });
  assert.equal(r.status, 200, r.body);
  assert.equal(echo(r).headers['x-consumer-name'], 'bob');
  assert.equal(echo(r).headers['x-consumer-id'], 'bob-id');
  assertUnauthorized(await request(`${t.url}/basic`, { headers: { authorization: basic('bob', 'bob-secreT') } }));
  // Two hashes of the same password differ (random salt).
  assert.notEqual(hashPassword('bob-secret'), BOB_HASH);
});

test('wrong password, unknown user, malformed base64, no colon, other schemes, none: 401 with the Basic challenge', T, async () => {
  const before = up.requests.length;
  assertUnauthorized(await request(`${t.url}/basic`, { headers: { authorization: basic('alice', 'wrong horse battery') } }), CHALLENGE, 'wrong horse battery');
  assertUnauthorized(await request(`${t.url}/basic`, { headers: { authorization: basic('alice', '') } }));
  assertUnauthorized(await request(`${t.url}/basic`, { headers: { authorization: basic('mallory', 'correct horse battery') } }), CHALLENGE, 'mallory');
  // Another consumer's password is not alice's.
  assertUnauthorized(await request(`${t.url}/basic`, { headers: { authorization: basic('alice', 'bob-secret') } }));
  // Malformed base64 (characters outside the alphabet, padding in the middle).
  assertUnauthorized(await request(`${t.url}/basic`, { headers: { authorization: 'Basic !!!not*base64' } }));
  assertUnauthorized(await request(`${t.url}/basic`, { headers: { authorization: 'Basic YWxp=Y2U6' } }));
  assertUnauthorized(await request(`${t.url}/basic`, { headers: { authorization: 'Basic' } }));
  // Valid base64 without a colon.
  const noColon = await request(`${t.url}/basic`, { headers: { authorization: `Basic ${Buffer.from('alicecorrect horse battery').toString('base64')}` } });
  assertUnauthorized(noColon);
  assert.match((JSON.parse(noColon.body) as { detail: string }).detail, /malformed/);
  // Another scheme, or nothing.
  assertUnauthorized(await request(`${t.url}/basic`, { headers: { authorization: 'Bearer abc.def.ghi' } }));
  const none = await request(`${t.url}/basic`);
  assertUnauthorized(none);
  assert.match((JSON.parse(none.body) as { detail: string }).detail, /required/);
  // The realm is configurable.
  assertUnauthorized(await request(`${t.url}/realm`), 'Basic realm="Back office", charset="UTF-8"');
  assert.equal(up.requests.length, before, 'the upstream was called for a rejected request');
});

test('unicode user names and passwords (UTF-8, RFC 7617 charset)', T, async () => {
  const r = await request(`${t.url}/basic`, { headers: { authorization: basic(UNICODE_USER, UNICODE_PASSWORD) } });
  assert.equal(r.status, 200, r.body);
  assert.equal(echo(r).headers['x-consumer-name'], 'juergen');
  // One code point off: rejected.
  assertUnauthorized(await request(`${t.url}/basic`, { headers: { authorization: basic(UNICODE_USER, UNICODE_PASSWORD.replace('ä', 'a')) } }));
  // The decomposed (NFD) form of the same name and password, as some keyboards and OSes send: compared in NFC.
  const nfd = await request(`${t.url}/basic`, { headers: { authorization: basic(UNICODE_USER.normalize('NFD'), UNICODE_PASSWORD.normalize('NFD')) } });
  assert.equal(nfd.status, 200, nfd.body);
  // The same characters sent as ISO-8859-1 bytes are not the UTF-8 password.
  const latin1 = `Basic ${Buffer.from(`${UNICODE_USER}:pässwörd`, 'latin1').toString('base64')}`;
  assertUnauthorized(await request(`${t.url}/basic`, { headers: { authorization: latin1 } }));
});

test('hide_credentials removes Authorization before the upstream', T, async () => {
  const r = await request(`${t.url}/hidden`, { headers: { Authorization: basic('alice', 'correct horse battery'), 'x-keep': '1' } });
  assert.equal(r.status, 200, r.body);
  assert.equal(echo(r).headers['authorization'], undefined);
  assert.equal(echo(r).headers['x-keep'], '1');
  assert.equal(echo(r).headers['x-consumer-name'], 'alice');
  const raw = up.requests[up.requests.length - 1]!.rawHeaders;
  assert.ok(!raw.some((v, i) => i % 2 === 0 && v.toLowerCase() === 'authorization'));
  // From the cache (second time) as well.
  const again = await request(`${t.url}/hidden`, { headers: { Authorization: basic('alice', 'correct horse battery') } });
  assert.equal(again.status, 200);
  assert.equal(echo(again).headers['authorization'], undefined);
});

test('a verified pair is cached: the second request is much faster than the first (scrypt)', T, async () => {
  // The upstream connection is opened beforehand, so that only authentication differs.
  assert.equal((await request(`${t.url}/open`)).status, 200);
  const auth = { authorization: basic('timer', 'timer-password') };
  const time = async () => {
    const t0 = performance.now();
    const r = await request(`${t.url}/timed`, { headers: auth });
    assert.equal(r.status, 200, r.body);
    return performance.now() - t0;
  };
  const first = await time();
  const cached = Math.min(await time(), await time(), await time());
  assert.ok(cached < first / 3, `first ${first.toFixed(1)} ms, cached ${cached.toFixed(1)} ms`);
  // A wrong password for the cached user is not served from the cache.
  assertUnauthorized(await request(`${t.url}/timed`, { headers: { authorization: basic('timer', 'timer-passwore') } }));
  // An unknown user costs a check too (no user-name oracle by timing): about as slow as a first check.
  const t0 = performance.now();
  assertUnauthorized(await request(`${t.url}/timed`, { headers: { authorization: basic('nobody-here', 'timer-password') } }));
  const unknown = performance.now() - t0;
  assert.ok(unknown > cached * 3 || unknown > first / 4, `unknown user ${unknown.toFixed(1)} ms, first ${first.toFixed(1)} ms, cached ${cached.toFixed(1)} ms`);
});

test('after compile the loaded config holds password_hash, never the plain password', T, async () => {
  // The running gateway's own config object.
  const creds = t.gw.loaded.config.consumers!.flatMap((c) => c.credentials ?? []) as Record<string, unknown>[];
  assert.equal(creds.length, 5);
  for (const c of creds) {
    assert.equal(c['password'], undefined, JSON.stringify(c));
    assert.match(String(c['password_hash']), /^scrypt\$/);
  }
  const json = JSON.stringify(t.gw.loaded.config);
  for (const p of ['correct horse battery', UNICODE_PASSWORD, 'a:b:c', 'timer-password']) assert.ok(!json.includes(p), `${p} is still in the loaded config`);

  // A fresh compile: the hash that replaced the password verifies it.
  const loaded = parseConfigText(config(), { env: {} });
  const pools = new PoolRegistry();
  try {
    compile(loaded, { pools }).dispose();
  } finally {
    await pools.closeAll();
  }
  const alice = loaded.config.consumers![0]!.credentials![0] as Record<string, unknown>;
  assert.deepEqual(Object.keys(alice).sort(), ['password_hash', 'type', 'username']);
  const parsed = parseHash(String(alice['password_hash']));
  assert.ok(parsed);
  assert.equal(await verifyPassword('correct horse battery', parsed), true);
  assert.equal(await verifyPassword('correct horse batterY', parsed), false);
  // Hashes are made in NFC; checks too: the decomposed form of a password matches either way.
  const nfd = 'pass-cafe\u0301-wo\u0308rd';
  for (const made of [hashPassword(nfd), await hashPasswordAsync(nfd), hashPassword(nfd.normalize('NFC'))]) {
    assert.equal(await verifyPassword(nfd, parseHash(made)!), true);
    assert.equal(await verifyPassword(nfd.normalize('NFC'), parseHash(made)!), true);
    assert.equal(await verifyPassword('pass-cafe-word', parseHash(made)!), false);
  }
  // A given password_hash is kept as it is.
  assert.equal((loaded.config.consumers![1]!.credentials![0] as Record<string, unknown>)['password_hash'], BOB_HASH);
});

test('the plain password is dropped even when no route binds basic-auth', T, async () => {
  const loaded = parseConfigText(`consumers:
  - name: alice
    credentials: [{type: basic-auth, username: alice, password: 'correct horse battery'}]
services:
  - {name: s, url: 'http://127.0.0.1:9', routes: [{name: r, paths: [/r]}]}
`, { env: {} });
  const pools = new PoolRegistry();
  try {
    compile(loaded, { pools }).dispose();
  } finally {
    await pools.closeAll();
  }
  assert.ok(!JSON.stringify(loaded.config).includes('correct horse battery'));
});

test('config: a realm that cannot go into a header field (CR LF, past Latin-1) is an error at config.realm, not a 500 on every 401', T, async () => {
  const cfg = (realm: string) => `consumers:
  - {name: alice, credentials: [{type: basic-auth, username: alice, password_hash: '${BOB_HASH}'}]}
services:
  - {name: s, url: 'http://127.0.0.1:9', routes: [{name: r, paths: [/r], plugins: [{name: basic-auth, config: {realm: ${JSON.stringify(realm)}}}]}]}
`;
  for (const realm of ['a\r\nX-Injected: 1', 'Back\u0000office', '\u5bc6', 'quote"d']) {
    const issues = configIssues(cfg(realm));
    assert.equal(issues.length, 1, `${JSON.stringify(realm)}: ${JSON.stringify(issues)}`);
    assert.match(issues[0]!.path, /plugins\[0\]\.config\.realm$/);
  }
  for (const realm of ['Back office', 'Zürich', 'a\tb']) assert.deepEqual(configIssues(cfg(realm)), [], realm);
  // Such a realm goes out in the challenge (a 401, not a 500).
  const g = await startGateway(cfg('Zürich'));
  try {
    const r = await request(`${g.url}/r`);
    assert.equal(r.status, 401, r.body);
    assert.match(String(r.headers['www-authenticate']), /^Basic realm="Z[^"]+rich", charset="UTF-8"$/);
  } finally {
    await g.close();
  }
});

test('config: two user names that are one in NFC (composed and decomposed ü) are the same name twice, not one silently shadowing the other', T, () => {
  const issues = configIssues(`consumers:
  - {name: a, credentials: [{type: basic-auth, username: "j\u00fcrgen", password_hash: '${BOB_HASH}'}]}
  - {name: b, credentials: [{type: basic-auth, username: "ju\u0308rgen", password_hash: '${BOB_HASH}'}]}
services:
  - {name: s, url: 'http://127.0.0.1:9', routes: [{name: r, paths: [/r], plugins: [{name: basic-auth}]}]}
`);
  assert.equal(issues.length, 1, JSON.stringify(issues));
  assert.equal(issues[0]!.path, 'consumers[1].credentials[0].username');
  assert.equal(issues[0]!.message, 'user name "ju\u0308rgen" is also consumer "a"\'s', 'the other consumer named, as key-auth and jwt do');
  const same = configIssues(`consumers:
  - {name: a, credentials: [{type: basic-auth, username: u, password_hash: '${BOB_HASH}'}, {type: basic-auth, username: u, password_hash: '${BOB_HASH}'}]}
services: []
`);
  assert.deepEqual(same.map((i) => `${i.path}: ${i.message}`), ['consumers[0].credentials[1].username: user name "u" is given twice for consumer "a"']);
});

test('config: a password_hash whose cost no check can afford (N=2^20 r=32 p=16: 4 GiB and minutes of CPU a check, unknown user names too) is refused at load; OWASP\'s N=2^17 r=8 p=1 is not', T, () => {
  const salt = Buffer.alloc(16, 7).toString('base64');
  const hash = Buffer.alloc(32, 9).toString('base64');
  const issues = (nrp: string) => configIssues(`consumers:
  - {name: a, credentials: [{type: basic-auth, username: a, password_hash: 'scrypt$${nrp}$${salt}$${hash}'}]}
services:
  - {name: s, url: 'http://127.0.0.1:9', routes: [{name: r, paths: [/r], plugins: [{name: basic-auth}]}]}
`);
  for (const nrp of ['1048576$32$16', '1048576$8$1', '262144$8$16']) {
    const found = issues(nrp);
    assert.equal(found.length, 1, `${nrp}: ${JSON.stringify(found)}`);
    assert.match(found[0]!.message, /not a valid scrypt hash/);
  }
  for (const nrp of ['131072$8$1', '16384$8$5', '16384$8$1', '65536$8$2']) assert.deepEqual(issues(nrp), [], nrp);
});

test('one client sending made-up passwords by the hundred cannot fill the check queue for everyone: its checks past 16 at once are 503 at once, another client\'s right password still passes; the same pair sent again meanwhile shares one check', { timeout: 60_000 }, async () => {
  const g = await startGateway(`trusted_proxies: [127.0.0.1]
consumers:
  - {name: alice, credentials: [{type: basic-auth, username: alice, password: 'correct horse battery'}]}
  - {name: bob, credentials: [{type: basic-auth, username: bob, password_hash: '${BOB_HASH}'}]}
services: [{name: s, url: '${up.url}', routes: [{name: r, paths: [/r], plugins: [{name: basic-auth}]}]}]
`);
  try {
    const attacker = Array.from({ length: 300 }, (_, i) => request(`${g.url}/r`, { headers: { 'x-forwarded-for': '203.0.113.9', authorization: basic('alice', `guess-${i}`) } }));
    await new Promise((r) => setTimeout(r, 500)); // (all of them in)
    const t0 = performance.now();
    const victim = await request(`${g.url}/r`, { headers: { 'x-forwarded-for': '198.51.100.7', authorization: basic('alice', 'correct horse battery') } });
    const waited = performance.now() - t0;
    const statuses = (await Promise.all(attacker)).map((r) => r.status);
    assert.equal(victim.status, 200, `${victim.body} (after ${waited.toFixed(0)} ms)`);
    assert.ok(statuses.filter((s) => s === 503).length >= 250, `attacker: ${statuses.filter((s) => s === 401).length} judged, ${statuses.filter((s) => s === 503).length} refused`);
    // Twenty of one client's requests with a pair not verified yet: one check, all pass.
    const burst = await Promise.all(Array.from({ length: 20 }, () => request(`${g.url}/r`, { headers: { 'x-forwarded-for': '198.51.100.8', authorization: basic('bob', 'bob-secret') } })));
    assert.deepEqual(burst.map((r) => r.status), Array(20).fill(200));
  } finally {
    await g.close();
  }
});

test('unknown user names cost what real ones do, whatever mix of hash costs the users have (an older, cheaper hash first, a new one after): a name is not told apart by its time alone', { timeout: 60_000 }, async () => {
  // (the older one far cheaper than the default, so that the two costs stand apart on a loaded machine)
  const old = await hashPasswordAsync('old-password', { N: 4096, r: 8, p: 1, keylen: 32 });
  const g = await startGateway(`consumers:
  - {name: old, credentials: [{type: basic-auth, username: old, password_hash: '${old}'}]}
  - {name: new, credentials: [{type: basic-auth, username: new, password: 'new-password'}]}
services: [{name: s, url: '${up.url}', routes: [{name: r, paths: [/r], plugins: [{name: basic-auth}]}]}]
`);
  try {
    const time = async (user: string) => {
      const t0 = performance.now();
      assertUnauthorized(await request(`${g.url}/r`, { headers: { authorization: basic(user, 'wrong-password') } }));
      return performance.now() - t0;
    };
    const known = [await time('new'), await time('new'), await time('new')].sort((a, b) => a - b)[1]!;
    const unknown: number[] = [];
    for (let i = 0; i < 16; i++) unknown.push(await time(`nobody-${i}`));
    // Each name keeps one user's cost: about half of them cost what "new" costs (fewer than 3 of
    // 16 by chance: 0.2 %); with the first user's cost for all, none did.
    assert.ok(unknown.filter((x) => x > known * 0.4).length >= 3, `known ${known.toFixed(0)} ms, unknown ${unknown.map((x) => x.toFixed(0)).join(' ')} ms`);
  } finally {
    await g.close();
  }
});

test('a reload of a config with plain passwords hashes them off the event loop, and a compile of the same pairs again runs no scrypt (the hash this process made is reused)', T, async () => {
  const text = `consumers:\n${[0, 1, 2].map((i) => `  - name: reload-${i}\n    credentials: [{type: basic-auth, username: reload-${i}, password: 'reload-password-${i}'}]\n`).join('')}services:\n  - {name: s, url: 'http://127.0.0.1:9', routes: [{name: r, paths: [/r], plugins: [{name: basic-auth}]}]}\n`;
  const hashes = (loaded: ReturnType<typeof parseConfigText>) => loaded.config.consumers!.map((c) => (c.credentials![0] as Record<string, unknown>)['password_hash']);
  const pools = new PoolRegistry();
  try {
    // The reload's compile (compileAsync): three scrypt runs (~250 ms each) were one block of the event loop.
    const first = parseConfigText(text, { env: {} });
    const meter = loopBlockMeter();
    let blockedMs: number;
    try {
      (await compileAsync(first, { pools })).dispose();
    } finally {
      blockedMs = meter.stop();
    }
    assert.ok(blockedMs < 300, `the event loop was blocked for ${blockedMs.toFixed(0)} ms`);
    assert.equal(await verifyPassword('reload-password-2', parseHash(String(hashes(first)[2]))!), true);
    // A later (synchronous) compile of the same pairs — the admin API's validation, a start — reuses them.
    const again = parseConfigText(text, { env: {} });
    const t0 = performance.now();
    compile(again, { pools }).dispose();
    const ms = performance.now() - t0;
    assert.deepEqual(hashes(again), hashes(first));
    assert.ok(ms < 200, `the compile took ${ms.toFixed(0)} ms`);
  } finally {
    await pools.closeAll();
  }
});
