/** Export: every row and cell version the receiver's vector does not cover, as a payload. */
import { type CellStamp, cellCovered } from '../core/merge.js'
import type { SqlValue } from '../core/values.js'
import { covers, type VersionVector } from '../core/version-vector.js'
import type { PayloadEncoder, WireRow, WireTable } from '../wire/payload.js'
import { decodeRow, type SiteTable, type StoredRow } from './metadata.js'
import type { SyncedTable } from './synced-table.js'

/** Rows per payload chunk: large enough to compress well, small enough to bound memory. */
export const CHUNK_ROWS = 4096

/** The payload description of a synced table. */
export function wireTable(t: SyncedTable): WireTable {
  const cols = [...t.schema.pk, ...t.schema.data]
  return {
    name: t.name,
    hash: t.schema.hash,
    pkCount: t.schema.pk.length,
    columns: cols.map((c) => c.name),
    affinities: cols.map((c) => c.affinity),
    algorithms: cols.map((c) => c.algorithm),
    delimiters: cols.map((c) => (c.algorithm === 'text' ? (c.delimiter as string) : '')),
    rows: t.schema.rows,
    clFloor: t.clFloor,
  }
}

/**
 * The lowest HLC a changed row can have: for each site whose versions the receiver may lack,
 * what the receiver has of it. Rows whose newest stamp is not above it are fully covered.
 */
export function scanFloor(held: ReadonlyMap<string, number>, since: VersionVector): number {
  let floor = Number.POSITIVE_INFINITY
  for (const [site, max] of held) {
    const seen = since[site] ?? 0
    if (max > seen && seen < floor) floor = seen
  }
  return floor
}

/**
 * Adds every uncovered version of `tables` to `encoder`, chunk by chunk. `tombstones`
 * says which tables' deleted rows go too (default all; a snapshot leaves them out).
 * `changedKeys`: per table, the only keys that can hold anything newer than `floor`, when
 * known (see SyncedTable.changedKeys); then those rows are read by key instead of scanning.
 */
export function encodeChanges(
  encoder: PayloadEncoder,
  tables: readonly SyncedTable[],
  sites: SiteTable,
  since: VersionVector,
  floor: number,
  onProgress?: (rows: number) => void,
  tombstones: (t: SyncedTable) => boolean = () => true,
  changedKeys: (t: SyncedTable) => SqlValue[][] | undefined = () => undefined,
): void {
  if (floor === Number.POSITIVE_INFINITY) return
  tables.forEach((t, ti) => {
    const k = t.schema.pk.length
    const n = t.dataCount
    const added = (rows: number) => {
      if (rows < CHUNK_ROWS) return
      encoder.flushChunk()
      onProgress?.(encoder.rows)
    }
    const visit = (raw: unknown[]): void => {
      const v = raw[k + 3] as Uint8Array | null
      if (v === null && (raw[k] as number) % 2 === 1) {
        // The common case, a live row whose cells all carry the row's stamp: covered
        // exactly when its life is, and sent without decoding anything.
        const site = sites.hex(raw[k + 2] as number)
        const hlc = raw[k + 1] as number
        if (covers(since, site, hlc)) return
        added(encoder.addUniformRow(ti, raw, k + 4, raw[k] as number, hlc, site))
        return
      }
      const state = decodeRow([raw[k], raw[k + 1], raw[k + 2], 0, v] as StoredRow, n, sites)
      const values = raw.slice(k + 4) as SqlValue[]
      // A life the receiver has not seen goes whole: it needs every cell, including versions
      // carried over from an earlier life (a revived row's counter parts and text blocks).
      const newLife = !covers(since, state.clStamp.site, state.clStamp.hlc)
      let any = newLife
      let stamps = state.cells
      for (let c = 0; c < n; c++) {
        const stamp = stamps[c] as CellStamp | null
        if (stamp === null) continue
        if (newLife || !cellCovered(since, stamp)) {
          any = true
        } else {
          if (stamps === state.cells) stamps = stamps.slice()
          ;(stamps as (CellStamp | null)[])[c] = null
        }
      }
      if (!any) return
      const pk = raw.slice(0, k) as SqlValue[]
      const row: WireRow = {
        pk,
        cl: state.cl,
        clStamp: state.clStamp,
        stamps,
        values,
        ...(state.seen && { seen: state.seen }),
        ...(state.deletions && { deletions: state.deletions }),
      }
      added(encoder.addRow(ti, row))
    }
    // Deletions first, so a receiver frees UNIQUE values before rows that reuse them arrive.
    const keys = changedKeys(t)
    for (const alive of tombstones(t) ? [false, true] : [true]) {
      const pages = keys ? t.changedRowsOf(keys, floor, alive) : t.changedPages(floor, alive, CHUNK_ROWS)
      for (const page of pages) for (const raw of page) visit(raw)
    }
    const before = encoder.rows
    encoder.flushChunk()
    if (encoder.rows !== before) onProgress?.(encoder.rows)
  })
}
