/**
 * request-validator's core, called directly: operation matching, parameter styles and
 * coercion, bodies and media types, OpenAPI 3.0 / 3.1 schema dialects, $refs, responses,
 * hostile input (deep nesting, huge arrays, __proto__, catastrophic patterns), config checks.
 * End to end through a gateway: test/validation.test.ts.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateRawSync, deflateSync, gzipSync } from 'node:zlib';
import { ApiValidator, MAX_SHOWN_PATH, serverBasePaths, type Outcome, type Operation } from './validator.js';
import { describeJsonError, parseJson } from '../../core/json.js';
import { PathMatcher } from './matcher.js';
import { catastrophic } from './spec.js';
import { parseQuery } from './params.js';
import { configIssues } from '../../../test/helpers.js';

const opts = { maxDepth: 64, allowUnsafePatterns: false, responses: true, warn: () => {} };

interface Req { query?: string; headers?: Record<string, string>; body?: string | Buffer; hasBody?: boolean | null }

async function check(v: ApiValidator, method: string, path: string, r: Req = {}): Promise<Outcome> {
  const f = v.find(method, path);
  if (!('op' in f)) return f;
  const body = r.body === undefined ? Buffer.alloc(0) : Buffer.from(r.body);
  const headers = Object.fromEntries(Object.entries(r.headers ?? {}).map(([k, x]) => [k.toLowerCase(), x]));
  return v.check(f.op, f.params, {
    method, path, query: r.query ?? '',
    header: (n) => headers[n],
    hasBody: r.hasBody !== undefined ? r.hasBody : body.length > 0,
    readBody: async () => body,
  });
}

const errorsOf = (o: Outcome) => (!o.ok && o.code === 'validation-failed' ? o.errors : []);
const json = { 'content-type': 'application/json' };

// A 3.0 document exercising most of what is supported.
const petstore = {
  openapi: '3.0.3',
  info: { title: 'pets', version: '1' },
  servers: [{ url: 'https://{host}/api/{version}', variables: { host: { default: 'example.com' }, version: { default: 'v1' } } }],
  paths: {
    '/pets': {
      get: {
        operationId: 'listPets',
        parameters: [
          { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 100 } },
          { name: 'tags', in: 'query', schema: { type: 'array', items: { type: 'string', enum: ['a', 'b', 'c'] } } },
          { name: 'ids', in: 'query', style: 'form', explode: false, schema: { type: 'array', items: { type: 'integer' } } },
          { name: 'piped', in: 'query', style: 'pipeDelimited', schema: { type: 'array', items: { type: 'integer' } } },
          { name: 'filter', in: 'query', style: 'deepObject', explode: true, schema: { type: 'object', properties: { kind: { type: 'string' }, min: { type: 'integer' } }, additionalProperties: false } },
          { name: 'verbose', in: 'query', schema: { type: 'boolean' } },
          { name: 'where', in: 'query', content: { 'application/json': { schema: { type: 'object', required: ['x'], properties: { x: { type: 'number' } } } } } },
          { $ref: '#/components/parameters/Trace' },
          { name: 'session', in: 'cookie', schema: { type: 'string', pattern: '^[a-f0-9]{8}$' } },
        ],
        responses: {
          '200': {
            description: 'ok',
            headers: { 'X-Total': { required: true, schema: { type: 'integer' } } },
            content: { 'application/json': { schema: { type: 'array', items: { $ref: '#/components/schemas/Pet' } } } },
          },
          '4XX': { description: 'client error', content: { 'application/problem+json': { schema: { type: 'object', required: ['title'] } } } },
        },
      },
      post: {
        operationId: 'createPet',
        requestBody: { $ref: '#/components/requestBodies/NewPet' },
        responses: { '201': { $ref: '#/components/responses/Created' } },
      },
    },
    '/pets/{petId}': {
      parameters: [{ name: 'petId', in: 'path', required: true, schema: { type: 'integer', format: 'int32', minimum: 1 } }],
      get: { operationId: 'getPet', responses: { '200': { description: 'ok', content: { 'application/json': { schema: { $ref: '#/components/schemas/Pet' } } } } } },
      patch: {
        operationId: 'patchPet',
        requestBody: { content: { 'application/merge-patch+json': { schema: { $ref: '#/components/schemas/Pet' } }, 'application/x-www-form-urlencoded': { schema: { type: 'object', properties: { name: { type: 'string' }, age: { type: 'integer' }, tags: { type: 'array', items: { type: 'string' } } }, required: ['name'] } } } },
        responses: { '204': { description: 'done' } },
      },
      delete: { responses: { '204': { description: 'gone' } } },
    },
    '/pets/mine': { get: { operationId: 'minePets', responses: { '200': { description: 'mine' } } } },
    '/files/{name}.{ext}': {
      get: {
        parameters: [
          { name: 'name', in: 'path', required: true, schema: { type: 'string', maxLength: 5 } },
          { name: 'ext', in: 'path', required: true, schema: { type: 'string', enum: ['png', 'jpg'] } },
        ],
        responses: { default: { description: 'file' } },
      },
    },
    '/uploads': {
      put: { requestBody: { required: true, content: { 'image/*': {}, 'application/octet-stream': {} } }, responses: { '204': { description: 'ok' } } },
    },
  },
  components: {
    parameters: { Trace: { name: 'X-Trace-Level', in: 'header', schema: { type: 'integer', maximum: 3 } } },
    requestBodies: { NewPet: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/Pet' } } } } },
    responses: { Created: { description: 'created', content: { 'application/json': { schema: { $ref: '#/components/schemas/Pet' } } } } },
    schemas: {
      Pet: {
        type: 'object',
        required: ['id', 'name', 'secret'],
        additionalProperties: false,
        properties: {
          id: { type: 'integer', readOnly: true },
          name: { type: 'string', minLength: 1, nullable: true },
          secret: { type: 'string', writeOnly: true },
          weight: { type: 'number', minimum: 0, exclusiveMinimum: true },
          owner: { allOf: [{ $ref: '#/components/schemas/Owner' }], nullable: true },
          kind: { type: 'string', enum: ['cat', 'dog'], nullable: true },
          tags: { type: 'array', items: { type: 'object' }, uniqueItems: true },
          children: { type: 'array', items: { $ref: '#/components/schemas/Pet' } },
          photo: { type: 'string', format: 'byte' },
          born: { type: 'string', format: 'date' },
        },
      },
      Owner: { type: 'object', required: ['email'], properties: { email: { type: 'string', format: 'email' } } },
    },
  },
};

const pets = ApiValidator.openapi(petstore, opts);

test('operations: method + path template, server base path, literal before template, 404/405', async () => {
  const find = (m: string, p: string) => {
    const f = pets.find(m, p);
    return 'op' in f ? { id: f.op.id, params: { ...f.params } } : f;
  };
  assert.deepEqual(pets.basePaths, ['/api/v1', '']);
  assert.deepEqual(find('GET', '/api/v1/pets'), { id: 'listPets', params: {} });
  assert.deepEqual(find('GET', '/pets'), { id: 'listPets', params: {} }, 'the paths as they are (service URL carries the base path)');
  assert.deepEqual(find('GET', '/api/v1/pets/7'), { id: 'getPet', params: { petId: '7' } });
  assert.deepEqual(find('GET', '/pets/mine'), { id: 'minePets', params: {} }, 'a concrete path beats a template');
  assert.deepEqual(find('PATCH', '/pets/mine'), { id: 'patchPet', params: { petId: 'mine' } }, 'the template serves the methods the concrete path lacks');
  assert.deepEqual(find('HEAD', '/pets/3'), { id: 'getPet', params: { petId: '3' } }, 'HEAD falls back to GET');
  assert.deepEqual(find('GET', '/pets/3/'), { id: 'getPet', params: { petId: '3' } }, 'trailing slash');
  assert.deepEqual(find('GET', '/files/cat.png'), { id: 'GET /files/{name}.{ext}', params: { name: 'cat', ext: 'png' } });
  const nf = pets.find('GET', '/api/v1/dogs');
  assert.ok(!('op' in nf) && nf.code === 'no-route');
  const na = pets.find('PUT', '/pets');
  assert.ok(!('op' in na) && na.code === 'method-not-allowed');
  assert.deepEqual((na as { allow: string[] }).allow, ['GET', 'HEAD', 'POST'], 'HEAD, served where GET is, is allowed too');
  const naGet = pets.find('PUT', '/pets/mine');
  assert.deepEqual(!('op' in naGet) && naGet.code === 'method-not-allowed' && naGet.allow, ['DELETE', 'GET', 'HEAD', 'PATCH']);
  assert.ok(!('op' in pets.find('GET', '/api/v1/pets/1/2')), 'no extra segments');
});

test('serverBasePaths: variables at their defaults, relative URLs, no trailing slash, longest first', () => {
  assert.deepEqual(serverBasePaths([{ url: '/' }, { url: 'https://x.example/api/' }, { url: '/api/v2/beta' }, { url: '{scheme}://h/{v}', variables: { scheme: { default: 'https' }, v: { default: 'v9' } } }, { url: 'https://h/{undefined}/x' }]), ['/api/v2/beta', '/api', '/v9']);
  assert.deepEqual(serverBasePaths(undefined), []);
});

test('query parameters: coercion, arrays (explode, form, pipe), deepObject, JSON content, unknown ones pass', async () => {
  assert.deepEqual(await check(pets, 'GET', '/pets', { query: '?limit=10&tags=a&tags=b&ids=1,2,3&piped=4|5&filter[kind]=cat&filter[min]=2&verbose=true&where=%7B%22x%22%3A1%7D&other=x' }), { ok: true });
  assert.deepEqual(await check(pets, 'GET', '/pets', { query: '?tags=a' }), { ok: true }, 'a single value is an array of one');
  const bad = await check(pets, 'GET', '/pets', { query: '?limit=abc&tags=z&ids=1,x&piped=4|y&filter[kind]=cat&filter[nope]=1&verbose=maybe&where=%7Bbad' });
  const got = errorsOf(bad).map((e) => `${e.in} ${e.path}`);
  for (const want of ['query /limit', 'query /tags/0', 'query /ids/1', 'query /piped/1', 'query /filter/nope', 'query /verbose', 'query /where']) assert.ok(got.includes(want), `${want} in ${got.join(', ')}`);
  assert.equal(bad.ok === false && bad.code, 'validation-failed');
  assert.match((bad as { detail: string }).detail, /^7 violations: query \/where: is not valid JSON: expected a property name but found 'b' at line 1, column 2 \(offset 1\); query \/limit: must be integer; /);
  const limit = errorsOf(await check(pets, 'GET', '/pets', { query: '?limit=0' }));
  assert.deepEqual(limit, [{ in: 'query', path: '/limit', message: 'must be >= 1' }]);
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets', { query: '?limit=1&limit=2' })).map((e) => e.path), ['/limit'], 'a repeated scalar');
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets', { query: '?where=%7B%7D' })), [{ in: 'query', path: '/where/x', message: 'is required' }]);
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets', { query: '?limit=%zz' })), [{ in: 'query', path: '/limit', message: 'invalid percent-encoding' }]);
});

test('a query or form parameter spelled as another server reads a declared one (ASP.NET: any case; PHP: . and space as _) is a violation, not an unknown parameter that passes', async () => {
  const message = (n: string) => `is parameter "${n}" to servers that read names in any case (ASP.NET) or . and space as _ (PHP): send it as spelled`;
  // limit is at most 100: LIMIT=100000 would be checked by nothing and bound to limit by ASP.NET
  for (const [q, name] of [['?LIMIT=100000', 'LIMIT'], ['?Limit=100000', 'Limit'], ['?limit=5&LIMIT=100000', 'LIMIT'], ['?%4CIMIT=100000', 'LIMIT']] as const) {
    assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets', { query: q })), [{ in: 'query', path: `/${name}`, message: message('limit') }], q);
  }
  // an exploded object's properties are parameters of their own
  const v = ApiValidator.schemas({ query: { type: 'object', properties: { user_id: { type: 'integer', maximum: 10 } } }, body: { type: 'object' }, bodyRequired: false }, opts);
  for (const q of ['?user.id=99', '?user%20id=99', '?USER_ID=99', '?User.Id=99']) {
    const got = errorsOf(await check(v, 'GET', '/x', { query: q }));
    assert.equal(got.length, 1, q);
    assert.equal(got[0]!.message, message('user_id'), q);
  }
  assert.deepEqual(await check(v, 'GET', '/x', { query: '?user_id=9&other=1&user=1' }), { ok: true });
  // form bodies too
  const form = errorsOf(await check(pets, 'PATCH', '/pets/1', { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'name=rex&AGE=old' }));
  assert.deepEqual(form, [{ in: 'body', path: '/AGE', message: message('age') }]);
  // spelled as declared, or unknown in every spelling: as before
  assert.deepEqual(await check(pets, 'GET', '/pets', { query: '?limit=10&other=x&OTHER=y' }), { ok: true });
});

test('numbers in parameters are decimal text: 0x1F, 0b11, Infinity, " 5" are not integers (the upstream gets the text, not what JS coerces it to)', async () => {
  for (const v of ['0x5', '0b11', '0o7', 'Infinity', '%205', '5%20', '%20']) {
    const errs = errorsOf(await check(pets, 'GET', '/pets', { query: `?limit=${v}` }));
    assert.deepEqual([...new Set(errs.map((e) => `${e.in} ${e.path}`))], ['query /limit'], v);
  }
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets', { query: '?ids=1,0x2' })).map((e) => `${e.in} ${e.path}`), ['query /ids/1']);
  for (const v of ['5', '10', '1e1', '5.0']) assert.deepEqual(await check(pets, 'GET', '/pets', { query: `?limit=${v}` }), { ok: true }, v);
  assert.deepEqual(await check(pets, 'GET', '/pets', { query: '?limit=2&other=0x5' }), { ok: true }, 'a string parameter may look like anything');
});

test('path, header and cookie parameters', async () => {
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets/abc')), [{ in: 'path', path: '/petId', message: 'must be integer' }]);
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets/0')), [{ in: 'path', path: '/petId', message: 'must be >= 1' }]);
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets/3000000000')), [{ in: 'path', path: '/petId', message: 'must match format "int32"' }]);
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/files/toolong.gif')).map((e) => e.path), ['/name', '/ext']);
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/files/%41b.png')), [], 'path values are percent-decoded');
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets', { headers: { 'X-Trace-Level': '9' } })), [{ in: 'header', path: '/x-trace-level', message: 'must be <= 3' }]);
  assert.deepEqual(await check(pets, 'GET', '/pets', { headers: { 'X-Trace-Level': '2', cookie: 'a=1; session=deadbeef' } }), { ok: true });
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets', { headers: { cookie: 'session=nothex!!' } })), [{ in: 'cookie', path: '/session', message: 'must match pattern "^[a-f0-9]{8}$"' }]);
});

test('JSON bodies: required, $ref request bodies, 3.0 nullable / exclusiveMinimum / readOnly / formats, all violations listed', async () => {
  const ok = { name: 'rex', secret: 's', weight: 1.5, owner: null, kind: null, tags: [{ a: 1 }, { a: 2 }], photo: 'aGk=', born: '2020-02-29' };
  assert.deepEqual(await check(pets, 'POST', '/pets', { headers: json, body: JSON.stringify(ok) }), { ok: true }, 'readOnly id is not required in a request');
  assert.deepEqual(await check(pets, 'POST', '/pets', { headers: { 'content-type': 'application/json; charset=utf-8' }, body: JSON.stringify({ ...ok, name: null }) }), { ok: true }, 'nullable');
  const bad = await check(pets, 'POST', '/pets', {
    headers: json,
    body: JSON.stringify({ name: '', weight: 0, owner: { email: 'not-mail' }, kind: 'cow', tags: [{ a: 1 }, { a: 1 }], photo: '***', born: '2021-02-29', extra: 1, children: [{ name: 5, secret: 's' }] }),
  });
  const got = new Set(errorsOf(bad).map((e) => `${e.path} ${e.message}`));
  for (const want of [
    '/secret is required', '/name must NOT have fewer than 1 characters', '/weight must be > 0', '/owner/email must match format "email"',
    '/kind must be equal to one of the allowed values', '/tags must NOT have duplicate items (items ## 0 and 1 are identical)',
    '/photo must match format "byte"', '/born must match format "date"', '/extra is not allowed (unknown property)', '/children/0/name must be string,null',
  ]) assert.ok(got.has(want), `${want} in\n${[...got].join('\n')}`);
  assert.ok(errorsOf(bad).every((e) => e.in === 'body'));
  assert.deepEqual(errorsOf(await check(pets, 'POST', '/pets')), [{ in: 'body', path: '', message: 'a request body is required' }]);
  assert.deepEqual(errorsOf(await check(pets, 'POST', '/pets', { headers: json, body: '' })), [{ in: 'body', path: '', message: 'a request body is required' }]);
  // At most MAX_VIOLATIONS listed.
  const many = await check(pets, 'POST', '/pets', { headers: json, body: JSON.stringify({ ...ok, children: Array.from({ length: 50 }, () => ({ name: 1 })) }) });
  assert.equal(errorsOf(many).length, 20);
  assert.match((many as { detail: string }).detail, /^20\+ violations/);
});

test('bodies: media types (415), +json and wildcards, form bodies coerced, undeclared bodies pass', async () => {
  const u415 = await check(pets, 'POST', '/pets', { headers: { 'content-type': 'text/plain' }, body: 'x' });
  assert.equal(u415.ok === false && u415.code, 'unsupported-media-type');
  assert.match((u415 as { detail: string }).detail, /"text\/plain" is not accepted here \(accepted: application\/json\)/);
  const noCt = await check(pets, 'POST', '/pets', { body: '{}' });
  assert.equal(noCt.ok === false && noCt.code, 'unsupported-media-type');
  assert.deepEqual(errorsOf(await check(pets, 'PATCH', '/pets/1', { headers: { 'content-type': 'application/merge-patch+json' }, body: '{"name": 1, "secret": "x"}' })).map((e) => e.path), ['/name']);
  assert.deepEqual(await check(pets, 'PATCH', '/pets/1', { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'name=rex&age=4&tags=a&tags=b' }), { ok: true });
  assert.deepEqual(errorsOf(await check(pets, 'PATCH', '/pets/1', { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'age=old' })).map((e) => `${e.in} ${e.path}`), ['body /name', 'body /age']);
  // a form body's raw bytes that are not UTF-8 (an overlong '<') are refused, never checked as U+FFFD while they go upstream
  const overlong = Buffer.concat([Buffer.from('name='), Buffer.from([0xc0, 0xbc]), Buffer.from('script')]);
  assert.deepEqual(await check(pets, 'PATCH', '/pets/1', { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: overlong }),
    { ok: false, code: 'bad-request', detail: 'request body is not valid UTF-8 (a form body is UTF-8; other bytes go percent-encoded)' });
  assert.deepEqual(await check(pets, 'PATCH', '/pets/1', { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'name=caf%C3%A9&tags=caf\u00e9' }), { ok: true });
  assert.equal((await check(pets, 'PATCH', '/pets/1', { headers: json, body: '{}' })).ok, false, 'application/json is not declared here (415)');
  assert.deepEqual(await check(pets, 'PUT', '/uploads', { headers: { 'content-type': 'image/png' }, body: Buffer.from([0x89, 0x50]) }), { ok: true }, 'wildcard range');
  assert.equal((await check(pets, 'PUT', '/uploads', { headers: { 'content-type': 'video/mp4' }, body: 'x' }) as { code: string }).code, 'unsupported-media-type');
  assert.deepEqual(errorsOf(await check(pets, 'PUT', '/uploads', { headers: { 'content-type': 'image/png' } })), [{ in: 'body', path: '', message: 'a request body is required' }]);
  assert.deepEqual(await check(pets, 'GET', '/pets', { headers: { 'content-type': 'text/plain' }, body: 'ignored' }), { ok: true }, 'an operation without requestBody does not look');
  // HTTP/2 without Content-Length: reading tells whether there is a body.
  assert.deepEqual(errorsOf(await check(pets, 'POST', '/pets', { hasBody: null })), [{ in: 'body', path: '', message: 'a request body is required' }]);
  assert.deepEqual(await check(pets, 'PUT', '/uploads', { headers: { 'content-type': 'image/png' }, body: 'x', hasBody: null }), { ok: true });
});

test('a body that is not JSON: 400 bad-request naming the position, never echoing it', async () => {
  const o = await check(pets, 'POST', '/pets', { headers: json, body: '{"name": "a",\n "secret": }' });
  assert.deepEqual(o, { ok: false, code: 'bad-request', detail: "request body is not valid JSON: unexpected '}' at line 2, column 12 (offset 25)" });
  assert.equal(describeJsonError('{"a":1'), 'unexpected end of input at line 1, column 7 (offset 6)');
  assert.equal(describeJsonError('[1,2,]'), "unexpected ']' at line 1, column 6 (offset 5)");
  assert.equal(describeJsonError('{"a" 1}'), "expected ':' but found '1' at line 1, column 6 (offset 5)");
  assert.equal(describeJsonError('{"a":1}x'), "unexpected 'x' after the JSON value at line 1, column 8 (offset 7)");
  assert.equal(describeJsonError('"abc'), 'unterminated string at line 1, column 1 (offset 0)');
  assert.equal(describeJsonError('\uFEFF{}'), 'unexpected character U+FEFF at line 1, column 1 (offset 0)');
  assert.equal(describeJsonError('{"a":[1 2]}'), "expected ',' or ']' but found '2' at line 1, column 9 (offset 8)");
  assert.equal(describeJsonError(''), 'unexpected end of input at line 1, column 1 (offset 0)');
  assert.equal(describeJsonError('{"a":"\\x"}'), 'bad escape in string at line 1, column 7 (offset 6)');
  // Deep text: the describer does not recurse.
  assert.match(describeJsonError('['.repeat(200_000)), /unexpected end of input/);
});

test('hostile bodies: 100k levels of nesting, huge arrays under uniqueItems, __proto__ keys', async () => {
  const deep = '['.repeat(100_000) + ']'.repeat(100_000);
  let t = Date.now();
  const o = await check(pets, 'POST', '/pets', { headers: json, body: deep });
  assert.deepEqual(o, { ok: false, code: 'bad-request', detail: 'request body is nested deeper than 64 levels' });
  const deepObj = '{"children":['.repeat(50_000) + ']}'.repeat(50_000);
  assert.equal((await check(pets, 'POST', '/pets', { headers: json, body: deepObj }) as { code: string }).code, 'bad-request');
  // Within the depth limit but against a recursive schema: validated, no stack trouble.
  let nested: Record<string, unknown> = { name: 'leaf', secret: 's' };
  for (let i = 0; i < 30; i++) nested = { name: `n${i}`, secret: 's', children: [nested] };
  assert.deepEqual(await check(pets, 'POST', '/pets', { headers: json, body: JSON.stringify(nested) }), { ok: true });
  assert.ok(Date.now() - t < 2000, `deep bodies took ${Date.now() - t} ms`);

  // 200k object items under uniqueItems: ajv's own check is pairwise (O(n²), hours); ours is linear.
  t = Date.now();
  const tags = Array.from({ length: 200_000 }, (_, i) => ({ i }));
  assert.deepEqual(await check(pets, 'POST', '/pets', { headers: json, body: JSON.stringify({ name: 'x', secret: 's', tags }) }), { ok: true });
  tags.push({ i: 5 });
  assert.deepEqual(errorsOf(await check(pets, 'POST', '/pets', { headers: json, body: JSON.stringify({ name: 'x', secret: 's', tags }) })),
    [{ in: 'body', path: '/tags', message: 'must NOT have duplicate items (items ## 5 and 200000 are identical)' }]);
  // Key order does not make objects different.
  assert.equal(errorsOf(await check(pets, 'POST', '/pets', { headers: json, body: '{"name":"x","secret":"s","tags":[{"a":1,"b":2},{"b":2,"a":1}]}' })).length, 1);
  assert.ok(Date.now() - t < 5000, `huge arrays took ${Date.now() - t} ms`);

  // __proto__ is an own key of the parsed body: reported as unknown, the prototype untouched.
  const p = await check(pets, 'POST', '/pets', { headers: json, body: '{"name":"x","secret":"s","__proto__":{"polluted":true},"constructor":{"prototype":{"polluted":true}}}' });
  assert.deepEqual(errorsOf(p).map((e) => e.path), ['/__proto__', '/constructor']);
  assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
  // ... and in parameters.
  const q = await check(pets, 'GET', '/pets', { query: '?__proto__=1&filter[__proto__]=1&constructor=2' });
  assert.deepEqual(errorsOf(q), [{ in: 'query', path: '/filter/__proto__', message: 'is not allowed (unknown property)' }]);
  assert.equal(({} as Record<string, unknown>)['1'], undefined);
  assert.deepEqual(parseJson(Buffer.from('{"__proto__": 1}'), 8), { ok: true, value: JSON.parse('{"__proto__": 1}') });
});

test('a JSON body with a name given twice in one object is a violation at its pointer (validated as the last, a first-wins upstream would read the other)', async () => {
  const v = ApiValidator.schemas({ body: { type: 'object', properties: { role: { enum: ['user'] }, items: { type: 'array' } } }, bodyRequired: true }, opts);
  const dup = (body: string) => check(v, 'POST', '/x', { headers: json, body });
  const message = 'is given twice in one object (parsers disagree about which one counts)';
  assert.deepEqual(errorsOf(await dup('{"role":"admin","role":"user"}')), [{ in: 'body', path: '/role', message }]);
  // compared decoded; nested in objects and arrays; pointer escaped (RFC 6901)
  assert.deepEqual(errorsOf(await dup('{"role":"admin","r\\u006fle":"user"}')), [{ in: 'body', path: '/role', message }]);
  assert.deepEqual(errorsOf(await dup('{"items":[{"a":1},{"b":{"x/~y":1,"x/~y":2}}],"role":"user"}')), [{ in: 'body', path: '/items/1/b/x~1~0y', message }]);
  // the same name in different objects, in strings or as a value is no duplicate
  assert.deepEqual(await dup('{"role":"user","items":[{"role":1},{"role":2}],"s":"{\\"role\\":1,\\"role\\":2}","t":"role"}'), { ok: true });
  assert.deepEqual(await dup('{"a":{"a":{"a":1}},"role":"user"}'), { ok: true });
});

test('a JSON or form body in a charset other than UTF-8 is a 415: it would be validated as one text and read upstream as another (UTF-7)', async () => {
  const v = ApiValidator.schemas({ body: { type: 'object', additionalProperties: false, properties: { name: { type: 'string' } } }, bodyRequired: true }, opts);
  // UTF-8: one string, no `role`. UTF-7 (as Express's body-parser decodes a body of any `utf-*`
  // charset): +ACIALAAi- is `","` and +ACIAOgAi- is `":"`, so {"name":"x","role":"admin"}.
  const smuggled = '{"name":"x+ACIALAAi-role+ACIAOgAi-admin"}';
  for (const ct of ['application/json; charset=utf-7', 'application/json;charset="UTF-7"', 'Application/JSON; charset=utf-8; charset=utf-7', 'application/json; charset=utf-16le', 'application/json; charset=iso-8859-1; charset=utf-7']) {
    const o = await check(v, 'POST', '/x', { headers: { 'content-type': ct }, body: smuggled });
    assert.equal(o.ok === false && o.code, 'unsupported-media-type', ct);
    assert.match((o as { detail: string }).detail, /is validated as UTF-8: charset "(utf-7|utf-16le)" is not accepted/, ct);
  }
  // ISO-8859-x and windows-125x read ASCII as ASCII (an old Java client sends charset=ISO-8859-1):
  // a JSON body of ASCII bytes is the same text and is validated; one with other bytes is a 415
  for (const ct of ['application/json; charset=iso-8859-1', 'application/json; charset="ISO-8859-1"', 'application/json; charset=windows-1252']) {
    assert.deepEqual(await check(v, 'POST', '/x', { headers: { 'content-type': ct }, body: '{"name":"caf\\u00e9"}' }), { ok: true }, ct);
    assert.equal(errorsOf(await check(v, 'POST', '/x', { headers: { 'content-type': ct }, body: '{"name":"x","role":"admin"}' })).length, 1, ct);
    const latin = await check(v, 'POST', '/x', { headers: { 'content-type': ct }, body: Buffer.from('{"name":"caf\xe9"}', 'latin1') });
    assert.equal(latin.ok === false && latin.code, 'unsupported-media-type', ct);
    assert.match((latin as { detail: string }).detail, /charset "(iso-8859-1|windows-1252)" is not accepted/, ct);
  }
  // UTF-8, said or not (quoted, any case), and other parameters are fine
  // (utf8 and the other WHATWG labels of UTF-8 are UTF-8: clients send `charset=utf8`)
  for (const ct of ['application/json', 'application/json; charset=utf-8', 'application/json; Charset="UTF-8"', 'application/json; profile=x', 'application/json; charset=utf8', 'application/json; charset=UTF8']) {
    assert.deepEqual(await check(v, 'POST', '/x', { headers: { 'content-type': ct }, body: smuggled }), { ok: true }, ct);
  }
  // a hostile charset is not echoed whole
  const long = await check(v, 'POST', '/x', { headers: { 'content-type': `application/json; charset=${'x'.repeat(5000)}` }, body: '{}' });
  assert.ok((long as { detail: string }).detail.length < 200);
  // form bodies are read as UTF-8 too
  const form = await check(pets, 'PATCH', '/pets/1', { headers: { 'content-type': 'application/x-www-form-urlencoded; charset=windows-1252' }, body: 'name=rex' });
  assert.equal(form.ok === false && form.code, 'unsupported-media-type');
  // a body that is not validated (no schema for its type) is not looked at
  assert.deepEqual(await check(pets, 'PUT', '/uploads', { headers: { 'content-type': 'image/png; charset=utf-7' }, body: 'x' }), { ok: true });
});

test('violations do not echo the client\'s huge names: pointers are cut at MAX_SHOWN_PATH (a 1 MB key was sent back twice per violation)', async () => {
  const v = ApiValidator.schemas({
    body: { type: 'object', additionalProperties: false, properties: { name: { type: 'string' } } },
    query: { type: 'object', properties: { n: { type: 'integer' } } },
    bodyRequired: true,
  }, opts);
  const key = (i: number) => `${'k'.repeat(200_000)}${i}`;
  const body = JSON.stringify(Object.fromEntries(Array.from({ length: 5 }, (_, i) => [key(i), 1])));
  const o = await check(v, 'POST', '/x', { headers: json, body });
  const errors = errorsOf(o);
  assert.equal(errors.length, 5);
  for (const e of errors) {
    assert.equal(e.path, `/${'k'.repeat(MAX_SHOWN_PATH - 1)}...`);
    assert.equal(e.message, 'is not allowed (unknown property)');
  }
  assert.ok(JSON.stringify(o).length < 5000, `the answer is ${JSON.stringify(o).length} characters`);
  // a nested value under a huge name, a name given twice, a parameter name that does not decode
  const nested = await check(v, 'POST', '/x', { headers: json, body: `{"name":{"${'n'.repeat(100_000)}":1}}` });
  assert.ok(JSON.stringify(nested).length < 2000);
  const dup = await check(v, 'POST', '/x', { headers: json, body: `{"${'d'.repeat(100_000)}":1,"${'d'.repeat(100_000)}":2}` });
  assert.equal(errorsOf(dup).length, 1);
  assert.ok(JSON.stringify(dup).length < 2000);
  const q = await check(v, 'GET', '/x', { query: `?${'%'.repeat(6000)}=1&n=x` });
  assert.deepEqual(errorsOf(q).map((e) => e.path.length), [MAX_SHOWN_PATH + 3, 2]);
  // a short pointer is shown as it is
  assert.deepEqual(errorsOf(await check(v, 'POST', '/x', { headers: json, body: '{"role":1}' })), [{ in: 'body', path: '/role', message: 'is not allowed (unknown property)' }]);
  // an upstream's response: the same
  const doc = ApiValidator.openapi({
    openapi: '3.0.3', info: { title: 't', version: '1' },
    paths: { '/r': { get: { responses: { '200': { description: 'ok', content: { 'application/json': { schema: { type: 'object', additionalProperties: false } } } } } } } },
  }, opts);
  const f = doc.find('GET', '/r') as { op: Operation };
  const res = doc.checkResponse(f.op, 200, ['content-type', 'application/json'], Buffer.from(body), 10_000_000);
  assert.equal(res.length, 5);
  assert.ok(res.every((e) => e.path.length === MAX_SHOWN_PATH + 3));
});

test('a path an upstream reads as another operation (%2F, %5C decoded, ;params cut) is refused: it would be checked as one operation and served as the other', async () => {
  const body = (schema: object) => ({ required: true, content: { 'application/json': { schema } } });
  const doc = {
    openapi: '3.0.3', info: { title: 'users', version: '1' },
    paths: {
      '/users/{id}': { post: { operationId: 'updateUser', requestBody: body({ type: 'object' }), responses: { '200': { description: 'ok' } } } },
      '/users/{id}/roles': { post: { operationId: 'grantRole', requestBody: body({ type: 'object', required: ['role'], properties: { role: { enum: ['viewer'] } } }), responses: { '200': { description: 'ok' } } } },
      '/files/{name}': { get: { operationId: 'getFile', responses: { '200': { description: 'ok' } } } },
    },
  };
  for (const allowUnknown of [false, true]) {
    const v = ApiValidator.openapi(doc, opts);
    const post = async (path: string) => {
      const f = v.find('POST', path);
      if (!('op' in f)) return allowUnknown && f.code !== 'bad-request' ? { ok: true as const } : f;
      return v.check(f.op, f.params, { method: 'POST', path, query: '', header: (n) => (n === 'content-type' ? 'application/json' : undefined), hasBody: true, readBody: async () => Buffer.from('{"role":"admin"}') });
    };
    // checked as grantRole: the role is refused
    assert.equal((await post('/users/1/roles') as { code: string }).code, 'validation-failed');
    // grantRole to a server that decodes %2F / %5C or cuts ;params: refused, not checked as updateUser (or as nothing)
    for (const path of ['/users/1%2Froles', '/users/1%5Croles', '/users/1/roles;x', '/users/1;x%2Froles']) {
      const o = await post(path);
      assert.equal(o.ok === false && o.code, 'bad-request', `${path} (allow_unknown_operations: ${allowUnknown})`);
      assert.match((o as { detail: string }).detail, /ambiguous path: .* it is operation grantRole/);
    }
    // read as the same operation, or as none: served as it is
    assert.deepEqual(await post('/users/a%2Fb'), { ok: true });
    assert.deepEqual(await post('/users/1;v=2'), { ok: true });
    assert.ok('op' in v.find('GET', '/files/dir%2Fname.txt'));
  }
});

test('a path in another case than an operation\'s (/USERS: listUsers to ASP.NET, IIS, Express by default) is refused, not passed as no operation or checked as another one', async () => {
  const ok = { '200': { description: 'ok' } };
  const doc = {
    openapi: '3.0.3', info: { title: 'users', version: '1' }, servers: [{ url: 'https://api.example.com/v1' }],
    paths: {
      '/users': { get: { operationId: 'listUsers', responses: ok } },
      '/users/me': { get: { operationId: 'getMe', responses: ok } },
      '/users/{id}': { get: { operationId: 'getUser', responses: ok } },
      '/Reports/{id}': { get: { operationId: 'getReport', responses: ok } },
    },
  };
  const v = ApiValidator.openapi(doc, opts);
  const id = (path: string) => { const f = v.find('GET', path); return 'op' in f ? f.op.id : f.code; };
  for (const [path, op] of [['/USERS', 'listUsers'], ['/v1/Users', 'listUsers'], ['/V1/users', 'listUsers'], ['/users/ME', 'getMe'], ['/Users/7', 'getUser'], ['/reports/7', 'getReport'], ['/USERS/me%2F', 'getMe']] as const) {
    const f = v.find('GET', path);
    assert.equal(!('op' in f) && f.code, 'bad-request', path);
    assert.match((f as { detail: string }).detail, new RegExp(`ambiguous path: read case-insensitively, as many servers do, it is operation ${op}$`), path);
  }
  // as written, or only its parameters in capitals: the operation it is
  assert.equal(id('/v1/users'), 'listUsers');
  assert.equal(id('/users/me'), 'getMe');
  assert.equal(id('/users/AbC-7'), 'getUser');
  assert.equal(id('/Reports/X'), 'getReport');
  assert.equal(id('/ORDERS'), 'no-route');
  // (a method no case of the path has: no operation, refused as one, 404)
  const post = v.find('POST', '/USERS');
  assert.equal(!('op' in post) && post.code, 'no-route');
});

test('a cookie sent twice is checked in every copy: servers disagree about which one counts (Go, PHP, Express the first; Django the last)', async () => {
  const violation = [{ in: 'cookie', path: '/session', message: 'must match pattern "^[a-f0-9]{8}$"' }];
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets', { headers: { cookie: 'session=deadbeef; session=nothex!!' } })), violation);
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets', { headers: { cookie: 'session=nothex!!; session=deadbeef' } })), violation);
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets', { headers: { cookie: 'session=deadbeef; a=1; session=12345678; session="nothex!!"' } })), violation);
  // two valid copies (one per Path, as browsers send them) are fine
  assert.deepEqual(await check(pets, 'GET', '/pets', { headers: { cookie: 'session=deadbeef; other=1; session=12345678' } }), { ok: true });
  // more copies than a browser sends: refused, not checked one by one
  const many = Array.from({ length: 3000 }, (_, i) => `session=${(0xdead0000 + i).toString(16)}`).join('; ');
  const t = Date.now();
  assert.deepEqual(errorsOf(await check(pets, 'GET', '/pets', { headers: { cookie: many } })), [{ in: 'cookie', path: '/session', message: 'is sent 3000 times (at most 16)' }]);
  assert.ok(Date.now() - t < 1000, `${Date.now() - t} ms`);
});

test('OpenAPI 3.1: JSON Schema 2020-12 (type lists, const, prefixItems, unevaluatedProperties, $defs)', async () => {
  const v = ApiValidator.openapi({
    openapi: '3.1.0',
    info: { title: 't', version: '1' },
    paths: {
      '/things/{id}': {
        put: {
          parameters: [{ name: 'id', in: 'path', required: true, schema: { type: 'string', format: 'uuid' } }],
          requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/Thing' } } } },
          responses: { '200': { description: 'ok' } },
        },
      },
    },
    components: {
      schemas: {
        Thing: {
          type: 'object',
          properties: { kind: { const: 'thing' }, note: { type: ['string', 'null'] }, point: { type: 'array', prefixItems: [{ type: 'number' }, { type: 'number' }], items: false } },
          required: ['kind'],
          allOf: [{ $ref: '#/components/schemas/Base' }],
          unevaluatedProperties: false,
        },
        Base: { properties: { created: { type: 'string', format: 'date-time' } } },
      },
    },
  }, opts);
  const id = '6f1c1c9e-7b1a-4d59-9c4e-2a8c53e0f0a1';
  assert.deepEqual(await check(v, 'PUT', `/things/${id}`, { headers: json, body: '{"kind":"thing","note":null,"point":[1,2],"created":"2024-01-01T00:00:00Z"}' }), { ok: true });
  const bad = errorsOf(await check(v, 'PUT', '/things/not-a-uuid', { headers: json, body: '{"kind":"other","point":[1,2,3],"zzz":1}' }));
  assert.deepEqual(bad.map((e) => `${e.in} ${e.path}`).sort(), ['body /kind', 'body /point', 'body /zzz', 'path /id']);
});

test('responses: status, headers, media type, JSON body (writeOnly not required), gzip, undeclared 5xx passes', () => {
  const list = (pets.find('GET', '/pets') as { op: Operation }).op;
  const get = (pets.find('GET', '/pets/1') as { op: Operation }).op;
  const pet = { id: 1, name: 'rex' };
  assert.deepEqual(pets.checkResponse(get, 200, ['Content-Type', 'application/json'], Buffer.from(JSON.stringify(pet)), 1e6), [], 'writeOnly secret is not required in a response');
  assert.deepEqual(pets.checkResponse(get, 200, ['content-type', 'application/json'], Buffer.from('{"name":"rex"}'), 1e6), [{ in: 'body', path: '/id', message: 'is required' }]);
  assert.deepEqual(pets.checkResponse(list, 200, ['content-type', 'application/json', 'x-total', '1'], Buffer.from(JSON.stringify([pet])), 1e6), []);
  assert.deepEqual(pets.checkResponse(list, 200, ['content-type', 'application/json'], Buffer.from('[]'), 1e6), [{ in: 'header', path: '/x-total', message: 'is required' }]);
  assert.deepEqual(pets.checkResponse(list, 200, ['content-type', 'application/json', 'X-Total', 'many'], Buffer.from('[]'), 1e6), [{ in: 'header', path: '/x-total', message: 'must be integer' }]);
  assert.deepEqual(pets.checkResponse(list, 200, ['content-type', 'text/html', 'x-total', '1'], Buffer.from('<html>'), 1e6), [{ in: 'header', path: '/content-type', message: 'is not a declared media type of status 200' }]);
  assert.deepEqual(pets.checkResponse(list, 404, ['content-type', 'application/problem+json'], Buffer.from('{}'), 1e6), [{ in: 'body', path: '/title', message: 'is required' }], '4XX range');
  assert.deepEqual(pets.checkResponse(list, 302, [], Buffer.alloc(0), 1e6), [{ in: 'status', path: '', message: 'status 302 is not a declared response' }]);
  assert.equal(pets.responseSpec(list, 503), null, 'an undeclared 5xx is the upstream failing: passed on as it is');
  assert.equal(pets.responseSpec(list, 304), null, 'a 304 answers a conditional request');
  assert.deepEqual(pets.checkResponse(list, 200, ['content-type', 'application/json', 'x-total', '1'], Buffer.from('[{"id": 1'), 1e6), [{ in: 'body', path: '', message: 'is not valid JSON: unexpected end of input at line 1, column 10 (offset 9)' }]);
  const gz = gzipSync(JSON.stringify([{ id: 'x' }]));
  assert.deepEqual(pets.checkResponse(list, 200, ['content-type', 'application/json', 'content-encoding', 'gzip', 'x-total', '1'], gz, 1e6).map((e) => e.path).sort(), ['/0/id', '/0/name']);
  // deflate: zlib-wrapped (RFC 9110) or raw, as some servers send it
  for (const deflated of [deflateSync(JSON.stringify([{ id: 'x' }])), deflateRawSync(JSON.stringify([{ id: 'x' }]))]) {
    assert.deepEqual(pets.checkResponse(list, 200, ['content-type', 'application/json', 'content-encoding', 'deflate', 'x-total', '1'], deflated, 1e6).map((e) => e.path).sort(), ['/0/id', '/0/name']);
  }
  // A decompression bomb stops at the cap.
  const bomb = gzipSync(Buffer.alloc(5_000_000, 0x20));
  assert.deepEqual(pets.checkResponse(list, 200, ['content-type', 'application/json', 'content-encoding', 'gzip', 'x-total', '1'], bomb, 1e6), [{ in: 'body', path: '', message: 'cannot be decoded (gzip), or is larger than 1000000 bytes decoded' }]);
});

test('plain JSON Schemas: body (JSON only, required for POST/PUT/PATCH), query coerced, headers', async () => {
  const v = ApiValidator.schemas({
    body: { type: 'object', required: ['name'], properties: { name: { type: 'string' } } },
    query: { type: 'object', properties: { page: { type: 'integer' }, sort: { type: 'array', items: { enum: ['a', 'b'] } } }, additionalProperties: false },
    header: { type: 'object', required: ['X-Api-Version'], properties: { 'X-Api-Version': { type: 'integer', enum: [1, 2] } } },
    bodyRequired: true,
  }, opts);
  const h = { 'x-api-version': '2', ...json };
  assert.deepEqual(await check(v, 'POST', '/any/where', { headers: h, query: '?page=2&sort=a', body: '{"name":"x"}' }), { ok: true });
  assert.deepEqual(await check(v, 'POST', '/x', { headers: { ...h, 'content-type': 'application/vnd.api+json' }, body: '{"name":"x"}' }), { ok: true });
  const bad = errorsOf(await check(v, 'POST', '/x', { headers: json, query: '?page=x&sort=c&zzz=1', body: '{}' }));
  assert.deepEqual(bad.map((e) => `${e.in} ${e.path}`).sort(), ['body /name', 'header /X-Api-Version', 'query /page', 'query /sort/0', 'query /zzz']);
  assert.equal((await check(v, 'POST', '/x', { headers: { ...h, 'content-type': 'text/plain' }, body: 'x' }) as { code: string }).code, 'unsupported-media-type');
  assert.deepEqual(errorsOf(await check(v, 'POST', '/x', { headers: h })), [{ in: 'body', path: '', message: 'a request body is required' }]);
  assert.deepEqual(await check(v, 'GET', '/x', { headers: h }), { ok: true }, 'a GET needs no body');
  assert.deepEqual(errorsOf(await check(v, 'DELETE', '/x', { headers: h, body: '{}' })), [{ in: 'body', path: '/name', message: 'is required' }], 'but one it carries is checked');
  const optional = ApiValidator.schemas({ body: { type: 'object' }, bodyRequired: false }, opts);
  assert.deepEqual(await check(optional, 'POST', '/x'), { ok: true });
  // draft-04 boolean exclusiveMaximum; 2020-12 by $schema.
  const d4 = ApiValidator.schemas({ body: { $schema: 'http://json-schema.org/draft-04/schema#', type: 'number', maximum: 5, exclusiveMaximum: true }, bodyRequired: true }, opts);
  assert.equal(errorsOf(await check(d4, 'PUT', '/', { headers: json, body: '5' }))[0]?.message, 'must be < 5');
  const d20 = ApiValidator.schemas({ body: { $schema: 'https://json-schema.org/draft/2020-12/schema', type: 'array', prefixItems: [{ type: 'string' }] }, bodyRequired: true }, opts);
  assert.equal(errorsOf(await check(d20, 'PUT', '/', { headers: json, body: '[1]' }))[0]?.path, '/0');
});

test('catastrophic patterns are refused at create (unless allowed); safe ones pass', () => {
  for (const p of ['^(a+)+$', '(\\w+\\s?)*$', '^(([a-z])+.)+[A-Z]([a-z])+$', '(x{2,}){2,}', '((ab)*c)+', '(?:a|b+)*']) assert.equal(catastrophic(p), true, p);
  for (const p of ['^[a-z]+$', '^(ab)+$', '^([a-zA-Z0-9_\\-\\.]+)@([a-zA-Z0-9_\\-\\.]+)\\.([a-zA-Z]{2,5})$', '(a?)+', '[(a+)]+', '\\(a+\\)+', '^\\d{3}-\\d{4}$', '(a{1})+', '^\\p{L}+$']) assert.equal(catastrophic(p), false, p);
  const doc = { openapi: '3.0.0', paths: { '/x': { post: { requestBody: { content: { 'application/json': { schema: { $ref: '#/components/schemas/S' } } } }, responses: {} } } }, components: { schemas: { S: { type: 'string', pattern: '^(a+)+$' } } } };
  assert.throws(() => ApiValidator.openapi(doc, opts), /\/components\/schemas\/S\/pattern: pattern "\^\(a\+\)\+\$" repeats a group that itself repeats/);
  const v = ApiValidator.openapi(doc, { ...opts, allowUnsafePatterns: true });
  assert.equal(v.operations.length, 1);
});

test('document errors name the place', () => {
  const base = { openapi: '3.0.0', info: { title: 't', version: '1' } };
  assert.throws(() => ApiValidator.openapi({ swagger: '2.0' }, opts), /Swagger 2.0 is not supported/);
  assert.throws(() => ApiValidator.openapi({ openapi: '4.0.0' }, opts), /OpenAPI 4.0.0 is not supported/);
  assert.throws(() => ApiValidator.openapi({ ...base, paths: { '/a': { get: { parameters: [{ $ref: '#/components/parameters/Nope' }] } } } }, opts), /\/paths\/~1a\/get\/parameters\/0: \$ref "#\/components\/parameters\/Nope" names nothing/);
  assert.throws(() => ApiValidator.openapi({ ...base, paths: { '/a': { get: { parameters: [{ $ref: 'other.yaml#/P' }] } } } }, opts), /points outside the document/);
  assert.throws(() => ApiValidator.openapi({ ...base, paths: { '/a': { post: { requestBody: { content: { 'application/json': { schema: { $ref: '#/components/schemas/Missing' } } } } } } } }, opts), /\/paths\/~1a\/post \(request body application\/json\): can't resolve reference/);
  assert.throws(() => ApiValidator.openapi({ ...base, paths: { '/a/{x}': { get: {} }, '/a/{y}': { get: {} } } }, opts), /"\/a\/\{y\}" and "\/a\/\{x\}" are the same path template/);
  assert.throws(() => ApiValidator.openapi({ ...base, paths: { '/a': { get: { parameters: [{ name: 'q', in: 'query', schema: { type: 'nonsense' } }] } } } }, opts), /query parameters/);
});

test('PathMatcher: each trie node once (a hostile path costs the trie, not more)', () => {
  const m = new PathMatcher<number>();
  for (let i = 0; i < 200; i++) m.add(`/{a}/{b}/{c}/x${i}`, 'GET', i);
  m.add('/{a}/{b}/{c}/{d}', 'POST', -1);
  const t = Date.now();
  for (let i = 0; i < 1000; i++) assert.deepEqual(m.match('/1/2/3/nothing', 'GET'), { allow: ['POST'] });
  assert.ok(Date.now() - t < 1000);
  assert.equal((m.match('/1/2/3/x199', 'GET') as { value: number }).value, 199);
});

test('PathMatcher: templated segments match in linear time, as a lazy regex would (a hostile 8 KB segment; random segments against the regex)', () => {
  const m = new PathMatcher<number>();
  m.add('/reports/{year}-{month}-{day}.json', 'GET', 1);
  m.add('/files/{name}.{ext}', 'GET', 2);
  m.add('/pair/{a}{b}', 'GET', 3);
  // 'a-' repeated, no '.json': backtracked cubically as `^([^/]+?)-([^/]+?)-([^/]+?)\.json$` (14 s)
  const t = Date.now();
  assert.equal(m.match(`/reports/${'a-'.repeat(4096)}`, 'GET'), null);
  assert.equal(m.match(`/reports/${'a-'.repeat(4096)}.jso`, 'GET'), null);
  assert.ok(Date.now() - t < 500, `${Date.now() - t} ms`);
  const hit = m.match('/reports/2026-11-28.json', 'GET') as { params: Record<string, string> };
  assert.deepEqual({ ...hit.params }, { year: '2026', month: '11', day: '28' });
  assert.deepEqual({ ...(m.match('/files/a.tar.gz', 'GET') as { params: Record<string, string> }).params }, { name: 'a', ext: 'tar.gz' });
  assert.deepEqual({ ...(m.match('/pair/xyz', 'GET') as { params: Record<string, string> }).params }, { a: 'x', b: 'yz' });
  // Same answers as the regex the matcher replaced, on random segments over a small alphabet.
  const templates = ['{a}-{b}-{c}.json', '{a}.{b}', 'x{a}y{b}z', '{a}{b}{c}', 'v{a}', '{a}--{b}', '{a}.{b}.'];
  let seed = 7;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  for (const tpl of templates) {
    const one = new PathMatcher<string>();
    one.add(`/${tpl}`, 'GET', tpl);
    const names = [...tpl.matchAll(/\{(\w+)\}/g)].map((x) => x[1]!);
    const re = new RegExp(`^${tpl.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{\w+\}/g, '([^/]+?)')}$`);
    for (let i = 0; i < 3000; i++) {
      const seg = Array.from({ length: 1 + rnd(9) }, () => 'xyz-.a'[rnd(6)]).join('');
      const want = re.exec(seg);
      const got = one.match(`/${seg}`, 'GET') as { params: Record<string, string> } | null;
      assert.equal(got !== null, want !== null, `${tpl} on ${seg}`);
      if (want && got) assert.deepEqual(names.map((n) => got.params[n]), want.slice(1), `${tpl} on ${seg}`);
    }
  }
});

test('parseQuery: + is a space, bad escapes reported, empty pairs skipped', () => {
  const { values, bad } = parseQuery('?a=1+2&&b&c=%E2%82%AC&d=%zz&a=3');
  assert.deepEqual([...values], [['a', ['1 2', '3']], ['b', ['']], ['c', ['€']]]);
  assert.deepEqual(bad, ['d']);
});

test('config: one source, relative openapi path, errors at the binding with the document place', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tp-rv-'));
  writeFileSync(join(dir, 'ok.yaml'), 'openapi: 3.0.3\ninfo: {title: t, version: "1"}\npaths:\n  /a:\n    get:\n      responses: {"200": {description: ok}}\n');
  writeFileSync(join(dir, 'bad.yaml'), 'openapi: 3.0.3\npaths:\n  /a:\n    get:\n      parameters: [{$ref: "#/nope"}]\n');
  const cfg = (plugin: string) => `services:\n  - name: s\n    url: http://127.0.0.1:9\n    routes: [{name: r, paths: [/a]}]\n    plugins: [${plugin}]\n`;
  assert.deepEqual(configIssues(cfg(`{name: request-validator, config: {openapi: ${join(dir, 'ok.yaml')}}}`)), []);
  assert.deepEqual(configIssues(cfg('{name: request-validator, config: {spec: {openapi: 3.1.0, info: {title: t, version: "1"}, paths: {}}}}')), []);
  assert.deepEqual(configIssues(cfg('{name: request-validator, config: {body_schema: {type: object}, body_required: false}}')), []);
  const msgs = (text: string) => configIssues(text).map((i) => `${i.path}: ${i.message}`);
  assert.deepEqual(msgs(cfg('{name: request-validator}')), ['services[0].plugins[0].config: give openapi (a file), spec (inline), or body_schema / query_schema / header_schema']);
  assert.deepEqual(msgs(cfg('{name: request-validator, config: {openapi: a.yaml, body_schema: {}}}')), ['services[0].plugins[0].config: give one of openapi, spec, or the *_schema settings']);
  assert.deepEqual(msgs(cfg('{name: request-validator, config: {body_schema: {}, validate_response: true}}')), ['services[0].plugins[0].config: validate_response needs an OpenAPI document (openapi or spec)']);
  assert.match(msgs(cfg(`{name: request-validator, config: {openapi: ${join(dir, 'missing.yaml')}}}`))[0]!, /services\[0\]\.plugins\[0\]\.config: openapi: cannot read .*missing\.yaml: ENOENT/);
  assert.match(msgs(cfg(`{name: request-validator, config: {openapi: ${join(dir, 'bad.yaml')}}}`))[0]!, /config: openapi .*bad\.yaml: \/paths\/~1a\/get\/parameters\/0: \$ref "#\/nope" names nothing/);
  assert.match(msgs(cfg('{name: request-validator, config: {spec: {swagger: "2.0"}}}'))[0]!, /config: spec: Swagger 2.0 is not supported/);
  assert.match(msgs(cfg('{name: request-validator, config: {body_schema: {type: string, pattern: "(a+)+"}}}'))[0]!, /repeats a group/);
  assert.match(msgs(cfg('{name: request-validator, config: {max_depth: 0, body_schema: {}}}'))[0]!, /plugins\[0\]\.config\.max_depth/);
});

test('a $ref loop that never goes into the data is a document error naming it (not a stack overflow); recursive schemas still compile', () => {
  const base = { openapi: '3.0.0', info: { title: 't', version: '1' } };
  const body = (schemas: Record<string, unknown>) => ({ ...base, paths: { '/a': { post: { requestBody: { content: { 'application/json': { schema: { $ref: '#/components/schemas/A' } } } }, responses: {} } } }, components: { schemas } });
  const param = (schemas: Record<string, unknown>) => ({ ...base, paths: { '/a': { get: { parameters: [{ name: 'q', in: 'query', schema: { $ref: '#/components/schemas/A' } }], responses: {} } } }, components: { schemas } });
  const A = '/components/schemas/A';
  const B = '/components/schemas/B';
  for (const doc of [body, param]) {
    assert.throws(() => ApiValidator.openapi(doc({ A: { $ref: '#/components/schemas/A' } }), opts), (e: Error) => e.message.startsWith(`${A}: $ref loop (${A} -> ${A})`));
    assert.throws(() => ApiValidator.openapi(doc({ A: { $ref: '#/components/schemas/B' }, B: { $ref: '#/components/schemas/A' } }), opts), (e: Error) => e.message.startsWith(`${A}: $ref loop (${A} -> ${B} -> ${A})`));
    assert.throws(() => ApiValidator.openapi(doc({ A: { allOf: [{ type: 'object' }, { $ref: '#/components/schemas/A' }] } }), opts), (e: Error) => e.message.startsWith(`${A}: $ref loop (${A} -> ${A}/allOf/1 -> ${A})`));
    // 3.1 too
    assert.throws(() => ApiValidator.openapi({ ...doc({ A: { anyOf: [{ type: 'string' }, { $ref: '#/components/schemas/A' }] } }), openapi: '3.1.0' }, opts), /\$ref loop/);
    // Recursion through the data (properties, items) is no loop.
    const tree = { A: { type: 'object', properties: { kids: { type: 'array', items: { $ref: '#/components/schemas/B' } } } }, B: { anyOf: [{ $ref: '#/components/schemas/A' }, { type: 'string' }] } };
    assert.equal(ApiValidator.openapi(doc(tree), opts).operations.length, 1);
  }
  assert.throws(() => ApiValidator.schemas({ body: { $ref: '#' }, bodyRequired: true }, opts), /^Error: body_schema: \$ref loop \(# -> #\)/);
  assert.throws(() => ApiValidator.schemas({ body: { $defs: { x: { $ref: '#/$defs/x' } }, properties: { a: { $ref: '#/$defs/x' } } }, bodyRequired: true }, opts), /body_schema \/\$defs\/x: \$ref loop/);
  assert.equal(ApiValidator.schemas({ body: { type: 'object', properties: { next: { $ref: '#' } } }, bodyRequired: true }, opts).operations.length, 1);
});
