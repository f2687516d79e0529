/** The admin listener: `/status` now; `/metrics` and `/api/` arrive with their issues. */
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
}

export function createAdminHandler(gw: AdminView) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/status' && (req.method === 'GET' || req.method === 'HEAD')) {
      const s = gw.snapshot;
      const body = JSON.stringify({
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
      });
      res.writeHead(gw.ready ? 200 : 503, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        'cache-control': 'no-store',
      });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    sendProblem(res, 'no-route', `no admin endpoint ${req.method} ${path}`, undefined);
  };
}
