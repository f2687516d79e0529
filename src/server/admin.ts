/**
 * The admin listener: `/status` (and the probes `/status/live`, `/status/ready`), `/health`
 * (targets and circuits), `/metrics` (Prometheus), `/analytics` (per-route and per-consumer
 * statistics), `/quotas`, `DELETE /cache` (purge), and `/api/` (the admin REST API, src/admin/).
 * The status listener (`status_listen`) answers the probes alone.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { sendProblem as sendProblemBare, type ProblemCode } from '../core/problem.js';
import { requestIdOf } from './request.js';
import { VERSION } from '../version.js';
import { NODE_ID } from '../core/node-id.js';
import { quotaViews } from '../plugins/quota/index.js';
import type { Observer } from '../observability/observer.js';
import { Analytics, type AnalyticsState, type WindowName } from '../observability/analytics.js';
import { purgeFilter } from '../plugins/cache/stores.js';
import type { PurgeFilter } from '../plugins/cache/entry.js';
import { authenticate, authorizationOf, AuthFailures } from '../admin/auth.js';
import { ApiError } from '../admin/errors.js';

export interface AdminView {
  ready: boolean;
  draining: boolean;
  revision: number;
  startedAt: number;
  inFlight: number;
  snapshot: { hash: string; loadedAt: Date; source: string | undefined; services: unknown[]; routes: unknown[]; admin: { token: string | undefined; tokens: readonly { name: string; token: string; role: 'admin' | 'read-only' }[] } | null; observability: { analytics: unknown } };
  health: { report(): unknown } | null;
  workers?: () => { pid: number | undefined; state: string; config_hash?: string | null; reload_failed?: { error: string; at: string; successor_failures?: number; next_try_at?: string } }[];
  /** WebSocket counters of this process (a primary has none of its own). */
  ws?: { opened: number; rejected: number; closed: number; messagesIn: number; messagesOut: number };
  observer: Observer;
  /** Primary: the workers' metrics and analytics. */
  collect?: () => Promise<{ metrics: unknown[][]; analytics: AnalyticsState[] }>;
  /** Analytics states of this node (its workers) and of the other nodes sharing its Redis. */
  analyticsStates(): Promise<{ states: AnalyticsState[]; nodes: number; error?: string }>;
  /** DELETE /cache: purges the response caches (every worker's). */
  purgeCache?(filter: PurgeFilter): Promise<{ purged: number }>;
  /** The web console (`/console/`) and its sessions. */
  console?: { handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void>; caller(req: IncomingMessage, method: string): { name: string; role: 'admin' | 'read-only' } | undefined } | null;
  /** GET /api/scaling (the single process or the primary). */
  scaling?: { enabled: boolean; report(): unknown } | null;
  /** Wrong admin tokens per client (shared with /api/ and the console's sign-in): 429 past the limit. */
  adminFailures?: AuthFailures;
  /** The shared counters' Redis (the `redis` setting), for /status; null without one. */
  redisStatus?(): Record<string, unknown> | null;
  /** The admin REST API (`/api/`, its own roles) and the config store's status. */
  control?: { api: (req: IncomingMessage, res: ServerResponse) => Promise<void>; status(): Record<string, unknown> } | null;
}

/** Targets up / down and circuits not closed, for /status (details: /health). */
function upstreamSummary(gw: AdminView): unknown {
  const r = gw.health?.report() as { targets: Record<string, { down: boolean }>; circuits: Record<string, string> } | undefined;
  if (!r) return null;
  const targets = Object.values(r.targets);
  const down = Object.entries(r.targets).filter(([, t]) => t.down).map(([k]) => k);
  const tripped = Object.entries(r.circuits).filter(([, c]) => c !== 'closed').map(([service, state]) => ({ service, state }));
  return { targets: targets.length, targets_up: targets.length - down.length, targets_down: down, circuits_not_closed: tripped };
}

const WINDOWS: readonly string[] = ['1m', '1h', '24h'];

async function metricsText(gw: AdminView): Promise<string | null> {
  const m = gw.observer.metrics;
  if (m === null) return null;
  return m.text(gw.collect ? (await gw.collect()).metrics : []);
}

/** GET /analytics?window=1m|1h|24h&top=N&route=R&consumer=C */
async function analyticsReport(gw: AdminView, q: URLSearchParams): Promise<unknown> {
  const window = (q.get('window') ?? '1h') as WindowName;
  const top = Math.min(1000, Math.max(1, Number(q.get('top') ?? 10) || 10));
  const opts = { top, ...(q.get('route') ? { route: q.get('route')! } : {}), ...(q.get('consumer') ? { consumer: q.get('consumer')! } : {}) };
  const { states, nodes, error } = await gw.analyticsStates();
  return { ...Analytics.report(states, window, opts), nodes, ...(error ? { partial: error } : {}) };
}


/**
 * On every answer of the admin and status listeners (the console's page and files set their
 * own, stricter CSP over these): JSON and YAML are never sniffed into HTML, nothing is framed.
 */
const NO_SNIFF: readonly [string, string][] = [
  ['x-content-type-options', 'nosniff'],
  ['x-frame-options', 'DENY'],
  ['content-security-policy', "default-src 'none'; frame-ancestors 'none'"],
];

/** A problem with the request id the answer echoes (X-Request-Id, set when the request came in). */
function sendProblem(res: ServerResponse, code: ProblemCode, detail: string, _requestId: undefined, opts: { headers?: Record<string, string> } = {}): void {
  const id = res.getHeader('x-request-id');
  sendProblemBare(res, code, detail, typeof id === 'string' ? id : undefined, opts);
}

const LOOPBACK_HOST = /^(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?$/i;

/** Why a request to a tokenless admin listener looks like it comes from a web page elsewhere (null: it does not). */
function foreignCaller(req: IncomingMessage): string | null {
  const host = req.headers.host ?? '';
  if (!LOOPBACK_HOST.test(host)) return `Host ${JSON.stringify(host.slice(0, 100))} is not a loopback name (set admin.token to reach the admin listener by another name)`;
  const site = req.headers['sec-fetch-site'];
  if (site === 'cross-site' || site === 'same-site') return 'a cross-site request to the admin listener';
  const origin = req.headers.origin;
  if (origin !== undefined) {
    let o: URL | null = null;
    try {
      o = new URL(origin);
    } catch {
      /* "null" and garbage */
    }
    if (o === null || o.host.toLowerCase() !== host.toLowerCase()) return `a request from another origin (${origin.slice(0, 100)})`;
  }
  return null;
}

function sendJson(req: IncomingMessage, res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** The probe paths, answered to anyone (no token): the admin listener's and the status listener's. */
const PROBES = new Set(['/status', '/status/live', '/status/ready']);

/**
 * A probe's short answer. /status and /status/ready (readiness): 200 "ok" while the proxy
 * listener accepts (a primary: one of its workers), 503 "starting" before, 503 "draining" from
 * the stop on (timeouts.shutdown_delay included). /status/live (liveness): 200 whenever the
 * process answers at all, its phase in the body.
 */
function sendProbe(req: IncomingMessage, res: ServerResponse, gw: Pick<AdminView, 'ready' | 'draining'>, path: string): void {
  const status = gw.ready ? 'ok' : gw.draining ? 'draining' : 'starting';
  if (path === '/status/live') sendJson(req, res, 200, { status: 'ok', ...(gw.ready ? {} : { phase: status }) });
  else sendJson(req, res, gw.ready ? 200 : 503, { status });
}

/** The status listener (status_listen): GET/HEAD of the probe paths, 404 for anything else. */
export function createStatusHandler(gw: Pick<AdminView, 'ready' | 'draining'>) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    res.setHeader('x-request-id', requestIdOf(req));
    for (const [k, v] of NO_SNIFF) res.setHeader(k, v);
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if ((req.method === 'GET' || req.method === 'HEAD') && PROBES.has(path)) return sendProbe(req, res, gw, path);
    sendProblem(res, 'no-route', `the status listener answers GET /status, /status/live and /status/ready only`, undefined);
  };
}

export function createAdminHandler(gw: AdminView) {
  const failures = gw.adminFailures ?? new AuthFailures();
  return (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    // Every answer echoes the request id (the client's X-Request-Id, or one made up); the API sets its own.
    const api = gw.control && (path === '/api' || path.startsWith('/api/')) && path !== '/api/scaling';
    if (!api) res.setHeader('x-request-id', requestIdOf(req));
    for (const [k, v] of NO_SNIFF) res.setHeader(k, v);
    // Without a token the admin listener is loopback-only and every caller is the admin: a web
    // page the operator visits must not drive it (DNS rebinding: a foreign Host; a cross-site
    // form or fetch: Origin / Sec-Fetch-Site).
    if ((gw.snapshot.admin?.tokens.length ?? 0) === 0) {
      const refusal = foreignCaller(req);
      if (refusal) return void sendProblem(res, 'forbidden', refusal, undefined);
    }
    if (gw.console && (path === '/console' || path.startsWith('/console/'))) {
      void gw.console.handle(req, res, path);
      return;
    }
    // The admin REST API checks the same tokens itself, with roles per method.
    if (api) {
      gw.control!.api(req, res).catch((err: unknown) => {
        if (!res.headersSent) sendProblem(res, 'internal-error', `admin API: ${(err as Error).message}`, undefined);
        else res.destroy();
      });
      return;
    }
    const read = req.method === 'GET' || req.method === 'HEAD';
    const tokens = gw.snapshot.admin?.tokens ?? [];
    let who: { name: string; role: 'admin' | 'read-only' } | undefined;
    let authorization: string | undefined;
    if (tokens.length > 0) {
      try {
        authorization = authorizationOf(req); // (400 when given twice)
      } catch (err) {
        const e = err as ApiError;
        // (a probe answers as to anyone: its short status)
        if (!(read && PROBES.has(path))) return void sendProblem(res, e.code, e.detail, undefined, { headers: e.headers ?? {} });
      }
    }
    // A bearer token: checked against every admin token (constant time); wrong ones from one
    // client are counted (429 with Retry-After past the limit, before the token is looked at).
    let refused: ApiError | undefined;
    if (tokens.length > 0 && authorization !== undefined && authorization !== '') {
      try {
        who = authenticate(authorization, tokens, { failures, ip: failures.clientOf(req) });
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        // 429 past the limit; 400 for Bearer without one token (RFC 6750 §3.1), even on a probe path
        if (err.code === 'too-many-requests' || (err.code === 'bad-request' && !(read && PROBES.has(path)))) return void sendProblem(res, err.code, err.detail, undefined, { headers: err.headers ?? {} });
        refused = err; // (its challenge says why: invalid_token)
      }
    }
    // A console session stands for its token (changes need its CSRF token).
    if (who === undefined && tokens.length > 0 && authorization === undefined && gw.console) {
      try {
        who = gw.console.caller(req, (req.method ?? 'GET').toUpperCase());
      } catch (err) {
        sendProblem(res, 'forbidden', (err as Error).message, undefined);
        return;
      }
    }
    const authed = tokens.length === 0 || who !== undefined;
    // A read-only token reads; changes (DELETE /cache...) need an admin one. (OPTIONS changes
    // nothing: it answers the Allow a read-only token may read, as /api/ does.)
    if (authed && who !== undefined && who.role !== 'admin' && !read && req.method !== 'OPTIONS') {
      sendProblem(res, 'forbidden', `the token "${who.name}" is read-only`, undefined);
      return;
    }
    // With a token, the probes answer their short status to anyone (kubelet, load balancers);
    // the rest needs the token (/status with it: the whole report).
    const probe = read && PROBES.has(path);
    if (!authed && !probe) {
      sendProblem(res, 'unauthorized', refused?.code === 'unauthorized' ? refused.detail : 'this admin endpoint needs Authorization: Bearer <admin token>', undefined, { headers: { 'www-authenticate': 'Bearer realm="turnpike-admin"', ...(refused?.code === 'unauthorized' ? refused.headers : {}) } });
      return;
    }
    if (probe && (!authed || path !== '/status')) return sendProbe(req, res, gw, path);
    if (path === '/api/scaling' && read) {
      if (!gw.scaling?.enabled) return sendProblem(res, 'no-route', 'no service has scaling settings (docs/scaling.md)', undefined);
      sendJson(req, res, 200, gw.scaling.report());
      return;
    }
    if (path === '/health' && read) {
      sendJson(req, res, 200, gw.health?.report() ?? {});
      return;
    }
    if (path === '/status' && read) {
      const s = gw.snapshot;
      sendJson(req, res, gw.ready ? 200 : 503, {
        status: gw.ready ? 'ok' : gw.draining ? 'draining' : 'starting',
        version: VERSION,
        revision: gw.revision,
        config_hash: s.hash,
        config_loaded_at: s.loadedAt.toISOString(),
        config_source: s.source ?? null,
        services: s.services.length,
        routes: s.routes.length,
        in_flight: gw.inFlight,
        ...(gw.ws ? { websockets: { open: gw.ws.opened - gw.ws.closed, opened: gw.ws.opened, rejected: gw.ws.rejected, messages_in: gw.ws.messagesIn, messages_out: gw.ws.messagesOut } } : {}),
        uptime_seconds: Math.round((Date.now() - gw.startedAt) / 1000),
        node_id: NODE_ID,
        ...(gw.control ? { config: gw.control.status() } : {}),
        ...(gw.redisStatus?.() ? { redis: gw.redisStatus() } : {}),
        upstreams: upstreamSummary(gw),
        ...(gw.workers ? { workers: gw.workers() } : {}),
      });
      return;
    }
    if (path === '/metrics' && read) {
      metricsText(gw).then((text) => {
        if (text === null) return sendProblem(res, 'no-route', 'metrics are disabled (metrics.enabled: false)', undefined);
        res.writeHead(200, { 'content-type': gw.observer.metrics!.contentType, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : text);
      }, (err: unknown) => sendProblem(res, 'internal-error', `collecting metrics failed: ${(err as Error).message}`, undefined));
      return;
    }
    if (path === '/analytics' && read) {
      const q = new URL(req.url ?? '/', 'http://x').searchParams;
      if (!WINDOWS.includes(q.get('window') ?? '1h')) return sendProblem(res, 'bad-request', 'window is one of 1m, 1h, 24h', undefined);
      if (q.get('route') && q.get('consumer')) return sendProblem(res, 'bad-request', 'give route or consumer, not both', undefined);
      if (gw.snapshot.observability.analytics === null) return sendProblem(res, 'no-route', 'analytics are disabled (analytics.enabled: false)', undefined);
      analyticsReport(gw, q).then((r) => sendJson(req, res, 200, r), (err: unknown) => sendProblem(res, 'internal-error', `analytics failed: ${(err as Error).message}`, undefined));
      return;
    }
    if (path === '/quotas' && read) {
      const consumer = new URL(req.url ?? '/', 'http://x').searchParams.get('consumer');
      if (!consumer) {
        sendProblem(res, 'bad-request', 'give ?consumer=NAME', undefined);
        return;
      }
      void Promise.all([...quotaViews].map(async (v) => ({ name: v.name, limit: v.limit, every: v.period, time_zone: v.timeZone, ...(await v.usage(consumer)) }))).then(
        (quotas) => sendJson(req, res, 200, { consumer, quotas }),
        (err: unknown) => sendProblem(res, 'bad-gateway', `the quota store failed: ${(err as Error).message}`, undefined),
      );
      return;
    }
    if (path === '/cache' && req.method === 'DELETE' && gw.purgeCache) {
      // DELETE /cache (everything), ?path=/p[&host=h], ?key=host/path?query: the cache plugin's entries.
      const filter = purgeFilter(new URL(req.url ?? '/', 'http://x').searchParams);
      if (typeof filter === 'string') return sendProblem(res, 'bad-request', filter, undefined);
      gw.purgeCache(filter).then((r) => sendJson(req, res, 200, r), (err: unknown) => sendProblem(res, 'bad-gateway', `purging the cache failed: ${(err as Error).message}`, undefined));
      return;
    }
    // A path the listener has, asked with another method: 405 with Allow (RFC 9110 §15.5.6), not 404.
    const allow = ADMIN_METHODS.get(path)?.(gw);
    if (allow && allow.length > 0) {
      if (req.method === 'OPTIONS') {
        res.writeHead(204, { allow: [...allow, 'OPTIONS'].join(', '), 'cache-control': 'no-store' });
        res.end();
        return;
      }
      return sendProblem(res, 'method-not-allowed', `${req.method} is not allowed on ${path} (allowed: ${allow.join(', ')})`, undefined, { headers: { allow: allow.join(', ') } });
    }
    sendProblem(res, 'no-route', `no admin endpoint ${req.method} ${path}`, undefined);
  };
}

const READ_METHODS = ['GET', 'HEAD'];
/** The admin listener's own endpoints (besides /api/ and /console/) and their methods. */
const ADMIN_METHODS = new Map<string, (gw: AdminView) => string[]>([
  ...['/status', '/status/live', '/status/ready', '/health', '/metrics', '/analytics', '/quotas', '/api/scaling'].map((p) => [p, () => READ_METHODS] as const),
  ['/cache', (gw: AdminView) => (gw.purgeCache ? ['DELETE'] : [])],
]);
