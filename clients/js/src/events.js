import { ReconnectingSocket } from './socket.js';

/**
 * The live list of the environments a token may see (`/ws/events`): a `snapshot`,
 * then a frame per change, applied here to {@link EnvironmentWatch#environments}.
 * After a drop it reconnects and the new snapshot replaces the list, so nothing is
 * missed; the host does the same when this client falls behind (`resync: true`).
 *
 * Events:
 * - `frame`: every frame as it came (`snapshot`, `environmentCreated`,
 *   `environmentChanged`, `environmentStatus`, `environmentDeleted`);
 * - `update`: the list after a frame was applied (a `Map` by id);
 * - and `open`, `reconnecting`, `close` of {@link ReconnectingSocket}.
 */
export class EnvironmentWatch extends ReconnectingSocket {
  /**
   * Every environment the token sees, by id, as the REST API shows it (status
   * frames update `status`, `desiredState`, `runtime` and `lastError` in place).
   * @type {Map<string, import('../index.js').Environment>}
   */
  environments = new Map();

  /** @protected */
  address() {
    return this.client.socketAddress('/ws/events', {}, { events: true });
  }

  /** @protected */
  async probe(signal) {
    if (this.client.token) await this.client.call('GET', '/api/v1/whoami', { signal });
  }

  /** @protected */
  onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const envs = this.environments;
    switch (frame.type) {
      case 'snapshot':
        envs.clear();
        for (const env of frame.environments ?? []) envs.set(env.id, env);
        this.settled();
        break;
      case 'environmentCreated':
      case 'environmentChanged':
        envs.set(frame.environment.id, frame.environment);
        break;
      case 'environmentStatus': {
        const { type: _type, environmentId, ...fields } = frame;
        envs.set(environmentId, { ...envs.get(environmentId), id: environmentId, ...fields });
        break;
      }
      case 'environmentDeleted':
        envs.delete(frame.environmentId);
        break;
      default:
        break; // a frame of a newer host: passed on, not applied
    }
    this.emit('frame', frame);
    this.emit('update', envs);
  }
}
