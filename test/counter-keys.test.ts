/**
 * Counter keys follow who a binding is, not where it sits in the config: a used-up quota or
 * rate limit stays used up after other services, routes, consumers and plugins are inserted
 * before it (and a reload), and starts fresh when its service or route is renamed.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfigText } from '../src/config/load.js';
import { request, startGateway, startUpstream } from './helpers.js';

test('quota and rate-limit counts survive inserting and reordering other config entries; renaming the owner starts fresh', async () => {
  const up = await startUpstream();
  // (a state file of its own: quota counts of an earlier run must not carry over)
  const state = join(mkdtempSync(join(tmpdir(), 'turnpike-counter-keys-')), 'state.db');
  const cfg = (o: { extra: boolean; quotaService?: string; namedRoute?: string }) => `listen: 127.0.0.1:0
access_log: {enabled: false}
state_file: ${state}
${o.extra ? 'plugins: [{name: request-size-limit, config: {max: 1mb}}]' : ''}
consumers:
${o.extra ? '  - {name: zed, credentials: [{type: key-auth, key: zed-key-12345}], plugins: [{name: quota, config: {limit: 9, period: day}}]}' : ''}
  - {name: acme, credentials: [{type: key-auth, key: acme-key-1234}]}
  - name: carol
    credentials: [{type: key-auth, key: carol-key-123}]
    plugins: [${o.extra ? '{name: request-size-limit, config: {max: 1mb}}, ' : ''}{name: quota, config: {limit: 2, period: day}}]
services:
${o.extra ? `  - name: aaa-new
    url: ${up.url}
    plugins: [{name: key-auth}, {name: quota, config: {limit: 1, period: day}}, {name: rate-limit, config: {limit: 1, window: 1m}}]
    routes: [{paths: [/new]}, {name: new-named, paths: [/new2], plugins: [{name: rate-limit, config: {limit: 1, window: 1m}}]}]` : ''}
  - name: ${o.quotaService ?? 'quota-svc'}
    url: ${up.url}
    plugins: [${o.extra ? '{name: request-size-limit, config: {max: 1mb}}, ' : ''}{name: key-auth}, {name: quota, config: {limit: 3, period: day}}]
    routes: [{paths: [/q]}]
  - name: rl-svc
    url: ${up.url}
    plugins: [{name: key-auth}]
    routes:
${o.extra ? '      - {paths: [/before], plugins: [{name: rate-limit, config: {limit: 1, window: 1m}}]}' : ''}
      - paths: [/r]
        plugins: [${o.extra ? '{name: request-size-limit, config: {max: 1mb}}, ' : ''}{name: rate-limit, config: {limit: 3, window: 1m, by: [consumer, route]}}]
      - name: ${o.namedRoute ?? 'named'}
        paths: [/n]
        plugins: [{name: rate-limit, config: {limit: 2, window: 1m}}]
`;
  const g = await startGateway(cfg({ extra: false }));
  try {
    const get = async (who: string, path: string) => (await request(`${g.url}${path}`, { headers: { apikey: who } })).status;
    const run = async (who: string, path: string, n: number) => { const out = []; for (let i = 0; i < n; i++) out.push(await get(who, path)); return out; };
    const acme = 'acme-key-1234';
    const carol = 'carol-key-123';
    assert.deepEqual(await run(acme, '/q', 4), [200, 200, 200, 429], 'the service quota: 3 a day');
    assert.deepEqual(await run(acme, '/r', 4), [200, 200, 200, 429], 'the unnamed route\'s rate limit: 3 a minute');
    assert.deepEqual(await run(acme, '/n', 3), [200, 200, 429], 'the named route\'s rate limit: 2 a minute');
    assert.deepEqual(await run(carol, '/q', 3), [200, 200, 429], 'carol\'s own quota: 2 a day');

    // A global plugin, a consumer, a service, a route and plugins inserted before each binding.
    g.gw.reload(parseConfigText(cfg({ extra: true })));
    assert.equal(await get(acme, '/q'), 429, 'the service quota kept its count');
    assert.equal(await get(acme, '/r'), 429, 'the unnamed route\'s rate limit kept its count');
    assert.equal(await get(acme, '/n'), 429, 'the named route\'s rate limit kept its count');
    assert.equal(await get(carol, '/q'), 429, 'the consumer\'s quota kept its count');
    assert.equal(await get(acme, '/new'), 200, 'the new service counts on its own');
    assert.equal(await get(acme, '/before'), 200, 'the new route counts on its own');

    // Back to the first layout: still used up.
    g.gw.reload(parseConfigText(cfg({ extra: false })));
    assert.equal(await get(acme, '/q'), 429);
    assert.equal(await get(acme, '/r'), 429);

    // Renaming the owner starts a new count (the documented rule).
    g.gw.reload(parseConfigText(cfg({ extra: false, quotaService: 'quota-svc-2', namedRoute: 'named-2' })));
    assert.deepEqual(await run(acme, '/q', 4), [200, 200, 200, 429], 'a renamed service: a new quota count');
    assert.deepEqual(await run(acme, '/n', 3), [200, 200, 429], 'a renamed route: a new rate-limit count');
    assert.equal(await get(acme, '/r'), 429, 'the unnamed route, untouched, is still limited');
  } finally {
    await g.close();
    await up.close();
  }
});
