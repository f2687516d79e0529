/** Upstream names resolved by the gateway: one target per address, re-resolved, a real DNS server on loopback. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import dnsPacket from 'dns-packet';
import { lookup } from 'node:dns/promises';
import { request, sleep, startGateway } from './helpers.js';
import { systemResolver } from '../src/upstream/dns.js';

/**
 * A DNS server on 127.0.0.1 answering A queries from `zone` (name -> addresses; missing = NXDOMAIN), with the TTL in `ttls` (default 1 s);
 * names in `servfail` get SERVFAIL (the resolver cannot answer: no word on the name).
 */
async function startDns(zone: Map<string, string[]>, ttls = new Map<string, number>(), servfail = new Set<string>()): Promise<{ port: number; queries: string[]; close(): Promise<void> }> {
  const sock: UdpSocket = createSocket('udp4');
  const queries: string[] = [];
  sock.on('message', (msg, rinfo) => {
    const q = dnsPacket.decode(msg);
    const question = q.questions?.[0];
    if (!question) return;
    queries.push(`${question.type} ${question.name}`);
    const addrs = zone.get(question.name);
    const answers = question.type === 'A' && addrs ? addrs.map((data) => ({ type: 'A' as const, name: question.name, ttl: ttls.get(question.name) ?? 1, data })) : [];
    const reply = dnsPacket.encode({
      type: 'response', id: q.id, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | (servfail.has(question.name) ? 2 /* SERVFAIL */ : addrs ? 0 : 3 /* NXDOMAIN */),
      questions: q.questions, answers: servfail.has(question.name) ? [] : answers,
    });
    sock.send(reply, rinfo.port, rinfo.address);
  });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  return { port: (sock.address() as AddressInfo).port, queries, close: () => new Promise((r) => sock.close(() => r())) };
}

/** The same port on several loopback addresses, each answering with its own address and the Host it got. */
async function startOn(addrs: string[]): Promise<{ port: number; close(): Promise<void> }> {
  const servers: Server[] = [];
  let port = 0;
  for (const a of addrs) {
    const s = createServer((req, res) => res.end(`${a} ${req.headers.host}`));
    await new Promise<void>((r) => s.listen(port, a, r));
    port = (s.address() as AddressInfo).port;
    servers.push(s);
  }
  return { port, close: async () => { for (const s of servers) { s.closeAllConnections(); await new Promise((r) => s.close(r)); } } };
}

test('a name with two addresses is two targets; a changed answer moves traffic; the name goes as Host', async () => {
  const zone = new Map([['api.test', ['127.0.0.2', '127.0.0.3']]]);
  const dns = await startDns(zone);
  const up = await startOn(['127.0.0.2', '127.0.0.3']);
  const g = await startGateway(`dns: {servers: ["127.0.0.1:${dns.port}"], refresh: 200ms}\nservices:\n  - name: s\n    url: http://api.test:${up.port}\n    routes: [{paths: [/]}]\n`);
  try {
    const seen = new Map<string, number>();
    for (let i = 0; i < 10; i++) {
      const r = await request(`${g.url}/x`);
      assert.equal(r.status, 200);
      const [addr, host] = r.body.split(' ');
      assert.equal(host, `api.test:${up.port}`);
      seen.set(addr!, (seen.get(addr!) ?? 0) + 1);
    }
    assert.deepEqual(Object.fromEntries(seen), { '127.0.0.2': 5, '127.0.0.3': 5 });
    assert.deepEqual(g.gw.snapshot.services[0]!.targets.map((t) => t.origin), [`http://127.0.0.2:${up.port}`, `http://127.0.0.3:${up.port}`]);

    // The answer changes: after a refresh, everything goes to the remaining address.
    const revision = g.gw.revision;
    zone.set('api.test', ['127.0.0.3']);
    for (let i = 0; i < 50 && g.gw.revision === revision; i++) await sleep(50);
    assert.equal(g.gw.revision, revision + 1, 'the changed answer recompiled the config');
    for (let i = 0; i < 6; i++) assert.match((await request(`${g.url}/x`)).body, /^127\.0\.0\.3 /);

    // The name stops existing (NXDOMAIN, authoritative: no case for serve-stale): told so twice
    // in a row (one odd answer does not empty a pool), its addresses are dropped.
    zone.delete('api.test');
    const before = dns.queries.length;
    for (let i = 0; i < 60 && g.gw.revision === revision + 1; i++) await sleep(50);
    assert.equal(g.gw.revision, revision + 2, 'the name\'s addresses were dropped');
    assert.ok(dns.queries.slice(before).filter((q) => q === 'A api.test').length >= 2, 'after two answers');
    assert.deepEqual(g.gw.snapshot.services[0]!.targets, []);
    const r = await request(`${g.url}/x`);
    assert.equal(r.status, 503);
    assert.equal(JSON.parse(r.body).type, 'urn:turnpike:problem:no-healthy-target');
  } finally {
    await g.close();
    await up.close();
    await dns.close();
  }
});

test('with dns.servers a name is asked again when its TTL runs out, held between dns.min_ttl and dns.refresh (not at a fixed interval); a changed answer is taken at once', async () => {
  const zone = new Map([['short.test', ['127.0.0.2']], ['long.test', ['127.0.0.3']], ['zero.test', ['127.0.0.4']]]);
  // short: 1 s; long: an hour (refresh, 20 s, caps it); zero: 0 (min_ttl, the default 1 s, raises it)
  const ttls = new Map([['short.test', 1], ['long.test', 3600], ['zero.test', 0]]);
  const dns = await startDns(zone, ttls);
  const up = await startOn(['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5']);
  const g = await startGateway(`dns: {servers: ["127.0.0.1:${dns.port}"], refresh: 20s}
services:
  - {name: short, url: 'http://short.test:${up.port}', routes: [{paths: [/short]}]}
  - {name: long, url: 'http://long.test:${up.port}', routes: [{paths: [/long]}]}
  - {name: zero, url: 'http://zero.test:${up.port}', routes: [{paths: [/zero]}]}
`);
  const asked = (name: string) => dns.queries.filter((q) => q === `A ${name}`).length;
  try {
    assert.deepEqual(['short.test', 'long.test', 'zero.test'].map(asked), [1, 1, 1]);
    assert.match((await request(`${g.url}/short`)).body, /^127\.0\.0\.2 /);
    // the short TTL runs out: the new answer is in use about a second later, not after refresh (20 s)
    zone.set('short.test', ['127.0.0.5']);
    const t0 = Date.now();
    let body = '';
    while (!body.startsWith('127.0.0.5') && Date.now() - t0 < 3000) {
      await sleep(50);
      body = (await request(`${g.url}/short`)).body;
    }
    assert.match(body, /^127\.0\.0\.5 /, 'the changed answer was not taken when its TTL ran out');
    await sleep(2500 - (Date.now() - t0));
    // 2.5 s in: short asked about every second, zero too (raised to min_ttl, never a tight
    // loop), long not again (an hour's TTL, held to refresh: 20 s)
    assert.ok(asked('short.test') >= 2 && asked('short.test') <= 4, `short.test asked ${asked('short.test')} times`);
    assert.ok(asked('zero.test') >= 2 && asked('zero.test') <= 4, `zero.test asked ${asked('zero.test')} times`);
    assert.equal(asked('long.test'), 1);
    assert.deepEqual(['short.test', 'long.test', 'zero.test'].map((n) => g.gw.dns.ttlMs(n)), [1000, 3_600_000, 0]);
  } finally {
    await g.close();
    await up.close();
    await dns.close();
  }
});

test('dns.min_ttl raises a short TTL; refresh below it wins', async () => {
  const zone = new Map([['a.test', ['127.0.0.2']]]);
  const dns = await startDns(zone, new Map([['a.test', 0]]));
  const up = await startOn(['127.0.0.2']);
  const asked = () => dns.queries.filter((q) => q === 'A a.test').length;
  try {
    for (const [settings, min, max] of [['refresh: 10s, min_ttl: 800ms', 2, 3], ['refresh: 300ms, min_ttl: 5s', 3, 8]] as const) {
      const before = asked();
      const g = await startGateway(`dns: {servers: ["127.0.0.1:${dns.port}"], ${settings}}\nservices:\n  - {name: a, url: 'http://a.test:${up.port}', routes: [{paths: [/]}]}\n`);
      try {
        await sleep(1900);
        const n = asked() - before;
        assert.ok(n >= min && n <= max, `${settings}: asked ${n} times in 1.9 s`);
      } finally {
        await g.close();
      }
    }
  } finally {
    await up.close();
    await dns.close();
  }
});

test('a name that does not resolve at start: 503 no-healthy-target, then served once it resolves', async () => {
  const zone = new Map<string, string[]>();
  const dns = await startDns(zone);
  const up = await startOn(['127.0.0.4']);
  const g = await startGateway(`dns: {servers: ["127.0.0.1:${dns.port}"], refresh: 200ms}\nservices:\n  - name: s\n    url: http://late.test:${up.port}\n    routes: [{paths: [/]}]\n`);
  try {
    const r = await request(`${g.url}/x`);
    assert.equal(r.status, 503);
    assert.equal(JSON.parse(r.body).type, 'urn:turnpike:problem:no-healthy-target');
    assert.equal(r.headers['retry-after'], '5', 'no active checks: nothing scheduled, the default');
    zone.set('late.test', ['127.0.0.4']);
    let body = '';
    for (let i = 0; i < 60 && !body.startsWith('127.0.0.4'); i++) {
      await sleep(50);
      body = (await request(`${g.url}/x`)).body;
    }
    assert.match(body, /^127\.0\.0\.4 late\.test:/);
  } finally {
    await g.close();
    await up.close();
    await dns.close();
  }
});

test('the system resolver: localhost resolves through /etc/hosts, every address a target', async () => {
  const expected = [...new Set((await lookup('localhost', { all: true })).map((a) => a.address))].sort();
  const up = await startOn(expected);
  const g = await startGateway(`services:\n  - name: s\n    url: http://localhost:${up.port}\n    routes: [{paths: [/]}]\n`);
  try {
    const origins = g.gw.snapshot.services[0]!.targets.map((t) => t.origin);
    assert.deepEqual(origins, expected.map((a) => `http://${a.includes(':') ? `[${a}]` : a}:${up.port}`));
    const seen = new Set<string>();
    for (let i = 0; i < 2 * expected.length; i++) {
      const r = await request(`${g.url}/x`);
      assert.equal(r.status, 200);
      seen.add(r.body.split(' ')[0]!);
    }
    assert.deepEqual([...seen].sort(), expected);
  } finally {
    await g.close();
    await up.close();
  }
});

test('a wall clock stepped back (NTP, a resumed VM) does not stop the re-resolving: a changed answer is still taken within dns.refresh, not once the clock has caught up (an hour here)', { timeout: 8000 }, async (t) => {
  const zone = new Map<string, string[]>([['moved.test', ['127.0.0.2']]]);
  const dns = await startDns(zone);
  const up = await startOn(['127.0.0.2', '127.0.0.3']);
  const g = await startGateway(`dns: {servers: ["127.0.0.1:${dns.port}"], refresh: 150ms}\nservices:\n  - name: s\n    url: http://moved.test:${up.port}\n    routes: [{paths: [/]}]\n`);
  try {
    const realNow = Date.now;
    t.mock.method(Date, 'now', () => realNow.call(Date) - 3_600_000);
    zone.set('moved.test', ['127.0.0.3']);
    const target = () => g.gw.snapshot.services[0]!.targets.map((x) => x.origin).join();
    for (let i = 0; i < 40 && !target().includes('127.0.0.3'); i++) await sleep(25);
    assert.equal(target(), `http://127.0.0.3:${up.port}`, 'the new address was not taken');
  } finally {
    t.mock.restoreAll();
    await g.close();
    await up.close();
    await dns.close();
  }
});

test('a name that stops resolving is warned about once per outage, not every refresh; its return is said', async () => {
  const zone = new Map<string, string[]>([['flaky.test', ['127.0.0.4']]]);
  const servfail = new Set<string>();
  const dns = await startDns(zone, new Map(), servfail);
  const up = await startOn(['127.0.0.4']);
  const g = await startGateway(`dns: {servers: ["127.0.0.1:${dns.port}"], refresh: 100ms, timeout: 200ms}\nservices:\n  - name: s\n    url: http://flaky.test:${up.port}\n    routes: [{paths: [/]}]\n`);
  const log = (g.gw as unknown as { log: { warn: (...a: unknown[]) => void; info: (...a: unknown[]) => void } }).log;
  const said: string[] = [];
  const [warn, info] = [log.warn.bind(log), log.info.bind(log)];
  log.warn = (...a: unknown[]) => { said.push(`warn ${String(a[1])}`); warn(...a); };
  log.info = (...a: unknown[]) => { said.push(`info ${String(a[1])}`); info(...a); };
  try {
    servfail.add('flaky.test');
    await sleep(1200);
    assert.equal(said.filter((m) => /failed to resolve/.test(m)).length, 1, said.join('\n'));
    assert.equal((await request(`${g.url}/x`)).status, 200, 'the last addresses are kept');
    servfail.delete('flaky.test');
    await sleep(600);
    assert.equal(said.filter((m) => /resolves again/.test(m)).length, 1, said.join('\n'));
  } finally {
    await g.close();
    await up.close();
    await dns.close();
  }
});

test('serve-stale (RFC 8767): a name the resolver cannot answer for (SERVFAIL) keeps its last addresses, only up to dns.max_stale after they came; then it has none until it resolves', { timeout: 10000 }, async () => {
  const zone = new Map<string, string[]>([['stale.test', ['127.0.0.4']]]);
  const servfail = new Set<string>();
  const dns = await startDns(zone, new Map(), servfail);
  const up = await startOn(['127.0.0.4']);
  const g = await startGateway(`dns: {servers: ["127.0.0.1:${dns.port}"], refresh: 100ms, timeout: 300ms, max_stale: 1500ms}\nservices:\n  - name: s\n    url: http://stale.test:${up.port}\n    routes: [{paths: [/]}]\n`);
  try {
    assert.equal((await request(`${g.url}/x`)).status, 200);
    servfail.add('stale.test');
    const failingFrom = Date.now();
    const before = dns.queries.length;
    // Asked several times meanwhile (each a SERVFAIL): the addresses stay.
    for (let i = 0; i < 40 && dns.queries.slice(before).filter((q) => q === 'A stale.test').length < 3; i++) await sleep(50);
    assert.ok(Date.now() - failingFrom < 1300, 'three refreshes within the stale bound');
    assert.equal((await request(`${g.url}/x`)).status, 200, 'serve-stale: the last addresses are kept');
    // Past max_stale they go.
    let status = 200;
    for (let i = 0; i < 80 && status === 200; i++) {
      await sleep(50);
      status = (await request(`${g.url}/x`)).status;
    }
    assert.equal(status, 503);
    assert.ok(Date.now() - failingFrom >= 1400, `dropped after ${Date.now() - failingFrom} ms, before max_stale`);
    // The name resolves again: served.
    servfail.delete('stale.test');
    for (let i = 0; i < 60 && status !== 200; i++) {
      await sleep(50);
      status = (await request(`${g.url}/x`)).status;
    }
    assert.equal(status, 200);
  } finally {
    await g.close();
    await up.close();
    await dns.close();
  }
});

test('a system lookup that hangs (getaddrinfo) is given up after dns.timeout and never asked again while it hangs; other names serve', { timeout: 8000 }, async () => {
  const up = await startOn(['127.0.0.1']);
  const real = systemResolver.lookup;
  let asked = 0;
  systemResolver.lookup = (host: string) => {
    if (host !== 'hang.test') return real(host);
    asked++;
    return new Promise<string[]>(() => {}); // a resolver that never answers
  };
  const started = Date.now();
  const g = await startGateway(`dns: {refresh: 100ms, timeout: 300ms}\nservices:\n  - name: stuck\n    url: http://hang.test:${up.port}\n    routes: [{paths: [/stuck]}]\n  - name: ok\n    url: http://localhost:${up.port}\n    routes: [{paths: [/ok]}]\n`);
  try {
    assert.ok(Date.now() - started < 3000, `started in ${Date.now() - started} ms`);
    assert.equal((await request(`${g.url}/ok`)).status, 200);
    const stuck = await request(`${g.url}/stuck`);
    assert.equal(stuck.status, 503, stuck.body);
    assert.match(stuck.body, /no-healthy-target/);
    await sleep(800); // several refreshes
    assert.equal(asked, 1, 'the hung lookup holds one threadpool thread, not one per refresh');
  } finally {
    systemResolver.lookup = real;
    await g.close();
    await up.close();
  }
});

test('with dns.servers, a server that never answers is given up after dns.timeout (not after c-ares\'s own tries and back-off, several times longer)', { timeout: 10000 }, async () => {
  // A DNS server that drops every query (a firewall, a dead resolver).
  const sink = createSocket('udp4');
  let queries = 0;
  sink.on('message', () => queries++);
  await new Promise<void>((r) => sink.bind(0, '127.0.0.1', r));
  const port = (sink.address() as AddressInfo).port;
  const t0 = Date.now();
  // (the start resolves the config's names first)
  const g = await startGateway(`dns: {servers: ["127.0.0.1:${port}"], timeout: 400ms}\nservices:\n  - name: s\n    url: http://silent.test:1\n    routes: [{paths: [/]}]\n`);
  const took = Date.now() - t0;
  try {
    assert.ok(queries > 0, 'the DNS server was asked');
    assert.ok(took < 1000, `the start waited ${took} ms for a lookup whose dns.timeout is 400 ms`);
    assert.equal((await request(`${g.url}/x`)).status, 503);
  } finally {
    await g.close();
    await new Promise<void>((r) => sink.close(() => r()));
  }
});

test('with dns.servers, an A query that fails (SERVFAIL) while AAAA answers keeps the name\'s IPv4 addresses: the answer is not taken as the whole set', { timeout: 10000 }, async () => {
  let aFails = false;
  const sock = createSocket('udp4');
  sock.on('message', (msg, rinfo) => {
    const q = dnsPacket.decode(msg);
    const question = q.questions?.[0];
    if (!question) return;
    const servfail = question.type === 'A' && aFails;
    const answers = servfail ? [] : question.type === 'A' ? [{ type: 'A' as const, name: question.name, ttl: 0, data: '127.0.0.1' }]
      : question.type === 'AAAA' ? [{ type: 'AAAA' as const, name: question.name, ttl: 0, data: '::1' }] : [];
    sock.send(dnsPacket.encode({ type: 'response', id: q.id, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | (servfail ? 2 : 0), questions: q.questions, answers }), rinfo.port, rinfo.address);
  });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  const dnsPort = (sock.address() as AddressInfo).port;
  // The upstream is reachable over IPv4 only (as from a network without an IPv6 route).
  const up = await startOn(['127.0.0.1']);
  const g = await startGateway(`dns: {servers: ["127.0.0.1:${dnsPort}"], refresh: 150ms, min_ttl: 100ms}\nservices:\n  - name: s\n    url: http://dual.test:${up.port}\n    retries: 1\n    routes: [{paths: [/]}]\n`);
  try {
    assert.deepEqual(g.gw.dns.get('dual.test'), ['127.0.0.1', '::1']);
    assert.equal((await request(`${g.url}/x`)).status, 200);
    aFails = true; // the DNS server fails the A query for a while
    await sleep(700);
    assert.deepEqual(g.gw.dns.get('dual.test'), ['127.0.0.1', '::1'], 'a failed A query dropped the IPv4 addresses');
    for (let i = 0; i < 4; i++) assert.equal((await request(`${g.url}/x`)).status, 200);
  } finally {
    await g.close();
    await up.close();
    await new Promise<void>((r) => sock.close(() => r()));
  }
});
