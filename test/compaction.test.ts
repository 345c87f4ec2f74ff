// Compaction: tombstones go once every known peer has seen them; a peer that comes back
// later gets a complete snapshot and still converges.
import { openReplica, type Replica } from 'sqlite-converge'
import { afterEach, describe, expect, it } from 'vitest'
import { codeOf, SITE_POOL, settle, sync } from './helpers/replicas.js'

const T = 'CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)'
let open: Replica[] = []

afterEach(() => {
  for (const r of open) r.close()
  open = []
})

function replica(i: number, options: { autoCompact?: number | false; rows?: 'causal' | 'add-wins' } = {}): Replica {
  const r = openReplica(':memory:', { siteId: SITE_POOL[i] as string, autoCompact: options.autoCompact ?? false })
  open.push(r)
  r.db.exec(T)
  r.enableSync('t', options.rows ? { rows: options.rows } : undefined)
  return r
}

function insertRange(r: Replica, from: number, to: number): void {
  r.db.exec(
    `WITH RECURSIVE s(x) AS (SELECT ${from} UNION ALL SELECT x + 1 FROM s WHERE x < ${to}) INSERT INTO t SELECT x, 'v' || x FROM s`,
  )
}

function tombstones(r: Replica): number {
  return (r.db.prepare('SELECT count(*) AS n FROM _converge_rows_1 WHERE cl % 2 = 0').get() as { n: number }).n
}

function rows(r: Replica): unknown[] {
  return r.db.prepare('SELECT * FROM t ORDER BY id').all()
}

describe('compact()', () => {
  it('keeps tombstones a known peer has not seen, and drops them once every peer has', () => {
    const [a, b, c] = [replica(0), replica(1), replica(2)]
    insertRange(a, 1, 10)
    settle([a, b, c], 6)
    a.db.exec('DELETE FROM t WHERE id <= 4')
    sync(a, b)
    sync(b, a)
    expect(tombstones(a)).toBe(4)
    // c has not seen the deletes (its last vector predates them).
    expect(a.compact()).toEqual({ tombstones: 0 })
    expect(tombstones(a)).toBe(4)
    sync(a, c)
    sync(c, a)
    expect(a.compact()).toEqual({ tombstones: 4 })
    expect(tombstones(a)).toBe(0)
    // The rows stay deleted everywhere, whatever is exchanged next, and stale copies of
    // their old lives are ignored.
    c.db.exec(`UPDATE t SET v = 'edit' WHERE id = 5`)
    settle([a, b, c], 6)
    for (const r of [a, b, c]) expect(rows(r)).toEqual(rows(a))
    expect(rows(a)).toHaveLength(6)
  })

  it('a peer that comes back after compaction, with an old copy and concurrent edits, converges through a complete snapshot', () => {
    const [a, b, back] = [replica(0), replica(1), replica(2)]
    insertRange(a, 1, 10)
    settle([a, b, back], 6)
    back.db.exec(`UPDATE t SET v = 'offline edit' WHERE id = 3`)
    back.db.exec(`INSERT INTO t VALUES (100, 'made offline')`)
    a.db.exec('DELETE FROM t WHERE id <= 5')
    sync(a, b)
    sync(b, a)
    // a forgets the peer that went away (it never synced since), then compacts.
    expect(a.forgetPeer(back.siteId)).toBe(true)
    expect(a.forgetPeer(back.siteId)).toBe(false)
    expect(a.compact().tombstones).toBe(5)
    const payload = a.exportChanges(back.versionVector())
    // The payload holds every live row and no tombstones; the stale peer deletes what it lacks.
    const result = back.importChanges(payload)
    expect(rows(back).map((r) => (r as { id: number }).id)).toEqual([6, 7, 8, 9, 10, 100])
    // Its offline edit to a deleted row is not silently lost: it is a 'delete' conflict.
    expect(result.conflicts).toBe(1)
    expect(back.conflicts()).toMatchObject([{ table: 't', pk: [3], column: 'v', kind: 'delete', lost: 'offline edit' }])
    settle([a, b, back], 6)
    for (const r of [b, back]) expect(rows(r)).toEqual(rows(a))
    expect(rows(a)).toContainEqual({ id: 100, v: 'made offline' })
    // And it passes the snapshot on: a replica that relays through it converges too.
    const late = replica(3)
    insertRange(late, 1, 2)
    late.db.exec('DELETE FROM t')
    sync(back, late)
    settle([a, b, back, late], 6)
    expect(rows(late)).toEqual(rows(a))
  })

  it('leaves add-wins tables alone (their tombstones decide concurrent updates)', () => {
    const [a, b] = [replica(0, { rows: 'add-wins' }), replica(1, { rows: 'add-wins' })]
    insertRange(a, 1, 3)
    settle([a, b], 6)
    a.db.exec('DELETE FROM t')
    settle([a, b], 6)
    expect(a.compact()).toEqual({ tombstones: 0 })
    expect(tombstones(a)).toBe(3)
  })

  it('runs on its own after an import once autoCompact deletions have accumulated', () => {
    const a = replica(0, { autoCompact: 50 })
    const b = replica(1, { autoCompact: 50 })
    insertRange(a, 1, 200)
    settle([a, b], 6)
    a.db.exec('DELETE FROM t WHERE id <= 100')
    sync(a, b) // b applies 100 deletes, then compacts what a (its only peer) has seen
    expect(tombstones(b)).toBe(0)
    sync(b, a) // a learns b has seen them; its own deletes count, so it compacts too
    expect(tombstones(a)).toBe(0)
    a.db.exec(`INSERT INTO t VALUES (1, 'back')`)
    settle([a, b], 6)
    expect(rows(b)).toEqual(rows(a))
    expect(rows(a)).toHaveLength(101)
  })

  it('is refused on a closed replica', () => {
    const a = replica(0)
    a.close()
    open = []
    expect(codeOf(() => a.compact())).toBe('CLOSED')
  })
})
