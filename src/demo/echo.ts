/**
 * The demo upstream that `demo: {listen: ...}` starts beside the gateway (used by the
 * quickstart): it answers every request with a JSON description of what it received.
 * `/status/{code}` answers with that status, `/delay/{ms}` waits first (at most 10 s).
 */
import { createServer, type Server } from 'node:http';
import { sendProblem } from '../core/problem.js';

export function createEchoServer(): Server {
  return createServer((req, res) => {
    let bytes = 0;
    req.on('data', (c: Buffer) => (bytes += c.length));
    req.on('end', () => {
      let url: URL;
      try {
        url = new URL(req.url ?? '/', 'http://demo');
      } catch {
        // A target that is no URL path (`//host:99999/`, `http://a:99999/`): thrown here, from
        // the 'end' event, it ended the process the demo runs in — the gateway's.
        return sendProblem(res, 'bad-request', 'the request target is not a valid URL', undefined);
      }
      const status = /^\/status\/([1-5][0-9][0-9])$/.exec(url.pathname);
      const delay = /^\/delay\/([0-9]+)$/.exec(url.pathname);
      const body = JSON.stringify({
        service: 'turnpike-demo',
        method: req.method,
        path: url.pathname,
        query: Object.fromEntries(url.searchParams),
        headers: req.headers,
        body_bytes: bytes,
      }, null, 2) + '\n';
      const send = () => {
        const code = status ? Number(status[1]) : 200;
        res.writeHead(code < 200 ? 200 : code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      };
      if (delay) setTimeout(send, Math.min(Number(delay[1]), 10_000));
      else send();
    });
  });
}
