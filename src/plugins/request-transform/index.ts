/**
 * request-transform: changes what goes upstream — method, path (template or regex with
 * captures), headers, query parameters, and a JSON body (field mapping and/or a JSONata
 * expression). A JSON body is read whole, up to max_body (413 past it); a body that says it is
 * JSON and is not gets a 400. Bodies of other media types pass through untouched.
 */
import { definePlugin, type RequestCtx } from '../types.js';
import { headerValueText } from '../../compose/template.js';
import { jsonBodyProblem, parseSize } from '../../config/units.js';
import { ProblemError } from '../../core/problem.js';
import { CODED_CONTENT_HEADERS, REPEATED_CONTENT_TYPE, asciiCompatible, asciiJson, codedContent, foreignCharset, repeatedContentType } from '../../core/headers.js';
import { ResultTooLarge, compileHeaderOps, compileJsonOps, compileQueryOps, compileTemplate, isJsonType, parseJson, recordInputs, segmentValues, transformInputs, type JsonTransform } from '../transform-common.js';
import { RequestTransformConfig } from './schema.js';
import { dotSegment } from '../../compose/template.js';

const DEFAULT_MAX_BODY = 1024 * 1024;

/** Fields describing the client's body bytes, which a JSON transform replaces. */
const CLIENT_DIGESTS = ['content-md5', 'digest', 'content-digest', 'repr-digest'] as const;

/** The request's fields as a plain object (for $request.headers in expressions). */
function headerObject(ctx: RequestCtx): Record<string, string> {
  const out = Object.create(null) as Record<string, string>; // (a field named constructor is data)
  const raw = ctx.req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (k.charCodeAt(0) === 0x3a) continue;
    const v = headerValueText(raw[i + 1]!); // (the text, not its bytes one per character)
    out[k] = k in out ? `${out[k]}, ${v}` : v;
  }
  return out;
}

/**
 * A regex replacement: `$1`..`$9` are the captures, `{...}` templates; values from the request
 * go in as they are (a `$` in a client's header is not a replacement pattern).
 */
function compileReplacement(r: string): (ctx: RequestCtx, m: string[]) => string {
  const parts: (string | number | ((ctx: RequestCtx) => string))[] = [];
  const re = /\$([0-9])|\{[a-z_]+(?:\.[^{}]+)?\}/g;
  let last = 0;
  for (let m = re.exec(r); m !== null; m = re.exec(r)) {
    parts.push(r.slice(last, m.index));
    last = m.index + m[0].length;
    parts.push(m[1] !== undefined ? Number(m[1]) : compileTemplate(m[0], 'path'));
  }
  parts.push(r.slice(last));
  segmentValues(parts);
  return (ctx, m) => {
    let s = '';
    for (const p of parts) s += typeof p === 'string' ? p : typeof p === 'number' ? (typeof m[p] === 'string' ? m[p] : '') : p(ctx);
    return s;
  };
}

/**
 * What a path the gateway forwards may hold: what it accepts in a client's path once
 * normalized — visible ASCII and the raw bytes above 0x7F (as node reads them), '%' only as a
 * valid escape — but never what would end the path or change the request line ('?', '#',
 * space, controls) nor a backslash. A regex rewrite keeps the client's own characters
 * (`[`, `|`, `"`... pass unchanged, as on a route without a rewrite); template values come in
 * percent-encoded.
 */
const PATH_TEXT = /^(?:[\x21\x22\x24\x26-\x3e\x40-\x5b\x5d-\x7e\x80-\xff]|%[0-9A-Fa-f]{2})*$/;

/**
 * A rewritten path: absolute, the characters above only, and no `.` / `..` segment (values
 * are encoded, but a regex capture or a whole value can still be one).
 */
function safePath(p: string): string {
  if (!PATH_TEXT.test(p)) throw new ProblemError('bad-request', 'the rewritten path is not a valid path');
  if (dotSegment(p) !== null) throw new ProblemError('bad-request', 'the rewritten path would have a "." or ".." segment');
  return p.charCodeAt(0) === 0x2f ? p : '/' + p;
}

const charsetRefused = (charset: string) => new ProblemError('unsupported-media-type', `a JSON body is transformed as UTF-8: charset ${JSON.stringify(charset)} is not accepted (send UTF-8; ISO-8859-x or windows-125x only for ASCII bytes)`);

export default definePlugin({
  name: 'request-transform',
  priority: 801,
  description: 'Changes the request sent upstream: method, path, headers, query, JSON body.',
  schema: RequestTransformConfig,
  scopes: ['global', 'service', 'route', 'consumer'],
  check(config) {
    const problems: (string | { path: string[]; message: string })[] = [];
    const tooBig = config.max_body !== undefined ? jsonBodyProblem(config.max_body) : null;
    if (tooBig !== null) problems.push({ path: ['max_body'], message: tooBig });
    const attempt = (what: string, f: () => unknown) => {
      try {
        f();
      } catch (e) {
        problems.push(`${what}: ${(e as Error).message}`);
      }
    };
    if (config.path !== undefined && typeof config.path !== 'string') {
      const p = config.path.pattern;
      attempt('path.pattern', () => new RegExp(p));
    } else if (config.path !== undefined) {
      const p = config.path;
      attempt('path', () => compileTemplate(p, 'path'));
      // (the literal text: values are encoded, so a '.' segment there is the config's own)
      if (dotSegment(p) !== null) problems.push(`path: "${p}" has a "." or ".." segment`);
    }
    attempt('json', () => compileJsonOps(config.json));
    attempt('headers', () => compileHeaderOps(config.headers));
    attempt('query', () => compileQueryOps(config.query));
    return problems;
  },
  create(config) {
    const method = config.method?.toUpperCase();
    const headers = compileHeaderOps(config.headers);
    const query = compileQueryOps(config.query);
    const max = config.max_body !== undefined ? parseSize(config.max_body) : DEFAULT_MAX_BODY;
    const json = compileJsonOps(config.json, true, max);
    // What the upstream request gets from beyond the client's path and query (the cache keys
    // its entries by them too). (A JSON body's edits: a request with a body is never cached.)
    const inputs = transformInputs('request', config.headers, config.query, undefined,
      typeof config.path === 'string' ? [config.path] : config.path !== undefined ? [config.path.replace] : []);
    let path: ((ctx: RequestCtx) => string) | null = null;
    if (typeof config.path === 'string') {
      const t = compileTemplate(config.path, 'path');
      path = (ctx) => t(ctx);
    } else if (config.path !== undefined) {
      const re = new RegExp(config.path.pattern);
      const replace = compileReplacement(config.path.replace);
      path = (ctx) => ctx.upstreamPath.replace(re, (...m: unknown[]) => replace(ctx, m as string[]));
    }
    const transformBody = async (ctx: RequestCtx, json: JsonTransform, foreign: boolean) => {
          const body = await ctx.readBody(max);
          if (body.length === 0) return;
          if (foreign) {
            const charset = foreignCharset(ctx.header('content-type'), body);
            if (charset !== null) throw charsetRefused(charset);
          }
          const doc = parseJson(body, (m) => new ProblemError('bad-request', `the request body is not valid JSON: ${m}`));
          let out: string;
          try {
            out = JSON.stringify(await json(doc, { ctx, headers: () => headerObject(ctx) }));
          } catch (e) {
            // (a RangeError: a result nested too deeply to serialise)
            throw new ProblemError('bad-request', `the request body could not be transformed: ${e instanceof RangeError ? 'nested too deeply' : e instanceof ResultTooLarge ? e.message : (e as { message?: string }).message ?? 'error'}`);
          }
          // (sent on under the client's charset: past U+007F as \u escapes, the same text in it)
          ctx.setUpstreamBody(foreign ? asciiJson(out) : out);
          // The client's digests are of the bytes it sent (RFC 3230, RFC 9530): an upstream
          // that checks them would refuse the transformed body.
          for (const name of CLIENT_DIGESTS) if (ctx.header(name) !== undefined) ctx.removeUpstreamHeader(name);
    };
    return {
      access(ctx) {
        if (inputs !== null) recordInputs(ctx, inputs);
        if (method !== undefined) ctx.upstreamMethod = method;
        if (path !== null) ctx.upstreamPath = safePath(path(ctx));
        if (query !== null) ctx.upstreamQuery = query(ctx, ctx.upstreamQuery);
        if (headers !== null) ctx.editUpstreamHeaders((list) => headers(ctx, list));
        // (only a JSON body makes the request wait)
        if (json !== null && isJsonType(ctx.header('content-type'))) {
          if (repeatedContentType(ctx.req.rawHeaders)) throw new ProblemError('bad-request', REPEATED_CONTENT_TYPE);
          if (codedContent(ctx.header('content-encoding'))) throw new ProblemError('unsupported-media-type', 'a JSON body with a Content-Encoding cannot be transformed: send it unencoded', undefined, CODED_CONTENT_HEADERS);
          // (read as UTF-8: declared in UTF-7, `"x+ACIALAAi-role+ACIAOgAi-admin"` is one string
          // here, which a json.remove of `role` does not touch, and `"x","role":"admin"` upstream)
          // An ASCII-only body in a charset that reads ASCII as ASCII (an old Java client's
          // ISO-8859-1) is the same text: read, then checked.
          const charset = foreignCharset(ctx.header('content-type'));
          if (charset !== null && !asciiCompatible(charset)) throw charsetRefused(charset);
          return transformBody(ctx, json, charset !== null);
        }
      },
    };
  },
});
