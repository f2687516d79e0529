/**
 * The scaling recommender (docs/scaling.md): a desired replica count for one service from the
 * samples the advisor feeds it, Knative-KPA style. Concurrency (time-weighted in-flight, or
 * Little's law rps x latency when that is missing) over a stable and a panic window, divided by
 * what one replica should carry; then scale-down stabilisation, the SLO and error guards,
 * cooldowns, rate limits and [min, max]. Pure and deterministic: the clock is injected, nothing
 * runs on its own, and the reason names the window, guard or bound that decided.
 */

export interface ScalingPolicy {
  /** In-flight requests one replica handles well (> 0). */
  targetConcurrency: number;
  /** 0 < u <= 1: aim replicas at u x targetConcurrency. */
  targetUtilization: number;
  /** >= 0 (0 allows scale to zero after a stable window without traffic). */
  minReplicas: number;
  /** >= max(1, minReplicas). */
  maxReplicas: number;
  stableWindowMs: number;
  /** Shorter than the stable window. */
  panicWindowMs: number;
  /** Panic when the panic window's demand (replicas, unrounded) / max(1, current) reaches it. */
  panicThreshold: number;
  /** desired <= ceil(max(1, current) x rate) per decision. */
  maxScaleUpRate: number;
  /** desired >= floor(current / rate) per decision (2: at most halve). */
  maxScaleDownRate: number;
  /** After a change, no scale-up for this long. */
  scaleUpCooldownMs: number;
  /** After a change, no scale-down for this long. */
  scaleDownCooldownMs: number;
  /** Scale down only to the highest recommendation of this window (HPA-style). */
  scaleDownStabilizationMs: number;
  /** Guard: no scale-down while the panic window's p95 is above it. */
  sloP95Ms?: number;
  /** Guard, 0..1 (default 0.5): no scale-up while the panic window's error rate is above it. */
  maxErrorRate?: number;
  /** 0 <= t < 1 (default 0.1, as the HPA): no change while the stable window's unrounded count is within t of the last decision. */
  tolerance?: number;
}

const DEFAULT_MAX_ERROR_RATE = 0.5;
const DEFAULT_TOLERANCE = 0.1;

export const DEFAULT_POLICY: Readonly<Omit<ScalingPolicy, 'targetConcurrency' | 'minReplicas' | 'maxReplicas'>> = Object.freeze({
  targetUtilization: 0.7,
  stableWindowMs: 60_000,
  panicWindowMs: 6_000,
  panicThreshold: 2,
  maxScaleUpRate: 1000,
  maxScaleDownRate: 2,
  scaleUpCooldownMs: 0,
  scaleDownCooldownMs: 30_000,
  scaleDownStabilizationMs: 30_000,
  maxErrorRate: DEFAULT_MAX_ERROR_RATE,
  tolerance: DEFAULT_TOLERANCE,
});

/** One observation (the advisor sends one per tick, every 1-2 s). */
export interface Sample {
  /** ms, on the recommender's clock. */
  at: number;
  /** Time-weighted mean in-flight requests over the sample's interval. */
  concurrency: number;
  /** The concurrency was measured (an in-flight gauge): 0 is 0, not "missing" (no Little's law fallback). */
  measured?: boolean;
  rps: number;
  latencyMeanMs: number;
  latencyP95Ms: number;
  /** 0..1: upstream errors + timeouts / requests. */
  errorRate: number;
}

export interface Recommendation {
  desired: number;
  current: number;
  mode: 'stable' | 'panic';
  /** Which window, guard or bound decided, e.g. "stable window: concurrency 23.4 / (10 x 0.7) -> 4; cooldown: ... -> 5". */
  reason: string;
  /** Mean concurrency over the stable window (Little's law where a sample has none). */
  stableConcurrency: number;
  /** Mean concurrency over the panic window. */
  panicConcurrency: number;
  /** Little's law, rps x mean latency (s), averaged over the stable window (a cross-check). */
  littleConcurrency: number;
}

const EPS = 1e-9;
/** The longest stable and scale-down stabilisation windows. */
export const MAX_WINDOW_MS = 3_600_000;

/** A problem with a policy, and the fields it is about (the first is the one to blame when it was set; a rule between two names both). */
export interface PolicyProblem {
  fields: readonly (keyof ScalingPolicy)[];
  message: string;
}

/** Problems with a policy (empty: fine). Fields left out take DEFAULT_POLICY; the three without a default are required. */
export function policyProblems(p: Partial<ScalingPolicy>): PolicyProblem[] {
  const problems: PolicyProblem[] = [];
  const v = <K extends keyof ScalingPolicy>(k: K): ScalingPolicy[K] | undefined => p[k] ?? (DEFAULT_POLICY as Partial<ScalingPolicy>)[k];
  const check = (field: keyof ScalingPolicy, name: string, ok: (x: number) => boolean, rule: string, required = true): void => {
    const x = v(field) as number | undefined;
    if (x === undefined) { if (required) problems.push({ fields: [field], message: `${name} is required` }); return; }
    if (typeof x !== 'number' || !Number.isFinite(x) || !ok(x)) problems.push({ fields: [field], message: `${name} must be ${rule} (got ${String(x)})` });
  };
  const int = Number.isInteger;
  check('targetConcurrency', 'target concurrency', (x) => x > 0, '> 0');
  check('targetUtilization', 'target utilization', (x) => x > 0 && x <= 1, 'in (0, 1]');
  check('minReplicas', 'min replicas', (x) => int(x) && x >= 0, 'an integer >= 0');
  check('maxReplicas', 'max replicas', (x) => int(x) && x >= 1, 'an integer >= 1');
  check('stableWindowMs', 'stable window', (x) => x > 0, '> 0 ms');
  check('panicWindowMs', 'panic window', (x) => x > 0, '> 0 ms');
  check('panicThreshold', 'panic threshold', (x) => x >= 1, '>= 1');
  // (1 would never scale up / down: Knative refuses it too)
  check('maxScaleUpRate', 'max scale-up rate', (x) => x > 1, '> 1');
  check('maxScaleDownRate', 'max scale-down rate', (x) => x > 1, '> 1');
  check('scaleUpCooldownMs', 'scale-up cooldown', (x) => x >= 0, '>= 0 ms');
  check('scaleDownCooldownMs', 'scale-down cooldown', (x) => x >= 0, '>= 0 ms');
  check('scaleDownStabilizationMs', 'scale-down stabilization', (x) => x >= 0, '>= 0 ms');
  check('sloP95Ms', 'SLO p95', (x) => x > 0, '> 0 ms', false);
  check('maxErrorRate', 'max error rate', (x) => x >= 0 && x <= 1, 'in [0, 1]', false);
  check('tolerance', 'tolerance', (x) => x >= 0 && x < 1, 'in [0, 1)', false);
  // The windows keep a sample (and a recommendation) per tick, each gone through every tick: a
  // window of 30d was 2.6 million samples a service and seconds of the event loop per tick.
  // Knative's stable window and the HPA's stabilisation window stop at an hour too.
  for (const [field, name] of [['stableWindowMs', 'stable window'], ['scaleDownStabilizationMs', 'scale-down stabilization']] as const) {
    const x = v(field);
    if (typeof x === 'number' && x > MAX_WINDOW_MS) problems.push({ fields: [field], message: `${name} must be at most 1 h (got ${secs(x)})` });
  }
  const [min, max, stable, panic] = [v('minReplicas'), v('maxReplicas'), v('stableWindowMs'), v('panicWindowMs')];
  if (min !== undefined && max !== undefined && max < min) problems.push({ fields: ['maxReplicas', 'minReplicas'], message: `max replicas (${max}) must be at least min replicas (${min})` });
  if (stable !== undefined && panic !== undefined && panic >= stable) problems.push({ fields: ['panicWindowMs', 'stableWindowMs'], message: `panic window (${secs(panic)}) must be shorter than the stable window (${secs(stable)})` });
  return problems;
}

/** Problems with a policy (empty: fine), as text. */
export function validatePolicy(p: Partial<ScalingPolicy>): string[] {
  return policyProblems(p).map((x) => x.message);
}

const secs = (ms: number): string => `${+(ms / 1000).toFixed(1)} s`;
const conc = (x: number): string => (x === 0 || x >= 0.1 ? x.toFixed(1) : x.toPrecision(2));
const pct = (x: number): string => `${+(x * 100).toFixed(1)}%`;
const round3 = (x: number): number => Math.round(x * 1000) / 1000;
/** Above any real figure; sums and products of a window of them stay finite. */
const HUGE = 1e9;
/** A figure of a sample: NaN and negatives read 0; +Infinity (an overflow: more than can be counted) reads HUGE, never idle. */
const clean = (x: number): number => (x > 0 ? Math.min(HUGE, x) : 0);
const little = (s: Sample): number => (s.rps * s.latencyMeanMs) / 1000;
/** The concurrency a sample stands for: measured, or by Little's law when it has none. */
const concurrencyOf = (s: Sample): number => (s.concurrency > 0 || s.measured === true ? s.concurrency : little(s));
const hasTraffic = (s: Sample): boolean => s.rps > 0 || s.concurrency > 0;
const mean = (xs: readonly Sample[], f: (s: Sample) => number): number => (xs.length === 0 ? 0 : xs.reduce((a, s) => a + f(s), 0) / xs.length);

export class Recommender {
  private readonly p: ScalingPolicy & { maxErrorRate: number; tolerance: number };
  /** Samples of the stable window, oldest first. */
  private samples: Sample[] = [];
  /** First sample of the current run without traffic (null: the last sample had traffic). */
  private quietSince: number | null = null;
  /** Last decision over the panic threshold (null: not in panic). */
  private lastOverAt: number | null = null;
  /** Highest desired count of the current panic (panic never scales down). */
  private panicPeak = 0;
  /** Window recommendations of the stabilisation window, oldest first. */
  private history: { at: number; raw: number }[] = [];
  private lastDesired: number | null = null;
  /** The last decision that asked for a new count (the start counts: no scale-down on a few seconds of data). */
  private lastChangeAt: number;

  constructor(policy: ScalingPolicy, private readonly clock: () => number) {
    const problems = validatePolicy(policy);
    if (problems.length > 0) throw new Error(`invalid scaling policy: ${problems.join('; ')}`);
    this.p = { ...policy, maxErrorRate: policy.maxErrorRate ?? DEFAULT_MAX_ERROR_RATE, tolerance: policy.tolerance ?? DEFAULT_TOLERANCE };
    this.lastChangeAt = clock();
  }

  observe(sample: Sample): void {
    if (!Number.isFinite(sample.at)) return;
    const s: Sample = {
      at: sample.at, concurrency: clean(sample.concurrency), rps: clean(sample.rps), latencyMeanMs: clean(sample.latencyMeanMs),
      latencyP95Ms: clean(sample.latencyP95Ms), errorRate: Math.min(1, clean(sample.errorRate)),
      ...(sample.measured === true ? { measured: true } : {}),
    };
    const last = this.samples[this.samples.length - 1];
    this.samples.push(s);
    if (last !== undefined && last.at > s.at) this.samples.sort((a, b) => a.at - b.at);
    if (hasTraffic(s)) this.quietSince = null;
    else this.quietSince ??= s.at;
    this.prune(Math.max(this.clock(), s.at));
  }

  /**
   * The clock went back (an injected wall clock stepped): times after now become now, and
   * samples dated after now leave (they would never leave the windows otherwise).
   */
  private rebase(now: number): void {
    if (this.lastChangeAt > now) this.lastChangeAt = now;
    if (this.quietSince !== null && this.quietSince > now) this.quietSince = now;
    if (this.lastOverAt !== null && this.lastOverAt > now) this.lastOverAt = now;
    const last = this.samples[this.samples.length - 1];
    if (last !== undefined && last.at > now) this.samples = this.samples.filter((s) => s.at <= now);
    this.history = this.history.filter((h) => h.at <= now);
  }

  /** Samples at or before now - stable window leave (the windows are (now - window, now]). */
  private prune(now: number): void {
    let i = 0;
    while (i < this.samples.length && this.samples[i]!.at <= now - this.p.stableWindowMs) i++;
    if (i > 0) this.samples = this.samples.slice(i);
  }

  recommend(currentReplicas: number): Recommendation {
    const p = this.p;
    const now = this.clock();
    // (+Infinity running: the most there can be, not none)
    const current = currentReplicas === Infinity ? this.p.maxReplicas : Number.isFinite(currentReplicas) ? Math.max(0, Math.round(currentReplicas)) : 0;
    this.rebase(now);
    this.prune(now);
    const stable = this.samples;
    if (stable.length === 0) {
      const r = this.finish(now, current, current, 'stable', `no samples in the stable window: hold current ${current}`);
      return { ...r, stableConcurrency: 0, panicConcurrency: 0, littleConcurrency: 0 };
    }

    // The windows.
    const perReplica = p.targetConcurrency * p.targetUtilization;
    const per = `(${p.targetConcurrency} x ${p.targetUtilization})`;
    const inPanic = stable.filter((s) => s.at > now - p.panicWindowMs);
    const recent = inPanic.length > 0 ? inPanic : stable;
    const stableC = mean(stable, concurrencyOf);
    const panicC = mean(recent, concurrencyOf);
    const traffic = stable.some(hasTraffic);
    const stableDesired = Math.ceil(stableC / perReplica - EPS);
    const panicDesired = Math.ceil(panicC / perReplica - EPS);

    // Panic: entered when the panic window asks for panicThreshold x current, left after a full stable window without that.
    const over = traffic && panicC / perReplica / Math.max(1, current) >= p.panicThreshold - EPS;
    if (over) {
      if (this.lastOverAt === null) this.panicPeak = 0;
      this.lastOverAt = now;
    } else if (this.lastOverAt !== null && now - this.lastOverAt >= p.stableWindowMs) {
      this.lastOverAt = null;
    }
    const panic = this.lastOverAt !== null;

    // Guards and cooldowns hold at the last decision, not at what runs now: a scaler that is
    // still applying it (or reports late) must not turn a hold into undoing the decision.
    const hold = this.lastDesired ?? current;
    let raw: number;
    let base: string;
    if (panic) {
      raw = Math.max(panicDesired, stableDesired, current, this.panicPeak, traffic ? 1 : 0);
      base = `panic: concurrency ${conc(panicC)} over ${secs(p.panicWindowMs)} / ${per} -> ${panicDesired}, stable window -> ${stableDesired}`;
      if (raw > Math.max(panicDesired, stableDesired)) base += `; no scale-down in panic -> ${raw}`;
    } else if (traffic) {
      raw = Math.max(1, stableDesired);
      const viaLittle = stable.some((s) => s.concurrency === 0 && s.measured !== true && little(s) > 0) ? " (Little's law: rps x latency)" : '';
      base = `stable window: concurrency ${conc(stableC)}${viaLittle} / ${per} -> ${raw}${stableDesired === 0 ? ' (traffic: at least 1)' : ''}`;
      // HPA-style tolerance, before rounding: demand within it of the last decision changes nothing.
      const ratio = stableC / perReplica / hold;
      if (hold > 0 && raw !== hold && Math.abs(ratio - 1) <= p.tolerance + EPS) {
        raw = hold;
        base += `; within tolerance ${pct(p.tolerance)} of ${hold} -> ${hold}`;
      }
    } else {
      const quiet = this.quietSince !== null && now - this.quietSince >= p.stableWindowMs;
      raw = quiet || current === 0 ? 0 : 1;
      base = quiet || current === 0
        ? `no traffic in the stable window (${secs(p.stableWindowMs)}) -> 0`
        : `no traffic, not yet for a full stable window (${secs(p.stableWindowMs)}) -> 1`;
    }

    // Then each step may move it; the reason records every step that did.
    let d = raw;
    let reason = base;
    const step = (next: number, why: string): void => {
      if (next === d) return;
      d = next;
      reason += `; ${why} -> ${d}`;
    };

    // The first decision: what runs counts as a recommendation of the stabilisation window (a
    // restart scales down only after a full window of lower recommendations).
    if (this.lastDesired === null) this.history.push({ at: now, raw: current });
    this.history = this.history.filter((h) => h.at > now - p.scaleDownStabilizationMs);
    this.history.push({ at: now, raw });
    if (d < hold) step(Math.min(hold, this.history.reduce((m, h) => Math.max(m, h.raw), 0)), `stabilisation: max over ${secs(p.scaleDownStabilizationMs)}`);

    const p95 = recent.reduce((m, s) => Math.max(m, s.latencyP95Ms), 0);
    if (d < hold && p.sloP95Ms !== undefined && p95 > p.sloP95Ms) step(hold, `held by SLO guard: p95 ${Math.round(p95)} ms > ${p.sloP95Ms} ms`);
    // The error rate of the panic window; when it saw no request (the failing clients gave up),
    // that of the stable window, whose failed requests still make the demand.
    const rated = recent.some((s) => s.rps > 0) ? recent : stable;
    const requests = rated.reduce((a, s) => a + s.rps, 0);
    const errorRate = requests > 0 ? rated.reduce((a, s) => a + s.rps * s.errorRate, 0) / requests : 0;
    // From zero every request fails (nothing serves it): the error guard waits for a first replica.
    if (d > hold && current > 0 && errorRate > p.maxErrorRate) step(hold, `held by error guard: error rate ${pct(errorRate)} > ${pct(p.maxErrorRate)}`);

    const since = now - this.lastChangeAt;
    if (d > hold && since < p.scaleUpCooldownMs) step(hold, `cooldown: last change ${secs(since)} ago, scale-up waits ${secs(p.scaleUpCooldownMs)}`);
    if (d < hold && since < p.scaleDownCooldownMs) step(hold, `cooldown: last change ${secs(since)} ago, scale-down waits ${secs(p.scaleDownCooldownMs)}`);

    const upTo = Math.ceil(Math.max(1, current) * p.maxScaleUpRate - EPS);
    const downTo = Math.floor(current / p.maxScaleDownRate + EPS);
    if (d > upTo) step(upTo, `scale-up limited to ${p.maxScaleUpRate}x per decision`);
    if (d < downTo) step(downTo, p.maxScaleDownRate === 2 ? 'scale-down limited to halving' : `scale-down limited to current / ${p.maxScaleDownRate}`);

    const r = this.finish(now, current, d, panic ? 'panic' : 'stable', reason);
    // Panic never goes below what it decided (after the guards: a held scale-up is no peak).
    if (panic) this.panicPeak = r.desired;
    return { ...r, stableConcurrency: round3(stableC), panicConcurrency: round3(panicC), littleConcurrency: round3(mean(stable, little)) };
  }

  /** Clamps to [min, max] and records the decision (a new count asked for starts the cooldowns). */
  private finish(now: number, current: number, d: number, mode: Recommendation['mode'], reason: string) {
    const { minReplicas: min, maxReplicas: max } = this.p;
    if (d > max) { d = max; reason += `; capped at max replicas -> ${max}`; }
    if (d < min) { d = min; reason += `; raised to min replicas -> ${min}`; }
    if (d !== current && d !== this.lastDesired) this.lastChangeAt = now;
    this.lastDesired = d;
    return { desired: d, current, mode, reason };
  }
}
