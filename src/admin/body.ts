/**
 * Request bodies: read up to a cap (413 beyond it, declared or streamed), the media type
 * checked (415), parsed (400 naming the problem: invalid JSON / YAML, nesting too deep,
 * `__proto__` keys).
 */
import type { IncomingMessage } from 'node:http';
import { LineCounter } from 'yaml';
import { typeUnquotedRefs } from '../config/stores/document.js';
import { duplicateKeyAt, locate, parseConfigYaml } from '../config/load.js';
import { formatPath, type PathSegment } from '../config/errors.js';
import { ApiError } from './errors.js';

export const DEFAULT_MAX_BODY = 8 * 1024 * 1024;
/** Deeper JSON is refused: no config needs it, and recursive code downstream must not overflow. */
export const MAX_DEPTH = 64;

export type MediaKind = 'json' | 'merge-patch' | 'yaml';

/** The patch formats PATCH takes (the Accept-Patch header, RFC 5789 §3.1). */
export const ACCEPT_PATCH = 'application/merge-patch+json, application/json';

/** The media type (lower case, no parameters) and whether its charset is acceptable. */
export function mediaType(header: string | undefined): { type: string; charsetOk: boolean } | null {
  if (header === undefined || header.trim() === '') return null;
  const [type, ...params] = header.split(';');
  let charsetOk = true;
  for (const p of params) {
    const [k, v] = p.split('=');
    if (k?.trim().toLowerCase() === 'charset') charsetOk = /^"?(utf-8|utf8|us-ascii)"?$/i.test(v?.trim() ?? '');
  }
  return { type: type!.trim().toLowerCase(), charsetOk };
}

function kindOf(type: string): MediaKind | null {
  if (type === 'application/merge-patch+json') return 'merge-patch';
  if (type === 'application/json' || /^application\/[a-z0-9.+-]+\+json$/.test(type)) return 'json';
  if (type === 'application/yaml' || type === 'application/x-yaml' || type === 'text/yaml' || type === 'text/x-yaml') return 'yaml';
  return null;
}

/** Reads the whole body, refusing more than `max` bytes (413) and content codings (415). */
export function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  // A gzip (or other coded) body would be parsed as its compressed bytes: 'not valid UTF-8'
  // or 'invalid JSON' about a body the client sent correctly. RFC 9110 §15.5.16: 415.
  const coding = req.headers['content-encoding'];
  if (coding !== undefined && coding.trim() !== '' && !/^\s*identity\s*$/i.test(coding)) {
    req.resume();
    return Promise.reject(new ApiError('unsupported-media-type', `Content-Encoding ${coding.slice(0, 40)} is not accepted: send the body uncompressed`, undefined, { 'accept-encoding': 'identity' }));
  }
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > max) {
    req.resume();
    return Promise.reject(new ApiError('payload-too-large', `the body is ${declared} bytes; the admin API takes at most ${max}`, { max_bytes: max }, { connection: 'close' }));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const onData = (c: Buffer) => {
      if (done) return;
      size += c.length;
      if (size > max) {
        done = true;
        chunks.length = 0;
        // keep reading (and dropping) so the client sees the answer instead of a reset
        reject(new ApiError('payload-too-large', `the body is over ${max} bytes, the admin API's limit`, { max_bytes: max }, { connection: 'close' }));
        return;
      }
      chunks.push(c);
    };
    req.on('data', onData);
    req.on('end', () => {
      if (done) return;
      done = true;
      resolve(Buffer.concat(chunks));
    });
    req.on('error', (err) => {
      if (done) return;
      done = true;
      reject(new ApiError('bad-request', `reading the body failed: ${err.message}`));
    });
    req.on('aborted', () => {
      if (done) return;
      done = true;
      reject(new ApiError('bad-request', 'the client aborted the request body'));
    });
  });
}

/** Checks the Content-Type against what the endpoint takes; returns the kind. */
export function checkMediaType(header: string | undefined, accepted: readonly MediaKind[]): MediaKind {
  const names = accepted.map((k) => (k === 'json' ? 'application/json' : k === 'merge-patch' ? 'application/merge-patch+json' : 'application/yaml')).join(', ');
  const mt = mediaType(header);
  if (mt === null) throw new ApiError('unsupported-media-type', `a Content-Type is required: ${names}`, { accepted: names.split(', ') });
  let kind = kindOf(mt.type);
  if (accepted.includes('merge-patch')) {
    // The media type of a patch says how to apply it (RFC 5789 §2.2): a JSON Patch (RFC 6902,
    // application/json-patch+json) or another +json format is not a merge patch: 415 with
    // Accept-Patch, not a 400 on its array, nor an object applied as a merge.
    if (kind === 'json' && mt.type !== 'application/json') kind = null;
    if (kind === null) {
      throw new ApiError('unsupported-media-type', `Content-Type ${mt.type} is not a patch format of this API: use ${names} (JSON Merge Patch, RFC 7396)`, { accepted: names.split(', ') }, { 'accept-patch': ACCEPT_PATCH });
    }
  }
  // a merge patch may also come as plain JSON, and JSON is YAML
  if (kind === 'json' && !accepted.includes('json') && accepted.includes('merge-patch')) kind = 'merge-patch';
  if (kind === 'json' && !accepted.includes('json') && accepted.includes('yaml')) kind = 'yaml';
  if (kind === null || !accepted.includes(kind)) {
    throw new ApiError('unsupported-media-type', `Content-Type ${mt.type} is not accepted here: use ${names}`, { accepted: names.split(', ') });
  }
  if (!mt.charsetOk) throw new ApiError('unsupported-media-type', 'only UTF-8 bodies are accepted');
  return kind;
}

/** Refuses values nested deeper than MAX_DEPTH and `__proto__` keys (without recursion). */
export function checkShape(value: unknown): void {
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (depth >= MAX_DEPTH) throw new ApiError('bad-request', `the body is nested more than ${MAX_DEPTH} levels deep`);
    if (Array.isArray(v)) {
      for (const x of v) stack.push([x, depth + 1]);
    } else {
      for (const k of Object.keys(v)) {
        if (k === '__proto__') throw new ApiError('bad-request', 'the key "__proto__" is not allowed');
        stack.push([(v as Record<string, unknown>)[k], depth + 1]);
      }
    }
  }
}

export function parseJson(buf: Buffer): unknown {
  const text = decodeUtf8(buf);
  if (text.trim() === '') throw new ApiError('bad-request', 'the request needs a JSON body');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    const message = (err as Error).message;
    // V8 says "at position N" (or nothing, at the end): the line and column too, for a body of many lines
    const m = /at position (\d+)/.exec(message);
    const pos = m ? Number(m[1]) : /end of (JSON|data)/i.test(message) ? text.length : null;
    if (pos === null || /\(line \d+ column \d+\)/.test(message)) throw new ApiError('bad-request', `invalid JSON: ${message}`);
    const before = text.slice(0, pos);
    const line = before.split('\n').length;
    const column = pos - (before.lastIndexOf('\n') + 1) + 1;
    throw new ApiError('bad-request', `invalid JSON: ${message}${m ? '' : ` at position ${pos}`} (line ${line}, column ${column})`, { position: pos, line, column });
  }
  const dup = duplicateKey(text);
  if (dup) throw new ApiError('bad-request', `invalid JSON: the key ${JSON.stringify(dup.key)} is given twice in one object (at position ${dup.position}); JSON.parse would keep only the last`);
  checkShape(value);
  return value;
}

/**
 * The first key given twice in one object of a valid JSON text (RFC 8259 §4: names SHOULD be
 * unique; JSON.parse silently keeps the last, so `{"services": [...], "services": []}` would
 * replace every service). Keys are compared decoded (`"\u006eame"` is `"name"`), as YAML
 * bodies and config files compare them. One pass, no recursion.
 */
export function duplicateKey(text: string): { key: string; position: number } | null {
  const stack: (Set<string> | null)[] = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      while (j < text.length && text.charCodeAt(j) !== 0x22) j += text.charCodeAt(j) === 0x5c /* \ */ ? 2 : 1;
      const top = stack[stack.length - 1];
      if (expectKey && top) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (top.has(key)) return { key, position: i };
        top.add(key);
      }
      expectKey = false;
      i = j;
    } else if (c === 0x7b /* { */) {
      stack.push(new Set());
      expectKey = true;
    } else if (c === 0x5b /* [ */) {
      stack.push(null);
      expectKey = false;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
      expectKey = false;
    } else if (c === 0x2c /* , */) {
      expectKey = stack[stack.length - 1] instanceof Set;
    }
  }
  return null;
}

/** YAML (1.2; JSON is YAML): no `${VAR}` substitution — values are kept as given. */
/** Where a parsed YAML body's fields are: the line of a path (the nearest enclosing node's). */
export type LineOf = (path: readonly PathSegment[]) => number | undefined;

export function parseYaml(buf: Buffer, located?: { lineOf?: LineOf }): unknown {
  const text = decodeUtf8(buf);
  if (text.trim() === '') throw new ApiError('bad-request', 'the request needs a body');
  let value: unknown;
  try {
    const lc = new LineCounter();
    // (`{type: key-auth, key: ${KEY}}` as in a config file: see parseConfigYaml)
    const doc = parseConfigYaml(text, { lineCounter: lc });
    if (doc.errors.length) {
      const issues = doc.errors.slice(0, 5).map((x) => {
        const at = lc.linePos(x.pos[0]);
        const dup = x.code === 'DUPLICATE_KEY' ? duplicateKeyAt(doc, x.pos[0]) : null;
        if (dup) return { path: formatPath(dup), message: `line ${at.line}: duplicate key "${String(dup[dup.length - 1])}" (column ${at.col}): a key may appear once in a mapping` };
        return { path: '(syntax)', message: `line ${at.line}: ${x.message.split('\n')[0]}` };
      });
      const first = issues[0]!;
      throw new ApiError('bad-request', `invalid YAML: ${first.path === '(syntax)' ? '' : `${first.path}: `}${first.message}`, { errors: issues });
    }
    // An unknown tag (`token: !env ADMIN_TOKEN`) would be dropped and the value taken literally.
    const tags = doc.warnings.filter((w) => w.code === 'TAG_RESOLVE_FAILED' || w.code === 'BAD_COLLECTION_TYPE');
    if (tags.length) {
      const issues = tags.slice(0, 5).map((w) => ({
        path: '(tag)',
        message: `line ${lc.linePos(w.pos[0]).line}: unsupported YAML tag ${text.slice(w.pos[0], w.pos[1]).trim()}: write \${VAR} or \${VAR:-default} to read an environment variable`,
      }));
      throw new ApiError('bad-request', `invalid YAML: ${issues[0]!.message}`, { errors: issues });
    }
    typeUnquotedRefs(doc); // `limit: ${LIMIT}` means a number, as in a file
    value = doc.toJS({ maxAliasCount: 100 });
    if (located) located.lineOf = (path) => locate(doc, lc, path);
  } catch (err) {
    if (err instanceof ApiError) throw err;
    throw new ApiError('bad-request', `invalid YAML: ${(err as Error).message}`);
  }
  checkShape(value);
  return value;
}

function decodeUtf8(buf: Buffer): string {
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(buf);
  } catch {
    throw new ApiError('bad-request', 'the body is not valid UTF-8');
  }
}
