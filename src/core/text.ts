/**
 * Block-level text: a text cell is a set of blocks (lines, or whatever the column's
 * delimiter separates), each with a position and its own last-writer-wins version. The
 * column's value is the live blocks in position order, joined by the delimiter.
 *
 * A position is a list of levels (digit, site), compared level by level, a shorter prefix
 * first (the Logoot scheme): between any two positions there is always room for another,
 * and the site in a new position's last level keeps positions made concurrently at the same
 * place apart, in site order. A run of lines inserted by one edit shares one new position
 * as a prefix, so two replicas inserting paragraphs at the same place keep each paragraph
 * whole. Blocks merge by union, per position the later version: a join.
 */
import { diffArrays } from 'diff'

/** One level of a position: a digit and the site that made it ('' in filler levels). */
export type PositionLevel = readonly [digit: number, site: string]
export type Position = readonly PositionLevel[]

/** Digits per level. */
export const POSITION_BASE = 1 << 16

/** A block version: who wrote it, when. */
export interface BlockVersion {
  readonly hlc: number
  readonly site: string
}

/** One block of a text cell; `text` null: the block was deleted (a tombstone). */
export interface TextBlock extends BlockVersion {
  readonly pos: Position
  readonly text: string | null
  /**
   * The version from another site this write replaced (null: a new block, or a first
   * write over the writer's own): a later version whose writer had not seen the one it
   * beat was concurrent with it, and the loser goes to the conflict log.
   */
  readonly prev?: BlockVersion | null
}

/** Two concurrent versions of one block: the join kept `winner` and dropped `loser`. */
export interface BlockConflict {
  readonly winner: TextBlock
  readonly loser: TextBlock
}

function compareVersions(a: BlockVersion, b: BlockVersion): number {
  return a.hlc !== b.hlc ? a.hlc - b.hlc : a.site < b.site ? -1 : a.site > b.site ? 1 : 0
}

/** True when `winner`'s writer had not seen `loser` (and their texts differ). */
function concurrent(winner: TextBlock, loser: TextBlock): boolean {
  if (winner.site === loser.site || winner.text === loser.text) return false
  return !winner.prev || compareVersions(winner.prev, loser) < 0
}

/** The default block delimiter of a text column: lines. */
export const DEFAULT_DELIMITER = '\n'

export function comparePositions(a: Position, b: Position): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a[i] as PositionLevel
    const y = b[i] as PositionLevel
    if (x[0] !== y[0]) return x[0] - y[0]
    if (x[1] !== y[1]) return x[1] < y[1] ? -1 : 1
  }
  return a.length - b.length
}

/** A position strictly between `left` and `right` (null: the start, the end), ending with `site`. */
export function between(left: Position | null, right: Position | null, site: string): Position {
  const out: PositionLevel[] = []
  let bounded = right !== null
  for (let i = 0; ; i++) {
    const lo = left !== null && i < left.length ? (left[i] as PositionLevel) : null
    const hi = bounded && right !== null ? (right[i] as PositionLevel) : null
    const loDigit = lo ? lo[0] : 0
    const hiDigit = hi ? hi[0] : POSITION_BASE
    if (hiDigit - loDigit > 1) {
      out.push([loDigit + 1, site])
      return out
    }
    // No room at this level: keep the left side's level (or the smallest filler) and go deeper.
    const take: PositionLevel = lo ?? [0, '']
    out.push(take)
    bounded = hi !== null && hi[0] === take[0] && hi[1] === take[1]
  }
}

function positionKey(p: Position): string {
  return p.map(([d, s]) => `${d}.${s}`).join('/')
}

function newer(a: BlockVersion, b: BlockVersion): boolean {
  return compareVersions(a, b) > 0
}

/**
 * Joins two block lists (each sorted by position, one block per position): per position
 * the later version. Returns `a` itself when `b` adds nothing. Concurrent versions of a
 * block that met here are pushed to `conflicts` when given.
 */
export function joinBlocks(
  a: readonly TextBlock[],
  b: readonly TextBlock[],
  conflicts?: BlockConflict[],
): readonly TextBlock[] {
  let changed = false
  const out: TextBlock[] = []
  let i = 0
  let j = 0
  while (i < a.length || j < b.length) {
    const x = a[i]
    const y = b[j]
    const order = x === undefined ? 1 : y === undefined ? -1 : comparePositions(x.pos, y.pos)
    if (order < 0) {
      out.push(x as TextBlock)
      i++
    } else if (order > 0) {
      out.push(y as TextBlock)
      changed = true
      j++
    } else {
      const xb = x as TextBlock
      const yb = y as TextBlock
      if (newer(yb, xb)) {
        out.push(yb)
        changed = true
        if (conflicts && concurrent(yb, xb)) conflicts.push({ winner: yb, loser: xb })
      } else {
        out.push(xb)
        if (conflicts && compareVersions(xb, yb) !== 0 && concurrent(xb, yb)) conflicts.push({ winner: xb, loser: yb })
      }
      i++
      j++
    }
  }
  return changed ? out : a
}

/** The column value: live blocks in order, joined; NULL when no block is live. */
export function textValue(blocks: readonly TextBlock[], delimiter: string): string | null {
  const live: string[] = []
  for (const b of blocks) if (b.text !== null) live.push(b.text)
  return live.length === 0 ? null : live.join(delimiter)
}

/** Sorts blocks by position; false when a position repeats. */
export function normalizeBlocks(blocks: TextBlock[]): boolean {
  blocks.sort((x, y) => comparePositions(x.pos, y.pos))
  for (let i = 1; i < blocks.length; i++) {
    if (comparePositions((blocks[i] as TextBlock).pos, (blocks[i - 1] as TextBlock).pos) === 0) return false
  }
  return true
}

/**
 * The blocks after a local write left the column holding `value`: the old live blocks
 * are diffed with the new ones; kept blocks keep their version, a changed block (a
 * removed block paired with an added one in the same place) gets the new text under its
 * position, removed blocks become tombstones, added ones get new positions.
 */
export function editBlocks(
  blocks: readonly TextBlock[],
  value: string | null,
  delimiter: string,
  hlc: number,
  site: string,
): TextBlock[] {
  const live = blocks.filter((b) => b.text !== null)
  const next = value === null ? [] : value.split(delimiter)
  const changes = diffArrays(
    live.map((b) => b.text as string),
    next,
  )
  const byKey = new Map(blocks.map((b) => [positionKey(b.pos), b]))
  // A site's successive writes of a block keep pointing at the foreign version they began from.
  const replaced = (old: TextBlock): BlockVersion | null =>
    old.site === site ? (old.prev ?? null) : { hlc: old.hlc, site: old.site }
  const put = (b: TextBlock) => byKey.set(positionKey(b.pos), b)
  let i = 0
  let left: Position | null = null
  for (let k = 0; k < changes.length; k++) {
    const change = changes[k] as { value: string[]; added: boolean; removed: boolean }
    if (!change.added && !change.removed) {
      i += change.value.length
      left = (live[i - 1] as TextBlock).pos
      continue
    }
    let removed: string[] = []
    let added: string[] = []
    if (change.removed) {
      removed = change.value
      const following = changes[k + 1]
      if (following?.added) {
        added = following.value
        k++
      }
    } else added = change.value
    const paired = Math.min(removed.length, added.length)
    for (let j = 0; j < removed.length; j++) {
      const old = live[i + j] as TextBlock
      if (j < paired) {
        put({ pos: old.pos, text: added[j] as string, hlc, site, prev: replaced(old) })
        left = old.pos
      } else put({ pos: old.pos, text: null, hlc, site, prev: replaced(old) })
    }
    const right = i + removed.length < live.length ? (live[i + removed.length] as TextBlock).pos : null
    // New blocks of one run share a fresh prefix, so a concurrent run at the same place
    // (which gets another prefix) is never interleaved with this one.
    let prefix: Position | null = null
    for (let j = paired; j < added.length; j++) {
      let pos: Position
      if (prefix === null) {
        pos = between(left, right, site)
        while (byKey.has(positionKey(pos))) pos = between(pos, right, site)
        prefix = pos
      } else {
        pos = [...prefix, [j - paired, site]]
      }
      put({ pos, text: added[j] as string, hlc, site })
      left = pos
    }
    i += removed.length
  }
  return [...byKey.values()].sort((x, y) => comparePositions(x.pos, y.pos))
}

/** The newest block (by HLC, then site), or null for none. */
export function newestBlock(blocks: readonly TextBlock[]): TextBlock | null {
  let best: TextBlock | null = null
  for (const b of blocks) if (best === null || newer(b, best)) best = b
  return best
}

/** The text the cell would show had `loser` won over `winner` (for the conflict log). */
export function textWith(
  blocks: readonly TextBlock[],
  winner: TextBlock,
  loser: TextBlock,
  delimiter: string,
): string | null {
  return textValue(
    blocks.map((b) => (b === winner ? loser : b)),
    delimiter,
  )
}
