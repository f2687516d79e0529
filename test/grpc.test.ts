/** gRPC through the gateway (h2c and TLS downstream, h2c and TLS upstream) and gRPC-Web translation. */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { connect as h2connect, createServer as createH2Server, constants as h2constants } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createHttpsServer } from 'node:https';
import { eventually, promValue, request, startGateway, type TestGateway } from './helpers.js';
import { makeCa, type TestCa } from './certs.js';
import { H2_CANCEL, H2_ENHANCE_YOUR_CALM, H2_INTERNAL_ERROR, H2_PROTOCOL_ERROR, H2_REFUSED_STREAM, startRawH2Origin, type RawH2Stream } from './h2-raw-origin.js';
import {
  startGrpcServer, echoClient, sayP, sumP, chatP, collect, metadata, jsonFrame, parseFrames, parseTrailerBlock, deserializeJson,
  type GrpcTestServer, type EchoClient,
} from './grpc-fixture.js';

let ca: TestCa;
let plain: GrpcTestServer;
let secure: GrpcTestServer;
let gw: TestGateway;
before(async () => {
  ca = makeCa();
  const leaf = ca.issue('grpc.test', { dns: ['grpc.test', '127.0.0.1'] });
  const edge = ca.issue('edge.test');
  plain = await startGrpcServer();
  secure = await startGrpcServer({ tls: { cert: leaf.cert, key: leaf.key } });
  gw = await startGateway(`
admin: {listen: 127.0.0.1:0}
http2: {h2c: true}
listen_tls: 127.0.0.1:0
tls: {certificates: [{hosts: [edge.test], cert: ${edge.certFile}, key: ${edge.keyFile}}]}
services:
  - name: echo
    url: http://127.0.0.1:${plain.port}
    protocol: grpc
    timeouts: {response: 5s}
    routes: [{paths: [/test.Echo]}]
  - name: echo-tls
    url: https://127.0.0.1:${secure.port}
    protocol: grpcs
    tls: {ca: ${ca.certFile}, server_name: grpc.test}
    routes: [{paths: [/test.Echo], hosts: [secure.test]}]
  - name: down
    url: http://127.0.0.1:1
    protocol: grpc
    routes: [{paths: [/test.Echo], hosts: [down.test]}]
`);
});
after(async () => {
  await gw.close();
  await plain.close();
  await secure.close();
  ca.cleanup();
});

function clients(): { name: string; client: EchoClient }[] {
  return [
    { name: 'h2c', client: echoClient(`127.0.0.1:${gw.port}`) },
    { name: 'TLS', client: echoClient(`127.0.0.1:${gw.gw.tlsAddress!.port}`, { tls: { ca: ca.cert, servername: 'edge.test' } }) },
  ];
}

test('unary, server-streaming, client-streaming and bidi calls through the gateway, h2c and TLS, with status, details and trailers intact', async () => {
  for (const { name, client } of clients()) {
    try {
      const r = await sayP(client, 'hi', metadata({ 'x-request-id': `req-${name}` }));
      assert.equal(r.text, 'hi', name);
      assert.equal(r.metadata['x-request-id'], `req-${name}`);
      assert.equal(r.metadata['x-forwarded-for'], '127.0.0.1');

      await assert.rejects(sayP(client, 'fail'), (e: grpc.ServiceError) => {
        assert.equal(e.code, grpc.status.INVALID_ARGUMENT, name);
        assert.equal(e.details, 'bad text');
        assert.deepEqual(e.metadata.get('x-detail'), ['why']);
        return true;
      });

      const counted = await collect(client.Count({ n: 5, delayMs: 5 }));
      assert.deepEqual(counted.messages.map((m) => m.i), [0, 1, 2, 3, 4]);
      assert.equal(counted.status.code, grpc.status.OK);
      assert.deepEqual(counted.status.metadata.get('x-total'), ['5'], 'trailing metadata after a stream');

      const aborted = await collect(client.Count({ n: 5, failAfter: 2 }));
      assert.equal(aborted.messages.length, 2);
      assert.equal(aborted.status.code, grpc.status.ABORTED);

      assert.equal((await sumP(client, [1, 2, 3, 4])).sum, 10);
      const chat = await chatP(client, ['a', 'b', 'c']);
      assert.deepEqual(chat.messages.map((m) => m.text), ['echo:a', 'echo:b', 'echo:c']);
      assert.equal(chat.status.code, grpc.status.OK);
    } finally {
      client.close();
    }
  }
  // Every call's grpc-status (from the trailers, or a Trailers-Only answer) is counted: per client
  // OK x4 (say, count, sum, chat), INVALID_ARGUMENT x1, ABORTED x1.
  const t = (await request(`${gw.adminUrl}/metrics`)).body;
  const grpcCount = (code: string) => promValue(t, 'turnpike_grpc_responses_total', { service: 'echo', grpc_status: code });
  assert.deepEqual([grpcCount('0'), grpcCount('3'), grpcCount('10')], [8, 2, 2]);
});

test('grpcs upstream (TLS verified with tls.ca) and gateway errors in gRPC terms (UNAVAILABLE, UNIMPLEMENTED)', async () => {
  const client = echoClient(`127.0.0.1:${gw.port}`);
  try {
    const viaTls = new (client.constructor as new (a: string, c: grpc.ChannelCredentials, o: object) => EchoClient)(`127.0.0.1:${gw.port}`, grpc.credentials.createInsecure(), { 'grpc.default_authority': 'secure.test' });
    try {
      assert.equal((await sayP(viaTls, 'over tls')).text, 'over tls');
    } finally {
      viaTls.close();
    }
    const down = new (client.constructor as new (a: string, c: grpc.ChannelCredentials, o: object) => EchoClient)(`127.0.0.1:${gw.port}`, grpc.credentials.createInsecure(), { 'grpc.default_authority': 'down.test' });
    try {
      await assert.rejects(sayP(down, 'x'), (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE && /unreachable/.test(e.details));
    } finally {
      down.close();
    }
    // A method no route serves.
    const other = await new Promise<{ status: number; headers: Record<string, unknown> }>((resolve, reject) => {
      const c = h2connect(`http://127.0.0.1:${gw.port}`);
      const s = c.request({ ':method': 'POST', ':path': '/other.Service/Nope', 'content-type': 'application/grpc', te: 'trailers' });
      s.on('response', (h) => {
        resolve({ status: Number(h[':status']), headers: h });
        c.close();
      });
      s.on('error', reject);
      s.end(jsonFrame({}));
    });
    assert.equal(other.status, 200);
    assert.equal(other.headers['grpc-status'], String(grpc.status.UNIMPLEMENTED));
    // The gateway's own gRPC answers are counted by their grpc-status too.
    const t = (await request(`${gw.adminUrl}/metrics`)).body;
    assert.equal(promValue(t, 'turnpike_grpc_responses_total', { service: 'down', grpc_status: String(grpc.status.UNAVAILABLE) }), 1);
    assert.equal(promValue(t, 'turnpike_grpc_responses_total', { service: '', grpc_status: String(grpc.status.UNIMPLEMENTED) }), 1);
  } finally {
    client.close();
  }
});

test('deadlines: grpc-timeout bounds the upstream call (DEADLINE_EXCEEDED, upstream call cancelled)', async () => {
  const client = echoClient(`127.0.0.1:${gw.port}`);
  try {
    const started = Date.now();
    await assert.rejects(sayP(client, 'sleep:2000', new grpc.Metadata(), { deadline: Date.now() + 200 }), (e: grpc.ServiceError) => e.code === grpc.status.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - started < 1500);
    const r = await sayP(client, 'sleep:10', new grpc.Metadata(), { deadline: Date.now() + 3000 });
    assert.equal(r.metadata.deadline, true, 'grpc-timeout reaches the upstream');
    const until = Date.now() + 3000;
    while (!plain.cancelled.includes('Say') && Date.now() < until) await new Promise((res) => setTimeout(res, 50));
    assert.ok(plain.cancelled.includes('Say'), 'the upstream saw the call cancelled');
  } finally {
    client.close();
  }
});

/** A gRPC-Web call over HTTP/1.1 as a browser library makes it. */
function grpcWeb(path: string, body: Buffer, text: boolean): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const payload = text ? Buffer.from(body.toString('base64')) : body;
    const r = httpRequest(`http://127.0.0.1:${gw.port}${path}`, {
      method: 'POST',
      agent: false,
      headers: { 'content-type': text ? 'application/grpc-web-text' : 'application/grpc-web+proto', 'x-grpc-web': '1', 'content-length': payload.length },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const raw = Buffer.concat(chunks);
        // grpc-web-text: one padded base64 run per flush; Buffer's decoder stops at the first '='.
        const decoded = text ? Buffer.concat((raw.toString().match(/[A-Za-z0-9+/]+={0,2}/g) ?? []).map((run) => Buffer.from(run, 'base64'))) : raw;
        resolve({ status: res.statusCode!, headers: res.headers, body: decoded });
      });
    });
    r.on('error', reject);
    r.end(payload);
  });
}

test('gRPC-Web (binary and text) over HTTP/1.1 is translated to gRPC: messages, then a trailer frame with the status', async () => {
  for (const text of [false, true]) {
    const r = await grpcWeb('/test.Echo/Say', jsonFrame({ text: 'web' }), text);
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], text ? 'application/grpc-web-text' : 'application/grpc-web+proto');
    const frames = parseFrames(r.body);
    assert.equal(frames.length, 2, `a message and the trailers (text: ${text})`);
    assert.equal(deserializeJson(frames[0]!.payload).text, 'web');
    assert.equal(frames[1]!.flag & 0x80, 0x80);
    assert.equal(parseTrailerBlock(frames[1]!.payload)['grpc-status'], '0');

    const stream = await grpcWeb('/test.Echo/Count', jsonFrame({ n: 3 }), text);
    const sf = parseFrames(stream.body);
    assert.deepEqual(sf.slice(0, 3).map((f) => deserializeJson(f.payload).i), [0, 1, 2]);
    assert.equal(parseTrailerBlock(sf[3]!.payload)['x-total'], '3');

    const failed = await grpcWeb('/test.Echo/Say', jsonFrame({ text: 'fail' }), text);
    // trailers-only: the status is in the headers
    assert.equal(failed.headers['grpc-status'], '3');
    assert.equal(failed.headers['grpc-message'], 'bad%20text');
  }
});

test('gRPC-Web-text with a body that is not base64: INVALID_ARGUMENT (the client\'s fault, not the upstream\'s), the next call goes through', async () => {
  for (let i = 0; i < 3; i++) {
    const r = await new Promise<{ status: number; headers: Record<string, unknown> }>((resolve, reject) => {
      const q = httpRequest(`http://127.0.0.1:${gw.port}/test.Echo/Say`, {
        method: 'POST', agent: false,
        headers: { 'content-type': 'application/grpc-web-text', 'x-grpc-web': '1', 'content-length': 8 },
      }, (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers }));
      });
      q.on('error', reject);
      q.end('!!!!!!!!');
    });
    assert.equal(r.status, 200);
    assert.equal(r.headers['grpc-status'], '3', JSON.stringify(r.headers));
  }
  const ok = await grpcWeb('/test.Echo/Say', jsonFrame({ text: 'after' }), true);
  assert.equal(parseTrailerBlock(parseFrames(ok.body)[1]!.payload)['grpc-status'], '0');
});

test('deadlines: grpc-timeout bounds a streamed response too, even from an upstream that ignores it: DEADLINE_EXCEEDED trailers, the upstream stream cancelled', async () => {
  // An upstream that streams a message every 200 ms and never looks at grpc-timeout.
  let cancelled = false;
  const lax = createH2Server((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/grpc' });
    let i = 0;
    const t = setInterval(() => {
      if (i === 20) {
        clearInterval(t);
        res.addTrailers({ 'grpc-status': '0' });
        res.end();
        return;
      }
      res.write(jsonFrame({ i: i++ }));
    }, 200);
    res.on('close', () => { clearInterval(t); if (i < 20) cancelled = true; });
  });
  await new Promise<void>((r) => lax.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: lax, url: 'http://127.0.0.1:${(lax.address() as AddressInfo).port}', protocol: grpc, routes: [{paths: [/lax.Svc]}]}
`);
  const c = h2connect(`http://127.0.0.1:${g.port}`);
  try {
    const started = Date.now();
    const s = c.request({ ':method': 'POST', ':path': '/lax.Svc/Stream', 'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': '500m' });
    const got = await new Promise<{ trailers: Record<string, unknown>; frames: number }>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let trailers: Record<string, unknown> = {};
      s.on('trailers', (t) => { trailers = t; });
      s.on('data', (d: Buffer) => chunks.push(d));
      s.on('end', () => resolve({ trailers, frames: parseFrames(Buffer.concat(chunks)).length }));
      s.on('error', reject);
      // (this client sends grpc-timeout but never cancels on its own)
      s.end(jsonFrame({}));
    });
    const took = Date.now() - started;
    assert.equal(got.trailers['grpc-status'], '4', JSON.stringify(got.trailers));
    assert.ok(took < 1500, `ended after ${took} ms`);
    assert.ok(got.frames >= 1 && got.frames < 20, `${got.frames} messages before the deadline`);
    const until = Date.now() + 3000;
    while (!cancelled && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    assert.ok(cancelled, 'the upstream stream was cancelled');
  } finally {
    c.close();
    await g.close();
    await new Promise((r) => lax.close(r));
  }
});

test('deadlines: a grpc-timeout that runs out before the upstream answers is the client\'s deadline, not the target\'s failure: no circuit opened, no target ejected', async () => {
  const g = await startGateway(`
http2: {h2c: true}
services:
  - name: slowish
    upstream:
      targets: [{url: 'http://127.0.0.1:${plain.port}'}]
      healthcheck: {passive: {failures: 2, ejection: 30s}}
    protocol: grpc
    timeouts: {response: 5s}
    circuit_breaker: {failure_ratio: 0.5, min_requests: 2, open_for: 30s}
    routes: [{paths: [/test.Echo]}]
`);
  const client = echoClient(`127.0.0.1:${g.port}`);
  try {
    // Calls whose own deadline (100 ms) is shorter than the upstream's work (1 s).
    for (let i = 0; i < 4; i++) {
      await assert.rejects(sayP(client, 'sleep:1000', new grpc.Metadata(), { deadline: Date.now() + 100 }), (e: grpc.ServiceError) => e.code === grpc.status.DEADLINE_EXCEEDED);
    }
    // The upstream is fine: the next call, with time enough, goes through.
    const r = await sayP(client, 'after', new grpc.Metadata(), { deadline: Date.now() + 5000 });
    assert.equal(r.text, 'after');
  } finally {
    client.close();
    await g.close();
  }
});

test('deadlines: a grpc-timeout longer than a timer can hold (past 24.8 days: 1000H, 3600000S) does not end a streamed call at once', async () => {
  // (a raw HTTP/2 upstream: grpc-js 1.14 itself fails deadlines that far out)
  const streamer = createH2Server((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/grpc' });
    let i = 0;
    const t = setInterval(() => {
      if (i === 3) {
        clearInterval(t);
        res.addTrailers({ 'grpc-status': '0' });
        res.end();
        return;
      }
      res.write(jsonFrame({ i: i++ }));
    }, 50);
    res.on('close', () => clearInterval(t));
  });
  await new Promise<void>((r) => streamer.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: streamer, url: 'http://127.0.0.1:${(streamer.address() as AddressInfo).port}', protocol: grpc, routes: [{paths: [/s.Svc]}]}
`);
  const c = h2connect(`http://127.0.0.1:${g.port}`);
  try {
    for (const timeout of ['1000H', '3600000S']) {
      const s = c.request({ ':method': 'POST', ':path': '/s.Svc/Stream', 'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': timeout });
      const got = await new Promise<{ trailers: Record<string, unknown>; frames: number }>((resolve, reject) => {
        const chunks: Buffer[] = [];
        let trailers: Record<string, unknown> = {};
        s.on('trailers', (t) => { trailers = t; });
        s.on('data', (d: Buffer) => chunks.push(d));
        s.on('end', () => resolve({ trailers, frames: parseFrames(Buffer.concat(chunks)).length }));
        s.on('error', reject);
        s.end(jsonFrame({}));
      });
      assert.equal(got.trailers['grpc-status'], '0', `${timeout}: ${JSON.stringify(got.trailers)}`);
      assert.equal(got.frames, 3);
    }
  } finally {
    c.close();
    await g.close();
    await new Promise((r) => streamer.close(r));
  }
});

test('gateway errors are in gRPC terms whatever the case of the content type (media types are case-insensitive): Application/GRPC, application/gRPC-Web-Text', async () => {
  const c = h2connect(`http://127.0.0.1:${gw.port}`);
  try {
    for (const [ct, web] of [['Application/GRPC', null], ['application/gRPC+proto', null], ['application/gRPC-Web-Text', 'application/grpc-web-text']] as const) {
      const s = c.request({ ':method': 'POST', ':path': '/no.Such/Method', 'content-type': ct, te: 'trailers' });
      const headers = await new Promise<Record<string, unknown>>((resolve, reject) => {
        let h: Record<string, unknown> = {};
        s.on('response', (x) => { h = x; });
        s.on('close', () => resolve(h));
        s.on('error', reject);
        s.resume();
        s.end(jsonFrame({}));
      });
      assert.equal(headers[':status'], 200, ct);
      assert.equal(headers['grpc-status'], '12', `${ct}: ${JSON.stringify(headers)}`);
      assert.equal(headers['content-type'], web ?? 'application/grpc');
    }
  } finally {
    c.close();
  }
});

test('gRPC-Web with the cors plugin: every answer a page gets (the upstream\'s, an auth plugin\'s UNAUTHENTICATED, the gateway\'s UNAVAILABLE) carries Access-Control-Allow-Origin and exposes grpc-status / grpc-message', async () => {
  const g = await startGateway(`
consumers: [{name: a, credentials: [{type: key-auth, key: secretkey1}]}]
services:
  - name: echo
    url: http://127.0.0.1:${plain.port}
    protocol: grpc
    plugins: [{name: cors, config: {origins: ['https://app.example'], exposed_headers: [X-Total]}}]
    routes:
      - {paths: [/test.Echo], hosts: [auth.test], plugins: [{name: key-auth}]}
      - {paths: [/test.Echo]}
  - name: down
    url: http://127.0.0.1:1
    protocol: grpc
    plugins: [{name: cors, config: {origins: ['https://app.example']}}]
    routes: [{paths: [/test.Echo], hosts: [down.test]}]
`);
  const call = (host: string, text: string) => new Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }>((resolve, reject) => {
    const body = jsonFrame({ text });
    const r = httpRequest(`http://127.0.0.1:${g.port}/test.Echo/Say`, {
      method: 'POST', agent: false,
      headers: { host, origin: 'https://app.example', 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', 'content-length': body.length },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    r.on('error', reject);
    r.end(body);
  });
  const exposed = (h: Record<string, string | string[] | undefined>) => String(h['access-control-expose-headers'] ?? '').toLowerCase().split(/\s*,\s*/);
  try {
    for (const [host, text, status] of [['x.test', 'hi', '0'], ['x.test', 'fail', '3'], ['auth.test', 'hi', '16'], ['down.test', 'hi', '14']] as const) {
      const r = await call(host, text);
      const what = `${host} ${text}: ${JSON.stringify(r.headers)}`;
      assert.equal(r.status, 200, what);
      assert.equal(r.headers['access-control-allow-origin'], 'https://app.example', what);
      assert.ok(exposed(r.headers).includes('grpc-status') && exposed(r.headers).includes('grpc-message'), what);
      if (host === 'x.test' && text === 'hi') {
        assert.ok(exposed(r.headers).includes('x-total'), 'the configured ones stay');
        assert.equal(parseTrailerBlock(parseFrames(r.body).at(-1)!.payload)['grpc-status'], status);
      } else assert.equal(r.headers['grpc-status'], status, what); // Trailers-Only: the status is in the headers
    }
    assert.equal((await call('auth.test', 'hi')).headers['www-authenticate'], 'Key realm="turnpike"', 'the auth challenge is kept too');
  } finally {
    await g.close();
  }
});

test('gateway errors stay in gRPC terms on a gRPC service with response-phase plugins (cache): UNAVAILABLE as Trailers-Only, not a problem+json 502', async () => {
  const g = await startGateway(`
http2: {h2c: true}
services:
  - name: down
    url: http://127.0.0.1:1
    protocol: grpc
    plugins: [{name: cache}]
    routes: [{paths: [/test.Echo]}]
`);
  const c = h2connect(`http://127.0.0.1:${g.port}`);
  try {
    const s = c.request({ ':method': 'POST', ':path': '/test.Echo/Say', 'content-type': 'application/grpc', te: 'trailers' });
    const headers = await new Promise<Record<string, unknown>>((resolve, reject) => {
      let h: Record<string, unknown> = {};
      s.on('response', (x) => { h = x; });
      s.on('close', () => resolve(h));
      s.on('error', reject);
      s.resume();
      s.end(jsonFrame({ text: 'hi' }));
    });
    assert.equal(headers[':status'], 200, JSON.stringify(headers));
    assert.equal(headers['content-type'], 'application/grpc');
    assert.equal(headers['grpc-status'], '14', JSON.stringify(headers));
  } finally {
    c.close();
    await g.close();
  }
});

test('gateway errors stay in gRPC terms for a gRPC call (content-type application/grpc) to a service not declared gRPC (protocol: h2c) with response-phase plugins: grpc-js reads the gateway\'s UNAVAILABLE and its words, not a 502 problem+json', async () => {
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: generic, url: 'http://127.0.0.1:1', protocol: h2c, plugins: [{name: cache}], routes: [{paths: [/test.Echo]}]}
`);
  const client = echoClient(`127.0.0.1:${g.port}`);
  try {
    await assert.rejects(sayP(client, 'hi'), (e: grpc.ServiceError) => {
      assert.equal(e.code, grpc.status.UNAVAILABLE, e.message);
      assert.doesNotMatch(e.details, /HTTP status code/, 'the gateway\'s own status, not one grpc-js derived from a 502');
      assert.match(e.details, /generic/);
      return true;
    });
  } finally {
    client.close();
    await g.close();
  }
});

test('gRPC-Web: an upstream answer that ends without any grpc-status still ends with a trailer frame carrying one (UNKNOWN for a 200, the HTTP status mapped per gRPC\'s table otherwise)', async () => {
  // An HTTP/2 upstream that ends its streams without trailers: a 200 with a message, a 503, a 429.
  const bare = createH2Server((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url.endsWith('/Ok')) {
        res.writeHead(200, { 'content-type': 'application/grpc' });
        res.end(jsonFrame({ text: 'no status' }));
      } else res.writeHead(req.url.endsWith('/Busy') ? 429 : 503, { 'content-type': 'application/grpc' }).end();
    });
  });
  await new Promise<void>((r) => bare.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
services:
  - {name: bare, url: 'http://127.0.0.1:${(bare.address() as AddressInfo).port}', protocol: grpc, routes: [{paths: [/bare.Svc]}]}
`);
  const call = (path: string, text: boolean) => new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
    const body = text ? Buffer.from(jsonFrame({}).toString('base64')) : jsonFrame({});
    const r = httpRequest(`http://127.0.0.1:${g.port}${path}`, {
      method: 'POST', agent: false,
      headers: { 'content-type': text ? 'application/grpc-web-text' : 'application/grpc-web+proto', 'x-grpc-web': '1', 'content-length': body.length },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const raw = Buffer.concat(chunks);
        resolve({ status: res.statusCode!, body: text ? Buffer.concat((raw.toString().match(/[A-Za-z0-9+/]+={0,2}/g) ?? []).map((run) => Buffer.from(run, 'base64'))) : raw });
      });
    });
    r.on('error', reject);
    r.end(body);
  });
  try {
    for (const text of [false, true]) {
      for (const [method, messages, status] of [['Ok', 1, '2'], ['Down', 0, '14'], ['Busy', 0, '14']] as const) {
        const r = await call(`/bare.Svc/${method}`, text);
        const frames = parseFrames(r.body);
        const what = `${method} (text: ${text}): ${JSON.stringify(frames.map((f) => [f.flag, f.payload.toString('latin1')]))}`;
        assert.equal(frames.length, messages + 1, what);
        assert.equal(frames.at(-1)!.flag & 0x80, 0x80, what);
        const trailers = parseTrailerBlock(frames.at(-1)!.payload);
        assert.equal(trailers['grpc-status'], status, what);
        assert.match(trailers['grpc-message'] ?? '', /grpc-status/, what);
      }
    }
  } finally {
    await g.close();
    await new Promise((r) => bare.close(r));
  }
});

test('gRPC-Web: an upstream answer that is not gRPC at all (an error page, text/html) is not passed off as gRPC-Web messages: its body is dropped, a trailer frame carries the status', async () => {
  const page = createH2Server((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url.endsWith('/Html')) res.writeHead(200, { 'content-type': 'text/html' }).end('<!DOCTYPE html><p>hello</p>');
      else res.writeHead(503, { 'content-type': 'text/plain' }).end('upstream overloaded, try later');
    });
  });
  await new Promise<void>((r) => page.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
services:
  - {name: page, url: 'http://127.0.0.1:${(page.address() as AddressInfo).port}', protocol: grpc, routes: [{paths: [/page.Svc]}]}
`);
  try {
    for (const [method, status] of [['Html', '2'], ['Down', '14']] as const) {
      const r = await new Promise<Buffer>((resolve, reject) => {
        const body = jsonFrame({});
        const q = httpRequest(`http://127.0.0.1:${g.port}/page.Svc/${method}`, {
          method: 'POST', agent: false,
          headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', 'content-length': body.length },
        }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve(Buffer.concat(chunks)));
        });
        q.on('error', reject);
        q.end(body);
      });
      const frames = parseFrames(r);
      assert.equal(frames.length, 1, `${method}: ${r.toString('latin1')}`);
      assert.equal(frames[0]!.flag, 0x80);
      assert.equal(parseTrailerBlock(frames[0]!.payload)['grpc-status'], status, method);
    }
  } finally {
    await g.close();
    await new Promise((r) => page.close(r));
  }
});

test('gRPC-Web: a call that ends inside a message (its grpc-timeout runs out, or the upstream\'s trailers come after a frame cut short) is cut, never given a trailer frame the client would read as the rest of that message', async () => {
  // An HTTP/2 upstream that sends one whole message, then the 5-byte header of a 40-byte one and
  // 10 bytes of it; then /Stall waits, /Trailers ends its stream with OK trailers.
  const whole = jsonFrame({ i: 0 });
  const partial = Buffer.concat([Buffer.from([0, 0, 0, 0, 40]), Buffer.alloc(10, 0x41)]);
  const cut = createH2Server((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/grpc' });
      res.write(whole);
      res.write(partial);
      if (req.url.endsWith('/Trailers')) setTimeout(() => { res.addTrailers({ 'grpc-status': '0' }); res.end(); }, 100);
    });
  });
  await new Promise<void>((r) => cut.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
services:
  - {name: cut, url: 'http://127.0.0.1:${(cut.address() as AddressInfo).port}', protocol: grpc, routes: [{paths: [/cut.Svc]}]}
`);
  const call = (path: string) => new Promise<{ body: Buffer; complete: boolean }>((resolve, reject) => {
    const body = jsonFrame({});
    const q = httpRequest(`http://127.0.0.1:${g.port}${path}`, {
      method: 'POST', agent: false,
      headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', 'grpc-timeout': '300m', 'content-length': body.length },
    }, (res) => {
      answered = true;
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('close', () => resolve({ body: Buffer.concat(chunks), complete: res.complete }));
    });
    let answered = false;
    q.on('error', (err) => { if (!answered) reject(err); });
    q.end(body);
  });
  try {
    for (const method of ['Stall', 'Trailers']) {
      const r = await call(`/cut.Svc/${method}`);
      // What the client got is the upstream's bytes and nothing spliced after them, and the
      // response reads as broken (a trailer frame appended made a 40-byte "message" of it).
      assert.deepEqual(r.body, Buffer.concat([whole, partial]), `${method}: ${r.body.toString('latin1')}`);
      assert.equal(r.complete, false, method);
    }
  } finally {
    await g.close();
    await new Promise((r) => cut.close(r));
  }
});

test('a gRPC call through a service declared h2c (not grpc): the upstream\'s Trailers-Only error still leaves as one HEADERS frame with END_STREAM, so grpc-js reads its status (was INTERNAL "Call ended without gRPC status")', async () => {
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: generic, url: 'http://127.0.0.1:${plain.port}', protocol: h2c, routes: [{paths: [/test.Echo]}]}
`);
  const client = echoClient(`127.0.0.1:${g.port}`);
  try {
    assert.equal((await sayP(client, 'fine')).text, 'fine');
    await assert.rejects(sayP(client, 'fail'), (e: grpc.ServiceError) => {
      assert.equal(e.code, grpc.status.INVALID_ARGUMENT, e.message);
      assert.equal(e.details, 'bad text');
      assert.deepEqual(e.metadata.get('x-detail'), ['why']);
      return true;
    });
  } finally {
    client.close();
    await g.close();
  }
});

test('deadlines: a gRPC call (by its content type) through a service declared h2c has its grpc-timeout enforced: DEADLINE_EXCEEDED at the deadline, the upstream stream cancelled, not a wait for timeouts.response', async () => {
  let closed = 0;
  const up = createH2Server();
  up.on('stream', (stream) => {
    stream.on('error', () => {});
    stream.on('close', () => closed++);
    stream.resume(); // never answers
  });
  await new Promise<void>((r) => up.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: slow, url: 'http://127.0.0.1:${(up.address() as AddressInfo).port}', protocol: h2c, retries: 0, timeouts: {response: 10s}, routes: [{paths: [/s.Svc]}]}
`);
  try {
    const started = performance.now();
    const r = await rawCall(g.url, '/s.Svc/M', { 'grpc-timeout': '300m' });
    const took = performance.now() - started;
    assert.equal(r.headers['grpc-status'] ?? r.trailers['grpc-status'], String(grpc.status.DEADLINE_EXCEEDED), JSON.stringify(r));
    assert.ok(took >= 250 && took < 4000, `answered after ${took} ms`);
    await eventually(() => closed === 1, 2000);
  } finally {
    await g.close();
    await new Promise((r) => up.close(r));
  }
});

test('metrics: gRPC calls (by their content type) through a service declared h2c are counted by grpc-status: the upstream\'s trailers (OK), its Trailers-Only (INVALID_ARGUMENT), the one a bare end derives (UNKNOWN); a plain request is not', async () => {
  const bare = createH2Server((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/grpc' });
    res.end(jsonFrame({})); // END_STREAM, no trailers
  });
  await new Promise<void>((r) => bare.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
admin: {listen: 127.0.0.1:0}
http2: {h2c: true}
services:
  - {name: generic, url: 'http://127.0.0.1:${plain.port}', protocol: h2c, routes: [{paths: [/test.Echo]}]}
  - {name: bare, url: 'http://127.0.0.1:${(bare.address() as AddressInfo).port}', protocol: h2c, retries: 0, routes: [{paths: [/b.Svc, /plain]}]}
`);
  const client = echoClient(`127.0.0.1:${g.port}`);
  try {
    assert.equal((await sayP(client, 'fine')).text, 'fine');
    await assert.rejects(sayP(client, 'fail'), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
    const r = await rawCall(g.url, '/b.Svc/M', {});
    assert.equal(r.headers[':status'], 200);
    await request(`${g.url}/plain`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    const want = { 'generic/0': 1, 'generic/3': 1, 'bare/2': 1 };
    let got: Record<string, number> = {};
    await eventually(async () => {
      const t = (await request(`${g.adminUrl}/metrics`)).body;
      got = {};
      for (const service of ['generic', 'bare']) {
        for (let c = 0; c <= 16; c++) {
          const v = promValue(t, 'turnpike_grpc_responses_total', { service, grpc_status: String(c) });
          if (v !== 0) got[`${service}/${c}`] = v;
        }
      }
      return JSON.stringify(got) === JSON.stringify(want);
    }, 3000).catch(() => {});
    assert.deepEqual(got, want);
  } finally {
    client.close();
    await g.close();
    await new Promise((r) => bare.close(r));
  }
});

test('a gRPC call through a service declared h2c whose response-transform shapes JSON (a +json content type, as application/grpc+json is) streams as a call to a gRPC service does: its messages and trailers (grpc-status, metadata) reach grpc-js, never held whole and lost', async () => {
  const up = createH2Server();
  up.on('stream', (stream) => {
    stream.on('error', () => {});
    stream.resume();
    stream.respond({ ':status': 200, 'content-type': 'application/grpc+json' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'x-trail': 'kept' }));
    stream.write(jsonFrame({ i: 1, secret: 's' }));
    stream.end(jsonFrame({ i: 2, secret: 's' }));
  });
  await new Promise<void>((r) => up.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
http2: {h2c: true}
services:
  - name: generic
    url: 'http://127.0.0.1:${(up.address() as AddressInfo).port}'
    protocol: h2c
    plugins: [{name: response-transform, config: {json: {remove: [secret]}, headers: {set: {x-shaped: 'yes'}}}}]
    routes: [{paths: [/test.Echo]}]
`);
  const client = echoClient(`127.0.0.1:${g.port}`);
  try {
    const r = await collect<{ i: number }>(client.Count({ n: 2 }));
    assert.equal(r.status.code, grpc.status.OK, r.status.details);
    assert.deepEqual(r.messages.map((m) => m.i), [1, 2]);
    assert.deepEqual(r.status.metadata.get('x-trail'), ['kept']);
    assert.deepEqual(r.headers?.get('x-shaped'), ['yes'], 'the response-transform\'s header phase still applies');
  } finally {
    client.close();
    await g.close();
    await new Promise((r) => up.close(r));
  }
});

test('a client-streaming gRPC call (by its content type) through a service declared h2c is exempt from timeouts.client_body_min_rate as one to a gRPC service is: messages at the application\'s pace (a few bytes every 120 ms) are summed, not cut with a 408', async () => {
  const g = await startGateway(`
http2: {h2c: true}
timeouts: {client_body: 400ms, client_body_min_rate: 1kb}
services:
  - {name: generic, url: 'http://127.0.0.1:${plain.port}', protocol: h2c, routes: [{paths: [/test.Echo]}]}
`);
  const client = echoClient(`127.0.0.1:${g.port}`);
  try {
    const sum = await new Promise<number>((resolve, reject) => {
      const call = client.Sum((err, res) => (err ? reject(err) : resolve(res!.sum)));
      let i = 0;
      const tick = () => {
        if (i === 6) return call.end();
        call.write({ v: ++i });
        setTimeout(tick, 120);
      };
      tick();
    });
    assert.equal(sum, 21);
  } finally {
    client.close();
    await g.close();
  }
});

test('a gRPC call (by its content type) through a service of HTTP/1.1 targets (protocol: http) answered Trailers-Only style (grpc-status in the head, no body) leaves as one HEADERS frame with END_STREAM: grpc-js reads that status, not INTERNAL "Call ended without gRPC status"', async () => {
  const h1 = createHttpServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'no such thing', 'content-length': '0' });
    res.end();
  });
  await new Promise<void>((r) => h1.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: h1, url: 'http://127.0.0.1:${(h1.address() as AddressInfo).port}', routes: [{paths: [/test.Echo]}]}
`);
  const client = echoClient(`127.0.0.1:${g.port}`);
  try {
    await assert.rejects(sayP(client, 'x'), (e: grpc.ServiceError) => {
      assert.equal(e.code, grpc.status.NOT_FOUND, e.message);
      assert.equal(e.details, 'no such thing');
      return true;
    });
  } finally {
    client.close();
    await g.close();
    await new Promise((r) => h1.close(r));
  }
});

test('a grpcs target that speaks HTTP/1.1 answering Trailers-Only with a field repeated that HTTP/2 allows once (two ETag) still answers the gRPC client, never leaves its stream hanging', async () => {
  const leaf = ca.issue('h1.test', { dns: ['h1.test'] });
  const h1 = createHttpsServer({ cert: leaf.cert, key: leaf.key }, (req, res) => {
    req.resume();
    res.setHeader('content-type', 'application/grpc');
    res.setHeader('grpc-status', '5');
    res.setHeader('etag', ['"a"', '"b"']);
    res.setHeader('set-cookie', ['a=1', 'b=2']);
    res.end();
  });
  await new Promise<void>((r) => h1.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: h1, url: 'https://127.0.0.1:${(h1.address() as AddressInfo).port}', protocol: grpcs, tls: {ca: ${ca.certFile}, server_name: h1.test}, routes: [{paths: [/h1.Svc]}]}
`);
  const c = h2connect(`http://127.0.0.1:${g.port}`);
  try {
    const headers = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const s = c.request({ ':method': 'POST', ':path': '/h1.Svc/M', 'content-type': 'application/grpc', te: 'trailers' });
      let h: Record<string, unknown> = {};
      s.on('response', (x) => { h = x; });
      s.on('close', () => resolve(h));
      s.on('error', reject);
      s.resume();
      s.end(jsonFrame({}));
      setTimeout(() => reject(new Error('no answer in 3 s')), 3000).unref();
    });
    assert.equal(headers['grpc-status'], '5', JSON.stringify(headers));
    assert.equal(headers.etag, '"a", "b"');
    assert.deepEqual(headers['set-cookie'], ['a=1', 'b=2']);
  } finally {
    c.close();
    await g.close();
    await new Promise((r) => h1.close(r));
  }
});

test('a gRPC upstream shutting down gracefully (grpc-js tryShutdown: GOAWAY NO_ERROR) mid-stream: the call in flight gets all its messages and OK', async () => {
  const srv = await startGrpcServer();
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: e, url: 'http://127.0.0.1:${srv.port}', protocol: grpc, routes: [{paths: [/test.Echo]}]}
`);
  const client = echoClient(`127.0.0.1:${g.port}`);
  try {
    await sayP(client, 'warm');
    const call = collect(client.Count({ n: 10, delayMs: 50 }));
    setTimeout(() => srv.server.tryShutdown(() => {}), 150);
    const r = await call;
    assert.equal(r.status.code, grpc.status.OK, r.status.details);
    assert.deepEqual(r.messages.map((m) => m.i), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  } finally {
    client.close();
    await g.close();
    srv.server.forceShutdown();
  }
});

/** One raw gRPC call over HTTP/2: the response head, its trailers, the body and the stream's RST code. */
function rawCall(url: string, path: string, headers: Record<string, string>, body: Buffer | null = jsonFrame({})) {
  return new Promise<{ headers: Record<string, unknown>; trailers: Record<string, unknown>; body: Buffer; rstCode: number | undefined }>((resolve) => {
    const c = h2connect(url);
    c.on('error', () => {});
    const s = c.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers }, { endStream: body === null });
    let head: Record<string, unknown> = {};
    let trailers: Record<string, unknown> = {};
    const chunks: Buffer[] = [];
    s.on('response', (h) => (head = h));
    s.on('trailers', (t) => (trailers = t));
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('error', () => {});
    s.on('close', () => {
      resolve({ headers: head, trailers, body: Buffer.concat(chunks), rstCode: s.rstCode });
      c.close();
    });
    if (body !== null) s.end(body);
  });
}

test('deadlines: the grpc-timeout sent upstream is what is left of the client\'s at each attempt (time spent in the gateway, a refused attempt and its backoff, deducted), capped by the route\'s deadline when the request is whole; an invalid one (9 digits, bad unit, empty) is dropped, the call goes on without a deadline', async () => {
  const seen: (string | undefined)[] = [];
  let refuseNext = false;
  const up = createH2Server();
  up.on('stream', (stream, headers) => {
    seen.push(headers['grpc-timeout'] as string | undefined);
    stream.on('error', () => {});
    stream.resume();
    if (refuseNext) {
      refuseNext = false;
      // nothing processed (RFC 9113 §8.7): sent again, after this much of the deadline went by
      setTimeout(() => stream.close(h2constants.NGHTTP2_REFUSED_STREAM), 400);
      return;
    }
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    stream.end(jsonFrame({ ok: true }));
  });
  await new Promise<void>((r) => up.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(up.address() as AddressInfo).port}`;
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: dl, url: '${url}', protocol: grpc, retries: 1, timeouts: {response: 5s}, routes: [{paths: [/dl.Svc]}]}
  - {name: short, url: '${url}', protocol: grpc, timeouts: {response: 2s}, routes: [{paths: [/short.Svc]}]}
`);
  const ms = (v: string | undefined) => {
    const m = /^(\d{1,8})([HMSm])$/.exec(v ?? '');
    assert.ok(m, `a valid grpc-timeout upstream: ${v}`);
    return Number(m[1]) * { H: 3_600_000, M: 60_000, S: 1000, m: 1 }[m[2] as 'H' | 'M' | 'S' | 'm'];
  };
  try {
    // A first attempt refused after 400 ms: the second is told 400 ms (and the backoff) less.
    refuseNext = true;
    // (no body: a streamed one, read into the refused stream, could not go again)
    const r = await rawCall(g.url, '/dl.Svc/M', { 'grpc-timeout': '3S' }, null);
    assert.equal(r.trailers['grpc-status'], '0', JSON.stringify(r));
    assert.equal(seen.length, 2);
    const [first, second] = [ms(seen[0]), ms(seen[1])];
    assert.ok(first <= 3000 && first > 2000, `first attempt told ${seen[0]}`);
    assert.ok(second <= first - 390, `second attempt told ${seen[1]} after ${seen[0]}`);
    // The route's deadline (2 s) is shorter than the client's (30 s), and the request is whole: the upstream is told the route's.
    seen.length = 0;
    const capped = await rawCall(g.url, '/short.Svc/M', { 'grpc-timeout': '30S' }, null);
    assert.equal(capped.trailers['grpc-status'], '0', JSON.stringify(capped));
    assert.ok(ms(seen[0]) <= 2000 && ms(seen[0]) > 1000, `told ${seen[0]}`);
    // The largest 8-digit value stays within 8 digits.
    seen.length = 0;
    await rawCall(g.url, '/dl.Svc/M', { 'grpc-timeout': '99999999H' });
    assert.ok(ms(seen[0]) >= 99_999_998 * 3_600_000, `told ${seen[0]}`);
    // Not valid: the call goes through, nothing of it upstream.
    for (const v of ['123456789m', '5x', '', '1.5S', '-1S', '5 S']) {
      seen.length = 0;
      const bad = await rawCall(g.url, '/dl.Svc/M', { 'grpc-timeout': v });
      assert.equal(bad.trailers['grpc-status'], '0', `${JSON.stringify(v)}: ${JSON.stringify(bad)}`);
      assert.deepEqual(seen, [undefined], JSON.stringify(v));
    }
  } finally {
    await g.close();
    await new Promise((r) => up.close(r));
  }
});

test('an HTTP/2 upstream that resets a gRPC call\'s stream mid-response: the client gets what the reset means (CANCEL: CANCELLED, ENHANCE_YOUR_CALM: RESOURCE_EXHAUSTED), a PROTOCOL_ERROR of the upstream\'s as INTERNAL, not its own', async () => {
  let code = 0;
  const up = await startRawH2Origin((s) => {
    s.headers(200, { 'content-type': 'application/grpc' });
    s.data(jsonFrame({ i: 0 }));
    setTimeout(() => s.rst(code), 30);
  });
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-grpc-rst-')), 'access.log');
  const g = await startGateway(`
access_log: {destination: file, path: ${log}}
http2: {h2c: true}
services:
  - {name: cut, url: '${up.url}', protocol: grpc, retries: 0, routes: [{paths: [/test.Echo]}]}
  - {name: cut-h2c, url: '${up.url}', protocol: h2c, retries: 0, routes: [{paths: [/test.Echo], hosts: [h2c.test]}]}
`);
  const client = echoClient(`127.0.0.1:${g.port}`);
  try {
    // A gRPC call (by its content type) through a service declared h2c: the same CANCEL, not INTERNAL.
    code = H2_CANCEL;
    const viaH2c = await rawCall(g.url, '/test.Echo/Count', { ':authority': 'h2c.test' });
    assert.equal(viaH2c.rstCode, H2_CANCEL, 'h2c service');
    for (const [rst, status] of [[H2_CANCEL, grpc.status.CANCELLED], [H2_ENHANCE_YOUR_CALM, grpc.status.RESOURCE_EXHAUSTED], [H2_PROTOCOL_ERROR, grpc.status.INTERNAL], [H2_INTERNAL_ERROR, grpc.status.INTERNAL]] as const) {
      code = rst;
      const r = await collect(client.Count({ n: 5 }));
      assert.equal(r.messages.length, 1, `RST_STREAM ${rst}`);
      assert.equal(r.status.code, status, `RST_STREAM ${rst}: ${r.status.details}`);
      const raw = await rawCall(g.url, '/test.Echo/Count', {});
      assert.equal(raw.rstCode, rst === H2_PROTOCOL_ERROR ? H2_INTERNAL_ERROR : rst, `RST_STREAM ${rst}, raw`);
    }
    // Each a response cut in the access log, whatever code its reset said.
    let lines: { error: string | null }[] = [];
    await eventually(() => (lines = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { error: string | null })).length >= 9, 3000).catch(() => {});
    assert.deepEqual(lines.map((l) => l.error), Array(9).fill('response-cut'));
  } finally {
    client.close();
    await g.close();
    await up.close();
  }
});

test('metrics: a native gRPC call that ends without a grpc-status is counted with the one its client derives: a bare 200 UNKNOWN, a reset CANCELLED / RESOURCE_EXHAUSTED / INTERNAL, the gateway\'s deadline DEADLINE_EXCEEDED, a client that cancels CANCELLED', async () => {
  // Per request (by its index): how the upstream ends the call after a message.
  const script: ((s: RawH2Stream) => void)[] = [
    (s) => s.data('', true), // END_STREAM, no trailers
    (s) => s.rst(H2_CANCEL),
    (s) => s.rst(H2_ENHANCE_YOUR_CALM),
    (s) => s.rst(H2_PROTOCOL_ERROR),
    () => {}, // nothing more: the client's grpc-timeout runs out
    () => {}, // nothing more: the client cancels
  ];
  const up = await startRawH2Origin((s) => {
    s.headers(200, { 'content-type': 'application/grpc' });
    s.data(jsonFrame({ i: 0 }));
    setTimeout(() => script[s.index]?.(s), 30);
  });
  const g = await startGateway(`
admin: {listen: 127.0.0.1:0}
http2: {h2c: true}
services:
  - {name: m, url: '${up.url}', protocol: grpc, retries: 0, routes: [{paths: [/m.Svc]}]}
`);
  try {
    for (let i = 0; i < 4; i++) await rawCall(g.url, '/m.Svc/Call', {});
    const late = await rawCall(g.url, '/m.Svc/Call', { 'grpc-timeout': '300m' });
    assert.equal(late.trailers['grpc-status'], '4', JSON.stringify(late));
    await new Promise<void>((resolve) => {
      const c = h2connect(g.url);
      const s = c.request({ ':method': 'POST', ':path': '/m.Svc/Call', 'content-type': 'application/grpc', te: 'trailers' });
      s.on('error', () => {});
      s.once('data', () => s.close(h2constants.NGHTTP2_CANCEL));
      s.on('close', () => {
        c.close();
        resolve();
      });
      s.end(jsonFrame({}));
    });
    const want = { '1': 2, '2': 1, '4': 1, '8': 1, '13': 1 };
    let got: Record<string, number> = {};
    await eventually(async () => {
      const t = (await request(`${g.adminUrl}/metrics`)).body;
      got = Object.fromEntries(['0', '1', '2', '4', '8', '13', '14'].map((c) => [c, promValue(t, 'turnpike_grpc_responses_total', { service: 'm', grpc_status: c })]).filter(([, v]) => v !== 0));
      return JSON.stringify(got) === JSON.stringify(want);
    }, 3000).catch(() => {});
    assert.deepEqual(got, want);
  } finally {
    await g.close();
    await up.close();
  }
});

test('an upstream that refuses a gRPC call\'s stream (REFUSED_STREAM: nothing processed), the gateway not sending it again (its body streamed): the client is told REFUSED_STREAM and grpc-js sends the call again transparently', async () => {
  const seen: number[] = [];
  const up = await startRawH2Origin((s) => {
    seen.push(s.index);
    if (s.index === 0) return s.rst(H2_REFUSED_STREAM);
    s.headers(200, { 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'the second' }, true);
  });
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: r, url: '${up.url}', protocol: grpc, retries: 1, routes: [{paths: [/test.Echo]}]}
`);
  const client = echoClient(`127.0.0.1:${g.port}`);
  try {
    await assert.rejects(sayP(client, 'x'), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND && e.details === 'the second');
    assert.deepEqual(seen, [0, 1]);
  } finally {
    client.close();
    await g.close();
    await up.close();
  }
});

test('deadlines: a call whose grpc-timeout runs out while it waits for a bulkhead slot is DEADLINE_EXCEEDED, not the overloaded service\'s UNAVAILABLE', async () => {
  const g = await startGateway(`
http2: {h2c: true}
services:
  - name: one
    url: http://127.0.0.1:${plain.port}
    protocol: grpc
    timeouts: {response: 5s}
    circuit_breaker: {max_concurrent: 1, max_pending: 5, max_wait: 5s}
    routes: [{paths: [/test.Echo]}]
`);
  const client = echoClient(`127.0.0.1:${g.port}`);
  try {
    const busy = sayP(client, 'sleep:1500'); // holds the only slot
    await new Promise((r) => setTimeout(r, 200));
    const started = Date.now();
    const r = await rawCall(g.url, '/test.Echo/Say', { 'grpc-timeout': '300m' }, jsonFrame({ text: 'waits' }));
    assert.equal(r.headers['grpc-status'], String(grpc.status.DEADLINE_EXCEEDED), JSON.stringify(r.headers));
    assert.ok(Date.now() - started < 1200, `answered after ${Date.now() - started} ms`);
    assert.equal((await busy).text, 'sleep:1500');
  } finally {
    client.close();
    await g.close();
  }
});

test('deadlines: a call whose grpc-timeout has already run out (0m, 0S) is DEADLINE_EXCEEDED at once, never sent upstream', async () => {
  let streams = 0;
  const up = createH2Server();
  up.on('stream', (stream) => {
    streams++;
    stream.on('error', () => {});
    stream.resume();
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    stream.end(jsonFrame({ ok: true }));
  });
  await new Promise<void>((r) => up.listen(0, '127.0.0.1', r));
  const g = await startGateway(`
http2: {h2c: true}
services:
  - {name: z, url: 'http://127.0.0.1:${(up.address() as AddressInfo).port}', protocol: grpc, routes: [{paths: [/z.Svc]}]}
`);
  try {
    for (const v of ['0m', '0S', '00000000H']) {
      const r = await rawCall(g.url, '/z.Svc/M', { 'grpc-timeout': v });
      assert.equal(r.headers['grpc-status'], String(grpc.status.DEADLINE_EXCEEDED), `${v}: ${JSON.stringify(r.headers)}`);
    }
    assert.equal(streams, 0, 'nothing went upstream');
    const ok = await rawCall(g.url, '/z.Svc/M', { 'grpc-timeout': '5S' });
    assert.equal(ok.trailers['grpc-status'], '0');
    assert.equal(streams, 1);
  } finally {
    await g.close();
    await new Promise((r) => up.close(r));
  }
});
