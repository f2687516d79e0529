/** Accept-Encoding negotiation (RFC 9110 §12.5.3). The plugin end to end: test/transform.test.ts. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { negotiate } from './index.js';

const OFFER = ['br', 'gzip'];

test('negotiate: the best offered coding by q-value, x-gzip as gzip, * for the rest, none without the field', () => {
  assert.equal(negotiate('gzip, br', OFFER), 'br');
  assert.equal(negotiate('gzip;q=1, br;q=0.5', OFFER), 'gzip');
  assert.equal(negotiate('x-gzip', OFFER), 'gzip');
  assert.equal(negotiate('*', OFFER), 'br');
  assert.equal(negotiate('*;q=0.1, br;q=0', OFFER), 'gzip');
  assert.equal(negotiate(undefined, OFFER), null);
  assert.equal(negotiate('deflate', OFFER), null);
});

test('negotiate: q=0 refuses (any spelling); an invalid qvalue makes its member unusable; identity preferred wins', () => {
  for (const v of ['gzip;q=0', 'gzip;Q=0', 'gzip;q=0.000', 'gzip; q = 0']) assert.equal(negotiate(v, ['gzip']), null, v);
  for (const v of ['gzip;q=0.0001', 'gzip;q=', 'gzip;q=2', 'gzip;q=1.5', 'gzip;q=abc']) assert.equal(negotiate(v, ['gzip']), null, v);
  assert.equal(negotiate('gzip;q=0.5, identity', ['gzip']), null);
  assert.equal(negotiate('gzip, identity;q=0.5', ['gzip']), 'gzip');
});
