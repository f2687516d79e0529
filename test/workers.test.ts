/** workers: N — one listener shared by N processes, one truth for health, replacement of dead workers, drains, rolling restarts. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, request, sleep, startCli, startUpstream, waitFor } from './helpers.js';

const fresh = { connection: 'close' }; // a new connection per request: the cluster spreads them over the workers

async function status(admin: number) {
  return JSON.parse((await request(`http://127.0.0.1:${admin}/status`)).body) as { workers: { pid: number; state: string }[]; revision: number };
}

async function waitWorkers(admin: number, n: number, ms = 20_000) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const s = await status(admin);
      if (s.workers.filter((w) => w.state === 'listening').length === n && s.workers.length === n) return s;
    } catch { /* starting */ }
    if (Date.now() > end) throw new Error(`never saw ${n} listening workers`);
    await sleep(50);
  }
}

function config(dir: string, text: string): string {
  const file = join(dir, 'c.yaml');
  writeFileSync(file, text);
  return file;
}

test('workers: 2 — both serve; a passive ejection seen by one worker applies to both', async () => {
  const live = await startUpstream((_q, res) => res.end('live'));
  const dead = await freePort();
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-workers-'));
  const file = config(dir, `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: 2\nservices:
  - name: s
    upstream:
      targets: [{url: "http://127.0.0.1:${dead}"}, {url: ${live.url}}]
      healthcheck: {passive: {failures: 1, ejection: 60s}}
    routes: [{paths: [/]}]
`);
  const run = startCli(['start', '--config', file], {});
  try {
    const s = await waitWorkers(a, 2);
    assert.equal(new Set(s.workers.map((w) => w.pid)).size, 2);
    const codes: number[] = [];
    for (let i = 0; i < 40; i++) codes.push((await request(`http://127.0.0.1:${p}/x`, { headers: fresh })).status);
    // One failure anywhere ejects the dead target everywhere: exactly one 502 in total
    // (per-worker health would give one per worker).
    assert.equal(codes.filter((c) => c === 502).length, 1, codes.join(','));
    assert.equal(codes.filter((c) => c === 200).length, 39);
    const health = JSON.parse((await request(`http://127.0.0.1:${a}/health`)).body);
    assert.equal(health.targets[`s|http://127.0.0.1:${dead}`].down, true);
    assert.equal(health.targets[`s|${live.url}`].down, false);
  } finally {
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
    await live.close();
  }
});

test('a killed worker is replaced while the other keeps serving; SIGTERM drains every worker', async () => {
  const up = await startUpstream((req, res) => {
    const m = /^\/slow\/(\d+)/.exec(req.url!);
    setTimeout(() => res.end('ok'), m ? Number(m[1]) : 0);
  });
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-workers-'));
  const file = config(dir, `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: 2\nservices:\n  - name: s\n    url: ${up.url}\n    routes: [{paths: [/]}]\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    const before = await waitWorkers(a, 2);
    const victim = before.workers[0]!.pid;
    process.kill(victim, 'SIGKILL');
    await sleep(50);
    // The listener never went away: every request in the gap is served by the survivor.
    for (let i = 0; i < 20; i++) assert.equal((await request(`http://127.0.0.1:${p}/x`, { headers: fresh })).status, 200);
    const after = await waitWorkers(a, 2);
    assert.ok(!after.workers.some((w) => w.pid === victim), 'the dead worker was replaced');
    assert.match(run.stderr(), /worker died; starting a replacement/);

    // In-flight requests on both workers finish during the drain.
    const slow = Array.from({ length: 4 }, () => request(`http://127.0.0.1:${p}/slow/600`, { headers: fresh }));
    await sleep(200);
    run.child.kill('SIGTERM');
    for (const r of await Promise.all(slow)) assert.equal(r.status, 200);
    assert.equal(await run.exit, 0, run.stderr());
    await assert.rejects(request(`http://127.0.0.1:${p}/x`));
  } finally {
    run.child.kill('SIGKILL');
    await up.close();
  }
});

test('SIGUSR2 rolling restart and config changes under load lose nothing', async () => {
  const up = await startUpstream((_q, res) => setTimeout(() => res.end('ok'), 5));
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-workers-'));
  const cfg = (extra: string) => `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: 2\nservices:\n  - name: s\n    url: ${up.url}\n    routes: [{paths: [/]}${extra}]\n`;
  const file = config(dir, cfg(''));
  const run = startCli(['start', '--config', file], {});
  let stop = false; // also set when an assertion fails: the load loops must end with the test
  try {
    const before = await waitWorkers(a, 2);
    const results: (number | string)[] = [];
    const loop = async () => {
      while (!stop) results.push(await request(`http://127.0.0.1:${p}/x`, { headers: fresh }).then((r) => r.status, (e: Error) => e.message));
    };
    const loops = [loop(), loop(), loop(), loop()];
    await sleep(200);
    run.child.kill('SIGUSR2');
    await sleep(50);
    run.child.kill('SIGUSR2'); // joins the restart under way: still 2 workers at the end
    // New workers up, old ones gone (generous bounds: CI runs the test files in parallel on 2 CPUs).
    const end = Date.now() + 30_000;
    for (;;) {
      const s = await status(a);
      if (s.workers.length === 2 && s.workers.every((w) => w.state === 'listening' && !before.workers.some((b) => b.pid === w.pid))) break;
      assert.ok(Date.now() < end, 'rolling restart did not finish');
      await sleep(50);
    }
    await sleep(300);
    assert.equal((await status(a)).workers.length, 2);
    // A config change through the file watcher reaches every worker.
    writeFileSync(file, cfg(', {paths: [/added]}'));
    for (let i = 0; i < 300 && (await status(a)).revision !== 2; i++) await sleep(30);
    assert.equal((await status(a)).revision, 2);
    await sleep(200);
    stop = true;
    await Promise.all(loops);
    const failed = results.filter((r) => r !== 200);
    assert.ok(results.length > 100, `only ${results.length} requests`);
    assert.deepEqual(failed, [], `${failed.length} of ${results.length} failed`);
  } finally {
    stop = true;
    run.child.kill('SIGTERM');
    await run.exit;
    await up.close();
  }
});

test('workers: 2 with the cache plugin — a POST on one worker invalidates the other\'s copy; DELETE /cache purges every worker', async () => {
  let calls = 0;
  const up = await startUpstream((req, res) => {
    if (req.method === 'GET') calls++;
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=300' }).end(`v${calls}`);
  });
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-workers-'));
  const file = config(dir, `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: 2\nservices:
  - name: s
    url: ${up.url}
    plugins: [{name: cache}]
    routes: [{paths: [/]}]
`);
  const run = startCli(['start', '--config', file], {});
  const gets = async (n: number) => {
    for (let i = 0; i < n; i++) assert.equal((await request(`http://127.0.0.1:${p}/doc`, { headers: fresh })).status, 200);
  };
  try {
    await waitWorkers(a, 2);
    await gets(8);
    assert.equal(calls, 2, 'one miss per worker (the connections alternate between them)');
    // One POST reaches one worker; its invalidation reaches the other's memory cache too.
    assert.equal((await request(`http://127.0.0.1:${p}/doc`, { method: 'POST', headers: fresh, body: 'x' })).status, 200);
    await gets(8);
    assert.equal(calls, 4, 'after the invalidation both workers missed once more');
    const purge = await request(`http://127.0.0.1:${a}/cache`, { method: 'DELETE' });
    assert.equal(purge.status, 200);
    assert.equal(JSON.parse(purge.body).purged, 2);
    await gets(8);
    assert.equal(calls, 6, 'after the purge both workers missed once more');
  } finally {
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
    await up.close();
  }
});

test('workers: 2 with rate-limit — a concurrent burst over both workers is allowed exactly the limit (counters batched over IPC)', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-workers-'));
  const file = config(dir, `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: 2\nservices:
  - name: s
    url: ${up.url}
    routes: [{paths: [/], plugins: [{name: rate-limit, config: {limit: 25, window: 1h}}]}]
`);
  const run = startCli(['start', '--config', file], {});
  try {
    await waitWorkers(a, 2);
    // 80 requests at once on fresh connections: both workers decide many per turn of their loop.
    const statuses = await Promise.all(Array.from({ length: 80 }, () => request(`http://127.0.0.1:${p}/`, { headers: fresh }).then((r) => r.status)));
    assert.equal(statuses.filter((s) => s === 200).length, 25, `exactly the limit allowed: ${statuses.join(',')}`);
    assert.equal(statuses.filter((s) => s === 429).length, 55);
  } finally {
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
    await up.close();
  }
});

test('workers: 2 over TLS — a session ticket from one worker resumes on the other (one ticket key per node, not per worker)', async () => {
  const { makeCa } = await import('./certs.js');
  const { connect } = await import('node:tls');
  const ca = makeCa();
  const pem = ca.issue('localhost', { dns: ['localhost'] });
  const up = await startUpstream((_q, res) => res.end('ok'));
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-workers-'));
  const file = config(dir, `listen_tls: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: 2\ntls:\n  certificates: [{hosts: [localhost], cert: ${pem.certFile}, key: ${pem.keyFile}}]\nservices:\n  - name: s\n    url: ${up.url}\n    routes: [{paths: [/]}]\n`);
  const run = startCli(['start', '--config', file], {});
  /** One TLS connection (resuming `session` when given): whether it was resumed, and the ticket it got. */
  const handshake = (session?: Buffer) => new Promise<{ reused: boolean; session: Buffer | undefined }>((resolve, reject) => {
    let ticket: Buffer | undefined;
    let reused = false;
    const s = connect({ host: '127.0.0.1', port: p, servername: 'localhost', ca: ca.cert, ...(session ? { session } : {}) });
    s.on('session', (t: Buffer) => { ticket ??= t; });
    s.on('error', reject);
    s.once('secureConnect', () => {
      reused = s.isSessionReused();
      // (TLS 1.3 tickets come after the handshake: one request's answer is past them)
      s.write('GET /x HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n');
    });
    s.on('data', () => {});
    s.on('close', () => resolve({ reused, session: ticket }));
  });
  try {
    await waitWorkers(a, 2);
    const first = await handshake();
    assert.ok(first.session, 'no session ticket was issued');
    const reused: boolean[] = [];
    // Round robin over the two workers: half of these land on the other one.
    for (let i = 0; i < 8; i++) reused.push((await handshake(first.session)).reused);
    assert.deepEqual(reused, Array(8).fill(true), `resumed: ${reused.join(',')}`);
  } finally {
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
    await up.close();
    ca.cleanup();
  }
});
