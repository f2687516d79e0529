/** oauth2-introspection end to end against a real OpenID provider's introspection endpoint. */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { request, sleep, startGateway, startUpstream, type TestGateway, type TestUpstream } from '../../../test/helpers.js';
import { startIdp, type TestIdp } from '../../../test/oidc-fixture.js';

let idp: TestIdp;
let up: TestUpstream;
let gw: TestGateway;
/** An introspection endpoint of our own, for answers oidc-provider never gives (nbf). */
let ais: TestUpstream;
/** One whose answer the test sets: a status and JSON body, or 'reset' (the connection is cut, no answer). */
let ctl: TestUpstream;
let ctlAnswer: { status: number; body: unknown } | 'reset' = { status: 200, body: {} };
/** Answers every token as active, its username the token itself. */
let who: TestUpstream;
/** Two IdPs in one: /a answers iss https://a.example, /b https://b.example, /none no iss; sub is the token. */
let two: TestUpstream;

before(async () => {
  idp = await startIdp();
  up = await startUpstream();
  ais = await startUpstream((_req, res, body) => {
    const token = new URLSearchParams(body.toString()).get('token');
    const now = Math.floor(Date.now() / 1000);
    const nbf = token === 'future' ? now + 3600 : now - 10;
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ active: true, client_id: 'svc-a', exp: now + 600, nbf }));
  });
  ctl = await startUpstream((req, res) => {
    if (ctlAnswer === 'reset') req.socket.destroy();
    else res.writeHead(ctlAnswer.status, { 'content-type': 'application/json' }).end(JSON.stringify(ctlAnswer.body));
  });
  who = await startUpstream((_req, res, body) => {
    const token = new URLSearchParams(body.toString()).get('token');
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ active: true, username: token, exp: Math.floor(Date.now() / 1000) + 600 }));
  });
  two = await startUpstream((req, res, body) => {
    const sub = new URLSearchParams(body.toString()).get('token');
    const at = req.url!.split('/')[1];
    res.writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ active: true, sub, exp: Math.floor(Date.now() / 1000) + 600, ...(at === 'none' ? {} : { iss: `https://${at}.example` }) }));
  });
  gw = await startGateway(`
consumers:
  - {name: ops-lead, groups: [ops], credentials: [{type: oauth2-introspection, subject: alice, issuer: "https://a.example"}]}
  - {name: svc-a, groups: [apps]}
  - {name: guest}
  - {name: admin, groups: [admins], credentials: [{type: key-auth, key: admin-key-0001}]}
  - {name: partner, groups: [partners], credentials: [{type: key-auth, key: partner-key-01}, {type: oauth2-introspection, subject: partner-idp-user}]}
services:
  - name: api
    url: ${up.url}
    routes:
      - name: api
        paths: [/api]
        plugins:
          - name: oauth2-introspection
            config:
              introspection_url: ${idp.introspection.url}
              client_id: ${idp.introspection.clientId}
              client_secret: ${idp.introspection.clientSecret}
              cache_ttl: 600ms
              negative_cache_ttl: 300ms
              hide_credentials: true
      - name: scoped
        paths: [/scoped]
        plugins:
          - name: oauth2-introspection
            config: {introspection_url: ${idp.introspection.url}, client_id: gateway, client_secret: gateway-secret, auth_method: client_secret_post, scopes: [write]}
      - name: nbf
        paths: [/nbf]
        plugins:
          - name: oauth2-introspection
            config: {introspection_url: ${ais.url}/introspect, client_id: gateway, client_secret: s}
      - name: small-cache
        paths: [/small]
        plugins:
          - name: oauth2-introspection
            config: {introspection_url: ${idp.introspection.url}, client_id: ${idp.introspection.clientId}, client_secret: ${idp.introspection.clientSecret}, cache_size: 4, cache_ttl: 30s, negative_cache_ttl: 30s}
      - name: ctl
        paths: [/ctl]
        plugins:
          - name: oauth2-introspection
            config: {introspection_url: ${ctl.url}/introspect, client_id: gateway, client_secret: s, negative_cache_ttl: 30s, cache_ttl: 30s}
      - name: ctl-scoped
        paths: [/ctl-scoped]
        plugins:
          - name: oauth2-introspection
            config: {introspection_url: ${ctl.url}/introspect, client_id: gateway, client_secret: s, scopes: [orders:read, orders:write]}
      - name: by-username
        paths: [/by-username]
        plugins:
          - name: oauth2-introspection
            config: {introspection_url: ${who.url}/introspect, client_id: gateway, client_secret: s, consumer_claim: username}
      - name: anon-hidden
        paths: [/anon-hidden]
        plugins:
          - name: oauth2-introspection
            config: {introspection_url: ${idp.introspection.url}, client_id: ${idp.introspection.clientId}, client_secret: ${idp.introspection.clientSecret}, anonymous: guest, hide_credentials: true}
      - name: cached
        paths: [/cached]
        plugins:
          - {name: key-auth}
          - {name: oauth2-introspection, config: {introspection_url: '${who.url}/introspect', client_id: gateway, client_secret: s, consumer_claim: username}}
          - {name: cache, config: {ttl: 60s}}
      - {name: idp-a, paths: [/idp-a], plugins: [{name: oauth2-introspection, config: {introspection_url: '${two.url}/a', client_id: gateway, client_secret: s, consumer_claim: sub}}]}
      - {name: idp-b, paths: [/idp-b], plugins: [{name: oauth2-introspection, config: {introspection_url: '${two.url}/b', client_id: gateway, client_secret: s, consumer_claim: sub}}]}
      - {name: idp-none, paths: [/idp-none], plugins: [{name: oauth2-introspection, config: {introspection_url: '${two.url}/none', issuer: "https://a.example", client_id: gateway, client_secret: s, consumer_claim: sub}}]}
      - {name: idp-b-as-a, paths: [/idp-b-as-a], plugins: [{name: oauth2-introspection, config: {introspection_url: '${two.url}/b', issuer: "https://a.example", client_id: gateway, client_secret: s, consumer_claim: sub}}]}
      - name: bad-client
        paths: [/bad-client]
        plugins:
          - name: oauth2-introspection
            config: {introspection_url: ${idp.introspection.url}, client_id: gateway, client_secret: wrong}
`);
});
after(async () => {
  await gw?.close();
  await up?.close();
  await ais?.close();
  await ctl?.close();
  await who?.close();
  await two?.close();
  await idp?.close();
});

const get = (path: string, token?: string) => request(`${gw.url}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
const calls = () => idp.hits['/token/introspection'] ?? 0;

test('an active opaque token passes (consumer from client_id), cached for cache_ttl; revocation is seen once the cache entry ends', async () => {
  const token = await idp.opaque({ clientId: 'svc-a', scope: 'read' });
  const c0 = calls();
  const r = await get('/api/x', token);
  assert.equal(r.status, 200, r.body);
  const h = up.requests.at(-1)!.headers;
  assert.equal(h['x-consumer-name'], 'svc-a');
  assert.equal(h['x-consumer-groups'], 'apps');
  assert.equal(h.authorization, undefined);
  // Concurrent and repeated requests: answered from the cache (one introspection call so far).
  const many = await Promise.all(Array.from({ length: 10 }, () => get('/api/y', token)));
  assert.deepEqual([...new Set(many.map((m) => m.status))], [200]);
  assert.equal(calls() - c0, 1);

  await idp.revoke(token);
  assert.equal((await get('/api/z', token)).status, 200, 'still cached: the bound is cache_ttl');
  await sleep(700);
  const after = await get('/api/z', token);
  assert.equal(after.status, 401);
  assert.match(String(after.headers['www-authenticate']), /error="invalid_token"/);
  assert.equal(calls() - c0, 2);
});

test('a flood of made-up tokens does not evict the cached tokens of callers who are let in (refusals are cached apart)', async () => {
  const token = await idp.opaque({ clientId: 'svc-a', scope: 'read' });
  const c0 = calls();
  assert.equal((await get('/small/x', token)).status, 200);
  assert.equal(calls() - c0, 1);
  for (let i = 0; i < 12; i++) assert.equal((await get('/small/x', `made-up-${i}-${'z'.repeat(30)}`)).status, 401);
  assert.equal(calls() - c0, 13);
  assert.equal((await get('/small/x', token)).status, 200);
  assert.equal(calls() - c0, 13, 'the good token is still cached (cache_size 4, 12 refusals since)');
});

test('inactive and unknown tokens get 401 (negative answers cached briefly); concurrent unknown tokens share one call', async () => {
  const c0 = calls();
  const bogus = 'x'.repeat(43);
  const rs = await Promise.all(Array.from({ length: 5 }, () => get('/api/x', bogus)));
  assert.deepEqual(rs.map((r) => r.status), [401, 401, 401, 401, 401]);
  assert.equal(calls() - c0, 1);
  await get('/api/x', bogus);
  assert.equal(calls() - c0, 1, 'negative result cached');
  await sleep(350);
  await get('/api/x', bogus);
  assert.equal(calls() - c0, 2, 'negative cache bounded by negative_cache_ttl');
  assert.equal((await get('/api/x')).status, 401);
});

test('scopes -> 403; client_secret_post works; a gateway client the IdP refuses, or an IdP that is down, is a 503 that says so (not invalid_token)', async () => {
  const read = await idp.opaque({ clientId: 'svc-a', scope: 'read' });
  const write = await idp.opaque({ clientId: 'svc-a', scope: 'read write' });
  assert.equal((await get('/scoped', read)).status, 403);
  assert.equal((await get('/scoped', write)).status, 200);
  const refused = await get('/bad-client', write);
  assert.equal(refused.status, 503);
  assert.match(refused.body, /cannot be checked now/);
  assert.equal(refused.headers['retry-after'], '5');
  assert.doesNotMatch(String(refused.headers['www-authenticate'] ?? ''), /invalid_token/, 'a client must not be sent to refresh a good token');
  const fresh = await idp.opaque({ clientId: 'svc-a', scope: 'read' });
  await idp.down();
  try {
    const r = await get('/api/down', fresh);
    assert.equal(r.status, 503);
    assert.match(r.body, /does not answer/);
    assert.match(r.body, /identity-provider-unavailable|auth-unavailable/);
  } finally {
    await idp.up();
  }
  assert.equal((await get('/api/up', fresh)).status, 503, 'a failed call is reused for that token for 1 s');
  await sleep(1100);
  assert.equal((await get('/api/up', fresh)).status, 200, 'and then asked again');
});

test('an active token whose nbf is ahead is not valid yet (RFC 7662 §2.2); one past its nbf passes', async () => {
  const early = await get('/nbf', 'future');
  assert.equal(early.status, 401);
  assert.match(String(early.headers['www-authenticate']), /invalid_token/);
  assert.match(early.body, /not valid yet/);
  assert.equal((await get('/nbf', 'past')).status, 200);
});

test('a malformed Bearer header is 400 invalid_request without a call to the IdP', async () => {
  const c0 = calls();
  const r = await request(`${gw.url}/api/x`, { headers: { authorization: 'Bearer two tokens' } });
  assert.equal(r.status, 400, r.body);
  assert.equal(r.headers['www-authenticate'], 'Bearer realm="turnpike", error="invalid_request"');
  assert.equal(calls(), c0);
});

test('a token in the Authorization header and the access_token query parameter is 400 invalid_request (RFC 6750 §2) without a call to the IdP', async () => {
  const c0 = calls();
  const r = await request(`${gw.url}/api/x?access_token=abc`, { headers: { authorization: 'Bearer abc' } });
  assert.equal(r.status, 400, r.body);
  assert.equal(r.headers['www-authenticate'], 'Bearer realm="turnpike", error="invalid_request"');
  assert.equal(calls(), c0);
});

test('a token in the Authorization header and the access_token query on a route with anonymous: 400 all the same, never on as anonymous with the unchecked query token', async () => {
  const c0 = calls();
  const n0 = up.requests.length;
  const r = await request(`${gw.url}/anon-hidden/x?access_token=abc`, { headers: { authorization: 'Bearer abc' } });
  assert.equal(r.status, 400, r.body);
  assert.equal(r.headers['www-authenticate'], 'Bearer realm="turnpike", error="invalid_request"');
  assert.equal(up.requests.length, n0);
  assert.equal(calls(), c0);
});

const ctlCalls = () => ctl.requests.length;
const activeAnswer = () => ({ status: 200, body: { active: true, client_id: 'svc-a', exp: Math.floor(Date.now() / 1000) + 600 } });

test('an introspection endpoint that fails: 503 with Retry-After; one token is not sent again for 1 s', async () => {
  ctlAnswer = { status: 500, body: { error: 'server_error' } };
  const c0 = ctlCalls();
  for (let i = 0; i < 20; i++) {
    const r = await get('/ctl', 'failing-token');
    assert.equal(r.status, 503, r.body);
    assert.equal(r.headers['retry-after'], '5');
    assert.match(r.body, /auth-unavailable/);
  }
  assert.equal(ctlCalls() - c0, 1, 'one call for 20 requests');
  ctlAnswer = activeAnswer();
  await sleep(1100);
  assert.equal((await get('/ctl', 'failing-token')).status, 200);
  assert.equal(ctlCalls() - c0, 2);
});

test('an introspection endpoint that does not answer three times in a row: no call for a while (1 s, doubling up to 5 s), 503 meanwhile', async () => {
  ctlAnswer = 'reset';
  const c0 = ctlCalls();
  for (let i = 0; i < 8; i++) {
    const r = await get('/ctl', `unanswered-${i}`);
    assert.equal(r.status, 503, r.body);
    assert.equal(r.headers['retry-after'], '5');
  }
  assert.equal(ctlCalls() - c0, 3, 'calls stop after three without an answer');
  ctlAnswer = activeAnswer();
  assert.equal((await get('/ctl', 'unanswered-new')).status, 503, 'still pausing');
  assert.equal(ctlCalls() - c0, 3);
  await sleep(1100);
  assert.equal((await get('/ctl', 'unanswered-new')).status, 200, 'after the pause: asked again');
  assert.equal(ctlCalls() - c0, 4);
});

test('a 400 whose OAuth error is about the token is the token\'s fault: 401 invalid_token, cached like an inactive answer; invalid_client stays 503', async () => {
  // oidc-provider: 400 unsupported_token_type "Structured JWT Tokens cannot be introspected".
  const jwt = await idp.jwt({ clientId: 'svc-a' });
  const c0 = calls();
  const r = await get('/api/jwt', jwt);
  assert.equal(r.status, 401, r.body);
  assert.match(String(r.headers['www-authenticate']), /error="invalid_token"/);
  assert.equal((await get('/api/jwt', jwt)).status, 401);
  assert.equal(calls() - c0, 1, 'cached for negative_cache_ttl');
  for (const error of ['invalid_token', 'invalid_request', 'unsupported_token_type']) {
    ctlAnswer = { status: 400, body: { error } };
    const x = await get('/ctl', `bad-${error}`);
    assert.equal(x.status, 401, `${error}: ${x.body}`);
    assert.match(String(x.headers['www-authenticate']), /error="invalid_token"/);
  }
  for (const [status, error] of [[400, 'invalid_client'], [401, 'invalid_client'], [403, 'access_denied'], [400, 'unauthorized_client']] as const) {
    ctlAnswer = { status, body: { error } };
    const x = await get('/ctl', `client-${status}-${error}`);
    assert.equal(x.status, 503, `${status} ${error}: ${x.body}`);
    assert.doesNotMatch(String(x.headers['www-authenticate'] ?? ''), /invalid_token/);
  }
});

test('an active refresh token (token_type refresh_token, Keycloak typ Refresh / Offline, Hydra token_use) is refused 401 invalid_token: it is not an access token', async () => {
  const exp = Math.floor(Date.now() / 1000) + 600;
  const refused = [{ token_type: 'refresh_token' }, { token_type: 'Refresh_Token' }, { typ: 'Refresh' }, { typ: 'Offline' }, { token_use: 'refresh_token' }];
  for (const [i, extra] of refused.entries()) {
    ctlAnswer = { status: 200, body: { active: true, client_id: 'svc-a', exp, ...extra } };
    const r = await get('/ctl', `refresh-${i}-${'r'.repeat(20)}`);
    assert.equal(r.status, 401, `${JSON.stringify(extra)}: ${r.body}`);
    assert.match(String(r.headers['www-authenticate']), /error="invalid_token"/);
  }
  for (const [i, extra] of [{ token_type: 'Bearer' }, { token_type: 'access_token' }, { typ: 'Bearer' }, { token_use: 'access_token' }, {}].entries()) {
    ctlAnswer = { status: 200, body: { active: true, client_id: 'svc-a', exp, ...extra } };
    const r = await get('/ctl', `access-${i}-${'a'.repeat(20)}`);
    assert.equal(r.status, 200, `${JSON.stringify(extra)}: ${r.body}`);
  }
});

test('the claim names a consumer by an oauth2-introspection credential, by name only one that declares no credentials (an IdP user called admin is not the admin consumer)', async () => {
  const as = async (token: string) => {
    const r = await request(`${gw.url}/by-username`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(r.status, 200, r.body);
    const h = (JSON.parse(r.body) as { headers: Record<string, string | undefined> }).headers;
    // (x-consumer-name names the caller either way; id and groups only a consumer)
    return [h['x-consumer-id'] === undefined ? null : h['x-consumer-name'], h['x-consumer-groups'] ?? null];
  };
  assert.deepEqual(await as('svc-a'), ['svc-a', 'apps']);
  assert.deepEqual(await as('admin'), [null, null]);
  assert.deepEqual(await as('partner'), [null, null]);
  assert.deepEqual(await as('partner-idp-user'), ['partner', 'partners']);
});

test('a credential with an issuer: only that IdP\'s subject is the consumer (a user of the same sub at another IdP is someone else); an answer without iss is the binding issuer\'s; another iss than the binding\'s issuer is 401', async () => {
  const as = async (path: string) => {
    const r = await get(path, 'alice');
    assert.equal(r.status, 200, `${path}: ${r.body}`);
    const h = (JSON.parse(r.body) as { headers: Record<string, string | undefined> }).headers;
    return [h['x-consumer-name'], h['x-consumer-groups'] ?? null];
  };
  assert.deepEqual(await as('/idp-a'), ['ops-lead', 'ops']);
  assert.deepEqual(await as('/idp-b'), ['alice', null]);
  assert.deepEqual(await as('/idp-none'), ['ops-lead', 'ops']);
  const r = await get('/idp-b-as-a', 'alice');
  assert.equal(r.status, 401, r.body);
  assert.equal(r.headers['www-authenticate'], 'Bearer realm="turnpike", error="invalid_token"');
});

test('a binding without audiences warns at load, naming where (an active token the IdP issued for any of its APIs passes, RFC 7662 §4); with audiences it does not', async () => {
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
      - {name: tight, paths: [/tight], plugins: [{name: oauth2-introspection, config: {introspection_url: '${two.url}/a', client_id: g, client_secret: s, audiences: [api]}}]}
      - {name: loose, paths: [/loose], plugins: [{name: oauth2-introspection, config: {introspection_url: '${two.url}/a', client_id: g, client_secret: s}}]}
`, { env: {} }), { pools, log }).dispose();
  await pools.closeAll();
  const warned = lines.filter((l) => l.level === 40 && /^oauth2-introspection: audiences is not set/.test(l.msg)).map((l) => l.where);
  assert.deepEqual(warned, ['services.0.routes.1.plugins.0']);
});

test('an oauth2-introspection subject is one consumer\'s only', async () => {
  const { configIssues } = await import('../../../test/helpers.js');
  const issues = configIssues(`consumers:
  - {name: a, credentials: [{type: oauth2-introspection, subject: s1}]}
  - {name: b, credentials: [{type: oauth2-introspection, subject: s1}]}
`);
  assert.ok(issues.some((i) => /"s1" is also consumer "a"'s/.test(i.message)), JSON.stringify(issues));
  // one subject at two issuers: two consumers; twice at one issuer, or beside one without issuer: refused
  assert.deepEqual(configIssues(`consumers:
  - {name: a, credentials: [{type: oauth2-introspection, subject: s1, issuer: "https://a.example"}]}
  - {name: b, credentials: [{type: oauth2-introspection, subject: s1, issuer: "https://b.example"}]}
`), []);
  for (const second of ['{type: oauth2-introspection, subject: s1, issuer: "https://a.example"}', '{type: oauth2-introspection, subject: s1}']) {
    const more = configIssues(`consumers:
  - {name: a, credentials: [{type: oauth2-introspection, subject: s1, issuer: "https://a.example"}]}
  - {name: b, credentials: [${second}]}
`);
    assert.ok(more.some((i) => /"s1".* is also consumer "a"'s/.test(i.message)), JSON.stringify(more));
  }
});

test('a client_id or client_secret the IdP can never match (a file\'s last newline, a control character) is refused at load, naming the field and its line; the value is never quoted', async () => {
  const { configIssues } = await import('../../../test/helpers.js');
  const cfg = (id: string, secret: string) => `services:
  - name: s
    url: http://127.0.0.1:1
    routes:
      - paths: [/]
        plugins:
          - name: oauth2-introspection
            config:
              introspection_url: http://127.0.0.1:1/introspect
              client_id: "${id}"
              client_secret: "\${SECRET}"
`;
  const why = 'an OAuth client credential (RFC 6749 appendix A: VSCHAR) cannot carry it';
  const at = 'services[0].routes[0].plugins[0].config';
  assert.deepEqual(configIssues(cfg('gateway', ''), { SECRET: 'gateway-secret\n' }), [{ path: `${at}.client_secret`, line: 11, message: `ends with a newline: ${why}; trim the secret` }]);
  assert.deepEqual(configIssues(cfg('gateway', ''), { SECRET: 'gateway-secret\r\n' }), [{ path: `${at}.client_secret`, line: 11, message: `ends with a newline: ${why}; trim the secret` }]);
  assert.deepEqual(configIssues(cfg('gate\\tway', ''), { SECRET: 'gateway-secret' }), [{ path: `${at}.client_id`, line: 10, message: `contains a tab: ${why}` }]);
  // VSCHAR includes the space: a secret with blanks inside or at its ends is sent as it is.
  assert.deepEqual(configIssues(cfg('gateway', ''), { SECRET: ' gateway secret ' }), []);
  for (const i of configIssues(cfg('gateway', ''), { SECRET: 'gateway-secret\n' })) assert.doesNotMatch(i.message, /gateway-secret/);
});

test('an active token bound to a DPoP key or a client certificate (cnf, RFC 9449 §7.2 / RFC 8705 §3) is refused as Bearer over a connection without that certificate', async () => {
  const exp = Math.floor(Date.now() / 1000) + 600;
  for (const [i, cnf] of [{ jkt: '0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I' }, { 'x5t#S256': 'bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2' }].entries()) {
    ctlAnswer = { status: 200, body: { active: true, client_id: 'svc-a', exp, token_type: i === 0 ? 'DPoP' : 'Bearer', cnf } };
    for (const round of ['asked', 'cached']) {
      const r = await get('/ctl', `bound-${i}-${'b'.repeat(20)}`);
      assert.equal(r.status, 401, `${JSON.stringify(cnf)} (${round}): ${r.body}`);
      assert.match(String(r.headers['www-authenticate']), /error="invalid_token"/);
    }
  }
  ctlAnswer = { status: 200, body: { active: true, client_id: 'svc-a', exp } };
  assert.equal((await get('/ctl', `unbound-${'u'.repeat(20)}`)).status, 200);
});

test('scopes in the answer as RFC 7662 says (a space-separated string) or as some IdPs send them (a JSON array, scp): the same scopes', async () => {
  const exp = Math.floor(Date.now() / 1000) + 600;
  const answers: [Record<string, unknown>, number][] = [
    [{ scope: 'openid orders:read orders:write' }, 200],
    [{ scope: ['orders:read', 'orders:write'] }, 200],
    [{ scp: ['orders:write', 'orders:read'] }, 200],
    [{ scp: 'orders:read orders:write' }, 200],
    [{ scope: ['orders:read'] }, 403],
    [{ scope: 'orders:read' }, 403],
    [{}, 403],
  ];
  for (const [i, [extra, status]] of answers.entries()) {
    ctlAnswer = { status: 200, body: { active: true, client_id: 'svc-a', exp, ...extra } };
    const r = await get('/ctl-scoped', `scoped-${i}-${'s'.repeat(20)}`);
    assert.equal(r.status, status, `${JSON.stringify(extra)}: ${r.body}`);
    if (status === 403) assert.match(String(r.headers['www-authenticate']), /error="insufficient_scope"/);
  }
});

test('an active ID token (Keycloak introspects it as active with typ ID; Cognito token_use id) is refused 401 invalid_token: it is not an access token', async () => {
  const exp = Math.floor(Date.now() / 1000) + 600;
  for (const [i, extra] of [{ typ: 'ID' }, { typ: 'id' }, { typ: 'Logout' }, { token_use: 'id' }].entries()) {
    ctlAnswer = { status: 200, body: { active: true, client_id: 'svc-a', exp, ...extra } };
    const r = await get('/ctl', `idtoken-${i}-${'i'.repeat(20)}`);
    assert.equal(r.status, 401, `${JSON.stringify(extra)}: ${r.body}`);
    assert.match(String(r.headers['www-authenticate']), /error="invalid_token"/);
  }
});

test('a flood of made-up tokens while the endpoint is slow makes at most max_concurrent_calls (here 128) calls at a time (no socket per token to the IdP): the others are 503 at once', async () => {
  let calls = 0;
  const slow = await startUpstream((_req, res) => {
    calls++;
    setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end('{"active":false}'), 1500);
  });
  const g = await startGateway(`
services:
  - name: api
    url: ${up.url}
    routes:
      - {name: api, paths: [/api], plugins: [{name: oauth2-introspection, config: {introspection_url: "${slow.url}/introspect", client_id: gateway, client_secret: s, timeout: 3s, max_concurrent_calls: 128}}]}
`);
  try {
    const started = Date.now();
    const results = await Promise.all(Array.from({ length: 160 }, (_, i) => request(`${g.url}/api`, { headers: { authorization: `Bearer flood-${i}-${'f'.repeat(20)}` } }).then((r) => ({ status: r.status, ms: Date.now() - started, retry: r.headers['retry-after'] }))));
    const refused = results.filter((r) => r.status === 503);
    assert.ok(calls <= 128, `${calls} calls at once`);
    assert.ok(refused.length >= 160 - 128, `${refused.length} answered 503`);
    assert.ok(refused.every((r) => r.ms < 1400 && r.retry !== undefined), JSON.stringify(refused.slice(0, 3)));
    assert.equal(results.filter((r) => r.status === 401).length, 160 - refused.length, 'the others: inactive, 401');
  } finally {
    await g.close();
    await slow.close();
  }
});

test('hide_credentials: a token the IdP says is not active, gone on as the anonymous consumer, never reaches the upstream', async () => {
  const r = await get('/anon-hidden/x', 'not-a-token-of-this-idp');
  assert.equal(r.status, 200, r.body);
  const h = up.requests.at(-1)!.headers;
  assert.equal(h['x-consumer-name'], 'guest');
  assert.equal(h['x-anonymous-consumer'], 'true');
  assert.equal(h.authorization, undefined);
});

test('cache per consumer: a caller the IdP names like a consumer (username admin, no consumer: admin has keys of its own) never gets that consumer\'s stored answers', async () => {
  const n0 = up.requests.length;
  const a = await request(`${gw.url}/cached/me`, { headers: { apikey: 'admin-key-0001' } });
  assert.equal(a.status, 200, a.body);
  assert.equal(up.requests.length, n0 + 1);
  const t = await get('/cached/me', 'admin');
  assert.equal(t.status, 200, t.body);
  assert.equal(up.requests.length, n0 + 2, 'the token\'s caller got the consumer\'s stored answer');
  const seen = (JSON.parse(t.body) as { headers: Record<string, string> }).headers;
  assert.equal(seen['x-consumer-name'], 'admin');
  assert.equal(seen['x-consumer-id'], undefined);
  // The consumer is still served its own stored answer.
  assert.equal((await request(`${gw.url}/cached/me`, { headers: { apikey: 'admin-key-0001' } })).body, a.body);
  assert.equal(up.requests.length, n0 + 2);
});
