/** Workers' counters over IPC: calls of one event-loop turn travel as one message, decisions stay exact, failures reject. */
import test from 'node:test';
import assert from 'node:assert/strict';
import { IpcStore, answerCounter, type CounterRequest } from './ipc.js';
import { MemoryStore } from './memory.js';
import type { RateQuery } from './types.js';

const q = (over: Partial<RateQuery> = {}): RateQuery => ({ key: 'k', limit: 10, periodMs: 60_000, cost: 1, algorithm: 'gcra', ...over });

/** A worker store wired to a primary's MemoryStore through an asynchronous "channel" (JSON, like node's IPC). */
function wired(timeoutMs = 1000, batches = true) {
  const primary = new MemoryStore();
  const sent: CounterRequest[] = [];
  let answering = true;
  const worker = new IpcStore((m) => {
    const copy = JSON.parse(JSON.stringify(m)) as CounterRequest;
    sent.push(copy);
    if (answering) setTimeout(() => worker.onReply(JSON.parse(JSON.stringify(answerCounter(primary, copy)))), 1);
  }, timeoutMs);
  worker.batched(batches);
  return { worker, sent, primary, mute: () => (answering = false) };
}

test('the calls of one turn go as one message, answered in order; the decisions are exact', async () => {
  const { worker, sent } = wired();
  const decisions = await Promise.all(Array.from({ length: 50 }, () => worker.rate([q()])));
  assert.equal(sent.length, 1, 'one IPC message for 50 calls made in the same turn');
  assert.equal(sent[0]!.tp === 'ctrb' && sent[0]!.calls.length, 50);
  assert.equal(decisions.filter((d) => d[0]!.allowed).length, 10, 'exactly the limit allowed');
  assert.deepEqual(decisions.slice(0, 10).map((d) => d[0]!.remaining), [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], 'answers in call order');
  // A later turn is a new message.
  const later = await worker.rate([q({ key: 'other' })]);
  assert.equal(sent.length, 2);
  assert.equal(later[0]!.allowed, true);
  await worker.close();
});

test('quota and usage calls ride in the same batch as rate calls', async () => {
  const { worker, sent } = wired();
  const [r, quota, usage] = await Promise.all([
    worker.rate([q({ key: 'a' })]),
    worker.quota({ key: 'qk', limit: 2, cost: 1, periodEnd: Date.now() + 86_400_000 }),
    worker.quotaUsage('qk'),
  ]);
  assert.equal(sent.length, 1);
  const first = sent[0]!;
  assert.ok(first.tp === 'ctrb');
  assert.deepEqual(first.calls.map((c) => c.op), ['rate', 'quota', 'usage']);
  assert.equal(r[0]!.allowed, true);
  assert.equal(typeof quota, 'object');
  assert.equal(typeof usage, 'number');
  await worker.close();
});

test('a primary that does not answer: every waiting call is rejected after the timeout', async () => {
  const { worker, mute } = wired(60);
  mute();
  const t0 = Date.now();
  const results = await Promise.allSettled([worker.rate([q()]), worker.rate([q()])]);
  assert.ok(results.every((r) => r.status === 'rejected' && /did not answer/.test(String(r.reason))));
  assert.ok(Date.now() - t0 < 1000, 'rejected near the timeout, not later');
  await worker.close();
});

test('a channel that throws on send rejects the whole batch; a late or unknown answer is ignored', async () => {
  const worker = new IpcStore(() => {
    throw new Error('channel closed');
  });
  worker.batched(true);
  const results = await Promise.allSettled([worker.rate([q()]), worker.quotaUsage('x')]);
  assert.ok(results.every((r) => r.status === 'rejected' && /channel closed/.test(String(r.reason))));
  worker.onReply({ tp: 'ctrb-r', answers: [{ id: 999, value: [] }, null as never] });
  worker.onReply({ tp: 'ctrb-r', answers: 'garbage' as never });
  worker.onReply({ tp: 'ctr-r', id: 998, value: [] });
  await worker.close();
});

test('a call the primary fails on is rejected with its error; the others of the batch are answered', async () => {
  const primary = new MemoryStore();
  const bad = { ...primary, rateNow: () => { throw new Error('boom'); } } as unknown as MemoryStore;
  let n = 0;
  const worker = new IpcStore((m) => {
    setImmediate(() => worker.onReply(answerCounter(n++ === 0 ? bad : primary, m)));
  });
  worker.batched(true);
  const [first] = await Promise.allSettled([worker.rate([q()])]);
  assert.equal(first!.status, 'rejected');
  assert.match(String((first as PromiseRejectedResult).reason), /boom/);
  const ok = await worker.rate([q()]);
  assert.equal(ok[0]!.allowed, true);
  await worker.close();
});

test('close() rejects what still waits and sends nothing more', async () => {
  const { worker, sent, mute } = wired();
  mute();
  const p = worker.rate([q()]);
  await worker.close();
  await assert.rejects(p, /closing/);
  await new Promise((r) => setImmediate(r));
  assert.equal(sent.length, 0, 'the batch of a closed store is dropped');
});

test('under a primary that does not batch (older code during a rolling restart): one message per call, old reply format', async () => {
  const primary = new MemoryStore();
  const sent: CounterRequest[] = [];
  // An older primary: reads {tp:'ctr', id, op, ...}, answers {tp:'ctr-r', id, value}.
  const worker = new IpcStore((m) => {
    sent.push(m);
    assert.equal(m.tp, 'ctr');
    setImmediate(() => worker.onReply(answerCounter(primary, m)));
  });
  const decisions = await Promise.all(Array.from({ length: 12 }, () => worker.rate([q()])));
  assert.equal(sent.length, 12);
  assert.equal(decisions.filter((d) => d[0]!.allowed).length, 10);
  await worker.close();
});

test('the primary skips malformed calls in a batch without throwing', () => {
  const primary = new MemoryStore();
  const r = answerCounter(primary, { tp: 'ctrb', calls: [null as never, { id: 1, op: 'usage', key: 'k' }] });
  assert.deepEqual(r, { tp: 'ctrb-r', answers: [{ id: 1, value: 0 }] });
  const bad = answerCounter(primary, { tp: 'ctrb', calls: 'x' as never });
  assert.deepEqual(bad, { tp: 'ctrb-r', answers: [] });
});

test('a primary busy past the worker\'s timeout: the calls the worker gave up on (its fault applied) are not counted when they arrive late', async () => {
  const primary = new MemoryStore();
  const periodEnd = Date.now() + 86_400_000;
  // The channel delivers after 150 ms; the worker gives up after 40 ms.
  const worker: IpcStore = new IpcStore((m) => {
    const copy = JSON.parse(JSON.stringify(m)) as CounterRequest;
    setTimeout(() => worker.onReply(JSON.parse(JSON.stringify(answerCounter(primary, copy)))), 150);
  }, 40);
  worker.batched(true);
  const results = await Promise.allSettled([worker.rate([q({ key: 'late' })]), worker.quota({ key: 'late-q', limit: 5, cost: 1, periodEnd })]);
  assert.ok(results.every((r) => r.status === 'rejected'), 'the worker gave up');
  await new Promise((r) => setTimeout(r, 200)); // the primary has seen the batch by now
  assert.equal(primary.quotaUsageNow('late-q'), 0, 'a quota unit the worker never used is not taken');
  assert.equal(primary.rateNow([q({ key: 'late' })])[0]!.remaining, 9, 'nor a rate-limit slot');
  // In time, the same calls are decided and counted.
  const fresh = wired();
  await fresh.worker.quota({ key: 'late-q', limit: 5, cost: 1, periodEnd });
  assert.equal(fresh.primary.quotaUsageNow('late-q'), 1);
  await worker.close();
  await fresh.worker.close();
  await primary.close();
  await fresh.primary.close();
});

test('the primary answers a batch past its deadline with an error per call and decides none; without a deadline (older workers) it decides', () => {
  const store = new MemoryStore();
  const late = answerCounter(store, { tp: 'ctrb', deadline: Date.now() - 1, calls: [{ id: 1, op: 'rate', queries: [q()] }, { id: 2, op: 'usage', key: 'u' }] });
  assert.ok(late.tp === 'ctrb-r');
  assert.deepEqual(late.answers.map((a) => a.id), [1, 2]);
  assert.ok(late.answers.every((a) => 'error' in a));
  assert.equal(store.rateNow([q()])[0]!.remaining, 9, 'the late call took nothing');
  const old = answerCounter(store, { tp: 'ctrb', calls: [{ id: 3, op: 'rate', queries: [q()] }] });
  assert.ok(old.tp === 'ctrb-r' && 'value' in old.answers[0]!);
  void store.close();
});
