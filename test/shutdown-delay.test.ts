/**
 * timeouts.shutdown_delay (Kubernetes: endpoint removal races SIGTERM): after SIGTERM the
 * probes say 503 "draining" while the listeners keep accepting and serving new connections
 * (HTTP/1.1 answers with Connection: close, HTTP/2 sessions get a GOAWAY notice, the final GOAWAY a round trip later); then the
 * usual drain, whose timeouts.drain bound starts at the end of the delay. A second signal
 * during the delay exits at once. Single process and workers: 2, through the CLI.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type Socket } from 'node:net';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import { configIssues, eventually, freePort, request, sleep, startCli, startGateway, startUpstream, type TestUpstream } from './helpers.js';

const TOKEN = 'shutdown-delay-token-0123456789';

function config(text: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'turnpike-sd-')), 'c.yaml');
  writeFileSync(file, text);
  return file;
}

/** An upstream answering /slow/N after N ms, anything else at once. */
function slowUpstream(): Promise<TestUpstream> {
  return startUpstream((req, res) => {
    const m = /^\/slow\/(\d+)/.exec(req.url!);
    setTimeout(() => res.end(`ok ${req.url}`), m ? Number(m[1]) : 0);
  });
}

/** A probe's status and body ('refused' when nothing answers). */
async function probe(port: number, path: string): Promise<{ code: number; body: Record<string, unknown> } | 'refused'> {
  try {
    const r = await request(`http://127.0.0.1:${port}${path}`);
    return { code: r.status, body: JSON.parse(r.body) as Record<string, unknown> };
  } catch {
    return 'refused';
  }
}

/** One request on a new connection: its status and Connection header, or 'refused'. */
async function fresh(port: number, path = '/x'): Promise<{ status: number; connection: string | undefined } | 'refused'> {
  try {
    const r = await request(`http://127.0.0.1:${port}${path}`);
    return { status: r.status, connection: r.headers.connection };
  } catch {
    return 'refused';
  }
}

/** A raw keep-alive HTTP/1.1 connection: send one request, read one whole response (Content-Length framed). */
class KeepAlive {
  private buf = '';
  closed = false;
  private waiters: (() => void)[] = [];
  private constructor(readonly sock: Socket) {
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => { this.buf += d; this.wake(); });
    sock.on('close', () => { this.closed = true; this.wake(); });
    sock.on('error', () => {});
  }
  private wake() { for (const w of this.waiters.splice(0)) w(); }
  static open(port: number): Promise<KeepAlive> {
    return new Promise((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => resolve(new KeepAlive(s)));
      s.once('error', reject);
    });
  }
  async get(path: string): Promise<{ head: string; body: string }> {
    this.sock.write(`GET ${path} HTTP/1.1\r\nHost: t\r\n\r\n`);
    for (;;) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end !== -1) {
        const head = this.buf.slice(0, end);
        const len = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (this.buf.length >= end + 4 + len) {
          const body = this.buf.slice(end + 4, end + 4 + len);
          this.buf = this.buf.slice(end + 4 + len);
          return { head, body };
        }
      }
      if (this.closed) throw new Error(`closed before a whole response: ${JSON.stringify(this.buf)}`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }
  async closedWithin(ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (!this.closed && Date.now() < end) await sleep(10);
    return this.closed;
  }
}

test('timeouts.shutdown_delay: bad values are config errors with path and line; 0 (the default) and durations are fine', () => {
  for (const v of ['-1', '"5 s"', 'true', '30d']) {
    const issues = configIssues(`services: []\ntimeouts:\n  drain: 5s\n  shutdown_delay: ${v}\n`);
    assert.equal(issues.length, 1, v);
    assert.equal(issues[0]!.path, 'timeouts.shutdown_delay', v);
    assert.equal(issues[0]!.line, 4, v);
  }
  for (const v of ['0', '5s', '1.5s', '250ms']) assert.deepEqual(configIssues(`services: []\ntimeouts: {shutdown_delay: ${v}}\n`), [], v);
  const bad = configIssues('services: []\nstatus_listen: 127.0.0.1:99999\n');
  assert.deepEqual(bad.map((i) => [i.path, i.line]), [['status_listen', 2]]);
  assert.equal(configIssues('services: []\nstatus_listen: nope\n')[0]?.path, 'status_listen');
});

/**
 * The whole sequence against a running CLI: SIGTERM, then `delayMs` of "not ready but
 * serving", then the drain (an in-flight request longer than the delay + less than delay +
 * drain completes), then exit 0.
 */
async function delaySequence(opts: { workers: number }): Promise<void> {
  const up = await slowUpstream();
  const [p, a, st] = [await freePort(), await freePort(), await freePort()];
  const delayMs = 2000;
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}, token: ${TOKEN}}\nstatus_listen: 127.0.0.1:${st}\nworkers: ${opts.workers}\n` +
    `timeouts: {shutdown_delay: ${delayMs}ms, drain: 6000ms}\nservices:\n  - name: s\n    url: ${up.url}\n    routes: [{paths: [/]}]\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await eventually(async () => (await probe(a, '/status/ready')) !== 'refused' && ((await probe(a, '/status/ready')) as { code: number }).code === 200, 20_000, 50);
    await eventually(() => / proxy on http:\/\//.test(run.stderr()), 20_000, 20);
    assert.deepEqual(await probe(st, '/status/ready'), { code: 200, body: { status: 'ok' } });
    assert.deepEqual(await probe(a, '/status/live'), { code: 200, body: { status: 'ok' } });
    // A keep-alive connection opened before the stop, idle when it comes.
    const idle = await KeepAlive.open(p);
    const first = await idle.get('/k1');
    assert.doesNotMatch(first.head, /\r\nconnection: close/i);
    // A request in flight: longer than the drain, shorter than delay + drain (it completes only
    // when timeouts.drain is counted from the end of the delay). It also keeps the process
    // alive ~5 s past the end of the delay, for the probes that follow on a loaded machine (3 s
    // were too few once: the process had exited before 'alive while draining' was asked).
    let slowDone = false;
    const slow = request(`http://127.0.0.1:${p}/slow/7000`).then((r) => r.status, (e: Error) => e.message).finally(() => { slowDone = true; });
    await eventually(() => up.requests.some((r) => r.url === '/slow/7000'), 5000, 10);

    const t0 = Date.now();
    run.child.kill('SIGTERM');
    await eventually(async () => ((await probe(a, '/status/ready')) as { code: number }).code === 503, 1000, 10);
    // The connection that was idle when the stop came: its next request is served, and closed after.
    const second = await idle.get('/k2');
    assert.ok(Date.now() - t0 < delayMs, 'answered within the delay');
    assert.match(second.head, /^HTTP\/1\.1 200 /);
    assert.match(second.head, /\r\nconnection: close/i);
    assert.ok(await idle.closedWithin(1000), 'the keep-alive connection is closed after its answer');
    // During the delay: not ready on every probe path, alive, and every new connection served
    // (with Connection: close).
    let served = 0;
    while (Date.now() - t0 < delayMs - 300) {
      const [ready, readySt, status, live, liveSt, r] = await Promise.all([
        probe(a, '/status/ready'), probe(st, '/status/ready'), probe(a, '/status'), probe(a, '/status/live'), probe(st, '/status/live'), fresh(p, `/d${served}`),
      ]);
      assert.deepEqual(ready, { code: 503, body: { status: 'draining' } });
      assert.deepEqual(readySt, { code: 503, body: { status: 'draining' } });
      assert.deepEqual(status, { code: 503, body: { status: 'draining' } });
      assert.deepEqual(live, { code: 200, body: { status: 'ok', phase: 'draining' } });
      assert.deepEqual(liveSt, { code: 200, body: { status: 'ok', phase: 'draining' } });
      // (a slow machine may reach the end of the delay meanwhile: a refusal then says nothing)
      if (r === 'refused' && Date.now() - t0 >= delayMs) break;
      assert.deepEqual(r, { status: 200, connection: 'close' }, `+${Date.now() - t0} ms: a new connection during the shutdown delay`);
      served++;
      await sleep(40);
    }
    assert.ok(served >= 3, `served ${served}`);

    // Then the drain: the listeners close (new connections refused), the in-flight request completes.
    await eventually(async () => (await fresh(p)) === 'refused', 3000, 20);
    const refusedAt = Date.now() - t0;
    assert.ok(refusedAt >= delayMs - 100, `the proxy port refused at +${refusedAt} ms, before the end of the ${delayMs} ms delay`);
    // (asked while the request in flight holds the process: a machine loaded enough to have
    // spent its 7 s in the probes above has nothing left to ask)
    const live = await probe(a, '/status/live');
    if (live === 'refused') await Promise.race([slow, sleep(500)]); // (its answer may be on its way)
    if (!slowDone) assert.deepEqual(live, { code: 200, body: { status: 'ok', phase: 'draining' } }, 'alive while draining');
    assert.equal(await slow, 200, 'the drain (timeouts.drain from the end of the delay) let the request in flight finish');
    assert.equal(await run.exit, 0, run.stderr());
    assert.match(run.stderr(), /shutdown delay/);
  } finally {
    run.child.kill('SIGKILL');
    await up.close();
  }
}

test('shutdown_delay: after SIGTERM /status/ready is 503 while new connections are accepted and served with Connection: close; then the drain; exit 0', async () => {
  await delaySequence({ workers: 1 });
});

test('shutdown_delay with workers: 2 — the primary tells the workers: they keep accepting during the delay, then drain; exit 0', async () => {
  await delaySequence({ workers: 2 });
});

/** A second SIGTERM/SIGINT during the delay exits at once (1), as a second signal during a drain does. */
async function secondSignal(opts: { workers: number; group: boolean }): Promise<void> {
  const up = await slowUpstream();
  const [p, a] = [await freePort(), await freePort()];
  const file = config(`listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: ${opts.workers}\ntimeouts: {shutdown_delay: 20s}\nservices:\n  - name: s\n    url: ${up.url}\n    routes: [{paths: [/]}]\n`);
  const run = startCli(['start', '--config', file], {});
  // (group: the signal to the whole process group, as a terminal's Ctrl-C sends it)
  const signal = (s: NodeJS.Signals) => (opts.group ? process.kill(-run.child.pid!, s) : run.child.kill(s));
  try {
    await eventually(() => / proxy on http:\/\//.test(run.stderr()), 20_000, 20);
    signal('SIGTERM');
    await eventually(async () => ((await probe(a, '/status/ready')) as { code: number }).code === 503, 2000, 10);
    assert.deepEqual(await fresh(p), { status: 200, connection: 'close' });
    await sleep(100);
    const t0 = Date.now();
    signal('SIGINT');
    assert.equal(await run.exit, 1, run.stderr());
    assert.ok(Date.now() - t0 < 1000, `exited ${Date.now() - t0} ms after the second signal`);
    assert.match(run.stderr(), /second signal: exiting now/);
    // Nothing is left serving (workers included).
    await eventually(async () => (await fresh(p)) === 'refused', 2000, 20);
  } finally {
    run.child.kill('SIGKILL');
    await up.close();
  }
}

test('shutdown_delay: a second signal during the delay exits at once', async () => {
  await secondSignal({ workers: 1, group: false });
});

test('shutdown_delay with workers: 2 — a second signal (to the process group, like Ctrl-C twice) during the delay exits at once', async () => {
  await secondSignal({ workers: 2, group: true });
});

interface Goaway { code: number; last: number; at: number }

function h2get(session: ClientHttp2Session, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const s = session.request({ ':path': path });
    let status = 0;
    let body = '';
    s.setEncoding('utf8');
    s.on('response', (h) => { status = Number(h[':status']); });
    s.on('data', (d: string) => (body += d));
    s.on('end', () => resolve({ status, body }));
    s.on('error', reject);
  });
}

function h2client(url: string): { session: ClientHttp2Session; goaways: Goaway[] } {
  const session = h2connect(url);
  const goaways: Goaway[] = [];
  session.on('goaway', (code, last) => goaways.push({ code, last, at: Date.now() }));
  session.on('error', () => {});
  return { session, goaways };
}

test('shutdown_delay, HTTP/2 (h2c): open sessions get a GOAWAY notice (last stream 2^31-1) when the delay starts and their streams finish; a session opened during the delay is served, then noticed', async () => {
  const up = await slowUpstream();
  const t = await startGateway(`http2: {h2c: true}\ntimeouts: {shutdown_delay: 1s, drain: 3s}\nservices:\n  - name: s\n    url: ${up.url}\n    routes: [{paths: [/]}]\n`);
  try {
    const a = h2client(t.url);
    assert.equal((await h2get(a.session, '/a1')).status, 200);
    const slow = h2get(a.session, '/slow/600');
    await eventually(() => up.requests.some((r) => r.url === '/slow/600'), 5000, 10);
    const t0 = Date.now();
    const stopped = t.gw.shutdownDelay().then(() => t.gw.stop());
    await eventually(() => a.goaways.length > 0, 500, 5);
    assert.deepEqual(a.goaways[0]!.code, 0);
    assert.equal(a.goaways[0]!.last, 2 ** 31 - 1, 'a notice: nothing the client sent is refused');
    assert.deepEqual(await slow, { status: 200, body: 'ok /slow/600' });

    // A new connection during the delay: accepted, its stream served, then the notice.
    const b = h2client(t.url);
    assert.deepEqual(await h2get(b.session, '/b1'), { status: 200, body: 'ok /b1' });
    await eventually(() => b.goaways.length > 0, 500, 5);
    assert.equal(b.goaways[0]!.last, 2 ** 31 - 1);
    assert.ok(Date.now() - t0 < 1000, 'within the delay');
    // And HTTP/1.1 on the same (sniffing) listener: served, Connection: close.
    assert.deepEqual(await fresh(t.port, '/h1'), { status: 200, connection: 'close' });

    await stopped;
    assert.ok(Date.now() - t0 >= 950, `stopped ${Date.now() - t0} ms after the delay began`);
    assert.equal(await fresh(t.port), 'refused');
    a.session.destroy();
    b.session.destroy();
  } finally {
    await t.close();
    await up.close();
  }
});

test('HTTP/2 shutdown notice: a stream that crosses the notice (node:http2 has no nghttp2 shutdown notice: nghttp2 takes no new stream once a GOAWAY went out) is refused a round trip later by the final GOAWAY, not left hanging until the shutdown delay ends', async () => {
  const up = await slowUpstream();
  const t = await startGateway(`http2: {h2c: true}\ntimeouts: {shutdown_delay: 5s, drain: 2s}\nservices:\n  - name: s\n    url: ${up.url}\n    routes: [{paths: [/]}]\n`);
  const frames: { type: number; flags: number; stream: number; payload: Buffer }[] = [];
  const sock = connect(t.port, '127.0.0.1');
  sock.on('error', () => {});
  const frame = (type: number, flags: number, stream: number, payload = Buffer.alloc(0)) => {
    const h = Buffer.alloc(9);
    h.writeUIntBE(payload.length, 0, 3);
    h[3] = type;
    h[4] = flags;
    h.writeUInt32BE(stream, 5);
    return Buffer.concat([h, payload]);
  };
  let buf = Buffer.alloc(0);
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9 && buf.length >= 9 + buf.readUIntBE(0, 3)) {
      const len = buf.readUIntBE(0, 3);
      const f = { type: buf[3]!, flags: buf[4]!, stream: buf.readUInt32BE(5) & 0x7fffffff, payload: Buffer.from(buf.subarray(9, 9 + len)) };
      buf = buf.subarray(9 + len);
      frames.push(f);
      if ((f.type === 4 || f.type === 6) && !(f.flags & 1)) sock.write(frame(f.type, 1, 0, f.type === 6 ? f.payload : undefined)); // SETTINGS, PING: ACK
    }
  });
  // GET path (HPACK: :method GET, :scheme http indexed; :path and :authority literals without indexing)
  const get = (id: number, path: string) => frame(1, 0x5, id, Buffer.concat([Buffer.from([0x82, 0x86, 0x04, path.length]), Buffer.from(path), Buffer.from([0x01, 6]), Buffer.from('a.test')]));
  const goaways = () => frames.filter((f) => f.type === 7).map((f) => f.payload.readUInt32BE(0) & 0x7fffffff);
  let delayed: Promise<void> | null = null;
  try {
    await new Promise((r) => sock.once('connect', r));
    sock.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), frame(4, 0, 0), get(1, '/slow/200')]));
    await eventually(() => up.requests.some((r) => r.url === '/slow/200'), 3000, 5);
    const t0 = Date.now();
    delayed = t.gw.shutdownDelay();
    await eventually(() => goaways().length > 0, 1000, 5);
    assert.equal(goaways()[0], 2 ** 31 - 1, 'the notice');
    sock.write(get(3, '/late'));
    // Refused: a final GOAWAY below it (nothing processed: a client may send it again elsewhere), well before the delay's 5 s.
    await eventually(() => goaways().some((last) => last < 3), 3000, 5);
    assert.ok(Date.now() - t0 < 3000, `${Date.now() - t0} ms`);
    assert.deepEqual(goaways(), [2 ** 31 - 1, 1]);
    // The stream in progress is answered; the late one never was, nor sent upstream.
    await eventually(() => frames.some((f) => f.stream === 1 && f.type === 0 && (f.flags & 1)), 3000, 5);
    assert.ok(!frames.some((f) => f.stream === 3 && f.type === 1), 'stream 3 was not answered');
    assert.ok(!up.requests.some((r) => r.url === '/late'), 'nor sent upstream');
  } finally {
    sock.destroy();
    await t.close();
    await delayed;
    await up.close();
  }
});
