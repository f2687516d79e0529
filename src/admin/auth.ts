/**
 * Who is calling: `Authorization: Bearer <token>` against the admin tokens (admin.token and
 * admin.tokens), compared in constant time (both sides hashed to the same length first; every
 * token is compared, so the time does not depend on which one matched). With no token
 * configured the admin listener is loopback-only and every caller is the anonymous admin.
 * Roles: `admin` may do everything, `read-only` may only read (GET / HEAD / OPTIONS).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { ApiError } from './errors.js';

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

/** The caller, or throws 401 (no or unknown token). */
export function authenticate(authorization: string | undefined, tokens: readonly ApiToken[]): Caller {
  if (tokens.length === 0) return { name: 'anonymous', role: 'admin' };
  if (authorization === undefined || authorization === '') {
    throw new ApiError('unauthorized', 'the admin API needs Authorization: Bearer <admin token>', undefined, { 'www-authenticate': CHALLENGE });
  }
  const m = /^Bearer[ \t]+([\x21-\x7e]+)[ \t]*$/i.exec(authorization);
  if (!m) {
    throw new ApiError('unauthorized', 'the Authorization header must be "Bearer <admin token>"', undefined, { 'www-authenticate': `${CHALLENGE}, error="invalid_request"` });
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
