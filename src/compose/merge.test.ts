import test from 'node:test';
import assert from 'node:assert/strict';
import { mergeValues } from './merge.js';

const v = (key: string, value: unknown) => ({ step: { key, name: key }, value });
const plain = (x: unknown) => JSON.parse(JSON.stringify(x)) as unknown;

test('nested: one key per step', () => {
  assert.deepEqual(plain(mergeValues({ mode: 'nested', key: 'id', into: 'items' }, [v('user', { id: 1 }), v('orders', [1, 2]), v('n', 3)])), {
    user: { id: 1 }, orders: [1, 2], n: 3,
  });
});

test('flat: objects shallow-merged in step order, other values under their key; inputs untouched', () => {
  const a = { id: 1, name: 'a', nested: { x: 1 } };
  const b = { name: 'b', extra: true };
  const out = mergeValues({ mode: 'flat', key: 'id', into: 'items' }, [v('a', a), v('b', b), v('list', [1])]);
  assert.deepEqual(plain(out), { id: 1, name: 'b', nested: { x: 1 }, extra: true, list: [1] });
  assert.deepEqual(a, { id: 1, name: 'a', nested: { x: 1 } });
  // a member named __proto__ is data, not a prototype
  const evil = JSON.parse('{"__proto__": {"polluted": true}}') as unknown;
  const o = mergeValues({ mode: 'flat', key: 'id', into: 'items' }, [v('e', evil)]);
  assert.equal((o as { polluted?: boolean }).polluted, undefined);
  assert.equal(JSON.stringify(o), '{"__proto__":{"polluted":true}}');
});

test('by_key: arrays merged element by element on the key', () => {
  const products = [{ id: 1, name: 'pen' }, { id: 2, name: 'ink' }, { name: 'no id' }];
  const prices = [{ id: 2, price: 5 }, { id: 1, price: 3 }, { id: 3, price: 9 }, { id: '1', price: 'string key' }];
  const out = mergeValues({ mode: 'by_key', key: 'id', into: 'items' }, [v('products', products), v('prices', prices), v('meta', { total: 2 })]);
  assert.deepEqual(plain(out), {
    items: [{ id: 1, name: 'pen', price: 3 }, { id: 2, name: 'ink', price: 5 }, { name: 'no id' }, { id: 3, price: 9 }, { id: '1', price: 'string key' }],
    meta: { total: 2 },
  });
  assert.deepEqual(products[0], { id: 1, name: 'pen' });
});
