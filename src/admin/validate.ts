/**
 * What a node runs when its declarative config lives in a store: its own node-local keys (from
 * its --config file, already substituted) plus the store's document (kept as written: `${VAR}`
 * references are resolved by each node when it loads the config, as in a file, so secrets given
 * by reference never enter the store). `effectiveText` is that config as JSON text (JSON is
 * YAML), parsed by the same parseConfigText as a file; `documentValidator` checks a document
 * the same way before it is written (the admin API), so a write that this node could not run
 * is refused with the field named.
 */
import { parseConfigText } from '../config/load.js';
import { compile, validationCounters } from '../config/compile.js';
import { ConfigError } from '../config/errors.js';
import { PoolRegistry } from '../upstream/pools.js';
import { mergeDocument, isNodeLocalKey } from '../config/stores/document.js';
import type { ConfigDocument } from '../config/stores/types.js';
import type { ValidationResult } from './api.js';

/** Keys of the file about the store itself: the CLI uses them, the gateway never sees them. */
const STORE_KEYS = new Set(['store', 'store_snapshot']);

/** `${` -> `$${` in every string (values already substituted must stay literal when parsed again). */
function escapeRefs(v: unknown): unknown {
  if (typeof v === 'string') return v.includes('${') ? v.replaceAll('${', '$${') : v;
  if (Array.isArray(v)) return v.map(escapeRefs);
  if (v !== null && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) Object.defineProperty(out, k, { value: escapeRefs(x), enumerable: true, writable: true, configurable: true });
    return out;
  }
  return v;
}

/** The node-local part of a validated (substituted) config, ready for effectiveText. */
export function nodePart(config: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(config)) if (isNodeLocalKey(k) && !STORE_KEYS.has(k) && v !== undefined) out[k] = escapeRefs(v);
  return out;
}

/** The config text a node runs: its node part (nodePart) with the store's document. */
export function effectiveText(node: Record<string, unknown>, document: ConfigDocument): string {
  return JSON.stringify(mergeDocument(node, document), null, 1);
}

/**
 * Validates `document` merged with `node` (nodePart of this node's config) with the file's
 * schema and compiler, as `turnpike validate` does; `${VAR}` resolved from `env` (default
 * process.env) as the node will. `file`: relative paths are relative to it.
 */
export function documentValidator(node: Record<string, unknown> = {}, opts: { file?: string; env?: NodeJS.ProcessEnv } = {}): (document: ConfigDocument) => ValidationResult {
  return (document) => {
    const pools = new PoolRegistry();
    let stores: ReturnType<typeof validationCounters> | undefined;
    try {
      const loaded = parseConfigText(effectiveText(node, document), { env: opts.env ?? process.env, ...(opts.file ? { file: opts.file } : {}) });
      stores = validationCounters(loaded);
      compile(loaded, { pools, storeOpened: true, counters: stores.counters }).dispose();
      return { ok: true };
    } catch (err) {
      if (err instanceof ConfigError) return { ok: false, errors: err.issues.map((i) => ({ path: i.path, message: i.message })) };
      throw err;
    } finally {
      stores?.close();
      void pools.closeAll();
    }
  };
}

/**
 * Throws the ConfigError of a config file's text that would not run (schema and compile, as
 * `turnpike validate` and a reload judge it; `${VAR}` from `env`, default process.env).
 */
export function checkConfigText(text: string, opts: { file?: string; env?: NodeJS.ProcessEnv } = {}): void {
  const pools = new PoolRegistry();
  let stores: ReturnType<typeof validationCounters> | undefined;
  try {
    const loaded = parseConfigText(text, { env: opts.env ?? process.env, ...(opts.file ? { file: opts.file } : {}) });
    stores = validationCounters(loaded);
    compile(loaded, { pools, storeOpened: true, counters: stores.counters }).dispose();
  } finally {
    stores?.close();
    void pools.closeAll();
  }
}
