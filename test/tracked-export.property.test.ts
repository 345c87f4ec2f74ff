// Exports read the rows a connection wrote since it began tracking by key instead of
// scanning the metadata table (SyncedTable.changedKeys). Whatever the history, an export
// must hold exactly the rows and versions a full scan finds: the same export made through a
// copy of the file, which tracks nothing, is the reference.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { openReplica, type Replica, type VersionVector } from 'sqlite-converge'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DecodedPayload } from '../dist/wire/payload.js'

const TABLES = `
  CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, a TEXT, b INTEGER);
  CREATE TABLE IF NOT EXISTS pairs (x TEXT NOT NULL, y INTEGER NOT NULL, v TEXT, PRIMARY KEY (x, y)) WITHOUT ROWID;`
const RUNS = Number(process.env.FC_RUNS ?? 40)

let dir: string
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'converge-tracked-'))
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

function open(file: string): Replica {
  const r = openReplica(file)
  r.db.exec(TABLES)
  r.enableSync('items')
  r.enableSync('pairs')
  return r
}

let copies = 0
/**
 * The export a full scan makes: from a copy of the file (VACUUM INTO reads through the same
 * connection, so the original's tracker stays valid), which tracks nothing.
 */
function scanned(r: Replica, since: VersionVector): Uint8Array {
  const copy = join(dir, `copy-${copies++}.db`)
  r.db.exec(`VACUUM INTO '${copy}'`)
  const other = openReplica(copy)
  try {
    return other.exportChanges(since)
  } finally {
    other.close()
    rmSync(copy, { force: true })
  }
}

/** The rows of a payload, table by table, in a stable order (stamps and values included). */
function contents(payload: Uint8Array): string[] {
  const decoded = DecodedPayload.open(payload, 2 ** 30)
  const out: string[] = []
  for (const { table, rows } of decoded.chunks()) {
    const name = decoded.header.tables[table]?.name
    for (const row of rows) out.push(JSON.stringify({ name, ...row }, (_, v) => (typeof v === 'bigint' ? `${v}n` : v)))
  }
  return out.sort()
}

const write = fc.record({
  kind: fc.constant('write' as const),
  at: fc.integer({ min: 0, max: 2 }),
  id: fc.integer({ min: 1, max: 8 }),
  what: fc.constantFrom('upsert', 'update', 'delete', 'pair', 'unpair', 'rekey'),
  n: fc.integer({ min: 0, max: 5 }),
})
const sync = fc.record({
  kind: fc.constant('sync' as const),
  from: fc.integer({ min: 0, max: 2 }),
  to: fc.integer({ min: 0, max: 2 }),
})
const bulk = fc.record({
  kind: fc.constant('bulk' as const),
  at: fc.integer({ min: 0, max: 2 }),
  // Past 1,000 rows an import writes new rows in multi-row inserts, not one by one.
  rows: fc.constantFrom(300, 1100),
})
const check = fc.record({
  kind: fc.constant('check' as const),
  at: fc.integer({ min: 0, max: 2 }),
  peer: fc.integer({ min: 1, max: 2 }),
  stale: fc.boolean(),
})
const op = fc.oneof(
  { weight: 3, arbitrary: write },
  { weight: 3, arbitrary: sync },
  { weight: 1, arbitrary: bulk },
  { weight: 3, arbitrary: check },
)

function hubOf(rs: Replica[]): Replica {
  return rs[0] as Replica
}

type Step = typeof op extends fc.Arbitrary<infer T> ? T : never

let run = 0

/**
 * Runs `steps` on three replicas and compares every export a `check` step asks for with a
 * scan's. With `hub`, every exchange goes through replica 0 (a server, as in live sync), so
 * that receivers hold what the exporter held at its last export and tracked keys serve.
 */
function program(steps: Step[], hub: boolean): void {
  run++
  const files = [0, 1, 2].map((i) => join(dir, `r${run}-${i}.db`))
  const rs = files.map(open)
  // Vectors each replica had earlier: stale `since` values, as a peer may send.
  const history: VersionVector[][] = rs.map(() => [{}])
  let bulkKey = 1000
  try {
    for (const s of steps) {
      if (s.kind === 'write') {
        const db = (rs[s.at] as Replica).db
        if (s.what === 'upsert') db.prepare('INSERT OR REPLACE INTO items VALUES (?, ?, ?)').run(s.id, `a${s.n}`, s.n)
        else if (s.what === 'update') db.prepare('UPDATE items SET b = b + 1 WHERE id = ?').run(s.id)
        else if (s.what === 'delete') db.prepare('DELETE FROM items WHERE id = ?').run(s.id)
        else if (s.what === 'pair')
          db.prepare('INSERT OR REPLACE INTO pairs VALUES (?, ?, ?)').run(`x${s.n}`, s.id, 'v')
        else if (s.what === 'unpair') db.prepare('DELETE FROM pairs WHERE y = ?').run(s.id)
        else db.prepare('UPDATE items SET id = id + 100 WHERE id = ?').run(s.id)
      } else if (s.kind === 'bulk') {
        // Enough fresh inserts for the set-based fold, which stops tracking.
        const db = (rs[s.at] as Replica).db
        const insert = db.prepare('INSERT INTO items VALUES (?, ?, ?)')
        db.transaction(() => {
          for (let i = 0; i < s.rows; i++) insert.run(bulkKey++ + s.at * 100_000, 'bulk', i)
        })()
      } else if (s.kind === 'sync') {
        const from = hub && s.from !== 0 && s.to !== 0 ? 0 : s.from
        if (from === s.to) continue
        const to = rs[s.to] as Replica
        const v = to.versionVector()
        history[s.to]?.push(v)
        to.importChanges((rs[from] as Replica).exportChanges(v))
      } else {
        const at = hub ? 0 : s.at
        const peer = hub ? s.peer : (s.at + s.peer) % 3
        if (hub && !s.stale) {
          // The live pattern: the receiver is up to date with the hub, then another client
          // writes and pushes, and the hub exports what is new.
          const receiver = rs[peer] as Replica
          receiver.importChanges(hubOf(rs).exportChanges(receiver.versionVector()))
          const other = rs[3 - peer] as Replica
          other.db.prepare('INSERT OR REPLACE INTO items VALUES (?, ?, ?)').run(s.peer * 10 + run, 'live', 0)
          hubOf(rs).importChanges(other.exportChanges(hubOf(rs).versionVector()))
        }
        const peers = history[peer] as VersionVector[]
        const since = s.stale
          ? (peers[Math.floor(peers.length / 2)] as VersionVector)
          : (rs[peer] as Replica).versionVector()
        const tracked = (rs[at] as Replica).exportChanges(since)
        expect(contents(scanned(rs[at] as Replica, since))).toEqual(contents(tracked))
      }
    }
  } finally {
    for (const r of rs) r.close()
  }
}

describe('exports from tracked keys', () => {
  it('hold exactly what a scan of the table finds, whoever exchanges with whom', () => {
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 40 }), (steps) => program(steps, false)),
      { numRuns: RUNS },
    )
  })

  it('hold exactly what a scan of the table finds, with every exchange through a hub', () => {
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 40 }), (steps) => program(steps, true)),
      { numRuns: RUNS },
    )
  })

  it('rows another connection wrote are found: its commit ends the tracking', () => {
    const file = join(dir, 'two-connections.db')
    const [a, w, c] = [open(file), open(join(dir, 'two-w.db')), open(join(dir, 'two-c.db'))]
    const second = open(file)
    try {
      a.exportChanges(c.versionVector()) // a's connection starts tracking
      w.db.prepare('INSERT INTO items VALUES (1, ?, 1)').run('through the other connection')
      second.importChanges(w.exportChanges(second.versionVector()))
      const since = c.versionVector()
      const payload = a.exportChanges(since)
      expect(contents(payload)).toEqual(contents(scanned(a, since)))
      c.importChanges(payload)
      expect(c.db.prepare('SELECT a FROM items').all()).toEqual([{ a: 'through the other connection' }])
    } finally {
      for (const r of [a, second, w, c]) r.close()
    }
  })

  it('after a column is added (uniform rows get default cells), exports match a scan', () => {
    const [a, b, c] = ['a', 'b', 'c'].map((n) => open(join(dir, `alter-${n}.db`))) as [Replica, Replica, Replica]
    try {
      a.db.prepare('INSERT INTO items VALUES (1, ?, 1)').run('first')
      c.importChanges(a.exportChanges(c.versionVector())) // a starts tracking here
      a.db.prepare('INSERT INTO items VALUES (2, ?, 2)').run('new on a')
      b.db.prepare('INSERT INTO items VALUES (3, ?, 3)').run('from b')
      c.importChanges(b.exportChanges(c.versionVector()))
      a.importChanges(b.exportChanges(a.versionVector()))
      a.db.exec('ALTER TABLE items ADD COLUMN extra TEXT')
      const since = c.versionVector()
      expect(contents(a.exportChanges(since))).toEqual(contents(scanned(a, since)))
    } finally {
      for (const r of [a, b, c]) r.close()
    }
  })

  it('rows an import wrote in multi-row inserts are found', () => {
    const [a, b, c] = ['a', 'b', 'c'].map((n) => open(join(dir, `multi-${n}.db`))) as [Replica, Replica, Replica]
    try {
      b.exportChanges(c.versionVector()) // b starts tracking
      const insert = a.db.prepare('INSERT INTO items VALUES (?, ?, ?)')
      a.db.transaction(() => {
        for (let i = 0; i < 1100; i++) insert.run(i, 'x', i)
      })()
      b.importChanges(a.exportChanges(b.versionVector()))
      const since = c.versionVector()
      const tracked = b.exportChanges(since)
      expect(contents(tracked)).toEqual(contents(scanned(b, since)))
      expect(c.importChanges(tracked).applied).toBeGreaterThan(0)
      expect(c.db.prepare('SELECT count(*) AS n FROM items').get()).toEqual({ n: 1100 })
    } finally {
      for (const r of [a, b, c]) r.close()
    }
  })
})
