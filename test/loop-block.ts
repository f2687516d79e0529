/** A meter of event-loop blocks, for tests that pin work kept off the loop. */
import { performance } from 'node:perf_hooks';

/**
 * The longest the event loop went without turning (ms), from now until `stop()`: a 5 ms
 * interval's gaps, and the gap up to the stop itself (a block that ends with the awaited work).
 */
export function loopBlockMeter(): { stop(): number } {
  let last = performance.now();
  let longest = 0;
  const ticks = setInterval(() => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
  }, 5);
  return {
    stop() {
      clearInterval(ticks);
      return Math.max(longest, performance.now() - last);
    },
  };
}
