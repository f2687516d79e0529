/** Password hashes: scrypt (RFC 7914) with a random salt, stored as scrypt$N$r$p$salt$hash. */
import { createHmac, randomBytes, scrypt, scryptSync, timingSafeEqual } from 'node:crypto';

/**
 * New hashes: OWASP's scrypt minimum (Password Storage Cheat Sheet) in its 16 MiB form,
 * N=2^14, r=8, p=5 (its equivalent of N=2^17, r=8, p=1, which takes 128 MiB a check). Hashes
 * made at another cost still verify (theirs is in the hash); see weakerThanDefault.
 */
export const SCRYPT = { N: 16384, r: 8, p: 5, keylen: 32 } as const;

export function hashPassword(password: string): string {
  const salt = randomBytes(16);
  // (NFC, as basic-auth compares: see its authenticate)
  const hash = scryptSync(password.normalize('NFC'), salt, SCRYPT.keylen, { N: SCRYPT.N, r: SCRYPT.r, p: SCRYPT.p });
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

export interface ParsedHash { N: number; r: number; p: number; salt: Buffer; hash: Buffer }

export function parseHash(s: string): ParsedHash | null {
  const m = /^scrypt\$([0-9]+)\$([0-9]+)\$([0-9]+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(s);
  if (!m) return null;
  const [N, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  // N a power of two; bounded so that a config cannot make every check take seconds: each
  // bound alone let N=2^20 r=32 p=16 through, 4 GiB a check (MAX_CHECKS at once) and minutes of
  // CPU. Now at most 256 MiB (128·N·r) and 2^22 for N·r·p (OWASP's N=2^17 r=8 p=1 is 2^20).
  if (N < 2 || (N & (N - 1)) !== 0 || N > 1 << 20 || r < 1 || r > 32 || p < 1 || p > 16 || N * r > 1 << 21 || N * r * p > 1 << 22) return null;
  const hash = Buffer.from(m[5]!, 'base64');
  if (hash.length < 16) return null;
  return { N, r, p, salt: Buffer.from(m[4]!, 'base64'), hash };
}

/** Whether a hash was made with less work (N·r·p) than SCRYPT: worth re-hashing when the password is at hand. */
export const weakerThanDefault = (h: ParsedHash): boolean => h.N * h.r * h.p < SCRYPT.N * SCRYPT.r * SCRYPT.p;

/**
 * Checks a password against a parsed hash on libuv's thread pool (never on the event loop), in
 * Unicode NFC as the hashes are made: the decomposed (NFD) form of a password still matches.
 */
export function verifyPassword(password: string, h: ParsedHash): Promise<boolean> {
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFC'), h.salt, h.hash.length, { N: h.N, r: h.r, p: h.p, maxmem: 256 * h.N * h.r + 1024 * 1024 }, (err, out) => {
      if (err) reject(err);
      else resolve(timingSafeEqual(out, h.hash));
    });
  });
}

/** hashPassword on libuv's thread pool (for request handlers: scrypt takes ~250 ms of CPU); `cost`: other parameters. */
export function hashPasswordAsync(password: string, cost: { N: number; r: number; p: number; keylen: number } = SCRYPT): Promise<string> {
  const salt = randomBytes(16);
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFC'), salt, cost.keylen, { N: cost.N, r: cost.r, p: cost.p, maxmem: 256 * cost.N * cost.r + 1024 * 1024 }, (err, hash) => {
      if (err) reject(err);
      else resolve(`scrypt$${cost.N}$${cost.r}$${cost.p}$${salt.toString('base64')}$${hash.toString('base64')}`);
    });
  });
}

/**
 * verifyPassword for a hash that may have been made with less work than `floor` (an older
 * release's p=1): the rest of floor's work is spent after it (a throwaway scrypt of the
 * difference), so that a check costs what a check of an unknown name against a floor-cost
 * dummy costs — no oracle telling which accounts still hold an old hash (or exist at all).
 */
export async function verifyPasswordAtCost(password: string, h: ParsedHash, floor: { N: number; r: number; p: number } = SCRYPT): Promise<boolean> {
  const good = await verifyPassword(password, h);
  const pad = paddingFor(h, floor);
  if (pad !== null) await verifyPassword(password, pad);
  return good;
}

/** The throwaway check making up the work `h` lacks against `floor` (in floor's N and r), or null. */
export function paddingFor(h: ParsedHash, floor: { N: number; r: number; p: number } = SCRYPT): ParsedHash | null {
  const lacking = floor.N * floor.r * floor.p - h.N * h.r * h.p;
  if (lacking <= 0) return null;
  const p = Math.max(1, Math.round(lacking / (floor.N * floor.r)));
  return { N: floor.N, r: floor.r, p, salt: PAD_SALT, hash: PAD_HASH };
}
const PAD_SALT = Buffer.alloc(16, 7);
const PAD_HASH = Buffer.alloc(32, 1);

/**
 * Hashes made (or verified) in this process for a basic-auth (user name, plain password) pair,
 * keyed by an HMAC of the pair with a per-process key (the plain text is not kept): a reload of
 * a config with plain passwords, or an admin write sending the same ones again, reuses them
 * instead of running scrypt again (~250 ms of CPU each). Bounded; the oldest go first.
 */
const MEMO_MAX = 10_000;
const memo = new Map<string, string>();
const memoKey = randomBytes(32);
const memoId = (username: string, password: string): string =>
  createHmac('sha256', memoKey).update(JSON.stringify([username.normalize('NFC'), password.normalize('NFC')])).digest('base64');

/** The hash this process made or verified for the pair, if it still remembers it. */
export function knownHash(username: string, password: string): string | undefined {
  return memo.get(memoId(username, password));
}

/** Remembers `hash` as one of the pair's (it must verify: made from it, or checked). */
export function rememberHash(username: string, password: string, hash: string): void {
  const id = memoId(username, password);
  memo.delete(id);
  memo.set(id, hash);
  if (memo.size > MEMO_MAX) memo.delete(memo.keys().next().value!);
}

/** Scrypt runs of hashPlain at once (libuv's pool has 4 threads; each run ~16 MiB). */
const PLAIN_AT_ONCE = 4;

/**
 * Hashes for plain (user name, password) pairs, off the event loop: a pair's remembered hash
 * (knownHash), else `stored[i]` when the password verifies against it (kept: a document sent
 * again unchanged stays unchanged), else a new hash (none when `reuseOnly`: undefined). At most
 * PLAIN_AT_ONCE scrypt runs at a time.
 */
export async function hashPlain(pairs: readonly { username: string; password: string; stored?: string }[], opts: { reuseOnly?: boolean } = {}): Promise<(string | undefined)[]> {
  const out: (string | undefined)[] = new Array(pairs.length);
  let next = 0;
  const one = async (i: number): Promise<void> => {
    const { username, password, stored } = pairs[i]!;
    const known = knownHash(username, password);
    if (known !== undefined && (stored === undefined || known === stored)) {
      out[i] = known;
      return;
    }
    const parsed = stored === undefined ? null : parseHash(stored);
    if (parsed !== null && await verifyPassword(password, parsed)) {
      rememberHash(username, password, stored!);
      out[i] = stored;
      return;
    }
    if (known !== undefined) out[i] = known;
    else if (!opts.reuseOnly) {
      out[i] = await hashPasswordAsync(password);
      rememberHash(username, password, out[i]!);
    }
  };
  const worker = async (): Promise<void> => {
    while (next < pairs.length) await one(next++);
  };
  await Promise.all(Array.from({ length: Math.min(PLAIN_AT_ONCE, pairs.length) }, worker));
  return out;
}
