/**
 * Config stores: `openStore(setting)` for the config's `store:` key; splitDocument /
 * mergeDocument (document.ts) draw the line between what a store holds (the *document*) and
 * what always comes from the node's --config file:
 *
 * Node-local (NODE_LOCAL_KEYS; never stored, the --config file of each node decides):
 *   $schema            an editor hint about the file itself
 *   listen, listen_tls the node's sockets
 *   status_listen      this node's probe listener (kubelet)
 *   tls                certificate and key *files* on this node's disk, client_ca, TLS versions
 *   http2              listener protocol settings (ALPN, h2c, stream and reset limits)
 *   workers            this machine's processes (cores)
 *   dns                the resolvers this node can reach, refresh
 *   watch              whether this node watches its file
 *   store              where the document lives (the pointer cannot live in what it points to)
 *   store_snapshot     where this node keeps its last good config (postgres down at start)
 *   admin              the admin listener and its tokens (who may change the store)
 *   state_file         this node's quota file
 *   redis              this node's connection to the shared counters
 *   trusted_proxies    the network in front of *this* node (its load balancers); a wrong value
 *                      lets clients forge their address, so it stays with the deployment
 *                      (like Kong's trusted_ips in kong.conf) rather than the admin API
 *   limits, timeouts   the listener's request limits and client/keep-alive/drain/shutdown-delay timeouts
 *   demo               a demo upstream this process starts
 *   access_log, metrics, tracing, analytics, scaling (top level: the KEDA listener, interval)
 *                      where this node sends its telemetry (files, endpoints, sampling)
 *
 * Declarative (the document; every other key, including ones added later): services (with
 * their routes), routes (composing), consumers, plugins, plans, consumer_headers and
 * forwarding_headers (what upstreams receive: the same from every node).
 */
import { isAbsolute, resolve } from 'node:path';
import type { Logger } from '../../core/log.js';
import { FileStore } from './file.js';
import { PostgresStore, type PostgresStoreOptions } from './postgres.js';
import { SqliteStore, type SqliteStoreOptions } from './sqlite.js';
import type { ConfigStore } from './types.js';

export * from './types.js';
export { NODE_LOCAL_KEYS, isNodeLocalKey, splitDocument, mergeDocument, rawDocument } from './document.js';
export { FileStore } from './file.js';
export { SqliteStore } from './sqlite.js';
export { PostgresStore, redactUrl } from './postgres.js';
export { ConfigSnapshot, readSnapshot, writeSnapshot, parseSnapshot } from './snapshot.js';

export interface OpenStoreOptions {
  /** Relative sqlite paths are resolved against this (the config file's directory). */
  baseDir: string;
  /** The --config file (needed by `file`). */
  file?: string;
  log?: Logger;
  /** Extra settings per kind (tests, tuning). */
  sqlite?: Partial<Omit<SqliteStoreOptions, 'path' | 'log'>>;
  postgres?: Partial<Omit<PostgresStoreOptions, 'url' | 'log'>>;
}

/**
 * The store a `store:` setting names, not yet opened: `file` | `sqlite:PATH` (relative to
 * baseDir; `sqlite::memory:` for a private in-memory one) | `postgres://...` / `postgresql://...`.
 * Throws an Error naming the setting when it is none of these.
 */
export function createStore(setting: string, opts: OpenStoreOptions): ConfigStore {
  const s = setting.trim();
  if (s === 'file') {
    if (!opts.file) throw new Error('store: file needs a config file (--config)');
    return new FileStore({ file: resolve(opts.baseDir, opts.file), log: opts.log });
  }
  if (s.startsWith('sqlite:')) {
    const p = s.slice('sqlite:'.length);
    if (!p) throw new Error('store: sqlite: needs a path, e.g. sqlite:./turnpike.db');
    const path = p === ':memory:' ? p : isAbsolute(p) ? p : resolve(opts.baseDir, p);
    return new SqliteStore({ ...opts.sqlite, path, log: opts.log });
  }
  if (/^postgres(ql)?:\/\/./.test(s)) {
    return new PostgresStore({ ...opts.postgres, url: s, log: opts.log });
  }
  throw new Error(`store: ${JSON.stringify(setting)} is not file, sqlite:PATH or postgres://...`);
}

/** createStore() and open() (migrations): throws StoreUnavailable when it cannot be reached. */
export async function openStore(setting: string, opts: OpenStoreOptions): Promise<ConfigStore> {
  const store = createStore(setting, opts);
  try {
    await store.open();
  } catch (err) {
    await store.close().catch(() => undefined);
    throw err;
  }
  return store;
}
