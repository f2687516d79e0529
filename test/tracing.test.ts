/** OpenTelemetry tracing: a real OTLP/HTTP receiver, W3C trace context to the upstream, span parentage. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { eventually, freePort, request, sleep, startGateway, startUpstream } from './helpers.js';
import { parseConfigText } from '../src/config/load.js';

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes: { key: string; value: { stringValue?: string; intValue?: string | number } }[];
}
const KIND = { INTERNAL: 1, SERVER: 2, CLIENT: 3 };

/** A minimal OTLP/HTTP (JSON) trace receiver: collects every span it is sent. */
async function startCollector(): Promise<{ url: string; spans: OtlpSpan[]; posts: number; close(): Promise<void> }> {
  const spans: OtlpSpan[] = [];
  const state = { posts: 0 };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      state.posts++;
      assert.equal(req.url, '/v1/traces');
      assert.match(String(req.headers['content-type']), /^application\/json/);
      const body = JSON.parse(Buffer.concat(chunks).toString()) as { resourceSpans: { scopeSpans: { spans: OtlpSpan[] }[] }[] };
      for (const rs of body.resourceSpans) for (const ss of rs.scopeSpans) spans.push(...ss.spans);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/v1/traces`,
    spans,
    get posts() { return state.posts; },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

const attr = (s: OtlpSpan, key: string) => {
  const v = s.attributes.find((a) => a.key === key)?.value;
  return v?.stringValue ?? (v?.intValue !== undefined ? Number(v.intValue) : undefined);
};

test('tracing: the client trace continues through the gateway; spans for the request, a waiting plugin and each upstream attempt', async () => {
  const collector = await startCollector();
  const up = await startUpstream();
  const dead = await freePort();
  // A JWKS endpoint: the jwt plugin's first verification waits for it (a plugin span).
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwks = { keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] };
  const keys = await startUpstream((_q, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks)));
  const token = await new SignJWT({ sub: 'svc-a' }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuedAt().setExpirationTime('5m').sign(privateKey);
  const gw = await startGateway(`
tracing: {enabled: true, endpoint: ${collector.url}, sample: 1, service_name: edge}
services:
  - name: app
    upstream:
      balancer: round-robin
      targets: [{url: "http://127.0.0.1:${dead}"}, {url: ${up.url}}]
    retries: 1
    routes:
      - name: orders
        paths: [/orders]
        plugins: [{name: jwt, config: {jwks_url: ${keys.url}}}]
`);
  try {
    const clientTrace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const clientSpan = '00f067aa0ba902b7';
    const r = await request(`${gw.url}/orders/7`, {
      headers: { authorization: `Bearer ${token}`, traceparent: `00-${clientTrace}-${clientSpan}-01`, tracestate: 'vendor=opaque' },
    });
    assert.equal(r.status, 200);
    // Round robin may try the dead target first: then there are two attempts.
    await eventually(() => collector.spans.some((s) => s.kind === KIND.SERVER), 8000);
    const server = collector.spans.find((s) => s.kind === KIND.SERVER)!;
    assert.equal(server.traceId, clientTrace);
    assert.equal(server.parentSpanId, clientSpan);
    assert.equal(server.name, 'GET /orders', 'semantic conventions: {method} {http.route}');
    // Semantic conventions: http.route is the path template (the name is turnpike.route), server.address has no port.
    assert.equal(attr(server, 'http.route'), '/orders');
    assert.equal(attr(server, 'turnpike.route'), 'orders');
    assert.equal(attr(server, 'server.address'), '127.0.0.1');
    assert.equal(attr(server, 'server.port'), gw.port);
    assert.equal(attr(server, 'url.scheme'), 'http');
    assert.equal(attr(server, 'http.response.status_code'), 200);
    assert.equal(attr(server, 'turnpike.service'), 'app');
    assert.equal(attr(server, 'turnpike.consumer'), 'svc-a');
    const attempts = collector.spans.filter((s) => s.kind === KIND.CLIENT);
    assert.ok(attempts.length >= 1 && attempts.length <= 2, `${attempts.length} attempts`);
    for (const a of attempts) {
      assert.equal(a.traceId, clientTrace);
      assert.equal(a.parentSpanId, server.spanId);
    }
    const last = attempts.find((a) => attr(a, 'http.response.status_code') === 200)!;
    assert.ok(last, 'the answering attempt has its status');
    const plugin = collector.spans.find((s) => s.kind === KIND.INTERNAL)!;
    assert.equal(plugin.name, 'plugin jwt authenticate');
    assert.equal(plugin.parentSpanId, server.spanId);
    // The upstream got the answering attempt's context, and the client's tracestate.
    const seen = up.requests.at(-1)!.headers;
    assert.equal(seen.traceparent, `00-${clientTrace}-${last.spanId}-01`);
    assert.equal(seen.tracestate, 'vendor=opaque');

    // Force a retry: the dead target first (round robin alternates), then the live one.
    collector.spans.length = 0;
    for (let i = 0; i < 2; i++) await request(`${gw.url}/orders/8`, { headers: { authorization: `Bearer ${token}` } });
    await eventually(() => collector.spans.filter((s) => s.kind === KIND.SERVER).length === 2, 8000);
    const retried = collector.spans.filter((s) => s.kind === KIND.CLIENT && attr(s, 'http.request.resend_count') === 1);
    assert.equal(retried.length, 1, 'one request needed a second attempt');
    const failed = collector.spans.find((s) => s.kind === KIND.CLIENT && s.traceId === retried[0]!.traceId && s.spanId !== retried[0]!.spanId)!;
    assert.equal(attr(failed, 'error.type'), 'ECONNREFUSED');
    // A new trace (no client traceparent): the server span is a root.
    assert.equal(collector.spans.find((s) => s.kind === KIND.SERVER)!.parentSpanId ?? '', '');
  } finally {
    await gw.close();
    await Promise.all([up.close(), keys.close(), collector.close()]);
  }
});

test('tracing: sampling 0 records nothing new but propagates a context; a sampled parent is followed; off = transparent', async () => {
  const collector = await startCollector();
  const up = await startUpstream();
  const gw = await startGateway(`
tracing: {enabled: true, endpoint: ${collector.url}, sample: 0}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    await request(`${gw.url}/a`);
    const tp = String(up.requests.at(-1)!.headers.traceparent);
    assert.match(tp, /^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/, 'not sampled, still a context');
    const parent = `00-${'a'.repeat(32)}-${'b'.repeat(16)}-01`;
    await request(`${gw.url}/b`, { headers: { traceparent: parent } });
    assert.match(String(up.requests.at(-1)!.headers.traceparent), new RegExp(`^00-${'a'.repeat(32)}-[0-9a-f]{16}-01$`));
    // A malformed traceparent is not trusted: a new trace starts.
    await request(`${gw.url}/c`, { headers: { traceparent: '00-zz-yy-01' } });
    assert.match(String(up.requests.at(-1)!.headers.traceparent), /^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
    await eventually(() => collector.spans.length >= 2, 8000);
    await sleep(1500);
    assert.deepEqual(new Set(collector.spans.map((s) => s.traceId)), new Set(['a'.repeat(32)]), 'only the sampled parent trace');
  } finally {
    await gw.close();
    await up.close();
  }
  // Tracing off: trace context passes through untouched.
  const up2 = await startUpstream();
  const gw2 = await startGateway(`services: [{name: app, url: ${up2.url}, routes: [{name: r, paths: [/]}]}]\n`);
  try {
    await request(`${gw2.url}/a`, { headers: { traceparent: `00-${'c'.repeat(32)}-${'d'.repeat(16)}-01`, tracestate: 'x=y' } });
    assert.equal(up2.requests.at(-1)!.headers.traceparent, `00-${'c'.repeat(32)}-${'d'.repeat(16)}-01`);
    assert.equal(up2.requests.at(-1)!.headers.tracestate, 'x=y');
  } finally {
    await gw2.close();
    await up2.close();
    await collector.close();
  }
});

test('tracing: a dead collector costs nothing but dropped spans', async () => {
  const up = await startUpstream();
  const port = await freePort();
  const gw = await startGateway(`
tracing: {enabled: true, endpoint: http://127.0.0.1:${port}/v1/traces, sample: 1}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    for (let i = 0; i < 20; i++) assert.equal((await request(`${gw.url}/x`)).status, 200);
  } finally {
    const t0 = Date.now();
    await gw.close();
    assert.ok(Date.now() - t0 < 8000, 'stop is bounded even with spans the collector never took');
    await up.close();
  }
});

test('tracing: a span\'s url.full shows secret query values (API keys, tokens) and session path parameters as REDACTED', async () => {
  const collector = await startCollector();
  const up = await startUpstream();
  const gw = await startGateway(`
tracing: {enabled: true, endpoint: ${collector.url}, sample: 1}
access_log: {enabled: false}
consumers: [{name: c, credentials: [{type: key-auth, key: SUPERSECRETKEY-1234}]}]
services:
  - name: app
    url: ${up.url}
    routes:
      - name: q
        paths: [/q]
        plugins: [{name: key-auth, config: {query: k}}]
`);
  try {
    const r = await request(`${gw.url}/q/x;jsessionid=SESSIONSECRET;v=1?k=SUPERSECRETKEY-1234&a=1&api%6Bey=OTHERSECRET&access_token=TOKENSECRET`);
    assert.equal(r.status, 200, r.body);
    await eventually(() => collector.spans.some((s) => s.kind === KIND.CLIENT) && collector.spans.some((s) => s.kind === KIND.SERVER), 8000);
    const url = String(attr(collector.spans.find((s) => s.kind === KIND.CLIENT)!, 'url.full'));
    assert.match(url, /\/q\/x;jsessionid=REDACTED;v=1\?k=REDACTED&a=1&api%6Bey=REDACTED&access_token=REDACTED$/);
    // (and the session id in a path parameter: url.path)
    assert.equal(attr(collector.spans.find((s) => s.kind === KIND.SERVER)!, 'url.path'), '/q/x;jsessionid=REDACTED;v=1');
    assert.doesNotMatch(JSON.stringify(collector.spans), /SUPERSECRETKEY|OTHERSECRET|TOKENSECRET|SESSIONSECRET/);
  } finally {
    await gw.close();
    await Promise.all([up.close(), collector.close()]);
  }
});

test('tracing: W3C Trace Context edge cases (w3c/trace-context test suite): duplicates, combined and invalid tracestate', async () => {
  const { rawRequest } = await import('./helpers.js');
  const up = await startUpstream();
  const port = await freePort();
  const gw = await startGateway(`
tracing: {enabled: true, endpoint: http://127.0.0.1:${port}/v1/traces, sample: 1}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  const tid = '12345678901234567890123456789012';
  const tp = `00-${tid}-1234567890123456-01`;
  /** What the upstream gets for these header lines: its traceparent and its tracestate lines. */
  const send = async (lines: [string, string][]) => {
    const n = up.requests.length;
    const head = lines.map(([k, v]) => `${k}: ${v}\r\n`).join('');
    const r = await rawRequest(gw.port, `GET /x HTTP/1.1\r\nHost: x\r\n${head}Connection: close\r\n\r\n`);
    assert.match(r.text, /^HTTP\/1\.1 200/);
    assert.equal(up.requests.length, n + 1);
    const raw = up.requests.at(-1)!.rawHeaders;
    const states: string[] = [];
    for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === 'tracestate') states.push(raw[i + 1]!);
    assert.ok(states.length <= 1, `one tracestate at most: ${states.join(' | ')}`);
    const parent = String(up.requests.at(-1)!.headers.traceparent);
    return { traceId: parent.split('-')[1], state: states[0] };
  };
  const member = (i: number) => `k${String(i).padStart(2, '0')}=v`;
  try {
    // traceparent twice: invalid, a new trace starts.
    const dup = await send([['traceparent', `00-${'1'.repeat(32)}-1234567890123456-01`], ['traceparent', tp]]);
    assert.notEqual(dup.traceId, tid);
    assert.notEqual(dup.traceId, '1'.repeat(32));
    // Several tracestate lines are one list, in order (RFC 9110 §5.3).
    const multi = await send([['traceparent', tp], ['tracestate', 'foo=1,bar=2'], ['tracestate', 'rojo=1,congo=2'], ['tracestate', 'baz=3']]);
    assert.equal(multi.traceId, tid);
    assert.equal(multi.state, 'foo=1,bar=2,rojo=1,congo=2,baz=3');
    // Empty lines and empty members are allowed; OWS around members too.
    assert.equal((await send([['traceparent', tp], ['tracestate', ''], ['tracestate', 'foo=1']])).state, 'foo=1');
    assert.equal((await send([['traceparent', tp], ['tracestate', 'foo=1 \t , \t bar=2,, \t baz=3']])).state, 'foo=1,bar=2,baz=3');
    // The longest legal keys, 32 members.
    for (const long of [`${'a'.repeat(256)}=1,b=2`, `${'t'.repeat(241)}@${'s'.repeat(14)}=2,b=2`]) {
      assert.equal((await send([['traceparent', tp], ['tracestate', long]])).state, long);
    }
    const max = Array.from({ length: 32 }, (_, i) => member(i)).join(',');
    assert.equal((await send([['traceparent', tp], ['tracestate', max]])).state, max);
    // Invalid: discarded whole, never repaired, never an empty header.
    const invalid: [string, string][][] = [
      [['tracestate', 'foo=1,foo=1']],
      [['tracestate', 'foo=1'], ['tracestate', 'foo=2']],
      [['tracestate', 'foo@=1,bar=2']],
      [['tracestate', '@foo=1,bar=2']],
      [['tracestate', 'foo@@bar=1,bar=2']],
      [['tracestate', 'foo@bar@baz=1,bar=2']],
      [['tracestate', 'FOO=1,bar=2']],
      [['tracestate', 'foo.bar=1,bar=2']],
      [['tracestate', 'foo=bar=baz,bar=2']],
      [['tracestate', 'foo=,bar=2']],
      [['tracestate', 'bar=2,nonsense']],
      [['tracestate', `${'a'.repeat(257)}=1,bar=2`]],
      [['tracestate', `${'t'.repeat(242)}@s=1,bar=2`]],
      [['tracestate', `t@${'s'.repeat(15)}=1,bar=2`]],
      [['tracestate', `${max},k32=v`]],
      [['tracestate', max], ['tracestate', 'k32=v']],
      [['tracestate', ['a', 'b', 'c'].map((k) => `${k}=${'x'.repeat(200)}`).join(',')]], // > 512 characters
      [['tracestate', ' , ']],
      [['tracestate', 'FOO=1']],
    ];
    for (const lines of invalid) {
      const got = await send([['traceparent', tp], ...lines]);
      assert.equal(got.traceId, tid, 'the traceparent is still followed');
      assert.equal(got.state, undefined, `no tracestate for ${JSON.stringify(lines).slice(0, 120)}`);
    }
  } finally {
    await gw.close();
    await up.close();
  }
});

test('secret query parameters are censored whatever their case (AWS / GCS presigned URLs): access log query and span url.full', async () => {
  const { mkdtempSync, readFileSync, existsSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const collector = await startCollector();
  const up = await startUpstream();
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-access-')), 'a.log');
  const gw = await startGateway(`
tracing: {enabled: true, endpoint: ${collector.url}, sample: 1}
access_log: {destination: file, path: ${log}, fields: [path, query, status], redact: [query.My_Secret]}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    const secrets: Record<string, string> = {
      'X-Amz-Signature': 'SIGAWS1', 'X-Amz-Credential': 'CREDAWS2', 'X-Amz-Security-Token': 'TOKAWS3', AWSAccessKeyId: 'AKIDAWS4',
      Signature: 'SIGLEGACY5', 'X-Goog-Signature': 'SIGGOOG6', 'X-Goog-Credential': 'CREDGOOG7', APIKEY: 'APIKEY8',
      Access_Token: 'ACCESSTOK9', my_secret: 'MINE10',
    };
    const qs = Object.entries(secrets).map(([k, v]) => `${k}=${v}`).join('&') + '&X-Amz-Expires=3600';
    assert.equal((await request(`${gw.url}/bucket/object?${qs}`)).status, 200);
    await eventually(() => existsSync(log) && readFileSync(log, 'utf8').includes('\n'));
    const line = JSON.parse(readFileSync(log, 'utf8').split('\n')[0]!) as { query: Record<string, string> };
    for (const k of Object.keys(secrets)) assert.equal(line.query[k], '[REDACTED]', k);
    assert.equal(line.query['X-Amz-Expires'], '3600');
    await eventually(() => collector.spans.some((s) => s.kind === KIND.CLIENT), 8000);
    const url = String(attr(collector.spans.find((s) => s.kind === KIND.CLIENT)!, 'url.full'));
    for (const k of Object.keys(secrets)) assert.ok(url.includes(`${k}=REDACTED`), `${k} in ${url}`);
    assert.ok(url.endsWith('&X-Amz-Expires=3600'));
    const all = readFileSync(log, 'utf8') + JSON.stringify(collector.spans);
    for (const v of Object.values(secrets)) assert.ok(!all.includes(v), v);
  } finally {
    await gw.close();
    await Promise.all([up.close(), collector.close()]);
  }
});

test('tracing: trust_incoming_sampled: false — a client\'s sampled flag cannot force recording (sample 0 exports nothing)', async () => {
  const collector = await startCollector();
  const up = await startUpstream();
  let gw: Awaited<ReturnType<typeof startGateway>> | undefined;
  try {
    gw = await startGateway(`
tracing: {enabled: true, endpoint: ${collector.url}, sample: 0, trust_incoming_sampled: false}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
    for (let i = 0; i < 5; i++) {
      const tid = String(i + 1).repeat(32);
      await request(`${gw.url}/a`, { headers: { traceparent: `00-${tid}-${'b'.repeat(16)}-01` } });
      // Still the client's trace, but not sampled here.
      assert.match(String(up.requests.at(-1)!.headers.traceparent), new RegExp(`^00-${tid}-[0-9a-f]{16}-00$`));
    }
    await sleep(1500);
    assert.equal(collector.spans.length, 0);
  } finally {
    await gw?.close();
    await Promise.all([up.close(), collector.close()]);
  }
});

test('tracing: a batch the collector refuses is dropped and said once per outage; its return is said', { timeout: 20_000 }, async () => {
  let refuse = true;
  let posts = 0;
  const server: Server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      posts++;
      if (refuse) res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"no"}');
      else res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const up = await startUpstream();
  const g = await startGateway(`
tracing: {enabled: true, endpoint: "http://u:collector-pass@127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces", sample: 1}
services:
  - name: s
    url: ${up.url}
    routes: [{paths: [/]}]
`);
  const log = (g.gw as unknown as { log: { warn: (...a: unknown[]) => void; info: (...a: unknown[]) => void } }).log;
  const said: string[] = [];
  const [warn, info] = [log.warn.bind(log), log.info.bind(log)];
  log.warn = (...a: unknown[]) => { said.push(`warn ${JSON.stringify(a[0])} ${String(a[1])}`); warn(...a); };
  log.info = (...a: unknown[]) => { said.push(`info ${JSON.stringify(a[0])} ${String(a[1])}`); info(...a); };
  try {
    for (let i = 0; i < 3; i++) {
      assert.equal((await request(`${g.url}/x`)).status, 200);
      await sleep(1300); // one batch per second
    }
    await eventually(() => posts >= 3, 8000);
    const refused = said.filter((m) => /did not take a batch/.test(m));
    assert.equal(refused.length, 1, said.join('\n'));
    assert.doesNotMatch(refused[0]!, /collector-pass/);
    refuse = false;
    assert.equal((await request(`${g.url}/x`)).status, 200);
    await eventually(() => said.some((m) => /takes spans again/.test(m)), 8000);
    assert.match(said.find((m) => /takes spans again/.test(m))!, /"dropped_total":[1-9]/);
  } finally {
    await g.close();
    await up.close();
    await new Promise<void>((r) => server.close(() => r()));
  }
});

const semconvGateway = async (extra = '') => {
  const collector = await startCollector();
  const up = await startUpstream((req, res) => res.writeHead(req.url!.startsWith('/missing') ? 404 : req.url!.startsWith('/broken') ? 503 : 200).end('x'));
  const gw = await startGateway(`
tracing: {enabled: true, endpoint: ${collector.url}, sample: 1}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}, {name: keyed, paths: [/keyed], plugins: [{name: key-auth}]}]}]
${extra}`);
  const spans = async (path: string, method = 'GET', n = 2) => {
    collector.spans.length = 0;
    await request(`${gw.url}${path}`, { method });
    await eventually(() => collector.spans.filter((s) => s.kind !== KIND.INTERNAL).length >= n, 8000);
    type S = OtlpSpan & { status?: { code?: number } };
    return { server: collector.spans.find((s) => s.kind === KIND.SERVER)! as S, client: collector.spans.find((s) => s.kind === KIND.CLIENT)! as S };
  };
  return { up, spans, close: async () => { await gw.close(); await Promise.all([up.close(), collector.close()]); } };
};

test('tracing: HTTP semantic conventions: a method they do not know is _OTHER, the method sent in http.request.method_original, the span name says HTTP', async () => {
  const t = await semconvGateway();
  try {
    const { server, client } = await t.spans('/x', 'PURGE');
    for (const s of [server, client]) {
      assert.equal(attr(s, 'http.request.method'), '_OTHER');
      assert.equal(attr(s, 'http.request.method_original'), 'PURGE');
    }
    assert.equal(server.name, 'HTTP /');
    assert.equal(client.name, 'HTTP');
    assert.equal(t.up.requests.at(-1)!.method, 'PURGE', 'the request goes on as sent');
    const get = await t.spans('/x');
    assert.equal(attr(get.server, 'http.request.method'), 'GET');
    assert.equal(attr(get.server, 'http.request.method_original'), undefined);
    assert.equal(get.server.name, 'GET /');
    assert.equal(get.client.name, 'GET');
  } finally {
    await t.close();
  }
});

test('tracing: span status per HTTP semantic conventions: a CLIENT span is an error on 4xx and 5xx (error.type the status); a SERVER span only on 5xx, no error.type for a 4xx', async () => {
  const t = await semconvGateway();
  try {
    const { server, client } = await t.spans('/missing');
    assert.equal(attr(client, 'http.response.status_code'), 404);
    assert.equal(client.status?.code, 2, 'a CLIENT span with a 4xx answer is an error');
    assert.equal(attr(client, 'error.type'), '404');
    assert.equal(attr(server, 'http.response.status_code'), 404);
    assert.notEqual(server.status?.code, 2, 'a SERVER span with a 4xx answer is not an error');
    assert.equal(attr(server, 'error.type'), undefined);
    // The gateway's own 4xx (no key: 401): not an error of the server either.
    const own = await t.spans('/keyed', 'GET', 1);
    assert.equal(attr(own.server, 'http.response.status_code'), 401);
    assert.notEqual(own.server.status?.code, 2);
    assert.equal(attr(own.server, 'error.type'), undefined);
    const broken = await t.spans('/broken');
    assert.equal(broken.client.status?.code, 2);
    assert.equal(attr(broken.client, 'error.type'), '503');
    assert.equal(broken.server.status?.code, 2);
    assert.equal(attr(broken.server, 'error.type'), '503');
    const ok = await t.spans('/fine');
    assert.notEqual(ok.client.status?.code, 2);
    assert.equal(attr(ok.client, 'error.type'), undefined);
  } finally {
    await t.close();
  }
});

test('tracing: a WebSocket handshake goes upstream with the trace context (the client\'s trace, the gateway\'s span as parent; tracestate kept)', async () => {
  const { WebSocket, WebSocketServer } = await import('ws');
  const collector = await startCollector();
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  const handshakes: { traceparent?: string; tracestate?: string }[] = [];
  wss.on('connection', (ws, req) => {
    handshakes.push({ traceparent: req.headers.traceparent as string | undefined, tracestate: req.headers.tracestate as string | undefined });
    ws.on('message', (d) => ws.send(d));
  });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const port = (wss.address() as AddressInfo).port;
  const gw = await startGateway(`
tracing: {enabled: true, endpoint: ${collector.url}, sample: 1}
services: [{name: chat, url: http://127.0.0.1:${port}, routes: [{name: ws, paths: [/ws], websocket: true}]}]
`);
  try {
    const clientTrace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const ws = new WebSocket(`ws://127.0.0.1:${gw.port}/ws`, { headers: { traceparent: `00-${clientTrace}-00f067aa0ba902b7-01`, tracestate: 'vendor=opaque' } });
    await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
    const echoed = new Promise<string>((r) => ws.once('message', (d) => r(String(d))));
    ws.send('hi');
    assert.equal(await echoed, 'hi');
    ws.close();
    assert.equal(handshakes.length, 1);
    const tp = handshakes[0]!.traceparent;
    assert.match(String(tp), new RegExp(`^00-${clientTrace}-[0-9a-f]{16}-01$`), 'the handshake carries the client\'s trace');
    assert.notEqual(tp!.split('-')[2], '00f067aa0ba902b7', 'with the gateway\'s span as parent');
    assert.equal(handshakes[0]!.tracestate, 'vendor=opaque');
    await eventually(() => collector.spans.some((s) => s.kind === KIND.SERVER), 8000);
    const server = collector.spans.find((s) => s.kind === KIND.SERVER)!;
    assert.equal(server.traceId, clientTrace);
    assert.ok(collector.spans.some((s) => s.spanId === tp!.split('-')[2]), 'the parent named upstream is an exported span');
  } finally {
    await gw.close();
    await new Promise<void>((r) => { for (const c of wss.clients) c.terminate(); wss.close(() => r()); });
    await collector.close();
  }
});

test('tracing: a composition\'s steps (a service and an external URL) go out with the request\'s trace context, each attempt a CLIENT span of the request', async () => {
  const collector = await startCollector();
  const seen: { path: string; traceparent?: string }[] = [];
  const up = await startUpstream((q, res) => {
    seen.push({ path: q.url!, traceparent: q.headers.traceparent as string | undefined });
    res.writeHead(200, { 'content-type': 'application/json' }).end(q.url!.startsWith('/users') ? '{"tier":"gold"}' : '{"n":1}');
  });
  const gw = await startGateway(`
tracing: {enabled: true, endpoint: ${collector.url}, sample: 1}
services: [{name: users, url: ${up.url}}]
routes:
  - name: profile
    paths: ["/profile/{id}"]
    compose:
      steps:
        - {name: user, service: users, path: "/users/{id}", headers: {traceparent: "00-11111111111111111111111111111111-2222222222222222-01"}}
        - {name: ext, url: "${up.url}/ext", query: {tier: "{user.body.tier}"}}
`);
  try {
    const clientTrace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const r = await request(`${gw.url}/profile/7`, { headers: { traceparent: `00-${clientTrace}-00f067aa0ba902b7-01` } });
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(seen.map((x) => x.path), ['/users/7', '/ext?tier=gold']);
    for (const x of seen) assert.match(String(x.traceparent), new RegExp(`^00-${clientTrace}-[0-9a-f]{16}-01$`), `${x.path} carries the client's trace (a templated traceparent gives way)`);
    await eventually(() => collector.spans.filter((s) => s.kind === KIND.CLIENT).length === 2 && collector.spans.some((s) => s.kind === KIND.SERVER), 8000);
    const server = collector.spans.find((s) => s.kind === KIND.SERVER)!;
    const clients = collector.spans.filter((s) => s.kind === KIND.CLIENT);
    for (const [i, c] of clients.entries()) {
      assert.equal(c.traceId, clientTrace);
      assert.equal(c.parentSpanId, server.spanId, 'a step attempt is a child of the request\'s span');
      assert.ok(seen.some((x) => x.traceparent!.split('-')[2] === c.spanId), `span ${i} is the parent named to a step`);
      assert.equal(attr(c, 'http.response.status_code'), 200);
    }
  } finally {
    await gw.close();
    await up.close();
    await collector.close();
  }
});

test('tracing: the SERVER span has url.query when one was sent (semantic conventions: Conditionally Required), secret values REDACTED', async () => {
  const t = await semconvGateway();
  try {
    const { server } = await t.spans('/x?a=1&api_key=SUPERSECRET&X-Amz-Signature=SIG2&b=%20');
    assert.equal(attr(server, 'url.path'), '/x');
    assert.equal(attr(server, 'url.query'), 'a=1&api_key=REDACTED&X-Amz-Signature=REDACTED&b=%20');
    assert.doesNotMatch(JSON.stringify(server), /SUPERSECRET|SIG2/);
    // `;` separates parameters to Rack < 3 and Python's old parse_qs: a key after one is a secret too
    const semi = await t.spans('/x?a=1;api_key=SEMISECRET;b=2&c=3;X-Amz-Signature=SIG3');
    assert.equal(attr(semi.server, 'url.query'), 'a=1;api_key=REDACTED;b=2&c=3;X-Amz-Signature=REDACTED');
    assert.doesNotMatch(JSON.stringify(semi), /SEMISECRET|SIG3/);
    const plain = await t.spans('/x');
    assert.equal(attr(plain.server, 'url.query'), undefined);
  } finally {
    await t.close();
  }
});

test('tracing: a long path or query is cut at 4096 characters in every span attribute (a client\'s 60 kB URL was a 60 kB url.path, url.query and url.full each)', async () => {
  const t = await semconvGateway('limits: {max_uri_length: 64kb}');
  try {
    const long = `/p${'a'.repeat(30_000)}`;
    const { server, client } = await t.spans(`${long}?q=${'b'.repeat(30_000)}`);
    assert.equal(attr(server, 'url.path'), long.slice(0, 4096));
    assert.equal(attr(server, 'url.query'), `q=${'b'.repeat(4094)}`);
    assert.equal(String(attr(client, 'url.full')).length, 4096);
    for (const s of [server, client]) for (const a of s.attributes) assert.ok(String(a.value.stringValue ?? '').length <= 4096, a.key);
  } finally {
    await t.close();
  }
});

test('tracing: a reload that turns tracing off while a traced request\'s plugins wait: the request carries on (it was a 500, the next waiting phase found no tracer)', async () => {
  const collector = await startCollector();
  // The IdP holds its answer until the reload is done; the validator then waits for the body.
  let answer: (() => void) | undefined;
  const idp = await startUpstream((_q, res) => { answer = () => res.writeHead(200, { 'content-type': 'application/json' }).end('{"active":true,"client_id":"c"}'); });
  const up = await startUpstream((_q, res) => res.end('ok'));
  const cfg = (on: boolean) => `tracing: {enabled: ${on}, endpoint: ${collector.url}, sample: 1}
services:
  - name: s
    url: ${up.url}
    routes: [{name: r, paths: [/]}]
    plugins:
      - {name: oauth2-introspection, config: {introspection_url: "${idp.url}/introspect", client_id: a, client_secret: b}}
      - {name: request-validator, config: {body_schema: {type: object}}}
`;
  const g = await startGateway(cfg(true));
  const sock = connect(g.port, '127.0.0.1');
  let got = '';
  sock.on('data', (d: Buffer) => (got += d.toString()));
  sock.on('error', () => {});
  try {
    sock.write('POST /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n');
    await eventually(() => answer !== undefined);
    g.gw.reload(parseConfigText(`${cfg(false)}\naccess_log: {enabled: false}\n`));
    answer!();
    await sleep(200); // (the validator's phase starts, waiting for the body)
    assert.equal(got, '', 'nothing answered before the body');
    sock.write('{}');
    await eventually(() => got.includes('\r\n\r\n'), 3000);
    assert.match(got, /^HTTP\/1\.1 200/);
    assert.equal(up.requests.length, 1);
    assert.ok(up.requests[0]!.headers.traceparent, 'the upstream still gets the request\'s trace context');
  } finally {
    sock.destroy();
    await g.close();
    await up.close();
    await idp.close();
    await collector.close();
  }
});

test('tracing: trust_incoming_sampled: false — a trace id the client chose does not steer the ratio (000...001 was recorded every time at sample 0.01)', async () => {
  const up = await startUpstream();
  const collector = await startCollector(); // (the sampled flag sent upstream tells the verdict)
  const gw = await startGateway(`
tracing: {enabled: true, endpoint: ${collector.url}, sample: 0.01, trust_incoming_sampled: false}
services: [{name: app, url: ${up.url}, routes: [{name: r, paths: [/]}]}]
`);
  try {
    // Trace ids whose 32-bit words XOR to 0 or 1: below any ratio's bound for TraceIdRatioBasedSampler.
    const ids = ['00000000000000000000000000000001', '1'.repeat(32), 'deadbeefdeadbeef0000000000000001'];
    let sampled = 0;
    const n = 40;
    for (let i = 0; i < n; i++) {
      const tid = ids[i % ids.length]!;
      await request(`${gw.url}/a`, { headers: { traceparent: `00-${tid}-${'b'.repeat(16)}-${i % 2 ? '01' : '00'}` } });
      const sent = String(up.requests.at(-1)!.headers.traceparent);
      assert.match(sent, new RegExp(`^00-${tid}-[0-9a-f]{16}-0[01]$`), 'still the client\'s trace');
      if (sent.endsWith('-01')) sampled++;
    }
    // 1% of 40: more than 6 is a chance below one in ten million.
    assert.ok(sampled <= 6, `${sampled} of ${n} recorded at sample 0.01`);
  } finally {
    await gw.close();
    await Promise.all([up.close(), collector.close()]);
  }
});
