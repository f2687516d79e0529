/** The process logger (pino, JSON lines). Request access logs come with the observability work. */
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level = process.env.TURNPIKE_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { service: 'turnpike' }, timestamp: pino.stdTimeFunctions.isoTime });
}

export const silentLogger: Logger = pino({ level: 'silent' });
