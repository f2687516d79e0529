/** Helpers shared by the auth plugins. */
import { createHash, hash, timingSafeEqual } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import type { TLSSocket } from 'node:tls';
import type { AuthOutcome, Consumer, RequestCtx } from './types.js';

/** `anonymous` and `hide_credentials`, common to every auth plugin's config. */
export const AuthCommon = {
  anonymous: Type.Optional(Type.String({ minLength: 1, description: 'Consumer to use when authentication fails (routes open to unauthenticated callers); default: answer 401.' })),
  hide_credentials: Type.Optional(Type.Boolean({ default: false, description: 'Remove the credential from the request before it goes upstream.' })),
};

export const sha256 = (s: string | Buffer): Buffer => createHash('sha256').update(s).digest();
/** SHA-256 as base64, one shot (the cache key of a token). */
export const sha256b64 = (s: string): string => hash('sha256', s, 'base64');

/**
 * Scopes of a token's claims or an introspection answer: `scope` (space-separated: RFC 8693,
 * RFC 9068, RFC 7662) or `scp` (Entra ID, Okta), either as a string or a JSON array (as some
 * IdPs send them).
 */
export function scopesOf(p: Readonly<Record<string, unknown>>): string[] {
  const s = p['scope'] ?? p['scp'];
  if (typeof s === 'string') return s.split(' ').filter(Boolean);
  if (Array.isArray(s)) return s.filter((x): x is string => typeof x === 'string');
  return [];
}

/** Constant-time equality of two byte strings of any length. */
export function safeEqual(a: Buffer, b: Buffer): boolean {
  const ha = sha256(a);
  const hb = sha256(b);
  return timingSafeEqual(ha, hb) && a.length === b.length;
}

/**
 * A bounded cache with per-entry expiry: when full, the oldest entry goes (insertion order;
 * hits do not reorder, which keeps a hit to one Map lookup).
 */
export class TtlCache<V> {
  private readonly map = new Map<string, { value: V; until: number }>();
  constructor(private readonly max: number) {}

  get(key: string, now = Date.now()): V | undefined {
    const e = this.map.get(key);
    if (e === undefined) return undefined;
    if (e.until <= now) {
      this.map.delete(key);
      return undefined;
    }
    return e.value;
  }

  set(key: string, value: V, until: number): void {
    if (until <= Date.now()) return;
    this.map.delete(key);
    if (this.map.size >= this.max) this.map.delete(this.map.keys().next().value!);
    this.map.set(key, { value, until });
  }

  delete(key: string): void {
    this.map.delete(key);
  }

  get size(): number {
    return this.map.size;
  }

  clear(): void {
    this.map.clear();
  }
}

/**
 * The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1); null when the header
 * is absent or names another scheme; BAD_BEARER when it is Bearer without one well-formed token
 * (`Bearer`, `Bearer a b`, `Bearer ä`): a malformed request, 400 invalid_request (§3.1).
 */
export function bearerToken(header: string | undefined): string | null | typeof BAD_BEARER {
  if (header === undefined) return null;
  const m = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(header);
  if (m) return m[1]!;
  return /^Bearer(?:[ \t]|$)/i.test(header) ? BAD_BEARER : null;
}

export const BAD_BEARER = Symbol('malformed Bearer credentials');

/**
 * The outcome for BAD_BEARER: 400 with error="invalid_request" in the scheme's challenge.
 * `twoTokens`: a request that carries a token in two places (RFC 6750 §2: a client MUST NOT use
 * more than one method) is refused even where an `anonymous` consumer is set: going on as
 * anonymous would hand the upstream a token (a query parameter, a cookie) no check looked at.
 */
export function badBearer(realm: string, detail = 'the Authorization header is not "Bearer" and one token', twoTokens = false): AuthOutcome {
  const challenge = `${realm}, error="invalid_request"`;
  return twoTokens ? { ok: false, missing: false, status: 400, challenge, detail, anonymous: false } : { ok: false, missing: false, status: 400, challenge, detail };
}

/**
 * Whether a request's query (`?...`, or '') carries an `access_token` parameter (RFC 6750 §2.3):
 * beside a Bearer header that is two methods of sending a token, which RFC 6750 §2 forbids and
 * §3.1 answers with invalid_request (one token would be checked, and the upstream could read the
 * other one). Parsed only when the text could hold the name.
 */
export function queryHasAccessToken(query: string): boolean {
  return query.length > 1 && (query.includes('token') || query.includes('%'))
    && (new URLSearchParams(query.slice(1)).has('access_token') || (query.includes(';') && paramAfterSemicolon(query, 'access_token')));
}

/**
 * Whether a query (`?...`) has a parameter `name` after a `;` within an `&`-separated part:
 * one parameter here, two to a server that splits on `;` too (Rack < 3, Python's parse_qs
 * before 3.9.2), which reads a credential no check here saw.
 */
export function paramAfterSemicolon(query: string, name: string): boolean {
  for (const part of query.slice(1).split('&')) {
    const segs = part.split(';');
    for (let i = 1; i < segs.length; i++) {
      const seg = segs[i]!;
      const eq = seg.indexOf('=');
      let n = eq === -1 ? seg : seg.slice(0, eq);
      try {
        n = decodeURIComponent(n.replace(/\+/g, ' '));
      } catch {
        /* (a malformed escape: compared as written) */
      }
      if (n === name) return true;
    }
  }
  return false;
}

/** The outcome for a token in the Authorization header and the query: 400 invalid_request, also with `anonymous`. */
export const twoTokenMethods = (realm: string): AuthOutcome =>
  badBearer(realm, 'the access token was sent both in the Authorization header and as the access_token query parameter (RFC 6750 §2: one method per request)', true);

/**
 * prepareCredentials for a credential type named by a subject of an issuer (jwt,
 * oauth2-introspection): a subject is one consumer's for an issuer; one without issuer stands
 * for every issuer.
 */
export function subjectPerIssuer(list: { consumer: Consumer; credential: Record<string, unknown> }[]): { index: number; field?: string; message: string }[] {
  const seen = new Map<string, { issuer: string | undefined; consumer: string }[]>();
  const problems: { index: number; field?: string; message: string }[] = [];
  list.forEach(({ consumer, credential }, index) => {
    const subject = String(credential['subject']);
    const issuer = credential['issuer'] as string | undefined;
    const same = seen.get(subject) ?? [];
    const other = same.find((o) => o.issuer === undefined || issuer === undefined || o.issuer === issuer);
    if (other !== undefined) problems.push({ index, field: 'subject', message: `"${subject}"${other.issuer !== undefined && issuer !== undefined ? ` of issuer ${issuer}` : ''} is also consumer "${other.consumer}"'s` });
    else seen.set(subject, [...same, { issuer, consumer: consumer.name }]);
  });
  return problems;
}

/**
 * The consumer a token's subject names (jwt, oauth2-introspection): a credential with an issuer
 * matches that issuer's tokens only, one without matches any issuer's. `issuer`: the token's
 * (undefined when it says none).
 */
export function subjectIndex(list: readonly { consumer: Consumer; credential: Record<string, unknown> }[]): (subject: string, issuer: string | undefined) => Consumer | undefined {
  const subjects = new Map<string, Consumer>();
  const byIssuer = new Map<string, Map<string, Consumer>>();
  for (const { consumer, credential } of list) {
    const issuer = credential['issuer'];
    if (typeof issuer !== 'string') subjects.set(String(credential['subject']), consumer);
    else {
      let m = byIssuer.get(issuer);
      if (m === undefined) byIssuer.set(issuer, (m = new Map()));
      m.set(String(credential['subject']), consumer);
    }
  }
  return (subject, issuer) => (byIssuer.size > 0 && issuer !== undefined ? byIssuer.get(issuer)?.get(subject) : undefined) ?? subjects.get(subject);
}

/** prepareCredentials for a credential type named by one field: a value is one consumer's only. */
export function uniqueField(field: string) {
  return (list: { consumer: Consumer; credential: Record<string, unknown> }[]): { index: number; field?: string; message: string }[] => {
    const seen = new Map<string, string>();
    const problems: { index: number; field?: string; message: string }[] = [];
    list.forEach(({ consumer, credential }, index) => {
      const v = String(credential[field]);
      const other = seen.get(v);
      if (other !== undefined) problems.push({ index, field, message: `"${v}" is also consumer "${other}"'s` });
      else seen.set(v, consumer.name);
    });
    return problems;
  };
}

/**
 * Why a sender-constrained access token (its `cnf` claim or introspection member, RFC 7800) does
 * not pass as a Bearer token on this request, or null when it does (no `cnf`, or bound to the
 * client certificate of this very TLS connection). A token bound to a DPoP key (RFC 9449 `jkt`)
 * or another proof-of-possession key (`jwk`, `jwe`, `kid`) is not a bearer token: taken as one,
 * whoever stole it could use it (RFC 9449 §7.2: refused). One bound to a client certificate
 * (RFC 8705 §3: `x5t#S256`) passes only over a connection that presented that certificate.
 */
export function boundTokenProblem(cnf: unknown, ctx: RequestCtx): string | null {
  if (cnf === null || typeof cnf !== 'object') return null;
  const c = cnf as Record<string, unknown>;
  const x5t = c['x5t#S256'];
  if (x5t !== undefined) {
    const socket = ctx.req.socket as Partial<TLSSocket>;
    const raw = socket.encrypted === true ? socket.getPeerCertificate?.()?.raw : undefined;
    if (typeof x5t === 'string' && raw !== undefined && hash('sha256', raw, 'base64url') === x5t) return null;
    return 'the token is bound to a client certificate (RFC 8705) that this connection did not present';
  }
  if (c['jkt'] !== undefined || c['jwk'] !== undefined || c['jwe'] !== undefined || c['kid'] !== undefined) {
    return 'the token is bound to a proof-of-possession key (DPoP, RFC 9449): it cannot be used as a Bearer token';
  }
  return null;
}
