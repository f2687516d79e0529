/** key-auth end to end: a gateway in-process, a real upstream, loopback sockets. */
import { configIssues as issuesOf } from '../../../test/helpers.js';
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfigText } from '../../config/load.js';
import { compile } from '../../config/compile.js';
import { ConfigError } from '../../config/errors.js';
import { PoolRegistry } from '../../upstream/pools.js';
import { consumerId } from '../pipeline.js';
import { request, startGateway, startUpstream, type SimpleResponse, type TestGateway, type TestUpstream } from '../../../test/helpers.js';

const ALICE_KEY = 'alice-key-0001';
const BOB_KEY = 'bob-key-00002';
/** A key with characters that need percent-encoding in a query string. */
const ODD_KEY = 'c@rol k+y/=&x';
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const T = { timeout: 15_000 };

let up: TestUpstream;
let t: TestGateway;

const consumers = () => `consumers:
  - name: alice
    groups: [admins, dev]
    credentials: [{type: key-auth, key: '${ALICE_KEY}'}]
  - name: bob
    id: bob-custom-id
    credentials: [{type: key-auth, key: '${BOB_KEY}', id: bob-cred}]
  - name: carol
    credentials: [{type: key-auth, key: '${ODD_KEY}'}]
  - name: guest
`;

const config = () => `${consumers()}services:
  - name: s
    url: ${up.url}
    routes:
      - {name: default, paths: [/default], plugins: [{name: key-auth}]}
      - {name: custom, paths: [/custom], plugins: [{name: key-auth, config: {header: X-Api-Token, query: token}}]}
      - {name: hidden, paths: [/hidden], plugins: [{name: key-auth, config: {hide_credentials: true}}]}
      - {name: anon, paths: [/anon], plugins: [{name: key-auth, config: {anonymous: guest}}]}
      - {name: headeronly, paths: [/headeronly], plugins: [{name: key-auth, config: {query: false}}]}
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

interface Echo { method: string; url: string; headers: Record<string, string | string[] | undefined>; body: string }
const echo = (r: SimpleResponse): Echo => JSON.parse(r.body) as Echo;

/** The last request the upstream received, with its raw header list. */
const lastUpstream = () => up.requests[up.requests.length - 1]!;

/** Every value of a header (any case) in a raw header list. */
function rawValues(raw: string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) out.push(raw[i + 1]!);
  return out;
}

function assertUnauthorized(r: SimpleResponse, ...secrets: string[]): void {
  assert.equal(r.status, 401, r.body);
  assert.equal(r.headers['content-type'], 'application/problem+json');
  assert.equal(r.headers['www-authenticate'], 'Key realm="turnpike"');
  const p = JSON.parse(r.body) as { type: string; status: number; detail: string };
  assert.equal(p.type, 'urn:turnpike:problem:unauthorized');
  assert.equal(p.status, 401);
  // Nothing of the presented key anywhere in the response (body, header names or values).
  const everything = r.body + '\n' + r.rawHeaders.join('\n');
  for (const s of secrets) {
    assert.ok(!everything.includes(s), `the response echoes ${JSON.stringify(s)}`);
    assert.ok(!everything.includes(encodeURIComponent(s)), `the response echoes ${JSON.stringify(encodeURIComponent(s))}`);
  }
}

test('a key in the default header or the default query parameter authenticates', T, async () => {
  const h = await request(`${t.url}/default/a`, { headers: { apikey: ALICE_KEY } });
  assert.equal(h.status, 200, h.body);
  assert.equal(echo(h).headers['x-consumer-name'], 'alice');
  assert.equal(echo(h).headers['apikey'], ALICE_KEY, 'without hide_credentials the key goes upstream');

  // Header name matching is case-insensitive.
  const hc = await request(`${t.url}/default/a`, { headers: { ApiKey: BOB_KEY } });
  assert.equal(hc.status, 200, hc.body);
  assert.equal(echo(hc).headers['x-consumer-name'], 'bob');

  const q = await request(`${t.url}/default/a?x=1&apikey=${ALICE_KEY}`);
  assert.equal(q.status, 200, q.body);
  assert.equal(echo(q).headers['x-consumer-name'], 'alice');
  assert.equal(echo(q).url, `/default/a?x=1&apikey=${ALICE_KEY}`);

  // A key needing percent-encoding is decoded from the query ('+' would be a space: sent as %2B).
  const odd = await request(`${t.url}/default/a?apikey=${encodeURIComponent(ODD_KEY)}`);
  assert.equal(odd.status, 200, odd.body);
  assert.equal(echo(odd).headers['x-consumer-name'], 'carol');

  // An empty key header is no key: the query parameter still counts.
  const empty = await request(`${t.url}/default/a?apikey=${ALICE_KEY}`, { headers: { apikey: '' } });
  assert.equal(empty.status, 200, empty.body);
  assert.equal(echo(empty).headers['x-consumer-name'], 'alice');
});

test('custom header and query parameter names', T, async () => {
  const h = await request(`${t.url}/custom`, { headers: { 'x-api-token': ALICE_KEY } });
  assert.equal(h.status, 200, h.body);
  assert.equal(echo(h).headers['x-consumer-name'], 'alice');

  const q = await request(`${t.url}/custom?token=${BOB_KEY}`);
  assert.equal(q.status, 200, q.body);
  assert.equal(echo(q).headers['x-consumer-name'], 'bob');

  // The default names mean nothing on this route.
  const before = up.requests.length;
  assertUnauthorized(await request(`${t.url}/custom`, { headers: { apikey: ALICE_KEY } }), ALICE_KEY);
  assertUnauthorized(await request(`${t.url}/custom?apikey=${ALICE_KEY}`), ALICE_KEY);
  assert.equal(up.requests.length, before, 'the upstream was called for an unauthenticated request');
});

test('query: false: a key in the query string is not accepted', T, async () => {
  assertUnauthorized(await request(`${t.url}/headeronly?apikey=${ALICE_KEY}`), ALICE_KEY);
  const h = await request(`${t.url}/headeronly`, { headers: { apikey: ALICE_KEY } });
  assert.equal(h.status, 200, h.body);
});

test('a wrong key: 401 problem+json with the Key challenge, the key never echoed, upstream not called', T, async () => {
  const before = up.requests.length;
  const wrong = 'not-a-valid-key-1234';
  assertUnauthorized(await request(`${t.url}/default`, { headers: { apikey: wrong } }), wrong);
  assertUnauthorized(await request(`${t.url}/default?apikey=${wrong}`), wrong);
  // A prefix or extension of a valid key is wrong too.
  assertUnauthorized(await request(`${t.url}/default`, { headers: { apikey: ALICE_KEY + 'x' } }), ALICE_KEY + 'x');
  assertUnauthorized(await request(`${t.url}/default`, { headers: { apikey: ALICE_KEY.slice(0, -1) } }), ALICE_KEY.slice(0, -1));
  // Another consumer's key in a request of someone else's route is just that consumer.
  // A key with markup or quotes is not reflected either.
  const evil = '<script>"k"</script>';
  assertUnauthorized(await request(`${t.url}/default?apikey=${encodeURIComponent(evil)}`), evil);
  assert.equal(up.requests.length, before);
});

test('two keys in the query (the same parameter twice): 401, neither is taken (the upstream could read the other one)', T, async () => {
  const before = up.requests.length;
  for (const q of [`apikey=${ALICE_KEY}&apikey=${BOB_KEY}`, `apikey=${ALICE_KEY}&apikey=not-a-key-123`, `apikey=${ALICE_KEY}&x=1&apikey=${ALICE_KEY}`, `apikey=&apikey=${ALICE_KEY}`]) {
    const r = await request(`${t.url}/default?${q}`);
    assertUnauthorized(r, ALICE_KEY, BOB_KEY);
    assert.match((JSON.parse(r.body) as { detail: string }).detail, /more than one API key/, q);
  }
  // the custom parameter name too; another parameter beside the key is fine
  assertUnauthorized(await request(`${t.url}/custom?token=${BOB_KEY}&token=${ALICE_KEY}`), ALICE_KEY, BOB_KEY);
  assert.equal(up.requests.length, before, 'the upstream was called');
  assert.equal((await request(`${t.url}/custom?apikey=${ALICE_KEY}&token=${BOB_KEY}`)).status, 200);
});

test('a key in the header and another in the query parameter: 401, neither is taken (the upstream could read the query one); the same key in both passes', T, async () => {
  const before = up.requests.length;
  for (const [path, header, q] of [['/default', 'apikey', `apikey=${BOB_KEY}`], ['/default', 'apikey', `apikey=not-a-key-123`], ['/custom', 'x-api-token', `token=${BOB_KEY}`], ['/default', 'apikey', `x=1&api%6Bey=${BOB_KEY}`]] as const) {
    const r = await request(`${t.url}${path}?${q}`, { headers: { [header]: ALICE_KEY } });
    assertUnauthorized(r, ALICE_KEY, BOB_KEY);
    assert.match((JSON.parse(r.body) as { detail: string }).detail, /more than one API key/, q);
  }
  assert.equal(up.requests.length, before, 'the upstream was called');
  assert.equal((await request(`${t.url}/default?apikey=${ALICE_KEY}`, { headers: { apikey: ALICE_KEY } })).status, 200, 'the same key twice');
  assert.equal((await request(`${t.url}/default?apikey=`, { headers: { apikey: ALICE_KEY } })).status, 200, 'an empty parameter is no key');
  assert.equal((await request(`${t.url}/headeronly?apikey=${BOB_KEY}`, { headers: { apikey: ALICE_KEY } })).status, 200, 'query: false: the parameter is no credential');
});

test('a key after a \';\' in the query (a separator to Rack < 3 and Python\'s old parse_qs): 401, never passed on beside the header\'s key nor left by hide_credentials', T, async () => {
  const before = up.requests.length;
  for (const [path, q, headers] of [
    ['/default', `x=1;apikey=${BOB_KEY}`, { apikey: ALICE_KEY }],
    ['/default', `x=1;api%6Bey=${BOB_KEY}&y=2`, { apikey: ALICE_KEY }],
    ['/hidden', `apikey=${ALICE_KEY}&x=1;apikey=${BOB_KEY}`, {}],
    ['/custom', `a=b;token=${BOB_KEY}`, { 'x-api-token': ALICE_KEY }],
  ] as const) {
    const r = await request(`${t.url}${path}?${q}`, { headers });
    assertUnauthorized(r, ALICE_KEY, BOB_KEY);
    assert.match((JSON.parse(r.body) as { detail: string }).detail, /after a ';'/, q);
  }
  assert.equal(up.requests.length, before, 'the upstream was called');
  // a ';' elsewhere is data as before
  assert.equal((await request(`${t.url}/default?x=1;y=2&apikey=${ALICE_KEY}`)).status, 200);
  assert.equal((await request(`${t.url}/default?x=a;apikeys=2`, { headers: { apikey: ALICE_KEY } })).status, 200);
});

test('a key after a \';\' (`a=1;apikey=K`) never reaches the upstream or a cache key, whatever key-auth makes of it: refused, or gone on as the anonymous consumer (hide_credentials takes it out as it takes out one after \'&\')', T, async () => {
  const g = await startGateway(`${consumers()}services:
  - name: s
    url: ${up.url}
    routes:
      - {name: anon-hidden, paths: [/ah], plugins: [{name: key-auth, config: {anonymous: guest, hide_credentials: true}}, {name: cache, config: {ttl: 60s}}]}
      - {name: anon-cached, paths: [/ac], plugins: [{name: key-auth, config: {anonymous: guest}}, {name: cache, config: {ttl: 60s}}]}
`);
  try {
    // hide_credentials: the upstream gets neither key, whichever separator came before it
    const qs = [`a=1;apikey=${ALICE_KEY}`, `a=1;apikey=${BOB_KEY}&b=2`, `apikey=${BOB_KEY};a=1`, `a=1;api%6Bey=${ALICE_KEY}`];
    for (const [i, q] of qs.entries()) {
      const r = await request(`${g.url}/ah/${i}?${q}`);
      assert.equal(r.status, 200, r.body);
      assert.equal(echo(r).headers['x-consumer-name'], 'guest', q);
      assert.ok(!echo(r).url.includes(ALICE_KEY) && !echo(r).url.includes(BOB_KEY), `${q} reached the upstream as ${echo(r).url}`);
    }
    assert.deepEqual(up.requests.slice(-4).map((r) => r.url), ['/ah/0?a=1', '/ah/1?a=1&b=2', '/ah/2?a=1', '/ah/3?a=1'], 'the rest of each query as sent');
    // An answer the upstream made to a key no auth plugin vouched for (it reached the upstream:
    // hide_credentials is off) is not stored for others, the key never in a cache key: the same
    // query with another key, or none, is no hit of it; without a key the entry is shared.
    const first = await request(`${g.url}/ac/x?a=1;apikey=${ALICE_KEY}`);
    assert.equal(first.headers['x-cache-status'], 'MISS');
    const second = await request(`${g.url}/ac/x?a=1;apikey=${BOB_KEY}`);
    assert.equal(second.status, 200);
    assert.notEqual(second.headers['x-cache-status'], 'HIT', 'an answer to Alice\'s key went to Bob');
    assert.ok(!second.body.includes(ALICE_KEY));
    assert.notEqual((await request(`${g.url}/ac/x?a=1`)).headers['x-cache-status'], 'HIT', 'an answer to a key went to a caller without one');
    assert.equal((await request(`${g.url}/ac/x?a=1`)).headers['x-cache-status'], 'HIT');
  } finally {
    await g.close();
  }
});

test('an underscore spelling of the key header (X_Api_Token, read as the same field by CGI, WSGI, Rack and PHP) never reaches the upstream', T, async () => {
  const r = await request(`${t.url}/custom`, { headers: { 'x-api-token': ALICE_KEY, X_Api_Token: BOB_KEY, 'x-api_token': BOB_KEY, 'x_other': 'kept' } });
  assert.equal(r.status, 200, r.body);
  assert.equal(echo(r).headers['x-consumer-name'], 'alice');
  const raw = lastUpstream().rawHeaders;
  assert.deepEqual(rawValues(raw, 'x-api-token'), [ALICE_KEY]);
  assert.deepEqual(rawValues(raw, 'x_api_token'), []);
  assert.deepEqual(rawValues(raw, 'x-api_token'), []);
  assert.deepEqual(rawValues(raw, 'x_other'), ['kept'], 'other underscore fields pass');
  // It is no key either.
  assertUnauthorized(await request(`${t.url}/custom`, { headers: { X_Api_Token: ALICE_KEY } }), ALICE_KEY);
});

test('no key: 401 with the challenge', T, async () => {
  const before = up.requests.length;
  const r = await request(`${t.url}/default`);
  assertUnauthorized(r);
  assert.match((JSON.parse(r.body) as { detail: string }).detail, /required/);
  // An empty header or an empty query value is no key.
  assertUnauthorized(await request(`${t.url}/default`, { headers: { apikey: '' } }));
  assertUnauthorized(await request(`${t.url}/default?apikey=`));
  assertUnauthorized(await request(`${t.url}/default?apikey`));
  assert.equal(up.requests.length, before);
});

test('hide_credentials: the header goes, and only the apikey query parameter (the others byte-identical)', T, async () => {
  const h = await request(`${t.url}/hidden/x`, { headers: { ApiKey: ALICE_KEY, 'x-other': 'kept' } });
  assert.equal(h.status, 200, h.body);
  assert.deepEqual(rawValues(lastUpstream().rawHeaders, 'apikey'), []);
  assert.equal(echo(h).headers['x-other'], 'kept');
  assert.equal(echo(h).headers['x-consumer-name'], 'alice');

  const q = await request(`${t.url}/hidden/x?a=1&apikey=${ALICE_KEY}&b=%2F`);
  assert.equal(q.status, 200, q.body);
  assert.equal(echo(q).url, '/hidden/x?a=1&b=%2F');

  // Odd but valid bytes around it stay exactly as sent.
  const odd = await request(`${t.url}/hidden/x?z=a+b&apikey=${encodeURIComponent(ODD_KEY)}&e=&f&g=%7e%2f&apikeyx=1`);
  assert.equal(odd.status, 200, odd.body);
  assert.equal(echo(odd).headers['x-consumer-name'], 'carol');
  assert.equal(echo(odd).url, '/hidden/x?z=a+b&e=&f&g=%7e%2f&apikeyx=1');

  // The key alone: no query string left at all.
  const only = await request(`${t.url}/hidden/x?apikey=${ALICE_KEY}`);
  assert.equal(only.status, 200, only.body);
  assert.equal(echo(only).url, '/hidden/x');

  // A percent-encoded parameter name is the same parameter: accepted, and removed as well.
  const enc = await request(`${t.url}/hidden/x?api%6Bey=${ALICE_KEY}&c=3`);
  assert.equal(enc.status, 200, enc.body);
  assert.equal(echo(enc).url, '/hidden/x?c=3');
  assert.ok(!JSON.stringify(lastUpstream()).includes(ALICE_KEY), 'the key reached the upstream');
});

test('the upstream gets x-consumer-id, -name, -groups and x-credential-identifier (never the key)', T, async () => {
  const a = echo(await request(`${t.url}/default`, { headers: { apikey: ALICE_KEY } })).headers;
  assert.equal(a['x-consumer-name'], 'alice');
  assert.match(String(a['x-consumer-id']), UUID_RE);
  assert.equal(a['x-consumer-id'], consumerId('alice'));
  assert.notEqual(consumerId('alice'), consumerId('bob'));
  assert.equal(a['x-consumer-groups'], 'admins, dev');
  const cred = String(a['x-credential-identifier']);
  assert.ok(cred.length > 0);
  assert.ok(!cred.includes(ALICE_KEY) && !cred.includes(encodeURIComponent(ALICE_KEY)), `credential identifier ${cred} contains the key`);
  assert.equal(a['x-anonymous-consumer'], undefined);

  const b = echo(await request(`${t.url}/default`, { headers: { apikey: BOB_KEY } })).headers;
  assert.equal(b['x-consumer-name'], 'bob');
  assert.equal(b['x-consumer-id'], 'bob-custom-id');
  assert.equal(b['x-credential-identifier'], 'bob-cred');
  assert.equal(b['x-consumer-groups'], undefined, 'a consumer without groups gets no groups header');

  // The same key always maps to the same identifier (stable across requests and gateways).
  const again = echo(await request(`${t.url}/default?apikey=${ALICE_KEY}`)).headers;
  assert.equal(again['x-credential-identifier'], cred);
});

// (with the identity fields Kong's auth plugins set, which upstreams moved from Kong trust)
// (X-Userinfo: Kong's OpenID Connect plugins; X-Credential-Username: Kong before 3.0)
const KONG_IDENTITY = ['x-consumer-custom-id', 'x-authenticated-userid', 'x-authenticated-scope', 'x-authenticated-groups', 'x-userinfo', 'x-credential-username'];
const SPOOF_NAMES = ['X-Consumer-Name', 'x-consumer-id', 'X-CONSUMER-GROUPS', 'x-Credential-Identifier', 'X-Anonymous-Consumer', 'X-Consumer-Username', 'X-Consumer-Custom-ID', 'X-Authenticated-Userid', 'x-authenticated-scope', 'X-Authenticated-Groups', 'X-Userinfo', 'X-Credential-Username'];
/** A raw header list (node:http adds no Host to a list): Host, then every consumer header twice in different cases. */
const spoofHeaders = (): string[] => ['Host', 'gateway.test', ...SPOOF_NAMES.flatMap((n) => [n, `evil-${n}`, n.toUpperCase(), 'evil2'])];
const OWNED = ['x-consumer-name', 'x-consumer-id', 'x-consumer-groups', 'x-credential-identifier', 'x-anonymous-consumer', 'x-consumer-username', ...KONG_IDENTITY];

test('client copies of the consumer headers never reach the upstream, with auth and without', T, async () => {
  // An authenticated route: exactly the gateway's values.
  const r = await request(`${t.url}/default`, { headers: ['apikey', BOB_KEY, ...spoofHeaders()] });
  assert.equal(r.status, 200, r.body);
  const raw = lastUpstream().rawHeaders;
  assert.deepEqual(rawValues(raw, 'x-consumer-name'), ['bob']);
  assert.deepEqual(rawValues(raw, 'x-consumer-id'), ['bob-custom-id']);
  assert.deepEqual(rawValues(raw, 'x-credential-identifier'), ['bob-cred']);
  assert.deepEqual(rawValues(raw, 'x-consumer-groups'), []);
  assert.deepEqual(rawValues(raw, 'x-anonymous-consumer'), []);
  assert.deepEqual(rawValues(raw, 'x-consumer-username'), []);
  for (const n of KONG_IDENTITY) assert.deepEqual(rawValues(raw, n), [], n);

  // A route without auth: none of them.
  const o = await request(`${t.url}/open`, { headers: spoofHeaders() });
  assert.equal(o.status, 200, o.body);
  for (const n of OWNED) assert.deepEqual(rawValues(lastUpstream().rawHeaders, n), [], n);

  // A rejected request never gets that far; an anonymous one carries the gateway's values only.
  const a = await request(`${t.url}/anon`, { headers: spoofHeaders() });
  assert.equal(a.status, 200, a.body);
  const ar = lastUpstream().rawHeaders;
  assert.deepEqual(rawValues(ar, 'x-consumer-name'), ['guest']);
  assert.deepEqual(rawValues(ar, 'x-anonymous-consumer'), ['true']);
  assert.deepEqual(rawValues(ar, 'x-credential-identifier'), []);
  assert.deepEqual(rawValues(ar, 'x-consumer-username'), []);
  assert.ok(!JSON.stringify(ar).includes('evil'));
});

test('anonymous: guest: no key or a wrong key goes through as guest, a right key as its consumer', T, async () => {
  const none = await request(`${t.url}/anon`);
  assert.equal(none.status, 200, none.body);
  let h = echo(none).headers;
  assert.equal(h['x-consumer-name'], 'guest');
  assert.equal(h['x-consumer-id'], consumerId('guest'));
  assert.equal(h['x-anonymous-consumer'], 'true');
  assert.equal(h['x-credential-identifier'], undefined);

  // Kong: a wrong credential with anonymous set is anonymous too (not 401).
  const wrong = await request(`${t.url}/anon`, { headers: { apikey: 'wrong-key-123456' } });
  assert.equal(wrong.status, 200, wrong.body);
  h = echo(wrong).headers;
  assert.equal(h['x-consumer-name'], 'guest');
  assert.equal(h['x-anonymous-consumer'], 'true');

  const right = await request(`${t.url}/anon?apikey=${ALICE_KEY}`);
  assert.equal(right.status, 200, right.body);
  h = echo(right).headers;
  assert.equal(h['x-consumer-name'], 'alice');
  assert.equal(h['x-anonymous-consumer'], undefined);
});

test('consumer_headers: the configured names are sent, and client copies of them (and of the defaults) stripped', T, async () => {
  const g = await startGateway(`consumer_headers: {id: X-User-Id, name: X-User, groups: X-Roles, credential: X-Cred, anonymous: X-Is-Anonymous}
${consumers()}services:
  - name: s
    url: ${up.url}
    routes:
      - {name: auth, paths: [/auth], plugins: [{name: key-auth}]}
      - {name: anon, paths: [/anon], plugins: [{name: key-auth, config: {anonymous: guest}}]}
      - {name: open, paths: [/open]}
`);
  try {
    const spoof = [...spoofHeaders(), 'x-user', 'evil', 'X-USER-ID', 'evil', 'x-roles', 'evil', 'X-Cred', 'evil', 'x-is-anonymous', 'evil'];
    const r = await request(`${g.url}/auth`, { headers: ['apikey', ALICE_KEY, ...spoof] });
    assert.equal(r.status, 200, r.body);
    const raw = lastUpstream().rawHeaders;
    assert.deepEqual(rawValues(raw, 'x-user'), ['alice']);
    assert.deepEqual(rawValues(raw, 'x-user-id'), [consumerId('alice')]);
    assert.deepEqual(rawValues(raw, 'x-roles'), ['admins, dev']);
    assert.equal(rawValues(raw, 'x-cred').length, 1);
    assert.ok(!rawValues(raw, 'x-cred')[0]!.includes(ALICE_KEY));
    assert.deepEqual(rawValues(raw, 'x-is-anonymous'), []);
    for (const n of OWNED) assert.deepEqual(rawValues(raw, n), [], n);

    const a = await request(`${g.url}/anon`, { headers: spoof });
    assert.equal(a.status, 200, a.body);
    assert.deepEqual(rawValues(lastUpstream().rawHeaders, 'x-user'), ['guest']);
    assert.deepEqual(rawValues(lastUpstream().rawHeaders, 'x-is-anonymous'), ['true']);

    const o = await request(`${g.url}/open`, { headers: spoof });
    assert.equal(o.status, 200, o.body);
    const oraw = lastUpstream().rawHeaders;
    for (const n of [...OWNED, 'x-user', 'x-user-id', 'x-roles', 'x-cred', 'x-is-anonymous']) assert.deepEqual(rawValues(oraw, n), [], n);
  } finally {
    await g.close();
  }
});

// ---- config errors -------------------------------------------------------------------------


const route = (plugins: string) => `services:
  - name: s
    url: http://127.0.0.1:9
    routes:
      - name: r
        paths: [/r]
        plugins:
${plugins}
`;

test('config: a key shorter than 8 characters names its credential', T, () => {
  const issues = issuesOf(`consumers:
  - name: a
    credentials:
      - {type: key-auth, key: short}
${route('          - name: key-auth')}`);
  assert.equal(issues.length, 1, JSON.stringify(issues));
  assert.equal(issues[0]!.path, 'consumers[0].credentials[0].key');
  assert.equal(issues[0]!.line, 4);
  assert.match(issues[0]!.message, /8/);
});

test('config: a credential with an unknown field names the field', T, () => {
  const issues = issuesOf(`consumers:
  - name: a
    credentials:
      - type: key-auth
        key: long-enough-key
        secret: 1
${route('          - name: key-auth')}`);
  assert.equal(issues.length, 1, JSON.stringify(issues));
  assert.equal(issues[0]!.path, 'consumers[0].credentials[0].secret');
  assert.equal(issues[0]!.line, 6);
});

test('config: an unknown anonymous consumer is an error at the binding', T, () => {
  const issues = issuesOf(`consumers:
  - name: a
    credentials: [{type: key-auth, key: long-enough-key}]
${route('          - name: key-auth\n            config: {anonymous: nobody}')}`);
  assert.equal(issues.length, 1, JSON.stringify(issues));
  assert.match(issues[0]!.path, /^services\[0\]\.routes\[0\]\.plugins\[0\]\.config/);
  assert.match(issues[0]!.message, /unknown consumer "nobody"/);
});

test('config: an unknown anonymous consumer names config.anonymous', T, () => {
  const issues = issuesOf(`consumers:
  - name: a
    credentials: [{type: key-auth, key: long-enough-key}]
${route('          - name: key-auth\n            config: {anonymous: nobody}')}`);
  assert.equal(issues[0]!.path, 'services[0].routes[0].plugins[0].config.anonymous');
  assert.equal(issues[0]!.line, 12);
});

test('config: the same key for two consumers is an error', T, () => {
  const issues = issuesOf(`consumers:
  - name: a
    credentials: [{type: key-auth, key: same-key-1234}]
  - name: b
    credentials:
      - {type: key-auth, key: same-key-1234}
${route('          - name: key-auth')}`);
  assert.equal(issues.length, 1, JSON.stringify(issues));
  // The message names the other consumer (never the key itself).
  assert.match(issues[0]!.message, /"a"/);
  assert.match(issues[0]!.message, /same/);
  assert.ok(!issues[0]!.message.includes('same-key-1234'), 'the message shows the key');
  // (Where it is reported: see the next test.)
});

test('config: the same key for two consumers names the second credential, once, wherever key-auth is bound (or not bound at all)', T, () => {
  const cons = `consumers:
  - name: a
    credentials: [{type: key-auth, key: same-key-1234}]
  - name: b
    credentials:
      - {type: key-auth, key: same-key-1234}
`;
  const expected = [{ path: 'consumers[1].credentials[0].key', line: 6 }];
  const pick = (xs: { path: string; line?: number }[]) => xs.map(({ path, line }) => ({ path, line }));
  assert.deepEqual(pick(issuesOf(cons + route('          - name: key-auth'))), expected);
  // Bound twice (globally and on the route): still one issue.
  assert.deepEqual(pick(issuesOf(cons + route('          - name: key-auth') + 'plugins: [{name: key-auth}]\n')), expected);
  // Not bound at all: the config is still wrong.
  assert.deepEqual(pick(issuesOf(cons + route('          []'))), expected);
});
