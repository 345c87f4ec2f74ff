/**
 * The fold: turns change-log rows written by the triggers into merge state. Each log row
 * gets the next HLC (never behind its wall-clock time, always after every HLC seen), and
 * the row's state moves as the local operation says. Runs inside the caller's transaction,
 * in batches, so a million pending writes fold in bounded memory.
 */
import { nextHlc } from '../core/hlc.js'
import { isAlive, localDelete, localInsert, localUpdate, type RowState } from '../core/merge.js'
import type { SqlValue } from '../core/values.js'
import { MASK_BITS, maskWords } from './metadata.js'
import type { SyncedTable } from './synced-table.js'
import { OP_CHECK, OP_DELETE, OP_INSERT, OP_UPDATE } from './triggers.js'

/** A key as a Map key: storage class and value, so 1 and '1' stay apart. */
export function keyString(pk: readonly SqlValue[]): string {
  if (pk.length === 1) return valueKey(pk[0] as SqlValue)
  return pk.map(valueKey).join('\u0000')
}

function valueKey(v: SqlValue): string {
  switch (typeof v) {
    case 'bigint':
      return `i${v}`
    case 'number':
      return `r${v}`
    case 'string':
      return `t${v}`
    default:
      return v === null ? 'n' : `b${Array.from(v).join(',')}`
  }
}

function changedColumns(masks: readonly unknown[], dataCount: number): number[] | null {
  const out: number[] = []
  for (let w = 0; w < masks.length; w++) {
    const m = BigInt(masks[w] as bigint)
    if (m === -1n) {
      if (masks.length === 1) return null
      for (let b = 0; b < MASK_BITS && w * MASK_BITS + b < dataCount; b++) out.push(w * MASK_BITS + b)
      continue
    }
    for (let b = 0; b < MASK_BITS; b++) if ((m >> BigInt(b)) & 1n) out.push(w * MASK_BITS + b)
  }
  return out.filter((c) => c < dataCount)
}

/**
 * Folds every pending log row of `table`. Returns the last HLC handed out (or `clock`
 * unchanged when nothing was pending) and the number of log rows folded.
 */
export function foldTable(table: SyncedTable, site: string, clock: number): { clock: number; folded: number } {
  const words = maskWords(table.dataCount)
  const n = table.dataCount
  const bulk = table.foldFreshInserts(clock)
  if (bulk !== null) return { clock: Math.max(clock, bulk.clock), folded: bulk.folded }
  let after = 0n
  let folded = 0
  for (;;) {
    const batch = table.logBatch(after)
    if (batch.length === 0) break
    const pending = new Map<string, { pk: SqlValue[]; state: RowState | null }>()
    for (const entry of batch) {
      const op = Number(entry[1])
      clock = nextHlc(clock, Number(entry[2]))
      const pk = entry.slice(3 + words) as SqlValue[]
      const key = keyString(pk)
      let item = pending.get(key)
      if (item === undefined) {
        item = { pk, state: table.loadState(pk) }
        pending.set(key, item)
      }
      if (op === OP_INSERT) item.state = localInsert(item.state, clock, site, n)
      else if (op === OP_DELETE) item.state = localDelete(item.state, clock, site, n)
      else if (op === OP_UPDATE) {
        item.state = localUpdate(item.state, changedColumns(entry.slice(3, 3 + words), n), clock, site, n)
      } else if (op === OP_CHECK && item.state !== null && isAlive(item.state.cl) && !table.rowExists(pk)) {
        item.state = localDelete(item.state, clock, site, n)
      }
      after = entry[0] as bigint
    }
    for (const { pk, state } of pending.values()) if (state !== null) table.saveState(pk, state)
    folded += batch.length
  }
  if (folded > 0) table.clearLog(after)
  return { clock, folded }
}
