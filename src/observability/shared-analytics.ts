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
import { readableState, type AnalyticsState } from './analytics.js';
import type { Logger } from '../core/log.js';

const FORGET_MS = 10 * 60_000;
/** How long a first publish waits for a client still connecting (RedisStore's connect timeout is at most 2 s). */
const FIRST_WAIT_MS = 2000;


interface Entry { at: number; every: number; states: AnalyticsState[] }

export class SharedAnalytics {
  private readonly key: string;
  /** This node's field: host, pid and a random part (a restarted node is a new node). */
  readonly nodeId = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  private timer: NodeJS.Timeout | undefined;
  private stopped = true;
  private onReady: (() => void) | undefined;
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

  /**
   * Publishes now and every publishMs. A client still connecting (the node is starting) is
   * waited for: the first publish goes when it is ready, or — a Redis that does not come — after
   * FIRST_WAIT_MS (or one interval, if longer), whose failure is then worth a warning.
   */
  start(): void {
    this.stopped = false;
    const tick = () => {
      this.dropOnReady();
      void this.publish().finally(() => {
        if (!this.stopped) this.timer = setTimeout(tick, this.publishMs).unref();
      });
    };
    if (this.client.status === 'ready') {
      this.timer = setTimeout(tick, 0).unref();
      return;
    }
    this.onReady = () => {
      clearTimeout(this.timer);
      if (!this.stopped) tick();
    };
    this.client.once('ready', this.onReady);
    this.timer = setTimeout(tick, Math.max(FIRST_WAIT_MS, this.publishMs)).unref();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.dropOnReady();
  }

  private dropOnReady(): void {
    if (this.onReady) this.client.off('ready', this.onReady);
    this.onReady = undefined;
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
      let e: Partial<Entry> | null;
      try {
        e = JSON.parse(text) as Partial<Entry> | null;
      } catch {
        forget.push(node);
        continue;
      }
      // (a value of another shape — another version's, a hand-written one — is no node this one
      // can read: skipped, rather than the whole view failing on it)
      if (typeof e !== 'object' || e === null || typeof e.at !== 'number' || !Array.isArray(e.states)) {
        if (typeof e !== 'object' || e === null) forget.push(node);
        continue;
      }
      if (now - e.at > FORGET_MS) forget.push(node);
      if (now - e.at > 3 * (e.every || 10_000)) continue;
      // (states of another version's, or hand-written: the report would throw on them, for every node)
      if (!e.states.every(readableState)) continue;
      nodes++;
      states.push(...e.states);
    }
    if (forget.length) void this.client.hdel(this.key, ...forget).catch(() => {});
    return { nodes, states };
  }
}
