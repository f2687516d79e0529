import { Type, type Static } from '@sinclair/typebox';
import { Duration } from '../schema-types.js';
import { By } from '../limit-key.js';


export const QuotaConfig = Type.Object({
  limit: Type.Integer({ minimum: 1, description: 'Requests (cost units) per period.' }),
  period: Type.Union([Type.Literal('hour'), Type.Literal('day'), Type.Literal('week'), Type.Literal('month'), Type.Literal('year')], { description: 'A calendar period in time_zone (weeks are ISO weeks, Monday first). Across DST changes a period always holds the current instant: a boundary the clocks skip (no midnight on a spring-forward day) is the first instant after it; an hour the clocks repeat is two periods.' }),
  time_zone: Type.Optional(Type.String({ minLength: 1, default: 'UTC', description: 'IANA time zone of the calendar, e.g. Europe/Paris.' })),
  by: By,
  cost: Type.Optional(Type.Integer({ minimum: 1, default: 1 })),
  policy: Type.Optional(Type.Union([Type.Literal('local'), Type.Literal('redis')], { default: 'local', description: 'local: this node, kept on disk (state_file); redis: shared by nodes.' })),
  fault: Type.Optional(Type.Union([Type.Literal('open'), Type.Literal('closed'), Type.Literal('local')], { default: 'open', description: 'When the counter store fails or does not answer within `timeout`: open lets requests through, closed answers 503, local counts on this node instead. Such a request is not counted in Redis either, even when a stalled Redis runs its decision later.' })),
  timeout: Type.Optional(Duration('How long a Redis decision may take before `fault` applies (default: the top-level redis.timeout, else 50ms). The node-local store (the primary, with workers) gets at least 1s: it is exact, not best-effort')),
  name: Type.Optional(Type.String({ pattern: '^[a-z][a-z0-9_.-]*$', maxLength: 64, description: 'Name in the headers and in usage reports (default "quota"). A named quota is one count wherever it is bound; an unnamed one is its binding\'s own, kept while the service, route, consumer or plan it is bound to keeps its name (moving or adding other config entries keeps it).' })),
}, { additionalProperties: false });
export type QuotaConfig = Static<typeof QuotaConfig>;
