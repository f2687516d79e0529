/**
 * Connection pools to upstream origins: one undici Pool per (origin, connect timeout, TLS name), kept
 * alive across config snapshots so a reload keeps warm connections. Idle pools are closed
 * when no snapshot references them any more (see release()).
 */
import { subscribe } from 'node:diagnostics_channel';
import type { Socket } from 'node:net';
import { Pool, buildConnector } from 'undici';
import { checkH2Socket, watchH2Socket } from './h2-streams.js';
import { upstreamTlsName } from '../server/tls.js';

const REUSED = Symbol('turnpike.reusedConnection');
const CONNECT_FAILED = Symbol('turnpike.connectFailed');
/** The socket's bytesRead when undici sent the head of the request now on it. */
const READ_AT_SEND = Symbol('turnpike.readAtSend');
type MarkedSocket = Socket & { [READ_AT_SEND]?: number };

// undici publishes this as it writes a request's head (one message per request, to the
// connection it goes on): what was read before it belongs to earlier answers.
subscribe('undici:client:sendHeaders', (msg) => {
  const s = (msg as { socket?: MarkedSocket }).socket;
  if (s !== undefined) s[READ_AT_SEND] = s.bytesRead;
});

/**
 * Marks an error of an HTTP/1.1 connection that had already carried an answer and had nothing
 * of the current one yet (see onReusedConnection). A connection whose answer broke off after
 * some of its bytes (a fresh one's included) is an upstream that answered badly, not an idle
 * connection the origin closed.
 */
function markReused(this: MarkedSocket, err: Error): void {
  // (bytesRead counts cleartext only: 0 on a fresh TLS connection after its handshake)
  const before = this[READ_AT_SEND];
  if (before !== undefined && before > 0 && this.bytesRead === before) (err as Error & { [REUSED]?: true })[REUSED] = true;
}

/**
 * Whether an upstream error came from a kept-alive HTTP/1.1 connection that had already carried
 * an answer, before any byte of this one: the origin may have closed it (its idle timeout) just
 * as the request went out.
 */
export function onReusedConnection(err: Error): boolean {
  return (err as Error & { [REUSED]?: true })[REUSED] === true;
}

/**
 * Whether an upstream error is the connector's: the connection was never made — refused, DNS, or
 * a TLS handshake that failed (the target's certificate expired, for another name or from an
 * unknown CA; a protocol alert; no TLS on that port). Nothing of the request went out.
 */
export function connectFailed(err: Error): boolean {
  return (err as Error & { [CONNECT_FAILED]?: true })[CONNECT_FAILED] === true;
}

/** Marks an error as the connector's (see connectFailed): a connection that was never made. */
export function markConnectFailed(err: Error): void {
  (err as Error & { [CONNECT_FAILED]?: true })[CONNECT_FAILED] = true;
}

/** The largest response header section read from an upstream (past it: 502). */
export const MAX_RESPONSE_HEADER_BYTES = 64 * 1024;

export interface PoolOptions {
  connectTimeout: number;
  keepAliveTimeout?: number;
  /** TLS server name when the origin is an address resolved from a name (or set by the service). */
  servername?: string;
  /** none: HTTP/1.1 (over TLS for https origins); h2c: HTTP/2 with prior knowledge; h2: HTTP/2 over TLS. */
  http2?: 'none' | 'h2c' | 'h2';
  /** Upstream TLS: CA to verify with, client certificate (mTLS), verification switch; `id` names the material. */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized: boolean; id: string };
}

export class PoolRegistry {
  private readonly pools = new Map<string, { pool: Pool; refs: number }>();

  acquire(origin: string, opts: PoolOptions): Pool {
    const h2 = opts.http2 ?? 'none';
    const key = `${origin}|${opts.connectTimeout}|${opts.servername ?? ''}|${h2}|${opts.tls?.id ?? ''}`;
    let e = this.pools.get(key);
    if (!e) {
      const connect = {
        timeout: opts.connectTimeout,
        noDelay: true,
        ...upstreamTlsName(opts.servername),
        ...(opts.tls ? { ca: opts.tls.ca, cert: opts.tls.cert, key: opts.tls.key, rejectUnauthorized: opts.tls.rejectUnauthorized } : {}),
        // undici's connector option for HTTP/2 with prior knowledge (not in its types).
        ...(h2 === 'h2c' ? { useH2c: true } : {}),
      } as buildConnector.BuildOptions;
      let connector: buildConnector.connector;
      // The TLS name (SNI and the name the certificate must carry) is the pool's: `servername`
      // (the service's server_name, or the name of an address resolved from one), else the
      // origin's host. undici would take the request's Host header first (a route's
      // preserve_host: the client's; a probe's healthcheck host), over both.
      if (h2 === 'none') {
        // HTTP/1.1 sockets get an error listener ahead of undici's, which tells a failure of a
        // kept-alive connection (forward.ts sends an idempotent request again once).
        const build = buildConnector(connect);
        connector = (o, cb) => build({ ...o, servername: undefined }, (err, socket) => {
          if (err) markConnectFailed(err);
          if (socket) socket.on('error', markReused);
          (cb as (err: Error | null, socket: Socket | null) => void)(err, socket ?? null);
        });
      } else {
        // HTTP/2: the session undici builds on the socket is watched for, to correct how its
        // streams are cancelled and paused (h2-streams.ts). (allowH2: ALPN h2 over TLS.)
        const build = buildConnector({ ...connect, allowH2: true });
        connector = (o, cb) => build({ ...o, servername: undefined }, (err, socket) => {
          if (err) markConnectFailed(err);
          if (socket) watchH2Socket(socket as Socket);
          (cb as (err: Error | null, socket: Socket | null) => void)(err, socket ?? null);
          if (socket) checkH2Socket(socket as Socket);
        });
      }
      e = {
        pool: new Pool(origin, {
          connect: connector,
          ...(h2 !== 'none' ? { allowH2: true } : {}),
          keepAliveTimeout: opts.keepAliveTimeout ?? 4_000,
          keepAliveMaxTimeout: 600_000,
          // HTTP/1.1: no pipelining; HTTP/2: streams per connection (the peer's limit applies too).
          pipelining: h2 === 'none' ? 1 : 100,
          // Per-request timeouts are passed on dispatch; these are upper bounds.
          headersTimeout: 0,
          bodyTimeout: 0,
          maxHeaderSize: MAX_RESPONSE_HEADER_BYTES,
          strictContentLength: true,
        }),
        refs: 0,
      };
      this.pools.set(key, e);
    }
    e.refs++;
    return e.pool;
  }

  release(pool: Pool): void {
    for (const [key, e] of this.pools) {
      if (e.pool === pool && --e.refs <= 0) {
        this.pools.delete(key);
        e.pool.close().catch(() => {});
      }
    }
  }

  async closeAll(): Promise<void> {
    const all = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(all.map((e) => e.pool.close().catch(() => e.pool.destroy())));
  }
}
