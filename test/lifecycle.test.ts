/** The CLI as users run it (bin/turnpike.js, built by `npm ci`): quickstart, /status, SIGHUP, SIGTERM drain. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync, readFileSync, mkdirSync, symlinkSync, renameSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import { spawn } from 'node:child_process';
import { connect, createServer as createNetServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { makeCa } from './certs.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually, freePort, request, sleep, startCli, waitFor } from './helpers.js';

test('quickstart: gateway and demo upstream from one command; /status; SIGTERM drains in-flight and exits 0', async () => {
  const [p, a, d] = [await freePort(), await freePort(), await freePort()];
  const run = startCli(['start', '--config', 'examples/quickstart.yaml'], {
    TURNPIKE_LISTEN: `127.0.0.1:${p}`, TURNPIKE_ADMIN_LISTEN: `127.0.0.1:${a}`, TURNPIKE_DEMO_LISTEN: `127.0.0.1:${d}`,
  });
  try {
    await waitFor(`http://127.0.0.1:${a}/status`);
    const status = JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body);
    assert.equal(status.status, 'ok');
    assert.equal(status.revision, 1);
    assert.match(status.config_hash, /^[0-9a-f]{16}$/);
    const r = await request(`http://127.0.0.1:${p}/echo/hello?x=1`);
    assert.equal(r.status, 200);
    const echoed = JSON.parse(r.body);
    assert.equal(echoed.service, 'turnpike-demo');
    assert.equal(echoed.path, '/hello');
    const user = await request(`http://127.0.0.1:${p}/users/42`);
    assert.equal(JSON.parse(user.body).path, '/users/42');

    // a slow request in flight when SIGTERM arrives still completes
    const slow = request(`http://127.0.0.1:${p}/echo/delay/700`);
    await sleep(150);
    run.child.kill('SIGTERM');
    const done = await slow;
    assert.equal(done.status, 200);
    assert.equal(JSON.parse(done.body).path, '/delay/700');
    assert.equal(await run.exit, 0, run.stderr());
    // and the listener is gone
    await assert.rejects(request(`http://127.0.0.1:${p}/echo/x`));
  } finally {
    run.child.kill('SIGKILL');
  }
});

test('drain is bounded: a request longer than timeouts.drain is cut and the process still exits 0', async () => {
  const [p, d] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-drain-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}\ndemo: {listen: 127.0.0.1:${d}}\ntimeouts: {drain: 300ms}\nservices:\n  - name: s\n    url: http://127.0.0.1:${d}\n    routes: [{paths: [/]}]\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await waitFor(`http://127.0.0.1:${p}/x`);
    const slow = request(`http://127.0.0.1:${p}/delay/5000`).then((r) => r.status, () => 'cut');
    await sleep(100);
    const t0 = Date.now();
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0);
    assert.ok(Date.now() - t0 < 2500, 'drain took too long');
    assert.equal(await slow, 'cut');
  } finally {
    run.child.kill('SIGKILL');
  }
});

test('SIGHUP reloads the file; a broken file is rejected and the running config stays', async () => {
  const [p, a, d] = [await freePort(), await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-reload-'));
  const file = join(dir, 'c.yaml');
  const cfg = (path: string) => `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\ndemo: {listen: 127.0.0.1:${d}}\nservices:\n  - name: s\n    url: http://127.0.0.1:${d}\n    routes: [{paths: [${path}]}]\n`;
  writeFileSync(file, cfg('/one'));
  const run = startCli(['start', '--config', file], {});
  try {
    // (20 s on a loaded machine; what the process said if it did not come up)
    await waitFor(`http://127.0.0.1:${a}/status`, 20_000).catch((e: Error) => { throw new Error(`${e.message}\n${run.stderr()}`); });
    assert.equal((await request(`http://127.0.0.1:${p}/one`)).status, 200);
    assert.equal((await request(`http://127.0.0.1:${p}/two`)).status, 404);
    writeFileSync(file, cfg('/two'));
    run.child.kill('SIGHUP');
    for (let i = 0; i < 100 && (await request(`http://127.0.0.1:${p}/two`)).status !== 200; i++) await sleep(30);
    assert.equal((await request(`http://127.0.0.1:${p}/two`)).status, 200);
    assert.equal((await request(`http://127.0.0.1:${p}/one`)).status, 404);
    assert.equal(JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).revision, 2);
    writeFileSync(file, cfg('/three') + '    bogus: 1\n');
    run.child.kill('SIGHUP');
    await sleep(300);
    assert.equal((await request(`http://127.0.0.1:${p}/two`)).status, 200);
    assert.equal(JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).revision, 2);
    assert.match(run.stderr(), /reload rejected/);
    assert.match(run.stderr(), /bogus/);
    // /status says it too (the log may be far away), until a reload is applied.
    const rejected = JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).config.reload_rejected;
    assert.match(rejected.trigger, /^(SIGHUP|file change)$/); // (the file watch may come first)
    assert.match(rejected.error, /services\[0\]\.bogus \(line 8\): unknown key "bogus"/);
    writeFileSync(file, cfg('/four'));
    run.child.kill('SIGHUP');
    await eventually(async () => (await request(`http://127.0.0.1:${p}/four`)).status === 200, 5000, 30);
    assert.equal(JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).config.reload_rejected, undefined);
  } finally {
    run.child.kill('SIGTERM');
    await run.exit;
  }
});

test('`watch` follows a reload: watch: false stops reloading on file changes (SIGHUP still does), watch: true starts again; workers changed says restart', async () => {
  const [p, a, d] = [await freePort(), await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-watch-'));
  const file = join(dir, 'c.yaml');
  const cfg = (path: string, watch: boolean, more = '') => `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\ndemo: {listen: 127.0.0.1:${d}}\nwatch: ${watch}\n${more}services:\n  - name: s\n    url: http://127.0.0.1:${d}\n    routes: [{paths: [${path}]}]\n`;
  const status = async (path: string) => (await request(`http://127.0.0.1:${p}${path}`)).status;
  writeFileSync(file, cfg('/one', true));
  const run = startCli(['start', '--config', file], {});
  try {
    await waitFor(`http://127.0.0.1:${a}/status`);
    writeFileSync(file, cfg('/two', false)); // the watch sees it, and stops
    await eventually(async () => (await status('/two')) === 200, 8000, 30);
    writeFileSync(file, cfg('/three', false));
    await sleep(2500); // (past the debounce and the 2 s poll)
    assert.equal(await status('/three'), 404, 'the file was followed after watch: false');
    assert.equal(await status('/two'), 200);
    writeFileSync(file, cfg('/four', true, 'workers: 1\n'));
    run.child.kill('SIGHUP');
    await eventually(async () => (await status('/four')) === 200, 8000, 30);
    // (the process log is written asynchronously: the line may follow the reload's effect)
    await eventually(() => /workers changed: restart to apply it/.test(run.stderr()), 5000, 30);
    writeFileSync(file, cfg('/five', true)); // followed again
    await eventually(async () => (await status('/five')) === 200, 8000, 30);
  } finally {
    run.child.kill('SIGTERM');
    await run.exit;
  }
});

test('a listener that cannot listen (its port taken) names its setting and line: "listen EADDRINUSE 127.0.0.1:N" alone did not say which of the listeners', async () => {
  const taken = createNetServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
  const port = (taken.address() as AddressInfo).port;
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-taken-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0\nstatus_listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:${port}\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    assert.equal(await run.exit, 1, run.stderr());
    assert.match(run.stderr(), new RegExp(`turnpike: cannot start: admin\\.listen \\(line 4\\): cannot listen on 127\\.0\\.0\\.1:${port}: address already in use \\(EADDRINUSE`));
  } finally {
    run.child.kill('SIGKILL');
    await new Promise((r) => taken.close(r));
  }
});

test('an emptied config file (truncated, or comments only) is rejected on reload: every route stays; start refuses it', async () => {
  const [p, a, d] = [await freePort(), await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-empty-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\ndemo: {listen: 127.0.0.1:${d}}\nservices:\n  - name: s\n    url: http://127.0.0.1:${d}\n    routes: [{paths: [/one]}]\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await waitFor(`http://127.0.0.1:${a}/status`);
    assert.equal((await request(`http://127.0.0.1:${p}/one`)).status, 200);
    // the file watcher sees the truncated file (an editor or script that writes the content later)
    writeFileSync(file, '');
    for (let i = 0; i < 100 && !/reload rejected/.test(run.stderr()); i++) await sleep(30);
    assert.match(run.stderr(), /reload rejected/);
    assert.match(run.stderr(), /is empty/);
    assert.equal((await request(`http://127.0.0.1:${p}/one`)).status, 200);
    const status = JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body);
    assert.equal(status.revision, 1);
    // and by SIGHUP, with comments only
    writeFileSync(file, '# all commented out\n# services: []\n');
    run.child.kill('SIGHUP');
    await sleep(500);
    assert.equal((await request(`http://127.0.0.1:${p}/one`)).status, 200);
    assert.equal(JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).revision, 1);
  } finally {
    run.child.kill('SIGTERM');
    await run.exit;
  }
  writeFileSync(file, '# nothing yet\n');
  const empty = startCli(['start', '--config', file], {});
  const timer = setTimeout(() => empty.child.kill('SIGKILL'), 10_000);
  assert.equal(await empty.exit, 1, empty.stderr());
  clearTimeout(timer);
  assert.match(empty.stderr(), /is empty/);
});

test('a config file saved as Latin-1 is rejected on reload (file watch and SIGHUP), naming its line: the running config stays', async () => {
  const [p, a, d] = [await freePort(), await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-latin1-'));
  const file = join(dir, 'c.yaml');
  const cfg = (path: string) => `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\ndemo: {listen: 127.0.0.1:${d}}\nservices:\n  - name: s\n    url: http://127.0.0.1:${d}\n    routes: [{paths: [${path}]}]\n`;
  writeFileSync(file, cfg('/one'));
  const run = startCli(['start', '--config', file], {});
  try {
    await waitFor(`http://127.0.0.1:${a}/status`);
    assert.equal((await request(`http://127.0.0.1:${p}/one`)).status, 200);
    // "# Café" in Latin-1 on line 8 (0xE9): before, read as U+FFFD and applied
    writeFileSync(file, Buffer.concat([Buffer.from(cfg('/two') + '# Caf'), Buffer.from([0xe9]), Buffer.from('\n')]));
    for (let i = 0; i < 100 && !/reload rejected/.test(run.stderr()); i++) await sleep(30);
    assert.match(run.stderr(), /reload rejected/);
    assert.match(run.stderr(), /line 8, column 6 is not valid UTF-8/);
    assert.equal((await request(`http://127.0.0.1:${p}/one`)).status, 200);
    assert.equal((await request(`http://127.0.0.1:${p}/two`)).status, 404);
    run.child.kill('SIGHUP');
    await sleep(500);
    assert.equal(run.stderr().match(/reload rejected/g)?.length, 2, run.stderr());
    assert.equal(JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).revision, 1);
    // saved again as UTF-8: applied
    writeFileSync(file, cfg('/two') + '# Café\n');
    await eventually(async () => (await request(`http://127.0.0.1:${p}/two`)).status === 200);
  } finally {
    run.child.kill('SIGTERM');
    await run.exit;
  }
});

test('start with an invalid config prints path and line and exits 1; --version works', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-bad-'));
  const file = join(dir, 'bad.yaml');
  writeFileSync(file, 'listen: 127.0.0.1:0\nservices:\n  - name: s\n    urll: http://x\n');
  const run = startCli(['start', '--config', file], {});
  assert.equal(await run.exit, 1);
  assert.match(run.stderr(), /services\[0\]\.urll \(line 4\): unknown key "urll"/);
  const v = startCli(['--version'], {});
  assert.equal(await v.exit, 0);
  assert.equal(v.stderr().trim(), JSON.parse(readFileSync('package.json', 'utf8')).version);
});

test('files the config refers to are watched: a rotated upstream CA (a Secret\'s ..data swap) and an edited OpenAPI document apply without a signal; SIGHUP reads them too', async () => {
  const [p, a, d] = [await freePort(), await freePort(), await freePort()];
  const [ca1, ca2] = [makeCa('Old CA'), makeCa('New CA')];
  const leaf = ca2.issue('upstream', { dns: ['127.0.0.1'] });
  const up = createHttpsServer({ key: leaf.key, cert: leaf.cert }, (_q, res) => res.end('tls ok'));
  await new Promise<void>((r) => up.listen(0, '127.0.0.1', r));
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-inputs-'));
  // A Secret volume: ca.pem -> ..data/ca.pem, ..data -> ..v1 (Kubernetes swaps ..data)
  const secret = join(dir, 'secret');
  mkdirSync(join(secret, '..v1'), { recursive: true });
  writeFileSync(join(secret, '..v1', 'ca.pem'), ca1.cert);
  symlinkSync('..v1', join(secret, '..data'));
  symlinkSync('..data/ca.pem', join(secret, 'ca.pem'));
  const spec = (paths: string[]) => `openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n${paths.map((x) => `  ${x}: {get: {responses: {'200': {description: ok}}}}\n`).join('')}`;
  writeFileSync(join(dir, 'api.yaml'), spec(['/api/a']));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}
admin: {listen: 127.0.0.1:${a}}
demo: {listen: 127.0.0.1:${d}}
services:
  - name: tls-up
    url: https://127.0.0.1:${(up.address() as AddressInfo).port}
    tls: {ca: secret/ca.pem}
    routes: [{name: t, paths: [/t]}]
  - name: plain
    url: http://127.0.0.1:${d}
    routes: [{name: api, paths: [/api], plugins: [{name: request-validator, config: {openapi: api.yaml}}]}]
`);
  const run = startCli(['start', '--config', file], {});
  const status = (path: string) => request(`http://127.0.0.1:${p}${path}`).then((r) => r.status);
  const until = async (what: string, cond: () => Promise<boolean>, ms = 8000) => {
    const end = Date.now() + ms;
    while (!(await cond())) {
      if (Date.now() > end) assert.fail(`${what}\n${run.stderr().slice(-2000)}`);
      await sleep(100);
    }
  };
  try {
    await waitFor(`http://127.0.0.1:${a}/status`);
    assert.equal(await status('/t'), 502, 'the upstream\'s CA is not the one given yet');
    assert.equal(await status('/api/a'), 200);
    assert.equal(await status('/api/b'), 404);
    // the Secret is updated the way kubelet does it: a new dir, then ..data renamed over
    mkdirSync(join(secret, '..v2'));
    writeFileSync(join(secret, '..v2', 'ca.pem'), ca2.cert);
    symlinkSync('..v2', join(secret, '..data_tmp'));
    renameSync(join(secret, '..data_tmp'), join(secret, '..data'));
    await until('the rotated CA applies without a signal', async () => (await status('/t')) === 200);
    // an edited OpenAPI document, with SIGHUP this time (the config text is the same)
    writeFileSync(join(dir, 'api.yaml'), spec(['/api/a', '/api/b']));
    run.child.kill('SIGHUP');
    await until('the edited OpenAPI document applies', async () => (await status('/api/b')) === 200, 3000);
    assert.match(run.stderr(), /referenced file change/);
    const revision = JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).revision as number;
    assert.ok(revision >= 3, `revision ${revision}`);
  } finally {
    run.child.kill('SIGTERM');
    await run.exit;
    up.close();
    ca1.cleanup();
    ca2.cleanup();
  }
});

test('started under npm (npx), a gateway whose npm parent is gone drains as on SIGTERM and frees its port (npm does not pass a SIGTERM to npx on)', async () => {
  const p = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-npx-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}\nservices: []\n`);
  // npx runs `sh -c turnpike ...` under npm; here a shell stands for npm and is killed as npx is
  const sh = spawn('sh', ['-c', `node bin/turnpike.js start --config ${file} & wait`], { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, npm_command: 'exec', TURNPIKE_LOG_LEVEL: 'info' } });
  let out = '';
  sh.stdout!.on('data', (d) => (out += d));
  sh.stderr!.on('data', (d) => (out += d));
  const listening = () => new Promise<boolean>((resolve) => {
    const s = connect(p, '127.0.0.1');
    s.on('connect', () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  });
  try {
    for (let i = 0; i < 150 && !(await listening()); i++) await sleep(100);
    assert.ok(await listening(), `the gateway did not start\n${out}`);
    sh.kill('SIGKILL');
    let free = false;
    for (let i = 0; i < 80 && !free; i++) {
      await sleep(100);
      free = !(await listening());
    }
    assert.ok(free, `the gateway still listens after its parent went\n${out}`);
  } finally {
    try {
      process.kill(-sh.pid!, 'SIGKILL'); // (the group: an orphaned gateway stays in it)
    } catch {
      /* gone */
    }
  }
});
