/**
 * CommonJS dependencies loaded at their first use instead of with the module that names them.
 *
 * Every process start pays for the modules it loads: a worker fork, a rolling restart, a CLI
 * run. A gateway that uses neither Redis, PostgreSQL, SQLite, gRPC (the KEDA scaler),
 * OpenTelemetry, request validation nor JSONata transforms had loaded all of them, about half
 * of its start-up CPU. Sync (require through createRequire), so the code that constructs them
 * stays synchronous; only for packages that are CommonJS (one copy: no dual-package hazard
 * as long as nothing else imports the package's ESM build for values, type imports aside).
 */
import { createRequire } from 'node:module';

const load = createRequire(import.meta.url);

export function lazy<T>(id: string): () => T {
  let mod: T | undefined;
  return () => (mod ??= load(id) as T);
}
