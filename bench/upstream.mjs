// The benchmark's trivial upstream: node:http, keep-alive, a fixed 11-byte body for every request.
// Usage: node bench/upstream.mjs [port]   (0 = any free port; prints "LISTENING <port>" when up)
import { createServer } from 'node:http';

const BODY = Buffer.from('hello world');
const HEADERS = { 'content-type': 'text/plain', 'content-length': String(BODY.length) };

const server = createServer({ keepAliveTimeout: 65_000, noDelay: true }, (req, res) => {
  // Drain any request body, then answer.
  if (req.headers['content-length'] || req.headers['transfer-encoding']) req.resume();
  res.writeHead(200, HEADERS);
  res.end(BODY);
});
server.headersTimeout = 66_000;

server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
