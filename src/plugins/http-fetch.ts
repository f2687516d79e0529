/** Small JSON fetches to identity providers (discovery, JWKS, introspection): bounded in time and size. */
import { request } from 'undici';

export interface FetchJsonOptions {
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  body?: string;
  timeoutMs?: number;
  maxBytes?: number;
}

/** Throws on no answer (refused, reset, timeout); an answer too large or not JSON throws an Error with its `status`. */
export async function fetchJson(url: string, o: FetchJsonOptions = {}): Promise<{ status: number; json: unknown }> {
  const timeout = o.timeoutMs ?? 5000;
  // A timer cleared when the call ends (AbortSignal.timeout's lives on for the whole timeout
  // after the answer: one per introspection call, 30 s each with a long timeout).
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new DOMException('The operation was aborted due to timeout', 'TimeoutError')), timeout);
  timer.unref();
  try {
    return await call(url, o, timeout, ac.signal);
  } finally {
    clearTimeout(timer);
  }
}

async function call(url: string, o: FetchJsonOptions, timeout: number, signal: AbortSignal): Promise<{ status: number; json: unknown }> {
  const res = await request(url, {
    method: o.method ?? 'GET',
    headers: { accept: 'application/json', ...o.headers },
    body: o.body,
    headersTimeout: timeout,
    bodyTimeout: timeout,
    signal,
  });
  const max = o.maxBytes ?? 1024 * 1024;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of res.body) {
    size += (c as Buffer).length;
    if (size > max) {
      res.body.destroy();
      throw Object.assign(new Error(`response from ${new URL(url).origin} is larger than ${max} bytes`), { status: res.statusCode });
    }
    chunks.push(c as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    throw Object.assign(new Error(`response from ${new URL(url).origin} is not JSON (status ${res.statusCode})`), { status: res.statusCode });
  }
  return { status: res.statusCode, json };
}
