/**
 * Connection pools to upstream origins: one undici Pool per (origin, connect timeout, TLS name), kept
 * alive across config snapshots so a reload keeps warm connections. Idle pools are closed
 * when no snapshot references them any more (see release()).
 */
import { Pool } from 'undici';

export interface PoolOptions {
  connectTimeout: number;
  keepAliveTimeout?: number;
  /** TLS server name when the origin is an address resolved from a name. */
  servername?: string;
}

export class PoolRegistry {
  private readonly pools = new Map<string, { pool: Pool; refs: number }>();

  acquire(origin: string, opts: PoolOptions): Pool {
    const key = `${origin}|${opts.connectTimeout}|${opts.servername ?? ''}`;
    let e = this.pools.get(key);
    if (!e) {
      e = {
        pool: new Pool(origin, {
          connect: { timeout: opts.connectTimeout, noDelay: true, ...(opts.servername ? { servername: opts.servername } : {}) },
          keepAliveTimeout: opts.keepAliveTimeout ?? 4_000,
          keepAliveMaxTimeout: 600_000,
          pipelining: 1,
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
