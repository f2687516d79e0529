/**
 * A real OpenID Provider for gateway auth tests: oidc-provider (npm) on http://127.0.0.1:PORT, in
 * the test process. Client-credentials tokens only (no users, no interactions).
 *
 *   const idp = await startIdp();              // algs default ['RS256', 'ES256'] (first = default)
 *   const at = await idp.jwt({ audience: 'https://api.turnpike.test', scope: 'read write' });
 *   ...gateway config: issuer idp.issuer, jwks idp.jwksUrl, introspection idp.introspection...
 *   await idp.close();
 *
 * Clients (static, confidential, client_secret_basic or _post, grant client_credentials):
 *   svc-a / svc-a-secret, svc-b / svc-b-secret, gateway / gateway-secret (see CLIENTS).
 *   Introspection/revocation: `gateway` may introspect and revoke any token, other clients only
 *   their own (else introspection answers {active:false}, revocation 400).
 * Endpoints: /.well-known/openid-configuration, /jwks, /token, /token/introspection,
 *   /token/revocation.
 * Tokens: every token request carries `resource=<audience>` (RFC 8707, must be an absolute URI:
 *   non-URI audiences get invalid_target). getResourceServerInfo grants exactly the requested
 *   scope for any resource; format, alg and ttl of one token come from the fixture's own
 *   `x-test-idp` request header (absent, e.g. a raw curl: JWT, default alg, default ttl).
 *   Requests without `resource` get DEFAULT_AUDIENCE.
 *   JWT access token (RFC 9068): header {alg, typ:'at+jwt', kid}; claims iss, aud (= the
 *   resource, a string), client_id, sub (= client_id), scope (space separated; absent if no
 *   scope), jti, iat, exp. Opaque: 43 random chars, stateful (introspection/revocation).
 * Keys: one RS256 and/or one ES256 key, kid = RFC 7638 thumbprint. rotateKeys() recreates the
 *   Provider behind the same http server with a new first key (same issuer/port; token store
 *   survives). Tokens are held in a per-IdP in-memory store.
 * Availability: down('refuse') closes the listener (ECONNREFUSED), down('reset') keeps it but
 *   resets every connection (ECONNRESET), down('hang') accepts and never answers; up() undoes.
 * hits: requests seen per path (also the fixture's own /token and /token/revocation calls;
 *   not counted while down).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { generateKeyPair } from 'node:crypto';
import { promisify } from 'node:util';
import type { Socket } from 'node:net';
import { calculateJwkThumbprint, type JWK } from 'jose';
import Provider from 'oidc-provider';

export type Alg = 'RS256' | 'ES256';
export type DownMode = 'refuse' | 'reset' | 'hang';

export const DEFAULT_AUDIENCE = 'https://api.turnpike.test';
/** Statically registered clients: id -> secret. */
export const CLIENTS: Readonly<Record<string, string>> = {
  'svc-a': 'svc-a-secret',
  'svc-b': 'svc-b-secret',
  gateway: 'gateway-secret',
};

export interface TestIdp {
  issuer: string;
  port: number;
  /** client_credentials access token in JWT format (current key of `alg`, kid in header). */
  jwt(opts?: { audience?: string; scope?: string; clientId?: string; ttlSeconds?: number; alg?: Alg }): Promise<string>;
  /** client_credentials access token in opaque format (for introspection). */
  opaque(opts?: { audience?: string; scope?: string; clientId?: string; ttlSeconds?: number }): Promise<string>;
  /** Revokes a token at the revocation endpoint (RFC 7009) as `gateway`. Opaque tokens only. */
  revoke(token: string): Promise<void>;
  /** What the gateway uses for RFC 7662 introspection (HTTP Basic or client_secret_post). */
  introspection: { url: string; clientId: string; clientSecret: string };
  jwksUrl: string;
  tokenUrl: string;
  /** Adds a new key for `alg` (default: the default alg) used for new tokens; old one stays published unless dropOld. */
  rotateKeys(opts?: { dropOld?: boolean; alg?: Alg }): Promise<{ kid: string }>;
  down(mode?: DownMode): Promise<void>;
  up(): Promise<void>;
  hits: Record<string, number>;
  /** Private JWKs as published (newest first), their public halves, and the signing key per alg. */
  signingKeys(): { private: JWK[]; public: JWK[]; current: Partial<Record<Alg, JWK>> };
  close(): Promise<void>;
}

const genKey = promisify(generateKeyPair);

async function newKey(alg: Alg): Promise<JWK> {
  const { privateKey } = alg === 'RS256'
    ? await genKey('rsa', { modulusLength: 2048 })
    : await genKey('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' }) as JWK;
  return { ...jwk, kid: await calculateJwkThumbprint(jwk), alg, use: 'sig' };
}

const publicPart = ({ d, p, q, dp, dq, qi, ...pub }: JWK): JWK => pub;
const basic = (id: string, secret: string) =>
  `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;

/** Per-IdP token store (survives Provider recreation; isolated between IdPs). */
function memoryAdapter() {
  const store = new Map<string, { payload: Record<string, unknown>; until: number }>();
  return (model: string) => {
    const key = (id: string) => `${model}:${id}`;
    return {
      async upsert(id: string, payload: Record<string, unknown>, expiresIn?: number) {
        store.set(key(id), { payload, until: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
      },
      async find(id: string) {
        const e = store.get(key(id));
        if (e && e.until <= Date.now()) store.delete(key(id));
        return e && e.until > Date.now() ? e.payload : undefined;
      },
      async destroy(id: string) { store.delete(key(id)); },
      async consume(id: string) {
        const e = store.get(key(id));
        if (e) e.payload.consumed = Math.floor(Date.now() / 1000);
      },
      async findByUid() { return undefined; },
      async findByUserCode() { return undefined; },
      async revokeByGrantId() {},
    };
  };
}

export async function startIdp(opts: { accessTokenTtl?: number; algs?: Alg[] } = {}): Promise<TestIdp> {
  const algs: Alg[] = opts.algs?.length ? [...new Set(opts.algs)] : ['RS256', 'ES256'];
  const defaultAlg = algs[0]!;
  const defaultTtl = opts.accessTokenTtl ?? 300;
  let keys: JWK[] = await Promise.all(algs.map(newKey)); // newest first: oidc-provider signs with the first match
  const adapter = memoryAdapter();
  const hits: Record<string, number> = {};
  const sockets = new Set<Socket>();
  const held = new Set<ServerResponse>();
  let mode: DownMode | 'up' | 'closed' = 'up';
  let handler: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => { res.statusCode = 503; res.end(); };

  const server = createServer((req, res) => {
    if (mode === 'hang') { held.add(res); return; }
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    hits[path] = (hits[path] ?? 0) + 1;
    handler(req, res);
  });
  server.on('connection', (s) => {
    if (mode === 'reset') { s.resetAndDestroy(); return; }
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  const listen = (p: number) => new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(p, '127.0.0.1', () => { server.off('error', reject); resolve(); });
  });
  const stop = () => new Promise<void>((resolve) => {
    if (!server.listening) { resolve(); return; }
    server.close(() => resolve());
    server.closeAllConnections();
  });
  const dropConnections = () => {
    for (const res of held) res.socket?.destroy();
    held.clear();
    for (const s of sockets) s.resetAndDestroy();
  };

  await listen(0);
  const { port } = server.address() as { port: number };
  const issuer = `http://127.0.0.1:${port}`;

  type PerToken = { format?: 'jwt' | 'opaque'; alg?: Alg; ttl?: number };
  const perToken = (ctx: any): PerToken => {
    try { return JSON.parse(ctx.get('x-test-idp') || '{}') as PerToken; } catch { return {}; }
  };
  const mayActOn = (client: { clientId: string }, token: { clientId: string }) =>
    client.clientId === 'gateway' || client.clientId === token.clientId;

  const makeProvider = () => {
    const provider = new Provider(issuer, {
      adapter,
      clients: Object.entries(CLIENTS).map(([client_id, client_secret]) => ({
        client_id, client_secret, grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
      })),
      jwks: { keys },
      clientDefaults: { id_token_signed_response_alg: defaultAlg },
      features: {
        devInteractions: { enabled: false },
        clientCredentials: { enabled: true },
        introspection: { enabled: true, allowedPolicy: (_ctx: unknown, client: any, token: any) => mayActOn(client, token) },
        revocation: {
          enabled: true,
          allowedPolicy: (_ctx: unknown, client: any, token: any) => mayActOn(client, token),
        },
        resourceIndicators: {
          enabled: true,
          defaultResource: (_ctx: unknown, _client: unknown, oneOf?: string[]) => oneOf ?? DEFAULT_AUDIENCE,
          useGrantedResource: () => true,
          getResourceServerInfo: (ctx: any, resource: string) => {
            const t = perToken(ctx);
            const base = { scope: String(ctx.oidc.params.scope ?? ''), audience: resource, accessTokenTTL: t.ttl ?? defaultTtl };
            return t.format === 'opaque'
              ? { ...base, accessTokenFormat: 'opaque' }
              : { ...base, accessTokenFormat: 'jwt', jwt: { sign: { alg: t.alg ?? defaultAlg } } };
          },
        },
      },
      ttl: {
        ClientCredentials: (_ctx: unknown, token: any) => token.resourceServer?.accessTokenTTL ?? defaultTtl,
        AccessToken: (_ctx: unknown, token: any) => token.resourceServer?.accessTokenTTL ?? defaultTtl,
      },
    });
    handler = provider.callback();
  };
  makeProvider();

  async function tokenRequest(clientId: string, audience: string, scope: string, t: PerToken): Promise<string> {
    const secret = CLIENTS[clientId];
    if (secret === undefined) throw new Error(`unknown client ${clientId}`);
    const res = await fetch(`${issuer}/token`, {
      method: 'POST',
      headers: { authorization: basic(clientId, secret), 'x-test-idp': JSON.stringify(t) },
      body: new URLSearchParams({ grant_type: 'client_credentials', resource: audience, scope }),
      signal: AbortSignal.timeout(5000),
    });
    const body = await res.json() as { access_token?: string; error?: string; error_description?: string };
    if (!res.ok || !body.access_token) throw new Error(`token endpoint ${res.status}: ${body.error}: ${body.error_description}`);
    return body.access_token;
  }

  return {
    issuer,
    port,
    hits,
    jwksUrl: `${issuer}/jwks`,
    tokenUrl: `${issuer}/token`,
    introspection: { url: `${issuer}/token/introspection`, clientId: 'gateway', clientSecret: CLIENTS.gateway! },
    jwt: ({ audience = DEFAULT_AUDIENCE, scope = 'read', clientId = 'svc-a', ttlSeconds, alg = defaultAlg } = {}) => {
      if (!algs.includes(alg)) return Promise.reject(new Error(`IdP started without ${alg} key`));
      return tokenRequest(clientId, audience, scope, { format: 'jwt', alg, ttl: ttlSeconds });
    },
    opaque: ({ audience = DEFAULT_AUDIENCE, scope = 'read', clientId = 'svc-a', ttlSeconds } = {}) =>
      tokenRequest(clientId, audience, scope, { format: 'opaque', ttl: ttlSeconds }),
    async revoke(token) {
      const res = await fetch(`${issuer}/token/revocation`, {
        method: 'POST',
        headers: { authorization: basic('gateway', CLIENTS.gateway!) },
        body: new URLSearchParams({ token }),
        signal: AbortSignal.timeout(5000),
      });
      if (!res.ok) throw new Error(`revocation endpoint ${res.status}: ${await res.text()}`);
    },
    async rotateKeys({ dropOld = false, alg = defaultAlg } = {}) {
      if (!algs.includes(alg)) throw new Error(`IdP started without ${alg} key`);
      const key = await newKey(alg);
      keys = [key, ...keys.filter((k) => !(dropOld && k.alg === alg))];
      makeProvider();
      return { kid: key.kid! };
    },
    async down(how = 'refuse') {
      if (mode === 'closed') throw new Error('IdP closed');
      mode = how;
      if (how === 'refuse') await stop();
      else if (!server.listening) await listen(port);
      if (how !== 'hang') dropConnections();
    },
    async up() {
      if (mode === 'closed') throw new Error('IdP closed');
      mode = 'up';
      for (const res of held) res.socket?.destroy();
      held.clear();
      if (!server.listening) await listen(port);
    },
    signingKeys: () => ({
      private: keys.map((k) => structuredClone(k)),
      public: keys.map(publicPart),
      current: Object.fromEntries(algs.map((a) => [a, structuredClone(keys.find((k) => k.alg === a)!)])),
    }),
    async close() {
      mode = 'closed';
      dropConnections();
      await stop();
    },
  };
}
