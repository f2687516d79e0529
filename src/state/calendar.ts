/**
 * Calendar periods in a time zone (IANA name): the period containing an instant, as UTC epoch
 * ms bounds and a stable id ("2026-11", "2026-11-26", "2026-W48", "2026-11-26T14", ...).
 * DST-safe, and the period always contains the instant: local boundaries are converted to UTC
 * with the zone's offset at that moment; a boundary that a DST gap skips (America/Havana and
 * America/Santiago have no midnight on their spring-forward day) is the first instant after it
 * (01:00 local there); a day, week, month or year starts at the first occurrence of a boundary
 * that a DST overlap repeats; an hour repeated by an overlap is two periods (two real hours, ids
 * suffixed with the UTC offset: "2026-10-25T02+02:00", "2026-10-25T02+01:00").
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

/**
 * The instants at which the local wall-clock time `wall` (its fields written as a UTC epoch)
 * begins, ascending: one; two when a DST overlap repeats it (clocks set back); and when a gap
 * skips it (clocks set forward, e.g. America/Havana's midnight on 2026-03-08), the first
 * instant that exists after it — the transition itself (00:00 missing: 01:00 local).
 */
function startsOf(wall: number, tz: string): number[] {
  const offsets = [...new Set([offset(wall - 86_400_000, tz), offset(wall, tz), offset(wall + 86_400_000, tz)])];
  const out: number[] = [];
  for (const o of offsets) {
    const t = wall - o;
    if (offset(t, tz) === o && !out.includes(t)) out.push(t);
  }
  if (out.length > 0) return out.sort((a, b) => a - b);
  // A gap: before it the local time is below `wall`, after it above. The transition is the
  // first second whose local time is at or past `wall` (zone transitions fall on whole seconds).
  const past = (sec: number) => sec * 1000 + offset(sec * 1000, tz) >= wall;
  let lo = Math.floor((wall - Math.max(...offsets)) / 1000);
  let hi = Math.ceil((wall - Math.min(...offsets)) / 1000);
  if (past(lo) || !past(hi)) return [wall - offset(wall, tz)];
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (past(mid)) hi = mid;
    else lo = mid;
  }
  return [hi * 1000];
}

/**
 * The period [start, end) holding `instant` whose local bounds are the wall-clock times
 * `wallStart` and `wallEnd`. A bound repeated by an overlap starts at its first occurrence (a
 * day that repeats its first hour has 25 hours), or at its latest one at or before the instant
 * with `eachOccurrence` (hours: each real hour is a period); a bound skipped by a gap is the
 * first instant after it. Whatever the zone does, the period contains `instant`.
 */
function span(instant: number, wallStart: number, wallEnd: number, tz: string, eachOccurrence: boolean): { start: number; end: number; repeated: boolean } {
  const all = startsOf(wallStart, tz);
  const before = all.filter((t) => t <= instant);
  const start = before.length === 0 ? instant : eachOccurrence ? before[before.length - 1]! : before[0]!;
  const ends = eachOccurrence ? [...startsOf(wallEnd, tz), ...all] : startsOf(wallEnd, tz);
  let end = Infinity;
  for (const t of ends) if (t > instant && t < end) end = t;
  if (end === Infinity) end = start + (wallEnd - wallStart);
  return { start, end: Math.max(end, instant + 1), repeated: all.length > 1 };
}

export function validTimeZone(tz: string): boolean {
  try {
    fmt(tz);
    return true;
  } catch {
    return false;
  }
}

const lastPeriod = new Map<string, { start: number; end: number; id: string }>();

/** The period holding `instant` (the calendar's clock is the caller's: pass any instant). */
export function periodOf(instant: number, period: Period, tz: string): { start: number; end: number; id: string } {
  // Every request of a quota asks for the period of "now": the last answer holds until its end.
  const cacheKey = `${period}|${tz}`;
  const last = lastPeriod.get(cacheKey);
  if (last !== undefined && last.start <= instant && instant < last.end) return last;
  const p = computePeriod(instant, period, tz);
  lastPeriod.set(cacheKey, p);
  return p;
}

function computePeriod(instant: number, period: Period, tz: string): { start: number; end: number; id: string } {
  const l = local(instant, tz);
  const pad = (n: number) => String(n).padStart(2, '0');
  switch (period) {
    case 'hour': {
      const s = span(instant, Date.UTC(l.y, l.m - 1, l.d, l.h), Date.UTC(l.y, l.m - 1, l.d, l.h + 1), tz, true);
      let id = `${l.y}-${pad(l.m)}-${pad(l.d)}T${pad(l.h)}`;
      if (s.repeated) {
        // The two real hours of a repeated local hour are two periods: told apart by the offset.
        const o = Math.round(offset(s.start, tz) / 60_000);
        id += `${o < 0 ? '-' : '+'}${pad(Math.floor(Math.abs(o) / 60))}:${pad(Math.abs(o) % 60)}`;
      }
      return { start: s.start, end: s.end, id };
    }
    case 'day': {
      const s = span(instant, Date.UTC(l.y, l.m - 1, l.d), Date.UTC(l.y, l.m - 1, l.d + 1), tz, false);
      return { start: s.start, end: s.end, id: `${l.y}-${pad(l.m)}-${pad(l.d)}` };
    }
    case 'week': {
      // ISO weeks: Monday to Monday.
      const dow = (new Date(Date.UTC(l.y, l.m - 1, l.d)).getUTCDay() + 6) % 7;
      const thu = new Date(Date.UTC(l.y, l.m - 1, l.d - dow + 3));
      const week = Math.floor((thu.getTime() - Date.UTC(thu.getUTCFullYear(), 0, 1)) / (7 * 86_400_000)) + 1;
      const s = span(instant, Date.UTC(l.y, l.m - 1, l.d - dow), Date.UTC(l.y, l.m - 1, l.d - dow + 7), tz, false);
      return { start: s.start, end: s.end, id: `${thu.getUTCFullYear()}-W${pad(week)}` };
    }
    case 'month': {
      const s = span(instant, Date.UTC(l.y, l.m - 1, 1), Date.UTC(l.y, l.m, 1), tz, false);
      return { start: s.start, end: s.end, id: `${l.y}-${pad(l.m)}` };
    }
    case 'year': {
      const s = span(instant, Date.UTC(l.y, 0, 1), Date.UTC(l.y + 1, 0, 1), tz, false);
      return { start: s.start, end: s.end, id: `${l.y}` };
    }
  }
}
