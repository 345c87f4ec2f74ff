// Property tests of the pure merge rule (src/core/merge.ts): mergeRow must be a join
// (idempotent, commutative, associative, with null as identity) over valid row states,
// and the local operations must move a row the way the causal-length rules say.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  type CellStamp,
  compareStamps,
  isConflict,
  localDelete,
  localInsert,
  localUpdate,
  mergeRow,
  type RowState,
  type Stamp,
} from '../src/core/merge.js'

const RUNS = 300

/** A small pool of site ids; the order of the pool is also the tie-break order. */
const SITES = [
  '0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a',
  '3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b',
  '7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c',
  'f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0',
] as const
const MAX_HLC = 4
const MAX_CL = 6
/** Data columns per row. */
const N = 3

const join = (a: RowState | null, b: RowState): RowState => mergeRow(a, b).state

/**
 * A "world" fixes, for every possible cell stamp (cl, hlc, site), the foreign version that
 * write overwrote (its `prev`), so the same stamp always carries the same prev, as it does
 * in reality, where (hlc, site) names exactly one write.
 */
type World = (key: { cl: number; hlc: number; site: string }) => Stamp | null

const ODD_CLS = Array.from({ length: MAX_CL }, (_, i) => i + 1).filter((c) => c % 2 === 1)
const STAMP_KEYS = ODD_CLS.flatMap((cl) =>
  Array.from({ length: MAX_HLC }, (_, h) => h + 1).flatMap((hlc) => SITES.map((site) => ({ cl, hlc, site }))),
)
const keyOf = (s: Stamp) => `${s.cl}/${s.hlc}/${s.site}`

const worldArb: fc.Arbitrary<World> = fc
  .array(fc.option(fc.nat(1000), { nil: null }), { minLength: STAMP_KEYS.length, maxLength: STAMP_KEYS.length })
  .map((choices) => {
    const prevs = new Map<string, Stamp | null>()
    STAMP_KEYS.forEach((k, i) => {
      // prev: an earlier version (not above this one) written by another site
      const candidates = STAMP_KEYS.filter((p) => p.site !== k.site && compareStamps(p, k) < 0)
      const choice = choices[i] ?? null
      const p = choice === null || candidates.length === 0 ? null : candidates[choice % candidates.length]
      prevs.set(keyOf(k), p ? { cl: p.cl, hlc: p.hlc, site: p.site } : null)
    })
    return (k) => prevs.get(keyOf(k)) ?? null
  })

const siteArb = fc.constantFrom(...SITES)
const hlcArb = fc.integer({ min: 1, max: MAX_HLC })

/**
 * A valid row state: clStamp.cl == cl; a dead row (even cl) holds no cells; every cell of a
 * live row belongs to the row's life (some may be null). With `full`, a live row holds a
 * version for every cell, as local writes and complete imports leave it.
 */
function rowArb(world: World, full = false): fc.Arbitrary<RowState> {
  return fc
    .record({
      cl: fc.integer({ min: 1, max: MAX_CL }),
      clHlc: hlcArb,
      clSite: siteArb,
      cells: fc.array(fc.record({ back: fc.nat(2), hlc: hlcArb, site: siteArb }), { minLength: N, maxLength: N }),
    })
    .map(({ cl, clHlc, clSite, cells }): RowState => {
      const clStamp: Stamp = { cl, hlc: clHlc, site: clSite }
      if (cl % 2 === 0) {
        // Most tombstones say, per column, what their deleter had seen: a version of the
        // life before, or none.
        const tomb: RowState = { cl, clStamp, cells: new Array(N).fill(null) }
        const first = cells[0] as { back: number; hlc: number; site: string }
        if (first.back === 0) return tomb
        return { ...tomb, seen: cells.map(({ back, hlc, site }) => (back === 1 ? null : { cl: cl - 1, hlc, site })) }
      }
      return {
        cl,
        clStamp,
        cells: cells.map(({ back, hlc, site }): CellStamp | null =>
          !full && back === 2 ? null : { cl, hlc, site, prev: world({ cl, hlc, site }) },
        ),
      }
    })
}

type Rows<K extends 1 | 2 | 3> = K extends 1
  ? [RowState]
  : K extends 2
    ? [RowState, RowState]
    : [RowState, RowState, RowState]

/** `k` valid states drawn from one world (so equal stamps carry equal prevs). */
const rowsArb = <K extends 1 | 2 | 3>(k: K, full = false): fc.Arbitrary<Rows<K>> =>
  worldArb.chain((w) => fc.tuple(...Array.from({ length: k }, () => rowArb(w, full)))) as unknown as fc.Arbitrary<
    Rows<K>
  >

/** A state is valid when it satisfies the invariants the generator promises. */
function expectValid(s: RowState): void {
  expect(s.clStamp.cl).toBe(s.cl)
  expect(s.cells).toHaveLength(N)
  for (const c of s.cells) {
    if (s.cl % 2 === 0) expect(c).toBeNull()
    else if (c !== null) expect(c.cl).toBe(s.cl)
  }
}

describe('mergeRow is a join over valid row states', () => {
  it('generator sanity: generated states are valid', () => {
    fc.assert(
      fc.property(rowsArb(1), ([a]) => expectValid(a)),
      { numRuns: RUNS },
    )
  })

  it('null is the identity: join(null, a) == a', () => {
    fc.assert(
      fc.property(rowsArb(1), ([a]) => {
        expect(join(null, a)).toEqual(a)
      }),
      { numRuns: RUNS },
    )
  })

  it('is idempotent: join(a, a) == a, and reports no change', () => {
    fc.assert(
      fc.property(rowsArb(1), ([a]) => {
        const m = mergeRow(a, a)
        expect(m.state).toEqual(a)
        expect(m.won).toEqual([])
        expect(m.lifeChanged).toBe(false)
        expect(m.conflicts).toEqual([])
      }),
      { numRuns: RUNS },
    )
  })

  it('is commutative: join(a, b) == join(b, a)', () => {
    fc.assert(
      fc.property(rowsArb(2), ([a, b]) => {
        expect(join(a, b)).toEqual(join(b, a))
      }),
      { numRuns: RUNS },
    )
  })

  it('is associative: join(join(a, b), c) == join(a, join(b, c))', () => {
    fc.assert(
      fc.property(rowsArb(3), ([a, b, c]) => {
        expect(join(join(a, b), c)).toEqual(join(a, join(b, c)))
      }),
      { numRuns: RUNS },
    )
  })

  it('is associative when every cell belongs to the row life (states local writes produce)', () => {
    fc.assert(
      fc.property(rowsArb(3, true), ([a, b, c]) => {
        expect(join(join(a, b), c)).toEqual(join(a, join(b, c)))
      }),
      { numRuns: RUNS },
    )
  })

  it('is absorbing: join(join(a, b), b) == join(a, b), so a re-delivered row changes nothing', () => {
    fc.assert(
      fc.property(rowsArb(2), ([a, b]) => {
        const ab = join(a, b)
        const again = mergeRow(ab, b)
        expect(again.state).toEqual(ab)
        expect(again.won).toEqual([])
        expect(again.lifeChanged).toBe(false)
      }),
      { numRuns: RUNS },
    )
  })

  it('any order of merging three states gives the same result', () => {
    fc.assert(
      fc.property(rowsArb(3), ([a, b, c]) => {
        const orders: RowState[][] = [
          [a, b, c],
          [a, c, b],
          [b, a, c],
          [b, c, a],
          [c, a, b],
          [c, b, a],
        ]
        const results = orders.map(([x, y, z]) => join(join(join(null, x!), y!), z!))
        for (const r of results) expect(r).toEqual(results[0])
      }),
      { numRuns: RUNS },
    )
  })

  it('keeps results valid', () => {
    fc.assert(
      fc.property(rowsArb(2), ([a, b]) => expectValid(join(a, b))),
      { numRuns: RUNS },
    )
  })

  it('reports exactly what changed: lifeChanged, alive flags, and won cells come from incoming', () => {
    fc.assert(
      fc.property(rowsArb(2), fc.boolean(), ([a, b], localNull) => {
        const local = localNull ? null : a
        // The apply step only merges a row that starts a newer life when it carries every
        // cell (otherwise it waits for one that does), so that is the precondition here.
        fc.pre(!(b.cl > (local?.cl ?? 0) && b.cl % 2 === 1 && b.cells.includes(null)))
        const m = mergeRow(local, b)
        const wasAlive = local !== null && local.cl % 2 === 1
        expect(m.wasAlive).toBe(wasAlive)
        expect(m.alive).toBe(m.state.cl % 2 === 1)
        expect(m.lifeChanged).toBe(m.state.cl !== (local?.cl ?? 0))
        // the apply step writes only `won` cells (or, for a row coming alive, the present
        // ones) with values taken from the incoming row, so every cell that differs from
        // the local one must be an incoming cell listed in `won`
        for (let c = 0; c < N; c++) {
          const before = wasAlive ? (local!.cells[c] ?? null) : null
          const after = m.state.cells[c] ?? null
          if (!m.alive) continue
          const changed = before === null ? after !== null : after === null || compareStamps(after, before) !== 0
          expect(m.won.includes(c)).toBe(changed)
          if (changed) expect(after).toEqual(b.cells[c])
        }
        if (!m.alive) expect(m.won).toEqual([])
      }),
      { numRuns: RUNS },
    )
  })

  it('detects conflicts symmetrically between two live versions of the same life', () => {
    fc.assert(
      fc.property(rowsArb(2, true), ([a, b]) => {
        fc.pre(a.cl === b.cl && a.cl % 2 === 1)
        const ab = mergeRow(a, b).conflicts
        const ba = mergeRow(b, a).conflicts
        expect(ab.map((k) => k.column)).toEqual(ba.map((k) => k.column))
        for (const k of ab) {
          const other = ba.find((x) => x.column === k.column)!
          expect(other.incomingWon).toBe(!k.incomingWon)
          expect(other.winner).toEqual(k.winner)
        }
      }),
      { numRuns: RUNS },
    )
  })
})

describe('mergeRow: a counterexample an earlier rule failed', () => {
  const [A, B] = [SITES[0], SITES[1]]
  // The earlier rule kept a live row's cells when a newer life arrived and dropped them at
  // a tombstone, so the merge order decided which stale cell survived. Now a newer life
  // replaces the row with its own cells, whatever came before.
  const a: RowState = { cl: 2, clStamp: { cl: 2, hlc: 1, site: A }, cells: [null] }
  const b: RowState = { cl: 1, clStamp: { cl: 1, hlc: 1, site: B }, cells: [{ cl: 1, hlc: 1, site: B, prev: null }] }
  const c: RowState = { cl: 3, clStamp: { cl: 3, hlc: 1, site: A }, cells: [null] }

  it('associativity: (a ⊔ b) ⊔ c == a ⊔ (b ⊔ c), and life 1 leaves nothing behind', () => {
    expect(join(join(a, b), c)).toEqual(join(a, join(b, c)))
    expect(join(join(a, b), c).cells).toEqual([null])
  })
})

describe('local operations', () => {
  const stateArb = fc.oneof(
    fc.constant(null),
    rowsArb(1, true).map(([s]) => s),
  )
  /** An HLC later than any in the generated states. */
  const laterHlc = fc.integer({ min: MAX_HLC + 1, max: MAX_HLC + 10 })

  it('insert: a dead or unknown row starts the next (odd) life with every cell written; a live row is fully updated', () => {
    fc.assert(
      fc.property(stateArb, laterHlc, siteArb, (s, hlc, site) => {
        const r = localInsert(s, hlc, site, N)
        expectValid(r)
        expect(r.cl % 2).toBe(1)
        if (s === null) expect(r.cl).toBe(1)
        else if (s.cl % 2 === 0) expect(r.cl).toBe(s.cl + 1)
        else expect(r.cl).toBe(s.cl)
        if (s === null || s.cl % 2 === 0) expect(r.clStamp).toEqual({ cl: r.cl, hlc, site })
        else expect(r.clStamp).toEqual(s.clStamp)
        for (const c of r.cells) expect(c).toMatchObject({ cl: r.cl, hlc, site })
        // the local write supersedes the old state under merge, in either direction
        if (s !== null) {
          expect(join(s, r)).toEqual(r)
          expect(join(r, s)).toEqual(r)
        }
      }),
      { numRuns: RUNS },
    )
  })

  it('update: only the named cells get the new stamp, in the current life; the later stamp wins', () => {
    fc.assert(
      fc.property(
        stateArb,
        fc.option(fc.uniqueArray(fc.integer({ min: 0, max: N - 1 }), { maxLength: N }), { nil: null }),
        laterHlc,
        siteArb,
        (s, cols, hlc, site) => {
          const r = localUpdate(s, cols, hlc, site, N)
          expectValid(r)
          if (s === null || s.cl % 2 === 0) {
            // an update of a row not alive here behaves as an insert
            expect(r).toEqual(localInsert(s, hlc, site, N))
            return
          }
          expect(r.cl).toBe(s.cl)
          expect(r.clStamp).toEqual(s.clStamp)
          const written = cols ?? Array.from({ length: N }, (_, i) => i)
          for (let c = 0; c < N; c++) {
            if (written.includes(c)) {
              expect(r.cells[c]).toMatchObject({ cl: s.cl, hlc, site })
              expect(compareStamps(r.cells[c]!, s.cells[c]!)).toBeGreaterThan(0)
            } else {
              expect(r.cells[c]).toBe(s.cells[c])
            }
          }
          expect(join(s, r)).toEqual(r)
          expect(join(r, s)).toEqual(r)
        },
      ),
      { numRuns: RUNS },
    )
  })

  it('delete: a live row moves to the next (even) causal length and drops its cells; deleting a dead row is a no-op', () => {
    fc.assert(
      fc.property(stateArb, laterHlc, siteArb, (s, hlc, site) => {
        const r = localDelete(s, hlc, site, N)
        expectValid(r)
        expect(r.cl % 2).toBe(0)
        if (s !== null && s.cl % 2 === 0) {
          expect(r).toBe(s)
          return
        }
        expect(r.cl).toBe(s === null ? 2 : s.cl + 1)
        expect(r.clStamp).toEqual({ cl: r.cl, hlc, site })
        if (s !== null) {
          expect(join(s, r)).toEqual(r)
          expect(join(r, s)).toEqual(r)
        }
      }),
      { numRuns: RUNS },
    )
  })

  it('delete then insert starts a life that beats every cell of the earlier ones', () => {
    fc.assert(
      fc.property(stateArb, laterHlc, siteArb, siteArb, (s, hlc, s1, s2) => {
        const dead = localDelete(s, hlc, s1, N)
        const again = localInsert(dead, hlc + 1, s2, N)
        expect(again.cl).toBe(dead.cl + 1)
        if (s !== null) {
          for (let c = 0; c < N; c++) {
            if (s.cells[c]) expect(compareStamps(again.cells[c]!, s.cells[c]!)).toBeGreaterThan(0)
          }
          expect(join(s, again)).toEqual(again)
        }
        expect(join(dead, again)).toEqual(again)
        expect(join(again, dead)).toEqual(again)
      }),
      { numRuns: RUNS },
    )
  })

  it('a site editing a cell twice keeps pointing at the foreign version it overwrote', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 }),
        fc.integer({ min: 1, max: MAX_HLC }),
        fc.integer({ min: 0, max: N - 1 }),
        fc.integer({ min: 1, max: 5 }),
        (lifeBack, h0, col, edits) => {
          const foreign = SITES[0]
          const local = SITES[2]
          // the foreign site inserted (possibly after earlier lives), then we edit `col` repeatedly
          let s: RowState | null = null
          for (let i = 0; i < lifeBack; i++) {
            s = localInsert(s, h0, foreign, N)
            s = localDelete(s, h0, foreign, N)
          }
          s = localInsert(s, h0, foreign, N)
          const theirs = s.cells[col]!
          let hlc = MAX_HLC + 10
          for (let i = 0; i < edits; i++) {
            s = localUpdate(s, [col], ++hlc, local, N)
            expect(s.cells[col]).toEqual({
              cl: theirs.cl,
              hlc,
              site: local,
              prev: { cl: theirs.cl, hlc: theirs.hlc, site: theirs.site },
            })
          }
          // and a concurrent foreign edit of the same version conflicts with ours, either way round
          const theirEdit = localUpdate(localInsert(null, h0, foreign, N), [col], MAX_HLC + 5, SITES[1], N)
          const mine = s.cells[col]!
          if (lifeBack === 0) {
            expect(isConflict(mine, theirEdit.cells[col]!)).toBe(true)
          }
          // a later edit by the site whose version we overwrote, after it saw ours, is no conflict
          const after = localUpdate(s, [col], hlc + 1, foreign, N)
          expect(after.cells[col]!.prev).toEqual({ cl: mine.cl, hlc: mine.hlc, site: mine.site })
          expect(isConflict(after.cells[col]!, mine)).toBe(false)
        },
      ),
      { numRuns: RUNS },
    )
  })

  it('a site overwriting its own first write records no prev', () => {
    fc.assert(
      fc.property(siteArb, fc.integer({ min: 1, max: 3 }), (site, edits) => {
        let s = localInsert(null, 1, site, N)
        for (let i = 0; i < edits; i++) s = localUpdate(s, null, 2 + i, site, N)
        for (const c of s.cells) expect(c!.prev).toBeNull()
      }),
      { numRuns: RUNS },
    )
  })
})
