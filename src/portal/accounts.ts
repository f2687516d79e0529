/**
 * Developer accounts on the portal (`portal.accounts`; docs/portal.md): sign-up and login,
 * API keys (issued, rotated, revoked), each developer's own usage and quota.
 *
 * A developer is a consumer of the config document, tagged `portal`, with a `portal`
 * credential {email, password_hash (scrypt), approved?, verified?} and key-auth credentials
 * stored as SHA-256 digests only (`key_sha256`: a key is shown once, when issued). Every change
 * is one write to the config store (validated like an admin API write, applied on this node
 * before the answer), so every node sharing the store knows the developer and their keys.
 *
 * One AccountService per node, in the process that owns the config store (the primary with
 * `workers`, which forward these requests over IPC): sessions, their revocation and the
 * sign-up / login limits are one truth per node. Sessions are stateless HMAC tokens (cookie
 * `tp_portal`: name, expiry, session id, MAC over those, the password hash and the developer's
 * session epoch), so a session made on one node is good on every node with the same
 * `portal.accounts.secret`, a password change ends every session, and sign-out raises the
 * epoch stored on the developer's portal credential (one config store write, so it survives a
 * restart and reaches every node): every session of that developer ends, everywhere.
 *
 * CSRF: the cookie is HttpOnly, SameSite=Strict, Path=<portal>/; every POST made in a session
 * carries the session's form token (HMAC of its id), and a POST whose Origin is another site
 * (or Sec-Fetch-Site cross-site / same-site) is refused before anything else.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { request as undiciRequest } from 'undici';
import type { Logger } from '../core/log.js';
import type { AccountSettings, PortalSettings } from './catalog.js';
import { esc, page, SECURITY } from './html.js';
import { SCRYPT, hashPasswordAsync, parseHash, verifyPasswordAtCost, weakerThanDefault } from '../plugins/basic-auth/hash.js';
import { signature, SIGNATURE_HEADER } from '../scaling/webhook.js';
import { ipNetwork } from '../core/forwarded.js';

type Obj = Record<string, unknown>;

export interface AccountRequest {
  method: string;
  /** The path below the portal's base (/login, /account/keys...). */
  path: string;
  /** The query string without its `?`. */
  query: string;
  host: string;
  tls: boolean;
  clientIp: string;
  cookie?: string | undefined;
  origin?: string | undefined;
  fetchSite?: string | undefined;
  contentType?: string | undefined;
  body: string;
}

export interface AccountResponse {
  status: number;
  headers: Record<string, string | string[]>;
  body: string;
}

export interface QuotaUsage { name: string; limit: number; every: string; used: number; remaining: number; resets_at: string }
export interface WindowUsage { requests: number; errors: number; client_errors: number }
export interface Usage { quotas: QuotaUsage[]; last_hour: WindowUsage | null; last_day: WindowUsage | null }

/** Where the accounts live: the config store of this node. */
export interface AccountBackend {
  /** The document this node serves (null: none yet). */
  document(): Obj | null;
  /** Why this node cannot write developer accounts (null: it can); `transient`: it may later (Retry-After). */
  readOnly(): { reason: string; transient: boolean } | null;
  /**
   * One store write: `change` edits a copy of the current document (throws AccountError to
   * abort); the result is validated like an admin API write and applied on this node before
   * it resolves.
   */
  edit(actor: string, action: string, change: (doc: Obj) => void): Promise<void>;
}

/** What the gateway tells: the live portal settings, and a consumer's usage. */
export interface AccountHost {
  settings(): PortalSettings | null;
  usage(consumer: string): Promise<Usage>;
}

export class AccountError extends Error {
  constructor(readonly status: number, message: string, readonly headers: Record<string, string> = {}) {
    super(message);
  }
}

/** Retry-After (RFC 9110 §10.2.3) for a limiter's wait, in whole seconds (at least 1). */
/** When a 503 (the account store unreachable or read-only) asks to come back: the page says "in a minute". */
const STORE_RETRY_MS = 60_000;
const retryAfter = (ms: number): Record<string, string> => ({ 'retry-after': String(Math.max(1, Math.ceil(ms / 1000))) });

export const COOKIE = 'tp_portal';
/**
 * The session cookie of a portal page served over https: a `__Host-` cookie is set only by a
 * secure origin, with Path=/ and no Domain (RFC 6265bis §4.1.3.2), so neither a sibling host
 * nor a plain-HTTP page can toss one in (a victim browsing signed in to the attacker's account).
 * Path=/ sends it beside every request to the host: the proxy strips it before an upstream.
 */
export const HOST_COOKIE = '__Host-tp_portal';
/**
 * Developers' passwords: scrypt at one of OWASP's equivalent minimums (SCRYPT: N=2^14, r=8,
 * p=5, 16 MiB; an attacker with the store pays that per guess). Hashes made with less work
 * still verify (theirs is in the hash) and are re-hashed at a successful login.
 */
const PORTAL_SCRYPT = SCRYPT;
const MIN_PASSWORD = 10;
const MAX_PASSWORD = 256;
const MAX_BODY = 16 * 1024;
const MAX_EMAIL = 254;
const EMAIL = /^[^\s@<>"',;:()[\]\\]{1,64}@[A-Za-z0-9.-]{1,189}\.[A-Za-z0-9-]{2,63}$/;
/** Control, format and bidi characters: never in an email shown to admins or sent to a hook. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/;
/** An email as compared and stored: trimmed, lower case, Unicode NFC (as passwords are hashed: é typed as e + U+0301 is é). */
const normEmail = (s: string) => s.trim().toLowerCase().normalize('NFC');
const b64u = (s: string) => Buffer.from(s).toString('base64url');
const unb64u = (s: string) => Buffer.from(s, 'base64url').toString();

/** Fixed windows per key, bounded in size (oldest dropped first). */
class Limiter {
  private readonly hits = new Map<string, { n: number; until: number }>();
  constructor(private readonly max: number, private readonly windowMs: number, private readonly cap = 10_000) {}

  /** Whether `key` is over the limit now (does not count). */
  blocked(key: string, now: number): boolean {
    return this.wait(key, now) > 0;
  }

  /** Milliseconds until `key` may try again (0: now). */
  wait(key: string, now: number): number {
    const h = this.hits.get(key);
    return h !== undefined && h.until > now && h.n >= this.max ? h.until - now : 0;
  }

  hit(key: string, now: number): void {
    let h = this.hits.get(key);
    if (!h || h.until <= now) {
      this.hits.delete(key);
      if (this.hits.size >= this.cap) this.hits.delete(this.hits.keys().next().value!);
      h = { n: 0, until: now + this.windowMs };
      this.hits.set(key, h);
    }
    h.n++;
  }

  /** Takes one hit back (a login that turned out right). */
  refund(key: string): void {
    const h = this.hits.get(key);
    if (h && h.n > 0) h.n--;
  }
}

interface Developer {
  consumer: Obj;
  name: string;
  cred: Obj;
  email: string;
  approved: boolean;
  verified: boolean;
}

interface Session { dev: Developer; sid: string; csrf: string; exp: number }

function developers(doc: Obj | null): Developer[] {
  const out: Developer[] = [];
  for (const c of Array.isArray(doc?.['consumers']) ? (doc['consumers'] as unknown[]) : []) {
    if (typeof c !== 'object' || c === null) continue;
    const consumer = c as Obj;
    const creds = Array.isArray(consumer['credentials']) ? (consumer['credentials'] as Obj[]) : [];
    const cred = creds.find((x) => typeof x === 'object' && x !== null && x['type'] === 'portal');
    if (!cred || typeof cred['email'] !== 'string') continue;
    out.push({ consumer, name: String(consumer['name']), cred, email: normEmail(cred['email']), approved: cred['approved'] !== false, verified: cred['verified'] !== false });
  }
  return out;
}

/** In an edited copy of the document: the developer's consumer and portal credential (or AccountError 404). */
function developerIn(doc: Obj, name: string): { consumer: Obj; cred: Obj; creds: Obj[] } {
  const list = Array.isArray(doc['consumers']) ? (doc['consumers'] as Obj[]) : [];
  const consumer = list.find((c) => c?.['name'] === name);
  const creds = Array.isArray(consumer?.['credentials']) ? (consumer['credentials'] as Obj[]) : [];
  const cred = creds.find((x) => x?.['type'] === 'portal');
  if (!consumer || !cred) throw new AccountError(404, 'this account no longer exists');
  return { consumer, cred, creds };
}

const keysOf = (consumer: Obj): Obj[] => (Array.isArray(consumer['credentials']) ? (consumer['credentials'] as Obj[]) : []).filter((c) => c?.['type'] === 'key-auth');

/** A consumer name for a new developer: from the email's local part, with a random suffix. */
function nameFor(email: string): string {
  const slug = email.split('@')[0]!.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 24) || 'developer';
  return `dev-${slug}-${randomBytes(3).toString('hex')}`;
}

const newKey = () => `tpk_${randomBytes(24).toString('base64url')}`;
const sha256Hex = (key: string) => createHash('sha256').update(key).digest('hex');
const PAGE_HEADERS = { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', ...SECURITY };
const isAccountPath = (p: string) => p === '/signup' || p === '/login' || p === '/logout' || p === '/verify' || p === '/account' || p.startsWith('/account/');
/** Whether a path below the portal's base is an account page (answered by the AccountService). */
export { isAccountPath };

export class AccountService {
  private readonly ownSecret = randomBytes(32).toString('base64url');
  private readonly signupHits = new Map<string, { n: number; until: number }>();
  /** Sign-ups of every client in this node's current hour (node_signups_per_hour). */
  private nodeSignups = { n: 0, until: 0 };
  private readonly loginByIp = new Limiter(10, 60_000);
  /**
   * Per email and client network (IPv4 /24, IPv6 /64): wrong passwords for an email from one
   * place do not lock its owner out elsewhere.
   */
  private readonly loginByEmail = new Limiter(10, 15 * 60_000);
  private readonly resends = new Limiter(5, 3_600_000);
  /** Key and plan changes per developer (each is a config revision on every node). */
  private readonly changes = new Limiter(30, 3_600_000);
  /** Sign-outs per developer (each is a config revision on every node). */
  private readonly signOuts = new Limiter(30, 3_600_000);
  private dummy: Promise<string> | null = null;

  constructor(
    private readonly backend: AccountBackend,
    private readonly host: AccountHost,
    private readonly log: Pick<Logger, 'info' | 'warn' | 'error'>,
    private readonly now: () => number = Date.now,
  ) {}

  async handle(r: AccountRequest): Promise<AccountResponse> {
    const portal = this.host.settings();
    const acc = portal?.accounts;
    if (!portal || !acc) return { status: 404, headers: { 'content-type': 'application/problem+json', 'cache-control': 'no-store', ...SECURITY }, body: JSON.stringify({ type: 'urn:turnpike:problem:no-route', title: 'Not Found', status: 404, detail: 'developer accounts are not enabled (portal.accounts.enabled)' }) };
    const ctx = new Ctx(portal, acc, r);
    try {
      return await this.route(ctx);
    } catch (err) {
      if (err instanceof AccountError) {
        const page = ctx.message(err.status, err.status === 404 ? 'Not found' : 'Sorry', err.message);
        return { ...page, headers: { ...page.headers, ...err.headers } };
      }
      const issues = (err as { issues?: { path: string; message: string }[] }).issues;
      this.log.error({ err: issues ? JSON.stringify(issues) : String(err), path: r.path }, 'portal: a developer account request failed');
      const unavailable = (err as Error)?.name === 'StoreUnavailable';
      if (!unavailable) return ctx.message(500, 'Sorry', 'Something went wrong on our side; try again.');
      const res = ctx.message(503, 'Sorry', 'The account store cannot be reached right now; try again in a minute.');
      return { ...res, headers: { ...res.headers, ...retryAfter(STORE_RETRY_MS) } };
    }
  }

  private async route(c: Ctx): Promise<AccountResponse> {
    const { r, acc } = c;
    const method = r.method === 'HEAD' ? 'GET' : r.method;
    // A page asked with a method it does not take: 405 with its own Allow (RFC 9110 §15.5.6), before anything else.
    const allow = allowedOn(r.path);
    if ((method !== 'GET' && method !== 'POST') || (allow !== null && !allow.includes(method))) {
      const list = allow ?? 'GET, HEAD, POST';
      return { ...c.message(405, 'Not allowed', `Use ${list.replace(', HEAD', '').replace(', ', ' or ')}.`), headers: { ...PAGE_HEADERS, allow: list } };
    }
    c.session = this.session(c);
    if (method === 'POST') {
      const foreign = foreignPost(r);
      if (foreign) return c.message(403, 'Refused', foreign);
      if (!/^application\/x-www-form-urlencoded\s*(;|$)/i.test(r.contentType ?? '')) return c.message(415, 'Unsupported', 'Send the form (application/x-www-form-urlencoded).');
      if (Buffer.byteLength(r.body) > MAX_BODY) return c.message(413, 'Too large', 'The form is too large.');
      c.form = new URLSearchParams(r.body);
    }
    const p = r.path;
    if (p === '/signup') return method === 'GET' ? c.signupForm(200) : this.signup(c);
    if (p === '/login') return method === 'GET' ? c.loginForm(200) : this.login(c);
    if (p === '/verify') return method === 'GET' ? c.verifyForm() : this.verify(c);
    if (!isAccountPath(p)) throw new AccountError(404, 'No such page in the portal.');
    // Everything else is the developer's own: a session, and for a change its form token.
    if (!c.session) {
      if (method === 'GET' && p === '/account') return { status: 303, headers: { location: `${c.base}/login`, 'cache-control': 'no-store' }, body: '' };
      if (p === '/account/usage.json') return json(401, { type: 'urn:turnpike:problem:unauthorized', title: 'Unauthorized', status: 401, detail: 'log in to the portal first' });
      return c.message(401, 'Log in first', 'Your session has ended: log in again.');
    }
    if (method === 'POST') {
      const given = c.form!.get('csrf') ?? '';
      if (!equal(given, c.session.csrf)) return c.message(403, 'Refused', 'This form is stale or did not come from the portal: reload the page and try again.');
    }
    if (p === '/logout' && method === 'POST') return this.logout(c);
    if (p === '/account' && method === 'GET') return c.accountPage(200, await this.usage(c.session.dev.name));
    if (p === '/account/usage.json' && method === 'GET') return json(200, c.summary(await this.usage(c.session.dev.name)));
    if (method !== 'POST') throw new AccountError(404, 'No such page in the portal.');
    if (p.startsWith('/account/keys') || p === '/account/plan') {
      const now = this.now();
      if (this.changes.blocked(c.session.dev.name, now)) throw new AccountError(429, 'Too many changes to your account in the last hour; try again later.', retryAfter(this.changes.wait(c.session.dev.name, now)));
      this.changes.hit(c.session.dev.name, now);
    }
    if (p === '/account/keys') return this.issueKey(c);
    const k = /^\/account\/keys\/([A-Za-z0-9._~-]{1,100})\/(rotate|revoke)$/.exec(p);
    if (k) return k[2] === 'rotate' ? this.rotateKey(c, k[1]!) : this.revokeKey(c, k[1]!);
    if (p === '/account/plan') return this.choosePlan(c);
    if (p === '/account/verify') return this.resend(c);
    throw new AccountError(404, 'No such page in the portal.');
  }

  // ---- sessions ----

  secret(acc: AccountSettings): string {
    return acc.secret ?? this.ownSecret;
  }

  private mac(acc: AccountSettings, ...parts: string[]): string {
    return createHmac('sha256', this.secret(acc)).update(parts.join('\n')).digest('base64url');
  }

  /**
   * The request's session: its one `tp_portal` cookie (over https `__Host-tp_portal`, and only
   * that: a tossed `tp_portal` stands for nothing there). Two or more are no session (a sibling
   * origin can toss in a cookie of the same name for another Path or Domain, e.g. its own
   * account's, and the browser's order is not ours to choose).
   */
  private session(c: Ctx): Session | null {
    const now = this.now();
    const name = c.cookieName;
    const values = (c.r.cookie ?? '').split(';').filter((part) => {
      const eq = part.indexOf('=');
      return eq !== -1 && part.slice(0, eq).trim() === name;
    }).map((part) => part.slice(part.indexOf('=') + 1).trim());
    if (values.length !== 1) return null;
    const [n, exp, sid, mac, extra] = values[0]!.split('.');
    if (extra !== undefined || !n || !exp || !sid || !mac || !/^[0-9]{1,15}$/.test(exp) || Number(exp) <= now) return null;
    const devName = unb64u(n);
    const dev = developers(this.backend.document()).find((d) => d.name === devName);
    if (!dev) return null;
    if (!equal(mac, this.sessionMac(c.acc, dev.name, exp, sid, dev.cred))) return null;
    return { dev, sid, csrf: this.mac(c.acc, 'csrf', sid), exp: Number(exp) };
  }

  /** A session's MAC: over its name, expiry and id, the password hash and the session epoch (sign-out raises it). */
  private sessionMac(acc: AccountSettings, name: string, exp: string, sid: string, cred: Obj): string {
    const epoch = typeof cred['session_epoch'] === 'number' ? cred['session_epoch'] : 0;
    // (epoch 0 is left out: sessions made before epochs existed stay good)
    return epoch === 0 ? this.mac(acc, 's', name, exp, sid, String(cred['password_hash'])) : this.mac(acc, 's', name, exp, sid, String(cred['password_hash']), `e${epoch}`);
  }

  private startSession(c: Ctx, name: string, cred: Obj): string {
    const exp = this.now() + c.acc.sessionTtlMs;
    const sid = randomBytes(16).toString('base64url');
    const token = `${b64u(name)}.${exp}.${sid}.${this.sessionMac(c.acc, name, String(exp), sid, cred)}`;
    return `${c.cookieName}=${token}; Path=${c.cookiePath}; HttpOnly; SameSite=Strict; Max-Age=${Math.floor(c.acc.sessionTtlMs / 1000)}${c.r.tls ? '; Secure' : ''}`;
  }

  private clearCookie(c: Ctx): string {
    return `${c.cookieName}=; Path=${c.cookiePath}; HttpOnly; SameSite=Strict; Max-Age=0${c.r.tls ? '; Secure' : ''}`;
  }

  // ---- sign-up, login, logout ----

  private async signup(c: Ctx): Promise<AccountResponse> {
    const { acc, form, r } = c;
    const email = normEmail(form!.get('email') ?? '');
    const password = form!.get('password') ?? '';
    // (at most 254 characters, RFC 5321's longest path, as the portal credential's schema: a longer one failed the store write, 500)
    // (`${`: the stored document is read by every node as a config file is, a reference to its environment)
    if (email.length > MAX_EMAIL || !EMAIL.test(email) || CONTROL.test(email) || email.includes('${')) return c.signupForm(400, 'Give a valid email address.', email.slice(0, MAX_EMAIL));
    if (password.length < MIN_PASSWORD || password.length > MAX_PASSWORD) return c.signupForm(400, `The password needs ${MIN_PASSWORD} to ${MAX_PASSWORD} characters.`, email);
    const readOnly = this.backend.readOnly();
    if (readOnly) {
      const res = c.signupForm(503, `Sign-up is not available: ${readOnly.reason}`, email);
      return readOnly.transient ? { ...res, headers: { ...res.headers, ...retryAfter(STORE_RETRY_MS) } } : res;
    }
    const now = this.now();
    // Per client network (IPv4 address, IPv6 /64, as the login limits): one IPv6 subscriber holds a whole /64.
    const client = ipNetwork(r.clientIp);
    let hits = this.signupHits.get(client);
    if (hits && hits.until <= now) hits = undefined;
    if (hits && hits.n >= acc.signupsPerHour) {
      const res = c.signupForm(429, 'Too many sign-ups from your address; try again later.', email);
      return { ...res, headers: { ...res.headers, ...retryAfter(hits.until - now) } };
    }
    // All clients together: each sign-up is a config revision every node reloads, and a client
    // holding many addresses (an IPv6 /48 is 65,536 /64s) passes the per-client limit.
    if (this.nodeSignups.until <= now) this.nodeSignups = { n: 0, until: now + 3_600_000 };
    if (this.nodeSignups.n >= acc.nodeSignupsPerHour) {
      const res = c.signupForm(429, 'Too many sign-ups right now; try again later.', email);
      return { ...res, headers: { ...res.headers, ...retryAfter(this.nodeSignups.until - now) } };
    }
    this.nodeSignups.n++;
    if (!hits) {
      for (const [k, v] of this.signupHits) if (v.until <= now || this.signupHits.size > 10_000) this.signupHits.delete(k);
      this.signupHits.set(client, (hits = { n: 0, until: now + 3_600_000 }));
    }
    hits.n++;
    const hash = await hashPasswordAsync(password, PORTAL_SCRYPT);
    const name = nameFor(email);
    await this.backend.edit('portal', `developer sign-up: consumer ${name}`, (doc) => {
      if (developers(doc).some((d) => d.email === email)) throw new AccountError(409, 'An account with this email exists: log in instead.');
      if (!Array.isArray(doc['consumers'])) doc['consumers'] = [];
      const list = doc['consumers'] as Obj[];
      if (list.some((x) => x?.['name'] === name)) throw new AccountError(409, 'Please try again.');
      const cred: Obj = { type: 'portal', email, password_hash: hash };
      if (acc.approval === 'manual') cred['approved'] = false;
      if (acc.verification) cred['verified'] = false;
      cred['created_at'] = new Date(now).toISOString();
      list.push({ name, ...(acc.defaultPlan ? { plan: acc.defaultPlan } : {}), tags: ['portal'], credentials: [cred] });
    });
    this.log.info({ consumer: name, approval: acc.approval }, 'portal: a developer signed up');
    if (acc.verification) await this.sendVerification(acc, name, email);
    return { status: 303, headers: { location: `${c.base}/account`, 'set-cookie': this.startSession(c, name, { password_hash: hash }), 'cache-control': 'no-store' }, body: '' };
  }

  private async login(c: Ctx): Promise<AccountResponse> {
    const { form, r } = c;
    const email = normEmail(form!.get('email') ?? '').slice(0, MAX_EMAIL);
    const password = form!.get('password') ?? '';
    const now = this.now();
    const emailKey = `${email} ${ipNetwork(r.clientIp, 24)}`;
    const wait = Math.max(this.loginByIp.wait(ipNetwork(r.clientIp), now), this.loginByEmail.wait(emailKey, now));
    if (wait > 0) {
      const s = Math.ceil(wait / 1000);
      const res = c.loginForm(429, `Too many failed attempts; try again in ${s < 90 ? `${s} seconds` : `${Math.ceil(s / 60)} minutes`}.`, email);
      return { ...res, headers: { ...res.headers, 'retry-after': String(s) } };
    }
    const dev = developers(this.backend.document()).find((d) => d.email === email);
    const parsed = dev ? parseHash(String(dev.cred['password_hash'])) : null;
    // Counted before the scrypt (concurrent attempts all count), taken back when right.
    this.loginByIp.hit(ipNetwork(r.clientIp), now);
    this.loginByEmail.hit(emailKey, now);
    let ok = false;
    if (password.length <= MAX_PASSWORD) {
      // (an unknown email costs the same scrypt as a known one)
      this.dummy ??= hashPasswordAsync(randomBytes(16).toString('hex'), PORTAL_SCRYPT);
      const h = parsed ?? parseHash(await this.dummy)!;
      // (a stored hash made with less work, p=1 before, costs the rest too: the same time as the
      // dummy, so no timing tells an old account — or, until it is re-hashed, that it exists)
      ok = (await verifyPasswordAtCost(password, h, PORTAL_SCRYPT)) && parsed !== null;
    }
    if (!ok || !dev) return c.loginForm(401, 'Wrong email or password.', email);
    this.loginByIp.refund(ipNetwork(r.clientIp));
    this.loginByEmail.refund(emailKey);
    let cred = dev.cred;
    // A hash made with less work than today's (an older release's, an imported one): re-hashed
    // now that the password is at hand, when this node can write (else at a later login). Its
    // other sessions end, as they do when the password changes (their MAC covers the hash).
    if (weakerThanDefault(parsed!) && this.backend.readOnly() === null) {
      const old = dev.cred['password_hash'];
      const hash = await hashPasswordAsync(password, PORTAL_SCRYPT);
      try {
        await this.backend.edit(dev.name, 'portal: password re-hashed at the current scrypt cost', (doc) => {
          const { cred: stored } = developerIn(doc, dev.name);
          if (stored['password_hash'] !== old) throw new AccountError(409, 'the password changed meanwhile');
          stored['password_hash'] = hash;
        });
        cred = { ...dev.cred, password_hash: hash };
      } catch (err) {
        // (the login stands: the old hash still verifies)
        this.log.warn({ consumer: dev.name, err: (err as Error).message }, 'portal: re-hashing a password failed');
      }
    }
    return { status: 303, headers: { location: `${c.base}/account`, 'set-cookie': this.startSession(c, dev.name, cred), 'cache-control': 'no-store' }, body: '' };
  }

  /**
   * Sign-out: the developer's session epoch goes up in the config store (every session of
   * theirs ends, on every node, across restarts), then the cookie is cleared. Past 30 a hour
   * (each is a revision) only this browser's cookie is cleared, and the page says so.
   */
  private async logout(c: Ctx): Promise<AccountResponse> {
    const name = c.session!.dev.name;
    const now = this.now();
    const cleared = { location: `${c.base}/login`, 'set-cookie': this.clearCookie(c), 'cache-control': 'no-store' };
    if (this.signOuts.blocked(name, now)) {
      return { ...c.message(429, 'Signed out here only', 'You are signed out in this browser, but you signed out too often in the last hour to end your other sessions; sign out again later.'), headers: { ...PAGE_HEADERS, 'set-cookie': cleared['set-cookie'], ...retryAfter(this.signOuts.wait(name, now)) } };
    }
    this.signOuts.hit(name, now);
    try {
      await this.backend.edit(name, 'portal: signed out (every session ended)', (doc) => {
        const { cred } = developerIn(doc, name);
        cred['session_epoch'] = (typeof cred['session_epoch'] === 'number' ? cred['session_epoch'] : 0) + 1;
      });
    } catch (err) {
      // The store cannot take the sign-out (unreachable, a failed write): this browser is signed
      // out all the same (as past the hour's limit), and the page says the others are not.
      this.log.warn({ consumer: name, err: (err as Error).message }, 'portal: a sign-out could not end the other sessions');
      const unavailable = (err as Error)?.name === 'StoreUnavailable';
      return { ...c.message(503, 'Signed out here only', 'You are signed out in this browser, but your other sessions could not be ended right now (the account store cannot be reached); sign in and out again later.'), headers: { ...PAGE_HEADERS, 'set-cookie': cleared['set-cookie'], ...(unavailable ? retryAfter(STORE_RETRY_MS) : {}) } };
    }
    return { status: 303, headers: cleared, body: '' };
  }

  // ---- keys ----

  private active(c: Ctx): void {
    const d = c.session!.dev;
    if (!d.verified) throw new AccountError(403, 'Verify your email address first (see the link we sent).');
    if (!d.approved) throw new AccountError(403, 'Your account is awaiting approval by an administrator.');
  }

  private async issueKey(c: Ctx): Promise<AccountResponse> {
    this.active(c);
    const name = c.session!.dev.name;
    const key = newKey();
    const id = `k-${randomBytes(6).toString('hex')}`;
    await this.backend.edit(name, `portal: API key ${id} issued`, (doc) => {
      const { consumer, creds } = developerIn(doc, name);
      if (keysOf(consumer).length >= c.acc.maxKeys) throw new AccountError(409, `You have ${c.acc.maxKeys} keys, the most allowed: revoke one first.`);
      creds.push({ type: 'key-auth', id, key_sha256: sha256Hex(key), created_at: new Date(this.now()).toISOString() });
    });
    this.log.info({ consumer: name, credential: id }, 'portal: API key issued');
    return this.afterKeyChange(c, { id, key });
  }

  private async rotateKey(c: Ctx, id: string): Promise<AccountResponse> {
    this.active(c);
    const name = c.session!.dev.name;
    const key = newKey();
    await this.backend.edit(name, `portal: API key ${id} rotated`, (doc) => {
      const cred = keysOf(developerIn(doc, name).consumer).find((k) => k['id'] === id);
      if (!cred) throw new AccountError(404, 'You have no such key.');
      delete cred['key'];
      cred['key_sha256'] = sha256Hex(key);
      cred['created_at'] = new Date(this.now()).toISOString();
    });
    this.log.info({ consumer: name, credential: id }, 'portal: API key rotated');
    return this.afterKeyChange(c, { id, key });
  }

  private async revokeKey(c: Ctx, id: string): Promise<AccountResponse> {
    const name = c.session!.dev.name;
    await this.backend.edit(name, `portal: API key ${id} revoked`, (doc) => {
      const { consumer } = developerIn(doc, name);
      const creds = consumer['credentials'] as Obj[];
      const i = creds.findIndex((k) => k?.['type'] === 'key-auth' && k['id'] === id);
      if (i === -1) throw new AccountError(404, 'You have no such key.');
      creds.splice(i, 1);
    });
    this.log.info({ consumer: name, credential: id }, 'portal: API key revoked');
    return { status: 303, headers: { location: `${c.base}/account`, 'cache-control': 'no-store' }, body: '' };
  }

  /** The account page with the new key, shown this once (its digest is all that is kept). */
  private async afterKeyChange(c: Ctx, fresh: { id: string; key: string }): Promise<AccountResponse> {
    c.session = this.session(c) ?? c.session;
    return c.accountPage(200, await this.usage(c.session!.dev.name), fresh);
  }

  // ---- plan, verification ----

  private async choosePlan(c: Ctx): Promise<AccountResponse> {
    const plan = c.form!.get('plan') ?? '';
    if (!c.acc.plans.includes(plan)) throw new AccountError(400, 'Choose one of the plans offered.');
    this.active(c);
    const d = c.session!.dev;
    const name = d.name;
    const auto = c.acc.planApproval === 'auto' || d.consumer['plan'] === plan;
    // Nothing to change: no revision written.
    if (auto ? d.consumer['plan'] === plan && d.cred['requested_plan'] === undefined : d.cred['requested_plan'] === plan) {
      return { status: 303, headers: { location: `${c.base}/account`, 'cache-control': 'no-store' }, body: '' };
    }
    await this.backend.edit(name, `portal: plan ${plan} ${c.acc.planApproval === 'auto' ? 'chosen' : 'requested'}`, (doc) => {
      const { consumer, cred } = developerIn(doc, name);
      if (c.acc.planApproval === 'auto' || consumer['plan'] === plan) {
        consumer['plan'] = plan;
        delete cred['requested_plan'];
      } else cred['requested_plan'] = plan;
    });
    return { status: 303, headers: { location: `${c.base}/account`, 'cache-control': 'no-store' }, body: '' };
  }

  private verifyToken(acc: AccountSettings, name: string, email: string, exp: number): string {
    return `${b64u(name)}.${exp}.${this.mac(acc, 'v', name, email, String(exp))}`;
  }

  private async sendVerification(acc: AccountSettings, name: string, email: string): Promise<boolean> {
    const v = acc.verification!;
    const exp = this.now() + 24 * 3_600_000;
    const link = `${v.linkBase}${this.host.settings()?.base ?? '/portal'}/verify?token=${encodeURIComponent(this.verifyToken(acc, name, email, exp))}`;
    const body = JSON.stringify({ event: 'developer.verify', consumer: name, email, link, expires_at: new Date(exp).toISOString() });
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (v.secret) headers[SIGNATURE_HEADER] = signature(v.secret, Math.floor(this.now() / 1000), body);
    try {
      const res = await undiciRequest(v.url, { method: 'POST', headers, body, headersTimeout: v.timeoutMs, bodyTimeout: v.timeoutMs, signal: AbortSignal.timeout(v.timeoutMs) });
      await res.body.dump();
      if (res.statusCode < 200 || res.statusCode > 299) throw new Error(`the hook answered ${res.statusCode}`);
      return true;
    } catch (err) {
      this.log.warn({ consumer: name, err: (err as Error).message }, 'portal: the email verification hook failed');
      return false;
    }
  }

  private async verify(c: Ctx): Promise<AccountResponse> {
    const token = c.form!.get('token') ?? '';
    const [n, exp, mac, extra] = token.split('.');
    const bad = () => c.message(400, 'Link not valid', 'This verification link is not valid or has expired: log in and ask for a new one.');
    if (extra !== undefined || !n || !exp || !mac || !/^[0-9]{1,15}$/.test(exp) || Number(exp) <= this.now()) return bad();
    const name = unb64u(n);
    const dev = developers(this.backend.document()).find((d) => d.name === name);
    if (!dev || !equal(mac, this.mac(c.acc, 'v', name, dev.email, exp))) return bad();
    if (!dev.verified) {
      await this.backend.edit('portal', `portal: email of ${name} verified`, (doc) => {
        delete developerIn(doc, name).cred['verified'];
      });
      this.log.info({ consumer: name }, 'portal: a developer verified their email');
    }
    return c.message(200, 'Email verified', 'Your email address is verified.', `<p><a href="${esc(`${c.base}/account`)}">Go to your account</a></p>`);
  }

  private async resend(c: Ctx): Promise<AccountResponse> {
    const d = c.session!.dev;
    if (d.verified || !c.acc.verification) return { status: 303, headers: { location: `${c.base}/account`, 'cache-control': 'no-store' }, body: '' };
    const now = this.now();
    if (this.resends.blocked(d.name, now)) throw new AccountError(429, 'Too many emails asked for; try again later.', retryAfter(this.resends.wait(d.name, now)));
    this.resends.hit(d.name, now);
    const sent = await this.sendVerification(c.acc, d.name, d.email);
    return c.message(sent ? 200 : 502, sent ? 'Email sent' : 'Not sent', sent ? 'We sent you a new verification link.' : 'The email could not be sent; try again later.', `<p><a href="${esc(`${c.base}/account`)}">Back to your account</a></p>`);
  }

  /** Usage reads in flight per consumer (each asks every worker for its analytics): one at a time, shared. */
  private readonly usageCache = new Map<string, Promise<Usage>>();

  private async usage(name: string): Promise<Usage | null> {
    let hit = this.usageCache.get(name);
    if (!hit) {
      hit = this.host.usage(name);
      this.usageCache.set(name, hit);
      const forget = () => { this.usageCache.delete(name); };
      hit.then(forget, forget);
    }
    try {
      return await hit;
    } catch (err) {
      this.log.warn({ consumer: name, err: (err as Error).message }, 'portal: usage could not be read');
      return null;
    }
  }
}

/** The methods an account page takes (null: no such page). */
function allowedOn(p: string): string | null {
  if (p === '/signup' || p === '/login' || p === '/verify') return 'GET, HEAD, POST';
  if (p === '/account' || p === '/account/usage.json') return 'GET, HEAD';
  if (p === '/logout' || p === '/account/keys' || p === '/account/plan' || p === '/account/verify' || /^\/account\/keys\/[A-Za-z0-9._~-]{1,100}\/(rotate|revoke)$/.test(p)) return 'POST';
  return null;
}

function equal(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function json(status: number, body: unknown): AccountResponse {
  return { status, headers: { 'content-type': status >= 400 ? 'application/problem+json' : 'application/json', 'cache-control': 'no-store', ...SECURITY }, body: JSON.stringify(body) };
}

/**
 * Why a POST looks like it was sent by a page of another site (null: it does not). A browser
 * says where a request comes from in Sec-Fetch-Site; older ones only in Origin ("null" from a
 * page with Referrer-Policy: no-referrer, so then Sec-Fetch-Site decides).
 */
function foreignPost(r: AccountRequest): string | null {
  const refused = 'A form of another site cannot post to the portal.';
  if (r.fetchSite !== undefined) return r.fetchSite === 'same-origin' || r.fetchSite === 'none' ? null : refused;
  if (r.origin === undefined) return null; // not a browser (or one too old to tell): the SameSite cookie and form token still hold
  return r.origin.toLowerCase() === `${r.tls ? 'https' : 'http'}://${r.host}`.toLowerCase() ? null : refused;
}

const fmtTime = (iso: unknown) => (typeof iso === 'string' ? esc(iso.replace('T', ' ').replace(/\.\d+Z$/, ' UTC')) : '—');

/** One request: its settings, session and form, and the pages it may answer with. */
class Ctx {
  session: Session | null = null;
  form: URLSearchParams | null = null;
  readonly base: string;

  constructor(readonly portal: PortalSettings, readonly acc: AccountSettings, readonly r: AccountRequest) {
    this.base = portal.base;
  }

  /** The session cookie's name and Path: `__Host-tp_portal` at / over https, else `tp_portal` under the portal's base. */
  get cookieName(): string {
    return this.r.tls ? HOST_COOKIE : COOKIE;
  }

  get cookiePath(): string {
    return this.r.tls ? '/' : `${this.base}/`;
  }

  private nav(): string {
    const b = this.base;
    const right = this.session
      ? `<a href="${esc(`${b}/account`)}">Account</a><form class="inline" method="post" action="${esc(`${b}/logout`)}">${this.csrfField()}<button class="secondary" type="submit">Sign out</button></form>`
      : `<a href="${esc(`${b}/login`)}">Sign in</a><a href="${esc(`${b}/signup`)}">Sign up</a>`;
    return `<nav aria-label="Portal"><a href="${esc(`${b}/`)}">${esc(this.portal.title)}</a><span class="sp"></span>${right}</nav>`;
  }

  private csrfField(): string {
    return this.session ? `<input type="hidden" name="csrf" value="${esc(this.session.csrf)}">` : '';
  }

  html(status: number, title: string, body: string, headers: Record<string, string> = {}): AccountResponse {
    return { status, headers: { ...PAGE_HEADERS, ...headers }, body: page(`${title} — ${this.portal.title}`, `<main>${body}</main>`, this.nav()) };
  }

  message(status: number, title: string, text: string, more = ''): AccountResponse {
    return this.html(status, title, `<h1>${esc(title)}</h1><p${status >= 400 ? ' class="error" role="alert"' : ''}>${esc(text)}</p>${more}`);
  }

  private credentialsForm(kind: 'signup' | 'login', status: number, error: string | undefined, email: string): AccountResponse {
    const b = this.base;
    const title = kind === 'signup' ? 'Sign up' : 'Sign in';
    const other = kind === 'signup'
      ? `<p>Have an account? <a href="${esc(`${b}/login`)}">Sign in</a></p>`
      : `<p>New here? <a href="${esc(`${b}/signup`)}">Sign up</a></p>`;
    const pw = kind === 'signup' ? `new-password" minlength="${MIN_PASSWORD}` : 'current-password';
    return this.html(status, title, `<h1>${title}</h1>${error ? `<p class="error" role="alert" id="form-error">${esc(error)}</p>` : ''}
<form method="post" action="${esc(`${b}/${kind}`)}"${error ? ' aria-describedby="form-error"' : ''}>
<label for="email">Email</label><input id="email" name="email" type="email" autocomplete="email" required maxlength="254" value="${esc(email)}">
<label for="password">Password${kind === 'signup' ? ` <small>(at least ${MIN_PASSWORD} characters)</small>` : ''}</label><input id="password" name="password" type="password" autocomplete="${pw}" required maxlength="${MAX_PASSWORD}">
<p><button type="submit">${title}</button></p></form>${other}`);
  }

  signupForm(status: number, error?: string, email = ''): AccountResponse {
    return this.credentialsForm('signup', status, error, email);
  }

  loginForm(status: number, error?: string, email = ''): AccountResponse {
    return this.credentialsForm('login', status, error, email);
  }

  verifyForm(): AccountResponse {
    const token = new URLSearchParams(this.r.query).get('token') ?? '';
    return this.html(200, 'Verify your email', `<h1>Verify your email</h1><form method="post" action="${esc(`${this.base}/verify`)}"><input type="hidden" name="token" value="${esc(token.slice(0, 2000))}"><p><button type="submit">Confirm my email address</button></p></form>`);
  }

  /** The developer's own view, for usage.json. */
  summary(usage: Usage | null): Record<string, unknown> {
    const d = this.session!.dev;
    return {
      consumer: d.name,
      email: d.email,
      status: !d.verified ? 'unverified' : !d.approved ? 'pending-approval' : 'active',
      plan: d.consumer['plan'] ?? null,
      ...(d.cred['requested_plan'] ? { requested_plan: d.cred['requested_plan'] } : {}),
      keys: keysOf(d.consumer).map((k) => ({ id: k['id'] ?? null, created_at: k['created_at'] ?? null })),
      usage,
    };
  }

  accountPage(status: number, usage: Usage | null, fresh?: { id: string; key: string }): AccountResponse {
    const d = this.session!.dev;
    const b = this.base;
    const parts: string[] = [`<h1>Your account</h1><p>Signed in as <strong>${esc(d.email)}</strong> (consumer <code>${esc(d.name)}</code>).</p>`];
    if (!d.verified) {
      parts.push(`<p class="notice" role="status">Verify your email address: open the link we sent you.</p><form method="post" action="${esc(`${b}/account/verify`)}">${this.csrfField()}<button class="secondary" type="submit">Send the link again</button></form>`);
    } else if (!d.approved) parts.push('<p class="notice" role="status" id="pending">Your account is awaiting approval by an administrator; you can get keys once it is approved.</p>');
    if (fresh) {
      parts.push(`<section class="notice" aria-labelledby="new-key-title"><h2 id="new-key-title">Your new API key <code>${esc(fresh.id)}</code></h2><p>Copy it now: it is shown only this once (we keep only its digest).</p><p class="key" id="new-key">${esc(fresh.key)}</p><p>Send it in the <code>apikey</code> header: <code>curl -H "apikey: ${esc(fresh.key)}" …</code></p></section>`);
    }
    const keys = keysOf(d.consumer);
    const rows = keys.map((k) => {
      const id = String(k['id'] ?? '');
      const act = (what: 'rotate' | 'revoke', label: string) => `<form class="inline" method="post" action="${esc(`${b}/account/keys/${encodeURIComponent(id)}/${what}`)}">${this.csrfField()}<button class="secondary" type="submit" aria-label="${label} key ${esc(id)}">${label}</button></form>`;
      return `<tr><td><code>${esc(id)}</code></td><td>${fmtTime(k['created_at'])}</td><td>${/^[A-Za-z0-9._~-]{1,100}$/.test(id) ? `${act('rotate', 'Rotate')} ${act('revoke', 'Revoke')}` : ''}</td></tr>`;
    });
    const canIssue = d.verified && d.approved && keys.length < this.acc.maxKeys;
    parts.push(`<h2>API keys</h2>${rows.length ? `<table><thead><tr><th scope="col">Key</th><th scope="col">Issued</th><th scope="col">Actions</th></tr></thead><tbody>${rows.join('')}</tbody></table>` : '<p>You have no key yet.</p>'}`
      + (canIssue ? `<form method="post" action="${esc(`${b}/account/keys`)}">${this.csrfField()}<button type="submit">Create a key</button></form>` : keys.length >= this.acc.maxKeys ? `<p>You hold the most keys allowed (${this.acc.maxKeys}).</p>` : ''));
    const plan = typeof d.consumer['plan'] === 'string' ? d.consumer['plan'] : null;
    let planPart = `<h2>Plan</h2><p>Your plan: <strong id="plan">${plan ? esc(plan) : 'none'}</strong>${typeof d.cred['requested_plan'] === 'string' ? ` — you asked for <strong>${esc(d.cred['requested_plan'])}</strong>, awaiting approval` : ''}.</p>`;
    if (this.acc.plans.length) {
      planPart += `<form method="post" action="${esc(`${b}/account/plan`)}">${this.csrfField()}<label for="plan-choice">Change plan</label><select id="plan-choice" name="plan">${this.acc.plans.map((p) => `<option value="${esc(p)}"${p === plan ? ' selected' : ''}>${esc(p)}</option>`).join('')}</select> <button class="secondary" type="submit">${this.acc.planApproval === 'auto' ? 'Switch' : 'Ask for this plan'}</button></form>`;
    }
    parts.push(planPart);
    parts.push(`<h2>Usage</h2>${usageHtml(usage)}<p><a href="${esc(`${b}/account`)}">Refresh</a> · <a href="${esc(`${b}/account/usage.json`)}">as JSON</a> · <a href="${esc(`${b}/`)}">API catalog</a></p>`);
    return this.html(status, 'Your account', parts.join(''));
  }
}

function usageHtml(u: Usage | null): string {
  if (!u) return '<p>Usage cannot be read right now.</p>';
  const out: string[] = [];
  if (u.quotas.length) {
    const rows = u.quotas.map((q) => `<tr${q.remaining === 0 ? ' class="exhausted"' : ''}><th scope="row">${esc(q.name)}</th><td data-quota-used="${esc(q.name)}">${q.used}</td><td>${q.limit} per ${esc(q.every)}</td><td>${q.remaining}</td><td>${fmtTime(q.resets_at)}</td></tr>`).join('');
    out.push(`<table aria-label="Quotas"><thead><tr><th scope="col">Quota</th><th scope="col">Used</th><th scope="col">Limit</th><th scope="col">Remaining</th><th scope="col">Resets</th></tr></thead><tbody>${rows}</tbody></table>`);
    const done = u.quotas.filter((q) => q.remaining === 0);
    if (done.length) out.push(`<p class="error" role="alert" id="quota-exhausted">Quota used up: ${done.map((q) => `${esc(q.name)} (${q.limit} per ${esc(q.every)}, resets ${fmtTime(q.resets_at)})`).join('; ')}. Calls are refused with 429 until then.</p>`);
  } else out.push('<p>No quota applies to you.</p>');
  if (u.last_hour && u.last_day) {
    const row = (label: string, id: string, w: WindowUsage) => `<tr><th scope="row">${label}</th><td id="requests-${id}">${w.requests}</td><td>${w.client_errors}</td><td>${w.errors}</td></tr>`;
    out.push(`<table aria-label="Requests"><thead><tr><th scope="col">Window</th><th scope="col">Requests</th><th scope="col">Refused (4xx)</th><th scope="col">Errors (5xx)</th></tr></thead><tbody>${row('Last hour', '1h', u.last_hour)}${row('Last 24 hours', '24h', u.last_day)}</tbody></table>`);
  }
  return out.join('');
}
