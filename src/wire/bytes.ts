/** Growable byte writer and bounds-checked reader: the only place that touches raw offsets. */
import { ConvergeError } from '../core/errors.js'

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/**
 * Node's non-validating UTF-8 decoder (a Buffer method that also works on a plain
 * Uint8Array), where the runtime has it: its result stands for ASCII input only.
 */
const utf8Slice = (
  globalThis as { Buffer?: { prototype?: { utf8Slice?: (this: Uint8Array, start: number, end: number) => string } } }
).Buffer?.prototype?.utf8Slice

/** Strings shorter than this are copied code unit by code unit (no call into the encoder). */
const SHORT_STRING = 16
/** Strings longer than this are encoded into a buffer of their own (no reserve of 3 bytes a character). */
const LONG_STRING = 1 << 16

/** Bytes of the unsigned varint of `n`. */
function varintSize(n: number): number {
  let size = 1
  while (n >= 0x80) {
    n = Math.floor(n / 0x80)
    size++
  }
  return size
}

/** Growth that leaves room for a large payload: resizable buffers grow in place. */
const canResize = typeof (ArrayBuffer.prototype as { resize?: unknown }).resize === 'function'
/** Writers with a `maxBytes` switch to a resizable buffer past this size. */
const RESIZABLE_FROM = 1024 * 1024

/**
 * Appends bytes, varints and floats to a buffer that doubles as it grows. With `maxBytes`,
 * a writer that passes a megabyte moves into a resizable ArrayBuffer that then grows in
 * place (no copy, so a large payload never exists twice), where the runtime supports it.
 */
export class ByteWriter {
  #buf: Uint8Array
  #view: DataView
  #len = 0
  /** Largest size, when the writer may switch to a resizable buffer. */
  readonly #maxBytes: number | undefined
  #resizable: ArrayBuffer | null = null

  constructor(initial = 1024, maxBytes?: number) {
    this.#maxBytes = maxBytes !== undefined && canResize ? maxBytes : undefined
    this.#buf = new Uint8Array(initial)
    this.#view = new DataView(this.#buf.buffer)
  }

  /** Bytes written so far. */
  get length(): number {
    return this.#len
  }

  /** Makes room for `n` more bytes. */
  reserve(n: number): void {
    const need = this.#len + n
    if (need <= this.#buf.length) return
    const max = this.#maxBytes
    if (max !== undefined && (this.#resizable !== null || need > RESIZABLE_FROM)) {
      if (need > max) throw new RangeError(`output exceeds ${max} bytes`)
      const size = Math.min(max, Math.max(need, Math.ceil(this.#buf.length * 1.5)))
      if (this.#resizable === null) {
        // Past a megabyte, move once into a buffer that grows in place from then on.
        const ab = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer)(size, {
          maxByteLength: max,
        })
        const next = new Uint8Array(ab)
        next.set(this.#buf.subarray(0, this.#len))
        this.#resizable = ab
        this.#buf = next
        this.#view = new DataView(ab)
      } else {
        ;(this.#resizable as unknown as { resize(n: number): void }).resize(size)
      }
      return
    }
    let size = this.#buf.length * 2
    while (size < need) size *= 2
    const next = new Uint8Array(size)
    next.set(this.#buf.subarray(0, this.#len))
    this.#buf = next
    this.#view = new DataView(next.buffer)
  }

  /** Moves bytes [from, length) to start at `to` (growing as needed) and sets the length to match. */
  shift(from: number, to: number): void {
    const tail = this.#len - from
    if (to > from) this.reserve(to - from)
    this.#buf.copyWithin(to, from, from + tail)
    this.#len = to + tail
  }

  /** Overwrites bytes at `offset` (within what was written). */
  patch(offset: number, data: Uint8Array): void {
    if (offset + data.length > this.#len) throw new RangeError('patch beyond written bytes')
    this.#buf.set(data, offset)
  }

  byte(b: number): void {
    this.reserve(1)
    this.#buf[this.#len++] = b
  }

  bytes(data: Uint8Array): void {
    this.reserve(data.length)
    this.#buf.set(data, this.#len)
    this.#len += data.length
  }

  /** Unsigned varint of a non-negative safe integer (LEB128). */
  uvarint(n: number): void {
    this.reserve(8)
    while (n >= 0x80) {
      this.#buf[this.#len++] = (n % 0x80) | 0x80
      n = Math.floor(n / 0x80)
    }
    this.#buf[this.#len++] = n
  }

  /** Signed varint (zigzag) of a safe integer with |n| < 2^52. */
  svarint(n: number): void {
    this.uvarint(n >= 0 ? n * 2 : -n * 2 - 1)
  }

  /** Signed varint of any 64-bit integer. */
  bigvarint(n: bigint): void {
    let z = n >= 0n ? n << 1n : (-n << 1n) - 1n
    this.reserve(10)
    while (z >= 0x80n) {
      this.#buf[this.#len++] = Number(z & 0x7fn) | 0x80
      z >>= 7n
    }
    this.#buf[this.#len++] = Number(z)
  }

  f64(x: number): void {
    this.reserve(8)
    this.#view.setFloat64(this.#len, x, true)
    this.#len += 8
  }

  /** Length-prefixed UTF-8 string. */
  string(s: string): void {
    const n = s.length
    if (n < SHORT_STRING) {
      // Short strings (labels, small keys): copy code units while they are ASCII; the
      // length prefix of an ASCII string is one byte.
      const start = this.#len
      this.reserve(n + 1)
      const buf = this.#buf
      let pos = start
      buf[pos++] = n
      for (let i = 0; i < n; i++) {
        const c = s.charCodeAt(i)
        if (c > 0x7f) {
          this.#len = start
          this.#encoded(s)
          return
        }
        buf[pos++] = c
      }
      this.#len = pos
      return
    }
    if (n > LONG_STRING) {
      this.#encoded(s)
      return
    }
    // Encoded in place after a length prefix sized for an ASCII string, which is moved when
    // the UTF-8 form turns out longer (its length lies between n and 3n bytes).
    const guess = varintSize(n)
    this.reserve(varintSize(3 * n) + 3 * n)
    const start = this.#len
    const written = encoder.encodeInto(s, this.#buf.subarray(start + guess)).written
    const size = varintSize(written)
    if (size !== guess) this.#buf.copyWithin(start + size, start + guess, start + guess + written)
    this.uvarint(written)
    this.#len = start + size + written
  }

  /** {@link string} through an intermediate encoded copy. */
  #encoded(s: string): void {
    const data = encoder.encode(s)
    this.uvarint(data.length)
    this.bytes(data)
  }

  /** The bytes written (a view; copy it if the writer is reused). */
  finish(): Uint8Array {
    return this.#buf.subarray(0, this.#len)
  }

  /** Forgets what was written, keeping the buffer for reuse. */
  reset(): void {
    this.#len = 0
  }
}

/** Reads what {@link ByteWriter} wrote; every read is bounds-checked and fails as `BAD_PAYLOAD`. */
export class ByteReader {
  readonly #buf: Uint8Array
  readonly #view: DataView
  #pos: number
  readonly #end: number

  constructor(buf: Uint8Array, start = 0, end = buf.length) {
    this.#buf = buf
    this.#view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
    this.#pos = start
    this.#end = end
  }

  get position(): number {
    return this.#pos
  }

  get remaining(): number {
    return this.#end - this.#pos
  }

  #need(n: number): void {
    if (n < 0 || this.#pos + n > this.#end) throw badPayload('truncated data')
  }

  byte(): number {
    this.#need(1)
    return this.#buf[this.#pos++] as number
  }

  bytes(n: number): Uint8Array {
    this.#need(n)
    const out = this.#buf.subarray(this.#pos, this.#pos + n)
    this.#pos += n
    return out
  }

  uvarint(): number {
    let result = 0
    let scale = 1
    for (let i = 0; i < 8; i++) {
      const b = this.byte()
      result += (b & 0x7f) * scale
      if (b < 0x80) {
        if (!Number.isSafeInteger(result)) break
        return result
      }
      scale *= 0x80
    }
    throw badPayload('varint out of range')
  }

  svarint(): number {
    const z = this.uvarint()
    return z % 2 === 0 ? z / 2 : -(z + 1) / 2
  }

  bigvarint(): bigint {
    let z = 0n
    let shift = 0n
    for (let i = 0; i < 10; i++) {
      const b = this.byte()
      z |= BigInt(b & 0x7f) << shift
      if (b < 0x80) {
        const v = (z & 1n) === 0n ? z >> 1n : -((z + 1n) >> 1n)
        if (v > 0x7fffffffffffffffn || v < -0x8000000000000000n) break
        return v
      }
      shift += 7n
    }
    throw badPayload('integer out of range')
  }

  f64(): number {
    this.#need(8)
    const x = this.#view.getFloat64(this.#pos, true)
    this.#pos += 8
    return x
  }

  /** A count that must fit in what is left, at `minBytes` per item. */
  count(minBytes = 1): number {
    const n = this.uvarint()
    if (n * minBytes > this.remaining) throw badPayload('count exceeds data')
    return n
  }

  string(): string {
    const n = this.count()
    const buf = this.#buf
    const start = this.#pos
    const end = start + n
    this.#pos = end
    if (utf8Slice !== undefined) {
      // Decoded without a view or the validating decoder, and kept when it is plain ASCII:
      // one character per byte and no replacement character means every byte was below
      // 0x80 (a multi-byte sequence gives fewer characters than bytes, and invalid bytes
      // give U+FFFD).
      const s = utf8Slice.call(buf, start, end)
      if (s.length === n && s.indexOf('\uFFFD') < 0) return s
    }
    try {
      return decoder.decode(buf.subarray(start, end))
    } catch {
      throw badPayload('invalid UTF-8')
    }
  }
}

/** The error every malformed byte sequence raises. */
export function badPayload(reason: string): ConvergeError {
  return new ConvergeError('BAD_PAYLOAD', `malformed payload: ${reason}`, { reason })
}
