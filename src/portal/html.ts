/** The portal's pages: escaping, the page frame and its security headers (no script anywhere). */
import { createHash } from 'node:crypto';

export const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

const STYLE = [
  'body{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a}',
  'a{color:#0b4fa8}code{background:#f1f3f5;padding:.1rem .3rem;border-radius:3px}',
  '.m{display:inline-block;min-width:4.5rem;font-weight:700;color:#fff;background:#0b4fa8;border-radius:3px;padding:0 .4rem;text-align:center;margin-right:.5rem}li{margin:.4rem 0}',
  'nav{display:flex;gap:1rem;align-items:center;border-bottom:1px solid #d0d7de;padding-bottom:.5rem;margin-bottom:1rem}nav .sp{flex:1}',
  'form.inline{display:inline}label{display:block;margin:.6rem 0 .2rem;font-weight:600}',
  'input[type=email],input[type=password],select{font:inherit;padding:.35rem .5rem;border:1px solid #8c959f;border-radius:4px;min-width:18rem}',
  'button{font:inherit;padding:.35rem .9rem;border-radius:4px;border:1px solid #0b4fa8;background:#0b4fa8;color:#fff;cursor:pointer}',
  'button.secondary{background:#fff;color:#0b4fa8}button:focus-visible,a:focus-visible,input:focus-visible{outline:3px solid #f2b600;outline-offset:2px}',
  '.error{background:#fde8e8;border:1px solid #c62828;color:#8b1a1a;padding:.5rem .8rem;border-radius:4px}',
  '.notice{background:#eef5ff;border:1px solid #0b4fa8;padding:.5rem .8rem;border-radius:4px}',
  '.key{font:600 1rem ui-monospace,monospace;background:#fff8c5;padding:.5rem;border:1px solid #9a6700;border-radius:4px;word-break:break-all}',
  'table{border-collapse:collapse;margin:.5rem 0}th,td{text-align:left;padding:.3rem .8rem;border-bottom:1px solid #d0d7de}',
].join('');

/**
 * The pages' one style block, allowed by its digest (CSP Level 3 hash-source), not by
 * 'unsafe-inline': markup an escaping slip let through could not style itself (overlays over
 * the key, CSS exfiltration by attribute selectors).
 */
const STYLE_SOURCE = `'sha256-${createHash('sha256').update(STYLE, 'utf8').digest('base64')}'`;

export const SECURITY: Readonly<Record<string, string>> = {
  'content-security-policy': `default-src 'none'; style-src ${STYLE_SOURCE}; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'`,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'same-origin',
  'x-frame-options': 'DENY',
};

/** On every portal answer that reached the client over TLS (the gateway's own, or a trusted proxy's: X-Forwarded-Proto https). */
export const HSTS: Readonly<Record<string, string>> = { 'strict-transport-security': 'max-age=31536000' };

export function page(title: string, body: string, nav = ''): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${esc(title)}</title><style>${STYLE}</style></head><body>${nav}${body}</body></html>`;
}
