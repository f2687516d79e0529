import { hostname } from 'node:os';

/** This node's name in /status, logs and pg_stat_activity: TURNPIKE_NODE_ID, else host:pid. */
export const NODE_ID = process.env.TURNPIKE_NODE_ID || `${hostname()}:${process.pid}`;
