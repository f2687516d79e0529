/**
 * Request smuggling (RFC 9112 §6.1, §6.3, §11.2): raw-socket probes against the gateway with a raw
 * origin behind it that records every byte it receives and answers each complete request with a
 * fixed 200. For every ambiguous framing the gateway must answer 400 problem+json, close the
 * connection, and let nothing smuggled reach the origin. Legal-but-unusual spellings are only
 * held to the no-desync property: the origin sees exactly the requests RFC 9112 parsing finds,
 * and the client gets one response per request.
 */
import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { startGateway, startRawOrigin, rawRequest, countRequests, sleep, type TestGateway, type RawOrigin } from './helpers.js';
import { header, parseMessages } from './framing.js';

const OK = 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok';
/** A request that must never reach the origin; 32 bytes. */
const SMUG = 'GET /admin HTTP/1.1\r\nHost: a\r\n\r\n';
const MARKERS = ['/admin', 'GPOST'];

// --------------------------------------------------------------------------------------------
// Fixture: a fresh raw origin and gateway per test, so what the origin received is exactly what
// this probe caused.
// --------------------------------------------------------------------------------------------
let origin: RawOrigin;
let gw: TestGateway;

beforeEach(async () => {
  const answered = new WeakMap<Socket, number>();
  // Answers once per complete request on each connection (keep-alive and pipelining work).
  origin = await startRawOrigin((data, socket) => {
    const done = parseMessages(data.toString('latin1'), 'request').length;
    for (let i = answered.get(socket) ?? 0; i < done; i++) socket.write(OK);
    answered.set(socket, done);
    return null;
  });
  gw = await startGateway(`
timeouts: {client_header: 2s, client_body: 1s, drain: 300ms}
services:
  - name: raw
    url: ${origin.url}
    timeouts: {connect: 1s, response: 2s, read: 2s}
    routes:
      - paths: [/]
`);
});

afterEach(async () => {
  await gw?.close();
  await origin?.close();
});

/** What the origin received: raw bytes and the complete requests in them. */
function seen() {
  const raw = origin.received();
  const requests = origin.connections.flatMap((c) => parseMessages(c.toString('latin1'), 'request'));
  return { raw, requests };
}

function show(clientText: string): string {
  return `\n--- client received:\n${JSON.stringify(clientText)}\n--- origin received:\n${JSON.stringify(origin.received())}`;
}

/**
 * The probe must be refused: 400 problem+json, connection closed, and the origin sees no
 * complete request and nothing smuggled. `bodyLevel`: the error is inside the body, after the
 * head was parsed, so the origin may have seen the start of the first request (never all of it).
 */
async function expectRejected(bytes: string, opts: { bodyLevel?: boolean; markers?: string[]; status?: RegExp } = {}) {
  const r = await rawRequest(gw.port, bytes, 1000);
  await sleep(50); // let anything the gateway forwarded land at the origin
  const o = seen();
  const ctx = show(r.text);
  // The safety property first: nothing smuggled reaches the origin, no desync.
  for (const m of opts.markers ?? MARKERS) {
    const asRequest = o.requests.some((r) => r.start.includes(m));
    assert.ok(!o.raw.includes(m), `smuggled "${m}" reached the origin ${asRequest ? 'as a request of its own' : 'inside a forwarded body'}${ctx}`);
  }
  assert.equal(o.requests.length, 0, `the origin received a complete request${ctx}`);
  assert.ok(countRequests(o.raw) <= (opts.bodyLevel ? 1 : 0), `the origin saw ${countRequests(o.raw)} request line(s)${ctx}`);
  // Then the contract: one 400 problem+json and the connection closed.
  assert.match(r.text, opts.status ?? /^HTTP\/1\.1 400 /, `the gateway did not answer 400${ctx}`);
  const res = parseMessages(r.text, 'response');
  assert.equal(res.length, 1, `expected exactly one response${ctx}`);
  assert.equal(header(res[0]!, 'content-type'), 'application/problem+json', ctx);
  const problem = JSON.parse(res[0]!.body) as Record<string, unknown>;
  assert.equal(problem.status, Number(/^HTTP\/1\.1 (\d{3})/.exec(r.text)![1]));
  assert.equal(typeof problem.type, 'string');
  assert.equal(typeof problem.detail, 'string');
  assert.ok(r.closed, `the gateway left the connection open${ctx}`);
  // And nothing is left in flight for a connection that is gone (stop() would wait on it).
  for (let i = 0; i < 20 && gw.gw.inFlight > 0; i++) await sleep(25);
  assert.equal(gw.gw.inFlight, 0, `a request is still in flight after the connection closed${ctx}`);
}

/**
 * A legal (if unusual) message: no desync. The origin sees exactly `expected` (method, target,
 * body) in order, nothing smuggled, and the client gets one 200 per request, in order.
 */
async function expectInSync(bytes: string, expected: [method: string, target: string, body: string][]) {
  const r = await rawRequest(gw.port, bytes, 600);
  await sleep(50);
  const o = seen();
  const ctx = show(r.text);
  // (sorted: requests on different upstream connections have no order between them)
  const key = (x: string[]) => x.join(' ');
  assert.deepEqual(
    o.requests.map((m) => { const [method, target] = m.start.split(' '); return [method!, target!, m.body]; }).sort((a, b) => key(a).localeCompare(key(b))),
    [...expected].sort((a, b) => key(a).localeCompare(key(b))), `the origin did not see exactly the expected requests${ctx}`,
  );
  // request lines anywhere (countRequests() anchors on line starts and misses one right after a body)
  assert.equal((o.raw.match(/(?:GET|POST|GPOST) \S+ HTTP\/1\.[01]\r\n/g) ?? []).length, expected.length, ctx);
  for (const m of MARKERS) assert.ok(!o.raw.includes(m), `smuggled "${m}" reached the origin${ctx}`);
  const res = parseMessages(r.text, 'response');
  assert.deepEqual(res.map((m) => m.start.slice(0, 12)), expected.map(() => 'HTTP/1.1 200'), `one 200 per request${ctx}`);
  assert.ok(res.every((m) => m.body === 'ok'), ctx);
}

const post = (headers: string, body: string, version = 'HTTP/1.1') => `POST / ${version}\r\nHost: a\r\n${headers}\r\n${body}`;
const chunked = (body: string) => post('Transfer-Encoding: chunked\r\n', body);

// --------------------------------------------------------------------------------------------
describe('positive controls: valid keep-alive traffic is proxied exactly', () => {
  test('two pipelined GETs on one connection: two 200s, the origin sees exactly two requests', async () => {
    await expectInSync('GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n', [
      ['GET', '/one', ''], ['GET', '/two', ''],
    ]);
  });

  test('pipelined Content-Length body, chunked body and a GET keep their framing', async () => {
    await expectInSync(
      'POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello' +
      'POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nfoo\r\n3;ext=1\r\nbar\r\n0\r\n\r\n' +
      'GET /c HTTP/1.1\r\nHost: a\r\n\r\n',
      [['POST', '/a', 'hello'], ['POST', '/b', 'foobar'], ['GET', '/c', '']],
    );
  });
});

// --------------------------------------------------------------------------------------------
describe('Content-Length and Transfer-Encoding together', () => {
  test('CL.TE: Content-Length first, then Transfer-Encoding: chunked', async () => {
    const body = `0\r\n\r\nGPOST /admin HTTP/1.1\r\nHost: a\r\n\r\n`;
    await expectRejected(post(`Content-Length: ${body.length}\r\nTransfer-Encoding: chunked\r\n`, body));
  });

  test('TE.CL: Transfer-Encoding: chunked first, then Content-Length', async () => {
    const inner = 'GPOST /admin HTTP/1.1\r\nHost: a\r\nContent-Length: 15\r\n\r\nx=1';
    const body = `${inner.length.toString(16)}\r\n${inner}\r\n0\r\n\r\n`;
    await expectRejected(post('Transfer-Encoding: chunked\r\nContent-Length: 4\r\n', body));
  });

  test('CL and TE on an HTTP/1.0 request', async () => {
    await expectRejected(post('Transfer-Encoding: chunked\r\nContent-Length: 5\r\n', `0\r\n\r\n${SMUG}`, 'HTTP/1.0'));
  });

  test('an empty Transfer-Encoding next to a Content-Length (TE present, chunked not final: §6.3 says 400)', async () => {
    // llhttp ignores the empty TE and frames by Content-Length; a peer that lets any TE override
    // CL reads zero bytes of body and then the smuggled request.
    await expectRejected(post(`Transfer-Encoding: \r\nContent-Length: ${SMUG.length}\r\n`, SMUG));
  });
});

// --------------------------------------------------------------------------------------------
describe('duplicate Content-Length', () => {
  test('two Content-Length fields with different values', async () => {
    await expectRejected(post(`Content-Length: 0\r\nContent-Length: ${SMUG.length}\r\n`, SMUG));
  });

  test('two Content-Length fields with the same value (RFC allows collapsing; the gateway rejects)', async () => {
    await expectRejected(post(`Content-Length: ${SMUG.length}\r\nContent-Length: ${SMUG.length}\r\n`, SMUG));
  });

  test('one Content-Length field holding a list of identical values', async () => {
    await expectRejected(post(`Content-Length: ${SMUG.length}, ${SMUG.length}\r\n`, SMUG));
  });
});

// --------------------------------------------------------------------------------------------
describe('malformed Content-Length', () => {
  const n = SMUG.length;
  for (const [name, value] of [
    ['a plus sign', `+${n}`],
    ['a minus sign', `-${n}`],
    ['a comma-separated pair of different values', `${n} ,6`],
    ['a space between digits', `3 2`],
    ['a hex prefix', `0x20`],
    ['a decimal point', `${n}.0`],
    ['an empty value', ''],
    ['a value beyond 2^64', '99999999999999999999999'],
    ['a NUL after the digits', `${n}\x00`],
    ['letters', 'thirty-two'],
  ] as const) {
    test(`Content-Length with ${name}: ${JSON.stringify(value)}`, async () => {
      await expectRejected(post(`Content-Length: ${value}\r\n`, SMUG));
    });
  }

  test('a Content-Length past 2^53 - 1 (9007199254740993: read as a number, it went upstream as ...992, another framing than the client\'s) is a 413, nothing forwarded', async () => {
    await expectRejected(post('Content-Length: 9007199254740993\r\n', SMUG), { status: /^HTTP\/1\.1 413 / });
  });

  test('optional whitespace around the value is legal (RFC 9110 §5.5): framed by it, no desync', async () => {
    await expectInSync(post('Content-Length:  5 \r\n', 'hello') + 'GET /next HTTP/1.1\r\nHost: a\r\n\r\n', [
      ['POST', '/', 'hello'], ['GET', '/next', ''],
    ]);
  });
});

// --------------------------------------------------------------------------------------------
describe('obfuscated Transfer-Encoding', () => {
  const te = (lines: string, version = 'HTTP/1.1') => post(lines, `0\r\n\r\n${SMUG}`, version);

  test('Transfer-Encoding: xchunked', async () => {
    await expectRejected(te('Transfer-Encoding: xchunked\r\n'));
  });

  test('Transfer-Encoding: chunked, identity (chunked not final)', async () => {
    await expectRejected(te('Transfer-Encoding: chunked, identity\r\n'));
  });

  test('Transfer-Encoding: identity, chunked (identity is no transfer coding since RFC 7230)', async () => {
    await expectRejected(te('Transfer-Encoding: identity, chunked\r\n'));
  });

  test('a transfer coding the gateway cannot decode (gzip, chunked) is refused, not silently dropped', async () => {
    // RFC 9112 §6.1: a server that does not understand a transfer coding SHOULD answer 501.
    // Forwarding the still-gzipped bytes with the coding removed corrupts the body.
    await expectRejected(te('Transfer-Encoding: gzip, chunked\r\n'), { status: /^HTTP\/1\.1 (400|501) / });
  });

  test('Transfer-Encoding : chunked (space before the colon)', async () => {
    await expectRejected(te('Transfer-Encoding : chunked\r\n'));
  });

  test('Transfer-Encoding:<VT>chunked (vertical tab is not whitespace)', async () => {
    await expectRejected(te('Transfer-Encoding:\x0bchunked\r\n'));
  });

  test('a header line starting with whitespace (Transfer-Encoding folded into Host)', async () => {
    await expectRejected(te(' Transfer-Encoding: chunked\r\n'));
  });

  test('an empty Transfer-Encoding value', async () => {
    await expectRejected(te('Transfer-Encoding: \r\n'));
  });

  test('Transfer-Encoding: chunked twice in one field', async () => {
    await expectRejected(te('Transfer-Encoding: chunked, chunked\r\n'));
  });

  test('two Transfer-Encoding fields: chunked, then identity', async () => {
    await expectRejected(te('Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n'));
  });

  test('two Transfer-Encoding fields: identity, then chunked', async () => {
    await expectRejected(te('Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n'));
  });

  test('two Transfer-Encoding fields: chunked, then chunked', async () => {
    await expectRejected(te('Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n'));
  });

  test('Transfer-Encoding: chunked on HTTP/1.0 (RFC 9112 §6.1: framing is faulty)', async () => {
    await expectRejected(te('Transfer-Encoding: chunked\r\n', 'HTTP/1.0'));
  });

  test('Transfer-Encoding: chunked on HTTP/1.0 keep-alive, with a pipelined request after it', async () => {
    await expectRejected(te('Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n', 'HTTP/1.0'));
  });

  test('Transfer-Encoding:<TAB>chunked is legal whitespace: chunked framing, no desync', async () => {
    await expectInSync(post('Transfer-Encoding:\tchunked\r\n', '5\r\nhello\r\n0\r\n\r\n') + 'GET /next HTTP/1.1\r\nHost: a\r\n\r\n', [
      ['POST', '/', 'hello'], ['GET', '/next', ''],
    ]);
  });

  test('Transfer-Encoding: CHUNKED (codings are case-insensitive): chunked framing, no desync', async () => {
    await expectInSync(post('Transfer-Encoding: CHUNKED\r\n', '5\r\nhello\r\n0\r\n\r\n') + 'GET /next HTTP/1.1\r\nHost: a\r\n\r\n', [
      ['POST', '/', 'hello'], ['GET', '/next', ''],
    ]);
  });
});

// --------------------------------------------------------------------------------------------
describe('line endings', () => {
  test('bare LF after the request line', async () => {
    await expectRejected(`GET / HTTP/1.1\nHost: a\r\n\r\n${SMUG}`);
  });

  test('bare LF between header fields (hiding a Content-Length)', async () => {
    await expectRejected(post(`X-Foo: bar\nContent-Length: ${SMUG.length}\r\n`, SMUG));
  });

  test('bare LF everywhere', async () => {
    await expectRejected(`POST / HTTP/1.1\nHost: a\nContent-Length: ${SMUG.length}\n\n${SMUG}`);
  });

  test('bare CR inside a header line (hiding a Content-Length)', async () => {
    await expectRejected(post(`X-Foo: bar\rContent-Length: ${SMUG.length}\r\n`, SMUG));
  });

  test('bare CR after the request line', async () => {
    await expectRejected(`GET / HTTP/1.1\rHost: a\r\n\r\n${SMUG}`);
  });
});

// --------------------------------------------------------------------------------------------
describe('obs-fold (RFC 9112 §5.2: reject, or replace with SP)', () => {
  test('continuation line starting with a space', async () => {
    await expectRejected(`GET / HTTP/1.1\r\nHost: a\r\nX-Foo: a\r\n b\r\n\r\n${SMUG}`);
  });

  test('continuation line starting with a tab', async () => {
    await expectRejected(`GET / HTTP/1.1\r\nHost: a\r\nX-Foo: a\r\n\tb\r\n\r\n${SMUG}`);
  });

  test('a Content-Length folded into another field', async () => {
    await expectRejected(post(`X-Foo: bar\r\n Content-Length: ${SMUG.length}\r\n`, SMUG));
  });

  test('Transfer-Encoding: identity folded onto "chunked"', async () => {
    await expectRejected(post('Transfer-Encoding: identity\r\n chunked\r\n', `0\r\n\r\n${SMUG}`));
  });
});

// --------------------------------------------------------------------------------------------
describe('chunked body tricks', () => {
  const tail = `0\r\n\r\n${SMUG}`;
  for (const [name, body] of [
    ['a non-hex chunk size', `zz\r\nhello\r\n${tail}`],
    ['a chunk size overflowing 64 bits (ffffffffffffffffff)', `ffffffffffffffffff\r\nhello\r\n${tail}`],
    ['a chunk size that wraps to 5 in 64 bits (10000000000000005)', `10000000000000005\r\nhello\r\n${tail}`],
    ['a chunk extension ending in a bare LF', `5;a\nb\r\nhello\r\n${tail}`],
    ['a chunk size line ending in a bare LF', `5\nhello\r\n${tail}`],
    ['no CRLF after the chunk data', `5\r\nhelloXX${tail}`],
    ['a bare LF after the chunk data', `5\r\nhello\n${tail}`],
    ['a negative chunk size', `-5\r\nhello\r\n${tail}`],
    ['a 0x-prefixed chunk size', `0x5\r\nhello\r\n${tail}`],
    ['a last chunk ended by a bare LF', `5\r\nhello\r\n0\r\n\n${SMUG}`],
  ] as const) {
    test(`${name}`, async () => {
      await expectRejected(chunked(body), { bodyLevel: true });
    });
  }
});

// --------------------------------------------------------------------------------------------
describe('control characters, request target and field names', () => {
  for (const [name, c] of [['NUL', '\x00'], ['SOH', '\x01'], ['ESC', '\x1b'], ['DEL', '\x7f']] as const) {
    test(`${name} in a header value`, async () => {
      await expectRejected(`GET / HTTP/1.1\r\nHost: a\r\nX-Foo: a${c}b\r\n\r\n${SMUG}`);
    });
  }

  test('a space inside the request target', async () => {
    await expectRejected(`GET /a b HTTP/1.1\r\nHost: a\r\n\r\n${SMUG}`);
  });

  test('a request target followed by a second version', async () => {
    await expectRejected(`GET / HTTP/1.1 /admin HTTP/1.1\r\nHost: a\r\n\r\n${SMUG}`);
  });

  test('a tab inside the request target', async () => {
    await expectRejected(`GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n${SMUG}`);
  });

  for (const [name, line] of [
    ['parentheses', 'X(Foo): a'],
    ['a space', 'X Foo: a'],
    ['an @', 'X@Foo: a'],
    ['a NUL', 'X\x00Foo: a'],
    ['no name at all', ': a'],
    ['a tab before the colon (Content-Length)', `Content-Length\t: ${SMUG.length}`],
  ] as const) {
    test(`a header name with ${name}`, async () => {
      await expectRejected(`POST / HTTP/1.1\r\nHost: a\r\n${line}\r\n\r\n${SMUG}`);
    });
  }
});

// --------------------------------------------------------------------------------------------
describe('a request refused with Connection: close ends the connection', () => {
  // The gateway answers these from handleRequest (400 + connection: close). Anything the client
  // pipelined after them must not be forwarded: the client never sees its response, so a front
  // proxy multiplexing users onto this connection would have it executed blind (and retried).
  for (const [name, first] of [
    ['missing Host', 'GET / HTTP/1.1\r\n\r\n'],
    ['two Host fields', 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'],
    ['malformed percent-encoding', 'GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n'],
  ] as const) {
    test(`${name}, then a pipelined request`, async () => {
      await expectRejected(first + SMUG);
    });
  }
});

// --------------------------------------------------------------------------------------------
describe('bytes the parser refuses after complete requests', () => {
  // A body longer than its Content-Length (CL.0-style probes) or junk after a request: the
  // requests before it are proxied and answered, in order, then one 400 problem+json closes the
  // connection (as nginx does); the refused bytes never reach the origin.
  async function expectAnsweredThenRefused(bytes: string, expected: [method: string, target: string, body: string][]) {
    const r = await rawRequest(gw.port, bytes, 1500);
    await sleep(50);
    const o = seen();
    const ctx = show(r.text);
    assert.deepEqual(o.requests.map((m) => { const [method, target] = m.start.split(' '); return [method!, target!, m.body]; }), expected, ctx);
    for (const m of MARKERS) assert.ok(!o.raw.includes(m), `smuggled "${m}" reached the origin${ctx}`);
    const res = parseMessages(r.text, 'response');
    assert.deepEqual(res.map((m) => m.start.slice(0, 12)), [...expected.map(() => 'HTTP/1.1 200'), 'HTTP/1.1 400'], ctx);
    assert.equal(header(res.at(-1)!, 'content-type'), 'application/problem+json', ctx);
    assert.equal(header(res.at(-1)!, 'connection'), 'close', ctx);
    assert.ok(r.closed, `the gateway left the connection open${ctx}`);
  }

  test('a body longer than its Content-Length: the request with its declared body is answered, then 400', async () => {
    await expectAnsweredThenRefused(post('Content-Length: 5\r\n', 'hello\u0000GPOST garbage'), [['POST', '/', 'hello']]);
  });

  test('two pipelined GETs and junk after them: two 200s in order, then 400', async () => {
    await expectAnsweredThenRefused('GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n\u0001\u0002 GPOST', [['GET', '/one', ''], ['GET', '/two', '']]);
  });
});
