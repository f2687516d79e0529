/**
 * One step's HTTP exchange: admission (a service step honours its service's circuit and
 * bulkhead), a target (the service's balancer, skipping down targets; or the url step's own
 * pool), the request dispatched on that target's pool (undici's dispatch API), the response buffered up
 * to the step's cap, decoded (gzip, deflate, br) and parsed as JSON. Failed attempts may be
 * retried (bounded: the step's `retries`, idempotent methods only, the service's retry
 * budget, the composition's deadline), a service step on another target. Every attempt feeds
 * passive health, latency and in-flight counts like a proxied request does.
 */
import { grantSlots, spendRetry } from '../upstream/forward.js';
import { connectFailed } from '../upstream/pools.js';
import { H2_STREAM_CUT } from '../upstream/h2-streams.js';
import { brotliDecompressSync, gunzipSync, inflateRawSync, inflateSync } from 'node:zlib';
import { performance } from 'node:perf_hooks';
import { errors, type Dispatcher, type Pool } from 'undici';
import type { CompiledService, Target } from '../config/compile.js';
import type { CompiledStep } from './config.js';
import { MAX_JSON_DEPTH, parseJson } from '../core/json.js';
import { foreignCharset } from '../core/headers.js';

/** Why the composition's signal fired. */
export class ComposeAbort extends Error {
  constructor(readonly kind: 'deadline' | 'client' | 'settled', message: string) {
    // A reason, not a bug: no stack trace to capture (that was a measurable share of a composition's CPU).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message);
    Error.stackTraceLimit = limit;
    this.name = 'AbortError';
  }
}

export interface StepRequest {
  method: string;
  /** Path and query, before a target's base path. */
  path: string;
  /** Lower-case names; Host is added per target. */
  headers: Record<string, string>;
  body: Buffer | null;
}

export type CallResult =
  /** size: the body's bytes once decoded (a gzip body's inflated length). */
  | { ok: true; status: number; headers: Record<string, string>; body: unknown; size: number }
  | { ok: false; status: number | null; error: string; timeout: boolean };

/** (shed: refused by the service's bulkhead) */
type Kind = 'connect' | 'reset' | 'timeout' | 'status' | 'invalid' | 'aborted' | 'shed' | 'other';
type Attempted = CallResult & { kind?: Kind };

const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'EAI_AGAIN', 'ENOTFOUND']);
/**
 * These end a connection that was made too (the route to the host lost mid-exchange, after the
 * request went out): a connect failure only when the pool's connector says so (connectFailed),
 * as forward.ts decides; otherwise a lost connection.
 */
const UNREACHABLE = new Set(['EHOSTUNREACH', 'ENETUNREACH']);
const RESETS = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);
const TIMEOUTS = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);
/** Statuses retried (the answer of a gateway or an overloaded server; 500 is an answer). */
const RETRY_STATUSES = new Set([502, 503, 504]);
/** Latency charged to a target whose attempt failed (as forward.ts does). */
const FAILURE_PENALTY_MS = 5_000;
/** Bytes of an error response read (to keep the connection) before it is cut. */
const DRAIN_LIMIT = 64 * 1024;

/** (frozen, for results without a response head) */
const NO_HEADERS: Record<string, string> = Object.freeze(Object.create(null) as Record<string, string>);

const fail = (status: number | null, error: string, kind: Kind, timeout = false): Attempted => ({ ok: false, status, error, timeout, kind });

/** The composition's signal and how to describe its deadline. */
export interface CallContext {
  signal: AbortSignal;
  /** The composition's deadline (ms), for messages. */
  deadlineMs: number;
  /** With tracing on: puts the trace context in an attempt's headers, and ends its span. */
  trace?: StepTracer | undefined;
  /** With scaling on: a service step is demand on its service (in flight while it runs, counted when it ends), under the composing route's name. */
  demand?: { meter: StepDemand; route: string } | null | undefined;
}

/** The scaling meter's side a step reports to (src/scaling/meter.ts DemandMeter). */
export interface StepDemand {
  begin(service: string): void;
  record(service: string, route: string, status: number, totalMs: number, shed?: boolean): void;
}

/**
 * Starts one attempt's trace (its CLIENT span, whose context it sets in `headers`); returns
 * what ends it with the status (null: none) and an error type (null: none), or null.
 */
export type StepTracer = (method: string, origin: string, path: string, headers: string[]) => ((status: number | null, error: string | null) => void) | null;

/** Calls a step (its request already rendered): never throws. */
export async function callStep(step: CompiledStep, req: StepRequest, cx: CallContext): Promise<CallResult> {
  if (step.service !== null) return callService(step, step.service, req, cx);
  const u = step.url!;
  let r: Attempted = fail(null, 'not attempted', 'other');
  for (let n = 0; ; n++) {
    r = await attempt(step, u.pool, u.origin, u.hostHeader, req.path, req, cx, null);
    if (r.ok || !mayRetry(step, req, r, n, cx)) return strip(r);
    // A short pause between attempts to the same provider.
    await pause(Math.min(25 * 2 ** n, 200), cx.signal);
  }
}

function strip(r: Attempted): CallResult {
  if (r.ok) return r;
  return { ok: false, status: r.status, error: r.error, timeout: r.timeout };
}

function mayRetry(step: CompiledStep, req: StepRequest, r: Attempted, n: number, cx: CallContext): boolean {
  if (n >= step.retries || cx.signal.aborted || r.ok) return false;
  if (!['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'].includes(req.method)) return false;
  return r.kind === 'connect' || r.kind === 'reset' || r.kind === 'timeout' || (r.kind === 'status' && r.status !== null && RETRY_STATUSES.has(r.status));
}

const pause = (ms: number, signal: AbortSignal) => new Promise<void>((resolve) => {
  if (signal.aborted) return resolve();
  const t = setTimeout(done, ms);
  function done() {
    clearTimeout(t);
    signal.removeEventListener('abort', done);
    resolve();
  }
  signal.addEventListener('abort', done, { once: true });
});

/** `/v1` + `/` -> `/v1`, `/v1` + `/?a` -> `/v1?a`, `/v1` + `/x` -> `/v1/x`. */
function joinBase(base: string, path: string): string {
  if (base === '') return path;
  return path === '/' || path.startsWith('/?') ? base + path.slice(1) : base + path;
}

/**
 * A service step: demand on that service for the scaling meter as a proxied request is (a
 * service called only by compositions was seen idle, and scaled down, to zero with
 * min_replicas: 0, while they kept it busy).
 */
async function callService(step: CompiledStep, svc: CompiledService, req: StepRequest, cx: CallContext): Promise<CallResult> {
  const d = cx.demand;
  if (d == null) return strip(await serviceCall(step, svc, req, cx));
  const start = performance.now();
  d.meter.begin(svc.name);
  let r: Attempted | null = null;
  try {
    r = await serviceCall(step, svc, req, cx);
    return strip(r);
  } finally {
    // (what a proxied request of the same fate would have answered: 502 unreachable, 503 no target or open circuit, 504 timed out, 499 given up)
    const status = r === null ? 502 : r.ok ? r.status : r.status ?? (r.timeout ? 504 : r.kind === 'aborted' ? 499 : r.kind === 'other' || r.kind === 'shed' ? 503 : 502);
    d.meter.record(svc.name, d.route, status, performance.now() - start, r !== null && !r.ok && r.kind === 'shed');
  }
}

async function serviceCall(step: CompiledStep, svc: CompiledService, req: StepRequest, cx: CallContext): Promise<Attempted> {
  const st = svc.state;
  // Admission: the service's circuit, then its bulkhead (a step does not queue: it fails at once).
  let trial = false;
  let period = 0;
  if (svc.circuit !== null && st.circuit !== 'closed') {
    if (st.circuit === 'open' || st.trials >= svc.circuit.halfOpenRequests) return fail(null, `service "${svc.name}" is failing: its circuit is open`, 'other');
    period = st.beginTrial();
    trial = true;
  }
  let slot = false;
  if (svc.bulkhead !== null) {
    if (st.active >= st.maxConcurrent) {
      if (trial) st.endTrial(period);
      return fail(null, `service "${svc.name}" has ${st.maxConcurrent} requests in flight`, 'shed');
    }
    st.active++;
    slot = true;
  }
  if (step.retries > 0) st.tokens = Math.min(st.tokens + svc.budget.ratio, Math.max(10, svc.budget.ratio * 100));
  let r: Attempted = fail(null, 'not attempted', 'other');
  let outcome: boolean | null = null;
  try {
    let tried: Target[] | null = null;
    for (let n = 0; ; n++) {
      const t = svc.balancer.pick('', tried);
      if (t === null) {
        r = fail(null, `service "${svc.name}" has no healthy target`, 'other');
        // (not tried: not the service's failure, as forward.ts judges it; a failed attempt before counts)
        if (n === 0) outcome = null;
        return r;
      }
      r = await attempt(step, t.pool, t.origin, t.hostHeader, joinBase(t.basePath, req.path), req, cx, { svc, t });
      if (r.kind !== 'aborted') outcome = r.ok || (r.status !== null && r.status < 500);
      if (r.ok || !mayRetry(step, req, r, n, cx) || !spendRetry(svc, performance.now())) return r;
      (tried ??= []).push(t);
    }
  } finally {
    // (a trial of an earlier half-open period is no trial of this one: ServiceState.endTrial)
    if (trial) trial = st.endTrial(period);
    if (slot) {
      st.active--;
      grantSlots(st);
    }
    if (svc.circuit !== null && outcome !== null) svc.reporter.outcome(svc.name, outcome, trial);
  }
}

function codeOf(err: unknown): string {
  const e = err as { code?: string; cause?: { code?: string } };
  return e?.code ?? e?.cause?.code ?? '';
}

/** Why the gateway stopped an exchange: the composition's signal fired, or the step's own timeout. */
const STOP_SIGNAL = 1;
const STOP_TIMEOUT = 2;

function latin1(v: Buffer | string | (Buffer | string)[]): string {
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) return v.map((x) => (typeof x === 'string' ? x : x.toString('latin1'))).join(', ');
  return v.toString('latin1');
}

/** Response headers as a lower-case record, repeated names joined with ', '. */
function headersOf(raw: (Buffer | string | (Buffer | string)[])[]): Record<string, string> {
  const out = Object.create(null) as Record<string, string>;
  for (let i = 0; i < raw.length; i += 2) {
    const k = latin1(raw[i]!).toLowerCase();
    const v = latin1(raw[i + 1]!);
    const prev = out[k];
    out[k] = prev === undefined ? v : `${prev}, ${v}`;
  }
  return out;
}

function onStepTimeout(x: StepExchange): void {
  x.stop(STOP_TIMEOUT);
}

/**
 * One attempt's exchange, as undici's dispatch handler: the response buffered up to the step's
 * cap (an error response drained up to DRAIN_LIMIT), one settlement per attempt: an Attempted,
 * or null for a complete 2xx response (then `status`, `headers`, `body()` hold it). It is also
 * the 'abort' listener on the composition's signal (handleEvent).
 */
class StepExchange implements Dispatcher.DispatchHandler {
  /** Settled (resolved): later callbacks are ignored. */
  settled = false;
  /** The final status (>= 200) once the response head came. */
  status: number | null = null;
  headers: Record<string, string> = NO_HEADERS;
  size = 0;
  /** The 2xx body's Content-Length (-1: none, or no body by its status or method). */
  private declared = -1;
  resolve!: (r: Attempted | null) => void;
  private chunks: Buffer[] = [];
  private abortFn: ((err?: Error) => void) | null = null;
  /** A non-2xx response being read (up to DRAIN_LIMIT) to keep the connection. */
  private draining = false;
  /** 0, STOP_SIGNAL or STOP_TIMEOUT: the first reason the gateway stopped the exchange. */
  private stopped = 0;
  private reported = false;
  private readonly started = performance.now();

  constructor(
    private readonly step: CompiledStep,
    private readonly method: string,
    private readonly cx: CallContext,
    private readonly svc: CompiledService | null,
    private readonly target: Target | null,
  ) {}

  /** The composition's signal fired. */
  handleEvent(): void {
    this.stop(STOP_SIGNAL);
  }

  /** Stops the exchange (the signal or the step's timeout): aborted now, or when it connects. */
  stop(why: number): void {
    if (this.settled || this.stopped !== 0) return;
    // (a composition already stopped wins over a timeout, as its signal was seen first)
    if (why === STOP_TIMEOUT && this.cx.signal.aborted) why = STOP_SIGNAL;
    this.stopped = why;
    const abort = this.abortFn;
    if (abort !== null) abort(this.stopReason()); // undici reports it through onError
    if (!this.settled) this.finish(this.failure(null)); // (not connected yet: aborted in onConnect)
  }

  private stopReason(): Error | undefined {
    return this.stopped === STOP_SIGNAL && this.cx.signal.reason instanceof Error ? this.cx.signal.reason : undefined;
  }

  private finish(r: Attempted | null): void {
    if (this.settled) return;
    this.settled = true;
    this.resolve(r);
  }

  /** Passive health and latency for the target (service steps), once. */
  private report(ok: boolean, status: number | null): void {
    const s = this.svc;
    const target = this.target;
    if (this.reported || s === null || target === null) return;
    this.reported = true;
    if (s.balancerName === 'latency') {
      const now = performance.now();
      target.state.sample(ok || status !== null ? now - this.started : FAILURE_PENALTY_MS, now);
    }
    const passive = s.health.passive;
    if (passive !== null) s.reporter.passive(target.state.key, status !== null ? !passive.statuses.has(status) : ok);
  }

  /**
   * Settles with `r` and cuts the exchange once undici is done with what it already read (as
   * request()'s body stream was destroyed, after an await): a response that completed in the
   * same read keeps its connection, one still coming is aborted.
   */
  private cut(r: Attempted): true {
    this.finish(r);
    const abort = this.abortFn;
    if (abort !== null) queueMicrotask(() => abort());
    return true;
  }

  /** The complete 2xx body. */
  body(): Buffer {
    return this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.size);
  }

  onConnect(abort: (err?: Error) => void): void {
    if (this.settled) abort(this.stopReason());
    else this.abortFn = abort;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], _resume: () => void): boolean {
    if (this.settled) return false;
    if (statusCode < 200) return true; // (1xx: ignored)
    this.status = statusCode;
    const h = (this.headers = headersOf(rawHeaders));
    this.report(true, statusCode);
    if (statusCode > 299) {
      // Read a small error body to the end (the connection stays); a declared big one is cut.
      this.draining = true;
      if (this.method !== 'HEAD' && Number(h['content-length']) > DRAIN_LIMIT) return this.cut(fail(statusCode, `answered ${statusCode}`, 'status'));
      return true;
    }
    const declared = Number(h['content-length']);
    if (h['content-length'] !== undefined && statusCode !== 204 && statusCode !== 304 && this.method !== 'HEAD') this.declared = declared;
    // (a HEAD's Content-Length is the GET's: no body comes)
    if (this.declared > this.step.maxBody) {
      return this.cut(fail(statusCode, `response too large (${declared} bytes, over max_body ${this.step.maxBody})`, 'invalid'));
    }
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.settled) return true; // (cut: the rest of this read is dropped, see cut())
    this.size += chunk.length;
    if (this.draining) {
      if (this.size > DRAIN_LIMIT) {
        // Cut at once (as dump() destroyed its body from its 'data' listener).
        this.finish(fail(this.status, `answered ${this.status}`, 'status'));
        this.abortFn?.();
        return false;
      }
      return true;
    }
    if (this.size > this.step.maxBody) return this.cut(fail(this.status, `response too large (over max_body ${this.step.maxBody} bytes)`, 'invalid'));
    this.chunks.push(chunk);
    return true;
  }

  onComplete(_trailers: unknown): void {
    if (this.settled) return;
    // A body short of its Content-Length is broken, whatever ended it (Node ends an HTTP/2
    // stream reset with NO_ERROR or CANCEL as if complete; undici checks HTTP/1.1 itself).
    if (!this.draining && this.declared >= 0 && this.size !== this.declared) {
      return this.finish(fail(this.status, `sent ${this.size} of the ${this.declared} bytes its Content-Length announced`, 'reset'));
    }
    this.finish(this.draining ? fail(this.status, `answered ${this.status}`, 'status') : null);
  }

  onError(err: Error): void {
    if (!this.settled) this.finish(this.failure(err));
  }

  /** What an attempt that failed (or was stopped) before completing reports. */
  private failure(err: unknown): Attempted {
    const status = this.status;
    // (an error response being drained stays what it was: its status)
    if (this.draining) return fail(status, `answered ${status}`, 'status');
    if (this.stopped === STOP_TIMEOUT) {
      this.report(false, null);
      return fail(status, `did not answer within ${this.step.timeout} ms`, 'timeout', true);
    }
    if (this.stopped !== 0 || this.cx.signal.aborted) return aborted(this.cx, this.step, status);
    const code = codeOf(err);
    this.report(false, null);
    if (TIMEOUTS.has(code)) {
      const what = code === 'UND_ERR_CONNECT_TIMEOUT' ? 'could not connect in time' : code === 'UND_ERR_BODY_TIMEOUT' ? 'stopped sending its body' : 'did not answer in time';
      return fail(status, `${what} (${code})`, 'timeout', true);
    }
    if (CONNECT_FAILURES.has(code) || (UNREACHABLE.has(code) && connectFailed(err as Error))) return fail(null, `could not connect (${code})`, 'connect');
    if (RESETS.has(code) || UNREACHABLE.has(code)) return fail(status, `connection lost (${code})`, 'reset');
    // An HTTP/2 stream closed before END_STREAM: reset with NO_ERROR / CANCEL (h2-streams.ts), or
    // with an error code (node's ERR_HTTP2_STREAM_ERROR; Node 22 reports a CANCEL so too).
    if (code === H2_STREAM_CUT || code === 'ERR_HTTP2_STREAM_ERROR') {
      return fail(status, this.declared >= 0 ? `sent ${this.size} of the ${this.declared} bytes its Content-Length announced` : 'closed its HTTP/2 stream before the end of its answer', 'reset');
    }
    const msg = (err as Error)?.message ?? String(err);
    if (/cert|ssl|tls/i.test(code) || /certificate|ssl|tls/i.test(msg)) return fail(null, `TLS failed: ${code || msg}`, 'other');
    if (code.startsWith('HPE_') || code === 'UND_ERR_INFO') return fail(null, `invalid HTTP response (${code})`, 'other');
    return fail(status, `failed: ${code || msg}`, 'other');
  }
}

/** One attempt on one pool. */
async function attempt(
  step: CompiledStep, pool: Pool, origin: string, hostHeader: string, path: string, req: StepRequest, cx: CallContext,
  svc: { svc: CompiledService; t: Target } | null,
): Promise<Attempted> {
  if (cx.signal.aborted) return aborted(cx, step);
  const target = svc?.t ?? null;
  const x = new StepExchange(step, req.method, cx, svc?.svc ?? null, target);
  if (target !== null) target.state.inflight++;
  // The step's headers with this target's Host (unless the step sets its own), as a flat list.
  const headers: string[] = [];
  const rh = req.headers;
  let host = false;
  for (const k in rh) {
    const v = rh[k];
    if (k === 'host') {
      host = true;
      headers.push(k, v ?? hostHeader);
    } else if (v !== undefined) headers.push(k, v);
  }
  if (!host) headers.push('host', hostHeader);
  // (the step's own traceparent / tracestate, if templated, give way to the request's context)
  const endTrace = cx.trace !== undefined ? cx.trace(req.method, origin, path, headers) : null;
  const settled = new Promise<Attempted | null>((resolve) => {
    x.resolve = resolve;
  });
  try {
    // (undici's request() refuses CONNECT this way; dispatch would take it as an upgrade)
    if (req.method === 'CONNECT') x.onError(new errors.InvalidArgumentError('invalid method'));
    else {
      pool.dispatch({
        path,
        method: req.method as Dispatcher.HttpMethod,
        headers,
        body: req.body,
        headersTimeout: svc !== null ? svc.svc.timeouts.response : 0,
        bodyTimeout: svc !== null ? svc.svc.timeouts.read : 0,
      }, x);
    }
  } catch (err) {
    x.onError(err as Error);
  }
  // The composition's signal and the step's own timeout stop the exchange (not needed when
  // it already settled, e.g. refused at once).
  let listening = false;
  let timer: NodeJS.Timeout | undefined;
  if (!x.settled) {
    cx.signal.addEventListener('abort', x);
    listening = true;
    if (step.timeout !== null) timer = setTimeout(onStepTimeout, step.timeout, x);
  }
  let r: Attempted | null;
  try {
    r = await settled;
  } finally {
    clearTimeout(timer);
    if (listening) cx.signal.removeEventListener('abort', x);
    if (target !== null) target.state.inflight--;
  }
  if (endTrace !== null) endTrace(r === null ? x.status : r.status, r === null || r.kind === 'status' ? null : r.kind ?? 'other');
  if (r !== null) return r;
  const status = x.status!;
  const parsed = parseJsonBody(x.body(), x.headers, status, req.method, step.maxBody);
  if (typeof parsed === 'string') return fail(status, parsed, 'invalid');
  return { ok: true, status, headers: x.headers, body: parsed.value, size: parsed.size };
}

function aborted(cx: CallContext, step: CompiledStep, status: number | null = null): Attempted {
  const reason = cx.signal.reason;
  if (reason instanceof ComposeAbort && reason.kind === 'deadline') {
    return fail(status, `was still running when the composition's ${cx.deadlineMs} ms deadline passed`, 'timeout', true);
  }
  return fail(status, `step ${step.name} was stopped (${reason instanceof Error ? reason.message : 'aborted'})`, 'aborted');
}

/** The body's JSON value and its size decoded (what it takes in memory, not on the wire), or why it is not JSON. */
function parseJsonBody(raw: Buffer, headers: Record<string, string>, status: number, method: string, max: number): { value: unknown; size: number } | string {
  if (raw.length === 0 && (status === 204 || status === 205 || method === 'HEAD')) return { value: null, size: 0 };
  let body = raw;
  const enc = (headers['content-encoding'] ?? 'identity').trim().toLowerCase();
  if (enc !== 'identity' && enc !== '') {
    try {
      const opts = { maxOutputLength: max };
      if (enc === 'gzip' || enc === 'x-gzip') body = gunzipSync(raw, opts);
      else if (enc === 'br') body = brotliDecompressSync(raw, opts);
      else if (enc === 'deflate') {
        try {
          body = inflateSync(raw, opts);
        } catch (e) {
          if ((e as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') throw e;
          body = inflateRawSync(raw, opts);
        }
      } else return `not JSON (unsupported content-encoding ${enc})`;
    } catch (e) {
      if ((e as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE' || e instanceof RangeError) return `response too large (over max_body ${max} bytes once decoded)`;
      return `not JSON (its ${enc} encoding is broken)`;
    }
  }
  const ct = headers['content-type'];
  if (ct !== undefined && !/json/i.test(ct.split(';')[0]!)) return `not JSON (content-type ${ct.split(';')[0]!.trim()})`;
  if (body.length === 0) return 'not JSON (empty body)';
  // (read as UTF-8, RFC 8259 §8.1: a utf-16 or utf-7 body would be read as another text)
  const charset = foreignCharset(ct, body);
  if (charset !== null) return `not JSON in UTF-8 (charset ${JSON.stringify(charset)})`;
  // (nesting bounded, UTF-8 checked, no number past a double's range: it would go on as null;
  // the message names a position, never the bytes)
  const r = parseJson(body, MAX_JSON_DEPTH, true);
  return r.ok ? { value: r.value, size: body.length } : `not JSON (${r.message})`;
}
