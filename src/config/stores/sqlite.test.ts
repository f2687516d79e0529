/**
 * SqliteStore on real files, with real other processes: revisions and history, optimistic
 * conflicts, 200 concurrent writers from 2 processes (none lost), durability of an acknowledged
 * write when the writer is SIGKILLed right after the ack, pruning, watch across processes, and
 * a lock held by another process (waited for without blocking the event loop, bounded).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import Database from 'better-sqlite3';
import { SqliteStore } from './sqlite.js';
import { RevisionConflict, StoreUnavailable, type ConfigDocument } from './types.js';
import { childModule } from '../../../test/child-module.js';

const ROOT = process.cwd();
/** The other processes load the store as this one was loaded (test/child-module.ts). */
const SQLITE = childModule('src/config/stores/sqlite.ts');
const work = mkdtempSync(join(tmpdir(), 'turnpike-sqlite-'));
const stores: SqliteStore[] = [];
const children = new Set<ChildProcess>();
let seq = 0;
const dbPath = () => join(work, `t${++seq}.db`);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await Promise.all(stores.map((s) => s.close()));
  rmSync(work, { recursive: true, force: true });
});

async function open(path: string, opts: Partial<ConstructorParameters<typeof SqliteStore>[0]> = {}): Promise<SqliteStore> {
  const s = new SqliteStore({ path, ...opts });
  stores.push(s);
  await s.open();
  return s;
}

const addConsumer = (name: string) => (doc: ConfigDocument | null): ConfigDocument => ({
  ...doc,
  consumers: [...((doc?.['consumers'] as unknown[] | undefined) ?? []), { name }],
});

/** A node process running `body` (an async ES module body) with `SqliteStore` in scope; lines of stdout are handed to onLine. */
function child(body: string, env: Record<string, string>, onLine: (line: string, c: ChildProcess) => void = () => undefined) {
  const code = `const { SqliteStore } = await import(${JSON.stringify(SQLITE.url)});\n${body}`;
  const c = spawn(process.execPath, [...SQLITE.execArgv, '--input-type=module', '-e', code], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  children.add(c);
  let stderr = '';
  c.stderr!.on('data', (d) => { stderr += d.toString(); });
  createInterface({ input: c.stdout! }).on('line', (l) => onLine(l, c));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((r) => c.once('exit', (code, signal) => {
    children.delete(c);
    r({ code, signal, stderr });
  }));
  return { proc: c, exited };
}

test('revisions: write, current, revision(n), history newest first with limit and before', async () => {
  const s = await open(dbPath());
  assert.equal(await s.current(), null, 'an empty store has no revision');
  assert.deepEqual(await s.history(10), []);
  const r1 = await s.write({ actor: 'seed', action: 'seed from turnpike.yaml' }, (cur) => {
    assert.equal(cur, null, 'change() of an empty store gets null');
    return { services: [{ name: 'orders', url: 'http://127.0.0.1:9001' }] };
  });
  assert.equal(r1.revision, 1);
  assert.match(r1.at, /^\d{4}-\d\d-\d\dT/);
  for (let i = 0; i < 4; i++) await s.write({ actor: 'alice', action: `POST /api/consumers ${i}` }, addConsumer(`c${i}`));
  const cur = (await s.current())!;
  assert.equal(cur.revision, 5);
  assert.equal(cur.actor, 'alice');
  assert.deepEqual(cur.document['services'], [{ name: 'orders', url: 'http://127.0.0.1:9001' }]);
  assert.deepEqual((cur.document['consumers'] as { name: string }[]).map((c) => c.name), ['c0', 'c1', 'c2', 'c3']);
  assert.deepEqual(Object.keys(cur.document), ['services', 'consumers'], 'key order kept');
  const r3 = (await s.revision(3))!;
  assert.deepEqual((r3.document['consumers'] as { name: string }[]).map((c) => c.name), ['c0', 'c1']);
  assert.equal(await s.revision(99), null);
  assert.equal(await s.revision(0), null);
  assert.deepEqual((await s.history(10)).map((r) => r.revision), [5, 4, 3, 2, 1]);
  assert.deepEqual((await s.history(2)).map((r) => r.revision), [5, 4]);
  assert.deepEqual((await s.history(2, 4)).map((r) => r.revision), [3, 2]);
  assert.deepEqual(await s.history(5, 1), []);
  const h = (await s.history(1, 2))[0]!;
  assert.deepEqual(Object.keys(h).sort(), ['action', 'actor', 'at', 'revision'], 'history carries no documents');
  assert.equal(h.action, 'seed from turnpike.yaml');

  // Everything is on disk: another store on the same file sees it.
  await s.close();
  const again = await open(s.path);
  assert.equal((await again.current())!.revision, 5);
});

test('expected: a stale revision gets RevisionConflict and writes nothing; a throwing change() writes nothing', async () => {
  const s = await open(dbPath());
  await s.write({ actor: 't', action: 'a' }, addConsumer('a'), 0); // expected 0 = empty store
  await assert.rejects(s.write({ actor: 't', action: 'b' }, addConsumer('b'), 0), (err: unknown) => {
    assert.ok(err instanceof RevisionConflict);
    assert.equal(err.expected, 0);
    assert.equal(err.current, 1);
    return true;
  });
  const two = await s.write({ actor: 't', action: 'b' }, addConsumer('b'), 1);
  assert.equal(two.revision, 2);
  let called = false;
  await assert.rejects(s.write({ actor: 't', action: 'x' }, () => { called = true; return {}; }, 1), RevisionConflict);
  assert.equal(called, false, 'change() is not run on a conflict');
  await assert.rejects(s.write({ actor: 't', action: 'x' }, async () => { await sleep(5); throw new Error('invalid: services[0].url'); }), /invalid: services\[0\]\.url/);
  await assert.rejects(s.write({ actor: 't', action: 'x' }, () => [] as unknown as ConfigDocument), TypeError);
  assert.equal((await s.current())!.revision, 2, 'nothing written by the failed writes');
  assert.deepEqual((await s.history(10)).map((r) => r.action), ['b', 'a']);
  // Two racing writers that both read revision 2: exactly one wins.
  const race = await Promise.allSettled([
    s.write({ actor: 'p', action: 'p' }, addConsumer('p'), 2),
    s.write({ actor: 'q', action: 'q' }, addConsumer('q'), 2),
  ]);
  assert.deepEqual(race.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
  assert.equal((await s.current())!.revision, 3);
});

test('200 concurrent writers from 2 processes: every write acknowledged, none lost, revisions 1..200 contiguous', async () => {
  const path = dbPath();
  const body = `
    const s = new SqliteStore({ path: process.env.DB, lockTimeoutMs: 20000 });
    await s.open();
    console.log('ready');
    await new Promise((r) => process.stdin.once('data', r));
    process.stdin.destroy();
    const tag = process.env.TAG;
    // 100 writers each, arriving at random moments over 1.5 s (many in flight at once, in both processes).
    const results = await Promise.allSettled(Array.from({ length: 100 }, async (_, i) => {
      await new Promise((r) => setTimeout(r, Math.random() * 1500));
      return s.write({ actor: tag, action: 'add ' + i }, (doc) => ({ ...doc, consumers: [...(doc?.consumers ?? []), { name: tag + '-' + i }] }));
    }));
    console.log(JSON.stringify({
      ok: results.filter((r) => r.status === 'fulfilled').map((r) => r.value.revision),
      failed: results.filter((r) => r.status === 'rejected').map((r) => String(r.reason)),
    }));
    await s.close();
  `;
  const out: Record<string, { ok: number[]; failed: string[] }> = {};
  let ready = 0;
  const started = Date.now();
  const kids = ['A', 'B'].map((tag) => child(body, { DB: path, TAG: tag }, (line, c) => {
    if (line === 'ready') {
      if (++ready === 2) for (const k of kids) k.proc.stdin!.end('go\n');
    } else out[tag] = JSON.parse(line) as { ok: number[]; failed: string[] };
    void c;
  }));
  const exits = await Promise.all(kids.map((k) => k.exited));
  for (const e of exits) assert.equal(e.code, 0, e.stderr);
  const elapsed = Date.now() - started;
  assert.deepEqual(out['A']!.failed, []);
  assert.deepEqual(out['B']!.failed, []);
  const acked = [...out['A']!.ok, ...out['B']!.ok].sort((a, b) => a - b);
  assert.deepEqual(acked, Array.from({ length: 200 }, (_, i) => i + 1), 'every revision acknowledged exactly once');
  // Both processes really interleaved (each got revisions in the other's range).
  assert.ok(Math.min(...out['A']!.ok) < Math.max(...out['B']!.ok) && Math.min(...out['B']!.ok) < Math.max(...out['A']!.ok), 'the writers overlapped');

  const s = await open(path);
  const cur = (await s.current())!;
  assert.equal(cur.revision, 200);
  const names = (cur.document['consumers'] as { name: string }[]).map((c) => c.name);
  assert.equal(names.length, 200);
  assert.equal(new Set(names).size, 200);
  for (const tag of ['A', 'B']) for (let i = 0; i < 100; i++) assert.ok(names.includes(`${tag}-${i}`), `${tag}-${i} kept`);
  // Each revision added exactly one consumer to the one before it.
  for (const n of [2, 50, 117, 200]) {
    const prev = ((await s.revision(n - 1))!.document['consumers'] as unknown[]).length;
    assert.equal(((await s.revision(n))!.document['consumers'] as unknown[]).length, prev + 1);
  }
  console.log(`# 200 writes from 2 processes in ${elapsed} ms (including process start)`);
});

test('crash durability: a writer SIGKILLed right after an acknowledgement keeps every acknowledged write', async () => {
  const path = dbPath();
  // The child writes revision after revision and prints each one once write() resolved
  // (stdout to a pipe is synchronous on Linux: the line is out before the next write starts).
  const body = `
    const s = new SqliteStore({ path: process.env.DB });
    await s.open();
    for (let i = 0; ; i++) {
      const r = await s.write({ actor: 'crash', action: 'w' + i }, (doc) => ({ ...doc, seq: (doc?.seq ?? 0) + 1, pad: 'x'.repeat(2000 + (i % 7) * 500) }));
      process.stdout.write('ack ' + r.revision + ' ' + r.document.seq + '\\n');
    }
  `;
  let lastAck = 0;
  for (const killAfter of [7, 23, 41]) {
    let acks = 0;
    const base = lastAck;
    const k = child(body, { DB: path }, (line, c) => {
      const m = /^ack (\d+) (\d+)$/.exec(line);
      if (!m) return;
      assert.equal(Number(m[1]), Number(m[2]), 'seq follows the revision');
      lastAck = Number(m[1]);
      if (++acks === killAfter) c.kill('SIGKILL'); // at once: the next transaction is likely in flight
    });
    const e = await k.exited;
    assert.equal(e.signal, 'SIGKILL', e.stderr);
    assert.ok(lastAck >= base + killAfter, `acked ${lastAck}`);
    const s = await open(path);
    const cur = (await s.current())!;
    assert.ok(cur.revision >= lastAck, `revision ${cur.revision} >= last acknowledged ${lastAck}`);
    assert.ok(cur.revision <= lastAck + 1, 'at most the one write in flight (never acknowledged) may also have landed');
    for (let n = base + 1; n <= lastAck; n++) assert.equal((await s.revision(n))!.document['seq'], n, `revision ${n} intact`);
    lastAck = cur.revision;
    await s.close();
    const db = new Database(path, { readonly: true });
    assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
    db.close();
  }
});

test('pruning keeps the last N revisions; numbers are never reused', async () => {
  const path = dbPath();
  const s = await open(path, { keep: 5 });
  for (let i = 1; i <= 12; i++) await s.write({ actor: 't', action: `w${i}` }, () => ({ n: i }));
  assert.deepEqual((await s.history(100)).map((r) => r.revision), [12, 11, 10, 9, 8]);
  assert.equal(await s.revision(7), null, 'pruned');
  assert.deepEqual((await s.revision(8))!.document, { n: 8 });
  await s.close();
  const db = new Database(path, { readonly: true });
  assert.equal((db.prepare('SELECT count(*) AS n FROM revisions').get() as { n: number }).n, 5);
  db.close();
  const t = await open(path, { keep: 3 });
  const next = await t.write({ actor: 't', action: 'after reopen' }, () => ({ n: 13 }));
  assert.equal(next.revision, 13);
  assert.deepEqual((await t.history(100)).map((r) => r.revision), [13, 12, 11]);
});

test('watch: writes of another process are noticed within the poll interval; local writes at once', async () => {
  const path = dbPath();
  const s = await open(path, { pollMs: 100 });
  await s.write({ actor: 't', action: 'seed' }, () => ({ n: 0 }));
  assert.equal((await s.current())!.revision, 1);
  const seen: { revision: number; at: number }[] = [];
  const stop = s.watch((revision) => seen.push({ revision, at: Date.now() }));
  await sleep(150);
  assert.equal(seen.length, 0, 'nothing new: nothing reported');

  const written: { revision: number; at: number }[] = [];
  const k = child(`
    const s = new SqliteStore({ path: process.env.DB });
    await s.open();
    for (let i = 0; i < 3; i++) {
      const r = await s.write({ actor: 'other', action: 'w' + i }, (doc) => ({ ...doc, n: i + 1 }));
      console.log(r.revision + ' ' + Date.now());
      await new Promise((r) => setTimeout(r, 300));
    }
    await s.close();
  `, { DB: path }, (line) => {
    const [r, at] = line.split(' ').map(Number);
    written.push({ revision: r!, at: at! });
  });
  assert.equal((await k.exited).code, 0);
  await sleep(150);
  assert.deepEqual(seen.map((x) => x.revision), [2, 3, 4]);
  const lags = seen.map((x, i) => x.at - written[i]!.at);
  for (const lag of lags) assert.ok(lag < 400, `noticed after ${lag} ms`);
  console.log(`# cross-process watch lag (poll 100 ms): ${lags.join(', ')} ms`);

  const local = await s.write({ actor: 'me', action: 'local' }, (doc) => ({ ...doc, n: 99 }));
  assert.equal(seen[seen.length - 1]!.revision, local.revision, 'a local write is reported at once');
  stop();
  await s.write({ actor: 'me', action: 'unwatched' }, (doc) => doc!);
  assert.equal(seen.length, 4, 'nothing after unsubscribing');
});

test('watch: a file restored from an older backup (the backup API) is reported, and so are the writes after it, whose numbers were reported before', async () => {
  const path = dbPath();
  const s = await open(path, { pollMs: 50 });
  for (let i = 1; i <= 2; i++) await s.write({ actor: 't', action: `w${i}` }, (doc) => ({ ...doc, n: i }));
  const backup = join(work, 'restore-from.db');
  const other = new Database(path);
  await other.backup(backup); // at revision 2
  for (let i = 3; i <= 4; i++) await s.write({ actor: 't', action: `w${i}` }, (doc) => ({ ...doc, n: i }));
  const seen: number[] = [];
  const stop = s.watch((revision) => seen.push(revision));
  await sleep(120);
  assert.equal(seen.length, 0, 'nothing new: nothing reported');
  // Restored in place, as sqlite3's .restore does: the pages of the backup copied over the live file.
  const old = new Database(backup, { readonly: true });
  await old.backup(path);
  old.close();
  other.close();
  const wait = async (what: string, ok: () => boolean) => {
    for (let t = 0; !ok(); t += 10) {
      if (t > 2000) assert.fail(`${what}: seen ${JSON.stringify(seen)}`);
      await sleep(10);
    }
  };
  await wait('the restored head is reported', () => seen.includes(2));
  assert.equal((await s.current())!.revision, 2);
  // Written after the restore (by this store): 3 again, another revision.
  const again = await s.write({ actor: 't', action: 'after the restore' }, (doc) => ({ ...doc, after: true }));
  assert.equal(again.revision, 3);
  assert.deepEqual(seen, [2, 3], 'a local write at a number reported before is reported');
  stop();
});

test('a lock held by another process: waited for without blocking the event loop; StoreUnavailable past lockTimeoutMs', async () => {
  const path = dbPath();
  const s = await open(path, { lockTimeoutMs: 300 });
  await s.write({ actor: 't', action: 'seed' }, () => ({ n: 1 }));
  // Another process takes the write lock and holds it for 1.5 s.
  let locked!: () => void;
  const isLocked = new Promise<void>((r) => { locked = r; });
  const k = child(`
    const { default: Database } = await import('better-sqlite3');
    const db = new Database(process.env.DB);
    db.prepare('BEGIN IMMEDIATE').run();
    console.log('locked');
    await new Promise((r) => setTimeout(r, 1500));
    db.prepare('COMMIT').run();
    db.close();
  `, { DB: path }, (line) => { if (line === 'locked') locked(); });
  await isLocked;
  let maxGap = 0;
  let last = performance.now();
  const tick = setInterval(() => { const now = performance.now(); maxGap = Math.max(maxGap, now - last); last = now; }, 5);
  const t0 = performance.now();
  await assert.rejects(s.write({ actor: 't', action: 'blocked' }, (doc) => doc!), (err: unknown) => {
    assert.ok(err instanceof StoreUnavailable, String(err));
    assert.match(err.message, /locked by another process/);
    return true;
  });
  const waited = performance.now() - t0;
  assert.ok(waited >= 280 && waited < 1000, `gave up after ${waited.toFixed(0)} ms`);
  // Concurrent writes meanwhile: the first waits out the lock timeout, the others fail with it
  // (not each waiting its own 300 ms in turn), and none of them runs.
  const t1 = performance.now();
  let ran = 0;
  const many = await Promise.all(Array.from({ length: 5 }, (_, i) => s.write({ actor: 't', action: `queued ${i}` }, (doc) => { ran++; return { ...doc, q: i }; }).then(
    () => assert.fail(`queued ${i} was written while the lock was held`),
    (err: unknown) => {
      assert.ok(err instanceof StoreUnavailable, String(err));
      return performance.now() - t1;
    },
  )));
  console.log(`# 5 concurrent writes while another process holds the lock (lockTimeoutMs 300): StoreUnavailable after ${many.map((t) => t.toFixed(0)).join(', ')} ms`);
  for (const t of many) assert.ok(t < 700, `answered after ${t.toFixed(0)} ms: ${many.map((x) => x.toFixed(0)).join(', ')}`);
  assert.equal(ran, 0);
  // Reads are not blocked by a writer (WAL).
  assert.equal((await s.current())!.revision, 1);
  // A patient writer gets through once the lock is released.
  const patient = await open(path, { lockTimeoutMs: 5000 });
  const r = await patient.write({ actor: 't', action: 'after' }, (doc) => ({ ...doc, n: 2 }));
  clearInterval(tick);
  assert.equal(r.revision, 2);
  assert.ok(performance.now() - t0 >= 1000, 'it waited for the other process');
  assert.ok(maxGap < 100, `event loop never blocked for long (max gap ${maxGap.toFixed(1)} ms)`);
  assert.equal((await k.exited).code, 0);
});

test('open(): WAL mode; two stores opening the same new file at once both work; lazy open; a file that is no database is StoreUnavailable', async () => {
  const path = dbPath();
  const [a, b] = await Promise.all([open(path), open(path)]);
  await a.write({ actor: 'a', action: 'a' }, () => ({ a: 1 }));
  assert.equal((await b.current())!.revision, 1);
  const db = new Database(path, { readonly: true });
  assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
  db.close();
  // Used without open(): opens itself.
  const lazy = new SqliteStore({ path });
  stores.push(lazy);
  assert.equal((await lazy.current())!.revision, 1);
  // A path that cannot be a database: StoreUnavailable, for open() and for every call.
  const bad = new SqliteStore({ path: work });
  await assert.rejects(bad.open(), StoreUnavailable);
  await assert.rejects(bad.write({ actor: 'a', action: 'x' }, () => ({})), StoreUnavailable);
  writeFileSync(join(work, 'not-a-db'), 'this is not a database, just some text '.repeat(100));
  await assert.rejects(new SqliteStore({ path: join(work, 'not-a-db') }).current(), StoreUnavailable);
  await a.close();
  await assert.rejects(a.write({ actor: 'a', action: 'x' }, () => ({})), StoreUnavailable, 'closed');
});

test('a new store file is readable by its owner only (0600, its -wal and -shm too): it holds the config\'s secrets (plugin secrets, credentials), as the disk snapshot of a postgres node does', async () => {
  const old = process.umask(0o022);
  try {
    const path = dbPath();
    const s = await open(path);
    await s.write({ actor: 'a', action: 'a' }, () => ({ plugins: [{ name: 'jwt', config: { secret: 's3cret' } }] }));
    for (const f of [path, `${path}-wal`, `${path}-shm`]) assert.equal(statSync(f).mode & 0o777, 0o600, f);
    // (a file that exists keeps the mode its owner gave it)
    const given = dbPath();
    writeFileSync(given, '');
    chmodSync(given, 0o640);
    await open(given);
    assert.equal(statSync(given).mode & 0o777, 0o640);
  } finally {
    process.umask(old);
  }
});
