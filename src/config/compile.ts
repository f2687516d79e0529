/**
 * Compiles a validated config into an immutable Snapshot: everything a request needs is
 * resolved here, once, off the hot path. Semantic errors (bad URLs, route conflicts, unknown
 * plugins, ...) are reported with their path and line like schema errors.
 */
import { keyAuthNames, observabilitySettings, type ObservabilitySettings } from '../observability/settings.js';
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import { ConfigInputs } from './inputs.js';
import type { Pool } from 'undici';
import { configHashOf, type LoadedConfig } from './load.js';
import { formatPath, type PathSegment } from './errors.js';
import { maskUrlSecrets, postgresUrlProblem } from '../core/url-secrets.js';
import { DEFAULT_LISTEN_HOST, parseAddress, type Address } from './address.js';
import { unsendableSecret } from '../core/secret-text.js';
import type { TurnpikeConfigInput } from './schema.js';
import { parseDuration, parseSize } from './units.js';
import { Router, type RouteSpec } from '../router/router.js';
import { encodedDelimiter, normalizePath } from '../router/path.js';
import { TrustedProxies } from '../core/forwarded.js';
import type { PoolRegistry } from '../upstream/pools.js';
import { createBalancer, type Balancer, type BalancerName } from '../upstream/balancer.js';
import type { DnsSettings } from '../upstream/dns.js';
import { RuntimeState, type ServiceState, type TargetState } from '../upstream/state.js';
import type { ActiveConfig, CircuitConfig, PassiveConfig, Reporter } from '../upstream/authority.js';
import { loadWebSocketLibrary } from '../server/websocket.js';
import { CertSet, DEFAULT_CIPHERS, hstsValue, upstreamTlsProblem, type CertSpec } from '../server/tls.js';
import { Value } from '@sinclair/typebox/value';
import { PLUGINS } from '../plugins/registry.js';
import { DEFAULT_CONSUMER_HEADERS, NO_BINDINGS, PluginCompiler, consumerId, type ConsumerHeaders, type RouteChains } from '../plugins/pipeline.js';
import type { Consumer } from '../plugins/types.js';
import type { Logger } from '../core/log.js';
import { silentLogger } from '../core/log.js';
import type { CounterStore } from '../state/types.js';
import { MemoryStore } from '../state/memory.js';
import { RedisStore, type RedisSetting } from '../state/redis.js';
import type { CacheStores } from '../plugins/cache/stores.js';
import { compileCompose, composeService, pathParams, type CompiledCompose } from '../compose/config.js';
import { portalOf, type PortalSettings } from '../portal/catalog.js';
import { PortalCredential } from '../portal/schema.js';
import { scalingPolicyOf, scalingSettingsOf, type ScalingPolicyConfig, type ScalingSettings } from '../scaling/policy.js';

/** An origin's serialization: scheme://host[:port], nothing after it (as the cors plugin's). */
const WS_ORIGIN_RE = /^[a-z][a-z0-9+.-]*:\/\/[^/?#@\s]+$/i;

export type { Address };

export interface Target {
  /** scheme://host:port */
  origin: string;
  /** Path prefix from the target URL ('' when none). */
  basePath: string;
  /** The target as configured, scheme://host:port/base (a name, where origin may be one of its addresses). */
  url: string;
  /** Host header sent upstream (unless the route preserves the client's). */
  hostHeader: string;
  weight: number;
  pool: Pool;
  /** Shared across snapshots: in-flight count, latency, health. */
  state: TargetState;
}

export type RetryOn = 'connect-error' | 'timeout' | 'reset' | number;

export type UpstreamProtocol = 'http' | 'h2c' | 'https' | 'grpc' | 'grpcs';

export interface CompiledService {
  name: string;
  protocol: UpstreamProtocol;
  /** grpc or grpcs: errors are answered in gRPC's terms, grpc-timeout bounds the deadline. */
  grpc: boolean;
  /** The upstream speaks HTTP/2 (h2c, grpc, grpcs). */
  h2Upstream: boolean;
  /** Upstream TLS settings (also used by the WebSocket relay), undefined for the defaults. */
  tls: { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized: boolean; servername?: string } | undefined;
  targets: Target[];
  balancer: Balancer;
  balancerName: BalancerName;
  /** consistent-hash key source, null for other balancers. */
  hashOn: { kind: 'ip' } | { kind: 'header'; name: string } | { kind: 'cookie'; name: string } | null;
  timeouts: { connect: number; response: number; read: number; total: number };
  retries: number;
  retryOn: { connectError: boolean; timeout: boolean; reset: boolean; statuses: ReadonlySet<number> };
  budget: { ratio: number; minPerSecond: number };
  /** Bulkhead; null when unlimited. */
  bulkhead: { maxConcurrent: number; maxPending: number; maxWait: number } | null;
  circuit: CircuitConfig | null;
  health: { active: ActiveConfig | null; passive: PassiveConfig | null };
  /** Shared across snapshots: bulkhead slots, circuit state, retry budget. */
  state: ServiceState;
  reporter: Reporter;
  /** The scaling advisor's settings for this service (src/scaling/), null when not configured. */
  scaling: ScalingPolicyConfig | null;
}

export interface CompiledRoute {
  name: string;
  /**
   * Who the route is for counters (`by: route`, its bindings' counter keys): its name, or for
   * an unnamed route (named SERVICE.INDEX, its position) ~SERVICE~HASH of what it matches, so
   * inserting or moving other routes keeps its counts (changing what it matches starts fresh).
   */
  counterId: string;
  service: CompiledService;
  stripPath: boolean;
  preserveHost: boolean;
  retryNonIdempotent: boolean;
  /** WebSocket upgrades allowed (null: an Upgrade is served as plain HTTP). */
  /** origins: lower-case origins allowed to open WebSockets (null: same-origin when credentials ride along). */
  websocket: { maxMessage: number; idleTimeout: number; origins: ReadonlySet<string> | null } | null;
  /** The plugins its requests run (chains.base.empty: none). */
  chains: RouteChains;
  /**
   * A top-level route that composes several backends (src/compose/run.ts runComposition);
   * null for every proxying route. A composing route's `service` is a stand-in named after
   * the route, without targets (for code that reads route.service: plugins, metrics, logs).
   */
  compose: CompiledCompose | null;
  /**
   * The response caches, when some route of the config has the cache plugin and this one has
   * not: a write through it (a 2xx / 3xx answer to an unsafe method) still invalidates what they
   * hold of its URI (RFC 9111 §4.4). Null otherwise: nothing is done per request.
   */
  cacheWrites: CacheStores | null;
}

/** An admin API token: its name goes into the audit log; read-only may only GET. */
export interface AdminToken {
  name: string;
  token: string;
  role: 'admin' | 'read-only';
}

export interface Limits {
  maxUriLength: number;
  maxHeaderSize: number;
  maxHeaders: number;
}

export interface ServerTimeouts {
  clientHeader: number;
  clientBody: number;
  /** Bytes a request body must bring in each clientBody period the gateway reads it (0: no minimum). */
  clientBodyMinRate: number;
  keepAlive: number;
  drain: number;
  /** At SIGTERM/SIGINT: not ready, still accepting, for this long before the drain (0: none). */
  shutdownDelay: number;
  /** With workers: a serving worker silent this long (its event loop stuck) is killed and replaced. */
  workerUnresponsive: number;
}

export interface TlsListener {
  listen: Address;
  certs: CertSet;
  /** Strict-Transport-Security value, null when not sent. */
  hsts: string | null;
  /** Status of the redirect from the plain listener to https, null when it serves. */
  redirect: number | null;
  watch: boolean;
  handshakeTimeout: number;
  requestCert: boolean;
}

export interface Http2Settings {
  enabled: boolean;
  h2c: boolean;
  maxConcurrentStreams: number;
  maxHeaderListSize: number;
  maxResets: number;
  resetWindow: number;
  idleTimeout: number;
}

export interface Snapshot {
  /** sha256 of the effective config (first 16 hex): its text, DNS answers, and the files it refers to. */
  hash: string;
  /** Files the config refers to, read while it compiled (watched: a change reloads). */
  inputs: readonly string[];
  loadedAt: Date;
  source: string | undefined;
  listen: Address;
  tls: TlsListener | null;
  http2: Http2Settings;
  /** consoleOrigins: admin.console_origins as URL origins (lower case, default port left out). */
  admin: { listen: Address; token: string | undefined; tokens: readonly AdminToken[]; consoleOrigins: readonly string[] } | null;
  /** status_listen: probes only (/status, /status/live, /status/ready), no token. */
  statusListen: Address | null;
  demo: Address | null;
  /** Worker processes (resolved: auto = CPU cores). */
  workers: number;
  watch: boolean;
  dns: DnsSettings;
  trusted: TrustedProxies;
  /** Which forwarding fields go upstream. */
  forwarding: { xff: boolean; proto: boolean; host: boolean; port: boolean; realIp: boolean; forwarded: boolean; prefix: boolean };
  limits: Limits;
  timeouts: ServerTimeouts;
  router: Router<CompiledRoute>;
  services: CompiledService[];
  routes: CompiledRoute[];
  consumers: ReadonlyMap<string, Consumer>;
  consumerHeaders: ConsumerHeaders;
  /** Where this node keeps quota counters (null: no local quota in this config). */
  stateFile: string | null;
  /** Lower-case names of consumer headers a client may never send upstream, beyond the defaults. */
  extraStripped: ReadonlySet<string> | null;
  /**
   * Lower-case dashed names of key-auth's key headers (X-Api-Key): their underscore spellings
   * (X_Api_Key) are dropped, since CGI, WSGI, Rack and PHP read them as the same field and an
   * upstream could take a second key for the one the gateway checked.
   */
  credentialDashed: ReadonlySet<string> | null;
  /** Access log, metrics, tracing, analytics. */
  observability: ObservabilitySettings;
  /** The scaling advisor (null: no service has `scaling`). */
  scaling: ScalingSettings | null;
  /** The developer portal on the proxy listener (null: off). */
  portal: PortalSettings | null;
  /** A request running on this snapshot: its pools stay open until release(). */
  retain(): void;
  release(): void;
  /** Retires the snapshot: its pools and shared state are released once no request holds it. */
  dispose(): void;
}

export const DEFAULTS = {
  listen: `${DEFAULT_LISTEN_HOST}:8080`,
  limits: { max_uri_length: '8kb', max_header_size: '16kb', max_headers: 100 },
  timeouts: { client_header: '10s', client_body: '30s', client_body_min_rate: 500, keepalive: '5s', drain: '10s', shutdown_delay: '0s', worker_unresponsive: '30s' },
  service: { connect: '5s', response: '60s', read: '60s' },
  websocket: { max_message: '1mb', idle_timeout: '60s' },
  forwarding_headers: ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded'],
} as const;

function forwardingOf(names: readonly string[]): Snapshot['forwarding'] {
  const has = (n: string) => names.includes(n);
  return {
    xff: has('x-forwarded-for'), proto: has('x-forwarded-proto'), host: has('x-forwarded-host'),
    port: has('x-forwarded-port'), realIp: has('x-real-ip'), forwarded: has('forwarded'), prefix: has('x-forwarded-prefix'),
  };
}


export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}

export interface CompileDeps {
  pools: PoolRegistry;
  /** Health, counters and circuits shared with earlier snapshots (a fresh one when omitted). */
  state?: RuntimeState;
  /** Where passive health and circuit outcomes go (ignored when omitted, e.g. validate). */
  reporter?: Reporter;
  /** CPU cores for workers: auto. */
  cores?: number;
  /** Resolved upstream names; names without an answer are left to undici. */
  dns?: { get(host: string): string[] | undefined };
  log?: Logger;
  /** The CLI opened the config's `store` (sqlite, postgres) and compiles what it holds. */
  storeOpened?: boolean;
  /** Counter stores for limits (validate and tests: a private in-memory one). */
  counters?: { local: CounterStore; redis: CounterStore | null };
  /** Response caches that outlive snapshots (the cache plugin's zones; validate: none). */
  caches?: CacheStores;
}

let validateStore: MemoryStore | null = null;
/** Counters for a compile without a gateway (validate, unit tests). */
const fallbackStore = () => (validateStore ??= new MemoryStore());

/**
 * An unnamed route's identity for counters: its service and what it matches (two routes of a
 * config cannot match the same), not its position — a route inserted before it keeps its counts.
 */
function unnamedRouteId(service: string, r: { hosts?: unknown; paths?: unknown; methods?: unknown; headers?: unknown }): string {
  const match = JSON.stringify([r.hosts ?? null, r.paths ?? null, r.methods ?? null, r.headers ?? null]);
  return `~${service}~${createHash('sha256').update(match).digest('base64url').slice(0, 12)}`;
}

/**
 * Counter stores for a compile that judges a config without running it (turnpike validate, the
 * admin API's document check): a `redis` setting gets a store that is checked as `start` makes
 * it (Gateway.redisFor) but never connects, so `policy: redis` and `backend: redis` compile as
 * they would at start. close() when done. Throws the config's error for a bad setting.
 */
export function validationCounters(loaded: LoadedConfig): { counters: NonNullable<CompileDeps['counters']>; close(): void } {
  const setting = loaded.config.redis as RedisSetting | undefined;
  let redis: RedisStore | null = null;
  if (setting !== undefined) {
    try {
      redis = new RedisStore(setting, { connect: false });
    } catch (err) {
      throw loaded.error([{ path: ['redis'], message: (err as Error).message }]);
    }
  }
  return { counters: { local: fallbackStore(), redis }, close: () => void redis?.close() };
}

const PARAM_SEGMENT = /^\{([A-Za-z_][A-Za-z0-9_]*)\}$/;
const BAD_PATH_CHAR = /[?#\s]/;
const NON_ASCII = /[^\x21-\x7e]/;
const NON_ASCII_ALL = /[^\x21-\x7e]/gu;
const NO_REPORTER: Reporter = { passive() {}, outcome() {} };
const DEFAULT_RETRY_ON = ['connect-error'];


/** The longest delay setTimeout keeps (2^31-1 ms, ~24.8 days); longer ones fire after 1 ms. */
const MAX_TIMER_MS = 2_147_483_647;
/** limits.max_uri_length and max_header_size: at most 1gb each (their sum must fit the HTTP parser's 32 bits). */
const MAX_LIMIT_SIZE = 1024 ** 3;

export function dnsSettings(cfg: TurnpikeConfigInput): DnsSettings {
  return {
    servers: cfg.dns?.servers ?? null,
    refreshMs: Math.min(MAX_TIMER_MS, Math.max(100, parseDuration(cfg.dns?.refresh ?? '30s'))),
    minTtlMs: Math.min(MAX_TIMER_MS, Math.max(100, parseDuration(cfg.dns?.min_ttl ?? '1s'))),
    timeoutMs: Math.min(MAX_TIMER_MS, Math.max(1, parseDuration(cfg.dns?.timeout ?? '2s'))),
    // (compared, never a timer: no bound)
    maxStaleMs: parseDuration(cfg.dns?.max_stale ?? '3d'),
  };
}

/** Compiles in one go (validate, tests, startup). */
export function compile(loaded: LoadedConfig, deps: CompileDeps): Snapshot {
  const steps = compileSteps(loaded, deps);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/**
 * Compiles in slices of about `sliceMs` of CPU with a `pauseMs` rest after each, so that a
 * reload of a large config (10,000 routes: ~40 ms of work) neither stalls the requests in
 * flight nor takes more than ~1/9 of the CPU while it runs (10,000 routes: ~0.4 s).
 * A small config compiles in its first slice, without a pause.
 */
export async function compileAsync(loaded: LoadedConfig, deps: CompileDeps, opts: { sliceMs?: number; pauseMs?: number } = {}): Promise<Snapshot> {
  const sliceMs = opts.sliceMs ?? 1;
  const pauseMs = opts.pauseMs ?? 8;
  await precompute(loaded);
  const steps = compileSteps(loaded, deps);
  let t0 = performance.now();
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    if (performance.now() - t0 >= sliceMs) {
      await new Promise((resolve) => setTimeout(resolve, pauseMs));
      t0 = performance.now();
    }
  }
}

/** Each auth plugin's precomputeCredentials over the config's credentials of its type (off the event loop). */
async function precompute(loaded: LoadedConfig): Promise<void> {
  const byType = new Map<string, unknown[]>();
  for (const c of loaded.config.consumers ?? []) {
    for (const cr of c.credentials ?? []) {
      const type = (cr as { type?: unknown }).type;
      if (typeof type !== 'string' || !PLUGINS.get(type)?.precomputeCredentials) continue;
      let list = byType.get(type);
      if (!list) byType.set(type, (list = []));
      list.push(cr);
    }
  }
  for (const [type, list] of byType) await PLUGINS.get(type)!.precomputeCredentials!(list);
}

function* compileSteps(loaded: LoadedConfig, deps: CompileDeps): Generator<void, Snapshot, void> {
  let routeCount = 0;
  const cfg: TurnpikeConfigInput = loaded.config;
  const issues: { path: PathSegment[]; message: string }[] = [];
  const fail = (path: PathSegment[], message: string) => issues.push({ path, message });
  // A duration that runs a timer: setTimeout turns anything past 2^31-1 ms into 1 ms (an
  // interval of 30d would probe in a loop), so longer is a config error.
  const timer = (path: PathSegment[], value: number | string): number => {
    const ms = parseDuration(value);
    if (ms > MAX_TIMER_MS) fail(path, 'must be at most 24d (2147483647 ms, the longest timer)');
    return Math.min(ms, MAX_TIMER_MS);
  };
  for (const k of ['refresh', 'min_ttl', 'timeout'] as const) {
    const v = cfg.dns?.[k];
    if (v !== undefined) timer(['dns', k], v);
  }
  // (0 became 1 ms: a lookup over the network was given up before any answer, and a name never got targets)
  if (cfg.dns?.timeout !== undefined && parseDuration(cfg.dns.timeout) < 1) fail(['dns', 'timeout'], 'must be at least 1ms (0 is not "none": each lookup was given up after 1 ms)');
  // Every Redis call runs on a timer of redis.timeout: 0 (read as "no timeout") became 1 ms and
  // 30d a timer fired at once — either way each call timed out and limits fell to their fault.
  const redisTimeout = typeof cfg.redis === 'object' ? cfg.redis.timeout : undefined;
  if (redisTimeout !== undefined && timer(['redis', 'timeout'], redisTimeout) < 1) fail(['redis', 'timeout'], 'must be at least 1ms');

  const listen = parseAddress(cfg.listen ?? DEFAULTS.listen);
  if (listen.port > 65535) fail(['listen'], `port ${listen.port} is out of range`);

  // (sqlite and postgres stores are opened by the CLI, which compiles what they hold)
  if (cfg.store !== undefined && cfg.store !== 'file' && !deps.storeOpened) fail(['store'], 'only `store: file` can be served by this command (sqlite and postgres stores are opened by `turnpike start`)');
  const storeProblem = cfg.store !== undefined && /^postgres(ql)?:\/\//.test(cfg.store.trim()) ? postgresUrlProblem(cfg.store.trim()) : null;
  if (storeProblem !== null) fail(['store'], `the postgres URL ${storeProblem}`);
  let admin: Snapshot['admin'] = null;
  if (cfg.admin?.listen !== undefined) {
    const a = parseAddress(cfg.admin.listen);
    if (a.port > 65535) fail(['admin', 'listen'], `port ${a.port} is out of range`);
    const tokens: AdminToken[] = [];
    if (cfg.admin.token) tokens.push({ name: 'admin', token: cfg.admin.token, role: 'admin' });
    // (`Authorization: Bearer <token>`: visible ASCII only, see admin/auth.ts)
    const unsendable = (token: string) => unsendableSecret(token, 'an Authorization: Bearer header', { visibleAscii: true });
    const bad = cfg.admin.token ? unsendable(cfg.admin.token) : null;
    if (bad) fail(['admin', 'token'], bad);
    const names = new Set<string>(tokens.map((t) => t.name));
    cfg.admin.tokens?.forEach((t, i) => {
      const bad = unsendable(t.token);
      if (bad) fail(['admin', 'tokens', i, 'token'], bad);
      if (names.has(t.name)) fail(['admin', 'tokens', i, 'name'], `token name "${t.name}" is used twice`);
      if (tokens.some((o) => o.token === t.token)) fail(['admin', 'tokens', i, 'token'], 'the same token is given twice');
      names.add(t.name);
      tokens.push({ name: t.name, token: t.token, role: t.role });
    });
    if (!isLoopback(a.host) && !tokens.some((t) => t.role === 'admin')) {
      fail(['admin', 'token'], `a token is required when the admin listener is not on loopback (${cfg.admin.listen})`);
    }
    const consoleOrigins: string[] = [];
    cfg.admin.console_origins?.forEach((o, i) => {
      try {
        consoleOrigins.push(new URL(o).origin);
      } catch {
        fail(['admin', 'console_origins', i], `${JSON.stringify(o)} is not an origin (scheme://host[:port])`);
      }
    });
    admin = { listen: a, token: cfg.admin.token || undefined, tokens, consoleOrigins };
  }

  let statusListen: Address | null = null;
  if (cfg.status_listen !== undefined) {
    statusListen = parseAddress(cfg.status_listen);
    if (statusListen.port > 65535) fail(['status_listen'], `port ${statusListen.port} is out of range`);
  }

  const validCidrs: string[] = [];
  (cfg.trusted_proxies ?? []).forEach((c, i) => {
    try {
      new TrustedProxies([c]);
      validCidrs.push(c);
    } catch (e) {
      fail(['trusted_proxies', i], (e as Error).message);
    }
  });
  const trusted = new TrustedProxies(validCidrs);

  const lim = { ...DEFAULTS.limits, ...cfg.limits };
  const limits: Limits = {
    maxUriLength: parseSize(lim.max_uri_length),
    maxHeaderSize: parseSize(lim.max_header_size),
    maxHeaders: lim.max_headers,
  };
  if (limits.maxUriLength < 16) fail(['limits', 'max_uri_length'], 'must be at least 16 bytes');
  if (limits.maxHeaderSize < 256) fail(['limits', 'max_header_size'], 'must be at least 256 bytes');
  // Their sum is the HTTP parser's header limit, a 32-bit number (Node refuses more than 2^53 and
  // the listener would not start; between, it wraps): 1gb each at most.
  if (limits.maxUriLength > MAX_LIMIT_SIZE) fail(['limits', 'max_uri_length'], 'must be at most 1gb');
  if (limits.maxHeaderSize > MAX_LIMIT_SIZE) fail(['limits', 'max_header_size'], 'must be at most 1gb');
  const to = { ...DEFAULTS.timeouts, ...cfg.timeouts };
  const timeouts: ServerTimeouts = {
    clientHeader: timer(['timeouts', 'client_header'], to.client_header),
    clientBody: timer(['timeouts', 'client_body'], to.client_body),
    clientBodyMinRate: parseSize(to.client_body_min_rate),
    keepAlive: timer(['timeouts', 'keepalive'], to.keepalive),
    drain: timer(['timeouts', 'drain'], to.drain),
    shutdownDelay: timer(['timeouts', 'shutdown_delay'], to.shutdown_delay),
    workerUnresponsive: timer(['timeouts', 'worker_unresponsive'], to.worker_unresponsive),
  };
  // (a worker says it is alive every second: less than 2 s would kill one for a GC pause)
  if (timeouts.workerUnresponsive < 2000) fail(['timeouts', 'worker_unresponsive'], 'must be at least 2s (a worker reports every second)');
  // To node:http 0 is "no timeout": a client could hold a connection forever — headers or a body
  // dribbled, or idle between requests (keepalive: 0 does not turn keep-alive off, as nginx's does).
  for (const [k, ms] of [['client_header', timeouts.clientHeader], ['client_body', timeouts.clientBody], ['keepalive', timeouts.keepAlive]] as const) {
    if (ms < 1) fail(['timeouts', k], 'must be at least 1ms: 0 is no timeout at all (a client may hold a connection open forever)');
  }

  const baseDir = loaded.file ? dirname(resolve(loaded.file)) : process.cwd();
  const inputs = new ConfigInputs(baseDir);
  const file = (f: string) => inputs.path(f);

  let tls: TlsListener | null = null;
  if (cfg.tls && cfg.listen_tls === undefined) fail(['tls'], 'tls needs listen_tls (the address of the TLS listener)');
  if (cfg.listen_tls !== undefined && !cfg.tls) fail(['listen_tls'], 'listen_tls needs tls.certificates');
  if (cfg.listen_tls !== undefined && cfg.tls) {
    const t = cfg.tls;
    const tlsListen = parseAddress(cfg.listen_tls);
    if (tlsListen.port > 65535) fail(['listen_tls'], `port ${tlsListen.port} is out of range`);
    const specs: CertSpec[] = t.certificates.map((c, i) => ({
      hosts: c.hosts, certFile: file(c.cert), keyFile: file(c.key), isDefault: c.default ?? false, path: ['tls', 'certificates', i],
    }));
    if (t.certificates.filter((c) => c.default).length > 1) fail(['tls', 'certificates'], 'only one certificate can be the default');
    const certs = new CertSet(specs, {
      minVersion: t.min_version ?? 'TLSv1.2',
      ciphers: t.ciphers ?? DEFAULT_CIPHERS,
      clientCaFile: t.client_ca ? file(t.client_ca) : null,
      strictSni: t.strict_sni ?? false,
      ...(t.client_crl !== undefined ? { clientCrlFile: file(t.client_crl) } : {}),
    });
    if (t.client_crl !== undefined && t.client_ca === undefined) fail(['tls', 'client_crl'], 'client_crl needs tls.client_ca (the CA whose revoked client certificates it lists)');
    // The client CA is one of the config's inputs (watched: a rotated CA reloads, as an upstream
    // `tls.ca` does); certificates and keys are the CertStore's own to poll.
    for (const issue of certs.load(t.watch === false ? undefined : (f) => inputs.read(f))) fail(issue.path, issue.message);
    const hsts = t.hsts ? (t.hsts === true ? {} : t.hsts) : null;
    tls = {
      listen: tlsListen,
      certs,
      hsts: hsts ? hstsValue(Math.floor(parseDuration(hsts.max_age ?? '365d') / 1000), hsts.include_subdomains ?? false, hsts.preload ?? false) : null,
      redirect: t.redirect_http ? t.redirect_status ?? 308 : null,
      watch: t.watch ?? true,
      handshakeTimeout: timer(['tls', 'handshake_timeout'], t.handshake_timeout ?? '10s'),
      requestCert: t.client_ca !== undefined,
    };
    // (node:tls reads 0 as its default, 120 s: not what was written)
    if (tls.handshakeTimeout < 1) fail(['tls', 'handshake_timeout'], 'must be at least 1ms (0 is not "none": node takes it as 120s)');
  }
  const h2 = cfg.http2 ?? {};
  const http2: Http2Settings = {
    enabled: h2.enabled ?? true,
    h2c: h2.h2c ?? false,
    maxConcurrentStreams: h2.max_concurrent_streams ?? 100,
    maxHeaderListSize: h2.max_header_list_size !== undefined ? parseSize(h2.max_header_list_size) : limits.maxHeaderSize + limits.maxUriLength,
    maxResets: h2.max_resets ?? 200,
    resetWindow: timer(['http2', 'reset_window'], h2.reset_window ?? '10s'),
    idleTimeout: timer(['http2', 'idle_timeout'], h2.idle_timeout ?? '75s'),
  };
  // 0 turned protection off: an idle session was never closed (session.setTimeout(0) is none),
  // and a reset window of 0 restarted the rapid-reset count every millisecond.
  if (http2.idleTimeout < 1) fail(['http2', 'idle_timeout'], 'must be at least 1ms: 0 is no timeout at all (an idle HTTP/2 connection is held forever)');
  if (http2.resetWindow < 1) fail(['http2', 'reset_window'], 'must be at least 1ms: 0 restarts the count of reset streams every millisecond (no rapid-reset protection)');
  // An HTTP/2 SETTINGS value is 32 bits: Node throws for more on every new session (a crash at the first h2 client).
  if (http2.maxHeaderListSize > 0xffff_ffff) fail(['http2', 'max_header_list_size'], 'must be at most 4294967295 bytes (an HTTP/2 setting is 32 bits)');

  // The config's hash is taken first: compiling may rewrite parts of it in place (basic-auth
  // swaps a plain password for its hash), and a reload of the same file must compare equal.
  const configHash = loaded.configHash ?? configHashOf(JSON.stringify(cfg));

  // Consumers, their credentials (validated against their auth plugin's schema), then bindings.
  const consumers = new Map<string, Consumer>();
  const credentials = new Map<string, { consumer: Consumer; credential: Record<string, unknown> }[]>();
  const credentialPaths = new Map<object, PathSegment[]>();
  /**
   * Consumers that declare credentials, of any type: none is ever named by a token claim or a
   * certificate CN — also one whose credentials are held (portal approved / verified false) or
   * who has only a portal login (PluginDeps.credentialed).
   */
  const credentialed = new Set<Consumer>();
  const developerEmails = new Map<string, string>();
  (cfg.consumers ?? []).forEach((c, ci) => {
    if (consumers.has(c.name)) fail(['consumers', ci, 'name'], `duplicate consumer name "${c.name}"`);
    const consumer: Consumer = Object.freeze({ id: c.id ?? consumerId(c.name), name: c.name, groups: Object.freeze([...(c.groups ?? [])]), plan: c.plan });
    consumers.set(c.name, consumer);
    if (c.credentials?.length) credentialed.add(consumer);
    // A developer awaiting approval or email verification (their portal credential says so):
    // their other credentials do not authenticate yet.
    const held = c.credentials?.some((cr) => cr.type === 'portal' && ((cr as Record<string, unknown>)['approved'] === false || (cr as Record<string, unknown>)['verified'] === false)) ?? false;
    c.credentials?.forEach((cr, i) => {
      if (cr.type === 'portal' && typeof (cr as Record<string, unknown>)['email'] === 'string') {
        const email = String((cr as Record<string, unknown>)['email']).toLowerCase();
        const other = developerEmails.get(email);
        if (other !== undefined) fail(['consumers', ci, 'credentials', i, 'email'], `consumer "${other}" has this email`);
        developerEmails.set(email, c.name);
      }
      const schema = cr.type === 'portal' ? PortalCredential : PLUGINS.get(cr.type)?.credential;
      if (!schema) {
        fail(['consumers', ci, 'credentials', i, 'type'], `unknown credential type "${cr.type}" (no auth plugin of that name)`);
        return;
      }
      const errors = [...Value.Errors(schema, cr)];
      for (const e of errors.slice(0, 3)) {
        fail(['consumers', ci, 'credentials', i, ...e.path.split('/').slice(1).map((x) => (/^\d+$/.test(x) ? Number(x) : x))], e.message.charAt(0).toLowerCase() + e.message.slice(1));
      }
      if (errors.length === 0 && cr.type !== 'portal' && !held) {
        let list = credentials.get(cr.type);
        if (!list) credentials.set(cr.type, (list = []));
        list.push({ consumer, credential: cr as Record<string, unknown> });
        credentialPaths.set(cr, ['consumers', ci, 'credentials', i]);
      }
    });
  });
  for (const [type, list] of credentials) {
    for (const p of PLUGINS.get(type)!.prepareCredentials?.(list) ?? []) {
      const at = credentialPaths.get(list[p.index]!.credential)!;
      fail(p.field ? [...at, p.field] : at, p.message);
    }
  }
  const counters = deps.counters ?? { local: fallbackStore(), redis: null };
  if (cfg.redis && !counters.redis && deps.counters) fail(['redis'], 'the Redis store is not available');
  const consumerHeaders: ConsumerHeaders = { ...DEFAULT_CONSUMER_HEADERS, ...cfg.consumer_headers };
  for (const k of Object.keys(consumerHeaders) as (keyof ConsumerHeaders)[]) consumerHeaders[k] = consumerHeaders[k].toLowerCase();
  const plugins = new PluginCompiler(PLUGINS, consumers, credentials, credentialed, { clientCa: !!cfg.tls?.client_ca }, counters, consumerHeaders, deps.log ?? silentLogger, fail, inputs, deps.caches);
  plugins.setGlobal(cfg.plugins);
  // own keys only: a plan named toString or constructor is not on every object
  const hasPlan = (name: string): boolean => cfg.plans !== undefined && Object.hasOwn(cfg.plans, name);
  for (const [name, plan] of Object.entries(cfg.plans ?? {})) plugins.setPlan(name, plan, ['plans', name]);
  (cfg.consumers ?? []).forEach((c, ci) => {
    if (c.plan !== undefined && !hasPlan(c.plan)) fail(['consumers', ci, 'plan'], `unknown plan "${c.plan}"`);
    plugins.setConsumer(c.name, c.plugins, ['consumers', ci, 'plugins']);
  });
  const defaults = new Set(Object.values(DEFAULT_CONSUMER_HEADERS));
  const extra = Object.values(consumerHeaders).filter((h) => !defaults.has(h));
  const keyDashed = keyAuthNames(cfg).headers.filter((h) => h.includes('-'));

  const workers = cfg.workers === 'auto' ? Math.max(1, deps.cores ?? 1) : cfg.workers ?? 1;
  // Bulkheads and the retry budget's floor are per process: each worker gets its share.
  const share = (n: number) => Math.ceil(n / workers);
  const acquired: Pool[] = [];
  /** DNS answers this snapshot was compiled with (part of its hash: a new answer is a new snapshot). */
  const dnsUsed: Record<string, string[]> = {};
  const state = deps.state ?? new RuntimeState();
  const reporter = deps.reporter ?? NO_REPORTER;
  const heldTargets: string[] = [];
  const heldServices: string[] = [];
  const release = () => {
    for (const p of acquired) deps.pools.release(p);
    for (const k of heldTargets) state.targets.release(k);
    for (const k of heldServices) state.services.release(k);
    acquired.length = heldTargets.length = heldServices.length = 0;
  };
  const services: CompiledService[] = [];
  const routes: CompiledRoute[] = [];
  const specs: RouteSpec<CompiledRoute>[] = [];
  // Where each spec (route) is in the config: its service's index (-1: a top-level route) and
  // its index there. Numbers, not path arrays: a 10,000-route reload keeps no array per route
  // alive (they would all survive the young generation while the compile runs in slices).
  const specService: number[] = [];
  const specRoute: number[] = [];
  const routePath = (si: number, ri: number): PathSegment[] => (si < 0 ? ['routes', ri] : ['services', si, 'routes', ri]);
  /**
   * websocket.origins as a browser serializes its Origin (RFC 6454 §6.2): lower case, an http(s)
   * origin's default port left out and its host in ASCII form, one trailing '/' tolerated; "*"
   * and "null" as given. Anything else (no scheme, a path, a query) could never equal an Origin
   * field: every browser handshake refused with a 403 for a config that validated.
   */
  const wsOrigins = (list: readonly string[], at: PathSegment[]): Set<string> => {
    const out = new Set<string>();
    list.forEach((entry, i) => {
      if (entry === '*' || entry === 'null') return void out.add(entry);
      const o = entry.replace(/\/$/, '');
      let origin: string | null = null;
      if (WS_ORIGIN_RE.test(o)) {
        origin = o.toLowerCase();
        if (/^https?:/.test(origin)) {
          try {
            origin = new URL(origin).origin;
          } catch {
            origin = null;
          }
        }
      }
      if (origin === null) fail([...at, i], `${JSON.stringify(entry)} is not an origin (scheme://host[:port], no path; or "*")`);
      else out.add(origin);
    });
    return out;
  };
  const specPath = (i: number) => routePath(specService[i]!, specRoute[i]!);
  const serviceNames = new Map<string, number>();
  const routeNames = new Set<string>();

  const checkPaths = (paths: readonly string[] | undefined, si: number, ri: number) => {
    if (!paths) return;
    for (let pi = 0; pi < paths.length; pi++) {
      const p = paths[pi]!;
      if (p.includes('{') || p.includes('}')) {
        const seen = new Set<string>();
        for (const seg of p.split('/')) {
          if (seg.includes('{') || seg.includes('}')) {
            const m = PARAM_SEGMENT.exec(seg);
            if (!m) fail([...routePath(si, ri), 'paths', pi], `bad segment "${seg}": a parameter is a whole segment like {id}`);
            else if (seen.has(m[1]!)) fail([...routePath(si, ri), 'paths', pi], `parameter {${m[1]}} appears twice`);
            else seen.add(m[1]!);
          }
        }
      }
      if (BAD_PATH_CHAR.test(p)) fail([...routePath(si, ri), 'paths', pi], 'a path may not contain ?, # or spaces');
      // Clients send such characters percent-encoded (and the parser refuses them raw): written
      // raw, the route could never match and its requests would fall to a broader route.
      else if (NON_ASCII.test(p)) fail([...routePath(si, ri), 'paths', pi], `a path is ASCII: write it percent-encoded, as clients send it ("${p.replace(NON_ASCII_ALL, (c) => [...Buffer.from(c)].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join(''))}")`);
      else if (normalizePath(p) !== p) fail([...routePath(si, ri), 'paths', pi], `path is not in normal form (expected "${normalizePath(p) ?? 'valid percent-encoding'}")`);
      // Servers decode %3A before routing, clients send `:` as is: written encoded, the route
      // would not match such a request, which would fall to a broader route past its plugins.
      else if (encodedDelimiter(p) !== null) {
        const e = encodedDelimiter(p)!;
        fail([...routePath(si, ri), 'paths', pi], `write ${JSON.stringify(String.fromCharCode(parseInt(e.slice(1), 16)))} as is, not ${e}: servers decode it before routing, and a client sending it as is would not match this route`);
      }
    }
  };

  for (const [si, s] of (cfg.services ?? []).entries()) {
    const sp: PathSegment[] = ['services', si];
    if (serviceNames.has(s.name)) fail([...sp, 'name'], `duplicate service name "${s.name}" (also services[${serviceNames.get(s.name)}])`);
    serviceNames.set(s.name, si);
    const serviceBindings = plugins.bind(s.plugins, 'service', [...sp, 'plugins'], `service:${s.name}`);

    const t = { ...DEFAULTS.service, ...s.timeouts };
    const tp = [...sp, 'timeouts'];
    const response = timer([...tp, 'response'], t.response);
    const timeoutsMs = { connect: timer([...tp, 'connect'], t.connect), response, read: timer([...tp, 'read'], t.read), total: t.total === undefined ? response : timer([...tp, 'total'], t.total) };
    if (timeoutsMs.total >= 1 && timeoutsMs.total < timeoutsMs.response) fail([...sp, 'timeouts', 'total'], 'must be at least timeouts.response (it bounds all attempts together)');
    // 0 is no "no timeout" here: a 0 ms timer fails every request at once (504s, responses cut).
    for (const k of ['response', 'read', 'total'] as const) {
      if (timeoutsMs[k] < 1 && (k !== 'total' || t.total !== undefined)) fail([...tp, k], 'must be at least 1ms: 0 would time out every request at once (for a long wait give a long timeout, at most 24d)');
    }

    let upstreamTls: { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized: boolean; servername?: string; id: string } | undefined;
    if (s.tls) {
      const read = (f: string | undefined, key: string): Buffer | undefined => inputs.readOr(f, (msg) => fail([...sp, 'tls', key], msg));
      const ca = read(s.tls.ca, 'ca');
      const cert = read(s.tls.cert, 'cert');
      const key = read(s.tls.key, 'key');
      if ((s.tls.cert === undefined) !== (s.tls.key === undefined)) fail([...sp, 'tls'], 'a client certificate needs both cert and key');
      const id = createHash('sha256').update(ca ?? '').update('|').update(cert ?? '').update('|').update(key ?? '').update(`|${s.tls.verify ?? true}|${s.tls.server_name ?? ''}`).digest('hex').slice(0, 16);
      // What undici would only find at the first connection (every request a 502): checked here.
      const problem = upstreamTlsProblem(id, ca, cert, key);
      if (problem !== null) fail([...sp, 'tls', problem.field], problem.field === 'ca' ? `${s.tls.ca} ${problem.message}` : `cert ${s.tls.cert} with key ${s.tls.key} does not load: ${problem.message}`);
      upstreamTls = { ca, cert, key, rejectUnauthorized: s.tls.verify ?? true, servername: s.tls.server_name, id };
    }
    const rawTargets: { url: string; weight: number; path: PathSegment[] }[] = [];
    if (s.url && s.upstream) fail([...sp, 'upstream'], 'give either url or upstream, not both');
    else if (s.url) rawTargets.push({ url: s.url, weight: 1, path: [...sp, 'url'] });
    else if (s.upstream) s.upstream.targets.forEach((tg, ti) => rawTargets.push({ url: tg.url, weight: tg.weight ?? 1, path: [...sp, 'upstream', 'targets', ti, 'url'] }));
    else fail(sp, 'a service needs url or upstream');
    if (rawTargets.length && rawTargets.every((r) => r.weight === 0)) fail([...sp, 'upstream', 'targets'], 'at least one target needs a weight above 0');

    const targets: Target[] = [];
    const seenTargets = new Set<string>();
    for (const r of rawTargets) {
      let u: URL;
      try {
        u = new URL(r.url);
      } catch {
        fail(r.path, `invalid URL "${maskUrlSecrets(r.url)}"`);
        continue;
      }
      if (u.protocol !== 'http:' && u.protocol !== 'https:') { fail(r.path, 'only http:// and https:// upstreams are supported'); continue; }
      const protocol = s.protocol ?? (u.protocol === 'https:' ? 'https' : 'http');
      if ((protocol === 'https' || protocol === 'grpcs') !== (u.protocol === 'https:')) {
        fail(r.path, `protocol ${protocol} needs an ${protocol === 'https' || protocol === 'grpcs' ? 'https' : 'http'}:// URL`);
        continue;
      }
      if (u.username || u.password) { fail(r.path, 'credentials in upstream URLs are not supported'); continue; }
      // WHATWG URL lets " ' { } ! * ... through in a host; no DNS name holds them, and the origin
      // goes unescaped into access log lines (upstream) and metric labels.
      if (u.hostname.charCodeAt(0) !== 0x5b /* [ */ && !/^[A-Za-z0-9._-]+$/.test(u.hostname)) { fail(r.path, `host ${JSON.stringify(u.hostname)} is not a host name (letters, digits, - . _) nor an IP address`); continue; }
      if (u.search || u.hash) { fail(r.path, 'an upstream URL may not have a query or fragment'); continue; }
      const basePath = u.pathname === '/' ? '' : u.pathname.replace(/\/$/, '');
      const id = `${s.name}|${u.origin}${basePath}`;
      if (seenTargets.has(id)) { fail(r.path, `target ${u.origin}${basePath} is listed twice (give it a weight instead)`); continue; }
      seenTargets.add(id);
      // A name resolved by the gateway (src/upstream/dns.ts): one target per address, sent the
      // name as Host and SNI. Without an answer (validate, or no DNS table) undici resolves it.
      const addrs = isIP(u.hostname.replace(/^\[|\]$/g, '')) === 0 ? deps.dns?.get(u.hostname) : undefined;
      if (addrs !== undefined) dnsUsed[u.hostname] = addrs;
      for (const addr of addrs ?? [null]) {
        const origin = addr === null ? u.origin : `${u.protocol}//${isIP(addr) === 6 ? `[${addr}]` : addr}:${u.port || (u.protocol === 'https:' ? 443 : 80)}`;
        const key = addr === null ? id : `${id}@${addr}`;
        const pool = deps.pools.acquire(origin, {
          connectTimeout: timeoutsMs.connect,
          servername: upstreamTls?.servername ?? (addr !== null && u.protocol === 'https:' ? u.hostname : undefined),
          http2: s.protocol === 'h2c' || s.protocol === 'grpc' ? 'h2c' : s.protocol === 'grpcs' ? 'h2' : 'none',
          tls: upstreamTls,
        });
        acquired.push(pool);
        heldTargets.push(key);
        targets.push({ origin, basePath, url: `${u.origin}${basePath}`, hostHeader: u.host, weight: r.weight, pool, state: state.targets.acquire(key) });
      }
    }
    const up = s.upstream;
    const balancerName: BalancerName = up?.balancer ?? 'round-robin';
    let hashOn: CompiledService['hashOn'] = null;
    if (balancerName === 'consistent-hash') {
      const h = up?.hash_on ?? 'ip';
      hashOn = h === 'ip' ? { kind: 'ip' } : h.startsWith('header:') ? { kind: 'header', name: h.slice(7).toLowerCase() } : { kind: 'cookie', name: h.slice(7) };
    }
    // hash_on with another balancer is allowed and unused (the issue's contract writes it so;
    // Kong ignores it the same way), which lets a config switch balancers by one line.
    const hc = up?.healthcheck;
    const active: ActiveConfig | null = hc?.active ? {
      path: hc.active.path,
      interval: timer([...sp, 'upstream', 'healthcheck', 'active', 'interval'], hc.active.interval ?? '5s'),
      timeout: timer([...sp, 'upstream', 'healthcheck', 'active', 'timeout'], hc.active.timeout ?? '2s'),
      healthy: hc.active.healthy ?? 2,
      unhealthy: hc.active.unhealthy ?? 3,
      statuses: hc.active.statuses ? new Set(hc.active.statuses) : null,
      host: hc.active.host,
    } : null;
    if (active && active.interval < 100) fail([...sp, 'upstream', 'healthcheck', 'active', 'interval'], 'must be at least 100ms');
    if (active && (active.timeout < 1 || active.timeout > active.interval)) fail([...sp, 'upstream', 'healthcheck', 'active', 'timeout'], 'must be between 1ms and the interval');
    let passive: PassiveConfig | null = null;
    if (hc?.passive) {
      const pp = [...sp, 'upstream', 'healthcheck', 'passive'];
      const ejection = timer([...pp, 'ejection'], hc.passive.ejection ?? '30s');
      const maxEjection = hc.passive.max_ejection === undefined ? Math.min(MAX_TIMER_MS, ejection * 10) : timer([...pp, 'max_ejection'], hc.passive.max_ejection);
      if (maxEjection < ejection) fail([...sp, 'upstream', 'healthcheck', 'passive', 'max_ejection'], 'must be at least the ejection time');
      passive = { failures: hc.passive.failures ?? 3, ejection, maxEjection, maxEjectionPercent: hc.passive.max_ejection_percent ?? 100, statuses: new Set(hc.passive.statuses ?? [500, 502, 503, 504]) };
    }
    const retryOnList: readonly (string | number)[] = s.retry_on ?? DEFAULT_RETRY_ON;
    const cb = s.circuit_breaker;
    let bulkhead: CompiledService['bulkhead'] = null;
    if (cb?.max_concurrent !== undefined) {
      bulkhead = { maxConcurrent: share(cb.max_concurrent), maxPending: share(cb.max_pending ?? 0), maxWait: timer([...sp, 'circuit_breaker', 'max_wait'], cb.max_wait ?? '1s') };
    } else if (cb?.max_pending !== undefined || cb?.max_wait !== undefined) fail([...sp, 'circuit_breaker'], 'max_pending and max_wait need max_concurrent');
    let circuit: CircuitConfig | null = null;
    if (cb && (cb.failure_ratio !== undefined || cb.min_requests !== undefined || cb.open_for !== undefined || cb.window !== undefined || cb.half_open_requests !== undefined)) {
      circuit = {
        failureRatio: cb.failure_ratio ?? 0.5,
        minRequests: cb.min_requests ?? 20,
        window: timer([...sp, 'circuit_breaker', 'window'], cb.window ?? '10s'),
        openFor: timer([...sp, 'circuit_breaker', 'open_for'], cb.open_for ?? '30s'),
        halfOpenRequests: cb.half_open_requests ?? 1,
      };
      if (circuit.window < 100) fail([...sp, 'circuit_breaker', 'window'], 'must be at least 100ms');
    }
    heldServices.push(s.name);
    const protocol = s.protocol ?? (rawTargets[0]?.url.startsWith('https:') ? 'https' : 'http');
    // (as for compose url steps: a tls block beside http:// targets would go unused, the traffic in the clear)
    if (s.tls && protocol !== 'https' && protocol !== 'grpcs') fail([...sp, 'tls'], 'tls needs https:// targets (protocol https or grpcs): with http:// the traffic goes in the clear and tls is unused');
    const service: CompiledService = {
      name: s.name,
      protocol,
      grpc: protocol === 'grpc' || protocol === 'grpcs',
      h2Upstream: protocol === 'h2c' || protocol === 'grpc' || protocol === 'grpcs',
      tls: upstreamTls,
      targets,
      balancer: createBalancer(balancerName, targets),
      balancerName,
      hashOn,
      timeouts: timeoutsMs,
      retries: s.retries ?? 0,
      retryOn: {
        connectError: retryOnList.includes('connect-error'),
        timeout: retryOnList.includes('timeout'),
        reset: retryOnList.includes('reset'),
        statuses: new Set(retryOnList.filter((x): x is number => typeof x === 'number')),
      },
      budget: { ratio: s.retry_budget?.ratio ?? 0.2, minPerSecond: (s.retry_budget?.min_per_second ?? 1) / workers },
      bulkhead,
      circuit,
      health: { active, passive },
      state: state.services.acquire(s.name),
      reporter,
      scaling: null,
    };
    if (s.scaling) service.scaling = scalingPolicyOf(s.scaling, (p, msg) => fail([...sp, 'scaling', ...p], msg), cfg.scaling?.kubernetes_api_servers, inputs, cfg.scaling?.webhook_allowed_networks);
    services.push(service);

    const sroutes = s.routes ?? [];
    for (let ri = 0; ri < sroutes.length; ri++) {
      const r = sroutes[ri]!;
      if ((++routeCount & 31) === 0) yield;
      const name = r.name ?? `${s.name}.${ri}`;
      if (routeNames.has(name)) fail([...routePath(si, ri), 'name'], `duplicate route name "${name}"`);
      routeNames.add(name);
      const counterId = r.name ?? unnamedRouteId(s.name, r);
      const routeBindings = r.plugins?.length ? plugins.bind(r.plugins, 'route', [...routePath(si, ri), 'plugins'], `route:${counterId}`) : NO_BINDINGS;
      checkPaths(r.paths, si, ri);
      const ws = r.websocket === true ? {} : r.websocket || null;
      const route: CompiledRoute = {
        name, counterId, service, stripPath: r.strip_path ?? false, preserveHost: r.preserve_host ?? false, retryNonIdempotent: r.retry_non_idempotent ?? false,
        websocket: ws && {
          maxMessage: parseSize(ws.max_message ?? DEFAULTS.websocket.max_message),
          idleTimeout: timer([...sp, 'routes', ri, 'websocket', 'idle_timeout'], ws.idle_timeout ?? DEFAULTS.websocket.idle_timeout),
          origins: ws.origins ? wsOrigins(ws.origins, [...routePath(si, ri), 'websocket', 'origins']) : null,
        },
        chains: plugins.route(serviceBindings, routeBindings, { route: name, service: s.name }),
        compose: null,
        cacheWrites: null,
      };
      if (ws && service.grpc) fail([...routePath(si, ri), 'websocket'], 'a gRPC service cannot take WebSocket upgrades');
      if (ws) loadWebSocketLibrary(); // here, not at the first upgrade (a config without one never loads ws)
      // ws reads its maxPayload as a 32-bit integer and 0 (or what overflows to 0 or below: 2gb,
      // 4gb) as no limit at all: every message, however large, would be buffered whole.
      const maxMessage = route.websocket?.maxMessage;
      if (maxMessage !== undefined && !(maxMessage >= 1 && maxMessage <= 0x7fffffff)) {
        fail([...sp, 'routes', ri, 'websocket', 'max_message'], 'must be between 1b and 2gb - 1 byte (ws takes 0, and 2gb or more, for no limit at all)');
      }
      routes.push(route);
      specs.push({ hosts: r.hosts, paths: r.paths, methods: r.methods, headers: r.headers, data: route });
      specService.push(si);
      specRoute.push(ri);
    }
    yield;
  }


  // Top-level routes: compositions of several backends (src/compose/).
  const servicesByName = new Map<string, CompiledService>();
  for (const sv of services) if (!servicesByName.has(sv.name)) servicesByName.set(sv.name, sv);
  const composeNames = new Set<string>();
  for (const [ri, r] of (cfg.routes ?? []).entries()) {
    if ((++routeCount & 31) === 0) yield;
    const rp: PathSegment[] = ['routes', ri];
    if (routeNames.has(r.name)) fail([...rp, 'name'], `duplicate route name "${r.name}"`);
    routeNames.add(r.name);
    composeNames.add(r.name);
    checkPaths(r.paths, -1, ri);
    const routeBindings = plugins.bind(r.plugins, 'route', [...rp, 'plugins'], `route:${r.name}`);
    const route: CompiledRoute = {
      name: r.name,
      counterId: r.name,
      service: composeService(r.name),
      stripPath: false,
      preserveHost: false,
      retryNonIdempotent: false,
      websocket: null,
      chains: plugins.route([], routeBindings, { route: r.name, service: r.name }),
      compose: compileCompose(r.compose, {
        path: [...rp, 'compose'], services: servicesByName, params: pathParams(r.paths), pools: deps.pools, acquired, inputs, fail,
      }),
      cacheWrites: null,
    };
    routes.push(route);
    specs.push({ hosts: r.hosts, paths: r.paths, methods: r.methods, headers: r.headers, data: route });
    specService.push(-1);
    specRoute.push(ri);
  }

  const acc = cfg.portal?.accounts;
  if (acc?.enabled) {
    if (!cfg.portal?.enabled) fail(['portal', 'accounts', 'enabled'], 'developer accounts need the portal (portal.enabled: true)');
    if (typeof acc.default_plan === 'string' && !hasPlan(acc.default_plan)) fail(['portal', 'accounts', 'default_plan'], `unknown plan "${acc.default_plan}"`);
    acc.plans?.forEach((pl, i) => { if (!hasPlan(pl)) fail(['portal', 'accounts', 'plans', i], `unknown plan "${pl}"`); });
    // (the integer forms are at least 1, but "0s" passed the schema: a session under 1 s is a
    // cookie of Max-Age=0 that no login kept, and a 0 ms hook deadline failed every sign-up)
    if (acc.session_ttl !== undefined && parseDuration(acc.session_ttl) < 1000) fail(['portal', 'accounts', 'session_ttl'], 'must be at least 1s (the login cookie\'s Max-Age is whole seconds)');
    if (acc.verification?.timeout !== undefined && parseDuration(acc.verification.timeout) < 1) fail(['portal', 'accounts', 'verification', 'timeout'], 'must be at least 1ms');
  }
  for (const [name, plan] of Object.entries(cfg.plans ?? {})) {
    // (a composing route stands for its own service: a plan may name it in services too)
    plan.services?.forEach((sv, i) => { if (!serviceNames.has(sv) && !composeNames.has(sv)) fail(['plans', name, 'services', i], `unknown service "${sv}"`); });
    plan.routes?.forEach((r, i) => { if (!routeNames.has(r)) fail(['plans', name, 'routes', i], `unknown route "${r}"`); });
  }
  yield;
  const router: Router<CompiledRoute> = yield* Router.build(specs);
  yield;
  for (const c of router.conflicts) {
    fail(specPath(c.b), `matches the same requests as ${formatPath(specPath(c.a))} (host ${c.host}, path ${c.path}); give one of them a method, header or host to tell them apart`);
  }

  let demo: Address | null = null;
  if (cfg.demo) {
    demo = parseAddress(cfg.demo.listen);
    if (demo.port > 65535) fail(['demo', 'listen'], `port ${demo.port} is out of range`);
  }
  const observability = observabilitySettings(cfg, file, fail);

  let pluginsClosed = false;
  const closePlugins = () => {
    if (pluginsClosed) return;
    pluginsClosed = true;
    for (const p of plugins.instances) {
      try {
        p.close?.();
      } catch {
        /* a plugin's cleanup failing does not stop the others' */
      }
    }
  };
  // (before the issues are counted: a scaling setting may fail, e.g. a KEDA TLS file)
  const scaling = scalingSettingsOf(cfg.scaling, services, inputs, (p, msg) => fail(['scaling', ...p], msg));
  if (issues.length) {
    release();
    closePlugins();
    throw loaded.error(issues);
  }
  // §4.4 across routes: a write through a route without the cache plugin invalidates the URI in
  // the caches other routes fill (their entries are keyed by host and path, not by route).
  if (deps.caches !== undefined && plugins.used.has('cache')) {
    for (const r of routes) if (!r.chains.base.access.some((b) => b.name === 'cache')) r.cacheWrites = deps.caches;
  }
  yield;
  const hash = createHash('sha256').update(configHash).update(JSON.stringify(dnsUsed)).update(tls?.certs.digest() ?? '').update(inputs.digest()).digest('hex').slice(0, 16);
  let users = 0;
  let retired = false;
  return Object.freeze({
    hash,
    inputs: inputs.paths(),
    loadedAt: new Date(),
    source: loaded.file,
    listen,
    tls,
    http2,
    admin,
    statusListen,
    demo,
    workers,
    watch: cfg.watch ?? true,
    dns: dnsSettings(cfg),
    trusted,
    forwarding: forwardingOf(cfg.forwarding_headers ?? DEFAULTS.forwarding_headers),
    limits,
    timeouts,
    router,
    services,
    routes,
    consumers,
    consumerHeaders,
    stateFile: plugins.used.has('quota') ? file(cfg.state_file ?? '.turnpike/state.db') : null,
    extraStripped: extra.length ? new Set(extra) : null,
    credentialDashed: keyDashed.length ? new Set(keyDashed) : null,
    observability,
    scaling,
    portal: portalOf(cfg),
    retain: () => {
      users++;
    },
    release: () => {
      if (--users === 0 && retired) {
        release();
        closePlugins();
      }
    },
    dispose: () => {
      retired = true;
      if (users === 0) {
        release();
        closePlugins();
      }
    },
  });
}
