/** Access log, Prometheus /metrics, analytics and /status, against real upstreams (tracing: tracing.test.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, renameSync, writeFileSync, existsSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import { connect as h2connect } from 'node:http2';
import { connect, type AddressInfo } from 'node:net';
import { once } from 'node:events';
import { WebSocket, WebSocketServer } from 'ws';
import { Gateway } from '../src/server/gateway.js';
import { parseConfigText } from '../src/config/load.js';
import { createLogger } from '../src/core/log.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promSamples as parse, promValue as sample, configIssues, eventually, freePort, rawRequest, request, sleep, startCli, startGateway, startUpstream, statuses, stopGroup, trackGroup, waitFor } from './helpers.js';

const fresh = { connection: 'close' }; // a new connection per request: the cluster spreads them over the workers

const lines = (file: string) => (existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) : []);

test('metrics: exact counts for a known traffic mix with two workers, kept across a rolling restart', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const dead = await freePort();
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-metrics-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}
admin: {listen: 127.0.0.1:${a}}
workers: 2
access_log: {enabled: false}
services:
  - name: app
    url: ${up.url}
    routes: [{name: ok, paths: [/ok]}]
  - name: broken
    url: http://127.0.0.1:${dead}
    routes: [{name: bad, paths: [/bad]}]
`);
  const run = startCli(['start', '--config', file], {});
  try {
    await waitFor(`http://127.0.0.1:${a}/status`, 15_000);
    await eventually(async () => JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).workers.filter((w: { state: string }) => w.state === 'listening').length === 2, 15_000);
    const codes: number[] = [];
    for (let i = 0; i < 37; i++) codes.push((await request(`http://127.0.0.1:${p}/ok`, { headers: fresh })).status);
    for (let i = 0; i < 5; i++) codes.push((await request(`http://127.0.0.1:${p}/missing`, { headers: fresh })).status);
    for (let i = 0; i < 3; i++) codes.push((await request(`http://127.0.0.1:${p}/bad`, { method: 'POST', headers: fresh, body: 'x' })).status);
    assert.deepEqual([codes.filter((c) => c === 200).length, codes.filter((c) => c === 404).length, codes.filter((c) => c === 502).length], [37, 5, 3]);

    const check = async () => {
      const r = await request(`http://127.0.0.1:${a}/metrics`);
      assert.equal(r.status, 200);
      assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
      const t = r.body;
      assert.equal(sample(t, 'turnpike_requests_total', { service: 'app', route: 'ok', method: 'GET', status: '200' }), 37);
      assert.equal(sample(t, 'turnpike_requests_total', { service: '', route: '', method: 'GET', status: '404' }), 5);
      assert.equal(sample(t, 'turnpike_requests_total', { service: 'broken', route: 'bad', method: 'POST', status: '502' }), 3);
      const all = parse(t);
      assert.equal(all.filter((x) => x.name === 'turnpike_requests_total').reduce((n, x) => n + x.value, 0), 45);
      // Histograms: one observation per request, buckets cumulative, +Inf = count.
      assert.match(t, /^# TYPE turnpike_request_duration_seconds histogram$/m);
      assert.equal(sample(t, 'turnpike_request_duration_seconds_count', { route: 'ok' }), 37);
      assert.equal(sample(t, 'turnpike_request_duration_seconds_bucket', { route: 'ok', le: '+Inf' }), 37);
      const buckets = all.filter((x) => x.name === 'turnpike_request_duration_seconds_bucket' && x.labels.route === 'ok').map((x) => x.value);
      assert.deepEqual(buckets, [...buckets].sort((x, y) => x - y), 'cumulative');
      assert.equal(sample(t, 'turnpike_upstream_duration_seconds_count', { route: 'ok' }), 37);
      // The 404s never reached an upstream: gateway time only.
      assert.equal(sample(t, 'turnpike_upstream_duration_seconds_count', { route: '' }), 0);
      assert.equal(sample(t, 'turnpike_gateway_duration_seconds_count', { route: '' }), 5);
      assert.equal(sample(t, 'turnpike_response_bytes_total', { route: 'ok' }), 37 * 2);
      assert.equal(sample(t, 'turnpike_requests_in_flight', {}), 1 - 1); // (the scrape is on the admin listener)
      assert.equal(sample(t, 'turnpike_config_revision', {}), 1);
      assert.ok(all.some((x) => x.name === 'process_cpu_user_seconds_total'), 'process metrics');
      assert.ok(all.some((x) => x.name === 'nodejs_eventloop_lag_seconds'), 'event-loop metrics');
      return t;
    };
    const before = await check();
    assert.equal(sample(before, 'turnpike_upstream_target_up', { service: 'app', target: up.url }), 1);

    // Analytics: merged over both workers.
    const an = JSON.parse((await request(`http://127.0.0.1:${a}/analytics?window=1m`)).body);
    assert.equal(an.total.requests, 45);
    assert.equal(an.total.errors, 3);
    assert.equal(an.total.client_errors, 5);
    assert.equal(an.routes.find((r: { route: string }) => r.route === 'ok').requests, 37);

    // A rolling restart replaces both workers: their counts stay in the view.
    run.child.kill('SIGUSR2');
    await eventually(() => /rolling restart done/.test(run.stderr()), 20_000);
    await check();
  } finally {
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
    await up.close();
  }
});

test('metrics and analytics with workers: a worker that does not answer the scrape in time keeps its last counts (counters never go back)', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-metrics-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}
admin: {listen: 127.0.0.1:${a}}
workers: 2
access_log: {enabled: false}
services: [{name: app, url: ${up.url}, routes: [{name: ok, paths: [/ok]}]}]
`);
  const run = startCli(['start', '--config', file], {});
  let stopped = 0;
  try {
    await waitFor(`http://127.0.0.1:${a}/status`, 15_000);
    let workers: { pid: number; state: string }[] = [];
    await eventually(async () => {
      workers = JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).workers;
      return workers.filter((w) => w.state === 'listening').length === 2;
    }, 15_000);
    // (connections go to the workers in turn: both count some of these)
    for (let i = 0; i < 20; i++) assert.equal((await request(`http://127.0.0.1:${p}/ok`, { headers: fresh })).status, 200);
    const count = (t: string) => sample(t, 'turnpike_requests_total', { service: 'app', route: 'ok', method: 'GET', status: '200' });
    assert.equal(count((await request(`http://127.0.0.1:${a}/metrics`)).body), 20);
    // A worker that cannot answer now (stopped: busy, swapped out...): the scrape goes on without
    // its answer, but its counts are the last it gave, not gone (a counter that went back would be a reset).
    stopped = workers[0]!.pid;
    process.kill(stopped, 'SIGSTOP');
    const t = (await request(`http://127.0.0.1:${a}/metrics`)).body;
    assert.equal(count(t), 20);
    assert.equal(sample(t, 'turnpike_request_duration_seconds_count', { route: 'ok' }), 20);
    // The console's numbers too: /analytics counts the stopped worker's requests as it last reported them.
    assert.equal(JSON.parse((await request(`http://127.0.0.1:${a}/analytics?window=1h`)).body).total.requests, 20);
    process.kill(stopped, 'SIGCONT');
    stopped = 0;
    assert.equal(count((await request(`http://127.0.0.1:${a}/metrics`)).body), 20);
    // A worker that answered a scrape and exits before the scrape ends (the other is slow): its
    // counts are once in the scrape, not in its answer and again in what exited workers left.
    stopped = workers[1]!.pid;
    process.kill(stopped, 'SIGSTOP');
    const scrape = request(`http://127.0.0.1:${a}/metrics`);
    await sleep(300);
    process.kill(workers[0]!.pid, 'SIGKILL');
    assert.equal(count((await scrape).body), 20);
    process.kill(stopped, 'SIGCONT');
    stopped = 0;
    assert.equal(count((await request(`http://127.0.0.1:${a}/metrics`)).body), 20);
  } finally {
    if (stopped) process.kill(stopped, 'SIGCONT');
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
    await up.close();
  }
});

test('access log: one line per request with the contract fields; secrets redacted; rotation with reopen', async () => {
  const up = await startUpstream((req, res) => {
    setTimeout(() => res.writeHead(201, { 'content-type': 'text/plain' }).end('created!'), 20);
  });
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-access-'));
  const log = join(dir, 'access.log');
  const gw = await startGateway(`
access_log:
  destination: file
  path: ${log}
  fields: [time, request_id, client_ip, consumer, method, host, path, query, route, service, upstream, status, bytes_in, bytes_out, duration_ms, upstream_ms, gateway_ms, retries, error, headers]
  redact: [headers.x-session, query.private]
consumers:
  - name: alice
    credentials: [{type: key-auth, key: alice-secret-key-123}]
services:
  - name: app
    url: ${up.url}
    routes:
      - name: orders
        paths: [/orders]
        plugins: [{name: key-auth, config: {query: apikey, header: x-key}}]
      - name: open
        paths: [/open]
`);
  try {
    const r = await request(`${gw.url}/orders/1?apikey=alice-secret-key-123&private=p-value-9&page=2`, {
      method: 'POST',
      body: 'hello',
      headers: { authorization: 'Bearer tok-abc-456', cookie: 'sid=cookie-secret-789', 'x-session': 'sess-secret-000', 'x-trace-me': 'visible' },
    });
    assert.equal(r.status, 201);
    // (`;` separates parameters to Rack < 3 and Python's old parse_qs: a secret after one is one)
    const r2 = await request(`${gw.url}/open?page=3;apikey=semi-secret-111;Private=p-semi-222`, { headers: { 'x-key': 'alice-secret-key-123' } });
    assert.equal(r2.status, 201);
    const r3 = await request(`${gw.url}/orders/1`);
    assert.equal(r3.status, 401);
    const r4 = await request(`${gw.url}/nowhere`);
    assert.equal(r4.status, 404);
    await eventually(() => lines(log).length === 4);
    const text = readFileSync(log, 'utf8');
    for (const secret of ['alice-secret-key-123', 'tok-abc-456', 'cookie-secret-789', 'sess-secret-000', 'p-value-9', 'semi-secret-111', 'p-semi-222']) {
      assert.ok(!text.includes(secret), `${secret} leaked into the access log`);
    }
    const [a, b, c, d] = lines(log);
    assert.equal(a!.request_id, r.headers['x-request-id']);
    assert.equal(a!.consumer, 'alice');
    assert.equal(a!.method, 'POST');
    assert.equal(a!.path, '/orders/1');
    assert.deepEqual(a!.query, { apikey: '[REDACTED]', private: '[REDACTED]', page: '2' });
    assert.deepEqual(b!.query, { page: '3;apikey=[REDACTED];Private=[REDACTED]' });
    assert.equal(a!.route, 'orders');
    assert.equal(a!.service, 'app');
    assert.equal(a!.upstream, up.url);
    assert.equal(a!.status, 201);
    assert.equal(a!.client_ip, '127.0.0.1');
    assert.equal(a!.bytes_out, 'created!'.length);
    assert.ok((a!.bytes_in as number) > 5 + 100, 'head and body counted');
    // GET /nowhere from the test client: its head as sent on the wire, to the byte (the blank line ending it too).
    const raw = await rawRequest(gw.port, 'GET /nowhere HTTP/1.1\r\nHost: x\r\nX-Pad: 12345\r\nConnection: close\r\n\r\n');
    assert.deepEqual(statuses(raw.text), [404]);
    await eventually(() => lines(log).length === 5);
    assert.equal(lines(log)[4]!.bytes_in, Buffer.byteLength('GET /nowhere HTTP/1.1\r\nHost: x\r\nX-Pad: 12345\r\nConnection: close\r\n\r\n'));
    assert.ok((a!.upstream_ms as number) >= 15, `upstream_ms ${a!.upstream_ms}`);
    assert.ok((a!.duration_ms as number) >= (a!.upstream_ms as number));
    assert.ok((a!.gateway_ms as number) >= 0 && (a!.gateway_ms as number) < (a!.duration_ms as number));
    assert.equal(a!.retries, 0);
    assert.equal(a!.error, null);
    assert.ok(!Number.isNaN(Date.parse(a!.time as string)));
    const h = a!.headers as Record<string, string>;
    assert.equal(h.authorization, '[REDACTED]');
    assert.equal(h.cookie, '[REDACTED]');
    assert.equal(h['x-session'], '[REDACTED]');
    assert.equal(h['x-trace-me'], 'visible');
    // A key-auth header name is censored wherever it appears.
    assert.equal((b!.headers as Record<string, string>)['x-key'], '[REDACTED]');
    assert.equal(c!.status, 401);
    assert.equal(c!.error, 'unauthorized');
    assert.equal(c!.consumer, null);
    assert.equal(c!.upstream_ms, null);
    assert.equal(d!.status, 404);
    assert.equal(d!.error, 'no-route');
    assert.equal(d!.route, null);
    assert.equal(d!.request_id, r4.headers['x-request-id']);

    // Names of Object.prototype's are keys like any other: logged as forwarded, never the
    // prototype's function nor dropped.
    const proto = await rawRequest(gw.port, 'GET /open?__proto__=p1&constructor=c1&constructor=c2&toString=t HTTP/1.1\r\nHost: x\r\n__proto__: hp\r\nconstructor: hc\r\nConnection: close\r\n\r\n');
    assert.deepEqual(statuses(proto.text), [201]);
    await eventually(() => lines(log).length === 6);
    const e = lines(log)[5]!;
    assert.equal(JSON.stringify(e.query), '{"__proto__":"p1","constructor":"c1,c2","toString":"t"}');
    assert.match(JSON.stringify(e.headers), /"__proto__":"hp","constructor":"hc"/);

    // Rotation: the file is moved away, reopen (SIGUSR1 in the CLI) starts a new one; nothing lost.
    renameSync(log, `${log}.1`);
    await request(`${gw.url}/open`);
    gw.gw.observer.reopen();
    await request(`${gw.url}/open`);
    await eventually(() => lines(`${log}.1`).length + lines(log).length === 8);
    assert.ok(lines(log).length >= 1);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('observability settings: errors name their path and line; the README example is valid', async () => {
  assert.deepEqual(configIssues(`access_log:\n  destination: file\n`).map((i) => `${i.path} (line ${i.line}): ${i.message}`), [
    'access_log (line 2): destination file needs a path',
  ]);
  assert.deepEqual(configIssues(`access_log:\n  redact: [headers.x-a, secrets.b]\n`).map((i) => `${i.path}: ${i.message}`), [
    `access_log.redact[1]: unknown field "secrets" (one of time, request_id, client_ip, consumer, method, host, path, query, protocol, route, service, upstream, status, bytes_in, bytes_out, duration_ms, upstream_ms, gateway_ms, retries, error, grpc_status, websocket, user_agent, headers, trace_id)`,
  ]);
  assert.equal(configIssues(`metrics: {buckets: [0.1, 0.05]}\n`)[0]!.message, 'bucket bounds must be ascending');
  assert.match(configIssues(`tracing: {enabled: true, sample: 2}\n`)[0]!.path, /^tracing\.sample/);
  const readme = readFileSync('README.md', 'utf8');
  const start = readme.indexOf('      access_log: {enabled: true, destination: file');
  assert.ok(start !== -1, 'README lost its observability example');
  const text = readme.slice(start).split('\n').filter((l, i, all) => all.slice(0, i + 1).every((x) => x.startsWith('      '))).map((l) => l.slice(6)).join('\n');
  assert.deepEqual(configIssues(text), []);
  // docs/observability.md's settings block.
  const doc = readFileSync('docs/observability.md', 'utf8');
  const block = doc.slice(doc.indexOf('    access_log:\n')).split('\n');
  const settings = block.slice(0, block.findIndex((l) => l !== '' && !l.startsWith('    '))).map((l) => l.slice(4)).join('\n');
  assert.match(settings, /analytics:/);
  assert.deepEqual(configIssues(settings, { LOG_TOKEN: 't' }), []);
});

test('a tracing endpoint or access log url that is no URL (a space, a bad port, an open bracket) is a config error at tracing.endpoint / access_log.url with its line, the password masked; validate says so, not only start', () => {
  const svc = `services: [{name: a, url: "http://127.0.0.1:1", routes: [{paths: [/]}]}]\n`;
  for (const ep of ['http://u:secretpw@exa mple:4318/v1/traces', 'http://collector:99999/v1/traces', 'http://[::1/v1/traces']) {
    const issues = configIssues(`${svc}tracing:\n  enabled: true\n  endpoint: "${ep}"\n`);
    assert.equal(issues.length, 1, JSON.stringify(issues));
    assert.equal(issues[0]!.path, 'tracing.endpoint');
    assert.equal(issues[0]!.line, 4);
    assert.match(issues[0]!.message, /not a valid URL/);
    assert.ok(!issues[0]!.message.includes('secretpw'), issues[0]!.message);
  }
  const al = configIssues(`${svc}access_log:\n  destination: http\n  url: "http://u:secretpw@exa mple/x"\n`);
  assert.equal(al.length, 1, JSON.stringify(al));
  assert.equal(al[0]!.path, 'access_log.url');
  assert.equal(al[0]!.line, 4);
  assert.match(al[0]!.message, /not a valid URL/);
  assert.ok(!al[0]!.message.includes('secretpw'), al[0]!.message);
  // (tracing off: its endpoint is not used, nor judged)
  assert.deepEqual(configIssues(`${svc}tracing: {enabled: false, endpoint: "http://exa mple"}\n`), []);
});

test('a reload whose access log cannot be opened is refused; the running log continues', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-access-'));
  const log = join(dir, 'a.log');
  const cfg = (path: string) => `access_log: {destination: file, path: ${path}}\nservices: [{name: s, url: ${up.url}, routes: [{name: r, paths: [/]}]}]\n`;
  const gw = await startGateway(cfg(log));
  try {
    await request(`${gw.url}/one`);
    writeFileSync(join(dir, 'plain-file'), 'x');
    const { parseConfigText } = await import('../src/config/load.js');
    await assert.rejects(gw.gw.reloadAsync(parseConfigText(`listen: 127.0.0.1:0\n${cfg(join(dir, 'plain-file', 'sub.log'))}`)), /access_log.*cannot open/s);
    assert.equal(gw.gw.revision, 1);
    await request(`${gw.url}/two`);
    await eventually(() => lines(log).map((l) => l.path).join() === '/one,/two');
  } finally {
    await gw.close();
    await up.close();
  }
});

test('a client that leaves before the answer is logged as 499 client-closed; HTTP sink gets the lines', async () => {
  const got: string[] = [];
  const sink = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      got.push(...body.split('\n').filter(Boolean));
      res.end();
    });
  });
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
  const up = await startUpstream((_q, res) => setTimeout(() => res.end('late'), 300));
  const gw = await startGateway(`access_log: {destination: http, url: "http://127.0.0.1:${(sink.address() as AddressInfo).port}/logs", batch_lines: 2, flush_interval: 100ms}
services: [{name: s, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    const s = connect(gw.port, '127.0.0.1');
    s.write('GET /leaving HTTP/1.1\r\nHost: x\r\n\r\n');
    await sleep(50);
    s.destroy();
    await request(`${gw.url}/staying`);
    await eventually(() => got.length === 2, 5000);
    const byPath = Object.fromEntries(got.map((l) => JSON.parse(l) as Record<string, unknown>).map((l) => [l.path, l]));
    assert.equal((byPath['/leaving'] as { status: number }).status, 499);
    assert.equal((byPath['/leaving'] as { error: string }).error, 'client-closed');
    assert.equal((byPath['/staying'] as { status: number }).status, 200);
    assert.equal((byPath['/staying'] as { type: string }).type, 'access');
  } finally {
    await gw.close();
    await up.close();
    await new Promise<void>((r) => sink.close(() => r()));
  }
});

test('a request body the client gives up on is logged once (499, no phantom 400); a parser-rejected request names its client_ip', async () => {
  const got: Record<string, unknown>[] = [];
  const sink = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      got.push(...body.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>));
      res.end();
    });
  });
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
  const up = await startUpstream((_q, res) => res.end('ok'));
  const gw = await startGateway(`access_log: {destination: http, url: "http://127.0.0.1:${(sink.address() as AddressInfo).port}/logs", batch_lines: 1, flush_interval: 50ms}
services: [{name: s, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    // half a body, then FIN (the parser sees EOF mid-body) or a reset
    for (const how of ['end', 'destroy'] as const) {
      const s = connect(gw.port, '127.0.0.1');
      s.on('error', () => {});
      s.write(`POST /gave-up-${how} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf`);
      await sleep(100);
      if (how === 'end') s.end(); else s.destroy();
      await sleep(100);
      s.destroy();
    }
    // a framing error in the body of a request in flight: answered 400, logged once, on its own line
    const chunked = connect(gw.port, '127.0.0.1');
    chunked.on('error', () => {});
    chunked.write('POST /bad-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
    await sleep(100);
    chunked.write('ZZ\r\n');
    await sleep(100);
    chunked.destroy();
    const bad = connect(gw.port, '127.0.0.1');
    bad.on('error', () => {});
    bad.write('GET /x HTTP/1.1 HTTP/1.1\r\nHost: x\r\n\r\n');
    await sleep(100);
    bad.destroy();
    assert.equal((await request(`${gw.url}/staying`)).status, 200);
    await eventually(() => got.some((l) => l.path === '/staying'), 5000);
    await sleep(200);
    const lines = got.map((l) => `${String(l.path)} ${String(l.status)}`).sort();
    assert.deepEqual(lines, ['/bad-chunk 400', '/gave-up-destroy 499', '/gave-up-end 499', '/staying 200', 'null 400'], JSON.stringify(got));
    assert.equal(got.find((l) => l.path === '/bad-chunk')!.error, 'bad-request');
    const rejected = got.find((l) => l.path === null)!;
    assert.equal(rejected.client_ip, '127.0.0.1');
  } finally {
    await gw.close();
    await up.close();
    await new Promise<void>((r) => sink.close(() => r()));
  }
});

test('metrics: limit decisions, circuit and target state, reloads; hostile methods never become label values', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const dead = await freePort();
  const dead2 = await freePort();
  const text = (limit: number) => `admin: {listen: 127.0.0.1:0}
services:
  - name: app
    url: ${up.url}
    routes:
      - name: limited
        paths: [/limited]
        plugins: [{name: rate-limit, config: {limit: ${limit}, window: 1m}}]
      - name: any
        paths: [/any]
  - name: gone
    upstream:
      targets: [{url: "http://127.0.0.1:${dead}"}, {url: "http://127.0.0.1:${dead2}"}]
      healthcheck: {passive: {failures: 1, ejection: 60s}}
    circuit_breaker: {min_requests: 2, failure_ratio: 0.5, window: 10s, open_for: 60s}
    routes: [{name: gone, paths: [/gone]}]
`;
  const gw = await startGateway(text(3));
  try {
    for (let i = 0; i < 5; i++) await request(`${gw.url}/limited`);
    // (a method llhttp does not know is a 400 before routing: it never gets this far)
    for (const m of ['GET', 'PROPFIND', 'MKCOL', 'LOCK']) await request(`${gw.url}/any`, { method: m });
    for (let i = 0; i < 3; i++) await request(`${gw.url}/gone`);
    const { parseConfigText } = await import('../src/config/load.js');
    await gw.gw.reloadAsync(parseConfigText(`listen: 127.0.0.1:0\n${text(4)}`));
    await assert.rejects(gw.gw.reloadAsync(parseConfigText(`listen: 127.0.0.1:0\n${text(4).replace('name: any', 'name: limited')}`)));
    const t = (await request(`${gw.adminUrl}/metrics`)).body;
    assert.equal(sample(t, 'turnpike_limit_decisions_total', { route: 'limited', plugin: 'rate-limit', decision: 'allowed' }), 3);
    assert.equal(sample(t, 'turnpike_limit_decisions_total', { route: 'limited', plugin: 'rate-limit', decision: 'rejected' }), 2);
    assert.equal(sample(t, 'turnpike_requests_total', { route: 'limited', status: '429' }), 2);
    const methods = new Set(parse(t).filter((x) => x.name === 'turnpike_requests_total' && x.labels.route === 'any').map((x) => x.labels.method));
    assert.deepEqual([...methods].sort(), ['GET', 'OTHER']);
    assert.equal(sample(t, 'turnpike_requests_total', { route: 'any', method: 'OTHER' }), 3);
    // One dead target is ejected; the other is the last one up, which passive checks keep.
    const gone = [dead, dead2].map((p) => sample(t, 'turnpike_upstream_target_up', { service: 'gone', target: `http://127.0.0.1:${p}` }));
    assert.deepEqual([...gone].sort(), [0, 1]);
    assert.equal(sample(t, 'turnpike_upstream_target_up', { service: 'app', target: up.url }), 1);
    assert.equal(sample(t, 'turnpike_config_revision', {}), 2);
    assert.equal(sample(t, 'turnpike_config_reloads_total', { result: 'success' }), 1);
    assert.equal(sample(t, 'turnpike_config_reloads_total', { result: 'failure' }), 1);
    const circuit = parse(t).filter((x) => x.name === 'turnpike_circuit_state' && x.labels.service === 'gone');
    assert.equal(circuit.reduce((n, x) => n + x.value, 0), 1, 'exactly one state is current');
    const st = JSON.parse((await request(`${gw.adminUrl}/status`)).body);
    assert.equal(st.upstreams.targets, 3);
    assert.equal(st.upstreams.targets_down.length, 1);
    assert.ok([`gone|http://127.0.0.1:${dead}`, `gone|http://127.0.0.1:${dead2}`].includes(st.upstreams.targets_down[0]), JSON.stringify(st.upstreams.targets_down));
  } finally {
    await gw.close();
    await up.close();
  }
});

test('metrics: two targets with one origin (two base paths) are two turnpike_upstream_target_up series, not one series twice (Prometheus refuses such a scrape)', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const gw = await startGateway(`admin: {listen: 127.0.0.1:0}
services:
  - name: app
    upstream:
      targets: [{url: "${up.url}/a"}, {url: "${up.url}/b"}, {url: "${up.url}"}]
    routes: [{name: r, paths: [/r]}]
`);
  try {
    const t = (await request(`${gw.adminUrl}/metrics`)).body;
    const all = parse(t);
    const keys = all.map((x) => `${x.name}${JSON.stringify(Object.entries(x.labels).sort())}`);
    assert.deepEqual(keys.filter((k, i) => keys.indexOf(k) !== i), [], 'no series twice');
    const ups = all.filter((x) => x.name === 'turnpike_upstream_target_up');
    assert.deepEqual(ups.map((x) => x.labels).sort((a, b) => a.url!.localeCompare(b.url!)), [
      { service: 'app', target: up.url, url: up.url },
      { service: 'app', target: up.url, url: `${up.url}/a` },
      { service: 'app', target: up.url, url: `${up.url}/b` },
    ]);
    assert.ok(ups.every((x) => x.value === 1));
  } finally {
    await gw.close();
    await up.close();
  }
});

test('analytics across nodes: two gateways sharing Redis answer /analytics with both; Redis down -> this node, marked partial', async () => {
  const { startRedis } = await import('./redis-server.js');
  const redis = await startRedis();
  const up = await startUpstream((_q, res) => res.end('ok'));
  const text = `admin: {listen: 127.0.0.1:0}
redis: {url: "${redis.url}", prefix: "an:", timeout: 300}
analytics: {publish_interval: 200ms}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`;
  const a = await startGateway(text);
  const b = await startGateway(text);
  try {
    for (let i = 0; i < 7; i++) await request(`${a.url}/x`);
    for (let i = 0; i < 4; i++) await request(`${b.url}/x`);
    // Each node publishes at start and every 200 ms.
    await eventually(async () => JSON.parse((await request(`${a.adminUrl}/analytics?window=1m`)).body).total.requests === 11, 15_000, 250);
    const fromA = JSON.parse((await request(`${a.adminUrl}/analytics?window=1m`)).body);
    assert.equal(fromA.nodes, 2);
    assert.equal(fromA.routes[0].requests, 11);
    await redis.kill();
    const alone = JSON.parse((await request(`${b.adminUrl}/analytics?window=1m`)).body);
    assert.equal(alone.total.requests, 4);
    assert.equal(alone.nodes, 1);
    assert.match(alone.partial, /other nodes unknown/);
  } finally {
    await a.close();
    await b.close();
    await up.close();
    await redis.stop();
  }
});

test('access log: a session id or key in a path parameter (/cart;jsessionid=..., servlet URL rewriting) is censored like one in the query, in both line writers', async () => {
  const up = await startUpstream();
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-access-pp-'));
  const logs = [join(dir, 'default.log'), join(dir, 'listed.log')];
  const gws = [
    await startGateway(`access_log: {destination: file, path: ${logs[0]}}\nservices: [{name: app, url: ${up.url}, routes: [{paths: [/app]}]}]\n`),
    await startGateway(`access_log: {destination: file, path: ${logs[1]}, fields: [request_id, path, status]}\nservices: [{name: app, url: ${up.url}, routes: [{paths: [/app]}]}]\n`),
  ];
  try {
    for (const gw of gws) {
      for (const path of ['/app/cart;jsessionid=SESS-SECRET-1/items', '/app/x;v=1;apikey=KEY-SECRET-2', '/app/y;JSESSIONID=SESS-SECRET-3', '/app/z;PHPSESSID=SESS-SECRET-4;v=2']) {
        assert.equal((await request(`${gw.url}${path}`)).status, 200, path);
      }
    }
    for (const log of logs) {
      await eventually(() => lines(log).length === 4);
      const text = readFileSync(log, 'utf8');
      for (const secret of ['SESS-SECRET-1', 'KEY-SECRET-2', 'SESS-SECRET-3', 'SESS-SECRET-4']) assert.ok(!text.includes(secret), `${secret} leaked into ${log}`);
      assert.deepEqual(lines(log).map((l) => l.path), ['/app/cart;jsessionid=[REDACTED]/items', '/app/x;v=1;apikey=[REDACTED]', '/app/y;JSESSIONID=[REDACTED]', '/app/z;PHPSESSID=[REDACTED];v=2']);
    }
    // Forwarded as sent: the upstream needs them.
    assert.equal(up.requests.at(-1)!.url, '/app/z;PHPSESSID=SESS-SECRET-4;v=2');
  } finally {
    for (const gw of gws) await gw.close();
    await up.close();
  }
});

test('access log: the default field set and the same fields listed explicitly give the same lines', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-access-'));
  const { DEFAULT_ACCESS_FIELDS } = await import('../src/observability/schema.js');
  const mk = (file: string, fields: string) => startGateway(`access_log: {destination: file, path: ${join(dir, file)}${fields}}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  const a = await mk('a.log', '');
  const b = await mk('b.log', `, fields: [${DEFAULT_ACCESS_FIELDS.join(', ')}]`);
  try {
    for (const g of [a, b]) {
      await request(`${g.url}/x?q=1`, { headers: { 'x-request-id': 'same-id-1' } });
      await request(`${g.url}/x`, { method: 'POST', body: 'abc', headers: { 'x-request-id': 'same-id-2' } });
    }
    await eventually(() => lines(join(dir, 'a.log')).length === 2 && lines(join(dir, 'b.log')).length === 2);
    const strip = (l: Record<string, unknown>) => {
      const { time, duration_ms, upstream_ms, gateway_ms, client_ip, host, ...rest } = l;
      assert.equal(typeof time, 'string');
      for (const v of [duration_ms, upstream_ms, gateway_ms]) assert.equal(typeof v, 'number');
      return { ...rest, keys: Object.keys(l).join() };
    };
    assert.deepEqual(lines(join(dir, 'a.log')).map(strip), lines(join(dir, 'b.log')).map(strip));
  } finally {
    await a.close();
    await b.close();
    await up.close();
  }
});

test('access log: the time follows the wall clock when it is stepped (NTP, a resumed VM), in both line writers', async (t) => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-access-'));
  const mk = (file: string, fields: string) => startGateway(`access_log: {destination: file, path: ${join(dir, file)}${fields}}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  const a = await mk('a.log', '');
  const b = await mk('b.log', ', fields: [time, status]');
  try {
    // the wall clock jumps a day ahead after the gateways started (only Date moves; timers are real)
    const stepped = Date.now() + 86_400_000;
    t.mock.timers.enable({ apis: ['Date'], now: stepped });
    for (const g of [a, b]) assert.equal((await request(`${g.url}/x`)).status, 200);
    await eventually(() => lines(join(dir, 'a.log')).length === 1 && lines(join(dir, 'b.log')).length === 1);
    for (const f of ['a.log', 'b.log']) {
      const at = Date.parse(lines(join(dir, f))[0]!.time as string);
      assert.ok(Math.abs(at - stepped) < 60_000, `${f}: logged at ${new Date(at).toISOString()}, the clock says ${new Date(stepped).toISOString()}`);
    }
  } finally {
    t.mock.timers.reset();
    await a.close();
    await b.close();
    await up.close();
  }
});

test('access log: hostile values stay inside their JSON strings', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`access_log: {destination: file, path: ${log}, fields: [request_id, status, path, user_agent]}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    const hostile = 'x"},"status":1,"a":"\\\\';
    await request(`${gw.url}/p%22q/%5C"x`, { headers: { 'x-request-id': hostile, 'user-agent': hostile } });
    await eventually(() => lines(log).length === 1);
    const [l] = lines(log);
    // Such an id is not taken from a client at all (the gateway makes its own); the agent is logged as sent.
    assert.notEqual(l!.request_id, hostile);
    assert.match(String(l!.request_id), /^[0-9a-f-]{36}#[0-9a-z]+$/);
    assert.equal(l!.user_agent, hostile);
    assert.equal(l!.status, 200);
    assert.equal(typeof l!.path, 'string');
  } finally {
    await gw.close();
    await up.close();
  }
});

test('access log: characters JSON leaves raw that split a line for other readers (NEL, U+2028/2029: Python splitlines) or act on a terminal (C1 CSI) or reorder it (bidi) are written as \\u escapes', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const { rawRequest } = await import('./helpers.js');
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  try {
  for (const fields of ['', ', fields: [path, user_agent, headers, query, consumer, status]']) {
    writeFileSync(log, '');
    const gw = await startGateway(`access_log: {destination: file, path: ${log}${fields}}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
    try {
      // User-Agent bytes 0x9B (CSI) and 0x85 (NEL), Latin-1 to Node; a query with U+2028, U+2029, U+202E and U+009B.
      const head = Buffer.concat([
        Buffer.from('GET /p?q=a%E2%80%A8%7B%22type%22%3A%22access%22%7D%E2%80%A9b%E2%80%AEc%C2%9B31m HTTP/1.1\r\nHost: x\r\nUser-Agent: ua'),
        Buffer.from([0x9b, 0x33, 0x31, 0x6d, 0x85]),
        Buffer.from('z\r\nConnection: close\r\n\r\n'),
      ]);
      assert.match((await rawRequest(gw.port, head)).text, /^HTTP\/1\.1 200/);
      await eventually(() => lines(log).length === 1);
      const text = readFileSync(log, 'utf8');
      // One line whichever way it is split: \n only (NDJSON), or every Unicode line break (Python's str.splitlines()).
      assert.equal(text.split(/\r\n|[\n\r\v\f\u001c-\u001e\u0085\u2028\u2029]/).filter(Boolean).length, 1, JSON.stringify(text));
      assert.ok(!/[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/.test(text), JSON.stringify(text));
      if (fields !== '') {
        const [l] = lines(log);
        assert.equal(l!.user_agent, 'ua\u009b31m\u0085z');
        assert.deepEqual(l!.query, { q: 'a\u2028{"type":"access"}\u2029b\u202ec\u009b31m' });
        assert.match(text, /"user_agent":"ua\\u009b31m\\u0085z"/);
      }
    } finally {
      await gw.close();
    }
  }
  } finally {
    await up.close();
  }
});

test('a primary (workers > 1) refuses an access log file its workers could not open', async () => {
  const { Observer } = await import('../src/observability/observer.js');
  const { silentLogger } = await import('../src/core/log.js');
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-access-'));
  writeFileSync(join(dir, 'plain-file'), 'x');
  const settings = (path: string) => ({
    accessLog: { sink: { destination: 'file' as const, path }, fields: [], redact: { headers: [], query: [], fields: [] } },
    metrics: null, tracing: null, analytics: null,
  });
  const gauges = { inFlight: () => 0, revision: () => 1, reloads: () => ({ ok: 0, failed: 0 }), targets: () => [], circuits: () => [], websockets: () => null };
  assert.throws(() => new Observer(settings(join(dir, 'plain-file', 'a.log')), gauges, silentLogger, 'primary'), /cannot open/);
  const ok = new Observer(settings(join(dir, 'a.log')), gauges, silentLogger, 'primary');
  assert.equal(ok.begin(), null, 'a primary records nothing itself');
  await ok.close();
});

test('a request the HTTP parser refuses is logged with the configured fields only, redact: [client_ip] censored (it was logged in clear)', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`
access_log: {destination: file, path: ${log}, fields: [time, client_ip, status, error], redact: [client_ip]}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    const { rawRequest } = await import('./helpers.js');
    await request(`${gw.url}/ok`);
    const r = await rawRequest(gw.port, 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
    assert.match(r.text, /^HTTP\/1\.1 400/);
    await eventually(() => lines(log).length === 2);
    const [ok, refused] = lines(log);
    assert.deepEqual(Object.keys(ok!), ['type', 'time', 'client_ip', 'status', 'error']);
    assert.equal(ok!.client_ip, '[REDACTED]');
    assert.deepEqual(Object.keys(refused!), Object.keys(ok!), 'the same fields as any other line');
    assert.equal(refused!.client_ip, '[REDACTED]');
    assert.equal(refused!.status, 400);
    assert.equal(refused!.error, 'bad-request');
    assert.doesNotMatch(readFileSync(log, 'utf8'), /127\.0\.0\.1/);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('requests refused before the request path (an Expect other than 100-continue: 417, CONNECT: 405) are counted and logged', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`admin: {listen: 127.0.0.1:0}
access_log: {destination: file, path: ${log}}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    const expect = await rawRequest(gw.port, 'GET /x?token=SECRET HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nX-Request-Id: exp-1\r\nConnection: close\r\n\r\n', 500);
    assert.match(expect.text, /^HTTP\/1\.1 417/);
    const conn = await rawRequest(gw.port, 'CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nX-Request-Id: con-1\r\n\r\n', 500);
    assert.match(conn.text, /^HTTP\/1\.1 405/);
    await eventually(() => lines(log).length === 2);
    const byId = new Map(lines(log).map((l) => [l.request_id, l]));
    const e = byId.get('exp-1')!;
    assert.ok(e, 'the 417 is logged');
    assert.equal(e.status, 417);
    assert.equal(e.method, 'GET');
    assert.equal(e.path, '/x');
    assert.equal(e.error, 'expectation-failed');
    assert.equal(e.client_ip, '127.0.0.1');
    const c = byId.get('con-1')!;
    assert.ok(c, 'the CONNECT is logged');
    assert.equal(c.status, 405);
    assert.equal(c.method, 'CONNECT');
    assert.equal(c.error, 'method-not-allowed');
    assert.equal(c.client_ip, '127.0.0.1');
    assert.doesNotMatch(readFileSync(log, 'utf8'), /SECRET/);
    const t = (await request(`${gw.adminUrl}/metrics`)).body;
    assert.equal(sample(t, 'turnpike_requests_total', { route: '', method: 'GET', status: '417' }), 1);
    assert.equal(sample(t, 'turnpike_requests_total', { route: '', method: 'CONNECT', status: '405' }), 1);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('access log: OPTIONS * (asterisk-form) is logged with its host, path "*" and client as received', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`
access_log: {destination: file, path: ${log}}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    const r = await rawRequest(gw.port, 'OPTIONS * HTTP/1.1\r\nHost: a.example:8080\r\nConnection: close\r\n\r\n', 500);
    assert.match(r.text, /^HTTP\/1\.1 200/);
    await eventually(() => lines(log).length === 1);
    const [l] = lines(log);
    assert.equal(l!.method, 'OPTIONS');
    assert.equal(l!.host, 'a.example:8080');
    assert.equal(l!.path, '*');
    assert.equal(l!.client_ip, '127.0.0.1');
    assert.equal(l!.status, 200);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('access log headers: a secret field spelled with underscores (X_Api_Key, Proxy_Authorization, X_Auth_Token) is censored like its dashed name', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`
access_log: {destination: file, path: ${log}, fields: [status, headers], redact: [headers.x-session]}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    await request(`${gw.url}/x`, { headers: { x_api_key: 'SECRET1', proxy_authorization: 'Basic SECRET2', x_auth_token: 'SECRET3', x_session: 'SECRET4', x_other: 'visible' } });
    await eventually(() => lines(log).length === 1);
    const h = lines(log)[0]!.headers as Record<string, string>;
    assert.equal(h.x_api_key, '[REDACTED]');
    assert.equal(h.proxy_authorization, '[REDACTED]');
    assert.equal(h.x_auth_token, '[REDACTED]');
    assert.equal(h.x_session, '[REDACTED]');
    assert.equal(h.x_other, 'visible');
    assert.doesNotMatch(readFileSync(log, 'utf8'), /SECRET/);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('access log headers: the credential fields well-known APIs read (Api-Key, X-Access-Token, X-Amz-Security-Token, X-Goog-Api-Key, Ocp-Apim-Subscription-Key, Private-Token, X-Vault-Token, X-Auth-Key) are censored', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`
access_log: {destination: file, path: ${log}, fields: [status, headers]}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  const secrets: Record<string, string> = {
    'api-key': 'SECRET1', 'x-access-token': 'SECRET2', 'x-amz-security-token': 'SECRET3', 'x-goog-api-key': 'SECRET4',
    'ocp-apim-subscription-key': 'SECRET5', 'private-token': 'SECRET6', 'x-vault-token': 'SECRET7', 'x-auth-key': 'SECRET8',
  };
  try {
    await request(`${gw.url}/x`, { headers: { ...secrets, 'x-other': 'visible' } });
    await eventually(() => lines(log).length === 1);
    const h = lines(log)[0]!.headers as Record<string, string>;
    for (const k of Object.keys(secrets)) assert.equal(h[k], '[REDACTED]', k);
    assert.equal(h['x-other'], 'visible');
    assert.doesNotMatch(readFileSync(log, 'utf8'), /SECRET/);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('requests the HTTP parser refuses (smuggling attempts, oversized heads) are counted and logged', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`admin: {listen: 127.0.0.1:0}
access_log: {destination: file, path: ${log}}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    const { rawRequest } = await import('./helpers.js');
    const r = await rawRequest(gw.port, 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
    assert.match(r.text, /^HTTP\/1\.1 400/);
    await eventually(() => lines(log).length === 1);
    const [l] = lines(log);
    assert.equal(l!.status, 400);
    assert.equal(l!.error, 'bad-request');
    assert.equal(l!.client_ip, '127.0.0.1');
    const t = (await request(`${gw.adminUrl}/metrics`)).body;
    assert.equal(sample(t, 'turnpike_requests_total', { route: '', method: 'OTHER', status: '400' }), 1);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('SIGUSR1 to the running CLI reopens the access log file (log rotation)', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-rotate-'));
  const log = join(dir, 'access.log');
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\naccess_log: {destination: file, path: ${log}}\nservices: [{name: s, url: ${up.url}, routes: [{name: r, paths: [/]}]}]\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await waitFor(`http://127.0.0.1:${a}/status`, 15_000);
    await request(`http://127.0.0.1:${p}/before`);
    await eventually(() => lines(log).length === 1);
    renameSync(log, `${log}.1`);
    run.child.kill('SIGUSR1');
    await eventually(() => /reopening log files/.test(run.stderr()));
    await request(`http://127.0.0.1:${p}/after`);
    await eventually(() => lines(log).map((l) => l.path).join() === '/after');
    assert.deepEqual(lines(`${log}.1`).map((l) => l.path), ['/before']);
  } finally {
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
    await up.close();
  }
});

test('workers: 2 writing the access log to a pipe: under concurrent load every line is whole JSON', async () => {
  const { Pool } = await import('undici');
  const { spawn } = await import('node:child_process');
  const up = await startUpstream((_q, res) => res.end('ok'));
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-pipe-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\nworkers: 2\naccess_log: {destination: stdout}\nservices:
  - name: s
    upstream: {targets: [{url: ${up.url}}]}
    routes: [{paths: [/]}]
`);
  // stdout is a real pipe (as under docker / systemd / \`| cat\`): only writes of up to 4096 bytes are atomic.
  const child = spawn('sh', ['-c', 'node bin/turnpike.js start --config "$1" 2>/dev/null | cat', 'sh', file], {
    env: { ...process.env, TURNPIKE_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'ignore'],
    detached: true,
  });
  // (its own process group: the shell, the gateway, its workers and cat end together, whatever the test does)
  trackGroup(child.pid!);
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const pool = new Pool(`http://127.0.0.1:${p}`, { connections: 64, pipelining: 1 });
  try {
    await waitFor(`http://127.0.0.1:${p}/ready-check`, 20_000);
    await eventually(async () => JSON.parse((await request(`http://127.0.0.1:${a}/status`)).body).workers.filter((w: { state: string }) => w.state === 'listening').length === 2, 20_000);
    const path = '/' + 'p'.repeat(1200); // ~1.6 KB lines: many per 4 KiB write, and big chunks
    const end = Date.now() + 3000;
    let sent = 0;
    await Promise.all(Array.from({ length: 64 }, async () => {
      while (Date.now() < end) {
        const r = await pool.request({ path, method: 'GET' });
        await r.body.dump();
        sent++;
      }
    }));
    // (counted as substrings: a line spliced into another must not keep the wait going)
    await eventually(() => out.split('{"type":"access"').length - 1 >= sent, 10_000);
    const lines = out.split('\n').slice(0, -1); // the last piece has no newline yet
    let access = 0;
    for (const l of lines) {
      let v: { type?: string };
      try {
        v = JSON.parse(l) as { type?: string };
      } catch {
        assert.fail(`not a JSON line (${l.length} chars): ${l.slice(0, 200)}...`);
      }
      if (v.type === 'access') access++;
    }
    assert.ok(access >= sent, `${access} access lines for ${sent} requests`);
  } finally {
    await pool.close();
    // Until every process of the group is gone (the shell dies at once while the gateway drains,
    // its stdout's reader gone): SIGKILL after 15 s.
    await stopGroup(child.pid!);
    await up.close();
  }
});

test('access log: a refused absolute-form target never logs its userinfo, authority or query', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const { rawRequest } = await import('./helpers.js');
  try {
  for (const fields of ['', ', fields: [time, request_id, method, host, path, query, status, error]']) {
    const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
    const gw = await startGateway(`access_log: {destination: file, path: ${log}${fields}}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
    try {
      const r = await rawRequest(gw.port, 'GET http://alice:topsecretpw@127.0.0.1:22000/open/x?token=abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      assert.match(r.text, /^HTTP\/1\.1 400/);
      const r2 = await rawRequest(gw.port, 'GET HTTP://bob:hunter2@h/?k=v#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      assert.match(r2.text, /^HTTP\/1\.1 400/);
      await eventually(() => lines(log).length === 2);
      const text = readFileSync(log, 'utf8');
      for (const secret of ['alice', 'topsecretpw', '22000', 'token', 'abc', 'bob', 'hunter2', 'frag']) assert.ok(!text.includes(secret), `${secret} in ${text}`);
      const [a, b] = lines(log);
      assert.equal(a!.path, '/open/x');
      assert.equal(b!.path, '/');
    } finally {
      await gw.close();
    }
  }
  } finally {
    await up.close();
  }
});

test('metrics: access log lines written and dropped are counted (a dead HTTP receiver drops, a file writes)', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const dead = await freePort();
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`admin: {listen: 127.0.0.1:0}
access_log: {destination: http, url: "http://127.0.0.1:${dead}/ingest", flush_interval: 50ms}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    for (let i = 0; i < 5; i++) assert.equal((await request(`${gw.url}/x`)).status, 200);
    // Three failed attempts (backoff 250 ms, 1 s), then the batch is dropped.
    await eventually(async () => sample((await request(`${gw.adminUrl}/metrics`)).body, 'turnpike_access_log_lines_dropped_total', {}) === 5, 8000);
    const t = (await request(`${gw.adminUrl}/metrics`)).body;
    assert.equal(sample(t, 'turnpike_access_log_lines_written_total', {}), 0);
    // A reload to a file: the counters carry on (they never go back).
    const { parseConfigText } = await import('../src/config/load.js');
    gw.gw.reload(parseConfigText(`listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}
access_log: {destination: file, path: ${log}}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`));
    for (let i = 0; i < 3; i++) assert.equal((await request(`${gw.url}/x`)).status, 200);
    await eventually(() => lines(log).length === 3);
    const t2 = (await request(`${gw.adminUrl}/metrics`)).body;
    assert.equal(sample(t2, 'turnpike_access_log_lines_written_total', {}), 3);
    assert.equal(sample(t2, 'turnpike_access_log_lines_dropped_total', {}), 5);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('access log to stdout whose reader is gone (a log shipper that exited): the gateway serves on, counts the lines as dropped, and a SIGTERM exits at once, not after two 5 s flush bounds', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const [p, a] = [await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-epipe-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, `listen: 127.0.0.1:${p}\nadmin: {listen: 127.0.0.1:${a}}\naccess_log: {destination: stdout}\nservices: [{name: s, url: ${up.url}, routes: [{name: r, paths: [/]}]}]\n`);
  const run = startCli(['start', '--config', file], {});
  try {
    await waitFor(`http://127.0.0.1:${a}/status`, 15_000);
    // The read end of the gateway's stdout closes: every write to it is EPIPE from now on.
    run.child.stdout!.destroy();
    for (let i = 0; i < 20; i++) {
      assert.equal((await request(`http://127.0.0.1:${p}/x${i}`)).status, 200);
      await sleep(10);
    }
    await eventually(async () => sample((await request(`http://127.0.0.1:${a}/metrics`)).body, 'turnpike_access_log_lines_dropped_total', {}) >= 10, 5000);
    const t0 = Date.now();
    run.child.kill('SIGTERM');
    assert.equal(await run.exit, 0, run.stderr());
    const took = Date.now() - t0;
    assert.ok(took < 3000, `exited ${took} ms after SIGTERM: ${run.stderr()}`);
  } finally {
    run.child.kill('SIGKILL');
    await up.close();
  }
});

test('access log: a request the HTTP parser refuses is logged at the time it was refused (it said the process start), in both line writers', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-access-'));
  const mk = (file: string, fields: string) => startGateway(`access_log: {destination: file, path: ${join(dir, file)}${fields}}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  const a = await mk('a.log', '');
  const b = await mk('b.log', ', fields: [time, status, error]');
  try {
    // (well after the process started: the figure it showed instead)
    await sleep(Math.max(0, 1500 - performance.now()));
    const before = Date.now();
    for (const g of [a, b]) assert.match((await rawRequest(g.port, 'GARBAGE\r\n\r\n', 300)).text, /^HTTP\/1\.1 400/);
    const after = Date.now();
    await eventually(() => lines(join(dir, 'a.log')).length === 1 && lines(join(dir, 'b.log')).length === 1);
    for (const f of ['a.log', 'b.log']) {
      const l = lines(join(dir, f))[0]!;
      assert.equal(l.status, 400);
      const at = Date.parse(l.time as string);
      assert.ok(at >= before - 5 && at <= after + 5, `${f}: logged at ${l.time as string}, refused between ${new Date(before).toISOString()} and ${new Date(after).toISOString()}`);
    }
  } finally {
    await a.close();
    await b.close();
    await up.close();
  }
});

test('access log headers: the gateway\'s own refresh marker (X-Turnpike-Refresh, the node\'s internal token on a stale-while-revalidate background refresh) is censored', async () => {
  let n = 0;
  const up = await startUpstream((_q, res) => res.writeHead(200, { 'cache-control': 'max-age=1, stale-while-revalidate=30', etag: `"e${++n}"` }).end(`v${n}`));
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`
access_log: {destination: file, path: ${log}, fields: [path, status, headers]}
services: [{name: app, url: ${up.url}, plugins: [{name: cache}], routes: [{name: r, paths: [/]}]}]
`);
  try {
    assert.equal((await request(`${gw.url}/swr`)).body, 'v1');
    await sleep(1100); // (stale now)
    assert.equal((await request(`${gw.url}/swr`)).body, 'v1', 'the stale entry, refreshed in the background');
    await eventually(() => n === 2 && lines(log).length === 3);
    const refresh = lines(log).find((l) => (l.headers as Record<string, string>)['x-turnpike-refresh'] !== undefined);
    assert.ok(refresh, 'the background refresh is logged');
    assert.equal((refresh.headers as Record<string, string>)['x-turnpike-refresh'], '[REDACTED]');
    assert.ok(!readFileSync(log, 'utf8').includes(gw.gw.caches.refresher.token), 'the token is nowhere in the log');
  } finally {
    await gw.close();
    await up.close();
  }
});

test('access log bytes_out and turnpike_response_bytes_total count the bytes sent with compression on (they counted the body before it was compressed), streamed and whole', async () => {
  const text = 'all work and no play makes jack a dull boy\n'.repeat(2000);
  const up = await startUpstream((req, res) => {
    res.setHeader('content-type', 'text/plain');
    if (req.url === '/stream') {
      res.write(text.slice(0, 40_000)); // (no Content-Length: streamed through the encoder)
      setTimeout(() => res.end(text.slice(40_000)), 20);
    } else res.setHeader('cache-control', 'max-age=60').end(text);
  });
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`admin: {listen: 127.0.0.1:0}
access_log: {destination: file, path: ${log}, fields: [path, status, bytes_out]}
services:
  - name: app
    url: ${up.url}
    routes:
      - {name: streamed, paths: [/stream], plugins: [{name: compression}]}
      - {name: whole, paths: [/whole], plugins: [{name: cache}, {name: compression}]}
`);
  try {
    const sent: number[] = [];
    // (/whole twice: from the upstream, then a whole body from the cache)
    for (const path of ['/stream', '/whole', '/whole']) {
      const { status, encoding, bytes } = await new Promise<{ status: number; encoding: string | undefined; bytes: number }>((resolve, reject) => {
        const r = httpRequest(`${gw.url}${path}`, { headers: { 'accept-encoding': 'gzip' } }, (res) => {
          let n = 0;
          res.on('data', (c: Buffer) => (n += c.length));
          res.on('end', () => resolve({ status: res.statusCode!, encoding: res.headers['content-encoding'], bytes: n }));
        });
        r.on('error', reject);
        r.end();
      });
      assert.equal(status, 200);
      assert.equal(encoding, 'gzip');
      assert.ok(bytes < text.length / 10, `${path}: compressed (${bytes} bytes)`);
      sent.push(bytes);
    }
    await eventually(() => lines(log).length === 3);
    assert.deepEqual(lines(log).map((l) => l.bytes_out), sent, 'bytes_out of /stream, /whole (upstream), /whole (cache)');
    const t = (await request(`${gw.adminUrl}/metrics`)).body;
    assert.equal(sample(t, 'turnpike_response_bytes_total', { route: 'streamed' }), sent[0]);
    assert.equal(sample(t, 'turnpike_response_bytes_total', { route: 'whole' }), sent[1]! + sent[2]!);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('a CONNECT over HTTP/2 (405) is counted and logged, as over HTTP/1.1 (it was neither)', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`admin: {listen: 127.0.0.1:0}
http2: {h2c: true}
access_log: {destination: file, path: ${log}}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  const session = h2connect(gw.url);
  try {
    const status = await new Promise<number>((resolve, reject) => {
      const s = session.request({ ':method': 'CONNECT', ':authority': 'example.com:443', 'x-request-id': 'h2-con-1' });
      s.on('response', (h) => resolve(Number(h[':status'])));
      s.on('error', reject);
      s.resume();
    });
    assert.equal(status, 405);
    await eventually(() => lines(log).length === 1);
    const [l] = lines(log);
    assert.equal(l!.status, 405);
    assert.equal(l!.method, 'CONNECT');
    assert.equal(l!.error, 'method-not-allowed');
    assert.equal(l!.request_id, 'h2-con-1');
    assert.equal(l!.protocol, 'HTTP/2.0');
    const t = (await request(`${gw.adminUrl}/metrics`)).body;
    assert.equal(sample(t, 'turnpike_requests_total', { route: '', method: 'CONNECT', status: '405' }), 1);
  } finally {
    session.close();
    await gw.close();
    await up.close();
  }
});

test('process log: a WebSocket close reason (the client\'s text) holding characters that split a line for other readers or act on a terminal (U+2028, NEL, C1 CSI, bidi) is written as \\u escapes', async () => {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await once(wss, 'listening');
  const out: string[] = [];
  const gw = await Gateway.start(parseConfigText(`listen: 127.0.0.1:0
access_log: {enabled: false}
services: [{name: chat, url: "http://127.0.0.1:${(wss.address() as AddressInfo).port}", routes: [{name: c, paths: [/], websocket: true}]}]
`), { logger: createLogger('info', { write: (l: string) => out.push(l) }) });
  try {
    const ws = new WebSocket(`ws://127.0.0.1:${gw.proxyAddress!.port}/`);
    await once(ws, 'open');
    const reason = 'bye\u2028{"level":60,"msg":"forged"}\u0085\u009b[31m\u202eevil';
    ws.close(4000, reason);
    await once(ws, 'close');
    await eventually(() => out.some((l) => l.includes('websocket closed')));
    const line = out.find((l) => l.includes('websocket closed'))!;
    assert.ok(!/[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/.test(line), JSON.stringify(line));
    assert.equal(line.split(/\r\n|[\n\r\v\f\u001c-\u001e\u0085\u2028\u2029]/).filter(Boolean).length, 1);
    assert.equal((JSON.parse(line) as { ws: { reason: string } }).ws.reason, reason, 'the same JSON');
  } finally {
    await gw.stop();
    await new Promise((r) => wss.close(r));
  }
});

test('analytics: a reload that changes analytics.top_consumers applies it (the first config\'s count was kept silently until a restart)', async () => {
  const up = await startUpstream((_q, res) => res.end('ok'));
  const cfg = (top: number) => `admin: {listen: 127.0.0.1:0}
analytics: {top_consumers: ${top}}
consumers:
${['ann', 'bob', 'cid'].map((c) => `  - {name: ${c}, credentials: [{type: key-auth, key: ${c}-secret-key-0123456789}]}`).join('\n')}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/], plugins: [{name: key-auth}]}]}]
`;
  const gw = await startGateway(cfg(1));
  try {
    gw.gw.reload(parseConfigText(`${cfg(10)}\naccess_log: {enabled: false}\n`));
    for (const c of ['ann', 'bob', 'cid']) assert.equal((await request(`${gw.url}/x`, { headers: { apikey: `${c}-secret-key-0123456789` } })).status, 200);
    const report = JSON.parse((await request(`${gw.adminUrl}/analytics?window=1m`)).body) as { consumers: { consumer: string; requests: number }[] };
    assert.deepEqual(report.consumers.map((c) => c.consumer).sort(), ['ann', 'bob', 'cid']);
  } finally {
    await gw.close();
    await up.close();
  }
});
