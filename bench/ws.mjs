#!/usr/bin/env node
/**
 * WebSocket pieces of the benchmark suite (bench/run.mjs), run as separate processes:
 *
 *   node bench/ws.mjs --echo [port]
 *       a `ws` echo server on 127.0.0.1 (node:http + ws, permessage-deflate off): every message
 *       is sent back as is. Prints "LISTENING <port>".
 *
 *   node bench/ws.mjs --client URL CONNS SECONDS [SIZE]
 *       CONNS connections to URL (ws://...), each in a closed loop: send one SIZE-byte text
 *       message (default 64), wait for its echo, send the next. After SECONDS, prints one JSON
 *       line: {msgs, msgs_per_s, p50_us, p99_us, errors, conns} (round-trip latency of each
 *       message, from a perf_hooks histogram). Exits 1 when no connection could be opened.
 */
import { createServer } from 'node:http';
import { createHistogram } from 'node:perf_hooks';
import { WebSocketServer, WebSocket } from 'ws';

const mode = process.argv[2];

if (mode === '--echo') {
  const server = createServer((_req, res) => {
    res.writeHead(426, { 'content-type': 'text/plain', connection: 'close' });
    res.end('websocket only');
  });
  const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 1 << 20 });
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('error', () => ws.terminate());
  });
  server.listen(Number(process.argv[3] ?? 0), '127.0.0.1', () => {
    process.stdout.write(`LISTENING ${server.address().port}\n`);
  });
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
} else if (mode === '--client') {
  const [url, connsArg, secondsArg, sizeArg] = process.argv.slice(3);
  const conns = Number(connsArg);
  const seconds = Number(secondsArg);
  const payload = 'x'.repeat(Number(sizeArg ?? 64));
  const hist = createHistogram();
  let msgs = 0;
  let errors = 0;
  let open = 0;
  let running = true;
  const sockets = [];
  await Promise.all(
    Array.from({ length: conns }, () => new Promise((resolve) => {
      const ws = new WebSocket(url, { perMessageDeflate: false });
      sockets.push(ws);
      let sentAt = 0n;
      const send = () => {
        sentAt = process.hrtime.bigint();
        ws.send(payload);
      };
      ws.on('open', () => {
        open++;
        resolve();
      });
      ws.on('message', () => {
        if (!running) return;
        hist.record(Number(process.hrtime.bigint() - sentAt) || 1);
        msgs++;
        send();
      });
      ws.on('error', () => {
        errors++;
        resolve();
      });
      ws.on('close', () => resolve());
      ws.startLoop = send;
    })),
  );
  if (open === 0) {
    process.stdout.write(JSON.stringify({ error: 'no connection opened', errors }) + '\n');
    process.exit(1);
  }
  // Clock starts once every connection is open.
  const t0 = process.hrtime.bigint();
  for (const ws of sockets) if (ws.readyState === WebSocket.OPEN) ws.startLoop();
  setTimeout(() => {
    running = false;
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const closedEarly = sockets.filter((ws) => ws.readyState !== WebSocket.OPEN).length;
    process.stdout.write(JSON.stringify({
      msgs,
      msgs_per_s: msgs / secs,
      p50_us: hist.count ? hist.percentile(50) / 1000 : null,
      p99_us: hist.count ? hist.percentile(99) / 1000 : null,
      errors: errors + closedEarly,
      conns: open,
    }) + '\n');
    for (const ws of sockets) ws.terminate();
    process.exit(0);
  }, seconds * 1000);
} else {
  console.error('usage: node bench/ws.mjs --echo [port] | --client URL CONNS SECONDS [SIZE]');
  process.exit(2);
}
