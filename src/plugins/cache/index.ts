/**
 * cache: HTTP response caching per RFC 9111, a shared cache by default.
 *
 * access: a GET/HEAD finds the entry of its key (host + path, then service, query and the
 * configured key parts, then Vary) and is answered from it when fresh (HIT; a 304 when the
 * client's validators match), or stale within what the client or the RFC 5861 windows allow
 * (STALE). Otherwise it goes upstream: a stale entry with a validator is revalidated with
 * If-None-Match / If-Modified-Since (the client's own are kept for the gateway to answer). With
 * `collapse`, the first miss of a key leads and concurrent ones wait for its response.
 * responseHeaders / bufferResponse: an upstream response that may be stored (or a 304 that
 * refreshes, or an error a stale entry may stand in for) is held whole, up to max_body.
 * response: stores it; a 304 of a revalidation refreshes the stored fields (§4.3.4) and the
 * client gets the stored response (REVALIDATED); a 5xx or the gateway's 502/504 is replaced by a
 * stale entry when stale-if-error allows (STALE). Unsafe methods invalidate their URI (§4.4).
 *
 * Priority 890: after auth and limits in the access phase (before request-validator: a hit was
 * validated when it was stored); in the response phases (ascending) after response-transform
 * and request-validator's response check, so what is stored is what the client got.
 */
import { REFRESH_HEADER } from './refresh.js';
import { headerRecord as record, isTls } from '../../core/headers.js';
import { createHash, randomBytes } from 'node:crypto';
import { definePlugin, type BufferedResponse, type Reply, type RequestCtx } from '../types.js';
import { parseDuration, parseSize } from '../../config/units.js';
import { RedisStore } from '../../state/redis.js';
import { CacheConfig } from './schema.js';
import * as P from './policy.js';
import { digest, type Bucket, type CacheStore, type Entry, type EntryHead } from './entry.js';
import { CacheStores, type Flight, type FlightOutcome } from './stores.js';
import { paramName, withoutQueryParam } from '../../core/query.js';
import { plainIp } from '../../core/forwarded.js';
import { monotonic } from '../../state/memory.js';
import { TRANSFORM_INPUTS } from '../transform-common.js';

const VAR = 'cache';
const SAFE = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);
/** Upstream statuses that count as errors for stale-if-error (RFC 5861 §4). */
const ERRORS = new Set([500, 502, 503, 504]);
/** Never stored: framing, hop-by-hop and the gateway's per-request fields. */
const NOT_STORED = ['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'x-request-id'];
const EMPTY = Buffer.alloc(0);
const DEFAULT_TTL = '30s';
const DEFAULT_MAX_BODY = '1mb';
const DEFAULT_MAX_SIZE = '64mb';
const DEFAULT_KEEP = '1h';
const DEFAULT_COLLAPSE_TIMEOUT = '30s';

type Label = 'HIT' | 'MISS' | 'STALE' | 'REVALIDATED' | 'BYPASS';

/** What one request's phases tell each other (ctx.vars.cache). */
interface State {
  kind: 'bypass' | 'invalidate' | 'fetch' | 'served';
  bucket: Bucket;
  /** Digest of the key past host and path (scheme, service, query, consumer, key parts). */
  sub: string;
  /** The query part of the key (credential parameters left out). */
  q: string;
  /**
   * The request fields going upstream when the cache looked (after authentication and the
   * plugins before it): Vary is about what the upstream saw (X-Consumer-Name set by an auth
   * plugin, not the client's), and lookups and stores read the same view.
   */
  up: readonly string[];
  /** Flight key: zone, bucket and sub. */
  fk: string;
  rd: P.RequestDirectives | null;
  /** The response may be stored (a GET without request no-store). */
  store: boolean;
  authorization: boolean;
  /**
   * Credentials the upstream gets that no auth plugin vouched for (no auth plugin, or the
   * anonymous consumer): names of fields (a query parameter as '?NAME'), or null.
   */
  credential: string[] | null;
  /** The request carried cookies the key does not include (see P.refusal). */
  cookie: boolean;
  /** The client asked for revalidation (no-cache, max-age): a stale entry must not stand in for an error. */
  forced: boolean;
  /** When the request went upstream (on the zone's clock). */
  requestTime: number;
  /** When the request went upstream, on this process's monotonic clock (invalidations are on it). */
  sentAt: number;
  /** A stored entry that is stale: stands in for an error when stale-if-error allows. */
  stale: Entry | null;
  /** The bucket's invalidation generation when the cache looked (shared stores; undefined: not read). */
  gen?: string;
  /** The entry whose validators went upstream. */
  validating: Entry | null;
  /**
   * What bufferResponse made of the upstream's answer, as it came (before response-transform or
   * any plugin changed its status): held to be stored, held as an error a stale entry may stand
   * in for, held as the 304 of a revalidation, or not held for the cache (null).
   */
  held: 'store' | 'error' | '304' | null;
  /** The flight this request leads (collapsing). */
  flight: Flight | null;
  /** The gateway's own background refresh of a stale entry (stale-while-revalidate). */
  refresh: boolean;
}

/** Caches for a compile without a gateway (validate, unit tests). */
let fallback: CacheStores | null = null;
const fallbackCaches = () => (fallback ??= new CacheStores());

type KeyPart = { kind: 'consumer' } | { kind: 'header' | 'cookie'; name: string };

function cookie(header: string | undefined, name: string): string | null {
  if (header === undefined) return null;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return null;
}

/** Whether the Cookie field holds a cookie the key does not name (it may make the answer personal). */
function unkeyedCookie(header: string, keyed: ReadonlySet<string>): boolean {
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    const name = (eq === -1 ? part : part.slice(0, eq)).trim();
    if (name !== '' && !keyed.has(name)) return true;
  }
  return false;
}

/**
 * Whether a cookie is named more than once in the Cookie field (`lang=en; lang=evil`): the key
 * reads the first, an upstream may read the last (Python's http.cookies, Go's last lookup...).
 */
function cookieRepeated(header: string | undefined, name: string): boolean {
  if (header === undefined) return false;
  let n = 0;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name && ++n > 1) return true;
  }
  return false;
}

/**
 * The query with only the named parameters, in a stable order ('' when none is there). A part
 * that names one behind a ';' (`utm=x;lang=evil`: a separator to Rack, Python before 3.9.2 and
 * others) is kept whole: a parameter the upstream may read is never left out of the key
 * (parameter cloaking).
 */
function selectQuery(query: string, names: ReadonlySet<string>): string {
  if (query.length <= 1) return '';
  const kept: [string, number, string][] = [];
  query.slice(1).split('&').forEach((part, i) => {
    let name = paramName(part);
    if (!names.has(name) && part.includes(';')) {
      const cloaked = part.split(';').slice(1).map(paramName).find((n) => names.has(n));
      if (cloaked !== undefined) name = cloaked;
    }
    if (names.has(name)) kept.push([name, i, part]);
  });
  kept.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]));
  return kept.length ? `?${kept.map((k) => k[2]).join('&')}` : '';
}

/**
 * A request field by any name (Vary names come from upstreams): a string or undefined, never
 * what the header object inherits (`constructor`, `__proto__`...).
 */
function field(ctx: RequestCtx, name: string): string | undefined {
  const v: unknown = ctx.header(name);
  return typeof v === 'string' ? v : undefined;
}

/**
 * Whether a request field came more than once. Node keeps only the first User-Agent,
 * Authorization, Host...: a key (or Vary) built from it could differ from what the upstream
 * (reading the last) answered to, and a store would poison the entry for everyone. Not Cookie:
 * Node joins its fields (HTTP/2 crumbs, RFC 9113 §8.2.3, as browsers send them), so the key and
 * Vary see every one; a key cookie named twice is cookieRepeated's.
 */
function repeated(ctx: RequestCtx, name: string): boolean {
  if (name === 'cookie') return false;
  const raw = ctx.req.rawHeaders;
  let n = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === name.length && raw[i]!.toLowerCase() === name && ++n > 1) return true;
  return false;
}

/**
 * Whoever an auth plugin let in, as a cache key holds them: a consumer (c:), or a caller an
 * identity provider named without one (i:, a token's claim or a certificate's CN). Two callers
 * even under one name: a token whose sub is "alice" (any IdP user or client could be called
 * that) is not the consumer alice, whose own keys let her in, and gets none of her answers.
 */
const callerOf = (ctx: RequestCtx): string | null => (ctx.consumer !== null ? `c:${ctx.consumer.name}` : ctx.identity !== null ? `i:${ctx.identity}` : null);

/**
 * What a transform read of the request ('\0h:NAME' a field, '\0q:NAME' a query parameter's
 * every occurrence, '\0consumer', '\0ip'): the upstream request or the stored answer was made
 * from it beside the key, and the entry is matched on it as on a Vary'd field.
 */
function transformInput(ctx: RequestCtx, name: string): string | undefined {
  if (name.startsWith('\0h:')) return field(ctx, name.slice(3));
  if (name.startsWith('\0q:')) {
    const n = name.slice(3);
    const q = ctx.query.length > 1 ? ctx.query.slice(1).split(/[&;]/).filter((p) => paramName(p) === n) : [];
    return q.length === 0 ? undefined : q.join('&');
  }
  if (name === '\0consumer') return ctx.consumer?.name ?? ctx.identity ?? undefined;
  if (name === '\0ip') return ctx.clientIp;
  return undefined;
}

/** A Vary'd field's value as stored and compared: a digest of its normalized value (null: absent). */
const varyValue = (v: string | undefined): string | null => (v === undefined ? null : digest(P.normalizeForVary(v)!));

/** A field of a flat list (name, value, ...; names compared case-insensitively), joined when repeated. */
function listField(list: readonly string[], name: string): string | undefined {
  let v: string | undefined;
  for (let i = 0; i < list.length; i += 2) {
    if (list[i]!.length === name.length && list[i]!.toLowerCase() === name) v = v === undefined ? list[i + 1]! : `${v}, ${list[i + 1]!}`;
  }
  return v;
}

/**
 * The origin a Forwarded field (RFC 7239) tells the upstream the client used: the proto and host
 * parameters of its first element ('' when none). `for=` is left out (it is per client).
 */
function forwardedOrigin(v: string | undefined): string {
  if (v === undefined) return '';
  let proto = '', host = '';
  for (const part of v.split(',', 1)[0]!.split(';')) {
    const eq = part.indexOf('=');
    const k = eq === -1 ? '' : part.slice(0, eq).trim().toLowerCase();
    const val = eq === -1 ? '' : part.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1');
    if (k === 'proto') proto = val.toLowerCase();
    else if (k === 'host') host = val;
  }
  return `${proto};${hostKey(host, proto)}`;
}

const hostKey = P.hostKey;

/**
 * URL, scheme and host fields some frameworks take for the request's own, which a trusted proxy
 * passes on (Tornado reads X-Scheme; X-Forwarded-Protocol, X-Host, X-Original-Host and
 * X-HTTP-Host-Override have their readers too; Symfony and IIS serve X-Original-URL /
 * X-Rewrite-URL's path instead of the request's; Spring builds links from X-Forwarded-Prefix;
 * Rack reads X-Forwarded-Scheme / -Ssl, Front-End-Https, X-Url-Scheme): they are part of the key
 * when present.
 */
const ORIGIN_FIELDS = new Set([
  'x-scheme', 'x-forwarded-protocol', 'x-host', 'x-original-host', 'x-http-host-override',
  'x-original-url', 'x-rewrite-url', 'x-original-uri', 'x-forwarded-uri', 'x-forwarded-path', 'x-forwarded-prefix',
  'x-forwarded-scheme', 'x-forwarded-ssl', 'front-end-https', 'x-url-scheme', 'x-forwarded-server',
]);

/**
 * Request fields upstreams commonly authenticate callers by, besides Authorization (whose rules
 * are RFC 9111 §3.5's): what an upstream answers to one of them may be that caller's alone.
 */
const CREDENTIAL_FIELDS = new Set(['x-api-key', 'api-key', 'apikey', 'x-auth-token', 'x-access-token']);
/** Query parameters that commonly carry an API key or token (a `query:NAME` key leaving them out would share what they got). */
const CREDENTIAL_PARAMS = new Set(['apikey', 'api_key', 'api-key', 'access_token', 'token', 'key']);

/** Fields that make frameworks run another method than the request's (a GET answered as a DELETE would be stored as the GET's). */
const METHOD_OVERRIDES = ['x-http-method-override', 'x-http-method', 'x-method-override'];

/** Whether the request has a body (a "fat GET" may render differently: never stored). */
function hasBody(ctx: RequestCtx): boolean {
  const cl = ctx.header('content-length');
  if (ctx.header('transfer-encoding') !== undefined || (cl !== undefined && cl !== '0')) return true;
  // HTTP/2: a body needs no length field — HEADERS without END_STREAM, then DATA
  const stream = (ctx.req as { stream?: { endAfterHeaders?: boolean } }).stream;
  return cl === undefined && stream !== undefined && stream.endAfterHeaders === false;
}

/** Sets a field in a flat list (replacing earlier values). */
function setField(list: string[], name: string, value: string): void {
  P.dropFields(list, new Set([name]));
  list.push(name, value);
}

export default definePlugin({
  name: 'cache',
  priority: 890,
  description: 'HTTP response caching (RFC 9111): freshness, Age, Vary, revalidation, stale-while-revalidate / stale-if-error (RFC 5861), request collapsing, invalidation; in memory or Redis.',
  schema: CacheConfig,
  scopes: ['global', 'service', 'route', 'consumer'],
  check(config, deps) {
    const out: string[] = [];
    if (config.backend === 'redis' && !(deps.counters.redis instanceof RedisStore)) out.push('backend redis needs the top-level redis setting');
    const maxBody = parseSize(config.max_body ?? DEFAULT_MAX_BODY);
    if (config.backend !== 'redis' && maxBody > parseSize(config.max_size ?? DEFAULT_MAX_SIZE)) out.push('max_body is larger than max_size');
    if (config.max_ttl !== undefined && parseDuration(config.max_ttl) < 1) out.push('max_ttl must be at least 1ms');
    return out;
  },
  create(config, deps) {
    const caches = deps.caches ?? fallbackCaches();
    const flights = caches.flights;
    const o: P.PolicyOptions = {
      shared: config.shared ?? true,
      heuristicMs: parseDuration(config.ttl ?? DEFAULT_TTL),
      maxTtlMs: config.max_ttl !== undefined ? parseDuration(config.max_ttl) : Infinity,
      statuses: new Set(config.statuses ?? P.HEURISTIC_STATUSES),
      cacheAuthorized: config.cache_authorized ?? false,
      cacheSetCookie: config.cache_set_cookie ?? false,
      staleWhileRevalidateMs: parseDuration(config.stale_while_revalidate ?? 0),
      staleIfErrorMs: parseDuration(config.stale_if_error ?? 0),
      keepMs: parseDuration(config.keep ?? DEFAULT_KEEP),
    };
    const methods = new Set<string>(config.methods ?? ['GET', 'HEAD']);
    const maxBody = parseSize(config.max_body ?? DEFAULT_MAX_BODY);
    const collapse = config.collapse ?? true;
    const collapseMs = parseDuration(config.collapse_timeout ?? DEFAULT_COLLAPSE_TIMEOUT);
    const honour = config.request_directives ?? true;
    const label = (config.status_header ?? 'x-cache-status').toLowerCase();
    const keySpec = config.key ?? [];
    const perConsumer = config.per_consumer ?? true;
    const parts: KeyPart[] = [];
    const queryNames = new Set<string>();
    for (const k of keySpec) {
      if (k === 'consumer') parts.push({ kind: 'consumer' });
      else if (k.startsWith('header:')) parts.push({ kind: 'header', name: k.slice(7).toLowerCase() });
      else if (k.startsWith('cookie:')) parts.push({ kind: 'cookie', name: k.slice(7) });
      else if (k.startsWith('query:')) queryNames.add(k.slice(6));
    }
    // A binding's zone: where it is bound and what decides which responses it holds and how
    // they are keyed. The same binding after a reload finds its entries again.
    const backend = config.backend ?? 'memory';
    const zone = createHash('sha256')
      .update(JSON.stringify([deps.where, backend, o.shared, o.cacheAuthorized, o.cacheSetCookie, keySpec, perConsumer]))
      .digest('base64url').slice(0, 12);
    const redis = backend === 'redis' ? deps.counters.redis as RedisStore : null;
    // Time stored (resident time, §4.2.3) is counted on a monotonic clock: a step of the wall
    // clock (NTP, a VM restored from a snapshot) neither ages nor rejuvenates what a memory zone
    // holds (Date is still compared with the wall clock). A Redis zone's entries are read by other
    // nodes, whose monotonic clocks are not this one: the wall clock they share.
    const clock = redis !== null ? Date.now : monotonic;
    const store: CacheStore = redis !== null ? caches.acquireRedis(redis, zone) : caches.acquireMemory(zone, parseSize(config.max_size ?? DEFAULT_MAX_SIZE));
    const notStored = new Set([...NOT_STORED, ...(label ? [label] : [])]);

    const labelled = (l: Label): string[] => (label ? [label, l] : []);
    const keyedByCookie = parts.some((p) => p.kind === 'cookie');
    const keyCookies = new Set(parts.flatMap((p) => (p.kind === 'cookie' ? [p.name] : [])));
    // (a credential field named as a key part, header:x-api-key, keeps its callers apart)
    const headerKeyed = new Set(parts.flatMap((p) => (p.kind === 'header' ? [p.name] : [])));
    // (a key field given twice, or a key cookie named twice: what the key reads may not be what the upstream answers to)
    const keyRepeated = (ctx: RequestCtx) => parts.some((p) => p.kind === 'header' && repeated(ctx, p.name))
      || (keyedByCookie && parts.some((p) => p.kind === 'cookie' && cookieRepeated(ctx.header('cookie'), p.name)));
    // The host without the scheme's default port: `example.com:80` and `example.com` are one URI
    // (RFC 9110 §4.2.3), stored and invalidated together.
    const bucketOf = (ctx: RequestCtx, path = ctx.path): Bucket => ({ host: hostKey(ctx.host, isTls(ctx.req) ? 'https' : 'http'), path });
    /**
     * A Vary'd field as the upstream got it (Host: the request's); a name starting with NUL is
     * what a transform read (see transformInputs), as the transform reads it.
     */
    const varied = (ctx: RequestCtx, st: State, name: string): string | undefined => (name === 'host' ? ctx.host : name.charCodeAt(0) === 0 ? transformInput(ctx, name) : listField(st.up, name));
    const matcher = (ctx: RequestCtx, st: State) => (h: EntryHead) => {
      for (let i = 0; i < h.vary.length; i++) if (varyValue(varied(ctx, st, h.vary[i]!)) !== h.varyValues[i]) return false;
      return true;
    };

    const state = (ctx: RequestCtx, kind: State['kind']): State => {
      // A credential in the query (key-auth's apikey) is left out: the consumer it names is in
      // the key, and nothing stored carries it.
      const query = ctx.credentialParam === null ? ctx.query : withoutQueryParam(ctx.query, ctx.credentialParam);
      const q = queryNames.size ? selectQuery(query, queryNames) : query;
      // The scheme is part of the target URI (RFC 9111 §2): an http answer (a redirect to
      // https, say) never serves an https request.
      let sub = `${isTls(ctx.req) ? 'https' : 'http'}\n${ctx.service.name}\n${q}`;
      // The route: routes of one path told apart by method or header matches may transform or
      // answer differently.
      sub += `\nroute=${ctx.route.counterId ?? ctx.route.name}`;
      // The scheme, host and port the upstream is told the client used (a trusted TLS
      // terminator's X-Forwarded-Proto: https): its redirects and absolute links depend on them,
      // and an http answer (a redirect to https) must never serve the https clients.
      const up = ctx.upstreamHeaderList();
      // (whole values: an upstream may read the first or the last of a list; a lone host without
      // its scheme's default port)
      const xfProto = listField(up, 'x-forwarded-proto')?.toLowerCase();
      const xfHost = listField(up, 'x-forwarded-host');
      const xfPort = listField(up, 'x-forwarded-port');
      const fwd = forwardedOrigin(listField(up, 'forwarded'));
      if (xfProto !== undefined || xfHost !== undefined || xfPort !== undefined || fwd !== '') {
        sub += `\nfw=${xfProto ?? ''}\n${xfHost === undefined ? '' : hostKey(xfHost, xfProto ?? (isTls(ctx.req) ? 'https' : 'http'))}\n${xfPort ?? ''}\n${fwd}`;
      }
      // Other scheme and host fields frameworks trust (Tornado's X-Scheme...) that the gateway
      // passes on as the client sent them: an upstream's redirect or links built from them are
      // that client's alone.
      // (names as the client spelt them: X-Host as much as x-host)
      for (let i = 0; i < up.length; i += 2) {
        const n = up[i]!;
        const c = n.charCodeAt(0) | 0x20;
        if (n.length >= 6 && (c === 0x78 /* x */ || c === 0x66 /* f */) && ORIGIN_FIELDS.has(n.toLowerCase())) sub += `\n${n.toLowerCase()}=${up[i + 1]!}`;
      }
      // Whoever an auth plugin let in gets entries of their own (API keys, JWTs... are not
      // Authorization fields the RFC rules would see).
      const who = callerOf(ctx);
      if (perConsumer && who !== null) sub += `\nid=${who}`;
      const authorization = ctx.header('authorization');
      // cache_authorized keeps such answers per caller: without an auth plugin naming one, the
      // caller is the Authorization value itself.
      if (o.cacheAuthorized && authorization !== undefined && (who === null || !perConsumer)) {
        sub += `\nauth=${authorization}`;
      }
      // An API key or token the upstream gets (X-API-Key, key-auth's header or parameter left on
      // with hide_credentials: false) that no auth plugin vouched for: the upstream may answer
      // that caller alone, and nothing in the key tells callers apart (P.refusal; with
      // cache_authorized the values are in the key).
      let credential: string[] | null = null;
      if (who === null || ctx.anonymous) {
        const ch = ctx.credentialHeader;
        for (let i = 0; i < up.length; i += 2) {
          const raw = up[i]!;
          // (lower-cased only at a length one of them has: no string made per field)
          if ((raw.length < 6 || raw.length > 14) && raw.length !== ch?.length) continue;
          const n = raw.toLowerCase();
          if ((CREDENTIAL_FIELDS.has(n) || n === ch) && !headerKeyed.has(n)) {
            (credential ??= []).push(n);
            if (o.cacheAuthorized) sub += `\ncred=${n}=${up[i + 1]!}`;
          }
        }
        const param = ctx.credentialParam;
        if (param !== null && withoutQueryParam(ctx.upstreamQuery, param) !== ctx.upstreamQuery) {
          (credential ??= []).push(`?${param}`);
          if (o.cacheAuthorized) sub += `\ncred=?${ctx.upstreamQuery}`;
        } else if (queryNames.size && ctx.upstreamQuery.length > 1) {
          // (a query:NAME key leaves the other parameters out: an api_key among them is not in it)
          for (const part of ctx.upstreamQuery.slice(1).split(/[&;]/)) {
            const n = paramName(part).toLowerCase();
            if (CREDENTIAL_PARAMS.has(n) && !queryNames.has(n)) {
              (credential ??= []).push(`?${n}`);
              if (o.cacheAuthorized) sub += `\ncred=?${part}`;
            }
          }
        }
      }
      // Key fields as the upstream gets them: one the client named in Connection (hop-by-hop)
      // never reaches it, and the answer to its absence must not be stored under its value.
      const upCookie = keyedByCookie && listField(up, 'cookie') !== undefined ? ctx.header('cookie') : undefined;
      for (const p of parts) {
        const v = p.kind === 'consumer' ? who : p.kind === 'header' ? listField(up, p.name) : cookie(upCookie, p.name);
        sub += `\n${v === null || v === undefined ? '\u0000' : `=${v}`}`;
      }
      // What is kept of it is a digest: key parts (header:, cookie:) and whatever else it holds
      // are never stored in clear.
      sub = digest(sub);
      const bucket = bucketOf(ctx);
      const rd = honour ? P.requestDirectives(ctx.header('cache-control'), ctx.header('pragma')) : null;
      const cookieHeader = ctx.header('cookie');
      return {
        kind, bucket, sub, q, up, fk: `${zone}\n${bucket.host}\n${bucket.path}\n${sub}`, rd,
        store: ctx.method === 'GET' && !(rd?.noStore ?? false),
        authorization: authorization !== undefined,
        credential,
        // (a key of cookie:lang covers lang, not the session cookie beside it)
        cookie: cookieHeader !== undefined && (!keyedByCookie || unkeyedCookie(cookieHeader, keyCookies)),
        // (unless it says it takes a stale answer on an error all the same: stale-if-error)
        forced: rd !== null && (rd.noCache || rd.maxAge != null) && rd.staleIfError === null,
        requestTime: 0, sentAt: 0, stale: null, validating: null, held: null, flight: null,
        refresh: caches.refresher.valid(ctx.header(REFRESH_HEADER)),
      };
    };

    const settle = (st: State, outcome: FlightOutcome, pass = false) => {
      if (st.flight === null) return;
      flights.settle(st.flight, outcome, pass);
      st.flight = null;
    };

    const put = (st: State, e: Entry, now: number) => {
      // (a write to this path while the response was on its way: it may be older than the write;
      // through another node: the shared store compares the generation the lookup saw)
      if (caches.invalidatedSince(st.bucket, st.sentAt)) return;
      const r = store.put(st.bucket, e, now, st.gen);
      if (r instanceof Promise) r.catch((err: Error) => caches.fail(err, 'write'));
    };

    /**
     * The response's own fields (names lower-case), as the response phases before this one left
     * them: no framing, no gateway fields, none of what plugins add per request.
     */
    const upstreamCopy = (ctx: RequestCtx, headers: readonly string[]): string[] => {
      // Fields plugins added for this client only (rate-limit state, CORS...) ride on the list too.
      // Those exact fields are left out, not every field of their names: cors's `vary: Origin`
      // must not take the upstream's own Vary with it (hits then ignored Accept-Language, Cookie).
      const extra = ctx.responseHeaders;
      const added = new Map<string, number>();
      for (let i = 0; i < extra.length; i += 2) {
        const k = `${extra[i]!.toLowerCase()}\0${extra[i + 1]!}`;
        added.set(k, (added.get(k) ?? 0) + 1);
      }
      const out: string[] = [];
      for (let i = 0; i < headers.length; i += 2) {
        const n = headers[i]!.toLowerCase();
        if (notStored.has(n)) continue;
        const k = `${n}\0${headers[i + 1]!}`;
        const left = added.get(k);
        if (left !== undefined && left > 0) {
          added.set(k, left - 1);
          continue;
        }
        out.push(n, headers[i + 1]!);
      }
      return out;
    };

    /** An entry for a storable response, or null when it would never be of use. */
    const makeEntry = (ctx: RequestCtx, st: State, status: number, headers: readonly string[], body: Buffer, now: number, wall: number): Entry | null => {
      if (body.length > maxBody) return null;
      const f = P.freshness(headers, st.requestTime, now, o, wall);
      if (!P.worthStoring(f)) return null;
      const vary = P.varyNames(headers);
      if (!Array.isArray(vary)) return null;
      // An encoded answer whose upstream negotiated the coding without saying Vary (a common
      // misconfiguration) is matched on the Accept-Encoding it answered, as if it had: else one
      // request accepting only zstd or br would have every client handed a body it cannot decode.
      const ce = P.fieldValue(headers, 'content-encoding');
      if (ce !== undefined && ce.trim().toLowerCase() !== 'identity' && !vary.includes('accept-encoding')) vary.push('accept-encoding');
      for (const n of vary) if (repeated(ctx, n)) return null;
      // What request-transform made the upstream request from, or response-transform the
      // answer from, beside the key ({header.x}, {client_ip}...): matched as Vary is; what is
      // different on every request ({request_id}) is never stored.
      const inputs = ctx.vars[TRANSFORM_INPUTS] as readonly string[] | undefined;
      if (inputs !== undefined) {
        for (const i of inputs) {
          if (i === 'unique' || (i.startsWith('h:') && repeated(ctx, i.slice(2)))) return null;
          if (!vary.includes(`\0${i}`)) vary.push(`\0${i}`);
        }
      }
      const stored = storedFields(headers);
      // (an answer without Date is dated when it arrived, RFC 9110 §6.6.1: a hit says when it
      // was made, as its Age does, not when it is served)
      if (!P.hasField(stored, 'date')) stored.push('date', P.httpDate(wall));
      return {
        id: randomBytes(9).toString('base64url'), sub: st.sub, q: digest(st.q), vary,
        varyValues: vary.map((n) => varyValue(varied(ctx, st, n))), t: now,
        status, headers: stored, body: Buffer.from(body), f, until: P.keepUntil(f, o.keepMs),
      };
    };

    /** What is stored of a response's fields: Age is recomputed on use; cookies and fields the response keeps from caches are left out. */
    const storedFields = (headers: readonly string[]): string[] => {
      const cc = P.parseCacheControl(P.fieldValue(headers, 'cache-control'));
      // (Set-Cookie is this client's alone: never stored, cache_set_cookie or not)
      const drop = new Set(['age', 'set-cookie', ...P.listedFields(cc.get('no-cache')), ...(o.shared ? P.listedFields(cc.get('private')) : [])]);
      const out: string[] = [];
      for (let i = 0; i < headers.length; i += 2) if (!drop.has(headers[i]!)) out.push(headers[i]!, headers[i + 1]!);
      return out;
    };

    /** A stored response as the reply to a request (a 304 when the client's validators match it). */
    const serve = (ctx: RequestCtx, st: State, e: Entry, l: Label, now: number): Reply => {
      st.kind = 'served';
      const tail = ['age', P.ageHeader(e.f, now), ...labelled(l)];
      if (P.notModified(e.status, e.f, ctx.header('if-none-match'), ctx.header('if-modified-since'))) {
        return { status: 304, headers: record([...P.notModifiedHeaders(e.headers), ...tail]) };
      }
      // (a HEAD gets the Content-Length the GET would: the stored body's)
      if (ctx.method === 'HEAD' && e.status !== 204) tail.push('content-length', String(e.body.length));
      return { status: e.status, headers: record([...e.headers, ...tail]), body: e.body };
    };

    /** Replaces a whole response with a stored one, keeping the gateway's fields for this client (request id, rate-limit state...). */
    const substitute = (ctx: RequestCtx, r: BufferedResponse, e: Entry, l: Label, now: number) => {
      const replaced = new Set<string>(['content-length', 'age', ...(label ? [label] : [])]);
      const own = upstreamCopy(ctx, r.headers);
      // (this response's Set-Cookie is for this client: it stays)
      for (let i = 0; i < own.length; i += 2) if (own[i] !== 'set-cookie') replaced.add(own[i]!);
      const kept: string[] = [];
      for (let i = 0; i < r.headers.length; i += 2) if (!replaced.has(r.headers[i]!.toLowerCase())) kept.push(r.headers[i]!, r.headers[i + 1]!);
      const tail = [...kept, 'age', P.ageHeader(e.f, now), ...labelled(l)];
      delete r.error;
      r.origin = 'upstream';
      if (P.notModified(e.status, e.f, ctx.header('if-none-match'), ctx.header('if-modified-since'))) {
        r.status = 304;
        r.headers = [...P.notModifiedHeaders(e.headers), ...tail];
        r.body = EMPTY;
      } else {
        r.status = e.status;
        r.headers = [...e.headers, ...tail];
        r.body = e.body;
        // (a HEAD keeps the Content-Length it has: the stored body's)
        if (ctx.method === 'HEAD' && e.status !== 204) r.headers.push('content-length', String(e.body.length));
      }
    };

    /** Goes upstream: as a revalidation of `e` when it has validators, leading a flight when asked. */
    const fetch = (ctx: RequestCtx, st: State, e: Entry | null, lead: boolean): undefined => {
      st.kind = 'fetch';
      st.sentAt = monotonic();
      st.requestTime = clock === monotonic ? st.sentAt : clock();
      if (lead) st.flight = flights.lead(st.fk, collapseMs);
      if (st.store) {
        // A full response is wanted (to store); the client's validators are answered here.
        ctx.removeUpstreamHeader('if-none-match');
        ctx.removeUpstreamHeader('if-modified-since');
        if (e !== null && P.hasValidator(e.f)) {
          st.validating = e;
          if (e.f.etag !== null) ctx.setUpstreamHeader('if-none-match', e.f.etag);
          if (e.f.lastModified !== null) ctx.setUpstreamHeader('if-modified-since', e.f.lastModified);
        }
      }
      return undefined;
    };

    /** Waits for the request leading this key; uses its response when it fits, else goes upstream alone. */
    const wait = (ctx: RequestCtx, st: State, flight: Flight): Promise<Reply | undefined> => flight.done.then((out) => {
      const now = clock();
      if (out !== null && 'entry' in out && out.entry.sub === st.sub && matcher(ctx, st)(out.entry)) {
        const use = P.usable(out.entry.f, st.rd, now);
        if (use === 'fresh' || use === 'stale') return serve(ctx, st, out.entry, 'HIT', now);
      }
      if (out !== null && 'error' in out && st.stale !== null && !st.forced && P.usableOnError(st.stale.f, now, st.rd)) return serve(ctx, st, st.stale, 'STALE', now);
      return fetch(ctx, st, st.stale, false);
    });

    const decide = (ctx: RequestCtx, st: State, e: Entry | null): Reply | undefined | Promise<Reply | undefined> => {
      const now = clock();
      const rd = st.rd;
      // The gateway's background refresh: always upstream (revalidating), never collapsed.
      if (st.refresh && st.store) return fetch(ctx, st, e, false);
      if (e !== null) {
        const use = P.usable(e.f, rd, now);
        if (use === 'fresh') return serve(ctx, st, e, 'HIT', now);
        if (use === 'stale') return serve(ctx, st, e, 'STALE', now);
        st.stale = e;
        if (use === 'stale-while-revalidate') {
          if (!st.store || rd?.onlyIfCached || flights.get(st.fk) !== undefined) return serve(ctx, st, e, 'STALE', now);
          // The client gets the stale entry now; the gateway revalidates it in the background
          // (one refresh per key at a time). Without a plain listener to send it to, this
          // request revalidates and the others get the stale entry meanwhile.
          const r = caches.refresher;
          // (a request without Host, HTTP/1.0's, has none the refresh could send: an empty Host is a 400)
          if (r.available && !isTls(ctx.req) && ctx.host !== '') {
            r.start(st.fk, ctx.path + ctx.query, ctx.host, ctx.req.rawHeaders, plainIp(ctx.req.socket.remoteAddress), (err) => caches.fail(err, 'refresh'));
            return serve(ctx, st, e, 'STALE', now);
          }
          return fetch(ctx, st, e, true);
        }
      }
      if (rd?.onlyIfCached) {
        st.kind = 'served';
        return { code: 'gateway-timeout', detail: 'only-if-cached: no stored response can answer this request', headers: record(labelled('MISS')) };
      }
      const flight = collapse && !rd?.noCache ? flights.get(st.fk) : undefined;
      if (flight !== undefined) return wait(ctx, st, flight);
      return fetch(ctx, st, e, collapse && st.store && !flights.passing(st.fk));
    };

    /**
     * A GET with one byte range (RFC 9110 §14): a fresh stored 200 answers it with a 206 of that
     * range (a 304 when the client's validators match; the whole 200 when If-Range names another
     * version); anything else goes to the origin as it came, and is not stored.
     */
    const ranged = (ctx: RequestCtx, st: State, e: Entry | null, range: string): Reply | undefined => {
      const now = clock();
      const use = e !== null && e.status === 200 ? P.usable(e.f, st.rd, now) : null;
      if (e !== null && (use === 'fresh' || use === 'stale')) {
        const l: Label = use === 'fresh' ? 'HIT' : 'STALE';
        const span = P.singleRange(range, e.body.length);
        if (span !== null && !P.notModified(e.status, e.f, ctx.header('if-none-match'), ctx.header('if-modified-since')) && P.ifRangeHolds(ctx.header('if-range'), e.f)) {
          st.kind = 'served';
          const headers = [...e.headers, 'content-range', `bytes ${span[0]}-${span[1]}/${e.body.length}`, 'age', P.ageHeader(e.f, now), ...labelled(l)];
          return { status: 206, headers: record(headers), body: e.body.subarray(span[0], span[1] + 1) };
        }
        if (span !== null) return serve(ctx, st, e, l, now);
      }
      if (st.rd?.onlyIfCached) {
        st.kind = 'served';
        return { code: 'gateway-timeout', detail: 'only-if-cached: no stored response can answer this request', headers: record(labelled('MISS')) };
      }
      return undefined;
    };

    return {
      access(ctx) {
        const m = ctx.method;
        if (!SAFE.has(m)) {
          ctx.vars[VAR] = state(ctx, 'invalidate');
          return undefined;
        }
        const st = state(ctx, 'bypass');
        ctx.vars[VAR] = st;
        // Preconditions other than the validators the cache answers are the origin's (RFC 9111
        // §4.3.2); a GET with a body, or a repeated key field, never touches the cache. A GET
        // for one byte range is answered from a fresh stored 200; other Range requests go to the
        // origin (and are not stored).
        const range = ctx.header('range');
        if (!methods.has(m) || (range !== undefined && (m !== 'GET' || !/^\s*bytes\s*=[^,]*$/i.test(range))) || ctx.header('upgrade') !== undefined || ctx.header('if-match') !== undefined
          || ctx.header('if-unmodified-since') !== undefined || hasBody(ctx) || keyRepeated(ctx)
          || METHOD_OVERRIDES.some((n) => ctx.header(n) !== undefined)) {
          // only-if-cached: a stored response or a 504, never the upstream (RFC 9111 §5.2.1.7)
          if (st.rd?.onlyIfCached) {
            st.kind = 'served';
            return { code: 'gateway-timeout', detail: 'only-if-cached: no stored response can answer this request', headers: record(labelled('MISS')) };
          }
          return undefined;
        }
        const found = store.find(st.bucket, st.sub, matcher(ctx, st), clock(), st);
        if (range !== undefined) {
          if (found instanceof Promise) {
            return found.then((e) => ranged(ctx, st, e, range), (err: Error) => {
              caches.fail(err, 'read');
              return ranged(ctx, st, null, range);
            });
          }
          return ranged(ctx, st, found, range);
        }
        if (found instanceof Promise) {
          return found.then((e) => decide(ctx, st, e), (err: Error) => {
            caches.fail(err, 'read');
            return decide(ctx, st, null);
          });
        }
        return decide(ctx, st, found);
      },

      responseHeaders(ctx, status, headers) {
        const st = ctx.vars[VAR] as State | undefined;
        if (st === undefined) return;
        if (st.kind === 'invalidate') {
          // §4.4: a non-error response to an unsafe method invalidates its URI, and the same
          // host's URIs in Location / Content-Location.
          // (the bucket made when the request came: its socket, whose TLS state it needs, may be
          // gone by now, a Connection: close request's)
          if (status >= 200 && status < 400) caches.invalidateWrite(st.bucket, ctx.host, headers);
          if (label) setField(headers, label, 'BYPASS');
          return;
        }
        if (st.kind === 'bypass') {
          if (label) setField(headers, label, 'BYPASS');
          return;
        }
        if (st.kind === 'fetch' && label) setField(headers, label, 'MISS');
      },

      bufferResponse(ctx, status, headers) {
        const st = ctx.vars[VAR] as State | undefined;
        if (st === undefined || st.kind !== 'fetch') return null;
        const whole = { max: maxBody, fallback: 'stream' as const };
        // (what is decided here is the upstream's answer: the response phase may see another
        // status, a response-transform's {"500": 200}, which must not make an error storable)
        if (ERRORS.has(status)) {
          st.held = 'error';
          if (st.stale !== null && !st.forced && P.usableOnError(st.stale.f, clock(), st.rd)) return whole;
          settle(st, { error: true });
          return null;
        }
        if (status === 304 && st.validating !== null) {
          st.held = '304';
          return whole;
        }
        // Held only when it would be stored: held, a stream (server-sent events, whose no-cache
        // is stored for nothing, or any answer never worth storing) reached the client at its
        // end or at max_body. An event stream is never stored.
        if (st.store && P.refusal(status, headers, { authorization: st.authorization, credential: st.credential, noStore: false, cookie: st.cookie }, o) === null
          && P.worthStoring(P.freshness(headers, st.requestTime, clock(), o, Date.now())) && !P.isEventStream(headers)) {
          st.held = 'store';
          return whole;
        }
        // Not storable: it streams, and whoever waits for it goes upstream now.
        settle(st, null, st.store);
        return null;
      },

      response(ctx, r) {
        const st = ctx.vars[VAR] as State | undefined;
        if (st === undefined || st.kind !== 'fetch') return;
        const now = clock();
        const wall = Date.now();
        if (r.origin === 'gateway' || st.held === 'error' || ERRORS.has(r.status)) {
          if (st.stale !== null && !st.forced && P.usableOnError(st.stale.f, now, st.rd)) substitute(ctx, r, st.stale, 'STALE', now);
          settle(st, { error: true });
          return;
        }
        // (after the response phases of lower priority: what is stored is what clients get)
        const up = upstreamCopy(ctx, r.headers);
        if (st.held === '304' && st.validating !== null) {
          // §4.3.4: the stored response, with the 304's fields, fresh again.
          const old = st.validating;
          const etag = P.fieldValue(up, 'etag')?.trim();
          if (etag !== undefined && old.f.etag !== null && !P.sameValidator(etag, old.f.etag)) {
            // A 304 for another representation than the one stored: nothing is updated, and the
            // stored one is no longer the current one.
            caches.invalidate(st.bucket);
            settle(st, null, st.store);
            substitute(ctx, r, old, 'STALE', now);
            return;
          }
          // (a 304 without Date is dated when it arrived, as a stored answer is: else the stored
          // Date, the first answer's arrival, would make the freshened entry as old as that)
          if (!P.hasField(up, 'date')) up.push('date', P.httpDate(wall));
          const merged = P.updateHeaders(old.headers, up, notStored);
          const f = P.freshness(merged, st.requestTime, now, o, wall);
          const e: Entry = { ...old, t: now, headers: storedFields(merged), f, until: P.keepUntil(f, o.keepMs) };
          if (P.refusal(old.status, merged, { authorization: st.authorization, credential: st.credential, noStore: false, cookie: st.cookie }, o) === null) {
            put(st, e, now);
            settle(st, { entry: e });
          } else {
            // The 304 made it unstorable (private, no-store, a Set-Cookie...): this client gets
            // it, the entry goes.
            caches.invalidate(st.bucket);
            settle(st, null, st.store);
          }
          substitute(ctx, r, e, 'REVALIDATED', now);
          return;
        }
        // (stored only when the upstream's own answer was to be: another plugin's buffering
        // brings here answers this cache let stream, a 403 or a 302 mapped to 200)
        if (st.held === 'store' && P.refusal(r.status, up, { authorization: st.authorization, credential: st.credential, noStore: false, cookie: st.cookie }, o) === null && !P.isEventStream(up)) {
          const e = makeEntry(ctx, st, r.status, up, r.body, now, wall);
          if (e !== null) {
            put(st, e, now);
            settle(st, { entry: e });
            if (P.notModified(e.status, e.f, ctx.header('if-none-match'), ctx.header('if-modified-since'))) substitute(ctx, r, e, 'MISS', now);
            return;
          }
        }
        settle(st, null, st.store);
      },

      log(ctx, info) {
        const st = ctx.vars[VAR] as State | undefined;
        // A leader whose response never reached the response phase (too large, the client left).
        if (st !== undefined) settle(st, null, st.store && info.status !== 499);
      },

      close() {
        caches.release(redis !== null ? 'redis' : 'memory', zone, redis ?? undefined);
      },
    };
  },
});
