/** WebSocket through the gateway: routing, forwarding headers, limits, close codes, TLS, drain. */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import type { IncomingMessage } from 'node:http';
import { WebSocket, WebSocketServer } from 'ws';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configIssues, eventually, promValue, rawRequest, request, startGateway, startUpstream, type TestUpstream } from './helpers.js';
import { makeCa, type TestCa } from './certs.js';

interface EchoUpstream { port: number; url: string; handshakes: IncomingMessage[]; closes: { code: number; reason: string }[]; sockets: Set<WebSocket>; close(): Promise<void> }

/** A ws upstream: echoes messages; "close:CODE:REASON" makes it close; remembers handshakes and close frames. */
async function startWsUpstream(): Promise<EchoUpstream> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', handleProtocols: (p) => (p.has('chat.v2') ? 'chat.v2' : false) });
  const handshakes: IncomingMessage[] = [];
  const closes: EchoUpstream['closes'] = [];
  const sockets = new Set<WebSocket>();
  wss.on('connection', (ws, req) => {
    handshakes.push(req);
    sockets.add(ws);
    ws.on('message', (data, binary) => {
      const text = binary ? '' : data.toString();
      if (text.startsWith('close:')) {
        const [, code, reason] = text.split(':');
        ws.close(Number(code), reason);
      } else ws.send(data, { binary });
    });
    ws.on('close', (code, reason) => {
      sockets.delete(ws);
      closes.push({ code, reason: reason.toString() });
    });
  });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const port = (wss.address() as AddressInfo).port;
  return {
    port, url: `http://127.0.0.1:${port}`, handshakes, closes, sockets,
    close: () => new Promise((r) => { for (const s of sockets) s.terminate(); wss.close(() => r()); }),
  };
}

function open(url: string, opts: { protocols?: string[]; ca?: Buffer; servername?: string; headers?: Record<string, string> } = {}): Promise<{ ws: WebSocket; res: IncomingMessage }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, opts.protocols ?? [], { ca: opts.ca, handshakeTimeout: 3000, headers: opts.headers, ...(opts.servername ? { servername: opts.servername } : {}) } as ConstructorParameters<typeof WebSocket>[2]);
    ws.once('upgrade', (res) => ws.once('open', () => resolve({ ws, res })));
    ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`status ${res.statusCode}`), { status: res.statusCode })));
    ws.once('error', reject);
  });
}

const nextMessage = (ws: WebSocket) => new Promise<{ data: Buffer; binary: boolean }>((resolve) => ws.once('message', (data, binary) => resolve({ data: data as Buffer, binary })));
const closed = (ws: WebSocket) => new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));

let up: EchoUpstream;
let http: TestUpstream;
before(async () => {
  up = await startWsUpstream();
  http = await startUpstream();
});
after(async () => {
  await up.close();
  await http.close();
});

const config = () => `
admin: {listen: 127.0.0.1:0}
services:
  - name: chat
    url: ${up.url}/base
    routes:
      - {name: chat, paths: [/chat], websocket: true, strip_path: true}
      - {name: small, paths: [/small], websocket: {max_message: 1kb, idle_timeout: 400ms}}
      - {name: pinned, paths: [/pinned], websocket: {origins: ["https://app.example"]}}
      - {name: pinned-written, paths: [/pinned-written], websocket: {origins: ["HTTPS://App.Example:443/", "http://bücher.example:80"]}}
  - name: plain
    url: ${http.url}
    routes: [{name: plain, paths: [/plain]}]
`;

test('WebSocket echo through the gateway: text and binary, subprotocol, forwarding headers, request id, path rewriting; counted in metrics and the access log', async () => {
  const log = join(mkdtempSync(join(tmpdir(), 'turnpike-ws-')), 'access.log');
  const t = await startGateway(`${config()}access_log: {destination: file, path: ${log}}\n`);
  try {
    const { ws, res } = await open(`ws://127.0.0.1:${t.port}/chat/room/1?x=2`, { protocols: ['chat.v1', 'chat.v2'], headers: { constructor: 'c1', 'x-two': 'a' } });
    assert.equal(ws.protocol, 'chat.v2');
    assert.ok(res.headers['x-request-id']);
    assert.equal(res.headers.via, '1.1 turnpike'); // (a 101 is a relayed response too: RFC 9110 §7.6.3)
    ws.send('hello');
    assert.deepEqual(await nextMessage(ws).then((m) => [m.data.toString(), m.binary]), ['hello', false]);
    ws.send(Buffer.from([0, 1, 2, 255]));
    const bin = await nextMessage(ws);
    assert.equal(bin.binary, true);
    assert.deepEqual([...bin.data], [0, 1, 2, 255]);
    const hs = up.handshakes.at(-1)!;
    assert.equal(hs.url, '/base/room/1?x=2');
    assert.equal(hs.headers.host, `127.0.0.1:${up.port}`);
    assert.equal(hs.headers['x-forwarded-for'], '127.0.0.1');
    assert.equal(hs.headers['x-request-id'], res.headers['x-request-id']);
    // (a field named constructor is forwarded as sent, once: not Object's function)
    const raw = hs.rawHeaders;
    assert.deepEqual(raw.flatMap((v, i) => (i % 2 === 0 && v.toLowerCase() === 'constructor' ? [raw[i + 1]] : [])), ['c1']);
    assert.equal(t.gw.ws.opened, 1);
    const c = closed(ws);
    ws.close(4002, 'done');
    assert.deepEqual(await c, { code: 4002, reason: 'done' });
    await eventually(() => up.closes.at(-1)?.code === 4002);
    assert.equal(up.closes.at(-1)!.reason, 'done');
    await eventually(() => t.gw.ws.closed === 1 && t.gw.inFlight === 0);
    assert.equal(t.gw.ws.messagesIn, 2);
    assert.equal(t.gw.ws.messagesOut, 2);
    const status = JSON.parse((await request(`${t.adminUrl}/status`)).body);
    assert.deepEqual(status.websockets, { open: 0, opened: 1, rejected: 0, messages_in: 2, messages_out: 2 });
    const m = (await request(`${t.adminUrl}/metrics`)).body;
    assert.equal(promValue(m, 'turnpike_websocket_messages_total', { direction: 'in' }), 2);
    assert.equal(promValue(m, 'turnpike_websocket_connections', {}), 0);
    assert.equal(promValue(m, 'turnpike_websocket_upgrades_total', { result: 'opened' }), 1);
    assert.equal(promValue(m, 'turnpike_requests_total', { route: 'chat', status: '101' }), 1);
    await eventually(() => readFileSync(log, 'utf8').includes('"websocket"'));
    const line = JSON.parse(readFileSync(log, 'utf8').trim().split('\n').at(-1)!);
    assert.equal(line.status, 101);
    assert.equal(line.route, 'chat');
    assert.equal(line.request_id, res.headers['x-request-id']);
    assert.deepEqual(line.websocket, { messages_in: 2, messages_out: 2, close_code: 4002, closed_by: 'client' });
    assert.equal(line.error, null);
  } finally {
    await t.close();
  }
});

test('an upstream that picks none of the offered subprotocols: the client gets a 101 without Sec-WebSocket-Protocol (RFC 6455 §4.2.2) and the session works', async () => {
  const t = await startGateway(config());
  try {
    // ws fails such a 101 itself when given the list (like Chromium); with the offer in the headers it
    // takes it, as python-websockets, gorilla or Java clients do.
    const { ws, res } = await open(`ws://127.0.0.1:${t.port}/chat`, { headers: { 'Sec-WebSocket-Protocol': 'chat.v1, chat.v3' } });
    assert.equal(res.statusCode, 101);
    assert.equal(res.headers['sec-websocket-protocol'], undefined);
    assert.equal(ws.protocol, '');
    assert.equal(up.handshakes.at(-1)!.headers['sec-websocket-protocol'], 'chat.v1,chat.v3');
    // strip_path left nothing: the base path alone, query or not, as for HTTP (a `/` sent stays)
    assert.equal(up.handshakes.at(-1)!.url, '/base');
    ws.send('hello');
    assert.equal((await nextMessage(ws)).data.toString(), 'hello');
    const c = closed(ws);
    ws.close(1000);
    assert.equal((await c).code, 1000);
    assert.equal(t.gw.ws.opened, 1);
    assert.equal(t.gw.ws.rejected, 0);
    for (const [path, want] of [['/chat?v=1', '/base?v=1'], ['/chat/', '/base/'], ['/chat/?v=1', '/base/?v=1']]) {
      const other = await open(`ws://127.0.0.1:${t.port}${path}`);
      assert.equal(up.handshakes.at(-1)!.url, want, path);
      const done = closed(other.ws);
      other.ws.close(1000);
      await done;
    }
  } finally {
    await t.close();
  }
});

test('close codes travel both ways; a message over max_message closes with 1009; idle connections close with 1001', async () => {
  const t = await startGateway(config());
  try {
    const a = await open(`ws://127.0.0.1:${t.port}/chat`);
    const ca = closed(a.ws);
    a.ws.send('close:4001:bye');
    assert.deepEqual(await ca, { code: 4001, reason: 'bye' });

    const b = await open(`ws://127.0.0.1:${t.port}/small`);
    const cb = closed(b.ws);
    const before = up.closes.length;
    b.ws.send('x'.repeat(2048));
    assert.equal((await cb).code, 1009);
    await eventually(() => up.closes.length > before);
    assert.equal(up.closes.at(-1)!.code, 1001);

    const c = await open(`ws://127.0.0.1:${t.port}/small`);
    const started = Date.now();
    const cc = closed(c.ws);
    assert.equal((await cc).code, 1001);
    const took = Date.now() - started;
    assert.ok(took >= 350 && took < 3000, `idle close after ${took} ms`);
  } finally {
    await t.close();
  }
});

test('upgrade requests elsewhere: a route without websocket answers as plain HTTP and closes; no route is a 404 problem; upstream refusal is relayed', async () => {
  const t = await startGateway(config());
  try {
    const key = 'dGhlIHNhbXBsZSBub25jZQ==';
    const upgradeHead = (path: string) => `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n\r\n`;
    const plain = await rawRequest(t.port, upgradeHead('/plain/a'));
    assert.match(plain.text, /^HTTP\/1\.1 200 /);
    assert.match(plain.text, /connection: close/i);
    assert.ok(plain.closed);
    const seen = http.requests.at(-1)!;
    assert.equal(seen.url, '/plain/a');
    assert.equal(seen.headers.upgrade, undefined, 'Upgrade is not forwarded where WebSockets are not allowed');
    assert.equal(seen.headers['sec-websocket-key'], key, 'other fields travel as usual');

    const none = await rawRequest(t.port, upgradeHead('/nowhere'));
    assert.match(none.text, /^HTTP\/1\.1 404 /);
    assert.match(none.text, /application\/problem\+json/);

    // A body on a WebSocket upgrade request of a non-WebSocket route is never forwarded half-parsed.
    const withBody = await rawRequest(t.port, `POST /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello`);
    assert.match(withBody.text, /^HTTP\/1\.1 400 /);
    // Any other upgrade (h2c) is ignored: the request is parsed and served as the plain request it also is.
    const h2cBody = await rawRequest(t.port, `POST /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello`);
    assert.match(h2cBody.text, /^HTTP\/1\.1 200 /);
    assert.equal(http.requests.at(-1)!.body.toString(), 'hello');

    // Upstream gone: 502 problem, no 101.
    const t2 = await startGateway(`
services:
  - {name: dead, url: 'http://127.0.0.1:1', routes: [{paths: [/dead], websocket: true}]}
`);
    try {
      await assert.rejects(open(`ws://127.0.0.1:${t2.port}/dead`), (e: { status?: number }) => e.status === 502);
      await eventually(() => t2.gw.ws.rejected === 1 && t2.gw.inFlight === 0);
    } finally {
      await t2.close();
    }
  } finally {
    await t.close();
  }
});

test('Upgrade lists protocols (RFC 9110 §7.8): a handshake whose Upgrade offers websocket among others (websocket, foo/2; Foo, WebSocket) is a WebSocket handshake (RFC 6455 §4.2.1: the field contains websocket): 101 and a working relay, not a 400', async () => {
  const t = await startGateway(config());
  const { connect } = await import('node:net');
  try {
    for (const offer of ['websocket, foo/2', 'Foo, WebSocket']) {
      const sock = connect(t.port, '127.0.0.1');
      sock.on('error', () => {});
      let text = '';
      const head = new Promise<void>((resolve) => sock.on('data', (d: Buffer) => { text += d.toString('latin1'); if (text.includes('\r\n\r\n')) resolve(); }));
      sock.write(`GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${offer}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
      try {
        await head;
        assert.match(text, /^HTTP\/1\.1 101 /, `${offer}: ${text}`);
        assert.match(text, /\r\nupgrade: websocket\r\n/i);
        assert.match(text, /\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=\r\n/i);
        // A masked text frame "hi": the echo comes back unmasked.
        const echoed = new Promise<void>((resolve) => sock.on('data', () => { if (text.endsWith('\x81\x02hi')) resolve(); }));
        sock.write(Buffer.from([0x81, 0x82, 1, 2, 3, 4, 'h'.charCodeAt(0) ^ 1, 'i'.charCodeAt(0) ^ 2]));
        await echoed;
      } finally {
        sock.destroy();
      }
    }
  } finally {
    await t.close();
  }
});

test('an Upgrade in an HTTP/1.0 request is ignored (RFC 9110 §7.8; WebSocket needs HTTP/1.1, RFC 6455 §4.1): no 101, served as plain HTTP/1.0', async () => {
  const t = await startGateway(config());
  try {
    const key = 'dGhlIHNhbXBsZSBub25jZQ==';
    const handshakes = up.handshakes.length;
    const ws = await rawRequest(t.port, `GET /chat HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n\r\n`);
    assert.doesNotMatch(ws.text, /^HTTP\/1\.1 101 /);
    assert.match(ws.text, /^HTTP\/1\.1 [2-5][0-9][0-9] /); // (the ws upstream answers a plain GET 426)
    assert.ok(ws.closed);
    assert.equal(up.handshakes.length, handshakes, 'no WebSocket opened upstream');
    // with a body, served whole like any HTTP/1.0 request
    const before = http.requests.length;
    const post = await rawRequest(t.port, 'POST /plain HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello');
    assert.match(post.text, /^HTTP\/1\.1 200 /);
    assert.equal(http.requests.length, before + 1);
    const seen = http.requests.at(-1)!;
    assert.equal(seen.body.toString(), 'hello');
    assert.equal(seen.headers.upgrade, undefined);
    assert.equal(seen.headers.via, '1.0 turnpike');
  } finally {
    await t.close();
  }
});

test('wss through the TLS listener; shutdown closes open WebSockets with 1001 and does not wait for them', async () => {
  const ca: TestCa = makeCa();
  try {
    const leaf = ca.issue('ws.test');
    const t = await startGateway(`
listen_tls: 127.0.0.1:0
tls: {certificates: [{hosts: [ws.test], cert: ${leaf.certFile}, key: ${leaf.keyFile}}]}
timeouts: {drain: 10s}
${config()}`);
    const { ws } = await open(`wss://127.0.0.1:${t.gw.tlsAddress!.port}/chat`, { ca: ca.cert, servername: 'ws.test' });
    ws.send('over tls');
    assert.equal((await nextMessage(ws)).data.toString(), 'over tls');
    assert.equal(up.handshakes.at(-1)!.headers['x-forwarded-proto'], 'https');
    const c = closed(ws);
    const started = Date.now();
    await t.close();
    assert.equal((await c).code, 1001);
    assert.ok(Date.now() - started < 6000, 'the drain does not wait its full 10 s for WebSockets');
  } finally {
    ca.cleanup();
  }
});

test('a WebSocket handshake that arrives once stop() began is refused with 503: a relay opened then outlived the stop, which waited for its socket forever', { timeout: 20_000 }, async () => {
  const t = await startGateway(`timeouts: {drain: 2s}\n${config()}`);
  const { connect } = await import('node:net');
  // A connection accepted before stop(): it may still send its first request during the drain.
  const sock = connect(t.port, '127.0.0.1');
  sock.on('error', () => {});
  let text = '';
  sock.on('data', (d: Buffer) => { text += d.toString('latin1'); });
  const sockClosed = new Promise<void>((r) => sock.once('close', () => r()));
  await new Promise((r) => sock.once('connect', r));
  await new Promise((r) => setTimeout(r, 100)); // accepted by the gateway
  const before = up.handshakes.length;
  let stopped = false;
  const stop = t.close().then(() => { stopped = true; });
  sock.write('GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
  try {
    await eventually(() => stopped, 8000);
    await sockClosed;
    assert.match(text, /^HTTP\/1\.1 503 /);
    assert.match(text, /application\/problem\+json/);
    assert.match(text, /retry-after: 1/i);
    assert.equal(up.handshakes.length, before, 'no upstream connection made');
  } finally {
    sock.destroy(); // (unfixed: the relay's end lets the stop finish)
    await stop;
  }
});

test('websocket.max_message that ws would take for no limit at all (0, 2gb and more: a 32-bit integer) is a config error', () => {
  const cfg = (size: string) => `services:\n  - name: s\n    url: http://127.0.0.1:1\n    routes:\n      - {paths: [/ws], websocket: {max_message: ${size}}}\n`;
  for (const size of ['0', '0kb', '2gb', '4gb']) {
    const issues = configIssues(cfg(size));
    assert.equal(issues.length, 1, size);
    assert.equal(issues[0]!.path, 'services[0].routes[0].websocket.max_message', size);
    assert.match(issues[0]!.message, /no limit/, size);
  }
  for (const size of ['1b', '1mb', '2047mb']) assert.deepEqual(configIssues(cfg(size)), [], size);
});

test('a wss handshake whose target fails the TLS handshake (an expired certificate) goes to another target, as a refused connection does: nothing was sent', { timeout: 10_000 }, async () => {
  const ca: TestCa = makeCa();
  const { createServer: createHttpsServer } = await import('node:https');
  const servers: import('node:https').Server[] = [];
  const upgraded: string[] = [];
  const wssTarget = async (name: string, leaf: { cert: Buffer; key: Buffer }) => {
    const server = createHttpsServer({ cert: leaf.cert, key: leaf.key });
    const wss = new WebSocketServer({ server, perMessageDeflate: false });
    wss.on('connection', (ws) => { upgraded.push(name); ws.on('error', () => {}); ws.on('message', (d, bin) => ws.send(d, { binary: bin })); });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    servers.push(server);
    return (server.address() as AddressInfo).port;
  };
  const expiredPort = await wssTarget('expired', ca.issue('ws-expired', { dns: ['127.0.0.1'], expired: true }));
  const goodPort = await wssTarget('good', ca.issue('ws-good', { dns: ['127.0.0.1'] }));
  const t = await startGateway(`
services:
  - name: two
    retries: 1
    tls: {ca: ${ca.certFile}}
    upstream:
      targets: [{url: "https://127.0.0.1:${expiredPort}"}, {url: "https://127.0.0.1:${goodPort}"}]
    routes: [{name: two, paths: [/two], websocket: true}]
`);
  try {
    // round-robin: every other handshake is offered the expired target first
    for (let i = 0; i < 4; i++) {
      const { ws } = await open(`ws://127.0.0.1:${t.port}/two`);
      ws.send(`m${i}`);
      assert.equal((await nextMessage(ws)).data.toString(), `m${i}`);
      const c = closed(ws);
      ws.close(1000);
      await c;
    }
    assert.deepEqual(upgraded, ['good', 'good', 'good', 'good']);
    assert.equal(t.gw.ws.rejected, 0);
  } finally {
    await t.close();
    for (const s of servers) {
      s.closeAllConnections();
      await new Promise<void>((r) => s.close(() => r()));
    }
    ca.cleanup();
  }
});

test('wss upstream addressed by IP (IPv4 and IPv6 literal): verified against its IP SAN, and no IP sent as SNI (RFC 6066 §3)', async () => {
  const ca: TestCa = makeCa();
  const { createServer: createHttpsServer } = await import('node:https');
  const leaf = ca.issue('ws-ip', { dns: ['127.0.0.1', '::1'] });
  const servernames: unknown[] = [];
  const server = createHttpsServer({ cert: leaf.cert, key: leaf.key });
  server.on('secureConnection', (s) => servernames.push((s as import('node:tls').TLSSocket & { servername?: unknown }).servername));
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  wss.on('connection', (ws) => { ws.on('error', () => {}); ws.on('message', (d, bin) => ws.send(d, { binary: bin })); });
  await new Promise<void>((r) => server.listen(0, '::', r));
  const port = (server.address() as AddressInfo).port;
  const t = await startGateway(`
services:
  - name: v4
    url: https://127.0.0.1:${port}
    tls: {ca: ${ca.certFile}}
    routes: [{paths: [/v4], websocket: true}]
  - name: v6
    url: https://[::1]:${port}
    tls: {ca: ${ca.certFile}}
    routes: [{paths: [/v6], websocket: true}]
`);
  try {
    for (const path of ['/v4', '/v6']) {
      const { ws } = await open(`${t.url.replace('http:', 'ws:')}${path}`);
      ws.send(`over ${path}`);
      assert.equal((await nextMessage(ws)).data.toString(), `over ${path}`);
      ws.terminate();
    }
    assert.equal(servernames.length, 2);
    for (const n of servernames) assert.ok(!n, `no SNI for an IP upstream (got ${String(n)})`);
  } finally {
    await t.close();
    for (const ws of wss.clients) ws.terminate();
    await new Promise<void>((r) => wss.close(() => r()));
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    ca.cleanup();
  }
});

test('cross-site WebSocket hijacking: a cross-origin handshake with cookies is refused (403) unless its origin is listed; websocket.origins pins the origins', async () => {
  const t = await startGateway(config());
  try {
    const url = `ws://127.0.0.1:${t.port}/chat`;
    const evil = { origin: 'https://evil.example', cookie: 'session=alice' };
    await assert.rejects(open(url, { headers: evil }), (e: { status?: number }) => e.status === 403);
    // No credentials riding along, the same origin, or no Origin at all (not a browser): allowed.
    const allowed: Record<string, string>[] = [{ origin: 'https://evil.example' }, { origin: `http://127.0.0.1:${t.port}`, cookie: 'session=alice' }, { cookie: 'session=alice' }];
    for (const headers of allowed) {
      const { ws } = await open(url, { headers });
      ws.close();
    }
    // Same host, another scheme: a plain-HTTP page (which a network attacker can write into)
    // is not the origin of a handshake that came over TLS, nor the reverse.
    await assert.rejects(open(url, { headers: { origin: `https://127.0.0.1:${t.port}`, cookie: 'session=alice' } }), (e: { status?: number }) => e.status === 403);
    const pinned = `ws://127.0.0.1:${t.port}/pinned`;
    const { ws } = await open(pinned, { headers: { origin: 'https://app.example', cookie: 'session=alice' } });
    ws.close();
    await assert.rejects(open(pinned, { headers: { origin: 'https://evil.example' } }), (e: { status?: number }) => e.status === 403);
  } finally {
    await t.close();
  }
});

test('websocket.origins are compared as browsers send Origin: an entry written with its default port, in capitals, with a trailing / or a Unicode host still admits that origin', async () => {
  const t = await startGateway(config());
  try {
    const url = `ws://127.0.0.1:${t.port}/pinned-written`;
    for (const origin of ['https://app.example', 'http://xn--bcher-kva.example']) {
      const { ws } = await open(url, { headers: { origin, cookie: 'session=alice' } });
      ws.close();
    }
    await assert.rejects(open(url, { headers: { origin: 'https://evil.example' } }), (e: { status?: number }) => e.status === 403);
  } finally {
    await t.close();
  }
});

test('a websocket.origins entry that is no origin (no scheme, a path, a query) is a config error with its path and line: it could never match an Origin', () => {
  const cfg = (origin: string) => `services:\n  - name: s\n    url: http://127.0.0.1:1\n    routes:\n      - paths: [/ws]\n        websocket:\n          origins: ["https://ok.example", ${JSON.stringify(origin)}]\n`;
  for (const origin of ['app.example', 'https://app.example/app', 'https://app.example?x=1', 'https://user@app.example', '//app.example']) {
    const issues = configIssues(cfg(origin));
    assert.equal(issues.length, 1, origin);
    assert.equal(issues[0]!.path, 'services[0].routes[0].websocket.origins[1]', origin);
    assert.equal(issues[0]!.line, 7, origin);
    assert.match(issues[0]!.message, /is not an origin/, origin);
  }
  for (const origin of ['*', 'null', 'https://app.example/', 'http://127.0.0.1:8080', 'chrome-extension://abcdef']) assert.deepEqual(configIssues(cfg(origin)), [], origin);
});

test('fields plugins add for the client (RateLimit, cors) are on the 101 and on the gateway\'s and the upstream\'s refusals of the handshake, as on any response; never over the handshake\'s own', async () => {
  const t = await startGateway(`
services:
  - name: chat
    url: ${up.url}
    plugins:
      - {name: rate-limit, config: {limit: 50, window: 1h, by: ip}}
      - {name: cors, config: {origins: ["https://app.example"]}}
    routes:
      - {name: chat, paths: [/chat], websocket: true}
      - {name: pinned, paths: [/pinned], websocket: {origins: ["https://other.example"]}}
  - name: plain
    url: ${http.url}
    plugins: [{name: rate-limit, config: {limit: 50, window: 1h, by: ip}}]
    routes: [{name: refusing, paths: [/refusing], websocket: true}]
`);
  try {
    const { ws, res } = await open(`ws://127.0.0.1:${t.port}/chat`, { headers: { origin: 'https://app.example' } });
    assert.equal(res.statusCode, 101);
    assert.match(String(res.headers['ratelimit']), /^"[^"]+";r=4[0-9];t=\d+$/);
    assert.match(String(res.headers['ratelimit-policy']), /q=50/);
    assert.equal(res.headers['access-control-allow-origin'], 'https://app.example');
    assert.ok(res.headers['x-request-id']);
    // the handshake's own fields once each (ws checked Sec-WebSocket-Accept: the session opened)
    const names = res.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    for (const n of ['upgrade', 'connection', 'sec-websocket-accept', 'ratelimit', 'x-request-id']) assert.equal(names.filter((x) => x === n).length, 1, n);
    ws.close();
    // The gateway's own refusal (a cross-origin handshake with a cookie): 403 with the fields too
    const refused = await new Promise<IncomingMessage>((resolve, reject) => {
      const w = new WebSocket(`ws://127.0.0.1:${t.port}/pinned`, { headers: { origin: 'https://app.example', cookie: 's=1' }, handshakeTimeout: 3000 });
      w.once('unexpected-response', (_req, r) => { resolve(r); r.resume(); });
      w.once('error', reject);
    });
    assert.equal(refused.statusCode, 403);
    assert.match(String(refused.headers['ratelimit']), /^"[^"]+";r=4[0-9];t=\d+$/);
    assert.equal(refused.headers['access-control-allow-origin'], 'https://app.example');
    assert.equal(refused.headers['content-type'], 'application/problem+json');
    // An upstream's refusal (a plain HTTP server answers the handshake with a 200), relayed with them
    const relayed = await rawRequest(t.port, 'GET /refusing HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
    assert.match(relayed.text, /^HTTP\/1\.1 200 /);
    assert.match(relayed.text, /\r\nratelimit: "[^"]+";r=4[0-9];t=\d+\r\n/i);
    assert.match(relayed.text, /\r\nratelimit-policy: /i);
  } finally {
    await t.close();
  }
});

test('the service bulkhead holds for WebSockets: a relay keeps its slot while open; past max_concurrent the handshake is 503', async () => {
  const t = await startGateway(`
services:
  - name: chat
    url: ${up.url}
    circuit_breaker: {max_concurrent: 1}
    routes: [{name: chat, paths: [/chat], websocket: true}]
`);
  try {
    const url = `ws://127.0.0.1:${t.port}/chat`;
    const first = await open(url);
    await assert.rejects(open(url), (e: { status?: number }) => e.status === 503);
    const done = closed(first.ws);
    first.ws.close();
    await done;
    await eventually(async () => {
      try {
        const again = await open(url);
        again.ws.close();
        return true;
      } catch {
        return false;
      }
    });
  } finally {
    await t.close();
  }
});

test('handshakes the upstream never judged (the client\'s bad handshake) are no successes for the circuit: they cannot hold open a failing service\'s circuit', async () => {
  const dead = await startWsUpstream();
  const deadUrl = dead.url;
  await dead.close(); // nothing listens there any more
  const t = await startGateway(`
services:
  - name: chat
    url: ${deadUrl}
    circuit_breaker: {failure_ratio: 0.5, min_requests: 2, open_for: 30s}
    routes: [{name: chat, paths: [/chat], websocket: true}]
`);
  try {
    const bad = (v: string) => `GET /chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: ${v}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;
    for (let i = 0; i < 6; i++) {
      const r = await rawRequest(t.port, bad('12'));
      assert.match(r.text, /^HTTP\/1\.1 426 /);
    }
    const url = `ws://127.0.0.1:${t.port}/chat`;
    for (let i = 0; i < 2; i++) await assert.rejects(open(url), (e: { status?: number }) => e.status === 502);
    // Two failures out of the two handshakes the upstream took part in: the circuit is open.
    const refused = await request(`${t.url}/chat`);
    assert.equal(refused.status, 503);
    assert.equal(JSON.parse(refused.body).type, 'urn:turnpike:problem:circuit-open');
  } finally {
    await t.close();
  }
});

test('a half-open circuit takes a WebSocket handshake as one of its trials: another meanwhile is refused, and its success closes the circuit', { timeout: 10_000 }, async () => {
  let failing = true;
  let slow = false;
  const wss = new WebSocketServer({
    port: 0, host: '127.0.0.1',
    verifyClient: (_info, cb) => (failing ? cb(false, 503) : setTimeout(() => cb(true), slow ? 300 : 0)),
  });
  wss.on('connection', (ws) => ws.on('message', (d) => ws.send(d)));
  await new Promise<void>((r) => wss.once('listening', () => r()));
  const t = await startGateway(`
admin: {listen: 127.0.0.1:0}
services:
  - name: live
    url: http://127.0.0.1:${(wss.address() as AddressInfo).port}
    circuit_breaker: {failure_ratio: 0.5, min_requests: 2, window: 10s, open_for: 300ms, half_open_requests: 1}
    routes: [{name: live, paths: [/live], websocket: true}]
`);
  const circuit = async () => ((JSON.parse((await request(`${t.adminUrl}/health`)).body) as { circuits: Record<string, string> }).circuits.live);
  const status = (p: Promise<unknown>) => p.then(() => 101, (err: { status?: number }) => err.status ?? 0);
  try {
    for (let i = 0; i < 2; i++) assert.equal(await status(open(`ws://127.0.0.1:${t.port}/live`)), 503);
    assert.equal(await circuit(), 'open');
    assert.equal(await status(open(`ws://127.0.0.1:${t.port}/live`)), 503);
    await eventually(async () => (await circuit()) === 'half-open', 2000, 20);
    failing = false;
    slow = true;
    const trial = open(`ws://127.0.0.1:${t.port}/live`);
    await new Promise((r) => setTimeout(r, 100));
    // the trial is still being judged: a second handshake is refused, as a second HTTP request is
    assert.equal(await status(open(`ws://127.0.0.1:${t.port}/live`)), 503);
    const { ws } = await trial;
    assert.equal(await circuit(), 'closed', 'the trial\'s success closes the circuit');
    ws.close(1000);
    slow = false;
    const again = await open(`ws://127.0.0.1:${t.port}/live`);
    again.ws.close(1000);
  } finally {
    await t.close();
    for (const c of wss.clients) c.terminate();
    await new Promise((r) => wss.close(r));
  }
});

test('a handshake whose target refuses the connection goes to another target (retries, connect-error: nothing was sent), as an HTTP request does; without retries it is a 502', { timeout: 10_000 }, async () => {
  // a port nothing listens on: its connections are refused
  const dead = await startUpstream();
  const deadUrl = dead.url;
  await dead.close();
  const conf = (retries: number) => `
services:
  - name: two
    retries: ${retries}
    upstream:
      targets: [{url: "${deadUrl}"}, {url: "${up.url}"}]
    routes: [{name: two, paths: [/two], websocket: true}]
`;
  const t = await startGateway(conf(1));
  try {
    const before = up.handshakes.length;
    // round-robin: every other handshake is offered the dead target first
    for (let i = 0; i < 4; i++) {
      const { ws } = await open(`ws://127.0.0.1:${t.port}/two`);
      ws.send(`m${i}`);
      assert.equal((await nextMessage(ws)).data.toString(), `m${i}`);
      const c = closed(ws);
      ws.close(1000);
      await c;
    }
    assert.equal(up.handshakes.length - before, 4);
    assert.equal(t.gw.ws.rejected, 0);
  } finally {
    await t.close();
  }
  const t0 = await startGateway(conf(0));
  try {
    const statuses: number[] = [];
    for (let i = 0; i < 2; i++) {
      statuses.push(await open(`ws://127.0.0.1:${t0.port}/two`).then(({ ws }) => { ws.close(1000); return 101; }, (err: { status?: number }) => err.status ?? 0));
    }
    assert.deepEqual(statuses.sort(), [101, 502]);
  } finally {
    await t0.close();
  }
});
