/**
 * Column algorithms and row modes other than the defaults (per-cell last-writer-wins,
 * causal-length rows), and the counter join.
 *
 * A counter cell holds one part per site that ever changed it within the row's current
 * life: the sum of that site's own differences. A site only ever rewrites its own part, so
 * parts merge by taking, per site, the one with the later HLC, and the column's value is
 * the sum of the parts. That is a join (commutative, associative, idempotent), so
 * concurrent increments add up whatever the delivery order.
 */

/** How a column merges. */
export type ColumnAlgorithm = 'lww' | 'counter' | 'text'
/** How a table's rows live and die. */
export type RowMode = 'causal' | 'add-wins' | 'delete-wins' | 'grow-only'

export const COLUMN_ALGORITHMS: readonly ColumnAlgorithm[] = ['lww', 'counter', 'text']
export const ROW_MODES: readonly RowMode[] = ['causal', 'add-wins', 'delete-wins', 'grow-only']

/** A counter value: bigint for INTEGER, number for REAL (as SqlValue). */
export type CounterValue = bigint | number

/** One site's contribution to a counter cell. */
export interface CounterPart {
  readonly site: string
  /** HLC of the site's latest change to the cell. */
  readonly hlc: number
  /** Sum of every difference the site made to the cell in this row life. */
  readonly total: CounterValue
}

function bySite(a: CounterPart, b: CounterPart): number {
  return a.site < b.site ? -1 : a.site > b.site ? 1 : 0
}

/**
 * Joins two part lists (each sorted by site, one part per site): per site the later part.
 * Returns `a` itself when `b` adds nothing, so callers can tell "changed" by identity.
 */
export function joinParts(a: readonly CounterPart[], b: readonly CounterPart[]): readonly CounterPart[] {
  let changed = false
  const out: CounterPart[] = []
  let i = 0
  let j = 0
  while (i < a.length || j < b.length) {
    const x = a[i]
    const y = b[j]
    if (y === undefined || (x !== undefined && x.site < y.site)) {
      out.push(x as CounterPart)
      i++
    } else if (x === undefined || y.site < x.site) {
      out.push(y)
      changed = true
      j++
    } else {
      if (y.hlc > x.hlc) {
        out.push(y)
        changed = true
      } else out.push(x)
      i++
      j++
    }
  }
  return changed ? out : a
}

const INT64_MIN = -(2n ** 63n)
const INT64_MAX = 2n ** 63n - 1n

/** An integer result outside SQLite's 64-bit range becomes REAL, as in SQLite's own arithmetic. */
function int64OrReal(v: bigint): CounterValue {
  return v < INT64_MIN || v > INT64_MAX ? Number(v) : v
}

/** Adds counter values: exact integers while every operand is one, doubles otherwise. */
export function addValues(a: CounterValue, b: CounterValue): CounterValue {
  if (typeof a === 'bigint' && typeof b === 'bigint') return int64OrReal(a + b)
  return Number(a) + Number(b)
}

function subtract(a: CounterValue, b: CounterValue): CounterValue {
  if (typeof a === 'bigint' && typeof b === 'bigint') return int64OrReal(a - b)
  return Number(a) - Number(b)
}

/** The column's value: the sum of the parts, in site order (so every replica rounds alike). */
export function sumParts(parts: readonly CounterPart[]): CounterValue {
  let sum: CounterValue = 0n
  for (const p of parts) sum = addValues(sum, p.total)
  return sum
}

/**
 * The parts after a local write left the cell holding `current`: this site's part becomes
 * whatever makes the sum equal `current`, the other sites' parts stay.
 */
export function withOwnPart(
  parts: readonly CounterPart[],
  site: string,
  hlc: number,
  current: CounterValue,
): CounterPart[] {
  const others = parts.filter((p) => p.site !== site)
  return withPart(others, { site, hlc, total: subtract(current, sumParts(others)) })
}

/** The parts with `part` in place of its site's (sorted by site). */
export function withPart(parts: readonly CounterPart[], part: CounterPart): CounterPart[] {
  return [...parts.filter((p) => p.site !== part.site), part].sort(bySite)
}

/** The newest part: a counter cell's stamp is its newest part's. */
export function newestPart(parts: readonly CounterPart[]): CounterPart {
  let best = parts[0] as CounterPart
  for (const p of parts) if (p.hlc > best.hlc || (p.hlc === best.hlc && p.site > best.site)) best = p
  return best
}

/** Sorts parts by site and checks there is one per site; false when a site repeats. */
export function normalizeParts(parts: CounterPart[]): boolean {
  parts.sort(bySite)
  for (let i = 1; i < parts.length; i++)
    if ((parts[i] as CounterPart).site === (parts[i - 1] as CounterPart).site) return false
  return true
}
