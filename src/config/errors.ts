/** Config errors: every one names its path in the file (`services[0].routes[1].paths[0]`) and, where known, the line. */
import { maskUrlSecrets } from '../core/url-secrets.js';

export type PathSegment = string | number;

export interface ConfigIssue {
  path: string;
  line?: number;
  message: string;
}

export function formatPath(path: readonly PathSegment[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (/^[A-Za-z_$][A-Za-z0-9_$-]*$/.test(seg)) out += out ? `.${seg}` : seg;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out || '(root)';
}

export class ConfigError extends Error {
  readonly issues: ConfigIssue[];
  readonly file: string | undefined;
  constructor(issues: ConfigIssue[], file?: string) {
    // (every message: a schema error quotes the value, a semantic one the URL it could not parse)
    issues = issues.map((i) => {
      const message = maskUrlSecrets(i.message);
      return message === i.message ? i : { ...i, message };
    });
    super(
      `invalid config${file ? ` ${file}` : ''}:\n` +
        issues.map((i) => `  ${i.path}${i.line !== undefined ? ` (line ${i.line})` : ''}: ${i.message}`).join('\n'),
    );
    this.name = 'ConfigError';
    this.issues = issues;
    this.file = file;
  }
}
