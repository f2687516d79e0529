/**
 * The CLI's start-up and stop windows: /status while workers start and drain, signals and
 * config edits that arrive before the gateway is up, a worker's bind error at start.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { children, eventually, fakeRedis, freePort, request, sleep, startCli, startUpstream } from './helpers.js';

const TOKEN = 'lifecycle-test-token-0123456789';
const authed = { authorization: `Bearer ${TOKEN}` };
const fresh = { connection: 'close' };

function config(text: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'turnpike-wl-')), 'c.yaml');
  writeFileSync(file, text);
  return file;
}

/** /status as anyone (just its status) and with the token (the whole report). */
async function statusBoth(admin: number) {
  const anon = await request(`http://127.0.0.1:${admin}/status`);
  const full = await request(`http://127.0.0.1:${admin}/status`, { headers: authed });
  return { anon: { code: anon.status, body: JSON.parse(anon.body) as Record<string, unknown> }, full: { code: full.status, body: JSON.parse(full.body) as Record<string, unknown> } };
}

/** Waits until the admin listener answers /status 503 "starting" (the primary is up, its workers are not). */
async function waitStarting(admin: number, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const r = await request(`http://127.0.0.1:${admin}/status`).catch(() => null);
    if (r) {
      assert.equal(r.status, 503, `the admin listener came up already ready: ${r.body}`);
      return;
    }
    assert.ok(Date.now() < end, 'the admin listener never came up');
    await sleep(20);
  }
}

test('workers: 2 — /status is 503 "starting" until a worker accepts on the proxy port, and 503 "draining" as soon as SIGTERM arrives', async () => {
  const up = await startUpstream((req, res) => {
    const m = /^\/slow\/(\d+)/.exec(req.url!);
    setTimeout(() => res.end('ok'), m ? Number(m[1]) : 0);
  });
  const [p, a] = [await freePort(), await freePort()];
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}, token: ${TOKEN}}\nworkers: 2\nservices:\n  - name: s\n    url: ${up.url}\n    routes: [{paths: [/]}]\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    // Every answer from the admin listener's start on: 503 "starting" while the proxy port
    // refuses; the first 200 finds it accepting.
    let starting = 0;
    const end = Date.now() + 20_000;
    for (;;) {
      assert.ok(Date.now() < end, `never ready\n${run.stderr()}`);
      const s = await statusBoth(a).catch(() => null);
      if (s === null) {
        await sleep(20);
        continue;
      }
      if (s.anon.code === 503) {
        assert.deepEqual(s.anon.body, { status: 'starting' });
        // (a worker may start listening between the two requests: then the second says 200)
        if (s.full.code === 503) {
          assert.equal(s.full.body.status, 'starting');
          assert.ok(Array.isArray(s.full.body.workers));
        } else assert.equal(s.full.code, 200);
        // Liveness is not readiness: alive while the workers start (no token needed either).
        const live = await request(`http://127.0.0.1:${a}/status/live`);
        assert.equal(live.status, 200);
        assert.ok([JSON.stringify({ status: 'ok', phase: 'starting' }), JSON.stringify({ status: 'ok' })].includes(live.body), live.body);
        starting++;
        await sleep(20);
        continue;
      }
      assert.equal(s.anon.code, 200);
      assert.deepEqual(s.anon.body, { status: 'ok' });
      const r = await request(`http://127.0.0.1:${p}/x`, { headers: fresh }).catch((e: Error) => e.message);
      assert.equal(typeof r === 'string' ? r : r.status, 200, '/status said ok: the proxy port accepts');
      break;
    }
    assert.ok(starting > 0, 'the admin listener answered before the workers listened');
    assert.equal((await statusBoth(a)).full.body.status, 'ok');

    // (start-up over: both workers listen, the banner is out)
    await eventually(() => / proxy on http:\/\//.test(run.stderr()), 20_000, 20);
    // A request in flight on a worker when SIGTERM comes: the drain lasts at least as long.
    let slowDone = false;
    const slow = request(`http://127.0.0.1:${p}/slow/1500`, { headers: fresh }).then((r) => r.status, (e: Error) => e.message).finally(() => (slowDone = true));
    await eventually(() => up.requests.some((r) => r.url === '/slow/1500'), 5000, 10);
    run.child.kill('SIGTERM');
    await eventually(async () => (await statusBoth(a)).anon.code === 503, 800, 20);
    assert.ok(!slowDone, 'still draining');
    const s = await statusBoth(a);
    assert.deepEqual(s.anon, { code: 503, body: { status: 'draining' } });
    assert.equal(s.full.code, 503);
    assert.equal(s.full.body.status, 'draining');
    assert.equal(await slow, 200);
    assert.equal(await run.exit, 0, run.stderr());
  } finally {
    run.child.kill('SIGKILL');
    await up.close();
  }
});

test('workers: 2 with the proxy port taken — exit 1, and stderr names the bind error (not just "a worker exited")', async () => {
  const taken = createNetServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
  const p = (taken.address() as AddressInfo).port;
  const file = config(`listen: 127.0.0.1:${p}\nworkers: 2\nservices:\n  - name: s\n    url: http://127.0.0.1:9\n    routes: [{paths: [/]}]\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    assert.equal(await run.exit, 1, run.stderr());
    const plain = run.stderr().split('\n').filter((l) => !l.startsWith('{'));
    assert.ok(plain.includes(`turnpike: cannot start: listen (line 1): cannot listen on 127.0.0.1:${p}: address already in use (EADDRINUSE: another process listens on it)`), run.stderr());
    assert.doesNotMatch(run.stderr(), /starting a replacement/);
  } finally {
    run.child.kill('SIGKILL');
    await new Promise((r) => taken.close(r));
  }
});

test('workers: 2 — SIGTERM while the workers are still starting is kept: the drain runs once they listen, exit 0', async () => {
  const [p, a, d] = [await freePort(), await freePort(), await freePort()];
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\ndemo: {listen: 127.0.0.1:${d}}\nworkers: 2\nservices:\n  - name: s\n    url: http://127.0.0.1:${d}\n    routes: [{paths: [/]}]\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await waitStarting(a);
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
    assert.match(run.stderr(), /stop asked while starting/);
    assert.match(run.stderr(), /"msg":"draining"/);
    await assert.rejects(request(`http://127.0.0.1:${p}/x`));
  } finally {
    run.child.kill('SIGKILL');
  }
});

/**
 * A loopback stand-in for Redis: answers INFO (ready) and +OK to everything else on the
 * connections `answer(n)` picks (n counts from 1), and never answers the others.
 */
test('workers: 2 — SIGTERM while one worker serves and the other still starts: a request in flight (to the demo upstream in the primary) finishes, exit 0', async () => {
  // The primary's connection and the first worker's are answered; the second worker waits
  // (up to 1 s) for its Redis: a window where one worker serves and the start is not over.
  const redis = await fakeRedis((n) => n <= 2);
  const [p, a, d] = [await freePort(), await freePort(), await freePort()];
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\ndemo: {listen: 127.0.0.1:${d}}\nredis: {url: "redis://127.0.0.1:${redis.port}"}\nworkers: 2\nservices:\n  - name: s\n    url: http://127.0.0.1:${d}\n    routes: [{paths: [/]}]\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await eventually(async () => {
      const s = JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body) as { workers: { state: string }[] };
      return s.workers.filter((w) => w.state === 'listening').length === 1;
    }, 20_000, 10);
    assert.doesNotMatch(run.stderr(), / proxy on http:\/\//, 'still starting');
    const slow = request(`http://127.0.0.1:${p}/delay/1000`, { headers: fresh }).then((r) => r.status, (e: Error) => e.message);
    await sleep(150);
    run.child.kill('SIGTERM');
    assert.equal(await slow, 200);
    assert.equal(await run.exit, 0, run.stderr());
    assert.match(run.stderr(), /stop asked while starting/);
  } finally {
    run.child.kill('SIGKILL');
    await redis.close();
  }
});

test('single process — SIGINT while the gateway starts (waiting for Redis) is kept: the drain runs once it listens, exit 0', async () => {
  // A "Redis" that never answers: the start waits for it (up to 1 s); its first connection
  // says the start is under way.
  const redis = await fakeRedis(() => false);
  const [p, a] = [await freePort(), await freePort()];
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nredis: {url: "redis://127.0.0.1:${redis.port}"}\nservices:\n  - name: s\n    url: http://127.0.0.1:9\n    routes: [{paths: [/]}]\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await eventually(() => redis.sockets.length > 0, 20_000, 5);
    run.child.kill('SIGINT');
    assert.equal(await run.exit, 0, run.stderr());
    assert.match(run.stderr(), /stop asked while starting/);
    assert.match(run.stderr(), /proxy listener up/);
    assert.match(run.stderr(), /"msg":"stopped"/);
  } finally {
    run.child.kill('SIGKILL');
    await redis.close();
  }
});

test('workers: 2 — a config edit made while the gateway starts is reloaded once it is up', async () => {
  const [p, a, d] = [await freePort(), await freePort(), await freePort()];
  const cfg = (path: string) => `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\ndemo: {listen: 127.0.0.1:${d}}\nworkers: 2\nservices:\n  - name: s\n    url: http://127.0.0.1:${d}\n    routes: [{paths: [${path}]}]\n`;
  const file = config(cfg('/one'));
  const run = startCli(['start', '--config', file], {});
  try {
    await waitStarting(a);
    writeFileSync(file, cfg('/two'));
    await eventually(async () => (await request(`http://127.0.0.1:${a}/status`)).status === 200, 20_000, 20);
    await eventually(async () => JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).revision === 2, 4000, 50);
    await eventually(async () => (await request(`http://127.0.0.1:${p}/two`, { headers: fresh })).status === 200, 4000, 50);
    assert.equal((await request(`http://127.0.0.1:${p}/one`, { headers: fresh })).status, 404);
    await sleep(500);
    assert.equal(JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).revision, 2, 'one reload');
  } finally {
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
  }
});

test('workers: 2 — SIGINT to the whole process group (Ctrl-C) as the workers are forked: kept, the drain runs once they listen, exit 0', async () => {
  // The signal reaches the workers while Node boots them (before any of their code runs):
  // they end, and the primary starts new ones instead of failing the start.
  const [p, a] = [await freePort(), await freePort()];
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: 2\nservices: []\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    const end = Date.now() + 20_000;
    while (children(run.child.pid!).length < 2) {
      assert.ok(Date.now() < end, `the workers were never forked: ${run.stderr()}`);
      await sleep(2);
    }
    process.kill(-run.child.pid!, 'SIGINT');
    assert.equal(await run.exit, 0, run.stderr());
    assert.match(run.stderr(), /stop asked while starting/);
    assert.match(run.stderr(), /"msg":"draining"/);
    assert.doesNotMatch(run.stderr(), /cannot start/);
  } finally {
    run.child.kill('SIGKILL');
  }
});

test('workers: 2 — group signals while the workers load their modules (HUP, USR1, USR2, then INT): none ends a worker; the drain runs once they listen, exit 0', async () => {
  // A module hook holds each worker's import of the gateway for 1.5 s (a slow disk, a busy
  // node) and says when it does: the signals come then, after the worker's first line ran.
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-wl-hook-'));
  writeFileSync(join(dir, 'hooks.mjs'), `import { writeFileSync } from 'node:fs';
let data;
export function initialize(d) { data = d; }
export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  if (r.url.endsWith('/dist/cli/main.js')) {
    writeFileSync(data.dir + '/loading-' + data.pid, '');
    await new Promise((done) => setTimeout(done, 1500));
  }
  return r;
}
`);
  writeFileSync(join(dir, 'register.mjs'), `import { register } from 'node:module';
if (process.env.TURNPIKE_WORKER === '1') register('./hooks.mjs', import.meta.url, { data: { dir: ${JSON.stringify(dir)}, pid: process.pid } });
`);
  const [p, a] = [await freePort(), await freePort()];
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: 2\nservices: []\n`);
  const run = startCli(['start', '--config', file], { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(join(dir, 'register.mjs')).href}` });
  try {
    await eventually(() => readdirSync(dir).filter((f) => f.startsWith('loading-')).length === 2, 20_000, 5);
    for (const signal of ['SIGHUP', 'SIGUSR1', 'SIGUSR2', 'SIGINT'] as const) {
      process.kill(-run.child.pid!, signal);
      await sleep(50);
    }
    assert.equal(await run.exit, 0, run.stderr());
    assert.match(run.stderr(), /stop asked while starting/);
    assert.match(run.stderr(), /"msg":"draining"/);
    assert.doesNotMatch(run.stderr(), /starting a replacement|cannot start/);
  } finally {
    run.child.kill('SIGKILL');
  }
});

test('workers: 2 — group signals while the workers start the gateway, and SIGUSR2 to the group once it serves: no worker ends by one; SIGTERM to the group drains, exit 0', async () => {
  // The workers wait (up to 1 s) for a Redis that never answers them: they are in runWorker.
  const redis = await fakeRedis((n) => n === 1);
  const [p, a] = [await freePort(), await freePort()];
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nredis: {url: "redis://127.0.0.1:${redis.port}"}\nworkers: 2\nservices: []\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await eventually(() => redis.sockets.length >= 3, 20_000, 5);
    for (const signal of ['SIGHUP', 'SIGUSR1', 'SIGUSR2'] as const) process.kill(-run.child.pid!, signal);
    await eventually(() => / proxy on http:\/\//.test(run.stderr()), 20_000, 20);
    const first = children(run.child.pid!);
    assert.equal(first.length, 2);
    process.kill(-run.child.pid!, 'SIGUSR2');
    await eventually(() => /rolling restart done/.test(run.stderr()), 20_000, 20);
    process.kill(-run.child.pid!, 'SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
    assert.doesNotMatch(run.stderr(), /worker died|starting a replacement|cannot start/);
  } finally {
    run.child.kill('SIGKILL');
    await redis.close();
  }
});
