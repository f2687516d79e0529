import { Type, type Static } from '@sinclair/typebox';
import { Size } from '../schema-types.js';

export const CompressionConfig = Type.Object({
  algorithms: Type.Optional(Type.Array(Type.Union([Type.Literal('br'), Type.Literal('gzip')]), {
    minItems: 1, uniqueItems: true, default: ['br', 'gzip'],
    description: 'Codings offered, in the gateway\'s order of preference when the client ranks them equally.',
  })),
  types: Type.Optional(Type.Array(Type.String({ pattern: '^[a-z0-9!#$&^_.+-]+/([a-z0-9!#$&^_.+-]+|\\*)$' }), {
    minItems: 1,
    description: 'Media types compressed (type/* allowed, but text/* does not take text/event-stream, which is compressed only when listed by name; any +json and +xml type is compressed when application/json or application/xml is listed; gRPC never).',
  })),
  min_size: Type.Optional(Size('Smallest body compressed when its length is known (default 1kb)')),
  gzip_level: Type.Optional(Type.Integer({ minimum: 1, maximum: 9, default: 6 })),
  br_quality: Type.Optional(Type.Integer({ minimum: 0, maximum: 11, default: 4, description: 'Brotli quality (4: fast, close to gzip -6 in size).' })),
}, { additionalProperties: false });
export type CompressionConfig = Static<typeof CompressionConfig>;
