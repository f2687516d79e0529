/**
 * Console sessions: signing in with an admin token gives a random session id in an httpOnly,
 * SameSite=Strict cookie (the token itself is never stored or sent again) and a CSRF token the
 * page keeps in memory and sends as X-CSRF-Token on every change. Sessions live in this
 * process (the admin listener's: the single process or the primary): idle 30 min, at most
 * 12 h, at most 50 per token (a token's 51st sign-in ends that token's oldest session, so
 * signing in again and again with one token never signs anyone else out) and 1000 in all (then
 * the oldest session of the token holding the most goes).
 */
import { randomBytes, timingSafeEqual, createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

export const COOKIE = 'tp_console';
/**
 * The cookie of a session signed in from an https page: a `__Host-` cookie is set only by a
 * secure origin, with Path=/ and no Domain (RFC 6265bis §4.1.3.2), so no sibling host and no
 * plain-HTTP page can toss one onto the console.
 */
export const HOST_COOKIE = '__Host-tp_console';
const IDLE_MS = 30 * 60_000;
const MAX_AGE_MS = 12 * 3600_000;
const MAX_SESSIONS = 1000;
export const MAX_SESSIONS_PER_TOKEN = 50;

export interface Session {
  id: string;
  csrf: string;
  name: string;
  role: 'admin' | 'read-only';
  /** Signed in from an https page: carried by HOST_COOKIE only (and a plain-page session by COOKIE only). */
  secure: boolean;
  /** sha256 of the token signed in with ('' without tokens): a rotated token ends its sessions. */
  tokenHash: string;
  created: number;
  seen: number;
}

export const tokenHash = (token: string): string => (token === '' ? '' : createHash('sha256').update(token).digest('hex'));

const same = (a: string, b: string) => {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb);
};

export class SessionStore {
  private readonly sessions = new Map<string, Session>();
  private readonly listeners = new Set<(id: string) => void>();

  constructor(private readonly now: () => number = Date.now) {}

  create(caller: { name: string; role: 'admin' | 'read-only' }, token = '', secure = false): Session {
    const hash = tokenHash(token);
    // (Map order is creation order: the first of a token's sessions is its oldest)
    const mine = [...this.sessions.values()].filter((s) => s.tokenHash === hash);
    for (let i = 0; i <= mine.length - MAX_SESSIONS_PER_TOKEN; i++) this.end(mine[i]!.id);
    while (this.sessions.size >= MAX_SESSIONS) {
      const per = new Map<string, Session[]>();
      for (const s of this.sessions.values()) per.set(s.tokenHash, [...(per.get(s.tokenHash) ?? []), s]);
      const most = [...per.values()].reduce((a, b) => (b.length > a.length ? b : a));
      this.end(most[0]!.id);
    }
    const t = this.now();
    const s: Session = { id: randomBytes(32).toString('base64url'), csrf: randomBytes(32).toString('base64url'), name: caller.name, role: caller.role, secure, tokenHash: hash, created: t, seen: t };
    this.sessions.set(s.id, s);
    return s;
  }

  /** The session a request's cookie names (touching it, unless `peek`), or null. */
  of(req: IncomingMessage, peek = false): Session | null {
    // (a secure session by its __Host- cookie only: a tossed tp_console cannot stand for it, nor
    // for one beside it; sessions live in the process, so none from before this name is left)
    const header = req.headers.cookie;
    const secure = header !== undefined && header.includes(HOST_COOKIE);
    const id = cookieValue(header, secure ? HOST_COOKIE : COOKIE);
    if (id === null) return null;
    const s = this.sessions.get(id);
    if (!s || s.secure !== secure) return null;
    const t = this.now();
    if (t - s.seen > IDLE_MS || t - s.created > MAX_AGE_MS) {
      this.end(id);
      return null;
    }
    if (!peek) s.seen = t;
    return s;
  }

  /**
   * Whether a request carries the session's CSRF token (and, when it says where it comes from,
   * comes from this origin: the one its Host names, with https when the session was signed in
   * from an https page, or one of `origins`, admin.console_origins, for a proxy in front that
   * rewrites Host).
   */
  csrfOk(req: IncomingMessage, s: Session, origins: readonly string[] = []): boolean {
    const given = req.headers['x-csrf-token'];
    if (typeof given !== 'string' || given.length === 0 || !same(given, s.csrf)) return false;
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== 'null') {
      try {
        const o = new URL(origin);
        // The Host's origin is the scheme the session was signed in from: a session of an https
        // page (Secure cookie) takes no change from an http:// page of that host.
        if (!origins.includes(o.origin) && (o.host !== req.headers.host || (s.secure && o.protocol !== 'https:'))) return false;
      } catch {
        return false;
      }
    } else if (origin === 'null') return false;
    return true;
  }

  end(id: string): void {
    if (this.sessions.delete(id)) for (const l of this.listeners) l(id);
  }

  /** Every session signed in with a token that is no longer configured ends (a reload removed it). */
  endWhere(keep: (s: Session) => boolean): void {
    for (const s of [...this.sessions.values()]) if (!keep(s)) this.end(s.id);
  }

  onEnd(listener: (id: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** A secure session (signed in from an https page, see secureOrigin): `__Host-tp_console`, Secure, never sent over plain HTTP. */
  cookie(s: Session): string {
    return `${s.secure ? HOST_COOKIE : COOKIE}=${s.id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${Math.floor(MAX_AGE_MS / 1000)}${s.secure ? '; Secure' : ''}`;
  }

  static clearCookie(secure = false): string {
    return `${secure ? HOST_COOKIE : COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0${secure ? '; Secure' : ''}`;
  }
}

/**
 * Whether the console page making this request was loaded over https. The admin listener is
 * plain HTTP, so TLS is a proxy's in front of it; the browser says which origin the page has
 * (its sign-in and sign-out are fetch POSTs, which carry Origin).
 */
export function secureOrigin(req: IncomingMessage): boolean {
  const origin = req.headers.origin;
  return typeof origin === 'string' && /^https:\/\//i.test(origin);
}

/**
 * One cookie's value from a Cookie header (null when absent). Given more than once, it is no
 * value at all: a sibling origin can set a second cookie of that name (cookie tossing, another
 * Path or Domain), and which one the browser sends first is not ours to choose.
 */
export function cookieValue(header: string | undefined, name: string): string | null {
  if (!header) return null;
  let found: string | null = null;
  for (const part of header.split(';')) {
    const i = part.indexOf('=');
    if (i < 0) continue;
    if (part.slice(0, i).trim() === name) {
      if (found !== null) return null;
      found = part.slice(i + 1).trim();
    }
  }
  return found !== null && /^[A-Za-z0-9_-]{20,100}$/.test(found) ? found : null;
}
