/** The key rate-limit and quota count a request by. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { limitKey } from './limit-key.js';
import type { RequestCtx } from './types.js';

const ctx = (headers: Record<string, string>, clientIp = '203.0.113.7') => ({
  clientIp, consumer: null, identity: null, credential: null,
  route: { name: 'r' }, service: { name: 's' },
  header: (n: string) => headers[n],
}) as unknown as RequestCtx;

test('limitKey: header:NAME counts by the header; without it by the client IP (not one shared bucket)', () => {
  assert.equal(limitKey(['header:X-Tenant'], ctx({ 'x-tenant': 'acme' })), 'h:acme');
  assert.equal(limitKey(['header:X-Tenant'], ctx({})), 'ip:203.0.113.7');
  assert.notEqual(limitKey(['header:X-Tenant'], ctx({}, '198.51.100.1')), limitKey(['header:X-Tenant'], ctx({})));
  assert.equal(limitKey(['consumer', 'route'], ctx({})), 'ip:203.0.113.7|r:r');
});

test('limitKey: a long header value counts by its digest (a client cannot make every counter key kilobytes long); distinct values stay distinct', () => {
  const long = 'x'.repeat(8000);
  const k = limitKey(['header:X-Tenant'], ctx({ 'x-tenant': long }));
  assert.ok(k.length <= 80, `key of ${k.length} chars`);
  assert.equal(limitKey(['header:X-Tenant'], ctx({ 'x-tenant': long })), k, 'stable');
  assert.notEqual(limitKey(['header:X-Tenant'], ctx({ 'x-tenant': `${long}y` })), k);
  // (a short value that looks like a digest is not one)
  assert.notEqual(limitKey(['header:X-Tenant'], ctx({ 'x-tenant': k.slice(2) })), k);
});

test('limitKey: an IPv4 client written as IPv6 by a trusted proxy (::FFFF:1.2.3.4, 0:0:0:0:0:ffff:102:304, 64:ff9b::1.2.3.4) counts as that IPv4 address, not in one /64 shared by every IPv4 client', () => {
  for (const [ip, want] of [
    ['::ffff:1.2.3.4', 'ip:1.2.3.4'], ['::FFFF:1.2.3.4', 'ip:1.2.3.4'], ['0:0:0:0:0:ffff:1.2.3.4', 'ip:1.2.3.4'],
    ['::ffff:102:304', 'ip:1.2.3.4'], ['0:0:0:0:0:FFFF:0506:0708', 'ip:5.6.7.8'], ['64:ff9b::1.2.3.4', 'ip:1.2.3.4'], ['64:FF9B::909:909', 'ip:9.9.9.9'],
    ['2001:db8:1:2:3:4:5:6', 'ip:2001:db8:1:2::/64'], ['::1', 'ip:0:0:0:0::/64'], ['fe80::1%eth0', 'ip:fe80:0:0:0::/64'],
  ] as const) assert.equal(limitKey(['ip'], ctx({}, ip)), want, ip);
});

test('limitKey: an empty header value (a client library sending X-Api-Key: $UNSET) counts by the client IP, as a missing header: not one bucket that any client can spend for all such clients', () => {
  assert.equal(limitKey(['header:X-Tenant'], ctx({ 'x-tenant': '' })), 'ip:203.0.113.7');
  assert.notEqual(limitKey(['header:X-Tenant'], ctx({ 'x-tenant': '' }, '198.51.100.1')), limitKey(['header:X-Tenant'], ctx({ 'x-tenant': '' })));
  assert.equal(limitKey(['header:X-Tenant', 'route'], ctx({ 'x-tenant': '' })), 'ip:203.0.113.7|r:r');
});
