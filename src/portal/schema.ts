/** The developer portal's settings (`portal:`; docs/portal.md). */
import { Type, type Static } from '@sinclair/typebox';

export const Portal = Type.Object({
  enabled: Type.Optional(Type.Boolean({ default: false, description: 'Serve the developer portal on the proxy listener.' })),
  path: Type.Optional(Type.String({ pattern: '^/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$', maxLength: 100, description: 'Where (default /portal).' })),
  title: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'The portal\'s title (default "API portal").' })),
  description: Type.Optional(Type.String({ maxLength: 4000, description: 'Shown on the catalog page (plain text).' })),
}, { additionalProperties: false, description: 'The developer portal: a catalog of the published services with their OpenAPI documents, on the proxy listener.' });

export type PortalConfig = Static<typeof Portal>;
