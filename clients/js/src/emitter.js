/** A minimal event emitter that works the same in browsers and Node. */
export class Emitter {
  #listeners = new Map();

  /**
   * Calls `listener` for every `type` event until the returned function is called.
   * @param {string} type
   * @param {(value: any) => void} listener
   * @returns {() => void} unsubscribe
   */
  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  /**
   * Resolves with the next `type` event's value.
   * @param {string} type
   * @returns {Promise<any>}
   */
  once(type) {
    return new Promise((resolve) => {
      const off = this.on(type, (value) => {
        off();
        resolve(value);
      });
    });
  }

  /** @protected */
  emit(type, value) {
    for (const listener of [...(this.#listeners.get(type) ?? [])]) {
      try {
        listener(value);
      } catch (err) {
        // A listener's bug must not break the connection: report it and go on.
        (globalThis.reportError ?? console.error)(err);
      }
    }
  }
}
