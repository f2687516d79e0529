/**
 * The line between what a config store holds (the *document*) and what always comes from the
 * node's --config file.
 *
 * NODE_LOCAL_KEYS is the list; the reasons for each key are in index.ts's header. Every key
 * not in it (including keys added to the schema later) belongs to the document.
 */
import { visit, type Document as YamlDocument } from 'yaml';
import type { TurnpikeConfigInput } from '../schema.js';
import { parseConfigYaml, substituteEnv } from '../load.js';
import type { ConfigDocument } from './types.js';

export const NODE_LOCAL_KEYS: readonly string[] = [
  '$schema', 'listen', 'listen_tls', 'status_listen', 'tls', 'http2', 'workers', 'dns', 'watch', 'store', 'store_snapshot', 'admin',
  'state_file', 'redis', 'trusted_proxies', 'limits', 'timeouts', 'demo',
  'access_log', 'metrics', 'tracing', 'analytics', 'scaling',
];

const nodeLocal = new Set(NODE_LOCAL_KEYS);

/** Whether a top-level key of the config is node-local (false: it belongs to the document). */
export const isNodeLocalKey = (key: string): boolean => nodeLocal.has(key);

/** Defines an own enumerable property (never through a setter such as __proto__'s). */
function put(o: Record<string, unknown>, k: string, v: unknown): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
}

/** Splits a (validated) config into its node-local part and the document a store holds. */
export function splitDocument(config: TurnpikeConfigInput | Record<string, unknown>): { node: Record<string, unknown>; document: ConfigDocument } {
  const node: Record<string, unknown> = {};
  const document: ConfigDocument = {};
  for (const [k, v] of Object.entries(config)) {
    if (v === undefined) continue;
    put(nodeLocal.has(k) ? node : document, k, v);
  }
  return { node, document };
}

/**
 * The config a node runs: its own node-local keys plus the store's document. The document
 * replaces every declarative key of the file (the store is the truth; the file only seeded
 * it); a node-local key found in a document is ignored.
 */
export function mergeDocument(nodeConfig: TurnpikeConfigInput | Record<string, unknown>, document: ConfigDocument): TurnpikeConfigInput {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(nodeConfig)) if (nodeLocal.has(k) && v !== undefined) put(out, k, v);
  for (const [k, v] of Object.entries(document)) if (!nodeLocal.has(k) && v !== undefined) put(out, k, v);
  return out as TurnpikeConfigInput;
}

/**
 * In a parsed YAML document, an unquoted value that is exactly one `${VAR}` reference and
 * resolves (from `env`) to a number or boolean takes that value, as a config file means it
 * (`limit: ${LIMIT}`); every other reference stays as written. For documents that are stored
 * (seeded from a file, or applied through the admin API as YAML): a reference in a store is
 * a string, so a typed one must be resolved when it is written.
 */
export function typeUnquotedRefs(doc: YamlDocument, env: NodeJS.ProcessEnv = process.env): void {
  visit(doc, {
    Scalar(key, node) {
      if (key === 'key' || node.type !== 'PLAIN' || typeof node.value !== 'string' || !/^\$\{[^}]+\}$/.test(node.value)) return;
      const value = substituteEnv(node.value, env, []);
      if (/^-?[0-9]+(\.[0-9]+)?$/.test(value)) node.value = Number(value);
      else if (value === 'true' || value === 'false') node.value = value === 'true';
    },
  });
}

/**
 * The declarative part of a (valid) config file as it is written: `${VAR}` references kept, so
 * secrets given by reference never enter a store or an export (but see typeUnquotedRefs).
 */
export function rawDocument(text: string, env: NodeJS.ProcessEnv = process.env): ConfigDocument {
  const doc = parseConfigYaml(text);
  typeUnquotedRefs(doc, env);
  const raw = doc.toJS({ maxAliasCount: 100 }) as Record<string, unknown> | null;
  return splitDocument(raw ?? {}).document;
}
