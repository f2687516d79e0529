/**
 * Five corrections to undici 7's HTTP/2 client (lib/dispatcher/client-h2.js), made on each
 * ClientHttp2Stream it opens on an upstream connection of ours:
 *
 * 1. An abort resets the stream with CANCEL. undici aborts a stream with `stream.close()`, which
 *    sends RST_STREAM NO_ERROR; RFC 9113 §8.7 has a client that no longer wants the response
 *    send CANCEL. A node:http2 server takes NO_ERROR for "done sending" and waits for its own
 *    writes to finish: a response held back by flow control never does, the stream stays open
 *    and counts against its SETTINGS_MAX_CONCURRENT_STREAMS until every new stream is refused.
 *    `close()` without a code now sends CANCEL (a code given is kept).
 * 2. The body comes whole. undici ends the response at the stream's 'trailers' event, and
 *    stops listening to 'data' at 'trailers' and 'aborted': body data still buffered in a
 *    paused stream (a client that reads slowly) was dropped, and the response ended as
 *    complete. Those events are held until the stream's readable side has ended, so an HTTP/2
 *    upstream can be paused like an HTTP/1.1 one (forward.ts: backpressure, bounded by the
 *    stream's flow-control window).
 * 3. An empty request body ends the stream: undici writes nothing for a body whose length it
 *    finds to be 0 (content-length: 0) and never ends the stream's writable side.
 * 4. A body cut short is not complete. Only END_STREAM ends an HTTP/2 response (RFC 9113 §8.1);
 *    node:http2 ends the readable side of a stream reset with NO_ERROR or CANCEL (RST_STREAM)
 *    as if END_STREAM had come, and undici reports the response complete: a body without
 *    Content-Length was forwarded as whole (HTTP/1.1 client: the terminating 0-chunk; HTTP/2:
 *    END_STREAM) and could be cached. Such a stream now fails with H2_STREAM_CUT instead of
 *    ending. (A reset with another code, a GOAWAY or a dead connection already failed it.)
 *
 * 5. A GOAWAY that says no open stream was processed (its last-stream-id below all of them: an
 *    idle connection the upstream closed as a request went out) fails the request with an error
 *    marked so (unprocessedStream): forward.ts sends it again as it does after a connect error.
 *    undici fails the session's oldest request on any GOAWAY, with a plain SocketError.
 *
 * 6. A graceful GOAWAY (NO_ERROR, its last-stream-id covering every open stream: a server
 *    shutting down, RFC 9113 §6.8) lets the streams in flight finish. undici destroyed the
 *    connection on any GOAWAY, cutting every response still coming (a rolling deploy of an
 *    HTTP/2 upstream broke its long answers and gRPC streams). Its client is detached from the
 *    session instead, as its GOAWAY handler starts to (new requests go on a new connection),
 *    the session's and socket's undici listeners pointed at an inert stand-in; node:http2 closes
 *    the session once its streams are done. (A GOAWAY that leaves a stream unprocessed, or with
 *    an error code — node:http2 then destroys the session itself — goes to undici as before.)
 *
 * undici offers no option for any of these, and hands its handlers neither the stream nor the
 * session. The session is reached where undici stores it on the socket our connector returns
 * (its `kHTTP2Session` symbol, from undici/lib/core/symbols.js): an accessor there sees it set
 * inside connectH2, before any stream is opened, and wraps `session.request`. Should an undici
 * upgrade move that, `h2Streams.hooked` stays false: forward.ts then never pauses an HTTP/2
 * upstream (cut past a small buffer instead), and a warning says so once.
 * test/http2-upstream.test.ts pins both behaviours.
 */
import { createRequire } from 'node:module';
import { constants, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import { errors } from 'undici';

const undiciSymbols = (() => {
  try {
    return createRequire(import.meta.url)('undici/lib/core/symbols.js') as Record<string, unknown>;
  } catch {
    return {} as Record<string, unknown>;
  }
})();
const SESSION: symbol | null = typeof undiciSymbols.kHTTP2Session === 'symbol' ? undiciSymbols.kHTTP2Session : null;
/** Where undici looks for the error it fails a request with when a GOAWAY comes (onHttp2SessionGoAway). */
const SESSION_ERROR: symbol | null = typeof undiciSymbols.kError === 'symbol' ? undiciSymbols.kError : null;

/** undici's client fields a graceful GOAWAY detaches (6.), or null when one is missing. */
const CLIENT_KEYS = (() => {
  const k = ['kClient', 'kSocket', 'kHTTPContext', 'kResume', 'kRunning', 'kRunningIdx', 'kQueue', 'kOnError'].map((n) => undiciSymbols[n]);
  if (SESSION === null || k.some((v) => typeof v !== 'symbol')) return null;
  const [client, socket, context, resume, running, runningIdx, queue, onError] = k as symbol[];
  return { client: client!, socket: socket!, context: context!, resume: resume!, running: running!, runningIdx: runningIdx!, queue: queue!, onError: onError! };
})();
/**
 * What a detached session's and socket's undici listeners (session close, socket close and
 * errors, settings, pings, a later GOAWAY) reach instead of the client: nothing runs, nothing
 * is queued. The streams in flight keep the client itself (undici's closures).
 */
const DETACHED: Record<string | symbol, unknown> | null = CLIENT_KEYS === null ? null : {
  emit: () => false,
  [CLIENT_KEYS.running]: 0, [CLIENT_KEYS.runningIdx]: 0, [CLIENT_KEYS.queue]: [],
  [CLIENT_KEYS.resume]: () => {}, [CLIENT_KEYS.onError]: () => {},
};

/** hooked: a session was reached (streams are cancelled with CANCEL and may be paused). */
export const h2Streams = { hooked: false };

/** Error code of an upstream HTTP/2 stream closed before END_STREAM without an error of its own (see 4.). */
export const H2_STREAM_CUT = 'TURNPIKE_H2_STREAM_CUT';

const HELD = Symbol('turnpike.heldEvents');
/** The session's streams not closed yet (and, on a stream, the set it is in). */
const OPEN = Symbol('turnpike.openStreams');
/** Marks undici's error for a request whose stream a GOAWAY said was not processed. */
const UNPROCESSED = Symbol('turnpike.unprocessedStream');
/** How the readable side ended: END_STREAM came (EOF_WHOLE), or the stream closed first (EOF_CUT). */
const EOF = Symbol('turnpike.eof');
const EOF_WHOLE = 1;
const EOF_CUT = 2;
type Stream = ClientHttp2Stream & { [HELD]?: unknown[][]; [EOF]?: number; [OPEN]?: Set<Stream> };
type Session = ClientHttp2Session & { [OPEN]?: Set<Stream> };

/**
 * Whether an upstream error is undici's for a GOAWAY whose last-stream-id is below every stream
 * open on the session (RFC 9113 §6.8): the upstream processed none of them (an idle connection
 * it closed as the request went out), so the request may be sent again on a new connection.
 */
export function unprocessedStream(err: Error): boolean {
  return (err as Error & { [UNPROCESSED]?: true })[UNPROCESSED] === true;
}

/**
 * Runs before undici's 'goaway' listener, which fails the session's oldest request with the
 * session's error if one is set (else a plain SocketError): when the GOAWAY says no open stream
 * was processed, that error is set, marked so.
 */
function onGoaway(this: Session, code: number, lastStreamID: number): void {
  const open = this[OPEN];
  if (SESSION_ERROR === null || open === undefined || open.size === 0) return;
  const session = this as Session & Record<symbol, unknown>;
  if (session[SESSION_ERROR]) return;
  // (a stream without an id was never sent)
  for (const st of open) if (st.id !== undefined && st.id <= lastStreamID) return;
  session[SESSION_ERROR] = Object.assign(
    new errors.SocketError(`HTTP/2: "GOAWAY" frame received with code ${code}; the request's stream was not processed (last stream ${lastStreamID})`),
    { [UNPROCESSED]: true },
  );
}

/**
 * 6. A GOAWAY NO_ERROR whose last-stream-id covers every open stream: undici's client is
 * detached from the session (true) and never hears of it; the streams finish. False: undici's
 * handler runs as it would (no stream open, one unprocessed, undici's fields not found).
 */
function detachOnGoaway(session: Session, lastStreamID: number): boolean {
  const k = CLIENT_KEYS;
  if (k === null) return false;
  const s = session as Session & Record<symbol, unknown>;
  const client = s[k.client] as Record<symbol, unknown> | undefined;
  if (client === DETACHED) return true; // (the second GOAWAY of a graceful shutdown, RFC 9113 §6.8)
  const open = session[OPEN];
  if (client == null || open === undefined || open.size === 0 || client[SESSION!] !== session) return false;
  for (const st of open) if (st.id === undefined || st.id > lastStreamID) return false;
  // (what undici's handler does first, without destroying the socket nor failing a request)
  client[k.socket] = null;
  client[k.context] = null;
  client[SESSION!] = null;
  s[k.client] = DETACHED;
  const socket = s[k.socket] as Record<symbol, unknown> | undefined;
  if (socket != null) socket[k.client] = DETACHED;
  (client[k.resume] as () => void)(); // requests waiting for a stream go on a new connection
  return true;
}

let sessionEmit: ClientHttp2Session['emit'] | null = null;

function emitGoawayGracefully(this: Session, event: string | symbol, code?: unknown, lastStreamID?: unknown): boolean {
  if (event === 'goaway' && code === constants.NGHTTP2_NO_ERROR && detachOnGoaway(this, lastStreamID as number)) return true;
  return Reflect.apply(sessionEmit!, this, arguments) as boolean;
}

let request: ClientHttp2Session['request'] | null = null;
let close: ClientHttp2Stream['close'] | null = null;
let emit: ClientHttp2Stream['emit'] | null = null;
let push: ClientHttp2Stream['push'] | null = null;

function closeWithCancel(this: Stream, code?: number, callback?: () => void): void {
  close!.call(this, code ?? constants.NGHTTP2_CANCEL, callback);
}

/**
 * 'trailers' (the response is whole) and 'aborted' (the upstream closed the stream, e.g. with
 * NO_ERROR after a whole response while the request body still went out, RFC 9113 §8.1) make
 * undici stop listening to 'data': while body data waits in the paused stream, they are held
 * until its readable side ends. (A flowing stream holds none: nothing changes for it.)
 */
function emitAfterBody(this: Stream, event: string | symbol): boolean {
  if (event === 'close') this[OPEN]?.delete(this);
  if (event === 'end' && this[EOF] === EOF_CUT && this.listenerCount('error') > 0) {
    // 4. Failed, not ended (undici listens to 'error' until the request settles).
    this[EOF] = EOF_WHOLE;
    const code = this.rstCode === constants.NGHTTP2_CANCEL ? 'CANCEL' : this.rstCode === constants.NGHTTP2_NO_ERROR ? 'NO_ERROR' : String(this.rstCode);
    const err = Object.assign(new Error(`the upstream closed the HTTP/2 stream (${code}) before the end of its response`), { code: H2_STREAM_CUT, rstCode: this.rstCode });
    Reflect.apply(emit!, this, ['error', err]);
    if (!this.destroyed) this.destroy(); // (node:http2 destroys such a stream at its 'end')
    return false;
  }
  if ((event === 'trailers' || event === 'aborted') && this.readableLength > 0 && !this.readableEnded) {
    const held = this[HELD];
    const args = Array.prototype.slice.call(arguments);
    if (held === undefined) {
      this[HELD] = [args];
      this.prependOnceListener('end', emitHeld);
    } else held.push(args);
    return true;
  }
  return Reflect.apply(emit!, this, arguments) as boolean;
}

function emitHeld(this: Stream): void {
  const held = this[HELD]!;
  this[HELD] = undefined;
  for (const args of held) Reflect.apply(emit!, this, args);
}

/**
 * 4. The readable side's end (push(null)) as it comes: from END_STREAM while the stream is still
 * open, or from the stream's close (RST_STREAM, the session gone) before any END_STREAM.
 */
function pushEof(this: Stream, chunk: unknown, encoding?: BufferEncoding): boolean {
  if (chunk === null && this[EOF] === undefined) this[EOF] = this.closed ? EOF_CUT : EOF_WHOLE;
  return push!.call(this, chunk, encoding);
}

function requestHooked(this: ClientHttp2Session, headers?: Parameters<ClientHttp2Session['request']>[0], options?: Parameters<ClientHttp2Session['request']>[1]): ClientHttp2Stream {
  // 3. A body known to be empty when the stream opens (a stream body that had ended, a buffer
  // of no bytes): undici sends `content-length: 0` and then writes nothing, never ending the
  // stream; the upstream waits for the body's end until the response timeout. Ended at once.
  if (options?.endStream === false && headers?.['content-length'] === '0') options = { ...options, endStream: true };
  const stream = request!.call(this, headers, options) as Stream;
  const open = ((this as Session)[OPEN] ??= new Set());
  open.add(stream);
  stream[OPEN] = open;
  close ??= stream.close;
  emit ??= stream.emit;
  push ??= stream.push;
  stream.close = closeWithCancel;
  stream.emit = emitAfterBody;
  stream.push = pushEof;
  return stream;
}

function sessionSet(this: Socket, session: ClientHttp2Session | null | undefined): void {
  Object.defineProperty(this, SESSION!, { value: session, writable: true, configurable: true, enumerable: true });
  if (session == null || typeof session.request !== 'function') return;
  request ??= session.request;
  session.request = requestHooked;
  session.prependListener('goaway', onGoaway);
  if (DETACHED !== null) {
    sessionEmit ??= session.emit;
    session.emit = emitGoawayGracefully;
  }
  h2Streams.hooked = true;
}
function sessionGet(): undefined {
  return undefined;
}
const ACCESSOR: PropertyDescriptor = { configurable: true, enumerable: false, get: sessionGet, set: sessionSet };

/** Watches a socket about to be handed to undici for the HTTP/2 session it builds on it. */
export function watchH2Socket(socket: Socket): void {
  if (SESSION !== null) Object.defineProperty(socket, SESSION, ACCESSOR);
}

let warned = false;

/**
 * After undici took the socket: an HTTP/2 connection whose session was not seen means undici's
 * internals moved (see above); said once.
 */
export function checkH2Socket(socket: Socket): void {
  if (warned || socket.destroyed || (socket as Socket & { alpnProtocol?: string }).alpnProtocol !== 'h2') return;
  // (the accessor replaced by a plain value: the session was seen)
  if (SESSION !== null && Object.getOwnPropertyDescriptor(socket, SESSION)?.set === undefined) return;
  warned = true;
  process.emitWarning(
    'undici\'s HTTP/2 session was not found on its socket: upstream HTTP/2 streams are cancelled with NO_ERROR and never paused (a client that does not read is cut past 1 MiB)',
    { code: 'TURNPIKE_UNDICI_H2' },
  );
}
