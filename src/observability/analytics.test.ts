/** Analytics with an injected clock: percentile accuracy, exact counts, sliding windows, top-K, bounded cells, cross-process merge, filters, clock jumps. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Analytics, type AnalyticsOptions, type AnalyticsState, type Stats, type WindowName } from './analytics.js';

const T0 = Date.UTC(2025, 0, 15, 12, 0, 2); // 2 s into a 5 s slot, on purpose
const WINDOWS: WindowName[] = ['1m', '1h', '24h'];
const QS = [['p50_ms', 0.5], ['p90_ms', 0.9], ['p95_ms', 0.95], ['p99_ms', 0.99]] as const;

function setup(opts: AnalyticsOptions = {}) {
  let now = T0;
  const a = new Analytics({ ...opts, now: () => now });
  return { a, advance: (ms: number) => (now += ms), at: (t: number) => (now = t) };
}

/** mulberry32: a small seeded PRNG, so that samples are the same on every run. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
/** Log-normal latency (ms) with median e^mu, by Box-Muller. */
const logNormal = (rand: () => number, mu: number, sigma: number): number =>
  Math.exp(mu + sigma * Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand()));

/** Nearest-rank percentile. */
function exact(values: number[], q: number): number {
  const sorted = [...values].sort((x, y) => x - y);
  return sorted[Math.ceil(q * sorted.length) - 1]!;
}

function assertPercentiles(s: Stats, values: number[], label: string): void {
  assert.equal(s.requests, values.length, `${label}: requests`);
  for (const [key, q] of QS) {
    const want = exact(values, q);
    const got = s[key];
    const ok = got !== null && (want === 0 ? got === 0 : Math.abs(got - want) / want <= 0.02);
    assert.ok(ok, `${label} ${key}: sketch ${got} vs exact ${want}`);
  }
}

const ROUTES = [
  { route: 'orders', service: 'shop', mu: Math.log(20), sigma: 0.8 },
  { route: 'search', service: 'catalog', mu: Math.log(80), sigma: 1.2 },
  { route: 'login', service: 'auth', mu: Math.log(5), sigma: 0.5 },
];

function push(m: Map<string, number[]>, key: string, ...v: number[]): void {
  const values = m.get(key);
  if (values === undefined) m.set(key, v);
  else values.push(...v);
}

/** Records n requests spaced by stepMs over ROUTES and 3 consumers; returns the durations recorded per route, per consumer, and all. */
function recordSample(a: Analytics, advance: (ms: number) => void, seed: number, n: number, stepMs: number) {
  const rand = rng(seed);
  const byRoute = new Map<string, number[]>();
  const byConsumer = new Map<string, number[]>();
  const all: number[] = [];
  for (let k = 0; k < n; k++) {
    const r = ROUTES[Math.floor(rand() * ROUTES.length)]!;
    const consumer = `team-${Math.floor(rand() * 3)}`;
    const ms = logNormal(rand, r.mu, r.sigma);
    a.record(r.route, r.service, consumer, 200, ms);
    all.push(ms);
    push(byRoute, r.route, ms);
    push(byConsumer, consumer, ms);
    advance(stepMs);
  }
  return { byRoute, byConsumer, all };
}

function assertReport(report: ReturnType<Analytics['report']>, sample: ReturnType<typeof recordSample>): void {
  assertPercentiles(report.total, sample.all, `${report.window} total`);
  assert.equal(report.routes.length, ROUTES.length);
  for (const r of report.routes) assertPercentiles(r, sample.byRoute.get(r.route)!, `${report.window} ${r.route}`);
  for (const c of report.consumers) assertPercentiles(c, sample.byConsumer.get(c.consumer)!, `${report.window} ${c.consumer}`);
}

test('acceptance: percentiles within 2% relative error of exact percentiles on a recorded sample, per route and total, for each window', () => {
  const { a, advance } = setup();
  const sample = recordSample(a, advance, 42, 20_000, 2.5); // 50 s: in every window, across 11 rolled-up 5 s slots
  for (const w of WINDOWS) assertReport(a.report(w), sample);
});

test('acceptance over rolled-up and frozen coarse slots: 20,000 requests over 50 minutes', () => {
  const { a, advance } = setup();
  const sample = recordSample(a, advance, 7, 20_000, 150);
  for (const w of ['1h', '24h'] as const) assertReport(a.report(w), sample);
});

test('counts, errors, client errors, error rate and rps are exact', () => {
  const { a, advance } = setup();
  const mix = [...Array<number>(37).fill(200), ...Array<number>(5).fill(404), ...Array<number>(3).fill(502)];
  for (const status of mix) {
    a.record('orders', 'shop', 'acme', status, 12);
    advance(100);
  }
  for (const [w, seconds] of [['1m', 60], ['1h', 3600], ['24h', 86_400]] as const) {
    const { total, routes, consumers } = a.report(w);
    for (const s of [total, routes[0]!, consumers[0]!]) {
      assert.equal(s.requests, 45);
      assert.equal(s.errors, 3);
      assert.equal(s.client_errors, 5);
      assert.equal(s.error_rate, 3 / 45);
      assert.equal(s.rps, 45 / seconds);
    }
  }
  const empty = new Analytics({ now: () => T0 }).report('1m').total;
  assert.deepEqual(empty, { requests: 0, errors: 0, client_errors: 0, error_rate: 0, rps: 0, p50_ms: null, p90_ms: null, p95_ms: null, p99_ms: null });
});

test('sliding windows: requests drop out of a window once their slot leaves (now - window, now], even with no record since', () => {
  const { a, at } = setup();
  for (let k = 0; k < 10; k++) a.record('orders', 'shop', null, 200, 10);
  const requests = (w: WindowName) => a.report(w).total.requests;

  at(Date.UTC(2025, 0, 15, 12, 0, 59, 999)); // the 12:00:00 slot still starts in the last minute
  assert.equal(a.report('1m').from, '2025-01-15T12:00:00.000Z');
  assert.equal(requests('1m'), 10);
  at(Date.UTC(2025, 0, 15, 12, 1, 0));
  assert.equal(a.report('1m').from, '2025-01-15T12:00:05.000Z');
  assert.equal(requests('1m'), 0);

  at(T0 + 61_000);
  assert.equal(requests('1m'), 0);
  assert.equal(a.report('1m').total.p50_ms, null);
  assert.equal(requests('1h'), 10);
  assert.equal(requests('24h'), 10);
  a.record('orders', 'shop', null, 200, 10);
  assert.deepEqual(WINDOWS.map(requests), [1, 11, 11]);

  at(T0 + 61 * 60_000);
  assert.deepEqual(WINDOWS.map(requests), [0, 0, 11]);
  at(T0 + 23 * 3_600_000);
  assert.equal(requests('24h'), 11);
  at(T0 + 25 * 3_600_000);
  assert.deepEqual(WINDOWS.map(requests), [0, 0, 0]);
  assert.deepEqual(a.report('24h').routes, []);
});

test('top-K consumers: ordered by requests, limited by top, anonymous not counted', () => {
  const { a } = setup();
  for (const [consumer, n] of [['a', 5], ['b', 3], ['c', 8], [null, 4]] as const) for (let k = 0; k < n; k++) a.record('orders', 'shop', consumer, 200, 10);
  const r = a.report('1h');
  assert.equal(r.total.requests, 20);
  assert.deepEqual(r.consumers.map((c) => [c.consumer, c.requests]), [['c', 8], ['a', 5], ['b', 3]]);
  assert.deepEqual(a.report('1h', { top: 2 }).consumers.map((c) => c.consumer), ['c', 'a']);
  assert.equal(a.report('1h', { top: 0 }).consumers.length, 0);
});

test('beyond maxConsumers / maxRoutes new keys go to "(other)"; cells per slot stay bounded', () => {
  const { a, advance } = setup({ maxConsumers: 3, maxRoutes: 2 });
  for (let k = 0; k < 10; k++) for (let n = 0; n <= k; n++) a.record(k < 2 ? 'r0' : `r${k}`, 'svc', `c${k}`, 200, 10);
  const r = a.report('1m', { top: 100 });
  assert.deepEqual(r.consumers.map((c) => [c.consumer, c.requests]), [['(other)', 49], ['c2', 3], ['c1', 2], ['c0', 1]]);
  assert.deepEqual(r.routes.map((x) => [x.route, x.service, x.requests]), [['(other)', '(other)', 49], ['r0', 'svc', 3], ['r2', 'svc', 3]]);
  assert.equal(r.total.requests, 55);

  // 1,000 consumers and 100 routes for 30 minutes: every slot of every window keeps at most max + 1 cells of each kind.
  let recorded = 55;
  for (let k = 0; k < 36_000; k++, recorded++) {
    a.record(`route-${k % 100}`, 'svc', `consumer-${k % 1000}`, 200, 1 + (k % 50));
    advance(50);
  }
  const state = a.state();
  for (const w of WINDOWS) {
    assert.ok(state.windows[w].length > 0);
    for (const slot of state.windows[w]) {
      assert.ok(slot.consumers.length <= 4, `${w} slot ${slot.i}: ${slot.consumers.length} consumer cells`);
      assert.ok(slot.routes.length <= 3, `${w} slot ${slot.i}: ${slot.routes.length} route cells`);
    }
  }
  const day = a.report('24h', { top: Infinity });
  assert.equal(day.total.requests, recorded);
  assert.equal(day.consumers.reduce((n, c) => n + c.requests, 0), recorded, 'overflow is counted, not lost');
});

test('state() survives JSON and Analytics.report merges processes: counts add up, percentiles from the merged sketches', () => {
  const p1 = setup();
  const p2 = setup();
  p2.advance(1_200); // the other process's clock is a little ahead
  const s1 = recordSample(p1.a, p1.advance, 1, 10_000, 5);
  const s2 = recordSample(p2.a, p2.advance, 2, 10_000, 5);
  for (const s of [p1.a, p2.a]) s.record('orders', 'shop', 'acme', 503, 0); // one zero duration each, one 5xx each
  const states = [p1.a.state(), p2.a.state()].map((s) => JSON.parse(JSON.stringify(s)) as AnalyticsState);

  const merged = { byRoute: new Map<string, number[]>(), byConsumer: new Map<string, number[]>(), all: [...s1.all, ...s2.all, 0, 0] };
  for (const key of ['byRoute', 'byConsumer'] as const) {
    for (const m of [s1[key], s2[key]]) for (const [k, v] of m) push(merged[key], k, ...v);
  }
  merged.byRoute.get('orders')!.push(0, 0);
  merged.byConsumer.set('acme', [0, 0]);
  for (const w of WINDOWS) {
    const r = Analytics.report(states, w, { top: 10 });
    assert.equal(r.to, new Date(T0 + 1_200 + 50_000).toISOString(), 'now defaults to the latest state');
    assert.equal(r.total.errors, 2);
    assertReport(r, merged);
    assert.deepEqual(Analytics.report([states[0]!], w), p1.a.report(w), 'a process report is the report of its state');
  }
  assert.throws(() => Analytics.report([states[0]!, { ...states[1]!, relativeAccuracy: 0.02 }], '1m'));
  // A state read later: its slots expire against the given now.
  assert.equal(Analytics.report(states, '1m', { now: T0 + 10 * 60_000 }).total.requests, 0);
  assert.equal(Analytics.report(states, '1h', { now: T0 + 10 * 60_000 }).total.requests, 20_002);
});

test('filter by route or by consumer', () => {
  const { a } = setup();
  a.record('orders', 'shop', 'acme', 200, 10);
  a.record('orders', 'shop-v2', 'acme', 500, 20);
  a.record('orders', 'shop', 'globex', 404, 30);
  a.record('search', 'catalog', 'globex', 200, 40);
  a.record('search', 'catalog', null, 200, 50);

  const byRoute = a.report('1h', { route: 'orders' });
  assert.deepEqual([byRoute.total.requests, byRoute.total.errors, byRoute.total.client_errors], [3, 1, 1]);
  assert.deepEqual(byRoute.routes.map((r) => [r.service, r.requests]), [['shop', 2], ['shop-v2', 1]]);
  assert.deepEqual(byRoute.consumers, []);

  const byConsumer = a.report('1h', { consumer: 'globex' });
  assert.deepEqual([byConsumer.total.requests, byConsumer.total.client_errors], [2, 1]);
  assert.deepEqual(byConsumer.consumers.map((c) => [c.consumer, c.requests]), [['globex', 2]]);
  assert.deepEqual(byConsumer.routes, []);

  assert.equal(a.report('1m', { route: 'nope' }).total.requests, 0);
  assert.equal(a.report('1m', { consumer: 'nope' }).total.p99_ms, null);
  assert.throws(() => a.report('1m', { route: 'orders', consumer: 'acme' }), RangeError);
  assert.throws(() => a.report('1w' as WindowName), RangeError);
});

test('clock jumps back or forward, odd durations: no crash, no negative numbers, no double counting', () => {
  const { a, at } = setup();
  const counts = () => WINDOWS.map((w) => a.report(w).total.requests);
  const assertSane = () => {
    for (const w of WINDOWS) {
      const { total, routes, consumers } = a.report(w);
      for (const s of [total, ...routes, ...consumers]) {
        for (const v of Object.values(s)) if (typeof v === 'number') assert.ok(Number.isFinite(v) && v >= 0, `${w}: ${JSON.stringify(s)}`);
      }
    }
    JSON.stringify(a.state());
  };
  for (const ms of [-5, NaN, Infinity, 0, 1e12, 3]) a.record('orders', 'shop', 'acme', 200, ms);
  assertSane();
  assert.equal(a.report('1m').total.p99_ms! <= 1e9 * 1.01, true);

  // Small step back across a slot boundary: still counted once.
  at(T0 + 3_500); // next 5 s slot
  a.record('orders', 'shop', 'acme', 200, 1);
  at(T0 + 2_000); // back 1.5 s, into the previous slot
  a.record('orders', 'shop', 'acme', 200, 1);
  assert.deepEqual(counts(), [8, 8, 8]);
  at(T0 + 20_000);
  assert.deepEqual(counts(), [8, 8, 8]);

  // Forward by three days: everything expired, then counted afresh.
  at(T0 + 3 * 86_400_000);
  assert.deepEqual(counts(), [0, 0, 0]);
  a.record('orders', 'shop', 'acme', 200, 1);
  assert.deepEqual(counts(), [1, 1, 1]);
  assertSane();

  // Back by two hours: the slots now in the future are dropped, not counted at the wrong time.
  at(T0 + 3 * 86_400_000 - 2 * 3_600_000);
  a.record('orders', 'shop', 'acme', 200, 1);
  a.record('orders', 'shop', 'acme', 200, 1);
  assert.deepEqual(counts(), [2, 2, 2]);
  assertSane();
  at(T0 + 3 * 86_400_000 + 10_000);
  assert.deepEqual(counts(), [0, 0, 2]);

  // Back by a year, then forward again.
  at(T0 - 365 * 86_400_000);
  a.record('orders', 'shop', 'acme', 200, 1);
  assert.deepEqual(counts(), [1, 1, 1]);
  at(T0 + 3 * 86_400_000);
  assert.deepEqual(counts(), [0, 0, 0]);
  assertSane();
});
