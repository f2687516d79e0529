/**
 * The ajv instances the validator compiles with: draft-07 (OpenAPI 3.0 after its rewrite,
 * JSON Schema draft-04/06/07) or 2020-12 (OpenAPI 3.1), with ajv-formats, OpenAPI's own
 * formats (int32, int64, float, double, byte, binary, password) and the linear-time
 * replacement of uniqueItems.
 */
import type { Ajv, ErrorObject, Options, ValidateFunction } from 'ajv';
import type { Ajv2020 } from 'ajv/dist/2020.js';
import { lazy } from '../../core/lazy.js';
import { UNIQUE_KEYWORD } from './spec.js';

export type AnyAjv = Ajv | Ajv2020;
export type { ErrorObject, ValidateFunction };

// (loaded by the first request-validator, not by every start)
const ajvDraft07 = lazy<{ Ajv: typeof Ajv }>('ajv');
const ajv2020 = lazy<{ Ajv2020: typeof Ajv2020 }>('ajv/dist/2020.js');
const addFormats = lazy<(ajv: AnyAjv) => AnyAjv>('ajv-formats');

/** A stable text for a JSON value: object keys sorted (JSON Schema equality: key order does not count). */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const keys = Object.keys(v).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

type UniqueFn = ((schema: boolean, data: unknown[]) => boolean) & { errors?: Partial<ErrorObject>[] };
const uniqueItems: UniqueFn = (schema, data) => {
  if (!schema || !Array.isArray(data) || data.length < 2) return true;
  const seen = new Map<string, number>();
  for (let i = 0; i < data.length; i++) {
    const k = canonical(data[i]);
    const j = seen.get(k);
    if (j !== undefined) {
      uniqueItems.errors = [{ keyword: 'uniqueItems', params: { i, j }, message: `must NOT have duplicate items (items ## ${j} and ${i} are identical)` }];
      return false;
    }
    seen.set(k, i);
  }
  return true;
};

const INT32 = 2 ** 31;

export interface AjvSetup {
  dialect: '2020-12' | 'draft-07';
  /** Parameters: strings coerced to the schema's types, a single value to an array. */
  coerce: boolean;
  warn(message: string): void;
}

export function makeAjv(s: AjvSetup): AnyAjv {
  const opts: Options = {
    strict: false,
    allErrors: true,
    coerceTypes: s.coerce ? 'array' : false,
    // Schemas come from the configuration; messages about them go to the gateway's log.
    logger: { log: () => {}, warn: (...a: unknown[]) => s.warn(a.map(String).join(' ')), error: (...a: unknown[]) => s.warn(a.map(String).join(' ')) },
  };
  const ajv: AnyAjv = s.dialect === '2020-12' ? new (ajv2020().Ajv2020)(opts) : new (ajvDraft07().Ajv)(opts);
  addFormats()(ajv);
  ajv.addFormat('int32', { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= -INT32 && n < INT32 });
  ajv.addFormat('int64', { type: 'number', validate: (n: number) => Number.isInteger(n) });
  ajv.addFormat('float', { type: 'number', validate: () => true });
  ajv.addFormat('double', { type: 'number', validate: () => true });
  ajv.addFormat('byte', { type: 'string', validate: /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/ });
  ajv.addFormat('binary', { type: 'string', validate: () => true });
  ajv.addFormat('password', { type: 'string', validate: () => true });
  ajv.addKeyword({ keyword: UNIQUE_KEYWORD, type: 'array', schemaType: 'boolean', errors: true, validate: uniqueItems as never });
  return ajv;
}
