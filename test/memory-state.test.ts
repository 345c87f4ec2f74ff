// What a Replica keeps in memory between transactions (its vector, clock and the peer
// vectors it last wrote) must stay true to the file: other connections, other Replica
// objects on the same connection, and the app's own rolled-back transactions move the file
// under it.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { openReplica, type Replica } from 'sqlite-converge'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'

const TODOS = 'CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY, title TEXT)'

let dir: string
let open: { close(): void }[]

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'converge-memory-'))
  open = []
})

afterEach(() => {
  for (const r of open.reverse()) r.close()
  rmSync(dir, { recursive: true, force: true })
})

function replica(target: string | Database.Database): Replica {
  const r = openReplica(typeof target === 'string' ? join(dir, target) : target)
  r.db.exec(TODOS)
  r.enableSync('todos')
  open.push(r)
  return r
}

/** A payload from a new site holding one row. */
function rowFrom(id: string): { payload: Uint8Array; site: string } {
  const w = replica(`writer-${id}.db`)
  w.db.prepare('INSERT INTO todos VALUES (?, ?)').run(id, `row ${id}`)
  return { payload: w.exportChanges(), site: w.siteId }
}

describe('state a replica keeps in memory', () => {
  it('follows imports made through another connection to the same file', () => {
    const a = replica('shared.db')
    const b = replica('shared.db')
    const first = rowFrom('1')
    a.importChanges(first.payload)
    expect(a.versionVector()).toHaveProperty(first.site)
    const second = rowFrom('2')
    b.importChanges(second.payload)
    expect(a.versionVector()).toHaveProperty(second.site)
    expect(a.versionVector()).toEqual(b.versionVector())
    // And a's next import builds on the file, not on what it held before.
    const third = rowFrom('3')
    a.importChanges(third.payload)
    expect(b.versionVector()).toEqual(a.versionVector())
    expect(Object.keys(a.versionVector())).toEqual(expect.arrayContaining([first.site, second.site, third.site]))
  })

  it('follows another Replica object on the same connection', () => {
    const db = new Database(join(dir, 'one-connection.db'))
    open.push(db)
    const a = replica(db)
    const b = replica(db)
    const first = rowFrom('1')
    a.importChanges(first.payload)
    a.versionVector()
    const second = rowFrom('2')
    b.importChanges(second.payload)
    expect(a.versionVector()).toHaveProperty(second.site)
    expect(a.versionVector()).toEqual(b.versionVector())
    // b records a peer after a read a, and a forgets it: b records it again on a new import.
    expect(a.forgetPeer(second.site)).toBe(true)
    const again = replica('writer-2b.db')
    again.importChanges(second.payload)
    again.db.prepare('INSERT INTO todos VALUES (?, ?)').run('2b', 'more')
    b.importChanges(again.exportChanges())
    expect(a.peers().map((p) => p.siteId)).toContain(again.siteId)
  })

  it('an import inside an app transaction that rolls back leaves no trace in memory', () => {
    const a = replica('rollback.db')
    const before = a.versionVector()
    const { payload, site } = rowFrom('1')
    a.db.exec('BEGIN')
    expect(a.importChanges(payload).applied).toBeGreaterThan(0)
    expect(a.versionVector()).toHaveProperty(site)
    a.db.exec('ROLLBACK')
    expect(a.versionVector()).toEqual(before)
    expect(a.peers()).toEqual([])
    // The payload is new again: it applies, and the sender is recorded.
    expect(a.importChanges(payload).applied).toBeGreaterThan(0)
    expect(a.versionVector()).toHaveProperty(site)
    expect(a.peers().map((p) => p.siteId)).toEqual([site])
  })

  it('a forgotten peer is recorded again by its next payload, even one announcing nothing new', () => {
    const a = replica('forget.db')
    const { payload, site } = rowFrom('1')
    a.importChanges(payload)
    expect(a.peers().map((p) => p.siteId)).toEqual([site])
    expect(a.forgetPeer(site)).toBe(true)
    expect(a.peers()).toEqual([])
    a.importChanges(payload)
    expect(a.peers().map((p) => p.siteId)).toEqual([site])
  })

  it('a peer vector that moves again within a second waits in memory: peers() shows it, other connections after close()', () => {
    const file = join(dir, 'peer-lag.db')
    const a = replica('peer-lag.db')
    const w = replica('writer.db')
    const stored = () => {
      const db = new Database(file, { readonly: true })
      try {
        const row = db.prepare('SELECT vector FROM _converge_peers WHERE site = ?').get(w.siteId) as { vector: string }
        return JSON.parse(row.vector) as Record<string, number>
      } finally {
        db.close()
      }
    }
    w.db.prepare('INSERT INTO todos VALUES (?, ?)').run('1', 'one')
    a.importChanges(w.exportChanges(a.versionVector()))
    const first = w.versionVector()[w.siteId] as number
    expect(stored()[w.siteId]).toBe(first)
    w.db.prepare('INSERT INTO todos VALUES (?, ?)').run('2', 'two')
    a.importChanges(w.exportChanges(a.versionVector()))
    const second = w.versionVector()[w.siteId] as number
    expect(second).toBeGreaterThan(first)
    // This object knows; the file still says the first vector.
    expect(a.peers().find((p) => p.siteId === w.siteId)?.vector[w.siteId]).toBe(second)
    expect(stored()[w.siteId]).toBe(first)
    // compact() reads the peer through the same merge.
    a.compact()
    a.close()
    open = open.filter((r) => r !== a)
    expect(stored()[w.siteId]).toBe(second)
  })

  it('a peer vector waiting in memory is written by the next transaction after another writer', () => {
    const file = join(dir, 'peer-flush.db')
    const a = replica('peer-flush.db')
    const w = replica('writer.db')
    for (const id of ['1', '2']) {
      w.db.prepare('INSERT INTO todos VALUES (?, ?)').run(id, id)
      a.importChanges(w.exportChanges(a.versionVector()))
    }
    const latest = w.versionVector()[w.siteId] as number
    // Another connection writes: a's next transaction is not trusted and writes what waits.
    const other = new Database(file)
    other.prepare('INSERT INTO todos VALUES (?, ?)').run('3', 'other')
    other.close()
    a.versionVector()
    const raw = new Database(file, { readonly: true })
    const row = raw.prepare('SELECT vector FROM _converge_peers WHERE site = ?').get(w.siteId) as { vector: string }
    raw.close()
    expect(JSON.parse(row.vector)[w.siteId]).toBe(latest)
  })

  it('versionVector() hands out a copy', () => {
    const a = replica('copy.db')
    a.db.prepare('INSERT INTO todos VALUES (?, ?)').run('1', 'x')
    const v = a.versionVector()
    v[a.siteId] = 0
    v.ffffffffffffffffffffffffffffffff = 1
    expect(a.versionVector()[a.siteId]).toBeGreaterThan(0)
    expect(a.versionVector()).not.toHaveProperty('ffffffffffffffffffffffffffffffff')
  })
})
