/**
 * request-size-limit: bodies over `max` get 413. A Content-Length over it is refused before any
 * of the body is read (and with Expect: 100-continue, without a 100); a body without one
 * (chunked, HTTP/2) is counted as it streams and cut at the limit. Runs before authentication.
 */
import { definePlugin } from '../types.js';
import { parseSize } from '../../config/units.js';
import { RequestSizeLimitConfig } from './schema.js';

export default definePlugin({
  name: 'request-size-limit',
  priority: 951,
  description: 'Refuses request bodies over a size (413), before reading them when their length is declared.',
  schema: RequestSizeLimitConfig,
  scopes: ['global', 'service', 'route', 'consumer'],
  create(config) {
    const max = parseSize(config.max);
    return {
      onRequest(ctx) {
        ctx.limitBody(max);
      },
      // Bound to a consumer (or plan), it can only act once the consumer is known.
      access(ctx) {
        ctx.limitBody(max);
      },
    };
  },
});
