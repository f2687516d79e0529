/**
 * WebSocket relay (src/server/websocket.ts) over real loopback sockets: `ws` servers as upstreams,
 * `ws` clients and raw net sockets as downstream clients, and a plain node:http server whose
 * 'upgrade' event calls relayWebSocket() the way the gateway does. Self-contained (no gateway).
 * Every test has a time bound and closes what it started.
 */
// (first: sets the close-handshake budget websocket.ts reads at load)
import { WS_CLOSE_GRACE_MS } from './ws-close-grace.js';
import { test } from 'node:test';
import { createHash } from 'node:crypto';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, connect, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { WebSocket, WebSocketServer, type ServerOptions } from 'ws';
import { makeCa } from './certs.js';
import { relayWebSocket, closeAllWebSockets, openWebSockets, type WsRelayOptions, type WsStats } from '../src/server/websocket.js';

const T = { timeout: 20_000 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Rejects if `p` does not settle within ms. */
function within<V>(p: Promise<V>, ms: number, what: string): Promise<V> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_, rej) => { t = setTimeout(() => rej(new Error(`timed out waiting for ${what}`)), ms); })])
    .finally(() => clearTimeout(t));
}

/** Polls cond until true (or fails after ms). */
async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const listenPort = (s: Server | NetServer) => new Promise<number>((r) => s.listen(0, '127.0.0.1', () => r((s.address() as AddressInfo).port)));

// ---- upstreams ----

interface UpConn { ws: WebSocket; req: IncomingMessage; closed: { code: number; reason: string } | null }
interface WsUpstream { url: string; wss: WebSocketServer; conns: UpConn[]; close(): Promise<void> }

/** A ws upstream; echoes every message with its binary flag unless onConnection says otherwise. */
async function wsUpstream(onConnection?: (ws: WebSocket, req: IncomingMessage) => void, options: ServerOptions = {}): Promise<WsUpstream> {
  const server = createServer();
  const wss = new WebSocketServer({ server, perMessageDeflate: false, ...options });
  const conns: UpConn[] = [];
  wss.on('connection', (ws, req) => {
    const c: UpConn = { ws, req, closed: null };
    conns.push(c);
    ws.on('error', () => {});
    ws.on('close', (code, reason) => { c.closed = { code, reason: reason.toString() }; });
    if (onConnection) onConnection(ws, req);
    else ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
  const port = await listenPort(server);
  return {
    url: `ws://127.0.0.1:${port}`, wss, conns,
    close: async () => {
      for (const c of conns) c.ws.terminate();
      await new Promise<void>((r) => wss.close(() => r()));
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** A TCP server that accepts and never answers; records its connections and their closing. */
async function silentUpstream(): Promise<{ url: string; sockets: Socket[]; closedCount(): number; close(): Promise<void> }> {
  const sockets: Socket[] = [];
  let closed = 0;
  // resume(): read (and drop) the request, or the peer's FIN would never surface as 'end'/'close'.
  const server = createNetServer((s) => { sockets.push(s); s.resume(); s.on('error', () => {}); s.on('close', () => closed++); });
  const port = await listenPort(server);
  return {
    url: `ws://127.0.0.1:${port}`, sockets, closedCount: () => closed,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

/** An HTTP server answering every upgrade attempt with the given raw response. */
async function rawUpgradeUpstream(response: (req: IncomingMessage) => string | Buffer): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer();
  server.on('upgrade', (req: IncomingMessage, socket: Socket) => { socket.on('error', () => {}); socket.end(response(req)); });
  const port = await listenPort(server);
  return { url: `ws://127.0.0.1:${port}`, close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }) };
}

// ---- the gateway stand-in ----

interface Gw {
  port: number; url: string;
  rejects: number[]; closes: WsStats[]; opens: number;
  close(): Promise<void>;
}

async function gateway(upstreamUrl: string, opts: Partial<WsRelayOptions> = {}): Promise<Gw> {
  const server = createServer((_req, res) => res.writeHead(426).end());
  let n = 0;
  const gw: Gw = {
    port: 0, url: '', rejects: [], closes: [], opens: 0,
    close: async () => {
      await closeAllWebSockets(1000);
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const requestId = `req-${++n}`;
    relayWebSocket({
      req, socket, head, url: upstreamUrl + req.url,
      headers: { host: new URL(upstreamUrl).host, 'x-request-id': requestId, 'x-forwarded-for': '127.0.0.1' },
      connectTimeout: 2000, idleTimeout: 10_000, maxMessage: 16 * 1024 * 1024, requestId,
      responseHeaders: { 'x-request-id': requestId },
      onOpen: () => { gw.opens++; },
      onClose: (s) => { gw.closes.push(s); },
      onReject: (status) => { gw.rejects.push(status); },
      ...opts,
    });
  });
  gw.port = await listenPort(server);
  gw.url = `ws://127.0.0.1:${gw.port}`;
  return gw;
}

// ---- clients ----

interface Client { ws: WebSocket; open: Promise<IncomingMessage>; closed: Promise<{ code: number; reason: string }>; messages: { data: Buffer; isBinary: boolean }[] }

function client(url: string, protocols: string[] = []): Client {
  const ws = new WebSocket(url, protocols, { perMessageDeflate: false });
  const messages: Client['messages'] = [];
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => messages.push({ data: data as Buffer, isBinary }));
  const open = new Promise<IncomingMessage>((resolve, reject) => {
    let res: IncomingMessage;
    ws.once('upgrade', (r) => { res = r; });
    ws.once('open', () => resolve(res));
    ws.once('unexpected-response', (_req, r) => reject(new Error(`unexpected ${r.statusCode}`)));
    ws.once('error', reject);
  });
  open.catch(() => {});
  const closed = new Promise<{ code: number; reason: string }>((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
  return { ws, open: within(open, 5000, 'client open'), closed: within(closed, 10_000, 'client close'), messages };
}

const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
const handshake = (extra = '', requestLine = 'GET /chat HTTP/1.1') =>
  `${requestLine}\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${KEY}\r\n${extra}\r\n`;

interface RawResponse { status: number; headers: Record<string, string>; body: Buffer; closed: boolean }

/** Sends raw bytes, reads until the server closes (or 5 s), parses one HTTP/1.1 response. */
function rawExchange(port: number, data: string | Buffer): Promise<RawResponse> {
  return within(new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    sock.on('error', () => {});
    sock.on('connect', () => sock.write(data));
    sock.on('data', (d: Buffer) => chunks.push(d));
    sock.on('close', () => {
      const all = Buffer.concat(chunks);
      const end = all.indexOf('\r\n\r\n');
      const [statusLine, ...lines] = all.subarray(0, end).toString('latin1').split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of lines) { const i = l.indexOf(':'); headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim(); }
      resolve({ status: Number(statusLine!.split(' ')[1]), headers, body: all.subarray(end + 4), closed: true });
    });
  }), 5000, 'raw response');
}

// ---- tests ----

test('echo: text, binary and fragmented messages round-trip; headers both ways; onClose stats', T, async () => {
  const up = await wsUpstream();
  up.wss.on('headers', (lines: string[]) => lines.push('Set-Cookie: sticky=a1', 'X-Request-Id: upstream-id', 'Keep-Alive: timeout=5'));
  const gw = await gateway(up.url);
  const c = client(`${gw.url}/chat?room=1`);
  try {
    const res = await c.open;
    assert.equal(res.headers['x-request-id'], 'req-1'); // the gateway's, not the upstream's
    assert.deepEqual(res.headers['set-cookie'], ['sticky=a1']);
    assert.equal(res.headers['keep-alive'], undefined);
    assert.equal(gw.opens, 1);
    assert.equal(openWebSockets(), 1);
    const seen = up.conns[0]!.req;
    assert.equal(seen.url, '/chat?room=1');
    assert.equal(seen.headers['x-request-id'], 'req-1');
    assert.equal(seen.headers.host, new URL(up.url).host);
    assert.equal(seen.headers['sec-websocket-protocol'], undefined);
    assert.equal(seen.headers['sec-websocket-extensions'], undefined);

    c.ws.send('héllo');
    c.ws.send(Buffer.from([0, 1, 2, 255]));
    c.ws.send(Buffer.from('frag-'), { binary: false, fin: false });
    c.ws.send(Buffer.from('ment'), { binary: false, fin: true });
    await until(() => c.messages.length === 3, 'echoes');
    assert.deepEqual(c.messages.map((m) => [m.data.toString('latin1'), m.isBinary]), [
      [Buffer.from('héllo').toString('latin1'), false],
      ['\x00\x01\x02\xff', true],
      ['frag-ment', false],
    ]);

    c.ws.close(1000, 'done');
    assert.deepEqual(await c.closed, { code: 1000, reason: 'done' });
    await until(() => gw.closes.length === 1, 'onClose');
    const s = gw.closes[0]!;
    const bytes = Buffer.byteLength('héllo') + 4 + 9;
    assert.deepEqual({ ...s, durationMs: 0 }, {
      messagesIn: 3, messagesOut: 3, bytesIn: bytes, bytesOut: bytes, durationMs: 0, code: 1000, reason: 'done', closedBy: 'client',
    });
    assert.ok(s.durationMs >= 0 && s.durationMs < 5000);
    await until(() => up.conns[0]!.closed !== null, 'upstream close');
    assert.deepEqual(up.conns[0]!.closed, { code: 1000, reason: 'done' });
    assert.equal(openWebSockets(), 0);
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('a 101 does not relay the fields its Connection header names (RFC 9110 §7.6.1)', T, async () => {
  const up = await wsUpstream();
  up.wss.on('headers', (lines: string[]) => {
    for (let i = 0; i < lines.length; i++) if (/^connection:/i.test(lines[i]!)) lines[i] = 'Connection: Upgrade, X-Secret';
    lines.push('X-Secret: s3cr3t', 'X-Public: p');
  });
  const gw = await gateway(up.url);
  const c = client(`${gw.url}/chat`);
  try {
    const res = await c.open;
    assert.equal(res.headers['x-secret'], undefined);
    assert.equal(res.headers['x-public'], 'p');
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('a 101\'s relayed fields keep their bytes past ASCII (UTF-8 or latin1 obs-text), never re-encoded', T, async () => {
  const up = await rawUpgradeUpstream((req) => {
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    return Buffer.concat([
      Buffer.from(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n`),
      Buffer.from('Set-Cookie: name=caf\u00e9\r\n', 'utf8'), Buffer.from('X-Latin1: caf\u00e9\r\n\r\n', 'latin1'),
    ]);
  });
  const gw = await gateway(up.url);
  const sock = connect(gw.port, '127.0.0.1');
  sock.on('error', () => {});
  try {
    sock.write(handshake());
    const chunks: Buffer[] = [];
    const head = await within(new Promise<Buffer>((resolve) => sock.on('data', (d: Buffer) => {
      chunks.push(d);
      const all = Buffer.concat(chunks);
      if (all.includes('\r\n\r\n')) resolve(all.subarray(0, all.indexOf('\r\n\r\n') + 2));
    })), 5000, '101 head');
    assert.match(head.toString('latin1'), /^HTTP\/1\.1 101 /);
    assert.ok(head.includes(Buffer.from('\r\nSet-Cookie: name=caf\u00e9\r\n', 'utf8')), head.toString('hex'));
    assert.ok(head.includes(Buffer.from('\r\nX-Latin1: caf\u00e9\r\n', 'latin1')), head.toString('hex'));
    assert.equal(gw.opens, 1);
  } finally {
    sock.destroy();
    await gw.close();
    await up.close();
  }
});

test('subprotocols: the client list is offered upstream and the upstream choice is the 101\'s', T, async () => {
  const up = await wsUpstream(undefined, { handleProtocols: (p) => (p.has('v2') ? 'v2' : false) });
  const gw = await gateway(up.url);
  const c = client(gw.url, ['v1', 'v2']);
  try {
    const res = await c.open;
    assert.equal(c.ws.protocol, 'v2');
    assert.equal(res.headers['sec-websocket-protocol'], 'v2');
    assert.equal(up.conns[0]!.req.headers['sec-websocket-protocol'], 'v1,v2');
    assert.equal(up.conns[0]!.ws.protocol, 'v2');
    c.ws.send('hi');
    await until(() => c.messages.length === 1, 'echo');
    assert.deepEqual(gw.rejects, []);
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('subprotocols: an upstream that picks none of the offered ones is relayed (RFC 6455 §4.2.2): a 101 without Sec-WebSocket-Protocol, messages relayed', T, async () => {
  const up = await wsUpstream(undefined, { handleProtocols: () => false });
  const gw = await gateway(up.url);
  // A client that takes a 101 choosing none (python-websockets, gorilla, Java do): ws with the offer
  // in its headers, as ws itself fails such a 101 when given the list (like Chromium).
  const ws = new WebSocket(`${gw.url}/chat`, { perMessageDeflate: false, headers: { 'Sec-WebSocket-Protocol': 'foo, bar' } });
  const messages: string[] = [];
  ws.on('error', () => {});
  ws.on('message', (d) => messages.push(d.toString()));
  let strict: Client | undefined;
  try {
    const res = await within(new Promise<IncomingMessage>((resolve, reject) => {
      ws.once('upgrade', (r) => ws.once('open', () => resolve(r)));
      ws.once('unexpected-response', (_q, r) => reject(new Error(`unexpected ${r.statusCode}`)));
      ws.once('error', reject);
    }), 5000, 'client open');
    assert.equal(res.statusCode, 101);
    assert.equal(res.headers['sec-websocket-protocol'], undefined);
    assert.equal(ws.protocol, '');
    const seen = up.conns.find((u) => u.req.headers['sec-websocket-protocol'] === 'foo,bar');
    assert.ok(seen, 'the offer reached the upstream');
    assert.equal(seen.ws.protocol, '');
    ws.send('ping-pong');
    await until(() => messages.length === 1, 'echo');
    assert.deepEqual(messages, ['ping-pong']);
    // The strict client gets the same 101 and fails it itself: its call, not the gateway's.
    strict = client(`${gw.url}/chat`, ['foo', 'bar']);
    await assert.rejects(strict.open, /Server sent no subprotocol/);
    assert.deepEqual(gw.rejects, []);
  } finally {
    ws.terminate();
    strict?.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('subprotocols: a 101 picking one the client did not offer, several, or one when none was offered is a 502 (RFC 6455 §4.1)', T, async () => {
  const picks: Record<string, string> = { '/other': 'v3', '/several': 'v1, v2', '/empty': '', '/unasked': 'v1' };
  const up = await rawUpgradeUpstream((req) => {
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    return `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n` +
      `Sec-WebSocket-Protocol: ${picks[req.url!]}\r\n\r\n`;
  });
  const gw = await gateway(up.url);
  try {
    for (const path of Object.keys(picks)) {
      const offer = path === '/unasked' ? '' : 'Sec-WebSocket-Protocol: v1, v2\r\n';
      const r = await rawExchange(gw.port, handshake(offer, `GET ${path} HTTP/1.1`));
      assert.equal(r.status, 502, path);
      assert.equal(r.headers['sec-websocket-protocol'], undefined);
      assert.equal(JSON.parse(r.body.toString()).type, 'urn:turnpike:problem:bad-gateway');
    }
    assert.deepEqual(gw.rejects, [502, 502, 502, 502]);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('plugins\' fields go on the 101 and the refusals, never over the handshake\'s own (Upgrade, Connection, Sec-WebSocket-*), the framing or the gateway\'s', T, async () => {
  const up = await wsUpstream(undefined, { handleProtocols: () => 'chat' });
  up.wss.on('headers', (lines: string[]) => lines.push('RateLimit: "upstream";r=1'));
  const pluginHeaders = [
    'RateLimit', '"p";r=9;t=60', 'Access-Control-Allow-Origin', 'https://app.example', 'Vary', 'Origin',
    'Upgrade', 'h2c', 'Connection', 'close', 'Sec-WebSocket-Accept', 'bogus', 'Sec-WebSocket-Protocol', 'other',
    'Sec-WebSocket-Extensions', 'permessage-deflate', 'Content-Length', '9', 'Transfer-Encoding', 'chunked', 'X-Request-Id', 'plugin-id',
    'Content-Type', 'text/html', 'Retry-After', '999',
  ];
  const gw = await gateway(up.url, { pluginHeaders });
  const c = client(`${gw.url}/chat`, ['chat']);
  try {
    // ws checked Accept, the subprotocol and the extensions against its offer: it opened
    const res = await c.open;
    assert.equal(c.ws.protocol, 'chat');
    assert.equal(c.ws.extensions, '');
    const fields = (r: IncomingMessage, n: string) => r.rawHeaders.filter((_, i) => i % 2 === 0 && r.rawHeaders[i]!.toLowerCase() === n).length;
    assert.equal(res.headers['ratelimit'], '"p";r=9;t=60', 'the plugin\'s replaces the upstream\'s');
    assert.equal(res.headers['access-control-allow-origin'], 'https://app.example');
    assert.equal(res.headers['vary'], 'Origin');
    assert.equal(res.headers['x-request-id'], 'req-1');
    assert.equal(res.headers['upgrade'], 'websocket');
    assert.equal(res.headers['connection'], 'Upgrade');
    for (const n of ['upgrade', 'connection', 'sec-websocket-accept', 'sec-websocket-protocol', 'ratelimit', 'x-request-id']) assert.equal(fields(res, n), 1, n);
    for (const n of ['sec-websocket-extensions', 'content-length', 'transfer-encoding']) assert.equal(fields(res, n), 0, n);
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
  // The gateway's own refusal (upstream down): the problem's fields stay its own
  const probe = createNetServer();
  const port = await listenPort(probe);
  await new Promise((r) => probe.close(r));
  const down = await gateway(`ws://127.0.0.1:${port}`, { pluginHeaders });
  try {
    const r = await rawExchange(down.port, handshake());
    assert.equal(r.status, 502);
    assert.equal(r.headers['ratelimit'], '"p";r=9;t=60');
    assert.equal(r.headers['access-control-allow-origin'], 'https://app.example');
    assert.equal(r.headers['content-type'], 'application/problem+json');
    assert.equal(r.headers['connection'], 'close');
    assert.equal(r.headers['x-request-id'], 'req-1');
    assert.equal(r.headers['upgrade'], undefined);
    assert.equal(r.headers['transfer-encoding'], undefined);
    assert.equal(Number(r.headers['content-length']), r.body.length);
    assert.equal(JSON.parse(r.body.toString()).status, 502);
  } finally {
    await down.close();
  }
});

test('upstream refuses with 403: status, end-to-end headers (Via appended) and body relayed whole with a fresh content-length; a body over 64 KiB is a 502, never cut', T, async () => {
  const big = Buffer.alloc(100 * 1024, 'x');
  const edge = Buffer.alloc(64 * 1024, 'y');
  const chunked = (b: Buffer) => `${b.length.toString(16)}\r\n${b.toString('latin1')}\r\n`;
  const up = await rawUpgradeUpstream((req) => req.url === '/big'
    ? Buffer.concat([Buffer.from(`HTTP/1.1 403 Forbidden\r\ncontent-length: ${big.length}\r\n\r\n`), big])
    : req.url === '/big-chunked'
      ? `HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n${chunked(edge)}${chunked(Buffer.from('z'))}0\r\n\r\n`
      : req.url === '/edge'
        ? `HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n${chunked(edge)}0\r\n\r\n`
        : 'HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nx-why: nope\r\nkeep-alive: timeout=5\r\nx-request-id: upstream-id\r\n' +
          'set-cookie: tp_console=tossed; Path=/\r\nvia: 1.1 origin\r\n' +
          'transfer-encoding: chunked\r\n\r\n3\r\nden\r\n3\r\nied\r\n0\r\n\r\n');
  const gw = await gateway(up.url, { via: '1.1 turnpike' });
  try {
    const r = await rawExchange(gw.port, handshake());
    assert.equal(r.status, 403);
    assert.equal(r.headers['x-why'], 'nope');
    assert.equal(r.headers['content-type'], 'text/plain');
    assert.equal(r.headers['content-length'], '6');
    assert.equal(r.headers['connection'], 'close');
    assert.equal(r.headers['x-request-id'], 'req-1'); // the gateway's own header wins
    assert.equal(r.headers['via'], '1.1 origin, 1.1 turnpike');
    assert.equal(r.headers['transfer-encoding'], undefined);
    assert.equal(r.headers['keep-alive'], undefined);
    assert.equal(r.headers['set-cookie'], undefined); // the console's session cookie is the gateway's
    assert.equal(r.body.toString(), 'denied');

    // 64 KiB exactly: relayed whole.
    const e = await rawExchange(gw.port, handshake('', 'GET /edge HTTP/1.1'));
    assert.equal(e.status, 403);
    assert.equal(e.headers['content-length'], String(edge.length));
    assert.ok(e.body.equals(edge));
    // Over it (declared, or counted as it comes): a 502 problem, not a cut body labelled complete.
    for (const path of ['/big', '/big-chunked']) {
      const b = await rawExchange(gw.port, handshake('', `GET ${path} HTTP/1.1`));
      assert.equal(b.status, 502, path);
      assert.equal(b.headers['content-type'], 'application/problem+json', path);
      assert.equal(b.headers['content-length'], String(b.body.length), path);
      assert.match(JSON.parse(b.body.toString()).detail, /over 65536 bytes/, path);
    }
    assert.deepEqual(gw.rejects, [403, 403, 502, 502]);
    assert.equal(gw.opens, 0);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('an upstream handshake answer whose status is no final one (600-999, 0-99, a 101 without Upgrade) is a 502 problem, never relayed', T, async () => {
  const up = await rawUpgradeUpstream((req) => {
    const line = req.url === '/s999' ? '999 Weird' : req.url === '/s600' ? '600 Odd' : req.url === '/s042' ? '042 Low' : '101 Switching Protocols';
    return `HTTP/1.1 ${line}\r\nx-up: 1\r\ncontent-length: 2\r\n\r\nhi`;
  });
  const gw = await gateway(up.url);
  try {
    for (const path of ['/s999', '/s600', '/s042', '/s101']) {
      const r = await rawExchange(gw.port, handshake('', `GET ${path} HTTP/1.1`));
      assert.equal(r.status, 502, path);
      assert.equal(r.headers['content-type'], 'application/problem+json', path);
      assert.equal(r.headers['x-up'], undefined, path);
      assert.equal(Number(r.headers['content-length']), r.body.length, path);
      assert.match(JSON.parse(r.body.toString()).detail, /invalid status/, path);
    }
    assert.deepEqual(gw.rejects, [502, 502, 502, 502]);
    assert.equal(gw.opens, 0);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('an upstream 426 keeps the Upgrade it must carry (RFC 9110 §15.5.22), named in Connection', T, async () => {
  const up = await rawUpgradeUpstream(() => 'HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\ncontent-length: 0\r\n\r\n');
  const gw = await gateway(up.url);
  try {
    const r = await rawExchange(gw.port, handshake());
    assert.equal(r.status, 426);
    assert.equal(r.headers['upgrade'], 'websocket');
    assert.equal(r.headers['connection'], 'upgrade, close');
    assert.equal(r.headers['sec-websocket-version'], '8');
    assert.deepEqual(gw.rejects, [426]);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('upstream down: 502 problem+json with the request id', T, async () => {
  const probe = createNetServer();
  const port = await listenPort(probe);
  await new Promise((r) => probe.close(r));
  const gw = await gateway(`ws://127.0.0.1:${port}`);
  try {
    const r = await rawExchange(gw.port, handshake());
    assert.equal(r.status, 502);
    assert.equal(r.headers['content-type'], 'application/problem+json');
    assert.equal(r.headers['connection'], 'close');
    assert.equal(r.headers['x-request-id'], 'req-1');
    assert.equal(Number(r.headers['content-length']), r.body.length);
    const body = JSON.parse(r.body.toString());
    assert.equal(body.type, 'urn:turnpike:problem:bad-gateway');
    assert.equal(body.status, 502);
    assert.equal(body.request_id, 'req-1');
    assert.doesNotMatch(body.detail, /127\.0\.0\.1/);
    assert.deepEqual(gw.rejects, [502]);
  } finally {
    await gw.close();
  }
});

test('upstream accepts TCP but never answers the handshake: 504 within the connect timeout, upstream connection closed', T, async () => {
  const up = await silentUpstream();
  const gw = await gateway(up.url, { connectTimeout: 300 });
  try {
    const t0 = Date.now();
    const r = await rawExchange(gw.port, handshake());
    const took = Date.now() - t0;
    assert.equal(r.status, 504);
    assert.equal(JSON.parse(r.body.toString()).type, 'urn:turnpike:problem:gateway-timeout');
    assert.ok(took >= 250 && took < 1500, `took ${took} ms`);
    assert.deepEqual(gw.rejects, [504]);
    await until(() => up.closedCount() === 1, 'upstream connection closed', 2000);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('bad client handshakes: 400 problem+json, no upstream connection made', T, async () => {
  const up = await silentUpstream();
  const gw = await gateway(up.url);
  try {
    const bad = [
      'GET /chat HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n', // no key
      handshake().replace(KEY, 'short=='),
      handshake('Sec-WebSocket-Protocol: a,,b\r\n'),
      handshake('Sec-WebSocket-Protocol: a, a\r\n'),
      handshake('', 'POST /chat HTTP/1.1'),
    ];
    for (const req of bad) {
      const r = await rawExchange(gw.port, req);
      assert.equal(r.status, 400, req);
      assert.equal(r.headers['content-type'], 'application/problem+json');
      assert.equal(r.headers['connection'], 'close');
      const body = JSON.parse(r.body.toString());
      assert.equal(body.type, 'urn:turnpike:problem:bad-request');
      assert.equal(body.title, 'Bad Request');
      assert.equal(body.status, 400);
      assert.match(body.request_id, /^req-\d+$/);
      assert.equal(typeof body.detail, 'string');
    }
    assert.deepEqual(gw.rejects, bad.map(() => 400));
    await sleep(100);
    assert.equal(up.sockets.length, 0);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('a Sec-WebSocket-Protocol list padded with what is no OWS (a latin1 NBSP) is a 400 problem before any upstream connection, as ws would refuse it', T, async () => {
  const up = await wsUpstream();
  const gw = await gateway(up.url);
  try {
    const r = await rawExchange(gw.port, Buffer.from(handshake('Sec-WebSocket-Protocol: a,\xa0b\r\n'), 'latin1'));
    assert.equal(r.status, 400);
    assert.equal(r.headers['content-type'], 'application/problem+json');
    assert.match(JSON.parse(r.body.toString()).detail, /Sec-WebSocket-Protocol/);
    // Spaces and tabs are OWS: offered upstream as the tokens they pad.
    const c = client(gw.url + '/ok', ['a', 'b']);
    await c.open;
    c.ws.close();
    await c.closed;
    assert.deepEqual(up.conns.map((x) => x.req.url), ['/ok']);
    assert.equal(up.conns[0]!.req.headers['sec-websocket-protocol'], 'a,b');
    assert.deepEqual(gw.rejects, [400]);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('a handshake with a body (Content-Length, chunked) is a 400: its body is never read as the client\'s first frames', T, async () => {
  const up = await wsUpstream();
  const gw = await gateway(up.url);
  try {
    // A masked text frame as the body: after a 101 it would have reached the upstream as a message.
    const payload = Buffer.from('smuggled');
    const mask = Buffer.from([1, 2, 3, 4]);
    const frame = Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, payload.map((b, i) => b ^ mask[i % 4]!)]).toString('latin1');
    const bodies = [
      handshake(`Content-Length: ${frame.length}\r\n`) + frame,
      handshake('Transfer-Encoding: chunked\r\n') + `${frame.length.toString(16)}\r\n${frame}\r\n0\r\n\r\n`,
    ];
    for (const req of bodies) {
      const r = await rawExchange(gw.port, req);
      assert.equal(r.status, 400, req);
      assert.equal(r.headers['content-type'], 'application/problem+json');
      assert.match(JSON.parse(r.body.toString()).detail, /has no body/);
    }
    // Content-Length: 0 is no body.
    const sock = connect(gw.port, '127.0.0.1');
    sock.on('error', () => {});
    sock.write(handshake('Content-Length: 0\r\n').replace('GET /chat', 'GET /zero'));
    const head = await within(new Promise<string>((r) => sock.once('data', (d: Buffer) => r(d.toString('latin1')))), 5000, '101');
    sock.destroy();
    assert.match(head, /^HTTP\/1\.1 101 /);
    assert.deepEqual(up.conns.map((c) => c.req.url), ['/zero']);
    assert.deepEqual(gw.rejects, [400, 400]);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('a Sec-WebSocket-Version other than 13: 426 with Sec-WebSocket-Version: 13 and Upgrade (RFC 6455 §4.2.2, §4.4), no upstream connection made', T, async () => {
  const up = await silentUpstream();
  const gw = await gateway(up.url);
  try {
    for (const v of ['12', '8', '14', 'thirteen']) {
      const r = await rawExchange(gw.port, handshake().replace('Version: 13', `Version: ${v}`));
      assert.equal(r.status, 426, v);
      assert.equal(r.headers['sec-websocket-version'], '13');
      assert.equal(r.headers['upgrade'], 'websocket');
      assert.match(r.headers['connection']!, /^upgrade, close$/i);
      assert.equal(r.headers['content-type'], 'application/problem+json');
      const body = JSON.parse(r.body.toString());
      assert.equal(body.type, 'urn:turnpike:problem:upgrade-required');
      assert.equal(body.status, 426);
    }
    // No version at all is a malformed handshake: 400, still naming the version spoken.
    const r = await rawExchange(gw.port, handshake().replace('Sec-WebSocket-Version: 13\r\n', ''));
    assert.equal(r.status, 400);
    assert.equal(r.headers['sec-websocket-version'], '13');
    assert.deepEqual(gw.rejects, [426, 426, 426, 426, 400]);
    await sleep(100);
    assert.equal(up.sockets.length, 0);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('message over maxMessage from the client: client gets 1009, upstream 1001', T, async () => {
  const up = await wsUpstream();
  const gw = await gateway(up.url, { maxMessage: 1024 });
  const c = client(gw.url);
  try {
    await c.open;
    c.ws.send(Buffer.alloc(1024, 1)); // at the limit: fine
    await until(() => c.messages.length === 1, 'echo');
    c.ws.send(Buffer.alloc(1025, 1));
    assert.equal((await c.closed).code, 1009);
    await until(() => up.conns[0]!.closed !== null, 'upstream close');
    assert.equal(up.conns[0]!.closed!.code, 1001);
    await until(() => gw.closes.length === 1, 'onClose');
    assert.equal(gw.closes[0]!.code, 1009);
    assert.equal(gw.closes[0]!.closedBy, 'gateway');
    assert.equal(gw.closes[0]!.messagesIn, 1);
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('message over maxMessage from the upstream: upstream gets 1009, client 1001', T, async () => {
  const up = await wsUpstream((ws) => ws.send(Buffer.alloc(2048)));
  const gw = await gateway(up.url, { maxMessage: 1024 });
  const c = client(gw.url);
  try {
    await c.open;
    assert.equal((await c.closed).code, 1001);
    await until(() => up.conns[0]!.closed !== null, 'upstream close');
    assert.equal(up.conns[0]!.closed!.code, 1009);
    assert.equal(c.messages.length, 0);
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('upstream closes 4001 "bye": client sees 4001 "bye"; a close without status stays without status', T, async () => {
  const up = await wsUpstream((ws, req) => ws.on('message', () => (req.url === '/nostatus' ? ws.close() : ws.close(4001, 'bye'))));
  const gw = await gateway(up.url);
  const c = client(gw.url);
  const d = client(`${gw.url}/nostatus`);
  try {
    await c.open;
    c.ws.send('close please');
    assert.deepEqual(await c.closed, { code: 4001, reason: 'bye' });
    await d.open;
    d.ws.send('close please');
    assert.deepEqual(await d.closed, { code: 1005, reason: '' });
    await until(() => gw.closes.length === 2, 'onClose x2');
    assert.deepEqual(gw.closes.map((s) => [s.closedBy, s.code, s.reason]).sort(), [['upstream', 1005, ''], ['upstream', 4001, 'bye']]);
  } finally {
    c.ws.terminate();
    d.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('a close handshake the client never finishes is cut after the close grace (5 s; WS_CLOSE_GRACE_MS here)', T, async () => {
  const up = await wsUpstream(() => {});
  const gw = await gateway(up.url);
  const c = client(gw.url);
  try {
    await c.open;
    c.ws.pause(); // never reads the gateway's close frame, so never answers it
    const t0 = Date.now();
    up.conns[0]!.ws.close(4001, 'bye');
    await until(() => gw.closes.length === 1, 'onClose', WS_CLOSE_GRACE_MS + 5000);
    const took = Date.now() - t0;
    assert.ok(took >= WS_CLOSE_GRACE_MS - 300 && took < WS_CLOSE_GRACE_MS + 1500, `cut after ${took} ms (grace ${WS_CLOSE_GRACE_MS} ms)`);
    assert.deepEqual([gw.closes[0]!.closedBy, gw.closes[0]!.code, gw.closes[0]!.reason], ['upstream', 4001, 'bye']);
    assert.equal(openWebSockets(), 0);
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('client closes 4002: upstream sees 4002 with the reason', T, async () => {
  const up = await wsUpstream();
  const gw = await gateway(up.url);
  const c = client(gw.url);
  try {
    await c.open;
    c.ws.close(4002, 'later');
    assert.deepEqual(await c.closed, { code: 4002, reason: 'later' });
    await until(() => up.conns[0]!.closed !== null, 'upstream close');
    assert.deepEqual(up.conns[0]!.closed, { code: 4002, reason: 'later' });
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('upstream breaks the protocol (invalid UTF-8 text): upstream gets 1007, client 1014', T, async () => {
  // A hand-made upstream: answers the handshake, then sends a text frame that is not UTF-8.
  let received = Buffer.alloc(0);
  const sockets: Socket[] = [];
  const server = createNetServer((s) => {
    sockets.push(s);
    s.on('error', () => {});
    let shook = false;
    s.on('data', (d: Buffer) => {
      received = Buffer.concat([received, d]);
      if (shook || !received.includes('\r\n\r\n')) return;
      shook = true;
      const key = /sec-websocket-key: *(\S+)/i.exec(received.toString('latin1'))![1]!;
      const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
      received = Buffer.alloc(0);
      s.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
      s.write(Buffer.from([0x81, 0x02, 0xff, 0xfe]));
    });
  });
  const port = await listenPort(server);
  const gw = await gateway(`ws://127.0.0.1:${port}`);
  const c = client(gw.url);
  try {
    await c.open;
    assert.equal((await c.closed).code, 1014);
    await until(() => received.length >= 8, 'close frame from the gateway');
    assert.equal(received[0], 0x88); // FIN + close, masked (the gateway is the client here)
    const mask = received.subarray(2, 6);
    assert.equal(((received[6]! ^ mask[0]!) << 8) | (received[7]! ^ mask[1]!), 1007);
    await until(() => gw.closes.length === 1, 'onClose');
    assert.deepEqual([gw.closes[0]!.closedBy, gw.closes[0]!.code], ['gateway', 1007]);
    assert.equal(c.messages.length, 0);
  } finally {
    c.ws.terminate();
    await gw.close();
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  }
});

test('upstream connection cut without a close frame: client gets 1014; client cut: upstream gets 1001', T, async () => {
  const up = await wsUpstream((ws, req) => { if (req.url === '/cut') setTimeout(() => ws.terminate(), 50); });
  const gw = await gateway(up.url);
  const c = client(`${gw.url}/cut`);
  const d = client(`${gw.url}/stay`);
  try {
    assert.equal((await c.closed).code, 1014);
    await d.open;
    d.ws.terminate();
    await until(() => up.conns.find((x) => x.req.url === '/stay')?.closed != null, 'upstream close');
    assert.equal(up.conns.find((x) => x.req.url === '/stay')!.closed!.code, 1001);
    await until(() => gw.closes.length === 2, 'onClose x2');
    assert.deepEqual(gw.closes.map((s) => [s.closedBy, s.code]).sort(), [['client', 1006], ['upstream', 1006]]);
  } finally {
    c.ws.terminate();
    d.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('idle timeout: frames in either direction keep it alive; silence closes both sides 1001', T, async () => {
  const up = await wsUpstream();
  const gw = await gateway(up.url, { idleTimeout: 300 });
  const c = client(gw.url);
  try {
    await c.open;
    const t0 = Date.now();
    for (let i = 0; i < 4; i++) { await sleep(150); i % 2 ? c.ws.ping() : up.conns[0]!.ws.ping(); }
    assert.equal(c.ws.readyState, WebSocket.OPEN, 'pings keep the relay alive');
    assert.deepEqual(await c.closed, { code: 1001, reason: 'idle timeout' });
    const took = Date.now() - t0;
    assert.ok(took >= 850 && took < 2000, `closed after ${took} ms`);
    await until(() => up.conns[0]!.closed !== null, 'upstream close');
    assert.deepEqual(up.conns[0]!.closed, { code: 1001, reason: 'idle timeout' });
    await until(() => gw.closes.length === 1, 'onClose');
    assert.equal(gw.closes[0]!.closedBy, 'gateway');
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('idle timeout: a wall clock stepped forward (NTP, a resumed VM) does not close a relay that is not idle (the timeout runs on the monotonic clock)', T, async (t) => {
  const up = await wsUpstream();
  const gw = await gateway(up.url, { idleTimeout: 400 });
  const c = client(gw.url);
  try {
    await c.open;
    await sleep(250);
    c.ws.ping();
    await sleep(50);
    // The clock steps an hour forward between a frame and the idle check that follows it.
    const realNow = Date.now;
    t.mock.method(Date, 'now', () => realNow.call(Date) + 3_600_000);
    for (let i = 0; i < 4; i++) { await sleep(150); c.ws.ping(); }
    assert.equal(c.ws.readyState, WebSocket.OPEN, 'closed as idle though pings kept coming');
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('idle timeout: the fragments of a message still arriving keep the relay alive', T, async () => {
  const up = await wsUpstream();
  const gw = await gateway(up.url, { idleTimeout: 300 });
  const c = client(gw.url);
  try {
    await c.open;
    c.ws.send(Buffer.from('part-0'), { binary: false, fin: false });
    for (let i = 1; i < 6; i++) {
      await sleep(150);
      c.ws.send(Buffer.from(`part-${i}`), { binary: false, fin: i === 5 });
    }
    await until(() => c.messages.length === 1, 'the whole message echoed');
    assert.equal(c.messages[0]!.data.toString(), 'part-0part-1part-2part-3part-4part-5');
    assert.equal(c.ws.readyState, WebSocket.OPEN);
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('client vanishing during the upstream handshake aborts the upstream connection', T, async () => {
  const up = await silentUpstream();
  const gw = await gateway(up.url, { connectTimeout: 10_000 });
  try {
    const sock = connect(gw.port, '127.0.0.1');
    sock.on('error', () => {});
    sock.write(handshake());
    await until(() => up.sockets.length === 1, 'upstream connection');
    sock.destroy();
    await until(() => up.closedCount() === 1, 'upstream connection closed', 2000);
    await until(() => gw.rejects.length === 1, 'onReject');
    assert.deepEqual(gw.rejects, [499]);
    assert.equal(gw.opens, 0);
  } finally {
    await gw.close();
    await up.close();
  }
});

test('backpressure: a client that does not read stops the relay from reading the upstream; nothing is lost', T, async () => {
  const chunk = 256 * 1024, count = 256; // 64 MiB, far beyond the socket buffers along the way
  let upWs: WebSocket | undefined;
  const up = await wsUpstream((ws) => {
    upWs = ws;
    for (let i = 0; i < count; i++) ws.send(Buffer.alloc(chunk, i % 256));
  });
  const gw = await gateway(up.url);
  const c = client(gw.url);
  try {
    await c.open;
    c.ws.pause();
    await sleep(500);
    // Without backpressure the relay would have read it all and the upstream's buffer would be empty.
    assert.ok(upWs!.bufferedAmount > 8 * 1024 * 1024, `upstream still holds ${upWs!.bufferedAmount} bytes`);
    c.ws.resume();
    await until(() => c.messages.length === count, 'all messages', 10_000);
    assert.ok(c.messages.every((m, i) => m.data.length === chunk && m.data[0] === i % 256 && m.isBinary));
  } finally {
    c.ws.terminate();
    await gw.close();
    await up.close();
  }
});

test('wss upstream: tls.ca and tls.servername are used; an untrusted certificate is a 502', T, async () => {
  const ca = makeCa();
  const leaf = ca.issue('upstream.test');
  const server = createHttpsServer({ cert: leaf.cert, key: leaf.key });
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  wss.on('connection', (ws) => { ws.on('error', () => {}); ws.on('message', (d, bin) => ws.send(d, { binary: bin })); });
  const port = await listenPort(server);
  const gw = await gateway(`wss://127.0.0.1:${port}`, { tls: { ca: ca.cert, servername: 'upstream.test' } });
  const untrusted = await gateway(`wss://127.0.0.1:${port}`, { tls: { servername: 'upstream.test' } });
  const c = client(gw.url);
  try {
    await c.open;
    c.ws.send('over tls');
    await until(() => c.messages.length === 1, 'echo');
    assert.equal(c.messages[0]!.data.toString(), 'over tls');
    const r = await rawExchange(untrusted.port, handshake());
    assert.equal(r.status, 502);
    assert.deepEqual(untrusted.rejects, [502]);
  } finally {
    c.ws.terminate();
    await gw.close();
    await untrusted.close();
    for (const ws of wss.clients) ws.terminate();
    await new Promise<void>((r) => wss.close(() => r()));
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    ca.cleanup();
  }
});

test('closeAllWebSockets: open relays close with 1001, handshakes in flight get 503', T, async () => {
  const up = await wsUpstream();
  const silent = await silentUpstream();
  const gw = await gateway(up.url);
  const gw2 = await gateway(silent.url, { connectTimeout: 10_000 });
  const a = client(gw.url);
  const b = client(gw.url);
  try {
    await Promise.all([a.open, b.open]);
    assert.equal(openWebSockets(), 2);
    const stuck = rawExchange(gw2.port, handshake());
    await until(() => silent.sockets.length === 1, 'handshake in flight');
    await closeAllWebSockets(2000);
    assert.equal(openWebSockets(), 0);
    assert.deepEqual(await a.closed, { code: 1001, reason: 'gateway shutting down' });
    assert.equal((await b.closed).code, 1001);
    await until(() => up.conns.every((x) => x.closed?.code === 1001), 'upstreams closed 1001');
    assert.deepEqual(gw.closes.map((s) => s.closedBy), ['gateway', 'gateway']);
    const r = await stuck;
    assert.equal(r.status, 503);
    assert.equal(JSON.parse(r.body.toString()).type, 'urn:turnpike:problem:shutting-down');
    assert.equal(r.headers['retry-after'], '1', 'another gateway takes the retry');
    assert.deepEqual(gw2.rejects, [503]);
  } finally {
    a.ws.terminate();
    b.ws.terminate();
    await gw.close();
    await gw2.close();
    await up.close();
    await silent.close();
  }
});
