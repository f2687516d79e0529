/**
 * What request-transform and response-transform share: header and query edits, value
 * templates, and JSON body mapping — field operations on dot paths plus an optional JSONata
 * expression (a declarative language, evaluated by the `jsonata` library with a time and depth
 * box; never eval or vm). Everything is compiled once per binding.
 */
import { Type, type Static } from '@sinclair/typebox';
import type jsonata from 'jsonata';
import { ProblemError } from '../core/problem.js';
import { FRAMING_HEADERS } from '../core/headers.js';
import { paramName, splitQuery } from '../core/query.js';
import { decodeQueryText, encodeComponent, headerText, headerValueText, rawQueryParams } from '../compose/template.js';
import { MAX_JSON_DEPTH, isJsonType, parseJson as parseJsonText } from '../core/json.js';
import type { RequestCtx } from './types.js';
import { FIELD_NAME, NonEmptyKeyed } from './schema-types.js';
import { lazy } from '../core/lazy.js';

// (loaded by the first JSONata expression, not by every start)
const jsonataLib = lazy<typeof jsonata>('jsonata');

const HeaderName = Type.String({ pattern: FIELD_NAME, maxLength: 256 });
/** A dot path into a JSON body: `a.b.0.c` (numbers index arrays). */
const DotPath = Type.String({ minLength: 1, maxLength: 1024, description: 'A dot path into the JSON body, e.g. user.address.city or items.0.id.' });
const Template = Type.String({ maxLength: 8192, description: 'A value; {header.x}, {query.x}, {path.x} (route parameter), {consumer}, {client_ip}, {request_id} are replaced.' });

export const HeaderOps = Type.Object({
  remove: Type.Optional(Type.Array(HeaderName, { description: 'Fields removed.' })),
  rename: Type.Optional(Type.Record(Type.String({ pattern: FIELD_NAME }), HeaderName, { additionalProperties: false, description: 'Fields renamed (old: new).' })),
  set: Type.Optional(Type.Record(Type.String({ pattern: FIELD_NAME }), Template, { additionalProperties: false, description: 'Fields set (replacing any of the same name).' })),
  add: Type.Optional(Type.Record(Type.String({ pattern: FIELD_NAME }), Template, { additionalProperties: false, description: 'Fields added when absent.' })),
  append: Type.Optional(Type.Record(Type.String({ pattern: FIELD_NAME }), Template, { additionalProperties: false, description: 'Fields added even when present.' })),
}, { additionalProperties: false });

export const QueryOps = Type.Object({
  remove: Type.Optional(Type.Array(Type.String({ minLength: 1 }))),
  rename: Type.Optional(NonEmptyKeyed(Type.String({ minLength: 1 }))),
  set: Type.Optional(NonEmptyKeyed(Template)),
  add: Type.Optional(NonEmptyKeyed(Template)),
}, { additionalProperties: false });

export const JsonOps = Type.Object({
  unwrap: Type.Optional(Type.String({ minLength: 1, description: 'Replace the body by the value at this path (out of an envelope). Runs first.' })),
  expression: Type.Optional(Type.String({ minLength: 1, maxLength: 65536, description: 'A JSONata expression over the body; its result becomes the body. $request holds method, path, query, headers, params, consumer.' })),
  select: Type.Optional(Type.Array(DotPath, { description: 'Keep only these paths.' })),
  remove: Type.Optional(Type.Array(DotPath, { description: 'Remove these paths.' })),
  rename: Type.Optional(Type.Record(Type.String({ minLength: 1 }), DotPath, { description: 'Move the value at a path to another path (old: new).' })),
  set: Type.Optional(Type.Record(Type.String({ minLength: 1 }), Type.Unknown(), { description: 'Set paths to JSON values (strings are templates).' })),
  wrap: Type.Optional(Type.String({ minLength: 1, description: 'Put the body under this key (into an envelope). Runs last.' })),
  each: Type.Optional(Type.Boolean({ default: true, description: 'When the body is an array, apply select/remove/rename/set to each element.' })),
}, { additionalProperties: false });

export type HeaderOps = Static<typeof HeaderOps>;
export type QueryOps = Static<typeof QueryOps>;
export type JsonOps = Static<typeof JsonOps>;

/** Segments that would reach an object's prototype: refused in every path. */
const FORBIDDEN = new Set(['__proto__', 'prototype', 'constructor']);

export function splitPath(p: string): string[] {
  const segs = p.split('.');
  for (const s of segs) {
    if (s === '') throw new Error(`empty segment in path "${p}"`);
    if (FORBIDDEN.has(s)) throw new Error(`path "${p}" uses the reserved name "${s}"`);
  }
  return segs;
}

// ---------------------------------------------------------------------------------------------
// Templates

type Part = string | ((ctx: RequestCtx) => string);

/**
 * A route parameter (as the router captured it, percent-encoded) re-encoded as one path
 * segment's text: decoded, then encoded as a URI component (so `%2F` stays data, never a `/`).
 */
function paramForPath(raw: string): string {
  let v: string;
  try {
    v = decodeURIComponent(raw);
  } catch {
    throw new ProblemError('bad-request', 'a path parameter is not valid UTF-8 once percent-decoded');
  }
  return encodeForPath(v);
}

/**
 * A route parameter as text (for a query, a field or a JSON string): decoded once. Not UTF-8
 * once decoded: the client's error on the request side (`strict`), as in a path; an answer's
 * fields cannot refuse the request, they keep it as it came.
 */
function paramText(raw: string, strict: boolean): string {
  if (!raw.includes('%')) return raw;
  try {
    return decodeURIComponent(raw);
  } catch {
    if (strict) throw new ProblemError('bad-request', 'a path parameter is not valid UTF-8 once percent-decoded');
    return raw;
  }
}

/**
 * In a path, a value that is a whole segment by itself (a literal `/` before it, `/` or the end
 * after it) may not be empty: `/users/{query.u}/orders` without `u` would be `/users//orders`,
 * `/users/orders` to an upstream that merges slashes (as the router does), and
 * `/users/{query.u}` would be `/users/`, the collection. Wraps such parts of a template's
 * literal/value list in place (request side: the client's error, 400).
 */
export function segmentValues(parts: (string | number | ((ctx: RequestCtx) => string))[]): void {
  for (let i = 1; i < parts.length; i++) {
    const f = parts[i]!;
    const prev = parts[i - 1];
    const next = parts[i + 1];
    if (typeof f !== 'function' || typeof prev !== 'string' || !prev.endsWith('/')) continue;
    if (next !== undefined && (typeof next !== 'string' || (next === '' ? i + 2 < parts.length : !next.startsWith('/')))) continue;
    parts[i] = (c) => {
      const v = f(c);
      if (v === '') throw new ProblemError('bad-request', 'a value for the rewritten path is empty: it would leave a path segment empty');
      return v;
    };
  }
}

function encodeForPath(v: string): string {
  // (NUL: servers in C, PHP's and older Java file APIs end the path there; the router refuses %00 too)
  if (v.includes('\0')) throw new ProblemError('bad-request', 'a value for the rewritten path holds a NUL character');
  const e = encodeComponent(v);
  if (e === null) throw new ProblemError('bad-request', 'a value for the rewritten path is not well-formed Unicode');
  return e;
}

/**
 * `{header.x}`, `{query.x}`, `{path.x}`, `{consumer}`, `{client_ip}`, `{request_id}`; `{{` is a
 * literal brace. In the 'path' context every value is percent-encoded as a URI component (a
 * value is data in one segment: it cannot add a `/`, `?`, `#` or a raw byte to the path).
 */
export function compileTemplate(t: string, context: 'text' | 'path' | 'header' = 'text', strict = true): (ctx: RequestCtx) => string {
  const path = context === 'path';
  const parts: Part[] = [];
  const re = /\{\{|\}\}|\{([a-z_]+)(?:\.([^{}]+))?\}/g;
  let last = 0;
  for (let m = re.exec(t); m !== null; m = re.exec(t)) {
    parts.push(t.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[0] === '{{' || m[0] === '}}') {
      parts.push(m[0][0]!);
      continue;
    }
    const [, kind, name] = m;
    switch (kind) {
      case 'header': {
        const n = name!.toLowerCase();
        // (into a field its bytes as they came; into a path, query or JSON string the text they are)
        parts.push(context === 'header' ? (c) => c.header(n) ?? '' : (c) => headerValueText(c.header(n) ?? ''));
        break;
      }
      case 'query': parts.push(queryPart(name!, strict)); break;
      // (a route parameter comes percent-encoded from the router: decoded once, to be encoded once where it goes)
      case 'path': parts.push(path ? (c) => paramForPath(c.params[name!] ?? '') : (c) => paramText(c.params[name!] ?? '', strict)); break;
      case 'consumer': parts.push((c) => c.consumer?.name ?? c.identity ?? ''); break;
      case 'client_ip': parts.push((c) => c.clientIp); break;
      case 'request_id': parts.push((c) => c.requestId); break;
      default: throw new Error(`unknown template "{${kind}${name ? '.' + name : ''}}" (known: header.x, query.x, path.x, consumer, client_ip, request_id)`);
    }
    if (path && kind !== 'path') {
      const f = parts.pop() as (c: RequestCtx) => string;
      parts.push((c) => encodeForPath(f(c)));
    }
  }
  parts.push(t.slice(last));
  if (path) segmentValues(parts);
  const fixed = parts.filter((p) => p !== '');
  if (fixed.every((p) => typeof p === 'string')) {
    const s = fixed.join('');
    return () => s;
  }
  return (ctx) => {
    let s = '';
    for (const p of fixed) s += typeof p === 'string' ? p : p(ctx);
    return s;
  };
}

const queryParams = (q: string) => new URLSearchParams(q.length > 1 ? q.slice(1) : '');

/**
 * `{query.x}`: the parameter's first value as form text. `strict` (the request side): one
 * whose escapes are not UTF-8 (`%FF`) is the client's error, 400, never sent on as U+FFFD,
 * another value than the client's; an answer's fields cannot refuse the request, so there it
 * is read as URLSearchParams reads it.
 */
function queryPart(name: string, strict: boolean): (ctx: RequestCtx) => string {
  if (!strict) return (c) => queryParams(c.query).get(name) ?? '';
  return (c) => {
    const raw = rawQueryParams(c.query.length > 1 ? c.query.slice(1) : '').get(name);
    if (raw === undefined) return '';
    const v = decodeQueryText(raw);
    if (v === null) throw new ProblemError('bad-request', `the query parameter "${name}" is not valid UTF-8 once percent-decoded`);
    return v;
  };
}

/**
 * A field value from a template (RFC 9110 §5.5): control characters (CR, LF, NUL... a template
 * could pull them from a query) become spaces; characters past U+00FF go as UTF-8 bytes.
 */
const safeValue = (v: string) => headerText(v.replace(/[\x00-\x08\x0a-\x1f\x7f]/g, ' '))!;

// ---------------------------------------------------------------------------------------------
// Headers (a flat name/value list)

export type HeaderEdit = (ctx: RequestCtx, list: string[]) => void;

/**
 * Fields a header transform may not touch: framing and connection management (the HTTP
 * stack's: a set Transfer-Encoding or Upgrade broke every request) and Host (the gateway sets
 * it per target).
 */
const NOT_EDITABLE = new Set([...FRAMING_HEADERS, 'host']);

function editable(o: HeaderOps): void {
  const names: [string, string][] = [
    ...(o.remove ?? []).map((n): [string, string] => ['remove', n]),
    ...Object.entries(o.rename ?? {}).flatMap(([a, b]): [string, string][] => [[`rename.${a}`, a], [`rename.${a}`, b]]),
    ...(['set', 'add', 'append'] as const).flatMap((op) => Object.keys(o[op] ?? {}).map((n): [string, string] => [`${op}.${n}`, n])),
  ];
  for (const [where, n] of names) {
    if (NOT_EDITABLE.has(n.toLowerCase())) throw new Error(`${where}: ${n.toLowerCase()} is the gateway's to write (framing, connection management, Host) and cannot be edited`);
  }
}

/** A request field's name as CGI, WSGI, Rack and PHP read it: `X_User` is `x-user` (HTTP_X_USER). */
const cgiName = (n: string): string => {
  const l = n.toLowerCase();
  return l.includes('_') ? l.replace(/_/g, '-') : l;
};
const lowerName = (n: string): string => n.toLowerCase();

/**
 * `strict`: the request side (templates: see queryPart). There `remove` and `set` take a
 * client's underscore spelling of the name too (`X_User_Id` for x-user-id), as the gateway
 * drops such spellings of its own fields (src/server/request.ts): an upstream that reads `_`
 * and `-` alike would take it for the field the config removed or set.
 */
export function compileHeaderOps(o: HeaderOps | undefined, strict = true): HeaderEdit | null {
  if (!o) return null;
  editable(o);
  const key = strict ? cgiName : lowerName;
  const remove = new Set((o.remove ?? []).map(key));
  const rename = Object.entries(o.rename ?? {}).map(([a, b]) => [a.toLowerCase(), b] as const);
  const set = Object.entries(o.set ?? {}).map(([k, v]) => [k, compileTemplate(v, 'header', strict)] as const);
  const add = Object.entries(o.add ?? {}).map(([k, v]) => [k, compileTemplate(v, 'header', strict)] as const);
  const append = Object.entries(o.append ?? {}).map(([k, v]) => [k, compileTemplate(v, 'header', strict)] as const);
  if (remove.size + rename.length + set.length + add.length + append.length === 0) return null;
  return (ctx, list) => {
    if (remove.size) for (let i = list.length - 2; i >= 0; i -= 2) if (remove.has(key(list[i]!))) list.splice(i, 2);
    for (const [from, to] of rename) for (let i = 0; i < list.length; i += 2) if (list[i]!.toLowerCase() === from) list[i] = to;
    for (const [k, v] of set) {
      const lk = key(k);
      for (let i = list.length - 2; i >= 0; i -= 2) if (key(list[i]!) === lk) list.splice(i, 2);
      list.push(k, safeValue(v(ctx)));
    }
    for (const [k, v] of add) {
      const lk = k.toLowerCase();
      let present = false;
      for (let i = 0; i < list.length; i += 2) if (list[i]!.toLowerCase() === lk) present = true;
      if (!present) list.push(k, safeValue(v(ctx)));
    }
    for (const [k, v] of append) list.push(k, safeValue(v(ctx)));
  };
}

// ---------------------------------------------------------------------------------------------
// Query (a '?...' string; untouched parameters keep their exact bytes)

/**
 * A template's value as a query parameter's: a lone surrogate (a consumer name or a JWT claim:
 * `"\ud800"` is valid JSON) has no UTF-8 form — the client's token, a 400 as in a path, not
 * encodeURIComponent's URIError (a 500).
 */
function queryValue(v: string): string {
  const e = encodeComponent(v);
  if (e === null) throw new ProblemError('bad-request', 'a value for the query is not well-formed Unicode');
  return e;
}

export function compileQueryOps(o: QueryOps | undefined): ((ctx: RequestCtx, q: string) => string) | null {
  if (!o) return null;
  const remove = new Set(o.remove ?? []);
  const rename = new Map(Object.entries(o.rename ?? {}));
  const set = Object.entries(o.set ?? {}).map(([k, v]) => [k, compileTemplate(v)] as const);
  const add = Object.entries(o.add ?? {}).map(([k, v]) => [k, compileTemplate(v)] as const);
  if (remove.size + rename.size + set.length + add.length === 0) return null;
  const setNames = new Set(set.map(([k]) => k));
  const setEncoded = set.map(([k, v]) => [encodeURIComponent(k), v] as const);
  return (ctx, q) => {
    // (`;` separates parameters too, as it does to Rack < 3, Python's old parse_qs and old
    // servlet containers: `?a=1;drop=x` must lose drop. Kept parameters keep their separator.)
    const parts = q.length > 1 ? splitQuery(q.slice(1)) : [];
    const out: string[] = []; // separator, parameter, separator, parameter...
    const present = new Set<string>();
    for (let i = 0; i < parts.length; i += 2) {
      const part = parts[i]!;
      if (part === '') continue;
      const sep = i === 0 ? '&' : parts[i - 1]!;
      const key = paramName(part);
      if (remove.has(key) || setNames.has(key)) continue;
      const to = rename.get(key);
      if (to !== undefined) {
        const eq = part.indexOf('=');
        present.add(to);
        out.push(sep, encodeURIComponent(to) + (eq === -1 ? '' : part.slice(eq)));
        continue;
      }
      present.add(key);
      out.push(sep, part);
    }
    for (const [k, v] of setEncoded) out.push('&', `${k}=${queryValue(v(ctx))}`);
    for (const [k, v] of add) if (!present.has(k)) out.push('&', `${encodeURIComponent(k)}=${queryValue(v(ctx))}`);
    // (the first parameter's separator is the '?')
    return out.length ? `?${out.slice(1).join('')}` : '';
  };
}

// ---------------------------------------------------------------------------------------------
// JSON bodies

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object';

function getPath(v: unknown, segs: readonly string[]): unknown {
  let cur = v;
  for (const s of segs) {
    if (!isObject(cur) || !Object.hasOwn(cur, s)) return undefined;
    cur = (cur as Record<string, unknown>)[s];
  }
  return cur;
}

/** Sets a path, making objects on the way (an array is indexed by number segments). */
function setPath(v: unknown, segs: readonly string[], value: unknown): void {
  let cur = v as Record<string, unknown>;
  for (let i = 0; i < segs.length - 1; i++) {
    const s = segs[i]!;
    let next = Object.hasOwn(cur, s) ? cur[s] : undefined;
    if (!isObject(next)) {
      next = {};
      defineOwn(cur, s, next);
    }
    cur = next as Record<string, unknown>;
  }
  defineOwn(cur, segs[segs.length - 1]!, value);
}

function defineOwn(o: Record<string, unknown>, k: string, v: unknown): void {
  if (Array.isArray(o) && !/^(0|[1-9][0-9]{0,6})$/.test(k)) return; // arrays take indexes only
  Object.defineProperty(o, k, { value: v, writable: true, enumerable: true, configurable: true });
}

function removePath(v: unknown, segs: readonly string[]): unknown {
  const parent = getPath(v, segs.slice(0, -1));
  const last = segs[segs.length - 1]!;
  if (!isObject(parent) || !Object.hasOwn(parent, last)) return undefined;
  const old = (parent as Record<string, unknown>)[last];
  if (Array.isArray(parent) && /^[0-9]+$/.test(last)) parent.splice(Number(last), 1);
  else delete (parent as Record<string, unknown>)[last];
  return old;
}

export interface JsonInput {
  ctx: RequestCtx;
  /** The request's headers as an object (for $request.headers). */
  headers: () => Record<string, string>;
}

/**
 * JSONata's guardrails per evaluation: a runaway expression (or a hostile body that makes one
 * run away) fails that request instead of holding the event loop.
 */
const EXPRESSION_LIMITS = { timeout: 100, stack: 200, sequence: 1_000_000 };

/**
 * Largest JSON text an expression's result may make, for a body of at most `maxBody` bytes:
 * JSONata values share their parts, so `orders.{"customer": $$.customer}` over a body with a
 * big `customer` and many orders is a small value whose text is the body times the orders
 * (900 kB x 2000: 8 s of JSON.stringify, 2 GB of memory, out of the time box). Past it: refused.
 */
export const resultLimit = (maxBody: number): number => Math.max(16 * 1024 * 1024, 4 * maxBody);

/** An expression's result would serialise to more than the limit (see resultLimit). */
export class ResultTooLarge extends Error {
  constructor(limit: number) {
    super(`the expression's result is larger than ${limit} bytes`);
  }
}

/**
 * Whether a value's JSON text is longer than `limit` (strings counted by their length, numbers
 * and literals roughly): iterative, every shared part counted each time it appears, and it stops
 * at the limit, so its cost is bounded by the limit, not by the value's expanded size.
 */
function longerThan(v: unknown, limit: number): boolean {
  let size = 0;
  const stack: unknown[] = [v];
  while (stack.length > 0) {
    const x = stack.pop();
    if (typeof x === 'string') size += x.length + 3;
    else if (x === null || typeof x !== 'object') size += 5;
    else if (Array.isArray(x)) {
      size += 2 + x.length;
      for (let i = 0; i < x.length; i++) stack.push(x[i]);
    } else {
      size += 2;
      for (const k in x) {
        if (!Object.hasOwn(x, k)) continue;
        size += k.length + 4;
        stack.push((x as Record<string, unknown>)[k]);
      }
    }
    if (size > limit) return true;
  }
  return false;
}

export type JsonTransform = (body: unknown, input: JsonInput) => Promise<unknown>;

/**
 * Compiles JSON operations; throws (config error) on a bad path or expression. `strict`:
 * templates of the request side (see queryPart). `maxBody`: the largest body it gets (bounds
 * an expression's result, see resultLimit).
 */
export function compileJsonOps(o: JsonOps | undefined, strict = true, maxBody = 1024 * 1024): JsonTransform | null {
  if (!o) return null;
  const limit = resultLimit(maxBody);
  const unwrap = o.unwrap !== undefined ? splitPath(o.unwrap) : null;
  const select = o.select?.map(splitPath) ?? null;
  const remove = (o.remove ?? []).map(splitPath);
  const rename = Object.entries(o.rename ?? {}).map(([a, b]) => [splitPath(a), splitPath(b)] as const);
  const set = Object.entries(o.set ?? {}).map(([p, v]) => [splitPath(p), typeof v === 'string' ? compileTemplate(v, 'text', strict) : v] as const);
  const wrap = o.wrap !== undefined ? splitPath(o.wrap) : null;
  const each = o.each !== false;
  let expr: ReturnType<typeof jsonata> | null = null;
  if (o.expression !== undefined) {
    try {
      expr = jsonataLib()(o.expression, EXPRESSION_LIMITS);
    } catch (e) {
      const err = e as { message?: string; position?: number };
      throw new Error(`invalid JSONata expression${err.position !== undefined ? ` at ${err.position}` : ''}: ${err.message ?? String(e)}`);
    }
  }
  if (!unwrap && !select && !remove.length && !rename.length && !set.length && !wrap && !expr) return null;

  const fields = (doc: unknown, ctx: RequestCtx): unknown => {
    if (!isObject(doc)) return doc;
    let d = doc;
    if (select !== null) {
      const kept: Record<string, unknown> = {};
      for (const p of select) {
        const v = getPath(d, p);
        if (v !== undefined) setPath(kept, p, v);
      }
      d = kept;
    }
    for (const p of remove) removePath(d, p);
    for (const [from, to] of rename) {
      const v = removePath(d, from);
      if (v !== undefined) setPath(d, to, v);
    }
    for (const [p, v] of set) setPath(d, p, typeof v === 'function' ? (v as (c: RequestCtx) => string)(ctx) : structuredClone(v));
    return d;
  };

  return async (body, input) => {
    let doc = body;
    if (unwrap !== null) doc = getPath(doc, unwrap) ?? null;
    if (expr !== null) doc = await evaluate(expr, doc, input, limit);
    if (select !== null || remove.length || rename.length || set.length) {
      doc = Array.isArray(doc) && each ? doc.map((e) => fields(e, input.ctx)) : fields(doc, input.ctx);
    }
    if (wrap !== null) {
      const w: Record<string, unknown> = {};
      setPath(w, wrap, doc);
      doc = w;
    }
    return doc;
  };
}

/** Route parameters as text (decoded once, as the query's are); one that is not UTF-8 once decoded stays as it came. */
const paramTexts = (params: Readonly<Record<string, string>>): Record<string, string> =>
  Object.fromEntries(Object.entries(params).map(([k, v]) => [k, paramText(v, false)]));

async function evaluate(expr: ReturnType<typeof jsonata>, doc: unknown, input: JsonInput, limit: number): Promise<unknown> {
  const ctx = input.ctx;
  const env = {
    request: {
      method: ctx.method, path: ctx.path, params: paramTexts(ctx.params),
      query: Object.fromEntries(queryParams(ctx.query)),
      headers: input.headers(),
      consumer: ctx.consumer?.name ?? null,
    },
  };
  const v: unknown = await expr.evaluate(doc, env);
  if (longerThan(v, limit)) throw new ResultTooLarge(limit);
  // JSONata's sequences are arrays with extra flags; a JSON round trip gives plain data.
  return v === undefined ? null : JSON.parse(JSON.stringify(v)) as unknown;
}

/** A media type is JSON (application/json or any +json). */
export { isJsonType };

/**
 * Parses a JSON body: UTF-8 (no silent U+FFFD), nested at most MAX_JSON_DEPTH levels (checked
 * before parsing: what follows recurses), no number past a double's range (it would go on as
 * null), errors naming the position, never echoing the bytes.
 */
export function parseJson(buf: Buffer, onError: (message: string) => ProblemError): unknown {
  const r = parseJsonText(buf, MAX_JSON_DEPTH, true);
  if (!r.ok) throw onError(r.message);
  return r.value;
}

// ---------------------------------------------------------------------------------------------
// What transforms read of a request (for the cache: its key is the client's method, host, path
// and query, looked up before request-transform runs and stored after response-transform)

/** ctx.vars key: the inputs (see transformInputs) the transforms that ran on this request read. */
export const TRANSFORM_INPUTS = 'transform-inputs';

/**
 * What templates read besides the request's path: 'h:NAME' a request field, 'q:NAME' a query
 * parameter, 'consumer', 'ip' (the client's address) and 'unique' (the request id, or an
 * expression reading $request: nothing a cache key holds). Added to `out`.
 */
export function templateInputs(t: string, out: Set<string>, requestId = true): void {
  const re = /\{\{|\}\}|\{([a-z_]+)(?:\.([^{}]+))?\}/g;
  for (let m = re.exec(t); m !== null; m = re.exec(t)) {
    switch (m[1]) {
      case 'header': out.add(`h:${m[2]!.toLowerCase()}`); break;
      case 'query': out.add(`q:${m[2]!}`); break;
      case 'consumer': out.add('consumer'); break;
      case 'client_ip': out.add('ip'); break;
      case 'request_id': if (requestId) out.add('unique'); break;
    }
  }
}

/**
 * The inputs of header and query edits and JSON field sets (values are templates; a renamed
 * field or parameter carries the client's value under another name), and of an expression
 * that reads $request. `side`: a request's own fields are inputs only on the request side (on
 * the response side header edits work on the answer's fields). Null when there is none.
 */
export function transformInputs(side: 'request' | 'response', headers?: HeaderOps, query?: QueryOps, json?: JsonOps, more: readonly string[] = []): readonly string[] | null {
  const out = new Set<string>();
  for (const t of more) templateInputs(t, out);
  // (a request field holding {request_id} is a correlation id like the gateway's own X-Request-Id,
  // which every upstream request carries and no key holds: answers stay storable)
  for (const ops of [headers?.set, headers?.add, headers?.append]) for (const t of Object.values(ops ?? {})) templateInputs(t, out, side === 'response');
  for (const ops of [query?.set, query?.add]) for (const t of Object.values(ops ?? {})) templateInputs(t, out);
  if (side === 'request') {
    for (const from of Object.keys(headers?.rename ?? {})) out.add(`h:${from.toLowerCase()}`);
    for (const from of Object.keys(query?.rename ?? {})) out.add(`q:${from}`);
  }
  for (const v of Object.values(json?.set ?? {})) if (typeof v === 'string') templateInputs(v, out);
  if (json?.expression !== undefined && json.expression.includes('$request')) out.add('unique');
  return out.size === 0 ? null : [...out];
}

/** Records a transform's inputs on the request (several transforms may run on one). */
export function recordInputs(ctx: RequestCtx, inputs: readonly string[]): void {
  const prev = ctx.vars[TRANSFORM_INPUTS] as readonly string[] | undefined;
  ctx.vars[TRANSFORM_INPUTS] = prev === undefined ? inputs : [...prev, ...inputs];
}
