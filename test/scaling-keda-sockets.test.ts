/**
 * The KEDA external scaler's port under failing connections: bytes that are not HTTP/2, a
 * client that resets (RST) mid-handshake, an accept error. None ends the process; each kind
 * is one warning line (rate-limited, with a count), without a byte of what the client sent,
 * and the proxy and the scaler keep serving.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type Server as NetServer } from 'node:net';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { parseConfigText } from '../src/config/load.js';
import { Gateway } from '../src/server/gateway.js';
import { kedaClient, type KedaClient } from '../src/scaling/keda.js';
import { makeCa } from './certs.js';
import { eventually, freePort, request, sleep, startUpstream } from './helpers.js';

const GARBAGE = 'GARBAGE-0123456789-not-http2-at-all\r\n\r\n';
const ref = { name: 'orders', namespace: 'shop', scalerMetadata: { service: 'orders' } };

/** Connects, writes `data` (if any), then ends with an RST (resetAndDestroy) or a FIN; resolves once closed. */
function hit(port: number, data: string | null, rst: boolean): Promise<void> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => {
      if (data !== null) s.write(data);
      setTimeout(() => (rst ? s.resetAndDestroy() : s.end()), 30);
    });
    s.on('error', () => {});
    s.resume(); // (what the server answers is read: its FIN ends the socket)
    s.on('close', () => resolve());
  });
}

/** The desired replicas once the advisor has decided (UNAVAILABLE before its first tick). */
async function desired(c: KedaClient): Promise<number> {
  for (let i = 0; ; i++) {
    try {
      return await c.desiredReplicas(ref);
    } catch (err) {
      if ((err as grpc.ServiceError).code !== grpc.status.UNAVAILABLE || i > 50) throw err;
      await sleep(100);
    }
  }
}

const config = (proxy: number, keda: number, up: string, tls = '') => `listen: 127.0.0.1:${proxy}
scaling:
  keda: {listen: 127.0.0.1:${keda}${tls}}
services:
  - name: orders
    url: ${up}
    scaling: {target_concurrency: 4, min_replicas: 2}
    routes: [{paths: [/o]}]
`;

test('garbage bytes and RSTs on the KEDA port: the process keeps serving the proxy and KEDA, one warning line says so without what was sent', { timeout: 30_000 }, async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const [p, k] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-keda-sock-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `${config(p, k, up.url)}access_log: {enabled: false}\n`);
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main-entry.ts', 'start', '--config', file], {
    env: { ...process.env, TURNPIKE_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const warnings = () => out.split('\n').filter((l) => l.startsWith('{"level":40')).map((l) => JSON.parse(l) as Record<string, unknown>);
  const client = kedaClient(`127.0.0.1:${k}`);
  try {
    await eventually(() => /KEDA external scaler up/.test(out) || child.exitCode !== null, 20_000, 20);
    assert.match(out, /KEDA external scaler up/);
    assert.equal(await desired(client), 2);

    await hit(k, GARBAGE, false); // not HTTP/2: the session fails on the preface
    await hit(k, GARBAGE, true); // the same, then an RST
    await hit(k, null, true); // an RST before a byte
    await hit(k, 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', true); // an RST in the middle of the HTTP/2 handshake
    for (let i = 0; i < 20; i++) await hit(k, GARBAGE.repeat(50), i % 2 === 0);
    await sleep(200);

    assert.equal(child.exitCode, null, out);
    assert.equal((await request(`http://127.0.0.1:${p}/o`)).body, 'ok');
    assert.equal(await client.isActive(ref), true);
    assert.equal(await desired(client), 2);

    const lines = warnings().filter((l) => l['kind'] === 'keda-connection');
    assert.equal(lines.length, 1, out);
    assert.equal(lines[0]!['occurrences'], 1);
    assert.equal(lines[0]!['listener'], 'KEDA');
    assert.equal(lines[0]!['remote'], '127.0.0.1');
    assert.match(String(lines[0]!['msg']), /^KEDA external scaler: a connection failed \((ERR_HTTP2_ERROR|ECONNRESET)\); it keeps serving$/);
    assert.doesNotMatch(out, /GARBAGE/);

    child.kill('SIGTERM');
    assert.equal(await exit, 0, out);
    // At the stop, what the window held back: the other 23 failures in one line.
    const all = warnings().filter((l) => l['kind'] === 'keda-connection');
    assert.equal(all.length, 2, out);
    assert.equal(all[1]!['occurrences'], 23);
  } finally {
    client.close();
    child.kill('SIGKILL');
    await up.close();
  }
});

test('an accept error on the KEDA listener (EMFILE libuv could not absorb) is logged and it keeps serving; over TLS a failed handshake (garbage, RST) is logged too', { timeout: 30_000 }, async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const ca = makeCa();
  const server = ca.issue('turnpike', { dns: ['localhost', '127.0.0.1'] });
  const cert = ca.issue('keda', { client: true });
  const k = await freePort();
  const logged: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l) logged.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  const gw = await Gateway.start(parseConfigText(`${config(0, k, up.url, `, tls: {cert: ${server.certFile}, key: ${server.keyFile}, client_ca: ${ca.certFile}}`)}admin: {listen: 127.0.0.1:0}\naccess_log: {enabled: false}\n`), { logger: pino({ level: 'info' }, stream) });
  const client = kedaClient(`localhost:${k}`, grpc.credentials.createSsl(ca.cert, cert.key, cert.cert), 3000);
  const warnings = (kind: string) => logged.filter((l) => l['level'] === 40 && l['kind'] === kind);
  try {
    assert.equal(await desired(client), 2);
    // (what node's net.Server emits when accept() fails: onconnection's ErrnoException)
    const listener = (gw as unknown as { keda: { listener: NetServer } }).keda.listener;
    const err = Object.assign(new Error('accept EMFILE'), { code: 'EMFILE', errno: -24, syscall: 'accept' });
    listener.emit('error', err);
    listener.emit('error', err);
    assert.ok(listener.listening);

    await hit(k, GARBAGE, false); // not TLS
    await hit(k, null, true); // an RST before the ClientHello
    // An RST in the middle of the TLS handshake: the start of a ClientHello, then a reset.
    await hit(k, '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', true);
    await sleep(200);

    assert.equal(await client.isActive(ref), true);
    assert.equal(await desired(client), 2);
    assert.equal((await request(`http://127.0.0.1:${gw.proxyAddress!.port}/o`)).body, 'ok');

    const accept = warnings('accept:KEDA');
    assert.equal(accept.length, 1, JSON.stringify(logged));
    assert.equal(accept[0]!['code'], 'EMFILE');
    assert.match(String(accept[0]!['msg']), /^the KEDA listener could not accept a connection \(EMFILE\): out of file descriptors; raise the open-files limit .*; it keeps listening$/);
    const conn = warnings('keda-connection');
    assert.equal(conn.length, 1, JSON.stringify(logged));
    assert.equal(conn[0]!['occurrences'], 1);
    assert.doesNotMatch(JSON.stringify(logged), /GARBAGE/);
  } finally {
    client.close();
    await gw.stop();
    await up.close();
    ca.cleanup();
  }
  // The stop says what the windows held back: the second accept error, the other failed handshakes.
  assert.deepEqual(warnings('accept:KEDA').map((l) => l['occurrences']), [1, 1]);
  assert.deepEqual(warnings('keda-connection').map((l) => l['occurrences']), [1, 2]);
});
