/**
 * In-memory counters with an injectable clock. Entries that can no longer matter (a GCRA TAT in
 * the past, sliding windows two periods old, quotas past their period) are swept every 10 s.
 *
 * Rates run on a monotonic clock (performance.timeOrigin + performance.now()), not the wall
 * clock: a step back (NTP, a VM restored from a snapshot) would put every recent GCRA TAT an
 * hour ahead — each client refused for that hour, Retry-After 3600 — and reset the sliding
 * windows; a step forward would hand out a fresh burst. Quotas are calendar periods: the wall
 * clock. (An injected clock is used for both.)
 *
 * Keys can be client-chosen (`by: header:X`, an IP): each holds an entry until it can no longer
 * matter, so the rate and the quota maps are each capped (`maxKeys`). At the cap, entries that
 * can no longer matter go first; then the tenth that tells least: the rate entries closest to
 * expiry (a GCRA TAT about to pass owes little: dropping it hands that client at most what it
 * would have had back moments later) and the quotas least used — as Kong's local counters drop
 * least recently used entries from their fixed-size shared dict when it is full. Said once per
 * episode in the log.
 */
import { performance } from 'node:perf_hooks';
import { gcra, gcraAt, sliding, slidingAt, type GcraState, type SlidingState } from './algorithms.js';
import { openQuotaFile, type QuotaFile } from './persist.js';
import type { Clock, CounterStore, QuotaDecision, QuotaQuery, RateDecision, RateQuery } from './types.js';
import type { Logger } from '../core/log.js';

/** Epoch-like ms that never step (the process's start on the wall clock, then monotonic). */
export const monotonic: Clock = () => performance.timeOrigin + performance.now();

type Entry = { kind: 'gcra'; s: GcraState; expires: number } | { kind: 'sliding'; s: SlidingState; expires: number };

/** Default cap of each map (rates, quotas): about 200 MB of entries at most. */
export const MAX_COUNTER_KEYS = 1_000_000;

export interface MemoryStoreOptions {
  /** Entries kept per map (rates, quotas) before the least telling are dropped (default MAX_COUNTER_KEYS). */
  maxKeys?: number;
  /** Hears when the cap drops entries (once per episode: until a sweep finds the maps below it). */
  log?: Pick<Logger, 'warn'>;
}

/**
 * Drops from a full map the entries whose `worth` is lowest: all those at or below the
 * quantile of a sample that leaves 90% of the cap (O(n), no sort of the whole map); ties go too, then the
 * oldest inserted if the map is still full (every worth equal).
 */
function shed<V>(map: Map<string, V>, max: number, worth: (v: V) => number): number {
  const before = map.size;
  const target = Math.floor(max * 0.9);
  const sample: number[] = [];
  const step = Math.max(1, Math.floor(map.size / 1024));
  let i = 0;
  for (const v of map.values()) if (i++ % step === 0) sample.push(worth(v));
  sample.sort((a, b) => a - b);
  const cut = sample[Math.floor(sample.length * ((map.size - target) / map.size))] ?? -Infinity;
  for (const [k, v] of map) if (worth(v) < cut) map.delete(k);
  if (map.size > target) {
    for (const [k, v] of map) {
      if (map.size <= target) break;
      if (worth(v) <= cut) map.delete(k);
    }
  }
  if (map.size > target) for (const k of map.keys()) { if (map.size <= target) break; map.delete(k); }
  return before - map.size;
}

/** Quota counts written per transaction on the event loop (~15 ms of SQLite work). */
const FLUSH_SLICE = 2000;

export class MemoryStore implements CounterStore {
  private readonly rates = new Map<string, Entry>();
  private readonly quotas = new Map<string, { used: number; expires: number }>();
  private readonly timer: NodeJS.Timeout;
  private file: QuotaFile | null = null;
  private readonly dirty = new Set<string>();
  private flushTimer: NodeJS.Timeout | undefined;
  /** The next slice of a flush with more rows than FLUSH_SLICE. */
  private nextSlice: NodeJS.Immediate | undefined;
  /** Told when the state file cannot be written (once per failing run of flushes). */
  private fileLog: Pick<Logger, 'warn'> | undefined;
  private fileFailing = false;

  private readonly clock: Clock;
  private readonly rateClock: Clock;
  private readonly maxKeys: number;
  private readonly capLog: Pick<Logger, 'warn'> | undefined;
  /** The maps at their cap since the last sweep found them below it (warned once per episode). */
  private readonly capped = new Set<'rate' | 'quota'>();
  /** Entries the cap dropped (rates and quotas). */
  shedCount = 0;

  constructor(clock?: Clock, opts: MemoryStoreOptions = {}) {
    this.clock = clock ?? Date.now;
    this.rateClock = clock ?? monotonic;
    this.maxKeys = Math.max(10, opts.maxKeys ?? MAX_COUNTER_KEYS);
    this.capLog = opts.log;
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
      if (e?.kind === 'gcra' && e.s.tat > now + q.periodMs) this.rebase(e, q.periodMs, now);
      const { decision, next } = gcra(e?.kind === 'gcra' ? e.s : undefined, q.limit, q.periodMs, q.cost, now);
      if (decision.allowed && next) {
        if (e?.kind === 'gcra') {
          e.s = next;
          e.expires = next.tat;
        } else {
          if (this.rates.size >= this.maxKeys) this.makeRoom('rate');
          this.rates.set(id, { kind: 'gcra', s: next, expires: next.tat });
        }
      }
      return [decision];
    }
    const results: { decision: RateDecision; apply: () => void }[] = [];
    for (const q of queries) {
      const id = `${q.algorithm}|${q.periodMs}|${q.limit}|${q.key}`;
      const e = this.rates.get(id);
      if (e !== undefined) this.rebase(e, q.periodMs, now);
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
    if (allowed && this.rates.size + results.length > this.maxKeys) this.makeRoom('rate');
    if (allowed) for (const r of results) r.apply();
    if (allowed) return results.map((r) => r.decision);
    const retry = Math.max(...results.map((x) => x.decision.retryAfterMs));
    // A window that would have allowed it was not charged: its remaining is as before.
    return results.map((r, i) => (r.decision.allowed
      ? { ...r.decision, allowed: false, remaining: Math.min(queries[i]!.limit, r.decision.remaining + queries[i]!.cost), retryAfterMs: retry }
      : r.decision));
  }

  /** An entry written before the clock stepped back, as of now (algorithms.ts gcraAt / slidingAt), kept whatever the decision. */
  private rebase(e: Entry, periodMs: number, now: number): void {
    if (e.kind === 'gcra') {
      const s = gcraAt(e.s, periodMs, now)!;
      if (s !== e.s) { e.s = s; e.expires = s.tat; }
    } else {
      const s = slidingAt(e.s, periodMs, now)!;
      if (s !== e.s) { e.s = s; e.expires = s.start + 2 * periodMs; }
    }
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
    if (this.quotas.size >= this.maxKeys && !this.quotas.has(q.key)) this.makeRoom('quota');
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
    if (this.rates.size < this.maxKeys * 0.9) this.capped.delete('rate');
    if (this.quotas.size < this.maxKeys * 0.9) this.capped.delete('quota');
  }

  /** A map at its cap: the entries that can no longer matter go, then the least telling tenth. */
  private makeRoom(which: 'rate' | 'quota'): void {
    this.sweep();
    const map = which === 'rate' ? this.rates : this.quotas;
    if (map.size < this.maxKeys) return;
    const dropped = which === 'rate'
      ? shed(this.rates, this.maxKeys, (e) => e.expires)
      : shed(this.quotas, this.maxKeys, (e) => e.used);
    this.shedCount += dropped;
    if (!this.capped.has(which)) {
      this.capped.add(which);
      (this.capLog ?? this.fileLog)?.warn({ kind: which, keys: this.maxKeys, dropped },
        `${which} counters reached ${this.maxKeys} keys (a limit keyed by a value clients choose, or very many clients): the least telling were dropped; those clients start afresh`);
    }
  }

  get size(): number {
    return this.rates.size + this.quotas.size;
  }

  /** Keeps quota counters in a file from now on (loading what it holds); null detaches. `log` hears of writes that fail. */
  persist(path: string | null, log?: Pick<Logger, 'warn'>): void {
    if (log) this.fileLog = log;
    if (this.file?.path === path) return;
    this.flushAll();
    this.file?.close();
    this.file = null;
    clearInterval(this.flushTimer);
    if (path === null) return;
    const { file, rows } = openQuotaFile(path, this.clock(), (err, movedTo) => {
      this.fileLog?.warn({ err: err.message, file: path, moved_to: movedTo }, 'the quota state file is corrupt: moved aside, a new one started (the counts it held are lost)');
    });
    this.file = file;
    this.fileFailing = false;
    for (const row of rows) {
      const mine = this.quotas.get(row.key);
      if (!mine && this.quotas.size >= this.maxKeys) this.makeRoom('quota');
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
    this.flushSome(FLUSH_SLICE);
  }

  /**
   * Writes at most `max` changed counts in one transaction; more left: the next slice follows on
   * a later turn of the event loop (a flood of new keys — a limit keyed by a value clients
   * choose — made one transaction of 10,000 rows hold the loop ~70 ms, of 100,000 ~760 ms).
   */
  private flushSome(max: number): void {
    clearImmediate(this.nextSlice);
    this.nextSlice = undefined;
    if (this.file === null || this.dirty.size === 0) return;
    const rows: [string, { used: number; expires: number }][] = [];
    const keys: string[] = [];
    for (const k of this.dirty) {
      if (keys.length >= max) break;
      keys.push(k);
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
    for (const k of keys) this.dirty.delete(k);
    this.fileFailing = false;
    if (this.dirty.size > 0 && max === FLUSH_SLICE) {
      this.nextSlice = setImmediate(() => this.flush());
      this.nextSlice.unref();
    }
  }

  /** Every changed count, now (a detach, a stop). */
  private flushAll(): void {
    this.flushSome(Infinity);
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    clearInterval(this.flushTimer);
    this.flushAll();
    this.file?.close();
    this.file = null;
  }
}
