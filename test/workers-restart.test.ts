/**
 * `workers: N` restarts and stops that overlap: a stop or a reload right after SIGUSR2, a
 * worker that dies while the others still start. (Apart from workers-lifecycle.test.ts, whose
 * tests already fill its time bound.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { children, eventually, fakeRedis, freePort, startCli } from './helpers.js';
import { makeCa } from './certs.js';

function config(text: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'turnpike-wr-')), 'c.yaml');
  writeFileSync(file, text);
  return file;
}

test('workers: 2 — SIGTERM right after SIGUSR2 (the new worker still loads its modules): its "stop" is not lost, the stop does not wait for the kill of a worker that never drains', async () => {
  const [p, a] = [await freePort(), await freePort()];
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: 2\ntimeouts: {drain: 8s}\nservices: []\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await eventually(() => / proxy on http:\/\//.test(run.stderr()), 20_000, 20);
    // (the fresh worker is forked at once; its 'stop' comes before it listens for messages)
    process.kill(run.child.pid!, 'SIGUSR2');
    process.kill(run.child.pid!, 'SIGTERM');
    const t0 = Date.now();
    assert.equal(await run.exit, 0, run.stderr());
    // Lost, the worker would start, serve and be SIGKILLed after drain + 5 s (13 s).
    const took = Date.now() - t0;
    assert.ok(took < 9_000, `the stop took ${took} ms\n${run.stderr()}`);
  } finally {
    run.child.kill('SIGKILL');
  }
});

test('workers: 2 — a reload (same worker count) during a rolling restart: it neither retires the new worker (the restart failed) nor says the count changed', async () => {
  // (the new worker waits 1 s for a Redis that never answers it: the reload lands before it listens)
  const redis = await fakeRedis((n) => n <= 3);
  const [p, a] = [await freePort(), await freePort()];
  const text = (v: string) => `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nredis: {url: "redis://127.0.0.1:${redis.port}"}\nworkers: 2\nwatch: false\nservices: []\n${v}`;
  const file = config(text(''));
  const run = startCli(['start', '--config', file], {});
  try {
    await eventually(() => / proxy on http:\/\//.test(run.stderr()), 20_000, 20);
    writeFileSync(file, text('timeouts: {drain: 9s}\n'));
    process.kill(run.child.pid!, 'SIGUSR2');
    process.kill(run.child.pid!, 'SIGHUP');
    await eventually(() => /rolling restart (done|failed)/.test(run.stderr()), 20_000, 20);
    assert.match(run.stderr(), /rolling restart done/);
    // (the reload is not held 5 s by the new worker, whose 'hello' brought it the newest config;
    // the process log is written asynchronously: the line may come a little later)
    await eventually(() => /"msg":"reload applied"/.test(run.stderr()), 6000, 20);
    const log = run.stderr();
    assert.ok(log.indexOf('"msg":"reload applied"') < log.indexOf('rolling restart done'), 'the reload was applied before the restart ended, not 5 s after it was sent');
    assert.doesNotMatch(run.stderr(), /worker count changed/);
    assert.equal(children(run.child.pid!).length, 2);
    process.kill(run.child.pid!, 'SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
  } finally {
    run.child.kill('SIGKILL');
    await redis.close();
  }
});

test('workers: 2 — a worker that dies after it listens while the other still starts is replaced (the start does not end with one worker for good)', async () => {
  // (the primary's Redis connection and the first worker's are answered; the second worker waits 1 s)
  const redis = await fakeRedis((n) => n <= 2);
  const [p, a] = [await freePort(), await freePort()];
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nredis: {url: "redis://127.0.0.1:${redis.port}"}\nworkers: 2\nservices: []\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await eventually(() => /"worker":\d+,[^\n]*"msg":"proxy listener up"/.test(run.stderr()), 20_000, 5);
    // (the worker logs that line, then tells the primary: killed in between, it had not listened
    // as far as the primary knows, and the start fails by design; the other worker waits 1 s)
    await new Promise((r) => setTimeout(r, 150));
    assert.doesNotMatch(run.stderr(), / proxy on http:\/\//, 'both workers listened already: the test missed its window');
    const id = Number(/"worker":(\d+),[^\n]*"msg":"proxy listener up"/.exec(run.stderr())![1]);
    // (cluster ids follow the fork order, and so do the pids)
    const pids = children(run.child.pid!).sort((x, y) => x - y);
    assert.equal(pids.length, 2);
    process.kill(pids[id - 1]!, 'SIGKILL');
    await eventually(() => / proxy on http:\/\//.test(run.stderr()), 20_000, 20).catch((err: Error) => assert.fail(`${err.message}\n${run.stderr()}`));
    await eventually(() => /starting a replacement/.test(run.stderr()) && /"worker":3,[^\n]*"msg":"proxy listener up"/.test(run.stderr()), 20_000, 20)
      .catch((err: Error) => assert.fail(`${err.message}\n${run.stderr()}`));
    assert.equal(children(run.child.pid!).length, 2);
    process.kill(run.child.pid!, 'SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
  } finally {
    run.child.kill('SIGKILL');
    await redis.close();
  }
});

test('workers: 2 — a worker whose event loop is stuck (SIGSTOP) is killed after timeouts.worker_unresponsive and replaced; the other serves throughout', async () => {
  const [p, a] = [await freePort(), await freePort()];
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: 2\ntimeouts: {worker_unresponsive: 2s}\nservices: []\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await eventually(() => / proxy on http:\/\//.test(run.stderr()), 20_000, 20);
    const [stuck, other] = children(run.child.pid!);
    assert.ok(stuck && other);
    process.kill(stuck, 'SIGSTOP');
    // (2 s of silence, checked every second; a loaded machine gets some more)
    await eventually(() => /has not answered for timeouts.worker_unresponsive/.test(run.stderr()), 15_000, 50);
    await eventually(() => children(run.child.pid!).length === 2 && !children(run.child.pid!).includes(stuck), 20_000, 50);
    assert.ok(children(run.child.pid!).includes(other), 'the worker that answered is left alone');
    // (the replacement listens: /status names two listening workers)
    await eventually(async () => {
      const s = await fetch(`http://127.0.0.1:${a}/status`).then((r) => r.json()) as { workers?: { pid: number; state: string }[] };
      return s.workers?.filter((w) => w.state === 'listening').length === 2;
    }, 20_000, 100);
    for (let i = 0; i < 6; i++) assert.equal((await fetch(`http://127.0.0.1:${p}/nothing-here`)).status, 404);
    process.kill(run.child.pid!, 'SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
  } finally {
    run.child.kill('SIGKILL');
  }
});

test('workers: 2 — a worker whose reload fails (out of file descriptors: it cannot read the CA file the new config names) is replaced, not left serving the old config beside the other; /status shows it meanwhile; a successor that can never start is tried again after a doubling back-off', async () => {
  // (the primary's Redis connection and the first two workers' are answered: the successor waits
  // 1 s for its own, the time /status shows the failed worker)
  const redis = await fakeRedis((n) => n <= 3);
  const ca = makeCa('Upstream CA');
  const [p, a] = [await freePort(), await freePort()];
  const text = (tls: string) => `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nredis: {url: "redis://127.0.0.1:${redis.port}"}\nworkers: 2\nwatch: false\nservices:\n  - name: orders\n    url: https://127.0.0.1:9\n    routes: [{paths: [/o]}]\n${tls}`;
  const file = config(text(''));
  // (fd 3 of the primary, for the second part: the CA file, which its workers do not get)
  const fd = openSync(ca.certFile, 'r');
  const run = startCli(['start', '--config', file], { TURNPIKE_RENEW_RETRY_MS: '150' }, [fd]);
  closeSync(fd);
  type Status = { config_hash: string; workers: { pid: number; state: string; config_hash: string | null; reload_failed?: { error: string; successor_failures?: number; next_try_at?: string } }[] };
  const tries = () => run.stderr().split('\n').filter((l) => l.includes('could not start: it keeps serving'))
    .map((l) => JSON.parse(l) as { worker: number; retry_in_ms: number; successor_failures: number });
  const status = async () => (await fetch(`http://127.0.0.1:${a}/status`).then((r) => r.json())) as Status;
  try {
    await eventually(() => / proxy on http:\/\//.test(run.stderr()), 20_000, 20);
    const [broken, other] = children(run.child.pid!);
    assert.ok(broken && other);
    const before = await status();
    assert.ok(before.workers.every((w) => w.config_hash === before.config_hash), JSON.stringify(before));
    // This worker can open no file any more (as one at its fd limit under load).
    execFileSync('prlimit', ['--pid', String(broken), '--nofile=3:3']);
    writeFileSync(file, text(`    tls: {ca: "${ca.certFile}"}\n`));
    process.kill(run.child.pid!, 'SIGHUP');
    let seen: { worker: Status['workers'][number]; top: string } | null = null;
    await eventually(async () => {
      const s = await status();
      const w = s.workers.find((x) => x.reload_failed !== undefined);
      if (w) seen = { worker: w, top: s.config_hash };
      return seen !== null;
    }, 10_000, 25).catch((err: Error) => assert.fail(`${err.message}\n${run.stderr()}`));
    const { worker, top } = seen!;
    assert.equal(worker.pid, broken);
    assert.match(String(worker.reload_failed?.error), /EMFILE/);
    assert.notEqual(top, before.config_hash, 'the primary runs the new config');
    assert.equal(worker.config_hash, before.config_hash, 'the failed worker still runs the old one');
    // Replaced: its successor runs the new config, it is gone, the other worker is left alone.
    await eventually(async () => {
      const kids = children(run.child.pid!);
      if (kids.includes(broken) || kids.length !== 2) return false;
      const s = await status();
      return s.workers.length === 2 && s.workers.every((w) => w.state === 'listening' && w.config_hash === s.config_hash && w.reload_failed === undefined);
    }, 20_000, 100).catch((err: Error) => assert.fail(`${err.message}\n${run.stderr()}`));
    assert.ok(children(run.child.pid!).includes(other));
    assert.match(run.stderr(), /a worker on an old config was replaced/);

    // A config the primary reads and no worker can, old or new (its CA is the primary's fd 3; a
    // worker's fd 3 is its IPC channel): each worker is kept, and its successors, which cannot
    // start, are forked after a back-off that doubles (10 s up to 5 min; 150 ms here), not every
    // 10 s for ever; the log and /status say when the next one comes.
    const workers = children(run.child.pid!);
    writeFileSync(file, text(`    tls: {ca: "/proc/self/fd/3"}\n`));
    process.kill(run.child.pid!, 'SIGHUP');
    await eventually(() => workers.every((w) => tries().filter((t) => t.worker === w).length >= 2), 20_000, 25)
      .catch((err: Error) => assert.fail(`${err.message}\n${run.stderr()}`));
    for (const w of workers) {
      assert.deepEqual(tries().filter((t) => t.worker === w).slice(0, 2).map((t) => [t.successor_failures, t.retry_in_ms]), [[1, 150], [2, 300]]);
    }
    const s = await status();
    const shown = s.workers.find((w) => workers.includes(w.pid) && (w.reload_failed?.successor_failures ?? 0) >= 2);
    assert.ok(shown && Number.isFinite(Date.parse(String(shown.reload_failed!.next_try_at))), JSON.stringify(s.workers));
    assert.deepEqual(children(run.child.pid!).filter((c) => workers.includes(c)).sort(), [...workers].sort(), 'the workers on the old config serve on');
    // (a successor that could not start is its renewal's to retry, no crash to replace)
    assert.doesNotMatch(run.stderr(), /worker died/);
    process.kill(run.child.pid!, 'SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
  } finally {
    run.child.kill('SIGKILL');
    await redis.close();
    ca.cleanup();
  }
});

