/**
 * Tether's JavaScript client: REST calls, the resumable app WebSocket, and the live
 * environment list. No build step, no dependencies; runs in browsers and in Node.
 *
 * @typedef {object} Environment an environment as the API shows it (README, "The contract in brief")
 * @property {string} id
 * @property {string} name
 * @property {string} provider
 * @property {string} owner
 * @property {Record<string, unknown>} config
 * @property {'running' | 'stopped'} desiredState
 * @property {'created' | 'starting' | 'running' | 'stopping' | 'stopped' | 'restarting' | 'error'} status
 * @property {{connected: boolean}} runtime
 * @property {string | null} lastError
 */

export { TetherClient } from './src/client.js';
export { TetherError } from './src/errors.js';
export { AppConnection } from './src/app.js';
export { EnvironmentWatch } from './src/events.js';
export { FINAL_CLOSE_CODES, ReconnectingSocket } from './src/socket.js';
