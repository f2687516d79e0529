import { Type, type Static } from '@sinclair/typebox';
import { Duration } from '../schema-types.js';
import { By } from '../limit-key.js';


export const RateLimitConfig = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, description: 'Requests (cost units) per window.' })),
  window: Type.Optional(Duration('The window')),
  limits: Type.Optional(Type.Array(Type.Object({ limit: Type.Integer({ minimum: 1 }), window: Duration('The window') }, { additionalProperties: false }), {
    minItems: 1, description: 'Several windows at once (e.g. 10/s and 1000/h): a request must fit all of them.',
  })),
  by: By,
  algorithm: Type.Optional(Type.Union([Type.Literal('gcra'), Type.Literal('sliding-window')], {
    default: 'gcra', description: 'gcra: a burst of `limit`, then evenly spaced; sliding-window: a weighted sliding count. Neither allows a double burst at a window edge.',
  })),
  cost: Type.Optional(Type.Integer({ minimum: 1, default: 1, description: 'Units one request takes.' })),
  policy: Type.Optional(Type.Union([Type.Literal('local'), Type.Literal('redis')], { default: 'local', description: 'local: one count per node (all its workers); redis: one count across nodes (needs top-level redis).' })),
  fault: Type.Optional(Type.Union([Type.Literal('open'), Type.Literal('closed'), Type.Literal('local')], {
    default: 'open', description: 'When the counter store fails or does not answer within `timeout`: open lets requests through, closed answers 503, local counts on this node instead. Such a request is not counted in Redis either, even when a stalled Redis runs its decision later.',
  })),
  timeout: Type.Optional(Duration('How long a Redis decision may take before `fault` applies (default: the top-level redis.timeout, else 50ms). The node-local store (the primary, with workers) gets at least 1s: it is exact, not best-effort')),
  headers: Type.Optional(Type.Boolean({ default: true, description: 'Send RateLimit-Policy and RateLimit (IETF httpapi draft) on every response.' })),
  legacy_headers: Type.Optional(Type.Boolean({ default: false, description: 'Also send X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset.' })),
  name: Type.Optional(Type.String({ pattern: '^[a-z][a-z0-9_.-]*$', maxLength: 64, description: 'Policy name in the RateLimit headers (default: "default").' })),
}, { additionalProperties: false });
export type RateLimitConfig = Static<typeof RateLimitConfig>;
