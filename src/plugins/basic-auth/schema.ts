import { Type, type Static } from '@sinclair/typebox';
import { AuthCommon } from '../auth-common.js';

export const BasicAuthConfig = Type.Object({
  // A quoted-string's qdtext (RFC 9110 §5.6.4): tab, space, visible ASCII but `"` and `\`, and
  // obs-text. Anything else (CR, LF, a character past Latin-1) cannot go into a header field:
  // every 401 of the route would be a 500.
  realm: Type.Optional(Type.String({ pattern: '^[\\t\\x20\\x21\\x23-\\x5b\\x5d-\\x7e\\x80-\\xff]*$', default: 'turnpike', description: 'Realm in the WWW-Authenticate challenge (no `"`, `\\` or control characters; Latin-1 at most).' })),
  ...AuthCommon,
}, { additionalProperties: false });
export type BasicAuthConfig = Static<typeof BasicAuthConfig>;

/** consumers[].credentials[] entry of type basic-auth: a password (hashed at load) or its hash. */
export const BasicAuthCredential = Type.Object({
  type: Type.Literal('basic-auth'),
  username: Type.String({ minLength: 1, maxLength: 256, pattern: '^[^:]*$', description: 'User name (no colon, RFC 7617).' }),
  password: Type.Optional(Type.String({ minLength: 1, maxLength: 1024, description: 'Hashed with scrypt at load (and before it is written to a config store, which never holds it in clear); prefer password_hash (npx turnpike hash-password) in files, or ${ENV}.' })),
  password_hash: Type.Optional(Type.String({ pattern: '^scrypt\\$[0-9]+\\$[0-9]+\\$[0-9]+\\$[A-Za-z0-9+/=]+\\$[A-Za-z0-9+/=]+$', description: 'scrypt$N$r$p$salt$hash (base64), as printed by npx turnpike hash-password (N=2^14, r=8, p=5: OWASP\'s scrypt minimum; a hash made with less work, e.g. p=1 before, still verifies: print a new one to upgrade it).' })),
}, { additionalProperties: false });
