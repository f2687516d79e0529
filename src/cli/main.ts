/** `turnpike start|validate --config FILE` (see docs and the config contract). */
import { parseArgs } from 'node:util';
import { resolve } from 'node:path';
import { VERSION } from '../version.js';

const USAGE = `turnpike ${VERSION}: an API gateway

Usage:
  turnpike start --config FILE      run the gateway in the foreground
      [--store SETTING]             sqlite:PATH | postgres://... instead of the file's store:
  turnpike start --store SETTING    no file: defaults, admin API on 127.0.0.1:8081, the config
                                    in the store (default sqlite:./turnpike.db)
  turnpike validate --config FILE   check a config file (exit 0 when valid, 1 with errors)
  turnpike hash-password            read a password on stdin, print its password_hash (basic-auth)
  turnpike import openapi SPEC [--service-url URL] [--name NAME] [--out FILE]
                                    a config for an OpenAPI 3 document (routes + request-validator)
  turnpike config export [--secrets] [--out FILE]   the running gateway's config document (admin API)
  turnpike config diff FILE         what applying FILE would change (exit 0 none, 3 changes, 1 error)
  turnpike config apply FILE [--if-revision N]      replace the stored config document with FILE
                                    (config: --admin URL, --token T; see turnpike config --help)
  turnpike --version
  turnpike help | --help            this text

SIGTERM/SIGINT drain in-flight requests and exit 0. The config file is reloaded when it
changes (unless watch: false) and on SIGHUP; an invalid one is logged and the running config
stays. With workers > 1, SIGUSR2 restarts the workers one at a time.
TURNPIKE_LOG_LEVEL: trace, debug, info (the default), warn, error, fatal or silent.
`;

export async function main(argv: string[]): Promise<number> {
  // (its own options: see src/cli/import-openapi.ts)
  if (argv[0] === 'import') return (await import('./import-openapi.js')).importCommand(argv.slice(1));
  if (argv[0] === 'config') return (await import('./config-command.js')).configCommand(argv.slice(1));
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        store: { type: 'string' },
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
  // Asked for, the usage is the answer (stdout, 0); given for a mistake, it goes with the error.
  if (values.help || command === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (!command) {
    process.stderr.write(`turnpike: a command is needed (start, validate, ...)\n\n${USAGE}`);
    return 2;
  }
  // `--config "$CONFIG"` with CONFIG unset: not the fileless start (no routes, a new store in the
  // working directory, ready and answering 404), which is asked for by leaving --config out.
  if (values.config === '') {
    process.stderr.write(`turnpike ${command}: --config: the file name is empty\n\n${USAGE}`);
    return 2;
  }
  if ((command === 'start' || command === 'validate' || command === 'hash-password') && positionals.length > 1) {
    process.stderr.write(`turnpike ${command}: unexpected argument ${JSON.stringify(positionals[1])}${command === 'hash-password' ? ' (the password is read from stdin)' : ' (the config file is given with --config FILE)'}\n\n${USAGE}`);
    return 2;
  }
  if (command === 'hash-password') {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    const password = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
    if (password === '') {
      process.stderr.write('no password on stdin\n');
      return 1;
    }
    process.stdout.write(`${(await import('../plugins/basic-auth/hash.js')).hashPassword(password)}\n`);
    return 0;
  }
  if (command !== 'start' && command !== 'validate') {
    process.stderr.write(`unknown command "${command}"\n\n${USAGE}`);
    return 2;
  }
  const given = values.config ?? process.env.TURNPIKE_CONFIG;
  const storeArg = values.store ?? process.env.TURNPIKE_STORE;
  if (!given && command !== 'start') {
    process.stderr.write(`--config FILE is required\n\n${USAGE}`);
    return 2;
  }
  // `turnpike start` without a file: the node's defaults with an embedded sqlite store, managed
  // through the admin API on loopback (relative paths are relative to the working directory).
  const fileless = !given;
  const file = given ?? resolve('turnpike.yaml');
  return (await import('./commands.js')).runCommand(command, file, fileless, storeArg);
}
