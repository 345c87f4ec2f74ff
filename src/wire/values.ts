/** Type-tagged encoding of SQLite values; equal values always give equal bytes. */
import type { TextBlock } from '../core/text.js'
import type { SqlValue } from '../core/values.js'
import { type ByteReader, type ByteWriter, badPayload } from './bytes.js'

const TAG_NULL = 0
const TAG_INT = 1
const TAG_BIGINT = 2
const TAG_REAL = 3
const TAG_TEXT = 4
const TAG_BLOB = 5

const SMALL = 2n ** 52n
const SMALL_NUMBER = 2 ** 52

export function writeValue(w: ByteWriter, value: SqlValue): void {
  if (value === null) {
    w.byte(TAG_NULL)
  } else if (typeof value === 'bigint') {
    // Rounding to a double keeps order, so the test on the double decides |value| < 2^52
    // (exact below 2^53) without comparing bigints.
    const n = Number(value)
    if (n < SMALL_NUMBER && n > -SMALL_NUMBER) {
      w.byte(TAG_INT)
      w.svarint(n)
    } else {
      w.byte(TAG_BIGINT)
      w.bigvarint(value)
    }
  } else if (typeof value === 'number') {
    w.byte(TAG_REAL)
    w.f64(value)
  } else if (typeof value === 'string') {
    w.byte(TAG_TEXT)
    w.string(value)
  } else {
    w.byte(TAG_BLOB)
    w.uvarint(value.length)
    w.bytes(value)
  }
}

export function readValue(r: ByteReader): SqlValue {
  const tag = r.byte()
  switch (tag) {
    case TAG_NULL:
      return null
    case TAG_INT:
      return BigInt(r.svarint())
    case TAG_BIGINT: {
      const v = r.bigvarint()
      if (v < SMALL && v > -SMALL) throw badPayload('non-canonical integer')
      return v
    }
    case TAG_REAL: {
      const x = r.f64()
      if (Number.isNaN(x)) throw badPayload('NaN is not a SQLite value')
      return x
    }
    case TAG_TEXT:
      return r.string()
    case TAG_BLOB:
      return r.bytes(r.count()).slice()
    default:
      throw badPayload(`unknown value tag ${tag}`)
  }
}

/**
 * Writes a text cell's blocks (payloads and stored metadata share the layout): count, then
 * per block its position levels (digit, site index + 1, 0 for a filler level), HLC relative
 * to `baseHlc`, site index, a flags byte (1 live: its text follows; 2 the version it
 * replaced follows, as relative HLC and site index), then the text if live.
 */
export function writeTextBlocks(
  w: ByteWriter,
  blocks: readonly TextBlock[],
  baseHlc: number,
  siteIndex: (site: string) => number,
): void {
  w.uvarint(blocks.length)
  for (const b of blocks) {
    w.uvarint(b.pos.length)
    for (const [digit, site] of b.pos) {
      w.uvarint(digit)
      w.uvarint(site === '' ? 0 : siteIndex(site) + 1)
    }
    w.svarint(b.hlc - baseHlc)
    w.uvarint(siteIndex(b.site))
    w.byte((b.text === null ? 0 : 1) | (b.prev ? 2 : 0))
    if (b.prev) {
      w.svarint(b.prev.hlc - baseHlc)
      w.uvarint(siteIndex(b.prev.site))
    }
    if (b.text !== null) w.string(b.text)
  }
}
