/** The process logger (pino, JSON lines). Request access logs come with the observability work. */
import { pino, type Logger } from 'pino';

export type { Logger };

/** The levels TURNPIKE_LOG_LEVEL takes (pino's). */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * TURNPIKE_LOG_LEVEL's level: unset or empty is info; case and surrounding blanks do not count
 * (WARN, "info\n" from a file). Anything else is an Error whose message is the one line to show
 * (pino would throw "default level:verbose must be included in custom levels" with its stack).
 */
export function logLevelFrom(value: string | undefined): LogLevel {
  const v = (value ?? '').trim().toLowerCase();
  if (v === '') return 'info';
  if ((LOG_LEVELS as readonly string[]).includes(v)) return v as LogLevel;
  const shown = /^[\x21-\x7e]*$/.test(value!) ? value! : JSON.stringify(value);
  throw new Error(`TURNPIKE_LOG_LEVEL=${shown}: use ${LOG_LEVELS.slice(0, -1).join(', ')} or ${LOG_LEVELS.at(-1)}`);
}

/**
 * What JSON.stringify (and pino) leave raw but a reader of the log may not: DEL and the C1
 * controls (U+0085 NEL ends a line for Python's splitlines() and Unicode-aware viewers; U+009B is
 * a terminal's CSI), U+2028 / U+2029 (line and paragraph separators: a line split in two), bidi
 * controls (text shown in another order than written). A client's value (a query, a header, a
 * claim, a WebSocket close reason) holding them goes out as \uXXXX escapes, the same JSON.
 */
const UNSAFE = /[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
const UNSAFE_ALL = new RegExp(UNSAFE.source, 'g');
export const escapeUnsafe = (json: string): string => (UNSAFE.test(json) ? json.replace(UNSAFE_ALL, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0')) : json);

/** Where the process log's lines go (default: stdout, as pino's own). */
export interface LogDestination {
  write(line: string): unknown;
}

/** The process log; its lines escaped as the access log's are (escapeUnsafe). */
export function createLogger(level: LogLevel = logLevelFrom(process.env.TURNPIKE_LOG_LEVEL), dest?: LogDestination): Logger {
  const out = dest ?? pino.destination({ dest: process.stdout.fd || 1, sync: false });
  const flush = (out as { flush?: (cb?: (err?: Error) => void) => void }).flush?.bind(out);
  return pino({ level, base: { service: 'turnpike' }, timestamp: pino.stdTimeFunctions.isoTime }, {
    write: (line: string) => out.write(escapeUnsafe(line)),
    ...(flush ? { flush } : {}),
  });
}

export const silentLogger: Logger = pino({ level: 'silent' });
