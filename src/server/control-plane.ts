/**
 * A node whose declarative config lives in a store (`store: sqlite:...` or `postgres://...`):
 * opens the store (seeding an empty one from the --config file's declarative part), gives the
 * CLI the config text to run (the file's node-local keys + the store's document, see
 * src/admin/validate.ts), follows the store's revisions (watch: LISTEN/NOTIFY plus the periodic
 * resync) and applies each one through the CLI's serialized reload, keeps the last applied
 * revision on local disk (postgres) and serves it when the store is down at start, and answers
 * the admin API (`/api/`) and the `config` part of `/status`.
 *
 * PostgreSQL down at start: the disk snapshot is served and the store is retried in the
 * background (then the node catches up); without a snapshot, open() waits for the store (the
 * node has no listeners: not ready) until it answers or the process is stopped.
 * PostgreSQL down later: the node keeps serving what it runs; admin writes answer 503
 * (StoreUnavailable); the store's own reconnect and resync bring the node up to date. /status
 * says `store_reachable: false` (and `store_error`) from the store's first failed check (its
 * resync, run at once when its LISTEN connection drops) until one succeeds.
 */
import { NODE_ID } from '../core/node-id.js';
import { dirname, resolve } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import type { Logger } from '../core/log.js';
import type { LoadedConfig } from '../config/load.js';
import {
  ConfigSnapshot, FileStore, openStore, rawDocument, RevisionConflict, StoreUnavailable,
  type ConfigStore, type Revision, type StoredConfig,
} from '../config/stores/index.js';
import { createApiHandler, type ApiDeps, type ApiHandler } from '../admin/api.js';
import type { ApiToken, AuthFailures } from '../admin/auth.js';
import type { ControlView } from './gateway.js';
import { checkConfigText, documentValidator, effectiveText, nodePart } from '../admin/validate.js';
import type { AccountBackend } from '../portal/accounts.js';
import { hashPlainPasswords, withKnownHashes } from '../admin/secrets.js';

export interface ControlPlaneOptions {
  /** The --config file. */
  file: string;
  /** That file, parsed and validated. */
  loaded: LoadedConfig;
  /** The store: sqlite:PATH or postgres://... (the file's `store:`, or --store). */
  setting: string;
  log: Logger;
  /** Runs a config text through the node's (serialized) reload; resolves true when it runs. */
  apply(text: string, why: string): Promise<boolean>;
  /** Retry of an unreachable store (default 2 s). */
  retryMs?: number;
  /** First retry of a rejected revision (default 15 s; doubling, at most REJECTED_RETRY_MAX_MS). */
  rejectedRetryMs?: number;
  /** Aborted: stop waiting for the store (SIGTERM while not ready). */
  signal?: AbortSignal;
  /** Store tuning (tests). */
  postgres?: { resyncMs?: number; connectTimeoutMs?: number; statementTimeoutMs?: number; name?: string };
}


/** The longest wait between two tries of a rejected revision. */
const REJECTED_RETRY_MAX_MS = 10 * 60_000;

/** The same revision: the same number written at the same time (the number alone comes back after a rewind). */
const sameRevision = (a: Pick<Revision, 'revision' | 'at'> | null | undefined, b: Pick<Revision, 'revision' | 'at'> | null | undefined): boolean =>
  !!a && !!b && a.revision === b.revision && a.at === b.at;

const sleep = (ms: number, signal?: AbortSignal) => new Promise<void>((r) => {
  const done = () => {
    clearTimeout(t);
    signal?.removeEventListener('abort', done);
    r();
  };
  const t = setTimeout(done, ms);
  signal?.addEventListener('abort', done, { once: true });
});

export class ControlPlane {
  readonly nodeId = NODE_ID;
  readonly kind: 'sqlite' | 'postgres';
  /** Null while the store has not been reached (serving the disk snapshot). */
  store: ConfigStore | null = null;
  /** The revision this node runs (or, while `applying`, the one being applied: the config text is built from it). */
  served: StoredConfig | null = null;
  /** While refresh() applies a revision: the one that still runs (what /status reports). */
  private applying: { runs: StoredConfig | null } | null = null;
  private servedAt = 0;
  private source: 'store' | 'snapshot' = 'store';
  private rejected: { revision: number; at: string; error: string } | null = null;
  /**
   * A rejected revision is tried again (backed off: 15 s doubling to 10 min) while it is the
   * head: what it lacked may come — a file a Secret or ConfigMap mount brings a minute after the
   * NOTIFY (kubelet syncs them lazily), a DNS name not yet published. Nothing else would: the
   * store reports each revision once.
   */
  private rejectedRetry: { timer: NodeJS.Timeout; delay: number } | null = null;
  /** The last failure to reach the store (opening it, reading its head); null since it answered. */
  private storeError: string | null = null;
  /** What the store's own checks say (watch's onHealth: the postgres resync): null while reachable. */
  private watchError: string | null = null;
  /**
   * A change was announced but reading the head failed: read it again once the store answers
   * (the store reports each revision once, so nothing else would bring this node up to it).
   */
  private unread = false;
  private node: Record<string, unknown>;
  /** The file content last warned about (warnIfFileDiffers). */
  private fileWarned: string | null = null;
  private readonly snapshot: ConfigSnapshot | null;
  private readonly setting: string;
  private unwatch: (() => void) | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly stop = new AbortController();
  /** Resolved by run() (or close()): a write made before the node follows its store is applied once it does. */
  private started: () => void = () => {};
  private readonly whenStarted = new Promise<void>((r) => { this.started = r; });

  private constructor(private readonly opts: ControlPlaneOptions) {
    this.setting = opts.setting;
    this.kind = this.setting.startsWith('sqlite:') ? 'sqlite' : 'postgres';
    this.node = nodePart(opts.loaded.config as Record<string, unknown>);
    const snap = opts.loaded.config.store_snapshot ?? '.turnpike/config-snapshot.json';
    this.snapshot = this.kind === 'postgres' ? new ConfigSnapshot(resolve(dirname(resolve(opts.file)), snap), opts.log) : null;
    opts.signal?.addEventListener('abort', () => this.stop.abort(), { once: true });
  }

  /**
   * Opens the store (or, for postgres that cannot be reached, the disk snapshot) and the
   * document to serve. Resolves when there is a config to run; rejects when the store setting
   * is unusable, or when stopped while waiting.
   */
  static async open(opts: ControlPlaneOptions): Promise<ControlPlane> {
    const cp = new ControlPlane(opts);
    const { log } = opts;
    const retryMs = opts.retryMs ?? 2000;
    for (let attempt = 0; ; attempt++) {
      try {
        await cp.connect();
        return cp;
      } catch (err) {
        if (cp.kind !== 'postgres' || !(err instanceof StoreUnavailable)) throw err;
        // (said again when the reason changes: the store stopped refusing connections and now
        // refuses the password, the database...; the first reason is not the one to fix then)
        if (attempt > 0 && err.message !== cp.storeError) log.warn({ err: err.message, retry_ms: retryMs }, 'the config store is still unreachable, now for another reason: not ready, retrying');
        cp.storeError = err.message;
        if (attempt === 0) {
          const saved = await cp.snapshot!.load();
          if (saved) {
            cp.served = saved;
            cp.servedAt = Date.now();
            cp.source = 'snapshot';
            log.warn({ err: err.message, revision: saved.revision, written_at: saved.at, snapshot: cp.snapshot!.path }, 'the config store is unreachable: serving the disk snapshot; retrying the store in the background');
            return cp;
          }
          log.error({ err: err.message, retry_ms: retryMs }, 'the config store is unreachable and this node has no disk snapshot: not ready, retrying');
        }
        await sleep(retryMs, cp.stop.signal);
        if (cp.stop.signal.aborted) throw new Error('stopped while waiting for the config store');
      }
    }
  }

  /** Opens the store, seeds it when empty, and makes its head the revision to serve. */
  private async connect(): Promise<void> {
    const { file, log } = this.opts;
    const store = await openStore(this.setting, {
      baseDir: dirname(resolve(file)), file, log,
      postgres: { name: this.nodeId, ...this.opts.postgres },
    });
    try {
      await this.adopt(store);
    } catch (err) {
      await store.close().catch(() => undefined);
      throw err;
    }
  }

  private async adopt(store: ConfigStore): Promise<void> {
    const { loaded, file, log } = this.opts;
    if (this.closed) throw new StoreUnavailable('closing');
    let head = await store.current();
    const fromFile = rawDocument(loaded.text);
    if (head !== null) {
      // (a plain basic-auth password of the file matches the store's hash of it: checked off the
      // event loop once here, remembered for the comparisons after a file change)
      if (!isDeepStrictEqual(fromFile, head.document)) await hashPlainPasswords(structuredClone(fromFile), head.document as Record<string, unknown>, { reuseOnly: true });
      this.warnIfFileDiffers(fromFile, head);
    }
    if (head === null) {
      // A node serving its disk snapshot (the store was unreachable at its start) has run a
      // store before: an empty one now is that store lost or not restored yet (a new database).
      // Seeded from the file's part — at best the cluster's first config, often nothing — every
      // node would drop what it runs for it; the snapshot is the last config known good.
      const snapshot = this.source === 'snapshot' && this.served !== null ? this.served : null;
      const document = structuredClone(snapshot?.document ?? fromFile);
      // The file's plain basic-auth passwords are stored as scrypt hashes (hashed on the thread pool).
      await hashPlainPasswords(document as Record<string, unknown>, null);
      const action = snapshot ? `seed from the disk snapshot of revision ${snapshot.revision}` : `seed from ${file}`;
      try {
        head = await store.write({ actor: 'seed', action }, () => document, 0);
        log.info({ revision: head.revision, store: store.kind, ...(snapshot ? { snapshot_revision: snapshot.revision } : {}) }, snapshot ? 'the config store was empty: seeded from the disk snapshot this node serves' : 'the config store was empty: seeded from the config file');
      } catch (err) {
        if (!(err instanceof RevisionConflict)) throw err;
        head = await store.current(); // another node seeded it first
      }
    }
    this.store = store;
    this.storeError = null;
    if (this.served === null) {
      this.served = head;
      this.servedAt = Date.now();
      this.source = 'store';
    }
  }

  /**
   * With a store, the file's declarative part (services, consumers...) only seeds an empty
   * store: an edit there is not served. Said once per distinct file content, so an operator who
   * edits the file sees why nothing changed (and how to apply it).
   */
  private warnIfFileDiffers(fromFile: Record<string, unknown>, head: StoredConfig): void {
    if (isDeepStrictEqual(fromFile, head.document)) return;
    // (the store holds the hash of a plain password of the file: the same, when this process made or checked it)
    if (isDeepStrictEqual(withKnownHashes(fromFile, head.document as Record<string, unknown>), head.document)) return;
    const key = JSON.stringify(fromFile);
    if (key === this.fileWarned) return;
    this.fileWarned = key;
    // (an empty declarative part — a file with node keys only — is the usual way to run on a store)
    if (Object.keys(fromFile).length === 0) return;
    this.opts.log.warn({ file: this.opts.file, revision: head.revision },
      'the config file\'s services/consumers/plugins differ from the config store and are NOT served (the store is the truth; the file only seeds an empty store): apply the file with `turnpike config apply FILE` or the admin API');
  }

  /** The config text this node runs (the served document with the file's node-local keys). */
  text(): string {
    return effectiveText(this.node, this.served?.document ?? {});
  }

  /** The --config file changed (validated): the text to run with its node-local keys, and `adopt` once that ran. */
  withFile(loaded: LoadedConfig): { text: string; adopt(): void } {
    const node = nodePart(loaded.config as Record<string, unknown>);
    if (this.served !== null) {
      try {
        this.warnIfFileDiffers(rawDocument(loaded.text), this.served);
      } catch {
        /* (validated already: a document it cannot split is not news) */
      }
    }
    return { text: effectiveText(node, this.served?.document ?? {}), adopt: () => { this.node = node; } };
  }

  /**
   * At start, the store's head cannot run on this node: serve the disk snapshot instead (the
   * head is reported as rejected until SIGHUP or a newer revision). False without a snapshot.
   */
  async fallBack(error: string): Promise<boolean> {
    const saved = await this.snapshot?.load();
    if (!saved || sameRevision(saved, this.served)) return false;
    this.rejected = { revision: this.served!.revision, at: this.served!.at, error };
    this.opts.log.error({ revision: this.served!.revision, err: error, snapshot_revision: saved.revision }, 'the config store\'s revision cannot run on this node: serving the disk snapshot');
    this.served = saved;
    this.source = 'snapshot';
    return true;
  }

  /** After the gateway started: follow the store (and, from a snapshot, keep trying to reach it). */
  run(): void {
    this.started();
    if (this.store) this.follow();
    else void this.reconnectLoop();
  }

  private following = false;

  private follow(): void {
    if (this.closed || !this.store) return;
    this.following = true;
    this.unwatch = this.store.watch(() => void this.refresh(), (error) => {
      this.watchError = error;
      if (error === null) {
        this.storeError = null; // (it answered: an older failed read is old news)
        if (this.unread) void this.refresh();
      }
    });
    if (this.snapshot && this.served && this.source === 'store') void this.snapshot.save(this.served);
    void this.refresh(); // whatever was written between open() and now
  }

  private async reconnectLoop(): Promise<void> {
    const retryMs = this.opts.retryMs ?? 2000;
    while (!this.closed && !this.store) {
      await sleep(retryMs, this.stop.signal);
      if (this.closed) return;
      try {
        await this.connect();
        this.opts.log.info({ store: this.kind }, 'the config store is reachable again: catching up');
        this.follow();
      } catch (err) {
        this.storeError = (err as Error).message;
      }
    }
  }

  /**
   * Applies the store's head if this node does not run it yet (a lower one too: the store went
   * back, restored from a backup, and is the truth). Serialized; resolves when done
   * (the admin API awaits it after a write, so the writer reads its write on this node).
   */
  refresh(retryRejected = false): Promise<unknown> {
    // (SIGHUP, or the backed-off retry: try a rejected revision again, what it lacked may be there now)
    const run = async () => {
      // Before run() the node is starting (its listeners may already serve): a write made then
      // (admin API, portal) is applied once it follows the store, and its caller waits for that.
      if (!this.following && !this.closed) await this.whenStarted;
      if (this.closed || !this.store || !this.following) return;
      let head: StoredConfig | null;
      try {
        head = await this.store.current();
        this.storeError = null;
        this.unread = false;
      } catch (err) {
        this.storeError = (err as Error).message;
        this.unread = true;
        return;
      }
      // A revision is its number and its time: a store restored from an older backup (or a
      // replica that was behind) writes numbers this node already ran, with other documents.
      if (!head || (sameRevision(head, this.served) && this.source === 'store')) return;
      if (sameRevision(head, this.rejected) && !retryRejected) return;
      const before = this.served;
      this.served = head;
      this.applying = { runs: before };
      const ok = await this.opts.apply(this.text(), `config store revision ${head.revision}`).catch(() => false);
      this.applying = null;
      if (ok) {
        this.servedAt = Date.now();
        this.source = 'store';
        this.rejected = null;
        this.retryRejectedLater(null);
        if (this.snapshot) void this.snapshot.save(head);
      } else {
        this.served = before;
        const again = sameRevision(head, this.rejected);
        this.rejected = { revision: head.revision, at: head.at, error: 'the reload was rejected (see the log)' };
        this.retryRejectedLater(again ? Math.min(REJECTED_RETRY_MAX_MS, (this.rejectedRetry?.delay ?? 0) * 2) : this.opts.rejectedRetryMs ?? 15_000);
      }
    };
    this.chain = this.chain.then(run, run);
    return this.chain;
  }

  /** A store that answers StoreUnavailable while this node has not reached it. */
  private facade(): ConfigStore {
    const get = (): ConfigStore => {
      if (this.store) return this.store;
      throw new StoreUnavailable(`the ${this.kind} store has not been reached since this node started${this.storeError ? ` (${this.storeError})` : ''}`);
    };
    return {
      kind: this.kind,
      open: async () => {},
      current: async () => get().current(),
      write: async (meta, change, expected) => get().write(meta, change, expected),
      revision: async (n) => get().revision(n),
      history: async (limit: number, before?: number): Promise<Revision[]> => get().history(limit, before),
      watch: () => () => {},
      close: async () => {},
    };
  }

  /** Developer accounts (src/portal/accounts.ts) live in this node's store. */
  accountBackend(): AccountBackend {
    return {
      document: () => (this.served?.document as Record<string, unknown> | undefined) ?? null,
      readOnly: () => (this.store ? null : { reason: `the ${this.kind} config store cannot be reached right now`, transient: true }),
      edit: (actor, action, change) => this.edit({ actor, action }, change),
    };
  }

  /**
   * One write of the store outside the admin API: `change` edits a copy of the head, the
   * result is validated as this node would run it, written (tried again when another write
   * won the race), and applied on this node before it resolves.
   */
  private async edit(meta: { actor: string; action: string }, change: (doc: Record<string, unknown>) => void): Promise<void> {
    if (!this.store) throw new StoreUnavailable(`the ${this.kind} store cannot be reached`);
    const validate = documentValidator(this.node, { file: this.opts.file });
    for (let attempt = 0; ; attempt++) {
      try {
        await this.store.write(meta, (cur) => {
          const doc = structuredClone((cur ?? {}) as Record<string, unknown>);
          change(doc);
          const r = validate(structuredClone(doc));
          if (!r.ok) throw Object.assign(new Error('the change does not validate'), { issues: r.errors });
          return doc;
        });
        break;
      } catch (err) {
        if (!(err instanceof RevisionConflict) || attempt >= 8) throw err;
        await sleep(2 + Math.random() * 10 * (attempt + 1));
      }
    }
    await this.refresh();
  }

  /** The `/api/` handler of this node's admin listener. */
  api(tokens: () => readonly ApiToken[], sessionCaller?: ApiDeps['sessionCaller'], failures?: AuthFailures): ApiHandler {
    return createApiHandler({
      ...(sessionCaller ? { sessionCaller } : {}),
      ...(failures ? { failures } : {}),
      store: this.facade(),
      validate: (document) => documentValidator(this.node, { file: this.opts.file })(document),
      tokens,
      log: this.opts.log,
      onWritten: () => this.refresh(),
    });
  }

  /** The `config` member of /status. */
  status(): Record<string, unknown> {
    const s = this.applying ? this.applying.runs : this.served;
    const error = this.watchError ?? this.storeError;
    return {
      store: this.kind,
      store_reachable: this.store !== null && error === null,
      ...(error !== null ? { store_error: error } : {}),
      source: this.source,
      revision: s?.revision ?? null,
      written_at: s?.at ?? null,
      written_by: s?.actor ?? null,
      applied_at: this.servedAt ? new Date(this.servedAt).toISOString() : null,
      age_seconds: s ? Math.max(0, Math.round((Date.now() - Date.parse(s.at)) / 1000)) : null,
      ...(this.rejected ? { rejected_revision: this.rejected.revision } : {}),
    };
  }

  /** Arms the next try of the rejected revision in `delay` ms (null: none, it runs or was replaced). */
  private retryRejectedLater(delay: number | null): void {
    if (this.rejectedRetry) clearTimeout(this.rejectedRetry.timer);
    this.rejectedRetry = null;
    if (delay === null || this.closed) return;
    const timer = setTimeout(() => void this.refresh(true), delay);
    timer.unref();
    this.rejectedRetry = { timer, delay };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.retryRejectedLater(null);
    this.started();
    this.stop.abort();
    this.unwatch?.();
    await this.chain.catch(() => undefined);
    await this.store?.close().catch(() => undefined);
  }
}

/**
 * A node without a store (`store: file`, the default): the admin API reads the file's document
 * (writes answer 409: edit the file, or use a sqlite/postgres store).
 */
export function fileControl(file: string, loaded: LoadedConfig, log: Logger): ControlView {
  // a file the gateway would not reload (a duplicate name, an unknown plan...) is not shown as the config
  const store = new FileStore({ file: resolve(file), log, check: (text) => checkConfigText(text, { file }) });
  const node = nodePart(loaded.config as Record<string, unknown>);
  /** The last reload of the file, when it was rejected (until one is applied): /status says it, not only the log. */
  let rejected: { at: string; trigger: string; error: string } | null = null;
  return {
    reloaded: (trigger, error) => {
      rejected = error === null ? null : { at: new Date().toISOString(), trigger, error };
    },
    api: (tokens, sessionCaller, failures) => createApiHandler({ store, validate: documentValidator(node, { file }), tokens, log, ...(sessionCaller ? { sessionCaller } : {}), ...(failures ? { failures } : {}) }),
    status: () => ({ store: 'file', file: resolve(file), ...(rejected ? { reload_rejected: rejected } : {}) }),
    accountBackend: () => ({
      document: () => null,
      readOnly: () => ({ reason: 'developer accounts need a sqlite or postgres config store (store: sqlite:./turnpike.db); this node reads its config from a file', transient: false }),
      edit: () => Promise.reject(new Error('read-only config')),
    }),
  };
}
