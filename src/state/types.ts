/**
 * Counters behind one interface: in-memory (one truth per node: the primary holds it and
 * workers ask it over IPC) and Redis (one truth across nodes). Limits are asked, per request,
 * to take `cost` from a key's allowance atomically.
 */

export type Algorithm = 'gcra' | 'sliding-window';

export interface RateQuery {
  key: string;
  /** Requests (cost units) allowed per period. */
  limit: number;
  periodMs: number;
  cost: number;
  algorithm: Algorithm;
}

export interface RateDecision {
  allowed: boolean;
  /** Units still available right after this decision. */
  remaining: number;
  /** ms until the allowance is whole again. */
  resetMs: number;
  /** When refused: ms until this cost would be allowed. */
  retryAfterMs: number;
}

export interface QuotaQuery {
  key: string;
  limit: number;
  cost: number;
  /** The period's end (epoch ms): the counter's expiry. */
  periodEnd: number;
}

export interface QuotaDecision {
  allowed: boolean;
  used: number;
  remaining: number;
}

export interface CounterStore {
  /** Several windows at once: all of them are checked, and the cost is taken from all only if every one allows it. */
  /** How long a call may take by the store's own setting (Redis: `redis.timeout`), when it has one. */
  readonly defaultTimeoutMs?: number;
  rate(queries: readonly RateQuery[], timeoutMs?: number): Promise<RateDecision[]>;
  /** (`timeoutMs`: how long the caller waits; a store with a deadline of its own uses it instead) */
  quota(q: QuotaQuery, timeoutMs?: number): Promise<QuotaDecision>;
  /** Current usage of a quota key (without taking anything). */
  quotaUsage(key: string): Promise<number>;
  close?(): Promise<void>;
}

export type Clock = () => number;
