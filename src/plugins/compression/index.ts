/**
 * compression: gzip or br of responses by the client's Accept-Encoding (RFC 9110 §12.5.3,
 * q-values honoured, `identity;q=0` and `*` understood) when the upstream did not encode them.
 * Streams (zlib in node's streams, with backpressure); the chosen coding adds Content-Encoding
 * and Vary: Accept-Encoding, drops Content-Length, and weakens a strong ETag (the bytes
 * differ); a 304 gets the Vary and ETag its 200 would. Not compressed: HEAD, 204/304/206,
 * bodies smaller than min_size, types not listed, responses with Cache-Control: no-transform,
 * or that already have a Content-Encoding.
 * Streams by nature are left alone: text/event-stream unless listed by name (`text/*` does not
 * take it; nginx's gzip_types default leaves it out too), gRPC always (its framing and
 * trailers are its own). A streamed body (no Content-Length: chunked or close-delimited) is
 * flushed after every chunk the upstream sent (Z_SYNC_FLUSH / BROTLI_OPERATION_FLUSH, as
 * Envoy's compressor does per data frame), so each reaches the client when it came rather
 * than when the coder's window fills; a body of known length keeps the full ratio.
 */
import { constants, createBrotliCompress, createGzip } from 'node:zlib';
import type { Transform } from 'node:stream';
import { HEADERS_ONLY, definePlugin, type RequestCtx } from '../types.js';
import { parseSize } from '../../config/units.js';
import { findHeader } from '../../server/respond.js';
import { CompressionConfig } from './schema.js';

const DEFAULT_TYPES = [
  'text/*', 'application/json', 'application/javascript', 'application/xml', 'application/x-www-form-urlencoded',
  'application/graphql-response+json', 'image/svg+xml', 'application/wasm',
];

/** The coding to use (or null) from an Accept-Encoding value, among `offered` (in preference order). */
export function negotiate(accept: string | undefined, offered: readonly string[]): string | null {
  if (accept === undefined) return null; // no field: any coding is acceptable, but identity is safest
  const q = new Map<string, number>();
  for (const part of accept.split(',')) {
    const [name, ...params] = part.trim().split(';');
    const coding = name!.trim().toLowerCase();
    if (coding === '') continue;
    let weight = 1;
    for (const p of params) {
      if (!/^\s*q\s*=/i.test(p)) continue;
      // qvalue = 0[.ddd] / 1[.000] (RFC 9110 §12.4.2); anything else makes the member unusable.
      const m = /^\s*q\s*=\s*(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\s*$/i.exec(p);
      weight = m ? Number(m[1]) : 0;
    }
    const key = coding === 'x-gzip' ? 'gzip' : coding;
    if (!q.has(key)) q.set(key, weight); // (a repeated coding: its first weight counts)
  }
  let best: string | null = null;
  let bestQ = 0;
  for (const c of offered) {
    const w = q.get(c) ?? q.get('*') ?? 0;
    if (w > bestQ) {
      best = c;
      bestQ = w;
    }
  }
  // identity preferred over every offered coding (gzip;q=0.5, identity): left as it is.
  const identity = q.get('identity');
  if (best !== null && identity !== undefined && identity > bestQ) return null;
  return best;
}

/** Fields that no longer hold once the body is compressed. */
const NOT_KEPT_ENCODED = new Set(['accept-ranges', 'content-digest', 'repr-digest', 'digest', 'content-md5']);

function typeMatcher(types: readonly string[]): (ct: string | undefined) => boolean {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  for (const t of types) {
    if (t.endsWith('/*')) prefixes.push(t.slice(0, -1));
    else exact.add(t);
  }
  const json = exact.has('application/json');
  const xml = exact.has('application/xml');
  return (ct) => {
    if (ct === undefined) return false;
    const t = ct.split(';')[0]!.trim().toLowerCase();
    // gRPC (application/grpc, +json, -web...): never, whatever is listed (its trailers would be lost).
    if (t.startsWith('application/grpc')) return false;
    if (exact.has(t)) return true;
    if ((json && t.endsWith('+json')) || (xml && t.endsWith('+xml'))) return true;
    // An event stream only when listed by name: a wildcard does not take it.
    if (t === 'text/event-stream') return false;
    for (const p of prefixes) if (t.startsWith(p)) return true;
    return false;
  };
}

/** Vary: Accept-Encoding on a response (the representation depends on it). */
function addVary(headers: string[]): void {
  const vary = findHeader(headers, 'vary');
  if (vary === -1) headers.push('vary', 'Accept-Encoding');
  else if (!/(^|,)\s*(accept-encoding|\*)\s*(,|$)/i.test(headers[vary + 1]!)) headers[vary + 1] += ', Accept-Encoding';
}

/** Whether the request says Cache-Control: no-transform (node joins its lines: any of them counts). */
const noTransformAsked = (ctx: RequestCtx): boolean => {
  const cc = ctx.header('cache-control');
  return cc !== undefined && /(^|,)\s*no-transform\s*(,|$)/i.test(cc);
};

export default definePlugin({
  name: 'compression',
  priority: 5,
  description: 'Compresses responses with gzip or br by Accept-Encoding when the upstream did not.',
  schema: CompressionConfig,
  scopes: ['global', 'service', 'route'],
  create(config) {
    const offered = config.algorithms ?? ['br', 'gzip'];
    const typeOk = typeMatcher(config.types ?? DEFAULT_TYPES);
    const minSize = config.min_size !== undefined ? parseSize(config.min_size) : 1024;
    const gzipLevel = config.gzip_level ?? 6;
    const brQuality = config.br_quality ?? 4;
    // A known length is compressed whole; a streamed body is flushed after each write (each
    // upstream chunk) so nothing waits in the coder for the next one.
    const gzipWhole = { level: gzipLevel };
    const gzipStream = { level: gzipLevel, flush: constants.Z_SYNC_FLUSH };
    const brWhole = { params: { [constants.BROTLI_PARAM_QUALITY]: brQuality } };
    const brStream = { ...brWhole, flush: constants.BROTLI_OPERATION_FLUSH };
    /**
     * A 304 carries the ETag and Vary its 200 would (RFC 9110 §15.4.5): the 200's type and length
     * are mostly not in it, so what it has decides (no-transform, a Content-Encoding, a type or
     * length it names); an ETag the client holds strong (its 200 went uncompressed) stays strong.
     */
    const notModified = (ctx: RequestCtx, headers: string[]): void => {
      for (let i = 0; i < headers.length; i += 2) {
        const n = headers[i]!.toLowerCase();
        if (n === 'cache-control' && /(^|,)\s*no-transform\s*(,|$)/i.test(headers[i + 1]!)) return;
        if (n === 'content-encoding' && headers[i + 1]!.trim().toLowerCase() !== 'identity') return;
      }
      const ct = findHeader(headers, 'content-type');
      if (ct !== -1 && !typeOk(headers[ct + 1])) return;
      addVary(headers);
      // (the 200 this client would get is the identity one: its ETag stays as it is)
      if (noTransformAsked(ctx)) return;
      const cl = findHeader(headers, 'content-length');
      if (cl !== -1 && Number(headers[cl + 1]) < minSize) return;
      if (negotiate(ctx.header('accept-encoding'), offered) === null) return;
      const etag = findHeader(headers, 'etag');
      const tag = etag === -1 ? '' : headers[etag + 1]!.trim();
      if (etag !== -1 && !tag.startsWith('W/')) {
        const inm = ctx.header('if-none-match');
        if (inm !== undefined && inm.match(/(?:W\/)?"[^"]*"/g)?.includes(tag) === true) return;
        headers[etag + 1] = 'W/' + tag;
      }
      // (the compressed 200 has no Content-Length: a 304's would not be its length, §8.6)
      if (cl !== -1) headers.splice(cl, 2);
    };
    return {
      encodeResponse(ctx, status, headers): Transform | typeof HEADERS_ONLY | null {
        if (status === 304) {
          notModified(ctx, headers);
          return null;
        }
        if (status === 206 || findHeader(headers, 'content-range') !== -1) return null;
        const ct = findHeader(headers, 'content-type');
        if (ct === -1 || !typeOk(headers[ct + 1])) return null;
        // (every Cache-Control / Content-Encoding line counts, not only the first)
        for (let i = 0; i < headers.length; i += 2) {
          const n = headers[i]!.toLowerCase();
          if (n === 'cache-control' && /(^|,)\s*no-transform\s*(,|$)/i.test(headers[i + 1]!)) return null;
          if (n === 'content-encoding' && headers[i + 1]!.trim().toLowerCase() !== 'identity') return null;
        }
        // The representation depends on Accept-Encoding from here on, compressed or not.
        addVary(headers);
        // A request's no-transform binds a proxy as the response's does (RFC 9110 §7.7, RFC 9111
        // §5.2.1.6): the client gets the upstream's bytes.
        if (noTransformAsked(ctx)) return null;
        const cl = findHeader(headers, 'content-length');
        // (an empty body stays empty: a coding would add its header and trailer, min_size 0 or not)
        if (cl !== -1 && (Number(headers[cl + 1]) < minSize || Number(headers[cl + 1]) === 0)) return null;
        const coding = negotiate(ctx.header('accept-encoding'), offered);
        if (coding === null) return null;
        // (any Content-Encoding left says identity)
        for (let i = headers.length - 2; i >= 0; i -= 2) if (headers[i]!.toLowerCase() === 'content-encoding') headers.splice(i, 2);
        headers.push('content-encoding', coding);
        // Byte ranges of the compressed stream are not on offer (nginx drops the field too); digests
        // of the upstream's bytes describe other bytes than these (RFC 9530: Content-Digest is of
        // the content as sent, Repr-Digest of the representation with its content coding).
        for (let i = headers.length - 2; i >= 0; i -= 2) if (NOT_KEPT_ENCODED.has(headers[i]!.toLowerCase())) headers.splice(i, 2);
        const etag = findHeader(headers, 'etag');
        if (etag !== -1 && !headers[etag + 1]!.startsWith('W/')) headers[etag + 1] = 'W/' + headers[etag + 1]!;
        // (a HEAD answer: the fields the GET's would have, no coder built for a body never sent)
        if (ctx.method === 'HEAD') return HEADERS_ONLY;
        // (whole responses from respond.ts always carry their Content-Length here)
        return coding === 'br'
          ? createBrotliCompress(cl === -1 ? brStream : brWhole)
          : createGzip(cl === -1 ? gzipStream : gzipWhole);
      },
    };
  },
});
