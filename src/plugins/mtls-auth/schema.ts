import { Type, type Static } from '@sinclair/typebox';

export const MtlsAuthConfig = Type.Object({
  anonymous: Type.Optional(Type.String({ minLength: 1, description: 'Consumer to use when no client certificate is presented, or a trusted one maps to no consumer; never for a certificate presented and not trusted (another CA, expired, revoked): 401 all the same.' })),
  require_consumer: Type.Optional(Type.Boolean({ default: true, description: 'Refuse (401) a trusted certificate that maps to no consumer; false: the subject CN is the identity.' })),
  forward_client_cert: Type.Optional(Type.Array(Type.Union([Type.Literal('client-cert'), Type.Literal('client-cert-chain'), Type.Literal('x-forwarded-client-cert')]), {
    uniqueItems: true,
    description: 'Fields that tell the upstream the verified client certificate (default none): client-cert and client-cert-chain (RFC 9440: the DER, and the issuers the client sent below client_ca\'s own), x-forwarded-client-cert (Envoy\'s XFCC: Hash, Subject, URI, DNS). A client\'s own copies of any client-certificate field never reach the upstream on these routes, a trusted proxy\'s neither.',
  })),
}, { additionalProperties: false });
export type MtlsAuthConfig = Static<typeof MtlsAuthConfig>;

/** consumers[].credentials[] entry of type mtls-auth: the certificate subject CN or a SAN (DNS name, email; a URI for a name written as one) of this consumer, or the certificate itself (its SHA-256 fingerprint). */
export const MtlsAuthCredential = Type.Object({
  type: Type.Literal('mtls-auth'),
  subject_name: Type.Optional(Type.String({ minLength: 1, description: 'Subject CN, or a DNS name or email address subjectAltName; written as a URI (spiffe://..., urn:...), a URI subjectAltName only (and no CN spelled like it). One of subject_name and fingerprint_sha256.' })),
  fingerprint_sha256: Type.Optional(Type.String({
    pattern: '^(?:[0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$',
    description: 'The certificate pinned: SHA-256 of its DER, hex, with or without colons, any case (openssl x509 -fingerprint -sha256). Matched before any subject_name.',
  })),
}, { additionalProperties: false });
