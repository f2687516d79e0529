/** quota end to end: calendar periods, headers, usage on the admin listener, counts kept across a restart. */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gateway } from '../../server/gateway.js';
import { loadConfigFile, parseConfigText } from '../../config/load.js';
import { request, startUpstream, type TestUpstream } from '../../../test/helpers.js';
import { periodOf } from '../../state/calendar.js';
import { MemoryStore } from '../../state/memory.js';
import { silentLogger } from '../../core/log.js';
import { Value } from '@sinclair/typebox/value';
import quota from './index.js';
import { compile } from '../../config/compile.js';
import { PoolRegistry } from '../../upstream/pools.js';
import { QuotaConfig } from './schema.js';

const QuotaConfigDefaults = (c: Record<string, unknown>) => Value.Default(QuotaConfig, structuredClone(c)) as never;

let up: TestUpstream;
before(async () => {
  up = await startUpstream();
});
after(async () => {
  await up?.close();
});

function configFile(dir: string): string {
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
consumers:
  - {name: acme, credentials: [{type: key-auth, key: acme-key-1234}]}
  - {name: beta, credentials: [{type: key-auth, key: beta-key-1234}]}
services:
  - name: api
    url: ${up.url}
    plugins:
      - {name: key-auth}
      - {name: quota, config: {limit: 3, period: month, time_zone: Europe/Paris}}
    routes: [{paths: [/]}]
`);
  return file;
}

test('a monthly quota in a time zone: headers, 429 until the period ends, usage per consumer, and the count survives a restart', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-quota-'));
  const file = configFile(dir);
  const p = periodOf(Date.now(), 'month', 'Europe/Paris');
  let gw = await Gateway.start(loadConfigFile(file));
  try {
    const url = `http://127.0.0.1:${gw.proxyAddress!.port}/x`;
    const a1 = await request(url, { headers: { apikey: 'acme-key-1234' } });
    assert.equal(a1.status, 200);
    assert.equal(a1.headers['ratelimit-policy'], `"quota";q=3;w=${Math.round((p.end - p.start) / 1000)}`);
    assert.match(String(a1.headers['ratelimit']), /^"quota";r=2;t=\d+$/);
    assert.equal((await request(url, { headers: { apikey: 'acme-key-1234' } })).status, 200);
    const usage = JSON.parse((await request(`http://127.0.0.1:${gw.adminAddress!.port}/quotas?consumer=acme`)).body);
    assert.deepEqual(usage.quotas.map((q: Record<string, unknown>) => [q.name, q.used, q.remaining, q.period, q.resets_at]), [['quota', 2, 1, p.id, new Date(p.end).toISOString()]]);
  } finally {
    await gw.stop();
  }
  assert.ok(existsSync(join(dir, '.turnpike', 'state.db')), 'the state file sits beside the config');
  // A new process-lifetime: the counts come back from the state file.
  gw = await Gateway.start(loadConfigFile(file));
  try {
    const url = `http://127.0.0.1:${gw.proxyAddress!.port}/x`;
    assert.equal((await request(url, { headers: { apikey: 'acme-key-1234' } })).status, 200);
    const over = await request(url, { headers: { apikey: 'acme-key-1234' } });
    assert.equal(over.status, 429);
    const retry = Number(over.headers['retry-after']);
    assert.ok(Math.abs(retry - Math.ceil((p.end - Date.now()) / 1000)) <= 1, `retry-after ${retry}`);
    assert.match(over.body, /monthly quota of 3 is used up/);
    assert.equal((await request(url, { headers: { apikey: 'beta-key-1234' } })).status, 200, 'another consumer has its own');
  } finally {
    await gw.stop();
  }
});

test('a quota refusal keeps the rate limit\'s RateLimit items: both policies are listed on the 429, as on the 200s before it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-quota-'));
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0
services:
  - name: api
    url: ${up.url}
    plugins:
      - {name: rate-limit, config: {limit: 100, window: 1m}}
      - {name: quota, config: {limit: 1, period: day}}
    routes: [{paths: [/]}]
`);
  const gw = await Gateway.start(loadConfigFile(file));
  try {
    const url = `http://127.0.0.1:${gw.proxyAddress!.port}/x`;
    const ok = await request(url);
    assert.equal(ok.status, 200);
    assert.match(String(ok.headers['ratelimit-policy']), /^"default";q=100;w=60, "quota";q=1;w=\d+$/);
    const over = await request(url);
    assert.equal(over.status, 429);
    assert.match(String(over.headers['ratelimit-policy']), /^"default";q=100;w=60, "quota";q=1;w=\d+$/);
    assert.match(String(over.headers['ratelimit']), /^"default";r=98;t=\d+, "quota";r=0;t=\d+$/);
    assert.ok(Number(over.headers['retry-after']) > 0);
  } finally {
    await gw.stop();
  }
});

test('calendar periods: days of 23 and 25 hours at DST changes, ISO weeks, months and years in the zone', () => {
  const paris = 'Europe/Paris';
  const spring = periodOf(Date.UTC(2026, 2, 29, 12), 'day', paris);
  assert.equal(spring.end - spring.start, 23 * 3_600_000);
  const autumn = periodOf(Date.UTC(2026, 9, 25, 12), 'day', paris);
  assert.equal(autumn.end - autumn.start, 25 * 3_600_000);
  // 23:30 UTC on Dec 31 is already the next year in Paris.
  assert.equal(periodOf(Date.UTC(2026, 11, 31, 23, 30), 'year', paris).id, '2027');
  assert.equal(periodOf(Date.UTC(2026, 11, 31, 23, 30), 'year', 'UTC').id, '2026');
  assert.equal(periodOf(Date.UTC(2026, 0, 1, 12), 'week', 'UTC').id, '2026-W01');
  assert.equal(periodOf(Date.UTC(2027, 0, 1, 12), 'week', 'UTC').id, '2026-W53');
  const m = periodOf(Date.UTC(2026, 1, 10), 'month', 'America/New_York');
  assert.deepEqual([m.id, new Date(m.start).toISOString(), new Date(m.end).toISOString()], ['2026-02', '2026-02-01T05:00:00.000Z', '2026-03-01T05:00:00.000Z']);
});

test('unnamed quotas of two services are counted apart; a named one is one count; raising a limit keeps what was used', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-quota-'));
  const file = join(dir, 'turnpike.yaml');
  const text = (limit: number) => `listen: 127.0.0.1:0
consumers:
  - {name: acme, credentials: [{type: key-auth, key: acme-key-1234}]}
services:
  - name: orders
    url: ${up.url}
    plugins: [{name: key-auth}, {name: quota, config: {limit: ${limit}, period: day}}]
    routes: [{paths: [/orders]}]
  - name: billing
    url: ${up.url}
    plugins: [{name: key-auth}, {name: quota, config: {limit: 3, period: day}}]
    routes: [{paths: [/billing]}]
  - name: shared-a
    url: ${up.url}
    plugins: [{name: key-auth}, {name: quota, config: {name: shared, limit: 2, period: day}}]
    routes: [{paths: [/sa]}]
  - name: shared-b
    url: ${up.url}
    plugins: [{name: key-auth}, {name: quota, config: {name: shared, limit: 2, period: day}}]
    routes: [{paths: [/sb]}]
`;
  writeFileSync(file, text(3));
  const gw = await Gateway.start(loadConfigFile(file));
  try {
    const get = async (path: string) => (await request(`http://127.0.0.1:${gw.proxyAddress!.port}${path}`, { headers: { apikey: 'acme-key-1234' } })).status;
    for (let i = 0; i < 3; i++) assert.equal(await get('/orders'), 200);
    assert.equal(await get('/orders'), 429);
    assert.equal(await get('/billing'), 200, 'another service\'s quota is its own');
    assert.equal(await get('/sa'), 200);
    assert.equal(await get('/sb'), 200);
    assert.equal(await get('/sa'), 429, 'a named quota is one count across its bindings');
    // Raised from 3 to 4: one more request today, not four.
    writeFileSync(file, text(4));
    gw.reload(loadConfigFile(file));
    assert.equal(await get('/orders'), 200);
    assert.equal(await get('/orders'), 429);
  } finally {
    await gw.stop();
  }
});

test('a daily or hourly quota at a DST change is enforced, with Retry-After no later than the end of the period (fixed clock)', async (t) => {
  let now = 0;
  t.mock.method(Date, 'now', () => now);
  const store = new MemoryStore(() => now);
  t.after(() => store.close());
  const deps = { log: silentLogger, consumers: new Map(), credentials: [], credentialed: new Set(), where: 'plugins.0', counterScope: 'global|quota', baseDir: '.', listeners: { clientCa: false }, counters: { local: store, redis: null }, consumerHeaders: { id: 'x-consumer-id', name: 'x-consumer-username', groups: 'x-consumer-groups', credential: 'x-credential-identifier', anonymous: 'x-anonymous-consumer' } };
  const run = async (config: Record<string, unknown>, at: string, n: number) => {
    now = Date.parse(at);
    const inst = quota.create(QuotaConfigDefaults(config), deps as never);
    const out: { status: number; ratelimit?: unknown; policy?: unknown; retry?: unknown }[] = [];
    for (let i = 0; i < n; i++) {
      const headers: Record<string, string> = {};
      const ctx = { consumer: { name: 'acme' }, identity: null, clientIp: '127.0.0.1', limited() {}, addResponseHeader(k: string, v: string) { headers[k] = v; } };
      const reply = await inst.access!(ctx as never);
      out.push(reply ? { status: 429, ratelimit: headers['ratelimit'], policy: headers['ratelimit-policy'], retry: reply.headers?.['retry-after'] } : { status: 200, ratelimit: headers['ratelimit'], policy: headers['ratelimit-policy'] });
    }
    inst.close?.();
    return out;
  };
  for (const [tz, at] of [['America/Havana', '2026-03-08T04:30:00Z'], ['America/Santiago', '2026-09-06T03:30:00Z']]) {
    // 23:30 local, half an hour before the skipped midnight: the day ends at the transition.
    const r = await run({ limit: 5, period: 'day', time_zone: tz }, at!, 6);
    assert.deepEqual(r.map((x) => x.status), [200, 200, 200, 200, 200, 429], tz);
    assert.deepEqual(r.map((x) => x.ratelimit), ['4', '3', '2', '1', '0', '0'].map((left) => `"quota";r=${left};t=1800`), tz);
    assert.equal(r[5]!.retry, '1800', tz);
  }
  // Paris's repeated hour: 02:00-03:00 CEST, then 02:00-03:00 CET; at 00:30Z, 30 min are left.
  const paris = await run({ limit: 2, period: 'hour', time_zone: 'Europe/Paris' }, '2026-10-25T00:30:00Z', 3);
  assert.deepEqual(paris.map((x) => x.status), [200, 200, 429]);
  assert.equal(paris[2]!.policy, '"quota";q=2;w=3600');
  assert.equal(paris[2]!.retry, '1800');
  // The second real hour 02:00 is a new period.
  const again = await run({ limit: 2, period: 'hour', time_zone: 'Europe/Paris' }, '2026-10-25T01:30:00Z', 3);
  assert.deepEqual(again.map((x) => x.status), [200, 200, 429]);
  // A zone without DST, same instant: the plain day.
  const kolkata = await run({ limit: 1, period: 'day', time_zone: 'Asia/Kolkata' }, '2026-03-08T04:30:00Z', 2);
  assert.deepEqual(kolkata.map((x) => [x.status, x.ratelimit]), [[200, '"quota";r=0;t=50400'], [429, '"quota";r=0;t=50400']]);
});

test('config errors: a cost above the limit (every request would be refused), an unknown time zone', () => {
  const pools = new PoolRegistry();
  const errorOf = (cfg: string) => {
    try {
      compile(parseConfigText(`services:\n  - name: s\n    url: http://127.0.0.1:1\n    plugins: [{name: quota, config: ${cfg}}]\n`), { pools }).dispose();
    } catch (e) {
      return (e as Error).message;
    }
    return '';
  };
  assert.match(errorOf('{limit: 5, period: day, cost: 10}'), /plugins\[0\]\.config.*cost 10 is more than the limit 5/);
  assert.equal(errorOf('{limit: 5, period: day, cost: 5}'), '');
  assert.match(errorOf('{limit: 5, period: day, time_zone: Mars/Olympus}'), /unknown time zone/);
});
