/**
 * JSON bodies from clients (and upstreams), for the validator, compose and the transforms: parsed with a nesting bound checked first, and, when
 * the text is not JSON, a message that names where it goes wrong (line, column, byte offset)
 * without echoing the text back.
 *
 * V8's JSON.parse is iterative (100k levels parse fine), and `__proto__` becomes an own
 * property there (never the prototype); the bound is for what comes after: a validator that
 * recurses with the data (a recursive schema) would run out of stack on such a value.
 */

export type JsonResult = { ok: true; value: unknown } | { ok: false; message: string; tooDeep?: true };

/**
 * Nesting depth of JSON text, stopping as soon as it passes `limit` (returns limit + 1 then).
 * Counts `[` and `{` outside strings; a malformed text gives some number (JSON.parse decides).
 */
export function jsonDepthExceeds(buf: Uint8Array, limit: number): boolean {
  // A text of n bytes cannot nest deeper than n / 2.
  if (buf.length <= limit * 2) return false;
  let depth = 0;
  let inString = false;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i]!;
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b /* [ */ || c === 0x7b /* { */) {
      if (++depth > limit) return true;
    } else if (c === 0x5d /* ] */ || c === 0x7d /* } */) depth--;
  }
  return false;
}

/** A JSON media type: application/json or any +json (parameters ignored). */
export function isJsonType(ct: string | undefined): boolean {
  if (ct === undefined) return false;
  const t = ct.split(';')[0]!.trim().toLowerCase();
  return t === 'application/json' || t.endsWith('+json');
}

/**
 * Deepest nesting the gateway accepts in a JSON body it parses for compose and the transforms
 * (the validator has its own max_depth): V8's JSON.parse copes with far more, but what comes
 * after (JSON.stringify, the templates, JSONata) recurses and would run out of stack.
 */
export const MAX_JSON_DEPTH = 1000;

/**
 * UTF-8 without replacement: a byte sequence that is not UTF-8 is an error (RFC 8259 §8.1),
 * never a U+FFFD that is checked while the original bytes go on. A BOM is kept (JSON.parse
 * refuses it, as RFC 8259 lets a parser do).
 */
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A number that may be past what a double holds: an exponent of 100 or more, or 309 digits in a row. */
const MAY_OVERFLOW = /[eE]\+?0*[1-9][0-9]{2}|[0-9]{309}/;

/** Whether a parsed value holds an Infinity (a number too large for a double: JSON.stringify writes it as null). */
function hasNonFinite(v: unknown): boolean {
  const stack: unknown[] = [v];
  while (stack.length > 0) {
    const x = stack.pop();
    if (typeof x === 'number') {
      if (!Number.isFinite(x)) return true;
    } else if (x !== null && typeof x === 'object') {
      for (const k in x) if (Object.hasOwn(x, k)) stack.push((x as Record<string, unknown>)[k]);
    }
  }
  return false;
}

/**
 * Parses a JSON body (UTF-8, an optional BOM is an error like in JSON.parse of RFC 8259 text).
 * `finite`: for a body that is serialised again (the transforms), a number beyond a double's
 * range is an error — JSON.parse makes it Infinity, which JSON.stringify writes as null.
 */
export function parseJson(buf: Uint8Array, maxDepth: number, finite = false): JsonResult {
  if (jsonDepthExceeds(buf, maxDepth)) return { ok: false, message: `nested deeper than ${maxDepth} levels`, tooDeep: true };
  let text: string;
  try {
    text = utf8.decode(buf);
  } catch {
    return { ok: false, message: 'not valid UTF-8' };
  }
  try {
    const value: unknown = JSON.parse(text);
    if (finite && MAY_OVERFLOW.test(text) && hasNonFinite(value)) return { ok: false, message: 'a number is beyond the range of a double (about 1.8e308)' };
    return { ok: true, value };
  } catch {
    return { ok: false, message: describeJsonError(text) };
  }
}

/**
 * Where a member name is given twice in one object of a JSON text that parsed into `value`
 * (RFC 8259 §4: names SHOULD be unique, and parsers disagree about such an object: JSON.parse
 * keeps the last member, others the first or refuse it), as the path to it (object keys and
 * array indexes), or null. Names are compared decoded (`"\u0061"` is `"a"`). No recursion.
 * First a cheap count — every member has one `:` outside strings, and the parsed value one
 * key per member unless a name came twice — and only when they differ a pass that finds it.
 */
export function duplicateKeyPath(buf: Buffer, value: unknown): (string | number)[] | null {
  if (value === null || typeof value !== 'object' || colonsOutsideStrings(buf) === memberCount(value)) return null;
  return findDuplicateKey(buf);
}

function colonsOutsideStrings(buf: Buffer): number {
  let count = 0;
  const n = buf.length;
  for (let i = 0; i < n; i++) {
    const c = buf[i]!;
    if (c === 0x22 /* " */) {
      i++;
      while (i < n && buf[i] !== 0x22) i += buf[i] === 0x5c /* \ */ ? 2 : 1;
    } else if (c === 0x3a /* : */) count++;
  }
  return count;
}

function memberCount(value: object): number {
  let count = 0;
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const x = stack.pop();
    if (x === null || typeof x !== 'object') continue;
    if (Array.isArray(x)) {
      for (let i = 0; i < x.length; i++) stack.push(x[i]);
      continue;
    }
    for (const k in x) {
      count++;
      stack.push((x as Record<string, unknown>)[k]);
    }
  }
  return count;
}

/** The path of the first name given twice in one object (the slow pass: a name decoded per member). */
function findDuplicateKey(buf: Buffer): (string | number)[] | null {
  /** Per open container: the names seen (object) or null (array); and where in it the scan is. */
  const seen: (Set<string> | null)[] = [];
  const at: (string | number)[] = [];
  let expectKey = false;
  const n = buf.length;
  for (let i = 0; i < n; i++) {
    const c = buf[i]!;
    if (c === 0x22 /* " */) {
      let j = i + 1;
      let escaped = false;
      while (j < n && buf[j] !== 0x22) {
        if (buf[j] === 0x5c /* \ */) {
          escaped = true;
          j += 2;
        } else j++;
      }
      if (expectKey) {
        const key = escaped ? JSON.parse(buf.toString('utf8', i, j + 1)) as string : buf.toString('utf8', i + 1, j);
        const top = seen[seen.length - 1]!;
        if (top.has(key)) return [...at.slice(0, -1), key];
        top.add(key);
        at[at.length - 1] = key;
        expectKey = false;
      }
      i = j;
    } else if (c === 0x7b /* { */) {
      seen.push(new Set());
      at.push('');
      expectKey = true;
    } else if (c === 0x5b /* [ */) {
      seen.push(null);
      at.push(0);
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      seen.pop();
      at.pop();
    } else if (c === 0x2c /* , */) {
      if (seen[seen.length - 1] instanceof Set) expectKey = true;
      else (at[at.length - 1] as number)++;
    }
  }
  return null;
}

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);

/**
 * Finds the first place where `text` stops being JSON (RFC 8259) and says so: "unexpected '}'
 * at line 1, column 7 (offset 6)". Only called on text JSON.parse refused; iterative (no
 * recursion), linear.
 */
export function describeJsonError(text: string): string {
  let i = 0;
  const n = text.length;
  // Containers open: true = object, false = array.
  const stack: boolean[] = [];
  const at = (msg: string, pos = i) => {
    let line = 1;
    let col = 1;
    for (let k = 0; k < pos && k < n; k++) {
      if (text.charCodeAt(k) === 0x0a) {
        line++;
        col = 1;
      } else col++;
    }
    return `${msg} at line ${line}, column ${col} (offset ${pos})`;
  };
  const show = (pos: number) => {
    if (pos >= n) return 'end of input';
    const c = text.charCodeAt(pos);
    return c >= 0x20 && c < 0x7f ? `'${text[pos]}'` : `character U+${c.toString(16).toUpperCase().padStart(4, '0')}`;
  };
  const skipWs = () => {
    while (i < n && WS.has(text.charCodeAt(i))) i++;
  };
  /** Reads a string starting at i (on the quote); returns an error or null. */
  const str = (): string | null => {
    const start = i;
    i++;
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        return null;
      }
      if (c < 0x20) return at('control character in string');
      if (c === 0x5c) {
        const e = text[i + 1];
        if (e === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) return at('bad \\u escape in string');
          i += 6;
          continue;
        }
        if (e === undefined || !'"\\/bfnrt'.includes(e)) return at('bad escape in string', i);
        i += 2;
        continue;
      }
      i++;
    }
    return at('unterminated string', start);
  };
  const num = (): string | null => {
    const m = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(i, i + 400));
    if (!m || m[0] === '' || m[0] === '-') return at(`unexpected ${show(i)}`);
    i += m[0].length;
    return null;
  };
  /** A value at i: scalars are consumed; containers are opened (pushed). */
  const value = (): string | null => {
    skipWs();
    if (i >= n) return at('unexpected end of input');
    const c = text[i]!;
    if (c === '{') {
      stack.push(true);
      i++;
      return null;
    }
    if (c === '[') {
      stack.push(false);
      i++;
      return null;
    }
    if (c === '"') return str();
    if (c === '-' || (c >= '0' && c <= '9')) return num();
    for (const lit of ['true', 'false', 'null']) {
      if (text.startsWith(lit, i)) {
        i += lit.length;
        return null;
      }
    }
    return at(`unexpected ${show(i)}`);
  };
  // State machine: after opening a container, expect its first member or its end; after a
  // value inside one, expect ',' or its end.
  let err = value();
  let justOpened = stack.length > 0;
  while (err === null && stack.length > 0) {
    skipWs();
    const obj = stack[stack.length - 1]!;
    const close = obj ? '}' : ']';
    if (i >= n) {
      err = at('unexpected end of input');
      break;
    }
    if (text[i] === close && justOpened) {
      i++;
      stack.pop();
      justOpened = false;
      continue;
    }
    if (!justOpened) {
      if (text[i] === close) {
        i++;
        stack.pop();
        continue;
      }
      if (text[i] !== ',') {
        err = at(`expected ',' or '${close}' but found ${show(i)}`);
        break;
      }
      i++;
      skipWs();
    }
    if (obj) {
      if (text[i] !== '"') {
        err = at(`expected a property name but found ${show(i)}`);
        break;
      }
      err = str();
      if (err) break;
      skipWs();
      if (text[i] !== ':') {
        err = at(`expected ':' but found ${show(i)}`);
        break;
      }
      i++;
    }
    const before = stack.length;
    err = value();
    justOpened = stack.length > before;
  }
  if (err !== null) return err;
  skipWs();
  if (i < n) return at(`unexpected ${show(i)} after the JSON value`);
  // JSON.parse refused what this reads as JSON: lone surrogates and the like.
  return 'not valid JSON';
}
