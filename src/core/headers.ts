/**
 * Header duties of an intermediary (RFC 9110 §7.6.1, RFC 9112): connection-specific fields
 * and every field named in Connection are removed in both directions; the fields Turnpike
 * computes itself (Host, framing, forwarding and identity fields) are always its own — a client
 * can neither spoof them nor have them removed by naming them in Connection.
 */

/** Connection-specific fields, never forwarded (either direction). */
export const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade', 'http2-settings',
]);

/** Request fields Turnpike sets itself; inbound copies are dropped. */
export const MANAGED_REQUEST = new Set([
  'host', 'content-length', 'expect', 'via', 'forwarded', 'x-forwarded-for', 'x-forwarded-proto',
  'x-forwarded-host', 'x-forwarded-port', 'x-real-ip', 'x-request-id',
]);

/** Response fields Turnpike sets itself. */
export const MANAGED_RESPONSE = new Set(['via', 'x-request-id']);

/** Tokens of a Connection header value, lower-cased; null when there are none beyond close/keep-alive. */
export function connectionTokens(value: string | string[] | undefined): Set<string> | null {
  if (!value) return null;
  const v = Array.isArray(value) ? value.join(',') : value;
  let out: Set<string> | null = null;
  for (const raw of v.split(',')) {
    const t = raw.trim().toLowerCase();
    if (t && t !== 'close' && t !== 'keep-alive') (out ??= new Set()).add(t);
  }
  return out;
}

/**
 * Copies end-to-end fields from a flat [name, value, ...] list into `out`, skipping
 * connection-specific ones, those named in Connection, and those in `managed`.
 */
export function copyEndToEnd(
  raw: readonly string[], out: string[], managed: ReadonlySet<string>, nominated: ReadonlySet<string> | null,
): void {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || managed.has(lower) || (nominated !== null && nominated.has(lower))) continue;
    out.push(name, raw[i + 1]!);
  }
}

/** A request id we accept from a client: visible ASCII, at most 200 characters. */
export function validRequestId(id: string | undefined): id is string {
  return id !== undefined && id.length > 0 && id.length <= 200 && /^[\x21-\x7e]+$/.test(id);
}
