/**
 * One truth per node: with workers, the primary holds the in-memory counters and every worker
 * asks it over the cluster IPC channel. The decisions a worker needs within one turn of its
 * event loop travel together: the calls are gathered and sent as one message at the end of the
 * turn (setImmediate), and the primary answers the whole batch with one message, in order. At
 * 64 concurrent requests that is a handful of IPC messages per turn instead of one round trip
 * per request; at low load a batch holds one call and costs what a single call did. Decisions
 * stay exact: the primary still decides every call, one after another.
 *
 * Versions: a worker batches only once its primary said it understands batches (`batched()`,
 * from the primary's config message). A worker started with new code under a primary still
 * running older code (a rolling restart after an upgrade) sends one message per call, the
 * format older primaries answer; a primary answers both formats.
 */
import { performance } from 'node:perf_hooks';
import type { CounterStore, QuotaDecision, QuotaQuery, RateDecision, RateQuery } from './types.js';
import type { MemoryStore } from './memory.js';

export type CounterCall =
  | { id: number; op: 'rate'; queries: RateQuery[] }
  | { id: number; op: 'quota'; query: QuotaQuery }
  | { id: number; op: 'usage'; key: string };
type Answer = { id: number; value: unknown } | { id: number; error: string };
/**
 * A worker's calls of one event-loop turn (`ctrb`), or one call (`ctr`, what older primaries
 * read). `deadline` (epoch ms): when the worker gives up on the batch; the primary does not
 * decide a batch it receives later, so a call the worker already failed (its limit's `fault`
 * applied) is not counted as well.
 */
export type CounterRequest = { tp: 'ctrb'; calls: CounterCall[]; deadline?: number } | ({ tp: 'ctr' } & CounterCall);
/** The primary's answers to a batch, in the order of the calls (`ctrb-r`), or to one call (`ctr-r`). */
export type CounterReply = { tp: 'ctrb-r'; answers: Answer[] } | ({ tp: 'ctr-r' } & Answer);

function decide(store: MemoryStore, c: CounterCall): Answer {
  try {
    const value = c.op === 'rate' ? store.rateNow(c.queries) : c.op === 'quota' ? store.quotaNow(c.query) : store.quotaUsageNow(c.key);
    return { id: c.id, value };
  } catch (err) {
    return { id: c.id, error: String((err as Error | null)?.message ?? err) };
  }
}

/** Primary side: answers a worker's batch or single call (each call decided in turn; one that throws gets its error). */
export function answerCounter(store: MemoryStore, m: CounterRequest): CounterReply {
  if (m.tp === 'ctr') return { tp: 'ctr-r', ...decide(store, m) };
  const answers: Answer[] = [];
  // (the primary was busy past the worker's timeout: the worker answered these requests already)
  const late = typeof m.deadline === 'number' && Date.now() > m.deadline;
  for (const c of Array.isArray(m.calls) ? m.calls : []) {
    if (c !== null && typeof c === 'object') answers.push(late ? { id: c.id, error: 'the primary got the call after the worker gave up on it' } : decide(store, c));
  }
  return { tp: 'ctrb-r', answers };
}

interface Waiting {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  /** When the call is given up (ms, performance.now()). */
  until: number;
}

/** Worker side: a CounterStore whose every call is answered by the primary. */
export class IpcStore implements CounterStore {
  private seq = 0;
  private readonly waiting = new Map<number, Waiting>();
  /** Calls of this turn, not sent yet, and when the first was made (performance.now()). */
  private batch: CounterCall[] = [];
  private batchStart = 0;
  private flushing: NodeJS.Immediate | null = null;
  /** One sweep of expired calls while any wait (not a timer per call). */
  private sweeper: NodeJS.Timeout | null = null;
  /** The primary answers batches (else one message per call). */
  private batching = false;

  constructor(private readonly send: (m: CounterRequest) => void, private readonly timeoutMs = 1000) {}

  /** The primary said it answers batches (its config message). */
  batched(yes: boolean): void {
    this.batching = yes;
  }

  /** Feed every 'ctr-r' / 'ctrb-r' message from the primary here. */
  onReply(m: CounterReply): void {
    if (m.tp === 'ctr-r') this.settle(m);
    else if (Array.isArray(m.answers)) for (const a of m.answers) if (a !== null && typeof a === 'object') this.settle(a);
    if (this.waiting.size === 0) this.stopSweeper();
  }

  private settle(a: Answer): void {
    const w = this.waiting.get(a.id);
    if (!w) return;
    this.waiting.delete(a.id);
    if ('error' in a) w.reject(new Error(a.error));
    else w.resolve(a.value);
  }

  private call<T>(c: { op: 'rate'; queries: RateQuery[] } | { op: 'quota'; query: QuotaQuery } | { op: 'usage'; key: string }): Promise<T> {
    const id = ++this.seq;
    const now = performance.now();
    if (this.batch.length === 0) this.batchStart = now;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject, until: now + this.timeoutMs });
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
      // (the first call of the batch is given up first: the primary decides none after that)
      if (this.batching) this.send({ tp: 'ctrb', calls, deadline: Date.now() + this.timeoutMs - (performance.now() - this.batchStart) });
      else for (const c of calls) this.send({ tp: 'ctr', ...c });
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
    const now = performance.now();
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
