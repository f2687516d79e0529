/**
 * In-memory counters with an injectable clock. Entries that can no longer matter (a GCRA TAT in
 * the past, sliding windows two periods old, quotas past their period) are swept every 10 s.
 *
 * Rates run on a monotonic clock (performance.timeOrigin + performance.now()), not the wall
 * clock: a step back (NTP, a VM restored from a snapshot) would put every recent GCRA TAT an
 * hour ahead — each client refused for that hour, Retry-After 3600 — and reset the sliding
 * windows; a step forward would hand out a fresh burst. Quotas are calendar periods: the wall
 * clock. (An injected clock is used for both.)
 */
import { performance } from 'node:perf_hooks';
import { gcra, sliding, type GcraState, type SlidingState } from './algorithms.js';
import { QuotaFile } from './persist.js';
import type { Clock, CounterStore, QuotaDecision, QuotaQuery, RateDecision, RateQuery } from './types.js';
import type { Logger } from '../core/log.js';

/** Epoch-like ms that never step (the process's start on the wall clock, then monotonic). */
const monotonic: Clock = () => performance.timeOrigin + performance.now();

type Entry = { kind: 'gcra'; s: GcraState; expires: number } | { kind: 'sliding'; s: SlidingState; expires: number };

export class MemoryStore implements CounterStore {
  private readonly rates = new Map<string, Entry>();
  private readonly quotas = new Map<string, { used: number; expires: number }>();
  private readonly timer: NodeJS.Timeout;
  private file: QuotaFile | null = null;
  private readonly dirty = new Set<string>();
  private flushTimer: NodeJS.Timeout | undefined;
  /** Told when the state file cannot be written (once per failing run of flushes). */
  private fileLog: Pick<Logger, 'warn'> | undefined;
  private fileFailing = false;

  private readonly clock: Clock;
  private readonly rateClock: Clock;

  constructor(clock?: Clock) {
    this.clock = clock ?? Date.now;
    this.rateClock = clock ?? monotonic;
    this.timer = setInterval(() => this.sweep(), 10_000);
    this.timer.unref();
  }

  /** Synchronous core (the primary answers workers with it; tests call it directly). */
  rateNow(queries: readonly RateQuery[]): RateDecision[] {
    const now = this.rateClock();
    if (queries.length === 1 && queries[0]!.algorithm === 'gcra') {
      // One GCRA window (the common case): decided and stored in place, nothing to roll back.
      const q = queries[0]!;
      const id = `gcra|${q.periodMs}|${q.limit}|${q.key}`;
      const e = this.rates.get(id);
      const { decision, next } = gcra(e?.kind === 'gcra' ? e.s : undefined, q.limit, q.periodMs, q.cost, now);
      if (decision.allowed && next) {
        if (e?.kind === 'gcra') {
          e.s = next;
          e.expires = next.tat;
        } else this.rates.set(id, { kind: 'gcra', s: next, expires: next.tat });
      }
      return [decision];
    }
    const results: { decision: RateDecision; apply: () => void }[] = [];
    for (const q of queries) {
      const id = `${q.algorithm}|${q.periodMs}|${q.limit}|${q.key}`;
      const e = this.rates.get(id);
      if (q.algorithm === 'gcra') {
        const { decision, next } = gcra(e?.kind === 'gcra' ? e.s : undefined, q.limit, q.periodMs, q.cost, now);
        results.push({ decision, apply: () => next && this.rates.set(id, { kind: 'gcra', s: next, expires: next.tat }) });
      } else {
        const { decision, next } = sliding(e?.kind === 'sliding' ? e.s : undefined, q.limit, q.periodMs, q.cost, now);
        results.push({ decision, apply: () => this.rates.set(id, { kind: 'sliding', s: next, expires: next.start + 2 * q.periodMs }) });
      }
    }
    // All windows or none: a refused request takes nothing from the windows that allowed it.
    const allowed = results.every((r) => r.decision.allowed);
    if (allowed) for (const r of results) r.apply();
    if (allowed) return results.map((r) => r.decision);
    const retry = Math.max(...results.map((x) => x.decision.retryAfterMs));
    // A window that would have allowed it was not charged: its remaining is as before.
    return results.map((r, i) => (r.decision.allowed
      ? { ...r.decision, allowed: false, remaining: Math.min(queries[i]!.limit, r.decision.remaining + queries[i]!.cost), retryAfterMs: retry }
      : r.decision));
  }

  rate(queries: readonly RateQuery[]): Promise<RateDecision[]> {
    return Promise.resolve(this.rateNow(queries));
  }

  quotaNow(q: QuotaQuery): QuotaDecision {
    const now = this.clock();
    let e = this.quotas.get(q.key);
    if (e === undefined || e.expires <= now) e = { used: 0, expires: q.periodEnd };
    if (e.used + q.cost > q.limit) return { allowed: false, used: e.used, remaining: Math.max(0, q.limit - e.used) };
    e.used += q.cost;
    e.expires = q.periodEnd;
    this.quotas.set(q.key, e);
    if (this.file !== null) this.dirty.add(q.key);
    return { allowed: true, used: e.used, remaining: q.limit - e.used };
  }

  quota(q: QuotaQuery): Promise<QuotaDecision> {
    return Promise.resolve(this.quotaNow(q));
  }

  quotaUsageNow(key: string): number {
    const e = this.quotas.get(key);
    return e === undefined || e.expires <= this.clock() ? 0 : e.used;
  }

  quotaUsage(key: string): Promise<number> {
    return Promise.resolve(this.quotaUsageNow(key));
  }

  sweep(): void {
    const at = this.rateClock();
    for (const [k, e] of this.rates) if (e.expires <= at) this.rates.delete(k);
    const now = this.clock();
    for (const [k, e] of this.quotas) if (e.expires <= now) this.quotas.delete(k);
  }

  get size(): number {
    return this.rates.size + this.quotas.size;
  }

  /** Keeps quota counters in a file from now on (loading what it holds); null detaches. `log` hears of writes that fail. */
  persist(path: string | null, log?: Pick<Logger, 'warn'>): void {
    if (log) this.fileLog = log;
    if (this.file?.path === path) return;
    this.flush();
    this.file?.close();
    this.file = null;
    clearInterval(this.flushTimer);
    if (path === null) return;
    this.file = new QuotaFile(path);
    this.fileFailing = false;
    for (const row of this.file.load(this.clock())) {
      const mine = this.quotas.get(row.key);
      if (!mine || mine.used < row.used) this.quotas.set(row.key, { used: row.used, expires: row.expires });
    }
    this.flushTimer = setInterval(() => this.flush(), 1000);
    this.flushTimer.unref();
  }

  /**
   * Writes the counts changed since the last flush. Never throws (it runs from a timer and at
   * stop): a write that fails — the file locked by another process, a full disk — keeps them
   * changed, for the next flush, and is logged once until a flush succeeds.
   */
  flush(): void {
    if (this.file === null || this.dirty.size === 0) return;
    const rows: [string, { used: number; expires: number }][] = [];
    for (const k of this.dirty) {
      const e = this.quotas.get(k);
      if (e) rows.push([k, e]);
    }
    try {
      this.file.save(rows, this.clock());
    } catch (err) {
      if (!this.fileFailing) this.fileLog?.warn({ err: (err as Error).message, file: this.file.path }, 'cannot write quota counters to the state file (trying again every second; they are counted in memory meanwhile)');
      this.fileFailing = true;
      return;
    }
    this.dirty.clear();
    this.fileFailing = false;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    clearInterval(this.flushTimer);
    this.flush();
    this.file?.close();
    this.file = null;
  }
}
