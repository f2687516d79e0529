// Parsers for load-generator output (kept apart from run.mjs so they can be checked alone:
// `node bench/parse.mjs` runs a self-check on sample wrk output).

const UNIT_US = { us: 1, ms: 1e3, s: 1e6, m: 60e6, h: 3600e6 };

/** "54.00us" / "1.10ms" / "2.01s" / "1.00m" -> microseconds (number), or null. */
export function durationToUs(text) {
  const m = /^([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)$/.exec(text.trim());
  return m ? Number(m[1]) * UNIT_US[m[2]] : null;
}

/**
 * Parses `wrk --latency` output: Requests/sec, the 50% and 99% lines of the latency
 * distribution, total requests, socket errors and non-2xx/3xx responses. Throws when the
 * required numbers are missing.
 */
export function parseWrk(out) {
  const rps = /^Requests\/sec:\s+([0-9.]+)/m.exec(out);
  const p50 = /^\s+50%\s+(\S+)/m.exec(out);
  const p99 = /^\s+99%\s+(\S+)/m.exec(out);
  if (!rps || !p50 || !p99) throw new Error(`cannot parse wrk output:\n${out}`);
  const total = /^\s+([0-9]+) requests in ([0-9.]+\w+)/m.exec(out);
  const sock = /Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)/.exec(out);
  const non2xx = /Non-2xx or 3xx responses: ([0-9]+)/.exec(out);
  const r = {
    rps: Number(rps[1]),
    p50_us: durationToUs(p50[1]),
    p99_us: durationToUs(p99[1]),
    requests: total ? Number(total[1]) : null,
    socket_errors: sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
    non_2xx: non2xx ? Number(non2xx[1]) : 0,
  };
  if (r.p50_us === null || r.p99_us === null) throw new Error(`cannot parse wrk latency "${p50[1]}" / "${p99[1]}"`);
  return r;
}

/** Parses `autocannon --json` output (latency in ms). */
export function parseAutocannon(out, durationS) {
  const line = out.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  if (!line) throw new Error(`cannot parse autocannon output:\n${out}`);
  const j = JSON.parse(line);
  return {
    rps: j.requests.total / (j.duration || durationS),
    p50_us: j.latency.p50 * 1e3,
    p99_us: j.latency.p99 * 1e3,
    requests: j.requests.total,
    socket_errors: (j.errors ?? 0) + (j.timeouts ?? 0),
    non_2xx: j.non2xx ?? 0,
  };
}

/**
 * Parses h2load's summary: req/s (over the measured duration), request counts, status codes,
 * "time for request" (min/max/mean/sd) and the negotiated application protocol.
 */
export function parseH2load(out) {
  const fin = /^finished in [0-9.]+\w*, ([0-9.]+) req\/s/m.exec(out);
  const req = /^requests: ([0-9]+) total, ([0-9]+) started, ([0-9]+) done, ([0-9]+) succeeded, ([0-9]+) failed, ([0-9]+) errored, ([0-9]+) timeout/m.exec(out);
  const st = /^status codes: ([0-9]+) 2xx, ([0-9]+) 3xx, ([0-9]+) 4xx, ([0-9]+) 5xx/m.exec(out);
  const t = /^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)/m.exec(out);
  if (!fin || !req || !st || !t) throw new Error(`cannot parse h2load output:\n${out}`);
  const statuses = st.slice(1).map(Number);
  const total = statuses.reduce((a, b) => a + b, 0);
  return {
    rps: Number(fin[1]),
    requests: Number(req[3]),
    succeeded: Number(req[4]),
    failed: Number(req[5]),
    errored: Number(req[6]),
    timeout: Number(req[7]),
    status: { '2xx': statuses[0], '3xx': statuses[1], '4xx': statuses[2], '5xx': statuses[3] },
    pct_2xx: total ? Math.round((10000 * statuses[0]) / total) / 100 : 0,
    min_us: durationToUs(t[1]),
    max_us: durationToUs(t[2]),
    mean_us: durationToUs(t[3]),
    sd_us: durationToUs(t[4]),
    protocol: /^Application protocol: (\S+)/m.exec(out)?.[1] ?? null,
    tls: /^TLS Protocol: (\S+)/m.exec(out)?.[1] ?? null,
  };
}


/**
 * Latency percentiles from an h2load `--log-file` (tab-separated: start time in us since the
 * epoch, status, microseconds until the end of the response): { p50_us, p99_us }, nulls when
 * the file is empty.
 */
export function h2loadLogPercentiles(text) {
  const d = [];
  for (const line of text.split('\n')) {
    const f = line.split('\t');
    if (f.length >= 3) d.push(Number(f[2]));
  }
  if (!d.length) return { p50_us: null, p99_us: null };
  d.sort((a, b) => a - b);
  const at = (p) => d[Math.min(d.length - 1, Math.floor((p / 100) * d.length))];
  return { p50_us: at(50), p99_us: at(99) };
}

// Self-check: `node bench/parse.mjs`
if (import.meta.url === `file://${process.argv[1]}`) {
  const assert = (await import('node:assert/strict')).default;
  const sample = `Running 10s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.41ms  310.12us   9.88ms   90.12%
    Req/Sec    26.61k     1.02k   28.10k    73.00%
  Latency Distribution
     50%    2.35ms
     75%    2.50ms
     90%    2.71ms
     99%    3.48ms
  264726 requests in 10.00s, 37.37MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  26468.41
Transfer/sec:      3.74MB
`;
  const r = parseWrk(sample);
  assert.deepEqual(r, { rps: 26468.41, p50_us: 2350, p99_us: 3480, requests: 264726, socket_errors: 3, non_2xx: 7 });
  assert.equal(durationToUs('54.00us'), 54);
  assert.equal(durationToUs('1.50s'), 1.5e6);
  assert.equal(durationToUs('1.00m'), 60e6);
  assert.throws(() => parseWrk('garbage'));
  console.log('parse.mjs: ok');
}
