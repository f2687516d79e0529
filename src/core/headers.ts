/**
 * Header duties of an intermediary (RFC 9110 §7.6.1, RFC 9112): connection-specific fields
 * and every field named in Connection are removed in both directions; the fields Turnpike
 * computes itself (Host, framing, forwarding and identity fields) are always its own — a client
 * can neither spoof them nor have them removed by naming them in Connection.
 */
import type { IncomingMessage } from 'node:http';
import { isAscii } from 'node:buffer';

/** Connection-specific fields, never forwarded (either direction). */
export const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade', 'http2-settings',
]);

/**
 * A Set-Cookie for the console's or the portal's session cookie: the gateway's own, never
 * relayed from an upstream. Browsers send a host's cookies to all its ports (RFC 6265 §8.5),
 * so an upstream could otherwise toss a session of its choosing onto the admin's console.
 */
export function isGatewayCookie(setCookie: string): boolean {
  // The name is what comes before the first '=' of the name-value pair (up to the first ';').
  let end = setCookie.indexOf(';');
  if (end === -1) end = setCookie.length;
  let eq = setCookie.indexOf('=');
  if (eq > end) eq = -1;
  let name = setCookie.slice(0, eq === -1 ? end : eq).trim();
  if (name === '' && eq !== -1) {
    // A nameless cookie (`=tp_console=x`): browsers store it and send its value alone
    // (RFC 6265bis §5.6, §5.8.3), which servers read as `tp_console=x`.
    const eq2 = setCookie.indexOf('=', eq + 1);
    name = setCookie.slice(eq + 1, eq2 === -1 || eq2 > end ? end : eq2).trim();
  }
  return name === 'tp_console' || name === 'tp_portal' || name === '__Host-tp_console' || name === '__Host-tp_portal';
}

/**
 * Framing and connection-management fields: the HTTP stack's (node:http, undici) to write. A
 * compose step or a header transform may not set them (a config error).
 */
export const FRAMING_HEADERS = new Set([
  'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'proxy-connection', 'te', 'upgrade', 'trailer', 'expect', 'http2-settings',
]);

/** Tokens of a Connection header value, lower-cased; null when there are none beyond close/keep-alive. */
export function connectionTokens(value: string | string[] | undefined): Set<string> | null {
  if (!value) return null;
  const v = Array.isArray(value) ? value.join(',') : value;
  if (v.length <= 10) {
    const l = v.toLowerCase();
    if (l === 'keep-alive' || l === 'close') return null;
  }
  let out: Set<string> | null = null;
  for (const raw of v.split(',')) {
    const t = raw.trim().toLowerCase();
    if (t && t !== 'close' && t !== 'keep-alive') (out ??= new Set()).add(t);
  }
  return out;
}

/**
 * A request id we accept from a client: at most 200 characters of what ids are made of (UUIDs,
 * trace ids, base64, `Root=1-...;Parent=...`). Quotes, angle brackets, backslashes and spaces
 * are not: the id is echoed in headers, problem bodies and logs. Anything else gets a new id.
 */
export function validRequestId(id: string | undefined): id is string {
  return id !== undefined && id.length > 0 && id.length <= 200 && /^[A-Za-z0-9._~:;,@#/+=|-]+$/.test(id);
}

/** Whether the request came over TLS (HTTP/2's socket is a proxy that forwards `encrypted`). */
export const isTls = (req: IncomingMessage): boolean => (req.socket as { encrypted?: boolean }).encrypted === true;

/** Charsets whose bytes 0x00-0x7F are ASCII (UTF-7's are not: `+ACI-` is a quote). */
const ASCII_SUPERSETS = /^(?:us-ascii|ascii|iso-8859-\d{1,2}|iso8859-\d{1,2}|latin-?1|l1|windows-125\d|cp125\d)$/;

/** The labels of UTF-8 (WHATWG Encoding, as browsers read them; iconv-lite takes `utf8` too). */
const UTF8_LABELS = new Set(['utf-8', 'utf8', 'unicode-1-1-utf-8', 'unicode11utf8', 'unicode20utf8', 'x-unicode20utf8']);

/**
 * The `charset` a Content-Type names other than UTF-8 (lower case, unquoted, cut to 40
 * characters), or null. Every one is looked at (a parser may take the first or the last).
 * A body the gateway reads (request-validator, request-transform, compose, response-transform)
 * is read as UTF-8 (RFC 8259 §8.1): one declared in another charset would be read here as one
 * text and by a peer that honours the charset (Express's body-parser decodes any `utf-*`,
 * UTF-7 included) as another. With `body`: a body of ASCII bytes only, declared in a charset
 * that reads ASCII as ASCII (ISO-8859-x, windows-125x: an older upstream's default), is the
 * same text either way and passes.
 */
export function foreignCharset(value: string | undefined, body?: Buffer): string | null {
  if (value === undefined || !value.includes(';')) return null;
  const params = value.split(';');
  for (let i = 1; i < params.length; i++) {
    const p = params[i]!;
    const eq = p.indexOf('=');
    if (eq === -1 || p.slice(0, eq).trim().toLowerCase() !== 'charset') continue;
    let v = p.slice(eq + 1).trim().toLowerCase();
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1).trim();
    if (!UTF8_LABELS.has(v) && !(body !== undefined && ASCII_SUPERSETS.test(v) && isAscii(body))) return v.slice(0, 40);
  }
  return null;
}

/**
 * Whether a charset foreignCharset named reads ASCII bytes as ASCII (ISO-8859-1, an old Java
 * client's default; windows-125x): a body in it may pass once read, if its bytes are ASCII only
 * (foreignCharset with the body). UTF-7 and UTF-16 never do.
 */
export const asciiCompatible = (charset: string): boolean => ASCII_SUPERSETS.test(charset);

/**
 * JSON text with every character past U+007F as a \u escape: the same text in UTF-8 and in any
 * charset asciiCompatible names (a transformed body sent on under the client's charset).
 */
export const asciiJson = (json: string): string =>
  json.replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

/**
 * A Content-Encoding value that says the content is coded (gzip, br, ...): the gateway does not
 * decode request bodies, so one it must read is refused with 415 (RFC 9110 §15.5.16).
 */
export function codedContent(ce: string | undefined): boolean {
  if (ce === undefined) return false;
  for (const t of ce.split(',')) {
    const c = t.trim().toLowerCase();
    if (c !== '' && c !== 'identity') return true;
  }
  return false;
}

/**
 * A 415 for a content coding says which codings are accepted (none but identity) in
 * Accept-Encoding, which a 415 for a media type must not carry (RFC 9110 §12.5.3, §15.5.16).
 */
export const CODED_CONTENT_HEADERS: Readonly<Record<string, string>> = Object.freeze({ 'accept-encoding': 'identity' });

/**
 * More than one Content-Type field (a singleton, RFC 9110 §5.3): node keeps the first, an
 * upstream may read the last. Checked only where the gateway reads a body by its type.
 */
export function repeatedContentType(raw: readonly string[]): boolean {
  let n = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!;
    if (k.length === 12 && k.toLowerCase() === 'content-type' && ++n > 1) return true;
  }
  return false;
}

export const REPEATED_CONTENT_TYPE = 'the request has more than one Content-Type field';

/** A flat name/value list as a header object (repeated names become arrays). */
export function headerRecord(list: readonly string[]): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (let i = 0; i < list.length; i += 2) {
    const k = list[i]!;
    const prev = out[k];
    out[k] = prev === undefined ? list[i + 1]! : Array.isArray(prev) ? [...prev, list[i + 1]!] : [prev, list[i + 1]!];
  }
  return out;
}
