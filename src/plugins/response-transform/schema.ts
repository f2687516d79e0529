import { Type, type Static } from '@sinclair/typebox';
import { Size } from '../schema-types.js';
import { HeaderOps, JsonOps } from '../transform-common.js';

export const ResponseTransformConfig = Type.Object({
  status: Type.Optional(Type.Record(Type.String({ pattern: '^[1-5][0-9]{2}$' }), Type.Integer({ minimum: 200, maximum: 599 }), {
    additionalProperties: false,
    description: 'Status mapping, upstream status: status sent to the client (e.g. {"404": 200}).',
  })),
  headers: Type.Optional(HeaderOps),
  json: Type.Optional(JsonOps),
  statuses: Type.Optional(Type.Array(Type.Integer({ minimum: 100, maximum: 599 }), { minItems: 1, description: 'Transform only responses with these upstream statuses (default: all).' })),
  max_body: Type.Optional(Size('Largest upstream body held for a JSON transform (larger: 502)')),
}, { additionalProperties: false });
export type ResponseTransformConfig = Static<typeof ResponseTransformConfig>;
