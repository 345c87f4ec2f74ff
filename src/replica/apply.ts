/**
 * Import: joins a decoded payload into the local tables. The caller holds the write
 * transaction; this only merges. Versions the local vector already covers are skipped,
 * so a payload imported twice changes nothing the second time.
 */
import { ConvergeError } from '../core/errors.js'
import { type CellStamp, compareStamps, isAlive, mergeRow, type RowState, type Stamp } from '../core/merge.js'
import type { SqlValue } from '../core/values.js'
import { covers, type VersionVector } from '../core/version-vector.js'
import type { DecodedPayload, WireTable } from '../wire/payload.js'
import { keyString } from './fold.js'
import { type ColumnInfo, describeColumnDifference, schemaHash } from './schema.js'
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
  conflicts: ConflictRecord[]
  /** Highest HLC applied per origin site. */
  held: Map<string, number>
}

/**
 * Checks that every table the payload carries rows for is synced here with the same
 * schema; returns, per payload table, the local table and the local index of each of its
 * data columns.
 */
export function matchTables(
  payload: DecodedPayload,
  tables: ReadonlyMap<string, SyncedTable>,
): (readonly [SyncedTable, number[]] | null)[] {
  return payload.header.tables.map((wt, i) => {
    if ((payload.header.rowCounts[i] ?? 0) === 0) return null
    const local = tables.get(wt.name)
    if (!local) {
      throw new ConvergeError('SCHEMA_MISMATCH', `payload has changes for table ${wt.name}, which is not synced here`, {
        table: wt.name,
      })
    }
    const described = schemaHash(wt.name, remoteColumns(wt).slice(0, wt.pkCount), remoteColumns(wt).slice(wt.pkCount))
    if (!sameBytes(described, wt.hash)) {
      throw new ConvergeError(
        'BAD_PAYLOAD',
        `malformed payload: columns of table ${wt.name} do not match its schema hash`,
        {
          reason: 'schema hash',
          table: wt.name,
        },
      )
    }
    if (!sameBytes(local.schema.hash, wt.hash)) {
      const remote = remoteColumns(wt)
      const localCols = [...local.schema.pk, ...local.schema.data]
      const pkSame = wt.pkCount === local.schema.pk.length && local.schema.pk.every((c, j) => c.name === wt.columns[j])
      const diff = pkSame ? describeColumnDifference(localCols, remote) : 'primary key columns or their order differ'
      throw new ConvergeError('SCHEMA_MISMATCH', `table ${wt.name} differs: ${diff}`, {
        table: wt.name,
        local: localCols.map((c) => `${c.name} ${c.affinity}`),
        remote: remote.map((c) => `${c.name} ${c.affinity}`),
      })
    }
    const index = new Map(local.schema.data.map((c, j) => [c.name, j]))
    const mapping = wt.columns.slice(wt.pkCount).map((name) => index.get(name) as number)
    return [local, mapping] as const
  })
}

function remoteColumns(wt: WireTable): ColumnInfo[] {
  return wt.columns.map((name, j) => ({
    name,
    type: wt.affinities[j] as string,
    affinity: wt.affinities[j] as ColumnInfo['affinity'],
    notNull: false,
  }))
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

/** Merges every row of the payload into the local tables. */
export function applyPayload(
  payload: DecodedPayload,
  matched: readonly (readonly [SyncedTable, number[]] | null)[],
  known: VersionVector,
  onProgress?: (rows: number) => void,
): ApplyResult {
  let applied = 0
  let skipped = 0
  let seenRows = 0
  const conflicts: ConflictRecord[] = []
  const held = new Map<string, number>()
  const hold = (site: string, hlc: number) => {
    if (hlc > (held.get(site) ?? 0)) held.set(site, hlc)
  }
  for (const { table, rows } of payload.chunks()) {
    const match = matched[table]
    if (!match) continue
    const [t, mapping] = match
    const n = t.dataCount
    const existing = t.existingKeys(rows.map((r) => r.pk))
    const queued = new Set<string>()
    for (const row of rows) {
      const cells: (CellStamp | null)[] = new Array(n).fill(null)
      const values: SqlValue[] = new Array(n).fill(null)
      let fresh = !covers(known, row.clStamp.site, row.clStamp.hlc)
      let present = 0
      for (let j = 0; j < row.stamps.length; j++) {
        const stamp = row.stamps[j] as CellStamp | null
        if (stamp === null || covers(known, stamp.site, stamp.hlc)) continue
        const c = mapping[j] as number
        cells[c] = stamp
        values[c] = row.values[j] as SqlValue
        fresh = true
        present++
      }
      if (!fresh) continue
      // A life this replica lacks must arrive whole, or the row would mix lives. It always
      // does when the payload answered our own vector; one exported for another peer may
      // omit cells that peer had, and such rows wait for an exchange that brings them.
      const complete = !isAlive(row.cl) || present === n
      const key = keyString(row.pk)
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
      for (const c of cells) if (c) hold(c.site, c.hlc)
      const incoming: RowState = row.seen
        ? { cl: row.cl, clStamp: row.clStamp, cells, seen: row.seen }
        : { cl: row.cl, clStamp: row.clStamp, cells }
      if (unseen) {
        // A key never seen here: the join with nothing is the incoming row itself.
        queued.add(key)
        applied += 1 + present
        t.queueFresh(row.pk, incoming, isAlive(row.cl) ? values : null)
        continue
      }
      const m = mergeRow(local, incoming)
      const before = m.conflicts.length && m.wasAlive ? t.readValues(row.pk) : undefined
      if (m.wasAlive && !m.alive) {
        t.deleteRow(row.pk)
      } else if (!m.wasAlive && m.alive) {
        const present: number[] = []
        m.state.cells.forEach((c, i) => {
          if (c !== null) present.push(i)
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
      for (const k of m.conflicts) {
        const localValue = (before?.[k.column] ?? null) as SqlValue
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
        m.state.seen !== local.seen
      if (stateChanged) t.saveState(row.pk, m.state, local !== null)
      applied += (m.lifeChanged ? 1 : 0) + m.won.length
    }
    t.flushFresh()
    seenRows += rows.length
    onProgress?.(seenRows)
  }
  return { applied, skipped, conflicts, held }
}
