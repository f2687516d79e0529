/**
 * Forwarding one request to an upstream target with undici's dispatch API: bodies streamed
 * both ways with backpressure, 1xx forwarded, trailers passed on, upstream failures mapped to
 * problem+json before the response starts and to a cut connection after it started.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { constants as h2c } from 'node:http2';
import { errors, type Dispatcher } from 'undici';
import { HOP_BY_HOP, connectionTokens, headerRecord, isGatewayCookie } from '../core/headers.js';
import { isHttp2, markRawAnswered, resetResponse, sendProblem, type ProblemCode } from '../core/problem.js';
import { FD_EXHAUSTED, fdWatch } from '../core/fd-limit.js';
import type { CompiledService, Snapshot, Target } from '../config/compile.js';
import type { ServiceState } from './state.js';
import { MAX_RESPONSE_HEADER_BYTES, connectFailed, onReusedConnection } from './pools.js';
import { H2_STREAM_CUT, h2Streams, unprocessedStream } from './h2-streams.js';
import { ResponseEncoder, encodeGrpcMessage, encodeGrpcTimeout, grpcStatusFromHttp, parseGrpcTimeout, requestDecoder, webResponseHeaders, type GrpcWebKind } from '../protocols/grpc-web.js';
import { PassThrough, Transform, type Readable } from 'node:stream';
import { deliver, pickEncoder, problemResponse, type ResponsePlugins } from '../server/respond.js';
import type { Exchange } from '../observability/exchange.js';
import type { Tracing } from '../observability/tracing.js';
import type { Span } from '@opentelemetry/api';
import type { CacheStores } from '../plugins/cache/stores.js';
import type { Bucket } from '../plugins/cache/entry.js';
import { performance } from 'node:perf_hooks';

/**
 * Retry-After of the gateway's 503 no-healthy-target (RFC 9110 §10.2.3): with active checks,
 * the probe interval (the next probe, at most one interval away, is the earliest a target can
 * come back); without them nothing is scheduled (a name that never resolved waits for the DNS
 * refresh or a reload: passive checks never take a service's last target down), so 5 s, as the
 * other 503s for an unavailable dependency say. Error path only.
 */
export function noTargetRetryAfter(svc: CompiledService): Record<string, string> {
  const a = svc.health.active;
  return { 'retry-after': a === null ? '5' : String(Math.max(1, Math.ceil(a.interval / 1000))) };
}

/** Methods retried by default (RFC 9110 §9.2.2); others only on routes with retry_non_idempotent. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);
/**
 * A connection that was never made is told by where its error came from (pools.ts,
 * connectFailed: the connector's), not by its code: EHOSTUNREACH and ENETUNREACH also end a
 * connection that was made (the route to the host lost mid-exchange, an ICMP unreachable), after
 * the request went out — a non-idempotent request sent again then would run twice. Those are
 * lost connections (RESETS); these codes come from a connect alone.
 */
const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'EAI_AGAIN', 'ENOTFOUND', 'UND_ERR_CONNECT_TIMEOUT']);
const RESETS = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'EHOSTUNREACH', 'ENETUNREACH']);
/**
 * An upstream HTTP/2 stream that ended without END_STREAM: reset with an error code (node's
 * ERR_HTTP2_STREAM_ERROR), or with NO_ERROR / CANCEL (h2-streams.ts). A body cut so counts
 * against the target as a reset connection does.
 */
const H2_CUTS = new Set(['ERR_HTTP2_STREAM_ERROR', H2_STREAM_CUT]);
/**
 * An upstream HTTP/2 stream that ended before any answer: reset (RST_STREAM with an error code:
 * ERR_HTTP2_STREAM_ERROR; NO_ERROR: H2_STREAM_CUT; CANCEL: undici's InformationalError, "stream
 * closed before the response was complete"), or ended or broken off by the session (undici's
 * InformationalError too). HTTP/2's lost connection: `reset` in retry_on, as Envoy's reset is
 * (REFUSED_STREAM and a GOAWAY that left the stream unprocessed were tested first: connect-error).
 */
const h2StreamLost = (code: string) => H2_CUTS.has(code) || code === 'UND_ERR_INFO';
/**
 * An upstream HTTP/2 stream reset with REFUSED_STREAM: closed before any processing (RFC 9113
 * §8.7), so it may be sent again as a connection never made may (connect-error).
 */
const refusedStream = (code: string, err: Error) => code === 'ERR_HTTP2_STREAM_ERROR' && err.message.endsWith('NGHTTP2_REFUSED_STREAM');
/**
 * Upstream RST_STREAM codes an HTTP/2 client is told as they came when the gateway cannot finish
 * its response: the upstream refused the stream (REFUSED_STREAM: nothing processed, the client
 * may send it again; gRPC UNAVAILABLE) or sheds load (ENHANCE_YOUR_CALM: gRPC
 * RESOURCE_EXHAUSTED), and, to a gRPC call, cancelled it (CANCEL: gRPC CANCELLED). Elsewhere a
 * CANCEL is not passed on: node:http2 and undici clients end a body reset with CANCEL as if it
 * were whole (h2-streams.ts, 4.), where a gRPC client reads the missing status. Any other code
 * (PROTOCOL_ERROR, FLOW_CONTROL_ERROR, COMPRESSION_ERROR...: about the upstream connection, never
 * the client's; NO_ERROR before END_STREAM: a body cut) is the gateway's INTERNAL_ERROR, as a
 * GOAWAY or a lost connection is.
 */
const PASSED_ON_RST = new Set([h2c.NGHTTP2_REFUSED_STREAM, h2c.NGHTTP2_ENHANCE_YOUR_CALM]);
/** The RST_STREAM code an upstream stream was reset with (undefined: not reset so). Error path only. */
function upstreamRstCode(code: string, err: Error): number | undefined {
  if (code === H2_STREAM_CUT) return (err as { rstCode?: number }).rstCode;
  if (code !== 'ERR_HTTP2_STREAM_ERROR') return undefined;
  // node:http2: "Stream closed with error code NGHTTP2_<NAME>" (or the number, for a code it has no name for)
  const m = /\b(NGHTTP2_[A-Z_]+|\d+)$/.exec(err.message);
  if (m === null) return undefined;
  const n = m[1]!.startsWith('NGHTTP2_') ? (h2c as unknown as Record<string, unknown>)[m[1]!] : Number(m[1]);
  return typeof n === 'number' ? n : undefined;
}
/**
 * The gRPC status a client reads from a stream reset with `code` and no status (PROTOCOL-HTTP2.md,
 * "Errors"): CANCEL CANCELLED, REFUSED_STREAM UNAVAILABLE, ENHANCE_YOUR_CALM RESOURCE_EXHAUSTED,
 * any other INTERNAL (so is a cut HTTP/1.1 connection counted, a gRPC-Web client's).
 */
function grpcStatusOfRst(code: number | undefined): string {
  switch (code) {
    case h2c.NGHTTP2_CANCEL: return '1';
    case h2c.NGHTTP2_REFUSED_STREAM: return '14';
    case h2c.NGHTTP2_ENHANCE_YOUR_CALM: return '8';
    default: return '13';
  }
}
/** What the client's HTTP/2 stream is reset with for an upstream stream reset with `up` (see PASSED_ON_RST). */
const clientRstCode = (up: number | undefined, grpc: boolean): number =>
  up !== undefined && (PASSED_ON_RST.has(up) || (grpc && up === h2c.NGHTTP2_CANCEL)) ? up : h2c.NGHTTP2_INTERNAL_ERROR;
/**
 * undici's HTTP/1.1 client (lib/dispatcher/client-h1.js, onHeadersComplete) refuses any 100
 * Continue outright — it never sends Expect (lib/core/request.js refuses the header), so every
 * 100 is unrequested — and drops the connection with this SocketError, though RFC 9110 §15.2
 * has a client read past 1xx it did not expect. No option changes that. With a request running
 * the message means only that (its other uses are bytes with no request running).
 */
const UNDICI_REFUSED_100 = 'bad response';
/**
 * Likewise a 101 Switching Protocols to a request that asked for no upgrade (RFC 9110 §15.2.2:
 * a server switches only to what the client's Upgrade offered): undici drops the connection
 * with this SocketError. An answer it cannot read, not a connection that broke.
 */
const UNDICI_REFUSED_101 = 'bad upgrade';
/** Marks an attempt aborted by the gateway to retry it (its status was in retry_on). */
const RETRY = new Error('retrying on another target');
/** Aborts an attempt that was given up while it connected. */
const STALE = new Error('attempt given up while connecting');
/** Latency charged to a target whose attempt failed, so the latency balancer moves away from it. */
const FAILURE_PENALTY_MS = 5_000;
/** Request bodies up to this size are read before the first attempt so that retries can resend them. */
const RETRY_BUFFER_BYTES = 64 * 1024;
/** Error code of a request body over its plugin-set cap. */
const BODY_TOO_LARGE = 'TURNPIKE_BODY_TOO_LARGE';
/**
 * Response bytes buffered for a client that does not read, from an HTTP/2 upstream that cannot
 * be paused (only when undici's internals moved: see h2-streams.ts; normally it is paused).
 */
const MAX_UNREAD_BYTES = 1024 * 1024;
/**
 * Fields never relayed as trailers (RFC 9110 §6.5.1): connection-specific ones, and those that
 * must be known before the content — framing, routing, authentication, cookies, response
 * controls, content format. A client that merges trailers into the header section (as some do)
 * must not get a Set-Cookie or a Location the header section did not carry.
 */
const NOT_TRAILERS = new Set([
  ...HOP_BY_HOP, 'content-length', 'trailer', 'host', 'authorization', 'proxy-authorization', 'www-authenticate',
  'proxy-authenticate', 'cookie', 'set-cookie', 'cache-control', 'expires', 'age', 'location', 'retry-after', 'vary',
  'content-type', 'content-encoding', 'content-range', 'content-location', 'date', 'pragma', 'warning', 'x-request-id', 'via',
]);

/**
 * Response timeouts shorter than this get a native timer (undici's timers tick every ~0.5 s).
 * (TURNPIKE_PRECISE_TIMEOUT_MS: a lower bound for the tests of the long-timeout path, read once
 * at load.)
 */
export const PRECISE_TIMEOUT_BELOW_MS = Number(process.env.TURNPIKE_PRECISE_TIMEOUT_MS) > 0 ? Number(process.env.TURNPIKE_PRECISE_TIMEOUT_MS) : 10_000;
/** A connect slower than this gets the attempt's long timeout on a native timer (see onConnect). */
const SLOW_CONNECT_MS = 200;
/** A retry needs at least this much of the deadline left (after its backoff) to be tried. */
const MIN_RETRY_LEFT_MS = 10;
/** The longest delay setTimeout holds (2^31 - 1 ms, about 24.8 days); past it node fires after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface ForwardRequest {
  req: IncomingMessage;
  res: ServerResponse;
  service: CompiledService;
  method: string;
  /** Path + query to send upstream, minus the target's base path. */
  path: string;
  /** strip_path left nothing of the path (`/` stands for none): see joinBase. */
  bare: boolean;
  /** Request headers, ending with a `host` pair whose value is set per target. */
  headers: string[];
  /** Client's Host, when the route preserves it. */
  preservedHost: string | null;
  hasBody: boolean;
  requestId: string;
  via: string;
  closeAfter: boolean;
  /** The snapshot the request runs on (held until the request ends). */
  snapshot: Snapshot;
  /** consistent-hash key ('' for other balancers). */
  hashKey: string;
  retryNonIdempotent: boolean;
  /** A gRPC-Web request translated to gRPC (null otherwise): its body is decoded, its response encoded. */
  grpcWeb: GrpcWebKind | null;
  /**
   * The request is a gRPC call: to a service declared gRPC (gRPC-Web included), or over HTTP/2
   * with a gRPC content type (application/grpc...) to any other (`protocol: h2c` carrying gRPC).
   * Its grpc-timeout is enforced, its grpc-status counted, its response never buffered.
   */
  grpc: boolean;
  /** Plugins with response phases (responseHeaders, responseBody, response...), or null. */
  plugins: ResponsePlugins | null;
  /** The body to send, when a plugin read or replaced it (null: the client's streams through). */
  body: Buffer | null;
  /** Body size cap for a body without Content-Length (counted as it streams), or null. */
  bodyLimit: number | null;
  /** What the log phase reads (null: observability off). */
  exchange: Exchange | null;
  /** Set when the request is traced: a span per attempt, trace context sent upstream. */
  tracing: Tracing | null;
  /**
   * An unsafe request through a route without the cache plugin while caches exist (see
   * CompiledRoute.cacheWrites): a 2xx / 3xx head invalidates its URI. Null otherwise.
   */
  cacheWrite: { caches: CacheStores; bucket: Bucket; host: string } | null;
}

/**
 * Hands free bulkhead slots to waiting requests, oldest first. Each grant runs as a microtask:
 * a waiter that fails at once (no healthy target) releases its slot into the next grant
 * without growing the stack, however long the queue.
 */
export function grantSlots(st: ServiceState): void {
  while (st.queue.length > 0 && st.active < st.maxConcurrent) {
    const next = st.queue.shift()!;
    st.active++;
    queueMicrotask(next);
  }
}

/**
 * Takes one retry from the service's budget (tokens earned by requests and by time), or says
 * there is none left. `now`: performance.now() (a wall clock stepped back took tokens away).
 */
export function spendRetry(svc: CompiledService, now: number): boolean {
  const st = svc.state;
  if (svc.budget.minPerSecond > 0) {
    const cap = Math.max(10, svc.budget.ratio * 100, svc.budget.minPerSecond);
    // A budget never counted before starts full (a process, worker or service just started can
    // retry at once); on the monotonic clock `now - 0` is only the process's age.
    st.tokens = st.tokensAt === 0 ? cap : Math.min(cap, st.tokens + ((now - st.tokensAt) / 1000) * svc.budget.minPerSecond);
  }
  st.tokensAt = now;
  if (st.tokens < 1) return false;
  st.tokens -= 1;
  return true;
}

/** What a request earns of the retry budget: `ratio` of a retry (capped, so a quiet spell cannot bank a storm). */
export function earnRetry(svc: CompiledService): void {
  const st = svc.state;
  st.tokens = Math.min(st.tokens + svc.budget.ratio, Math.max(10, svc.budget.ratio * 100));
}

/**
 * A target's base path and the path to send: `/v1` + `/x` -> `/v1/x`, `/v1` + `/` -> `/v1/`;
 * `bare` (strip_path left nothing of the path): `/v1` + `/` -> `/v1`, `/v1` + `/?a` -> `/v1?a`.
 */
export function joinBase(base: string, path: string, bare: boolean): string {
  if (base === '') return path;
  return bare && (path === '/' || path.startsWith('/?')) ? base + path.slice(1) : base + path;
}


/** Index of grpc-status in a flat header list (a Trailers-Only answer), or -1. */
function grpcStatusAt(list: string[]): number {
  for (let i = 0; i < list.length; i += 2) if (list[i]!.toLowerCase() === 'grpc-status') return i;
  return -1;
}

/** Adds Vary tokens to a flat header list: into its (last) Vary field, none twice, nothing after `*`. */
/**
 * Fields plugins added for the response (`extra`: RateLimit, cors's Access-Control-*) over an
 * upstream's answer or a stored copy of one (`out`, name/value pairs): the gateway's own replace
 * the answer's of the same name; a Vary (cors: Origin) adds to the answer's.
 */
export function overlayGatewayFields(out: string[], extra: readonly string[]): void {
  const names = new Set<string>();
  for (let i = 0; i < extra.length; i += 2) {
    const n = extra[i]!.toLowerCase();
    if (n !== 'vary') names.add(n);
  }
  for (let i = out.length - 2; i >= 0; i -= 2) if (names.has(out[i]!.toLowerCase())) out.splice(i, 2);
  for (let i = 0; i < extra.length; i += 2) {
    if (extra[i]!.toLowerCase() === 'vary') mergeVary(out, extra[i + 1]!);
    else out.push(extra[i]!, extra[i + 1]!);
  }
}

function mergeVary(out: string[], value: string): void {
  let at = -1;
  const have = new Set<string>();
  for (let i = 0; i < out.length; i += 2) {
    if (out[i]!.toLowerCase() !== 'vary') continue;
    at = i;
    for (const t of out[i + 1]!.split(',')) have.add(t.trim().toLowerCase());
  }
  if (have.has('*')) return;
  const add = value.split(',').map((t) => t.trim()).filter((t) => t !== '' && !have.has(t.toLowerCase()));
  if (add.length === 0) return;
  if (at === -1) out.push('vary', add.join(', '));
  else out[at + 1] = out[at + 1]!.trim() === '' ? add.join(', ') : `${out[at + 1]}, ${add.join(', ')}`;
}

function latin1(b: Buffer | string): string {
  return typeof b === 'string' ? b : b.toString('latin1');
}

/**
 * One upstream attempt, as undici sees it: callbacks reach the handler only while this is its
 * current attempt. An attempt given up while still connecting (its response timeout or the
 * deadline passed) is stale: when undici connects it after all, it is aborted, and nothing it
 * reports reaches the request any more.
 */
class Attempt implements Dispatcher.DispatchHandler {
  constructor(private readonly h: ForwardHandler) {}
  onConnect(abort: (err?: Error) => void): void {
    if (this.h.current === this) this.h.onConnect(abort);
    else abort(STALE);
  }
  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    return this.h.current === this ? this.h.onHeaders(statusCode, rawHeaders, resume) : false;
  }
  onData(chunk: Buffer): boolean {
    return this.h.current === this ? this.h.onData(chunk) : false;
  }
  onComplete(trailers: Parameters<ForwardHandler['onComplete']>[0]): void {
    if (this.h.current === this) this.h.onComplete(trailers);
  }
  onError(err: Error): void {
    if (this.h.current === this) this.h.onError(err);
  }
  onBodySent(): void {
    if (this.h.current === this) this.h.requestProgress(false);
  }
  onRequestSent(): void {
    if (this.h.current === this) this.h.requestProgress(true);
  }
}

export class ForwardHandler {
  /** The attempt whose callbacks count (see Attempt). */
  current: Attempt | null = null;
  private abortFn: ((err?: Error) => void) | null = null;
  private resumeFn: (() => void) | null = null;
  private onDrain: (() => void) | undefined;
  private stall: NodeJS.Timeout | undefined;
  private attempts = 0;
  /** The response is settled (sent, failed or abandoned): upstream callbacks are ignored. */
  private finished = false;
  /** Slots, counters and outcome released (once). */
  private released = false;
  /** The current attempt's target (its in-flight count is held). */
  private target: Target | null = null;
  private tried: Target[] | null = null;
  /**
   * When the current attempt began, and when the request's time runs out: performance.now() ms,
   * as every deadline, retry decision and latency sample here (a wall clock stepped by NTP or a
   * resumed VM ended the retries at once, let them run an hour past the deadline, or fed the
   * latency balancer a negative sample).
   */
  private attemptStart = 0;
  /** The current attempt's response timeout (ms from attemptStart). */
  private attemptTimeout = 0;
  private deadline = 0;
  /**
   * The attempt's response timeout (min of timeouts.response and what is left of the deadline)
   * on a native timer: undici's headersTimeout runs on its coarse "fast timers" (~0.5 s ticks),
   * which would let a 300 ms timeout fire anywhere up to ~1 s and overrun the total deadline.
   */
  private responseTimer: NodeJS.Timeout | undefined;
  /**
   * timeouts.read below PRECISE_TIMEOUT_BELOW_MS on a native timer, refreshed by each body
   * chunk (undici's bodyTimeout ticks coarsely: a 300 ms read timeout fired up to ~1 s late),
   * and always for an HTTP/2 upstream (undici's is off: it would count a slow client's reading
   * of what the paused stream holds as the upstream's silence).
   * While the client is not reading (paused), the stall timer in sink() rules instead.
   */
  private readTimer: NodeJS.Timeout | undefined;
  private paused = false;
  /** The response timer runs to the deadline (not timeouts.response): sending more must not extend it. */
  private timerAtDeadline = false;
  /** Holds a bulkhead slot / is a half-open trial. */
  private slot = false;
  private trial = false;
  /** The circuit's period the trial was admitted in (ServiceState.beginTrial). */
  private trialPeriod = 0;
  private waiting: (() => void) | null = null;
  private waitTimer: NodeJS.Timeout | undefined;
  /** The request body, when it was read first to be retryable. */
  private body: Buffer | null = null;
  /** The request's outcome for the circuit: true ok, false failed, null unknown. */
  private outcome: boolean | null = null;
  /** gRPC-Web: the decoded request body and the response encoder. */
  private webBody: Readable | null = null;
  private encoder: ResponseEncoder | null = null;
  /** gRPC-Web: the upstream's head carried grpc-status (Trailers-Only): no trailer frame is owed. */
  private webStatusInHead = false;
  /** gRPC-Web: the upstream's answer is not gRPC (no application/grpc content type): its body is no messages. */
  private webNotGrpc = false;
  /** The current attempt's span (traced requests). */
  private span: Span | null = null;
  /** A response held whole for the `response` plugin phase (see bufferResponse). */
  private held: { cap: number; hard: boolean; status: number; headers: string[]; chunks: Buffer[]; size: number } | null = null;
  /** The stream the body goes through to the client (encodeResponse), or null. */
  private encoding: Transform | null = null;
  /** The final response's status (0 before it came). */
  private status = 0;
  /**
   * The upstream's Content-Length for the body it sends (-1: none, or no body by its status),
   * and the body bytes it sent: a body that ends short is broken, not complete. undici checks
   * this for HTTP/1.1 itself; over HTTP/2, Node ends a stream reset with NO_ERROR or CANCEL as
   * if it were complete, and undici reports it complete.
   */
  private declared = -1;
  private received = 0;
  /** gRPC: when the call's grpc-timeout runs out (performance.now() ms; 0: none), and its timer once the response started. */
  private grpcDeadline = 0;
  private callTimer: NodeJS.Timeout | undefined;
  /** gRPC: the index in f.headers of the grpc-timeout field sent upstream (-1: none), set per attempt. */
  private grpcTimeoutAt = -1;
  /** A failure of a kept-alive connection was already sent again once (see onError). */
  private staleRetried = false;
  /** Fields the upstream's Connection header named: connection-specific, dropped from its trailers too. */
  private nominated: Set<string> | null = null;
  /** The backoff before the next attempt (retryLater). */
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(private readonly f: ForwardRequest) {
    // The snapshot's pools stay open until its last request ends, even after a reload retired it.
    f.snapshot.retain();
  }

  /**
   * The request body ended short of its Content-Length (undici's REQ_CONTENT_LENGTH_MISMATCH, or
   * a body read first for a retry): an HTTP/2 stream closed with NO_ERROR mid-upload ends its
   * body so — the gateway's own reset after its 408 for a body that stalled or trickled
   * included, which then ran the request with the 5 bytes it had. The client's doing: neither a
   * success nor a failure of the target's (passive health, latency) or the circuit's (it was
   * counted a target success, and after the 408 a circuit failure: a client stalling its HTTP/2
   * uploads opened the circuit for everyone), never retried; a 400 closing the connection if
   * nothing was answered yet; an upstream answer under way is cut (it cannot be completed).
   */
  private bodyCutShort(err?: Error): void {
    const f = this.f;
    if (this.target !== null) this.endAttempt(null);
    this.endSpan(null, 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH');
    this.finished = true;
    this.outcome = null;
    this.held = null;
    if (!f.res.headersSent) sendProblem(f.res, 'bad-request', 'the request body ended before its Content-Length', f.requestId, { close: true });
    else if (this.status !== 0) resetResponse(f.res, err);
    this.release();
  }

  /** The client connection closed (or the response finished): stop the upstream exchange if it still runs. */
  clientClosed(): void {
    clearTimeout(this.stall);
    if (!this.finished) {
      this.finished = true;
      this.derivedGrpcStatus('1'); // (the client cancelled the call: CANCELLED, as its own side reads it)
      this.abortFn?.(new Error('client closed the connection'));
    }
    this.release();
  }

  /** Reads a retryable body when needed, then admission (circuit, bulkhead) and the first attempt. */
  start(): void {
    const f = this.f;
    const svc = f.service;
    // A small body of a request that may be retried is read first, so a retry can send it
    // again (Envoy buffers the same way); bigger or chunked bodies stream and are never retried.
    const ex = f.exchange;
    if (f.body !== null) {
      // Read (and maybe rewritten) by a plugin: sent as it is now, and retryable.
      this.body = f.body;
      return this.admit();
    }
    // (req.headers is built lazily by node: the request path reads the raw list instead)
    const countBody = ex !== null && f.hasBody && ex.bodyLength < 0;
    if ((f.bodyLimit !== null || countBody) && f.hasBody) {
      // Counted as it streams: past the cap the body stream fails, and onError answers 413.
      let seen = 0;
      const max = f.bodyLimit ?? Infinity;
      if (countBody) ex.bodyCounted = true;
      const counter = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          seen += chunk.length;
          if (countBody) ex.bytesIn += chunk.length;
          if (seen > max) cb(Object.assign(new Error(`the request body is larger than ${max} bytes`), { code: BODY_TOO_LARGE }));
          else cb(null, chunk);
        },
      });
      f.req.on('error', (err) => counter.destroy(err));
      // undici listens to the body only while an attempt holds it: waiting for a bulkhead slot or
      // between attempts, the cap's error had no listener but pipe()'s, which throws it again out
      // of the client's 'data' event (the process gone). Then it is answered here (413); a client
      // that went away is left to clientClosed.
      counter.on('error', (err: Error & { code?: string }) => {
        if (this.target === null && err.code === BODY_TOO_LARGE) this.onError(err);
      });
      this.webBody = f.req.pipe(counter);
    }
    if (f.grpcWeb !== null && f.hasBody) {
      // (streamed, never buffered for a retry: a gRPC call's messages are not replayable in general)
      const decoder = requestDecoder(f.grpcWeb);
      const source = this.webBody ?? f.req;
      // A body that does not decode is the client's fault: undici gets the error through the
      // stream (onError answers INVALID_ARGUMENT); the rest of the body is drained, the
      // connection kept.
      decoder.on('error', () => {
        source.unpipe(decoder);
        source.resume();
      });
      this.webBody = source.pipe(decoder);
    } else if (this.webBody !== null) {
      // (a capped body streams; it is not read ahead for retries)
    } else if (f.hasBody && svc.retries > 0 && (f.retryNonIdempotent || IDEMPOTENT.has(f.method)) && f.req.headers['transfer-encoding'] === undefined) {
      const length = Number(f.req.headers['content-length']);
      if (length > 0 && length <= RETRY_BUFFER_BYTES) {
        const chunks: Buffer[] = [];
        f.req.on('data', (c: Buffer) => chunks.push(c));
        f.req.once('end', () => {
          if (this.finished) return;
          const body = Buffer.concat(chunks);
          // (short of its Content-Length: an HTTP/2 stream reset with NO_ERROR mid-upload ends
          // its body so, the gateway's own after a 408 included; see bodyCutShort)
          if (body.length !== length) return this.bodyCutShort();
          this.body = body;
          this.admit();
        });
        return;
      }
    }
    if (this.webBody === null && f.hasBody && isHttp2(f.req)) {
      // undici destroys a body it stops sending (the upstream answered first), and an HTTP/2
      // request destroyed resets its stream with the answer still queued: it reads a stream of
      // its own instead (the client's is then reset with NO_ERROR once answered, see gateway.ts).
      const own = new PassThrough();
      f.req.on('error', (err) => own.destroy(err));
      this.webBody = f.req.pipe(own);
    }
    this.admit();
  }

  private admit(): void {
    const svc = this.f.service;
    const st = svc.state;
    this.deadline = performance.now() + svc.timeouts.total;
    if (this.f.grpc) {
      const raw = this.f.req.headers['grpc-timeout'] as string | undefined;
      if (raw !== undefined) {
        // gRPC's own deadline (grpc-timeout), when shorter, bounds the exchange too.
        const ms = parseGrpcTimeout(raw);
        if (ms !== null) {
          this.grpcDeadline = performance.now() + ms;
          this.deadline = Math.min(this.deadline, this.grpcDeadline);
        }
        // The field goes upstream with what is left of the deadline at each attempt (attempt()):
        // the time spent here (a bulkhead queue, attempts before, their backoff) is not the
        // upstream's to spend. One that is not valid (parseGrpcTimeout: a deadline the gateway
        // cannot read) is dropped: the call has no deadline, for the upstream either.
        const h = this.f.headers;
        for (let i = h.length - 4; i >= 0; i -= 2) {
          if (h[i]!.length !== 12 || h[i]!.toLowerCase() !== 'grpc-timeout') continue;
          if (ms === null) h.splice(i, 2);
          else this.grpcTimeoutAt = i;
        }
        // A deadline that has already passed (0<unit>): nothing an upstream could do in time.
        if (ms === 0) return this.refuse('gateway-timeout', 'the call\'s grpc-timeout had already run out');
      }
    }
    if (svc.retries > 0) earnRetry(svc);
    if (svc.circuit !== null && st.circuit !== 'closed') {
      if (st.circuit === 'open' || st.trials >= svc.circuit.halfOpenRequests) {
        const wait = Math.max(1, Math.ceil((st.openUntil - Date.now()) / 1000));
        return this.refuse('circuit-open', `service "${svc.name}" is failing; its circuit is open`, { 'retry-after': String(wait) });
      }
      this.trialPeriod = st.beginTrial();
      this.trial = true;
    }
    const b = svc.bulkhead;
    if (b !== null) {
      // The limits live on the shared state (set when a snapshot goes live), so a reload that
      // lowers them applies to requests already queued too.
      if (st.active >= st.maxConcurrent) {
        if (st.queue.length >= st.maxPending) {
          return this.refuse('service-overloaded', `service "${svc.name}" has ${st.maxConcurrent} requests in flight and ${st.maxPending} waiting`, { 'retry-after': '1' });
        }
        // Called by grantSlots() with the slot already counted in st.active.
        const granted = () => {
          this.waiting = null;
          clearTimeout(this.waitTimer);
          this.slot = true;
          // Gone while the grant was on its way (client left, wait expired): hand it on.
          if (this.released) {
            this.slot = false;
            st.active--;
            grantSlots(st);
            return;
          }
          this.attempt();
        };
        this.waiting = granted;
        st.queue.push(granted);
        // (the request's deadline, timeouts.total or a shorter grpc-timeout, may end the wait
        // first: then it is that timeout, a 504, as any other part of the request running out)
        const left = Math.max(1, this.deadline - performance.now());
        this.waitTimer = setTimeout(() => {
          this.unqueue();
          if (left < b.maxWait) {
            this.refuse('gateway-timeout', this.grpcDeadline > 0 && this.grpcDeadline <= this.deadline
              ? 'the call ran past its grpc-timeout waiting for a free slot'
              : `service "${svc.name}" had no free slot within the ${svc.timeouts.total} ms deadline`);
          } else this.refuse('service-overloaded', `service "${svc.name}" had no free slot within ${b.maxWait} ms`, { 'retry-after': '1' });
        }, Math.min(b.maxWait, left));
        return;
      }
      st.active++;
      this.slot = true;
    }
    this.attempt();
  }

  private unqueue(): void {
    if (this.waiting === null) return;
    const q = this.f.service.state.queue;
    const i = q.indexOf(this.waiting);
    if (i !== -1) q.splice(i, 1);
    this.waiting = null;
    clearTimeout(this.waitTimer);
  }

  /** Answers without contacting the upstream. */
  private refuse(code: ProblemCode, detail: string, headers?: Record<string, string>): void {
    if (this.finished) return;
    this.finished = true;
    this.problem(code, detail, this.f.closeAfter, headers);
    this.release();
  }

  /**
   * The gateway's own answer when the upstream could not give one. With `response` plugins
   * bound it goes through them (a cache may serve a stale copy instead: stale-if-error).
   */
  private problem(code: ProblemCode, detail: string, close: boolean, headers?: Record<string, string>): void {
    const f = this.f;
    const pl = f.plugins;
    // What plugins added for the client (cors' Access-Control-Allow-Origin, RateLimit...) goes
    // on the gateway's own 502/503/504 too: a page can read why its call failed.
    const extra = pl?.extraHeaders;
    // A gRPC client reads a Trailers-Only status (sendProblem), never a problem+json a response
    // plugin could have turned into something else (a gRPC call is no cache's to serve stale).
    // A call is gRPC by its content type, as sendProblem judges it: to a service declared h2c too.
    if (pl === null || pl.chain.response.length === 0 || f.res.headersSent || /^application\/grpc/i.test(String(f.req.headers['content-type'] ?? ''))) {
      sendProblem(f.res, code, detail, f.requestId, { close, headers: extra?.length ? { ...headerRecord(extra), ...headers } : headers });
      return;
    }
    const r = problemResponse(code, detail, f.requestId, undefined, headers);
    if (extra?.length) r.headers.push(...extra);
    r.headers.push('via', f.via);
    void deliver(f.req, f.res, r, pl, { requestId: f.requestId, close, exchange: null });
  }

  private attempt(): void {
    const f = this.f;
    if (this.finished) return;
    const t = f.service.balancer.pick(f.hashKey, this.tried);
    if (t === null) {
      // Refused before any attempt: the service was not tried, and what made its targets
      // unhealthy (probes, ejections) was judged already. Counted, a spell of no healthy target
      // would open the circuit and keep refusing for open_for after a probe passes again.
      this.outcome = this.attempts === 0 ? null : false;
      return this.refuse('no-healthy-target', `service "${f.service.name}" has no healthy target`, noTargetRetryAfter(f.service));
    }
    this.target = t;
    t.state.inflight++;
    this.attempts++;
    const now = performance.now();
    this.attemptStart = now;
    // The last pair of f.headers is reserved for Host, which depends on the target.
    const headers = f.headers;
    headers[headers.length - 1] = f.preservedHost ?? t.hostHeader;
    const path = t.basePath === '' ? f.path : joinBase(t.basePath, f.path, f.bare);
    const ex = f.exchange;
    if (ex !== null) {
      if (ex.upstreamStart === 0) ex.upstreamStart = performance.now();
      ex.attempts = this.attempts;
      ex.target = t.origin;
      if (f.tracing !== null && ex.span !== null) this.span = f.tracing.startAttempt(ex, f.method, t.origin, path, this.attempts, headers);
    }
    const timeout = Math.max(1, Math.min(f.service.timeouts.response, this.deadline - now));
    this.attemptTimeout = timeout;
    if (this.grpcTimeoutAt !== -1) headers[this.grpcTimeoutAt + 1] = encodeGrpcTimeout(this.upstreamGrpcTimeout(now));
    clearTimeout(this.responseTimer);
    this.responseTimer = undefined;
    // Long timeouts (the 60 s default) can live with undici's coarseness: no timer per request.
    if (timeout < PRECISE_TIMEOUT_BELOW_MS) {
      this.timerAtDeadline = timeout < f.service.timeouts.response;
      this.responseTimer = setTimeout(() => this.responseTimeout(), timeout);
    }
    t.pool.dispatch(
      {
        path,
        method: f.method,
        headers,
        // (undici's, not in its types: it keys a connection by this, else by the Host header,
        // and closes one whose next request's differs — a client's Host a route preserves must
        // not; the pool's connector picks the TLS name itself)
        servername: t.origin,
        body: this.body ?? this.webBody ?? (f.hasBody ? f.req : null),
        // Below PRECISE_TIMEOUT_BELOW_MS a backstop only: the native timer above fires first.
        headersTimeout: timeout,
        // HTTP/2: the read timeout is ours alone (see readTimer): undici's runs on the stream's
        // network activity, and a client reading slowly what the paused stream holds is none.
        bodyTimeout: f.service.h2Upstream ? 0 : f.service.timeouts.read,
      } as Dispatcher.DispatchOptions,
      (this.current = new Attempt(this)),
    );
  }

  /**
   * The grpc-timeout an attempt sends: what is left of the client's, and, when the request is
   * whole already (no body, or one read first), no more than what is left of the route's
   * deadline (timeouts.total), which the gateway then holds the answer to (as Envoy's
   * max_grpc_timeout caps it). A streamed request's route deadline counts from the end of its
   * body (requestProgress), and after the response head only the client's deadline bounds the
   * call: told the route's, an upstream would end a client stream or a long response the gateway
   * lets run (when the gateway gives up on an answer it cancels the upstream stream anyway).
   */
  private upstreamGrpcTimeout(now: number): number {
    const whole = !this.f.hasBody || this.body !== null;
    return Math.max(1, (whole ? this.deadline : this.grpcDeadline) - now);
  }

  /**
   * A piece of a streamed request body went out (`sent`: all of it). The response timeout and
   * the deadline count from the end of the request, as Envoy's route timeout does (and as they
   * do for a body read first, to be retryable): a long upload is not a slow upstream. While
   * the upload runs, a stall longer than the response timeout still fails it.
   */
  requestProgress(sent: boolean): void {
    const timer = this.responseTimer;
    if (timer === undefined || this.body !== null || !this.f.hasBody) return;
    const now = performance.now();
    const svc = this.f.service;
    let deadline = now + svc.timeouts.total;
    if (this.grpcDeadline > 0) deadline = Math.min(deadline, this.grpcDeadline);
    if (deadline > this.deadline) this.deadline = deadline;
    const left = this.deadline - now;
    if (!sent && left >= svc.timeouts.response && !this.timerAtDeadline) {
      timer.refresh();
      return;
    }
    clearTimeout(timer);
    this.timerAtDeadline = left < svc.timeouts.response;
    this.responseTimer = setTimeout(() => this.responseTimeout(), Math.max(1, Math.min(svc.timeouts.response, left)));
  }

  /** No response headers within the attempt's timeout: fail the attempt as undici's headers timeout would. */
  private responseTimeout(): void {
    this.responseTimer = undefined;
    if (this.finished || this.target === null) return;
    if (this.abortFn !== null && this.awaitingClient()) {
      // The upload is under way and it is the client that sends nothing (the upstream reads all
      // it got): no slowness of the target's — charged to it, a client stalling its uploads
      // ejected healthy targets and opened the circuit for everyone. undici's own headers timeout
      // does not fire then either. The timeout runs again from here; the client's stall is
      // bounded by timeouts.client_body, and its next bytes restart it (requestProgress). A gRPC
      // call's own deadline still ends it (DEADLINE_EXCEEDED, nothing charged).
      const response = this.f.service.timeouts.response;
      const grpcLeft = this.grpcDeadline > 0 ? this.grpcDeadline - performance.now() : Infinity;
      if (grpcLeft <= 0) return this.callDeadline();
      this.timerAtDeadline = grpcLeft < response;
      this.responseTimer = setTimeout(() => this.responseTimeout(), Math.max(1, Math.min(response, grpcLeft)));
      return;
    }
    const err = new errors.HeadersTimeoutError();
    if (this.abortFn !== null) this.abortFn(err);
    else {
      // Still connecting: give the attempt up now (the deadline holds even for a connect that
      // hangs); it is aborted if it ever connects.
      this.current = null;
      this.onError(err);
    }
  }

  /** Ends the current attempt's span (traced requests). */
  private endSpan(status: number | null, error: string | null): void {
    if (this.span === null) return;
    this.f.tracing!.endAttempt(this.span, status, error);
    this.span = null;
  }

  /**
   * Ends the current attempt before any response: passive health and the latency balancer's
   * penalty learn `ok` for its target (null: nothing, the target is not judged by it).
   */
  private endAttempt(ok: boolean | null): void {
    clearTimeout(this.responseTimer);
    this.responseTimer = undefined;
    const t = this.target;
    if (t === null) return;
    this.target = null;
    t.state.inflight--;
    this.abortFn = null;
    const svc = this.f.service;
    if (ok === null) return;
    if (!ok && svc.balancerName === 'latency') t.state.sample(FAILURE_PENALTY_MS, performance.now());
    if (svc.health.passive !== null) svc.reporter.passive(t.state.key, ok);
  }

  /**
   * The next attempt after a jittered backoff (Envoy's: 25 ms doubling per retry, at most
   * 250 ms), inside the deadline: an overloaded target is not hit again at once.
   */
  private retryLater(): void {
    const base = Math.min(250, 25 * 2 ** Math.max(0, this.attempts - 1));
    const delay = Math.min(Math.round(base * (0.5 + Math.random() / 2)), Math.max(0, this.deadline - performance.now() - MIN_RETRY_LEFT_MS));
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.attempt();
    }, delay);
  }

  /** No body chunk from the upstream within timeouts.read (the client reading): fails as undici's body timeout would. */
  private readTimeout(): void {
    if (this.finished || this.paused) return; // (paused: refreshed on drain)
    this.abortFn?.(new errors.BodyTimeoutError());
  }

  /**
   * The call timer, at most MAX_TIMER_MS ahead (a longer delay makes node's setTimeout fire
   * after 1 ms: a grpc-timeout of 1000H would end the call at once); re-armed until the deadline.
   */
  private armCallTimer(): void {
    this.callTimer = setTimeout(() => this.callDeadline(), Math.min(MAX_TIMER_MS, Math.max(1, this.grpcDeadline - performance.now())));
  }

  /** A gRPC call past its grpc-timeout while its response streams: cancelled upstream, DEADLINE_EXCEEDED to the client. */
  private callDeadline(): void {
    this.callTimer = undefined;
    if (this.finished) return;
    if (performance.now() < this.grpcDeadline) return this.armCallTimer(); // (a deadline past MAX_TIMER_MS)
    this.finished = true;
    this.outcome = null; // (the client's deadline, not the target's failure)
    this.abortFn?.(new Error('grpc-timeout exceeded'));
    const res = this.f.res;
    const trailers = { 'grpc-status': '4', 'grpc-message': 'Deadline%20Exceeded' };
    if (!res.headersSent) sendProblem(res, 'gateway-timeout', 'the call ran past its grpc-timeout', this.f.requestId);
    else {
      this.derivedGrpcStatus('4');
      if (this.encoder !== null) {
        // (inside a message, a trailer frame would be read as the rest of it: cut instead)
        if (this.encoder.midFrame) resetResponse(res, new Error('grpc-timeout exceeded inside a message'));
        else {
          res.write(this.encoder.finish({ 'grpc-status': ['4'], 'grpc-message': ['Deadline%20Exceeded'] }));
          res.end();
        }
      } else {
        try {
          res.addTrailers(trailers);
        } catch {
          /* trailers not possible here: the stream still ends */
        }
        res.end();
      }
    }
    this.release();
  }

  /**
   * The grpc-status a gRPC call that ended without one is counted with (turnpike_grpc_responses_total,
   * the access log): the one its client derives — from the HTTP status for a stream ended bare
   * (gRPC's HTTP to gRPC table: a 200 is UNKNOWN), from the reset for one cut (grpcStatusOfRst),
   * DEADLINE_EXCEEDED for the gateway's deadline trailers. A status the upstream gave stays. Off
   * the common path: only calls that ended so.
   */
  private derivedGrpcStatus(code: string): void {
    const ex = this.f.exchange;
    if (ex === null || ex.grpcStatus !== null || !this.f.grpc) return;
    if (/^application\/grpc/i.test(String(this.f.req.headers['content-type'] ?? ''))) ex.grpcStatus = code;
  }

  /**
   * A half-open trial is judged by its answer's status, not by its body's end: a long stream (SSE,
   * a download, a gRPC stream) must not hold the circuit's only trial place, refusing every other
   * request meanwhile. The circuit learns the outcome now; a body that breaks later is reported
   * as an ordinary failure.
   */
  private endTrial(): void {
    const svc = this.f.service;
    this.trial = false;
    // (a trial of an earlier half-open period is judged as an ordinary request: see endTrial)
    const current = svc.state.endTrial(this.trialPeriod);
    if (svc.circuit !== null && this.outcome !== null) svc.reporter.outcome(svc.name, this.outcome, current);
    this.outcome = null;
  }

  /** Releases everything the request holds, once: target, bulkhead slot, trial; reports the circuit outcome. */
  private release(): void {
    if (this.released) return;
    this.released = true;
    clearTimeout(this.responseTimer);
    this.responseTimer = undefined;
    clearTimeout(this.callTimer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.readTimer);
    this.unqueue();
    const svc = this.f.service;
    if (this.target !== null) {
      this.target.state.inflight--;
      this.target = null;
    }
    const st = svc.state;
    const trial = this.trial && st.endTrial(this.trialPeriod);
    this.trial = false;
    if (this.slot) {
      this.slot = false;
      st.active--;
      grantSlots(st);
    }
    if (svc.circuit !== null && this.outcome !== null) svc.reporter.outcome(svc.name, this.outcome, trial);
    // (the answer's status decides the span's error.type: a 4xx or 5xx is one, as a CLIENT span's)
    if (this.span !== null) this.endSpan(this.status || null, this.outcome === false && this.status < 500 ? 'upstream-failed' : null);
    this.f.snapshot.release();
  }

  /** Whether a failed attempt of this kind may be retried now (method, body, retry_on, count, deadline, budget). */
  private mayRetry(kind: 'connect-error' | 'timeout' | 'reset' | number): boolean {
    const f = this.f;
    const svc = f.service;
    if (this.finished || this.attempts > svc.retries) return false;
    // A connection that was never made sent nothing: any method may go to another target, and a
    // streamed body undici never started to read goes with it (nginx and Envoy's connect-failure
    // do the same). Anything else that failed may have reached the upstream.
    const unsent = kind === 'connect-error';
    if (f.hasBody && this.body === null && !(unsent && this.bodyUnread())) return false;
    if (!unsent && !f.retryNonIdempotent && !IDEMPOTENT.has(f.method)) return false;
    const on = svc.retryOn;
    if (kind === 'connect-error' ? !on.connectError : kind === 'timeout' ? !on.timeout : kind === 'reset' ? !on.reset : !on.statuses.has(kind)) return false;
    const now = performance.now();
    // An attempt with a few ms of the deadline left cannot be answered: it would only load the
    // next target (a timer firing a ms before the clock reached the deadline started a third
    // attempt of 1 ms where two were due).
    if (this.deadline - now < MIN_RETRY_LEFT_MS) return false;
    return spendRetry(svc, now);
  }

  /**
   * Whether an answer in retry_on said when to come back (Retry-After, RFC 9110 §10.2.3: an
   * overloaded or down-for-maintenance target shedding load) and no other target is left to
   * try: a retry would go back to a target that asked not to be asked again so soon (every
   * retry of a one-target service did, 25 ms later — more load where it is shed). The answer
   * goes to the client then, its Retry-After with it. Error path only.
   */
  private askedToWait(t: Target, rawHeaders: Buffer[]): boolean {
    let said = false;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const k = rawHeaders[i]!;
      if (k.length === 11 && latin1(k).toLowerCase() === 'retry-after') said = true;
    }
    if (!said) return false;
    const tried = this.tried;
    for (const o of this.f.service.targets) if (o !== t && !o.state.down && o.weight > 0 && (tried === null || !tried.includes(o))) return false;
    return true;
  }

  /** Whether this request may be sent again as it is: idempotent (or allowed), its body still whole, time left. */
  private mayReplay(): boolean {
    const f = this.f;
    if (this.finished || performance.now() >= this.deadline) return false;
    if (!f.retryNonIdempotent && !IDEMPOTENT.has(f.method)) return false;
    return !f.hasBody || this.body !== null || this.bodyUnread();
  }

  /**
   * Whether the attempt waits for the client's request body: it streams, is not all sent (not a
   * byte of it, maybe), and the stream undici reads holds nothing and is not paused (undici
   * pauses it when the upstream does not take what is written: then the wait is the upstream's).
   */
  private awaitingClient(): boolean {
    const f = this.f;
    if (!f.hasBody || this.body !== null) return false;
    const s = this.webBody ?? f.req;
    return !s.readableEnded && !s.destroyed && !s.isPaused() && s.readableLength === 0;
  }

  /** Whether the streamed request body is still whole: nothing of it was read for an attempt. */
  private bodyUnread(): boolean {
    const s = this.webBody ?? this.f.req;
    return !s.readableDidRead && !s.destroyed && !s.readableEnded;
  }

  onConnect(abort: (err?: Error) => void): void {
    if (this.finished) {
      abort(new Error('client closed the connection'));
      return;
    }
    this.abortFn = abort;
    // A long timeout runs on undici's headers timeout alone, which counts from the request's
    // write: a slow connect (a TLS handshake, a SYN retried) came on top of it, and the answer
    // (or the deadline) was waited for that much longer. Past SLOW_CONNECT_MS, a native timer
    // holds the rest of the attempt's timeout (no timer for the kept-alive, instant case).
    if (this.responseTimer === undefined) {
      const waited = performance.now() - this.attemptStart;
      if (waited >= SLOW_CONNECT_MS) {
        this.timerAtDeadline = this.attemptTimeout < this.f.service.timeouts.response;
        this.responseTimer = setTimeout(() => this.responseTimeout(), Math.max(1, this.attemptTimeout - waited));
      }
    }
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    const res = this.f.res;
    if (this.finished) return false;
    if (statusCode < 200) {
      // Below 100 a status is not HTTP (RFC 9110 §15): not an interim answer, an invalid one.
      if (!(statusCode >= 100)) return this.invalidResponse(`status ${statusCode}`);
      // undici restarts its headers timeout at every 1xx: an upstream sending a 102 now and then
      // would hold the request past timeouts.response and the deadline. From the first 1xx a
      // native timer (not restarted by more of them) bounds the wait for the final answer.
      if (this.responseTimer === undefined) {
        const response = this.f.service.timeouts.response;
        const left = Math.max(1, Math.min(response, this.deadline - performance.now()));
        this.timerAtDeadline = left < response;
        this.responseTimer = setTimeout(() => this.responseTimeout(), left);
      }
      // 100 never reaches here (undici refuses it); forward 102/103 and friends.
      // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client.
      if (this.f.req.httpVersionMajor === 1 && this.f.req.httpVersionMinor === 0) return true;
      if (statusCode === 103) this.earlyHints(rawHeaders);
      else if (statusCode === 102 && typeof res.writeProcessing === 'function') res.writeProcessing(); // (not in HTTP/2's API)
      return true;
    }
    clearTimeout(this.responseTimer);
    this.responseTimer = undefined;
    // Outside 100-599 a status is not HTTP (RFC 9110 §15): the upstream's answer is invalid.
    if (!(statusCode <= 599)) return this.invalidResponse(`status ${statusCode}`);
    const svc = this.f.service;
    const t = this.target;
    if (t !== null) {
      const passive = svc.health.passive;
      const ok = passive === null || !passive.statuses.has(statusCode);
      // A failed answer is charged the penalty, not its (fast) time: a target that fails at once
      // must not look like the quickest.
      if (svc.balancerName === 'latency') {
        const now = performance.now();
        t.state.sample(statusCode >= 500 || !ok ? FAILURE_PENALTY_MS : now - this.attemptStart, now);
      }
      // A failed status counts now; a good one once its body is whole (onComplete): a target
      // whose bodies stall or break is not cleared by its headers.
      if (passive !== null && !ok) svc.reporter.passive(t.state.key, false);
      if (svc.retryOn.statuses.has(statusCode) && !this.askedToWait(t, rawHeaders) && this.mayRetry(statusCode)) {
        const abort = this.abortFn;
        this.target = null;
        t.state.inflight--;
        this.abortFn = null;
        this.current = null;
        (this.tried ??= []).push(t);
        this.endSpan(statusCode, null);
        abort?.(RETRY);
        this.retryLater();
        return false;
      }
    }
    this.outcome = statusCode < 500;
    if (this.trial) this.endTrial();
    this.status = statusCode;
    this.resumeFn = resume;
    const read = svc.timeouts.read;
    if (read < PRECISE_TIMEOUT_BELOW_MS || svc.h2Upstream) this.readTimer = setTimeout(() => this.readTimeout(), read);
    // grpc-timeout is the deadline of the whole call, streamed responses included.
    if (this.grpcDeadline > 0) this.armCallTimer();
    const ex = this.f.exchange;
    if (ex !== null) ex.upstreamHeaders = performance.now();
    this.span?.setAttribute('http.response.status_code', statusCode);
    const out: string[] = [];
    let upstreamVia: string | undefined;
    let connection: string | undefined;
    let chunked = false;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = latin1(rawHeaders[i]!);
      const value = latin1(rawHeaders[i + 1]!);
      switch (name.length < 20 ? name.toLowerCase() : '') {
        case 'connection': connection = connection === undefined ? value : `${connection}, ${value}`; continue;
        case 'transfer-encoding':
          // Only chunked is decoded (by undici), and only once (RFC 9112 §6.1: chunked is never
          // applied twice, so a second field is no list to accept): any other coding would reach
          // the client undeclared.
          if (chunked || value.trim().toLowerCase() !== 'chunked') return this.invalidResponse(`Transfer-Encoding ${value}`);
          chunked = true;
          continue;
        // No Content-Length on a 204 (RFC 9110 §8.6); a 304's is the selected representation's
        // and stays (as a HEAD answer's: neither is the length of a body that follows). A 205 has
        // no content (§15.3.6) and node:http2 ends it at its head: a length kept there would make
        // the HTTP/2 client reset the stream (RFC 9113 §8.1.1), the 205 lost.
        case 'content-length':
          if (statusCode !== 204 && (statusCode !== 205 || !isHttp2(res))) {
            out.push(name, value);
            if (statusCode !== 304) this.declared = Number(value);
          }
          continue;
        case 'upgrade':
          // A 426 names the protocols to switch to (RFC 9110 §15.5.22: it MUST carry Upgrade),
          // with the connection option (§7.8); an HTTP/2 answer has neither field.
          if (statusCode === 426 && !isHttp2(this.f.req)) out.push(name, value, 'connection', 'upgrade');
          continue;
        case 'keep-alive': case 'proxy-connection': case 'te':
        case 'http2-settings': case 'x-request-id':
          continue;
        case 'via': upstreamVia = upstreamVia === undefined ? value : `${upstreamVia}, ${value}`; continue;
        case 'set-cookie':
          if (!isGatewayCookie(value)) out.push(name, value);
          continue;
        default: out.push(name, value);
      }
    }
    // Fields named in the upstream's Connection header are connection-specific too.
    const nominated = (this.nominated = connectionTokens(connection));
    if (nominated !== null) {
      for (let i = out.length - 2; i >= 0; i -= 2) {
        const n = out[i]!.toLowerCase();
        // (a 426's Upgrade, kept above, is named in its Connection as it must be)
        if (nominated.has(n) && (statusCode !== 426 || (n !== 'upgrade' && n !== 'connection'))) out.splice(i, 2);
      }
    }
    out.push('via', upstreamVia === undefined ? this.f.via : `${upstreamVia}, ${this.f.via}`, 'x-request-id', this.f.requestId);
    if (this.f.closeAfter) out.push('connection', 'close');
    const pl = this.f.plugins;
    if (pl !== null) {
      const extra = pl.extraHeaders;
      if (extra !== undefined && extra.length) overlayGatewayFields(out, extra);
      for (const b of pl.chain.responseHeaders) {
        try {
          b.inst.responseHeaders!(pl.ctx, statusCode, out);
        } catch (err) {
          pl.log?.error({ err, plugin: b.name, request_id: this.f.requestId }, 'plugin failed in the responseHeaders phase');
          this.finished = true;
          this.outcome = null;
          this.abortFn?.(err as Error);
          sendProblem(res, 'internal-error', `plugin ${b.name} failed`, this.f.requestId);
          this.release();
          return false;
        }
      }
    }
    if (this.f.grpc && ex !== null) {
      const i = grpcStatusAt(out);
      if (i !== -1) ex.grpcStatus = out[i + 1]!;
    }
    if (pl !== null && pl.chain.bufferResponse.length && !this.f.grpc) {
      let hard = Infinity;
      let soft = -1;
      for (const b of pl.chain.bufferResponse) {
        let v: ReturnType<NonNullable<typeof b.inst.bufferResponse>>;
        try {
          v = b.inst.bufferResponse!(pl.ctx, statusCode, out);
        } catch (err) {
          pl.log?.error({ err, plugin: b.name, request_id: this.f.requestId }, 'plugin failed in the bufferResponse phase');
          this.finished = true;
          this.outcome = null;
          this.abortFn?.(err as Error);
          sendProblem(res, 'internal-error', `plugin ${b.name} failed`, this.f.requestId);
          this.release();
          return false;
        }
        if (typeof v === 'number') hard = Math.min(hard, v);
        else if (v !== null) soft = Math.max(soft, v.max);
      }
      if (hard !== Infinity || soft >= 0) {
        const cap = hard !== Infinity ? hard : soft;
        const cl = out.findIndex((v, i) => i % 2 === 0 && v.toLowerCase() === 'content-length');
        const declared = cl === -1 ? -1 : Number(out[cl + 1]);
        if (!(declared > cap) || this.f.method === 'HEAD') {
          this.held = { cap, hard: hard !== Infinity, status: statusCode, headers: out, chunks: [], size: 0 };
          return true;
        }
        if (hard !== Infinity) {
          this.tooLarge(cap);
          return false;
        }
        // Declared bigger than a soft cap: it streams, the response phase is skipped.
      }
    }
    if (this.f.grpcWeb !== null) this.toWeb(out, this.f.grpcWeb);
    else if (this.f.grpc && isHttp2(res) && grpcStatusAt(out) !== -1) {
      // gRPC Trailers-Only: held until the end, to leave as one HEADERS frame with END_STREAM.
      // (Also a gRPC call through an h2c service: sent as HEADERS then an empty DATA frame with
      // END_STREAM, grpc-js reads no status in those headers: "Call ended without gRPC status".)
      // A repeated field goes as one combined line (RFC 9110 §5.3; Set-Cookie as several):
      // node:http2 refuses several lines of a field it allows once (ETag...) only at the end,
      // where it would leave the stream unanswered (a grpcs target that spoke HTTP/1.1).
      const obj: Record<string, string | string[]> = {};
      for (let i = 0; i < out.length; i += 2) {
        const k = out[i]!.toLowerCase();
        const prev = obj[k];
        obj[k] = prev === undefined ? out[i + 1]! : k === 'set-cookie' ? [prev, out[i + 1]!].flat() : `${prev as string}, ${out[i + 1]!}`;
      }
      try {
        for (const [k, v] of Object.entries(obj)) res.setHeader(k, v);
        res.statusCode = statusCode;
      } catch (err) {
        return this.unforwardable(err as Error);
      }
      return true;
    }
    return this.writeHead(statusCode, out);
  }

  /**
   * A 103 Early Hints: only its Link fields go on (as nginx's early_hints and Envoy pass them),
   * each value its own list member. None of the final answer's filtering (cookies, the
   * gateway's own fields, framing, Connection-named fields) applies to a 1xx, and fields such as
   * Content-Length or a repeated Location make an HTTP/2 client reset the stream or Node refuse
   * it: nothing else of a hint is worth that.
   */
  private earlyHints(rawHeaders: Buffer[]): void {
    let links: string[] | null = null;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const k = rawHeaders[i]!;
      if (k.length === 4 && latin1(k).toLowerCase() === 'link') (links ??= []).push(latin1(rawHeaders[i + 1]!));
    }
    if (links === null) return;
    try {
      this.f.res.writeEarlyHints({ link: links });
    } catch {
      /* a Link value Node refuses to send: the hints are advisory, the answer goes on without them */
    }
  }

  /** An upstream answer that cannot be forwarded as it is: 502, the target charged, the exchange stopped. */
  private invalidResponse(what: string): false {
    this.finished = true;
    this.outcome = false;
    this.abortFn?.(new Error(`invalid upstream response: ${what}`));
    sendProblem(this.f.res, 'invalid-upstream-response', `service "${this.f.service.name}" sent a response that cannot be forwarded (${what})`, this.f.requestId, { close: this.f.closeAfter });
    this.release();
    return false;
  }

  /** Sends the response head (the body's encoder chosen first); false when it could not be sent. */
  private writeHead(statusCode: number, out: string[]): boolean {
    const res = this.f.res;
    if (this.encoder === null) {
      this.encoding = pickEncoder(this.f.plugins, statusCode, out, this.f.method);
      if (this.encoding !== null) {
        this.encoding.on('error', (err) => res.destroy(err));
        this.encoding.pipe(res);
        // (what is sent is what comes out of the encoder: counted there, after the pipe took it)
        const ex = this.f.exchange;
        if (ex !== null) this.encoding.on('data', (c: Buffer) => { ex.bytesOut += c.length; });
      }
    }
    try {
      res.writeHead(statusCode, out);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ERR_HTTP_TRAILER_INVALID') return this.unforwardable(err as Error);
      // Trailer only announces trailers (RFC 9110 §6.6.2), which only a chunked body carries:
      // dropped when this answer is not chunked (a Content-Length, an HTTP/1.0 client, no body).
      for (const name of res.getHeaderNames()) res.removeHeader(name);
      const kept: string[] = [];
      for (let i = 0; i < out.length; i += 2) if (out[i]!.toLowerCase() !== 'trailer') kept.push(out[i]!, out[i + 1]!);
      try {
        res.writeHead(statusCode, kept);
      } catch (err2) {
        return this.unforwardable(err2 as Error);
      }
    }
    const w = this.f.cacheWrite;
    if (w !== null && statusCode >= 200 && statusCode < 400) w.caches.invalidateWrite(w.bucket, w.host, out);
    // node:http holds a head until the first body byte is written: an upstream that sends its
    // head alone (SSE, a long poll, a slow body) would keep the client from seeing it. Checked
    // once undici is done with the bytes it read (a head and body read together go out together).
    if (!isHttp2(res)) queueMicrotask(() => this.flushHead());
    return true;
  }

  /** Sends a response head that no body byte followed (see writeHead). */
  private flushHead(): void {
    const res = this.f.res;
    if (this.received === 0 && !this.finished && !res.writableEnded && !res.destroyed) res.flushHeaders();
  }

  /**
   * A status or header Node refuses to send (an invalid value; over HTTP/2 also a repeated
   * field that may appear once, e.g. two Location fields): 502, the target charged. Fields set
   * before the refusal are all removed first — one left behind would make the 502 throw too,
   * and the stream would hang unanswered.
   */
  private unforwardable(err: Error): false {
    const res = this.f.res;
    this.finished = true;
    this.outcome = false;
    this.abortFn?.(err);
    if (this.encoding !== null) {
      this.encoding.unpipe(res);
      this.encoding = null;
    }
    for (const name of res.getHeaderNames()) res.removeHeader(name);
    res.statusMessage = ''; // (the refused head's reason phrase would go out with the 502)
    try {
      sendProblem(res, 'bad-gateway', 'the upstream sent a response that cannot be forwarded', this.f.requestId);
    } catch {
      res.destroy();
    }
    this.release();
    return false;
  }

  /** A held response grew past a hard cap: 502, the upstream exchange stops. */
  private tooLarge(cap: number): void {
    this.finished = true;
    this.outcome = null;
    this.held = null;
    this.abortFn?.(new Error('response too large'));
    sendProblem(this.f.res, 'upstream-response-too-large', `the upstream's response is larger than the ${cap} bytes this route can transform`, this.f.requestId, { close: this.f.closeAfter });
    this.release();
  }

  /** gRPC-Web: the response headers rewritten in place (content type; framing fields dropped). */
  private toWeb(out: string[], kind: GrpcWebKind): void {
    const obj: Record<string, string | string[]> = {};
    for (let i = 0; i < out.length; i += 2) {
      const k = out[i]!.toLowerCase();
      const prev = obj[k];
      obj[k] = prev === undefined ? out[i + 1]! : Array.isArray(prev) ? [...prev, out[i + 1]!] : [prev, out[i + 1]!];
    }
    out.length = 0;
    for (const [k, v] of Object.entries(webResponseHeaders(kind, obj))) for (const one of Array.isArray(v) ? v : [v]) out.push(k, one);
    this.webStatusInHead = obj['grpc-status'] !== undefined;
    // An answer that is not gRPC (an error page of a server or proxy upstream): its body would
    // reach the client as message frames it cannot parse; dropped, the trailer frame says what
    // came (onComplete).
    const ct = obj['content-type'];
    this.webNotGrpc = typeof ct !== 'string' || !/^application\/grpc(?![\w-])/i.test(ct);
    // Browsers only show a cross-origin response's grpc-* fields when exposed (CORS itself: the cors plugin).
    this.encoder = new ResponseEncoder(kind);
  }

  onData(chunk: Buffer): boolean {
    if (this.finished) return false;
    this.received += chunk.length;
    this.readTimer?.refresh();
    if (this.webNotGrpc) return true; // (see toWeb)
    const pl = this.f.plugins;
    if (pl !== null && pl.chain.responseBody.length) {
      let current = '';
      try {
        for (const b of pl.chain.responseBody) {
          current = b.name;
          chunk = b.inst.responseBody!(pl.ctx, chunk);
        }
      } catch (err) {
        pl.log?.error({ err, plugin: current, request_id: this.f.requestId }, 'plugin failed in the responseBody phase');
        // The response has started: it can only be cut.
        this.onError(new Error('a plugin failed on the response body'));
        return false;
      }
    }
    const held = this.held;
    if (held !== null) {
      held.size += chunk.length;
      if (held.size <= held.cap) {
        held.chunks.push(chunk);
        return true;
      }
      if (held.hard) {
        this.tooLarge(held.cap);
        return false;
      }
      // Past a soft cap: what was held goes out, the rest streams (no response phase).
      this.held = null;
      if (!this.writeHead(held.status, held.headers)) return false;
      for (const c of held.chunks) this.sink(c);
    }
    return this.sink(chunk);
  }

  /** Writes a body chunk on its way to the client (through the encoder, if any); false: paused. */
  private sink(chunk: Buffer): boolean {
    if (this.f.exchange !== null && this.encoding === null) this.f.exchange.bytesOut += chunk.length;
    const out = this.encoding ?? this.f.res;
    const ok = out.write(this.encoder === null ? chunk : this.encoder.data(chunk));
    if (!ok && this.f.service.h2Upstream && !h2Streams.hooked) {
      // undici's HTTP/2 client drops data it holds paused when the trailers arrive; without the
      // correction of h2-streams.ts the upstream is never paused, and a client that does not
      // keep up is cut past MAX_UNREAD instead.
      if (this.f.res.writableLength > MAX_UNREAD_BYTES) resetResponse(this.f.res, new Error('client stopped reading'));
      return true;
    }
    // (already waiting for a drain — a held body spilled in one go writes many chunks past the
    // highWaterMark —: one listener and one stall timer, else the others outlive the drain and
    // cut the response timeouts.read later)
    if (!ok && !this.paused) {
      // A client that stops reading must not hold the exchange forever (the upstream's read
      // timeout is suspended while we keep it paused): the read timeout applies to the client
      // too. Paused, an HTTP/2 upstream is held back by flow control: what the gateway holds
      // for the stream is bounded by its window (undici's 256 KiB).
      this.onDrain ??= () => {
        clearTimeout(this.stall);
        this.paused = false;
        this.readTimer?.refresh();
        this.resumeFn?.();
      };
      this.paused = true;
      out.once('drain', this.onDrain);
      this.stall = setTimeout(() => {
        if (!this.finished) resetResponse(this.f.res, new Error('client stopped reading'));
      }, this.f.service.timeouts.read);
    }
    return ok;
  }

  onComplete(trailers: Buffer[] | string[] | Record<string, string | string[] | undefined> | null): void {
    if (this.finished) return;
    // A body shorter (or longer) than its Content-Length is broken, whatever ended it (an HTTP/2
    // RST_STREAM NO_ERROR or CANCEL mid-body): failed as undici fails it over HTTP/1.1 — the
    // client's connection cut or stream reset, nothing cached, the target charged.
    if (this.declared >= 0 && this.received !== this.declared && this.f.method !== 'HEAD') {
      return this.onError(new errors.ResponseContentLengthMismatchError());
    }
    // gRPC-Web: an upstream that ended its stream inside a message (its trailers after a frame
    // cut short) sent a broken answer: the trailer frame would be read as the rest of that message.
    if (this.encoder !== null && this.encoder.midFrame) {
      return this.onError(Object.assign(new Error('the upstream ended its gRPC response inside a message'), { code: H2_STREAM_CUT }));
    }
    this.finished = true;
    const res = this.f.res;
    const passive = this.f.service.health.passive;
    if (this.target !== null && passive !== null && !passive.statuses.has(this.status)) this.f.service.reporter.passive(this.target.state.key, true);
    const held = this.held;
    if (held !== null) {
      // The whole response: the response phase, then the client (trailers are not kept).
      this.held = null;
      this.release();
      const body = held.chunks.length === 1 ? held.chunks[0]! : Buffer.concat(held.chunks, held.size);
      void deliver(this.f.req, res, { status: held.status, headers: held.headers, body, origin: 'upstream' }, this.f.plugins, { requestId: this.f.requestId, close: this.f.closeAfter, exchange: this.f.exchange });
      return;
    }
    if (this.encoding !== null) {
      // (an encoded body ends without trailers)
      this.release();
      this.encoding.end();
      return;
    }
    const t: [string, string][] = [];
    if (Array.isArray(trailers)) {
      // (an HTTP/1.1 upstream's: fields its Connection header named are connection-specific, RFC 9110 §7.6.1)
      const nominated = this.nominated;
      for (let i = 0; i < trailers.length; i += 2) {
        const k = latin1(trailers[i]!);
        const n = k.toLowerCase();
        if (!NOT_TRAILERS.has(n) && (nominated === null || !nominated.has(n))) t.push([k, latin1(trailers[i + 1]!)]);
      }
    } else if (trailers) {
      // undici's HTTP/2 client hands trailers over as node:http2's headers object.
      for (const [k, v] of Object.entries(trailers)) {
        if (v === undefined || k.charCodeAt(0) === 0x3a || NOT_TRAILERS.has(k)) continue;
        for (const one of Array.isArray(v) ? v : [v]) t.push([k, one]);
      }
    }
    const ex = this.f.exchange;
    if (ex !== null && this.f.grpc) {
      for (const [k, v] of t) if (k.toLowerCase() === 'grpc-status') ex.grpcStatus = v;
    }
    // A native gRPC call ended without a grpc-status: counted with the one its client derives.
    if (this.f.grpc && ex !== null && ex.grpcStatus === null && this.encoder === null) this.derivedGrpcStatus(String(grpcStatusFromHttp(this.status)));
    if (this.encoder !== null) {
      // gRPC-Web: the trailers travel as the body's last frame. An upstream that gave no status
      // at all (it ended its stream bare, or answered some other HTTP error) still gets one
      // there: without it a gRPC-Web client fails the call on a "missing status" of its own.
      const obj: Record<string, string[]> = {};
      for (const [k, v] of t) (obj[k.toLowerCase()] ??= []).push(v);
      if (obj['grpc-status'] === undefined && !this.webStatusInHead) {
        const code = String(grpcStatusFromHttp(this.status));
        obj['grpc-status'] = [code];
        obj['grpc-message'] = [encodeGrpcMessage(`service "${this.f.service.name}" answered HTTP ${this.status}${this.webNotGrpc ? ', not gRPC,' : ''} without a grpc-status`)];
        if (ex !== null) ex.grpcStatus = code;
      }
      if (t.length || !this.webStatusInHead) res.write(this.encoder.finish(obj));
    } else if (t.length) {
      try {
        // node:http takes [name, value] pairs; node:http2's compatibility API only an object.
        // A repeated field is combined into one line (RFC 9110 §5.3): node:http2 refuses several
        // lines of a field it allows once (ETag, User-Agent...) only when it sends the trailers,
        // long after this call — an exception nothing catches, the process gone.
        if (isHttp2(res)) {
          const obj: Record<string, string> = {};
          for (const [k, v] of t) {
            const key = k.toLowerCase();
            const prev = obj[key];
            obj[key] = prev === undefined ? v : `${prev}, ${v}`;
          }
          res.addTrailers(obj);
        } else res.addTrailers(t);
      } catch {
        /* invalid trailer from upstream: drop it */
      }
    }
    this.release();
    res.end();
  }

  onError(err: Error): void {
    if (err === RETRY || err === STALE || this.finished) return;
    const f = this.f;
    const code = (err as { code?: string }).code ?? '';
    if (code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH') return this.bodyCutShort(err);
    // A 204 or 304 ends with its header section whatever its Content-Length says (RFC 9112
    // §6.3); undici still checks the length and drops the connection: the response is whole.
    if (code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' && (this.status === 204 || this.status === 304)) return this.onComplete(null);
    // Likewise an HTTP/2 stream closed (NO_ERROR, CANCEL) after the head of an answer that has no body.
    if (code === H2_STREAM_CUT && (this.status === 204 || this.status === 304 || f.method === 'HEAD') && this.received === 0) return this.onComplete(null);
    if (code === 'UND_ERR_INVALID_ARG' && !f.res.headersSent) {
      // The request as built here cannot be sent (a header value undici refuses): the
      // gateway's fault, not the target's; nothing went upstream (nor judged: a success would
      // clear a failing target's run of failures).
      if (this.target !== null) this.endAttempt(null);
      this.finished = true;
      this.outcome = null;
      sendProblem(f.res, 'internal-error', `the request could not be sent to service "${f.service.name}": ${err.message}`, f.requestId, { close: f.closeAfter });
      this.release();
      return;
    }
    const causeCode = (err as { cause?: { code?: string } }).cause?.code;
    if (code === 'ERR_GRPC_WEB_BASE64' || causeCode === 'ERR_GRPC_WEB_BASE64') {
      // The client's body, not the target: neither a failure nor a success of its, nor the circuit's.
      if (this.target !== null) this.endAttempt(null);
      this.finished = true;
      this.outcome = null;
      if (!f.res.headersSent) sendProblem(f.res, 'bad-request', 'the grpc-web-text request body is not valid base64', f.requestId, { close: f.closeAfter });
      else resetResponse(f.res, err);
      this.release();
      return;
    }
    if (code === BODY_TOO_LARGE || causeCode === BODY_TOO_LARGE) {
      if (this.target !== null) this.endAttempt(null); // not the target's doing: not judged by it
      this.finished = true;
      this.outcome = null;
      // (with what plugins added for the client, as on the gateway's other answers here)
      const extra = f.plugins?.extraHeaders;
      if (!f.res.headersSent) sendProblem(f.res, 'payload-too-large', err.message, f.requestId, { close: true, ...(extra?.length ? { headers: headerRecord(extra) } : {}) });
      else resetResponse(f.res, err);
      this.release();
      return;
    }
    if (!f.res.headersSent && FD_EXHAUSTED.has(code)) {
      // This process is out of file descriptors: no failure of the target's (passive health,
      // circuit, latency), no retry (the next connect would fail alike); said in the log.
      fdWatch.upstreamConnect(code, f.service.name);
      this.held = null;
      this.endAttempt(null);
      this.endSpan(null, code);
      this.finished = true;
      this.outcome = null;
      this.problem('service-unavailable', `the gateway is out of file descriptors: it could not connect to service "${f.service.name}"`, f.closeAfter, { 'retry-after': '1' });
      this.release();
      return;
    }
    if (!f.res.headersSent && code === 'UND_ERR_HEADERS_TIMEOUT' && this.grpcDeadline > 0 && this.grpcDeadline <= this.deadline
      && (performance.now() >= this.grpcDeadline || this.grpcDeadline < this.attemptStart + f.service.timeouts.response)) {
      // The call's own deadline (grpc-timeout) ran out before the target's response timeout:
      // the client's choice, as for a streamed response past it (callDeadline). Not charged to
      // the target (passive health, latency) nor the circuit, never retried; DEADLINE_EXCEEDED.
      this.held = null;
      this.endAttempt(null);
      this.endSpan(null, code);
      this.finished = true;
      this.outcome = null;
      this.problem('gateway-timeout', 'the call ran past its grpc-timeout', f.closeAfter);
      this.release();
      return;
    }
    if (!f.res.headersSent) {
      this.held = null; // (a held response that broke off: nothing of it reached the client)
      // An unrequested 100 Continue (see UNDICI_REFUSED_100) is an answer undici cannot read, not
      // a connection that broke: neither sent again on a fresh connection (its bytes made it look
      // kept-alive) nor retried (the target answers the same): 502 invalid-upstream-response.
      const refused100 = code === 'UND_ERR_SOCKET' && err.message === UNDICI_REFUSED_100 && this.status === 0;
      const refused101 = code === 'UND_ERR_SOCKET' && err.message === UNDICI_REFUSED_101 && this.status === 0;
      const kind = refused100 || refused101 ? null : CONNECT_FAILURES.has(code) || connectFailed(err) || refusedStream(code, err) || unprocessedStream(err) ? 'connect-error' : code === 'UND_ERR_HEADERS_TIMEOUT' ? 'timeout' : RESETS.has(code) || (f.service.h2Upstream && h2StreamLost(code)) ? 'reset' : null;
      const t = this.target;
      if (t !== null && kind === 'reset' && this.status === 0 && !this.staleRetried && onReusedConnection(err) && this.mayReplay()) {
        // A kept-alive connection that broke before any answer: the origin most likely closed
        // it idle just as the request went out. An idempotent request goes once more on another
        // connection, neither counted against `retries` nor charged to the target (nginx does
        // the same for a cached connection).
        this.staleRetried = true;
        this.attempts--;
        this.endAttempt(null);
        this.endSpan(null, code);
        setImmediate(() => this.attempt());
        return;
      }
      // An attempt that failed before any response: the target is charged for it.
      if (t !== null) this.endAttempt(false);
      this.endSpan(null, code || 'error');
      if (t !== null && kind !== null && this.mayRetry(kind)) {
        (this.tried ??= []).push(t);
        // Leave undici's callback stack before dispatching again.
        this.retryLater();
        return;
      }
      this.finished = true;
      if (refusedStream(code, err) && isHttp2(f.res) && (f.plugins === null || f.plugins.chain.response.length === 0)) {
        // Nothing was processed upstream (RFC 9113 §8.7) and it is not sent again here: an
        // HTTP/2 client is told so as it came (RST_STREAM REFUSED_STREAM), and may send it again
        // whatever its method (grpc-js retries such a call transparently; a 502 or UNAVAILABLE
        // would read as processed). Logged as the 502 it stands for; gRPC's UNAVAILABLE.
        this.outcome = false;
        markRawAnswered(f.res, 'bad-gateway', 0);
        if (f.exchange !== null && f.grpc) f.exchange.grpcStatus = '14';
        resetResponse(f.res, undefined, h2c.NGHTTP2_REFUSED_STREAM);
        this.release();
        return;
      }
      const [problem, detail] = refusedStream(code, err)
        ? ['bad-gateway' as const, `service "${f.service.name}" refused the request's HTTP/2 stream (REFUSED_STREAM)`]
        : refused100
        ? ['invalid-upstream-response' as const, `service "${f.service.name}" sent a 100 Continue it was not asked for (the gateway's HTTP/1.1 client cannot read past it)`]
        : refused101
          ? ['invalid-upstream-response' as const, `service "${f.service.name}" sent a 101 Switching Protocols to a request that asked for no upgrade`]
          : describeUpstreamError(code, err, f.service, performance.now() >= this.deadline);
      this.outcome = problem !== 'bad-request' ? false : null;
      if (problem === 'bad-request') sendProblem(f.res, 'bad-request', detail, f.requestId, { close: true });
      else this.problem(problem, detail, f.closeAfter);
      this.release();
      return;
    }
    // The response already started: end it as broken, never as complete. A body the target
    // stalled, cut or broke counts against it (passive health, latency) as a failed answer would.
    const t = this.target;
    if (t !== null && (code === 'UND_ERR_BODY_TIMEOUT' || RESETS.has(code) || H2_CUTS.has(code) || code.startsWith('HPE_') || code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH')) {
      const svc = f.service;
      if (svc.health.passive !== null) svc.reporter.passive(t.state.key, false);
      if (svc.balancerName === 'latency') t.state.sample(FAILURE_PENALTY_MS, performance.now());
    }
    this.finished = true;
    this.outcome = false;
    this.release();
    // (HTTP/2: the upstream's RST_STREAM code when it means something to the client, else INTERNAL_ERROR)
    // (a gRPC call by its content type too: to a service declared h2c, grpc-js reads CANCEL as CANCELLED)
    const grpcCall = f.grpcWeb === null && f.grpc;
    const rst = isHttp2(f.res) ? clientRstCode(upstreamRstCode(code, err), grpcCall) : undefined;
    if (f.exchange !== null && f.exchange.grpcStatus === null) this.derivedGrpcStatus(grpcStatusOfRst(rst));
    resetResponse(f.res, err, rst);
  }
}

function describeUpstreamError(code: string, err: Error, service: CompiledService, pastDeadline: boolean): ['bad-gateway' | 'gateway-timeout' | 'bad-request', string] {
  switch (code) {
    case 'UND_ERR_HEADERS_TIMEOUT':
      return ['gateway-timeout', pastDeadline && service.timeouts.total > service.timeouts.response
        ? `service "${service.name}" did not answer within the ${service.timeouts.total} ms deadline`
        : `service "${service.name}" did not answer within ${service.timeouts.response} ms`];
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
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
      return ['bad-gateway', `service "${service.name}" sent a body that does not match its Content-Length`];
    case 'UND_ERR_HEADERS_OVERFLOW':
      return ['bad-gateway', `service "${service.name}" sent response headers larger than ${MAX_RESPONSE_HEADER_BYTES / 1024} KiB`];
    case H2_STREAM_CUT:
      return ['bad-gateway', `service "${service.name}" closed its HTTP/2 stream before the end of its response`];
    default:
      if (code.startsWith('HPE_') || err.name === 'HTTPParserError') {
        return ['bad-gateway', `service "${service.name}" sent an invalid HTTP response`];
      }
      return ['bad-gateway', `service "${service.name}" failed: ${code || 'connection error'}`];
  }
}
