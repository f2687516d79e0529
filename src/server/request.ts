/**
 * The proxy listener's request path: limits, request-target and Host checks, path
 * normalization, routing, forwarding headers, then the upstream. Everything the request needs
 * comes from the snapshot it started with. The raw header list is read once: the fields the
 * gateway owns are picked out, the rest copied for the upstream.
 */
import { answerAccount, answerPortal, isPortalPath } from '../portal/handler.js';
import { isAccountPath, type AccountRequest, type AccountResponse } from '../portal/accounts.js';
import { HSTS } from '../portal/html.js';
import { METHODS, type IncomingMessage, type ServerResponse } from 'node:http';
import { isIP, type Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { upstreamTlsName } from './tls.js';
import { REFRESH_PEER_HEADER } from '../plugins/cache/refresh.js';
import { hostKey as hostKeyOf } from '../plugins/cache/policy.js';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { CompiledRoute, Snapshot, Target } from '../config/compile.js';
import { ALLOW_ALL, PROBLEMS, ProblemError, isHttp2, markAnswered, sendProblem, type ProblemCode } from '../core/problem.js';
import { write as writeWhole, type ResponsePlugins } from './respond.js';
import { composeRoute } from './compose-route.js';
import { ClientAbortedError } from './body.js';
import type { Exchange } from '../observability/exchange.js';
import type { Observer } from '../observability/observer.js';
import type { Logger } from '../core/log.js';
import { PluginCtx } from '../plugins/context.js';
import { PluginError, runRequestPhases, type Chain, type PhaseResult } from '../plugins/pipeline.js';
import type { Reply } from '../plugins/types.js';
import { connectionTokens, headerRecord, isTls, validRequestId } from '../core/headers.js';
import { clientIp, forwardedElement, forwardedFromX, plainIp, xFromForwarded } from '../core/forwarded.js';
import { normalizePath, upstreamReading } from '../router/path.js';
import { hostName } from '../router/router.js';
import { ForwardHandler, earnRetry, grantSlots, joinBase, noTargetRetryAfter, overlayGatewayFields, spendRetry } from '../upstream/forward.js';
import { relayWebSocket, type WsStats } from './websocket.js';
import { grpcWebKind, isGrpcContentType } from '../protocols/grpc-web.js';
import type { Duplex } from 'node:stream';

/** An HTTP/1.1 request that asked to switch protocols: its raw socket and the bytes read past its head. */
export interface Upgrade {
  socket: Duplex;
  head: Buffer;
}

/** WebSocket counters of a gateway (admin /status; Prometheus with issue 7). */
export interface WsCounters {
  opened: number;
  rejected: number;
  closed: number;
  messagesIn: number;
  messagesOut: number;
}

/** RFC 3986 host (reg-name, IPv4, [IPv6]) with an optional port. */
/** host[:port]: an IP literal, or a name of non-empty labels (one trailing dot: fully qualified). */
const HOST_RE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?)(?::[0-9]{1,5})?$/;
/** A Host whose port (after HOST_RE matched: at most 5 digits) is past 65535 (RFC 3986 §3.2.3 allows any digits, no TCP port is). */
function portBeyondRange(host: string): boolean {
  const c = host.lastIndexOf(':');
  return c !== -1 && host.indexOf(']', c) === -1 && host.length - c === 6 && Number(host.slice(c + 1)) > 65535;
}
/** X-Forwarded-Host as a trusted chain sends it: a host, or a list (one per proxy that appended; the first is the client's). */
const hostList = (v: string): boolean => v.split(',').every((h) => HOST_RE.test(h.trim()));
/** X-Forwarded-Proto as proxies send it: a scheme, or a list of them (one per proxy that appended). */
const XFP_RE = /^[\t ]*https?[\t ]*(?:,[\t ]*https?[\t ]*)*$/i;
/**
 * The `_method` parameters of a query string (Symfony's and Laravel's method override for a
 * POST), joined to the override fields' `prior`. Names are read as PHP does: percent-decoded,
 * with `.`, ` ` and `[` standing for `_`; a value that does not decode is kept as sent (and,
 * being no method, refused).
 */
function queryMethodOverride(query: string, prior: string | undefined): string | undefined {
  let out = prior;
  for (const pair of query.slice(1).split('&')) {
    const eq = pair.indexOf('=');
    // (7 characters, or more with percent-encodings: `_m%65thod` is `_method` to PHP)
    if (eq < 7 || (eq > 7 && !pair.includes('%'))) continue;
    let name = pair.slice(0, eq);
    let value = pair.slice(eq + 1);
    try {
      name = decodeURIComponent(name.replace(/\+/g, ' '));
      value = decodeURIComponent(value.replace(/\+/g, ' '));
    } catch {
      /* kept as sent */
    }
    if (name.length === 7 && /^[_. []method$/.test(name)) out = out === undefined ? value : `${out}, ${value}`;
  }
  return out;
}

/** A method named in a method override field: one token of letters (and `-`, M-SEARCH). */
const TOKEN_METHOD = /^[A-Z][A-Z-]*$/;
/** The methods node:http's parser (llhttp) takes over HTTP/1.1. */
const KNOWN_METHODS: ReadonlySet<string> = new Set(METHODS);
/** A byte a request target may not hold (RFC 3986 §2; RFC 9112 §3.2): a control, a space, or past ASCII. */
const NOT_URI_CHAR = /[^\x21-\x7e]/;
const ABSOLUTE_RE = /^(https?):\/\/([^/?#]*)(.*)$/is; // (linear: no '#' is left when it runs)
/** The pseudonym this gateway uses in Via (RFC 9110 §7.6.3). */
const VIA_NAME = 'turnpike';
const VIA_11 = `1.1 ${VIA_NAME}`;
const VIA_10 = `1.0 ${VIA_NAME}`;
const VIA_2 = `2 ${VIA_NAME}`;
const NO_HEADERS: Record<string, string> = Object.freeze({}) as Record<string, string>;

export interface RequestContext {
  snapshot: Snapshot;
  /** Set while draining: every HTTP/1.1 response closes its connection (HTTP/2 sessions get a GOAWAY). */
  draining: boolean;
  /** Set once stop() began: a WebSocket relay opened from then on would outlive it (503 instead). */
  readonly stopping?: boolean;
  ws: WsCounters;
  onWsClose?(stats: WsStats, route: string, requestId: string): void;
  log?: Logger;
  /** Metrics, access log, analytics, tracing (null: none of them). */
  observer?: Observer | null;
  /** The portal's developer accounts (null: this node cannot answer them). */
  portalAccounts?: ((r: AccountRequest) => Promise<AccountResponse>) | null;
  /** The response caches (their refresher's token vouches for background refreshes). */
  caches?: { readonly refresher: { valid(token: string | undefined): boolean } };
}


/** Fields of 20+ characters the gateway owns (the switch in handleRequest sees shorter names only). */
const LONG_OWNED = new Set([
  'x-credential-identifier', 'x-anonymous-consumer', REFRESH_PEER_HEADER,
  // identity fields Kong's auth plugins set (or clear) on every request: upstreams moved from
  // Kong trust them, so a client's copy never reaches one (X-Credential-Username: Kong before
  // 3.0's key-auth, basic-auth, hmac-auth; X-Userinfo: a case of the switch in handleRequest)
  'x-consumer-custom-id', 'x-authenticated-userid', 'x-authenticated-scope', 'x-authenticated-groups',
  'x-credential-username',
]);

/**
 * Client-certificate fields of 20+ characters that TLS terminators set (Envoy's XFCC, AWS ALB's
 * mTLS fields...), and the scheme and host fields of that length: an upstream may take them for a verified identity, so only a trusted proxy
 * may send them (as Envoy's forward_client_cert_details SANITIZE). The shorter ones
 * (X-SSL-Client-*, SSL-Client-*, X-Client-Cert...) are cases of the switch in handleRequest.
 */
const LONG_PROXY_ONLY = new Set([
  // (the scheme and host as some proxies tell them: see the short ones in handleRequest)
  'x-forwarded-protocol', 'x-http-host-override',
  'x-forwarded-client-cert', 'x-ssl-client-fingerprint', 'x-client-certificate', 'x-ssl-client-cert-chain',
  'x-amzn-mtls-clientcert', 'x-amzn-mtls-clientcert-leaf', 'x-amzn-mtls-clientcert-serial-number',
  'x-amzn-mtls-clientcert-issuer', 'x-amzn-mtls-clientcert-subject', 'x-amzn-mtls-clientcert-validity',
]);

/**
 * The families behind those lists, as other terminators name them: RFC 9440's Client-Cert and
 * Client-Cert-Chain, nginx guides' X-SSL-Cert ($ssl_client_escaped_cert) and HAProxy's
 * X-SSL-Subject / X-SSL-Issuer, ingress-nginx's ssl-client-subject-dn / -issuer-dn, Traefik's
 * X-Forwarded-Tls-Client-Cert(-Info), and any X-SSL-Client-*, SSL-Client-*, X-Amzn-Mtls-*
 * (tested only for names the switch in handleRequest did not take; fails at the first letter
 * for most).
 */
const CERT_FIELD = /^(?:x-ssl-(?:client-|cert$|subject|issuer)|ssl-client-|x-amzn-mtls-|x-forwarded-tls-client-cert|client-cert(?:-chain)?$)/i;

/**
 * The fields the gateway owns or computes, in their dashed form: a client's `X_Consumer_ID` or
 * `X_Forwarded_For` is dropped too, since CGI, WSGI, Rack and PHP read `_` and `-` alike
 * (HTTP_X_CONSUMER_ID) and would take it for the gateway's (nginx ignores such names too).
 */
const OWNED_DASHED = new Set([
  'host', 'transfer-encoding', 'content-length', 'connection', 'x-request-id', 'x-forwarded-for', 'x-forwarded-proto',
  'x-forwarded-host', 'x-forwarded-port', 'forwarded', 'via', 'max-forwards', 'keep-alive', 'proxy-connection', 'te',
  'upgrade', 'http2-settings', 'expect', 'x-real-ip', 'proxy-authorization', 'x-turnpike-refresh', 'x-consumer-id', 'x-consumer-name',
  'x-consumer-groups', 'x-consumer-username', 'x-userinfo', 'x-original-url', 'x-rewrite-url', 'x-forwarded-prefix', 'x-forwarded-server',
  'x-forwarded-scheme', 'x-forwarded-ssl', 'x-client-ip', 'true-client-ip', 'x-cluster-client-ip', ...LONG_OWNED,
  'x-client-cert', 'x-client-verify', 'x-client-dn', 'x-client-cert-chain', 'x-ssl-client-cert', 'x-ssl-client-verify',
  'x-ssl-client-s-dn', 'x-ssl-client-i-dn', 'x-ssl-client-dn', 'x-ssl-client-serial', 'x-ssl-client-sha1', 'ssl-client-cert',
  'ssl-client-verify', 'ssl-client-s-dn', 'ssl-client-i-dn', 'front-end-https', 'x-url-scheme', 'x-arr-ssl', 'x-arr-clientcert',
  ...LONG_PROXY_ONLY,
  // (the method overrides are checked against the route in their dashed spelling only)
  'x-http-method-override', 'x-http-method', 'x-method-override',
]);

/** Whether a field name with an underscore stands, dashed, for one the gateway owns (or a key-auth key header). */
function ownedWithUnderscore(name: string, snap: Snapshot): boolean {
  const dashed = name.toLowerCase().replace(/_/g, '-');
  return OWNED_DASHED.has(dashed) || CERT_FIELD.test(dashed) || (snap.extraStripped !== null && snap.extraStripped.has(dashed)) || (snap.credentialDashed !== null && snap.credentialDashed.has(dashed));
}

/** Connections answered with Connection: close: anything pipelined after that answer is dropped. */
export const closingSockets = new WeakSet<object>();

/** What only depends on the connection (and the snapshot's trusted proxies), computed once per connection. */
interface PeerInfo {
  snap: Snapshot;
  proto: 'http' | 'https';
  peer: string;
  trusted: boolean;
  forwardedFor: string;
  port: string;
  /** The last Host seen on this connection that was valid, and its routing form. */
  lastHost: string;
  lastHostName: string;
}
const kPeer = Symbol('turnpike.peer');

function peerInfo(socket: Socket, snap: Snapshot): PeerInfo {
  const s = socket as Socket & { [kPeer]?: PeerInfo };
  let p = s[kPeer];
  if (p === undefined || p.snap !== snap) {
    const peer = plainIp(socket.remoteAddress);
    p = s[kPeer] = { snap, proto: (socket as { encrypted?: boolean }).encrypted === true ? 'https' : 'http', peer, trusted: snap.trusted.has(peer), forwardedFor: forwardedElement(peer), port: String(socket.localPort), lastHost: '', lastHostName: '' };
  }
  return p;
}

/**
 * A plain-listener request that a trusted proxy says came over https (the first
 * X-Forwarded-Proto): a load balancer that terminated TLS in front of the gateway. Asked only
 * when tls.redirect_http or tls.hsts is on; for a peer that is no trusted proxy nothing is read.
 */
export function httpsByTrustedProxy(req: IncomingMessage, snap: Snapshot): boolean {
  // (the peer first: its info is kept per connection, and handleRequest needs it anyway; the raw
  // fields, not req.headers, which node builds only when asked)
  if (!peerInfo(req.socket, snap).trusted) return false;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length !== 17 || name.toLowerCase() !== 'x-forwarded-proto') continue;
    const v = raw[i + 1]!;
    const comma = v.indexOf(',');
    return (comma === -1 ? v : v.slice(0, comma)).trim().toLowerCase() === 'https';
  }
  return false;
}

/**
 * The gateway's own stale-while-revalidate refresh (src/plugins/cache/refresh.ts) comes from the
 * loopback on behalf of a client: with a valid token it is taken as coming from that client's
 * connection (ip-restriction, limits by IP, the forwarding fields), not from 127.0.0.1.
 */
function refreshPeer(ctx: RequestContext, req: IncomingMessage, p: PeerInfo, token: string): PeerInfo {
  const peer = req.headers[REFRESH_PEER_HEADER];
  if (typeof peer !== 'string' || isIP(peer) === 0 || ctx.caches?.refresher.valid(token) !== true) return p;
  return { ...p, peer, trusted: p.snap.trusted.has(peer), forwardedFor: forwardedElement(peer) };
}

// Generated request ids: a per-process UUID and a counter (Kong's "uuid#counter" scheme):
// unique across processes and restarts, without drawing randomness per request.
const ID_PREFIX = `${randomUUID()}#`;
let idCounter = 0;
const nextRequestId = () => ID_PREFIX + (++idCounter).toString(36);

/** The request id of a request answered before handleRequest (the client's when valid, else a new one). */
export function requestIdOf(req: IncomingMessage): string {
  const id = req.headers['x-request-id'];
  return typeof id === 'string' && validRequestId(id) ? id : nextRequestId();
}

const join = (prev: string | undefined, v: string) => (prev === undefined ? v : `${prev}, ${v}`);

/** Segments in a route pattern (`/` 0, `/v1/admin` 2). */
function depth(pattern: string): number {
  let n = 0;
  for (let i = 0; i < pattern.length; i++) if (pattern.charCodeAt(i) === 0x2f && i + 1 < pattern.length) n++;
  return n;
}

/**
 * Whether a Host and an :authority name the same authority once normalized (RFC 9113 §8.3.1,
 * RFC 3986 §6.2: the host is case-insensitive, the scheme's default port may be left out).
 */
function sameAuthority(a: string, b: string, defaultPort: string): boolean {
  const norm = (v: string) => {
    const l = v.toLowerCase();
    return l.endsWith(defaultPort) ? l.slice(0, -defaultPort.length) : l;
  };
  return norm(a) === norm(b);
}

/** Answers with a problem. Malformed requests close the connection; unroutable ones do not. */
function reject(
  ctx: RequestContext, req: IncomingMessage, res: ServerResponse, requestId: string,
  code: ProblemCode, detail: string, extra?: Record<string, string | string[]>,
): undefined {
  // HTTP/2: a stream ends alone (the session stays up; draining sends a GOAWAY).
  const close = !isHttp2(req) && (ctx.draining || (code !== 'no-route' && code !== 'method-not-allowed'));
  if (close) closingSockets.add(req.socket);
  sendProblem(res, code, detail, requestId || nextRequestId(), { close, headers: extra });
  return undefined;
}

/**
 * Bounds the idle time between request body chunks, and (minRate > 0) the body's pace: 408 (or a
 * cut connection once answering).
 */
function armBodyTimeout(ctx: RequestContext, req: IncomingMessage, res: ServerResponse, requestId: string, ms: number, minRate: number): void {
  const stopRate = minRate > 0 ? watchBodyRate(ctx, req, res, requestId, ms, minRate) : null;
  // (on the response: node:http tells a request its socket's timeout only while its body is
  // incomplete, and destroys the socket when nobody listens — a body that came whole and waits
  // unread, in a bulkhead queue or on a plugin, had its connection cut without an answer)
  res.setTimeout(ms, () => {
    if (bodyArrived(req)) {
      req.setTimeout(0); // (the client sent it all: the wait is the gateway's)
      return;
    }
    stopRate?.();
    bodyTooSlow(ctx, req, res, requestId, `no request body data for ${ms} ms`, 'client body timeout');
  });
  req.once('end', () => req.setTimeout(0));
}

/** Whether the whole request body came from the client (read or not). */
function bodyArrived(req: IncomingMessage): boolean {
  return isHttp2(req) ? (req as unknown as { stream: { readableEnded: boolean } }).stream.readableEnded : req.complete;
}

/** The client's body came too slowly: 408 when nothing was answered yet, else the connection (HTTP/2: stream) cut. */
function bodyTooSlow(ctx: RequestContext, req: IncomingMessage, res: ServerResponse, requestId: string, detail: string, reason: string): void {
  if (!res.headersSent) {
    reject(ctx, req, res, requestId, 'request-timeout', detail);
    // HTTP/2: the stream is reset with NO_ERROR once the 408 is out (gateway.ts, discardBody);
    // destroying it now reset it with INTERNAL_ERROR, and the client saw an error, not the 408.
    if (isHttp2(req)) return;
  }
  req.destroy(new Error(reason));
}

/**
 * timeouts.client_body_min_rate: the idle bound alone lets a client send a byte every
 * client_body and hold the request (its upstream connection, its bulkhead slot) forever
 * (slow POST, R.U.D.Y.). Each `ms` period the gateway reads the body must bring minRate bytes a
 * second, as Apache's mod_reqtimeout MinRate asks; a period where the gateway held the body back
 * (paused by the upstream's backpressure, not read yet: a bulkhead queue, a plugin) is the
 * gateway's and does not count. Bytes are counted as the parser hands them over (push), so the
 * stream is never made to flow by a listener. Returns the function that stops the watch.
 */
function watchBodyRate(ctx: RequestContext, req: IncomingMessage, res: ServerResponse, requestId: string, ms: number, minRate: number): () => void {
  const need = minRate * ms / 1000;
  let got = 0;
  let held = false;
  const push = req.push;
  req.push = function (this: IncomingMessage, chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk !== null && chunk !== undefined) got += (chunk as { length: number }).length;
    return push.call(this, chunk, encoding);
  };
  const onPause = () => { held = true; };
  req.on('pause', onPause);
  const timer = setInterval(() => {
    if (held || req.readableFlowing !== true || req.readableLength > 0) {
      held = req.readableFlowing !== true;
      got = 0;
      return;
    }
    if (got >= need) {
      got = 0;
      return;
    }
    stop();
    req.setTimeout(0);
    bodyTooSlow(ctx, req, res, requestId, `the request body came slower than ${minRate} bytes/s (${got} bytes in ${ms} ms)`, 'client body too slow');
  }, ms).unref(); // (stopped at the end of the body, of the request or of its answer)
  const stop = () => {
    clearInterval(timer);
    req.off('pause', onPause);
  };
  req.once('end', stop);
  req.once('close', stop);
  res.once('close', stop); // (a request answered and gone may never end its body stream)
  return stop;
}

/**
 * X-Forwarded-Prefix (forwarding_headers): the path prefix strip_path removed, so an upstream
 * served under it builds its links with it (Traefik's StripPrefix, Spring's ForwardedHeaderFilter).
 * A trusted proxy's own prefix (already in `headers`, untrusted copies never are) goes first.
 * Runs after `host` was pushed last.
 */
function forwardPrefix(headers: string[], stripped: string, trusted: boolean): void {
  let prefix = stripped.endsWith('/') ? stripped.slice(0, -1) : stripped;
  for (let i = headers.length - 2; i >= 0; i -= 2) {
    const name = headers[i]!;
    if (name.length !== 18 || name.toLowerCase() !== 'x-forwarded-prefix') continue;
    const prior = headers[i + 1]!.trim();
    // (the first copy a trusted proxy sent; a value that is no path is not one to build on)
    if (trusted && prior.charCodeAt(0) === 0x2f && !prior.includes(',')) prefix = (prior.endsWith('/') ? prior.slice(0, -1) : prior) + prefix;
    headers.splice(i, 2);
    break;
  }
  // (before the last pair: `host`, whose value the forwarder sets per target)
  if (prefix !== '') headers.splice(headers.length - 2, 0, 'x-forwarded-prefix', prefix);
}

/** Whether the client used TLS: to the gateway, or to a trusted proxy in front by its word (X-Forwarded-Proto, or Forwarded's proto). */
function clientUsedTls(req: IncomingMessage, trusted: boolean, xfProto: string | undefined): boolean {
  return isTls(req) || (trusted && xfProto?.split(',')[0]!.trim().toLowerCase() === 'https');
}

function headerValue(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(', ') : v || undefined;
}

/** The value of cookie `name` (RFC 6265 §5.4 cookie-string: `a=1; b=2`), undefined when absent or empty. */
function cookieValue(req: IncomingMessage, name: string): string | undefined {
  const header = req.headers.cookie;
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim() || undefined;
  }
  return undefined;
}

/** Handles one request; returns the upstream handler when the request was forwarded. */
export function handleRequest(
  ctx: RequestContext, req: IncomingMessage, res: ServerResponse, expectContinue: boolean, upgrade?: Upgrade, ex: Exchange | null = null,
): ForwardHandler | undefined | Promise<ForwardHandler | undefined> {
  const snap = ctx.snapshot;
  const raw = req.rawHeaders;
  const h2 = isHttp2(req);
  // An upgrade request's socket left the HTTP parser: whatever happens, it is the last on its connection.
  const close = (ctx.draining && !h2) || upgrade !== undefined;
  let requestId = '';
  if (req.httpVersionMajor !== 1 && !h2) return reject(ctx, req, res, requestId, 'http-version-not-supported', `HTTP/${req.httpVersion} is not supported`);
  const url = req.url ?? '';
  if (url.length > snap.limits.maxUriLength) return reject(ctx, req, res, requestId, 'uri-too-long', `the request target is longer than ${snap.limits.maxUriLength} bytes`);
  // HTTP/2: nghttp2 passes bytes past ASCII in :path (raw UTF-8, an overlong C0 AF that lenient
  // decoders read as '/'), which llhttp refuses over HTTP/1.1 and which would go upstream as an
  // invalid request line (RFC 3986 §2: they are percent-encoded). Control bytes and spaces
  // nghttp2 refuses itself.
  if (h2 && NOT_URI_CHAR.test(url)) return reject(ctx, req, res, requestId, 'bad-request', 'the request target has a byte that is not allowed in a URI (non-ASCII is sent percent-encoded)');
  // HTTP/2: nghttp2 takes any token as :method; over HTTP/1.1 llhttp answers a method it does not
  // know (`trace`, `get`: methods are case-sensitive, RFC 9110 §9.1) with a 501 (gateway.ts).
  // Forwarded, `trace` passed the TRACE block and `get` a GET-only route (to the catch-all),
  // for an upstream that upper-cases methods (Werkzeug) to serve.
  if (h2 && !KNOWN_METHODS.has(req.method ?? '')) return reject(ctx, req, res, requestId, 'not-implemented', 'the request method is not supported');
  // (HTTP/2's list also holds its 3-4 pseudo-header fields.)
  if (raw.length / 2 > snap.limits.maxHeaders + (h2 ? 4 : 0)) return reject(ctx, req, res, requestId, 'headers-too-large', `more than ${snap.limits.maxHeaders} header fields`);

  // One pass over the raw header list.
  const headers: string[] = [];
  let bytes = 0;
  let hostCount = 0;
  let authCount = 0;
  let host = '';
  let teCount = 0;
  let te: string | undefined;
  let cl: string | undefined;
  let connection: string | undefined;
  let incomingId: string | undefined;
  let xff: string | undefined;
  let xfProto: string | undefined;
  let xfHost: string | undefined;
  let xfPort: string | undefined;
  let forwarded: string | undefined;
  let refreshToken: string | undefined;
  let via: string | undefined;
  let maxForwards: string | undefined;
  let proxyOnly: string[] | undefined;
  let authority: string | undefined;
  let scheme: string | undefined;
  let h2Cookie: string | undefined;
  let methodOverride: string | undefined;
  let teTrailers = false;
  // With tracing on, the gateway sends its own trace context upstream (a child of the client's).
  // The tracer is the one of the request's start all along: a reload that turns tracing off
  // while plugins wait must not leave the rest of the request without one.
  const tracer = ex !== null ? (ctx.observer?.tracing ?? null) : null;
  const tracing = tracer !== null;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const value = raw[i + 1]!;
    bytes += name.length + value.length + 4;
    // HTTP/2 pseudo-header fields (node:http2 has checked them): :authority stands for Host.
    if (h2 && name.charCodeAt(0) === 0x3a /* : */) {
      if (name === ':authority') authority = value;
      else if (name === ':scheme') scheme = value;
      continue;
    }
    switch (name.length < 20 ? name.toLowerCase() : '') {
      case 'host': hostCount++; host = value; continue;
      case 'authorization': authCount++; headers.push(name, value); continue;
      case 'transfer-encoding': teCount++; te = value; continue;
      case 'content-length': cl = value; continue;
      case 'connection': connection = join(connection, value); continue;
      case 'x-request-id': incomingId ??= value; continue;
      case 'x-forwarded-for': xff = join(xff, value); continue;
      case 'x-forwarded-proto': xfProto = join(xfProto, value); continue;
      case 'x-forwarded-host': xfHost = join(xfHost, value); continue;
      case 'x-forwarded-port': xfPort = join(xfPort, value); continue;
      case 'forwarded': forwarded = join(forwarded, value); continue;
      // the gateway's own background refresh marker (src/plugins/cache/refresh.ts): never upstream
      case 'x-turnpike-refresh': refreshToken = value; continue;
      case 'via': via = join(via, value); continue;
      case 'max-forwards': maxForwards = value; continue;
      // method overrides some frameworks obey (the longer X-HTTP-Method-Override: below)
      case 'x-http-method': case 'x-method-override':
        methodOverride = methodOverride === undefined ? value : `${methodOverride}, ${value}`;
        headers.push(name, value);
        continue;
      // connection-specific (RFC 9110 §7.6.1) or computed by the gateway
      // TE is hop-by-hop, but its `trailers` (the client reads trailer fields, RFC 9110 §10.1.4)
      // holds for the upstream hop too: the gateway relays trailers (Envoy keeps it the same way)
      case 'te': if (!teTrailers && /(^|,)\s*trailers\s*(,|$)/i.test(value)) teTrailers = true; continue;
      case 'keep-alive': case 'proxy-connection': case 'upgrade': case 'http2-settings':
      case 'expect': case 'x-real-ip':
      // credentials for a forward proxy, consumed by the first proxy (RFC 9110 §11.7.2; Go's
      // ReverseProxy drops it as hop-by-hop): never a secret for the upstream. `Proxy` has no
      // use in HTTP; CGI-style upstreams read it as HTTP_PROXY, their outbound proxy (httpoxy,
      // CVE-2016-5385: nginx, HAProxy and Apache advise dropping it)
      case 'proxy-authorization': case 'proxy':
      // the authenticated consumer, set by the gateway only (the longer names: below)
      case 'x-consumer-id': case 'x-consumer-name': case 'x-consumer-groups': case 'x-consumer-username':
      // the IdP's userinfo (base64 JSON) that Kong's OpenID Connect plugins (kong-oidc, Kong's
      // openid-connect) send their upstreams: a client's copy would be taken for the IdP's word
      case 'x-userinfo':
        continue;
      // fields some frameworks trust for routing or identity: only a trusted proxy may send them
      case 'x-original-url': case 'x-rewrite-url': case 'x-forwarded-prefix': case 'x-forwarded-server':
      case 'x-forwarded-scheme': case 'x-forwarded-ssl': case 'x-client-ip': case 'true-client-ip':
      case 'x-cluster-client-ip':
      // the request's URL, scheme and host as proxies tell them (Traefik, ingress-nginx, Kong,
      // Tornado, Werkzeug's ProxyFix): frameworks build redirects and links from them
      case 'x-forwarded-uri': case 'x-forwarded-path': case 'x-original-uri': case 'x-scheme':
      case 'x-host': case 'x-original-host':
      // client-certificate identity and scheme fields set by TLS terminators (long ones: below)
      case 'x-client-cert': case 'x-client-verify': case 'x-client-dn': case 'x-client-cert-chain':
      case 'x-ssl-client-cert': case 'x-ssl-client-verify': case 'x-ssl-client-s-dn': case 'x-ssl-client-i-dn':
      case 'x-ssl-client-dn': case 'x-ssl-client-serial': case 'x-ssl-client-sha1': case 'ssl-client-cert':
      case 'ssl-client-verify': case 'ssl-client-s-dn': case 'ssl-client-i-dn': case 'front-end-https':
      case 'x-url-scheme': case 'x-arr-ssl': case 'x-arr-clientcert':
        (proxyOnly ??= []).push(name, value);
        continue;
      case 'cookie': {
        // The console's and the portal's session cookies (a browser sends the console's to
        // every port of the admin's host) never reach an upstream.
        let v = value;
        if (value.includes('tp_console=') || value.includes('tp_portal=')) {
          v = value.split(';').filter((c) => !/^\s*(?:__Host-)?tp_(console|portal)=/.test(c)).join(';').trim();
          if (v === '') continue;
        }
        // HTTP/2 splits cookies into crumbs: joined again with "; " (RFC 9113 §8.2.3).
        if (h2) h2Cookie = h2Cookie === undefined ? v : `${h2Cookie}; ${v}`;
        else headers.push(name, v);
        continue;
      }
      case 'traceparent': case 'tracestate':
        if (!tracing) headers.push(name, value);
        else {
          // W3C Trace Context §3.2 / §3.3.1: a repeated traceparent is invalid (''), repeated
          // tracestate lines are one list.
          const c = (ex!.traceCarrier ??= {}); // (a tracer is only taken with an exchange)
          const k = name.length === 11 ? 'traceparent' : 'tracestate';
          const prev = c[k];
          c[k] = prev === undefined ? value : k === 'traceparent' ? '' : `${prev},${value}`;
        }
        continue;
      default:
        if (name.length >= 20) {
          const lower = name.toLowerCase();
          if (LONG_OWNED.has(lower)) continue;
          if (lower === 'x-http-method-override') methodOverride = methodOverride === undefined ? value : `${methodOverride}, ${value}`;
          if (LONG_PROXY_ONLY.has(lower)) {
            (proxyOnly ??= []).push(name, value);
            continue;
          }
        }
        if (name.length >= 10 && CERT_FIELD.test(name)) {
          (proxyOnly ??= []).push(name, value);
          continue;
        }
        if (name.includes('_') && ownedWithUnderscore(name, snap)) continue;
        if (snap.extraStripped !== null && snap.extraStripped.has(name.toLowerCase())) continue;
        headers.push(name, value);
    }
  }
  if (h2Cookie !== undefined) headers.push('cookie', h2Cookie);
  requestId = validRequestId(incomingId) ? incomingId : nextRequestId();
  if (ex !== null) {
    ex.requestId = requestId;
    // (the request line's two spaces, "HTTP/1.1" and CRLF: 12; the blank line ending the head: 2)
    ex.bytesIn = bytes + url.length + (req.method?.length ?? 0) + 14;
    if (cl !== undefined) ex.bodyLength = Number(cl) || 0;
  }
  if (bytes > snap.limits.maxHeaderSize) return reject(ctx, req, res, requestId, 'headers-too-large', `header fields exceed ${snap.limits.maxHeaderSize} bytes`);

  // Host: exactly one, well-formed (RFC 9112 §3.2). HTTP/2: :authority, and a Host beside it must agree (RFC 9113 §8.3.1).
  if (hostCount > 1) return reject(ctx, req, res, requestId, 'bad-request', 'more than one Host header');
  // Authorization is a singleton (RFC 9110 §5.3, §11.6.2): the gateway would check one credential
  // and the upstream might read another.
  if (authCount > 1) return reject(ctx, req, res, requestId, 'bad-request', 'more than one Authorization header');
  if (authority !== undefined) {
    if (hostCount === 1 && host !== authority && !sameAuthority(host, authority, isTls(req) ? ':443' : ':80')) {
      return reject(ctx, req, res, requestId, 'bad-request', ':authority and Host disagree');
    }
    host = authority;
    hostCount = 1;
  }
  if (h2 && hostCount === 0) return reject(ctx, req, res, requestId, 'bad-request', 'missing :authority');
  // The gateway serves http and https URIs only (nghttp2 takes any scheme's syntax: ftp, foo). A
  // :scheme is never believed as the client's (its connection says whether it used TLS): https
  // over h2c is no TLS for X-Forwarded-Proto, Forwarded or a same-origin check.
  if (scheme !== undefined && !(scheme.length === 4 ? scheme.toLowerCase() === 'http' : scheme.length === 5 && scheme.toLowerCase() === 'https')) {
    return reject(ctx, req, res, requestId, 'bad-request', `an HTTP/2 :scheme of ${JSON.stringify(scheme.slice(0, 32))}: only http and https are served`);
  }
  let p = peerInfo(req.socket, snap);
  if (refreshToken !== undefined) p = refreshPeer(ctx, req, p, refreshToken);
  // A trusted proxy that sent Forwarded (RFC 7239) and no X-Forwarded-*: its elements are the
  // hops, the client's scheme and Host, as X-Forwarded-For/-Proto/-Host would have told them
  // (the client IP, and the X-* fields upstream agree with the Forwarded that goes on).
  if (forwarded !== undefined && p.trusted && xff === undefined && xfProto === undefined && xfHost === undefined) {
    const x = xFromForwarded(forwarded);
    if (x !== null) {
      xff = x.for;
      xfProto = x.proto;
      xfHost = x.host;
    }
  }
  if (host !== '' && host !== p.lastHost) {
    if (!HOST_RE.test(host) || portBeyondRange(host)) return reject(ctx, req, res, requestId, 'bad-request', 'malformed Host header');
    p.lastHost = host;
    p.lastHostName = hostName(host);
  }
  if (hostCount === 0 && req.httpVersionMinor >= 1) return reject(ctx, req, res, requestId, 'bad-request', 'missing Host header');

  // Transfer-Encoding: exactly one field, exactly `chunked`, and not on HTTP/1.0 (RFC 9112 §6.1, §6.3).
  if (teCount > 0) {
    if (teCount > 1 || te!.trim().toLowerCase() !== 'chunked') return reject(ctx, req, res, requestId, 'bad-request', 'unsupported Transfer-Encoding (only a single "chunked" is accepted)');
    if (req.httpVersionMinor === 0) return reject(ctx, req, res, requestId, 'bad-request', 'Transfer-Encoding in an HTTP/1.0 request');
  }
  // A Content-Length the parser took (up to 2^64 - 1) but a number cannot hold: the upstream hop
  // (undici) would be told another length than the client framed its body with.
  if (cl !== undefined && cl.length > 15 && !(Number(cl) <= Number.MAX_SAFE_INTEGER)) {
    return reject(ctx, req, res, requestId, 'payload-too-large', `a Content-Length past ${Number.MAX_SAFE_INTEGER} bytes`);
  }

  // Request target: origin-form, or absolute-form whose authority replaces Host (RFC 9112 §3.2.2).
  let target = url;
  // (before the absolute-form regex: with a '#' at the end it backtracked in quadratic time)
  if (url.includes('#')) return reject(ctx, req, res, requestId, 'bad-request', 'the request target may not contain a fragment (#)');
  if (url.charCodeAt(0) !== 0x2f /* / */) {
    // HTTP/2's :path is the path and query only (RFC 9113 §8.3.1): the authority is :authority's,
    // and nghttp2 lets an absolute URL through for a :scheme other than http(s).
    if (h2 && url !== '*') return reject(ctx, req, res, requestId, 'bad-request', 'an HTTP/2 :path is a path (with its query), not an absolute URL');
    if (url === '*') {
      if (req.method !== 'OPTIONS') return reject(ctx, req, res, requestId, 'bad-request', 'asterisk-form is only for OPTIONS');
      if (ex !== null) {
        // (logged as received: the Host, the target `*`, the client)
        ex.host = host;
        ex.path = '*';
        ex.clientIp = p.trusted ? clientIp(p.peer, xff, snap.trusted) : p.peer;
      }
      res.writeHead(200, { allow: ALLOW_ALL, 'content-length': 0, 'x-request-id': requestId, ...(close ? { connection: 'close' } : {}) }).end();
      return undefined;
    }
    const m = ABSOLUTE_RE.exec(url);
    if (!m || !m[2] || !HOST_RE.test(m[2]) || portBeyondRange(m[2])) return reject(ctx, req, res, requestId, 'bad-request', 'the request target is not in origin-form or absolute-form');
    host = m[2];
    target = m[3] || '/';
    if (target.charCodeAt(0) !== 0x2f) target = '/' + target;
  } else if (host === '' && hostCount === 1) {
    // An empty Host (or :authority) makes an http(s) URI with an empty host, which a recipient
    // must reject as invalid (RFC 9110 §4.2.1, §4.2.2); an absolute-form authority replaces it.
    return reject(ctx, req, res, requestId, 'bad-request', 'empty Host header');
  }
  const q = target.indexOf('?');
  const path = normalizePath(q === -1 ? target : target.slice(0, q));
  const query = q === -1 ? '' : target.slice(q);
  if (path === null) return reject(ctx, req, res, requestId, 'bad-request', 'malformed or ambiguous path (bad percent-encoding, encoded bytes that are no UTF-8, a backslash, or a dot segment hidden in %2F, %5C or ;)');
  if (ex !== null) {
    ex.host = host;
    ex.path = path;
    ex.query = query;
    ex.clientIp = p.trusted ? clientIp(p.peer, xff, snap.trusted) : p.peer;
  }

  const method = req.method ?? 'GET';
  // TRACE reflects requests (cross-site tracing): never forwarded.
  if (method === 'TRACE') return reject(ctx, req, res, requestId, 'method-not-allowed', 'TRACE is disabled at the gateway', { allow: ALLOW_ALL });
  const hostKey = host === p.lastHost ? p.lastHostName : hostName(host);
  // Domain fronting where clients identify with certificates (tls.client_ca): a request whose
  // Host names another of the listener's certificates than the connection's server name chose
  // is not served on it — 421, the client opens a connection for that name (RFC 9110 §15.5.20),
  // as nginx answers when client verification is on. A connection set up for a.example must
  // not carry a request to b.example's routes.
  if (snap.tls !== null && snap.tls.requestCert && isTls(req) && snap.tls.certs.misdirected((req.socket as TLSSocket).servername, hostKey)) {
    return reject(ctx, req, res, requestId, 'misdirected-request', `this connection's TLS server name (SNI) is not ${hostKey}: open a connection for it`);
  }
  // The developer portal (portal.enabled) answers its own paths (on its hosts), before any route.
  if (snap.portal !== null && isPortalPath(snap.portal, path) && (snap.portal.hosts === null || snap.portal.hosts.has(hostKey))) {
    const tls = clientUsedTls(req, p.trusted, xfProto);
    // Over TLS, the portal's pages (catalog and accounts) tell the browser to stay on HTTPS.
    const extra = { 'x-request-id': requestId, ...(close ? { connection: 'close' } : {}), ...(tls ? HSTS : {}) };
    const rest = path.slice(snap.portal.base.length);
    if (snap.portal.accounts !== null && isAccountPath(rest)) {
      // Developer accounts: answered where the config store is (this process, or the primary).
      const hasBody = te !== undefined || (cl !== undefined && cl !== '0') || (h2 && cl === undefined && !(req as unknown as { stream: { endAfterHeaders: boolean } }).stream.endAfterHeaders);
      answerAccount(ctx.portalAccounts ?? null, req, res, {
        method, path: rest, query: query.slice(1), host, tls,
        clientIp: p.trusted ? clientIp(p.peer, xff, snap.trusted) : p.peer,
        cookie: headerValue(req, 'cookie'), origin: headerValue(req, 'origin'), fetchSite: headerValue(req, 'sec-fetch-site'), contentType: headerValue(req, 'content-type'),
      }, { hasBody, declared: cl !== undefined && te === undefined ? Number(cl) : -1, begin: () => {
        if (hasBody) armBodyTimeout(ctx, req, res, requestId, snap.timeouts.clientBody, snap.timeouts.clientBodyMinRate);
        if (expectContinue) res.writeContinue();
      } }, extra);
      return undefined;
    }
    answerPortal(snap.portal, req, res, path, extra);
    return undefined;
  }
  // Max-Forwards (RFC 9110 §7.6.2): an OPTIONS with none left is answered here; otherwise decremented.
  let forwardsLeft: string | undefined;
  if (maxForwards !== undefined && method === 'OPTIONS') {
    // 1*DIGIT, any length (a value past 2^53 is only ever decremented as far as it matters).
    if (!/^[0-9]+$/.test(maxForwards.trim())) return reject(ctx, req, res, requestId, 'bad-request', 'malformed Max-Forwards');
    const n = Math.min(Number(maxForwards.trim()), Number.MAX_SAFE_INTEGER);
    if (n === 0) {
      // The gateway is the final recipient (RFC 9110 §7.6.2); an OPTIONS answer without content has Content-Length: 0 (§9.3.7).
      res.writeHead(200, { allow: ALLOW_ALL, 'content-length': 0, 'x-request-id': requestId, via: VIA_11, ...(close ? { connection: 'close' } : {}) }).end();
      return undefined;
    }
    forwardsLeft = String(n - 1);
  } else if (maxForwards !== undefined) forwardsLeft = maxForwards;
  // A CORS preflight is routed as the request it asks about when that route has a plugin that
  // answers preflights (cors); otherwise it is the OPTIONS request it is (405 where OPTIONS is not allowed).
  // A browser's preflight has no body and no method override (Fetch §4.8): one with either is
  // an OPTIONS request, or with preflight_continue it would reach the upstream of a route that
  // may not take OPTIONS, its body unvalidated (request-validator passes preflights) and its
  // override unchecked.
  const acrm = method === 'OPTIONS' && req.headers.origin !== undefined ? req.headers['access-control-request-method'] : undefined;
  let preflight = typeof acrm === 'string' && /^[A-Za-z]+$/.test(acrm) && methodOverride === undefined &&
    te === undefined && (cl === undefined ? !h2 || (req as unknown as { stream: { endAfterHeaders: boolean } }).stream.endAfterHeaders : cl === '0');
  let match = snap.router.match(preflight ? (acrm as string).toUpperCase() : method, hostKey, path, snap.router.usesHeaders ? req.headers : NO_HEADERS);
  if (preflight && (match === null || 'methodNotAllowed' in match || !match.data.chains.base.preflight)) {
    preflight = false;
    match = snap.router.match(method, hostKey, path, snap.router.usesHeaders ? req.headers : NO_HEADERS);
  }
  if (match === null) return reject(ctx, req, res, requestId, 'no-route', `no route matches ${method} ${path}`);
  if ('methodNotAllowed' in match) {
    return reject(ctx, req, res, requestId, 'method-not-allowed', `${method} is not allowed on ${path}`, { allow: match.methodNotAllowed.join(', ') });
  }
  const route = match.data;
  // A path an upstream may read as another, at least as specific route's (`/%2Fadmin` next to a
  // protected /admin, `/admin;x`): refused, not guessed. (Read as a broader route's, e.g.
  // GitLab's `/projects/group%2Fname/issues` falling to `/`, it is the upstream's own id.)
  const reading = upstreamReading(path);
  if (reading !== null) {
    const other = snap.router.match(preflight ? (acrm as string).toUpperCase() : method, hostKey, reading, snap.router.usesHeaders ? req.headers : NO_HEADERS);
    if (other !== null && ('methodNotAllowed' in other || (other.data !== route && depth(other.pattern) >= depth(match.pattern)))) {
      return reject(ctx, req, res, requestId, 'bad-request', 'ambiguous path: read with its %2F, %5C or ;parameters decoded, as many servers do, it is another route\'s');
    }
  }
  // The same for a path in another case than a route's literal (`/ADMIN` next to a protected
  // /admin falls to `/`): Express (by default), ASP.NET and IIS match it case-insensitively.
  // (Only a path with a capital letter in a segment some route names in lower case is looked at.)
  const read = reading ?? path;
  if (snap.router.caseVariant(read)) {
    const other = snap.router.match(preflight ? (acrm as string).toUpperCase() : method, hostKey, read, snap.router.usesHeaders ? req.headers : NO_HEADERS, true);
    if (other !== null && ('methodNotAllowed' in other || (other.data !== route && depth(other.pattern) >= depth(match.pattern)))) {
      return reject(ctx, req, res, requestId, 'bad-request', 'ambiguous path: read case-insensitively, as many servers do, it is another route\'s');
    }
  }
  // A method override (X-HTTP-Method-Override and kin: Express's method-override, ASP.NET,
  // Symfony obey it) naming a method this path routes elsewhere, or not at all, would take a
  // public route's request to a protected one's handler: refused, as TRACE is in any case.
  // (Symfony and Laravel take a POST's `_method` query parameter for one too)
  if (method === 'POST' && query.length > 8) methodOverride = queryMethodOverride(query, methodOverride);
  if (methodOverride !== undefined && !preflight) {
    const o = methodOverride.trim().toUpperCase();
    if (o !== method) {
      const other = TOKEN_METHOD.test(o) && o !== 'TRACE' && o !== 'CONNECT' ? snap.router.match(o, hostKey, path, snap.router.usesHeaders ? req.headers : NO_HEADERS) : null;
      if (other === null || 'methodNotAllowed' in other || other.data !== route) {
        return reject(ctx, req, res, requestId, 'bad-request', `ambiguous method: the method override ${JSON.stringify(methodOverride).slice(0, 40)} is not routed as ${method} ${path} is`);
      }
    }
  }
  if (ex !== null) {
    ex.route = route;
    if (tracer !== null) tracer.startRequest(ex, method, match.pattern, p.proto);
  }
  const websocket = upgrade !== undefined && route.websocket !== null && /(^|,)\s*websocket\s*(,|$)/i.test(req.headers.upgrade ?? '');
  if (upgrade !== undefined && !websocket && (te !== undefined || (cl !== undefined && cl !== '0'))) {
    // The parser stopped at the head: the body is not framed for us. Answered, never forwarded.
    return reject(ctx, req, res, requestId, 'bad-request', 'a request with Upgrade and a body is only accepted on WebSocket routes');
  }

  // Fields named in Connection are connection-specific too (those the gateway owns stay its own).
  const nominated = connectionTokens(connection);
  if (nominated !== null) {
    for (let i = headers.length - 2; i >= 0; i -= 2) if (nominated.has(headers[i]!.toLowerCase())) headers.splice(i, 2);
  }

  // Forwarding fields: a trusted proxy's are extended, anyone else's replaced.
  const t = p.trusted;
  if (t && proxyOnly !== undefined) headers.push(...proxyOnly);
  const fw = snap.forwarding;
  if (fw.xff) headers.push('x-forwarded-for', t && xff ? `${xff}, ${p.peer}` : p.peer);
  // (a trusted chain's list, `https, http`, goes on as it came: its first entry is the client's
  // scheme, as Express and Spring read it; replaced by this hop's `http`, the upstream saw none)
  if (fw.proto) headers.push('x-forwarded-proto', t && xfProto !== undefined && XFP_RE.test(xfProto) ? xfProto : p.proto);
  if (fw.host) {
    // (an HTTP/1.0 request without Host has none to tell: no empty field, as Forwarded has no host=)
    const fh = t && xfHost !== undefined && hostList(xfHost) ? xfHost : host;
    if (fh !== '') headers.push('x-forwarded-host', fh);
  }
  if (fw.port) headers.push('x-forwarded-port', t && xfPort !== undefined && /^[0-9]{1,5}$/.test(xfPort) ? xfPort : p.port);
  if (fw.realIp) headers.push('x-real-ip', t ? clientIp(p.peer, xff, snap.trusted) : p.peer);
  if (fw.forwarded) {
    // A trusted proxy's Forwarded goes on; one that sent only X-Forwarded-* has its hops told in
    // Forwarded's terms, so both families name the same client and scheme.
    let prior = t ? forwarded : undefined;
    if (t && !prior && (xff || xfProto || xfHost)) {
      prior = forwardedFromX(
        xff,
        xfProto !== undefined && XFP_RE.test(xfProto) ? xfProto.split(',')[0]!.trim().toLowerCase() : undefined,
        xfHost !== undefined && hostList(xfHost) ? xfHost.split(',')[0]!.trim() : undefined,
      );
    }
    headers.push('forwarded', `${prior ? prior + ', ' : ''}${p.forwardedFor}${host ? `;host="${host}"` : ''};proto=${p.proto}`);
  }
  const received = h2 ? VIA_2 : req.httpVersionMinor === 1 ? VIA_11 : VIA_10;
  headers.push(
    'via', via ? `${via}, ${received}` : received,
    'x-request-id', requestId,
  );
  if (forwardsLeft !== undefined) headers.push('max-forwards', forwardsLeft);
  // gRPC needs `te: trailers` upstream (RFC 9113 §8.2.2 allows exactly that value).
  // An HTTP/1.0 client cannot take trailers (no chunked framing).
  if (route.service.grpc || (teTrailers && (h2 || req.httpVersionMinor >= 1))) headers.push('te', 'trailers');
  // HTTP/2 frames its body: one may come without Content-Length.
  const hasBody = te !== undefined || (cl !== undefined && cl !== '0') || (h2 && cl === undefined && !(req as unknown as { stream: { endAfterHeaders: boolean } }).stream.endAfterHeaders);
  // gRPC-Web from a browser goes upstream as gRPC (its text form decoded, so no Content-Length).
  const grpcWeb = route.service.grpc ? grpcWebKind(req.headers['content-type']) : null;
  // A gRPC call: to a gRPC service, or by its content type through any other (`protocol: h2c`;
  // gRPC is HTTP/2 only, and an HTTP/2 request's headers object is already built).
  const grpcCall = route.service.grpc || (h2 && isGrpcContentType(req.headers['content-type']));
  if (grpcWeb !== null) {
    for (let i = 0; i < headers.length; i += 2) if (headers[i]!.toLowerCase() === 'content-type') headers[i + 1] = grpcWeb.grpcContentType;
  } else if (cl !== undefined && te === undefined) headers.push('content-length', cl);
  headers.push('host', ''); // value set per target by ForwardHandler

  let upstreamPath = path;
  // strip_path left nothing (`/base` on route /base, not `/base/`): a target's base path alone
  // stands for it (`/v1`, as Kong sends it); a `/` the client sent stays (`/v1/`).
  let bare = false;
  if (route.stripPath) {
    upstreamPath = path.slice(match.prefixLength);
    if (upstreamPath.charCodeAt(0) !== 0x2f) {
      bare = upstreamPath === '';
      upstreamPath = '/' + upstreamPath;
    }
    if (fw.prefix) forwardPrefix(headers, path.slice(0, match.prefixLength), t);
  }

  const svc = route.service;
  let hashKey = '';
  if (svc.hashOn !== null) {
    const h = svc.hashOn;
    const ip = t ? clientIp(p.peer, xff, snap.trusted) : p.peer;
    hashKey = h.kind === 'ip' ? ip : (h.kind === 'header' ? headerValue(req, h.name) : cookieValue(req, h.name)) ?? ip;
  }
  // The body is read (once) by a plugin that needs it whole, or streamed to the upstream.
  let bodyStarted = false;
  const beginBody = () => {
    if (bodyStarted) return;
    bodyStarted = true;
    // (a gRPC request body is a stream of messages at the application's pace: client streaming)
    if (hasBody) armBodyTimeout(ctx, req, res, requestId, snap.timeouts.clientBody, grpcCall ? 0 : snap.timeouts.clientBodyMinRate);
    if (expectContinue) res.writeContinue();
  };
  const bodySource = { hasBody, declared: cl !== undefined && te === undefined ? Number(cl) : -1, begin: beginBody };
  /** Past the request phases: the WebSocket relay, a composition, or the upstream. */
  const proceed = (pctx: PluginCtx | null, plugins: ResponsePlugins | null, bodyLimit: number | null = null): ForwardHandler | undefined => {
    // Demand on the service from here on (in flight until Observer.end records it): a request
    // its plugins answered (401, 403, 429, a cache hit, a preflight) never needed it, and the
    // time plugins take (an introspection call) is no upstream's.
    if (ex !== null && ctx.observer!.demand !== null) {
      ctx.observer!.demand.begin(route.service.name);
      ex.demand = true;
    }
    const upstreamQuery = pctx?.upstreamQuery ?? query;
    const upPath = pctx?.upstreamPath ?? upstreamPath;
    const bareBase = bare && upPath === upstreamPath;
    if (websocket) {
      // (the scheme the client used: TLS here, or a trusted proxy's X-Forwarded-Proto)
      const secure = clientUsedTls(req, p.trusted, xfProto);
      return startWebSocket(ctx, req, res, upgrade, route, headers, upPath + upstreamQuery, bareBase, requestId, hashKey, host, secure, ex, pctx?.responseHeaders);
    }
    if (route.compose !== null) {
      composeRoute({
        req, res, route, params: match.params ?? {}, method, path, query, requestId, close,
        pctx, plugins, body: bodySource, exchange: ex, log: ctx.log, snapshot: snap, tracing: tracer, demand: ctx.observer?.demand ?? null,
      });
      return undefined;
    }
    let body: Buffer | null = null;
    if (pctx !== null && pctx.upstreamBody !== null) {
      // A plugin read (or replaced) the body: it goes upstream from memory, with its length.
      body = pctx.upstreamBody;
      for (let i = headers.length - 4; i >= 0; i -= 2) if (headers[i]!.toLowerCase() === 'content-length') headers.splice(i, 2);
      headers.splice(headers.length - 2, 0, 'content-length', String(body.length));
      if (ex !== null && ex.bodyLength < 0 && pctx.bodyBytesRead > 0) ex.bytesIn += pctx.bodyBytesRead;
    } else beginBody();
    const handler = new ForwardHandler({
      req, res,
      service: route.service,
      method: pctx?.upstreamMethod ?? method,
      path: upPath + upstreamQuery,
      bare: bareBase,
      headers,
      preservedHost: route.preserveHost && host ? host : null,
      hasBody,
      requestId,
      via: route.service.h2Upstream ? VIA_2 : VIA_11,
      closeAfter: close,
      hashKey,
      retryNonIdempotent: route.retryNonIdempotent,
      snapshot: snap,
      grpcWeb,
      grpc: grpcCall,
      plugins,
      bodyLimit,
      body,
      exchange: ex,
      tracing: tracer,
      // (GET, HEAD, OPTIONS and TRACE are the safe methods, RFC 9110 §9.2.1)
      cacheWrite: route.cacheWrites !== null && method !== 'GET' && method !== 'HEAD' && method !== 'OPTIONS' && method !== 'TRACE'
        ? { caches: route.cacheWrites, bucket: { host: hostKeyOf(host, isTls(req) ? 'https' : 'http'), path }, host } : null,
    });
    try {
      handler.start();
    } catch (err) {
      handler.clientClosed(); // releases what it holds (snapshot, slot); the caller answers 500
      throw err;
    }
    return handler;
  };
  const chains = route.chains;
  if (chains.base.empty) return proceed(null, null);

  // Plugins: authenticate, access (maybe asynchronous), then the same way on.
  const pctx = new PluginCtx(req, requestId, method, path, query, host, ex?.clientIp ?? (t ? clientIp(p.peer, xff, snap.trusted) : p.peer), route, route.service, headers, preflight, upstreamPath, match.params ?? undefined);
  pctx.bodySource = bodySource;
  if (ex !== null) {
    ex.pctx = pctx;
    pctx.stats = ctx.observer!.routeStats(route);
    if (ex.span !== null && tracer !== null) pctx.trace = (plugin, phase) => tracer.pluginSpan(ex, plugin, phase);
  }
  const started = Date.now();
  // The log phase runs however the request ends (the chain is the consumer's once known).
  let used: Chain = chains.base;
  if (chains.anyLog) {
    res.once('close', () => {
      // Nothing sent: the client went away first (nginx's 499).
      if (used.log.length) runLog(ctx, pctx, used, res.headersSent ? res.statusCode : 499, Date.now() - started);
    });
  }
  const afterPhases = ({ reply, chain }: PhaseResult): ForwardHandler | undefined => {
    used = chain;
    // (a request read to its end is destroyed by node too: that is not the client leaving)
    if (res.destroyed || res.writableEnded || (req.destroyed && !req.complete)) return undefined; // the client left meanwhile
    if (reply !== null) {
      if (reply.code === undefined && chain.encodeResponse.length > 0) {
        // A plugin's own answer (a cache hit) goes through the encoders too (compression).
        const list = [...pctx.responseHeaders];
        for (const [k, v] of Object.entries(reply.headers ?? {})) {
          for (let i = list.length - 2; i >= 0; i -= 2) if (list[i]!.toLowerCase() === k.toLowerCase()) list.splice(i, 2);
          for (const one of Array.isArray(v) ? v : [v]) list.push(k, one);
        }
        const body = reply.body === undefined ? Buffer.alloc(0) : Buffer.isBuffer(reply.body) ? reply.body : Buffer.from(reply.body);
        writeWhole(req, res, { status: reply.status ?? 200, headers: list, body, origin: 'gateway' }, { ctx: pctx, chain, log: ctx.log }, { requestId, close: ctx.draining && !h2, exchange: ex });
        return undefined;
      }
      sendReply(ctx, req, res, reply, requestId, pctx.responseHeaders);
      return undefined;
    }
    const hasResponsePhases = chain.responseHeaders.length + chain.responseBody.length + chain.bufferResponse.length + chain.response.length + chain.encodeResponse.length > 0;
    if (pctx.bodyLimit !== null && hasBody) {
      // Declared too big: refused before a byte of it is read (and without a 100 Continue).
      if (cl !== undefined && Number(cl) > pctx.bodyLimit) {
        // (with what plugins added for the client: cors' fields, so a page can read the 413)
        reject(ctx, req, res, requestId, 'payload-too-large', `the request body is larger than ${pctx.bodyLimit} bytes`, pctx.responseHeaders.length ? headerRecord(pctx.responseHeaders) : undefined);
        return undefined;
      }
    }
    const extra = pctx.responseHeaders;
    return proceed(pctx, hasResponsePhases || extra.length ? { ctx: pctx, chain, log: ctx.log, extraHeaders: extra } : null, pctx.bodyLimit);
  };
  const onPhaseError = (err: unknown): undefined => {
    const cause = err instanceof PluginError ? err.cause : err;
    if (cause instanceof ProblemError) {
      // A plugin's answer in the catalogue's terms (a body over its cap, invalid JSON, a validation).
      if (!res.destroyed && !res.headersSent) {
        // A body not read to its end cannot leave the connection reusable.
        const unread = hasBody && !req.complete;
        if (unread && !h2) closingSockets.add(req.socket);
        sendProblem(res, cause.code, cause.detail, requestId, { close: (unread || ctx.draining) && !h2, extra: cause.extra, headers: { ...headerRecord(pctx.responseHeaders), ...cause.headers } });
      }
      return undefined;
    }
    const plugin = err instanceof PluginError ? err.plugin : undefined;
    if (cause instanceof ClientAbortedError) {
      // The client gave up on the body a plugin was reading: its doing, any client can cause it
      // (not an error-level event); the request ends as 499.
      ctx.log?.debug({ plugin, request_id: requestId }, 'the client aborted the request body');
      if (!res.headersSent) res.destroy();
      return undefined;
    }
    ctx.log?.error({ err: cause, plugin, request_id: requestId }, 'plugin failed');
    if (!res.destroyed && !res.headersSent) reject(ctx, req, res, requestId, 'internal-error', plugin ? `plugin ${plugin} failed` : 'the request pipeline failed');
    return undefined;
  };
  let phases: PhaseResult | Promise<PhaseResult>;
  try {
    phases = runRequestPhases(pctx, chains, snap.consumerHeaders);
  } catch (err) {
    return onPhaseError(err);
  }
  // Plugins that never wait (key-auth, a local rate limit...) keep the request synchronous.
  return phases instanceof Promise ? phases.then(afterPhases, onPhaseError) : afterPhases(phases);
}

/** A plugin's local reply: a problem from the catalogue, or its own status and body. */
function sendReply(ctx: RequestContext, req: IncomingMessage, res: ServerResponse, r: Reply, requestId: string, extra: string[]): void {
  // A plugin's own answer (a problem, a preflight): headers earlier plugins added for the
  // response (rate-limit state...), then the reply's own. A stored answer (a cache hit, with a
  // status): as over an upstream's, the gateway's fields for this request (cors's for this
  // Origin, RateLimit) replace the stored ones of the same name, and Vary adds up.
  let headers: Record<string, string | string[]>;
  if (r.code === undefined && r.status !== undefined && extra.length > 0 && r.headers !== undefined) {
    const out: string[] = [];
    for (const [k, v] of Object.entries(r.headers)) {
      if (Array.isArray(v)) for (const x of v) out.push(k, x);
      else out.push(k, v);
    }
    overlayGatewayFields(out, extra);
    headers = headerRecord(out);
  } else {
    headers = headerRecord(extra);
    Object.assign(headers, r.headers);
  }
  if (r.code !== undefined) {
    const close = !isHttp2(req) && ctx.draining;
    sendProblem(res, r.code, r.detail ?? PROBLEMS[r.code].title, requestId, { close, headers, extra: r.extra });
    return;
  }
  const status = r.status ?? 200;
  // 204 and 304 have no content, and no Content-Length either (RFC 9110 §8.6, §15.3.5).
  const noContent = status === 204 || status === 304;
  const body = r.body === undefined || noContent ? '' : r.body;
  markAnswered(res, null, requestId, req.method === 'HEAD' ? 0 : Buffer.byteLength(body));
  try {
    res.writeHead(status, noContent ? { ...headers, 'x-request-id': requestId } : { ...headers, 'content-length': Buffer.byteLength(body), 'x-request-id': requestId });
  } catch {
    // A stored answer Node refuses to send to this client: a cache hit stored from an HTTP/1.1
    // exchange, with a field repeated that node:http2 allows once (two Location fields), asked
    // over HTTP/2. Every field set before the refusal goes (one left would make the 502 throw
    // too, out of the request handler: the process gone), as in respond.ts.
    for (const name of res.getHeaderNames()) res.removeHeader(name);
    res.statusMessage = '';
    sendProblem(res, 'invalid-upstream-response', 'the response cannot be forwarded', requestId);
    return;
  }
  res.end(req.method === 'HEAD' || noContent ? undefined : body);
}

function runLog(ctx: RequestContext, pctx: PluginCtx, chain: Chain, status: number, durationMs: number): void {
  for (const b of chain.log) {
    try {
      b.inst.log!(pctx, { status, durationMs });
    } catch (err) {
      ctx.log?.error({ err, plugin: b.name, request_id: pctx.requestId }, 'plugin failed in the log phase');
    }
  }
}

/**
 * A WebSocket upgrade on a route that allows it: a target is picked like for any request, and
 * the relay (src/server/websocket.ts) connects to it before answering the client.
 */
/**
 * Why a browser page may not open this WebSocket (RFC 6455 §10.2: browsers send cookies and
 * cached Basic credentials with a cross-site handshake, and CORS does not apply), or null.
 * With `origins` configured only those may; without, a cross-origin handshake carrying
 * Cookie or Authorization is refused. No Origin (not a browser): allowed.
 */
function originDenied(origins: ReadonlySet<string> | null, req: IncomingMessage, host: string, secure: boolean): string | null {
  const origin = req.headers.origin;
  if (origin === undefined) return null;
  const o = origin.toLowerCase();
  if (origins !== null) return origins.has(o) || origins.has('*') ? null : `the origin ${JSON.stringify(origin).slice(0, 200)} may not open WebSockets here`;
  if (req.headers.cookie === undefined && req.headers.authorization === undefined) return null;
  let same = false;
  try {
    const u = new URL(o);
    const h = host.toLowerCase();
    const defaultPort = u.protocol === 'https:' || u.protocol === 'wss:' ? ':443' : ':80';
    // The scheme too: a plain-HTTP page of the host (which a network attacker can write into)
    // is another origin than the HTTPS one whose cookies a wss:// handshake carries.
    same = u.protocol === (secure ? 'https:' : 'http:') &&
      (u.host === h || `${u.host}${defaultPort}` === h || (h.endsWith(defaultPort) && u.host === h.slice(0, -defaultPort.length)));
  } catch {
    same = false;
  }
  return same ? null : 'a cross-origin WebSocket handshake with credentials (set websocket.origins to allow that origin)';
}

function startWebSocket(
  ctx: RequestContext, req: IncomingMessage, res: ServerResponse, upgrade: Upgrade, route: CompiledRoute,
  headers: string[], path: string, bare: boolean, requestId: string, hashKey: string, host: string, secure: boolean, ex: Exchange | null,
  added: readonly string[] | undefined,
): undefined {
  const svc = route.service;
  // What plugins added for the client (RateLimit, cors's fields) goes on the gateway's own
  // refusals of the handshake as on any of its answers, under the refusal's own fields.
  const plus = (own?: Record<string, string>): Record<string, string | string[]> | undefined =>
    added !== undefined && added.length > 0 ? { ...headerRecord(added), ...own } : own;
  // stop() closed the relays open when it began: one opened later (a handshake sent on a
  // connection accepted just before, or whose plugins were still running) would be left open,
  // and stop() would wait for its socket forever.
  if (ctx.stopping === true) return reject(ctx, req, res, requestId, 'shutting-down', 'the gateway is shutting down', plus({ 'retry-after': '1' }));
  const denied = originDenied(route.websocket!.origins, req, host, secure);
  if (denied !== null) return reject(ctx, req, res, requestId, 'forbidden', denied, plus());
  // The service's circuit and bulkhead hold for WebSockets too: an open circuit refuses the
  // handshake, a half-open one lets it through as one of its trials (its outcome closes or
  // reopens the circuit, as an HTTP trial's does); a relay holds a bulkhead slot for its whole
  // life (no queueing: 503 when full).
  const st = svc.state;
  if (svc.circuit !== null && st.circuit !== 'closed' && (st.circuit === 'open' || st.trials >= svc.circuit.halfOpenRequests)) {
    const wait = Math.max(1, Math.ceil((st.openUntil - Date.now()) / 1000));
    return reject(ctx, req, res, requestId, 'circuit-open', `service "${svc.name}" is failing; its circuit is open`, plus({ 'retry-after': String(wait) }));
  }
  if (svc.bulkhead !== null && st.active >= st.maxConcurrent) {
    return reject(ctx, req, res, requestId, 'service-overloaded', `service "${svc.name}" has ${st.maxConcurrent} requests in flight`, plus({ 'retry-after': '1' }));
  }
  let target = svc.balancer.pick(hashKey, null);
  if (target === null) return reject(ctx, req, res, requestId, 'no-healthy-target', `service "${svc.name}" has no healthy target`, plus(noTargetRetryAfter(svc)));
  const slot = svc.bulkhead !== null;
  if (slot) st.active++;
  let trial = svc.circuit !== null && st.circuit === 'half-open';
  const period = trial ? st.beginTrial() : 0;
  /** The handshake is judged (or abandoned): a half-open trial's place is free again. */
  const endTrial = () => {
    if (trial) {
      trial = false;
      st.endTrial(period);
    }
  };
  // With tracing on, the client's traceparent / tracestate were taken out of the list: the
  // upstream gets the request's context instead (the client's trace, the gateway's span).
  if (ex !== null && ex.span !== null) ctx.observer?.tracing?.inject(ex, headers);
  // The client's handshake fields (sec-websocket-*) are the relay's to send; Host is the target's.
  const out = Object.create(null) as Record<string, string | string[]>; // (a field named constructor is data)
  for (let i = 0; i < headers.length - 2; i += 2) {
    const k = headers[i]!.toLowerCase();
    if (k.startsWith('sec-websocket-') || k === 'content-length') continue;
    const prev = out[k];
    out[k] = prev === undefined ? headers[i + 1]! : Array.isArray(prev) ? [...prev, headers[i + 1]!] : [prev, headers[i + 1]!];
  }
  if (ex !== null) {
    ex.target = target.origin;
    ex.attempts = 1;
    ex.upstreamStart = performance.now();
  }
  // The response object stays on the socket only for rejections made before this point.
  res.detachSocket(upgrade.socket as Socket);
  const ws = route.websocket!;
  /** The handshake's URL, Host and TLS settings for target `t`. */
  const dial = (t: Target) => {
    const secure = t.origin.startsWith('https:');
    // SNI and the verified name: the URL's host name; for an address none is sent (RFC 6066 §3)
    // and the certificate is checked against the address (ws takes it from the URL, unbracketed).
    const name = secure && svc.tls?.servername === undefined ? hostName(t.hostHeader) : '';
    const tls = secure ? { ...svc.tls, servername: undefined, ...upstreamTlsName(svc.tls?.servername ?? (name.charCodeAt(0) === 0x5b /* [ */ || isIP(name) !== 0 ? undefined : name)) } : undefined;
    return {
      url: `${secure ? 'wss' : 'ws'}:${t.origin.slice(t.origin.indexOf('//'))}${joinBase(t.basePath, path, bare)}`,
      headers: { ...out, host: route.preserveHost && host ? host : t.hostHeader },
      ...(tls ? { tls } : {}),
    };
  };
  if (svc.retries > 0) earnRetry(svc);
  let tried: Target[] | null = null;
  target.state.inflight++;
  let released = false;
  const release = () => {
    endTrial();
    if (!released) {
      released = true;
      target!.state.inflight--;
      if (slot) {
        st.active--;
        grantSlots(st);
      }
    }
  };
  /** The handshake's outcome for the circuit and passive health (a 5xx or no answer: failed). */
  const report = (ok: boolean) => {
    if (svc.health.passive !== null) svc.reporter.passive(target!.state.key, ok);
    // (a trial of an earlier half-open period is no trial of this one: ServiceState.endTrial)
    if (svc.circuit !== null) svc.reporter.outcome(svc.name, ok, trial && st.period === period);
  };
  relayWebSocket({
    req, socket: upgrade.socket, head: upgrade.head,
    ...dial(target),
    connectTimeout: svc.timeouts.connect + svc.timeouts.response,
    idleTimeout: ws.idleTimeout,
    maxMessage: ws.maxMessage,
    requestId,
    // A connection that failed before anything was sent (refused, unreachable, TLS handshake) goes to another
    // target, as an HTTP request's does (retries, retry_on connect-error, the retry budget).
    retry: () => {
      const failed = target!;
      if (released || (tried?.length ?? 0) >= svc.retries || !svc.retryOn.connectError) return null;
      const next = svc.balancer.pick(hashKey, (tried ??= []).concat(failed));
      if (next === null || next === failed || tried.includes(next) || !spendRetry(svc, performance.now())) return null;
      tried.push(failed);
      if (svc.health.passive !== null) svc.reporter.passive(failed.state.key, false);
      failed.state.inflight--;
      next.state.inflight++;
      target = next;
      if (ex !== null) {
        ex.target = next.origin;
        ex.attempts++;
      }
      return dial(next);
    },
    responseHeaders: { 'x-request-id': requestId },
    pluginHeaders: added,
    via: VIA_11,
    onOpen: () => {
      report(true);
      endTrial();
      ctx.ws.opened++;
      if (ex !== null) ex.upstreamHeaders = performance.now();
    },
    onReject: (status, upstream) => {
      // (a handshake the upstream never judged, e.g. the client's bad one, is no success of its)
      if (upstream) report(status < 500);
      ctx.ws.rejected++;
      if (ex !== null) ex.status = status;
      release();
      res.emit('close');
    },
    onClose: (stats) => {
      ctx.ws.closed++;
      ctx.ws.messagesIn += stats.messagesIn;
      ctx.ws.messagesOut += stats.messagesOut;
      if (ex !== null) {
        ex.status = 101;
        ex.ws = stats;
        ex.bytesIn += stats.bytesIn;
        ex.bytesOut += stats.bytesOut;
      }
      release();
      ctx.onWsClose?.(stats, route.name, requestId);
      res.emit('close');
    },
  });
  return undefined;
}
