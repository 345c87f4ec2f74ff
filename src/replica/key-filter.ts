/**
 * A Bloom filter of primary keys: which keys of a table had their tombstone compacted away.
 * It answers "maybe" or "no": a key it has never seen is almost always told apart (about
 * 1% false positives at 10 bits per key), and a key it holds is never missed.
 */
import { ByteReader, ByteWriter } from '../wire/bytes.js'

const BITS_PER_KEY = 10
const HASHES = 7

/** FNV-1a over the UTF-16 code units of `s`, from a given offset basis. */
function fnv(s: string, basis: number): number {
  let h = basis >>> 0
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 16777619) >>> 0
  }
  return h
}

export class KeyFilter {
  readonly #bits: Uint8Array
  readonly #m: number

  private constructor(bits: Uint8Array) {
    this.#bits = bits
    this.#m = bits.length * 8
  }

  /** A filter holding `keys` (as keyString values). */
  static of(keys: readonly string[]): KeyFilter {
    const bytes = Math.max(128, Math.ceil((keys.length * BITS_PER_KEY) / 8))
    const f = new KeyFilter(new Uint8Array(bytes))
    for (const k of keys) f.#add(k)
    return f
  }

  /** Reads a filter written by {@link encode}. */
  static decode(blob: Uint8Array): KeyFilter {
    const r = new ByteReader(blob)
    const n = r.count()
    return new KeyFilter(r.bytes(n).slice())
  }

  encode(): Uint8Array {
    const w = new ByteWriter(this.#bits.length + 5)
    w.uvarint(this.#bits.length)
    w.bytes(this.#bits)
    return w.finish().slice()
  }

  #positions(key: string): number[] {
    const h1 = fnv(key, 2166136261)
    const h2 = fnv(key, 0x9747b28c) | 1
    const out: number[] = []
    for (let i = 0; i < HASHES; i++) out.push((h1 + Math.imul(i, h2)) >>> 0)
    return out.map((h) => h % this.#m)
  }

  #add(key: string): void {
    for (const p of this.#positions(key)) this.#bits[p >>> 3] = (this.#bits[p >>> 3] as number) | (1 << (p & 7))
  }

  /** False when `key` was certainly never added. */
  mayHave(key: string): boolean {
    return this.#positions(key).every((p) => ((this.#bits[p >>> 3] as number) & (1 << (p & 7))) !== 0)
  }
}
