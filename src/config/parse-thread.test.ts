/** The config parser thread: what a parse that runs out of the thread's memory gives. */
import test, { after } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from './errors.js';
import { parseConfigOffThread, stopParserThread } from './parse-thread.js';

after(() => stopParserThread());

const small = 'listen: 127.0.0.1:0\nservices:\n  - name: s\n    url: http://127.0.0.1:1\n    routes: [{paths: [/]}]\n';

// (through tsx, a worker cannot load the .ts module: the thread never starts and the main thread parses)
const compiled = import.meta.url.endsWith('.js');

test('a config whose parse exhausts the parser thread is a config error: it is not parsed again on the main thread, and the next parse gets a new thread', { skip: !compiled && 'runs compiled (npm test)' }, async () => {
  const before = process.env.TURNPIKE_CONFIG_PARSER_HEAP_MB;
  process.env.TURNPIKE_CONFIG_PARSER_HEAP_MB = '24';
  await stopParserThread();
  // ~25 MB of routes: tens of MB of JS objects in the thread (the yaml document, then the value).
  const routes: string[] = [];
  for (let i = 0; i < 150_000; i++) routes.push(`      - {name: r${i}, paths: [/p${i}/a/long/enough/path/to/weigh/something], methods: [GET, POST], strip_path: true}`);
  const big = `listen: 127.0.0.1:0\nservices:\n  - name: s\n    url: http://127.0.0.1:1\n    routes:\n${routes.join('\n')}\n`;
  const heapBefore = process.memoryUsage().heapUsed;
  let err: unknown;
  // (the thread is unref'd: a gateway's listeners keep the process up, here a timer does)
  const alive = setInterval(() => {}, 1000);
  try {
    await parseConfigOffThread(big, { file: 'big.yaml' });
  } catch (e) {
    err = e;
  } finally {
    clearInterval(alive);
    if (before === undefined) delete process.env.TURNPIKE_CONFIG_PARSER_HEAP_MB;
    else process.env.TURNPIKE_CONFIG_PARSER_HEAP_MB = before;
  }
  assert.ok(err instanceof ConfigError, `a ConfigError, not ${String(err)}`);
  assert.match(err.message, /big\.yaml/);
  assert.match(err.message, /memory/);
  // (parsed on the main thread, 150,000 routes would have left far more than this behind)
  assert.ok(process.memoryUsage().heapUsed - heapBefore < 200 * 1024 * 1024);
  const ok = await parseConfigOffThread(small, { file: 'small.yaml' });
  assert.equal(ok.config.services?.[0]?.name, 's');
});
