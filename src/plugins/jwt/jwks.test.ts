/**
 * jwt key handling against a JWKS server of our own (node:http + jose on 127.0.0.1), for IdP
 * behaviours oidc-provider does not give on demand: slow answers, a hanging IdP, a key taken
 * out of the set, tokens without kid when several keys are published.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SignJWT, exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import { configIssues, request, sleep, startGateway, startUpstream, type TestGateway } from '../../../test/helpers.js';

interface Key { kid: string; priv: CryptoKey; pub: JWK }

async function newKey(kid: string): Promise<Key> {
  const { privateKey, publicKey } = await generateKeyPair('RS256');
  return { kid, priv: privateKey, pub: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' } };
}

/** Discovery + JWKS: `keys` is what is published; `delayMs` slows each answer; `hang` never answers. */
async function startJwks(keys: Key[]) {
  const held = new Set<ServerResponse>();
  const state = { keys, delayMs: 0, hang: false, hits: 0 };
  const server = createServer((req, res) => {
    if (state.hang) {
      held.add(res);
      return;
    }
    state.hits++;
    const answer = () => {
      const body = req.url === '/.well-known/openid-configuration'
        ? { issuer: url, jwks_uri: `${url}/jwks` }
        : { keys: state.keys.map((k) => k.pub) };
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    };
    if (state.delayMs > 0) setTimeout(answer, state.delayMs);
    else answer();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    state,
    close: () => new Promise<void>((r) => {
      for (const res of held) res.socket?.destroy();
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}

async function sign(key: Key, opts: { kid?: string | null; iss?: string; sub?: string; cnf?: unknown; claims?: Record<string, unknown> } = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const kid = opts.kid === undefined ? key.kid : opts.kid;
  return new SignJWT({ aud: 'api', sub: opts.sub ?? 'alice', iat: now, exp: now + 300, ...(opts.iss ? { iss: opts.iss } : {}), ...(opts.cnf !== undefined ? { cnf: opts.cnf } : {}), ...opts.claims })
    .setProtectedHeader({ alg: 'RS256', typ: 'JWT', ...(kid === null ? {} : { kid }) })
    .sign(key.priv);
}

async function withGateway(jwtConfig: string, fn: (get: (token: string) => ReturnType<typeof request>) => Promise<void>) {
  const up = await startUpstream();
  let gw: TestGateway | undefined;
  try {
    gw = await startGateway(`
services:
  - name: api
    url: ${up.url}
    routes:
      - name: api
        paths: [/api]
        plugins:
          - name: jwt
            config: ${jwtConfig}
`);
    const url = gw.url;
    await fn((token) => request(`${url}/api`, { headers: { authorization: `Bearer ${token}` } }));
  } finally {
    await gw?.close();
    await up.close();
  }
}

test('requests that come while the first key fetch (discovery + JWKS) is under way wait for it, not 503', async () => {
  const k1 = await newKey('k1');
  const idp = await startJwks([k1]);
  idp.state.delayMs = 300; // discovery + JWKS: about 600 ms
  try {
    await withGateway(`{issuer: "${idp.url}", audiences: [api]}`, async (get) => {
      const token = await sign(k1, { iss: idp.url });
      const first = get(token);
      await sleep(150);
      const second = get(token);
      await sleep(150);
      const more = Array.from({ length: 3 }, () => get(token));
      const all = await Promise.all([first, second, ...more]);
      assert.deepEqual(all.map((r) => r.status), [200, 200, 200, 200, 200], all.map((r) => r.body).join('\n'));
      assert.equal(idp.state.hits, 2, 'one discovery and one JWKS fetch for all of them');
    });
  } finally {
    await idp.close();
  }
});

test('a key the IdP stops publishing passes no token any more, also none verified (and cached) before', async () => {
  const k1 = await newKey('k1');
  const k2 = await newKey('k2');
  const idp = await startJwks([k1, k2]);
  try {
    await withGateway(`{jwks_url: "${idp.url}/jwks", audiences: [api], jwks_cooldown: 100ms, jwks_refresh: 1h}`, async (get) => {
      const old = await sign(k1);
      const other = await sign(k2);
      assert.equal((await get(old)).status, 200);
      assert.equal((await get(other)).status, 200);
      // k1 is revoked (say, compromised): the IdP takes it out of its set.
      idp.state.keys = [k2];
      await sleep(150); // past jwks_cooldown
      // Anything that makes the gateway fetch the set again: here a token with an unknown kid.
      assert.equal((await get(await sign(k2, { kid: 'k9' }))).status, 401);
      const hits = idp.state.hits;
      const r = await get(old);
      assert.equal(r.status, 401, 'a token verified with the removed key before is refused now');
      assert.match(String(r.headers['www-authenticate']), /error="invalid_token"/);
      assert.equal((await get(await sign(k1))).status, 401);
      assert.equal((await get(other)).status, 200, 'tokens of the keys still published pass');
      assert.equal(idp.state.hits, hits, 'no fetch for that');
    });
  } finally {
    await idp.close();
  }
});

test('an empty key set from the IdP (a glitch) keeps the keys in hand: their tokens pass, a new kid is 503 until the IdP publishes keys again', async () => {
  const k1 = await newKey('k1');
  const idp = await startJwks([k1]);
  try {
    await withGateway(`{jwks_url: "${idp.url}/jwks", audiences: [api], jwks_cooldown: 100ms, jwks_refresh: 1h, cache: false}`, async (get) => {
      const token = await sign(k1);
      assert.equal((await get(token)).status, 200);
      idp.state.keys = [];
      await sleep(150);
      assert.equal((await get(await sign(k1, { kid: 'k9' }))).status, 503, 'the set could not be refreshed: an unknown kid cannot be judged');
      assert.equal((await get(token)).status, 200, 'the key in hand still verifies');
      idp.state.keys = [k1];
      await sleep(150);
      assert.equal((await get(await sign(k1, { kid: 'k9' }))).status, 401, 'the IdP answered: the kid is not its');
      assert.equal((await get(token)).status, 200);
    });
  } finally {
    await idp.close();
  }
});

test('a token without kid is checked against each published key of its type (rotation publishes two)', async () => {
  const k1 = await newKey('k1');
  const k2 = await newKey('k2');
  const stranger = await newKey('k1');
  const idp = await startJwks([k1, k2]);
  try {
    await withGateway(`{jwks_url: "${idp.url}/jwks", audiences: [api]}`, async (get) => {
      assert.equal((await get(await sign(k2, { kid: null }))).status, 200, 'signed by the second key');
      assert.equal((await get(await sign(k1, { kid: null }))).status, 200, 'signed by the first key');
      const bad = await get(await sign(stranger, { kid: null }));
      assert.equal(bad.status, 401, 'signed by neither');
      assert.match(String(bad.headers['www-authenticate']), /error="invalid_token"/);
    });
  } finally {
    await idp.close();
  }
});

test('an unknown kid while the IdP hangs: one fetch timeout of waiting, then 503 auth-unavailable (not invalid_token); known keys keep working', async () => {
  const k1 = await newKey('k1');
  const idp = await startJwks([k1]);
  try {
    await withGateway(`{jwks_url: "${idp.url}/jwks", audiences: [api], jwks_cooldown: 100ms, jwks_refresh: 1h, timeout: 500ms}`, async (get) => {
      assert.equal((await get(await sign(k1))).status, 200);
      idp.state.hang = true;
      await sleep(150); // past jwks_cooldown
      const unknown = await sign(k1, { kid: 'k-new' });
      const unknown2 = await sign(k1, { kid: 'k-other' });
      const started = Date.now();
      const [r, r2] = await Promise.all([get(unknown), get(unknown2)]);
      const waited = Date.now() - started;
      for (const x of [r, r2]) {
        assert.equal(x.status, 503, x.body);
        assert.equal(x.headers['retry-after'], '5');
        assert.match(x.body, /urn:turnpike:problem:auth-unavailable/);
        assert.doesNotMatch(String(x.headers['www-authenticate'] ?? ''), /invalid_token/);
      }
      assert.ok(waited >= 400 && waited < 1000, `waited ${waited} ms: one fetch timeout (500 ms), not two`);
      assert.equal((await get(await sign(k1))).status, 200, 'a token of a key in hand passes');
      idp.state.hang = false;
      await sleep(150);
      assert.equal((await get(unknown)).status, 401, 'the IdP answers again: the kid is not its');
    });
  } finally {
    await idp.close();
  }
});

test('a secret in the JWKS or introspection URL (a query key, a userinfo password) never reaches the log', async () => {
  const { Writable } = await import('node:stream');
  const { default: pino } = await import('pino');
  const { Gateway } = await import('../../server/gateway.js');
  const { parseConfigText } = await import('../../config/load.js');
  const lines: string[] = [];
  // An IdP that answers 500 to everything: every fetch fails and is logged.
  const failing = createServer((_req, res) => res.writeHead(500).end('no'));
  await new Promise<void>((r) => failing.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(failing.address() as AddressInfo).port}`;
  const up = await startUpstream();
  const gw = await Gateway.start(parseConfigText(`listen: 127.0.0.1:0
access_log: {enabled: false}
services:
  - name: api
    url: ${up.url}
    routes:
      - {name: j, paths: [/j], plugins: [{name: jwt, config: {jwks_url: "${base}/jwks?api_key=JWKS-SECRET-1"}}]}
      - {name: i, paths: [/i], plugins: [{name: oauth2-introspection, config: {introspection_url: "http://gw:INTRO-SECRET-2@127.0.0.1:${(failing.address() as AddressInfo).port}/introspect?token=INTRO-SECRET-3", client_id: gw, client_secret: s}}]}
`, { env: {} }), { logger: pino({ level: 'info' }, new Writable({ write(chunk, _enc, cb) { lines.push(String(chunk)); cb(); } })) });
  try {
    const url = `http://127.0.0.1:${gw.proxyAddress!.port}`;
    const { privateKey } = await generateKeyPair('RS256');
    const token = await new SignJWT({ sub: 'a', exp: Math.floor(Date.now() / 1000) + 60 }).setProtectedHeader({ alg: 'RS256', kid: 'k' }).sign(privateKey);
    assert.equal((await request(`${url}/j`, { headers: { authorization: `Bearer ${token}` } })).status, 503);
    assert.equal((await request(`${url}/i`, { headers: { authorization: 'Bearer opaque-token' } })).status, 503);
    await sleep(200);
    const log = lines.join('');
    assert.match(log, /fetching signing keys failed/);
    assert.match(log, /token introspection failed/);
    for (const secret of ['JWKS-SECRET-1', 'INTRO-SECRET-2', 'INTRO-SECRET-3']) assert.ok(!log.includes(secret), `${secret} in the log: ${log}`);
  } finally {
    await gw.stop();
    await up.close();
    failing.closeAllConnections();
    await new Promise<void>((r) => failing.close(() => r()));
  }
});

test('a consumer whose credentials are held (portal approved/verified false) or who has only a portal login is never named by a token claim', async () => {
  const k1 = await newKey('k1');
  const idp = await startJwks([k1]);
  const up = await startUpstream();
  let gw: TestGateway | undefined;
  try {
    const login = (email: string) => `{type: portal, email: "${email}", password_hash: "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`;
    gw = await startGateway(`
services:
  - name: api
    url: ${up.url}
    routes:
      - name: api
        paths: [/api]
        plugins:
          - {name: jwt, config: {jwks_url: "${idp.url}/jwks", audiences: [api]}}
          - {name: acl, config: {allow: [partners]}}
consumers:
  - name: suspended
    groups: [partners]
    credentials:
      - ${login('s@example.com').replace('}', ', approved: false}')}
      - {type: key-auth, key: suspended-key-0001}
  - name: unverified
    groups: [partners]
    credentials: [${login('u@example.com').replace('}', ', verified: false}')}]
  - name: developer
    groups: [partners]
    credentials: [${login('d@example.com')}]
  - name: plain
    groups: [partners]
`);
    const get = async (sub: string) => request(`${gw!.url}/api`, { headers: { authorization: `Bearer ${await sign(k1, { sub })}` } });
    const plain = await get('plain');
    assert.equal(plain.status, 200, 'a consumer that declares no credentials is named by the claim');
    assert.equal(JSON.parse(plain.body).headers['x-consumer-name'], 'plain');
    for (const sub of ['suspended', 'unverified', 'developer']) {
      const r = await get(sub);
      assert.equal(r.status, 403, `sub ${sub}: not that consumer (no groups: the acl refuses) — ${r.body}`);
    }
  } finally {
    await gw?.close();
    await up.close();
    await idp.close();
  }
});

test('keys published without kid (RFC 7517 §4.5: kid is optional) verify tokens that carry one, without a fetch per token; a token signed by no published key is 401', async () => {
  const k1 = await newKey('k1');
  const k2 = await newKey('k2');
  const stranger = await newKey('k1');
  const { kid: _a, ...bare1 } = k1.pub;
  const { kid: _b, ...bare2 } = k2.pub;
  const idp = await startJwks([{ ...k1, pub: bare1 }, { ...k2, pub: bare2 }]);
  try {
    await withGateway(`{jwks_url: "${idp.url}/jwks", audiences: [api], cache: false}`, async (get) => {
      const r = await get(await sign(k1, { kid: 'whatever-the-idp-puts' }));
      assert.equal(r.status, 200, r.body);
      assert.equal((await get(await sign(k2, { kid: 'k2' }))).status, 200, 'the second kid-less key');
      const hits = idp.state.hits;
      assert.equal((await get(await sign(k2, { kid: 'other' }))).status, 200);
      assert.equal(idp.state.hits, hits, 'no fetch for it');
      const bad = await get(await sign(stranger));
      assert.equal(bad.status, 401);
      assert.match(String(bad.headers['www-authenticate']), /error="invalid_token"/);
    });
  } finally {
    await idp.close();
  }
});

test('sender-constrained tokens (cnf): bound to a DPoP key, never as Bearer (RFC 9449 §7.2); bound to a client certificate, only over a connection that presented it (RFC 8705 §3)', async () => {
  const { request: httpsRequest } = await import('node:https');
  const { X509Certificate, createHash } = await import('node:crypto');
  const { makeCa } = await import('../../../test/certs.js');
  const ca = makeCa('Client CA');
  const server = ca.issue('api.test');
  const mine = ca.issue('app-1', { client: true });
  const other = ca.issue('app-2', { client: true });
  const k1 = await newKey('k1');
  const idp = await startJwks([k1]);
  const up = await startUpstream();
  let gw: TestGateway | undefined;
  try {
    gw = await startGateway(`
listen_tls: 127.0.0.1:0
tls:
  certificates: [{hosts: [api.test], cert: ${server.certFile}, key: ${server.keyFile}}]
  client_ca: ${ca.certFile}
services:
  - name: api
    url: ${up.url}
    routes:
      - {name: api, paths: [/api], plugins: [{name: jwt, config: {jwks_url: "${idp.url}/jwks", audiences: [api]}}]}
`);
    const tlsPort = gw.gw.tlsAddress!.port;
    const viaTls = (token: string, client?: { cert: Buffer | string; key: Buffer | string }) => new Promise<{ status: number; challenge: string }>((resolve, reject) => {
      const r = httpsRequest({ host: '127.0.0.1', port: tlsPort, path: '/api', servername: 'api.test', ca: ca.cert, agent: false, headers: { authorization: `Bearer ${token}` }, ...(client ? { cert: client.cert, key: client.key } : {}) }, (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode!, challenge: String(res.headers['www-authenticate'] ?? '') }));
      });
      r.on('error', reject);
      r.end();
    });
    const plain = (token: string) => request(`${gw!.url}/api`, { headers: { authorization: `Bearer ${token}` } });
    const dpop = await sign(k1, { cnf: { jkt: '0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I' } });
    for (const r of [await plain(dpop), await plain(dpop)]) {
      assert.equal(r.status, 401, `a DPoP-bound token as Bearer (a second time: from the cache): ${r.body}`);
      assert.match(String(r.headers['www-authenticate']), /error="invalid_token"/);
    }
    assert.equal((await viaTls(dpop, mine)).status, 401);
    const thumb = createHash('sha256').update(new X509Certificate(mine.cert).raw).digest('base64url');
    const bound = await sign(k1, { cnf: { 'x5t#S256': thumb } });
    assert.equal((await viaTls(bound, mine)).status, 200, 'over a connection with that certificate');
    assert.equal((await viaTls(bound, mine)).status, 200, 'again (from the cache)');
    const wrong = await viaTls(bound, other);
    assert.equal(wrong.status, 401, 'another client certificate');
    assert.match(wrong.challenge, /error="invalid_token"/);
    assert.equal((await viaTls(bound)).status, 401, 'no client certificate');
    // HTTP/2 (gRPC clients): the connection's certificate too.
    const { connect: h2connect } = await import('node:http2');
    for (const [client, want] of [[mine, 200], [other, 401]] as const) {
      const c = h2connect(`https://127.0.0.1:${tlsPort}`, { ca: ca.cert, servername: 'api.test', cert: client.cert, key: client.key });
      try {
        const status = await new Promise<number>((resolve, reject) => {
          const s = c.request({ ':path': '/api', ':authority': 'api.test', authorization: `Bearer ${bound}` });
          s.on('response', (h) => resolve(Number(h[':status'])));
          s.on('error', reject);
          s.resume();
          s.end();
        });
        assert.equal(status, want, 'over HTTP/2');
      } finally {
        c.close();
      }
    }
    assert.equal((await plain(bound)).status, 401, 'plain HTTP');
    assert.equal((await plain(await sign(k1, { cnf: {} }))).status, 200, 'a cnf that binds to nothing');
    assert.equal((await plain(await sign(k1))).status, 200);
  } finally {
    await gw?.close();
    await up.close();
    await idp.close();
    ca.cleanup();
  }
});

test('with every request a cache hit, the keys are still refreshed every jwks_refresh: a key the IdP stops publishing stops its cached tokens', async () => {
  const k1 = await newKey('k1');
  const k2 = await newKey('k2');
  const idp = await startJwks([k1, k2]);
  try {
    await withGateway(`{jwks_url: "${idp.url}/jwks", audiences: [api], jwks_refresh: 300ms, jwks_cooldown: 100ms}`, async (get) => {
      const token = await sign(k1);
      assert.equal((await get(token)).status, 200);
      const hits = idp.state.hits;
      idp.state.keys = [k2]; // k1 revoked
      let status = 200;
      for (let i = 0; i < 20 && status === 200; i++) {
        await sleep(100);
        status = (await get(token)).status;
      }
      assert.ok(idp.state.hits > hits, 'the keys were fetched again');
      assert.equal(status, 401, 'the token of the key gone is refused within about jwks_refresh');
    });
  } finally {
    await idp.close();
  }
});

test('two IdPs: a jwt credential with an issuer stands for its consumer only in tokens of that issuer (another IdP\'s token with the same sub is not that consumer)', async () => {
  const ka = await newKey('ka');
  const kb = await newKey('kb');
  const idpA = await startJwks([ka]);
  const idpB = await startJwks([kb]);
  const up = await startUpstream();
  let gw: TestGateway | undefined;
  try {
    gw = await startGateway(`
services:
  - name: api
    url: ${up.url}
    routes:
      - {name: a, paths: [/a], plugins: [{name: jwt, config: {issuer: "${idpA.url}", audiences: [api]}}, {name: acl, config: {allow: [partners]}}]}
      - {name: b, paths: [/b], plugins: [{name: jwt, config: {issuer: "${idpB.url}", audiences: [api]}}, {name: acl, config: {allow: [partners]}}]}
consumers:
  - name: partner
    groups: [partners]
    credentials: [{type: jwt, subject: svc, issuer: "${idpA.url}"}]
  - name: other
    groups: [partners]
    credentials: [{type: jwt, subject: svc, issuer: "${idpB.url}-elsewhere"}]
`);
    const call = async (path: string, key: Key, iss: string) => request(`${gw!.url}${path}`, { headers: { authorization: `Bearer ${await sign(key, { iss, sub: 'svc' })}` } });
    const a = await call('/a', ka, idpA.url);
    assert.equal(a.status, 200, a.body);
    assert.equal(JSON.parse(a.body).headers['x-consumer-name'], 'partner');
    const b = await call('/b', kb, idpB.url);
    assert.equal(b.status, 403, `IdP B's svc is not partner (nor other): ${b.body}`);
  } finally {
    await gw?.close();
    await up.close();
    await idpA.close();
    await idpB.close();
  }
});

test('config: a jwt subject is one consumer\'s only for an issuer (the same subject for another issuer is fine)', () => {
  const issues = (creds: string) => configIssues(`
consumers:
  - {name: a, credentials: [${creds.split('|')[0]}]}
  - {name: b, credentials: [${creds.split('|')[1]}]}
`);
  assert.deepEqual(issues('{type: jwt, subject: s, issuer: "https://a"}|{type: jwt, subject: s, issuer: "https://b"}'), []);
  for (const pair of ['{type: jwt, subject: s}|{type: jwt, subject: s}', '{type: jwt, subject: s, issuer: "https://a"}|{type: jwt, subject: s, issuer: "https://a"}', '{type: jwt, subject: s}|{type: jwt, subject: s, issuer: "https://a"}']) {
    const found = issues(pair);
    assert.ok(found.some((i) => i.path === "consumers[1].credentials[0].subject" && /also consumer "a"'s/.test(i.message)), `${pair}: ${JSON.stringify(found)}`);
  }
});

test('config: jwks_cooldown below 100ms (0: every request with a made-up kid would fetch the keys) is refused at load, naming the path and line', () => {
  const at = (cooldown: string) => configIssues(`services:
  - name: s
    url: http://127.0.0.1:1
    routes:
      - name: r
        paths: [/r]
        plugins:
          - name: jwt
            config: {jwks_url: "http://127.0.0.1:1/jwks", audiences: [api], jwks_cooldown: ${cooldown}}
`);
  for (const bad of ['0', '0s', '50ms']) {
    const found = at(bad);
    assert.equal(found.length, 1, `${bad}: ${JSON.stringify(found)}`);
    assert.match(found[0]!.path, /services\[0\]\.routes\[0\]\.plugins\[0\]\.config\.jwks_cooldown$/);
    assert.equal(found[0]!.line, 9);
    assert.match(found[0]!.message, /at least 100ms/);
  }
  assert.deepEqual(at('100ms'), []);
});

test('an ID, refresh or logout token the IdP signs with its access-token key is not an access token (Keycloak typ claim, Cognito / Hydra token_use): 401 invalid_token', async () => {
  const k1 = await newKey('k1');
  const idp = await startJwks([k1]);
  try {
    await withGateway(`{jwks_url: "${idp.url}/jwks", audiences: [api]}`, async (get) => {
      for (const claims of [{ typ: 'ID' }, { typ: 'Refresh' }, { typ: 'Offline' }, { typ: 'Logout' }, { token_use: 'id' }, { token_use: 'refresh_token' }]) {
        const r = await get(await sign(k1, { claims }));
        assert.equal(r.status, 401, `${JSON.stringify(claims)}: ${r.body}`);
        assert.match(String(r.headers['www-authenticate']), /error="invalid_token"/);
      }
      for (const claims of [{ typ: 'Bearer' }, { token_use: 'access' }, {}]) {
        const r = await get(await sign(k1, { claims }));
        assert.equal(r.status, 200, `${JSON.stringify(claims)}: ${r.body}`);
      }
    });
  } finally {
    await idp.close();
  }
});

test('a key published as its certificate only (x5c, RFC 7517 §4.7, without n/e or x/y) verifies its tokens', async () => {
  const { X509Certificate, createPrivateKey } = await import('node:crypto');
  const { makeCa } = await import('../../../test/certs.js');
  const ca = makeCa('IdP signing CA');
  const signer = ca.issue('idp-signer');
  const der = new X509Certificate(signer.cert).raw.toString('base64');
  const priv = createPrivateKey(signer.key);
  const rsa = await newKey('rs');
  const idp = await startJwks([{ kid: 'x5c-only', priv: rsa.priv, pub: { kty: 'EC', kid: 'x5c-only', use: 'sig', alg: 'ES256', x5c: [der] } }, rsa]);
  try {
    await withGateway(`{jwks_url: "${idp.url}/jwks", audiences: [api]}`, async (get) => {
      const now = Math.floor(Date.now() / 1000);
      const token = await new SignJWT({ aud: 'api', sub: 'alice', iat: now, exp: now + 300 }).setProtectedHeader({ alg: 'ES256', kid: 'x5c-only' }).sign(priv);
      const r = await get(token);
      assert.equal(r.status, 200, r.body);
      const other = makeCa('other');
      const stranger = createPrivateKey(other.key);
      other.cleanup();
      assert.equal((await get(await new SignJWT({ aud: 'api', sub: 'alice', iat: now, exp: now + 300 }).setProtectedHeader({ alg: 'ES256', kid: 'x5c-only' }).sign(stranger))).status, 401);
      assert.equal((await get(await sign(rsa))).status, 200, 'the other keys still work');
    });
  } finally {
    await idp.close();
    ca.cleanup();
  }
});
