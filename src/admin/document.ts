/**
 * The config document as the admin API sees it: helpers shared by the resources, derived ids,
 * which top-level keys belong to a node rather than to the document.
 */
import { createHash } from 'node:crypto';
import type { PathSegment } from '../config/errors.js';

export type Obj = Record<string, unknown>;

export const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The objects of a list in the document (a missing list is empty; indexes are kept). */
export function items(v: unknown): Obj[] {
  return Array.isArray(v) ? v.map((x) => (isObj(x) ? x : {})) : [];
}

/** The list under `key` of `o`, created when missing (for writes). */
export function listAt(o: Obj, key: string): unknown[] {
  const v = o[key];
  if (Array.isArray(v)) return v;
  const list: unknown[] = [];
  o[key] = list;
  return list;
}

/** A copy of `o` without `keys`. */
export function omit(o: Obj, keys: readonly string[]): Obj {
  const out: Obj = {};
  for (const [k, v] of Object.entries(o)) if (!keys.includes(k)) out[k] = v;
  return out;
}

/** Defines own, enumerable properties (never through a setter such as __proto__'s). */
export function assign(target: Obj, source: Obj): Obj {
  for (const [k, v] of Object.entries(source)) Object.defineProperty(target, k, { value: v, enumerable: true, writable: true, configurable: true });
  return target;
}

/** A copy of `o` where `from` (if present) is replaced in place by `to` = value; appended otherwise. */
export function replaceKey(o: Obj, from: string, to: string, value: unknown): Obj {
  const out: Obj = {};
  let placed = false;
  for (const [k, v] of Object.entries(o)) {
    if (k === from) {
      out[to] = value;
      placed = true;
    } else if (k !== to) out[k] = v;
  }
  if (!placed) out[to] = value;
  return out;
}

/** A UUID-shaped id derived from a kind and a name (stable for as long as the name is). */
export function derivedId(kind: string, name: string): string {
  const h = createHash('sha256').update(`turnpike-${kind}:${name}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${((parseInt(h[16]!, 16) & 0x3) | 0x8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** The name a route goes by (the compiler's): its `name`, or `<service>.<index>`. */
export function routeName(service: Obj, route: Obj, index: number): string {
  return typeof route['name'] === 'string' ? route['name'] : `${String(service['name'])}.${index}`;
}

export const tagsOf = (o: Obj): readonly string[] => (Array.isArray(o['tags']) ? o['tags'].filter((t): t is string => typeof t === 'string') : []);

export const samePath = (a: readonly PathSegment[], b: readonly PathSegment[]): boolean => a.length === b.length && a.every((s, i) => s === b[i]);

/** Top-level keys that belong to a node (its --config file), never part of the stored document: PUT /api/config refuses them (the list and its reasons: src/config/stores). */
export { NODE_LOCAL_KEYS } from '../config/stores/document.js';

/** The order keys are exported in (others follow in their own order). */
export const DOCUMENT_ORDER: readonly string[] = ['services', 'routes', 'consumers', 'plans', 'plugins'];

export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._~-]*$/;
