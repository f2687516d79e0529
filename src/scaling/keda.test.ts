/** The KEDA external scaler over real gRPC on loopback, with a KEDA-side client built from the same proto. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { connect, createServer, type Socket } from 'node:net';
import { silentLogger } from '../core/log.js';
import { hpaDesired, kedaClient, metricNameFor, peerAddress, startKedaServer, type KedaSource, type ScaledObjectRef } from './keda.js';

/** A source the test drives: set() changes a service and notifies (unless quiet). */
function fakeSource() {
  const state = new Map<string, { desired: number; active: boolean }>();
  const listeners = new Set<() => void>();
  let lookups = 0;
  const source: KedaSource = {
    lookup: (s) => { lookups++; if (s === 'boom') throw new Error('broken'); return state.get(s) ?? null; },
    onChange: (l) => { listeners.add(l); return () => listeners.delete(l); },
  };
  return {
    source, listeners, lookups: () => lookups,
    set(service: string, v: { desired: number; active: boolean }, quiet = false) {
      state.set(service, v);
      if (!quiet) for (const l of listeners) l();
    },
  };
}

async function setup(streamIntervalMs = 5000) {
  const f = fakeSource();
  const server = await startKedaServer({ listen: { host: '127.0.0.1', port: 0 }, source: f.source, log: silentLogger, streamIntervalMs });
  const client = kedaClient(`127.0.0.1:${server.port}`);
  return { f, server, client, async done() { client.close(); await server.close(); } };
}

const ref = (service?: string, name = ''): ScaledObjectRef => ({ name, namespace: 'shop', scalerMetadata: service === undefined ? { scalerAddress: 'x:1' } : { scalerAddress: 'x:1', service } });

async function code(p: Promise<unknown>): Promise<{ code: number; details: string }> {
  try {
    await p;
  } catch (e) {
    const err = e as grpc.ServiceError;
    return { code: err.code, details: err.details };
  }
  assert.fail('expected a gRPC error');
}

/** The next message, or the end / error of a server stream. */
function next(s: grpc.ClientReadableStream<{ result: boolean }>, timeoutMs = 2000) {
  return new Promise<{ result?: boolean; end?: true; error?: number }>((ok, fail) => {
    const t = setTimeout(() => { off(); fail(new Error('stream: nothing within ' + timeoutMs + ' ms')); }, timeoutMs);
    const onData = (m: { result: boolean }) => { off(); ok({ result: m.result }); };
    const onEnd = () => { off(); ok({ end: true }); };
    const onError = (e: grpc.ServiceError) => { off(); ok({ error: e.code }); };
    const off = () => { clearTimeout(t); s.off('data', onData); s.off('end', onEnd); s.off('error', onError); };
    s.on('data', onData).on('end', onEnd).on('error', onError);
  });
}

test('GetMetricSpec + GetMetrics give the desired replicas through the HPA formula; IsActive follows the source; the ScaledObject name is the fallback', async () => {
  const t = await setup();
  try {
    t.f.set('orders', { desired: 7, active: true });
    t.f.set('Billing.V2', { desired: 0, active: false });
    const specs = await t.client.getMetricSpec(ref('orders'));
    assert.deepEqual(specs, [{ metricName: 'turnpike-desired-replicas-orders', targetSize: 1, targetSizeFloat: 1 }]);
    const values = await t.client.getMetrics(ref('orders'), specs[0]!.metricName);
    assert.deepEqual(values, [{ metricName: 'turnpike-desired-replicas-orders', metricValue: 7, metricValueFloat: 7 }]);
    assert.equal(hpaDesired(specs[0]!, values), 7);
    assert.equal(await t.client.desiredReplicas(ref('orders')), 7);
    assert.equal(await t.client.isActive(ref('orders')), true);

    t.f.set('orders', { desired: 12.4, active: true });
    assert.equal(await t.client.desiredReplicas(ref('orders')), 12);

    assert.equal(metricNameFor('Billing.V2'), 'turnpike-desired-replicas-billing-v2');
    assert.equal(await t.client.isActive(ref(undefined, 'Billing.V2')), false);
    assert.equal(await t.client.desiredReplicas(ref(undefined, 'Billing.V2')), 0);
    // The HPA formula itself, with the int64 fields only (older scalers) and several values.
    assert.equal(hpaDesired({ metricName: 'm', targetSize: 4, targetSizeFloat: 0 }, [{ metricName: 'm', metricValue: 9, metricValueFloat: 0 }, { metricName: 'm', metricValue: 2, metricValueFloat: 0 }]), 3);
  } finally {
    await t.done();
  }
});

test('unknown service -> NOT_FOUND, no service -> INVALID_ARGUMENT, another metric -> NOT_FOUND, a failing source -> INTERNAL, StreamMetricSpec -> UNIMPLEMENTED', async () => {
  const t = await setup();
  try {
    t.f.set('orders', { desired: 2, active: true });
    const unknown = await code(t.client.isActive(ref('nope')));
    assert.equal(unknown.code, grpc.status.NOT_FOUND);
    assert.match(unknown.details, /unknown service "nope"/);
    assert.equal((await code(t.client.getMetricSpec(ref('nope')))).code, grpc.status.NOT_FOUND);
    const missing = await code(t.client.getMetricSpec(ref()));
    assert.equal(missing.code, grpc.status.INVALID_ARGUMENT);
    assert.match(missing.details, /scalerMetadata\.service is required/);
    assert.equal((await code(t.client.isActive(ref('x'.repeat(300))))).code, grpc.status.INVALID_ARGUMENT);
    const other = await code(t.client.getMetrics(ref('orders'), 'turnpike-desired-replicas-billing'));
    assert.equal(other.code, grpc.status.NOT_FOUND);
    assert.match(other.details, /unknown metric/);
    const noRef = await code(new Promise((ok, fail) => (t.client.raw.GetMetrics as Function).call(t.client.raw, { metricName: 'm' }, (e: Error | null, r: unknown) => (e ? fail(e) : ok(r)))));
    assert.equal(noRef.code, grpc.status.INVALID_ARGUMENT);
    assert.equal((await code(t.client.isActive(ref('boom')))).code, grpc.status.INTERNAL);
    const sms = t.client.raw.StreamMetricSpec!.call(t.client.raw, ref('orders')) as grpc.ClientReadableStream<{ result: boolean }>;
    assert.equal((await next(sms)).error, grpc.status.UNIMPLEMENTED);
    assert.equal((await next(t.client.streamIsActive(ref('nope')))).error, grpc.status.NOT_FOUND);
  } finally {
    await t.done();
  }
});

test('an oversized request and undecodable bytes are refused; the server keeps answering', async () => {
  const t = await setup();
  try {
    t.f.set('orders', { desired: 3, active: true });
    const huge: Record<string, string> = { service: 'orders' };
    for (let i = 0; i < 2000; i++) huge[`k${i}`] = 'v'.repeat(64);
    assert.equal((await code(t.client.isActive({ name: 'x', scalerMetadata: huge }))).code, grpc.status.RESOURCE_EXHAUSTED);
    // Field 3 (the map) declared as a varint: wrong wire type.
    const raw = t.client.raw;
    const garbage = await code(new Promise((ok, fail) => raw.makeUnaryRequest('/externalscaler.ExternalScaler/IsActive', (b: Buffer) => b, (b: Buffer) => b, Buffer.from([0x18, 0x01, 0xff, 0xff]), (e, r) => (e ? fail(e) : ok(r)))));
    assert.equal(garbage.code, grpc.status.INTERNAL);
    assert.equal(await t.client.desiredReplicas(ref('orders')), 3);
  } finally {
    await t.done();
  }
});

test('StreamIsActive: the current state at once, a change when notified, a heartbeat within the interval, the end on cancel (no more lookups)', async () => {
  const t = await setup(150);
  try {
    t.f.set('orders', { desired: 0, active: false });
    const s = t.client.streamIsActive(ref('orders'));
    assert.deepEqual(await next(s, 500), { result: false });
    const t0 = Date.now();
    t.f.set('orders', { desired: 2, active: true });
    assert.deepEqual(await next(s, 500), { result: true });
    assert.ok(Date.now() - t0 < 140, 'pushed on change, not on the next tick');
    // A change nobody announces still arrives within the interval.
    t.f.set('orders', { desired: 0, active: false }, true);
    let got = await next(s, 500);
    if (got.result === true) got = await next(s, 500); // a heartbeat already under way
    assert.deepEqual(got, { result: false });
    s.cancel();
    assert.equal((await next(s, 500)).error, grpc.status.CANCELLED);
    await new Promise((r) => setTimeout(r, 100));
    const after = t.f.lookups();
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(t.f.lookups(), after, 'no timer left behind the cancelled stream');
  } finally {
    await t.done();
  }
  assert.equal(t.f.listeners.size, 0, 'close() unsubscribed from the source');
});

test('close() resolves promptly with a stream open; the client sees the stream end cleanly', async () => {
  const t = await setup(60_000);
  t.f.set('orders', { desired: 1, active: true });
  const s = t.client.streamIsActive(ref('orders'));
  assert.deepEqual(await next(s), { result: true });
  const ended = next(s);
  const t0 = Date.now();
  await t.server.close();
  assert.ok(Date.now() - t0 < 1000, `close took ${Date.now() - t0} ms`);
  assert.deepEqual(await ended, { end: true });
  t.client.close();
});

test('no decision yet: GetMetrics and IsActive answer UNAVAILABLE (the HPA keeps its count), GetMetricSpec its static spec (KEDA builds the HPA from it), a stream waits for the first decision', async () => {
  const s = await setup();
  try {
    s.f.set('orders', { desired: 1, active: true, pending: true } as { desired: number; active: boolean });
    assert.deepEqual(await s.client.getMetricSpec(ref('orders')), [{ metricName: 'turnpike-desired-replicas-orders', targetSize: 1, targetSizeFloat: 1 }]);
    assert.equal((await code(s.client.desiredReplicas(ref('orders')))).code, grpc.status.UNAVAILABLE);
    assert.equal((await code(s.client.isActive(ref('orders')))).code, grpc.status.UNAVAILABLE);
    const stream = s.client.streamIsActive(ref('orders'));
    stream.on('error', () => undefined); // (the cancel at the end)
    const first = next(stream, 3000);
    await new Promise((r) => setTimeout(r, 200));
    s.f.set('orders', { desired: 3, active: true });
    assert.deepEqual(await first, { result: true });
    assert.equal(await s.client.desiredReplicas(ref('orders')), 3);
    stream.cancel();
  } finally {
    await s.done();
  }
});

/** A TCP relay on 127.0.0.1 that connects to `port` from `from` (another loopback address): a client seen from there. */
async function relayFrom(from: string, port: number) {
  const sockets = new Set<Socket>();
  const relay = createServer((inbound) => {
    const out = connect({ host: '127.0.0.1', port, localAddress: from });
    for (const s of [inbound, out]) { sockets.add(s); s.on('error', () => undefined).on('close', () => sockets.delete(s)); }
    inbound.pipe(out).pipe(inbound);
  });
  await new Promise<void>((ok) => relay.listen(0, '127.0.0.1', ok));
  const { port: relayPort } = relay.address() as { port: number };
  return { address: `127.0.0.1:${relayPort}`, close: () => { for (const s of sockets) s.destroy(); relay.close(); } };
}

test('StreamIsActive is capped per client address (RESOURCE_EXHAUSTED past it) and overall: a client holding its whole share leaves the operator its streams; a closed stream frees its slot', async () => {
  const f = fakeSource();
  f.set('orders', { desired: 2, active: true });
  const server = await startKedaServer({ listen: { host: '127.0.0.1', port: 0 }, source: f.source, log: silentLogger, maxStreams: 6, maxStreamsPerPeer: 3 });
  const hostile = kedaClient(`127.0.0.1:${server.port}`);
  const r2 = await relayFrom('127.0.0.2', server.port);
  const r3 = await relayFrom('127.0.0.3', server.port);
  const operator = kedaClient(r2.address);
  const other = kedaClient(r3.address);
  const open: grpc.ClientReadableStream<{ result: boolean }>[] = [];
  const stream = (c: typeof hostile) => {
    const s = c.streamIsActive(ref('orders'));
    s.on('error', () => undefined);
    open.push(s);
    return next(s);
  };
  try {
    // One client opens streams past its share: the first 3 are served, the rest refused.
    const mine = [];
    for (let i = 0; i < 3; i++) mine.push(await stream(hostile));
    assert.deepEqual(mine, [{ result: true }, { result: true }, { result: true }]);
    assert.deepEqual(await stream(hostile), { error: grpc.status.RESOURCE_EXHAUSTED });
    assert.deepEqual(await stream(hostile), { error: grpc.status.RESOURCE_EXHAUSTED });
    // The operator, from another address, still gets its streams.
    assert.deepEqual(await stream(operator), { result: true });
    // The overall cap holds too: 3 + 1 + 2 = 6 open, a third from another address is refused.
    assert.deepEqual(await stream(other), { result: true });
    assert.deepEqual(await stream(other), { result: true });
    assert.deepEqual(await stream(other), { error: grpc.status.RESOURCE_EXHAUSTED });
    assert.deepEqual(await stream(operator), { error: grpc.status.RESOURCE_EXHAUSTED });
    // A cancelled stream frees its slot (overall and its client's).
    open[0]!.cancel();
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(await stream(operator), { result: true });
    assert.deepEqual(await stream(hostile), { error: grpc.status.RESOURCE_EXHAUSTED });
    open[1]!.cancel();
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(await stream(hostile), { result: true });
  } finally {
    for (const s of open) s.cancel();
    for (const c of [hostile, operator, other]) c.close();
    r2.close();
    r3.close();
    await server.close();
  }
});

test('peerAddress: the client address without its port, whatever form grpc-js gives it in', () => {
  assert.equal(peerAddress('10.0.0.7:51234'), '10.0.0.7');
  assert.equal(peerAddress('::ffff:10.0.0.7:51234'), '10.0.0.7');
  assert.equal(peerAddress('fd00::1:51234'), 'fd00::1');
  assert.equal(peerAddress('[FD00::1]:51234'), 'fd00::1');
  assert.equal(peerAddress('unknown'), 'unknown');
});

test('connections are capped per client address from the TCP accept: idle connections past the share are closed at once (no fds hoarded), another address is served, a closed one frees its slot', async () => {
  const f = fakeSource();
  f.set('orders', { desired: 2, active: true });
  const server = await startKedaServer({ listen: { host: '127.0.0.1', port: 0 }, source: f.source, log: silentLogger, maxConnectionsPerPeer: 4 });
  const r2 = await relayFrom('127.0.0.2', server.port);
  const idle: Socket[] = [];
  /** A TCP connection from 127.0.0.1 that sends nothing: whether the server closed it within `ms`. */
  const hold = (ms = 300) => new Promise<boolean>((ok) => {
    const s = connect({ host: '127.0.0.1', port: server.port }, () => { idle.push(s); setTimeout(() => ok(s.destroyed || s.readableEnded), ms); });
    s.on('error', () => undefined).on('end', () => s.destroy());
    s.resume();
  });
  const clients: ReturnType<typeof kedaClient>[] = [];
  try {
    for (let i = 0; i < 4; i++) assert.equal(await hold(), false, `connection ${i + 1} is kept`);
    assert.equal(await hold(), true, 'the 5th from the same address is closed');
    assert.equal(await hold(), true, 'and the 6th');
    // Another address is served.
    const other = kedaClient(r2.address);
    clients.push(other);
    assert.equal(await other.desiredReplicas(ref('orders')), 2);
    // One of the idle four closes: its slot is free again.
    idle[0]!.destroy();
    await new Promise((r) => setTimeout(r, 100));
    const mine = kedaClient(`127.0.0.1:${server.port}`);
    clients.push(mine);
    assert.equal(await mine.desiredReplicas(ref('orders')), 2);
  } finally {
    for (const s of idle) s.destroy();
    for (const c of clients) c.close();
    r2.close();
    await server.close();
  }
});
