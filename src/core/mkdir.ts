/**
 * `mkdirSync(dir, { recursive: true })` with the real reason when it fails. Node's recursive
 * mkdir, when making a directory fails with an error it does not expect (EROFS on a read-only
 * filesystem, ENOSPC, EDQUOT, EIO...), looks the directory up and reports that lookup's ENOENT
 * instead ("ENOENT: no such file or directory, mkdir '/var/lib/turnpike'" on a read-only root):
 * the first missing directory is then made on its own, which fails with the real errno and
 * names it ("EROFS: read-only file system, mkdir '/var/lib/turnpike'").
 */
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

export function makeDirectory(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
    return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    let missing = resolve(dir);
    for (let up = dirname(missing); up !== missing && !existsSync(up); up = dirname(missing)) missing = up;
    // (throws the real error; should it succeed now, the rest is made as usual)
    mkdirSync(missing);
    mkdirSync(dir, { recursive: true });
  }
}
