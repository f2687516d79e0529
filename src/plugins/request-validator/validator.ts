/**
 * The validation core, compiled once per binding (never per request): operations of an
 * OpenAPI 3.0 / 3.1 document (or a set of plain JSON Schemas) with their ajv validators, the
 * path-template matcher, and the checks a request (and, optionally, a response) goes through.
 * No I/O here besides the request body the caller hands in, so it is tested directly.
 */
import { gunzipSync, inflateRawSync, inflateSync, brotliDecompressSync } from 'node:zlib';
import { makeAjv, type AnyAjv, type ErrorObject, type ValidateFunction } from './ajv.js';
import { duplicateKeyPath, parseJson } from '../../core/json.js';
import { CODED_CONTENT_HEADERS, asciiCompatible, codedContent, foreignCharset } from '../../core/headers.js';
import { PathMatcher } from './matcher.js';
import { upstreamReading } from '../../router/path.js';
import {
  decode, dict, parseCookies, parseQuery, queryValue, simpleValue,
  type Dict, type Location, type ParamShape, type ParamSpec,
} from './params.js';
import {
  atPointer, deref, escapePointer, isObject, openapiVersion, pointerFragment, refLoop, refPointer, rewriteSchema,
  type JsonObject, type OasVersion,
} from './spec.js';

export type In = Location | 'body' | 'status';
export interface Violation {
  in: In;
  /** JSON pointer into the part named by `in` (a parameter: `/name`; the body: `/user/name`). */
  path: string;
  message: string;
}

/** Copies of one declared cookie a request may send (each is checked). */
const MAX_COOKIE_COPIES = 16;

/** Violations listed in one answer, at most. */
export const MAX_VIOLATIONS = 20;

/**
 * Longest pointer shown in a violation: a pointer names the client's own property names and
 * parameter names, which may be as long as the body (a 1 MB key under additionalProperties:
 * false was echoed whole, in the errors list and again in the detail).
 */
export const MAX_SHOWN_PATH = 200;

/** A pointer as shown to the client: cut at MAX_SHOWN_PATH characters, with `...` saying so. */
function shownPath(path: string): string {
  return path.length <= MAX_SHOWN_PATH ? path : `${path.slice(0, MAX_SHOWN_PATH)}...`;
}

export type Outcome =
  | { ok: true }
  | { ok: false; code: 'validation-failed'; detail: string; errors: Violation[] }
  | { ok: false; code: 'bad-request' | 'unsupported-media-type' | 'no-route'; detail: string; headers?: Readonly<Record<string, string>> }
  | { ok: false; code: 'method-not-allowed'; detail: string; allow: string[] };

export interface RequestLike {
  method: string;
  path: string;
  /** Raw query string, with or without '?'. */
  query: string;
  header(name: string): string | undefined;
  /** Whether the request has a body, as far as its head tells: true, false, or null (HTTP/2 without Content-Length: read to know). */
  hasBody: boolean | null;
  /** Reads the whole body (bounded by the caller). */
  readBody(): Promise<Buffer>;
}

export interface ValidatorOptions {
  maxDepth: number;
  allowUnsafePatterns: boolean;
  /** Compile response validators too. */
  responses: boolean;
  warn(message: string): void;
}

interface Group {
  specs: ParamSpec[];
  validate: ValidateFunction;
}

type BodyKind = 'json' | 'form' | 'other';

interface Media {
  /** Declared media range, lower case, without parameters (`application/json`, `image/*`, `*\/*`). */
  range: string;
  /** Wildcard ranges as a pattern; null for an exact type. */
  pattern: RegExp | null;
  /** Literal characters of the range (the most specific wildcard wins). */
  specificity: number;
  json: ValidateFunction | null;
  form: { validate: ValidateFunction; specs: ParamSpec[] } | null;
}

interface Body {
  required: boolean;
  media: Media[];
}

interface ResponseSpec {
  media: Media[];
  headers: Group | null;
}

export interface Operation {
  /** operationId, or `METHOD template`. */
  id: string;
  method: string;
  template: string;
  path: Group | null;
  query: Group | null;
  header: Group | null;
  cookie: Group | null;
  body: Body | null;
  /** By status code, `2XX`-style range (upper case) or `default`; null: not checked. */
  responses: Map<string, ResponseSpec> | null;
}

/** With plain body_schema, the methods a body is required of (body_required). */
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH']);
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
/** OpenAPI: header parameters with these names are ignored (the media type and auth have their own places). */
const IGNORED_HEADERS = new Set(['accept', 'content-type', 'authorization']);

const DOC_REQ = 'https://turnpike.invalid/openapi/request.json';
const DOC_RES = 'https://turnpike.invalid/openapi/response.json';

export function mediaKind(type: string): BodyKind {
  if (type === 'application/json' || /^[a-z0-9!#$&^_.-]+\/[a-z0-9!#$&^_.+-]*\+json$/.test(type)) return 'json';
  if (type === 'application/x-www-form-urlencoded') return 'form';
  return 'other';
}

const charsetRefused = (charset: string): Outcome => ({ ok: false, code: 'unsupported-media-type', detail: `a request body is validated as UTF-8: charset ${JSON.stringify(charset)} is not accepted (send UTF-8; ISO-8859-x or windows-125x only for ASCII bytes)` });

/** `Application/JSON; charset=utf-8` -> `application/json` (null when absent or empty). */
export function mediaType(value: string | undefined): string | null {
  if (value === undefined) return null;
  const t = value.split(';')[0]!.trim().toLowerCase();
  return t === '' ? null : t;
}

function mediaEntry(range: string): Omit<Media, 'json' | 'form'> {
  const r = mediaType(range) ?? range.toLowerCase();
  if (!r.includes('*')) return { range: r, pattern: null, specificity: r.length };
  const source = r.split('*').map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*');
  return { range: r, pattern: new RegExp(`^${source}$`), specificity: r.replace(/\*/g, '').length };
}

/** The declared media range a request's type falls under: exact first, then the most specific wildcard. */
export function matchMedia<M extends { range: string; pattern: RegExp | null }>(media: readonly M[], type: string): M | null {
  let best: M | null = null;
  for (const m of media) {
    if (m.pattern === null) {
      if (m.range === type) return m;
    } else if (m.pattern.test(type) && best === null) best = m;
  }
  return best;
}

/** JSON pointer of an ajv error, with the property a required/additionalProperties error is about. */
function violations(where: In, errors: readonly ErrorObject[] | null | undefined, out: Violation[], prefix = ''): void {
  for (const e of errors ?? []) {
    let path = prefix + e.instancePath;
    let message = e.message ?? e.keyword;
    if (e.keyword === 'required' && typeof e.params['missingProperty'] === 'string') {
      path += `/${escapePointer(e.params['missingProperty'])}`;
      message = 'is required';
    } else if (e.keyword === 'additionalProperties' && typeof e.params['additionalProperty'] === 'string') {
      path += `/${escapePointer(e.params['additionalProperty'])}`;
      message = 'is not allowed (unknown property)';
    } else if (e.keyword === 'unevaluatedProperties' && typeof e.params['unevaluatedProperty'] === 'string') {
      path += `/${escapePointer(e.params['unevaluatedProperty'])}`;
      message = 'is not allowed (unevaluated property)';
    }
    if (out.length >= MAX_VIOLATIONS) return;
    if (!out.some((v) => v.in === where && v.path === path && v.message === message)) out.push({ in: where, path, message });
  }
}

/** A number as text, as JSON writes one: what a parameter coerced to a number or integer must look like. */
const NUMBER_TEXT = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$/;

/**
 * Parameter strings the validator's coercion would take for numbers although they are not
 * written as one (ajv coerces whatever JS's `==` equates: 0x1F, 0b11, ' 5', Infinity), by
 * pointer and path segments; null when there are none (the common case: nothing to check).
 */
function oddNumbers(data: unknown): [string, string[]][] | null {
  let out: [string, string[]][] | null = null;
  const walk = (v: unknown, segs: string[], depth: number) => {
    if (typeof v === 'string') {
      if (v !== '' && !NUMBER_TEXT.test(v) && !Number.isNaN(Number(v))) {
        (out ??= []).push([segs.map((k) => `/${escapePointer(k)}`).join(''), segs]);
      }
    } else if (v !== null && typeof v === 'object' && depth < 8) {
      for (const k of Object.keys(v)) walk((v as Record<string, unknown>)[k], [...segs, k], depth + 1);
    }
  };
  walk(data, [], 0);
  return out;
}

/** A parameter name as servers that do not take it as spelled read it: ASP.NET in any case, PHP with `.` and ` ` as `_`. */
const foldName = (name: string): string => name.toLowerCase().replace(/[. ]/g, '_');

/** Declared parameter names (exploded objects' properties too) by folded name, per group of specs; built on first use. */
const declaredByFold = new WeakMap<readonly ParamSpec[], { exact: Set<string>; folded: Map<string, string> }>();

/**
 * Parameters (query or form) sent under another spelling of a declared one: `?LIMIT=100000`
 * next to a declared `limit` is no `limit` here (unchecked, or an unknown property) and
 * `limit` to ASP.NET, whose binding ignores case; `user.id` is `user_id` to PHP.
 */
function respelled(values: Map<string, string[]>, specs: readonly ParamSpec[], where: In, errors: Violation[]): void {
  let d = declaredByFold.get(specs);
  if (d === undefined) {
    d = { exact: new Set(), folded: new Map() };
    for (const p of specs) for (const n of p.shape === 'object' && p.explode && p.style === 'form' ? [p.name, ...p.properties] : [p.name]) {
      d.exact.add(n);
      d.folded.set(foldName(n), n);
    }
    declaredByFold.set(specs, d);
  }
  if (d.folded.size === 0) return;
  for (const k of values.keys()) {
    if (d.exact.has(k)) continue;
    const declared = d.folded.get(foldName(k));
    if (declared !== undefined && errors.length < MAX_VIOLATIONS) {
      errors.push({ in: where, path: `/${escapePointer(k)}`, message: `is parameter ${JSON.stringify(declared)} to servers that read names in any case (ASP.NET) or . and space as _ (PHP): send it as spelled` });
    }
  }
}

/** Runs a compiled validator; a stack overflow (a hostile value against a recursive schema) is reported, not thrown. */
function run(validate: ValidateFunction, data: unknown): { ok: boolean; errors: ErrorObject[] | null; overflow?: true } {
  try {
    const ok = validate(data) as boolean;
    return { ok, errors: ok ? null : [...(validate.errors ?? [])] };
  } catch (e) {
    if (e instanceof RangeError) return { ok: false, errors: null, overflow: true };
    throw e;
  }
}

function summary(list: Violation[]): string {
  const shown = list.slice(0, 3).map((v) => `${v.in} ${v.path || '(root)'}: ${v.message}`).join('; ');
  return `${list.length}${list.length >= MAX_VIOLATIONS ? '+' : ''} violation${list.length === 1 ? '' : 's'}: ${shown}${list.length > 3 ? '; ...' : ''}`;
}

/** What a parameter's schema (through $refs, allOf) says the value is. */
function shapeOf(doc: unknown, schema: unknown, pointer: string, depth = 0): { shape: ParamShape; properties: string[] } {
  let s = schema;
  let p = pointer;
  for (let hops = 0; isObject(s) && typeof s['$ref'] === 'string' && hops < 16; hops++) {
    try {
      p = refPointer(s['$ref'], p);
    } catch {
      break;
    }
    s = atPointer(doc, p);
  }
  if (!isObject(s)) return { shape: 'primitive', properties: [] };
  const types = Array.isArray(s['type']) ? s['type'] : typeof s['type'] === 'string' ? [s['type']] : [];
  const props = isObject(s['properties']) ? Object.keys(s['properties']) : [];
  if (types.includes('array') || (!types.length && s['items'] !== undefined)) return { shape: 'array', properties: [] };
  if (types.includes('object') || (!types.length && props.length)) {
    const all = [...props];
    if (Array.isArray(s['allOf']) && depth < 8) s['allOf'].forEach((x, i) => all.push(...shapeOf(doc, x, `${p}/allOf/${i}`, depth + 1).properties));
    return { shape: 'object', properties: all };
  }
  for (const k of ['allOf', 'anyOf', 'oneOf']) {
    const list = s[k];
    if (!Array.isArray(list) || depth >= 8) continue;
    for (let i = 0; i < list.length; i++) {
      const r = shapeOf(doc, list[i], `${p}/${k}/${i}`, depth + 1);
      if (r.shape !== 'primitive') return r;
    }
  }
  return { shape: 'primitive', properties: [] };
}

const refTo = (base: string, pointer: string) => ({ $ref: `${base}#${pointerFragment(pointer)}` });

/** The validators of one document (or of plain schemas) and how requests find theirs. */
export class ApiValidator {
  private readonly matcher = new PathMatcher<Operation>();
  /** Base paths from servers[].url, longest first; '' (the paths as they are) last. */
  readonly basePaths: string[] = [''];
  /** Plain-schema mode: one operation for every request. */
  private single: Operation | null = null;
  readonly operations: Operation[] = [];

  private constructor(private readonly opts: ValidatorOptions) {}

  // ---- building -------------------------------------------------------------------------

  /** Compiles an OpenAPI 3.0 / 3.1 document. Throws with a message naming the place of a problem. */
  static openapi(input: unknown, opts: ValidatorOptions): ApiValidator {
    const version = openapiVersion(input);
    const v = new ApiValidator(opts);
    v.buildOpenapi(input as JsonObject, version);
    return v;
  }

  /** Plain JSON Schemas applied to every request of the binding. */
  static schemas(cfg: { body?: unknown; query?: unknown; header?: unknown; bodyRequired: boolean }, opts: ValidatorOptions): ApiValidator {
    const v = new ApiValidator(opts);
    v.buildSchemas(cfg);
    return v;
  }

  private buildOpenapi(original: JsonObject, version: OasVersion): void {
    const legacy = version === '3.0';
    const dialect = legacy ? 'draft-07' : '2020-12';
    const unsafe: { pointer: string; pattern: string }[] = [];
    const reqDoc = structuredClone(original);
    const resDoc = this.opts.responses ? structuredClone(original) : null;
    const seenReq = new Set<object>();
    const seenRes = new Set<object>();
    const loopMemo = { walked: new Set<object>(), done: new Set<object>() };
    /** Rewrites one schema location in both copies. */
    const prep = (pointer: string) => {
      rewriteSchema(reqDoc, pointer, { legacy, direction: 'request', unsafe }, seenReq);
      if (resDoc) rewriteSchema(resDoc, pointer, { legacy, direction: 'response' }, seenRes);
      // (in the original: the rewrites move keywords one level down, not the references)
      refLoopError(refLoop(original, pointer, loopMemo));
    };
    const warn = (m: string) => this.opts.warn(m);
    const ajvBody = makeAjv({ dialect, coerce: false, warn });
    const ajvParams = makeAjv({ dialect, coerce: true, warn });
    const ajvRes = resDoc ? makeAjv({ dialect, coerce: false, warn }) : null;
    const ajvResHeaders = resDoc ? makeAjv({ dialect, coerce: true, warn }) : null;

    this.basePaths.unshift(...serverBasePaths(original['servers']));

    const paths = original['paths'];
    if (paths !== undefined && !isObject(paths)) throw new Error('paths: must be an object');
    const compileAll: (() => void)[] = [];
    for (const [template, rawItem] of Object.entries(paths ?? {})) {
      if (!template.startsWith('/')) throw new Error(`paths: "${template}" must start with /`);
      const itemPtr = `/paths/${escapePointer(template)}`;
      const { value: item, pointer: ip } = deref(original, rawItem, itemPtr);
      for (const m of METHODS) {
        const raw = item[m];
        if (raw === undefined) continue;
        if (!isObject(raw)) throw new Error(`${ip}/${m}: must be an object`);
        const opPtr = `${ip}/${m}`;
        const method = m.toUpperCase();
        const id = typeof raw['operationId'] === 'string' ? raw['operationId'] : `${method} ${template}`;
        // Path-level parameters, overridden by the operation's (same name and location).
        const params = new Map<string, { p: JsonObject; ptr: string }>();
        for (const [list, base] of [[item['parameters'], `${ip}/parameters`], [raw['parameters'], `${opPtr}/parameters`]] as const) {
          if (list === undefined) continue;
          if (!Array.isArray(list)) throw new Error(`${base}: must be an array`);
          list.forEach((x, i) => {
            const r = deref(original, x, `${base}/${i}`);
            const name = r.value['name'];
            const where = r.value['in'];
            if (typeof name !== 'string' || !['path', 'query', 'header', 'cookie'].includes(where as string)) {
              throw new Error(`${base}/${i}: a parameter needs a name and in: path, query, header or cookie`);
            }
            params.set(`${where}:${where === 'header' ? name.toLowerCase() : name}`, { p: r.value, ptr: r.pointer });
          });
        }
        const op: Operation = { id, method, template, path: null, query: null, header: null, cookie: null, body: null, responses: null };
        const byLoc: Record<Location, { spec: ParamSpec; schemaPtr: string | null }[]> = { path: [], query: [], header: [], cookie: [] };
        for (const { p, ptr } of params.values()) {
          const loc = p['in'] as Location;
          const name = loc === 'header' ? (p['name'] as string).toLowerCase() : (p['name'] as string);
          if (loc === 'header' && IGNORED_HEADERS.has(name)) continue;
          let schemaPtr: string | null = null;
          let json = false;
          if (p['schema'] !== undefined) schemaPtr = `${ptr}/schema`;
          else if (isObject(p['content'])) {
            const [mt] = Object.keys(p['content']);
            if (mt !== undefined && isObject(p['content'][mt]) && p['content'][mt]['schema'] !== undefined) {
              schemaPtr = `${ptr}/content/${escapePointer(mt)}/schema`;
              json = mediaKind(mediaType(mt) ?? '') === 'json';
            }
          }
          if (schemaPtr) prep(schemaPtr);
          const shape = schemaPtr ? shapeOf(original, atPointer(original, schemaPtr), schemaPtr) : { shape: 'primitive' as const, properties: [] };
          const style = typeof p['style'] === 'string' ? p['style'] : loc === 'query' || loc === 'cookie' ? 'form' : 'simple';
          const explode = typeof p['explode'] === 'boolean' ? p['explode'] : style === 'form';
          byLoc[loc].push({
            spec: { name, in: loc, required: loc === 'path' || p['required'] === true, style, explode, shape: shape.shape, properties: shape.properties, json },
            schemaPtr,
          });
        }
        compileAll.push(() => {
          for (const loc of ['path', 'query', 'header', 'cookie'] as const) {
            const list = byLoc[loc];
            if (!list.length) continue;
            op[loc] = { specs: list.map((x) => x.spec), validate: compileGroup(ajvParams, DOC_REQ, list, `${opPtr} (${loc} parameters)`) };
          }
        });
        // Request body.
        if (raw['requestBody'] !== undefined) {
          const { value: rb, pointer: rbp } = deref(original, raw['requestBody'], `${opPtr}/requestBody`);
          const content = isObject(rb['content']) ? rb['content'] : {};
          const media: { entry: Omit<Media, 'json' | 'form'>; schemaPtr: string | null }[] = [];
          for (const [range, mo] of Object.entries(content)) {
            const schemaPtr = isObject(mo) && mo['schema'] !== undefined ? `${rbp}/content/${escapePointer(range)}/schema` : null;
            if (schemaPtr) prep(schemaPtr);
            media.push({ entry: mediaEntry(range), schemaPtr });
          }
          const body: Body = { required: rb['required'] === true, media: [] };
          op.body = body;
          compileAll.push(() => {
            for (const { entry, schemaPtr } of media) {
              const kind = entry.pattern ? 'json' : mediaKind(entry.range);
              const where = `${opPtr} (request body ${entry.range})`;
              const json = schemaPtr && kind === 'json' ? compile(ajvBody, refTo(DOC_REQ, schemaPtr), where) : null;
              let form: Media['form'] = null;
              if (schemaPtr && mediaKind(entry.range) === 'form') {
                const { properties } = shapeOf(original, atPointer(original, schemaPtr), schemaPtr);
                const specs = properties.map((name) => {
                  const sub = `${schemaPtr}/properties/${escapePointer(name)}`;
                  const sh = shapeOf(original, atPointer(original, sub), sub);
                  return { name, in: 'query' as const, required: false, style: 'form', explode: true, shape: sh.shape, properties: sh.properties, json: false };
                });
                form = { validate: compile(ajvParams, refTo(DOC_REQ, schemaPtr), where), specs };
              }
              body.media.push({ ...entry, json, form });
            }
            body.media.sort((a, b) => (a.pattern ? 1 : 0) - (b.pattern ? 1 : 0) || b.specificity - a.specificity);
          });
        }
        // Responses.
        if (resDoc && isObject(raw['responses'])) {
          const responses = new Map<string, ResponseSpec>();
          op.responses = responses;
          for (const [code, rr] of Object.entries(raw['responses'])) {
            const { value: resp, pointer: rp } = deref(original, rr, `${opPtr}/responses/${escapePointer(code)}`);
            const media: { entry: Omit<Media, 'json' | 'form'>; schemaPtr: string | null }[] = [];
            for (const [range, mo] of Object.entries(isObject(resp['content']) ? resp['content'] : {})) {
              const schemaPtr = isObject(mo) && mo['schema'] !== undefined ? `${rp}/content/${escapePointer(range)}/schema` : null;
              if (schemaPtr) prep(schemaPtr);
              media.push({ entry: mediaEntry(range), schemaPtr });
            }
            const headers: { spec: ParamSpec; schemaPtr: string | null }[] = [];
            for (const [hname, hr] of Object.entries(isObject(resp['headers']) ? resp['headers'] : {})) {
              const name = hname.toLowerCase();
              if (name === 'content-type') continue;
              const { value: h, pointer: hp } = deref(original, hr, `${rp}/headers/${escapePointer(hname)}`);
              const schemaPtr = h['schema'] !== undefined ? `${hp}/schema` : null;
              if (schemaPtr) prep(schemaPtr);
              const sh = schemaPtr ? shapeOf(original, atPointer(original, schemaPtr), schemaPtr) : { shape: 'primitive' as const, properties: [] };
              headers.push({ spec: { name, in: 'header', required: h['required'] === true, style: 'simple', explode: h['explode'] === true, shape: sh.shape, properties: sh.properties, json: false }, schemaPtr });
            }
            const spec: ResponseSpec = { media: [], headers: null };
            responses.set(/^[1-5]xx$/i.test(code) ? code.toUpperCase() : code, spec);
            compileAll.push(() => {
              for (const { entry, schemaPtr } of media) {
                const kind = entry.pattern ? 'json' : mediaKind(entry.range);
                spec.media.push({ ...entry, json: schemaPtr && kind === 'json' ? compile(ajvRes!, refTo(DOC_RES, schemaPtr), `${opPtr} (response ${code} ${entry.range})`) : null, form: null });
              }
              spec.media.sort((a, b) => (a.pattern ? 1 : 0) - (b.pattern ? 1 : 0) || b.specificity - a.specificity);
              if (headers.length) spec.headers = { specs: headers.map((x) => x.spec), validate: compileGroup(ajvResHeaders!, DOC_RES, headers, `${opPtr} (response ${code} headers)`) };
            });
          }
        }
        if (!this.matcher.add(template, method, op)) {
          const other = this.operations.find((o) => o.method === method && sameTemplate(o.template, template));
          throw new Error(`paths: "${template}" and "${other?.template ?? template}" are the same path template (${method})`);
        }
        this.operations.push(op);
      }
    }
    if (unsafe.length && !this.opts.allowUnsafePatterns) {
      const u = unsafe[0]!;
      throw new Error(`${u.pointer}: pattern ${JSON.stringify(u.pattern)} repeats a group that itself repeats: a backtracking regular expression can take exponential time on hostile input (${unsafe.length} such pattern${unsafe.length > 1 ? 's' : ''}; rewrite ${unsafe.length > 1 ? 'them' : 'it'}, or set allow_unsafe_patterns: true)`);
    }
    // Everything the operations reference was rewritten: now the documents go to ajv.
    ajvBody.addSchema(reqDoc as never, DOC_REQ, undefined, false);
    ajvParams.addSchema(reqDoc as never, DOC_REQ, undefined, false);
    ajvRes?.addSchema(resDoc as never, DOC_RES, undefined, false);
    ajvResHeaders?.addSchema(resDoc as never, DOC_RES, undefined, false);
    for (const c of compileAll) c();
  }

  private buildSchemas(cfg: { body?: unknown; query?: unknown; header?: unknown; bodyRequired: boolean }): void {
    const warn = (m: string) => this.opts.warn(m);
    const op: Operation = { id: 'schemas', method: '*', template: '*', path: null, query: null, header: null, cookie: null, body: null, responses: null };
    const unsafe: { pointer: string; pattern: string }[] = [];
    const prepared = (schema: unknown, where: string, coerce: boolean): { validate: ValidateFunction; schema: unknown } => {
      if (!isObject(schema)) throw new Error(`${where}: must be a JSON Schema object`);
      const s = structuredClone(schema) as JsonObject;
      const declared = typeof s['$schema'] === 'string' ? s['$schema'] : '';
      const modern = /2020-12|2019-09/.test(declared);
      const legacy = /draft-0[34]\b/.test(declared);
      if (legacy) delete s['$schema'];
      refLoopError(refLoop(s, ''), where);
      rewriteSchema(s, '', { legacy, direction: 'request', unsafe }, new Set());
      const ajv = makeAjv({ dialect: modern ? '2020-12' : 'draft-07', coerce, warn });
      return { validate: compile(ajv, s, where), schema: s };
    };
    if (cfg.body !== undefined) {
      const { validate } = prepared(cfg.body, 'body_schema', false);
      op.body = { required: cfg.bodyRequired, media: [{ ...mediaEntry('application/json'), json: validate, form: null }, { ...mediaEntry('application/*+json'), json: validate, form: null }] };
    }
    const group = (schema: unknown, where: string, loc: 'query' | 'header'): Group => {
      const { validate, schema: s } = prepared(schema, where, true);
      const props = isObject((s as JsonObject)['properties']) ? ((s as JsonObject)['properties'] as JsonObject) : {};
      const required = Array.isArray((s as JsonObject)['required']) ? ((s as JsonObject)['required'] as unknown[]).filter((x): x is string => typeof x === 'string') : [];
      const names = [...new Set([...Object.keys(props), ...required])];
      const specs = names.map((name): ParamSpec => {
        const sh = shapeOf(s, props[name], `/properties/${escapePointer(name)}`);
        return { name, in: loc, required: false, style: loc === 'query' ? 'form' : 'simple', explode: loc === 'query', shape: sh.shape, properties: sh.properties, json: false };
      });
      return { specs, validate };
    };
    if (cfg.query !== undefined) op.query = group(cfg.query, 'query_schema', 'query');
    if (cfg.header !== undefined) op.header = group(cfg.header, 'header_schema', 'header');
    if (unsafe.length && !this.opts.allowUnsafePatterns) {
      const u = unsafe[0]!;
      throw new Error(`pattern ${JSON.stringify(u.pattern)} repeats a group that itself repeats: a backtracking regular expression can take exponential time on hostile input (rewrite it, or set allow_unsafe_patterns: true)`);
    }
    this.single = op;
    this.operations.push(op);
  }

  // ---- requests -------------------------------------------------------------------------

  /** The operation of a request, or the answer when there is none. */
  find(method: string, path: string): { op: Operation; params: Record<string, string> } | Exclude<Outcome, { ok: true }> {
    if (this.single) return { op: this.single, params: {} };
    const found = this.operationOf(method, path);
    // A path an upstream may read as another operation's (`/users/1%2Froles` is /users/{id}
    // here, /users/{id}/roles to a server that decodes %2F or cuts ;params, as the router reads
    // it; `/users/1/roles;x` is none, which allow_unknown_operations lets through): its request
    // would be checked against one operation, or none, and served by another.
    const reading = upstreamReading(path);
    if (reading !== null) {
      const other = this.operationOf(method, reading);
      if ('op' in other && (!('op' in found) || other.op !== found.op)) {
        return { ok: false, code: 'bad-request', detail: `ambiguous path: read with its %2F, %5C or ;parameters decoded, as many servers do, it is operation ${other.op.id.slice(0, 100)}` };
      }
    }
    // The same for a path in another case than the document's (OpenAPI paths are case-sensitive,
    // and so is the router, which refuses such a path only where it is another route's): `/USERS`
    // is no operation here and listUsers to an upstream that matches paths case-insensitively
    // (ASP.NET, IIS, Express by default), so it would reach it unvalidated. Refused as the router does.
    const read = reading ?? path;
    if (this.matcher.caseVariant(read)) {
      const other = this.operationOf(method, read, true);
      if ('op' in other && (!('op' in found) || other.op !== found.op)) {
        return { ok: false, code: 'bad-request', detail: `ambiguous path: read case-insensitively, as many servers do, it is operation ${other.op.id.slice(0, 100)}` };
      }
    }
    return found;
  }

  /** `fold`: literal segments (and the base paths) compared case-insensitively. */
  private operationOf(method: string, path: string, fold = false): { op: Operation; params: Record<string, string> } | Exclude<Outcome, { ok: true }> {
    let allow: string[] | null = null;
    const cased = fold ? path.toLowerCase() : path;
    for (const b of this.basePaths) {
      const base = fold ? b.toLowerCase() : b;
      let rest: string;
      if (base === '') rest = path;
      else if (cased === base) rest = '/';
      else if (cased.startsWith(`${base}/`)) rest = path.slice(base.length);
      else continue;
      let m = this.matcher.match(rest, method, fold);
      // A trailing slash the document does not have.
      if (m === null && rest.length > 1 && rest.endsWith('/')) m = this.matcher.match(rest.slice(0, -1), method, fold);
      if (m === null) continue;
      if ('allow' in m) {
        allow ??= m.allow;
        continue;
      }
      return { op: m.value, params: m.params };
    }
    if (allow) return { ok: false, code: 'method-not-allowed', detail: `${method} is not an operation of ${path} in the API description`, allow };
    return { ok: false, code: 'no-route', detail: `${path} is not a path of the API description` };
  }

  /**
   * Checks a request against its operation: parameters first (synchronously), then the body
   * (read only when a declared media type has a schema, or to tell an empty HTTP/2 body).
   */
  check(op: Operation, pathParams: Record<string, string>, req: RequestLike): Outcome | Promise<Outcome> {
    const errors: Violation[] = [];
    if (op.path) {
      const data = dict<unknown>();
      for (const p of op.path.specs) {
        const raw = pathParams[p.name];
        if (raw === undefined) continue;
        const v = decode(raw, false);
        if (v === null) errors.push({ in: 'path', path: `/${escapePointer(p.name)}`, message: 'invalid percent-encoding' });
        else this.put(data, p, simpleValue(v, p), errors);
      }
      this.group(op.path, data, errors);
    }
    if (op.query) {
      const { values, bad } = parseQuery(req.query);
      for (const name of bad) errors.push({ in: 'query', path: `/${escapePointer(name)}`, message: 'invalid percent-encoding' });
      respelled(values, op.query.specs, 'query', errors);
      const data = dict<unknown>();
      if (this.single) {
        // Plain query_schema: every parameter, repeated ones as arrays.
        for (const [k, v] of values) data[k] = v.length === 1 ? v[0] : v;
        for (const p of op.query.specs) if (p.shape !== 'primitive' && data[p.name] !== undefined) this.put(data, p, queryValue(values, p), errors);
      } else {
        for (const p of op.query.specs) this.put(data, p, queryValue(values, p), errors);
      }
      this.group(op.query, data, errors);
    }
    if (op.header) {
      const data = dict<unknown>();
      for (const p of op.header.specs) {
        const v = req.header(p.name.toLowerCase());
        if (v !== undefined) this.put(data, p, simpleValue(v, p), errors);
      }
      this.group(op.header, data, errors);
    }
    if (op.cookie) {
      const jar = parseCookies(req.header('cookie'));
      // A name sent twice (a browser sends one per matching Path and Domain) is read as its
      // first copy by some servers (Go, PHP, Express) and its last by others (Django, Python's
      // http.cookies): every copy is checked, one round per copy (a name sent more often than
      // any browser would is refused, not checked round after round).
      let rounds = 1;
      for (const p of op.cookie.specs) {
        const n = jar.get(p.name)?.length ?? 0;
        if (n > MAX_COOKIE_COPIES) errors.push({ in: 'cookie', path: `/${escapePointer(p.name)}`, message: `is sent ${n} times (at most ${MAX_COOKIE_COPIES})` });
        else rounds = Math.max(rounds, n);
      }
      for (let round = 0; round < rounds; round++) {
        const data = dict<unknown>();
        for (const p of op.cookie.specs) {
          const copies = jar.get(p.name);
          if (copies === undefined) continue;
          const raw = copies[Math.min(round, copies.length - 1)]!;
          const v = decode(raw, false);
          this.put(data, p, v === null ? raw : p.shape === 'primitive' || p.json ? v : p.shape === 'array' ? v.split(',') : simpleValue(v, p), errors);
        }
        this.group(op.cookie, data, errors);
      }
    }
    const done = (): Outcome => {
      if (errors.length === 0) return { ok: true };
      // (told apart by their whole pointers first: cut, two long names would look like one)
      for (const e of errors) e.path = shownPath(e.path);
      return { ok: false, code: 'validation-failed', detail: summary(errors), errors };
    };
    const body = op.body;
    if (!body) return done();
    const ct = req.header('content-type');
    const type = mediaType(ct);
    const media = type === null ? null : matchMedia(body.media, type);
    const kind = type === null ? 'other' : mediaKind(type);
    const validates = media !== null && ((kind === 'json' && media.json !== null) || (kind === 'form' && media.form !== null));
    // A coded body (gzip...) cannot be read here: 415 (RFC 9110 §15.5.16), not "not JSON".
    if (validates && req.hasBody !== false && codedContent(req.header('content-encoding'))) {
      return { ok: false, code: 'unsupported-media-type', detail: 'a request body with a Content-Encoding cannot be validated: send it unencoded', headers: CODED_CONTENT_HEADERS };
    }
    // What is validated is the body read as UTF-8 (RFC 8259 §8.1; a form body's percent-encoding
    // too): one declared in another charset would be checked as one text and read upstream as
    // another. Express's body-parser decodes a JSON body by any `utf-*` charset, and in UTF-7
    // `"x+ACIALAAi-role+ACIAOgAi-admin"` is one string here and `"x","role":"admin"` there.
    // A JSON body of ASCII bytes only in a charset that reads ASCII as ASCII (an old Java
    // client's ISO-8859-1) is the same text: checked once read (withBody). Not a form body: its
    // %XX escapes are bytes of the declared charset.
    if (validates && req.hasBody !== false) {
      const charset = foreignCharset(ct);
      if (charset !== null && !(kind === 'json' && asciiCompatible(charset))) return charsetRefused(charset);
    }
    // Whether there is a body at all: the head tells (Content-Length, Transfer-Encoding), or reading does.
    if (req.hasBody === false || (req.hasBody === null && !validates)) {
      if (req.hasBody === null) {
        return req.readBody().then((buf) => (buf.length === 0 ? this.noBody(body, req.method, errors, done) : this.withBody(body, type, ct, media, kind, buf, errors, done)));
      }
      return this.noBody(body, req.method, errors, done);
    }
    if (!validates) return this.withBody(body, type, ct, media, kind, null, errors, done);
    return req.readBody().then((buf) => (buf.length === 0 ? this.noBody(body, req.method, errors, done) : this.withBody(body, type, ct, media, kind, buf, errors, done)));
  }

  private noBody(body: Body, method: string, errors: Violation[], done: () => Outcome): Outcome {
    // Plain body_schema: a body is required of the methods that carry one.
    if (body.required && (this.single === null || BODY_METHODS.has(method))) errors.push({ in: 'body', path: '', message: 'a request body is required' });
    return done();
  }

  private withBody(body: Body, type: string | null, ct: string | undefined, media: Media | null, kind: BodyKind, buf: Buffer | null, errors: Violation[], done: () => Outcome): Outcome {
    if (type === null) return { ok: false, code: 'unsupported-media-type', detail: `a request body needs a Content-Type (accepted: ${body.media.map((m) => m.range).join(', ') || 'none'})` };
    if (media === null) {
      return { ok: false, code: 'unsupported-media-type', detail: `Content-Type ${JSON.stringify(ct?.slice(0, 100))} is not accepted here (accepted: ${body.media.map((m) => m.range).join(', ') || 'none'})` };
    }
    if (buf === null) return done();
    if (kind === 'json' && media.json) {
      const charset = foreignCharset(ct, buf);
      if (charset !== null) return charsetRefused(charset);
      const parsed = parseJson(buf, this.opts.maxDepth);
      if (!parsed.ok) return { ok: false, code: 'bad-request', detail: parsed.tooDeep ? `request body is ${parsed.message}` : `request body is not valid JSON: ${parsed.message}` };
      // What is validated is what the upstream reads: a name given twice would be validated as
      // JSON.parse reads it (the last) and read by a first-wins parser as the other one.
      const dup = duplicateKeyPath(buf, parsed.value);
      if (dup !== null) {
        errors.push({ in: 'body', path: dup.map((k) => `/${escapePointer(String(k))}`).join(''), message: 'is given twice in one object (parsers disagree about which one counts)' });
        return done();
      }
      const r = run(media.json, parsed.value);
      if (r.overflow) return { ok: false, code: 'bad-request', detail: 'request body is nested too deeply to validate' };
      if (!r.ok) violations('body', r.errors, errors);
      return done();
    }
    if (kind === 'form' && media.form) {
      // (bytes that are not UTF-8 would be checked as U+FFFD while the bytes themselves go upstream)
      let text: string;
      try {
        text = UTF8.decode(buf);
      } catch {
        return { ok: false, code: 'bad-request', detail: 'request body is not valid UTF-8 (a form body is UTF-8; other bytes go percent-encoded)' };
      }
      const { values, bad } = parseQuery(text);
      for (const name of bad) errors.push({ in: 'body', path: `/${escapePointer(name)}`, message: 'invalid percent-encoding' });
      respelled(values, media.form.specs, 'body', errors);
      const data = dict<unknown>();
      for (const [k, v] of values) data[k] = v.length === 1 ? v[0] : v;
      for (const p of media.form.specs) {
        const v = queryValue(values, p);
        if (v !== undefined) data[p.name] = v;
      }
      const r = run(media.form.validate, data);
      if (r.overflow) return { ok: false, code: 'bad-request', detail: 'request body is nested too deeply to validate' };
      if (!r.ok) violations('body', r.errors, errors);
    }
    return done();
  }

  /** Stores a parameter value (JSON-encoded ones parsed first). */
  private put(data: Dict<unknown>, p: ParamSpec, value: unknown, errors: Violation[]): void {
    if (value === undefined) return;
    if (p.json && typeof value === 'string') {
      const parsed = parseJson(Buffer.from(value), this.opts.maxDepth);
      if (!parsed.ok) {
        errors.push({ in: p.in, path: `/${escapePointer(p.name)}`, message: parsed.tooDeep ? `is ${parsed.message}` : `is not valid JSON: ${parsed.message}` });
        return;
      }
      data[p.name] = parsed.value;
      return;
    }
    data[p.name] = value;
  }

  private group(g: Group, data: Dict<unknown>, errors: Violation[]): void {
    const odd = oddNumbers(data);
    const r = run(g.validate, data);
    const where = g.specs[0]?.in ?? 'query';
    if (r.overflow) errors.push({ in: where, path: '', message: 'nested too deeply to validate' });
    else if (!r.ok) violations(where, r.errors, errors);
    // (what the validator took for a number is one in the text the upstream gets)
    if (odd !== null && !r.overflow) {
      for (const [path, segs] of odd) {
        let v: unknown = data;
        for (const k of segs) v = v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined;
        if (Array.isArray(v) && v.length === 1) v = v[0];
        if (typeof v === 'number' && errors.length < MAX_VIOLATIONS) errors.push({ in: where, path, message: 'must be a number in decimal notation' });
      }
    }
  }

  // ---- responses ------------------------------------------------------------------------

  /** What a response of this status must look like; null: nothing to check (undeclared 5xx, or responses not described). */
  responseSpec(op: Operation, status: number): ResponseSpec | 'undeclared' | null {
    const rs = op.responses;
    if (!rs || rs.size === 0) return null;
    const s = rs.get(String(status)) ?? rs.get(`${Math.floor(status / 100)}XX`) ?? rs.get('default');
    if (s) return s;
    // An upstream failure is not made into another: an undeclared 5xx passes as it is; so does
    // a 304 (the answer to a conditional request, which documents rarely list).
    return status >= 500 || status === 304 ? null : 'undeclared';
  }

  /**
   * Violations of a whole response (headers as a flat name/value list). The body is decoded
   * first when it has a Content-Encoding (gzip, deflate, br), up to `maxBytes`.
   */
  checkResponse(op: Operation, status: number, headers: readonly string[], body: Buffer, maxBytes: number): Violation[] {
    const errors = this.responseViolations(op, status, headers, body, maxBytes);
    for (const e of errors) e.path = shownPath(e.path);
    return errors;
  }

  private responseViolations(op: Operation, status: number, headers: readonly string[], body: Buffer, maxBytes: number): Violation[] {
    const spec = this.responseSpec(op, status);
    if (spec === null) return [];
    if (spec === 'undeclared') return [{ in: 'status', path: '', message: `status ${status} is not a declared response` }];
    const errors: Violation[] = [];
    const get = (name: string): string | undefined => {
      let v: string | undefined;
      for (let i = 0; i + 1 < headers.length; i += 2) if (headers[i]!.toLowerCase() === name) v = v === undefined ? headers[i + 1]! : `${v}, ${headers[i + 1]!}`;
      return v;
    };
    if (spec.headers) {
      const data = dict<unknown>();
      for (const p of spec.headers.specs) {
        const v = get(p.name);
        if (v !== undefined) data[p.name] = simpleValue(v, p);
      }
      this.group(spec.headers, data, errors);
    }
    if (body.length === 0 || spec.media.length === 0) return errors;
    const ct = get('content-type');
    const type = mediaType(ct);
    const media = type === null ? null : matchMedia(spec.media, type);
    if (media === null) {
      errors.push({ in: 'header', path: '/content-type', message: `is not a declared media type of status ${status}` });
      return errors;
    }
    if (mediaKind(type!) !== 'json' || media.json === null) return errors;
    let raw = body;
    const enc = (get('content-encoding') ?? '').trim().toLowerCase();
    try {
      if (enc === 'gzip' || enc === 'x-gzip') raw = gunzipSync(body, { maxOutputLength: maxBytes });
      else if (enc === 'deflate') {
        // (zlib-wrapped, or raw DEFLATE as some servers send it)
        try {
          raw = inflateSync(body, { maxOutputLength: maxBytes });
        } catch (e) {
          if ((e as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') throw e;
          raw = inflateRawSync(body, { maxOutputLength: maxBytes });
        }
      }
      else if (enc === 'br') raw = brotliDecompressSync(body, { maxOutputLength: maxBytes });
      else if (enc !== '' && enc !== 'identity') return errors; // cannot look inside
    } catch {
      errors.push({ in: 'body', path: '', message: `cannot be decoded (${enc}), or is larger than ${maxBytes} bytes decoded` });
      return errors;
    }
    const parsed = parseJson(raw, this.opts.maxDepth);
    if (!parsed.ok) {
      errors.push({ in: 'body', path: '', message: parsed.tooDeep ? `is ${parsed.message}` : `is not valid JSON: ${parsed.message}` });
      return errors;
    }
    const r = run(media.json, parsed.value);
    if (r.overflow) errors.push({ in: 'body', path: '', message: 'nested too deeply to validate' });
    else if (!r.ok) violations('body', r.errors, errors);
    return errors;
  }
}

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A `$ref` loop that never goes into the data (see refLoop) is a document error naming it. */
function refLoopError(loop: string[] | null, where?: string): void {
  if (loop === null) return;
  const at = (p: string) => (where === undefined ? p : `${where}${p === '' ? '' : ` ${p}`}`);
  throw new Error(`${at(loop[0]!)}: $ref loop (${loop.map((p) => (p === '' ? '#' : p)).join(' -> ')}): the schema refers to itself without going into the data, so nothing can be validated against it`);
}

function compile(ajv: AnyAjv, schema: unknown, where: string): ValidateFunction {
  try {
    return ajv.compile(schema as never);
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}`);
  }
}

/** One object schema for the parameters of one location: each property a $ref to its parameter's schema. */
function compileGroup(ajv: AnyAjv, base: string, list: { spec: ParamSpec; schemaPtr: string | null }[], where: string): ValidateFunction {
  const properties = dict<unknown>();
  const required: string[] = [];
  for (const { spec, schemaPtr } of list) {
    properties[spec.name] = schemaPtr ? refTo(base, schemaPtr) : {};
    if (spec.required) required.push(spec.name);
  }
  return compile(ajv, { type: 'object', properties, required }, where);
}

function sameTemplate(a: string, b: string): boolean {
  const norm = (t: string) => t.replace(/\{[^}]*\}/g, '{}');
  return norm(a) === norm(b);
}

/** Base paths of servers[].url (variables at their defaults), without a trailing slash; '' and duplicates dropped. */
export function serverBasePaths(servers: unknown): string[] {
  if (!Array.isArray(servers)) return [];
  const out = new Set<string>();
  for (const s of servers) {
    if (!isObject(s) || typeof s['url'] !== 'string') continue;
    const vars = isObject(s['variables']) ? s['variables'] : {};
    let unknown = false;
    const url = s['url'].replace(/\{([^}]+)\}/g, (_m, n: string) => {
      const v = vars[n];
      if (isObject(v) && typeof v['default'] === 'string') return v['default'];
      unknown = true;
      return '';
    });
    if (unknown) continue;
    let path: string;
    try {
      path = new URL(url, 'http://relative.invalid').pathname;
    } catch {
      continue;
    }
    path = path.replace(/\/+$/, '');
    if (path !== '') out.add(path);
  }
  return [...out].sort((a, b) => b.length - a.length);
}
