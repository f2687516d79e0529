/**
 * The admin API's errors: an ApiError carries a problem code from the catalogue
 * (src/core/problem.ts), a detail for the client, extra problem members (a validation's
 * `errors`) and response headers (Allow, WWW-Authenticate, Retry-After).
 */
import type { ProblemCode } from '../core/problem.js';

export interface FieldError {
  /** The field in API terms: `paths[0]` inside the item written, `routes/orders-api.paths[0]` elsewhere. */
  path: string;
  message: string;
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

/** 400 validation-failed listing the fields. */
export function invalid(errors: FieldError[], detail?: string): ApiError {
  const first = errors[0];
  return new ApiError(
    'validation-failed',
    detail ?? (first ? `${first.path === '(root)' ? '' : `${first.path}: `}${first.message}${errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''}` : 'the request is not valid'),
    { errors },
  );
}
