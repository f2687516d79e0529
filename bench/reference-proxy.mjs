// Minimal reference proxy, the "Node floor": node:http server + one undici Pool (keep-alive),
// streaming each request to the upstream with pool.dispatch and piping status, headers and
// body back. No routing, no header policy beyond dropping hop-by-hop fields.
// Usage: node bench/reference-proxy.mjs UPSTREAM_URL [port]   (prints "LISTENING <port>")
import { createServer } from 'node:http';
import { Pool } from 'undici';

const upstream = new URL(process.argv[2] ?? 'http://127.0.0.1:9000');
const pool = new Pool(upstream.origin, { pipelining: 1, keepAliveTimeout: 60_000, connect: { noDelay: true } });
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade', 'host']);

class Forward {
  constructor(res) { this.res = res; this.resume = null; }
  onConnect(abort) { this.res.once('close', () => { if (!this.res.writableFinished) abort(); }); }
  onHeaders(status, raw, resume) {
    if (status < 200) return true;
    const out = [];
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i].toString('latin1');
      if (!HOP.has(name.toLowerCase())) out.push(name, raw[i + 1].toString('latin1'));
    }
    this.resume = resume;
    this.res.writeHead(status, out);
    return true;
  }
  onData(chunk) {
    const ok = this.res.write(chunk);
    if (!ok) this.res.once('drain', this.resume);
    return ok;
  }
  onComplete() { this.res.end(); }
  onError(err) { if (this.res.headersSent) this.res.destroy(err); else this.res.writeHead(502).end(); }
}

const server = createServer({ keepAliveTimeout: 65_000, noDelay: true }, (req, res) => {
  const headers = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (!HOP.has(req.rawHeaders[i].toLowerCase())) headers.push(req.rawHeaders[i], req.rawHeaders[i + 1]);
  }
  headers.push('host', upstream.host);
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  pool.dispatch({ path: req.url, method: req.method, headers, body: hasBody ? req : null }, new Forward(res));
});

server.listen(Number(process.argv[3] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
