import { Type, type Static } from '@sinclair/typebox';

const Cidrs = (description: string) =>
  Type.Optional(Type.Array(Type.String({ minLength: 1, description: 'An IPv4 or IPv6 address or CIDR (10.0.0.0/8, 2001:db8::/32, ::1).' }), { minItems: 1, description }));

export const IpRestrictionConfig = Type.Object({
  allow: Cidrs('Client addresses allowed: any other client is refused.'),
  deny: Cidrs('Client addresses refused (deny wins over allow).'),
  status: Type.Optional(Type.Union([Type.Literal(403), Type.Literal(404)], {
    default: 403, description: 'Status of the refusal: 403 (forbidden problem), or 404 (the no-route problem, as if the route did not exist).',
  })),
  message: Type.Optional(Type.String({ minLength: 1, maxLength: 512, description: 'Detail of the refusal problem (default: "your IP address is not allowed"; with status 404: the no-route detail).' })),
}, { additionalProperties: false });
export type IpRestrictionConfig = Static<typeof IpRestrictionConfig>;
