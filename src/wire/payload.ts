/**
 * The change payload: a binary, versioned, checksummed container of row and cell versions.
 *
 *   magic "CVRG" | format u8 | flags u8 | header | chunks | sha256 of all preceding bytes
 *
 * The header names the sender, its vector, the `since` the export answered, an upper bound
 * of every HLC inside, and each table's schema. Chunks hold up to a few thousand rows of
 * one table, laid out column by column and deflated, so neither side needs the whole
 * uncompressed body in memory. See docs/design.md for the byte layout.
 */
import { sha256 } from '@noble/hashes/sha2.js'
import { deflateSync, inflateSync } from 'fflate'
import {
  COLUMN_ALGORITHMS,
  type ColumnAlgorithm,
  type CounterPart,
  normalizeParts,
  ROW_MODES,
  type RowMode,
  sumParts,
} from '../core/algorithms.js'
import { ConvergeError } from '../core/errors.js'
import { type CellStamp, compareStamps, counterCell, type Stamp, textCell } from '../core/merge.js'
import { normalizeBlocks, POSITION_BASE, type PositionLevel, type TextBlock, textValue } from '../core/text.js'
import type { SqlValue } from '../core/values.js'
import type { VersionVector } from '../core/version-vector.js'
import { ByteReader, ByteWriter, badPayload } from './bytes.js'
import { readValue, writeTextBlocks, writeValue } from './values.js'

export const PAYLOAD_MAGIC = new Uint8Array([0x43, 0x56, 0x52, 0x47]) // "CVRG"
export const PAYLOAD_FORMAT = 2
/** Header flag: the payload is a complete snapshot of the tables it lists. */
const FLAG_COMPLETE = 1
/** Format 1 (no column algorithms or row modes) is still read. */
const OLDEST_FORMAT = 1
const CHECKSUM_BYTES = 32
const SITE_BYTES = 16
/** No chunk inflates beyond this, whatever its header claims. */
export const MAX_CHUNK_RAW_BYTES = 64 * 1024 * 1024

/**
 * The byte-crunching a payload needs: raw deflate (RFC 1951) for chunk bodies and SHA-256
 * for the checksum. The default is pure JavaScript (fflate, @noble/hashes) that runs in any
 * runtime; the Node entry point passes node:zlib and node:crypto, several times faster.
 * Both produce and read the same bytes.
 */
export interface PayloadCodec {
  /**
   * Compresses. `fast` may skip string matching (Huffman coding only), several times faster
   * and as small on ids and prose; `small` is level 1 with matching, for repetitive values.
   */
  deflate(raw: Uint8Array, effort?: DeflateEffort): Uint8Array
  /**
   * Decompresses data expected to inflate to exactly `rawLen` bytes; must throw, or return
   * a different length, when the data is corrupt or inflates to more.
   */
  inflate(data: Uint8Array, rawLen: number): Uint8Array
  /** SHA-256 digest (32 bytes) of the parts, concatenated. */
  sha256(...parts: Uint8Array[]): Uint8Array
}

/** How hard {@link PayloadCodec.deflate} works: `fast` (default) or `small`. */
export type DeflateEffort = 'fast' | 'small'

export const portableCodec: PayloadCodec = {
  deflate: (raw) => deflateSync(raw, { level: 1 }),
  // fflate stops at the end of `out`: one spare byte tells "more than announced" apart.
  inflate: (data, rawLen) => inflateSync(data, { out: new Uint8Array(rawLen + 1) }),
  sha256: (...parts) => {
    const h = sha256.create()
    for (const part of parts) h.update(part)
    return h.digest()
  },
}

/** Chunks of a table between two comparisons of the compression efforts. */
const RESAMPLE_CHUNKS = 16
/** Matching is used when it makes a chunk at least this much smaller than Huffman coding alone. */
const MATCHING_GAIN = 0.1

/** Room left before the first chunk for the header, which is written last. */
const HEADER_RESERVE = 4096
/** Largest payload an encoder will build. */
const MAX_ENCODED_BYTES = 2 ** 32 - 1

const F_PRESENT = 1
const F_ROW_STAMP = 2
const F_PREV = 4
/** A counter cell: its parts follow instead of a stamp and a value. */
const F_PARTS = 8
/** A text cell: its blocks follow its stamp, instead of a value. */
const F_BLOCKS = 16

/** A table as the payload describes it. */
export interface WireTable {
  readonly name: string
  /** 16-byte schema hash. */
  readonly hash: Uint8Array
  /** Number of leading columns that form the primary key. */
  readonly pkCount: number
  /** Column names, primary key first (in key order). */
  readonly columns: readonly string[]
  /** Column affinities, parallel to `columns`. */
  readonly affinities: readonly string[]
  /** Column algorithms, parallel to `columns` (key columns: 'lww'). */
  readonly algorithms: readonly ColumnAlgorithm[]
  /** Block delimiters of text columns, parallel to `columns` ('' for other columns). */
  readonly delimiters: readonly string[]
  /** The table's row mode. */
  readonly rows: RowMode
  /**
   * The highest causal length of a tombstone the sender compacted away (0: none): fresh
   * keys start above it, so a re-insert beats a tombstone some replica still holds.
   */
  readonly clFloor: number
}

/**
 * One row: key, causal length with the stamp that set it, and for each non-key column the
 * cell's stamp (null where the payload carries no version) and value.
 */
export interface WireRow {
  readonly pk: SqlValue[]
  readonly cl: number
  readonly clStamp: Stamp
  /** Parallel to the table's non-key columns; null where the payload carries no version. */
  readonly stamps: readonly (CellStamp | null)[]
  /** Parallel to `stamps`; meaningless where the stamp is null. */
  readonly values: readonly SqlValue[]
  /** Deleted rows: per non-key column, the version the deleter had seen (see RowState.seen). */
  readonly seen?: readonly (Stamp | null)[]
  /** Delete-wins tables: the deletions of the ended life (tombstones) or of the previous one (live rows); see RowState.deletions. */
  readonly deletions?: readonly Stamp[]
}

/** Everything in a payload except its rows. */
export interface PayloadHeader {
  readonly sender: string
  readonly vector: VersionVector
  readonly since: VersionVector
  readonly maxHlc: number
  readonly tables: readonly WireTable[]
  /** Rows per table, parallel to `tables`. */
  readonly rowCounts: readonly number[]
  readonly chunkCount: number
  /**
   * The payload holds every live row of the tables it lists (and the tombstones of tables
   * that are never compacted, none of 'causal' ones): a live row of the receiver, in a
   * 'causal' table, whose life `vector` covers and that the payload lacks was deleted by
   * the sender, which may have compacted the deletion away.
   */
  readonly complete: boolean
}

/** A chunk being filled row by row: its sections so far, and rows kept back. */
interface OpenChunk {
  readonly table: number
  readonly t: WireTable
  rows: number
  readonly keys: ByteWriter[]
  readonly stamps: ByteWriter
  readonly cells: ByteWriter[]
  /** HLC of the last row encoded (row HLCs are deltas). */
  lastHlc: number
  /** Rows after the first that could not be encoded at once, in order. */
  readonly pending: WireRow[]
}

/** Builds a payload chunk by chunk; only compressed chunks stay in memory. */
export class PayloadEncoder {
  readonly #sites: string[] = []
  readonly #siteIndex = new Map<string, number>()
  readonly #tables: WireTable[]
  readonly #rowCounts: number[]
  /** The payload under construction: header space, then chunks as they are added. */
  readonly #out = new ByteWriter(HEADER_RESERVE + 16 * 1024, MAX_ENCODED_BYTES)
  #chunkCount = 0
  readonly #codec: PayloadCodec
  /** Per table: the effort its chunks compress with, and chunks since it was last chosen. */
  readonly #effort: { effort: DeflateEffort; age: number }[]
  /** The chunk {@link addRow} is filling, if any. */
  #chunk: OpenChunk | null = null
  /** Section writers, reused from chunk to chunk. */
  readonly #writers: ByteWriter[] = []
  /** The uncompressed body of a chunk, reused. */
  readonly #body = new ByteWriter(64 * 1024)

  constructor(sender: string, tables: WireTable[], codec: PayloadCodec = portableCodec) {
    this.#tables = tables
    this.#rowCounts = tables.map(() => 0)
    this.#codec = codec
    this.#effort = tables.map(() => ({ effort: 'fast', age: RESAMPLE_CHUNKS }))
    this.#site(sender)
    this.#out.bytes(new Uint8Array(HEADER_RESERVE))
  }

  /** {@link #site} as a function value. */
  readonly #siteOf = (site: string): number => this.#site(site)

  #site(site: string): number {
    let i = this.#siteIndex.get(site)
    if (i === undefined) {
      i = this.#sites.length
      this.#sites.push(site)
      this.#siteIndex.set(site, i)
    }
    return i
  }

  /** Writes a stamp: causal length, HLC relative to `baseHlc`, site index. */
  #stamp(w: ByteWriter, s: Stamp, baseHlc: number): void {
    w.uvarint(s.cl)
    w.svarint(s.hlc - baseHlc)
    w.uvarint(this.#site(s.site))
  }

  /** Rows added so far per table, parallel to the tables the encoder was made with. */
  get tableRows(): readonly number[] {
    return this.#rowCounts
  }

  /** Number of rows added so far. */
  get rows(): number {
    return this.#rowCounts.reduce((a, b) => a + b, 0)
  }

  /** Encodes and compresses one chunk of rows of table number `table`. */
  addChunk(table: number, rows: readonly WireRow[]): void {
    this.flushChunk()
    const t = this.#tables[table]
    if (t === undefined || rows.length === 0) return
    const chunk = this.#openChunk(table, t)
    for (const row of rows) chunk.pending.push(row)
    chunk.rows = rows.length
    this.flushChunk()
  }

  /**
   * Appends a row to the open chunk of table number `table` (opening one; a chunk of
   * another table is written first) and returns the rows the chunk holds. The row is
   * encoded at once when that gives the bytes {@link addChunk} would, else kept until
   * {@link flushChunk}; either way the payload is the same as with `addChunk`.
   */
  addRow(table: number, row: WireRow): number {
    const chunk = this.#chunkFor(table)
    if (chunk.pending.length === 0 && this.#cellSitesKnown(row)) {
      const t = chunk.t
      for (let p = 0; p < t.pkCount; p++) writeValue(chunk.keys[p] as ByteWriter, row.pk[p] as SqlValue)
      chunk.lastHlc = this.#rowStamps(chunk.stamps, t, row, chunk.lastHlc)
      for (let c = 0; c < chunk.cells.length; c++) this.#cell(chunk.cells[c] as ByteWriter, row, c)
    } else {
      chunk.pending.push(row)
    }
    return ++chunk.rows
  }

  /**
   * {@link addRow} for a live row every data column of which holds a version stamped like
   * the row: key values at `raw[0 .. key columns)`, data values from `raw[valuesAt]` on.
   */
  addUniformRow(
    table: number,
    raw: readonly unknown[],
    valuesAt: number,
    cl: number,
    hlc: number,
    site: string,
  ): number {
    const chunk = this.#chunkFor(table)
    const t = chunk.t
    const n = chunk.cells.length
    if (chunk.pending.length !== 0) {
      const clStamp: Stamp = { cl, hlc, site }
      const cell: CellStamp = { cl, hlc, site, prev: null }
      chunk.pending.push({
        pk: raw.slice(0, t.pkCount) as SqlValue[],
        cl,
        clStamp,
        stamps: new Array(n).fill(cell),
        values: raw.slice(valuesAt, valuesAt + n) as SqlValue[],
      })
      return ++chunk.rows
    }
    for (let p = 0; p < t.pkCount; p++) writeValue(chunk.keys[p] as ByteWriter, raw[p] as SqlValue)
    const rw = chunk.stamps
    rw.uvarint(cl)
    rw.svarint(hlc - chunk.lastHlc)
    chunk.lastHlc = hlc
    rw.uvarint(this.#site(site))
    if (cl % 2 === 0 || t.rows === 'delete-wins') rw.byte(0)
    for (let c = 0; c < n; c++) {
      const w = chunk.cells[c] as ByteWriter
      w.byte(F_PRESENT | F_ROW_STAMP)
      writeValue(w, raw[valuesAt + c] as SqlValue)
    }
    return ++chunk.rows
  }

  /** Compresses and writes the chunk {@link addRow} opened, if any. */
  flushChunk(): void {
    const chunk = this.#chunk
    if (chunk === null) return
    this.#chunk = null
    if (chunk.rows === 0) return
    const { t, pending } = chunk
    if (pending.length) {
      // Rows kept back go as addChunk lays them out: their stamps (registering sites in
      // row order) before any of their cells (in column order).
      for (let p = 0; p < t.pkCount; p++) {
        const w = chunk.keys[p] as ByteWriter
        for (const row of pending) writeValue(w, row.pk[p] as SqlValue)
      }
      for (const row of pending) chunk.lastHlc = this.#rowStamps(chunk.stamps, t, row, chunk.lastHlc)
      for (let c = 0; c < chunk.cells.length; c++) {
        const w = chunk.cells[c] as ByteWriter
        for (const row of pending) this.#cell(w, row, c)
      }
    }
    const sections = [...chunk.keys, chunk.stamps, ...chunk.cells]
    let total = 0
    for (const s of sections) total += s.length + 5
    const body = this.#body
    body.reset()
    body.reserve(total)
    for (const s of sections) {
      body.uvarint(s.length)
      body.bytes(s.finish())
    }
    const raw = body.finish()
    const compressed = this.#compress(chunk.table, raw)
    const head = new ByteWriter(24)
    head.uvarint(chunk.table)
    head.uvarint(chunk.rows)
    head.uvarint(raw.length)
    head.uvarint(compressed.length)
    this.#out.bytes(head.finish())
    this.#out.bytes(compressed)
    this.#rowCounts[chunk.table] = (this.#rowCounts[chunk.table] as number) + chunk.rows
    this.#chunkCount++
  }

  /** The open chunk of table number `table`, opened (after writing any other) when needed. */
  #chunkFor(table: number): OpenChunk {
    const chunk = this.#chunk
    if (chunk !== null && chunk.table === table) return chunk
    this.flushChunk()
    const t = this.#tables[table]
    if (t === undefined) throw new RangeError(`no table ${table} in this payload`)
    return this.#openChunk(table, t)
  }

  #openChunk(table: number, t: WireTable): OpenChunk {
    const writers = this.#writers
    const need = t.columns.length + 1
    while (writers.length < need) writers.push(new ByteWriter(16 * 1024))
    for (let i = 0; i < need; i++) (writers[i] as ByteWriter).reset()
    const chunk: OpenChunk = {
      table,
      t,
      rows: 0,
      keys: writers.slice(0, t.pkCount),
      stamps: writers[t.pkCount] as ByteWriter,
      cells: writers.slice(t.pkCount + 1, need),
      lastHlc: 0,
      pending: [],
    }
    this.#chunk = chunk
    return chunk
  }

  /**
   * True when every site the row's cells name has its payload index already or is the
   * row's own (indexed by its stamp before its cells): then encoding the row at once
   * numbers the sites as {@link addChunk} does, which indexes cell sites after every row
   * stamp of the chunk.
   */
  #cellSitesKnown(row: WireRow): boolean {
    const own = row.clStamp.site
    const known = (site: string) => site === own || this.#siteIndex.has(site)
    for (const s of row.stamps) {
      if (!s) continue
      if (!known(s.site) || (s.prev && !known(s.prev.site))) return false
      if (s.parts) for (const p of s.parts) if (!known(p.site)) return false
      if (s.blocks) {
        for (const b of s.blocks) {
          if (!known(b.site) || (b.prev && !known(b.prev.site))) return false
          // A filler level ('') is written as 0, without a site index.
          for (const level of b.pos) if (level[1] !== '' && !known(level[1])) return false
        }
      }
    }
    return true
  }

  /** Writes a row's stamps (causal length, HLC after `lastHlc`, site, flags and lists); returns its HLC. */
  #rowStamps(rw: ByteWriter, t: WireTable, row: WireRow, lastHlc: number): number {
    rw.uvarint(row.cl)
    rw.svarint(row.clStamp.hlc - lastHlc)
    rw.uvarint(this.#site(row.clStamp.site))
    // Per row a flag byte: 1 = what a tombstone's deleter had seen follows, 2 = the
    // deletions list follows (delete-wins tables: on tombstones and on live rows).
    const tracked = t.rows === 'delete-wins'
    if (row.cl % 2 === 0 || tracked) {
      const seen = row.cl % 2 === 0 ? row.seen : undefined
      const deletions = tracked ? row.deletions : undefined
      rw.byte((seen ? 1 : 0) | (deletions?.length ? 2 : 0))
      if (deletions?.length) {
        rw.uvarint(deletions.length)
        for (const d of deletions) this.#stamp(rw, d, row.clStamp.hlc)
      }
      if (seen) {
        for (const s of seen) {
          if (s === null) {
            rw.byte(0)
            continue
          }
          rw.byte(1)
          this.#stamp(rw, s, row.clStamp.hlc)
        }
      }
    }
    return row.clStamp.hlc
  }

  /** Writes the cell of data column `c` of a row. */
  #cell(w: ByteWriter, row: WireRow, c: number): void {
    const s = row.stamps[c]
    if (!s) {
      w.byte(0)
      return
    }
    if (s.blocks) {
      const sameAsRow = s.hlc === row.clStamp.hlc && s.site === row.clStamp.site
      w.byte(F_PRESENT | F_BLOCKS | (sameAsRow ? F_ROW_STAMP : 0))
      if (!sameAsRow) {
        w.svarint(s.hlc - row.clStamp.hlc)
        w.uvarint(this.#site(s.site))
      }
      writeTextBlocks(w, s.blocks, row.clStamp.hlc, this.#siteOf)
      return
    }
    if (s.parts) {
      w.byte(F_PRESENT | F_PARTS)
      w.uvarint(s.parts.length)
      for (const p of s.parts) {
        w.uvarint(this.#site(p.site))
        w.svarint(p.hlc - row.clStamp.hlc)
        writeValue(w, p.total)
      }
      return
    }
    const sameAsRow = s.hlc === row.clStamp.hlc && s.site === row.clStamp.site
    w.byte(F_PRESENT | (sameAsRow ? F_ROW_STAMP : 0) | (s.prev ? F_PREV : 0))
    if (!sameAsRow) {
      w.svarint(s.hlc - row.clStamp.hlc)
      w.uvarint(this.#site(s.site))
    }
    if (s.prev) this.#stamp(w, s.prev, row.clStamp.hlc)
    writeValue(w, row.values[c] as SqlValue)
  }

  /**
   * Compresses a chunk body. Which effort pays depends on the values: Huffman coding alone
   * is as small as matching on ids and prose and five times faster, while repetitive values
   * (JSON, repeated labels) shrink far more with matching. So the first chunk of a table,
   * and every {@link RESAMPLE_CHUNKS}th after, is compressed both ways, and the table's
   * chunks take matching while it saves at least {@link MATCHING_GAIN}.
   */
  #compress(table: number, raw: Uint8Array): Uint8Array {
    const state = this.#effort[table] as { effort: DeflateEffort; age: number }
    if (state.age++ < RESAMPLE_CHUNKS) return this.#codec.deflate(raw, state.effort)
    state.age = 1
    const fast = this.#codec.deflate(raw, 'fast')
    const small = this.#codec.deflate(raw, 'small')
    state.effort = small.length < fast.length * (1 - MATCHING_GAIN) ? 'small' : 'fast'
    return small.length < fast.length ? small : fast
  }

  /**
   * Writes header, chunks and checksum into one buffer. `complete` marks a payload that
   * holds every live row of every table it lists (a snapshot): rows it lacks whose life its
   * vector covers were deleted (see {@link PayloadHeader.complete}).
   */
  finish(vector: VersionVector, since: VersionVector, maxHlc: number, complete = false): Uint8Array {
    this.flushChunk()
    for (const site of Object.keys(vector)) this.#site(site)
    const h = new ByteWriter(256)
    h.bytes(PAYLOAD_MAGIC)
    h.byte(PAYLOAD_FORMAT)
    h.byte(complete ? FLAG_COMPLETE : 0)
    h.uvarint(this.#sites.length)
    for (const site of this.#sites) h.bytes(hexToBytes(site))
    writeVector(h, vector, (s) => this.#site(s))
    const sinceEntries = Object.entries(since)
    h.uvarint(sinceEntries.length)
    for (const [site, hlc] of sinceEntries) {
      h.bytes(hexToBytes(site))
      h.uvarint(hlc)
    }
    h.uvarint(maxHlc)
    h.uvarint(this.#tables.length)
    this.#tables.forEach((t, i) => {
      h.string(t.name)
      h.bytes(t.hash)
      h.uvarint(t.pkCount)
      h.uvarint(t.columns.length)
      t.columns.forEach((c, j) => {
        h.string(c)
        h.string(t.affinities[j] as string)
        h.string(t.algorithms[j] as string)
        if (t.algorithms[j] === 'text') h.string(t.delimiters[j] as string)
      })
      h.string(t.rows)
      h.uvarint(t.clFloor)
      h.uvarint(this.#rowCounts[i] as number)
    })
    h.uvarint(this.#chunkCount)
    const head = h.finish()
    // The chunks were written after a reserved gap; slide them to sit right after the
    // header (in place, so a large payload never exists twice in memory).
    this.#out.shift(HEADER_RESERVE, head.length)
    this.#out.patch(0, head)
    this.#out.bytes(this.#codec.sha256(this.#out.finish()))
    return this.#out.finish()
  }
}

function writeVector(w: ByteWriter, vector: VersionVector, index: (site: string) => number): void {
  const entries = Object.entries(vector)
  w.uvarint(entries.length)
  for (const [site, hlc] of entries) {
    w.uvarint(index(site))
    w.uvarint(hlc)
  }
}

/** A payload whose framing and checksum were verified; rows are decoded lazily by chunk. */
export class DecodedPayload {
  readonly header: PayloadHeader
  readonly #buf: Uint8Array
  readonly #sites: string[]
  readonly #chunksStart: number
  readonly #chunksEnd: number
  readonly #codec: PayloadCodec
  readonly #format: number

  private constructor(
    header: PayloadHeader,
    buf: Uint8Array,
    sites: string[],
    start: number,
    end: number,
    codec: PayloadCodec,
    format: number,
  ) {
    this.#codec = codec
    this.#format = format
    this.header = header
    this.#buf = buf
    this.#sites = sites
    this.#chunksStart = start
    this.#chunksEnd = end
  }

  /** Verifies magic, format and checksum, and decodes the header. */
  static open(buf: Uint8Array, maxBytes: number, codec: PayloadCodec = portableCodec): DecodedPayload {
    if (!(buf instanceof Uint8Array)) throw badPayload('payload must be a Uint8Array')
    if (buf.length > maxBytes) {
      throw new ConvergeError('BAD_PAYLOAD', `payload of ${buf.length} bytes exceeds the limit of ${maxBytes}`, {
        reason: 'too large',
        bytes: buf.length,
        limit: maxBytes,
      })
    }
    if (buf.length < PAYLOAD_MAGIC.length + 2 + CHECKSUM_BYTES) throw badPayload('too short')
    for (let i = 0; i < PAYLOAD_MAGIC.length; i++) {
      if (buf[i] !== PAYLOAD_MAGIC[i]) throw badPayload('not a sqlite-converge payload (bad magic)')
    }
    const format = buf[PAYLOAD_MAGIC.length]
    const flags = buf[PAYLOAD_MAGIC.length + 1] as number
    if (flags & ~FLAG_COMPLETE) throw badPayload('unknown header flags')
    if (format === undefined || format < OLDEST_FORMAT || format > PAYLOAD_FORMAT) {
      throw badPayload(`unsupported format version ${format}`)
    }
    const end = buf.length - CHECKSUM_BYTES
    const digest = codec.sha256(buf.subarray(0, end))
    for (let i = 0; i < CHECKSUM_BYTES; i++) {
      if (digest[i] !== buf[end + i]) throw badPayload('checksum mismatch')
    }
    const r = new ByteReader(buf, PAYLOAD_MAGIC.length + 2, end)
    const siteCount = r.count(SITE_BYTES)
    if (siteCount === 0) throw badPayload('no sender')
    const sites: string[] = []
    for (let i = 0; i < siteCount; i++) sites.push(bytesToHex(r.bytes(SITE_BYTES)))
    const vector: VersionVector = {}
    const vectorCount = r.count(2)
    for (let i = 0; i < vectorCount; i++) {
      const site = sites[r.uvarint()]
      if (site === undefined) throw badPayload('vector names an unknown site')
      vector[site] = r.uvarint()
    }
    const since: VersionVector = {}
    const sinceCount = r.count(SITE_BYTES + 1)
    for (let i = 0; i < sinceCount; i++) {
      const site = bytesToHex(r.bytes(SITE_BYTES))
      since[site] = r.uvarint()
    }
    const maxHlc = r.uvarint()
    for (const hlc of Object.values(vector)) if (hlc > maxHlc) throw badPayload('vector beyond declared clock')
    const tableCount = r.count(20)
    const tables: WireTable[] = []
    const rowCounts: number[] = []
    for (let i = 0; i < tableCount; i++) {
      const name = r.string()
      const hash = r.bytes(16).slice()
      const pkCount = r.uvarint()
      const colCount = r.count(2)
      if (pkCount < 1 || pkCount > colCount) throw badPayload(`table ${name}: bad key column count`)
      const columns: string[] = []
      const affinities: string[] = []
      const algorithms: ColumnAlgorithm[] = []
      const delimiters: string[] = []
      for (let j = 0; j < colCount; j++) {
        columns.push(r.string())
        affinities.push(r.string())
        const algorithm = format === 1 ? 'lww' : (r.string() as ColumnAlgorithm)
        if (!COLUMN_ALGORITHMS.includes(algorithm) || (j < pkCount && algorithm !== 'lww')) {
          throw badPayload(`table ${name}: unknown column algorithm`)
        }
        algorithms.push(algorithm)
        const delimiter = algorithm === 'text' ? r.string() : ''
        if (algorithm === 'text' && delimiter === '') throw badPayload(`table ${name}: empty text delimiter`)
        delimiters.push(delimiter)
      }
      const rows = format === 1 ? 'causal' : (r.string() as RowMode)
      if (!ROW_MODES.includes(rows)) throw badPayload(`table ${name}: unknown row mode`)
      const clFloor = format === 1 ? 0 : r.uvarint()
      if (clFloor % 2 === 1) throw badPayload(`table ${name}: odd causal-length floor`)
      if (new Set(columns).size !== columns.length) throw badPayload(`table ${name}: duplicate column`)
      tables.push({ name, hash, pkCount, columns, affinities, algorithms, delimiters, rows, clFloor })
      rowCounts.push(r.uvarint())
    }
    if (new Set(tables.map((t) => t.name)).size !== tables.length) throw badPayload('duplicate table')
    const chunkCount = r.count(4)
    const header: PayloadHeader = {
      sender: sites[0] as string,
      vector,
      since,
      maxHlc,
      tables,
      rowCounts,
      chunkCount,
      complete: (flags & FLAG_COMPLETE) !== 0,
    }
    return new DecodedPayload(header, buf, sites, r.position, end, codec, format)
  }

  /** Decodes chunks one at a time, validating every field; throws `BAD_PAYLOAD` on any defect. */
  *chunks(): Generator<{ table: number; rows: WireRow[] }> {
    const r = new ByteReader(this.#buf, this.#chunksStart, this.#chunksEnd)
    const seen = this.header.rowCounts.map(() => 0)
    for (let i = 0; i < this.header.chunkCount; i++) {
      const table = r.uvarint()
      const t = this.header.tables[table]
      if (t === undefined) throw badPayload('chunk names an unknown table')
      const rowCount = r.uvarint()
      const rawLen = r.uvarint()
      const compLen = r.uvarint()
      if (rowCount === 0 || rawLen > MAX_CHUNK_RAW_BYTES || rowCount > rawLen) throw badPayload('bad chunk size')
      const compressed = r.bytes(compLen)
      let raw: Uint8Array
      try {
        raw = this.#codec.inflate(compressed, rawLen)
      } catch {
        throw badPayload('corrupt compressed chunk')
      }
      if (raw.length !== rawLen) throw badPayload('chunk length mismatch')
      yield { table, rows: this.#decodeChunk(t, rowCount, raw) }
      seen[table] = (seen[table] as number) + rowCount
    }
    if (r.remaining !== 0) throw badPayload('trailing bytes')
    seen.forEach((n, i) => {
      if (n !== this.header.rowCounts[i]) throw badPayload('row count mismatch')
    })
  }

  #siteAt(i: number): string {
    const s = this.#sites[i]
    if (s === undefined) throw badPayload('unknown site index')
    return s
  }

  #hlc(h: number): number {
    if (h < 0 || h > this.header.maxHlc) throw badPayload('clock value outside declared range')
    return h
  }

  #decodeChunk(t: WireTable, n: number, raw: Uint8Array): WireRow[] {
    const body = new ByteReader(raw)
    const section = (): ByteReader => {
      const len = body.uvarint()
      const start = body.position
      body.bytes(len)
      return new ByteReader(raw, start, start + len)
    }
    const pkCount = t.pkCount
    const dataCount = t.columns.length - pkCount
    const pks: SqlValue[][] = new Array(n)
    for (let i = 0; i < n; i++) pks[i] = new Array(pkCount)
    for (let p = 0; p < pkCount; p++) {
      const s = section()
      for (let i = 0; i < n; i++) {
        const v = readValue(s)
        if (v === null) throw badPayload('NULL in primary key')
        ;(pks[i] as SqlValue[])[p] = v
      }
      if (s.remaining) throw badPayload('section overrun')
    }
    const rs = section()
    const rows: {
      pk: SqlValue[]
      cl: number
      clStamp: Stamp
      stamps: (CellStamp | null)[]
      values: SqlValue[]
      seen?: (Stamp | null)[]
      deletions?: Stamp[]
    }[] = []
    let lastHlc = 0
    for (let i = 0; i < n; i++) {
      const cl = rs.uvarint()
      if (cl < 1) throw badPayload('causal length must be positive')
      lastHlc += rs.svarint()
      rows.push({
        pk: pks[i] as SqlValue[],
        cl,
        clStamp: { cl, hlc: this.#hlc(lastHlc), site: this.#siteAt(rs.uvarint()) },
        stamps: new Array(dataCount),
        values: new Array(dataCount),
      })
      const tracked = t.rows === 'delete-wins'
      if (cl % 2 === 0 || tracked) {
        const flag = rs.byte()
        if (flag > 3 || (flag & 1 && cl % 2 === 1) || (flag & 2 && !tracked)) throw badPayload('bad row flags')
        const row = rows[rows.length - 1] as { seen?: (Stamp | null)[]; deletions?: Stamp[] }
        if (flag & 2) {
          // Deletions of the life that ended here (tombstone) or just before (live row).
          const life = cl % 2 === 0 ? cl : cl - 1
          const deletions: Stamp[] = []
          for (let k = rs.count(3); k > 0; k--) {
            if (rs.uvarint() !== life) throw badPayload('bad deletion life')
            deletions.push({ cl: life, hlc: this.#hlc(lastHlc + rs.svarint()), site: this.#siteAt(rs.uvarint()) })
          }
          deletions.sort(compareStamps)
          const repeats = deletions.some((d, k) => k > 0 && compareStamps(d, deletions[k - 1] as Stamp) === 0)
          if (deletions.length === 0 || life < 2 || repeats) throw badPayload('bad deletions')
          row.deletions = deletions
        }
        if (flag & 1) {
          // Per non-key column what the deleter had seen; format 1 has one stamp for all.
          const readStamp = (): Stamp => {
            const scl = rs.uvarint()
            if (scl < 1 || scl >= cl || scl % 2 === 0) throw badPayload('bad tombstone life')
            return { cl: scl, hlc: this.#hlc(lastHlc + rs.svarint()), site: this.#siteAt(rs.uvarint()) }
          }
          if (this.#format === 1) row.seen = new Array<Stamp>(dataCount).fill(readStamp())
          else {
            row.seen = []
            for (let c = 0; c < dataCount; c++) {
              const has = rs.byte()
              if (has > 1) throw badPayload('bad tombstone flag')
              row.seen.push(has ? readStamp() : null)
            }
          }
        }
      }
    }
    if (rs.remaining) throw badPayload('section overrun')
    // Cells stamped like their row share one object per row (stamps are never mutated).
    const rowCells: (CellStamp | undefined)[] = new Array(n)
    for (let c = 0; c < dataCount; c++) {
      const s = section()
      const algorithm = t.algorithms[pkCount + c]
      const counter = algorithm === 'counter'
      const text = algorithm === 'text'
      for (let i = 0; i < n; i++) {
        const row = rows[i] as (typeof rows)[number]
        const flags = s.byte()
        if (flags === 0) {
          row.stamps[c] = null
          row.values[c] = null
          continue
        }
        const valid = counter
          ? flags === (F_PRESENT | F_PARTS)
          : text
            ? (flags & ~F_ROW_STAMP) === (F_PRESENT | F_BLOCKS)
            : (flags & ~(F_PRESENT | F_ROW_STAMP | F_PREV)) === 0 && (flags & F_PRESENT) !== 0
        if (!valid) throw badPayload('bad cell flags')
        if (row.cl % 2 === 0) throw badPayload('cell on a deleted row')
        const cl = row.cl
        if (text) {
          let hlc = row.clStamp.hlc
          let site = row.clStamp.site
          if (!(flags & F_ROW_STAMP)) {
            hlc = this.#hlc(row.clStamp.hlc + s.svarint())
            site = this.#siteAt(s.uvarint())
          }
          const blocks: TextBlock[] = []
          for (let k = s.count(4); k > 0; k--) {
            const levels = s.count(2)
            if (levels === 0) throw badPayload('empty text position')
            const pos: PositionLevel[] = []
            for (let l = 0; l < levels; l++) {
              const digit = s.uvarint()
              const idx = s.uvarint()
              if (digit >= POSITION_BASE) throw badPayload('text position digit out of range')
              pos.push([digit, idx === 0 ? '' : this.#siteAt(idx - 1)])
            }
            const bhlc = this.#hlc(row.clStamp.hlc + s.svarint())
            const bsite = this.#siteAt(s.uvarint())
            const flags = s.byte()
            if (flags > 3) throw badPayload('bad text block flags')
            const prev =
              flags & 2 ? { hlc: this.#hlc(row.clStamp.hlc + s.svarint()), site: this.#siteAt(s.uvarint()) } : null
            blocks.push({ pos, text: flags & 1 ? s.string() : null, hlc: bhlc, site: bsite, prev })
          }
          if (!normalizeBlocks(blocks)) throw badPayload('text cell repeats a position')
          row.stamps[c] = textCell(cl, blocks, { hlc, site })
          row.values[c] = textValue(blocks, t.delimiters[t.pkCount + c] as string)
          continue
        }
        if (counter) {
          const parts: CounterPart[] = []
          const count = s.count(3)
          if (count === 0) throw badPayload('counter cell without parts')
          for (let k = 0; k < count; k++) {
            const site = this.#siteAt(s.uvarint())
            const hlc = this.#hlc(row.clStamp.hlc + s.svarint())
            const total = readValue(s)
            if (typeof total !== 'bigint' && typeof total !== 'number') throw badPayload('counter part is not a number')
            parts.push({ site, hlc, total })
          }
          if (!normalizeParts(parts)) throw badPayload('counter cell repeats a site')
          row.stamps[c] = counterCell(cl, parts)
          row.values[c] = sumParts(parts)
          continue
        }
        if (flags === (F_PRESENT | F_ROW_STAMP)) {
          let cell = rowCells[i]
          if (cell === undefined) {
            cell = { cl, hlc: row.clStamp.hlc, site: row.clStamp.site, prev: null }
            rowCells[i] = cell
          }
          row.stamps[c] = cell
          row.values[c] = readValue(s)
          continue
        }
        let hlc = row.clStamp.hlc
        let site = row.clStamp.site
        if (!(flags & F_ROW_STAMP)) {
          hlc = this.#hlc(row.clStamp.hlc + s.svarint())
          site = this.#siteAt(s.uvarint())
        }
        let prev: Stamp | null = null
        if (flags & F_PREV) {
          const pcl = s.uvarint()
          const phlc = this.#hlc(row.clStamp.hlc + s.svarint())
          prev = { cl: pcl, hlc: phlc, site: this.#siteAt(s.uvarint()) }
        }
        row.stamps[c] = { cl, hlc, site, prev }
        row.values[c] = readValue(s)
      }
      if (s.remaining) throw badPayload('section overrun')
    }
    if (body.remaining) throw badPayload('chunk overrun')
    return rows
  }
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))

export function bytesToHex(b: Uint8Array): string {
  let s = ''
  for (let i = 0; i < b.length; i++) s += HEX[b[i] as number]
  return s
}

/** Value of an ASCII hex digit by character code (-1: not one). */
const NIBBLE = Array.from({ length: 128 }, (_, c) => {
  const ch = String.fromCharCode(c)
  return /[0-9a-f]/i.test(ch) ? Number.parseInt(ch, 16) : -1
})

export function hexToBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length >> 1)
  for (let i = 0; i < out.length; i++) {
    const hi = NIBBLE[hex.charCodeAt(2 * i)] ?? -1
    const lo = NIBBLE[hex.charCodeAt(2 * i + 1)] ?? -1
    if (hi < 0 || lo < 0) throw new RangeError(`not a hex string: ${hex}`)
    out[i] = (hi << 4) | lo
  }
  return out
}
