/**
 * What one request leaves behind for the log phase: filled in as it goes (request path, plugins,
 * upstream) and read once when it ends, by metrics, the access log, analytics and tracing.
 * One small object per request, no closures.
 */
import type { CompiledRoute } from '../config/compile.js';
import type { PluginCtx } from '../plugins/context.js';
import type { Span } from '@opentelemetry/api';
import type { WsStats } from '../server/websocket.js';

export class Exchange {
  requestId = '';
  /** The matched route (null: answered before routing). */
  route: CompiledRoute | null = null;
  /** The client's address as computed (trusted proxies honoured). */
  clientIp = '';
  host = '';
  /** Normalized path, query excluded. */
  path = '';
  /** Raw query string including '?', or ''. */
  query = '';
  /**
   * Counted up in the scaling meter's in-flight gauge (the request went on past its plugins, to
   * the upstream, a composition or a WebSocket relay): demand on its service, counted down at its end.
   */
  demand = false;
  /** Plugin context (consumer...), when the route has plugins. */
  pctx: PluginCtx | null = null;
  /** Request head bytes (fields as received) plus body bytes. */
  bytesIn = 0;
  /** The declared Content-Length (-1: none). */
  bodyLength = -1;
  /**
   * The client's traceparent / tracestate (tracing on and sent), by lower-case name: several
   * tracestate lines joined with ',', a repeated traceparent ''.
   */
  traceCarrier: Record<string, string> | null = null;
  /** The body's bytes were counted as they streamed (no Content-Length to go by). */
  bodyCounted = false;
  /** Response body bytes sent. */
  bytesOut = 0;
  /** Origin of the target that answered (or of the last one tried). */
  target: string | null = null;
  /** performance.now() of the first upstream attempt (0: the upstream was never asked). */
  upstreamStart = 0;
  /** performance.now() when the answering upstream's response headers arrived (0: never). */
  upstreamHeaders = 0;
  attempts = 0;
  /** grpc-status of a gRPC exchange (header or trailer), or null. */
  grpcStatus: string | null = null;
  /** The status when the answer did not go through the response object (a WebSocket's 101 or handshake refusal). */
  status = 0;
  /** A WebSocket session's figures, once it closed. */
  ws: WsStats | null = null;
  /** The request's server span when tracing samples it. */
  span: Span | null = null;

  /** performance.now() when the request head had been read. */
  constructor(readonly start: number) {}

  /** The consumer's name when one was identified. */
  get consumer(): string | null {
    const p = this.pctx;
    return p === null ? null : p.consumer?.name ?? p.identity;
  }
}
