/**
 * What the client throws: every failure carries the server's error `code` (or one of
 * the client's own, listed below) and, for HTTP answers, the status.
 *
 * Client codes: `network` (no answer), `invalid_response` (an answer that is not the
 * documented shape), `timeout` (a request or REST call had no reply in time), `closed` (the
 * connection ended for good), `backpressure` (too many frames not yet acknowledged),
 * `too_large` (a message larger than the host takes, `maxMessageBytes` in its
 * greeting), `aborted` (the caller's signal fired).
 */
export class TetherError extends Error {
  /**
   * @param {string} code machine-readable code (`not_found`, `unauthorized`, …)
   * @param {string} message for a person
   * @param {{status?: number, closeCode?: number, cause?: unknown}} [details]
   */
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'TetherError';
    /** @type {string} */
    this.code = code;
    /** @type {number | undefined} HTTP status, when the server answered */
    this.status = details.status;
    /** @type {number | undefined} WebSocket close code, when a socket ended */
    this.closeCode = details.closeCode;
  }
}
