/**
 * watchConfig: a change of the file is seen through the directory watch even while other files
 * of the directory (an access log beside the config) change all the time, and through a
 * Kubernetes ConfigMap's `..data` symlink swap.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { watchConfig } from './watch.js';

const work = mkdtempSync(join(tmpdir(), 'turnpike-watch-'));
after(() => rmSync(work, { recursive: true, force: true }));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitFor(seen: string[], n: number, ms: number): Promise<number> {
  const t0 = performance.now();
  while (seen.length < n && performance.now() - t0 < ms) await sleep(10);
  return performance.now() - t0;
}

test('watchConfig: a busy file beside the config (written every 20 ms) neither hides nor delays a change', async () => {
  const dir = join(work, 'busy');
  mkdirSync(dir);
  const file = join(dir, 'turnpike.yaml');
  const log = join(dir, 'access.log');
  writeFileSync(file, 'a: 1\n');
  const seen: string[] = [];
  // The poll is far off: only the directory watch can see the change in time.
  const w = watchConfig(file, 'a: 1\n', (t) => seen.push(t), { debounceMs: 100, pollMs: 60_000 });
  const writer = setInterval(() => appendFileSync(log, '{"status":200}\n'), 20);
  try {
    await sleep(300);
    assert.deepEqual(seen, [], 'another file changing is no change of the config');
    writeFileSync(file, 'a: 2\n');
    const took = await waitFor(seen, 1, 5000);
    assert.deepEqual(seen, ['a: 2\n'], 'the change is seen while the log is written');
    assert.ok(took < 2000, `seen after ${Math.round(took)} ms`);
  } finally {
    clearInterval(writer);
    w.close();
  }
});

test('watchConfig: a steady stream of events on the file itself postpones the check by at most about a second', async () => {
  const dir = join(work, 'stream');
  mkdirSync(dir);
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, 'a: 1\n');
  const seen: string[] = [];
  const w = watchConfig(file, 'a: 1\n', (t) => seen.push(t), { debounceMs: 100, pollMs: 60_000 });
  let n = 1;
  // Rewritten every 30 ms, faster than the debounce: a pure "wait for quiet" debounce never fires.
  const writer = setInterval(() => writeFileSync(file, `a: ${++n}\n`), 30);
  try {
    const took = await waitFor(seen, 1, 5000);
    assert.ok(seen.length >= 1, 'a change is reported while the file keeps changing');
    assert.ok(took < 2500, `first report after ${Math.round(took)} ms`);
  } finally {
    clearInterval(writer);
    w.close();
  }
});

test('watchConfig: a ConfigMap-style `..data` symlink swap is a change', async () => {
  const dir = join(work, 'configmap');
  mkdirSync(dir);
  mkdirSync(join(dir, '..v1'));
  writeFileSync(join(dir, '..v1', 'turnpike.yaml'), 'a: 1\n');
  symlinkSync('..v1', join(dir, '..data'));
  symlinkSync(join('..data', 'turnpike.yaml'), join(dir, 'turnpike.yaml'));
  const seen: string[] = [];
  const w = watchConfig(join(dir, 'turnpike.yaml'), 'a: 1\n', (t) => seen.push(t), { debounceMs: 50, pollMs: 60_000 });
  try {
    await sleep(100);
    // What the kubelet does: a new timestamped directory, a temp symlink to it, renamed over ..data.
    mkdirSync(join(dir, '..v2'));
    writeFileSync(join(dir, '..v2', 'turnpike.yaml'), 'a: 2\n');
    symlinkSync('..v2', join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    await waitFor(seen, 1, 3000);
    assert.deepEqual(seen, ['a: 2\n']);
  } finally {
    w.close();
  }
});

test('watchConfig checkNow: a change made before the watch began is reported once; an unchanged file is not', async () => {
  const dir = join(work, 'before');
  mkdirSync(dir);
  const file = join(dir, 'turnpike.yaml');
  writeFileSync(file, 'a: 2\n'); // edited while the caller was starting with 'a: 1'
  const seen: string[] = [];
  const w = watchConfig(file, 'a: 1\n', (t) => seen.push(t), { debounceMs: 50, pollMs: 60_000, checkNow: true });
  const same: string[] = [];
  const w2 = watchConfig(file, 'a: 2\n', (t) => same.push(t), { debounceMs: 50, pollMs: 60_000, checkNow: true });
  try {
    await waitFor(seen, 1, 2000);
    await sleep(200);
    assert.deepEqual(seen, ['a: 2\n']);
    assert.deepEqual(same, []);
  } finally {
    w.close();
    w2.close();
  }
});
