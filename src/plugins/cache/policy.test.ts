/** RFC 9111 / RFC 5861 rules as pure functions: parsing, storing, freshness, Age, use, validators. */
import test from 'node:test';
import assert from 'node:assert/strict';
import * as P from './policy.js';

const T0 = Date.UTC(2026, 0, 15, 12, 0, 0);
const date = (ms: number) => new Date(ms).toUTCString();
const opts = (o: Partial<P.PolicyOptions> = {}): P.PolicyOptions => ({
  shared: true, heuristicMs: 30_000, maxTtlMs: Infinity, statuses: new Set(P.HEURISTIC_STATUSES),
  cacheAuthorized: false, cacheSetCookie: false, staleWhileRevalidateMs: 0, staleIfErrorMs: 0, keepMs: 3_600_000, ...o,
});

test('Cache-Control parsing: tokens, quoted values, case, duplicates (first wins), garbage skipped, bounded', () => {
  const cc = P.parseCacheControl('Max-Age=60, no-cache="Set-Cookie, X-A", PRIVATE, max-age=5, s-maxage="30", ,, =x, b@d, ext="a\\"b"');
  assert.equal(cc.get('max-age'), '60');
  assert.equal(cc.get('no-cache'), 'Set-Cookie, X-A');
  assert.equal(cc.get('private'), true);
  assert.equal(cc.get('s-maxage'), '30');
  assert.equal(cc.get('ext'), 'a"b');
  assert.equal(cc.has('b@d'), false);
  assert.equal(P.parseCacheControl(undefined).size, 0);
  assert.deepEqual([...P.parseCacheControl('"unterminated, max-age=1')], [['max-age', '1']]);
  assert.deepEqual([...P.parseCacheControl('a="unterminated, max-age=1')], [['a', 'unterminated, max-age=1']]);
  // Bounded at 64 read; what is past them could be a no-store: the field then reads as no-store (fail closed).
  const many = P.parseCacheControl(Array.from({ length: 1000 }, (_, i) => `x${i}`).join(','));
  assert.equal(many.size, 65);
  assert.equal(many.has('no-store'), true);
  assert.equal(P.parseCacheControl(Array.from({ length: 64 }, (_, i) => `x${i}`).join(',')).has('no-store'), false);
  for (const v of ['=', ',', '"', '\\', 'max-age="', 'max-age==1', '\u0000', 'a=b=c,', 'max-age=1"2']) assert.doesNotThrow(() => P.parseCacheControl(v));
});

test('delta-seconds: digits only, capped at 2^31; negative, fractional and huge values', () => {
  assert.equal(P.deltaSeconds('60'), 60);
  assert.equal(P.deltaSeconds('0'), 0);
  assert.equal(P.deltaSeconds('99999999999999999999999'), 2 ** 31);
  assert.equal(P.deltaSeconds('2147483649'), 2 ** 31);
  assert.equal(P.deltaSeconds('-1'), null);
  assert.equal(P.deltaSeconds('1.5'), null);
  assert.equal(P.deltaSeconds(' 5'), null);
  assert.equal(P.deltaSeconds(true), null);
  assert.equal(P.deltaSeconds(undefined), null);
});

test('HTTP dates: IMF-fixdate, RFC 850, asctime; malformed ones are null', () => {
  const t = Date.UTC(1994, 10, 6, 8, 49, 37);
  assert.equal(P.parseHttpDate('Sun, 06 Nov 1994 08:49:37 GMT'), t);
  assert.equal(P.parseHttpDate('Sunday, 06-Nov-94 08:49:37 GMT', T0), t);
  assert.equal(P.parseHttpDate('Sun Nov  6 08:49:37 1994'), t);
  for (const bad of ['0', '-1', '', 'yesterday', 'Sun, 31 Feb 2026 00:00:00 GMT', 'Sun, 06 Nov 1994 25:00:00 GMT', 'Sun, 06 Xyz 1994 08:49:37 GMT',
    'Sun, 06 Nov 1994 08:49:37 PST', '1994-11-06T08:49:37Z', 'x'.repeat(10_000), undefined]) {
    assert.equal(P.parseHttpDate(bad as string | undefined), null, String(bad).slice(0, 40));
  }
});

test('storing rules (§3, §3.5): status, no-store, private, Authorization, Set-Cookie, Vary', () => {
  const o = opts();
  const req = { authorization: false, noStore: false };
  assert.equal(P.refusal(200, [], req, o), null);
  assert.equal(P.refusal(404, ['Cache-Control', 'max-age=5'], req, o), null);
  assert.equal(P.refusal(500, [], req, o), 'status 500');
  assert.equal(P.refusal(206, [], req, opts({ statuses: new Set([200, 206]) })), 'status 206');
  assert.equal(P.refusal(302, [], req, o), 'status 302');
  assert.equal(P.refusal(200, [], { ...req, noStore: true }, o), 'request no-store');
  assert.equal(P.refusal(200, ['cache-control', 'max-age=60, no-store'], req, o), 'no-store');
  assert.equal(P.refusal(200, ['cache-control', 'private'], req, o), 'private');
  assert.equal(P.refusal(200, ['cache-control', 'private'], req, opts({ shared: false })), null);
  // private with field names: stored without those fields
  assert.equal(P.refusal(200, ['cache-control', 'private="x-user"'], req, o), null);
  const auth = { authorization: true, noStore: false };
  assert.equal(P.refusal(200, ['cache-control', 'max-age=60'], auth, o), 'authorization');
  for (const allow of ['public', 's-maxage=60', 'must-revalidate, max-age=5']) assert.equal(P.refusal(200, ['cache-control', allow], auth, o), null, allow);
  assert.equal(P.refusal(200, ['cache-control', 'max-age=60'], auth, opts({ cacheAuthorized: true })), null);
  assert.equal(P.refusal(200, ['cache-control', 'max-age=60'], auth, opts({ shared: false })), null);
  assert.equal(P.refusal(200, ['Set-Cookie', 'a=b'], req, o), 'set-cookie');
  assert.equal(P.refusal(200, ['Set-Cookie', 'a=b'], req, opts({ cacheSetCookie: true })), null);
  assert.equal(P.refusal(200, ['vary', 'Accept, *'], req, o), 'vary *');
  assert.equal(P.refusal(200, ['vary', Array.from({ length: 1000 }, (_, i) => `h${i}`).join(', ')], req, o), 'vary too long');
  assert.equal(P.refusal(200, ['content-range', 'bytes 0-1/2'], req, o), 'content-range');
  // must-understand (§5.2.2.3): the no-store beside it is for caches that do not know it; a status the cache does not implement is never stored
  assert.equal(P.refusal(200, ['cache-control', 'must-understand, no-store, max-age=3600'], req, o), null);
  assert.equal(P.refusal(404, ['cache-control', 'no-store, must-understand'], req, o), null);
  assert.equal(P.refusal(299, ['cache-control', 'must-understand, no-store, max-age=3600'], req, opts({ statuses: new Set([200, 299]) })), 'must-understand');
  assert.equal(P.refusal(299, ['cache-control', 'must-understand, max-age=3600'], req, opts({ statuses: new Set([200, 299]) })), 'must-understand');
  assert.equal(P.refusal(299, ['cache-control', 'max-age=3600'], req, opts({ statuses: new Set([200, 299]) })), null);
  assert.equal(P.refusal(200, ['cache-control', 'must-understand, no-store, private, max-age=3600'], req, o), 'private');
});

test('freshness lifetime: s-maxage (shared) > max-age > Expires - Date > heuristic ttl; capped by max_ttl; invalid = stale', () => {
  const o = opts();
  const life = (h: string[], x = o) => P.freshness(h, T0, T0, x).lifetime;
  assert.equal(life(['cache-control', 's-maxage=10, max-age=60']), 10_000);
  assert.equal(life(['cache-control', 's-maxage=10, max-age=60'], opts({ shared: false })), 60_000);
  assert.equal(life(['cache-control', 'max-age=60', 'expires', date(T0 + 5000), 'date', date(T0)]), 60_000);
  assert.equal(life(['expires', date(T0 + 5000), 'date', date(T0)]), 5000);
  // Expires relative to Date, not to our clock (a skewed origin clock does not matter)
  assert.equal(life(['expires', date(T0 - 55_000), 'date', date(T0 - 60_000)]), 5000);
  assert.equal(life(['expires', date(T0 + 5000)]), 5000);
  assert.equal(life(['expires', '0']), 0);
  assert.equal(life(['expires', 'garbage']), 0);
  assert.equal(life(['expires', date(T0 - 5000), 'date', date(T0)]), 0);
  assert.equal(life([]), 30_000);
  assert.equal(life(['cache-control', 'public']), 30_000);
  assert.equal(life(['cache-control', 'max-age=abc']), 0);
  assert.equal(life(['cache-control', 'max-age=-5']), 0);
  assert.equal(life(['cache-control', 'max-age=999999999999999999999']), 2 ** 31 * 1000);
  assert.equal(life(['cache-control', 'max-age=600'], opts({ maxTtlMs: 60_000 })), 60_000);
  assert.equal(life([], opts({ maxTtlMs: 10_000 })), 10_000);
  // heuristic with Last-Modified (§4.2.2): at most 10% of Date - Last-Modified, never past ttl
  assert.equal(life(['last-modified', date(T0 - 60_000), 'date', date(T0)]), 6000);
  assert.equal(life(['last-modified', date(T0 - 60_000)]), 6000);
  assert.equal(life(['last-modified', date(T0 - 3_600_000), 'date', date(T0)]), 30_000);
  assert.equal(life(['last-modified', date(T0 + 60_000), 'date', date(T0)]), 0);
  assert.equal(life(['last-modified', 'garbage']), 30_000);
  assert.equal(life(['last-modified', date(T0 - 60_000), 'cache-control', 'max-age=60']), 60_000);
});

test('Age (§4.2.3): corrected initial age from Age, Date and the response delay; negative and garbage Age ignored', () => {
  // Age 10 received, the request took 2 s: corrected_age_value 12 s
  assert.equal(P.initialAge(['age', '10'], T0 - 2000, T0), 12_000);
  // Date 30 s ago without Age: apparent age 30 s
  assert.equal(P.initialAge(['date', date(T0 - 30_000)], T0, T0), 30_000);
  // A Date in the future (skew): apparent age 0
  assert.equal(P.initialAge(['date', date(T0 + 30_000)], T0, T0), 0);
  for (const bad of ['-5', 'abc', '1e9', '']) assert.equal(P.initialAge(['age', bad], T0, T0), 0, bad);
  assert.equal(P.initialAge(['age', '99999999999999'], T0, T0), 2 ** 31 * 1000);
  const f = P.freshness(['cache-control', 'max-age=60', 'age', '10'], T0, T0, opts());
  assert.equal(P.currentAge(f, T0 + 5000), 15_000);
  assert.equal(P.ageHeader(f, T0 + 5999), '15');
  // resident time never negative (a clock going back)
  assert.equal(P.currentAge(f, T0 - 5000), 10_000);
  const huge = P.freshness(['age', '99999999999999'], T0, T0, opts());
  assert.equal(P.ageHeader(huge, T0 + 10 ** 12), String(2 ** 31));
});

test('use of a stored response: fresh, stale, request max-age / min-fresh / max-stale / no-cache, no-cache and must-revalidate responses', () => {
  const o = opts();
  const f = (h: string[]) => P.freshness(h, T0, T0, o);
  const rd = (cc: string | undefined, pragma?: string) => P.requestDirectives(cc, pragma);
  const e = f(['cache-control', 'max-age=60']);
  assert.equal(P.usable(e, null, T0 + 59_999), 'fresh');
  assert.equal(P.usable(e, null, T0 + 60_000), 'revalidate');
  assert.equal(P.usable(e, rd('no-cache'), T0), 'revalidate');
  assert.equal(P.usable(e, rd(undefined, 'no-cache'), T0), 'revalidate');
  assert.equal(P.usable(e, rd('max-age=100', 'no-cache'), T0), 'fresh');
  assert.equal(P.usable(e, rd('max-age=10'), T0 + 10_999), 'fresh');
  assert.equal(P.usable(e, rd('max-age=10'), T0 + 11_000), 'revalidate');
  // max-age=0: nothing stored will do (browsers' reload), even under a second old.
  assert.equal(P.usable(e, rd('max-age=0'), T0 + 500), 'revalidate');
  assert.equal(P.usable(e, rd('max-age=1'), T0 + 500), 'fresh');
  assert.equal(P.usable(e, rd('max-age=0'), T0 + 1500), 'revalidate');
  assert.equal(P.usable(e, rd('max-age=bogus'), T0 + 1500), 'revalidate');
  assert.equal(P.usable(e, rd('min-fresh=30'), T0 + 20_000), 'fresh');
  assert.equal(P.usable(e, rd('min-fresh=30'), T0 + 40_000), 'revalidate');
  assert.equal(P.usable(e, rd('max-stale=10'), T0 + 65_000), 'stale');
  assert.equal(P.usable(e, rd('max-stale=10'), T0 + 75_000), 'revalidate');
  assert.equal(P.usable(e, rd('max-stale'), T0 + 10 ** 9), 'stale');
  assert.equal(P.usable(f(['cache-control', 'max-age=60, no-cache']), null, T0), 'revalidate');
  // no-cache with field names is not a full no-cache
  assert.equal(P.usable(f(['cache-control', 'max-age=60, no-cache="set-cookie"']), null, T0), 'fresh');
  assert.equal(P.usable(f(['cache-control', 'max-age=60, must-revalidate']), rd('max-stale'), T0 + 61_000), 'revalidate');
  assert.equal(P.usable(f(['cache-control', 'max-age=60, proxy-revalidate']), rd('max-stale'), T0 + 61_000), 'revalidate');
  assert.equal(P.usable(f(['cache-control', 's-maxage=60']), rd('max-stale'), T0 + 61_000), 'revalidate');
  assert.equal(P.usable(P.freshness(['cache-control', 'max-age=60, proxy-revalidate'], T0, T0, opts({ shared: false })), rd('max-stale'), T0 + 61_000), 'stale');
});

test('RFC 5861: stale-while-revalidate and stale-if-error windows, from the response or the defaults; never with must-revalidate', () => {
  const o = opts({ staleWhileRevalidateMs: 5000, staleIfErrorMs: 7000 });
  const up = P.freshness(['cache-control', 'max-age=10, stale-while-revalidate=20, stale-if-error=100'], T0, T0, o);
  assert.equal(P.usable(up, null, T0 + 29_999), 'stale-while-revalidate');
  assert.equal(P.usable(up, null, T0 + 30_000), 'revalidate');
  assert.equal(P.usableOnError(up, T0 + 109_999), true);
  assert.equal(P.usableOnError(up, T0 + 110_000), false);
  const dflt = P.freshness(['cache-control', 'max-age=10'], T0, T0, o);
  assert.equal(P.usable(dflt, null, T0 + 14_000), 'stale-while-revalidate');
  assert.equal(P.usable(dflt, null, T0 + 15_000), 'revalidate');
  assert.equal(P.usableOnError(dflt, T0 + 16_000), true);
  assert.equal(P.usableOnError(dflt, T0 + 17_000), false);
  const strict = P.freshness(['cache-control', 'max-age=10, must-revalidate, stale-if-error=100, stale-while-revalidate=100'], T0, T0, o);
  assert.equal(P.usable(strict, null, T0 + 11_000), 'revalidate');
  assert.equal(P.usableOnError(strict, T0 + 11_000), false);
  const noCache = P.freshness(['cache-control', 'no-cache, stale-if-error=100'], T0, T0, o);
  assert.equal(P.usableOnError(noCache, T0 + 1000), false);
});

test('what is worth storing and for how long: fresh, validators, stale windows, keep', () => {
  const o = opts({ keepMs: 1000 });
  const f = (h: string[], x = o) => P.freshness(h, T0, T0, x);
  assert.equal(P.worthStoring(f(['cache-control', 'max-age=0'])), false);
  assert.equal(P.worthStoring(f(['cache-control', 'max-age=0', 'etag', '"a"'])), true);
  assert.equal(P.worthStoring(f(['cache-control', 'no-cache'])), false);
  assert.equal(P.worthStoring(f(['cache-control', 'no-cache', 'last-modified', date(T0 - 1000)])), true);
  assert.equal(P.worthStoring(f(['cache-control', 'max-age=0, stale-if-error=60'])), true);
  assert.equal(P.worthStoring(f(['cache-control', 'max-age=10', 'age', '20'])), false);
  assert.equal(P.keepUntil(f(['cache-control', 'max-age=10']), 1000), T0 + 10_000);
  assert.equal(P.keepUntil(f(['cache-control', 'max-age=10', 'etag', '"a"']), 1000), T0 + 11_000);
  assert.equal(P.keepUntil(f(['cache-control', 'max-age=10, stale-if-error=5', 'age', '4']), 1000), T0 + 11_000);
  assert.equal(P.keepUntil(f(['cache-control', 'max-age=10, must-revalidate, stale-if-error=50']), 1000), T0 + 10_000);
});

test('Vary: names, *, too many; values normalized', () => {
  assert.deepEqual(P.varyNames(['Vary', 'Accept-Encoding, accept-language', 'vary', 'ACCEPT-encoding']), ['accept-encoding', 'accept-language']);
  assert.equal(P.varyNames(['vary', 'accept, *']), '*');
  assert.equal(P.varyNames(['vary', Array.from({ length: 1000 }, (_, i) => `h${i}`).join(',')]), 'too-many');
  assert.deepEqual(P.varyNames(['vary', ' , ,']), []);
  assert.equal(P.normalizeForVary('  gzip ,  br '), 'gzip,br');
  assert.equal(P.normalizeForVary('en   US'), 'en US');
  assert.equal(P.normalizeForVary(undefined), null);
});

test('conditional requests against a stored response: If-None-Match (weak comparison, *), If-Modified-Since, only 2xx', () => {
  const f = P.freshness(['etag', 'W/"v1"', 'last-modified', date(T0 - 60_000), 'cache-control', 'max-age=60'], T0, T0, opts());
  assert.equal(P.notModified(200, f, '"v1"', undefined), true);
  assert.equal(P.notModified(200, f, '"x", W/"v1"', undefined), true);
  assert.equal(P.notModified(200, f, '"v2"', undefined), false);
  assert.equal(P.notModified(200, f, '*', undefined), true);
  // If-None-Match present: If-Modified-Since is ignored
  assert.equal(P.notModified(200, f, '"v2"', date(T0)), false);
  assert.equal(P.notModified(200, f, undefined, date(T0 - 60_000)), true);
  assert.equal(P.notModified(200, f, undefined, date(T0 - 61_000)), false);
  assert.equal(P.notModified(200, f, undefined, 'garbage'), false);
  assert.equal(P.notModified(404, f, '"v1"', undefined), false);
  assert.deepEqual(P.entityTags('"a,b", W/"c"'), ['"a,b"', 'W/"c"']);
  assert.deepEqual(P.notModifiedHeaders(['content-type', 'text/plain', 'etag', '"a"', 'cache-control', 'max-age=1', 'x-other', '1']), ['etag', '"a"', 'cache-control', 'max-age=1']);
});

test('304 updates the stored fields (§3.2): replaced by name (Content-Type too), framing and coding fields kept', () => {
  const stored = ['content-type', 'text/plain', 'etag', '"a"', 'cache-control', 'max-age=1', 'x-a', '1', 'x-a', '2', 'content-encoding', 'gzip'];
  const fresh = ['Cache-Control', 'max-age=60', 'X-A', '3', 'content-length', '0', 'content-type', 'text/html', 'content-encoding', 'br', 'x-new', 'n', 'x-cache-status', 'MISS'];
  assert.deepEqual(P.updateHeaders(stored, fresh, new Set(['x-cache-status'])), [
    'etag', '"a"', 'content-encoding', 'gzip', 'cache-control', 'max-age=60', 'x-a', '3', 'content-type', 'text/html', 'x-new', 'n',
  ]);
});

test('request directives: no-cache, no-store, max-age, max-stale, min-fresh, only-if-cached; Pragma only without Cache-Control', () => {
  assert.deepEqual(P.requestDirectives('no-cache, no-store, max-age=5, max-stale, min-fresh=2, only-if-cached', undefined), {
    noCache: true, noStore: true, maxAge: 5000, maxStale: Infinity, minFresh: 2000, onlyIfCached: true, staleIfError: null,
  });
  assert.equal(P.requestDirectives('stale-if-error=30', undefined).staleIfError, 30_000);
  assert.equal(P.requestDirectives(undefined, 'no-cache').noCache, true);
  assert.equal(P.requestDirectives('max-age=5', 'no-cache').noCache, false);
  assert.equal(P.requestDirectives('max-stale=abc', undefined).maxStale, null);
  assert.equal(P.requestDirectives('max-age=-1', undefined).maxAge, 0);
});

test('invalidation targets (§4.4): Location / Content-Location of the same host only', () => {
  assert.deepEqual(P.invalidatedPaths(['location', '/users/2', 'content-location', 'http://API.example.com/users/3?x'], 'api.example.com', '/users'), ['/users/2', '/users/3']);
  assert.deepEqual(P.invalidatedPaths(['location', 'http://evil.example/users/2'], 'api.example.com', '/users'), []);
  assert.deepEqual(P.invalidatedPaths(['location', 'child'], 'api.example.com', '/users/'), ['/users/child']);
  assert.deepEqual(P.invalidatedPaths(['location', 'http://[bad'], 'api.example.com', '/'), []);
  assert.deepEqual(P.invalidatedPaths(['location', 'mailto:a@b'], 'api.example.com', '/'), []);
});

test('one byte range (RFC 9110 §14.1.2) and If-Range (§13.1.5): forms, bounds, several ranges and garbage are none', () => {
  assert.deepEqual(P.singleRange('bytes=2-5', 10), [2, 5]);
  assert.deepEqual(P.singleRange(' Bytes = 2 - ', 10), [2, 9]);
  assert.deepEqual(P.singleRange('bytes=-3', 10), [7, 9]);
  assert.deepEqual(P.singleRange('bytes=-30', 10), [0, 9]);
  assert.deepEqual(P.singleRange('bytes=8-999999999999999', 10), [8, 9]);
  for (const v of ['bytes=-0', 'bytes=10-', 'bytes=5-2', 'bytes=0-1,3-4', 'items=0-1', 'bytes=', 'bytes=-', 'bytes=1234567890123456-', 'bytes=a-b']) assert.equal(P.singleRange(v, 10), null, v);
  assert.equal(P.singleRange('bytes=0-', 0), null);
  const f = P.freshness(['etag', '"e1"', 'last-modified', date(T0 - 60_000)], T0, T0, opts());
  assert.equal(P.ifRangeHolds(undefined, f), true);
  assert.equal(P.ifRangeHolds('"e1"', f), true);
  assert.equal(P.ifRangeHolds('W/"e1"', f), false);
  assert.equal(P.ifRangeHolds('"e2"', f), false);
  assert.equal(P.ifRangeHolds(date(T0 - 60_000), f), true);
  assert.equal(P.ifRangeHolds(date(T0), f), false);
  assert.equal(P.ifRangeHolds('garbage', f), false);
  const weak = P.freshness(['etag', 'W/"e1"'], T0, T0, opts());
  assert.equal(P.ifRangeHolds('W/"e1"', weak), false);
});
