/**
 * A running gateway: the proxy listener, the admin listener and (when configured) the demo
 * upstream, all serving from the current immutable snapshot. Swapping snapshots is atomic;
 * a request keeps the snapshot it started with. stop() drains in-flight requests (bounded).
 */
import { createServer, ServerResponse, type IncomingMessage, type Server } from 'node:http';
import { createServer as createH2Server, constants as h2c, type Http2Server, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import { Server as NetServer, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { availableParallelism } from 'node:os';
import { compile, compileAsync, dnsSettings, type Address, type AdminToken, type CompileDeps, type Snapshot } from '../config/compile.js';
import { DnsCache, upstreamNames } from '../upstream/dns.js';
import { ConfigError, formatPath, type PathSegment } from '../config/errors.js';
import type { LoadedConfig } from '../config/load.js';
import { PoolRegistry } from '../upstream/pools.js';
import { RuntimeState, applyDecision } from '../upstream/state.js';
import { HealthAuthority, type Decision, type Reporter } from '../upstream/authority.js';
import { grantSlots, type ForwardHandler } from '../upstream/forward.js';
import { handleRequest, closingSockets, httpsByTrustedProxy, requestIdOf, type RequestContext, type Upgrade, type WsCounters } from './request.js';
import { closeAllWebSockets, closeWebSocketsOn, type WsStats } from './websocket.js';
import { CertStore } from './tls.js';
import { MemoryStore } from '../state/memory.js';
import { RedisStore, type RedisSetting } from '../state/redis.js';
import type { CounterStore } from '../state/types.js';
import { CacheStores } from '../plugins/cache/stores.js';
import type { PurgeFilter } from '../plugins/cache/entry.js';
import { createAdminHandler, createStatusHandler } from './admin.js';
import { ScalingAdvisor } from '../scaling/advisor.js';
import { DemandMeter } from '../scaling/meter.js';
import type { startKedaServer } from '../scaling/keda.js';
import { NODE_ID } from '../core/node-id.js';
import { ConsoleHandler } from '../console/handler.js';
import { AuthFailures } from '../admin/auth.js';
import { createEchoServer } from '../demo/echo.js';
import { ALLOW_ALL, GATEWAY_RESET, PROBLEMS, isHttp2, markRawAnswered, rawProblem, sendProblem, type ProblemCode } from '../core/problem.js';
import { isTls } from '../core/headers.js';
import { clientIp, plainIp, xFromForwarded } from '../core/forwarded.js';
import { silentLogger, type Logger } from '../core/log.js';
import { fdWatch } from '../core/fd-limit.js';
import { Observer } from '../observability/observer.js';
import type { GaugeSource } from '../observability/metrics.js';
import type { AnalyticsState } from '../observability/analytics.js';
import { SharedAnalytics } from '../observability/shared-analytics.js';
import { Analytics } from '../observability/analytics.js';
import { AccountService, type AccountBackend, type AccountRequest, type AccountResponse, type Usage } from '../portal/accounts.js';
import { quotaViews } from '../plugins/quota/index.js';
import { performance } from 'node:perf_hooks';

export interface GatewayOptions {
  logger?: Logger;
  /**
   * single: everything in this process. primary (src/server/cluster.ts): admin, demo upstream
   * and the health authority, no proxy listener. worker: the proxy listener only; health and
   * circuits are decided by the primary (`reporter` sends it what this worker sees).
   */
  role?: 'single' | 'primary' | 'worker';
  reporter?: Reporter;
  /** Every health/circuit decision (primary: broadcast to workers). */
  onDecision?: (d: Decision) => void;
  /** Worker processes, for the admin view (primary). */
  workers?: () => { pid: number | undefined; state: string; config_hash?: string | null; reload_failed?: { error: string; at: string; successor_failures?: number; next_try_at?: string } }[];
  /** Every snapshot swap after the first (primary: sends the config to the workers). */
  onSwap?: (loaded: LoadedConfig, snapshot: Snapshot) => void;
  /** Worker: the primary's DNS answers (a worker never resolves on its own). */
  dnsTable?: Record<string, string[]>;
  /** Worker: this node's counters, held by the primary (default: an in-memory store of its own). */
  localCounters?: CounterStore;
  /** Primary: the workers' metrics (prom-client JSON) and analytics states, for the admin views. */
  collect?: () => Promise<{ metrics: unknown[][]; analytics: AnalyticsState[] }>;
  /** Primary: DELETE /cache reaches the workers' memory caches (resolves with their count). */
  purgeWorkers?: (filter: PurgeFilter) => Promise<number>;
  /** The config store's side of the admin listener: `/api/` and /status's `config` (src/server/control-plane.ts). */
  control?: ControlView;
}

export interface ControlView {
  api(tokens: () => readonly AdminToken[], sessionCaller?: (req: IncomingMessage, method: string) => { name: string; role: 'admin' | 'read-only' } | undefined, failures?: AuthFailures): (req: IncomingMessage, res: ServerResponse) => Promise<void>;
  status(): Record<string, unknown>;
  /** How a reload from the config file (SIGHUP, file watch) ended: null when it was applied, else why it was rejected. */
  reloaded?(trigger: string, error: string | null): void;
  /** Where developer accounts are kept (the portal's sign-up, keys). */
  accountBackend?(): AccountBackend;
}

/** Listens; from then on the server's accept errors are logged (fd-limit.ts), never fatal. */
function listen(server: NetServer, addr: Address, name: string): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(addr.port, addr.host, () => {
      server.off('error', onError);
      fdWatch.watchListener(server, name);
      resolve(server.address() as AddressInfo);
    });
  });
}

/**
 * The live snapshot's bulkhead limits go to the shared service state (queued requests obey them
 * too): a raised limit (or none) admits the waiting requests now, not when a slot is released.
 */
function applyLimits(snap: Snapshot): void {
  for (const s of snap.services) {
    s.state.maxConcurrent = s.bulkhead?.maxConcurrent ?? Infinity;
    s.state.maxPending = s.bulkhead?.maxPending ?? Infinity;
    if (s.state.queue.length > 0) grantSlots(s.state);
  }
}

const kPending = Symbol('turnpike.pendingResponses');
/**
 * Per connection: when it was accepted, requests in progress (of them, unsafe ones), pipelined
 * ones waiting their turn (of them, in `queue`: safe ones waiting for one of the
 * MAX_SIDE_BY_SIDE places), whether it served one; `retire`: closed once its requests are answered
 * (its client certificate was verified under a client CA or CRL since replaced).
 */
interface ConnState { at: number; active: number; unsafe: number; waiting: number; served: boolean; retire?: true; queue?: (() => void)[] }
/** Methods whose pipelined requests may be handled side by side (RFC 9110 §9.2.1). */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);
/**
 * How many requests of one connection are handled side by side at most: the rest wait their
 * turn. Unbounded, one packet of pipelined GETs (500 in 14 kB) was as many upstream requests at
 * once, their answers held in memory until the client read them.
 */
const MAX_SIDE_BY_SIDE = 8;
const kConn = Symbol('turnpike.conn');
type TrackedSocket = Socket & { [kConn]?: ConnState };
/** An Expect value holding 100-continue (node:http's own test; RFC 9110 §10.1.1: case-insensitive). */
const CONTINUE_RE = /(?:^|\W)100-continue(?:$|\W)/i;
/** How long a new connection may take to send its first request once draining began. */
const FIRST_REQUEST_GRACE_MS = 1000;

const kNoticed = Symbol('turnpike.shutdownNotice');
/** How long the final GOAWAY waits for the PING sent after a shutdown notice to come back. */
const NOTICE_RTT_MAX_MS = 1000;

/**
 * An HTTP/2 session's shutdown notice (RFC 9113 §6.8's graceful shutdown, Envoy's first
 * GOAWAY): GOAWAY with the largest stream id, so the client opens its next streams elsewhere;
 * then, a round trip later (a PING sent after it comes back; at most NOTICE_RTT_MAX_MS), the
 * final GOAWAY with the last stream id processed (session.close(): the streams in progress
 * finish). node:http2 has no nghttp2 submit_shutdown_notice: once any GOAWAY went out nghttp2
 * takes no new stream, so a stream that crossed the notice is never processed — the final GOAWAY
 * tells its client so (REFUSED_STREAM: safe to send again elsewhere) at once; it waited for the
 * end of the shutdown delay before, a client that does not answer a GOAWAY with its own hanging.
 */
function shutdownNotice(session: ServerHttp2Session & { [kNoticed]?: true }): void {
  if (session[kNoticed] || session.closed || session.destroyed) return;
  session[kNoticed] = true;
  let timer: NodeJS.Timeout | undefined;
  const close = () => {
    clearTimeout(timer);
    if (!session.closed && !session.destroyed) session.close();
  };
  try {
    session.goaway(h2c.NGHTTP2_NO_ERROR, 2 ** 31 - 1);
    timer = setTimeout(close, NOTICE_RTT_MAX_MS);
    timer.unref();
    if (!session.ping(close)) close();
  } catch {
    close(); // (the session is going away already)
  }
}

/**
 * Node emits pipelined requests at once but queues their responses; when the client goes away
 * first, a queued response never gets a socket and never emits 'close'. Such responses (no
 * socket yet) are tracked per socket and closed with it, so in-flight counts and upstream
 * requests end too.
 */
function trackPending(socket: Socket, res: ServerResponse): Set<ServerResponse> {
  const s = socket as Socket & { [kPending]?: Set<ServerResponse> };
  let pending = s[kPending];
  if (!pending) {
    const set = (pending = s[kPending] = new Set());
    socket.once('close', () => {
      for (const r of set) r.emit('close');
      set.clear();
    });
  }
  pending.add(res);
  res.once('socket', () => pending.delete(res));
  return pending;
}

/** How long the rest of a request body answered early is read and dropped before the connection is cut (nginx's lingering_time). */
const LINGER_MS = 30_000;

/** Resets an answered stream with NO_ERROR once its END_STREAM is out (at most until `deadline`: a client that does not read). */
function resetWhenSent(stream: ServerHttp2Stream, deadline: number): void {
  if (stream.closed || stream.destroyed) return;
  if ((stream.state as { localClose?: number }).localClose === 1 || Date.now() >= deadline) stream.close(h2c.NGHTTP2_NO_ERROR);
  else setTimeout(resetWhenSent, 10, stream, deadline);
}

/**
 * An answer complete before its request body (the upstream, or a plugin, answered early): the
 * client may send all of it before it reads anything. Over HTTP/1.1 the rest is read and
 * dropped, as node does for a body nobody consumed (here undici stopped reading it, or even
 * destroyed the stream, and the connection would stall for good), for at most LINGER_MS (nginx's
 * lingering close); over HTTP/2 the stream is reset with NO_ERROR (RFC 9113 §8.1).
 */
function discardBody(req: IncomingMessage, socket: Socket): void {
  if (isHttp2(req)) {
    const stream = (req as unknown as { stream: ServerHttp2Stream }).stream;
    req.unpipe();
    req.resume(); // (node sends the RST_STREAM once the readable side is drained)
    if (stream.closed || stream.destroyed) return;
    // After the answer's last frame (its trailers: a bidi gRPC call the server finishes first
    // gets its grpc-status): a reset submitted at 'finish' overtakes frames node still holds.
    resetWhenSent(stream, Date.now() + LINGER_MS);
    return;
  }
  if (socket.destroyed) return;
  req.unpipe();
  // node:http's own way to drop a body: the parser discards what comes, and reading resumes.
  const dump = (req as IncomingMessage & { _dump?: () => void })._dump;
  if (typeof dump === 'function') dump.call(req);
  else req.resume();
  socket.resume();
  const timer = setTimeout(() => {
    if (!req.complete) socket.destroy();
  }, LINGER_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/** The head of an upgrade request without its Upgrade, HTTP2-Settings and Connection: upgrade (the parser validated the rest). */
function withoutUpgrade(req: IncomingMessage): Buffer {
  let head = `${req.method} ${req.url} HTTP/1.${req.httpVersionMinor === 0 ? 0 : 1}\r\n`;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (name === 'upgrade' || name === 'http2-settings') continue;
    let value = raw[i + 1]!;
    if (name === 'connection') {
      value = value.split(',').map((t) => t.trim()).filter((t) => t !== '' && !/^(upgrade|http2-settings)$/i.test(t)).join(', ');
      if (value === '') continue;
    }
    head += `${raw[i]}: ${value}\r\n`;
  }
  return Buffer.from(`${head}\r\n`, 'latin1');
}

/** The HTTP/2 connection preface (RFC 9113 §3.4): how an h2c prior-knowledge client starts. */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

const closeServer = (s: NetServer | null) => (s && s.listening ? new Promise<void>((r) => s.close(() => r())) : Promise.resolve());

/** The response node:http is writing on this connection (an earlier pipelined request's), if any. */
function pendingResponse(socket: Socket): ServerResponse | null {
  return (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage ?? null;
}

/**
 * Runs `fn` once node:http has no response left to write on this socket (it assigns queued
 * pipelined responses one after another as each finishes).
 */
/** Sockets whose parser failed behind requests still being answered: their 400 waits (clientError). */
const refusing = new WeakSet<Socket>();

function afterResponses(socket: Socket, fn: () => void): void {
  const pending = pendingResponse(socket);
  if (pending === null) return fn();
  let done = false;
  const next = () => {
    if (done) return;
    done = true;
    setImmediate(() => {
      if (!socket.destroyed) afterResponses(socket, fn);
    });
  };
  pending.once('finish', next);
  pending.once('close', next);
}

/**
 * The answer to a request whose handling failed: a 500 problem, or, when even that cannot be
 * written (fields the handler left that the protocol refuses, such as a field allowed once set
 * twice over HTTP/2), the response reset (HTTP/2: the stream closed with INTERNAL_ERROR). It is
 * called from event handlers, and src/ has no uncaughtException handler: it never throws.
 */
export function answerFailed(log: Logger, req: IncomingMessage, res: ServerResponse): void {
  try {
    sendProblem(res, 'internal-error', 'the gateway failed to handle this request', requestIdOf(req), { close: true });
  } catch (err) {
    log.error({ err }, 'the problem for a failed request could not be written: the response is reset');
    try {
      if (isHttp2(res)) (res as unknown as { stream: ServerHttp2Stream }).stream.close(h2c.NGHTTP2_INTERNAL_ERROR);
      else res.destroy();
    } catch {
      // (already closed)
    }
  }
}

/** A request line `METHOD target HTTP/x.y` at the start of what the parser refused, or null. */
function requestLine(raw: Buffer | undefined): RegExpExecArray | null {
  return raw === undefined ? null : /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) [!-~]+ HTTP\/[0-9]\.[0-9]\r\n/.exec(raw.toString('latin1', 0, 8192));
}

export class Gateway implements RequestContext {
  snapshot: Snapshot;
  draining = false;
  revision = 1;
  /** /status 200: the proxy listener accepts (a primary: one of its workers does, see cluster.ts). */
  ready = false;
  private stopCalled = false;
  get stopping(): boolean { return this.stopCalled; }
  readonly startedAt = Date.now();
  private inflight = 0;
  readonly ws: WsCounters = { opened: 0, rejected: 0, closed: 0, messagesIn: 0, messagesOut: 0 };
  private readonly connections = new Set<TrackedSocket>();
  private readonly pools: PoolRegistry;
  readonly runtime: RuntimeState;
  /** Local health authority (null in a worker: the primary holds it). */
  readonly health: HealthAuthority | null;
  private readonly reporter: Reporter;
  readonly role: 'single' | 'primary' | 'worker';
  readonly workers: GatewayOptions['workers'];
  readonly log: Logger;
  /** The HTTP/1.1 server: listens itself, or is handed connections (TLS, h2c sniffing). */
  private proxy: Server | null = null;
  /** The plain listener when it also takes h2c: it reads the first bytes and hands the socket on. */
  private plain: NetServer | null = null;
  private h2: Http2Server | null = null;
  private tlsServer: TlsServer | null = null;
  private certs: CertStore | null = null;
  /** Upstream names whose last refresh failed (their warning is logged once per outage). */
  private dnsFailing = new Set<string>();
  private readonly sessions = new Set<ServerHttp2Session>();
  /** Plain connections whose first bytes are not read yet (h2c sniffing). */
  private readonly sniffing = new Set<Socket>();
  private admin: Server | null = null;
  /** status_listen: the probes alone. */
  private status: Server | null = null;
  private demo: Server | null = null;
  proxyAddress: AddressInfo | null = null;
  tlsAddress: AddressInfo | null = null;
  adminAddress: AddressInfo | null = null;
  statusAddress: AddressInfo | null = null;
  demoAddress: AddressInfo | null = null;

  /** The config of the running snapshot (recompiled when DNS answers change). */
  loaded: LoadedConfig;
  /** DNS answers of the running snapshot (replaced together with it). */
  dns: DnsCache;
  private dnsTimer: NodeJS.Timeout | undefined;
  /** When the DNS timer fires (epoch ms; 0: not set). */
  private dnsTimerAt = 0;
  /** A DNS round is running (it schedules the next one when done). */
  private dnsRound = false;
  private readonly onSwap: GatewayOptions['onSwap'];
  /** Counters for limits: this node's (in the primary with workers), and Redis when configured. */
  readonly counters: { local: CounterStore; redis: CounterStore | null };
  /** The `redis` setting (JSON; '' for none) that counters.redis was made from. */
  private redisSetting = '';
  /** Response caches (the cache plugin): this process's, kept across reloads. */
  readonly caches: CacheStores;
  private readonly purgeWorkers: ((filter: PurgeFilter) => Promise<number>) | null;

  /** DELETE /cache: this process's caches (and Redis), and the workers' when there are any. */
  async purgeCache(filter: PurgeFilter): Promise<{ purged: number }> {
    const own = await this.caches.purge(filter);
    return { purged: own.purged + (this.purgeWorkers ? await this.purgeWorkers(filter) : 0) };
  }
  /** Metrics, access log, analytics, tracing. */
  readonly observer: Observer;
  /** Analytics shared with other nodes through Redis (null: no redis, or analytics off). */
  private shared: SharedAnalytics | null = null;
  private reloadsOk = 0;
  private reloadsFailed = 0;
  readonly collect: GatewayOptions['collect'];
  /**
   * The scaling advisor (single process and primary; null in a worker) and the demand meter
   * requests are counted in (the advisor's own, or a worker's, drained to the primary).
   */
  readonly scaling: ScalingAdvisor | null;
  readonly demand: DemandMeter;
  private keda: Awaited<ReturnType<typeof startKedaServer>> | null = null;
  /** The settings the KEDA scaler runs with (a reload may change its TLS material only). */
  private kedaRunning: NonNullable<Snapshot['scaling']>['keda'] = null;
  /** The web console on the admin listener (src/console/), null in a worker. */
  readonly console: ConsoleHandler | null;
  /** Wrong admin tokens per client, for the whole admin listener (the bearer token and the console's sign-in). */
  readonly adminFailures = new AuthFailures();
  /**
   * The portal's developer accounts (src/portal/accounts.ts): answered here in a single process
   * or the primary (which owns the config store); a worker sets it to ask its primary over IPC.
   */
  portalAccounts: ((r: AccountRequest) => Promise<AccountResponse>) | null = null;
  /** The config store's admin API and status (a node with `store: sqlite|postgres`, or file). */
  control: { api: (req: IncomingMessage, res: ServerResponse) => Promise<void>; status(): Record<string, unknown> } | null = null;

  private constructor(loaded: LoadedConfig, opts: GatewayOptions, dns: DnsCache) {
    this.log = opts.logger ?? silentLogger;
    this.counters = { local: opts.localCounters ?? new MemoryStore(undefined, { log: this.log }), redis: null };
    this.caches = new CacheStores(this.log);
    this.loaded = loaded;
    this.dns = dns;
    this.onSwap = opts.onSwap;
    this.pools = new PoolRegistry();
    this.runtime = new RuntimeState();
    this.role = opts.role ?? 'single';
    this.workers = opts.workers;
    if (this.role === 'worker') {
      if (!opts.reporter) throw new Error('a worker needs a reporter');
      this.health = null;
      this.reporter = opts.reporter;
    } else {
      const onDecision = opts.onDecision;
      const health = new HealthAuthority((d) => {
        applyDecision(this.runtime, d);
        onDecision?.(d);
      }, this.log);
      this.health = health;
      this.reporter = health;
    }
    const redis = this.redisFor(loaded);
    try {
      this.snapshot = compile(loaded, this.deps(dns, { local: this.counters.local, redis: redis.store }));
    } catch (err) {
      if (redis.fresh) void redis.store!.close();
      throw err;
    }
    try {
      this.observer = new Observer(this.snapshot.observability, this.gauges(), this.log, this.role);
    } catch (err) {
      this.snapshot.dispose();
      if (redis.fresh) void redis.store!.close();
      throw loaded.error([{ path: ['access_log'], message: (err as Error).message }]);
    }
    this.collect = opts.collect;
    this.purgeWorkers = opts.purgeWorkers ?? null;
    this.scaling = this.role === 'worker' ? null : new ScalingAdvisor(this.log);
    this.demand = this.scaling?.meter ?? new DemandMeter();
    this.scaleTo(this.snapshot);
    // Wrong admin tokens count per client: the one a trusted proxy (an ingress) names.
    // (X-Forwarded-For, or Forwarded alone as the proxy listener reads it: src/server/request.ts)
    this.adminFailures.clientOf = (req) => {
      const peer = plainIp(req.socket.remoteAddress);
      const xff = req.headers['x-forwarded-for'];
      let chain = Array.isArray(xff) ? xff.join(', ') : xff;
      const fwd = req.headers.forwarded;
      if (chain === undefined && fwd !== undefined && this.snapshot.trusted.has(peer)) chain = xFromForwarded(fwd)?.for;
      return clientIp(peer, chain, this.snapshot.trusted);
    };
    this.console = this.role === 'worker' ? null : new ConsoleHandler({
      tokens: () => this.snapshot.admin?.tokens ?? [],
      origins: () => this.snapshot.admin?.consoleOrigins ?? [],
      failures: this.adminFailures,
      analyticsStates: () => this.analyticsStates(),
      analyticsEnabled: () => this.snapshot.observability.analytics !== null,
      get inFlight() { return gwInFlight(); },
      health: this.health,
      metricsText: async () => (this.observer.metrics ? this.observer.metrics.text(this.collect ? (await this.collect()).metrics : []) : null),
      scaling: this.scaling,
    });
    const gwInFlight = () => this.inFlight;
    if (opts.control) {
      const control = opts.control;
      this.control = { api: control.api(() => this.snapshot.admin?.tokens ?? [], (req, method) => this.console?.caller(req, method), this.adminFailures), status: () => control.status() };
      const backend = control.accountBackend?.();
      if (backend) {
        const accounts = new AccountService(backend, { settings: () => this.snapshot.portal, usage: (c) => this.consumerUsage(c) }, this.log);
        this.portalAccounts = (r) => accounts.handle(r);
      }
    }
    this.useRedis(redis);
    this.shareAnalytics();
    this.persistCounters(this.snapshot);
    applyLimits(this.snapshot);
    this.health?.sync(this.snapshot);
    if (this.role !== 'worker') this.scheduleDnsRefresh();
  }

  /** Publishes analytics to the config's Redis (node or primary; workers report to their primary). */
  private shareAnalytics(): void {
    const redis = this.counters.redis;
    const settings = this.snapshot.observability.analytics;
    // Scaling shares demand across the nodes of this Redis too.
    this.scaling?.share(redis instanceof RedisStore ? redis.client : null, redis instanceof RedisStore ? redis.prefix : '', NODE_ID);
    const want = this.role !== 'worker' && redis instanceof RedisStore && settings !== null;
    if (want && this.shared?.client === (redis as RedisStore).client && this.shared.publishMs === settings.publishMs) return;
    this.shared?.stop();
    this.shared = null;
    if (!want) return;
    const store = redis as RedisStore;
    this.shared = new SharedAnalytics(store.client, store.prefix, () => this.localAnalytics(), this.log, settings!.publishMs);
    this.shared.start();
  }

  /** This node's analytics states: its own, or its workers'. */
  private async localAnalytics(): Promise<AnalyticsState[]> {
    const states = this.collect ? (await this.collect()).analytics : [];
    const own = this.observer.analytics;
    if (own !== null) states.push(own.state());
    return states;
  }

  /** A consumer's own usage (the portal's account page): its quotas and request counts. */
  async consumerUsage(consumer: string): Promise<Usage> {
    const plan = this.snapshot.consumers.get(consumer)?.plan;
    const views = [...quotaViews].filter((v) => v.byConsumer && (v.where.startsWith('plans.') ? plan !== undefined && v.where.startsWith(`plans.${plan}.plugins.`) : true));
    const quotas: Usage['quotas'] = [];
    for (const v of views) {
      const u = await v.usage(consumer);
      // (a binding for one consumer shows only to them: the others have no count there)
      if (v.where.startsWith('consumers.') && u.used === 0) continue;
      if (!quotas.some((q) => q.name === v.name && q.limit === v.limit && q.every === v.period)) quotas.push({ name: v.name, limit: v.limit, every: v.period, ...u });
    }
    if (this.snapshot.observability.analytics === null) return { quotas, last_hour: null, last_day: null };
    const { states } = await this.analyticsStates();
    const window = (w: '1h' | '24h') => {
      const t = Analytics.report(states, w, { consumer }).total;
      return { requests: t.requests, errors: t.errors, client_errors: t.client_errors };
    };
    return { quotas, last_hour: window('1h'), last_day: window('24h') };
  }

  /** Analytics states of this node and (with redis) the other nodes that published recently. */
  async analyticsStates(): Promise<{ states: AnalyticsState[]; nodes: number; error?: string }> {
    const states = await this.localAnalytics();
    if (this.shared === null) return { states, nodes: 1 };
    try {
      const o = await this.shared.others();
      return { states: [...states, ...o.states], nodes: 1 + o.nodes };
    } catch (err) {
      return { states, nodes: 1, error: `other nodes unknown: ${(err as Error).message}` };
    }
  }

  /** /status: the `redis` setting's connection (limits with policy redis apply their fault while it is down). */
  redisStatus(): Record<string, unknown> | null {
    const redis = this.counters.redis;
    return redis instanceof RedisStore ? redis.status() : null;
  }

  /** A reload that failed before it reached the gateway (the file did not parse or validate). */
  reloadRejected(): void {
    this.reloadsFailed++;
  }

  /** What /metrics reads besides per-route counts. */
  private gauges(): GaugeSource {
    return {
      inFlight: () => this.inflight,
      revision: () => this.revision,
      reloads: () => ({ ok: this.reloadsOk, failed: this.reloadsFailed }),
      targets: () => {
        // (the health authority decides; a worker only mirrors its decisions)
        if (this.health === null) return [];
        return this.snapshot.services.flatMap((svc) => svc.targets.map((t) => ({ service: svc.name, target: t.origin, url: t.url, up: !t.state.down })));
      },
      circuits: () => this.health === null ? [] : Object.entries(this.health.report().circuits).map(([service, state]) => ({ service, state })),
      websockets: () => (this.role === 'primary' ? null : this.ws),
      scaling: () => ({ services: this.scaling?.gauges() ?? [], gateway: this.scaling?.enabled ? this.scaling.gatewayGauges() : null }),
    };
  }

  /** The node's quota counters go to the config's state file (the primary or single process keeps it). */
  private persistCounters(snap: Snapshot): void {
    const local = this.counters.local;
    if (this.role === 'worker' || !(local instanceof MemoryStore)) return;
    try {
      local.persist(snap.stateFile, this.log);
    } catch (err) {
      this.log.error({ err: (err as Error).message, file: snap.stateFile }, 'cannot keep quota counters in the state file; they live in memory only');
    }
  }

  private deps(dns: DnsCache = this.dns, counters: CompileDeps['counters'] = this.counters): CompileDeps {
    return { pools: this.pools, state: this.runtime, reporter: this.reporter, cores: availableParallelism(), dns, log: this.log, counters, caches: this.caches };
  }

  /**
   * The Redis store a config compiles with: the running one while its `redis` setting is the
   * same, else a new one (none without the setting). `fresh`: made now, so it is closed if that
   * config is not swapped in.
   */
  private redisFor(loaded: LoadedConfig): { store: RedisStore | null; setting: string; fresh: boolean } {
    const value = loaded.config.redis as RedisSetting | undefined;
    const setting = value === undefined ? '' : JSON.stringify(value);
    if (setting === this.redisSetting) return { store: this.counters.redis as RedisStore | null, setting, fresh: false };
    if (value === undefined) return { store: null, setting, fresh: false };
    try {
      return { store: new RedisStore(value, { log: this.log }), setting, fresh: true };
    } catch (err) {
      throw loaded.error([{ path: ['redis'], message: (err as Error).message }]);
    }
  }

  /** Waits (at most 1 s) for a Redis store to connect; a Redis that does not answer is logged. */
  private async redisReady(store = this.counters.redis): Promise<void> {
    if (!(store instanceof RedisStore)) return;
    await store.waitReady(1000).catch((err: Error) => {
      this.log.warn({ err: err.message, redis: store.describe() }, 'redis not reachable yet: limits with policy redis apply their fault until it is');
    });
  }

  /** Makes a swapped-in config's store the running one; the one it replaces is closed. */
  private useRedis(redis: { store: RedisStore | null; setting: string; fresh: boolean }): void {
    if (redis.setting === this.redisSetting) return;
    const old = this.counters.redis;
    this.counters.redis = redis.store;
    this.redisSetting = redis.setting;
    // Requests of the previous snapshot still waiting on it get their answers (QUIT, at most
    // 250 ms); one that asks it later fails and gets its limit's `fault`.
    if (old) void old.close?.();
    if (redis.store) this.log.info({ redis: redis.store.describe() }, 'redis counter store in use');
  }


  /** A copy of `base` with the config's DNS settings and its names not resolved yet resolved (failures logged). */
  private static async resolveNew(base: DnsCache, loaded: LoadedConfig, log: Logger): Promise<DnsCache> {
    const names = upstreamNames(loaded.config);
    const dns = base.fork(dnsSettings(loaded.config), names);
    const fresh = names.filter((h) => dns.get(h) === undefined);
    if (fresh.length > 0) {
      const { failed } = await dns.refresh(fresh);
      for (const f of failed) log.warn({ host: f.host, error: f.error }, 'upstream name does not resolve: no targets for it until it does');
    }
    return dns;
  }

  /** When the next upstream name is due to be asked again (at most dns.refresh from now). */
  private nextDnsAt(now: number): number {
    let at = now + this.dns.refreshMs;
    for (const name of upstreamNames(this.loaded.config)) at = Math.min(at, this.dns.dueAt(name, now));
    // (at least 100 ms apart: a round that could not record its answers does not spin)
    return Math.max(at, now + 100);
  }

  private scheduleDnsRefresh(): void {
    clearTimeout(this.dnsTimer);
    if (this.draining) return;
    const now = performance.now(); // (dns.ts: the monotonic clock)
    this.dnsTimerAt = this.nextDnsAt(now);
    this.dnsTimer = setTimeout(() => void this.refreshDns(), this.dnsTimerAt - now);
    this.dnsTimer.unref();
  }

  /**
   * Re-resolves the upstream names that are due (dns.ts: their TTL, or dns.refresh) into a
   * copy; a changed answer recompiles the running config with it. The running cache learns when
   * each was asked either way. While another reload is under way the new answers are not taken:
   * the running ones did not change, so the name's next round sees the difference again
   * (nothing is lost if that reload fails).
   */
  private async refreshDns(): Promise<void> {
    if (this.dnsRound) return;
    this.dnsRound = true;
    try {
      const names = upstreamNames(this.loaded.config);
      // (names due within 50 ms go in this round too)
      const now = performance.now() + 50;
      const due = names.filter((n) => this.dns.dueAt(n, now) <= now);
      if (due.length) {
        const next = this.dns.fork(this.dns.settings);
        const { changed, failed } = await next.refresh(due);
        this.dns.adoptAsked(next, due);
        // Said when a name starts failing and when it resolves again, not every round.
        const nowFailing = new Set<string>();
        for (const host of this.dnsFailing) if (!due.includes(host) && names.includes(host)) nowFailing.add(host);
        for (const f of failed) {
          nowFailing.add(f.host);
          if (f.dropped) this.log.warn({ host: f.host, error: f.error }, 'upstream name does not exist (said twice) or its last answer is older than dns.max_stale: its addresses are dropped, no targets for it until it resolves');
          else if (!this.dnsFailing.has(f.host)) this.log.warn({ host: f.host, error: f.error }, f.kept ? 'upstream name failed to resolve; keeping its last addresses' : 'upstream name does not resolve: no targets for it until it does');
          else this.log.debug({ host: f.host, error: f.error }, 'upstream name still fails to resolve');
        }
        for (const host of this.dnsFailing) if (!nowFailing.has(host) && due.includes(host)) this.log.info({ host }, 'upstream name resolves again');
        this.dnsFailing = nowFailing;
        if (changed && !this.draining && this.reloading === 0) {
          this.log.info({ dns: Object.fromEntries(due.map((n) => [n, next.get(n)])) }, 'upstream addresses changed');
          await this.reloadAsync(this.loaded, { dns: next });
        }
      }
    } catch (err) {
      this.log.error({ err: err instanceof ConfigError ? err.message : String(err) }, 'recompiling with new DNS answers failed');
    } finally {
      this.dnsRound = false;
    }
    this.scheduleDnsRefresh();
  }

  /** Compiles the config and starts every listener it names. Throws ConfigError or a listen error. */
  static async start(loaded: LoadedConfig, opts: GatewayOptions = {}): Promise<Gateway> {
    const settings = dnsSettings(loaded.config);
    const dns = opts.dnsTable
      ? DnsCache.fromTable(settings, opts.dnsTable)
      : await Gateway.resolveNew(new DnsCache(settings), loaded, opts.logger ?? silentLogger);
    const gw = new Gateway(loaded, opts, dns);
    // The first requests find Redis connected (at most 1 s: a Redis that is down does not hold the start).
    await gw.redisReady();
    try {
      await gw.listenAll();
    } catch (err) {
      await gw.stop();
      throw err;
    }
    return gw;
  }

  /**
   * listen(), its failure naming the setting and its line ("listen EADDRINUSE 127.0.0.1:8081"
   * alone does not say which of the listeners it was). Not a ConfigError: the config is fine,
   * the host is not (a store's head must not be taken for a bad one).
   */
  private async bind(server: NetServer, addr: Address, name: string, path: PathSegment[]): Promise<AddressInfo> {
    try {
      return await listen(server, addr, name);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const why = e.code === 'EADDRINUSE' ? 'address already in use (EADDRINUSE: another process listens on it)'
        : e.code === 'EACCES' ? 'permission denied (EACCES: a port below 1024 needs privileges)'
          : e.code === 'EADDRNOTAVAIL' ? 'address not available (EADDRNOTAVAIL: no interface of this host has it)'
            : e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN' ? `the host name does not resolve (${e.code})`
              : e.message;
      const line = this.loaded.lineOf(path);
      const at = addr.host.includes(':') ? `[${addr.host}]:${addr.port}` : `${addr.host}:${addr.port}`;
      throw Object.assign(new Error(`${formatPath(path)}${line !== undefined && (this.loaded.config as Record<string, unknown>)[String(path[0])] !== undefined ? ` (line ${line})` : ''}: cannot listen on ${at}: ${why}`), { code: e.code });
    }
  }

  private async listenAll(): Promise<void> {
    const snap = this.snapshot;
    fdWatch.attach(this.log); // (until stop)
    if (snap.admin && this.role !== 'worker') {
      this.admin = createServer(createAdminHandler(this));
      this.adminAddress = await this.bind(this.admin, snap.admin.listen, 'admin', ['admin', 'listen']);
      this.log.info({ address: this.adminAddress }, 'admin listener up');
    }
    if (snap.statusListen && this.role !== 'worker') {
      this.status = createServer(createStatusHandler(this));
      this.statusAddress = await this.bind(this.status, snap.statusListen, 'status', ['status_listen']);
      this.log.info({ address: this.statusAddress }, 'status listener up');
    }
    const keda = snap.scaling?.keda;
    if (keda && this.scaling) {
      const advisor = this.scaling;
      // (gRPC and protobuf are loaded for the scaler alone: not by every start)
      const { startKedaServer } = await import('../scaling/keda.js');
      this.keda = await startKedaServer({ listen: keda, ...(keda.tls ? { tls: keda.tls } : {}), source: { lookup: (svc) => advisor.lookup(svc), onChange: (l) => advisor.onChange(l) }, log: this.log });
      this.kedaRunning = keda;
      this.log.info({ port: this.keda.port }, 'KEDA external scaler up');
    }
    if (snap.demo && this.role !== 'worker') {
      this.demo = createEchoServer();
      this.demoAddress = await this.bind(this.demo, snap.demo, 'demo', ['demo', 'listen']);
      this.log.info({ address: this.demoAddress }, 'demo upstream up');
    }
    // A primary does not listen on the proxy port itself: it is ready once a worker does (cluster.ts).
    if (this.role === 'primary') return;
    this.proxy = this.createProxyServer(snap);
    if (snap.http2.h2c || (snap.tls && snap.http2.enabled)) this.h2 = this.createH2Server(snap);
    if (snap.http2.h2c) {
      this.plain = this.createSniffingListener();
      this.proxyAddress = await this.bind(this.plain, snap.listen, 'proxy', ['listen']);
      // The HTTP server only gets connections handed over: node starts its connection tracking
      // (headersTimeout, hence slowloris protection, and closeAllConnections) on 'listening'.
      this.proxy.emit('listening');
    } else {
      this.proxyAddress = await this.bind(this.proxy, snap.listen, 'proxy', ['listen']);
    }
    if (snap.tls) {
      this.certs = new CertStore(snap.tls.certs, this.log);
      if (snap.tls.watch) this.certs.watch();
      this.certs.checkCrl();
      this.tlsServer = this.createTlsListener(snap);
      this.tlsAddress = await this.bind(this.tlsServer, snap.tls.listen, 'TLS', ['listen_tls']);
      this.log.info({ address: this.tlsAddress, http2: snap.http2.enabled }, 'TLS listener up');
    }
    this.ready = true;
    // (a plain listener that redirects to https cannot take the cache's background refreshes)
    this.caches.refresher.setListener(snap.tls?.redirect != null ? null : this.proxyAddress);
    this.log.info({ address: this.proxyAddress, h2c: snap.http2.h2c, revision: this.revision, hash: snap.hash }, 'proxy listener up');
  }

  /**
   * The plain listener with h2c: a connection that opens with the HTTP/2 preface goes to the
   * HTTP/2 server, anything else to the HTTP/1.1 server (the bytes read are put back first).
   */
  private createSniffingListener(): NetServer {
    return createNetServer({ noDelay: true, pauseOnConnect: true }, (socket) => {
      socket.on('error', () => socket.destroy());
      if (this.stopCalled) return void socket.destroy();
      this.sniffing.add(socket);
      socket.once('close', () => this.sniffing.delete(socket));
      let seen: Buffer = Buffer.alloc(0);
      const timer = setTimeout(() => socket.destroy(), this.snapshot.timeouts.clientHeader);
      const onData = (chunk: Buffer) => {
        seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
        const n = Math.min(seen.length, H2_PREFACE.length);
        const h2 = seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
        if (h2 && n < H2_PREFACE.length) return; // a prefix of the preface so far: read on
        clearTimeout(timer);
        this.sniffing.delete(socket);
        socket.off('data', onData);
        socket.pause();
        socket.unshift(seen);
        socket.removeAllListeners('error');
        if (h2) this.h2!.emit('connection', socket); // the session reads what was put back itself
        else {
          this.proxy!.emit('connection', socket);
          socket.resume();
        }
      };
      socket.on('data', onData);
      socket.resume();
    });
  }

  private createTlsListener(snap: Snapshot): TlsServer {
    const t = snap.tls!;
    const server = createTlsServer({
      SNICallback: this.certs!.sni,
      ALPNProtocols: snap.http2.enabled ? ['h2', 'http/1.1'] : ['http/1.1'],
      handshakeTimeout: t.handshakeTimeout,
      // Client certificates are asked for and verified when tls.client_ca is set; whether one is
      // required is the mtls-auth plugin's decision, per route.
      requestCert: t.requestCert,
      rejectUnauthorized: false,
      ...t.certs.defaultOptions(),
    });
    server.on('secureConnection', (socket: TLSSocket) => {
      (socket.alpnProtocol === 'h2' ? this.h2! : this.proxy!).emit('connection', socket);
    });
    // Failed handshakes (scanners, wrong versions, no shared cipher) are the client's problem.
    server.on('tlsClientError', (_err, socket) => socket.destroy());
    this.certs!.onChange = () => server.setSecureContext(this.certs!.current.defaultOptions());
    return server;
  }

  /**
   * HTTP/2 (TLS via ALPN, or h2c): every stream goes through the same request path as HTTP/1.1.
   * Limits: concurrent streams, header list size and pairs, session memory; a client that
   * cancels more than http2.max_resets streams within http2.reset_window (rapid reset,
   * CVE-2023-44487) gets a GOAWAY (ENHANCE_YOUR_CALM) and loses the connection.
   */
  private createH2Server(snap: Snapshot): Http2Server {
    const h = snap.http2;
    // Node >= 22 hands the cancelled streams of a fast flood to JS only in part (countReset
    // below sees too few), and its nghttp2 limits RST_STREAM frames itself: the same budget
    // (max_resets, refilled over reset_window) goes to it. Older Node ignores the options.
    const nativeResetLimit = { streamResetBurst: h.maxResets, streamResetRate: Math.max(1, Math.ceil(h.maxResets / Math.max(1, h.resetWindow / 1000))) };
    const server = createH2Server({
      ...nativeResetLimit,
      settings: {
        maxConcurrentStreams: h.maxConcurrentStreams,
        maxHeaderListSize: h.maxHeaderListSize,
        enablePush: false,
      },
      // A backstop twice past limits.max_headers (pseudo-header fields counted): past
      // max_headers handleRequest answers a 431 problem; past this node:http2 resets the stream.
      maxHeaderListPairs: 2 * snap.limits.maxHeaders + 8,
      maxSessionMemory: 16,
      maxSessionInvalidFrames: 100,
      maxSessionRejectedStreams: 100,
      maxOutstandingPings: 10,
      maxSettings: 32,
      unknownProtocolTimeout: snap.timeouts.clientHeader,
    });
    server.on('session', (session: ServerHttp2Session) => {
      this.sessions.add(session);
      session.once('close', () => this.sessions.delete(session));
      session.on('error', () => session.destroy());
      // (a session opened during timeouts.shutdown_delay gets its notice with its first stream, which is served)
      if (this.stopCalled) session.close();
      // Until its first request, a session gets timeouts.client_header, like an HTTP/1.1
      // connection (a preface alone, or a header block that never ends, holds nothing longer).
      const firstRequest = setTimeout(() => session.destroy(), this.snapshot.timeouts.clientHeader);
      session.once('close', () => clearTimeout(firstRequest));
      // close() sends GOAWAY and waits for open streams; a stream node:http2 never handed over
      // (an unfinished header block, or after nghttp2's own GOAWAY) would hold it forever.
      let open = 0;
      const finishClose = () => {
        if (session.closed && open === 0 && !session.destroyed) session.destroy();
      };
      session.setTimeout(this.snapshot.http2.idleTimeout, () => {
        session.close();
        finishClose();
      });
      let resets = 0;
      // (the monotonic clock: a wall clock stepped back would hold the window open and add up a
      // well-behaved client's cancellations until it lost its connection)
      let windowStart = performance.now();
      // A stream counts as reset by the client when it ends with RST_STREAM of any code but
      // INTERNAL_ERROR, or was aborted before its answer: also streams answered at once before
      // the client's reset was read (a flood of HEADERS + RST_STREAM against a fast 401/404/429
      // must trip it too). Not one the gateway reset itself (GATEWAY_RESET: a broken upstream
      // body, its RST_STREAM code passed on): node marks those aborted too, and an upstream
      // that cut 200 bodies cost an HTTP/2 client, and every stream it multiplexed, its connection.
      const countReset = () => {
        const now = performance.now();
        const h2s = this.snapshot.http2;
        if (now - windowStart > h2s.resetWindow) {
          windowStart = now;
          resets = 0;
        }
        if (++resets > h2s.maxResets && !session.destroyed) {
          this.log.warn({ peer: session.socket?.remoteAddress, resets }, 'HTTP/2 client cancels too many streams (rapid reset): connection closed');
          session.goaway(h2c.NGHTTP2_ENHANCE_YOUR_CALM);
          session.destroy();
        }
      };
      session.on('stream', (stream) => {
        clearTimeout(firstRequest);
        if (this.draining) shutdownNotice(session);
        open++;
        let aborted = false;
        stream.once('aborted', () => { aborted = true; });
        stream.once('close', () => {
          open--;
          const code = stream.rstCode;
          if ((stream as ServerHttp2Stream & { [GATEWAY_RESET]?: true })[GATEWAY_RESET] !== true
            && (aborted || (code !== undefined && code !== h2c.NGHTTP2_NO_ERROR && code !== h2c.NGHTTP2_INTERNAL_ERROR))) countReset();
          finishClose();
        });
      });
    });
    server.on('request', (req, res) => this.onRequest(req as unknown as IncomingMessage, res as unknown as ServerResponse, false));
    server.on('checkContinue', (req, res) => this.onRequest(req as unknown as IncomingMessage, res as unknown as ServerResponse, true));
    // Any other Expect (node:http2 takes only the exact `100-continue` for one; it answered a
    // bare 417 without this listener): the value is case-insensitive and may be a list (RFC 9110
    // §10.1.1), so a 100-continue in it is met as over HTTP/1.1; anything else is a 417 problem.
    server.on('checkExpectation', (req, res) => {
      const q = req as unknown as IncomingMessage;
      if (CONTINUE_RE.test(q.headers.expect ?? '')) return this.onRequest(q, res as unknown as ServerResponse, true);
      this.expectationFailed(q, res as unknown as ServerResponse);
    });
    // CONNECT (RFC 9113 §8.5): refused as over HTTP/1.1 — problem+json with Allow (node's own
    // answer is a bare 405), counted and logged like it.
    server.on('connect', (req, res) => {
      const q = req as unknown as IncomingMessage;
      const r = res as unknown as ServerResponse;
      const ex = this.observer.begin();
      if (ex !== null) r.once('close', () => this.observer.end(ex, q, r));
      sendProblem(r, 'method-not-allowed', 'CONNECT is not supported', requestIdOf(q), { headers: { allow: ALLOW_ALL } });
    });
    server.on('sessionError', () => {});
    return server;
  }

  onWsClose(stats: WsStats, route: string, requestId: string): void {
    this.log.info({ request_id: requestId, route, ws: stats }, 'websocket closed');
  }

  /** Every request from every listener and protocol: counted, TLS policies applied, then handleRequest. */
  private onRequest(req: IncomingMessage, res: ServerResponse, expectContinue: boolean, upgrade?: Upgrade, admitted = false): void {
    // A request pipelined behind one answered with Connection: close is never forwarded.
    if (closingSockets.has(req.socket)) return;
    const conn = !isHttp2(req) ? (req.socket as TrackedSocket)[kConn] : undefined;
    const unsafe = conn !== undefined && !SAFE_METHODS.has(req.method ?? '');
    if (conn !== undefined && res.socket === null && upgrade === undefined && !admitted) {
      const queued = conn.queue?.length ?? 0;
      if (unsafe || conn.unsafe > 0 || conn.waiting > queued) {
        // Pipelined requests are handled side by side only while all of them are safe (RFC 9112
        // §9.3.2): this one (and any behind it) waits until node:http hands it the connection,
        // i.e. the answers before it went out. One of them may close the connection: then it is
        // never forwarded.
        conn.waiting++;
        res.once('socket', () => {
          conn.waiting--;
          if (!req.socket.destroyed) this.onRequest(req, res, expectContinue);
        });
        return;
      }
      if (conn.active >= MAX_SIDE_BY_SIDE || queued > 0) {
        // Safe ones too, MAX_SIDE_BY_SIDE at most: the rest start in order as those end.
        conn.waiting++;
        (conn.queue ??= []).push(() => {
          conn.waiting--;
          if (!req.socket.destroyed) this.onRequest(req, res, expectContinue, undefined, true);
        });
        return;
      }
    }
    this.inflight++;
    if (conn) {
      conn.active++;
      if (unsafe) conn.unsafe++;
      conn.served = true;
    }
    const pending = res.socket ? null : trackPending(req.socket, res);
    let handler: ForwardHandler | undefined;
    let closed = false;
    const socket = req.socket; // (node detaches it from req by the time the answer is done)
    if (isHttp2(req)) {
      // (HTTP/2: the compatibility response's 'finish' and 'close' only come with the stream's
      // end, which is what an answer given before the upload ended must bring about)
      (req as unknown as { stream: NodeJS.EventEmitter }).stream.once('finish', () => req.complete || discardBody(req, socket));
    }
    const ex = this.observer.begin();
    res.on('close', () => {
      // 'close' can come twice for a pipelined response (ours on socket close, and Node's).
      if (closed) return;
      closed = true;
      this.inflight--;
      if (conn) {
        conn.active--;
        if (unsafe) conn.unsafe--;
        if (conn.queue !== undefined && conn.queue.length > 0 && conn.active < MAX_SIDE_BY_SIDE) conn.queue.shift()!();
        if (conn.retire && conn.active === 0 && conn.waiting === 0) socket.end();
      }
      pending?.delete(res);
      handler?.clientClosed();
      if (conn !== undefined && !req.complete && res.writableEnded && upgrade === undefined) discardBody(req, socket); // (HTTP/1.1)
      if (ex !== null) {
        try {
          this.observer.end(ex, req, res);
        } catch (err) {
          this.log.error({ err }, 'recording the request failed');
        }
      }
    });
    try {
      const tls = this.snapshot.tls;
      if (tls !== null) {
        if (isTls(req)) {
          if (tls.hsts !== null) res.setHeader('strict-transport-security', tls.hsts);
        } else if (tls.redirect !== null || tls.hsts !== null) {
          // A TLS-terminating load balancer in front (a trusted proxy saying https) is https:
          // redirected, its clients would come back the same way, forever.
          if (httpsByTrustedProxy(req, this.snapshot)) {
            if (tls.hsts !== null) res.setHeader('strict-transport-security', tls.hsts);
          } else if (tls.redirect !== null) return this.redirectToHttps(req, res, tls.redirect);
        }
      }
      const h = handleRequest(this, req, res, expectContinue, upgrade, ex);
      if (h instanceof Promise) {
        // Plugins waited on something: the handler comes later (or never, after a local reply).
        h.then((late) => {
          if (closed) late?.clientClosed();
          else handler = late;
        }, (err: unknown) => {
          this.log.error({ err }, 'request handler failed');
          answerFailed(this.log, req, res);
        });
      } else handler = h;
    } catch (err) {
      this.log.error({ err }, 'request handler failed');
      answerFailed(this.log, req, res);
    }
  }

  /** An Expect other than 100-continue (RFC 9110 §10.1.1): 417, in the catalogue's terms, counted and logged like every request. */
  private expectationFailed(req: IncomingMessage, res: ServerResponse): void {
    req.resume();
    const ex = this.observer.begin();
    if (ex !== null) res.once('close', () => this.observer.end(ex, req, res));
    sendProblem(res, 'expectation-failed', 'only the expectation 100-continue is supported', requestIdOf(req), { close: true });
  }

  /** The plain listener's answer when tls.redirect_http is on: the same URL on the TLS listener. */
  private redirectToHttps(req: IncomingMessage, res: ServerResponse, status: number): void {
    let raw = req.headers[':authority'] ?? req.headers.host;
    let url = req.url ?? '/';
    if (url.charCodeAt(0) !== 0x2f /* / */) {
      // absolute-form (RFC 9112 §3.2.2): its authority replaces Host, and its path is the path
      // (a '#' is checked first: with one the regex would backtrack)
      const m = url.includes('#') ? null : /^https?:\/\/([^/?#]*)(.*)$/is.exec(url);
      if (m !== null && m[1] !== '') {
        raw = m[1];
        url = m[2]!.charCodeAt(0) === 0x2f ? m[2]! : `/${m[2]!}`;
      } else url = '/';
    }
    const host = typeof raw === 'string' && /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$/.test(raw) ? raw.replace(/:[0-9]+$/, '') : null;
    // (the request id goes on every response, this one too)
    const requestId = requestIdOf(req);
    if (host === null) {
      sendProblem(res, 'bad-request', 'a redirect to https needs a valid Host header', requestId, { close: true });
      return;
    }
    const port = this.tlsAddress?.port ?? 443;
    const location = `https://${host}${port === 443 ? '' : `:${port}`}${url}`;
    const h1 = !isHttp2(req);
    res.writeHead(status, { location, 'content-length': 0, 'x-request-id': requestId, ...(h1 && this.draining ? { connection: 'close' } : {}) });
    res.end();
  }

  private createProxyServer(snap: Snapshot): Server {
    const { limits, timeouts } = snap;
    const server = createServer({
      requireHostHeader: false, // checked in handleRequest, to answer with problem+json
      headersTimeout: timeouts.clientHeader,
      requestTimeout: 0, // body idle time is bounded per request (timeouts.client_body)
      keepAliveTimeout: timeouts.keepAlive,
      connectionsCheckingInterval: Math.max(100, Math.min(1000, timeouts.clientHeader / 2)),
      maxHeaderSize: limits.maxUriLength + limits.maxHeaderSize + 64,
      noDelay: true,
      insecureHTTPParser: false,
    });
    // One more than the limit, so that handleRequest sees the overflow and answers 431.
    server.maxHeadersCount = limits.maxHeaders + 1;
    server.on('connection', (socket: TrackedSocket) => {
      // (a connection handed back after an ignored Upgrade is tracked already)
      if (socket[kConn] !== undefined) return;
      socket[kConn] = { at: Date.now(), active: 0, unsafe: 0, waiting: 0, served: false };
      this.connections.add(socket);
      socket.once('close', () => this.connections.delete(socket));
    });
    server.on('request', (req, res) => this.onRequest(req, res, false));
    server.on('checkContinue', (req, res) => this.onRequest(req, res, true));
    // An Expect other than 100-continue (RFC 9110 §10.1.1): 417, in the catalogue's terms.
    server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => this.expectationFailed(req, res));
    // Upgrade requests leave the parser with their raw socket. A WebSocket one gets a response
    // object bound to that socket and takes the usual path: a WebSocket route relays, any other
    // route answers as plain HTTP (Upgrade ignored, RFC 9110 §7.8) and closes.
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      socket.on('error', () => socket.destroy());
      if (req.httpVersionMinor === 0 || !/(^|,)\s*websocket\s*(,|$)/i.test(req.headers.upgrade ?? '')) {
        // An upgrade to anything but WebSocket (h2c, from curl --http2 or Java's HttpClient, on
        // POSTs too) is ignored (RFC 9110 §7.8): the request goes back to the HTTP parser as the
        // plain request it also is, body and keep-alive included, as nginx and Envoy serve it
        // (after the answers to requests pipelined before it). So is any Upgrade of an HTTP/1.0
        // request (RFC 9110 §7.8 says it MUST be ignored; a WebSocket handshake needs HTTP/1.1,
        // RFC 6455 §4.1, and a 101 may not go to an HTTP/1.0 client, RFC 9110 §15.2).
        socket.pause();
        afterResponses(socket, () => {
          socket.unshift(head.length ? Buffer.concat([withoutUpgrade(req), head]) : withoutUpgrade(req));
          socket.removeAllListeners('error');
          server.emit('connection', socket);
          socket.resume();
        });
        return;
      }
      // Pipelined behind requests still being answered: those answers go out first (in order,
      // RFC 9112 §9.3.2), then the connection closes; the upgrade is not taken up.
      if (pendingResponse(socket)) {
        afterResponses(socket, () => socket.destroySoon());
        return;
      }
      try {
        const res = new ServerResponse(req);
        res.shouldKeepAlive = false;
        res.assignSocket(socket);
        res.once('finish', () => socket.destroySoon());
        this.onRequest(req, res, false, { socket, head });
      } catch (err) {
        this.log.error({ err }, 'upgrade request failed');
        socket.destroy();
      }
    });
    server.on('connect', (req: IncomingMessage, socket: Socket) => {
      // Node hands the socket over without its error listener: keep one, and never wait on the peer.
      socket.on('error', () => socket.destroy());
      const requestId = requestIdOf(req);
      // (after the answers to requests pipelined before it)
      afterResponses(socket, () => {
        const answer = rawProblem('method-not-allowed', 'CONNECT is not supported', requestId);
        this.observer.refused(req, { code: 'method-not-allowed', requestId, bytes: Buffer.byteLength(answer.slice(answer.indexOf('\r\n\r\n') + 4)), grpcStatus: null, status: 405 });
        socket.end(answer, () => socket.destroy());
        setTimeout(() => socket.destroy(), 1000).unref();
      });
    });
    server.on('clientError', (err: NodeJS.ErrnoException & { rawPacket?: Buffer; reason?: string }, socket: Socket) => {
      if (err.code === 'ECONNRESET' || !socket.writable) {
        socket.destroy();
        return;
      }
      // (the parser stays in its error state: more bytes from the peer report it again)
      if (refusing.has(socket)) return;
      const pending = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
      // Bytes after a request with `Connection: close` (or an HTTP/1.0 one without keep-alive):
      // that request is still answered, then the connection closes; what followed is never
      // read (RFC 9112 §9.6).
      if (err.code === 'HPE_CLOSED_CONNECTION') {
        if (!pending) socket.destroySoon();
        return;
      }
      let code: ProblemCode = 'bad-request';
      let detail = `malformed HTTP request${err.reason ? `: ${err.reason}` : ''}`;
      if (err.code === 'HPE_HEADER_OVERFLOW') {
        const firstLineEnd = err.rawPacket ? err.rawPacket.indexOf('\n') : -1;
        if (firstLineEnd === -1 || firstLineEnd > this.snapshot.limits.maxUriLength) {
          code = 'uri-too-long';
          detail = `the request target is longer than ${this.snapshot.limits.maxUriLength} bytes`;
        } else {
          code = 'headers-too-large';
          detail = `header fields exceed ${this.snapshot.limits.maxHeaderSize} bytes`;
        }
      } else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT' || err.code === 'HPE_HEADERS_TIMEOUT') {
        code = 'request-timeout';
        detail = 'the request headers did not arrive in time';
      } else if (err.code === 'HPE_INVALID_METHOD' && !pending && requestLine(err.rawPacket) !== null) {
        // A well-formed request with a method the gateway does not know at all (RFC 9110 §9.1);
        // bytes that are no request line (a TLS ClientHello) stay a 400. (Behind a request, the
        // parser's raw bytes start with that request's line: a 400 there.)
        code = 'not-implemented';
        detail = 'the request method is not supported';
      } else if (err.code === 'HPE_INVALID_VERSION' && !pending && requestLine(err.rawPacket)?.[1] !== 'PRI' && requestLine(err.rawPacket) !== null) {
        // A well-formed request line with a version the parser does not speak (HTTP/3.0, HTTP/1.2);
        // a malformed one (bare LF, a second version) or a broken HTTP/2 preface stays a 400.
        code = 'http-version-not-supported';
        detail = 'only HTTP/1.0 and HTTP/1.1 are supported here (HTTP/2 over ALPN h2 or h2c)';
      }
      if (pending) {
        // The client closed: nothing more can reach it (a request mid-body ends, and logs, as 499).
        if (err.code === 'HPE_INVALID_EOF_STATE') { socket.destroy(); return; }
        // The parser stops at its first error, so when the pending request is itself incomplete,
        // the error is in its own framing (its body, or Transfer-Encoding checked after the head);
        // nothing of its response went out, so answering it here keeps the order. Otherwise the
        // bad bytes came after complete requests (a body longer than its Content-Length, junk
        // after a request): those are answered first, in order, then this 400 and the close
        // (as nginx does); the bad bytes never reach an upstream.
        if (pending.headersSent || pending.req?.complete !== false) {
          refusing.add(socket);
          afterResponses(socket, () => {
            const answer = rawProblem(code, detail);
            this.observer.parserRejected(socket.remoteAddress, PROBLEMS[code].status, code);
            socket.end(answer);
            socket.destroySoon();
          });
          return;
        }
      }
      const answer = rawProblem(code, detail);
      // (read before the socket ends: an address is gone once it is destroyed)
      const remote = socket.remoteAddress;
      socket.end(answer);
      // The request in flight logs once, with this answer; a request never parsed is logged here.
      if (pending) markRawAnswered(pending, code, answer.length - answer.indexOf('\r\n\r\n') - 4);
      else this.observer.parserRejected(remote, PROBLEMS[code].status, code);
      socket.destroySoon();
    });
    return server;
  }

  /** Swaps in a new config, compiled at once. Throws ConfigError (the running config stays). */
  reload(loaded: LoadedConfig): Snapshot {
    this.reloadSeq++;
    const redis = this.redisFor(loaded);
    let next: Snapshot;
    try {
      next = compile(loaded, this.deps(this.dns, { local: this.counters.local, redis: redis.store }));
    } catch (err) {
      if (redis.fresh) void redis.store!.close();
      this.reloadsFailed++;
      throw err;
    }
    return this.swap(loaded, next, this.dns, redis);
  }

  private reloadSeq = 0;
  private reloading = 0;

  /**
   * Swaps in a new config compiled in slices between requests (compileAsync), so a large
   * config never stalls the requests in flight. Rejects with ConfigError (the running config
   * stays). When a newer reload started meanwhile, this one is dropped in its favour.
   */
  async reloadAsync(loaded: LoadedConfig, opts: { dns?: DnsCache; dnsTable?: Record<string, string[]> } = {}): Promise<Snapshot> {
    const seq = ++this.reloadSeq;
    this.reloading++;
    let next: Snapshot;
    let dns: DnsCache;
    let redis: ReturnType<Gateway['redisFor']> | undefined;
    try {
      // A worker compiles with the primary's answers; otherwise resolve what is new.
      if (opts.dnsTable) dns = DnsCache.fromTable(dnsSettings(loaded.config), opts.dnsTable);
      else if (this.role === 'worker') dns = this.dns;
      else dns = await Gateway.resolveNew(opts.dns ?? this.dns, loaded, this.log);
      redis = this.redisFor(loaded);
      next = await compileAsync(loaded, this.deps(dns, { local: this.counters.local, redis: redis.store }));
    } catch (err) {
      if (redis?.fresh) void redis.store!.close();
      this.reloadsFailed++;
      throw err;
    } finally {
      this.reloading--;
    }
    if (redis.fresh) await this.redisReady(redis.store);
    if (seq !== this.reloadSeq || this.draining) {
      next.dispose();
      if (redis.fresh) void redis.store!.close();
      return this.snapshot;
    }
    return this.swap(loaded, next, dns, redis);
  }

  /** Scaling follows the snapshot: requests are counted while a service has `scaling`; the advisor keeps the windows of unchanged policies. */
  private scaleTo(snap: Snapshot): void {
    if (!snap.scaling) this.demand.resetInflight();
    else this.demand.keepServices(snap.services.map((s) => s.name));
    this.observer.demand = snap.scaling ? this.demand : null;
    this.scaling?.configure(snap.scaling, snap.services.map((svc) => ({
      name: svc.name,
      scaling: svc.scaling,
      healthyTargets: () => svc.targets.filter((t) => !t.state.down).length,
      queued: () => svc.state.queue.length,
      routes: snap.routes.filter((r) => r.service === svc).map((r) => r.name),
    })));
  }

  private swap(loaded: LoadedConfig, next: Snapshot, dns: DnsCache, redis: ReturnType<Gateway['redisFor']>): Snapshot {
    const prev = this.snapshot;
    if (next.hash === prev.hash) {
      // Same effective config: keep the running snapshot (and its revision).
      next.dispose();
      if (redis.fresh) void redis.store!.close();
      this.log.info({ revision: this.revision, hash: prev.hash }, 'config unchanged');
      this.certs?.checkCrl(); // (a stale client CRL is said at every reload)
      return prev;
    }
    for (const [what, a, b] of [
      ['listen', prev.listen, next.listen],
      ['admin.listen', prev.admin?.listen, next.admin?.listen],
      ['status_listen', prev.statusListen, next.statusListen],
      ['demo.listen', prev.demo, next.demo],
      // (a TLS listener added or removed: below)
      ['listen_tls', prev.tls && next.tls ? prev.tls.listen : null, prev.tls && next.tls ? next.tls.listen : null],
      ['tls.handshake_timeout', prev.tls && next.tls ? prev.tls.handshakeTimeout : null, prev.tls && next.tls ? next.tls.handshakeTimeout : null],
      ['http2.enabled', prev.tls ? prev.http2.enabled : null, prev.tls ? next.http2.enabled : null],
    ] as const) {
      if (JSON.stringify(a) !== JSON.stringify(b)) this.log.warn({ setting: what }, `${what} changed: restart to apply it`);
    }
    // HTTP/2 SETTINGS the listener announces: given when it was created, so a reload lowering
    // max_concurrent_streams (a client opening too many) changed nothing, and said nothing. New
    // sessions get the new values, open ones a SETTINGS frame with them (RFC 9113 §6.5).
    // node:http2 takes its other limits when the server is made (nghttp2's reset budget,
    // maxHeaderListPairs, unknownProtocolTimeout): a new server takes the connections from now on,
    // the sessions open stay with the old one (the reset count in JS, countReset, is the
    // current config's on every session).
    if (this.h2 !== null && (prev.limits.maxHeaders !== next.limits.maxHeaders || prev.http2.maxResets !== next.http2.maxResets
      || prev.http2.resetWindow !== next.http2.resetWindow || prev.timeouts.clientHeader !== next.timeouts.clientHeader)) this.h2 = this.createH2Server(next);
    const h2 = this.h2;
    if (h2 !== null && (prev.http2.maxConcurrentStreams !== next.http2.maxConcurrentStreams || prev.http2.maxHeaderListSize !== next.http2.maxHeaderListSize)) {
      const settings = { maxConcurrentStreams: next.http2.maxConcurrentStreams, maxHeaderListSize: next.http2.maxHeaderListSize, enablePush: false };
      h2.updateSettings(settings);
      for (const session of this.sessions) {
        if (session.closed || session.destroyed) continue;
        try {
          session.settings(settings);
        } catch {
          /* a session going away (too many SETTINGS outstanding): it keeps the old ones */
        }
      }
    }
    if (prev.http2.h2c !== next.http2.h2c) this.log.warn({ setting: 'http2.h2c' }, 'http2.h2c changed: restart to apply it');
    if (next.limits.maxUriLength + next.limits.maxHeaderSize > prev.limits.maxUriLength + prev.limits.maxHeaderSize) {
      this.log.warn('limits.max_uri_length / max_header_size grew: the HTTP parser keeps its size until a restart');
    }
    try {
      this.observer.configure(next.observability);
    } catch (err) {
      next.dispose();
      if (redis.fresh) void redis.store!.close();
      this.reloadsFailed++;
      throw loaded.error([{ path: ['access_log'], message: (err as Error).message }]);
    }
    this.observer.routesChanged(next.routes);
    this.scaleTo(next);
    if (JSON.stringify(prev.admin?.tokens) !== JSON.stringify(next.admin?.tokens)) queueMicrotask(() => this.console?.tokensChanged());
    if (JSON.stringify(prev.scaling?.keda) !== JSON.stringify(next.scaling?.keda)) {
      // A rotated certificate (cert-manager) is taken at once; the address, or TLS on or off, need a restart.
      const [run, want] = [this.kedaRunning, next.scaling?.keda ?? null];
      if (this.keda !== null && run?.tls && want?.tls && run.host === want.host && run.port === want.port && this.keda.setTls(want.tls)) {
        this.kedaRunning = want;
        this.log.info({ setting: 'scaling.keda.tls' }, 'KEDA external scaler: new TLS certificate in use');
      } else this.log.warn({ setting: 'scaling.keda' }, 'scaling.keda changed: restart to apply it');
    }
    // The TLS listener's certificates and client CA follow the config (every context at once;
    // its default context is replaced too, which also retires session tickets issued before).
    if (this.certs !== null && next.tls !== null) {
      // (versions and ciphers are in every context, the listener's default one too; watch is the polling)
      const cur = this.certs.current;
      const trustChanged = next.tls.certs.trustDigest() !== cur.trustDigest();
      if (next.tls.certs.digest() !== cur.digest() || JSON.stringify(next.tls.certs.specs) !== JSON.stringify(cur.specs)
        || JSON.stringify(next.tls.certs.options) !== JSON.stringify(cur.options) || next.tls.watch !== prev.tls?.watch) this.certs.swap(next.tls.certs, next.tls.watch);
      // Whether new connections are asked for a certificate (node:tls reads the server's
      // requestCert for each connection; the contexts above carry the CA).
      const listener = this.tlsServer as (TlsServer & { requestCert?: boolean }) | null;
      if (listener !== null && listener.requestCert !== next.tls.requestCert) listener.requestCert = next.tls.requestCert;
      if (trustChanged) this.retireVerifiedConnections();
      this.certs.checkCrl();
    } else if ((this.certs !== null) !== (next.tls !== null)) this.log.warn({ setting: 'listen_tls' }, 'listen_tls / tls changed: restart to apply it');
    if (this.proxy) {
      this.proxy.headersTimeout = next.timeouts.clientHeader;
      this.proxy.keepAliveTimeout = next.timeouts.keepAlive;
      this.proxy.maxHeadersCount = next.limits.maxHeaders + 1;
    }
    this.snapshot = next;
    this.loaded = loaded;
    this.dns = dns;
    this.useRedis(redis);
    this.shareAnalytics();
    this.persistCounters(next);
    applyLimits(next);
    this.revision++;
    this.reloadsOk++;
    // In-flight requests hold their own references to the old snapshot's pools; closing a
    // pool waits for its running requests.
    prev.dispose();
    this.health?.sync(next);
    this.log.info({ revision: this.revision, hash: next.hash }, 'config reloaded');
    // (a name new in this config, or a shorter dns.refresh, may be due before the timer)
    if (this.role !== 'worker' && !this.dnsRound && this.nextDnsAt(performance.now()) < this.dnsTimerAt) this.scheduleDnsRefresh();
    this.onSwap?.(loaded, next);
    return next;
  }

  get inFlight(): number {
    return this.inflight;
  }

  /**
   * Idle connections during a drain: a keep-alive connection between requests is closed; one
   * that was accepted but has not sent its first request yet gets a short grace (its request
   * is usually already on the wire; Node's closeIdleConnections() would cut it). Returns
   * whether connections in their grace remain.
   */
  private closeIdle(now: number): boolean {
    let waiting = false;
    for (const s of this.connections) {
      const c = s[kConn]!;
      if (c.active > 0) continue;
      if (c.served || now - c.at >= FIRST_REQUEST_GRACE_MS) s.destroy();
      else waiting = true;
    }
    return waiting;
  }

  /**
   * /status (/status/ready) says 503 "draining" from now on (and reloads are no longer swapped
   * in); HTTP/1.1 responses carry Connection: close and HTTP/2 sessions get a shutdown notice
   * (their next streams go elsewhere). The listeners still accept: stop() closes them. A
   * primary calls it when its stop begins, before its workers drain; stop() follows.
   */
  beginDrain(): void {
    this.draining = true;
    this.ready = false;
    for (const s of this.sessions) shutdownNotice(s);
  }

  /**
   * After the client CA or CRL changed: connections whose client certificate was verified under
   * the old ones would carry that verdict for as long as they live (a revoked device on its
   * kept-alive connection or HTTP/2 session). They are closed as a drain closes them — an idle
   * HTTP/1.1 connection at once, a busy one after its answers (Connection: close on those not
   * begun), an HTTP/2 session by GOAWAY once its streams end — and the client's next
   * connection is verified under the new ones.
   */
  private retireVerifiedConnections(): void {
    const hasCert = (s: TLSSocket | undefined): boolean => {
      if (s?.encrypted !== true) return false;
      const c = s.getPeerCertificate();
      return c !== null && Object.keys(c).length > 0;
    };
    let n = 0;
    const busy = new Set<Socket>();
    for (const s of this.connections) {
      if (!hasCert(s as Socket as TLSSocket)) continue;
      const c = s[kConn]!;
      if (c.active === 0 && c.waiting === 0) s.end();
      else {
        c.retire = true;
        busy.add(s);
        // The answers not begun yet say Connection: close (node:http then closes the connection
        // after the first of them): one saying keep-alive invited the client's next request on a
        // connection about to be closed under it.
        const current = (s as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
        if (current != null && !current.headersSent) current.shouldKeepAlive = false;
        for (const r of (s as Socket & { [kPending]?: Set<ServerResponse> })[kPending] ?? []) if (!r.headersSent) r.shouldKeepAlive = false;
      }
      n++;
    }
    // A WebSocket relayed on one of them gets close frames (1001: the client's next connection,
    // verified under the new CA or CRL, may well be served), then its connection closes.
    if (busy.size > 0) closeWebSocketsOn(busy, 1001, 'client certificate trust changed: reconnect');
    for (const session of this.sessions) {
      if (session.closed || session.destroyed || !hasCert(session.socket as TLSSocket)) continue;
      shutdownNotice(session);
      session.close();
      n++;
    }
    if (n > 0) this.log.info({ connections: n }, 'client CA or CRL changed: connections with client certificates verified under the old ones are closed');
  }

  /** Ends a running shutdownDelay() early. */
  private endDelay: (() => void) | null = null;

  /**
   * timeouts.shutdown_delay: beginDrain(), then the listeners keep accepting and serving for
   * that long (load balancers and Kubernetes endpoints see /status/ready 503 and stop sending new
   * connections here meanwhile) before stop() closes them. Resolves at once without a delay,
   * and early when stop() is called meanwhile.
   */
  async shutdownDelay(): Promise<void> {
    this.beginDrain();
    const ms = this.snapshot.timeouts.shutdownDelay;
    if (ms <= 0 || this.stopCalled) return;
    this.log.info({ shutdown_delay_ms: ms }, 'shutdown delay: not ready, still accepting');
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => this.endDelay?.(), ms);
      this.endDelay = () => {
        clearTimeout(timer);
        this.endDelay = null;
        resolve();
      };
    });
  }

  /** Stops accepting, lets in-flight requests finish (at most timeouts.drain), then closes everything. */
  async stop(): Promise<void> {
    if (this.stopCalled) return;
    this.stopCalled = true;
    this.endDelay?.();
    this.beginDrain();
    clearTimeout(this.dnsTimer);
    // (the monotonic clock: a wall-clock step during the drain must not lengthen or cut it)
    const deadline = performance.now() + this.snapshot.timeouts.drain;
    // net.Server's close, not http.Server's: the latter also cuts connections whose first
    // request has not been parsed yet (closeIdleConnections), losing requests already sent.
    // Every listener stops accepting now; connections it handed on are drained below.
    const stopAccepting = (srv: NetServer | null) => srv && srv.listening
      ? new Promise<void>((r) => NetServer.prototype.close.call(srv, () => r()))
      : Promise.resolve();
    const listenersClosed = Promise.all([stopAccepting(this.proxy), stopAccepting(this.plain), stopAccepting(this.tlsServer)]);
    // WebSockets get a 1001 close now (they would hold the drain to its end otherwise).
    const wsClosed = closeAllWebSockets(Math.max(0, Math.min(5000, deadline - performance.now())));
    for (const s of this.sessions) s.close(); // GOAWAY: streams in progress finish
    while ((this.closeIdle(Date.now()) || this.inflight > 0) && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 25));
    }
    this.proxy?.closeAllConnections();
    for (const s of this.sessions) s.destroy();
    for (const s of this.sniffing) s.destroy();
    await wsClosed;
    await listenersClosed;
    this.certs?.close();
    // Now http.Server's own close: stops its connection-checking timer.
    this.proxy?.close(() => {});
    this.admin?.closeAllConnections();
    this.status?.closeAllConnections();
    this.demo?.closeAllConnections();
    this.console?.close();
    await Promise.all([closeServer(this.admin), closeServer(this.status), closeServer(this.demo), this.keda?.close(), this.scaling?.close()]);
    this.snapshot.dispose();
    this.caches.close();
    await this.health?.stop();
    await this.pools.closeAll();
    await this.counters.local.close?.();
    await this.counters.redis?.close?.();
    this.shared?.stop();
    await this.observer.close();
    fdWatch.detach(this.log);
    this.log.info('stopped');
  }
}
