import { Type, type Static } from '@sinclair/typebox';

export const MtlsAuthConfig = Type.Object({
  anonymous: Type.Optional(Type.String({ minLength: 1, description: 'Consumer to use when no valid client certificate is presented.' })),
  require_consumer: Type.Optional(Type.Boolean({ default: true, description: 'Refuse (401) a trusted certificate that maps to no consumer; false: the subject CN is the identity.' })),
}, { additionalProperties: false });
export type MtlsAuthConfig = Static<typeof MtlsAuthConfig>;

/** consumers[].credentials[] entry of type mtls-auth: the certificate subject CN or a SAN (DNS name, email, URI) of this consumer. */
export const MtlsAuthCredential = Type.Object({
  type: Type.Literal('mtls-auth'),
  subject_name: Type.String({ minLength: 1, description: 'Subject CN, or a subjectAltName value (DNS name, email address or URI).' }),
}, { additionalProperties: false });
