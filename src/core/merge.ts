/**
 * The merge rule, whole. Rows carry a causal length (odd: alive, even: deleted); cells
 * carry a stamp (causal length of the row life they belong to, HLC, origin site). A row
 * of a later life replaces an earlier one with all its cells; within a life each cell
 * takes the later write, ties broken by site id.
 */
import { type CounterPart, joinParts, newestPart, withPart } from './algorithms.js'
import { type BlockConflict, between, joinBlocks, type TextBlock } from './text.js'
import { covers, type VersionVector } from './version-vector.js'

/** Who wrote a cell version, and when. */
export interface Stamp {
  /** Causal length of the row life the write belongs to (a cell's is always its row's). */
  readonly cl: number
  /** Hybrid logical clock of the write. */
  readonly hlc: number
  /** Origin site id, 32 lowercase hex chars. */
  readonly site: string
}

/** A cell's winning version plus the foreign version its writer overwrote. */
export interface CellStamp extends Stamp {
  /** The version from another site this write replaced, or null for a first write. */
  readonly prev: Stamp | null
  /**
   * Counter cells only: one part per site (sorted by site); the stamp is the newest part's
   * and `prev` is null. See algorithms.ts.
   */
  readonly parts?: readonly CounterPart[]
  /**
   * Text cells only: every block the cell ever held in this row life (sorted by position);
   * the stamp is the latest write's and `prev` is null. See text.ts.
   */
  readonly blocks?: readonly TextBlock[]
}

/** A text cell of row life `cl` holding `blocks`, stamped by its latest write. */
export function textCell(cl: number, blocks: readonly TextBlock[], stamp: { hlc: number; site: string }): CellStamp {
  return { cl, hlc: stamp.hlc, site: stamp.site, prev: null, blocks }
}

/** A counter cell of row life `cl` holding `parts` (non-empty, sorted by site). */
export function counterCell(cl: number, parts: readonly CounterPart[]): CellStamp {
  const top = newestPart(parts)
  return { cl, hlc: top.hlc, site: top.site, prev: null, parts }
}

/**
 * The counter cell of a revived life (see SyncedTable.carryOver): the parts of the life
 * that ended, with the reviver's own part (zero when it had none) rewritten at the revival's
 * `stamp`. The carried parts are old versions that a peer may have seen in the ended life
 * and dropped with it; were the cell made of them only, it would count as covered for such
 * a peer, and never reach it once the peer's own concurrent start of the same life holds
 * the row's life stamp. The new part makes the cell new to everyone (a cell goes whole).
 * Concurrent revivers each rewrite only their own part, with the same total: still a join.
 */
export function revivedCounterCell(
  cl: number,
  parts: readonly CounterPart[],
  stamp: { hlc: number; site: string },
): CellStamp {
  const total = parts.find((p) => p.site === stamp.site)?.total ?? 0n
  return counterCell(cl, withPart(parts, { site: stamp.site, hlc: stamp.hlc, total }))
}

/**
 * The text cell of a revived life (see SyncedTable.carryOver and {@link revivedCounterCell}):
 * the blocks of the life that ended, as they were (concurrent revivers must not insert them
 * twice), plus one deleted block of the reviver's at the end, written at the revival's
 * `stamp`, so the cell is new to every peer.
 */
export function revivedTextCell(
  cl: number,
  blocks: readonly TextBlock[],
  stamp: { hlc: number; site: string },
): CellStamp {
  const last = blocks.length ? (blocks[blocks.length - 1] as TextBlock).pos : null
  const marker: TextBlock = { pos: between(last, null, stamp.site), text: null, hlc: stamp.hlc, site: stamp.site }
  return textCell(cl, [...blocks, marker], stamp)
}

/** Orders stamps: negative when `a` loses to `b`, zero when equal, positive when `a` wins. */
export function compareStamps(a: Stamp, b: Stamp): number {
  if (a.cl !== b.cl) return a.cl - b.cl
  if (a.hlc !== b.hlc) return a.hlc - b.hlc
  return a.site < b.site ? -1 : a.site > b.site ? 1 : 0
}

/**
 * HLC of a cell that holds its column's DEFAULT since its row life began: a column added
 * after the life was created, on the replica that created it. It sorts before every real
 * write of the life, and every replica that has the column agrees on it.
 */
export const DEFAULT_HLC = 0

/** The cell of a column that holds its default since life `cl` began. */
export function defaultCell(cl: number, site: string): CellStamp {
  return { cl, hlc: DEFAULT_HLC, site, prev: null }
}

/**
 * True when `vector` covers every version a cell carries (for a counter: every part). A
 * default cell is never covered: it travels with its row, so a replica that lacks the row
 * gets it whole.
 */
export function cellCovered(vector: VersionVector, cell: CellStamp): boolean {
  if (cell.hlc === DEFAULT_HLC) return false
  if (cell.parts) return cell.parts.every((p) => covers(vector, p.site, p.hlc))
  if (cell.blocks && !cell.blocks.every((b) => covers(vector, b.site, b.hlc))) return false
  return covers(vector, cell.site, cell.hlc)
}

/** True when a row of this causal length exists. */
export function isAlive(cl: number): boolean {
  return cl % 2 === 1
}

/** Causal length after a local insert (a dead or unknown row comes alive). */
export function clAfterInsert(cl: number): number {
  return isAlive(cl) ? cl : cl + 1
}

/** Causal length after a local delete. */
export function clAfterDelete(cl: number): number {
  return isAlive(cl) ? cl + 1 : cl
}

/**
 * The `prev` a new local write records: a site's consecutive writes keep pointing at the
 * foreign version they started from, so editing a cell twice before syncing is still
 * one sequential overwrite of that version.
 */
export function prevForLocalWrite(current: CellStamp | null, localSite: string): Stamp | null {
  if (current === null) return null
  if (current.site === localSite) return current.prev
  return { cl: current.cl, hlc: current.hlc, site: current.site }
}

/**
 * A merge discarded a concurrent write when the winner's writer had not seen the loser:
 * same row life, different sites, and the version the winner overwrote is older than the
 * loser. A site's own successive writes are never concurrent with each other.
 */
export function isConflict(winner: CellStamp, loser: Stamp): boolean {
  if (winner.cl !== loser.cl || winner.site === loser.site || loser.hlc === DEFAULT_HLC) return false
  return winner.prev === null || compareStamps(winner.prev, loser) < 0
}

/** A row's merge state: causal length, the stamp that set it, one stamp per data column. */
export interface RowState {
  readonly cl: number
  readonly clStamp: Stamp
  /** Parallel to the table's data columns (canonical order); null where no version is held. */
  readonly cells: readonly (CellStamp | null)[]
  /**
   * Deleted rows only: per data column, the version the deleter's row held when it deleted
   * it (null: none). A cell version newer than that, from another site, was not seen by the
   * deleter: the delete overrode a concurrent write, which the conflict log keeps (and which
   * an 'add-wins' table revives).
   */
  readonly seen?: readonly (Stamp | null)[]
  /**
   * 'delete-wins' tables only. On a deleted row: every deletion of the life that ended
   * (usually one). On a live row: the deletions of the previous life its inserter knew.
   * A deletion the inserter did not know was concurrent with the re-insertion and wins
   * (see {@link deleteWins}). Sorted, without repeats; merged by union.
   */
  readonly deletions?: readonly Stamp[]
}

/**
 * 'delete-wins' rows: true when `tombstone` ended the life just before `alive` through a
 * deletion the re-insertion had not seen, so the deletion must win.
 */
export function deleteWins(alive: RowState, tombstone: RowState): boolean {
  if (!isAlive(alive.cl) || isAlive(tombstone.cl) || alive.cl !== tombstone.cl + 1) return false
  const known = alive.deletions ?? []
  return (tombstone.deletions ?? [tombstone.clStamp]).some((d) => !known.some((k) => compareStamps(k, d) === 0))
}

/** Union of two sorted stamp lists; returns `a` itself when `b` adds nothing. */
export function unionStamps(
  a: readonly Stamp[] | undefined,
  b: readonly Stamp[] | undefined,
): readonly Stamp[] | undefined {
  if (!b?.length) return a
  if (!a?.length) return b
  const out = [...a]
  let added = false
  for (const s of b) {
    if (!out.some((x) => compareStamps(x, s) === 0)) {
      out.push(s)
      added = true
    }
  }
  return added ? out.sort(compareStamps) : a
}

function freshCells(cl: number, hlc: number, site: string, n: number): CellStamp[] {
  const cell: CellStamp = { cl, hlc, site, prev: null }
  return new Array<CellStamp>(n).fill(cell)
}

/**
 * A local INSERT (or REPLACE): a dead or unknown row starts a new life with every cell
 * written. With `track` (delete-wins tables), a life following a deletion records the
 * deletions it knew.
 */
export function localInsert(
  state: RowState | null,
  hlc: number,
  site: string,
  dataCount: number,
  track = false,
): RowState {
  if (state === null || !isAlive(state.cl)) {
    const cl = clAfterInsert(state?.cl ?? 0)
    const row: RowState = { cl, clStamp: { cl, hlc, site }, cells: freshCells(cl, hlc, site, dataCount) }
    return track && state !== null ? { ...row, deletions: state.deletions ?? [state.clStamp] } : row
  }
  // REPLACE on a live row fires only the INSERT trigger: an update of every column.
  return localUpdate(state, null, hlc, site, dataCount)
}

/** A local UPDATE of the given data columns (null: all of them). */
export function localUpdate(
  state: RowState | null,
  columns: readonly number[] | null,
  hlc: number,
  site: string,
  dataCount: number,
): RowState {
  if (state === null || !isAlive(state.cl)) return localInsert(state, hlc, site, dataCount)
  const cells = state.cells.slice()
  const write = (c: number) => {
    cells[c] = { cl: state.cl, hlc, site, prev: prevForLocalWrite(cells[c] ?? null, site) }
  }
  if (columns === null) for (let c = 0; c < dataCount; c++) write(c)
  else for (const c of columns) write(c)
  return state.deletions
    ? { cl: state.cl, clStamp: state.clStamp, cells, deletions: state.deletions }
    : { cl: state.cl, clStamp: state.clStamp, cells }
}

/**
 * A local DELETE: the row's life ends and its cells are dropped (a tombstone remains).
 * With `track` (delete-wins tables) the tombstone lists its deletion.
 */
export function localDelete(
  state: RowState | null,
  hlc: number,
  site: string,
  dataCount: number,
  track = false,
): RowState {
  if (state !== null && !isAlive(state.cl)) return state
  const cl = state === null ? 2 : clAfterDelete(state.cl)
  const seen =
    state === null ? null : state.cells.map((c) => (c === null ? null : { cl: c.cl, hlc: c.hlc, site: c.site }))
  const clStamp = { cl, hlc, site }
  const tombstone: RowState = {
    cl,
    clStamp,
    cells: new Array<CellStamp | null>(dataCount).fill(null),
    ...(track && { deletions: [clStamp] }),
  }
  return seen === null ? tombstone : { ...tombstone, seen }
}

/** True when the version of data column `c` was written without its row's deleter having seen it. */
function unseenByDeleter(cell: Stamp, c: number, tombstone: RowState): boolean {
  if (cell.site === tombstone.clStamp.site || cell.hlc === DEFAULT_HLC) return false
  const seen = tombstone.seen?.[c] ?? null
  return seen === null || compareStamps(cell, seen) > 0
}

/** Per column, the later of two deleters' views (equal causal length tombstones). */
function joinSeen(
  a: readonly (Stamp | null)[] | undefined,
  b: readonly (Stamp | null)[] | undefined,
): readonly (Stamp | null)[] | undefined {
  if (a === undefined) return b
  if (b === undefined) return a
  let changed = false
  const out = a.map((x, i) => {
    const y = b[i] ?? null
    if (y !== null && (x === null || compareStamps(y, x) > 0)) {
      changed = true
      return y
    }
    return x
  })
  return changed ? out : a
}

/** A concurrent write discarded by a merge. */
export interface MergeConflict {
  /** Data column index. */
  readonly column: number
  /** True when the incoming version won and the local one was discarded. */
  readonly incomingWon: boolean
  /** True when the winner is the row's deletion (its stamp is the tombstone's). */
  readonly deleted: boolean
  readonly winner: Stamp
  readonly loser: Stamp
  /** Text cells: the two versions of the block that conflicted (kept and lost values are texts built from them). */
  readonly block?: BlockConflict
}

/** What merging one incoming row did. */
export interface RowMerge {
  readonly state: RowState
  readonly wasAlive: boolean
  readonly alive: boolean
  /** The incoming causal length replaced the local one. */
  readonly lifeChanged: boolean
  /** Data columns whose incoming version won. */
  readonly won: readonly number[]
  readonly conflicts: readonly MergeConflict[]
}

/**
 * Joins an incoming row into the local state. The state is ordered lexicographically: a
 * higher causal length wins outright (its cells replace the row's, a dead row holds none);
 * at equal causal length each cell takes the higher stamp. Every cell belongs to its row's
 * current life, so this is a join: commutative, associative and idempotent.
 * `incoming.cells` must already be aligned to the local data columns. `won` lists the cells
 * whose value must be written; a row starting a newer life should carry all its cells
 * (the import leaves out one that does not), or columns it lacks lose their version.
 */
export function mergeRow(local: RowState | null, incoming: RowState): RowMerge {
  const n = incoming.cells.length
  const localCl = local?.cl ?? 0
  const wasAlive = isAlive(localCl)
  const won: number[] = []
  const conflicts: MergeConflict[] = []
  if (local === null || incoming.cl > localCl) {
    const alive = isAlive(incoming.cl)
    const cells = alive ? incoming.cells.slice() : new Array<CellStamp | null>(n).fill(null)
    for (let c = 0; c < n; c++) if (cells[c]) won.push(c)
    if (!alive && local !== null && wasAlive) {
      local.cells.forEach((cell, c) => {
        if (cell && unseenByDeleter(cell, c, incoming)) {
          conflicts.push({ column: c, incomingWon: true, deleted: true, winner: incoming.clStamp, loser: cell })
        }
      })
    }
    const state: RowState = { cl: incoming.cl, clStamp: incoming.clStamp, cells }
    const extra = {
      ...(!alive && incoming.seen && { seen: incoming.seen }),
      ...(incoming.deletions && { deletions: incoming.deletions }),
    }
    return {
      state: { ...state, ...extra },
      wasAlive,
      alive,
      lifeChanged: true,
      won,
      conflicts,
    }
  }
  if (incoming.cl < localCl) {
    if (!wasAlive && isAlive(incoming.cl)) {
      incoming.cells.forEach((cell, c) => {
        if (cell && unseenByDeleter(cell, c, local)) {
          conflicts.push({ column: c, incomingWon: false, deleted: true, winner: local.clStamp, loser: cell })
        }
      })
    }
    return { state: local, wasAlive, alive: wasAlive, lifeChanged: false, won, conflicts }
  }
  const clStamp = compareStamps(incoming.clStamp, local.clStamp) > 0 ? incoming.clStamp : local.clStamp
  if (!wasAlive) {
    const seen = joinSeen(local.seen, incoming.seen)
    const deletions = unionStamps(local.deletions, incoming.deletions)
    const state: RowState = {
      cl: localCl,
      clStamp,
      cells: local.cells,
      ...(seen && { seen }),
      ...(deletions && { deletions }),
    }
    return {
      state,
      wasAlive,
      alive: false,
      lifeChanged: false,
      won,
      conflicts,
    }
  }
  const cells = local.cells.slice()
  for (let c = 0; c < n; c++) {
    const inc = incoming.cells[c]
    if (!inc) continue
    const cur = cells[c] ?? null
    if (inc.parts && cur?.parts) {
      // Counter cells: per-site parts join, concurrent changes add up, nothing conflicts.
      const parts = joinParts(cur.parts, inc.parts)
      if (parts !== cur.parts) {
        cells[c] = counterCell(localCl, parts)
        won.push(c)
      }
      continue
    }
    if (inc.blocks && cur?.blocks) {
      // Text cells: blocks join by position, each block last-writer-wins on its own.
      const found: BlockConflict[] = []
      const blocks = joinBlocks(cur.blocks, inc.blocks, found)
      const later = compareStamps(inc, cur) > 0
      for (const k of found) {
        const incomingWon = inc.blocks.includes(k.winner)
        const stamp = (b: TextBlock): Stamp => ({ cl: localCl, hlc: b.hlc, site: b.site })
        conflicts.push({
          column: c,
          incomingWon,
          deleted: false,
          winner: stamp(k.winner),
          loser: stamp(k.loser),
          block: k,
        })
      }
      if (blocks !== cur.blocks || later) {
        cells[c] = textCell(localCl, blocks, later ? inc : cur)
        won.push(c)
      }
      continue
    }
    const order = cur === null ? 1 : compareStamps(inc, cur)
    if (order > 0) {
      if (cur !== null && isConflict(inc, cur))
        conflicts.push({ column: c, incomingWon: true, deleted: false, winner: inc, loser: cur })
      cells[c] = inc
      won.push(c)
    } else if (order < 0 && cur !== null && isConflict(cur, inc)) {
      conflicts.push({ column: c, incomingWon: false, deleted: false, winner: cur, loser: inc })
    }
  }
  const deletions = unionStamps(local.deletions, incoming.deletions)
  const state: RowState = deletions ? { cl: localCl, clStamp, cells, deletions } : { cl: localCl, clStamp, cells }
  return { state, wasAlive, alive: true, lifeChanged: false, won, conflicts }
}
