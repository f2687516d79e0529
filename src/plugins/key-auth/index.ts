/**
 * key-auth: an API key in a header (default `apikey`) or a query parameter. Keys are held only
 * as SHA-256 digests (looked up by the request key's digest: the key itself is never compared); a request with no
 * key gets 401 `WWW-Authenticate: Key`, a wrong one 401 without detail about it.
 */
import { hash } from 'node:crypto';
import { definePlugin, type AuthOutcome, type Consumer, type RequestCtx } from '../types.js';
import { paramAfterSemicolon, sha256 } from '../auth-common.js';
import { unsendableSecret } from '../../core/secret-text.js';
import { KeyAuthConfig, KeyAuthCredential } from './schema.js';

const CHALLENGE = 'Key realm="turnpike"';

/** A credential's key digest: of its `key`, or its `key_sha256`. */
const digestOf = (c: Readonly<Record<string, unknown>>): Buffer =>
  typeof c['key_sha256'] === 'string' ? Buffer.from(c['key_sha256'], 'hex') : sha256(String(c['key']));

export default definePlugin({
  name: 'key-auth',
  priority: 1250,
  description: 'API keys in a header or query parameter, checked against consumers\' key-auth credentials.',
  schema: KeyAuthConfig,
  credential: KeyAuthCredential,
  scopes: ['global', 'service', 'route'],
  prepareCredentials(list) {
    const seen = new Map<string, string>();
    const problems: { index: number; field?: string; message: string }[] = [];
    list.forEach(({ consumer, credential }, index) => {
      if ((credential['key'] === undefined) === (credential['key_sha256'] === undefined)) {
        problems.push({ index, message: 'give one of key and key_sha256' });
        return;
      }
      const bad = typeof credential['key'] === 'string' ? unsendableSecret(credential['key'], 'a header or query value') : null;
      if (bad) problems.push({ index, field: 'key', message: bad });
      const hex = digestOf(credential).toString('hex');
      const other = seen.get(hex);
      if (other !== undefined) problems.push({ index, field: 'key', message: `the same key as consumer "${other}" has` });
      else seen.set(hex, consumer.name);
    });
    return problems;
  },
  check(config) {
    return config.header === false && config.query === false ? ['header and query cannot both be false'] : [];
  },
  create(config, deps) {
    const keys = new Map<string, { consumer: Consumer; id: string }>();
    const perConsumer = new Map<string, number>();
    for (const { consumer, credential } of deps.credentials) {
      if ((credential['key'] === undefined) === (credential['key_sha256'] === undefined)) continue;
      const digest = digestOf(credential);
      // The id sent upstream says which key without giving anything of it away.
      const n = (perConsumer.get(consumer.name) ?? 0) + 1;
      perConsumer.set(consumer.name, n);
      keys.set(digest.toString('hex'), { consumer, id: typeof credential['id'] === 'string' ? credential['id'] : `${consumer.name}/key-auth/${n}` });
    }
    const header = config.header === false ? null : (config.header ?? 'apikey').toLowerCase();
    const query = config.query === false ? null : config.query ?? 'apikey';
    /**
     * hide_credentials: the header and the query parameter never reach the upstream, whatever
     * becomes of them — a key refused (wrong, doubled, after a ';') goes on with the anonymous
     * consumer when there is one, and another auth plugin of the route may let the request in
     * before this one looks at it (any-of): an upstream must not read the key either way. Taken
     * out before authentication, then (the check reads the client's request).
     */
    const hide = (ctx: RequestCtx): void => {
      if (header !== null) ctx.removeUpstreamHeader(header);
      if (query !== null) {
        ctx.removeUpstreamQueryParam(query);
        ctx.credentialParam = query; // (nothing the upstream gets carries it: a cache keys without it)
      }
    };
    return config.hide_credentials ? { onRequest: hide, authenticate: check } : { authenticate: check };
    function check(ctx: RequestCtx): AuthOutcome {
      // `?x=1;apikey=K` is one parameter x here and two to an upstream that splits on `;` too
      // (Rack < 3, Python's parse_qs before 3.9.2): a key no check here saw (beside the header's,
      // maybe another consumer's). Refused.
      if (query !== null && ctx.query.includes(';') && paramAfterSemicolon(ctx.query, query)) {
        ctx.credentialParam = query;
        return { ok: false, missing: false, challenge: CHALLENGE, detail: `an API key (query parameter ${query}) after a ';', a separator to some servers: send it after '&'` };
      }
      let key = header !== null ? ctx.header(header) : undefined;
      // (a cache learns the field carried a key: it reaches the upstream unless hide_credentials)
      if (key !== undefined && key !== '') ctx.credentialHeader = header;
      // A key in the header and another in the query: one would be checked and the upstream
      // could read the other (maybe another consumer's). Parsed only when the query could hold it.
      if (key !== undefined && key !== '' && query !== null && ctx.query.length > 1 && (ctx.query.includes(query) || ctx.query.includes('%'))) {
        for (const v of new URLSearchParams(ctx.query.slice(1)).getAll(query)) {
          if (v !== '' && v !== key) {
            ctx.credentialParam = query; // (an anonymous consumer may still go on: no cache keys with it)
            return { ok: false, missing: false, challenge: CHALLENGE, detail: `more than one API key (header ${header} and query parameter ${query})` };
          }
        }
      }
      // (an empty header is no key: the query may still carry one)
      if ((key === undefined || key === '') && query !== null && ctx.query !== '') {
        const all = new URLSearchParams(ctx.query.slice(1)).getAll(query);
        // Two keys: one would be checked and the other, maybe another consumer's, could be the
        // one an upstream reads (frameworks differ: first, last, a list). Refused, as Kong does.
        if (all.length > 1) {
          ctx.credentialParam = query; // (an anonymous consumer may still go on: no cache keys with them)
          return { ok: false, missing: false, challenge: CHALLENGE, detail: `more than one API key (query parameter ${query})` };
        }
        const v = all[0];
        if (v !== undefined) {
          key = v;
          // (a cache keys without it: the consumer is in its key, the key itself is never stored)
          ctx.credentialParam = query;
        }
      }
      if (key === undefined || key === '') return { ok: false, missing: true, challenge: CHALLENGE };
      // One-shot SHA-256 straight to hex (no Hash object, no Buffer): the lookup compares
      // digests, never the key itself, so its timing tells nothing about a stored key.
      const hit = keys.get(hash('sha256', key, 'hex'));
      if (hit === undefined) {
        return { ok: false, missing: false, challenge: CHALLENGE, detail: 'invalid API key' };
      }
      return { ok: true, consumer: hit.consumer, identity: hit.consumer.name, credential: hit.id };
    }
  },
});
