/** Durations (`250ms`, `30s`, `5m`, `1h`, `1d`; a bare number is milliseconds) and sizes (`512b`, `10kb`, `8mb`, `1gb`; a bare number is bytes). */

export const DURATION_PATTERN = '^[0-9]+(\\.[0-9]+)?(ms|s|m|h|d)$';
export const SIZE_PATTERN = '^[0-9]+(\\.[0-9]+)?(b|kb|mb|gb)$';

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };

function parseUnit(value: number | string, units: Record<string, number>, what: string): number {
  if (typeof value === 'number') return value;
  const m = /^([0-9]+(?:\.[0-9]+)?)([a-z]+)$/.exec(value.trim().toLowerCase());
  const factor = m ? units[m[2]!] : undefined;
  if (!m || factor === undefined) throw new Error(`invalid ${what} ${JSON.stringify(value)}`);
  return Math.round(Number(m[1]) * factor);
}

/** Milliseconds of a duration. */
export const parseDuration = (v: number | string): number => parseUnit(v, DURATION_UNITS, 'duration');
/** Bytes of a size. */
export const parseSize = (v: number | string): number => parseUnit(v, SIZE_UNITS, 'size');

/** The longest delay setTimeout / setInterval hold: past it Node fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Why a duration that becomes a call's deadline timer cannot work, or null: 0 fires at once and
 * past MAX_TIMER_MS after 1 ms — either way every call is aborted.
 */
export function deadlineProblem(value: number | string): string | null {
  const ms = parseDuration(value);
  if (ms < 1) return 'must be at least 1ms';
  if (ms > MAX_TIMER_MS) return 'must be at most 24d (2147483647 ms, the longest timer)';
  return null;
}

/**
 * The largest JSON body that can be parsed: it is decoded to one string first, and V8's longest
 * string is 536870888 (just under 512mb); a larger body failed as the gateway's own error.
 */
export const MAX_JSON_BODY = 536_870_888;
export const jsonBodyProblem = (value: number | string): string | null =>
  parseSize(value) > MAX_JSON_BODY ? 'must be at most 536870888 bytes (just under 512mb): a JSON body is parsed as one string, and no longer one can be made' : null;
