// Runs the CLI from source (tests and development); bin/turnpike.js runs the built copy.
import { main } from './main.js';

main(process.argv.slice(2)).then((code) => process.exit(code), (err) => {
  process.stderr.write(`turnpike: ${err?.stack ?? err}\n`);
  process.exit(1);
});
