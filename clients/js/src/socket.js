import { Emitter } from './emitter.js';
import { TetherError } from './errors.js';

/**
 * @typedef {object} ReconnectOptions
 * @property {number} [minDelayMs] first wait before a reconnect (default 250)
 * @property {number} [maxDelayMs] longest wait between reconnects (default 10000)
 * @property {number} [maxAttempts] reconnects in a row before giving up (default: never give up)
 * @property {number} [connectTimeoutMs] a connect not open by then is given up and retried (default 15000)
 */

/** Close codes after which reconnecting cannot help (`docs/protocol.md`, "Close codes"). */
export const FINAL_CLOSE_CODES = new Map([
  [1000, 'closed'],
  [1009, 'message_too_big'],
  [4003, 'revoked'],
  [4009, 'replaced'],
  [4010, 'stopped'],
  [4014, 'start_failed'],
  [4015, 'stopped_on_purpose'],
]);

/**
 * A WebSocket that reconnects with exponential backoff and jitter until it is closed
 * for good. Subclasses say where to connect (`address`) and what a frame means
 * (`onFrame`); this class owns the socket, the backoff and the final close.
 *
 * Events: `open` (a socket is up), `reconnecting` (`{attempt, delayMs, code, reason}`),
 * `close` (`{code, reason, error}`, once, when it is over).
 */
export class ReconnectingSocket extends Emitter {
  #client;
  #options;
  #socket = null;
  #attempt = 0;
  #timer = null;
  #closed = false;

  /**
   * @param {import('./client.js').TetherClient} client
   * @param {ReconnectOptions} options
   */
  constructor(client, options) {
    super();
    if (typeof client.WebSocket !== 'function') {
      throw new TypeError(
        'no WebSocket: pass `WebSocket` to TetherClient (on Node 20, run with --experimental-websocket)',
      );
    }
    this.#client = client;
    this.#options = { minDelayMs: 250, maxDelayMs: 10_000, maxAttempts: Infinity, connectTimeoutMs: 15_000, ...options };
    /** Whether this connection ended for good. */
    this.closed = false;
    // Connect on the next tick, so the caller can subscribe to the first events.
    queueMicrotask(() => this.#connect());
  }

  /** @protected the client this socket belongs to */
  get client() {
    return this.#client;
  }

  /**
   * @protected where to connect now: `{url, protocols}`
   * @returns {Promise<{url: string, protocols: string[]}>}
   */
  address() {
    throw new Error('ReconnectingSocket.address is abstract');
  }

  /** @protected one text frame from the server */
  onFrame(_text) {}

  /** @protected the socket went away (the subclass may fail what waited on it) */
  onDrop() {}

  /**
   * @protected when a connect failed before it opened: a REST probe can tell a wrong
   * token or a missing environment (which the browser's WebSocket hides) from a
   * network problem; throw a TetherError to stop reconnecting.
   * @param {AbortSignal} _signal fires when the probe has taken too long
   */
  async probe(_signal) {}

  /** @protected a connection is healthy again: the next drop starts the backoff afresh */
  settled() {
    this.#attempt = 0;
  }

  /** @protected writes a frame if a socket is open; false if not */
  write(text) {
    if (this.#socket?.readyState !== 1) return false;
    this.#socket.send(text);
    return true;
  }

  /**
   * Closes for good (no reconnect); `close` is emitted with code 1000.
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code = 1000, reason = 'closed by the client') {
    if (this.#closed) return;
    const socket = this.#socket;
    this.#finish(code, reason, null);
    socket?.close(code, reason);
  }

  /**
   * Drops the current socket as a network failure would (for tests and for a page
   * that knows its network changed): the connection reconnects and resumes.
   */
  drop() {
    this.#socket?.close(4000, 'dropped by the client');
  }

  async #connect() {
    if (this.#closed) return;
    let address;
    try {
      address = await this.address();
    } catch (error) {
      if (error instanceof TetherError && error.status && error.status < 500 && error.status !== 429) {
        return this.#finish(null, error.message, error);
      }
      return this.#retry(null, error?.message ?? String(error), false);
    }
    if (this.#closed) return;
    let socket;
    try {
      socket = new this.#client.WebSocket(address.url, address.protocols);
    } catch (cause) {
      // A URL or subprotocol the WebSocket API refuses (a token with spaces, say).
      const error = new TetherError('invalid_request', `cannot open ${address.url}: ${cause?.message ?? cause}`, { cause });
      return this.#finish(null, error.message, error);
    }
    this.#socket = socket;
    let opened = false;
    // A connect that neither opens nor fails (a half-dead network) is given up.
    const timeout = setTimeout(() => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      socket.close();
      this.#retry(null, 'connect timed out', true);
    }, this.#options.connectTimeoutMs);
    socket.onopen = () => {
      opened = true;
      clearTimeout(timeout);
      this.emit('open', {});
    };
    socket.onmessage = (event) => {
      if (this.#socket === socket && typeof event.data === 'string') this.onFrame(event.data);
    };
    socket.onclose = (event) => {
      clearTimeout(timeout);
      if (this.#socket !== socket) return;
      this.#socket = null;
      this.onDrop();
      if (this.#closed) return;
      if (FINAL_CLOSE_CODES.has(event.code)) {
        const code = FINAL_CLOSE_CODES.get(event.code);
        const error = new TetherError(code, event.reason || code, { closeCode: event.code });
        return this.#finish(event.code, event.reason, error);
      }
      this.#retry(event.code, event.reason, !opened);
    };
  }

  async #retry(code, reason, neverOpened) {
    if (neverOpened) {
      try {
        await this.probe(AbortSignal.timeout(this.#options.connectTimeoutMs));
      } catch (error) {
        if (error instanceof TetherError && error.status && error.status < 500 && error.status !== 429) {
          return this.#finish(code, error.message, error);
        }
      }
    }
    if (this.#closed) return;
    const { minDelayMs, maxDelayMs, maxAttempts } = this.#options;
    this.#attempt += 1;
    if (this.#attempt > maxAttempts) {
      const error = new TetherError('closed', `gave up after ${maxAttempts} reconnects`, { closeCode: code ?? undefined });
      return this.#finish(code, reason, error);
    }
    const ceiling = Math.min(maxDelayMs, minDelayMs * 2 ** (this.#attempt - 1));
    const delayMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.emit('reconnecting', { attempt: this.#attempt, delayMs, code, reason });
    this.#timer = setTimeout(() => this.#connect(), delayMs);
  }

  #finish(code, reason, error) {
    if (this.#closed) return;
    this.#closed = true;
    this.closed = true;
    clearTimeout(this.#timer);
    this.#socket = null;
    this.onDrop();
    this.emit('close', { code, reason, error });
  }
}
