import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { openApiDocument } from './openapi.js';
import { COLLECTIONS } from './resources.js';
import { sampleDocument } from './testing.js';
import type { Obj } from './document.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

test('openapi.json: OpenAPI 3.1 with every endpoint; component schemas compile (2020-12) and accept what the API returns', () => {
  const doc = openApiDocument('/api') as Json;
  assert.equal(doc['openapi'], '3.1.0');
  for (const p of [
    '/api/services', '/api/services/{id}', '/api/routes', '/api/routes/{id}', '/api/upstreams', '/api/upstreams/{id}',
    '/api/upstreams/{upstream}/targets', '/api/upstreams/{upstream}/targets/{id}', '/api/consumers', '/api/consumers/{id}',
    '/api/consumers/{consumer}/credentials', '/api/consumers/{consumer}/credentials/{id}', '/api/plugins', '/api/plugins/{id}',
    '/api/plans', '/api/plans/{id}', '/api/config', '/api/revisions', '/api/revisions/{n}', '/api/revisions/{n}/rollback', '/api/openapi.json',
  ]) assert.ok(doc['paths'][p], p);
  assert.deepEqual(Object.keys(doc['paths']['/api/upstreams']), ['get']);
  assert.deepEqual(Object.keys(doc['paths']['/api/upstreams/{id}']), ['get', 'put', 'patch']);
  assert.deepEqual(doc['components']['securitySchemes']['bearer'].scheme, 'bearer');

  const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
  ajv.addSchema(doc, 'api');
  const check = (name: string, value: unknown) => {
    const v = ajv.getSchema(`api#/components/schemas/${name}`);
    assert.ok(v, name);
    return { ok: v(value) as boolean, errors: v.errors };
  };
  for (const name of Object.keys(doc['components']['schemas'])) assert.ok(ajv.getSchema(`api#/components/schemas/${name}`), name);

  const sample = sampleDocument() as Obj;
  for (const [coll, schema] of [['services', 'Service'], ['routes', 'Route'], ['upstreams', 'Upstream'], ['consumers', 'Consumer'], ['plugins', 'Plugin'], ['plans', 'Plan']] as const) {
    for (const e of COLLECTIONS[coll].list(sample)) {
      const r = check(schema, e.view);
      assert.ok(r.ok, `${coll} ${e.name}: ${JSON.stringify(r.errors)}`);
    }
  }
  for (const e of COLLECTIONS.credentials.list(sample, 'acme')) assert.ok(check('Credential', e.tagged).ok, e.id);
  assert.ok(check('Config', sample).ok);
  assert.equal(check('Service', { name: 'x', url: 'http://x', bogus: 1 }).ok, false);
  assert.equal(check('Config', { listen: '127.0.0.1:1' }).ok, false); // node-local keys are not part of the document

  // secrets are writeOnly, ids readOnly
  const schemas = doc['components']['schemas'];
  assert.equal(schemas['Credential_key_auth'].properties.key.writeOnly, true);
  assert.equal(schemas['Credential_basic_auth'].properties.password.writeOnly, true);
  assert.equal(schemas['Credential_basic_auth'].properties.password_hash.writeOnly, true);
  assert.equal(schemas['Service'].properties.id.readOnly, true);
  assert.equal(schemas['Service'].properties.routes.writeOnly, true);
  assert.doesNotMatch(JSON.stringify(doc), /"\$id"/);
});

test('openapi.json documents the write preconditions the API evaluates: If-Match and If-None-Match on PUT / PATCH / DELETE and PUT /config', () => {
  const doc = openApiDocument('/api') as any; // eslint-disable-line @typescript-eslint/no-explicit-any
  const names = (op: any) => (op.parameters as { name: string; in: string }[]).filter((p) => p.in === 'header').map((p) => p.name); // eslint-disable-line @typescript-eslint/no-explicit-any
  for (const m of ['put', 'patch', 'delete']) assert.deepEqual(names(doc.paths['/api/services/{id}'][m]), ['If-Match', 'If-None-Match'], m);
  assert.deepEqual(names(doc.paths['/api/config'].put), ['If-Match', 'If-None-Match']);
  assert.match(doc.paths['/api/services/{id}'].patch.responses['415'].description, /Accept-Patch/);
});

test('openapi.json: reading an item lists If-None-Match (304) and If-Match (412), as the API evaluates them', () => {
  const doc = openApiDocument('/api') as Json;
  const get = doc['paths']['/api/services/{id}'].get;
  assert.deepEqual(get.parameters.filter((p: Json) => p['in'] === 'header').map((p: Json) => p['name']), ['If-None-Match', 'If-Match']);
  assert.ok(get.responses['304'] && get.responses['412']);
});
