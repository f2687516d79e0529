/**
 * Shared machinery of the benchmark runners (bench/*.mjs): child processes in their own process
 * groups (all killed on exit and on signals), free ports and readiness probes, CPU pinning with
 * taskset, the load generator (wrk or autocannon, parsed by bench/parse.mjs), Linux CPU
 * accounting per process group from /proc, quiet-machine checks, and number formatting.
 *
 * Importing this module has no side effects beyond reading a few constants (CLK_TCK, this
 * process's group); a runner calls `installCleanupHandlers()` once to get the signal handling.
 *
 * bench/run.mjs, bench/auth.mjs, bench/limits.mjs and bench/http2.mjs still carry their own
 * copies of most of these functions (same names, same behaviour); they can switch over here.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, mkdirSync, readdirSync, statSync, accessSync, openSync, closeSync, existsSync, constants } from 'node:fs';
import { tmpdir, availableParallelism, release, platform } from 'node:os';
import { join, dirname, delimiter, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:net';
import { request } from 'node:http';
import { createRequire } from 'node:module';
import { parseWrk, parseAutocannon } from './parse.mjs';

/** The repository root (the directory holding bench/). */
export const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const require = createRequire(import.meta.url);
const env = process.env;

// ---------------------------------------------------------------------------------------------
// Settings from the environment.

/** `value` as a positive number, else `fallback` (unset, empty, zero, negative or not a number). */
export const positive = (value, fallback) => (value !== undefined && value !== '' && Number(value) > 0 ? Number(value) : fallback);

/**
 * The knobs every runner shares (see bench/run.mjs for their meaning):
 * BENCH_DURATION, BENCH_WARMUP, BENCH_ROUNDS, BENCH_RETRIES, BENCH_QUIET_WAIT, BENCH_TURNPIKE,
 * BENCH_PROFILE, BENCH_OUT, BENCH_NO_BUILD, BENCH_KEEP_TMP, BENCH_TOOL.
 * `defaults` may override { duration, warmup, rounds, retries, quietWait } and must give `out`
 * (the JSON file, relative to the repository root).
 */
export function benchSettings(defaults) {
  const d = { duration: 10, warmup: 2, rounds: 1, retries: 2, quietWait: 60, ...defaults };
  const duration = Math.round(positive(env.BENCH_DURATION, d.duration));
  return {
    /** Seconds per 64-connection measurement. */
    duration,
    /** Seconds per 1-connection measurement: half of `duration`, at least 1. */
    c1Duration: Math.max(1, Math.round(duration / 2)),
    warmup: Math.round(positive(env.BENCH_WARMUP, d.warmup)),
    rounds: Math.max(1, Math.round(positive(env.BENCH_ROUNDS, d.rounds))),
    /** Re-measurements allowed while processes outside the benchmark disturb it (0 allowed). */
    retries: env.BENCH_RETRIES !== undefined && /^[0-9]+$/.test(env.BENCH_RETRIES) ? Number(env.BENCH_RETRIES) : d.retries,
    quietWaitMs: positive(env.BENCH_QUIET_WAIT, d.quietWait) * 1000,
    turnpikeBin: resolve(env.BENCH_TURNPIKE || join(ROOT, 'bin/turnpike.js')),
    profileDir: env.BENCH_PROFILE ? resolve(env.BENCH_PROFILE) : null,
    out: resolve(env.BENCH_OUT || join(ROOT, d.out)),
    build: env.BENCH_NO_BUILD !== '1',
    keepTmp: env.BENCH_KEEP_TMP === '1',
    tool: env.BENCH_TOOL || null,
  };
}

// ---------------------------------------------------------------------------------------------
// Processes: each child leads its own process group, so the whole tree it forks can be
// signalled; cleanup() stops every group still alive and removes the temp dirs.

const children = new Set();
const tmpDirs = new Set();
let keepTmp = false;
let interruptedBy = null;

/** Signals a child's whole process group (ignores a group that is already gone). */
export function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    /* already gone */
  }
}

/** True while the child has neither exited nor been killed. */
export const alive = (child) => child.exitCode === null && child.signalCode === null;

/**
 * Starts `cmd args` in its own process group with cwd = ROOT. The child gets `label`, `output`
 * (stdout + stderr, the last 0.5-1 MiB) and `exited` (a promise of {code, signal}).
 * Options: `env` (added to this process's environment); `stdout`: 'pipe' (default, kept in
 * `output`), 'ignore', or a file path the child's stdout is appended to (the runner never
 * reads it: no CPU of the runner's is spent on it).
 */
export function start(label, cmd, args, { env: extraEnv = {}, stdout = 'pipe' } = {}) {
  let fd = null;
  if (stdout !== 'pipe' && stdout !== 'ignore') fd = openSync(stdout, 'a');
  let child;
  try {
    child = spawn(cmd, args, {
      cwd: ROOT,
      detached: true,
      stdio: ['ignore', fd ?? stdout, 'pipe'],
      env: { ...env, ...extraEnv },
    });
  } finally {
    if (fd !== null) closeSync(fd); // the child holds its own copy
  }
  child.label = label;
  child.output = '';
  const keep = (d) => {
    child.output += d.toString();
    if (child.output.length > 1 << 20) child.output = child.output.slice(-(1 << 19));
  };
  child.stdout?.on('data', keep);
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

/** SIGTERM to the child's group, SIGKILL after `graceMs`; resolves when the leader has exited. */
export async function stop(child, graceMs = 5000) {
  if (!child || !children.has(child)) return;
  if (alive(child)) killGroup(child, 'SIGTERM');
  const timer = setTimeout(() => killGroup(child, 'SIGKILL'), graceMs);
  await child.exited;
  clearTimeout(timer);
}

/** A new temp dir (prefix e.g. 'turnpike-bench-x-'), removed by cleanup() unless BENCH_KEEP_TMP=1. */
export function makeTmpDir(prefix, keep = env.BENCH_KEEP_TMP === '1') {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tmpDirs.add(dir);
  keepTmp = keep;
  return dir;
}

/** Stops every child still running and removes (or reports) the temp dirs. */
export async function cleanup() {
  await Promise.all([...children].map((c) => stop(c, 3000)));
  for (const dir of tmpDirs) {
    if (keepTmp) console.error(`temp dir kept: ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
  tmpDirs.clear();
}

/** The signal that interrupted the run (SIGINT, ...), or null. */
export const interrupted = () => interruptedBy;

/**
 * On SIGINT / SIGTERM / SIGHUP: stop every child, remove the temp dirs, exit 130. On any exit:
 * SIGKILL every group still alive. Call once, from the runner (not from a helper process).
 */
export function installCleanupHandlers() {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      if (interruptedBy) return;
      interruptedBy = sig;
      console.error(`\n${sig}: stopping every benchmark process...`);
      cleanup().finally(() => process.exit(130));
    });
  }
  process.on('exit', () => {
    for (const c of children) killGroup(c, 'SIGKILL');
  });
}

/** Resolves with the first match of `re` in the child's output; rejects on exit or timeout. */
export async function waitFor(child, re, ms = 15_000) {
  const end = Date.now() + ms;
  for (;;) {
    const m = re.exec(child.output);
    if (m) return m;
    if (!alive(child)) throw new Error(`${child.label} exited before it was ready:\n${child.output}`);
    if (Date.now() > end) throw new Error(`${child.label} not ready after ${ms} ms:\n${child.output}`);
    await sleep(10);
  }
}

/** Waits for a child to finish within `ms` (SIGKILL after), returning its output; rejects on a non-zero exit. */
export async function runToEnd(child, ms) {
  const timer = setTimeout(() => killGroup(child, 'SIGKILL'), ms);
  const { code, signal } = await child.exited;
  clearTimeout(timer);
  if (code !== 0) throw new Error(`${child.label} failed (${signal ?? `exit ${code}`}):\n${child.output}`);
  return child.output;
}

// ---------------------------------------------------------------------------------------------
// Environment: tools, CPUs, versions, the build.

/** The path of an executable `name` on PATH or in `extraDirs`, or null. */
export function which(name, extraDirs = []) {
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

/** Runs a short command synchronously (10 s at most); its stdout + stderr, trimmed. */
export function sh(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
}

/** The CPUs this process may run on, from `taskset -pc`. */
export function allowedCpus(taskset) {
  const m = /list:\s*([0-9,\-\s]+)$/m.exec(sh(taskset, ['-pc', String(process.pid)]));
  if (!m) return [];
  const cpus = [];
  for (const part of m[1].trim().split(',')) {
    const [a, b] = part.split('-').map(Number);
    for (let c = a; c <= (b ?? a); c++) cpus.push(c);
  }
  return cpus;
}

/** The CPU's model name from /proc/cpuinfo ('unknown' elsewhere). */
export function cpuModel() {
  try {
    return /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1].trim() ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/**
 * CPU pinning as every runner does it: with taskset and at least two allowed CPUs, the load
 * generator and the helpers (upstream, ...) go to the first (`loadCpu`), the process under test
 * alone to the second (`proxyCpu`). `pin(cpu, cmd, args)` returns the [cmd, args] to start
 * (unchanged when there is no pinning). `note` says why there is none.
 */
export function pinning() {
  const taskset = which('taskset', ['/usr/bin', '/bin']);
  let loadCpu = null;
  let proxyCpu = null;
  if (taskset) {
    const cpus = allowedCpus(taskset);
    if (cpus.length >= 2) [loadCpu, proxyCpu] = [String(cpus[0]), String(cpus[1])];
  }
  const note = loadCpu !== null ? null : taskset ? 'fewer than 2 usable CPUs: no pinning' : 'taskset not found: no pinning';
  const pin = (cpu, cmd, args) => (cpu !== null && taskset ? [taskset, ['-c', String(cpu), cmd, ...args]] : [cmd, args]);
  return { taskset, loadCpu, proxyCpu, pin, note };
}

/** Machine facts for the results: CPUs, model, kernel, Node, Turnpike's package version. */
export function machineInfo(extra = {}) {
  return {
    nproc: availableParallelism(),
    cpu: cpuModel(),
    kernel: `${platform()} ${release()}`,
    node: process.version,
    undici: require('undici/package.json').version,
    turnpike: JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version,
    ...extra,
  };
}

/** Version of an installed package (resolved from the repository), or null. */
export function packageVersion(name) {
  try {
    return require(`${name}/package.json`).version;
  } catch {
    return null;
  }
}

/**
 * The commit checked out, read from .git (HEAD, the ref file or packed-refs) without running
 * git; null when it cannot be told. Uncommitted changes are not detected.
 */
export function gitHead(root = ROOT) {
  try {
    let dir = join(root, '.git');
    if (statSync(dir).isFile()) dir = resolve(root, /^gitdir:\s*(.+)$/m.exec(readFileSync(dir, 'utf8'))[1].trim());
    const head = readFileSync(join(dir, 'HEAD'), 'utf8').trim();
    const ref = /^ref:\s*(.+)$/.exec(head)?.[1];
    if (!ref) return head.slice(0, 7);
    const common = existsSync(join(dir, 'commondir')) ? resolve(dir, readFileSync(join(dir, 'commondir'), 'utf8').trim()) : dir;
    for (const base of [dir, common]) {
      if (existsSync(join(base, ref))) return readFileSync(join(base, ref), 'utf8').trim().slice(0, 7);
    }
    for (const base of [dir, common]) {
      const packed = join(base, 'packed-refs');
      if (!existsSync(packed)) continue;
      const line = readFileSync(packed, 'utf8').split('\n').find((l) => l.endsWith(` ${ref}`));
      if (line) return line.slice(0, 7);
    }
  } catch {
    /* not a checkout */
  }
  return null;
}

/** Newest modification time (ms) of the built files: tells whether dist/ was rebuilt during a run. */
export function distStamp(dir = join(ROOT, 'dist')) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, distStamp(p));
    else if (e.name.endsWith('.js')) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

/** `npm run build` unless `build` is false; throws when it fails or dist/ is missing afterwards. */
export function buildTurnpike(build = true) {
  if (build) {
    console.log('building (npm run build)...');
    const b = spawnSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, encoding: 'utf8', timeout: 180_000 });
    if (b.status !== 0) throw new Error(`npm run build failed:\n${b.stdout}${b.stderr}`);
  }
  if (!existsSync(join(ROOT, 'dist/cli/main.js'))) throw new Error('dist/ is missing: run npm run build');
}

/** node flags that make a process write a V8 CPU profile `<name>-<time>.cpuprofile` into `dir` on exit ([] when dir is null). */
export const cpuProfileArgs = (dir, name) => (dir ? ['--cpu-prof', `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${name}-${Date.now()}.cpuprofile`] : []);

// ---------------------------------------------------------------------------------------------
// The load generator.

/**
 * Picks wrk (when installed) or autocannon, or what `requested` (BENCH_TOOL) says. Returns
 * { tool, version, notes, run(url, {headers, conns, seconds}) }; `run` starts it on `cpu`
 * (through `pin`) and returns { child, done }, `done` resolving with parseWrk / parseAutocannon's
 * { rps, p50_us, p99_us, requests, socket_errors, non_2xx }.
 */
export function loadGenerator({ requested = env.BENCH_TOOL, pin = (_c, cmd, args) => [cmd, args], cpu = null } = {}) {
  const wrk = which('wrk', ['/usr/bin', '/usr/local/bin']);
  const autocannon = join(dirname(require.resolve('autocannon/package.json')), 'autocannon.js');
  if (requested === 'wrk' && !wrk) throw new Error('BENCH_TOOL=wrk but wrk is not installed');
  const tool = requested === 'autocannon' || !wrk ? 'autocannon' : 'wrk';
  const notes = [];
  if (tool === 'autocannon') {
    notes.push(wrk ? 'BENCH_TOOL=autocannon' : 'wrk not found: using autocannon (req/s and latency are not comparable with wrk runs)');
    notes.push('autocannon latencies have 1 ms resolution');
  }
  const version = tool === 'wrk' ? sh(wrk, ['-v']).split('\n')[0].replace(/\s+Copyright.*$/, '') : `autocannon ${require('autocannon/package.json').version}`;
  function run(url, { headers = {}, conns, seconds }) {
    let child;
    if (tool === 'wrk') {
      const h = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
      child = start(`wrk -c${conns}`, ...pin(cpu, wrk, ['-t1', `-c${conns}`, `-d${seconds}s`, '--timeout', '5s', '--latency', ...h, url]));
    } else {
      const h = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}=${v}`]);
      child = start(`autocannon -c${conns}`, ...pin(cpu, process.execPath, [autocannon, '-c', String(conns), '-d', String(seconds), '-j', ...h, url]));
    }
    const done = runToEnd(child, (seconds + 20) * 1000).then((out) => (tool === 'wrk' ? parseWrk(out) : parseAutocannon(out, seconds)));
    return { child, done };
  }
  return { tool, version, notes, run };
}

// ---------------------------------------------------------------------------------------------
// CPU accounting (Linux): per-CPU busy time from /proc/stat, per-process-group CPU time from
// /proc/PID/stat, the load generator's from this process's reaped children, and "other" (every
// process outside the benchmark and outside this runner's own process group).

/** CPU % (of one CPU) that processes outside the benchmark may use before a measurement counts as disturbed. */
export const OTHER_MAX = 5;

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

/** Busy / total jiffies per CPU: { "0": {idle, total}, ... } ({} when not Linux). */
export function cpuTimes() {
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

/** utime+stime ticks of every process: Map "pid/starttime" -> [pgid, ticks]. */
export function procTicks() {
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
export function reapedChildTicks() {
  try {
    const f = statFields(readFileSync('/proc/self/stat', 'utf8'));
    return Number(f[13]) + Number(f[14]);
  } catch {
    return 0;
  }
}

/**
 * Starts a CPU sample over `groups` ([{name, pgid}]: pgid = the child's pid, as every child
 * leads its group). `withLoad`: also count the children reaped meanwhile as "load".
 */
export function startCpuSample(groups, withLoad = false) {
  return { t: process.hrtime.bigint(), cpus: cpuTimes(), procs: procTicks(), groups, withLoad, reaped: reapedChildTicks() };
}

/**
 * Ends a sample: { cpu_busy_pct: {cpu: %}, process_cpu_pct: {group name: %, load?: %, other: %} }
 * (percent of one CPU over the sample's wall time).
 */
export function endCpuSample(s) {
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

/** The pids of every process in process group `pgid` (Linux /proc). */
export function pidsOfGroup(pgid) {
  return [...procTicks()].filter(([, [g]]) => g === pgid).map(([key]) => Number(key.split('/')[0]));
}

let perfUsable = null;
/** Whether `perf stat` can count instructions here (Linux perf installed, counters exposed). */
export function perfAvailable() {
  if (perfUsable === null) {
    const perf = which('perf', ['/usr/bin', '/usr/local/bin']);
    const out = perf === null ? '' : spawnSync(perf, ['stat', '-x,', '-e', 'instructions:u', 'true'], { encoding: 'utf8' }).stderr ?? '';
    perfUsable = perf !== null && /instructions/.test(out) && !/not supported|<not counted>/.test(out) ? perf : false;
  }
  return perfUsable || null;
}

/**
 * Counts the instructions (user and kernel) every process of group `pgid` retires from now until
 * stop(): `perf stat -e instructions:u,instructions:k -p PIDS`. Instructions per request are
 * what the code costs, steady even where a shared VM makes CPU time drift. Returns null when
 * perf is not usable; stop() resolves with { user, kernel } or null.
 */
export function countInstructions(pgid) {
  const perf = perfAvailable();
  if (perf === null) return null;
  const pids = pidsOfGroup(pgid);
  if (!pids.length) return null;
  const child = start('perf', perf, ['stat', '-x,', '-e', 'instructions:u,instructions:k', '-p', pids.join(',')]);
  return {
    async stop() {
      await sleep(20);
      killGroup(child, 'SIGINT');
      const timer = setTimeout(() => killGroup(child, 'SIGKILL'), 3000);
      await child.exited;
      clearTimeout(timer);
      const count = (ev) => {
        const line = child.output.split('\n').find((l) => l.split(',')[2]?.startsWith(ev));
        const n = line ? Number(line.split(',')[0]) : NaN;
        return Number.isFinite(n) ? n : null;
      };
      const user = count('instructions:u');
      return user === null ? null : { user, kernel: count('instructions:k') };
    },
  };
}

/** Waits (at most `maxMs`) until processes outside the benchmark use < OTHER_MAX % of one CPU over 1 s; returns their last %. */
export async function waitQuiet(groups, maxMs) {
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

/**
 * One measurement: waits for a quiet machine, runs the load generator, and adds the CPU sample
 * of `groups` (plus "load" and "other") to the parsed result, with `proxy_cpu_us_per_req` (CPU
 * time of the group named `target` per request) and `other_cpu_before_pct`.
 */
export async function measure(load, url, { headers = {}, conns, seconds, groups, target, quietWaitMs = 60_000 }) {
  const before = await waitQuiet(groups, quietWaitMs);
  const sample = startCpuSample(groups, true);
  const t0 = process.hrtime.bigint();
  const r = await load.run(url, { headers, conns, seconds }).done;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  Object.assign(r, endCpuSample(sample));
  if (target && r.requests) r.proxy_cpu_us_per_req = round(((r.process_cpu_pct[target] / 100) * secs * 1e6) / r.requests, 1);
  r.other_cpu_before_pct = before;
  return r;
}

/**
 * measure(), repeated (at most `retries` more times) while processes outside the benchmark used
 * more than OTHER_MAX % of a CPU during it; keeps the quietest, with `attempts`.
 */
export async function measureClean(label, load, url, opts) {
  const retries = opts.retries ?? 2;
  let best = null;
  for (let attempt = 0; attempt <= retries; attempt++) {
    const r = await measure(load, url, opts);
    if (best === null || r.process_cpu_pct.other < best.process_cpu_pct.other) best = { ...r, attempts: attempt + 1 };
    if (r.process_cpu_pct.other <= OTHER_MAX || attempt === retries || interrupted()) break;
    console.log(`  ${label}: processes outside the benchmark used ${r.process_cpu_pct.other}% CPU; measuring again (${attempt + 1}/${retries})`);
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers (127.0.0.1 only).

/** A TCP port free on 127.0.0.1 right now. */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolvePort(port));
    });
  });
}

/**
 * One request on a fresh connection: { status, body, headers }, or null on error / timeout.
 * Options: headers, method (GET), body (string), timeout (ms, 2000).
 */
export function probe(url, { headers = {}, method = 'GET', body = null, timeout = 2000 } = {}) {
  return new Promise((resolveProbe) => {
    const req = request(url, { agent: false, timeout, headers, method }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => resolveProbe({ status: res.statusCode, body: text, headers: res.headers }));
      res.on('error', () => resolveProbe(null));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolveProbe(null));
    req.end(body ?? undefined);
  });
}

/**
 * Polls `url` until it answers 200 (with `body` when given), or throws when `child` exits or
 * `ms` pass. Returns the last probe.
 */
export async function waitReady(url, { child = null, headers = {}, body = null, ms = 15_000 } = {}) {
  const deadline = Date.now() + ms;
  let last = null;
  while (Date.now() < deadline) {
    if (child && !alive(child)) throw new Error(`${child.label} exited:\n${child.output}`);
    last = await probe(url, { headers });
    if (last && last.status === 200 && (body === null || last.body === body)) return last;
    await sleep(50);
  }
  throw new Error(`${url} did not answer 200${body !== null ? ` "${body}"` : ''} within ${ms} ms (last: ${last ? `${last.status} ${JSON.stringify(last.body).slice(0, 200)}` : 'no answer'})${child ? `\n${child.output}` : ''}`);
}

/** Starts bench/upstream.mjs (fixed body UPSTREAM_BODY) pinned by `pin` to `cpu`; resolves with { child, url } once it answers. */
export async function startUpstream(pin = (_c, cmd, args) => [cmd, args], cpu = null) {
  const child = start('upstream', ...pin(cpu, process.execPath, [join(ROOT, 'bench/upstream.mjs'), '0']));
  const port = Number((await waitFor(child, /LISTENING ([0-9]+)/))[1]);
  const url = `http://127.0.0.1:${port}`;
  await waitReady(`${url}/`, { child, body: UPSTREAM_BODY });
  return { child, url };
}

/** What bench/upstream.mjs answers to every request. */
export const UPSTREAM_BODY = 'hello world';

// ---------------------------------------------------------------------------------------------
// Numbers and output.

/** x rounded to d decimals; null for null / undefined / NaN. */
export const round = (x, d = 0) => (x === null || x === undefined || Number.isNaN(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** a / b to 3 decimals, null when either is missing or zero. */
export const ratio = (a, b) => (a && b ? round(a / b, 3) : null);
export const fmtRps = (r) => (r === null || r === undefined ? '-' : Math.round(r).toLocaleString('en-US'));
/** A ratio as a percentage ("94.8%"), 'n/a' when null. */
export const pct = (x) => (x === null || x === undefined ? 'n/a' : `${(x * 100).toFixed(1)}%`);

/** Microseconds as "54us" / "1.10ms" / "2.01s". */
export function fmtUs(us) {
  if (us === null || us === undefined) return '-';
  if (Math.abs(us) < 1000) return `${Math.round(us)}us`;
  if (Math.abs(us) < 1e6) return `${(us / 1000).toFixed(2)}ms`;
  return `${(us / 1e6).toFixed(2)}s`;
}

/** Median of the numbers in `values` (others ignored); null when there are none. */
export function median(values) {
  const v = values.filter((x) => typeof x === 'number').sort((a, b) => a - b);
  if (!v.length) return null;
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

/** Median of every numeric field (recursively) over a list of like-shaped objects; other fields from the first. */
export function medianOf(list) {
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

/** A plain-text table: first column left-aligned, the others right-aligned. */
export function formatTable(cols, rows) {
  const widths = cols.map((c, i) => Math.max(c.length, ...rows.map((r) => String(r[i] ?? '').length)));
  const line = (r) => r.map((c, i) => (i === 0 ? String(c ?? '').padEnd(widths[i]) : String(c ?? '').padStart(widths[i]))).join('  ').trimEnd();
  return [line(cols), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** The same table as Markdown (for docs/benchmarks.md). */
export function markdownTable(cols, rows) {
  const esc = (c) => String(c ?? '').replace(/\|/g, '\\|');
  return [
    `| ${cols.map(esc).join(' | ')} |`,
    `| ${cols.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
}

/** Writes `data` as indented JSON to `file` (creating its directory). */
export function writeJson(file, data) {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(data, null, 2) + '\n');
}
