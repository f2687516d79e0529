/**
 * OpenTelemetry tracing: W3C trace context (traceparent / tracestate) read from the client and
 * sent to the upstream, a SERVER span per routed request, an INTERNAL span for each plugin
 * phase that waited (JWKS fetch, token introspection, Redis), a CLIENT span per upstream
 * attempt, exported in batches over OTLP/HTTP (JSON). Sampling: parent-based, new traces at
 * `sample`. Only built when tracing is enabled: with it off the request path never gets here.
 */
import type { Context, Span, TextMapSetter, Tracer } from '@opentelemetry/api';
import type { W3CTraceContextPropagator } from '@opentelemetry/core';
import type { BasicTracerProvider, Sampler, SamplingResult, SpanExporter } from '@opentelemetry/sdk-trace-base';
import { lazy } from '../core/lazy.js';
import { performance } from 'node:perf_hooks';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { VERSION } from '../version.js';
import type { Exchange } from './exchange.js';
import type { TracingSettings } from './settings.js';
import type { Logger } from '../core/log.js';
import { redactUrl } from '../core/url-secrets.js';
import { paramName, splitQuery } from '../core/query.js';
import type { StepTracer } from '../compose/call.js';

const NOOP = () => {};

// The SDK (some 250 modules) is loaded by the first tracer, not by every start. (CommonJS
// whether imported or required: Node takes their exports' default condition, one copy.)
const otelApi = lazy<typeof import('@opentelemetry/api')>('@opentelemetry/api');
const otelCore = lazy<typeof import('@opentelemetry/core')>('@opentelemetry/core');
const otelSdk = lazy<typeof import('@opentelemetry/sdk-trace-base')>('@opentelemetry/sdk-trace-base');
const otelOtlp = lazy<typeof import('@opentelemetry/exporter-trace-otlp-http')>('@opentelemetry/exporter-trace-otlp-http');
const otelResources = lazy<typeof import('@opentelemetry/resources')>('@opentelemetry/resources');

/** The longest span attribute value (characters; OpenTelemetry's default is no limit). */
export const MAX_ATTRIBUTE_LENGTH = 4096;

/** The methods OpenTelemetry's HTTP semantic conventions know (RFC 9110 and PATCH); others are _OTHER. */
const KNOWN_METHODS = new Set(['CONNECT', 'DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT', 'TRACE']);

const PATH_PARAM = /;([^;/?#=]*)(=[^;/?#]*)?/g;

/**
 * A path whose `;name=value` path parameters (before any query) read `mask` where the name is a
 * secret one (`secret`: lower-case names, compared decoded and case-insensitively; the session
 * ids of URL rewriting among them: `/cart;jsessionid=...` is a session as good as its cookie).
 */
export function redactPathParams(path: string, secret: ReadonlySet<string>, mask = 'REDACTED'): string {
  if (!path.includes(';')) return path;
  const q = path.indexOf('?');
  const head = q === -1 ? path : path.slice(0, q);
  const out = head.replace(PATH_PARAM, (m, name: string) => {
    const n = paramName(name).toLowerCase();
    return secret.has(n) ? `;${name}=${mask}` : m;
  });
  return q === -1 ? out : out + path.slice(q);
}

/**
 * A path whose query values of secret parameters (API keys, tokens, signatures) read REDACTED
 * (or `mask`), as OpenTelemetry's semantic conventions ask of url.full. Names are compared
 * decoded and case-insensitively (`secret` holds lower-case names). A `;` separates parameters
 * here as a `&` does: Rack before 3, Python's parse_qs before 3.9.2 and others read
 * `?a=1;apikey=K` as two parameters, so its key is a secret that reaches them.
 */
export function redactQuery(path: string, secret: ReadonlySet<string>, mask = 'REDACTED'): string {
  const q = path.indexOf('?');
  if (q === -1 || secret.size === 0) return path;
  // (with the separators at the odd indexes)
  const parts = splitQuery(path.slice(q + 1));
  let changed = false;
  for (let i = 0; i < parts.length; i += 2) {
    if (secret.has(paramName(parts[i]!).toLowerCase())) {
      const eq = parts[i]!.indexOf('=');
      parts[i] = `${eq === -1 ? parts[i]! : parts[i]!.slice(0, eq)}=${mask}`;
      changed = true;
    }
  }
  return changed ? `${path.slice(0, q + 1)}${parts.join('')}` : path;
}

/**
 * Whether a tracestate (list lines joined with ',') is valid as a whole (W3C Trace Context §3.3):
 * at most 32 members, no key twice, every key and value well-formed, at most 512 characters;
 * empty members (and OWS around members) are allowed. OpenTelemetry's TraceState repairs a list
 * instead (skips bad and repeated members, truncates): here a list it had to repair is refused
 * whole, as the spec asks. False too when no member is left (nothing to propagate).
 */
export function validTraceState(raw: string): boolean {
  let members = 0;
  for (const m of raw.split(',')) if (m.trim() !== '') members++;
  if (members === 0 || members > 32) return false;
  const parsed = new (otelCore().TraceState)(raw);
  // TraceState keeps the valid members, each key once, up to 32 and 512 characters: any member
  // it left out was invalid, repeated, or past the length limit.
  const kept = parsed.serialize();
  let n = 0;
  for (let i = kept.indexOf('='); i !== -1; i = kept.indexOf('=', i + 1)) n++;
  return n === members && kept.length <= 512;
}

/**
 * A share of requests drawn at random. For a client's trace when its sampled flag is not trusted:
 * TraceIdRatioBasedSampler's verdict is a function of the trace id, which that client chose (an
 * id whose four 32-bit words XOR to a small number, 000...001, is recorded at any ratio above 0),
 * and any id it once saw recorded would be recorded every time.
 */
class RandomRatioSampler implements Sampler {
  private readonly yes: SamplingResult = { decision: otelSdk().SamplingDecision.RECORD_AND_SAMPLED };
  private readonly no: SamplingResult = { decision: otelSdk().SamplingDecision.NOT_RECORD };
  constructor(private readonly ratio: number) {}
  shouldSample(): SamplingResult {
    return Math.random() < this.ratio ? this.yes : this.no;
  }
  toString(): string {
    return `RandomRatio{${this.ratio}}`;
  }
}

/** Sets traceparent / tracestate in a flat header list (name, value, ...) whose last pair is Host. */
const setter: TextMapSetter<string[]> = {
  set: (list, key, value) => {
    if (value === '') return; // an empty tracestate is never sent
    for (let i = 0; i < list.length - 2; i += 2) {
      if (list[i] === key) {
        list[i + 1] = value;
        return;
      }
    }
    list.splice(list.length - 2, 0, key, value);
  },
};

export class Tracing {
  private readonly provider: BasicTracerProvider;
  private readonly tracer: Tracer;
  private readonly api = otelApi();
  private readonly propagator: W3CTraceContextPropagator = new (otelCore().W3CTraceContextPropagator)();
  private readonly secretParams: ReadonlySet<string>;

  /** The connections to the collector (made with the first export). */
  private agent: HttpAgent | null = null;

  /** Spans in batches the collector did not take (dropped: the SDK does not export a batch twice). */
  dropped = 0;

  constructor(s: TracingSettings, log?: Logger) {
    this.secretParams = new Set(s.redactQuery ?? []);
    // The exporter's own keep-alive agent outlives its shutdown (which leaves its connections to
    // the collector open): this one is destroyed in close(), so a reload that replaces the
    // tracer does not leave a connection (two file descriptors, a timer) behind each time.
    const otlp = new (otelOtlp().OTLPTraceExporter)({
      url: s.endpoint, headers: s.headers, timeoutMillis: 5000,
      httpAgentOptions: (protocol) => (this.agent = protocol === 'https:' ? new HttpsAgent({ keepAlive: true }) : new HttpAgent({ keepAlive: true })),
    });
    // A batch the collector refuses or never answers is lost: said once per outage, counted.
    let failing = false;
    const exporter: SpanExporter = {
      export: (spans, done) => otlp.export(spans, (r) => {
        if (r.code !== otelCore().ExportResultCode.SUCCESS) {
          this.dropped += spans.length;
          if (!failing) {
            failing = true;
            log?.warn({ endpoint: redactUrl(s.endpoint), spans: spans.length, err: r.error?.message }, 'tracing: the collector did not take a batch of spans (dropped); said once until an export succeeds');
          }
        } else if (failing) {
          failing = false;
          log?.info({ endpoint: redactUrl(s.endpoint), dropped_total: this.dropped }, 'tracing: the collector takes spans again');
        }
        done(r);
      }),
      shutdown: () => otlp.shutdown(),
      forceFlush: () => otlp.forceFlush(),
    };
    const { BasicTracerProvider, BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler } = otelSdk();
    this.provider = new BasicTracerProvider({
      resource: otelResources().resourceFromAttributes({ 'service.name': s.serviceName, 'service.version': VERSION }),
      // A client's parent is followed (its sampled flag decides) unless it is not trusted: then
      // the ratio decides for remote parents too, drawn at random, not from the trace id the
      // client chose (a client cannot force recording).
      sampler: new ParentBasedSampler(s.trustIncomingSampled === false
        ? { root: new TraceIdRatioBasedSampler(s.sample), remoteParentSampled: new RandomRatioSampler(s.sample), remoteParentNotSampled: new RandomRatioSampler(s.sample) }
        : { root: new TraceIdRatioBasedSampler(s.sample) }),
      // A client's 60 kB path or header would be a 60 kB attribute in every span of its request
      // (and of the batch the collector must take): string values are cut by the SDK.
      spanLimits: { attributeValueLengthLimit: MAX_ATTRIBUTE_LENGTH },
      // Bounded: past 4096 queued spans new ones are dropped (never unbounded memory when the collector is down).
      spanProcessors: [new BatchSpanProcessor(exporter, { maxQueueSize: 4096, maxExportBatchSize: 512, scheduledDelayMillis: 1000, exportTimeoutMillis: 5000 })],
    });
    this.tracer = this.provider.getTracer('turnpike', VERSION);
  }

  /**
   * The request's SERVER span, child of the client's traceparent when it sent a valid one.
   * `pattern`: the route's matched `paths` entry (http.route); `scheme`: how the client came in.
   */
  startRequest(ex: Exchange, method: string, pattern: string, scheme: 'http' | 'https'): void {
    const carrier = ex.traceCarrier;
    let parent = this.api.ROOT_CONTEXT;
    if (carrier !== null && carrier.traceparent) {
      const state = carrier.tracestate;
      if (state !== undefined && !validTraceState(state)) delete carrier.tracestate;
      parent = this.propagator.extract(this.api.ROOT_CONTEXT, carrier, this.api.defaultTextMapGetter);
    }
    const route = ex.route!;
    // Semantic conventions: the name is `{method} {http.route}` (a low-cardinality template, not
    // the route's name); a method they do not know is _OTHER (the span name says HTTP), the
    // method as sent goes in http.request.method_original (so no attribute is unbounded).
    const known = KNOWN_METHODS.has(method);
    const span = (ex.span = this.tracer.startSpan(`${known ? method : 'HTTP'} ${pattern}`, { kind: this.api.SpanKind.SERVER, startTime: ex.start }, parent));
    // An unsampled request gets a non-recording span: nothing more to build for it.
    if (!span.isRecording()) return;
    // Host (checked by the request path): a name or [IPv6], then an optional port.
    const host = ex.host;
    const close = host.charCodeAt(0) === 0x5b /* [ */ ? host.indexOf(']') : -1;
    const colon = host.indexOf(':', close + 1);
    const address = close !== -1 ? host.slice(1, close) : colon === -1 ? host : host.slice(0, colon);
    span.setAttributes({
      'http.request.method': known ? method : '_OTHER',
      'url.path': redactPathParams(ex.path, this.secretParams),
      'url.scheme': scheme,
      'http.route': pattern,
      'server.port': colon === -1 ? (scheme === 'https' ? 443 : 80) : Number(host.slice(colon + 1)),
      'client.address': ex.clientIp,
      'turnpike.route': route.name,
      'turnpike.service': route.service.name,
      'turnpike.request_id': ex.requestId,
    });
    if (address !== '') span.setAttribute('server.address', address);
    if (!known) span.setAttribute('http.request.method_original', method);
    // (semantic conventions: url.query when one was sent, without the '?', secret values scrubbed)
    if (ex.query.length > 1) span.setAttribute('url.query', redactQuery(ex.query, this.secretParams).slice(1));
  }

  private context(ex: Exchange): Context {
    return this.api.trace.setSpan(this.api.ROOT_CONTEXT, ex.span!);
  }

  /**
   * The request's context in `headers` for an upstream exchange without a CLIENT span of its own
   * (a WebSocket handshake): the upstream continues the trace under the SERVER span.
   */
  inject(ex: Exchange, headers: string[]): void {
    this.propagator.inject(this.context(ex), headers, setter);
  }

  /** A span for a plugin phase that waits; returns its end (a no-op for an unsampled request). */
  pluginSpan(ex: Exchange, plugin: string, phase: string): (error?: unknown) => void {
    if (!ex.span!.isRecording()) return NOOP;
    const span = this.tracer.startSpan(`plugin ${plugin} ${phase}`, { kind: this.api.SpanKind.INTERNAL, attributes: { 'turnpike.plugin': plugin, 'turnpike.phase': phase } }, this.context(ex));
    return (error) => {
      if (error !== undefined) span.setStatus({ code: this.api.SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
      span.end();
    };
  }

  /**
   * A CLIENT span for one upstream attempt; its context goes upstream in `headers`. An unsampled
   * request sends its own (non-recording) context and gets no span (null).
   */
  startAttempt(ex: Exchange, method: string, origin: string, path: string, attempt: number, headers: string[]): Span | null {
    const server = ex.span!;
    if (!server.isRecording()) {
      this.propagator.inject(this.context(ex), headers, setter);
      return null;
    }
    const url = new URL(origin);
    const known = KNOWN_METHODS.has(method);
    const span = this.tracer.startSpan(known ? method : 'HTTP', {
      kind: this.api.SpanKind.CLIENT,
      attributes: {
        'http.request.method': known ? method : '_OTHER',
        ...(known ? {} : { 'http.request.method_original': method }),
        'server.address': url.hostname,
        'server.port': Number(url.port) || (url.protocol === 'https:' ? 443 : 80),
        'url.full': origin + redactQuery(redactPathParams(path, this.secretParams), this.secretParams),
        ...(attempt > 1 ? { 'http.request.resend_count': attempt - 1 } : {}),
      },
    }, this.context(ex));
    this.propagator.inject(this.api.trace.setSpan(this.api.ROOT_CONTEXT, span), headers, setter);
    return span;
  }

  /** A composition's steps: each attempt a CLIENT span of the request (as startAttempt), its context sent. */
  stepTracer(ex: Exchange): StepTracer {
    return (method, origin, path, headers) => {
      const span = this.startAttempt(ex, method, origin, path, 1, headers);
      return span === null ? null : (status, error) => this.endAttempt(span, status, error);
    };
  }

  endAttempt(span: Span, status: number | null, error: string | null): void {
    if (status !== null) span.setAttribute('http.response.status_code', status);
    // Semantic conventions: for a CLIENT span a 4xx is an error too (only SERVER spans leave it unset).
    if (error !== null || (status !== null && status >= 400)) {
      span.setAttribute('error.type', error ?? String(status));
      span.setStatus({ code: this.api.SpanStatusCode.ERROR });
    }
    span.end();
  }

  endRequest(ex: Exchange, status: number, error: string | null): void {
    const span = ex.span!;
    if (!span.isRecording()) return;
    span.setAttribute('http.response.status_code', status);
    const consumer = ex.consumer;
    if (consumer !== null) span.setAttribute('turnpike.consumer', consumer);
    if (ex.target !== null) span.setAttribute('turnpike.upstream', ex.target);
    // Semantic conventions: a SERVER span's 4xx is the client's error, not the server's (no
    // error.type, status unset, even with the gateway's own problem code); a 5xx is, and so is a
    // request that failed before its answer was complete (client gone, response cut).
    if (status >= 500) {
      span.setAttribute('error.type', error ?? String(status));
      span.setStatus({ code: this.api.SpanStatusCode.ERROR });
    } else if (error === 'client-closed' || error === 'response-cut') {
      span.setAttribute('error.type', error);
    }
    span.end(performance.now());
  }

  /** Exports what is queued (bounded by the exporter's timeout), then stops. */
  async close(): Promise<void> {
    await this.provider.shutdown().catch(() => {});
    this.agent?.destroy();
  }
}
