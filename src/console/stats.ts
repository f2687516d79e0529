/**
 * The console's live feed: once a second, while someone watches, one `stats` event for every
 * open stream — totals, services, routes, top consumers over the last minute (the analytics
 * sliding window, merged across workers and nodes), requests in flight, rate-limit refusals per
 * second over the same minute (from the metrics' counters, since the first viewer) and upstream health — plus a `scaling` event with the
 * advisor's report when it runs. Computed once per second for all streams.
 */
import type { ServerResponse } from 'node:http';
import { Analytics, type AnalyticsState } from '../observability/analytics.js';

export interface StatsSource {
  analyticsStates(): Promise<{ states: AnalyticsState[] }>;
  /** Whether analytics are recorded (the rates and percentiles come from them). */
  analyticsEnabled?(): boolean;
  inFlight: number;
  health: { report(): unknown } | null;
  /** Prometheus text of this node (for the limit counters); null when metrics are off. */
  metricsText(): Promise<string | null>;
  scaling?: { enabled: boolean; report(): unknown } | null;
}

const round = (v: number | null, k = 10) => (v === null ? null : Math.round(v * k) / k);

/** Sum of turnpike_limit_decisions_total samples with decision="rejected". */
export function rejectedTotal(text: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith('turnpike_limit_decisions_total{') || !line.includes('decision="rejected"')) continue;
    const v = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(v)) sum += v;
  }
  return sum;
}

export class LiveStats {
  private readonly streams = new Set<ServerResponse>();
  private timer: NodeJS.Timeout | undefined;
  /** (time, refusals so far) over the last minute: the refusal rate is over the same window as the rest. */
  private rejected: { at: number; total: number }[] = [];
  private busy = false;

  constructor(private readonly source: StatsSource, private readonly everyMs = 1000) {}

  get watchers(): number {
    return this.streams.size;
  }

  add(res: ServerResponse): void {
    this.streams.add(res);
    res.on('close', () => {
      this.streams.delete(res);
      if (this.streams.size === 0) this.stop();
    });
    if (!this.timer) {
      this.timer = setInterval(() => void this.tick(), this.everyMs);
      this.timer.unref();
    }
    void this.tick();
  }

  private stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.rejected = [];
  }

  closeAll(): void {
    for (const s of this.streams) s.end();
    this.streams.clear();
    this.stop();
  }

  async snapshot(): Promise<Record<string, unknown>> {
    const { states } = await this.source.analyticsStates();
    const report = Analytics.report(states, '1m', { top: 10 });
    const services = new Map<string, { name: string; requests: number; errors: number; p50_ms: number | null; p95_ms: number | null; p99_ms: number | null }>();
    for (const r of report.routes) {
      const s = services.get(r.service) ?? { name: r.service, requests: 0, errors: 0, p50_ms: null, p95_ms: null, p99_ms: null };
      s.requests += r.requests;
      s.errors += r.errors;
      // (a service's percentile: its slowest route's — an upper bound, without merging sketches again)
      for (const k of ['p50_ms', 'p95_ms', 'p99_ms'] as const) if (r[k] !== null) s[k] = Math.max(s[k] ?? 0, r[k]!);
      services.set(r.service, s);
    }
    const seconds = 60;
    let rateLimited = 0;
    const text = await this.source.metricsText().catch(() => null);
    if (text !== null) {
      const now = Date.now();
      const total = rejectedTotal(text);
      this.rejected.push({ at: now, total });
      while (this.rejected.length > 2 && now - this.rejected[1]!.at >= seconds * 1000) this.rejected.shift();
      const first = this.rejected[0]!;
      if (now > first.at) rateLimited = Math.max(0, (total - first.total) / ((now - first.at) / 1000));
    }
    const health = this.source.health?.report() as { targets: Record<string, { down: boolean }> } | undefined;
    const targets = health ? Object.entries(health.targets) : [];
    return {
      at: new Date().toISOString(),
      window: '1m',
      analytics: this.source.analyticsEnabled?.() ?? true,
      totals: {
        rps: round(report.total.rps, 100), error_rate: round(report.total.error_rate, 1000),
        p50_ms: round(report.total.p50_ms), p95_ms: round(report.total.p95_ms), p99_ms: round(report.total.p99_ms),
        in_flight: this.source.inFlight, rate_limited_per_s: round(rateLimited, 100),
      },
      services: [...services.values()].map((s) => ({ name: s.name, rps: round(s.requests / seconds, 100), error_rate: round(s.requests ? s.errors / s.requests : 0, 1000), p50_ms: round(s.p50_ms), p95_ms: round(s.p95_ms), p99_ms: round(s.p99_ms) })),
      routes: report.routes.map((r) => ({ name: r.route, service: r.service, rps: round(r.rps, 100), error_rate: round(r.error_rate, 1000), p95_ms: round(r.p95_ms) })),
      top_consumers: report.consumers.map((c) => ({ consumer: c.consumer, requests: c.requests })),
      upstreams: { targets: targets.length, targets_up: targets.filter(([, t]) => !t.down).length, targets_down: targets.filter(([, t]) => t.down).map(([k]) => k) },
    };
  }

  private async tick(): Promise<void> {
    if (this.busy || this.streams.size === 0) return;
    this.busy = true;
    try {
      const stats = await this.snapshot();
      const scaling = this.source.scaling?.enabled ? this.source.scaling.report() : null;
      const frame = `event: stats\ndata: ${JSON.stringify(stats)}\n\n` + (scaling ? `event: scaling\ndata: ${JSON.stringify(scaling)}\n\n` : '');
      for (const s of this.streams) {
        // Ended (its session ended) but not closed yet — still queued behind a pipelined stream on
        // its connection, or unflushed —: a write after end() emits an 'error' nothing listens to.
        if (s.writableEnded) continue;
        // A viewer that stopped reading is dropped, not buffered for (1 MB of frames behind).
        if (s.writableLength > 1 << 20) s.destroy();
        else s.write(frame);
      }
    } catch (err) {
      const frame = `event: problem\ndata: ${JSON.stringify({ detail: (err as Error).message })}\n\n`;
      for (const s of this.streams) if (!s.writableEnded) s.write(frame);
    } finally {
      this.busy = false;
    }
  }
}
