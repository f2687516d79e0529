/**
 * Templates of composition steps: `{id}` (a route path parameter), `{query.x}`, `{header.x}`,
 * `{body.a.b}` (the client's JSON body), `{consumer.id|name|groups|identity}` (who the auth
 * plugins say is calling), `{step.body.a.b}`, `{step.status}`,
 * `{step.headers.x}`; `{expr:-default}` gives a default when the value is missing; `{{` and
 * `}}` are literal braces. Parsed once when the config compiles; rendered per request in one
 * of four contexts, each with its own encoding, so a value never changes the structure of
 * what it lands in:
 *
 * - path: percent-encoded as a URI component (`/`, `?`, `#`, `%` included); a value that would
 *   make a `.` or `..` segment fails the step;
 * - query: percent-encoded as a URI component;
 * - header: as is, but CR, LF and NUL fail the step;
 * - json: a string that is exactly one template takes the value's JSON type (number, object...);
 *   a string mixing text and templates stays a string.
 *
 * A missing value (absent, or null outside json) with no default fails the step.
 */

export type Source =
  | { kind: 'param'; name: string }
  | { kind: 'query'; name: string }
  | { kind: 'header'; name: string }
  | { kind: 'body'; path: readonly string[] }
  | { kind: 'consumer'; field: 'id' | 'name' | 'groups' | 'identity' }
  | { kind: 'step'; step: string; part: 'body'; path: readonly string[] }
  | { kind: 'step'; step: string; part: 'status' }
  | { kind: 'step'; step: string; part: 'headers'; name: string };

export interface Ref {
  source: Source;
  /** The default after `:-`, or undefined. */
  def: string | undefined;
  /** The template as written, `{...}`, for messages. */
  text: string;
}

/** Literal text and references, in order. */
export interface Template {
  parts: readonly (string | Ref)[];
  /** The text as written. */
  text: string;
}

export type Context = 'path' | 'query' | 'header' | 'json';

/** Names templates cannot use as step names (they start the other kinds of reference). */
export const RESERVED_HEADS = new Set(['query', 'header', 'body', 'consumer']);

export interface ParseScope {
  /** Path parameters the route captures (in any of its paths). */
  params: ReadonlySet<string>;
  /** Step names of the composition. */
  steps: ReadonlySet<string>;
}

/** Parses a template; problems (unknown step, unknown parameter, syntax) go to `errors`. */
export function parseTemplate(text: string, scope: ParseScope, errors: string[]): Template {
  const parts: (string | Ref)[] = [];
  let lit = '';
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === '{' && text[i + 1] === '{') { lit += '{'; i += 2; continue; }
    if (c === '}' && text[i + 1] === '}') { lit += '}'; i += 2; continue; }
    if (c === '}') { errors.push(`unmatched "}" at position ${i} (write "}}" for a literal brace)`); i++; continue; }
    if (c !== '{') { lit += c; i++; continue; }
    const end = text.indexOf('}', i + 1);
    const open = text.indexOf('{', i + 1);
    if (end === -1 || (open !== -1 && open < end)) {
      errors.push(`unclosed "{" at position ${i} (write "{{" for a literal brace)`);
      lit += c;
      i++;
      continue;
    }
    const ref = parseRef(text.slice(i, end + 1), scope, errors);
    if (ref !== null) {
      if (lit) parts.push(lit);
      lit = '';
      parts.push(ref);
    }
    i = end + 1;
  }
  if (lit) parts.push(lit);
  return { parts, text };
}

const SEGMENT = /^[^.{}]+$/;

function parseRef(text: string, scope: ParseScope, errors: string[]): Ref | null {
  let expr = text.slice(1, -1);
  let def: string | undefined;
  const d = expr.indexOf(':-');
  if (d !== -1) {
    def = expr.slice(d + 2);
    expr = expr.slice(0, d);
  }
  expr = expr.trim();
  const segs = expr.split('.');
  if (expr === '' || !segs.every((s) => SEGMENT.test(s) && s.trim() === s)) {
    errors.push(`${text} is not a valid reference (use {param}, {query.x}, {header.x}, {body.a.b}, {step.body.a.b}, {step.status} or {step.headers.x})`);
    return null;
  }
  const [head, ...rest] = segs as [string, ...string[]];
  const bad = (why: string) => {
    errors.push(`${text}: ${why}`);
    return null;
  };
  let source: Source;
  if (head === 'query' || head === 'header') {
    if (rest.length !== 1) return bad(`write {${head}.NAME}`);
    source = head === 'query' ? { kind: 'query', name: rest[0]! } : { kind: 'header', name: rest[0]!.toLowerCase() };
  } else if (head === 'body') {
    source = { kind: 'body', path: rest };
  } else if (head === 'consumer') {
    const f = rest[0];
    if (rest.length !== 1 || (f !== 'id' && f !== 'name' && f !== 'groups' && f !== 'identity')) return bad('write {consumer.id}, {consumer.name}, {consumer.groups} or {consumer.identity}');
    source = { kind: 'consumer', field: f };
  } else if (rest.length === 0) {
    if (!scope.params.has(head)) {
      const known = [...scope.params];
      return bad(`the route's paths capture no parameter "${head}"${known.length ? ` (they capture: ${known.join(', ')})` : ''}${scope.steps.has(head) ? ` (for step ${head}'s response write {${head}.body})` : ''}`);
    }
    source = { kind: 'param', name: head };
  } else {
    if (!scope.steps.has(head)) return bad(`names an unknown step "${head}"`);
    const [part, ...more] = rest as [string, ...string[]];
    if (part === 'body') source = { kind: 'step', step: head, part: 'body', path: more };
    else if (part === 'status' && more.length === 0) source = { kind: 'step', step: head, part: 'status' };
    else if (part === 'headers' && more.length === 1) source = { kind: 'step', step: head, part: 'headers', name: more[0]!.toLowerCase() };
    else return bad(`write {${head}.body...}, {${head}.status} or {${head}.headers.NAME}`);
  }
  return { source, def, text };
}

/** Steps a template reads from. */
export function stepsOf(t: Template, into: Set<string>): void {
  for (const p of t.parts) if (typeof p !== 'string' && p.source.kind === 'step') into.add(p.source.step);
}

/** Whether a template reads the client's body. */
export const readsClientBody = (t: Template): boolean => t.parts.some((p) => typeof p !== 'string' && p.source.kind === 'body');

/** Looks a source up for one request: undefined = missing. */
export type Lookup = (source: Source) => unknown;

/** A template could not be rendered; `client`: because of a value from the client's request. */
export class TemplateError extends Error {
  constructor(message: string, readonly client = false) {
    super(message);
  }
}

/** Sources the client controls (its path, query, headers, body): their faults are the client's. */
export const fromClient = (s: Source): boolean => s.kind === 'param' || s.kind === 'query' || s.kind === 'header' || s.kind === 'body';

/** Follows a.b.0.c into a JSON value (array indices as numbers); undefined when a member is missing. */
export function dig(value: unknown, path: readonly string[]): unknown {
  let v = value;
  for (const k of path) {
    if (v === null || typeof v !== 'object') return undefined;
    if (Array.isArray(v)) {
      if (!/^(0|[1-9][0-9]*)$/.test(k)) return undefined;
      v = v[Number(k)];
    } else {
      if (!Object.prototype.hasOwnProperty.call(v, k)) return undefined;
      v = (v as Record<string, unknown>)[k];
    }
  }
  return v;
}

function scalar(ref: Ref, v: unknown): string {
  if (v === undefined || v === null) {
    if (ref.def !== undefined) return ref.def;
    throw new TemplateError(`template ${ref.text} has no value`, fromClient(ref.source));
  }
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  throw new TemplateError(`template ${ref.text} is not a string, number or boolean`, fromClient(ref.source));
}

const NON_ASCII = /[\x80-\xff]/;
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A header field's value as node gives it (one character per byte, latin1) as the text it
 * stands for: its bytes read as UTF-8 when they are UTF-8 (`café` sent as C3 A9 is `café`, not
 * `cafÃ©`), else as latin1 (obs-text's historic charset). For a value that goes into a path,
 * a query or a JSON string, which are encoded as UTF-8 again; into a header field the bytes go
 * unchanged.
 */
export function headerValueText(v: string): string {
  if (!NON_ASCII.test(v)) return v;
  try {
    return utf8.decode(Buffer.from(v, 'latin1'));
  } catch {
    return v;
  }
}

/**
 * A query parameter's value (`a+b%20c`) decoded as form text: `+` a space, `%XX` escapes the
 * bytes of UTF-8 text, a `%` not followed by two hex digits kept as it is (as URLSearchParams
 * does); null when the escapes make bytes that are not UTF-8 (`%FF`), which URLSearchParams
 * would turn into U+FFFD — another value than the client sent.
 */
export function decodeQueryText(raw: string): string | null {
  const v = raw.includes('+') ? raw.replace(/\+/g, ' ') : raw;
  if (!v.includes('%')) return v;
  try {
    return decodeURIComponent(v);
  } catch {
    try {
      return decodeURIComponent(v.replace(/%(?![0-9A-Fa-f]{2})/g, '%25'));
    } catch {
      return null;
    }
  }
}

/**
 * The first value of each parameter of a raw query string (without its `?`), still encoded;
 * names decoded (one whose escapes are not UTF-8 matches no template).
 */
export function rawQueryParams(q: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const pair of q.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const name = decodeQueryText(eq === -1 ? pair : pair.slice(0, eq));
    if (name !== null && !out.has(name)) out.set(name, eq === -1 ? '' : pair.slice(eq + 1));
  }
  return out;
}

/** A source whose value is a header field's bytes (the client's, or a step response's). */
const headerBytes = (s: Source): boolean => s.kind === 'header' || (s.kind === 'step' && s.part === 'headers');

/** A source's value for a path, query or JSON string: a header's bytes as text (headerValueText). */
function textValue(src: Source, lookup: Lookup): unknown {
  const v = lookup(src);
  return typeof v === 'string' && headerBytes(src) ? headerValueText(v) : v;
}

/** Renders a template into a string for a context (path, query, header). Throws TemplateError. */
export function renderString(t: Template, ctx: Exclude<Context, 'json'>, lookup: Lookup): string {
  let out = '';
  for (const p of t.parts) {
    if (typeof p === 'string') { out += p; continue; }
    const v = scalar(p, ctx === 'header' ? lookup(p.source) : textValue(p.source, lookup));
    if (ctx === 'header') {
      const h = headerText(v);
      if (h === null) throw new TemplateError(`template ${p.text} holds a line break or another control character, not allowed in a header`, fromClient(p.source));
      out += h;
    } else {
      // (NUL in a path: servers in C, PHP's and older Java file APIs end the path there, so
      // /files/{query.f}.json with f=secret%00 would read /files/secret; the router refuses %00 too)
      if (ctx === 'path' && v.includes('\0')) throw new TemplateError(`template ${p.text} holds a NUL character, not allowed in a path`, fromClient(p.source));
      const e = encodeComponent(v);
      if (e === null) throw new TemplateError(`template ${p.text} holds text that is not well-formed Unicode`, fromClient(p.source));
      out += e;
    }
  }
  return out;
}

const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

/**
 * A value as header text (RFC 9110 §5.5 field-value: HTAB, SP, VCHAR, obs-text): null when it
 * holds a control character (CR, LF, NUL, ...); characters past U+00FF (which only a decoded
 * query, a JSON string... can hold) make the value go as its UTF-8 bytes, as the consumer
 * headers do (pipeline.ts fieldValue). A header's own value (bytes as latin1) is unchanged.
 */
export function headerText(v: string): string | null {
  if (CONTROL.test(v)) return null;
  return /[^\x00-\xff]/.test(v) ? Buffer.from(v, 'utf8').toString('latin1') : v;
}

/** A value percent-encoded as a URI component (`/`, `?`, `#`, `%` included); null for a lone surrogate. */
export function encodeComponent(v: string): string | null {
  try {
    return encodeURIComponent(v);
  } catch {
    return null;
  }
}

/**
 * The first `.` or `..` segment of a path, or null: read as the router reads a client's path
 * (src/router/path.ts) and as many upstreams do — `%2e` a dot, `%2F`, `%5C` and `\` slashes
 * (nginx's $uri, IIS), a segment's `;params` cut off (Tomcat, Spring). A value `..%2F..%2Fadmin`
 * is one segment here, and `/admin` to an upstream that decodes and then normalizes.
 */
export function dotSegment(path: string): string | null {
  for (const seg of path.split(SEPARATORS)) {
    const s = seg.includes(';') ? seg.slice(0, seg.indexOf(';')) : seg;
    if (s.length > 6 || s.length === 0) continue;
    const d = s.replace(/%2e/gi, '.');
    if (d === '.' || d === '..') return seg;
  }
  return null;
}
const SEPARATORS = /\/|%2F|%5C|\\/i;

/**
 * Renders a path template: values encoded, no `.` / `..` segment made by a value, and no
 * segment a value leaves empty (`/users/{query.u}/orders` with `?u=` is `/users//orders`, which
 * an upstream that merges slashes reads as `/users/orders`; at the end, `/users/` is the
 * collection, not a user). A default (`{query.u:-}`) may be empty: the config's choice.
 */
export function renderPath(t: Template, lookup: Lookup): string {
  const out = renderString(t, 'path', lookup);
  if (t.parts.some((p) => typeof p !== 'string')) {
    // (an empty segment shows as `//` or a trailing `/`: only then are the values looked at again)
    const empty = out.includes('//') || out.endsWith('/') ? emptySegment(t, lookup) : null;
    if (empty !== null) throw new TemplateError(`template ${empty.text} is empty, making an empty path segment`, fromClient(empty.source));
    const seg = dotSegment(out);
    if (seg !== null) throw new TemplateError(`template values make a "${seg}" path segment`, t.parts.some((p) => typeof p !== 'string' && fromClient(p.source)));
  }
  return out;
}

/**
 * The reference whose empty value (not its default) is a whole path segment on its own (literal
 * `/` before it, `/` or the end after it), or null. Values are looked up again (renderPath
 * asks only when its output has an empty segment: lookups are reads of what is at hand).
 */
function emptySegment(t: Template, lookup: Lookup): Ref | null {
  const parts = t.parts;
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i]!;
    if (typeof p === 'string') continue;
    const prev = parts[i - 1];
    const next = parts[i + 1];
    if (typeof prev !== 'string' || !prev.endsWith('/') || (next !== undefined && (typeof next !== 'string' || !next.startsWith('/')))) continue;
    if (lookup(p.source) === '') return p;
  }
  return null;
}

/** A JSON value whose strings are templates (compiled once). */
export type JsonTemplate =
  | { kind: 'lit'; value: unknown }
  | { kind: 'one'; ref: Ref }
  | { kind: 'str'; t: Template }
  | { kind: 'arr'; items: JsonTemplate[] }
  | { kind: 'obj'; entries: [string, JsonTemplate][] };

/** Compiles a JSON value (a step's body); strings are parsed as templates. */
export function parseJsonTemplate(value: unknown, scope: ParseScope, errors: string[]): JsonTemplate {
  if (typeof value === 'string') {
    const t = parseTemplate(value, scope, errors);
    if (t.parts.every((p) => typeof p === 'string')) return { kind: 'lit', value: t.parts.join('') };
    if (t.parts.length === 1) return { kind: 'one', ref: t.parts[0] as Ref };
    return { kind: 'str', t };
  }
  if (Array.isArray(value)) {
    const items = value.map((v) => parseJsonTemplate(v, scope, errors));
    return items.every((x) => x.kind === 'lit') ? { kind: 'lit', value } : { kind: 'arr', items };
  }
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value).map(([k, v]): [string, JsonTemplate] => [k, parseJsonTemplate(v, scope, errors)]);
    return entries.every(([, x]) => x.kind === 'lit') ? { kind: 'lit', value } : { kind: 'obj', entries };
  }
  return { kind: 'lit', value };
}

export function jsonTemplateParts(j: JsonTemplate, out: Template[] = []): Template[] {
  switch (j.kind) {
    case 'one': out.push({ parts: [j.ref], text: j.ref.text }); break;
    case 'str': out.push(j.t); break;
    case 'arr': for (const x of j.items) jsonTemplateParts(x, out); break;
    case 'obj': for (const [, x] of j.entries) jsonTemplateParts(x, out); break;
    default: break;
  }
  return out;
}

/** Renders a JSON template to a value. Throws TemplateError. */
export function renderJson(j: JsonTemplate, lookup: Lookup): unknown {
  switch (j.kind) {
    case 'lit': return j.value;
    case 'one': {
      const v = textValue(j.ref.source, lookup);
      if (v === undefined) {
        if (j.ref.def !== undefined) return j.ref.def;
        throw new TemplateError(`template ${j.ref.text} has no value`, fromClient(j.ref.source));
      }
      return v;
    }
    case 'str': {
      let out = '';
      for (const p of j.t.parts) out += typeof p === 'string' ? p : scalar(p, textValue(p.source, lookup));
      return out;
    }
    case 'arr': return j.items.map((x) => renderJson(x, lookup));
    case 'obj': {
      // (no prototype: a "__proto__" key is a member like any other)
      const o = Object.create(null) as Record<string, unknown>;
      for (const [k, x] of j.entries) o[k] = renderJson(x, lookup);
      return o;
    }
  }
}
