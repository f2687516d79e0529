/**
 * Who is calling: `Authorization: Bearer <token>` against the admin tokens (admin.token and
 * admin.tokens), compared in constant time (both sides hashed to the same length first; every
 * token is compared, so the time does not depend on which one matched). With no token
 * configured the admin listener is loopback-only and every caller is the anonymous admin.
 * Roles: `admin` may do everything, `read-only` may only read (GET / HEAD / OPTIONS).
 *
 * Guessing is throttled: one AuthFailures per admin listener counts wrong tokens per client
 * network (the IPv4 address, the IPv6 /64; behind a trusted proxy, the client it names) for the bearer token on /api/, /metrics... and the
 * console's sign-in alike. An attempt is counted before it is checked (so concurrent attempts
 * all count) and taken back when the token is right (a client with a good token never adds
 * up); past the limit, every attempt from that network is 429 with Retry-After until the
 * window ends, without the token being looked at.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { LRUCache } from 'lru-cache';
import { ApiError } from './errors.js';
import { ipNetwork } from '../core/forwarded.js';

export type Role = 'admin' | 'read-only';

export interface ApiToken {
  token: string;
  role: Role;
  name: string;
}

export interface Caller {
  name: string;
  role: Role;
}

const CHALLENGE = 'Bearer realm="turnpike-admin"';

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/** Wrong admin tokens per client network: at most `max` per `windowMs`; the least recently seen of `cap` networks go first. */
export class AuthFailures {
  private readonly hits: LRUCache<string, { n: number; until: number }>;
  /**
   * The client a request counts for: its peer, or — the gateway sets this — the address a
   * trusted proxy names (behind an ingress every admin would share the proxy's address, and ten
   * wrong tokens from anyone would lock them all out).
   */
  clientOf: (req: IncomingMessage) => string = (req) => req.socket.remoteAddress ?? '';

  constructor(readonly max = 10, readonly windowMs = 60_000, cap = 10_000, private readonly now: () => number = Date.now) {
    this.hits = new LRUCache({ max: cap });
  }

  /**
   * Counts one attempt from `ip` (call it before anything is awaited); throws 429 (with
   * Retry-After: the seconds left in the window) when that network is over the limit.
   * Give a right token back with refund().
   */
  take(ip: string): void {
    const key = ipNetwork(ip);
    const t = this.now();
    let h = this.hits.get(key);
    if (!h || h.until <= t) this.hits.set(key, (h = { n: 0, until: t + this.windowMs }));
    if (h.n >= this.max) {
      const wait = Math.max(1, Math.ceil((h.until - t) / 1000));
      throw new ApiError('too-many-requests', `too many wrong admin tokens from this address: try again in ${wait} s`, undefined, { 'retry-after': String(wait) });
    }
    h.n++;
  }

  /** Takes one attempt back (the token was right). */
  refund(ip: string): void {
    const h = this.hits.get(ipNetwork(ip));
    if (h && h.n > 0) h.n--;
  }
}

/**
 * A request's Authorization, or throws 400 when it is given more than once: it is not a list
 * (RFC 9110 §5.3, §11.6.2), node:http would keep the first and drop the rest, and which of two
 * credentials a client (or a proxy that added one) meant is not ours to guess.
 */
export function authorizationOf(req: IncomingMessage): string | undefined {
  const given = req.headers.authorization;
  if (given !== undefined && (req.headersDistinct?.['authorization']?.length ?? 1) > 1) {
    throw new ApiError('bad-request', 'the Authorization header is given more than once: send one', undefined, { 'www-authenticate': `${CHALLENGE}, error="invalid_request"` });
  }
  return given;
}

/**
 * The caller, or throws 401 (no or unknown token). With `guard`, a presented token is an
 * attempt of that client (429 past the limit; see AuthFailures); no token at all is not.
 */
export function authenticate(authorization: string | undefined, tokens: readonly ApiToken[], guard?: { failures: AuthFailures; ip: string }): Caller {
  if (tokens.length === 0) return { name: 'anonymous', role: 'admin' };
  if (authorization === undefined || authorization === '') {
    throw new ApiError('unauthorized', 'the admin API needs Authorization: Bearer <admin token>', undefined, { 'www-authenticate': CHALLENGE });
  }
  if (!guard) return check(authorization, tokens);
  guard.failures.take(guard.ip);
  const caller = check(authorization, tokens);
  guard.failures.refund(guard.ip);
  return caller;
}

function check(authorization: string, tokens: readonly ApiToken[]): Caller {
  const m = /^Bearer[ \t]+([\x21-\x7e]+)[ \t]*$/i.exec(authorization);
  if (!m) {
    // RFC 6750 §3.1: Bearer without one token is a malformed request (400 invalid_request);
    // another scheme is no credentials for this realm (401, a challenge without an error code).
    if (/^Bearer(?:[ \t]|$)/i.test(authorization)) {
      throw new ApiError('bad-request', 'the Authorization header must be "Bearer <admin token>": one token', undefined, { 'www-authenticate': `${CHALLENGE}, error="invalid_request"` });
    }
    throw new ApiError('unauthorized', 'the admin API takes Authorization: Bearer <admin token>', undefined, { 'www-authenticate': CHALLENGE });
  }
  const given = digest(m[1]!);
  let found: ApiToken | undefined;
  for (const t of tokens) {
    // no early exit: every token is compared
    if (timingSafeEqual(given, digest(t.token)) && found === undefined) found = t;
  }
  if (!found) {
    throw new ApiError('unauthorized', 'the bearer token is not an admin token', undefined, { 'www-authenticate': `${CHALLENGE}, error="invalid_token"` });
  }
  return { name: found.name, role: found.role };
}

const READS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** Throws 403 when the caller's role may not use `method`. */
export function authorize(caller: Caller, method: string): void {
  if (caller.role === 'admin' || READS.has(method)) return;
  throw new ApiError('forbidden', `the token "${caller.name}" is read-only: it may only read (GET)`);
}
