// Property tests of counters and row modes. The pure part checks that the counter join
// (src/core/algorithms.ts) and mergeRow on counter cells and delete-wins bookkeeping are
// joins; the end-to-end part runs random programs of plain SQL writes and (stale,
// duplicated, delayed, misdelivered) exchanges on three in-memory replicas, exchanges until
// nothing changes, and checks that the replicas agree and that counters add up. Scenario
// tests pin down what each row mode does with a deletion and a concurrent write; the last
// block keeps the regressions of bugs these properties found.
import fc from 'fast-check'
import { openReplica, type Replica } from 'sqlite-converge'
import { afterEach, describe, expect, it } from 'vitest'
import {
  addValues,
  type CounterPart,
  type CounterValue,
  joinParts,
  normalizeParts,
  sumParts,
  withOwnPart,
} from '../src/core/algorithms.js'
import {
  type CellStamp,
  compareStamps,
  counterCell,
  deleteWins,
  localInsert,
  mergeRow,
  type RowState,
  type Stamp,
} from '../src/core/merge.js'
import { SITE_POOL, type Since, sameVector, show, TracedExchange, type TracedPayload } from './helpers/replicas.js'

// ---------------------------------------------------------------------------------------
// Pure: the counter join and mergeRow
// ---------------------------------------------------------------------------------------

const PURE_RUNS = 300
/** Site ids in increasing order (the order parts are kept and summed in). */
const SITES = SITE_POOL.slice(0, 4)
const MAX_HLC = 6

/**
 * Fixes the total of every (site, hlc): a site writes its part once per HLC, so the same
 * (site, hlc) always carries the same total, as in reality.
 */
type PartWorld = (site: string, hlc: number) => CounterValue

// Integer totals whose sums stay inside SQLite's 64-bit range (exact arithmetic)...
const bigTotalArb = fc.bigInt({ min: -(2n ** 60n), max: 2n ** 60n })
// ...and ones that leave it (the sum turns REAL, as SQLite's own arithmetic does).
const hugeTotalArb = fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n })
/** Any finite double (sums may overflow to ±Infinity or NaN: summing in site order is still deterministic). */
const realTotalArb = fc.double({ noNaN: true, noDefaultInfinity: true })
/** Multiples of 1/4 of modest size: every sum of a few of them is exact in a double. */
const dyadicArb = fc.integer({ min: -4000, max: 4000 }).map((x) => x / 4)

function partWorldArb(totalArb: fc.Arbitrary<CounterValue>): fc.Arbitrary<PartWorld> {
  return fc
    .array(totalArb, { minLength: SITES.length * MAX_HLC, maxLength: SITES.length * MAX_HLC })
    .map((totals) => (site, hlc) => totals[SITES.indexOf(site as (typeof SITES)[number]) * MAX_HLC + hlc - 1]!)
}

const anyTotalArb: fc.Arbitrary<CounterValue> = fc.oneof(bigTotalArb, realTotalArb, dyadicArb)

/** A valid part list: sorted by site, one part per site, totals fixed by the world. */
function partsArb(world: PartWorld, minLength = 0): fc.Arbitrary<CounterPart[]> {
  return fc
    .uniqueArray(fc.record({ s: fc.nat(SITES.length - 1), hlc: fc.integer({ min: 1, max: MAX_HLC }) }), {
      selector: (p) => p.s,
      minLength,
      maxLength: SITES.length,
    })
    .map((ps) => {
      const parts = ps.map(({ s, hlc }) => ({ site: SITES[s]!, hlc, total: world(SITES[s]!, hlc) }))
      normalizeParts(parts)
      return parts
    })
}

/** `k` part lists from one world. */
const partListsArb = (k: number, totalArb = anyTotalArb) =>
  partWorldArb(totalArb).chain((w) => fc.tuple(...Array.from({ length: k }, () => partsArb(w))))

/** Reference: per site the part with the highest HLC among all lists, summed in site order. */
function latestSum(...lists: (readonly CounterPart[])[]): CounterValue {
  const best = new Map<string, CounterPart>()
  for (const l of lists) for (const p of l) if ((best.get(p.site)?.hlc ?? 0) < p.hlc) best.set(p.site, p)
  let sum: CounterValue = 0n
  for (const site of [...best.keys()].sort()) sum = addValues(sum, best.get(site)!.total)
  return sum
}

function expectWellFormed(parts: readonly CounterPart[]): void {
  for (let i = 1; i < parts.length; i++) expect(parts[i - 1]!.site < parts[i]!.site).toBe(true)
}

describe('joinParts is a join over part lists', () => {
  it('is commutative: the same part list (hence the same sum) either way round', () => {
    fc.assert(
      fc.property(partListsArb(2), ([a, b]) => {
        const ab = joinParts(a!, b!)
        const ba = joinParts(b!, a!)
        expect(ab).toEqual(ba)
        expect(sumParts(ab)).toBe(sumParts(ba))
        expectWellFormed(ab)
      }),
      { numRuns: PURE_RUNS },
    )
  })

  it('is associative', () => {
    fc.assert(
      fc.property(partListsArb(3), ([a, b, c]) => {
        const left = joinParts(joinParts(a!, b!), c!)
        const right = joinParts(a!, joinParts(b!, c!))
        expect(left).toEqual(right)
        expect(sumParts(left)).toBe(sumParts(right))
      }),
      { numRuns: PURE_RUNS },
    )
  })

  it('is idempotent and absorbing, and returns `a` itself exactly when `b` adds nothing', () => {
    fc.assert(
      fc.property(partListsArb(2), ([a, b]) => {
        expect(joinParts(a!, a!)).toBe(a)
        expect(joinParts(a!, [])).toBe(a)
        expect(joinParts([], a!)).toEqual(a)
        const ab = joinParts(a!, b!)
        expect(joinParts(ab, b!)).toBe(ab)
        expect(joinParts(ab, a!)).toBe(ab)
        const addsNothing = b!.every((p) => a!.some((q) => q.site === p.site && q.hlc >= p.hlc))
        expect(ab === a).toBe(addsNothing)
        if (!addsNothing) expect(ab).not.toEqual(a)
      }),
      { numRuns: PURE_RUNS },
    )
  })

  it('sums to the per-site latest parts', () => {
    fc.assert(
      fc.property(partListsArb(3), ([a, b, c]) => {
        expect(sumParts(joinParts(a!, b!))).toBe(latestSum(a!, b!))
        expect(sumParts(joinParts(joinParts(a!, b!), c!))).toBe(latestSum(a!, b!, c!))
      }),
      { numRuns: PURE_RUNS },
    )
  })

  it('normalizeParts sorts by site and rejects a repeated site', () => {
    fc.assert(
      fc.property(partListsArb(1), fc.nat(), ([a], shift) => {
        const shuffled = a!.map((_, i) => a![(i + shift) % a!.length]!)
        expect(normalizeParts(shuffled)).toBe(true)
        expect(shuffled).toEqual(a)
        if (a!.length > 0) expect(normalizeParts([...a!, { ...a![0]!, hlc: a![0]!.hlc + 1 }])).toBe(false)
      }),
      { numRuns: PURE_RUNS },
    )
  })
})

/** One step of a pure counter schedule: a site changes its value, or joins another site's parts. */
type CounterOp = { k: 'add'; s: number; d: bigint | number } | { k: 'join'; s: number; from: number }

describe('withOwnPart: local writes as per-site differences', () => {
  it('the sum becomes the written value; the other parts stay', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          partListsArb(1, bigTotalArb).chain(([a]) => fc.tuple(fc.constant(a!), bigTotalArb)),
          partListsArb(1, dyadicArb).chain(([a]) => fc.tuple(fc.constant(a!), dyadicArb)),
        ),
        fc.nat(SITES.length - 1),
        ([parts, current], s) => {
          const site = SITES[s]!
          const out = withOwnPart(parts, site, MAX_HLC + 1, current)
          expectWellFormed(out)
          expect(sumParts(out)).toBe(current)
          expect(out.filter((p) => p.site !== site)).toEqual(parts.filter((p) => p.site !== site))
          expect(out.find((p) => p.site === site)?.hlc).toBe(MAX_HLC + 1)
        },
      ),
      { numRuns: PURE_RUNS },
    )
  })

  it('past 64 bits the parts and their sum turn REAL instead of failing, and stay in range', () => {
    const INT64 = 2n ** 63n
    fc.assert(
      fc.property(
        partListsArb(1, hugeTotalArb).chain(([a]) => fc.tuple(fc.constant(a!), hugeTotalArb)),
        fc.nat(SITES.length - 1),
        ([parts, current], s) => {
          const out = withOwnPart(
            parts.map((p) => ({
              ...p,
              total: typeof p.total === 'bigint' && (p.total >= INT64 || p.total < -INT64) ? Number(p.total) : p.total,
            })),
            SITES[s]!,
            MAX_HLC + 1,
            current >= INT64 || current < -INT64 ? Number(current) : current,
          )
          for (const p of out) if (typeof p.total === 'bigint') expect(p.total < INT64 && p.total >= -INT64).toBe(true)
          const sum = sumParts(out)
          if (typeof sum === 'bigint') expect(sum < INT64 && sum >= -INT64).toBe(true)
          else expect(Number.isFinite(sum)).toBe(true)
        },
      ),
      { numRuns: PURE_RUNS },
    )
  })

  it('concurrent changes from a common base add up, whatever the joins in between', () => {
    const opArb: fc.Arbitrary<CounterOp> = fc.oneof(
      fc.record({
        k: fc.constant('add' as const),
        s: fc.nat(SITES.length - 1),
        d: fc.oneof(fc.bigInt({ min: -50n, max: 50n }), dyadicArb),
      }),
      fc.record({ k: fc.constant('join' as const), s: fc.nat(SITES.length - 1), from: fc.nat(SITES.length - 1) }),
    )
    fc.assert(
      fc.property(
        partListsArb(1, fc.oneof(fc.bigInt({ min: -100n, max: 100n }), dyadicArb)),
        fc.array(opArb, { maxLength: 30 }),
        ([base], ops) => {
          const states: (readonly CounterPart[])[] = SITES.map(() => base!)
          const clocks = SITES.map(() => MAX_HLC)
          let expected: CounterValue = sumParts(base!)
          for (const op of ops) {
            if (op.k === 'add') {
              const cur = states[op.s]!
              states[op.s] = withOwnPart(cur, SITES[op.s]!, ++clocks[op.s]!, addValues(sumParts(cur), op.d))
              expected = addValues(expected, op.d)
            } else {
              states[op.s] = joinParts(states[op.s]!, states[op.from]!)
            }
          }
          const all = states.reduce((x, y) => joinParts(x, y))
          expect(Number(sumParts(all))).toBe(Number(expected))
          // any join order gives the same parts
          expect([...states].reverse().reduce((x, y) => joinParts(x, y))).toEqual(all)
        },
      ),
      { numRuns: PURE_RUNS },
    )
  })
})

// mergeRow over row states holding counter cells (columns 0 and 1) and a plain
// last-writer-wins cell (column 2), optionally with delete-wins bookkeeping.

const N = 3
const COUNTER_COLS = [0, 1]

interface StateOptions {
  /** Causal lengths to draw from. */
  readonly cls: readonly number[]
  /** Add delete-wins `deletions` (as localDelete/localInsert with `track` and merges leave them). */
  readonly deletions: boolean
}

const stampArb = (cl: number): fc.Arbitrary<Stamp> =>
  fc.record({ cl: fc.constant(cl), hlc: fc.integer({ min: 1, max: MAX_HLC }), site: fc.constantFrom(...SITES) })

/** Non-empty sorted stamp list of life `cl`, without repeats. */
const deletionsArb = (cl: number): fc.Arbitrary<Stamp[]> =>
  fc
    .uniqueArray(stampArb(cl), { minLength: 1, maxLength: 3, selector: (s) => `${s.hlc}/${s.site}` })
    .map((l) => l.sort(compareStamps))

/** A valid row state: dead rows hold no cells; counter cells hold parts of the world; other cells plain stamps. */
function stateArb(world: PartWorld, o: StateOptions): fc.Arbitrary<RowState> {
  return fc.constantFrom(...o.cls).chain((cl): fc.Arbitrary<RowState> => {
    const alive = cl % 2 === 1
    if (!alive) {
      // A tombstone's stamp is its newest deletion.
      if (o.deletions)
        return deletionsArb(cl).map((d) => ({ cl, clStamp: d.at(-1)!, cells: [null, null, null], deletions: d }))
      return stampArb(cl).map((clStamp) => ({ cl, clStamp, cells: [null, null, null] }))
    }
    const counter = fc.option(
      partsArb(world, 1).map((p) => counterCell(cl, p)),
      { nil: null, freq: 5 },
    )
    const plain = fc.option(
      stampArb(cl).map((s): CellStamp => ({ ...s, prev: null })),
      { nil: null, freq: 5 },
    )
    return fc
      .record({
        clStamp: stampArb(cl),
        cells: fc.tuple(counter, counter, plain),
        deletions: (o.deletions && cl > 1 ? deletionsArb(cl - 1) : fc.constant(undefined)) as fc.Arbitrary<
          Stamp[] | undefined
        >,
      })
      .map(({ clStamp, cells, deletions }) => (deletions ? { cl, clStamp, cells, deletions } : { cl, clStamp, cells }))
  })
}

const statesArb = (k: number, o: StateOptions) =>
  partWorldArb(anyTotalArb).chain((w) => fc.tuple(...Array.from({ length: k }, () => stateArb(w, o))))

const join = (a: RowState | null, b: RowState): RowState => mergeRow(a, b).state

const STATE_KINDS: [string, StateOptions][] = [
  ['counter cells at one causal length', { cls: [3], deletions: false }],
  ['counter cells across lives', { cls: [1, 2, 3, 4], deletions: false }],
  ['delete-wins bookkeeping across lives', { cls: [1, 2, 3, 4, 5], deletions: true }],
  ['delete-wins bookkeeping at one causal length', { cls: [4], deletions: true }],
  ['delete-wins bookkeeping at one live causal length', { cls: [3], deletions: true }],
]

describe.each(STATE_KINDS)('mergeRow is a join: %s', (_, o) => {
  it('is idempotent: join(a, a) == a, reporting no change', () => {
    fc.assert(
      fc.property(statesArb(1, o), ([a]) => {
        const m = mergeRow(a!, a!)
        expect(m.state).toEqual(a)
        expect(m.won).toEqual([])
        expect(m.conflicts).toEqual([])
        expect(m.lifeChanged).toBe(false)
      }),
      { numRuns: PURE_RUNS },
    )
  })

  it('is commutative', () => {
    fc.assert(
      fc.property(statesArb(2, o), ([a, b]) => {
        expect(join(a!, b!)).toEqual(join(b!, a!))
      }),
      { numRuns: PURE_RUNS },
    )
  })

  it('is associative', () => {
    fc.assert(
      fc.property(statesArb(3, o), ([a, b, c]) => {
        expect(join(join(a!, b!), c!)).toEqual(join(a!, join(b!, c!)))
      }),
      { numRuns: PURE_RUNS },
    )
  })

  it('is absorbing, and a counter cell is listed as won exactly when its parts changed', () => {
    fc.assert(
      fc.property(statesArb(2, o), ([a, b]) => {
        const m = mergeRow(a!, b!)
        const again = mergeRow(m.state, b!)
        expect(again.state).toEqual(m.state)
        expect(again.won).toEqual([])
        if (a!.cl === b!.cl && a!.cl % 2 === 1) {
          for (const c of COUNTER_COLS) {
            const before = a!.cells[c]
            const after = m.state.cells[c]
            const changed = before ? !!after && after.parts !== before.parts : !!after
            expect(m.won.includes(c)).toBe(changed)
            // counters never conflict
            expect(m.conflicts.some((k) => k.column === c)).toBe(false)
          }
        }
      }),
      { numRuns: PURE_RUNS },
    )
  })
})

describe('mergeRow on counter cells of one life', () => {
  it('each counter sums to the per-site latest parts of every merged state, in any order', () => {
    fc.assert(
      fc.property(statesArb(3, { cls: [1], deletions: false }), ([a, b, c]) => {
        const orders = [
          [a!, b!, c!],
          [c!, a!, b!],
          [b!, c!, a!],
        ]
        for (const order of orders) {
          const s = order.reduce<RowState | null>((x, y) => join(x, y), null)!
          for (const col of COUNTER_COLS) {
            const lists = [a!, b!, c!].map((st) => st.cells[col]?.parts ?? [])
            const cell = s.cells[col]
            if (lists.every((l) => l.length === 0)) expect(cell).toBeNull()
            else {
              expect(sumParts(cell!.parts!)).toBe(latestSum(...lists))
              // the cell's stamp is its newest part's
              expect(cell).toEqual(counterCell(1, cell!.parts!))
            }
          }
        }
      }),
      { numRuns: PURE_RUNS },
    )
  })
})

describe('deleteWins', () => {
  it('a re-insertion that knew every deletion of the life before survives; one that missed a deletion loses', () => {
    fc.assert(
      fc.property(statesArb(2, { cls: [2], deletions: true }), fc.nat(), ([t1, t2], hlc) => {
        const site = SITES[0]!
        // a re-insertion after seeing t1 only
        const alive = localInsert(t1!, MAX_HLC + 1 + (hlc % 5), site, N, true)
        expect(alive.cl).toBe(3)
        expect(alive.deletions).toEqual(t1!.deletions)
        expect(deleteWins(alive, t1!)).toBe(false)
        const both = join(t1!, t2!)
        const missed = t2!.deletions!.some((d) => !t1!.deletions!.some((k) => compareStamps(k, d) === 0))
        expect(deleteWins(alive, t2!)).toBe(missed)
        expect(deleteWins(alive, both)).toBe(missed)
        // only a tombstone of the life just before counts
        expect(deleteWins(alive, alive)).toBe(false)
        expect(deleteWins(t1!, alive)).toBe(false)
      }),
      { numRuns: PURE_RUNS },
    )
  })
})

// ---------------------------------------------------------------------------------------
// End to end: three replicas, random programs, exchange until quiescent
// ---------------------------------------------------------------------------------------

type Mode = 'causal' | 'add-wins' | 'delete-wins' | 'grow-only'
interface Setup {
  readonly mode: Mode
  /** qty and price are counters (otherwise last-writer-wins). */
  readonly counters: boolean
}

const STOCK_DDL =
  'CREATE TABLE stock (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL DEFAULT 0, price REAL NOT NULL DEFAULT 0, note TEXT)'
const REPLICAS = 3
const MAX_ROUNDS = 10

type Note = string | null
type Step =
  | { k: 'insert'; r: number; id: number; qty: number; price: number; note: Note }
  | { k: 'replace'; r: number; id: number; qty: number; price: number; note: Note }
  | { k: 'add'; r: number; id: number; dq: number; dp: number }
  | { k: 'set'; r: number; id: number; qty: number }
  | { k: 'note'; r: number; id: number; note: Note }
  | { k: 'delete'; r: number; id: number }
  | { k: 'reinsert'; r: number; id: number; qty: number; price: number; note: Note }
  | { k: 'rekey'; r: number; from: number; to: number }
  | { k: 'bad'; r: number; id: number; value: string | Uint8Array }
  | { k: 'sync'; from: number; to: number; since: Since; dup: boolean; delay: boolean }
  /** A payload exported for `to` but imported by `via`. */
  | { k: 'misdeliver'; from: number; to: number; via: number }
  | { k: 'deliver'; pick: number }
  | { k: 'replay'; pick: number }

/** Keys 1..4, biased to 1..2 so replicas contend for the same rows. */
const idArb = fc.oneof(
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 2 }) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 4 }) },
)
const rArb = fc.nat(REPLICAS - 1)
const qtyArb = fc.integer({ min: -5, max: 20 })
/** Exact in a double, so sums of prices do not depend on the order they are added in. */
const priceArb = fc.integer({ min: -40, max: 40 }).map((x) => x / 4)
const noteArb: fc.Arbitrary<Note> = fc.constantFrom(null, 'a', 'b', 'c', '')
const sinceArb: fc.Arbitrary<Since> = fc.oneof(
  { weight: 4, arbitrary: fc.constant<Since>({ kind: 'current' }) },
  { weight: 1, arbitrary: fc.constant<Since>({ kind: 'none' }) },
  { weight: 2, arbitrary: fc.nat(20).map<Since>((pick) => ({ kind: 'stale', pick })) },
)

/** Steps; `deletes` weighs deletes and re-inserts against the other writes. */
function stepArb(deletes: number): fc.Arbitrary<Step> {
  const row = { r: rArb, id: idArb, qty: qtyArb, price: priceArb, note: noteArb }
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ k: fc.constant('insert' as const), ...row }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant('replace' as const), ...row }) },
    {
      weight: 6,
      arbitrary: fc.record({
        k: fc.constant('add' as const),
        r: rArb,
        id: idArb,
        dq: fc.integer({ min: -3, max: 3 }),
        dp: priceArb,
      }),
    },
    { weight: 1, arbitrary: fc.record({ k: fc.constant('set' as const), r: rArb, id: idArb, qty: qtyArb }) },
    { weight: 2, arbitrary: fc.record({ k: fc.constant('note' as const), r: rArb, id: idArb, note: noteArb }) },
    { weight: deletes, arbitrary: fc.record({ k: fc.constant('delete' as const), r: rArb, id: idArb }) },
    { weight: deletes, arbitrary: fc.record({ k: fc.constant('reinsert' as const), ...row }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant('rekey' as const), r: rArb, from: idArb, to: idArb }) },
    {
      weight: 1,
      arbitrary: fc.record({
        k: fc.constant('bad' as const),
        r: rArb,
        id: idArb,
        value: fc.constantFrom<string | Uint8Array>('x', '', new Uint8Array([1])),
      }),
    },
    {
      weight: 8,
      arbitrary: fc.record({
        k: fc.constant('sync' as const),
        from: rArb,
        to: rArb,
        since: sinceArb,
        dup: fc.boolean(),
        delay: fc.boolean(),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({ k: fc.constant('misdeliver' as const), from: rArb, to: rArb, via: rArb }),
    },
    { weight: 2, arbitrary: fc.record({ k: fc.constant('deliver' as const), pick: fc.nat(50) }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant('replay' as const), pick: fc.nat(50) }) },
  )
}

interface Program {
  sites: string[]
  steps: Step[]
  /** Order in which payloads still queued at the end are delivered. */
  drain: number[]
}

const programArb = (deletes: number): fc.Arbitrary<Program> =>
  fc.record({
    sites: fc.shuffledSubarray([...SITE_POOL], { minLength: REPLICAS, maxLength: REPLICAS }),
    steps: fc.array(stepArb(deletes), { minLength: 5, maxLength: 60, size: 'medium' }),
    drain: fc.array(fc.nat(50), { maxLength: 10 }),
  })

type Param = null | number | string | Uint8Array
const lit = (v: Param): string =>
  v === null
    ? 'null'
    : v instanceof Uint8Array
      ? `new Uint8Array([${[...v].join(', ')}])`
      : typeof v === 'string'
        ? JSON.stringify(v)
        : String(v)

type Payload = TracedPayload

/** The replicas of one run, with a trace of everything done to them (a runnable reproduction). */
class World {
  readonly replicas: Replica[]
  readonly trace: string[] = []
  readonly queue: (Payload & { to: number })[] = []
  /** Payloads delivered to the replica they were exported for: re-importing them must change nothing. */
  readonly delivered: (Payload & { to: number })[] = []
  readonly #exchange: TracedExchange
  /** Counters: per key, the sum of every difference any replica made (only meaningful for keys never deleted). */
  readonly expected = new Map<number, { qty: bigint; price: number }>()
  /** Keys some replica deleted (or moved) at least once. */
  readonly deleted = new Set<number>()
  /** Keys some replica inserted. */
  readonly inserted = new Set<number>()

  constructor(
    sites: readonly string[],
    readonly setup: Setup,
  ) {
    const options = { rows: setup.mode, ...(setup.counters && { columns: { qty: 'counter', price: 'counter' } }) }
    this.replicas = sites.map((siteId) => {
      const r = openReplica(':memory:', { siteId })
      r.db.exec(STOCK_DDL)
      r.enableSync('stock', options as Parameters<Replica['enableSync']>[1])
      return r
    })
    this.#exchange = new TracedExchange(this.replicas, this.trace)
    this.trace.push(
      `const R = [${sites.map((s) => `'${s}'`).join(', ')}].map((siteId) => { const r = openReplica(':memory:', { siteId }); r.db.exec(${JSON.stringify(STOCK_DDL)}); r.enableSync('stock', ${JSON.stringify(options)}); return r })`,
      'const P = []',
    )
  }

  sql(r: number, text: string, params: Param[] = []): number {
    this.trace.push(`R[${r}].db.prepare(${JSON.stringify(text)}).run(${params.map(lit).join(', ')})`)
    return this.replicas[r]!.db.prepare(text).run(...params).changes
  }

  /** Runs a write the replica must refuse with an error matching `pattern`. */
  refused(r: number, text: string, params: Param[], pattern: RegExp): void {
    this.trace.push(`R[${r}].db.prepare(${JSON.stringify(text)}).run(${params.map(lit).join(', ')}) // throws`)
    expect(() => this.replicas[r]!.db.prepare(text).run(...params)).toThrow(pattern)
  }

  row(r: number, id: number): { qty: bigint | number; price: number } | undefined {
    return this.replicas[r]!.db.prepare('SELECT qty, price FROM stock WHERE id = ?')
      .safeIntegers(true)
      .get(BigInt(id)) as { qty: bigint; price: number } | undefined
  }

  /** Records a counter difference made by a local write on a key. */
  contribute(id: number, dq: bigint, dp: number): void {
    this.inserted.add(id)
    const e = this.expected.get(id) ?? { qty: 0n, price: 0 }
    this.expected.set(id, { qty: e.qty + dq, price: e.price + dp })
  }

  export(from: number, to: number, since: Since): Payload {
    return this.#exchange.export(from, to, since)
  }

  import(to: number, p: Payload, addressed = true): { applied: number; conflicts: number } {
    const res = this.#exchange.import(to, p)
    if (addressed) this.delivered.push({ to, ...p })
    return res
  }

  /** Re-imports a payload its receiver already imported: it must change nothing. */
  reimport(d: Payload & { to: number }, why: string): void {
    this.trace.push(`R[${d.to}].importChanges(${d.name}) // again (${why}): expect applied 0`)
    const again = this.replicas[d.to]!.importChanges(d.payload)
    if (again.applied !== 0) {
      throw new Error(`re-import (${why}) of ${d.name} into R[${d.to}] applied ${again.applied}\n${this.report()}`)
    }
  }

  /** Every row of every replica, and its vector. */
  describe(): string {
    return this.replicas
      .map((r, i) =>
        [`R[${i}] (${r.siteId}) vector ${JSON.stringify(r.versionVector())}`, ...snapshot(r)].join('\n    '),
      )
      .join('\n')
  }

  report(): string {
    return `--- program ---\n${this.trace.join('\n')}\n--- state ---\n${this.describe()}`
  }

  close(): void {
    for (const r of this.replicas) r.close()
  }
}

/** Every row of `stock`, ordered by id, each column with its storage class. */
function snapshot(r: Replica): string[] {
  const rows = r.db
    .prepare(
      `SELECT id, qty, typeof(qty) AS tq, price, typeof(price) AS tp, note, typeof(note) AS tn
       FROM stock ORDER BY id`,
    )
    .safeIntegers(true)
    .all() as Record<string, unknown>[]
  return rows.map(
    (row) =>
      `id=${show(row.id)} qty=${show(row.qty)}:${row.tq} price=${show(row.price)}:${row.tp} note=${show(row.note)}:${row.tn}`,
  )
}

const INSERT = 'INSERT OR IGNORE INTO stock (id, qty, price, note) VALUES (?, ?, ?, ?)'
const REPLACE = 'INSERT OR REPLACE INTO stock (id, qty, price, note) VALUES (?, ?, ?, ?)'
const GROW_ONLY = /grow-only/

/** Deletes a row; in grow-only tables the delete of an existing row must be refused. True when a row went. */
function deleteRow(w: World, r: number, id: number): boolean {
  if (w.setup.mode === 'grow-only' && w.row(r, id)) {
    w.refused(r, 'DELETE FROM stock WHERE id = ?', [id], GROW_ONLY)
    return false
  }
  const gone = w.sql(r, 'DELETE FROM stock WHERE id = ?', [id]) === 1
  if (gone) w.deleted.add(id)
  return gone
}

function runStep(w: World, s: Step): void {
  switch (s.k) {
    case 'insert': {
      if (w.sql(s.r, INSERT, [s.id, s.qty, s.price, s.note]) === 1) w.contribute(s.id, BigInt(s.qty), s.price)
      return
    }
    case 'replace': {
      // A REPLACE of a live row fires no DELETE trigger: it is an update of every column.
      const old = w.row(s.r, s.id)
      w.sql(s.r, REPLACE, [s.id, s.qty, s.price, s.note])
      w.contribute(s.id, BigInt(s.qty) - BigInt(old?.qty ?? 0n), s.price - (old?.price ?? 0))
      return
    }
    case 'add': {
      const changed = w.sql(s.r, 'UPDATE stock SET qty = qty + ?, price = price + ? WHERE id = ?', [s.dq, s.dp, s.id])
      if (changed === 1) w.contribute(s.id, BigInt(s.dq), s.dp)
      return
    }
    case 'set': {
      const old = w.row(s.r, s.id)
      if (w.sql(s.r, 'UPDATE stock SET qty = ? WHERE id = ?', [s.qty, s.id]) === 1) {
        w.contribute(s.id, BigInt(s.qty) - BigInt(old!.qty), 0)
      }
      return
    }
    case 'note':
      w.sql(s.r, 'UPDATE stock SET note = ? WHERE id = ?', [s.note, s.id])
      return
    case 'delete':
      deleteRow(w, s.r, s.id)
      return
    case 'reinsert': {
      if (w.setup.mode === 'grow-only' && w.row(s.r, s.id)) {
        deleteRow(w, s.r, s.id)
        return
      }
      deleteRow(w, s.r, s.id)
      if (w.sql(s.r, INSERT, [s.id, s.qty, s.price, s.note]) === 1) w.contribute(s.id, BigInt(s.qty), s.price)
      return
    }
    case 'rekey': {
      if (s.from === s.to || !w.row(s.r, s.from)) return
      const text = 'UPDATE OR IGNORE stock SET id = ? WHERE id = ?'
      if (w.setup.mode === 'grow-only') {
        w.refused(s.r, text, [s.to, s.from], GROW_ONLY)
        return
      }
      if (w.sql(s.r, text, [s.to, s.from]) === 1) {
        w.deleted.add(s.from)
        w.deleted.add(s.to)
      }
      return
    }
    case 'bad': {
      // Counter columns take INTEGER or REAL only: the write is refused and changes nothing.
      if (!w.setup.counters || !w.row(s.r, s.id)) return
      w.refused(s.r, 'UPDATE stock SET qty = ? WHERE id = ?', [s.value, s.id], /^sqlite-converge:/)
      w.refused(s.r, 'UPDATE stock SET price = ?, qty = qty + 1 WHERE id = ?', [s.value, s.id], /^sqlite-converge:/)
      w.refused(s.r, INSERT.replace('OR IGNORE ', ''), [s.id + 100, s.value, 0, null], /^sqlite-converge:/)
      return
    }
    case 'sync': {
      const [from, to] = [s.from, s.to]
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
    case 'misdeliver': {
      if (s.from === s.to || s.from === s.via || s.to === s.via) return
      w.import(s.via, w.export(s.from, s.to, { kind: 'current' }), false)
      return
    }
    case 'deliver': {
      if (w.queue.length === 0) return
      const [q] = w.queue.splice(s.pick % w.queue.length, 1)
      w.import(q!.to, q!)
      return
    }
    case 'replay': {
      if (w.delivered.length === 0) return
      w.reimport(w.delivered[s.pick % w.delivered.length]!, 'late replay')
      return
    }
  }
}

/**
 * Full pairwise exchanges until a round applies nothing anywhere and moves no vector
 * (resurrections and re-deletions are local writes made during an import, which the next
 * round carries). Returns the number of rounds, or -1 when MAX_ROUNDS did not suffice.
 */
function exchangeUntilQuiet(replicas: readonly Replica[], onPayload?: (to: number, p: Uint8Array) => void): number {
  for (let round = 1; round <= MAX_ROUNDS; round++) {
    const before = replicas.map((r) => r.versionVector())
    let applied = 0
    for (let i = 0; i < replicas.length; i++)
      for (let j = 0; j < replicas.length; j++) {
        if (i === j) continue
        const p = replicas[i]!.exportChanges(replicas[j]!.versionVector())
        applied += replicas[j]!.importChanges(p).applied
        onPayload?.(j, p)
      }
    const after = replicas.map((r) => r.versionVector())
    if (applied === 0 && before.every((v, i) => sameVector(v, after[i]!))) return round
  }
  return -1
}

let open: World[] = []
/** Replicas of the scenario tests below. */
let scenarioReplicas: Replica[] = []
afterEach(() => {
  for (const w of open) w.close()
  open = []
  for (const r of scenarioReplicas) r.close()
  scenarioReplicas = []
})

/** Runs a program, drains the queue, exchanges until quiet; checks agreement, idempotence and counters. */
function checkProgram(setup: Setup, { sites, steps, drain }: Program): void {
  const w = new World(sites, setup)
  open.push(w)
  try {
    for (const s of steps) runStep(w, s)
    for (const pick of drain) {
      if (w.queue.length === 0) break
      const [q] = w.queue.splice(pick % w.queue.length, 1)
      w.import(q!.to, q!)
    }
    while (w.queue.length) w.import(w.queue[0]!.to, w.queue.shift()!)
    let n = 0
    const rounds = exchangeUntilQuiet(w.replicas, (to, payload) => {
      w.delivered.push({ to, payload, name: `Q[${n++}]` })
    })
    w.trace.push(
      '// exchange until a round changes nothing:',
      `for (let k = 0; k < ${rounds}; k++) for (const a of R) for (const b of R) if (a !== b) b.importChanges(a.exportChanges(b.versionVector()))`,
    )
    if (rounds < 0) throw new Error(`no quiescence after ${MAX_ROUNDS} rounds of full exchange\n${w.report()}`)
    const snaps = w.replicas.map(snapshot)
    const vectors = w.replicas.map((r) => r.versionVector())
    for (let i = 1; i < w.replicas.length; i++) {
      if (JSON.stringify(snaps[i]) !== JSON.stringify(snaps[0]) || !sameVector(vectors[i]!, vectors[0]!)) {
        throw new Error(`replicas differ after exchanging until quiet\n${w.report()}`)
      }
    }
    // every payload ever delivered to its addressee is now old news
    for (const d of w.delivered) w.reimport(d, 'after convergence')
    expect(w.replicas.map(snapshot)).toEqual(snaps)
    if (setup.mode === 'grow-only') {
      // nothing is ever lost: every key some replica inserted is there
      const ids = snapshot(w.replicas[0]!).length
      if (ids !== w.inserted.size)
        throw new Error(`grow-only: ${ids} rows, ${w.inserted.size} keys inserted\n${w.report()}`)
    }
    if (setup.mode === 'add-wins' || setup.mode === 'grow-only') {
      // no edit ever loses to a deletion
      for (const r of w.replicas) expect(r.conflicts().filter((c) => c.kind === 'delete')).toEqual([])
    }
    if (setup.counters) {
      // counters hold what the app writes to them: integers in qty, reals in price
      for (const r of w.replicas) {
        expect(
          r.db
            .prepare("SELECT count(*) AS n FROM stock WHERE typeof(qty) <> 'integer' OR typeof(price) <> 'real'")
            .get(),
        ).toEqual({ n: 0 })
      }
      // the counter invariant: a key never deleted holds the sum of every replica's differences
      for (const [id, e] of w.expected) {
        if (w.deleted.has(id)) continue
        for (let i = 0; i < w.replicas.length; i++) {
          const row = w.replicas[i]!.db.prepare(
            'SELECT qty, typeof(qty) AS tq, price, typeof(price) AS tp FROM stock WHERE id = ?',
          )
            .safeIntegers(true)
            .get(BigInt(id)) as { qty: bigint; tq: string; price: number; tp: string } | undefined
          const ok = row !== undefined && row.tq === 'integer' && row.qty === e.qty && row.price === e.price
          if (!ok) {
            throw new Error(
              `counter invariant: R[${i}] key ${id} holds ${row ? `qty=${show(row.qty)}:${row.tq} price=${show(row.price)}:${row.tp}` : 'no row'}, expected qty=${e.qty} price=${e.price}\n${w.report()}`,
            )
          }
        }
      }
    }
  } finally {
    w.close()
    open = open.filter((x) => x !== w)
  }
}

/** Runs per end-to-end property; raise with CONVERGE_RUNS for a longer hunt. */
const E2E_RUNS = Number(process.env.CONVERGE_RUNS ?? 60)

describe('counters converge and add up', () => {
  it.each<Mode>(['causal', 'add-wins', 'delete-wins', 'grow-only'])(
    "rows: '%s': every replica ends with the same rows, and a key never deleted holds the sum of all differences",
    (mode) => {
      fc.assert(
        fc.property(programArb(1), (p) => checkProgram({ mode, counters: true }, p)),
        {
          numRuns: mode === 'causal' ? E2E_RUNS : Math.ceil(E2E_RUNS / 2),
          ...(process.env.SEED && { seed: Number(process.env.SEED) }),
        },
      )
    },
  )
})

describe('row modes converge', () => {
  it.each<Mode>(['causal', 'add-wins', 'delete-wins'])(
    "rows: '%s' (last-writer-wins columns): every replica ends with the same rows and vector",
    (mode) => {
      fc.assert(
        fc.property(programArb(4), (p) => checkProgram({ mode, counters: false }, p)),
        { numRuns: E2E_RUNS },
      )
    },
  )
})

// ---------------------------------------------------------------------------------------
// Scenarios: what each row mode does with a deletion and a concurrent write
// ---------------------------------------------------------------------------------------

/** `count` replicas (sites in SITE_POOL order) with `stock` synced in `mode`. */
function openStock(mode: Mode, count: number, counters = false): Replica[] {
  const options = { rows: mode, ...(counters && { columns: { qty: 'counter', price: 'counter' } }) }
  const rs = SITE_POOL.slice(0, count).map((siteId) => {
    const r = openReplica(':memory:', { siteId })
    r.db.exec(STOCK_DDL)
    r.enableSync('stock', options as Parameters<Replica['enableSync']>[1])
    return r
  })
  scenarioReplicas.push(...rs)
  return rs
}

function send(from: Replica, to: Replica): { applied: number; conflicts: number } {
  return to.importChanges(from.exportChanges(to.versionVector()))
}

function stockRow(r: Replica, id = 1): unknown {
  return r.db.prepare('SELECT id, qty, price, note FROM stock WHERE id = ?').get(id)
}

function expectQuiet(rs: readonly Replica[]): void {
  expect(exchangeUntilQuiet(rs)).toBeGreaterThan(0)
  const snaps = rs.map(snapshot)
  for (const s of snaps) expect(s).toEqual(snaps[0])
}

/**
 * Three replicas all holding row 1 (qty 10, note 'x'); `concurrent` then writes on A and B
 * without exchanging; the two meet in `order` (C, which saw neither, relays in 'via C'),
 * and everything is exchanged until quiet.
 */
type Order = 'A to B first' | 'B to A first' | 'crossed' | 'via C'
const ORDERS: Order[] = ['A to B first', 'B to A first', 'crossed', 'via C']

function scenario(
  mode: Mode,
  order: Order,
  concurrent: (a: Replica, b: Replica) => void,
  counters = false,
): [Replica, Replica, Replica] {
  const [a, b, c] = openStock(mode, 3, counters) as [Replica, Replica, Replica]
  a.db.exec("INSERT INTO stock (id, qty, price, note) VALUES (1, 10, 2.5, 'x')")
  send(a, b)
  send(a, c)
  concurrent(a, b)
  if (order === 'A to B first') send(a, b)
  else if (order === 'B to A first') send(b, a)
  else if (order === 'crossed') {
    const fromA = a.exportChanges(b.versionVector())
    const fromB = b.exportChanges(a.versionVector())
    b.importChanges(fromA)
    a.importChanges(fromB)
  } else {
    send(a, c)
    send(c, b)
    send(b, c)
    send(c, a)
  }
  expectQuiet([a, b, c])
  return [a, b, c]
}

const deleteOnA = (a: Replica) => a.db.exec('DELETE FROM stock WHERE id = 1')

describe("rows: 'add-wins'", () => {
  it.each(ORDERS)(
    'a delete on A concurrent with an update on B: the row lives everywhere with B’s values (%s)',
    (order) => {
      const rs = scenario('add-wins', order, (a, b) => {
        deleteOnA(a)
        b.db.exec("UPDATE stock SET note = 'b', qty = 7 WHERE id = 1")
      })
      for (const r of rs) expect(stockRow(r)).toEqual({ id: 1, qty: 7, price: 2.5, note: 'b' })
      // an edit that beats a deletion loses nothing: no 'delete' conflict is logged
      for (const r of rs) expect(r.conflicts().filter((c) => c.kind === 'delete')).toEqual([])
    },
  )

  it('the replica holding the update keeps the row as soon as it receives the delete', () => {
    const [a, b] = openStock('add-wins', 2) as [Replica, Replica]
    a.db.exec("INSERT INTO stock (id, note) VALUES (1, 'x')")
    send(a, b)
    deleteOnA(a)
    b.db.exec("UPDATE stock SET note = 'b' WHERE id = 1")
    send(a, b)
    expect(stockRow(b)).toEqual({ id: 1, qty: 0, price: 0, note: 'b' })
    send(b, a)
    expect(stockRow(a)).toEqual({ id: 1, qty: 0, price: 0, note: 'b' })
  })

  it.each(ORDERS)('with counters: the surviving row keeps B’s counted value (%s)', (order) => {
    const rs = scenario(
      'add-wins',
      order,
      (a, b) => {
        deleteOnA(a)
        b.db.exec('UPDATE stock SET qty = qty + 3, price = price - 0.5 WHERE id = 1')
      },
      true,
    )
    for (const r of rs) expect(stockRow(r)).toEqual({ id: 1, qty: 13, price: 2, note: 'x' })
    // and it keeps counting from there
    rs[0]!.db.exec('UPDATE stock SET qty = qty - 1 WHERE id = 1')
    rs[2]!.db.exec('UPDATE stock SET qty = qty - 2 WHERE id = 1')
    expectQuiet(rs)
    for (const r of rs) expect(stockRow(r)).toMatchObject({ qty: 10 })
  })

  it('a delete that saw the update wins, as in causal rows', () => {
    const [a, b] = openStock('add-wins', 2) as [Replica, Replica]
    a.db.exec("INSERT INTO stock (id, note) VALUES (1, 'x')")
    send(a, b)
    b.db.exec("UPDATE stock SET note = 'b' WHERE id = 1")
    send(b, a)
    deleteOnA(a)
    expectQuiet([a, b])
    expect(stockRow(a)).toBeUndefined()
    expect(stockRow(b)).toBeUndefined()
  })
})

describe("rows: 'delete-wins'", () => {
  it.each(ORDERS)('A deletes while B deletes and re-inserts: the row is gone everywhere (%s)', (order) => {
    const rs = scenario('delete-wins', order, (a, b) => {
      deleteOnA(a)
      b.db.exec('DELETE FROM stock WHERE id = 1')
      b.db.exec("INSERT INTO stock (id, qty, note) VALUES (1, 5, 'b2')")
    })
    for (const r of rs) expect(stockRow(r)).toBeUndefined()
  })

  it.each(ORDERS)('a delete on A concurrent with an update on B: the row is gone everywhere (%s)', (order) => {
    const rs = scenario('delete-wins', order, (a, b) => {
      deleteOnA(a)
      b.db.exec("UPDATE stock SET note = 'b' WHERE id = 1")
    })
    for (const r of rs) expect(stockRow(r)).toBeUndefined()
  })

  it('A deletes, B receives the delete and then re-inserts: the row lives everywhere with B’s values', () => {
    const [a, b, c] = openStock('delete-wins', 3) as [Replica, Replica, Replica]
    a.db.exec("INSERT INTO stock (id, qty, note) VALUES (1, 10, 'x')")
    send(a, b)
    send(a, c)
    deleteOnA(a)
    send(a, b)
    b.db.exec("INSERT INTO stock (id, qty, note) VALUES (1, 5, 'b2')")
    expectQuiet([a, b, c])
    for (const r of [a, b, c]) expect(stockRow(r)).toEqual({ id: 1, qty: 5, price: 0, note: 'b2' })
  })

  it('a re-insert that saw one deletion of the life but not a concurrent second one loses', () => {
    const [a, b, c] = openStock('delete-wins', 3) as [Replica, Replica, Replica]
    a.db.exec("INSERT INTO stock (id, qty, note) VALUES (1, 10, 'x')")
    send(a, b)
    send(a, c)
    deleteOnA(a)
    c.db.exec('DELETE FROM stock WHERE id = 1')
    send(a, b)
    b.db.exec("INSERT INTO stock (id, qty, note) VALUES (1, 5, 'b2')")
    expectQuiet([a, b, c])
    for (const r of [a, b, c]) expect(stockRow(r)).toBeUndefined()
  })
})

describe("rows: 'causal' (the default), for contrast", () => {
  it.each(ORDERS)('a re-insertion concurrent with a delete is a newer life and wins (%s)', (order) => {
    const rs = scenario('causal', order, (a, b) => {
      deleteOnA(a)
      b.db.exec('DELETE FROM stock WHERE id = 1')
      b.db.exec("INSERT INTO stock (id, qty, note) VALUES (1, 5, 'b2')")
    })
    for (const r of rs) expect(stockRow(r)).toEqual({ id: 1, qty: 5, price: 0, note: 'b2' })
  })

  it.each(ORDERS)('a delete beats a concurrent update, which is logged as a delete conflict (%s)', (order) => {
    const rs = scenario('causal', order, (a, b) => {
      deleteOnA(a)
      b.db.exec("UPDATE stock SET note = 'b' WHERE id = 1")
    })
    for (const r of rs) expect(stockRow(r)).toBeUndefined()
    const logged = rs.flatMap((r) => r.conflicts())
    expect(logged.length).toBeGreaterThan(0)
    for (const c of logged) expect(c).toMatchObject({ kind: 'delete', column: 'note', lost: 'b', kept: null })
  })
})

describe("rows: 'grow-only'", () => {
  it('DELETE and key changes are refused; INSERT OR REPLACE of the same key is an update; rows sync', () => {
    const [a, b] = openStock('grow-only', 2) as [Replica, Replica]
    a.db.exec("INSERT INTO stock (id, qty, price, note) VALUES (1, 10, 1.5, 'x')")
    a.db.exec("INSERT INTO stock (id, note) VALUES (2, 'y')")
    send(a, b)
    for (const r of [a, b]) {
      expect(() => r.db.exec('DELETE FROM stock WHERE id = 1')).toThrow(GROW_ONLY)
      expect(() => r.db.exec('DELETE FROM stock')).toThrow(GROW_ONLY)
      expect(() => r.db.exec('UPDATE stock SET id = 3 WHERE id = 1')).toThrow(GROW_ONLY)
      expect(() => r.db.exec('UPDATE stock SET id = id + 10')).toThrow(GROW_ONLY)
      expect(r.db.prepare('SELECT count(*) AS n FROM stock').get()).toEqual({ n: 2 })
    }
    a.db.exec("INSERT OR REPLACE INTO stock (id, qty, price, note) VALUES (1, 12, 1.5, 'r')")
    b.db.exec("UPDATE stock SET note = 'z' WHERE id = 2")
    b.db.exec("INSERT INTO stock (id, note) VALUES (3, 'w')")
    expectQuiet([a, b])
    for (const r of [a, b]) {
      expect(r.db.prepare('SELECT id, qty, price, note FROM stock ORDER BY id').all()).toEqual([
        { id: 1, qty: 12, price: 1.5, note: 'r' },
        { id: 2, qty: 0, price: 0, note: 'z' },
        { id: 3, qty: 0, price: 0, note: 'w' },
      ])
      expect(r.conflicts()).toEqual([])
    }
  })

  it('with counters, INSERT OR REPLACE records the difference to the value it replaced', () => {
    const [a, b] = openStock('grow-only', 2, true) as [Replica, Replica]
    a.db.exec('INSERT INTO stock (id, qty, price) VALUES (1, 5, 1)')
    send(a, b)
    b.db.exec('UPDATE stock SET qty = qty + 2, price = price + 0.25 WHERE id = 1')
    a.db.exec("INSERT OR REPLACE INTO stock (id, qty, price, note) VALUES (1, 10, 3, 'r')")
    expectQuiet([a, b])
    for (const r of [a, b]) expect(stockRow(r)).toEqual({ id: 1, qty: 12, price: 3.25, note: 'r' })
  })
})

describe('counters: scenarios', () => {
  it('three replicas changing one counter concurrently end with the sum of their changes', () => {
    const [a, b, c] = openStock('causal', 3, true) as [Replica, Replica, Replica]
    a.db.exec('INSERT INTO stock (id, qty, price) VALUES (1, 10, 100)')
    send(a, b)
    send(a, c)
    a.db.exec('UPDATE stock SET qty = qty - 1 WHERE id = 1')
    b.db.exec('UPDATE stock SET qty = qty - 2, price = price * 2 WHERE id = 1')
    c.db.exec('UPDATE stock SET qty = 15, price = price - 0.5 WHERE id = 1')
    expectQuiet([a, b, c])
    for (const r of [a, b, c]) expect(stockRow(r)).toEqual({ id: 1, qty: 12, price: 199.5, note: null })
  })

  it('only INTEGER or REAL values are taken; a refused write changes nothing', () => {
    const [a, b] = openStock('causal', 2, true) as [Replica, Replica]
    a.db.exec('INSERT INTO stock (id, qty, price) VALUES (1, 10, 1)')
    for (const bad of ["'x'", "''", "X'00'", 'NULL']) {
      expect(() => a.db.exec(`UPDATE stock SET qty = ${bad} WHERE id = 1`)).toThrow(/^sqlite-converge:|NOT NULL/)
      expect(() => a.db.exec(`UPDATE stock SET price = ${bad}, qty = qty + 1 WHERE id = 1`)).toThrow(
        /^sqlite-converge:|NOT NULL/,
      )
      expect(() => a.db.exec(`INSERT INTO stock (id, qty) VALUES (2, ${bad})`)).toThrow(/^sqlite-converge:|NOT NULL/)
    }
    expect(() => a.db.exec("UPDATE stock SET qty = 'x' WHERE id = 1")).toThrow(/^sqlite-converge:/)
    expectQuiet([a, b])
    for (const r of [a, b]) {
      expect(r.db.prepare('SELECT id, qty, price FROM stock').all()).toEqual([{ id: 1, qty: 10, price: 1 }])
    }
  })
})

// Regressions: each of these failed before its fix (the message says how).
describe('regressions found by the properties', () => {
  it('a REAL counter converges when the written value is not the exact sum of its parts (A keeps 0.10000000000000009, B 0.1)', () => {
    const [a, b] = openStock('causal', 2, true) as [Replica, Replica]
    a.db.exec('INSERT INTO stock (id, price) VALUES (1, 3)')
    send(a, b)
    // B's part becomes 0.1 - 3 = -2.9; summed in site order, 3 + -2.9 = 0.10000000000000009
    b.db.exec('UPDATE stock SET price = 0.1 WHERE id = 1')
    expectQuiet([a, b])
  })

  it('add-wins counters: an edit relayed to a third replica before the delete reaches it counts once (not 26)', () => {
    const [a, b, c] = openStock('add-wins', 3, true) as [Replica, Replica, Replica]
    a.db.exec('INSERT INTO stock (id, qty) VALUES (1, 10)')
    send(a, b)
    send(a, c)
    deleteOnA(a)
    b.db.exec('UPDATE stock SET qty = qty + 3 WHERE id = 1')
    send(b, c)
    // B and C both hold the edit the delete did not see: both revive the row, each as a
    // new insert whose own part is the whole value 13, so the counter ends at 13 + 13
    send(a, c)
    send(a, b)
    expectQuiet([a, b, c])
    for (const r of [a, b, c]) expect(stockRow(r)).toMatchObject({ qty: 13 })
  })

  it('add-wins: an update concurrent with a delete survives even when the deleter wrote another column later', () => {
    const [a, b] = openStock('add-wins', 2) as [Replica, Replica]
    a.db.exec("INSERT INTO stock (id, note) VALUES (1, 'x')")
    send(a, b)
    b.db.exec("UPDATE stock SET note = 'b' WHERE id = 1")
    b.versionVector()
    // A's next write gets a later HLC than B's update, which A has not seen
    const t = Date.now()
    while (Date.now() <= t + 1) {}
    a.db.exec('UPDATE stock SET price = 1 WHERE id = 1')
    a.versionVector()
    // the tombstone's `seen` is A's price write, newer than B's note write, so the merge
    // takes B's write as seen by the deleter: no revival (and, in causal rows, no conflict)
    deleteOnA(a)
    expectQuiet([a, b])
    for (const r of [a, b]) expect(stockRow(r)).toEqual({ id: 1, qty: 0, price: 0, note: 'b' })
  })

  it('an INTEGER counter whose parts sum past 2^63 does not make every import fail with a RangeError', () => {
    const [a, b] = openStock('causal', 2, true) as [Replica, Replica]
    a.db.exec('INSERT INTO stock (id, qty) VALUES (1, 0)')
    send(a, b)
    a.db.exec('UPDATE stock SET qty = 5000000000000000000 WHERE id = 1')
    b.db.exec('UPDATE stock SET qty = 5000000000000000000 WHERE id = 1')
    // the merged sum 10^19 cannot be bound as an INTEGER: "The bound string, buffer, or bigint is too big"
    expectQuiet([a, b])
  })

  it('an INTEGER counter part past 2^63 does not make the sender’s payloads BAD_PAYLOAD for good', () => {
    const [a, b] = openStock('causal', 2, true) as [Replica, Replica]
    a.db.exec('INSERT INTO stock (id, qty) VALUES (1, -9000000000000000000)')
    send(a, b)
    // B's part is 9e18 - (-9e18) = 1.8e19: exported as is, refused as "integer out of range"
    b.db.exec('UPDATE stock SET qty = 9000000000000000000 WHERE id = 1')
    expectQuiet([a, b])
  })
})
