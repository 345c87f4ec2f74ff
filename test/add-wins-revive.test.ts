// add-wins revivals whose counter parts and text blocks are carried over into the new life
// (SyncedTable.carryOver) must reach a peer that started the same life concurrently: the
// carried versions are old (that peer may have seen them in the life that ended and dropped
// them with it), so only a version the revival writes makes the cell new to it.
// Found by the counter property (SEED=-417296672 and 1486537972 in add-wins mode).
import { openReplica, type Replica } from 'sqlite-converge'
import { afterEach, describe, expect, it } from 'vitest'
import { SITE_POOL, settle, sync } from './helpers/replicas.js'

const STOCK =
  'CREATE TABLE stock (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL DEFAULT 0, price REAL NOT NULL DEFAULT 0, note TEXT)'
const NOTES = 'CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, title TEXT)'

let open: Replica[] = []
afterEach(() => {
  for (const r of open) r.close()
  open = []
})

/** Replicas with SITE_POOL[i] for each i: the site order decides ties between equal HLCs. */
/** One add-wins replica per given site of SITE_POOL (site order decides ties). */
function replicas<N extends number[]>(
  sites: [...N],
  ddl: string,
  table: string,
  columns: Record<string, 'counter' | 'text'>,
): { [K in keyof N]: Replica } {
  return sites.map((i) => {
    const r = openReplica(':memory:', { siteId: SITE_POOL[i] as string })
    open.push(r)
    r.db.exec(ddl)
    r.enableSync(table, { rows: 'add-wins', columns })
    return r
  }) as { [K in keyof N]: Replica }
}

function rows(r: Replica, table: string): unknown[] {
  return r.db.prepare(`SELECT * FROM ${table} ORDER BY id`).all()
}

/** Every replica holds `want` in `table`. */
function expectEverywhere(rs: readonly Replica[], table: string, want: unknown[]): void {
  for (const r of rs) expect(rows(r, table)).toEqual(want)
}

describe('add-wins: a revived life reaches a peer that re-inserted the row concurrently', () => {
  // B (site 1) revives the row on receiving A's (site 2) delete; A then re-inserts it. Both
  // lives have causal length 3, and A's start has the later stamp (A's clock is ahead of
  // B's and its site id sorts after B's), so the merged row's life stamp is A's own: only
  // the revived cells themselves can tell A that it lacks something.
  it('counter parts carried over from the reviver itself (the property counterexample)', () => {
    const [a, b, c] = replicas([1, 0, 3], STOCK, 'stock', { qty: 'counter', price: 'counter' })
    a.db.prepare('INSERT INTO stock (id) VALUES (1)').run()
    a.db.prepare('DELETE FROM stock WHERE id = 1').run()
    b.db.prepare('INSERT INTO stock (id) VALUES (1)').run()
    b.db.prepare('UPDATE stock SET price = price - 0.25, qty = qty + 3 WHERE id = 1').run()
    // A sees B's life 1 (its versions are covered by A's vector from now on) and keeps its delete.
    sync(b, a)
    expect(rows(a, 'stock')).toEqual([])
    // B receives the delete, which had not seen its update: B revives the row.
    sync(a, b)
    expect(rows(b, 'stock')).toEqual([{ id: 1, qty: 3, price: -0.25, note: null }])
    // A re-inserts the row without having heard of the revival.
    a.db.prepare('INSERT INTO stock (id, qty) VALUES (1, 10)').run()
    sync(a, b)
    sync(a, c)
    sync(b, a)
    settle([a, b, c], 4)
    const want = [{ id: 1, qty: 13, price: -0.25, note: null }]
    expectEverywhere([a, b, c], 'stock', want)
  })

  it('counter parts carried over from a third site only (the reviver edited another column)', () => {
    const [a, b, c] = replicas([1, 0, 2], STOCK, 'stock', { qty: 'counter', price: 'counter' })
    c.db.prepare('INSERT INTO stock (id, qty) VALUES (1, 5)').run()
    sync(c, a)
    sync(c, b)
    a.db.prepare('DELETE FROM stock WHERE id = 1').run()
    b.db.prepare("UPDATE stock SET note = 'keep' WHERE id = 1").run()
    sync(b, a)
    sync(a, b)
    expect(rows(b, 'stock')).toEqual([{ id: 1, qty: 5, price: 0, note: 'keep' }])
    a.db.prepare("INSERT INTO stock (id, qty, note) VALUES (1, 1, 'again')").run()
    sync(a, b)
    sync(b, a)
    settle([a, b, c], 4)
    const want = [{ id: 1, qty: 6, price: 0, note: 'again' }]
    expectEverywhere([a, b, c], 'stock', want)
  })

  it('text blocks carried over', () => {
    const [a, b, c] = replicas([1, 0, 3], NOTES, 'notes', { body: 'text' })
    a.db.prepare("INSERT INTO notes (id, body) VALUES (1, 'a')").run()
    a.db.prepare('DELETE FROM notes WHERE id = 1').run()
    b.db.prepare("INSERT INTO notes (id, body) VALUES (1, 'x\ny')").run()
    b.db.prepare("UPDATE notes SET body = 'x\nyy' WHERE id = 1").run()
    sync(b, a)
    sync(a, b)
    expect(rows(b, 'notes')).toEqual([{ id: 1, body: 'x\nyy', title: null }])
    a.db.prepare("INSERT INTO notes (id, body) VALUES (1, 'new')").run()
    sync(a, b)
    sync(a, c)
    sync(b, a)
    settle([a, b, c], 4)
    const want = [{ id: 1, body: 'x\nyy\nnew', title: null }]
    expectEverywhere([a, b, c], 'notes', want)
  })

  it('two replicas reviving the same row concurrently still count every part once', () => {
    const [a, b, c] = replicas([2, 0, 1], STOCK, 'stock', { qty: 'counter', price: 'counter' })
    a.db.prepare('INSERT INTO stock (id, qty) VALUES (1, 10)').run()
    settle([a, b, c], 4)
    // A deletes while B and C each sell some, without seeing the delete or each other.
    a.db.prepare('DELETE FROM stock WHERE id = 1').run()
    b.db.prepare('UPDATE stock SET qty = qty - 1 WHERE id = 1').run()
    c.db.prepare('UPDATE stock SET qty = qty - 2 WHERE id = 1').run()
    sync(b, c)
    sync(a, b)
    sync(a, c)
    settle([a, b, c], 4)
    const want = [{ id: 1, qty: 7, price: 0, note: null }]
    expectEverywhere([a, b, c], 'stock', want)
  })
})

describe('text: blocks of another site than the cell stamp', () => {
  // B and A edit different lines concurrently; A's write is the later, so the merged cell
  // carries A's stamp and B's block. R gets the merged cell from B and passes it on to S,
  // which has A's version only: R must know it holds a version of B's that S lacks.
  it('are passed on by a replica that relays the merged cell', () => {
    const [b, a, r, s] = replicas([0, 1, 2, 3], NOTES, 'notes', { body: 'text' })
    b.db.prepare("INSERT INTO notes (id, body) VALUES (1, 'one\ntwo')").run()
    for (const x of [a, r, s]) sync(b, x)
    b.db.prepare("UPDATE notes SET body = 'ONE\ntwo' WHERE id = 1").run()
    a.db.prepare("UPDATE notes SET body = 'one\nTWO' WHERE id = 1").run()
    sync(a, b)
    sync(a, s)
    sync(b, r)
    sync(r, s)
    const want = [{ id: 1, body: 'ONE\nTWO', title: null }]
    expect(rows(r, 'notes')).toEqual(want)
    expect(rows(s, 'notes')).toEqual(want)
  })
})
