/**
 * WebSocket relay: what the gateway does with an HTTP/1.1 `Upgrade: websocket` request on a
 * route that allows WebSockets, once it has validated, routed it and computed the upstream headers.
 *
 * Design:
 *  - Upstream first. The client's handshake is checked (400 problem+json on the raw socket, 426 for a version other than 13, if
 *    bad, no upstream connection), then a `ws` client connects to the upstream offering the
 *    client's subprotocols. Only when the upstream answered 101 does the client get its 101, from
 *    a noServer `WebSocketServer` (one per maxPayload value, shared by every relay) that picks
 *    the subprotocol the upstream chose (one of the offered ones, or none: RFC 6455 §4.2.2 lets a
 *    server decline them all and the client decide; one not offered is a bad handshake, §4.1),
 *    the upstream 101's end-to-end headers (set-cookie...) and the gateway's response headers.
 *    Any other outcome is written raw on the client socket (connection: close) and reported by
 *    onReject:
 *    the upstream's own non-101 response (hop-by-hop headers dropped, Via appended; one with a
 *    body over 64 KiB is a 502 instead: it is read whole to be relayed with a Content-Length;
 *    so is one whose status is no final one, outside 200-599),
 *    502 (refused, unreachable, reset, bad handshake), 504 (handshake timeout), 503 (gateway
 *    shutting down); 499 when the client went away first (nothing written then).
 *  - Relay. Two legs, `down` (client) and `up` (upstream). Messages are relayed whole (ws
 *    reassembles fragments) with their text/binary flag; ws answers pings itself on each leg and
 *    control frames are not forwarded. maxMessage is ws's maxPayload on both legs. When a leg's
 *    send buffer passes 1 MiB, the other leg stops reading (ws.pause()) until the socket under
 *    the full leg emits 'drain'.
 *  - Close. The first event that ends the relay (a close frame, a TCP cut, a protocol violation
 *    ws caught, the idle timer, shutdown, a reload that retires the client's connection: its
 *    client CA or CRL changed, 1001) is recorded in the stats and decides what the other leg
 *    gets: the same code and reason when it may be sent, close() without code for 1005, 1014 to
 *    the client if the upstream died or 1001 to the upstream if the client died. 5 s later
 *    whatever did not finish its close handshake is terminated; onClose runs once, when both legs
 *    are closed.
 *  - Errors never escape: every socket and WebSocket has an 'error' listener from the start.
 */
import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { connect as netConnect, isIP, type NetConnectOpts, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import type { WebSocket, WebSocketServer, ClientOptions, RawData } from 'ws';
import { lazy } from '../core/lazy.js';
import { PROBLEMS, problemBody, type ProblemCode } from '../core/problem.js';
import { connectionTokens, isGatewayCookie } from '../core/headers.js';
import { connectFailed, markConnectFailed } from '../upstream/pools.js';

/**
 * ws (~60 ms of a process's start) is loaded by the compile of a config with a WebSocket route
 * (loadWebSocketLibrary), not by every gateway; an upgrade only reads it.
 */
const wsLib = lazy<typeof import('ws')>('ws');
/** WebSocket.OPEN (the readyState values are the WHATWG ones). */
const OPEN = 1;

export function loadWebSocketLibrary(): void {
  wsLib();
}

export interface WsStats {
  messagesIn: number; messagesOut: number; bytesIn: number; bytesOut: number;
  durationMs: number; code: number; reason: string; closedBy: 'client' | 'upstream' | 'gateway';
}

export interface WsRelayOptions {
  req: IncomingMessage; socket: Duplex; head: Buffer;
  /** Full upstream URL: ws:// or wss:// + host:port + path + query. */
  url: string;
  /** Headers for the upstream handshake (forwarding headers, x-request-id, host...). Never includes hop-by-hop or sec-websocket-* fields; you add what the handshake needs (the client's Sec-WebSocket-Protocol list is offered upstream). */
  headers: Record<string, string | string[]>;
  connectTimeout: number;       // ms for the upstream TCP+handshake
  idleTimeout: number;          // ms without any frame in either direction -> close both sides 1001 (<= 0: none)
  maxMessage: number;           // bytes; a bigger message from either side closes that side with 1009 and the other with 1001
  tls?: { ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer; rejectUnauthorized?: boolean; servername?: string };
  requestId: string;
  /** Response headers the gateway adds to the 101 (e.g. x-request-id), and to the rejections. */
  responseHeaders?: Record<string, string>;
  /**
   * What plugins added for the client (name, value, ...: RateLimit, cors's Access-Control-*),
   * put on the 101 and the rejections as on any response (Kong does so): never a field of the
   * handshake's own (Upgrade, Connection, Sec-WebSocket-*), nor framing, nor one of `responseHeaders`.
   */
  pluginHeaders?: readonly string[] | undefined;
  /** The gateway's Via entry (e.g. `1.1 turnpike`), appended to the upstream's on the responses relayed from it (101 or not). */
  via?: string;
  onOpen?: () => void;
  /** Called once both legs are closed. durationMs counts from the 101. */
  onClose?: (stats: WsStats) => void;
  /**
   * The upgrade ended without a WebSocket: status sent to the client (upstream refused,
   * unreachable, bad handshake). 499 = the client went away first and nothing was sent.
   * `upstream`: the outcome says something about the upstream (its own answer relayed, or a
   * 502/504 because it failed); false when it was never judged (the client's bad handshake, the
   * client gone, shutdown, a gateway bug).
   */
  onReject?: (status: number, upstream: boolean) => void;
  /**
   * The connection to the upstream failed before anything was sent (refused, unreachable, DNS):
   * where to try next (another target), or null to answer 502. Called once per failure.
   */
  retry?: () => { url: string; headers: Record<string, string | string[]>; tls?: WsRelayOptions['tls'] } | null;
}

const HIGH_WATER = 1024 * 1024;   // send-buffer size that pauses the other leg
/**
 * Close handshake budget before terminate(). (TURNPIKE_WS_CLOSE_GRACE_MS: a shorter one for the
 * tests, read once at load.)
 */
const CLOSE_GRACE_MS = Number(process.env.TURNPIKE_WS_CLOSE_GRACE_MS) > 0 ? Number(process.env.TURNPIKE_WS_CLOSE_GRACE_MS) : 5000;
const BODY_CAP = 64 * 1024;       // largest relayed body of a refused upstream handshake (past it: 502)
const CLIENT_GONE = 499;
const VERSION_UNSUPPORTED = 'unsupported Sec-WebSocket-Version (13 expected)';
/**
 * Connection errors after which nothing was sent upstream: the handshake may go to another
 * target. Told as forward.ts tells them: by these codes, which only a connect gives, or by the
 * connector's mark (connectFailed, set by wsConnect / wssConnect below) — EHOSTUNREACH and
 * ENETUNREACH also end a connection that was made (the route to the host lost mid-handshake),
 * after the upgrade request went out.
 */
const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'EAI_AGAIN', 'ENOTFOUND']);
/** ws's connector for ws://, marking an error that comes before the TCP connection is made (see CONNECT_FAILURES). */
function wsConnect(options: NetConnectOpts & { path?: string }): Socket {
  options.path = undefined; // (the request's path here; to net.connect, an IPC path)
  const s = netConnect(options);
  s.once('error', markConnectFailed).once('connect', () => s.off('error', markConnectFailed));
  return s;
}
/**
 * ws's own connector for wss:// (no SNI for an address), marking an error that comes before the
 * TLS handshake completed — the target's certificate refused (expired, another name or CA), a
 * handshake alert, no TLS on that port: the upgrade request never went out, so it is a
 * connection failure like a refused one.
 */
function wssConnect(options: ConnectionOptions & { path?: string }): TLSSocket {
  options.path = undefined;
  if (!options.servername && options.servername !== '') options.servername = isIP(options.host ?? '') !== 0 ? '' : options.host;
  const s = tlsConnect(options);
  s.once('error', markConnectFailed).once('secureConnect', () => s.off('error', markConnectFailed));
  return s;
}
const KEY_RE = /^[+/0-9A-Za-z]{22}==$/;
const TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const OWS_EDGES = /^[ \t]+|[ \t]+$/g;
const FIELD_VALUE_RE = /^[\t\x20-\x7e\x80-\xff]*$/;
/** Dropped from relayed upstream responses (content-length is recomputed). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'content-length']);
const noop = (): void => {};

/** Close codes an endpoint may put in a close frame, hence relayable as they came. */
const relayable = (c: number): boolean =>
  c === 1000 || c === 1001 || c === 1003 || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);

/** Close code ws sent to a peer that broke the protocol (its receiver errors carry a WS_ERR_* code). */
function violationCode(err: Error & { code?: unknown }): number | null {
  if (typeof err.code !== 'string' || !err.code.startsWith('WS_ERR_')) return null; // network error: a 1006 close follows
  if (err.code.startsWith('WS_ERR_UNSUPPORTED_')) return 1009;
  if (err.code === 'WS_ERR_INVALID_UTF8') return 1007;
  if (err.code === 'WS_ERR_TOO_MANY_BUFFERED_PARTS') return 1008;
  return 1002;
}

// ---- live relays and handshakes in flight (for closeAllWebSockets / openWebSockets) ----

interface Relay { socket: Duplex; shutdown(): void; close(code: number, reason: string): void; kill(): void; done: Promise<void> }
const relays = new Set<Relay>();
/** Client connections whose relays are closed (closeWebSocketsOn), with the code and reason. */
const closing = new WeakMap<object, { code: number; reason: string }>();
const pending = new Set<() => void>();

// ---- the client-facing servers ----

/** What the client's 101 must carry, per request: read by the shared servers' hooks. */
const accepted = new WeakMap<IncomingMessage, { protocol: string; headers: string[] }>();
/** maxPayload is a server option, so one server per distinct maxMessage value. */
const servers = new Map<number, WebSocketServer>();

function serverFor(maxPayload: number): WebSocketServer {
  let wss = servers.get(maxPayload);
  if (!wss) {
    wss = new (wsLib().WebSocketServer)({
      noServer: true, perMessageDeflate: false, clientTracking: false, maxPayload,
      handleProtocols: (_offered, req) => accepted.get(req)?.protocol || false,
    });
    wss.on('headers', (lines: string[], req: IncomingMessage) => { lines.push(...(accepted.get(req)?.headers ?? [])); });
    wss.on('error', noop);
    servers.set(maxPayload, wss);
  }
  return wss;
}

// ---- raw HTTP answers for handshakes that end without a WebSocket ----

/**
 * The gateway's response headers (plugins' first), minus anything that could break the
 * response framing or the handshake, and plugins' minus those named in `skip` (lower case).
 */
function gatewayHeaders(o: WsRelayOptions, skip?: ReadonlySet<string>): [string, string][] {
  const own = o.responseHeaders ?? {};
  const out: [string, string][] = [];
  const p = o.pluginHeaders;
  if (p !== undefined) {
    for (let i = 0; i + 1 < p.length; i += 2) {
      const k = p[i]!;
      const n = k.toLowerCase();
      if (HOP_BY_HOP.has(n) || n.startsWith('sec-websocket-') || Object.hasOwn(own, n) || skip?.has(n) || !TOKEN_RE.test(k) || !FIELD_VALUE_RE.test(p[i + 1]!)) continue;
      out.push([k, p[i + 1]!]);
    }
  }
  for (const [k, v] of Object.entries(own)) if (TOKEN_RE.test(k) && FIELD_VALUE_RE.test(v)) out.push([k, v]);
  return out;
}

function writeRaw(socket: Duplex, status: number, reason: string, headers: [string, string][], body: Buffer): void {
  if (!socket.writable) { socket.destroy(); return; }
  let head = `HTTP/1.1 ${status} ${reason.replace(/[\r\n]/g, '')}\r\n`;
  for (const [k, v] of headers) head += `${k}: ${v}\r\n`;
  // An Upgrade sent needs its Connection option (RFC 9110 §7.8).
  const upgrade = headers.some(([k]) => k.toLowerCase() === 'upgrade');
  head += `content-length: ${body.length}\r\nconnection: ${upgrade ? 'upgrade, close' : 'close'}\r\n\r\n`;
  socket.once('finish', () => socket.destroy());
  socket.end(Buffer.concat([Buffer.from(head, 'latin1'), body]));
}

const RETRY_SOON: [string, string][] = [['retry-after', '1']];

/** Writes a problem+json response; returns its status. */
function problem(o: WsRelayOptions, code: ProblemCode, detail: string, extra: [string, string][] = []): number {
  const p = PROBLEMS[code];
  const headers: [string, string][] = [['content-type', 'application/problem+json'], ['cache-control', 'no-store'], ...extra];
  // (a plugin's field never replaces the problem's own: its type, a Retry-After)
  headers.push(...gatewayHeaders(o, new Set(headers.map(([k]) => k))));
  if (o.requestId && !headers.some(([k]) => k.toLowerCase() === 'x-request-id')) headers.push(['x-request-id', o.requestId]);
  writeRaw(o.socket, p.status, p.title, headers, Buffer.from(problemBody(code, detail, o.requestId)));
  return p.status;
}

/**
 * The end-to-end fields of an upstream response (raw, names as sent), minus those the gateway
 * sets itself, and minus sec-websocket-* for a 101 (ws writes the client's own). A 426 keeps its
 * Upgrade, which it must carry (RFC 9110 §15.5.22), as the HTTP path keeps it.
 */
function endToEnd(raw: string[], own: [string, string][], status: number, via: string | undefined): [string, string][] {
  const is101 = status === 101;
  const skip = new Set(own.map(([k]) => k.toLowerCase()));
  // Fields the upstream's Connection names are connection-specific too (RFC 9110 §7.6.1).
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() !== 'connection') continue;
    for (const t of connectionTokens(raw[i + 1]!) ?? []) if (t !== 'upgrade') skip.add(t);
  }
  const out: [string, string][] = [];
  let upstreamVia = '';
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if ((HOP_BY_HOP.has(k) && (k !== 'upgrade' || status !== 426)) || skip.has(k) || (is101 && k.startsWith('sec-websocket-'))) continue;
    if (k === 'set-cookie' && isGatewayCookie(raw[i + 1]!)) continue;
    if (k === 'via' && via !== undefined) { upstreamVia += `${raw[i + 1]!}, `; continue; }
    out.push([raw[i]!, raw[i + 1]!]);
  }
  if (via !== undefined) out.push(['via', upstreamVia + via]);
  return out;
}

/** Checks the client's handshake as ws's handleUpgrade will; returns the offered subprotocols or what is wrong. */
function checkHandshake(req: IncomingMessage): string[] | string {
  const h = req.headers;
  if (req.method !== 'GET') return 'a WebSocket handshake must be a GET';
  // Upgrade is a list (RFC 9110 §7.8): websocket among other offers is a handshake (RFC 6455
  // §4.2.1); ws's handleUpgrade wants the field to be websocket alone, so it is made so.
  if (!/(^|,)[ \t]*websocket[ \t]*(,|$)/i.test(h.upgrade ?? '')) return 'invalid Upgrade header';
  h.upgrade = 'websocket';
  // The protocol switches once the request is complete (RFC 9110 §7.8), and node's parser stops
  // at the head: a body would be read as the client's first frames (a message no body check, no
  // plugin, no proxy in front ever saw as such). No client sends one.
  const cl = h['content-length'];
  if (h['transfer-encoding'] !== undefined || (cl !== undefined && Number(cl) !== 0)) return 'a WebSocket handshake has no body';
  const key = h['sec-websocket-key'];
  if (key === undefined || !KEY_RE.test(key)) return 'missing or invalid Sec-WebSocket-Key header';
  const version = h['sec-websocket-version'];
  if (version === undefined) return 'missing Sec-WebSocket-Version header (13 expected)';
  if (version.trim() !== '13') return VERSION_UNSUPPORTED;
  const raw = h['sec-websocket-protocol'];
  if (raw === undefined) return [];
  // (OWS is spaces and tabs only, RFC 9110 §5.6.3, as ws parses it: trim() also takes a latin1
  // NBSP, which ws's own check of the 101 then refused, after the upstream session was opened)
  const list = raw.split(',').map((p) => p.replace(OWS_EDGES, ''));
  if (list.some((p) => !TOKEN_RE.test(p)) || new Set(list).size !== list.length) return 'invalid Sec-WebSocket-Protocol header';
  return list;
}

// ---- handshake ----

export function relayWebSocket(o: WsRelayOptions): void {
  const { req, socket } = o;
  socket.on('error', noop); // stays for the socket's whole life (ws adds its own once upgraded)

  const offered = checkHandshake(req);
  if (typeof offered === 'string') {
    // A version this side does not speak: 426 naming the one it does (RFC 6455 §4.2.2, §4.4;
    // RFC 9110 §15.5.22: a 426 carries Upgrade), so the client can retry with it.
    if (offered === VERSION_UNSUPPORTED) {
      o.onReject?.(problem(o, 'upgrade-required', `invalid WebSocket handshake: ${offered}`, [['sec-websocket-version', '13'], ['upgrade', 'websocket']]), false);
      return;
    }
    const extra: [string, string][] = offered.includes('Version') ? [['sec-websocket-version', '13']] : [];
    o.onReject?.(problem(o, 'bad-request', `invalid WebSocket handshake: ${offered}`, extra), false);
    return;
  }
  if (!socket.readable || !socket.writable) { socket.destroy(); o.onReject?.(CLIENT_GONE, false); return; }

  /** The upstream handshake (a new one when a connection failure sends it to another target). */
  const open = (url: string, headers: Record<string, string | string[]>, tls: WsRelayOptions['tls']): WebSocket | null => {
    try {
      const opts: ClientOptions & { servername?: string } = {
        ...tls,
        perMessageDeflate: false, followRedirects: false, maxPayload: o.maxMessage,
        handshakeTimeout: o.connectTimeout,
        // The offer goes in the headers, not as ws's protocols: given those, ws fails a 101 that
        // picks none of them, a valid answer the client is the one to judge (see 'upgrade' below).
        headers: (offered.length ? { ...headers, 'sec-websocket-protocol': offered.join(',') } : headers) as Record<string, string>, // arrays are fine for http.request
        createConnection: (tls ? wssConnect : wsConnect) as unknown as ClientOptions['createConnection'],
      };
      return new (wsLib().WebSocket)(url, opts);
    } catch { // bad URL or header value: a gateway bug, not the upstream's fault
      return null;
    }
  };
  const first = open(o.url, o.headers, o.tls);
  if (first === null) {
    o.onReject?.(problem(o, 'internal-error', 'could not build the upstream WebSocket request'), false);
    return;
  }
  let up = first;

  // Exactly one of: fail(), the relayed non-101 response, 'open'. settle() arbitrates.
  let settled = false;
  let upSocket: Duplex | undefined;
  const timer = o.connectTimeout > 0
    ? setTimeout(() => fail('gateway-timeout', 'the upstream did not complete the WebSocket handshake in time'), o.connectTimeout)
    : undefined;
  const clientGone = (): void => fail(null, '');
  // Retry-After: 1: this gateway is going away, another (or its successor) takes the retry.
  const abort = (): void => fail('shutting-down', 'the gateway is shutting down', RETRY_SOON);
  // 'end' too: the HTTP server's sockets allow half-open, so a client FIN alone emits no 'close'.
  socket.on('end', clientGone).on('close', clientGone);
  pending.add(abort);

  function settle(): boolean {
    if (settled) return false;
    settled = true;
    clearTimeout(timer);
    pending.delete(abort);
    socket.off('end', clientGone).off('close', clientGone);
    return true;
  }
  /** Ends the attempt: upstream aborted, the client gets a problem (or nothing if it left, code null). */
  function fail(code: ProblemCode | null, detail: string, extra?: [string, string][]): void {
    if (!settle()) return;
    up.terminate();
    if (code) o.onReject?.(problem(o, code, detail, extra), code === 'bad-gateway' || code === 'gateway-timeout');
    else { socket.destroy(); o.onReject?.(CLIENT_GONE, false); }
  }

  const wireUp = (u: WebSocket): void => {
    u.on('error', (err: Error & { code?: unknown }) => {
      if (u !== up) return; // (a handshake given up for another target)
      if (!settled && typeof err.code === 'string' && (CONNECT_FAILURES.has(err.code) || connectFailed(err)) && o.retry !== undefined) {
        const next = o.retry();
        if (next !== null) {
          u.terminate();
          const again = open(next.url, next.headers, next.tls);
          if (again === null) {
            fail('internal-error', 'could not build the upstream WebSocket request');
            return;
          }
          up = again;
          wireUp(again);
          return;
        }
      }
      if (err.message === 'Opening handshake has timed out' || err.code === 'ETIMEDOUT') {
        fail('gateway-timeout', 'the upstream did not complete the WebSocket handshake in time');
      } else if (typeof err.code === 'string') {
        fail('bad-gateway', 'could not connect to the upstream (refused, reset, unreachable or TLS failure)');
      } else {
        fail('bad-gateway', 'the upstream sent an invalid WebSocket handshake response'); // bad accept, subprotocol...
      }
    });

    // A non-101 answer: relay it whole (status, end-to-end headers, body), read first to give it
    // a Content-Length; one with a body over 64 KiB is a 502, never a cut body labelled complete.
    u.on('unexpected-response', (_r, res) => {
      // A final status must be 200-599 (RFC 9110 §15): 600-999 or 0-99 (llhttp takes any three
      // digits) means nothing to a client, and a 1xx here (a 101 without Upgrade: websocket;
      // others are interim and never come here) would be read by the client as an interim
      // answer, the relayed body then parsed as the next response.
      const status = res.statusCode ?? 0;
      if (status < 200 || status > 599) {
        fail('bad-gateway', `the upstream answered the WebSocket handshake with an invalid status (${status})`);
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      const tooBig = (): void => fail('bad-gateway', `the upstream refused the WebSocket handshake with a ${res.statusCode} whose body is over ${BODY_CAP} bytes`);
      const done = (): void => {
        if (!settle()) return;
        const own = gatewayHeaders(o);
        const headers = [...endToEnd(res.rawHeaders, own, status, o.via), ...own];
        writeRaw(socket, status, res.statusMessage || STATUS_CODES[status] || '', headers, Buffer.concat(chunks, size));
        up.terminate();
        o.onReject?.(status, true);
      };
      res.on('error', noop);
      if (Number(res.headers['content-length']) > BODY_CAP) { tooBig(); return; }
      res.on('data', (c: Buffer) => { size += c.length; if (size > BODY_CAP) tooBig(); else chunks.push(c); });
      res.on('end', done);
      res.on('close', () => { if (!res.complete) fail('bad-gateway', 'the upstream cut its handshake response short'); });
    });

    let upHeaders: string[] = [];
    let chosen = ''; // the subprotocol the upstream picked among the offered ones ('' none)
    u.on('upgrade', (res) => {
      upSocket = res.socket; upHeaders = res.rawHeaders;
      // ws emits 'upgrade' before it checks the 101, and it checks the subprotocol against the
      // (empty) list it was given: one of the offered ones is taken here and hidden from that
      // check; anything else (not offered, several, empty) stays, and ws fails the handshake (502).
      const p = res.headers['sec-websocket-protocol'];
      if (p !== undefined && offered.includes(p)) { chosen = p; delete res.headers['sec-websocket-protocol']; }
    });

    // Upstream 101: now complete the client's handshake, with the subprotocol the upstream chose.
    u.on('open', () => {
      if (!settle()) { up.terminate(); return; }
      if (!socket.readable || !socket.writable) { up.terminate(); socket.destroy(); o.onReject?.(CLIENT_GONE, false); return; }
      const own = gatewayHeaders(o);
      const headers = [...endToEnd(upHeaders, own, 101, o.via), ...own].map(([k, v]) => `${k}: ${v}`); // e.g. the upstream's set-cookie
      accepted.set(req, { protocol: chosen, headers });
      // ws destroys a socket it finds closed without calling back: catch that here.
      const lost = (): void => { accepted.delete(req); up.terminate(); o.onReject?.(CLIENT_GONE, false); };
      socket.once('close', lost);
      let upgraded = false;
      // ws writes its 101 as one string with the socket's default encoding, UTF-8: the relayed
      // fields, decoded latin1 (one char per byte) as node reads them, would go out re-encoded
      // (an upstream's UTF-8 `é`, C3 A9, as C3 83 C2 A9). Latin1 writes them back byte for byte.
      socket.setDefaultEncoding('latin1');
      try {
        serverFor(o.maxMessage).handleUpgrade(req, socket, o.head, (down) => {
          upgraded = true;
          socket.setDefaultEncoding('utf8');
          socket.off('close', lost);
          accepted.delete(req);
          relay(o, down, up, socket, upSocket);
        });
      } catch (err) {
        if (upgraded) throw err; // from the gateway's onOpen: not ours to hide
        socket.setDefaultEncoding('utf8');
        socket.off('close', lost); // ws throws if this socket was already upgraded (a gateway bug)
        up.terminate();
        o.onReject?.(problem(o, 'internal-error', 'the WebSocket upgrade failed'), false);
      }
    });
  };
  wireUp(up);
}

// ---- relay ----

function relay(o: WsRelayOptions, down: WebSocket, up: WebSocket, downSocket: Duplex, upSocket: Duplex | undefined): void {
  // (the monotonic clock: a wall clock stepped forward read as the idle timeout long past)
  const started = performance.now();
  const stats: WsStats = { messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0, durationMs: 0, code: 1006, reason: '', closedBy: 'gateway' };
  let last = started;            // time of the last frame received on either leg
  let ending = false;            // the close decision was taken
  let closedLegs = 0;
  let idleTimer: NodeJS.Timeout | undefined;
  let killTimer: NodeJS.Timeout | undefined;
  let resolveDone: () => void = noop;
  const self: Relay = {
    socket: downSocket,
    shutdown: () => gatewayClose(1001, 'gateway shutting down'),
    close: gatewayClose,
    kill: () => { down.terminate(); up.terminate(); },
    done: new Promise<void>((r) => { resolveDone = r; }),
  };
  relays.add(self);

  const touch = (): void => { last = performance.now(); };

  /** Records who ended the relay (first caller only) and arms the close-handshake deadline. */
  function begin(by: WsStats['closedBy'], code: number, reason: string): boolean {
    if (ending) return false;
    ending = true;
    Object.assign(stats, { closedBy: by, code, reason });
    clearTimeout(idleTimer);
    killTimer = setTimeout(self.kill, CLOSE_GRACE_MS).unref();
    return true;
  }
  /** Starts the close handshake on a leg still open (code undefined: close frame without status). */
  function closeLeg(ws: WebSocket, code?: number, reason = ''): void {
    ws.resume(); // a paused leg would never read its peer's close frame
    if (ws.readyState !== OPEN) return;
    try { if (code === undefined) ws.close(); else ws.close(code, reason); } catch { ws.terminate(); }
  }
  function gatewayClose(code: number, reason: string): void {
    if (!begin('gateway', code, reason)) return;
    closeLeg(down, code, reason);
    closeLeg(up, code, reason);
  }

  function wire(src: WebSocket, dst: WebSocket, dstSocket: Duplex | undefined, side: 'client' | 'upstream'): void {
    const fromClient = side === 'client';
    src.on('message', (data: RawData, isBinary: boolean) => {
      last = performance.now();
      const buf = data as Buffer; // binaryType 'nodebuffer': always one Buffer, fragments joined
      if (fromClient) { stats.messagesIn++; stats.bytesIn += buf.length; } else { stats.messagesOut++; stats.bytesOut += buf.length; }
      if (dst.readyState !== OPEN) return;
      dst.send(buf, { binary: isBinary });
      if (dst.bufferedAmount > HIGH_WATER && !src.isPaused && dstSocket) {
        src.pause(); // the socket's buffer is far past its highWaterMark, so 'drain' will come
        dstSocket.once('drain', () => { if (!ending) src.resume(); });
      }
    });
    src.on('ping', touch).on('pong', touch);
    // A protocol violation (message too big, bad UTF-8, bad framing): ws already closes src with
    // the matching code; the other leg gets 1001, or 1014 when the upstream is the culprit.
    src.on('error', (err: Error & { code?: unknown }) => {
      const code = violationCode(err);
      if (code === null) return;
      const reason = code === 1009 ? `${side} message too big` : `${side} protocol error`;
      if (begin('gateway', code, reason)) closeLeg(dst, code === 1009 || fromClient ? 1001 : 1014, reason);
    });
    src.on('close', (code: number, why: Buffer) => {
      const reason = why.toString();
      if (begin(side, code, reason)) {
        if (relayable(code)) closeLeg(dst, code, reason);
        else if (code === 1005) closeLeg(dst);
        else if (fromClient) closeLeg(dst, 1001, 'client went away'); // 1006 (TCP cut) or unsendable code
        else closeLeg(dst, 1014, 'upstream connection lost');
      }
      if (++closedLegs === 2) finish();
    });
  }

  function finish(): void {
    clearTimeout(idleTimer);
    clearTimeout(killTimer);
    relays.delete(self);
    stats.durationMs = performance.now() - started;
    resolveDone();
    o.onClose?.({ ...stats });
  }

  /** One timer per relay, re-armed lazily from `last` rather than reset on every frame. */
  function checkIdle(): void {
    const left = last + o.idleTimeout - performance.now();
    if (left > 0) idleTimer = setTimeout(checkIdle, left).unref();
    else gatewayClose(1001, 'idle timeout');
  }

  wire(down, up, upSocket, 'client');
  wire(up, down, downSocket, 'upstream');
  // Bytes of a message still arriving (its fragments, a large frame) count as activity too.
  downSocket?.on('data', touch);
  upSocket?.on('data', touch);
  if (o.idleTimeout > 0) idleTimer = setTimeout(checkIdle, o.idleTimeout).unref();
  o.onOpen?.();
  const c = closing.get(downSocket);
  if (c !== undefined) gatewayClose(c.code, c.reason);
}

// ---- lifecycle ----

/** Closes every open relay with 1001 (gateway shutting down); resolves when all are closed or after ms. */
export async function closeAllWebSockets(ms: number): Promise<void> {
  for (const abort of [...pending]) abort(); // handshakes in flight get a 503
  const live = [...relays];
  for (const r of live) r.shutdown();
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.all(live.map((r) => r.done)),
    new Promise<void>((resolve) => { timer = setTimeout(resolve, ms); }),
  ]);
  clearTimeout(timer);
  for (const r of live) if (relays.has(r)) r.kill(); // past the deadline: cut what is left
}

/**
 * Closes the relays whose client connection is one of `sockets` (both legs, close frames with
 * `code` and `reason`, then the TCP close); returns how many.
 */
export function closeWebSocketsOn(sockets: ReadonlySet<object>, code: number, reason: string): number {
  // (a handshake still waiting on its upstream opens a relay later: closed as it opens)
  for (const s of sockets) closing.set(s, { code, reason });
  let n = 0;
  for (const r of relays) {
    if (!sockets.has(r.socket)) continue;
    r.close(code, reason);
    n++;
  }
  return n;
}

export function openWebSockets(): number {
  return relays.size;
}
