/** Config schema of the observability settings: access_log, metrics, tracing, analytics. */
import { Type, type TSchema } from '@sinclair/typebox';
import { Duration, HeaderMap } from '../plugins/schema-types.js';

const Strict = <T extends Record<string, TSchema>>(props: T, description: string) =>
  Type.Object(props, { additionalProperties: false, description });
const HttpUrl = Type.String({ pattern: '^https?://' });

/** Fields an access log line can hold (default: all but query, headers and user_agent). */
export const ACCESS_FIELDS = [
  'time', 'request_id', 'client_ip', 'consumer', 'method', 'host', 'path', 'query', 'protocol', 'route', 'service',
  'upstream', 'status', 'bytes_in', 'bytes_out', 'duration_ms', 'upstream_ms', 'gateway_ms', 'retries', 'error',
  'grpc_status', 'websocket', 'user_agent', 'headers', 'trace_id',
] as const;
export type AccessField = (typeof ACCESS_FIELDS)[number];
export const DEFAULT_ACCESS_FIELDS: readonly AccessField[] = ACCESS_FIELDS.filter((f) => f !== 'query' && f !== 'headers' && f !== 'user_agent');

export const AccessLog = Strict({
  enabled: Type.Optional(Type.Boolean({ default: true })),
  destination: Type.Optional(Type.Union([Type.Literal('stdout'), Type.Literal('file'), Type.Literal('http')], { default: 'stdout' })),
  path: Type.Optional(Type.String({ minLength: 1, description: 'destination file: the log file (relative to the config file). SIGUSR1 reopens it (log rotation).' })),
  url: Type.Optional(Type.String({ pattern: '^https?://', description: 'destination http: where batches of lines are POSTed (NDJSON); a user:password in it goes as Basic credentials unless http_headers set authorization.' })),
  http_headers: Type.Optional(HeaderMap('destination http: headers of every POST (e.g. an authorization token).')),
  batch_lines: Type.Optional(Type.Integer({ minimum: 1, maximum: 100000, description: 'destination http: lines per POST (default 500).' })),
  flush_interval: Type.Optional(Duration('destination http: longest wait before a batch is sent (default 1s)')),
  fields: Type.Optional(Type.Array(Type.Union(ACCESS_FIELDS.map((f) => Type.Literal(f))), { uniqueItems: true, minItems: 1, description: 'The fields of each line, in this order (default: all but query, headers and user_agent).' })),
  redact: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { description: 'More paths to censor, e.g. headers.x-session or query.token (Authorization, cookies, API keys and known token parameters always are).' })),
}, 'One JSON line per request (default: on, stdout).');

export const Metrics = Strict({
  enabled: Type.Optional(Type.Boolean({ default: true, description: 'Prometheus /metrics on the admin listener.' })),
  buckets: Type.Optional(Type.Array(Type.Number({ exclusiveMinimum: 0 }), { minItems: 1, maxItems: 40, description: 'Latency histogram upper bounds in seconds (ascending).' })),
}, 'Prometheus metrics.');

export const Tracing = Strict({
  enabled: Type.Optional(Type.Boolean({ default: false })),
  endpoint: Type.Optional(HttpUrl),
  sample: Type.Optional(Type.Number({ minimum: 0, maximum: 1, default: 1, description: 'Share of new traces recorded (a sampled parent is followed unless trust_incoming_sampled is false).' })),
  trust_incoming_sampled: Type.Optional(Type.Boolean({ default: true, description: 'Follow the sampled flag of the client\'s traceparent. false (an edge gateway facing untrusted clients): every request is sampled at `sample`, still in the client\'s trace, so clients cannot force spans to be recorded.' })),
  service_name: Type.Optional(Type.String({ minLength: 1, default: 'turnpike' })),
  headers: Type.Optional(HeaderMap('Headers of every OTLP export request.')),
}, 'OpenTelemetry tracing (W3C trace context, OTLP/HTTP JSON export). Off by default.');

export const Analytics = Strict({
  enabled: Type.Optional(Type.Boolean({ default: true })),
  top_consumers: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000, default: 200, description: 'Consumers tracked per time slot (beyond: counted as "(other)").' })),
  publish_interval: Type.Optional(Duration('With redis: how often this node publishes its analytics for the other nodes (default 10s)')),
}, 'Per-route and per-consumer statistics over 1 min / 1 h / 24 h, on the admin API (/analytics).');

