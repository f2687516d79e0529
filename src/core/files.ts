/**
 * Reading a file a config or a setting names, on the event loop, without the ways a path can
 * hang or exhaust the process: a FIFO (its open waits for a writer for ever; opened
 * O_NONBLOCK here, it is refused), a device like /dev/zero (read until memory ran out), a
 * directory, or a file past `max` bytes.
 */
import { closeSync, constants as fsc, fstatSync, openSync, readSync } from 'node:fs';

/** A file past its bound or no regular file: the error says which (code ENOTREG / EFBIG). */
export class FileRefused extends Error {
  constructor(readonly code: 'ENOTREG' | 'EFBIG', message: string) {
    super(message);
  }
}

/** The bytes of a regular file of at most `max` bytes; throws FileRefused, or as openSync does. */
export function readRegularFile(path: string, max: number): Buffer {
  const fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new FileRefused('ENOTREG', 'is not a regular file');
    if (st.size > max) throw new FileRefused('EFBIG', `is larger than ${max} bytes`);
    // (read to the size fstat gave, and one byte more: a file growing meanwhile is cut at max)
    const buf = Buffer.alloc(Math.min(st.size + 1, max + 1));
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, got);
      if (n === 0) break;
      got += n;
    }
    if (got > max) throw new FileRefused('EFBIG', `is larger than ${max} bytes`);
    return buf.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}
