import { Type, type Static } from '@sinclair/typebox';
import { GroupName } from '../schema-types.js';

const Groups = (description: string) =>
  Type.Optional(Type.Array(GroupName('A consumer group name (consumers[].groups): no comma, no control character, no leading or trailing space.'), { minItems: 1, uniqueItems: true, description }));

export const AclConfig = Type.Object({
  allow: Groups('Groups allowed: the consumer must be in at least one of them.'),
  deny: Groups('Groups denied: the consumer must be in none of them (deny wins over allow).'),
  hide_groups_header: Type.Optional(Type.Boolean({
    default: false, description: 'Do not send the consumer\'s groups upstream (removes x-consumer-groups for requests that pass).',
  })),
}, { additionalProperties: false });
export type AclConfig = Static<typeof AclConfig>;
