/**
 * Bodies stream both ways with backpressure: 1 GiB up and 1 GiB down through a gateway
 * process whose peak RSS (VmHWM) must stay flat. TURNPIKE_STREAM_MB overrides the size.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { request, sleep } from './helpers.js';

const SIZE = Number(process.env.TURNPIKE_STREAM_MB ?? 1024) * 1024 * 1024;
const CHUNK = Buffer.alloc(64 * 1024, 'turnpike-');
const MAX_GROWTH = 96 * 1024 * 1024;

let upstream: Server;
let gw: ChildProcess;
let gwPort: number;

function* chunks(total: number) {
  for (let sent = 0; sent < total; sent += CHUNK.length) yield total - sent >= CHUNK.length ? CHUNK : CHUNK.subarray(0, total - sent);
}

function memKb(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]);
}

/** Resets the peak-RSS counter of a process (Linux: write 5 to clear_refs). */
function resetPeak(pid: number): void {
  writeFileSync(`/proc/${pid}/clear_refs`, '5');
}

before(async () => {
  upstream = createServer((req, res) => {
    if (req.url === '/download') {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(SIZE) });
      Readable.from(chunks(SIZE)).pipe(res);
      return;
    }
    let n = 0;
    const hash = createHash('sha256');
    req.on('data', (c: Buffer) => { n += c.length; hash.update(c); });
    req.on('end', () => res.end(JSON.stringify({ bytes: n, sha256: hash.digest('hex') })));
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  const up = (upstream.address() as AddressInfo).port;
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-stream-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `listen: 127.0.0.1:0\nservices:\n  - name: s\n    url: http://127.0.0.1:${up}\n    routes: [{paths: [/]}]\n`);
  gw = spawn(process.execPath, ['bin/turnpike.js', 'start', '--config', file], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, TURNPIKE_LOG_LEVEL: 'silent' } });
  gwPort = await new Promise<number>((resolve, reject) => {
    let err = '';
    gw.stderr!.on('data', (d) => {
      err += d;
      const m = /proxy on http:\/\/127\.0\.0\.1:(\d+)/.exec(err);
      if (m) resolve(Number(m[1]));
    });
    gw.on('exit', () => reject(new Error(`gateway exited: ${err}`)));
  });
  // warm up (JIT, pools), then measure growth from here
  for (let i = 0; i < 20; i++) await request(`http://127.0.0.1:${gwPort}/warm`, { method: 'POST', body: CHUNK });
  await sleep(100);
});

after(async () => {
  gw.kill('SIGKILL');
  upstream.closeAllConnections();
  await new Promise((r) => upstream.close(r));
});

test(`a ${SIZE / 1024 / 1024} MiB upload streams through with flat memory`, async () => {
  const baseline = memKb(gw.pid!, 'VmRSS') * 1024;
  resetPeak(gw.pid!);
  const expected = createHash('sha256');
  for (const c of chunks(SIZE)) expected.update(c);
  const body = await new Promise<string>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: gwPort, path: '/upload', method: 'POST', headers: { 'content-length': String(SIZE) } }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve(text));
    });
    req.on('error', reject);
    pipeline(Readable.from(chunks(SIZE)), req).catch(reject);
  });
  const got = JSON.parse(body);
  assert.equal(got.bytes, SIZE);
  assert.equal(got.sha256, expected.digest('hex'));
  const growth = memKb(gw.pid!, 'VmHWM') * 1024 - baseline;
  assert.ok(growth < MAX_GROWTH, `gateway RSS grew by ${(growth / 1048576).toFixed(1)} MiB`);
});

test(`a ${SIZE / 1024 / 1024} MiB download streams through with flat memory, also to a slow reader`, async () => {
  const baseline = memKb(gw.pid!, 'VmRSS') * 1024;
  resetPeak(gw.pid!);
  const received = await new Promise<number>((resolve, reject) => {
    httpRequest({ host: '127.0.0.1', port: gwPort, path: '/download' }, (res) => {
      let n = 0;
      let slow = 0;
      res.on('data', (c: Buffer) => {
        n += c.length;
        // read the first 48 MiB slowly (~50 MB/s): the gateway must pause the upstream, not buffer
        if (n < 48 * 1024 * 1024 && ++slow % 4 === 0) {
          res.pause();
          setTimeout(() => res.resume(), 5);
        }
      });
      res.on('end', () => resolve(n));
      res.on('error', reject);
    }).on('error', reject).end();
  });
  assert.equal(received, SIZE);
  const growth = memKb(gw.pid!, 'VmHWM') * 1024 - baseline;
  assert.ok(growth < MAX_GROWTH, `gateway RSS grew by ${(growth / 1048576).toFixed(1)} MiB`);
});
