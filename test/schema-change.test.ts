// Living schemas: ALTER TABLE ... ADD COLUMN with plain SQL while replicas are apart.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { ConvergeError, openReplica, type Replica } from 'sqlite-converge'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { dbHash } from './helpers/db-hash.js'
import { codeOf, SITE_POOL, settle, sync } from './helpers/replicas.js'

const TODOS = 'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done INTEGER NOT NULL DEFAULT 0)'

let dir: string
let open: Replica[] = []

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'converge-schema-'))
})
afterEach(() => {
  for (const r of open) r.close()
  open = []
  rmSync(dir, { recursive: true, force: true })
})

function replica(i: number, ddl = TODOS, file = ':memory:'): Replica {
  const r = openReplica(file, { siteId: SITE_POOL[i] as string })
  open.push(r)
  r.db.exec(ddl)
  r.enableSync('todos')
  return r
}

function rows(r: Replica): unknown[] {
  return r.db.prepare('SELECT * FROM todos ORDER BY id').all()
}

/** Full exchange between every pair until nothing applies (at most 5 rounds). */
describe('ALTER TABLE ADD COLUMN on a synced table', () => {
  it('is followed without any call: new rows and updates of the new column sync', () => {
    const a = replica(0)
    const b = replica(1)
    a.db.exec(`INSERT INTO todos (id, title) VALUES ('1', 'milk'), ('2', 'bread')`)
    sync(a, b)
    for (const r of [a, b]) r.db.exec(`ALTER TABLE todos ADD COLUMN due TEXT DEFAULT 'someday'`)
    a.db.exec(`UPDATE todos SET due = 'monday' WHERE id = '1'`)
    b.db.exec(`INSERT INTO todos (id, title, due) VALUES ('3', 'eggs', 'friday')`)
    b.db.exec(`UPDATE todos SET title = 'brown bread' WHERE id = '2'`)
    settle([a, b], 5)
    const expected = [
      { id: '1', title: 'milk', done: 0, due: 'monday' },
      { id: '2', title: 'brown bread', done: 0, due: 'someday' },
      { id: '3', title: 'eggs', done: 0, due: 'friday' },
    ]
    expect(rows(a)).toEqual(expected)
    expect(rows(b)).toEqual(expected)
    expect(a.conflicts()).toEqual([])
  })

  it('an update of only the new column, made before the engine looked, is not lost', () => {
    const a = replica(0)
    const b = replica(1)
    a.db.exec(`INSERT INTO todos (id, title) VALUES ('1', 'milk')`)
    sync(a, b)
    b.db.exec('ALTER TABLE todos ADD COLUMN due TEXT')
    // Another connection alters the table and writes the new column while the Replica
    // object has not run since: the old triggers do not watch `due`.
    a.db.exec('ALTER TABLE todos ADD COLUMN due TEXT')
    a.db.exec(`UPDATE todos SET due = 'tuesday' WHERE id = '1'`)
    expect(a.db.prepare(`SELECT count(*) AS n FROM _converge_log_1`).get()).toEqual({ n: 0 })
    sync(a, b)
    expect(rows(b)).toEqual([{ id: '1', title: 'milk', done: 0, due: 'tuesday' }])
  })

  it('a replica that has not added the column yet syncs the shared columns and gets the new one when it adds it', () => {
    const a = replica(0)
    const old = replica(1)
    const c = replica(2)
    a.db.exec(`INSERT INTO todos (id, title) VALUES ('1', 'milk'), ('2', 'bread')`)
    settle([a, old, c], 5)
    a.db.exec('ALTER TABLE todos ADD COLUMN due TEXT')
    a.db.exec(`UPDATE todos SET due = 'monday' WHERE id = '1'`)
    a.db.exec(`INSERT INTO todos (id, title, due) VALUES ('3', 'eggs', 'friday')`)
    old.db.exec(`UPDATE todos SET done = 1 WHERE id = '2'`)
    old.db.exec(`INSERT INTO todos (id, title) VALUES ('4', 'tea')`)

    // New to old: shared columns apply; the old replica does not claim a's versions as seen.
    const before = old.versionVector()[SITE_POOL[0] as string]
    sync(a, old)
    expect(old.db.prepare('SELECT * FROM todos ORDER BY id').all()).toEqual([
      { id: '1', title: 'milk', done: 0 },
      { id: '2', title: 'bread', done: 1 },
      { id: '3', title: 'eggs', done: 0 },
      { id: '4', title: 'tea', done: 0 },
    ])
    expect(old.versionVector()[SITE_POOL[0] as string]).toBe(before)
    // Old to new: a row the old replica created takes the new column's default there.
    sync(old, a)
    expect(rows(a)).toContainEqual({ id: '4', title: 'tea', done: 0, due: null })
    expect(rows(a)).toContainEqual({ id: '2', title: 'bread', done: 1, due: null })
    // A relay through the old replica carries what it has; c gets `due` once it has it.
    sync(old, c)
    c.db.exec('ALTER TABLE todos ADD COLUMN due TEXT')
    old.db.exec('ALTER TABLE todos ADD COLUMN due TEXT')
    settle([a, old, c], 5)
    for (const r of [old, c]) expect(rows(r)).toEqual(rows(a))
    expect(rows(a)).toContainEqual({ id: '1', title: 'milk', done: 0, due: 'monday' })
    expect(rows(a)).toContainEqual({ id: '3', title: 'eggs', done: 0, due: 'friday' })
  })

  it('a new life created by a replica without the column resets it to its default elsewhere', () => {
    const a = replica(0)
    const old = replica(1)
    a.db.exec(`INSERT INTO todos (id, title) VALUES ('1', 'milk')`)
    sync(a, old)
    a.db.exec(`ALTER TABLE todos ADD COLUMN due TEXT DEFAULT 'soon'`)
    a.db.exec(`UPDATE todos SET due = 'monday'`)
    old.db.exec(`DELETE FROM todos; INSERT INTO todos (id, title) VALUES ('1', 'milk again')`)
    sync(old, a)
    expect(rows(a)).toEqual([{ id: '1', title: 'milk again', done: 0, due: 'soon' }])
  })

  it("a row that holds a column default since it was created gets the receiver's DEFAULT, even through a relay without one", () => {
    const old = replica(0)
    old.db.exec(`INSERT INTO todos (id, title) VALUES ('1', 'milk')`)
    // A relay (like the sync server's copy) that added the column without a DEFAULT.
    const relay = replica(1)
    relay.db.exec('ALTER TABLE todos ADD COLUMN due TEXT')
    sync(old, relay)
    expect(rows(relay)).toEqual([{ id: '1', title: 'milk', done: 0, due: null }])
    const app = replica(
      2,
      `CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done INTEGER NOT NULL DEFAULT 0, due TEXT DEFAULT 'someday')`,
    )
    sync(relay, app)
    expect(rows(app)).toEqual([{ id: '1', title: 'milk', done: 0, due: 'someday' }])
    // A real write to the column wins over the default everywhere.
    relay.db.exec(`UPDATE todos SET due = 'monday'`)
    sync(relay, app)
    expect(rows(app)).toEqual([{ id: '1', title: 'milk', done: 0, due: 'monday' }])
  })

  it('keeps working across reopen, from another connection, and past 62 columns (a second change-mask word)', () => {
    const file = join(dir, 'wide.db')
    const a = replica(0, TODOS, file)
    const b = replica(1)
    a.db.exec(`INSERT INTO todos (id, title) VALUES ('1', 'x')`)
    sync(a, b)
    a.close()
    open = open.filter((r) => r !== a)
    // Another process (the sqlite3 shell would do the same) widens the table.
    const cols = Array.from({ length: 70 }, (_, i) => `ADD COLUMN c${i} INTEGER`)
    const plain = new Database(file)
    for (const c of cols) plain.exec(`ALTER TABLE todos ${c}`)
    plain.exec(`UPDATE todos SET c69 = 69, c5 = 5 WHERE id = '1'`)
    plain.close()
    const again = openReplica(file)
    open.push(again)
    for (const c of cols) b.db.exec(`ALTER TABLE todos ${c}`)
    sync(again, b)
    expect(b.db.prepare(`SELECT c5, c69, c68 FROM todos`).get()).toEqual({ c5: 5, c69: 69, c68: null })
    b.db.exec(`UPDATE todos SET c68 = 68`)
    sync(b, again)
    expect(again.db.prepare(`SELECT c5, c68, c69 FROM todos`).get()).toEqual({ c5: 5, c68: 68, c69: 69 })
  })

  it('a schema changed by the sqlite3 shell is followed too', () => {
    let shell = true
    try {
      execFileSync('sqlite3', ['-version'])
    } catch {
      shell = false
    }
    if (!shell) return
    const file = join(dir, 'shell.db')
    const a = replica(0, TODOS, file)
    const b = replica(1)
    a.db.exec(`INSERT INTO todos (id, title) VALUES ('1', 'x')`)
    execFileSync('sqlite3', [file, `ALTER TABLE todos ADD COLUMN note TEXT; UPDATE todos SET note = 'from the shell';`])
    b.db.exec('ALTER TABLE todos ADD COLUMN note TEXT')
    sync(a, b)
    expect(rows(b)).toEqual([{ id: '1', title: 'x', done: 0, note: 'from the shell' }])
  })
})

describe('schema changes that are refused', () => {
  it('renaming a synced column fails every sync call with SCHEMA_CHANGE_UNSUPPORTED until it is renamed back', () => {
    const a = replica(0)
    a.db.exec(`INSERT INTO todos (id, title) VALUES ('1', 'x')`)
    a.versionVector()
    a.db.exec('ALTER TABLE todos RENAME COLUMN title TO name')
    let err: unknown
    try {
      a.exportChanges()
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(ConvergeError)
    expect((err as ConvergeError).code).toBe('SCHEMA_CHANGE_UNSUPPORTED')
    expect((err as ConvergeError).message).toMatch(/title/)
    expect((err as ConvergeError).message).toMatch(/name/)
    expect((err as ConvergeError).message).toMatch(/ADD COLUMN/)
    expect(codeOf(() => a.versionVector())).toBe('SCHEMA_CHANGE_UNSUPPORTED')
    a.db.exec('ALTER TABLE todos RENAME COLUMN name TO title')
    const b = replica(1)
    sync(a, b)
    expect(rows(b)).toEqual([{ id: '1', title: 'x', done: 0 }])
  })

  it('dropping a synced column is refused by SQLite itself (the capture triggers use it)', () => {
    const a = replica(0)
    expect(() => a.db.exec('ALTER TABLE todos DROP COLUMN done')).toThrow(/done/)
    expect(a.db.prepare(`SELECT name FROM pragma_table_info('todos')`).all()).toHaveLength(3)
  })

  it('rebuilding the table with another primary key is SCHEMA_CHANGE_UNSUPPORTED', () => {
    const a = replica(0)
    a.db.exec(`INSERT INTO todos (id, title) VALUES ('1', 'x')`)
    a.db.exec(`
      CREATE TABLE todos_new (id TEXT, title TEXT PRIMARY KEY, done INTEGER NOT NULL DEFAULT 0);
      INSERT INTO todos_new SELECT * FROM todos;
      DROP TABLE todos;
      ALTER TABLE todos_new RENAME TO todos;`)
    const hash = dbHash(a.db)
    let err: ConvergeError | undefined
    try {
      a.exportChanges()
    } catch (e) {
      err = e as ConvergeError
    }
    expect(err?.code).toBe('SCHEMA_CHANGE_UNSUPPORTED')
    expect(err?.message).toMatch(/primary key/)
    expect(dbHash(a.db)).toBe(hash)
    // close() still closes the file, and says why it could not fold.
    open = open.filter((r) => r !== a)
    expect(codeOf(() => a.close())).toBe('SCHEMA_CHANGE_UNSUPPORTED')
    expect(a.db.open).toBe(false)
  })
})

describe('other definition changes', () => {
  it('a UNIQUE index created later regenerates the triggers, so REPLACE on it is captured', () => {
    const [a, b] = [0, 1].map((i) => {
      const r = openReplica(':memory:', { siteId: SITE_POOL[i] as string })
      open.push(r)
      r.db.exec('CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, name TEXT)')
      r.enableSync('users')
      return r
    }) as [Replica, Replica]
    a.db.exec(`INSERT INTO users VALUES (1, 'ann@x', 'Ann'), (2, 'bob@x', 'Bob')`)
    sync(a, b)
    a.db.exec('CREATE UNIQUE INDEX users_email ON users (email)')
    b.db.exec('CREATE UNIQUE INDEX users_email ON users (email)')
    a.versionVector()
    // Replaces row 1 through the new UNIQUE index: row 1 is deleted without a DELETE trigger.
    a.db.exec(`INSERT OR REPLACE INTO users VALUES (3, 'ann@x', 'Ann again')`)
    sync(a, b)
    expect(b.db.prepare('SELECT * FROM users ORDER BY id').all()).toEqual([
      { id: 2, email: 'bob@x', name: 'Bob' },
      { id: 3, email: 'ann@x', name: 'Ann again' },
    ])
  })

  it('the table of a file from before living schemas is upgraded on open', () => {
    const file = join(dir, 'legacy.db')
    const a = replica(0, TODOS, file)
    a.db.exec(`INSERT INTO todos (id, title) VALUES ('1', 'x')`)
    a.close()
    open = open.filter((r) => r !== a)
    // What the first release wrote: no options, columns or triggers digest.
    const plain = new Database(file)
    plain.exec(`UPDATE _converge_tables SET options = NULL, columns = NULL, triggers = NULL`)
    plain.close()
    const again = openReplica(file)
    open.push(again)
    again.db.exec('ALTER TABLE todos ADD COLUMN due TEXT')
    again.db.exec(`UPDATE todos SET due = 'now'`)
    const b = replica(1)
    b.db.exec('ALTER TABLE todos ADD COLUMN due TEXT')
    sync(again, b)
    expect(rows(b)).toEqual([{ id: '1', title: 'x', done: 0, due: 'now' }])
  })
})
