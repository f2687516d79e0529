/**
 * Credentials are write-only: their secrets (API keys, passwords and password hashes) are
 * never returned. A credential is shown as its id, type and the fields that name it
 * (username, subject, subject_name, fingerprint_sha256); the config export leaves the secrets out unless an admin
 * asks for them, and a config applied without a credential's secret keeps the stored one.
 * Plain basic-auth passwords are stored as scrypt hashes, whatever writes them (the resources,
 * PUT /api/config, a rollback, the seed of an empty store from the config file): hashPlainPasswords.
 */
import { hashPassword, hashPlain, knownHash } from '../plugins/basic-auth/hash.js';
import { unsendableSecret } from '../core/secret-text.js';
import { isObj, items, type Obj } from './document.js';
import { isSecretParam, mapUrlParams } from '../core/url-secrets.js';
import { canonicalJson } from './etag.js';

/** Fields that hold a secret (any credential type). */
export const SECRET_FIELDS: readonly string[] = ['key', 'key_sha256', 'password', 'password_hash', 'secret', 'client_secret', 'private_key', 'token'];
/** Fields shown when a credential is read (anything else is never returned). */
export const VISIBLE_FIELDS: readonly string[] = ['id', 'type', 'username', 'subject', 'subject_name', 'fingerprint_sha256', 'email', 'approved', 'verified', 'requested_plan', 'created_at'];

/**
 * The ids of a consumer's credentials, in order: a key-auth credential's `id`, or the
 * identifier the plugin sends upstream (`<consumer>/key-auth/<n>`, n counting that
 * consumer's key-auth credentials from 1); others `<consumer>/<type>/<username | subject |
 * subject_name>`.
 */
export function credentialIds(consumer: Obj): string[] {
  const name = String(consumer['name']);
  const count = new Map<string, number>();
  return items(consumer['credentials']).map((c) => {
    const type = String(c['type']);
    const n = (count.get(type) ?? 0) + 1;
    count.set(type, n);
    if (typeof c['id'] === 'string') return c['id'];
    const ident = [c['username'], c['subject'], c['subject_name']].find((x) => typeof x === 'string');
    return type === 'key-auth' || ident === undefined ? `${name}/${type}/${n}` : `${name}/${type}/${String(ident)}`;
  });
}

/** What GET shows of a credential. */
export function credentialView(c: Obj, id: string): Obj {
  const out: Obj = { id };
  for (const k of VISIBLE_FIELDS) if (k !== 'id' && c[k] !== undefined) out[k] = c[k];
  return out;
}

/**
 * A copy of the document whose credentials carry no secrets. A key-auth credential without an
 * `id` is exported with the one it has (`<consumer>/key-auth/<n>`): applied back with a key
 * removed, the others are still told apart (without it, positions shift and the stored keys
 * would follow the wrong entries).
 */
export function stripSecrets(doc: Obj): Obj {
  if (!Array.isArray(doc['consumers'])) return doc;
  return {
    ...doc,
    consumers: doc['consumers'].map((c) => {
      if (!isObj(c) || !Array.isArray(c['credentials'])) return c;
      const ids = credentialIds(c);
      return {
        ...c,
        credentials: c['credentials'].map((cr, i) => {
          if (!isObj(cr)) return cr;
          const out: Obj = {};
          if (cr['type'] === 'key-auth' && typeof cr['id'] !== 'string' && ids[i] !== undefined) out['id'] = ids[i];
          for (const [k, v] of Object.entries(cr)) if (!SECRET_FIELDS.includes(k)) out[k] = v;
          return out;
        }),
      };
    }),
  };
}

/**
 * In a document about to replace `old`: each credential that carries none of the secret
 * fields gets the secrets of the stored credential with the same consumer and id (an exported
 * config, applied back, keeps its keys). Mutates `next`; returns how many were filled in.
 */
export function restoreSecrets(next: Obj, old: Obj | null): number {
  const before = new Map<string, Obj>();
  for (const c of items(old?.['consumers'])) {
    const ids = credentialIds(c);
    items(c['credentials']).forEach((cr, i) => before.set(`${String(c['name'])}\0${ids[i]}`, cr));
  }
  let filled = 0;
  for (const c of items(next['consumers'])) {
    const ids = credentialIds(c);
    items(c['credentials']).forEach((cr, i) => {
      if (SECRET_FIELDS.some((k) => cr[k] !== undefined)) return;
      const prev = before.get(`${String(c['name'])}\0${ids[i]}`);
      if (!prev || prev['type'] !== cr['type']) return;
      let any = false;
      for (const k of SECRET_FIELDS) {
        if (prev[k] !== undefined) {
          cr[k] = prev[k];
          any = true;
        }
      }
      if (any) filled++;
    });
  }
  // An exported key-auth `id` that is the one the position gives anyway is left out again: an
  // export applied back unchanged changes nothing; one left after a removal keeps its identity.
  for (const c of items(next['consumers'])) {
    let n = 0;
    for (const cr of items(c['credentials'])) {
      if (cr['type'] !== 'key-auth') continue;
      n++;
      if (cr['id'] === `${String(c['name'])}/key-auth/${n}`) delete cr['id'];
    }
  }
  return filled;
}

/** A basic-auth credential's plain password, replaced by its scrypt hash (others unchanged). */
export function hashCredential(c: unknown): unknown {
  if (!isObj(c) || c['type'] !== 'basic-auth' || typeof c['password'] !== 'string' || c['password'] === '' || (c['password'] as string).length > 1024 || c['password_hash'] !== undefined) return c;
  const out: Obj = {};
  for (const [k, v] of Object.entries(c)) {
    if (k === 'password') out['password_hash'] = hashPassword(v as string);
    else out[k] = v;
  }
  return out;
}

/** At most this many plain basic-auth passwords in one admin write (each costs a scrypt run, ~250 ms of CPU). */
export const MAX_PLAIN_PASSWORDS = 256;

interface PlainAt { cr: Obj; username: string; password: string; stored?: string }

/**
 * The basic-auth credentials of `doc` holding a plain password that hashing keeps valid (a
 * `${VAR}` reference stays: each node resolves it; a value the validation refuses — empty, too
 * long, with control characters, beside a password_hash — stays for it to say so), each with
 * the password_hash stored in `old` for the same consumer and credential id.
 */
function plainPasswords(doc: Obj, old: Obj | null): PlainAt[] {
  const stored = new Map<string, string>();
  for (const c of items(old?.['consumers'])) {
    const ids = credentialIds(c);
    items(c['credentials']).forEach((cr, i) => {
      if (cr['type'] === 'basic-auth' && typeof cr['password_hash'] === 'string') stored.set(`${String(c['name'])}\0${ids[i]}`, cr['password_hash']);
    });
  }
  const out: PlainAt[] = [];
  for (const c of items(doc['consumers'])) {
    if (!Array.isArray(c['credentials'])) continue;
    const ids = credentialIds(c);
    c['credentials'].forEach((cr, i) => {
      if (!isObj(cr) || cr['type'] !== 'basic-auth' || typeof cr['username'] !== 'string' || cr['password_hash'] !== undefined) return;
      const password = cr['password'];
      if (typeof password !== 'string' || password === '' || password.length > 1024 || password.includes('${')) return;
      if (unsendableSecret(password, 'Basic credentials', { edges: false }) !== null) return;
      const prev = stored.get(`${String(c['name'])}\0${ids[i]}`);
      out.push({ cr, username: cr['username'], password, ...(prev === undefined ? {} : { stored: prev }) });
    });
  }
  return out;
}

/** `cr` with its password replaced by `hash` (in the same place). */
function putHash(cr: Obj, hash: string): void {
  const entries = Object.entries(cr);
  for (const [k] of entries) delete cr[k];
  for (const [k, v] of entries) {
    if (k === 'password') cr['password_hash'] = hash;
    else cr[k] = v;
  }
}

/** How many basic-auth credentials of `doc` hold a plain password hashPlainPasswords would hash. */
export const plainPasswordCount = (doc: Obj): number => plainPasswords(doc, null).length;

/**
 * How many scrypt runs hashPlainPasswords(doc, old) would make: its plain passwords but those
 * whose hash this process made or checked (knownHash) and that `old` holds no other hash for —
 * the plain passwords an older release left in the store, which this node compiled (hashed),
 * cost nothing.
 */
export function plainPasswordCost(doc: Obj, old: Obj | null): number {
  let n = 0;
  for (const p of plainPasswords(doc, old)) {
    const known = knownHash(p.username, p.password);
    if (known === undefined || (p.stored !== undefined && p.stored !== known)) n++;
  }
  return n;
}

/**
 * Replaces the plain basic-auth passwords of `doc` (mutated) by scrypt hashes before it is
 * stored, off the event loop (hashPlain: at most 4 scrypt runs at once): the stored hash of the
 * same credential in `old` when the password verifies against it — a document applied again
 * unchanged changes nothing — else a new one. `reuseOnly`: only reused hashes go in (the rest
 * stay plain). Returns how many were replaced.
 */
export async function hashPlainPasswords(doc: Obj, old: Obj | null, opts: { reuseOnly?: boolean } = {}): Promise<number> {
  const plain = plainPasswords(doc, old);
  if (plain.length === 0) return 0;
  const hashes = await hashPlain(plain, opts);
  let n = 0;
  plain.forEach((p, i) => {
    if (hashes[i] === undefined) return;
    putHash(p.cr, hashes[i]!);
    n++;
  });
  return n;
}

/**
 * hashPlainPasswords without scrypt: only the pairs whose stored hash in `old` this process
 * made or verified already (knownHash). For a synchronous comparison with the store.
 */
export function withKnownHashes(doc: Obj, old: Obj | null): Obj {
  const copy = structuredClone(doc);
  for (const p of plainPasswords(copy, old)) {
    if (p.stored !== undefined && knownHash(p.username, p.password) === p.stored) putHash(p.cr, p.stored);
  }
  return copy;
}

/**
 * hashCredential on libuv's thread pool (the admin API's credential and consumer writes: a
 * scryptSync there held the event loop ~250 ms a password); a pair this process hashed before
 * gets that hash again (hashPlain).
 */
export async function hashCredentialAsync(c: unknown): Promise<unknown> {
  if (!isObj(c) || c['type'] !== 'basic-auth' || typeof c['password'] !== 'string' || c['password'] === '' || (c['password'] as string).length > 1024 || c['password_hash'] !== undefined) return c;
  const [hash] = await hashPlain([{ username: typeof c['username'] === 'string' ? c['username'] : '', password: c['password'] as string }]);
  const out: Obj = {};
  for (const [k, v] of Object.entries(c)) {
    if (k === 'password') out['password_hash'] = hash!;
    else out[k] = v;
  }
  return out;
}

/** Whether a string occurs as a secret anywhere in the document's credentials (tests). */
export function secretValues(doc: Obj): string[] {
  const out: string[] = [];
  for (const c of items(doc['consumers'])) for (const cr of items(c['credentials'])) for (const k of SECRET_FIELDS) if (typeof cr[k] === 'string') out.push(cr[k] as string);
  return out;
}

/** Outside credentials: fields of plugin configs and scaling triggers that hold secrets. */
export const CONFIG_SECRET_FIELDS: readonly string[] = ['secret', 'client_secret', 'password', 'private_key', 'token', 'api_key', 'hmac_secret', 'secret_key', 'bearer'];
/** Header names whose values are credentials wherever a config sets them (transform and compose `headers`). */
const SECRET_HEADER_KEYS = new Set(['authorization', 'proxy-authorization', 'x-api-key', 'apikey', 'api-key', 'x-auth-token', 'cookie']);

/** Whether a config key holds a secret value (a field name above, or a credential header, any case). */
export function isSecretKey(k: string): boolean {
  return CONFIG_SECRET_FIELDS.includes(k) || SECRET_HEADER_KEYS.has(k.toLowerCase());
}

/**
 * Keys whose object maps header or query parameter names to values: a route's `headers` (values
 * it must match), a transform's `headers` / `query` (`set`, `add`, `append`), a composition
 * step's `headers` / `query`. Below them a name is judged as a URL's query parameter is
 * (isSecretParam: `pass`, `pwd`, `secret`, `token`, `key`), or holding `auth` or `cookie`:
 * `X-Access-Token`, `Private-Token`, `?access_token=` set upstream are credentials as much as
 * `Authorization` is. (`rename` maps names to names: nothing secret.)
 */
const NAME_MAPS = new Set(['headers', 'query']);
const SECRET_NAME = /pass|pwd|secret|token|key|auth|cookie/i;

/** Whether the maps below `k` name fields (in a name map, or becoming one). */
const namesBelow = (k: string, inNames: boolean): boolean => NAME_MAPS.has(k) || (inNames && k !== 'rename');

/** Whether `k` (in a name map when `inNames`) holds a secret value. */
const secretAt = (k: string, inNames: boolean): boolean => isSecretKey(k) || (inNames && SECRET_NAME.test(k));

const isStrings = (x: unknown): x is string[] => Array.isArray(x) && x.length > 0 && x.every((s) => typeof s === 'string');
/** What a read shows in place of such a secret; written back, it keeps the stored value. */
export const MASK = '(secret)';

const isRef = (v: string) => /^\$\{[^}]+\}$/.test(v.trim());

/** A URL's password (scheme://user:PASSWORD@host...). */
const URL_PASSWORD = /^([a-z][a-z0-9+.-]*:\/\/[^/?#@:]*:)([^/?#@]*)@/i;

const isUrl = (x: string) => /^[a-z][a-z0-9+.-]*:\/\//i.test(x);

/**
 * A URL with its password and the values of its secret-named query parameters (`?api_key=`,
 * `?token=`, `?password=`...: isSecretParam) reading MASK, `${VAR}` references left as they
 * are; other strings unchanged.
 */
function maskUrl(x: string): string {
  if (!isUrl(x)) return x;
  const m = URL_PASSWORD.exec(x);
  const out = m && m[2] !== '' && !isRef(m[2]!) ? `${m[1]}${MASK}@${x.slice(m[0].length)}` : x;
  return mapUrlParams(out, (name, value) => (value !== '' && !isRef(value) && isSecretParam(name) ? MASK : null));
}

/** The value of parameter `name` in a URL (its first, as mapUrlParams reads it), or undefined. */
function paramOf(url: string, name: string): string | undefined {
  let found: string | undefined;
  mapUrlParams(url, (n, v) => {
    if (found === undefined && n === name) found = v;
    return null;
  });
  return found;
}

/** A URL's scheme, user name and host[:port], lower case (its password left out), or null. */
const ORIGIN = /^([a-z][a-z0-9+.-]*:\/\/)(?:([^/?#@:]*)(?::[^/?#@]*)?@)?([^/?#]*)/i;
function originOf(url: string): string | null {
  const m = ORIGIN.exec(url);
  return m ? `${m[1]!.toLowerCase()}${m[2] ?? ''}@${m[3]!.toLowerCase()}` : null;
}

/**
 * A URL whose password or secret parameters read MASK gets the stored URL's back (null: one has
 * none stored, or it is another server's: a URL whose scheme, user or host changed beside a
 * MASK must give its secrets, else the stored password would go to the new host).
 */
function restoreUrl(x: string, old: unknown): string | null {
  if (!isUrl(x) || !x.includes(MASK)) return x;
  const stored = typeof old === 'string' ? old : '';
  if (originOf(x) === null || originOf(x) !== originOf(stored)) return null;
  let out = x;
  const m = URL_PASSWORD.exec(x);
  if (m && m[2] === MASK) {
    const o = URL_PASSWORD.exec(stored);
    if (!o) return null;
    out = `${m[1]}${o[2]}@${x.slice(m[0].length)}`;
  }
  let missing = false;
  out = mapUrlParams(out, (name, value) => {
    if (value !== MASK) return null;
    const v = paramOf(stored, name);
    if (v === undefined || v === MASK) {
      missing = true;
      return null;
    }
    return v;
  });
  return missing ? null : out;
}

/**
 * A deep copy where every secret-named string (not a `${VAR}` reference) or number reads MASK,
 * and so does the password of a URL. (Consumers' credentials come here stripped: stripSecrets.
 * An object named `credentials` inside a plugin config — a JSON body set upstream — is masked
 * like any other.)
 */
export function maskSecrets<T>(v: T, inNames = false): T {
  if (typeof v === 'string') return maskUrl(v) as T;
  if (Array.isArray(v)) return v.map((x) => maskSecrets(x)) as T;
  if (!isObj(v)) return v;
  const out: Obj = {};
  for (const [k, x] of Object.entries(v)) {
    const secret = secretAt(k, inNames);
    if (secret && ((typeof x === 'string' && x !== '' && !isRef(x)) || typeof x === 'number')) out[k] = MASK;
    // (a header a route matches on may list several values: all of them read as one MASK)
    else if (secret && inNames && isStrings(x) && !x.every(isRef)) out[k] = MASK;
    else out[k] = maskSecrets(x, namesBelow(k, inNames));
  }
  return out as T;
}

/**
 * The counterpart of an array item in the stored array: same name (and consumer / type); an
 * item without a name (a scaling trigger, an upstream target), the stored one whose read
 * (masked) agrees with it on the most fields besides its masks (the same index on a tie), so
 * that removing or moving one does not hand its neighbour's secrets to the next; else the same
 * index.
 */
function counterpart(item: unknown, i: number, old: unknown[]): unknown {
  if (isObj(item) && typeof item['name'] === 'string') {
    const same = old.find((o) => isObj(o) && o['name'] === item['name'] && o['consumer'] === item['consumer'] && o['type'] === item['type']);
    if (same !== undefined) return same;
  }
  // (only a MASK below the item takes anything from its counterpart: without one, no search)
  if (!isObj(item) || !JSON.stringify(item).includes(MASK)) return old[i];
  let best = old[i];
  let bestScore = 0;
  old.forEach((o, j) => {
    if (!isObj(o)) return;
    const read = maskSecrets(o);
    let score = 0;
    for (const [k, v] of Object.entries(item)) if (v !== MASK && k in read && canonicalJson(read[k]) === canonicalJson(v)) score++;
    if (score > bestScore || (score === bestScore && score > 0 && j === i)) {
      best = o;
      bestScore = score;
    }
  });
  return best;
}

/** The stored string an array's string item stands for: the one it is the read of (moved), else the same index. */
function counterpartString(x: string, i: number, old: unknown[]): unknown {
  if (!x.includes(MASK) || (typeof old[i] === 'string' && maskUrl(old[i] as string) === x)) return old[i];
  return old.find((o) => typeof o === 'string' && maskUrl(o) === x) ?? old[i];
}

/**
 * Puts the stored secrets back where a write sent MASK (an edited read, applied back). Mutates
 * `next`; returns the paths where MASK had nothing stored to stand for (the write is refused).
 */
export function restoreMasked(next: unknown, old: unknown, path = '', inNames = false): string[] {
  const missing: string[] = [];
  if (Array.isArray(next)) {
    const o = Array.isArray(old) ? old : [];
    next.forEach((x, i) => {
      if (typeof x === 'string') {
        const r = restoreUrl(x, counterpartString(x, i, o));
        if (r === null) missing.push(`${path}[${i}]`);
        else next[i] = r;
      } else missing.push(...restoreMasked(x, counterpart(x, i, o), `${path}[${i}]`));
    });
  } else if (isObj(next)) {
    const o = isObj(old) ? old : {};
    for (const [k, x] of Object.entries(next)) {
      if (x === MASK && secretAt(k, inNames)) {
        if (typeof o[k] === 'string' || typeof o[k] === 'number') next[k] = o[k];
        else if (inNames && isStrings(o[k])) next[k] = [...(o[k] as string[])];
        else missing.push(`${path ? `${path}.` : ''}${k}`);
      } else if (typeof x === 'string') {
        const r = restoreUrl(x, o[k]);
        if (r === null) missing.push(`${path ? `${path}.` : ''}${k}`);
        else next[k] = r;
      } else missing.push(...restoreMasked(x, o[k], `${path ? `${path}.` : ''}${k}`, namesBelow(k, inNames)));
    }
  }
  return missing;
}
