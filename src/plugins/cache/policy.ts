/**
 * The rules of RFC 9111 (HTTP caching) and RFC 5861 (stale-while-revalidate, stale-if-error)
 * as pure functions over header lists and times (epoch ms, passed in: no clock here).
 *
 * Everything that reads a field is written for hostile input: unparsable Cache-Control, dates
 * or ages never throw; delta-seconds are capped at 2^31 (§1.2.2); invalid freshness information
 * makes a response stale (§4.2.1); a Vary with too many names is not stored.
 */

/** §1.2.2: the greatest delta-seconds value a cache has to represent. */
import { normalizePath } from '../../router/path.js';

export const MAX_DELTA_SECONDS = 2 ** 31;
/** More Vary names than this: the response is not stored (each variant keeps their values). */
export const MAX_VARY_NAMES = 32;

/** Statuses a cache may store without explicit freshness (RFC 9110 §15.1: heuristically cacheable). */
export const HEURISTIC_STATUSES: readonly number[] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];
const HEURISTIC = new Set(HEURISTIC_STATUSES);

/**
 * Statuses whose caching requirements this cache implements (must-understand, RFC 9111
 * §5.2.2.3): the final statuses of RFC 9110 and the registered ones common on APIs (429, 431,
 * 451, 511). Storing is still up to `statuses`.
 */
const UNDERSTOOD = new Set([
  200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 308,
  400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 426, 429, 431, 451,
  500, 501, 502, 503, 504, 505, 511,
]);

/** Directives of one Cache-Control field: name (lower-case) -> value (unquoted) or true. The first occurrence wins. */
export type Directives = ReadonlyMap<string, string | true>;

const EMPTY: Directives = new Map();

/**
 * Parses Cache-Control (RFC 9111 §5.2): `name[=token|quoted-string]` separated by commas.
 * Malformed members are skipped; at most 64 directives are read.
 */
export function parseCacheControl(value: string | undefined): Directives {
  if (value === undefined || value === '') return EMPTY;
  const out = new Map<string, string | true>();
  const n = value.length;
  let i = 0;
  while (i < n && out.size < 64) {
    // name
    while (i < n && (value[i] === ' ' || value[i] === '\t' || value[i] === ',')) i++;
    const start = i;
    while (i < n && value[i] !== '=' && value[i] !== ',') i++;
    const name = value.slice(start, i).trim().toLowerCase();
    let v: string | true = true;
    if (i < n && value[i] === '=') {
      i++;
      while (i < n && (value[i] === ' ' || value[i] === '\t')) i++;
      if (value[i] === '"') {
        i++;
        let s = '';
        while (i < n && value[i] !== '"') {
          if (value[i] === '\\' && i + 1 < n) i++;
          s += value[i];
          i++;
        }
        i++; // closing quote (or the end)
        v = s;
        while (i < n && value[i] !== ',') i++;
      } else {
        const vs = i;
        while (i < n && value[i] !== ',') i++;
        v = value.slice(vs, i).trim();
      }
    }
    if (name !== '' && /^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(name) && !out.has(name)) out.set(name, v);
  }
  // More directives than are read: a no-store or private past them must not be missed (fail closed).
  if (out.size >= 64 && /[^\s,]/.test(value.slice(i))) out.set('no-store', true);
  return out;
}

/** delta-seconds (§1.2.2) in seconds: digits only, capped at 2^31; anything else null. */
export function deltaSeconds(v: string | true | undefined): number | null {
  if (typeof v !== 'string' || !/^[0-9]+$/.test(v)) return null;
  const n = v.length > 10 ? Infinity : Number(v);
  return Math.min(n, MAX_DELTA_SECONDS);
}

const MONTHS: Record<string, number> = { jan: 0, feb: 1, mar: 2, apr: 3, may: 4, jun: 5, jul: 6, aug: 7, sep: 8, oct: 9, nov: 10, dec: 11 };
const IMF = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT$/;
const RFC850 = /^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\d{2})-([A-Za-z]{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT$/;
const ASCTIME = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Za-z]{3}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})$/;

/**
 * An HTTP-date (RFC 9110 §5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms) as
 * epoch ms; anything else null. A two-digit RFC 850 year more than 50 years ahead is in the past.
 */
export function parseHttpDate(s: string | undefined, now = Date.now()): number | null {
  if (s === undefined) return null;
  s = s.trim();
  if (s.length > 40) return null;
  let d: string, mon: string, y: number, hh: string, mm: string, ss: string;
  let m = IMF.exec(s);
  if (m) {
    d = m[1]!; mon = m[2]!; y = Number(m[3]); hh = m[4]!; mm = m[5]!; ss = m[6]!;
  } else if ((m = RFC850.exec(s))) {
    d = m[1]!; mon = m[2]!; hh = m[4]!; mm = m[5]!; ss = m[6]!;
    const year = new Date(now).getUTCFullYear();
    y = Math.floor(year / 100) * 100 + Number(m[3]);
    if (y > year + 50) y -= 100;
  } else if ((m = ASCTIME.exec(s))) {
    mon = m[1]!; d = m[2]!.trim(); hh = m[3]!; mm = m[4]!; ss = m[5]!; y = Number(m[6]);
  } else return null;
  const month = MONTHS[mon.toLowerCase()];
  const day = Number(d);
  const H = Number(hh), M = Number(mm), S = Number(ss);
  if (month === undefined || day < 1 || day > 31 || H > 23 || M > 59 || S > 60) return null;
  const t = Date.UTC(y, month, day, H, M, Math.min(S, 59));
  // Date.UTC rolls 31 Feb over into March: that is not a date.
  if (new Date(t).getUTCDate() !== day) return null;
  return t;
}

/** IMF-fixdate of epoch ms. */
export function httpDate(ms: number): string {
  return new Date(ms).toUTCString();
}

/** All values of a field in a flat list (name, value, ...), joined with ', ' (undefined when absent). */
/**
 * Whether a 304's entity-tag selects a stored response's (§4.3.4): a strong one by the strong
 * comparison, a weak one by the weak comparison (RFC 9110 §8.8.3.2).
 */
export function sameValidator(fresh: string, stored: string): boolean {
  if (!fresh.startsWith('W/')) return fresh === stored;
  const opaque = (t: string) => (t.startsWith('W/') ? t.slice(2) : t);
  return opaque(fresh) === opaque(stored);
}

export function fieldValue(list: readonly string[], name: string): string | undefined {
  let out: string | undefined;
  for (let i = 0; i < list.length; i += 2) {
    if (list[i]!.toLowerCase() === name) out = out === undefined ? list[i + 1]! : `${out}, ${list[i + 1]!}`;
  }
  return out;
}

/** The first value of a field (for fields that have one value: Date, Expires, ETag, Age...). */
export function firstValue(list: readonly string[], name: string): string | undefined {
  for (let i = 0; i < list.length; i += 2) if (list[i]!.toLowerCase() === name) return list[i + 1]!;
  return undefined;
}

export function hasField(list: readonly string[], name: string): boolean {
  for (let i = 0; i < list.length; i += 2) if (list[i]!.toLowerCase() === name) return true;
  return false;
}

/** Whether a response is a stream of server-sent events (text/event-stream): never held nor stored. */
export function isEventStream(headers: readonly string[]): boolean {
  const t = firstValue(headers, 'content-type');
  return t !== undefined && /^\s*text\/event-stream\s*(;|$)/i.test(t);
}

/** Removes every field named in `names` (lower-case) from a flat list, in place. */
export function dropFields(list: string[], names: ReadonlySet<string>): void {
  for (let i = list.length - 2; i >= 0; i -= 2) if (names.has(list[i]!.toLowerCase())) list.splice(i, 2);
}

/** Field names listed in a directive's quoted value (`no-cache="set-cookie, x-a"`), lower-case. */
export function listedFields(v: string | true | undefined): string[] {
  if (typeof v !== 'string') return [];
  return v.split(',').map((s) => s.trim().toLowerCase()).filter((s) => /^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(s)).slice(0, 64);
}

/**
 * The names of a response's Vary (lower-case, deduplicated): '*' when it varies on anything
 * (never matches, §4.1), 'too-many' past MAX_VARY_NAMES.
 */
export function varyNames(headers: readonly string[]): string[] | '*' | 'too-many' {
  const v = fieldValue(headers, 'vary');
  if (v === undefined) return [];
  const names: string[] = [];
  for (const raw of v.split(',')) {
    const n = raw.trim().toLowerCase();
    if (n === '') continue;
    if (n === '*') return '*';
    if (!names.includes(n)) {
      names.push(n);
      if (names.length > MAX_VARY_NAMES) return 'too-many';
    }
  }
  return names;
}

/** A request field's value as Vary compares it (§4.1: whitespace normalized), or null when absent. */
export function normalizeForVary(v: string | undefined): string | null {
  if (v === undefined) return null;
  return v.trim().replace(/[ \t]+/g, ' ').replace(/ ?, ?/g, ',');
}

/** What the request asks of caches (§5.2.1), when request directives are honoured. */
export interface RequestDirectives {
  noCache: boolean;
  noStore: boolean;
  /** ms, or null. */
  maxAge: number | null;
  /** ms (Infinity for a bare max-stale), or null. */
  maxStale: number | null;
  minFresh: number | null;
  onlyIfCached: boolean;
  /** RFC 5861 §4 in a request: ms the client accepts a stale response for when the upstream fails, or null. */
  staleIfError: number | null;
}

export function requestDirectives(cacheControl: string | undefined, pragma: string | undefined): RequestDirectives {
  const cc = parseCacheControl(cacheControl);
  const ms = (v: string | true | undefined) => { const s = deltaSeconds(v); return s === null ? null : s * 1000; };
  // §5.4: Pragma: no-cache counts only without Cache-Control.
  const pragmaNoCache = cacheControl === undefined && pragma !== undefined && /(^|,)\s*no-cache\s*(,|$)/i.test(pragma);
  const maxStale = cc.get('max-stale');
  return {
    noCache: cc.has('no-cache') || pragmaNoCache,
    noStore: cc.has('no-store'),
    // An invalid max-age asks for a fresh answer (0).
    maxAge: cc.has('max-age') ? (ms(cc.get('max-age')) ?? 0) : null,
    maxStale: maxStale === undefined ? null : maxStale === true ? Infinity : ms(maxStale),
    minFresh: cc.has('min-fresh') ? ms(cc.get('min-fresh')) : null,
    onlyIfCached: cc.has('only-if-cached'),
    staleIfError: ms(cc.get('stale-if-error')),
  };
}

/** Options of the cache that decide what is stored and for how long. */
export interface PolicyOptions {
  shared: boolean;
  /** Heuristic freshness (ms) when the response gives none. */
  heuristicMs: number;
  /** Cap on any freshness lifetime (ms). */
  maxTtlMs: number;
  statuses: ReadonlySet<number>;
  cacheAuthorized: boolean;
  cacheSetCookie: boolean;
  /** Defaults of the RFC 5861 windows (ms) when the response has none. */
  staleWhileRevalidateMs: number;
  staleIfErrorMs: number;
  /** How long past its stale windows an entry with a validator is kept for revalidation (ms). */
  keepMs: number;
}

/**
 * Why a response to a GET cannot be stored (§3, §3.5), or null when it can. `authorization`:
 * the request carried Authorization.
 */
export function refusal(status: number, headers: readonly string[], req: { authorization: boolean; noStore: boolean; cookie?: boolean; credential?: readonly string[] | null }, o: PolicyOptions): string | null {
  if (!o.statuses.has(status) || status === 206 || status === 304 || status < 200) return `status ${status}`;
  if (req.noStore) return 'request no-store';
  const cc = parseCacheControl(fieldValue(headers, 'cache-control'));
  // must-understand (§5.2.2.3): never stored with a status the cache does not implement; with
  // one it does, the no-store that goes with it (for caches that do not know the directive) is
  // ignored.
  const mustUnderstand = cc.has('must-understand');
  if (mustUnderstand && !UNDERSTOOD.has(status)) return 'must-understand';
  if (cc.has('no-store') && !mustUnderstand) return 'no-store';
  // (a qualified private naming no valid field — private="", private= — is taken whole: nothing
  // would be left out of what every client then gets, as no-cache="" is taken whole)
  if (o.shared && cc.has('private') && listedFields(cc.get('private')).length === 0) return 'private';
  if (o.shared && req.authorization && !o.cacheAuthorized && !(cc.has('must-revalidate') || cc.has('public') || cc.has('s-maxage'))) return 'authorization';
  // Another credential the upstream got (X-API-Key, an API key parameter) that no auth plugin
  // vouched for, so no consumer is in the key: what is true of Authorization (§3.5) is true of
  // it, unless the response varies on it (Vary: X-API-Key).
  if (o.shared && req.credential != null && !o.cacheAuthorized && !(cc.has('must-revalidate') || cc.has('public') || cc.has('s-maxage'))) {
    const vary = varyNames(headers);
    if (!Array.isArray(vary) || !req.credential.every((n) => vary.includes(n))) return 'credential';
  }
  // A request with cookies whose answer says nothing about caching may be personal (web cache
  // deception: /account/x.css): only an explicit lifetime or `public` lets it be shared (Varnish's
  // default passes such requests altogether).
  if (o.shared && req.cookie && !(cc.has('public') || cc.has('s-maxage') || cc.has('max-age') || hasField(headers, 'expires'))) return 'cookie without explicit freshness';
  if (!o.cacheSetCookie && hasField(headers, 'set-cookie')) return 'set-cookie';
  if (hasField(headers, 'content-range')) return 'content-range';
  // §3, §4.2.2: a status that is not heuristically cacheable (302, 307, 403, 500... listed in
  // `statuses`) is stored only with explicit freshness or public: never on the ttl heuristic.
  if (!HEURISTIC.has(status) && !(cc.has('public') || cc.has('max-age') || (o.shared ? cc.has('s-maxage') : cc.has('private')) || hasField(headers, 'expires'))) return `status ${status} without explicit freshness`;
  const vary = varyNames(headers);
  if (vary === '*') return 'vary *';
  if (vary === 'too-many') return 'vary too long';
  return null;
}

/** What decides how an entry may be used, computed once when it is stored (or refreshed). */
export interface Freshness {
  /** Freshness lifetime (ms). */
  lifetime: number;
  /** corrected_initial_age (§4.2.3, ms). */
  initialAge: number;
  /** When the response arrived (on the store's clock, epoch-like ms): resident time counts from here. */
  responseTime: number;
  /** no-cache: every use needs a successful revalidation. */
  noCache: boolean;
  /** must-revalidate, proxy-revalidate or s-maxage (shared): never used stale (§4.2.4). */
  noStale: boolean;
  /** RFC 5861 windows (ms). */
  swr: number;
  sie: number;
  etag: string | null;
  lastModified: string | null;
  /** Date of the response (epoch ms; its arrival when absent or invalid). */
  date: number;
}

/**
 * Freshness lifetime (§4.2.1): s-maxage (shared) > max-age > Expires - Date > heuristic (ttl,
 * at most 10% of Date - Last-Modified when there is one); capped at maxTtl. Invalid values make the response stale (0).
 */
export function freshnessLifetime(headers: readonly string[], cc: Directives, responseTime: number, o: PolicyOptions): number {
  let seconds: number | null = null;
  if (o.shared && cc.has('s-maxage')) seconds = deltaSeconds(cc.get('s-maxage')) ?? 0;
  else if (cc.has('max-age')) seconds = deltaSeconds(cc.get('max-age')) ?? 0;
  let ms: number;
  if (seconds !== null) ms = seconds * 1000;
  else {
    const expires = fieldValue(headers, 'expires');
    if (expires !== undefined) {
      const e = parseHttpDate(expires, responseTime);
      // An invalid Expires (e.g. "0") is in the past (§5.3).
      const date = parseHttpDate(firstValue(headers, 'date'), responseTime) ?? responseTime;
      ms = e === null ? 0 : Math.max(0, e - date);
    } else {
      ms = o.heuristicMs;
      // Heuristic freshness of a response with Last-Modified (§4.2.2): at most a tenth of the
      // time since it last changed (a page changed a minute ago is fresh 6 s, not ttl).
      const lm = parseHttpDate(firstValue(headers, 'last-modified'), responseTime);
      if (lm !== null) {
        const date = parseHttpDate(firstValue(headers, 'date'), responseTime) ?? responseTime;
        ms = Math.min(ms, Math.max(0, date - lm) / 10);
      }
    }
  }
  return Math.max(0, Math.min(ms, o.maxTtlMs));
}

/**
 * corrected_initial_age (§4.2.3): the age the response had when it arrived. `wall`: its arrival
 * on the wall clock, which Date is compared with (requestTime and responseTime may be on
 * another clock, a monotonic one: they give the response delay).
 */
export function initialAge(headers: readonly string[], requestTime: number, responseTime: number, wall = responseTime): number {
  // (a list — two Age fields folded by an intermediary — counts by its first member, §5.1)
  const age = deltaSeconds(firstValue(headers, 'age')?.split(',', 1)[0]!.trim());
  const ageValue = age === null ? 0 : age * 1000;
  const dateValue = parseHttpDate(firstValue(headers, 'date'), wall) ?? wall;
  const apparentAge = Math.max(0, wall - dateValue);
  const responseDelay = Math.max(0, responseTime - requestTime);
  return Math.max(apparentAge, ageValue + responseDelay);
}

/**
 * `requestTime` and `responseTime` on the clock resident time is counted on (a monotonic one:
 * a step of the wall clock must not age or rejuvenate what is stored); `wall`: the arrival on
 * the wall clock, for what is compared with Date and Expires.
 */
export function freshness(headers: readonly string[], requestTime: number, responseTime: number, o: PolicyOptions, wall = responseTime): Freshness {
  const cc = parseCacheControl(fieldValue(headers, 'cache-control'));
  const win = (name: string, dflt: number) => { const s = deltaSeconds(cc.get(name)); return s === null ? dflt : s * 1000; };
  return {
    lifetime: freshnessLifetime(headers, cc, wall, o),
    initialAge: initialAge(headers, requestTime, responseTime, wall),
    responseTime,
    // (a qualified no-cache naming no valid field is taken whole: no-cache="", no-cache=", ")
    noCache: cc.has('no-cache') && listedFields(cc.get('no-cache')).length === 0,
    noStale: cc.has('must-revalidate') || (o.shared && (cc.has('proxy-revalidate') || cc.has('s-maxage'))),
    swr: win('stale-while-revalidate', o.staleWhileRevalidateMs),
    sie: win('stale-if-error', o.staleIfErrorMs),
    etag: firstValue(headers, 'etag')?.trim() ?? null,
    lastModified: firstValue(headers, 'last-modified')?.trim() ?? null,
    date: parseHttpDate(firstValue(headers, 'date'), wall) ?? wall,
  };
}

/** current_age (§4.2.3, ms). */
export function currentAge(f: Freshness, now: number): number {
  return f.initialAge + Math.max(0, now - f.responseTime);
}

/** The Age field value (whole seconds, capped). */
export function ageHeader(f: Freshness, now: number): string {
  return String(Math.min(MAX_DELTA_SECONDS, Math.floor(currentAge(f, now) / 1000)));
}

export const hasValidator = (f: Freshness) => f.etag !== null || f.lastModified !== null;

/**
 * Whether storing is worth it: an entry that is never fresh, has no validator and no stale
 * window would never be used.
 */
export function worthStoring(f: Freshness): boolean {
  return (f.lifetime > f.initialAge && !f.noCache) || hasValidator(f) || (!f.noStale && !f.noCache && (f.swr > 0 || f.sie > 0) && f.lifetime + Math.max(f.swr, f.sie) > f.initialAge);
}

/**
 * Until when (epoch ms) an entry may be of use: fresh, then usable stale (stale windows),
 * then kept for revalidation when it has a validator.
 */
export function keepUntil(f: Freshness, keepMs: number): number {
  const freshUntil = f.responseTime + Math.max(0, f.lifetime - f.initialAge);
  const stale = f.noStale || f.noCache ? 0 : Math.max(f.swr, f.sie);
  const keep = hasValidator(f) ? keepMs : 0;
  return freshUntil + stale + keep;
}

/** How a stored response may answer a request (§4.2, §4.2.4, RFC 5861). */
export type Use =
  /** Fresh enough for this request: served as it is. */
  | 'fresh'
  /** Stale, and the client accepts it (max-stale). */
  | 'stale'
  /** Stale within stale-while-revalidate: served while one request revalidates. */
  | 'stale-while-revalidate'
  /** Must be validated (or fetched again) before use. */
  | 'revalidate';

export function usable(f: Freshness, req: RequestDirectives | null, now: number): Use {
  const age = currentAge(f, now);
  if (f.noCache || req?.noCache) return 'revalidate';
  // (max-age=0: nothing stored will do, whatever its age in whole seconds)
  if (req?.maxAge != null && (req.maxAge === 0 || Math.floor(age / 1000) * 1000 > req.maxAge)) return 'revalidate';
  if (req?.minFresh != null && f.lifetime - age < req.minFresh) return 'revalidate';
  if (age < f.lifetime) return 'fresh';
  if (f.noStale) return 'revalidate';
  const staleness = age - f.lifetime;
  if (req?.maxStale != null && staleness <= req.maxStale) return 'stale';
  if (staleness < f.swr) return 'stale-while-revalidate';
  return 'revalidate';
}

/**
 * Whether a stale entry may stand in for an error (RFC 5861 §4: the response's window, or the
 * request's own stale-if-error; never when §4.2.4 forbids stale use).
 */
export function usableOnError(f: Freshness, now: number, req: RequestDirectives | null = null): boolean {
  if (f.noStale || f.noCache) return false;
  const staleness = currentAge(f, now) - f.lifetime;
  return staleness < Math.max(f.sie, req?.staleIfError ?? 0) || staleness < 0;
}

/** The entity-tags of an If-None-Match value (`*` is returned as '*'). */
export function entityTags(v: string): string[] | '*' {
  if (v.trim() === '*') return '*';
  return (v.match(/(?:W\/)?"[^"]*"/g) ?? []).slice(0, 128);
}

/** Weak comparison (RFC 9110 §8.8.3.2). */
export function weakMatch(a: string, b: string): boolean {
  const strip = (t: string) => (t.startsWith('W/') ? t.slice(2) : t);
  return strip(a) === strip(b);
}

/**
 * Whether a client's conditional GET/HEAD is answered 304 by the stored response (RFC 9110
 * §13.1.2, §13.1.3, §13.2.2): If-None-Match first, If-Modified-Since only without it; only a
 * 2xx stored response takes part.
 */
export function notModified(status: number, f: Freshness, ifNoneMatch: string | undefined, ifModifiedSince: string | undefined): boolean {
  if (status < 200 || status > 299) return false;
  if (ifNoneMatch !== undefined) {
    const tags = entityTags(ifNoneMatch);
    if (tags === '*') return true;
    return f.etag !== null && tags.some((t) => weakMatch(t, f.etag!));
  }
  if (ifModifiedSince !== undefined) {
    const since = parseHttpDate(ifModifiedSince, f.responseTime);
    if (since === null) return false;
    const lm = (f.lastModified !== null ? parseHttpDate(f.lastModified, f.responseTime) : null) ?? f.date;
    return lm <= since;
  }
  return false;
}

/**
 * The one byte range of a Range field (RFC 9110 §14.1.2) over a body of `len` bytes: [first,
 * last] inclusive; null when the field is not one satisfiable `bytes` range (several, another
 * unit, malformed, past the end): those go to the origin, which answers them as it does.
 */
export function singleRange(v: string, len: number): [number, number] | null {
  const m = /^\s*bytes\s*=\s*([0-9]{0,15})\s*-\s*([0-9]{0,15})\s*$/i.exec(v);
  if (m === null || (m[1] === '' && m[2] === '') || len === 0) return null;
  const last = m[2] === '' ? null : Number(m[2]);
  if (m[1] === '') return last === 0 ? null : [Math.max(0, len - last!), len - 1];
  const first = Number(m[1]);
  if ((last !== null && last < first) || first >= len) return null;
  return [first, Math.min(last ?? len - 1, len - 1)];
}

/**
 * Whether an If-Range lets the Range apply to the stored response (RFC 9110 §13.1.5): absent,
 * a strong entity-tag equal to the stored strong one, or a date equal to its Last-Modified.
 * Otherwise the whole response is the answer.
 */
export function ifRangeHolds(v: string | undefined, f: Freshness): boolean {
  if (v === undefined) return true;
  const t = v.trim();
  if (t.startsWith('"') || t.startsWith('W/')) return t.startsWith('"') && f.etag !== null && f.etag === t;
  const d = parseHttpDate(t, f.responseTime);
  const lm = f.lastModified !== null ? parseHttpDate(f.lastModified, f.responseTime) : null;
  return d !== null && lm !== null && d === lm;
}

/** Fields a 304 made from a stored 200 carries (RFC 9110 §15.4.5). */
const NOT_MODIFIED_FIELDS = new Set(['cache-control', 'content-location', 'date', 'etag', 'expires', 'vary', 'last-modified', 'via']);

export function notModifiedHeaders(stored: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < stored.length; i += 2) if (NOT_MODIFIED_FIELDS.has(stored[i]!)) out.push(stored[i]!, stored[i + 1]!);
  return out;
}

/** Fields a 304 does not update in the stored response (§3.2): framing and what the stored body depends on. */
const NOT_UPDATED = new Set([
  'content-length', 'content-range', 'content-encoding', 'transfer-encoding',
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'x-request-id',
]);

/**
 * The stored fields updated with a 304's (§3.2, §4.3.4): each field the 304 has replaces the
 * stored values of that name (names lower-case); `skip` fields (the gateway's own) are left out.
 */
export function updateHeaders(stored: readonly string[], fresh: readonly string[], skip: ReadonlySet<string>): string[] {
  const names = new Set<string>();
  for (let i = 0; i < fresh.length; i += 2) {
    const n = fresh[i]!.toLowerCase();
    if (!NOT_UPDATED.has(n) && !skip.has(n)) names.add(n);
  }
  const out: string[] = [];
  for (let i = 0; i < stored.length; i += 2) if (!names.has(stored[i]!)) out.push(stored[i]!, stored[i + 1]!);
  for (let i = 0; i < fresh.length; i += 2) {
    const n = fresh[i]!.toLowerCase();
    if (names.has(n)) out.push(n, fresh[i + 1]!);
  }
  return out;
}

/** A host as a key: lower-case, without the scheme's default port (`a:80` and `a` are one URI, RFC 9110 §4.2.3). */
export function hostKey(host: string, scheme: string): string {
  host = host.toLowerCase();
  const dflt = scheme === 'https' ? ':443' : scheme === 'http' ? ':80' : null;
  return dflt !== null && host.endsWith(dflt) ? host.slice(0, -dflt.length) : host;
}

/**
 * Paths an unsafe request invalidates besides its own (§4.4): Location and Content-Location of
 * its response when they name the same host (never another host's).
 */
export function invalidatedPaths(headers: readonly string[], host: string, path: string): string[] {
  const out: string[] = [];
  let self: string;
  try {
    self = new URL(`http://${host}`).host;
  } catch {
    return out;
  }
  const base = `http://${self}${path}`;
  for (const name of ['location', 'content-location']) {
    const v = firstValue(headers, name);
    if (v === undefined || v.length > 8192) continue;
    let u: URL;
    try {
      u = new URL(v.trim(), base);
    } catch {
      continue;
    }
    // (in the form the cache keys paths by: %7E and ~ are one path)
    const p = u.protocol === 'http:' || u.protocol === 'https:' ? normalizePath(u.pathname) : null;
    if (p !== null && u.host === self && !out.includes(p)) out.push(p);
  }
  return out;
}
