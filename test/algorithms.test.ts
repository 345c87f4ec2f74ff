// Column algorithms and row modes through the public API: options, counters end to end
// (payloads, a bundle and the sync server), grow-only tables, and their errors.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { openReplica, type Replica } from 'sqlite-converge'
import { createServer } from 'sqlite-converge/server'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { PayloadEncoder } from '../src/wire/payload.js'
import { dbHash } from './helpers/db-hash.js'
import { codeOf, SITE_POOL, sync } from './helpers/replicas.js'

const STOCK =
  'CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL DEFAULT 0, weight REAL NOT NULL DEFAULT 0, name TEXT)'
const COUNTERS = { columns: { qty: 'counter', weight: 'counter' } } as const

let dir: string
let open: Replica[] = []

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'converge-algorithms-'))
})
afterEach(() => {
  for (const r of open) r.close()
  open = []
  rmSync(dir, { recursive: true, force: true })
})

function till(i: number, file = ':memory:'): Replica {
  const r = openReplica(file, { siteId: SITE_POOL[i] as string })
  open.push(r)
  r.db.exec(STOCK)
  r.enableSync('stock', COUNTERS)
  return r
}

function stock(r: Replica): unknown[] {
  return r.db.prepare('SELECT * FROM stock ORDER BY sku').all()
}

describe('enableSync options', () => {
  it('are checked: unknown algorithm, row mode, column, key column or option is BAD_ARGUMENT and changes nothing', () => {
    const r = openReplica(':memory:')
    open.push(r)
    r.db.exec(STOCK)
    const hash = dbHash(r.db)
    const bad = [
      { columns: { qty: 'sum' } },
      { rows: 'forever' },
      { columns: { nope: 'counter' } },
      { columns: { sku: 'counter' } },
      { colums: {} },
      'counter',
    ]
    for (const options of bad) {
      expect(
        codeOf(() => r.enableSync('stock', options as never)),
        JSON.stringify(options),
      ).toBe('BAD_ARGUMENT')
      expect(dbHash(r.db)).toBe(hash)
    }
    expect(r.syncedTables()).toEqual([])
  })

  it('are fixed when a table is first synced: the same options again are a no-op, others are refused', () => {
    const r = till(0)
    r.enableSync('stock', COUNTERS)
    r.enableSync('stock')
    expect(codeOf(() => r.enableSync('stock', { columns: { qty: 'counter' } }))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => r.enableSync('stock', { ...COUNTERS, rows: 'grow-only' }))).toBe('BAD_ARGUMENT')
  })

  it('persist across reopen', () => {
    const file = join(dir, 'till.db')
    const a = till(0, file)
    a.db.exec(`INSERT INTO stock (sku, qty) VALUES ('pen', 10)`)
    a.close()
    open = open.filter((r) => r !== a)
    const again = openReplica(file)
    open.push(again)
    const b = till(1)
    sync(again, b)
    again.db.exec(`UPDATE stock SET qty = qty - 1`)
    b.db.exec(`UPDATE stock SET qty = qty - 2`)
    sync(again, b)
    sync(b, again)
    expect(stock(again)).toEqual(stock(b))
    expect(again.db.prepare('SELECT qty FROM stock').get()).toEqual({ qty: 7 })
  })

  it('must agree between replicas: a counter on one side and last-writer-wins on the other is SCHEMA_MISMATCH naming the column', () => {
    const a = till(0)
    const b = openReplica(':memory:', { siteId: SITE_POOL[1] as string })
    open.push(b)
    b.db.exec(STOCK)
    b.enableSync('stock', { columns: { qty: 'counter' } })
    a.db.exec(`INSERT INTO stock (sku, qty, weight) VALUES ('pen', 1, 0.5)`)
    const hash = dbHash(b.db)
    let message = ''
    try {
      b.importChanges(a.exportChanges())
    } catch (e) {
      message = (e as Error).message
      expect(codeOf(() => b.importChanges(a.exportChanges()))).toBe('SCHEMA_MISMATCH')
    }
    expect(message).toMatch(/weight/)
    expect(message).toMatch(/counter/)
    expect(dbHash(b.db)).toBe(hash)
  })
})

describe('counter columns', () => {
  it('two tills selling one each from 10 leave 8 everywhere, whatever the exchange order', () => {
    const [a, b, c] = [till(0), till(1), till(2)]
    a.db.exec(`INSERT INTO stock (sku, qty, weight, name) VALUES ('pen', 10, 1.5, 'Pen')`)
    sync(a, b)
    sync(a, c)
    a.db.exec(`UPDATE stock SET qty = qty - 1`)
    b.db.exec(`UPDATE stock SET qty = qty - 1`)
    c.db.exec(`UPDATE stock SET qty = qty + 5, weight = weight + 0.25`)
    sync(c, b)
    sync(b, a)
    sync(a, c)
    sync(c, b)
    sync(b, a)
    for (const r of [a, b, c]) {
      expect(stock(r)).toEqual([{ sku: 'pen', qty: 13, weight: 1.75, name: 'Pen' }])
    }
    // Nothing concurrent about counters is a conflict, and re-importing changes nothing.
    expect(a.conflicts()).toEqual([])
    expect(a.importChanges(b.exportChanges())).toEqual({ applied: 0, conflicts: 0 })
  })

  it('several writes between syncs count once, as their net difference', () => {
    const [a, b] = [till(0), till(1)]
    a.db.exec(`INSERT INTO stock (sku, qty) VALUES ('pen', 0)`)
    sync(a, b)
    for (let i = 0; i < 5; i++) b.db.exec(`UPDATE stock SET qty = qty + 2`)
    b.db.exec(`UPDATE stock SET qty = qty - 3`)
    a.db.exec(`UPDATE stock SET qty = 100`) // an absolute write is a difference of +100
    sync(b, a)
    sync(a, b)
    expect(a.db.prepare('SELECT qty FROM stock').get()).toEqual({ qty: 107 })
    expect(b.db.prepare('SELECT qty FROM stock').get()).toEqual({ qty: 107 })
  })

  it('a deleted and re-inserted row starts counting afresh', () => {
    const [a, b] = [till(0), till(1)]
    a.db.exec(`INSERT INTO stock (sku, qty) VALUES ('pen', 10)`)
    sync(a, b)
    b.db.exec(`UPDATE stock SET qty = qty + 1`)
    sync(b, a)
    a.db.exec(`DELETE FROM stock; INSERT INTO stock (sku, qty) VALUES ('pen', 3)`)
    b.db.exec(`UPDATE stock SET qty = qty + 1`) // concurrent with the delete: that life ended
    sync(a, b)
    sync(b, a)
    expect(stock(a)).toEqual(stock(b))
    expect(a.db.prepare('SELECT qty FROM stock').get()).toEqual({ qty: 3 })
  })

  it('only takes INTEGER or REAL values: other writes are refused by SQLite, enabling a table holding them is BAD_ARGUMENT', () => {
    const a = till(0)
    a.db.exec(`INSERT INTO stock (sku, qty) VALUES ('pen', 1)`)
    expect(() => a.db.exec(`UPDATE stock SET qty = 'lots'`)).toThrow(/counter column.*qty/)
    expect(() => a.db.exec(`INSERT INTO stock (sku, qty, weight) VALUES ('ink', 1, 'heavy')`)).toThrow(/weight/)
    expect(a.db.prepare('SELECT qty FROM stock').get()).toEqual({ qty: 1 })
    const r = openReplica(':memory:')
    open.push(r)
    r.db.exec(STOCK)
    r.db.exec(`INSERT INTO stock (sku, qty, weight) VALUES ('pen', 1, 'heavy')`)
    const hash = dbHash(r.db)
    expect(codeOf(() => r.enableSync('stock', COUNTERS))).toBe('BAD_ARGUMENT')
    expect(dbHash(r.db)).toBe(hash)
  })

  it('travels in bundles and through the sync server, whose copy of the table counts too', async () => {
    const server = await createServer({ port: 0, data: join(dir, 'data'), logger: pino({ level: 'silent' }) })
    try {
      const url = `${server.url}/db/shop`
      const [a, b] = [till(0, join(dir, 'a.db')), till(1, join(dir, 'b.db'))]
      a.db.exec(`INSERT INTO stock (sku, qty, weight) VALUES ('pen', 10, 0)`)
      await a.sync(url)
      await b.sync(url)
      a.db.exec(`UPDATE stock SET qty = qty - 1`)
      b.db.exec(`UPDATE stock SET qty = qty - 1`)
      await a.sync(url)
      await b.sync(url)
      await a.sync(url)
      expect(stock(a)).toEqual([{ sku: 'pen', qty: 8, weight: 0, name: null }])
      expect(stock(b)).toEqual(stock(a))
      const c = till(2)
      const bundle = join(dir, 'x.bundle')
      b.exportBundle(bundle)
      c.importBundle(bundle)
      expect(stock(c)).toEqual(stock(a))
    } finally {
      await server.close()
    }
  })
})

describe('grow-only tables', () => {
  const AUDIT = 'CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT, email TEXT UNIQUE)'

  function auditor(i: number): Replica {
    const r = openReplica(':memory:', { siteId: SITE_POOL[i] as string })
    open.push(r)
    r.db.exec(AUDIT)
    r.enableSync('audit', { rows: 'grow-only' })
    return r
  }

  it('refuse deletes, key changes and replacing another row, and sync inserts and updates', () => {
    const [a, b] = [auditor(0), auditor(1)]
    a.db.exec(`INSERT INTO audit VALUES (1, 'login', 'ann@x'), (2, 'logout', 'bob@x')`)
    expect(() => a.db.exec('DELETE FROM audit WHERE id = 1')).toThrow(/grow-only/)
    expect(() => a.db.exec('UPDATE audit SET id = 3 WHERE id = 1')).toThrow(/grow-only/)
    expect(() => a.db.exec(`INSERT OR REPLACE INTO audit VALUES (3, 'x', 'ann@x')`)).toThrow(/grow-only/)
    a.db.exec(`INSERT OR REPLACE INTO audit VALUES (1, 'login again', 'ann@x')`)
    a.db.exec(`UPDATE audit SET what = 'logout!' WHERE id = 2`)
    sync(a, b)
    expect(b.db.prepare('SELECT * FROM audit ORDER BY id').all()).toEqual([
      { id: 1, what: 'login again', email: 'ann@x' },
      { id: 2, what: 'logout!', email: 'bob@x' },
    ])
  })

  it('a payload that deletes a row of a grow-only table is BAD_PAYLOAD and changes nothing', () => {
    const a = auditor(0)
    a.db.exec(`INSERT INTO audit VALUES (1, 'login', 'ann@x')`)
    const b = auditor(1)
    sync(a, b)
    const table = b.table('audit')
    const wire = {
      name: 'audit',
      hash: table.schema.hash,
      pkCount: 1,
      columns: ['id', 'what', 'email'],
      affinities: ['INTEGER', 'TEXT', 'TEXT'],
      algorithms: ['lww', 'lww', 'lww'] as const,
      rows: 'grow-only' as const,
    }
    const site = SITE_POOL[0] as string
    const hlc = a.versionVector()[site] as number
    const enc = new PayloadEncoder(site, [{ ...wire, algorithms: [...wire.algorithms] }])
    enc.addChunk(0, [
      { pk: [1n], cl: 2, clStamp: { cl: 2, hlc: hlc + 1, site }, stamps: [null, null], values: [null, null] },
    ])
    const payload = enc.finish({ [site]: hlc + 1 }, {}, hlc + 1)
    const hash = dbHash(b.db)
    expect(codeOf(() => b.importChanges(payload))).toBe('BAD_PAYLOAD')
    expect(dbHash(b.db)).toBe(hash)
  })
})
