/**
 * RFC 9457 problem details for everything Turnpike answers itself. One catalogue of codes:
 * the `type` is `urn:turnpike:problem:<code>`, stable for clients to switch on.
 */
import type { ServerResponse } from 'node:http';
import { encodeGrpcMessage } from '../protocols/grpc-web.js';

export interface ProblemSpec {
  status: number;
  title: string;
}

export const PROBLEMS = {
  'bad-request': { status: 400, title: 'Bad Request' },
  'unauthorized': { status: 401, title: 'Unauthorized' },
  'forbidden': { status: 403, title: 'Forbidden' },
  'no-route': { status: 404, title: 'No Route Matched' },
  'method-not-allowed': { status: 405, title: 'Method Not Allowed' },
  'request-timeout': { status: 408, title: 'Request Timeout' },
  'expectation-failed': { status: 417, title: 'Expectation Failed' },
  'misdirected-request': { status: 421, title: 'Misdirected Request' },
  'validation-failed': { status: 400, title: 'Request Validation Failed' },
  'payload-too-large': { status: 413, title: 'Content Too Large' },
  'unsupported-media-type': { status: 415, title: 'Unsupported Media Type' },
  'uri-too-long': { status: 414, title: 'URI Too Long' },
  'upgrade-required': { status: 426, title: 'Upgrade Required' },
  'too-many-requests': { status: 429, title: 'Too Many Requests' },
  'headers-too-large': { status: 431, title: 'Request Header Fields Too Large' },
  'internal-error': { status: 500, title: 'Internal Server Error' },
  'not-implemented': { status: 501, title: 'Not Implemented' },
  'bad-gateway': { status: 502, title: 'Bad Gateway' },
  'upstream-response-too-large': { status: 502, title: 'Upstream Response Too Large' },
  'invalid-upstream-response': { status: 502, title: 'Invalid Upstream Response' },
  'step-failed': { status: 502, title: 'Composition Step Failed' },
  'no-healthy-target': { status: 503, title: 'No Healthy Upstream Target' },
  'circuit-open': { status: 503, title: 'Circuit Open' },
  'service-overloaded': { status: 503, title: 'Service Overloaded' },
  'shutting-down': { status: 503, title: 'Service Unavailable' },
  'auth-unavailable': { status: 503, title: 'Authentication Unavailable' },
  'gateway-timeout': { status: 504, title: 'Gateway Timeout' },
  'step-timeout': { status: 504, title: 'Composition Step Timed Out' },
  'http-version-not-supported': { status: 505, title: 'HTTP Version Not Supported' },
  // The admin API (src/admin/):
  'not-found': { status: 404, title: 'Not Found' },
  'not-acceptable': { status: 406, title: 'Not Acceptable' },
  'conflict': { status: 409, title: 'Conflict' },
  'read-only': { status: 409, title: 'Config Store Is Read-Only' },
  'precondition-failed': { status: 412, title: 'Precondition Failed' },
  'service-unavailable': { status: 503, title: 'Service Unavailable' },
} as const satisfies Record<string, ProblemSpec>;

export type ProblemCode = keyof typeof PROBLEMS;

/**
 * Thrown by a plugin (or the core) to answer the request with a problem from the catalogue
 * instead of a 500: e.g. a body over its cap (413), a body that is not JSON (400). `extra`
 * members join the problem object (validation errors list their violations there).
 */
export class ProblemError extends Error {
  constructor(
    readonly code: ProblemCode, readonly detail: string, readonly extra?: Record<string, unknown>,
    /** Response fields the answer carries (e.g. Accept-Encoding on a 415 for a content coding). */
    readonly headers?: Record<string, string>,
  ) {
    super(detail);
    this.name = 'ProblemError';
  }
}

const kAnswered = Symbol('turnpike.answered');
/** What the gateway answered itself on a response (for the access log and metrics). */
export interface Answered {
  code: ProblemCode | null; requestId: string; bytes: number; grpcStatus: number | null;
  /** Set when the answer went out on the raw socket, past the response object (a framing error). */
  status?: number;
}

export function markAnswered(res: ServerResponse, code: ProblemCode | null, requestId: string | undefined, bytes: number, grpcStatus: number | null = null): void {
  (res as ServerResponse & { [kAnswered]?: Answered })[kAnswered] = { code, requestId: requestId ?? '', bytes, grpcStatus };
}
/** The HTTP parser failed on the body of a request in flight, answered on its socket: its own log line says so. */
export function markRawAnswered(res: ServerResponse, code: ProblemCode, bytes: number): void {
  (res as ServerResponse & { [kAnswered]?: Answered })[kAnswered] = { code, requestId: '', bytes, grpcStatus: null, status: PROBLEMS[code].status };
}
export const answeredBy = (res: ServerResponse): Answered | undefined => (res as ServerResponse & { [kAnswered]?: Answered })[kAnswered];

/** Marks an HTTP/2 stream the gateway reset itself: gateway.ts's rapid-reset guard does not count it as the client's. */
export const GATEWAY_RESET = Symbol('turnpike.gatewayReset');
const H2_INTERNAL_ERROR = 0x2;

/**
 * Ends a response as broken, never as complete: over HTTP/1.1 the connection is cut; over HTTP/2
 * the stream is reset with `code` (INTERNAL_ERROR unless told), marked as the gateway's own (a
 * broken upstream's bodies must not count as resets of the client's and cost it its connection).
 */
export function resetResponse(res: ServerResponse, err?: Error, code = H2_INTERNAL_ERROR): void {
  const stream = (res as unknown as { stream?: { closed: boolean; destroyed: boolean; close(code: number): void; [GATEWAY_RESET]?: true } }).stream;
  if (stream === undefined) return void res.destroy(err);
  stream[GATEWAY_RESET] = true;
  if (code === H2_INTERNAL_ERROR || stream.closed || stream.destroyed) {
    // (node:http2 resets a stream destroyed with an error with INTERNAL_ERROR, and one destroyed
    // without with NO_ERROR, which node:http2 and undici clients read as the end of a whole body)
    res.destroy(err ?? new Error('response reset'));
    return;
  }
  // Only close() sends another code, and it ends the writable side first: the response would
  // read as finished (res.writableFinished), its access log line without `response-cut`.
  stream.close(code);
  Object.defineProperty(res, 'writableFinished', { value: false });
}

/** Whether a request or response is HTTP/2's (node:http2's compatibility objects carry their stream). */
export const isHttp2 = (m: object): boolean => (m as { stream?: unknown }).stream !== undefined;

export function problemBody(code: ProblemCode, detail: string, requestId?: string, extra?: Record<string, unknown>): string {
  const p = PROBLEMS[code];
  return JSON.stringify({
    type: `urn:turnpike:problem:${code}`,
    title: p.title,
    status: p.status,
    detail,
    ...(requestId ? { request_id: requestId } : {}),
    ...extra,
  });
}

/**
 * Sends a problem+json response unless headers already went out (then the connection is cut:
 * a client must never mistake a half response for a whole one).
 */
export function sendProblem(
  res: ServerResponse, code: ProblemCode, detail: string, requestId: string | undefined,
  opts: { close?: boolean; headers?: Record<string, string | string[]>; extra?: Record<string, unknown> } = {},
): void {
  if (res.headersSent || res.writableEnded) {
    resetResponse(res);
    return;
  }
  const req = res.req as { headers?: Record<string, string | string[] | undefined> } | undefined;
  // HTTP/2 has no Connection header (node:http2 refuses it); a stream just ends.
  const close = opts.close === true && !isHttp2(res);
  const ct = req?.headers?.['content-type'];
  // (media types are case-insensitive, RFC 9110 §8.3.1: Application/GRPC is gRPC too)
  if (typeof ct === 'string' && /^application\/grpc/i.test(ct)) {
    markAnswered(res, code, requestId, 0, grpcStatusOf(PROBLEMS[code].status));
    return sendGrpcError(res, PROBLEMS[code].status, detail, requestId, close, ct.toLowerCase(), opts.headers);
  }
  const body = problemBody(code, detail, requestId, opts.extra);
  const length = Buffer.byteLength(body);
  const head = res.req?.method === 'HEAD';
  markAnswered(res, code, requestId, head ? 0 : length);
  const headers: Record<string, string | string[] | number> = {
    'content-type': 'application/problem+json',
    'content-length': length,
    'cache-control': 'no-store',
    ...opts.headers,
  };
  if (requestId) headers['x-request-id'] = requestId;
  if (close) headers['connection'] = 'close';
  res.writeHead(PROBLEMS[code].status, headers);
  res.end(head ? undefined : body);
}

/** Methods a 405 the gateway answers before routing (CONNECT) lists in Allow. */
export const ALLOW_ALL = 'GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS';

/**
 * Raw HTTP/1.1 problem response for a socket the HTTP parser gave up on (clientError), with
 * what node:http would add (Date, RFC 9110 §6.6.1) and `no-store` (405 and 414 are heuristically
 * cacheable, RFC 9110 §15.1); a 405 lists what is allowed (RFC 9110 §15.5.6).
 */
export function rawProblem(code: ProblemCode, detail: string, requestId?: string): string {
  const body = problemBody(code, detail, requestId);
  const p = PROBLEMS[code];
  return (
    `HTTP/1.1 ${p.status} ${p.title}\r\ncontent-type: application/problem+json\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\ncache-control: no-store\r\ndate: ${new Date().toUTCString()}\r\n` +
    (requestId ? `x-request-id: ${requestId}\r\n` : '') +
    `${p.status === 405 ? `allow: ${ALLOW_ALL}\r\n` : ''}connection: close\r\n\r\n${body}`
  );
}

/** Fields a gRPC answer sets itself (framing, content type, status), dropped from plugin-added ones. */
const GRPC_OWN = new Set(['content-type', 'content-length', 'transfer-encoding', 'connection', 'grpc-status', 'grpc-message']);
function withoutFraming(h: Record<string, string | string[]>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) if (!GRPC_OWN.has(k.toLowerCase())) out[k] = v;
  return out;
}

/**
 * The gRPC status for an error the gateway answers itself with this HTTP status. Deliberately
 * not gRPC's HTTP to gRPC table (doc/http-grpc-status-mapping.md: 429/504 -> UNAVAILABLE, 400 ->
 * INTERNAL): that table is for a client reading an intermediary's answer that carries no
 * grpc-status (see grpcStatusFromHttp, for upstream answers); here the gateway knows the cause
 * and says it. Its own timeouts are DEADLINE_EXCEEDED, as Envoy's router answers gRPC timeouts
 * since envoyproxy/envoy#44479 (UNAVAILABLE told clients to retry a call whose time was spent);
 * its rate limit and size caps are RESOURCE_EXHAUSTED, gRPC's code for a quota or a message too
 * large (what Envoy's rate limit filter says with rate_limited_as_resource_exhausted), so a
 * client's retry policy on UNAVAILABLE does not hammer a limit; a request it refused is
 * INVALID_ARGUMENT, not INTERNAL.
 */
export function grpcStatusOf(httpStatus: number): number {
  switch (httpStatus) {
    case 401: return 16; // UNAUTHENTICATED
    case 403: return 7; // PERMISSION_DENIED
    case 404: case 405: return 12; // UNIMPLEMENTED
    case 408: case 504: return 4; // DEADLINE_EXCEEDED
    case 413: case 429: return 8; // RESOURCE_EXHAUSTED
    case 502: case 503: return 14; // UNAVAILABLE
    default: return httpStatus < 500 ? 3 /* INVALID_ARGUMENT */ : 13; // INTERNAL
  }
}


/**
 * A gRPC (or gRPC-Web) client reads the outcome from grpc-status, not the HTTP status: the
 * gateway's own errors go out as a trailers-only response (HTTP 200, status in the headers).
 */
function sendGrpcError(
  res: ServerResponse, httpStatus: number, detail: string, requestId: string | undefined, close: boolean, contentType: string,
  extra: Record<string, string | string[]> | undefined,
): void {
  const web = contentType.startsWith('application/grpc-web');
  const headers: Record<string, string | string[] | number> = {
    // What plugins added for the client (cors' Access-Control-Allow-Origin, so a gRPC-Web page
    // can read the status; WWW-Authenticate, Retry-After, RateLimit), as on a problem+json.
    ...(extra ? withoutFraming(extra) : {}),
    'content-type': web ? contentType.split(';')[0]!.trim() : 'application/grpc',
    'grpc-status': grpcStatusOf(httpStatus),
    'grpc-message': encodeGrpcMessage(detail),
  };
  if (web) headers['content-length'] = 0;
  if (requestId) headers['x-request-id'] = requestId;
  if (close) headers['connection'] = 'close';
  // Set, not writeHead: over HTTP/2 the headers then leave with END_STREAM in one frame, which
  // is what a Trailers-Only response is (grpc-js reads the status only from such a frame).
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.statusCode = 200;
  res.end();
}
