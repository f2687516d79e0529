/**
 * The gateway with a Redis store: two gateways (two nodes) sharing one limit, the store remade
 * when the `redis` setting changes on reload (and kept when it does not), closed on stop.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfigText } from '../src/config/load.js';
import { RedisStore } from '../src/state/redis.js';
import { request, startGateway, startUpstream, type TestUpstream } from './helpers.js';
import { startRedis, type RedisServer } from './redis-server.js';

let redis: RedisServer;
let up: TestUpstream;
before(async () => {
  redis = await startRedis();
  up = await startUpstream();
});
after(async () => {
  await up?.close();
  await redis?.stop();
});

const config = (redisLine: string, limit = 3) => `
${redisLine}
services:
  - name: api
    url: ${up.url}
    routes:
      - name: limited
        paths: [/l]
        plugins: [{name: rate-limit, config: {limit: ${limit}, window: 1m, by: ip, policy: redis, fault: closed, timeout: 500ms}}]
`;

test('two gateways share one Redis limit; reload remakes the store only when the redis setting changes; stop closes it', async () => {
  const text = config(`redis: {url: "${redis.url}", prefix: "gw1:", timeout: 500}`);
  const a = await startGateway(text);
  const b = await startGateway(text);
  try {
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await request(`${(i % 2 ? b : a).url}/l`)).status);
    assert.deepEqual(statuses.filter((s) => s === 200).length, 3, String(statuses));
    assert.deepEqual(statuses.slice(3), [429, 429, 429]);

    const first = a.gw.counters.redis as RedisStore;
    assert.ok(first instanceof RedisStore);
    // Same setting, other limit: the same store (and connection).
    await a.gw.reloadAsync(parseConfigText(`listen: 127.0.0.1:0\n${config(`redis: {url: "${redis.url}", prefix: "gw1:", timeout: 500}`, 4)}`));
    assert.equal(a.gw.counters.redis, first);
    // Another prefix: a new store; the old one is closed.
    await a.gw.reloadAsync(parseConfigText(`listen: 127.0.0.1:0\n${config(`redis: {url: "${redis.url}", prefix: "gw2:", timeout: 500}`)}`));
    const second = a.gw.counters.redis as RedisStore;
    assert.notEqual(second, first);
    assert.equal(second.prefix, 'gw2:');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(first.client.status, 'end');
    assert.equal((await request(`${a.url}/l`)).status, 200, 'counted afresh under the new prefix');
    assert.ok((await second.client.keys('gw2:*')).length > 0);
    // A reload that fails (policy redis without redis) keeps the running store.
    await assert.rejects(a.gw.reloadAsync(parseConfigText(`listen: 127.0.0.1:0\n${config('')}`)), /redis/);
    assert.equal(a.gw.counters.redis, second);
    assert.equal(second.client.status, 'ready');
    await a.close();
    assert.equal(second.client.status, 'end');
  } finally {
    await a.close();
    await b.close();
  }
});
