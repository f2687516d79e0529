/**
 * Background refreshes for stale-while-revalidate (RFC 5861 §3): the client gets the stale
 * entry at once, and the gateway revalidates it on its own, as nginx's
 * proxy_cache_background_update does: a request to its own proxy listener with the client's
 * fields (so authentication, routing and Vary'd fields are the client's) plus
 * `X-Turnpike-Refresh: <token>`. The cache plugin that sees a valid token goes upstream
 * (revalidating with the entry's validators) and stores the answer. The token is random per
 * node (the primary hands it to its workers), compared in constant time, and the field is
 * removed from every request before anything else sees it go upstream.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { Agent } from 'undici';

export const REFRESH_HEADER = 'x-turnpike-refresh';
/**
 * The address of the connection the refreshed request came on: with a valid token, the gateway
 * takes the refresh as coming from there (ip-restriction, limits by IP, forwarding fields are
 * the client's, not the loopback's).
 */
export const REFRESH_PEER_HEADER = 'x-turnpike-refresh-peer';

/** Request fields not copied into a refresh: connection-specific, framing, conditionals, directives. */
const SKIP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'upgrade', 'transfer-encoding', 'content-length', 'expect',
  'if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'if-range', 'cache-control', 'pragma', 'range',
  REFRESH_HEADER, REFRESH_PEER_HEADER, 'host', 'http2-settings',
]);

/** Longest a refresh may take before it is given up. */
const REFRESH_TIMEOUT_MS = 30_000;

export class Refresher {
  /** Shared by a node's workers (TURNPIKE_INTERNAL_TOKEN from the primary). */
  readonly token: string;
  private readonly tokenBuf: Buffer;
  private base: string | null = null;
  private agent: Agent | null = null;
  private readonly running = new Set<string>();

  constructor(token = process.env.TURNPIKE_INTERNAL_TOKEN) {
    this.token = token && token.length >= 16 ? token : randomBytes(18).toString('base64url');
    this.tokenBuf = Buffer.from(this.token);
  }

  /** The plain proxy listener (null: none, e.g. TLS only; refreshes then happen in the foreground). */
  setListener(address: { address: string; port: number; family: string } | null): void {
    if (address === null) {
      this.base = null;
      return;
    }
    const any = address.address === '0.0.0.0' || address.address === '::';
    const host = any ? (address.family === 'IPv6' ? '[::1]' : '127.0.0.1') : address.family === 'IPv6' ? `[${address.address}]` : address.address;
    this.base = `http://${host}:${address.port}`;
  }

  get available(): boolean {
    return this.base !== null;
  }

  /** Whether a request's X-Turnpike-Refresh value is this node's token. */
  valid(value: string | undefined): boolean {
    if (value === undefined) return false;
    const b = Buffer.from(value);
    return b.length === this.tokenBuf.length && timingSafeEqual(b, this.tokenBuf);
  }

  /**
   * Starts a refresh of `key` (at most one at a time per key): GET `target` on the own listener
   * with the client's fields, as from the client's `peer` address. False when none can start (no
   * listener, or one is running).
   */
  start(key: string, target: string, host: string, rawHeaders: readonly string[], peer: string, onError: (err: Error) => void): boolean {
    if (this.base === null || this.running.has(key)) return false;
    this.running.add(key);
    const headers: string[] = [];
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const k = rawHeaders[i]!;
      if (k.charCodeAt(0) === 0x3a || SKIP.has(k.toLowerCase())) continue;
      headers.push(k, rawHeaders[i + 1]!);
    }
    headers.push('host', host, REFRESH_HEADER, this.token);
    if (peer !== '') headers.push(REFRESH_PEER_HEADER, peer);
    this.agent ??= new Agent({ connections: 8, keepAliveTimeout: 10_000 });
    // (a timer cleared when the refresh ends: AbortSignal.timeout's would live on for 30 s each)
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new DOMException('The operation was aborted due to timeout', 'TimeoutError')), REFRESH_TIMEOUT_MS);
    timer.unref();
    this.agent.request({ origin: this.base, path: target, method: 'GET', headers, signal: ac.signal })
      .then((res) => res.body.dump())
      .catch((err: Error) => onError(err))
      .finally(() => {
        clearTimeout(timer);
        this.running.delete(key);
      });
    return true;
  }

  close(): void {
    const a = this.agent;
    this.agent = null;
    void a?.close().catch(() => {});
  }
}
