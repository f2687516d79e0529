/**
 * The Turnpike scenarios of the benchmark suite (bench/run.mjs, bench/instructions.mjs): each
 * one's config, request path and headers, and the check that it does what it says before it is
 * measured. `config(ctx)` gets { listen, upstream, json, ws, tmp, issuer, token, workers }.
 */
import { join } from 'node:path';
import { probe } from './lib.mjs';

export const ALL_SCENARIOS = ['plain', 'defaults', 'observed', 'policies', 'jwt', 'routes-100', 'routes-10k', 'compose', 'cache-hit', 'http2', 'websocket', 'plain-w2', 'policies-w2'];
export const API_KEY = 'bench-key-123456';
export const WS_SIZE = 64;

// ---------------------------------------------------------------------------------------------
// Turnpike configs. Every scenario starts from the same listener; observability is off unless
// the scenario is about it.

const OFF = 'metrics: {enabled: false}\nanalytics: {enabled: false}\naccess_log: {enabled: false}\n';

function routesConfig(n) {
  const lines = [];
  for (let i = 0; i < n; i++) {
    lines.push(`      - name: r${i}\n        paths: ["/api/v1/r${i}/items/{id}"]${i % 2 ? '\n        methods: [GET, HEAD]' : ''}`);
  }
  return lines.join('\n');
}

/** name -> { desc, kind: http|h2|ws, path, headers, config(ctx), check(url) } */
export const SCENARIO = {
  plain: {
    desc: 'no plugins; metrics, analytics, access log off',
    config: (c) => `${c.listen}${OFF}services:\n  - name: bench\n    url: ${c.upstream}\n    routes:\n      - paths: [/]\n`,
  },
  defaults: {
    desc: 'no plugins; built-in defaults (metrics + analytics on, access log off)',
    config: (c) => `${c.listen}access_log: {enabled: false}\nservices:\n  - name: bench\n    url: ${c.upstream}\n    routes:\n      - paths: [/]\n`,
  },
  observed: {
    desc: 'no plugins; metrics + analytics + access log (file), tracing off (issue 7: <= 15% against plain)',
    config: (c) => `${c.listen}access_log: {enabled: true, destination: file, path: ${JSON.stringify(join(c.tmp, 'access.log'))}}\nservices:\n  - name: bench\n    url: ${c.upstream}\n    routes:\n      - paths: [/]\n`,
  },
  policies: {
    desc: 'key-auth + rate-limit (local) + metrics + analytics + access log (file)',
    headers: { apikey: API_KEY },
    config: (c) => `${c.listen}${c.workers ?? ''}access_log: {enabled: true, destination: file, path: ${JSON.stringify(join(c.tmp, 'access.log'))}}
consumers:
  - name: bench
    credentials:
      - {type: key-auth, key: ${API_KEY}}
services:
  - name: bench
    url: ${c.upstream}
    routes:
      - paths: [/]
        plugins:
          - name: key-auth
          - name: rate-limit
            config: {limit: 1000000000, window: 1m, by: consumer, policy: local}
`,
    async check(url) {
      const bare = await probe(url);
      if (bare?.status !== 401) throw new Error(`policies: a request without a key answered ${bare?.status}, expected 401`);
      const ok = await probe(url, { headers: { apikey: API_KEY } });
      if (!ok?.headers['ratelimit-policy'] && !ok?.headers.ratelimit) throw new Error('policies: no RateLimit header on an accepted request');
    },
  },
  jwt: {
    desc: 'jwt (ES256, OIDC discovery, cached verification); metrics, analytics off',
    headers: (c) => ({ authorization: `Bearer ${c.token}` }),
    config: (c) => `${c.listen}${OFF}services:\n  - name: bench\n    url: ${c.upstream}\n    routes:\n      - paths: [/]\n        plugins:\n          - name: jwt\n            config: {issuer: "${c.issuer}", audiences: ["urn:bench"], consumer_claim: client_id}\n`,
    async check(url) {
      const bare = await probe(url);
      if (bare?.status !== 401) throw new Error(`jwt: a request without a token answered ${bare?.status}, expected 401`);
    },
  },
  'routes-100': {
    desc: '100 routes, the middle one hit; metrics, analytics off',
    path: '/api/v1/r50/items/42',
    config: (c) => `${c.listen}${OFF}services:\n  - name: bench\n    url: ${c.upstream}\n    routes:\n${routesConfig(100)}\n`,
  },
  'routes-10k': {
    desc: '10,000 routes, the middle one hit; metrics, analytics off',
    path: '/api/v1/r5000/items/42',
    config: (c) => `${c.listen}${OFF}services:\n  - name: bench\n    url: ${c.upstream}\n    routes:\n${routesConfig(10_000)}\n`,
    async check(url) {
      const miss = await probe(url.replace('/r5000/', '/r10000/'));
      if (miss?.status !== 404) throw new Error(`routes-10k: an unknown route answered ${miss?.status}, expected 404`);
    },
  },
  compose: {
    desc: 'two-step chain /profile/{id} -> users, then orders?user={user.body.id}; metrics, analytics off',
    path: '/profile/7',
    via: false, // a composed answer is Turnpike's own
    config: (c) => `${c.listen}${OFF}services:
  - name: users
    url: ${c.json}
  - name: orders
    url: ${c.json}
routes:
  - name: profile
    paths: ["/profile/{id}"]
    methods: [GET]
    compose:
      steps:
        - {name: user, service: users, path: "/users/{id}"}
        - {name: orders, service: orders, path: /orders, query: {user: "{user.body.id}"}}
`,
    async check(url) {
      const r = await probe(url);
      if (r?.status !== 200 || !/"user"/.test(r.body) || !/"orders"/.test(r.body)) throw new Error(`compose: /profile/7 answered ${r?.status} ${r?.body?.slice(0, 200)}`);
    },
  },
  'cache-hit': {
    desc: 'cache plugin (memory), every request a HIT; metrics, analytics off',
    path: '/items/7',
    config: (c) => `${c.listen}${OFF}services:\n  - name: api\n    url: ${c.json}\n    routes:\n      - paths: [/items]\n        plugins:\n          - name: cache\n            config: {ttl: 30s}\n`,
    async check(url) {
      await probe(url);
      const r = await probe(url);
      if (r?.headers['x-cache-status'] !== 'HIT') throw new Error(`cache-hit: second request X-Cache-Status ${r?.headers['x-cache-status']}, expected HIT`);
    },
  },
  'plain-w2': {
    desc: 'plain with workers: 2 (primary + 2 workers, all on the proxy CPU: cost per request, summed over the processes)',
    config: (c) => SCENARIO.plain.config(c).replace(c.listen, `${c.listen}workers: 2\n`),
  },
  'policies-w2': {
    desc: 'policies with workers: 2 (rate-limit counters in the primary, asked over IPC: exact across workers)',
    headers: { apikey: API_KEY },
    config: (c) => SCENARIO.policies.config({ ...c, workers: 'workers: 2\n' }),
    check: (url) => SCENARIO.policies.check(url),
  },
  http2: {
    kind: 'h2',
    desc: 'h2c (prior knowledge), h2load -m1; metrics, analytics off',
    config: (c) => `${c.listen}${OFF}http2: {h2c: true, max_concurrent_streams: 256}\nservices:\n  - name: bench\n    url: ${c.upstream}\n    routes:\n      - paths: [/]\n`,
  },
  websocket: {
    kind: 'ws',
    desc: `WebSocket echo, ${WS_SIZE}-byte messages, closed loop; metrics, analytics off`,
    config: (c) => `${c.listen}${OFF}services:\n  - name: ws\n    url: ${c.ws}\n    routes:\n      - paths: [/]\n        websocket: true\n`,
  },
};
