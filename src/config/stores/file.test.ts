/**
 * FileStore (the --config file as a read-only store), openStore() / createStore() parsing the
 * `store:` setting, and splitDocument / mergeDocument: every key of the schema is decided.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { TurnpikeConfig } from '../schema.js';
import { FileStore } from './file.js';
import { SqliteStore } from './sqlite.js';
import { PostgresStore } from './postgres.js';
import { NODE_LOCAL_KEYS, createStore, mergeDocument, openStore, splitDocument } from './index.js';
import { StoreReadOnly, StoreUnavailable, type ConfigStore } from './types.js';

const work = mkdtempSync(join(tmpdir(), 'turnpike-filestore-'));
const opened: ConfigStore[] = [];
after(async () => {
  await Promise.all(opened.map((s) => s.close()));
  rmSync(work, { recursive: true, force: true });
});
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const yaml = (services: string, listen = '127.0.0.1:8080') => `# gateway
listen: ${listen}
admin:
  listen: 127.0.0.1:8081
services:
${services}
consumers:
  - name: acme
    credentials:
      - {type: key-auth, key: "\${ACME_KEY:-dev-key}"}
`;
const ORDERS = '  - name: orders\n    url: http://127.0.0.1:9001\n    routes: [{paths: [/orders]}]';
const USERS = '  - name: users\n    url: http://127.0.0.1:9002';

test('FileStore: the declarative part as revision 1; only a change of the document makes a new revision', async () => {
  const path = join(work, 'a.yaml');
  writeFileSync(path, yaml(ORDERS));
  const s = new FileStore({ file: path });
  opened.push(s);
  await s.open();
  const r1 = await s.current();
  assert.equal(r1.revision, 1);
  assert.equal(r1.actor, 'file');
  assert.deepEqual(Object.keys(r1.document), ['services', 'consumers'], 'node-local keys are not in the document');
  assert.deepEqual(r1.document['consumers'], [{ name: 'acme', credentials: [{ type: 'key-auth', key: '${ACME_KEY:-dev-key}' }] }], '${VAR} references are kept as written (secrets given by reference never leave the node)');
  assert.equal((await s.current()).revision, 1, 'unchanged file: same revision');
  writeFileSync(path, `# reformatted\n${yaml(ORDERS).replace('listen: 127.0.0.1:8080', 'listen:   127.0.0.1:8080   # same')}`);
  assert.equal((await s.current()).revision, 1, 'comments and formatting are not a revision');
  writeFileSync(path, yaml(ORDERS, '127.0.0.1:9090'));
  assert.equal((await s.current()).revision, 1, 'a node-local key is not a revision');
  writeFileSync(path, yaml(`${ORDERS}\n${USERS}`));
  const r2 = await s.current();
  assert.equal(r2.revision, 2);
  assert.match(r2.action, /^changed /);
  assert.deepEqual((r2.document['services'] as { name: string }[]).map((x) => x.name), ['orders', 'users']);
  assert.deepEqual((await s.history(10)).map((h) => h.revision), [2, 1]);
  assert.deepEqual((await s.history(10, 2)).map((h) => h.revision), [1]);
  assert.deepEqual((await s.revision(1))!.document['services'], r1.document['services']);
  assert.equal(await s.revision(3), null);

  // An invalid file keeps the last good revision (like a rejected reload).
  writeFileSync(path, 'services: [{name: orders, url: ftp://x}]\n');
  assert.equal((await s.current()).revision, 2);
  writeFileSync(path, 'services: [\n');
  assert.equal((await s.current()).revision, 2);
  // Concurrent readers share one read (and one revision).
  writeFileSync(path, yaml(USERS));
  const all = await Promise.all([s.current(), s.current(), s.current()]);
  assert.deepEqual(all.map((x) => x.revision), [3, 3, 3]);
});

test('FileStore: write() is refused (StoreReadOnly names the file and the way out); an unreadable first load is StoreUnavailable', async () => {
  const path = join(work, 'ro.yaml');
  writeFileSync(path, yaml(ORDERS));
  const s = new FileStore({ file: path });
  opened.push(s);
  await assert.rejects(s.write(), (err: unknown) => {
    assert.ok(err instanceof StoreReadOnly);
    assert.equal(err.message, `the config is the file ${path}; use store: sqlite:... for admin writes`);
    return true;
  });
  await assert.rejects(new FileStore({ file: join(work, 'missing.yaml') }).current(), StoreUnavailable);
  const bad = join(work, 'bad.yaml');
  writeFileSync(bad, 'services: 7\n');
  await assert.rejects(new FileStore({ file: bad }).current(), (err: unknown) => err instanceof StoreUnavailable && /services/.test(err.message));
});

test('FileStore: watch() reports a changed document (and not a reformatted file)', async () => {
  const path = join(work, 'w.yaml');
  writeFileSync(path, yaml(ORDERS));
  const s = new FileStore({ file: path, debounceMs: 30, pollMs: 100 });
  opened.push(s);
  await s.current();
  const seen: number[] = [];
  const stop = s.watch((r) => seen.push(r));
  await sleep(100);
  writeFileSync(path, `# only a comment\n${yaml(ORDERS)}`);
  await sleep(300);
  assert.deepEqual(seen, [], 'a comment is no revision');
  const t0 = performance.now();
  writeFileSync(path, yaml(`${ORDERS}\n${USERS}`));
  while (seen.length === 0 && performance.now() - t0 < 3000) await sleep(10);
  assert.deepEqual(seen, [2]);
  stop();
  writeFileSync(path, yaml(USERS));
  await sleep(300);
  assert.deepEqual(seen, [2], 'nothing after unsubscribing');
});

test('openStore / createStore: file, sqlite:PATH (relative to baseDir), postgres:// and postgresql://; anything else is an error', async () => {
  const cfg = join(work, 'gw.yaml');
  writeFileSync(cfg, yaml(ORDERS));
  const f = await openStore('file', { baseDir: work, file: 'gw.yaml' });
  opened.push(f);
  assert.ok(f instanceof FileStore);
  assert.equal(f.file, cfg);
  assert.throws(() => createStore('file', { baseDir: work }), /needs a config file/);

  const sq = await openStore('sqlite:./data/turnpike.db', { baseDir: work, sqlite: { keep: 10 } });
  opened.push(sq);
  assert.ok(sq instanceof SqliteStore);
  assert.equal(sq.path, join(work, 'data', 'turnpike.db'));
  assert.ok(existsSync(sq.path));
  assert.equal((await sq.write({ actor: 't', action: 't' }, () => ({ services: [] }))).revision, 1);
  const abs = createStore(`sqlite:${join(work, 'abs.db')}`, { baseDir: '/nonexistent' });
  assert.equal((abs as SqliteStore).path, join(work, 'abs.db'));
  const mem = await openStore('sqlite::memory:', { baseDir: work });
  opened.push(mem);
  assert.equal(await mem.current(), null);
  assert.throws(() => createStore('sqlite:', { baseDir: work }), /needs a path/);

  // (pg and libpq take the password, and the client key's passphrase, as query parameters too)
  for (const url of ['postgres://turnpike:s3cret@127.0.0.1:1/turnpike', 'postgresql://turnpike:s3cret@127.0.0.1:1/turnpike?sslmode=disable', 'postgres://turnpike@127.0.0.1:1/turnpike?password=s3cret', 'postgres://turnpike@127.0.0.1:1/turnpike?sslmode=disable&sslpassword=s3cret']) {
    const pg = createStore(url, { baseDir: work, postgres: { connectTimeoutMs: 500 } });
    assert.ok(pg instanceof PostgresStore);
    assert.ok(!pg.where.includes('s3cret'), pg.where);
    await pg.close();
  }
  // Nothing listens on port 1: openStore fails at once with StoreUnavailable and without the password.
  const t0 = performance.now();
  for (const url of ['postgres://turnpike:s3cret@127.0.0.1:1/turnpike', 'postgres://turnpike@127.0.0.1:1/turnpike?password=s3cret']) {
    await assert.rejects(openStore(url, { baseDir: work }), (err: unknown) => {
      assert.ok(err instanceof StoreUnavailable, String(err));
      assert.ok(!err.message.includes('s3cret') && err.message.includes('***'), err.message);
      return true;
    });
  }
  assert.ok(performance.now() - t0 < 2000);
  for (const bad of ['redis://x', 'sqlite', 'files', '']) assert.throws(() => createStore(bad, { baseDir: work }), /is not file, sqlite:PATH or postgres/);
});

test('splitDocument / mergeDocument: every schema key is decided; the document replaces the file\'s declarative part', () => {
  const expectedNodeLocal = [
    '$schema', 'listen', 'listen_tls', 'status_listen', 'tls', 'http2', 'workers', 'dns', 'watch', 'store', 'store_snapshot', 'admin', 'state_file', 'redis',
    'trusted_proxies', 'limits', 'timeouts', 'demo', 'access_log', 'metrics', 'tracing', 'analytics', 'scaling',
  ];
  const expectedDocument = ['services', 'routes', 'plans', 'consumers', 'consumer_headers', 'forwarding_headers', 'plugins', 'portal'];
  const schemaKeys = Object.keys(TurnpikeConfig.properties);
  // A key added to the schema must be decided here (and in NODE_LOCAL_KEYS if it is node-local).
  assert.deepEqual([...schemaKeys].sort(), [...expectedNodeLocal, ...expectedDocument].sort(), 'every top-level key of the schema is classified');
  assert.deepEqual([...NODE_LOCAL_KEYS].sort(), [...expectedNodeLocal].sort());

  const file = {
    listen: '127.0.0.1:8080',
    admin: { listen: '127.0.0.1:8081' },
    store: 'sqlite:./t.db',
    trusted_proxies: ['10.0.0.0/8'],
    services: [{ name: 'from-file', url: 'http://127.0.0.1:1' }],
    consumers: [{ name: 'seed' }],
    forwarding_headers: ['forwarded'],
  };
  const { node, document } = splitDocument(file);
  assert.deepEqual(Object.keys(node), ['listen', 'admin', 'store', 'trusted_proxies']);
  assert.deepEqual(Object.keys(document), ['services', 'consumers', 'forwarding_headers']);

  const stored = JSON.parse('{"services":[{"name":"from-store","url":"http://127.0.0.1:2"}],"plugins":[],"listen":"0.0.0.0:1","__proto__":{"polluted":true}}') as Record<string, unknown>;
  const merged = mergeDocument(file, stored) as Record<string, unknown>;
  assert.equal(merged['listen'], '127.0.0.1:8080', 'node-local keys come from the node, whatever a document says');
  assert.deepEqual(merged['services'], [{ name: 'from-store', url: 'http://127.0.0.1:2' }], 'the store is the truth');
  assert.equal(merged['consumers'], undefined, 'declarative keys of the file do not leak into the running config');
  assert.deepEqual(merged['plugins'], []);
  assert.equal(({} as Record<string, unknown>)['polluted'], undefined, 'no prototype pollution');
  assert.ok(Object.prototype.hasOwnProperty.call(merged, '__proto__'), 'an own key, as the document has it (the schema then rejects it)');
  // A real config split and merged again is the same config, and valid.
  const full = { ...file, services: [{ name: 'orders', url: 'http://127.0.0.1:9001', routes: [{ paths: ['/orders'] }] }] };
  const again = mergeDocument(splitDocument(full).node, splitDocument(full).document);
  assert.deepEqual(again, full);
  assert.ok(TypeCompiler.Compile(TurnpikeConfig).Check(again));
});
