/**
 * One truth per node: with workers, the primary holds the in-memory counters and every worker
 * asks it over the cluster IPC channel. The decisions a worker needs within one turn of its
 * event loop travel together: the calls are gathered and sent as one message at the end of the
 * turn (setImmediate), and the primary answers the whole batch with one message, in order. At
 * 64 concurrent requests that is a handful of IPC messages per turn instead of one round trip
 * per request; at low load a batch holds one call and costs what a single call did. Decisions
 * stay exact: the primary still decides every call, one after another.
 */
import type { CounterStore, QuotaDecision, QuotaQuery, RateDecision, RateQuery } from './types.js';
import type { MemoryStore } from './memory.js';

export type CounterCall =
  | { id: number; op: 'rate'; queries: RateQuery[] }
  | { id: number; op: 'quota'; query: QuotaQuery }
  | { id: number; op: 'usage'; key: string };
/** A worker's calls of one event-loop turn. */
export type CounterRequest = { tp: 'ctr'; calls: CounterCall[] };
/** The primary's answers, in the order of the calls. */
export type CounterReply = { tp: 'ctr-r'; answers: { id: number; value: unknown }[] };

/** Primary side: answers a worker's batch (every call decided in turn; a call that throws gets its error). */
export function answerCounter(store: MemoryStore, m: CounterRequest): CounterReply {
  const answers: { id: number; value: unknown }[] = [];
  for (const c of Array.isArray(m.calls) ? m.calls : []) {
    let value: unknown;
    try {
      value = c.op === 'rate' ? store.rateNow(c.queries) : c.op === 'quota' ? store.quotaNow(c.query) : store.quotaUsageNow(c.key);
    } catch (err) {
      value = { error: (err as Error).message ?? String(err) };
    }
    answers.push({ id: c.id, value });
  }
  return { tp: 'ctr-r', answers };
}

interface Waiting {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  /** When the call is given up (ms, Date.now()). */
  until: number;
}

/** Worker side: a CounterStore whose every call is answered by the primary. */
export class IpcStore implements CounterStore {
  private seq = 0;
  private readonly waiting = new Map<number, Waiting>();
  /** Calls of this turn, not sent yet. */
  private batch: CounterCall[] = [];
  private flushing: NodeJS.Immediate | null = null;
  /** One sweep of expired calls while any wait (not a timer per call). */
  private sweeper: NodeJS.Timeout | null = null;

  constructor(private readonly send: (m: CounterRequest) => void, private readonly timeoutMs = 1000) {}

  /** Feed every 'ctr-r' message from the primary here. */
  onReply(m: CounterReply): void {
    if (!Array.isArray(m.answers)) return;
    for (const a of m.answers) {
      const w = this.waiting.get(a.id);
      if (!w) continue;
      this.waiting.delete(a.id);
      const v = a.value as { error?: unknown } | null;
      if (v !== null && typeof v === 'object' && typeof v.error === 'string' && Object.keys(v).length === 1) w.reject(new Error(v.error));
      else w.resolve(a.value);
    }
    if (this.waiting.size === 0) this.stopSweeper();
  }

  private call<T>(c: { op: 'rate'; queries: RateQuery[] } | { op: 'quota'; query: QuotaQuery } | { op: 'usage'; key: string }): Promise<T> {
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject, until: Date.now() + this.timeoutMs });
      this.batch.push({ ...c, id } as CounterCall);
      this.flushing ??= setImmediate(() => this.flush());
      this.sweeper ??= setInterval(() => this.sweep(), Math.max(10, Math.min(250, this.timeoutMs / 4)));
    });
  }

  /** Sends this turn's calls as one message. */
  private flush(): void {
    this.flushing = null;
    const calls = this.batch;
    if (calls.length === 0) return;
    this.batch = [];
    try {
      this.send({ tp: 'ctr', calls });
    } catch (err) {
      for (const c of calls) {
        const w = this.waiting.get(c.id);
        if (!w) continue;
        this.waiting.delete(c.id);
        w.reject(err as Error);
      }
      if (this.waiting.size === 0) this.stopSweeper();
    }
  }

  /** Rejects the calls the primary did not answer in time. */
  private sweep(): void {
    const now = Date.now();
    for (const [id, w] of this.waiting) {
      if (w.until > now) continue;
      this.waiting.delete(id);
      w.reject(new Error('the primary did not answer a counter request in time'));
    }
    if (this.waiting.size === 0) this.stopSweeper();
  }

  private stopSweeper(): void {
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
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
    if (this.flushing !== null) clearImmediate(this.flushing);
    this.flushing = null;
    this.batch = [];
    this.stopSweeper();
    for (const [, w] of this.waiting) w.reject(new Error('closing'));
    this.waiting.clear();
  }
}
