/**
 * The web console on the admin listener (`/console/`): the page (dist/console-ui: index.html,
 * app.js, app.css, built from console/ by scripts/build-console.mjs) and its API —
 *   POST /console/api/login   {token} -> session cookie (httpOnly, SameSite=Strict; Secure from an https page) + {name, role, csrf}
 *   POST /console/api/logout  (X-CSRF-Token)
 *   GET  /console/api/session -> {name, role, csrf} | 401 (HEAD: the same without a body)
 *   GET  /console/api/events  -> Server-Sent Events: `stats` every second (src/console/stats.ts), `scaling`
 * The rest of the admin listener (/api/, /metrics, /analytics...) takes the session in place of
 * the bearer token (`caller`), changes only with the session's CSRF token.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { sendProblem as sendProblemBare, type ProblemCode } from '../core/problem.js';
import { authenticate, AuthFailures } from '../admin/auth.js';
import { ApiError } from '../admin/errors.js';
import type { AdminToken } from '../config/compile.js';
import { SessionStore, secureOrigin, tokenHash, type Session } from './session.js';
import { LiveStats, type StatsSource } from './stats.js';

/** Where the built page is: <package>/dist/console-ui (from src/console or dist/console alike). */
const UI_DIR = fileURLToPath(new URL('../../dist/console-ui/', import.meta.url));
const FILES: Record<string, string> = {
  '/console/': 'index.html',
  '/console/index.html': 'index.html',
  '/console/app.js': 'app.js',
  '/console/app.css': 'app.css',
};
/** The console API's resources and the method each takes. */
const API_METHODS: Record<string, string> = {
  '/console/api/login': 'POST',
  '/console/api/logout': 'POST',
  '/console/api/session': 'GET, HEAD',
  '/console/api/events': 'GET, HEAD',
};
const TYPES: Record<string, string> = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };
const SECURITY = {
  'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};
/** The console's problem answers carry the page's security fields too (nosniff, no framing). */
function sendProblem(res: ServerResponse, code: ProblemCode, detail: string, _requestId: undefined, opts: { headers?: Record<string, string> } = {}): void {
  const id = res.getHeader('x-request-id'); // (the admin listener's, set as the request came in)
  sendProblemBare(res, code, detail, typeof id === 'string' ? id : undefined, { headers: { ...SECURITY, ...opts.headers } });
}
const MAX_STREAMS = 100;
/** Live streams per token: a token's 11th ends its own oldest (one token cannot hold every stream). */
export const MAX_STREAMS_PER_TOKEN = 10;

const READS = new Set(['GET', 'HEAD', 'OPTIONS']);

function json(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store', ...SECURITY, ...headers });
  res.end(res.req?.method === 'HEAD' ? undefined : body);
}

async function readSmall(req: IncomingMessage, max: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > max) throw new ApiError('payload-too-large', `the body is larger than ${max} bytes`);
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export interface ConsoleDeps extends StatsSource {
  /** The admin tokens now (a reload may change them; sessions of removed tokens end). */
  tokens(): readonly AdminToken[];
  /** admin.console_origins now: origins a change may come from besides the Host's (default none). */
  origins?(): readonly string[];
  /** Wrong tokens per client, shared with the rest of the admin listener (default: the console's own). */
  failures?: AuthFailures;
}

export class ConsoleHandler {
  readonly sessions = new SessionStore();
  private readonly live: LiveStats;
  private readonly files = new Map<string, Buffer>();
  private readonly failures: AuthFailures;
  /** Open event streams per token (sha256, '' without tokens), oldest first. */
  private readonly streams = new Map<string, Set<ServerResponse>>();

  constructor(private readonly deps: ConsoleDeps) {
    this.live = new LiveStats(deps);
    this.failures = deps.failures ?? new AuthFailures();
  }

  /** The caller a request's session stands for (for /api/ and the other admin endpoints). */
  caller(req: IncomingMessage, method: string): { name: string; role: 'admin' | 'read-only' } | undefined {
    const s = this.sessions.of(req);
    if (!s) return undefined;
    if (!READS.has(method) && !this.sessions.csrfOk(req, s, this.deps.origins?.())) throw new ApiError('forbidden', 'a change from the console needs the session\'s X-CSRF-Token (and the same origin)');
    return { name: `${s.name} (console)`, role: s.role };
  }

  /** A reload: sessions whose token is gone (or whose role changed) end. */
  tokensChanged(): void {
    const tokens = this.deps.tokens();
    this.sessions.endWhere((s) => tokens.length === 0 ? s.tokenHash === '' : tokens.some((t) => tokenHash(t.token) === s.tokenHash && t.name === s.name && t.role === s.role));
  }

  close(): void {
    this.live.closeAll();
  }

  async handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const method = (req.method ?? 'GET').toUpperCase();
    try {
      if (path === '/console') {
        res.writeHead(308, { location: '/console/', 'content-length': 0 });
        return void res.end();
      }
      const file = FILES[path];
      if (file !== undefined && (method === 'GET' || method === 'HEAD')) return await this.serveFile(res, file, method);
      if (path === '/console/api/login' && method === 'POST') return await this.login(req, res);
      // (HEAD wherever GET: RFC 9110 §9.3.2)
      const read = method === 'GET' || method === 'HEAD';
      if (path === '/console/api/session' && read) {
        const s = this.sessions.of(req);
        if (!s) return sendProblem(res, 'unauthorized', 'not signed in', undefined);
        return json(res, 200, { name: s.name, role: s.role, csrf: s.csrf });
      }
      if (path === '/console/api/logout' && method === 'POST') {
        const s = this.sessions.of(req);
        if (s && !this.sessions.csrfOk(req, s, this.deps.origins?.())) return sendProblem(res, 'forbidden', 'signing out needs the session\'s X-CSRF-Token', undefined);
        if (s) this.sessions.end(s.id);
        res.writeHead(204, { 'set-cookie': SessionStore.clearCookie(s ? s.secure : secureOrigin(req)), 'cache-control': 'no-store' });
        return void res.end();
      }
      if (path === '/console/api/events' && read) return this.events(req, res);
      // A console resource asked with another method: 405 naming the ones it takes (RFC 9110 §15.5.6).
      const allow = file !== undefined ? 'GET, HEAD' : API_METHODS[path];
      if (allow !== undefined && method === 'OPTIONS') {
        res.writeHead(204, { allow: `${allow}, OPTIONS`, 'cache-control': 'no-store', ...SECURITY });
        return void res.end();
      }
      if (allow !== undefined) return sendProblem(res, 'method-not-allowed', `${method} is not allowed on ${path} (allowed: ${allow})`, undefined, { headers: { allow } });
      sendProblem(res, 'no-route', `no console resource ${path}`, undefined);
    } catch (err) {
      if (err instanceof ApiError) return sendProblem(res, err.code, err.detail, undefined, err.headers ? { headers: err.headers } : {});
      if (!res.headersSent) sendProblem(res, 'internal-error', (err as Error).message, undefined);
    }
  }

  private async serveFile(res: ServerResponse, file: string, method: string): Promise<void> {
    let body = this.files.get(file);
    if (body === undefined) {
      try {
        body = await readFile(join(UI_DIR, file));
      } catch {
        return sendProblem(res, 'no-route', 'the console is not built (npm run build)', undefined);
      }
      this.files.set(file, body);
    }
    res.writeHead(200, {
      'content-type': TYPES[file.split('.').pop()!]!, 'content-length': body.length,
      'cache-control': file === 'index.html' ? 'no-cache' : 'public, max-age=300', ...SECURITY,
    });
    res.end(method === 'HEAD' ? undefined : body);
  }

  private async login(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const ip = this.failures.clientOf(req);
    // With tokens, a sign-in is an attempt, counted before the body is awaited (so concurrent
    // sign-ins all count; 429 past the limit) and taken back when the token is right.
    const guarded = this.deps.tokens().length > 0;
    if (guarded) this.failures.take(ip);
    if (!/^application\/json\b/i.test(req.headers['content-type'] ?? '')) return sendProblem(res, 'unsupported-media-type', 'send {"token": "..."} as application/json', undefined);
    let token: unknown;
    try {
      token = (JSON.parse(await readSmall(req, 4096)) as { token?: unknown }).token;
    } catch (err) {
      if (err instanceof ApiError) throw err;
      return sendProblem(res, 'bad-request', 'the body is not JSON', undefined);
    }
    if (typeof token !== 'string') return sendProblem(res, 'bad-request', 'token: a string is required', undefined);
    let caller;
    try {
      const tokens = this.deps.tokens();
      // With no token configured, the admin listener is loopback-only and open: any sign-in is the anonymous admin.
      caller = authenticate(tokens.length === 0 ? undefined : `Bearer ${token}`, tokens);
    } catch {
      return sendProblem(res, 'unauthorized', 'unknown token', undefined);
    }
    if (guarded) this.failures.refund(ip);
    const s = this.sessions.create(caller, this.deps.tokens().length === 0 ? '' : token, secureOrigin(req));
    json(res, 200, { name: s.name, role: s.role, csrf: s.csrf }, { 'set-cookie': this.sessions.cookie(s) });
  }

  private events(req: IncomingMessage, res: ServerResponse): void {
    const s: Session | null = this.sessions.of(req);
    if (!s) return sendProblem(res, 'unauthorized', 'not signed in', undefined);
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', ...SECURITY });
      return void res.end();
    }
    let mine = this.streams.get(s.tokenHash);
    const evict = mine ? [...mine].slice(0, Math.max(0, mine.size - MAX_STREAMS_PER_TOKEN + 1)) : [];
    if (this.live.watchers - evict.length >= MAX_STREAMS) return sendProblem(res, 'service-overloaded', 'too many console streams', undefined, { headers: { 'retry-after': '5' } });
    for (const old of evict) {
      mine!.delete(old);
      old.end();
    }
    if (!mine) this.streams.set(s.tokenHash, (mine = new Set()));
    mine.add(res);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no', ...SECURITY });
    res.write('retry: 2000\n\n');
    const off = this.sessions.onEnd((id) => {
      if (id === s.id) res.end();
    });
    // A session that expires while watching: checked with every frame's keep-alive.
    const check = setInterval(() => {
      if (this.sessions.of(req, true) === null) res.end(); // (watching is not activity: no renewal)
    }, 15_000);
    check.unref();
    res.on('close', () => {
      off();
      clearInterval(check);
      mine.delete(res);
      if (mine.size === 0 && this.streams.get(s.tokenHash) === mine) this.streams.delete(s.tokenHash);
    });
    this.live.add(res);
  }
}
