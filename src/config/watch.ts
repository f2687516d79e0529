/**
 * Watches a config file for changes (debounced). The directory is watched, not the file:
 * editors save by renaming a new file over the old one, and Kubernetes ConfigMaps swap a
 * symlink, both of which a watch on the old inode misses. Every event re-reads the file and
 * only a changed content triggers a reload. Only events naming the file (or a Kubernetes
 * `..data`-style entry, or none) count: an access log or a cache file written beside the config
 * every 100 ms must neither re-read it ten times a second nor, by resetting the debounce on every
 * event, postpone a real change forever. A slow poll (fs.watchFile) backs up filesystems where
 * inotify says nothing (network mounts, some container volumes).
 */
import { watch, watchFile, unwatchFile, readFile, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';

const lenientUtf8 = new TextDecoder('utf-8');

export interface ConfigWatcher {
  close(): void;
}

export function watchConfig(
  file: string,
  initialText: string,
  onChange: (text: string) => void,
  /** checkNow: read the file once at once (a change made before the watch began, e.g. while the caller started, counts too). */
  opts: { debounceMs?: number; pollMs?: number; onError?: (err: Error) => void; checkNow?: boolean } = {},
): ConfigWatcher {
  const path = resolve(file);
  const debounce = opts.debounceMs ?? 250;
  // The last text itself, not a digest: comparing strings is a memcmp, hashing 0.5 MB on the
  // event loop is milliseconds.
  let last = initialText;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  let reading = false;
  let again = false;

  const check = () => {
    if (closed) return;
    if (reading) {
      again = true;
      return;
    }
    reading = true;
    readFile(path, (err, bytes) => {
      reading = false;
      if (closed) return;
      // (as configText decodes it: a BOM dropped; bytes that are not UTF-8 read as U+FFFD here)
      const text = err ? '' : lenientUtf8.decode(bytes);
      // A file briefly missing (mid-rename) is not a change; the next event will come.
      if (!err && text !== last) {
        last = text;
        onChange(text);
      }
      if (again) {
        again = false;
        schedule();
      }
    });
  };
  /** When the pending check was first asked for: events keep postponing it for at most maxWait. */
  let firstAt = 0;
  const maxWait = Math.max(1000, debounce * 4);
  const schedule = () => {
    const now = Date.now();
    if (timer === undefined) firstAt = now;
    else if (now - firstAt >= maxWait) return;
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = undefined;
      check();
    }, debounce);
    timer.unref();
  };
  const name = basename(path);
  // Editors rename a temp file over it (the event names the file); a ConfigMap swaps `..data`.
  const concerns = (entry: string | Buffer | null) => entry === null || entry === name || String(entry).startsWith('..');

  let watcher: FSWatcher | null = null;
  try {
    watcher = watch(dirname(path), { persistent: false }, (_event, entry) => {
      if (concerns(entry)) schedule();
    });
    watcher.on('error', (err) => opts.onError?.(err));
  } catch (err) {
    opts.onError?.(err as Error);
  }
  const pollMs = opts.pollMs ?? 2000;
  watchFile(path, { persistent: false, interval: pollMs }, schedule);
  if (opts.checkNow) check();

  return {
    close() {
      closed = true;
      clearTimeout(timer);
      watcher?.close();
      unwatchFile(path, schedule);
    },
  };
}

export interface InputsWatcher {
  /** Watches these paths now (the files of the config just applied). */
  set(paths: readonly string[]): void;
  close(): void;
}

/**
 * Watches the files a config refers to (src/config/inputs.ts): upstream CAs and client
 * certificates, OpenAPI documents. They live anywhere (a Secret volume of their own), so each
 * is polled (fs.watchFile: a stat every pollMs, following symlinks, so a Kubernetes `..data`
 * swap or cert-manager's rewrite is a change); any change calls onChange once per debounce.
 */
export function watchInputs(onChange: () => void, opts: { pollMs?: number; debounceMs?: number } = {}): InputsWatcher {
  const pollMs = opts.pollMs ?? 2000;
  const debounce = opts.debounceMs ?? 250;
  let watched = new Set<string>();
  let timer: NodeJS.Timeout | undefined;
  const changed = (curr: { mtimeMs: number; ino: number; size: number }, prev: { mtimeMs: number; ino: number; size: number }) => {
    if (curr.mtimeMs === prev.mtimeMs && curr.ino === prev.ino && curr.size === prev.size) return;
    clearTimeout(timer);
    timer = setTimeout(onChange, debounce);
    timer.unref();
  };
  return {
    set(paths) {
      const next = new Set(paths);
      for (const p of watched) if (!next.has(p)) unwatchFile(p, changed);
      for (const p of next) if (!watched.has(p)) watchFile(p, { persistent: false, interval: pollMs }, changed);
      watched = next;
    },
    close() {
      clearTimeout(timer);
      for (const p of watched) unwatchFile(p, changed);
      watched.clear();
    },
  };
}
