/**
 * basic-auth (RFC 7617): `Authorization: Basic base64(user:password)` checked against consumers'
 * basic-auth credentials. Passwords are held only as scrypt hashes (a `password` in the config
 * is hashed when the config loads, and the plain value is dropped from the loaded config; a
 * reload hashes them on the thread pool first, and a pair hashed before in the process is not
 * hashed again: hash.ts knownHash).
 * scrypt runs on the thread pool; a verified pair is remembered for 5 minutes (bounded, keyed
 * by an HMAC with a per-process key), so only the first request of a caller pays for it.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { definePlugin, type AuthOutcome, type Consumer } from '../types.js';
import { TtlCache } from '../auth-common.js';
import { ipNetwork } from '../../core/forwarded.js';
import { unsendableSecret } from '../../core/secret-text.js';
import { BasicAuthConfig, BasicAuthCredential } from './schema.js';
import { hashPassword, hashPlain, knownHash, parseHash, rememberHash, verifyPassword, type ParsedHash } from './hash.js';

const CACHE_MS = 5 * 60_000;
const CACHE_MAX = 10_000;
/** Concurrent scrypt checks; more wait (each holds ~16 MB and a pool thread for ~250 ms). */
const MAX_CHECKS = 4;
const MAX_WAITING = 256;
/**
 * Checks running or waiting per client network (IPv4 address, IPv6 /64): past it that client's
 * new pairs are 503 at once. Without it one client sending made-up passwords filled the queue,
 * and every caller not verified yet got 503 until it drained.
 */
const MAX_PER_CLIENT = 16;
const perClient = new Map<string, number>();
const cacheKey = randomBytes(32);

let running = 0;
const waiting: (() => void)[] = [];
async function limited<T>(f: () => Promise<T>): Promise<T | null> {
  if (running >= MAX_CHECKS) {
    if (waiting.length >= MAX_WAITING) return null;
    await new Promise<void>((r) => waiting.push(r));
  }
  running++;
  try {
    return await f();
  } finally {
    running--;
    waiting.shift()?.();
  }
}

export default definePlugin({
  name: 'basic-auth',
  priority: 1100,
  description: 'HTTP Basic authentication against consumers\' basic-auth credentials (scrypt hashes).',
  schema: BasicAuthConfig,
  credential: BasicAuthCredential,
  scopes: ['global', 'service', 'route'],
  prepareCredentials(list) {
    const problems: { index: number; field?: string; message: string }[] = [];
    const seen = new Map<string, string>();
    list.forEach(({ consumer, credential }, index) => {
      const c = credential as { username: string; password?: string; password_hash?: string };
      if ((c.password === undefined) === (c.password_hash === undefined)) {
        problems.push({ index, message: 'give password or password_hash (one of them)' });
        return;
      }
      // (RFC 7617 §2: no control characters in either; blanks at the ends travel in base64)
      for (const field of ['username', 'password'] as const) {
        const bad = c[field] === undefined ? null : unsendableSecret(c[field], 'Basic credentials (RFC 7617)', { edges: false });
        if (bad) problems.push({ index, field, message: bad });
      }
      // (compared as requests are: in NFC, where "jürgen" typed decomposed is the same name)
      const name = c.username.normalize('NFC');
      const other = seen.get(name);
      if (other !== undefined) {
        problems.push({ index, field: 'username', message: other === consumer.name ? `user name "${c.username}" is given twice for consumer "${other}"` : `user name "${c.username}" is also consumer "${other}"'s` });
      }
      seen.set(name, consumer.name);
      if (c.password !== undefined) {
        // The loaded config keeps the hash instead: a recompile reuses it, the plain value goes.
        // A reload of the same pair (and one precomputeCredentials hashed) reuses this process's
        // hash: no scrypt on the event loop (~250 ms each) at every reload.
        let hash = knownHash(c.username, c.password);
        if (hash === undefined) rememberHash(c.username, c.password, (hash = hashPassword(c.password)));
        c.password_hash = hash;
        delete c.password;
      }
      if (parseHash(c.password_hash!) === null) problems.push({ index, field: 'password_hash', message: 'not a valid scrypt hash (scrypt$N$r$p$salt$hash, N a power of two up to 2^20, 128·N·r at most 256 MiB, N·r·p at most 2^22)' });
    });
    return problems;
  },
  /** The plain passwords of a reload hashed on the thread pool first (prepareCredentials finds them: knownHash). */
  async precomputeCredentials(list) {
    const pairs: { username: string; password: string }[] = [];
    for (const cr of list) {
      const c = cr as { username?: unknown; password?: unknown; password_hash?: unknown };
      if (typeof c.username !== 'string' || typeof c.password !== 'string' || c.password === '' || c.password.length > 1024 || c.password_hash !== undefined) continue;
      if (knownHash(c.username, c.password) === undefined) pairs.push({ username: c.username, password: c.password });
    }
    if (pairs.length > 0) await hashPlain(pairs);
  },
  create(config, deps) {
    const users = new Map<string, { consumer: Consumer; hash: ParsedHash }>();
    for (const { consumer, credential } of deps.credentials) {
      // (prepareCredentials made sure every one has a valid password_hash and a unique name)
      const c = credential as { username: string; password_hash: string };
      users.set(c.username.normalize('NFC'), { consumer, hash: parseHash(c.password_hash)! });
    }
    // Unknown user names are checked against a hash with the cost of a real one: a user's, the
    // same one for a name every time (by a keyed hash of it). With the first user's for all, a
    // name whose hash has another cost (one made before the default changed) was told apart
    // from names that do not exist by its time alone.
    // (a hash that did not parse fails the compile, which still creates the plugin: skipped)
    const dummies: ParsedHash[] = [...users.values()].flatMap(({ hash: h }) => (h ? [{ ...DUMMY, N: h.N, r: h.r, p: h.p, hash: Buffer.alloc(h.hash.length, 1) }] : []));
    const dummyFor = (name: string): ParsedHash => dummies.length === 0 ? DUMMY
      : dummies.length === 1 ? dummies[0]! : dummies[createHmac('sha256', cacheKey).update(name).digest().readUInt32BE(0) % dummies.length]!;
    const realm = config.realm ?? 'turnpike';
    const challenge = `Basic realm="${realm}", charset="UTF-8"`;
    const verified = new TtlCache<Consumer>(CACHE_MAX);
    /** Checks under way by cache key: the same pair sent again meanwhile waits for the same one. */
    const pending = new Map<string, Promise<Consumer | false | null>>();
    return {
      /**
       * hide_credentials: Basic credentials never reach the upstream, whatever becomes of them: a
       * wrong password goes on with the anonymous consumer when there is one, and another auth
       * plugin of the route may let the request in before this one looks (any-of). Taken out
       * before authentication (the check reads the client's request); another scheme stays.
       */
      onRequest: config.hide_credentials ? (ctx) => {
        const h = ctx.header('authorization');
        if (h !== undefined && /^Basic(?:[ \t]|$)/i.test(h)) ctx.removeUpstreamHeader('authorization');
      } : undefined,
      authenticate(ctx): AuthOutcome | Promise<AuthOutcome> {
        const h = ctx.header('authorization');
        const m = h === undefined ? null : /^Basic +([A-Za-z0-9+/]+=*) *$/i.exec(h);
        if (m === null) return { ok: false, missing: true, challenge };
        const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        if (colon === -1) return { ok: false, missing: false, challenge, detail: 'malformed Basic credentials' };
        // Compared in Unicode NFC (RFC 7617 §2.1 prepares both with PRECIS, RFC 8265, which
        // applies NFC): a client sending the decomposed form of a name or password still matches
        // (verifyPassword normalizes the password).
        const username = decoded.slice(0, colon).normalize('NFC');
        const password = decoded.slice(colon + 1);
        const key = createHmac('sha256', cacheKey).update(decoded).digest('base64');
        const ok = (consumer: Consumer): AuthOutcome => ({ ok: true, consumer, identity: consumer.name, credential: `basic-auth:${username}` });
        const known = verified.get(key);
        if (known !== undefined) return ok(known); // verified before: no scrypt, no promise
        let check = pending.get(key);
        if (check === undefined) {
          const client = ipNetwork(ctx.clientIp);
          const n = perClient.get(client) ?? 0;
          if (n >= MAX_PER_CLIENT) return { ok: false, missing: false, challenge, detail: 'too many authentication attempts in progress from your address', status: 503 };
          perClient.set(client, n + 1);
          const user = users.get(username);
          // An unknown user costs a check too (no user-name oracle by timing).
          check = limited(() => verifyPassword(password, user?.hash ?? dummyFor(username))).then((good) => {
            if (good === null) return null;
            if (!good || user === undefined) return false;
            verified.set(key, user.consumer, Date.now() + CACHE_MS);
            return user.consumer;
          }).finally(() => {
            pending.delete(key);
            const left = (perClient.get(client) ?? 1) - 1;
            if (left <= 0) perClient.delete(client);
            else perClient.set(client, left);
          });
          pending.set(key, check);
        }
        return check.then((consumer): AuthOutcome => {
          // Overloaded: the credentials were not judged (503, never the anonymous consumer).
          if (consumer === null) return { ok: false, missing: false, challenge, detail: 'too many authentication attempts in progress', status: 503 };
          if (consumer === false) return { ok: false, missing: false, challenge, detail: 'invalid user name or password' };
          return ok(consumer);
        });
      },
    };
  },
});

/** Checked against for unknown user names (any valid hash; nobody knows a password for it). */
const DUMMY: ParsedHash = parseHash('scrypt$16384$8$1$6f4t2Qv0yq9mJ3kq1lY8sA==$J0o0v5m8m2z6h7y9y3q2c8k1d4f6g8h0j2l4n6p8r0s=')!;
