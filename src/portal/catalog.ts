/**
 * The developer portal's catalog: the published services (all their routes) and published
 * routes of other services, from the config; each API's OpenAPI 3.1 document is generated
 * from its routes (paths with their {params}, methods, hosts).
 */
import type { TurnpikeConfigInput } from '../config/schema.js';
import { parseDuration } from '../config/units.js';

export interface PortalRoute { name: string; paths: string[]; methods: string[]; hosts: string[]; description: string }
export interface PortalApi { name: string; description: string; routes: PortalRoute[] }
export interface PortalSettings {
  /** The path it is served at, without a trailing slash (/portal). */
  base: string;
  /** The Host names it answers for, lower case (null: every host). */
  hosts: ReadonlySet<string> | null;
  title: string;
  description: string;
  apis: PortalApi[];
  /** Developer accounts (null: off). */
  accounts: AccountSettings | null;
}

export interface AccountSettings {
  defaultPlan: string | null;
  plans: string[];
  approval: 'auto' | 'manual';
  planApproval: 'auto' | 'manual';
  /** null: the node's own random secret. */
  secret: string | null;
  sessionTtlMs: number;
  maxKeys: number;
  signupsPerHour: number;
  /** All clients together, per node and hour. */
  nodeSignupsPerHour: number;
  verification: { url: string; linkBase: string; secret: string | null; timeoutMs: number } | null;
}

const ALL_METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'];

export function portalOf(cfg: TurnpikeConfigInput): PortalSettings | null {
  const p = cfg.portal;
  if (!p?.enabled) return null;
  const apis: PortalApi[] = [];
  for (const s of cfg.services ?? []) {
    const routes = (s.routes ?? [])
      .map((r, i) => ({ r, name: r.name ?? `${s.name}.${i}` }))
      .filter(({ r }) => (s.published ? r.published !== false : r.published === true))
      .map(({ r, name }): PortalRoute => ({ name, paths: [...(r.paths ?? [])], methods: (r.methods ?? []).map((m) => m.toUpperCase()), hosts: [...(r.hosts ?? [])], description: r.description ?? '' }));
    if (routes.length > 0) apis.push({ name: s.name, description: s.description ?? '', routes });
  }
  const a = p.accounts;
  const accounts: AccountSettings | null = a?.enabled ? {
    defaultPlan: a.default_plan ?? null,
    plans: [...(a.plans ?? [])],
    approval: a.approval ?? 'auto',
    planApproval: a.plan_approval ?? 'manual',
    secret: a.secret ?? null,
    sessionTtlMs: parseDuration(a.session_ttl ?? '12h'),
    maxKeys: a.max_keys ?? 5,
    signupsPerHour: a.signups_per_hour ?? 10,
    nodeSignupsPerHour: a.node_signups_per_hour ?? 1000,
    verification: a.verification ? { url: a.verification.url, linkBase: a.verification.link_base, secret: a.verification.secret ?? null, timeoutMs: Math.min(10_000, parseDuration(a.verification.timeout ?? '5s')) } : null,
  } : null;
  return { base: p.path ?? '/portal', hosts: p.hosts ? new Set(p.hosts.map((h) => h.toLowerCase())) : null, title: p.title ?? 'API portal', description: p.description ?? '', apis, accounts };
}

/** The OpenAPI 3.1 document of one API, generated from its routes. */
export function openApiOf(api: PortalApi, serverUrl: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of api.routes) {
    for (const path of r.paths) {
      const params = [...path.matchAll(/\{([A-Za-z0-9_]+)\}/g)].map((m) => ({ name: m[1], in: 'path', required: true, schema: { type: 'string' } }));
      const item = (paths[path] ??= {});
      for (const m of r.methods.length ? r.methods : ALL_METHODS) {
        item[m.toLowerCase()] = {
          operationId: `${r.name}.${m.toLowerCase()}${r.paths.length > 1 ? `.${r.paths.indexOf(path)}` : ''}`,
          summary: r.description || `${m} ${path}`,
          ...(params.length ? { parameters: params } : {}),
          ...(r.hosts.length ? { 'x-turnpike-hosts': r.hosts } : {}),
          responses: { default: { description: 'The service\'s answer; the gateway\'s own errors are application/problem+json (RFC 9457).' } },
        };
      }
    }
  }
  return {
    openapi: '3.1.0',
    info: { title: api.name, version: '1', ...(api.description ? { description: api.description } : {}) },
    servers: [{ url: serverUrl }],
    paths,
  };
}
