/**
 * Import: joins a decoded payload into the local tables. The caller holds the write
 * transaction; this only merges. Versions the local vector already covers are skipped,
 * so a payload imported twice changes nothing the second time.
 */

import { sumParts } from '../core/algorithms.js'
import { ConvergeError } from '../core/errors.js'
import { getOrCreate } from '../core/maps.js'
import {
  type CellStamp,
  cellCovered,
  compareStamps,
  DEFAULT_HLC,
  defaultCell,
  deleteWins,
  isAlive,
  mergeRow,
  type RowState,
  type Stamp,
} from '../core/merge.js'
import { textValue, textWith } from '../core/text.js'
import { type SqlValue, sameBytes, sameValue } from '../core/values.js'
import { covers, type VersionVector } from '../core/version-vector.js'
import type { DecodedPayload, WireTable } from '../wire/payload.js'
import { mapKey } from './fold.js'
import { type ColumnInfo, type HashedColumn, schemaHash, type TableSchema } from './schema.js'
import type { SyncedTable } from './synced-table.js'

/** A conflict about to be written to the log. */
export interface ConflictRecord {
  table: string
  pk: SqlValue[]
  column: string
  kept: SqlValue
  lost: SqlValue
  /** 'delete' when the kept side is the row's deletion (then `kept` is null). */
  kind: 'update' | 'delete'
  keptStamp: Stamp
  lostStamp: Stamp
}

export interface ApplyResult {
  applied: number
  /** Rows left out because they would start a row life without all its cells. */
  skipped: number
  /** Cell versions for columns this replica does not have; they are not claimed as seen. */
  unknown: number
  /** Live rows the merge deleted. */
  deleted: number
  conflicts: ConflictRecord[]
  /** Highest HLC applied per origin site. */
  held: Map<string, number>
  /** add-wins rows kept alive against a concurrent deletion, by table: to re-insert locally. */
  revived: Map<SyncedTable, { pk: SqlValue[]; was: RowState }[]>
  /** delete-wins rows re-inserted without seeing a concurrent deletion: to delete locally. */
  killed: Map<SyncedTable, SqlValue[][]>
  /** Rows of keys whose tombstone was compacted here, in a life at or below the floor: to re-insert above it. */
  bumped: Map<SyncedTable, { pk: SqlValue[]; was: RowState }[]>
}

/** How a payload table lines up with a local one. */
export interface TableMatch {
  readonly table: SyncedTable
  /** For each payload data column, the local data column index, or -1 when it has none here. */
  readonly mapping: readonly number[]
  /** Local data columns the payload table does not have (a replica on an older or newer schema). */
  readonly localOnly: readonly number[]
}

/**
 * Checks that every table the payload carries rows for and this replica syncs has a
 * compatible schema: the same primary key and row mode, and the same affinity and algorithm for every
 * column both sides have. Columns only one side has are allowed: a replica that added a
 * column syncs with one that has not added it yet (see docs/algorithms.md). Returns, per
 * payload table, how its columns map to the local table's.
 */
export function matchTables(
  payload: DecodedPayload,
  tables: ReadonlyMap<string, SyncedTable>,
): (TableMatch | 'not-synced' | null)[] {
  return payload.header.tables.map((wt, i) => {
    if ((payload.header.rowCounts[i] ?? 0) === 0) return null
    const local = tables.get(wt.name)
    // A table the sender syncs and this replica does not (yet): like a column it lacks.
    if (!local) return 'not-synced'
    const remote = remoteColumns(wt)
    if (!sameBytes(schemaHash(wt.name, remote.slice(0, wt.pkCount), remote.slice(wt.pkCount), wt.rows), wt.hash)) {
      throw new ConvergeError(
        'BAD_PAYLOAD',
        `malformed payload: columns of table ${wt.name} do not match its schema hash`,
        { reason: 'schema hash', table: wt.name },
      )
    }
    const difference = schemaDifference(local.schema, wt)
    if (difference !== null) {
      const localCols = [...local.schema.pk, ...local.schema.data]
      throw new ConvergeError('SCHEMA_MISMATCH', `table ${wt.name} differs: ${difference}`, {
        table: wt.name,
        local: localCols.map(describeColumn),
        remote: remote.map(describeColumn),
      })
    }
    const index = new Map(local.schema.data.map((c, j) => [c.name, j]))
    const mapping = wt.columns.slice(wt.pkCount).map((name) => index.get(name) ?? -1)
    const localOnly = local.schema.data.flatMap((_, j) => (mapping.includes(j) ? [] : [j]))
    return { table: local, mapping, localOnly }
  })
}

function describeColumn(c: HashedColumn): string {
  return c.algorithm && c.algorithm !== 'lww' ? `${c.name} ${c.affinity} ${c.algorithm}` : `${c.name} ${c.affinity}`
}

/**
 * Why a payload table cannot merge into a local one, or null when it can: the key (names,
 * order, affinities), the row mode, and the type and algorithm of every shared column
 * must agree. Columns present on one side only are not a difference.
 */
export function schemaDifference(local: TableSchema, wt: WireTable): string | null {
  const pkSame =
    wt.pkCount === local.pk.length &&
    local.pk.every((c, j) => c.name === wt.columns[j] && c.affinity === wt.affinities[j])
  if (!pkSame) {
    const remoteKey = wt.columns.slice(0, wt.pkCount).map((n, j) => `${n} ${wt.affinities[j]}`)
    return `primary key columns or their order differ (here: ${local.pk.map((c) => `${c.name} ${c.affinity}`).join(', ')}; there: ${remoteKey.join(', ')})`
  }
  if (local.rows !== wt.rows) return `rows are '${local.rows}' here and '${wt.rows}' there`
  const remote = new Map(
    remoteColumns(wt)
      .slice(wt.pkCount)
      .map((c) => [c.name, c]),
  )
  const differing: string[] = []
  for (const c of local.data) {
    const r = remote.get(c.name)
    if (!r) continue
    if (r.affinity !== c.affinity) differing.push(`${c.name} (${c.affinity} here, ${r.affinity} there)`)
    else if (r.algorithm !== c.algorithm) differing.push(`${c.name} ('${c.algorithm}' here, '${r.algorithm}' there)`)
    else if (r.delimiter !== c.delimiter) {
      differing.push(
        `${c.name} (text blocks split by ${JSON.stringify(c.delimiter)} here, ${JSON.stringify(r.delimiter)} there)`,
      )
    }
  }
  return differing.length ? `columns of another type: ${differing.join(', ')}` : null
}

function remoteColumns(wt: WireTable): ColumnInfo[] {
  return wt.columns.map((name, j) => ({
    name,
    type: wt.affinities[j] as string,
    affinity: wt.affinities[j] as ColumnInfo['affinity'],
    notNull: false,
    algorithm: wt.algorithms[j] ?? 'lww',
    ...(wt.algorithms[j] === 'text' && { delimiter: wt.delimiters[j] }),
  }))
}

/** A tombstone's per-column seen stamps, from payload columns to local ones (null: none). */
function localSeen(seen: readonly (Stamp | null)[], mapping: readonly number[], n: number): (Stamp | null)[] {
  const out = new Array<Stamp | null>(n).fill(null)
  let newest: Stamp | null = null
  seen.forEach((s, j) => {
    const c = mapping[j] ?? -1
    if (c >= 0) out[c] = s
    if (s !== null && (newest === null || compareStamps(s, newest) > 0)) newest = s
  })
  // A column the deleter does not have: it saw what it saw of the row up to its newest
  // version (the approximation tombstones made before they held one stamp per column).
  for (let c = 0; c < n; c++) if (!mapping.includes(c)) out[c] = newest
  return out
}

/** Merges every row of the payload into the local tables. */
export function applyPayload(
  payload: DecodedPayload,
  matched: readonly (TableMatch | 'not-synced' | null)[],
  known: VersionVector,
  compacted: VersionVector,
  onProgress?: (rows: number) => void,
): ApplyResult {
  let applied = 0
  let skipped = 0
  let unknown = 0
  let deleted = 0
  let seenRows = 0
  const conflicts: ConflictRecord[] = []
  const held = new Map<string, number>()
  const revivedByTable = new Map<SyncedTable, { pk: SqlValue[]; was: RowState }[]>()
  const killedByTable = new Map<SyncedTable, SqlValue[][]>()
  const bumpedByTable = new Map<SyncedTable, { pk: SqlValue[]; was: RowState }[]>()
  const hold = (site: string, hlc: number) => {
    if (hlc > (held.get(site) ?? 0)) held.set(site, hlc)
  }
  for (const { table, rows } of payload.chunks()) {
    const match = matched[table]
    if (!match) continue
    if (match === 'not-synced') {
      unknown += rows.length
      continue
    }
    const { table: t, mapping, localOnly } = match
    const n = t.dataCount
    const shared = n - localOnly.length
    const existing = t.existingKeys(rows.map((r) => r.pk))
    const revived = getOrCreate(revivedByTable, t, () => [])
    const bumped = getOrCreate(bumpedByTable, t, () => [])
    const killed = getOrCreate(killedByTable, t, () => [])
    const queued = new Set<string>()
    // Same columns in the same order on both sides (the usual case).
    const identity = localOnly.length === 0 && mapping.every((c, j) => c === j)
    for (const row of rows) {
      const newLife = !covers(known, row.clStamp.site, row.clStamp.hlc)
      // A new life keeps every cell: the decoded row's own arrays serve (it is used once).
      const whole = newLife && identity
      const cells = whole ? (row.stamps as (CellStamp | null)[]) : new Array<CellStamp | null>(n).fill(null)
      const values = whole ? (row.values as SqlValue[]) : new Array<SqlValue>(n).fill(null)
      let fresh = newLife
      let present = 0
      if (whole) {
        for (const c of cells) if (c !== null) present++
      } else {
        for (let j = 0; j < row.stamps.length; j++) {
          const stamp = row.stamps[j] as CellStamp | null
          // Cells of a life not seen here all count: some may be versions carried over from
          // an earlier life that the vector covers (see SyncedTable.carryOver).
          if (stamp === null || (!newLife && cellCovered(known, stamp))) continue
          const c = mapping[j] as number
          if (c < 0) {
            // A column this replica does not have (yet): not held, so not claimed as seen.
            unknown++
            continue
          }
          cells[c] = stamp
          values[c] = row.values[j] as SqlValue
          fresh = true
          present++
        }
      }
      if (!fresh) continue
      if (!isAlive(row.cl) && t.schema.rows === 'grow-only') {
        throw new ConvergeError('BAD_PAYLOAD', `malformed payload: a deletion in grow-only table ${t.name}`, {
          table: t.name,
        })
      }
      // A life this replica lacks must arrive whole, or the row would mix lives. It always
      // does when the payload answered our own vector; one exported for another peer may
      // omit cells that peer had, and such rows wait for an exchange that brings them.
      const complete = !isAlive(row.cl) || present === shared
      const key = mapKey(row.pk)
      const unseen = !existing.has(key) && !queued.has(key)
      let local: RowState | null = null
      if (!unseen) {
        t.flushFresh()
        local = t.loadState(row.pk)
      }
      if (!complete && (local === null || row.cl > local.cl)) {
        skipped++
        continue
      }
      hold(row.clStamp.site, row.clStamp.hlc)
      for (const c of cells) {
        if (c?.parts) for (const p of c.parts) hold(p.site, p.hlc)
        else if (c && (c.hlc !== row.clStamp.hlc || c.site !== row.clStamp.site)) hold(c.site, c.hlc)
        // A text cell's stamp is its latest write's: its blocks may come from other sites.
        if (c?.blocks) for (const b of c.blocks) hold(b.site, b.hlc)
      }
      // A life started by a replica without some of our columns: they hold their DEFAULT
      // since the life began (every replica with the column agrees), so the life is whole
      // when passed on. Counter and text columns have no such version and stay empty.
      if (localOnly.length && isAlive(row.cl) && (local === null || row.cl > local.cl)) {
        for (const c of localOnly) {
          if (t.schema.data[c]?.algorithm === 'lww') cells[c] = defaultCell(row.cl, row.clStamp.site)
        }
      }
      // A default cell stands for the column's DEFAULT, which is this replica's to say (the
      // sender's copy of the table may declare none, like a server's).
      for (let c = 0; c < n; c++) if (cells[c]?.hlc === DEFAULT_HLC) values[c] = t.defaultValue(c)
      const incoming: { -readonly [K in keyof RowState]: RowState[K] } = { cl: row.cl, clStamp: row.clStamp, cells }
      if (row.seen) incoming.seen = localSeen(row.seen, mapping, n)
      if (row.deletions) incoming.deletions = row.deletions
      // A key this replica does not hold, of a life it has seen: that life was deleted and
      // its tombstone compacted away (see compact.ts). It stays deleted.
      if (unseen && covers(compacted, row.clStamp.site, row.clStamp.hlc)) continue
      // A tombstone of an earlier life than one this replica compacted for the key: the
      // later deletion already covers it (keeping it would make a complete snapshot of
      // ours claim the key ended at the earlier life).
      if (unseen && !isAlive(row.cl) && t.mayBeCompacted(row.pk, row.cl)) continue
      if (unseen) {
        // A key never seen here: the join with nothing is the incoming row itself. A life
        // shorter than a tombstone of the key compacted here may be one that tombstone
        // ended, or one started concurrently with it; the replicas that still hold the
        // tombstone keep it deleted. This replica cannot tell, so it keeps the row and
        // re-inserts it above the floor, which every replica then takes (see compact.ts).
        if (isAlive(row.cl) && t.mayBeCompacted(row.pk, row.cl)) bumped.push({ pk: row.pk, was: incoming })
        queued.add(key)
        applied += 1 + present
        if (isAlive(row.cl) && localOnly.length) {
          // Columns the sender lacks take their defaults.
          const sent = mapping.filter((c) => c >= 0)
          t.insertRow(
            row.pk,
            sent,
            sent.map((c) => values[c] as SqlValue),
          )
          t.queueFresh(row.pk, incoming, null)
        } else {
          t.queueFresh(row.pk, incoming, isAlive(row.cl) ? values : null)
        }
        continue
      }
      // delete-wins: a deletion and a re-insertion of the next life that had not seen it
      // meet here; the deletion wins, as a local delete made after the merge.
      if (t.schema.rows === 'delete-wins' && local !== null) {
        if (deleteWins(local, incoming) || deleteWins(incoming, local)) killed.push(row.pk)
      }
      const m = mergeRow(local, incoming)
      for (const c of t.counters) {
        const parts = m.state.cells[c]?.parts
        if (parts) values[c] = sumParts(parts)
      }
      for (const c of t.texts) {
        const blocks = m.state.cells[c]?.blocks
        if (blocks) values[c] = textValue(blocks, t.schema.data[c]?.delimiter as string)
      }
      // add-wins: a row edited here without its deleter having seen the edit survives the
      // deletion; the caller re-inserts it as a local write (a new life that wins everywhere).
      const revive = t.schema.rows === 'add-wins' && m.wasAlive && !m.alive && m.conflicts.length > 0
      const before = m.conflicts.length && m.wasAlive ? t.readValues(row.pk) : undefined
      if (revive) {
        revived.push({ pk: row.pk, was: local as RowState })
      } else if (m.wasAlive && !m.alive) {
        t.deleteRow(row.pk)
        deleted++
      } else if (!m.wasAlive && m.alive) {
        const present: number[] = []
        m.state.cells.forEach((c, i) => {
          if (c !== null && !localOnly.includes(i)) present.push(i)
        })
        t.insertRow(
          row.pk,
          present,
          present.map((c) => values[c] as SqlValue),
        )
      } else if (m.alive && m.won.length) {
        t.updateRow(
          row.pk,
          m.won,
          m.won.map((c) => values[c] as SqlValue),
        )
      }
      // A new life from a sender without some of our columns: they restart at their defaults.
      if (m.wasAlive && m.alive && m.lifeChanged && localOnly.length) t.resetColumns(row.pk, localOnly)
      // In add-wins tables a concurrent edit beats a deletion: no value was lost.
      const rowConflicts = t.schema.rows === 'add-wins' ? m.conflicts.filter((k) => !k.deleted) : m.conflicts
      for (const k of rowConflicts) {
        const blocks = m.state.cells[k.column]?.blocks
        if (k.block && blocks) {
          // Two concurrent edits of one block of a text column: kept is the merged text,
          // lost the same text with the losing version of that block.
          const delimiter = t.schema.data[k.column]?.delimiter as string
          conflicts.push({
            table: t.name,
            pk: row.pk,
            column: t.schema.data[k.column]?.name as string,
            kind: 'update',
            kept: textValue(blocks, delimiter),
            lost: textWith(blocks, k.block.winner, k.block.loser, delimiter),
            keptStamp: k.winner,
            lostStamp: k.loser,
          })
          continue
        }
        const localValue = (before?.[k.column] ?? null) as SqlValue
        // Two concurrent writes of the same value lost nothing.
        if (!k.deleted && sameValue(localValue, values[k.column] as SqlValue)) continue
        // A write of the column's DEFAULT lost to a deletion lost nothing (an insert writes
        // every column, including those the app left to their default).
        const lostValue = k.incomingWon ? localValue : (values[k.column] as SqlValue)
        if (k.deleted && sameValue(lostValue, t.defaultValue(k.column))) continue
        conflicts.push({
          table: t.name,
          pk: row.pk,
          column: t.schema.data[k.column]?.name as string,
          kind: k.deleted ? 'delete' : 'update',
          kept: k.deleted ? null : k.incomingWon ? (values[k.column] as SqlValue) : localValue,
          lost: k.incomingWon ? localValue : (values[k.column] as SqlValue),
          keptStamp: k.winner,
          lostStamp: k.loser,
        })
      }
      const stateChanged =
        local === null ||
        m.lifeChanged ||
        m.won.length > 0 ||
        compareStamps(m.state.clStamp, local.clStamp) !== 0 ||
        m.state.seen !== local.seen ||
        m.state.deletions !== local.deletions
      if (stateChanged) t.saveState(row.pk, m.state, local !== null)
      applied += (m.lifeChanged ? 1 : 0) + m.won.length
    }
    t.flushFresh()
    seenRows += rows.length
    onProgress?.(seenRows)
  }
  return {
    applied,
    skipped,
    unknown,
    deleted,
    conflicts,
    held,
    revived: revivedByTable,
    killed: killedByTable,
    bumped: bumpedByTable,
  }
}
