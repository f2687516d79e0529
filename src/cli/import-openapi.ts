/**
 * `turnpike import openapi <spec> [--service-url URL] [--name NAME] [--out FILE]`: a Turnpike
 * config from an OpenAPI 3.x document (YAML or JSON): one service (the URL from --service-url
 * or servers[0].url), one route per path (`{param}` templates in the router's syntax, the
 * operations' methods), and the request-validator plugin bound to the service, pointing at the
 * document. The document is compiled the way the plugin will compile it, so what is written
 * validates.
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, relative, resolve, sep } from 'node:path';
import { parseCommand } from './args.js';
import { Document, isScalar, isSeq, visit } from 'yaml';
import { deref, isObject, openapiVersion, parseDocumentText } from '../plugins/request-validator/spec.js';
import { ApiValidator } from '../plugins/request-validator/validator.js';
import { encodedDelimiter, normalizePath } from '../router/path.js';
import { fastValidConfig, parseConfigText, type LoadedConfig } from '../config/load.js';
import { compile } from '../config/compile.js';
import { ConfigError } from '../config/errors.js';
import { maskUrlSecrets } from '../core/url-secrets.js';
import { PoolRegistry } from '../upstream/pools.js';

export const IMPORT_USAGE = `Usage: turnpike import openapi SPEC [--service-url URL] [--name NAME] [--out FILE]

Writes a Turnpike config for an OpenAPI 3.0 / 3.1 document (YAML or JSON): one service, one
route per path, requests validated against the document (request-validator).

  --service-url URL   the upstream the document's paths are relative to (default: servers[0].url)
  --name NAME         the service's name (default: from info.title)
  --out FILE          write the config there (the spec path in it is relative to FILE);
                      default: standard output (the spec path relative to the working directory)
`;

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
/** The config's Name pattern (src/config/schema.ts). */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._~-]*$/;
/** The router's parameter segment (src/router/router.ts). */
const PARAM_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** A value interpolated into a `#` comment: every line break (YAML's and Unicode's) becomes a space. */
export function commentText(s: string): string {
  return s.replace(/[\r\n\u0085\u2028\u2029]/g, ' ');
}

/** A string as a config name: other characters become '-', at most 128, starting with a letter or digit. */
export function sanitizeName(s: string, fallback = 'api'): string {
  let n = s.normalize('NFKD').replace(/[\u0300-\u036f]/g, '').replace(/[^A-Za-z0-9._~-]+/g, '-').replace(/[-._~]*-[-._~]*/g, '-');
  n = n.replace(/^[^A-Za-z0-9]+/, '').slice(0, 128).replace(/[-.~_]+$/, '');
  return NAME_RE.test(n) ? n : fallback;
}

function paramName(raw: string, taken: Set<string>): string {
  let n = raw.replace(/[^A-Za-z0-9_]+/g, '_');
  if (!PARAM_NAME_RE.test(n)) n = `_${n}`;
  if (!PARAM_NAME_RE.test(n)) n = 'param';
  let unique = n;
  for (let i = 2; taken.has(unique); i++) unique = `${n}_${i}`;
  taken.add(unique);
  return unique;
}

/**
 * An OpenAPI path template in the router's syntax: `{user-id}` -> `{user_id}`; a segment mixing
 * text and parameters (`{name}.{ext}`) becomes one parameter (`{name_ext}`): the router captures
 * whole segments, the validator still checks the parts.
 */
export function routePath(template: string): string {
  const taken = new Set<string>();
  const segs = template.split('/').map((seg) => {
    if (!seg.includes('{')) return seg;
    const names = [...seg.matchAll(/\{([^}]*)\}/g)].map((m) => m[1]!);
    const whole = /^\{[^}]*\}$/.test(seg);
    return `{${paramName(whole ? names[0]! : names.join('_') || 'param', taken)}}`;
  });
  const p = segs.join('/');
  return p === '' ? '/' : p;
}

/** Why the router would refuse a route path (the compiler's checks), or null when it takes it. */
export function pathProblem(path: string): string | null {
  if (!path.startsWith('/')) return 'it does not start with /';
  if (/[?#]/.test(path)) return 'a route path cannot hold a query (?) or fragment (#)';
  if (/\s/.test(path)) return 'a route path cannot hold spaces';
  const n = normalizePath(path);
  if (n === null) return 'it has bad percent-encoding or a hidden dot segment';
  if (n !== path) return `it is not in normal form (dot segments or encoding; the router would see "${n}")`;
  const e = encodedDelimiter(path);
  if (e !== null) return `it spells a delimiter percent-encoded (${e}): a route path writes it as is`;
  return null;
}

/** The server URL with its variables at their defaults; null without a url. Throws for a variable without a default. */
function serverUrl(server: unknown, specFile: string): string | null {
  if (!isObject(server) || typeof server['url'] !== 'string') return null;
  const vars = isObject(server['variables']) ? server['variables'] : {};
  let missing: string | null = null;
  const url = server['url'].replace(/\{([^}]+)\}/g, (_m, n: string) => {
    const v = Object.hasOwn(vars, n) ? vars[n] : undefined;
    if (isObject(v) && typeof v['default'] === 'string') return v['default'];
    missing ??= n;
    return '';
  });
  if (missing !== null) {
    const name = JSON.stringify(missing);
    throw new Error(`${specFile}: servers[0].url has the variable {${commentText(missing)}} ${Object.hasOwn(vars, missing) ? `but servers[0].variables.${name} has no default` : 'but no servers[0].variables entry for it'}: give --service-url`);
  }
  return url;
}

export interface ImportOptions {
  /** The spec file as given (for the config's `openapi:` and messages). */
  specFile: string;
  serviceUrl?: string;
  name?: string;
  /** Where the config goes (the spec path is written relative to its directory); undefined: stdout, relative to `cwd`. */
  out?: string;
  cwd: string;
}

export interface ImportResult {
  yaml: string;
  routes: number;
  operations: number;
  /** Paths left out (the router cannot route them), one line each, for stderr. */
  warnings: string[];
}

/** Builds the config text. Throws an Error with a message for the user. */
export function importOpenapi(text: string, o: ImportOptions): ImportResult {
  let doc: unknown;
  try {
    doc = parseDocumentText(text);
  } catch (e) {
    throw new Error(`${o.specFile}: ${(e as Error).message.split('\n')[0]}`);
  }
  const version = (() => {
    try {
      return openapiVersion(doc);
    } catch (e) {
      throw new Error(`${o.specFile}: ${(e as Error).message}`);
    }
  })();
  const d = doc as Record<string, unknown>;
  // What the plugin will do with it: any problem now, not at `turnpike start`.
  try {
    ApiValidator.openapi(doc, { maxDepth: 128, allowUnsafePatterns: false, responses: false, warn: () => {} });
  } catch (e) {
    throw new Error(`${o.specFile}: ${(e as Error).message}`);
  }

  let url = o.serviceUrl;
  if (url === undefined) {
    const servers = Array.isArray(d['servers']) ? d['servers'] : [];
    const first = serverUrl(servers[0], o.specFile);
    if (first === null) throw new Error(`${o.specFile} has no servers[0].url: give --service-url`);
    if (!/^https?:\/\//i.test(first)) throw new Error(`servers[0].url "${maskUrlSecrets(first)}" is not an absolute http(s) URL: give --service-url`);
    url = first;
  }
  if (!/^https?:\/\/[^/]/i.test(url)) throw new Error(`--service-url "${maskUrlSecrets(url)}" is not an http:// or https:// URL`);
  try {
    new URL(url);
  } catch {
    throw new Error(`service URL "${maskUrlSecrets(url)}" is not a valid URL`);
  }
  if (/[?#]/.test(url)) throw new Error(`service URL "${maskUrlSecrets(url)}" has a query or fragment: an upstream URL cannot${o.serviceUrl === undefined ? ' (give --service-url)' : ''}`);
  url = url.replace(/(?<=[^/])\/+$/, '');

  const info = isObject(d['info']) ? d['info'] : {};
  const title = typeof info['title'] === 'string' ? info['title'] : '';
  const serviceName = o.name !== undefined ? o.name : sanitizeName(title.toLowerCase(), 'api');
  if (!NAME_RE.test(serviceName) || serviceName.length > 128) throw new Error(`--name "${serviceName}" is not a valid name (letters, digits, . _ ~ -, starting with a letter or digit)`);

  // One route per path; paths the router cannot tell apart ({a} vs {b}, a trailing slash) share one.
  const routes = new Map<string, { name: string; paths: string[]; methods: string[] }>();
  const names = new Set<string>();
  /** The next suffix to try per name (linear for many colliding operationIds, not quadratic). */
  const nextSuffix = new Map<string, number>();
  const unique = (n: string) => {
    let u = n;
    let i = nextSuffix.get(n) ?? 2;
    while (names.has(u)) u = `${n.slice(0, 120)}-${i++}`;
    nextSuffix.set(n, i);
    names.add(u);
    return u;
  };
  let operations = 0;
  const warnings: string[] = [];
  const paths = isObject(d['paths']) ? d['paths'] : {};
  for (const [template, rawItem] of Object.entries(paths)) {
    let item: unknown = rawItem;
    // A path item by $ref (3.1): the validator resolved it already, so it is local and exists.
    if (isObject(item) && typeof item['$ref'] === 'string') item = deref(doc, item, `/paths/${template}`).value;
    if (!isObject(item)) continue;
    const ops = METHODS.filter((m) => isObject(item[m]));
    if (ops.length === 0) continue;
    const path = routePath(template);
    const problem = pathProblem(path);
    if (problem !== null) {
      warnings.push(`${o.specFile}: left out path ${JSON.stringify(template)}: ${problem}`);
      continue;
    }
    operations += ops.length;
    const methods = ops.map((m) => m.toUpperCase());
    // HEAD is served as GET by the validator; the router needs it listed.
    if (methods.includes('GET') && !methods.includes('HEAD')) methods.push('HEAD');
    const key = path.replace(/\{[^}]*\}/g, '{}').replace(/(?<=.)\/$/, '');
    const existing = routes.get(key);
    if (existing) {
      for (const m of methods) if (!existing.methods.includes(m)) existing.methods.push(m);
      continue;
    }
    let name: string;
    const single = ops.length === 1 ? (item[ops[0]!] as Record<string, unknown>) : null;
    if (single && typeof single['operationId'] === 'string') name = sanitizeName(single['operationId'], '');
    else if (single) name = sanitizeName(`${ops[0]}-${template}`, '');
    else name = sanitizeName(template.replace(/[{}]/g, ''), '');
    routes.set(key, { name: unique(name || 'root'), paths: [path], methods });
  }
  if (routes.size === 0) throw new Error(`${o.specFile} has no operations under paths${warnings.length ? ' the router can take' : ''}`);

  const base = o.out !== undefined ? dirname(resolve(o.cwd, o.out)) : o.cwd;
  let specRef = relative(base, resolve(o.cwd, o.specFile)).split(sep).join('/');
  if (!specRef.startsWith('.') && !specRef.startsWith('/')) specRef = `./${specRef}`;

  const config = {
    listen: '127.0.0.1:8080',
    services: [{
      name: serviceName,
      url,
      routes: [...routes.values()],
      plugins: [{ name: 'request-validator', config: { openapi: specRef } }],
    }],
  };
  // What is written must validate: compiled here as `turnpike validate` would (without the
  // plugin, whose document was compiled above and may not be where a relative path points now).
  const pools = new PoolRegistry();
  try {
    // (JSON is YAML; the gateway's fast path for large configs, and the full parser for its messages)
    const check = JSON.stringify({ ...config, services: [{ ...config.services[0]!, plugins: [] }] });
    const fast = fastValidConfig(check);
    const loaded: LoadedConfig = fast
      ? { config: fast, file: undefined, text: check, lineOf: () => undefined, error: (issues) => parseConfigText(check, { env: {} }).error(issues) }
      : parseConfigText(check, { env: {} });
    compile(loaded, { pools }).dispose();
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    throw new Error(`${o.specFile}: the config made from it would not validate:\n${e.issues.map((i) => `  ${i.path}: ${i.message}`).join('\n')}`);
  } finally {
    void pools.closeAll();
  }

  const head = [
    `# Generated by \`turnpike import openapi\` from ${commentText(o.specFile)}${title ? ` ("${commentText(title)}"` : ''}${title && typeof info['version'] === 'string' ? ` ${commentText(info['version'])})` : title ? ')' : ''}, OpenAPI ${commentText(version)}.`,
    `# ${routes.size} route${routes.size === 1 ? '' : 's'} for ${operations} operation${operations === 1 ? '' : 's'}; requests are validated against the document (request-validator;`,
    '# its path is relative to this file). Check it with: npx turnpike validate --config <this file>',
    '',
  ].join('\n');
  // Lists of plain values (paths, methods) in flow style: one line per route field.
  const out = new Document(config);
  visit(out, { Seq(_k, node) { if (node.items.every((i) => isScalar(i))) node.flow = true; } });
  return { yaml: head + out.toString({ lineWidth: 0, flowCollectionPadding: false }), routes: routes.size, operations, warnings };
}

/** Whether two paths name one file (the same path, a symbolic or a hard link); false when either does not exist. */
function sameFile(a: string, b: string): boolean {
  try {
    const x = statSync(a);
    const y = statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/** The `import` command: `import openapi SPEC ...`. Returns the exit code. */
export function importCommand(argv: string[], io: { stdout: (s: string) => void; stderr: (s: string) => void; cwd: string } = {
  stdout: (s) => process.stdout.write(s), stderr: (s) => process.stderr.write(s), cwd: process.cwd(),
}): number {
  const parsed = parseCommand(argv, {
    'service-url': { type: 'string' },
    name: { type: 'string' },
    out: { type: 'string', short: 'o' },
  }, IMPORT_USAGE, io);
  if (typeof parsed === 'number') return parsed;
  const { values, positionals } = parsed;
  const [kind, spec, ...rest] = positionals;
  if (kind !== 'openapi' || spec === undefined || rest.length > 0) {
    io.stderr(`${kind !== undefined && kind !== 'openapi' ? `unknown import kind "${kind}" (known: openapi)\n\n` : ''}${IMPORT_USAGE}`);
    return 2;
  }
  let text: string;
  try {
    text = readFileSync(resolve(io.cwd, spec), 'utf8');
  } catch (err) {
    io.stderr(`cannot read ${spec}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}\n`);
    return 1;
  }
  if (values.out !== undefined && sameFile(resolve(io.cwd, spec), resolve(io.cwd, values.out))) {
    io.stderr(`--out ${values.out} is the OpenAPI document itself (${spec}): the config would overwrite it; give another file\n`);
    return 1;
  }
  let result: ImportResult;
  try {
    result = importOpenapi(text, { specFile: spec, serviceUrl: values['service-url'], name: values.name, out: values.out, cwd: io.cwd });
  } catch (err) {
    io.stderr(`${(err as Error).message}\n`);
    return 1;
  }
  for (const w of result.warnings) io.stderr(`${w}\n`);
  if (values.out === undefined) {
    io.stdout(result.yaml);
    return 0;
  }
  try {
    writeFileSync(resolve(io.cwd, values.out), result.yaml);
  } catch (err) {
    io.stderr(`cannot write ${values.out}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}\n`);
    return 1;
  }
  io.stderr(`${values.out}: ${result.routes} route${result.routes === 1 ? '' : 's'} for ${result.operations} operation${result.operations === 1 ? '' : 's'}\n`);
  return 0;
}
