/** docs/plugins.md, generated from the plugins' schemas (npm run schema writes it; a test keeps it current). */
import type { TSchema } from '@sinclair/typebox';
import { PLUGINS } from './registry.js';
import { DURATION_PATTERN, SIZE_PATTERN } from '../config/units.js';

function typeOf(s: TSchema): string {
  if (s.anyOf && (s.anyOf as TSchema[]).some((x) => x.pattern === DURATION_PATTERN)) return 'duration';
  if (s.anyOf && (s.anyOf as TSchema[]).some((x) => x.pattern === SIZE_PATTERN)) return 'size';
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.anyOf) return (s.anyOf as TSchema[]).map(typeOf).join(' \\| ');
  if (s.type === 'array') return `${typeOf(s.items as TSchema)}[]`;
  if (s.type === 'object') return s.patternProperties || s.additionalProperties ? 'map' : 'object';
  return String(s.type ?? 'any');
}

function table(schema: TSchema, skip: string[] = []): string {
  const props = (schema.properties ?? {}) as Record<string, TSchema>;
  const required = new Set<string>((schema.required as string[] | undefined) ?? []);
  const rows = Object.entries(props).filter(([k]) => !skip.includes(k)).map(([k, p]) => {
    const def = p.default !== undefined ? `\`${JSON.stringify(p.default)}\`` : required.has(k) ? 'required' : '';
    return `| \`${k}\` | ${typeOf(p)} | ${def} | ${(p.description ?? '').replace(/\|/g, '\\|')} |`;
  });
  return ['| field | type | default | |', '|---|---|---|---|', ...rows].join('\n');
}

export function pluginsMarkdown(): string {
  const out = [
    '# Plugins',
    '',
    'Generated from the plugins\' schemas by `npm run schema` (do not edit by hand). How bindings,',
    'precedence and phases work: [architecture.md](architecture.md#plugins). Each plugin\'s folder',
    '(`src/plugins/<name>/`) has its README with examples.',
    '',
  ];
  for (const p of [...PLUGINS.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    out.push(`## ${p.name}`, '', p.description, '', `Priority ${p.priority}; may be bound at: ${p.scopes.join(', ')}.`, '', table(p.schema), '');
    if (p.credential) out.push(`Credentials (\`consumers[].credentials[]\` with \`type: ${p.name}\`):`, '', table(p.credential, ['type']), '');
  }
  return out.join('\n');
}
