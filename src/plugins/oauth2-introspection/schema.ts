import { Type, type Static } from '@sinclair/typebox';
import { AuthCommon } from '../auth-common.js';
import { Duration } from '../schema-types.js';


export const IntrospectionConfig = Type.Object({
  introspection_url: Type.String({ pattern: '^https?://', description: 'The IdP\'s RFC 7662 introspection endpoint.' }),
  issuer: Type.Optional(Type.String({ minLength: 1, description: 'The IdP\'s issuer identifier: an answer whose iss is another one is refused (401), and an answer without iss counts as this issuer\'s for credentials that name an issuer.' })),
  client_id: Type.String({ minLength: 1, description: 'The gateway\'s client at the IdP.' }),
  client_secret: Type.String({ minLength: 1, description: 'Its secret (use ${ENV}).' }),
  auth_method: Type.Optional(Type.Union([Type.Literal('client_secret_basic'), Type.Literal('client_secret_post')], { default: 'client_secret_basic' })),
  cache_ttl: Type.Optional(Duration('How long an active answer is reused (never past the token\'s exp; default 30s).')),
  negative_cache_ttl: Type.Optional(Duration('How long an inactive or expired answer is reused (at most cache_ttl; default 5s).')),
  cache_size: Type.Optional(Type.Integer({ minimum: 1, default: 10000 })),
  timeout: Type.Optional(Duration('Timeout of an introspection call (default 5s).')),
  max_concurrent_calls: Type.Optional(Type.Integer({ minimum: 1, maximum: 100000, default: 1024, description: 'Introspection calls at once for this plugin (one connection each): past it a token not in the cache is a 503 at once, so a flood of made-up tokens while the IdP is slow holds no socket per token (default 1024, as Envoy\'s default max_requests per cluster).' })),
  scopes: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { description: 'Scopes the token must all have; missing -> 403.' })),
  audiences: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'When given, the token\'s aud must contain one of them.' })),
  consumer_claim: Type.Optional(Type.String({ minLength: 1, default: 'client_id', description: 'Field of the introspection answer that names the consumer (client_id, sub, username...): an oauth2-introspection credential\'s subject, else a consumer of that name that declares no credentials.' })),
  require_consumer: Type.Optional(Type.Boolean({ default: false })),
  ...AuthCommon,
}, { additionalProperties: false });
export type IntrospectionConfig = Static<typeof IntrospectionConfig>;

export const IntrospectionCredential = Type.Object({
  type: Type.Literal('oauth2-introspection'),
  subject: Type.String({ minLength: 1, description: 'The consumer_claim value (e.g. an OAuth client_id) that identifies this consumer.' }),
  issuer: Type.Optional(Type.String({ minLength: 1, description: 'Only in answers whose iss is this (or, without iss, from a binding whose issuer is this): with several IdPs the same subject at another one is someone else. Default: any issuer.' })),
}, { additionalProperties: false });
