/** The admin listener: `/status` and `/health` (targets and circuits) now; `/metrics` and `/api/` arrive with their issues. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { sendProblem } from '../core/problem.js';
import { VERSION } from '../version.js';

export interface AdminView {
  ready: boolean;
  draining: boolean;
  revision: number;
  startedAt: number;
  inFlight: number;
  snapshot: { hash: string; loadedAt: Date; source: string | undefined; services: unknown[]; routes: unknown[] };
  health: { report(): unknown } | null;
  workers?: () => { pid: number | undefined; state: string }[];
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
        uptime_seconds: Math.round((Date.now() - gw.startedAt) / 1000),
        ...(gw.workers ? { workers: gw.workers() } : {}),
      });
      return;
    }
    sendProblem(res, 'no-route', `no admin endpoint ${req.method} ${path}`, undefined);
  };
}
