// Proves test/oidc-fixture.ts: a real oidc-provider whose discovery, JWKS, JWT access tokens,
// introspection, revocation, key rotation, outages and token expiry behave as gateway tests need.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { get } from 'node:http';
import { createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, importJWK, jwtVerify, SignJWT, type JWK } from 'jose';
import { CLIENTS, DEFAULT_AUDIENCE, startIdp, type TestIdp } from './oidc-fixture.js';

const T = { timeout: 10_000 };

async function withIdp(fn: (idp: TestIdp) => Promise<void>, opts?: Parameters<typeof startIdp>[0]) {
  const idp = await startIdp(opts);
  try { await fn(idp); } finally { await idp.close(); }
}

/** One GET on a fresh connection: the status, or the socket error code ('TIMEOUT' after ms). */
function probe(url: string, ms = 1000): Promise<number | string> {
  return new Promise((resolve) => {
    const req = get(url, { agent: false, timeout: ms }, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
    req.on('timeout', () => { req.destroy(); resolve('TIMEOUT'); });
    req.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

async function introspect(idp: TestIdp, token: string, auth: 'basic' | 'post' = 'basic', client = idp.introspection) {
  const body = new URLSearchParams({ token });
  const headers: Record<string, string> = {};
  if (auth === 'basic') headers.authorization = `Basic ${Buffer.from(`${client.clientId}:${client.clientSecret}`).toString('base64')}`;
  else { body.set('client_id', client.clientId); body.set('client_secret', client.clientSecret); }
  const res = await fetch(idp.introspection.url, { method: 'POST', headers, body, signal: AbortSignal.timeout(3000) });
  assert.equal(res.status, 200);
  return await res.json() as Record<string, unknown>;
}

test('discovery lists issuer, jwks_uri, token, introspection and revocation endpoints', T, () => withIdp(async (idp) => {
  const d = await (await fetch(`${idp.issuer}/.well-known/openid-configuration`)).json() as Record<string, unknown>;
  assert.equal(d.issuer, idp.issuer);
  assert.match(idp.issuer, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.equal(d.jwks_uri, idp.jwksUrl);
  assert.equal(d.token_endpoint, idp.tokenUrl);
  assert.equal(d.introspection_endpoint, idp.introspection.url);
  assert.equal(d.revocation_endpoint, `${idp.issuer}/token/revocation`);
  assert.equal(idp.hits['/.well-known/openid-configuration'], 1);
}));

test('JWT access tokens verify against the remote JWKS (issuer, audience, claims; RS256 and ES256)', T, () => withIdp(async (idp) => {
  const jwks = createRemoteJWKSet(new URL(idp.jwksUrl));
  const token = await idp.jwt({ audience: 'https://orders.example', scope: 'orders:read orders:write', clientId: 'svc-b' });
  const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer: idp.issuer, audience: 'https://orders.example' });
  assert.deepEqual(protectedHeader, { alg: 'RS256', typ: 'at+jwt', kid: idp.signingKeys().current.RS256!.kid });
  assert.equal(payload.aud, 'https://orders.example');
  assert.equal(payload.client_id, 'svc-b');
  assert.equal(payload.sub, 'svc-b');
  assert.equal(payload.scope, 'orders:read orders:write');
  assert.equal(payload.exp! - payload.iat!, 300);

  const es = await idp.jwt({ alg: 'ES256' });
  const v = await jwtVerify(es, jwks, { issuer: idp.issuer, audience: DEFAULT_AUDIENCE, algorithms: ['ES256'] });
  assert.equal(v.protectedHeader.kid, idp.signingKeys().current.ES256!.kid);
  assert.equal(v.payload.scope, 'read');
  await assert.rejects(jwtVerify(token, jwks, { issuer: idp.issuer, audience: DEFAULT_AUDIENCE }), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED' });
  assert.equal(idp.hits['/jwks'], 1, 'jose cached the JWKS');
  await assert.rejects(idp.jwt({ audience: 'orders' }), /invalid_target/); // resource must be an absolute URI

  // signingKeys(): the published keys, usable for forging tokens the gateway must accept/reject.
  const published = (await (await fetch(idp.jwksUrl)).json() as { keys: JWK[] }).keys;
  assert.deepEqual(published, idp.signingKeys().public);
  const cur = idp.signingKeys().current.ES256!;
  const forged = await new SignJWT({ client_id: 'evil', scope: 'admin' }).setProtectedHeader({ alg: 'ES256', kid: cur.kid! })
    .setIssuer(idp.issuer).setAudience(DEFAULT_AUDIENCE).setExpirationTime('1m').sign(await importJWK(cur, 'ES256'));
  await jwtVerify(forged, createLocalJWKSet({ keys: published }), { issuer: idp.issuer, audience: DEFAULT_AUDIENCE });
}));

test('rotateKeys: new kid for new tokens, old key published until dropOld, same issuer/port', T, () => withIdp(async (idp) => {
  const port = idp.port;
  const old = await idp.jwt();
  const oldKid = decodeProtectedHeader(old).kid!;
  const { kid } = await idp.rotateKeys();
  assert.notEqual(kid, oldKid);
  const fresh = await idp.jwt();
  assert.equal(decodeProtectedHeader(fresh).kid, kid);
  const kids = async () => ((await (await fetch(idp.jwksUrl)).json()) as { keys: JWK[] }).keys.map((k) => k.kid);
  assert.ok((await kids()).includes(kid) && (await kids()).includes(oldKid));
  for (const t of [old, fresh]) await jwtVerify(t, createRemoteJWKSet(new URL(idp.jwksUrl)), { issuer: idp.issuer, audience: DEFAULT_AUDIENCE });

  const opaque = await idp.opaque(); // stateful tokens survive the Provider swap
  const { kid: third } = await idp.rotateKeys({ dropOld: true });
  assert.deepEqual((await kids()).filter((k) => k !== idp.signingKeys().current.ES256!.kid), [third]);
  await assert.rejects(jwtVerify(old, createRemoteJWKSet(new URL(idp.jwksUrl)), { issuer: idp.issuer }), { code: 'ERR_JWKS_NO_MATCHING_KEY' });
  assert.equal(idp.port, port);
  assert.equal((await introspect(idp, opaque)).active, true);
}));

test('opaque tokens: introspection active with gateway credentials, inactive after revoke', T, () => withIdp(async (idp) => {
  const token = await idp.opaque({ scope: 'read write', clientId: 'svc-a' });
  assert.match(token, /^[\w-]{43}$/); // not a JWT
  const r = await introspect(idp, token);
  assert.equal(r.active, true);
  assert.equal(r.client_id, 'svc-a');
  assert.equal(r.scope, 'read write');
  assert.equal(r.aud, DEFAULT_AUDIENCE);
  assert.equal(r.iss, idp.issuer);
  assert.equal(r.token_type, 'Bearer');
  assert.equal(typeof r.exp, 'number');
  assert.equal((await introspect(idp, token, 'post')).active, true); // client_secret_post works too
  assert.equal((await introspect(idp, token, 'basic', { ...idp.introspection, clientId: 'svc-b', clientSecret: CLIENTS['svc-b']! })).active, false);
  assert.equal((await introspect(idp, 'not-a-token')).active, false);

  const bad = await fetch(idp.introspection.url, { method: 'POST', body: new URLSearchParams({ token }), headers: { authorization: `Basic ${Buffer.from('gateway:wrong').toString('base64')}` } });
  assert.equal(bad.status, 401);
  assert.equal(((await bad.json()) as { error: string }).error, 'invalid_client');

  await idp.revoke(token);
  assert.deepEqual(await introspect(idp, token), { active: false });
  assert.equal(idp.hits['/token/introspection'], 6);
  assert.equal(idp.hits['/token/revocation'], 1);
}));

test('down()/up(): refused, reset and hanging IdP, back on the same port', T, () => withIdp(async (idp) => {
  const disco = `${idp.issuer}/.well-known/openid-configuration`;
  assert.equal(await probe(disco), 200);
  await idp.down();
  assert.equal(await probe(disco), 'ECONNREFUSED');
  await assert.rejects(fetch(idp.jwksUrl), (e: Error & { cause?: { code?: string } }) => ['ECONNREFUSED', 'ECONNRESET', 'UND_ERR_SOCKET'].includes(e.cause?.code ?? ''));
  await idp.up();
  assert.equal(await probe(disco), 200);
  await idp.jwt();

  await idp.down('reset');
  assert.equal(await probe(disco), 'ECONNRESET');
  await idp.down('hang');
  assert.equal(await probe(disco, 300), 'TIMEOUT');
  await idp.up();
  assert.equal(await probe(idp.jwksUrl), 200);
}));

test('ttl: a 2 s JWT verifies, then fails as expired', { timeout: 4000 }, () => withIdp(async (idp) => {
  const jwks = createRemoteJWKSet(new URL(idp.jwksUrl));
  const token = await idp.jwt({ ttlSeconds: 2 });
  const { payload } = await jwtVerify(token, jwks, { issuer: idp.issuer, audience: DEFAULT_AUDIENCE });
  assert.equal(payload.exp! - payload.iat!, 2);
  await new Promise((r) => setTimeout(r, payload.exp! * 1000 - Date.now() + 20));
  await assert.rejects(jwtVerify(token, jwks, { issuer: idp.issuer, audience: DEFAULT_AUDIENCE }), { code: 'ERR_JWT_EXPIRED' });
}, { algs: ['ES256'] }));
