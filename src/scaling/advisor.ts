/**
 * The scaling advisor (issue 9's sibling, docs/scaling.md): every `interval` it turns the
 * demand counted since the last tick (DemandMeter: this process's requests plus what the
 * workers sent) into one Sample per service, feeds that service's Recommender, and pushes a
 * changed desired replica count to the service's triggers (webhook, Kubernetes scale
 * subresource). It also recommends a node count for the gateway itself (event-loop
 * utilisation and CPU against a target), serves `GET /api/scaling`, the Prometheus gauges and
 * the KEDA external scaler's answers. Runs where health is decided: the single process, or the
 * primary with workers.
 */
import { performance } from 'node:perf_hooks';
import { availableParallelism } from 'node:os';
import type { Logger } from '../core/log.js';
import { DemandMeter, quantile, type Demand, type DemandCounts } from './meter.js';
import { SharedDemand } from './shared.js';
import type { Cluster, Redis } from 'ioredis';
import { Recommender, type Recommendation, type Sample } from './recommender.js';
import type { ScalingPolicyConfig, ScalingSettings } from './policy.js';
import { WebhookTrigger } from './webhook.js';
import { KubernetesTrigger, READ_EVERY_MS } from './kubernetes.js';

export interface ScaledService {
  name: string;
  scaling: ScalingPolicyConfig | null;
  /** Targets of the service not marked down (the replicas the gateway sees). */
  healthyTargets(): number;
  /** Requests of this process waiting for a bulkhead slot of the service. */
  queued(): number;
  /** The service's route names (per-route signals). */
  routes: readonly string[];
}

/** What a worker sends every second: its drained demand and its own load. */
export interface WorkerDemand {
  counts: Demand;
  /** Requests waiting for a bulkhead slot, per service, now. */
  queued: Record<string, number>;
  /** Its event-loop utilisation, and the CPU time it used, since its last report. */
  elu: number;
  cpuMs: number;
  /** How long since its last report (absent: 1000 ms, its timer's period). */
  periodMs?: number;
}

/** One interval's figures for a service or a route. */
function signals(c: DemandCounts | undefined, dtS: number) {
  return {
    rps: (c?.n ?? 0) / dtS,
    // The in-flight gauge's mean where requests were routed through it (running ones count);
    // else the busy time of the requests that ended (Little's law over the interval).
    concurrency: c?.inflight ?? (c?.busyMs ?? 0) / 1000 / dtS,
    measured: c?.inflight !== undefined,
    latencyMeanMs: c && c.n > 0 ? c.busyMs / c.n : 0,
    latencyP95Ms: c ? quantile(c.hist, 0.95) : 0,
    errorRate: c && c.n > 0 ? c.errors / c.n : 0,
    timeoutRate: c && c.n > 0 ? c.timeouts / c.n : 0,
  };
}
const r3 = (v: number) => Math.round(v * 1000) / 1000;

interface Entry {
  key: string;
  triggersKey: string;
  cfg: ScalingPolicyConfig;
  service: ScaledService;
  recommender: Recommender;
  webhooks: WebhookTrigger[];
  kubernetes: KubernetesTrigger | null;
  signals: (Sample & { timeoutRate: number; queued: number }) | null;
  routes: Record<string, ReturnType<typeof signals>>;
  decision: Recommendation | null;
  pushed: number | null;
  pushedAt: number;
  /** The last count a webhook took (the current count in `targets` mode, once there is one). */
  delivered: number | null;
  /** The entry's first tick (clock). */
  firstAt: number | null;
  /** The last desired count decided on the cluster's traffic (Redis sharing worked). */
  sharedDesired: number | null;
  /** Per trigger (webhooks, then kubernetes): what it took, and its failures. */
  deliveries: Delivery[];
}

/** One trigger's deliveries: a count is marked sent only once the trigger took it; a failure is retried with backoff. */
interface Delivery {
  send(desired: number, payload: Record<string, unknown>): Promise<boolean>;
  kubernetes: KubernetesTrigger | null;
  /** The last count it took, and when (clock). */
  sent: number | null;
  sentAt: number;
  /** The count of the delivery in flight. */
  sending: number | null;
  failures: number;
  /** No attempt before (clock), after a failure. */
  retryAt: number;
}

/** Backoff after the n-th failure in a row: 5 s, 10 s, 20 s, 40 s, then 60 s. */
export const retryDelayMs = (failures: number): number => Math.min(60_000, 5000 * 2 ** Math.max(0, failures - 1));

function deliveriesOf(webhooks: readonly WebhookTrigger[], kubernetes: KubernetesTrigger | null): Delivery[] {
  const fresh = { sent: null, sentAt: 0, sending: null, failures: 0, retryAt: 0 };
  return [
    ...webhooks.map((w): Delivery => ({ ...fresh, kubernetes: null, send: (_d, payload) => w.push(payload) })),
    ...(kubernetes ? [{ ...fresh, kubernetes, send: (d: number) => kubernetes.push(d) }] : []),
  ];
}

export class ScalingAdvisor {
  readonly meter = new DemandMeter();
  private entries = new Map<string, Entry>();
  private settings: ScalingSettings | null = null;
  private timer: NodeJS.Timeout | undefined;
  private lastTick: number;
  private running = false;
  private listeners = new Set<() => void>();
  // The gateway's own load: this process's event loop and CPU, plus the workers' reports.
  private elu = performance.eventLoopUtilization();
  private cpu = process.cpuUsage();
  /**
   * Per worker: its in-flight levels (a level, not a count: the mean of its reports in a tick;
   * its last one when none came) and its load and bulkhead queues (levels too: its last
   * report's event-loop utilisation, CPU share and requests waiting, whatever the tick's length
   * against its one report a second).
   */
  private workerInflight = new Map<number | string, { last: Record<string, number>; sum: Record<string, number>; reports: number; at: number; elu: number; cpu: number; queued: Record<string, number> }>();
  private shared: SharedDemand | null = null;
  private gatewayView = { utilization: 0, elu: 0, cpu: 0, desiredNodes: 1, reason: 'no data yet' };

  /** `clock`: ms, monotonic (a wall clock that steps back would stall cooldowns and inflate a tick's rates). */
  constructor(private readonly log: Pick<Logger, 'info' | 'warn' | 'error'>, private readonly clock: () => number = () => performance.now()) {
    this.lastTick = clock();
  }

  /** A new snapshot: keeps the recommender (its windows) of a service whose policy did not change. */
  configure(settings: ScalingSettings | null, services: readonly ScaledService[]): void {
    const next = new Map<string, Entry>();
    for (const service of services) {
      const cfg = service.scaling;
      if (!cfg || !settings) continue;
      const old = this.entries.get(service.name);
      const triggersKey = cfg.triggersKey;
      const keep = old && old.key === cfg.key;
      const keepTriggers = old && old.triggersKey === triggersKey;
      if (old && !keepTriggers) void this.closeTriggers(old);
      let webhooks = keepTriggers ? old.webhooks : [];
      let kubernetes = keepTriggers ? old.kubernetes : null;
      if (!keepTriggers) {
        webhooks = [];
        kubernetes = null;
        for (const [i, t] of cfg.triggers.entries()) {
          try {
            if (t.type === 'webhook') webhooks.push(new WebhookTrigger(t, this.log, settings.baseDir, cfg.cas[i], cfg.webhookAllowed));
            // (a read stands for ten intervals, at most READ_EVERY_MS: 10 s at the default 1 s)
            else kubernetes ??= new KubernetesTrigger(t, this.log, settings.baseDir, process.env, cfg.cas[i], { readEveryMs: Math.min(READ_EVERY_MS, Math.max(1000, 10 * settings.intervalMs)) });
          } catch (err) {
            this.log.error({ service: service.name, trigger: t.type, err: (err as Error).message }, 'scaling trigger not started');
          }
        }
      }
      next.set(service.name, {
        key: cfg.key, triggersKey, cfg, service, webhooks, kubernetes,
        recommender: keep ? old.recommender : new Recommender(cfg.policy, this.clock),
        signals: keep ? old.signals : null,
        routes: keep ? old.routes : {},
        decision: keep ? old.decision : null,
        pushed: keepTriggers ? old.pushed : null,
        pushedAt: keepTriggers ? old.pushedAt : 0,
        // (what runs does not change with the webhook's URL or secret: new triggers keep it)
        delivered: old ? old.delivered : null,
        firstAt: keep ? old.firstAt : null,
        sharedDesired: keep ? old.sharedDesired : null,
        deliveries: keepTriggers ? old.deliveries : deliveriesOf(webhooks, kubernetes),
      });
    }
    for (const [name, old] of this.entries) if (!next.has(name)) void this.closeTriggers(old);
    this.entries = next;
    const interval = settings?.intervalMs ?? 0;
    if (interval !== (this.settings?.intervalMs ?? 0)) {
      clearInterval(this.timer);
      this.timer = undefined;
      if (interval > 0) {
        this.timer = setInterval(() => void this.tick(), interval);
        this.timer.unref();
      }
    }
    this.settings = settings;
  }

  get enabled(): boolean {
    return this.settings !== null;
  }

  /** A worker's report (merged into the next tick). */
  fromWorker(d: WorkerDemand, from: number | string = 'worker'): void {
    let w = this.workerInflight.get(from);
    if (w === undefined) this.workerInflight.set(from, (w = { last: {}, sum: {}, reports: 0, at: 0, elu: 0, cpu: 0, queued: {} }));
    for (const [svc, c] of Object.entries(d.counts.services)) {
      if (c.inflight === undefined) continue;
      w.sum[svc] = (w.sum[svc] ?? 0) + c.inflight;
      delete c.inflight;
    }
    w.reports++;
    w.at = this.clock();
    const period = d.periodMs !== undefined && d.periodMs > 0 ? d.periodMs : 1000;
    w.elu = Number.isFinite(d.elu) ? d.elu : 0;
    w.cpu = Number.isFinite(d.cpuMs) ? Math.max(0, d.cpuMs) / period : 0;
    w.queued = d.queued;
    this.meter.merge(d.counts);
  }

  /** A worker exited: its requests in flight ended with it, and its load is gone (not held for three intervals as a silent one's). */
  workerGone(from: number | string): void {
    this.workerInflight.delete(from);
  }

  /** Nodes sharing this Redis decide on the cluster's traffic together (src/scaling/shared.ts); null: this node alone. */
  share(client: Redis | Cluster | null, prefix: string, nodeId: string): void {
    if (client === (this.shared?.client ?? null)) return;
    void this.shared?.leave();
    this.shared = client ? new SharedDemand(client, prefix, nodeId, this.log) : null;
  }

  /** One decision round (the timer calls it; tests may too). */
  async tick(): Promise<void> {
    if (this.running || !this.settings) return;
    this.running = true;
    try {
      const now = this.clock();
      // (an injected clock may step back: elapsed is never below a millisecond)
      const dtS = Math.max(0.001, (now - this.lastTick) / 1000);
      this.lastTick = now;
      const demand = this.meter.drain();
      // The workers' requests in flight and waiting: once per worker, however many reports it sent this tick.
      const queued: Record<string, number> = {};
      for (const [id, w] of this.workerInflight) {
        if (now - w.at > 3 * Math.max(1000, this.settings.intervalMs)) {
          this.workerInflight.delete(id); // gone (or stuck): its requests are not counted as running
          continue;
        }
        if (w.reports > 0) w.last = Object.fromEntries(Object.entries(w.sum).map(([s, n]) => [s, n / w.reports]));
        w.sum = {};
        w.reports = 0;
        for (const [svc, n] of Object.entries(w.last)) {
          const c = (demand.services[svc] ??= { n: 0, errors: 0, timeouts: 0, busyMs: 0, hist: {} });
          c.inflight = (c.inflight ?? 0) + n;
        }
        for (const [svc, n] of Object.entries(w.queued)) queued[svc] = (queued[svc] ?? 0) + n;
      }
      const own = this.gatewayTick(dtS);
      if (this.shared) {
        // The other nodes' ticks join this one: every node decides on the cluster's traffic.
        const others = await this.shared.exchange({ counts: demand.services, routes: demand.routes, utilization: own }, this.settings.intervalMs);
        if (!this.settings) return; // reconfigured off meanwhile
        const all = new DemandMeter();
        all.merge(demand);
        for (const o of others) all.merge({ services: o.counts, routes: o.routes });
        Object.assign(demand, all.drain());
        this.clusterTick(own);
      }
      let changed = false;
      await Promise.all([...this.entries.values()].map(async (e) => {
        // What KEDA is told, before this tick (null: nothing yet).
        const told = e.decision === null ? null : this.lookup(e.service.name);
        const sig = signals(demand.services[e.service.name], dtS);
        const sample = { at: now, ...sig, queued: (queued[e.service.name] ?? 0) + e.service.queued() };
        e.signals = sample;
        e.routes = Object.fromEntries(e.service.routes.map((r) => [r, signals(demand.routes[r], dtS)]));
        e.recommender.observe(sample);
        // (a slow API server never holds the tick: the read runs beside it, its answer counts next time)
        if (e.cfg.currentFrom === 'trigger') {
          void e.kubernetes?.read();
          // No decision before the first reading (nor with a trigger that could not start): the
          // targets' count is no stand-in for what runs.
          if (e.kubernetes?.current == null) return;
        }
        e.firstAt ??= now;
        const current = e.cfg.currentFrom === 'trigger' && e.kubernetes?.current != null ? e.kubernetes.current : (e.delivered ?? e.service.healthyTargets());
        const d = e.recommender.recommend(current);
        if (e.decision?.desired !== d.desired || e.decision?.mode !== d.mode) changed = true;
        e.decision = d;
        if (this.shared?.ok === true) e.sharedDesired = d.desired;
        // Active also follows the traffic, not only the count (traffic to a service held at 0 by
        // a scale-up cooldown): StreamIsActive pushes that at once, not at its next heartbeat.
        const telling = this.lookup(e.service.name);
        if (told === null || telling === null || told.active !== telling.active || told.desired !== telling.desired) changed = true;
        // No trigger: KEDA (or an HPA on the gauges) applies the count, so what runs is what was
        // last asked for, as spec.replicas is for the HPA. (The healthy targets, one Service
        // address for any number of replicas, kept a fleet of 10 at "1": in panic for good.)
        if (e.cfg.triggers.length === 0) e.delivered = this.desiredOf(e);
        // With other nodes, one of them (the lease holder) pushes.
        if (this.shared === null || this.shared.leader) void this.push(e, now);
      }));
      if (changed) for (const l of this.listeners) l();
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'scaling tick failed');
    } finally {
      this.running = false;
    }
  }

  /**
   * Pushes a changed desired count to each trigger that has not taken it (and, to Kubernetes,
   * again every 30 s while spec.replicas differs). A trigger that failed is tried again after a
   * backoff (5 s doubling to 60 s), with whatever the decision is then. Never rejects; a webhook
   * retrying is replaced by the next decision.
   */
  private async push(e: Entry, now: number): Promise<void> {
    const d = e.decision!;
    // Sharing through Redis failed: this node sees its own share of the traffic only, so it
    // may scale up (more demand than that is real) but never down.
    if (this.shared !== null && !this.shared.ok && e.pushed !== null && d.desired < e.pushed) return;
    // `targets` before any webhook took a count: the healthy targets are a guess (one Service
    // address stands for any number of replicas), so before a full stable window of traffic
    // backs a decision only a surge (panic mode: scale-up on evidence) is pushed — never the
    // first tick's count that would scale a running fleet down.
    if (e.cfg.currentFrom === 'targets' && e.delivered === null && d.mode !== 'panic' && now - (e.firstAt ?? now) < e.cfg.policy.stableWindowMs) return;
    const due = e.deliveries.filter((s) => {
      if (s.sending === d.desired) return false;
      if (s.failures > 0 && now < s.retryAt) return false; // a dead receiver: one attempt per backoff, whatever the decision
      const stale = s.kubernetes !== null && s.kubernetes.current !== null && s.kubernetes.current !== d.desired && now - s.sentAt > 30_000;
      return s.sent !== d.desired || stale;
    });
    if (due.length === 0) return;
    if (d.desired !== e.pushed) this.log.info({ service: e.service.name, desired: d.desired, current: d.current, mode: d.mode, reason: d.reason }, 'scaling decision');
    e.pushed = d.desired;
    e.pushedAt = now;
    const payload = {
      service: e.service.name, desired: d.desired, current: d.current, mode: d.mode, reason: d.reason,
      signals: this.signalsOf(e), at: new Date().toISOString(),
    };
    await Promise.all(due.map(async (s) => {
      s.sending = d.desired;
      const ok = await s.send(d.desired, payload).catch(() => false);
      if (s.sending === d.desired) s.sending = null;
      if (ok) {
        s.sent = d.desired;
        s.sentAt = this.clock();
        s.failures = 0;
        if (s.kubernetes === null) e.delivered = d.desired;
      } else if (e.decision?.desired === d.desired || s.sending === null) {
        // Failed (not merely replaced by a newer decision on its way): back off.
        s.failures++;
        s.retryAt = this.clock() + retryDelayMs(s.failures);
      }
    }));
  }

  /** This node's utilisation over the interval (and its own node recommendation). */
  private gatewayTick(dtS: number): number {
    const g = this.settings!.gateway;
    const elu = performance.eventLoopUtilization(this.elu).utilization;
    this.elu = performance.eventLoopUtilization();
    const cpu = process.cpuUsage(this.cpu);
    this.cpu = process.cpuUsage();
    // With workers, they carry the traffic: their busiest event loop and their CPU share count
    // (each one's last report: a tick of 100 ms that saw none is not an idle gateway, nor a
    // tick that saw two of one worker twice as busy).
    let maxElu = elu;
    let cpus = (cpu.user + cpu.system) / 1000 / (dtS * 1000);
    for (const w of this.workerInflight.values()) {
      maxElu = Math.max(maxElu, w.elu);
      cpus += w.cpu;
    }
    const cpuShare = cpus / Math.max(1, Math.min(availableParallelism(), this.workerInflight.size || 1));
    const utilization = Math.max(maxElu, cpuShare);
    const desired = Math.min(g.maxNodes, Math.max(g.minNodes, Math.ceil(utilization / g.targetUtilization)));
    this.gatewayView = {
      utilization, elu: maxElu, cpu: cpuShare, desiredNodes: desired,
      reason: `max(event-loop ${maxElu.toFixed(2)}, cpu ${cpuShare.toFixed(2)}) / target ${g.targetUtilization} per node`,
    };
    return utilization;
  }

  /** With other nodes: their utilisation too — desired nodes = ceil(sum of utilisations / target). */
  private clusterTick(own: number): void {
    const g = this.settings!.gateway;
    const nodes = this.shared?.nodes ?? 1;
    // (each other node with a fresh entry counts with its last published figure)
    const total = own + [...(this.shared?.utilization.values() ?? [])].reduce((a, b) => a + b, 0);
    const desired = Math.min(g.maxNodes, Math.max(g.minNodes, Math.ceil(total / g.targetUtilization)));
    this.gatewayView = { ...this.gatewayView, desiredNodes: desired, reason: `${nodes} nodes, utilisation sum ${total.toFixed(2)} / target ${g.targetUtilization}` };
  }

  /**
   * The desired count to show (KEDA, gauges, /api/scaling). Sharing through Redis failed: this
   * node sees its own share of the traffic only, so never less than the last count decided on
   * the cluster's (as push() never scales down then); before any such count (Redis down since
   * the start), never less than what runs.
   */
  private desiredOf(e: Entry): number | null {
    const d = e.decision?.desired ?? null;
    if (d === null || this.shared === null || this.shared.ok) return d;
    return Math.max(d, e.sharedDesired ?? e.decision!.current);
  }

  private signalsOf(e: Entry): Record<string, number> {
    const s = e.signals;
    return {
      rps: r3(s?.rps ?? 0), concurrency: r3(s?.concurrency ?? 0), latency_mean_ms: r3(s?.latencyMeanMs ?? 0),
      latency_p95_ms: r3(s?.latencyP95Ms ?? 0), error_rate: r3(s?.errorRate ?? 0), timeout_rate: r3(s?.timeoutRate ?? 0),
      queued: s?.queued ?? 0, healthy_targets: e.service.healthyTargets(),
    };
  }

  /** GET /api/scaling. */
  report(): Record<string, unknown> {
    return {
      interval_ms: this.settings?.intervalMs ?? null,
      services: [...this.entries.values()].map((e) => ({
        name: e.service.name,
        signals: this.signalsOf(e),
        routes: Object.entries(e.routes).map(([name, x]) => ({
          name, rps: r3(x.rps), concurrency: r3(x.concurrency), latency_mean_ms: r3(x.latencyMeanMs), latency_p95_ms: r3(x.latencyP95Ms), error_rate: r3(x.errorRate), timeout_rate: r3(x.timeoutRate),
        })),
        windows: e.decision ? { stable_concurrency: e.decision.stableConcurrency, panic_concurrency: e.decision.panicConcurrency, little_concurrency: e.decision.littleConcurrency } : null,
        current_replicas: e.decision?.current ?? null,
        desired_replicas: this.desiredOf(e),
        mode: e.decision?.mode ?? 'stable',
        reason: e.decision?.reason ?? (e.kubernetes?.readError ? `no decision yet: ${e.kubernetes.readError.error}` : 'no decision yet'),
        policy: { target_concurrency: e.cfg.policy.targetConcurrency, target_utilization: e.cfg.policy.targetUtilization, min_replicas: e.cfg.policy.minReplicas, max_replicas: e.cfg.policy.maxReplicas },
        triggers: [
          ...e.webhooks.map((w) => ({ type: 'webhook', last: w.last })),
          ...(e.kubernetes ? [{ type: 'kubernetes', current: e.kubernetes.current, last: e.kubernetes.last, read_error: e.kubernetes.readError }] : []),
        ],
      })),
      cluster: { nodes: this.shared?.nodes ?? 1, shared: this.shared !== null, pushes_triggers: this.shared === null || this.shared.leader },
      gateway: {
        utilization: this.gatewayView.utilization, event_loop_utilization: this.gatewayView.elu, cpu: this.gatewayView.cpu,
        desired_nodes: this.gatewayView.desiredNodes, reason: this.gatewayView.reason,
      },
    };
  }

  /** Prometheus rows (src/observability/metrics.ts). */
  gauges(): { service: string; desired: number; current: number; panic: boolean; signals: Record<string, number> }[] {
    return [...this.entries.values()].filter((e) => e.decision !== null).map((e) => ({
      service: e.service.name, desired: this.desiredOf(e)!, current: e.decision!.current, panic: e.decision!.mode === 'panic', signals: this.signalsOf(e),
    }));
  }

  gatewayGauges(): { desiredNodes: number; utilization: number } {
    return { desiredNodes: this.gatewayView.desiredNodes, utilization: this.gatewayView.utilization };
  }

  /** For the KEDA external scaler. */
  lookup(service: string): { desired: number; active: boolean; pending?: boolean } | null {
    const e = this.entries.get(service);
    if (!e) return null;
    if (e.decision === null) return { desired: e.cfg.policy.minReplicas, active: true, pending: true };
    const desired = this.desiredOf(e) ?? e.cfg.policy.minReplicas;
    return { desired, active: desired > 0 || (e.signals?.rps ?? 0) > 0 || (e.signals?.concurrency ?? 0) > 0 };
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private async closeTriggers(e: Entry): Promise<void> {
    await Promise.all([...e.webhooks.map((w) => w.close()), e.kubernetes?.close()]).catch(() => undefined);
  }

  async close(): Promise<void> {
    await this.shared?.leave();
    this.shared = null;
    clearInterval(this.timer);
    this.timer = undefined;
    this.meter.stop();
    this.listeners.clear();
    await Promise.all([...this.entries.values()].map((e) => this.closeTriggers(e)));
    this.entries.clear();
  }
}
