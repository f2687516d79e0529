/** Listen addresses of the config: the schema (every listen field) and what it means. */
import { Type } from '@sinclair/typebox';

export interface Address {
  host: string;
  port: number;
}

/** Where a listener given a bare port listens: the default listen's host (loopback). */
export const DEFAULT_LISTEN_HOST = '127.0.0.1';

/** host:port, or a bare port (e.g. an unquoted ${PORT}) that listens on 127.0.0.1 as the default listen does. */
export const HostPort = Type.Union([
  Type.String({ pattern: '^((\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]+|\\*):)?[0-9]{1,5}$' }),
  Type.Integer({ minimum: 0, maximum: 65535 }),
], {
  description: 'host:port to listen on, e.g. 127.0.0.1:8080, 0.0.0.0:8080 (every interface, as *:8080) or [::1]:8080; a bare port (8080) is 127.0.0.1:8080',
});

/**
 * A listen address of the config (HostPort): `host:port`, `[v6]:port`, `*:port` (every
 * interface), or a bare port (8080, an unquoted ${PORT}), which listens on the default
 * address's host, loopback, as the default listen (127.0.0.1:8080) does.
 */
export function parseAddress(value: string | number): Address {
  if (typeof value === 'number' || /^[0-9]+$/.test(value)) return { host: DEFAULT_LISTEN_HOST, port: Number(value) };
  const i = value.lastIndexOf(':');
  let host = value.slice(0, i);
  if (host.startsWith('[')) host = host.slice(1, -1);
  if (host === '*') host = '0.0.0.0';
  return { host, port: Number(value.slice(i + 1)) };
}
