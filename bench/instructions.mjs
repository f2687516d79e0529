#!/usr/bin/env node
/**
 * `npm run bench:instructions`: instructions per request of the proxies, counted by valgrind's
 * callgrind. Counts do not depend on what else the machine runs nor on the vCPU's speed, so a
 * before/after of one change is readable to ~1-3% where req/s and `perf stat` (not supported on
 * every VM) move by 10-30% between runs (docs/benchmarks.md, "Instructions with callgrind").
 *
 * Each target runs under `valgrind --tool=callgrind --instr-atstart=no` (about 50x slower, so
 * no latency or req/s here). The runner sends BENCH_CG_WARMUP requests (the JIT tiers up; no
 * counting), switches counting on (`callgrind_control -i on`), then measures windows of
 * BENCH_CG_REQUESTS requests (`-z` before, `-d` after each) until two consecutive windows agree
 * within 3% (at most BENCH_CG_WINDOWS), and reports the last window's Ir / requests. Load: an
 * undici Pool of 16 connections in this process (native speed: the proxy is the bottleneck).
 *
 * Targets: reference (bench/reference-proxy.mjs), and Turnpike scenarios of bench/scenarios.mjs
 * that need only the hello-world upstream (plain, defaults, observed, policies, routes-100,
 * routes-10k).
 *
 * Environment:
 *   BENCH_CG_TARGETS   comma list (default reference,plain,policies)
 *   BENCH_COMPARE      another build's bin/turnpike.js: every scenario is also counted on it
 *   BENCH_CG_WARMUP    requests before counting (default 12000)
 *   BENCH_CG_REQUESTS  requests per window (default 3000)
 *   BENCH_CG_WINDOWS   at most this many windows (default 6)
 *   BENCH_OUT          results JSON (default bench/results/instructions.json)
 *   BENCH_NO_BUILD     1 = do not run `npm run build` first
 * Everything talks to 127.0.0.1 only; every process is stopped on exit.
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { execFileSync } from 'node:child_process';
import { Pool } from 'undici';
import {
  ROOT, start, stop, cleanup, installCleanupHandlers, which, freePort, waitReady, startUpstream, makeTmpDir,
  buildTurnpike, gitHead, machineInfo, formatTable, writeJson, round,
} from './lib.mjs';
import { SCENARIO } from './scenarios.mjs';

const env = process.env;
const num = (v, d) => (v && Number(v) > 0 ? Number(v) : d);
const TARGETS = (env.BENCH_CG_TARGETS ?? 'reference,plain,policies').split(',').map((s) => s.trim()).filter(Boolean);
const WARMUP = num(env.BENCH_CG_WARMUP, 12_000);
const PER_WINDOW = num(env.BENCH_CG_REQUESTS, 3000);
const MAX_WINDOWS = num(env.BENCH_CG_WINDOWS, 6);
const CONNS = 16;
const OUT = resolve(ROOT, env.BENCH_OUT ?? 'bench/results/instructions.json');
const COMPARE = env.BENCH_COMPARE ? resolve(env.BENCH_COMPARE) : null;
const HTTP_ONLY = new Set(['plain', 'defaults', 'observed', 'policies', 'routes-100', 'routes-10k']);

installCleanupHandlers();

/** Sends `n` GET requests over `CONNS` connections; throws on any non-2xx answer. */
async function load(url, headers, n) {
  const u = new URL(url);
  const pool = new Pool(u.origin, { connections: CONNS, pipelining: 1 });
  let left = n;
  let bad = 0;
  const worker = async () => {
    while (left-- > 0) {
      const r = await pool.request({ path: u.pathname, method: 'GET', headers });
      if (r.statusCode < 200 || r.statusCode > 299) bad++;
      await r.body.dump();
    }
  };
  try {
    await Promise.all(Array.from({ length: CONNS }, worker));
  } finally {
    await pool.close();
  }
  if (bad) throw new Error(`${url}: ${bad} of ${n} answers were not 2xx`);
}

const control = (pid, ...args) => execFileSync('callgrind_control', [...args, String(pid)], { stdio: 'pipe' });

/** The Ir total of the newest dump of `pid` in `dir`. */
function lastDump(dir, prefix, pid) {
  const files = readdirSync(dir).filter((f) => f.startsWith(`${prefix}.${pid}.`));
  const newest = files.sort((a, b) => Number(a.split('.').pop()) - Number(b.split('.').pop())).pop();
  if (!newest) throw new Error(`no callgrind dump of ${pid} in ${dir}`);
  const m = /^summary: ([0-9]+)/m.exec(readFileSync(join(dir, newest), 'utf8'));
  if (!m) throw new Error(`no summary in ${newest}`);
  return Number(m[1]);
}

async function count(label, cmd, args, { url, headers = {}, dir, extraEnv = {} }) {
  const prefix = label.replace(/[^a-z0-9-]/gi, '_');
  const child = start(label, 'valgrind', ['--tool=callgrind', '--instr-atstart=no', `--callgrind-out-file=${join(dir, prefix)}.%p`, cmd, ...args], { env: extraEnv });
  try {
    await waitReady(url, { child, headers, ms: 180_000 });
    await load(url, headers, WARMUP);
    control(child.pid, '-i', 'on');
    const windows = [];
    while (windows.length < MAX_WINDOWS) {
      control(child.pid, '-z');
      await load(url, headers, PER_WINDOW);
      control(child.pid, '-d');
      windows.push(Math.round(lastDump(dir, prefix, child.pid) / PER_WINDOW));
      const n = windows.length;
      if (n >= 2 && Math.abs(windows[n - 1] - windows[n - 2]) / windows[n - 2] <= 0.03) break;
    }
    const perReq = windows[windows.length - 1];
    console.log(`  ${label.padEnd(22)} ${Math.round(perReq / 1000)}k instructions/request (windows: ${windows.map((w) => `${Math.round(w / 1000)}k`).join(' ')})`);
    return { instructions_per_req: perReq, windows, steady: windows.length >= 2 && Math.abs(windows.at(-1) - windows.at(-2)) / windows.at(-2) <= 0.03 };
  } finally {
    await stop(child, 10_000);
  }
}

async function main() {
  if (!which('valgrind') || !which('callgrind_control')) throw new Error('valgrind is not installed (Debian: apt-get install valgrind)');
  for (const t of TARGETS) if (t !== 'reference' && !HTTP_ONLY.has(t)) throw new Error(`unknown target ${t} (reference, ${[...HTTP_ONLY].join(', ')})`);
  buildTurnpike(env.BENCH_NO_BUILD !== '1');
  const tmp = makeTmpDir('turnpike-cg-');
  const up = await startUpstream();
  const results = {};
  console.log(`callgrind: ${WARMUP} warm-up requests, windows of ${PER_WINDOW} at ${CONNS} connections`);
  const builds = [['', join(ROOT, 'bin/turnpike.js')], ...(COMPARE ? [['@compare', COMPARE]] : [])];
  for (const name of TARGETS) {
    if (name === 'reference') {
      const port = await freePort();
      results.reference = await count('reference', process.execPath, [join(ROOT, 'bench/reference-proxy.mjs'), up.url, String(port)], { url: `http://127.0.0.1:${port}/`, dir: tmp });
      continue;
    }
    const sc = SCENARIO[name];
    for (const [tag, bin] of builds) {
      const port = await freePort();
      const dir = join(tmp, name + tag);
      mkdirSync(dir, { recursive: true });
      const file = join(dir, 'turnpike.yaml');
      writeFileSync(file, `# generated by bench/instructions.mjs (scenario ${name})\n${sc.config({ listen: `listen: 127.0.0.1:${port}\n`, upstream: up.url, tmp: dir })}`);
      const headers = typeof sc.headers === 'function' ? sc.headers({}) : (sc.headers ?? {});
      results[name + tag] = await count(name + tag, process.execPath, [bin, 'start', '--config', file], {
        url: `http://127.0.0.1:${port}${sc.path ?? '/'}`, headers, dir, extraEnv: { TURNPIKE_LOG_LEVEL: 'silent' },
      });
    }
  }
  await stop(up.child);
  const ref = results.reference?.instructions_per_req;
  const rows = Object.entries(results).map(([k, r]) => [k, `${Math.round(r.instructions_per_req / 1000)}k`, ref ? `${round(r.instructions_per_req / ref, 3)}x` : '-', r.steady ? 'yes' : 'NO']);
  console.log('\n' + formatTable(['target', 'instr/req', 'x reference', 'steady'], rows));
  if (COMPARE) {
    for (const name of TARGETS.filter((t) => t !== 'reference')) {
      const a = results[name]?.instructions_per_req;
      const b = results[`${name}@compare`]?.instructions_per_req;
      if (a && b) console.log(`A/B ${name}: this build / ${relative(ROOT, COMPARE)}: ${round(a / b, 3)}x (${Math.round(a / 1000)}k vs ${Math.round(b / 1000)}k)`);
    }
  }
  const valgrind = execFileSync('valgrind', ['--version'], { encoding: 'utf8' }).trim();
  writeJson(OUT, {
    date: new Date().toISOString(),
    git: { commit: gitHead(), compare: COMPARE ? relative(ROOT, COMPARE) : null },
    machine: machineInfo({ valgrind }),
    method: { warmup_requests: WARMUP, requests_per_window: PER_WINDOW, max_windows: MAX_WINDOWS, connections: CONNS },
    results,
  });
  console.log(`wrote ${relative(process.cwd(), OUT)}`);
}

main().then(
  () => cleanup().then(() => process.exit(0)),
  (err) => {
    console.error(err?.stack ?? err);
    cleanup().then(() => process.exit(1));
  },
);
