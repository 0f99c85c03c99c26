// A minimal typed event emitter: the client has no runtime dependencies.

type Listener<T> = (ev: T) => void;

export class Emitter<Events extends object> {
  private listeners: { [K in keyof Events]?: Listener<Events[K]>[] } = {};

  /** on adds a listener and returns a function that removes it. */
  on<K extends keyof Events>(name: K, fn: Listener<Events[K]>): () => void {
    (this.listeners[name] ??= []).push(fn);
    return () => this.off(name, fn);
  }

  off<K extends keyof Events>(name: K, fn: Listener<Events[K]>): void {
    const list = this.listeners[name];
    if (list) this.listeners[name] = list.filter((f) => f !== fn);
  }

  /** once resolves with the next event of that name. */
  once<K extends keyof Events>(name: K): Promise<Events[K]> {
    return new Promise((resolve) => {
      const off = this.on(name, (ev) => {
        off();
        resolve(ev);
      });
    });
  }

  protected emit<K extends keyof Events>(name: K, ev: Events[K]): void {
    for (const fn of this.listeners[name] ?? []) {
      try {
        fn(ev);
      } catch (err) {
        // A listener's exception must not break the client's state: it is
        // rethrown outside of it.
        setTimeout(() => {
          throw err;
        });
      }
    }
  }
}
