/**
 * Request-path normalization (RFC 3986 §6.2.2): percent-encodings of unreserved characters
 * are decoded, other percent-encodings upper-cased, dot segments removed; `%00` is refused. The router matches,
 * and the proxy forwards, the normalized path, so `/public/../admin` and `/%61dmin` cannot
 * slip past a route. Returns null for a malformed percent-encoding.
 */

import { isUtf8 } from 'node:buffer';

const HEX = /^[0-9A-Fa-f]{2}$/;
/** A percent-encoded byte past ASCII (after normalizePercent: upper-case hex). */
const HIGH_BYTE = /%[89A-F][0-9A-F]/;
const PCT = /%([0-9A-F]{2})/g;
const MANY_SLASHES = /\/{2,}/g;
const ENCODED_SLASH = /%2F|%5C/g;
/**
 * `:`, `@` and the sub-delims but `;` (RFC 3986 §2.2), percent-encoded (after normalizePercent:
 * upper-case hex). URI equivalence keeps them apart from their characters, but servers decode
 * them before routing (Spring, Go's ServeMux, Django, Flask, ASP.NET): `/users%3Abatch` is
 * their `/users:batch`. (`;` is cut before decoding, by the servers that cut it.)
 */
const ENCODED_DELIM = /%(?:3A|40|21|24|26|27|28|29|2A|2B|2C|3D)/g;
const ENCODED_DELIM_ONE = /%(?:3A|40|21|24|26|27|28|29|2A|2B|2C|3D)/;
/** Any encoding a reading decodes: ENCODED_SLASH's and ENCODED_DELIM's. */
const READ_ENCODED = /%(?:2F|5C|3A|40|21|24|26|27|28|29|2A|2B|2C|3D)/;
/**
 * A dot or whitespace ending a segment, or whitespace starting one (percent-encoded: upper-case
 * hex), which servers trim: IIS, ASP.NET and Windows file servers the dots and spaces ending it
 * (`/admin.`, `/admin%20`), Spring's AntPathMatcher (trimTokens) and Python's str.strip both
 * ends' whitespace (`/admin%09`, `/%0Aadmin`, `/admin%C2%A0`): tab, LF, VT, FF, CR, the
 * separators U+001C-U+001F, space, U+0085 and U+00A0.
 */
const EDGE_ONE = /(?:\.|%(?:0[9A-D]|1[C-F]|20|C2%(?:85|A0)))(?:\/|;|$)|\/%(?:0[9A-D]|1[C-F]|20|C2%(?:85|A0))/;
/** The length of the encoded whitespace character ending (end) or starting (!end) s at i, or 0. */
function wsAt(s: string, i: number, end: boolean): number {
  const a = end ? i - 3 : i;
  if (a >= 0 && s.charCodeAt(a) === 0x25 /* % */) {
    const h = s.slice(a + 1, a + 3);
    if (h === '09' || h === '0A' || h === '0B' || h === '0C' || h === '0D' || h === '1C' || h === '1D' || h === '1E' || h === '1F' || h === '20') return 3;
  }
  const b = end ? i - 6 : i;
  if (b >= 0) {
    const t = s.slice(b, b + 6);
    if (t === '%C2%85' || t === '%C2%A0') return 6;
  }
  return 0;
}
/** A segment as the servers above read it: trailing dots and whitespace, leading whitespace trimmed. */
function trimSegment(seg: string): string {
  let end = seg.length;
  for (let n; end > 0; end -= n) {
    n = seg.charCodeAt(end - 1) === 0x2e /* . */ ? 1 : wsAt(seg, end, true);
    if (n === 0) break;
  }
  let start = 0;
  for (let n; start < end; start += n) {
    n = wsAt(seg, start, false);
    if (n === 0 || start + n > end) break;
  }
  return start === 0 && end === seg.length ? seg : seg.slice(start, end);
}
/** A percent-encoded `%` before two hex digits: an encoding encoded twice. */
const DOUBLE_ENCODED = /%25[0-9A-Fa-f]{2}/;
const DOUBLE_ENCODED_ALL = /%25([0-9A-Fa-f]{2})/g;
const decodeDelim = (m: string) => String.fromCharCode(parseInt(m.slice(1), 16));

/** The first `:`, `@` or sub-delim a path spells percent-encoded (`%3A`), or null. A route path spells them as they are. */
export function encodedDelimiter(path: string): string | null {
  const m = ENCODED_DELIM_ONE.exec(normalizePercent(path) ?? path);
  return m === null ? null : m[0];
}

function isUnreserved(code: number): boolean {
  return (
    (code >= 0x41 && code <= 0x5a) || (code >= 0x61 && code <= 0x7a) || (code >= 0x30 && code <= 0x39) ||
    code === 0x2d || code === 0x2e || code === 0x5f || code === 0x7e
  );
}

function normalizePercent(path: string): string | null {
  let out = '';
  let last = 0;
  for (let i = path.indexOf('%'); i !== -1; i = path.indexOf('%', i + 1)) {
    const hex = path.slice(i + 1, i + 3);
    if (!HEX.test(hex)) return null;
    const code = parseInt(hex, 16);
    // NUL: servers in C (and PHP's, Java's older file APIs) end the path there, so `/admin%00`
    // would reach the upstream as /admin past the route that owns it (nginx refuses it too).
    if (code === 0) return null;
    out += path.slice(last, i) + (isUnreserved(code) ? String.fromCharCode(code) : '%' + hex.toUpperCase());
    last = i + 3;
    i += 2;
  }
  return out + path.slice(last);
}

/**
 * Whether the bytes a path's percent-encodings stand for are UTF-8 (RFC 3986 §2.5, RFC 3987).
 * Overlong forms (`%C0%AE`, `%E0%80%AE` for `.`, `%C0%AF` for `/`), surrogates and bytes no
 * UTF-8 has are not: lenient decoders (old IIS, Tomcat, Java's modified UTF-8) read them as the
 * ASCII they spell, past the route the router chose.
 */
function utf8Encoded(path: string): boolean {
  return isUtf8(Buffer.from(path.replace(PCT, (_, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1'));
}

/** RFC 3986 §5.2.4 remove_dot_segments, for an absolute path. */
export function removeDotSegments(path: string): string {
  const segs = path.split('/');
  const out: string[] = [];
  for (let i = 1; i < segs.length; i++) {
    const s = segs[i]!;
    const last = i === segs.length - 1;
    if (s === '.') {
      if (last) out.push('');
    } else if (s === '..') {
      out.pop();
      if (last) out.push('');
    } else out.push(s);
  }
  return '/' + out.join('/');
}

/**
 * True when a server that decodes `%2F`/`%5C`, treats `\` as `/`, or cuts `;params` (Tomcat)
 * would see a dot segment we did not: such paths could climb out of the route they matched.
 */
function hidesDotSegment(p: string): boolean {
  const alt = p.replace(/%2F|%5C|\\/g, '/');
  for (const seg of alt.split('/')) {
    const s = seg.includes(';') ? seg.slice(0, seg.indexOf(';')) : seg;
    if (s === '.' || s === '..') return true;
  }
  return false;
}

/**
 * Normalizes a request path; null when it is malformed (bad percent-encoding, or one whose
 * bytes are no UTF-8) or ambiguous (a backslash, `%00`, or a dot segment hidden behind `%2F`,
 * `%5C` or `;`): those get a 400.
 * Empty segments are merged (`//admin` is `/admin`, as nginx's merge_slashes and Kong do): an
 * upstream that merges them would otherwise serve a route the router never chose.
 */
export function normalizePath(path: string): string | null {
  let p = path;
  if (p.includes('%')) {
    const n = normalizePercent(p);
    if (n === null || (HIGH_BYTE.test(n) && !utf8Encoded(n))) return null;
    p = n;
  }
  if (p.includes('\\')) return null;
  if (p.includes('//')) p = p.replace(MANY_SLASHES, '/');
  if (p.includes('/.')) p = removeDotSegments(p);
  if ((p.includes('%') || p.includes(';')) && p.includes('.') && hidesDotSegment(p)) return null;
  return p;
}

/**
 * The normalized path as many servers read it: an encoding encoded twice decoded (`%2561` is
 * `a` to IIS and double-decoding apps), `%2F` and `%5C` decoded to slashes (nginx's
 * $uri, IIS, many frameworks), `:`, `@` and sub-delims decoded (`%3A` is `:`), `;params` cut
 * off segments (Tomcat, Jetty, Spring), dots and whitespace ending a segment and whitespace
 * starting one trimmed (IIS, ASP.NET, Windows file servers; Spring, Python), slashes merged;
 * null when that is the path itself. A request whose reading is another route's, at least as
 * specific as the one matched, is refused (src/server/request.ts).
 */
export function upstreamReading(path: string): string | null {
  // A `%25` before two hex digits decoded once more (`/%2561dmin` is /admin, `/x/%252E%252E/admin`
  // too, to IIS's double decoding, Java apps that URLDecoder.decode a getRequestURI() the
  // container decoded, a WAF or proxy that decodes before them), normalized as a request path.
  // (one whose dot segment hides behind a `%2F` once decoded, `..%252F`: read with it decoded)
  let src = path;
  if (path.includes('%25') && DOUBLE_ENCODED.test(path)) {
    const once = path.replace(DOUBLE_ENCODED_ALL, '%$1');
    src = normalizePath(once) ?? normalizePath(once.replace(/%2F|%5C/gi, '/')) ?? path;
  }
  // (most paths: none of these; a path with other encodings, UTF-8 say, is not copied either)
  const pct = src.includes('%') && READ_ENCODED.test(src);
  let alt = pct ? src.replace(ENCODED_SLASH, '/').replace(ENCODED_DELIM, decodeDelim) : src;
  const edges = (alt.includes('.') || alt.includes('%')) && EDGE_ONE.test(alt);
  if (src === path && !pct && !edges && !alt.includes(';')) return null;
  if (edges || alt.includes(';')) {
    alt = alt.split('/').map((seg) => {
      const s = seg.includes(';') ? seg.slice(0, seg.indexOf(';')) : seg;
      return edges ? trimSegment(s) : s;
    }).join('/');
  }
  alt = alt.replace(MANY_SLASHES, '/');
  return alt === path ? null : alt;
}
