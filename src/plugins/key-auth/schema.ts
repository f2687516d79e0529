import { Type, type Static } from '@sinclair/typebox';
import { AuthCommon } from '../auth-common.js';

export const KeyAuthConfig = Type.Object({
  header: Type.Optional(Type.Union([Type.String({ pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$" }), Type.Literal(false)], {
    default: 'apikey', description: 'Request header carrying the key (false: none).',
  })),
  query: Type.Optional(Type.Union([Type.String({ minLength: 1 }), Type.Literal(false)], {
    default: 'apikey', description: 'Query parameter carrying the key (false: none).',
  })),
  ...AuthCommon,
}, { additionalProperties: false });
export type KeyAuthConfig = Static<typeof KeyAuthConfig>;

/** consumers[].credentials[] entry of type key-auth. */
export const KeyAuthCredential = Type.Object({
  type: Type.Literal('key-auth'),
  key: Type.Optional(Type.String({ minLength: 8, maxLength: 512, description: 'The API key (use ${ENV} to keep it out of the file). One of key and key_sha256.' })),
  key_sha256: Type.Optional(Type.String({ pattern: '^[0-9a-f]{64}$', description: 'The key\'s SHA-256 digest (hex) instead of the key itself (the portal stores its keys so).' })),
  id: Type.Optional(Type.String({ minLength: 1, description: 'Credential id sent upstream as X-Credential-Identifier (default: <consumer>/key-auth/<n>).' })),
  created_at: Type.Optional(Type.String({ maxLength: 40, description: 'When it was issued (informational).' })),
}, { additionalProperties: false });
