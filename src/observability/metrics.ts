/**
 * Prometheus metrics. The hot path only adds numbers to per-route records (a Map lookup and a
 * few increments, no label hashing, no allocation); prom-client builds the exposition from them
 * at scrape time through collectors, adds process and event-loop metrics, and aggregates the
 * workers' views in the primary (AggregatorRegistry.aggregate over getMetricsAsJSON()).
 *
 * Label cardinality is bounded by the config: service, route, target come from it; method is
 * one of the standard methods or OTHER; status is a 3-digit code. Consumers are never labels
 * (analytics has per-consumer views with a bounded top-K).
 */
import { Registry, AggregatorRegistry, collectDefaultMetrics, type Metric, type MetricValueWithName } from 'prom-client';
import { performance, type EventLoopUtilization } from 'node:perf_hooks';

/** Upper bounds (seconds) of the latency histograms: from 100 µs (gateway overhead) to a minute. */
export const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** turnpike_event_loop_utilization is measured over this many seconds (sampled once a second). */
const ELU_WINDOW_S = 10;
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'CONNECT', 'TRACE', 'OTHER'];
const OTHER = METHODS.length - 1;
const methodIndex = (m: string): number => {
  const i = METHODS.indexOf(m);
  return i === -1 ? OTHER : i;
};

class Hist {
  readonly counts: Float64Array;
  sum = 0;
  n = 0;
  constructor(private readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length);
  }
  observe(s: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && s > b[i]!) i++;
    if (i < b.length) this.counts[i]!++;
    this.sum += s;
    this.n++;
  }
}

/** Everything counted for one (service, route): requests by method and status, latencies, bytes. */
export class RouteStats {
  /** status * 16 + method index -> requests */
  readonly requests = new Map<number, number>();
  readonly total: Hist;
  readonly upstream: Hist;
  readonly gateway: Hist;
  bytesIn = 0;
  bytesOut = 0;
  retries = 0;
  /** grpc-status -> responses */
  readonly grpc = new Map<string, number>();
  /** `plugin\0allowed|rejected` -> decisions */
  readonly limits = new Map<string, number>();
  constructor(readonly service: string, readonly route: string, bounds: readonly number[]) {
    this.total = new Hist(bounds);
    this.upstream = new Hist(bounds);
    this.gateway = new Hist(bounds);
  }
  count(method: string, status: number): void {
    const k = status * 16 + methodIndex(method);
    this.requests.set(k, (this.requests.get(k) ?? 0) + 1);
  }
  grpcStatus(code: string): void {
    // Only the 17 defined codes (a broken upstream must not invent label values).
    const c = /^(?:[0-9]|1[0-6])$/.test(code) ? code : 'invalid';
    this.grpc.set(c, (this.grpc.get(c) ?? 0) + 1);
  }
  limit(plugin: string, allowed: boolean): void {
    const k = `${plugin}\0${allowed ? 'allowed' : 'rejected'}`;
    this.limits.set(k, (this.limits.get(k) ?? 0) + 1);
  }
}

/** What the gateway exposes beyond per-route counts (read at scrape time). */
export interface GaugeSource {
  inFlight(): number;
  revision(): number;
  reloads(): { ok: number; failed: number };
  /** Targets: 1 up, 0 down (only where health is decided: the primary or a single process). */
  /** `target` is the origin dialled, `url` the target as configured (two can share an origin). */
  targets(): { service: string; target: string; url: string; up: boolean }[];
  circuits(): { service: string; state: string }[];
  websockets(): { opened: number; rejected: number; closed: number; messagesIn: number; messagesOut: number } | null;
  /** The access log's line counters (this process; null: it writes none). */
  accessLog?(): { written: number; dropped: number } | null;
  /** The scaling advisor's decisions per service and for the gateway (where it runs). */
  scaling?(): { services: { service: string; desired: number; current: number; panic: boolean; signals: Record<string, number> }[]; gateway: { desiredNodes: number; utilization: number } | null };
}

type Sample = MetricValueWithName<string>;

/** A metric computed at scrape time (prom-client's registry formats and aggregates it like its own). */
function collector(name: string, help: string, type: 'counter' | 'gauge' | 'histogram', aggregator: 'sum' | 'max' | 'first', values: () => Sample[]): Metric {
  const m = { name, help, type, aggregator, get: async () => ({ name, help, type, aggregator, values: values() }) };
  return m as unknown as Metric;
}

function histogramSamples(name: string, bounds: readonly number[], rows: { labels: Record<string, string>; h: Hist }[]): Sample[] {
  const out: Sample[] = [];
  for (const { labels, h } of rows) {
    if (h.n === 0) continue;
    let cum = 0;
    for (let i = 0; i < bounds.length; i++) {
      cum += h.counts[i]!;
      out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: bounds[i]! }, value: cum });
    }
    out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: h.n });
    out.push({ metricName: `${name}_sum`, labels, value: h.sum });
    out.push({ metricName: `${name}_count`, labels, value: h.n });
  }
  return out;
}

export class Metrics {
  private readonly routes = new Map<string, RouteStats>();
  readonly registry = new Registry();
  /**
   * Event-loop utilisation snapshots taken once a second by an internal timer, oldest first: the
   * gauge is measured over them, so that any number of renders (scrapers, the console's live
   * stats every second) read the same value instead of resetting each other's interval.
   */
  private readonly elu: EventLoopUtilization[] = [performance.eventLoopUtilization()];
  private readonly eluTimer: NodeJS.Timeout;

  constructor(readonly bounds: readonly number[] = BUCKETS, gauges?: GaugeSource) {
    const r = this.registry;
    const all = () => this.routes.values();
    r.registerMetric(collector('turnpike_requests_total', 'Requests answered, by service, route, method and status code.', 'counter', 'sum', () => {
      const out: Sample[] = [];
      for (const s of all()) {
        for (const [k, v] of s.requests) out.push({ labels: { service: s.service, route: s.route, method: METHODS[k & 15]!, status: k >> 4 }, value: v });
      }
      return out;
    }));
    const hist = (name: string, help: string, pick: (s: RouteStats) => Hist) =>
      r.registerMetric(collector(name, help, 'histogram', 'sum', () => histogramSamples(name, this.bounds, [...all()].map((s) => ({ labels: { service: s.service, route: s.route }, h: pick(s) })))));
    hist('turnpike_request_duration_seconds', 'Time from the request head to the last response byte.', (s) => s.total);
    hist('turnpike_upstream_duration_seconds', 'Time from the first upstream attempt to the response headers of the one that answered (retries included).', (s) => s.upstream);
    hist('turnpike_gateway_duration_seconds', 'Time the gateway spent before the first upstream attempt (routing, plugins, queueing), or the whole request when it answered itself.', (s) => s.gateway);
    const perRoute = (name: string, help: string, pick: (s: RouteStats) => number) =>
      r.registerMetric(collector(name, help, 'counter', 'sum', () => [...all()].filter((s) => pick(s) > 0).map((s) => ({ labels: { service: s.service, route: s.route }, value: pick(s) }))));
    perRoute('turnpike_request_bytes_total', 'Request bytes received (head fields and body).', (s) => s.bytesIn);
    perRoute('turnpike_response_bytes_total', 'Response body bytes sent.', (s) => s.bytesOut);
    perRoute('turnpike_upstream_retries_total', 'Upstream attempts beyond the first.', (s) => s.retries);
    r.registerMetric(collector('turnpike_grpc_responses_total', 'gRPC calls by grpc-status.', 'counter', 'sum', () => {
      const out: Sample[] = [];
      for (const s of all()) for (const [code, v] of s.grpc) out.push({ labels: { service: s.service, route: s.route, grpc_status: code }, value: v });
      return out;
    }));
    r.registerMetric(collector('turnpike_limit_decisions_total', 'Rate-limit and quota decisions, by plugin and outcome.', 'counter', 'sum', () => {
      const out: Sample[] = [];
      for (const s of all()) {
        for (const [k, v] of s.limits) {
          const [plugin, decision] = k.split('\0');
          out.push({ labels: { service: s.service, route: s.route, plugin: plugin!, decision: decision! }, value: v });
        }
      }
      return out;
    }));
    this.eluTimer = setInterval(() => {
      this.elu.push(performance.eventLoopUtilization());
      if (this.elu.length > ELU_WINDOW_S + 1) this.elu.shift();
    }, 1000).unref();
    r.registerMetric(collector('turnpike_event_loop_utilization', `Share of time the event loop was busy over the last ${ELU_WINDOW_S} seconds (0-1).`, 'gauge', 'max', () =>
      [{ labels: {}, value: performance.eventLoopUtilization(performance.eventLoopUtilization(), this.elu[0]).utilization }]));
    r.registerMetric(collector('turnpike_event_loop_busy_seconds_total', 'Time the event loop was busy since the process started (rate() of it is the utilisation).', 'counter', 'sum', () =>
      [{ labels: {}, value: performance.eventLoopUtilization().active / 1000 }]));
    if (gauges) this.registerGauges(gauges);
    collectDefaultMetrics({ register: r });
  }

  private registerGauges(g: GaugeSource): void {
    const r = this.registry;
    r.registerMetric(collector('turnpike_requests_in_flight', 'Requests being handled now.', 'gauge', 'sum', () => [{ labels: {}, value: g.inFlight() }]));
    r.registerMetric(collector('turnpike_config_revision', 'Revision of the running config (1 at start, +1 per applied change).', 'gauge', 'max', () => [{ labels: {}, value: g.revision() }]));
    r.registerMetric(collector('turnpike_config_reloads_total', 'Config reloads, by result.', 'counter', 'max', () => {
      const { ok, failed } = g.reloads();
      return [{ labels: { result: 'success' }, value: ok }, { labels: { result: 'failure' }, value: failed }];
    }));
    // (target alone is not one series: http://h:1/a and http://h:1/b, or two names of one address,
    // share an origin, and Prometheus refuses a scrape with a series twice; url tells them apart)
    r.registerMetric(collector('turnpike_upstream_target_up', 'Whether a target takes traffic (1) or is marked down by health checks (0).', 'gauge', 'sum', () =>
      g.targets().map((t) => ({ labels: { service: t.service, target: t.target, url: t.url }, value: t.up ? 1 : 0 }))));
    r.registerMetric(collector('turnpike_circuit_state', 'Circuit breaker state per service: 1 for the current state.', 'gauge', 'sum', () =>
      g.circuits().flatMap((c) => ['closed', 'open', 'half_open'].map((state) => ({ labels: { service: c.service, state }, value: c.state.replace('-', '_') === state ? 1 : 0 })))));
    const ws = (name: string, help: string, type: 'counter' | 'gauge', labels: Record<string, string>, pick: (w: NonNullable<ReturnType<GaugeSource['websockets']>>) => number) => {
      r.registerMetric(collector(name, help, type, 'sum', () => {
        const w = g.websockets();
        return w === null ? [] : [{ labels, value: pick(w) }];
      }));
    };
    if (g.accessLog) {
      const al = g.accessLog.bind(g);
      const lines = (name: string, help: string, pick: (c: { written: number; dropped: number }) => number) =>
        r.registerMetric(collector(name, help, 'counter', 'sum', () => {
          const c = al();
          return c === null ? [] : [{ labels: {}, value: pick(c) }];
        }));
      lines('turnpike_access_log_lines_written_total', 'Access log lines handed to the destination (stdout / file: accepted into the write buffer; http: acknowledged by the receiver).', (c) => c.written);
      lines('turnpike_access_log_lines_dropped_total', 'Access log lines dropped because the destination could not keep up or the HTTP receiver failed.', (c) => c.dropped);
    }
    if (g.scaling) {
      const sc = g.scaling.bind(g);
      const perService = (name: string, help: string, pick: (x: ReturnType<typeof sc>['services'][number]) => number) =>
        r.registerMetric(collector(name, help, 'gauge', 'max', () => sc().services.map((x) => ({ labels: { service: x.service }, value: pick(x) }))));
      perService('turnpike_scaling_desired_replicas', 'Replicas the scaling advisor recommends for the service (docs/scaling.md).', (x) => x.desired);
      perService('turnpike_scaling_current_replicas', 'Replicas the advisor counts as current: the Kubernetes scale subresource\'s spec.replicas (current_replicas: trigger), or the count the last webhook took, healthy targets before one (targets; with no trigger: the last count asked for).', (x) => x.current);
      perService('turnpike_scaling_panic', '1 while the service is in panic mode.', (x) => (x.panic ? 1 : 0));
      perService('turnpike_scaling_concurrency', 'Mean requests in flight over the last interval: the in-flight gauge\'s mean (running requests count), or, where none was kept, Little\'s law on the requests that ended.', (x) => x.signals['concurrency'] ?? 0);
      perService('turnpike_scaling_requests_per_second', 'Requests per second over the last interval.', (x) => x.signals['rps'] ?? 0);
      perService('turnpike_scaling_latency_p95_seconds', 'p95 of request durations over the last interval.', (x) => (x.signals['latency_p95_ms'] ?? 0) / 1000);
      perService('turnpike_scaling_error_rate', 'Share of 5xx answers over the last interval.', (x) => x.signals['error_rate'] ?? 0);
      r.registerMetric(collector('turnpike_scaling_gateway_desired_nodes', 'Gateway nodes the advisor recommends (event-loop utilisation and CPU against the target).', 'gauge', 'max', () => {
        const gw = sc().gateway;
        return gw === null ? [] : [{ labels: {}, value: gw.desiredNodes }];
      }));
      r.registerMetric(collector('turnpike_scaling_gateway_utilization', 'This node\'s utilisation: max(event-loop utilisation, CPU share) over the last interval.', 'gauge', 'max', () => {
        const gw = sc().gateway;
        return gw === null ? [] : [{ labels: {}, value: gw.utilization }];
      }));
    }
    ws('turnpike_websocket_connections', 'WebSocket connections open now.', 'gauge', {}, (w) => w.opened - w.closed);
    r.registerMetric(collector('turnpike_websocket_upgrades_total', 'WebSocket upgrades, by result (opened, or rejected by the upstream).', 'counter', 'sum', () => {
      const w = g.websockets();
      return w === null ? [] : [{ labels: { result: 'opened' }, value: w.opened }, { labels: { result: 'rejected' }, value: w.rejected }];
    }));
    r.registerMetric(collector('turnpike_websocket_messages_total', 'WebSocket messages relayed, by direction (in: from clients).', 'counter', 'sum', () => {
      const w = g.websockets();
      return w === null ? [] : [{ labels: { direction: 'in' }, value: w.messagesIn }, { labels: { direction: 'out' }, value: w.messagesOut }];
    }));
  }

  /** The (service, route) keys of the running config (null: every route counts). */
  private live: ReadonlySet<string> | null = null;

  /** The record of a (service, route); '' for requests answered before routing. */
  stats(service: string, route: string): RouteStats {
    const key = `${service}\0${route}`;
    let s = this.routes.get(key);
    if (s === undefined) {
      s = new RouteStats(service, route, this.bounds);
      // (a request still finishing on a route a reload removed: counted, but not exposed again)
      if (this.live === null || this.live.has(key) || key === '\0') this.routes.set(key, s);
    }
    return s;
  }

  /**
   * The routes of a new config: the series of the others (removed or renamed by the reload)
   * leave the exposition, so route churn does not grow the scrape and the memory without end.
   */
  keepRoutes(routes: Iterable<{ service: string; route: string }>): void {
    const live = new Set<string>();
    for (const r of routes) live.add(`${r.service}\0${r.route}`);
    this.live = live;
    for (const key of this.routes.keys()) if (key !== '\0' && !live.has(key)) this.routes.delete(key);
  }

  /** This process's metrics as JSON (what a worker sends the primary). */
  json(): Promise<unknown[]> {
    return this.registry.getMetricsAsJSON();
  }

  /** The exposition text: this process's metrics merged with the workers' (JSON from json()). */
  async text(others: unknown[][] = []): Promise<string> {
    if (others.length === 0) return this.registry.metrics();
    const mine = await this.registry.getMetricsAsJSON();
    return AggregatorRegistry.aggregate([mine, ...others] as Parameters<typeof AggregatorRegistry.aggregate>[0]).metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** Stops the event-loop sampling timer. */
  close(): void {
    clearInterval(this.eluTimer);
  }
}

/**
 * The counters and histograms of several processes' JSON, summed (what stays in the primary's
 * view of workers that exited: their gauges and process metrics go with them).
 */
export function retainCounters(views: unknown[][]): unknown[] {
  const keep = views.map((v) => (v as { name: string; type: string }[]).filter((m) => m.name.startsWith('turnpike_') && (m.type === 'counter' || m.type === 'histogram')));
  const merged = AggregatorRegistry.aggregate(keep as Parameters<typeof AggregatorRegistry.aggregate>[0]);
  return merged.getMetricsAsArray().map((m) => (m as unknown as { get(): unknown }).get());
}

/**
 * A view (retainCounters') without the series of routes not in `routes` (a reload removed or
 * renamed them), as a worker's own metrics drop them (Metrics.keepRoutes). Requests answered
 * before routing (service and route '') stay.
 */
export function keepRouteSeries(view: unknown[], routes: Iterable<{ service: string; route: string }>): unknown[] {
  const live = new Set<string>();
  for (const r of routes) live.add(`${r.service}\0${r.route}`);
  return (view as { values?: { labels?: Record<string, unknown> }[] }[]).map((m) => {
    if (!Array.isArray(m.values)) return m;
    const values = m.values.filter((v) => {
      const l = v.labels;
      if (l === undefined || l['route'] === undefined) return true;
      const key = `${String(l['service'] ?? '')}\0${String(l['route'])}`;
      return key === '\0' || live.has(key);
    });
    return values.length === m.values.length ? m : { ...m, values };
  });
}
