/**
 * At the open-files limit (a real one: `ulimit -n` in the shell that starts the CLI): new
 * connections are dropped by libuv without a word to the process, upstream connects fail with
 * EMFILE. Both are said in the log (rate-limited), the upstream's failure is the gateway's
 * 503, not the target's, and a listener's accept error never ends the process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type Server as NetServer, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { parseConfigText } from '../src/config/load.js';
import { Gateway } from '../src/server/gateway.js';
import { eventually, freePort, request, sleep, startUpstream } from './helpers.js';

test('at the open-files limit: a warning line for the dropped connections and one for the upstream connect, a 503 that is the gateway\'s (the target is not charged), and it serves again once descriptors free up', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-fd-'));
  const file = join(dir, 'c.yaml');
  // (passive health on: a failure charged to the target would eject it after one)
  writeFileSync(file, `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nservices:\n  - name: a\n    upstream: {targets: [{url: "${up.url}"}], healthcheck: {passive: {failures: 1, ejection: 60s}}}\n    routes: [{paths: [/a]}]\n`);
  const child = spawn('/bin/sh', ['-c', `ulimit -n 256 && exec "${process.execPath}" bin/turnpike.js start --config "${file}"`], {
    env: { ...process.env, TURNPIKE_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const socks: Socket[] = [];
  const lines = () => out.split('\n').filter((l) => l.startsWith('{"level":40')).map((l) => JSON.parse(l) as Record<string, unknown>);
  try {
    await eventually(() => / proxy on http:\/\//.test(out) || child.exitCode !== null, 20_000, 20);
    assert.match(out, / proxy on http:\/\//);
    // More idle connections than the process has descriptors: the excess is closed at once.
    const closed = new Set<Socket>();
    for (let i = 0; i < 300; i++) {
      const s = connect(p, '127.0.0.1');
      s.on('error', () => {});
      s.on('close', () => closed.add(s));
      socks.push(s);
      if (i % 50 === 49) await sleep(50);
    }
    await eventually(() => closed.size > 0, 5000, 20);
    await sleep(300);
    assert.ok(closed.size > 0 && closed.size < 300, `${closed.size} closed`);
    // The probe says so within its second, with the limit.
    await eventually(() => lines().some((l) => l['kind'] === 'open-files'), 5000, 50);
    const fdLine = lines().find((l) => l['kind'] === 'open-files')!;
    assert.equal(fdLine['code'], 'EMFILE');
    assert.equal(fdLine['limit'], 256);
    assert.match(String(fdLine['msg']), /new connections are closed as soon as they are accepted.*ulimit -n/);

    // One descriptor free: the next client is accepted, its upstream connect is not.
    socks.find((s) => !closed.has(s))!.destroy();
    await sleep(200);
    const r = await request(`http://127.0.0.1:${p}/a`, { headers: { connection: 'close' } });
    assert.equal(r.status, 503, r.body);
    assert.equal(r.headers['retry-after'], '1');
    assert.match(r.body, /"detail":"the gateway is out of file descriptors: it could not connect to service \\"a\\""/);
    await eventually(() => lines().some((l) => l['kind'] === 'upstream-connect'), 3000, 20);
    const upLine = lines().find((l) => l['kind'] === 'upstream-connect')!;
    assert.equal(upLine['code'], 'EMFILE');
    assert.equal(upLine['occurrences'], 1);
    assert.equal(upLine['limit'], 256);

    // Descriptors back: it serves, and the target was not ejected for the gateway's shortage.
    for (const s of socks) s.destroy();
    await sleep(300);
    const ok = await request(`http://127.0.0.1:${p}/a`, { headers: { connection: 'close' } });
    assert.equal(ok.status, 200, ok.body);
    assert.doesNotMatch(out, /target ejected/);
    // One line per kind within its window, however many drops and probes.
    assert.equal(lines().filter((l) => l['kind'] === 'open-files').length, 1, out);
    child.kill('SIGTERM');
    assert.equal(await exit, 0, out);
  } finally {
    for (const s of socks) s.destroy();
    child.kill('SIGKILL');
    await up.close();
  }
});

test('a listener\'s accept error (EMFILE that libuv could not absorb) is logged and the listener keeps serving; before, an unhandled \'error\' ended the process', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const logged: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l) logged.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  const gw = await Gateway.start(parseConfigText(`listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\naccess_log: {enabled: false}\nservices:\n  - name: a\n    url: ${up.url}\n    routes: [{paths: [/a]}]\n`), { logger: pino({ level: 'info' }, stream) });
  try {
    // (what node's net.Server emits when accept() fails: onconnection's ErrnoException)
    const err = Object.assign(new Error('accept EMFILE'), { code: 'EMFILE', errno: -24, syscall: 'accept' });
    for (const name of ['proxy', 'admin'] as const) {
      const server = (gw as unknown as Record<string, NetServer>)[name]!;
      assert.ok(server.listening);
      server.emit('error', err);
      server.emit('error', err);
      assert.ok(server.listening);
    }
    assert.equal((await request(`http://127.0.0.1:${gw.proxyAddress!.port}/a`)).status, 200);
    assert.equal((await request(`http://127.0.0.1:${gw.adminAddress!.port}/health`)).status, 200);
    await sleep(50);
    const advice = 'out of file descriptors; raise the open-files limit (ulimit -n, systemd LimitNOFILE=, a container\'s nofile ulimit); it keeps listening';
    assert.deepEqual(logged.filter((l) => l['level'] === 40).map((l) => [l['kind'], l['code'], l['occurrences'], l['msg']]), [
      ['accept:proxy', 'EMFILE', 1, `the proxy listener could not accept a connection (EMFILE): ${advice}`],
      ['accept:admin', 'EMFILE', 1, `the admin listener could not accept a connection (EMFILE): ${advice}`],
    ]);
  } finally {
    await gw.stop();
    await up.close();
  }
  // The stop gives what the windows held back: one more of each.
  assert.deepEqual(logged.filter((l) => l['level'] === 40).slice(2).map((l) => [l['kind'], l['occurrences']]), [['accept:proxy', 1], ['accept:admin', 1]]);
});
