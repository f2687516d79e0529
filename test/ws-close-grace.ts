/**
 * Imported first (before any module of src/), so that src/server/websocket.ts reads it at load:
 * the relay's close-handshake budget (5 s in production) shortened to WS_CLOSE_GRACE_MS for the
 * test that waits for it to run out.
 */
export const WS_CLOSE_GRACE_MS = 1500;
process.env.TURNPIKE_WS_CLOSE_GRACE_MS = String(WS_CLOSE_GRACE_MS);
