// Unit tests of the pure core: HLC arithmetic, version vectors, byte and value codecs.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { exceedsDrift, HLC_TICKS_PER_MS, hlcFromMillis, hlcToMillis, nextHlc } from '../src/core/hlc.js'
import type { SqlValue } from '../src/core/values.js'
import { covers, dominates, mergeVectors } from '../src/core/version-vector.js'
import { ByteReader, ByteWriter } from '../src/wire/bytes.js'
import { readValue, writeValue } from '../src/wire/values.js'

describe('hlc', () => {
  it('never goes back and never lags the wall clock', () => {
    fc.assert(
      fc.property(fc.nat(2 ** 45), fc.nat(2 ** 40), (last, wall) => {
        const next = nextHlc(last, wall)
        expect(next).toBeGreaterThan(last)
        expect(next).toBeGreaterThanOrEqual(hlcFromMillis(wall))
      }),
    )
  })
  it('packs milliseconds and a counter', () => {
    expect(hlcToMillis(hlcFromMillis(1_700_000_000_123) + HLC_TICKS_PER_MS - 1)).toBe(1_700_000_000_123)
    expect(Number.isSafeInteger(hlcFromMillis(Date.UTC(2200, 0, 1)))).toBe(true)
  })
  it('detects drift beyond the limit only', () => {
    const now = 1_700_000_000_000
    expect(exceedsDrift(hlcFromMillis(now + 1000), now, 5000)).toBe(false)
    expect(exceedsDrift(hlcFromMillis(now + 6000), now, 5000)).toBe(true)
  })
})

describe('version vectors', () => {
  const vec = fc.dictionary(fc.constantFrom('a', 'b', 'c', 'd'), fc.nat(1000))
  it('merge is a join: commutative, associative, idempotent, and dominates both inputs', () => {
    fc.assert(
      fc.property(vec, vec, vec, (a, b, c) => {
        expect(mergeVectors(a, b)).toEqual(mergeVectors(b, a))
        expect(mergeVectors(mergeVectors(a, b), c)).toEqual(mergeVectors(a, mergeVectors(b, c)))
        expect(mergeVectors(a, a)).toEqual(a)
        expect(dominates(mergeVectors(a, b), a)).toBe(true)
        expect(dominates(mergeVectors(a, b), b)).toBe(true)
      }),
    )
  })
  it('covers exactly what was seen', () => {
    expect(covers({ a: 5 }, 'a', 5)).toBe(true)
    expect(covers({ a: 5 }, 'a', 6)).toBe(false)
    expect(covers({ a: 5 }, 'b', 1)).toBe(false)
    expect(dominates({ a: 5 }, { a: 6 })).toBe(false)
    expect(dominates({ a: 5 }, { b: 0 })).toBe(true)
  })
})

const sqlValue: fc.Arbitrary<SqlValue> = fc.oneof(
  fc.constant(null),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
  fc.double({ noNaN: true }),
  fc.string({ unit: 'grapheme' }),
  fc.uint8Array({ maxLength: 64 }),
)

describe('value codec', () => {
  it('round-trips every SQLite value exactly, type included', () => {
    fc.assert(
      fc.property(fc.array(sqlValue, { maxLength: 20 }), (values) => {
        const w = new ByteWriter(4)
        for (const v of values) writeValue(w, v)
        const r = new ByteReader(w.finish())
        const back = values.map(() => readValue(r))
        expect(r.remaining).toBe(0)
        expect(back).toEqual(values)
      }),
      { numRuns: 300 },
    )
  })
  it('gives equal bytes for equal values (canonical)', () => {
    fc.assert(
      fc.property(sqlValue, (v) => {
        const a = new ByteWriter(4)
        const b = new ByteWriter(64)
        writeValue(a, v)
        writeValue(b, v)
        expect(a.finish()).toEqual(b.finish())
      }),
    )
  })
  it('rejects truncated input with BAD_PAYLOAD', () => {
    const w = new ByteWriter()
    writeValue(w, 'hello world')
    const bytes = w.finish()
    for (let n = 0; n < bytes.length; n++) {
      expect(() => readValue(new ByteReader(bytes.subarray(0, n)))).toThrow(
        expect.objectContaining({ code: 'BAD_PAYLOAD' }),
      )
    }
  })
  it('varints round-trip across the safe range', () => {
    fc.assert(
      fc.property(fc.maxSafeNat(), fc.integer({ min: -(2 ** 51), max: 2 ** 51 }), (u, s) => {
        const w = new ByteWriter(1)
        w.uvarint(u)
        w.svarint(s)
        const r = new ByteReader(w.finish())
        expect(r.uvarint()).toBe(u)
        expect(r.svarint()).toBe(s)
      }),
    )
  })
})
