/**
 * Merging the steps' values into the composed body (a JSON object):
 *
 * - nested (default): `{<key>: value, ...}`, key = the step's `as`, else its name;
 * - flat: the values that are objects shallow-merged in step order (a later step's member
 *   wins); a value that is not an object stays under its key;
 * - by_key: the values that are arrays merged element by element on `merge.key` (objects
 *   with the same key value shallow-merged in step order, first appearance fixes the order;
 *   elements without the key are appended as they are) into `merge.into`; other values stay
 *   under their key.
 *
 * Values are never modified (cached responses are shared between requests): merged objects are copies.
 */
import type { CompiledCompose, CompiledStep } from './config.js';

export interface StepValue {
  step: Pick<CompiledStep, 'key' | 'name'>;
  value: unknown;
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** An object without a prototype: a member named "__proto__" is a member like any other. */
const bare = (): Record<string, unknown> => Object.create(null) as Record<string, unknown>;

function copyInto(target: Record<string, unknown>, source: Record<string, unknown>): void {
  for (const k of Object.keys(source)) target[k] = source[k];
}

export function mergeValues(spec: CompiledCompose['merge'], values: readonly StepValue[]): Record<string, unknown> {
  const out = bare();
  if (spec.mode === 'nested') {
    for (const v of values) out[v.step.key] = v.value;
    return out;
  }
  if (spec.mode === 'flat') {
    for (const v of values) {
      if (isObject(v.value)) copyInto(out, v.value);
      else out[v.step.key] = v.value;
    }
    return out;
  }
  // by_key
  const byKey = new Map<string, Record<string, unknown>>();
  const items: unknown[] = [];
  let any = false;
  for (const v of values) {
    if (!Array.isArray(v.value)) {
      out[v.step.key] = v.value;
      continue;
    }
    any = true;
    for (const el of v.value) {
      const id = isObject(el) ? el[spec.key] : undefined;
      if (id === undefined || id === null || typeof id === 'object') {
        items.push(el);
        continue;
      }
      // 7 and "7" are different keys
      const k = `${typeof id}:${String(id)}`;
      const seen = byKey.get(k);
      if (seen === undefined) {
        const copy = bare();
        copyInto(copy, el as Record<string, unknown>);
        byKey.set(k, copy);
        items.push(copy);
      } else copyInto(seen, el as Record<string, unknown>);
    }
  }
  if (any) out[spec.into] = items;
  return out;
}
