/**
 * One step's HTTP exchange: admission (a service step honours its service's circuit and
 * bulkhead), a target (the service's balancer, skipping down targets; or the url step's own
 * pool), the request with undici's `request` on that target's pool, the response buffered up
 * to the step's cap, decoded (gzip, deflate, br) and parsed as JSON. Failed attempts may be
 * retried (bounded: the step's `retries`, idempotent methods only, the service's retry
 * budget, the composition's deadline), a service step on another target. Every attempt feeds
 * passive health, latency and in-flight counts like a proxied request does.
 */
import { grantSlots } from '../upstream/forward.js';
import { brotliDecompressSync, gunzipSync, inflateRawSync, inflateSync } from 'node:zlib';
import type { Dispatcher, Pool } from 'undici';
import type { CompiledService, Target } from '../config/compile.js';
import type { ServiceState } from '../upstream/state.js';
import type { CompiledStep } from './config.js';

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
  | { ok: true; status: number; headers: Record<string, string>; body: unknown; size: number }
  | { ok: false; status: number | null; error: string; timeout: boolean };

type Kind = 'connect' | 'reset' | 'timeout' | 'status' | 'invalid' | 'aborted' | 'other';
type Attempted = CallResult & { kind?: Kind };

const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND']);
const RESETS = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);
const TIMEOUTS = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);
/** Statuses retried (the answer of a gateway or an overloaded server; 500 is an answer). */
const RETRY_STATUSES = new Set([502, 503, 504]);
/** Latency charged to a target whose attempt failed (as forward.ts does). */
const FAILURE_PENALTY_MS = 5_000;
/** Bytes of an error response read (to keep the connection) before it is cut. */
const DRAIN_LIMIT = 64 * 1024;
const STEP_TIMEOUT = Symbol('step timeout');

const fail = (status: number | null, error: string, kind: Kind, timeout = false): Attempted => ({ ok: false, status, error, timeout, kind });

/** The composition's signal and how to describe its deadline. */
export interface CallContext {
  signal: AbortSignal;
  /** The composition's deadline (ms), for messages. */
  deadlineMs: number;
}

/** Calls a step (its request already rendered): never throws. */
export async function callStep(step: CompiledStep, req: StepRequest, cx: CallContext): Promise<CallResult> {
  if (step.service !== null) return callService(step, step.service, req, cx);
  const u = step.url!;
  let r: Attempted = fail(null, 'not attempted', 'other');
  for (let n = 0; ; n++) {
    r = await attempt(step, u.pool, u.hostHeader, req.path, req, cx, null);
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

async function callService(step: CompiledStep, svc: CompiledService, req: StepRequest, cx: CallContext): Promise<CallResult> {
  const st = svc.state;
  // Admission: the service's circuit, then its bulkhead (a step does not queue: it fails at once).
  let trial = false;
  if (svc.circuit !== null && st.circuit !== 'closed') {
    if (st.circuit === 'open' || st.trials >= svc.circuit.halfOpenRequests) return strip(fail(null, `service "${svc.name}" is failing: its circuit is open`, 'other'));
    st.trials++;
    trial = true;
  }
  let slot = false;
  if (svc.bulkhead !== null) {
    if (st.active >= st.maxConcurrent) {
      if (trial) st.trials--;
      return strip(fail(null, `service "${svc.name}" has ${st.maxConcurrent} requests in flight`, 'other'));
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
        outcome = false;
        return strip(r);
      }
      r = await attempt(step, t.pool, t.hostHeader, joinBase(t.basePath, req.path), req, cx, { svc, t });
      if (r.kind !== 'aborted') outcome = r.ok || (r.status !== null && r.status < 500);
      if (r.ok || !mayRetry(step, req, r, n, cx) || !spendBudget(svc)) return strip(r);
      (tried ??= []).push(t);
    }
  } finally {
    if (trial && st.trials > 0) st.trials--;
    if (slot) {
      st.active--;
      grantSlots(st);
    }
    if (svc.circuit !== null && outcome !== null) svc.reporter.outcome(svc.name, outcome, trial);
  }
}

/** The service's retry budget (as forward.ts spends it): a retry costs one token. */
function spendBudget(svc: CompiledService): boolean {
  const st = svc.state;
  const now = Date.now();
  if (svc.budget.minPerSecond > 0) {
    const cap = Math.max(10, svc.budget.ratio * 100, svc.budget.minPerSecond);
    st.tokens = Math.min(cap, st.tokens + ((now - st.tokensAt) / 1000) * svc.budget.minPerSecond);
  }
  st.tokensAt = now;
  if (st.tokens < 1) return false;
  st.tokens -= 1;
  return true;
}

function codeOf(err: unknown): string {
  const e = err as { code?: string; cause?: { code?: string } };
  return e?.code ?? e?.cause?.code ?? '';
}

/** One attempt on one pool. */
async function attempt(
  step: CompiledStep, pool: Pool, hostHeader: string, path: string, req: StepRequest, cx: CallContext,
  svc: { svc: CompiledService; t: Target } | null,
): Promise<Attempted> {
  if (cx.signal.aborted) return aborted(cx, step);
  // A step with its own timeout gets a signal of its own (linked to the composition's); others
  // use the composition's signal as it is (an AbortController per call is measurable CPU).
  let ac: { signal: AbortSignal } = cx;
  let onAbort: (() => void) | null = null;
  let timer: NodeJS.Timeout | undefined;
  if (step.timeout !== null) {
    const own = new AbortController();
    ac = own;
    onAbort = () => own.abort(cx.signal.reason);
    cx.signal.addEventListener('abort', onAbort, { once: true });
    timer = setTimeout(() => own.abort(STEP_TIMEOUT), step.timeout);
  }
  const started = Date.now();
  const target = svc?.t ?? null;
  if (target !== null) target.state.inflight++;
  let reported = false;
  /** Passive health and latency for the target (service steps). */
  const report = (ok: boolean, status: number | null) => {
    if (reported || svc === null || target === null) return;
    reported = true;
    const s = svc.svc;
    if (s.balancerName === 'latency') target.state.sample(ok || status !== null ? Date.now() - started : FAILURE_PENALTY_MS, Date.now());
    const passive = s.health.passive;
    if (passive !== null) s.reporter.passive(target.state.key, status !== null ? !passive.statuses.has(status) : ok);
  };
  let res: Dispatcher.ResponseData | null = null;
  try {
    const headers: Record<string, string> = { ...req.headers, host: req.headers['host'] ?? hostHeader };
    res = await pool.request({
      path,
      method: req.method as Dispatcher.HttpMethod,
      headers,
      body: req.body,
      signal: ac.signal,
      headersTimeout: svc !== null ? svc.svc.timeouts.response : 0,
      bodyTimeout: svc !== null ? svc.svc.timeouts.read : 0,
    });
    // (destroying the body below makes undici emit an error: it is handled where it matters)
    res.body.on('error', () => {});
    const status = res.statusCode;
    const rh = flatHeaders(res.headers);
    report(true, status);
    if (status < 200 || status > 299) {
      await res.body.dump({ limit: DRAIN_LIMIT }).catch(() => {});
      return fail(status, `answered ${status}`, 'status');
    }
    const declared = Number(rh['content-length']);
    if (Number.isFinite(declared) && declared > step.maxBody) {
      res.body.destroy();
      return fail(status, `response too large (${declared} bytes, over max_body ${step.maxBody})`, 'invalid');
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of res.body as AsyncIterable<Buffer>) {
      size += c.length;
      if (size > step.maxBody) {
        res.body.destroy();
        return fail(status, `response too large (over max_body ${step.maxBody} bytes)`, 'invalid');
      }
      chunks.push(c);
    }
    const parsed = parseJsonBody(Buffer.concat(chunks, size), rh, status, req.method, step.maxBody);
    if (typeof parsed === 'string') return fail(status, parsed, 'invalid');
    return { ok: true, status, headers: rh, body: parsed.value, size };
  } catch (err) {
    if (ac.signal.aborted) {
      if (ac.signal.reason === STEP_TIMEOUT) {
        report(false, null);
        return fail(res?.statusCode ?? null, `did not answer within ${step.timeout} ms`, 'timeout', true);
      }
      return aborted(cx, step, res?.statusCode ?? null);
    }
    const code = codeOf(err);
    report(false, null);
    if (TIMEOUTS.has(code)) {
      const what = code === 'UND_ERR_CONNECT_TIMEOUT' ? 'could not connect in time' : code === 'UND_ERR_BODY_TIMEOUT' ? 'stopped sending its body' : 'did not answer in time';
      return fail(res?.statusCode ?? null, `${what} (${code})`, 'timeout', true);
    }
    if (CONNECT_FAILURES.has(code)) return fail(null, `could not connect (${code})`, 'connect');
    if (RESETS.has(code)) return fail(res?.statusCode ?? null, `connection lost (${code})`, 'reset');
    const msg = (err as Error).message ?? String(err);
    if (/cert|ssl|tls/i.test(code) || /certificate|ssl|tls/i.test(msg)) return fail(null, `TLS failed: ${code || msg}`, 'other');
    if (code.startsWith('HPE_') || code === 'UND_ERR_INFO') return fail(null, `invalid HTTP response (${code})`, 'other');
    return fail(res?.statusCode ?? null, `failed: ${code || msg}`, 'other');
  } finally {
    clearTimeout(timer);
    if (onAbort !== null) cx.signal.removeEventListener('abort', onAbort);
    if (target !== null) target.state.inflight--;
  }
}

function aborted(cx: CallContext, step: CompiledStep, status: number | null = null): Attempted {
  const reason = cx.signal.reason;
  if (reason instanceof ComposeAbort && reason.kind === 'deadline') {
    return fail(status, `was still running when the composition's ${cx.deadlineMs} ms deadline passed`, 'timeout', true);
  }
  return fail(status, `step ${step.name} was stopped (${reason instanceof Error ? reason.message : 'aborted'})`, 'aborted');
}

function flatHeaders(h: Record<string, string | string[] | undefined>): Record<string, string> {
  const out = Object.create(null) as Record<string, string>;
  for (const [k, v] of Object.entries(h)) if (v !== undefined) out[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : v;
  return out;
}

/** The body's JSON value, or why it is not JSON. */
function parseJsonBody(raw: Buffer, headers: Record<string, string>, status: number, method: string, max: number): { value: unknown } | string {
  if (raw.length === 0 && (status === 204 || status === 205 || method === 'HEAD')) return { value: null };
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
  try {
    return { value: JSON.parse(body.toString('utf8')) };
  } catch (e) {
    return `not JSON (${(e as Error).message})`;
  }
}
