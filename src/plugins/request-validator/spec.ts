/**
 * OpenAPI documents: reading (YAML or JSON), local `$ref`s, and the schema rewrites that make
 * them plain JSON Schema for ajv:
 *
 * - OpenAPI 3.0 (its own draft-04-like dialect): `nullable: true` -> `type: [t, 'null']` (or an
 *   anyOf with null), boolean `exclusiveMinimum`/`exclusiveMaximum` -> numeric ones. 3.1 schemas
 *   are JSON Schema 2020-12 already.
 * - readOnly properties are not required in requests, writeOnly ones not in responses (two
 *   rewritten copies of the document: one per direction).
 * - `uniqueItems` -> a linear-time keyword (ajv's own compares object items pairwise: O(n²) on a
 *   hostile array).
 * - `pattern`s with a quantified group that itself contains a quantifier (`(a+)+`, `(\w+\s?)*`)
 *   are reported: backtracking regular expressions take exponential time on such patterns.
 */
import { parse as parseYaml } from 'yaml';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type JsonObject = { [k: string]: Json };

export const isObject = (v: unknown): v is JsonObject => v !== null && typeof v === 'object' && !Array.isArray(v);

/** The keyword uniqueItems is rewritten to. */
export const UNIQUE_KEYWORD = 'x-turnpike-unique-items';

/** Parses a document's text: JSON when it looks like JSON, else YAML (1.2 core schema, alias count bounded). */
export function parseDocumentText(text: string): unknown {
  const t = text.trimStart();
  if (t.startsWith('{')) {
    try {
      return JSON.parse(t);
    } catch {
      /* YAML flow mappings start with '{' too */
    }
  }
  return parseYaml(text, { maxAliasCount: 1000, prettyErrors: true });
}

export type OasVersion = '3.0' | '3.1';

export function openapiVersion(doc: unknown): OasVersion {
  if (!isObject(doc)) throw new Error('the OpenAPI document is not an object');
  if (typeof doc['swagger'] === 'string') throw new Error(`Swagger ${doc['swagger']} is not supported: convert it to OpenAPI 3 first`);
  const v = doc['openapi'];
  if (typeof v !== 'string') throw new Error('the document has no "openapi" version field');
  if (/^3\.0(\.|$)/.test(v)) return '3.0';
  if (/^3\.[12](\.|$)/.test(v)) return '3.1';
  throw new Error(`OpenAPI ${v} is not supported (3.0.x and 3.1.x are)`);
}

export const escapePointer = (s: string) => s.replace(/~/g, '~0').replace(/\//g, '~1');
const unescapePointer = (s: string) => s.replace(/~1/g, '/').replace(/~0/g, '~');

/** A JSON pointer as a URI fragment (for `$ref`s handed to ajv). */
export const pointerFragment = (pointer: string) => pointer.split('/').map((s) => encodeURIComponent(s).replace(/%7E/gi, '~')).join('/');

/** The value at a JSON pointer (`/a/b`), or undefined. */
export function atPointer(doc: unknown, pointer: string): unknown {
  if (pointer === '') return doc;
  let cur: unknown = doc;
  for (const raw of pointer.slice(1).split('/')) {
    const k = unescapePointer(raw);
    if (Array.isArray(cur)) cur = /^(0|[1-9][0-9]*)$/.test(k) ? cur[Number(k)] : undefined;
    else if (isObject(cur)) cur = Object.prototype.hasOwnProperty.call(cur, k) ? cur[k] : undefined;
    else return undefined;
    if (cur === undefined) return undefined;
  }
  return cur;
}

/** The pointer a local `$ref` names (`#/components/schemas/Pet` -> `/components/schemas/Pet`); other refs are an error. */
export function refPointer(ref: string, where: string): string {
  if (!ref.startsWith('#')) throw new Error(`${where}: $ref "${ref}" points outside the document (only local "#/..." references are supported)`);
  let frag: string;
  try {
    frag = decodeURIComponent(ref.slice(1));
  } catch {
    throw new Error(`${where}: $ref "${ref}" is not a valid URI fragment`);
  }
  if (frag !== '' && !frag.startsWith('/')) throw new Error(`${where}: $ref "${ref}" is not a JSON pointer`);
  return frag;
}

/** Follows `$ref`s (parameters, request bodies, responses, headers, path items) to the object they name, with its pointer. */
export function deref(doc: unknown, value: unknown, pointer: string): { value: JsonObject; pointer: string } {
  let v = value;
  let p = pointer;
  for (let hops = 0; isObject(v) && typeof v['$ref'] === 'string'; hops++) {
    if (hops > 32) throw new Error(`${p}: $ref chain too long (a cycle?)`);
    const target = refPointer(v['$ref'], p);
    const next = atPointer(doc, target);
    if (next === undefined) throw new Error(`${p}: $ref "${v['$ref']}" names nothing in the document`);
    v = next;
    p = target;
  }
  if (!isObject(v)) throw new Error(`${p}: expected an object`);
  return { value: v, pointer: p };
}

// Keywords whose value is a schema, an array of schemas, or a map of schemas (JSON Schema
// drafts 4 to 2020-12): the rewrite walks only these, never data (enum, const, default, examples).
const SCHEMA_KEYS = ['items', 'additionalItems', 'additionalProperties', 'not', 'if', 'then', 'else', 'contains', 'propertyNames', 'unevaluatedItems', 'unevaluatedProperties', 'contentSchema'];
const SCHEMA_ARRAY_KEYS = ['allOf', 'anyOf', 'oneOf', 'prefixItems', 'items'];
const SCHEMA_MAP_KEYS = ['properties', 'patternProperties', '$defs', 'definitions', 'dependentSchemas'];

/**
 * The schema at `pointer` of `doc` and every schema it reaches (subschemas, local `$ref`
 * targets), each once (`seen`, shared across calls on one document), with its pointer.
 * Iterative: a hostile (or generated) document may nest deeply. A `$ref` that names nothing is
 * passed over (ajv reports it when compiling).
 */
function* reachableSchemas(doc: unknown, pointer: string, seen: Set<object>): Generator<[JsonObject, string]> {
  const work: [unknown, string][] = [[atPointer(doc, pointer), pointer]];
  while (work.length) {
    const [s, p] = work.pop()!;
    if (!isObject(s) || seen.has(s)) continue;
    seen.add(s);
    yield [s, p];
    if (typeof s['$ref'] === 'string' && s['$ref'].startsWith('#')) {
      try {
        const target = refPointer(s['$ref'], p);
        work.push([atPointer(doc, target), target]);
      } catch {
        /* ajv reports it when compiling */
      }
    }
    for (const k of SCHEMA_KEYS) if (isObject(s[k])) work.push([s[k], `${p}/${k}`]);
    for (const k of SCHEMA_ARRAY_KEYS) {
      const a = s[k];
      if (Array.isArray(a)) a.forEach((x, i) => work.push([x, `${p}/${k}/${i}`]));
    }
    for (const k of SCHEMA_MAP_KEYS) {
      const m = s[k];
      if (isObject(m)) for (const [name, x] of Object.entries(m)) work.push([x, `${p}/${k}/${escapePointer(name)}`]);
    }
  }
}

export interface RewriteOptions {
  /** 3.0: nullable, boolean exclusive bounds (also draft-04 JSON Schema). */
  legacy: boolean;
  direction: 'request' | 'response';
  /** Unsafe patterns found: (pointer, pattern). */
  unsafe?: { pointer: string; pattern: string }[];
}

/**
 * Rewrites, in place, the schema at `pointer` of `doc` and everything it reaches (subschemas,
 * local `$ref` targets). `seen` keeps shared and recursive schemas to one visit.
 */
export function rewriteSchema(doc: unknown, pointer: string, opts: RewriteOptions, seen: Set<object>): void {
  for (const [s, p] of reachableSchemas(doc, pointer, seen)) rewriteOne(s, p, opts);

  function rewriteOne(s: JsonObject, p: string, o: RewriteOptions): void {
    if (o.legacy) {
      for (const [ex, bound] of [['exclusiveMinimum', 'minimum'], ['exclusiveMaximum', 'maximum']] as const) {
        if (typeof s[ex] === 'boolean') {
          if (s[ex] === true && typeof s[bound] === 'number') {
            s[ex] = s[bound];
            delete s[bound];
          } else delete s[ex];
        }
      }
      if (s['nullable'] === true) {
        delete s['nullable'];
        if (Array.isArray(s['enum']) && !s['enum'].includes(null)) s['enum'] = [...s['enum'], null];
        const composite = ['$ref', 'allOf', 'anyOf', 'oneOf', 'not'].some((k) => k in s);
        if (typeof s['type'] === 'string' && !composite) s['type'] = [s['type'], 'null'];
        else if (composite || Array.isArray(s['type'])) {
          // The whole schema or null: move its keywords one level down.
          const inner: JsonObject = {};
          for (const k of Object.keys(s)) {
            if (k === 'description' || k === 'title') continue;
            inner[k] = s[k]!;
            delete s[k];
          }
          // (walked next: reachableSchemas reads the keywords after this rewrite)
          s['anyOf'] = [{ type: 'null' }, inner];
        }
        // (nullable without a type constrains nothing: null was allowed already)
      }
      if ('nullable' in s && typeof s['nullable'] === 'boolean') delete s['nullable'];
    }
    // readOnly properties: not required in requests; writeOnly ones: not in responses.
    if (Array.isArray(s['required']) && isObject(s['properties'])) {
      const props = s['properties'];
      const flag = o.direction === 'request' ? 'readOnly' : 'writeOnly';
      const skip = (name: string) => {
        let prop: unknown = props[name];
        for (let hops = 0; isObject(prop) && typeof prop['$ref'] === 'string' && hops < 8; hops++) {
          try {
            prop = atPointer(doc, refPointer(prop['$ref'], p));
          } catch {
            return false;
          }
        }
        return isObject(prop) && prop[flag] === true;
      };
      const req = s['required'].filter((n) => typeof n !== 'string' || !Object.prototype.hasOwnProperty.call(props, n) || !skip(n));
      if (req.length !== s['required'].length) s['required'] = req;
    }
    if (s['uniqueItems'] === true) {
      delete s['uniqueItems'];
      s[UNIQUE_KEYWORD] = true;
    } else if (s['uniqueItems'] === false) delete s['uniqueItems'];
    if (o.unsafe) {
      if (typeof s['pattern'] === 'string' && catastrophic(s['pattern'])) o.unsafe.push({ pointer: `${p}/pattern`, pattern: s['pattern'] });
      if (isObject(s['patternProperties'])) {
        for (const k of Object.keys(s['patternProperties'])) if (catastrophic(k)) o.unsafe.push({ pointer: `${p}/patternProperties`, pattern: k });
      }
    }
  }
}

export interface RefLoopMemo {
  /** Schemas walked (their own search done, or under way). */
  walked: Set<object>;
  /** Schemas no in-place loop goes through. */
  done: Set<object>;
}

// Keywords that apply their schemas to the same value (not to a part of it): a cycle through
// only these never reaches the end of the data.
const IN_PLACE_KEYS = ['not', 'if', 'then', 'else'];
const IN_PLACE_ARRAY_KEYS = ['allOf', 'anyOf', 'oneOf'];
const IN_PLACE_MAP_KEYS = ['dependentSchemas'];

/**
 * Finds a `$ref` loop that never goes into the data (`A: {$ref: B}, B: {$ref: A}`, or
 * `A: {allOf: [{$ref: A}]}`): ajv recurses without end on it (compiling or validating). Returns
 * the pointers of the loop (first repeated at the end), or null. A recursive schema that goes
 * into the data (`properties`, `items`...) is no loop. `memo` carries what was checked across
 * calls on one document (each schema is walked once).
 */
export function refLoop(doc: unknown, pointer: string, memo: RefLoopMemo = { walked: new Set(), done: new Set() }): string[] | null {
  // Every schema it reaches (as rewriteSchema walks them), each the start of a search.
  for (const [s, p] of reachableSchemas(doc, pointer, memo.walked)) {
    const loop = inPlaceLoop(doc, s, p, memo.done);
    if (loop !== null) return loop;
  }
  return null;
}

/** The in-place loop through schema `start` (at `pointer`), or null; `done`: schemas known to have none. */
function inPlaceLoop(doc: unknown, start: JsonObject, pointer: string, done: Set<object>): string[] | null {
  const onPath = new Map<object, number>();
  const path: string[] = [];
  // Iterative DFS: [schema, pointer, children left (null: not expanded yet)].
  const stack: [JsonObject, string, [unknown, string][] | null][] = [];
  const push = (v: unknown, p: string): string[] | null => {
    if (!isObject(v) || done.has(v)) return null;
    const at = onPath.get(v);
    if (at !== undefined) return [...path.slice(at), p];
    onPath.set(v, path.length);
    path.push(p);
    stack.push([v, p, null]);
    return null;
  };
  let loop = push(start, pointer);
  while (loop === null && stack.length) {
    const top = stack[stack.length - 1]!;
    if (top[2] === null) {
      const [s, p] = top;
      const next: [unknown, string][] = [];
      if (typeof s['$ref'] === 'string' && s['$ref'].startsWith('#')) {
        try {
          const target = refPointer(s['$ref'], p);
          next.push([atPointer(doc, target), target]);
        } catch {
          /* reported elsewhere */
        }
      }
      for (const k of IN_PLACE_KEYS) if (isObject(s[k])) next.push([s[k], `${p}/${k}`]);
      for (const k of IN_PLACE_ARRAY_KEYS) {
        const a = s[k];
        if (Array.isArray(a)) a.forEach((x, i) => next.push([x, `${p}/${k}/${i}`]));
      }
      for (const k of IN_PLACE_MAP_KEYS) {
        const m = s[k];
        if (isObject(m)) for (const [name, x] of Object.entries(m)) next.push([x, `${p}/${k}/${escapePointer(name)}`]);
      }
      top[2] = next.reverse();
    }
    const child = top[2]!.pop();
    if (child) loop = push(child[0], child[1]);
    else {
      stack.pop();
      path.pop();
      onPath.delete(top[0]);
      done.add(top[0]);
    }
  }
  return loop;
}

/**
 * Whether a regular expression has a repeated group that itself contains a repetition (star
 * height > 1): the classic shape of exponential backtracking (`(a+)+`, `(\w+\s?)*$`,
 * `^(([a-z])+.)+$`). A heuristic: overlapping alternatives under one repetition (`(a|a)*`) and
 * polynomial cases (`\s*\s*$`) are not found.
 */
export function catastrophic(pattern: string): boolean {
  // One frame per open group: whether a repetition occurs inside it.
  const frames: boolean[] = [false];
  let i = 0;
  const n = pattern.length;
  /** Reads a quantifier at i (consuming it): 'rep' for one that repeats (*, +, {n,}, {n,m} with m > 1), 'opt' for ?/{0,1}, null. */
  const quantifier = (): 'rep' | 'opt' | null => {
    const c = pattern[i];
    let q: 'rep' | 'opt' | null = null;
    if (c === '*' || c === '+') {
      i++;
      q = 'rep';
    } else if (c === '?') {
      i++;
      q = 'opt';
    } else if (c === '{') {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(pattern.slice(i));
      if (m) {
        i += m[0].length;
        const max = m[2] === undefined ? Number(m[1]) : m[3] === '' ? Infinity : Number(m[3]);
        q = max > 1 ? 'rep' : 'opt';
      }
    }
    if (q && (pattern[i] === '?' || pattern[i] === '+')) i++; // lazy / possessive marker
    return q;
  };
  while (i < n) {
    const c = pattern[i]!;
    if (c === '\\') {
      i += 2;
      if (/[pPu]/.test(pattern[i - 1] ?? '') && pattern[i] === '{') {
        const end = pattern.indexOf('}', i);
        i = end === -1 ? n : end + 1;
      }
      if (quantifier() === 'rep') frames[frames.length - 1] = true;
      continue;
    }
    if (c === '[') {
      i++;
      if (pattern[i] === '^') i++;
      if (pattern[i] === ']') i++;
      while (i < n && pattern[i] !== ']') i += pattern[i] === '\\' ? 2 : 1;
      i++;
      if (quantifier() === 'rep') frames[frames.length - 1] = true;
      continue;
    }
    if (c === '(') {
      frames.push(false);
      i++;
      // (?:, (?=, (?!, (?<=, (?<!, (?<name>
      if (pattern[i] === '?') {
        i++;
        if (pattern[i] === '<' && pattern[i + 1] !== '=' && pattern[i + 1] !== '!') while (i < n && pattern[i] !== '>') i++;
        i++;
      }
      continue;
    }
    if (c === ')') {
      i++;
      const inner = frames.length > 1 ? frames.pop()! : false;
      const q = quantifier();
      if (q === 'rep' && inner) return true;
      if (inner || q === 'rep') frames[frames.length - 1] = true;
      continue;
    }
    i++;
    if (quantifier() === 'rep') frames[frames.length - 1] = true;
  }
  return false;
}
