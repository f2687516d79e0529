/**
 * The in-process queue of a store's writes (one at a time: one pooled connection, one
 * transaction), bounded so that a store that hangs does not make writes wait behind one
 * another (PostgreSQL stopped by SIGSTOP: each write waited for the previous one's timeouts,
 * 8 concurrent admin writes answered 503 after 6, 9, ... 27 s).
 *
 * - A write that has not *started* within `waitMs` of its arrival (the store's bound on one
 *   write: connecting plus a statement) fails with StoreUnavailable and is never run: so no
 *   write waits longer than one write's worst case, plus a little.
 * - A write that finds the store unavailable (`failed()`: connecting or a statement failed,
 *   timed out, the lock could not be had) fails at once every write queued behind it — those
 *   that arrived before that failure; none of them is run. A write arriving later is tried.
 *
 * A write refused here was never started, so it is never applied later: its answer (503) is
 * final. (A started write whose COMMIT got no answer is another matter: the store says so.)
 */
import { performance } from 'node:perf_hooks';
import { StoreUnavailable } from './types.js';

export class WriteQueue {
  private tail: Promise<void> = Promise.resolve();
  /** The last failure of a started write (performance.now() when it failed). */
  private failure: { at: number; error: StoreUnavailable } | null = null;

  /**
   * @param waitMs the longest a write waits for its turn.
   * @param describe the store, for messages: `the postgres store postgres://...`.
   */
  constructor(private readonly waitMs: number, private readonly describe: string) {}

  /** A started write found the store unavailable: the writes queued until now fail with it, unrun. */
  failed(error: StoreUnavailable): void {
    this.failure = { at: performance.now(), error };
  }

  /** Runs `write` after the writes queued before it; rejects with StoreUnavailable, unrun, as described above. */
  run<T>(write: () => Promise<T>): Promise<T> {
    const arrived = performance.now();
    const done = new Promise<T>((resolve, reject) => {
      let waiting = true;
      const timer = setTimeout(() => {
        if (!waiting) return;
        waiting = false;
        reject(new StoreUnavailable(`${this.describe} is unavailable (writing): this write waited ${this.waitMs} ms behind other writes without starting; it was not written`));
      }, this.waitMs);
      const turn = async (): Promise<void> => {
        clearTimeout(timer);
        if (!waiting) return; // given up: never run
        waiting = false;
        const f = this.failure;
        if (f !== null && f.at >= arrived) {
          reject(new StoreUnavailable(`${f.error.message} (found by a write ahead of this one, which was not written)`, f.error));
          return;
        }
        try {
          resolve(await write());
        } catch (err) {
          reject(err);
        }
      };
      this.tail = this.tail.then(turn);
    });
    // (as a promise chain did: a failure the caller learns of late is not an unhandled rejection)
    done.catch(() => undefined);
    return done;
  }

  /** Resolves once every write queued so far (and any queued meanwhile) has settled. */
  async idle(): Promise<void> {
    for (let tail = this.tail; ; tail = this.tail) {
      await tail;
      if (tail === this.tail) return;
    }
  }
}
