/**
 * Scaling across gateway nodes sharing Redis: each node's advisor publishes, every tick, the
 * demand it counted (per service and per route) and its own utilisation into one Redis hash (a
 * field per node, holding its last few entries), and merges what the other nodes published since
 * it last looked (each entry once: a sequence number per node), so every node's recommenders see the whole cluster's
 * traffic. One node — the holder of a lease key (SET NX PX, renewed by its holder) — pushes the
 * triggers; the others compute the same decisions for KEDA, the gauges and /api/scaling.
 * Redis down: each node decides on its own traffic and pushes, but never a scale-down (its
 * own share of the traffic would under-count the cluster's); logged once a minute.
 */
import { randomUUID } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import type { Logger } from '../core/log.js';
import { DemandMeter, type DemandCounts } from './meter.js';

/** Entries a node keeps in its field: another node that read less often than it published still merges each (a stalled one is not fresh anyway). */
const KEPT = 4;

/** Several entries of one node as one: counts add up; the in-flight gauge (a level, not a count) is their mean. */
function combine(entries: NodeDemand[]): NodeDemand {
  if (entries.length === 1) return entries[0]!;
  const m = new DemandMeter(0);
  for (const e of entries) m.merge({ services: e.counts, routes: e.routes });
  const d = m.drain();
  for (const c of Object.values(d.services)) if (c.inflight !== undefined) c.inflight /= entries.length;
  const last = entries[entries.length - 1]!;
  return { ...last, counts: d.services, routes: d.routes };
}

const isObject = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);
const isNumber = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);
function countsOk(m: unknown): boolean {
  if (!isObject(m)) return false;
  for (const c of Object.values(m)) {
    if (!isObject(c) || !isNumber(c.n) || !isNumber(c.errors) || !isNumber(c.busyMs) || !isObject(c.hist)) return false;
    if ((c.timeouts !== undefined && !isNumber(c.timeouts)) || (c.inflight !== undefined && !isNumber(c.inflight))) return false;
    for (const k of Object.values(c.hist)) if (!isNumber(k)) return false;
  }
  return true;
}
/** An entry this node can merge (not: another version's shape, a hand-written value, garbage). */
function readable(e: unknown): e is NodeDemand {
  return isObject(e) && typeof e.boot === 'string' && isNumber(e.seq) && isNumber(e.at) && isNumber(e.utilization) && countsOk(e.counts) && countsOk(e.routes);
}

export interface NodeDemand {
  /** Random per process: a node restarted under the same id starts a new sequence. */
  boot: string;
  seq: number;
  at: number;
  counts: Record<string, DemandCounts>;
  routes: Record<string, DemandCounts>;
  utilization: number;
}

// Renews the lease only for its holder (so a node that lost it never steals it back by renewing).
const RENEW = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end`;

export class SharedDemand {
  private readonly key: string;
  private readonly leaseKey: string;
  private seq = 0;
  private readonly boot = randomUUID();
  /**
   * Per other node: the boot and sequence number seen last, its in-flight levels then, and on
   * this node's monotonic clock when its entry last changed (null: not seen changing, and its
   * time stamp was not fresh) and when it was last seen changing or first seen.
   */
  private readonly seen = new Map<string, { boot: string; seq: number; inflight: Record<string, number>; changedAt: number | null; seenAt: number }>();
  /** This node's last entries (its field holds them all). */
  private mine: NodeDemand[] = [];
  /** Per other node: its last utilisation (counted while its entry is fresh). */
  readonly utilization = new Map<string, number>();
  /** Whether the last exchange with Redis worked. */
  ok = true;
  private lastError = 0;
  /** Fields of other nodes already logged as unreadable (each once). */
  private readonly unreadable = new Set<string>();
  leader = true;
  /** Nodes with a fresh entry, this one included. */
  nodes = 1;

  /** `wallClock`: the time stamp of this node's entries (another node's clock is never compared with it but on first sight). */
  constructor(readonly client: Redis | Cluster, prefix: string, private readonly nodeId: string, private readonly log: Pick<Logger, 'warn'>, private readonly timeoutMs = 1000, private readonly wallClock: () => number = Date.now) {
    this.key = `${prefix}{scaling}`;
    this.leaseKey = `${prefix}{scaling}:leader`;
  }

  private bounded<T>(p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`redis did not answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      p.then((v) => { clearTimeout(t); resolve(v); }, (e: unknown) => { clearTimeout(t); reject(e as Error); });
    });
  }

  /**
   * Publishes this node's tick and returns the other nodes' entries not merged before (fresh
   * ones: changed within three intervals, on this node's clock: the nodes' wall clocks may
   * disagree by any amount). Never rejects: on a Redis error, nothing from others.
   */
  async exchange(mine: Omit<NodeDemand, 'boot' | 'seq' | 'at'>, intervalMs: number): Promise<NodeDemand[]> {
    const now = this.wallClock();
    const mono = performance.now();
    const entry: NodeDemand = { boot: this.boot, seq: ++this.seq, at: now, ...mine };
    this.mine = [...this.mine.slice(1 - KEPT), entry];
    try {
      const lease = Math.max(3 * intervalMs, 1000);
      const [, all, got, renewed] = await this.bounded(Promise.all([
        this.client.hset(this.key, this.nodeId, JSON.stringify(this.mine)),
        this.client.hgetall(this.key),
        this.client.set(this.leaseKey, this.nodeId, 'PX', lease, 'NX'),
        this.client.eval(RENEW, 1, this.leaseKey, this.nodeId, String(lease)),
      ]));
      this.leader = got === 'OK' || renewed === 1;
      const out: NodeDemand[] = [];
      const forget: string[] = [];
      let nodes = 1;
      const fresh = new Set<string>();
      for (const [node, text] of Object.entries(all)) {
        if (node === this.nodeId) continue;
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          forget.push(node);
          continue;
        }
        // (an array of its last entries, oldest first; one entry from an older version). An entry
        // of another shape — another version's, a hand-written one, null — is skipped: were it
        // merged, the exchange would fail as if Redis were down and every node would push.
        const list = (Array.isArray(parsed) ? parsed : [parsed]).filter(readable);
        const e = list[list.length - 1];
        if (e === undefined) {
          if (!this.unreadable.has(node)) {
            this.unreadable.add(node);
            this.log.warn({ node }, 'scaling: skipping a node\'s entry in redis this node cannot read');
          }
          if (!isObject(parsed) && !Array.isArray(parsed)) forget.push(node);
          continue;
        }
        const inflight = (x: NodeDemand) => Object.fromEntries(Object.entries(x.counts).filter(([, c]) => c.inflight !== undefined).map(([s, c]) => [s, c.inflight!]));
        const last = this.seen.get(node);
        const changed = last !== undefined && (last.boot !== e.boot || e.seq > last.seq);
        if (last === undefined) {
          // First sight: only its time stamp tells whether it is alive. Not fresh: its next entry will.
          const alive = Math.abs(now - e.at) <= 3 * intervalMs;
          this.seen.set(node, { boot: e.boot, seq: alive ? -Infinity : e.seq, inflight: {}, changedAt: alive ? mono : null, seenAt: mono });
        } else if (changed) {
          last.changedAt = mono;
          last.seenAt = mono;
        }
        const seen = this.seen.get(node)!;
        if (mono - seen.seenAt > 60_000) {
          forget.push(node);
          this.seen.delete(node);
          continue;
        }
        if (seen.changedAt === null || mono - seen.changedAt > 3 * intervalMs) continue;
        nodes++;
        fresh.add(node);
        this.utilization.set(node, e.utilization);
        const news = list.filter((x) => x.boot === e.boot && (seen.boot !== e.boot || x.seq > seen.seq));
        if (news.length === 0) {
          // Nothing new since the last look: its requests in flight then are still in flight (a level carries over; counts do not).
          if (Object.keys(seen.inflight).length > 0) {
            out.push({ ...e, counts: Object.fromEntries(Object.entries(seen.inflight).map(([s, n]) => [s, { n: 0, errors: 0, timeouts: 0, busyMs: 0, hist: {}, inflight: n }])), routes: {} });
          }
          continue;
        }
        out.push(combine(news));
        Object.assign(seen, { boot: e.boot, seq: e.seq, inflight: inflight(e) });
      }
      for (const node of this.utilization.keys()) if (!fresh.has(node)) this.utilization.delete(node);
      for (const node of this.seen.keys()) if (!(node in all)) this.seen.delete(node);
      this.nodes = nodes;
      this.ok = true;
      if (forget.length) void this.client.hdel(this.key, ...forget).catch(() => {});
      return out;
    } catch (err) {
      this.leader = true; // alone: this node decides and pushes for its own traffic
      this.nodes = 1;
      this.ok = false;
      if (now - this.lastError > 60_000) {
        this.lastError = now;
        this.log.warn({ err: (err as Error).message }, 'scaling: cannot share demand through redis; deciding on this node\'s traffic only');
      }
      return [];
    }
  }

  /** Leaves the cluster view at once (stop). */
  async leave(): Promise<void> {
    await this.bounded(Promise.all([
      this.client.hdel(this.key, this.nodeId),
      this.client.eval(`if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`, 1, this.leaseKey, this.nodeId),
    ])).catch(() => undefined);
  }
}
