/**
 * The encoder's row-at-a-time path (addRow, addUniformRow, flushChunk) must give exactly the
 * bytes of addChunk for the same rows, whatever the sites, cells and row modes; and the
 * byte writer's and reader's string fast paths must agree with TextEncoder and TextDecoder.
 */
import { describe, expect, it } from 'vitest'
import type { CellStamp, Stamp } from '../src/core/merge.js'
import type { SqlValue } from '../src/core/values.js'
import { nodeCodec } from '../src/platform/node-codec.js'
import { ByteReader, ByteWriter } from '../src/wire/bytes.js'
import { DecodedPayload, PayloadEncoder, type WireRow, type WireTable } from '../src/wire/payload.js'
import { prng } from './helpers/replicas.js'

const SITES = ['a1', 'b2', 'c3', 'd4', 'e5'].map((s) => s.repeat(16))

function table(rows: WireTable['rows']): WireTable {
  return {
    name: 't',
    hash: new Uint8Array(16),
    pkCount: 2,
    columns: ['k1', 'k2', 'a', 'n', 'x', 'b'],
    affinities: ['TEXT', 'INTEGER', 'TEXT', 'INTEGER', 'TEXT', ''],
    algorithms: ['lww', 'lww', 'lww', 'counter', 'text', 'lww'],
    delimiters: ['', '', '', '', '\n', ''],
    rows,
    clFloor: 0,
  }
}

const VALUES: SqlValue[] = [
  null,
  0n,
  -5n,
  2n ** 52n,
  -(2n ** 52n),
  2n ** 52n - 1n,
  2n ** 63n - 1n,
  1.5,
  '',
  'short',
  'ü',
  'a string of more than sixteen characters',
  `${'x'.repeat(126)}ü`,
  '😀'.repeat(40),
  'lone \ud800 surrogate',
  new Uint8Array([0, 255, 3]),
]

type Rand = () => number

function pick<T>(rand: Rand, items: readonly T[]): T {
  return items[Math.floor(rand() * items.length)] as T
}

function stamp(rand: Rand, cl: number, base: number): Stamp {
  return { cl, hlc: base + Math.floor(rand() * 200) - 100, site: pick(rand, SITES) }
}

/** A random row (live or deleted) whose stamps name random sites. */
function randomRow(rand: Rand, t: WireTable, i: number): WireRow {
  const hlc = 1_000_000 + Math.floor(rand() * 1000)
  const site = pick(rand, SITES)
  const live = rand() < 0.8
  const cl = live ? 1 + 2 * Math.floor(rand() * 3) : 2 + 2 * Math.floor(rand() * 3)
  const clStamp: Stamp = { cl, hlc, site }
  const pk: SqlValue[] = [`key ${i}`, BigInt(i)]
  const stamps: (CellStamp | null)[] = []
  const values: SqlValue[] = []
  for (let c = 0; c < 4; c++) {
    const algorithm = t.algorithms[t.pkCount + c]
    if (!live || rand() < 0.2) {
      stamps.push(null)
      values.push(null)
      continue
    }
    if (algorithm === 'counter') {
      const parts = SITES.filter(() => rand() < 0.4).map((s) => ({ site: s, hlc: hlc - 5, total: 3n }))
      if (parts.length === 0) parts.push({ site, hlc, total: 1n })
      stamps.push({ cl, hlc, site, prev: null, parts })
      values.push(null)
      continue
    }
    if (algorithm === 'text') {
      const blockSite = pick(rand, SITES)
      stamps.push({
        cl,
        hlc,
        site: rand() < 0.5 ? site : pick(rand, SITES),
        prev: null,
        blocks: [
          {
            pos: [
              [1, ''],
              [2, pick(rand, SITES)],
            ],
            hlc: hlc - 1,
            site: blockSite,
            text: 'line',
            prev: null,
          },
          { pos: [[3, blockSite]], hlc, site: blockSite, text: null, prev: { hlc: hlc - 2, site: pick(rand, SITES) } },
        ],
      })
      values.push(null)
      continue
    }
    const same = rand() < 0.6
    stamps.push({
      cl,
      hlc: same ? hlc : hlc - 3,
      site: same ? site : pick(rand, SITES),
      prev: rand() < 0.2 ? stamp(rand, cl - 2 > 0 ? cl - 2 : 1, hlc) : null,
    })
    values.push(pick(rand, VALUES))
  }
  const row: WireRow & { seen?: (Stamp | null)[]; deletions?: Stamp[] } = { pk, cl, clStamp, stamps, values }
  if (!live && rand() < 0.7) row.seen = [0, 1, 2, 3].map(() => (rand() < 0.5 ? stamp(rand, cl - 1, hlc) : null))
  if (t.rows === 'delete-wins' && rand() < 0.5) row.deletions = [stamp(rand, live ? cl - 1 || 2 : cl, hlc)]
  return row
}

/** A live row all of whose cells carry the row's stamp, as the export's fast path sees it. */
function uniformRow(rand: Rand, i: number): { raw: unknown[]; row: WireRow } {
  const cl = 1 + 2 * Math.floor(rand() * 3)
  const hlc = 1_000_000 + Math.floor(rand() * 1000)
  const site = pick(rand, SITES)
  const pk: SqlValue[] = [`key ${i}`, BigInt(i)]
  const values = [0, 1, 2, 3].map(() => pick(rand, VALUES))
  const cell: CellStamp = { cl, hlc, site, prev: null }
  return {
    raw: [...pk, cl, hlc, 0, null, ...values],
    row: { pk, cl, clStamp: { cl, hlc, site }, stamps: new Array(4).fill(cell), values },
  }
}

describe('row-at-a-time payload encoding', () => {
  for (const mode of ['causal', 'delete-wins', 'add-wins'] as const) {
    it(`gives addChunk's bytes (${mode})`, () => {
      for (let seed = 1; seed <= 40; seed++) {
        const rand = prng(seed)
        const t = table(mode)
        const chunks: { uniform: boolean; raw?: unknown[]; row: WireRow }[][] = []
        let i = 0
        for (let c = 0; c < 1 + Math.floor(rand() * 4); c++) {
          const chunk: { uniform: boolean; raw?: unknown[]; row: WireRow }[] = []
          for (let r = 0; r < 1 + Math.floor(rand() * 30); r++) {
            if (rand() < 0.5) {
              const { raw, row } = uniformRow(rand, i++)
              chunk.push({ uniform: true, raw, row })
            } else {
              chunk.push({ uniform: false, row: randomRow(rand, t, i++) })
            }
          }
          chunks.push(chunk)
        }
        const whole = new PayloadEncoder(SITES[0] as string, [t], nodeCodec)
        const streamed = new PayloadEncoder(SITES[0] as string, [t], nodeCodec)
        for (const chunk of chunks) {
          whole.addChunk(
            0,
            chunk.map((r) => r.row),
          )
          for (const r of chunk) {
            if (r.uniform) {
              const { cl, clStamp } = r.row
              streamed.addUniformRow(0, r.raw as unknown[], 2 + 4, cl, clStamp.hlc, clStamp.site)
            } else {
              streamed.addRow(0, r.row)
            }
          }
          streamed.flushChunk()
        }
        const vector = { [SITES[0] as string]: 2_000_000 }
        const a = whole.finish(vector, {}, 2_000_000)
        const b = streamed.finish(vector, {}, 2_000_000)
        expect(Buffer.from(b).equals(Buffer.from(a)), `seed ${seed}`).toBe(true)
      }
    })
  }

  it('finish writes the open chunk', () => {
    const t: WireTable = { ...table('causal'), algorithms: ['lww', 'lww', 'lww', 'lww', 'lww', 'lww'] }
    const rand = prng(7)
    // Values that decode as they were sent (a lone surrogate is sent as U+FFFD).
    const rows = Array.from({ length: 50 }, (_, i) => uniformRow(rand, i)).filter(
      (r) => !r.row.values.includes('lone \ud800 surrogate'),
    )
    const whole = new PayloadEncoder(SITES[0] as string, [t])
    whole.addChunk(
      0,
      rows.map((r) => r.row),
    )
    const streamed = new PayloadEncoder(SITES[0] as string, [t])
    for (const { raw, row } of rows) streamed.addUniformRow(0, raw, 6, row.cl, row.clStamp.hlc, row.clStamp.site)
    const a = whole.finish({}, {}, 2_000_000)
    const b = streamed.finish({}, {}, 2_000_000)
    expect(Buffer.from(b).equals(Buffer.from(a))).toBe(true)
    const decoded = DecodedPayload.open(b, 1e9)
    const got = [...decoded.chunks()].flatMap((c) => c.rows.map((r) => r.values))
    expect(got).toEqual(rows.map((r) => r.row.values))
  })
})

describe('string fast paths', () => {
  const samples = [
    '',
    'a',
    'x'.repeat(15),
    'x'.repeat(16),
    'x'.repeat(42),
    'x'.repeat(43),
    'x'.repeat(127),
    'x'.repeat(128),
    `${'x'.repeat(126)}ü`,
    `${'x'.repeat(40)}ü`,
    'ü'.repeat(43),
    'é'.repeat(64),
    '😀'.repeat(40),
    '\ufeffstarts with a byte order mark',
    'lone \udc00 surrogate, long enough',
    'short \ud800',
    '\u0000 nul and \u007f del',
    'x'.repeat(70_000),
    `${'y'.repeat(70_000)}€`,
  ]

  it('writes what TextEncoder writes, after the right length', () => {
    for (const s of samples) {
      const w = new ByteWriter(4)
      w.byte(9)
      w.string(s)
      w.byte(7)
      const out = w.finish()
      const data = new TextEncoder().encode(s)
      const len = new ByteWriter()
      len.uvarint(data.length)
      const expected = new Uint8Array([9, ...len.finish(), ...data, 7])
      expect(Buffer.from(out).equals(Buffer.from(expected)), JSON.stringify(s.slice(0, 20))).toBe(true)
    }
  })

  it('reads what TextDecoder reads, and refuses invalid UTF-8', () => {
    const decoder = new TextDecoder('utf-8', { fatal: true })
    for (const s of samples) {
      const w = new ByteWriter()
      w.string(s)
      const bytes = w.finish()
      // Both a plain Uint8Array and a Buffer, as inflated chunks are.
      for (const buf of [bytes.slice(), Buffer.from(bytes)]) {
        const r = new ByteReader(buf)
        expect(r.string()).toBe(decoder.decode(new TextEncoder().encode(s)))
        expect(r.remaining).toBe(0)
      }
    }
    const invalid = [[0x80], [0xc3], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0x61, 0xff, 0x62], [0xf4, 0x90, 0x80, 0x80]]
    for (const bad of invalid) {
      for (const buf of [new Uint8Array([bad.length, ...bad]), Buffer.from([bad.length, ...bad])]) {
        expect(() => new ByteReader(buf).string()).toThrow(/invalid UTF-8/)
      }
    }
    // A replacement character that was really sent is kept.
    const w = new ByteWriter()
    w.string('\ufffd')
    expect(new ByteReader(Buffer.from(w.finish())).string()).toBe('\ufffd')
    expect(() => new ByteReader(new Uint8Array([5, 0x61])).string()).toThrow(/count exceeds data/)
  })
})
