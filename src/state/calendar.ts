/**
 * Calendar periods in a time zone (IANA name): the period containing an instant, as UTC epoch
 * ms bounds and a stable id ("2026-11", "2026-11-26", "2026-W48", ...). DST-safe: local
 * boundaries are converted to UTC with the zone's offset at that moment.
 */
export type Period = 'hour' | 'day' | 'week' | 'month' | 'year';

const formatters = new Map<string, Intl.DateTimeFormat>();
function fmt(tz: string): Intl.DateTimeFormat {
  let f = formatters.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone: tz, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric' });
    formatters.set(tz, f);
  }
  return f;
}

/** Local wall-clock fields of an instant in a zone. */
function local(instant: number, tz: string): { y: number; m: number; d: number; h: number; mi: number; s: number } {
  const p: Record<string, number> = {};
  for (const part of fmt(tz).formatToParts(new Date(instant))) if (part.type !== 'literal') p[part.type] = Number(part.value);
  return { y: p['year']!, m: p['month']!, d: p['day']!, h: p['hour']!, mi: p['minute']!, s: p['second']! };
}

/** The zone's offset (ms, local - UTC) at an instant. */
function offset(instant: number, tz: string): number {
  const l = local(instant, tz);
  return Date.UTC(l.y, l.m - 1, l.d, l.h, l.mi, l.s) - Math.floor(instant / 1000) * 1000;
}

/** The UTC instant of a local wall-clock time (the earlier one in a DST overlap). */
function utcOf(y: number, m: number, d: number, h: number, tz: string): number {
  const guess = Date.UTC(y, m - 1, d, h);
  let t = guess - offset(guess, tz);
  t = guess - offset(t, tz);
  return t;
}

export function validTimeZone(tz: string): boolean {
  try {
    fmt(tz);
    return true;
  } catch {
    return false;
  }
}

export function periodOf(instant: number, period: Period, tz: string): { start: number; end: number; id: string } {
  const l = local(instant, tz);
  const pad = (n: number) => String(n).padStart(2, '0');
  switch (period) {
    case 'hour': {
      const start = utcOf(l.y, l.m, l.d, l.h, tz);
      return { start, end: start + 3_600_000, id: `${l.y}-${pad(l.m)}-${pad(l.d)}T${pad(l.h)}` };
    }
    case 'day': {
      const next = new Date(Date.UTC(l.y, l.m - 1, l.d + 1));
      return { start: utcOf(l.y, l.m, l.d, 0, tz), end: utcOf(next.getUTCFullYear(), next.getUTCMonth() + 1, next.getUTCDate(), 0, tz), id: `${l.y}-${pad(l.m)}-${pad(l.d)}` };
    }
    case 'week': {
      // ISO weeks: Monday to Monday.
      const dow = (new Date(Date.UTC(l.y, l.m - 1, l.d)).getUTCDay() + 6) % 7;
      const mon = new Date(Date.UTC(l.y, l.m - 1, l.d - dow));
      const nextMon = new Date(Date.UTC(l.y, l.m - 1, l.d - dow + 7));
      const thu = new Date(Date.UTC(l.y, l.m - 1, l.d - dow + 3));
      const week = Math.floor((thu.getTime() - Date.UTC(thu.getUTCFullYear(), 0, 1)) / (7 * 86_400_000)) + 1;
      return {
        start: utcOf(mon.getUTCFullYear(), mon.getUTCMonth() + 1, mon.getUTCDate(), 0, tz),
        end: utcOf(nextMon.getUTCFullYear(), nextMon.getUTCMonth() + 1, nextMon.getUTCDate(), 0, tz),
        id: `${thu.getUTCFullYear()}-W${pad(week)}`,
      };
    }
    case 'month': {
      const ny = l.m === 12 ? l.y + 1 : l.y;
      const nm = l.m === 12 ? 1 : l.m + 1;
      return { start: utcOf(l.y, l.m, 1, 0, tz), end: utcOf(ny, nm, 1, 0, tz), id: `${l.y}-${pad(l.m)}` };
    }
    case 'year':
      return { start: utcOf(l.y, 1, 1, 0, tz), end: utcOf(l.y + 1, 1, 1, 0, tz), id: `${l.y}` };
  }
}
