#!/usr/bin/env node
/**
 * `npm run bench:payload`: what composition and response caching buy (issue 8: "a two-backend
 * parallel composition vs calling the two backends directly in sequence from the client; cached
 * responses vs uncached"), in one run, in two parts (BENCH_PARTS):
 *
 * compose  Two JSON upstreams, users and orders (this file run as
 *          `node bench/payload.mjs --upstream <port> <delayMs> <name>`), per backend delay in
 *          BENCH_DELAYS (default 0 and 10 ms: each answer is sent after a setTimeout of that
 *          long). A fresh Turnpike per delay and round with one composing route:
 *
 *            routes: [{name: profile, paths: ["/profile/{id}"], compose: {steps: [
 *              {name: user, service: users, path: "/users/{id}"},
 *              {name: orders, service: orders, path: /orders, query: {user: "{id}"}}]}}]
 *
 *          Both steps are independent, so Turnpike sends them in parallel. Two scenarios, both
 *          driven by the same Node client (this file run as `--client`; undici Pools with
 *          keep-alive, one per origin), since wrk cannot do a pair of dependent requests:
 *
 *            direct   the client calls GET /users/{id} and then GET /orders?user={id} itself, in
 *                     sequence (one "op" = the pair)
 *            compose  the client calls GET /profile/{id} on Turnpike (one op = one request)
 *
 *          each at 1 connection (one loop; the direct client holds one connection per backend)
 *          and at BENCH_CONCURRENCY loops (default 16; as many connections per origin): ops/s,
 *          p50, p99 of the op's latency, Turnpike CPU per composed request. Ids cycle over
 *          1..1000. Both concurrencies run for BENCH_DURATION seconds (with 10 ms backends a
 *          single loop completes only ~50 pairs/s: half the time would leave p99 to a handful
 *          of samples). Each loop makes one unmeasured op first, so connections are open when
 *          the clock starts.
 *
 * cache    One JSON upstream (api) answering after BENCH_CACHE_DELAY ms (default 2), with
 *          `Cache-Control: max-age=60` on every response. A fresh Turnpike per scenario and round
 *          with one route `/items/{id}` to it:
 *
 *            uncached  no plugins
 *            cached    plugins: [{name: cache, config: {ttl: 30s}}]
 *
 *          wrk (lib's loadGenerator / measureClean) on one URL (/items/42, the warm key) at 64
 *          connections (req/s, p50, p99, Turnpike CPU per request) and 1 connection (half the
 *          duration); ratio cached / uncached of req/s in the same round.
 *
 * Checks before any load (a failed check fails the scenario, and the run): compose: /profile/7
 * answers 200 with the user and the orders of user 7 and no Turnpike-Partial, each upstream
 * got exactly one request per composed request, and the composed latency with a 10 ms backend is
 * reported against the 2 x delay a sequential call would need; cache: the cached route answers
 * MISS then HIT (the plugin's X-Cache-Status) with the upstream's body and the upstream got
 * exactly one request for the warm key; the uncached route has no X-Cache-Status and the upstream
 * gets every request. After the load, the upstream's requests for the warm key are counted
 * again (0 expected for cached while the stored response is fresh, i.e. 60 s after the MISS).
 * A measurement with non-2xx responses or socket errors fails the scenario.
 *
 * Pinning (taskset, two CPUs): Turnpike alone on the second CPU; the load generator (wrk or the
 * Node client) and the upstreams on the first. wrk when installed, else autocannon. Each round
 * measures the scenarios in a rotated order; the summary is the median over the rounds. Results:
 * tables on stdout and bench/results/payload.json. Every config has access_log disabled.
 *
 * Environment (as bench/observability.mjs):
 *   BENCH_PARTS        comma list: compose,cache (default both)
 *   BENCH_DELAYS       compose part: backend delays in ms, comma list (default 0,10)
 *   BENCH_CONCURRENCY  compose part: concurrent client loops for throughput (default 16)
 *   BENCH_CACHE_DELAY  cache part: upstream delay in ms (default 2; 0 allowed)
 *   BENCH_DURATION     seconds per measurement (default 10); the cache part's 1-connection
 *                      measurement takes half of it (at least 1 s)
 *   BENCH_WARMUP       warm-up seconds per scenario (default 2)
 *   BENCH_ROUNDS       rounds (default 1); the summary is the median
 *   BENCH_TOOL         wrk | autocannon (cache part; default: wrk when installed)
 *   BENCH_PROFILE      a directory: run Turnpike with --cpu-prof writing there, one profile per
 *                      Turnpike (payload-compose-d<delay>-r<round>-*.cpuprofile,
 *                      payload-cache-<scenario>-r<round>-*.cpuprofile; such numbers are not
 *                      comparable; summarize with bench/profile.mjs)
 *   BENCH_OUT          where to write the JSON results (default bench/results/payload.json)
 *   BENCH_NO_BUILD     1 = do not run `npm run build` first
 *   BENCH_TURNPIKE     path of another Turnpike entry point to measure instead of bin/turnpike.js
 *   BENCH_KEEP_TMP     1 = keep the temp dir (configs)
 *   BENCH_RETRIES      re-measure at most this many times (default 2) while processes outside
 *                      the benchmark use more than 5% CPU; the quietest is kept
 *   BENCH_QUIET_WAIT   before each measurement, wait at most this many seconds (default 60) for
 *                      processes outside the benchmark to use < 5% CPU
 *
 * Every process it starts runs in its own process group; all of them are killed on exit, on
 * error and on SIGINT/SIGTERM. All traffic stays on 127.0.0.1.
 */
import { writeFileSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ROOT, OTHER_MAX, positive, benchSettings, installCleanupHandlers, interrupted, cleanup, makeTmpDir, start, stop, waitFor, runToEnd,
  pinning, loadGenerator, machineInfo, gitHead, distStamp, buildTurnpike, cpuProfileArgs, measureClean,
  freePort, probe, waitReady, round, sleep, ratio, median, medianOf, fmtRps, fmtUs, pct, formatTable, markdownTable, writeJson,
} from './lib.mjs';

const SELF = fileURLToPath(import.meta.url);
const env = process.env;

// ---------------------------------------------------------------------------------------------
// `node bench/payload.mjs --upstream <port> <delayMs> <name>`: a keep-alive node:http server
// answering a small JSON object (shaped by `name`: users, orders, or an item) after delayMs
// (setTimeout when > 0), with Cache-Control: max-age=60. GET /__stats answers the requests
// counted so far, per path + query (not counted itself, never delayed). Prints
// "LISTENING <port>".

/** The JSON body the upstream named `name` answers to `url`. */
function upstreamBody(name, url) {
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  const last = decodeURIComponent(path.slice(path.lastIndexOf('/') + 1));
  if (name === 'users') return { id: last, name: `user ${last}`, email: `user${last}@example.com`, tier: 'gold', since: '2024-03-01' };
  if (name === 'orders') {
    const user = new URLSearchParams(q === -1 ? '' : url.slice(q + 1)).get('user');
    return { user, orders: [{ id: 1, total: 12.5, currency: 'EUR', status: 'shipped' }, { id: 2, total: 40, currency: 'EUR', status: 'open' }] };
  }
  return { id: last, name: `item ${last}`, price: 9.99, currency: 'EUR', stock: 17, tags: ['bench', 'payload'] };
}

function jsonUpstream() {
  const port = Number(process.argv[3] ?? 0);
  const delay = Number(process.argv[4] ?? 0);
  const name = process.argv[5] ?? 'api';
  const counts = new Map();
  let total = 0;
  const bodies = new Map();
  const bodyOf = (url) => {
    let b = bodies.get(url);
    if (b === undefined) {
      b = Buffer.from(JSON.stringify(upstreamBody(name, url)));
      if (bodies.size < 10_000) bodies.set(url, b);
    }
    return b;
  };
  const server = createServer({ keepAliveTimeout: 65_000, noDelay: true }, (req, res) => {
    if (req.headers['content-length'] || req.headers['transfer-encoding']) req.resume();
    if (req.url === '/__stats') {
      const b = JSON.stringify({ name, delay_ms: delay, total, paths: Object.fromEntries(counts) });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(b) });
      return res.end(b);
    }
    total++;
    counts.set(req.url, (counts.get(req.url) ?? 0) + 1);
    const body = bodyOf(req.url);
    const send = () => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(body.length), 'cache-control': 'max-age=60' });
      res.end(body);
    };
    if (delay > 0) setTimeout(send, delay);
    else send();
  });
  server.headersTimeout = 66_000;
  server.listen(port, '127.0.0.1', () => process.stdout.write(`LISTENING ${server.address().port}\n`));
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
}

// ---------------------------------------------------------------------------------------------
// `node bench/payload.mjs --client <spec>`: the Node load generator of the compose part. spec
// (JSON): {steps: [[origin, pathTemplate], ...], conns, seconds}. `conns` loops run for
// `seconds`; each op sends the steps in sequence ({id} replaced by an id cycling over 1..1000),
// over one undici Pool per origin with `conns` keep-alive connections, reading every body.
// Prints "RESULT <json>": {rps (ops/s), p50_us, p99_us, mean_us, max_us, requests (ops),
// http_requests, socket_errors, non_2xx, elapsed_s, first_error}.

const IDS = 1000;

async function client() {
  const spec = JSON.parse(process.argv[3]);
  const { Pool } = await import('undici');
  const pools = new Map();
  const steps = spec.steps.map(([origin, path]) => {
    if (!pools.has(origin)) pools.set(origin, new Pool(origin, { connections: spec.conns, pipelining: 1, keepAliveTimeout: 60_000 }));
    return [pools.get(origin), path];
  });
  const lat = [];
  let ops = 0;
  let http = 0;
  let non2xx = 0;
  let errors = 0;
  let firstError = null;
  let end = Infinity;

  /** One op: the steps in sequence; its latency in us, or null when a step failed. */
  async function op(id) {
    const t0 = performance.now();
    for (const [pool, path] of steps) {
      const p = path.replace('{id}', id);
      try {
        const r = await pool.request({ path: p, method: 'GET' });
        await r.body.text();
        http++;
        if (r.statusCode < 200 || r.statusCode > 299) {
          non2xx++;
          firstError ??= `${p}: status ${r.statusCode}`;
          return null;
        }
      } catch (err) {
        errors++;
        firstError ??= `${p}: ${err.code ?? ''} ${err.message}`;
        await new Promise((r) => setTimeout(r, 1));
        return null;
      }
    }
    return (performance.now() - t0) * 1000;
  }

  async function loop(n, prime) {
    let i = n * 7919;
    if (prime) return op(String((i % IDS) + 1));
    while (performance.now() < end) {
      const us = await op(String((i++ % IDS) + 1));
      ops++;
      if (us !== null) lat.push(us);
    }
  }
  const loops = Array.from({ length: spec.conns }, (_, n) => n);
  await Promise.all(loops.map((n) => loop(n, true))); // connections open, code warm: not measured
  [http, non2xx, errors, firstError] = [0, 0, 0, null];
  const t0 = performance.now();
  end = t0 + spec.seconds * 1000;
  await Promise.all(loops.map((n) => loop(n, false)));
  const elapsed = (performance.now() - t0) / 1000;
  await Promise.all([...pools.values()].map((p) => p.close()));
  const sorted = Float64Array.from(lat).sort();
  const q = (x) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(x * sorted.length) - 1))] : null);
  const result = {
    rps: ops / elapsed,
    p50_us: round(q(0.5), 1),
    p99_us: round(q(0.99), 1),
    mean_us: sorted.length ? round(sorted.reduce((a, b) => a + b, 0) / sorted.length, 1) : null,
    max_us: round(q(1), 1),
    requests: ops,
    http_requests: http,
    socket_errors: errors,
    non_2xx: non2xx,
    elapsed_s: round(elapsed, 3),
    first_error: firstError,
  };
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
}

// ---------------------------------------------------------------------------------------------
// Settings.

const S = benchSettings({ out: 'bench/results/payload.json' });
const PARTS_ALL = ['compose', 'cache'];
const PARTS = (env.BENCH_PARTS ?? PARTS_ALL.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
const msList = (v, name) => v.split(',').map((s) => s.trim()).filter(Boolean).map((s) => {
  if (!/^[0-9]+$/.test(s)) throw new Error(`${name}: "${s}" is not a whole number of milliseconds`);
  return Number(s);
});
const DELAYS = msList(env.BENCH_DELAYS ?? '0,10', 'BENCH_DELAYS');
const CACHE_DELAY = msList(env.BENCH_CACHE_DELAY ?? '2', 'BENCH_CACHE_DELAY')[0] ?? 2;
const CONC = Math.round(positive(env.BENCH_CONCURRENCY, 16));
/** wrk connections of the cache part. */
const CONNS = 64;
/** Requests sent one by one to check a scenario. */
const CHECK_REQUESTS = 20;
/** The cache part's warm key. */
const KEY = '/items/42';
const CACHE_TTL = '30s';
const UPSTREAM_MAX_AGE_S = 60;
const CACHE_STATUS = 'x-cache-status';

const COMPOSE_SCENARIOS = [
  { name: 'direct', desc: 'client calls users, then orders, in sequence (one op = the pair)' },
  { name: 'compose', desc: 'client calls Turnpike /profile/{id}; Turnpike calls both in parallel' },
];
const CACHE_SCENARIOS = [
  { name: 'uncached', desc: 'route /items/{id}, no plugins', cached: false },
  { name: 'cached', desc: `route /items/{id}, cache {ttl: ${CACHE_TTL}}`, cached: true },
];

function composeConfig({ port, usersUrl, ordersUrl, delay }) {
  return `# generated by bench/payload.mjs (compose, backend delay ${delay} ms)
listen: 127.0.0.1:${port}
access_log: {enabled: false}
services:
  - {name: users, url: "${usersUrl}"}
  - {name: orders, url: "${ordersUrl}"}
routes:
  - name: profile
    paths: ["/profile/{id}"]
    methods: [GET]
    compose:
      steps:
        - {name: user, service: users, path: "/users/{id}"}
        - {name: orders, service: orders, path: /orders, query: {user: "{id}"}}
`;
}

function cacheConfig(sc, { port, apiUrl }) {
  return `# generated by bench/payload.mjs (cache, scenario ${sc.name})
listen: 127.0.0.1:${port}
access_log: {enabled: false}
services:
  - name: api
    url: ${apiUrl}
    routes:
      - name: items
        paths: ["/items/{id}"]
${sc.cached ? `        plugins: [{name: cache, config: {ttl: ${CACHE_TTL}}}]\n` : ''}`;
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const unknown = PARTS.filter((p) => !PARTS_ALL.includes(p));
  if (unknown.length) throw new Error(`BENCH_PARTS: unknown part(s) ${unknown.join(', ')} (known: ${PARTS_ALL.join(', ')})`);
  if (PARTS.includes('compose') && !DELAYS.length) throw new Error('BENCH_DELAYS is empty');

  const { loadCpu, proxyCpu, pin, note: pinNote } = pinning();
  const load = loadGenerator({ pin, cpu: loadCpu });
  const notes = [...(pinNote ? [pinNote] : []), ...(PARTS.includes('cache') ? load.notes : [])];
  if (S.profileDir) notes.push(`profiling into ${S.profileDir}: numbers are NOT representative`);

  /** The compose part's load generator: this file as --client, pinned like wrk. `steps` stands in for the URL. */
  const nodeClient = {
    run(steps, { conns, seconds }) {
      const spec = JSON.stringify({ steps, conns, seconds });
      const child = start(`client -c${conns}`, ...pin(loadCpu, process.execPath, [SELF, '--client', spec]));
      const done = runToEnd(child, (seconds + 30) * 1000).then((out) => {
        const m = /^RESULT (.+)$/m.exec(out);
        if (!m) throw new Error(`the client printed no result:\n${out}`);
        return JSON.parse(m[1]);
      });
      return { child, done };
    },
  };

  const machine = machineInfo({ tool: PARTS.includes('cache') ? load.version : null, compose_client: `undici Pool (node ${process.version})` });
  const git = { commit: gitHead(), turnpike_entry: relative(ROOT, S.turnpikeBin) };

  console.log(`Turnpike payload benchmark (${PARTS.join(', ')}): ${S.duration}s per measurement (cache c1: ${S.c1Duration}s), ${S.warmup}s warm-up per scenario, ${S.rounds} round(s)`);
  if (PARTS.includes('compose')) console.log(`compose: backend delays ${DELAYS.join(', ')} ms; Node client at 1 and ${CONC} loops`);
  if (PARTS.includes('cache')) console.log(`cache: upstream delay ${CACHE_DELAY} ms; ${load.tool} at ${CONNS} and 1 connections`);
  console.log(`machine: ${machine.nproc} CPUs, ${machine.cpu}, ${machine.kernel}, node ${machine.node}, undici ${machine.undici}`);
  if (machine.tool) console.log(`load: ${machine.tool}`);
  console.log(`turnpike: ${git.commit ?? '?'} (${git.turnpike_entry})`);
  console.log(loadCpu !== null ? `pinning: load generator + upstreams on CPU ${loadCpu}, Turnpike on CPU ${proxyCpu}` : 'pinning: none');
  for (const n of notes) console.log(`note: ${n}`);

  const startedAt = Date.now();
  buildTurnpike(S.build);
  const builtAt = distStamp();
  const tmp = makeTmpDir('turnpike-bench-payload-', S.keepTmp);
  if (S.profileDir) mkdirSync(S.profileDir, { recursive: true });

  /** Starts a JSON upstream on the load generator's CPU: { name, delay, child, url, stats() }. */
  async function startJsonUpstream(name, delay) {
    const child = start(`${name}-d${delay}`, ...pin(loadCpu, process.execPath, [SELF, '--upstream', '0', String(delay), name]));
    const url = `http://127.0.0.1:${Number((await waitFor(child, /LISTENING ([0-9]+)/))[1])}`;
    await waitReady(`${url}/__stats`, { child });
    const stats = async () => {
      const r = await probe(`${url}/__stats`);
      if (r?.status !== 200) throw new Error(`${name} upstream /__stats answered ${r?.status ?? 'nothing'}`);
      return JSON.parse(r.body);
    };
    return { name, delay, child, url, stats, group: { name: `${name}-d${delay}`, pgid: child.pid } };
  }

  /** A fresh Turnpike pinned alone on its CPU, with `config` (a function of the port). */
  async function startTurnpike(slug, roundNo, config) {
    const port = await freePort();
    const file = join(tmp, `turnpike-${slug}.yaml`);
    writeFileSync(file, config(port));
    const args = [...cpuProfileArgs(S.profileDir, `payload-${slug}-r${roundNo}`), S.turnpikeBin, 'start', '--config', file];
    const child = start('turnpike', ...pin(proxyCpu, process.execPath, args), { env: { TURNPIKE_LOG_LEVEL: 'silent' } });
    return { child, base: `http://127.0.0.1:${port}` };
  }

  const failIfErrors = (label, r) => {
    if (r.socket_errors || r.non_2xx) throw new Error(`${label}: ${r.socket_errors} socket errors, ${r.non_2xx} non-2xx responses${r.first_error ? ` (first: ${r.first_error})` : ''}`);
  };
  const warnIfDisturbed = (label, r) => {
    if (r.process_cpu_pct.other > OTHER_MAX) console.log(`  WARNING ${label}: processes outside the benchmark used ${r.process_cpu_pct.other}% CPU during the measurement`);
  };
  const cpuNote = (r) => Object.entries(r.process_cpu_pct).map(([k, v]) => `${k} ${v}%`).join(', ');

  const out = {
    date: new Date().toISOString(),
    machine,
    git,
    method: {
      parts: PARTS,
      duration_s: S.duration,
      c1_duration_s: S.c1Duration,
      warmup_s: S.warmup,
      rounds: S.rounds,
      retries: S.retries,
      load_cpu: loadCpu,
      proxy_cpu: proxyCpu,
      check_requests: CHECK_REQUESTS,
    },
  };
  const failures = [];
  const tables = {};

  // -------------------------------------------------------------------------------------------
  // Part compose.

  if (PARTS.includes('compose') && !interrupted()) {
    console.log(`\n=== compose: ${COMPOSE_SCENARIOS.map((s) => `${s.name} (${s.desc})`).join('; ')}`);
    const ups = {};
    for (const d of DELAYS) ups[d] = { users: await startJsonUpstream('users', d), orders: await startJsonUpstream('orders', d) };
    const allUpstreamGroups = Object.values(ups).flatMap((u) => [u.users.group, u.orders.group]);
    const concs = [1, CONC];
    const cl = (c) => `c${c}`;
    const results = Object.fromEntries(DELAYS.map((d) => [d, Object.fromEntries(COMPOSE_SCENARIOS.map((s) => [s.name, { description: s.desc, rounds: [] }]))]));
    const roundRatios = [];
    const checks = {};

    /** /profile/{id} works, both steps run once per request; the composed latency against the delay. */
    async function checkCompose(d, h) {
      const { users, orders } = ups[d];
      const first = await waitReady(`${h.base}/profile/7`, { child: h.child });
      const s0 = [await users.stats(), await orders.stats()];
      const times = [];
      for (let i = 0; i < CHECK_REQUESTS; i++) {
        const id = String(i + 1);
        const t0 = performance.now();
        const r = i === 0 ? first : await probe(`${h.base}/profile/${id}`);
        if (i > 0) times.push(performance.now() - t0);
        const want = i === 0 ? '7' : id;
        if (r?.status !== 200) throw new Error(`/profile/${want} answered ${r?.status ?? 'nothing'}: ${r?.body?.slice(0, 300)}`);
        if (r.headers['turnpike-partial'] !== undefined) throw new Error(`/profile/${want}: Turnpike-Partial: ${r.headers['turnpike-partial']}`);
        const j = JSON.parse(r.body);
        if (j.user?.id !== want || j.orders?.user !== want || j.orders?.orders?.length !== 2) throw new Error(`/profile/${want}: unexpected body ${r.body.slice(0, 300)}`);
      }
      const s1 = [await users.stats(), await orders.stats()];
      const sent = CHECK_REQUESTS - 1; // the first answer came from waitReady, before s0
      const got = [s1[0].total - s0[0].total, s1[1].total - s0[1].total];
      if (got[0] !== sent || got[1] !== sent) throw new Error(`${sent} composed requests reached users ${got[0]} and orders ${got[1]} times (expected ${sent} each)`);
      // The client's own calls work too (the direct scenario's paths).
      for (const [u, p] of [[users, '/users/7'], [orders, '/orders?user=7']]) {
        const r = await probe(`${u.url}${p}`);
        if (r?.status !== 200) throw new Error(`${u.name} ${p} answered ${r?.status ?? 'nothing'}`);
      }
      const minMs = round(Math.min(...times), 2);
      const medMs = round(median(times), 2);
      let parallel = null;
      if (d >= 5) {
        parallel = minMs < 1.8 * d;
        if (!parallel) console.log(`  WARNING: the fastest composed request took ${minMs} ms with ${d} ms backends: the steps do not look parallel (sequential: >= ${2 * d} ms)`);
      }
      console.log(`  checked: ${CHECK_REQUESTS} composed requests -> 200 with user + orders, no Turnpike-Partial; users +${got[0]}, orders +${got[1]} requests; composed latency (fresh connections) min ${minMs} ms, median ${medMs} ms with ${d} ms backends`);
      return { composed_min_ms: minMs, composed_median_ms: medMs, looks_parallel: parallel };
    }

    for (let roundNo = 1; roundNo <= S.rounds && !interrupted(); roundNo++) {
      if (S.rounds > 1) console.log(`\n--- compose round ${roundNo}/${S.rounds}`);
      const rr = { round: roundNo };
      for (const d of DELAYS) {
        if (interrupted()) break;
        const thisRound = {};
        const order = COMPOSE_SCENARIOS.map((_, i) => COMPOSE_SCENARIOS[(i + roundNo - 1) % COMPOSE_SCENARIOS.length]);
        let h = null;
        console.log(`\n[compose, backends ${d} ms]`);
        try {
          h = await startTurnpike(`compose-d${d}`, roundNo, (port) => composeConfig({ port, usersUrl: ups[d].users.url, ordersUrl: ups[d].orders.url, delay: d }));
          (checks[d] ??= []).push({ round: roundNo, ...(await checkCompose(d, h)) });
          const groups = [...allUpstreamGroups, { name: 'turnpike', pgid: h.child.pid }];
          for (const sc of order) {
            if (interrupted()) break;
            const res = results[d][sc.name];
            if (res.error) continue;
            const steps = sc.name === 'direct'
              ? [[ups[d].users.url, '/users/{id}'], [ups[d].orders.url, '/orders?user={id}']]
              : [[h.base, '/profile/{id}']];
            const target = sc.name === 'compose' ? 'turnpike' : null;
            try {
              console.log(`  ${sc.name}: warm-up ${S.warmup}s at ${CONC} loops...`);
              const warm = await nodeClient.run(steps, { conns: CONC, seconds: S.warmup }).done;
              failIfErrors('warm-up', warm);
              const per = { round: roundNo };
              for (const c of concs) {
                const r = await measureClean(`${sc.name} ${cl(c)}`, nodeClient, steps, { conns: c, seconds: S.duration, groups, target, quietWaitMs: S.quietWaitMs, retries: S.retries });
                failIfErrors(`${sc.name} ${cl(c)}`, r);
                warnIfDisturbed(`${sc.name} ${cl(c)}`, r);
                const tcpu = target ? `; turnpike ${r.process_cpu_pct.turnpike}% (${r.proxy_cpu_us_per_req} us/req)` : '';
                console.log(`  ${sc.name} ${cl(c)}: ${fmtRps(r.rps)} ${sc.name === 'direct' ? 'pairs' : 'req'}/s, p50 ${fmtUs(r.p50_us)}, p99 ${fmtUs(r.p99_us)}${tcpu}; CPU${loadCpu ?? ''} busy ${loadCpu !== null ? r.cpu_busy_pct[loadCpu] : '?'}%, load ${r.process_cpu_pct.load}%, other ${r.process_cpu_pct.other}%`);
                per[cl(c)] = r;
              }
              res.rounds.push(per);
              thisRound[sc.name] = per;
            } catch (err) {
              if (interrupted()) break;
              console.log(`  ${sc.name} FAILED: ${err.message}`);
              res.error = err.message.slice(0, 4000);
            }
          }
        } catch (err) {
          if (interrupted()) break;
          console.log(`  FAILED: ${err.message}`);
          for (const sc of COMPOSE_SCENARIOS) results[d][sc.name].error ??= err.message.slice(0, 4000);
        } finally {
          if (h?.child) await stop(h.child);
        }
        rr[d] = {};
        for (const c of concs) {
          const [a, b] = [thisRound.compose?.[cl(c)], thisRound.direct?.[cl(c)]];
          rr[d][cl(c)] = { rps_compose_vs_direct: ratio(a?.rps, b?.rps), p50_compose_vs_direct: ratio(a?.p50_us, b?.p50_us) };
        }
      }
      roundRatios.push(rr);
    }

    if (interrupted()) return;
    // Summary: medians over the rounds.
    const ratios = {};
    for (const d of DELAYS) {
      for (const sc of COMPOSE_SCENARIOS) {
        const r = results[d][sc.name];
        if (r.rounds.length) for (const c of concs) r[cl(c)] = medianOf(r.rounds.map((x) => x[cl(c)]));
      }
      ratios[d] = {};
      for (const c of concs) {
        const rps = roundRatios.map((x) => x[d]?.[cl(c)]?.rps_compose_vs_direct ?? null);
        const p50 = roundRatios.map((x) => x[d]?.[cl(c)]?.p50_compose_vs_direct ?? null);
        ratios[d][cl(c)] = { rps_compose_vs_direct: median(rps), rounds: rps, p50_compose_vs_direct: median(p50), p50_rounds: p50 };
      }
    }

    const cols = ['backends', 'scenario', 'ops/s c1', 'p50 c1', 'p99 c1', `ops/s c${CONC}`, `p50 c${CONC}`, `p99 c${CONC}`, `vs direct c1`, `vs direct c${CONC}`, `turnpike CPU/req c${CONC}`, `CPU${loadCpu ?? '0'} busy c${CONC}`, 'other CPU'];
    const rows = [];
    for (const d of DELAYS) {
      for (const sc of COMPOSE_SCENARIOS) {
        const r = results[d][sc.name];
        const [a, b] = [r.c1, r[cl(CONC)]];
        if (!a || !b) {
          rows.push([`${d} ms`, sc.name, 'FAILED', ...Array(cols.length - 3).fill('')]);
          continue;
        }
        const q = ratios[d];
        rows.push([
          `${d} ms`, sc.name, fmtRps(a.rps), fmtUs(a.p50_us), fmtUs(a.p99_us), fmtRps(b.rps), fmtUs(b.p50_us), fmtUs(b.p99_us),
          sc.name === 'direct' ? '-' : pct(q.c1.rps_compose_vs_direct), sc.name === 'direct' ? '-' : pct(q[cl(CONC)].rps_compose_vs_direct),
          sc.name === 'direct' ? '-' : `${b.proxy_cpu_us_per_req ?? '?'}us`,
          loadCpu !== null && b.cpu_busy_pct[loadCpu] !== undefined ? `${b.cpu_busy_pct[loadCpu]}%` : '-',
          `${Math.max(a.process_cpu_pct.other ?? 0, b.process_cpu_pct.other ?? 0)}%`,
        ]);
      }
    }
    console.log(`\ncompose (ops: a direct pair or one composed request; "vs direct": ops/s of compose / direct)\n${formatTable(cols, rows)}\n`);
    for (const d of DELAYS) {
      for (const c of concs) {
        const q = ratios[d][cl(c)];
        if (q.rps_compose_vs_direct === null) continue;
        console.log(`${`backends ${d} ms, ${cl(c)}:`.padEnd(24)}compose / direct: ops/s ${pct(q.rps_compose_vs_direct)}, p50 ${pct(q.p50_compose_vs_direct)}${S.rounds > 1 ? `  (ops/s rounds: ${q.rounds.map(pct).join(', ')})` : ''}`);
      }
    }
    tables.compose = markdownTable(cols, rows);
    out.compose = {
      delays_ms: DELAYS,
      concurrency: CONC,
      ids: IDS,
      route: { paths: ['/profile/{id}'], steps: ['user: users /users/{id}', 'orders: orders /orders?user={id}'] },
      checks,
      results,
      ratios,
      round_ratios: roundRatios,
    };
    for (const d of DELAYS) for (const sc of COMPOSE_SCENARIOS) if (results[d][sc.name].error) failures.push(`compose ${d} ms ${sc.name}`);
    for (const u of Object.values(ups)) await Promise.all([stop(u.users.child), stop(u.orders.child)]);
  }

  // -------------------------------------------------------------------------------------------
  // Part cache.

  if (PARTS.includes('cache') && !interrupted()) {
    console.log(`\n=== cache: ${CACHE_SCENARIOS.map((s) => `${s.name} (${s.desc})`).join('; ')}; upstream ${CACHE_DELAY} ms, Cache-Control: max-age=${UPSTREAM_MAX_AGE_S}`);
    const api = await startJsonUpstream('api', CACHE_DELAY);
    const keyCount = async () => (await api.stats()).paths[KEY] ?? 0;
    const expectedBody = JSON.stringify(upstreamBody('api', KEY));
    const results = Object.fromEntries(CACHE_SCENARIOS.map((s) => [s.name, { description: s.desc, rounds: [] }]));
    const roundRatios = [];

    /** The cached route hits (MISS once, then HIT, one upstream request); the uncached one never caches. Returns when the MISS was. */
    async function checkCache(sc, h) {
      await waitReady(`${h.base}/items/ready`, { child: h.child });
      const k0 = await keyCount();
      const labels = [];
      for (let i = 0; i < CHECK_REQUESTS; i++) {
        const r = await probe(`${h.base}${KEY}`);
        if (r?.status !== 200) throw new Error(`${KEY} answered ${r?.status ?? 'nothing'}: ${r?.body?.slice(0, 300)}`);
        if (r.body !== expectedBody) throw new Error(`${KEY}: unexpected body ${r.body.slice(0, 300)}`);
        labels.push(r.headers[CACHE_STATUS] ?? null);
      }
      const got = (await keyCount()) - k0;
      if (sc.cached) {
        const want = ['MISS', ...Array(CHECK_REQUESTS - 1).fill('HIT')];
        if (labels.join() !== want.join()) throw new Error(`X-Cache-Status of ${CHECK_REQUESTS} requests: ${labels.join(', ')} (expected MISS, then HIT)`);
        if (got !== 1) throw new Error(`the upstream got ${got} requests for ${KEY} over ${CHECK_REQUESTS} cached requests (expected exactly 1)`);
        console.log(`  checked: ${CHECK_REQUESTS} requests -> 200 with the upstream's body; X-Cache-Status MISS, then ${CHECK_REQUESTS - 1} x HIT; the upstream got exactly 1 request for ${KEY}`);
      } else {
        if (labels.some((l) => l !== null)) throw new Error(`the uncached route answered X-Cache-Status: ${labels.filter(Boolean).join(', ')}`);
        if (got !== CHECK_REQUESTS) throw new Error(`the upstream got ${got} of ${CHECK_REQUESTS} uncached requests for ${KEY}`);
        console.log(`  checked: ${CHECK_REQUESTS} requests -> 200 with the upstream's body, no X-Cache-Status; the upstream got all ${got}`);
      }
    }

    for (let roundNo = 1; roundNo <= S.rounds && !interrupted(); roundNo++) {
      if (S.rounds > 1) console.log(`\n--- cache round ${roundNo}/${S.rounds}`);
      const order = CACHE_SCENARIOS.map((_, i) => CACHE_SCENARIOS[(i + roundNo - 1) % CACHE_SCENARIOS.length]);
      const thisRound = {};
      for (const sc of order) {
        if (interrupted()) break;
        const res = results[sc.name];
        if (res.error) continue;
        console.log(`\n[cache: ${sc.name}] ${sc.desc}`);
        let h = null;
        try {
          h = await startTurnpike(`cache-${sc.name}`, roundNo, (port) => cacheConfig(sc, { port, apiUrl: api.url }));
          await checkCache(sc, h);
          const missAt = Date.now();
          const url = `${h.base}${KEY}`;
          const groups = [api.group, { name: 'turnpike', pgid: h.child.pid }];
          const opts = { groups, target: 'turnpike', quietWaitMs: S.quietWaitMs, retries: S.retries };
          const k0 = await keyCount();
          console.log(`  warm-up ${S.warmup}s...`);
          const warm = await load.run(url, { conns: CONNS, seconds: S.warmup }).done;
          failIfErrors('warm-up', warm);
          const c64 = await measureClean(`c${CONNS}`, load, url, { ...opts, conns: CONNS, seconds: S.duration });
          console.log(`  c${CONNS}: ${fmtRps(c64.rps)} req/s, p50 ${fmtUs(c64.p50_us)}, p99 ${fmtUs(c64.p99_us)}; CPU: ${cpuNote(c64)}; turnpike ${c64.proxy_cpu_us_per_req} us/req`);
          const c1 = await measureClean('c1', load, url, { ...opts, conns: 1, seconds: S.c1Duration });
          console.log(`  c1:  ${fmtRps(c1.rps)} req/s, p50 ${fmtUs(c1.p50_us)}, p99 ${fmtUs(c1.p99_us)}; other CPU ${c1.process_cpu_pct.other}%`);
          for (const [label, r] of [[`c${CONNS}`, c64], ['c1', c1]]) {
            warnIfDisturbed(label, r);
            failIfErrors(label, r);
          }
          const upstreamUnderLoad = (await keyCount()) - k0;
          const sinceMissS = round((Date.now() - missAt) / 1000, 1);
          const counted = warm.requests + c64.requests + c1.requests;
          console.log(`  upstream: ${fmtRps(upstreamUnderLoad)} requests for ${KEY} during the warm-up and the measurements, repeated ones included (wrk counted ${fmtRps(counted)} in the kept ones; ${sinceMissS} s after the MISS)`);
          if (sc.cached && upstreamUnderLoad > Math.floor(sinceMissS / UPSTREAM_MAX_AGE_S)) console.log(`  WARNING: the upstream got ${upstreamUnderLoad} requests for the warm key under load; expected at most one per ${UPSTREAM_MAX_AGE_S} s`);
          res.rounds.push({ round: roundNo, [`c${CONNS}`]: c64, c1, warmup_requests: warm.requests, upstream_requests_under_load: upstreamUnderLoad, seconds_after_miss: sinceMissS });
          thisRound[sc.name] = { c64, c1 };
        } catch (err) {
          if (interrupted()) break;
          console.log(`  FAILED: ${err.message}`);
          res.error = err.message.slice(0, 4000);
        } finally {
          if (h?.child) await stop(h.child);
        }
      }
      roundRatios.push({
        round: roundNo,
        [`rps_c${CONNS}`]: ratio(thisRound.cached?.c64.rps, thisRound.uncached?.c64.rps),
        rps_c1: ratio(thisRound.cached?.c1.rps, thisRound.uncached?.c1.rps),
        p50_c1: ratio(thisRound.cached?.c1.p50_us, thisRound.uncached?.c1.p50_us),
        cpu_us_per_req: ratio(thisRound.cached?.c64.proxy_cpu_us_per_req, thisRound.uncached?.c64.proxy_cpu_us_per_req),
      });
    }
    if (interrupted()) return;

    for (const r of Object.values(results)) {
      if (!r.rounds.length) continue;
      for (const k of [`c${CONNS}`, 'c1']) r[k] = medianOf(r.rounds.map((x) => x[k]));
      r.upstream_requests_under_load = r.rounds.map((x) => x.upstream_requests_under_load);
    }
    const ratios = {};
    for (const k of [`rps_c${CONNS}`, 'rps_c1', 'p50_c1', 'cpu_us_per_req']) {
      const each = roundRatios.map((x) => x[k]);
      ratios[k] = { cached_vs_uncached: median(each), rounds: each };
    }

    const cols = ['scenario', `req/s c${CONNS}`, 'vs uncached', `p50 c${CONNS}`, `p99 c${CONNS}`, 'req/s c1', 'vs uncached c1', 'p50 c1', 'p99 c1', 'turnpike CPU', 'CPU/req', 'upstream reqs under load', 'other CPU'];
    const rows = [];
    for (const sc of CACHE_SCENARIOS) {
      const r = results[sc.name];
      const m = r[`c${CONNS}`];
      if (!m) {
        rows.push([sc.name, 'FAILED', ...Array(cols.length - 2).fill('')]);
        continue;
      }
      rows.push([
        sc.name, fmtRps(m.rps), sc.cached ? pct(ratios[`rps_c${CONNS}`].cached_vs_uncached) : '-', fmtUs(m.p50_us), fmtUs(m.p99_us),
        fmtRps(r.c1.rps), sc.cached ? pct(ratios.rps_c1.cached_vs_uncached) : '-', fmtUs(r.c1.p50_us), fmtUs(r.c1.p99_us),
        `${m.process_cpu_pct.turnpike ?? '?'}%`, `${m.proxy_cpu_us_per_req ?? '?'}us`, r.upstream_requests_under_load.join(', '),
        `${Math.max(m.process_cpu_pct.other ?? 0, r.c1.process_cpu_pct.other ?? 0)}%`,
      ]);
    }
    console.log(`\ncache (upstream ${CACHE_DELAY} ms; "vs uncached": req/s cached / uncached, same round)\n${formatTable(cols, rows)}\n`);
    const q = ratios[`rps_c${CONNS}`];
    if (q.cached_vs_uncached !== null) {
      console.log(`cached / uncached: req/s c${CONNS} ${round(q.cached_vs_uncached, 2)}x${S.rounds > 1 ? ` (rounds: ${q.rounds.join(', ')})` : ''}, req/s c1 ${round(ratios.rps_c1.cached_vs_uncached, 2)}x, p50 c1 ${pct(ratios.p50_c1.cached_vs_uncached)}, CPU/req ${pct(ratios.cpu_us_per_req.cached_vs_uncached)}`);
    }
    tables.cache = markdownTable(cols, rows);
    out.cache = {
      upstream_delay_ms: CACHE_DELAY,
      upstream_cache_control: `max-age=${UPSTREAM_MAX_AGE_S}`,
      plugin_config: { ttl: CACHE_TTL },
      key: KEY,
      connections: CONNS,
      tool: load.tool,
      results,
      ratios,
      round_ratios: roundRatios,
    };
    for (const [n, r] of Object.entries(results)) if (r.error) failures.push(`cache ${n}`);
    await stop(api.child);
  }
  if (interrupted()) return;

  const notesEnd = [];
  if (distStamp() !== builtAt) notesEnd.push('dist/ was rebuilt during the run: the scenarios may have been measured on different builds');
  if (gitHead() !== git.commit) notesEnd.push(`HEAD moved from ${git.commit} to ${gitHead()} during the run`);
  for (const n of notesEnd) console.log(`WARNING: ${n}`);
  out.method.notes = [...notes, ...notesEnd];
  out.markdown_tables = tables;
  out.method.elapsed_s = Math.round((Date.now() - startedAt) / 1000);
  writeJson(S.out, out);
  console.log(`\nwrote ${relative(process.cwd(), S.out)} (the run took ${out.method.elapsed_s} s)`);
  if (failures.length) {
    console.log(`failed: ${failures.join('; ')}`);
    process.exitCode = 1;
  }
}

// ---------------------------------------------------------------------------------------------

if (process.argv[2] === '--upstream') {
  jsonUpstream();
} else if (process.argv[2] === '--client') {
  client().catch((err) => {
    console.error(`client failed: ${err.stack ?? err}`);
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
