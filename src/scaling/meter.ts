/**
 * Demand per service, counted where requests end (Observer.end) and drained every scaling tick:
 * requests, upstream errors (5xx from the upstream, and the gateway's own 502/503/504), busy
 * time (the sum of request durations: over a tick it is the tick's mean concurrency by Little's
 * law, each request counted in the tick it ends in) and a log-bucket latency histogram (5%
 * relative accuracy) for p95. Workers send their drained counts to the primary, which merges them.
 */

/** Counts of one service over one tick (JSON-safe: sent over IPC). */
export interface DemandCounts {
  n: number;
  errors: number;
  busyMs: number;
  /** Sparse histogram: bucket index -> count. */
  hist: Record<number, number>;
}

const GAMMA = 1.05;
const LOG_GAMMA = Math.log(GAMMA);
/** Bucket i holds durations in (GAMMA^(i-1), GAMMA^i] ms; 0 holds everything up to 1 ms. */
const bucketOf = (ms: number): number => (ms <= 1 ? 0 : Math.min(400, Math.ceil(Math.log(ms) / LOG_GAMMA)));
const upperOf = (i: number): number => GAMMA ** i;

export class DemandMeter {
  private services = new Map<string, DemandCounts>();

  private of(service: string): DemandCounts {
    let c = this.services.get(service);
    if (c === undefined) this.services.set(service, (c = { n: 0, errors: 0, busyMs: 0, hist: {} }));
    return c;
  }

  record(service: string, status: number, totalMs: number): void {
    const c = this.of(service);
    c.n++;
    if (status >= 500) c.errors++;
    c.busyMs += totalMs;
    const b = bucketOf(totalMs);
    c.hist[b] = (c.hist[b] ?? 0) + 1;
  }

  /** This tick's counts (and a fresh start). */
  drain(): Record<string, DemandCounts> {
    const out = Object.fromEntries(this.services);
    this.services = new Map();
    return out;
  }

  /** Adds another process's drained counts. */
  merge(counts: Record<string, DemandCounts>): void {
    for (const [service, o] of Object.entries(counts)) {
      const c = this.of(service);
      c.n += o.n;
      c.errors += o.errors;
      c.busyMs += o.busyMs;
      for (const [b, k] of Object.entries(o.hist)) c.hist[Number(b)] = (c.hist[Number(b)] ?? 0) + k;
    }
  }
}

/** The p-quantile (0..1) of a histogram, in ms (the upper edge of its bucket); 0 when empty. */
export function quantile(hist: Record<number, number>, p: number): number {
  const buckets = Object.entries(hist).map(([b, k]) => [Number(b), k] as const).sort((a, b) => a[0] - b[0]);
  const total = buckets.reduce((s, [, k]) => s + k, 0);
  if (total === 0) return 0;
  const rank = Math.ceil(p * total);
  let seen = 0;
  for (const [b, k] of buckets) {
    seen += k;
    if (seen >= rank) return upperOf(b);
  }
  return upperOf(buckets[buckets.length - 1]![0]);
}
