/**
 * The CLI's start-up and stop windows: /status while workers start and drain, signals and
 * config edits that arrive before the gateway is up, a worker's bind error at start.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { eventually, freePort, request, sleep, startCli, startUpstream } from './helpers.js';

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
        assert.equal(s.full.code, 503);
        assert.equal(s.full.body.status, 'starting');
        assert.ok(Array.isArray(s.full.body.workers));
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
    assert.ok(plain.includes(`turnpike: cannot start: listen EADDRINUSE: address already in use 127.0.0.1:${p}`), run.stderr());
    assert.doesNotMatch(run.stderr(), /starting a replacement/);
  } finally {
    run.child.kill('SIGKILL');
    await new Promise((r) => taken.close(r));
  }
});
