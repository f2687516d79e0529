/**
 * One truth per node: with workers, the primary holds the in-memory counters and every worker
 * asks it over the cluster IPC channel (one round trip per decision, ~0.1 ms on loopback).
 */
import type { CounterStore, QuotaDecision, QuotaQuery, RateDecision, RateQuery } from './types.js';
import type { MemoryStore } from './memory.js';

export type CounterRequest =
  | { tp: 'ctr'; id: number; op: 'rate'; queries: RateQuery[] }
  | { tp: 'ctr'; id: number; op: 'quota'; query: QuotaQuery }
  | { tp: 'ctr'; id: number; op: 'usage'; key: string };
export type CounterReply = { tp: 'ctr-r'; id: number; value: unknown };

/** Primary side: answers one request from a worker. */
export function answerCounter(store: MemoryStore, m: CounterRequest): CounterReply {
  const value = m.op === 'rate' ? store.rateNow(m.queries) : m.op === 'quota' ? store.quotaNow(m.query) : store.quotaUsageNow(m.key);
  return { tp: 'ctr-r', id: m.id, value };
}

/** Worker side: a CounterStore whose every call is answered by the primary. */
export class IpcStore implements CounterStore {
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();

  constructor(private readonly send: (m: CounterRequest) => void, private readonly timeoutMs = 1000) {}

  /** Feed every 'ctr-r' message from the primary here. */
  onReply(m: CounterReply): void {
    const w = this.waiting.get(m.id);
    if (!w) return;
    this.waiting.delete(m.id);
    clearTimeout(w.timer);
    w.resolve(m.value);
  }

  private call<T>(m: { op: 'rate'; queries: RateQuery[] } | { op: 'quota'; query: QuotaQuery } | { op: 'usage'; key: string }): Promise<T> {
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error('the primary did not answer a counter request in time'));
      }, this.timeoutMs);
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      try {
        this.send({ ...m, tp: 'ctr', id } as CounterRequest);
      } catch (err) {
        clearTimeout(timer);
        this.waiting.delete(id);
        reject(err as Error);
      }
    });
  }

  rate(queries: readonly RateQuery[]): Promise<RateDecision[]> {
    return this.call({ op: 'rate', queries: [...queries] });
  }

  quota(query: QuotaQuery): Promise<QuotaDecision> {
    return this.call({ op: 'quota', query });
  }

  quotaUsage(key: string): Promise<number> {
    return this.call({ op: 'usage', key });
  }

  async close(): Promise<void> {
    for (const [, w] of this.waiting) {
      clearTimeout(w.timer);
      w.reject(new Error('closing'));
    }
    this.waiting.clear();
  }
}
