/**
 * request-validator: requests (and optionally responses) checked against an OpenAPI 3.0 / 3.1
 * document, or plain JSON Schemas for the body, query and headers. Everything is compiled when
 * the binding is created (and kept across reloads while the document and settings are the
 * same); a request only runs compiled validators. Violations: 400 validation-failed with the
 * list (`errors: [{in, path, message}]`); a body that is not JSON: 400 bad-request naming the
 * position; an undeclared media type: 415; over max_body: 413; with validate_response, a
 * response that breaks the document: 502 invalid-upstream-response (logged).
 */
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { LRUCache } from 'lru-cache';
import { definePlugin, type PluginDeps, type Reply, type RequestCtx } from '../types.js';
import { ProblemError } from '../../core/problem.js';
import { REPEATED_CONTENT_TYPE, repeatedContentType } from '../../core/headers.js';
import { jsonBodyProblem, parseSize } from '../../config/units.js';
import { parseDocumentText } from './spec.js';
import { ApiValidator, type Operation, type Outcome } from './validator.js';
import { RequestValidatorConfig } from './schema.js';

/**
 * Compiled validators by content: a reload that leaves the document and settings alone reuses
 * them (compiling a large document takes a while; a snapshot never changes one it holds).
 */
const compiled = new LRUCache<string, ApiValidator>({ max: 16 });

/** Where relative paths of the config are resolved: the config file's directory when the core tells, else the working directory. */
export function configDir(deps: PluginDeps): string {
  const d: unknown = deps.baseDir;
  return typeof d === 'string' ? d : process.cwd();
}

type Config = typeof RequestValidatorConfig.static;

/** Reads the document a binding names (file or inline); null in plain-schema mode. */
function documentOf(config: Config, deps: PluginDeps): { doc: unknown; source: string } | null {
  if (config.spec !== undefined) return { doc: config.spec, source: 'spec' };
  if (config.openapi === undefined) return null;
  const file = resolve(configDir(deps), config.openapi);
  let text: string;
  try {
    text = deps.readFile(file).toString('utf8');
  } catch (e) {
    throw new Error(`openapi: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    return { doc: parseDocumentText(text), source: `openapi ${file}` };
  } catch (e) {
    throw new Error(`openapi ${file}: ${(e as Error).message.split('\n')[0]}`);
  }
}

function hasBody(ctx: RequestCtx): boolean | null {
  const cl = ctx.header('content-length');
  if (cl !== undefined) return Number(cl) > 0;
  if (ctx.header('transfer-encoding') !== undefined) return true;
  // HTTP/2 bodies need no length: reading tells.
  return ctx.req.httpVersionMajor >= 2 ? null : false;
}

/**
 * Fields node:http keeps the first copy of, dropping the others (IncomingMessage#headers): the
 * validator reads them all, joined, as for any other field, since an upstream may read the last
 * (`User-Agent: good` then `User-Agent: <anything>` passed a declared pattern).
 */
const FIRST_ONLY = new Set([
  'age', 'content-length', 'content-type', 'etag', 'expires', 'from', 'host', 'if-modified-since', 'if-unmodified-since',
  'last-modified', 'location', 'max-forwards', 'referer', 'retry-after', 'server', 'user-agent',
]);

/** Every copy of a field in a raw header list, joined with ", "; undefined when it is there once or not at all. */
function allCopies(raw: readonly string[], name: string): string | undefined {
  let first: string | undefined;
  let out: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.length !== name.length || raw[i]!.toLowerCase() !== name) continue;
    if (first === undefined) first = raw[i + 1]!;
    else out = `${out ?? first}, ${raw[i + 1]!}`;
  }
  return out;
}

function reply(o: Outcome): Reply | undefined {
  if (o.ok) return undefined;
  switch (o.code) {
    case 'validation-failed':
      return { code: o.code, detail: o.detail, extra: { errors: o.errors } };
    case 'method-not-allowed':
      return { code: o.code, detail: o.detail, headers: { allow: o.allow.join(', ') } };
    default:
      return { code: o.code, detail: o.detail, ...(o.headers ? { headers: { ...o.headers } } : {}) };
  }
}

export default definePlugin({
  name: 'request-validator',
  priority: 880,
  description: 'Validates requests (path, query, headers, cookies, media type, JSON or form body) and optionally responses against an OpenAPI 3.0 / 3.1 document or JSON Schemas.',
  schema: RequestValidatorConfig,
  scopes: ['global', 'service', 'route', 'consumer'],
  check(config) {
    const out: (string | { path: string[]; message: string })[] = [];
    const tooBig = config.max_body !== undefined ? jsonBodyProblem(config.max_body) : null;
    if (tooBig !== null) out.push({ path: ['max_body'], message: tooBig });
    const schemas = config.body_schema !== undefined || config.query_schema !== undefined || config.header_schema !== undefined;
    const sources = [config.openapi !== undefined, config.spec !== undefined, schemas].filter(Boolean).length;
    if (sources === 0) out.push('give openapi (a file), spec (inline), or body_schema / query_schema / header_schema');
    if (sources > 1) out.push('give one of openapi, spec, or the *_schema settings');
    if (config.validate_response && !(config.openapi !== undefined || config.spec !== undefined)) out.push('validate_response needs an OpenAPI document (openapi or spec)');
    if (config.body_required !== undefined && config.body_schema === undefined) out.push('body_required goes with body_schema (a document says it per operation)');
    return out;
  },
  create(config, deps) {
    const maxBody = parseSize(config.max_body ?? '1mb');
    const maxResponse = parseSize(config.max_response ?? '1mb');
    const responses = config.validate_response === true;
    const allowUnknown = config.allow_unknown_operations === true;
    const opts = {
      maxDepth: config.max_depth ?? 128,
      allowUnsafePatterns: config.allow_unsafe_patterns === true,
      responses,
      warn: (message: string) => deps.log.warn({ plugin: 'request-validator', where: deps.where }, message),
    };
    const found = documentOf(config, deps);
    const key = createHash('sha256').update(JSON.stringify({
      doc: found?.doc ?? null,
      body: config.body_schema, query: config.query_schema, header: config.header_schema, bodyRequired: config.body_required,
      maxDepth: opts.maxDepth, unsafe: opts.allowUnsafePatterns, responses,
    })).digest('base64url');
    let validator = compiled.get(key);
    if (!validator) {
      try {
        validator = found
          ? ApiValidator.openapi(found.doc, opts)
          : ApiValidator.schemas({ body: config.body_schema, query: config.query_schema, header: config.header_schema, bodyRequired: config.body_required ?? true }, opts);
      } catch (e) {
        throw new Error(found ? `${found.source}: ${(e as Error).message}` : (e as Error).message);
      }
      compiled.set(key, validator);
    }
    const v = validator;
    /** The operation each request matched (for its response). */
    const matched = new WeakMap<RequestCtx, Operation>();

    return {
      access(ctx) {
        // A CORS preflight is routed as the method it asks about: it has nothing to validate.
        if (ctx.preflight) return undefined;
        const f = v.find(ctx.method, ctx.path);
        // (allow_unknown_operations passes what is no operation, not a path an upstream reads as one: a 400)
        if (!('op' in f)) return allowUnknown && f.code !== 'bad-request' ? undefined : reply(f);
        if (responses) {
          matched.set(ctx, f.op);
          // A range of a response (206) cannot be checked against the document, and would let
          // a client read pieces of one that breaks it: the upstream is asked for all of it, and
          // the client gets it whole once checked (as from a server that ignores Range, RFC 9110 §14.2).
          if (ctx.header('range') !== undefined) {
            ctx.removeUpstreamHeader('range');
            ctx.removeUpstreamHeader('if-range');
          }
        }
        // (the body is checked by its Content-Type: one that the upstream might read otherwise is refused)
        if (f.op.body && hasBody(ctx) !== false && repeatedContentType(ctx.req.rawHeaders)) return { code: 'bad-request', detail: REPEATED_CONTENT_TYPE };
        const outcome = v.check(f.op, f.params, {
          method: ctx.method,
          path: ctx.path,
          query: ctx.query,
          header: (name) => (FIRST_ONLY.has(name) ? allCopies(ctx.req.rawHeaders, name) : undefined) ?? ctx.header(name),
          hasBody: hasBody(ctx),
          readBody: () => ctx.readBody(maxBody),
        });
        return outcome instanceof Promise ? outcome.then(reply) : reply(outcome);
      },
      ...(responses ? {
        bufferResponse(ctx: RequestCtx, status: number) {
          const op = matched.get(ctx);
          if (!op || v.responseSpec(op, status) === null) return null;
          return maxResponse;
        },
        response(ctx: RequestCtx, r: { status: number; headers: string[]; body: Buffer; origin: 'upstream' | 'gateway' }) {
          if (r.origin !== 'upstream') return;
          const op = matched.get(ctx);
          if (!op) return;
          const errors = v.checkResponse(op, r.status, r.headers, r.body, maxResponse);
          if (errors.length === 0) return;
          deps.log.warn({
            plugin: 'request-validator', route: ctx.route.name, operation: op.id, status: r.status, request_id: ctx.requestId, errors,
          }, 'upstream response violates the API description');
          // The client learns where, not what the upstream sent.
          throw new ProblemError('invalid-upstream-response', `the upstream response does not match the API description (${op.id})`, {
            errors: errors.map((e) => ({ in: e.in, path: e.path })),
          });
        },
      } : {}),
    };
  },
});
