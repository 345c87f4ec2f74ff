// The sync server's live fan-out exports "changed only" payloads: the header announces just
// the vector entries above the `since` the receiver holds. Importing one must leave the
// receiver exactly as importing the whole export would: same rows, same vector, same
// conflicts. Only what it records of the sender (peers()) may lag.
import Database from 'better-sqlite3'
import fc from 'fast-check'
import { openReplica, type Replica } from 'sqlite-converge'
import { describe, expect, it } from 'vitest'
import { exportChangedOnly } from '../dist/replica/replica.js'
import { DecodedPayload } from '../dist/wire/payload.js'

const TABLE = 'CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)'
const RUNS = Number(process.env.FC_RUNS ?? 60)

function fresh(db: Database.Database | string = ':memory:'): Replica {
  const r = openReplica(db)
  r.db.exec(TABLE)
  r.enableSync('items')
  return r
}

/** A copy of `r` in memory (same site id: the copy never talks to the original). */
function clone(r: Replica): Replica {
  return fresh(new Database(r.db.serialize()))
}

function rows(r: Replica): unknown[] {
  return r.db.prepare('SELECT * FROM items ORDER BY id').raw().all()
}

const write = fc.record({
  kind: fc.constant('write' as const),
  at: fc.integer({ min: 0, max: 2 }),
  id: fc.integer({ min: 1, max: 6 }),
  op: fc.constantFrom('upsert', 'delete', 'a', 'b'),
  value: fc.integer({ min: 0, max: 9 }),
})
const exchange = fc.record({
  kind: fc.constant('exchange' as const),
  from: fc.integer({ min: 0, max: 2 }),
  to: fc.integer({ min: 0, max: 2 }),
})
const receive = fc.record({ kind: fc.constant('receive' as const) })
/** The receiver gets something its server lacks: another writer's changes, or its own write. */
const aside = fc.record({
  kind: fc.constant('aside' as const),
  from: fc.integer({ min: 1, max: 3 }),
  id: fc.integer({ min: 1, max: 6 }),
})
const step = fc.oneof(
  { weight: 4, arbitrary: write },
  { weight: 2, arbitrary: exchange },
  { weight: 1, arbitrary: receive },
  { weight: 1, arbitrary: aside },
)

describe('changed-only exports', () => {
  it('import like the whole export: rows, vector and conflicts agree, the header lists only moved entries', () => {
    fc.assert(
      fc.property(fc.array(step, { minLength: 1, maxLength: 40 }), (steps) => {
        // Writers 0..2 trade changes among themselves; writer 0 serves the receiver.
        const writers = [fresh(), fresh(), fresh()]
        let receiver = fresh()
        try {
          const serve = () => {
            const since = receiver.versionVector()
            const whole = writers[0]?.exportChanges(since) as Uint8Array
            const changed = exportChangedOnly(writers[0] as Replica, since)
            const header = DecodedPayload.open(changed, 2 ** 30).header
            for (const [site, hlc] of Object.entries(header.vector)) expect(hlc).toBeGreaterThan(since[site] ?? 0)
            for (const site of Object.keys(header.since)) expect(header.vector).toHaveProperty(site)
            const copy = clone(receiver)
            try {
              const a = receiver.importChanges(whole)
              const b = copy.importChanges(changed)
              expect(b).toEqual(a)
              expect(rows(copy)).toEqual(rows(receiver))
              expect(copy.versionVector()).toEqual(receiver.versionVector())
              expect(copy.conflicts().length).toBe(receiver.conflicts().length)
            } finally {
              copy.close()
            }
          }
          for (const s of steps) {
            if (s.kind === 'write') {
              const db = (writers[s.at] as Replica).db
              if (s.op === 'upsert') {
                db.prepare('INSERT OR REPLACE INTO items VALUES (?, ?, ?)').run(s.id, `v${s.value}`, s.value)
              } else if (s.op === 'delete') {
                db.prepare('DELETE FROM items WHERE id = ?').run(s.id)
              } else {
                db.prepare(`UPDATE items SET ${s.op} = ? WHERE id = ?`).run(
                  s.op === 'a' ? `u${s.value}` : s.value,
                  s.id,
                )
              }
            } else if (s.kind === 'exchange') {
              if (s.from === s.to) continue
              const to = writers[s.to] as Replica
              to.importChanges((writers[s.from] as Replica).exportChanges(to.versionVector()))
            } else if (s.kind === 'aside') {
              if (s.from === 3)
                receiver.db.prepare('INSERT OR REPLACE INTO items VALUES (?, ?, ?)').run(s.id, 'mine', 0)
              else receiver.importChanges((writers[s.from] as Replica).exportChanges(receiver.versionVector()))
            } else {
              serve()
            }
          }
          serve()
          // After a full exchange, the receiver holds what its server holds.
          for (const w of [...writers.slice(1), receiver]) {
            writers[0]?.importChanges(w.exportChanges(writers[0]?.versionVector()))
          }
          serve()
          expect(rows(receiver)).toEqual(rows(writers[0] as Replica))
          receiver.close()
          receiver = fresh()
          serve()
          expect(rows(receiver)).toEqual(rows(writers[0] as Replica))
        } finally {
          for (const w of writers) w.close()
          receiver.close()
        }
      }),
      { numRuns: RUNS },
    )
  })
})
