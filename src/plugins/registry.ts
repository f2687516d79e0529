/**
 * The plugins this build knows, by name. registerPlugin adds one (embedders, tests); a config
 * compiled afterwards can bind it.
 */
import type { PluginDef } from './types.js';
import keyAuth from './key-auth/index.js';
import basicAuth from './basic-auth/index.js';
import jwt from './jwt/index.js';
import introspection from './oauth2-introspection/index.js';
import mtlsAuth from './mtls-auth/index.js';
import requestSizeLimit from './request-size-limit/index.js';
import acl from './acl/index.js';
import ipRestriction from './ip-restriction/index.js';
import cors from './cors/index.js';
import rateLimit from './rate-limit/index.js';
import quota from './quota/index.js';
import requestValidator from './request-validator/index.js';
import requestTransform from './request-transform/index.js';
import responseTransform from './response-transform/index.js';
import compression from './compression/index.js';
import cache from './cache/index.js';

const plugins = new Map<string, PluginDef>();

export function registerPlugin(def: PluginDef): void {
  if (plugins.has(def.name) && plugins.get(def.name) !== def) throw new Error(`a plugin named "${def.name}" is already registered`);
  plugins.set(def.name, def);
}

for (const p of [mtlsAuth, jwt, introspection, keyAuth, basicAuth, requestSizeLimit, rateLimit, quota, acl, ipRestriction, cors, requestValidator] as PluginDef[]) registerPlugin(p);
for (const p of [requestTransform, responseTransform, compression] as PluginDef[]) registerPlugin(p);
registerPlugin(cache as PluginDef);

export const PLUGINS: ReadonlyMap<string, PluginDef> = plugins;
