/**
 * The node's disk snapshot: round trip, torn / damaged / foreign files ignored (never served),
 * and a writer SIGKILLed while saving in a loop never leaves a torn file behind.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Logger } from '../../core/log.js';
import { ConfigSnapshot, parseSnapshot, readSnapshot, writeSnapshot } from './snapshot.js';
import type { StoredConfig } from './types.js';

const ROOT = process.cwd();
const work = mkdtempSync(join(tmpdir(), 'turnpike-snapshot-'));
after(() => rmSync(work, { recursive: true, force: true }));
let seq = 0;
const file = () => join(work, `s${++seq}`, 'snapshot.json');

function logger() {
  const warnings: string[] = [];
  const log = { warn: (o: { err?: string }, msg: string) => warnings.push(`${msg}: ${o.err ?? ''}`) } as unknown as Logger;
  return { log, warnings };
}

const sample = (revision: number, extra: Record<string, unknown> = {}): StoredConfig => ({
  revision,
  at: '2026-11-26T22:00:00.000Z',
  actor: 'alice',
  action: 'PUT /api/config',
  document: { services: [{ name: 'orders', url: 'http://127.0.0.1:9001', routes: [{ paths: ['/orders'] }] }], consumers: [{ name: 'acme' }], ...extra },
});

test('write then read: the same StoredConfig; mode 0600; no temp file left; a missing file is null', async () => {
  const p = file();
  const { log, warnings } = logger();
  assert.equal(await readSnapshot(p, log), null);
  assert.deepEqual(warnings, [], 'a missing snapshot is not a warning');
  const s = sample(7, { plans: { gold: { description: 'ünïcødé ✓' } } });
  await writeSnapshot(p, s);
  assert.deepEqual(await readSnapshot(p, log), s);
  assert.equal(statSync(p).mode & 0o777, 0o600);
  assert.deepEqual(readdirSync(dirname(p)), ['snapshot.json']);
  await writeSnapshot(p, sample(8));
  assert.equal((await readSnapshot(p))!.revision, 8, 'replaced');
  assert.deepEqual(readdirSync(dirname(p)), ['snapshot.json']);
});

test('a torn, damaged or foreign file is ignored with a reason, never served', async () => {
  const p = file();
  await writeSnapshot(p, sample(3));
  const good = readFileSync(p, 'utf8');
  const cases: [string, string, RegExp][] = [
    ['torn in half', good.slice(0, Math.floor(good.length / 2)), /not JSON/],
    ['torn one byte short', good.trimEnd().slice(0, -1), /not JSON/],
    ['empty', '', /not JSON/],
    ['zeros (a block allocated, never written)', '\0'.repeat(4096), /not JSON/],
    ['a value changed by hand', good.replace('"orders"', '"orderz"'), /digest/],
    ['not a snapshot', JSON.stringify({ services: [] }), /not a turnpike-config-snapshot/],
    ['a future version', good.replace('"version":1', '"version":2'), /version 2/],
  ];
  for (const [what, text, reason] of cases) {
    writeFileSync(p, text);
    const { log, warnings } = logger();
    assert.equal(await readSnapshot(p, log), null, what);
    assert.equal(warnings.length, 1, what);
    assert.match(warnings[0]!, reason, what);
    assert.throws(() => parseSnapshot(text), reason);
  }
  // A consistent file with a bad shape (digest recomputed) is refused too.
  const data = JSON.parse(good) as { config: Record<string, unknown>; sha256: string };
  data.config['document'] = [];
  const { createHash } = await import('node:crypto');
  data.sha256 = createHash('sha256').update(JSON.stringify(data.config)).digest('hex');
  assert.throws(() => parseSnapshot(JSON.stringify(data)), /document is not an object/);
  // A save after damage repairs it.
  await writeSnapshot(p, sample(4));
  assert.equal((await readSnapshot(p))!.revision, 4);
});

test('a writer SIGKILLed while saving over and over never leaves a torn snapshot; readers meanwhile always see a whole one', async () => {
  const p = file();
  await writeSnapshot(p, sample(1));
  const mod = pathToFileURL(join(ROOT, 'src/config/stores/snapshot.ts')).href;
  const code = `
    const { writeSnapshot } = await import(${JSON.stringify(mod)});
    for (let i = 2; ; i++) {
      await writeSnapshot(process.env.SNAP, { revision: i, at: new Date().toISOString(), actor: 'loop', action: 'w', document: { pad: 'x'.repeat(50000 + (i % 13) * 7919), i } });
      if (i === 5) console.log('going');
    }
  `;
  const c = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SNAP: p } });
  const exited = new Promise<NodeJS.Signals | null>((r) => c.once('exit', (_code, signal) => r(signal)));
  try {
    await new Promise<void>((r) => c.stdout!.once('data', () => r()));
    let reads = 0;
    let last = 0;
    const end = Date.now() + 400;
    while (Date.now() < end) {
      const s = await readSnapshot(p);
      assert.ok(s, 'every read finds a whole snapshot');
      assert.ok(s.revision >= last, 'never goes back');
      assert.equal(s.document['i'], s.revision);
      last = s.revision;
      reads++;
    }
    assert.ok(reads > 10 && last > 5, `${reads} reads, last revision ${last}`);
  } finally {
    c.kill('SIGKILL');
  }
  assert.equal(await exited, 'SIGKILL');
  const s = await readSnapshot(p);
  assert.ok(s && s.revision >= 5, 'the last complete save survives the kill');
  // A temp file of the killed writer may remain beside it: never read, and swept by the next load().
  for (const f of readdirSync(dirname(p))) assert.ok(f === 'snapshot.json' || /^\.snapshot\.json\.\d+\.[0-9a-f]+\.tmp$/.test(f), f);
  writeFileSync(join(dirname(p), `.snapshot.json.${c.pid}.deadbeef.tmp`), '{"format":"turnpike-config-snap'); // the writer is gone
  writeFileSync(join(dirname(p), `.snapshot.json.${process.pid}.cafe.tmp`), '{'); // this process: not touched
  assert.equal((await new ConfigSnapshot(p).load())!.revision, s!.revision);
  assert.deepEqual(readdirSync(dirname(p)).sort(), [`.snapshot.json.${process.pid}.cafe.tmp`, 'snapshot.json']);
});

test('ConfigSnapshot: saves in call order, skips the one already on disk, never rejects, load() reads it back', async () => {
  const p = file();
  const { log, warnings } = logger();
  const snap = new ConfigSnapshot(p, log);
  assert.equal(await snap.load(), null);
  await Promise.all([snap.save(sample(1)), snap.save(sample(2)), snap.save(sample(3))]);
  assert.equal((await readSnapshot(p))!.revision, 3, 'the last call wins');
  const before = statSync(p).mtimeMs;
  await new Promise((r) => setTimeout(r, 20));
  await snap.save(sample(3));
  assert.equal(statSync(p).mtimeMs, before, 'the same revision is not written again');
  assert.equal((await new ConfigSnapshot(p).load())!.revision, 3);
  // A store that was reset (revision numbers start again) is still saved.
  await snap.save({ ...sample(1), at: '2026-11-27T00:00:00.000Z' });
  assert.equal((await readSnapshot(p))!.revision, 1);
  // A directory that cannot be written: logged, not thrown.
  writeFileSync(join(work, 'not-a-dir'), 'x');
  const bad = new ConfigSnapshot(join(work, 'not-a-dir', 'snapshot.json'), log);
  await bad.save(sample(9));
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /cannot write the config snapshot/);
});
