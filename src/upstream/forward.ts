/**
 * Forwarding one request to an upstream target with undici's dispatch API: bodies streamed
 * both ways with backpressure, 1xx forwarded, trailers passed on, upstream failures mapped to
 * problem+json before the response starts and to a cut connection after it started.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { HOP_BY_HOP, connectionTokens } from '../core/headers.js';
import { sendProblem } from '../core/problem.js';
import type { CompiledService, Target } from '../config/compile.js';

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);
const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND', 'UND_ERR_CONNECT_TIMEOUT']);

export interface ForwardRequest {
  req: IncomingMessage;
  res: ServerResponse;
  service: CompiledService;
  method: string;
  /** Path + query to send upstream, minus the target's base path. */
  path: string;
  /** Request headers, ending with a `host` pair whose value is set per target. */
  headers: string[];
  /** Client's Host, when the route preserves it. */
  preservedHost: string | null;
  hasBody: boolean;
  requestId: string;
  via: string;
  closeAfter: boolean;
}

/** `/v1` + `/` -> `/v1`, `/v1` + `/?a` -> `/v1?a`, `/v1` + `/x` -> `/v1/x`. */
function joinBase(base: string, path: string): string {
  return path === '/' || path.startsWith('/?') ? base + path.slice(1) : base + path;
}

function latin1(b: Buffer | string): string {
  return typeof b === 'string' ? b : b.toString('latin1');
}

export class ForwardHandler implements Dispatcher.DispatchHandler {
  private abortFn: ((err?: Error) => void) | null = null;
  private resumeFn: (() => void) | null = null;
  private onDrain: (() => void) | undefined;
  private stall: NodeJS.Timeout | undefined;
  private attempts = 0;
  private finished = false;
  private target: Target;

  constructor(private readonly f: ForwardRequest) {
    this.target = f.service.pick();
  }

  /** The client connection closed (or the response finished): stop the upstream exchange if it still runs. */
  clientClosed(): void {
    clearTimeout(this.stall);
    if (!this.finished) {
      this.finished = true;
      this.abortFn?.(new Error('client closed the connection'));
    }
  }

  start(): void {
    const f = this.f;
    const t = this.target;
    // The last pair of f.headers is reserved for Host, which depends on the target.
    const headers = f.headers;
    headers[headers.length - 1] = f.preservedHost ?? t.hostHeader;
    this.attempts++;
    t.pool.dispatch(
      {
        path: t.basePath === '' ? f.path : joinBase(t.basePath, f.path),
        method: f.method,
        headers,
        body: f.hasBody ? f.req : null,
        headersTimeout: f.service.timeouts.response,
        bodyTimeout: f.service.timeouts.read,
      },
      this,
    );
  }

  onConnect(abort: (err?: Error) => void): void {
    if (this.finished) abort(new Error('client closed the connection'));
    else this.abortFn = abort;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    const res = this.f.res;
    if (this.finished) return false;
    if (statusCode < 200) {
      // 100 never reaches here (undici refuses it); forward 102/103 and friends.
      // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client.
      if (this.f.req.httpVersionMinor === 0) return true;
      if (statusCode === 103) {
        const hints: Record<string, string | string[]> = {};
        for (let i = 0; i < rawHeaders.length; i += 2) {
          const k = latin1(rawHeaders[i]!).toLowerCase();
          if (HOP_BY_HOP.has(k)) continue;
          const v = latin1(rawHeaders[i + 1]!);
          const prev = hints[k];
          hints[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
        }
        if (hints['link']) res.writeEarlyHints(hints as { link: string | string[] });
      } else if (statusCode === 102) res.writeProcessing();
      return true;
    }
    this.resumeFn = resume;
    const out: string[] = [];
    let upstreamVia: string | undefined;
    let connection: string | undefined;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = latin1(rawHeaders[i]!);
      const value = latin1(rawHeaders[i + 1]!);
      switch (name.length < 20 ? name.toLowerCase() : '') {
        case 'connection': connection = connection === undefined ? value : `${connection}, ${value}`; continue;
        case 'keep-alive': case 'proxy-connection': case 'te': case 'transfer-encoding': case 'upgrade':
        case 'http2-settings': case 'x-request-id':
          continue;
        case 'via': upstreamVia = upstreamVia === undefined ? value : `${upstreamVia}, ${value}`; continue;
        default: out.push(name, value);
      }
    }
    // Fields named in the upstream's Connection header are connection-specific too.
    const nominated = connectionTokens(connection);
    if (nominated !== null) {
      for (let i = out.length - 2; i >= 0; i -= 2) if (nominated.has(out[i]!.toLowerCase())) out.splice(i, 2);
    }
    out.push('via', upstreamVia === undefined ? this.f.via : `${upstreamVia}, ${this.f.via}`, 'x-request-id', this.f.requestId);
    if (this.f.closeAfter) out.push('connection', 'close');
    try {
      res.writeHead(statusCode, out);
    } catch (err) {
      // A status or header value Node refuses to send: the upstream's answer is not valid HTTP.
      this.finished = true;
      this.abortFn?.(err as Error);
      res.removeHeader('content-length');
      sendProblem(res, 'bad-gateway', 'the upstream sent a response that cannot be forwarded', this.f.requestId);
      return false;
    }
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.finished) return false;
    const ok = this.f.res.write(chunk);
    if (!ok) {
      // A client that stops reading must not hold the exchange forever (undici's body timeout
      // is suspended while we keep it paused): the read timeout applies to the client too.
      this.onDrain ??= () => {
        clearTimeout(this.stall);
        this.resumeFn?.();
      };
      this.f.res.once('drain', this.onDrain);
      this.stall = setTimeout(() => {
        if (!this.finished) this.f.res.destroy(new Error('client stopped reading'));
      }, this.f.service.timeouts.read);
    }
    return ok;
  }

  onComplete(trailers: Buffer[] | string[] | null): void {
    if (this.finished) return;
    this.finished = true;
    const res = this.f.res;
    if (trailers && trailers.length) {
      const t: [string, string][] = [];
      for (let i = 0; i < trailers.length; i += 2) {
        const k = latin1(trailers[i]!);
        if (!HOP_BY_HOP.has(k.toLowerCase())) t.push([k, latin1(trailers[i + 1]!)]);
      }
      try {
        res.addTrailers(t);
      } catch {
        /* invalid trailer from upstream: drop it */
      }
    }
    res.end();
  }

  onError(err: Error): void {
    if (this.finished) return;
    const f = this.f;
    const code = (err as { code?: string }).code ?? '';
    if (!f.res.headersSent) {
      if (
        CONNECT_FAILURES.has(code) && this.attempts <= f.service.retries && !f.hasBody && IDEMPOTENT.has(f.method)
      ) {
        this.target = f.service.targets.length > 1 ? f.service.pick() : this.target;
        this.abortFn = null;
        this.start();
        return;
      }
      this.finished = true;
      const [problem, detail] = describeUpstreamError(code, err, f.service);
      if (problem === 'bad-request') sendProblem(f.res, 'bad-request', detail, f.requestId, { close: true });
      else sendProblem(f.res, problem, detail, f.requestId, { close: f.closeAfter });
      return;
    }
    // The response already started: end it as broken, never as complete.
    this.finished = true;
    f.res.destroy(err);
  }
}

function describeUpstreamError(code: string, err: Error, service: CompiledService): ['bad-gateway' | 'gateway-timeout' | 'bad-request', string] {
  switch (code) {
    case 'UND_ERR_HEADERS_TIMEOUT':
      return ['gateway-timeout', `service "${service.name}" did not answer within ${service.timeouts.response} ms`];
    case 'UND_ERR_CONNECT_TIMEOUT':
      return ['gateway-timeout', `could not connect to service "${service.name}" within ${service.timeouts.connect} ms`];
    case 'ECONNREFUSED':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return ['bad-gateway', `service "${service.name}" is unreachable (${code})`];
    case 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH':
      return ['bad-request', 'the request body does not match its Content-Length'];
    default:
      if (code.startsWith('HPE_') || err.name === 'HTTPParserError') {
        return ['bad-gateway', `service "${service.name}" sent an invalid HTTP response`];
      }
      return ['bad-gateway', `service "${service.name}" failed: ${code || 'connection error'}`];
  }
}
