/**
 * Imported first (before any module of src/), so that src/upstream/forward.ts reads it at load:
 * response timeouts from PRECISE_TIMEOUT_MS up (10 s in production) run on undici's headers
 * timeout, as long ones do, so that the tests of that path need not wait 10 s.
 */
export const PRECISE_TIMEOUT_MS = 2000;
process.env.TURNPIKE_PRECISE_TIMEOUT_MS = String(PRECISE_TIMEOUT_MS);
