/**
 * Where the declarative config lives (issue 9): one interface, three stores.
 *
 * - `file`: the --config file (watched); the admin API can read it, writes answer 409.
 * - `sqlite:PATH`: embedded (better-sqlite3), the default when the admin API writes.
 * - `postgres://...`: shared by the nodes of a cluster (LISTEN/NOTIFY plus a periodic resync).
 *
 * A store holds the *document*: the declarative part of the config file as a JSON object —
 * `services` (with their routes), `routes` (composing), `consumers`, `plugins`, `plans` and the
 * other keys that are not node-local. Node-local keys (listen, admin, tls, workers, store,
 * redis, access_log, limits...) always come from the --config file and are never stored.
 * Every write is one transaction that produces a new revision (1, 2, 3...; never reused) and
 * one audit record. Callers validate a document before writing it (the same schema and compile
 * as the file, so errors name the field); a store only keeps what it is given.
 */

/** The declarative config, as in the file (JSON-compatible). */
export type ConfigDocument = Record<string, unknown>;

export interface Revision {
  revision: number;
  /** ISO 8601. */
  at: string;
  /** Who wrote it (the admin token's name / role, `seed`, `rollback`...). */
  actor: string;
  /** What was done, e.g. `POST /api/services`, `PUT /api/config`, `rollback to 12`. */
  action: string;
}

export interface StoredConfig extends Revision {
  document: ConfigDocument;
}

/** A write lost a race: the store moved past `expected` (HTTP 412 for If-Match). */
export class RevisionConflict extends Error {
  constructor(readonly expected: number, readonly current: number) {
    super(`the config is at revision ${current}, not ${expected}`);
    this.name = 'RevisionConflict';
  }
}

/** The store cannot be reached (admin writes answer 503; the gateway serves its last good snapshot). */
export class StoreUnavailable extends Error {
  constructor(message: string, override readonly cause?: unknown) {
    super(message);
    this.name = 'StoreUnavailable';
  }
}

/** The store does not take writes (file): HTTP 409. */
export class StoreReadOnly extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoreReadOnly';
  }
}

/** Who writes and what (the audit log's line). */
export interface WriteMeta {
  actor: string;
  action: string;
}

/**
 * A write's change: the current document (null: empty store) -> the next one; throws to abort.
 * `revision` is the head it is given (0: empty store), locked while the change runs: a
 * precondition checked against it holds for the document written.
 */
export type DocumentChange = (current: ConfigDocument | null, revision: number) => ConfigDocument | Promise<ConfigDocument>;

export interface ConfigStore {
  readonly kind: 'file' | 'sqlite' | 'postgres';
  /** Creates tables / runs migrations (safe when several nodes start at once). */
  open(): Promise<void>;
  /** The latest revision, or null when the store is empty. */
  current(): Promise<StoredConfig | null>;
  /**
   * Writes a new revision atomically: `change` gets the current document (null: empty store)
   * and returns the next one (or throws to abort, nothing written). With `expected`, the write
   * fails with RevisionConflict unless the store is still at that revision.
   */
  write(meta: WriteMeta, change: DocumentChange, expected?: number): Promise<StoredConfig>;
  /** One stored revision's document, or null when unknown. */
  revision(n: number): Promise<StoredConfig | null>;
  /** Revisions, newest first (the audit log): at most `limit`, older than `before` when given. */
  history(limit: number, before?: number): Promise<Revision[]>;
  /**
   * Calls `onChange` with the new revision number when another writer (another node) changed
   * the store; returns the unsubscribe function. Local writes may be reported too. The number
   * may be lower than the last one reported, or the same: the store went back (restored from
   * an older backup, a failover to a replica that was behind) and its head is another revision
   * (a revision is its number and its `at`; the number alone is reused after a rewind).
   * `onHealth`, where the store can lose its server (postgres), is called after each of its
   * checks while watching: the error when the store cannot be reached, null when it answered.
   */
  watch(onChange: (revision: number) => void, onHealth?: (error: string | null) => void): () => void;
  close(): Promise<void>;
}
