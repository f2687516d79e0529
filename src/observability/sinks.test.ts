import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import v8 from 'node:v8';
import vm from 'node:vm';
import { pino } from 'pino';
import { createSink } from './sinks.js';

/** One access log line with a sequence number (fixed width: every line has the same length). */
const line = (i: number, pad = '') => JSON.stringify({ i: String(i).padStart(6, '0'), pad }) + '\n';
const seq = (lines: string[]) => lines.map((l) => Number((JSON.parse(l) as { i: string }).i));
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, k) => from + k);

interface Batch {
  headers: IncomingHttpHeaders;
  lines: string[];
}

/** A real HTTP receiver on 127.0.0.1; `answer` decides each response (default 204). */
async function receiver(answer: (res: ServerResponse, n: number, req: IncomingMessage) => void = (res) => res.end()) {
  const batches: Batch[] = [];
  let requests = 0;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const n = ++requests;
      const body = Buffer.concat(chunks).toString('utf8');
      res.on('finish', () => {
        if (res.statusCode < 300) batches.push({ headers: req.headers, lines: body.split(/(?<=\n)/) });
      });
      answer(res, n, req);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/ingest?source=turnpike`,
    batches,
    requests: () => requests,
    lines: () => batches.flatMap((b) => b.lines),
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** A port with nothing listening. */
async function deadPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

function warnings() {
  const calls: { obj: object; msg: string }[] = [];
  return { calls, log: { warn: (obj: object, msg: string) => void calls.push({ obj, msg }) } };
}

test('http: batches by batch_lines, keeps order, sends the configured headers', async () => {
  const rx = await receiver();
  const sink = createSink({ destination: 'http', url: rx.url, headers: { Authorization: 'Bearer t0k' }, batch_lines: 3, interval_ms: 60_000 });
  for (let i = 0; i < 7; i++) assert.equal(sink.write(line(i)), true);
  await waitFor(() => rx.lines().length === 6);
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(rx.batches.map((b) => b.lines.length), [3, 3], 'the 7th line waits for the interval or a flush');
  await sink.flush();
  assert.deepEqual(rx.batches.map((b) => b.lines.length), [3, 3, 1]);
  assert.deepEqual(seq(rx.lines()), range(0, 7));
  for (const b of rx.batches) {
    assert.equal(b.headers['content-type'], 'application/x-ndjson');
    assert.equal(b.headers.authorization, 'Bearer t0k');
  }
  assert.equal(sink.written, 7);
  assert.equal(sink.dropped, 0);
  await sink.close();
  await rx.close();
});

test('http: batch_bytes bounds the body size', async () => {
  const rx = await receiver();
  const size = Buffer.byteLength(line(0));
  const sink = createSink({ destination: 'http', url: rx.url, batch_bytes: size * 2 + 10, interval_ms: 60_000 });
  for (let i = 0; i < 5; i++) sink.write(line(i));
  await sink.flush();
  assert.deepEqual(rx.batches.map((b) => b.lines.length), [2, 2, 1]);
  assert.deepEqual(seq(rx.lines()), range(0, 5));
  await sink.close();
  await rx.close();
});

test('http: a partial batch is sent after interval_ms', async () => {
  const rx = await receiver();
  const sink = createSink({ destination: 'http', url: rx.url, interval_ms: 50 });
  sink.write(line(0));
  sink.write(line(1));
  await waitFor(() => rx.batches.length === 1, 1000);
  assert.deepEqual(seq(rx.lines()), [0, 1]);
  sink.write(line(2));
  await waitFor(() => rx.batches.length === 2, 1000);
  assert.deepEqual(seq(rx.lines()), [0, 1, 2]);
  await sink.close();
  await rx.close();
});

test('http: works as a pino destination; logger.flush(cb) waits for delivery', async () => {
  const rx = await receiver();
  const sink = createSink({ destination: 'http', url: rx.url });
  const logger = pino({ base: null }, sink);
  logger.info({ status: 200 }, 'GET /a');
  logger.info({ status: 404 }, 'GET /b');
  await new Promise<void>((resolve) => logger.flush(() => resolve()));
  assert.deepEqual(rx.lines().map((l) => (JSON.parse(l) as { status: number }).status), [200, 404]);
  await sink.close();
  await rx.close();
});

test('http: a 500 is retried and the batch delivered once', async () => {
  const rx = await receiver((res, n) => {
    res.statusCode = n === 1 ? 500 : 200;
    res.end();
  });
  const sink = createSink({ destination: 'http', url: rx.url, batch_lines: 2 });
  sink.write(line(0));
  sink.write(line(1));
  await waitFor(() => sink.written === 2);
  assert.equal(rx.requests(), 2);
  assert.deepEqual(seq(rx.lines()), [0, 1]);
  assert.equal(sink.dropped, 0);
  await sink.close();
  await rx.close();
});

test('http: a receiver that keeps failing gets 3 attempts, then the batch is dropped, counted and warned about', async () => {
  const rx = await receiver((res) => {
    res.statusCode = 503;
    res.end();
  });
  const { calls, log } = warnings();
  const sink = createSink({ destination: 'http', url: rx.url, batch_lines: 3 }, log);
  for (let i = 0; i < 3; i++) sink.write(line(i));
  await waitFor(() => sink.dropped === 3);
  assert.equal(rx.requests(), 3);
  assert.equal(sink.written, 0);
  assert.equal(calls.length, 1);
  assert.match(calls[0]!.msg, /could not deliver 3 lines/);
  await sink.close();
  await rx.close();
});

test('http: receiver down -> lines dropped and counted, memory bounded, no crash', async () => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const { calls, log } = warnings();
  const maxQueue = 4 * 1024 * 1024;
  const sink = createSink({ destination: 'http', url: `http://127.0.0.1:${await deadPort()}/`, max_queue_bytes: maxQueue, timeout_ms: 200 }, log);
  const pad = 'x'.repeat(1000);
  const total = 50 * 1024; // ~50 MB of lines
  gc();
  const before = process.memoryUsage().heapUsed;
  for (let i = 0; i < total; i++) sink.write(line(i, pad));
  gc();
  const growth = process.memoryUsage().heapUsed - before;
  assert.ok(sink.dropped > total / 2, `dropped ${sink.dropped}`);
  // The queue plus one batch (1 MiB) in backoff, plus slack.
  assert.ok(growth < maxQueue + 1024 * 1024 + 8 * 1024 * 1024, `heap grew by ${growth} bytes`);
  const t0 = Date.now();
  await sink.close();
  assert.ok(Date.now() - t0 < 1000);
  assert.equal(sink.written, 0);
  assert.equal(sink.dropped, total, 'everything is accounted for after close');
  assert.equal(sink.write(line(0)), false, 'writes after close are dropped');
  assert.ok(calls.length >= 1 && calls.length <= 2, 'warnings are rate-limited');
  assert.match(calls[0]!.msg, /cannot keep up/);
});

test('http: a slow receiver bounds the queue and keeps order', async () => {
  const rx = await receiver((res) => setTimeout(() => res.end(), 100));
  const size = Buffer.byteLength(line(0));
  const sink = createSink({ destination: 'http', url: rx.url, batch_lines: 5, max_queue_bytes: size * 10 });
  let accepted = 0;
  for (let i = 0; i < 100; i++) if (sink.write(line(i))) accepted++;
  // 5 lines went into the first POST, 10 fit in the queue behind it, the newest 85 are dropped.
  assert.equal(accepted, 15);
  assert.equal(sink.dropped, 85);
  await sink.flush();
  assert.deepEqual(seq(rx.lines()), range(0, 15));
  assert.equal(sink.written, 15);
  await sink.close();
  await rx.close();
});

test('http: close() with a hung receiver returns within timeout_ms', async () => {
  const rx = await receiver(() => {}); // never answers
  const sink = createSink({ destination: 'http', url: rx.url, batch_lines: 1, timeout_ms: 300 });
  for (let i = 0; i < 3; i++) sink.write(line(i));
  await waitFor(() => rx.requests() === 1);
  const t0 = Date.now();
  await sink.close();
  const took = Date.now() - t0;
  assert.ok(took < 800, `close took ${took} ms`);
  assert.equal(sink.dropped, 3);
  assert.equal(sink.written, 0);
  await rx.close();
});

test('http: a user and password in the URL go as Basic credentials (percent-decoded), never in a warning; configured headers win', async () => {
  const rx = await receiver();
  const { calls, log } = warnings();
  const url = rx.url.replace('http://', 'http://log%40user:LogUrl%3APw@');
  const sinks = [
    createSink({ destination: 'http', url, batch_lines: 1 }, log),
    // Down: the warning names the receiver by origin, without the credentials.
    createSink({ destination: 'http', url: `http://loguser:LogUrlPw@127.0.0.1:${await deadPort()}/ingest`, batch_lines: 1, timeout_ms: 200 }, log),
    // An Authorization header in the config is the one sent.
    createSink({ destination: 'http', url, headers: { Authorization: 'Bearer t0k' }, batch_lines: 1 }),
  ] as const;
  try {
    sinks[0].write(line(0));
    await sinks[0].flush();
    assert.equal(rx.batches.length, 1);
    assert.equal(rx.batches[0]!.headers.authorization, `Basic ${Buffer.from('log@user:LogUrl:Pw').toString('base64')}`);
    sinks[1].write(line(1));
    await waitFor(() => sinks[1].dropped === 1, 5000);
    assert.ok(calls.length > 0);
    assert.doesNotMatch(JSON.stringify(calls), /LogUrl|loguser|log%40user/);
    sinks[2].write(line(2));
    await sinks[2].flush();
    assert.equal(rx.batches.at(-1)!.headers.authorization, 'Bearer t0k');
    assert.throws(() => createSink({ destination: 'http', url: 'http://u:%zz@127.0.0.1/in' }), (err: Error) => /malformed percent-encoding/.test(err.message) && !err.message.includes('%zz'));
  } finally {
    for (const sink of sinks) await sink.close();
    await rx.close();
  }
});

test('http: only http: and https: URLs', () => {
  for (const url of ['ftp://example.com/', 'file:///tmp/x', 'not a url']) {
    assert.throws(() => createSink({ destination: 'http', url }), /access log: the http destination url/);
  }
  return createSink({ destination: 'http', url: 'https://logs.example.com/in' }).close();
});

test('file: rotation with reopen() loses and splits no line', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-sinks-'));
  try {
    const path = join(dir, 'logs', 'access.log'); // the directory is created
    const sink = createSink({ destination: 'file', path });
    const logger = pino({ base: null, timestamp: false }, sink);
    const pad = 'y'.repeat(200);
    for (let i = 0; i < 1000; i++) logger.info({ i, pad });
    await sink.flush(); // the file is open (sonic-boom opens it asynchronously)
    for (let i = 1000; i < 2000; i++) logger.info({ i, pad });
    renameSync(path, `${path}.1`); // while writes are still in flight
    sink.reopen();
    for (let i = 2000; i < 4000; i++) logger.info({ i, pad });
    await sink.flush();
    const old = readFileSync(`${path}.1`, 'utf8');
    const fresh = readFileSync(path, 'utf8');
    assert.ok(old.length > 0 && fresh.length > 0, 'both files were written');
    const ids = (old + fresh)
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => (JSON.parse(l) as { i: number }).i);
    assert.deepEqual(ids.sort((a, b) => a - b), range(0, 4000));
    assert.ok(fresh.endsWith('\n') && old.endsWith('\n'));
    assert.equal(sink.written, 4000);
    await sink.close();
    assert.equal(sink.write(line(0)), false);
    assert.equal(sink.dropped, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('file: an unwritable path is an Error from createSink', () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-sinks-'));
  try {
    writeFileSync(join(dir, 'not-a-dir'), '');
    const path = join(dir, 'not-a-dir', 'access.log');
    assert.throws(() => createSink({ destination: 'file', path }), (err: Error) => {
      assert.match(err.message, /^access log: cannot open .*not-a-dir\/access\.log for writing: /);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('file: a destination that refuses every write (disk full: /dev/full) closes at once and releases its fd (a shutdown waited two 5 s bounds, a replaced sink kept its fd)', { skip: !existsSync('/dev/full') || !existsSync('/proc/self/fd') }, async () => {
  const open = () => readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === '/dev/full';
    } catch {
      return false;
    }
  }).length;
  const before = open();
  const warnings: string[] = [];
  const sink = createSink({ destination: 'file', path: '/dev/full' }, { warn: (_o, msg) => warnings.push(msg) });
  for (let i = 0; i < 1000; i++) sink.write(line(i));
  await sink.flush(); // (the first write failed: ENOSPC)
  assert.ok(warnings.some((m) => m.includes('writing to /dev/full failed')), warnings.join('; '));
  assert.equal(open(), before + 1);
  for (let i = 0; i < 10; i++) sink.write(line(i)); // (more while it fails)
  const t0 = Date.now();
  await sink.close();
  assert.ok(Date.now() - t0 < 2500, `close took ${Date.now() - t0} ms`);
  for (let i = 0; i < 50 && open() > before; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(open(), before, 'the fd is closed');
});

test('stdout: a child process writes its lines to stdout', async () => {
  const sinks = join(process.cwd(), 'src/observability/sinks.ts');
  const code = `
    import { createSink } from ${JSON.stringify(sinks)};
    const sink = createSink({ destination: 'stdout' });
    for (let i = 0; i < 3; i++) sink.write(JSON.stringify({ i }) + '\\n');
    await sink.close();
    process.stderr.write(String(sink.written));`;
  const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code]);
  assert.equal(stdout, '{"i":0}\n{"i":1}\n{"i":2}\n');
  assert.equal(stderr, '3');
});
