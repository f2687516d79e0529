#!/usr/bin/env node
/**
 * `npm run bench`: the benchmark suite (docs/benchmarks.md). In one run, on one machine, the
 * same load through the floors and through Turnpike in every scenario:
 *
 * Floors (measured first, every round):
 *   direct             load generator -> upstream (bench/upstream.mjs, 200 "hello world")
 *   reference          bench/reference-proxy.mjs: node:http + undici Pool, pool.dispatch (the
 *                      strict Node floor: the raw handler API Turnpike uses)
 *   reference-request  bench/reference-proxy-request.mjs: node:http + undici pool.request +
 *                      stream pipeline (the naive Node proxy most people write)
 *   nginx              1 worker, upstream keepalive 64 (skipped when not installed)
 *
 * Turnpike scenarios (one `node bin/turnpike.js start` per scenario, one worker,
 * TURNPIKE_LOG_LEVEL=silent; every config is written to a temp dir and shown in the JSON):
 *   plain       no plugins; metrics, analytics and access log off
 *   defaults    no plugins, built-in defaults (metrics + analytics on, access log off)
 *   observed    no plugins; metrics + analytics + access log (file), tracing off
 *   policies    key-auth + rate-limit (local, by consumer, never refusing) + metrics + analytics
 *               + access log (JSON lines to a file)
 *   jwt         jwt plugin (ES256, OIDC discovery at bench/auth.mjs --jwks-server; verified
 *               tokens cached, the default), metrics + analytics off
 *   routes-100  100 routes `/api/v1/r<i>/items/{id}` (+ methods on every other one); the
 *   routes-10k  request hits the middle one. 10,000 routes likewise.
 *   compose     a two-step chain: GET /profile/{id} -> /users/{id}, then
 *               /orders?user={user.body.id} (bench/payload.mjs --upstream JSON backend)
 *   cache-hit   cache plugin (memory), every request a HIT of the same key
 *   http2       h2c with prior knowledge, measured with h2load -c64 -m1 (and -c1); the floors
 *               of this row are measured with h2load too: reference over HTTP/1.1 (h2load --h1;
 *               the floor speaks only HTTP/1.1) and nginx over h2c
 *   plain-w2,   the same with `workers: 2` (a primary and two workers, pinned together to the
 *   policies-w2 proxy CPU): CPU and instructions per request summed over the processes show
 *               what a request costs when the work is spread over workers (throughput on free
 *               cores follows from it); policies-w2's rate-limit counters stay exact (the
 *               primary decides, workers ask over IPC)
 *   websocket   messages/s: bench/ws.mjs --client, 64 connections each echoing 64-byte messages
 *               in a closed loop through Turnpike to bench/ws.mjs --echo; floors: direct and
 *               nginx (the reference proxies do not speak WebSocket)
 *
 * Every target is started first and they are measured interleaved: a warm-up of each, then
 * BENCH_ROUNDS rounds (default 3), each measuring every target in turn at 64 connections
 * (req/s, p50, p99, CPU of the proxy per request) and at 1 connection (p50, p99), so that a
 * machine whose speed drifts over minutes (shared VMs do) moves every target alike. The summary
 * is the median over the rounds. "Added p50" = p50 at 1 connection minus direct's p50.
 * Ratios: req/s of each scenario over reference, reference-request and nginx.
 * wrk when installed, else autocannon. With taskset and two CPUs the proxy under test runs alone
 * on the second CPU; the load generator and the upstreams on the first.
 *
 * Acceptance (issue 12) is printed at the end: plain >= 1.1x reference; policies >= 0.9x
 * reference and added p50 at 1 connection <= 1.3x nginx's. With BENCH_BASELINE (a results
 * JSON of an earlier run, default bench/results/before.json when present) each scenario's
 * ratio to the reference and CPU/req are compared with it (> 5% worse is flagged).
 *
 * Environment:
 *   BENCH_DURATION    seconds per 64-connection measurement (default 5); 1 connection: half
 *   BENCH_WARMUP      warm-up seconds per target (default 2)
 *   BENCH_ROUNDS      interleaved rounds (default 3); the summary is the median
 *   BENCH_SCENARIOS   comma list of Turnpike scenarios (default: all of the above)
 *   BENCH_TARGETS     comma list of floors besides direct (default reference,reference-request,nginx)
 *   BENCH_TOOL        wrk | autocannon (default: wrk when installed)
 *   BENCH_PROFILE     a directory: every proxy runs with --cpu-prof writing there (numbers of
 *                     such a run are not comparable; summarize with bench/profile.mjs)
 *   BENCH_BASELINE    results JSON to compare with ('' = none)
 *   BENCH_COMPARE     another build's bin/turnpike.js: each HTTP scenario also runs on it,
 *                     right after this build's in every round (an interleaved A/B in one run)
 *   BENCH_OUT         results JSON (default bench/results/latest.json)
 *   BENCH_NO_BUILD    1 = do not run `npm run build` first
 *   BENCH_COMPARE_NODE_FLAGS  node flags for the BENCH_COMPARE run (same build + a flag: A/B of the flag)
 *   BENCH_TURNPIKE    another Turnpike entry point to measure instead of bin/turnpike.js
 *   BENCH_KEEP_TMP    1 = keep the temp dir (configs, logs, process output)
 *   BENCH_RETRIES     re-measure at most this many times (default 2) while processes outside
 *                     the benchmark use more than 5% CPU; the quietest is kept
 *   BENCH_QUIET_WAIT  max seconds to wait for a quiet machine before each measurement (default 60)
 *   BENCH_NGINX       path of nginx (default: PATH or /usr/sbin); a missing path skips nginx
 *   BENCH_H2LOAD      path of h2load (default: PATH); without it the http2 row is skipped
 *
 * Every process runs in its own process group and is killed on exit, error and signals. All
 * traffic stays on 127.0.0.1.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync, rmSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import {
  ROOT, benchSettings, start, stop, cleanup, installCleanupHandlers, interrupted, waitFor, runToEnd, which, sh,
  pinning, machineInfo, countInstructions, perfAvailable, gitHead, buildTurnpike, cpuProfileArgs, loadGenerator, measureClean, startCpuSample, endCpuSample,
  waitQuiet, freePort, probe, waitReady, startUpstream, makeTmpDir, round, ratio, fmtRps, fmtUs, pct, medianOf, formatTable, writeJson, OTHER_MAX,
} from './lib.mjs';
import { parseH2load, h2loadLogPercentiles } from './parse.mjs';
import { SCENARIO, ALL_SCENARIOS, WS_SIZE } from './scenarios.mjs';

const env = process.env;
const S = benchSettings({ out: 'bench/results/latest.json', duration: 5, rounds: 3, warmup: 2 });
const CONNS = 64;
const SCENARIOS = (env.BENCH_SCENARIOS ? env.BENCH_SCENARIOS.split(',') : ALL_SCENARIOS).map((s) => s.trim()).filter(Boolean);
for (const s of SCENARIOS) if (!ALL_SCENARIOS.includes(s)) throw new Error(`unknown scenario ${s} (known: ${ALL_SCENARIOS.join(', ')})`);
const FLOORS = (env.BENCH_TARGETS ?? 'reference,reference-request,nginx').split(',').map((s) => s.trim()).filter(Boolean);
/** Another build's entry point: every HTTP scenario also runs on it, interleaved (an A/B in one run). */
const COMPARE = env.BENCH_COMPARE ? resolve(env.BENCH_COMPARE) : null;
/** Node flags for the BENCH_COMPARE build (e.g. the same build with a V8 heap flag). */
const COMPARE_NODE_FLAGS = (env.BENCH_COMPARE_NODE_FLAGS ?? '').split(' ').filter(Boolean);
const BASELINE = env.BENCH_BASELINE !== undefined ? (env.BENCH_BASELINE ? resolve(env.BENCH_BASELINE) : null) : join(ROOT, 'bench/results/before.json');
/** Instructions as "312k" ('-' when not counted). */
const kInstr = (n) => (typeof n === 'number' ? `${Math.round(n / 1000)}k` : '-');

installCleanupHandlers();

function nginxConf(dir, p) {
  return `# generated by bench/run.mjs
daemon off;
master_process on;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  upstream bench_upstream {
    server 127.0.0.1:${p.up};
    keepalive 64;
    keepalive_requests 1000000;
  }
  upstream ws_upstream {
    server 127.0.0.1:${p.ws};
  }
  server {
    listen 127.0.0.1:${p.http};
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:${p.h2c} http2;
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:${p.wsPort};
    location / {
      proxy_pass http://ws_upstream;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 300s;
    }
  }
}
`;
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const { loadCpu, proxyCpu, pin, note: pinNote } = pinning();
  const load = loadGenerator({ pin, cpu: loadCpu });
  const nginx = env.BENCH_NGINX !== undefined ? (existsSync(env.BENCH_NGINX) ? resolve(env.BENCH_NGINX) : null) : which('nginx', ['/usr/sbin', '/usr/local/sbin', '/usr/local/nginx/sbin']);
  const h2load = env.BENCH_H2LOAD !== undefined ? (existsSync(env.BENCH_H2LOAD) ? resolve(env.BENCH_H2LOAD) : null) : which('h2load', ['/usr/bin', '/usr/local/bin']);
  const notes = [...load.notes];
  if (pinNote) notes.push(pinNote);
  if (!perfAvailable()) notes.push('perf cannot count instructions here (Debian: apt-get install linux-perf): no instructions per request');
  if (S.profileDir) notes.push(`profiling into ${S.profileDir}: numbers are NOT representative`);
  if (!nginx && FLOORS.includes('nginx')) notes.push('nginx not installed: no nginx ratios');
  if (!h2load && SCENARIOS.includes('http2')) notes.push('h2load not installed (apt-get install nghttp2-client): http2 skipped');

  const machine = machineInfo({
    tool: load.version,
    nginx: nginx ? sh(nginx, ['-v']).replace(/^nginx version:\s*/, '') : null,
    h2load: h2load ? sh(h2load, ['--version']).split('\n')[0] : null,
  });
  const git = { commit: gitHead(), turnpike_entry: relative(ROOT, S.turnpikeBin), turnpike_commit: gitHead(resolve(S.turnpikeBin, '../..')) };

  console.log(`Turnpike benchmark suite: ${S.duration}s at ${CONNS} connections, ${S.c1Duration}s at 1 connection, ${S.warmup}s warm-up, ${S.rounds} round(s)`);
  console.log(`machine: ${machine.nproc} CPUs, ${machine.cpu}, ${machine.kernel}, node ${machine.node}, undici ${machine.undici}`);
  console.log(`load: ${machine.tool}; nginx: ${machine.nginx ?? 'not installed'}; h2load: ${machine.h2load ?? 'not installed'}`);
  console.log(`turnpike: ${JSON.stringify(git)}`);
  console.log(loadCpu !== null ? `pinning: load generator + upstreams on CPU ${loadCpu}, proxy under test alone on CPU ${proxyCpu}` : 'pinning: none');
  for (const n of notes) console.log(`note: ${n}`);
  buildTurnpike(S.build);

  const tmp = makeTmpDir('turnpike-bench-', S.keepTmp);
  chmodSync(tmp, 0o755); // nginx workers may run as an unprivileged user
  if (S.profileDir) mkdirSync(S.profileDir, { recursive: true });

  // Backends, all on the load CPU.
  const up = await startUpstream(pin, loadCpu);
  const json = start('json-upstream', ...pin(loadCpu, process.execPath, [join(ROOT, 'bench/payload.mjs'), '--upstream', '0', '0', 'api']));
  const jsonUrl = `http://127.0.0.1:${(await waitFor(json, /LISTENING ([0-9]+)/))[1]}`;
  const wsEcho = start('ws-echo', ...pin(loadCpu, process.execPath, [join(ROOT, 'bench/ws.mjs'), '--echo', '0']));
  const wsPort = Number((await waitFor(wsEcho, /LISTENING ([0-9]+)/))[1]);
  let idp = null;
  if (SCENARIOS.includes('jwt')) {
    const c = start('idp', ...pin(loadCpu, process.execPath, [join(ROOT, 'bench/auth.mjs'), '--jwks-server', '0']));
    await waitFor(c, /LISTENING ([0-9]+)/);
    idp = { child: c, issuer: /ISSUER (\S+)/.exec(c.output)[1], token: /TOKEN (\S+)/.exec(c.output)[1] };
  }
  const backendGroups = [up.child, json, wsEcho, idp?.child].filter(Boolean).map((c) => ({ name: c.label, pgid: c.pid }));

  // ------------------------------------------------------------------------- starting targets

  async function startTurnpike(name, bin = S.turnpikeBin, tag = '') {
    const sc = SCENARIO[name];
    const port = await freePort();
    const dir = join(tmp, name + tag);
    mkdirSync(dir, { recursive: true });
    const ctx = { listen: `listen: 127.0.0.1:${port}\n`, upstream: up.url, json: jsonUrl, ws: `http://127.0.0.1:${wsPort}`, tmp: dir, issuer: idp?.issuer, token: idp?.token };
    const file = join(dir, 'turnpike.yaml');
    writeFileSync(file, `# generated by bench/run.mjs (scenario ${name})\n${sc.config(ctx)}`);
    const child = start(`turnpike-${name}${tag}`, ...pin(proxyCpu, process.execPath, [...cpuProfileArgs(S.profileDir, `turnpike-${name}${tag}`), ...(tag === '@compare' ? COMPARE_NODE_FLAGS : []), bin, 'start', '--config', file]), {
      env: { TURNPIKE_LOG_LEVEL: 'silent' },
    });
    const headers = typeof sc.headers === 'function' ? sc.headers(ctx) : (sc.headers ?? {});
    const url = `http://127.0.0.1:${port}${sc.path ?? '/'}`;
    let ready;
    if (sc.kind === 'ws') {
      // The echo server answers plain HTTP with 426: ready when that comes through Turnpike.
      const deadline = Date.now() + 30_000;
      while ((ready = await probe(url))?.status !== 426) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error(`${name}: not ready (last: ${ready?.status}):\n${child.output}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    } else {
      ready = await waitReady(url, { child, headers, ms: 30_000 });
    }
    if (sc.via !== false && !/turnpike/.test(String(ready.headers.via))) throw new Error(`${name}: expected a Via: turnpike response header, got ${ready.headers.via}`);
    if (sc.check) await sc.check(url);
    return { child, url, port, headers, config: file };
  }

  async function startFloor(name) {
    if (name === 'reference' || name === 'reference-request') {
      const script = name === 'reference' ? 'bench/reference-proxy.mjs' : 'bench/reference-proxy-request.mjs';
      const child = start(name, ...pin(proxyCpu, process.execPath, [...cpuProfileArgs(S.profileDir, name), join(ROOT, script), up.url, '0']));
      const port = Number((await waitFor(child, /LISTENING ([0-9]+)/))[1]);
      const url = `http://127.0.0.1:${port}/`;
      await waitReady(url, { child });
      return { child, url, port };
    }
    if (name === 'nginx') {
      const dir = join(tmp, `nginx-${Date.now()}`);
      mkdirSync(dir, { recursive: true });
      chmodSync(dir, 0o755);
      const p = { up: Number(new URL(up.url).port), ws: wsPort, http: await freePort(), h2c: await freePort(), wsPort: await freePort() };
      const conf = join(dir, 'nginx.conf');
      writeFileSync(conf, nginxConf(dir, p));
      const child = start('nginx', ...pin(proxyCpu, nginx, ['-p', `${dir}/`, '-c', conf, '-e', join(dir, 'error.log')]));
      const url = `http://127.0.0.1:${p.http}/`;
      try {
        await waitReady(url, { child });
      } catch (err) {
        const log = join(dir, 'error.log');
        if (existsSync(log)) err.message += `\n${readFileSync(log, 'utf8')}`;
        throw err;
      }
      return { child, url, port: p.http, h2cUrl: `http://127.0.0.1:${p.h2c}/`, wsUrl: `ws://127.0.0.1:${p.wsPort}/` };
    }
    throw new Error(`unknown floor ${name}`);
  }

  // ------------------------------------------------------------------------- measuring

  /** Every process whose CPU is accounted (backends and every target, each under its label). */
  const groups = [...backendGroups];
  const groupOf = (child) => {
    if (child && !groups.some((g) => g.pgid === child.pid)) groups.push({ name: child.label, pgid: child.pid });
  };

  /** One measurement of an item at `conns` connections for `seconds`, with CPU accounting. */
  async function run(item, conns, seconds) {
    const label = `${item.key} c${conns}`;
    const opts = { headers: item.headers, groups, target: item.child?.label ?? null, quietWaitMs: S.quietWaitMs, retries: S.retries, conns, seconds };
    const loader = item.child ? withInstructions(item.loader, item.child.pid) : item.loader;
    const r = item.kind === 'ws' ? await wsMeasure(item, opts) : await measureClean(label, loader, item.url, opts);
    if (r.instructions && r.requests) {
      r.instructions_per_req = Math.round((r.instructions.user + (r.instructions.kernel ?? 0)) / r.requests);
      r.user_instructions_per_req = Math.round(r.instructions.user / r.requests);
    }
    if (r.process_cpu_pct.other > OTHER_MAX) console.log(`  WARNING ${label}: processes outside the benchmark used ${r.process_cpu_pct.other}% CPU`);
    if (r.socket_errors || r.non_2xx) throw new Error(`${label}: ${r.socket_errors} socket errors, ${r.non_2xx} non-2xx responses`);
    return r;
  }

  /** A load generator whose runs also count the instructions of process group `pgid` (perf). */
  function withInstructions(loader, pgid) {
    return {
      run(url, o) {
        const counter = countInstructions(pgid);
        const l = loader.run(url, o);
        return { child: l.child, done: l.done.then(async (r) => ({ ...r, instructions: counter ? await counter.stop() : null })) };
      },
    };
  }

  /** h2load as a load generator with the interface of loadGenerator(): percentiles from its log file. */
  let h2n = 0;
  const h2Loader = (h1) => ({
    run(url, { conns, seconds }) {
      const log = join(tmp, `h2load-${++h2n}.log`);
      const child = start(`h2load -c${conns}`, ...pin(loadCpu, h2load, [...(h1 ? ['--h1'] : []), '-t1', `-c${conns}`, '-m1', `-D${seconds}`, `--log-file=${log}`, url]));
      const done = runToEnd(child, (seconds + 30) * 1000).then((out) => {
        const r = parseH2load(out);
        const p = h2loadLogPercentiles(readFileSync(log, 'utf8'));
        rmSync(log, { force: true });
        return { ...r, ...p, non_2xx: r.status['3xx'] + r.status['4xx'] + r.status['5xx'], socket_errors: r.failed + r.timeout };
      });
      return { child, done };
    },
  });

  /** The WebSocket client (bench/ws.mjs --client) as one measurement. */
  async function wsMeasure(item, { conns, seconds, target }) {
    const before = await waitQuiet(groups, S.quietWaitMs);
    const sample = startCpuSample(groups, true);
    const counter = item.child && target ? countInstructions(item.child.pid) : null;
    const c = start(`ws-client -c${conns}`, ...pin(loadCpu, process.execPath, [join(ROOT, 'bench/ws.mjs'), '--client', item.url, String(conns), String(seconds), String(WS_SIZE)]));
    const t0 = process.hrtime.bigint();
    const out = await runToEnd(c, (seconds + 30) * 1000);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const j = JSON.parse(out.trim().split('\n').pop());
    const r = { rps: j.msgs_per_s, p50_us: j.p50_us, p99_us: j.p99_us, requests: j.msgs, socket_errors: j.errors, non_2xx: 0, ...endCpuSample(sample), other_cpu_before_pct: before };
    r.instructions = counter ? await counter.stop() : null;
    // Each message crosses the proxy twice (there and back): CPU per echoed message.
    if (target && r.requests) r.proxy_cpu_us_per_req = round(((r.process_cpu_pct[target] / 100) * secs * 1e6) / r.requests, 1);
    return r;
  }

  // ------------------------------------------------------------------------- targets, all up at once

  // Everything is started first and measured interleaved, round after round, so that a machine
  // whose speed drifts over minutes (shared VMs do) moves every target alike.
  const items = [];
  const add = (key, url, child, extra = {}) => {
    groupOf(child);
    items.push({ key, url, child, headers: {}, loader: load, kind: 'http', ...extra });
  };
  const running = {};
  add('direct', `${up.url}/`, null);
  for (const f of FLOORS) {
    if (f === 'nginx' && !nginx) continue;
    running[f] = await startFloor(f);
    add(f, running[f].url, running[f].child);
  }
  const failed = {};
  const configs = {};
  for (const name of SCENARIOS) {
    const sc = SCENARIO[name];
    if (sc.kind === 'h2' && !h2load) continue;
    try {
      const h = await startTurnpike(name);
      configs[name] = readFileSync(h.config, 'utf8').length > 20_000 ? `(${relative(tmp, h.config)}, generated)` : readFileSync(h.config, 'utf8');
      if (sc.kind === 'h2') {
        const h2 = h2Loader(false);
        const h1 = h2Loader(true);
        add(name, h.url, h.child, { loader: h2 });
        add(`${name}:direct`, `${up.url}/`, null, { loader: h1 });
        if (running.reference) add(`${name}:reference`, running.reference.url, running.reference.child, { loader: h1 });
        if (running.nginx) add(`${name}:nginx`, running.nginx.h2cUrl, running.nginx.child, { loader: h2 });
      } else if (sc.kind === 'ws') {
        add(name, h.url.replace(/^http/, 'ws'), h.child, { kind: 'ws' });
        add(`${name}:direct`, `ws://127.0.0.1:${wsPort}/`, null, { kind: 'ws' });
        if (running.nginx) add(`${name}:nginx`, running.nginx.wsUrl, running.nginx.child, { kind: 'ws' });
      } else {
        add(name, h.url, h.child, { headers: h.headers });
        if (COMPARE) {
          // The same scenario on the other build, measured right after it in every round.
          const o = await startTurnpike(name, COMPARE, '@compare');
          add(`${name}@compare`, o.url, o.child, { headers: o.headers });
        }
      }
    } catch (err) {
      console.log(`[${name}] FAILED to start: ${err.message}`);
      failed[name] = err.message.slice(0, 4000);
    }
  }
  console.log(`\n${items.length} measurements per round: ${items.map((i) => i.key).join(', ')}`);

  // Warm-up: every item once (JIT, connections, the JWKS fetch, the cache's first MISS).
  for (const item of items) {
    if (interrupted()) break;
    await (item.kind === 'ws' ? wsMeasure(item, { conns: CONNS, seconds: S.warmup, target: null }) : item.loader.run(item.url, { headers: item.headers, conns: CONNS, seconds: S.warmup }).done);
  }

  // ------------------------------------------------------------------------- rounds

  const rounds = [];
  for (let n = 1; n <= S.rounds && !interrupted(); n++) {
    console.log(`\n=== round ${n}/${S.rounds}`);
    const res = {};
    rounds.push(res);
    for (const item of items) {
      if (interrupted()) break;
      if (failed[item.key.split(':')[0]]) continue;
      try {
        const c64 = await run(item, CONNS, S.duration);
        const c1 = await run(item, 1, S.c1Duration);
        res[item.key] = { c64, c1 };
        const cpu = item.child ? `; ${c64.proxy_cpu_us_per_req} us/req CPU${c64.instructions_per_req ? `, ${kInstr(c64.instructions_per_req)} instr/req` : ''}` : '';
        console.log(`  ${item.key.padEnd(22)} c${CONNS} ${fmtRps(c64.rps).padStart(8)}/s p50 ${fmtUs(c64.p50_us).padStart(7)} p99 ${fmtUs(c64.p99_us).padStart(8)}${cpu} | c1 p50 ${fmtUs(c1.p50_us)} p99 ${fmtUs(c1.p99_us)}; other ${Math.max(c64.process_cpu_pct.other, c1.process_cpu_pct.other)}%`);
      } catch (err) {
        if (interrupted()) break;
        console.log(`  ${item.key}: FAILED: ${err.message}`);
        failed[item.key.split(':')[0]] = err.message.slice(0, 4000);
      }
    }
  }
  for (const item of items) if (item.child) await stop(item.child);
  if (interrupted()) return;

  // ------------------------------------------------------------------------- summary

  const med = (pick) => {
    const vals = rounds.map(pick).filter(Boolean);
    return vals.length ? medianOf(vals) : null;
  };
  const floors = {};
  for (const f of ['direct', ...FLOORS]) {
    const m = med((r) => r[f]);
    if (m) floors[f] = m;
  }
  const c1Latency = (m) => (load.tool === 'wrk' ? m.c1.p50_us : 1e6 / m.c1.rps);
  const added = (m, base) => (m && base ? round(c1Latency(m) - c1Latency(base), 1) : null);
  for (const f of FLOORS) if (floors[f]) floors[f].added_p50_c1_us = added(floors[f], floors.direct);

  const scenarios = {};
  for (const name of SCENARIOS) {
    const tp = med((r) => r[name]);
    if (!tp) {
      if (failed[name]) scenarios[name] = { error: failed[name] };
      continue;
    }
    const kind = SCENARIO[name].kind ?? 'http';
    const s = { description: SCENARIO[name].desc, kind, config: configs[name], turnpike: tp };
    // The floors of this row: the HTTP/1.1 floors, or the ones measured with this row's tool.
    const own = (f) => med((r) => r[`${name}:${f}`]);
    const base = kind === 'http' ? floors : { direct: own('direct'), reference: own('reference'), nginx: own('nginx') };
    s.floors_measured_here = kind !== 'http';
    if (kind !== 'http') s.floors = base;
    s.added_p50_c1_us = base.direct ? round(tp.c1.p50_us - base.direct.c1.p50_us, 1) : null;
    s.vs_reference = ratio(tp.c64.rps, base.reference?.c64.rps);
    s.vs_reference_request = kind === 'http' ? ratio(tp.c64.rps, base['reference-request']?.c64.rps) : null;
    s.vs_nginx = ratio(tp.c64.rps, base.nginx?.c64.rps);
    s.vs_direct = ratio(tp.c64.rps, base.direct?.c64.rps);
    s.nginx_added_p50_c1_us = base.nginx && base.direct ? round(base.nginx.c1.p50_us - base.direct.c1.p50_us, 1) : null;
    const other = med((r) => r[`${name}@compare`]);
    if (other) {
      s.compare = { build: COMPARE, turnpike: other, rps_ratio: ratio(tp.c64.rps, other.c64.rps), instructions_ratio: ratio(tp.c64.instructions_per_req, other.c64.instructions_per_req), cpu_ratio: ratio(tp.c64.proxy_cpu_us_per_req, other.c64.proxy_cpu_us_per_req) };
      console.log(`A/B ${name}: this build / ${relative(ROOT, COMPARE)}: req/s ${pct(s.compare.rps_ratio)}, instructions/req ${pct(s.compare.instructions_ratio)} (${kInstr(tp.c64.instructions_per_req)} vs ${kInstr(other.c64.instructions_per_req)}), CPU/req ${pct(s.compare.cpu_ratio)}`);
    }
    if (failed[name]) s.error_in_a_round = failed[name];
    scenarios[name] = s;
  }

  const cols = ['target', 'unit', `rate c${CONNS}`, 'p50', 'p99', 'p50 c1', 'p99 c1', 'added p50 c1', 'CPU/req', 'instr/req', 'x reference', 'x ref-request', 'x nginx'];
  const rows = [];
  for (const [f, m] of Object.entries(floors)) {
    rows.push([f, 'req/s', fmtRps(m.c64.rps), fmtUs(m.c64.p50_us), fmtUs(m.c64.p99_us), fmtUs(m.c1.p50_us), fmtUs(m.c1.p99_us), f === 'direct' ? '-' : fmtUs(m.added_p50_c1_us),
      m.c64.proxy_cpu_us_per_req ? `${m.c64.proxy_cpu_us_per_req}us` : '-', kInstr(m.c64.instructions_per_req), f === 'direct' ? '-' : pct(ratio(m.c64.rps, floors.reference?.c64.rps)), '-', f === 'direct' ? '-' : pct(ratio(m.c64.rps, floors.nginx?.c64.rps))]);
  }
  for (const [name, s] of Object.entries(scenarios)) {
    if (s.error) {
      rows.push([name, 'FAILED', '', '', '', '', '', '', '', '', '', '', '']);
      continue;
    }
    const t = s.turnpike;
    rows.push([name, s.kind === 'ws' ? 'msg/s' : 'req/s', fmtRps(t.c64.rps), fmtUs(t.c64.p50_us), fmtUs(t.c64.p99_us), fmtUs(t.c1.p50_us), fmtUs(t.c1.p99_us), fmtUs(s.added_p50_c1_us),
      `${t.c64.proxy_cpu_us_per_req}us`, kInstr(t.c64.instructions_per_req), pct(s.vs_reference), pct(s.vs_reference_request), pct(s.vs_nginx)]);
  }
  console.log(`\n${formatTable(cols, rows)}`);
  console.log('(http2 and websocket rows: ratios to floors measured with the same load tool in their own step; see the JSON)');

  // Acceptance (issue 12).
  const plain = scenarios.plain;
  const pol = scenarios.policies;
  const acceptance = {
    plain_vs_reference: plain?.vs_reference ?? null,
    plain_vs_reference_request: plain?.vs_reference_request ?? null,
    plain_ok: plain?.vs_reference == null ? null : plain.vs_reference >= 1.1,
    policies_vs_reference: pol?.vs_reference ?? null,
    policies_vs_reference_request: pol?.vs_reference_request ?? null,
    policies_ok: pol?.vs_reference == null ? null : pol.vs_reference >= 0.9,
    policies_added_p50_c1_us: pol?.added_p50_c1_us ?? null,
    nginx_added_p50_c1_us: floors.nginx?.added_p50_c1_us ?? null,
    latency_ok: pol?.added_p50_c1_us == null || floors.nginx?.added_p50_c1_us == null ? null : pol.added_p50_c1_us <= 1.3 * floors.nginx.added_p50_c1_us,
  };
  const verdict = (ok) => (ok === null ? 'n/a' : ok ? 'PASS' : 'FAIL');
  console.log('');
  console.log(`plain / reference:          ${pct(acceptance.plain_vs_reference)} (>= 110%: ${verdict(acceptance.plain_ok)}); / reference-request ${pct(acceptance.plain_vs_reference_request)}`);
  console.log(`policies / reference:       ${pct(acceptance.policies_vs_reference)} (>= 90%: ${verdict(acceptance.policies_ok)}); / reference-request ${pct(acceptance.policies_vs_reference_request)}`);
  console.log(`policies added p50 at c1:   ${fmtUs(acceptance.policies_added_p50_c1_us)} vs nginx ${fmtUs(acceptance.nginx_added_p50_c1_us)} (<= 1.3x: ${verdict(acceptance.latency_ok)})`);

  // Against the baseline: ratio to the reference and CPU per request, scenario by scenario.
  let comparison = null;
  if (BASELINE && existsSync(BASELINE) && resolve(BASELINE) !== resolve(S.out)) {
    const before = JSON.parse(readFileSync(BASELINE, 'utf8'));
    comparison = {};
    const lines = [];
    for (const [name, s] of Object.entries(scenarios)) {
      const b = before.scenarios?.[name];
      if (s.error || !b || b.error) continue;
      const r = ratio(s.vs_reference, b.vs_reference);
      const cpu = ratio(s.turnpike.c64.proxy_cpu_us_per_req, b.turnpike.c64.proxy_cpu_us_per_req);
      const instr = ratio(s.turnpike.c64.instructions_per_req, b.turnpike.c64.instructions_per_req);
      comparison[name] = { instructions_per_req_before: b.turnpike.c64.instructions_per_req ?? null, instructions_per_req_now: s.turnpike.c64.instructions_per_req ?? null, instructions_change: instr, vs_reference_before: b.vs_reference, vs_reference_now: s.vs_reference, change: r, cpu_per_req_before: b.turnpike.c64.proxy_cpu_us_per_req, cpu_per_req_now: s.turnpike.c64.proxy_cpu_us_per_req, cpu_change: cpu, regressed: instr !== null ? instr > 1.05 : r !== null && r < 0.95 };
      lines.push([name, pct(b.vs_reference), pct(s.vs_reference), r === null ? '-' : `${((r - 1) * 100).toFixed(1)}%`, `${b.turnpike.c64.proxy_cpu_us_per_req}us`, `${s.turnpike.c64.proxy_cpu_us_per_req}us`, kInstr(b.turnpike.c64.instructions_per_req), kInstr(s.turnpike.c64.instructions_per_req), instr === null ? '-' : `${((instr - 1) * 100).toFixed(1)}%`, comparison[name].regressed ? 'REGRESSED' : '']);
    }
    console.log(`\nagainst ${relative(ROOT, BASELINE)} (${before.git?.commit ?? '?'}, ${before.date ?? '?'}):`);
    console.log(formatTable(['scenario', 'x reference before', 'now', 'change', 'CPU/req before', 'now', 'instr/req before', 'now', 'change', ''], lines));
  }

  const out = {
    date: new Date().toISOString(),
    machine,
    git,
    method: { tool: load.tool, connections: CONNS, duration_s: S.duration, c1_duration_s: S.c1Duration, warmup_s: S.warmup, rounds: S.rounds, retries: S.retries, load_cpu: loadCpu, proxy_cpu: proxyCpu, ws_message_bytes: WS_SIZE, notes },
    floors,
    scenarios,
    acceptance,
    comparison,
    rounds,
  };
  writeJson(S.out, out);
  console.log(`\nwrote ${relative(process.cwd(), S.out)}`);
  if (Object.values(scenarios).some((s) => s.error)) process.exitCode = 1;
}

main()
  .catch((err) => {
    console.error(`\nbenchmark failed: ${err.stack ?? err}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
