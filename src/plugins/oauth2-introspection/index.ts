/**
 * oauth2-introspection (RFC 7662): opaque bearer tokens checked at the IdP's introspection
 * endpoint, authenticated as the gateway's client. Answers are cached by the token's SHA-256:
 * active ones until min(cache_ttl, exp), inactive ones for negative_cache_ttl; concurrent
 * requests with one token share one call. `active: false` (or a token the IdP does not know,
 * or a 400 whose OAuth error is about the token) is a 401; an IdP that does not answer, fails
 * or refuses the gateway's client is a 503 saying the token cannot be checked now: reused for
 * that token for FAILURE_BACKOFF_MS, and after PAUSE_AFTER calls in a row that got no answer
 * no call is made for a while (requests do not each wait a timeout for a down IdP).
 */
import { definePlugin, type AuthOutcome, type Consumer } from '../types.js';
import { BAD_BEARER, TtlCache, badBearer, bearerToken, boundTokenProblem, scopesOf, queryHasAccessToken, sha256, subjectIndex, subjectPerIssuer, twoTokenMethods } from '../auth-common.js';
import { fetchJson } from '../http-fetch.js';
import { deadlineProblem, parseDuration } from '../../config/units.js';
import { unsendableSecret } from '../../core/secret-text.js';
import { redactUrl } from '../../core/url-secrets.js';
import { IntrospectionConfig, IntrospectionCredential } from './schema.js';

const REALM = 'Bearer realm="turnpike"';
const invalid = (detail: string): AuthOutcome => ({ ok: false, missing: false, challenge: `${REALM}, error="invalid_token"`, detail });
/** The endpoint could not judge the token: 503, not invalid_token (see AuthOutcome). */
const unavailable = (detail: string): AuthOutcome => ({ ok: false, missing: false, status: 503, challenge: REALM, detail });
/** Tolerance for an `nbf` a little ahead of this clock. */
const NBF_SKEW_MS = 30_000;
/** A failed call's 503 is reused for that token this long before the IdP is asked again. */
const FAILURE_BACKOFF_MS = 1000;
/**
 * After this many calls in a row without an answer (refused, reset, timed out), none is made for
 * PAUSE_MS, doubled per further one up to PAUSE_MAX_MS. Only those: an answer, even a 500, may
 * be about one token, and a caller must not be able to pause everyone's checks with a few.
 */
const PAUSE_AFTER = 3;
const PAUSE_MS = 1000;
const PAUSE_MAX_MS = 5000;
const PAUSED = unavailable('the token cannot be checked now (the identity provider does not answer)');
/**
 * Calls to the endpoint at once (per binding, max_concurrent_calls): past it a token not in the
 * cache is a 503 at once. A flood of made-up tokens while the IdP is slow would otherwise open a
 * connection per token (file descriptors of the gateway, the IdP's capacity) and wait a timeout each.
 */
const MAX_CALLS = 1024;
const BUSY = unavailable('the token cannot be checked now (too many token checks in progress)');
/**
 * OAuth errors of a 400 from the introspection endpoint that are the token's fault (oidc-provider
 * answers unsupported_token_type for a JWT): refused like an inactive token. Anything else
 * (invalid_client, 5xx...) is the gateway's or the IdP's problem: 503.
 */
const TOKEN_ERRORS = new Set(['invalid_token', 'unsupported_token_type', 'invalid_request']);

/**
 * Whether an active answer says the token is no access token: a refresh token (for the token
 * endpoint only, RFC 6749 §1.5, §10.4, and much longer-lived) or an ID or logout token, which
 * IdPs introspect as active too. Said as token_type `refresh_token` (RFC 7662 §2.2 leaves it to
 * the IdP), `typ` `Refresh` / `Offline` / `ID` / `Logout` (Keycloak), `token_use`
 * `refresh_token` (Ory Hydra) / `id` (Cognito).
 */
function isRefreshToken(body: Record<string, unknown>): boolean {
  const { token_type: type, typ, token_use: use } = body;
  return (typeof type === 'string' && /^refresh(?:[_-]?token)?$/i.test(type))
    || (typeof typ === 'string' && /^(?:refresh|offline|id|logout)$/i.test(typ))
    || (typeof use === 'string' && /^(?:id|refresh(?:[_-]?token)?)$/i.test(use));
}

/** RFC 6749 §2.3.1: client id and secret are form-encoded before they go into Basic. */
const formEncode = (s: string) => encodeURIComponent(s).replace(/%20/g, '+');

export default definePlugin({
  name: 'oauth2-introspection',
  priority: 1400,
  description: 'Opaque OAuth2 tokens checked at the identity provider\'s introspection endpoint (RFC 7662), cached.',
  schema: IntrospectionConfig,
  credential: IntrospectionCredential,
  scopes: ['global', 'service', 'route'],
  // A subject is one consumer's for an issuer; one without issuer stands for every issuer.
  prepareCredentials: subjectPerIssuer,
  check(config) {
    // Sent as written (form-encoded): a secret with a file's last newline is refused by the IdP
    // (invalid_client), so every token would be a 503 "cannot be checked now".
    const problems: { path: string[]; message: string }[] = [];
    for (const field of ['client_id', 'client_secret'] as const) {
      const bad = unsendableSecret(config[field], 'an OAuth client credential (RFC 6749 appendix A: VSCHAR)', { edges: false });
      if (bad) problems.push({ path: [field], message: bad });
    }
    // (each introspection call's deadline: 0 or 30d aborted every call at once, and every token got a 503)
    const late = config.timeout !== undefined ? deadlineProblem(config.timeout) : null;
    if (late !== null) problems.push({ path: ['timeout'], message: late });
    return problems;
  },
  create(config, deps) {
    if (!config.audiences) {
      // An active answer says only that the IdP issued the token, to whichever of its APIs
      // (RFC 7662 §4): without an audience, a token another API was given is accepted here.
      deps.log.warn({ plugin: 'oauth2-introspection', where: deps.where, url: redactUrl(config.introspection_url) }, 'oauth2-introspection: audiences is not set: an active token the IdP issued for any of its APIs is accepted (set audiences to this API\'s identifier)');
    }
    const bySubject = subjectIndex(deps.credentials);
    const ttl = parseDuration(config.cache_ttl ?? '30s');
    const negativeTtl = Math.min(ttl, parseDuration(config.negative_cache_ttl ?? '5s'));
    const timeoutMs = parseDuration(config.timeout ?? '5s');
    const maxCalls = config.max_concurrent_calls ?? MAX_CALLS;
    // Refusals are kept apart from passes: a flood of made-up tokens (each one a call to the
    // IdP) evicts only other refusals, never the tokens of the callers who are let in.
    const cache = new TtlCache<AuthOutcome>(config.cache_size ?? 10_000);
    const refused = new TtlCache<AuthOutcome>(config.cache_size ?? 10_000);
    const inflight = new Map<string, Promise<AuthOutcome>>();
    const claimName = config.consumer_claim ?? 'client_id';
    const wantScopes = config.scopes ?? [];
    /** Calls in a row that got no answer, and until when no call is made after PAUSE_AFTER of them. */
    let unanswered = 0;
    let pausedUntil = 0;
    const failed = (detail: string): { outcome: AuthOutcome; until: number } => ({ outcome: unavailable(detail), until: Date.now() + FAILURE_BACKOFF_MS });
    /** The endpoint as logs show it (a secret in its query or userinfo masked). */
    const logUrl = redactUrl(config.introspection_url);
    const basic = `Basic ${Buffer.from(`${formEncode(config.client_id)}:${formEncode(config.client_secret)}`).toString('base64')}`;

    const introspect = async (token: string): Promise<{ outcome: AuthOutcome; until: number }> => {
      const form = new URLSearchParams({ token, token_type_hint: 'access_token' });
      if (config.auth_method === 'client_secret_post') {
        form.set('client_id', config.client_id);
        form.set('client_secret', config.client_secret);
      }
      let res: { status: number; json: unknown };
      try {
        res = await fetchJson(config.introspection_url, {
          method: 'POST',
          timeoutMs,
          headers: { 'content-type': 'application/x-www-form-urlencoded', ...(config.auth_method === 'client_secret_post' ? {} : { authorization: basic }) },
          body: form.toString(),
        });
      } catch (err) {
        deps.log.warn({ url: logUrl, err: (err as Error).message }, 'token introspection failed');
        if ((err as { status?: number }).status !== undefined) unanswered = 0; // an answer, but not JSON
        else if (++unanswered >= PAUSE_AFTER) pausedUntil = Date.now() + Math.min(PAUSE_MS * 2 ** (unanswered - PAUSE_AFTER), PAUSE_MAX_MS);
        return failed('the token cannot be checked now (the identity provider does not answer)');
      }
      unanswered = 0;
      const body = res.json as Record<string, unknown> | null;
      const now = Date.now();
      if (res.status === 400 && body !== null && typeof body === 'object' && TOKEN_ERRORS.has(body['error'] as string)) {
        return { outcome: invalid(`the token is not valid (the identity provider answered ${body['error'] as string})`), until: now + negativeTtl };
      }
      if (res.status !== 200 || body === null || typeof body !== 'object') {
        deps.log.warn({ url: logUrl, status: res.status }, 'token introspection refused');
        return failed('the token cannot be checked now (the identity provider refused the introspection call)');
      }
      if (body['active'] !== true) return { outcome: invalid('the token is not active'), until: now + negativeTtl };
      if (isRefreshToken(body)) return { outcome: invalid('the token is not an access token (a refresh, ID or logout token)'), until: now + negativeTtl };
      const exp = typeof body['exp'] === 'number' ? body['exp'] * 1000 : Infinity;
      if (exp <= now) return { outcome: invalid('the token has expired'), until: now + negativeTtl };
      // Not valid yet (RFC 7662 §2.2 nbf), with the same tolerance as jwt's clock skew.
      if (typeof body['nbf'] === 'number' && body['nbf'] * 1000 > now + NBF_SKEW_MS) return { outcome: invalid('the token is not valid yet'), until: 0 };
      const until = Math.min(now + ttl, exp);
      // RFC 7662 §2.2: iss is optional; when the IdP says it, it is the binding's issuer.
      const iss = typeof body['iss'] === 'string' ? body['iss'] : config.issuer;
      if (config.issuer !== undefined && iss !== config.issuer) return { outcome: invalid('the token is not from this issuer'), until };
      if (config.audiences) {
        const aud = body['aud'];
        const auds = Array.isArray(aud) ? aud : typeof aud === 'string' ? [aud] : [];
        if (!auds.some((a) => config.audiences!.includes(a as string))) return { outcome: invalid('the token is not for this API'), until };
      }
      const scopes = scopesOf(body);
      const lacking = wantScopes.filter((s) => !scopes.includes(s));
      if (lacking.length) {
        return { outcome: { ok: false, missing: false, status: 403, challenge: `${REALM}, error="insufficient_scope", scope="${wantScopes.join(' ')}"`, detail: `the token lacks the scope ${lacking.join(', ')}` }, until };
      }
      const v = body[claimName];
      const value = typeof v === 'string' || typeof v === 'number' ? String(v) : null;
      if (value === null) return { outcome: invalid(`the token has no ${claimName}`), until };
      // By a credential's subject; by name only a consumer that declares no credentials (an
      // IdP user who calls itself "admin" does not stand for a consumer that has its own keys).
      const byName = deps.consumers.get(value);
      // A credential with an issuer: only that IdP's subject (another IdP's user of the same
      // sub or client_id, a self-signup there, is someone else).
      const consumer: Consumer | null = bySubject(value, iss) ?? (byName !== undefined && !deps.credentialed.has(byName) ? byName : null);
      if (consumer === null && config.require_consumer) return { outcome: invalid('the token is not for a known consumer'), until };
      return { outcome: { ok: true, consumer, identity: consumer?.name ?? value, credential: `oauth2:${value}`, scopes, claims: body }, until };
    };

    return {
      /**
       * hide_credentials: a Bearer token never reaches the upstream, whatever becomes of it: one
       * refused goes on with the anonymous consumer when there is one, and another auth plugin of
       * the route may let the request in before this one looks (any-of). Taken out before
       * authentication (the check reads the client's request); another scheme stays.
       */
      onRequest: config.hide_credentials ? (ctx) => {
        const h = ctx.header('authorization');
        if (h !== undefined && /^Bearer(?:[ \t]|$)/i.test(h)) ctx.removeUpstreamHeader('authorization');
      } : undefined,
      async authenticate(ctx) {
        const token = bearerToken(ctx.header('authorization'));
        if (token === null) return { ok: false, missing: true, challenge: REALM };
        if (token === BAD_BEARER) return badBearer(REALM);
        if (queryHasAccessToken(ctx.query)) return twoTokenMethods(REALM);
        const key = sha256(token).toString('base64');
        let outcome = cache.get(key) ?? refused.get(key);
        if (outcome === undefined) {
          let p = inflight.get(key);
          if (p === undefined) {
            // PAUSE_AFTER calls in a row got no answer: none is made until the pause ends.
            if (pausedUntil > Date.now()) return PAUSED;
            if (inflight.size >= maxCalls) return BUSY;
            p = introspect(token).then(({ outcome, until }) => {
              (outcome.ok ? cache : refused).set(key, outcome, until);
              return outcome;
            }).finally(() => inflight.delete(key));
            inflight.set(key, p);
          }
          outcome = await p;
        }
        // A sender-constrained token (cnf, RFC 7800): judged per request, the connection is part of it.
        if (outcome.ok && outcome.claims?.['cnf'] !== undefined) {
          const problem = boundTokenProblem(outcome.claims['cnf'], ctx);
          if (problem !== null) return invalid(problem);
        }
        return outcome;
      },
    };
  },
});
