// A write that loses to a concurrent delete of its row is kept in the conflict log.

import { openReplica, type Replica } from 'sqlite-converge'
import { describe, expect, it } from 'vitest'
import { sync } from './helpers/replicas.js'

function replica(site: string): Replica {
  const r = openReplica(':memory:', { siteId: site.repeat(32) })
  r.db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT)')
  r.enableSync('t')
  return r
}

function rows(r: Replica) {
  return r.db.prepare('SELECT * FROM t ORDER BY id').all()
}

describe('update against a concurrent delete', () => {
  for (const order of ['deleter first', 'updater first'] as const) {
    it(`is logged on both replicas, whatever the exchange order (${order})`, () => {
      const x = replica('1')
      const y = replica('2')
      x.db.exec("INSERT INTO t VALUES (1, 'a', 'b'), (2, 'keep', 'me')")
      sync(x, y)
      x.db.exec('DELETE FROM t WHERE id = 1')
      y.db.exec("UPDATE t SET a = 'edited' WHERE id = 1")
      const fromX = x.exportChanges(y.versionVector())
      const fromY = y.exportChanges(x.versionVector())
      if (order === 'deleter first') {
        expect(y.importChanges(fromX).conflicts).toBe(1)
        expect(x.importChanges(fromY).conflicts).toBe(1)
      } else {
        expect(x.importChanges(fromY).conflicts).toBe(1)
        expect(y.importChanges(fromX).conflicts).toBe(1)
      }
      expect(rows(x)).toEqual([{ id: 2, a: 'keep', b: 'me' }])
      expect(rows(y)).toEqual(rows(x))
      for (const r of [x, y]) {
        const [c, ...rest] = r.conflicts()
        expect(rest).toEqual([])
        expect(c).toMatchObject({ table: 't', pk: [1], column: 'a', kind: 'delete', kept: null, lost: 'edited' })
        expect(c?.keptSite).toBe(x.siteId)
        expect(c?.lostSite).toBe(y.siteId)
      }
    })
  }

  it('a delete made after seeing the update is not a conflict', () => {
    const x = replica('1')
    const y = replica('2')
    x.db.exec("INSERT INTO t VALUES (1, 'a', 'b')")
    sync(x, y)
    y.db.exec("UPDATE t SET a = 'edited' WHERE id = 1")
    sync(y, x)
    x.db.exec('DELETE FROM t WHERE id = 1')
    expect(sync(x, y).conflicts).toBe(0)
    expect(x.conflicts()).toEqual([])
    expect(y.conflicts()).toEqual([])
    expect(rows(y)).toEqual([])
  })

  it("the deleter's own earlier edits are not conflicts, and re-importing logs nothing twice", () => {
    const x = replica('1')
    const y = replica('2')
    x.db.exec("INSERT INTO t VALUES (1, 'a', 'b')")
    sync(x, y)
    x.db.exec("UPDATE t SET b = 'x edit' WHERE id = 1")
    x.db.exec('DELETE FROM t WHERE id = 1')
    const payload = x.exportChanges(y.versionVector())
    expect(y.importChanges(payload).conflicts).toBe(0)
    expect(y.importChanges(payload)).toEqual({ applied: 0, conflicts: 0 })
    expect(y.conflicts()).toEqual([])
  })

  it('restoring a value lost to a delete is refused as CONFLICT_STALE, and keep closes it', () => {
    const x = replica('1')
    const y = replica('2')
    x.db.exec("INSERT INTO t VALUES (1, 'a', 'b')")
    sync(x, y)
    x.db.exec('DELETE FROM t WHERE id = 1')
    y.db.exec("UPDATE t SET a = 'edited' WHERE id = 1")
    sync(x, y)
    const [c] = y.conflicts()
    expect(() => y.resolveConflict(c?.id as number, 'restore')).toThrow(
      expect.objectContaining({ code: 'CONFLICT_STALE' }),
    )
    y.resolveConflict(c?.id as number, 'keep')
    expect(y.conflicts()).toEqual([])
  })

  it('a tombstone relayed through a third replica still carries what its deleter had seen', () => {
    const x = replica('1')
    const y = replica('2')
    const z = replica('3')
    x.db.exec("INSERT INTO t VALUES (1, 'a', 'b')")
    sync(x, y)
    sync(x, z)
    y.db.exec("UPDATE t SET a = 'y saw it' WHERE id = 1")
    sync(y, x)
    x.db.exec('DELETE FROM t WHERE id = 1')
    sync(x, y)
    z.db.exec("UPDATE t SET b = 'z did not' WHERE id = 1")
    // z gets the tombstone only through y: y's update was seen by the deleter, z's was not.
    expect(sync(y, z).conflicts).toBe(1)
    expect(z.conflicts()).toEqual([expect.objectContaining({ column: 'b', kind: 'delete', lost: 'z did not' })])
  })
})
