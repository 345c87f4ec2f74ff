// End-to-end convergence: several in-memory replicas run a random program of local SQL
// writes and (duplicated, delayed, relayed, stale-vector) exchanges; after a final full
// exchange they must hold identical rows and identical version vectors.
import fc from 'fast-check'
import type { Replica } from 'sqlite-converge'
import { afterEach, describe, expect, it } from 'vitest'
import {
  closeAll,
  openItemsReplicas,
  SITE_POOL,
  type Since,
  sameVector,
  show,
  snapshot,
  TracedExchange,
  type TracedPayload,
} from './helpers/replicas.js'

type Val = null | bigint | number | string | Uint8Array
type Col = 'name' | 'qty' | 'data' | 'note'
const COLS: readonly Col[] = ['name', 'qty', 'data', 'note']

const MAX_REPLICAS = 5
/** Runs per property; raise with CONVERGE_RUNS for a longer hunt. */
const RUNS = Number(process.env.CONVERGE_RUNS ?? 200)
/** Keys 1..6, biased to 1..2 so replicas often contend for the same row. */
const idArb = fc.oneof(
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 2 }) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 6 }) },
)
const rArb = fc.nat(MAX_REPLICAS - 1)

const blobArb = fc.oneof(
  fc.constant(new Uint8Array([])),
  fc.constant(new Uint8Array([0])),
  fc.uint8Array({ minLength: 1, maxLength: 4 }),
)
/** Values per column, covering every storage class and the affinity conversions. */
const valueArb: Record<Col, fc.Arbitrary<Val>> = {
  name: fc.oneof(fc.constant(null), fc.constantFrom('a', 'b', '', 'ü'), fc.constantFrom(7n, -1n), blobArb),
  qty: fc.oneof(
    fc.constant(null),
    fc.constantFrom(0, 1.5, -2.25, 1e300),
    fc.constantFrom(3n, 0n),
    fc.constantFrom('4.5', 'x'),
  ),
  data: fc.oneof(
    fc.constant(null),
    blobArb,
    fc.constantFrom(1n, 2n ** 60n),
    fc.constantFrom(1, 0.5),
    fc.constantFrom('1', 't'),
  ),
  // NOT NULL: never null
  note: fc.constantFrom('', 'n1', 'n2', 'n3'),
}

type Step =
  | { k: 'insert'; r: number; id: number; or: 'IGNORE' | 'REPLACE'; cols: [Col, Val][] }
  | { k: 'update'; r: number; id: number; cols: [Col, Val][] }
  | { k: 'delete'; r: number; id: number }
  | { k: 'reinsert'; r: number; id: number; cols: [Col, Val][] }
  | { k: 'rekey'; r: number; from: number; to: number; or: 'IGNORE' | 'REPLACE' }
  | { k: 'bulk'; r: number }
  | { k: 'sync'; from: number; to: number; since: Since; dup: boolean; delay: boolean }
  | { k: 'relay'; a: number; b: number; c: number }
  /** A payload exported for `to` (since = its vector) but imported by `via`. */
  | { k: 'misdeliver'; from: number; to: number; via: number }
  | { k: 'deliver'; pick: number }
  | { k: 'replay'; pick: number }
  /** Resolve one of the replica's open conflicts: keep the winner, or restore the lost value. */
  | { k: 'resolve'; r: number; pick: number; how: 'keep' | 'restore' }

const colsArb = (min: number): fc.Arbitrary<[Col, Val][]> =>
  fc
    .subarray([...COLS], { minLength: min })
    .chain((cols) => fc.tuple(...cols.map((c) => valueArb[c].map((v): [Col, Val] => [c, v]))))

const sinceArb: fc.Arbitrary<Since> = fc.oneof(
  { weight: 3, arbitrary: fc.constant<Since>({ kind: 'current' }) },
  { weight: 1, arbitrary: fc.constant<Since>({ kind: 'none' }) },
  { weight: 2, arbitrary: fc.nat(20).map<Since>((pick) => ({ kind: 'stale', pick })) },
)

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      k: fc.constant('insert' as const),
      r: rArb,
      id: idArb,
      or: fc.constantFrom('IGNORE' as const, 'REPLACE' as const),
      cols: colsArb(0),
    }),
  },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('update' as const), r: rArb, id: idArb, cols: colsArb(1) }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('delete' as const), r: rArb, id: idArb }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('reinsert' as const), r: rArb, id: idArb, cols: colsArb(0) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      k: fc.constant('rekey' as const),
      r: rArb,
      from: idArb,
      to: idArb,
      or: fc.constantFrom('IGNORE' as const, 'REPLACE' as const),
    }),
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('bulk' as const), r: rArb }) },
  {
    weight: 6,
    arbitrary: fc.record({
      k: fc.constant('sync' as const),
      from: rArb,
      to: rArb,
      since: sinceArb,
      dup: fc.boolean(),
      delay: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('relay' as const), a: rArb, b: rArb, c: rArb }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('deliver' as const), pick: fc.nat(50) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('replay' as const), pick: fc.nat(50) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      k: fc.constant('resolve' as const),
      r: rArb,
      pick: fc.nat(20),
      how: fc.constantFrom('keep' as const, 'restore' as const),
    }),
  },
)

const misdeliverArb: fc.Arbitrary<Step> = fc.record({
  k: fc.constant('misdeliver' as const),
  from: rArb,
  to: rArb,
  via: rArb,
})

const programArb = (steps: fc.Arbitrary<Step>) =>
  fc.record({
    n: fc.integer({ min: 3, max: MAX_REPLICAS }),
    sites: fc.shuffledSubarray([...SITE_POOL], { minLength: MAX_REPLICAS, maxLength: MAX_REPLICAS }),
    steps: fc.array(steps, { minLength: 4, maxLength: 25, size: 'max' }),
    /** Order in which payloads still queued at the end are delivered. */
    drain: fc.array(fc.nat(50), { maxLength: 30 }),
  })
type Program = { n: number; sites: string[]; steps: Step[]; drain: number[] }

/** A value as a JS literal, for the repro trace. */
function lit(v: Val): string {
  if (v instanceof Uint8Array) return `new Uint8Array([${Array.from(v).join(', ')}])`
  if (typeof v === 'bigint') return `${v}n`
  if (typeof v === 'string') return JSON.stringify(v)
  return String(v)
}

/** Runs the program, recording every action as a line of JS that replays it with the public API. */
class World {
  readonly replicas: Replica[]
  readonly trace: string[] = []
  /** Payloads exported but not yet delivered. */
  readonly queue: { to: number; payload: Uint8Array; name: string }[] = []
  /** Payloads already imported, with their target. */
  readonly delivered: { to: number; payload: Uint8Array; name: string }[] = []
  readonly #exchange: TracedExchange

  constructor(sites: readonly string[]) {
    this.replicas = openItemsReplicas(sites)
    this.#exchange = new TracedExchange(this.replicas, this.trace)
    this.trace.push(
      `const R = [${sites.map((s) => `'${s}'`).join(', ')}].map((siteId) => { const r = openReplica(':memory:', { siteId }); r.db.exec(ITEMS_DDL); r.enableSync('items'); return r })`,
      'const P = []',
    )
  }

  sql(r: number, text: string, params: Val[]): void {
    this.trace.push(`R[${r}].db.prepare(${JSON.stringify(text)}).run(${params.map(lit).join(', ')})`)
    this.replicas[r]!.db.prepare(text).run(...params)
  }

  export(from: number, to: number, since: Since): TracedPayload {
    return this.#exchange.export(from, to, since)
  }

  import(to: number, p: TracedPayload): { applied: number; conflicts: number } {
    const res = this.#exchange.import(to, p)
    this.delivered.push({ to, ...p })
    return res
  }

  /** Re-imports a payload `to` already imported: it must change nothing. */
  reimport(d: { to: number; payload: Uint8Array; name: string }, why: string): void {
    this.trace.push(`R[${d.to}].importChanges(${d.name}) // again: expect applied 0`)
    const again = this.replicas[d.to]!.importChanges(d.payload)
    if (again.applied !== 0) {
      throw new Error(
        `re-import (${why}) of ${d.name} into R[${d.to}] applied ${again.applied} changes\n${this.trace.join('\n')}`,
      )
    }
  }

  close(): void {
    closeAll(this.replicas)
  }
}

function runStep(w: World, n: number, s: Step): void {
  const r = 'r' in s ? s.r % n : 0
  switch (s.k) {
    case 'insert': {
      const cols = ['id', ...s.cols.map(([c]) => c)]
      w.sql(r, `INSERT OR ${s.or} INTO items (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`, [
        BigInt(s.id),
        ...s.cols.map(([, v]) => v),
      ])
      return
    }
    case 'update':
      w.sql(r, `UPDATE items SET ${s.cols.map(([c]) => `${c} = ?`).join(', ')} WHERE id = ?`, [
        ...s.cols.map(([, v]) => v),
        BigInt(s.id),
      ])
      return
    case 'delete':
      w.sql(r, 'DELETE FROM items WHERE id = ?', [BigInt(s.id)])
      return
    case 'reinsert': {
      const cols = ['id', ...s.cols.map(([c]) => c)]
      w.sql(r, 'DELETE FROM items WHERE id = ?', [BigInt(s.id)])
      w.sql(r, `INSERT INTO items (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`, [
        BigInt(s.id),
        ...s.cols.map(([, v]) => v),
      ])
      return
    }
    case 'rekey':
      // OR REPLACE overwrites a row already holding the new key (a delete SQLite does without DELETE triggers)
      w.sql(r, `UPDATE OR ${s.or} items SET id = ? WHERE id = ?`, [BigInt(s.to), BigInt(s.from)])
      return
    case 'bulk':
      w.sql(r, "UPDATE items SET qty = coalesce(qty, 0) + 1, note = note || '+' WHERE id % 2 = 1", [])
      return
    case 'sync': {
      const from = s.from % n
      const to = s.to % n
      if (from === to) return
      const p = w.export(from, to, s.since)
      if (s.delay) {
        w.queue.push({ to, ...p })
        return
      }
      w.import(to, p)
      if (s.dup) w.reimport({ to, ...p }, 'duplicate delivery')
      return
    }
    case 'relay': {
      const [a, b, c] = [s.a % n, s.b % n, s.c % n]
      if (a === b || b === c) return
      w.import(b, w.export(a, b, { kind: 'current' }))
      w.import(c, w.export(b, c, { kind: 'current' }))
      return
    }
    case 'misdeliver': {
      const [from, to, via] = [s.from % n, s.to % n, s.via % n]
      if (from === to || from === via) return
      w.import(via, w.export(from, to, { kind: 'current' }))
      return
    }
    case 'deliver': {
      if (w.queue.length === 0) return
      const [q] = w.queue.splice(s.pick % w.queue.length, 1)
      w.import(q!.to, q!)
      return
    }
    case 'resolve': {
      const unresolved = w.replicas[r]!.conflicts()
      if (unresolved.length === 0) return
      const c = unresolved[s.pick % unresolved.length]!
      w.trace.push(`R[${r}].resolveConflict(R[${r}].conflicts()[${s.pick % unresolved.length}].id, '${s.how}')`)
      try {
        w.replicas[r]!.resolveConflict(c.id, s.how)
      } catch (err) {
        // restoring into a row deleted since is refused, by design
        if ((err as { code?: string }).code !== 'CONFLICT_STALE') throw err
        w.trace.push('// -> CONFLICT_STALE')
      }
      return
    }
    case 'replay': {
      if (w.delivered.length === 0) return
      w.reimport(w.delivered[s.pick % w.delivered.length]!, 'late replay')
      return
    }
  }
}

function describeDifference(w: World, n: number): string {
  const lines: string[] = []
  for (let i = 0; i < n; i++) {
    lines.push(`R[${i}] (${w.replicas[i]!.siteId}) vector ${JSON.stringify(w.replicas[i]!.versionVector())}`)
    for (const row of snapshot(w.replicas[i]!)) lines.push(`    ${row}`)
  }
  return lines.join('\n')
}

/** Runs a program, drains the queue, exchanges fully, and checks convergence, stability and idempotence. */
function checkProgram({ n, sites, steps, drain }: Program): void {
  const w = new World(sites.slice(0, n))
  open.push(w)
  try {
    for (const s of steps) runStep(w, n, s)
    // late deliveries of whatever is still queued, in a random order
    for (const pick of drain) {
      if (w.queue.length === 0) break
      const [q] = w.queue.splice(pick % w.queue.length, 1)
      w.import(q!.to, q!)
    }
    while (w.queue.length) w.import(w.queue[0]!.to, w.queue.shift()!)
    // final full exchange: two rounds of every ordered pair
    w.trace.push('// final full exchange: 2 rounds of every ordered pair')
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++)
          if (i !== j) w.replicas[j]!.importChanges(w.replicas[i]!.exportChanges(w.replicas[j]!.versionVector()))
    }
    w.trace.push(
      'for (let k = 0; k < 2; k++) for (const a of R) for (const b of R) if (a !== b) b.importChanges(a.exportChanges(b.versionVector()))',
    )
    const snaps = w.replicas.map(snapshot)
    const vectors = w.replicas.map((r) => r.versionVector())
    for (let i = 1; i < n; i++) {
      if (JSON.stringify(snaps[i]) !== JSON.stringify(snaps[0]) || !sameVector(vectors[i]!, vectors[0]!)) {
        throw new Error(
          `replicas diverged after a full exchange\n--- program ---\n${w.trace.join('\n')}\n--- final state ---\n${describeDifference(w, n)}`,
        )
      }
    }
    // stable: a further round changes nothing
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        if (i === j) continue
        const res = w.replicas[j]!.importChanges(w.replicas[i]!.exportChanges(w.replicas[j]!.versionVector()))
        if (res.applied !== 0) {
          throw new Error(
            `a third exchange round R[${i}] -> R[${j}] still applied ${res.applied}\n${w.trace.join('\n')}\n${describeDifference(w, n)}`,
          )
        }
      }
    // every payload ever delivered is now old news for its receiver
    for (const d of w.delivered) w.reimport(d, 'after convergence')
    expect(w.replicas.map(snapshot)).toEqual(snaps)
  } finally {
    w.close()
    open = open.filter((x) => x !== w)
  }
}

let open: World[] = []
afterEach(() => {
  for (const w of open) w.close()
  open = []
})

describe('convergence', () => {
  it('replicas converge to identical rows and vectors after any program and a full exchange', () => {
    fc.assert(fc.property(programArb(stepArb), checkProgram), { numRuns: RUNS })
  })

  it('a payload exported for another replica never shows a row mixing two lives (minimal case of the above)', () => {
    const [x, z, r] = openItemsReplicas(SITE_POOL.slice(0, 3))
    try {
      x!.db.exec("INSERT INTO items (id, name, qty) VALUES (1, 'old', 1)")
      r!.importChanges(x!.exportChanges(r!.versionVector()))
      z!.importChanges(x!.exportChanges(z!.versionVector()))
      x!.db.exec('DELETE FROM items WHERE id = 1')
      x!.db.exec("INSERT INTO items (id, name, qty) VALUES (1, 'new', 2)")
      z!.importChanges(x!.exportChanges(z!.versionVector()))
      x!.db.exec("UPDATE items SET name = 'newer' WHERE id = 1")
      // exported for z (a delta carrying only the name cell), imported by r
      r!.importChanges(x!.exportChanges(z!.versionVector()))
      const row = r!.db.prepare('SELECT name, qty FROM items WHERE id = 1').get()
      // r may lag behind (old row, or the new life), but qty = 1 belongs to the deleted life
      // and name = 'newer' to the new one: no replica ever held that row
      expect([
        { name: 'old', qty: 1 },
        { name: 'newer', qty: 2 },
      ]).toContainEqual(row)
    } finally {
      closeAll([x!, z!, r!])
    }
  })

  it('payloads imported by a replica other than the one they were exported for do no harm', () => {
    fc.assert(
      fc.property(
        programArb(fc.oneof({ weight: 4, arbitrary: stepArb }, { weight: 1, arbitrary: misdeliverArb })),
        checkProgram,
      ),
      { numRuns: RUNS },
    )
  })

  it('the conflict log keeps the losing value of two concurrent writes to one cell', () => {
    concurrentWriteProperty(false)
  })

  it('when both exports cross in flight, both replicas log the write that lost, exactly once each', () => {
    concurrentWriteProperty(true)
  })
})

/** Two replicas write one cell concurrently and exchange both ways; checks values and the conflict log. */
function concurrentWriteProperty(strict: boolean): void {
  const colArb = fc.constantFrom<Col>(...COLS)
  fc.assert(
    fc.property(
      fc.shuffledSubarray([...SITE_POOL], { minLength: 2, maxLength: 2 }),
      colArb.chain((c) =>
        fc.tuple(
          fc.constant(c),
          fc.uniqueArray(valueArb[c], { minLength: 3, maxLength: 3, comparator: (a, b) => show(a) === show(b) }),
        ),
      ),
      fc.boolean(),
      fc.boolean(),
      strict ? fc.constant('both-exported-first') : fc.constantFrom('a-first', 'b-first', 'both-exported-first'),
      ([site0, site1], [col, [initial, va, vb]], insertedByB, bothInsert, order) => {
        const [a, b] = openItemsReplicas([site0!, site1!])
        try {
          /** The cell as stored (after affinity conversion), with and without its storage class. */
          const stored = (r: Replica, typed: boolean) => {
            const row = r.db
              .prepare(`SELECT ${col} AS v, typeof(${col}) AS t FROM items WHERE id = 1`)
              .safeIntegers(true)
              .get() as {
              v: Val
              t: string
            }
            return typed ? `${appShow(row.v)}:${row.t}` : appShow(row.v)
          }
          const set = `UPDATE items SET ${col} = ? WHERE id = 1`
          let before = ''
          if (bothInsert) {
            // concurrent inserts of the same key: the whole row of one life is concurrent
            a!.db.prepare(`INSERT INTO items (id, ${col}) VALUES (1, ?)`).run(va)
            b!.db.prepare(`INSERT INTO items (id, ${col}) VALUES (1, ?)`).run(vb)
          } else {
            const origin = insertedByB ? b! : a!
            const other = insertedByB ? a! : b!
            origin.db.prepare(`INSERT INTO items (id, ${col}) VALUES (1, ?)`).run(initial)
            other.importChanges(origin.exportChanges(other.versionVector()))
            before = stored(origin, false)
            a!.db.prepare(set).run(va)
            b!.db.prepare(set).run(vb)
          }
          // fold both writes before any exchange, so they are concurrent
          a!.versionVector()
          b!.versionVector()
          const wroteA = stored(a!, false)
          const wroteB = stored(b!, false)
          // each side really changes the cell (an UPDATE to the same value is no write), to different values
          fc.pre(wroteA !== wroteB)
          if (!bothInsert) fc.pre(wroteA !== before && wroteB !== before)
          if (order === 'a-first') {
            b!.importChanges(a!.exportChanges(b!.versionVector()))
            a!.importChanges(b!.exportChanges(a!.versionVector()))
          } else if (order === 'both-exported-first') {
            const fromA = a!.exportChanges(b!.versionVector())
            const fromB = b!.exportChanges(a!.versionVector())
            b!.importChanges(fromA)
            a!.importChanges(fromB)
          } else {
            a!.importChanges(b!.exportChanges(a!.versionVector()))
            b!.importChanges(a!.exportChanges(b!.versionVector()))
          }
          expect(stored(b!, true)).toBe(stored(a!, true))
          const winner = stored(a!, false)
          expect([wroteA, wroteB]).toContain(winner)
          const loser = winner === wroteA ? wroteB : wroteA
          const loggedA = a!.conflicts().filter((c) => c.column === col)
          const loggedB = b!.conflicts().filter((c) => c.column === col)
          const logged = [...loggedA, ...loggedB]
          expect(logged.map((c) => appShow(c.lost))).toContain(loser)
          const [winnerSite, loserSite] = winner === wroteA ? [a!.siteId, b!.siteId] : [b!.siteId, a!.siteId]
          for (const c of logged) {
            expect(c.table).toBe('items')
            expect(c.pk).toEqual([1])
            expect(appShow(c.kept)).toBe(winner)
            expect(appShow(c.lost)).toBe(loser)
            expect(c.keptSite).toBe(winnerSite)
            expect(c.lostSite).toBe(loserSite)
          }
          if (strict) {
            // both payloads left before either arrived, so each side sees the other's write
            // win or lose against its own: both log it, once. (When one side imports first,
            // its losing write is gone before the other side can see it, so only it logs.)
            expect(loggedA).toHaveLength(1)
            expect(loggedB).toHaveLength(1)
          }
        } finally {
          a!.close()
          b!.close()
        }
      },
    ),
    { numRuns: RUNS },
  )
}

/** Shows a value the way the app sees it: integers that fit a double as numbers (as conflicts() reports them). */
function appShow(v: unknown): string {
  if (typeof v === 'bigint' && v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER)) {
    return show(Number(v))
  }
  return show(v)
}
