// What the tests share: the server under test (from the environment the Rust test
// `tests/it/js_client.rs` sets), environments to work with, and a TCP proxy whose
// connections a test can cut as a network failure would.
import net from 'node:net';
import { randomUUID } from 'node:crypto';

import { TetherClient } from '../index.js';

/** The server under test, `http://127.0.0.1:PORT`. */
export const url = required('TETHER_URL');
/** Its admin token. */
export const adminToken = required('TETHER_TOKEN');
/** Its `[relay] window_messages`. */
export const relayWindow = Number(required('TETHER_RELAY_WINDOW'));

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through \`cargo test --test it js_client\``);
  return value;
}

/** A client of the server under test (admin unless `token` is given). */
export function client(options = {}) {
  return new TetherClient({ url, token: adminToken, ...options });
}

/** A name no other test uses. */
export function uniqueName(prefix) {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/** Resolves once `pred(value)` holds for a value `emitter` emits as `type`. */
export function until(emitter, type, pred) {
  return new Promise((resolve) => {
    const off = emitter.on(type, (value) => {
      if (pred(value)) {
        off();
        resolve(value);
      }
    });
  });
}

/** Resolves once `pred(watch.environments)` holds: now, or after a later update. */
export function untilListed(watch, pred) {
  if (pred(watch.environments)) return Promise.resolve(watch.environments);
  return until(watch, 'update', pred);
}

/** Creates a started `local-process` environment and waits for its runtime. */
export async function runningEnv(tether, prefix) {
  const env = await tether.createEnvironment({ name: uniqueName(prefix), provider: 'local-process', start: true });
  for (;;) {
    const now = await tether.getEnvironment(env.id);
    if (now.status === 'running' && now.runtime.connected) return now;
    if (now.status === 'error') throw new Error(`start failed: ${now.lastError}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A TCP proxy on loopback to the server under test. `cut()` destroys every open
 * connection at once — both directions, mid-frame if need be — and the proxy keeps
 * accepting new ones; `down()` cuts them and refuses new ones until `up()`.
 */
export async function tcpProxy() {
  const target = new URL(url);
  const open = new Set();
  const server = net.createServer((inbound) => {
    const outbound = net.connect(Number(target.port), target.hostname);
    for (const socket of [inbound, outbound]) {
      open.add(socket);
      socket.on('close', () => open.delete(socket));
      socket.on('error', () => {});
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    inbound.on('close', () => outbound.destroy());
    outbound.on('close', () => inbound.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    /** How many connections the proxy holds now. */
    get open() {
      return open.size;
    },
    /** The network goes down: open connections are cut and new ones refused. */
    async down() {
      await new Promise((resolve) => {
        server.close(resolve);
        for (const socket of open) socket.destroy();
      });
    },
    /** The network is back, on the same address. */
    up() {
      return new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
    },
    cut() {
      const cut = open.size;
      for (const socket of open) socket.destroy();
      return cut;
    },
    close() {
      for (const socket of open) socket.destroy();
      return new Promise((resolve) => (server.listening ? server.close(resolve) : resolve()));
    },
  };
}

/**
 * A server on loopback that accepts connections and never answers (`headers: false`),
 * or sends the headers of a 200 JSON answer and then nothing more (`headers: true`):
 * what a wedged server or a half-open proxy looks like to a client.
 */
export async function silentServer({ headers = false } = {}) {
  const open = new Set();
  const server = net.createServer((socket) => {
    open.add(socket);
    socket.on('close', () => open.delete(socket));
    socket.on('error', () => {});
    if (headers) {
      socket.once('data', () => {
        socket.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n');
      });
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close() {
      for (const socket of open) socket.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
