import { Type, type Static } from '@sinclair/typebox';
import { Size } from '../schema-types.js';
import { HeaderOps, JsonOps, QueryOps } from '../transform-common.js';

export const RequestTransformConfig = Type.Object({
  method: Type.Optional(Type.String({ pattern: '^[A-Za-z]+$', description: 'The method sent upstream instead of the request\'s.' })),
  path: Type.Optional(Type.Union([
    Type.String({ pattern: '^/', description: 'The upstream path, a template: {path.x} (route parameter), {query.x}, {header.x}, {consumer}.' }),
    Type.Object({
      pattern: Type.String({ minLength: 1, description: 'A regular expression over the upstream path (after strip_path).' }),
      replace: Type.String({ description: 'The replacement: $1..$9 are the captures, templates as for `path`.' }),
    }, { additionalProperties: false }),
  ], { description: 'Rewrites the path sent upstream.' })),
  headers: Type.Optional(HeaderOps),
  query: Type.Optional(QueryOps),
  json: Type.Optional(JsonOps),
  max_body: Type.Optional(Size('Largest request body read for a JSON transform (larger: 413)')),
}, { additionalProperties: false });
export type RequestTransformConfig = Static<typeof RequestTransformConfig>;
