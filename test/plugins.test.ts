/**
 * The plugin pipeline end to end: test plugins registered with registerPlugin, a gateway
 * in-process, real upstreams (HTTP and WebSocket), HTTP/1.1, WebSocket and h2c clients.
 */
import { configIssues as issuesOf } from './helpers.js';
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import { connect as h2connect, type ClientHttp2Session, type IncomingHttpHeaders } from 'node:http2';
import { connect as connectTcp, type AddressInfo, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { Type } from '@sinclair/typebox';
import { pino } from 'pino';
import { WebSocket, WebSocketServer } from 'ws';
import { parseConfigText } from '../src/config/load.js';
import { compile } from '../src/config/compile.js';
import { ConfigError } from '../src/config/errors.js';
import { PoolRegistry } from '../src/upstream/pools.js';
import { Gateway } from '../src/server/gateway.js';
import { registerPlugin } from '../src/plugins/registry.js';
import { definePlugin, type PluginDef, type Reply, type Scope } from '../src/plugins/types.js';
import { eventually, request, sleep, startUpstream, type SimpleResponse, type TestUpstream } from './helpers.js';

const T = { timeout: 20_000 };
const ALL: Scope[] = ['global', 'service', 'route', 'consumer'];

// ---- test plugins ---------------------------------------------------------------------------

/** Sets an upstream header (default x-test-tag) to its config value: shows which binding ran. */
registerPlugin(definePlugin({
  name: 'test-tag',
  priority: 500,
  description: 'test: tags the upstream request',
  schema: Type.Object({ value: Type.String({ minLength: 1 }), header: Type.Optional(Type.String({ default: 'x-test-tag' })) }, { additionalProperties: false }),
  scopes: ALL,
  create(config) {
    return { access(ctx) { ctx.setUpstreamHeader(config.header ?? 'x-test-tag', config.value); } };
  },
}) as PluginDef);

/** Sets x-test-mark: bound only per consumer in the precedence test. */
registerPlugin(definePlugin({
  name: 'test-mark',
  priority: 400,
  description: 'test: marks the upstream request',
  schema: Type.Object({}),
  scopes: ALL,
  create() {
    return { access(ctx) { ctx.setUpstreamHeader('x-test-mark', ctx.consumer?.name ?? '-'); } };
  },
}) as PluginDef);

/** Phases in order: access appends to x-access-order upstream, responseHeaders to x-rh-order, log to logOrder. */
const logOrder: { tag: string | undefined; name: string }[] = [];
function orderPlugin(name: string, priority: number): PluginDef {
  return definePlugin({
    name,
    priority,
    description: 'test: records the phase order',
    schema: Type.Object({}),
    scopes: ALL,
    create() {
      return {
        access(ctx) {
          const order = ((ctx.vars['order'] as string[] | undefined) ??= []);
          order.push(name);
          ctx.setUpstreamHeader('x-access-order', order.join(','));
        },
        responseHeaders(_ctx, _status, headers) {
          const i = headers.findIndex((h, j) => j % 2 === 0 && h.toLowerCase() === 'x-rh-order');
          if (i === -1) headers.push('x-rh-order', name);
          else headers[i + 1] += `,${name}`;
        },
        log(ctx) {
          logOrder.push({ tag: ctx.header('x-tag'), name });
        },
      };
    },
  }) as PluginDef;
}
registerPlugin(orderPlugin('test-p-high', 900));
registerPlugin(orderPlugin('test-p-mid', 500));
registerPlugin(orderPlugin('test-p-low', 100));

/** Answers itself from access: the chain and the upstream are skipped. */
registerPlugin(definePlugin({
  name: 'test-reply',
  priority: 800,
  description: 'test: a local reply',
  schema: Type.Object({ problem: Type.Optional(Type.Boolean()) }),
  scopes: ALL,
  create(config) {
    return {
      access: (): Reply => (config.problem
        ? { code: 'forbidden', detail: 'test-reply says no', headers: { 'x-reply': 'problem' } }
        : { status: 418, body: 'short and stout', headers: { 'x-reply': 'raw', 'content-type': 'text/plain' } }),
    };
  },
}) as PluginDef);

registerPlugin(definePlugin({
  name: 'test-throw', priority: 700, description: 'test: throws in access', schema: Type.Object({}), scopes: ALL,
  create: () => ({ access() { throw new Error('boom sync'); } }),
}) as PluginDef);

registerPlugin(definePlugin({
  name: 'test-reject', priority: 700, description: 'test: rejects in access', schema: Type.Object({}), scopes: ALL,
  create: () => ({ access: async () => { await sleep(5); throw new Error('boom async'); } }),
}) as PluginDef);

registerPlugin(definePlugin({
  name: 'test-throw-rh', priority: 700, description: 'test: throws in responseHeaders', schema: Type.Object({}), scopes: ALL,
  create: () => ({ responseHeaders() { throw new Error('boom headers'); } }),
}) as PluginDef);

registerPlugin(definePlugin({
  name: 'test-throw-rb', priority: 700, description: 'test: throws in responseBody', schema: Type.Object({}), scopes: ALL,
  create: () => ({ responseBody() { throw new Error('boom body'); } }),
}) as PluginDef);

/** An auth plugin that answers after 100 ms: consumer alice when x-slow: alice. */
const slowCalls: string[] = [];
registerPlugin(definePlugin({
  name: 'test-slow-auth',
  priority: 1000,
  description: 'test: asynchronous authentication',
  schema: Type.Object({}),
  scopes: ['global', 'service', 'route'],
  create(_config, deps) {
    return {
      async authenticate(ctx) {
        slowCalls.push(ctx.requestId);
        await sleep(100);
        const c = deps.consumers.get(ctx.header('x-slow') ?? '');
        return c ? { ok: true, consumer: c, identity: c.name, credential: 'slow' } : { ok: false, missing: true, challenge: 'Slow realm="t"' };
      },
    };
  },
}) as PluginDef);

/** Records the log phase. */
const logged: { tag: string | undefined; route: string; status: number; durationMs: number; consumer: string | null }[] = [];
registerPlugin(definePlugin({
  name: 'test-log', priority: 10, description: 'test: log phase', schema: Type.Object({}), scopes: ALL,
  create: () => ({
    log(ctx, info) {
      logged.push({ tag: ctx.header('x-tag'), route: ctx.route.name, status: info.status, durationMs: info.durationMs, consumer: ctx.consumer?.name ?? null });
    },
  }),
}) as PluginDef);

registerPlugin(definePlugin({
  name: 'test-route-only', priority: 1, description: 'test: route scope only', schema: Type.Object({}), scopes: ['route'],
  create: () => ({}),
}) as PluginDef);

// ---- fixtures -------------------------------------------------------------------------------

let up: TestUpstream;
let slowUp: TestUpstream;
let wsUp: { port: number; url: string; tcpConnections: number; handshakes: IncomingMessage[]; close(): Promise<void> };
let gw: Gateway;
let base: string;
const logLines: string[] = [];

async function startWsUpstream(): Promise<typeof wsUp> {
  const server: Server = createServer((_req, res) => res.writeHead(404).end());
  const sockets = new Set<Socket>();
  const state = { tcpConnections: 0, handshakes: [] as IncomingMessage[] };
  server.on('connection', (s) => {
    state.tcpConnections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws, req) => {
    state.handshakes.push(req);
    ws.on('message', (data, binary) => ws.send(data, { binary }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    port, url: `http://127.0.0.1:${port}`,
    get tcpConnections() { return state.tcpConnections; },
    handshakes: state.handshakes,
    close: () => new Promise<void>((r) => {
      for (const c of wss.clients) c.terminate();
      for (const s of sockets) s.destroy();
      wss.close();
      server.close(() => r());
    }),
  };
}

const KEYS = { alice: 'alice-key-0001', bob: 'bob-key-00002', carol: 'carol-key-0003', dave: 'dave-key-00004' } as const;

const config = () => `http2: {h2c: true}
consumers:
  - name: alice
    credentials: [{type: key-auth, key: ${KEYS.alice}}, {type: basic-auth, username: alice, password: 'alice password'}]
    plugins: [{name: test-tag, config: {value: consumer-alice}}]
  - name: bob
    credentials: [{type: key-auth, key: ${KEYS.bob}}]
  - name: carol
    credentials: [{type: key-auth, key: ${KEYS.carol}}]
    plugins:
      - {name: test-tag, config: {value: consumer-carol}}
      - {name: test-mark}
  - name: dave
    credentials: [{type: key-auth, key: ${KEYS.dave}}]
  - name: guest
    plugins: [{name: test-tag, config: {value: consumer-guest}}]
plugins:
  - {name: test-tag, config: {value: global}}
services:
  - name: s1
    url: ${up.url}
    plugins:
      - {name: test-tag, config: {value: service}}
      - {name: test-tag, consumer: bob, config: {value: service-bob}}
      - {name: test-tag, consumer: alice, config: {value: service-alice}}
    routes:
      - name: r1
        paths: [/r1]
        plugins:
          - {name: key-auth}
          - {name: test-tag, config: {value: route}}
          - {name: test-tag, consumer: carol, config: {value: route-carol}}
          - {name: test-tag, consumer: bob, config: {value: route-bob}}
      - {name: r2, paths: [/r2], plugins: [{name: key-auth}]}
  - name: s2
    url: ${up.url}
    routes:
      - {name: r3, paths: [/r3], plugins: [{name: key-auth}]}
      - {name: r4, paths: [/r4]}
      - {name: r5, paths: [/r5], plugins: [{name: key-auth}, {name: test-tag, config: {value: route}}]}
      - {name: r6, paths: [/r6], plugins: [{name: key-auth, config: {anonymous: guest}}]}
      - {name: disabled, paths: [/disabled], plugins: [{name: test-tag, enabled: false, config: {value: route}}, {name: test-mark, enabled: false}]}
      - name: order
        paths: [/order]
        plugins: [{name: test-p-low}, {name: test-p-high}, {name: test-p-mid}]
      - name: reply
        paths: [/reply]
        plugins: [{name: test-p-low}, {name: test-reply}, {name: test-p-high}, {name: test-log}]
      - {name: reply-problem, paths: [/reply-problem], plugins: [{name: test-reply, config: {problem: true}}]}
      - {name: throw, paths: [/throw], plugins: [{name: test-throw}, {name: test-log}]}
      - {name: reject, paths: [/reject], plugins: [{name: test-reject}]}
      - {name: throw-rh, paths: [/throw-rh], plugins: [{name: test-throw-rh}]}
      - {name: throw-rb, paths: [/throw-rb], plugins: [{name: test-throw-rb}]}
      - {name: slow, paths: [/slow], plugins: [{name: test-slow-auth}, {name: test-log}]}
      - {name: two-auth, paths: [/two-auth], plugins: [{name: key-auth}, {name: basic-auth}]}
      - {name: two-auth-hidden, paths: [/two-auth-hidden], plugins: [{name: key-auth}, {name: basic-auth, config: {hide_credentials: true, anonymous: guest}}]}
      - {name: logged, paths: [/logged], plugins: [{name: key-auth}, {name: test-log}]}
      - {name: h2, paths: [/h2], plugins: [{name: key-auth}]}
      - {name: validated, paths: [/validated], plugins: [{name: request-validator, config: {body_schema: {type: object}}}]}
  - name: slow-upstream
    url: ${slowUp.url}
    routes:
      - {name: logged-slow, paths: [/logged-slow], plugins: [{name: test-log}]}
  - name: ws
    url: ${wsUp.url}
    routes:
      - {name: ws, paths: [/ws], websocket: true, plugins: [{name: key-auth, config: {hide_credentials: true}}]}
`;

before(async () => {
  up = await startUpstream();
  // Answers 201 after 60 ms.
  slowUp = await startUpstream((_req, res) => { setTimeout(() => res.writeHead(201, { 'content-type': 'text/plain' }).end('late'), 60); });
  wsUp = await startWsUpstream();
  const sink = new Writable({ write(chunk, _enc, cb) { logLines.push(String(chunk)); cb(); } });
  gw = await Gateway.start(parseConfigText(`listen: 127.0.0.1:0\n${config()}`, { env: {} }), { logger: pino({ level: 'info' }, sink) });
  base = `http://127.0.0.1:${gw.proxyAddress!.port}`;
});
after(async () => {
  await gw?.stop();
  await up?.close();
  await slowUp?.close();
  await wsUp?.close();
});

interface Echo { url: string; headers: Record<string, string | string[] | undefined> }
const echo = (r: SimpleResponse): Echo => JSON.parse(r.body) as Echo;
const as = (who: keyof typeof KEYS | null, extra: Record<string, string> = {}) => ({ headers: { ...(who ? { apikey: KEYS[who] } : {}), ...extra } });

// ---- precedence -----------------------------------------------------------------------------

test('precedence without a consumer binding: route > service > global', T, async () => {
  const tag = async (path: string, who: keyof typeof KEYS | null = 'dave') => {
    const r = await request(`${base}${path}`, as(who));
    assert.equal(r.status, 200, `${path}: ${r.body}`);
    return echo(r).headers['x-test-tag'];
  };
  assert.equal(await tag('/r1'), 'route');
  assert.equal(await tag('/r2'), 'service');
  assert.equal(await tag('/r3'), 'global');
  assert.equal(await tag('/r5'), 'route');
  // No auth on the route: no consumer, so consumer bindings never apply.
  assert.equal(await tag('/r4', null), 'global');
  assert.equal(await tag('/r4', 'alice'), 'global');
});

test('consumer-scoped bindings (Kong order: route+consumer > service+consumer > consumer > route > service > global), for that consumer only', T, async () => {
  const table: [string, keyof typeof KEYS, string][] = [
    // route r1: route binding, route+carol, route+bob; service s1: service, service+bob, service+alice
    ['/r1', 'dave', 'route'],
    ['/r1', 'alice', 'service-alice'], // service+consumer > consumer > route
    ['/r1', 'bob', 'route-bob'], // route+consumer > service+consumer
    ['/r1', 'carol', 'route-carol'], // route+consumer > consumer
    // route r2 (no route binding) on s1
    ['/r2', 'dave', 'service'],
    ['/r2', 'alice', 'service-alice'], // service+consumer > consumer
    ['/r2', 'bob', 'service-bob'], // service+consumer > service
    ['/r2', 'carol', 'consumer-carol'], // consumer > service
    // route r3 on s2: global only
    ['/r3', 'dave', 'global'],
    ['/r3', 'bob', 'global'],
    ['/r3', 'alice', 'consumer-alice'], // consumer > global
    ['/r3', 'carol', 'consumer-carol'],
    // route r5 on s2: route binding
    ['/r5', 'dave', 'route'],
    ['/r5', 'carol', 'consumer-carol'], // consumer > route
    ['/r5', 'alice', 'consumer-alice'],
  ];
  const got: string[] = [];
  for (const [path, who] of table) {
    const r = await request(`${base}${path}`, as(who));
    assert.equal(r.status, 200, `${path} as ${who}: ${r.body}`);
    got.push(`${path} ${who} ${String(echo(r).headers['x-test-tag'])}`);
  }
  assert.deepEqual(got, table.map(([p, w, v]) => `${p} ${w} ${v}`));

  // A plugin bound only to a consumer runs for that consumer alone.
  const carol = echo(await request(`${base}/r3`, as('carol')));
  assert.equal(carol.headers['x-test-mark'], 'carol');
  const dave = echo(await request(`${base}/r3`, as('dave')));
  assert.equal(dave.headers['x-test-mark'], undefined);
  // The same route again for dave after carol: nothing of carol's chain leaks.
  assert.equal(dave.headers['x-test-tag'], 'global');
});

test('the anonymous consumer gets its consumer bindings too', T, async () => {
  const r = await request(`${base}/r6`);
  assert.equal(r.status, 200, r.body);
  assert.equal(echo(r).headers['x-consumer-name'], 'guest');
  assert.equal(echo(r).headers['x-test-tag'], 'consumer-guest');
  const d = await request(`${base}/r6`, as('dave'));
  assert.equal(echo(d).headers['x-test-tag'], 'global');
});

test('enabled: false: the binding is skipped (a global binding of the same plugin still applies)', T, async () => {
  const r = await request(`${base}/disabled`);
  assert.equal(r.status, 200, r.body);
  assert.equal(echo(r).headers['x-test-tag'], 'global');
  assert.equal(echo(r).headers['x-test-mark'], undefined);
});

// ---- phase order and local replies ----------------------------------------------------------

test('priority: access phases by descending priority, responseHeaders and log by ascending', T, async () => {
  const r = await request(`${base}/order`, { headers: { 'x-tag': 'order-1' } });
  assert.equal(r.status, 200, r.body);
  assert.equal(echo(r).headers['x-access-order'], 'test-p-high,test-p-mid,test-p-low');
  assert.equal(r.headers['x-rh-order'], 'test-p-low,test-p-mid,test-p-high');
  await eventually(() => logOrder.filter((l) => l.tag === 'order-1').length === 3, 3000, 20);
  assert.deepEqual(logOrder.filter((l) => l.tag === 'order-1').map((l) => l.name), ['test-p-low', 'test-p-mid', 'test-p-high']);
});

test('a local reply from access stops the chain; the upstream is not called', T, async () => {
  const before = up.requests.length;
  const r = await request(`${base}/reply`, { headers: { 'x-tag': 'reply-1' } });
  assert.equal(r.status, 418);
  assert.equal(r.body, 'short and stout');
  assert.equal(r.headers['x-reply'], 'raw');
  assert.ok(r.headers['x-request-id']);
  // Response phases of the upstream's answer do not run for a local reply.
  assert.equal(r.headers['x-rh-order'], undefined);
  // HEAD: the same answer without a body.
  const head = await request(`${base}/reply`, { method: 'HEAD' });
  assert.equal(head.status, 418);
  assert.equal(head.body, '');

  const p = await request(`${base}/reply-problem`);
  assert.equal(p.status, 403);
  assert.equal(p.headers['content-type'], 'application/problem+json');
  assert.equal(p.headers['x-reply'], 'problem');
  assert.equal((JSON.parse(p.body) as { detail: string }).detail, 'test-reply says no');
  assert.equal(up.requests.length, before, 'the upstream was called');
  // test-p-high (900) ran before the reply (800); test-p-low (100) did not: its log still runs.
  await eventually(() => logged.some((l) => l.tag === 'reply-1'), 3000, 20);
  assert.deepEqual(logged.filter((l) => l.tag === 'reply-1').map((l) => l.status), [418]);
});

// ---- failures -------------------------------------------------------------------------------

test('a plugin that throws or rejects: 500 problem+json for that request, the next ones are served, the log names the plugin', T, async () => {
  for (const [path, plugin, message] of [['/throw', 'test-throw', 'boom sync'], ['/reject', 'test-reject', 'boom async']] as const) {
    const before = logLines.length;
    const r = await request(`${base}${path}`);
    assert.equal(r.status, 500, `${path}: ${r.body}`);
    assert.equal(r.headers['content-type'], 'application/problem+json');
    const body = JSON.parse(r.body) as { type: string; detail: string };
    assert.equal(body.type, 'urn:turnpike:problem:internal-error');
    assert.match(body.detail, new RegExp(plugin));
    // The error's message stays in the log, not in the answer.
    assert.ok(!r.body.includes(message), r.body);
    await eventually(() => logLines.slice(before).some((l) => l.includes(`"${plugin}"`) && l.includes(message)), 3000, 20).catch((e: Error) => { throw new Error(`${path}: ${e.message}; log: ${logLines.slice(before).join("")}`); });
    // Again: the same answer, and a healthy route right after.
    assert.equal((await request(`${base}${path}`)).status, 500);
    const ok = await request(`${base}/r4`);
    assert.equal(ok.status, 200, ok.body);
  }
});

test('a client that gives up on the body a plugin reads is no plugin failure: nothing at error level, the next request is served', T, async () => {
  const before = logLines.length;
  for (const how of ['end', 'reset'] as const) {
    const s = connectTcp(gw.proxyAddress!.port, '127.0.0.1');
    s.on('error', () => {});
    s.write('POST /validated HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a":');
    await sleep(100);
    if (how === 'end') s.end(); else s.resetAndDestroy();
    await sleep(100);
    s.destroy();
  }
  const ok = await request(`${base}/validated`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"a":1}' });
  assert.equal(ok.status, 200, ok.body);
  await sleep(100);
  const errors = logLines.slice(before).filter((l) => (JSON.parse(l) as { level: number }).level >= 50);
  assert.deepEqual(errors, []);
});

test('a plugin that throws in responseHeaders: 500 problem+json, the gateway carries on', T, async () => {
  const r = await request(`${base}/throw-rh`);
  assert.equal(r.status, 500, r.body);
  assert.equal(r.headers['content-type'], 'application/problem+json');
  assert.match((JSON.parse(r.body) as { detail: string }).detail, /test-throw-rh/);
  assert.ok(!r.body.includes('boom headers'));
  assert.equal((await request(`${base}/throw-rh`)).status, 500);
  assert.equal((await request(`${base}/r4`)).status, 200);
  await eventually(() => gw.inFlight === 0, 3000, 20);
});

test('a plugin that throws in responseHeaders is logged with its name', T, async () => {
  const before = logLines.length;
  assert.equal((await request(`${base}/throw-rh`)).status, 500);
  await eventually(() => logLines.slice(before).some((l) => l.includes('"test-throw-rh"') && l.includes('boom headers')), 1000, 20);
});

test('a plugin that throws in responseBody: the response is cut (never passed off as whole), the gateway carries on, the log names it', { ...T }, async () => {
  const before = logLines.length;
  const outcome = await new Promise<string>((resolve) => {
    const req = httpRequest(`${base}/throw-rb`, { agent: false }, (res) => {
      let n = 0;
      res.on('data', (d: Buffer) => (n += d.length));
      res.on('error', () => resolve(`cut after ${n} bytes`));
      res.on('aborted', () => resolve(`cut after ${n} bytes`));
      res.on('end', () => resolve(res.complete ? `complete ${res.statusCode} ${n} bytes` : `cut after ${n} bytes`));
    });
    req.on('error', () => resolve('cut before the response'));
    req.end();
  });
  assert.match(outcome, /^cut/);
  assert.equal((await request(`${base}/r4`)).status, 200);
  await eventually(() => gw.inFlight === 0, 3000, 20);
  await eventually(() => logLines.slice(before).some((l) => l.includes('boom body')), 3000, 20);
  const line = logLines.slice(before).find((l) => l.includes('boom body'))!;
  assert.ok(line.includes('"test-throw-rb"'), `the log line does not name the plugin: ${line}`);
});

test('the log phase runs for a request a plugin failed (500)', T, async () => {
  const r = await request(`${base}/throw`, { headers: { 'x-tag': 'throw-log' } });
  assert.equal(r.status, 500);
  await eventually(() => logged.some((l) => l.tag === 'throw-log'), 1000, 20);
  assert.deepEqual(logged.filter((l) => l.tag === 'throw-log').map((l) => l.status), [500]);
});

test('an async auth plugin and a client that leaves meanwhile: no upstream request, nothing left in flight', T, async () => {
  const before = up.requests.length;
  const calls = slowCalls.length;
  await new Promise<void>((resolve) => {
    const req = httpRequest(`${base}/slow`, { agent: false, headers: { 'x-slow': 'alice', 'x-tag': 'slow-gone' } });
    req.on('error', () => resolve());
    req.on('close', () => resolve());
    req.end();
    void eventually(() => slowCalls.length > calls, 3000, 5).then(() => req.destroy());
  });
  assert.equal(slowCalls.length, calls + 1);
  await sleep(250); // the plugin answered (100 ms) long ago
  assert.equal(up.requests.length, before, 'the upstream was called for a client that left');
  await eventually(() => gw.inFlight === 0, 3000, 20);

  // The same route still works, after waiting for the plugin.
  const ok = await request(`${base}/slow`, { headers: { 'x-slow': 'alice' } });
  assert.equal(ok.status, 200, ok.body);
  assert.equal(echo(ok).headers['x-consumer-name'], 'alice');
  const no = await request(`${base}/slow`);
  assert.equal(no.status, 401);
  assert.equal(no.headers['www-authenticate'], 'Slow realm="t"');
  assert.equal(gw.inFlight, 0);
});

test('the log phase runs once for a request whose client left during an async auth plugin, without claiming a 200', { ...T }, async () => {
  const calls = slowCalls.length;
  await new Promise<void>((resolve) => {
    const req = httpRequest(`${base}/slow`, { agent: false, headers: { 'x-slow': 'alice', 'x-tag': 'slow-gone-log' } });
    req.on('error', () => resolve());
    req.on('close', () => resolve());
    req.end();
    void eventually(() => slowCalls.length > calls, 3000, 5).then(() => req.destroy());
  });
  await eventually(() => logged.some((l) => l.tag === 'slow-gone-log'), 1000, 20);
  await sleep(250); // the plugin answers at 100 ms: the log phase does not run a second time
  const entries = logged.filter((l) => l.tag === 'slow-gone-log');
  assert.equal(entries.length, 1, JSON.stringify(entries));
  assert.notEqual(entries[0]!.status, 200, 'a request that got no answer is logged as 200');
});

test('the same over HTTP/2: a stream cancelled during async auth never reaches the upstream', T, async () => {
  const before = up.requests.length;
  const calls = slowCalls.length;
  const c = h2connect(base);
  try {
    c.on('error', () => {});
    const s = c.request({ ':path': '/slow', 'x-slow': 'alice' });
    s.on('error', () => {});
    await eventually(() => slowCalls.length > calls, 3000, 5);
    s.close(8 /* CANCEL */);
    await sleep(250);
    assert.equal(up.requests.length, before, 'the upstream was called for a cancelled stream');
    await eventually(() => gw.inFlight === 0, 3000, 20);
    const ok = await h2get(c, '/slow', { 'x-slow': 'alice' });
    assert.equal(ok.status, 200, ok.body);
  } finally {
    c.close();
  }
});

// ---- auth combinations ----------------------------------------------------------------------

const basic = (u: string, p: string) => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;

test('two auth plugins on one route (key-auth + basic-auth): either credential passes, none is 401 with both challenges', T, async () => {
  const k = await request(`${base}/two-auth`, as('alice'));
  assert.equal(k.status, 200, k.body);
  assert.equal(echo(k).headers['x-consumer-name'], 'alice');
  assert.equal(echo(k).headers['x-credential-identifier'] === undefined, false);

  const b = await request(`${base}/two-auth`, { headers: { authorization: basic('alice', 'alice password') } });
  assert.equal(b.status, 200, b.body);
  assert.equal(echo(b).headers['x-consumer-name'], 'alice');
  assert.equal(echo(b).headers['x-credential-identifier'], 'basic-auth:alice');

  // A wrong key does not stop a good password (any-of).
  const both = await request(`${base}/two-auth`, { headers: { apikey: 'wrong-key-1234', authorization: basic('alice', 'alice password') } });
  assert.equal(both.status, 200, both.body);

  const before = up.requests.length;
  const none = await request(`${base}/two-auth`);
  assert.equal(none.status, 401);
  assert.equal(none.headers['content-type'], 'application/problem+json');
  const challenge = String(none.headers['www-authenticate']);
  assert.match(challenge, /Key realm="turnpike"/);
  assert.match(challenge, /Basic realm="turnpike", charset="UTF-8"/);
  const wrong = await request(`${base}/two-auth`, { headers: { apikey: 'wrong-key-1234', authorization: basic('alice', 'nope') } });
  assert.equal(wrong.status, 401);
  assert.match(String(wrong.headers['www-authenticate']), /Key realm.*Basic realm/);
  assert.ok(!wrong.body.includes('wrong-key-1234'));
  assert.equal(up.requests.length, before);
});

test('basic-auth hide_credentials: Basic credentials never reach the upstream, also when key-auth let the request in first (any-of) or a wrong password went on as the anonymous consumer', T, async () => {
  const sentAuth = () => up.requests.at(-1)!.rawHeaders.filter((_, i, raw) => i % 2 === 1 && raw[i - 1]!.toLowerCase() === 'authorization');
  // A right key and Basic credentials: key-auth decides, basic-auth never looks at them.
  const k = await request(`${base}/two-auth-hidden`, as('alice', { authorization: basic('alice', 'alice password') }));
  assert.equal(k.status, 200, k.body);
  assert.equal(echo(k).headers['x-consumer-name'], 'alice');
  assert.deepEqual(sentAuth(), []);
  // A wrong password, anonymous set: on as guest, without the password.
  const w = await request(`${base}/two-auth-hidden`, { headers: { authorization: basic('alice', 'my other password') } });
  assert.equal(w.status, 200, w.body);
  assert.equal(echo(w).headers['x-consumer-name'], 'guest');
  assert.deepEqual(sentAuth(), []);
  // Another scheme is not basic-auth's to take out.
  const b = await request(`${base}/two-auth-hidden`, as('alice', { authorization: 'Bearer abc' }));
  assert.equal(b.status, 200, b.body);
  assert.deepEqual(sentAuth(), ['Bearer abc']);
});

// ---- log phase ------------------------------------------------------------------------------

test('the log phase runs after the response, with its status and duration', T, async () => {
  const r = await request(`${base}/logged-slow`, { headers: { 'x-tag': 'slow-201' } });
  assert.equal(r.status, 201);
  await eventually(() => logged.some((l) => l.tag === 'slow-201'), 3000, 20);
  const [l] = logged.filter((x) => x.tag === 'slow-201');
  assert.equal(l!.status, 201);
  assert.equal(l!.route, 'logged-slow');
  assert.ok(l!.durationMs >= 55, `durationMs ${l!.durationMs} < the upstream's 60 ms`);

  // Authenticated: the consumer is known to the log phase; rejected: the 401 is logged.
  await request(`${base}/logged`, { headers: { apikey: KEYS.bob, 'x-tag': 'logged-bob' } });
  await request(`${base}/logged`, { headers: { 'x-tag': 'logged-none' } });
  await eventually(() => logged.some((x) => x.tag === 'logged-bob') && logged.some((x) => x.tag === 'logged-none'), 3000, 20);
  assert.deepEqual(logged.filter((x) => x.tag === 'logged-bob').map((x) => [x.status, x.consumer]), [[200, 'bob']]);
  assert.deepEqual(logged.filter((x) => x.tag === 'logged-none').map((x) => [x.status, x.consumer]), [[401, null]]);
});

// ---- config errors --------------------------------------------------------------------------


const svc = (routePlugins: string, extra = '') => `${extra}services:
  - name: s
    url: http://127.0.0.1:9
    routes:
      - name: r
        paths: [/r]
        plugins:
${routePlugins}
`;

test('config: a plugin config that fails its schema is an error at ...plugins[i].config.<field>, with its line', T, () => {
  const wrongType = issuesOf(svc(`          - name: test-p-low
          - name: test-tag
            config:
              value: 5`));
  assert.deepEqual(wrongType.map(({ path, line }) => ({ path, line })), [{ path: 'services[0].routes[0].plugins[1].config.value', line: 11 }]);
  assert.match(wrongType[0]!.message, /string/);

  const empty = issuesOf(svc(`          - {name: test-tag, config: {value: ''}}`));
  assert.equal(empty[0]!.path, 'services[0].routes[0].plugins[0].config.value');
  assert.equal(empty[0]!.line, 8);

  const missing = issuesOf(svc(`          - {name: test-tag}`));
  assert.equal(missing[0]!.path, 'services[0].routes[0].plugins[0].config.value');
  assert.match(missing[0]!.message, /required/);

  const unknown = issuesOf(svc(`          - name: test-tag
            config: {value: x, bogus: 1}`));
  assert.equal(unknown[0]!.path, 'services[0].routes[0].plugins[0].config.bogus');

  // Global and consumer bindings name their own paths.
  const global = issuesOf(`plugins:\n  - {name: test-tag, config: {value: 1}}\n`);
  assert.equal(global[0]!.path, 'plugins[0].config.value');
  assert.equal(global[0]!.line, 2);
  const consumer = issuesOf(`consumers:\n  - name: a\n    plugins:\n      - {name: test-tag, config: {value: 1}}\n`);
  assert.equal(consumer[0]!.path, 'consumers[0].plugins[0].config.value');
  assert.equal(consumer[0]!.line, 4);
});

test('config: a binding at a scope the plugin does not allow is an error', T, () => {
  const g = issuesOf(`plugins:\n  - {name: test-route-only}\n`);
  assert.equal(g.length, 1);
  assert.equal(g[0]!.path, 'plugins[0].name');
  assert.match(g[0]!.message, /cannot be bound at global scope/);

  const s = issuesOf(`services:\n  - name: s\n    url: http://127.0.0.1:9\n    plugins: [{name: test-route-only}]\n`);
  assert.equal(s[0]!.path, 'services[0].plugins[0].name');
  assert.equal(s[0]!.line, 4);

  // Auth plugins run before the consumer is known: never per consumer.
  const c = issuesOf(`consumers:\n  - name: a\n    plugins: [{name: key-auth}]\n`);
  assert.equal(c[0]!.path, 'consumers[0].plugins[0].name');
  assert.match(c[0]!.message, /cannot be bound to a consumer/);
  const rc = issuesOf(svc(`          - {name: basic-auth, consumer: a}`, `consumers: [{name: a}]\n`));
  assert.equal(rc[0]!.path, 'services[0].routes[0].plugins[0].name');
  assert.match(rc[0]!.message, /cannot be bound to a consumer/);
  // A route-only plugin bound for a consumer on the route is consumer scope too.
  const ro = issuesOf(svc(`          - {name: test-route-only, consumer: a}`, `consumers: [{name: a}]\n`));
  assert.match(ro[0]!.message, /cannot be bound to a consumer/);

  // consumer: on a global binding, or naming nobody.
  const gc = issuesOf(`consumers: [{name: a}]\nplugins: [{name: test-tag, consumer: a, config: {value: x}}]\n`);
  assert.equal(gc[0]!.path, 'plugins[0].consumer');
  const nobody = issuesOf(svc(`          - {name: test-tag, consumer: zed, config: {value: x}}`));
  assert.equal(nobody[0]!.path, 'services[0].routes[0].plugins[0].consumer');
  assert.match(nobody[0]!.message, /unknown consumer "zed"/);
  // Allowed: the route-only plugin on a route.
  assert.deepEqual(issuesOf(svc(`          - {name: test-route-only}`)), []);
});

// ---- WebSocket and HTTP/2 -------------------------------------------------------------------

function openWs(url: string, headers: Record<string, string> = {}): Promise<{ ws: WebSocket; status: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers, handshakeTimeout: 3000 });
    ws.once('upgrade', (res) => ws.once('open', () => resolve({ ws, status: res.statusCode! })));
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d));
      res.on('end', () => reject(Object.assign(new Error(`status ${res.statusCode}`), { status: res.statusCode, headers: res.headers, body })));
    });
    ws.once('error', reject);
  });
}

test('WebSocket upgrade with key-auth: no key is 401 before any upstream connection; a key is 101', T, async () => {
  const wsBase = base.replace('http:', 'ws:');
  const tcp = wsUp.tcpConnections;
  await assert.rejects(openWs(`${wsBase}/ws/room`), (e: { status?: number; headers?: Record<string, string>; body?: string }) => {
    assert.equal(e.status, 401);
    assert.equal(e.headers?.['www-authenticate'], 'Key realm="turnpike"');
    assert.equal(e.headers?.['content-type'], 'application/problem+json');
    return true;
  });
  await assert.rejects(openWs(`${wsBase}/ws/room`, { apikey: 'wrong-key-1234' }), (e: { status?: number }) => e.status === 401);
  assert.equal(wsUp.tcpConnections, tcp, 'the gateway connected to the upstream for a rejected upgrade');
  assert.equal(wsUp.handshakes.length, 0);

  // A key in the header: 101, consumer headers in the upstream handshake, the key hidden.
  const { ws, status } = await openWs(`${wsBase}/ws/room`, { apikey: KEYS.carol, 'x-consumer-name': 'spoofed' });
  try {
    assert.equal(status, 101);
    const got = new Promise<string>((r) => ws.once('message', (d) => r(String(d))));
    ws.send('ping');
    assert.equal(await got, 'ping');
    const hs = wsUp.handshakes[wsUp.handshakes.length - 1]!;
    assert.equal(hs.headers['x-consumer-name'], 'carol');
    assert.equal(hs.headers['apikey'], undefined);
  } finally {
    ws.terminate();
  }
  // A key in the query (what browsers can send): accepted, and removed before the upstream.
  const q = await openWs(`${wsBase}/ws/room?apikey=${KEYS.dave}&x=1`);
  try {
    assert.equal(q.status, 101);
    const hs = wsUp.handshakes[wsUp.handshakes.length - 1]!;
    assert.equal(hs.headers['x-consumer-name'], 'dave');
    assert.equal(hs.url, '/ws/room?x=1');
  } finally {
    q.ws.terminate();
  }
  await eventually(() => gw.inFlight === 0, 3000, 20);
});

interface H2Res { status: number; headers: IncomingHttpHeaders; body: string }
function h2get(c: ClientHttp2Session, path: string, headers: Record<string, string> = {}): Promise<H2Res> {
  return new Promise((resolve, reject) => {
    const s = c.request({ ':path': path, ...headers });
    let status = 0;
    let h: IncomingHttpHeaders = {};
    let body = '';
    s.setEncoding('utf8');
    s.on('response', (rh) => { status = Number(rh[':status']); h = rh; });
    s.on('data', (d: string) => (body += d));
    s.on('end', () => resolve({ status, headers: h, body }));
    s.on('error', reject);
  });
}

test('HTTP/2 (h2c) with key-auth works the same', T, async () => {
  const c = h2connect(base);
  c.on('error', () => {});
  try {
    const ok = await h2get(c, '/h2/x', { apikey: KEYS.bob, 'x-consumer-name': 'spoofed', 'x-credential-identifier': 'spoofed' });
    assert.equal(ok.status, 200, ok.body);
    const e = JSON.parse(ok.body) as Echo;
    assert.equal(e.headers['x-consumer-name'], 'bob');
    assert.notEqual(e.headers['x-credential-identifier'], 'spoofed');
    assert.ok(!JSON.stringify(e.headers).includes('spoofed'));

    const q = await h2get(c, `/h2/x?apikey=${KEYS.alice}`);
    assert.equal(q.status, 200, q.body);
    assert.equal((JSON.parse(q.body) as Echo).headers['x-consumer-name'], 'alice');

    const before = up.requests.length;
    const none = await h2get(c, '/h2/x');
    assert.equal(none.status, 401);
    assert.equal(none.headers['www-authenticate'], 'Key realm="turnpike"');
    assert.equal(none.headers['content-type'], 'application/problem+json');
    const wrong = await h2get(c, '/h2/x', { apikey: 'wrong-key-1234' });
    assert.equal(wrong.status, 401);
    assert.ok(!wrong.body.includes('wrong-key-1234'));
    assert.equal(up.requests.length, before);
    // The session survives the 401s.
    assert.equal((await h2get(c, '/h2/x', { apikey: KEYS.bob })).status, 200);
  } finally {
    c.close();
  }
});
