import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { ThrottledWarnings } from './fd-limit.js';

function collecting() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { lines, log: pino({ level: 'info' }, stream) };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('ThrottledWarnings: the first of a kind at once; the rest of its window in one line with the count; kinds apart; a stop logs what is held', async () => {
  const { lines, log } = collecting();
  const w = new ThrottledWarnings(() => log, 200);
  for (let i = 0; i < 5; i++) w.note('upstream-connect', { code: 'EMFILE', n: i }, 'out of descriptors');
  w.note('accept:proxy', { code: 'EMFILE' }, 'accept failed');
  await sleep(20);
  assert.deepEqual(lines.map((l) => [l['kind'], l['occurrences'], l['n']]), [['upstream-connect', 1, 0], ['accept:proxy', 1, undefined]]);
  await sleep(300);
  // (the window's end: the 4 held back, with the last one's fields)
  assert.deepEqual(lines.slice(2).map((l) => [l['kind'], l['occurrences'], l['n'], l['msg']]), [['upstream-connect', 4, 4, 'out of descriptors']]);
  assert.equal(lines[2]!['level'], 40);
  // A window opened by that line: one more is held, then given by the stop.
  w.note('upstream-connect', { code: 'EMFILE', n: 5 }, 'out of descriptors');
  await sleep(20);
  assert.equal(lines.length, 3);
  w.clear();
  assert.deepEqual(lines.slice(3).map((l) => [l['kind'], l['occurrences'], l['n']]), [['upstream-connect', 1, 5]]);
  // After a quiet window the next one is at once again.
  await sleep(250);
  w.note('accept:proxy', { code: 'ENFILE' }, 'accept failed');
  assert.deepEqual(lines.slice(4).map((l) => [l['kind'], l['occurrences'], l['code']]), [['accept:proxy', 1, 'ENFILE']]);
  w.clear();
});
