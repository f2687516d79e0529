/** Deadlines for calls to a counter store. */

/**
 * Calls `fn` once `ms` passed AND the I/O that was ready by then has been read. A plain timer
 * runs before the event loop polls sockets: after a busy turn (a burst of requests parsed in
 * one go), a store's answer already waiting in its socket would lose to its own deadline, and
 * `fault: open` would let the request through (seen: 29-68 of a Redis limit of 10 under a
 * burst of 150, Redis healthy). setImmediate runs after that poll.
 */
export function deadlineTimer(ms: number, fn: () => void): NodeJS.Timeout {
  return setTimeout(() => setImmediate(fn), ms);
}

/**
 * Settles with `p`, or rejects with `message` once `ms` passed (a deadlineTimer: after the
 * answers in hand were read); `onLate` is called then (the store may look at its connection).
 */
export function withDeadline<T>(p: Promise<T>, ms: number, message: string, onLate?: () => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const timer = deadlineTimer(ms, () => {
      if (settled) return;
      settled = true;
      reject(new Error(message));
      onLate?.();
    });
    p.then((v) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(v);
    }, (e: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(e as Error);
    });
  });
}
