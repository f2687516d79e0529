/**
 * The terminal step of a composing route (top-level `routes:` with `compose:`): the client's
 * body read when templates need it, the composition run (src/compose/run.ts), and its answer —
 * the merged JSON or the problem naming the failed step — sent through the same response
 * phases as an upstream's whole response.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { CompiledRoute } from '../config/compile.js';
import { ProblemError } from '../core/problem.js';
import { CODED_CONTENT_HEADERS, REPEATED_CONTENT_TYPE, asciiCompatible, codedContent, foreignCharset, repeatedContentType } from '../core/headers.js';
import { isJsonType } from '../core/json.js';
import type { Logger } from '../core/log.js';
import type { Exchange } from '../observability/exchange.js';
import type { BufferedResponse } from '../plugins/types.js';
import type { PluginCtx } from '../plugins/context.js';
import { runComposition } from '../compose/run.js';
import { ComposeAbort, type StepDemand } from '../compose/call.js';
import { readWholeBody, type BodySource } from './body.js';
import { deliver, problemResponse, type ResponsePlugins } from './respond.js';
import type { Tracing } from '../observability/tracing.js';

export interface ComposeCall {
  req: IncomingMessage;
  res: ServerResponse;
  route: CompiledRoute;
  params: Record<string, string>;
  method: string;
  path: string;
  query: string;
  requestId: string;
  /** Connection: close after the answer (draining). */
  close: boolean;
  pctx: PluginCtx | null;
  plugins: ResponsePlugins | null;
  body: BodySource;
  exchange: Exchange | null;
  log?: Logger;
  snapshot: { retain(): void; release(): void };
  /** Tracing, when on (the steps' attempts are spans of the request's trace). */
  tracing?: Tracing | null | undefined;
  /** The scaling meter, when on (a service step is demand on its service). */
  demand?: StepDemand | null;
}

const charsetRefused = (charset: string) => new ProblemError('unsupported-media-type', `this route reads a JSON body as UTF-8: charset ${JSON.stringify(charset)} is not accepted (send UTF-8; ISO-8859-x or windows-125x only for ASCII bytes)`);

export function composeRoute(c: ComposeCall): void {
  void run(c);
}

async function run(c: ComposeCall): Promise<void> {
  const { req, res, requestId } = c;
  const spec = c.route.compose!;
  const ac = new AbortController();
  const onClose = () => ac.abort();
  res.once('close', onClose);
  let r: BufferedResponse;
  // A body the composition does not read is not waited for: unread, the connection closes after.
  let close = c.close || (c.body.hasBody && !spec.readsBody);
  let reading = false;
  try {
    let body: Buffer | null = null;
    let charset: string | null = null;
    if (spec.readsBody && c.body.hasBody) {
      // Templates read the body as JSON: it must say so (a text/plain POST, which a cross-site
      // page may send without a preflight, is not taken for JSON), once, and be unencoded.
      // (an ASCII-only body in a charset that reads ASCII as ASCII, an old Java client's
      // ISO-8859-1, is the same text: read, then checked)
      charset = foreignCharset(req.headers['content-type']);
      const refused = repeatedContentType(req.rawHeaders) ? new ProblemError('bad-request', REPEATED_CONTENT_TYPE)
        : !isJsonType(req.headers['content-type']) ? new ProblemError('unsupported-media-type', 'this route reads a JSON body: send it as application/json (or a +json type)')
          : codedContent(req.headers['content-encoding']) ? new ProblemError('unsupported-media-type', 'a request body with a Content-Encoding cannot be read here: send it unencoded', undefined, CODED_CONTENT_HEADERS)
            : charset !== null && !asciiCompatible(charset) ? charsetRefused(charset)
              : null;
      if (refused !== null) {
        close = true; // (the body is not read)
        throw refused;
      }
    }
    if (spec.readsBody) {
      reading = true;
      body = c.pctx !== null ? await c.pctx.readBody(spec.maxRequestBody) : await readWholeBody(req, c.body, spec.maxRequestBody);
      reading = false;
      if (charset !== null && body.length > 0) {
        const foreign = foreignCharset(req.headers['content-type'], body);
        if (foreign !== null) throw charsetRefused(foreign);
      }
    }
    if (c.exchange !== null) {
      c.exchange.upstreamStart = performance.now();
      c.exchange.target = 'compose';
    }
    r = await runComposition({
      route: c.route, method: c.method, path: c.path, query: c.query, params: c.params,
      headers: (name) => {
        // (an HTTP/2 client names the host in :authority and may send no Host field; a name
        // the header object inherits, `constructor`, is no header)
        const v = (Object.hasOwn(req.headers, name) ? req.headers[name] : undefined) ?? (name === 'host' ? req.headers[':authority'] : undefined);
        return Array.isArray(v) ? v.join(', ') : v;
      },
      body, requestId, signal: ac.signal, snapshot: c.snapshot, log: c.log, demand: c.demand ?? null,
      auth: c.pctx !== null ? { consumer: c.pctx.consumer, identity: c.pctx.identity } : null,
      ...(c.tracing != null && c.exchange !== null && c.exchange.span !== null ? { trace: c.tracing.stepTracer(c.exchange) } : {}),
    });
    if (c.exchange !== null) c.exchange.upstreamHeaders = performance.now();
  } catch (err) {
    if (err instanceof ComposeAbort && ac.signal.aborted) return; // the client left
    if (err instanceof ProblemError) {
      r = problemResponse(err.code, err.detail, requestId, err.extra, err.headers);
      if (err.code === 'payload-too-large') close = true;
    } else if (reading) {
      // The client's body stopped coming (it aborted, its connection broke): the client's
      // doing, not the gateway's, and any client can cause it, so not an error-level event.
      c.log?.debug({ err, request_id: requestId, route: c.route.name }, 'reading the request body failed');
      r = problemResponse('bad-request', 'the request body could not be read', requestId);
      close = true;
    } else {
      c.log?.error({ err, request_id: requestId, route: c.route.name }, 'composition failed');
      r = problemResponse('internal-error', 'the composition failed', requestId);
    }
  } finally {
    res.off('close', onClose);
  }
  if (res.destroyed || res.headersSent) return;
  const pl = c.plugins;
  if (pl !== null) {
    if (pl.extraHeaders?.length) r.headers.push(...pl.extraHeaders);
    for (const b of pl.chain.responseHeaders) {
      try {
        b.inst.responseHeaders!(pl.ctx, r.status, r.headers);
      } catch (err) {
        pl.log?.error({ err, plugin: b.name, request_id: requestId }, 'plugin failed in the responseHeaders phase');
        r = problemResponse('internal-error', `plugin ${b.name} failed`, requestId);
        break;
      }
    }
  }
  await deliver(req, res, r, pl, { requestId, close, exchange: c.exchange });
}
