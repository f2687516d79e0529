/**
 * A node on a real PostgreSQL store (in process: ControlPlane + Gateway, as `turnpike start`
 * wires them) whose URL carries its password as a query parameter (`?password=`, which pg and
 * libpq accept): PostgreSQL stopped, /status says `store_reachable: false` within seconds (the
 * LISTEN connection drops, a resync runs at once; not the 10 s period) and true again once it is
 * back; the password is in no log line, no /status field and no admin API problem detail.
 * And a node told of a revision it then cannot read (its connections refused) reads it once the
 * store answers again, without waiting for another write. And a store restored from an older
 * dump: the node goes back to the restored head, then applies the writes after it, whose
 * numbers it has run before.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { loadConfigFile, parseConfigText } from '../src/config/load.js';
import { Gateway } from '../src/server/gateway.js';
import { ControlPlane } from '../src/server/control-plane.js';
import { compile } from '../src/config/compile.js';
import { PoolRegistry } from '../src/upstream/pools.js';
import { createStore, type StoredConfig } from '../src/config/stores/index.js';
import { request, sleep } from './helpers.js';
import { postgresBinDir, startPostgres, type PostgresServer } from './postgres-server.js';

const PASSWORD = 'PgS3cretPW';
const TOKEN = 'store-status-admin-token-0123456789';
const auth = { authorization: `Bearer ${TOKEN}` };
const work = mkdtempSync(join(tmpdir(), 'turnpike-store-status-'));
let pg: PostgresServer;
let cp: ControlPlane | undefined;
let gw: Gateway | undefined;
const lines: string[] = [];

before(async () => { pg = await startPostgres(); });
after(async () => {
  await gw?.stop();
  await cp?.close();
  await pg?.stop();
  rmSync(work, { recursive: true, force: true });
});

async function until(what: string, ms: number, probe: () => Promise<boolean>): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    if (await probe()) return performance.now() - t0;
    if (performance.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms\n${lines.slice(-20).join('')}`);
    await sleep(20);
  }
}

test('postgres stopped: /status says store_reachable false (with store_error) within seconds, true again once it is back; a ?password= in the store URL is shown nowhere', async () => {
  const url = `${await pg.createDatabase('status')}?password=${PASSWORD}`; // (trust auth: the server never asks for it)
  const file = join(work, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0, token: ${TOKEN}}\nstore: "${url}"\naccess_log: {enabled: false}\n`);
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(s) });
  const loaded = loadConfigFile(file);
  // (the default resync period, 10 s: the outage must be seen without waiting for it)
  cp = await ControlPlane.open({ file, loaded, setting: url, log, apply: async (text) => { await gw!.reloadAsync(parseConfigText(text, { file })); return true; } });
  gw = await Gateway.start(parseConfigText(cp.text(), { file }), { logger: log, control: cp });
  cp.run();
  const admin = `http://127.0.0.1:${gw.adminAddress!.port}`;
  const status = async () => JSON.parse((await request(`${admin}/status`, { headers: auth })).body).config as Record<string, unknown>;
  // Following the store: its LISTEN connection is up.
  await until('listening', 5000, async () => Number((await pg.query<{ n: string }>(`SELECT count(*)::text AS n FROM pg_stat_activity WHERE application_name LIKE 'turnpike:%:listen'`))[0]!.n) === 1);
  assert.equal((await status()).store_reachable, true);

  await pg.shutdown('immediate');
  const took = await until('/status says the store is unreachable', 5000, async () => (await status()).store_reachable === false);
  console.log(`# store_reachable false ${took.toFixed(0)} ms after postgres stopped`);
  const down = await status();
  assert.equal(typeof down.store_error, 'string');
  assert.match(down.store_error as string, /the postgres store postgres(ql)?:\/\/postgres@127\.0\.0\.1:\d+\/status\?password=\*\*\* is unavailable/);
  // Admin API reads and writes: 503 problem+json, the URL masked in the detail.
  const w = await request(`${admin}/api/consumers`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '{"name": "while-down"}' });
  assert.equal(w.status, 503, w.body);
  assert.equal(w.headers['content-type'], 'application/problem+json');
  assert.match(w.body, /password=\*\*\*/);
  assert.ok(!w.body.includes(PASSWORD), w.body);
  const r = await request(`${admin}/api/revisions`, { headers: auth });
  assert.equal(r.status, 503, r.body);
  assert.ok(!r.body.includes(PASSWORD), r.body);

  await pg.restart();
  const back = await until('/status says the store is reachable again', 10_000, async () => (await status()).store_reachable === true);
  console.log(`# store_reachable true ${back.toFixed(0)} ms after postgres restarted`);
  assert.equal((await status()).store_error, undefined);

  const said = lines.join('');
  for (const msg of ['LISTEN connection lost', 'store unreachable', 'reachable again']) assert.ok(said.includes(msg), `logged "${msg}"`);
  assert.match(said, /"store":"postgres(ql)?:\/\/postgres@127\.0\.0\.1:\d+\/status\?password=\*\*\*"/);
  assert.ok(!said.includes(PASSWORD), lines.filter((l) => l.includes(PASSWORD)).join(''));
});

test('a revision announced while the store cannot be read is applied once the store answers again (no later write needed)', async () => {
  const url = await pg.createDatabase('unread');
  const dbName = 'unread';
  const file = join(work, 'unread.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0\nstore: "${url}"\naccess_log: {enabled: false}\nservices: [{name: s0, url: "http://127.0.0.1:1"}]\n`);
  const log = pino({ level: 'silent' });
  const applied: string[] = [];
  const b = await ControlPlane.open({
    file, loaded: loadConfigFile(file), setting: url, log,
    postgres: { name: 'node-b', resyncMs: 400 },
    apply: async (_text, why) => { applied.push(why); return true; },
  });
  // Another node writes (its pool keeps an open connection through what follows).
  const writer = createStore(url, { baseDir: work, log, postgres: { name: 'writer' } });
  await writer.open();
  try {
    b.run();
    const first = await writer.write({ actor: 'test', action: 'add s1' }, (d) => ({ ...d, services: [{ name: 's1', url: 'http://127.0.0.1:1' }] }));
    await until('node b applies the first write', 5000, async () => applied.some((w) => w.endsWith(`revision ${first.revision}`)));
    // New connections refused; node b's pooled ones cut (its LISTEN connection stays).
    await pg.query(`ALTER DATABASE ${dbName} ALLOW_CONNECTIONS false`);
    await pg.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'turnpike:node-b'`);
    await sleep(200);
    const second = await writer.write({ actor: 'test', action: 'add s2' }, (d) => ({ ...d, services: [...(d?.services as object[] ?? []), { name: 's2', url: 'http://127.0.0.1:1' }] }));
    await sleep(600); // (the NOTIFY came; node b's read of the head failed)
    assert.ok(!applied.some((w) => w.endsWith(`revision ${second.revision}`)), 'the head could not be read meanwhile');
    await pg.query(`ALTER DATABASE ${dbName} ALLOW_CONNECTIONS true`);
    const took = await until('node b applies the announced revision', 5000, async () => applied.some((w) => w.endsWith(`revision ${second.revision}`)));
    console.log(`# announced revision applied ${took.toFixed(0)} ms after the store answered again`);
    assert.equal(b.status().revision, second.revision);
  } finally {
    await pg.query(`ALTER DATABASE ${dbName} ALLOW_CONNECTIONS true`).catch(() => {});
    await b.close();
    await writer.close();
  }
});

test('the store restored from an older dump (pg_dump / DROP DATABASE / pg_restore): the node goes back to its head within the resync bound, and applies the writes after it at numbers it ran before', async () => {
  const url = await pg.createDatabase('rewind');
  const file = join(work, 'rewind.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0\nstore: "${url}"\naccess_log: {enabled: false}\nservices: [{name: s0, url: "http://127.0.0.1:1"}]\n`);
  const log = pino({ level: 'silent' });
  const applied: string[] = [];
  const node = await ControlPlane.open({
    file, loaded: loadConfigFile(file), setting: url, log,
    postgres: { name: 'node-r', resyncMs: 300 },
    apply: async (_text, why) => { applied.push(why); return true; },
  });
  const writer = createStore(url, { baseDir: work, log, postgres: { name: 'writer', connectTimeoutMs: 1000 } });
  const add = (name: string) => (d: Record<string, unknown> | null) => ({ ...d, services: [...(d?.services as object[] ?? []), { name, url: 'http://127.0.0.1:1' }] });
  const services = () => (node.served!.document.services as { name: string }[]).map((s) => s.name);
  try {
    node.run();
    await writer.write({ actor: 'test', action: 'add s1' }, add('s1')); // revision 2
    const dump = join(work, 'rewind.dump');
    const bin = postgresBinDir();
    execFileSync(join(bin, 'pg_dump'), ['-h', '127.0.0.1', '-p', String(pg.port), '-U', 'postgres', '-Fc', '-f', dump, 'rewind']);
    await writer.write({ actor: 'test', action: 'add s2' }, add('s2')); // 3
    const four = await writer.write({ actor: 'test', action: 'add s3' }, add('s3')); // 4
    await until('the node runs revision 4', 5000, async () => node.status().revision === four.revision);

    await pg.query('DROP DATABASE rewind WITH (FORCE)');
    await pg.query('CREATE DATABASE rewind');
    execFileSync(join(bin, 'pg_restore'), ['-h', '127.0.0.1', '-p', String(pg.port), '-U', 'postgres', '-d', 'rewind', dump]);
    const took = await until('the node goes back to the restored head', 5000, async () => node.status().revision === 2);
    console.log(`# restored to revision 2 (from 4): the node went back ${took.toFixed(0)} ms after the restore`);
    assert.deepEqual(services(), ['s0', 's1']);

    // Written after the restore: numbers 3 and 4 again, other documents.
    let three: StoredConfig | undefined;
    await until('the writer reconnects', 5000, async () => {
      three = await writer.write({ actor: 'test', action: 'add after-1' }, add('after-1')).catch(() => undefined);
      return three !== undefined;
    });
    assert.equal(three!.revision, 3);
    await until('the node applies the new revision 3', 3000, async () => node.status().revision === 3);
    assert.deepEqual(services(), ['s0', 's1', 'after-1']);
    const again = await writer.write({ actor: 'test', action: 'add after-2' }, add('after-2'));
    assert.equal(again.revision, four.revision);
    await until('the node applies the new revision 4', 3000, async () => services().includes('after-2'));
    assert.deepEqual(services(), ['s0', 's1', 'after-1', 'after-2']);
    assert.equal(node.status().written_at, again.at);
  } finally {
    await node.close();
    await writer.close();
  }
});

test('postgres hung (SIGSTOP): 8 concurrent admin writes all answer 503 problem+json with Retry-After within one write\'s bounds (not one after another), and none is applied once it is back', async () => {
  const url = await pg.createDatabase('hung');
  const file = join(work, 'hung.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0, token: ${TOKEN}}\nstore: "${url}"\naccess_log: {enabled: false}\nservices: [{name: s0, url: "http://127.0.0.1:1"}]\n`);
  const log = pino({ level: 'silent' });
  // One write's bounds: 0.5 s to connect, 0.5 s + 1 s for a statement.
  const node = await ControlPlane.open({
    file, loaded: loadConfigFile(file), setting: url, log, postgres: { name: 'node-h', connectTimeoutMs: 500, statementTimeoutMs: 500 },
    apply: async (text) => { await g.reloadAsync(parseConfigText(text, { file })); return true; },
  });
  const g: Gateway = await Gateway.start(parseConfigText(node.text(), { file }), { logger: log, control: node });
  node.run();
  const admin = `http://127.0.0.1:${g.adminAddress!.port}`;
  const post = (name: string) => request(`${admin}/api/consumers`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ name }) });
  try {
    assert.equal((await post('warm')).status, 201);
    const revision = node.status().revision as number;
    pg.pause();
    let answers: { status: number; type: unknown; retry: unknown; ms: number }[];
    try {
      const t0 = performance.now();
      answers = await Promise.all(Array.from({ length: 8 }, (_, i) => post(`p${i}`).then((r) => ({ status: r.status, type: r.headers['content-type'], retry: r.headers['retry-after'], ms: performance.now() - t0 }))));
    } finally {
      pg.resume();
    }
    console.log(`# hung postgres, 8 concurrent admin writes: ${answers.map((a) => `${a.status} after ${a.ms.toFixed(0)} ms`).join(', ')}`);
    for (const a of answers) {
      assert.equal(a.status, 503);
      assert.equal(a.type, 'application/problem+json');
      assert.equal(a.retry, '5');
      assert.ok(a.ms < 2500, `answered after ${a.ms.toFixed(0)} ms (before: one after another, up to 6 s)`);
    }
    await sleep(500);
    const w = await post('after');
    assert.equal(w.status, 201, w.body);
    const names = (JSON.parse((await request(`${admin}/api/consumers`, { headers: auth })).body).data as { name: string }[]).map((c) => c.name);
    assert.deepEqual(names, ['warm', 'after'], 'none of the writes answered 503 was applied');
    assert.equal(node.status().revision, revision + 1);
  } finally {
    pg.resume();
    await g.stop();
    await node.close();
  }
});

test('a postgres URL whose password is not percent-encoded (/ ? # @ in it) is a config error at once: not an "unreachable" store retried forever, and the password is shown nowhere', async () => {
  // `12/x@y`: the URL parses with host "app", port 12 and the rest of the password in its path
  // (nothing masks that); `ab#c`: the URL does not parse at all.
  for (const [password, url] of [['12/x@y', `postgres://app:12/x@y@127.0.0.1:${pg.port}/db`], ['ab#cd', `postgres://app:ab#cd@127.0.0.1:${pg.port}/db`]] as const) {
    const file = join(work, 'bad-url.yaml');
    writeFileSync(file, `listen: 127.0.0.1:0\nstore: "${url}"\naccess_log: {enabled: false}\n`);
    const said: string[] = [];
    const log = pino({ level: 'debug' }, { write: (s: string) => void said.push(s) });
    // `turnpike validate` (compile) names the setting
    assert.throws(() => compile(loadConfigFile(file), { pools: new PoolRegistry(), storeOpened: true }), (err: Error) => /store/.test(err.message) && /percent-encoded/.test(err.message) && !err.message.includes(password));
    const loaded = parseConfigText(`listen: 127.0.0.1:0\naccess_log: {enabled: false}\n`, { file });
    const stop = new AbortController();
    const t0 = performance.now();
    const opened = ControlPlane.open({ file, loaded, setting: url, log, retryMs: 100, signal: stop.signal, apply: async () => true });
    const timer = setTimeout(() => stop.abort(), 3000);
    const err = await opened.then((c) => { void c.close(); return null; }, (e: Error) => e);
    clearTimeout(timer);
    assert.ok(err !== null, 'opened');
    assert.equal(err.name, 'Error', err.message);
    assert.match(err.message, /store: the postgres URL .*percent-encoded/);
    assert.ok(performance.now() - t0 < 1000, `rejected after ${(performance.now() - t0).toFixed(0)} ms (before: retried as unreachable until stopped)`);
    assert.ok(!err.message.includes(password), err.message);
    assert.ok(!said.join('').includes(password), said.join(''));
    assert.throws(() => createStore(url, { baseDir: work }), (e: Error) => e.name === 'Error' && !e.message.includes(password));
  }
  // (a URL pg reads is taken: an encoded password, a blank pg escapes, a socket directory as host=)
  for (const url of [`postgres://app:p%40ss%2F1@127.0.0.1:${pg.port}/db`, `postgres://app:pa ss@127.0.0.1:${pg.port}/db`, `postgres://app@/db?host=/tmp`]) {
    await createStore(url, { baseDir: work }).close();
  }
});

test('the head\'s row deleted from turnpike_revisions (pruned by hand, by age): the store says so (unavailable), and a node starting does not serve an empty config as if the store were empty', async () => {
  const url = await pg.createDatabase('pruned');
  const first = join(work, 'pruned-1.yaml');
  writeFileSync(first, `listen: 127.0.0.1:0\nstore: "${url}"\naccess_log: {enabled: false}\nservices: [{name: s0, url: "http://127.0.0.1:1"}]\n`);
  const log = pino({ level: 'silent' });
  const seeded = await ControlPlane.open({ file: first, loaded: loadConfigFile(first), setting: url, log, apply: async () => true });
  assert.equal(seeded.served?.revision, 1);
  await seeded.close();
  await pg.query('DELETE FROM turnpike_revisions', [], 'pruned');

  const s = createStore(url, { baseDir: work });
  try {
    await assert.rejects(s.current(), (err: Error) => err.name === 'StoreUnavailable' && /head revision 1 has no row/.test(err.message));
  } finally {
    await s.close();
  }
  // A node without a snapshot waits for the store (not ready) rather than serving nothing.
  const second = join(work, 'pruned', 'turnpike.yaml');
  mkdirSync(join(work, 'pruned'), { recursive: true });
  writeFileSync(second, `listen: 127.0.0.1:0\nstore: "${url}"\naccess_log: {enabled: false}\nservices: [{name: s1, url: "http://127.0.0.1:1"}]\n`);
  const said: string[] = [];
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(), 1500);
  const outcome = await ControlPlane.open({
    file: second, loaded: loadConfigFile(second), setting: url, retryMs: 100, signal: stop.signal,
    log: pino({ level: 'info' }, { write: (l: string) => void said.push(l) }), apply: async () => true,
  }).then(async (c) => { const text = c.text(); await c.close(); return `opened, serving ${text}`; }, (err: Error) => err.message);
  clearTimeout(timer);
  assert.equal(outcome, 'stopped while waiting for the config store');
  assert.match(said.join(''), /head revision 1 has no row/);
});

test('a node serving its disk snapshot (the store unreachable at start) that then reaches an EMPTY store (a new database, a restore not done yet) seeds it with the snapshot\'s config, not its file\'s seed: it and the nodes following keep their routes', async () => {
  const dir = join(work, 'reseed');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0\naccess_log: {enabled: false}\nservices: [{name: from-file, url: "http://127.0.0.1:1"}]\n`);
  const log = pino({ level: 'silent' });
  const url = await pg.createDatabase('reseed');
  const first = await ControlPlane.open({ file, loaded: loadConfigFile(file), setting: url, log, apply: async () => true });
  first.run();
  await first.store!.write({ actor: 'alice', action: 'POST /api/services' }, (doc) => ({ ...doc, services: [...(doc!['services'] as unknown[]), { name: 'added-later', url: 'http://127.0.0.1:2' }] }));
  await until('the disk snapshot has revision 2', 5000, async () => {
    try {
      return JSON.parse((await import('node:fs')).readFileSync(join(dir, '.turnpike', 'config-snapshot.json'), 'utf8')).config.revision === 2;
    } catch {
      return false;
    }
  });
  await first.close();

  // Restarted against a database that is not there yet: the snapshot is served.
  const later = url.replace(/\/reseed$/, '/reseed_later');
  const node = await ControlPlane.open({ file, loaded: loadConfigFile(file), setting: later, log, retryMs: 100, apply: async () => true });
  try {
    assert.equal(node.status().source, 'snapshot');
    node.run();
    await pg.createDatabase('reseed_later'); // empty
    await until('the node reaches the new store', 10_000, async () => node.status().store_reachable === true && node.status().source === 'store');
    const names = (node.served!.document['services'] as { name: string }[]).map((s) => s.name);
    assert.deepEqual(names, ['from-file', 'added-later'], 'the snapshot\'s config, not the file\'s seed');
    const head = await node.store!.current();
    assert.equal(head!.actor, 'seed');
    assert.match(head!.action, /disk snapshot/);
  } finally {
    await node.close();
  }
});

test('a node waiting for its store (no snapshot: not ready) says so again when the reason changes (refused, then no such database), not only the first reason', async () => {
  const dir = join(work, 'waiting');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0\naccess_log: {enabled: false}\n`);
  const said: string[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => void said.push(l) });
  const url = `postgresql://postgres@127.0.0.1:${pg.port}/not_yet_created`;
  await pg.shutdown('fast');
  const stop = new AbortController();
  let opening: Promise<ControlPlane | Error> | undefined;
  try {
    opening = ControlPlane.open({ file, loaded: loadConfigFile(file), setting: url, log, retryMs: 100, signal: stop.signal, postgres: { connectTimeoutMs: 500 }, apply: async () => true })
      .catch((err: Error) => err);
    await until('the first reason is logged', 5000, async () => /no disk snapshot: not ready.*ECONNREFUSED|ECONNREFUSED.*no disk snapshot: not ready/.test(said.join('')));
  } finally {
    await pg.restart();
  }
  await until('the new reason is logged', 10_000, async () => said.some((l) => /another reason/.test(l) && /not_yet_created.*does not exist/.test(l)));
  await pg.createDatabase('not_yet_created');
  const cp = await opening;
  stop.abort();
  assert.ok(cp instanceof ControlPlane, String(cp));
  await cp.close();
});
