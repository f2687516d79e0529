/**
 * Reading a whole request body into memory, bounded: for plugins that work on the body
 * (transforms, validation) and compositions whose templates read it. Past the cap (or a declared
 * Content-Length over it) the read fails with a ProblemError payload-too-large, answered 413
 * with Connection: close, so the rest of the body is never read.
 */
import type { IncomingMessage } from 'node:http';
import { ProblemError } from '../core/problem.js';

const EMPTY = Buffer.alloc(0);

export interface BodySource {
  /** The request has a body (Content-Length > 0, chunked, or an HTTP/2 stream with data). */
  hasBody: boolean;
  /** Declared Content-Length, or -1. */
  declared: number;
  /** Called once before the first read (100 Continue, the body timeout). */
  begin(): void;
}

/** The client gave up on its request body (aborted, reset, broken connection): not the gateway's failure. */
export class ClientAbortedError extends Error {
  constructor(cause?: Error) {
    super('the client aborted the request body', cause ? { cause } : undefined);
    this.name = 'ClientAbortedError';
  }
}

export function readWholeBody(req: IncomingMessage, src: BodySource, max: number): Promise<Buffer> {
  if (!src.hasBody) return Promise.resolve(EMPTY);
  if (src.declared > max) return Promise.reject(new ProblemError('payload-too-large', `the request body is larger than ${max} bytes`));
  src.begin();
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('aborted', onAborted);
    };
    const onData = (c: Buffer) => {
      size += c.length;
      if (size > max) {
        done();
        req.pause();
        reject(new ProblemError('payload-too-large', `the request body is larger than ${max} bytes`));
        return;
      }
      chunks.push(c);
    };
    const onEnd = () => {
      done();
      resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    // (an IncomingMessage errs only when its connection does: ECONNRESET, 'aborted')
    const onError = (err: Error) => {
      done();
      reject(new ClientAbortedError(err));
    };
    const onAborted = () => {
      done();
      reject(new ClientAbortedError());
    };
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', onError);
    req.once('aborted', onAborted);
  });
}
