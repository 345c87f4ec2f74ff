/** Map helpers shared by the replica and the server. */

/** What {@link getOrCreate} needs of a map: `Map` and `WeakMap` both qualify. */
interface MapLike<K, V> {
  get(key: K): V | undefined
  set(key: K, value: V): unknown
}

/** The value `map` holds for `key`, made by `make` and stored on first use. */
export function getOrCreate<K, V>(map: MapLike<K, V>, key: K, make: () => V): V {
  let value = map.get(key)
  if (value === undefined) {
    value = make()
    map.set(key, value)
  }
  return value
}
