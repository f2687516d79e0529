/**
 * The developer portal on the proxy listener (`portal.path`, default /portal; docs/portal.md):
 *   GET {base}/                      the catalog (HTML)
 *   GET {base}/apis/{name}           one API's documentation (HTML, from its OpenAPI document)
 *   GET {base}/apis/{name}/openapi.json
 * Server-rendered, no script; every value escaped; strict CSP.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { openApiOf, type PortalSettings } from './catalog.js';
import { SECURITY, esc, page } from './html.js';
import type { AccountRequest, AccountResponse } from './accounts.js';
import { readWholeBody, type BodySource } from '../server/body.js';
import { PROBLEMS, ProblemError, problemBody } from '../core/problem.js';

function send(req: IncomingMessage, res: ServerResponse, status: number, type: string, body: string, extra: Record<string, string>): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-cache', ...SECURITY, ...extra });
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** The catalog pages' navigation (with accounts: the way to sign in; the session is not known here). */
function nav(p: PortalSettings): string {
  const links = p.accounts ? `<span class="sp"></span><a href="${esc(`${p.base}/account`)}">Your account</a><a href="${esc(`${p.base}/login`)}">Sign in</a><a href="${esc(`${p.base}/signup`)}">Sign up</a>` : '';
  return `<nav aria-label="Portal"><a href="${esc(`${p.base}/`)}">${esc(p.title)}</a>${links}</nav>`;
}

/** Whether a path is the portal's (then `answerPortal` answers it). */
export const isPortalPath = (p: PortalSettings, path: string): boolean => path === p.base || path.startsWith(`${p.base}/`);

export function answerPortal(p: PortalSettings, req: IncomingMessage, res: ServerResponse, path: string, extra: Record<string, string>): void {
  const html = 'text/html; charset=utf-8';
  const method = req.method ?? 'GET';
  if (method !== 'GET' && method !== 'HEAD') {
    return send(req, res, 405, 'application/problem+json', problemBody('method-not-allowed', 'the portal is read-only', extra['x-request-id']), { ...extra, allow: 'GET, HEAD' });
  }
  const rest = path.slice(p.base.length);
  if (rest === '') {
    res.writeHead(308, { location: `${p.base}/`, 'content-length': 0, ...extra });
    return void res.end();
  }
  if (rest === '/') {
    const items = p.apis.map((a) => `<li><a href="${esc(`${p.base}/apis/${encodeURIComponent(a.name)}`)}">${esc(a.name)}</a>${a.description ? ` — ${esc(a.description)}` : ''} <small>(${a.routes.length} route${a.routes.length === 1 ? '' : 's'})</small></li>`).join('');
    return send(req, res, 200, html, page(p.title, `${nav(p)}<header><h1>${esc(p.title)}</h1>${p.description ? `<p>${esc(p.description)}</p>` : ''}</header><main><h2>APIs</h2>${items ? `<ul>${items}</ul>` : '<p>No API is published yet.</p>'}</main>`), extra);
  }
  const m = /^\/apis\/([^/]+)(\/openapi\.json)?$/.exec(rest);
  const api = m ? p.apis.find((a) => a.name === safeDecode(m[1]!)) : undefined;
  if (!m || !api) {
    return send(req, res, 404, 'application/problem+json', problemBody('no-route', 'no such page in the portal', extra['x-request-id']), extra);
  }
  const host = typeof req.headers.host === 'string' && /^[A-Za-z0-9.:[\]-]+$/.test(req.headers.host) ? req.headers.host : 'localhost';
  const tls = (req.socket as { encrypted?: boolean }).encrypted === true;
  const doc = openApiOf(api, `${tls ? 'https' : 'http'}://${host}`);
  if (m[2]) return send(req, res, 200, 'application/json', JSON.stringify(doc, null, 2), extra);
  const ops: string[] = [];
  for (const [path, item] of Object.entries(doc['paths'] as Record<string, Record<string, { summary: string; parameters?: { name: string }[] }>>)) {
    for (const [method, op] of Object.entries(item)) {
      const params = op.parameters?.length ? ` <small>parameters: ${op.parameters.map((x) => `<code>${esc(x.name)}</code>`).join(', ')}</small>` : '';
      ops.push(`<li><span class="m">${esc(method.toUpperCase())}</span><code>${esc(path)}</code> ${op.summary !== `${method.toUpperCase()} ${path}` ? esc(op.summary) : ''}${params}</li>`);
    }
  }
  send(req, res, 200, html, page(`${api.name} — ${p.title}`, `${nav(p)}<main><h1>${esc(api.name)}</h1>${api.description ? `<p>${esc(api.description)}</p>` : ''}<h2>Operations</h2><ul>${ops.join('')}</ul><p><a href="${esc(`${p.base}/apis/${encodeURIComponent(api.name)}/openapi.json`)}">OpenAPI 3.1 document</a></p></main>`), extra);
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return '';
  }
}

/** Largest account form accepted. */
const MAX_FORM = 16 * 1024;

function problem(res: ServerResponse, code: 'service-unavailable' | 'payload-too-large', detail: string, extra: Record<string, string>): void {
  const body = problemBody(code, detail, extra['x-request-id']);
  res.writeHead(PROBLEMS[code].status, { 'content-type': 'application/problem+json', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store', ...SECURITY, ...extra });
  res.end(body);
}

/**
 * A developer account page (src/portal/accounts.ts): the form body is read (at most 16 KB) and
 * the request handed to `accounts` (in this process, or the primary's over IPC).
 */
export function answerAccount(
  accounts: ((r: AccountRequest) => Promise<AccountResponse>) | null, req: IncomingMessage, res: ServerResponse,
  fields: Omit<AccountRequest, 'body'>, body: BodySource, extra: Record<string, string>,
): void {
  if (accounts === null) return problem(res, 'service-unavailable', 'developer accounts are answered by the node that holds the config store, and it is not reachable', extra);
  readWholeBody(req, body, MAX_FORM).then(
    (buf) => accounts({ ...fields, body: buf.toString('utf8') }),
  ).then((r) => {
    if (res.headersSent || res.destroyed) return;
    // (a problem the account service made, where the request id is not known: it carries it here)
    const body = r.headers['content-type'] === 'application/problem+json' && extra['x-request-id'] ? withRequestId(r.body, extra['x-request-id']) : r.body;
    const headers: Record<string, string | string[] | number> = { ...r.headers, ...extra, 'content-length': Buffer.byteLength(body) };
    res.writeHead(r.status, headers);
    res.end(req.method === 'HEAD' ? undefined : body);
  }, (err: unknown) => {
    if (res.headersSent || res.destroyed) return;
    if (err instanceof ProblemError && err.code === 'payload-too-large') return problem(res, 'payload-too-large', 'the form is larger than 16 KB', { ...extra, connection: 'close' });
    problem(res, 'service-unavailable', 'the account service did not answer; try again', extra);
  });
}

function withRequestId(body: string, requestId: string): string {
  try {
    const p = JSON.parse(body) as Record<string, unknown>;
    return p !== null && typeof p === 'object' && p['request_id'] === undefined ? JSON.stringify({ ...p, request_id: requestId }) : body;
  } catch {
    return body;
  }
}
