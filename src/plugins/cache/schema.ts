import { Type, type Static } from '@sinclair/typebox';
import { Duration, Size } from '../schema-types.js';
import { HEURISTIC_STATUSES } from './policy.js';

export const CacheConfig = Type.Object({
  ttl: Type.Optional(Duration('Freshness of a storable response that gives none (no s-maxage, max-age or Expires): the heuristic lifetime (default 30s); for a response with Last-Modified, at most 10% of the time since it (RFC 9111 §4.2.2)')),
  max_ttl: Type.Optional(Duration('Cap on any freshness lifetime, the upstream\'s included (default: none)')),
  methods: Type.Optional(Type.Array(Type.Union([Type.Literal('GET'), Type.Literal('HEAD')]), {
    default: ['GET', 'HEAD'], minItems: 1, uniqueItems: true,
    description: 'Methods answered from the cache (GET responses are stored; HEAD is answered from a stored GET).',
  })),
  statuses: Type.Optional(Type.Array(Type.Integer({ minimum: 200, maximum: 599 }), {
    default: [...HEURISTIC_STATUSES], minItems: 1, uniqueItems: true,
    description: 'Statuses that are stored (default: the heuristically cacheable ones of RFC 9110 §15.1; others only with explicit freshness or public, never on the ttl heuristic). 206 and 304 never are.',
  })),
  max_body: Type.Optional(Size('Largest response body stored (larger ones are served, not stored; default 1mb)')),
  backend: Type.Optional(Type.Union([Type.Literal('memory'), Type.Literal('redis')], {
    default: 'memory', description: 'memory: an LRU in each gateway process (each worker has its own); redis: shared by nodes (needs the top-level redis setting).',
  })),
  max_size: Type.Optional(Size('Memory backend: bytes this binding\'s cache may hold (least recently used go first; default 64mb)')),
  key: Type.Optional(Type.Array(Type.String({ pattern: '^(consumer|query|(query|header|cookie):[!#$%&\'*+.^_`|~0-9A-Za-z-]+)$', maxLength: 128 }), {
    default: [], maxItems: 16, uniqueItems: true,
    description: 'Parts of the cache key besides what it always holds (host without its default port, path, scheme, service, route, the X-Forwarded-Proto / -Host / -Port and Forwarded proto and host the upstream is told, and X-Scheme, X-Forwarded-Protocol, X-Host, X-Original-Host, X-HTTP-Host-Override, X-Forwarded-Scheme, X-Forwarded-Ssl, Front-End-Https, X-Url-Scheme, X-Forwarded-Server, X-Forwarded-Prefix, X-Original-URL, X-Rewrite-URL, X-Original-URI, X-Forwarded-Uri, X-Forwarded-Path when the request has them) and Vary (compared on the fields as sent upstream): query (the whole query string but the parameter an auth plugin read a credential from, such as key-auth apikey, the default), query:NAME (only these parameters), header:NAME, cookie:NAME, consumer. Entries keep only a digest of the key.',
  })),
  per_consumer: Type.Optional(Type.Boolean({ default: true, description: 'Requests an auth plugin authenticated are cached per consumer (identity), as Kong does; false shares entries between consumers (for responses that are the same for everyone).' })),
  shared: Type.Optional(Type.Boolean({ default: true, description: 'A shared cache (RFC 9111): private responses are not stored, s-maxage and proxy-revalidate apply, Authorization rules of §3.5 hold.' })),
  cache_authorized: Type.Optional(Type.Boolean({ default: false, description: 'Store responses to requests with Authorization, or with an API key no auth plugin vouched for (X-API-Key, Api-Key, apikey, X-Auth-Token, X-Access-Token, key-auth\'s header or parameter on the anonymous path, an api_key / access_token / token / key parameter a query: key leaves out), even when the response does not allow it (public, s-maxage, must-revalidate); they are kept per consumer unless per_consumer is false, else per credential value.' })),
  cache_set_cookie: Type.Optional(Type.Boolean({ default: false, description: 'Store responses that set cookies (stored without their Set-Cookie fields); otherwise they are not stored.' })),
  collapse: Type.Optional(Type.Boolean({ default: true, description: 'Concurrent misses of one key wait for the first one\'s response instead of all going upstream.' })),
  collapse_timeout: Type.Optional(Duration('Longest wait for the request being collapsed on; then the waiters go upstream (default 30s; past 24d, the longest timer, it waits that long)')),
  stale_while_revalidate: Type.Optional(Duration('Default stale-while-revalidate window when the response has none (RFC 5861; default 0)')),
  stale_if_error: Type.Optional(Duration('Default stale-if-error window when the response has none (RFC 5861; default 0)')),
  keep: Type.Optional(Duration('How long a stale entry with a validator (ETag, Last-Modified) is kept for revalidation (default 1h)')),
  request_directives: Type.Optional(Type.Boolean({ default: true, description: 'Honour the client\'s Cache-Control (no-cache, no-store, max-age, max-stale, min-fresh, only-if-cached) and Pragma: no-cache.' })),
  status_header: Type.Optional(Type.String({ default: 'x-cache-status', pattern: '^([!#$%&\'*+.^_`|~0-9A-Za-z-]+)?$', maxLength: 64, description: 'Response header telling HIT, MISS, STALE, REVALIDATED or BYPASS ("" for none).' })),
}, { additionalProperties: false });
export type CacheConfig = Static<typeof CacheConfig>;
