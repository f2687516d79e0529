/**
 * acl: allows or denies the authenticated consumer by its groups (consumers[].groups), Kong's
 * semantics: with `allow`, the consumer must be in one of those groups; with `deny`, in none of
 * them; both given, deny wins. Runs in the access phase, after authentication: a consumer (the
 * `anonymous` one included) that is not allowed is 403; so is no identity at all (a route
 * without an auth plugin: a 401 must carry a challenge, and no credentials could help).
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
          // No authentication ran (a failed one answered 401 with its challenge before this).
          if (ctx.identity === null) return { code: 'forbidden', detail: 'no consumer was identified: acl needs an authentication plugin on this route' };
          // Authenticated by an IdP without a consumer here: no groups to judge (Kong: 403).
          return { code: 'forbidden', detail: DENIED };
        }
        const groups = c.groups;
        if (deny !== null && groups.some((g) => deny.has(g))) return { code: 'forbidden', detail: DENIED };
        if (allow !== null && !groups.some((g) => allow.has(g))) return { code: 'forbidden', detail: DENIED };
        if (config.hide_groups_header) ctx.removeUpstreamHeader(groupsHeader);
      },
    };
  },
});
