import { TetherError } from './errors.js';
import { AppConnection } from './app.js';
import { EnvironmentWatch } from './events.js';

/** @typedef {import('../index.js').Environment} Environment */

/**
 * A Tether server reached over REST and WebSocket.
 *
 * ```js
 * const tether = new TetherClient({ url: 'http://127.0.0.1:2719', token });
 * const env = await tether.createEnvironment({ name: 'dev', provider: 'local-process', start: true });
 * ```
 */
export class TetherClient {
  /**
   * @param {object} options
   * @param {string} options.url the server, `http(s)://host:port`
   * @param {string} [options.token] an API token (`Authorization: Bearer`); a browser
   *   that has none gets tickets from `getTicket` instead
   * @param {boolean} [options.tickets] open WebSockets with a fresh single-use ticket
   *   (made with `token`) instead of sending the token as a subprotocol
   * @param {(target: object) => Promise<string>} [options.getTicket] where tickets come
   *   from when the page holds no token (your backend calls `POST /api/v1/tickets`)
   * @param {typeof fetch} [options.fetch] defaults to `globalThis.fetch`
   * @param {typeof WebSocket} [options.WebSocket] defaults to `globalThis.WebSocket`
   * @param {number} [options.timeoutMs] how long a REST call may take, answer and body,
   *   before it fails with `timeout` (default 30000, as the CLI; `0` waits for ever)
   */
  constructor({ url, token, tickets = false, getTicket, fetch, WebSocket, timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    if (!url) throw new TypeError('TetherClient: `url` is required');
    /** The server's base URL, without a trailing slash. */
    this.url = String(url).replace(/\/+$/, '');
    this.token = token;
    this.useTickets = Boolean(tickets || getTicket);
    this.getTicket = getTicket ?? ((target) => this.createTicket(target).then((t) => t.ticket));
    this.fetch = fetch ?? globalThis.fetch?.bind(globalThis);
    this.WebSocket = WebSocket ?? globalThis.WebSocket;
    /** The default deadline of a REST call in ms (`0`: none). */
    this.timeoutMs = timeoutMs;
  }

  // ---- REST -------------------------------------------------------------------

  /**
   * One REST call: JSON in, JSON out; any non-2xx answer throws a {@link TetherError}
   * with the server's `code` and the HTTP status. A call not done within `timeoutMs`
   * (the client's, 30000 unless set; `0` waits for ever) throws `timeout`: with `raw`,
   * the deadline covers the answer's headers, the caller reads the body.
   * @param {string} method
   * @param {string} path below the server URL, e.g. `/api/v1/whoami`
   * @param {{body?: unknown, query?: Record<string, unknown>, signal?: AbortSignal, raw?: boolean, headers?: Record<string,string>, timeoutMs?: number}} [options]
   * @returns {Promise<any>} the parsed body (`undefined` for 204), or the `Response` when `raw`
   */
  async call(method, path, { raw = false, ...options } = {}) {
    const { response, text } = await this.#exchange(method, path, { ...options, read: !raw });
    if (raw) return response;
    if (response.status === 204 || text === '') return undefined;
    try {
      return JSON.parse(text);
    } catch (cause) {
      // `/healthz` and `/metrics` are the only answers that are not JSON.
      return text;
    }
  }

  /**
   * Sends a request and, when `read`, reads the answer's body as text, all within one
   * deadline: a server that took the connection and then went quiet must not keep the
   * caller waiting for ever.
   * @returns {Promise<{response: Response, text?: string}>}
   */
  async #exchange(method, path, { body, query, signal, headers = {}, timeoutMs = this.timeoutMs, read }) {
    const url = new URL(this.url + path);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    const deadline = new Deadline(signal, timeoutMs);
    const init = { method, signal: deadline.signal, headers: { ...headers } };
    if (this.token) init.headers.authorization = `Bearer ${this.token}`;
    if (body instanceof Uint8Array || body instanceof ArrayBuffer) {
      init.body = body;
      init.headers['content-type'] ??= 'application/wasm';
    } else if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['content-type'] = 'application/json';
    }
    const failed = (cause) => {
      if (deadline.expired) {
        return new TetherError('timeout', `${method} ${path}: no answer within ${timeoutMs} ms`, { cause });
      }
      if (signal?.aborted) return new TetherError('aborted', `${method} ${path}: aborted`, { cause });
      return new TetherError('network', `${method} ${path}: ${cause?.message ?? cause}`, { cause });
    };
    try {
      let response;
      try {
        response = await this.fetch(url, init);
      } catch (cause) {
        throw failed(cause);
      }
      if (!response.ok) {
        const error = await errorOf(response, method, path);
        // An error body cut short by the deadline is still a timeout, not the status.
        if (deadline.expired) throw failed(undefined);
        throw error;
      }
      if (!read) return { response };
      try {
        return { response, text: response.status === 204 ? '' : await response.text() };
      } catch (cause) {
        throw failed(cause);
      }
    } finally {
      // A `raw` caller still reads the body: its own signal must still reach it.
      deadline.clear({ detach: read });
    }
  }

  /** @param {{owner?: string}} [filter] @returns {Promise<Environment[]>} */
  listEnvironments({ owner } = {}) {
    return this.call('GET', '/api/v1/environments', { query: { owner } });
  }

  /**
   * @param {{name: string, provider: string, config?: object, start?: boolean, restartPolicy?: string, idleStopSecs?: number, owner?: string}} spec
   * @returns {Promise<Environment>}
   */
  createEnvironment(spec) {
    return this.call('POST', '/api/v1/environments', { body: spec });
  }

  /** @param {string} id @returns {Promise<Environment>} */
  getEnvironment(id) {
    return this.call('GET', `/api/v1/environments/${enc(id)}`);
  }

  /**
   * @param {string} id
   * @param {{config?: object, restartPolicy?: string, idleStopSecs?: number}} patch a JSON merge patch of `config`, and the other fields
   * @returns {Promise<Environment>}
   */
  updateEnvironment(id, patch) {
    return this.call('PATCH', `/api/v1/environments/${enc(id)}`, { body: patch });
  }

  /** @param {string} id @param {{force?: boolean}} [options] `force`: the admin's force delete */
  deleteEnvironment(id, { force } = {}) {
    return this.call('DELETE', `/api/v1/environments/${enc(id)}`, {
      query: { force: force ? 'true' : undefined },
    });
  }

  /** @param {string} id @returns {Promise<Environment>} with `status` already heading to `starting` */
  startEnvironment(id) {
    return this.call('POST', `/api/v1/environments/${enc(id)}/start`);
  }

  /** @param {string} id @returns {Promise<Environment>} with `status` already heading to `stopping` */
  stopEnvironment(id) {
    return this.call('POST', `/api/v1/environments/${enc(id)}/stop`);
  }

  /** @param {string} id @returns {Promise<Environment>} */
  restartEnvironment(id) {
    return this.call('POST', `/api/v1/environments/${enc(id)}/restart`);
  }

  /**
   * The last lines of an environment's log, oldest first.
   * @param {string} id
   * @param {{tail?: number, since?: string}} [options]
   * @returns {Promise<object[]>} `{ts, level, source, message, stream?, pid?}` each
   */
  async logs(id, { tail, since } = {}) {
    const { text } = await this.#exchange('GET', `/api/v1/environments/${enc(id)}/logs`, {
      query: { tail, since },
      read: true,
    });
    return parseLines(text);
  }

  /**
   * Follows an environment's log (`follow=true`): yields each line as it is written,
   * after the last `tail` ones, until the environment is deleted or `signal` fires.
   * @param {string} id
   * @param {{tail?: number, since?: string, signal?: AbortSignal}} [options]
   * @returns {AsyncGenerator<object>}
   */
  async *followLogs(id, { tail, since, signal } = {}) {
    const response = await this.call('GET', `/api/v1/environments/${enc(id)}/logs`, {
      query: { tail, since, follow: 'true' },
      raw: true,
      signal,
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = '';
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (cause) {
          if (signal?.aborted) return;
          throw new TetherError('network', `following the log of ${id}: ${cause?.message ?? cause}`, { cause });
        }
        if (chunk.done) return;
        buffered += chunk.value;
        const lines = buffered.split('\n');
        buffered = lines.pop();
        // A server streaming without a line end (a wrong URL, a hostile peer) must not
        // grow this string until the process runs out of memory.
        if (buffered.length > MAX_LOG_LINE) {
          throw new TetherError('invalid_response', `following the log of ${id}: a line longer than ${MAX_LOG_LINE} characters`);
        }
        for (const line of parseLines(lines.join('\n'))) {
          // A chunk can hold several lines: none is yielded once `signal` has fired.
          if (signal?.aborted) return;
          yield line;
        }
      }
    } finally {
      reader.releaseLock();
      if (!signal?.aborted) await response.body.cancel().catch(() => {});
    }
  }

  /** @param {{user?: string}} [filter] */
  listTokens({ user } = {}) {
    return this.call('GET', '/api/v1/tokens', { query: { user } });
  }

  /**
   * Makes a user token (admin); the answer's `token` is the secret, shown this once.
   * @param {{user: string, scopes?: string[], environments?: string[], expiresInSecs?: number, note?: string}} spec
   */
  createToken(spec) {
    return this.call('POST', '/api/v1/tokens', { body: spec });
  }

  /** @param {string} id `tok_…` */
  revokeToken(id) {
    return this.call('DELETE', `/api/v1/tokens/${enc(id)}`);
  }

  /** Replaces the operator's token (admin); answers `{token}`. */
  rotateAdminToken() {
    return this.call('POST', '/api/v1/tokens/admin/rotate');
  }

  /** @returns {Promise<{user: string, tokenId: string, scopes: string[], environments: string[] | null}>} */
  whoami() {
    return this.call('GET', '/api/v1/whoami');
  }

  /**
   * A single-use WebSocket ticket: `{environment, thread?}`, `{template, thread?, workspace?}`
   * or `{events: true}`.
   * @returns {Promise<{ticket: string, expiresInSecs: number}>}
   */
  createTicket(target) {
    return this.call('POST', '/api/v1/tickets', { body: target });
  }

  /** The operator's templates (secret values never shown). */
  listTemplates() {
    return this.call('GET', '/api/v1/templates');
  }

  /** Loaded providers, what each asks for and is granted (admin). */
  listProviders() {
    return this.call('GET', '/api/v1/providers');
  }

  /** @param {string} name */
  getProvider(name) {
    return this.call('GET', `/api/v1/providers/${enc(name)}`);
  }

  /**
   * Installs a provider component (admin).
   * @param {string} name
   * @param {Uint8Array | ArrayBuffer} wasm the component's bytes
   */
  installProvider(name, wasm) {
    return this.call('PUT', `/api/v1/providers/${enc(name)}`, { body: wasm });
  }

  /**
   * The newest audit entries, oldest first (admin).
   * @param {{since?: string, limit?: number, owner?: string}} [filter]
   */
  audit({ since, limit, owner } = {}) {
    return this.call('GET', '/api/v1/audit', { query: { since, limit, owner } });
  }

  /** Deleted environments whose resource this host still tries to remove (admin). */
  listRemovals() {
    return this.call('GET', '/api/v1/removals');
  }

  /**
   * Has a pending removal tried within a second (admin).
   * @param {string} id the deleted environment's id
   */
  retryRemoval(id) {
    return this.call('POST', `/api/v1/removals/${enc(id)}/retry`);
  }

  /**
   * Stops trying to remove a deleted environment's resource (admin); the resource stays.
   * @param {string} id the deleted environment's id
   */
  dropRemoval(id) {
    return this.call('DELETE', `/api/v1/removals/${enc(id)}`);
  }

  /** Cluster mode: the hosts, what each runs, and recent conflicts (admin; 404 alone). */
  cluster() {
    return this.call('GET', '/api/v1/cluster');
  }

  /** Which `tether.toml` is in force and how its last reload went (admin). */
  configStatus() {
    return this.call('GET', '/api/v1/config/status');
  }

  /** `/healthz`: `{status: "ok" | "degraded"}`; with an admin's token also `reasons`, `storage`, `pendingRemovals`. */
  health() {
    return this.call('GET', '/healthz');
  }

  // ---- WebSockets ---------------------------------------------------------------

  /**
   * An app connection to environment `id` on `thread`, resumable across drops.
   * @param {string} id
   * @param {{thread?: string, start?: boolean, session?: string} & import('./socket.js').ReconnectOptions} [options]
   * @returns {AppConnection}
   */
  connectApp(id, options = {}) {
    return new AppConnection(this, { ...options, environment: id });
  }

  /**
   * An app connection through a template: the host finds or creates the caller's
   * environment for the key and starts it (the first frame is `provisioned`).
   * @param {string} template
   * @param {{thread?: string, workspace?: string, start?: boolean, session?: string} & import('./socket.js').ReconnectOptions} [options]
   * @returns {AppConnection}
   */
  connectTemplate(template, options = {}) {
    return new AppConnection(this, { ...options, template });
  }

  /**
   * The live environment list (`/ws/events`): a snapshot, then every change,
   * reconnecting (and taking a fresh snapshot) after a drop.
   * @param {import('./socket.js').ReconnectOptions} [options]
   * @returns {EnvironmentWatch}
   */
  watchEnvironments(options = {}) {
    return new EnvironmentWatch(this, options);
  }

  /**
   * The `ws(s)://` URL of `path` with `query`, and the subprotocols to offer: the
   * token as `tether.bearer.<token>`, or a fresh ticket for `ticketTarget` in the URL.
   * @param {string} path
   * @param {Record<string, unknown>} query
   * @param {object} ticketTarget
   * @returns {Promise<{url: string, protocols: string[]}>}
   * @internal
   */
  async socketAddress(path, query, ticketTarget) {
    const url = new URL(this.url.replace(/^http/, 'ws') + path);
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    const protocols = ['tether.v1'];
    if (this.useTickets) {
      url.searchParams.set('ticket', await this.getTicket(ticketTarget));
    } else if (this.token) {
      protocols.push(`tether.bearer.${this.token}`);
    }
    return { url: url.toString(), protocols };
  }
}

const enc = encodeURIComponent;

/** A REST call's deadline when the client is given none: the CLI's and the example app's. */
const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * One call's deadline joined with the caller's own `signal`: `signal` fires when either
 * does, `expired` says it was the deadline. `0` (or not a finite number) sets none.
 */
class Deadline {
  #controller = new AbortController();
  #timer;
  #outer;
  #forward = () => this.#controller.abort(this.#outer.reason);
  expired = false;

  constructor(outer, timeoutMs) {
    this.signal = this.#controller.signal;
    this.#outer = outer;
    if (outer) {
      if (outer.aborted) this.#controller.abort(outer.reason);
      else outer.addEventListener('abort', this.#forward, { once: true });
    }
    if (Number.isFinite(timeoutMs) && timeoutMs > 0) {
      this.#timer = setTimeout(() => {
        this.expired = true;
        this.#controller.abort(new TetherError('timeout', `no answer within ${timeoutMs} ms`));
      }, timeoutMs);
    }
  }

  /** Ends the deadline; `detach` also stops following the caller's signal. */
  clear({ detach }) {
    clearTimeout(this.#timer);
    if (detach) this.#outer?.removeEventListener('abort', this.#forward);
  }
}

/** The longest line of a followed log taken (the host's are a few KiB), as the CLI. */
const MAX_LOG_LINE = 1 << 20;

/** NDJSON lines as objects; a line that is not JSON is kept as `{message}`. */
function parseLines(text) {
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      try {
        return JSON.parse(line);
      } catch {
        return { message: line };
      }
    });
}

/** The server's `{"error": {"code", "message"}}` as a {@link TetherError}. */
async function errorOf(response, method, path) {
  const text = await response.text().catch(() => '');
  let code = `http_${response.status}`;
  let message = `${method} ${path}: HTTP ${response.status}`;
  try {
    const error = JSON.parse(text).error;
    if (typeof error?.code === 'string') code = error.code;
    if (typeof error?.message === 'string') message = error.message;
  } catch {
    // Not the documented shape (a proxy's page, say): keep the status.
  }
  return new TetherError(code, message, { status: response.status });
}
