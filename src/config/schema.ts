/**
 * The config file's schema (TypeBox: typed, and emitted as JSON Schema to
 * schema/turnpike.schema.json by `npm run schema`). Unknown keys are errors everywhere.
 */
import { Type, type Static, type ObjectOptions, type TProperties } from '@sinclair/typebox';
import { DURATION_PATTERN, SIZE_PATTERN } from './units.js';
import { HostPort } from './address.js';
import { GroupName } from '../plugins/schema-types.js';
import { AccessLog, Analytics, Metrics, Tracing } from '../observability/schema.js';
import { Compose } from '../compose/schema.js';
import { Scaling, ServiceScaling } from '../scaling/schema.js';
import { Portal } from '../portal/schema.js';

const Strict = <T extends TProperties>(props: T, opts: ObjectOptions = {}) =>
  Type.Object(props, { additionalProperties: false, ...opts });

export { HostPort };

export const Duration = Type.Union(
  [Type.Integer({ minimum: 0 }), Type.String({ pattern: DURATION_PATTERN })],
  { description: 'A duration: 250ms, 30s, 5m, 1h, 1d (a bare number is milliseconds).' },
);
export const Size = Type.Union(
  [Type.Integer({ minimum: 0 }), Type.String({ pattern: SIZE_PATTERN })],
  { description: 'A size: 512b, 10kb, 8mb, 1gb (a bare number is bytes).' },
);
const FilePath = Type.String({ minLength: 1, description: 'A file path (relative paths are relative to the config file).' });
const UpstreamUrl = Type.String({
  pattern: '^https?://',
  description: 'http:// or https:// URL of the upstream; a path here is prepended to every forwarded path.',
});
const Name = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._~-]*$', maxLength: 128 });
const Tags = Type.Array(Type.String({ minLength: 1, maxLength: 128 }), { description: 'Free-form labels.' });
const Method = Type.String({ pattern: '^[A-Za-z]+$', description: 'HTTP method (case-insensitive), e.g. GET' });

export const PluginBinding = Strict({
  name: Type.String({ minLength: 1, description: 'Plugin name.' }),
  enabled: Type.Optional(Type.Boolean({ default: true })),
  config: Type.Optional(Type.Record(Type.String(), Type.Unknown(), { description: 'Plugin-specific settings (validated against the plugin\'s schema).' })),
  consumer: Type.Optional(Type.String({ minLength: 1, description: 'On a service or route binding: applies only to this consumer (most specific binding wins).' })),
});

export const Route = Strict({
  name: Type.Optional(Name),
  paths: Type.Optional(Type.Array(Type.String({ pattern: '^/' }), {
    minItems: 1,
    description: 'Path prefixes matched on segment boundaries; {name} matches one segment and captures it.',
  })),
  methods: Type.Optional(Type.Array(Method, { minItems: 1, description: 'Allowed methods; omitted = any.' })),
  hosts: Type.Optional(Type.Array(Type.String({ pattern: '^(\\*\\.)?[A-Za-z0-9.-]+$' }), {
    minItems: 1,
    description: 'Exact host names or wildcards like *.example.com (a suffix: a.example.com and a.b.example.com, not example.com; as Kong, nginx and the Gateway API route; a certificate\'s *.example.com covers one label); omitted = any.',
  })),
  headers: Type.Optional(Type.Record(
    Type.String({ pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$" }),
    Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1 })]),
    { additionalProperties: false, description: 'Request headers that must be present with one of the given values (case-sensitive values).' },
  )),
  strip_path: Type.Optional(Type.Boolean({ default: false, description: 'Remove the matched path prefix before forwarding.' })),
  preserve_host: Type.Optional(Type.Boolean({ default: false, description: "Forward the client's Host instead of the upstream's." })),
  retry_non_idempotent: Type.Optional(Type.Boolean({ default: false, description: 'Allow retries of POST, PATCH and other non-idempotent methods on this route (by default only GET, HEAD, OPTIONS, PUT, DELETE are retried).' })),
  websocket: Type.Optional(Type.Union([
    Type.Boolean(),
    Strict({
      max_message: Type.Optional(Size),
      idle_timeout: Type.Optional(Duration),
      origins: Type.Optional(Type.Array(Type.String({ minLength: 1 }), {
        description: 'Origins (scheme://host[:port], or "*") whose pages may open WebSockets here; others get 403. Default: a cross-origin handshake carrying cookies or Authorization is refused (cross-site WebSocket hijacking), any other is let through.',
      })),
    }),
  ], { description: 'Allow WebSocket upgrades on this route (true, or {max_message: 1mb, idle_timeout: 60s, origins: [...]}). Without it an Upgrade is served as plain HTTP.' })),
  published: Type.Optional(Type.Boolean({ default: false, description: 'Listed in the developer portal\'s catalog with its generated OpenAPI document (portal.enabled).' })),
  description: Type.Optional(Type.String({ maxLength: 4000, description: 'Shown in the developer portal (plain text).' })),
  plugins: Type.Optional(Type.Array(PluginBinding)),
  tags: Type.Optional(Tags),
});

/** A top-level route: it composes several backends (src/compose/) instead of proxying to one service. */
export const ComposeRoute = Strict({
  name: Name,
  paths: Route.properties.paths,
  methods: Route.properties.methods,
  hosts: Route.properties.hosts,
  headers: Route.properties.headers,
  plugins: Route.properties.plugins,
  tags: Route.properties.tags,
  compose: Compose,
});

export const Target = Strict({
  url: UpstreamUrl,
  weight: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000, default: 1 })),
});

const StatusList = Type.Array(Type.Integer({ minimum: 100, maximum: 599 }), { minItems: 1, uniqueItems: true });

export const ActiveHealthcheck = Strict({
  path: Type.String({ pattern: '^/', description: 'Path probed with GET on every target.' }),
  interval: Type.Optional(Duration),
  timeout: Type.Optional(Duration),
  healthy: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 2, description: 'Consecutive passing probes that bring a target back.' })),
  unhealthy: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 3, description: 'Consecutive failing probes that take a target out.' })),
  statuses: Type.Optional(Type.Array(Type.Integer({ minimum: 100, maximum: 599 }), {
    minItems: 1, uniqueItems: true, description: 'Statuses that pass (default: 200-399).',
  })),
  host: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9._~%!$&\'()*+,;=:\\[\\]-]+$', description: 'Host header for probes (default: the target\'s): a host[:port].' })),
}, { description: 'Active health checks: a GET to path every interval (default 5s, timeout 2s).' });

export const PassiveHealthcheck = Strict({
  failures: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 3, description: 'Consecutive failures (connect errors, timeouts, failing statuses) that eject a target.' })),
  ejection: Type.Optional(Duration),
  max_ejection: Type.Optional(Duration),
  max_ejection_percent: Type.Optional(Type.Integer({
    minimum: 0, maximum: 100, default: 100,
    description: 'The most of the service\'s targets (in %) passive checks may have ejected at once, as Envoy\'s max_ejection_percent: past it a failing target stays in (one may always be ejected; the last target up never is).',
  })),
  statuses: Type.Optional(StatusList),
}, { description: 'Passive checks on live traffic. An ejected target gets no traffic for `ejection` (default 30s), doubled on every repeated ejection up to max_ejection (default 10x); each `ejection` it then stays in takes one doubling off.' });

export const Healthcheck = Strict({
  active: Type.Optional(ActiveHealthcheck),
  passive: Type.Optional(PassiveHealthcheck),
});

export const Upstream = Strict({
  targets: Type.Array(Target, { minItems: 1 }),
  balancer: Type.Optional(Type.Union([
    Type.Literal('round-robin'), Type.Literal('least-connections'), Type.Literal('consistent-hash'), Type.Literal('latency'),
  ], { default: 'round-robin', description: 'Target selection: weighted round-robin, weighted least-connections, consistent hashing (hash_on), or latency (peak EWMA, power of two choices).' })),
  hash_on: Type.Optional(Type.String({
    pattern: '^(ip|header:[!#$%&\'*+.^_`|~0-9A-Za-z-]+|cookie:[!#$%&\'*+.^_`|~0-9A-Za-z-]+)$',
    description: 'consistent-hash key: ip (the computed client IP), header:NAME or cookie:NAME. Requests without the key hash on the client IP.',
  })),
  healthcheck: Type.Optional(Healthcheck),
});

export const CircuitBreaker = Strict({
  max_concurrent: Type.Optional(Type.Integer({ minimum: 1, description: 'Requests in flight to this service at once (bulkhead).' })),
  max_pending: Type.Optional(Type.Integer({ minimum: 0, description: 'Requests allowed to wait for a slot; beyond that 503 at once (default 0).' })),
  max_wait: Type.Optional(Duration),
  failure_ratio: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, description: 'Share of failed requests in the window that opens the circuit (default 0.5).' })),
  min_requests: Type.Optional(Type.Integer({ minimum: 1, description: 'Requests in the window before the ratio is judged (default 20).' })),
  window: Type.Optional(Duration),
  open_for: Type.Optional(Duration),
  half_open_requests: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, description: 'Trial requests let through while half-open (default 1); with workers: N, per worker (up to N times as many at once).' })),
}, { description: 'Bulkhead (max_concurrent, max_pending waiting at most max_wait, default 1s) and failure-ratio circuit: open for open_for (default 30s), then half-open.' });

export const RetryBudget = Strict({
  ratio: Type.Optional(Type.Number({ minimum: 0, maximum: 10, description: 'Retries allowed per request (default 0.2: at most 20% extra upstream traffic).' })),
  min_per_second: Type.Optional(Type.Number({ minimum: 0, maximum: 10000, description: 'Retries always allowed per second, so a quiet service can still retry (default 1).' })),
});

const RetryOn = Type.Union([
  Type.Literal('connect-error'), Type.Literal('timeout'), Type.Literal('reset'),
  Type.Integer({ minimum: 500, maximum: 599 }),
], { description: 'connect-error (nothing was sent), timeout (no response headers in time), reset (connection lost before the response), or a 5xx status.' });

export const ServiceTimeouts = Strict({
  connect: Type.Optional(Duration),
  response: Type.Optional(Duration),
  read: Type.Optional(Duration),
  total: Type.Optional(Duration),
}, { description: 'connect: TCP/TLS connect; response: until the response headers, per attempt; read: idle time between body chunks; total: deadline for the response headers across all attempts (default: response).' });

export const UpstreamTls = Strict({
  ca: Type.Optional(FilePath),
  cert: Type.Optional(FilePath),
  key: Type.Optional(FilePath),
  verify: Type.Optional(Type.Boolean({ default: true, description: "Verify the upstream's certificate (against ca, or the system's CAs)." })),
  server_name: Type.Optional(Type.String({ minLength: 1, description: 'SNI and the name the certificate must carry (default: the URL host); an IP address is only verified, never sent as SNI.' })),
}, { description: 'TLS to the upstream: CA bundle to verify it with, and a client certificate (cert + key) for mutual TLS.' });

export const Service = Strict({
  name: Name,
  url: Type.Optional(UpstreamUrl),
  protocol: Type.Optional(Type.Union([
    Type.Literal('http'), Type.Literal('h2c'), Type.Literal('https'), Type.Literal('grpc'), Type.Literal('grpcs'),
  ], { description: 'Upstream protocol: http (HTTP/1.1), h2c (HTTP/2 cleartext), https (HTTP/1.1 over TLS), grpc (h2c), grpcs (HTTP/2 over TLS). Default: from the URL scheme.' })),
  tls: Type.Optional(UpstreamTls),
  upstream: Type.Optional(Upstream),
  timeouts: Type.Optional(ServiceTimeouts),
  retries: Type.Optional(Type.Integer({ minimum: 0, maximum: 10, default: 0, description: 'Retries of a failed attempt on another target: idempotent methods only (unless the route allows more; any method after a connect error, which sent nothing), inside the retry budget and the total deadline.' })),
  retry_on: Type.Optional(Type.Array(RetryOn, { minItems: 1, uniqueItems: true, description: 'What is retried (default: connect-error).' })),
  retry_budget: Type.Optional(RetryBudget),
  circuit_breaker: Type.Optional(CircuitBreaker),
  scaling: Type.Optional(ServiceScaling),
  published: Type.Optional(Type.Boolean({ default: false, description: 'Listed in the developer portal\'s catalog with its generated OpenAPI document (portal.enabled).' })),
  description: Type.Optional(Type.String({ maxLength: 4000, description: 'Shown in the developer portal (plain text).' })),
  routes: Type.Optional(Type.Array(Route)),
  plugins: Type.Optional(Type.Array(PluginBinding)),
  tags: Type.Optional(Tags),
});

export const Credential = Type.Object({
  type: Type.String({ minLength: 1 }),
}, { additionalProperties: true, description: 'A credential, checked by the auth plugin named by `type`.' });

export const Consumer = Strict({
  name: Name,
  id: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Sent upstream as X-Consumer-Id (default: a UUID derived from the name).' })),
  groups: Type.Optional(Type.Array(GroupName('A group name: no comma (X-Consumer-Groups joins them with ", "), no control character, no leading or trailing space.'))),
  plan: Type.Optional(Type.String({ minLength: 1 })),
  credentials: Type.Optional(Type.Array(Credential)),
  plugins: Type.Optional(Type.Array(PluginBinding, { description: 'Bindings for this consumer alone (after authentication).' })),
  tags: Type.Optional(Tags),
});

export const Admin = Strict({
  listen: Type.Optional(HostPort),
  // (an empty value, e.g. "${TURNPIKE_ADMIN_TOKEN:-}" unset, means no token; writeOnly: an error never quotes it)
  token: Type.Optional(Type.Union([Type.Literal(''), Type.String({ minLength: 16 })], { writeOnly: true, description: 'Bearer token for the admin API (role admin), at least 16 characters (use ${ENV}); empty: none. Required when listening beyond loopback.' })),
  tokens: Type.Optional(Type.Array(Strict({
    name: Name,
    token: Type.String({ minLength: 16, description: 'The bearer token (use ${ENV}).' }),
    role: Type.Union([Type.Literal('admin'), Type.Literal('read-only')], { description: 'admin: every method; read-only: GET only.' }),
  }), { description: 'More admin API tokens, each with a name (written in the audit log) and a role.' })),
  console_origins: Type.Optional(Type.Array(Type.String({ pattern: '^https?://[^/?#@\\s]+$' }), {
    minItems: 1,
    description: 'Origins (scheme://host[:port]) the web console may also be used from, besides the one the admin listener\'s Host names: behind a reverse proxy that rewrites Host, the public one (e.g. https://admin.example.com). A change made with a console session, from an Origin neither names, is refused (403). Default: none.',
  })),
});

export const Limits = Strict({
  max_uri_length: Type.Optional(Size),
  max_header_size: Type.Optional(Size),
  max_headers: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })),
}, { description: 'Request limits: 414 past max_uri_length, 431 past max_header_size or max_headers.' });

export const ServerTimeouts = Strict({
  client_header: Type.Optional(Duration),
  client_body: Type.Optional(Duration),
  client_body_min_rate: Type.Optional(Size),
  keepalive: Type.Optional(Duration),
  drain: Type.Optional(Duration),
  shutdown_delay: Type.Optional(Duration),
  worker_unresponsive: Type.Optional(Duration),
}, { description: 'client_header: to receive all headers; client_body: idle time between body chunks; client_body_min_rate: bytes per second a request body must bring in each client_body period the gateway reads it (a body trickled slower, slow-POST, is cut: 408, or the connection once answering; periods where the gateway held the body back do not count; gRPC calls are exempt (to gRPC services, or application/grpc* over HTTP/2 through any other); default 500, as Apache mod_reqtimeout MinRate; 0: off); keepalive: idle connection; drain: bound on in-flight requests at shutdown (counted from the end of shutdown_delay); shutdown_delay: at SIGTERM/SIGINT, how long the listeners keep accepting and serving while /status/ready says 503 "draining", before the drain (default 0: drain at once; in Kubernetes a few seconds, so that the endpoint is removed before the port closes); worker_unresponsive: with workers, a serving worker whose event loop has not answered the primary for this long (a busy loop, a stopped process) is killed and replaced — it holds its share of new connections (default 30s, at least 2s).' });

export const Certificate = Strict({
  hosts: Type.Array(Type.String({ pattern: '^(\\*\\.)?[A-Za-z0-9.-]+$' }), { minItems: 1, description: 'Server names (SNI) this certificate is for; *.example.com matches one label. The certificate must cover each (its subjectAltNames), else a config error.' }),
  cert: FilePath,
  key: FilePath,
  default: Type.Optional(Type.Boolean({ description: 'Serve this certificate to clients that send no or an unknown server name (default: the first). With tls.strict_sni: to clients that send none only.' })),
});

export const Tls = Strict({
  certificates: Type.Array(Certificate, { minItems: 1 }),
  client_ca: Type.Optional(FilePath),
  client_crl: Type.Optional(Type.String({ minLength: 1, description: 'PEM certificate revocation list(s) for client certificates (needs client_ca): a revoked certificate is not trusted. With it, OpenSSL wants a current CRL from every CA of a chain (an intermediate\'s too): one signed by each CA of client_ca must be there (a config error otherwise); re-read when the file changes.' })),
  strict_sni: Type.Optional(Type.Boolean({ default: false, description: 'Refuse the handshake of a client whose server name (SNI) no certificate\'s hosts name, instead of serving it the default certificate; a client that sends no server name is refused too, unless a certificate is marked default: true (it serves those only). The connection is closed before any certificate is sent (Node cannot send the unrecognized_name alert itself).' })),
  min_version: Type.Optional(Type.Union([Type.Literal('TLSv1.2'), Type.Literal('TLSv1.3')], { default: 'TLSv1.2' })),
  ciphers: Type.Optional(Type.String({ minLength: 1, description: 'OpenSSL cipher list for TLS 1.2 (default: forward-secret AEAD suites only).' })),
  hsts: Type.Optional(Type.Union([Type.Boolean(), Strict({
    max_age: Type.Optional(Duration),
    include_subdomains: Type.Optional(Type.Boolean()),
    preload: Type.Optional(Type.Boolean()),
  })], { description: 'Send Strict-Transport-Security on HTTPS responses (true: max-age one year).' })),
  redirect_http: Type.Optional(Type.Boolean({ default: false, description: 'Answer every request on the plain listener with a redirect to https (not one a trusted proxy says came over https: X-Forwarded-Proto).' })),
  redirect_status: Type.Optional(Type.Union([Type.Literal(301), Type.Literal(302), Type.Literal(307), Type.Literal(308)], { default: 308 })),
  watch: Type.Optional(Type.Boolean({ default: true, description: 'Reload certificate files when they change.' })),
  handshake_timeout: Type.Optional(Duration),
}, { description: 'TLS termination on listen_tls: certificates picked by SNI.' });

export const Http2 = Strict({
  enabled: Type.Optional(Type.Boolean({ default: true, description: 'Offer HTTP/2 (ALPN h2) on the TLS listener.' })),
  h2c: Type.Optional(Type.Boolean({ default: false, description: 'Accept HTTP/2 with prior knowledge (no TLS) on the plain listener, beside HTTP/1.1.' })),
  max_concurrent_streams: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000, default: 100 })),
  max_header_list_size: Type.Optional(Size),
  max_resets: Type.Optional(Type.Integer({ minimum: 1, default: 200, description: 'Streams a client may cancel within reset_window before its connection is closed (rapid-reset protection).' })),
  reset_window: Type.Optional(Duration),
  idle_timeout: Type.Optional(Duration),
}, { description: 'HTTP/2 downstream: same routing and policies as HTTP/1.1.' });

export const Demo = Strict({
  listen: HostPort,
}, { description: 'Start the built-in demo upstream (an echo server) on this address.' });

export const TurnpikeConfig = Strict({
  $schema: Type.Optional(Type.String()),
  listen: Type.Optional(HostPort),
  listen_tls: Type.Optional(HostPort),
  status_listen: Type.Optional(Type.Union([...HostPort.anyOf], { description: 'host:port for the probes alone, e.g. 0.0.0.0:8082 (GET /status, /status/live, /status/ready without a token; 404 for anything else: kubelet probes without exposing the admin listener)' })),
  tls: Type.Optional(Tls),
  http2: Type.Optional(Http2),
  workers: Type.Optional(Type.Union([Type.Literal('auto'), Type.Integer({ minimum: 1, maximum: 256 })], {
    description: 'Worker processes serving the proxy listener: auto = one per CPU core (default 1).',
  })),
  dns: Type.Optional(Strict({
    servers: Type.Optional(Type.Array(Type.String({ pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[0-9.]+)(:[0-9]{1,5})?$' }), {
      minItems: 1, description: 'DNS servers (ip or ip:port) for upstream names; default: the system resolver (/etc/hosts, nsswitch).',
    })),
    refresh: Type.Optional(Duration),
    min_ttl: Type.Optional(Duration),
    timeout: Type.Optional(Duration),
    max_stale: Type.Optional(Duration),
  }, { description: 'Upstream names are resolved by the gateway: each address is a target. With servers, a name is re-resolved when its answer\'s TTL runs out, held between min_ttl (default 1s) and refresh (default 30s); from the system resolver (no TTL) and after a failed lookup, every refresh. A lookup is given up after timeout (default 2s; the system resolver too). A name the resolvers cannot answer for (timeout, SERVFAIL, refused) keeps its last answer for up to max_stale after it came (default 3d, RFC 8767 serve-stale); one they say twice in a row does not exist or has no address (NXDOMAIN, NODATA) loses it.' })),
  watch: Type.Optional(Type.Boolean({ default: true, description: 'Reload when the config file changes (debounced); SIGHUP always reloads.' })),
  store: Type.Optional(Type.String({
    pattern: '^(file|sqlite:.+|postgres(ql)?://.+)$',
    description: 'Where the declarative config (services, routes, consumers, plugins, plans) lives: file (this file; the default), sqlite:PATH (embedded; admin API writes), postgres://... (shared by the nodes of a cluster). With a store, this file seeds an empty store; after that the store is the truth.',
  })),
  scaling: Type.Optional(Scaling),
  portal: Type.Optional(Portal),
  store_snapshot: Type.Optional(Type.String({ minLength: 1, description: 'With store: postgres://..., where this node keeps its last good config (default .turnpike/config-snapshot.json beside the config file): served when PostgreSQL is down at start.' })),
  admin: Type.Optional(Admin),
  state_file: Type.Optional(Type.String({ minLength: 1, description: 'Where this node keeps its quota counters across restarts (SQLite; default .turnpike/state.db beside the config file).' })),
  redis: Type.Optional(Type.Union([
    Type.String({ pattern: '^rediss?://', description: 'redis://[user:password@]host:port[/db] (rediss:// for TLS).' }),
    Strict({
      url: Type.Optional(Type.String({ pattern: '^rediss?://' })),
      cluster: Type.Optional(Type.Array(Type.String({ pattern: '^rediss?://' }), { minItems: 1, description: 'Seed nodes of a Redis Cluster.' })),
      timeout: Type.Optional(Duration),
      prefix: Type.Optional(Type.String({ maxLength: 64, pattern: '^[^{}]*$', description: 'Key prefix (default "turnpike:"); no braces (the hash tag is the limit key).' })),
    }),
  ], { description: 'Shared counters for limits with policy: redis (one truth across gateway nodes).' })),
  trusted_proxies: Type.Optional(Type.Array(Type.String(), {
    description: 'CIDRs (or addresses) of proxies whose X-Forwarded-* / Forwarded headers are believed.',
  })),
  forwarding_headers: Type.Optional(Type.Array(
    Type.Union([
      Type.Literal('x-forwarded-for'), Type.Literal('x-forwarded-proto'), Type.Literal('x-forwarded-host'),
      Type.Literal('x-forwarded-port'), Type.Literal('x-real-ip'), Type.Literal('forwarded'), Type.Literal('x-forwarded-prefix'),
    ]),
    {
      uniqueItems: true,
      description: 'Forwarding fields sent upstream (default: x-forwarded-for, x-forwarded-proto, x-forwarded-host, forwarded). x-forwarded-prefix: the path prefix a strip_path route removed (after a trusted proxy\'s own). Inbound copies of all seven are always replaced unless the peer is a trusted proxy.',
    },
  )),
  limits: Type.Optional(Limits),
  timeouts: Type.Optional(ServerTimeouts),
  demo: Type.Optional(Demo),
  services: Type.Optional(Type.Array(Service)),
  routes: Type.Optional(Type.Array(ComposeRoute, { description: 'Routes that compose several backends into one JSON response (see docs/composition.md).' })),
  plans: Type.Optional(Type.Record(Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._~-]*$' }), Strict({
    plugins: Type.Optional(Type.Array(PluginBinding, { description: 'Bindings every consumer on the plan gets (a consumer\'s own binding of the same plugin wins).' })),
    services: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { description: 'Services the plan may reach (omitted: all); others answer 403.' })),
    routes: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { description: 'Routes the plan may reach (omitted: all); others answer 403.' })),
    description: Type.Optional(Type.String()),
  }), { additionalProperties: false, description: 'Named tiers: limits and reach bundled for the consumers that name them (consumers[].plan).' })),
  consumers: Type.Optional(Type.Array(Consumer)),
  consumer_headers: Type.Optional(Strict(Object.fromEntries(['id', 'name', 'groups', 'credential', 'anonymous'].map((k) => [k, Type.Optional(Type.String({ pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$" }))])), {
    description: 'Names of the headers that carry the authenticated consumer upstream (default x-consumer-id, x-consumer-name, x-consumer-groups, x-credential-identifier, x-anonymous-consumer). Client copies are always removed.',
  })),
  plugins: Type.Optional(Type.Array(PluginBinding)),
  access_log: Type.Optional(AccessLog),
  metrics: Type.Optional(Metrics),
  tracing: Type.Optional(Tracing),
  analytics: Type.Optional(Analytics),
}, {
  $id: 'https://turnpike.dev/schema/turnpike.schema.json',
  title: 'Turnpike gateway configuration',
});

export type TurnpikeConfigInput = Static<typeof TurnpikeConfig>;
export type ServiceInput = Static<typeof Service>;
export type RouteInput = Static<typeof Route>;
export type ComposeRouteInput = Static<typeof ComposeRoute>;
export type PluginBindingInput = Static<typeof PluginBinding>;
