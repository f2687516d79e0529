/**
 * Analytics across gateway nodes (several Turnpike nodes sharing Redis): every node publishes
 * its analytics states (its workers') every `publishMs` into one Redis hash, a field per node,
 * and /analytics merges the fields of the nodes seen recently with its own live states.
 * One hash key (hash-tagged, so it lives in one Redis Cluster slot); a node that stopped
 * publishing drops out of the view after three intervals, and its field is deleted after FORGET_MS.
 */
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import type { AnalyticsState } from './analytics.js';
import type { Logger } from '../core/log.js';

const FORGET_MS = 10 * 60_000;


interface Entry { at: number; every: number; states: AnalyticsState[] }

export class SharedAnalytics {
  private readonly key: string;
  /** This node's field: host, pid and a random part (a restarted node is a new node). */
  readonly nodeId = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  private timer: NodeJS.Timeout | undefined;
  private lastError = 0;

  constructor(
    readonly client: Redis | Cluster,
    prefix: string,
    private readonly local: () => Promise<AnalyticsState[]>,
    private readonly log: Logger,
    readonly publishMs: number,
    private readonly timeoutMs = 1000,
  ) {
    this.key = `${prefix}{analytics}`;
  }

  start(): void {
    const tick = () => {
      void this.publish().finally(() => {
        if (this.timer !== undefined) this.timer = setTimeout(tick, this.publishMs).unref();
      });
    };
    this.timer = setTimeout(tick, 0).unref();
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private bounded<T>(p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`redis did not answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      p.then((v) => { clearTimeout(t); resolve(v); }, (e: unknown) => { clearTimeout(t); reject(e as Error); });
    });
  }

  async publish(): Promise<void> {
    try {
      const entry: Entry = { at: Date.now(), every: this.publishMs, states: await this.local() };
      await this.bounded(this.client.hset(this.key, this.nodeId, JSON.stringify(entry)));
    } catch (err) {
      // Logged at most once a minute: a Redis outage must not flood the log.
      if (Date.now() - this.lastError > 60_000) {
        this.lastError = Date.now();
        this.log.warn({ err: (err as Error).message }, 'publishing analytics to redis failed; /analytics shows this node only until it works');
      }
    }
  }

  /** The other nodes' states (fresh ones only); rejects when Redis does not answer. */
  async others(): Promise<{ nodes: number; states: AnalyticsState[] }> {
    const all = await this.bounded(this.client.hgetall(this.key));
    const now = Date.now();
    const states: AnalyticsState[] = [];
    let nodes = 0;
    const forget: string[] = [];
    for (const [node, text] of Object.entries(all)) {
      if (node === this.nodeId) continue;
      let e: Entry;
      try {
        e = JSON.parse(text) as Entry;
      } catch {
        forget.push(node);
        continue;
      }
      if (now - e.at > FORGET_MS) forget.push(node);
      if (now - e.at > 3 * (e.every || 10_000)) continue;
      nodes++;
      states.push(...e.states);
    }
    if (forget.length) void this.client.hdel(this.key, ...forget).catch(() => {});
    return { nodes, states };
  }
}
