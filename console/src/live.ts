/**
 * The live feed: one EventSource on /console/api/events while signed in, `stats` (every second)
 * and `scaling` events, with the last five minutes of history for the charts.
 */
import { useEffect, useState } from 'preact/hooks';

export interface Totals {
  rps: number | null;
  error_rate: number | null;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  in_flight: number | null;
  rate_limited_per_s: number | null;
}
export interface ServiceStats { name: string; rps: number | null; error_rate: number | null; p50_ms: number | null; p95_ms: number | null; p99_ms: number | null }
export interface RouteStats { name: string; service?: string; rps: number | null; error_rate: number | null; p95_ms: number | null }
export interface Stats {
  at: string;
  window?: string;
  /** false: analytics are disabled (analytics.enabled: false), so the rates and percentiles stay empty. */
  analytics?: boolean;
  totals: Totals;
  services: ServiceStats[];
  routes: RouteStats[];
  top_consumers: { consumer: string; requests: number }[];
  upstreams: { targets: number; targets_up: number; targets_down: string[] };
}
export interface ScalingService {
  name: string;
  signals?: { rps?: number; concurrency?: number; latency_p95_ms?: number | null; error_rate?: number; healthy_targets?: number };
  current_replicas: number | null;
  desired_replicas: number | null;
  mode?: string;
  reason?: string;
}
export interface ScalingReport {
  interval_ms?: number;
  services: ScalingService[];
  gateway?: { desired_nodes?: number; utilization?: number; reason?: string };
}

export type StreamStatus = 'connecting' | 'live' | 'reconnecting' | 'closed';

export interface LiveState {
  stats: Stats | null;
  events: number;
  scaling: ScalingReport | null;
  status: StreamStatus;
  problem: string | null;
  /** Bumped on every change (charts re-read their series). */
  version: number;
}

export const WINDOW_S = 300;

/** Columns for uPlot: time (s) plus n value series, trimmed to the last WINDOW_S seconds. */
export class Series {
  readonly cols: (number | null)[][];
  constructor(n: number) {
    this.cols = Array.from({ length: n + 1 }, () => []);
  }
  push(t: number, values: (number | null | undefined)[]): void {
    const ts = this.cols[0]!;
    if (ts.length > 0 && t <= (ts[ts.length - 1] as number)) t = (ts[ts.length - 1] as number) + 0.001;
    ts.push(t);
    values.forEach((v, i) => this.cols[i + 1]!.push(typeof v === 'number' && Number.isFinite(v) ? v : null));
    let drop = 0;
    while (drop < ts.length && (ts[drop] as number) < t - WINDOW_S) drop++;
    if (drop > 0) for (const c of this.cols) c.splice(0, drop);
  }
  get length(): number {
    return this.cols[0]!.length;
  }
  last(i: number): number | null {
    const c = this.cols[i + 1]!;
    return c.length ? c[c.length - 1]! : null;
  }
}

export class Live {
  state: LiveState = { stats: null, events: 0, scaling: null, status: 'connecting', problem: null, version: 0 };
  readonly rps = new Series(1);
  readonly latency = new Series(3);
  readonly scalingHistory = new Map<string, Series>();
  private es: EventSource | null = null;
  private readonly listeners = new Set<() => void>();
  private retry: ReturnType<typeof setTimeout> | undefined;
  stopped = false;

  /** onError: the stream failed (the page re-checks the session). */
  constructor(private readonly url: string, private readonly onError: (closed: boolean) => void) {}

  subscribe(f: () => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  private set(patch: Partial<LiveState>): void {
    this.state = { ...this.state, ...patch, version: this.state.version + 1 };
    for (const f of this.listeners) f();
  }

  start(): void {
    this.stopped = false;
    clearTimeout(this.retry);
    this.es?.close();
    const es = new EventSource(this.url);
    this.es = es;
    es.addEventListener('open', () => this.set({ status: 'live', problem: null }));
    es.addEventListener('stats', (e) => this.stats(e as MessageEvent<string>));
    es.addEventListener('scaling', (e) => this.scaling(e as MessageEvent<string>));
    es.addEventListener('problem', (e) => {
      const d = parse<{ detail?: string }>((e as MessageEvent<string>).data);
      this.set({ problem: d?.detail ?? 'The gateway could not compute the statistics.' });
    });
    es.addEventListener('error', () => {
      if (this.es !== es || this.stopped) return;
      const closed = es.readyState === EventSource.CLOSED;
      this.set({ status: closed ? 'closed' : 'reconnecting' });
      this.onError(closed);
    });
  }

  /** Open a new stream after a pause (the browser gave up on the old one). */
  restartLater(ms = 3000): void {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => {
      if (!this.stopped) this.start();
    }, ms);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    this.es?.close();
    this.es = null;
  }

  private stats(e: MessageEvent<string>): void {
    const s = parse<Stats>(e.data);
    if (!s || typeof s !== 'object' || !s.totals) return;
    const parsed = Date.parse(s.at);
    const t = (Number.isNaN(parsed) ? Date.now() : parsed) / 1000;
    this.rps.push(t, [s.totals.rps]);
    this.latency.push(t, [s.totals.p50_ms, s.totals.p95_ms, s.totals.p99_ms]);
    this.set({ stats: s, events: this.state.events + 1, status: 'live' });
  }

  private scaling(e: MessageEvent<string>): void {
    const r = parse<ScalingReport>(e.data);
    if (!r || !Array.isArray(r.services)) return;
    const t = Date.now() / 1000;
    for (const svc of r.services) {
      let h = this.scalingHistory.get(svc.name);
      if (!h) this.scalingHistory.set(svc.name, (h = new Series(2)));
      h.push(t, [svc.desired_replicas, svc.current_replicas]);
    }
    this.set({ scaling: r });
  }
}

function parse<T>(data: string): T | null {
  try {
    return JSON.parse(data) as T;
  } catch {
    return null;
  }
}

/** Re-render on every change of the live feed. */
export function useLive(live: Live): LiveState {
  const [, setTick] = useState(0);
  useEffect(() => live.subscribe(() => setTick((n) => n + 1)), [live]);
  return live.state;
}
