/** The admin listener: `/status` and `/health` (targets and circuits) now; `/metrics` and `/api/` arrive with their issues. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createHash, timingSafeEqual } from 'node:crypto';
import { sendProblem } from '../core/problem.js';
import { VERSION } from '../version.js';
import { quotaViews } from '../plugins/quota/index.js';

export interface AdminView {
  ready: boolean;
  draining: boolean;
  revision: number;
  startedAt: number;
  inFlight: number;
  snapshot: { hash: string; loadedAt: Date; source: string | undefined; services: unknown[]; routes: unknown[]; admin: { token: string | undefined } | null };
  health: { report(): unknown } | null;
  workers?: () => { pid: number | undefined; state: string }[];
  /** WebSocket counters of this process (a primary has none of its own). */
  ws?: { opened: number; rejected: number; closed: number; messagesIn: number; messagesOut: number };
}

/** Whether the request carries the admin token (`Authorization: Bearer ...`), compared in constant time. */
function authorized(req: IncomingMessage, token: string): boolean {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  if (!m) return false;
  const given = createHash('sha256').update(m[1]!).digest();
  return timingSafeEqual(given, createHash('sha256').update(token).digest());
}

function sendJson(req: IncomingMessage, res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(req.method === 'HEAD' ? undefined : body);
}

export function createAdminHandler(gw: AdminView) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0];
    const read = req.method === 'GET' || req.method === 'HEAD';
    const token = gw.snapshot.admin?.token;
    const authed = token === undefined || authorized(req, token);
    // With a token, /status answers only its status to anyone (liveness probes); the rest needs the token.
    if (!authed && !(path === '/status' && read)) {
      sendProblem(res, 'unauthorized', 'this admin endpoint needs Authorization: Bearer <admin token>', undefined, { headers: { 'www-authenticate': 'Bearer realm="turnpike-admin"' } });
      return;
    }
    if (path === '/status' && read && !authed) {
      sendJson(req, res, gw.ready ? 200 : 503, { status: gw.ready ? 'ok' : gw.draining ? 'draining' : 'starting' });
      return;
    }
    if (path === '/health' && read) {
      sendJson(req, res, 200, gw.health?.report() ?? {});
      return;
    }
    if (path === '/status' && read) {
      const s = gw.snapshot;
      sendJson(req, res, gw.ready ? 200 : 503, {
        status: gw.ready ? 'ok' : gw.draining ? 'draining' : 'starting',
        version: VERSION,
        revision: gw.revision,
        config_hash: s.hash,
        config_loaded_at: s.loadedAt.toISOString(),
        config_source: s.source ?? null,
        services: s.services.length,
        routes: s.routes.length,
        in_flight: gw.inFlight,
        ...(gw.ws ? { websockets: { open: gw.ws.opened - gw.ws.closed, opened: gw.ws.opened, rejected: gw.ws.rejected, messages_in: gw.ws.messagesIn, messages_out: gw.ws.messagesOut } } : {}),
        uptime_seconds: Math.round((Date.now() - gw.startedAt) / 1000),
        ...(gw.workers ? { workers: gw.workers() } : {}),
      });
      return;
    }
    if (path === '/quotas' && read) {
      const consumer = new URL(req.url ?? '/', 'http://x').searchParams.get('consumer');
      if (!consumer) {
        sendProblem(res, 'bad-request', 'give ?consumer=NAME', undefined);
        return;
      }
      void Promise.all([...quotaViews].map(async (v) => ({ name: v.name, limit: v.limit, every: v.period, time_zone: v.timeZone, ...(await v.usage(consumer)) }))).then(
        (quotas) => sendJson(req, res, 200, { consumer, quotas }),
        (err: unknown) => sendProblem(res, 'bad-gateway', `the quota store failed: ${(err as Error).message}`, undefined),
      );
      return;
    }
    sendProblem(res, 'no-route', `no admin endpoint ${req.method} ${path}`, undefined);
  };
}
