/**
 * The `compose:` block of a top-level route (TypeBox; part of schema/turnpike.schema.json).
 * Unknown keys are errors. Semantic checks (unknown services and steps, cycles...) are made
 * when the config compiles (src/compose/config.ts).
 */
import { Type, type Static, type ObjectOptions, type TProperties } from '@sinclair/typebox';
import { DURATION_PATTERN, SIZE_PATTERN } from '../config/units.js';
import { FIELD_NAME, NonEmptyKeyed } from '../plugins/schema-types.js';

const Strict = <T extends TProperties>(props: T, opts: ObjectOptions = {}) =>
  Type.Object(props, { additionalProperties: false, ...opts });

// (the same as src/config/schema.ts's; defined here so the two modules do not import each other)
const Duration = Type.Union(
  [Type.Integer({ minimum: 0 }), Type.String({ pattern: DURATION_PATTERN })],
  { description: 'A duration: 250ms, 30s, 5m, 1h, 1d (a bare number is milliseconds).' },
);
const Size = Type.Union(
  [Type.Integer({ minimum: 0 }), Type.String({ pattern: SIZE_PATTERN })],
  { description: 'A size: 512b, 10kb, 8mb, 1gb (a bare number is bytes).' },
);
const FilePath = Type.String({ minLength: 1, description: 'A file path (relative paths are relative to the config file).' });
const HeaderName = Type.String({ pattern: FIELD_NAME });

export const StepName = Type.String({
  pattern: '^[A-Za-z_][A-Za-z0-9_-]*$',
  maxLength: 64,
  description: 'Step name: the key of its response in the composed body, and how templates name it ({name.body.x}).',
});

export const ComposeStep = Strict({
  name: StepName,
  service: Type.Optional(Type.String({ minLength: 1, description: 'A service of this config: its targets, balancer, health, circuit and timeouts are used.' })),
  url: Type.Optional(Type.String({
    pattern: '^https?://[^/?#{}]+',
    description: 'An external provider: http(s)://host[:port]/path (the path and query may hold templates, the origin may not).',
  })),
  method: Type.Optional(Type.String({ pattern: '^[A-Za-z]+$', description: 'HTTP method (default GET).' })),
  path: Type.Optional(Type.String({ pattern: '^/', description: 'Path (and optionally ?query) sent, a template: /users/{id}. With url: appended to the URL\'s path.' })),
  query: Type.Optional(NonEmptyKeyed(Type.Union([Type.String(), Type.Number(), Type.Boolean()]), {
    description: 'Query parameters sent (values are templates, percent-encoded).',
  })),
  headers: Type.Optional(Type.Record(HeaderName, Type.String(), {
    additionalProperties: false,
    description: 'Request headers sent (values are templates). The client\'s headers are never sent unless templated here, e.g. authorization: "{header.authorization}". A header that renders empty is left out.',
  })),
  body: Type.Optional(Type.Unknown({ description: 'JSON body sent (strings are templates; a string that is exactly one template takes the value\'s type).' })),
  depends_on: Type.Optional(Type.Array(StepName, { uniqueItems: true, description: 'Steps that must finish first (besides those the templates name).' })),
  optional: Type.Optional(Type.Boolean({ default: false, description: 'A failing optional step leaves its key out and is reported (Turnpike-Partial, errors); a failing required step fails the request (502/504).' })),
  timeout: Type.Optional(Duration),
  connect_timeout: Type.Optional(Duration),
  retries: Type.Optional(Type.Integer({ minimum: 0, maximum: 5, default: 0, description: 'Retries (GET, HEAD, OPTIONS, PUT, DELETE only) after a connect error, reset, timeout or 502/503/504; a service step retries on another target.' })),
  fallback: Type.Optional(Type.Unknown({ description: 'JSON value used as the step\'s response when it fails; the step is still reported as failed (Turnpike-Partial, errors with fallback: true).' })),
  cache: Type.Optional(Strict({
    ttl: Duration,
    max_entries: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000, default: 1000 })),
    max_bytes: Type.Optional(Size),
  }, { description: 'Keep successful responses in memory for ttl, by method, final URL, headers and body (GET and HEAD steps only); never one whose Cache-Control says no-store, private or no-cache, none past its s-maxage / max-age (less its Age).' })),
  max_body: Type.Optional(Size),
  select: Type.Optional(Type.String({ pattern: '^[^.]+(\\.[^.]+)*$', description: 'Member of the response body used as the step\'s value, a.b.0.c (missing: the step fails).' })),
  as: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Key of the step\'s value in the composed body (default: the step name).' })),
  hidden: Type.Optional(Type.Boolean({ default: false, description: 'Run the step (others may use its response) but leave it out of the composed body.' })),
  tls: Type.Optional(Strict({
    ca: Type.Optional(FilePath),
    cert: Type.Optional(FilePath),
    key: Type.Optional(FilePath),
    verify: Type.Optional(Type.Boolean({ default: true })),
    server_name: Type.Optional(Type.String({ minLength: 1 })),
  }, { description: 'url steps over https: CA to verify the provider with (a self-signed CA), client certificate.' })),
  auth: Type.Optional(Type.Union([
    Strict({ bearer: Type.String({ minLength: 1 }) }),
    Strict({ basic: Strict({ username: Type.String(), password: Type.String() }) }),
  ], { description: 'Authorization sent with the step: {bearer: TOKEN} or {basic: {username, password}} (use ${ENV} references).' })),
});

export const ComposeMerge = Strict({
  mode: Type.Optional(Type.Union([Type.Literal('nested'), Type.Literal('flat'), Type.Literal('by_key')], {
    default: 'nested',
    description: 'nested: one key per step; flat: the steps\' objects shallow-merged in step order; by_key: the steps\' arrays merged element by element on `key`.',
  })),
  key: Type.Optional(Type.String({ minLength: 1, description: 'by_key: the member that identifies an element (e.g. id).' })),
  into: Type.Optional(Type.String({ minLength: 1, description: 'by_key: the key of the merged array in the composed body (default items).' })),
});

export const Compose = Strict({
  steps: Type.Array(ComposeStep, { minItems: 1, maxItems: 64 }),
  timeout: Type.Optional(Duration),
  max_body: Type.Optional(Size),
  max_request_body: Type.Optional(Size),
  merge: Type.Optional(ComposeMerge),
}, { description: 'Calls several backends and answers with one JSON object; steps run in parallel unless one uses another\'s response. See docs/composition.md.' });

export type ComposeInput = Static<typeof Compose>;
export type ComposeStepInput = Static<typeof ComposeStep>;
