#!/usr/bin/env node
// A worker (forked by the primary, TURNPIKE_WORKER=1) outlives the signals that reach the whole
// process group (Ctrl-C, systemd's KillMode=control-group, `kill -INT -PGID`) from its first
// moment: loading the gateway's modules takes a good part of a second, and Node's default
// action would end it before it could say a word. The primary gets the same signal and decides
// (drain, reload, reopen, restart); runWorker installs the handlers that follow it.
import cluster from 'node:cluster';

if (cluster.isWorker && process.env.TURNPIKE_WORKER === '1') {
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR1', 'SIGUSR2']) process.on(signal, () => {});
}
const { main } = await import('../dist/cli/main.js');

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`turnpike: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
