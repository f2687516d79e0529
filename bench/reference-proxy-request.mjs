// A second Node floor: the proxy most people would write with undici's documented high-level
// API (pool.request + stream pipeline), no routing, hop-by-hop headers dropped.
// Usage: node bench/reference-proxy-request.mjs UPSTREAM_URL [port]   (prints "LISTENING <port>")
import { createServer } from 'node:http';
import { pipeline } from 'node:stream';
import { Pool } from 'undici';

const upstream = new URL(process.argv[2] ?? 'http://127.0.0.1:9000');
const pool = new Pool(upstream.origin, { pipelining: 1, keepAliveTimeout: 60_000, connect: { noDelay: true } });
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade', 'host']);

const server = createServer({ keepAliveTimeout: 65_000, noDelay: true }, async (req, res) => {
  const headers = {};
  for (const [k, v] of Object.entries(req.headers)) if (!HOP.has(k)) headers[k] = v;
  headers.host = upstream.host;
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  try {
    const up = await pool.request({ path: req.url, method: req.method, headers, body: hasBody ? req : null });
    const out = {};
    for (const [k, v] of Object.entries(up.headers)) if (!HOP.has(k)) out[k] = v;
    res.writeHead(up.statusCode, out);
    pipeline(up.body, res, () => {});
  } catch {
    if (!res.headersSent) res.writeHead(502).end();
    else res.destroy();
  }
});

server.listen(Number(process.argv[3] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
