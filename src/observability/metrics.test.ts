import { test } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Metrics } from './metrics.js';

const value = (text: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);

test('turnpike_event_loop_utilization is measured over a fixed window: other renders (console live stats, a second scraper) do not reset it', async () => {
  const m = new Metrics();
  try {
    const busy0 = value(await m.text(), 'turnpike_event_loop_busy_seconds_total');
    // ~90% busy for 2 s.
    const stop = performance.now() + 2000;
    while (performance.now() < stop) {
      const end = performance.now() + 90;
      while (performance.now() < end);
      await sleep(10);
    }
    await m.text(); // the console's live stats render the registry every second
    await sleep(300);
    const first = value(await m.text(), 'turnpike_event_loop_utilization');
    const second = value(await m.text(), 'turnpike_event_loop_utilization'); // a second scraper right after
    assert.ok(first > 0.5, `utilization ${first} after 2 s at ~90%`);
    assert.ok(second > 0.5 && Math.abs(second - first) < 0.1, `a second scrape reads ${second}, the first ${first}`);
    const busy1 = value(await m.text(), 'turnpike_event_loop_busy_seconds_total');
    assert.ok(busy1 - busy0 >= 1.5, `busy seconds grew by ${busy1 - busy0}`);
  } finally {
    m.close();
  }
});
