/** The developer portal's settings (`portal:`; docs/portal.md). */
import { Type, type Static } from '@sinclair/typebox';
import { DURATION_PATTERN } from '../config/units.js';

const PLAN_NAME = Type.String({ minLength: 1, maxLength: 128 });

export const PortalAccounts = Type.Object({
  enabled: Type.Optional(Type.Boolean({ default: false, description: 'Developers sign up and log in, get API keys and see their own usage (needs a sqlite or postgres store: developers are consumers of the config).' })),
  default_plan: Type.Optional(Type.Union([PLAN_NAME, Type.Null()], { description: 'The plan a new developer is put on (a name in `plans`; none: no plan).' })),
  plans: Type.Optional(Type.Array(PLAN_NAME, { maxItems: 50, uniqueItems: true, description: 'Plans a developer may choose on their account page.' })),
  approval: Type.Optional(Type.Union([Type.Literal('auto'), Type.Literal('manual')], { default: 'auto', description: 'manual: a new developer can log in but gets no key until an admin sets `approved: true` on their portal credential.' })),
  plan_approval: Type.Optional(Type.Union([Type.Literal('auto'), Type.Literal('manual')], { default: 'manual', description: 'manual: a plan a developer asks for is `requested_plan` until an admin puts them on it.' })),
  secret: Type.Optional(Type.String({ minLength: 32, description: 'Signs sessions and verification links (the same on every node sharing a store; default: random per node, so a restart ends the sessions).' })),
  session_ttl: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.String({ pattern: DURATION_PATTERN })], { default: '12h', description: 'How long a login lasts.' })),
  max_keys: Type.Optional(Type.Integer({ minimum: 1, maximum: 50, default: 5, description: 'API keys a developer may hold.' })),
  signups_per_hour: Type.Optional(Type.Integer({ minimum: 1, maximum: 100000, default: 10, description: 'Sign-ups accepted per client address (IPv6: per /64) per hour (per node).' })),
  node_signups_per_hour: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000000, default: 1000, description: 'Sign-ups this node accepts per hour from all clients together: each is a config revision every node reloads, and a client holding many addresses (IPv6 prefixes) passes signups_per_hour.' })),
  verification: Type.Optional(Type.Object({
    url: Type.String({ pattern: '^https?://', maxLength: 2000, description: 'Called (POST, JSON, signed like scaling webhooks) with the verification link to send; the hook sends the email.' }),
    link_base: Type.String({ pattern: '^https?://[^/?#]+$', maxLength: 300, description: 'The portal\'s public origin for the links (e.g. https://developer.example.com); never taken from the request\'s Host.' }),
    secret: Type.Optional(Type.String({ minLength: 16, description: 'Signs the call (X-Turnpike-Signature: t=...,v1=HMAC-SHA256).' })),
    timeout: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.String({ pattern: DURATION_PATTERN })], { default: '5s', description: 'How long the hook may take (at most 10 s: the sign-up waits for it).' })),
  }, { additionalProperties: false, description: 'Email verification (off by default): a new developer is unverified until they open the link the hook sent.' })),
}, { additionalProperties: false, description: 'Developer accounts on the portal.' });

export const Portal = Type.Object({
  enabled: Type.Optional(Type.Boolean({ default: false, description: 'Serve the developer portal on the proxy listener.' })),
  path: Type.Optional(Type.String({ pattern: '^/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$', maxLength: 100, description: 'Where (default /portal).' })),
  hosts: Type.Optional(Type.Array(Type.String({ pattern: '^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$', description: 'A host name (no port).' }), { minItems: 1, maxItems: 50, description: 'Answer only for these Host names (e.g. developer.example.com); on other hosts the portal\'s path is routed like any other. Default: every host of the proxy listener.' })),
  title: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'The portal\'s title (default "API portal").' })),
  description: Type.Optional(Type.String({ maxLength: 4000, description: 'Shown on the catalog page (plain text).' })),
  accounts: Type.Optional(PortalAccounts),
}, { additionalProperties: false, description: 'The developer portal: a catalog of the published services with their OpenAPI documents, on the proxy listener.' });

export type PortalConfig = Static<typeof Portal>;

/** consumers[].credentials[] entry of type portal: a developer's login (written by the portal). */
export const PortalCredential = Type.Object({
  type: Type.Literal('portal'),
  email: Type.String({ minLength: 3, maxLength: 254, pattern: '^[^\\s@]+@[^\\s@]+$', description: 'The developer\'s login (lower case).' }),
  password_hash: Type.String({ pattern: '^scrypt\\$', maxLength: 512, description: 'scrypt$N$r$p$salt$hash' }),
  approved: Type.Optional(Type.Boolean({ default: true, description: 'false: awaiting an admin (no key is issued, and the consumer\'s keys do not authenticate).' })),
  verified: Type.Optional(Type.Boolean({ default: true, description: 'false: the email is not verified yet (as approved: false).' })),
  requested_plan: Type.Optional(PLAN_NAME),
  created_at: Type.Optional(Type.String({ maxLength: 40 })),
  session_epoch: Type.Optional(Type.Integer({ minimum: 0, maximum: 1e15, description: 'Raised by every sign-out: the sessions made before it end on every node (absent: 0).' })),
}, { additionalProperties: false });
