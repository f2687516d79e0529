/**
 * gRPC-Web <-> gRPC translation, pure (no network): content-type mapping, the grpc-web-text
 * (base64) request decoder, the response encoder that moves trailers into the body as a trailer
 * frame (flag 0x80), response-header rewriting, gateway-made error bodies, and the small gRPC
 * helpers a translating proxy needs (HTTP -> gRPC status mapping, status names, grpc-timeout).
 * Spec: https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md and PROTOCOL-HTTP2.md.
 */
import { PassThrough, Transform, type TransformCallback } from 'node:stream';

export interface GrpcWebKind {
  /** grpc-web-text: bodies are base64 in both directions. */
  text: boolean;
  /** the matching application/grpc(+suffix) content type for the upstream */
  grpcContentType: string;
  /** content type for the response to the web client */
  webContentType: string;
}

const KINDS: Record<string, GrpcWebKind> = {};
for (const [web, grpc, text] of [
  ['application/grpc-web', 'application/grpc', false],
  ['application/grpc-web+proto', 'application/grpc+proto', false],
  ['application/grpc-web+json', 'application/grpc+json', false],
  ['application/grpc-web-text', 'application/grpc', true],
  ['application/grpc-web-text+proto', 'application/grpc+proto', true],
] as const) KINDS[web] = Object.freeze({ text, grpcContentType: grpc, webContentType: web });

const GRPC_CONTENT_TYPE = /^application\/grpc(?![\w-])/i;

/** A gRPC (not gRPC-Web) content type: application/grpc, +proto, +json... (any case). */
export function isGrpcContentType(contentType: string | undefined): boolean {
  return contentType !== undefined && GRPC_CONTENT_TYPE.test(contentType);
}

/** The gRPC-Web variant of a request content type (parameters and case ignored); null when not gRPC-Web. */
export function grpcWebKind(contentType: string | undefined): GrpcWebKind | null {
  if (!contentType) return null;
  const semi = contentType.indexOf(';');
  return KINDS[(semi < 0 ? contentType : contentType.slice(0, semi)).trim().toLowerCase()] ?? null;
}

// ---------------------------------------------------------------------------------------------
// Request: grpc-web-text -> binary

/** 0 = base64 alphabet (standard, not URL-safe), 1 = '=', 2 = invalid. No whitespace allowed. */
const B64 = new Uint8Array(256).fill(2);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') B64[c.charCodeAt(0)] = 0;
B64[0x3d] = 1;

function base64Error(): Error {
  return Object.assign(new Error('invalid base64 in grpc-web-text request body'), { code: 'ERR_GRPC_WEB_BASE64' });
}

/**
 * Decodes s[0, end) (end a multiple of 4). Padding may close any quantum ("xx==" or "xxx="), which
 * ends a base64 run; the next quantum starts a new run. Node's decoder stops at the first '=', so
 * each run is decoded on its own. Throws on anything that is not valid padded base64.
 */
function decodeQuanta(s: string, end: number): Buffer {
  const out: Buffer[] = [];
  let run = 0;
  for (let q = 0; q < end; q += 4) {
    const a = B64[s.charCodeAt(q)]!, b = B64[s.charCodeAt(q + 1)]!, c = B64[s.charCodeAt(q + 2)]!, d = B64[s.charCodeAt(q + 3)]!;
    if (a | b | c | d) {
      // Some padding (or garbage): only "xx==" and "xxx=" are valid.
      if (a !== 0 || b !== 0 || d !== 1 || c === 2) throw base64Error();
      out.push(Buffer.from(s.slice(run, q + 4), 'base64'));
      run = q + 4;
    }
  }
  if (run < end) out.push(Buffer.from(run === 0 && end === s.length ? s : s.slice(run, end), 'base64'));
  return out.length === 1 ? out[0]! : Buffer.concat(out);
}

class TextRequestDecoder extends Transform {
  /** Up to 3 characters of an incomplete quantum, carried to the next chunk. */
  private rest = '';

  // decodeStrings (default) hands every chunk over as a Buffer; latin1 keeps one char per byte.
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const s = this.rest + chunk.toString('latin1');
    const end = s.length - (s.length % 4);
    this.rest = s.slice(end);
    try {
      if (end > 0) this.push(decodeQuanta(s, end));
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    // An unpadded final quantum of 2 or 3 characters is accepted; a single character never is.
    const r = this.rest;
    if (r.length === 0) return cb();
    if (r.length === 1 || [...r].some((ch) => B64[ch.charCodeAt(0)] !== 0)) return cb(base64Error());
    cb(null, Buffer.from(r, 'base64'));
  }
}

/**
 * Decodes a grpc-web-text request body stream (base64, possibly split at any byte, possibly several
 * base64 runs each with padding) into binary; binary kinds pass through. Invalid base64 -> error on
 * the stream (code ERR_GRPC_WEB_BASE64).
 */
export function requestDecoder(kind: GrpcWebKind): Transform {
  return kind.text ? new TextRequestDecoder() : new PassThrough();
}

// ---------------------------------------------------------------------------------------------
// Response: gRPC -> gRPC-Web

const EMPTY = Buffer.alloc(0);
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;

/**
 * Percent-encodes a grpc-message value (PROTOCOL-HTTP2.md): UTF-8 bytes outside 0x20-0x7E, and
 * '%' itself, become %XX.
 */
export function encodeGrpcMessage(message: string): string {
  let out = '';
  for (const byte of Buffer.from(message, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : '%' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/**
 * The binary trailer frame: flag 0x80, 4-byte big-endian length, then `name: value\r\n` lines
 * (lower-case names, one line per value of an array). Pseudo-headers and fields whose name is
 * not a token or whose value holds CR, LF or NUL are left out. Values are written as latin1, the
 * way node hands HTTP/2 field values over.
 */
export function trailerFrame(trailers: Record<string, string | string[] | number | undefined>): Buffer {
  let block = '';
  for (const [rawName, value] of Object.entries(trailers)) {
    const name = rawName.toLowerCase();
    if (value === undefined || !TOKEN.test(name)) continue;
    for (const v of Array.isArray(value) ? value : [String(value)]) if (!/[\r\n\0]/.test(v)) block += `${name}: ${v}\r\n`;
  }
  const body = Buffer.from(block, 'latin1');
  const head = Buffer.allocUnsafe(5);
  head[0] = 0x80;
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

/**
 * Encoder for the response body. Binary kinds: data chunks pass through. Text kinds: base64 with
 * 3-byte alignment carried across chunks. The encoder follows the gRPC frame headers flowing through
 * it and pads whenever a chunk ends exactly on a frame boundary, so a complete message is never
 * held back waiting for the next chunk (streaming latency); the spec allows padding at any flush.
 * `finish(trailers)` flushes any remainder (padded) and appends the trailer frame, returning the
 * final bytes to write. A trailers-only upstream response (grpc-status in the headers, see
 * webResponseHeaders) has an empty body and needs no finish().
 */
export class ResponseEncoder {
  private carry: Buffer = EMPTY;
  private readonly head = Buffer.alloc(5);
  private headLen = 0;
  private payloadLeft = 0;

  constructor(private readonly kind: GrpcWebKind) {}

  data(chunk: Buffer): Buffer | string {
    // (binary kinds too: a trailer frame must never follow a message cut short, see midFrame)
    const boundary = this.track(chunk);
    if (!this.kind.text) return chunk;
    const buf = this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk;
    const n = boundary ? buf.length : buf.length - (buf.length % 3);
    this.carry = n === buf.length ? EMPTY : Buffer.from(buf.subarray(n)); // copy: at most 2 bytes
    return buf.toString('base64', 0, n);
  }

  /**
   * The bytes passed on so far end inside a message frame (its 5-byte header or its payload): a
   * trailer frame written now would be read by the client as the rest of that message (a
   * message made of trailer bytes delivered, the rest parsed as frames): the response can only
   * be cut then, never finish()ed.
   */
  get midFrame(): boolean {
    return this.headLen !== 0 || this.payloadLeft !== 0;
  }

  finish(trailers: Record<string, string | string[] | number | undefined>): Buffer | string {
    const frame = trailerFrame(trailers);
    if (!this.kind.text) return frame;
    const rest = this.carry.length ? this.carry.toString('base64') : '';
    this.carry = EMPTY;
    return rest + frame.toString('base64');
  }

  /** Follows the 5-byte frame headers through `chunk`; true when it ends on a frame boundary. */
  private track(chunk: Buffer): boolean {
    for (let i = 0; i < chunk.length;) {
      if (this.payloadLeft > 0) {
        const k = Math.min(this.payloadLeft, chunk.length - i);
        this.payloadLeft -= k;
        i += k;
      } else {
        this.head[this.headLen++] = chunk[i++]!;
        if (this.headLen === 5) {
          this.payloadLeft = this.head.readUInt32BE(1);
          this.headLen = 0;
        }
      }
    }
    return this.headLen === 0 && this.payloadLeft === 0;
  }
}

/** Dropped from upstream response headers: connection-specific fields, framing, announced trailers. */
const DROP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade', 'http2-settings',
  'content-length', 'trailer', 'content-type',
]);

/**
 * Response headers for the web client from the upstream's gRPC response headers: content-type
 * rewritten, pseudo-headers, hop-by-hop/`te`/content-length dropped; if the upstream answered
 * trailers-only (grpc-status in the headers), those stay in the headers.
 */
export function webResponseHeaders(
  kind: GrpcWebKind,
  headers: Record<string, string | string[] | number | undefined>, // node's http2 headers (':status' is a number)
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = { 'content-type': kind.webContentType };
  for (const [rawName, v] of Object.entries(headers)) {
    const name = rawName.toLowerCase();
    if (v === undefined || name.startsWith(':') || DROP.has(name)) continue;
    out[name] = typeof v === 'number' ? String(v) : v;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// gRPC helpers

/**
 * The gRPC status of an upstream answer that carried none (no grpc-status in its headers nor its
 * trailers), from its HTTP status: gRPC's "HTTP to gRPC Status Code Mapping"
 * (doc/http-grpc-status-mapping.md), the table a gRPC client applies itself to such an answer —
 * a 200 without a status is UNKNOWN too. (The gateway's own answers name their cause more
 * precisely: grpcStatusOf in core/problem.ts.)
 */
export function grpcStatusFromHttp(httpStatus: number): number {
  switch (httpStatus) {
    case 400: return 13; // INTERNAL
    case 401: return 16; // UNAUTHENTICATED
    case 403: return 7; // PERMISSION_DENIED
    case 404: return 12; // UNIMPLEMENTED
    case 429: case 502: case 503: case 504: return 14; // UNAVAILABLE
    default: return 2; // UNKNOWN
  }
}

const TIMEOUT_UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1 };

/**
 * grpc-timeout header (1-8 digits + unit H M S m u n) in milliseconds, rounded up; null when absent
 * or invalid (more than 8 digits, another unit, empty, signs or spaces, several fields joined by
 * a comma): the gateway then treats the call as having no deadline, and drops the field rather
 * than pass on what an upstream may fail the call on. "0<unit>" gives 0 (already expired).
 * Large values exceed setTimeout's range: clamp.
 */
export function parseGrpcTimeout(v: string | undefined): number | null {
  const m = v === undefined ? null : /^(\d{1,8})([HMSmun])$/.exec(v);
  if (!m) return null;
  const n = Number(m[1]);
  const unit = m[2]!;
  // Sub-millisecond units divide (integer division, rounded up: any positive timeout is >= 1 ms).
  if (unit === 'u') return Math.ceil(n / 1000);
  if (unit === 'n') return Math.ceil(n / 1_000_000);
  return n * TIMEOUT_UNIT_MS[unit]!;
}

/** The largest TimeoutValue (PROTOCOL-HTTP2.md: at most 8 digits). */
const MAX_TIMEOUT_VALUE = 99_999_999;

/**
 * A deadline `ms` milliseconds away as a grpc-timeout value (at most 8 digits, PROTOCOL-HTTP2.md):
 * in milliseconds while they fit, else in the first coarser unit that holds it, rounded down
 * (an upstream is never told more time than there is); past 99999999H, 99999999H.
 */
export function encodeGrpcTimeout(ms: number): string {
  const v = Math.max(0, Math.floor(ms));
  if (v <= MAX_TIMEOUT_VALUE) return `${v}m`;
  if (v / 1000 <= MAX_TIMEOUT_VALUE) return `${Math.floor(v / 1000)}S`;
  if (v / 60_000 <= MAX_TIMEOUT_VALUE) return `${Math.floor(v / 60_000)}M`;
  return `${Math.min(MAX_TIMEOUT_VALUE, Math.floor(v / 3_600_000))}H`;
}
