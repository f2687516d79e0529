#!/usr/bin/env node
/**
 * `npm run bench:memory`: Turnpike's memory, in two parts (BENCH_PARTS):
 *
 * idle   RSS per idle keep-alive connection. One trivial upstream (bench/upstream.mjs), then for
 *        each target in turn, a fresh process:
 *
 *          turnpike   bin/turnpike.js start, TURNPIKE_LOG_LEVEL=silent, config:
 *                       listen: 127.0.0.1:PORT
 *                       access_log: {enabled: false}
 *                       timeouts: {keepalive: 120s}     (the default, 5s, would close them)
 *                       services: [{name: bench, url: UPSTREAM, routes: [{paths: [/]}]}]
 *          reference  bench/reference-proxy.mjs (node:http + one undici Pool: the Node floor;
 *                     its server keepAliveTimeout is 65 s, fixed)
 *
 *        Per target: 256 warm-up requests (each on a fresh connection, 32 at a time), 3 s of
 *        rest, then the baseline RSS (VmRSS of /proc/PID/status, read twice 1 s apart, the
 *        second kept). Then a holder process (this file run as `--hold`) opens BENCH_CONNS TCP
 *        connections (default 10000) in batches of 500; each sends one complete
 *        `GET / HTTP/1.1` and reads the whole response, then sits idle, open. At most 32
 *        requests are in flight at once, as in the warm-up, so the proxy's upstream pool is
 *        about as large as at the baseline and the difference is the client connections'.
 *        2 s after the last one, RSS is read twice (1 s apart, the second kept): per connection =
 *        (RSS with the connections - baseline) / connections still open, in KiB, also given
 *        as MiB per 10,000. Then the holder counts the connections the proxy closed meanwhile
 *        (they should be none), closes them all, and 3 s later RSS is read once more (how
 *        much is given back). The proxy's open file descriptors (/proc/PID/fd) are recorded
 *        at each step, as a cross-check of how many connections it holds. When the holder
 *        runs out of file descriptors (EMFILE) it stops there, says so, and the figures are
 *        per connection actually open.
 *
 * soak   BENCH_SOAK seconds (default 600; 0 skips the part) of moderate steady load through a
 *        fresh Turnpike with the default benchmark config (as bench/run.mjs: access_log off,
 *        everything else default, so keepalive 5 s): a client (this file run as `--soak`)
 *        sends GET / at BENCH_SOAK_RPS requests/s (default 1000) over one undici Pool of 16
 *        connections, and every 5 s opens 50 fresh connections, sends one request on each and
 *        closes them (connection churn). Turnpike's RSS is sampled every 10 s (every
 *        duration/10 s, at least 1 s, for soaks shorter than 100 s) with the client's request
 *        count, non-200s and errors so far. Reported: RSS before the load, at "start" (after
 *        a warm-up of 30 s, or 10% of the duration if shorter), at the end, the maximum
 *        sampled and VmHWM (the kernel's peak), and the slope of a least-squares line through
 *        the samples of the second half, in KiB/min. Verdict "flat" when the end RSS is within
 *        10% (or 8 MiB, whichever is larger) of the start RSS and the slope is under
 *        1 MiB/min; otherwise "growing". Soaks under 5 min are a smoke test, not a verdict.
 *
 * File descriptors: Turnpike, the reference proxy, the holder and the soak client are started
 * through `sh -c 'ulimit -n 65536 || ulimit -n <hard limit>; exec ...'`; each one's "Max open
 * files" (from /proc/PID/limits) is printed and kept in the JSON.
 *
 * Pinning (taskset, two CPUs): the proxy under test alone on the second CPU; the upstream, the
 * holder and the soak client on the first. Results: tables on stdout and
 * bench/results/memory.json (with Markdown tables for docs/benchmarks.md). All traffic stays
 * on 127.0.0.1.
 *
 * Environment:
 *   BENCH_PARTS     comma list: idle,soak (default both)
 *   BENCH_CONNS     idle part: connections to open (default 10000)
 *   BENCH_SOAK      soak part: seconds of load (default 600; 0 = skip the soak)
 *   BENCH_SOAK_RPS  soak part: requests per second over the 16 pooled connections (default 1000)
 *   BENCH_OUT       where to write the JSON results (default bench/results/memory.json)
 *   BENCH_NO_BUILD  1 = do not run `npm run build` first
 *   BENCH_TURNPIKE  path of another Turnpike entry point to measure instead of bin/turnpike.js
 *   BENCH_KEEP_TMP  1 = keep the temp dir (configs)
 *
 * Every process it starts runs in its own process group; all of them are killed on exit, on
 * error and on SIGINT/SIGTERM.
 */
import { connect } from 'node:net';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ROOT, positive, benchSettings, installCleanupHandlers, interrupted, cleanup, makeTmpDir, start, stop, alive, waitFor,
  pinning, machineInfo, gitHead, distStamp, buildTurnpike, startUpstream, UPSTREAM_BODY,
  freePort, probe, waitReady, round, sleep, ratio, formatTable, markdownTable, writeJson,
} from './lib.mjs';

const SELF = fileURLToPath(import.meta.url);
const env = process.env;

/** Connections opened at once by the holder (more at once risks SYN backlog overflow). */
const BATCH = 500;
/**
 * Requests in flight at once, in the holder and in the warm-up before the baseline: the proxy's
 * upstream pool grows to about this many connections in both, so the RSS difference is the
 * client connections' (500 requests at once would add hundreds of upstream connections).
 */
const REQ_CONC = 32;
/** Pooled connections of the soak client. */
const SOAK_CONNS = 16;
/** The soak client opens and closes this many fresh connections every CHURN_EVERY_MS. */
const CHURN_CONNS = 50;
const CHURN_EVERY_MS = 5000;
const REQUEST = Buffer.from('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');

// ---------------------------------------------------------------------------------------------
// Shared by the helper modes: one request on a fresh TCP connection.

/** "Max open files" of a process: { soft, hard } (numbers, or "unlimited"), or null. */
function fdLimit(pid = 'self') {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
    const n = (v) => (/^[0-9]+$/.test(v) ? Number(v) : v);
    return m ? { soft: n(m[1]), hard: n(m[2]) } : null;
  } catch {
    return null;
  }
}

/**
 * The response at the start of `buf`: { status, complete, close } once its head is in, else
 * null. `complete`: the whole body is in (Content-Length or chunked; a response without either
 * is never complete: its body would end with the connection).
 */
function parseResponse(buf) {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const head = buf.subarray(0, end).toString('latin1');
  const status = Number(/^HTTP\/1\.[01] ([0-9]{3})/.exec(head)?.[1] ?? 0);
  const cl = /\r\ncontent-length:[ \t]*([0-9]+)/i.exec(head);
  const chunked = /\r\ntransfer-encoding:[^\r]*chunked/i.test(head);
  const close = /\r\nconnection:[^\r]*close/i.test(head);
  let complete = false;
  if (cl) complete = buf.length >= end + 4 + Number(cl[1]);
  else if (chunked) complete = buf.subarray(end + 4).toString('latin1').endsWith('0\r\n\r\n');
  else if (status === 204 || status === 304) complete = true;
  return { status, complete, close };
}

/** At most `n` holders at once: acquire() resolves when it is one's turn, release() passes it on. */
function semaphore(n) {
  let free = n;
  const queue = [];
  return {
    acquire: () => (free > 0 ? (free--, Promise.resolve()) : new Promise((r) => queue.push(r))),
    release: () => {
      const next = queue.shift();
      if (next) next();
      else free++;
    },
  };
}

/**
 * Opens a connection to 127.0.0.1:port, sends one GET / (once `gate` lets it, when given) and
 * reads the whole response. Resolves with { socket, status, close } (the socket left open,
 * idle) or { error } (the socket destroyed). `onLateClose` is called when the socket closes
 * after the response.
 */
function oneRequest(port, { onLateClose = () => {}, gate = null, timeoutMs = 30_000 } = {}) {
  return new Promise((resolveReq) => {
    let buf = Buffer.alloc(0);
    let done = false;
    let holding = false;
    const socket = connect({ host: '127.0.0.1', port, noDelay: true });
    const timer = setTimeout(() => finish({ error: { code: 'TIMEOUT', message: `no complete response within ${timeoutMs} ms` } }), timeoutMs);
    function finish(result) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (holding) gate.release();
      holding = false;
      socket.removeListener('data', onData);
      if (result.error) socket.destroy();
      resolveReq(result);
    }
    function onData(d) {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      const r = parseResponse(buf);
      if (r?.complete) finish({ socket, status: r.status, close: r.close });
    }
    socket.once('connect', async () => {
      if (gate) {
        await gate.acquire();
        if (done) return gate.release();
        holding = true;
      }
      socket.write(REQUEST);
    });
    socket.on('data', onData);
    socket.on('error', (err) => finish({ error: { code: err.code ?? 'ERROR', message: err.message } }));
    socket.once('close', () => {
      if (!done) finish({ error: { code: 'CLOSED', message: 'connection closed before a complete response' } });
      else onLateClose(socket);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// `node bench/memory.mjs --hold <port> <n>`: opens n connections (batches of BATCH; at most
// REQ_CONC requests in flight), one request each, keeps them open and idle. Prints "OPENED {json}". On SIGUSR2: prints "CHECK {json}"
// (how many are still open), closes them all and exits.

async function holder(port, n) {
  const open = new Set();
  let closedByPeer = 0;
  let failed = 0;
  let emfile = false;
  let firstError = null;
  const statuses = {};
  const errors = {};
  const t0 = performance.now();
  const onLateClose = (s) => {
    if (open.delete(s)) closedByPeer++;
  };
  const gate = semaphore(REQ_CONC);
  let attempted = 0;
  while (attempted < n && !emfile) {
    const size = Math.min(BATCH, n - attempted);
    attempted += size;
    const results = await Promise.all(Array.from({ length: size }, () => oneRequest(port, { onLateClose, gate })));
    for (const r of results) {
      if (r.error) {
        failed++;
        errors[r.error.code] = (errors[r.error.code] ?? 0) + 1;
        firstError ??= `${r.error.code}: ${r.error.message}`;
        if (r.error.code === 'EMFILE' || r.error.code === 'ENFILE') emfile = true;
        continue;
      }
      statuses[r.status] = (statuses[r.status] ?? 0) + 1;
      if (!r.socket.destroyed) open.add(r.socket);
    }
  }
  const report = {
    requested: n,
    attempted,
    opened: open.size + closedByPeer,
    open_now: open.size,
    closed_by_peer: closedByPeer,
    failed,
    errors,
    statuses,
    first_error: firstError,
    emfile,
    elapsed_ms: Math.round(performance.now() - t0),
    fd_limit: fdLimit(),
  };
  process.stdout.write(`OPENED ${JSON.stringify(report)}\n`);
  process.on('SIGUSR2', () => {
    const check = { open_now: open.size, closed_by_peer: closedByPeer };
    process.stdout.write(`CHECK ${JSON.stringify(check)}\n`);
    for (const s of open) s.destroy();
    setTimeout(() => process.exit(0), 200);
  });
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
  setInterval(() => {}, 1 << 30); // stay up until told
}

// ---------------------------------------------------------------------------------------------
// `node bench/memory.mjs --soak <port> <seconds> <rps>`: GET / at rps over an undici Pool of
// SOAK_CONNS connections, plus CHURN_CONNS fresh connections opened and closed every
// CHURN_EVERY_MS. Prints "STARTED", "PROGRESS {json}" every second and "RESULT {json}" at the end.

async function soakClient(port, seconds, rps) {
  const { Pool } = await import('undici');
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections: SOAK_CONNS, pipelining: 1, keepAliveTimeout: 30_000, connect: { noDelay: true } });
  const c = { sent: 0, ok: 0, non200: 0, errors: 0, skipped: 0, churn_ok: 0, churn_non200: 0, churn_errors: 0 };
  const statuses = {};
  const errorCodes = {};
  let firstError = null;
  let inflight = 0;
  const maxInflight = SOAK_CONNS * 8;
  const lat = [];
  const noteError = (code, message) => {
    errorCodes[code] = (errorCodes[code] ?? 0) + 1;
    firstError ??= `${code}: ${message}`;
  };

  function fire() {
    inflight++;
    c.sent++;
    const t = performance.now();
    pool.request({ path: '/', method: 'GET' }).then(
      async (res) => {
        await res.body.text();
        lat.push((performance.now() - t) * 1000);
        if (res.statusCode === 200) c.ok++;
        else {
          c.non200++;
          statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
        }
      },
      (err) => {
        c.errors++;
        noteError(err.code ?? 'ERROR', err.message);
      },
    ).finally(() => inflight--);
  }

  async function churn() {
    const results = await Promise.all(Array.from({ length: CHURN_CONNS }, () => oneRequest(port)));
    for (const r of results) {
      if (r.error) {
        c.churn_errors++;
        noteError(`churn ${r.error.code}`, r.error.message);
        continue;
      }
      if (r.status === 200) c.churn_ok++;
      else {
        c.churn_non200++;
        statuses[`churn ${r.status}`] = (statuses[`churn ${r.status}`] ?? 0) + 1;
      }
      r.socket.end();
      setTimeout(() => r.socket.destroy(), 2000).unref();
    }
  }

  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  const snapshot = () => ({ t: round((performance.now() - t0) / 1000, 1), requests: c.ok + c.non200 + c.errors, ...c, inflight });
  process.stdout.write('STARTED\n');
  const tick = setInterval(() => {
    const now = Math.min(performance.now(), end);
    const due = Math.floor(((now - t0) / 1000) * rps) - c.sent - c.skipped;
    for (let i = 0; i < due; i++) {
      if (inflight >= maxInflight) {
        c.skipped += due - i; // behind: Turnpike is slower than the rate asked for
        break;
      }
      fire();
    }
  }, 5);
  const churns = [];
  const churnTimer = setInterval(() => churns.push(churn()), CHURN_EVERY_MS);
  const progress = setInterval(() => process.stdout.write(`PROGRESS ${JSON.stringify(snapshot())}\n`), 1000);
  while (performance.now() < end) await sleep(Math.min(100, end - performance.now() + 1));
  clearInterval(tick);
  clearInterval(churnTimer);
  const drainBy = performance.now() + 10_000;
  while (inflight > 0 && performance.now() < drainBy) await sleep(10);
  await Promise.all(churns);
  clearInterval(progress);
  const elapsed = (performance.now() - t0) / 1000;
  await pool.close().catch(() => {});
  const sorted = Float64Array.from(lat).sort();
  const q = (x) => (sorted.length ? round(sorted[Math.min(sorted.length - 1, Math.ceil(x * sorted.length) - 1)], 1) : null);
  const result = {
    ...snapshot(),
    elapsed_s: round(elapsed, 1),
    rps: round((c.ok + c.non200 + c.errors) / elapsed, 1),
    p50_us: q(0.5),
    p99_us: q(0.99),
    max_us: q(1),
    statuses,
    error_codes: errorCodes,
    first_error: firstError,
    unfinished: inflight,
    fd_limit: fdLimit(),
  };
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
  process.exit(0);
}

// ---------------------------------------------------------------------------------------------
// Settings (the runner's).

const S = benchSettings({ out: 'bench/results/memory.json' });
const PARTS_ALL = ['idle', 'soak'];
const PARTS = (env.BENCH_PARTS ?? PARTS_ALL.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
const CONNS = Math.round(positive(env.BENCH_CONNS, 10_000));
const SOAK_S = env.BENCH_SOAK !== undefined && env.BENCH_SOAK !== '' ? Number(env.BENCH_SOAK) : 600;
const SOAK_RPS = positive(env.BENCH_SOAK_RPS, 1000);
/** Verdict thresholds of the soak. */
const FLAT_REL = 0.1;
const FLAT_ABS_KIB = 8 * 1024;
const FLAT_SLOPE_KIB_MIN = 1024;

// ---------------------------------------------------------------------------------------------
// Measuring a process from outside.

/** Memory figures of a process from /proc/PID/status, in KiB: { rss, hwm, anon, file, shmem }; null when gone. */
function memory(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (k) => {
      const m = new RegExp(`^${k}:\\s+([0-9]+) kB`, 'm').exec(s);
      return m ? Number(m[1]) : null;
    };
    return { rss: kib('VmRSS'), hwm: kib('VmHWM'), anon: kib('RssAnon'), file: kib('RssFile'), shmem: kib('RssShmem') };
  } catch {
    return null;
  }
}

/** Open file descriptors of a process (null when it cannot be read). */
function fdCount(pid) {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
}

/** [cmd, args] run through sh with the fd limit raised first (65536, else the hard limit). */
const withFdLimit = (cmd, args) => ['sh', ['-c', 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"', 'sh', cmd, ...args]];

const mib = (kib) => (kib === null || kib === undefined ? null : round(kib / 1024, 1));
const fmtMib = (kib) => (kib === null || kib === undefined ? '-' : `${(kib / 1024).toFixed(1)} MiB`);
const fmtLimit = (l) => (l ? `${l.soft} (hard ${l.hard})` : '?');

/** Least-squares slope of y over x. */
function slope(points) {
  if (points.length < 2) return null;
  const n = points.length;
  const mx = points.reduce((a, p) => a + p[0], 0) / n;
  const my = points.reduce((a, p) => a + p[1], 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den ? num / den : null;
}

/** 256 requests, each on a fresh connection, REQ_CONC at a time: code paths warm, upstream pool as large as the holder will make it. */
async function warmUp(url) {
  let bad = 0;
  const rounds = Math.ceil(256 / REQ_CONC);
  for (let i = 0; i < rounds; i++) {
    const rs = await Promise.all(Array.from({ length: REQ_CONC }, () => probe(url)));
    bad += rs.filter((r) => !r || r.status !== 200).length;
  }
  if (bad) throw new Error(`${url}: ${bad} of ${rounds * REQ_CONC} warm-up requests did not answer 200`);
}

/** Reads RSS twice, `gapMs` apart, after `waitMs`: the second reading. */
async function settledMemory(pid, waitMs, gapMs = 1000) {
  await sleep(waitMs);
  memory(pid);
  await sleep(gapMs);
  return memory(pid);
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const unknown = PARTS.filter((p) => !PARTS_ALL.includes(p));
  if (unknown.length) throw new Error(`BENCH_PARTS: unknown part(s) ${unknown.join(', ')} (known: ${PARTS_ALL.join(', ')})`);
  if (!Number.isFinite(SOAK_S) || SOAK_S < 0) throw new Error(`BENCH_SOAK: "${env.BENCH_SOAK}" is not a number of seconds`);
  const runIdle = PARTS.includes('idle');
  const runSoak = PARTS.includes('soak') && SOAK_S > 0;

  const { loadCpu, proxyCpu, pin, note: pinNote } = pinning();
  const notes = pinNote ? [pinNote] : [];
  const machine = machineInfo({ hard_fd_limit: fdLimit()?.hard ?? null });
  const git = { commit: gitHead(), turnpike_entry: relative(ROOT, S.turnpikeBin) };
  const startedAt = Date.now();

  console.log(`Turnpike memory benchmark: ${[runIdle ? `idle (${CONNS} connections)` : null, runSoak ? `soak (${SOAK_S}s at ${SOAK_RPS} req/s)` : null].filter(Boolean).join(', ') || 'nothing to do'}`);
  console.log(`machine: ${machine.nproc} CPUs, ${machine.cpu}, ${machine.kernel}, node ${machine.node}`);
  console.log(`turnpike: ${git.commit ?? '?'} (${git.turnpike_entry})`);
  console.log(loadCpu !== null ? `pinning: upstream + connection holder + soak client on CPU ${loadCpu}, proxy under test on CPU ${proxyCpu}` : 'pinning: none');
  console.log(`fd limit of this runner: ${fmtLimit(fdLimit())}; its children are started with ulimit -n 65536 (or the hard limit)`);
  for (const n of notes) console.log(`note: ${n}`);

  buildTurnpike(S.build);
  const builtAt = distStamp();
  const tmp = makeTmpDir('turnpike-bench-memory-', S.keepTmp);
  const upstream = await startUpstream(pin, loadCpu);

  const out = {
    machine,
    git,
    method: {
      parts: PARTS,
      pinning: loadCpu !== null ? { load_cpu: loadCpu, proxy_cpu: proxyCpu } : null,
      runner_fd_limit: fdLimit(),
      rss_source: '/proc/PID/status VmRSS',
    },
  };
  const tables = {};

  /** A proxy pinned alone on its CPU with the fd limit raised: { child, pid, port, url, fd_limit }. */
  async function startProxy(target, slug, configText) {
    const port = await freePort();
    let child;
    if (target === 'turnpike') {
      const file = join(tmp, `turnpike-${slug}.yaml`);
      writeFileSync(file, configText(port));
      child = start('turnpike', ...withFdLimit(...pin(proxyCpu, process.execPath, [S.turnpikeBin, 'start', '--config', file])), { env: { TURNPIKE_LOG_LEVEL: 'silent' } });
    } else {
      child = start('reference', ...withFdLimit(...pin(proxyCpu, process.execPath, [join(ROOT, 'bench/reference-proxy.mjs'), upstream.url, String(port)])));
      await waitFor(child, /LISTENING ([0-9]+)/);
    }
    const url = `http://127.0.0.1:${port}`;
    await waitReady(`${url}/`, { child, body: UPSTREAM_BODY, ms: 30_000 });
    return { child, pid: child.pid, port, url, fd_limit: fdLimit(child.pid) };
  }

  const baseConfig = (extra) => (port) => `# generated by bench/memory.mjs
listen: 127.0.0.1:${port}
access_log: {enabled: false}
${extra}services:
  - name: bench
    url: ${upstream.url}
    routes:
      - paths: [/]
`;

  // ---- idle connections --------------------------------------------------------------------
  if (runIdle) {
    console.log(`\n== idle: RSS per idle keep-alive connection (${CONNS} connections, batches of ${BATCH}) ==`);
    const results = {};
    for (const target of ['turnpike', 'reference']) {
      if (interrupted()) return;
      const proxy = await startProxy(target, 'idle', baseConfig('timeouts: {keepalive: 120s}\n'));
      console.log(`  ${target}: pid ${proxy.pid}, fd limit ${fmtLimit(proxy.fd_limit)}`);
      await warmUp(`${proxy.url}/`);
      const before = await settledMemory(proxy.pid, 2000);
      const fdsBefore = fdCount(proxy.pid);

      const hold = start(`holder ${target}`, ...withFdLimit(...pin(loadCpu, process.execPath, [SELF, '--hold', String(proxy.port), String(CONNS)])));
      const opened = JSON.parse((await waitFor(hold, /^OPENED (.+)$/m, 60_000 + CONNS * 10))[1]);
      console.log(`  ${target}: ${opened.open_now} of ${CONNS} connections open in ${opened.elapsed_ms} ms (holder fd limit ${fmtLimit(opened.fd_limit)}${opened.failed ? `; ${opened.failed} failed: ${JSON.stringify(opened.errors)}, first: ${opened.first_error}` : ''})`);
      if (opened.emfile) console.log(`  ${target}: the holder ran out of file descriptors (EMFILE) after ${opened.opened} connections: figures are per connection actually open`);
      const fdsOpen = fdCount(proxy.pid);
      const during = await settledMemory(proxy.pid, 2000);
      const fdsIdle = fdCount(proxy.pid);
      process.kill(hold.pid, 'SIGUSR2');
      const check = JSON.parse((await waitFor(hold, /^CHECK (.+)$/m, 10_000))[1]);
      await stop(hold, 3000);
      const after = await settledMemory(proxy.pid, 2000);
      const fdsAfter = fdCount(proxy.pid);
      const proxyAlive = alive(proxy.child);
      await stop(proxy.child);

      const conns = check.open_now;
      const perConn = conns > 0 && during && before ? (during.rss - before.rss) / conns : null;
      const r = {
        connections_requested: CONNS,
        connections_opened: opened.opened,
        connections_open_at_end: conns,
        closed_by_proxy: check.closed_by_peer,
        failed: opened.failed,
        errors: opened.errors,
        first_error: opened.first_error,
        statuses: opened.statuses,
        emfile: opened.emfile,
        open_ms: opened.elapsed_ms,
        holder_fd_limit: opened.fd_limit,
        proxy_fd_limit: proxy.fd_limit,
        proxy_alive_at_end: proxyAlive,
        kib_before: before,
        kib_with_connections: during,
        kib_after_close: after,
        fds: { before: fdsBefore, all_open: fdsOpen, idle: fdsIdle, after_close: fdsAfter },
        rss_delta_kib: during && before ? during.rss - before.rss : null,
        anon_delta_kib: during && before && during.anon !== null ? during.anon - before.anon : null,
        kib_per_connection: round(perConn, 2),
        mib_per_10k_connections: perConn === null ? null : round((perConn * 10_000) / 1024, 1),
        released_after_close_kib: during && after ? during.rss - after.rss : null,
      };
      results[target] = r;
      console.log(`  ${target}: RSS ${fmtMib(before?.rss)} -> ${fmtMib(during?.rss)} with ${conns} idle (${r.kib_per_connection} KiB each), ${fmtMib(after?.rss)} 3 s after closing; proxy fds ${fdsBefore} -> ${fdsIdle} -> ${fdsAfter}`);
      if (check.closed_by_peer > 0) console.log(`  WARNING ${target}: the proxy closed ${check.closed_by_peer} idle connection(s) before the end of the measurement`);
      if (!proxyAlive) console.log(`  WARNING ${target}: the proxy exited during the measurement:\n${proxy.child.output.slice(-2000)}`);
    }
    const cols = ['target', 'conns open', 'RSS before', `RSS with conns`, 'KiB / conn', 'MiB / 10k conns', 'RSS after close', 'closed early'];
    const rows = Object.entries(results).map(([name, r]) => [
      name,
      r.connections_open_at_end,
      fmtMib(r.kib_before?.rss),
      fmtMib(r.kib_with_connections?.rss),
      r.kib_per_connection ?? '-',
      r.mib_per_10k_connections ?? '-',
      fmtMib(r.kib_after_close?.rss),
      r.closed_by_proxy,
    ]);
    const turnpikeOverRef = ratio(results.turnpike?.kib_per_connection, results.reference?.kib_per_connection);
    console.log(`\n${formatTable(cols, rows)}`);
    console.log(`turnpike / reference, KiB per connection: ${turnpikeOverRef ?? 'n/a'}`);
    tables.idle = markdownTable(cols, rows);
    out.idle = {
      connections: CONNS,
      batch: BATCH,
      turnpike_keepalive: '120s',
      reference_keepalive: '65s (fixed in bench/reference-proxy.mjs)',
      results,
      turnpike_over_reference_per_connection: turnpikeOverRef,
    };
  }

  // ---- soak --------------------------------------------------------------------------------
  if (runSoak && !interrupted()) {
    const interval = SOAK_S >= 100 ? 10 : Math.max(1, SOAK_S / 10);
    const warm = Math.min(30, SOAK_S * 0.1);
    console.log(`\n== soak: ${SOAK_S}s at ${SOAK_RPS} req/s over ${SOAK_CONNS} connections + ${CHURN_CONNS} fresh connections every ${CHURN_EVERY_MS / 1000}s; RSS every ${interval}s ==`);
    if (SOAK_S < 300) console.log('  note: a soak under 5 min is a smoke test; its verdict means little');
    const proxy = await startProxy('turnpike', 'soak', baseConfig(''));
    console.log(`  turnpike: pid ${proxy.pid}, fd limit ${fmtLimit(proxy.fd_limit)}`);
    await warmUp(`${proxy.url}/`);
    const before = await settledMemory(proxy.pid, 1000);
    const client = start('soak client', ...withFdLimit(...pin(loadCpu, process.execPath, [SELF, '--soak', String(proxy.port), String(SOAK_S), String(SOAK_RPS)])));
    await waitFor(client, /^STARTED$/m, 15_000);
    const t0 = Date.now();
    const lastProgress = () => {
      const i = client.output.lastIndexOf('PROGRESS ');
      if (i < 0) return null;
      try {
        return JSON.parse(client.output.slice(i + 9, client.output.indexOf('\n', i)));
      } catch {
        return null;
      }
    };
    const times = [...new Set([warm, ...Array.from({ length: Math.floor(SOAK_S / interval) }, (_, k) => (k + 1) * interval), SOAK_S].map((t) => round(t, 1)))].sort((a, b) => a - b);
    const samples = [{ t: 0, phase: 'before load', ...memory(proxy.pid), fds: fdCount(proxy.pid), requests: 0, non200: 0, errors: 0 }];
    for (const t of times) {
      const wait = t0 + t * 1000 - Date.now();
      if (wait > 0) await sleep(wait);
      if (interrupted()) return;
      const m = memory(proxy.pid);
      if (!m) break; // Turnpike is gone
      const p = lastProgress();
      samples.push({ t, phase: t === warm ? 'start' : t === SOAK_S ? 'end' : 'load', ...m, fds: fdCount(proxy.pid), requests: p?.requests ?? null, non200: (p?.non200 ?? 0) + (p?.churn_non200 ?? 0), errors: (p?.errors ?? 0) + (p?.churn_errors ?? 0) });
      const last = samples.at(-1);
      console.log(`  t=${String(t).padStart(5)}s  RSS ${fmtMib(last.rss).padStart(10)}  anon ${fmtMib(last.anon).padStart(10)}  fds ${last.fds}  requests ${last.requests ?? '?'}  non-200 ${last.non200}  errors ${last.errors}`);
    }
    const resultLine = await waitFor(client, /^RESULT (.+)$/m, 30_000).catch((err) => {
      notes.push(`soak client: ${err.message.split('\n')[0]}`);
      return null;
    });
    const clientResult = resultLine ? JSON.parse(resultLine[1]) : null;
    const proxyAlive = alive(proxy.child);
    const hwm = memory(proxy.pid)?.hwm ?? null;
    await stop(client, 3000);
    await stop(proxy.child);
    if (!proxyAlive) console.log(`  WARNING: Turnpike exited during the soak:\n${proxy.child.output.slice(-2000)}`);

    const startS = samples.find((s) => s.phase === 'start') ?? null;
    const endS = samples.at(-1).t > 0 ? samples.at(-1) : null;
    const maxRss = Math.max(...samples.map((s) => s.rss));
    const half = samples.filter((s) => s.t > 0 && s.t >= SOAK_S / 2).map((s) => [s.t / 60, s.rss]);
    const slopeKibMin = slope(half);
    let verdict = null;
    if (startS && endS && slopeKibMin !== null) {
      const within = Math.abs(endS.rss - startS.rss) <= Math.max(FLAT_REL * startS.rss, FLAT_ABS_KIB);
      verdict = within && slopeKibMin < FLAT_SLOPE_KIB_MIN ? 'flat' : 'growing';
    }
    const rows = [
      ['RSS before load', fmtMib(before?.rss)],
      [`RSS at start (t=${round(warm, 1)}s)`, fmtMib(startS?.rss)],
      [`RSS at end (t=${endS?.t ?? '?'}s)`, fmtMib(endS?.rss)],
      ['RSS max (sampled)', fmtMib(maxRss)],
      ['VmHWM (peak, incl. startup)', fmtMib(hwm)],
      ['slope, second half', slopeKibMin === null ? '-' : `${round(slopeKibMin, 0)} KiB/min`],
      ['requests (pool + churn)', clientResult ? `${clientResult.requests} + ${clientResult.churn_ok + clientResult.churn_non200 + clientResult.churn_errors}` : '-'],
      ['achieved req/s', clientResult?.rps ?? '-'],
      ['p50 / p99', clientResult ? `${clientResult.p50_us}us / ${clientResult.p99_us}us` : '-'],
      ['non-200 / errors', clientResult ? `${clientResult.non200 + clientResult.churn_non200} / ${clientResult.errors + clientResult.churn_errors}` : '-'],
      ['verdict', verdict ?? 'n/a'],
    ];
    console.log(`\n${formatTable(['soak (default config)', 'value'], rows)}`);
    if (clientResult?.skipped) console.log(`  note: the client fell behind and skipped ${clientResult.skipped} requests (more than ${SOAK_CONNS * 8} in flight)`);
    if (clientResult?.first_error) console.log(`  first error: ${clientResult.first_error}`);
    tables.soak = markdownTable(['soak (default config)', 'value'], rows);
    out.soak = {
      seconds: SOAK_S,
      rps_target: SOAK_RPS,
      pool_connections: SOAK_CONNS,
      churn: { connections: CHURN_CONNS, every_s: CHURN_EVERY_MS / 1000 },
      sample_interval_s: interval,
      warmup_s: warm,
      config: 'access_log off, everything else default (keepalive 5s)',
      proxy_fd_limit: proxy.fd_limit,
      proxy_alive_at_end: proxyAlive,
      mib: { before_load: mib(before?.rss), start: mib(startS?.rss), end: mib(endS?.rss), max_sampled: mib(maxRss), hwm: mib(hwm) },
      slope_second_half_kib_per_min: round(slopeKibMin, 1),
      verdict,
      verdict_rule: `flat: |end - start| <= max(${FLAT_REL * 100}% of start, ${FLAT_ABS_KIB / 1024} MiB) and second-half slope < ${FLAT_SLOPE_KIB_MIN / 1024} MiB/min`,
      client: clientResult,
      samples,
    };
  }

  await stop(upstream.child);
  const notesEnd = [];
  if (distStamp() !== builtAt) notesEnd.push('dist/ was rebuilt during the run');
  if (gitHead() !== git.commit) notesEnd.push(`HEAD moved from ${git.commit} to ${gitHead()} during the run`);
  for (const n of notesEnd) console.log(`WARNING: ${n}`);
  out.method.notes = [...notes, ...notesEnd];
  out.markdown_tables = tables;
  out.method.elapsed_s = Math.round((Date.now() - startedAt) / 1000);
  writeJson(S.out, out);
  console.log(`\nwrote ${relative(process.cwd(), S.out)} (the run took ${out.method.elapsed_s} s)`);
}

// ---------------------------------------------------------------------------------------------

if (process.argv[2] === '--hold') {
  holder(Number(process.argv[3]), Number(process.argv[4])).catch((err) => {
    console.error(`holder failed: ${err.stack ?? err}`);
    process.exit(1);
  });
} else if (process.argv[2] === '--soak') {
  soakClient(Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5])).catch((err) => {
    console.error(`soak client failed: ${err.stack ?? err}`);
    process.exit(1);
  });
} else {
  installCleanupHandlers();
  main()
    .catch((err) => {
      console.error(`\nbenchmark failed: ${err.stack ?? err}`);
      process.exitCode = 1;
    })
    .finally(() => cleanup());
}
