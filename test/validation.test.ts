/**
 * request-validator end to end: a gateway in-process (HTTP/1.1 and h2c) in front of real
 * loopback upstreams (node:http), an OpenAPI document on disk, plain JSON Schemas on a route,
 * response validation against an upstream that misbehaves on purpose, hostile bodies.
 */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import { Gateway } from '../src/server/gateway.js';
import { loadConfigFile } from '../src/config/load.js';
import { registerPlugin } from '../src/plugins/registry.js';
import { definePlugin } from '../src/plugins/types.js';
import { Type } from '@sinclair/typebox';
import {
  eventually, freePort, rawRequest, request, startGateway, startUpstream, statuses, type TestGateway, type TestUpstream,
} from './helpers.js';

const T = { timeout: 20_000 };

const SPEC = `openapi: 3.0.3
info: {title: users, version: "1"}
servers: [{url: "https://api.example.com/v1"}]
paths:
  /users:
    get:
      operationId: listUsers
      parameters:
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 50}}
        - {name: role, in: query, schema: {type: array, items: {type: string, enum: [admin, member]}}}
        - {name: X-Tenant, in: header, required: true, schema: {type: string, pattern: "^[a-z]+$"}}
      responses:
        "200":
          description: ok
          content: {application/json: {schema: {type: array, items: {$ref: "#/components/schemas/User"}}}}
    post:
      operationId: createUser
      requestBody:
        required: true
        content: {application/json: {schema: {$ref: "#/components/schemas/NewUser"}}}
      responses:
        "201": {description: created, content: {application/json: {schema: {$ref: "#/components/schemas/User"}}}}
  /users/{id}:
    parameters: [{name: id, in: path, required: true, schema: {type: integer, minimum: 1}}]
    get:
      operationId: getUser
      responses:
        "200": {description: ok, content: {application/json: {schema: {$ref: "#/components/schemas/User"}}}}
        "404": {description: missing}
    delete:
      operationId: deleteUser
      responses: {"204": {description: gone}}
components:
  schemas:
    NewUser:
      type: object
      required: [user]
      additionalProperties: false
      properties:
        user:
          type: object
          required: [name, email]
          additionalProperties: false
          properties:
            name: {type: string, minLength: 1, maxLength: 40}
            email: {type: string, format: email}
            nickname: {type: string, nullable: true}
            tags: {type: array, items: {type: object}, uniqueItems: true}
            children: {type: array, items: {$ref: "#/components/schemas/NewUser"}}
    User:
      type: object
      required: [id, name]
      properties:
        id: {type: integer, readOnly: true}
        name: {type: string}
`;

let dir: string;
let up: TestUpstream;
/** An upstream whose answers the tests choose (by path). */
let liar: TestUpstream;
let t: TestGateway;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tp-validation-'));
  writeFileSync(join(dir, 'users.yaml'), SPEC);
  up = await startUpstream();
  liar = await startUpstream((req, res) => {
    const u = req.url ?? '';
    if (u.startsWith('/users/1')) return void res.writeHead(200, { 'content-type': 'application/json' }).end('{"id": 1, "name": "ada"}');
    if (u.startsWith('/users/2')) return void res.writeHead(200, { 'content-type': 'application/json' }).end('{"id": "SECRET-INTERNAL-ID", "debug": "stack at db.js:42"}');
    if (u.startsWith('/users/3')) return void res.writeHead(200, { 'content-type': 'text/html' }).end('<h1>SECRET-INTERNAL</h1>');
    if (u.startsWith('/users/4')) return void res.writeHead(500, { 'content-type': 'text/plain' }).end('upstream broke');
    if (u.startsWith('/users/5')) return void res.writeHead(418, { 'content-type': 'text/plain' }).end('teapot');
    if (u.startsWith('/users/6')) return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: 6, name: 'x'.repeat(5000) }));
    if (u.startsWith('/users/7')) return void res.writeHead(404).end();
    // Honours Range (206 with the bytes asked for); 8 is a valid user, 9 one with a field the document does not allow
    if (u.startsWith('/users/8') || u.startsWith('/users/9')) {
      const full = u.startsWith('/users/8') ? '{"id": 8, "name": "eve"}' : '{"id": "SECRET-9", "name": "mallory"}';
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (m === null) return void res.writeHead(200, { 'content-type': 'application/json', 'accept-ranges': 'bytes' }).end(full);
      return void res.writeHead(206, { 'content-type': 'application/json', 'content-range': `bytes ${m[1]}-${m[2]}/${full.length}` }).end(full.slice(Number(m[1]), Number(m[2]) + 1));
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end('[]');
  });
  const file = join(dir, 'users.yaml');
  t = await startGateway(`http2: {h2c: true}
services:
  - name: users
    url: ${up.url}
    routes:
      - {name: users, paths: [/v1/users, /users]}
    plugins:
      - name: request-validator
        config: {openapi: ${file}, max_body: 64kb}
  - name: checked
    url: ${liar.url}
    routes:
      - {name: checked, paths: ['/users/{id}']}
    plugins:
      - name: request-validator
        config: {openapi: ${file}, validate_response: true, max_response: 4kb}
  - name: plain
    url: ${up.url}
    routes:
      - name: events
        paths: [/events]
        methods: [POST]
        plugins:
          - name: request-validator
            config:
              body_schema: {type: object, required: [kind], properties: {kind: {enum: [click, view]}, at: {type: integer}}}
              query_schema: {type: object, properties: {dry: {type: boolean}}, additionalProperties: false}
      - name: lenient
        paths: [/lenient]
        plugins: [{name: request-validator, config: {openapi: ${file}, allow_unknown_operations: true}}]
  - name: prefixed
    url: ${up.url}
    routes:
      # (a route of its own host: for the router, /v1/users/0 is this route's too)
      - name: v2
        hosts: [prefixed.test]
        paths: [/v1]
        plugins: [{name: request-validator, config: {openapi: ${file}, allow_unknown_operations: true}}]
`);
});

after(async () => {
  await t?.close();
  await up?.close();
  await liar?.close();
});

interface Problem { type: string; status: number; title: string; detail: string; request_id: string; errors?: { in: string; path: string; message?: string }[] }
const problem = (body: string) => JSON.parse(body) as Problem;
const tenant = { 'x-tenant': 'acme' };
const jsonHeaders = { ...tenant, 'content-type': 'application/json' };

test('a valid request reaches the upstream unchanged (base path from servers[], or none)', T, async () => {
  const n = up.requests.length;
  const r = await request(`${t.url}/v1/users?limit=5&role=admin&role=member`, { headers: tenant });
  assert.equal(r.status, 200, r.body);
  assert.equal(up.requests[n]?.url, '/v1/users?limit=5&role=admin&role=member');
  const body = JSON.stringify({ user: { name: 'Ada', email: 'ada@example.com', nickname: null, children: [{ user: { name: 'B', email: 'b@example.com' } }] } });
  const p = await request(`${t.url}/users`, { method: 'POST', headers: jsonHeaders, body });
  assert.equal(p.status, 200, p.body);
  assert.equal(up.requests.at(-1)?.body.toString(), body, 'the body goes upstream byte for byte');
  assert.equal(up.requests.at(-1)?.headers['content-length'], String(Buffer.byteLength(body)));
});

test('invalid parameters and body: 400 validation-failed listing every violation; the upstream never sees it', T, async () => {
  const n = up.requests.length;
  const q = await request(`${t.url}/v1/users?limit=500&role=root`, { headers: { 'x-tenant': 'ACME!' } });
  assert.equal(q.status, 400, q.body);
  assert.match(String(q.headers['content-type']), /^application\/problem\+json/);
  const p = problem(q.body);
  assert.equal(p.type, 'urn:turnpike:problem:validation-failed');
  assert.equal(p.title, 'Request Validation Failed');
  assert.equal(p.request_id, q.headers['x-request-id']);
  assert.deepEqual(p.errors, [
    { in: 'query', path: '/limit', message: 'must be <= 50' },
    { in: 'query', path: '/role/0', message: 'must be equal to one of the allowed values' },
    { in: 'header', path: '/x-tenant', message: 'must match pattern "^[a-z]+$"' },
  ]);
  assert.match(p.detail, /^3 violations: query \/limit: must be <= 50/);

  const b = await request(`${t.url}/users`, {
    method: 'POST', headers: jsonHeaders,
    body: JSON.stringify({ user: { name: '', email: 'nope', admin: true, tags: [{}, {}], children: [{ user: { name: 7, email: 'c@example.com' } }] } }),
  });
  assert.equal(b.status, 400, b.body);
  assert.deepEqual(problem(b.body).errors?.map((e) => `${e.in} ${e.path}`).sort(), [
    'body /user/admin', 'body /user/children/0/user/name', 'body /user/email', 'body /user/name', 'body /user/tags',
  ]);
  const missing = await request(`${t.url}/users`, { method: 'POST', headers: tenant });
  assert.equal(missing.status, 400);
  assert.deepEqual(problem(missing.body).errors, [{ in: 'body', path: '', message: 'a request body is required' }]);
  const path = await request(`${t.url}/users/0`, { method: 'DELETE' });
  assert.equal(path.status, 400);
  assert.deepEqual(problem(path.body).errors, [{ in: 'path', path: '/id', message: 'must be >= 1' }]);
  assert.equal(up.requests.length, n, 'nothing invalid went upstream');
});

test('not JSON: 400 bad-request naming the position; undeclared media type: 415; over max_body: 413', T, async () => {
  const n = up.requests.length;
  const bad = await request(`${t.url}/users`, { method: 'POST', headers: jsonHeaders, body: '{"user": {"name": "a",\n  "email": }}' });
  assert.equal(bad.status, 400);
  assert.equal(problem(bad.body).type, 'urn:turnpike:problem:bad-request');
  assert.equal(problem(bad.body).detail, "request body is not valid JSON: unexpected '}' at line 2, column 12 (offset 34)");
  const text = await request(`${t.url}/users`, { method: 'POST', headers: { ...tenant, 'content-type': 'text/plain' }, body: 'hi' });
  assert.equal(text.status, 415);
  assert.equal(problem(text.body).type, 'urn:turnpike:problem:unsupported-media-type');
  assert.match(problem(text.body).detail, /accepted: application\/json/);
  const big = await request(`${t.url}/users`, { method: 'POST', headers: jsonHeaders, body: JSON.stringify({ user: { name: 'x'.repeat(70_000) } }) });
  assert.equal(big.status, 413);
  assert.equal(problem(big.body).type, 'urn:turnpike:problem:payload-too-large');
  // Chunked, no length declared: cut at the cap too.
  const raw = await rawRequest(t.port, `POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${(70_000).toString(16)}\r\n${'['.repeat(70_000)}\r\n0\r\n\r\n`, 1000);
  assert.deepEqual(statuses(raw.text), [413], raw.text.slice(0, 300));
  assert.equal(up.requests.length, n);
});

test('operations the document does not have: 404 and 405 with Allow; allow_unknown_operations lets them through', T, async () => {
  const nf = await request(`${t.url}/users/7/avatar`, { headers: tenant });
  assert.equal(nf.status, 404);
  assert.match(problem(nf.body).detail, /\/users\/7\/avatar is not a path of the API description/);
  const na = await request(`${t.url}/v1/users`, { method: 'PUT', headers: tenant });
  assert.equal(na.status, 405);
  assert.equal(na.headers['allow'], 'GET, HEAD, POST');
  const lenient = await request(`${t.url}/lenient/anything?x=1`);
  assert.equal(lenient.status, 200);
});

test('allow_unknown_operations lets through what is no operation, not a path an upstream reads as one (/users%2F0 is deleteUser to a server that decodes %2F)', T, async () => {
  const n = up.requests.length;
  const host = { ...tenant, host: 'prefixed.test' };
  for (const path of ['/v1/users%2F0', '/v1/users%5C0']) {
    const r = await request(`${t.url}${path}`, { method: 'DELETE', headers: host });
    assert.equal(r.status, 400, `${path}: ${r.body}`);
    assert.match(problem(r.body).detail, /ambiguous path: .* it is operation deleteUser/);
  }
  assert.equal(up.requests.length, n, 'none reached the upstream unvalidated');
  assert.equal((await request(`${t.url}/v1/users/0`, { method: 'DELETE', headers: host })).status, 400, 'validated as written');
  assert.equal((await request(`${t.url}/v1/anything`, { headers: host })).status, 200, 'no operation in any reading: let through');
  assert.equal(up.requests.length, n + 1);
});

test('a path in another case than an operation\'s is a 400, not an unknown operation let through: the router forwards /v1/USERS/0 on the /v1 route, and ASP.NET serves it as /users/{id}', T, async () => {
  const host = { ...tenant, host: 'prefixed.test' };
  const n = up.requests.length;
  for (const [method, path, op] of [['DELETE', '/v1/USERS/0', 'deleteUser'], ['GET', '/v1/USERS?limit=500', 'listUsers'], ['POST', '/v1/Users', 'createUser']] as const) {
    const r = await request(`${t.url}${path}`, { method, headers: host });
    assert.equal(r.status, 400, `${path}: ${r.body}`);
    assert.match(problem(r.body).detail, new RegExp(`read case-insensitively, as many servers do, it is operation ${op}`));
  }
  assert.equal(up.requests.length, n, 'none reached the upstream unvalidated');
  // a parameter's value in capitals is no other case of the path
  assert.equal((await request(`${t.url}/v1/users/7`, { headers: host })).status, 200);
  assert.equal((await request(`${t.url}/v1/users/ABC`, { headers: host })).status, 400, 'validated as getUser: id must be an integer');
});

test('hostile bodies: 100k levels of nesting, a huge array, __proto__ keys; the gateway keeps serving', T, async () => {
  const started = Date.now();
  const deep = await request(`${t.url}/users`, { method: 'POST', headers: jsonHeaders, body: '['.repeat(30_000) + ']'.repeat(30_000) });
  assert.equal(deep.status, 400);
  assert.equal(problem(deep.body).detail, 'request body is nested deeper than 128 levels');
  const deeper = await request(`${t.url}/users`, { method: 'POST', headers: jsonHeaders, body: '{"user":'.repeat(7_000) + '1' + '}'.repeat(7_000) });
  assert.equal(deeper.status, 400);
  // A 64 KiB array of objects under uniqueItems: linear, not pairwise.
  const tags = Array.from({ length: 6_000 }, (_, i) => ({ i }));
  const huge = await request(`${t.url}/users`, { method: 'POST', headers: jsonHeaders, body: JSON.stringify({ user: { name: 'a', email: 'a@example.com', tags } }) });
  assert.equal(huge.status, 200, huge.body);
  const proto = await request(`${t.url}/users`, { method: 'POST', headers: jsonHeaders, body: '{"user": {"name": "a", "email": "a@example.com", "__proto__": {"isAdmin": true}}}' });
  assert.equal(proto.status, 400);
  assert.deepEqual(problem(proto.body).errors, [{ in: 'body', path: '/user/__proto__', message: 'is not allowed (unknown property)' }]);
  assert.equal(({} as Record<string, unknown>)['isAdmin'], undefined);
  assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
  assert.equal((await request(`${t.url}/v1/users`, { headers: tenant })).status, 200);
});

test('HTTP/2 without Content-Length: the body is read and validated (h2c)', T, async () => {
  const session: ClientHttp2Session = h2connect(t.url);
  try {
    const send = (body: string) => new Promise<{ status: number; body: string }>((resolve, reject) => {
      const s = session.request({ ':method': 'POST', ':path': '/users', 'content-type': 'application/json', 'x-tenant': 'acme' });
      let out = '';
      let status = 0;
      s.on('response', (h) => (status = Number(h[':status'])));
      s.on('data', (d: Buffer) => (out += d.toString()));
      s.on('end', () => resolve({ status, body: out }));
      s.on('error', reject);
      s.end(body);
    });
    assert.equal((await send(JSON.stringify({ user: { name: 'h2', email: 'h2@example.com' } }))).status, 200);
    const bad = await send('{"user": {}}');
    assert.equal(bad.status, 400);
    assert.deepEqual(problem(bad.body).errors?.map((e) => e.path), ['/user/name', '/user/email']);
    const empty = await send('');
    assert.equal(empty.status, 400);
    assert.deepEqual(problem(empty.body).errors, [{ in: 'body', path: '', message: 'a request body is required' }]);
  } finally {
    session.close();
  }
});

test('plain JSON Schemas on a route: body and query', T, async () => {
  const ok = await request(`${t.url}/events?dry=true`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"kind": "click", "at": 1}' });
  assert.equal(ok.status, 200, ok.body);
  const bad = await request(`${t.url}/events?dry=perhaps&x=1`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"kind": "scroll"}' });
  assert.equal(bad.status, 400);
  assert.deepEqual(problem(bad.body).errors?.map((e) => `${e.in} ${e.path}`).sort(), ['body /kind', 'query /dry', 'query /x']);
});

test('validate_response: a response that breaks the document is a 502 with pointers only; good ones pass intact', T, async () => {
  const good = await request(`${t.url}/users/1`);
  assert.equal(good.status, 200, good.body);
  assert.equal(good.body, '{"id": 1, "name": "ada"}');
  assert.equal(good.headers['content-length'], String(good.body.length));

  const bad = await request(`${t.url}/users/2`);
  assert.equal(bad.status, 502, bad.body);
  const p = problem(bad.body);
  assert.equal(p.type, 'urn:turnpike:problem:invalid-upstream-response');
  assert.deepEqual(p.errors?.sort((a, b) => a.path.localeCompare(b.path)), [{ in: 'body', path: '/id' }, { in: 'body', path: '/name' }]);
  assert.doesNotMatch(bad.body, /SECRET|db\.js/, 'nothing of what the upstream sent');

  const html = await request(`${t.url}/users/3`);
  assert.equal(html.status, 502);
  assert.deepEqual(problem(html.body).errors, [{ in: 'header', path: '/content-type' }]);
  assert.doesNotMatch(html.body, /SECRET/);

  // An undeclared 5xx is the upstream's own failure: passed on; an undeclared 4xx is a violation.
  const broke = await request(`${t.url}/users/4`);
  assert.equal(broke.status, 500);
  assert.equal(broke.body, 'upstream broke');
  const teapot = await request(`${t.url}/users/5`);
  assert.equal(teapot.status, 502);
  assert.deepEqual(problem(teapot.body).errors, [{ in: 'status', path: '' }]);
  const missing = await request(`${t.url}/users/7`);
  assert.equal(missing.status, 404, 'a declared status without content');
  // Over max_response: the gateway does not hold it.
  const big = await request(`${t.url}/users/6`);
  assert.equal(big.status, 502);
  assert.equal(problem(big.body).type, 'urn:turnpike:problem:upstream-response-too-large');
  // A HEAD is checked as its GET, without a body.
  assert.equal((await request(`${t.url}/users/1`, { method: 'HEAD' })).status, 200);
});

test('validate_response: a Range request gets the whole response once checked (a 206 piece cannot be, nor may it leak a piece of a bad one)', T, async () => {
  const good = await request(`${t.url}/users/8`, { headers: { range: 'bytes=0-9', 'if-range': '"x"' } });
  assert.equal(good.status, 200, good.body);
  assert.equal(good.body, '{"id": 8, "name": "eve"}');
  assert.equal(liar.requests.at(-1)!.headers.range, undefined);
  assert.equal(liar.requests.at(-1)!.headers['if-range'], undefined);
  const bad = await request(`${t.url}/users/9`, { headers: { range: 'bytes=6-15' } });
  assert.equal(bad.status, 502);
  assert.deepEqual(problem(bad.body).errors, [{ in: 'body', path: '/id' }]);
  assert.doesNotMatch(bad.body, /SECRET/);
});

test('the openapi path is relative to the config file', T, async (t2) => {
  // Which directory create() is handed: the core passes the config file's directory (baseDir).
  let seen: unknown = 'unset';
  registerPlugin(definePlugin({
    name: 'probe-base-dir', priority: 1, description: 'test probe', schema: Type.Object({}), scopes: ['global'],
    create(_c, deps) {
      seen = (deps as { baseDir?: unknown }).baseDir;
      return {};
    },
  }));
  const sub = join(dir, 'conf');
  mkdirSync(sub, { recursive: true });
  writeFileSync(join(sub, 'spec.yaml'), SPEC);
  const cfgFile = join(sub, 'turnpike.yaml');
  writeFileSync(cfgFile, `listen: 127.0.0.1:0
access_log: {enabled: false}
plugins: [{name: probe-base-dir}]
services:
  - name: s
    url: ${up.url}
    routes: [{name: r, paths: [/users]}]
    plugins: [{name: request-validator, config: {openapi: spec.yaml}}]
`);
  let gw: Gateway | null = null;
  try {
    gw = await Gateway.start(loadConfigFile(cfgFile));
  } catch (e) {
    if (seen === undefined) return t2.skip(`the core does not pass the config directory to plugins yet (PluginDeps.baseDir): ${(e as Error).message.split('\n')[0]}`);
    throw e;
  }
  try {
    const url = `http://127.0.0.1:${gw.proxyAddress!.port}`;
    assert.equal((await request(`${url}/users?limit=2`, { headers: tenant })).status, 200);
    assert.equal((await request(`${url}/users?limit=0`, { headers: tenant })).status, 400);
  } finally {
    await gw.stop();
  }
});

// ---- turnpike import openapi, through the built CLI (npm run build first) ----------------------

const REPO = process.cwd();
const BIN = join(REPO, 'bin', 'turnpike.js');

/** Runs the built CLI to completion (bounded): exit code, stdout, stderr. */
function cli(args: string[], cwd: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', timeout: 20_000, env: { ...process.env, TURNPIKE_LOG_LEVEL: 'silent' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('turnpike import openapi: writes a config that `turnpike validate` accepts and `turnpike start` serves', T, async () => {
  const work = mkdtempSync(join(tmpdir(), 'tp-import-e2e-'));
  mkdirSync(join(work, 'specs'));
  mkdirSync(join(work, 'gw'));
  // Templates the router spells differently ({user-id}, {name}.{ext}), a server base path.
  writeFileSync(join(work, 'specs', 'users.yaml'), SPEC.replace(/\/users\/\{id\}/g, '/users/{user-id}').replace('{name: id, in: path', '{name: user-id, in: path').replace('components:\n',
    '  /files/{name}.{ext}:\n' +
    '    get:\n' +
    '      operationId: get file\n' +
    '      parameters: [{name: name, in: path, required: true, schema: {type: string}}, {name: ext, in: path, required: true, schema: {enum: [png]}}]\n' +
    '      responses: {"200": {description: ok}}\n' +
    'components:\n'));

  // To stdout, the spec path relative to the working directory.
  const printed = cli(['import', 'openapi', 'specs/users.yaml', '--service-url', up.url], work);
  assert.equal(printed.code, 0, printed.stderr);
  assert.match(printed.stdout, /openapi: \.\/specs\/users\.yaml\n/);
  assert.match(printed.stdout, /paths: \["\/users\/\{user_id\}"\]/);
  assert.match(printed.stdout, /name: get-file\n\s+paths: \["\/files\/\{name_ext\}"\]/);

  // To a file: the spec path relative to it.
  const cfg = join(work, 'gw', 'turnpike.yaml');
  const written = cli(['import', 'openapi', join(work, 'specs', 'users.yaml'), '--service-url', up.url, '--name', 'users', '--out', cfg], REPO);
  assert.equal(written.code, 0, written.stderr);
  assert.equal(written.stderr, `${cfg}: 3 routes for 5 operations\n`);
  const text = readFileSync(cfg, 'utf8');
  assert.match(text, /openapi: \.\.\/specs\/users\.yaml\n/);

  // validate, from the config's directory (relative paths are relative to it)...
  const v = cli(['validate', '--config', 'turnpike.yaml'], join(work, 'gw'));
  assert.equal(v.code, 0, v.stderr);
  assert.equal(v.stdout, 'turnpike.yaml: valid\n');
  // ... and from elsewhere, once the core hands plugins the config's directory.
  const elsewhere = cli(['validate', '--config', cfg], REPO);
  if (elsewhere.code !== 0) assert.match(elsewhere.stderr, /cannot read .*specs\/users\.yaml: ENOENT/, 'the only failure expected before PluginDeps.baseDir');

  // start it (on a free port) and send requests through.
  const port = await freePort();
  writeFileSync(cfg, text.replace('listen: 127.0.0.1:8080', `listen: 127.0.0.1:${port}\naccess_log: {enabled: false}`));
  const child = spawn(process.execPath, [BIN, 'start', '--config', 'turnpike.yaml'], { cwd: join(work, 'gw'), stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, TURNPIKE_LOG_LEVEL: 'silent' } });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  try {
    const url = `http://127.0.0.1:${port}`;
    await eventually(async () => (await request(`${url}/files/a.png`).catch(() => ({ status: 0 }))).status === 200, 10_000, 50).catch((e: Error) => {
      throw new Error(`${e.message}\n${stderr}`);
    });
    const n = up.requests.length;
    assert.equal((await request(`${url}/users?limit=3`, { headers: tenant })).status, 200);
    assert.equal(up.requests[n]?.url, '/users?limit=3');
    assert.equal((await request(`${url}/users/9`, { method: 'HEAD' })).status, 200, 'HEAD listed with GET');
    const bad = await request(`${url}/users?limit=0`, { headers: tenant });
    assert.equal(bad.status, 400);
    assert.deepEqual(problem(bad.body).errors, [{ in: 'query', path: '/limit', message: 'must be >= 1' }]);
    assert.equal((await request(`${url}/files/a.gif`)).status, 400, 'the validator checks the parts of a mixed segment');
    assert.equal((await request(`${url}/users/x`)).status, 400);
  } finally {
    child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([exited, new Promise((r) => (timer = setTimeout(() => r('no exit within 10 s'), 10_000)))]);
    clearTimeout(timer);
    assert.equal(code, 0, stderr);
  }

  // Errors: exit 1 with the reason; usage errors exit 2.
  writeFileSync(join(work, 'swagger.json'), '{"swagger": "2.0", "paths": {}}');
  const sw = cli(['import', 'openapi', 'swagger.json'], work);
  assert.equal(sw.code, 1);
  assert.equal(sw.stderr, 'swagger.json: Swagger 2.0 is not supported: convert it to OpenAPI 3 first\n');
  const noUrl = cli(['import', 'openapi', 'specs/users.yaml'], work);
  assert.equal(noUrl.code, 0, 'servers[0].url is the default service URL');
  assert.match(noUrl.stdout, /url: https:\/\/api\.example\.com\/v1\n/);
  assert.equal(cli(['import', 'openapi'], work).code, 2);
});

test('a field node:http keeps the first copy of (User-Agent, Referer, From...) is validated in every copy: an upstream may read the last', T, async () => {
  const origin = await startUpstream();
  const g = await startGateway(`services:
  - name: h
    url: ${origin.url}
    routes:
      - paths: [/h]
        plugins:
          - name: request-validator
            config: {header_schema: {type: object, properties: {user-agent: {type: string, pattern: '^[a-z]+/[0-9.]+$'}, from: {type: string, format: email}}}}
`);
  try {
    const send = (fields: string) => rawRequest(g.port, `GET /h HTTP/1.1\r\nHost: x\r\n${fields}Connection: close\r\n\r\n`, 2000);
    for (const fields of ['User-Agent: good/1.0\r\nUser-Agent: <script>\r\n', 'From: a@example.com\r\nFrom: not-an-email\r\n', 'user-agent: good/1.0\r\nUSER-AGENT: good/2.0\r\n']) {
      const r = await send(fields);
      assert.deepEqual(statuses(r.text), [400], fields);
      assert.match(r.text, /validation-failed/);
    }
    assert.equal(origin.requests.length, 0);
    // one copy each: as before
    assert.deepEqual(statuses((await send('User-Agent: good/1.0\r\nFrom: a@example.com\r\n')).text), [200]);
    assert.deepEqual(statuses((await send('User-Agent: bad agent\r\n')).text), [400]);
  } finally {
    await g.close();
    await origin.close();
  }
});
