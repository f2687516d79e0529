/**
 * In flight per service: a gauge counted up when a request goes on to the service past its
 * plugins (request.ts: a request they answer, 401 / 429 / a cache hit, is no demand on it) and
 * down when it ends (record), sampled every 100 ms; a tick's concurrency is the mean of its samples, so a
 * request that is still running (SSE, WebSocket, long poll) counts while it runs, not all at
 * once when it ends. The per-request cost is an increment and a decrement.
 *
 * Demand per service and per route, counted where requests end (Observer.end) and drained every scaling tick:
 * requests, upstream errors (5xx from the upstream, and the gateway's own 502/503/504; not a
 * bulkhead's 503 service-overloaded: demand the service could not take, no failing upstream), busy
 * time (the sum of request durations: over a tick it is the tick's mean concurrency by Little's
 * law, each request counted in the tick it ends in), 504s (timeouts) and a log-bucket latency histogram (5%
 * relative accuracy) for p95. Workers send their drained counts to the primary, which merges them.
 */

/** Counts of one service over one tick (JSON-safe: sent over IPC). */
export interface DemandCounts {
  n: number;
  errors: number;
  /** 504s: the upstream (or a composition step) timed out. */
  timeouts: number;
  busyMs: number;
  /** Sparse histogram: bucket index -> count. */
  hist: Record<number, number>;
  /** Mean requests in flight over the tick, from the in-flight gauge (absent: no request of it was routed here; busyMs then stands in). */
  inflight?: number;
}

const GAMMA = 1.05;
const LOG_GAMMA = Math.log(GAMMA);
/** Bucket i holds durations in (GAMMA^(i-1), GAMMA^i] ms; 0 holds everything up to 1 ms. */
const bucketOf = (ms: number): number => (ms <= 1 ? 0 : Math.min(400, Math.ceil(Math.log(ms) / LOG_GAMMA)));
const upperOf = (i: number): number => GAMMA ** i;

/** A tick's counts: per service, and per route. */
export interface Demand {
  services: Record<string, DemandCounts>;
  routes: Record<string, DemandCounts>;
}

function add(map: Map<string, DemandCounts>, key: string): DemandCounts {
  let c = map.get(key);
  if (c === undefined) map.set(key, (c = { n: 0, errors: 0, timeouts: 0, busyMs: 0, hist: {} }));
  return c;
}

function mergeInto(map: Map<string, DemandCounts>, from: Record<string, DemandCounts>): void {
  for (const [key, o] of Object.entries(from)) {
    const c = add(map, key);
    c.n += o.n;
    c.errors += o.errors;
    c.timeouts += o.timeouts ?? 0;
    c.busyMs += o.busyMs;
    if (o.inflight !== undefined) c.inflight = (c.inflight ?? 0) + o.inflight;
    for (const [b, k] of Object.entries(o.hist)) c.hist[Number(b)] = (c.hist[Number(b)] ?? 0) + k;
  }
}

export class DemandMeter {
  private services = new Map<string, DemandCounts>();
  private routes = new Map<string, DemandCounts>();
  /** Per service: requests in flight now, and the sum of the samples since the last drain. */
  private gauge = new Map<string, { n: number; sum: number }>();
  private samples = 0;
  private sampler: NodeJS.Timeout | undefined;

  /** `sampleMs`: how often the in-flight gauge is sampled (0: only by calling sample()). */
  constructor(private readonly sampleMs = 100) {}

  /** A request of `service` was routed: in flight until record() counts its end. */
  begin(service: string): void {
    let g = this.gauge.get(service);
    if (g === undefined) {
      this.gauge.set(service, (g = { n: 0, sum: 0 }));
      if (this.sampler === undefined && this.sampleMs > 0) {
        this.sampler = setInterval(() => this.sample(), this.sampleMs);
        this.sampler.unref();
      }
    }
    g.n++;
  }

  /** Adds the in-flight gauge's values to this tick's samples. */
  sample(): void {
    for (const g of this.gauge.values()) g.sum += g.n;
    this.samples++;
  }

  /** Stops the sampler (the owner closes). */
  stop(): void {
    clearInterval(this.sampler);
    this.sampler = undefined;
  }

  /** Nothing counts as in flight any more (scaling turned off: requests ending later are not counted down). */
  resetInflight(): void {
    this.gauge.clear();
    this.samples = 0;
  }

  /** The services of the running config (null: not told yet). */
  private live: ReadonlySet<string> | null = null;

  /**
   * A reload's services: the in-flight gauges of the others are dropped (one still running a
   * request when its last one ends), so renamed or removed services are not reported every tick.
   */
  keepServices(names: Iterable<string>): void {
    const live = new Set(names);
    this.live = live;
    for (const [service, g] of this.gauge) if (g.n === 0 && !live.has(service)) this.gauge.delete(service);
  }

  /** `shed`: refused by the service's bulkhead (a 503 that is demand, not an upstream error). */
  record(service: string, route: string, status: number, totalMs: number, shed = false): void {
    const g = this.gauge.get(service);
    if (g !== undefined && g.n > 0 && --g.n === 0 && this.live !== null && !this.live.has(service)) this.gauge.delete(service);
    const b = bucketOf(totalMs);
    for (const c of [add(this.services, service), add(this.routes, route)]) {
      c.n++;
      if (status >= 500 && !shed) c.errors++;
      if (status === 504) c.timeouts++;
      c.busyMs += totalMs;
      c.hist[b] = (c.hist[b] ?? 0) + 1;
    }
  }

  /** This tick's counts (and a fresh start). */
  drain(): Demand {
    for (const [service, g] of this.gauge) {
      const c = add(this.services, service);
      c.inflight = (c.inflight ?? 0) + (this.samples > 0 ? g.sum / this.samples : g.n);
      g.sum = 0;
    }
    this.samples = 0;
    const out = { services: Object.fromEntries(this.services), routes: Object.fromEntries(this.routes) };
    this.services = new Map();
    this.routes = new Map();
    return out;
  }

  /** Adds another process's (or node's) drained counts. */
  merge(d: Demand): void {
    mergeInto(this.services, d.services);
    mergeInto(this.routes, d.routes);
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
