// Helpers for end-to-end tests with several in-memory replicas.
import { ConvergeError, openReplica, type Replica, type VersionVector } from 'sqlite-converge'
import { expect } from 'vitest'

/** Covers every storage class: INTEGER key, TEXT, REAL, BLOB (no affinity: keeps any class), NOT NULL with default. */
export const ITEMS_DDL =
  "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty REAL, data BLOB, note TEXT NOT NULL DEFAULT '')"

/** Site ids in increasing order, so a test can choose who wins ties. */
export const SITE_POOL = [
  '10000000000000000000000000000001',
  '20000000000000000000000000000002',
  '30000000000000000000000000000003',
  '40000000000000000000000000000004',
  '50000000000000000000000000000005',
  '60000000000000000000000000000006',
] as const

/** Opens one in-memory replica per site id, each with `items` created and synced. */
export function openItemsReplicas(siteIds: readonly string[]): Replica[] {
  return siteIds.map((siteId) => {
    const r = openReplica(':memory:', { siteId })
    r.db.exec(ITEMS_DDL)
    r.enableSync('items')
    return r
  })
}

export function closeAll(replicas: readonly Replica[]): void {
  for (const r of replicas) r.close()
}

/** A value as a comparable, printable string: storage class plus contents (blobs as hex). */
export function show(v: unknown): string {
  if (v === null || v === undefined) return 'NULL'
  if (v instanceof Uint8Array) return `X'${Buffer.from(v).toString('hex')}'`
  if (typeof v === 'bigint') return `${v}n`
  if (typeof v === 'string') return JSON.stringify(v)
  if (typeof v === 'number') return Object.is(v, -0) ? '-0' : String(v)
  return String(v)
}

/** Every row of `items`, ordered by id, each column with its SQLite storage class. */
export function snapshot(r: Replica): string[] {
  const rows = r.db
    .prepare(
      `SELECT id, typeof(id) AS tid, name, typeof(name) AS tname, qty, typeof(qty) AS tqty,
              data, typeof(data) AS tdata, note, typeof(note) AS tnote
       FROM items ORDER BY id`,
    )
    .safeIntegers(true)
    .all() as Record<string, unknown>[]
  return rows.map(
    (row) =>
      `id=${show(row.id)}:${row.tid} name=${show(row.name)}:${row.tname} qty=${show(row.qty)}:${row.tqty} ` +
      `data=${show(row.data)}:${row.tdata} note=${show(row.note)}:${row.tnote}`,
  )
}

/** Sends everything `to` lacks from `from` (since = `to`'s current vector); returns the import result. */
export function sync(from: Replica, to: Replica): { applied: number; conflicts: number } {
  return to.importChanges(from.exportChanges(to.versionVector()))
}

/**
 * Full pairwise exchange (`sync` from every replica to every other) until a round applies
 * nothing; throws if `maxRounds` rounds do not get there.
 */
export function settle(rs: readonly Replica[], maxRounds: number): void {
  for (let round = 0; round < maxRounds; round++) {
    let applied = 0
    for (const a of rs) for (const b of rs) if (a !== b) applied += sync(a, b).applied
    if (applied === 0) return
  }
  throw new Error('replicas did not settle')
}

/** True when two version vectors have the same entries. */
export function sameVector(a: VersionVector, b: VersionVector): boolean {
  const ka = Object.keys(a).sort()
  const kb = Object.keys(b).sort()
  return JSON.stringify(ka) === JSON.stringify(kb) && ka.every((k) => a[k] === b[k])
}

/** The code of the ConvergeError `fn` throws (asserting it is one), or undefined if it returns. */
export function codeOf(fn: () => unknown): string | undefined {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(ConvergeError)
    return (err as ConvergeError).code
  }
  return undefined
}

/** A small seeded generator (mulberry32), so fuzz runs replay exactly from their seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Which vector an exchange answers: the receiver's current one, none (everything), or one it had earlier. */
export type Since = { kind: 'current' } | { kind: 'none' } | { kind: 'stale'; pick: number }

/** A payload with the name a trace gives it (`P[n]`). */
export interface TracedPayload {
  payload: Uint8Array
  name: string
}

/**
 * Exports and imports between property-test replicas, each recorded in `trace` as a line of
 * JS that replays it with the public API. Keeps the vectors each receiver had at earlier
 * exchanges, for stale `since` values.
 */
export class TracedExchange {
  readonly #history: VersionVector[][]
  #payloads = 0

  constructor(
    readonly replicas: readonly Replica[],
    readonly trace: string[],
  ) {
    this.#history = replicas.map(() => [])
  }

  export(from: number, to: number, since: Since): TracedPayload {
    const current = (this.replicas[to] as Replica).versionVector()
    const hist = this.#history[to] as VersionVector[]
    let vec: VersionVector | undefined
    let sinceJs = ''
    if (since.kind === 'current') {
      vec = current
      sinceJs = `R[${to}].versionVector()`
    } else if (since.kind === 'stale' && hist.length > 0) {
      vec = hist[since.pick % hist.length] as VersionVector
      sinceJs = JSON.stringify(vec)
    }
    hist.push(current)
    const name = `P[${this.#payloads++}]`
    this.trace.push(`${name} = R[${from}].exportChanges(${sinceJs})`)
    return { payload: (this.replicas[from] as Replica).exportChanges(vec), name }
  }

  import(to: number, p: TracedPayload): { applied: number; conflicts: number } {
    this.trace.push(`R[${to}].importChanges(${p.name})`)
    return (this.replicas[to] as Replica).importChanges(p.payload)
  }
}
