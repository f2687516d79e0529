/**
 * Analytics published to Redis (src/observability/shared-analytics.ts) from a node that starts
 * with `redis:` set: the first publish waits for the connection (no false "publishing analytics
 * to redis failed" while it is being made), and a Redis that never answers is still warned about.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { parseConfigText } from '../src/config/load.js';
import { Gateway } from '../src/server/gateway.js';
import { eventually } from './helpers.js';
import { freePort, rawCommand, startRedis } from './redis-server.js';
import { Redis } from 'ioredis';
import { SharedAnalytics } from '../src/observability/shared-analytics.js';
import { Analytics, type AnalyticsState } from '../src/observability/analytics.js';

const FAILED = 'publishing analytics to redis failed';

async function start(redisUrl: string): Promise<{ gw: Gateway; said: () => { msg: string; err?: string }[] }> {
  const lines: { msg: string; err?: string }[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as { msg: string; err?: string }) });
  const gw = await Gateway.start(parseConfigText(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
access_log: {enabled: false}
redis: {url: "${redisUrl}", prefix: "sa:"}
analytics: {publish_interval: 200ms}
`, { env: {} }), { logger: log });
  return { gw, said: () => lines };
}

test('a node starting with redis: its first analytics publish waits for the connection (no false warning); a Redis that never answers is warned about', async () => {
  const redis = await startRedis();
  try {
    const { gw, said } = await start(redis.url);
    try {
      // Published at start (once connected) and every 200 ms: the hash has this node's field.
      await eventually(async () => Number((await rawCommand(redis.port, ['HLEN', 'sa:{analytics}'])).replace(/^:/, '')) === 1, 5000, 50);
      await eventually(() => said().some((l) => l.msg === 'redis counter store connected'), 5000, 20);
      const failed = said().filter((l) => l.msg.startsWith(FAILED));
      assert.deepEqual(failed, [], 'no warning while Redis was healthy throughout');
    } finally {
      await gw.stop();
    }
  } finally {
    await redis.stop();
  }

  // Nothing listens there: a real failure, warned about (after the first publish's wait).
  const { gw, said } = await start(`redis://127.0.0.1:${await freePort()}`);
  try {
    await eventually(() => said().some((l) => l.msg.startsWith(FAILED)), 6000, 50);
  } finally {
    await gw.stop();
  }
});

test('a field of the shared hash this node cannot read (another version\'s shape, a hand-written value) is skipped: the other nodes are still seen', async () => {
  const redis = await startRedis();
  const client = new Redis({ host: '127.0.0.1', port: redis.port, lazyConnect: false });
  const log = pino({ level: 'silent' });
  try {
    const recorded = new Analytics();
    recorded.record('r', 's', 'node-a', 200, 12);
    const state = recorded.state();
    const a = new SharedAnalytics(client, 'sx:', async () => [state], log, 10_000);
    const b = new SharedAnalytics(client, 'sx:', async () => [], log, 10_000);
    await a.publish();
    const now = Date.now();
    await client.hset('sx:{analytics}', 'junk-null', 'null', 'junk-number', '7', 'junk-states', JSON.stringify({ at: now, every: 10_000, states: { by_route: {} } }), 'junk-text', 'not json');
    const seen = await b.others();
    assert.equal(seen.nodes, 1);
    assert.deepEqual(seen.states, [state]);
  } finally {
    client.disconnect();
    await redis.stop();
  }
});

test('states of another version (a rolling upgrade) or of another shape in the shared hash are skipped: /analytics and the portal\'s usage still answer (the report threw on them, for every node)', async () => {
  const redis = await startRedis();
  const client = new Redis({ host: '127.0.0.1', port: redis.port, lazyConnect: false });
  const { gw } = await start(`redis://127.0.0.1:${redis.port}`);
  try {
    const other = new Analytics();
    other.record('r', 's', 'c', 200, 5);
    const good = other.state();
    const at = Date.now();
    const entry = (states: unknown[]) => JSON.stringify({ at, every: 60_000, states });
    await client.hset('sa:{analytics}',
      'node-good', entry([good]),
      'node-v2', entry([{ ...good, v: 2 }]),
      'node-accuracy', entry([{ ...good, relativeAccuracy: 0.05 }]),
      'node-no-windows', entry([{ v: 1, at, relativeAccuracy: 0.01 }]),
      'node-bad-cell', entry([{ ...good, windows: { ...good.windows, '1h': [{ i: 1, routes: [{ route: 'r', service: 's', n: 1, e: 0, c: 0, h: 7 }], consumers: [] }] } }]));
    const admin = `http://127.0.0.1:${gw.adminAddress!.port}`;
    const res = await fetch(`${admin}/analytics?window=1h`);
    assert.equal(res.status, 200, await res.clone().text());
    const report = await res.json() as { nodes: number; total: { requests: number } };
    assert.equal(report.nodes, 2, 'this node and node-good');
    assert.equal(report.total.requests, 1);
    const usage = await gw.consumerUsage('c');
    assert.equal(usage.last_hour?.requests, 1);
  } finally {
    await gw.stop();
    client.disconnect();
    await redis.stop();
  }
});

test('analytics.publish_interval: 30d is refused at start (the timer fired after 1 ms: the node published to Redis in a loop); 24d publishes once', async () => {
  const redis = await startRedis();
  const hsets = async () => Number(/cmdstat_hset:calls=(\d+)/.exec(await rawCommand(redis.port, ['INFO', 'commandstats']))?.[1] ?? 0);
  const config = (every: string) => parseConfigText(`listen: 127.0.0.1:0
access_log: {enabled: false}
redis: {url: "${redis.url}", prefix: "pi:"}
analytics: {publish_interval: ${every}}
`, { env: {} });
  const log = pino({ level: 'silent' });
  try {
    let gw: Gateway | null = null;
    try {
      gw = await Gateway.start(config('30d'), { logger: log });
    } catch (err) {
      assert.deepEqual((err as { issues?: unknown }).issues, [{ path: 'analytics.publish_interval', line: 4, message: 'must be at most 24d (2147483647 ms, the longest timer)' }]);
    }
    if (gw !== null) {
      const before = await hsets();
      await new Promise((r) => setTimeout(r, 500));
      const n = (await hsets()) - before;
      await gw.stop();
      assert.fail(`publish_interval: 30d was accepted: ${n} publishes to Redis in 0.5 s`);
    }
    const ok = await Gateway.start(config('24d'), { logger: log });
    try {
      await eventually(async () => (await hsets()) >= 1, 5000, 50);
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(await hsets(), 1);
    } finally {
      await ok.stop();
    }
  } finally {
    await redis.stop();
  }
});
