import { Type, type Static } from '@sinclair/typebox';
import { AuthCommon } from '../auth-common.js';
import { Duration, NonEmptyKeyed } from '../schema-types.js';

/** Asymmetric algorithms only: never `none`, never an HMAC (which a public key could be abused as). */
export const ASYMMETRIC_ALGS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;


export const JwtConfig = Type.Object({
  issuer: Type.Optional(Type.String({ pattern: '^https?://', description: 'The IdP: keys found by OIDC discovery (issuer/.well-known/openid-configuration); tokens must carry this iss.' })),
  jwks_url: Type.Optional(Type.String({ pattern: '^https?://', description: 'Where the signing keys are, without discovery.' })),
  issuers_allowed: Type.Optional(Type.Array(Type.String({ minLength: 1 }), {
    minItems: 1, uniqueItems: true,
    description: 'Other iss values accepted with the same keys, beside issuer (an IdP that signs tokens of two issuers: Azure AD\'s v1 tokens say https://sts.windows.net/TENANT/, its v2 ones the discovery issuer). With jwks_url alone, the iss values accepted.',
  })),
  audiences: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'Accepted aud values (one must match).' })),
  algorithms: Type.Optional(Type.Array(Type.Union(ASYMMETRIC_ALGS.map((a) => Type.Literal(a))), { minItems: 1, uniqueItems: true, description: 'Accepted algorithms (default: all asymmetric ones).' })),
  clock_skew: Type.Optional(Duration('Leeway for exp, nbf and iat (default 30s, at most 5m).')),
  scopes: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { description: 'Scopes the token must all have (scope or scp claim); missing -> 403.' })),
  claims: Type.Optional(NonEmptyKeyed(Type.Union([Type.String(), Type.Number(), Type.Boolean(), Type.Array(Type.Union([Type.String(), Type.Number()]), { minItems: 1 })]), {
    description: 'Claims the token must carry: a value, or a list of which the claim must equal one (or, for an array claim, contain one); missing -> 403.',
  })),
  required_claims: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { description: 'Claims that must be present (exp is always required).' })),
  consumer_claim: Type.Optional(Type.String({ minLength: 1, default: 'sub', description: 'Claim whose value matches a jwt credential\'s subject, or names a consumer that declares no credentials (one with keys of its own is never named by a claim).' })),
  require_consumer: Type.Optional(Type.Boolean({ default: false, description: 'Refuse (401) tokens whose consumer_claim names no configured consumer; otherwise X-Consumer-Name carries the claim value.' })),
  cookie: Type.Optional(Type.String({ minLength: 1, description: 'Also read the token from this cookie when there is no Authorization header (with hide_credentials, that cookie does not go upstream). A Bearer header beside this cookie holding another token, or this cookie beside an access_token query parameter, is refused (400 invalid_request: the upstream could read the token that was not checked).' })),
  cookie_cross_site: Type.Optional(Type.Union([Type.Literal('refuse_unsafe'), Type.Literal('allow')], {
    default: 'refuse_unsafe',
    description: 'A token read from the cookie on a cross-site request (a browser sends cookies on those: CSRF): refuse_unsafe answers 403 to a method other than GET, HEAD, OPTIONS or TRACE whose Sec-Fetch-Site is not same-origin or none, or, without Sec-Fetch-Site, whose Origin is not the request\'s host; allow does not look.',
  })),
  cache: Type.Optional(Type.Boolean({ default: true, description: 'Remember verified tokens (keyed by their SHA-256) until they expire.' })),
  cache_size: Type.Optional(Type.Integer({ minimum: 1, default: 10000 })),
  jwks_refresh: Type.Optional(Duration('How often the keys are re-fetched in the background (default 10m).')),
  jwks_cooldown: Type.Optional(Duration('At most one fetch per this long for unknown kids, and for background refreshes (default 10s, at least 100ms).')),
  timeout: Type.Optional(Duration('Timeout of discovery and JWKS fetches (default 5s).')),
  token_types: Type.Optional(Type.Array(Type.String({ minLength: 1, pattern: '^[!-~]+$' }), {
    minItems: 1,
    description: 'Accepted `typ` header values (RFC 8725 §3.11, RFC 9068: `at+jwt`), compared without case and an `application/` prefix. When set, a token must carry one of them; by default a token without typ, or with JWT or at+jwt, is accepted (an IdP\'s logout, security-event or DPoP tokens are not access tokens).',
  })),
  ...AuthCommon,
}, { additionalProperties: false });
export type JwtConfig = Static<typeof JwtConfig>;

/** consumers[].credentials[] entry of type jwt: maps a consumer_claim value (of an issuer) to this consumer. */
export const JwtCredential = Type.Object({
  type: Type.Literal('jwt'),
  subject: Type.String({ minLength: 1, description: 'The consumer_claim value (e.g. an OAuth client_id) that identifies this consumer.' }),
  issuer: Type.Optional(Type.String({ minLength: 1, description: 'Only in tokens whose iss is this (with several IdPs, the same subject at another one is someone else); default: any issuer the binding accepts.' })),
}, { additionalProperties: false });
