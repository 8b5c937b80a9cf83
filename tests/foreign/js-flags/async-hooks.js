// StarlingMonkey has no Node built-ins. @openfeature/server-sdk imports
// AsyncLocalStorage from node's async_hooks for its optional transaction
// context propagator (unused here; created only if an app asks for it), so
// the bundle maps `async_hooks` to this stand-in: one store, no async
// propagation. Nothing in the SDK or the OFREP provider is changed.
export class AsyncLocalStorage {
  #store;
  getStore() {
    return this.#store;
  }
  run(store, callback, ...args) {
    const previous = this.#store;
    this.#store = store;
    try {
      return callback(...args);
    } finally {
      this.#store = previous;
    }
  }
}
