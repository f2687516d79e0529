/**
 * response-transform: changes what the client gets — status (mapping), headers, and a JSON
 * body (field mapping and/or a JSONata expression). Header edits stream; a status mapping or a
 * JSON transform holds the response whole, up to max_body (past it: 502
 * upstream-response-too-large). An upstream body that says it is JSON and is not: 502
 * invalid-upstream-response. Answers the gateway makes itself (problems) are left alone; a
 * composition's merged answer is transformed like an upstream's.
 */
import { gunzipSync, brotliDecompressSync, inflateRawSync, inflateSync } from 'node:zlib';
import { definePlugin, type RequestCtx } from '../types.js';
import { headerValueText } from '../../compose/template.js';
import { jsonBodyProblem, parseSize } from '../../config/units.js';
import { ProblemError } from '../../core/problem.js';
import { foreignCharset } from '../../core/headers.js';
import { findHeader, removeHeader } from '../../server/respond.js';
import { ResultTooLarge, compileHeaderOps, compileJsonOps, isJsonType, parseJson, recordInputs, transformInputs } from '../transform-common.js';
import { ResponseTransformConfig } from './schema.js';

const DEFAULT_MAX_BODY = 1024 * 1024;

/**
 * Fields that describe the upstream's bytes, not a transformed body (content-length is
 * recomputed for a GET): its length, coding, validator, digests (RFC 3230, RFC 9530), and its
 * ranges (the transform asks for the whole body, a range of the transformed one is not served).
 */
const UPSTREAM_BYTES = ['content-length', 'content-encoding', 'etag', 'content-md5', 'digest', 'content-digest', 'repr-digest', 'accept-ranges'] as const;

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

/** Decodes a content-coded body (an upstream that compressed although it was not asked to). */
function decode(coding: string, body: Buffer, max: number): Buffer {
  const opts = { maxOutputLength: max };
  try {
    switch (coding) {
      case 'gzip': case 'x-gzip': return gunzipSync(body, opts);
      case 'br': return brotliDecompressSync(body, opts);
      case 'deflate':
        // (zlib-wrapped as RFC 9110 §8.4.1.2 says; raw DEFLATE as some servers send it, which
        // browsers and compose steps read too)
        try {
          return inflateSync(body, opts);
        } catch (e) {
          if ((e as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') throw e;
          return inflateRawSync(body, opts);
        }
    }
  } catch (e) {
    if ((e as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') throw new ProblemError('upstream-response-too-large', `the upstream's decoded body is larger than ${max} bytes`);
    throw new ProblemError('invalid-upstream-response', `the upstream's ${coding} body cannot be decoded`);
  }
  throw new ProblemError('invalid-upstream-response', `the upstream's body has an unknown content coding (${coding})`);
}

export default definePlugin({
  name: 'response-transform',
  priority: 800,
  description: 'Changes the response sent to the client: status, headers, JSON body.',
  schema: ResponseTransformConfig,
  scopes: ['global', 'service', 'route', 'consumer'],
  check(config) {
    const problems: (string | { path: string[]; message: string })[] = [];
    const tooBig = config.max_body !== undefined ? jsonBodyProblem(config.max_body) : null;
    if (tooBig !== null) problems.push({ path: ['max_body'], message: tooBig });
    try {
      compileJsonOps(config.json, false);
    } catch (e) {
      problems.push(`json: ${(e as Error).message}`);
    }
    try {
      compileHeaderOps(config.headers, false);
    } catch (e) {
      problems.push(`headers: ${(e as Error).message}`);
    }
    return problems;
  },
  create(config) {
    // (templates on the response side: a client's query is read leniently, see queryPart)
    const headers = compileHeaderOps(config.headers, false);
    const max = config.max_body !== undefined ? parseSize(config.max_body) : DEFAULT_MAX_BODY;
    const json = compileJsonOps(config.json, false, max);
    // What the answer gets from the request (a cache stores the transformed answer: keyed by them too)
    const inputs = transformInputs('response', config.headers, undefined, config.json);
    const statusMap = new Map(Object.entries(config.status ?? {}).map(([k, v]) => [Number(k), v]));
    const only = config.statuses ? new Set(config.statuses) : null;
    const applies = (status: number) => only === null || only.has(status);
    /** A JSON transform of a 200 (or of a 206, a part of one) needs the whole body. */
    const wholeBody = json !== null && (applies(200) || applies(206));
    const wantsJson = (status: number, list: readonly string[]) => {
      if (json === null || !applies(status) || status === 204 || status === 304) return false;
      const ct = findHeader(list, 'content-type');
      return ct !== -1 && isJsonType(list[ct + 1]);
    };
    /** non_json: refuse — a body of a transformed status that is not JSON (held to be refused whole). */
    const refusedOther = (status: number, list: readonly string[]) =>
      config.non_json === 'refuse' && json !== null && applies(status) && status !== 204 && status !== 304 && !wantsJson(status, list);
    return {
      access(ctx) {
        if (inputs !== null) recordInputs(ctx, inputs);
        if (json === null) return;
        // The transform reads the body as JSON: ask for it without a content coding (an
        // encoder on the way out compresses it again).
        ctx.removeUpstreamHeader('accept-encoding');
        // ... and whole: a range of it (206) is no JSON to transform. The client gets the
        // whole transformed body, as a server that ignores Range answers (RFC 9110 §14.2).
        if (wholeBody && ctx.header('range') !== undefined) {
          ctx.removeUpstreamHeader('range');
          ctx.removeUpstreamHeader('if-range');
        }
      },
      ...(headers !== null ? {
        responseHeaders(ctx: RequestCtx, status: number, list: string[]) {
          if (applies(status)) headers(ctx, list);
        },
      } : {}),
      bufferResponse(_ctx, status, list) {
        return (statusMap.has(status) && applies(status)) || wantsJson(status, list) || refusedOther(status, list) ? max : null;
      },
      async response(ctx, r) {
        // (a composition's merged answer is shaped too, as KrakenD does; problems are not)
        if (r.origin !== 'upstream' && r.composed !== true) return;
        const upstreamStatus = r.status;
        if (!applies(upstreamStatus)) return;
        // (a HEAD answer by its Content-Type: the GET's body would be refused)
        if (refusedOther(upstreamStatus, r.headers) && (ctx.method === 'HEAD' ? findHeader(r.headers, 'content-type') !== -1 : r.body.length > 0)) {
          const ct = findHeader(r.headers, 'content-type');
          throw new ProblemError('invalid-upstream-response', `the upstream answered ${ct === -1 ? 'a body without Content-Type' : JSON.stringify(r.headers[ct + 1]!.split(';')[0]!.trim().slice(0, 100))}, not JSON, on a route that shapes JSON answers (non_json: refuse)`);
        }
        if (wantsJson(upstreamStatus, r.headers) && json !== null && ctx.method === 'HEAD') {
          // No body to transform, but the fields describe the GET's answer (RFC 9110 §9.3.2):
          // its length, coding and validators would not be the upstream's.
          for (const name of UPSTREAM_BYTES) removeHeader(r.headers, name);
        } else if (wantsJson(upstreamStatus, r.headers) && json !== null) {
          let body = r.body;
          const ce = findHeader(r.headers, 'content-encoding');
          if (ce !== -1) {
            const coding = r.headers[ce + 1]!.trim().toLowerCase();
            if (coding !== 'identity') body = decode(coding, body, max);
            removeHeader(r.headers, 'content-encoding');
          }
          if (body.length > 0) {
            // JSON exchanged is UTF-8 (RFC 8259 §8.1) and is read so: a body declared in another
            // charset (utf-16, utf-7) would be transformed as a text other than the one the
            // client reads by its Content-Type.
            const charset = foreignCharset(r.headers[findHeader(r.headers, 'content-type') + 1], body);
            if (charset !== null) throw new ProblemError('invalid-upstream-response', `the upstream's JSON body is in charset ${JSON.stringify(charset)}: it is transformed as UTF-8 only`);
            const doc = parseJson(body, (m) => new ProblemError('invalid-upstream-response', `the upstream's JSON body is invalid: ${m}`));
            let out: string;
            try {
              out = JSON.stringify(await json(doc, { ctx, headers: () => headerObject(ctx) }));
            } catch (e) {
              // (a RangeError: a result nested too deeply to serialise. JSONata's messages quote
              // values of the body — "Unable to cast value to a number: \"...\"" — which are the
              // upstream's, maybe what the transform hides: only its code and position go out)
              const j = e as { code?: unknown; position?: unknown };
              const why = e instanceof RangeError ? 'nested too deeply' : e instanceof ResultTooLarge ? e.message
                : typeof j.code === 'string' ? `the expression failed (JSONata ${j.code}${typeof j.position === 'number' ? ` at position ${j.position}` : ''})` : 'error';
              throw new ProblemError('invalid-upstream-response', `the upstream's body could not be transformed: ${why}`);
            }
            r.body = Buffer.from(out);
            // A validator of the upstream's bytes no longer describes these.
            for (const name of UPSTREAM_BYTES) if (name !== 'content-length') removeHeader(r.headers, name);
          }
        }
        const to = statusMap.get(upstreamStatus);
        if (to !== undefined) r.status = to;
      },
    };
  },
});
