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
