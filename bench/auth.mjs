#!/usr/bin/env node
/**
 * `npm run bench:auth`: what authentication costs, in one run. One trivial upstream
 * (bench/upstream.mjs), one tiny JWKS server, one Turnpike config with four routes to the same
 * service, each measured the same way:
 *
 *   plain        /plain        no plugins
 *   jwt          /jwt          jwt (OIDC discovery at the JWKS server, ES256, aud urn:bench,
 *                              consumer_claim client_id); verified tokens cached (the default)
 *   jwt-nocache  /jwt-nocache  the same with cache: false (signature checked on every request)
 *   key          /key          key-auth (header apikey, one consumer with one key)
 *
 * The JWKS server (this file run as `node bench/auth.mjs --jwks-server`, node:http) serves
 * /.well-known/openid-configuration ({issuer, jwks_uri}) and /jwks with one ES256 public key
 * (jose generateKeyPair + exportJWK, kid set), signs one access token with it (iss = its URL,
 * aud urn:bench, exp now + 1 h, sub and client_id bench-client, scope read) and prints it. The
 * load generator sends `Authorization: Bearer <token>` to /jwt and /jwt-nocache, and
 * `apikey: bench-key-123456` to /key.
 *
 * Per route and round: a fresh Turnpike, a warm-up at 64 connections (the first request there
 * makes Turnpike fetch the discovery document and the keys), then 64 connections (req/s, p50,
 * p99, proxy CPU per request) and 1 connection (p50, p99). wrk when installed (-H for the
 * header), else autocannon. Each round measures the routes in a rotated order. With taskset and
 * two CPUs, Turnpike runs alone on the second CPU; the load generator, the upstream and the JWKS
 * server on the first. Ratios (req/s at 64 connections, same round): jwt/plain,
 * jwt-nocache/plain, key/plain; the summary is the median over the rounds. Acceptance (the
 * issue): cached JWT keeps >= 85% of plain's throughput. Results: a table on stdout and
 * bench/results/auth.json. Before any load every route is checked (200 with credentials; 401
 * without, with a bad signature, with a wrong key); a measurement with non-2xx responses fails,
 * and a warning says when dist/ was rebuilt or HEAD moved during the run.
 *
 * Environment (as bench/run.mjs):
 *   BENCH_DURATION    seconds per 64-connection measurement (default 10); the 1-connection one
 *                     takes half of it (at least 1 s)
 *   BENCH_WARMUP      warm-up seconds per route (default 2)
 *   BENCH_ROUNDS      repeat every route this many times (default 1); the summary is the median
 *   BENCH_ROUTES      comma list of routes to measure (default plain,jwt,jwt-nocache,key); add
 *                     plain-bearer for a control: /plain sent the same Authorization header
 *                     (jwt / plain-bearer is then the plugin alone, plain-bearer / plain the
 *                     cost of carrying a 351-byte token through the proxy)
 *   BENCH_TOOL        wrk | autocannon (default: wrk when installed)
 *   BENCH_PROFILE     a directory: run Turnpike with --cpu-prof writing there, one profile per
 *                     route and round (auth-<route>-r<round>-*.cpuprofile; the numbers of such a
 *                     run are not comparable; summarize with bench/profile.mjs)
 *   BENCH_OUT         where to write the JSON results (default bench/results/auth.json)
 *   BENCH_NO_BUILD    1 = do not run `npm run build` first
 *   BENCH_TURNPIKE    path of another Turnpike entry point to measure instead of bin/turnpike.js
 *   BENCH_KEEP_TMP    1 = keep the temp dir (config, process output)
 *   BENCH_RETRIES     re-measure at most this many times (default 2) while processes outside
 *                     the benchmark use more than 5% CPU; the quietest is kept
 *   BENCH_QUIET_WAIT  before each measurement, wait at most this many seconds (default 60) for
 *                     processes outside the benchmark to use < 5% CPU
 *
 * Every process it starts runs in its own process group; all of them are killed on exit, on
 * error and on SIGINT/SIGTERM. All traffic stays on 127.0.0.1.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, existsSync, mkdirSync, readdirSync, statSync, accessSync, constants } from 'node:fs';
import { tmpdir, availableParallelism, release, platform } from 'node:os';
import { join, dirname, delimiter, resolve, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:net';
import { createServer as createHttpServer, request } from 'node:http';
import { createRequire } from 'node:module';
import { parseWrk, parseAutocannon } from './parse.mjs';

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const require = createRequire(import.meta.url);
const env = process.env;

const AUDIENCE = 'urn:bench';
const CLIENT_ID = 'bench-client';
const API_KEY = 'bench-key-123456';
const KID = 'bench-es256';

// ---------------------------------------------------------------------------------------------
// `node bench/auth.mjs --jwks-server`: the identity provider. Prints "LISTENING <port>" and
// "TOKEN <jwt>"; GET /stats answers how many discovery and JWKS requests it has served.

async function jwksServer() {
  const { generateKeyPair, exportJWK, SignJWT } = await import('jose');
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), kid: KID, alg: 'ES256', use: 'sig' };
  const counts = { discovery: 0, jwks: 0, other: 0 };
  let issuer = '';
  const json = (res, status, body) => {
    const b = Buffer.from(JSON.stringify(body));
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(b.length) });
    res.end(b);
  };
  const server = createHttpServer((req, res) => {
    req.resume();
    if (req.url === '/.well-known/openid-configuration') {
      counts.discovery++;
      json(res, 200, { issuer, jwks_uri: `${issuer}/jwks` });
    } else if (req.url === '/jwks') {
      counts.jwks++;
      json(res, 200, { keys: [jwk] });
    } else if (req.url === '/stats') {
      json(res, 200, counts);
    } else {
      counts.other++;
      json(res, 404, { error: 'not found' });
    }
  });
  server.listen(Number(process.argv[3] ?? 0), '127.0.0.1', async () => {
    issuer = `http://127.0.0.1:${server.address().port}`;
    const token = await new SignJWT({ client_id: CLIENT_ID, scope: 'read' })
      .setProtectedHeader({ alg: 'ES256', kid: KID, typ: 'at+jwt' })
      .setIssuer(issuer)
      .setAudience(AUDIENCE)
      .setSubject(CLIENT_ID)
      .setIssuedAt()
      .setExpirationTime('1h')
      .sign(privateKey);
    process.stdout.write(`ISSUER ${issuer}\nTOKEN ${token}\nLISTENING ${server.address().port}\n`);
  });
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
}

// ---------------------------------------------------------------------------------------------
// Settings (the runner's).

const num = (v, d) => (v !== undefined && v !== '' && Number(v) > 0 ? Number(v) : d);
const DURATION = Math.round(num(env.BENCH_DURATION, 10));
const C1_DURATION = Math.max(1, Math.round(DURATION / 2));
const WARMUP = Math.round(num(env.BENCH_WARMUP, 2));
const CONNS = 64;
const ROUNDS = Math.max(1, Math.round(num(env.BENCH_ROUNDS, 1)));
const RETRIES = env.BENCH_RETRIES !== undefined && /^[0-9]+$/.test(env.BENCH_RETRIES) ? Number(env.BENCH_RETRIES) : 2;
const QUIET_WAIT = num(env.BENCH_QUIET_WAIT, 60);
/** CPU % (of one CPU) that processes outside the benchmark may use before a measurement counts as disturbed. */
const OTHER_MAX = 5;
const TURNPIKE_BIN = resolve(env.BENCH_TURNPIKE || join(ROOT, 'bin/turnpike.js'));
const PROFILE_DIR = env.BENCH_PROFILE ? resolve(env.BENCH_PROFILE) : null;
const BODY = 'hello world';
/** The issue's acceptance: cached JWT keeps at least this share of plain's req/s. */
const JWT_MIN_RATIO = 0.85;

/** The routes: path, what the load generator sends, what a request without credentials gets. */
const ROUTES = [
  { name: 'plain', path: '/plain', desc: 'no plugins', header: null, bare: 200 },
  { name: 'jwt', path: '/jwt', desc: 'jwt, token cache on (default)', header: 'bearer', bare: 401 },
  { name: 'jwt-nocache', path: '/jwt-nocache', desc: 'jwt, cache: false (signature checked on every request)', header: 'bearer', bare: 401 },
  { name: 'key', path: '/key', desc: 'key-auth (header apikey)', header: 'apikey', bare: 401 },
  // A control, only when BENCH_ROUTES names it: /plain with the same Authorization header as
  // /jwt, so jwt - plain-bearer is the plugin alone and plain-bearer - plain is the cost of
  // carrying the token through the proxy and upstream.
  { name: 'plain-bearer', path: '/plain', desc: 'no plugins, sending the jwt routes\' Authorization header (control)', header: 'bearer', bare: 200, optional: true },
];
const SELECTED = (env.BENCH_ROUTES ?? ROUTES.filter((r) => !r.optional).map((r) => r.name).join(',')).split(',').map((s) => s.trim()).filter(Boolean);

// ---------------------------------------------------------------------------------------------
// Processes (as in bench/run.mjs): each child leads its own process group; cleanup() kills
// every group still alive.

const children = new Set();
let tmp = null;

function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    /* already gone */
  }
}

const alive = (child) => child.exitCode === null && child.signalCode === null;

function start(name, cmd, args, extraEnv = {}) {
  const child = spawn(cmd, args, {
    cwd: ROOT,
    detached: true, // own process group, so the whole tree can be signalled
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...env, ...extraEnv },
  });
  child.label = name;
  child.output = '';
  const keep = (d) => {
    child.output += d.toString();
    if (child.output.length > 1 << 20) child.output = child.output.slice(-(1 << 19));
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.exited = new Promise((r) => {
    child.once('exit', (code, signal) => r({ code, signal }));
    child.once('error', (err) => {
      child.output += `\n${err.message}\n`;
      r({ code: -1, signal: null });
    });
  });
  children.add(child);
  child.exited.then(() => {
    killGroup(child, 'SIGKILL'); // the leader is gone; nothing it forked may outlive it
    children.delete(child);
  });
  return child;
}

async function stop(child, graceMs = 5000) {
  if (!child || !children.has(child)) return;
  if (alive(child)) killGroup(child, 'SIGTERM');
  const timer = setTimeout(() => killGroup(child, 'SIGKILL'), graceMs);
  await child.exited;
  clearTimeout(timer);
}

async function cleanup() {
  await Promise.all([...children].map((c) => stop(c, 3000)));
  if (tmp && env.BENCH_KEEP_TMP !== '1') rmSync(tmp, { recursive: true, force: true });
  else if (tmp) console.error(`temp dir kept: ${tmp}`);
  tmp = null;
}

let interrupted = false;
if (process.argv[2] !== '--jwks-server') {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      if (interrupted) return;
      interrupted = true;
      console.error(`\n${sig}: stopping every benchmark process...`);
      cleanup().finally(() => process.exit(130));
    });
  }
  process.on('exit', () => {
    for (const c of children) killGroup(c, 'SIGKILL');
  });
}

/** Resolves with the first match of `re` in the child's output; rejects on exit or timeout. */
async function waitFor(child, re, ms = 15_000) {
  const end = Date.now() + ms;
  for (;;) {
    const m = re.exec(child.output);
    if (m) return m;
    if (!alive(child)) throw new Error(`${child.label} exited before it was ready:\n${child.output}`);
    if (Date.now() > end) throw new Error(`${child.label} not ready after ${ms} ms:\n${child.output}`);
    await sleep(10);
  }
}

/** Runs a child to completion within `ms`, returning its output; rejects on a non-zero exit. */
async function runToEnd(child, ms) {
  const timer = setTimeout(() => killGroup(child, 'SIGKILL'), ms);
  const { code, signal } = await child.exited;
  clearTimeout(timer);
  if (code !== 0) throw new Error(`${child.label} failed (${signal ?? `exit ${code}`}):\n${child.output}`);
  return child.output;
}

// ---------------------------------------------------------------------------------------------
// Environment: tools, CPUs, versions.

function which(name, extraDirs = []) {
  for (const dir of [...(env.PATH ?? '').split(delimiter), ...extraDirs]) {
    if (!dir) continue;
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      if (statSync(p).isFile()) return p;
    } catch {
      /* not here */
    }
  }
  return null;
}

function sh(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
}

/** The CPUs this process may run on, from `taskset -pc`. */
function allowedCpus(taskset) {
  const m = /list:\s*([0-9,\-\s]+)$/m.exec(sh(taskset, ['-pc', String(process.pid)]));
  if (!m) return [];
  const cpus = [];
  for (const part of m[1].trim().split(',')) {
    const [a, b] = part.split('-').map(Number);
    for (let c = a; c <= (b ?? a); c++) cpus.push(c);
  }
  return cpus;
}

function cpuModel() {
  try {
    return /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1].trim() ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting (Linux), as in bench/run.mjs: per-CPU busy time from /proc/stat, per-process-
// group time from /proc/PID/stat, and "other" (every process outside the benchmark).

const CLK_TCK = Number(sh('getconf', ['CLK_TCK'])) || 100;
const statFields = (s) => s.slice(s.lastIndexOf(')') + 2).split(' ');
/** This runner's own process group (npm, sh, node): neither a target nor "other". */
const SELF_PGID = (() => {
  try {
    return Number(statFields(readFileSync('/proc/self/stat', 'utf8'))[2]);
  } catch {
    return -1;
  }
})();

function cpuTimes() {
  const out = {};
  try {
    for (const m of readFileSync('/proc/stat', 'utf8').matchAll(/^cpu([0-9]+)\s+(.*)$/gm)) {
      const f = m[2].split(/\s+/).map(Number);
      out[m[1]] = { idle: f[3] + (f[4] || 0), total: f.slice(0, 8).reduce((a, b) => a + b, 0) };
    }
  } catch {
    /* not Linux */
  }
  return out;
}

/** utime+stime ticks of every process: { "pid/starttime": [pgid, ticks] }. */
function procTicks() {
  const out = new Map();
  let dirs = [];
  try {
    dirs = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const d of dirs) {
    if (!/^[0-9]+$/.test(d)) continue;
    try {
      const f = statFields(readFileSync(`/proc/${d}/stat`, 'utf8'));
      out.set(`${d}/${f[19]}`, [Number(f[2]), Number(f[11]) + Number(f[12])]);
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}

/** CPU ticks of this runner's exited, reaped children (cutime + cstime): the load generator's. */
function reapedChildTicks() {
  try {
    const f = statFields(readFileSync('/proc/self/stat', 'utf8'));
    return Number(f[13]) + Number(f[14]);
  } catch {
    return 0;
  }
}

function startCpuSample(groups, withLoad = false) {
  return { t: process.hrtime.bigint(), cpus: cpuTimes(), procs: procTicks(), groups, withLoad, reaped: reapedChildTicks() };
}

function endCpuSample(s) {
  const secs = Number(process.hrtime.bigint() - s.t) / 1e9;
  const now = cpuTimes();
  const procs = procTicks();
  const cpuBusy = {};
  for (const [id, a] of Object.entries(s.cpus)) {
    const b = now[id];
    if (!b || b.total === a.total) continue;
    cpuBusy[id] = round(100 * (1 - (b.idle - a.idle) / (b.total - a.total)), 1);
  }
  const ours = new Map(s.groups.map((g) => [g.pgid, g.name]));
  const ticks = Object.fromEntries(s.groups.map((g) => [g.name, 0]));
  ticks.other = 0;
  if (s.withLoad) ticks.load = reapedChildTicks() - s.reaped;
  for (const [key, [pgid, t1]] of procs) {
    const t0 = s.procs.get(key)?.[1] ?? 0; // a process started during the sample counts whole
    const name = ours.get(pgid) ?? (pgid === SELF_PGID ? null : 'other');
    if (name) ticks[name] += t1 - t0;
  }
  const procCpu = {};
  for (const [name, t] of Object.entries(ticks)) procCpu[name] = round((100 * t) / CLK_TCK / secs, 1);
  return { cpu_busy_pct: cpuBusy, process_cpu_pct: procCpu };
}

/** Waits (at most `maxMs`) until processes outside the benchmark use < 5% of one CPU over 1 s. */
async function waitQuiet(groups, maxMs) {
  const deadline = Date.now() + maxMs;
  let warned = false;
  for (;;) {
    const s = startCpuSample(groups);
    await sleep(1000);
    const other = endCpuSample(s).process_cpu_pct.other;
    if (other < OTHER_MAX || Date.now() >= deadline) return other;
    if (!warned) {
      console.log(`  waiting for a quiet machine (other processes use ${other}% CPU; at most ${Math.round(maxMs / 1000)}s)...`);
      warned = true;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

const round = (x, d = 0) => (x === null || x === undefined || Number.isNaN(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ratio = (a, b) => (a && b ? round(a / b, 3) : null);
const fmtRps = (r) => (r === null || r === undefined ? '-' : Math.round(r).toLocaleString('en-US'));
const pct = (x) => (x === null || x === undefined ? 'n/a' : `${(x * 100).toFixed(1)}%`);

function fmtUs(us) {
  if (us === null || us === undefined) return '-';
  if (Math.abs(us) < 1000) return `${Math.round(us)}us`;
  if (Math.abs(us) < 1e6) return `${(us / 1000).toFixed(2)}ms`;
  return `${(us / 1e6).toFixed(2)}s`;
}

function median(values) {
  const v = values.filter((x) => typeof x === 'number').sort((a, b) => a - b);
  if (!v.length) return null;
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

/** Median of every numeric field (recursively) over a list of like-shaped objects. */
function medianOf(list) {
  if (list.length === 1) return list[0];
  const out = {};
  for (const k of Object.keys(list[0])) {
    const vals = list.map((o) => o[k]).filter((v) => v !== undefined && v !== null);
    if (typeof vals[0] === 'number') out[k] = round(median(vals), 3);
    else if (vals[0] && typeof vals[0] === 'object' && !Array.isArray(vals[0])) out[k] = medianOf(vals);
    else out[k] = vals[0];
  }
  return out;
}

/** Newest modification time (ms) of the built files: tells whether dist/ was rebuilt during the run. */
function distStamp(dir = join(ROOT, 'dist')) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, distStamp(p));
    else if (e.name.endsWith('.js')) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function probe(url, headers = {}) {
  return new Promise((resolve) => {
    const req = request(url, { agent: false, timeout: 2000, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body, headers: res.headers }));
      res.on('error', () => resolve(null));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(null));
    req.end();
  });
}

/** Polls `url` until it answers 200 with the upstream's body (or the child dies / time runs out). */
async function waitReady(url, child, headers = {}, ms = 15_000) {
  const deadline = Date.now() + ms;
  let last = null;
  while (Date.now() < deadline) {
    if (child && !alive(child)) throw new Error(`${child.label} exited:\n${child.output}`);
    last = await probe(url, headers);
    if (last && last.status === 200 && last.body === BODY) return last;
    await sleep(50);
  }
  throw new Error(`${url} did not answer 200 "${BODY}" within ${ms} ms (last: ${last ? `${last.status} ${JSON.stringify(last.body).slice(0, 200)}` : 'no answer'})${child ? `\n${child.output}` : ''}`);
}

function turnpikeConfig(port, upstreamUrl, issuer) {
  const jwt = `{issuer: "${issuer}", audiences: ["${AUDIENCE}"], consumer_claim: client_id}`;
  return `# generated by bench/auth.mjs
listen: 127.0.0.1:${port}
access_log: {enabled: false}
consumers:
  - name: bench
    credentials:
      - {type: key-auth, key: ${API_KEY}}
services:
  - name: bench
    url: ${upstreamUrl}
    routes:
      - name: plain
        paths: [/plain]
      - name: jwt
        paths: [/jwt]
        plugins:
          - name: jwt
            config: ${jwt}
      - name: jwt-nocache
        paths: [/jwt-nocache]
        plugins:
          - name: jwt
            config: {issuer: "${issuer}", audiences: ["${AUDIENCE}"], consumer_claim: client_id, cache: false}
      - name: key
        paths: [/key]
        plugins:
          - name: key-auth
`;
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const unknown = SELECTED.filter((n) => !ROUTES.some((r) => r.name === n));
  if (unknown.length) throw new Error(`BENCH_ROUTES: unknown route(s) ${unknown.join(', ')} (known: ${ROUTES.map((r) => r.name).join(', ')})`);
  const routes = ROUTES.filter((r) => SELECTED.includes(r.name));

  const taskset = which('taskset', ['/usr/bin', '/bin']);
  const wrk = which('wrk', ['/usr/bin', '/usr/local/bin']);
  const autocannon = join(dirname(require.resolve('autocannon/package.json')), 'autocannon.js');
  const tool = env.BENCH_TOOL === 'autocannon' || !wrk ? 'autocannon' : 'wrk';
  if (env.BENCH_TOOL === 'wrk' && !wrk) throw new Error('BENCH_TOOL=wrk but wrk is not installed');

  let loadCpu = null;
  let proxyCpu = null;
  if (taskset) {
    const cpus = allowedCpus(taskset);
    if (cpus.length >= 2) [loadCpu, proxyCpu] = [String(cpus[0]), String(cpus[1])];
  }
  const pin = (cpu, cmd, args) => (cpu !== null ? [taskset, ['-c', cpu, cmd, ...args]] : [cmd, args]);
  const notes = [];
  if (loadCpu === null) notes.push(taskset ? 'fewer than 2 usable CPUs: no pinning' : 'taskset not found: no pinning');
  if (tool === 'autocannon') {
    notes.push(wrk ? 'BENCH_TOOL=autocannon' : 'wrk not found: using autocannon (req/s and latency are not comparable with wrk runs)');
    notes.push('autocannon latencies have 1 ms resolution');
  }
  if (PROFILE_DIR) notes.push(`profiling into ${PROFILE_DIR}: numbers are NOT representative`);

  const machine = {
    nproc: availableParallelism(),
    cpu: cpuModel(),
    kernel: `${platform()} ${release()}`,
    node: process.version,
    undici: require('undici/package.json').version,
    jose: require('jose/package.json').version,
    turnpike: JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version,
    tool: tool === 'wrk' ? sh(wrk, ['-v']).split('\n')[0].replace(/\s+Copyright.*$/, '') : `autocannon ${require('autocannon/package.json').version}`,
  };
  const git = {
    commit: sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']) || null,
    src_dirty: sh('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src']) !== '',
    turnpike_entry: relative(ROOT, TURNPIKE_BIN),
  };

  console.log(`Turnpike authentication benchmark: ${DURATION}s at ${CONNS} connections, ${C1_DURATION}s at 1 connection, ${WARMUP}s warm-up per route, ${ROUNDS} round(s)`);
  console.log(`machine: ${machine.nproc} CPUs, ${machine.cpu}, ${machine.kernel}, node ${machine.node}, jose ${machine.jose}`);
  console.log(`load: ${machine.tool}`);
  console.log(`turnpike: ${git.commit ?? '?'}${git.src_dirty ? ' + uncommitted changes in src/' : ''} (${relative(ROOT, TURNPIKE_BIN)})`);
  console.log(loadCpu !== null ? `pinning: load generator + upstream + JWKS server on CPU ${loadCpu}, Turnpike on CPU ${proxyCpu}` : 'pinning: none');
  for (const n of notes) console.log(`note: ${n}`);

  if (env.BENCH_NO_BUILD !== '1') {
    console.log('building (npm run build)...');
    const b = spawnSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, encoding: 'utf8', timeout: 180_000 });
    if (b.status !== 0) throw new Error(`npm run build failed:\n${b.stdout}${b.stderr}`);
  }
  if (!existsSync(join(ROOT, 'dist/cli/main.js'))) throw new Error('dist/ is missing: run npm run build');
  const builtAt = distStamp();

  tmp = mkdtempSync(join(tmpdir(), 'turnpike-bench-auth-'));
  if (PROFILE_DIR) mkdirSync(PROFILE_DIR, { recursive: true });

  // The upstream and the identity provider, on the load generator's CPU.
  const upstream = start('upstream', ...pin(loadCpu, process.execPath, [join(ROOT, 'bench/upstream.mjs'), '0']));
  const upPort = Number((await waitFor(upstream, /LISTENING ([0-9]+)/))[1]);
  const upstreamUrl = `http://127.0.0.1:${upPort}`;
  await waitReady(`${upstreamUrl}/`, upstream);

  const jwks = start('jwks', ...pin(loadCpu, process.execPath, [fileURLToPath(import.meta.url), '--jwks-server', '0']));
  await waitFor(jwks, /LISTENING ([0-9]+)/);
  const issuer = /^ISSUER (\S+)$/m.exec(jwks.output)[1];
  const token = /^TOKEN (\S+)$/m.exec(jwks.output)[1];
  const jwksStats = async () => {
    const r = await probe(`${issuer}/stats`);
    return r && r.status === 200 ? JSON.parse(r.body) : null;
  };
  console.log(`identity provider: ${issuer} (ES256, kid ${KID}); token ${token.length} bytes`);

  const headersFor = (route) => (route.header === 'bearer' ? { authorization: `Bearer ${token}` } : route.header === 'apikey' ? { apikey: API_KEY } : {});

  /** Starts the load generator; `done` resolves with the parsed result. */
  function startLoad(url, headers, conns, seconds) {
    let child;
    if (tool === 'wrk') {
      const h = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
      child = start(`wrk -c${conns}`, ...pin(loadCpu, wrk, ['-t1', `-c${conns}`, `-d${seconds}s`, '--timeout', '5s', '--latency', ...h, url]));
    } else {
      const h = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}=${v}`]);
      child = start(`autocannon -c${conns}`, ...pin(loadCpu, process.execPath, [autocannon, '-c', String(conns), '-d', String(seconds), '-j', ...h, url]));
    }
    const done = runToEnd(child, (seconds + 20) * 1000).then((out) => (tool === 'wrk' ? parseWrk(out) : parseAutocannon(out, seconds)));
    return { child, done };
  }

  /** One measurement, with CPU accounting of the upstream, the JWKS server, Turnpike and the load generator. */
  async function measure(url, headers, conns, seconds, target) {
    const groups = [{ name: 'upstream', pgid: upstream.pid }, { name: 'jwks', pgid: jwks.pid }, { name: 'turnpike', pgid: target.pid }];
    const before = await waitQuiet(groups, QUIET_WAIT * 1000);
    const sample = startCpuSample(groups, true);
    const t0 = process.hrtime.bigint();
    const r = await startLoad(url, headers, conns, seconds).done;
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    Object.assign(r, endCpuSample(sample));
    // CPU time Turnpike spends per request: steadier than req/s on a noisy machine.
    if (r.requests) r.proxy_cpu_us_per_req = round((r.process_cpu_pct.turnpike / 100) * secs * 1e6 / r.requests, 1);
    r.other_cpu_before_pct = before;
    return r;
  }

  /** Measures, repeating (at most RETRIES times) while other processes disturb the machine. */
  async function measureClean(label, url, headers, conns, seconds, target) {
    let best = null;
    for (let attempt = 0; attempt <= RETRIES; attempt++) {
      const r = await measure(url, headers, conns, seconds, target);
      if (best === null || r.process_cpu_pct.other < best.process_cpu_pct.other) best = { ...r, attempts: attempt + 1 };
      if (r.process_cpu_pct.other <= OTHER_MAX || attempt === RETRIES || interrupted) break;
      console.log(`  ${label}: processes outside the benchmark used ${r.process_cpu_pct.other}% CPU; measuring again (${attempt + 1}/${RETRIES})`);
    }
    return best;
  }

  const nodeArgs = (name) => (PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`, `--cpu-prof-name=auth-${name}-${Date.now()}.cpuprofile`] : []);

  /** A fresh Turnpike with the four routes. */
  async function startTurnpike(profileName) {
    const port = await freePort();
    const file = join(tmp, 'turnpike.yaml');
    writeFileSync(file, turnpikeConfig(port, upstreamUrl, issuer));
    const child = start('turnpike', ...pin(proxyCpu, process.execPath, [...nodeArgs(profileName), TURNPIKE_BIN, 'start', '--config', file]), {
      TURNPIKE_LOG_LEVEL: 'silent',
    });
    return { base: `http://127.0.0.1:${port}`, child };
  }

  /** Every route answers as it should, with and without credentials (before any load). */
  async function checkRoutes(base, child) {
    for (const r of ROUTES) {
      const ok = await waitReady(`${base}${r.path}`, child, headersFor(r));
      if (!/turnpike/.test(String(ok.headers.via))) throw new Error(`${r.path}: expected a Via: turnpike response header, got ${ok.headers.via}`);
      const bare = await probe(`${base}${r.path}`);
      if (bare?.status !== r.bare) throw new Error(`${r.path} without credentials answered ${bare?.status}, expected ${r.bare}`);
      if (r.header === 'bearer' && r.bare === 401) {
        const forged = await probe(`${base}${r.path}`, { authorization: `Bearer ${token.slice(0, -4)}AAAA` });
        if (forged?.status !== 401) throw new Error(`${r.path} with a bad signature answered ${forged?.status}, expected 401`);
      }
      if (r.header === 'apikey') {
        const wrong = await probe(`${base}${r.path}`, { apikey: 'not-the-key-000000' });
        if (wrong?.status !== 401) throw new Error(`${r.path} with a wrong key answered ${wrong?.status}, expected 401`);
      }
    }
  }

  // Once, before measuring: the config works and every route enforces what it should.
  {
    const h = await startTurnpike('check');
    try {
      await checkRoutes(h.base, h.child);
    } finally {
      await stop(h.child);
    }
    console.log('routes checked: 200 with credentials; 401 without, with a bad signature, with a wrong key');
  }

  const results = Object.fromEntries(routes.map((r) => [r.name, { path: r.path, description: r.desc, rounds: [] }]));
  const roundRatios = [];
  for (let roundNo = 1; roundNo <= ROUNDS && !interrupted; roundNo++) {
    if (ROUNDS > 1) console.log(`\n=== round ${roundNo}/${ROUNDS}`);
    // Rotate the order every round so that no route is always first or last.
    const order = routes.map((_, i) => routes[(i + roundNo - 1) % routes.length]);
    const thisRound = {};
    for (const route of order) {
      if (interrupted) break;
      const res = results[route.name];
      if (res.error) continue;
      console.log(`\n[${route.name}] ${route.path}: ${route.desc}`);
      let h = null;
      try {
        h = await startTurnpike(`${route.name}-r${roundNo}`);
        const url = `${h.base}${route.path}`;
        const headers = headersFor(route);
        await waitReady(url, h.child, headers);
        const statsBefore = await jwksStats();
        console.log(`  warm-up ${WARMUP}s...`);
        const warm = await startLoad(url, headers, CONNS, WARMUP).done;
        if (warm.non_2xx || warm.socket_errors) throw new Error(`warm-up: ${warm.non_2xx} non-2xx responses, ${warm.socket_errors} socket errors`);
        const c64 = await measureClean(`c${CONNS}`, url, headers, CONNS, DURATION, h.child);
        const cpu = c64.process_cpu_pct;
        console.log(`  c${CONNS}: ${fmtRps(c64.rps)} req/s, p50 ${fmtUs(c64.p50_us)}, p99 ${fmtUs(c64.p99_us)}; CPU: turnpike ${cpu.turnpike}% (${c64.proxy_cpu_us_per_req} us/req), upstream ${cpu.upstream}%, jwks ${cpu.jwks}%, load ${cpu.load}%, other ${cpu.other}%`);
        const c1 = await measureClean('c1', url, headers, 1, C1_DURATION, h.child);
        console.log(`  c1:  ${fmtRps(c1.rps)} req/s, p50 ${fmtUs(c1.p50_us)}, p99 ${fmtUs(c1.p99_us)}; other CPU ${c1.process_cpu_pct.other}%`);
        const statsAfter = await jwksStats();
        for (const [label, r] of [[`c${CONNS}`, c64], ['c1', c1]]) {
          if (r.process_cpu_pct.other > OTHER_MAX) console.log(`  WARNING ${label}: processes outside the benchmark used ${r.process_cpu_pct.other}% CPU during the measurement`);
          // A 401 is far cheaper than a 200: a run with failures does not measure authentication.
          if (r.socket_errors || r.non_2xx) throw new Error(`${label}: ${r.socket_errors} socket errors, ${r.non_2xx} non-2xx/3xx responses`);
        }
        const idp = statsBefore && statsAfter
          ? { discovery: statsAfter.discovery - statsBefore.discovery, jwks: statsAfter.jwks - statsBefore.jwks }
          : null;
        res.rounds.push({ round: roundNo, [`c${CONNS}`]: c64, c1, warmup_requests: warm.requests, idp_fetches_during_load: idp });
        thisRound[route.name] = c64.rps;
      } catch (err) {
        if (interrupted) break;
        console.log(`  FAILED: ${err.message}`);
        res.error = err.message.slice(0, 4000);
      } finally {
        if (h?.child) await stop(h.child);
      }
    }
    roundRatios.push({
      round: roundNo,
      jwt_vs_plain: ratio(thisRound.jwt, thisRound.plain),
      jwt_nocache_vs_plain: ratio(thisRound['jwt-nocache'], thisRound.plain),
      key_vs_plain: ratio(thisRound.key, thisRound.plain),
      ...('plain-bearer' in thisRound ? { plain_bearer_vs_plain: ratio(thisRound['plain-bearer'], thisRound.plain), jwt_vs_plain_bearer: ratio(thisRound.jwt, thisRound['plain-bearer']) } : {}),
    });
  }
  if (interrupted) return;

  // Summary per route: the round itself, or the median of every number over the rounds.
  for (const r of Object.values(results)) {
    if (!r.rounds.length) continue;
    for (const k of [`c${CONNS}`, 'c1']) r[k] = medianOf(r.rounds.map((x) => x[k]));
  }
  const plain = results.plain;
  for (const r of Object.values(results)) {
    if (!r.c1 || !plain?.c1 || r === plain) continue;
    // What the route's plugin adds: 1-connection p50 and CPU per request, over plain (medians).
    r.added_p50_c1_us = round(r.c1.p50_us - plain.c1.p50_us, 1);
    r.added_cpu_us_per_req = round(r[`c${CONNS}`].proxy_cpu_us_per_req - plain[`c${CONNS}`].proxy_cpu_us_per_req, 1);
  }

  // Ratios: per round (same round), and their median.
  const ratios = {};
  for (const k of ['jwt_vs_plain', 'jwt_nocache_vs_plain', 'key_vs_plain', ...(SELECTED.includes('plain-bearer') ? ['plain_bearer_vs_plain', 'jwt_vs_plain_bearer'] : [])]) {
    const each = roundRatios.map((x) => x[k]);
    ratios[k] = { median: median(each), rounds: each };
  }
  const jwtRatio = ratios.jwt_vs_plain.median;
  const acceptance = {
    jwt_vs_plain_min: JWT_MIN_RATIO,
    jwt_ok: jwtRatio === null ? null : jwtRatio >= JWT_MIN_RATIO,
  };

  // Table.
  const cols = ['route', `req/s c${CONNS}`, `p50 c${CONNS}`, `p99 c${CONNS}`, 'p50 c1', 'p99 c1', 'added p50 c1', 'turnpike CPU', 'CPU/req', 'added CPU/req', `CPU${loadCpu ?? '0'} busy`, 'other CPU'];
  const rows = [];
  for (const route of routes) {
    const r = results[route.name];
    const m = r[`c${CONNS}`];
    if (!m) {
      rows.push([route.name, 'FAILED', ...Array(cols.length - 2).fill('')]);
      continue;
    }
    rows.push([
      route.name, fmtRps(m.rps), fmtUs(m.p50_us), fmtUs(m.p99_us), fmtUs(r.c1.p50_us), fmtUs(r.c1.p99_us),
      r === plain ? '-' : fmtUs(r.added_p50_c1_us),
      `${m.process_cpu_pct.turnpike ?? '?'}%`,
      `${m.proxy_cpu_us_per_req ?? '?'}us`,
      r === plain ? '-' : `${r.added_cpu_us_per_req ?? '?'}us`,
      loadCpu !== null && m.cpu_busy_pct[loadCpu] !== undefined ? `${m.cpu_busy_pct[loadCpu]}%` : '-',
      `${Math.max(m.process_cpu_pct.other ?? 0, r.c1.process_cpu_pct.other ?? 0)}%`,
    ]);
  }
  const widths = cols.map((c, i) => Math.max(c.length, ...rows.map((r) => String(r[i]).length)));
  const line = (r) => r.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ').trimEnd();
  console.log(`\n${line(cols)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}`);
  for (const r of rows) console.log(line(r));
  console.log('');
  const each = (k) => (ROUNDS > 1 ? `  (rounds: ${ratios[k].rounds.map(pct).join(', ')})` : '');
  const has = (...names) => names.every((n) => SELECTED.includes(n));
  if (has('jwt', 'plain')) console.log(`jwt / plain:         ${pct(ratios.jwt_vs_plain.median)}  (target >= ${JWT_MIN_RATIO * 100}%: ${acceptance.jwt_ok === null ? 'n/a' : acceptance.jwt_ok ? 'PASS' : 'FAIL'})${each('jwt_vs_plain')}`);
  if (has('jwt-nocache', 'plain')) console.log(`jwt-nocache / plain: ${pct(ratios.jwt_nocache_vs_plain.median)}${each('jwt_nocache_vs_plain')}`);
  if (has('key', 'plain')) console.log(`key / plain:         ${pct(ratios.key_vs_plain.median)}${each('key_vs_plain')}`);
  if (ratios.plain_bearer_vs_plain) {
    console.log(`plain-bearer / plain: ${pct(ratios.plain_bearer_vs_plain.median)}  (the token carried, not checked)${each('plain_bearer_vs_plain')}`);
    console.log(`jwt / plain-bearer:   ${pct(ratios.jwt_vs_plain_bearer.median)}  (the jwt plugin alone)${each('jwt_vs_plain_bearer')}`);
  }
  const idp = await jwksStats();
  if (idp) console.log(`identity provider served ${idp.discovery} discovery and ${idp.jwks} JWKS requests in all (one of each per Turnpike start with a jwt route under load)`);

  // What was measured must be one build: warn when dist/ or the commit changed meanwhile.
  const headNow = sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']) || null;
  if (distStamp() !== builtAt) notes.push('dist/ was rebuilt during the run: the routes may have been measured on different builds');
  if (headNow !== git.commit) notes.push(`HEAD moved from ${git.commit} to ${headNow} during the run`);
  for (const n of notes.slice(-2)) if (/during the run/.test(n)) console.log(`WARNING: ${n}`);

  const out = {
    date: new Date().toISOString(),
    machine,
    git,
    method: {
      tool,
      connections: CONNS,
      duration_s: DURATION,
      c1_duration_s: C1_DURATION,
      warmup_s: WARMUP,
      rounds: ROUNDS,
      retries: RETRIES,
      load_cpu: loadCpu,
      proxy_cpu: proxyCpu,
      upstream_body: BODY,
      token: { alg: 'ES256', kid: KID, bytes: token.length, aud: AUDIENCE, client_id: CLIENT_ID, scope: 'read', expires_in_s: 3600 },
      notes,
    },
    results,
    ratios,
    round_ratios: roundRatios,
    acceptance,
    idp_requests_total: idp,
  };
  const file = resolve(env.BENCH_OUT || join(ROOT, 'bench/results/auth.json'));
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
  console.log(`\nwrote ${relative(process.cwd(), file)}`);
  const failed = Object.entries(results).filter(([, r]) => r.error).map(([n]) => n);
  if (failed.length) {
    console.log(`failed routes: ${failed.join(', ')}`);
    process.exitCode = 1;
  }
}

// ---------------------------------------------------------------------------------------------

if (process.argv[2] === '--jwks-server') {
  jwksServer();
} else {
  main()
    .catch((err) => {
      console.error(`\nbenchmark failed: ${err.stack ?? err}`);
      process.exitCode = 1;
    })
    .finally(() => cleanup());
}
