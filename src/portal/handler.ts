/**
 * The developer portal on the proxy listener (`portal.path`, default /portal; docs/portal.md):
 *   GET {base}/                      the catalog (HTML)
 *   GET {base}/apis/{name}           one API's documentation (HTML, from its OpenAPI document)
 *   GET {base}/apis/{name}/openapi.json
 * Server-rendered, no script; every value escaped; strict CSP.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { openApiOf, type PortalSettings } from './catalog.js';

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
const SECURITY = {
  'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};
const STYLE = 'body{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a}a{color:#0b4fa8}code{background:#f1f3f5;padding:.1rem .3rem;border-radius:3px}.m{display:inline-block;min-width:4.5rem;font-weight:700;color:#fff;background:#0b4fa8;border-radius:3px;padding:0 .4rem;text-align:center;margin-right:.5rem}li{margin:.4rem 0}';

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${esc(title)}</title><style>${STYLE}</style></head><body>${body}</body></html>`;
}

function send(req: IncomingMessage, res: ServerResponse, status: number, type: string, body: string, extra: Record<string, string>): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-cache', ...SECURITY, ...extra });
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** Whether a path is the portal's (then `answerPortal` answers it). */
export const isPortalPath = (p: PortalSettings, path: string): boolean => path === p.base || path.startsWith(`${p.base}/`);

export function answerPortal(p: PortalSettings, req: IncomingMessage, res: ServerResponse, path: string, extra: Record<string, string>): void {
  const html = 'text/html; charset=utf-8';
  const method = req.method ?? 'GET';
  if (method !== 'GET' && method !== 'HEAD') {
    return send(req, res, 405, 'application/problem+json', JSON.stringify({ type: 'urn:turnpike:problem:method-not-allowed', title: 'Method Not Allowed', status: 405, detail: 'the portal is read-only' }), { ...extra, allow: 'GET, HEAD' });
  }
  const rest = path.slice(p.base.length);
  if (rest === '') {
    res.writeHead(308, { location: `${p.base}/`, 'content-length': 0, ...extra });
    return void res.end();
  }
  if (rest === '/') {
    const items = p.apis.map((a) => `<li><a href="${esc(`${p.base}/apis/${encodeURIComponent(a.name)}`)}">${esc(a.name)}</a>${a.description ? ` — ${esc(a.description)}` : ''} <small>(${a.routes.length} route${a.routes.length === 1 ? '' : 's'})</small></li>`).join('');
    return send(req, res, 200, html, page(p.title, `<header><h1>${esc(p.title)}</h1>${p.description ? `<p>${esc(p.description)}</p>` : ''}</header><main><h2>APIs</h2>${items ? `<ul>${items}</ul>` : '<p>No API is published yet.</p>'}</main>`), extra);
  }
  const m = /^\/apis\/([^/]+)(\/openapi\.json)?$/.exec(rest);
  const api = m ? p.apis.find((a) => a.name === safeDecode(m[1]!)) : undefined;
  if (!m || !api) {
    return send(req, res, 404, 'application/problem+json', JSON.stringify({ type: 'urn:turnpike:problem:no-route', title: 'Not Found', status: 404, detail: 'no such page in the portal' }), extra);
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
  send(req, res, 200, html, page(`${api.name} — ${p.title}`, `<nav><a href="${esc(`${p.base}/`)}">${esc(p.title)}</a></nav><main><h1>${esc(api.name)}</h1>${api.description ? `<p>${esc(api.description)}</p>` : ''}<h2>Operations</h2><ul>${ops.join('')}</ul><p><a href="${esc(`${p.base}/apis/${encodeURIComponent(api.name)}/openapi.json`)}">OpenAPI 3.1 document</a></p></main>`), extra);
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return '';
  }
}
