/**
 * `store: sqlite:PATH` — the embedded config store (better-sqlite3 12), the default when the
 * admin API writes on a single node. Several processes may open the same file (the primary and
 * a CLI, two gateways on one host): SQLite's file locks are the only coordination.
 *
 * Tables:
 *   revisions (revision INTEGER PRIMARY KEY, at TEXT, actor TEXT, action TEXT, document TEXT)
 *     — one row per write (the audit record and the document it produced); `document` is the
 *     JSON text, checked by json_valid(). Revisions are contiguous (each write inserts the
 *     current one + 1) and the newest row is never pruned, so max(revision) is the head and a
 *     number is never reused.
 *   PRAGMA user_version — the schema version (migrations run under BEGIN IMMEDIATE).
 *
 * Writes: one transaction each — BEGIN IMMEDIATE (takes the write lock at once, so the
 * revision read inside it cannot go stale), read the head, check `expected`, run change(),
 * insert head + 1, prune rows older than `keep`, COMMIT. Writes of this process are queued
 * (one connection, one transaction at a time); writers of other processes wait for the lock.
 * The queue is bounded (write-queue.ts): a write queued behind one that could not have the lock
 * within `lockTimeoutMs` fails with it, and one that has not started within lockTimeoutMs + 1 s
 * of arriving fails — both unrun (not each waiting out its own lock timeout in turn).
 * The lock is waited for *asynchronously*: busy_timeout is 0 and a busy BEGIN is retried
 * after a short sleep (until `lockTimeoutMs`, then StoreUnavailable), so a writer in another
 * process never blocks this event loop (better-sqlite3 is synchronous; SQLite's own busy
 * handler would sleep on the main thread).
 *
 * Durability: WAL with synchronous=FULL. In WAL mode NORMAL never corrupts the database, but
 * a commit is only written to the OS, not fsynced: it survives the process being killed yet
 * may be lost with the machine (power, kernel panic) until the next checkpoint. FULL fsyncs
 * the WAL on every commit, so an acknowledged admin write survives both; config writes are
 * rare (an admin action, not traffic), and the fsync costs about a millisecond or a few.
 *
 * watch(): every `pollMs` (1 s) `PRAGMA data_version` — a counter in memory that changes when
 * another connection commits, so an idle poll reads no table — and, only when it changed, the
 * head revision. Writes of this store are reported at once. The head is reported whenever it
 * is not the revision last reported — by number *and* time, lower ones too: a file restored
 * from an older backup (sqlite3's .restore, the backup API) goes back, and the writes after
 * it reuse numbers already reported.
 */
import type Database from 'better-sqlite3';
import { lazy } from '../../core/lazy.js';
import { closeSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from '../../core/log.js';
import {
  RevisionConflict, StoreUnavailable,
  type ConfigDocument, type ConfigStore, type Revision, type StoredConfig, type WriteMeta, type DocumentChange,
} from './types.js';
import { makeDirectory } from '../../core/mkdir.js';
import { WriteQueue } from './write-queue.js';

const sqlite = lazy<typeof Database>('better-sqlite3');

export interface SqliteStoreOptions {
  /** The database file (its directory is created); `:memory:` for a private one (tests). */
  path: string;
  /** Revisions kept (older ones are pruned by the write that passes the mark). Default 1000. */
  keep?: number;
  /** How often watch() looks for writes of other processes. Default 1000 ms. */
  pollMs?: number;
  /** How long a write waits for the lock held by another process before StoreUnavailable. Default 10 s. */
  lockTimeoutMs?: number;
  log?: Logger;
}

const SCHEMA_VERSION = 1;

interface Row {
  revision: number;
  at: string;
  actor: string;
  action: string;
  document?: string;
}

/** What tells revisions apart across a rewind (the same number written again is another revision). */
const headKey = (revision: number, at: string | null): string => `${revision}@${at ?? ''}`;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const isBusy = (err: unknown) => /^SQLITE_(BUSY|LOCKED)/.test(String((err as { code?: unknown })?.code ?? ''));

export class SqliteStore implements ConfigStore {
  readonly kind = 'sqlite' as const;
  readonly path: string;
  private readonly keep: number;
  private readonly pollMs: number;
  private readonly lockTimeoutMs: number;
  private readonly log: Logger | undefined;
  private db: Database.Database | null = null;
  private opening: Promise<void> | null = null;
  private stmts: ReturnType<SqliteStore['prepare']> | null = null;
  /** This process's writes, one at a time. */
  private readonly writes: WriteQueue;
  private readonly watchers = new Set<(revision: number) => void>();
  private pollTimer: NodeJS.Timeout | undefined;
  private dataVersion = -1;
  /** The revision last given to watchers (or returned by current() before watching), as `revision@at`. */
  private reported = headKey(0, null);
  private closed = false;

  constructor(opts: SqliteStoreOptions) {
    this.path = opts.path;
    this.keep = Math.max(1, Math.floor(opts.keep ?? 1000));
    this.pollMs = opts.pollMs ?? 1000;
    this.lockTimeoutMs = opts.lockTimeoutMs ?? 10_000;
    this.log = opts.log;
    this.writes = new WriteQueue(this.lockTimeoutMs + 1000, `the sqlite store ${this.path}`);
  }

  /** Opens the file, switches it to WAL and migrates the schema (once; concurrent callers share it). */
  open(): Promise<void> {
    if (this.closed) return Promise.reject(new StoreUnavailable(`the sqlite store ${this.path} is closed`));
    if (!this.opening) this.opening = this.openNow().catch((err) => { this.opening = null; throw err; });
    return this.opening;
  }

  private async openNow(): Promise<void> {
    let db: Database.Database;
    try {
      if (this.path !== ':memory:') {
        makeDirectory(dirname(this.path));
        // The config's secrets are in it (plugin secrets, credentials): a new file is its owner's
        // only (SQLite gives its -wal and -shm the mode of the database file), as the disk
        // snapshot is. An existing one keeps the mode it has.
        try {
          closeSync(openSync(this.path, 'wx', 0o600));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
      }
      db = new (sqlite())(this.path);
    } catch (err) {
      throw new StoreUnavailable(`cannot open the sqlite store ${this.path}: ${(err as Error).message}`, err);
    }
    try {
      db.pragma('busy_timeout = 0');
      // Switching to WAL needs an exclusive moment; another process opening the file at the same time may hold it.
      if (!db.memory) {
        await this.retryBusy('switching to WAL', () => {
          if (String(db.pragma('journal_mode = WAL', { simple: true })).toLowerCase() !== 'wal') throw new Error('the database refused WAL mode');
        });
      }
      db.pragma('synchronous = FULL');
      await this.retryBusy('migrating', () => this.migrate(db));
    } catch (err) {
      db.close();
      throw err instanceof StoreUnavailable ? err : new StoreUnavailable(`cannot open the sqlite store ${this.path}: ${(err as Error).message}`, err);
    }
    if (this.closed) {
      db.close();
      throw new StoreUnavailable(`the sqlite store ${this.path} is closed`);
    }
    this.db = db;
    this.stmts = this.prepare(db);
  }

  private migrate(db: Database.Database): void {
    if (Number(db.pragma('user_version', { simple: true })) >= SCHEMA_VERSION) return;
    db.prepare('BEGIN IMMEDIATE').run();
    try {
      const version = Number(db.pragma('user_version', { simple: true }));
      if (version < 1) {
        db.exec(`CREATE TABLE IF NOT EXISTS revisions (
          revision INTEGER PRIMARY KEY,
          at TEXT NOT NULL,
          actor TEXT NOT NULL,
          action TEXT NOT NULL,
          document TEXT NOT NULL CHECK (json_valid(document))
        )`);
      }
      // Later versions: `if (version < 2) { ... }`.
      db.pragma(`user_version = ${SCHEMA_VERSION}`);
      db.prepare('COMMIT').run();
    } catch (err) {
      if (db.inTransaction) db.prepare('ROLLBACK').run();
      throw err;
    }
  }

  private prepare(db: Database.Database) {
    return {
      begin: db.prepare('BEGIN IMMEDIATE'),
      commit: db.prepare('COMMIT'),
      rollback: db.prepare('ROLLBACK'),
      head: db.prepare<[], { revision: number; at: string }>('SELECT revision, at FROM revisions ORDER BY revision DESC LIMIT 1'),
      current: db.prepare<[], Row>('SELECT revision, at, actor, action, document FROM revisions ORDER BY revision DESC LIMIT 1'),
      one: db.prepare<[number], Row>('SELECT revision, at, actor, action, document FROM revisions WHERE revision = ?'),
      insert: db.prepare<[number, string, string, string, string]>('INSERT INTO revisions (revision, at, actor, action, document) VALUES (?, ?, ?, ?, ?)'),
      prune: db.prepare<[number]>('DELETE FROM revisions WHERE revision <= ?'),
      history: db.prepare<[number, number], Row>('SELECT revision, at, actor, action FROM revisions WHERE revision < ? ORDER BY revision DESC LIMIT ?'),
    };
  }

  private get s() {
    if (!this.stmts) throw new StoreUnavailable(this.closed ? `the sqlite store ${this.path} is closed` : `the sqlite store ${this.path} is not open (call open() first)`);
    return this.stmts;
  }

  /** Runs a synchronous step, retrying while another process holds the lock (sleeping, never blocking). */
  private async retryBusy<T>(what: string, fn: () => T): Promise<T> {
    const deadline = Date.now() + this.lockTimeoutMs;
    for (let attempt = 0; ; attempt++) {
      try {
        return fn();
      } catch (err) {
        if (!isBusy(err)) throw err;
        if (Date.now() >= deadline) {
          throw new StoreUnavailable(`the sqlite store ${this.path} stayed locked by another process for ${this.lockTimeoutMs} ms (${what})`, err);
        }
        // 1, 2, 4 ... 16 ms with jitter: a config transaction holds the lock for a few ms.
        await sleep(Math.min(16, 2 ** Math.min(attempt, 4)) * (0.5 + Math.random()));
      }
    }
  }

  /** A statement: the store opened first if need be, retried while busy, any other failure is StoreUnavailable. */
  private async step<T>(what: string, fn: () => T): Promise<T> {
    await this.open();
    return this.retryBusy(what, () => {
      try {
        return fn();
      } catch (err) {
        if (isBusy(err) || err instanceof StoreUnavailable) throw err;
        throw new StoreUnavailable(`the sqlite store ${this.path} failed: ${(err as Error).message}`, err);
      }
    });
  }

  private stored(row: Row): StoredConfig {
    const document: unknown = JSON.parse(row.document!);
    // (json_valid() lets JSON null, an array or a scalar in, written by hand or a tool: the node
    // would run it as an empty config — every route gone — so it is a damaged store instead)
    if (typeof document !== 'object' || document === null || Array.isArray(document)) {
      throw new StoreUnavailable(`the sqlite store ${this.path} is damaged: revision ${row.revision}'s document is not a JSON object (written by hand?): restore it from a backup`);
    }
    return { revision: row.revision, at: row.at, actor: row.actor, action: row.action, document: document as ConfigDocument };
  }

  async current(): Promise<StoredConfig | null> {
    const row = await this.step('reading', () => this.s.current.get());
    if (!row) return null;
    if (this.watchers.size === 0) this.reported = headKey(row.revision, row.at);
    return this.stored(row);
  }

  async revision(n: number): Promise<StoredConfig | null> {
    if (!Number.isSafeInteger(n) || n < 1) return null;
    const row = await this.step('reading', () => this.s.one.get(n));
    return row ? this.stored(row) : null;
  }

  async history(limit: number, before?: number): Promise<Revision[]> {
    const lim = Math.max(0, Math.floor(limit));
    if (lim === 0) return [];
    const rows = await this.step('reading', () => this.s.history.all(before ?? Number.MAX_SAFE_INTEGER, lim));
    return rows.map((r) => ({ revision: r.revision, at: r.at, actor: r.actor, action: r.action }));
  }

  write(
    meta: WriteMeta,
    change: DocumentChange,
    expected?: number,
  ): Promise<StoredConfig> {
    if (this.closed) return Promise.reject(new StoreUnavailable(`the sqlite store ${this.path} is closed`));
    return this.writes.run(() => this.writeNow(meta, change, expected));
  }

  private async writeNow(
    meta: WriteMeta,
    change: DocumentChange,
    expected: number | undefined,
  ): Promise<StoredConfig> {
    try {
      await this.step('waiting for the write lock', () => this.s.begin.run());
    } catch (err) {
      // Locked by another process past lockTimeoutMs (or the file cannot be opened): the writes queued behind this one fail now too.
      if (err instanceof StoreUnavailable) this.writes.failed(err);
      throw err;
    }
    const s = this.s;
    const db = this.db!;
    let committed = false;
    try {
      let row: Row | undefined;
      try {
        row = s.current.get();
      } catch (err) {
        throw new StoreUnavailable(`the sqlite store ${this.path} failed: ${(err as Error).message}`, err);
      }
      const head = row?.revision ?? 0;
      if (expected !== undefined && expected !== head) throw new RevisionConflict(expected, head);
      // The lock is held while change() runs (it may be async: validation, compile): nobody
      // can write in between, so what it returns is based on the head it was given.
      const next = await change(row ? this.stored(row).document : null, head);
      const text = JSON.stringify(next);
      if (typeof text !== 'string' || typeof next !== 'object' || next === null || Array.isArray(next)) {
        throw new TypeError('a config document must be a JSON object');
      }
      const stored: StoredConfig = {
        revision: head + 1,
        at: new Date().toISOString(),
        actor: meta.actor,
        action: meta.action,
        document: JSON.parse(text) as ConfigDocument,
      };
      try {
        s.insert.run(stored.revision, stored.at, stored.actor, stored.action, text);
        if (stored.revision > this.keep) s.prune.run(stored.revision - this.keep);
        // No await between the insert and COMMIT: reads of this process on the same connection
        // never see a revision that is not committed. (In WAL mode, with the write lock held,
        // COMMIT does not wait for anybody; should it fail, the write is rolled back.)
        s.commit.run();
      } catch (err) {
        throw err instanceof StoreUnavailable ? err : new StoreUnavailable(`the sqlite store ${this.path} failed to write: ${(err as Error).message}`, err);
      }
      committed = true;
      this.report(stored.revision, stored.at);
      return stored;
    } finally {
      if (!committed && db.inTransaction) {
        try {
          s.rollback.run();
        } catch (err) {
          this.log?.warn({ err: (err as Error).message, store: this.path }, 'sqlite rollback failed');
        }
      }
    }
  }

  /** Tells the watchers about the head unless it is the revision last reported (a lower one too: the file went back). */
  private report(revision: number, at: string | null): void {
    const key = headKey(revision, at);
    if (key === this.reported) return;
    this.reported = key;
    for (const w of [...this.watchers]) {
      try {
        w(revision);
      } catch (err) {
        this.log?.error({ err: (err as Error).message }, 'config store watcher threw');
      }
    }
  }

  private poll = (): void => {
    if (!this.stmts || !this.db) return;
    try {
      const v = Number(this.db.pragma('data_version', { simple: true }));
      if (v === this.dataVersion) return;
      this.dataVersion = v;
      const head = this.stmts.head.get();
      this.report(head?.revision ?? 0, head?.at ?? null);
    } catch (err) {
      // Busy or failing now: the next tick tries again.
      this.log?.debug?.({ err: (err as Error).message, store: this.path }, 'sqlite store poll failed');
    }
  };

  watch(onChange: (revision: number) => void): () => void {
    this.watchers.add(onChange);
    if (!this.pollTimer) {
      this.dataVersion = -1;
      this.pollTimer = setInterval(this.poll, this.pollMs);
      this.pollTimer.unref();
      // Catch up at once with anything written since current() was last read.
      setImmediate(this.poll);
    }
    return () => {
      this.watchers.delete(onChange);
      if (this.watchers.size === 0 && this.pollTimer) {
        clearInterval(this.pollTimer);
        this.pollTimer = undefined;
      }
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = undefined;
    this.watchers.clear();
    // Writes already queued finish (or fail) first; write() refuses new ones now.
    await this.writes.idle();
    const db = this.db;
    this.db = null;
    this.stmts = null;
    db?.close();
  }
}
