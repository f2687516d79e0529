/**
 * `store: file` (the default with --config): the declarative part of the config file, read-only.
 *
 * current() is the file's document (splitDocument) as revision 1 of this process; every time
 * the file's document changes (sha256 of its JSON) the revision goes up by one — a change of a
 * node-local key or of comments and formatting is not a new revision. The text is re-read on
 * every current() (a read and a string compare; parsed again only when it changed); an invalid
 * file (with `check`: one the gateway would not reload, e.g. a duplicate name) keeps the last
 * good revision (logged), like a rejected reload. Revisions are those
 * seen by this process (history() lists them, the last `keep` are kept); write() answers
 * StoreReadOnly (HTTP 409). watch() watches the file (src/config/watch.ts).
 */
import { readFile, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import type { Logger } from '../../core/log.js';
import { fastValidConfig, parseConfigText } from '../load.js';
import { watchConfig, type ConfigWatcher } from '../watch.js';
import { rawDocument } from './document.js';
import {
  StoreReadOnly, StoreUnavailable,
  type ConfigDocument, type ConfigStore, type Revision, type StoredConfig,
} from './types.js';

export interface FileStoreOptions {
  /** The --config file. */
  file: string;
  /** Revisions remembered (history). Default 100. */
  keep?: number;
  /** Watch debounce (default 250 ms) and poll (2 s), as for the gateway's own file watch. */
  debounceMs?: number;
  pollMs?: number;
  log?: Logger;
  /**
   * Throws (a ConfigError) when the file's text would not run: the gateway rejects such a
   * reload, so the store keeps its last good revision too (default: parse and schema only).
   */
  check?(text: string): void;
}

export class FileStore implements ConfigStore {
  readonly kind = 'file' as const;
  readonly file: string;
  private readonly keep: number;
  private readonly log: Logger | undefined;
  private readonly debounceMs: number | undefined;
  private readonly pollMs: number | undefined;
  private readonly check: ((text: string) => void) | undefined;
  /** The text last refused (not checked again until it changes). */
  private rejectedText: string | undefined;
  private lastText: string | undefined;
  private lastHash: string | undefined;
  private readonly seen: StoredConfig[] = [];
  private reading: Promise<StoredConfig> | null = null;
  private watcher: ConfigWatcher | null = null;
  private readonly watchers = new Set<(revision: number) => void>();
  private reported = 0;

  constructor(opts: FileStoreOptions) {
    this.file = opts.file;
    this.keep = Math.max(1, opts.keep ?? 100);
    this.log = opts.log;
    this.debounceMs = opts.debounceMs;
    this.pollMs = opts.pollMs;
    this.check = opts.check;
  }

  async open(): Promise<void> {
    await this.current();
  }

  /** Never null: a file always has a document (perhaps empty). */
  current(): Promise<StoredConfig> {
    // One read at a time: concurrent callers share it (and so the revision it makes).
    if (!this.reading) this.reading = this.read().finally(() => { this.reading = null; });
    return this.reading;
  }

  private async read(): Promise<StoredConfig> {
    const last = this.seen[this.seen.length - 1];
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if (last) return last; // mid-rename, or gone for a moment: the last one stands
      throw new StoreUnavailable(`cannot read the config file ${this.file}: ${(err as Error).message}`, err);
    }
    if (last && (text === this.lastText || text === this.rejectedText)) return last;
    let document: ConfigDocument;
    try {
      // valid (and, with `check`, runnable), or the last good one stands
      if (this.check) this.check(text);
      else if (!fastValidConfig(text)) parseConfigText(text, { file: this.file });
      document = rawDocument(text); // as written: `${VAR}` stays a reference
    } catch (err) {
      if (last) {
        this.rejectedText = text;
        this.log?.warn({ file: this.file, err: (err as Error).message }, 'config file invalid: the store keeps its last good revision');
        return last;
      }
      throw new StoreUnavailable(`the config file ${this.file} is invalid: ${(err as Error).message}`, err);
    }
    this.lastText = text;
    const json = JSON.stringify(document);
    const hash = createHash('sha256').update(json).digest('hex');
    if (last && hash === this.lastHash) return last;
    this.lastHash = hash;
    const mtime = await stat(this.file).then((s) => s.mtime, () => new Date());
    const stored: StoredConfig = {
      revision: (last?.revision ?? 0) + 1,
      at: mtime.toISOString(),
      actor: 'file',
      action: last ? `changed ${this.file}` : `loaded ${this.file}`,
      document: JSON.parse(json) as ConfigDocument,
    };
    this.seen.push(stored);
    if (this.seen.length > this.keep) this.seen.splice(0, this.seen.length - this.keep);
    return stored;
  }

  async write(): Promise<StoredConfig> {
    throw new StoreReadOnly(`the config is the file ${this.file}; use store: sqlite:... for admin writes`);
  }

  async revision(n: number): Promise<StoredConfig | null> {
    return this.seen.find((s) => s.revision === n) ?? null;
  }

  async history(limit: number, before?: number): Promise<Revision[]> {
    const out: Revision[] = [];
    for (let i = this.seen.length - 1; i >= 0 && out.length < Math.max(0, Math.floor(limit)); i--) {
      const s = this.seen[i]!;
      if (before !== undefined && s.revision >= before) continue;
      out.push({ revision: s.revision, at: s.at, actor: s.actor, action: s.action });
    }
    return out;
  }

  watch(onChange: (revision: number) => void): () => void {
    this.watchers.add(onChange);
    if (!this.watcher) {
      this.reported = this.seen[this.seen.length - 1]?.revision ?? 0;
      const check = () => {
        this.current().then((s) => {
          if (s.revision <= this.reported) return;
          this.reported = s.revision;
          for (const w of [...this.watchers]) {
            try {
              w(s.revision);
            } catch (err) {
              this.log?.error({ err: (err as Error).message }, 'config store watcher threw');
            }
          }
        }, (err: Error) => this.log?.warn({ file: this.file, err: err.message }, 'config file unreadable'));
      };
      this.watcher = watchConfig(this.file, this.lastText ?? '', check, {
        ...(this.debounceMs !== undefined ? { debounceMs: this.debounceMs } : {}),
        ...(this.pollMs !== undefined ? { pollMs: this.pollMs } : {}),
        onError: (err) => this.log?.warn({ file: this.file, err: err.message }, 'cannot watch the config file'),
      });
      // Changes between the last current() and now.
      if (this.lastText !== undefined) check();
    }
    return () => {
      this.watchers.delete(onChange);
      if (this.watchers.size === 0) {
        this.watcher?.close();
        this.watcher = null;
      }
    };
  }

  async close(): Promise<void> {
    this.watchers.clear();
    this.watcher?.close();
    this.watcher = null;
  }
}
