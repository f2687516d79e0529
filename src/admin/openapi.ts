/**
 * GET /api/openapi.json: an OpenAPI 3.1 document of the admin API, generated from the config
 * file's TypeBox schemas (src/config/schema.ts) and the auth plugins' credential schemas, so
 * the API documents exactly what the file accepts. Credentials' secret fields are writeOnly;
 * ids and derived fields are readOnly.
 */
import type { TSchema } from '@sinclair/typebox';
import { ComposeRoute, Consumer, PluginBinding, Route, Service, Target, TurnpikeConfig, Upstream } from '../config/schema.js';
import { PLUGINS } from '../plugins/registry.js';
import { PortalCredential } from '../portal/schema.js';
import { VERSION } from '../version.js';
import { SECRET_FIELDS } from './secrets.js';
import { NODE_LOCAL_KEYS } from './document.js';

type Json = Record<string, unknown>;

/** A TypeBox schema as plain JSON Schema (TypeBox's symbol keys dropped). */
const plain = (s: TSchema | Json): Json => JSON.parse(JSON.stringify(s)) as Json;

const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` });

function object(base: Json, opts: { drop?: string[]; add?: Record<string, Json>; first?: Record<string, Json>; required?: string[] | null; description?: string }): Json {
  const props = { ...(base['properties'] as Json) };
  for (const k of opts.drop ?? []) delete props[k];
  const out: Json = {
    ...base,
    properties: { ...(opts.first ?? {}), ...props, ...(opts.add ?? {}) },
  };
  const req = opts.required === null ? undefined : (opts.required ?? (base['required'] as string[] | undefined))?.filter((k) => k in (out['properties'] as Json));
  if (req && req.length) out['required'] = req;
  else delete out['required'];
  if (opts.description) out['description'] = opts.description;
  delete out['$id'];
  return out;
}

const readOnlyId = (what: string): Json => ({ type: 'string', readOnly: true, description: `The ${what}'s id (derived from its name; either addresses it).` });

function credentialSchemas(): Record<string, Json> {
  const out: Record<string, Json> = {};
  for (const [name, credential] of [...[...PLUGINS].map(([n, d]) => [n, d.credential] as const), ['portal', PortalCredential] as const]) {
    if (!credential) continue;
    const s = plain(credential);
    const props = { ...(s['properties'] as Json) };
    for (const k of Object.keys(props)) if (SECRET_FIELDS.includes(k)) props[k] = { ...(props[k] as Json), writeOnly: true };
    const idProp = props['id'] as Json | undefined;
    out[`Credential_${name.replace(/[^A-Za-z0-9]/g, '_')}`] = {
      ...s,
      properties: { id: idProp ? { ...idProp, description: `${String(idProp['description'] ?? '')} Read back as the credential's id.`.trim() } : { type: 'string', readOnly: true }, ...props },
      description: `A ${name} credential (secrets are write-only: never returned).`,
    };
  }
  return out;
}

function listOf(item: string): Json {
  return {
    type: 'object',
    required: ['data', 'total', 'offset', 'limit', 'next'],
    properties: {
      data: { type: 'array', items: ref(item) },
      total: { type: 'integer', description: 'Items matching the filters.' },
      offset: { type: 'integer' },
      limit: { type: 'integer' },
      next: { type: ['string', 'null'], description: 'The next page, or null.' },
    },
  };
}

const problem = (description: string): Json => ({ description, content: { 'application/problem+json': { schema: ref('Problem') } } });
const STD_ERRORS: Json = {
  '401': problem('No or unknown bearer token (WWW-Authenticate: Bearer).'),
  '403': problem('The token is read-only.'),
};
/** A read whose Accept rules out what it answers (JSON; the config and a revision: YAML too). */
const NOT_ACCEPTABLE: Json = { '406': problem('Accept rules out every type this read answers (application/json; the config and a revision: application/yaml too).') };
const WRITE_ERRORS: Json = {
  '400': problem('Invalid JSON, or the change does not validate (validation-failed, errors[] name the fields).'),
  '409': problem('The name exists, the item is in use, or the store does not take writes (read-only).'),
  '412': problem('If-Match does not match the current item (or revision), or If-None-Match does.'),
  '413': problem('The body is over the limit (8 MB).'),
  '415': problem('Content-Type is not application/json (PATCH: application/merge-patch+json or application/json; another patch format, e.g. JSON Patch, answers Accept-Patch).'),
  '503': problem('The config store is unavailable.'),
};

const json = (schema: Json, description: string, headers?: Json): Json => ({ description, content: { 'application/json': { schema } }, ...(headers ? { headers } : {}) });
const ETAG = { ETag: { schema: { type: 'string' }, description: 'The item\'s entity tag (If-Match on writes).' } };

const P = {
  limit: { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 1000, default: 100 } },
  offset: { name: 'offset', in: 'query', schema: { type: 'integer', minimum: 0, default: 0 } },
  tags: { name: 'tags', in: 'query', schema: { type: 'string' }, description: 'a,b: items with every tag; a/b: items with any.' },
  ifMatch: { name: 'If-Match', in: 'header', schema: { type: 'string' }, description: 'The item\'s ETag, "rN" (the config revision), or *; a list holds when any of its tags matches.' },
  ifNoneMatch: { name: 'If-None-Match', in: 'header', schema: { type: 'string' }, description: 'On a write: * (the target exists) or a tag equal to the current one makes it a 412 (* keeps a PUT from overwriting).' },
  ifNoneMatchRead: { name: 'If-None-Match', in: 'header', schema: { type: 'string' }, description: 'The ETag held (or *): 304 when it is still current (weak comparison).' },
  cascade: { name: 'cascade', in: 'query', schema: { type: 'boolean' }, description: 'Also delete what depends on it (a service\'s routes, bindings naming a consumer, a plan\'s users lose it).' },
  dryRun: { name: 'dry_run', in: 'query', schema: { type: 'boolean' }, description: 'Answer the diff without writing.' },
  secrets: { name: 'secrets', in: 'query', schema: { type: 'boolean' }, description: 'Include credentials\' secrets (admin tokens only).' },
};

const param = (name: string, description: string): Json => ({ name, in: 'path', required: true, schema: { type: 'string' }, description });

function crud(schema: string, what: string, opts: { filters?: string[]; parent?: Json; create?: boolean; del?: boolean; tag: string }): [Json, Json] {
  const parents = opts.parent ? [opts.parent] : [];
  const filters = (opts.filters ?? []).map((f) => ({ name: f, in: 'query', schema: { type: 'string' }, description: `Only items whose ${f} is this.` }));
  const collection: Json = {
    get: { tags: [opts.tag], summary: `List ${what}s`, parameters: [...parents, P.limit, P.offset, P.tags, ...filters], responses: { '200': json(listOf(schema), `A page of ${what}s.`, ETAG), ...NOT_ACCEPTABLE, ...STD_ERRORS } },
  };
  if (opts.create !== false) {
    collection['post'] = {
      tags: [opts.tag], summary: `Create a ${what}`, parameters: [...parents, P.ifMatch],
      requestBody: { required: true, content: { 'application/json': { schema: ref(schema) } } },
      responses: { '201': json(ref(schema), `The ${what} created (Location, ETag).`, ETAG), ...STD_ERRORS, ...WRITE_ERRORS },
    };
  }
  const id = param('id', `The ${what}'s name or id.`);
  const item: Json = {
    get: { tags: [opts.tag], summary: `Read a ${what}`, parameters: [...parents, id, P.ifNoneMatchRead, P.ifMatch], responses: { '200': json(ref(schema), `The ${what}.`, ETAG), '304': { description: 'If-None-Match matched.' }, '404': problem('No such item.'), '412': problem('If-Match does not hold (the item changed).'), ...NOT_ACCEPTABLE, ...STD_ERRORS } },
    put: {
      tags: [opts.tag], summary: `Replace a ${what}`, parameters: [...parents, id, P.ifMatch, P.ifNoneMatch],
      requestBody: { required: true, content: { 'application/json': { schema: ref(schema) } } },
      responses: { '200': json(ref(schema), `The ${what} as stored.`, ETAG), '404': problem('No such item.'), ...STD_ERRORS, ...WRITE_ERRORS },
    },
    patch: {
      tags: [opts.tag], summary: `Change a ${what} (JSON Merge Patch, RFC 7396)`, parameters: [...parents, id, P.ifMatch, P.ifNoneMatch],
      requestBody: { required: true, content: { 'application/merge-patch+json': { schema: { type: 'object' } }, 'application/json': { schema: { type: 'object' } } } },
      responses: { '200': json(ref(schema), `The ${what} as stored.`, ETAG), '404': problem('No such item.'), ...STD_ERRORS, ...WRITE_ERRORS },
    },
  };
  if (opts.del !== false) {
    item['delete'] = { tags: [opts.tag], summary: `Delete a ${what}`, parameters: [...parents, id, P.ifMatch, P.ifNoneMatch, P.cascade], responses: { '204': { description: 'Deleted.' }, '404': problem('No such item.'), ...STD_ERRORS, ...WRITE_ERRORS } };
  }
  return [collection, item];
}

/** The OpenAPI 3.1 document of the admin API mounted at `base`. */
export function openApiDocument(base = '/api'): Json {
  const config = plain(TurnpikeConfig);
  const cprops = config['properties'] as Json;
  const planValue = (((cprops['plans'] as Json)['patternProperties'] as Json) ?? {}) as Json;
  const plan = plain(Object.values(planValue)[0] as Json ?? { type: 'object' });
  const binding = plain(PluginBinding);
  const creds = credentialSchemas();

  const schemas: Record<string, Json> = {
    Problem: {
      type: 'object',
      description: 'RFC 9457 problem details; `type` is urn:turnpike:problem:<code>.',
      required: ['type', 'title', 'status', 'detail'],
      properties: {
        type: { type: 'string' }, title: { type: 'string' }, status: { type: 'integer' }, detail: { type: 'string' }, request_id: { type: 'string' },
        errors: { type: 'array', items: { type: 'object', required: ['path', 'message'], properties: { path: { type: 'string' }, message: { type: 'string' }, pointer: { type: 'string', description: 'Where the field is in the request body: a JSON Pointer in URI fragment form (#/paths/0, RFC 9457 §3); absent for a field elsewhere in the config.' }, line: { type: 'integer', description: 'The field\'s line in a YAML body (PUT /api/config).' } } }, description: 'validation-failed: the fields, in the API\'s terms.' },
      },
    },
    Service: object(plain(Service), {
      first: { id: readOnlyId('service') },
      drop: ['routes', 'plugins'],
      add: {
        routes: { type: 'array', items: plain(Route), writeOnly: true, description: 'Sets the service\'s routes in the same write (absent: kept). Read them at /routes?service=NAME.' },
        plugins: { type: 'array', items: plain(PluginBinding), writeOnly: true, description: 'Sets the service\'s plugin bindings (absent: kept). Read them at /plugins?service=NAME.' },
      },
    }),
    Route: object(plain(Route), {
      first: { id: readOnlyId('route'), name: (plain(Route)['properties'] as Json)['name'] as Json, service: { type: 'string', description: 'The service it proxies to (name or id). Absent on a composing route.' } },
      drop: ['plugins'],
      add: {
        compose: (plain(ComposeRoute)['properties'] as Json)['compose'] as Json,
        plugins: { type: 'array', items: plain(PluginBinding), writeOnly: true, description: 'Sets the route\'s bindings (absent: kept).' },
      },
      description: 'A route: proxies to `service`, or composes several backends (`compose`, no service).',
    }),
    Upstream: object(plain(Upstream), {
      first: { id: readOnlyId('upstream'), name: { type: 'string', readOnly: true, description: 'The service\'s name.' }, service: { type: 'string', readOnly: true } },
      description: 'A service\'s upstream (its `upstream` block, or its `url` shown as one target).',
    }),
    Target: object(plain(Target), { first: { id: readOnlyId('target') } }),
    Consumer: object(plain(Consumer), {
      drop: ['credentials', 'plugins'],
      add: {
        credentials: { type: 'array', items: ref('Credential'), writeOnly: true, description: 'Sets the credentials (absent: kept). Managed at /consumers/{name}/credentials.' },
        plugins: { type: 'array', items: plain(PluginBinding), writeOnly: true, description: 'Sets the consumer\'s own bindings (absent: kept).' },
      },
    }),
    ...creds,
    Credential: { oneOf: Object.keys(creds).map(ref), description: 'A credential; `type` names the auth plugin that checks it. Secrets are write-only.' },
    Plugin: object(binding, {
      first: { id: { type: 'string', readOnly: true, description: 'scope:owner:plugin[@consumer], e.g. service:orders:rate-limit' } },
      add: {
        scope: { type: 'string', enum: ['global', 'service', 'route', 'consumer'], description: 'Derived from service / route / consumer.' },
        service: { type: 'string', description: 'Bound to this service (or the route\'s service).' },
        route: { type: 'string', description: 'Bound to this route.' },
        consumer: { type: 'string', description: 'Alone: a consumer binding. With service or route: applies to this consumer only.' },
      },
      description: 'A plugin binding: global, or on a service, a route or a consumer.',
    }),
    Plan: object(plan, { first: { id: readOnlyId('plan'), name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._~-]*$', maxLength: 128 } }, required: ['name'] }),
    Config: {
      ...object(config, { drop: [...NODE_LOCAL_KEYS, '$schema'], required: null }),
      title: 'The config document (the declarative part of the config file)',
    },
    Revision: {
      type: 'object', required: ['revision', 'at', 'actor', 'action'],
      properties: { revision: { type: 'integer' }, at: { type: 'string', format: 'date-time' }, actor: { type: 'string' }, action: { type: 'string' } },
    },
    Changes: {
      type: 'object',
      description: 'Names added, removed and changed, by entity.',
      additionalProperties: { type: 'object', properties: { added: { type: 'array', items: { type: 'string' } }, removed: { type: 'array', items: { type: 'string' } }, changed: { type: 'array', items: { type: 'string' } } } },
    },
  };

  const paths: Record<string, Json> = {};
  const add = (path: string, pair: [Json, Json]) => {
    paths[`${base}/${path}`] = pair[0];
    paths[`${base}/${path}/{id}`] = pair[1];
  };
  add('services', crud('Service', 'service', { tag: 'services' }));
  add('routes', crud('Route', 'route', { tag: 'routes', filters: ['service'] }));
  add('upstreams', crud('Upstream', 'upstream', { tag: 'upstreams', create: false, del: false }));
  add('upstreams/{upstream}/targets', crud('Target', 'target', { tag: 'upstreams', parent: param('upstream', 'The service (upstream) name.') }));
  add('consumers', crud('Consumer', 'consumer', { tag: 'consumers' }));
  add('consumers/{consumer}/credentials', crud('Credential', 'credential', { tag: 'consumers', filters: ['type'], parent: param('consumer', 'The consumer\'s name or id.') }));
  add('plugins', crud('Plugin', 'plugin binding', { tag: 'plugins', filters: ['name', 'scope', 'service', 'route', 'consumer'] }));
  add('plans', crud('Plan', 'plan', { tag: 'plans' }));

  const yamlAndJson = { 'application/yaml': { schema: ref('Config') }, 'application/json': { schema: ref('Config') } };
  paths[`${base}/config`] = {
    get: {
      tags: ['config'], summary: 'Export the config document (YAML; Accept: application/json for JSON)', parameters: [P.secrets],
      responses: { '200': { description: 'The document (ETag "rN": its revision).', content: yamlAndJson, headers: ETAG }, ...NOT_ACCEPTABLE, ...STD_ERRORS },
    },
    put: {
      tags: ['config'], summary: 'Replace the config document atomically', parameters: [P.dryRun, P.ifMatch, P.ifNoneMatch],
      requestBody: { required: true, content: yamlAndJson },
      responses: {
        '200': json({ type: 'object', properties: { revision: { type: 'integer' }, changed: { type: 'boolean' }, dry_run: { type: 'boolean' }, changes: ref('Changes'), diff: { type: 'string', description: 'Unified diff of the YAML (dry_run).' } } }, 'Applied, unchanged, or (dry_run) the diff.'),
        ...STD_ERRORS, ...WRITE_ERRORS,
      },
    },
  };
  paths[`${base}/revisions`] = {
    get: {
      tags: ['revisions'], summary: 'The audit log, newest first',
      parameters: [P.limit, { name: 'before', in: 'query', schema: { type: 'integer' }, description: 'Revisions older than this one.' }],
      responses: { '200': json({ type: 'object', properties: { data: { type: 'array', items: ref('Revision') }, next: { type: ['string', 'null'] } } }, 'Revisions.'), ...NOT_ACCEPTABLE, ...STD_ERRORS },
    },
  };
  paths[`${base}/revisions/{n}`] = {
    get: {
      tags: ['revisions'], summary: 'One revision and its document', parameters: [param('n', 'The revision.'), P.secrets],
      responses: { '200': json({ allOf: [ref('Revision'), { type: 'object', properties: { document: ref('Config') } }] }, 'The revision.'), '404': problem('No such revision.'), ...NOT_ACCEPTABLE, ...STD_ERRORS },
    },
  };
  paths[`${base}/revisions/{n}/rollback`] = {
    post: {
      tags: ['revisions'], summary: 'Write a new revision with that revision\'s document', parameters: [param('n', 'The revision to go back to.'), P.dryRun, P.ifMatch],
      responses: { '200': json({ type: 'object', properties: { revision: { type: 'integer' }, rolled_back_to: { type: 'integer' }, changes: ref('Changes') } }, 'The new revision.'), '404': problem('No such revision.'), ...STD_ERRORS, ...WRITE_ERRORS },
    },
  };
  const developer: Json = {
    type: 'object',
    required: ['consumer', 'email', 'status', 'plan', 'created_at', 'keys'],
    properties: {
      consumer: { type: 'string' }, email: { type: 'string' },
      status: { enum: ['unverified', 'pending-approval', 'active'] },
      plan: { type: ['string', 'null'] }, requested_plan: { type: 'string' },
      created_at: { type: ['string', 'null'] }, keys: { type: 'integer', description: 'API keys held.' },
    },
  };
  paths[`${base}/developers`] = {
    get: {
      tags: ['developers'], summary: 'The developer portal\'s accounts',
      parameters: [
        { name: 'status', in: 'query', schema: { enum: ['unverified', 'pending-approval', 'active'] } },
        { name: 'pending', in: 'query', schema: { type: 'boolean' }, description: 'Only those awaiting an admin (a sign-up or a plan request).' },
        { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 1000, default: 100 } },
        { name: 'offset', in: 'query', schema: { type: 'integer', minimum: 0, default: 0 } },
      ],
      responses: { '200': json({ type: 'object', properties: { data: { type: 'array', items: developer }, total: { type: 'integer' }, offset: { type: 'integer' }, limit: { type: 'integer' }, next: { type: ['string', 'null'] } } }, 'Developers, a page of them.'), ...NOT_ACCEPTABLE, ...STD_ERRORS },
    },
  };
  for (const d of ['approve', 'reject'] as const) {
    paths[`${base}/developers/{consumer}/${d}`] = {
      post: {
        tags: ['developers'],
        summary: d === 'approve' ? 'Approve what awaits: the sign-up, and a requested plan (it becomes the plan)' : 'Refuse what awaits: a sign-up not approved yet deletes the consumer; a plan request is dropped',
        parameters: [param('consumer', 'The developer\'s consumer name.')],
        responses: { '200': json({ type: 'object', properties: { [d === 'approve' ? 'approved' : 'rejected']: { type: 'array', items: { type: 'string' } }, developer: { oneOf: [developer, { type: 'null' }] } } }, 'Done.'), '404': problem('No such developer.'), ...STD_ERRORS, ...WRITE_ERRORS },
      },
    };
  }
  paths[`${base}/openapi.json`] = { get: { tags: ['meta'], summary: 'This document', responses: { '200': json({ type: 'object' }, 'OpenAPI 3.1.') } } };

  return {
    openapi: '3.1.0',
    info: {
      title: 'Turnpike admin API',
      version: VERSION,
      description: 'CRUD of the gateway\'s config document (services, routes, upstreams, consumers, credentials, plugins, plans), its export / import, revisions and rollback. Bodies use the config file\'s field names. See docs/admin-api.md.',
    },
    jsonSchemaDialect: 'https://json-schema.org/draft/2020-12/schema',
    security: [{ bearer: [] }],
    paths,
    components: {
      schemas,
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'admin.token / admin.tokens (role admin: every method; read-only: GET).' } },
    },
  };
}
