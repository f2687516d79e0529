/**
 * Runs a composition: the steps as a dependency graph (a step starts once the steps it needs
 * have finished; independent steps run in parallel), each step's request rendered from the
 * client's request and earlier responses, the results merged into one JSON object.
 *
 * Outcomes, never a silent 200 with holes:
 * - every step ok: 200 with the merged body;
 * - an optional step failed, or a step with a fallback: 200; the failed step's key is absent
 *   (or holds its fallback), `Turnpike-Partial: <steps>` and `errors: [{step, status, error}]`
 *   (`fallback: true` when the fallback stood in) say which and why;
 * - a required step (without fallback) failed: the composition stops (running steps are
 *   aborted) and a ProblemError is thrown: step-timeout (504) for a timeout, step-failed (502)
 *   otherwise, with `step` and `step_status` (null when no response came).
 */
import type { CompiledRoute } from '../config/compile.js';
import { ProblemError } from '../core/problem.js';
import { MAX_JSON_DEPTH, parseJson } from '../core/json.js';
import type { Logger } from '../core/log.js';
import type { BufferedResponse } from '../plugins/types.js';
import { ComposeAbort, callStep, type CallResult, type StepRequest, type StepDemand, type StepTracer } from './call.js';
import type { CompiledCompose, CompiledStep } from './config.js';
import { mergeValues, type StepValue } from './merge.js';
import { TemplateError, decodeQueryText, dig, rawQueryParams, renderJson, renderPath, renderString, type Lookup, type Source } from './template.js';

export interface CompositionInput {
  route: CompiledRoute;
  /** The client's method and normalized path (informational). */
  method: string;
  path: string;
  /** The raw query string with its '?', or ''. */
  query: string;
  /** Path parameters as the router captured them (still percent-encoded). */
  params: Record<string, string>;
  /** A client request header by lower-case name (joined when repeated). */
  headers: (name: string) => string | undefined;
  /** The client's body (read by the core when route.compose.readsBody), or null. */
  body: Buffer | null;
  requestId: string;
  /** Fires when the client goes away: every running step is aborted. */
  signal: AbortSignal;
  /** Held while the composition runs (its pools stay open), when given. */
  snapshot?: { retain(): void; release(): void };
  /**
   * Who is calling, as the auth plugins decided (for {consumer.*} templates): the consumer
   * (null: none) and the identity (e.g. a JWT subject without a configured consumer).
   * Omitted or null: {consumer.*} templates have no value.
   */
  auth?: { consumer: { id: string; name: string; groups: readonly string[] } | null; identity: string | null } | null;
  /** With tracing on: each step's attempts are spans of the request's trace, their context sent. */
  trace?: StepTracer;
  /** With scaling on: where a service step counts as demand on its service. */
  demand?: StepDemand | null;
  /** Where a step's unexpected failure is told (the client only learns "internal error"). */
  log?: Logger | undefined;
}

/** One step's result, as later templates and the merge see it. */
interface StepOutcome {
  ok: boolean;
  status: number | null;
  headers: Record<string, string>;
  /** The response body (raw JSON), or the fallback. */
  body: unknown;
  /** What goes into the composed body: the selected member, or the fallback. */
  value: unknown;
  error?: string;
  timeout?: boolean;
  fellBack?: boolean;
  /** The step could not be rendered from the client's request (a missing or unusable value). */
  client?: boolean;
}

const NO_HEADERS: Record<string, string> = Object.freeze(Object.create(null) as Record<string, string>);

/** A route parameter, percent-decoded; one whose bytes are not UTF-8 is the client's error (re-encoding its text would double-encode it: %ff -> %25FF). */
function decodeParam(name: string, v: string): string {
  try {
    return decodeURIComponent(v);
  } catch {
    throw new ProblemError('bad-request', `the path parameter "${name}" is not valid UTF-8 once percent-decoded`);
  }
}

export async function runComposition(input: CompositionInput): Promise<BufferedResponse> {
  const compose = input.route.compose;
  if (compose === null) throw new Error(`route ${input.route.name} does not compose`);
  if (input.signal.aborted) throw new ComposeAbort('client', 'the client closed the connection');
  let clientBody: unknown;
  if (compose.readsBody && input.body !== null && input.body.length > 0) {
    if (input.body.length > compose.maxRequestBody) throw new ProblemError('payload-too-large', `the request body is larger than ${compose.maxRequestBody} bytes`);
    const parsed = parseJson(input.body, MAX_JSON_DEPTH, true);
    if (!parsed.ok) throw new ProblemError('bad-request', `the request body is not valid JSON (this route reads it): ${parsed.message}`);
    clientBody = parsed.value;
  }
  const params = Object.create(null) as Record<string, string>;
  for (const [k, v] of Object.entries(input.params)) params[k] = v.includes('%') ? decodeParam(k, v) : v;

  input.snapshot?.retain();
  const ac = new AbortController();
  const deadline = setTimeout(() => ac.abort(new ComposeAbort('deadline', `the composition's ${compose.timeout} ms deadline passed`)), compose.timeout);
  const onClient = () => ac.abort(new ComposeAbort('client', 'the client closed the connection'));
  input.signal.addEventListener('abort', onClient, { once: true });
  let complete = false;
  try {
    const results = await schedule(compose, input, ac, { params, query: null, clientBody });
    complete = true; // (every step has finished: nothing is left to abort)
    return respond(compose, results);
  } finally {
    clearTimeout(deadline);
    input.signal.removeEventListener('abort', onClient);
    if (!complete && !ac.signal.aborted) ac.abort(new ComposeAbort('settled', 'the composition is over'));
    input.snapshot?.release();
  }
}

interface RequestData {
  params: Record<string, string>;
  /** The client's query parameters (first values, still encoded), parsed when a template first reads one (most compositions never do). */
  query: Map<string, string> | null;
  clientBody: unknown;
}

/** Runs the steps in dependency order; resolves with every outcome, or rejects at the first required failure. */
function schedule(compose: CompiledCompose, input: CompositionInput, ac: AbortController, data: RequestData): Promise<(StepOutcome | undefined)[]> {
  const steps = compose.steps;
  const results: (StepOutcome | undefined)[] = new Array(steps.length);
  const waiting = steps.map((s) => s.deps.length);
  let remaining = steps.length;
  let settled = false;
  return new Promise((resolve, reject) => {
    const stop = (err: unknown) => {
      if (settled) return;
      settled = true;
      if (!ac.signal.aborted) ac.abort(new ComposeAbort('settled', 'another step failed'));
      reject(err);
    };
    ac.signal.addEventListener('abort', () => {
      const r = ac.signal.reason;
      if (r instanceof ComposeAbort && r.kind === 'client') stop(r);
    }, { once: true });
    const finish = (i: number, out: StepOutcome) => {
      if (settled) return;
      results[i] = out;
      remaining--;
      const step = steps[i]!;
      if (!out.ok && !out.fellBack && !step.optional) return stop(problemFor(step, out));
      for (const d of compose.dependents[i]!) if (--waiting[d]! === 0) start(d);
      if (remaining === 0) {
        settled = true;
        resolve(results);
      }
    };
    const start = (i: number) => {
      runStep(compose, steps[i]!, input, ac, data, results).then(
        (out) => finish(i, out),
        (err: unknown) => {
          // (a bug's message, which may name internals, goes to the log, not to the client)
          input.log?.error({ err, route: input.route.name, step: steps[i]!.name, request_id: input.requestId }, 'composition step failed unexpectedly');
          finish(i, failed(steps[i]!, null, 'internal error'));
        },
      );
    };
    for (let i = 0; i < steps.length; i++) if (waiting[i] === 0) start(i);
  });
}

function problemFor(step: CompiledStep, out: StepOutcome): ProblemError {
  // The client's fault (e.g. a query parameter the step needs is missing): 400, not a 502 that
  // blames a backend that was never called.
  if (out.client) return new ProblemError('bad-request', `the request cannot be composed: ${out.error}`, { step: step.name });
  const extra = { step: step.name, step_status: out.status };
  return out.timeout
    ? new ProblemError('step-timeout', `step "${step.name}" timed out: ${out.error}`, extra)
    : new ProblemError('step-failed', `step "${step.name}" failed: ${out.error}`, extra);
}

/** A failed outcome; with a fallback, the fallback stands in for the response. */
function failed(step: CompiledStep, status: number | null, error: string, timeout = false): StepOutcome {
  if (step.fallback !== null) {
    return { ok: false, status, headers: NO_HEADERS, body: step.fallback.value, value: step.fallback.value, error, timeout, fellBack: true };
  }
  return { ok: false, status, headers: NO_HEADERS, body: undefined, value: undefined, error, timeout };
}

async function runStep(
  compose: CompiledCompose, step: CompiledStep, input: CompositionInput, ac: AbortController, data: RequestData, results: readonly (StepOutcome | undefined)[],
): Promise<StepOutcome> {
  for (const d of step.deps) {
    const r = results[d]!;
    if (!r.ok && !r.fellBack) return failed(step, null, `needs step "${compose.steps[d]!.name}", which failed`);
  }
  if (ac.signal.aborted) {
    const r = ac.signal.reason;
    const deadline = r instanceof ComposeAbort && r.kind === 'deadline';
    return failed(step, null, deadline ? `not started before the composition's ${compose.timeout} ms deadline` : 'stopped', deadline);
  }
  const lookup: Lookup = (src: Source) => {
    switch (src.kind) {
      case 'param': return data.params[src.name];
      case 'query': {
        const raw = (data.query ??= rawQueryParams(input.query.startsWith('?') ? input.query.slice(1) : input.query)).get(src.name);
        if (raw === undefined) return undefined;
        const v = decodeQueryText(raw);
        // (re-encoding U+FFFD would send the step another value than the client's)
        if (v === null) throw new TemplateError(`the query parameter "${src.name}" is not valid UTF-8 once percent-decoded`, true);
        return v;
      }
      case 'header': return input.headers(src.name);
      case 'body': return data.clientBody === undefined ? undefined : dig(data.clientBody, src.path);
      case 'consumer': {
        const a = input.auth;
        if (a == null) return undefined;
        if (src.field === 'identity') return a.identity ?? undefined;
        if (a.consumer === null) return undefined;
        return src.field === 'groups' ? (a.consumer.groups.length ? a.consumer.groups.join(',') : undefined) : a.consumer[src.field];
      }
      case 'step': {
        const i = compose.steps.findIndex((s) => s.name === src.step);
        const r = results[i];
        if (r === undefined || (!r.ok && !r.fellBack)) return undefined;
        if (src.part === 'status') return r.status ?? undefined;
        if (src.part === 'headers') return r.headers[src.name];
        return dig(r.body, src.path);
      }
    }
  };
  let req: StepRequest;
  try {
    req = render(step, input.requestId, lookup);
  } catch (err) {
    if (err instanceof TemplateError) {
      const out = failed(step, null, err.message);
      if (err.client) out.client = true;
      return out;
    }
    throw err;
  }
  const cacheKey = step.cache !== null ? cacheKeyOf(step, req) : '';
  let res: CallResult | undefined;
  if (step.cache !== null) {
    const hit = step.cache.get(cacheKey);
    if (hit !== undefined) res = { ok: true, status: hit.status, headers: hit.headers as Record<string, string>, body: hit.body, size: hit.size };
  }
  if (res === undefined) {
    res = await callStep(step, req, { signal: ac.signal, deadlineMs: compose.timeout, trace: input.trace, demand: input.demand ? { meter: input.demand, route: input.route.name } : null });
    const keep = res.ok && step.cache !== null ? keepFor(res.headers, step.cache.ttl) : 0;
    if (res.ok && keep > 0) step.cache!.set(cacheKey, { status: res.status, headers: res.headers, body: res.body, size: res.size }, keep);
  }
  if (!res.ok) return failed(step, res.status, res.error, res.timeout);
  let value = res.body;
  if (step.select !== null) {
    value = dig(res.body, step.select);
    if (value === undefined) return failed(step, res.status, `the response has no member ${step.select.join('.')} (select)`);
  }
  return { ok: true, status: res.status, headers: res.headers, body: res.body, value };
}

/**
 * How long (ms) a step's answer may be kept in its cache (0: not at all): never when its
 * Cache-Control says no-store, private (the step cache is shared by every client of the route)
 * or no-cache (kept answers are never revalidated); else the step's ttl, at most what is left of
 * the answer's s-maxage or max-age (less its Age). Every line counts (they come joined).
 */
function keepFor(headers: Readonly<Record<string, string>>, ttl: number): number {
  const cc = headers['cache-control'];
  if (cc === undefined) return ttl;
  if (/(^|,)\s*(no-store|private|no-cache)\s*(=|,|$)/i.test(cc)) return 0;
  const m = /(?:^|,)\s*s-maxage\s*=\s*"?([0-9]{1,10})"?\s*(?:,|$)/i.exec(cc) ?? /(?:^|,)\s*max-age\s*=\s*"?([0-9]{1,10})"?\s*(?:,|$)/i.exec(cc);
  if (m === null) return ttl;
  const age = /^\s*([0-9]{1,10})\s*$/.exec(headers['age'] ?? '');
  return Math.max(0, Math.min(ttl, (Number(m[1]) - (age === null ? 0 : Number(age[1]))) * 1000));
}

/** The step's request for this client request. Throws TemplateError. */
function render(step: CompiledStep, requestId: string, lookup: Lookup): StepRequest {
  let path = renderPath(step.path, lookup);
  let qs = step.queryText !== null ? renderString(step.queryText, 'query', lookup) : '';
  for (const [k, t] of step.query) qs += `${qs ? '&' : ''}${k}=${renderString(t, 'query', lookup)}`;
  if (qs) path += `?${qs}`;
  const headers: Record<string, string> = Object.create(null) as Record<string, string>;
  headers['accept'] = 'application/json';
  headers['accept-encoding'] = 'gzip, deflate, br';
  headers['x-request-id'] = requestId;
  headers['via'] = '1.1 turnpike';
  if (step.authorization !== null) headers['authorization'] = step.authorization;
  for (const [name, t] of step.headers) {
    const v = renderString(t, 'header', lookup);
    if (v === '') delete headers[name];
    else headers[name] = v;
  }
  let body: Buffer | null = null;
  if (step.body !== null) {
    body = Buffer.from(JSON.stringify(renderJson(step.body, lookup)) ?? 'null');
    headers['content-type'] ??= 'application/json';
  }
  return { method: step.method, path, headers, body };
}

/** Cache key: method, where, final path and query, headers (but the request id) and body. */
function cacheKeyOf(step: CompiledStep, req: StepRequest): string {
  const where = step.service !== null ? `service:${step.service.name}` : step.url!.origin;
  const h = Object.keys(req.headers).filter((k) => k !== 'x-request-id').sort().map((k) => `${k}:${req.headers[k]}`).join('\n');
  return `${req.method} ${where}${req.path}\n${h}\n\n${req.body?.toString('latin1') ?? ''}`;
}

function respond(compose: CompiledCompose, results: readonly (StepOutcome | undefined)[]): BufferedResponse {
  // Every step failed (all optional, none with a fallback): there is no answer, only errors — a
  // 502 (504 when the first one timed out) that lists them, not a 200 a client reads as data.
  if (results.every((r) => !r!.ok && !r!.fellBack)) {
    const first = problemFor(compose.steps[0]!, results[0]!);
    const errors = compose.steps.map((step, i) => ({ step: step.name, status: results[i]!.status, error: results[i]!.error }));
    throw new ProblemError(first.code, `every step failed: ${compose.steps.map((st) => st.name).join(', ')}`, { ...first.extra, errors });
  }
  const values: StepValue[] = [];
  const errors: Record<string, unknown>[] = [];
  const partial: string[] = [];
  compose.steps.forEach((step, i) => {
    const r = results[i]!;
    if (!r.ok) {
      partial.push(step.name);
      errors.push({ step: step.name, status: r.status, error: r.error, ...(r.fellBack ? { fallback: true } : {}) });
    }
    if ((r.ok || r.fellBack) && !step.hidden) values.push({ step, value: r.value });
  });
  const out = mergeValues(compose.merge, values);
  if (errors.length) out['errors'] = errors;
  const headers = ['content-type', 'application/json'];
  if (partial.length) headers.push('turnpike-partial', partial.join(', '));
  let text: string;
  try {
    text = JSON.stringify(out);
  } catch (e) {
    // (each response is bounded to MAX_JSON_DEPTH levels: a last guard, not a 500)
    if (e instanceof RangeError) throw new ProblemError('invalid-upstream-response', 'the composed body is nested too deeply');
    throw e;
  }
  return { status: 200, headers, body: Buffer.from(text), origin: 'gateway', composed: true };
}
