/**
 * The fold: turns change-log rows written by the triggers into merge state. Each log row
 * gets the next HLC (never behind its wall-clock time, always after every HLC seen), and
 * the row's state moves as the local operation says. Runs inside the caller's transaction,
 * in batches, so a million pending writes fold in bounded memory.
 */
import { sumParts, withOwnPart } from '../core/algorithms.js'
import { nextHlc } from '../core/hlc.js'
import { counterCell, isAlive, localDelete, localInsert, localUpdate, type RowState, textCell } from '../core/merge.js'
import { editBlocks } from '../core/text.js'
import type { SqlValue } from '../core/values.js'
import { MASK_BITS, maskWords } from './metadata.js'
import type { SyncedTable } from './synced-table.js'
import { OP_CHECK, OP_DELETE, OP_INSERT, OP_UPDATE } from './triggers.js'

/** A key as a Map key: storage class and value, so 1 and '1' stay apart. */
export function keyString(pk: readonly SqlValue[]): string {
  if (pk.length === 1) return valueKey(pk[0] as SqlValue)
  return pk.map(valueKey).join('\u0000')
}

/**
 * A key as a Map key within this process: {@link keyString}, except that a single text key
 * is the string itself (no copy to build and hash). Other single keys are prefixed with a
 * zero character, and a text key stands for itself only when it does not start with one,
 * so the two never meet. Never stored: {@link keyString} is the stable form.
 */
export function mapKey(pk: readonly SqlValue[]): string {
  if (pk.length !== 1) return keyString(pk)
  const v = pk[0] as SqlValue
  return typeof v === 'string' && v.charCodeAt(0) !== 0 ? v : `\u0000${valueKey(v)}`
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

const TYPE_ORDER = { bigint: 1, number: 1, string: 2, object: 3 } as const

/** Orders keys roughly as SQLite does (numbers, text, blobs); used only for locality. */
function compareKeys(a: readonly SqlValue[], b: readonly SqlValue[]): number {
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as SqlValue
    const y = b[i] as SqlValue
    const tx = x === null ? 0 : TYPE_ORDER[typeof x as keyof typeof TYPE_ORDER]
    const ty = y === null ? 0 : TYPE_ORDER[typeof y as keyof typeof TYPE_ORDER]
    if (tx !== ty) return tx - ty
    if (x === y || x === null) continue
    if (x instanceof Uint8Array) {
      const yb = y as Uint8Array
      const n = Math.min(x.length, yb.length)
      for (let j = 0; j < n; j++) if (x[j] !== yb[j]) return (x[j] as number) - (yb[j] as number)
      if (x.length !== yb.length) return x.length - yb.length
      continue
    }
    return (x as number | string) < (y as number | string) ? -1 : 1
  }
  return 0
}

function changedColumns(masks: readonly unknown[], dataCount: number): number[] | null {
  if (masks.length === 1 && masks[0] === -1n) return null
  const out: number[] = []
  for (let w = 0; w < masks.length; w++) {
    const m = masks[w] as bigint
    if (m === 0n) continue
    // Two 31-bit halves as plain numbers: bit tests without BigInt arithmetic per bit.
    const halves = m === -1n ? [0x7fffffff, 0x7fffffff] : [Number(m & 0x7fffffffn), Number((m >> 31n) & 0x7fffffffn)]
    halves.forEach((half, h) => {
      for (let bits = half; bits !== 0; bits &= bits - 1) {
        const c = w * MASK_BITS + h * 31 + (31 - Math.clz32(bits & -bits))
        if (c < dataCount) out.push(c)
      }
    })
  }
  return out
}

/**
 * Folds every pending log row of `table`. Returns the last HLC handed out (or `clock`
 * unchanged when nothing was pending) and the number of log rows folded.
 */
export function foldTable(
  table: SyncedTable,
  site: string,
  clock: number,
): { clock: number; folded: number; deleted: number } {
  const words = maskWords(table.dataCount)
  const n = table.dataCount
  const track = table.schema.rows === 'delete-wins'
  let after = 0n
  let folded = 0
  let deleted = 0
  const bulk = table.foldFreshInserts(clock)
  if (bulk !== null) {
    clock = Math.max(clock, bulk.clock)
    folded = bulk.folded
  }
  for (;;) {
    const batch = table.logBatch(after)
    if (batch.length === 0) break
    // Load and save states in key order: the metadata table is a B-tree on the key, and
    // visiting it in order is twice as fast as in log (random) order.
    const pending = new Map<string, { pk: SqlValue[]; state: RowState | null }>()
    for (const entry of batch) {
      const pk = entry.slice(3 + words) as SqlValue[]
      const key = mapKey(pk)
      if (!pending.has(key)) pending.set(key, { pk, state: null })
    }
    const items = [...pending.values()].sort((a, b) => compareKeys(a.pk, b.pk))
    for (const item of items) item.state = table.loadState(item.pk)
    const known = items.map((item) => item.state !== null)
    const before = items.map((item) => item.state)
    for (const entry of batch) {
      const op = Number(entry[1])
      clock = nextHlc(clock, Number(entry[2]))
      const pk = entry.slice(3 + words) as SqlValue[]
      const item = pending.get(mapKey(pk)) as { pk: SqlValue[]; state: RowState | null }
      if (op === OP_INSERT) item.state = localInsert(insertBase(table, item.state, n), clock, site, n, track)
      else if (op === OP_DELETE) {
        item.state = localDelete(item.state, clock, site, n, track)
        deleted++
      } else if (op === OP_UPDATE) {
        item.state = localUpdate(item.state, changedColumns(entry.slice(3, 3 + words), n), clock, site, n)
      } else if (op === OP_CHECK && item.state !== null && isAlive(item.state.cl) && !table.rowExists(pk)) {
        item.state = localDelete(item.state, clock, site, n, track)
      }
      after = entry[0] as bigint
    }
    // Folded log rows go before the states are written, which then reuse their pages.
    table.clearLog(after)
    items.forEach((item, i) => {
      if (item.state === null) return
      if (table.counters.length || table.texts.length) {
        item.state = foldMergeable(table, item.pk, before[i] ?? null, item.state, site)
      }
      table.saveState(item.pk, item.state, known[i])
    })
    folded += batch.length
  }
  return { clock, folded, deleted }
}

/**
 * Counter and text columns written by local operations. Cells the operations rewrote are
 * plain stamps (no parts or blocks); what the other sites contributed comes from the state
 * before this batch when the row is still in the same life. A counter's local part becomes
 * whatever makes the parts sum to the value the app left in the row; a text cell's blocks
 * follow the new text (a line diff against the old live blocks).
 */
function foldMergeable(
  table: SyncedTable,
  pk: readonly SqlValue[],
  before: RowState | null,
  state: RowState,
  site: string,
): RowState {
  if (!isAlive(state.cl)) return state
  let values: SqlValue[] | undefined
  const cells = state.cells.slice()
  for (const c of table.counters) {
    const cell = cells[c]
    if (!cell || cell.parts) continue
    values ??= table.readValues(pk)
    const v = values?.[c]
    const current = typeof v === 'bigint' || typeof v === 'number' ? v : 0n
    const base = before !== null && before.cl === state.cl ? (before.cells[c]?.parts ?? []) : []
    const parts = withOwnPart(base, site, cell.hlc, current)
    cells[c] = counterCell(state.cl, parts)
    // REAL parts may not add up to exactly the value written (0.1 - 3 + 3 is not 0.1), and
    // every replica must show the sum of the parts: the row takes the sum, as the merge's
    // own write, which is not captured again.
    const sum = sumParts(parts)
    if (sum !== current) table.writeQuietly(pk, c, sum)
  }
  for (const c of table.texts) {
    const cell = cells[c]
    if (!cell || cell.blocks) continue
    values ??= table.readValues(pk)
    const v = values?.[c]
    const text = typeof v === 'string' ? v : null
    const base = before !== null && before.cl === state.cl ? (before.cells[c]?.blocks ?? []) : []
    const delimiter = table.schema.data[c]?.delimiter as string
    cells[c] = textCell(state.cl, editBlocks(base, text, delimiter, cell.hlc, site), cell)
  }
  return { ...state, cells }
}

/**
 * The state a local insert starts from: the key's own, unless the key is deleted (or has no
 * state) below the causal-length floor; then a deleted life at the floor, so the new life
 * starts above any tombstone of the key that some replica may still hold.
 */
function insertBase(table: SyncedTable, state: RowState | null, n: number): RowState | null {
  if (state !== null && (isAlive(state.cl) || state.cl >= table.clFloor)) return state
  return compactedBase(table, n) ?? state
}

/**
 * A deleted life at the causal-length floor (null without a floor): the base of a key with
 * no usable state.
 */
function compactedBase(table: SyncedTable, n: number): RowState | null {
  const cl = table.clFloor
  if (cl === 0) return null
  return { cl, clStamp: { cl, hlc: 0, site: '' }, cells: new Array(n).fill(null) }
}
