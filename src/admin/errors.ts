/**
 * The admin API's errors: an ApiError carries a problem code from the catalogue
 * (src/core/problem.ts), a detail for the client, extra problem members (a validation's
 * `errors`) and response headers (Allow, WWW-Authenticate, Retry-After).
 */
import type { ProblemCode } from '../core/problem.js';
import type { PathSegment } from '../config/errors.js';

export interface FieldError {
  /** The field in API terms: `paths[0]` inside the item written, `routes/orders-api.paths[0]` elsewhere. */
  path: string;
  message: string;
  /**
   * Where the field is in the request body, as RFC 9457 §3 does: a JSON Pointer (RFC 6901) in
   * its URI fragment form, `#/paths/0`. Absent for a field elsewhere in the config.
   */
  pointer?: string;
  /** The field's line in a YAML request body (PUT /api/config), as a config file's errors name it. */
  line?: number;
}

/** A path as a JSON Pointer in URI fragment form (RFC 6901 §3, §6): `#/routes/0/paths/1`. */
export function pointerOf(path: readonly PathSegment[]): string {
  return `#${path.map((s) => `/${encodeURIComponent(String(s).replace(/~/g, '~0').replace(/\//g, '~1')).replace(/%7E/gi, '~')}`).join('')}`;
}


export class ApiError extends Error {
  constructor(
    readonly code: ProblemCode,
    readonly detail: string,
    readonly extra?: Record<string, unknown>,
    readonly headers?: Record<string, string>,
  ) {
    super(detail);
    this.name = 'ApiError';
  }
}

export const notFound = (what: string): ApiError => new ApiError('not-found', `${what} does not exist`);
export const badRequest = (detail: string): ApiError => new ApiError('bad-request', detail);
export const conflict = (detail: string, extra?: Record<string, unknown>): ApiError => new ApiError('conflict', detail, extra);

/**
 * 400 validation-failed listing the fields. Paths are the body's (a field of the body written)
 * unless `bodyPaths` is false: then only the pointers the errors carry are given.
 */
export function invalid(given: FieldError[], detail?: string, bodyPaths = true): ApiError {
  const errors = bodyPaths ? given.map((e) => {
    if (e.pointer !== undefined) return e;
    const segs = parsePath(e.path);
    return segs === null ? e : { ...e, pointer: pointerOf(segs) };
  }) : given;
  const first = errors[0];
  return new ApiError(
    'validation-failed',
    detail ?? (first ? `${first.path === '(root)' ? '' : `${first.path}: `}${first.message}${errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''}` : 'the request is not valid'),
    { errors },
  );
}

/** Parses a formatted path (`services[0].routes[1]["a b"]`); null when it is not one. */
export function parsePath(text: string): PathSegment[] | null {
  if (text === '(root)' || text === '') return [];
  const out: PathSegment[] = [];
  const re = /(?:^|\.)([A-Za-z_$][A-Za-z0-9_$-]*)|\[([0-9]+)\]|\[("(?:[^"\\]|\\.)*")\]/y;
  let i = 0;
  while (i < text.length) {
    re.lastIndex = i;
    const m = re.exec(text);
    if (!m) return null;
    if (m[1] !== undefined) out.push(m[1]);
    else if (m[2] !== undefined) out.push(Number(m[2]));
    else {
      try {
        out.push(JSON.parse(m[3]!) as string);
      } catch {
        return null;
      }
    }
    i = re.lastIndex;
  }
  return out;
}
