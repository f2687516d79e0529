/** What the subcommands share: their output streams and argument parsing with --help. */
import { parseArgs, type ParseArgsConfig } from 'node:util';

export interface CliIo {
  stdout(s: string): void;
  stderr(s: string): void;
}

type Options = NonNullable<ParseArgsConfig['options']>;
type Parsed<O extends Options> = ReturnType<typeof parseArgs<{ args: string[]; allowPositionals: true; options: O }>>;

/**
 * parseArgs with positionals and -h/--help: the parsed arguments, or the exit code when the
 * command is done (2 after printing the error and the usage, 0 after printing the usage).
 */
export function parseCommand<O extends Options>(argv: string[], options: O, usage: string, io: CliIo): Parsed<O> | number {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: { ...options, help: { type: 'boolean', short: 'h' } } });
  } catch (err) {
    io.stderr(`${(err as Error).message}\n\n${usage}`);
    return 2;
  }
  if ((parsed.values as { help?: boolean }).help) {
    io.stdout(usage);
    return 0;
  }
  return parsed as unknown as Parsed<O>;
}
