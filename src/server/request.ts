/**
 * The proxy listener's request path: limits, request-target and Host checks, path
 * normalization, routing, forwarding headers, then the upstream. Everything the request needs
 * comes from the snapshot it started with.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import type { Snapshot } from '../config/compile.js';
import { sendProblem } from '../core/problem.js';
import { MANAGED_REQUEST, connectionTokens, copyEndToEnd, validRequestId } from '../core/headers.js';
import { clientIp, forwardedElement, plainIp } from '../core/forwarded.js';
import { normalizePath } from '../router/path.js';
import { hostName } from '../router/router.js';
import { ForwardHandler } from '../upstream/forward.js';

/** RFC 3986 host (reg-name, IPv4, [IPv6]) with an optional port. */
const HOST_RE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{1,5})?$/;
const ABSOLUTE_RE = /^(https?):\/\/([^/?#]*)([^#]*)$/i;

export interface RequestContext {
  snapshot: Snapshot;
  /** Set while draining: every response closes its connection. */
  draining: boolean;
  via: string;
  proto: 'http' | 'https';
  onDone?: (status: number) => void;
}

function headerBytes(raw: string[]): number {
  let n = 0;
  for (let i = 0; i < raw.length; i++) n += raw[i]!.length + 2;
  return n;
}

/** Connections answered with Connection: close: anything pipelined after that answer is dropped. */
export const closingSockets = new WeakSet<object>();

export function handleRequest(ctx: RequestContext, req: IncomingMessage, res: ServerResponse, expectContinue: boolean): void {
  const snap = ctx.snapshot;
  const raw = req.rawHeaders;
  const incomingId = req.headers['x-request-id'];
  const requestId = validRequestId(typeof incomingId === 'string' ? incomingId : undefined) ? (incomingId as string) : randomUUID();
  const close = ctx.draining;
  // Malformed requests close the connection; a request that was merely unroutable does not.
  const fail = (code: Parameters<typeof sendProblem>[1], detail: string, extra?: Record<string, string>) => {
    const keep = code === 'no-route' || code === 'method-not-allowed';
    if (close || !keep) closingSockets.add(req.socket);
    sendProblem(res, code, detail, requestId, { close: close || !keep, headers: extra });
    ctx.onDone?.(res.statusCode);
  };

  if (req.httpVersionMajor !== 1) return fail('http-version-not-supported', `HTTP/${req.httpVersion} is not supported`);
  const url = req.url ?? '';
  if (url.length > snap.limits.maxUriLength) return fail('uri-too-long', `the request target is longer than ${snap.limits.maxUriLength} bytes`);
  if (raw.length / 2 > snap.limits.maxHeaders) return fail('headers-too-large', `more than ${snap.limits.maxHeaders} header fields`);
  if (headerBytes(raw) > snap.limits.maxHeaderSize) return fail('headers-too-large', `header fields exceed ${snap.limits.maxHeaderSize} bytes`);

  // Host: exactly one, well-formed (RFC 9112 §3.2).
  let hostCount = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === 4 && raw[i]!.toLowerCase() === 'host') hostCount++;
  if (hostCount > 1) return fail('bad-request', 'more than one Host header');
  let host = req.headers.host ?? '';
  if (host !== '' && !HOST_RE.test(host)) return fail('bad-request', 'malformed Host header');
  if (hostCount === 0 && req.httpVersionMinor >= 1 && req.httpVersionMajor === 1) return fail('bad-request', 'missing Host header');

  // Transfer-Encoding: exactly one field, exactly `chunked`, and not on HTTP/1.0 (RFC 9112 §6.1, §6.3).
  let teFields = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === 17 && raw[i]!.toLowerCase() === 'transfer-encoding') teFields++;
  if (teFields > 0) {
    const teValue = req.headers['transfer-encoding'] ?? '';
    if (teFields > 1 || teValue.trim().toLowerCase() !== 'chunked') return fail('bad-request', 'unsupported Transfer-Encoding (only a single "chunked" is accepted)');
    if (req.httpVersionMajor === 1 && req.httpVersionMinor === 0) return fail('bad-request', 'Transfer-Encoding in an HTTP/1.0 request');
  }

  // Request target: origin-form, or absolute-form whose authority replaces Host (RFC 9112 §3.2.2).
  let target = url;
  if (url.charCodeAt(0) !== 0x2f /* / */) {
    if (url === '*') {
      if (req.method !== 'OPTIONS') return fail('bad-request', 'asterisk-form is only for OPTIONS');
      res.writeHead(204, { 'x-request-id': requestId, ...(close ? { connection: 'close' } : {}) }).end();
      return ctx.onDone?.(204);
    }
    const m = ABSOLUTE_RE.exec(url);
    if (!m || !m[2] || !HOST_RE.test(m[2])) return fail('bad-request', 'the request target is not in origin-form or absolute-form');
    host = m[2];
    target = m[3] || '/';
    if (target.charCodeAt(0) !== 0x2f) target = '/' + target;
  }
  if (target.includes('#')) return fail('bad-request', 'the request target may not contain a fragment (#)');
  const q = target.indexOf('?');
  const rawPath = q === -1 ? target : target.slice(0, q);
  const query = q === -1 ? '' : target.slice(q);
  const path = normalizePath(rawPath);
  if (path === null) return fail('bad-request', 'malformed percent-encoding in the path');

  const method = req.method ?? 'GET';
  const match = snap.router.match(method, hostName(host), path, req.headers);
  if (match === null) return fail('no-route', `no route matches ${method} ${path}`);
  if ('methodNotAllowed' in match) {
    return fail('method-not-allowed', `${method} is not allowed on ${path}`, { allow: match.methodNotAllowed.join(', ') });
  }
  const route = match.data;

  // Forwarded headers.
  const peer = plainIp(req.socket.remoteAddress);
  const trusted = snap.trusted.has(peer);
  const xff = req.headers['x-forwarded-for'];
  const xffValue = typeof xff === 'string' ? xff : undefined;
  const ip = clientIp(peer, xffValue, snap.trusted);
  const headers: string[] = [];
  copyEndToEnd(raw, headers, MANAGED_REQUEST, connectionTokens(req.headers.connection));
  const inProto = trusted ? req.headers['x-forwarded-proto'] : undefined;
  const inHost = trusted ? req.headers['x-forwarded-host'] : undefined;
  const inFwd = trusted ? req.headers['forwarded'] : undefined;
  const proto = typeof inProto === 'string' && /^https?$/.test(inProto) ? inProto : ctx.proto;
  const xfHost = typeof inHost === 'string' && HOST_RE.test(inHost) ? inHost : host;
  const inPort = trusted ? req.headers['x-forwarded-port'] : undefined;
  const xfPort = typeof inPort === 'string' && /^[0-9]{1,5}$/.test(inPort) ? inPort : String(req.socket.localPort);
  headers.push(
    'x-forwarded-for', trusted && xffValue ? `${xffValue}, ${peer}` : peer,
    'x-forwarded-proto', proto,
    'x-forwarded-host', xfHost,
    'x-forwarded-port', xfPort,
    'x-real-ip', ip,
    'forwarded', (typeof inFwd === 'string' ? inFwd + ', ' : '') + forwardedElement(peer, ctx.proto, host || undefined),
    'via', req.headers.via ? `${req.headers.via}, ${req.httpVersion} ${ctx.via}` : `${req.httpVersion} ${ctx.via}`,
    'x-request-id', requestId,
  );
  const te = req.headers['transfer-encoding'];
  const cl = req.headers['content-length'];
  const hasBody = te !== undefined || (cl !== undefined && cl !== '0');
  if (cl !== undefined && te === undefined) headers.push('content-length', cl);
  headers.push('host', ''); // value set per target by ForwardHandler

  let upstreamPath = path;
  if (route.stripPath) {
    upstreamPath = path.slice(match.prefixLength);
    if (upstreamPath.charCodeAt(0) !== 0x2f) upstreamPath = '/' + upstreamPath;
  }

  if (hasBody) {
    req.setTimeout(snap.timeouts.clientBody, () => {
      if (!res.headersSent) fail('request-timeout', `no request body data for ${snap.timeouts.clientBody} ms`);
      req.destroy(new Error('client body timeout'));
    });
    req.once('end', () => req.setTimeout(0));
  }
  if (expectContinue) res.writeContinue();

  new ForwardHandler({
    req, res,
    service: route.service,
    method,
    path: upstreamPath + query,
    headers,
    preservedHost: route.preserveHost && host ? host : null,
    hasBody,
    requestId,
    via: `1.1 ${ctx.via}`,
    closeAfter: close,
    onDone: ctx.onDone,
  }).start();
}
