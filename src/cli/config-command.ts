/**
 * `turnpike config export|diff|apply`: GitOps against a running gateway's admin API
 * (docs/admin-api.md, "The whole document"): export the stored document as YAML, show what a
 * file would change (PUT /api/config?dry_run=true), apply it (PUT /api/config). The file may be
 * a node's whole --config file: its node-local keys (listen, admin, store, ...) are left out
 * (and named on stderr), the rest is sent as written (`${VAR}` references are not substituted).
 */
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseCommand, type CliIo } from './args.js';
import { Agent, request } from 'undici';
import { LineCounter, stringify } from 'yaml';
import { configText, duplicateKeyAt, locate, parseConfigYaml } from '../config/load.js';
import { parsePath } from '../admin/errors.js';
import { ConfigError, formatPath } from '../config/errors.js';
import { splitDocument } from '../config/stores/document.js';
import { maskUrlSecrets } from '../core/url-secrets.js';

export const DEFAULT_ADMIN_URL = 'http://127.0.0.1:8081';

export const CONFIG_USAGE = `Usage:
  turnpike config export [--secrets] [--out FILE]     the stored config document, as YAML
  turnpike config diff FILE                           what applying FILE would change (nothing is written)
  turnpike config apply FILE [--if-revision N]        replace the stored document with FILE

Talks to a running gateway's admin API (PUT/GET /api/config; a store such as sqlite: or
postgres:// must be configured for writes).

  --admin URL         the admin listener (default: $TURNPIKE_ADMIN_URL, else ${DEFAULT_ADMIN_URL})
  --token TOKEN       bearer token (default: $TURNPIKE_ADMIN_TOKEN); never printed
  --secrets           export credentials with their secrets (admin token; for backups)
  --out FILE          export: write there instead of standard output
  --if-revision N     apply only if the stored config is still at revision N (else 412)

FILE may be a node's --config file: node-local keys (listen, admin, store, ...) are left out
and named on stderr. \${VAR} references are sent as written (each node resolves them).

Exit status: 0 success (diff: no changes); 1 error (unreachable, refused, invalid: the
problem and each field's path and line in FILE are printed); 2 usage error; 3 diff: there
are changes.
`;

const TIMEOUT_MS = 30_000;
const CONNECT_TIMEOUT_MS = 10_000;

export interface ConfigIo extends CliIo {
  cwd: string;
  env: NodeJS.ProcessEnv;
}

const defaultIo: ConfigIo = {
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
  cwd: process.cwd(),
  env: process.env,
};

/** An answer of the admin API. */
interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

/** A failure already worded for the user (exit 1). */
class Failure extends Error {}

type Changes = Record<string, { added?: string[]; removed?: string[]; changed?: string[] }>;

/** `services: +billing ~orders -legacy` lines for the entities that changed. */
function summary(changes: Changes | undefined): string {
  let out = '';
  for (const [kind, c] of Object.entries(changes ?? {})) {
    const parts = [...(c.added ?? []).map((n) => `+${n}`), ...(c.changed ?? []).map((n) => `~${n}`), ...(c.removed ?? []).map((n) => `-${n}`)];
    if (parts.length) out += `  ${kind}: ${parts.join(' ')}\n`;
  }
  return out;
}

/** What PUT /api/config answers (docs/admin-api.md): with ?dry_run=true, the diff too. */
interface PutAnswer {
  revision: number;
  changed: boolean;
  diff?: string;
  changes?: Changes;
}

/** Why an answer is not the admin API's PUT /api/config answer, or null when it is. */
function putAnswerProblem(r: unknown, dryRun: boolean): string | null {
  if (typeof r !== 'object' || r === null || Array.isArray(r)) return 'not a JSON object';
  const a = r as Record<string, unknown>;
  if (typeof a['revision'] !== 'number' || !Number.isSafeInteger(a['revision']) || a['revision'] < 0) return 'no revision number';
  if (typeof a['changed'] !== 'boolean') return 'no "changed" flag';
  if (dryRun && typeof a['diff'] !== 'string') return 'no diff';
  const c = a['changes'];
  if (c === undefined ? a['changed'] : typeof c !== 'object' || c === null || Array.isArray(c)) return 'no list of changes';
  for (const v of Object.values((c ?? {}) as Record<string, unknown>)) {
    if (typeof v !== 'object' || v === null) return 'a malformed list of changes';
    for (const k of ['added', 'removed', 'changed']) {
      const l = (v as Record<string, unknown>)[k];
      if (l !== undefined && !(Array.isArray(l) && l.every((n) => typeof n === 'string'))) return 'a malformed list of changes';
    }
  }
  return null;
}

/**
 * A problem+json answer (or anything else that is not a 2xx) as lines for stderr; `lineOf`
 * gives a field error's line in the FILE sent (as `turnpike validate` names it).
 */
function problemText(a: Answer, lineOf?: (path: string) => number | undefined): string {
  let p: { title?: unknown; detail?: unknown; errors?: unknown } = {};
  try {
    p = JSON.parse(a.text) as typeof p;
  } catch {
    // not JSON: a proxy's page, say
  }
  const title = typeof p.title === 'string' ? p.title : 'error';
  const detail = typeof p.detail === 'string' ? p.detail : a.text.trim().slice(0, 500);
  let out = `${a.status} ${title}${detail ? `: ${detail}` : ''}\n`;
  if (Array.isArray(p.errors)) {
    for (const e of p.errors as { path?: unknown; message?: unknown }[]) {
      const path = String(e?.path ?? '(root)');
      const line = lineOf?.(path);
      out += `  ${path}${line !== undefined ? ` (line ${line})` : ''}: ${String(e?.message ?? '')}\n`;
    }
  }
  if (a.status === 401) out += 'check --token (or TURNPIKE_ADMIN_TOKEN)\n';
  return out;
}

/**
 * The document in FILE as the body to send: as written, or re-serialized without its
 * node-local keys (top-level keys: the document paths the admin API reports stay those of
 * FILE), and the line in FILE of such a path.
 */
function readConfigFile(file: string, io: ConfigIo): { body: string; lineOf(path: string): number | undefined } {
  let bytes: Buffer;
  try {
    bytes = readFileSync(resolve(io.cwd, file));
  } catch (err) {
    throw new Failure(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let text: string;
  try {
    // (as `turnpike start` reads it: UTF-8, or refused naming the line)
    text = configText(bytes, file);
  } catch (err) {
    throw new Failure(`${file}: ${err instanceof ConfigError ? err.issues[0]!.message : (err as Error).message}`);
  }
  // As the admin API parses it (no `${VAR}` substitution), to find the node-local keys.
  const lc = new LineCounter();
  const doc = parseConfigYaml(text, { lineCounter: lc });
  if (doc.errors.length) {
    // where, as `turnpike validate` says it: the line, and for a key given twice its path
    const e = doc.errors[0]!;
    const at = lc.linePos(e.pos[0]);
    const dup = e.code === 'DUPLICATE_KEY' ? duplicateKeyAt(doc, e.pos[0]) : null;
    throw new Failure(dup
      ? `${file}: ${formatPath(dup)} (line ${at.line}): duplicate key "${String(dup[dup.length - 1])}" (column ${at.col}): a key may appear once in a mapping`
      : `${file} (line ${at.line}): invalid YAML: ${e.message.split('\n')[0]}`);
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    // The yaml library's guard against alias bombs (a ReferenceError), or an alias it cannot resolve.
    const msg = (err as Error).message.split('\n')[0] ?? '';
    throw new Failure(/alias count/i.test(msg) ? `${file}: too many YAML aliases (more than 100 expansions): write the values out` : `${file}: invalid YAML: ${msg}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Failure(`${file}: the config must be a mapping (key: value) at the top level`);
  const lineOf = (path: string): number | undefined => {
    const segs = parsePath(path);
    return segs === null || segs.length === 0 ? undefined : locate(doc, lc, segs);
  };
  const { node, document } = splitDocument(value as Record<string, unknown>);
  const left = Object.keys(node);
  if (left.length === 0) return { body: text, lineOf };
  const named = left.filter((k) => k !== '$schema');
  if (named.length) io.stderr(`${file}: left out node-local key${named.length === 1 ? '' : 's'} (set in each node's --config file): ${named.join(', ')}\n`);
  return { body: stringify(document, { lineWidth: 0, aliasDuplicateObjects: false }), lineOf };
}

/**
 * `write` with every occurrence of `token` replaced by `<token>`. A token shorter than 8
 * characters is replaced only where it stands alone (not inside a word: `--token x` must not
 * turn "export" into "e<token>port").
 */
export function redactingWriter(write: (s: string) => void, token: string): (s: string) => void {
  if (token.length >= 8) return (s) => write(s.split(token).join('<token>'));
  const alone = new RegExp(`(?<![\\x21-\\x7e])${token.replace(/[\\^$.*+?()[\]{}|/-]/g, '\\$&')}(?![\\x21-\\x7e])`, 'g');
  return (s) => write(s.replace(alone, '<token>'));
}

export async function configCommand(argv: string[], io: ConfigIo = defaultIo): Promise<number> {
  const parsed = parseCommand(argv, {
    admin: { type: 'string' },
    token: { type: 'string' },
    secrets: { type: 'boolean' },
    out: { type: 'string', short: 'o' },
    'if-revision': { type: 'string' },
  }, CONFIG_USAGE, io);
  if (typeof parsed === 'number') return parsed;
  const { values, positionals } = parsed;
  const [sub, file, ...rest] = positionals;
  const usage = (msg: string) => {
    io.stderr(`${msg}\n\n${CONFIG_USAGE}`);
    return 2;
  };
  if (sub !== 'export' && sub !== 'diff' && sub !== 'apply') return usage(sub === undefined ? 'turnpike config: which one? export, diff or apply' : `unknown config command "${sub}" (known: export, diff, apply)`);
  if (sub === 'export' ? file !== undefined : file === undefined || rest.length > 0) return usage(sub === 'export' ? 'config export takes no FILE (use --out FILE)' : `config ${sub} needs one FILE`);
  if (sub !== 'export' && (values.secrets || values.out !== undefined)) return usage('--secrets and --out are for config export');
  if (sub !== 'apply' && values['if-revision'] !== undefined) return usage('--if-revision is for config apply');
  const ifRevision = values['if-revision'];
  if (ifRevision !== undefined && !/^[0-9]{1,15}$/.test(ifRevision)) return usage('--if-revision takes a revision number');

  const token = values.token ?? io.env['TURNPIKE_ADMIN_TOKEN'] ?? '';
  if (token && !/^[\x21-\x7e]+$/.test(token)) {
    io.stderr('the admin token has characters a bearer token cannot have (spaces, line breaks, non-ASCII)\n');
    return 1;
  }
  // Whatever goes to stderr, the token never does (an error message quoting a header, say).
  const stderr = token ? redactingWriter(io.stderr, token) : io.stderr;
  let base: URL;
  const given = values.admin ?? io.env['TURNPIKE_ADMIN_URL'] ?? DEFAULT_ADMIN_URL;
  try {
    base = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(given) ? given : `http://${given}`);
    if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new Error('not http');
  } catch {
    return usage(`--admin "${maskUrlSecrets(given)}" is not an http:// or https:// URL`);
  }
  // Shown in messages without any user:password.
  const shown = `${base.origin}${base.pathname.replace(/\/+$/, '')}`;

  const agent = new Agent({ connect: { timeout: CONNECT_TIMEOUT_MS }, headersTimeout: TIMEOUT_MS, bodyTimeout: TIMEOUT_MS });
  const call = async (method: 'GET' | 'PUT', query: string, headers: Record<string, string>, body?: string): Promise<Answer> => {
    const url = new URL(`${base.pathname.replace(/\/+$/, '')}/api/config${query}`, base);
    if (token) headers['authorization'] = `Bearer ${token}`;
    try {
      const res = await request(url, { method, headers, body, dispatcher: agent, signal: AbortSignal.timeout(TIMEOUT_MS * 2) });
      return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
    } catch (err) {
      const e = err as Error & { code?: string; cause?: { code?: string; message?: string } };
      const code = e.code ?? e.cause?.code;
      if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || e.name === 'TimeoutError') {
        throw new Failure(`the admin API at ${shown} did not answer within ${TIMEOUT_MS / 1000}s`);
      }
      const why = code === 'ECONNREFUSED' ? 'connection refused' : code === 'UND_ERR_CONNECT_TIMEOUT' ? `no connection within ${CONNECT_TIMEOUT_MS / 1000}s` : code === 'ENOTFOUND' ? 'unknown host' : e.message || code || String(err);
      throw new Failure(`cannot reach the admin API at ${shown}: ${why} (is the gateway running with admin.listen there? see --admin / TURNPIKE_ADMIN_URL)`);
    }
  };
  const revisionOf = (a: Answer): string => String(a.headers['x-config-revision'] ?? '?');
  const result = (a: Answer, dryRun: boolean, lineOf?: (path: string) => number | undefined): PutAnswer => {
    if (a.status !== 200) throw new Failure(problemText(a, lineOf).trimEnd());
    let r: unknown;
    try {
      r = JSON.parse(a.text);
    } catch {
      throw new Failure(`the answer from ${shown} is not the admin API's JSON (status ${a.status})`);
    }
    const problem = putAnswerProblem(r, dryRun);
    if (problem !== null) throw new Failure(`the answer from ${shown} is not the admin API's (${problem}): ${JSON.stringify(a.text.trim().slice(0, 200))}`);
    return r as PutAnswer;
  };

  try {
    if (sub === 'export') {
      const a = await call('GET', values.secrets ? '?secrets=true' : '', { accept: 'application/yaml' });
      if (a.status !== 200) throw new Failure(problemText(a).trimEnd());
      if (!/yaml/i.test(String(a.headers['content-type']))) throw new Failure(`the answer from ${shown} is not the admin API's YAML (${String(a.headers['content-type'])})`);
      if (values.out === undefined) {
        io.stdout(a.text);
        return 0;
      }
      const outFile = resolve(io.cwd, values.out);
      try {
        // Owner-only: a new file is created so; an existing one (mode is for creation only) is
        // restricted before the secrets go in.
        if (values.secrets && existsSync(outFile)) chmodSync(outFile, 0o600);
        writeFileSync(outFile, a.text, { mode: 0o600 });
      } catch (err) {
        throw new Failure(`cannot write ${values.out}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      stderr(`${values.out}: revision ${revisionOf(a)}${values.secrets ? ' (with secrets: keep it safe)' : ''}\n`);
      return 0;
    }

    const { body, lineOf } = readConfigFile(file!, { ...io, stderr });
    const headers: Record<string, string> = { 'content-type': 'application/yaml; charset=utf-8', accept: 'application/json' };
    if (sub === 'diff') {
      const r = result(await call('PUT', '?dry_run=true', headers, body), true, lineOf);
      if (!r.changed) {
        io.stdout(`no changes: ${file} matches revision ${r.revision}\n`);
        return 0;
      }
      io.stdout(`${r.diff ?? ''}${r.diff && !r.diff.endsWith('\n') ? '\n' : ''}changes against revision ${r.revision}:\n${summary(r.changes)}`);
      return 3;
    }
    if (ifRevision !== undefined) headers['if-match'] = `"r${Number(ifRevision)}"`;
    const r = result(await call('PUT', '', headers, body), false, lineOf);
    io.stdout(r.changed ? `applied ${file}: revision ${r.revision}\n${summary(r.changes)}` : `no changes: ${file} matches revision ${r.revision}\n`);
    return 0;
  } catch (err) {
    if (!(err instanceof Failure)) throw err;
    stderr(`turnpike config ${sub}: ${err.message}\n`);
    return 1;
  } finally {
    await agent.close();
  }
}
