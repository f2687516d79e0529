/**
 * A module of src/ for a child process, loaded as the test process itself was: through tsx from
 * src/*.ts when the test file runs from its TypeScript (`node scripts/run-tests.mjs file.ts`),
 * else the built dist/*.js (the whole suite runs compiled, and npm test builds dist/ first).
 * tsx's loader costs a child about a second to start. Paths are from the repository root
 * (process.cwd()).
 */
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

/** Whether this process runs through tsx (its loader is in execArgv). */
export const VIA_TSX = process.execArgv.some((a) => /(^|[/\\])tsx([/\\]|$)/.test(a));

/** `src` (e.g. 'src/cli/main-entry.ts'): the node arguments that load it, its absolute path and file URL. */
export function childModule(src: string): { execArgv: string[]; path: string; url: string } {
  const rel = VIA_TSX ? src : src.replace(/^src\//, 'dist/').replace(/\.ts$/, '.js');
  const path = join(process.cwd(), rel);
  return { execArgv: VIA_TSX ? ['--import', 'tsx'] : [], path, url: pathToFileURL(path).href };
}
