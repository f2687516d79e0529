/** jwt plugin end to end against a real OpenID provider (oidc-provider) started in the test. */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { SignJWT, UnsecuredJWT, importJWK, generateKeyPair, exportJWK, type JWK } from 'jose';
import { createHmac } from 'node:crypto';
import { eventually, request, sleep, startGateway, startUpstream, type TestGateway, type TestUpstream } from '../../../test/helpers.js';
import { startIdp, DEFAULT_AUDIENCE, type TestIdp } from '../../../test/oidc-fixture.js';

let idp: TestIdp;
let up: TestUpstream;
let gw: TestGateway;

before(async () => {
  idp = await startIdp({ algs: ['ES256', 'RS256'] });
  up = await startUpstream();
  gw = await startGateway(`
consumers:
  - {name: svc-a, groups: [partners], credentials: [{type: jwt, subject: svc-a}]}
  - {name: admin, groups: [admins], credentials: [{type: key-auth, key: admin-key-0123456789abcdef}]}
  - {name: partner, groups: [admins], credentials: [{type: jwt, subject: client-123}]}
  - {name: plain, groups: [idp-users]}
services:
  - name: api
    url: ${up.url}
    plugins:
      - name: jwt
        config:
          issuer: ${idp.issuer}
          audiences: [${DEFAULT_AUDIENCE}]
          consumer_claim: client_id
          clock_skew: 0s
          jwks_cooldown: 200ms
          jwks_refresh: 300ms
          hide_credentials: true
    routes:
      - {name: open, paths: [/api]}
      - name: orders
        paths: [/orders]
        plugins:
          - name: jwt
            config: {issuer: ${idp.issuer}, audiences: [${DEFAULT_AUDIENCE}], consumer_claim: client_id, scopes: ["orders:read"], jwks_cooldown: 200ms}
      - name: cookie
        paths: [/cookie]
        plugins:
          - name: jwt
            config: {issuer: ${idp.issuer}, audiences: [${DEFAULT_AUDIENCE}], consumer_claim: client_id, cookie: tok, hide_credentials: true}
      - name: nokeys
        paths: [/nokeys]
        plugins:
          - name: jwt
            config: {jwks_url: "http://127.0.0.1:1/jwks", audiences: [${DEFAULT_AUDIENCE}], consumer_claim: client_id, timeout: 1s}
      - name: strict
        paths: [/strict]
        plugins:
          - name: jwt
            config: {issuer: ${idp.issuer}, audiences: [${DEFAULT_AUDIENCE}], consumer_claim: client_id, require_consumer: true}
      - name: two-issuers
        paths: [/two-issuers]
        plugins:
          - name: jwt
            config: {issuer: ${idp.issuer}, issuers_allowed: ["https://sts.windows.net/tenant-1/"], audiences: [${DEFAULT_AUDIENCE}], consumer_claim: client_id}
      - name: anon-hidden
        paths: [/anon-hidden]
        plugins:
          - name: jwt
            config: {issuer: ${idp.issuer}, audiences: [${DEFAULT_AUDIENCE}], consumer_claim: client_id, cookie: tok, anonymous: plain, hide_credentials: true}
          - {name: key-auth, config: {hide_credentials: true}}
      - name: cookie-cross-site
        paths: [/cookie-any-site]
        plugins:
          - name: jwt
            config: {issuer: ${idp.issuer}, audiences: [${DEFAULT_AUDIENCE}], consumer_claim: client_id, cookie: tok, cookie_cross_site: allow}
      - name: typed
        paths: [/typed]
        plugins:
          - name: jwt
            config: {issuer: ${idp.issuer}, audiences: [${DEFAULT_AUDIENCE}], consumer_claim: client_id, token_types: [at+jwt]}
`);
});
after(async () => {
  await gw?.close();
  await up?.close();
  await idp?.close();
});

const get = (path: string, token?: string) => request(`${gw.url}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
const upstreamSaw = () => JSON.parse(JSON.stringify(up.requests.at(-1)!.headers)) as Record<string, string>;

/** A token signed with the IdP's own current private key (for claims the IdP would not issue). */
async function forge(claims: Record<string, unknown>, opts: { alg?: 'ES256' | 'RS256'; kid?: string; key?: JWK; typ?: unknown } = {}): Promise<string> {
  const alg = opts.alg ?? 'ES256';
  const jwk = opts.key ?? (idp.signingKeys().private as JWK[]).find((k) => k.alg === alg || (alg === 'ES256' ? k.kty === 'EC' : k.kty === 'RSA'))!;
  const key = await importJWK(jwk, alg);
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iss: idp.issuer, aud: DEFAULT_AUDIENCE, client_id: 'svc-a', sub: 'svc-a', iat: now, exp: now + 300, ...claims })
    .setProtectedHeader({ alg, kid: opts.kid ?? jwk.kid, ...('typ' in opts ? (opts.typ === undefined ? {} : { typ: opts.typ as string }) : { typ: 'at+jwt' }) })
    .sign(key);
}

test('client_credentials tokens from the IdP pass; the consumer goes upstream, the token does not (hide_credentials)', async () => {
  const token = await idp.jwt({ clientId: 'svc-a', scope: 'read' });
  const r = await get('/api/x', token);
  assert.equal(r.status, 200, r.body);
  const h = upstreamSaw();
  assert.equal(h['x-consumer-name'], 'svc-a');
  assert.equal(h['x-consumer-groups'], 'partners');
  assert.match(h['x-consumer-id']!, /^[0-9a-f-]{36}$/);
  assert.equal(h['x-credential-identifier'], 'jwt:svc-a');
  assert.equal(h.authorization, undefined);
  // RS256 tokens from the same IdP too.
  assert.equal((await get('/api/rs', await idp.jwt({ clientId: 'svc-a', alg: 'RS256' }))).status, 200);
  // A caller the gateway has no consumer for: identified by the claim...
  const b = await get('/api/y', await idp.jwt({ clientId: 'svc-b' }));
  assert.equal(b.status, 200);
  assert.equal(upstreamSaw()['x-consumer-name'], 'svc-b');
  assert.equal(upstreamSaw()['x-consumer-id'], undefined);
  // ...unless the route requires a known consumer.
  assert.equal((await get('/strict', await idp.jwt({ clientId: 'svc-b' }))).status, 401);
  assert.equal((await get('/strict', await idp.jwt({ clientId: 'svc-a' }))).status, 200);
});

test('a claim naming a consumer that declares credentials does not stand for it: its jwt subject does; a consumer without credentials is named by the claim', async () => {
  for (const [claim, want] of [['admin', null], ['partner', null], ['client-123', 'partner'], ['plain', 'plain']] as const) {
    const r = await get('/strict', await forge({ client_id: claim }));
    if (want === null) {
      assert.equal(r.status, 401, `${claim}: ${r.body}`);
      assert.match(r.body, /not for a known consumer/);
    } else {
      assert.equal(r.status, 200, `${claim}: ${r.body}`);
      assert.equal(upstreamSaw()['x-consumer-name'], want);
    }
  }
  // Without require_consumer the token passes as an unknown caller: no consumer, no groups.
  const r = await get('/api/z', await forge({ client_id: 'admin' }));
  assert.equal(r.status, 200);
  assert.equal(upstreamSaw()['x-consumer-id'], undefined);
  assert.equal(upstreamSaw()['x-consumer-groups'], undefined);
});

test('bad tokens get 401 with a Bearer challenge and no token detail: missing, expired, not yet valid, wrong audience, wrong issuer, tampered, alg none, HS256 with the public key, unknown kid', async () => {
  const missing = await get('/api/x');
  assert.equal(missing.status, 401);
  assert.equal(missing.headers['www-authenticate'], 'Bearer realm="turnpike"');
  assert.equal(missing.headers['content-type'], 'application/problem+json');

  const now = Math.floor(Date.now() / 1000);
  const expiredSoon = await idp.jwt({ clientId: 'svc-a', ttlSeconds: 1 });
  const bad: Record<string, string> = {
    expired: await forge({ exp: now - 5, iat: now - 60 }),
    'not yet valid': await forge({ nbf: now + 120 }),
    'wrong audience': await idp.jwt({ clientId: 'svc-a', audience: 'https://other.api.test' }),
    'wrong issuer': await forge({ iss: 'https://evil.example' }),
    'no exp': await forge({ exp: undefined }),
    'issued in the future': await forge({ iat: now + 3600 }),
    'alg none': new UnsecuredJWT({ iss: idp.issuer, aud: DEFAULT_AUDIENCE, client_id: 'svc-a', exp: now + 300 }).encode(),
  };
  const good = await idp.jwt({ clientId: 'svc-a' });
  const [h, p, s] = good.split('.');
  const payload = JSON.parse(Buffer.from(p!, 'base64url').toString());
  payload.client_id = 'admin';
  bad['tampered'] = `${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${s}`;
  // HS256 "signed" with the RSA public key (the classic key-confusion attack).
  const rsaPublic = (idp.signingKeys().public as JWK[]).find((k) => k.kty === 'RSA')!;
  const hsHeader = Buffer.from(JSON.stringify({ alg: 'HS256', kid: rsaPublic.kid, typ: 'JWT' })).toString('base64url');
  const hsPayload = Buffer.from(JSON.stringify({ iss: idp.issuer, aud: DEFAULT_AUDIENCE, client_id: 'svc-a', exp: now + 300 })).toString('base64url');
  for (const secret of [JSON.stringify(rsaPublic), rsaPublic.n!]) {
    const sig = createHmac('sha256', secret).update(`${hsHeader}.${hsPayload}`).digest('base64url');
    bad[`HS256 with public key ${secret.length}`] = `${hsHeader}.${hsPayload}.${sig}`;
  }
  const stranger = await generateKeyPair('ES256', { extractable: true });
  bad['unknown kid'] = await forge({}, { key: { ...(await exportJWK(stranger.privateKey)), kid: 'not-at-the-idp', alg: 'ES256' } });
  bad['garbage'] = 'not.a.jwt';
  await sleep(1100);
  bad['expired at the IdP'] = expiredSoon;
  for (const [name, token] of Object.entries(bad)) {
    const r = await get('/api/x', token);
    assert.equal(r.status, 401, `${name}: ${r.status} ${r.body}`);
    assert.match(String(r.headers['www-authenticate']), /^Bearer realm="turnpike", error="invalid_token"$/, name);
    const part = token.split('.')[1] ?? '';
    if (part.length > 8) assert.ok(!r.body.includes(part), `${name}: the token leaks into the answer`);
  }
});

test('issuers_allowed: tokens of a second issuer signed with the same keys (Azure AD v1 beside v2) pass where listed; elsewhere, and any other iss, 401', async () => {
  const v1 = await forge({ iss: 'https://sts.windows.net/tenant-1/' });
  assert.equal((await get('/two-issuers', v1)).status, 200);
  assert.equal((await get('/two-issuers', await forge({}))).status, 200, 'the discovery issuer still passes');
  assert.equal((await get('/api', v1)).status, 401, 'a binding without it refuses that iss');
  assert.equal((await get('/two-issuers', await forge({ iss: 'https://sts.windows.net/tenant-2/' }))).status, 401);
  assert.equal((await get('/two-issuers', await forge({ iss: undefined }))).status, 401, 'no iss at all');
});

test('explicit typing (RFC 8725 §3.11): tokens of another kind the IdP signs are refused; token_types asks for at+jwt only', async () => {
  // by default: no typ, JWT and at+jwt (any case, application/ prefix optional) are access tokens
  for (const typ of [undefined, 'JWT', 'jwt', 'at+jwt', 'application/at+JWT']) {
    const r = await get('/api/t', await forge({}, { typ }));
    assert.equal(r.status, 200, `${typ}: ${r.body}`);
  }
  // a back-channel logout token, a security event token, a DPoP proof, anything else: refused
  for (const typ of ['logout+jwt', 'secevent+jwt', 'application/dpop+jwt', 'id_token', 42]) {
    const r = await get('/api/t', await forge({}, { typ }));
    assert.equal(r.status, 401, `${typ}`);
    assert.match(r.headers['www-authenticate'] as string, /error="invalid_token"/);
  }
  // token_types: [at+jwt]: RFC 9068 access tokens only (none without typ, no plain JWT)
  assert.equal((await get('/typed/t', await forge({}))).status, 200);
  assert.equal((await get('/typed/t', await forge({}, { typ: 'application/at+jwt' }))).status, 200);
  assert.equal((await get('/typed/t', await forge({}, { typ: undefined }))).status, 401);
  assert.equal((await get('/typed/t', await forge({}, { typ: 'JWT' }))).status, 401);
  // and a real IdP's access token passes both (oidc-provider types them at+jwt)
  const real = await idp.jwt({ clientId: 'svc-a' });
  assert.equal((await get('/api/t', real)).status, 200);
  assert.equal((await get('/typed/t', real)).status, 200);
});

test('identities that are not printable ASCII reach the upstream as UTF-8 bytes, control characters encoded, never a 502', async () => {
  const cjk = await get('/api/u', await forge({ client_id: '张伟' }));
  assert.equal(cjk.status, 200, cjk.body);
  assert.equal(Buffer.from(upstreamSaw()['x-consumer-name']!, 'latin1').toString('utf8'), '张伟');
  const crlf = await get('/api/u', await forge({ client_id: 'a\r\nx-injected: 1' }));
  assert.equal(crlf.status, 200, crlf.body);
  assert.equal(upstreamSaw()['x-injected'], undefined);
  assert.equal(upstreamSaw()['x-consumer-name'], 'a%0D%0Ax-injected: 1');
});

test('a token from a cookie: hide_credentials takes that cookie out of the upstream Cookie, the others stay', async () => {
  const token = await idp.jwt({ clientId: 'svc-a' });
  const r = await request(`${gw.url}/cookie`, { headers: { cookie: `a=1; tok=${token}; b=2` } });
  assert.equal(r.status, 200, r.body);
  assert.equal(upstreamSaw().cookie, 'a=1; b=2');
  const alone = await request(`${gw.url}/cookie`, { headers: { cookie: `tok=${token}` } });
  assert.equal(alone.status, 200);
  assert.equal(upstreamSaw().cookie, undefined);
});

test('hide_credentials: a refused token that goes on as the anonymous consumer (header or cookie) never reaches the upstream, nor does a key beside a token jwt let in first (key-auth never looked at it)', async () => {
  const token = await idp.jwt({ clientId: 'svc-a' });
  const expired = await forge({ exp: Math.floor(Date.now() / 1000) - 120 });
  const r = await get('/anon-hidden', expired);
  assert.equal(r.status, 200, r.body);
  assert.equal(upstreamSaw()['x-consumer-name'], 'plain');
  assert.equal(upstreamSaw().authorization, undefined);
  const c = await request(`${gw.url}/anon-hidden`, { headers: { cookie: `a=1; tok=${expired}` } });
  assert.equal(c.status, 200, c.body);
  assert.equal(upstreamSaw()['x-consumer-name'], 'plain');
  assert.equal(upstreamSaw().cookie, 'a=1');
  // jwt (priority 1450) lets the token in before key-auth (1250) runs: the key goes all the same.
  const k = await request(`${gw.url}/anon-hidden?apikey=admin-key-0123456789abcdef&x=1`, { headers: { authorization: `Bearer ${token}`, apikey: 'admin-key-0123456789abcdef' } });
  assert.equal(k.status, 200, k.body);
  assert.equal(upstreamSaw()['x-consumer-name'], 'svc-a');
  assert.equal(upstreamSaw().apikey, undefined);
  assert.equal(up.requests.at(-1)!.url, '/anon-hidden?x=1');
  // Another scheme is not jwt's to take out (key-auth's key lets this one in).
  const b = await request(`${gw.url}/anon-hidden`, { headers: { authorization: 'Basic YTpi', apikey: 'admin-key-0123456789abcdef' } });
  assert.equal(b.status, 200, b.body);
  assert.equal(upstreamSaw()['x-consumer-name'], 'admin');
  assert.equal(upstreamSaw().authorization, 'Basic YTpi');
});

test('the token cookie twice (two tokens, one would be checked and the upstream could read the other): 401 invalid_token', async () => {
  const token = await idp.jwt({ clientId: 'svc-a' });
  const before = up.requests.length;
  for (const cookie of [`tok=${token}; tok=forged`, `tok=${token}; a=1; tok=${token}`]) {
    const r = await request(`${gw.url}/cookie`, { headers: { cookie } });
    assert.equal(r.status, 401, r.body);
    assert.match(String(r.headers['www-authenticate']), /error="invalid_token"/);
  }
  assert.equal(up.requests.length, before);
  // (signed with the IdP's first key: this route's keys are fetched once, before any rotation)
  // other cookies whose names end the same are not it
  assert.equal((await request(`${gw.url}/cookie`, { headers: { cookie: `xtok=1; tok=${token}; tok2=3` } })).status, 200);
});

test('a Bearer header beside the token cookie holding another token (the upstream could read the unchecked one): 400 invalid_request; the same token in both passes, and hide_credentials takes out both', async () => {
  const token = await idp.jwt({ clientId: 'svc-a' });
  const stranger = await generateKeyPair('ES256', { extractable: true });
  const other = await forge({ client_id: 'admin' }, { key: { ...(await exportJWK(stranger.privateKey)), kid: 'not-at-the-idp', alg: 'ES256' } });
  const before = up.requests.length;
  for (const headers of [
    { authorization: `Bearer ${token}`, cookie: `a=1; tok=${other}` },
    { authorization: `Bearer ${token}`, cookie: `tok=${token}; tok=${other}` },
  ]) {
    const r = await request(`${gw.url}/cookie`, { headers });
    assert.equal(r.status, headers.cookie.startsWith('a=') ? 400 : 401, r.body);
    assert.match(String(r.headers['www-authenticate']), /error="invalid_(request|token)"/);
  }
  // the cookie's token beside an access_token parameter (never checked): refused too
  const q = await request(`${gw.url}/cookie?access_token=${other}`, { headers: { cookie: `tok=${token}` } });
  assert.equal(q.status, 400, q.body);
  assert.equal(up.requests.length, before);
  const same = await request(`${gw.url}/cookie`, { headers: { authorization: `Bearer ${token}`, cookie: `a=1; tok=${token}` } });
  assert.equal(same.status, 200, same.body);
  assert.equal(upstreamSaw().authorization, undefined);
  assert.equal(upstreamSaw().cookie, 'a=1');
  // (an empty cookie of that name is no token)
  assert.equal((await request(`${gw.url}/cookie`, { headers: { authorization: `Bearer ${token}`, cookie: 'tok=' } })).status, 200);
});

test('CSRF: a token from the cookie on a cross-site POST (Sec-Fetch-Site, else an Origin of another host) is 403, also where anonymous is set; same-origin, safe methods, the Authorization header and cookie_cross_site: allow pass', async () => {
  const token = await idp.jwt({ clientId: 'svc-a' });
  const self = new URL(gw.url).host;
  const send = (path: string, method: string, headers: Record<string, string>) => request(`${gw.url}${path}`, { method, headers: { cookie: `tok=${token}`, ...headers } });
  const before = up.requests.length;
  for (const h of [{ 'sec-fetch-site': 'cross-site' }, { 'sec-fetch-site': 'same-site' }, { origin: 'https://evil.example' }, { origin: 'null' }, { origin: `http://${self}`, 'sec-fetch-site': 'cross-site' }] as Record<string, string>[]) {
    for (const path of ['/cookie', '/anon-hidden']) {
      const r = await send(path, 'POST', h);
      assert.equal(r.status, 403, `${path} ${JSON.stringify(h)}: ${r.body}`);
      assert.match(r.body, /cross-site POST/);
    }
  }
  assert.equal(up.requests.length, before, 'a cross-site POST reached the upstream');
  for (const [method, h] of [['POST', { 'sec-fetch-site': 'same-origin' }], ['POST', { 'sec-fetch-site': 'none' }], ['POST', { origin: `http://${self}` }], ['POST', {}], ['GET', { 'sec-fetch-site': 'cross-site' }]] as [string, Record<string, string>][]) {
    assert.equal((await send('/cookie', method, h)).status, 200, `${method} ${JSON.stringify(h)}`);
  }
  assert.equal((await request(`${gw.url}/cookie`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'sec-fetch-site': 'cross-site' } })).status, 200);
  assert.equal((await send('/cookie-any-site', 'POST', { 'sec-fetch-site': 'cross-site' })).status, 200);
});

test('keys that cannot be fetched: 503 with Retry-After, not invalid_token (the token may be fine)', async () => {
  const r = await get('/nokeys', await idp.jwt({ clientId: 'svc-a' }));
  assert.equal(r.status, 503, r.body);
  assert.equal(r.headers['retry-after'], '5');
  assert.match(r.body, /urn:turnpike:problem:auth-unavailable/);
  assert.doesNotMatch(String(r.headers['www-authenticate'] ?? ''), /invalid_token/);
});

test('scopes per route: missing scope -> 403 insufficient_scope; present -> 200', async () => {
  const without = await get('/orders', await idp.jwt({ clientId: 'svc-a', scope: 'read' }));
  assert.equal(without.status, 403);
  assert.match(String(without.headers['www-authenticate']), /error="insufficient_scope", scope="orders:read"/);
  assert.equal((await get('/orders', await idp.jwt({ clientId: 'svc-a', scope: 'read orders:read' }))).status, 200);
});

test('key rotation at the IdP is followed without a restart; an unknown kid does not hammer the IdP', async () => {
  const before = await idp.jwt({ clientId: 'svc-a' });
  assert.equal((await get('/api/r', before)).status, 200);
  const { kid } = await idp.rotateKeys();
  const after = await idp.jwt({ clientId: 'svc-a' });
  assert.equal(JSON.parse(Buffer.from(after.split('.')[0]!, 'base64url').toString()).kid, kid);
  await sleep(250); // past jwks_cooldown
  assert.equal((await get('/api/r', after)).status, 200, 'the new key is fetched on its first unknown kid');
  assert.equal((await get('/api/r', before)).status, 200, 'the old key is still published');
  // A flood of unknown kids: at most one JWKS fetch per cooldown (200 ms).
  const stranger = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(stranger.privateKey)), alg: 'ES256' };
  const hits0 = idp.hits['/jwks'] ?? 0;
  const started = Date.now();
  for (let i = 0; i < 40; i++) assert.equal((await get('/api/r', await forge({}, { key: { ...jwk, kid: `bogus-${i}` } }))).status, 401);
  const elapsed = Date.now() - started;
  const fetched = (idp.hits['/jwks'] ?? 0) - hits0;
  assert.ok(fetched <= Math.ceil(elapsed / 200) + 1, `${fetched} JWKS fetches in ${elapsed} ms`);
});

test('IdP down: keys in hand keep working (also past jwks_refresh); back up: refreshed', async () => {
  const t1 = await idp.jwt({ clientId: 'svc-a', scope: 'x' });
  const t2 = await idp.jwt({ clientId: 'svc-a', scope: 'y' });
  assert.equal((await get('/api/d', t1)).status, 200);
  await idp.down();
  try {
    await sleep(400); // past jwks_refresh (300 ms): a refresh is tried and fails
    assert.equal((await get('/api/d', t2)).status, 200, 'a token never seen before, verified with cached keys');
    assert.equal((await get('/api/d', t1)).status, 200);
  } finally {
    await idp.up();
  }
  const hits = idp.hits['/jwks'] ?? 0;
  await sleep(350);
  assert.equal((await get('/api/d', await idp.jwt({ clientId: 'svc-a', scope: 'z' }))).status, 200);
  await eventually(() => (idp.hits['/jwks'] ?? 0) > hits, 3000);
});

test('a malformed Bearer header (no token, two tokens, characters outside token68) is 400 invalid_request (RFC 6750 §3.1); another scheme is "no credentials"', async () => {
  for (const value of ['Bearer', 'Bearer ', 'Bearer a b', 'Bearer a,b', 'Bearer \u00e4bc', 'bearer   ']) {
    const r = await request(`${gw.url}/api/x`, { headers: { authorization: value } });
    assert.equal(r.status, 400, `${JSON.stringify(value)}: ${r.status} ${r.body}`);
    assert.equal(r.headers['www-authenticate'], 'Bearer realm="turnpike", error="invalid_request"', value);
    assert.equal(r.headers['content-type'], 'application/problem+json');
  }
  for (const value of ['Basic dTpw', 'Bearerabc']) {
    const r = await request(`${gw.url}/api/x`, { headers: { authorization: value } });
    assert.equal(r.status, 401, value);
    assert.equal(r.headers['www-authenticate'], 'Bearer realm="turnpike"', value);
  }
});

test('a token in the Authorization header and in the access_token query parameter: 400 invalid_request (RFC 6750 §2, §3.1); in the query alone it is no credential', async () => {
  const token = await idp.jwt({ clientId: 'svc-a' });
  const before = up.requests.length;
  // (after a ';' too: a separator to Rack < 3 and Python's old parse_qs, which read a token there)
  for (const q of [`access_token=${token}`, `a=1&access_token=${token}`, 'access_token=other', 'access%5Ftoken=x', 'a=1;access_token=other', 'a=1;access%5Ftoken=x&b=2']) {
    const r = await request(`${gw.url}/api/x?${q}`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(r.status, 400, `${q}: ${r.body}`);
    assert.equal(r.headers['www-authenticate'], 'Bearer realm="turnpike", error="invalid_request"');
    assert.ok(!r.body.includes(token));
  }
  assert.equal(up.requests.length, before, 'the upstream was called');
  const alone = await request(`${gw.url}/api/x?access_token=${token}`);
  assert.equal(alone.status, 401);
  assert.equal(alone.headers['www-authenticate'], 'Bearer realm="turnpike"');
  // other parameters that merely look alike are no token
  assert.equal((await request(`${gw.url}/api/x?my_access_token=1&token=2;my_access_token=3`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
});

test('a token in two places on a route with anonymous: 400 invalid_request all the same (RFC 6750 §2), never on to the upstream as anonymous with the unchecked token', async () => {
  const token = await idp.jwt({ clientId: 'svc-a' });
  const before = up.requests.length;
  for (const [q, headers] of [
    [`?access_token=${token}`, { authorization: `Bearer ${token}` }],
    ['?access_token=other', { authorization: 'Bearer expired-or-not' }],
    ['', { authorization: `Bearer ${token}`, cookie: 'tok=other' }],
    ['?access_token=other', { cookie: `tok=${token}` }],
  ] as const) {
    const r = await request(`${gw.url}/anon-hidden${q}`, { headers });
    assert.equal(r.status, 400, `${q} ${JSON.stringify(headers)}: ${r.body}`);
    assert.equal(r.headers['www-authenticate'], 'Bearer realm="turnpike", error="invalid_request"');
  }
  assert.equal(up.requests.length, before, 'went on as anonymous');
});

test('a binding with an issuer but no audiences warns at load, naming where (any API\'s token of that IdP passes, RFC 8725 §3.9); with audiences it does not', async () => {
  const { compile } = await import('../../config/compile.js');
  const { parseConfigText } = await import('../../config/load.js');
  const { PoolRegistry } = await import('../../upstream/pools.js');
  const { createLogger } = await import('../../core/log.js');
  const lines: { level: number; msg: string; where?: string }[] = [];
  const log = createLogger('info', { write: (l: string) => void lines.push(JSON.parse(l)) });
  const pools = new PoolRegistry();
  compile(parseConfigText(`services:
  - name: s
    url: ${up.url}
    routes:
      - {name: loose, paths: [/loose], plugins: [{name: jwt, config: {issuer: ${idp.issuer}}}]}
      - {name: tight, paths: [/tight], plugins: [{name: jwt, config: {issuer: ${idp.issuer}, audiences: [${DEFAULT_AUDIENCE}]}}]}
      - {name: second, paths: [/second], plugins: [{name: jwt, config: {jwks_url: ${idp.issuer}/jwks, issuers_allowed: [a]}}]}
`, { env: {} }), { pools, log }).dispose();
  await pools.closeAll();
  const warned = lines.filter((l) => l.level === 40 && /^jwt: audiences is not set/.test(l.msg)).map((l) => l.where);
  assert.deepEqual(warned, ['services.0.routes.0.plugins.0', 'services.0.routes.2.plugins.0']);
});

test('a token in another spelling than base64url without padding (RFC 7515 §2: "=" after the signature) is 401 invalid_token', async () => {
  const token = await idp.jwt({ clientId: 'svc-a' });
  assert.equal((await get('/api/x', token)).status, 200);
  for (const t of [`${token}=`, `${token}==`]) {
    const r = await get('/api/x', t);
    assert.equal(r.status, 401, r.body);
    assert.equal(r.headers['www-authenticate'], 'Bearer realm="turnpike", error="invalid_token"');
  }
});

