/**
 * Whole responses: the `response` plugin phase over a response held in memory (an upstream's
 * that a plugin asked to buffer, a composition's, or a problem the gateway made while such
 * plugins are bound), then the `encodeResponse` phase and the write. Streaming responses use
 * the same encoder step (pickEncoder) from src/upstream/forward.ts.
 */
import type { ServerResponse, IncomingMessage } from 'node:http';
import type { Transform } from 'node:stream';
import { PROBLEMS, ProblemError, markAnswered, problemBody, type ProblemCode } from '../core/problem.js';
import type { Logger } from '../core/log.js';
import type { Chain } from '../plugins/pipeline.js';
import { HEADERS_ONLY, type BufferedResponse, type RequestCtx } from '../plugins/types.js';
import type { Exchange } from '../observability/exchange.js';

/** The plugins that see a request's response. */
export interface ResponsePlugins {
  ctx: RequestCtx;
  chain: Chain;
  log?: Logger;
  /** Headers plugins added for the client (rate-limit state...). */
  extraHeaders?: string[];
}

export interface DeliverOptions {
  requestId: string;
  /** Add Connection: close (HTTP/1.1 while draining, or after a request whose body was not read). */
  close: boolean;
  exchange: Exchange | null;
}

/** A problem from the catalogue as a whole response. */
export function problemResponse(code: ProblemCode, detail: string, requestId: string, extra?: Record<string, unknown>, headers: Record<string, string | string[]> = {}): BufferedResponse {
  const list = ['content-type', 'application/problem+json', 'cache-control', 'no-store'];
  for (const [k, v] of Object.entries(headers)) for (const one of Array.isArray(v) ? v : [v]) list.push(k, one);
  return { status: PROBLEMS[code].status, headers: list, body: Buffer.from(problemBody(code, detail, requestId, extra)), origin: 'gateway', error: code };
}

/** Index of the first field `name` (lower-case) in a flat list, or -1. */
export function findHeader(list: readonly string[], name: string): number {
  for (let i = 0; i < list.length; i += 2) if (list[i]!.toLowerCase() === name) return i;
  return -1;
}

/** Removes every field `name` (lower-case) from a flat list. */
export function removeHeader(list: string[], name: string): void {
  for (let i = list.length - 2; i >= 0; i -= 2) if (list[i]!.toLowerCase() === name) list.splice(i, 2);
}

/** The first encoder a plugin offers for this response (it may edit the headers), or null. */
export function pickEncoder(pl: ResponsePlugins | null, status: number, headers: string[], method: string): Transform | null {
  // (a 205 has no content either, RFC 9110 §15.3.6: nothing to encode, whatever its framing)
  if (pl === null || pl.chain.encodeResponse.length === 0 || status === 204 || status === 205 || status < 200) return null;
  // A HEAD answer carries the fields the GET's would (RFC 9110 §9.3.2: Content-Encoding, Vary,
  // the weak ETag, no Content-Length), with no body to encode; a 304 the ETag and Vary its 200
  // would (§15.4.5: the encoders see it and edit its fields, nothing is encoded).
  if (status === 304) {
    for (const b of pl.chain.encodeResponse) {
      try {
        const t = b.inst.encodeResponse!(pl.ctx, status, headers);
        if (t !== null && t !== HEADERS_ONLY) t.destroy();
      } catch (err) {
        pl.log?.error({ err, plugin: b.name, request_id: pl.ctx.requestId }, 'plugin failed in the encodeResponse phase');
      }
    }
    return null;
  }
  const head = method === 'HEAD';
  for (const b of pl.chain.encodeResponse) {
    let t: Transform | typeof HEADERS_ONLY | null = null;
    try {
      t = b.inst.encodeResponse!(pl.ctx, status, headers);
    } catch (err) {
      pl.log?.error({ err, plugin: b.name, request_id: pl.ctx.requestId }, 'plugin failed in the encodeResponse phase');
    }
    if (t !== null) {
      removeHeader(headers, 'content-length');
      if (t === HEADERS_ONLY) return null;
      if (head) {
        t.destroy();
        return null;
      }
      return t;
    }
  }
  return null;
}

/**
 * Runs the response phase over `r`, then sends it. A ProblemError from a plugin answers that
 * problem instead; any other failure a 500. Resolves once written (or the client left).
 */
export async function deliver(req: IncomingMessage, res: ServerResponse, r: BufferedResponse, pl: ResponsePlugins | null, o: DeliverOptions): Promise<void> {
  if (pl !== null) {
    for (const b of pl.chain.response) {
      try {
        await b.inst.response!(pl.ctx, r);
      } catch (err) {
        if (err instanceof ProblemError) r = problemResponse(err.code, err.detail, o.requestId, err.extra, err.headers);
        else {
          pl.log?.error({ err, plugin: b.name, request_id: o.requestId }, 'plugin failed in the response phase');
          r = problemResponse('internal-error', `plugin ${b.name} failed`, o.requestId);
        }
        break;
      }
      if (res.destroyed) return;
    }
  }
  if (res.destroyed || res.headersSent) return;
  write(req, res, r, pl, o);
}

/** Writes a whole response (no plugin phase): framing fields set from the body. */
export function write(req: IncomingMessage, res: ServerResponse, r: BufferedResponse, pl: ResponsePlugins | null, o: DeliverOptions): void {
  const head = req.method === 'HEAD';
  const h = r.headers;
  removeHeader(h, 'transfer-encoding');
  removeHeader(h, 'connection');
  removeHeader(h, 'trailer'); // (a whole body goes with a Content-Length: no trailers to announce)
  const noContent = r.status === 204 || r.status === 304 || r.status < 200;
  // HEAD: the upstream's Content-Length describes the GET body; it stays as it came.
  if (!head) {
    removeHeader(h, 'content-length');
    if (!noContent) h.push('content-length', String(r.body.length));
  }
  if (findHeader(h, 'x-request-id') === -1) h.push('x-request-id', o.requestId);
  if (o.close && (req.httpVersionMajor ?? 1) === 1) h.push('connection', 'close');
  if (r.origin === 'gateway') markAnswered(res, (r.error as ProblemCode | undefined) ?? null, o.requestId, head || noContent ? 0 : r.body.length);
  const body = head || noContent ? null : r.body;
  // (a HEAD's fields are edited as the GET's would be: Content-Encoding, Vary, the weak ETag)
  const enc = noContent && r.status !== 304 ? null : pickEncoder(pl, r.status, h, req.method ?? 'GET');
  if (o.exchange !== null && body !== null && enc === null) o.exchange.bytesOut = body.length;
  try {
    res.writeHead(r.status, h);
  } catch {
    // A status or field a plugin or upstream made that node refuses: not valid HTTP. Every field
    // set before the refusal goes (over HTTP/2 writeHead sets them one by one, and a repeated
    // Location left behind made this 502 throw too, out of an async chain: the process gone).
    const p = problemResponse('invalid-upstream-response', 'the response cannot be forwarded', o.requestId);
    for (const name of res.getHeaderNames()) res.removeHeader(name);
    res.statusMessage = ''; // (the refused head's reason phrase would go out with the 502)
    markAnswered(res, 'invalid-upstream-response', o.requestId, p.body.length);
    res.writeHead(p.status, [...p.headers, 'content-length', String(p.body.length), 'x-request-id', o.requestId]);
    res.end(head ? undefined : p.body);
    return;
  }
  if (enc !== null) {
    enc.on('error', (err) => res.destroy(err));
    enc.pipe(res);
    // (what is sent is what comes out of the encoder: counted there, after the pipe took it)
    const ex = o.exchange;
    if (ex !== null) {
      ex.bytesOut = 0;
      enc.on('data', (c: Buffer) => { ex.bytesOut += c.length; });
    }
    enc.end(body);
  } else res.end(body ?? undefined);
}
