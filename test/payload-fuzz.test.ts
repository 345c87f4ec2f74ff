/**
 * Payload robustness: every truncated, corrupted, foreign, oversized or structurally mutated
 * payload must be refused with a ConvergeError (BAD_PAYLOAD or SCHEMA_MISMATCH) and leave
 * the receiving database exactly as it was. Mutations that are re-checksummed with a valid
 * sha256 trailer reach the decoder's structural checks and the merge; for those a successful
 * import is acceptable, provided the database still satisfies the engine's invariants.
 */
import { sha256 } from '@noble/hashes/sha2.js'
import Database from 'better-sqlite3'
import { deflateSync, inflateSync } from 'fflate'
import { ConvergeError, openReplica, type Replica } from 'sqlite-converge'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { dbContents, dbHash, diffContents, serializeValue } from './helpers/db-hash.js'
import { prng } from './helpers/replicas.js'

/** The replica's connection with its better-sqlite3 type (the API types it structurally). */
const conn = (r: Replica): Database.Database => r.db as Database.Database

// ---------------------------------------------------------------------------------------
// Deterministic randomness (seed printed on failure; override with FUZZ_SEED).
// ---------------------------------------------------------------------------------------

const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed1234)

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

const SITE_A = 'a1'.repeat(16)
const SITE_B = 'b2'.repeat(16)
const SITE_R = 'c3'.repeat(16)

const ITEMS = 'CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB, note)'
const TAGS = 'CREATE TABLE tags (k TEXT NOT NULL, n INTEGER NOT NULL, v, PRIMARY KEY (k, n)) WITHOUT ROWID'
const USER_TABLES = [
  { name: 'items', pk: ['id'] },
  { name: 'tags', pk: ['k', 'n'] },
] as const

function replica(siteId: string, ...ddl: string[]): Replica {
  const r = openReplica(':memory:', { siteId })
  for (const sql of ddl) conn(r).exec(sql)
  for (const sql of ddl) {
    const name = /CREATE TABLE (\w+)/.exec(sql)?.[1]
    if (name) r.enableSync(name)
  }
  return r
}

const insertItem = (
  r: Replica,
  id: number,
  name: unknown,
  qty: unknown,
  price: unknown,
  data: unknown,
  note: unknown,
) => conn(r).prepare('INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)').run(BigInt(id), name, qty, price, data, note)

/** The code of the ConvergeError `fn` throws; fails the test on success or on any other error. */
function errorCode(fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    if (!(err instanceof ConvergeError)) {
      throw new Error(`expected a ConvergeError, got ${String(err)}`, { cause: err })
    }
    return err.code
  }
  throw new Error('expected a ConvergeError, but the call succeeded')
}

function hex(buf: Uint8Array): string {
  return Buffer.from(buf).toString('hex')
}

function withChecksum(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length + 32)
  out.set(body, 0)
  out.set(sha256(body), body.length)
  return out
}

/** Replaces the trailer with the sha256 of everything before it (needs >= 32 bytes). */
function rechecksum(buf: Uint8Array): Uint8Array {
  return withChecksum(buf.subarray(0, buf.length - 32))
}

function hasValidChecksum(buf: Uint8Array): boolean {
  if (buf.length < 32) return false
  const digest = sha256(buf.subarray(0, buf.length - 32))
  return digest.every((b, i) => b === buf[buf.length - 32 + i])
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let pos = 0
  for (const p of parts) {
    out.set(p, pos)
    pos += p.length
  }
  return out
}

function uvarint(n: number): Uint8Array {
  const out: number[] = []
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80)
    n = Math.floor(n / 0x80)
  }
  out.push(n)
  return Uint8Array.from(out)
}

// ---------------------------------------------------------------------------------------
// An independent reader of the documented framing (docs/design.md), used to mutate the
// inside of chunks and the header and re-encode them validly.
// ---------------------------------------------------------------------------------------

interface Chunk {
  table: number
  rows: number
  raw: Uint8Array
}

interface Parsed {
  /** Everything before the chunk count. */
  header: Uint8Array
  /** Offsets of the header fields (for targeted header mutations). */
  fields: { maxHlc: [number, number]; tables: { pkCount: number; firstColumnName: number; hash: number }[] }
  chunks: Chunk[]
}

function parsePayload(buf: Uint8Array): Parsed {
  let pos = 6
  const u = () => {
    let result = 0
    let scale = 1
    for (;;) {
      if (pos >= buf.length) throw new Error('test parser: truncated varint')
      const b = buf[pos++] as number
      result += (b & 0x7f) * scale
      if (b < 0x80) return result
      scale *= 0x80
    }
  }
  const sites = u()
  pos += 16 * sites
  for (let i = u(); i > 0; i--) {
    u()
    u()
  }
  for (let i = u(); i > 0; i--) {
    pos += 16
    u()
  }
  const hlcStart = pos
  u()
  const maxHlc: [number, number] = [hlcStart, pos]
  const tables: Parsed['fields']['tables'] = []
  for (let t = u(); t > 0; t--) {
    const nameLen = u()
    pos += nameLen
    const hash = pos
    pos += 16
    const pkCount = pos
    u()
    const cols = u()
    const firstColumnName = pos
    for (let c = 0; c < cols; c++) {
      for (let k = 0; k < 2; k++) {
        const len = u()
        pos += len
      }
    }
    u() // row count
    tables.push({ pkCount, firstColumnName, hash })
  }
  const header = buf.slice(0, pos)
  const chunks: Chunk[] = []
  for (let c = u(); c > 0; c--) {
    const table = u()
    const rows = u()
    const rawLen = u()
    const compLen = u()
    const raw = inflateSync(buf.subarray(pos, pos + compLen))
    if (raw.length !== rawLen) throw new Error('test parser: raw length mismatch')
    pos += compLen
    chunks.push({ table, rows, raw })
  }
  if (pos !== buf.length - 32) throw new Error(`test parser: ${buf.length - 32 - pos} unparsed bytes`)
  return { header, fields: { maxHlc, tables }, chunks }
}

interface BuildOptions {
  /** Override a chunk header's declared raw length. */
  rawLen?: (chunk: Chunk, actual: number) => number
  chunkCount?: number
}

function buildPayload(header: Uint8Array, chunks: readonly Chunk[], opts: BuildOptions = {}): Uint8Array {
  const parts: Uint8Array[] = [header, uvarint(opts.chunkCount ?? chunks.length)]
  for (const c of chunks) {
    const comp = deflateSync(c.raw)
    parts.push(
      uvarint(c.table),
      uvarint(c.rows),
      uvarint(opts.rawLen ? opts.rawLen(c, c.raw.length) : c.raw.length),
      uvarint(comp.length),
      comp,
    )
  }
  return withChecksum(concat(...parts))
}

// ---------------------------------------------------------------------------------------
// Invariants of a replica after a successful import of a mutated payload.
// ---------------------------------------------------------------------------------------

function userRows(db: Database.Database, table: string): string[] {
  return (db.prepare(`SELECT * FROM "${table}"`).raw().safeIntegers().all() as unknown[][])
    .map((r) => r.map(serializeValue).join('|'))
    .sort()
}

function checkInvariants(r: Replica): void {
  const db = r.db as Database.Database
  expect(db.pragma('integrity_check', { simple: true })).toBe('ok')
  const ids = new Map(
    (db.prepare('SELECT name, id FROM _converge_tables').all() as { name: string; id: number }[]).map((t) => [
      t.name,
      t.id,
    ]),
  )
  for (const t of USER_TABLES) {
    const rows = `_converge_rows_${ids.get(t.name)}`
    const match = t.pk.map((c, i) => `t."${c}" = r.k${i}`).join(' AND ')
    // Every live metadata row has its user row, and every user row has live metadata.
    const orphanMeta = db
      .prepare(
        `SELECT count(*) FROM ${rows} r WHERE r.cl % 2 = 1 AND NOT EXISTS (SELECT 1 FROM ${t.name} t WHERE ${match})`,
      )
      .pluck()
      .get()
    const orphanRows = db
      .prepare(
        `SELECT count(*) FROM ${t.name} t WHERE NOT EXISTS (SELECT 1 FROM ${rows} r WHERE ${match} AND r.cl % 2 = 1)`,
      )
      .pluck()
      .get()
    expect({ table: t.name, orphanMeta, orphanRows }).toEqual({ table: t.name, orphanMeta: 0, orphanRows: 0 })
  }
  // The metadata is still readable and exportable, and a fresh replica that receives the
  // export ends up with the same user rows.
  const fresh = replica('ee'.repeat(16), ITEMS, TAGS)
  try {
    fresh.importChanges(r.exportChanges())
    for (const t of USER_TABLES) expect(userRows(fresh.db as Database.Database, t.name)).toEqual(userRows(db, t.name))
  } finally {
    fresh.close()
  }
}

// ---------------------------------------------------------------------------------------
// Shared scenario: A and B edit concurrently, R has part of A's history and local edits.
// ---------------------------------------------------------------------------------------

let A: Replica
let B: Replica
/** Serialized receiver database; every fuzz receiver starts from it. */
let receiverImage: Buffer
/** Full export of A (several sites, prev stamps, tombstones, every value type). */
let P1: Uint8Array
/** Delta export of B for R (non-empty `since`). */
let P2: Uint8Array
/** Payload with many rows in several chunks. */
let BIG: Uint8Array

function openReceiver(): Replica {
  return openReplica(new Database(receiverImage))
}

beforeAll(() => {
  A = replica(SITE_A, ITEMS, TAGS)
  B = replica(SITE_B, ITEMS, TAGS)
  const R = replica(SITE_R, ITEMS, TAGS)
  insertItem(A, 1, 'one', 1n, 1.5, Buffer.from([0, 1, 2]), null)
  insertItem(A, 2, 'two', 2n ** 53n + 1n, -0.25, Buffer.alloc(0), 1.0)
  insertItem(A, 3, '', -(2n ** 63n), 1e300, null, 'x')
  insertItem(A, 4, 'ünïcødé 😀', 2n ** 63n - 1n, null, Buffer.from('blob'), 7n)
  insertItem(A, 5, 'five', 5n, 5.0, null, Buffer.from([255]))
  insertItem(A, 6, 'six', null, null, null, null)
  const tag = conn(A).prepare('INSERT INTO tags VALUES (?, ?, ?)')
  tag.run('red', 1n, 'a')
  tag.run('red', 2n, 2.5)
  tag.run('blue', 1n, Buffer.from([9, 9]))
  tag.run('', -7n, null)
  R.importChanges(A.exportChanges(R.versionVector()))
  B.importChanges(A.exportChanges(B.versionVector()))
  // Concurrent edits on all three sites.
  conn(A).exec(`UPDATE items SET name = 'uno', qty = 11 WHERE id = 1; DELETE FROM items WHERE id = 3;
    UPDATE items SET name = 'dos' WHERE id = 2;
    UPDATE tags SET v = 'A' WHERE k = 'red' AND n = 1`)
  conn(B).exec(`UPDATE items SET name = 'eins', price = 2.5 WHERE id = 1; UPDATE items SET note = 'b' WHERE id = 6;
    INSERT INTO tags VALUES ('green', 3, x'00ff')`)
  conn(
    R,
  ).exec(`UPDATE items SET qty = 99, name = 'r-name' WHERE id = 2; INSERT INTO items (id, name) VALUES (10, 'r-only');
    UPDATE items SET price = 9.75 WHERE id = 1; UPDATE tags SET v = 'R' WHERE k = 'red' AND n = 1`)
  A.importChanges(B.exportChanges(A.versionVector()))
  conn(A).exec(`DELETE FROM items WHERE id = 5; INSERT INTO items (id, name, qty) VALUES (5, 'five again', 55);
    UPDATE items SET note = 'a' WHERE id = 6`)
  R.versionVector() // fold R's local writes
  receiverImage = conn(R).serialize()
  R.close()
  P1 = A.exportChanges()
  const probe = openReceiver()
  P2 = B.exportChanges(probe.versionVector())
  probe.close()

  const big = replica('dd'.repeat(16), ITEMS, TAGS)
  conn(big).transaction(() => {
    const ins = conn(big).prepare('INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)')
    for (let i = 0; i < 5000; i++) ins.run(BigInt(i), `item ${i}`, BigInt(i * 7), i / 3, Buffer.from([i & 255]), null)
  })()
  BIG = big.exportChanges()
  big.close()
})

afterAll(() => {
  A?.close()
  B?.close()
})

/**
 * Two receivers that imported the same payloads hold the same database, except for the
 * wall-clock times at which each recorded its conflicts and heard from its peers.
 */
function expectSameState(a: Replica, b: Replica): void {
  const ca = dbContents(conn(a))
  const cb = dbContents(conn(b))
  expect(diffContents(ca, cb).filter((t) => t !== '_converge_conflicts' && t !== '_converge_peers')).toEqual([])
  const strip = (r: Replica) => r.conflicts().map(({ recordedAt: _, ...c }) => c)
  expect(strip(a)).toEqual(strip(b))
  const peers = (r: Replica) => r.peers().map(({ lastSeen: _, ...p }) => p)
  expect(peers(a)).toEqual(peers(b))
}

/** Asserts that importing `payload` into `r` fails with one of `codes` and changes nothing. */
function expectRefused(r: Replica, payload: Uint8Array, codes: readonly string[], label: string): string {
  const before = dbContents(conn(r))
  let code: string
  try {
    code = errorCode(() => r.importChanges(payload))
  } catch (err) {
    throw new Error(`${label}: ${(err as Error).message} (payload ${hex(payload)})`, { cause: err })
  }
  if (!codes.includes(code))
    throw new Error(`${label}: got ${code}, expected ${codes.join('|')} (payload ${hex(payload)})`)
  const changed = diffContents(before, dbContents(conn(r)))
  if (changed.length) throw new Error(`${label}: import failed with ${code} but changed ${changed.join(', ')}`)
  return code
}

// ---------------------------------------------------------------------------------------

describe('fixtures', () => {
  it('dbHash sees storage class, internal tables and schema', () => {
    const db = new Database(':memory:')
    db.exec('CREATE TABLE t (a)')
    const empty = dbHash(db)
    db.exec('INSERT INTO t VALUES (1)')
    const one = dbHash(db)
    db.exec('UPDATE t SET a = 1.0')
    const oneReal = dbHash(db)
    db.exec(`UPDATE t SET a = '1'`)
    const oneText = dbHash(db)
    db.exec('CREATE INDEX i ON t (a)')
    const indexed = dbHash(db)
    db.exec('CREATE TABLE _converge_x (k PRIMARY KEY, v) WITHOUT ROWID; INSERT INTO _converge_x VALUES (1, 2)')
    const internal = dbHash(db)
    expect(new Set([empty, one, oneReal, oneText, indexed, internal]).size).toBe(6)
    expect(dbHash(db)).toBe(internal)
    db.close()
  })

  it('the unmutated payloads import, and the test re-encoder produces accepted payloads', () => {
    for (const p of [P1, P2, BIG]) {
      const parsed = parsePayload(p)
      const rebuilt = buildPayload(parsed.header, parsed.chunks)
      const viaOriginal = openReceiver()
      const viaRebuilt = openReceiver()
      const r1 = viaOriginal.importChanges(p)
      const r2 = viaRebuilt.importChanges(rebuilt)
      expect(r1.applied).toBeGreaterThan(0)
      expect(r2).toEqual(r1)
      expectSameState(viaRebuilt, viaOriginal)
      checkInvariants(viaOriginal)
      viaOriginal.close()
      viaRebuilt.close()
    }
    expect(parsePayload(BIG).chunks.length).toBeGreaterThan(1)
    // P1 brings concurrent edits: the fixture really exercises conflicts.
    const r = openReceiver()
    expect(r.importChanges(P1).conflicts).toBeGreaterThan(0)
    r.close()
  })
})

describe('truncated payloads', () => {
  it('every prefix of a small payload is BAD_PAYLOAD and changes nothing', () => {
    const r = openReceiver()
    const hash = dbHash(conn(r))
    for (let len = 0; len < P1.length; len++) {
      const code = errorCode(() => r.importChanges(P1.slice(0, len)))
      if (code !== 'BAD_PAYLOAD') throw new Error(`prefix ${len}: ${code}`)
    }
    for (let len = 0; len < P2.length; len++) {
      const code = errorCode(() => r.importChanges(P2.subarray(0, len)))
      if (code !== 'BAD_PAYLOAD') throw new Error(`prefix ${len}: ${code}`)
    }
    expect(dbHash(conn(r))).toBe(hash)
    r.close()
  })

  it('prefixes of a large payload (sampled, with the chunk boundaries) are BAD_PAYLOAD', () => {
    const r = openReceiver()
    const hash = dbHash(conn(r))
    const rand = prng(SEED ^ 0x7a)
    const lengths = new Set<number>([
      0,
      1,
      4,
      5,
      6,
      38,
      BIG.length - 1,
      BIG.length - 31,
      BIG.length - 32,
      BIG.length - 33,
    ])
    for (let i = 0; i < 150; i++) lengths.add(Math.floor(rand() * BIG.length))
    const parsed = parsePayload(BIG)
    lengths.add(parsed.header.length)
    lengths.add(parsed.header.length + 1)
    for (const len of lengths) {
      expectRefused(r, BIG.slice(0, len), ['BAD_PAYLOAD'], `BIG prefix ${len}`)
      // ...and the same prefix with a valid trailer: structural truncation, not a checksum.
      if (len >= 38) expectRefused(r, withChecksum(BIG.subarray(0, len - 32)), ['BAD_PAYLOAD'], `BIG cut ${len}`)
    }
    expect(dbHash(conn(r))).toBe(hash)
    r.close()
  })

  it('the payload with a chunk missing, duplicated or a wrong chunk count is BAD_PAYLOAD', () => {
    const r = openReceiver()
    const { header, chunks } = parsePayload(BIG)
    expectRefused(r, buildPayload(header, chunks.slice(1)), ['BAD_PAYLOAD'], 'first chunk dropped')
    expectRefused(r, buildPayload(header, chunks.slice(0, -1)), ['BAD_PAYLOAD'], 'last chunk dropped')
    expectRefused(r, buildPayload(header, [...chunks, chunks[0] as Chunk]), ['BAD_PAYLOAD'], 'chunk duplicated')
    expectRefused(r, buildPayload(header, chunks, { chunkCount: chunks.length - 1 }), ['BAD_PAYLOAD'], 'count - 1')
    expectRefused(r, buildPayload(header, chunks, { chunkCount: chunks.length + 1 }), ['BAD_PAYLOAD'], 'count + 1')
    expectRefused(r, buildPayload(header, chunks, { rawLen: (_, n) => n + 1 }), ['BAD_PAYLOAD'], 'raw length + 1')
    expectRefused(r, buildPayload(header, chunks, { rawLen: (_, n) => n - 1 }), ['BAD_PAYLOAD'], 'raw length - 1')
    expectRefused(r, buildPayload(header, chunks, { rawLen: () => 2 ** 40 }), ['BAD_PAYLOAD'], 'raw length huge')
    const truncatedRaw = chunks.map((c) => ({ ...c, raw: c.raw.subarray(0, c.raw.length - 3) }))
    expectRefused(r, buildPayload(header, truncatedRaw), ['BAD_PAYLOAD'], 'truncated chunk body')
    const moreRows = chunks.map((c) => ({ ...c, rows: c.rows + 1 }))
    expectRefused(r, buildPayload(header, moreRows), ['BAD_PAYLOAD'], 'row count + 1')
    const lessRows = chunks.map((c) => ({ ...c, rows: c.rows - 1 }))
    expectRefused(r, buildPayload(header, lessRows), ['BAD_PAYLOAD'], 'row count - 1')
    const trailing = buildPayload(
      header,
      chunks.map((c) => ({ ...c, raw: concat(c.raw, Uint8Array.of(0)) })),
    )
    expectRefused(r, trailing, ['BAD_PAYLOAD'], 'trailing byte in chunk')
    const extra = parsePayload(BIG)
    const withTail = withChecksum(concat(buildPayload(extra.header, extra.chunks).subarray(0, -32), Uint8Array.of(0)))
    expectRefused(r, withTail, ['BAD_PAYLOAD'], 'trailing byte after the chunks')
    r.close()
  })
})

describe('corrupted payloads', () => {
  it('single-byte corruption at every position of a small payload is BAD_PAYLOAD and changes nothing', () => {
    const r = openReceiver()
    const hash = dbHash(conn(r))
    const rand = prng(SEED ^ 0x51)
    for (const base of [P1, P2]) {
      for (let pos = 0; pos < base.length; pos++) {
        for (const mask of [0x01, 0x80, 0xff, 1 + Math.floor(rand() * 254)]) {
          const bad = base.slice()
          bad[pos] = (bad[pos] as number) ^ mask
          const code = errorCode(() => r.importChanges(bad))
          if (code !== 'BAD_PAYLOAD') throw new Error(`byte ${pos} ^ ${mask}: ${code}`)
        }
      }
    }
    expect(dbHash(conn(r))).toBe(hash)
    r.close()
  })

  it('single-byte corruption at every position, re-checksummed, is refused or harmless', () => {
    let r = openReceiver()
    let accepted = 0
    let refused = 0
    for (const base of [P1, P2]) {
      for (let pos = 0; pos < base.length - 32; pos++) {
        const bad = base.slice()
        bad[pos] = (bad[pos] as number) ^ 0xff
        const outcome = tryImport(r, rechecksum(bad), `P${base === P1 ? 1 : 2} byte ${pos} ^ 0xff re-checksummed`)
        if (outcome === 'accepted') {
          accepted++
          r.close()
          r = openReceiver()
        } else refused++
      }
    }
    expect(refused).toBeGreaterThan(accepted)
    r.close()
  })

  it('empty, tiny, random and wrong-type payloads are BAD_PAYLOAD', () => {
    const r = openReceiver()
    const hash = dbHash(conn(r))
    const rand = prng(SEED ^ 0x99)
    const cases: [string, unknown][] = [
      ['empty', new Uint8Array(0)],
      ['magic only', new TextEncoder().encode('CVRG')],
      ['magic and format', Uint8Array.of(0x43, 0x56, 0x52, 0x47, 1, 0)],
      ['magic, format and a valid checksum of nothing else', withChecksum(Uint8Array.of(0x43, 0x56, 0x52, 0x47, 1, 0))],
      ['unknown format version', rechecksum(Uint8Array.from(P1, (b, i) => (i === 4 ? 2 : b)))],
      ['format version 0', rechecksum(Uint8Array.from(P1, (b, i) => (i === 4 ? 0 : b)))],
      ['wrong magic', rechecksum(Uint8Array.from(P1, (b, i) => (i === 0 ? 0x44 : b)))],
      ['zeros', new Uint8Array(300)],
      ['zeros with checksum', withChecksum(new Uint8Array(300))],
      ['0xff', new Uint8Array(300).fill(0xff)],
      ['a string', 'CVRG'],
      ['null', null],
      ['undefined', undefined],
      ['a number', 42],
      ['an ArrayBuffer', P1.slice().buffer],
      ['an array of numbers', Array.from(P1)],
    ]
    for (let i = 0; i < 200; i++) {
      const n = Math.floor(rand() * 400)
      const bytes = Uint8Array.from({ length: n }, () => Math.floor(rand() * 256))
      cases.push([`random ${n} bytes`, bytes])
      const framed = concat(Uint8Array.of(0x43, 0x56, 0x52, 0x47, 1, 0), bytes)
      cases.push([`random ${n} bytes after the magic, checksummed`, withChecksum(framed)])
    }
    for (const [label, payload] of cases) {
      const code = errorCode(() => r.importChanges(payload as Uint8Array))
      if (code !== 'BAD_PAYLOAD') throw new Error(`${label}: ${code}`)
    }
    expect(dbHash(conn(r))).toBe(hash)
    r.close()
  })

  it('a Buffer holding a valid payload (as read from a file) is accepted like the Uint8Array', () => {
    const r1 = openReceiver()
    const r2 = openReceiver()
    expect(r1.importChanges(Buffer.from(P1))).toEqual(r2.importChanges(P1))
    expectSameState(r1, r2)
    r1.close()
    r2.close()
  })
})

describe('oversized payloads', () => {
  it('a payload over maxPayloadBytes is BAD_PAYLOAD and changes nothing; one at the limit imports', () => {
    const small = openReplica(new Database(receiverImage), { maxPayloadBytes: P1.length - 1 })
    const hash = dbHash(conn(small))
    let err: unknown
    try {
      small.importChanges(P1)
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(ConvergeError)
    expect((err as ConvergeError).code).toBe('BAD_PAYLOAD')
    expect((err as ConvergeError).message).toMatch(/limit/)
    expect(dbHash(conn(small))).toBe(hash)
    small.close()
    const exact = openReplica(new Database(receiverImage), { maxPayloadBytes: P1.length })
    expect(exact.importChanges(P1).applied).toBeGreaterThan(0)
    exact.close()
    const tiny = openReplica(new Database(receiverImage), { maxPayloadBytes: 16 })
    expectRefused(tiny, BIG, ['BAD_PAYLOAD'], 'BIG into a 16-byte limit')
    expectRefused(tiny, new Uint8Array(17), ['BAD_PAYLOAD'], '17 zero bytes into a 16-byte limit')
    tiny.close()
  })
})

describe('schema mismatches', () => {
  // [label, DDL of items on the other replica, what the error message must name]
  const cases: [string, string, RegExp][] = [
    [
      'an extra column',
      'CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB, note, extra TEXT)',
      /\bextra\b/,
    ],
    [
      'a missing column',
      'CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB)',
      /\bnote\b/,
    ],
    [
      'a column of another type',
      'CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty TEXT, price REAL, data BLOB, note)',
      /\bqty\b/,
    ],
    [
      'a renamed column',
      'CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT, qty INTEGER, price REAL, data BLOB, note)',
      /\btitle\b.*\bname\b|\bname\b.*\btitle\b/,
    ],
    [
      'a primary key of another type',
      'CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB, note)',
      /\bid\b/,
    ],
    [
      'another primary key',
      'CREATE TABLE items (id INTEGER, name TEXT PRIMARY KEY, qty INTEGER, price REAL, data BLOB, note)',
      /primary key/i,
    ],
    [
      'a composite primary key',
      'CREATE TABLE items (id INTEGER, name TEXT, qty INTEGER, price REAL, data BLOB, note, PRIMARY KEY (id, name))',
      /primary key/i,
    ],
  ]

  for (const [label, ddl, messagePattern] of cases) {
    it(`a payload from a table with ${label} is SCHEMA_MISMATCH naming the table and columns`, () => {
      const other = replica('f0'.repeat(16), ddl)
      const nameColumn = /\btitle\b/.test(ddl) ? 'title' : 'name'
      conn(other).exec(`INSERT INTO items (id, ${nameColumn}) VALUES (100, 'hundred')`)
      const payload = other.exportChanges()
      other.close()
      const r = openReceiver()
      expectRefused(r, payload, ['SCHEMA_MISMATCH'], label)
      let err: ConvergeError | undefined
      try {
        r.importChanges(payload)
      } catch (e) {
        err = e as ConvergeError
      }
      expect(err?.message).toContain('items')
      expect(err?.message).toMatch(messagePattern)
      expect(err?.details.table).toBe('items')
      // Both column lists are in the details, so a caller can show the difference.
      for (const side of [err?.details.local, err?.details.remote]) {
        expect(String(side)).toMatch(/\bid\b/)
        expect(String(side)).toMatch(/\bqty\b/)
      }
      r.close()
      // And the other direction: the receiver's rows refused by the odd table.
      const odd = replica('f1'.repeat(16), ddl)
      const hash = dbHash(conn(odd))
      expect(errorCode(() => odd.importChanges(P1))).toBe('SCHEMA_MISMATCH')
      expect(dbHash(conn(odd))).toBe(hash)
      odd.close()
    })
  }

  it('declared types with the same affinity and another column order are not a mismatch', () => {
    const other = replica(
      'f2'.repeat(16),
      'CREATE TABLE items (note, data BLOB, price DOUBLE, qty BIGINT, name VARCHAR(20), id INTEGER PRIMARY KEY)',
    )
    conn(other).exec(`INSERT INTO items (id, name, qty, price) VALUES (200, 'two hundred', 3, 4.5)`)
    const r = openReceiver()
    expect(r.importChanges(other.exportChanges()).applied).toBeGreaterThan(0)
    expect(conn(r).prepare('SELECT name, qty, price FROM items WHERE id = 200').get()).toEqual({
      name: 'two hundred',
      qty: 3,
      price: 4.5,
    })
    other.close()
    r.close()
  })

  it('a payload with rows for a table that is not synced here is SCHEMA_MISMATCH naming it', () => {
    const other = replica('f3'.repeat(16), ITEMS, TAGS, 'CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)')
    conn(other).exec(`INSERT INTO notes VALUES ('n1', 'hello'); INSERT INTO items (id, name) VALUES (300, 'x')`)
    const payload = other.exportChanges()
    other.close()

    // Table absent from the receiver.
    const r = openReceiver()
    const code = expectRefused(r, payload, ['SCHEMA_MISMATCH'], 'notes missing')
    expect(code).toBe('SCHEMA_MISMATCH')
    try {
      r.importChanges(payload)
    } catch (e) {
      expect((e as ConvergeError).message).toContain('notes')
      expect((e as ConvergeError).details.table).toBe('notes')
    }
    // Table present but not synced.
    conn(r).exec('CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)')
    expectRefused(r, payload, ['SCHEMA_MISMATCH'], 'notes not synced')
    // Once synced, the same payload imports.
    r.enableSync('notes')
    expect(r.importChanges(payload).applied).toBeGreaterThan(0)
    expect(conn(r).prepare(`SELECT body FROM notes WHERE id = 'n1'`).pluck().get()).toBe('hello')
    r.close()
  })

  it('a table synced on the sender but without changes for us does not block the import', () => {
    const other = replica('f4'.repeat(16), ITEMS, 'CREATE TABLE unrelated (id TEXT PRIMARY KEY)')
    conn(other).exec(`INSERT INTO items (id, name) VALUES (400, 'x')`)
    const r = openReceiver()
    expect(r.importChanges(other.exportChanges()).applied).toBeGreaterThan(0)
    other.close()
    r.close()
  })

  it('a key column that is a rowid alias on one side only (same affinity) is refused with a ConvergeError', () => {
    // `INT PRIMARY KEY` is not a rowid alias and stores any value; `INTEGER PRIMARY KEY` is
    // and rejects non-integers. Both have INTEGER affinity, so the schema hashes agree.
    const sender = replica('f5'.repeat(16), 'CREATE TABLE k (id INT PRIMARY KEY, v)')
    conn(sender).exec(`INSERT INTO k VALUES ('abc', 1)`)
    const receiver = replica('f6'.repeat(16), 'CREATE TABLE k (id INTEGER PRIMARY KEY, v)')
    conn(receiver).exec('INSERT INTO k VALUES (1, 1)')
    expectRefused(receiver, sender.exportChanges(), ['CONSTRAINT', 'SCHEMA_MISMATCH', 'BAD_PAYLOAD'], 'rowid alias')
    sender.close()
    receiver.close()
  })
})

describe('mutations that keep a valid checksum', () => {
  it('a renamed column in the header (same schema hash) is refused, not silently dropped', () => {
    // The header's column list is what maps payload columns to local ones; a hash that
    // matches while the column names do not is an inconsistent payload.
    const { header, chunks, fields } = parsePayload(P1)
    const mutated = header.slice()
    const at = fields.tables[0]?.firstColumnName as number // length byte of the first column name ("id")
    expect(new TextDecoder().decode(mutated.subarray(at + 1, at + 3))).toBe('id')
    // Rename a data column instead of the key: find "name" in the items table and make it "namf".
    const text = Buffer.from(mutated).toString('latin1')
    const pos = text.indexOf('\x04name\x04TEXT')
    expect(pos).toBeGreaterThan(0)
    mutated[pos + 4] = 'f'.charCodeAt(0)
    const r = openReceiver()
    expectRefused(r, buildPayload(mutated, chunks), ['BAD_PAYLOAD', 'SCHEMA_MISMATCH'], 'renamed column')
    r.close()
  })

  it('a wrong key column count in the header (same schema hash) is refused', () => {
    const { header, chunks, fields } = parsePayload(P1)
    for (const t of fields.tables) {
      const mutated = header.slice()
      mutated[t.pkCount] = (mutated[t.pkCount] as number) === 1 ? 2 : 1
      const r = openReceiver()
      expectRefused(r, buildPayload(mutated, chunks), ['BAD_PAYLOAD', 'SCHEMA_MISMATCH'], 'pk count')
      r.close()
    }
  })

  it('a declared maximum clock below the vector is BAD_PAYLOAD; far ahead is CLOCK_DRIFT', () => {
    const { header, chunks, fields } = parsePayload(P1)
    const [start, end] = fields.maxHlc
    const withMax = (hlc: number) => concat(header.subarray(0, start), uvarint(hlc), header.subarray(end))
    const r = openReceiver()
    expectRefused(r, buildPayload(withMax(1), chunks), ['BAD_PAYLOAD'], 'maxHlc 1')
    expectRefused(r, buildPayload(withMax(0), chunks), ['BAD_PAYLOAD'], 'maxHlc 0')
    const future = (Date.now() + 24 * 3600_000) * 1024
    expectRefused(r, buildPayload(withMax(future), chunks), ['CLOCK_DRIFT'], 'maxHlc a day ahead')
    expectRefused(r, buildPayload(withMax(2 ** 53 - 1), chunks), ['CLOCK_DRIFT', 'BAD_PAYLOAD'], 'maxHlc 2^53-1')
    expectRefused(r, buildPayload(withMax(2 ** 56), chunks), ['BAD_PAYLOAD'], 'maxHlc beyond 2^53')
    r.close()
  })

  it('a flipped schema hash no longer matches the columns the header lists: BAD_PAYLOAD', () => {
    const { header, chunks, fields } = parsePayload(P1)
    for (const t of fields.tables) {
      const mutated = header.slice()
      mutated[t.hash] = (mutated[t.hash] as number) ^ 1
      const r = openReceiver()
      expectRefused(r, buildPayload(mutated, chunks), ['BAD_PAYLOAD'], 'hash flip')
      r.close()
    }
  })

  it('fuzz: several thousand mutated payloads are refused with a ConvergeError or applied harmlessly', () => {
    const rand = prng(SEED)
    const int = (n: number) => Math.floor(rand() * n)
    const bases = [P1, P2]
    const parsedBases = bases.map(parsePayload)
    const randomBytes = (n: number) => Uint8Array.from({ length: n }, () => int(256))
    const interesting = [0, 1, 2, 3, 4, 5, 8, 0x7f, 0x80, 0xff]
    const mutateBytes = (buf: Uint8Array): Uint8Array => {
      const kind = int(6)
      if (kind === 0) {
        const out = buf.slice()
        for (let k = 1 + int(4); k > 0; k--) {
          const p = int(out.length)
          out[p] = (out[p] as number) ^ (1 << int(8))
        }
        return out
      }
      if (kind === 1) {
        const out = buf.slice()
        out[int(out.length)] = interesting[int(interesting.length)] as number
        return out
      }
      if (kind === 2) {
        const p = int(buf.length + 1)
        return concat(buf.subarray(0, p), randomBytes(1 + int(4)), buf.subarray(p))
      }
      if (kind === 3) {
        const p = int(buf.length)
        return concat(buf.subarray(0, p), buf.subarray(Math.min(buf.length, p + 1 + int(4))))
      }
      if (kind === 4) {
        // Duplicate a slice of itself somewhere else.
        const p = int(buf.length)
        const len = 1 + int(12)
        const q = int(buf.length + 1)
        return concat(buf.subarray(0, q), buf.subarray(p, p + len), buf.subarray(q))
      }
      const out = buf.slice()
      const p = int(out.length)
      out.set(randomBytes(Math.min(out.length - p, 1 + int(8))), p)
      return out
    }

    const stats = new Map<string, number>()
    const count = (key: string) => stats.set(key, (stats.get(key) ?? 0) + 1)
    const failures: string[] = []
    let r = openReceiver()
    const ITERATIONS = 4000
    for (let i = 0; i < ITERATIONS; i++) {
      const which = int(bases.length)
      const base = bases[which] as Uint8Array
      const parsed = parsedBases[which] as Parsed
      const strategy = int(9)
      let payload: Uint8Array
      let label: string
      switch (strategy) {
        case 0:
          payload = mutateBytes(base)
          label = 'raw mutation'
          break
        case 1: {
          const other = bases[1 - which] as Uint8Array
          payload = concat(base.subarray(0, 1 + int(base.length - 1)), other.subarray(1 + int(other.length - 1)))
          label = 'splice'
          break
        }
        case 2:
          payload = rechecksum(concat(mutateBytes(base.subarray(0, base.length - 32)), new Uint8Array(32)))
          label = 're-checksummed raw mutation'
          break
        case 3: {
          const other = bases[1 - which] as Uint8Array
          const body = concat(
            base.subarray(0, 6 + int(base.length - 38)),
            other.subarray(6 + int(other.length - 38), -32),
          )
          payload = withChecksum(body)
          label = 're-checksummed splice'
          break
        }
        case 4:
          payload = buildPayload(mutateBytes(parsed.header), parsed.chunks)
          label = 'header mutation'
          break
        case 5:
        case 6:
        case 7: {
          // Mutate inside an inflated chunk and re-deflate, keeping the framing consistent.
          const chunks = parsed.chunks.map((c) => ({ ...c }))
          const c = chunks[int(chunks.length)] as Chunk
          c.raw = mutateBytes(c.raw)
          if (strategy === 7) c.raw = mutateBytes(c.raw)
          payload = buildPayload(parsed.header, chunks)
          label = 'chunk body mutation'
          break
        }
        default: {
          // Mix chunks of the two payloads, or change a chunk's table index or row count.
          const other = parsedBases[1 - which] as Parsed
          const chunks = parsed.chunks.map((c) => ({ ...c }))
          const c = chunks[int(chunks.length)] as Chunk
          const k = int(3)
          if (k === 0) chunks.push({ ...(other.chunks[int(other.chunks.length)] as Chunk) })
          else if (k === 1) c.table = int(3)
          else c.rows = Math.max(0, c.rows + int(5) - 2)
          payload = buildPayload(parsed.header, chunks)
          label = 'chunk framing mutation'
        }
      }
      // Every iteration runs even after a failure, so one defect does not hide others;
      // failures are collected and reported together at the end.
      try {
        if (!hasValidChecksum(payload)) {
          expectRefused(r, payload, ['BAD_PAYLOAD'], `#${i} ${label} (seed ${SEED})`)
          count(`${label}: BAD_PAYLOAD`)
          continue
        }
        const outcome = tryImport(r, payload, `#${i} ${label} (seed ${SEED})`)
        count(`${label}: ${outcome}`)
        if (outcome !== 'accepted') continue
      } catch (err) {
        failures.push((err as Error).message)
        count(`${label}: FAILED`)
      }
      r.close()
      r = openReceiver()
    }
    r.close()
    if (process.env.FUZZ_STATS) console.log(Object.fromEntries([...stats].sort()))
    expect(
      failures.length,
      `${failures.length} of ${ITERATIONS} mutated payloads misbehaved; the first ones:\n${failures.slice(0, 3).join('\n\n')}`,
    ).toBe(0)
    // The fuzz must reach past the checksum into the structural checks and the merge.
    const total = (suffix: string) => [...stats].filter(([k]) => k.endsWith(suffix)).reduce((n, [, v]) => n + v, 0)
    expect(total(': BAD_PAYLOAD')).toBeGreaterThan(ITERATIONS / 4)
    expect(total(': accepted')).toBeGreaterThan(10)
    expect([...stats.keys()].some((k) => k.startsWith('chunk body mutation: BAD_PAYLOAD'))).toBe(true)
    expect([...stats.keys()].some((k) => k.startsWith('header mutation: SCHEMA_MISMATCH'))).toBe(true)
  })
})

/**
 * Imports a payload with a valid checksum: either it is refused with BAD_PAYLOAD,
 * SCHEMA_MISMATCH or CLOCK_DRIFT (a mutated but well-formed header may claim a future
 * clock) and the database is unchanged, or it is accepted and the invariants hold.
 */
function tryImport(r: Replica, payload: Uint8Array, label: string): string {
  const before = dbContents(conn(r))
  try {
    r.importChanges(payload)
  } catch (err) {
    if (!(err instanceof ConvergeError)) {
      throw new Error(`${label}: threw ${String(err)} (not a ConvergeError); payload ${hex(payload)}`, { cause: err })
    }
    if (!['BAD_PAYLOAD', 'SCHEMA_MISMATCH', 'CLOCK_DRIFT'].includes(err.code)) {
      throw new Error(`${label}: unexpected code ${err.code}: ${err.message}; payload ${hex(payload)}`)
    }
    const changed = diffContents(before, dbContents(conn(r)))
    if (changed.length) throw new Error(`${label}: refused with ${err.code} but changed ${changed.join(', ')}`)
    return err.code
  }
  try {
    checkInvariants(r)
  } catch (err) {
    throw new Error(`${label}: accepted, but invariants broke: ${(err as Error).message}; payload ${hex(payload)}`, {
      cause: err,
    })
  }
  return 'accepted'
}
