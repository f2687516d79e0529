export { Gateway, type GatewayOptions } from './server/gateway.js';
export { loadConfigFile, parseConfigText, type LoadedConfig } from './config/load.js';
export { compile, type Snapshot } from './config/compile.js';
export { ConfigError, type ConfigIssue } from './config/errors.js';
export { Router, type RouteSpec, type RouteMatch } from './router/router.js';
export { VERSION } from './version.js';
