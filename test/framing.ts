/**
 * A small, strict HTTP/1.1 framer for raw byte streams in tests: splits what an origin received,
 * or what a client got back, into whole messages (Content-Length or chunked), so assertions
 * count messages rather than status lines.
 */

export interface Msg {
  start: string;
  headers: [string, string][];
  body: string;
}

/** A field's value (repeated fields joined with ", "), or undefined. Names are lower-case. */
export function header(m: Msg, name: string): string | undefined {
  const all = m.headers.filter(([k]) => k === name).map(([, v]) => v);
  return all.length ? all.join(', ') : undefined;
}

/**
 * The first complete message in `raw` and how many bytes it used; null when incomplete. A
 * response without framing runs to the end of the stream, so it is complete only once `ended`.
 */
export function parseOne(raw: string, kind: 'request' | 'response', ended = false): { msg: Msg; used: number } | null {
  const end = raw.indexOf('\r\n\r\n');
  if (end === -1) return null;
  const lines = raw.slice(0, end).split('\r\n');
  const start = lines.shift()!;
  const headers = lines.map((l): [string, string] => {
    const i = l.indexOf(':');
    return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()];
  });
  const msg: Msg = { start, headers, body: '' };
  let p = end + 4;
  // 1xx, 204 and 304 end at their head, whatever their fields say (RFC 9112 §6.3).
  if (kind === 'response' && /^HTTP\/1\.[01] (1\d\d|204|304)/.test(start)) return { msg, used: p };
  const te = header(msg, 'transfer-encoding');
  const cl = header(msg, 'content-length');
  if (te !== undefined && /(^|,)\s*chunked\s*$/i.test(te)) {
    for (;;) {
      const eol = raw.indexOf('\r\n', p);
      if (eol === -1) return null;
      const size = parseInt(raw.slice(p, eol).split(';')[0]!, 16);
      if (Number.isNaN(size)) return null;
      p = eol + 2;
      if (size === 0) {
        const tEnd = raw.indexOf('\r\n', p) === p ? p : raw.indexOf('\r\n\r\n', p);
        if (tEnd === -1) return null;
        return { msg, used: tEnd === p ? p + 2 : tEnd + 4 };
      }
      if (raw.length < p + size + 2) return null;
      msg.body += raw.slice(p, p + size);
      p += size + 2;
    }
  }
  if (cl !== undefined) {
    if (raw.length < p + Number(cl)) return null;
    msg.body = raw.slice(p, p + Number(cl));
    return { msg, used: p + Number(cl) };
  }
  if (kind === 'request') return { msg, used: p };
  if (!ended) return null;
  msg.body = raw.slice(p);
  return { msg, used: raw.length };
}

/** Every complete message in `raw` (a response without framing takes the rest). */
export function parseMessages(raw: string, kind: 'request' | 'response'): Msg[] {
  const out: Msg[] = [];
  for (let rest = raw; ; ) {
    const got = parseOne(rest, kind, true);
    if (!got) return out;
    out.push(got.msg);
    rest = rest.slice(got.used);
    if (rest === '') return out;
  }
}
