#!/usr/bin/env node
/**
 * `npm run bench:resilience`: the measurements issue 3 asks for, in one run.
 *
 *  routes   A config with 10,000 routes: YAML parse + schema, compile (router build) and the
 *           router's match cost (in process, on the built dist/); then Turnpike serving one of
 *           those routes under wrk at 64 connections in alternating windows: steady (a twin
 *           gateway that never reloads) and while the config file is rewritten every
 *           BENCH_RELOAD_MS (each write is a file-watch reload of 10,000 routes); the medians
 *           of the windows' p99 are compared. Pinned like bench/run.mjs: load + upstream on CPU 0, proxy on CPU 1.
 *  workers  direct, the reference proxy (node:http + undici), and Turnpike with workers: 1 and
 *           workers: 2, plus the reference proxy in 2 processes (node:cluster) — same run, no
 *           pinning (on 2 cores the load generator and the upstream share them).
 *
 * Environment: BENCH_WRK_THREADS (workers part, default 1), BENCH_DURATION seconds per measurement (default 10), BENCH_PARTS (routes,workers),
 * BENCH_RELOAD_MS (default 2000), BENCH_RELOAD_ROUNDS / BENCH_RELOAD_WINDOW (alternating windows, default 5 x 6 s), BENCH_RELOAD_SAMPLES (reloads timed for CPU per reload, default 5),
 * BENCH_TURNPIKE (another build's bin/turnpike.js for the served parts), BENCH_NODE_FLAGS (node flags for it), BENCH_OUT (default bench/results/resilience.json).
 * Needs wrk. All traffic stays on 127.0.0.1; every child is killed on exit.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, mkdirSync, readFileSync } from 'node:fs';
import { tmpdir, availableParallelism, cpus } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createServer } from 'node:net';
import { parseWrk } from './parse.mjs';

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const env = process.env;
const DURATION = Number(env.BENCH_DURATION ?? 10);
const PARTS = (env.BENCH_PARTS ?? 'routes,workers').split(',');
const RELOAD_MS = Number(env.BENCH_RELOAD_MS ?? 2000);
const OUT = env.BENCH_OUT ?? join(ROOT, 'bench/results/resilience.json');
const ROUTES = 10_000;
/** Steady / reloading windows, alternated, and their length in seconds. */
const RELOAD_ROUNDS = Number(env.BENCH_RELOAD_ROUNDS ?? 5);
const RELOAD_WINDOW = Number(env.BENCH_RELOAD_WINDOW ?? 6);
/** Reloads measured for CPU per reload (idle proxy). */
const RELOAD_SAMPLES = Number(env.BENCH_RELOAD_SAMPLES ?? 5);
/** Another build's CLI for the served part (before/after); the in-process figures use this checkout's dist/. */
const TURNPIKE_BIN = env.BENCH_TURNPIKE ?? join(ROOT, 'bin/turnpike.js');
/** Node flags for the served Turnpike (e.g. a V8 heap flag to compare). */
const NODE_FLAGS = (env.BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean);
/** wrk threads for the workers part (a single wrk thread can be what saturates first there). */
const WRK_THREADS = Number(env.BENCH_WRK_THREADS ?? 1);

const children = new Set();
function start(label, cmd, args, extraEnv = {}) {
  const child = spawn(cmd, args, { cwd: ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, ...extraEnv } });
  child.label = label;
  child.output = '';
  const keep = (d) => { child.output = (child.output + d).slice(-65536); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.exited = new Promise((r) => child.once('exit', (code) => r(code)));
  children.add(child);
  child.exited.then(() => children.delete(child));
  return child;
}
const killAll = (sig = 'SIGKILL') => { for (const c of children) { try { process.kill(-c.pid, sig); } catch { /* gone */ } } };
process.on('exit', () => killAll());
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => { killAll(); process.exit(130); });
async function stop(child) {
  try { process.kill(-child.pid, 'SIGTERM'); } catch { /* gone */ }
  const t = setTimeout(() => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } }, 5000);
  await child.exited;
  clearTimeout(t);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitOutput(child, re, ms = 20_000) {
  const end = Date.now() + ms;
  for (;;) {
    const m = re.exec(child.output);
    if (m) return m;
    if (child.exitCode !== null || Date.now() > end) throw new Error(`${child.label} not ready:\n${child.output}`);
    await sleep(20);
  }
}
function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}
function which(name) {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}
const wrk = which('wrk');
if (!wrk) { console.error('wrk is required (apt-get install wrk)'); process.exit(1); }
const taskset = availableParallelism() >= 2 ? which('taskset') : null;
const pin = (cpu, cmd, args) => (taskset && cpu !== null ? [taskset, ['-c', String(cpu), cmd, ...args]] : [cmd, args]);

async function load(url, conns, seconds, cpu = null, threads = 1) {
  const c = start('wrk', ...pin(cpu, wrk, [`-t${threads}`, `-c${conns}`, `-d${seconds}s`, '--timeout', '5s', '--latency', url]));
  await c.exited;
  return parseWrk(c.output);
}
/** utime + stime of a process (or of one of its threads), in clock ticks. */
function threadTicks(pid, tid = null) {
  const f = readFileSync(tid === null ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]);
}
const clockTicks = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
const us = (n) => (n >= 1000 ? `${(n / 1000).toFixed(2)} ms` : `${Math.round(n)} us`);

console.log('building (npm run build)...');
const b = spawnSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, encoding: 'utf8' });
if (b.status !== 0) throw new Error(b.stdout + b.stderr);
const tmp = mkdtempSync(join(tmpdir(), 'turnpike-bench-res-'));
const results = { machine: { nproc: availableParallelism(), cpu: cpus()[0]?.model, node: process.version, wrk: spawnSync(wrk, ['-v'], { encoding: 'utf8' }).stdout.split('\n')[0] }, at: new Date().toISOString() };

const upstream = start('upstream', ...pin(0, process.execPath, [join(ROOT, 'bench/upstream.mjs'), '0']));
const upUrl = `http://127.0.0.1:${(await waitOutput(upstream, /LISTENING ([0-9]+)/))[1]}`;

function routesYaml(port, generation) {
  const lines = [`listen: 127.0.0.1:${port}`, 'access_log: {enabled: false}', 'services:', '  - name: bench', `    url: ${upUrl}`, '    routes:'];
  for (let i = 0; i < ROUTES; i++) {
    // Mixed shapes: literals, {param} segments, a few methods; one route changes per generation.
    const p = i % 3 === 0 ? `/api/v${i % 7}/r${i}/{id}` : i % 3 === 1 ? `/svc${i}/items` : `/t/${i}/{a}/x/{b}`;
    lines.push(`      - {name: r${i}, paths: ["${p}"]${i % 5 === 0 ? ', methods: [GET, POST]' : ''}}`);
  }
  lines.push(`      - {name: gen, paths: ["/generation/${generation}"]}`);
  return lines.join('\n') + '\n';
}

try {
  if (PARTS.includes('routes')) {
    console.log(`\n[routes] ${ROUTES} routes`);
    const { parseConfigText, fastValidConfig } = await import(pathToFileURL(join(ROOT, 'dist/config/load.js')).href);
    const { compile } = await import(pathToFileURL(join(ROOT, 'dist/config/compile.js')).href);
    const { PoolRegistry } = await import(pathToFileURL(join(ROOT, 'dist/upstream/pools.js')).href);
    const text = routesYaml(1, 0);
    const pools = new PoolRegistry();
    const times = { parse: [], fast: [], compile: [] };
    let snap;
    for (let k = 0; k < 7; k++) {
      const t0 = performance.now();
      const loaded = parseConfigText(text, { file: 'bench.yaml' });
      const t1 = performance.now();
      snap?.dispose();
      snap = compile(loaded, { pools });
      const t2 = performance.now();
      if (!fastValidConfig(text)) throw new Error('the fast YAML path refused the benchmark config');
      times.fast.push(performance.now() - t2);
      times.parse.push(t1 - t0);
      times.compile.push(t2 - t1);
    }
    const med = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
    // Match cost: hits spread over all routes, and misses.
    const paths = [];
    for (let i = 0; i < ROUTES; i++) paths.push(i % 3 === 0 ? `/api/v${i % 7}/r${i}/42` : i % 3 === 1 ? `/svc${i}/items/9` : `/t/${i}/a/x/b/c`);
    const router = snap.router;
    let sink = 0;
    const N = 1_000_000;
    for (let i = 0; i < 100_000; i++) sink += router.match('GET', 'example.com', paths[i % ROUTES], {}) ? 1 : 0;
    let t0 = process.hrtime.bigint();
    for (let i = 0; i < N; i++) sink += router.match('GET', 'example.com', paths[(i * 7919) % ROUTES], {}) ? 1 : 0;
    const hitNs = Number(process.hrtime.bigint() - t0) / N;
    t0 = process.hrtime.bigint();
    for (let i = 0; i < N; i++) sink += router.match('GET', 'example.com', `/nope/${i & 1023}/x`, {}) ? 1 : 0;
    const missNs = Number(process.hrtime.bigint() - t0) / N;
    snap.dispose();
    await pools.closeAll();
    results.routes = {
      routes: ROUTES, yaml_bytes: text.length,
      parse_validate_ms: +med(times.parse).toFixed(1), fast_parse_validate_ms: +med(times.fast).toFixed(1), compile_ms: +med(times.compile).toFixed(1),
      match_hit_ns: +hitNs.toFixed(0), match_miss_ns: +missNs.toFixed(0), sink,
    };
    console.log(`  parse+validate ${results.routes.parse_validate_ms} ms (yaml document API; reload thread's fast path ${results.routes.fast_parse_validate_ms} ms), compile ${results.routes.compile_ms} ms (median of 7); match ${results.routes.match_hit_ns} ns (hit), ${results.routes.match_miss_ns} ns (miss)`);

    const port = await freePort();
    const file = join(tmp, 'routes.yaml');
    writeFileSync(file, routesYaml(port, 0));
    const tp = start('turnpike', ...pin(1, process.execPath, [...NODE_FLAGS, TURNPIKE_BIN, 'start', '--config', file]), { TURNPIKE_LOG_LEVEL: 'info' });
    await waitOutput(tp, /proxy on http/);
    // CPU per reload, no load: what each reload takes from the proxy's core. The main thread's
    // share is what requests wait behind; the rest is the parser thread and V8's GC threads.
    await sleep(2000);
    const reloadsSeen = () => (tp.output.match(/"config reloaded"/g) ?? []).length;
    const m0 = threadTicks(tp.pid, tp.pid), p0 = threadTicks(tp.pid);
    for (let g = 1; g <= RELOAD_SAMPLES; g++) {
      const n = reloadsSeen();
      writeFileSync(file, routesYaml(port, 1000 + g));
      const end = Date.now() + 30_000;
      while (reloadsSeen() === n && Date.now() < end) await sleep(20);
      await sleep(1000);
    }
    const perReload = (t) => +((t * 1000) / clockTicks / RELOAD_SAMPLES).toFixed(0);
    results.routes.reload_cpu_ms = { main_thread: perReload(threadTicks(tp.pid, tp.pid) - m0), process: perReload(threadTicks(tp.pid) - p0), samples: RELOAD_SAMPLES };
    console.log(`  CPU per reload (idle proxy, ${RELOAD_SAMPLES} reloads): main thread ${results.routes.reload_cpu_ms.main_thread} ms, whole process ${results.routes.reload_cpu_ms.process} ms`);
    const url = `http://127.0.0.1:${port}/api/v0/r21/42`;
    // The steady side is a second, identical gateway that never reloads (watch: false), on the
    // same CPU: the reloading one's deferred work (the major GC of the routers it dropped)
    // lands in its own windows, not in the steady ones.
    const port2 = await freePort();
    const file2 = join(tmp, 'routes-steady.yaml');
    writeFileSync(file2, 'watch: false\n' + routesYaml(port2, 0));
    const tpSteady = start('turnpike-steady', ...pin(1, process.execPath, [...NODE_FLAGS, TURNPIKE_BIN, 'start', '--config', file2]), { TURNPIKE_LOG_LEVEL: 'info' });
    await waitOutput(tpSteady, /proxy on http/);
    const steadyUrl = `http://127.0.0.1:${port2}/api/v0/r21/42`;
    await load(url, 64, 2, 0);
    await load(steadyUrl, 64, 2, 0);
    // Steady and reloading windows alternate (RELOAD_ROUNDS of each, RELOAD_WINDOW seconds):
    // a stall of the VM lands in one window, not in a whole side, and the medians of the
    // windows' p99 are compared. Texts are generated before: the writer only writes.
    let gen = 0;
    const texts = Array.from({ length: RELOAD_ROUNDS * (Math.ceil((RELOAD_WINDOW * 1000) / RELOAD_MS) + 1) + 1 }, (_, g) => routesYaml(port, g + 1));
    const rounds = [];
    for (let r = 0; r < RELOAD_ROUNDS; r++) {
      const steady = await load(steadyUrl, 64, RELOAD_WINDOW, 0);
      await sleep(500);
      const before = (tp.output.match(/"config reloaded"/g) ?? []).length;
      let writing = true;
      const writer = (async () => {
        while (writing && gen < texts.length) {
          writeFileSync(file, texts[gen++]);
          await sleep(RELOAD_MS);
        }
      })();
      const during = await load(url, 64, RELOAD_WINDOW, 0);
      writing = false;
      await writer;
      await sleep(1500);
      const reloads = (tp.output.match(/"config reloaded"/g) ?? []).length - before;
      rounds.push({ steady, reloading: { ...during, reloads } });
      console.log(`  round ${r + 1}: steady ${Math.round(steady.rps)} req/s p99 ${us(steady.p99_us)} | reloading (${reloads} reloads) ${Math.round(during.rps)} req/s p99 ${us(during.p99_us)}${during.socket_errors || during.non_2xx ? ` WARNING: ${during.socket_errors} socket errors, ${during.non_2xx} non-2xx` : ''}`);
    }
    const steadyP99 = med(rounds.map((x) => x.steady.p99_us));
    const reloadP99 = med(rounds.map((x) => x.reloading.p99_us));
    const reloads = rounds.reduce((n, x) => n + x.reloading.reloads, 0);
    console.log(`  steady:        median p99 ${us(steadyP99)}, ${Math.round(med(rounds.map((x) => x.steady.rps)))} req/s`);
    console.log(`  with reloads:  median p99 ${us(reloadP99)}, ${Math.round(med(rounds.map((x) => x.reloading.rps)))} req/s (${reloads} reloads of ${ROUTES} routes, one every ${RELOAD_MS} ms)`);
    console.log(`  p99 ratio (reloading / steady, medians of ${RELOAD_ROUNDS} windows each): ${(reloadP99 / steadyP99).toFixed(2)}; per round ${rounds.map((x) => (x.reloading.p99_us / x.steady.p99_us).toFixed(2)).join(' ')}`);
    results.routes.rounds = rounds;
    results.routes.window_s = RELOAD_WINDOW;
    results.routes.steady_p99_us = steadyP99;
    results.routes.reloading_p99_us = reloadP99;
    results.routes.reloads = reloads;
    results.routes.every_ms = RELOAD_MS;
    results.routes.p99_ratio = +(reloadP99 / steadyP99).toFixed(2);
    await stop(tpSteady);
    await stop(tp);
  }

  if (PARTS.includes('workers')) {
    console.log(`\n[workers] no pinning; ${availableParallelism()} CPUs shared by load generator, upstream and proxy`);
    // The upstream was pinned for the routes part: a fresh unpinned one here.
    const up2 = start('upstream2', process.execPath, [join(ROOT, 'bench/upstream.mjs'), '0']);
    const up2Url = `http://127.0.0.1:${(await waitOutput(up2, /LISTENING ([0-9]+)/))[1]}`;
    const targets = {
      direct: async () => ({ url: `${up2Url}/` }),
      reference: async () => {
        const c = start('reference', process.execPath, [join(ROOT, 'bench/reference-proxy.mjs'), up2Url, '0']);
        return { url: `http://127.0.0.1:${(await waitOutput(c, /LISTENING ([0-9]+)/))[1]}/`, child: c };
      },
      'reference-x2': async () => {
        const port = await freePort();
        const c = start('reference-x2', process.execPath, [join(ROOT, 'bench/reference-cluster.mjs'), '2', up2Url, String(port)]);
        await waitOutput(c, /LISTENING[\s\S]*LISTENING/);
        return { url: `http://127.0.0.1:${port}/`, child: c };
      },
      'turnpike-w1': (w = 1) => turnpike(w),
      'turnpike-w2': () => turnpike(2),
    };
    async function turnpike(w) {
      const port = await freePort();
      const file = join(tmp, `w${w}.yaml`);
      writeFileSync(file, `listen: 127.0.0.1:${port}\naccess_log: {enabled: false}\nworkers: ${w}\nwatch: false\nservices:\n  - name: bench\n    url: ${up2Url}\n    routes: [{paths: [/]}]\n`);
      const c = start(`turnpike-w${w}`, process.execPath, [TURNPIKE_BIN, 'start', '--config', file], { TURNPIKE_LOG_LEVEL: 'silent' });
      await waitOutput(c, /proxy on http/);
      return { url: `http://127.0.0.1:${port}/`, child: c };
    }
    results.workers = {};
    for (const [name, startTarget] of Object.entries(targets)) {
      const t = await startTarget();
      await load(t.url, 64, 2, null, WRK_THREADS);
      const r = await load(t.url, 64, DURATION, null, WRK_THREADS);
      results.workers[name] = r;
      console.log(`  ${name.padEnd(13)} ${String(Math.round(r.rps)).padStart(6)} req/s, p50 ${us(r.p50_us)}, p99 ${us(r.p99_us)}${r.socket_errors || r.non_2xx ? ` (${r.socket_errors} socket errors, ${r.non_2xx} non-2xx)` : ''}`);
      if (t.child) await stop(t.child);
    }
    const w = results.workers;
    results.workers.ratios = {
      turnpike_w2_over_w1: +(w['turnpike-w2'].rps / w['turnpike-w1'].rps).toFixed(2),
      reference_x2_over_x1: +(w['reference-x2'].rps / w.reference.rps).toFixed(2),
      turnpike_w1_over_reference: +(w['turnpike-w1'].rps / w.reference.rps).toFixed(3),
      turnpike_w2_over_reference_x2: +(w['turnpike-w2'].rps / w['reference-x2'].rps).toFixed(3),
    };
    console.log(`  ratios: ${JSON.stringify(results.workers.ratios)}`);
    await stop(up2);
  }
} finally {
  await stop(upstream);
  mkdirSync(dirname(OUT), { recursive: true });
  writeFileSync(OUT, JSON.stringify(results, null, 2) + '\n');
  console.log(`\nresults: ${OUT}`);
  rmSync(tmp, { recursive: true, force: true });
  killAll();
}
