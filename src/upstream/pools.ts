/**
 * Connection pools to upstream origins: one undici Pool per (origin, connect timeout, TLS name), kept
 * alive across config snapshots so a reload keeps warm connections. Idle pools are closed
 * when no snapshot references them any more (see release()).
 */
import { Pool } from 'undici';

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
      e = {
        pool: new Pool(origin, {
          connect: {
            timeout: opts.connectTimeout,
            noDelay: true,
            ...(opts.servername ? { servername: opts.servername } : {}),
            ...(opts.tls ? { ca: opts.tls.ca, cert: opts.tls.cert, key: opts.tls.key, rejectUnauthorized: opts.tls.rejectUnauthorized } : {}),
            // undici's connector option for HTTP/2 with prior knowledge (not in its types).
            ...(h2 === 'h2c' ? { useH2c: true } : {}),
          } as Pool.Options['connect'],
          ...(h2 !== 'none' ? { allowH2: true } : {}),
          keepAliveTimeout: opts.keepAliveTimeout ?? 4_000,
          keepAliveMaxTimeout: 600_000,
          // HTTP/1.1: no pipelining; HTTP/2: streams per connection (the peer's limit applies too).
          pipelining: h2 === 'none' ? 1 : 100,
          // Per-request timeouts are passed on dispatch; these are upper bounds.
          headersTimeout: 0,
          bodyTimeout: 0,
          maxHeaderSize: 64 * 1024,
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
