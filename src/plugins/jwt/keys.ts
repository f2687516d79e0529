/**
 * Signing keys of an identity provider: found by OIDC discovery (or a JWKS URL), fetched once,
 * refreshed in the background every `refreshMs`, re-fetched at once for an unknown `kid` (at
 * most once per `cooldownMs`), and kept when the IdP is down (a failed refresh logs and serves
 * the keys it has). Requests that come while a fetch is under way wait for it (the first one
 * too). An unknown `kid` that cannot be checked because the keys could not be refreshed is
 * TURNPIKE_NO_KEYS (503), not a bad token. Shared by every binding and snapshot that names the
 * same IdP.
 */
import { X509Certificate } from 'node:crypto';
import { createLocalJWKSet, type JSONWebKeySet, type JWTVerifyGetKey, type JWSHeaderParameters, type FlattenedJWSInput } from 'jose';
import { fetchJson } from '../http-fetch.js';
import { maskUrlSecrets, redactUrl } from '../../core/url-secrets.js';
import type { Logger } from '../../core/log.js';

export interface KeySourceOptions {
  issuer: string | undefined;
  jwksUrl: string | undefined;
  refreshMs: number;
  cooldownMs: number;
  timeoutMs: number;
}

export class KeySource {
  private jwksUrl: string | undefined;
  private local: ReturnType<typeof createLocalJWKSet> | null = null;
  /**
   * The published keys that have no kid (RFC 7517 §4.5: optional), null when every key has one:
   * a token's kid cannot name them, so a token whose kid is in no key is tried with these (as
   * Envoy's jwt_authn matches a kid-less JWK with any token kid).
   */
  private noKid: ReturnType<typeof createLocalJWKSet> | null = null;
  private fetchedAt = 0;
  private attemptAt = 0;
  private loading: Promise<void> | null = null;
  /** Whether the last fetch failed (the key set in hand may be out of date). */
  private failed = false;
  /** The keys in hand (their JSON), to tell when the IdP stopped publishing one. */
  private published = new Set<string>();
  /**
   * Counts the fetches that found a key gone from the set: a key the IdP no longer publishes
   * (how a compromised key is revoked) must not keep passing the tokens verified with it, so
   * the plugins drop their verified-token caches when this changes.
   */
  removals = 0;
  refs = 0;
  /** Fetches made (discovery + JWKS), for tests and /status. */
  fetches = 0;

  constructor(private readonly o: KeySourceOptions, private readonly log: Logger) {
    this.jwksUrl = o.jwksUrl;
  }

  /** jose's key lookup: (protected header, token) -> key. */
  readonly getKey: JWTVerifyGetKey = async (header: JWSHeaderParameters, token: FlattenedJWSInput) => {
    const now = Date.now();
    if (this.local === null) {
      // No keys yet: wait for the fetch under way, or fetch (retrying a failed start at most once a second).
      if (this.loading !== null) await this.loading;
      else if (now - this.attemptAt >= Math.min(1000, this.o.cooldownMs)) await this.load();
      if (this.local === null) throw noKeys();
    } else if (now - this.fetchedAt >= this.o.refreshMs && now - this.attemptAt >= this.o.cooldownMs) {
      void this.load(); // in the background: the keys in hand serve meanwhile
    }
    try {
      return await this.local!(header, token);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ERR_JWKS_NO_MATCHING_KEY') throw err;
      // A kid that no key has, and keys without one: those (no fetch: such an IdP's kid names nothing).
      if (this.noKid !== null && typeof header.kid === 'string') {
        try {
          return await this.noKid({ ...header, kid: undefined }, { ...token, header: undefined });
        } catch (inner) {
          if ((inner as { code?: string }).code !== 'ERR_JWKS_NO_MATCHING_KEY') throw inner;
        }
      }
      // An unknown kid: a fetch under way may bring it; else fetch now unless one was made
      // within the cooldown (a flood of made-up kids costs the IdP one fetch per cooldown).
      // One round at most: the wait is bounded by one fetch.
      if (this.loading !== null) await this.loading;
      else if (Date.now() - this.attemptAt >= this.o.cooldownMs) await this.load();
      else if (!this.failed) throw err;
      // Keys that could not be refreshed cannot tell whether the kid is the IdP's: a 503, not
      // invalid_token (a client throws a token refused with 401 away).
      if (this.failed) throw noKeys();
      return await this.local!(header, token);
    }
  };

  /**
   * A background fetch when one is due (for requests answered from a verified-token cache,
   * which never ask for a key: the set must still be refreshed, or a key the IdP stopped
   * publishing would keep passing its cached tokens).
   */
  refreshIfDue(now: number): void {
    if (this.local !== null && this.loading === null && now - this.fetchedAt >= this.o.refreshMs && now - this.attemptAt >= this.o.cooldownMs) void this.load();
  }

  /** One fetch at a time; failures keep the keys in hand. */
  load(): Promise<void> {
    this.loading ??= (async () => {
      this.attemptAt = Date.now();
      try {
        if (this.jwksUrl === undefined) this.jwksUrl = await this.discover();
        this.fetches++;
        const { status, json } = await fetchJson(this.jwksUrl, { timeoutMs: this.o.timeoutMs });
        const keys = (json as { keys?: unknown } | null)?.keys;
        if (status !== 200 || !Array.isArray(keys)) throw new Error(`JWKS ${this.jwksUrl} answered ${status} without a key set`);
        // An IdP glitch, not a rotation (a rotation publishes the new key first): the keys in
        // hand stay rather than every token being refused until the next fetch.
        if (keys.length === 0 && this.local !== null) throw new Error(`JWKS ${this.jwksUrl} answered an empty key set (the keys in hand are kept)`);
        this.local = createLocalJWKSet({ keys: keys.map(withKeyFromX5c) } as JSONWebKeySet);
        const kidless = (keys as unknown[]).filter((k) => (k as { kid?: unknown }).kid === undefined) as JSONWebKeySet['keys'];
        this.noKid = kidless.length > 0 ? createLocalJWKSet({ keys: kidless.map(withKeyFromX5c) } as JSONWebKeySet) : null;
        const published = new Set(keys.map((k) => JSON.stringify(k)));
        for (const k of this.published) {
          if (!published.has(k)) {
            this.removals++;
            break;
          }
        }
        this.published = published;
        this.fetchedAt = Date.now();
        this.failed = false;
      } catch (err) {
        this.failed = true;
        this.log.warn({ issuer: this.o.issuer, jwks: this.jwksUrl === undefined ? undefined : redactUrl(this.jwksUrl), err: maskUrlSecrets((err as Error).message), keys_in_hand: this.local !== null }, 'fetching signing keys failed');
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  private async discover(): Promise<string> {
    const issuer = this.o.issuer!;
    this.fetches++;
    const url = `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
    const { status, json } = await fetchJson(url, { timeoutMs: this.o.timeoutMs });
    const doc = json as { issuer?: unknown; jwks_uri?: unknown } | null;
    if (status !== 200 || doc === null) throw new Error(`discovery ${url} answered ${status}`);
    // OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
    if (doc.issuer !== issuer) throw new Error(`discovery document is for issuer ${JSON.stringify(doc.issuer)}, not ${issuer}`);
    if (typeof doc.jwks_uri !== 'string' || !/^https?:\/\//.test(doc.jwks_uri)) throw new Error('discovery document has no jwks_uri');
    return doc.jwks_uri;
  }
}

/**
 * A JWK that carries its key only as a certificate (x5c, RFC 7517 §4.7: "the key in the first
 * certificate MUST match the public key represented by other members", which some IdPs leave
 * out): the key's members taken from that certificate. Anything else as it is.
 */
function withKeyFromX5c(k: unknown): unknown {
  const j = k as Record<string, unknown> | null;
  if (j === null || typeof j !== 'object' || !Array.isArray(j['x5c']) || typeof j['x5c'][0] !== 'string') return k;
  if (j['n'] !== undefined || j['x'] !== undefined) return k;
  try {
    const pub = new X509Certificate(Buffer.from(j['x5c'][0], 'base64')).publicKey.export({ format: 'jwk' });
    return j['kty'] === undefined || j['kty'] === pub.kty ? { ...j, ...pub } : k;
  } catch {
    return k;
  }
}

const noKeys = () => Object.assign(new Error('the signing keys are not available'), { code: 'TURNPIKE_NO_KEYS' });

const sources = new Map<string, KeySource>();

/** The shared key source for an IdP (release() it when done). */
export function acquireKeySource(o: KeySourceOptions, log: Logger): KeySource {
  const key = JSON.stringify(o);
  let s = sources.get(key);
  if (!s) sources.set(key, (s = new KeySource(o, log)));
  s.refs++;
  return s;
}

export function releaseKeySource(s: KeySource): void {
  if (--s.refs <= 0) for (const [k, v] of sources) if (v === s) sources.delete(k);
}
