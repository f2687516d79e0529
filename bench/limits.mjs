#!/usr/bin/env node
/**
 * `npm run bench:limits`: what rate limiting costs, in one run. One trivial upstream
 * (bench/upstream.mjs), one Turnpike config with two routes to the same service:
 *
 *   plain    /plain    no plugins
 *   limited  /limited  rate-limit {limit: 100000000, window: 1m, by: ip} (never refuses)
 *
 * measured in three scenarios, each with a fresh Turnpike per route and round:
 *
 *   w1     workers: 1, policy local (in-memory counters in the one process)
 *   w2     workers: 2 (a primary + 2 workers; the in-memory counters live in the primary and
 *          the workers ask it over the cluster IPC channel, one round trip per decision)
 *   redis  workers: 1, policy redis against a real redis-server (/usr/bin/redis-server or
 *          BENCH_REDIS; --save '' --appendonly no, 127.0.0.1, a free port), top-level
 *          `redis: redis://127.0.0.1:PORT`
 *
 * Per route: a warm-up at 64 connections, then BENCH_DURATION seconds at 64 connections (req/s,
 * p50, p99, Turnpike CPU and CPU per request). wrk when installed, else autocannon. Before
 * measuring, every scenario is checked once: /plain answers without RateLimit headers, /limited
 * with them (a policy-redis limit whose store fails lets requests through *without* headers
 * (fault: open), so a missing header means the limiter was not measured); for redis, the
 * server's command count must grow with the requests.
 *
 * Pinning (taskset, two CPUs): the load generator, the upstream and redis-server on the first
 * CPU; Turnpike alone on the second with workers: 1. With workers: 2 Turnpike (primary and both
 * workers) is NOT pinned: it may use both CPUs, sharing the first with the load generator, so
 * its absolute req/s is not comparable with w1; compare plain and limited within w2.
 *
 * Ratios (req/s at 64 connections, same round): limited/plain per scenario; the summary is the
 * median over the rounds. Acceptance (the issue): w1 limited keeps >= 90% of plain's req/s.
 * Results: a table on stdout and bench/results/limits.json.
 *
 * Environment (as bench/run.mjs):
 *   BENCH_DURATION    seconds per measurement (default 8)
 *   BENCH_WARMUP      warm-up seconds per route (default 2)
 *   BENCH_ROUNDS      rounds (default 2); route and scenario order rotate every round
 *   BENCH_SCENARIOS   comma list (default w1,w2,redis)
 *   BENCH_TOOL        wrk | autocannon (default: wrk when installed)
 *   BENCH_PROFILE     a directory: run Turnpike with --cpu-prof, one subdirectory per scenario,
 *                     route and round (limits-<scenario>-<route>-r<round>/; with workers every
 *                     process writes its own file there); numbers of such a run are not
 *                     comparable; summarize with bench/profile.mjs
 *   BENCH_REDIS       path of redis-server (default /usr/bin/redis-server or on PATH); missing
 *                     = the redis scenario is skipped with a note
 *   BENCH_OUT         where to write the JSON results (default bench/results/limits.json)
 *   BENCH_NO_BUILD    1 = do not run `npm run build` first
 *   BENCH_TURNPIKE    path of another Turnpike entry point to measure instead of bin/turnpike.js
 *   BENCH_KEEP_TMP    1 = keep the temp dir (configs, process output)
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
import { request } from 'node:http';
import { createRequire } from 'node:module';
import { parseWrk, parseAutocannon } from './parse.mjs';

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const require = createRequire(import.meta.url);
const env = process.env;

// ---------------------------------------------------------------------------------------------
// Settings.

const num = (v, d) => (v !== undefined && v !== '' && Number(v) > 0 ? Number(v) : d);
const DURATION = Math.round(num(env.BENCH_DURATION, 8));
const WARMUP = Math.round(num(env.BENCH_WARMUP, 2));
const CONNS = 64;
const ROUNDS = Math.max(1, Math.round(num(env.BENCH_ROUNDS, 2)));
const RETRIES = env.BENCH_RETRIES !== undefined && /^[0-9]+$/.test(env.BENCH_RETRIES) ? Number(env.BENCH_RETRIES) : 2;
const QUIET_WAIT = num(env.BENCH_QUIET_WAIT, 60);
/** CPU % (of one CPU) that processes outside the benchmark may use before a measurement counts as disturbed. */
const OTHER_MAX = 5;
const TURNPIKE_BIN = resolve(env.BENCH_TURNPIKE || join(ROOT, 'bin/turnpike.js'));
const PROFILE_DIR = env.BENCH_PROFILE ? resolve(env.BENCH_PROFILE) : null;
const BODY = 'hello world';
/** The issue's acceptance: with workers: 1, the in-memory limited route keeps at least this share of plain's req/s. */
const MIN_RATIO = 0.9;
const LIMIT = 100_000_000;

const SCENARIOS = [
  { name: 'w1', workers: 1, policy: 'local', pinned: true, desc: 'workers: 1, in-memory counters' },
  { name: 'w2', workers: 2, policy: 'local', pinned: false, desc: 'workers: 2, in-memory counters in the primary (IPC), Turnpike not pinned' },
  { name: 'redis', workers: 1, policy: 'redis', pinned: true, desc: 'workers: 1, policy redis (redis-server on the load CPU)' },
];
const ROUTES = [
  { name: 'plain', path: '/plain' },
  { name: 'limited', path: '/limited' },
];
const SELECTED = (env.BENCH_SCENARIOS ?? SCENARIOS.map((s) => s.name).join(',')).split(',').map((s) => s.trim()).filter(Boolean);

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

function turnpikeConfig(port, upstreamUrl, scenario, redisPort) {
  const policy = scenario.policy === 'redis' ? ', policy: redis' : '';
  return `# generated by bench/limits.mjs (scenario ${scenario.name})
listen: 127.0.0.1:${port}
access_log: {enabled: false}
workers: ${scenario.workers}
${scenario.policy === 'redis' ? `redis: redis://127.0.0.1:${redisPort}\n` : ''}services:
  - name: bench
    url: ${upstreamUrl}
    routes:
      - name: plain
        paths: [/plain]
      - name: limited
        paths: [/limited]
        plugins:
          - name: rate-limit
            config: {limit: ${LIMIT}, window: 1m, by: ip${policy}}
`;
}

/** Redis's total command count (INFO stats total_commands_processed), or null. */
function redisCommands(redisCli, port) {
  if (!redisCli) return null;
  const m = /total_commands_processed:([0-9]+)/.exec(sh(redisCli, ['-h', '127.0.0.1', '-p', String(port), 'info', 'stats']));
  return m ? Number(m[1]) : null;
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const unknown = SELECTED.filter((n) => !SCENARIOS.some((s) => s.name === n));
  if (unknown.length) throw new Error(`BENCH_SCENARIOS: unknown scenario(s) ${unknown.join(', ')} (known: ${SCENARIOS.map((s) => s.name).join(', ')})`);
  let scenarios = SCENARIOS.filter((s) => SELECTED.includes(s.name));

  const taskset = which('taskset', ['/usr/bin', '/bin']);
  const wrk = which('wrk', ['/usr/bin', '/usr/local/bin']);
  const autocannon = join(dirname(require.resolve('autocannon/package.json')), 'autocannon.js');
  const tool = env.BENCH_TOOL === 'autocannon' || !wrk ? 'autocannon' : 'wrk';
  if (env.BENCH_TOOL === 'wrk' && !wrk) throw new Error('BENCH_TOOL=wrk but wrk is not installed');
  const redisServer = env.BENCH_REDIS !== undefined
    ? (existsSync(env.BENCH_REDIS) ? resolve(env.BENCH_REDIS) : null)
    : which('redis-server', ['/usr/bin', '/usr/local/bin']);
  const redisCli = redisServer ? (which('redis-cli', [dirname(redisServer), '/usr/bin', '/usr/local/bin'])) : null;

  let loadCpu = null;
  let proxyCpu = null;
  if (taskset) {
    const cpus = allowedCpus(taskset);
    if (cpus.length >= 2) [loadCpu, proxyCpu] = [String(cpus[0]), String(cpus[1])];
  }
  const pin = (cpu, cmd, args) => (cpu !== null ? [taskset, ['-c', cpu, cmd, ...args]] : [cmd, args]);
  const notes = [];
  if (loadCpu === null) notes.push(taskset ? 'fewer than 2 usable CPUs: no pinning' : 'taskset not found: no pinning');
  if (loadCpu !== null && scenarios.some((s) => !s.pinned)) notes.push('w2 (workers: 2): Turnpike is not pinned (primary and workers may use both CPUs, the first shared with the load generator and the upstream); its req/s is not comparable with w1');
  if (tool === 'autocannon') {
    notes.push(wrk ? 'BENCH_TOOL=autocannon' : 'wrk not found: using autocannon (req/s and latency are not comparable with wrk runs)');
    notes.push('autocannon latencies have 1 ms resolution');
  }
  if (!redisServer && scenarios.some((s) => s.policy === 'redis')) {
    notes.push('redis-server not found: the redis scenario is skipped');
    scenarios = scenarios.filter((s) => s.policy !== 'redis');
  }
  if (PROFILE_DIR) notes.push(`profiling into ${PROFILE_DIR}: numbers are NOT representative`);

  const machine = {
    nproc: availableParallelism(),
    cpu: cpuModel(),
    kernel: `${platform()} ${release()}`,
    node: process.version,
    undici: require('undici/package.json').version,
    ioredis: require('ioredis/package.json').version,
    turnpike: JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version,
    tool: tool === 'wrk' ? sh(wrk, ['-v']).split('\n')[0].replace(/\s+Copyright.*$/, '') : `autocannon ${require('autocannon/package.json').version}`,
    redis: redisServer ? (/v=([0-9.]+)/.exec(sh(redisServer, ['--version']))?.[1] ?? '?') : null,
  };
  const git = {
    commit: sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']) || null,
    src_dirty: sh('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src']) !== '',
    turnpike_entry: relative(ROOT, TURNPIKE_BIN),
  };

  console.log(`Turnpike rate-limit benchmark: ${DURATION}s at ${CONNS} connections, ${WARMUP}s warm-up per route, ${ROUNDS} round(s)`);
  console.log(`machine: ${machine.nproc} CPUs, ${machine.cpu}, ${machine.kernel}, node ${machine.node}, redis ${machine.redis ?? 'not installed'}, ioredis ${machine.ioredis}`);
  console.log(`load: ${machine.tool}`);
  console.log(`turnpike: ${git.commit ?? '?'}${git.src_dirty ? ' + uncommitted changes in src/' : ''} (${relative(ROOT, TURNPIKE_BIN)})`);
  console.log(loadCpu !== null ? `pinning: load generator + upstream + redis on CPU ${loadCpu}, Turnpike (workers: 1) on CPU ${proxyCpu}` : 'pinning: none');
  for (const n of notes) console.log(`note: ${n}`);

  if (env.BENCH_NO_BUILD !== '1') {
    console.log('building (npm run build)...');
    const b = spawnSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, encoding: 'utf8', timeout: 180_000 });
    if (b.status !== 0) throw new Error(`npm run build failed:\n${b.stdout}${b.stderr}`);
  }
  if (!existsSync(join(ROOT, 'dist/cli/main.js'))) throw new Error('dist/ is missing: run npm run build');

  tmp = mkdtempSync(join(tmpdir(), 'turnpike-bench-limits-'));
  if (PROFILE_DIR) mkdirSync(PROFILE_DIR, { recursive: true });

  // The upstream and redis, on the load generator's CPU.
  const upstream = start('upstream', ...pin(loadCpu, process.execPath, [join(ROOT, 'bench/upstream.mjs'), '0']));
  const upPort = Number((await waitFor(upstream, /LISTENING ([0-9]+)/))[1]);
  const upstreamUrl = `http://127.0.0.1:${upPort}`;
  await waitReady(`${upstreamUrl}/`, upstream);

  let redis = null;
  let redisPort = null;
  if (scenarios.some((s) => s.policy === 'redis')) {
    redisPort = await freePort();
    redis = start('redis', ...pin(loadCpu, redisServer, ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', tmp]));
    await waitFor(redis, /Ready to accept connections/);
    console.log(`redis: redis-server ${machine.redis} on 127.0.0.1:${redisPort}`);
  }

  /** Starts the load generator; `done` resolves with the parsed result. */
  function startLoad(url, conns, seconds) {
    let child;
    if (tool === 'wrk') {
      child = start(`wrk -c${conns}`, ...pin(loadCpu, wrk, ['-t1', `-c${conns}`, `-d${seconds}s`, '--timeout', '5s', '--latency', url]));
    } else {
      child = start(`autocannon -c${conns}`, ...pin(loadCpu, process.execPath, [autocannon, '-c', String(conns), '-d', String(seconds), '-j', url]));
    }
    const done = runToEnd(child, (seconds + 20) * 1000).then((out) => (tool === 'wrk' ? parseWrk(out) : parseAutocannon(out, seconds)));
    return { child, done };
  }

  /** One measurement, with CPU accounting of the upstream, redis, Turnpike and the load generator. */
  async function measure(url, conns, seconds, target) {
    const groups = [{ name: 'upstream', pgid: upstream.pid }, { name: 'turnpike', pgid: target.pid }];
    if (redis) groups.push({ name: 'redis', pgid: redis.pid });
    const before = await waitQuiet(groups, QUIET_WAIT * 1000);
    const sample = startCpuSample(groups, true);
    const t0 = process.hrtime.bigint();
    const r = await startLoad(url, conns, seconds).done;
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    Object.assign(r, endCpuSample(sample));
    // CPU time Turnpike (all its processes) spends per request: steadier than req/s on a noisy machine.
    if (r.requests) r.proxy_cpu_us_per_req = round((r.process_cpu_pct.turnpike / 100) * secs * 1e6 / r.requests, 1);
    r.other_cpu_before_pct = before;
    return r;
  }

  /** Measures, repeating (at most RETRIES times) while other processes disturb the machine. */
  async function measureClean(label, url, conns, seconds, target) {
    let best = null;
    for (let attempt = 0; attempt <= RETRIES; attempt++) {
      const r = await measure(url, conns, seconds, target);
      if (best === null || r.process_cpu_pct.other < best.process_cpu_pct.other) best = { ...r, attempts: attempt + 1 };
      if (r.process_cpu_pct.other <= OTHER_MAX || attempt === RETRIES || interrupted) break;
      console.log(`  ${label}: processes outside the benchmark used ${r.process_cpu_pct.other}% CPU; measuring again (${attempt + 1}/${RETRIES})`);
    }
    return best;
  }

  const nodeArgs = (name) => (PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${join(PROFILE_DIR, `limits-${name}`)}`] : []);

  /** A fresh Turnpike for a scenario (both routes in its config). */
  async function startTurnpike(scenario, profileName) {
    const port = await freePort();
    const file = join(tmp, `turnpike-${scenario.name}.yaml`);
    writeFileSync(file, turnpikeConfig(port, upstreamUrl, scenario, redisPort));
    const args = [...nodeArgs(profileName), TURNPIKE_BIN, 'start', '--config', file];
    const child = start('turnpike', ...(scenario.pinned ? pin(proxyCpu, process.execPath, args) : [process.execPath, args]), {
      TURNPIKE_LOG_LEVEL: 'silent',
    });
    return { base: `http://127.0.0.1:${port}`, child };
  }

  /** /plain has no RateLimit headers, /limited has them; with redis, redis counts the decisions. */
  async function checkScenario(scenario) {
    const h = await startTurnpike(scenario, `${scenario.name}-check`);
    try {
      const plain = await waitReady(`${h.base}/plain`, h.child);
      if (!/turnpike/.test(String(plain.headers.via))) throw new Error(`/plain: expected a Via: turnpike response header, got ${plain.headers.via}`);
      if (plain.headers.ratelimit !== undefined) throw new Error(`/plain answered with a RateLimit header (${plain.headers.ratelimit})`);
      const cmds0 = scenario.policy === 'redis' ? redisCommands(redisCli, redisPort) : null;
      let lim = null;
      // policy redis: the first requests may come before the connection to redis is up (fault: open, no header).
      for (let i = 0; i < 50; i++) {
        lim = await waitReady(`${h.base}/limited`, h.child);
        if (lim.headers.ratelimit !== undefined) break;
        await sleep(100);
      }
      if (lim.headers.ratelimit === undefined) throw new Error('/limited answered without a RateLimit header: the limiter did not decide (store failing, fault: open?)');
      const policyHeader = lim.headers['ratelimit-policy'];
      let extra = '';
      if (scenario.policy === 'redis') {
        for (let i = 0; i < 100; i++) await probe(`${h.base}/limited`);
        const cmds1 = redisCommands(redisCli, redisPort);
        if (cmds0 !== null && cmds1 !== null) {
          if (cmds1 - cmds0 < 100) throw new Error(`redis processed ${cmds1 - cmds0} commands for ~100 limited requests: the limit is not counted in redis`);
          extra = `; redis processed ${cmds1 - cmds0} commands for 101+ limited requests`;
        }
      }
      console.log(`[${scenario.name}] checked: /plain without RateLimit headers; /limited with RateLimit-Policy: ${policyHeader}, RateLimit: ${lim.headers.ratelimit}${extra}`);
    } finally {
      await stop(h.child);
    }
  }

  for (const s of scenarios) await checkScenario(s);

  const results = Object.fromEntries(scenarios.map((s) => [s.name, {
    description: s.desc, workers: s.workers, policy: s.policy, turnpike_pinned: s.pinned && loadCpu !== null,
    routes: Object.fromEntries(ROUTES.map((r) => [r.name, { path: r.path, rounds: [] }])),
  }]));
  const roundRatios = [];
  for (let roundNo = 1; roundNo <= ROUNDS && !interrupted; roundNo++) {
    if (ROUNDS > 1) console.log(`\n=== round ${roundNo}/${ROUNDS}`);
    // Rotate scenarios and alternate route order every round: nothing is always first or last.
    const order = scenarios.map((_, i) => scenarios[(i + roundNo - 1) % scenarios.length]);
    const thisRound = { round: roundNo };
    for (const scenario of order) {
      if (interrupted) break;
      const routes = roundNo % 2 ? ROUTES : [...ROUTES].reverse();
      const rps = {};
      for (const route of routes) {
        if (interrupted) break;
        const res = results[scenario.name].routes[route.name];
        if (res.error) continue;
        console.log(`\n[${scenario.name} ${route.name}] ${route.path}: ${scenario.desc}`);
        let h = null;
        try {
          h = await startTurnpike(scenario, `${scenario.name}-${route.name}-r${roundNo}`);
          const url = `${h.base}${route.path}`;
          await waitReady(url, h.child);
          if (route.name === 'limited') {
            // Wait for the limiter to decide (redis connection up), as the check did.
            for (let i = 0; i < 50 && (await probe(url))?.headers?.ratelimit === undefined; i++) await sleep(100);
          }
          const cmds0 = scenario.policy === 'redis' ? redisCommands(redisCli, redisPort) : null;
          console.log(`  warm-up ${WARMUP}s...`);
          const warm = await startLoad(url, CONNS, WARMUP).done;
          if (warm.non_2xx || warm.socket_errors) throw new Error(`warm-up: ${warm.non_2xx} non-2xx responses, ${warm.socket_errors} socket errors`);
          const m = await measureClean(`c${CONNS}`, url, CONNS, DURATION, h.child);
          const cmds1 = scenario.policy === 'redis' ? redisCommands(redisCli, redisPort) : null;
          const cpu = m.process_cpu_pct;
          console.log(`  c${CONNS}: ${fmtRps(m.rps)} req/s, p50 ${fmtUs(m.p50_us)}, p99 ${fmtUs(m.p99_us)}; CPU: turnpike ${cpu.turnpike}% (${m.proxy_cpu_us_per_req} us/req), upstream ${cpu.upstream}%` +
            (redis ? `, redis ${cpu.redis}%` : '') + `, load ${cpu.load}%, other ${cpu.other}%; busy ${Object.entries(m.cpu_busy_pct).map(([c, b]) => `CPU${c} ${b}%`).join(', ')}`);
          if (m.process_cpu_pct.other > OTHER_MAX) console.log(`  WARNING: processes outside the benchmark used ${m.process_cpu_pct.other}% CPU during the measurement`);
          // A 429 or 503 is cheaper than a 200: a run with failures does not measure the limiter.
          if (m.socket_errors || m.non_2xx) throw new Error(`${m.socket_errors} socket errors, ${m.non_2xx} non-2xx/3xx responses`);
          if (cmds0 !== null && cmds1 !== null) {
            m.redis_commands = cmds1 - cmds0;
            if (route.name === 'limited') console.log(`  redis processed ${m.redis_commands} commands (${round(m.redis_commands / ((warm.requests ?? 0) + m.requests), 2)} per request served, warm-up included)`);
          }
          res.rounds.push({ round: roundNo, [`c${CONNS}`]: m, warmup_requests: warm.requests });
          rps[route.name] = m.rps;
        } catch (err) {
          if (interrupted) break;
          console.log(`  FAILED: ${err.message}`);
          res.error = err.message.slice(0, 4000);
        } finally {
          if (h?.child) await stop(h.child);
        }
      }
      thisRound[scenario.name] = ratio(rps.limited, rps.plain);
    }
    roundRatios.push(thisRound);
  }
  if (interrupted) return;

  // Summary: per route the median over the rounds; per scenario the median of the same-round ratios.
  const ratios = {};
  for (const s of scenarios) {
    const sr = results[s.name];
    for (const r of Object.values(sr.routes)) if (r.rounds.length) r[`c${CONNS}`] = medianOf(r.rounds.map((x) => x[`c${CONNS}`]));
    const each = roundRatios.map((x) => x[s.name] ?? null);
    ratios[`${s.name}_limited_vs_plain`] = { median: median(each), rounds: each };
    const p = sr.routes.plain[`c${CONNS}`];
    const l = sr.routes.limited[`c${CONNS}`];
    if (p && l) sr.added_cpu_us_per_req = round(l.proxy_cpu_us_per_req - p.proxy_cpu_us_per_req, 1);
  }
  const w1 = ratios.w1_limited_vs_plain?.median ?? null;
  const acceptance = { w1_limited_vs_plain_min: MIN_RATIO, w1_ok: w1 === null ? null : w1 >= MIN_RATIO };

  // Table.
  const cols = ['scenario', 'route', `req/s c${CONNS}`, 'p50', 'p99', 'turnpike CPU', 'CPU/req', `CPU${loadCpu ?? '0'} busy`, 'other CPU', 'limited/plain'];
  const rows = [];
  for (const s of scenarios) {
    for (const route of ROUTES) {
      const m = results[s.name].routes[route.name][`c${CONNS}`];
      const rat = route.name === 'limited' ? pct(ratios[`${s.name}_limited_vs_plain`].median) : '';
      if (!m) {
        rows.push([s.name, route.name, 'FAILED', '', '', '', '', '', '', rat]);
        continue;
      }
      rows.push([
        s.name, route.name, fmtRps(m.rps), fmtUs(m.p50_us), fmtUs(m.p99_us),
        `${m.process_cpu_pct.turnpike ?? '?'}%`, `${m.proxy_cpu_us_per_req ?? '?'}us`,
        loadCpu !== null && m.cpu_busy_pct[loadCpu] !== undefined ? `${m.cpu_busy_pct[loadCpu]}%` : '-',
        `${m.process_cpu_pct.other ?? '?'}%`, rat,
      ]);
    }
  }
  const widths = cols.map((c, i) => Math.max(c.length, ...rows.map((r) => String(r[i]).length)));
  const line = (r) => r.map((c, i) => (i < 2 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ').trimEnd();
  console.log(`\n${line(cols)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}`);
  for (const r of rows) console.log(line(r));
  console.log('');
  for (const s of scenarios) {
    const r = ratios[`${s.name}_limited_vs_plain`];
    const target = s.name === 'w1' ? `  (target >= ${MIN_RATIO * 100}%: ${acceptance.w1_ok === null ? 'n/a' : acceptance.w1_ok ? 'PASS' : 'FAIL'})` : '';
    console.log(`${s.name.padEnd(5)} limited / plain: ${pct(r.median)}${target}${ROUNDS > 1 ? `  (rounds: ${r.rounds.map(pct).join(', ')})` : ''}`);
  }

  const out = {
    date: new Date().toISOString(),
    machine,
    git,
    method: {
      tool,
      connections: CONNS,
      duration_s: DURATION,
      warmup_s: WARMUP,
      rounds: ROUNDS,
      retries: RETRIES,
      load_cpu: loadCpu,
      proxy_cpu: proxyCpu,
      upstream_body: BODY,
      limited_route: { limit: LIMIT, window: '1m', by: 'ip', algorithm: 'gcra (default)', headers: 'RateLimit-Policy + RateLimit (default)' },
      notes,
    },
    results,
    ratios,
    round_ratios: roundRatios,
    acceptance,
  };
  const file = resolve(env.BENCH_OUT || join(ROOT, 'bench/results/limits.json'));
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
  console.log(`\nwrote ${relative(process.cwd(), file)}`);
  const failed = scenarios.flatMap((s) => Object.entries(results[s.name].routes).filter(([, r]) => r.error).map(([n]) => `${s.name}/${n}`));
  if (failed.length) {
    console.log(`failed: ${failed.join(', ')}`);
    process.exitCode = 1;
  }
}

// ---------------------------------------------------------------------------------------------

main()
  .catch((err) => {
    console.error(`\nbenchmark failed: ${err.stack ?? err}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
