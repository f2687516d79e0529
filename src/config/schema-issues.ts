/**
 * Schema errors worded for people: the one message builder for the config's own keys
 * (load.ts) and every plugin's `config` (plugins/pipeline.ts). TypeBox's own messages
 * ("Expected union value", "Unexpected property") say neither what was given nor what fits.
 */
import type { ValueError } from '@sinclair/typebox/errors';
import { ValueErrorType } from '@sinclair/typebox/errors';
import { DURATION_PATTERN, SIZE_PATTERN } from './units.js';
import { formatPath, type PathSegment } from './errors.js';

/** What a duration or a size looks like (the words of the config's own Duration and Size). */
export const EXPECTED_DURATION = 'a duration: 250ms, 30s, 5m, 1h, 1d (a bare number is milliseconds)';
export const EXPECTED_SIZE = 'a size: 512b, 10kb, 8mb, 1gb (a bare number is bytes)';

export function pathOfPointer(pointer: string): PathSegment[] {
  if (pointer === '') return [];
  return pointer
    .split('/')
    .slice(1)
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((s) => (/^(0|[1-9][0-9]*)$/.test(s) ? Number(s) : s));
}

const lcFirst = (s: string) => s.charAt(0).toLowerCase() + s.slice(1).replace(/\.$/, '');

interface SchemaLike {
  description?: string;
  writeOnly?: boolean;
  pattern?: string;
  anyOf?: SchemaLike[];
  const?: unknown;
  properties?: Record<string, SchemaLike>;
  patternProperties?: Record<string, SchemaLike>;
  items?: SchemaLike;
}

/** A key whose value is a secret by its name (a password, a token, a key...), whatever the schema says. */
const SECRET_KEY = /pass|pwd|secret|token|key|credential|auth/i;

/** The schema of `key` inside an object value of `schema` (any union member that names it). */
function propertySchema(schema: SchemaLike | undefined, key: string): SchemaLike | undefined {
  if (schema === undefined) return undefined;
  const own = schema.properties?.[key];
  if (own !== undefined) return own;
  for (const m of schema.anyOf ?? []) {
    const s = propertySchema(m, key);
    if (s !== undefined) return s;
  }
  return undefined;
}

/**
 * A value as quoted in an error: inside objects, the values of writeOnly members and of keys
 * named like a secret (`password`, `api_key`, `token`...: possibly an unknown key the schema
 * cannot mark) are masked, at any depth. Errors reach logs and admin API answers.
 */
function quotable(value: unknown, schema: SchemaLike | undefined, depth = 0): unknown {
  if (value === null || typeof value !== 'object' || depth > 32) return value;
  if (Array.isArray(value)) return value.map((v) => quotable(v, schema?.items, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    const sub = propertySchema(schema, k);
    out[k] = sub?.writeOnly === true || (SECRET_KEY.test(k) && (typeof v === 'string' || typeof v === 'number')) ? '***' : quotable(v, sub, depth + 1);
  }
  return out;
}

/** What a union accepts, in words: a duration, a size, its description, or its literals. */
function expectedOf(schema: SchemaLike): string | undefined {
  const members = schema.anyOf ?? [];
  if (members.some((m) => m.pattern === DURATION_PATTERN)) return EXPECTED_DURATION;
  if (members.some((m) => m.pattern === SIZE_PATTERN)) return EXPECTED_SIZE;
  if (schema.description) return lcFirst(schema.description);
  if (members.length > 0 && members.every((m) => m.const !== undefined)) return `one of ${members.map((m) => JSON.stringify(m.const)).join(', ')}`;
  return undefined;
}

/** The issues (path below the schema's root, message) of a value's schema errors. */
export function schemaIssues(errors: Iterable<ValueError>): { path: PathSegment[]; message: string }[] {
  const out: { path: PathSegment[]; message: string }[] = [];
  const seen = new Set<string>();
  for (const e of errors) {
    const path = pathOfPointer(e.path);
    let message = lcFirst(e.message);
    const schema = e.schema as SchemaLike;
    // A secret (writeOnly) is never quoted back: errors reach logs.
    const given = schema.writeOnly === true ? 'invalid value' : `invalid value ${JSON.stringify(quotable(e.value, schema))}`;
    if (e.type === ValueErrorType.ObjectAdditionalProperties) {
      // a map whose keys are names (plans, header names, statuses): the key is not such a name
      const patterns = schema.properties === undefined && schema.patternProperties ? Object.keys(schema.patternProperties) : [];
      const key = String(path[path.length - 1]);
      message = patterns.length === 0 ? `unknown key "${key}"` : key === '' ? 'an empty key ""' : `invalid key "${key}" (must match ${patterns.join(' or ')})`;
    }
    else if (e.type === ValueErrorType.ObjectRequiredProperty) message = 'is required';
    else if (e.type === ValueErrorType.Union) {
      const expected = expectedOf(schema);
      message = expected ? `${given}: expected ${expected}` : given;
    } else if (e.type === ValueErrorType.StringPattern) {
      message = `${given}${schema.description ? `: expected ${lcFirst(schema.description)}` : ` (must match ${schema.pattern})`}`;
    }
    const key = formatPath(path);
    if (seen.has(key)) continue; // first (most relevant) error per path
    seen.add(key);
    out.push({ path, message });
  }
  // Drop errors on a parent when a child already explains it (union noise).
  return out
    .filter((i) => !out.some((o) => o !== i && o.path.length > i.path.length && i.path.every((s, n) => o.path[n] === s)));
}
