/**
 * For tests (and embedders without a database): a validator built like `turnpike validate`
 * (schema + compile of the node's config merged with a document), and an in-memory
 * ConfigStore with the interface's semantics (one write at a time, `expected` revisions,
 * an audit log).
 */
import { RevisionConflict, type ConfigDocument, type ConfigStore, type DocumentChange, type Revision, type StoredConfig } from '../config/stores/types.js';
export { documentValidator } from './validate.js';

/** An in-memory ConfigStore: what the sqlite and postgres stores do, without the disk. */
export class MemoryStore implements ConfigStore {
  readonly kind = 'sqlite' as const;
  private readonly revisions: StoredConfig[] = [];
  private queue: Promise<unknown> = Promise.resolve();
  private readonly watchers = new Set<(revision: number) => void>();

  async open(): Promise<void> {}

  async current(): Promise<StoredConfig | null> {
    const last = this.revisions[this.revisions.length - 1];
    return last ? structuredClone(last) : null;
  }

  write(meta: { actor: string; action: string }, change: DocumentChange, expected?: number): Promise<StoredConfig> {
    const run = async (): Promise<StoredConfig> => {
      const last = this.revisions[this.revisions.length - 1];
      const revision = last?.revision ?? 0;
      if (expected !== undefined && expected !== revision) throw new RevisionConflict(expected, revision);
      const document = structuredClone(await change(last ? structuredClone(last.document) : null, revision));
      const stored: StoredConfig = { revision: revision + 1, at: new Date().toISOString(), actor: meta.actor, action: meta.action, document };
      this.revisions.push(stored);
      for (const w of this.watchers) w(stored.revision);
      return structuredClone(stored);
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => {});
    return p;
  }

  async revision(n: number): Promise<StoredConfig | null> {
    const r = this.revisions.find((x) => x.revision === n);
    return r ? structuredClone(r) : null;
  }

  async history(limit: number, before?: number): Promise<Revision[]> {
    return this.revisions
      .filter((r) => before === undefined || r.revision < before)
      .reverse()
      .slice(0, limit)
      .map(({ revision, at, actor, action }) => ({ revision, at, actor, action }));
  }

  watch(onChange: (revision: number) => void): () => void {
    this.watchers.add(onChange);
    return () => this.watchers.delete(onChange);
  }

  async close(): Promise<void> {}
}

/** A document with one of everything (valid: services with both upstream forms, an unnamed route, a composing route, bindings in every scope, credentials, a plan). */
export function sampleDocument(): ConfigDocument {
  return {
    services: [
      {
        name: 'orders',
        url: 'http://127.0.0.1:9001',
        tags: ['team-a', 'public'],
        retries: 1,
        routes: [
          { name: 'orders-api', paths: ['/orders'], methods: ['GET', 'POST'], tags: ['public'], plugins: [{ name: 'cors', config: { origins: ['*'] } }] },
          { paths: ['/o2'] },
        ],
        plugins: [
          { name: 'key-auth' },
          { name: 'rate-limit', config: { limit: 10, window: '60s' }, consumer: 'acme' },
        ],
      },
      {
        name: 'users',
        tags: ['team-b'],
        upstream: { targets: [{ url: 'http://127.0.0.1:9002', weight: 2 }, { url: 'http://127.0.0.1:9003' }], balancer: 'least-connections' },
        routes: [{ name: 'users-api', paths: ['/users/{id}'] }],
      },
    ],
    routes: [
      { name: 'profile', paths: ['/profile/{id}'], compose: { steps: [{ name: 'user', service: 'users', path: '/users/{id}' }] } },
    ],
    consumers: [
      {
        name: 'acme',
        plan: 'gold',
        groups: ['partners'],
        tags: ['public'],
        credentials: [
          { type: 'key-auth', key: 'acme-secret-key-0001' },
          { type: 'basic-auth', username: 'acme', password: 'acme-secret-password' },
        ],
        plugins: [{ name: 'rate-limit', config: { limit: 100, window: '60s' } }],
      },
      { name: 'globex', id: 'globex-1', credentials: [{ type: 'key-auth', id: 'gk', key: 'globex-secret-key-0001' }] },
    ],
    plans: { gold: { services: ['orders'], description: 'Gold tier' } },
    plugins: [{ name: 'request-size-limit', config: { max: '1mb' } }],
  };
}
