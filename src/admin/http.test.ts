import { test } from 'node:test';
import assert from 'node:assert/strict';
import { canonicalJson, etagKey, itemTag, noneMatch, parseIfMatch } from './etag.js';
import { authenticate, authorize } from './auth.js';
import { route } from './router.js';
import { checkMediaType, parseJson, parseYaml } from './body.js';
import { mergePatch } from './merge-patch.js';
import { ApiError } from './errors.js';

const codeOf = (f: () => unknown): string => {
  try {
    f();
    return 'none';
  } catch (err) {
    return err instanceof ApiError ? err.code : String(err);
  }
};

test('etags: canonical JSON ignores key order; tags depend on the tokens; If-Match / If-None-Match parsing', () => {
  assert.equal(canonicalJson({ b: 1, a: [{ d: 2, c: 3 }] }), '{"a":[{"c":3,"d":2}],"b":1}');
  const k1 = etagKey([{ token: 'one-token-0123456789' }]);
  const k2 = etagKey([{ token: 'two-token-0123456789' }]);
  assert.equal(itemTag(k1, { a: 1, b: 2 }), itemTag(k1, { b: 2, a: 1 }));
  assert.notEqual(itemTag(k1, { a: 1 }), itemTag(k2, { a: 1 }));
  assert.match(itemTag(k1, { a: 1 }), /^"[A-Za-z0-9_-]{22}"$/);
  assert.deepEqual(parseIfMatch('*'), { any: true, tags: [], revisions: [] });
  assert.deepEqual(parseIfMatch('"abc", W/"weak", "r12"'), { any: false, tags: ['"abc"'], revisions: [12] });
  assert.equal(parseIfMatch(undefined), undefined);
  // Only weak tags: a condition nothing meets (not "no condition").
  const weak = parseIfMatch('W/"abc"')!;
  assert.equal(weak.any, false);
  assert.equal(weak.tags.length + weak.revisions.length > 0, true);
  assert.ok(!weak.tags.includes('"abc"'));
  assert.throws(() => parseIfMatch('abc'));
  assert.throws(() => parseIfMatch('"a" "b"'));
  assert.equal(noneMatch('W/"x", "y"', '"x"'), true);
  assert.equal(noneMatch('"z"', '"x"'), false);
  assert.equal(noneMatch('*', '"x"'), true);
});

test('auth: bearer tokens, roles; 401 carries WWW-Authenticate; read-only may only read', () => {
  const tokens = [{ name: 'ops', token: 'ops-token-0123456789', role: 'admin' as const }, { name: 'dash', token: 'ro-token-0123456789', role: 'read-only' as const }];
  assert.deepEqual(authenticate('Bearer ops-token-0123456789', tokens), { name: 'ops', role: 'admin' });
  assert.deepEqual(authenticate('bearer   ro-token-0123456789 ', tokens), { name: 'dash', role: 'read-only' });
  for (const h of [undefined, '', 'Bearer', 'Bearer wrong', 'Basic b3BzLXRva2Vu', 'Bearer ops-token-0123456789x', 'Bearer ops-token-0123456789 extra']) {
    try {
      authenticate(h, tokens);
      assert.fail(`accepted ${h}`);
    } catch (err) {
      assert.ok(err instanceof ApiError);
      // (RFC 6750 §3.1: Bearer without one token is a malformed request, 400 invalid_request)
      assert.equal(err.code, h === 'Bearer' || h?.endsWith(' extra') ? 'bad-request' : 'unauthorized', String(h));
      assert.match(err.headers!['www-authenticate']!, /^Bearer realm="turnpike-admin"/);
    }
  }
  assert.deepEqual(authenticate(undefined, []), { name: 'anonymous', role: 'admin' });
  assert.equal(codeOf(() => authorize({ name: 'dash', role: 'read-only' }, 'GET')), 'none');
  assert.equal(codeOf(() => authorize({ name: 'dash', role: 'read-only' }, 'PUT')), 'forbidden');
  assert.equal(codeOf(() => authorize({ name: 'ops', role: 'admin' }, 'DELETE')), 'none');
});

test('router: collections, items by name or id, nested credentials and targets, revisions; unknown paths are null', () => {
  assert.deepEqual(route('/api/services'), { kind: 'collection', collection: 'services' });
  assert.deepEqual(route('/api/services/'), { kind: 'collection', collection: 'services' });
  assert.deepEqual(route('/api/services/orders'), { kind: 'item', collection: 'services', id: 'orders' });
  assert.deepEqual(route('/api/plugins/service%3Aorders%3Akey-auth'), { kind: 'item', collection: 'plugins', id: 'service:orders:key-auth' });
  assert.deepEqual(route('/api/consumers/acme/credentials'), { kind: 'collection', collection: 'credentials', parent: 'acme' });
  assert.deepEqual(route('/api/consumers/acme/credentials/acme%2Fkey-auth%2F1'), { kind: 'item', collection: 'credentials', parent: 'acme', id: 'acme/key-auth/1' });
  assert.deepEqual(route('/api/consumers/acme/credentials/acme/key-auth/1'), { kind: 'item', collection: 'credentials', parent: 'acme', id: 'acme/key-auth/1' });
  assert.deepEqual(route('/api/upstreams/users/targets'), { kind: 'collection', collection: 'targets', parent: 'users' });
  assert.deepEqual(route('/api/revisions/12/rollback'), { kind: 'rollback', n: 12 });
  assert.deepEqual(route('/api/config'), { kind: 'config' });
  assert.deepEqual(route('/api/openapi.json'), { kind: 'openapi' });
  for (const p of ['/api', '/api/', '/api/nope', '/api/services/a/b', '/api/revisions/0', '/api/revisions/x', '/api/services//x', '/apix/services', '/status']) {
    assert.equal(route(p), null, p);
  }
  assert.equal(codeOf(() => route('/api/services/%E0%A4%A')), 'bad-request');
});

test('bodies: media types (415), JSON and YAML parse errors, depth and __proto__ refused', () => {
  assert.equal(checkMediaType('application/json; charset=utf-8', ['json']), 'json');
  assert.equal(checkMediaType('application/merge-patch+json', ['merge-patch', 'json']), 'merge-patch');
  assert.equal(checkMediaType('application/json', ['merge-patch']), 'merge-patch');
  assert.equal(checkMediaType('text/yaml', ['yaml', 'json']), 'yaml');
  assert.equal(codeOf(() => checkMediaType(undefined, ['json'])), 'unsupported-media-type');
  assert.equal(codeOf(() => checkMediaType('text/plain', ['json'])), 'unsupported-media-type');
  assert.equal(codeOf(() => checkMediaType('application/json; charset=latin1', ['json'])), 'unsupported-media-type');
  assert.equal(codeOf(() => parseJson(Buffer.from('{"a":'))), 'bad-request');
  assert.equal(codeOf(() => parseJson(Buffer.from(''))), 'bad-request');
  assert.equal(codeOf(() => parseJson(Buffer.from([0xff, 0xfe]))), 'bad-request');
  assert.equal(codeOf(() => parseJson(Buffer.from('[' .repeat(100) + ']'.repeat(100)))), 'bad-request');
  assert.equal(codeOf(() => parseJson(Buffer.from('{"__proto__": {"x": 1}}'))), 'bad-request');
  assert.deepEqual(parseYaml(Buffer.from('a: 1\nb: [x, "${NOT_SUBSTITUTED}"]\n')), { a: 1, b: ['x', '${NOT_SUBSTITUTED}'] });
  assert.equal(codeOf(() => parseYaml(Buffer.from('a: 1\na: 2\n'))), 'bad-request');
  assert.equal(codeOf(() => parseYaml(Buffer.from('a: [1, 2'))), 'bad-request');
});

test('merge patch (RFC 7396 examples)', () => {
  assert.deepEqual(mergePatch({ a: 'b' }, { a: 'c' }), { a: 'c' });
  assert.deepEqual(mergePatch({ a: 'b' }, { b: 'c' }), { a: 'b', b: 'c' });
  assert.deepEqual(mergePatch({ a: 'b' }, { a: null }), {});
  assert.deepEqual(mergePatch({ a: 'b', b: 'c' }, { a: null }), { b: 'c' });
  assert.deepEqual(mergePatch({ a: ['b'] }, { a: 'c' }), { a: 'c' });
  assert.deepEqual(mergePatch({ a: { b: 'c' } }, { a: { b: 'd', c: null } }), { a: { b: 'd' } });
  assert.deepEqual(mergePatch({ a: [{ b: 'c' }] }, { a: [1] }), { a: [1] });
  assert.deepEqual(mergePatch({ e: null }, { a: 1 }), { e: null, a: 1 });
  assert.deepEqual(mergePatch([1, 2], { a: 'b', c: null }), { a: 'b' });
  assert.deepEqual(mergePatch({}, { a: { bb: { ccc: null } } }), { a: { bb: {} } });
});
