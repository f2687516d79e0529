/** The observability part of a config, compiled: what to log where, metrics buckets, tracing, analytics. */
import type { TurnpikeConfigInput } from '../config/schema.js';
import type { PathSegment } from '../config/errors.js';
import { MAX_TIMER_MS, parseDuration } from '../config/units.js';
import { unsendableSecret } from '../core/secret-text.js';
import { DEFAULT_ACCESS_FIELDS, ACCESS_FIELDS, type AccessField } from './schema.js';
import { checkSink, type SinkSetting } from './sinks.js';
import { BUCKETS } from './metrics.js';

export interface AccessLogSettings {
  sink: SinkSetting;
  fields: readonly AccessField[];
  /** Censored: these request header names and query parameter names (both lower case, compared case-insensitively), and these fields whole. */
  redact: { headers: string[]; query: string[]; fields: string[] };
}
export interface TracingSettings {
  endpoint: string;
  sample: number;
  /** Follow the client's sampled flag (false: `sample` decides for every request). */
  trustIncomingSampled: boolean;
  serviceName: string;
  headers: Record<string, string>;
  /** Query parameters (lower case) whose values a span's url.full shows as REDACTED (the access log's list). */
  redactQuery: string[];
}
export interface ObservabilitySettings {
  accessLog: AccessLogSettings | null;
  metrics: { buckets: readonly number[] } | null;
  tracing: TracingSettings | null;
  analytics: { topConsumers: number; publishMs: number } | null;
}

/**
 * Request fields that carry credentials: always censored when headers are logged. Besides the
 * generic ones (and those the cache takes for credentials: Api-Key, X-Access-Token), the fields
 * well-known APIs read a key or token from: Azure's Api-Key and Ocp-Apim-Subscription-Key,
 * AWS's X-Amz-Security-Token, Google's X-Goog-Api-Key, GitLab's Private-Token, Vault's
 * X-Vault-Token, Cloudflare's X-Auth-Key. X-Turnpike-Refresh is the gateway's own: a
 * stale-while-revalidate refresh comes through the proxy listener with the node's internal
 * token, which lets its holder set the client address the gateway believes.
 */
const SECRET_HEADERS = ['authorization', 'proxy-authorization', 'cookie', 'set-cookie', 'x-api-key', 'apikey', 'api-key', 'x-auth-token', 'x-access-token',
  'x-csrf-token', 'x-amz-security-token', 'x-goog-api-key', 'ocp-apim-subscription-key', 'private-token', 'x-vault-token', 'x-auth-key', 'x-turnpike-refresh'];
/**
 * Query parameters that commonly carry credentials (OAuth2, signed URLs, API keys; OpenTelemetry's
 * url.full list), lower case: names are compared case-insensitively (X-Amz-Signature, APIKEY).
 */
const SECRET_PARAMS = ['access_token', 'id_token', 'refresh_token', 'code', 'client_secret', 'api_key', 'apikey', 'key', 'token', 'password', 'sig', 'signature', 'awsaccesskeyid', 'x-amz-signature', 'x-amz-credential', 'x-amz-security-token', 'x-goog-signature', 'x-goog-credential',
  // session ids of URL rewriting (servlet containers' `;jsessionid=`, PHP's trans_sid `?PHPSESSID=`)
  'jsessionid', 'phpsessid', 'sessionid', 'session_id'];


/** Every key-auth header / query name used anywhere in the config (their values are keys). */
export function keyAuthNames(cfg: TurnpikeConfigInput): { headers: string[]; params: string[] } {
  const headers: string[] = [];
  const params: string[] = [];
  const visit = (bindings: { name: string; config?: Record<string, unknown> }[] | undefined) => {
    for (const b of bindings ?? []) {
      if (b.name !== 'key-auth') continue;
      const h = b.config?.header ?? 'apikey';
      const q = b.config?.query ?? 'apikey';
      if (typeof h === 'string') headers.push(h.toLowerCase());
      if (typeof q === 'string') params.push(q.toLowerCase());
    }
  };
  visit(cfg.plugins);
  for (const s of cfg.services ?? []) {
    visit(s.plugins);
    for (const r of s.routes ?? []) visit(r.plugins);
  }
  for (const r of cfg.routes ?? []) visit(r.plugins);
  for (const c of cfg.consumers ?? []) visit(c.plugins);
  for (const p of Object.values(cfg.plans ?? {})) visit(p.plugins);
  return { headers, params };
}

export function observabilitySettings(cfg: TurnpikeConfigInput, file: (f: string) => string, fail: (path: PathSegment[], message: string) => void): ObservabilitySettings {
  let accessLog: AccessLogSettings | null = null;
  const al = cfg.access_log ?? {};
  const keys = keyAuthNames(cfg);
  const query = new Set([...SECRET_PARAMS, ...keys.params]);
  for (const p of al.redact ?? []) if (p.startsWith('query.')) query.add(p.slice(6).toLowerCase());
  if (al.enabled ?? true) {
    let sink: SinkSetting = { destination: 'stdout' };
    const dest = al.destination ?? 'stdout';
    if (dest === 'file') {
      if (al.path === undefined) fail(['access_log'], 'destination file needs a path');
      else sink = { destination: 'file', path: file(al.path) };
    } else if (dest === 'http') {
      if (al.url === undefined) fail(['access_log'], 'destination http needs a url');
      else {
        // Sent as written on every POST (an authorization token, often a ${ENV} from a Secret
        // made --from-file, with the file's last newline): undici refuses such a value at each
        // flush, and the lines were dropped. (Blanks at the ends are trimmed by the receiver.)
        for (const [name, value] of Object.entries(al.http_headers ?? {})) {
          const bad = unsendableSecret(value, 'a header value', { edges: false });
          if (bad) fail(['access_log', 'http_headers', name], bad);
        }
        // (what the sink would refuse when the gateway applies the config: judged here, where
        // validate sees it and the error names the field, before anything is swapped)
        try {
          checkSink({ destination: 'http', url: al.url });
        } catch (err) {
          fail(['access_log', 'url'], (err as Error).message.replace(/^access log: the http destination url: /, ''));
        }
        sink = {
          destination: 'http', url: al.url, headers: al.http_headers ?? {},
          ...(al.batch_lines !== undefined ? { batch_lines: al.batch_lines } : {}),
          ...(al.flush_interval !== undefined ? { interval_ms: parseDuration(al.flush_interval) } : {}),
        };
      }
    }
    const headers = new Set([...SECRET_HEADERS, ...keys.headers]);
    const whole = new Set<string>();
    (al.redact ?? []).forEach((p, i) => {
      const dot = p.indexOf('.');
      const root = dot === -1 ? p : p.slice(0, dot);
      if (!(ACCESS_FIELDS as readonly string[]).includes(root)) return fail(['access_log', 'redact', i], `unknown field "${root}" (one of ${ACCESS_FIELDS.join(', ')})`);
      if (dot === -1) whole.add(root);
      else if (root === 'headers') headers.add(p.slice(dot + 1).toLowerCase());
      else if (root === 'query') query.add(p.slice(dot + 1).toLowerCase());
      else fail(['access_log', 'redact', i], `only headers.<name> and query.<name> have parts; "${root}" is censored whole`);
    });
    accessLog = { sink, fields: al.fields ?? DEFAULT_ACCESS_FIELDS, redact: { headers: [...headers], query: [...query], fields: [...whole] } };
  }

  let metrics: ObservabilitySettings['metrics'] = null;
  if (cfg.metrics?.enabled ?? true) {
    const b = cfg.metrics?.buckets ?? BUCKETS;
    if (b.some((v, i) => i > 0 && v <= b[i - 1]!)) fail(['metrics', 'buckets'], 'bucket bounds must be ascending');
    metrics = { buckets: b };
  }

  let tracing: TracingSettings | null = null;
  const t = cfg.tracing;
  if (t?.enabled) {
    for (const [name, value] of Object.entries(t.headers ?? {})) {
      const bad = unsendableSecret(value, 'a header value', { edges: false });
      if (bad) fail(['tracing', 'headers', name], bad);
    }
    // The OTLP exporter refuses an endpoint URL cannot parse (a space, a port past 65535) when
    // the tracer is built — at start as an error on access_log, on reload after the access log
    // was already swapped: judged here, naming the field.
    if (t.endpoint !== undefined && !URL.canParse(t.endpoint)) fail(['tracing', 'endpoint'], `not a valid URL: ${JSON.stringify(t.endpoint)}`);
    tracing = { endpoint: t.endpoint ?? 'http://127.0.0.1:4318/v1/traces', sample: t.sample ?? 1, trustIncomingSampled: t.trust_incoming_sampled ?? true, serviceName: t.service_name ?? 'turnpike', headers: t.headers ?? {}, redactQuery: [...query] };
  }
  const a = cfg.analytics;
  // Both run timers: past 2^31-1 ms setTimeout fires after 1 ms — analytics were published to
  // Redis in a loop (each node, as fast as Redis answered), and every access-log line went alone.
  const tooLong = 'must be at most 24d (2147483647 ms, the longest timer)';
  if (a?.publish_interval !== undefined && parseDuration(a.publish_interval) > MAX_TIMER_MS) fail(['analytics', 'publish_interval'], tooLong);
  if (al.flush_interval !== undefined && parseDuration(al.flush_interval) > MAX_TIMER_MS) fail(['access_log', 'flush_interval'], tooLong);
  const analytics = (a?.enabled ?? true) ? { topConsumers: a?.top_consumers ?? 200, publishMs: Math.max(100, parseDuration(a?.publish_interval ?? '10s')) } : null;
  return { accessLog, metrics, tracing, analytics };
}
