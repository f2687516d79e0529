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
  non_json: Type.Optional(Type.Union([Type.Literal('pass'), Type.Literal('refuse')], {
    default: 'pass',
    description: 'With json set, an answer of the transformed statuses whose body is not JSON: pass it untouched, or refuse it (502). An upstream that negotiates formats (Accept: application/xml, a browsable HTML view) would hand a client the fields the json edits remove: refuse when they hide something.',
  })),
}, { additionalProperties: false });
export type ResponseTransformConfig = Static<typeof ResponseTransformConfig>;
