/**
 * jwt: bearer tokens from a third-party identity provider (OIDC discovery or a JWKS URL).
 * Checked: signature with the IdP's current keys (asymmetric algorithms only), iss, aud, exp,
 * nbf/iat with a clock skew, required claims and scopes. A verified token is remembered (keyed
 * by its SHA-256, bounded) until it expires, so a caller pays for the signature once; all are
 * forgotten when the IdP stops publishing a key (a revoked key passes no token). The
 * consumer comes from `consumer_claim`: a consumer of that name, or one whose jwt credential
 * has it as `subject`; otherwise the claim value is the identity (unless require_consumer).
 */
import { jwtVerify, errors as joseErrors, type JWTPayload, type JWTVerifyResult } from 'jose';
import { definePlugin, type AuthOutcome, type Consumer, type RequestCtx } from '../types.js';
import { BAD_BEARER, TtlCache, badBearer, bearerToken, boundTokenProblem, queryHasAccessToken, scopesOf, sha256b64, subjectIndex, subjectPerIssuer, twoTokenMethods } from '../auth-common.js';
import { deadlineProblem, parseDuration } from '../../config/units.js';
import { redactUrl } from '../../core/url-secrets.js';
import { ASYMMETRIC_ALGS, JwtConfig, JwtCredential } from './schema.js';
import { acquireKeySource, releaseKeySource } from './keys.js';

type Ok = Extract<AuthOutcome, { ok: true }>;

/** A `typ` (or media type) compared as RFC 7515 §4.1.9 says: no case, `application/` optional. */
const mediaTypeOf = (t: string): string => {
  const l = t.toLowerCase();
  return l.startsWith('application/') ? l.slice(12) : l;
};
/**
 * Whether a token's claims say it is no access token, though signed with the same key and
 * typed JWT in its header: Keycloak's `typ` claim (ID, Refresh, Offline, Logout), AWS Cognito's
 * and Ory Hydra's `token_use` (id, refresh_token). An ID token (whose aud is a client, often also
 * the API's audience) would otherwise pass as a bearer token.
 */
function notAnAccessToken(p: JWTPayload): boolean {
  const { typ, token_use: use } = p;
  return (typeof typ === 'string' && /^(?:id|refresh|offline|logout)$/i.test(typ))
    || (typeof use === 'string' && /^(?:id|refresh(?:[_-]?token)?)$/i.test(use));
}

/** The `typ` values accepted when `token_types` is not set (besides none at all). */
const DEFAULT_TOKEN_TYPES = ['jwt', 'at+jwt'];

function claimMatches(actual: unknown, wanted: string | number | boolean | (string | number)[]): boolean {
  const options = Array.isArray(wanted) ? wanted : [wanted];
  if (Array.isArray(actual)) return actual.some((a) => options.includes(a as never));
  return options.includes(actual as never);
}

/**
 * The shortest jwks_cooldown: the most often (per IdP, per process) a flood of tokens with
 * made-up kids makes the gateway fetch the keys, 10 a second, and background refreshes
 * (jwks_refresh) are no more frequent either.
 */
const MIN_JWKS_COOLDOWN_MS = 100;

/** Methods that change nothing (RFC 9110 §9.2.1): a cross-site one may carry the token cookie. */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

/**
 * Whether a browser sent this request from another site with a method that may change state:
 * Sec-Fetch-Site other than same-origin or none (a user's own navigation); without it (older
 * browsers), an Origin that is not this host (`null` included). Neither: no browser said so
 * (curl, a server-side client), not refused.
 */
function crossSite(ctx: RequestCtx): boolean {
  if (SAFE_METHODS.has(ctx.method)) return false;
  const site = ctx.header('sec-fetch-site');
  if (site !== undefined) return site !== 'same-origin' && site !== 'none';
  const origin = ctx.header('origin');
  if (origin === undefined) return false;
  const host = ctx.header('host');
  if (host === undefined || origin === 'null') return true;
  try {
    // (ports compared with the origin scheme's default filled in: Host may name :443 or not)
    const o = new URL(origin);
    const h = new URL(`${o.protocol}//${host}`);
    return o.hostname !== h.hostname || o.port !== h.port;
  } catch {
    return true;
  }
}

/** The longest clock_skew: the leeway clocks need (Kerberos and .NET allow 5 minutes), never a token's lifetime again. */
const MAX_CLOCK_SKEW_MS = 5 * 60_000;

export default definePlugin({
  name: 'jwt',
  priority: 1450,
  description: 'JWT bearer tokens from an OIDC / OAuth2 identity provider, verified with its published keys.',
  schema: JwtConfig,
  credential: JwtCredential,
  scopes: ['global', 'service', 'route'],
  // A subject is one consumer's for an issuer; one without issuer stands for every issuer.
  prepareCredentials: subjectPerIssuer,
  check(config) {
    const out: (string | { path: string[]; message: string })[] = [];
    if (!config.issuer && !config.jwks_url) out.push('give issuer (OIDC discovery) or jwks_url');
    // (the discovery and JWKS fetches' deadline: 0 or 30d aborted each fetch at once, and every token was refused)
    const bad = config.timeout !== undefined ? deadlineProblem(config.timeout) : null;
    if (bad !== null) out.push({ path: ['timeout'], message: bad });
    // (a typo, 100d for 100s, accepted every token for 100 days past its exp)
    if (config.clock_skew !== undefined && parseDuration(config.clock_skew) > MAX_CLOCK_SKEW_MS) {
      out.push({ path: ['clock_skew'], message: 'must be at most 5m (a token is accepted that long past its exp; clocks synced by NTP are within a second, Envoy\'s default is 60s)' });
    }
    // (0 let every request with a made-up kid fetch the JWKS: a client sending random kids
    // turned the gateway into a flood of the IdP, one fetch after the other)
    if (config.jwks_cooldown !== undefined && parseDuration(config.jwks_cooldown) < MIN_JWKS_COOLDOWN_MS) {
      out.push({ path: ['jwks_cooldown'], message: `must be at least ${MIN_JWKS_COOLDOWN_MS}ms (an unknown kid, which any client can send, fetches the keys at most once per jwks_cooldown; default 10s)` });
    }
    return out;
  },
  create(config, deps) {
    const realm = 'Bearer realm="turnpike"';
    if (!config.issuer && !config.issuers_allowed && !config.audiences) {
      // Legal (Envoy and KrakenD allow it too), but with keys shared by many tenants or apps
      // (a multi-tenant IdP) any of their tokens would do (RFC 8725 §3.8-3.9).
      deps.log.warn({ plugin: 'jwt', where: deps.where, jwks_url: config.jwks_url === undefined ? undefined : redactUrl(config.jwks_url) }, 'jwt: neither issuer nor audiences is set: any token signed by these keys is accepted');
    } else if (!config.audiences) {
      // An IdP issues tokens for all its APIs (resource servers): without an audience a token
      // another API of it was given (and may have leaked) is accepted here (RFC 8725 §3.9).
      deps.log.warn({ plugin: 'jwt', where: deps.where, issuer: config.issuer ?? config.issuers_allowed }, 'jwt: audiences is not set: a token this issuer minted for any of its APIs is accepted (set audiences to this API\'s identifier)');
    }
    const keys = acquireKeySource({
      issuer: config.issuer,
      jwksUrl: config.jwks_url,
      refreshMs: parseDuration(config.jwks_refresh ?? '10m'),
      cooldownMs: parseDuration(config.jwks_cooldown ?? '10s'),
      timeoutMs: parseDuration(config.timeout ?? '5s'),
    }, deps.log);
    const bySubject = subjectIndex(deps.credentials);
    const skewS = Math.ceil(parseDuration(config.clock_skew ?? '30s') / 1000);
    const claimName = config.consumer_claim ?? 'sub';
    const required = [...new Set(['exp', ...(config.required_claims ?? [])])];
    const issuers = [...(config.issuer === undefined ? [] : [config.issuer]), ...(config.issuers_allowed ?? [])];
    const verifyOptions = {
      issuer: issuers.length === 0 ? undefined : issuers,
      audience: config.audiences,
      algorithms: config.algorithms ?? [...ASYMMETRIC_ALGS],
      clockTolerance: skewS,
      requiredClaims: required,
    };
    const types = new Set((config.token_types ?? DEFAULT_TOKEN_TYPES).map(mediaTypeOf));
    const typeRequired = config.token_types !== undefined;
    const cache = config.cache === false ? null : new TtlCache<Ok>(config.cache_size ?? 10_000);
    /** keys.removals when the cache was last valid: a key gone from the IdP's set empties it. */
    let removalsSeen = keys.removals;
    const wantScopes = config.scopes ?? [];
    const wantClaims = Object.entries(config.claims ?? {});
    const cookieRe = config.cookie ? new RegExp(`(?:^|;\\s*)${config.cookie.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}=([^;]*)`) : null;
    const crossSiteCheck = cookieRe !== null && config.cookie_cross_site !== 'allow';
    const invalid = (detail: string): AuthOutcome => ({ ok: false, missing: false, challenge: `${realm}, error="invalid_token"`, detail });

    /** Everything after the signature: scopes, claims, consumer. */
    const judge = (payload: JWTPayload): AuthOutcome => {
      const scopes = scopesOf(payload);
      const lacking = wantScopes.filter((s) => !scopes.includes(s));
      if (lacking.length) {
        return { ok: false, missing: false, status: 403, challenge: `${realm}, error="insufficient_scope", scope="${wantScopes.join(' ')}"`, detail: `the token lacks the scope ${lacking.join(', ')}` };
      }
      for (const [name, want] of wantClaims) {
        if (!claimMatches(payload[name], want)) return { ok: false, missing: false, status: 403, challenge: `${realm}, error="insufficient_scope"`, detail: `the token's ${name} claim does not allow this request` };
      }
      const claim = payload[claimName];
      const value = typeof claim === 'string' || typeof claim === 'number' ? String(claim) : null;
      if (value === null) return invalid(`the token has no ${claimName} claim`);
      // By a jwt credential's subject; by name only a consumer that declares no credentials
      // (a token whose sub is "admin" does not stand for a consumer that has its own keys).
      const byName = deps.consumers.get(value);
      const consumer = bySubject(value, typeof payload.iss === 'string' ? payload.iss : undefined)
        ?? (byName !== undefined && !deps.credentialed.has(byName) ? byName : null);
      if (consumer === null && config.require_consumer) return invalid('the token is not for a known consumer');
      return { ok: true, consumer, identity: consumer?.name ?? value, credential: `jwt:${value}`, scopes, claims: payload as Record<string, unknown> };
    };

    /**
     * jose's jwtVerify with the IdP's keys. A token without kid, when the IdP publishes several
     * keys of its type (both halves of a rotation), is tried with each of them (as jose's docs
     * and Envoy's jwt_authn do): the first whose signature holds decides.
     */
    const jwtVerifyAny = async (token: string): Promise<JWTVerifyResult> => {
      try {
        return await jwtVerify(token, keys.getKey, verifyOptions);
      } catch (err) {
        if ((err as { code?: string }).code !== 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') throw err;
        for await (const key of err as joseErrors.JWKSMultipleMatchingKeys) {
          try {
            return await jwtVerify(token, key, verifyOptions);
          } catch (inner) {
            if ((inner as { code?: string }).code !== 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') throw inner;
          }
        }
        throw new joseErrors.JWSSignatureVerificationFailed();
      }
    };

    const verify = async (token: string): Promise<AuthOutcome> => {
      // Compact serialization is base64url without padding (RFC 7515 §2, §7.1): jose would take a
      // signature with '=' after it, a second spelling of the same token.
      if (token.includes('=')) return invalid('the token is not valid');
      let payload: JWTPayload;
      let typ: unknown;
      try {
        ({ payload, protectedHeader: { typ } } = await jwtVerifyAny(token));
      } catch (err) {
        if (err instanceof joseErrors.JWTExpired) return invalid('the token has expired');
        if ((err as { code?: string }).code === 'TURNPIKE_NO_KEYS') return { ok: false, missing: false, status: 503, challenge: realm, detail: 'the token cannot be verified now (the identity provider\'s keys are unavailable)' };
        return invalid('the token is not valid');
      }
      // Explicit typing: an ID-provider-signed token of another kind (logout+jwt, secevent+jwt...)
      // is not an access token, however valid its signature (RFC 8725 §3.11).
      if (typ === undefined ? typeRequired : typeof typ !== 'string' || !types.has(mediaTypeOf(typ))) return invalid('the token is not an access token of an accepted type');
      if (notAnAccessToken(payload)) return invalid('the token is not an access token (an ID, refresh or logout token)');
      // jose checks iat only with maxTokenAge: a token issued in the future is refused here.
      if (typeof payload.iat === 'number' && payload.iat > Date.now() / 1000 + skewS) return invalid('the token was issued in the future');
      return judge(payload);
    };
    /** A sender-constrained token (cnf): judged per request, the connection is part of it. */
    const done = (ctx: RequestCtx, outcome: AuthOutcome): AuthOutcome => {
      if (outcome.ok && outcome.claims?.['cnf'] !== undefined) {
        const problem = boundTokenProblem(outcome.claims['cnf'], ctx);
        if (problem !== null) return invalid(problem);
      }
      return outcome;
    };
    /**
     * hide_credentials: a Bearer header and the token's cookie never reach the upstream, whatever
     * becomes of the token: one refused goes on with the anonymous consumer when there is one,
     * and another auth plugin of the route may let the request in before this one looks (any-of).
     * Taken out before authentication (the check reads the client's request); another scheme's
     * Authorization stays, and so do the other cookies.
     */
    const hide = (ctx: RequestCtx): void => {
      const h = ctx.header('authorization');
      if (h !== undefined && /^Bearer(?:[ \t]|$)/i.test(h)) ctx.removeUpstreamHeader('authorization');
      const cookies = cookieRe === null ? undefined : ctx.header('cookie');
      if (cookies === undefined || !cookieRe!.test(cookies)) return;
      const name = config.cookie!;
      ctx.editUpstreamHeaders((list) => {
        for (let i = list.length - 2; i >= 0; i -= 2) {
          if (list[i]!.toLowerCase() !== 'cookie') continue;
          const rest = list[i + 1]!.split(';').map((c) => c.trim()).filter((c) => c !== '' && c.split('=', 1)[0] !== name).join('; ');
          if (rest === '') list.splice(i, 2);
          else list[i + 1] = rest;
        }
      });
    };

    return {
      onRequest: config.hide_credentials ? hide : undefined,
      authenticate(ctx) {
        const bearer = bearerToken(ctx.header('authorization'));
        if (bearer === BAD_BEARER) return badBearer(realm);
        if (bearer !== null && queryHasAccessToken(ctx.query)) return twoTokenMethods(realm);
        let token = bearer;
        if (cookieRe !== null) {
          const cookies = ctx.header('cookie');
          const m = cookies === undefined ? null : cookieRe.exec(cookies);
          if (m && m[1]) {
            // A Bearer header and the cookie with another token: one would be checked and the
            // upstream, which may read the cookie, could take the other (as with access_token).
            if (token !== null && m[1] !== token) return badBearer(realm, `the access token was sent both in the Authorization header and, another one, in the ${config.cookie} cookie (one token per request)`, true);
            // The cookie twice: one token would be checked, and the upstream could read the
            // other (frameworks take the first or the last).
            if (cookieRe.test(cookies!.slice(m.index + m[0].length))) return invalid(`more than one ${config.cookie} cookie`);
            // The cookie's token beside an access_token parameter, which is never checked.
            if (token === null && queryHasAccessToken(ctx.query)) return badBearer(realm, `the access token was sent both in the ${config.cookie} cookie and as the access_token query parameter (one token per request)`, true);
            // A cookie goes with a browser's cross-site requests too (CSRF): a state-changing one
            // from another site is refused (Fetch Metadata, else Origin: OWASP's CSRF guidance).
            if (token === null && crossSiteCheck && crossSite(ctx)) {
              return { ok: false, missing: false, status: 403, challenge: realm, detail: `a token from the ${config.cookie} cookie is not accepted on a cross-site ${ctx.method} request (send it in the Authorization header)`, anonymous: false };
            }
            token = m[1];
          }
        }
        if (token === null) return { ok: false, missing: true, challenge: realm };
        let key = '';
        const removals = keys.removals;
        if (cache !== null) {
          if (removals !== removalsSeen) {
            cache.clear();
            removalsSeen = removals;
          }
          key = sha256b64(token);
          const now = Date.now();
          const hit = cache.get(key, now);
          // A token verified before: answered at once (no promise on the request path); the
          // keys are refreshed when due all the same (a key gone empties the cache).
          if (hit !== undefined) {
            keys.refreshIfDue(now);
            return done(ctx, hit);
          }
        }
        return verify(token).then((outcome) => {
          // Not cached when a key went away meanwhile (it may have been verified with that one).
          if (outcome.ok && cache !== null && keys.removals === removals && typeof outcome.claims?.['exp'] === 'number') cache.set(key, outcome, (outcome.claims['exp'] as number) * 1000);
          return done(ctx, outcome);
        });
      },
      close() {
        releaseKeySource(keys);
      },
    };
  },
});
