/**
 * Sync metadata kept inside the user's database, in tables prefixed `_converge_`:
 * replica state, known sites and the version vector, synced tables, the conflict log, and
 * per synced table a change log (written by triggers) and a row table (one row per
 * primary key: causal length plus a packed stamp per cell).
 */
import type { CounterPart } from '../core/algorithms.js'
import type { CellStamp, RowState, Stamp } from '../core/merge.js'
import { counterCell, defaultCell, isAlive, textCell } from '../core/merge.js'
import type { PositionLevel, TextBlock } from '../core/text.js'
import type { SqliteDatabase, SqliteStatement } from '../driver/types.js'
import { ByteReader, ByteWriter } from '../wire/bytes.js'
import { readValue, writeTextBlocks, writeValue } from '../wire/values.js'
import { quoteId } from './sql.js'
import { cached } from './statements.js'

/** Prefix of every table, index and trigger this library creates. */
export const PREFIX = '_converge_'

export const METADATA_DDL = `
CREATE TABLE IF NOT EXISTS ${PREFIX}state (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ${PREFIX}sites (
  idx INTEGER PRIMARY KEY,
  site TEXT NOT NULL UNIQUE,
  seen INTEGER NOT NULL DEFAULT 0,
  held INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ${PREFIX}tables (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  hash BLOB NOT NULL,
  options TEXT,
  columns TEXT,
  triggers TEXT,
  clfloor INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ${PREFIX}compacted (
  tbl INTEGER NOT NULL,
  cl INTEGER NOT NULL,
  keys BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ${PREFIX}conflicts (
  id INTEGER PRIMARY KEY,
  tbl TEXT NOT NULL,
  pk BLOB NOT NULL,
  col TEXT NOT NULL,
  kind TEXT NOT NULL DEFAULT 'update',
  kept,
  lost,
  kept_site TEXT NOT NULL,
  kept_hlc INTEGER NOT NULL,
  lost_site TEXT NOT NULL,
  lost_hlc INTEGER NOT NULL,
  at INTEGER NOT NULL,
  resolved TEXT,
  UNIQUE (tbl, pk, col, lost_site, lost_hlc)
);
`

/** Names of the two per-table metadata tables. */
export function logTable(id: number): string {
  return quoteId(`${PREFIX}log_${id}`)
}
export function rowsTable(id: number): string {
  return quoteId(`${PREFIX}rows_${id}`)
}

/** Key columns of the metadata tables: k0, k1, ... (no declared type, so values keep their storage class). */
export function keyColumns(pkCount: number): string[] {
  return Array.from({ length: pkCount }, (_, i) => `k${i}`)
}

/** Mask words for the columns changed by an UPDATE, 62 columns per word. */
export const MASK_BITS = 62
export function maskWords(dataCount: number): number {
  return Math.max(1, Math.ceil(dataCount / MASK_BITS))
}

export function perTableDdl(id: number, pkCount: number, dataCount: number): string {
  const keys = keyColumns(pkCount)
  const masks = Array.from({ length: maskWords(dataCount) }, (_, i) => `m${i} INTEGER NOT NULL`)
  return `
CREATE TABLE IF NOT EXISTS ${logTable(id)} (seq INTEGER PRIMARY KEY, op INTEGER NOT NULL, ts INTEGER NOT NULL, ${masks.join(', ')}, ${keys.join(', ')});
CREATE TABLE IF NOT EXISTS ${rowsTable(id)} (${keys.join(', ')}, cl INTEGER NOT NULL, clh INTEGER NOT NULL, cls INTEGER NOT NULL, md INTEGER NOT NULL, v BLOB, PRIMARY KEY (${keys.join(', ')})) WITHOUT ROWID;
`
}

/** Site ids and their small local numbers (0 is this replica); backs the version vector. */
export class SiteTable {
  readonly #db: SqliteDatabase
  readonly #byIdx: string[] = []
  readonly #byHex = new Map<string, number>()
  readonly #insert: SqliteStatement

  constructor(db: SqliteDatabase) {
    this.#db = db
    this.#insert = db.prepare(`INSERT INTO ${PREFIX}sites (idx, site) VALUES (?, ?)`)
    this.reload()
  }

  /** Re-reads the table if another connection added sites (cheap when none did). */
  refresh(): void {
    const n = (cached(this.#db, `SELECT count(*) AS n FROM ${PREFIX}sites`).get() as { n: number }).n
    if (n !== this.#byIdx.length) this.reload()
  }

  /** Re-reads the table (after a rollback, numbers handed out may be gone). */
  reload(): void {
    this.#byIdx.length = 0
    this.#byHex.clear()
    for (const row of cached(this.#db, `SELECT idx, site FROM ${PREFIX}sites`).all() as {
      idx: number
      site: string
    }[]) {
      this.#byIdx[row.idx] = row.site
      this.#byHex.set(row.site, row.idx)
    }
  }

  hex(idx: number): string {
    const s = this.#byIdx[idx]
    if (s === undefined) throw new Error(`unknown site index ${idx}`)
    return s
  }

  /** The local number of a site, registering it on first sight. */
  idx(hex: string): number {
    let i = this.#byHex.get(hex)
    if (i === undefined) {
      i = this.#byIdx.length
      this.#insert.run(i, hex)
      this.#byIdx[i] = hex
      this.#byHex.set(hex, i)
    }
    return i
  }

  get size(): number {
    return this.#byIdx.length
  }
}

const F_PRESENT = 1
const F_ROW_STAMP = 2
const F_PREV = 4
const F_PARTS = 8
const F_BLOCKS = 16
/** Tombstone blob flags: deletions list, per-column seen stamps. */
const T_DELETIONS = 1
const T_SEEN = 2
/** First byte of a live row's blob that starts with the deletions its life followed (delete-wins tables). */
const F_DELETIONS = 0x80

/** A row of the metadata table, as stored. */
export type StoredRow = [
  cl: number | bigint,
  clh: number | bigint,
  cls: number | bigint,
  md: number | bigint,
  v: Uint8Array | null,
]

/** Decodes a stored metadata row into a {@link RowState}. */
export function decodeRow(stored: StoredRow, dataCount: number, sites: SiteTable): RowState {
  const cl = Number(stored[0])
  const clh = Number(stored[1])
  const clSite = sites.hex(Number(stored[2]))
  const clStamp: Stamp = { cl, hlc: clh, site: clSite }
  const v = stored[4]
  const cells: (CellStamp | null)[] = new Array(dataCount)
  if (!isAlive(cl)) {
    // A tombstone's blob, when present: a zero byte, a flags byte, then its deletions
    // (delete-wins tables) and per column the version its deleter had seen. Files from
    // before hold one stamp (cl, hlc delta, site), the newest the deleter had, for all.
    cells.fill(null)
    if (v === null) return { cl, clStamp, cells }
    const r = new ByteReader(v)
    if (v[0] !== 0) {
      const one = readStamp(r, clh, sites)
      return { cl, clStamp, cells, seen: new Array<Stamp>(dataCount).fill(one) }
    }
    r.byte()
    const flags = r.byte()
    const deletions = flags & T_DELETIONS ? readStamps(r, clh, sites, false) : undefined
    let seen: (Stamp | null)[] | undefined
    if (flags & T_SEEN) {
      seen = []
      for (let c = 0; c < dataCount; c++) {
        seen.push(r.remaining && r.byte() ? readStamp(r, clh, sites) : null)
      }
    }
    return { cl, clStamp, cells, ...(seen && { seen }), ...(deletions && { deletions }) }
  }
  if (v === null) {
    const cell: CellStamp | null = isAlive(cl) ? { cl, hlc: clh, site: clSite, prev: null } : null
    cells.fill(cell)
    return { cl, clStamp, cells }
  }
  const r = new ByteReader(v)
  const deletions = v[0] === F_DELETIONS ? readStamps(r, clh, sites, true) : undefined
  for (let c = 0; c < dataCount; c++) {
    // Cells past the blob's end belong to columns added after it was written: they hold
    // their default since the life began (see migrate.ts).
    if (!r.remaining) {
      cells[c] = defaultCell(cl, clSite)
      continue
    }
    const flags = r.byte()
    if (!(flags & F_PRESENT)) {
      cells[c] = null
      continue
    }
    if (flags & F_BLOCKS) {
      let hlc = clh
      let site = clSite
      if (!(flags & F_ROW_STAMP)) {
        hlc = clh + r.svarint()
        site = sites.hex(r.uvarint())
      }
      const blocks: TextBlock[] = []
      for (let k = r.uvarint(); k > 0; k--) {
        const pos: PositionLevel[] = []
        for (let l = r.uvarint(); l > 0; l--) {
          const digit = r.uvarint()
          const idx = r.uvarint()
          pos.push([digit, idx === 0 ? '' : sites.hex(idx - 1)])
        }
        const bhlc = clh + r.svarint()
        const bsite = sites.hex(r.uvarint())
        const flags = r.byte()
        const prev = flags & 2 ? { hlc: clh + r.svarint(), site: sites.hex(r.uvarint()) } : null
        blocks.push({ pos, hlc: bhlc, site: bsite, text: flags & 1 ? r.string() : null, prev })
      }
      cells[c] = textCell(cl, blocks, { hlc, site })
      continue
    }
    if (flags & F_PARTS) {
      const parts: CounterPart[] = []
      for (let k = r.uvarint(); k > 0; k--) {
        const site = sites.hex(r.uvarint())
        const hlc = clh + r.svarint()
        parts.push({ site, hlc, total: readValue(r) as bigint | number })
      }
      cells[c] = counterCell(cl, parts)
      continue
    }
    let hlc = clh
    let site = clSite
    if (!(flags & F_ROW_STAMP)) {
      hlc = clh + r.svarint()
      site = sites.hex(r.uvarint())
    }
    let prev: Stamp | null = null
    if (flags & F_PREV) {
      prev = readStamp(r, clh, sites)
    }
    cells[c] = { cl, hlc, site, prev }
  }
  return deletions ? { cl, clStamp, cells, deletions } : { cl, clStamp, cells }
}

/** Reads a stamp: causal length, HLC relative to `clh`, site index. */
function readStamp(r: ByteReader, clh: number, sites: SiteTable): Stamp {
  return { cl: r.uvarint(), hlc: clh + r.svarint(), site: sites.hex(r.uvarint()) }
}

function writeStamp(w: ByteWriter, s: Stamp, clh: number, sites: SiteTable): void {
  w.uvarint(s.cl)
  w.svarint(s.hlc - clh)
  w.uvarint(sites.idx(s.site))
}

/** Reads a stamp list (after a marker byte, skipped when `marked`). */
function readStamps(r: ByteReader, clh: number, sites: SiteTable, marked: boolean): Stamp[] {
  if (marked) r.byte()
  const out: Stamp[] = []
  for (let k = r.uvarint(); k > 0; k--) out.push(readStamp(r, clh, sites))
  return out
}

function writeStamps(w: ByteWriter, stamps: readonly Stamp[], clh: number, sites: SiteTable): void {
  w.uvarint(stamps.length)
  for (const s of stamps) writeStamp(w, s, clh, sites)
}

/** Reused by {@link encodeRow}, which copies out what it wrote: one buffer, not one per row. */
const scratch = new ByteWriter(256)

/** Encodes a {@link RowState} as [cl, clh, cls, md, v]; v is NULL in the common uniform case. */
export function encodeRow(state: RowState, sites: SiteTable): [number, number, number, number, Uint8Array | null] {
  const { cl, clStamp } = state
  let max = clStamp.hlc
  let uniform = isAlive(cl)
  for (const cell of state.cells) {
    if (cell === null) {
      uniform = false
      continue
    }
    if (cell.hlc > max) max = cell.hlc
    if (cell.hlc !== clStamp.hlc || cell.site !== clStamp.site || cell.prev !== null || cell.parts || cell.blocks) {
      uniform = false
    }
  }
  const hlc = clStamp.hlc
  const site = sites.idx(clStamp.site)
  const md = max - hlc
  if (!isAlive(cl)) {
    if (!state.seen && !state.deletions) return [cl, hlc, site, md, null]
    scratch.reset()
    scratch.byte(0)
    scratch.byte((state.deletions ? T_DELETIONS : 0) | (state.seen ? T_SEEN : 0))
    if (state.deletions) writeStamps(scratch, state.deletions, clStamp.hlc, sites)
    if (state.seen) {
      for (const s of state.seen) {
        if (s === null) {
          scratch.byte(0)
          continue
        }
        scratch.byte(1)
        writeStamp(scratch, s, clStamp.hlc, sites)
      }
    }
    return [cl, hlc, site, md, scratch.finish().slice()]
  }
  if (uniform && !state.deletions) return [cl, hlc, site, md, null]
  const w = scratch
  w.reset()
  if (state.deletions) {
    w.byte(F_DELETIONS)
    writeStamps(w, state.deletions, clStamp.hlc, sites)
  }
  for (const cell of state.cells) {
    if (cell === null) {
      w.byte(0)
      continue
    }
    if (cell.blocks) {
      const same = cell.hlc === clStamp.hlc && cell.site === clStamp.site
      w.byte(F_PRESENT | F_BLOCKS | (same ? F_ROW_STAMP : 0))
      if (!same) {
        w.svarint(cell.hlc - clStamp.hlc)
        w.uvarint(sites.idx(cell.site))
      }
      writeTextBlocks(w, cell.blocks, clStamp.hlc, (site) => sites.idx(site))
      continue
    }
    if (cell.parts) {
      w.byte(F_PRESENT | F_PARTS)
      w.uvarint(cell.parts.length)
      for (const p of cell.parts) {
        w.uvarint(sites.idx(p.site))
        w.svarint(p.hlc - clStamp.hlc)
        writeValue(w, p.total)
      }
      continue
    }
    const sameAsRow = cell.hlc === clStamp.hlc && cell.site === clStamp.site
    w.byte(F_PRESENT | (sameAsRow ? F_ROW_STAMP : 0) | (cell.prev ? F_PREV : 0))
    if (!sameAsRow) {
      w.svarint(cell.hlc - clStamp.hlc)
      w.uvarint(sites.idx(cell.site))
    }
    if (cell.prev) writeStamp(w, cell.prev, clStamp.hlc, sites)
  }
  return [cl, hlc, site, md, w.finish().slice()]
}
