/**
 * The files a config refers to (upstream TLS material, OpenAPI documents, KEDA's TLS files),
 * read while it compiles. Their digests are part of the snapshot's hash, so a reload sees a
 * rotated CA or an edited OpenAPI file even when the config text is the same (it was dropped
 * as "config unchanged"); their paths are watched for changes (src/config/watch.ts watchInputs).
 * (The listener's own certificates are the CertStore's: reloaded by its own watch.)
 */
import { createHash } from 'node:crypto';
import { FileRefused, readRegularFile } from '../core/files.js';
import { resolve } from 'node:path';

/** The largest file a config may name (an OpenAPI document, a CA bundle): 64 MiB. */
const MAX_INPUT_BYTES = 64 * 1024 * 1024;

export class ConfigInputs {
  /** Absolute path -> sha256 (hex) of what was read. */
  private readonly files = new Map<string, string>();

  constructor(readonly baseDir: string) {}

  /** A file name of the config, relative to the config file's directory. */
  path(f: string): string {
    return resolve(this.baseDir, f);
  }

  /** Reads a file of the config (throws as readFileSync does; a FileRefused for no regular file or one past 64 MiB), and records it. */
  read(f: string): Buffer {
    const p = this.path(f);
    const b = readRegularFile(p, MAX_INPUT_BYTES);
    this.files.set(p, createHash('sha256').update(b).digest('hex'));
    return b;
  }

  /** Reads a file, or reports `cannot read <f>: <code>` through `fail` and gives undefined. */
  readOr(f: string | undefined, fail: (message: string) => void): Buffer | undefined {
    if (f === undefined) return undefined;
    try {
      return this.read(f);
    } catch (err) {
      fail(err instanceof FileRefused ? `cannot read ${f}: it ${err.message}` : `cannot read ${f}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      return undefined;
    }
  }

  /** What was read, for the snapshot's hash (in a stable order). */
  digest(): string {
    return [...this.files].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([p, d]) => `${p}\0${d}`).join('\n');
  }

  /** The paths read (to watch). */
  paths(): string[] {
    return [...this.files.keys()];
  }
}
