/**
 * Node's built-in modules, loaded on first use rather than at import, so every module that only sometimes needs
 * the file system (loading from disk, downloading, the engine's native binding) can still be imported in a
 * browser (tsight/client). Using one there fails with a message saying it needs Node.
 */
export function lazyNode<T extends object>(name: string): T {
  let loaded: T | undefined;
  const load = (): T => {
    if (loaded) return loaded;
    const get = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process?.getBuiltinModule;
    if (typeof get !== "function") throw new Error(`${name} is needed here, and it exists only in Node.js (20.16 or later)`);
    return (loaded = get(name) as T);
  };
  return new Proxy({} as T, {
    get(_target, key) {
      const m = load();
      const v = Reflect.get(m, key);
      return typeof v === "function" ? Function.prototype.bind.call(v, m) : v;
    },
  });
}
