/**
 * Calendar periods across DST changes: the period of an instant always contains it, periods
 * follow one another without gaps, a local boundary skipped by a DST gap is the first instant
 * after it, and each real hour of a repeated local hour is its own period. The calendar's
 * clock is its argument: every instant here is fixed.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { periodOf, type Period } from './calendar.js';

const Z = (s: string) => Date.parse(s);
const iso = (t: number) => new Date(t).toISOString();
const bounds = (t: string, period: Period, tz: string) => {
  const p = periodOf(Z(t), period, tz);
  return [p.id, iso(p.start), iso(p.end)];
};

test('a local midnight skipped by DST (America/Havana, America/Santiago): the day before ends at the transition, the day starts there', () => {
  // Havana 2026-03-08: 00:00 CST -> 01:00 CDT at 05:00Z. The reviewer's instant, 04:30Z, is
  // 23:30 on the 7th.
  assert.deepEqual(bounds('2026-03-08T04:30:00Z', 'day', 'America/Havana'), ['2026-03-07', '2026-03-07T05:00:00.000Z', '2026-03-08T05:00:00.000Z']);
  assert.deepEqual(bounds('2026-03-08T05:30:00Z', 'day', 'America/Havana'), ['2026-03-08', '2026-03-08T05:00:00.000Z', '2026-03-09T04:00:00.000Z']);
  // Santiago 2026-09-06: 00:00 -04 -> 01:00 -03 at 04:00Z.
  assert.deepEqual(bounds('2026-09-06T03:30:00Z', 'day', 'America/Santiago'), ['2026-09-05', '2026-09-05T04:00:00.000Z', '2026-09-06T04:00:00.000Z']);
  assert.deepEqual(bounds('2026-09-06T04:00:00Z', 'day', 'America/Santiago'), ['2026-09-06', '2026-09-06T04:00:00.000Z', '2026-09-07T03:00:00.000Z']);
  // The week and the month that hold such a day end at the next period's start, past now.
  assert.deepEqual(bounds('2026-09-06T03:30:00Z', 'week', 'America/Santiago'), ['2026-W36', '2026-08-31T04:00:00.000Z', '2026-09-07T03:00:00.000Z']);
});

test('weeks and months that start on a skipped midnight start at the first instant after it', () => {
  // Tehran 2021-03-22 (a Monday): 00:00 +03:30 -> 01:00 +04:30 at 2021-03-21T20:30Z.
  assert.deepEqual(bounds('2021-03-21T20:15:00Z', 'week', 'Asia/Tehran'), ['2021-W11', '2021-03-14T20:30:00.000Z', '2021-03-21T20:30:00.000Z']);
  assert.deepEqual(bounds('2021-03-21T20:45:00Z', 'week', 'Asia/Tehran'), ['2021-W12', '2021-03-21T20:30:00.000Z', '2021-03-28T19:30:00.000Z']);
  // Havana 2012-04-01 and Amman 2016-04-01: no midnight on the 1st.
  assert.deepEqual(bounds('2012-04-01T04:30:00Z', 'month', 'America/Havana'), ['2012-03', '2012-03-01T05:00:00.000Z', '2012-04-01T05:00:00.000Z']);
  assert.deepEqual(bounds('2012-04-01T05:00:00Z', 'month', 'America/Havana'), ['2012-04', '2012-04-01T05:00:00.000Z', '2012-05-01T04:00:00.000Z']);
  assert.deepEqual(bounds('2016-03-31T21:59:59Z', 'month', 'Asia/Amman'), ['2016-03', '2016-02-29T22:00:00.000Z', '2016-03-31T22:00:00.000Z']);
  assert.deepEqual(bounds('2016-03-31T22:00:00Z', 'month', 'Asia/Amman'), ['2016-04', '2016-03-31T22:00:00.000Z', '2016-04-30T21:00:00.000Z']);
});

test('a repeated local hour is two periods, each of one real hour (Europe/Paris, America/Havana)', () => {
  // Paris 2026-10-25: 03:00 CEST -> 02:00 CET at 01:00Z.
  assert.deepEqual(bounds('2026-10-25T00:30:00Z', 'hour', 'Europe/Paris'), ['2026-10-25T02+02:00', '2026-10-25T00:00:00.000Z', '2026-10-25T01:00:00.000Z']);
  assert.deepEqual(bounds('2026-10-25T01:30:00Z', 'hour', 'Europe/Paris'), ['2026-10-25T02+01:00', '2026-10-25T01:00:00.000Z', '2026-10-25T02:00:00.000Z']);
  assert.deepEqual(bounds('2026-10-25T02:30:00Z', 'hour', 'Europe/Paris'), ['2026-10-25T03', '2026-10-25T02:00:00.000Z', '2026-10-25T03:00:00.000Z']);
  // The day has 25 hours and starts at its (single) midnight.
  assert.deepEqual(bounds('2026-10-25T00:30:00Z', 'day', 'Europe/Paris'), ['2026-10-25', '2026-10-24T22:00:00.000Z', '2026-10-25T23:00:00.000Z']);
  // Paris in spring: 02:00 does not exist; hour 01 ends at the transition, hour 03 starts there.
  assert.deepEqual(bounds('2026-03-29T00:30:00Z', 'hour', 'Europe/Paris'), ['2026-03-29T01', '2026-03-29T00:00:00.000Z', '2026-03-29T01:00:00.000Z']);
  assert.deepEqual(bounds('2026-03-29T01:30:00Z', 'hour', 'Europe/Paris'), ['2026-03-29T03', '2026-03-29T01:00:00.000Z', '2026-03-29T02:00:00.000Z']);
  // Havana 2026-11-01: 01:00 CDT -> 00:00 CST, so midnight comes twice; the day starts at the first.
  assert.deepEqual(bounds('2026-11-01T05:30:00Z', 'day', 'America/Havana'), ['2026-11-01', '2026-11-01T04:00:00.000Z', '2026-11-02T05:00:00.000Z']);
  assert.deepEqual(bounds('2026-11-01T05:30:00Z', 'hour', 'America/Havana'), ['2026-11-01T00-05:00', '2026-11-01T05:00:00.000Z', '2026-11-01T06:00:00.000Z']);
});

test('a 30-minute DST shift (Australia/Lord_Howe): hours of 30 and 90 minutes, each containing now', () => {
  // 2026-10-04: 02:00 +10:30 -> 02:30 +11 at 15:30Z; hour 02 is its last 30 minutes.
  assert.deepEqual(bounds('2026-10-03T15:40:00Z', 'hour', 'Australia/Lord_Howe'), ['2026-10-04T02', '2026-10-03T15:30:00.000Z', '2026-10-03T16:00:00.000Z']);
  // 2026-04-05: 02:00 +11 -> 01:30 +10:30 at 15:00Z; hour 01 runs 01:00 +11 to 02:00 +10:30.
  assert.deepEqual(bounds('2026-04-04T15:10:00Z', 'hour', 'Australia/Lord_Howe'), ['2026-04-05T01', '2026-04-04T14:00:00.000Z', '2026-04-04T15:30:00.000Z']);
  assert.deepEqual(bounds('2026-10-03T15:40:00Z', 'day', 'Australia/Lord_Howe'), ['2026-10-04', '2026-10-03T13:30:00.000Z', '2026-10-04T13:00:00.000Z']);
});

test('every period contains its instant and periods follow one another, around each DST change of several zones', () => {
  const cases: [string, string[]][] = [
    ['America/Havana', ['2026-03-08', '2026-11-01', '2012-04-01']],
    ['America/Santiago', ['2026-04-05', '2026-09-06']],
    ['Europe/Paris', ['2026-03-29', '2026-10-25']],
    ['Australia/Lord_Howe', ['2026-04-05', '2026-10-04']],
    ['Asia/Tehran', ['2021-03-22', '2021-09-22']],
    ['Asia/Kolkata', ['2026-03-08']],
    ['UTC', ['2026-03-08']],
  ];
  for (const [tz, days] of cases) {
    for (const day of days) {
      for (const period of ['hour', 'day', 'week', 'month', 'year'] as Period[]) {
        const seen = new Map<string, number>();
        let prev: { start: number; end: number; id: string } | undefined;
        for (let t = Z(`${day}T00:00:00Z`) - 2 * 86_400_000; t < Z(`${day}T00:00:00Z`) + 2 * 86_400_000; t += 10 * 60_000) {
          const p = periodOf(t, period, tz);
          const at = `${tz} ${period} ${iso(t)}: ${p.id} [${iso(p.start)}, ${iso(p.end)})`;
          assert.ok(p.start <= t && t < p.end, `contains now: ${at}`);
          if (prev !== undefined && prev.id !== p.id) {
            assert.equal(p.start, prev.end, `the next period starts at the end of the last: ${at}`);
            assert.ok(p.end - p.start >= 30 * 60_000, `at least half an hour: ${at}`);
          }
          assert.equal(seen.get(p.id) ?? p.start, p.start, `one id, one period: ${at}`);
          seen.set(p.id, p.start);
          prev = p;
        }
      }
    }
  }
  // Without DST, days and hours are the plain ones.
  assert.deepEqual(bounds('2026-03-08T04:30:00Z', 'day', 'Asia/Kolkata'), ['2026-03-08', '2026-03-07T18:30:00.000Z', '2026-03-08T18:30:00.000Z']);
  assert.deepEqual(bounds('2026-03-08T04:30:00Z', 'hour', 'Asia/Kolkata'), ['2026-03-08T10', '2026-03-08T04:30:00.000Z', '2026-03-08T05:30:00.000Z']);
});
