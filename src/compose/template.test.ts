import test from 'node:test';
import assert from 'node:assert/strict';
import {
  TemplateError, parseJsonTemplate, parseTemplate, renderJson, renderPath, renderString, type Lookup, type ParseScope,
} from './template.js';

const scope: ParseScope = { params: new Set(['id']), steps: new Set(['user', 'orders']) };

function parse(text: string) {
  const errors: string[] = [];
  const t = parseTemplate(text, scope, errors);
  return { t, errors };
}

const values: Lookup = (src) => {
  switch (src.kind) {
    case 'param': return src.name === 'id' ? '../admin?x=1#y' : undefined;
    case 'query': return ({ q: 'a b&c=d', n: '7' } as Record<string, string>)[src.name];
    case 'header': return ({ 'x-evil': 'ok\r\nx-injected: 1', 'x-name': 'Ann' } as Record<string, string>)[src.name];
    case 'body': return src.path.join('.') === 'user.id' ? 42 : undefined;
    case 'step':
      if (src.part === 'status') return 200;
      if (src.part === 'headers') return src.name === 'etag' ? '"abc"' : undefined;
      return ({ tier: 'gold', 'items.0.id': 5, obj: undefined } as Record<string, unknown>)[src.path.join('.')] ?? (src.path.join('.') === 'whole' ? { a: [1, 2] } : undefined);
  }
};

test('references of every kind parse; unknown steps and parameters are errors', () => {
  assert.deepEqual(parse('/users/{id}/{user.body.tier}/{orders.status}/{user.headers.ETag}/{query.q}/{header.X-Name}/{body.a.b}').errors, []);
  assert.deepEqual(parse('{nope.body.x}').errors, ['{nope.body.x}: names an unknown step "nope"']);
  assert.match(parse('{uid}').errors[0]!, /capture no parameter "uid" \(they capture: id\)/);
  assert.match(parse('{user}').errors[0]!, /write \{user\.body\}/);
  assert.match(parse('{user.tier}').errors[0]!, /write \{user\.body\.\.\.\}/);
  assert.match(parse('{query}').errors[0]!, /write \{query\.NAME\}/);
  assert.match(parse('/a/{id').errors[0]!, /unclosed "\{"/);
  assert.match(parse('/a/}').errors[0]!, /unmatched "\}"/);
  assert.match(parse('{a..b}').errors[0]!, /not a valid reference/);
  assert.deepEqual(parse('{consumer.id}/{consumer.name}/{consumer.groups}/{consumer.identity}').errors, []);
  assert.match(parse('{consumer.email}').errors[0]!, /write \{consumer\.id\}/);
  // literal braces
  const lit = parse('{{x}}');
  assert.deepEqual(lit.errors, []);
  assert.equal(renderString(lit.t, 'header', values), '{x}');
});

test('path values are percent-encoded: ../, ?, # and / never change the path structure', () => {
  const { t } = parse('/users/{id}/orders');
  assert.equal(renderPath(t, () => 'a/b?x=1#y'), '/users/a%2Fb%3Fx%3D1%23y/orders');
  // dot segments hidden behind an encoded slash or backslash, or before ;params: an upstream
  // that decodes %2F and then normalizes would serve /admin
  for (const v of ['../admin', '..\\..\\admin', 'x/../../admin', '..\\', './x']) {
    assert.throws(() => renderPath(t, () => v), TemplateError, v);
  }
  // a value spelling %2F itself is encoded again (%252F): data, not a separator
  assert.equal(renderPath(parse('/users/{id}').t, () => '..%2Fadmin'), '/users/..%252Fadmin');
  // a value that would be a dot segment by itself fails
  const dots: Lookup = () => '..';
  assert.throws(() => renderPath(parse('/users/{id}').t, dots), TemplateError);
  assert.throws(() => renderPath(parse('/users/{id}').t, () => '.'), TemplateError);
  // %2e%2e spelled by the value itself is encoded again (%252e), so it stays data
  assert.equal(renderPath(parse('/users/{id}').t, () => '%2e%2e'), '/users/%252e%252e');
  // part of a segment is fine
  assert.equal(renderPath(parse('/files/{id}.json').t, dots), '/files/...json');
});

test('an empty value never leaves a whole path segment empty (/users//orders, /users/): a default may', () => {
  const blank: Lookup = () => '';
  for (const text of ['/users/{id}/orders', '/users/{id}', '/users/{id}/']) {
    assert.throws(() => renderPath(parse(text).t, blank), /template \{id\} is empty/, text);
  }
  const err = (() => { try { renderPath(parse('/u/{query.q}').t, blank); } catch (e) { return e as TemplateError; } })();
  assert.equal(err?.client, true);
  // part of a segment, or an explicit empty default: the config's path
  assert.equal(renderPath(parse('/files/x{id}.json').t, blank), '/files/x.json');
  assert.equal(renderPath(parse('/search/{query.none:-}').t, values), '/search/');
});

test('query values are encoded; header values refuse line breaks; scalars only', () => {
  assert.equal(renderString(parse('{query.q}').t, 'query', values), 'a%20b%26c%3Dd');
  assert.equal(renderString(parse('Hi {header.x-name}').t, 'header', values), 'Hi Ann');
  assert.throws(() => renderString(parse('{header.x-evil}').t, 'header', values), /line break/);
  assert.equal(renderString(parse('{user.status}').t, 'query', values), '200');
  assert.equal(renderString(parse('{user.headers.etag}').t, 'header', values), '"abc"');
  assert.throws(() => renderString(parse('{user.body.whole}').t, 'query', values), /not a string, number or boolean/);
});

test('a missing value fails unless the template gives a default', () => {
  assert.throws(() => renderString(parse('{query.page}').t, 'query', values), /template \{query\.page\} has no value/);
  assert.equal(renderString(parse('{query.page:-1}').t, 'query', values), '1');
  assert.equal(renderString(parse('{header.accept-language:-}').t, 'header', values), '');
  assert.equal(renderString(parse('{query.n:-1}').t, 'query', values), '7');
});

test('JSON bodies: a string that is one template keeps the value\'s type', () => {
  const errors: string[] = [];
  const j = parseJsonTemplate({ id: '{body.user.id}', name: 'user {body.user.id}', tier: '{user.body.tier}', all: '{user.body.whole}', n: 3, list: ['{orders.status}', 'x'], fixed: { a: 1 } }, scope, errors);
  assert.deepEqual(errors, []);
  assert.deepEqual(JSON.parse(JSON.stringify(renderJson(j, values))), { id: 42, name: 'user 42', tier: 'gold', all: { a: [1, 2] }, n: 3, list: [200, 'x'], fixed: { a: 1 } });
  assert.throws(() => renderJson(parseJsonTemplate({ x: '{query.missing}' }, scope, []), values), /has no value/);
  // keys are not templates; __proto__ is a member like any other
  const p = renderJson(parseJsonTemplate(JSON.parse('{"__proto__": "{query.n}"}'), scope, []), values) as Record<string, unknown>;
  assert.equal(JSON.stringify(p), '{"__proto__":"7"}');
});
