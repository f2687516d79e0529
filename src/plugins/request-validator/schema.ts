import { Type, type Static } from '@sinclair/typebox';
import { Size } from '../schema-types.js';

const JsonSchema = (description: string) => Type.Record(Type.String(), Type.Unknown(), { description });

export const RequestValidatorConfig = Type.Object({
  openapi: Type.Optional(Type.String({
    minLength: 1,
    description: 'OpenAPI 3.0 or 3.1 document (YAML or JSON): a file path, relative to the config file. Read when the config is loaded (a reload reads it again).',
  })),
  spec: Type.Optional(JsonSchema('The OpenAPI 3.0 / 3.1 document inline (instead of `openapi`).')),
  body_schema: Type.Optional(JsonSchema('Without a document: JSON Schema of the JSON request body (draft-07 unless its $schema says 2020-12, 2019-09 or draft-04).')),
  query_schema: Type.Optional(JsonSchema('Without a document: JSON Schema of the query parameters as one object (values coerced to the schema\'s types; repeated names are arrays).')),
  header_schema: Type.Optional(JsonSchema('Without a document: JSON Schema of the request headers it names (as one object; values coerced).')),
  body_required: Type.Optional(Type.Boolean({ description: 'With body_schema: a POST, PUT or PATCH without a body is a violation (default true); other methods are checked when they carry one.' })),
  max_body: Type.Optional(Size('Largest request body read for validation: past it 413 (default 1mb)')),
  max_depth: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 128, description: 'Deepest JSON nesting accepted in a body: deeper is a 400 before it is parsed.' })),
  validate_response: Type.Optional(Type.Boolean({ default: false, description: 'Also check upstream responses (status, headers, JSON body) against the document: a violation becomes a 502 invalid-upstream-response (logged).' })),
  max_response: Type.Optional(Size('With validate_response: largest response body held for validation; past it 502 upstream-response-too-large (default 1mb)')),
  allow_unknown_operations: Type.Optional(Type.Boolean({ default: false, description: 'Let requests through unvalidated when the document has no operation for them (default: 404 for an unknown path, 405 for an unknown method).' })),
  allow_unsafe_patterns: Type.Optional(Type.Boolean({ default: false, description: 'Accept `pattern`s with a repeated group that itself repeats (exponential backtracking on hostile input); refused by default.' })),
}, { additionalProperties: false });
export type RequestValidatorConfig = Static<typeof RequestValidatorConfig>;
