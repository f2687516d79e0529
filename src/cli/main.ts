/** `turnpike start|validate --config FILE` (see docs and the config contract). */
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../config/load.js';
import { compile } from '../config/compile.js';
import { ConfigError } from '../config/errors.js';
import { PoolRegistry } from '../upstream/pools.js';
import { Gateway } from '../server/gateway.js';
import { createLogger } from '../core/log.js';
import { VERSION } from '../version.js';

const USAGE = `turnpike ${VERSION}: an API gateway

Usage:
  turnpike start --config FILE      run the gateway in the foreground
  turnpike validate --config FILE   check a config file (exit 0 when valid, 1 with errors)
  turnpike --version

SIGTERM/SIGINT drain in-flight requests and exit 0; SIGHUP reloads the config file.
`;

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
      },
    });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.version) {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  const command = positionals[0];
  if (values.help || !command) {
    process.stdout.write(USAGE);
    return command || values.help ? 0 : 2;
  }
  if (command !== 'start' && command !== 'validate') {
    process.stderr.write(`unknown command "${command}"\n\n${USAGE}`);
    return 2;
  }
  const file = values.config ?? process.env.TURNPIKE_CONFIG;
  if (!file) {
    process.stderr.write(`--config FILE is required\n\n${USAGE}`);
    return 2;
  }

  if (command === 'validate') {
    const pools = new PoolRegistry();
    try {
      compile(loadConfigFile(file), { pools }).dispose();
      process.stdout.write(`${file}: valid\n`);
      return 0;
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`${err.message}\n`);
        return 1;
      }
      throw err;
    } finally {
      await pools.closeAll();
    }
  }

  const log = createLogger();
  let gw: Gateway;
  try {
    gw = await Gateway.start(loadConfigFile(file), { logger: log });
  } catch (err) {
    if (err instanceof ConfigError) process.stderr.write(`${err.message}\n`);
    else process.stderr.write(`turnpike: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  process.stderr.write(
    `turnpike ${VERSION} proxy on http://${fmt(gw.proxyAddress!)}` +
      (gw.adminAddress ? `, admin on http://${fmt(gw.adminAddress)}` : '') +
      (gw.demoAddress ? `, demo upstream on http://${fmt(gw.demoAddress)}` : '') + '\n',
  );

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn({ signal }, 'second signal: exiting now');
        resolve(1);
        return;
      }
      stopping = true;
      log.info({ signal }, 'draining');
      gw.stop().then(() => resolve(0), (err) => {
        log.error({ err }, 'shutdown failed');
        resolve(1);
      });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => {
      try {
        gw.reload(loadConfigFile(file));
      } catch (err) {
        log.error({ err: err instanceof ConfigError ? err.issues : String(err) }, 'reload rejected; the running config stays');
      }
    });
  });
}

function fmt(a: { address: string; port: number; family: string }): string {
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}
