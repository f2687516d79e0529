import test from 'node:test';
import assert from 'node:assert/strict';
import { withoutQueryParam } from './query.js';

test('withoutQueryParam takes the parameter out after a \';\' as after a \'&\' (as splitQuery reads a query); the rest keeps its bytes and separators', () => {
  assert.equal(withoutQueryParam('?a=1;apikey=K', 'apikey'), '?a=1');
  assert.equal(withoutQueryParam('?apikey=K;a=1&b=2', 'apikey'), '?a=1&b=2');
  assert.equal(withoutQueryParam('?x=1;y=2&apikey=K&z=%2F', 'apikey'), '?x=1;y=2&z=%2F');
  assert.equal(withoutQueryParam('?a=1;api%6Bey=K;api+key=2', 'apikey'), '?a=1;api+key=2');
  assert.equal(withoutQueryParam('?apikey=K;apikey=L', 'apikey'), '');
  assert.equal(withoutQueryParam('?a=1&&b;%zz', 'apikey'), '?a=1&&b;%zz');
  assert.equal(withoutQueryParam('', 'apikey'), '');
});
