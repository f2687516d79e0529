/**
 * A running gateway: the proxy listener, the admin listener and (when configured) the demo
 * upstream, all serving from the current immutable snapshot. Swapping snapshots is atomic;
 * a request keeps the snapshot it started with. stop() drains in-flight requests (bounded).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Server as NetServer, type AddressInfo, type Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import { compile, compileAsync, dnsSettings, type Address, type CompileDeps, type Snapshot } from '../config/compile.js';
import { DnsCache, upstreamNames } from '../upstream/dns.js';
import { ConfigError } from '../config/errors.js';
import type { LoadedConfig } from '../config/load.js';
import { PoolRegistry } from '../upstream/pools.js';
import { RuntimeState, applyDecision } from '../upstream/state.js';
import { HealthAuthority, type Decision, type Reporter } from '../upstream/authority.js';
import type { ForwardHandler } from '../upstream/forward.js';
import { handleRequest, closingSockets, type RequestContext } from './request.js';
import { createAdminHandler } from './admin.js';
import { createEchoServer } from '../demo/echo.js';
import { rawProblem, sendProblem, type ProblemCode } from '../core/problem.js';
import { silentLogger, type Logger } from '../core/log.js';

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
  workers?: () => { pid: number | undefined; state: string }[];
  /** Every snapshot swap after the first (primary: sends the config to the workers). */
  onSwap?: (loaded: LoadedConfig, snapshot: Snapshot) => void;
  /** Worker: the primary's DNS answers (a worker never resolves on its own). */
  dnsTable?: Record<string, string[]>;
}

function listen(server: Server, addr: Address): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(addr.port, addr.host, () => {
      server.off('error', onError);
      resolve(server.address() as AddressInfo);
    });
  });
}

/** The live snapshot's bulkhead limits go to the shared service state (queued requests obey them too). */
function applyLimits(snap: Snapshot): void {
  for (const s of snap.services) {
    s.state.maxConcurrent = s.bulkhead?.maxConcurrent ?? Infinity;
    s.state.maxPending = s.bulkhead?.maxPending ?? Infinity;
  }
}

const kPending = Symbol('turnpike.pendingResponses');
/** Per connection: when it was accepted, requests in progress, whether it served one. */
interface ConnState { at: number; active: number; served: boolean }
const kConn = Symbol('turnpike.conn');
type TrackedSocket = Socket & { [kConn]?: ConnState };
/** How long a new connection may take to send its first request once draining began. */
const FIRST_REQUEST_GRACE_MS = 1000;

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

const closeServer = (s: Server | null) => (s && s.listening ? new Promise<void>((r) => s.close(() => r())) : Promise.resolve());

export class Gateway implements RequestContext {
  snapshot: Snapshot;
  draining = false;
  readonly proto = 'http' as const;
  revision = 1;
  ready = false;
  readonly startedAt = Date.now();
  private inflight = 0;
  private readonly connections = new Set<TrackedSocket>();
  private readonly pools: PoolRegistry;
  readonly runtime: RuntimeState;
  /** Local health authority (null in a worker: the primary holds it). */
  readonly health: HealthAuthority | null;
  private readonly reporter: Reporter;
  readonly role: 'single' | 'primary' | 'worker';
  readonly workers: GatewayOptions['workers'];
  private readonly log: Logger;
  private proxy: Server | null = null;
  private admin: Server | null = null;
  private demo: Server | null = null;
  proxyAddress: AddressInfo | null = null;
  adminAddress: AddressInfo | null = null;
  demoAddress: AddressInfo | null = null;

  /** The config of the running snapshot (recompiled when DNS answers change). */
  loaded: LoadedConfig;
  /** DNS answers of the running snapshot (replaced together with it). */
  dns: DnsCache;
  private dnsTimer: NodeJS.Timeout | undefined;
  private dnsTimerMs = 0;
  private readonly onSwap: GatewayOptions['onSwap'];

  private constructor(loaded: LoadedConfig, opts: GatewayOptions, dns: DnsCache) {
    this.log = opts.logger ?? silentLogger;
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
    this.snapshot = this.compile(loaded);
    applyLimits(this.snapshot);
    this.health?.sync(this.snapshot);
    if (this.role !== 'worker') this.scheduleDnsRefresh();
  }

  private deps(dns: DnsCache = this.dns): CompileDeps {
    return { pools: this.pools, state: this.runtime, reporter: this.reporter, cores: availableParallelism(), dns };
  }

  private compile(loaded: LoadedConfig): Snapshot {
    return compile(loaded, this.deps());
  }

  /** A copy of `base` with the config's DNS settings and its names not resolved yet resolved (failures logged). */
  private static async resolveNew(base: DnsCache, loaded: LoadedConfig, log: Logger): Promise<DnsCache> {
    const dns = base.fork(dnsSettings(loaded.config));
    const fresh = upstreamNames(loaded.config).filter((h) => dns.get(h) === undefined);
    if (fresh.length > 0) {
      const { failed } = await dns.refresh(fresh);
      for (const f of failed) log.warn({ host: f.host, error: f.error }, 'upstream name does not resolve: no targets for it until it does');
    }
    return dns;
  }

  private scheduleDnsRefresh(): void {
    clearTimeout(this.dnsTimer);
    if (this.draining) return;
    this.dnsTimerMs = this.dns.refreshMs;
    this.dnsTimer = setTimeout(() => void this.refreshDns(), this.dnsTimerMs);
    this.dnsTimer.unref();
  }

  /**
   * Re-resolves every upstream name into a copy; a changed answer recompiles the running config
   * with it. While another reload is under way this round is skipped: the running answers did
   * not change, so the next round sees the difference again (nothing is lost if that reload fails).
   */
  private async refreshDns(): Promise<void> {
    try {
      const names = upstreamNames(this.loaded.config);
      if (names.length) {
        const next = this.dns.fork(this.dns.settings);
        const { changed, failed } = await next.refresh(names);
        for (const f of failed) this.log.warn({ host: f.host, error: f.error }, 'upstream name failed to resolve; keeping its last addresses');
        if (changed && !this.draining && this.reloading === 0) {
          this.log.info({ dns: Object.fromEntries(names.map((n) => [n, next.get(n)])) }, 'upstream addresses changed');
          await this.reloadAsync(this.loaded, { dns: next });
        }
      }
    } catch (err) {
      this.log.error({ err: err instanceof ConfigError ? err.message : String(err) }, 'recompiling with new DNS answers failed');
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
    try {
      await gw.listenAll();
    } catch (err) {
      await gw.stop();
      throw err;
    }
    return gw;
  }

  private async listenAll(): Promise<void> {
    const snap = this.snapshot;
    if (snap.admin && this.role !== 'worker') {
      this.admin = createServer(createAdminHandler(this));
      this.adminAddress = await listen(this.admin, snap.admin.listen);
      this.log.info({ address: this.adminAddress }, 'admin listener up');
    }
    if (snap.demo && this.role !== 'worker') {
      this.demo = createEchoServer();
      this.demoAddress = await listen(this.demo, snap.demo);
      this.log.info({ address: this.demoAddress }, 'demo upstream up');
    }
    if (this.role === 'primary') {
      this.ready = true;
      return;
    }
    this.proxy = this.createProxyServer(snap);
    this.proxyAddress = await listen(this.proxy, snap.listen);
    this.ready = true;
    this.log.info({ address: this.proxyAddress, revision: this.revision, hash: snap.hash }, 'proxy listener up');
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
    const onRequest = (req: IncomingMessage, res: ServerResponse, expectContinue: boolean) => {
      // A request pipelined behind one answered with Connection: close is never forwarded.
      if (closingSockets.has(req.socket)) return;
      this.inflight++;
      const conn = (req.socket as TrackedSocket)[kConn];
      if (conn) {
        conn.active++;
        conn.served = true;
      }
      const pending = res.socket ? null : trackPending(req.socket, res);
      let handler: ForwardHandler | undefined;
      let closed = false;
      res.on('close', () => {
        // 'close' can come twice for a pipelined response (ours on socket close, and Node's).
        if (closed) return;
        closed = true;
        this.inflight--;
        if (conn) conn.active--;
        pending?.delete(res);
        handler?.clientClosed();
      });
      try {
        handler = handleRequest(this, req, res, expectContinue);
      } catch (err) {
        this.log.error({ err }, 'request handler failed');
        sendProblem(res, 'internal-error', 'the gateway failed to handle this request', undefined, { close: true });
      }
    };
    server.on('connection', (socket: TrackedSocket) => {
      socket[kConn] = { at: Date.now(), active: 0, served: false };
      this.connections.add(socket);
      socket.once('close', () => this.connections.delete(socket));
    });
    server.on('request', (req, res) => onRequest(req, res, false));
    server.on('checkContinue', (req, res) => onRequest(req, res, true));
    server.on('connect', (_req, socket: Socket) => {
      // Node hands the socket over without its error listener: keep one, and never wait on the peer.
      socket.on('error', () => socket.destroy());
      socket.end(rawProblem('method-not-allowed', 'CONNECT is not supported'), () => socket.destroy());
      setTimeout(() => socket.destroy(), 1000).unref();
    });
    server.on('clientError', (err: NodeJS.ErrnoException & { rawPacket?: Buffer; reason?: string }, socket: Socket) => {
      // A response already under way on this connection (pipelining): answering now would
      // interleave bytes; cutting the connection is the only safe move.
      if (err.code === 'ECONNRESET' || !socket.writable) {
        socket.destroy();
        return;
      }
      const pending = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
      if (pending) {
        // A complete answer is queued (maybe still corked): let it out, then close.
        if (pending.writableEnded) { socket.destroySoon(); return; }
        // The parser stops at its first error, so when the pending request is itself incomplete,
        // the error is in its own framing (its body, or Transfer-Encoding checked after the head);
        // nothing of its response went out, so answering it here keeps the order. Otherwise a
        // response is under way or an earlier request is awaiting its answer: cut.
        if (pending.headersSent || pending.req?.complete !== false) { socket.destroy(); return; }
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
      }
      socket.end(rawProblem(code, detail));
      socket.destroySoon();
    });
    return server;
  }

  /** Swaps in a new config, compiled at once. Throws ConfigError (the running config stays). */
  reload(loaded: LoadedConfig): Snapshot {
    this.reloadSeq++;
    return this.swap(loaded, this.compile(loaded), this.dns);
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
    try {
      // A worker compiles with the primary's answers; otherwise resolve what is new.
      if (opts.dnsTable) dns = DnsCache.fromTable(dnsSettings(loaded.config), opts.dnsTable);
      else if (this.role === 'worker') dns = this.dns;
      else dns = await Gateway.resolveNew(opts.dns ?? this.dns, loaded, this.log);
      next = await compileAsync(loaded, this.deps(dns));
    } finally {
      this.reloading--;
    }
    if (seq !== this.reloadSeq || this.draining) {
      next.dispose();
      return this.snapshot;
    }
    return this.swap(loaded, next, dns);
  }

  private swap(loaded: LoadedConfig, next: Snapshot, dns: DnsCache): Snapshot {
    const prev = this.snapshot;
    if (next.hash === prev.hash) {
      // Same effective config: keep the running snapshot (and its revision).
      next.dispose();
      this.log.info({ revision: this.revision, hash: prev.hash }, 'config unchanged');
      return prev;
    }
    for (const [what, a, b] of [
      ['listen', prev.listen, next.listen],
      ['admin.listen', prev.admin?.listen, next.admin?.listen],
      ['demo.listen', prev.demo, next.demo],
    ] as const) {
      if (JSON.stringify(a) !== JSON.stringify(b)) this.log.warn({ setting: what }, `${what} changed: restart to apply it`);
    }
    if (next.limits.maxUriLength + next.limits.maxHeaderSize > prev.limits.maxUriLength + prev.limits.maxHeaderSize) {
      this.log.warn('limits.max_uri_length / max_header_size grew: the HTTP parser keeps its size until a restart');
    }
    if (this.proxy) {
      this.proxy.headersTimeout = next.timeouts.clientHeader;
      this.proxy.keepAliveTimeout = next.timeouts.keepAlive;
      this.proxy.maxHeadersCount = next.limits.maxHeaders + 1;
    }
    this.snapshot = next;
    this.loaded = loaded;
    this.dns = dns;
    applyLimits(next);
    this.revision++;
    // In-flight requests hold their own references to the old snapshot's pools; closing a
    // pool waits for its running requests.
    prev.dispose();
    this.health?.sync(next);
    this.log.info({ revision: this.revision, hash: next.hash }, 'config reloaded');
    if (this.role !== 'worker' && this.dns.refreshMs !== this.dnsTimerMs) this.scheduleDnsRefresh();
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

  /** Stops accepting, lets in-flight requests finish (at most timeouts.drain), then closes everything. */
  async stop(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    this.ready = false;
    clearTimeout(this.dnsTimer);
    const deadline = Date.now() + this.snapshot.timeouts.drain;
    // net.Server's close, not http.Server's: the latter also cuts connections whose first
    // request has not been parsed yet (closeIdleConnections), losing requests already sent.
    const proxy = this.proxy;
    const proxyClosed = proxy && proxy.listening
      ? new Promise<void>((r) => NetServer.prototype.close.call(proxy, () => r()))
      : Promise.resolve();
    while ((this.closeIdle(Date.now()) || this.inflight > 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 25));
    }
    this.proxy?.closeAllConnections();
    await proxyClosed;
    // Now http.Server's own close: stops its connection-checking timer.
    this.proxy?.close(() => {});
    this.admin?.closeAllConnections();
    this.demo?.closeAllConnections();
    await Promise.all([closeServer(this.admin), closeServer(this.demo)]);
    this.snapshot.dispose();
    await this.health?.stop();
    await this.pools.closeAll();
    this.log.info('stopped');
  }
}
