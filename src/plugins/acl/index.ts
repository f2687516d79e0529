/**
 * acl: allows or denies the consumer by its groups (consumers[].groups), Kong's semantics: with
 * `allow`, the consumer must be in one of those groups; with `deny`, in none of them; both
 * given, deny wins. Runs in the access phase, after authentication. As Kong answers: nobody
 * authenticated and no credential (a route without an auth plugin; the `anonymous` consumer
 * refused) is 401, with the route's auth challenges when it has any (the client can still
 * authenticate); an identified caller that is not allowed is 403 "you cannot consume this service".
 */
import { definePlugin } from '../types.js';
import { AclConfig } from './schema.js';

const DENIED = 'you cannot consume this service';

export default definePlugin({
  name: 'acl',
  priority: 950,
  description: 'Allows or denies authenticated consumers by their groups (allow / deny lists; deny wins).',
  schema: AclConfig,
  scopes: ['global', 'service', 'route'],
  check(config) {
    return (config.allow?.length ?? 0) + (config.deny?.length ?? 0) === 0 ? ['allow or deny (a non-empty list of groups) is required'] : [];
  },
  create(config, deps) {
    const allow = config.allow?.length ? new Set(config.allow) : null;
    const deny = config.deny?.length ? new Set(config.deny) : null;
    const groupsHeader = deps.consumerHeaders.groups;
    return {
      access(ctx) {
        const c = ctx.consumer;
        if (c === null) {
          // No authentication ran (a failed one answered 401 with its challenge before this):
          // 401 as Kong, without WWW-Authenticate (no scheme on this route to offer).
          if (ctx.identity === null) return { code: 'unauthorized', detail: 'no consumer was identified: acl needs an authentication plugin on this route' };
          // Authenticated by an IdP without a consumer here: no groups to judge (Kong: 403).
          return { code: 'forbidden', detail: DENIED };
        }
        const groups = c.groups;
        if ((deny !== null && groups.some((g) => deny.has(g))) || (allow !== null && !groups.some((g) => allow.has(g)))) {
          // The anonymous consumer: no credential was judged, one could let the caller in.
          if (ctx.anonymous) {
            return { code: 'unauthorized', detail: 'credentials are required: anonymous callers cannot consume this service', headers: ctx.challenge ? { 'www-authenticate': ctx.challenge } : undefined };
          }
          return { code: 'forbidden', detail: DENIED };
        }
        if (config.hide_groups_header) ctx.removeUpstreamHeader(groupsHeader);
      },
    };
  },
});
