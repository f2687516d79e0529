/**
 * The log phase of every request: one Exchange per request is read once when the response
 * closes, and feeds Prometheus counters (metrics.ts), analytics (analytics.ts), the access log
 * (a pino logger over a sink, sinks.ts) and the request's trace (tracing.ts). Nothing here runs
 * before the response is done; with everything off, begin() returns null and the request path
 * does no observability work at all.
 */
import type { DemandMeter } from '../scaling/meter.js';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { CompiledRoute } from '../config/compile.js';
import { answeredBy, type Answered } from '../core/problem.js';
import { escapeUnsafe, type Logger } from '../core/log.js';
import { plainIp } from '../core/forwarded.js';
import { Exchange } from './exchange.js';
import { Metrics, type GaugeSource, type RouteStats } from './metrics.js';
import { Analytics } from './analytics.js';
import { checkSink, createSink, type AccessSink } from './sinks.js';
import { DEFAULT_ACCESS_FIELDS, type AccessField } from './schema.js';
import type { ObservabilitySettings } from './settings.js';
import { Tracing, redactPathParams, redactQuery } from './tracing.js';

const round3 = (ms: number) => Math.round(ms * 1000) / 1000;

const CENSORED = '[REDACTED]';

/** A grpc-status as a number (null for what a broken upstream may send instead). */
const grpcNumber = (v: string): number | null => (/^[0-9]{1,2}$/.test(v) ? Number(v) : null);

const NEEDS_ESCAPE = /["\\\u0000-\u001f\u007f-\uffff]/;
/** A JSON string (or null): quoted as is when nothing in it needs escaping (the usual case). */
const str = (v: string | null): string => (v === null ? 'null' : NEEDS_ESCAPE.test(v) ? escapeUnsafe(JSON.stringify(v)) : '"' + v + '"');

let lastMs = -1;
let lastIso = '';
/**
 * ISO time of the instant `ago` ms before now (one Date per millisecond, however many requests).
 * From the wall clock at the time of logging, not performance.timeOrigin + a monotonic instant:
 * that sum stays off by however far the wall clock is stepped (NTP, a VM resumed) until a restart.
 */
function isoTime(ago: number): string {
  const ms = Math.floor(Date.now() - ago);
  if (ms !== lastMs) {
    lastMs = ms;
    lastIso = new Date(ms).toISOString();
  }
  return lastIso;
}

/**
 * The path of a request refused before its target was parsed (ex.path not set): the raw target
 * without scheme, userinfo, authority, query and fragment (an absolute-form target may carry
 * credentials: `http://user:password@host/...`); null when it is not a path at all.
 */
export function rawPath(url: string | undefined): string | null {
  if (url === undefined) return null;
  let p = url;
  if (p.charCodeAt(0) !== 0x2f /* / */) {
    const s = p.indexOf('://');
    if (s === -1) return null;
    // The authority ends at the first /, ? or #; what follows is the path.
    let i = s + 3;
    while (i < p.length && p[i] !== '/' && p[i] !== '?' && p[i] !== '#') i++;
    p = p[i] === '/' ? p.slice(i) : '/';
  }
  const end = p.search(/[?#]/);
  return end === -1 ? p : p.slice(0, end);
}

/** The path to log: as routed (or the raw target's, for a request refused before), secret path parameters censored. */
function logPath(ex: Exchange, req: IncomingMessage, secret: ReadonlySet<string>): string | null {
  const p = ex.path || rawPath(req.url);
  return p === null ? null : redactPathParams(p, secret, CENSORED);
}

/** The query as an object (repeated names joined with a comma), secret parameters (lower-case set, any case in the query) censored. */
function queryObject(q: string, secret: ReadonlySet<string>): Record<string, string> {
  // (no prototype: a parameter named __proto__ or constructor is a key like any other)
  const out = Object.create(null) as Record<string, string>;
  if (q.length < 2) return out;
  // `?a=1;apikey=K` is one parameter `a` here and two to a server that splits on `;` (Rack < 3,
  // Python's old parse_qs): the value of a secret one is censored in the text first.
  const text = q.includes(';') ? redactQuery(q, secret, CENSORED).slice(1) : q.slice(1);
  for (const [k, v] of new URLSearchParams(text)) out[k] = secret.has(k.toLowerCase()) ? CENSORED : k in out ? `${out[k]},${v}` : v;
  return out;
}

/**
 * The request's fields as forwarded (from the raw list: node's header object drops a field
 * named __proto__), repeated ones joined with a comma, secret fields censored.
 */
function headerObject(raw: string[], secret: ReadonlySet<string>): Record<string, string> {
  const out = Object.create(null) as Record<string, string>;
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (k.charCodeAt(0) === 0x3a) continue; // (HTTP/2 pseudo-headers)
    // (X_Api_Key is X-Api-Key to CGI, WSGI, Rack and PHP: a secret field spelled with underscores is one too)
    out[k] = secret.has(k) || (k.includes('_') && secret.has(k.replace(/_/g, '-'))) ? CENSORED : k in out ? `${out[k]}, ${raw[i + 1]!}` : raw[i + 1]!;
  }
  return out;
}

interface AccessLog {
  key: string;
  fields: readonly AccessField[];
  headers: ReadonlySet<string>;
  query: ReadonlySet<string>;
  /** Fields censored whole. */
  whole: readonly AccessField[];
  sink: AccessSink;
}

export class Observer {
  readonly metrics: Metrics | null;
  analytics: Analytics | null = null;
  tracing: Tracing | null = null;
  private access: AccessLog | null = null;
  private readonly stats = new WeakMap<CompiledRoute, RouteStats>();
  /** Where requests are counted for the scaling advisor (null: no service has `scaling`). */
  demand: DemandMeter | null = null;
  private unrouted: RouteStats | null = null;
  /** Replaced access log sinks still closing, and the counts of those closed. */
  private readonly retiring = new Set<AccessSink>();
  private readonly retired = { written: 0, dropped: 0 };
  private settings: ObservabilitySettings;

  constructor(settings: ObservabilitySettings, gauges: GaugeSource, private readonly log: Logger, private readonly role: 'single' | 'primary' | 'worker') {
    this.settings = settings;
    this.metrics = settings.metrics ? new Metrics(settings.metrics.buckets, { ...gauges, accessLog: () => this.accessLogCounts() }) : null;
    this.configure(settings);
  }

  /**
   * Applies a new config's settings: sinks and the tracer are replaced only when theirs changed.
   * Throws (e.g. a log file that cannot be opened) before changing anything.
   */
  configure(s: ObservabilitySettings): void {
    const proxying = this.role !== 'primary';
    // A primary writes no access log itself, but refuses a file its workers could not open.
    if (!proxying && s.accessLog) checkSink(s.accessLog.sink);
    let access = this.access;
    const key = s.accessLog && proxying ? JSON.stringify(s.accessLog) : '';
    if (key !== (access?.key ?? '')) {
      access = null;
      if (s.accessLog && proxying) {
        const r = s.accessLog.redact;
        access = {
          key,
          fields: s.accessLog.fields,
          headers: new Set(r.headers),
          query: new Set(r.query),
          whole: s.accessLog.fields.filter((f) => r.fields.includes(f)),
          sink: createSink(s.accessLog.sink, this.log, { shared: this.role === 'worker' }),
        };
      }
      const old = this.access;
      this.access = access;
      if (old) this.retire(old.sink);
    }
    if (s.metrics && !this.metrics) this.log.warn('metrics were enabled: restart to start them');
    if (s.metrics && this.metrics && s.metrics.buckets.join() !== this.metrics.bounds.join()) this.log.warn('metrics.buckets changed: restart to apply');
    if (s.analytics && proxying) {
      if (this.analytics === null) this.analytics = new Analytics({ maxConsumers: s.analytics.topConsumers, maxRoutes: 1000 });
      else this.analytics.maxConsumers = s.analytics.topConsumers;
    } else this.analytics = null;
    const tracingKey = JSON.stringify(s.tracing);
    if (tracingKey !== JSON.stringify(this.settings.tracing) || (s.tracing && !this.tracing)) {
      const old = this.tracing;
      this.tracing = s.tracing && proxying ? new Tracing(s.tracing, this.log) : null;
      if (old) void old.close();
    }
    this.settings = s;
  }

  /** A replaced sink: closed; its counts stay in accessLogCounts() (counters never go back). */
  private retire(sink: AccessSink): void {
    this.retiring.add(sink);
    void sink.close().then(() => {
      this.retiring.delete(sink);
      this.retired.written += sink.written;
      this.retired.dropped += sink.dropped;
    });
  }

  /** Access log lines written and dropped by this process, over every sink it had (null: it never had one). */
  accessLogCounts(): { written: number; dropped: number } | null {
    const a = this.access;
    if (a === null && this.retiring.size === 0 && this.retired.written === 0 && this.retired.dropped === 0) return null;
    let written = this.retired.written;
    let dropped = this.retired.dropped;
    for (const s of this.retiring) {
      written += s.written;
      dropped += s.dropped;
    }
    if (a !== null) {
      written += a.sink.written;
      dropped += a.sink.dropped;
    }
    return { written, dropped };
  }

  /** Whether anything reads exchanges. */
  get active(): boolean {
    return this.metrics !== null || this.analytics !== null || this.access !== null || this.tracing !== null || this.demand !== null;
  }

  begin(): Exchange | null {
    return this.active ? new Exchange(performance.now()) : null;
  }

  /** A reload swapped in these routes: the metrics of the others are dropped. */
  routesChanged(routes: readonly CompiledRoute[]): void {
    this.metrics?.keepRoutes(routes.map((r) => ({ service: r.service.name, route: r.name })));
  }

  /** The counters of a route (rate-limit decisions are counted while the request runs). */
  routeStats(route: CompiledRoute | null): RouteStats | null {
    const m = this.metrics;
    if (m === null) return null;
    if (route === null) return (this.unrouted ??= m.stats('', ''));
    let s = this.stats.get(route);
    if (s === undefined) this.stats.set(route, (s = m.stats(route.service.name, route.name)));
    return s;
  }

  /**
   * A request the gateway answered on its raw socket, with no response object (CONNECT): counted
   * and logged like any other (`answer`: what went out).
   */
  refused(req: IncomingMessage, answer: Answered): void {
    const ex = this.begin();
    if (ex !== null) this.end(ex, req, null, answer);
  }

  /** The response closed (sent, cut, or never sent: 499). */
  end(ex: Exchange, req: IncomingMessage, res: ServerResponse | null, local: Answered | undefined = res === null ? undefined : answeredBy(res)): void {
    const now = performance.now();
    const status = local?.status ?? (ex.status || (res?.headersSent ? res.statusCode : 499));
    const total = now - ex.start;
    const upstream = ex.upstreamHeaders > 0 ? ex.upstreamHeaders - ex.upstreamStart : null;
    const gateway = ex.upstreamStart > 0 ? ex.upstreamStart - ex.start : total;
    if (local !== undefined) {
      if (ex.bytesOut === 0) ex.bytesOut = local.bytes;
      if (local.grpcStatus !== null) ex.grpcStatus = String(local.grpcStatus);
    }
    if (req.complete && ex.bodyLength > 0 && !ex.bodyCounted) ex.bytesIn += ex.bodyLength;
    const method = req.method ?? 'GET';
    const stats = this.routeStats(ex.route);
    if (stats !== null) {
      stats.count(method, status);
      stats.total.observe(total / 1000);
      if (upstream !== null) stats.upstream.observe(upstream / 1000);
      stats.gateway.observe(gateway / 1000);
      stats.bytesIn += ex.bytesIn;
      stats.bytesOut += ex.bytesOut;
      if (ex.attempts > 1) stats.retries += ex.attempts - 1;
      if (ex.grpcStatus !== null) stats.grpcStatus(ex.grpcStatus);
    }
    const route = ex.route;
    // (only what went on to the service is its demand: not what the gateway answered for it)
    if (route !== null && ex.demand) this.demand?.record(route.service.name, route.name, status, total, local?.code === 'service-overloaded');
    this.analytics?.record(route?.name ?? '', route?.service.name ?? '', ex.consumer, status, total);
    const error = local?.code ?? (status === 499 ? 'client-closed' : ex.status === 0 && res !== null && res.headersSent && !res.writableFinished ? 'response-cut' : null);
    if (ex.span !== null) this.tracing?.endRequest(ex, status, error);
    const a = this.access;
    if (a !== null) {
      if (ex.requestId === '' && local !== undefined) ex.requestId = local.requestId;
      a.sink.write(this.line(a, ex, req, method, status, total, upstream, gateway, error));
    }
  }

  /**
   * One access log line. Built here and serialized with JSON.stringify, then handed to the sink
   * (pino's asynchronous destination for stdout and files): measured 3x cheaper per line than
   * pino's logger.info with fast-redact paths (docs/benchmarks.md, "Observability overhead").
   */
  private line(a: AccessLog, ex: Exchange, req: IncomingMessage, method: string, status: number, total: number, upstream: number | null, gateway: number, error: string | null): string {
    // Every line starts with "type":"access" (process log lines on the same stdout have a level).
    if (a.fields === DEFAULT_ACCESS_FIELDS && a.whole.length === 0) {
      // The default set, written out: half the cost of JSON.stringify on the same object. Values
      // the gateway checked or made (method token, validated host, IP, names from the config's
      // name pattern, origins, problem codes, numbers) need no escaping; the others (request id,
      // consumer, path) go through JSON.stringify.
      const route = ex.route;
      const w = ex.ws;
      return '{"type":"access","time":"' + isoTime(total) +
        '","request_id":' + str(ex.requestId) +
        ',"client_ip":"' + (ex.clientIp || plainIp(req.socket?.remoteAddress)) +
        '","consumer":' + str(ex.consumer) +
        ',"method":"' + method +
        '","host":"' + ex.host +
        '","path":' + str(logPath(ex, req, a.query)) +
        ',"protocol":"HTTP/' + req.httpVersion +
        (route === null ? '","route":null,"service":null' : '","route":"' + route.name + '","service":"' + route.service.name + '"') +
        ',"upstream":' + (ex.target === null ? 'null' : '"' + ex.target + '"') +
        ',"status":' + status +
        ',"bytes_in":' + ex.bytesIn +
        ',"bytes_out":' + ex.bytesOut +
        ',"duration_ms":' + round3(total) +
        ',"upstream_ms":' + (upstream === null ? 'null' : round3(upstream)) +
        ',"gateway_ms":' + round3(gateway) +
        ',"retries":' + (ex.attempts > 1 ? ex.attempts - 1 : 0) +
        ',"error":' + (error === null ? 'null' : '"' + error + '"') +
        (ex.grpcStatus === null ? '' : ',"grpc_status":' + grpcNumber(ex.grpcStatus)) +
        (w === null ? '' : ',"websocket":' + JSON.stringify({ messages_in: w.messagesIn, messages_out: w.messagesOut, close_code: w.code, closed_by: w.closedBy })) +
        (ex.span === null ? '' : ',"trace_id":"' + ex.span.spanContext().traceId + '"') +
        '}\n';
    }
    const out: Record<string, unknown> = { type: 'access' };
    for (const f of a.fields) {
      switch (f) {
        case 'time': out.time = isoTime(total); break;
        case 'request_id': out.request_id = ex.requestId; break;
        case 'client_ip': out.client_ip = ex.clientIp || plainIp(req.socket?.remoteAddress); break;
        case 'consumer': out.consumer = ex.consumer; break;
        case 'method': out.method = method; break;
        case 'host': out.host = ex.host; break;
        case 'path': out.path = logPath(ex, req, a.query); break;
        case 'query': out.query = queryObject(ex.query, a.query); break;
        case 'protocol': out.protocol = `HTTP/${req.httpVersion}`; break;
        case 'route': out.route = ex.route?.name ?? null; break;
        case 'service': out.service = ex.route?.service.name ?? null; break;
        case 'upstream': out.upstream = ex.target; break;
        case 'status': out.status = status; break;
        case 'bytes_in': out.bytes_in = ex.bytesIn; break;
        case 'bytes_out': out.bytes_out = ex.bytesOut; break;
        case 'duration_ms': out.duration_ms = round3(total); break;
        case 'upstream_ms': out.upstream_ms = upstream === null ? null : round3(upstream); break;
        case 'gateway_ms': out.gateway_ms = round3(gateway); break;
        case 'retries': out.retries = ex.attempts > 1 ? ex.attempts - 1 : 0; break;
        case 'error': out.error = error; break;
        case 'grpc_status': if (ex.grpcStatus !== null) out.grpc_status = grpcNumber(ex.grpcStatus); break;
        case 'user_agent': out.user_agent = req.headers['user-agent'] ?? null; break;
        case 'headers': out.headers = headerObject(req.rawHeaders, a.headers); break;
        case 'trace_id': if (ex.span !== null) out.trace_id = ex.span.spanContext().traceId; break;
        case 'websocket': {
          const w = ex.ws;
          if (w !== null) out.websocket = { messages_in: w.messagesIn, messages_out: w.messagesOut, close_code: w.code, closed_by: w.closedBy };
          break;
        }
      }
    }
    for (const f of a.whole) if (out[f] != null) out[f] = CENSORED;
    return escapeUnsafe(JSON.stringify(out)) + '\n';
  }

  /**
   * A request the HTTP parser refused before there was a request object (malformed framing,
   * oversized head, header timeout): counted (method OTHER, no route) and logged with what is known.
   */
  parserRejected(remoteAddress: string | undefined, status: number, code: string): void {
    this.routeStats(null)?.count('OTHER', status);
    const a = this.access;
    if (a === null) return;
    // (isoTime takes how long ago: the refusal is now)
    if (a.fields === DEFAULT_ACCESS_FIELDS && a.whole.length === 0) {
      a.sink.write('{"type":"access","time":"' + isoTime(0) + '","request_id":null,"client_ip":' + str(plainIp(remoteAddress)) +
        ',"method":null,"path":null,"route":null,"service":null,"status":' + status + ',"error":"' + code + '"}\n');
      return;
    }
    // The configured fields only (what is known; the rest null), fields censored whole censored
    // here too: `redact: [client_ip]` holds for these lines as for the others.
    const out: Record<string, unknown> = { type: 'access' };
    for (const f of a.fields) {
      switch (f) {
        case 'time': out.time = isoTime(0); break;
        case 'client_ip': out.client_ip = plainIp(remoteAddress); break;
        case 'status': out.status = status; break;
        case 'error': out.error = code; break;
        case 'request_id': case 'method': case 'path': case 'route': case 'service': out[f] = null; break;
      }
    }
    for (const f of a.whole) if (out[f] != null) out[f] = CENSORED;
    a.sink.write(JSON.stringify(out) + '\n');
  }

  /** SIGUSR1: log files are reopened (after rotation moved them away). */
  reopen(): void {
    this.access?.sink.reopen();
  }

  async close(): Promise<void> {
    const a = this.access;
    this.access = null;
    this.metrics?.close();
    await Promise.all([a?.sink.close(), this.tracing?.close()]);
    this.tracing = null;
  }
}
