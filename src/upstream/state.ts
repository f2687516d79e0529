/**
 * Runtime state that outlives a config snapshot: per target (in-flight count, latency EWMA,
 * health) and per service (bulkhead slots and queue, circuit state, retry budget). Snapshots
 * hold references by key (`service|origin` for targets, the service name for services), so a
 * reload keeps health, counters and circuits of what did not change, and requests that began
 * on the old snapshot release the same slots the new one counts.
 */

const EWMA_TAU_MS = 10_000;

export class TargetState {
  /** Requests in flight to this target (from this process). */
  inflight = 0;
  /** Peak-EWMA of the time to response headers, ms (0 = no sample yet). */
  ewma = 0;
  /** When the last sample came (performance.now() ms: the monotonic clock, as `now` everywhere here). */
  lastSample = 0;
  /** Set by the health authority: a down target gets no traffic. */
  down = false;
  constructor(readonly key: string) {}

  /** Peak EWMA (Finagle): a slower sample is taken at once, faster ones decay in over ~tau. */
  sample(ms: number, now: number): void {
    if (this.ewma === 0 || ms > this.ewma) this.ewma = ms;
    else {
      // (a `now` before the last sample reads as no time passed, not as a weight past 1)
      const w = Math.exp(-Math.max(0, now - this.lastSample) / EWMA_TAU_MS);
      this.ewma = this.ewma * w + ms * (1 - w);
    }
    this.lastSample = now;
  }

  /**
   * The average as of `now`: it decays towards 0 while no sample comes, so a target that was
   * slow once (and stopped getting traffic for it) is tried again after a while.
   */
  latency(now: number): number {
    return this.ewma === 0 ? 0 : this.ewma * Math.exp(-Math.max(0, now - this.lastSample) / EWMA_TAU_MS);
  }
}

export type CircuitState = 'closed' | 'open' | 'half-open';

export class ServiceState {
  /** Requests holding a bulkhead slot. */
  active = 0;
  /** Bulkhead limits of the live snapshot (Infinity = none); set when a snapshot goes live. */
  maxConcurrent = Infinity;
  maxPending = Infinity;
  /** Requests waiting for a slot, oldest first. */
  readonly queue: (() => void)[] = [];
  circuit: CircuitState = 'closed';
  /** When an open circuit goes half-open (epoch ms; informational in workers). */
  openUntil = 0;
  /** Trial requests in flight while half-open (of the current period: see beginTrial). */
  trials = 0;
  /** Circuit decisions applied so far: each one starts a new period (its trial places all free). */
  period = 0;
  /** Retry budget: tokens earned by requests (ratio each) and by time (min_per_second). */
  tokens = 0;
  /** When tokens were last counted (performance.now() ms). */
  tokensAt = 0;
  constructor(readonly name: string) {}

  /** Takes a half-open trial place; returns the period it was taken in (for endTrial). */
  beginTrial(): number {
    this.trials++;
    return this.period;
  }

  /**
   * Frees a trial place taken in `period`, and says whether that trial is one of the current
   * period. A trial admitted in an earlier half-open period (it failed another trial, the circuit
   * opened and went half-open again meanwhile) holds no place of this one — they were all given
   * anew — and its late answer is no trial of this one: it must neither close nor reopen the
   * circuit the new trials are to judge (its outcome counts as an ordinary request's).
   */
  endTrial(period: number): boolean {
    if (period !== this.period) return false;
    if (this.trials > 0) this.trials--;
    return true;
  }
}

/** Reference-counted objects shared between snapshots. */
export class SharedRegistry<V> {
  private readonly entries = new Map<string, { value: V; refs: number }>();
  constructor(private readonly make: (key: string) => V) {}

  acquire(key: string): V {
    let e = this.entries.get(key);
    if (!e) this.entries.set(key, (e = { value: this.make(key), refs: 0 }));
    e.refs++;
    return e.value;
  }

  release(key: string): void {
    const e = this.entries.get(key);
    if (e && --e.refs <= 0) this.entries.delete(key);
  }

  get(key: string): V | undefined {
    return this.entries.get(key)?.value;
  }

  values(): IterableIterator<V> {
    return [...this.entries.values()].map((e) => e.value)[Symbol.iterator]();
  }
}

export class RuntimeState {
  readonly targets = new SharedRegistry((k) => new TargetState(k));
  readonly services = new SharedRegistry((k) => new ServiceState(k));
}

/** Applies a health authority's decision to this process's runtime state. */
export function applyDecision(
  state: RuntimeState,
  d: { t: 'target'; key: string; down: boolean } | { t: 'circuit'; service: string; state: CircuitState; until: number },
): void {
  if (d.t === 'target') {
    const t = state.targets.get(d.key);
    if (t) t.down = d.down;
    return;
  }
  const s = state.services.get(d.service);
  if (!s) return;
  s.circuit = d.state;
  s.openUntil = d.until;
  s.trials = 0;
  s.period++;
}
