/** The per-request object plugins work on (see RequestCtx in types.ts). */
import type { IncomingMessage } from 'node:http';
import type { Consumer, RequestCtx } from './types.js';
import { ProblemError } from '../core/problem.js';
import type { RouteStats } from '../observability/metrics.js';
import { readWholeBody, type BodySource } from '../server/body.js';
import { withoutQueryParam } from '../core/query.js';

const NO_PARAMS: Readonly<Record<string, string>> = Object.freeze({});

export class PluginCtx implements RequestCtx {
  consumer: Consumer | null = null;
  identity: string | null = null;
  credential: string | null = null;
  credentialParam: string | null = null;
  credentialHeader: string | null = null;
  scopes: readonly string[] | null = null;
  claims: Readonly<Record<string, unknown>> | null = null;
  anonymous = false;
  challenge: string | null = null;
  vars: Record<string, unknown> = {};
  /** The query string sent upstream (plugins may remove parameters). */
  upstreamQuery: string;
  upstreamMethod: string;
  upstreamPath: string;
  /** The body sent upstream when a plugin read or replaced it (null: the client's streams through). */
  upstreamBody: Buffer | null = null;
  /** Bytes of the client's body read by readBody (for the access log). */
  bodyBytesRead = 0;
  /** Where readBody reads from (set by the request path). */
  bodySource: BodySource | null = null;
  private bodyRead: Promise<Buffer> | null = null;
  /** Set by limitBody (the smallest wins). */
  bodyLimit: number | null = null;
  /** Added to the client's response (name, value, ...). */
  responseHeaders: string[] = [];
  /** The route's metrics (null: metrics off). */
  stats: RouteStats | null = null;
  /** Starts a span for a phase that waits (null: the request is not traced). */
  trace: ((plugin: string, phase: string) => (error?: unknown) => void) | null = null;

  constructor(
    readonly req: IncomingMessage,
    readonly requestId: string,
    readonly method: string,
    readonly path: string,
    readonly query: string,
    readonly host: string,
    readonly clientIp: string,
    readonly route: { readonly name: string },
    readonly service: { readonly name: string },
    /** The upstream header list (name, value, ...), ending with the `host` pair. */
    private readonly headers: string[],
    readonly preflight: boolean,
    upstreamPath: string = path,
    readonly params: Readonly<Record<string, string>> = NO_PARAMS,
  ) {
    this.upstreamQuery = query;
    this.upstreamMethod = method;
    this.upstreamPath = upstreamPath;
  }

  readBody(maxBytes: number): Promise<Buffer> {
    if (this.upstreamBody !== null) {
      const b = this.upstreamBody;
      // (read before by a plugin with a larger cap, or set: this reader's cap holds all the same)
      if (b.length > maxBytes) return Promise.reject(new ProblemError('payload-too-large', `the request body is larger than ${maxBytes} bytes`));
      return Promise.resolve(b);
    }
    if (this.bodyRead === null) {
      const src = this.bodySource ?? { hasBody: false, declared: -1, begin() {} };
      // A size limit set earlier (request-size-limit) holds for a read body too.
      this.bodyRead = readWholeBody(this.req, src, this.bodyLimit === null ? maxBytes : Math.min(maxBytes, this.bodyLimit)).then((b) => {
        this.bodyBytesRead = b.length;
        this.upstreamBody ??= b;
        return b;
      });
      return this.bodyRead;
    }
    // Read before under another cap: the smaller cap still holds.
    return this.bodyRead.then((b) => {
      if (b.length > maxBytes) throw new ProblemError('payload-too-large', `the request body is larger than ${maxBytes} bytes`);
      return this.upstreamBody ?? b;
    });
  }

  setUpstreamBody(body: Buffer | string): void {
    this.upstreamBody = typeof body === 'string' ? Buffer.from(body) : body;
  }

  header(name: string): string | undefined {
    // (req.headers is a plain object: `constructor` and friends are not fields)
    const h = this.req.headers;
    // (an HTTP/2 client names the host in :authority and may send no Host field)
    if (!Object.hasOwn(h, name)) return name === 'host' ? (h[':authority'] as string | undefined) : undefined;
    const v = h[name];
    return Array.isArray(v) ? v.join(', ') : v;
  }

  upstreamHeaderList(): string[] {
    // The last pair (host) is the forwarder's.
    return this.headers.slice(0, -2);
  }

  removeUpstreamHeader(name: string): void {
    const h = this.headers;
    // The last pair (host) is the forwarder's.
    for (let i = h.length - 4; i >= 0; i -= 2) if (h[i]!.toLowerCase() === name) h.splice(i, 2);
  }

  setUpstreamHeader(name: string, value: string): void {
    this.removeUpstreamHeader(name);
    this.headers.splice(this.headers.length - 2, 0, name, value);
  }

  appendUpstreamHeader(name: string, value: string): void {
    this.headers.splice(this.headers.length - 2, 0, name, value);
  }

  editUpstreamHeaders(edit: (list: string[]) => void): void {
    const h = this.headers;
    // The last pair (host) is the forwarder's: edited on a copy without it.
    const list = h.slice(0, -2);
    edit(list);
    h.splice(0, h.length - 2, ...list);
  }

  addResponseHeader(name: string, value: string): void {
    this.responseHeaders.push(name, value);
  }

  limited(plugin: string, allowed: boolean): void {
    this.stats?.limit(plugin, allowed);
  }

  limitBody(maxBytes: number): void {
    this.bodyLimit = this.bodyLimit === null ? maxBytes : Math.min(this.bodyLimit, maxBytes);
  }

  removeUpstreamQueryParam(name: string): void {
    // Only the named parameter goes; the others keep their exact bytes.
    if (this.upstreamQuery !== '') this.upstreamQuery = withoutQueryParam(this.upstreamQuery, name);
  }
}
