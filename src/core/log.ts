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

export function createLogger(level: LogLevel = logLevelFrom(process.env.TURNPIKE_LOG_LEVEL)): Logger {
  return pino({ level, base: { service: 'turnpike' }, timestamp: pino.stdTimeFunctions.isoTime });
}

export const silentLogger: Logger = pino({ level: 'silent' });
