/**
 * Request parameters as OpenAPI serializes them (style / explode), turned into plain values for
 * the schema validator, which then coerces strings to the schema's types (numbers, booleans,
 * arrays). Objects built here have no prototype: a parameter named `__proto__` is just a name.
 */

export type Location = 'path' | 'query' | 'header' | 'cookie';
/** What a parameter's schema says its value is (looked up through $refs); null: anything. */
export type ParamShape = 'array' | 'object' | 'primitive';

export interface ParamSpec {
  name: string;
  in: Location;
  required: boolean;
  style: string;
  explode: boolean;
  shape: ParamShape;
  /** Declared properties of an object parameter (form explode: each is its own query parameter). */
  properties: readonly string[];
  /** `content: {application/json: ...}` instead of `schema`: the value is JSON text. */
  json: boolean;
}

export type Dict<T> = Record<string, T>;
export const dict = <T>(): Dict<T> => Object.create(null) as Dict<T>;

/** Percent-decoding that reports failure instead of throwing. */
export function decode(s: string, plusIsSpace: boolean): string | null {
  const t = plusIsSpace ? s.replace(/\+/g, ' ') : s;
  if (!t.includes('%')) return t;
  try {
    return decodeURIComponent(t);
  } catch {
    return null;
  }
}

/**
 * Parses a query string (with or without its '?') or a form body into name -> values, in
 * order. A pair that does not decode is reported by name (or raw) in `bad`.
 */
export function parseQuery(raw: string): { values: Map<string, string[]>; bad: string[] } {
  const values = new Map<string, string[]>();
  const bad: string[] = [];
  const s = raw.startsWith('?') ? raw.slice(1) : raw;
  if (s === '') return { values, bad };
  for (const pair of s.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const k = decode(eq === -1 ? pair : pair.slice(0, eq), true);
    const v = decode(eq === -1 ? '' : pair.slice(eq + 1), true);
    if (k === null || v === null) {
      bad.push(k ?? pair.slice(0, eq === -1 ? pair.length : eq));
      continue;
    }
    const list = values.get(k);
    if (list) list.push(v);
    else values.set(k, [v]);
  }
  return { values, bad };
}

/** Cookie header -> name -> its values, in the order sent (browsers send the most specific first). */
export function parseCookies(header: string | undefined): Map<string, string[]> {
  const out = new Map<string, string[]>();
  if (!header) return out;
  for (const part of header.split(/;\s*/)) {
    const eq = part.indexOf('=');
    if (eq <= 0) continue;
    const k = part.slice(0, eq).trim();
    let v = part.slice(eq + 1).trim();
    if (v.startsWith('"') && v.endsWith('"') && v.length >= 2) v = v.slice(1, -1);
    const list = out.get(k);
    if (list) list.push(v);
    else out.set(k, [v]);
  }
  return out;
}

const DELIMITER: Dict<string> = Object.assign(dict<string>(), { form: ',', simple: ',', spaceDelimited: ' ', pipeDelimited: '|' });

/** `a,1,b,2` -> {a: '1', b: '2'}; `a=1,b=2` (explode) -> the same. */
function objectOf(items: string[], explode: boolean): Dict<string> {
  const o = dict<string>();
  if (explode) {
    for (const it of items) {
      const eq = it.indexOf('=');
      if (eq > 0) o[it.slice(0, eq)] = it.slice(eq + 1);
    }
  } else {
    for (let i = 0; i + 1 < items.length; i += 2) o[items[i]!] = items[i + 1]!;
  }
  return o;
}

/** A serialized value (path segment or header) in `simple` style, as the schema's shape wants it. */
export function simpleValue(raw: string, p: ParamSpec): unknown {
  if (p.json) return raw;
  if (p.shape === 'array') return raw === '' ? [] : raw.split(',');
  if (p.shape === 'object') return objectOf(raw.split(','), p.explode);
  return raw;
}

/**
 * The value of a query parameter, or undefined when absent. Repeated names give arrays (form,
 * explode); non-exploded arrays split on the style's delimiter; deepObject reads `name[key]`.
 */
export function queryValue(values: Map<string, string[]>, p: ParamSpec): unknown {
  if (p.shape === 'object' && !p.json) {
    if (p.style === 'deepObject') {
      const o = dict<unknown>();
      let found = false;
      const prefix = `${p.name}[`;
      for (const [k, v] of values) {
        if (k.startsWith(prefix) && k.endsWith(']')) {
          o[k.slice(prefix.length, -1)] = v.length === 1 ? v[0] : v;
          found = true;
        }
      }
      return found ? o : undefined;
    }
    if (p.explode) {
      // form, explode: each property is a parameter of its own.
      const o = dict<unknown>();
      let found = false;
      for (const k of p.properties) {
        const v = values.get(k);
        if (v) {
          o[k] = v.length === 1 ? v[0] : v;
          found = true;
        }
      }
      return found ? o : undefined;
    }
    const v = values.get(p.name);
    if (!v) return undefined;
    return objectOf(v[0]!.split(DELIMITER[p.style] ?? ','), false);
  }
  const v = values.get(p.name);
  if (!v) return undefined;
  if (p.shape === 'array' && !p.json) {
    if (p.explode && p.style === 'form') return v;
    const d = DELIMITER[p.style] ?? ',';
    return v.flatMap((x) => (x === '' ? [] : x.split(d)));
  }
  return v.length === 1 ? v[0] : v;
}
