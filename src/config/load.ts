/**
 * Loading a config file: YAML or JSON (parsed with `yaml`, whose line counter gives every
 * error its line), `${VAR}` / `${VAR:-default}` substitution in values, schema validation.
 */
import { readFileSync } from 'node:fs';
import { load as jsYamlLoad, CORE_SCHEMA } from 'js-yaml';
import { createHash } from 'node:crypto';
import { LineCounter, parseDocument, visit, isMap, isSeq, isScalar, isPair, type Alias, type Document, type Node as YNode } from 'yaml';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { TurnpikeConfig, type TurnpikeConfigInput } from './schema.js';
import { ConfigError, formatPath, type ConfigIssue, type PathSegment } from './errors.js';
import { schemaIssues } from './schema-issues.js';

const validator = TypeCompiler.Compile(TurnpikeConfig);

export interface LoadedConfig {
  config: TurnpikeConfigInput;
  file: string | undefined;
  /** The text it was parsed from (workers parse the same text). */
  text: string;
  /** configHashOf(JSON.stringify(config)), when computed already (off the main thread). */
  configHash?: string;
  /** 1-based line of the node at `path` (or of its closest existing ancestor). */
  lineOf(path: readonly PathSegment[]): number | undefined;
  /** Builds a ConfigError whose issues carry lines. */
  error(issues: { path: readonly PathSegment[]; message: string }[]): ConfigError;
}

const ENV_REF = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/** Replaces `${VAR}` and `${VAR:-default}`; `$${` stays a literal `${`. Returns undefined names in `missing`. */
export function substituteEnv(text: string, env: NodeJS.ProcessEnv, missing: string[]): string {
  return text.replace(ENV_REF, (whole, name: string | undefined, def: string | undefined) => {
    if (whole === '$${') return '${';
    const value = env[name!];
    if (value !== undefined && value !== '') return value;
    if (def !== undefined) return def;
    if (value === undefined) missing.push(name!);
    return '';
  });
}

/** A `${VAR}` / `${VAR:-default}` reference within one line, or its literal form `$${VAR}`. */
const REF_ON_A_LINE = /\$?\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\n]*)?\}/g;
/** A reference's stand-in: U+E000, its index in two private-use characters, U+E001 up to the reference's length. */
const REF_TOKEN = /\uE000([\uE100-\uF0FF]{2})\uE001*/g;

/**
 * parseDocument for config text. Inside a flow collection a plain `${VAR}` is a YAML syntax
 * error — `{` and `}` are flow indicators — yet it is how the config contract writes a
 * credential: `- {type: key-auth, key: ${ACME_KEY}}`. When the text does not parse and has
 * such references, it is parsed again with each reference replaced by a plain stand-in of the
 * same length (private-use characters: offsets, lines and columns stay those of the text), and
 * the references are put back as the scalars' values (still unquoted, so typed as before).
 * A text that parses as it is is never read this way.
 */
export function parseConfigYaml(text: string, opts: { lineCounter?: LineCounter } = {}): Document {
  const parse = (t: string, lc: LineCounter) => parseDocument(t, { lineCounter: lc, prettyErrors: false, uniqueKeys: true, merge: false });
  const lc = opts.lineCounter ?? new LineCounter();
  const doc = parse(text, lc);
  if (!doc.errors.length || !text.includes('${') || /[\uE000\uE001]/.test(text)) return doc;
  const refs: string[] = [];
  const guarded = text.replace(REF_ON_A_LINE, (m) => {
    const i = refs.push(m) - 1;
    if (i >= 4096 * 4096) return m;
    return '\uE000' + String.fromCharCode(0xe100 + (i >> 12), 0xe100 + (i & 0xfff)) + '\uE001'.repeat(m.length - 3);
  });
  if (!refs.length) return doc;
  // (same line starts: the stand-ins have the references' lengths)
  const again = parse(guarded, new LineCounter());
  // (a key given twice is reported from the document that parses)
  if (again.errors.some((e) => e.code !== 'DUPLICATE_KEY')) return doc;
  visit(again, {
    Scalar(_key, node) {
      if (typeof node.value === 'string' && node.value.includes('\uE000')) {
        node.value = node.value.replace(REF_TOKEN, (_m, i: string) => refs[((i.charCodeAt(0) - 0xe100) << 12) + i.charCodeAt(1) - 0xe100]!);
      }
    },
  });
  return again;
}

/** The line of `path` in `doc` (the nearest enclosing node's where it ends early). */
export function locate(doc: Document, lc: LineCounter, path: readonly PathSegment[]): number | undefined {
  let node: unknown = doc.contents;
  let best: number | undefined;
  const lineAt = (n: unknown) => {
    const r = (n as YNode | undefined)?.range;
    return r ? lc.linePos(r[0]).line : undefined;
  };
  best = lineAt(node);
  for (const seg of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && (isScalar(p.key) ? p.key.value : p.key) === seg);
      if (!pair) break;
      best = lineAt(pair.key) ?? best;
      node = pair.value;
      best = lineAt(node) ?? best;
    } else if (isSeq(node) && typeof seg === 'number') {
      node = node.items[seg];
      if (!node) break;
      best = lineAt(node) ?? best;
    } else break;
  }
  return best;
}

/** The path of the key given again at `offset` (a DUPLICATE_KEY error's position), or null. */
export function duplicateKeyAt(doc: Document, offset: number): PathSegment[] | null {
  let found: PathSegment[] | null = null;
  visit(doc, {
    Pair(_key, pair, ancestors) {
      const k = pair.key as YNode | null;
      if (k?.range?.[0] !== offset) return undefined;
      found = pathOf(ancestors, pair);
      return visit.BREAK;
    },
  });
  return found;
}

/** The config path of a node the visitor reached through `ancestors` (the Document first). */
function pathOf(ancestors: readonly unknown[], node: unknown): PathSegment[] {
  const path: PathSegment[] = [];
  const chain = [...ancestors, node];
  for (let i = 1; i < chain.length; i++) {
    const a = chain[i];
    const parent = chain[i - 1];
    if (isPair(a)) path.push(String(isScalar(a.key) ? a.key.value : a.key));
    else if (isSeq(parent)) path.push(parent.items.indexOf(a as never));
  }
  return path;
}

/**
 * The fast path for large configs (used off the main thread, see parse-thread.ts): js-yaml's
 * YAML 1.2 core schema parses ~10x faster than `yaml`'s document API. It is taken only when
 * the text needs nothing the document API gives: no `${...}` (substitution depends on scalar
 * style), no anchors, aliases or tags, and the result passes the schema. Anything else —
 * including every error — goes through parseConfigText, which gives the messages and lines.
 * Returns undefined when the fast path does not apply.
 */
export function fastValidConfig(text: string): TurnpikeConfigInput | undefined {
  // (`${...}` substitution depends on scalar style; a `<<` merge key is refused with its line)
  if (text.includes('${') || text.includes('<<')) return undefined;
  // Plain scalars js-yaml reads as numbers and `yaml` (the reference) as strings: 0b10, 1_000, +0x10, +0o17.
  if (/(^|[\s:,\[{-])([-+]?(0b|[0-9]+_)|[-+]0[xo])/im.test(text)) return undefined;
  let special = false;
  let config: unknown;
  try {
    config = jsYamlLoad(text, {
      schema: CORE_SCHEMA,
      json: false, // duplicate keys are errors
      listener(_event, state) {
        const st = state as unknown as { anchor?: string | null; tag?: string | null };
        if (st.anchor != null || (st.tag != null && st.tag !== '?' && st.tag !== '!' && !st.tag.startsWith('tag:yaml.org,2002:'))) special = true;
      },
    });
  } catch {
    return undefined;
  }
  // Anchors, aliases and tags start a node: after a line start, blank, [ { , : - or ?.
  if (special || /(^|[\s\[{,:?-])[*&!]/m.test(text.replace(/"(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|#.*$/gm, '""'))) return undefined;
  if (typeof config !== 'object' || config === null || Array.isArray(config)) return undefined;
  return validator.Check(config) ? (config as TurnpikeConfigInput) : undefined;
}

/** sha256 (hex) of a config's JSON: the identity of a config, before DNS answers. */
export function configHashOf(json: string): string {
  return createHash('sha256').update(json).digest('hex');
}

/** Parses and validates config text (YAML or JSON). Throws ConfigError. */
export function parseConfigText(text: string, opts: { file?: string; env?: NodeJS.ProcessEnv } = {}): LoadedConfig {
  const env = opts.env ?? process.env;
  const lc = new LineCounter();
  const doc = parseConfigYaml(text, { lineCounter: lc });
  const lineOf = (path: readonly PathSegment[]) => locate(doc, lc, path);
  /** Values that came from `${VAR}` references, and the references: never shown in a message. */
  const substituted: [value: string, reference: string][] = [];
  const scrub = (message: string) => {
    // (longest first: a value inside another is not replaced half)
    for (const [value, ref] of [...substituted].sort((a, b) => b[0].length - a[0].length)) {
      if (message.includes(value)) message = message.split(value).join(ref);
    }
    return message;
  };
  /** Paths (formatted) of unquoted references that took a number or boolean type: the reference and the type. */
  const typed = new Map<string, [ref: string, type: string]>();
  /**
   * Where a text field (a key, a password, a token: `key: ${ACME_KEY}` as the contract writes
   * it) got the number or boolean an unquoted reference took the type of, "expected string"
   * alone is a puzzle: the message says why, and the fix. (A secret's "invalid value: expected
   * ..." quotes no value.)
   */
  const typedHint = (path: string, message: string) => {
    const t = typed.get(path);
    return t !== undefined && /^(expected string\b|invalid value: expected )/.test(message)
      ? `${message} (${t[0]} is unquoted, so its value was read as a ${t[1]}: write "${t[0]}" to keep it text)`
      : message;
  };
  /** YAML 1.1's booleans (yes, no, on, off, y, n) are text in YAML 1.2, which the config is read as: "expected boolean" says so. */
  const yaml11Hint = (path: readonly PathSegment[], message: string) => {
    if (message !== 'expected boolean') return message;
    const v = doc.getIn(path);
    if (typeof v !== 'string' || !/^(y|yes|n|no|on|off)$/i.test(v)) return message;
    return `${message} (${v} is text in YAML 1.2, which the config is read as: write ${/^(y|yes|on)$/i.test(v) ? 'true' : 'false'})`;
  };
  const mkError = (items: { path: readonly PathSegment[]; message: string }[]) =>
    new ConfigError(
      items
        .map((i): ConfigIssue => { const path = formatPath(i.path); return { path, line: lineOf(i.path), message: yaml11Hint(i.path, typedHint(path, scrub(i.message))) }; })
        .sort((a, b) => (a.line ?? Infinity) - (b.line ?? Infinity)),
      opts.file,
    );

  if (doc.errors.length) {
    // One syntax error tends to make the parser report every token after it: the first few say it all.
    const shown = doc.errors.slice(0, 5).map((e): ConfigIssue => {
      const dup = e.code === 'DUPLICATE_KEY' ? duplicateKeyAt(doc, e.pos[0]) : null;
      if (dup) return { path: formatPath(dup), line: lc.linePos(e.pos[0]).line, message: `duplicate key "${String(dup[dup.length - 1])}" (column ${lc.linePos(e.pos[0]).col}): a key may appear once in a mapping` };
      // (yaml's own words for it, "please use YAML.parseAllDocuments()", speak to a programmer)
      if (e.code === 'MULTIPLE_DOCS') return { path: '(syntax)', line: lc.linePos(e.pos[0]).line, message: 'a second YAML document starts here (a --- line after the config): a config file holds one document' };
      return { path: '(syntax)', line: lc.linePos(e.pos[0]).line, message: e.message.split('\n')[0]! };
    });
    if (doc.errors.length > shown.length) shown.push({ path: '(syntax)', message: `${doc.errors.length - shown.length} more syntax errors follow from the first ones` });
    throw new ConfigError(shown, opts.file);
  }

  // A file with no content (zero bytes, only comments or whitespace, or an explicit null
  // document: `~`, `null`, a bare `---`) is refused rather than read as "no services": an editor
  // or a script that truncates the file and writes it a moment later would otherwise, through the
  // watcher, remove every route. `{}` says "all defaults" explicitly and stays valid.
  if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) {
    throw new ConfigError(
      [{ path: formatPath([]), line: lineOf([]), message: `the config file${opts.file ? ` ${opts.file}` : ''} is empty (no content, only comments or a null document): write {} for all defaults` }],
      opts.file,
    );
  }

  // A tag the YAML core schema does not know (`token: !env ADMIN_TOKEN`) is only a warning to
  // the `yaml` library, which then reads the value as plain text: the admin token would be the
  // literal string "ADMIN_TOKEN". Refused, naming where, with the way environment variables are read.
  const tagWarnings = doc.warnings.filter((w) => w.code === 'TAG_RESOLVE_FAILED' || w.code === 'BAD_COLLECTION_TYPE');
  if (tagWarnings.length) {
    const tagged: { start: number; path: PathSegment[]; node: YNode }[] = [];
    visit(doc, {
      Node(_key, node, ancestors) {
        if (node.tag && node.range) tagged.push({ start: node.range[0], path: pathOf(ancestors, node), node });
      },
    });
    throw new ConfigError(
      tagWarnings.slice(0, 20).map((w): ConfigIssue => {
        // (the node comes right after its tag, an anchor perhaps between)
        const at = tagged.filter((t) => t.start >= w.pos[1]).sort((a, b) => a.start - b.start)[0];
        const tag = text.slice(w.pos[0], w.pos[1]).trim() || w.message.replace(/^Unresolved tag: /, '');
        const ref = /^!env$/i.test(tag) && at && isScalar(at.node) && typeof at.node.value === 'string' && /^[A-Za-z_][A-Za-z0-9_]*$/.test(at.node.value) ? `\${${at.node.value}}` : undefined;
        return {
          path: formatPath(at?.path ?? []),
          line: lc.linePos(w.pos[0]).line,
          message: `unsupported YAML tag ${tag} (the value would be taken literally, as if the tag were not there): ` +
            (ref ? `write ${ref} to read the environment variable (\${VAR:-default} for a default)` : `write \${VAR} or \${VAR:-default} to read an environment variable`),
        };
      }),
      opts.file,
    );
  }

  const envIssues: { path: PathSegment[]; message: string }[] = [];
  visit(doc, {
    Scalar(key, node, ancestors) {
      if (key === 'key' || typeof node.value !== 'string' || !node.value.includes('${')) return;
      const path = pathOf(ancestors, node);
      const missing: string[] = [];
      const original = node.value;
      // Shell forms this does not do (${VAR-x}, ${VAR:?msg}, ${1}) would stay literal text: refused.
      const rest = original.replace(/\$\$\{/g, '').replace(/\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}/g, '');
      const odd = rest.indexOf('${');
      if (odd !== -1) {
        envIssues.push({ path, message: `unsupported reference ${JSON.stringify(rest.slice(odd, odd + 40))}: write \${VAR} or \${VAR:-default} (\$\${ for a literal \${)` });
      }
      const value = substituteEnv(original, env, missing);
      for (const name of missing) {
        envIssues.push({ path, message: `environment variable ${name} is not set (use \${${name}:-default} for a default)` });
      }
      node.value = value;
      // (a secret given by reference stays out of error messages, logs and admin API answers;
      // JSON-escaped too, as schema messages quote values)
      if (value.length >= 4 && value !== original) {
        substituted.push([value, original]);
        const quoted = JSON.stringify(value).slice(1, -1);
        if (quoted !== value) substituted.push([quoted, original]);
      }
      // An unquoted value that is exactly one reference takes the type it reads as (8080, true).
      if (node.type === 'PLAIN' && /^\$\{[^}]+\}$/.test(original)) {
        if (/^-?[0-9]+(\.[0-9]+)?$/.test(value)) node.value = Number(value);
        else if (value === 'true' || value === 'false') node.value = value === 'true';
        if (typeof node.value !== 'string') typed.set(formatPath(path), [original, typeof node.value]);
      }
    },
  });
  if (envIssues.length) throw mkError(envIssues);

  // A YAML 1.1 merge key (`<<: *defaults`, as docker-compose files use it) is a plain key "<<"
  // to YAML 1.2, which this reads: the schema would say only `unknown key "<<"` (or, in a
  // plugin's free-form config, take it as a key). Refused, saying what it is and what to write.
  const merges: { path: PathSegment[]; message: string }[] = [];
  visit(doc, {
    Pair(_key, pair, ancestors) {
      if (isScalar(pair.key) && pair.key.type === 'PLAIN' && pair.key.value === '<<') {
        merges.push({ path: [...pathOf(ancestors, pair)], message: 'a YAML merge key (<<: *anchor) is not supported (the config is read as YAML 1.2, where "<<" is a key like any other): write the keys out, or give a whole value by its alias (key: *anchor)' });
      }
    },
  });
  if (merges.length) throw mkError(merges);

  // Alias bombs (maxAliasCount) and unresolved aliases throw from inside toJS: each alias's
  // toJSON is wrapped for the time of it, so the error names the alias (innermost) that threw.
  const aliases: { node: Alias; path: PathSegment[] }[] = [];
  visit(doc, {
    Alias(_key, node, ancestors) {
      aliases.push({ node, path: pathOf(ancestors, node) });
    },
  });
  let culprit: { node: Alias; path: PathSegment[] } | undefined;
  for (const a of aliases) {
    const own = a.node.toJSON;
    Object.defineProperty(a.node, 'toJSON', {
      configurable: true,
      writable: true,
      value(this: Alias, ...args: Parameters<Alias['toJSON']>) {
        try {
          return own.apply(this, args);
        } catch (err) {
          culprit ??= a;
          throw err;
        }
      },
    });
  }
  let config: unknown;
  try {
    config = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    let message = (err as Error).message;
    const range = culprit?.node.range;
    if (culprit) {
      const src = culprit.node.source;
      message = message.startsWith('Unresolved alias')
        ? `unresolved alias *${src}: no anchor &${src} before it (the anchor must be set before the alias)`
        : /alias count/i.test(message)
          ? `alias *${src}: too many YAML aliases (more than 100 expansions): write the values out`
          : `alias *${src}: ${message.charAt(0).toLowerCase()}${message.slice(1)}`;
    }
    throw new ConfigError(
      [{ path: culprit ? formatPath(culprit.path) : '(aliases)', ...(range ? { line: lc.linePos(range[0]).line } : {}), message }],
      opts.file,
    );
  } finally {
    for (const a of aliases) delete (a.node as { toJSON?: unknown }).toJSON;
  }
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw mkError([{ path: [], message: 'the config must be a mapping (key: value) at the top level' }]);
  }
  const issues = schemaIssues(validator.Errors(config));
  if (issues.length) throw mkError(issues);
  return { config: config as TurnpikeConfigInput, file: opts.file, text, lineOf, error: mkError };
}

/** Whether `bytes` is UTF-8 up to its end (a sequence cut by the end still counts as valid). */
const utf8Prefix = (bytes: Uint8Array): boolean => {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes, { stream: true });
    return true;
  } catch {
    return false;
  }
};
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A config file's bytes as text: UTF-8, a BOM dropped. Anything else (a file saved as Latin-1 or
 * Windows-1252 by an old editor, UTF-16) is a ConfigError naming the line and column of the first
 * byte that is not UTF-8: read leniently, each such byte would be U+FFFD — a password or token
 * that silently differs from the one written, a name refused with a character nobody typed.
 */
export function configText(bytes: Uint8Array, file?: string): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    /* located below */
  }
  const utf16 = bytes.length >= 2 && ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff));
  if (utf16) throw new ConfigError([{ path: '(file)', line: 1, message: 'the file is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8' }], file);
  // The longest valid prefix (binary search: validity of a prefix is monotonic).
  let lo = 0;
  let hi = bytes.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (utf8Prefix(bytes.subarray(0, mid))) lo = mid;
    else hi = mid - 1;
  }
  // The prefix may end in a sequence the next byte broke (0xE4 then "s"): that sequence's lead byte is the culprit.
  let at = lo;
  for (let i = lo - 1; i >= 0 && i >= lo - 3; i--) {
    const b = bytes[i]!;
    if ((b & 0xc0) === 0x80) continue;
    const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    if (need > lo - i) at = i;
    break;
  }
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < at; i++) {
    if (bytes[i] === 0x0a) {
      line++;
      lineStart = i + 1;
    }
  }
  const byte = bytes[at] ?? 0;
  throw new ConfigError([{
    path: '(file)',
    line,
    message: `byte 0x${byte.toString(16).padStart(2, '0')} at line ${line}, column ${[...strictUtf8.decode(bytes.subarray(lineStart, at))].length + 1} is not valid UTF-8 (was the file saved as Latin-1 or Windows-1252?): save it as UTF-8`,
  }], file);
}

export function loadConfigFile(file: string, env?: NodeJS.ProcessEnv): LoadedConfig {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    throw new ConfigError([{ path: '(file)', message: `cannot read ${file}: ${(err as Error).message}` }], file);
  }
  return parseConfigText(configText(bytes, file), { file, env });
}
