/**
 * The recommender against worked examples (docs/scaling.md). Every expected number is worked out
 * by hand in the comments. The clock is a number the test moves: no timers, no sleeps.
 * Unless a test says otherwise: target concurrency 10 x utilisation 0.7 = 7 in flight per
 * replica, windows 60 s / 6 s, one sample a second, and the scaler applies each decision at
 * once (the next decision's current is this one's desired).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_POLICY, Recommender, validatePolicy, type Recommendation, type Sample, type ScalingPolicy } from './recommender.js';

// (tolerance 0: the worked examples count every step of the window; the tolerance has its own test)
const POLICY: ScalingPolicy = { ...DEFAULT_POLICY, targetConcurrency: 10, minReplicas: 1, maxReplicas: 20, tolerance: 0 };

/** The sample of second t: concurrency c, 100 ms mean latency (so rps = 10c), unless `extra` says otherwise. */
const sample = (t: number, c: number, extra: Partial<Sample> = {}): Sample => ({
  at: t * 1000, concurrency: c, rps: c * 10, latencyMeanMs: 100, latencyP95Ms: 150, errorRate: 0, ...extra,
});

type Load = number | [number, Partial<Sample>];

function sim(over: Partial<ScalingPolicy>, current: number) {
  let now = 0;
  const r = new Recommender({ ...POLICY, ...over }, () => now);
  const decisions = new Map<number, Recommendation>();
  const s = {
    r,
    current,
    at(t: number) { now = t * 1000; },
    /** Second t: one sample, then one decision that the scaler applies. */
    step(t: number, load: Load): Recommendation {
      now = t * 1000;
      const [c, extra] = typeof load === 'number' ? [load, {}] : load;
      r.observe(sample(t, c, extra));
      const d = r.recommend(s.current);
      s.current = d.desired;
      decisions.set(t, d);
      return d;
    },
    run(from: number, to: number, load: (t: number) => Load): void {
      for (let t = from; t <= to; t++) s.step(t, load(t));
    },
    d(t: number): Recommendation { return decisions.get(t)!; },
    /** [second, new desired] whenever desired changed. */
    changes(): [number, number][] {
      const out: [number, number][] = [];
      let last = current;
      for (const [t, d] of decisions) if (d.desired !== last) out.push([t, (last = d.desired)]);
      return out;
    },
  };
  return s;
}

test('no samples yet: hold current, clamped to [min, max]', () => {
  const s = sim({ minReplicas: 2 }, 5);
  assert.equal(s.r.recommend(5).desired, 5);
  assert.match(s.r.recommend(5).reason, /^no samples in the stable window: hold current 5$/);
  assert.equal(s.r.recommend(50).desired, 20);
  assert.match(s.r.recommend(50).reason, /capped at max replicas -> 20/);
  assert.equal(s.r.recommend(0).desired, 2);
  // Samples older than the stable window count as none: one at 1 s, decided at 61 s (window (1 s, 61 s]).
  s.r.observe(sample(1, 70));
  s.at(61);
  assert.equal(s.r.recommend(4).desired, 4);
});

test('steady load: steady replicas', () => {
  // 21 in flight / 7 per replica = 3 replicas, every second for two minutes.
  const s = sim({}, 3);
  s.run(1, 120, () => 21);
  assert.deepEqual(s.changes(), []);
  const d = s.d(120);
  assert.equal(d.mode, 'stable');
  assert.equal(d.reason, 'stable window: concurrency 21.0 / (10 x 0.7) -> 3');
  // rps 210 x 0.1 s = 21: Little's law agrees with the measured concurrency.
  assert.deepEqual([d.stableConcurrency, d.panicConcurrency, d.littleConcurrency], [21, 21, 21]);
  // Bounded memory: 120 samples seen, the stable window's 60 kept; 30 s of stabilisation history.
  const inside = s.r as unknown as { samples: unknown[]; history: unknown[] };
  assert.deepEqual([inside.samples.length, inside.history.length], [60, 30]);
});

test('3x step: panic and a fast scale-up; panic ends one stable window after its condition last held', () => {
  const s = sim({}, 3);
  s.run(1, 60, () => 21); // 3 replicas
  s.run(61, 130, () => 63);
  // k seconds into the step, the stable window holds (60 - k) x 21 + k x 63 -> mean 21 + 0.7k,
  // the panic window (6 samples) (6 - k) x 21 + k x 63 -> mean 21 + 7k, i.e. 3 + k replicas' worth.
  // 61 s: stable 21.7 / 7 = 3.1 -> 4; panic 4 / current 3 = 1.33 < 2.  -> 4 (stable)
  // 62 s: stable 22.4 -> 4; panic 5 / 4 = 1.25.  63 s: 6 / 4 = 1.5.  64 s: 7 / 4 = 1.75.  -> 4
  // 65 s: panic 56 / 7 = 8 replicas, 8 / 4 = 2 >= 2: panic -> max(8, stable 24.5 / 7 -> 4) = 8
  // 66 s: panic window all 63 -> 9 (9 / 8 < 2, but panic lasts) -> 9
  assert.deepEqual(s.changes(), [[61, 4], [65, 8], [66, 9]]);
  assert.equal(s.d(64).mode, 'stable');
  assert.equal(s.d(65).mode, 'panic');
  assert.equal(s.d(65).reason, 'panic: concurrency 56.0 over 6 s / (10 x 0.7) -> 8, stable window -> 4');
  assert.equal(s.d(65).panicConcurrency, 56);
  assert.equal(s.d(65).stableConcurrency, 24.5);
  // The stable window alone would need until 120 s to reach 63 / 7 = 9.
  // The panic condition last held at 65 s: panic until 124 s, stable from 65 + 60 = 125 s, still 9.
  assert.equal(s.d(124).mode, 'panic');
  assert.equal(s.d(125).mode, 'stable');
  assert.equal(s.d(125).desired, 9);
});

test('a spike that ends: no scale-down in panic, then stabilisation, cooldown and halving bring it back', () => {
  const s = sim({}, 3);
  s.run(1, 60, () => 21);
  s.run(61, 70, () => 63); // as above: 4 at 61 s, panic and 8 at 65 s, 9 at 66 s
  s.run(71, 200, () => 21);
  // 71..124 s: panic (condition last held at 65 s): never below the panic peak 9, though demand falls.
  assert.equal(s.d(100).mode, 'panic');
  assert.match(s.d(100).reason, /no scale-down in panic -> 9$/);
  // 125 s: stable; window (65, 125] = 5 x 63 + 55 x 21 = 1470 -> 24.5 / 7 = 3.5 -> 4, but the stabilisation
  // window (95, 125] holds the panic's 9s -> 9. The window's 4 lasts to 129 s ((69, 129]: 63 + 59 x 21 = 21.7 -> 4),
  // from 130 s it says 3.
  assert.equal(s.d(125).desired, 9);
  assert.match(s.d(125).reason, /^stable window: concurrency 24\.5 \/ \(10 x 0\.7\) -> 4; stabilisation: max over 30 s -> 9$/);
  // 154 s: (124, 154] has no 9 any more: max 4 (>= floor(9 / 2) = 4) -> 4.
  // 159 s: (129, 154] all 3, but the change at 154 s is 5 s old (scale-down cooldown 30 s) -> hold 4 until 184 s -> 3.
  assert.deepEqual(s.changes(), [[61, 4], [65, 8], [66, 9], [154, 4], [184, 3]]);
  assert.match(s.d(170).reason, /cooldown: last change 16 s ago, scale-down waits 30 s -> 4$/);
});

test('slow decline: at most halving per decision, after the cooldown, to the max of the stabilisation window', () => {
  const s = sim({}, 10);
  s.run(1, 60, () => 70); // 70 / 7 = 10 replicas
  s.run(61, 240, () => 7);
  // k seconds after the drop to 7 the stable window's mean is (70 (60 - k) + 7k) / 60 = 70 - 1.05k:
  // a slow decline, 10 - 0.15k replicas' worth. Window recommendation ceil(10 - 0.15k):
  //   k <= 6 (66 s): 10;  k = 7 (67 s): 8.95 -> 9;  k = 36 (96 s): 4.6 -> 5;  k = 37 (97 s): 4.45 -> 5;  k >= 60: 1.
  // 96 s: stabilisation window (66, 96] -> max is 67 s's 9 -> 9 (the first step down; before, a 10 is in the window).
  // 126 s: (96, 126] -> max 97 s's 5; 30 s since the change at 96 s; floor(9 / 2) = 4 <= 5 -> 5.
  // 156 s: (126, 156] all 1; halving -> floor(5 / 2) = 2.   186 s: floor(2 / 2) = 1.
  assert.deepEqual(s.changes(), [[96, 9], [126, 5], [156, 2], [186, 1]]);
  assert.match(s.d(95).reason, /stabilisation: max over 30 s -> 10$/);
  assert.match(s.d(125).reason, /; stabilisation: max over 30 s -> 5; cooldown: last change 29 s ago, scale-down waits 30 s -> 9$/);
  assert.match(s.d(156).reason, /scale-down limited to halving -> 2$/);
  for (const [t, d] of [[96, 9], [126, 5], [156, 2], [186, 1]] as const) assert.ok(d >= Math.floor(s.d(t).current / 2), `${t}`);
});

test('flapping load: no oscillation of desired, thanks to stabilisation', () => {
  // 21 steady for 60 s (3 replicas), then 35 / 7 alternating every 5 s (mean 21). A 60 s window of the
  // square wave alone holds 30 high and 30 low (mean 21 -> 3); while it still holds the start of the wave
  // it has up to 5 more highs: 21 + 5 x 14 / 60 = 22.2 -> 3.2 -> 4. So the stable window says 4 for most of
  // 61..119 s (3 at 70, 80, ..., 110 s, where highs and lows balance) and 3 from 120 s (the last 4: 119 s).
  // Panic never: at most 5 highs + 1 low in 6 s = 30.3 / 7 = 4.3 replicas' worth, < 2 x 3.
  const load = (t: number) => (t <= 60 ? 21 : Math.floor((t - 61) / 5) % 2 === 0 ? 35 : 7);
  const s = sim({}, 3);
  s.run(1, 240, load);
  // Up once at 61 s; the 3s at 70..110 s are held by the 4s of the last 30 s; down once when (119, 149] is all 3.
  assert.deepEqual(s.changes(), [[61, 4], [149, 3]]);
  assert.match(s.d(70).reason, /^stable window: concurrency 21\.0 \/ \(10 x 0\.7\) -> 3; stabilisation: max over 30 s -> 4$/);
  assert.ok([...Array(240).keys()].every((i) => s.d(i + 1).mode === 'stable'));
  // Without stabilisation and cooldown the same load flips 4 <-> 3 around every 10 s.
  const bare = sim({ scaleDownStabilizationMs: 0, scaleDownCooldownMs: 0 }, 3);
  bare.run(1, 240, load);
  assert.deepEqual(bare.changes().slice(0, 5), [[61, 4], [70, 3], [71, 4], [80, 3], [81, 4]]);
});

test('SLO guard: no scale-down while p95 is above the SLO; it never raises desired itself', () => {
  const s = sim({ sloP95Ms: 300, scaleDownCooldownMs: 0, scaleDownStabilizationMs: 0 }, 10);
  for (let t = 1; t <= 60; t++) s.r.observe(sample(t, 7, { latencyP95Ms: 420 }));
  s.at(60);
  // 7 / 7 = 1 replica; halving allows 5; but the panic window's p95 is 420 ms > 300 ms -> hold 10.
  let d = s.r.recommend(10);
  assert.equal(d.desired, 10);
  assert.equal(d.reason, 'stable window: concurrency 7.0 / (10 x 0.7) -> 1; held by SLO guard: p95 420 ms > 300 ms -> 10');
  // Six seconds at p95 250 ms fill the panic window: the guard lets go, halving -> 5.
  for (let t = 61; t <= 66; t++) s.r.observe(sample(t, 7, { latencyP95Ms: 250 }));
  s.at(66);
  d = s.r.recommend(10);
  assert.equal(d.desired, 5);
  assert.match(d.reason, /scale-down limited to halving -> 5$/);
  // A high p95 (and error rate) at low load does not add replicas: 3.5 / 7 = 0.5 -> 1.
  const low = sim({ sloP95Ms: 300 }, 1);
  low.run(1, 60, () => [3.5, { latencyP95Ms: 900, errorRate: 0.9 }]);
  assert.deepEqual(low.changes(), []);
});

test('error guard: no scale-up while the upstream error rate is above the limit', () => {
  const s = sim({}, 3);
  s.run(1, 60, () => [21, { errorRate: 0.6 }]); // failing, but 3 replicas carry the load: no change
  s.run(61, 63, () => [63, { errorRate: 0.6 }]);
  s.run(64, 64, () => 63);
  // 61 s: stable 21.7 -> 4, but 60% > 50% of requests fail -> hold 3.  62 s: 22.4 -> 4 -> hold.
  // 63 s: panic (42 / 7 = 6 replicas' worth = 2 x 3) -> 6 -> hold 3 (still panic mode).
  // 64 s: panic window (58, 64]: 59..60 at 210 rps, 61..63 at 630 rps all 60% errors, 64 at 630 rps none:
  //   (2 x 126 + 3 x 378) / (420 + 2520) = 1386 / 2940 = 47% -> free; panic 49 / 7 = 7 -> 7.
  assert.equal(s.d(61).desired, 3);
  assert.equal(s.d(61).reason, 'stable window: concurrency 21.7 / (10 x 0.7) -> 4; held by error guard: error rate 60% > 50% -> 3');
  assert.equal(s.d(62).desired, 3);
  assert.deepEqual([s.d(63).desired, s.d(63).mode], [3, 'panic']);
  assert.match(s.d(63).reason, /^panic: .* -> 6, .*; held by error guard: error rate 60% > 50% -> 3$/);
  assert.equal(s.d(64).desired, 7);
});

test('min / max clamps and the scale-up rate', () => {
  // 700 in flight = 100 replicas' worth (panic: 100 / 20 >= 2) -> capped at 20.
  const big = sim({}, 20);
  big.run(1, 10, () => 700);
  assert.equal(big.d(10).desired, 20);
  assert.match(big.d(10).reason, /; capped at max replicas -> 20$/);
  // 0.5 in flight -> 1 replica, raised to min 2.
  const small = sim({ minReplicas: 2 }, 2);
  small.run(1, 60, () => 0.5);
  assert.deepEqual(small.changes(), []);
  assert.match(small.d(60).reason, /; raised to min replicas -> 2$/);
  // Scale-up rate 2: 70 in flight wants 10 from 2: 4 (ceil(2 x 2)), then 8, then 10.
  const rate = sim({ maxScaleUpRate: 2 }, 2);
  rate.run(1, 3, () => 70);
  assert.deepEqual(rate.changes(), [[1, 4], [2, 8], [3, 10]]);
  assert.match(rate.d(1).reason, /scale-up limited to 2x per decision -> 4$/);
});

test('scale to zero after a stable window without traffic, and back from zero', () => {
  const s = sim({ minReplicas: 0 }, 1);
  s.run(1, 99, () => 0);
  // Quiet since the first sample (1 s): 0 from 61 s (60 s without traffic); the 1s the window said before
  // stay in the stabilisation window until (60, 90] -> 0 at 90 s (floor(1 / 2) = 0 allows it).
  assert.match(s.d(60).reason, /^no traffic, not yet for a full stable window \(60 s\) -> 1$/);
  assert.match(s.d(61).reason, /^no traffic in the stable window \(60 s\) -> 0; stabilisation: max over 30 s -> 1$/);
  assert.deepEqual(s.changes(), [[90, 0]]);
  // Traffic returns at 100 s; with no replica every request fails (error rate 1): the error guard does not
  // apply at zero. Stable window (40, 100]: 35 / 60 = 0.58 -> at least 1; panic 35 / 6 = 5.8 -> 0.8 < 2 x max(1, 0).
  s.step(100, [35, { errorRate: 1 }]);
  // 101 s: panic 70 / 6 = 11.7 -> 1.7 / 1 < 2 -> 1.  102 s: 105 / 6 = 17.5 -> 2.5 / 1 >= 2: panic, ceil(2.5) = 3.
  s.run(101, 102, () => 35);
  assert.deepEqual(s.changes(), [[90, 0], [100, 1], [102, 3]]);
  assert.equal(s.d(100).reason, 'stable window: concurrency 0.6 / (10 x 0.7) -> 1');
  assert.equal(s.d(102).mode, 'panic');
  // With min 1 the same quiet never goes below 1.
  const one = sim({}, 1);
  one.run(1, 200, () => 0);
  assert.deepEqual(one.changes(), []);
});

test("Little's law: the fallback when concurrency is missing, a cross-check otherwise", () => {
  // No concurrency measured: 200 rps x 0.105 s = 21 in flight -> 3.
  const s = sim({}, 3);
  s.run(1, 60, () => [0, { rps: 200, latencyMeanMs: 105 }]);
  assert.deepEqual(s.changes(), []);
  assert.equal(s.d(60).reason, "stable window: concurrency 21.0 (Little's law: rps x latency) / (10 x 0.7) -> 3");
  assert.deepEqual([s.d(60).stableConcurrency, s.d(60).littleConcurrency], [21, 21]);
  // Measured concurrency 21 wins over Little's 100 rps x 0.1 s = 10 (reported only).
  const m = sim({}, 3);
  m.run(1, 60, () => [21, { rps: 100 }]);
  assert.deepEqual([m.d(60).desired, m.d(60).stableConcurrency, m.d(60).littleConcurrency], [3, 21, 10]);
});

test('deterministic: the same samples and clock give the same decisions', () => {
  const load = (t: number): Load => [t % 7 === 0 ? 80 : 12 + (t % 5), { latencyP95Ms: 100 + t, errorRate: (t % 3) / 10 }];
  const a = sim({ sloP95Ms: 200 }, 2);
  const b = sim({ sloP95Ms: 200 }, 2);
  a.run(1, 300, load);
  b.run(1, 300, load);
  for (let t = 1; t <= 300; t++) assert.deepEqual(a.d(t), b.d(t));
});

test('validatePolicy reports invalid policies; the constructor refuses them', () => {
  assert.deepEqual(validatePolicy(POLICY), []);
  assert.deepEqual(validatePolicy({ targetConcurrency: 10, minReplicas: 0, maxReplicas: 1 }), []); // defaults fill the rest
  assert.deepEqual(validatePolicy({}), ['target concurrency is required', 'min replicas is required', 'max replicas is required']);
  assert.deepEqual(validatePolicy({ ...POLICY, panicWindowMs: 60_000 }), ['panic window (60 s) must be shorter than the stable window (60 s)']);
  assert.deepEqual(validatePolicy({
    ...POLICY, targetConcurrency: 0, targetUtilization: 1.5, minReplicas: 5, maxReplicas: 3, panicThreshold: 0.5,
    maxScaleDownRate: 0.5, scaleDownCooldownMs: -1, sloP95Ms: 0, maxErrorRate: 2, stableWindowMs: NaN,
  }), [
    'target concurrency must be > 0 (got 0)',
    'target utilization must be in (0, 1] (got 1.5)',
    'stable window must be > 0 ms (got NaN)',
    'panic threshold must be >= 1 (got 0.5)',
    'max scale-down rate must be > 1 (got 0.5)',
    'scale-down cooldown must be >= 0 ms (got -1)',
    'SLO p95 must be > 0 ms (got 0)',
    'max error rate must be in [0, 1] (got 2)',
    'max replicas (3) must be at least min replicas (5)',
  ]);
  // a rate of 1 would never scale up (or down): refused, as Knative does
  assert.deepEqual(validatePolicy({ ...POLICY, maxScaleUpRate: 1, maxScaleDownRate: 1 }), ['max scale-up rate must be > 1 (got 1)', 'max scale-down rate must be > 1 (got 1)']);
  assert.deepEqual(validatePolicy({ ...POLICY, minReplicas: 1.5, maxReplicas: 0 }), [
    'min replicas must be an integer >= 0 (got 1.5)',
    'max replicas must be an integer >= 1 (got 0)',
    'max replicas (0) must be at least min replicas (1.5)',
  ]);
  assert.throws(() => new Recommender({ ...POLICY, panicWindowMs: 90_000 }, () => 0), /invalid scaling policy: panic window \(90 s\) must be shorter/);
});

/** Like sim, but the scaler applies each decision `lag` seconds late (0: at once, as sim). */
function lagged(over: Partial<ScalingPolicy>, start: number, lag: number, load: (t: number) => number, seconds: number) {
  let now = 0;
  const r = new Recommender({ ...POLICY, ...over }, () => now);
  const applied: number[] = [];
  const desired: number[] = [];
  for (let t = 1; t <= seconds; t++) {
    now = t * 1000;
    r.observe(sample(t, load(t)));
    // The decision of second k (desired[k - 1]) runs from second k + 1 + lag.
    const current = t - lag - 2 >= 0 ? desired[t - lag - 2]! : start;
    applied.push(current);
    desired.push(r.recommend(current).desired);
  }
  const changes = desired.filter((d, i) => d !== (i === 0 ? start : desired[i - 1]));
  return { desired, applied, changes };
}

test('a scaler that applies decisions late: cooldowns and guards hold at the last decision, so the lag never undoes one', () => {
  // 10 running, no traffic: one step to 5 after the 30 s cooldown, then 2, then 1 (min), each 30 s apart.
  const idle = lagged({}, 10, 3, () => 0, 400);
  const instant = lagged({}, 10, 0, () => 0, 400);
  assert.deepEqual(idle.changes, instant.changes);
  assert.deepEqual(idle.changes, [5, 2, 1]);
  // Noisy load around 3 replicas' worth, with a burst: as few changes late as applied at once.
  const load = (t: number) => (t > 100 && t <= 130 ? 60 : 21 + ((t * 7) % 5) - 2);
  const late = lagged({}, 3, 3, load, 400);
  const now = lagged({}, 3, 0, load, 400);
  assert.ok(late.changes.length <= now.changes.length + 2, `late ${late.changes.length} vs ${now.changes.length}: ${late.changes.join(',')}`);
  assert.ok(late.changes.length <= 8, late.changes.join(','));
});

test('a clock that steps back an hour: no cooldown of an hour, no sample stuck in the windows', () => {
  let now = 0;
  const r = new Recommender({ ...POLICY, scaleUpCooldownMs: 5000 }, () => now);
  let current = 3;
  for (let t = 1; t <= 60; t++) {
    now = t * 1000;
    r.observe(sample(t, 21));
    current = r.recommend(current).desired;
  }
  assert.equal(current, 3);
  // The clock jumps back 3600 s; the load triples. Scale-up within the 5 s cooldown at most.
  const back = 60_000 - 3_600_000;
  let d = r.recommend(current);
  for (let k = 1; k <= 8; k++) {
    now = back + k * 1000;
    r.observe({ ...sample(0, 63), at: now });
    d = r.recommend(current);
    current = d.desired;
  }
  assert.ok(current >= 9, `${current}: ${d.reason}`);
  assert.doesNotMatch(d.reason, /cooldown: last change -/);
  // The samples of before the step left the windows: the stable window holds only the new ones.
  assert.equal(d.stableConcurrency, 63);
});

test('error guard: a failing service stays held when its clients give up (no scale-up for a dead upstream)', () => {
  // A hanging upstream behind a 3 s timeout: 20 clients in flight, every request a 504.
  const s = sim({}, 1);
  s.run(1, 60, () => [20, { rps: 20 / 3, latencyMeanMs: 3000, latencyP95Ms: 3000, errorRate: 1 }]);
  assert.deepEqual(s.changes(), []);
  assert.match(s.d(60).reason, /held by error guard: error rate 100% > 50% -> 1$/);
  // The clients stop: the panic window empties, the stable window still holds the failed demand.
  s.run(61, 200, () => 0);
  assert.deepEqual(s.changes(), [], s.changes().map(([t]) => `${t}: ${s.d(t).reason}`).join('\n'));
});

test('tolerance (default 10%, as the HPA): steady load a few percent around a boundary does not flap', () => {
  // 21 in flight is exactly 3 replicas' worth; 90 s at +5% (22.05 -> 3.15 -> 4 without tolerance), 90 s at -5%.
  const load = (t: number) => (Math.floor(t / 90) % 2 === 0 ? 22.05 : 19.95);
  const bare = sim({ tolerance: 0 }, 3);
  bare.run(1, 600, load);
  assert.ok(bare.changes().length >= 4, JSON.stringify(bare.changes()));
  const s = sim({ tolerance: 0.1 }, 3);
  s.run(1, 600, load);
  assert.deepEqual(s.changes(), []);
  assert.match(s.d(80).reason, /^stable window: concurrency 22\.0 \/ \(10 x 0\.7\) -> 4; within tolerance 10% of 3 -> 3$/);
  // Beyond it, the count moves: 24.5 = 3.5 replicas' worth, 17% over 3 -> 4 (once the window's mean passes 3.3).
  s.run(601, 700, () => 24.5);
  assert.equal(s.changes()[0]?.[1], 4);
  assert.match(s.d(700).reason, /^stable window: concurrency 24\.5 \/ \(10 x 0\.7\) -> 4$/);
  assert.deepEqual(validatePolicy({ ...POLICY, tolerance: 1 }), ['tolerance must be in [0, 1) (got 1)']);
});

test('infinite inputs read as the most, never as idle', () => {
  // Concurrency that overflowed: max replicas (panic), not 0.
  const a = sim({ minReplicas: 0 }, 2);
  a.run(1, 3, () => Infinity);
  assert.equal(a.d(3).desired, 20);
  // rps Infinity (no concurrency measured): Little's law with it is as much, not 0 x anything.
  const b = sim({ minReplicas: 0 }, 2);
  b.run(1, 3, () => [0, { rps: Infinity, latencyMeanMs: 100 }]);
  assert.equal(b.d(3).desired, 20);
  // Infinity running: max, held (no samples), not 0.
  const c = sim({ minReplicas: 0 }, 2);
  assert.deepEqual([c.r.recommend(Infinity).current, c.r.recommend(Infinity).desired], [20, 20]);
  // NaN and negatives still read 0.
  const d = sim({}, 3);
  d.run(1, 60, () => [NaN, { rps: -5 }]);
  assert.ok(Number.isFinite(d.d(60).desired));
});
