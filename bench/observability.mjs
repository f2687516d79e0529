#!/usr/bin/env node
/**
 * `npm run bench:observability`: what the access log, metrics, analytics and tracing cost, in
 * one run. One trivial upstream (bench/upstream.mjs), one tiny OTLP/HTTP receiver (this file run
 * as `node bench/observability.mjs --otlp-receiver`), and per scenario a fresh Turnpike with one
 * route (`/`) to the upstream and an admin listener:
 *
 *   off                 access_log, metrics, analytics disabled; tracing off
 *   log+metrics         access_log to a file in the temp dir (destination: file), metrics and
 *                       analytics on (the defaults); tracing off          <- the acceptance case
 *   log-stdout+metrics  the same with the access log on stdout (the default destination);
 *                       the runner points Turnpike's stdout at a file in the temp dir
 *                       (BENCH_STDOUT=devnull: at /dev/null), never reading it itself
 *   tracing-100         log+metrics plus tracing, sample: 1, to the OTLP receiver
 *   tracing-10          the same with sample: 0.1
 *
 * Per scenario and round: the scenario is checked first (200 from the route with Via: turnpike;
 * the access log gains JSON lines of type access for the route, or stays empty when off;
 * /metrics and /analytics answer on the admin listener when on, and do not when off; the
 * receiver gets spans when tracing, and none otherwise), then a warm-up at 64 connections, then
 * 64 connections (req/s, p50, p99, Turnpike CPU per request) and 1 connection (p50, p99). Then
 * the access log's lines and the receiver's SERVER spans are counted against the requests
 * Turnpike answered (its own turnpike_requests_total: wrk does not count requests in flight when
 * it stops); each Turnpike's log starts empty, spans are counted once the receiver's count has
 * settled. A measurement with non-2xx responses or socket errors fails the scenario (and the
 * run).
 *
 * Pinning (taskset, two CPUs): Turnpike alone on the second CPU; the load generator, the
 * upstream and the OTLP receiver on the first. wrk when installed, else autocannon. Each round
 * measures the scenarios in a rotated order; ratios are req/s at 64 connections against `off`
 * in the same round, the summary is the median over the rounds. Acceptance (the issue):
 * log+metrics keeps >= 85% of off's req/s. Results: a table on stdout and
 * bench/results/observability.json.
 *
 * Environment (as bench/auth.mjs):
 *   BENCH_DURATION    seconds per 64-connection measurement (default 10); the 1-connection one
 *                     takes half of it (at least 1 s)
 *   BENCH_WARMUP      warm-up seconds per scenario (default 2)
 *   BENCH_ROUNDS      rounds (default 1); the summary is the median
 *   BENCH_SCENARIOS   comma list (default off,log+metrics,log-stdout+metrics,tracing-100,tracing-10);
 *                     controls on request: log-only, metrics-only, analytics-only (one feature on)
 *   BENCH_STDOUT      where Turnpike's stdout goes in log-stdout+metrics: file (default) | devnull
 *   BENCH_TOOL        wrk | autocannon (default: wrk when installed)
 *   BENCH_PROFILE     a directory: run Turnpike with --cpu-prof writing there, one profile per
 *                     scenario and round (obs-<scenario>-r<round>-*.cpuprofile; such numbers are
 *                     not comparable; summarize with bench/profile.mjs)
 *   BENCH_OUT         where to write the JSON results (default bench/results/observability.json)
 *   BENCH_NO_BUILD    1 = do not run `npm run build` first
 *   BENCH_TURNPIKE    path of another Turnpike entry point to measure instead of bin/turnpike.js
 *   BENCH_KEEP_TMP    1 = keep the temp dir (configs, access logs, process output)
 *   BENCH_RETRIES     re-measure at most this many times (default 2) while processes outside
 *                     the benchmark use more than 5% CPU; the quietest is kept
 *   BENCH_QUIET_WAIT  before each measurement, wait at most this many seconds (default 60) for
 *                     processes outside the benchmark to use < 5% CPU
 *
 * Every process it starts runs in its own process group; all of them are killed on exit, on
 * error and on SIGINT/SIGTERM. All traffic stays on 127.0.0.1.
 */
import { createReadStream, rmSync, statSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { createServer } from 'node:http';
import { gunzipSync } from 'node:zlib';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ROOT, UPSTREAM_BODY, OTHER_MAX, benchSettings, installCleanupHandlers, interrupted, cleanup, makeTmpDir, start, stop, waitFor,
  pinning, loadGenerator, machineInfo, packageVersion, gitHead, distStamp, buildTurnpike, cpuProfileArgs, measureClean,
  freePort, probe, waitReady, startUpstream, round, sleep, ratio, median, medianOf, fmtRps, fmtUs, pct, formatTable, markdownTable, writeJson,
} from './lib.mjs';

// ---------------------------------------------------------------------------------------------
// `node bench/observability.mjs --otlp-receiver [port]`: answers 200 `{}` to POST /v1/traces and
// counts the spans of each OTLP/HTTP JSON body (resourceSpans[].scopeSpans[].spans[]); GET
// /stats answers the counts. Prints "LISTENING <port>".

function otlpReceiver() {
  const counts = { posts: 0, spans: 0, server_spans: 0, bytes: 0, unparsed: 0 };
  const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      if (req.method === 'GET' && req.url === '/stats') {
        const b = JSON.stringify(counts);
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(b) });
        return res.end(b);
      }
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.writeHead(404, { 'content-length': '0' });
        return res.end();
      }
      counts.posts++;
      let body = Buffer.concat(chunks);
      counts.bytes += body.length;
      try {
        if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
        const j = JSON.parse(body.toString('utf8'));
        for (const rs of j.resourceSpans ?? []) {
          for (const ss of rs.scopeSpans ?? []) {
            for (const span of ss.spans ?? []) {
              counts.spans++;
              if (span.kind === 2 || span.kind === 'SPAN_KIND_SERVER') counts.server_spans++;
            }
          }
        }
      } catch {
        counts.unparsed++; // e.g. protobuf: not what Turnpike is configured to send
      }
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '2' });
      res.end('{}');
    });
  });
  server.listen(Number(process.argv[3] ?? 0), '127.0.0.1', () => process.stdout.write(`LISTENING ${server.address().port}\n`));
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
}

// ---------------------------------------------------------------------------------------------
// Settings.

const S = benchSettings({ out: 'bench/results/observability.json' });
const CONNS = 64;
/** The issue's acceptance: with access log + metrics on, at least this share of off's req/s. */
const MIN_RATIO = 0.85;
/** Requests sent one by one to check a scenario (enough to see a 10% sample with near certainty). */
const CHECK_REQUESTS = 100;
const STDOUT_TO = process.env.BENCH_STDOUT === 'devnull' ? 'devnull' : 'file';

const SCENARIOS = [
  { name: 'off', desc: 'access_log, metrics, analytics off; tracing off', log: null, metrics: false, analytics: false, tracing: null },
  { name: 'log+metrics', desc: 'access log to a file, metrics + analytics on', log: 'file', metrics: true, analytics: true, tracing: null },
  { name: 'log-stdout+metrics', desc: `access log to stdout (-> ${STDOUT_TO === 'file' ? 'a file' : '/dev/null'}), metrics + analytics on`, log: 'stdout', metrics: true, analytics: true, tracing: null },
  { name: 'tracing-100', desc: 'log+metrics + tracing, sample 1', log: 'file', metrics: true, analytics: true, tracing: 1 },
  { name: 'tracing-10', desc: 'log+metrics + tracing, sample 0.1', log: 'file', metrics: true, analytics: true, tracing: 0.1 },
  // Controls, only when BENCH_SCENARIOS names them: one feature at a time, to split the cost.
  { name: 'log-only', desc: 'access log to a file; metrics, analytics off (control)', log: 'file', metrics: false, analytics: false, tracing: null, optional: true },
  { name: 'metrics-only', desc: 'metrics on; access log, analytics off (control)', log: null, metrics: true, analytics: false, tracing: null, optional: true },
  { name: 'analytics-only', desc: 'analytics on; access log, metrics off (control)', log: null, metrics: false, analytics: true, tracing: null, optional: true },
];
const SELECTED = (process.env.BENCH_SCENARIOS ?? SCENARIOS.filter((s) => !s.optional).map((s) => s.name).join(',')).split(',').map((s) => s.trim()).filter(Boolean);

function turnpikeConfig(sc, { port, adminPort, upstreamUrl, logFile, otlpUrl }) {
  const log = sc.log === 'file'
    ? `{enabled: true, destination: file, path: ${JSON.stringify(logFile)}}`
    : sc.log === 'stdout' ? '{enabled: true, destination: stdout}' : '{enabled: false}';
  const tracing = sc.tracing !== null ? `{enabled: true, endpoint: "${otlpUrl}/v1/traces", sample: ${sc.tracing}}` : '{enabled: false}';
  return `# generated by bench/observability.mjs (scenario ${sc.name})
listen: 127.0.0.1:${port}
admin:
  listen: 127.0.0.1:${adminPort}
access_log: ${log}
metrics: {enabled: ${sc.metrics}}
analytics: {enabled: ${sc.analytics}}
tracing: ${tracing}
services:
  - name: bench
    url: ${upstreamUrl}
    routes:
      - name: bench
        paths: [/]
`;
}

/** Lines (newlines) in a file; 0 when it does not exist. */
async function countLines(file) {
  if (!existsSync(file)) return 0;
  let n = 0;
  for await (const buf of createReadStream(file, { highWaterMark: 1 << 20 })) {
    for (let i = buf.indexOf(10); i !== -1; i = buf.indexOf(10, i + 1)) n++;
  }
  return n;
}

/** Access lines ("type":"access") among the last bytes of a file, parsed. */
async function lastAccessLines(file) {
  if (!existsSync(file)) return [];
  const size = statSync(file).size;
  let text = '';
  for await (const c of createReadStream(file, { start: Math.max(0, size - 65536), encoding: 'utf8' })) text += c;
  return text.split('\n').filter((l) => l.startsWith('{"type":"access"')).map((l) => {
    try {
      return JSON.parse(l);
    } catch {
      return null;
    }
  }).filter(Boolean);
}

/** Polls `fn` until it returns a truthy value or `ms` pass; returns the last value. */
async function until(fn, ms, every = 100) {
  const end = Date.now() + ms;
  let v;
  for (;;) {
    v = await fn();
    if (v || Date.now() >= end) return v;
    await sleep(every);
  }
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const unknown = SELECTED.filter((n) => !SCENARIOS.some((s) => s.name === n));
  if (unknown.length) throw new Error(`BENCH_SCENARIOS: unknown scenario(s) ${unknown.join(', ')} (known: ${SCENARIOS.map((s) => s.name).join(', ')})`);
  const scenarios = SCENARIOS.filter((s) => SELECTED.includes(s.name));

  const { loadCpu, proxyCpu, pin, note: pinNote } = pinning();
  const load = loadGenerator({ pin, cpu: loadCpu });
  const notes = [...(pinNote ? [pinNote] : []), ...load.notes];
  if (S.profileDir) notes.push(`profiling into ${S.profileDir}: numbers are NOT representative`);
  notes.push(`log-stdout+metrics: Turnpike's stdout goes to ${STDOUT_TO === 'file' ? 'a file in the temp dir' : '/dev/null'} (opened by the runner, never read by it during a measurement)`);

  const machine = machineInfo({
    pino: packageVersion('pino'),
    prom_client: packageVersion('prom-client'),
    otel_sdk_trace_base: packageVersion('@opentelemetry/sdk-trace-base'),
    tool: load.version,
  });
  const git = { commit: gitHead(), turnpike_entry: relative(ROOT, S.turnpikeBin) };

  console.log(`Turnpike observability benchmark: ${S.duration}s at ${CONNS} connections, ${S.c1Duration}s at 1 connection, ${S.warmup}s warm-up per scenario, ${S.rounds} round(s)`);
  console.log(`machine: ${machine.nproc} CPUs, ${machine.cpu}, ${machine.kernel}, node ${machine.node}, pino ${machine.pino}, prom-client ${machine.prom_client}, otel sdk ${machine.otel_sdk_trace_base}`);
  console.log(`load: ${machine.tool}`);
  console.log(`turnpike: ${git.commit ?? '?'} (${git.turnpike_entry})`);
  console.log(loadCpu !== null ? `pinning: load generator + upstream + OTLP receiver on CPU ${loadCpu}, Turnpike on CPU ${proxyCpu}` : 'pinning: none');
  for (const n of notes) console.log(`note: ${n}`);

  const startedAt = Date.now();
  buildTurnpike(S.build);
  const builtAt = distStamp();
  const tmp = makeTmpDir('turnpike-bench-obs-', S.keepTmp);
  if (S.profileDir) mkdirSync(S.profileDir, { recursive: true });

  // The upstream and the OTLP receiver, on the load generator's CPU.
  const upstream = await startUpstream(pin, loadCpu);
  const otlp = start('otlp', ...pin(loadCpu, process.execPath, [fileURLToPath(import.meta.url), '--otlp-receiver', '0']));
  const otlpUrl = `http://127.0.0.1:${Number((await waitFor(otlp, /LISTENING ([0-9]+)/))[1])}`;
  const otlpStats = async () => {
    const r = await probe(`${otlpUrl}/stats`);
    if (r?.status !== 200) throw new Error(`OTLP receiver /stats answered ${r?.status ?? 'nothing'}`);
    return JSON.parse(r.body);
  };
  /** Receiver counts once nothing new arrived for `quietMs` (at most `maxMs`). */
  async function settledSpans(quietMs = 1500, maxMs = 15_000) {
    const end = Date.now() + maxMs;
    let last = await otlpStats();
    let since = Date.now();
    while (Date.now() < end) {
      await sleep(250);
      const now = await otlpStats();
      if (now.spans !== last.spans || now.posts !== last.posts) {
        last = now;
        since = Date.now();
      } else if (Date.now() - since >= quietMs) break;
    }
    return last;
  }
  const spansDelta = (a, b) => ({ spans: b.spans - a.spans, server_spans: b.server_spans - a.server_spans, posts: b.posts - a.posts, unparsed: b.unparsed - a.unparsed });
  console.log(`upstream ${upstream.url}, OTLP receiver ${otlpUrl}/v1/traces`);

  /** A fresh Turnpike for one scenario: its config, its (empty) access log, its stdout. */
  async function startTurnpike(sc, roundNo) {
    const [port, adminPort] = [await freePort(), await freePort()];
    const slug = sc.name.replace(/[^a-z0-9-]+/g, '_');
    const logFile = join(tmp, `access-${slug}.log`);
    const stdoutFile = join(tmp, `stdout-${slug}.log`);
    rmSync(logFile, { force: true });
    rmSync(stdoutFile, { force: true });
    const file = join(tmp, `turnpike-${slug}.yaml`);
    writeFileSync(file, turnpikeConfig(sc, { port, adminPort, upstreamUrl: upstream.url, logFile, otlpUrl }));
    const stdout = sc.log === 'stdout' ? (STDOUT_TO === 'file' ? stdoutFile : '/dev/null') : 'pipe';
    const args = [...cpuProfileArgs(S.profileDir, `obs-${slug}-r${roundNo}`), S.turnpikeBin, 'start', '--config', file];
    const child = start('turnpike', ...pin(proxyCpu, process.execPath, args), { env: { TURNPIKE_LOG_LEVEL: 'silent' }, stdout });
    // Where this scenario's access lines land (null: nowhere, or /dev/null).
    const accessFile = sc.log === 'file' ? logFile : sc.log === 'stdout' && STDOUT_TO === 'file' ? stdoutFile : null;
    return { child, base: `http://127.0.0.1:${port}`, admin: `http://127.0.0.1:${adminPort}`, accessFile, logFile, stdoutFile };
  }

  /** Requests the route answered so far (any status), from Turnpike's /metrics. */
  async function routeRequests(h) {
    const m = await probe(`${h.admin}/metrics`, { timeout: 5000 });
    if (m?.status !== 200) throw new Error(`/metrics answered ${m?.status ?? 'nothing'}`);
    let n = 0;
    for (const x of m.body.matchAll(/^turnpike_requests_total\{[^}]*route="bench"[^}]*\} ([0-9.e+]+)$/gm)) n += Number(x[1]);
    return n;
  }

  /** The scenario does what it says, before any load. Returns the requests it sent. */
  async function checkScenario(sc, h) {
    const ok = await waitReady(`${h.base}/`, { child: h.child, body: UPSTREAM_BODY });
    if (!/turnpike/.test(String(ok.headers.via))) throw new Error(`expected a Via: turnpike response header, got ${ok.headers.via}`);
    const spans0 = await settledSpans(300, 3000);
    let sent = 1;
    for (let i = 0; i < CHECK_REQUESTS; i++, sent++) {
      const r = await probe(`${h.base}/check-${i}`);
      if (r?.status !== 200 || r.body !== UPSTREAM_BODY) throw new Error(`check request ${i} answered ${r?.status ?? 'nothing'}`);
    }
    const facts = [];
    // Access log.
    if (sc.log) {
      if (h.accessFile) {
        const lines = await until(async () => {
          const n = await countLines(h.accessFile);
          return n >= sent ? n : 0;
        }, 5000);
        if (!lines) throw new Error(`the access log (${h.accessFile}) has ${await countLines(h.accessFile)} lines after ${sent} requests`);
        const last = (await lastAccessLines(h.accessFile)).pop();
        if (last?.route !== 'bench' || last?.status !== 200) throw new Error(`unexpected access line: ${JSON.stringify(last)}`);
        facts.push(`access log +${lines} lines`);
      } else facts.push('access log to /dev/null (not checked)');
    } else {
      await sleep(300);
      if (/"type":"access"/.test(h.child.output)) throw new Error('access log lines on stdout with access_log disabled');
      if (existsSync(h.logFile)) throw new Error('an access log file exists with access_log disabled');
      facts.push('no access log');
    }
    // Metrics and analytics on the admin listener.
    const m = await probe(`${h.admin}/metrics`);
    if (sc.metrics) {
      const count = Number(/^turnpike_requests_total\{[^}]*route="bench"[^}]*status="200"[^}]*\} ([0-9]+)/m.exec(m?.body ?? '')?.[1] ?? NaN);
      if (m?.status !== 200 || !(count >= sent)) throw new Error(`/metrics: ${m?.status}, turnpike_requests_total for the route ${count} (expected >= ${sent})`);
      facts.push(`metrics count ${count}`);
    } else {
      if (m?.status === 200) throw new Error('/metrics answered 200 with metrics disabled');
      facts.push('no metrics');
    }
    const a = await probe(`${h.admin}/analytics?window=1m`);
    if (sc.analytics) {
      const routes = a?.status === 200 ? JSON.parse(a.body).routes : null;
      if (!routes?.some((r) => r.route === 'bench' && r.requests >= sent)) throw new Error(`/analytics: ${a?.status} ${a?.body?.slice(0, 300)}`);
      facts.push('analytics count it');
    } else {
      if (a?.status === 200) throw new Error('/analytics answered 200 with analytics disabled');
      facts.push('no analytics');
    }
    // Spans.
    if (sc.tracing !== null) {
      const got = await until(async () => {
        const d = spansDelta(spans0, await otlpStats());
        return d.server_spans > 0 ? d : null;
      }, 8000, 250);
      if (!got) throw new Error(`the OTLP receiver got no spans after ${sent} requests (tracing sample ${sc.tracing})`);
      facts.push(`receiver got ${got.server_spans} server spans so far`);
    } else {
      await sleep(200);
      const d = spansDelta(spans0, await otlpStats());
      if (d.spans) throw new Error(`the OTLP receiver got ${d.spans} spans with tracing off`);
      facts.push('no spans');
    }
    console.log(`  checked: ${sent} requests -> 200; ${facts.join('; ')}`);
    return sent;
  }

  const results = Object.fromEntries(scenarios.map((s) => [s.name, { description: s.desc, rounds: [] }]));
  const roundRatios = [];
  for (let roundNo = 1; roundNo <= S.rounds && !interrupted(); roundNo++) {
    if (S.rounds > 1) console.log(`\n=== round ${roundNo}/${S.rounds}`);
    const order = scenarios.map((_, i) => scenarios[(i + roundNo - 1) % scenarios.length]);
    const thisRound = {};
    for (const sc of order) {
      if (interrupted()) break;
      const res = results[sc.name];
      if (res.error) continue;
      console.log(`\n[${sc.name}] ${sc.desc}`);
      let h = null;
      try {
        h = await startTurnpike(sc, roundNo);
        await checkScenario(sc, h);
        const url = `${h.base}/`;
        const groups = [{ name: 'upstream', pgid: upstream.child.pid }, { name: 'otlp', pgid: otlp.pid }, { name: 'turnpike', pgid: h.child.pid }];
        const opts = { groups, target: 'turnpike', quietWaitMs: S.quietWaitMs, retries: S.retries };
        // The check's spans must be in before counting: wait until the receiver's count settles.
        const spansBefore = sc.tracing !== null ? await settledSpans(1200, 8000) : await otlpStats();
        const answeredBefore = sc.metrics ? await routeRequests(h) : 0;

        console.log(`  warm-up ${S.warmup}s...`);
        const warm = await load.run(url, { conns: CONNS, seconds: S.warmup }).done;
        if (warm.non_2xx || warm.socket_errors) throw new Error(`warm-up: ${warm.non_2xx} non-2xx responses, ${warm.socket_errors} socket errors`);
        const c64 = await measureClean(`c${CONNS}`, load, url, { ...opts, conns: CONNS, seconds: S.duration });
        const cpu = c64.process_cpu_pct;
        console.log(`  c${CONNS}: ${fmtRps(c64.rps)} req/s, p50 ${fmtUs(c64.p50_us)}, p99 ${fmtUs(c64.p99_us)}; CPU: turnpike ${cpu.turnpike}% (${c64.proxy_cpu_us_per_req} us/req), upstream ${cpu.upstream}%, otlp ${cpu.otlp}%, load ${cpu.load}%, other ${cpu.other}%`);
        const c1 = await measureClean('c1', load, url, { ...opts, conns: 1, seconds: S.c1Duration });
        console.log(`  c1:  ${fmtRps(c1.rps)} req/s, p50 ${fmtUs(c1.p50_us)}, p99 ${fmtUs(c1.p99_us)}; other CPU ${c1.process_cpu_pct.other}%`);
        for (const [label, r] of [[`c${CONNS}`, c64], ['c1', c1]]) {
          if (r.process_cpu_pct.other > OTHER_MAX) console.log(`  WARNING ${label}: processes outside the benchmark used ${r.process_cpu_pct.other}% CPU during the measurement`);
          if (r.socket_errors || r.non_2xx) throw new Error(`${label}: ${r.socket_errors} socket errors, ${r.non_2xx} non-2xx/3xx responses`);
        }

        // What the observability outputs received, against the requests Turnpike answered. The
        // count is Turnpike's own turnpike_requests_total for the route (every scenario that logs
        // or traces has metrics on): wrk does not count the requests in flight when it stops (up
        // to one per connection), nor the attempts measureClean() threw away, Turnpike does.
        const delivered = { wrk_requests: warm.requests + c64.requests + c1.requests };
        if (sc.metrics) {
          await sleep(500);
          const answered = await routeRequests(h);
          delivered.answered_under_load = answered - answeredBefore;
          if (h.accessFile) {
            // Each Turnpike's log starts empty; stdout holds nothing else (the process log is
            // silent, the banner goes to stderr).
            const lines = await countLines(h.accessFile);
            delivered.access_log_lines = lines;
            delivered.answered_total = answered;
            delivered.access_log_lines_per_request = round(lines / answered, 4);
            console.log(`  access log: ${fmtRps(lines)} lines for ${fmtRps(answered)} requests answered (${pct(delivered.access_log_lines_per_request)})`);
          }
          if (sc.tracing !== null) {
            const d = spansDelta(spansBefore, await settledSpans());
            Object.assign(delivered, d);
            delivered.server_spans_per_request = round(d.server_spans / delivered.answered_under_load, 4);
            delivered.expected_server_spans_per_request = sc.tracing;
            console.log(`  spans: receiver got ${d.spans} spans (${d.server_spans} SERVER) in ${d.posts} exports for ${fmtRps(delivered.answered_under_load)} requests under load: ${pct(delivered.server_spans_per_request)} traced (sample ${sc.tracing})${d.unparsed ? `; ${d.unparsed} bodies not JSON` : ''}`);
          }
        }
        res.rounds.push({ round: roundNo, [`c${CONNS}`]: c64, c1, warmup_requests: warm.requests, delivered });
        thisRound[sc.name] = c64;
      } catch (err) {
        if (interrupted()) break;
        console.log(`  FAILED: ${err.message}`);
        res.error = err.message.slice(0, 4000);
      } finally {
        if (h?.child) await stop(h.child);
        if (h && !S.keepTmp) for (const f of [h.logFile, h.stdoutFile]) rmSync(f, { force: true });
      }
    }
    const r = { round: roundNo };
    for (const sc of scenarios) {
      if (sc.name === 'off') continue;
      r[sc.name] = {
        rps_vs_off: ratio(thisRound[sc.name]?.rps, thisRound.off?.rps),
        added_cpu_us_per_req: thisRound[sc.name] && thisRound.off ? round(thisRound[sc.name].proxy_cpu_us_per_req - thisRound.off.proxy_cpu_us_per_req, 1) : null,
      };
    }
    roundRatios.push(r);
  }
  if (interrupted()) return;

  // Summary: the median of every number over the rounds; ratios: the median of the per-round ratios.
  for (const r of Object.values(results)) {
    if (!r.rounds.length) continue;
    for (const k of [`c${CONNS}`, 'c1', 'delivered']) r[k] = medianOf(r.rounds.map((x) => x[k]));
  }
  const ratios = {};
  for (const sc of scenarios) {
    if (sc.name === 'off') continue;
    const each = roundRatios.map((x) => x[sc.name]?.rps_vs_off ?? null);
    const cpu = roundRatios.map((x) => x[sc.name]?.added_cpu_us_per_req ?? null);
    ratios[sc.name] = { rps_vs_off: median(each), rounds: each, added_cpu_us_per_req: cpu.every((v) => v === null) ? null : round(median(cpu.filter((v) => v !== null)), 1), added_cpu_rounds: cpu };
  }
  const mainRatio = ratios['log+metrics']?.rps_vs_off ?? null;
  const acceptance = { scenario: 'log+metrics', min_rps_vs_off: MIN_RATIO, rps_vs_off: mainRatio, ok: mainRatio === null ? null : mainRatio >= MIN_RATIO };

  // Table.
  const cols = ['scenario', `req/s c${CONNS}`, 'vs off', `p50 c${CONNS}`, `p99 c${CONNS}`, 'p50 c1', 'p99 c1', 'turnpike CPU', 'CPU/req', 'added CPU/req', `CPU${loadCpu ?? '0'} busy`, 'other CPU'];
  const rows = [];
  for (const sc of scenarios) {
    const r = results[sc.name];
    const m = r[`c${CONNS}`];
    if (!m) {
      rows.push([sc.name, 'FAILED', ...Array(cols.length - 2).fill('')]);
      continue;
    }
    const q = ratios[sc.name];
    rows.push([
      sc.name, fmtRps(m.rps), sc.name === 'off' ? '-' : pct(q?.rps_vs_off), fmtUs(m.p50_us), fmtUs(m.p99_us), fmtUs(r.c1.p50_us), fmtUs(r.c1.p99_us),
      `${m.process_cpu_pct.turnpike ?? '?'}%`, `${m.proxy_cpu_us_per_req ?? '?'}us`,
      sc.name === 'off' ? '-' : `${q?.added_cpu_us_per_req ?? '?'}us`,
      loadCpu !== null && m.cpu_busy_pct[loadCpu] !== undefined ? `${m.cpu_busy_pct[loadCpu]}%` : '-',
      `${Math.max(m.process_cpu_pct.other ?? 0, r.c1.process_cpu_pct.other ?? 0)}%`,
    ]);
  }
  console.log(`\n${formatTable(cols, rows)}\n`);
  for (const sc of scenarios) {
    if (sc.name === 'off' || !ratios[sc.name]) continue;
    const q = ratios[sc.name];
    const target = sc.name === 'log+metrics' ? `  (target >= ${MIN_RATIO * 100}%: ${acceptance.ok === null ? 'n/a' : acceptance.ok ? 'PASS' : 'FAIL'})` : '';
    console.log(`${`${sc.name} / off:`.padEnd(26)}${pct(q.rps_vs_off)}${target}${S.rounds > 1 ? `  (rounds: ${q.rounds.map(pct).join(', ')})` : ''}; +${q.added_cpu_us_per_req ?? '?'} us CPU/req`);
  }
  for (const sc of scenarios) {
    const d = results[sc.name].delivered;
    if (d?.server_spans_per_request !== undefined) console.log(`${sc.name}: ${pct(d.server_spans_per_request)} of requests under load reached the receiver as a SERVER span (sample ${sc.tracing}; median over rounds)`);
  }

  const notesEnd = [];
  if (distStamp() !== builtAt) notesEnd.push('dist/ was rebuilt during the run: the scenarios may have been measured on different builds');
  if (gitHead() !== git.commit) notesEnd.push(`HEAD moved from ${git.commit} to ${gitHead()} during the run`);
  for (const n of notesEnd) console.log(`WARNING: ${n}`);

  const out = {
    date: new Date().toISOString(),
    machine,
    git,
    method: {
      tool: load.tool,
      connections: CONNS,
      duration_s: S.duration,
      c1_duration_s: S.c1Duration,
      warmup_s: S.warmup,
      rounds: S.rounds,
      retries: S.retries,
      load_cpu: loadCpu,
      proxy_cpu: proxyCpu,
      upstream_body: UPSTREAM_BODY,
      stdout_scenario_target: STDOUT_TO === 'file' ? 'file' : '/dev/null',
      check_requests: CHECK_REQUESTS + 1,
      notes: [...notes, ...notesEnd],
    },
    results,
    ratios,
    round_ratios: roundRatios,
    acceptance,
    markdown_table: markdownTable(cols, rows),
  };
  out.method.elapsed_s = Math.round((Date.now() - startedAt) / 1000);
  writeJson(S.out, out);
  console.log(`\nwrote ${relative(process.cwd(), S.out)} (the run took ${out.method.elapsed_s} s)`);
  const failed = Object.entries(results).filter(([, r]) => r.error).map(([n]) => n);
  if (failed.length) {
    console.log(`failed scenarios: ${failed.join(', ')}`);
    process.exitCode = 1;
  }
}

// ---------------------------------------------------------------------------------------------

if (process.argv[2] === '--otlp-receiver') {
  otlpReceiver();
} else {
  installCleanupHandlers();
  main()
    .catch((err) => {
      console.error(`\nbenchmark failed: ${err.stack ?? err}`);
      process.exitCode = 1;
    })
    .finally(() => cleanup());
}
