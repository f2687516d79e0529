// The reference proxy (bench/reference-proxy.mjs) in N processes sharing one port (node:cluster):
// the "bare node:http + undici" baseline for workers.
// Usage: node bench/reference-cluster.mjs N UPSTREAM_URL PORT   (each worker prints "LISTENING <port>")
import cluster from 'node:cluster';

if (cluster.isPrimary) {
  const n = Number(process.argv[2] ?? 2);
  for (let i = 0; i < n; i++) cluster.fork().process.stdout?.pipe(process.stdout);
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => { for (const w of Object.values(cluster.workers ?? {})) w?.kill(); process.exit(0); });
} else {
  process.argv.splice(2, 1); // reference-proxy.mjs reads UPSTREAM_URL and PORT
  await import('./reference-proxy.mjs');
}
