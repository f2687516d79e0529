/**
 * Fetch wrapper for the console: same-origin credentials (the httpOnly session cookie), the
 * session's CSRF token on every change (kept in memory only), problem+json errors as ApiError.
 */
import { DASH } from './format.js';

export interface FieldError {
  path: string;
  message: string;
}

export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  errors?: FieldError[];
}

export class ApiError extends Error {
  constructor(readonly status: number, readonly problem: Problem, readonly headers: Headers) {
    super(problem.detail || problem.title || `HTTP ${status}`);
  }
}

export interface Answer<T> {
  status: number;
  body: T;
  headers: Headers;
}

export interface RequestOptions {
  body?: unknown;
  headers?: Record<string, string>;
  /** A 401 is this call's own answer (sign-in, session check): do not end the session. */
  own401?: boolean;
}

let csrf: string | null = null;
let unauthorized: (() => void) | null = null;

export function setCsrf(token: string | null): void {
  csrf = token;
}

/** Called when an API call answers 401: the session is gone. */
export function onUnauthorized(f: (() => void) | null): void {
  unauthorized = f;
}

export async function request<T = unknown>(method: string, url: string, opts: RequestOptions = {}): Promise<Answer<T>> {
  const headers: Record<string, string> = { accept: 'application/json, application/problem+json', ...opts.headers };
  if (method !== 'GET' && method !== 'HEAD' && csrf !== null) headers['x-csrf-token'] = csrf;
  let body: string | undefined;
  if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    if (!Object.keys(headers).some((k) => k.toLowerCase() === 'content-type')) headers['content-type'] = 'application/json';
  }
  let res: Response;
  try {
    res = await fetch(url, { method, headers, body, credentials: 'same-origin', cache: 'no-store' });
  } catch {
    throw new ApiError(0, { title: 'Network error', detail: 'The gateway could not be reached. Check that it is running and try again.' }, new Headers());
  }
  const text = await res.text();
  let parsed: unknown = null;
  if (text !== '') {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  if (!res.ok) {
    const problem: Problem = parsed !== null && typeof parsed === 'object'
      ? (parsed as Problem)
      : { title: res.statusText || `HTTP ${res.status}`, detail: typeof parsed === 'string' ? parsed.slice(0, 300) : undefined };
    if (res.status === 401 && !opts.own401) unauthorized?.();
    throw new ApiError(res.status, problem, res.headers);
  }
  return { status: res.status, body: parsed as T, headers: res.headers };
}

/** A message for any error thrown by request() (or anything else). */
export function describe(err: unknown): string {
  if (err instanceof ApiError) {
    const p = err.problem;
    if (p.detail && p.title && p.detail !== p.title) return `${p.title}: ${p.detail}`;
    return p.detail || p.title || `The request failed (HTTP ${err.status}).`;
  }
  return err instanceof Error ? err.message : String(err);
}

export interface SessionInfo {
  name: string;
  role: 'admin' | 'read-only' | string;
  csrf: string;
}

/** An If-Match header for `etag` (none without one). */
export const ifMatch = (etag: string | null): Record<string, string> => (etag ? { 'if-match': etag } : {});

/** The item's current ETag, read just before a change (so a concurrent change is a 412, not lost). */
export async function freshEtag(url: string): Promise<string | null> {
  return (await request('GET', url)).headers.get('etag');
}

/** "Configuration revision N." for a change's answer. */
export const revisionOf = (headers: Headers): string => `Configuration revision ${headers.get('x-config-revision') ?? DASH}.`;
