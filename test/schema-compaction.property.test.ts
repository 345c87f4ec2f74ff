// Property tests of living schemas and compaction, end to end: random programs of plain
// SQL writes, `ALTER TABLE t ADD COLUMN` at each replica's own moment, compactions,
// forgotten peers, a replica that stays away for a long stretch, and (stale, duplicated,
// delayed) exchanges on three in-memory replicas. At the end every replica adds the
// columns it lacks, everything is exchanged until quiet, and the replicas must agree.
//
// Keys 1..3 are each written by one replica only (key k by R[k-1]): there is no
// concurrency on them, so every replica must end with exactly the row its owner holds
// (a value written to an added column is not lost, a deleted row stays deleted) and
// nobody logs a conflict about them. Keys 4..6 are free for all (convergence only; in
// compaction programs somewhat restricted while pinned bugs stand, see RESTRICT). Every
// cell must hold a value some replica wrote to that key and column, or the default.
// On failure the error prints a replayable program (plain calls on R[0..2]).
import fc from 'fast-check'
import { type Conflict, openReplica, type Replica } from 'sqlite-converge'
import { afterEach, describe, expect, it } from 'vitest'
import { SITE_POOL, type Since, sameVector, show, TracedExchange, type TracedPayload } from './helpers/replicas.js'

const DDL = 'CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)'
/** Columns every replica adds, in this order, each at its own moment. */
const ADDED = [
  { name: 'c', ddl: "ALTER TABLE t ADD COLUMN c TEXT DEFAULT 'd'" },
  { name: 'e', ddl: 'ALTER TABLE t ADD COLUMN e INTEGER' },
] as const
const BASE = ['a', 'b'] as const
const REPLICAS = 3
const MAX_ROUNDS = 10
/** Keys 1..OWNED are written by R[key - 1] only; the others by anyone. */
const OWNED = 3
const KEYS = 6
/** Runs per property; raise with CONVERGE_RUNS for a longer hunt. */
const RUNS = Number(process.env.CONVERGE_RUNS ?? 200)
/** SEED (and FC_PATH) replay a failure fast-check reported. */
const REPLAY = process.env.SEED ? { seed: Number(process.env.SEED), path: process.env.FC_PATH } : {}

/**
 * Bugs once pinned below ('pinned bugs, now fixed') shaped these restrictions, and the
 * compaction programs still steer clear of what they covered (CONVERGE_UNRESTRICTED=1 lifts
 * every restriction; a hunt of 2,400 unrestricted runs per property found no divergence,
 * and one program where forgetting an active peer lost a deletion, a documented limit):
 * - A compacted tombstone loses to a life of the same causal length started concurrently
 *   elsewhere; and a complete snapshot turns a deletion into the receiver's own deletion
 *   at the receiver's next causal length, so an edit of a later life the deletion ended
 *   brings the row back. So each key has one replica that starts its lives (insert,
 *   re-insert, replace) and deletes it: its owner for keys 1..OWNED, R[(key - 1) % 3] for
 *   the others, which the other replicas only update, in column b alone (one column never
 *   makes a row life whole, so their edits cannot bring a deleted life back).
 * - A replica that lacked a column when it received a row's life (so its vector, hence
 *   its compaction floor, does not cover that life) brings the row back from a stale copy
 *   once it compacted the row's tombstone. So with living schemas only R[1] compacts, and
 *   it adds every column first.
 * - A complete snapshot turns the deletion into the receiver's own, which claims only what
 *   the receiver had seen of the row (nothing of a column it lacks, no edit it had not
 *   received): third replicas that hold more log it as lost to that deletion, even on a key
 *   only one replica writes (a documented limit; rows still converge). So in compaction
 *   programs the no-conflict check on single-writer keys ignores 'delete' conflicts kept
 *   by a replica other than the key's writer.
 */
const RESTRICT = process.env.CONVERGE_UNRESTRICTED !== '1'

// ---------------------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------------------

type Value = null | number | string
interface Row {
  a: Value
  b: Value
  c: Value
  e: Value
  /** Whether an INSERT names c / e (when the replica has them); otherwise they take their defaults. */
  withC: boolean
  withE: boolean
}
type Step =
  | { k: 'insert'; r: number; id: number; row: Row }
  | { k: 'replace'; r: number; id: number; row: Row }
  | { k: 'reinsert'; r: number; id: number; row: Row }
  | { k: 'update'; r: number; id: number; col: number; v: Value; col2: number; v2: Value; two: boolean }
  | { k: 'delete'; r: number; id: number }
  /** The replica adds its next column; `look`: the engine notices at once (else at its next call). */
  | { k: 'alter'; r: number; look: boolean }
  | { k: 'sync'; from: number; to: number; since: Since; dup: boolean; delay: boolean }
  /** A full round of current exchanges between every pair of replicas not away. */
  | { k: 'gossip' }
  /** A payload exported for `to`, imported by `via`. */
  | { k: 'misdeliver'; from: number; to: number; via: number }
  | { k: 'deliver'; pick: number }
  | { k: 'replay'; pick: number }
  /** `forgetAll`: first stop waiting for every peer (they are still active). */
  | { k: 'compact'; r: number; forgetAll: boolean }
  | { k: 'forget'; r: number; peer: number; away: boolean }

interface Setup {
  /** ALTER TABLE ADD COLUMN steps (and every replica adds what it lacks at the end). */
  readonly schema: boolean
  /** compact() and forgetPeer() steps, autoCompact, and a replica away for a stretch. */
  readonly compaction: boolean
}

interface Program {
  sites: string[]
  autoCompact: (false | number)[]
  /** Steps [start, start + len) during which R[r] exchanges with nobody. */
  away: { r: number; start: number; len: number } | null
  steps: Step[]
  /** Order in which payloads still queued at the end are delivered. */
  drain: number[]
}

const rArb = fc.nat(REPLICAS - 1)
/** Biased to the contended keys 4..5 and the owned keys 1..2. */
const idArb = fc.oneof(
  { weight: 2, arbitrary: fc.constantFrom(1, 2, 4, 5) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: KEYS }) },
)
/** Every storage class, in columns of TEXT and INTEGER affinity (7 becomes '7' in a TEXT column...). */
const valueArb = fc.constantFrom<Value>(null, 'x', 'y', '', 'p', 7, 0, -3, 2.5, 2 ** 40, '12')
const rowArb: fc.Arbitrary<Row> = fc.record({
  a: valueArb,
  b: valueArb,
  c: valueArb,
  e: valueArb,
  withC: fc.boolean(),
  withE: fc.boolean(),
})
const sinceArb: fc.Arbitrary<Since> = fc.oneof(
  { weight: 5, arbitrary: fc.constant<Since>({ kind: 'current' }) },
  { weight: 1, arbitrary: fc.constant<Since>({ kind: 'none' }) },
  { weight: 2, arbitrary: fc.nat(20).map<Since>((pick) => ({ kind: 'stale', pick })) },
)

function stepArb(setup: Setup): fc.Arbitrary<Step> {
  const row = { r: rArb, id: idArb, row: rowArb }
  const arbs: fc.WeightedArbitrary<Step>[] = [
    { weight: 4, arbitrary: fc.record({ k: fc.constant('insert' as const), ...row }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant('replace' as const), ...row }) },
    { weight: 2, arbitrary: fc.record({ k: fc.constant('reinsert' as const), ...row }) },
    {
      weight: 6,
      arbitrary: fc.record({
        k: fc.constant('update' as const),
        r: rArb,
        id: idArb,
        col: fc.nat(3),
        v: valueArb,
        col2: fc.nat(3),
        v2: valueArb,
        two: fc.boolean(),
      }),
    },
    { weight: 3, arbitrary: fc.record({ k: fc.constant('delete' as const), r: rArb, id: idArb }) },
    {
      weight: 9,
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
  ]
  if (setup.schema) {
    arbs.push({ weight: 2, arbitrary: fc.record({ k: fc.constant('alter' as const), r: rArb, look: fc.boolean() }) })
  }
  if (setup.compaction) {
    arbs.push(
      { weight: 2, arbitrary: fc.constant<Step>({ k: 'gossip' }) },
      {
        weight: 3,
        arbitrary: fc.record({
          k: fc.constant('compact' as const),
          r: rArb,
          forgetAll: fc.nat(2).map((x) => x === 0),
        }),
      },
      { weight: 2, arbitrary: fc.record({ k: fc.constant('delete' as const), r: rArb, id: idArb }) },
      {
        weight: 2,
        arbitrary: fc.record({ k: fc.constant('forget' as const), r: rArb, peer: rArb, away: fc.boolean() }),
      },
    )
  }
  return fc.oneof(...arbs)
}

const programArb = (setup: Setup): fc.Arbitrary<Program> =>
  fc.record({
    sites: fc.shuffledSubarray([...SITE_POOL], { minLength: REPLICAS, maxLength: REPLICAS }),
    autoCompact: fc.array(
      setup.compaction ? fc.oneof(fc.constant<false>(false), fc.integer({ min: 1, max: 4 })) : fc.constant(false),
      { minLength: REPLICAS, maxLength: REPLICAS },
    ),
    away: setup.compaction
      ? fc.option(fc.record({ r: rArb, start: fc.nat(30), len: fc.integer({ min: 10, max: 60 }) }), { nil: null })
      : fc.constant(null),
    steps: fc.array(stepArb(setup), { minLength: 5, maxLength: setup.compaction ? 90 : 70, size: 'medium' }),
    drain: fc.array(fc.nat(50), { maxLength: 10 }),
  })

// ---------------------------------------------------------------------------------------
// Running a program (with a trace that replays it)
// ---------------------------------------------------------------------------------------

const lit = (v: Value | string): string => (v === null ? 'null' : typeof v === 'string' ? JSON.stringify(v) : String(v))

/** The columns of `t` on a replica, in table order. */
function columnsOf(r: Replica): string[] {
  return (r.db.prepare(`SELECT name FROM pragma_table_info('t') ORDER BY cid`).all() as { name: string }[]).map(
    (c) => c.name,
  )
}

/** Every row of `t` (SELECT * with each column's storage class), ordered by id, keyed by id. */
function rowsOf(r: Replica): Map<number, string> {
  const cols = columnsOf(r)
  const rows = r.db
    .prepare(`SELECT ${cols.map((c) => `${c}, typeof(${c}) AS "type_${c}"`).join(', ')} FROM t ORDER BY id`)
    .safeIntegers(true)
    .all() as Record<string, unknown>[]
  return new Map(
    rows.map((row) => [Number(row.id), cols.map((c) => `${c}=${show(row[c])}:${row[`type_${c}`]}`).join(' ')]),
  )
}

const snapshot = (r: Replica): string[] => [...rowsOf(r).values()]

/** Per column, the value and class of one row as written, for the "no invented values" check. */
function cellsOf(r: Replica, id: number): [string, string][] | undefined {
  const cols = columnsOf(r).filter((c) => c !== 'id')
  const row = r.db
    .prepare(`SELECT ${cols.map((c) => `${c}, typeof(${c}) AS "type_${c}"`).join(', ')} FROM t WHERE id = ?`)
    .safeIntegers(true)
    .get(id) as Record<string, unknown> | undefined
  return row && cols.map((c) => [c, `${show(row[c])}:${row[`type_${c}`]}`])
}

interface Delivery {
  to: number
  payload: Uint8Array
  name: string
  /** Columns the receiver had added when it imported the payload. */
  cols: number
}

/** Conflicts that must not exist: about keys only one replica writes (nothing was concurrent). */
function ownedConflicts(w: World, r: Replica): Conflict[] {
  return r.conflicts().filter((c) => {
    const id = Number(c.pk[0])
    if (id > OWNED) return false
    // See RESTRICT (the last item): a deletion re-stamped by a complete snapshot's receiver.
    const restamped = c.kind === 'delete' && c.keptSite !== w.program.sites[writer(id, 0)]
    return !(w.restricted && restamped)
  })
}

class World {
  readonly replicas: Replica[]
  /** Columns of ADDED each replica has added so far. */
  readonly cols: number[]
  readonly trace: string[] = []
  readonly queue: Omit<Delivery, 'cols'>[] = []
  readonly delivered: Delivery[] = []
  /** Per `${id}:${column}`, every value (with class) a replica held right after writing the row. */
  readonly written = new Map<string, Set<string>>()
  readonly #exchange: TracedExchange
  /** The replica currently away (exchanges with nobody), or -1. */
  away = -1
  /** See RESTRICT. */
  readonly restricted: boolean

  constructor(
    readonly setup: Setup,
    readonly program: Program,
  ) {
    this.restricted = setup.compaction && RESTRICT
    const { sites } = program
    const autoCompact = program.autoCompact.map((a, i) => (this.compacts(i) ? a : false))
    this.replicas = sites.map((siteId, i) => {
      const r = openReplica(':memory:', { siteId, autoCompact: autoCompact[i] ?? false })
      r.db.exec(DDL)
      r.enableSync('t')
      return r
    })
    this.cols = sites.map(() => 0)
    this.#exchange = new TracedExchange(this.replicas, this.trace)
    this.trace.push(
      `const auto = ${JSON.stringify(autoCompact)}`,
      `const R = [${sites.map((s) => `'${s}'`).join(', ')}].map((siteId, i) => { const r = openReplica(':memory:', { siteId, autoCompact: auto[i] }); r.db.exec(${JSON.stringify(DDL)}); r.enableSync('t'); return r })`,
      'const P = []',
    )
  }

  /** Whether R[r] compacts (see RESTRICT). */
  compacts(r: number): boolean {
    return !this.restricted || !this.setup.schema || r === 1
  }

  /** Names of the data columns R[r] has. */
  columns(r: number): string[] {
    return [...BASE, ...ADDED.slice(0, this.cols[r]).map((c) => c.name)]
  }

  sql(r: number, text: string, params: Value[] = []): number {
    this.trace.push(`R[${r}].db.prepare(${JSON.stringify(text)}).run(${params.map(lit).join(', ')})`)
    return this.replicas[r]!.db.prepare(text).run(...params).changes
  }

  /** Records what a write left in the row, as the writer holds it. */
  wrote(r: number, id: number): void {
    for (const [c, v] of cellsOf(this.replicas[r]!, id) ?? []) {
      const key = `${id}:${c}`
      let set = this.written.get(key)
      if (!set) this.written.set(key, (set = new Set()))
      set.add(v)
    }
  }

  alter(r: number, look: boolean): void {
    const next = ADDED[this.cols[r]!]
    if (!next) return
    this.trace.push(`R[${r}].db.exec(${JSON.stringify(next.ddl)})`)
    this.replicas[r]!.db.exec(next.ddl)
    this.cols[r]!++
    if (look) {
      this.trace.push(`R[${r}].versionVector()`)
      this.replicas[r]!.versionVector()
    }
  }

  export(from: number, to: number, since: Since): TracedPayload {
    return this.#exchange.export(from, to, since)
  }

  import(to: number, p: TracedPayload): { applied: number; conflicts: number } {
    const res = this.#exchange.import(to, p)
    this.delivered.push({ to, ...p, cols: this.cols[to]! })
    return res
  }

  /**
   * Imports again a payload its receiver already imported. With the receiver on the same
   * schema as then, it must change nothing (rows, vector, applied count).
   */
  reimport(d: Delivery, why: string): void {
    const r = this.replicas[d.to]!
    if (d.cols !== this.cols[d.to]) {
      // The receiver has added a column since: the payload may now bring its values.
      this.trace.push(`R[${d.to}].importChanges(${d.name}) // again (${why}), on a wider schema`)
      r.importChanges(d.payload)
      return
    }
    this.trace.push(`R[${d.to}].importChanges(${d.name}) // again (${why}): expect no change`)
    const rows = snapshot(r)
    const vector = r.versionVector()
    const again = r.importChanges(d.payload)
    if (again.applied !== 0 || JSON.stringify(snapshot(r)) !== JSON.stringify(rows)) {
      throw new Error(`re-import (${why}) of ${d.name} into R[${d.to}] applied ${again.applied}\n${this.report()}`)
    }
    if (!sameVector(vector, r.versionVector())) {
      throw new Error(`re-import (${why}) of ${d.name} into R[${d.to}] moved its vector\n${this.report()}`)
    }
  }

  describe(): string {
    return this.replicas
      .map((r, i) =>
        [
          `R[${i}] (${r.siteId}) vector ${JSON.stringify(r.versionVector())}`,
          ...snapshot(r),
          ...r.conflicts().map((c) => `conflict ${JSON.stringify(c)}`),
        ].join('\n    '),
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

/** Who writes key `id` at a step drawn for R[r]: its owner for keys 1..OWNED, else R[r]. */
const writer = (id: number, r: number): number => (id <= OWNED ? id - 1 : r)

/** Who starts a new life of key `id`, or deletes it, at a step drawn for R[r] (see RESTRICT). */
const creator = (w: World, id: number, r: number): number => (w.restricted ? (id - 1) % REPLICAS : writer(id, r))

function insert(w: World, r: number, id: number, row: Row, verb: 'INSERT OR IGNORE' | 'INSERT OR REPLACE'): void {
  const names = ['id', ...BASE]
  const params: Value[] = [id, row.a, row.b]
  if (w.cols[r]! >= 1 && row.withC) {
    names.push('c')
    params.push(row.c)
  }
  if (w.cols[r]! >= 2 && row.withE) {
    names.push('e')
    params.push(row.e)
  }
  w.sql(r, `${verb} INTO t (${names.join(', ')}) VALUES (${names.map(() => '?').join(', ')})`, params)
}

function runStep(w: World, s: Step): void {
  switch (s.k) {
    case 'insert':
    case 'replace':
    case 'reinsert': {
      const r = creator(w, s.id, s.r)
      if (s.k === 'reinsert') w.sql(r, 'DELETE FROM t WHERE id = ?', [s.id])
      insert(w, r, s.id, s.row, s.k === 'replace' ? 'INSERT OR REPLACE' : 'INSERT OR IGNORE')
      w.wrote(r, s.id)
      return
    }
    case 'update': {
      const r = writer(s.id, s.r)
      // See RESTRICT: only the creator of a free-for-all key writes more than column b.
      const cols = w.restricted && r !== creator(w, s.id, r) ? ['b'] : w.columns(r)
      const c1 = cols[s.col % cols.length]!
      const c2 = cols[s.col2 % cols.length]!
      if (s.two && c1 !== c2) w.sql(r, `UPDATE t SET ${c1} = ?, ${c2} = ? WHERE id = ?`, [s.v, s.v2, s.id])
      else w.sql(r, `UPDATE t SET ${c1} = ? WHERE id = ?`, [s.v, s.id])
      w.wrote(r, s.id)
      return
    }
    case 'delete':
      w.sql(creator(w, s.id, s.r), 'DELETE FROM t WHERE id = ?', [s.id])
      return
    case 'alter':
      w.alter(s.r, s.look)
      return
    case 'sync': {
      const { from, to } = s
      if (from === to || from === w.away || to === w.away) return
      const p = w.export(from, to, s.since)
      if (s.delay) {
        w.queue.push({ to, ...p })
        return
      }
      w.import(to, p)
      if (s.dup) w.reimport(w.delivered.at(-1)!, 'duplicate delivery')
      return
    }
    case 'misdeliver': {
      const { from, to, via } = s
      if (from === to || from === via || to === via || [from, to, via].includes(w.away)) return
      const p = w.export(from, to, { kind: 'current' })
      w.trace.push(`R[${via}].importChanges(${p.name}) // exported for R[${to}]`)
      w.replicas[via]!.importChanges(p.payload)
      return
    }
    case 'gossip': {
      for (let from = 0; from < REPLICAS; from++)
        for (let to = 0; to < REPLICAS; to++) {
          if (from !== to && from !== w.away && to !== w.away) w.import(to, w.export(from, to, { kind: 'current' }))
        }
      return
    }
    case 'deliver': {
      const ready = w.queue.filter((q) => q.to !== w.away)
      if (ready.length === 0) return
      const q = ready[s.pick % ready.length]!
      w.queue.splice(w.queue.indexOf(q), 1)
      w.import(q.to, q)
      return
    }
    case 'replay': {
      if (w.delivered.length === 0) return
      w.reimport(w.delivered[s.pick % w.delivered.length]!, 'late replay')
      return
    }
    case 'compact': {
      if (!w.compacts(s.r)) return
      if (s.forgetAll) {
        for (const peer of w.program.sites) {
          if (peer === w.program.sites[s.r]) continue
          w.trace.push(`R[${s.r}].forgetPeer('${peer}')`)
          w.replicas[s.r]!.forgetPeer(peer)
        }
      }
      w.trace.push(`R[${s.r}].compact()`)
      w.replicas[s.r]!.compact()
      return
    }
    case 'forget': {
      const peer = s.away && w.away >= 0 ? w.away : s.peer
      if (peer === s.r) return
      w.trace.push(`R[${s.r}].forgetPeer('${w.program.sites[peer]}')`)
      w.replicas[s.r]!.forgetPeer(w.program.sites[peer]!)
      return
    }
  }
}

/**
 * Full pairwise exchanges until a round applies nothing and moves no vector and no row
 * (a complete snapshot deletes rows as local writes, which `applied` does not count).
 * Returns the number of rounds, or -1 when MAX_ROUNDS did not suffice.
 */
function exchangeUntilQuiet(replicas: readonly Replica[], onPayload?: (to: number, p: Uint8Array) => void): number {
  for (let round = 1; round <= MAX_ROUNDS; round++) {
    const before = replicas.map((r) => [r.versionVector(), JSON.stringify(snapshot(r))] as const)
    let applied = 0
    for (let i = 0; i < replicas.length; i++)
      for (let j = 0; j < replicas.length; j++) {
        if (i === j) continue
        const p = replicas[i]!.exportChanges(replicas[j]!.versionVector())
        applied += replicas[j]!.importChanges(p).applied
        onPayload?.(j, p)
      }
    const quiet = replicas.every(
      (r, i) => sameVector(before[i]![0], r.versionVector()) && before[i]![1] === JSON.stringify(snapshot(r)),
    )
    if (applied === 0 && quiet) return round
  }
  return -1
}

const EXCHANGE_JS = (rounds: number) =>
  `for (let k = 0; k < ${rounds}; k++) for (const a of R) for (const b of R) if (a !== b) b.importChanges(a.exportChanges(b.versionVector()))`

let open: World[] = []
let scenarioReplicas: Replica[] = []
afterEach(() => {
  for (const w of open) w.close()
  open = []
  for (const r of scenarioReplicas) r.close()
  scenarioReplicas = []
})

/** Runs a program, lets every replica add what it lacks, exchanges until quiet, and checks. */
function checkProgram(setup: Setup, program: Program): void {
  const w = new World(setup, program)
  open.push(w)
  try {
    const { away } = program
    // See RESTRICT: the only replica that compacts has every column from the start.
    if (w.restricted && setup.schema) while (w.cols[1]! < ADDED.length) w.alter(1, true)
    program.steps.forEach((s, i) => {
      const isAway = away !== null && i >= away.start && i < away.start + away.len
      if (isAway && w.away < 0) w.trace.push(`// R[${away.r}] goes away`)
      if (!isAway && w.away >= 0) w.trace.push(`// R[${w.away}] is back`)
      w.away = isAway ? away.r : -1
      runStep(w, s)
    })
    w.away = -1
    for (const pick of program.drain) {
      if (w.queue.length === 0) break
      const [q] = w.queue.splice(pick % w.queue.length, 1)
      w.import(q!.to, q!)
    }
    while (w.queue.length) w.import(w.queue[0]!.to, w.queue.shift()!)
    if (setup.schema) for (let r = 0; r < REPLICAS; r++) while (w.cols[r]! < ADDED.length) w.alter(r, false)

    // What each owner holds of its keys now: no one else writes them, so that is the outcome.
    const owned = new Map<number, { owner: number; row: string | undefined }>()
    for (let id = 1; id <= OWNED; id++) {
      const owner = writer(id, 0)
      owned.set(id, { owner, row: rowsOf(w.replicas[owner]!).get(id) })
    }

    let n = 0
    const rounds = exchangeUntilQuiet(w.replicas, (to, payload) => {
      w.delivered.push({ to, payload, name: `Q[${n++}]`, cols: w.cols[to]! })
    })
    w.trace.push('// exchange until a round changes nothing:', EXCHANGE_JS(rounds))
    if (rounds < 0) throw new Error(`no quiescence after ${MAX_ROUNDS} rounds of full exchange\n${w.report()}`)

    const snaps = w.replicas.map(snapshot)
    const vectors = w.replicas.map((r) => r.versionVector())
    for (let i = 1; i < REPLICAS; i++) {
      if (JSON.stringify(snaps[i]) !== JSON.stringify(snaps[0]) || !sameVector(vectors[i]!, vectors[0]!)) {
        throw new Error(`replicas differ after exchanging until quiet\n${w.report()}`)
      }
    }
    // Single-writer keys: the owner's row everywhere (added-column values kept, deletions
    // kept), and no conflict about them anywhere.
    for (const [id, { owner, row: expected }] of owned) {
      w.replicas.forEach((r, i) => {
        const got = rowsOf(r).get(id)
        if (got !== expected) {
          throw new Error(
            `key ${id} (written by R[${owner}] only): R[${i}] holds ${got ?? 'no row'}, its writer held ${expected ?? 'no row'}\n${w.report()}`,
          )
        }
      })
    }
    w.replicas.forEach((r, i) => {
      const bad = ownedConflicts(w, r)
      if (bad.length) {
        throw new Error(`R[${i}] logged conflicts about single-writer keys: ${JSON.stringify(bad)}\n${w.report()}`)
      }
    })
    // No invented or misplaced values: every cell holds a value some replica wrote to that
    // key and column, or the column's default.
    const defaults: Record<string, string> = { c: '"d":text', e: 'NULL:null' }
    for (const id of rowsOf(w.replicas[0]!).keys()) {
      for (const [c, v] of cellsOf(w.replicas[0]!, id)!) {
        if (v !== defaults[c] && !w.written.get(`${id}:${c}`)?.has(v)) {
          throw new Error(`key ${id} column ${c} holds ${v}, which nobody wrote there\n${w.report()}`)
        }
      }
    }
    // Every payload ever delivered is now old news.
    for (const d of w.delivered) w.reimport(d, 'after convergence')
    if (setup.compaction) {
      // Compacting everywhere now drops tombstones and changes nothing visible; the
      // replicas keep syncing afterwards.
      w.replicas.forEach((r, i) => {
        w.trace.push(`R[${i}].compact()`)
        r.compact()
      })
      w.sql(0, "INSERT OR REPLACE INTO t (id, a) VALUES (100, 'after')")
      const again = exchangeUntilQuiet(w.replicas)
      w.trace.push(EXCHANGE_JS(again))
      if (again < 0) throw new Error(`no quiescence after compacting everywhere\n${w.report()}`)
      const after = w.replicas.map((r) => JSON.stringify(snapshot(r).filter((l) => !l.startsWith('id=100n:'))))
      const has100 = w.replicas.map((r) => rowsOf(r).has(100))
      if (after.some((s) => s !== JSON.stringify(snaps[0])) || has100.includes(false)) {
        throw new Error(`replicas differ after compacting everywhere and writing again\n${w.report()}`)
      }
    }
  } finally {
    w.close()
    open = open.filter((x) => x !== w)
  }
}

describe('living schemas: ADD COLUMN at each replica’s own moment', () => {
  it('replicas converge on every column, single-writer rows keep their added-column values, no invented values', () => {
    const setup = { schema: true, compaction: false }
    fc.assert(
      fc.property(programArb(setup), (p) => checkProgram(setup, p)),
      { numRuns: RUNS, ...REPLAY },
    )
  })
})

describe('compaction: compact(), forgetPeer() and a replica away for a long stretch', () => {
  it('replicas converge; single-writer rows (deleted ones included) end as their writer holds them', () => {
    const setup = { schema: false, compaction: true }
    fc.assert(
      fc.property(programArb(setup), (p) => checkProgram(setup, p)),
      { numRuns: RUNS, ...REPLAY },
    )
  })
})

describe('living schemas and compaction together', () => {
  it('replicas converge; single-writer rows end as their writer holds them', () => {
    const setup = { schema: true, compaction: true }
    fc.assert(
      fc.property(programArb(setup), (p) => checkProgram(setup, p)),
      { numRuns: RUNS, ...REPLAY },
    )
  })
})

// ---------------------------------------------------------------------------------------
// Deterministic scenarios
// ---------------------------------------------------------------------------------------

function replicas(count: number, autoCompact: false | number = false): Replica[] {
  const rs = SITE_POOL.slice(0, count).map((siteId) => {
    const r = openReplica(':memory:', { siteId, autoCompact })
    r.db.exec(DDL)
    r.enableSync('t')
    return r
  })
  scenarioReplicas.push(...rs)
  return rs
}

function send(from: Replica, to: Replica): { applied: number; conflicts: number } {
  return to.importChanges(from.exportChanges(to.versionVector()))
}

function settle(rs: readonly Replica[]): void {
  expect(exchangeUntilQuiet(rs)).toBeGreaterThan(0)
  const snaps = rs.map(snapshot)
  for (const s of snaps) expect(s).toEqual(snaps[0])
}

/** Exchanges until quiet, on replicas that may differ in columns. */
function quiet(rs: readonly Replica[]): void {
  expect(exchangeUntilQuiet(rs)).toBeGreaterThan(0)
}

const all = (r: Replica) => r.db.prepare('SELECT * FROM t ORDER BY id').all()
const addC = (r: Replica) => r.db.exec(ADDED[0].ddl)

describe('living schemas: scenarios', () => {
  it('a value written to c by a replica that added it early reaches one that adds it late, directly or through a relay', () => {
    const [early, relay, late] = replicas(3) as [Replica, Replica, Replica]
    early.db.exec("INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2)")
    settle([early, relay, late])
    addC(early)
    early.db.exec("UPDATE t SET c = 'early' WHERE id = 1")
    early.db.exec("INSERT INTO t (id, a, b, c) VALUES (3, 'three', 3, 'new')")
    // The others, without c, keep editing shared columns of the same rows.
    late.db.exec("UPDATE t SET a = 'late edit' WHERE id = 1")
    relay.db.exec('UPDATE t SET b = 20 WHERE id = 2')
    // early -> relay -> late: neither has c; both get the shared columns.
    send(early, relay)
    send(relay, late)
    send(late, relay)
    expect(late.db.prepare('SELECT * FROM t WHERE id = 3').get()).toEqual({ id: 3, a: 'three', b: 3 })
    // late adds c and hears from relay only (which never held c): c is not there yet...
    addC(late)
    send(relay, late)
    expect(late.db.prepare('SELECT c FROM t ORDER BY id').all()).toEqual([{ c: 'd' }, { c: 'd' }, { c: 'd' }])
    // ...and arrives once late hears from a replica that has it.
    send(early, late)
    expect(all(late)).toEqual([
      { id: 1, a: 'late edit', b: 1, c: 'early' },
      { id: 2, a: 'two', b: 20, c: 'd' },
      { id: 3, a: 'three', b: 3, c: 'new' },
    ])
    // The relay adds c last and gets the values from late (which got them from early).
    addC(relay)
    send(late, relay)
    expect(all(relay)).toEqual(all(late))
    settle([early, relay, late])
    expect(all(early)).toEqual(all(late))
    for (const r of [early, relay, late]) expect(r.conflicts()).toEqual([])
  })

  it('a value written to c before the engine noticed the ALTER is not lost to a late adder', () => {
    const [early, late] = replicas(2) as [Replica, Replica]
    early.db.exec("INSERT INTO t VALUES (1, 'one', 1)")
    send(early, late)
    // Same connection, no engine call in between: the old triggers do not watch c.
    early.db.exec(`${ADDED[0].ddl}; UPDATE t SET c = 'unwatched' WHERE id = 1`)
    send(early, late)
    addC(late)
    send(early, late)
    expect(all(late)).toEqual([{ id: 1, a: 'one', b: 1, c: 'unwatched' }])
  })
})

const DELETED = [2, 3]

describe('compaction: scenarios', () => {
  it.each(['the compacting replica (complete snapshot)', 'a replica that kept the tombstones (delta)'] as const)(
    'a replica back from a long absence, which edited a row deleted meanwhile, logs a delete conflict (it syncs first with %s)',
    (first) => {
      const [a, b, back] = replicas(3) as [Replica, Replica, Replica]
      a.db.exec("INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3), (4, 'four', 4)")
      settle([a, b, back])
      back.db.exec("UPDATE t SET a = 'offline edit' WHERE id = 3")
      back.db.exec("INSERT INTO t VALUES (100, 'made offline', 0)")
      a.db.exec('DELETE FROM t WHERE id IN (2, 3)')
      send(a, b)
      send(b, a)
      expect(a.forgetPeer(back.siteId)).toBe(true)
      expect(a.compact().tombstones).toBe(2)
      // b still waits for `back`: it keeps the tombstones.
      expect(b.compact().tombstones).toBe(0)
      send(first.startsWith('the compacting') ? a : b, back)
      expect(back.conflicts()).toMatchObject([
        { table: 't', pk: [3], column: 'a', kind: 'delete', kept: null, lost: 'offline edit' },
      ])
      settle([a, b, back])
      for (const r of [a, b, back]) {
        expect(all(r)).toEqual([
          { id: 1, a: 'one', b: 1 },
          { id: 4, a: 'four', b: 4 },
          { id: 100, a: 'made offline', b: 0 },
        ])
      }
      // Nothing else was lost: one conflict, on the returning replica only.
      expect(back.conflicts()).toHaveLength(1)
      expect([...a.conflicts(), ...b.conflicts()]).toEqual([])
      // Everyone can compact now, and the deleted rows stay deleted.
      for (const r of [a, b, back]) r.compact()
      back.db.exec("UPDATE t SET a = 'still here' WHERE id = 1")
      settle([a, b, back])
      for (const r of [a, b, back]) {
        expect(r.db.prepare(`SELECT count(*) AS n FROM t WHERE id IN (${DELETED.join(', ')})`).get()).toEqual({
          n: 0,
        })
      }
    },
  )

  it('forgetting a peer that is still active is safe: it gets a complete snapshot and its concurrent writes survive', () => {
    const [a, b] = replicas(2) as [Replica, Replica]
    a.db.exec("INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)")
    settle([a, b])
    a.db.exec('DELETE FROM t WHERE id = 2')
    b.db.exec("UPDATE t SET a = 'b edit' WHERE id = 1")
    b.db.exec("INSERT INTO t VALUES (4, 'from b', 4)")
    expect(a.forgetPeer(b.siteId)).toBe(true)
    expect(a.compact().tombstones).toBe(1)
    send(a, b)
    send(b, a)
    settle([a, b])
    for (const r of [a, b]) {
      expect(all(r)).toEqual([
        { id: 1, a: 'b edit', b: 1 },
        { id: 3, a: 'three', b: 3 },
        { id: 4, a: 'from b', b: 4 },
      ])
      expect(r.conflicts()).toEqual([])
    }
  })

  it('a replica that has not added c yet, back after a compaction, gets the snapshot and later the values of c', () => {
    const [a, b] = replicas(2) as [Replica, Replica]
    a.db.exec("INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2)")
    settle([a, b])
    addC(a)
    a.db.exec("UPDATE t SET c = 'kept' WHERE id = 1")
    a.db.exec('DELETE FROM t WHERE id = 2')
    a.forgetPeer(b.siteId)
    expect(a.compact().tombstones).toBe(1)
    send(a, b)
    expect(all(b)).toEqual([{ id: 1, a: 'one', b: 1 }])
    addC(b)
    settle([a, b])
    for (const r of [a, b]) expect(all(r)).toEqual([{ id: 1, a: 'one', b: 1, c: 'kept' }])
  })
})

// ---------------------------------------------------------------------------------------
// Regressions: bugs these tests found, fixed since (each failed before its fix)
// ---------------------------------------------------------------------------------------

describe('regressions found by these properties', () => {
  it('a key re-inserted by the replica that compacted its tombstone lives everywhere', () => {
    const [a, b] = replicas(2) as [Replica, Replica]
    a.db.exec("INSERT INTO t VALUES (2, 'first', 1)")
    a.db.exec('DELETE FROM t WHERE id = 2')
    send(a, b)
    send(b, a)
    // b has seen the deletion (and still holds its tombstone, life 2): the safe case.
    expect(a.compact().tombstones).toBe(1)
    a.db.exec("INSERT INTO t VALUES (2, 'again', 2)")
    // It was: a started the key afresh at causal length 1 (it held no state for it), which
    // lost to b's tombstone of life 2; every exchange applied 0 and b never got the row.
    settle([a, b])
    for (const r of [a, b]) expect(all(r)).toEqual([{ id: 2, a: 'again', b: 2 }])
  })

  it('a key inserted after a complete snapshot covering its deletion lives everywhere', () => {
    const [a, b, c] = replicas(3) as [Replica, Replica, Replica]
    a.db.exec("INSERT INTO t VALUES (2, 'first', 1)")
    send(a, b)
    a.db.exec('DELETE FROM t WHERE id = 2')
    send(a, b) // b holds the tombstone (life 2)
    send(b, a)
    expect(a.compact().tombstones).toBe(1) // c is unknown to a: it does not wait for it
    send(a, c) // a complete snapshot: c has now seen the deletion, and holds nothing of key 2
    c.db.exec("INSERT INTO t VALUES (2, 'after the snapshot', 3)")
    settle([a, b, c])
    for (const r of [a, b, c]) expect(all(r)).toEqual([{ id: 2, a: 'after the snapshot', b: 3 }])
  })

  it('a complete snapshot deleting a row that holds an added column’s default logs no conflict (nobody wrote it)', () => {
    const [a, b] = replicas(2) as [Replica, Replica]
    a.db.exec("INSERT INTO t VALUES (1, 'x', 1)")
    send(a, b)
    addC(a)
    addC(b)
    a.db.exec('DELETE FROM t WHERE id = 1')
    expect(a.compact().tombstones).toBe(1)
    send(a, b) // a complete snapshot: b deletes row 1, which b never edited
    expect(all(b)).toEqual([])
    // It was: [{ pk: [1], column: 'c', kind: 'delete', lost: 'd', lostAt: 0, lostSite: a, ... }]
    expect(b.conflicts()).toEqual([])
  })

  it('a complete snapshot that deletes rows reports them in `applied` (row lives ended)', () => {
    const [a, b] = replicas(2) as [Replica, Replica]
    a.db.exec("INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2)")
    send(a, b)
    a.db.exec('DELETE FROM t WHERE id = 1')
    expect(a.compact().tombstones).toBe(1) // b is unknown to a: it does not wait for it
    const result = send(a, b) // a complete snapshot: b deletes row 1
    expect(all(b)).toEqual([{ id: 2, a: 'two', b: 2 }])
    // It was { applied: 0, conflicts: 0 }
    expect(result.applied).toBeGreaterThan(0)
  })
})

// ---------------------------------------------------------------------------------------
// Bugs once pinned with `it.fails`, now fixed: each asserts the intended behaviour.
// ---------------------------------------------------------------------------------------

describe('pinned bugs, now fixed', () => {
  it('a life started concurrently with a deletion whose tombstone was compacted away converges: the compacting replica re-inserts it above the floor', () => {
    const [a, b, c] = replicas(3) as [Replica, Replica, Replica]
    a.db.exec("INSERT INTO t VALUES (9, 'x', 0)")
    settle([a, b, c])
    // a and c insert key 4 concurrently (both life 1); a deletes it (life 2).
    a.db.exec("INSERT INTO t VALUES (4, 'from a', 1)")
    c.db.exec("INSERT INTO t VALUES (4, 'from c', 3)")
    a.db.exec('DELETE FROM t WHERE id = 4')
    send(a, b)
    send(b, a)
    // a stops waiting for c (still active) and compacts the tombstone.
    expect(a.forgetPeer(c.siteId)).toBe(true)
    expect(a.compact().tombstones).toBe(1)
    // b still holds the tombstone (life 2) and keeps c's life 1 deleted; a cannot tell
    // c's life from the one its tombstone ended, so it keeps it and starts life 3 with
    // c's values, which every replica takes. Before, a and c kept the row and b did not.
    settle([a, b, c])
    for (const r of [a, b, c])
      expect(all(r)).toEqual([
        { id: 4, a: 'from c', b: 3 },
        { id: 9, a: 'x', b: 0 },
      ])
  })

  it('a replica without c that deleted and compacted a row keeps it deleted when a peer back from away sends its copy', () => {
    const [a, old, away] = replicas(3) as [Replica, Replica, Replica]
    addC(a)
    addC(away)
    // Row 6 keeps a value of c that `old` lacks, so `old` never adopts a's vector entry.
    a.db.exec("INSERT INTO t (id, a, b, c) VALUES (5, 'five', 5, 'v'), (6, 'six', 6, 'w')")
    quiet([a, old, away])
    // `away` goes away; `old` deletes row 5 and a sees the deletion.
    old.db.exec('DELETE FROM t WHERE id = 5')
    send(old, a)
    send(a, old)
    expect(old.forgetPeer(away.siteId)).toBe(true)
    // The life old deleted is not covered by what every peer has seen as far as old
    // knows (its vector lacks a's entry): it keeps the tombstone.
    expect(old.compact().tombstones).toBe(0)
    // `away` comes back and sends its copy of row 5 first. Its life (a's insert) is not
    // covered by old's floor (old's vector lacks a's entry), so rule 1 does not apply:
    // old inserts row 5 again, and no replica ever sends it the deletion (its own). A
    // replay of the payload that first brought row 5 to `old` does the same, without any
    // forgetPeer. Today: old ends with row 5, a and away without.
    send(away, old)
    quiet([a, old, away])
    for (const r of [a, old, away]) expect(all(r).map((row) => (row as { id: number }).id)).toEqual([6])
  })

  it('a deletion that reaches a replica only through a complete snapshot is not undone by an edit of the life it ended', () => {
    const [a, b, c] = replicas(3) as [Replica, Replica, Replica]
    a.db.exec("INSERT INTO t VALUES (4, 'one', 1)")
    send(a, b)
    a.db.exec('DELETE FROM t WHERE id = 4')
    send(a, b)
    send(b, a)
    expect(a.compact().tombstones).toBe(1) // b has seen the deletion; c is unknown to a
    a.db.exec("INSERT INTO t VALUES (4, 'three', 3)") // life 3
    send(a, c) // a complete snapshot: c gets life 3, and raises its compaction floor
    a.db.exec("UPDATE t SET a = 'three, edited', b = 33 WHERE id = 4") // concurrent with...
    c.db.exec('DELETE FROM t WHERE id = 4') // ...c's deletion of life 3 (life 4)
    // c's floor is above b's vector: b gets a complete snapshot without row 4 and adopts
    // c's vector (which covers the deletion of life 4), but holds a tombstone of life 2.
    send(c, b)
    // Today: a's edit (life 3) beats b's life 2, and nobody sends c's deletion to a or b
    // (their vectors claim it): a and b end with row 4 ('three, edited'), c without.
    settle([a, b, c])
    for (const r of [a, b, c]) expect(all(r)).toEqual([])
  })

  it('a complete snapshot received by a replica without c does not make third replicas log c as lost to a deletion', () => {
    const [a, old, c] = replicas(3) as [Replica, Replica, Replica]
    addC(a)
    addC(c)
    // Row 3 keeps a value of c that `old` lacks, so `old` does not merge a's snapshot whole.
    a.db.exec("INSERT INTO t (id, a, b, c) VALUES (2, 'x', 1, 'set by a'), (3, 'y', 3, 'kept')")
    send(a, c)
    send(a, old)
    a.db.exec('DELETE FROM t WHERE id = 2') // a deletes its own row: nothing is concurrent
    expect(a.compact().tombstones).toBe(1) // a heard from nobody: it waits for no one
    send(a, old) // a complete snapshot: old deletes row 2, as its own deletion (knowing nothing of c)
    send(old, c) // old's tombstone reaches c
    for (const r of [a, old, c]) expect(all(r).map((row) => (row as { id: number }).id)).toEqual([3])
    // Today: c logs { pk: [2], column: 'c', kind: 'delete', lost: 'set by a', keptSite: old }
    expect(c.conflicts()).toEqual([])
  })
})
