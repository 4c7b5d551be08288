import { ReconnectingSocket } from './socket.js';
import { TetherError } from './errors.js';

/**
 * Acknowledge the host's messages after this many (`docs/protocol.md`, "Resuming"), or
 * after half the host's window when its greeting's `windowMessages` is smaller.
 */
const ACK_EVERY = 32;
/** …and at least this often while any are unacknowledged. */
const ACK_INTERVAL_MS = 10_000;
const encoder = new TextEncoder();

/** Bytes `text` takes as UTF-8 (at most three per UTF-16 unit, so short text is not encoded). */
function byteLength(text, limit) {
  return text.length * 3 <= limit ? text.length : encoder.encode(text).length;
}

/**
 * An app's connection to an environment (`/ws/app/{id}` or `/ws/app?template=`),
 * resumable: it names a session and the last `relaySeq` it received on every
 * (re)connect, so after a drop the host replays what it missed and it re-sends what
 * the host did not count — each message once, in order, inside the host's window.
 *
 * Events:
 * - `message`: every frame for the app (runtime answers, `environmentStatus`,
 *   `remoteProviderEvent`, `provisioned`, `error`), parsed;
 * - `status`: the `environmentStatus` frames alone;
 * - `resumed`: `{reset, resent}` after every greeting (`reset`: the host no longer
 *   knew the session, so what was in flight then is gone);
 * - `lost`: `{from, to, count}` — the host could not keep these messages (the app was
 *   a whole window behind); nothing else is ever dropped silently;
 * - and `open`, `reconnecting`, `close` of {@link ReconnectingSocket}.
 */
export class AppConnection extends ReconnectingSocket {
  #target;
  #session;
  #lastSeq = 0; // the last relaySeq received
  #ackEvery = ACK_EVERY; // half the host's window, at most ACK_EVERY
  #ackBytes = Infinity; // half the host's window in bytes, from its greeting
  #bytesDue = 0; // UTF-8 bytes of the messages received since the last acknowledgement
  #ackedToHost = 0; // the last relaySeq acknowledged to the host
  #sent = 0; // frames of this session the host will have counted once all arrive
  #unacked = []; // [{n, text}] sent and not yet counted by the host
  #queued = []; // new frames waiting for the greeting
  #ready = false; // greeted on the current socket
  #maxPending;
  #pending = new Map(); // requestId → {resolve, reject, timer, onOutput}
  #nextRequest = 0;
  #ackTimer;
  #greeted = false; // greeted once: a later connect resumes rather than starts
  #maxMessageBytes = Infinity; // the largest frame the host takes, from its greeting

  /**
   * @param {import('./client.js').TetherClient} client
   * @param {{environment?: string, template?: string, thread?: string, workspace?: string,
   *   start?: boolean, session?: string, maxPending?: number} & import('./socket.js').ReconnectOptions} options
   */
  constructor(client, { environment, template, thread, workspace, start, session, maxPending = 8192, ...reconnect }) {
    super(client, reconnect);
    this.#target = { environment, template, thread, workspace, start };
    this.#session = session ?? randomSession();
    this.#maxPending = maxPending;
    this.#ackTimer = setInterval(() => this.#ack(true), ACK_INTERVAL_MS);
    /** The environment, once known (from the path, or the `provisioned` frame). */
    this.environmentId = environment;
  }

  /** The session id this connection resumes under. */
  get session() {
    return this.#session;
  }

  /** The last `relaySeq` received. */
  get lastSeq() {
    return this.#lastSeq;
  }

  /** Frames sent and not yet counted by the host, plus those waiting for a socket. */
  get pending() {
    return this.#unacked.length + this.#queued.length;
  }

  /**
   * Sends one message; while no socket is up it waits, in order, and goes once
   * the connection resumes.
   * @param {object} message a JSON object with a string `type`
   */
  send(message) {
    if (this.closed) throw new TetherError('closed', 'the connection is closed');
    if (this.pending >= this.#maxPending) {
      throw new TetherError('backpressure', `${this.pending} frames are not yet acknowledged by the host`);
    }
    const text = JSON.stringify(message);
    // The host would close the connection over it, and it would be sent again on
    // every resume: refused here instead.
    const bytes = byteLength(text, this.#maxMessageBytes);
    if (bytes > this.#maxMessageBytes) {
      throw new TetherError('too_large', `the message is ${bytes} bytes; the host takes at most ${this.#maxMessageBytes}`);
    }
    if (this.#ready) this.#write(text);
    else this.#queued.push(text);
  }

  /**
   * Sends `message` with a `requestId` (one is made if it has none) and resolves
   * with the reply carrying it (an `error` frame or a `remoteProviderEvent` with
   * `error` resolves too: look at the reply).
   * @param {object} message
   * @param {{timeoutMs?: number, onOutput?: (frame: object) => void}} [options]
   *   `onOutput` takes frames of the request that come before its answer (`execOutput`)
   * @returns {Promise<any>}
   */
  request(message, { timeoutMs = 60_000, onOutput } = {}) {
    const requestId = message.requestId ?? `${this.#session}-${++this.#nextRequest}`;
    const key = JSON.stringify(requestId);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(key);
        reject(new TetherError('timeout', `no reply to ${key} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(key, { resolve, reject, timer, onOutput });
      try {
        this.send({ ...message, requestId });
      } catch (error) {
        clearTimeout(timer);
        this.#pending.delete(key);
        reject(error);
      }
    });
  }

  /**
   * Runs `command` through the reference runtime's `exec`.
   * @param {string[]} command
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<{code: number | null, stdout: string, stderr: string, error?: string}>}
   */
  async exec(command, options = {}) {
    const out = { stdout: '', stderr: '' };
    const onOutput = (frame) => {
      if (frame.type === 'execOutput' && (frame.stream === 'stdout' || frame.stream === 'stderr')) {
        out[frame.stream] += frame.data ?? '';
      }
    };
    const exit = await this.request({ type: 'exec', command }, { ...options, onOutput });
    return { ...out, code: exit.code ?? null, ...(exit.error ? { error: exit.error } : {}) };
  }

  /** @protected */
  address() {
    const { environment, template, thread, workspace, start } = this.#target;
    const query = { thread, session: this.#session, resume: this.#lastSeq };
    // Only the first connect may start a stopped environment: a later one resumes.
    if (start && !this.#greeted) query.start = 'true';
    if (environment) {
      return this.client.socketAddress(`/ws/app/${encodeURIComponent(environment)}`, query, {
        environment,
        thread,
      });
    }
    return this.client.socketAddress('/ws/app', { ...query, template, workspace }, { template, thread, workspace });
  }

  /** @protected */
  async probe(signal) {
    const { environment } = this.#target;
    if (environment && this.client.token) {
      await this.client.call('GET', `/api/v1/environments/${encodeURIComponent(environment)}`, { signal });
    }
  }

  /** @protected */
  onDrop() {
    this.#ready = false;
    if (this.closed) {
      clearInterval(this.#ackTimer);
      for (const [key, waiting] of this.#pending) {
        clearTimeout(waiting.timer);
        waiting.reject(new TetherError('closed', `the connection closed before ${key} was answered`));
      }
      this.#pending.clear();
    }
  }

  /** @protected */
  onFrame(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return; // the host sends only JSON objects
    }
    switch (msg?.type) {
      case 'relayAck':
        return this.#hostCounted(msg.received);
      case 'relayResumed':
        return this.#resumed(msg);
      case 'relayLost':
        this.#lastSeq = Math.max(this.#lastSeq, msg.to);
        return this.emit('lost', { from: msg.from, to: msg.to, count: msg.count });
    }
    if (typeof msg.relaySeq === 'number') {
      if (msg.relaySeq <= this.#lastSeq) return; // a replay of what arrived before
      this.#lastSeq = msg.relaySeq;
      // Large messages fill the host's window by bytes long before by count. Up to three
      // bytes a character is counted unless that reaches the half window: then exactly.
      const most = text.length * 3;
      this.#bytesDue += this.#bytesDue + most < this.#ackBytes ? most : encoder.encode(text).length;
      this.#ack(false);
    }
    if (msg.type === 'provisioned') this.environmentId = msg.environmentId;
    this.#deliver(msg);
  }

  /** The greeting of a (re)connect: re-send what the host did not count, then the queue. */
  #resumed({ received, next, reset, maxMessageBytes, windowMessages, windowBytes }) {
    this.#hostCounted(received);
    if (Number.isSafeInteger(maxMessageBytes) && maxMessageBytes > 0) this.#maxMessageBytes = maxMessageBytes;
    if (Number.isSafeInteger(windowMessages) && windowMessages > 0) {
      this.#ackEvery = Math.min(ACK_EVERY, Math.max(1, Math.floor(windowMessages / 2)));
    }
    if (Number.isSafeInteger(windowBytes) && windowBytes > 0) this.#ackBytes = Math.max(1, Math.floor(windowBytes / 2));
    this.#lastSeq = Math.max(0, next - 1);
    this.#ackedToHost = Math.min(this.#ackedToHost, this.#lastSeq);
    // The host counts on from `received`: what is sent again is numbered from there.
    this.#sent = received;
    const resend = this.#unacked
      .splice(0)
      .map((frame) => frame.text)
      .concat(this.#queued.splice(0))
      .filter((text) => this.#fits(text));
    this.#ready = true;
    this.#greeted = true;
    for (const text of resend) this.#write(text);
    this.settled();
    this.emit('resumed', { reset: Boolean(reset), resent: resend.length });
  }

  /**
   * Whether the host takes `text` (sent before its limit was known, or under a larger
   * one); a request that does not fit is answered with `too_large` instead.
   */
  #fits(text) {
    const bytes = byteLength(text, this.#maxMessageBytes);
    if (bytes <= this.#maxMessageBytes) return true;
    let requestId;
    try {
      requestId = JSON.parse(text).requestId;
    } catch {
      // Only JSON is queued.
    }
    const key = requestId === undefined ? undefined : JSON.stringify(requestId);
    const waiting = key === undefined ? undefined : this.#pending.get(key);
    if (waiting) {
      this.#pending.delete(key);
      clearTimeout(waiting.timer);
      waiting.reject(new TetherError('too_large', `the message is ${bytes} bytes; the host takes at most ${this.#maxMessageBytes}`));
    }
    return false;
  }

  #write(text) {
    this.#sent += 1;
    this.#unacked.push({ n: this.#sent, text });
    if (!this.write(text)) this.#ready = false;
  }

  #hostCounted(received) {
    let drop = 0;
    while (drop < this.#unacked.length && this.#unacked[drop].n <= received) drop += 1;
    if (drop) this.#unacked.splice(0, drop);
  }

  #ack(force) {
    const due = this.#lastSeq - this.#ackedToHost;
    const full = due > 0 && this.#bytesDue >= this.#ackBytes;
    if (!this.#ready || !(due >= this.#ackEvery || full || (force && due > 0))) return;
    if (this.write(JSON.stringify({ type: 'relayAck', received: this.#lastSeq }))) {
      this.#ackedToHost = this.#lastSeq;
      this.#bytesDue = 0;
    }
  }

  #deliver(msg) {
    if (msg.type === 'environmentStatus') this.emit('status', msg);
    if (msg.requestId !== undefined) {
      const key = JSON.stringify(msg.requestId);
      const waiting = this.#pending.get(key);
      if (waiting && msg.type === 'execOutput') waiting.onOutput?.(msg);
      else if (waiting) {
        this.#pending.delete(key);
        clearTimeout(waiting.timer);
        waiting.resolve(msg);
      }
    }
    this.emit('message', msg);
  }
}

/** A random session id (letters, digits and `-`, as the protocol allows). */
function randomSession() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16)).join('');
}
