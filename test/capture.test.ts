/**
 * Capture: writes reach the change log through plain-SQL triggers, whoever makes them
 * (the `sqlite3` shell, another process that never loads this library, the app), and only
 * real changes are captured: no-op updates, rolled-back writes and applied remote changes
 * are not local writes.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { openReplica, type Replica } from 'sqlite-converge'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { columnRows, dbHash } from './helpers/db-hash.js'
import { sync } from './helpers/replicas.js'

/** The replica's connection with its better-sqlite3 type (the API types it structurally). */
const conn = (r: Replica): Database.Database => r.db as Database.Database

const SQLITE3 = '/usr/bin/sqlite3'
const HAVE_SHELL = existsSync(SQLITE3)
if (!HAVE_SHELL) console.warn(`capture.test.ts: ${SQLITE3} not found; the sqlite3-shell capture case is skipped`)

const TODOS = 'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done INTEGER, score REAL)'
const DATA_COLUMNS = 3

let dir: string
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'converge-capture-'))
})
afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
})

const open: Replica[] = []
afterEach(() => {
  for (const r of open.splice(0)) if (conn(r).open) r.close()
})

let fileCounter = 0
function replicaFile(ddl: string, table: string): { r: Replica; file: string } {
  const file = join(dir, `r${fileCounter++}.db`)
  const r = openReplica(file)
  open.push(r)
  conn(r).exec(ddl)
  r.enableSync(table)
  return { r, file }
}

function memReplica(ddl: string, ...tables: string[]): Replica {
  const r = openReplica(':memory:')
  open.push(r)
  conn(r).exec(ddl)
  for (const t of tables) r.enableSync(t)
  return r
}

function rows(r: Replica, table = 'todos'): string[] {
  return columnRows(r.db as Database.Database, table)
}

function logCount(r: Replica, table = 'todos'): number {
  const id = conn(r).prepare('SELECT id FROM _converge_tables WHERE name = ?').pluck().get(table)
  return conn(r).prepare(`SELECT count(*) FROM _converge_log_${id}`).pluck().get() as number
}

/** The writes the external processes make, and what a peer must then hold. */
const EXTERNAL_WRITES = `
  INSERT INTO todos VALUES ('s1', 'from outside', 0, 1.5);
  UPDATE todos SET done = 1 WHERE id = 'a';
  DELETE FROM todos WHERE id = 'b';
  BEGIN;
  INSERT INTO todos VALUES ('s2', 'in a transaction', 0, NULL);
  UPDATE todos SET title = 'renamed in the transaction' WHERE id = 's2';
  COMMIT;
  UPDATE todos SET id = 'c2' WHERE id = 'c';
  UPDATE todos SET title = title, done = done WHERE id = 'a';
  BEGIN;
  INSERT INTO todos VALUES ('never', 'rolled back', 0, 0);
  ROLLBACK;
`
/** s1: life + 3 cells; a.done: 1; b deleted: 1; s2: life + 3; c -> c2: delete 1 + life + 3; no-op: 0. */
const EXTERNAL_APPLIED = 1 + DATA_COLUMNS + 1 + 1 + (1 + DATA_COLUMNS) + 1 + (1 + DATA_COLUMNS)
const EXPECTED_AFTER = [
  ['a', 'first', 1, 0.5],
  ['c2', 'third', 0, null],
  ['s1', 'from outside', 0, 1.5],
  ['s2', 'renamed in the transaction', 0, null],
]

/** A replica on a file with three synced rows, and an in-memory peer that has them. */
function seeded() {
  const { r: a, file } = replicaFile(TODOS, 'todos')
  conn(a).exec(`INSERT INTO todos VALUES ('a', 'first', 0, 0.5), ('b', 'second', 1, 2.5), ('c', 'third', 0, NULL)`)
  expect(conn(a).pragma('journal_mode', { simple: true })).toBe('wal')
  const b = memReplica(TODOS, 'todos')
  sync(a, b)
  expect(rows(b)).toEqual(rows(a))
  return { a, b, file }
}

function expectExternalWritesArrived(a: Replica, b: Replica, ownBefore: number) {
  const result = sync(a, b)
  expect(result).toEqual({ applied: EXTERNAL_APPLIED, conflicts: 0 })
  expect(conn(a).prepare('SELECT id, title, done, score FROM todos ORDER BY id').raw().all()).toEqual(EXPECTED_AFTER)
  expect(rows(b)).toEqual(rows(a))
  expect(conn(b).prepare('SELECT typeof(done), typeof(score) FROM todos WHERE id = ?').raw().get('s1')).toEqual([
    'integer',
    'real',
  ])
  // The external writes are the replica's own: its vector entry moved, no other site appeared.
  const vector = a.versionVector()
  expect(Object.keys(vector)).toEqual([a.siteId])
  expect(vector[a.siteId]).toBeGreaterThan(ownBefore)
  // Nothing else is pending: a second exchange brings nothing.
  expect(sync(a, b).applied).toBe(0)
}

describe('capture from another process', () => {
  it.skipIf(!HAVE_SHELL)('writes made by the sqlite3 shell are captured and exported', () => {
    const { a, b, file } = seeded()
    const ownBefore = a.versionVector()[a.siteId] as number
    execFileSync(SQLITE3, ['-bail', file], { input: EXTERNAL_WRITES, stdio: ['pipe', 'pipe', 'pipe'] })
    // The shell wrote through the triggers into the log, without loading anything of ours.
    expect(logCount(a)).toBeGreaterThan(0)
    expectExternalWritesArrived(a, b, ownBefore)
  })

  it.skipIf(!HAVE_SHELL)('the sqlite3 shell can write while the replica holds the file open, repeatedly', () => {
    const { a, b, file } = seeded()
    for (let i = 0; i < 5; i++) {
      execFileSync(SQLITE3, ['-bail', file], {
        input: `INSERT INTO todos VALUES ('shell${i}', 'n${i}', ${i}, ${i}.25); UPDATE todos SET done = ${i} WHERE id = 'a';`,
      })
      conn(a).exec(`UPDATE todos SET score = ${i} WHERE id = 'c'`)
      expect(sync(a, b).applied).toBe(1 + DATA_COLUMNS + (i === 0 ? 0 : 1) + 1)
      expect(rows(b)).toEqual(rows(a))
    }
  })

  it.skipIf(!HAVE_SHELL)(
    'REPLACE through secondary UNIQUE constraints in the shell (recursive triggers off and on)',
    () => {
      const ddl = 'CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE, v)'
      const { r: a, file } = replicaFile(ddl, 'u')
      const b = memReplica(ddl, 'u')
      conn(a).exec(`INSERT INTO u VALUES (1, 'a@x', 'one'), (2, 'b@x', 'two'), (4, 'd@x', 'four')`)
      sync(a, b)
      execFileSync(SQLITE3, ['-bail', file], {
        input: `INSERT OR REPLACE INTO u VALUES (3, 'a@x', 'three');
        PRAGMA recursive_triggers = ON;
        INSERT OR REPLACE INTO u VALUES (2, 'b@x', 'two v2');
        UPDATE OR REPLACE u SET email = 'd@x' WHERE id = 3;`,
      })
      sync(a, b)
      expect(conn(a).prepare('SELECT id, email, v FROM u ORDER BY id').raw().all()).toEqual([
        [2, 'b@x', 'two v2'],
        [3, 'd@x', 'three'],
      ])
      expect(rows(b, 'u')).toEqual(rows(a, 'u'))
    },
  )

  it('writes made by a child node process using better-sqlite3 directly are captured and exported', () => {
    const { a, b, file } = seeded()
    const ownBefore = a.versionVector()[a.siteId] as number
    const child = `
      import Database from 'better-sqlite3'
      const db = new Database(process.env.CONVERGE_FILE)
      db.pragma('busy_timeout = 5000')
      db.exec(process.env.CONVERGE_SQL)
      db.close()
    `
    execFileSync(process.execPath, ['--input-type=module', '-e', child], {
      cwd: process.cwd(),
      env: { ...process.env, CONVERGE_FILE: file, CONVERGE_SQL: EXTERNAL_WRITES },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    expect(logCount(a)).toBeGreaterThan(0)
    expectExternalWritesArrived(a, b, ownBefore)
  })

  it('a child process bulk load with bound parameters (bigint, blob, unicode) arrives exactly', () => {
    const { r: a, file } = replicaFile('CREATE TABLE bulk (id INTEGER PRIMARY KEY, v, b BLOB)', 'bulk')
    const b = memReplica('CREATE TABLE bulk (id INTEGER PRIMARY KEY, v, b BLOB)', 'bulk')
    const child = `
      import Database from 'better-sqlite3'
      const db = new Database(process.env.CONVERGE_FILE)
      db.pragma('busy_timeout = 5000')
      db.defaultSafeIntegers(true)
      const ins = db.prepare('INSERT INTO bulk VALUES (?, ?, ?)')
      db.transaction(() => {
        for (let i = 0; i < 2000; i++) {
          const v = i % 4 === 0 ? 2n ** 62n + BigInt(i) : i % 4 === 1 ? i / 8 : i % 4 === 2 ? 'ü' + i : null
          ins.run(BigInt(i), v, Buffer.from([i & 255, i >> 8]))
        }
      })()
      db.prepare('UPDATE bulk SET v = ? WHERE id % 100 = 0').run('updated')
      db.prepare('DELETE FROM bulk WHERE id % 250 = 1').run()
      db.close()
    `
    execFileSync(process.execPath, ['--input-type=module', '-e', child], {
      env: { ...process.env, CONVERGE_FILE: file },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    sync(a, b)
    expect(conn(b).prepare('SELECT count(*) FROM bulk').pluck().get()).toBe(2000 - 8)
    expect(rows(b, 'bulk')).toEqual(rows(a, 'bulk'))
    expect(conn(b).prepare('SELECT v FROM bulk WHERE id = 4').safeIntegers().pluck().get()).toBe(2n ** 62n + 4n)
  })
})

describe('what counts as a change', () => {
  const DDL = 'CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b, c REAL)'

  function pair() {
    const x = memReplica(DDL, 't')
    const y = memReplica(DDL, 't')
    conn(x).exec(`INSERT INTO t VALUES (1, 'one', 1, 1.5), (2, 'two', 'x', NULL)`)
    sync(x, y)
    return { x, y }
  }

  it('an UPDATE that sets columns to their current values is not a change', () => {
    const { x, y } = pair()
    const vector = x.versionVector()
    const hash = dbHash(conn(x))
    conn(x).exec(`UPDATE t SET a = a, b = b, c = c; UPDATE t SET a = 'one', b = 1, c = 1.5 WHERE id = 1;
      UPDATE t SET c = NULL WHERE id = 2; UPDATE t SET b = 'x' WHERE id = 2`)
    expect(logCount(x, 't')).toBe(0)
    expect(x.versionVector()).toEqual(vector)
    expect(dbHash(conn(x))).toBe(hash)
    expect(sync(x, y)).toEqual({ applied: 0, conflicts: 0 })
  })

  it('only the columns that changed are sent', () => {
    const { x, y } = pair()
    conn(x).exec(`UPDATE t SET a = 'one', b = 2, c = 1.5 WHERE id = 1`)
    expect(sync(x, y)).toEqual({ applied: 1, conflicts: 0 })
    // A concurrent edit of another column of the same row on y is therefore kept.
    conn(y).exec(`UPDATE t SET a = 'y edit' WHERE id = 2`)
    conn(x).exec(`UPDATE t SET a = 'two', c = 9.5 WHERE id = 2`)
    sync(x, y)
    sync(y, x)
    expect(rows(x, 't')).toEqual(rows(y, 't'))
    expect(conn(x).prepare('SELECT a, c FROM t WHERE id = 2').raw().get()).toEqual(['y edit', 9.5])
    expect([...x.conflicts(), ...y.conflicts()]).toEqual([])
  })

  it('a rolled-back transaction or savepoint captures nothing', () => {
    const { x, y } = pair()
    const tx = conn(x).transaction(() => {
      conn(x).exec(`INSERT INTO t VALUES (3, 'three', 3, 3.0); UPDATE t SET a = 'changed' WHERE id = 1`)
      throw new Error('abort')
    })
    expect(() => tx()).toThrow('abort')
    conn(x).exec(`BEGIN; SAVEPOINT s; DELETE FROM t WHERE id = 2; ROLLBACK TO s; RELEASE s;
      UPDATE t SET b = 'kept' WHERE id = 2; COMMIT`)
    expect(sync(x, y)).toEqual({ applied: 1, conflicts: 0 })
    expect(rows(y, 't')).toEqual(rows(x, 't'))
  })

  it('INSERT OR REPLACE on a live row updates it, including columns it resets to NULL', () => {
    const { x, y } = pair()
    conn(x).exec(`INSERT OR REPLACE INTO t VALUES (1, 'replaced', 1, 1.5)`)
    sync(x, y)
    expect(conn(y).prepare('SELECT a, b, c FROM t WHERE id = 1').raw().get()).toEqual(['replaced', 1, 1.5])
    // REPLACE with a column list: omitted columns take their default (NULL).
    conn(x).exec(`REPLACE INTO t (id, a) VALUES (1, 'only a')`)
    sync(x, y)
    expect(conn(y).prepare('SELECT a, b, c FROM t WHERE id = 1').raw().get()).toEqual(['only a', null, null])
    expect(rows(y, 't')).toEqual(rows(x, 't'))
  })

  it('REPLACE that deletes another row through a secondary UNIQUE constraint deletes it on the peer', () => {
    const ddl = 'CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE, v)'
    const x = memReplica(ddl, 'u')
    const y = memReplica(ddl, 'u')
    conn(x).exec(`INSERT INTO u VALUES (1, 'a@x', 'one'), (2, 'b@x', 'two')`)
    sync(x, y)
    conn(x).exec(`INSERT OR REPLACE INTO u VALUES (3, 'a@x', 'three')`)
    expect(conn(x).prepare('SELECT id FROM u ORDER BY id').pluck().all()).toEqual([2, 3])
    sync(x, y)
    expect(rows(y, 'u')).toEqual(rows(x, 'u'))
    conn(x).exec(`UPDATE OR REPLACE u SET email = 'b@x' WHERE id = 3`)
    expect(conn(x).prepare('SELECT id FROM u ORDER BY id').pluck().all()).toEqual([3])
    sync(x, y)
    expect(rows(y, 'u')).toEqual(rows(x, 'u'))
  })

  it('UPSERT (ON CONFLICT DO UPDATE) is captured as an update', () => {
    const { x, y } = pair()
    conn(x).exec(`INSERT INTO t VALUES (1, 'ignored', 1, 1.5) ON CONFLICT (id) DO UPDATE SET a = 'upserted'`)
    expect(sync(x, y)).toEqual({ applied: 1, conflicts: 0 })
    expect(conn(y).prepare('SELECT a FROM t WHERE id = 1').pluck().get()).toBe('upserted')
  })

  it('a primary-key change via UPDATE deletes the old key on the peer and creates the new one', () => {
    const { x, y } = pair()
    conn(x).exec('UPDATE t SET id = 10 WHERE id = 1')
    sync(x, y)
    expect(conn(y).prepare('SELECT id FROM t ORDER BY id').pluck().all()).toEqual([2, 10])
    expect(conn(y).prepare('SELECT a, b, c FROM t WHERE id = 10').raw().get()).toEqual(['one', 1, 1.5])
    expect(rows(y, 't')).toEqual(rows(x, 't'))
    // Swap two keys in one statement sequence (through a temporary key).
    conn(x).exec(
      'UPDATE t SET id = -1 WHERE id = 2; UPDATE t SET id = 2 WHERE id = 10; UPDATE t SET id = 10 WHERE id = -1',
    )
    sync(x, y)
    expect(rows(y, 't')).toEqual(rows(x, 't'))
    // The old key can be reused by the peer afterwards.
    conn(y).exec(`INSERT INTO t VALUES (1, 'new one', NULL, NULL)`)
    sync(y, x)
    expect(rows(x, 't')).toEqual(rows(y, 't'))
  })

  it('delete then re-insert (before and after a sync) propagates', () => {
    const { x, y } = pair()
    // Within one sync interval.
    conn(x).exec(`DELETE FROM t WHERE id = 1; INSERT INTO t VALUES (1, 'reborn', NULL, 0.25)`)
    sync(x, y)
    expect(conn(y).prepare('SELECT a, b, c FROM t WHERE id = 1').raw().get()).toEqual(['reborn', null, 0.25])
    // Across sync intervals, re-inserted by the other replica.
    conn(x).exec('DELETE FROM t WHERE id = 2')
    sync(x, y)
    expect(conn(y).prepare('SELECT count(*) FROM t WHERE id = 2').pluck().get()).toBe(0)
    conn(y).exec(`INSERT INTO t VALUES (2, 'back', 'b', NULL)`)
    sync(y, x)
    expect(rows(x, 't')).toEqual(rows(y, 't'))
    expect(conn(x).prepare('SELECT a FROM t WHERE id = 2').pluck().get()).toBe('back')
    // Delete, re-insert, delete: the row ends up deleted.
    conn(x).exec(`DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (2, 'again', 1, 1); DELETE FROM t WHERE id = 2`)
    sync(x, y)
    expect(conn(y).prepare('SELECT count(*) FROM t WHERE id = 2').pluck().get()).toBe(0)
    expect(rows(x, 't')).toEqual(rows(y, 't'))
  })

  it('writes made by an application trigger into another synced table are captured', () => {
    const ddl = `CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT);
      CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT);
      CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN INSERT INTO audit (what) VALUES ('insert ' || NEW.id); END;`
    const x = memReplica(ddl, 't', 'audit')
    const y = memReplica(
      'CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT); CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT)',
      't',
      'audit',
    )
    conn(x).exec(`INSERT INTO t VALUES (1, 'a'), (2, 'b')`)
    sync(x, y)
    expect(conn(y).prepare('SELECT what FROM audit ORDER BY id').pluck().all()).toEqual(['insert 1', 'insert 2'])
  })
})

describe('no echo', () => {
  const DDL = 'CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b)'

  it('changes applied from a peer are not captured as local writes', () => {
    const a = memReplica(DDL, 't')
    const b = memReplica(DDL, 't')
    conn(a).exec(`INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2); UPDATE t SET a = 'uno' WHERE id = 1`)
    // b has never written: it has no vector entry of its own.
    const result = sync(a, b)
    expect(result.applied).toBeGreaterThan(0)
    expect(logCount(b, 't')).toBe(0)
    expect(b.versionVector()).toEqual(a.versionVector())
    expect(b.siteId in b.versionVector()).toBe(false)
    // b's export for a brings nothing back.
    const back = b.exportChanges(a.versionVector())
    expect(a.importChanges(back)).toEqual({ applied: 0, conflicts: 0 })
    // A third replica that only meets b sees a's writes as a's, none as b's.
    const c = memReplica(DDL, 't')
    sync(b, c)
    expect(Object.keys(c.versionVector())).toEqual([a.siteId])
    expect(rows(c, 't')).toEqual(rows(a, 't'))
  })

  it("an import does not move the receiver's own vector entry", () => {
    const a = memReplica(DDL, 't')
    const b = memReplica(DDL, 't')
    conn(b).exec(`INSERT INTO t VALUES (100, 'b', NULL)`)
    const own = b.versionVector()[b.siteId]
    expect(own).toBeGreaterThan(0)
    conn(a).exec(`INSERT INTO t VALUES (1, 'one', 1)`)
    sync(a, b)
    conn(a).exec(`UPDATE t SET a = 'changed' WHERE id = 1; DELETE FROM t WHERE id = 1`)
    sync(a, b)
    expect(b.versionVector()[b.siteId]).toBe(own)
    expect(logCount(b, 't')).toBe(0)
    // b's export for a holds only b's own row.
    const other = memReplica(DDL, 't')
    other.importChanges(b.exportChanges(a.versionVector()))
    expect(conn(other).prepare('SELECT id FROM t').pluck().all()).toEqual([100])
    expect(a.importChanges(b.exportChanges(a.versionVector())).applied).toBe(1 + 2)
    expect(a.importChanges(b.exportChanges(a.versionVector())).applied).toBe(0)
    expect(rows(a, 't')).toEqual(rows(b, 't'))
  })

  it('applied changes on a file replica are not seen by other connections as new writes', () => {
    const { r: a } = replicaFile(DDL, 't')
    const { r: b, file } = replicaFile(DDL, 't')
    conn(a).exec(`INSERT INTO t VALUES (1, 'one', 1)`)
    sync(a, b)
    b.close()
    // Reopen: the fold at open/close must not turn the applied rows into b's writes.
    const again = openReplica(file)
    open.push(again)
    expect(again.siteId in again.versionVector()).toBe(false)
    expect(a.importChanges(again.exportChanges(a.versionVector())).applied).toBe(0)
  })
})

describe('two replica objects on one file', () => {
  it('a write folded by one and a write folded by the other both reach a peer (shared clock)', () => {
    // E.g. two processes of one app each opening the replica. A peer whose clock is 60 s
    // ahead (within the default 5-minute drift limit) moves the clock of the one that imports.
    const ddl = 'CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)'
    const fastFile = join(dir, 'fast-peer.db')
    const first = openReplica(fastFile)
    conn(first).exec(ddl)
    first.enableSync('t')
    first.close()
    const raw = new Database(fastFile)
    raw.prepare(`UPDATE _converge_state SET value = ? WHERE key = 'clock'`).run(BigInt(Date.now() + 60_000) * 1024n)
    raw.close()
    const fast = openReplica(fastFile)
    open.push(fast)
    conn(fast).exec(`INSERT INTO t VALUES ('x', 'from the fast peer')`)

    const { r: p1, file } = replicaFile(ddl, 't')
    const p2 = openReplica(file)
    open.push(p2)
    expect(p2.siteId).toBe(p1.siteId)
    sync(fast, p2)
    conn(p2).exec(`INSERT INTO t VALUES ('r1', 'written and folded through p2')`)
    const b = memReplica(ddl, 't')
    sync(p2, b)
    const known = b.versionVector()[p1.siteId] as number
    conn(p1).exec(`INSERT INTO t VALUES ('r2', 'written and folded through p1')`)
    // The site's own entry never goes backwards, whichever object folds.
    expect(p1.versionVector()[p1.siteId] as number).toBeGreaterThan(known)
    // p1's payload is well-formed and brings r2.
    sync(p1, b)
    expect(conn(b).prepare('SELECT id FROM t ORDER BY id').pluck().all()).toEqual(['r1', 'r2', 'x'])
    expect(rows(b, 't')).toEqual(rows(p1, 't'))
  })
})
