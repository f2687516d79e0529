/**
 * PostgresStore against a real PostgreSQL (test/postgres-server.ts starts one on a free
 * loopback port): migrations raced by three nodes, revisions, optimistic conflicts between
 * nodes, 200 concurrent writes surviving a crash of the server, NOTIFY propagation (p50/p99),
 * a killed or stalled LISTEN connection converging through the resync, a stopped or hung
 * server failing fast with StoreUnavailable and working again when it is back, and a node that
 * starts while the server is down serving its disk snapshot.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { PostgresStore, type PostgresStoreOptions } from './postgres.js';
import { ConfigSnapshot } from './snapshot.js';
import { RevisionConflict, StoreUnavailable, type ConfigDocument } from './types.js';
import { startPostgres, type PostgresServer } from '../../../test/postgres-server.js';

let server: PostgresServer;
const stores: PostgresStore[] = [];
const work = mkdtempSync(join(tmpdir(), 'turnpike-pgstore-'));
let dbSeq = 0;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

before(async () => { server = await startPostgres(); });
after(async () => {
  server?.resume();
  await Promise.all(stores.map((s) => s.close()));
  await server?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** A fresh database: every test starts from an empty store. */
const freshDb = () => server.createDatabase(`t${process.pid}_${++dbSeq}`);

function store(url: string, opts: Partial<PostgresStoreOptions> = {}): PostgresStore {
  const s = new PostgresStore({ url, ...opts });
  stores.push(s);
  return s;
}

const addConsumer = (name: string) => (doc: ConfigDocument | null): ConfigDocument => ({
  ...doc,
  consumers: [...((doc?.['consumers'] as unknown[] | undefined) ?? []), { name }],
});

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

async function until(what: string, ms: number, probe: () => boolean | Promise<boolean>): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    if (await probe()) return performance.now() - t0;
    if (performance.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(10);
  }
}

test('migrations: three nodes opening an empty database at once migrate it exactly once', async () => {
  const url = await freshDb();
  const [a, b, c] = [store(url, { name: 'a' }), store(url, { name: 'b' }), store(url, { name: 'c' })];
  await Promise.all([a.open(), b.open(), c.open()]);
  const migrations = await server.query<{ version: number }>('SELECT version FROM turnpike_migrations ORDER BY version', [], url.split('/').pop());
  assert.deepEqual(migrations.map((m) => m.version), [1]);
  const head = await server.query<{ revision: string }>('SELECT revision FROM turnpike_head', [], url.split('/').pop());
  assert.deepEqual(head.map((h) => Number(h.revision)), [0]);
  // Opening again (another node later, a restart) changes nothing.
  const d = store(url);
  await d.open();
  await d.open();
  assert.equal((await server.query('SELECT * FROM turnpike_migrations', [], url.split('/').pop())).length, 1);
  // Every node works on the result.
  await a.write({ actor: 'a', action: 'seed' }, () => ({ services: [] }));
  assert.equal((await c.current())!.revision, 1);
  // No session still holds the migration lock.
  const locks = await server.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory'");
  assert.equal(locks.length, 0);
});

test('revisions: write, current, revision(n), history (newest first, limit, before), key order kept, pruning', async () => {
  const url = await freshDb();
  const s = store(url, { keep: 5 });
  assert.equal(await s.current(), null);
  assert.deepEqual(await s.history(10), []);
  const first = await s.write({ actor: 'seed', action: 'seed' }, (cur) => {
    assert.equal(cur, null);
    return { services: [{ name: 'orders', url: 'http://127.0.0.1:9001' }], consumers: [], plans: { gold: {} } };
  });
  assert.equal(first.revision, 1);
  assert.match(first.at, /^\d{4}-\d\d-\d\dT.*Z$/);
  for (let i = 0; i < 7; i++) await s.write({ actor: 'alice', action: `POST /api/consumers c${i}` }, addConsumer(`c${i}`));
  const cur = (await s.current())!;
  assert.equal(cur.revision, 8);
  assert.deepEqual(Object.keys(cur.document), ['services', 'consumers', 'plans'], 'json keeps the key order (jsonb would not)');
  assert.equal((cur.document['consumers'] as unknown[]).length, 7);
  assert.deepEqual((await s.history(100)).map((r) => r.revision), [8, 7, 6, 5, 4], 'the last 5 are kept');
  assert.deepEqual((await s.history(2, 7)).map((r) => r.revision), [6, 5]);
  assert.equal((await s.history(1))[0]!.action, 'POST /api/consumers c6');
  assert.equal(await s.revision(3), null, 'pruned');
  assert.equal(((await s.revision(6))!.document['consumers'] as unknown[]).length, 5);
  await assert.rejects(s.write({ actor: 'x', action: 'x' }, () => { throw new Error('services[0].url: invalid'); }), /services\[0\]\.url: invalid/);
  await assert.rejects(s.write({ actor: 'x', action: 'x' }, () => 'nope' as unknown as ConfigDocument), TypeError);
  assert.equal((await s.current())!.revision, 8, 'a failed change() writes nothing');
});

test('a document that is not a JSON object (JSON null, an array: the json column takes them, written by hand) is a damaged store (StoreUnavailable), never an empty config — to a write too, which would build on nothing', async () => {
  const url = await freshDb();
  const db = url.slice(url.lastIndexOf('/') + 1);
  const s = store(url);
  await s.write({ actor: 'seed', action: 'seed' }, () => ({ services: [] }));
  for (const bad of ['null', '[]']) {
    await server.query(`UPDATE turnpike_revisions SET document = '${bad}' WHERE revision = 1`, [], db);
    await assert.rejects(s.current(), (err: Error) => err instanceof StoreUnavailable && /revision 1's document is not a JSON object/.test(err.message), bad);
    await assert.rejects(s.revision(1), StoreUnavailable, bad);
    await assert.rejects(s.write({ actor: 'x', action: 'POST /api/consumers' }, addConsumer('c')), (err: Error) => err instanceof StoreUnavailable && /not a JSON object/.test(err.message), bad);
  }
  await server.query(`UPDATE turnpike_revisions SET document = '{"services": []}' WHERE revision = 1`, [], db);
  assert.equal((await s.write({ actor: 'x', action: 'POST /api/consumers' }, addConsumer('c'))).revision, 2, 'a write after the failed ones works');
});

test('conflicts between nodes: racing writers on the same expected revision — exactly one wins, the rest get RevisionConflict', async () => {
  const url = await freshDb();
  const nodes = [store(url, { name: 'n1' }), store(url, { name: 'n2' }), store(url, { name: 'n3' })];
  await nodes[0]!.write({ actor: 'seed', action: 'seed' }, () => ({ consumers: [] }));
  for (let round = 0; round < 5; round++) {
    const at = (await nodes[0]!.current())!.revision;
    const results = await Promise.allSettled(nodes.flatMap((n, i) => [0, 1].map((j) => n.write({ actor: `n${i}`, action: `r${round}` }, addConsumer(`r${round}-${i}-${j}`), at))));
    const won = results.filter((r) => r.status === 'fulfilled');
    assert.equal(won.length, 1, `round ${round}: exactly one writer wins`);
    for (const r of results) {
      if (r.status === 'rejected') {
        assert.ok(r.reason instanceof RevisionConflict, String(r.reason));
        assert.equal(r.reason.expected, at);
        assert.equal(r.reason.current, at + 1);
      }
    }
  }
  const cur = (await nodes[2]!.current())!;
  assert.equal(cur.revision, 6);
  assert.equal((cur.document['consumers'] as unknown[]).length, 5);
});

test('200 concurrent writes from 3 nodes: all acknowledged, none lost — also after the server crashes and restarts', async () => {
  const url = await freshDb();
  const nodes = [store(url, { name: 'w1' }), store(url, { name: 'w2' }), store(url, { name: 'w3' })];
  await Promise.all(nodes.map((n) => n.open()));
  const t0 = performance.now();
  const results = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => nodes[i % 3]!.write({ actor: `w${i % 3}`, action: `add ${i}` }, addConsumer(`c${i}`))));
  const ms = performance.now() - t0;
  const failed = results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason));
  assert.deepEqual(failed, []);
  const revisions = results.map((r) => (r as PromiseFulfilledResult<{ revision: number }>).value.revision).sort((a, b) => a - b);
  assert.deepEqual(revisions, Array.from({ length: 200 }, (_, i) => i + 1));
  console.log(`# 200 concurrent writes from 3 nodes: ${ms.toFixed(0)} ms`);

  // A crash of the server (immediate shutdown: no checkpoint, WAL replay at start) loses no acknowledged write.
  await server.shutdown('immediate');
  await server.restart();
  const reopened = store(url);
  const cur = (await reopened.current())!;
  assert.equal(cur.revision, 200);
  const names = new Set((cur.document['consumers'] as { name: string }[]).map((c) => c.name));
  assert.equal(names.size, 200);
  for (let i = 0; i < 200; i++) assert.ok(names.has(`c${i}`), `c${i} kept`);
  // The nodes that were connected before the crash work again (their pooled connections were dropped).
  const next = await nodes[1]!.write({ actor: 'w1', action: 'after restart' }, addConsumer('after'));
  assert.equal(next.revision, 201);
});

test('NOTIFY: a write on node A reaches the watchers of nodes B and C within 1 s (p50/p99 over 50 writes)', async () => {
  const url = await freshDb();
  const a = store(url, { name: 'A' });
  const b = store(url, { name: 'B' });
  const c = store(url, { name: 'C' });
  await a.write({ actor: 'seed', action: 'seed' }, () => ({ consumers: [] }));
  await b.current();
  await c.current();
  const seen = new Map<string, Map<number, number>>([['B', new Map()], ['C', new Map()]]);
  b.watch((r) => seen.get('B')!.set(r, performance.now()));
  c.watch((r) => seen.get('C')!.set(r, performance.now()));
  await until('B and C listening', 5000, () => b.listenerPid !== null && c.listenerPid !== null);
  const fromStart: number[] = [];
  const fromAck: number[] = [];
  for (let i = 0; i < 50; i++) {
    const t0 = performance.now();
    const w = await a.write({ actor: 'A', action: `w${i}` }, addConsumer(`p${i}`));
    const acked = performance.now();
    await until(`revision ${w.revision} on B and C`, 1000, () => seen.get('B')!.has(w.revision) && seen.get('C')!.has(w.revision));
    for (const n of ['B', 'C']) {
      const at = seen.get(n)!.get(w.revision)!;
      fromStart.push(at - t0);
      fromAck.push(at - acked);
    }
    await sleep(5);
  }
  const f = (x: number) => x.toFixed(1);
  console.log(`# propagation write start -> other node's watcher (100 samples): p50 ${f(pct(fromStart, 50))} ms, p99 ${f(pct(fromStart, 99))} ms, max ${f(Math.max(...fromStart))} ms`);
  console.log(`# propagation write ack -> other node's watcher: p50 ${f(pct(fromAck, 50))} ms, p99 ${f(pct(fromAck, 99))} ms (about 0: the other node hears the NOTIFY as the writer gets its COMMIT answer)`);
  assert.ok(pct(fromStart, 99) < 1000);
  assert.deepEqual([...seen.get('B')!.keys()], Array.from({ length: 50 }, (_, i) => i + 2), 'every revision reported once, in order');
});

test('the head goes back (restore, failover to a replica that was behind): a NOTIFY of a number already reported has the head read and reported; the resync reports a lower head', async () => {
  const url = await freshDb();
  const a = store(url, { name: 'writer' });
  const b = store(url, { name: 'reader', resyncMs: 60_000 }); // (the NOTIFY path alone)
  for (let i = 1; i <= 4; i++) await a.write({ actor: 'a', action: `w${i}` }, addConsumer(`c${i}`));
  await b.current();
  const seen: number[] = [];
  b.watch((r) => seen.push(r));
  await until('B listening', 5000, () => b.listenerPid !== null);
  await sleep(100);
  assert.equal(seen.length, 0, 'nothing new: nothing reported');
  // Restored in place to revision 2 (no NOTIFY: B is not told).
  await server.query('BEGIN; DELETE FROM turnpike_revisions WHERE revision > 2; UPDATE turnpike_head SET revision = 2 WHERE id = 1; COMMIT', [], url.slice(url.lastIndexOf('/') + 1));
  const t0 = performance.now();
  const w3 = await a.write({ actor: 'a', action: 'after the restore' }, addConsumer('r3'));
  assert.equal(w3.revision, 3);
  await until('B told of the new revision 3 (it had 4)', 1000, () => seen.includes(3));
  const w4 = await a.write({ actor: 'a', action: 'after the restore, 4 again' }, addConsumer('r4'));
  await until('B told of the new revision 4 (the number it had)', 1000, () => seen.filter((r) => r === 4).length === 1);
  console.log(`# after the head went back, B was told of revisions 3 and 4 again in ${(performance.now() - t0).toFixed(0)} ms`);
  assert.deepEqual(seen, [3, 4]);
  assert.deepEqual((await b.current())!.document, w4.document);
  // Gone back with no write after it: the resync reports the lower head.
  const c = store(url, { name: 'resync', resyncMs: 200 });
  await c.current();
  const seenC: number[] = [];
  c.watch((r) => seenC.push(r));
  await until('C listening', 5000, () => c.listenerPid !== null);
  await server.query('BEGIN; DELETE FROM turnpike_revisions WHERE revision > 1; UPDATE turnpike_head SET revision = 1 WHERE id = 1; COMMIT', [], url.slice(url.lastIndexOf('/') + 1));
  await until('the resync reports the lower head', 2000, () => seenC.includes(1));
  assert.deepEqual(seenC, [1]);
});

test('a killed LISTEN connection (pg_terminate_backend) reconnects and converges; a stalled one (SIGSTOP) converges within the resync bound', async () => {
  const url = await freshDb();
  const a = store(url, { name: 'writer' });
  const RESYNC = 1000;
  const b = store(url, { name: 'reader', resyncMs: RESYNC, statementTimeoutMs: 500, reconnectMinMs: 100 });
  await a.write({ actor: 'seed', action: 'seed' }, () => ({ consumers: [] }));
  await b.current();
  let latest = 0;
  b.watch((r) => { latest = r; });
  await until('B listening', 5000, () => b.listenerPid !== null);

  // 1. Killed: the backend goes away, the client sees the connection end.
  const killed = b.listenerPid!;
  await server.query('SELECT pg_terminate_backend($1)', [killed]);
  const w1 = await a.write({ actor: 'a', action: 'while B is not listening' }, addConsumer('k1'));
  const t1 = await until('B converged after its LISTEN connection was killed', RESYNC * 2 + 500, () => latest >= w1.revision);
  await until('B listening again', 5000, () => b.listenerPid !== null && b.listenerPid !== killed);
  console.log(`# killed LISTEN connection: converged after ${t1.toFixed(0)} ms (resync every ${RESYNC} ms)`);
  // Listening again: the next write arrives by NOTIFY, well before a resync could bring it.
  const w2 = await a.write({ actor: 'a', action: 'listening again' }, addConsumer('k2'));
  const t2 = await until('NOTIFY after the reconnect', 500, () => latest >= w2.revision);
  assert.ok(t2 < 300, `notified after ${t2.toFixed(0)} ms`);

  // 2. Stalled: the backend is frozen, the TCP connection stays up, nothing is delivered.
  const stalled = b.listenerPid!;
  process.kill(stalled, 'SIGSTOP');
  try {
    await sleep(50);
    const w3 = await a.write({ actor: 'a', action: 'while B hears nothing' }, addConsumer('k3'));
    const t3 = await until('B converged through the resync', RESYNC + 500, () => latest >= w3.revision);
    console.log(`# stalled LISTEN connection: converged after ${t3.toFixed(0)} ms through the resync (bound ${RESYNC} ms)`);
    // The resync's ping finds the stalled session and replaces it.
    await until('a new LISTEN connection', RESYNC + 3000, () => b.listenerPid !== null && b.listenerPid !== stalled);
    const w4 = await a.write({ actor: 'a', action: 'new listener' }, addConsumer('k4'));
    await until('NOTIFY on the new connection', 500, () => latest >= w4.revision);
  } finally {
    process.kill(stalled, 'SIGCONT');
    await server.query('SELECT pg_terminate_backend($1)', [stalled]).catch(() => undefined);
  }
});

test('PostgreSQL hung or stopped: StoreUnavailable within the timeouts (no hang); back: works again and watchers catch up; a restarted node serves its disk snapshot', async () => {
  const url = await freshDb();
  const opts = { connectTimeoutMs: 800, statementTimeoutMs: 800, resyncMs: 500, reconnectMinMs: 50, reconnectMaxMs: 400 };
  const a = store(url, { ...opts, name: 'a' });
  const b = store(url, { ...opts, name: 'b' });
  const snapshot = new ConfigSnapshot(join(work, 'b-snapshot.json'));
  const seed = await a.write({ actor: 'seed', action: 'seed' }, () => ({ services: [{ name: 'orders', url: 'http://127.0.0.1:9001' }] }));
  await snapshot.save((await b.current())!);
  let latest = 0;
  b.watch((r) => { latest = r; });
  await until('b listening', 5000, () => b.listenerPid !== null);

  // Hung: every process of the server stopped; connections are accepted by the kernel, nothing answers.
  server.pause();
  try {
    for (const [what, op] of [
      ['write', () => a.write({ actor: 'a', action: 'x' }, (d) => d!)],
      ['current', () => a.current()],
      ['history', () => b.history(5)],
    ] as const) {
      const t0 = performance.now();
      await assert.rejects(op(), StoreUnavailable, what);
      const ms = performance.now() - t0;
      assert.ok(ms < 3000, `${what} gave up after ${ms.toFixed(0)} ms`);
      console.log(`# hung server: ${what} -> StoreUnavailable after ${ms.toFixed(0)} ms`);
    }
  } finally {
    server.resume();
  }
  const w1 = await a.write({ actor: 'a', action: 'after the hang' }, addConsumer('h1'));
  await until('b caught up after the hang', 3000, () => latest >= w1.revision);

  // Stopped while a write is inside its transaction (change() still running): the connection
  // drops under it; the write fails with StoreUnavailable (no crash of this process), nothing applied.
  const inFlight = a.write({ actor: 'a', action: 'torn' }, async (d) => { await sleep(400); return { ...d, torn: true }; });
  await sleep(100);
  await server.shutdown('fast');
  await assert.rejects(inFlight, StoreUnavailable);
  try {
    for (const [what, op] of [
      ['write', () => a.write({ actor: 'a', action: 'x' }, (d) => d!)],
      ['current', () => b.current()],
      ['revision', () => b.revision(1)],
      ['open (a node starting now)', () => store(url, opts).open()],
    ] as const) {
      const t0 = performance.now();
      await assert.rejects(op(), (err: unknown) => {
        assert.ok(err instanceof StoreUnavailable, `${what}: ${String(err)}`);
        assert.ok(!err.message.includes('password'), 'no secrets in the message');
        return true;
      });
      const ms = performance.now() - t0;
      assert.ok(ms < 1000, `${what} gave up after ${ms.toFixed(0)} ms`);
    }
    // The node restarted meanwhile has its disk snapshot to serve.
    const fromDisk = await new ConfigSnapshot(join(work, 'b-snapshot.json')).load();
    assert.equal(fromDisk!.revision, seed.revision);
    assert.deepEqual(fromDisk!.document, seed.document);
  } finally {
    await server.restart();
  }
  // Back: the same stores work again without being reopened; b's watcher catches up (LISTEN reconnects, resync).
  const w2 = await a.write({ actor: 'a', action: 'after the restart' }, addConsumer('h2'));
  assert.equal(w2.revision, w1.revision + 1, 'the write cut by the shutdown left nothing');
  assert.equal(w2.document['torn'], undefined);
  const t = await until('b caught up after the restart', 3000, () => latest >= w2.revision);
  console.log(`# after the restart, b's watcher caught up in ${t.toFixed(0)} ms`);
  const late = store(url, opts);
  await late.open();
  assert.equal((await late.current())!.revision, w2.revision);
  await until('b listening again', 3000, () => b.listenerPid !== null);
});

test('PostgreSQL hung (SIGSTOP): concurrent writes all fail within one write\'s bounds, not one after another, and none is applied later; a write that waits too long behind a slow one fails unrun', async () => {
  const url = await freshDb();
  const opts = { connectTimeoutMs: 500, statementTimeoutMs: 500 }; // one write's bounds: 0.5 s to connect, 1.5 s for a statement
  const a = store(url, { ...opts, name: 'hung' });
  const seed = await a.write({ actor: 'seed', action: 'seed' }, () => ({ consumers: [] }));
  const ran: string[] = [];
  const add = (name: string) => (doc: ConfigDocument | null) => {
    ran.push(name);
    return addConsumer(name)(doc);
  };
  server.pause();
  let times: number[];
  try {
    const t0 = performance.now();
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => a.write({ actor: 'a', action: `p${i}` }, add(`p${i}`)).then(
      () => assert.fail(`p${i} was written while the server was stopped`),
      (err: unknown) => {
        assert.ok(err instanceof StoreUnavailable, String(err));
        return performance.now() - t0;
      },
    )));
    times = results;
    console.log(`# hung server, 8 concurrent writes: StoreUnavailable after ${times.map((t) => t.toFixed(0)).join(', ')} ms`);
    // (before: each waited for the one ahead to time out: 1.5 s, 2 s, 2.5 s ... 5 s)
    for (const t of times) assert.ok(t < 2500, `a write answered after ${t.toFixed(0)} ms: ${times.map((x) => x.toFixed(0)).join(', ')}`);
    // A write arriving after that failure is tried again (its own bounds), not refused for the old one.
    const t1 = performance.now();
    await assert.rejects(a.write({ actor: 'a', action: 'later' }, add('later')), StoreUnavailable);
    assert.ok(performance.now() - t1 >= 400, 'the later write tried the server');
  } finally {
    server.resume();
  }
  await sleep(300);
  const cur = (await a.current())!;
  assert.equal(cur.revision, seed.revision, 'nothing written by the writes that failed');
  assert.deepEqual(cur.document['consumers'], []);
  assert.deepEqual(ran, [], 'no change() ran: the server never answered the first statement');

  // A slow write (its change() takes 1 s) holds the queue: the write behind it gives up after
  // writeWaitMs, unrun — and stays unrun once the slow one is done.
  const b = store(url, { name: 'slow', writeWaitMs: 300 });
  const slow = b.write({ actor: 'b', action: 'slow' }, async (doc) => {
    await sleep(1000);
    return add('slow')(doc);
  });
  await sleep(50);
  const t2 = performance.now();
  await assert.rejects(b.write({ actor: 'b', action: 'queued' }, add('queued')), (err: unknown) => {
    assert.ok(err instanceof StoreUnavailable, String(err));
    assert.match(err.message, /waited 300 ms behind other writes without starting; it was not written/);
    return true;
  });
  const waited = performance.now() - t2;
  assert.ok(waited >= 280 && waited < 800, `gave up after ${waited.toFixed(0)} ms`);
  const done = await slow;
  await sleep(200);
  assert.deepEqual(ran, ['slow'], 'the write that gave up never ran');
  const after = (await b.current())!;
  assert.equal(after.revision, done.revision);
  assert.deepEqual((after.document['consumers'] as { name: string }[]).map((c) => c.name), ['slow']);
  // The queue works on: the next write is written.
  assert.equal((await b.write({ actor: 'b', action: 'next' }, add('next'))).revision, done.revision + 1);
});
