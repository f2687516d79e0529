/**
 * `store: postgres://...` — the config store shared by the nodes of a cluster (`pg`).
 *
 * Tables (created by forward-only migrations, see MIGRATIONS):
 *   turnpike_migrations (version, name, applied_at) — which migrations ran.
 *   turnpike_head (id = 1, revision) — one row: the current revision; every write locks it.
 *   turnpike_revisions (revision, at, actor, action, document json) — one row per write, the
 *     audit record and the document it produced; `json` (not jsonb) keeps the document's key
 *     order, so an export reads like what was written. The last `keep` (1000) are kept.
 *
 * Migrations: one session takes pg_advisory_lock(MIGRATION_LOCK), creates the migrations
 * table if missing and applies, each in its own transaction, the versions it has not seen.
 * Nodes starting at once wait for that lock and then find nothing left to do; a node older
 * than the schema (a newer node migrated) logs it and carries on (migrations only add).
 *
 * A write is one transaction: BEGIN; SELECT ... FROM turnpike_head FOR UPDATE (writers of
 * every node queue here); RevisionConflict unless the head is `expected`; change(); insert
 * head + 1, move the head, prune, and pg_notify('turnpike_config', '<revision>'); COMMIT.
 * NOTIFY is transactional: it is delivered at commit, never for a write that rolled back.
 * Writes of one store are also queued in-process, so they hold one pooled connection, not all;
 * the queue is bounded (write-queue.ts): a write that has not started within `writeWaitMs` of
 * its arrival (connect + statement bounds), or that was queued behind a write that found the
 * server unavailable, fails with StoreUnavailable at once and is never run — with the server
 * hung, concurrent writes all answer within one write's bounds, not one after another.
 *
 * watch(): one dedicated connection LISTENs (reconnected with backoff when it drops, then a
 * resync catches up with what it missed) plus a resync every `resyncMs` (10 s): the head
 * revision through the pool, and a ping of the LISTEN connection (a silently dead one is
 * replaced). So a node whose LISTEN connection is killed or stalls converges within the
 * resync bound, and one that listens converges within the NOTIFY latency.
 * A revision is known by its number *and* its time (`at`), not the number alone: a database
 * restored from an older dump, or a failover to a replica that was behind, moves the head
 * back, and the writes after that reuse numbers the nodes have already run (with other
 * documents). So a NOTIFY of a number higher than the last one reported is news as it is
 * (the usual path, nothing read); any other number (a rewind, or the echo of this node's
 * own write) has the head read (revision and at, one indexed row) and reported when it is
 * not the one last reported; the resync reports the head whenever it differs, higher or
 * lower. (No incarnation id in turnpike_head: a recreated database writes its revisions
 * anew, at other times, and pg_restore would bring an old id back with the rest.)
 * The resync is also what says whether the store is reachable (watch's onHealth, /status's
 * store_reachable): after each one, and at once when the LISTEN connection is lost (a resync
 * then: a stopped server is known within milliseconds, not at the next period).
 *
 * Failures never hang: connecting is bounded by connectTimeoutMs (3 s), every statement by
 * statement_timeout on the server and query_timeout on the client (5 s + 1 s: a stopped
 * server answers nothing), a session idle inside a transaction by the server (15 s). Any
 * database error becomes StoreUnavailable (admin writes answer 503); errors thrown by
 * change() and RevisionConflict pass through unchanged. A write whose COMMIT got no answer
 * is reported unavailable and was maybe applied — it was never acknowledged.
 */
import type pg from 'pg';
import { lazy } from '../../core/lazy.js';
import type { Logger } from '../../core/log.js';
import { postgresUrlProblem, redactUrl } from '../../core/url-secrets.js';
import {
  RevisionConflict, StoreUnavailable,
  type ConfigDocument, type ConfigStore, type Revision, type StoredConfig, type WriteMeta, type DocumentChange,
} from './types.js';
import { WriteQueue } from './write-queue.js';

const pgLib = lazy<typeof pg>('pg');

export interface PostgresStoreOptions {
  /** postgres://user:password@host:port/database[?sslmode=...] */
  url: string;
  /** Revisions kept. Default 1000. */
  keep?: number;
  /** Pooled connections (besides the LISTEN one). Default 4. */
  poolSize?: number;
  /** Bound on opening a connection (and on waiting for a pooled one). Default 3000 ms. */
  connectTimeoutMs?: number;
  /** Bound on one statement (server statement_timeout; the client gives up 1 s later). Default 5000 ms. */
  statementTimeoutMs?: number;
  /**
   * The longest a write waits behind other writes of this store before it fails (not run).
   * Default connectTimeoutMs + statementTimeoutMs + 1000 (one write's bounds).
   */
  writeWaitMs?: number;
  /** The safety net of watch(): the head is read this often. Default 10 000 ms. */
  resyncMs?: number;
  /** LISTEN reconnect backoff: first and longest wait. Default 100 ms .. 5000 ms. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Names this node in pg_stat_activity (application_name `turnpike:<name>`, `turnpike:<name>:listen`). */
  name?: string;
  log?: Logger;
}

export const NOTIFY_CHANNEL = 'turnpike_config';
/** pg_advisory_lock(int, int) keys: 'turn' and 1 (migrations). */
const MIGRATION_LOCK: [number, number] = [0x7475726e, 1];

/** Forward only; never edit one that has shipped, add the next. Each runs in one transaction. */
const MIGRATIONS: { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: 'head and revisions',
    sql: `
      CREATE TABLE turnpike_revisions (
        revision bigint PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        actor text NOT NULL,
        action text NOT NULL,
        document json NOT NULL
      );
      CREATE TABLE turnpike_head (
        id smallint PRIMARY KEY CHECK (id = 1),
        revision bigint NOT NULL
      );
      INSERT INTO turnpike_head (id, revision) VALUES (1, 0);
    `,
  },
];

/** The URL without its secrets (for messages and logs): src/core/url-secrets.ts. */
export { redactUrl };

interface RevisionRow {
  revision: string;
  at: Date;
  actor: string;
  action: string;
  document?: ConfigDocument;
}

/** What tells revisions apart across a rewind (the same number written again is another revision). */
const headKey = (revision: number, at: string | null): string => `${revision}@${at ?? ''}`;

const toRevision = (r: RevisionRow): Revision => ({ revision: Number(r.revision), at: new Date(r.at).toISOString(), actor: r.actor, action: r.action });

/** Ends a client, and drops its socket if the server does not answer the goodbye in time. */
function endClient(client: pg.Client | null | undefined, waitMs = 1000): Promise<void> {
  if (!client) return Promise.resolve();
  client.on('error', () => undefined);
  return new Promise<void>((resolve) => {
    const destroy = () => {
      (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
      resolve();
    };
    const t = setTimeout(destroy, waitMs);
    t.unref();
    client.end().then(() => { clearTimeout(t); resolve(); }, () => { clearTimeout(t); destroy(); });
  });
}

export class PostgresStore implements ConfigStore {
  readonly kind = 'postgres' as const;
  /** The URL without its secrets (password, ?password= ...). */
  readonly where: string;
  private readonly url: string;
  private readonly keep: number;
  private readonly connectTimeoutMs: number;
  private readonly statementTimeoutMs: number;
  private readonly resyncMs: number;
  private readonly reconnectMinMs: number;
  private readonly reconnectMaxMs: number;
  private readonly appName: string;
  private readonly log: Logger | undefined;
  private readonly pool: pg.Pool;
  private migration: Promise<void> | null = null;
  private readonly writes: WriteQueue;
  private closed = false;

  private readonly watchers = new Set<(revision: number) => void>();
  /** The revision last given to watchers (or seen by current() before anybody watched). */
  private reported = 0;
  /** Its identity, headKey(revision, at); null while only its number is known (from a NOTIFY). */
  private reportedKey: string | null = headKey(0, null);
  /** A head read in flight (checkHead), and whether another was asked for meanwhile. */
  private checking: Promise<void> | null = null;
  private checkAgain = false;
  private listener: pg.Client | null = null;
  /** The LISTEN client being connected or in use (events of older ones are ignored). */
  private listenTarget: pg.Client | null = null;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private reconnectDelay: number;
  private resyncTimer: NodeJS.Timeout | undefined;
  private resyncing = false;
  private healthy = true;
  private readonly healthWatchers = new Set<(error: string | null) => void>();

  /** Throws an Error (not StoreUnavailable: a setting to fix, not a server to wait for) when the URL cannot be used as written. */
  constructor(opts: PostgresStoreOptions) {
    const problem = postgresUrlProblem(opts.url);
    if (problem !== null) throw new Error(`store: the postgres URL ${problem}`);
    this.url = opts.url;
    this.where = redactUrl(opts.url);
    this.keep = Math.max(1, Math.floor(opts.keep ?? 1000));
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 3000;
    this.statementTimeoutMs = opts.statementTimeoutMs ?? 5000;
    this.resyncMs = opts.resyncMs ?? 10_000;
    this.reconnectMinMs = opts.reconnectMinMs ?? 100;
    this.reconnectMaxMs = opts.reconnectMaxMs ?? 5000;
    this.reconnectDelay = this.reconnectMinMs;
    this.writes = new WriteQueue(opts.writeWaitMs ?? this.connectTimeoutMs + this.statementTimeoutMs + 1000, `the postgres store ${this.where}`);
    this.appName = `turnpike${opts.name ? `:${opts.name}` : ''}`.slice(0, 56);
    this.log = opts.log;
    // Creating a pool connects nothing; the first query does.
    this.pool = new (pgLib().Pool)({
      ...this.clientConfig(),
      max: Math.max(1, opts.poolSize ?? 4),
      idleTimeoutMillis: 30_000,
      application_name: this.appName,
    });
    // An idle pooled client whose server went away emits here; without a listener it would crash the process.
    this.pool.on('error', (err) => this.log?.debug?.({ err: err.message, store: this.where }, 'idle postgres connection lost'));
  }

  private clientConfig(): pg.ClientConfig {
    return {
      connectionString: this.url,
      connectionTimeoutMillis: this.connectTimeoutMs,
      statement_timeout: this.statementTimeoutMs,
      query_timeout: this.statementTimeoutMs + 1000,
      idle_in_transaction_session_timeout: 15_000,
      keepAlive: true,
      keepAliveInitialDelayMillis: 5000,
    };
  }

  private unavailable(what: string, err: unknown): StoreUnavailable {
    if (err instanceof StoreUnavailable) return err;
    return new StoreUnavailable(`the postgres store ${this.where} is unavailable (${what}): ${(err as Error)?.message ?? String(err)}`, err);
  }

  /** Runs the migrations (once; again after a failure). Every other call waits for it. */
  open(): Promise<void> {
    if (this.closed) return Promise.reject(new StoreUnavailable(`the postgres store ${this.where} is closed`));
    if (!this.migration) {
      this.migration = this.migrate().catch((err) => {
        this.migration = null;
        throw this.unavailable('migrating', err);
      });
    }
    return this.migration;
  }

  private async migrate(): Promise<void> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    let locked = false;
    const onError = (err: Error) => { broken ??= err; };
    client.on('error', onError);
    try {
      // Waiting for another node's migrations, or running one, may take longer than one
      // statement usually may (server and client bounds both raised for this session's queries).
      const long = Math.max(60_000, this.statementTimeoutMs);
      await client.query(`SET statement_timeout = ${long}`);
      const slow = (text: string, values?: unknown[]) => client.query({ text, values, query_timeout: long + 1000 } as pg.QueryConfig);
      await slow('SELECT pg_advisory_lock($1, $2)', MIGRATION_LOCK);
      locked = true;
      await client.query(`CREATE TABLE IF NOT EXISTS turnpike_migrations (
        version integer PRIMARY KEY,
        name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
      )`);
      const { rows } = await client.query<{ version: number }>('SELECT coalesce(max(version), 0)::int AS version FROM turnpike_migrations');
      const at = rows[0]!.version;
      const latest = MIGRATIONS[MIGRATIONS.length - 1]!.version;
      if (at > latest) {
        this.log?.warn({ store: this.where, schema: at, known: latest }, 'the postgres config schema is newer than this node (another node migrated it); carrying on');
      }
      for (const m of MIGRATIONS) {
        if (m.version <= at) continue;
        await client.query('BEGIN');
        try {
          await slow(m.sql);
          await client.query('INSERT INTO turnpike_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK').catch(() => undefined);
          throw err;
        }
        this.log?.info({ store: this.where, version: m.version, migration: m.name }, 'postgres config schema migrated');
      }
      await client.query('SELECT pg_advisory_unlock($1, $2)', MIGRATION_LOCK);
      locked = false;
      await client.query('RESET statement_timeout');
    } catch (err) {
      broken = err as Error;
      throw err;
    } finally {
      // A session that still holds the lock (or a changed timeout) is not given back: destroying it releases the lock.
      client.removeListener('error', onError);
      client.release(broken ?? (locked ? new Error('advisory lock still held') : undefined));
    }
  }

  /** current() read the head: the baseline of a later watch(), or the identity of a revision a NOTIFY announced. */
  private noteRevision(n: number, at: string): void {
    if (this.watchers.size === 0) {
      this.reported = n;
      this.reportedKey = headKey(n, at);
    } else if (this.reportedKey === null && n === this.reported) {
      this.reportedKey = headKey(n, at);
    }
  }

  async current(): Promise<StoredConfig | null> {
    await this.open();
    let rows: (RevisionRow & { head: string })[];
    try {
      ({ rows } = await this.pool.query<RevisionRow & { head: string }>(
        'SELECT h.revision AS head, r.revision, r.at, r.actor, r.action, r.document FROM turnpike_head h LEFT JOIN turnpike_revisions r ON r.revision = h.revision WHERE h.id = 1',
      ));
    } catch (err) {
      throw this.unavailable('reading', err);
    }
    const r = rows[0];
    if (!r || Number(r.head) === 0) return null;
    // The head's row deleted (turnpike_revisions pruned by hand, by age): not an empty store — a
    // node starting would serve (and seeding would not replace) an empty config.
    if (r.revision === null) throw this.unavailable('reading', new Error(`the head revision ${r.head} has no row in turnpike_revisions (deleted by hand?): restore it from a backup`));
    const stored = { ...toRevision(r), document: this.documentOf(r) };
    this.noteRevision(stored.revision, stored.at);
    return stored;
  }

  async revision(n: number): Promise<StoredConfig | null> {
    if (!Number.isSafeInteger(n) || n < 1) return null;
    await this.open();
    try {
      const { rows } = await this.pool.query<RevisionRow>('SELECT revision, at, actor, action, document FROM turnpike_revisions WHERE revision = $1', [n]);
      const r = rows[0];
      return r ? { ...toRevision(r), document: this.documentOf(r) } : null;
    } catch (err) {
      throw this.unavailable('reading', err);
    }
  }

  /**
   * A row's document; a `json` column takes JSON null, an array or a scalar too (written by hand
   * or a tool): a node would run that as an empty config — every route gone —, so it is a
   * damaged store (StoreUnavailable) instead.
   */
  private documentOf(r: RevisionRow): ConfigDocument {
    const d: unknown = r.document;
    if (typeof d !== 'object' || d === null || Array.isArray(d)) {
      throw this.unavailable('reading', new Error(`revision ${r.revision}'s document is not a JSON object (written by hand?): restore it from a backup`));
    }
    return d as ConfigDocument;
  }

  async history(limit: number, before?: number): Promise<Revision[]> {
    const lim = Math.max(0, Math.floor(limit));
    if (lim === 0) return [];
    await this.open();
    try {
      const { rows } = await this.pool.query<RevisionRow>(
        'SELECT revision, at, actor, action FROM turnpike_revisions WHERE revision < $1 ORDER BY revision DESC LIMIT $2',
        [before ?? Number.MAX_SAFE_INTEGER, lim],
      );
      return rows.map(toRevision);
    } catch (err) {
      throw this.unavailable('reading', err);
    }
  }

  write(
    meta: WriteMeta,
    change: DocumentChange,
    expected?: number,
  ): Promise<StoredConfig> {
    if (this.closed) return Promise.reject(new StoreUnavailable(`the postgres store ${this.where} is closed`));
    return this.writes.run(() => this.writeNow(meta, change, expected));
  }

  private async writeNow(
    meta: WriteMeta,
    change: DocumentChange,
    expected: number | undefined,
  ): Promise<StoredConfig> {
    /** The server failed this write: the writes queued behind it fail now too (write-queue.ts). */
    const down = (what: string, err: unknown): StoreUnavailable => {
      const e = this.unavailable(what, err);
      this.writes.failed(e);
      return e;
    };
    try {
      await this.open();
    } catch (err) {
      throw down('migrating', err);
    }
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw down('connecting', err);
    }
    /** Set when the connection can no longer be trusted (it is destroyed, not pooled again). */
    let broken: Error | undefined;
    let inTx = false;
    // A checked-out client that loses its connection between queries (while change() runs)
    // emits 'error'; unheard, that would be an uncaught exception.
    const onError = (err: Error) => { broken ??= err; };
    client.on('error', onError);
    const db = async <R extends pg.QueryResultRow>(sql: string, params?: unknown[]) => {
      try {
        return await client.query<R>(sql, params);
      } catch (err) {
        broken = err as Error;
        throw down('writing', err);
      }
    };
    try {
      await db('BEGIN');
      inTx = true;
      // Two statements, not a join: a FOR UPDATE that waited for another writer re-reads the
      // locked row's newest version, but the rows joined to it would come from the statement's
      // older snapshot (READ COMMITTED) — the previous head's document. The next statement
      // takes a fresh snapshot, which has the head's revision committed.
      const head = await db<{ revision: string }>('SELECT revision FROM turnpike_head WHERE id = 1 FOR UPDATE');
      const row = head.rows[0];
      if (!row) throw this.unavailable('writing', new Error('turnpike_head has no row (schema damaged?)'));
      const current = Number(row.revision);
      if (expected !== undefined && expected !== current) throw new RevisionConflict(expected, current);
      let document: ConfigDocument | null = null;
      if (current > 0) {
        const doc = await db<{ document: ConfigDocument }>('SELECT document FROM turnpike_revisions WHERE revision = $1', [current]);
        if (!doc.rows[0]) throw this.unavailable('writing', new Error(`revision ${current} is missing (schema damaged?)`));
        document = this.documentOf({ ...doc.rows[0], revision: String(current) } as RevisionRow);
      }
      // The head row stays locked while change() runs: no node writes in between.
      const next = await change(document, current);
      const text = JSON.stringify(next);
      if (typeof text !== 'string' || typeof next !== 'object' || next === null || Array.isArray(next)) {
        throw new TypeError('a config document must be a JSON object');
      }
      const revision = current + 1;
      const ins = await db<{ at: Date }>(
        `WITH ins AS (
           INSERT INTO turnpike_revisions (revision, actor, action, document) VALUES ($1::bigint, $2, $3, $4::json) RETURNING at
         ), head AS (
           UPDATE turnpike_head SET revision = $1::bigint WHERE id = 1
         ), pruned AS (
           DELETE FROM turnpike_revisions WHERE revision <= $1::bigint - $5::bigint
         )
         SELECT at, pg_notify($6, $1::text) FROM ins`,
        [revision, meta.actor, meta.action, text, this.keep, NOTIFY_CHANNEL],
      );
      await db('COMMIT');
      inTx = false;
      const stored: StoredConfig = {
        revision,
        at: new Date(ins.rows[0]!.at).toISOString(),
        actor: meta.actor,
        action: meta.action,
        document: JSON.parse(text) as ConfigDocument,
      };
      this.announced(revision, headKey(revision, stored.at));
      return stored;
    } finally {
      if (inTx && !broken) {
        try {
          await client.query('ROLLBACK');
        } catch (err) {
          broken = err as Error;
        }
      }
      client.removeListener('error', onError);
      client.release(broken);
    }
  }

  // ---- watch ----

  /**
   * A revision number from a NOTIFY (key null) or this node's own write: higher than the last
   * one reported, it is news; otherwise (the store went back, or the echo of a write already
   * reported) the head is read and reported if it is not the one last reported.
   */
  private announced(revision: number, key: string | null): void {
    if (this.watchers.size === 0) {
      this.reported = revision;
      this.reportedKey = key;
      return;
    }
    if (revision > this.reported) return this.report(revision, key);
    if (revision === this.reported && key !== null && (this.reportedKey === null || this.reportedKey === key)) {
      this.reportedKey = key; // this write, announced first by its NOTIFY
      return;
    }
    void this.checkHead();
  }

  /** The head as read from the store: reported when it is not the revision last reported (higher or lower). */
  private headIs(revision: number, at: string | null): void {
    const key = headKey(revision, at);
    if (key === this.reportedKey) return;
    if (this.reportedKey === null && revision === this.reported) {
      this.reportedKey = key; // the revision a NOTIFY announced by its number
      return;
    }
    this.report(revision, key);
  }

  private report(revision: number, key: string | null): void {
    this.reported = revision;
    this.reportedKey = key;
    for (const w of [...this.watchers]) {
      try {
        w(revision);
      } catch (err) {
        this.log?.error({ err: (err as Error).message }, 'config store watcher threw');
      }
    }
  }

  /** Reads the head (revision and at) and reports it if it changed; concurrent calls share one read (and one more after it). */
  private checkHead(): Promise<void> {
    if (this.checking) {
      this.checkAgain = true;
      return this.checking;
    }
    const run = async () => {
      do {
        this.checkAgain = false;
        if (this.closed) return;
        try {
          await this.open();
          const { rows } = await this.pool.query<{ revision: string; at: Date | null }>(
            'SELECT h.revision, r.at FROM turnpike_head h LEFT JOIN turnpike_revisions r ON r.revision = h.revision WHERE h.id = 1',
          );
          this.checked(null);
          const row = rows[0];
          this.headIs(Number(row?.revision ?? 0), row?.at ? new Date(row.at).toISOString() : null);
        } catch (err) {
          this.checked(err as Error);
        }
      } while (this.checkAgain);
    };
    this.checking = run().finally(() => { this.checking = null; });
    return this.checking;
  }

  watch(onChange: (revision: number) => void, onHealth?: (error: string | null) => void): () => void {
    this.watchers.add(onChange);
    if (onHealth) this.healthWatchers.add(onHealth);
    if (this.watchers.size === 1 && !this.closed) {
      void this.listen();
      this.resyncTimer = setInterval(() => void this.resync(), this.resyncMs);
      this.resyncTimer.unref();
    }
    return () => {
      this.watchers.delete(onChange);
      if (onHealth) this.healthWatchers.delete(onHealth);
      if (this.watchers.size === 0) this.stopWatching();
    };
  }

  /** The outcome of a reachability check (resync): logged on a change, told to every onHealth. */
  private checked(err: Error | null): void {
    if (err === null && !this.healthy) this.log?.info({ store: this.where }, 'postgres config store reachable again');
    if (err !== null && this.healthy) this.log?.warn({ err: err.message, store: this.where }, 'postgres config store unreachable (serving the last config; retrying)');
    this.healthy = err === null;
    const error = err === null ? null : this.unavailable('reading', err).message;
    for (const h of [...this.healthWatchers]) {
      try {
        h(error);
      } catch (e) {
        this.log?.error({ err: (e as Error).message }, 'config store health watcher threw');
      }
    }
  }

  private stopWatching(): void {
    clearInterval(this.resyncTimer);
    this.resyncTimer = undefined;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const l = this.listenTarget;
    this.listenTarget = null;
    this.listener = null;
    void endClient(l);
  }

  /** The backend pid of the LISTEN connection (null while not listening). For tests and /status. */
  get listenerPid(): number | null {
    return (this.listener as unknown as { processID?: number } | null)?.processID ?? null;
  }

  private async listen(): Promise<void> {
    if (this.closed || this.watchers.size === 0 || this.listenTarget) return;
    const client = new (pgLib().Client)({ ...this.clientConfig(), application_name: `${this.appName}:listen` });
    this.listenTarget = client;
    client.on('error', (err) => this.listenerLost(client, err));
    client.on('end', () => this.listenerLost(client, new Error('connection ended')));
    client.on('notification', (msg) => {
      if (msg.channel !== NOTIFY_CHANNEL) return;
      const n = Number(msg.payload);
      if (Number.isSafeInteger(n) && n > 0) this.announced(n, null);
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${NOTIFY_CHANNEL}`);
    } catch (err) {
      this.listenerLost(client, err as Error);
      return;
    }
    if (this.listenTarget !== client) return; // lost or stopped meanwhile
    this.listener = client;
    if (!this.healthy || this.reconnectDelay > this.reconnectMinMs) this.log?.info({ store: this.where }, 'postgres config store: listening again');
    this.reconnectDelay = this.reconnectMinMs;
    // Whatever was written while nobody listened: a head read that starts now (a resync already
    // running may have read the head before LISTEN took effect; checkHead then reads it once more).
    await this.checkHead();
  }

  private listenerLost(client: pg.Client, err: Error): void {
    if (this.listenTarget !== client) return;
    this.listenTarget = null;
    this.listener = null;
    void endClient(client);
    if (this.closed || this.watchers.size === 0) return;
    const delay = this.reconnectDelay;
    this.reconnectDelay = Math.min(this.reconnectMaxMs, this.reconnectDelay * 2);
    // Once per outage at warn level; every further attempt at debug.
    const level = delay === this.reconnectMinMs ? 'warn' : 'debug';
    this.log?.[level]({ err: err.message, store: this.where, retry_ms: delay }, 'postgres config store: LISTEN connection lost (reconnecting; resync every %d ms meanwhile)', this.resyncMs);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.listen(), delay * (0.75 + Math.random() / 2));
    this.reconnectTimer.unref();
    // Lost while all was well: is the server gone (stopped, unreachable) or only this session?
    if (this.healthy) void this.resync();
  }

  /** The safety net: read the head; and make sure the LISTEN connection still answers. */
  private async resync(): Promise<void> {
    if (this.resyncing || this.closed) return;
    this.resyncing = true;
    try {
      await this.checkHead();
    } finally {
      this.resyncing = false;
    }
    const l = this.listener;
    if (l && !this.closed) {
      // A LISTEN session that stopped answering (a stalled backend, a dead peer without RST) delivers nothing.
      try {
        await l.query('SELECT 1');
      } catch (err) {
        this.listenerLost(l, err as Error);
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watchers.clear();
    this.healthWatchers.clear();
    this.stopWatching();
    await this.writes.idle();
    // pool.end() waits for every client to say goodbye; a stopped server never answers.
    await Promise.race([
      this.pool.end().catch(() => undefined),
      new Promise<void>((r) => setTimeout(r, 2000).unref()),
    ]);
  }
}
