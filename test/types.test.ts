/**
 * Value types, key shapes and table shapes: everything a replica stores must reach a peer
 * with the same value and the same SQLite storage class; every supported table shape syncs
 * inserts, updates, key changes and deletes; unsupported ones fail with a typed error.
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type Database from 'better-sqlite3'
import { type ConvergeError, openReplica, type Replica } from 'sqlite-converge'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { dbHash, serializeValue } from './helpers/db-hash.js'
import { codeOf, sync } from './helpers/replicas.js'

/** The replica's connection with its better-sqlite3 type (the API types it structurally). */
const conn = (r: Replica): Database.Database => r.db as Database.Database

const open: Replica[] = []

function replica(ddl: string | string[] = [], tables: string[] = [], siteId?: string): Replica {
  const r = openReplica(':memory:', siteId ? { siteId } : {})
  open.push(r)
  for (const sql of Array.isArray(ddl) ? ddl : [ddl]) conn(r).exec(sql)
  for (const t of tables) r.enableSync(t)
  return r
}

afterEach(() => {
  for (const r of open.splice(0)) if (conn(r).open) r.close()
})

/** Sends `to` what `from` has that `to` lacks; returns the import result. */

function syncBoth(a: Replica, b: Replica): void {
  sync(a, b)
  sync(b, a)
}

function quoteId(name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}

/** Every row of a table with each value's SQLite storage class, sorted. */
function rows(r: Replica, table: string): string[] {
  const db = r.db as Database.Database
  const cols = (db.prepare(`SELECT name FROM pragma_table_info(?)`).pluck().all(table) as string[]).map(quoteId)
  const select = cols.flatMap((c) => [`typeof(${c})`, c]).join(', ')
  return (
    db
      .prepare(`SELECT ${select} FROM ${quoteId(table)}`)
      .raw()
      .safeIntegers()
      .all() as unknown[][]
  )
    .map((row) => row.map(serializeValue).join('|'))
    .sort()
}

function expectSameRows(a: Replica, b: Replica, table: string): void {
  expect(rows(b, table)).toEqual(rows(a, table))
}

// ---------------------------------------------------------------------------------------

describe('values round-trip with their storage class', () => {
  const TABLE = `CREATE TABLE v (
    id INTEGER PRIMARY KEY,
    any_col,
    int_col INTEGER,
    real_col REAL,
    text_col TEXT,
    blob_col BLOB,
    num_col NUMERIC
  )`

  const integers: bigint[] = [
    0n,
    1n,
    -1n,
    127n,
    128n,
    2n ** 31n,
    -(2n ** 31n),
    2n ** 52n - 1n,
    2n ** 52n,
    -(2n ** 52n),
    2n ** 53n - 1n,
    2n ** 53n,
    2n ** 53n + 1n,
    -(2n ** 53n) - 1n,
    2n ** 62n,
    2n ** 63n - 1n,
    -(2n ** 63n),
    -(2n ** 63n) + 1n,
  ]
  const reals: number[] = [
    1.0,
    0.0,
    -0.0,
    -1.5,
    0.1,
    Math.PI,
    1e-300,
    1e300,
    Number.MAX_VALUE,
    Number.MIN_VALUE,
    2 ** 53,
    2 ** 53 + 2,
    -(2 ** 63),
    2 ** 64,
    Number.POSITIVE_INFINITY,
    Number.NEGATIVE_INFINITY,
  ]
  const texts: string[] = [
    '',
    'a',
    '1',
    ' 1',
    '1.0',
    'ünïcødé',
    '日本語テキスト',
    '😀 emoji 👩‍👩‍👧',
    'a\u0000b',
    '\u0000',
    'line\nbreak\ttab',
    'quotes \' and "',
    '\uFFFD',
    'x'.repeat(100_000),
  ]
  const blobs: Buffer[] = [
    Buffer.alloc(0),
    Buffer.from([0]),
    Buffer.from([0xff, 0x00, 0xfe]),
    Buffer.from('text-looking blob'),
    randomBytes(1000),
    randomBytes(70_000),
  ]

  it('INTEGER, REAL, TEXT, BLOB and NULL in every column kind arrive identical', () => {
    const a = replica(TABLE, ['v'])
    const b = replica(TABLE, ['v'])
    const values: unknown[] = [null, ...integers, ...reals, ...texts, ...blobs]
    const ins = conn(a).prepare('INSERT INTO v VALUES (?, ?, ?, ?, ?, ?, ?)')
    conn(a).transaction(() => {
      values.forEach((v, i) => {
        ins.run(BigInt(i), v, v, v, v, v, v)
      })
    })()
    const result = sync(a, b)
    // Each new row counts once, plus one per cell (six data columns).
    expect(result).toEqual({ applied: values.length * 7, conflicts: 0 })
    expectSameRows(a, b, 'v')
    // The storage classes are really mixed (the check above is not vacuous).
    const classes = conn(b).prepare('SELECT DISTINCT typeof(any_col) FROM v ORDER BY 1').pluck().all()
    expect(classes).toEqual(['blob', 'integer', 'null', 'real', 'text'])
    b.close()
  })

  it('extreme integers read back as exact BigInt with safeIntegers', () => {
    const a = replica(TABLE, ['v'])
    const b = replica(TABLE, ['v'])
    const ins = conn(a).prepare('INSERT INTO v (id, any_col, int_col) VALUES (?, ?, ?)')
    integers.forEach((n, i) => {
      ins.run(BigInt(i), n, n)
    })
    sync(a, b)
    const got = b.db
      .prepare('SELECT any_col, typeof(any_col) AS t1, int_col, typeof(int_col) AS t2 FROM v ORDER BY id')
      .safeIntegers()
      .all() as { any_col: bigint; t1: string; int_col: bigint; t2: string }[]
    expect(got.map((r) => r.any_col)).toEqual(integers)
    expect(got.map((r) => r.int_col)).toEqual(integers)
    expect(new Set(got.flatMap((r) => [r.t1, r.t2]))).toEqual(new Set(['integer']))
    expect(conn(b).prepare('SELECT any_col FROM v WHERE any_col = 9007199254740993').safeIntegers().pluck().get()).toBe(
      2n ** 53n + 1n,
    )
    expect(conn(b).prepare('SELECT count(*) FROM v WHERE any_col = -9223372036854775807 - 1').pluck().get()).toBe(1)
  })

  it('1.0 and 1 in an untyped column keep their own type on the receiver', () => {
    const a = replica(TABLE, ['v'])
    const b = replica(TABLE, ['v'])
    conn(a).exec(`INSERT INTO v (id, any_col) VALUES (1, 1), (2, 1.0), (3, '1'), (4, x'31'), (5, 2.5)`)
    sync(a, b)
    const types = (r: Replica) =>
      conn(r).prepare('SELECT id, typeof(any_col) AS t, quote(any_col) AS q FROM v ORDER BY id').all()
    expect(types(b)).toEqual([
      { id: 1, t: 'integer', q: '1' },
      { id: 2, t: 'real', q: '1.0' },
      { id: 3, t: 'text', q: "'1'" },
      { id: 4, t: 'blob', q: "X'31'" },
      { id: 5, t: 'real', q: '2.5' },
    ])
    expect(types(b)).toEqual(types(a))
  })

  it('changing only the storage class of a value (1 -> 1.0, 1 -> "1") syncs as a change', () => {
    const a = replica(TABLE, ['v'])
    const b = replica(TABLE, ['v'])
    conn(a).exec(`INSERT INTO v (id, any_col) VALUES (1, 1), (2, 1), (3, 1.0), (4, 'a')`)
    sync(a, b)
    conn(a).exec(`UPDATE v SET any_col = 1.0 WHERE id = 1; UPDATE v SET any_col = '1' WHERE id = 2;
      UPDATE v SET any_col = 1 WHERE id = 3; UPDATE v SET any_col = x'61' WHERE id = 4`)
    expect(sync(a, b).applied).toBe(4)
    expect(conn(b).prepare('SELECT typeof(any_col) FROM v ORDER BY id').pluck().all()).toEqual([
      'real',
      'text',
      'integer',
      'blob',
    ])
    expectSameRows(a, b, 'v')
  })

  it('typed columns apply their affinity the same way on both sides', () => {
    const a = replica(TABLE, ['v'])
    const b = replica(TABLE, ['v'])
    conn(a).exec(`INSERT INTO v VALUES (1, NULL, '42', 3, 7, x'00', '1.50'),
      (2, NULL, 1.5, '2.5', 1.0, 'text in blob column', 'abc'),
      (3, NULL, x'01', x'02', x'03', 12, '12')`)
    sync(a, b)
    expectSameRows(a, b, 'v')
    expect(
      conn(b).prepare('SELECT typeof(int_col), typeof(real_col), typeof(text_col) FROM v WHERE id = 1').raw().get(),
    ).toEqual(['integer', 'real', 'text'])
  })

  it('values survive a relay and an update through a third replica', () => {
    const a = replica(TABLE, ['v'])
    const b = replica(TABLE, ['v'])
    const c = replica(TABLE, ['v'])
    const ins = conn(a).prepare('INSERT INTO v (id, any_col, blob_col) VALUES (?, ?, ?)')
    ins.run(1n, 2n ** 63n - 1n, Buffer.alloc(0))
    ins.run(2n, -0.0, Buffer.from([1]))
    ins.run(3n, 'a\u0000b', null)
    sync(a, b)
    conn(b).exec(`UPDATE v SET text_col = 'from b' WHERE id = 2`)
    sync(b, c)
    expectSameRows(b, c, 'v')
    expect(Object.is(conn(c).prepare('SELECT any_col FROM v WHERE id = 2').pluck().get(), -0)).toBe(true)
    expect(conn(c).prepare('SELECT length(blob_col), typeof(blob_col) FROM v WHERE id = 1').raw().get()).toEqual([
      0,
      'blob',
    ])
  })
})

// ---------------------------------------------------------------------------------------

describe('primary keys', () => {
  /** Inserts, updates, changes a key and deletes on `a`, syncing to `b` after each step. */
  function exercise(ddl: string, table: string, keys: unknown[], keyCol = 'k') {
    const a = replica(ddl, [table])
    const b = replica(ddl, [table])
    const t = quoteId(table)
    const k = quoteId(keyCol)
    const ins = conn(a).prepare(`INSERT INTO ${t} (${k}, v) VALUES (?, ?)`)
    keys.forEach((key, i) => {
      ins.run(key, `value ${i}`)
    })
    expect(sync(a, b).applied).toBeGreaterThan(0)
    expectSameRows(a, b, table)
    expect(rows(b, table)).toHaveLength(keys.length)

    const upd = conn(a).prepare(`UPDATE ${t} SET v = ? WHERE ${k} = ?`)
    keys.forEach((key, i) => {
      expect(upd.run(`updated ${i}`, key).changes).toBe(1)
    })
    expect(sync(a, b).applied).toBe(keys.length)
    expectSameRows(a, b, table)

    // Delete the first key, and a second one in the other direction.
    conn(a).prepare(`DELETE FROM ${t} WHERE ${k} = ?`).run(keys[0])
    sync(a, b)
    conn(b).prepare(`DELETE FROM ${t} WHERE ${k} = ?`).run(keys[1])
    sync(b, a)
    expectSameRows(a, b, table)
    expect(rows(a, table)).toHaveLength(keys.length - 2)

    // Re-insert a deleted key on the other side.
    conn(b).prepare(`INSERT INTO ${t} (${k}, v) VALUES (?, 'back')`).run(keys[0])
    sync(b, a)
    expectSameRows(a, b, table)
    expect(conn(a).prepare(`SELECT v FROM ${t} WHERE ${k} = ?`).pluck().get(keys[0])).toBe('back')
    return { a, b }
  }

  it('TEXT keys', () => {
    exercise('CREATE TABLE t (k TEXT PRIMARY KEY, v)', 't', ['', 'a', 'ünï', '😀', 'a b', 'A', "it's", 'x'.repeat(500)])
  })

  it('INTEGER (rowid alias) keys, including the extremes', () => {
    exercise('CREATE TABLE t (k INTEGER PRIMARY KEY, v)', 't', [
      0n,
      1n,
      -1n,
      2n ** 53n + 1n,
      2n ** 63n - 1n,
      -(2n ** 63n),
      123456789n,
    ])
  })

  it('INT keys that are not a rowid alias', () => {
    exercise('CREATE TABLE t (k INT PRIMARY KEY, v)', 't', [5n, 6n, 2n ** 62n, -3n])
  })

  it('REAL keys', () => {
    exercise('CREATE TABLE t (k REAL PRIMARY KEY, v)', 't', [1.5, -0.25, 1e300, 2.0, Number.MIN_VALUE, 0.1])
  })

  it('BLOB keys, including the empty blob', () => {
    exercise('CREATE TABLE t (k BLOB PRIMARY KEY, v)', 't', [
      Buffer.from([1, 2, 3]),
      Buffer.alloc(0),
      Buffer.from([0]),
      Buffer.from('text'),
      randomBytes(64),
    ])
  })

  it('untyped keys where 1, "1" and x\'31\' are three different rows', () => {
    const { a, b } = exercise('CREATE TABLE t (k PRIMARY KEY, v)', 't', [1n, '1', Buffer.from('1'), 2.5, 'two'])
    expect(conn(b).prepare('SELECT typeof(k) FROM t ORDER BY typeof(k)').pluck().all()).toEqual(
      conn(a).prepare('SELECT typeof(k) FROM t ORDER BY typeof(k)').pluck().all(),
    )
  })

  // 256 or more fresh inserts fold in bulk, through a temporary table: keys keep their type.
  it('untyped keys of every storage class keep it through a bulk fold', () => {
    const a = replica('CREATE TABLE t (k PRIMARY KEY, v)', ['t'])
    const b = replica('CREATE TABLE t (k PRIMARY KEY, v)', ['t'])
    const ins = conn(a).prepare('INSERT INTO t VALUES (?, ?)')
    conn(a).transaction(() => {
      for (let i = 0; i < 100; i++) {
        ins.run(BigInt(i), 'int')
        ins.run(String(i), 'text')
        ins.run(Buffer.from([i]), 'blob')
        ins.run(i + 0.5, 'real')
      }
    })()
    expect(sync(a, b).applied).toBe(400 * 2)
    const kinds = (r: Replica) =>
      conn(r).prepare('SELECT typeof(k) AS t, count(*) AS n FROM t GROUP BY typeof(k) ORDER BY 1').all()
    expect(kinds(b)).toEqual([
      { t: 'blob', n: 100 },
      { t: 'integer', n: 100 },
      { t: 'real', n: 100 },
      { t: 'text', n: 100 },
    ])
    expectSameRows(a, b, 't')
    // Their metadata rows have the keys' types too: updates of every row find them.
    conn(a).exec("UPDATE t SET v = v || '!'")
    expect(sync(a, b).applied).toBe(400)
    expectSameRows(a, b, 't')
  })

  // An import skips looking keys up when all of them sort after the receiver's last key;
  // that order must be SQLite's (UTF-8 bytes), not JavaScript's (UTF-16 code units).
  it('text keys beyond U+FFFF next to keys just below it merge as existing rows', () => {
    const ddl = 'CREATE TABLE t (k TEXT PRIMARY KEY, v)'
    const a = replica(ddl, ['t'])
    const b = replica(ddl, ['t'])
    // In UTF-8 the emoji (F0 ..) sorts after U+FFFD (EF ..); in UTF-16 before it.
    conn(a).prepare('INSERT INTO t VALUES (?, ?)').run('\u{1F600}', 1)
    conn(a).prepare('INSERT INTO t VALUES (?, ?)').run('\uFFFD', 1)
    conn(a).prepare('INSERT INTO t VALUES (?, ?)').run('a', 1)
    sync(a, b)
    // The receiver's last key is the emoji; U+FFFD sorts after it in JavaScript only. The
    // payload holds enough keys (64) for the import to consider skipping the lookups.
    conn(a).prepare('UPDATE t SET v = 2 WHERE k = ?').run('\uFFFD')
    for (let i = 0; i < 63; i++) conn(a).prepare('INSERT INTO t VALUES (?, ?)').run(`\uFFFD${i}`, i)
    expect(sync(a, b).applied).toBe(1 + 63 * 2)
    expectSameRows(a, b, 't')
    // Integer keys: new ones after the last arrive, and an old one updated still merges.
    const ci = replica('CREATE TABLE n (k INTEGER PRIMARY KEY, v)', ['n'])
    const di = replica('CREATE TABLE n (k INTEGER PRIMARY KEY, v)', ['n'])
    conn(ci).exec('INSERT INTO n VALUES (1, 1), (5, 1)')
    sync(ci, di)
    conn(ci).exec('UPDATE n SET v = 2 WHERE k = 1')
    for (let k = 9; k < 72; k++) conn(ci).prepare('INSERT INTO n VALUES (?, 1)').run(k)
    expect(sync(ci, di).applied).toBe(1 + 63 * 2)
    expectSameRows(ci, di, 'n')
  })

  it('WITHOUT ROWID tables', () => {
    exercise('CREATE TABLE t (k TEXT PRIMARY KEY, v) WITHOUT ROWID', 't', ['x', 'y', 'z', 'w'])
    exercise('CREATE TABLE t (k INTEGER PRIMARY KEY, v) WITHOUT ROWID', 't', [1n, 2n, 3n, 2n ** 63n - 1n])
  })

  it('changing a key with UPDATE moves the row on the peer', () => {
    for (const ddl of [
      'CREATE TABLE t (k TEXT PRIMARY KEY, v)',
      'CREATE TABLE t (k INTEGER PRIMARY KEY, v)',
      'CREATE TABLE t (k TEXT PRIMARY KEY, v) WITHOUT ROWID',
    ]) {
      const a = replica(ddl, ['t'])
      const b = replica(ddl, ['t'])
      conn(a).exec(`INSERT INTO t VALUES (1, 'one'), (2, 'two')`)
      sync(a, b)
      conn(a).exec('UPDATE t SET k = 10 WHERE k = 1')
      sync(a, b)
      expectSameRows(a, b, 't')
      expect(conn(b).prepare('SELECT v FROM t WHERE k = 10').pluck().get()).toBe('one')
      expect(conn(b).prepare('SELECT count(*) FROM t WHERE k = 1').pluck().get()).toBe(0)
    }
  })

  it('composite key declared in another order than the columns: PRIMARY KEY (b, a)', () => {
    const ddl = 'CREATE TABLE c (a TEXT, b INTEGER, c, d REAL, PRIMARY KEY (b, a))'
    const x = replica(ddl, ['c'])
    const y = replica(ddl, ['c'])
    conn(x).exec(`INSERT INTO c VALUES ('p', 1, 'first', 1.5), ('p', 2, 'second', 2.5), ('q', 1, 'third', NULL),
      ('', -1, x'00', 0.0)`)
    sync(x, y)
    expectSameRows(x, y, 'c')
    // Concurrent edits of different columns of the same row merge.
    conn(x).exec(`UPDATE c SET c = 'x edit' WHERE a = 'p' AND b = 1`)
    conn(y).exec(`UPDATE c SET d = 9.5 WHERE a = 'p' AND b = 1`)
    syncBoth(x, y)
    expectSameRows(x, y, 'c')
    expect(conn(y).prepare(`SELECT c, d FROM c WHERE a = 'p' AND b = 1`).raw().get()).toEqual(['x edit', 9.5])
    // Change one key part; delete another row.
    conn(x).exec(`UPDATE c SET a = 'r' WHERE a = 'q' AND b = 1; DELETE FROM c WHERE a = 'p' AND b = 2`)
    sync(x, y)
    expectSameRows(x, y, 'c')
    expect(conn(y).prepare(`SELECT a, b, c FROM c ORDER BY b, a`).raw().all()).toEqual([
      ['', -1, Buffer.from([0])],
      ['p', 1, 'x edit'],
      ['r', 1, 'third'],
    ])
    // Same columns, the key in the declared column order: another key, so refused.
    const other = replica('CREATE TABLE c (a TEXT, b INTEGER, c, d REAL, PRIMARY KEY (a, b))', ['c'])
    const hash = dbHash(conn(other))
    expect(codeOf(() => other.importChanges(x.exportChanges()))).toBe('SCHEMA_MISMATCH')
    expect(dbHash(conn(other))).toBe(hash)
  })

  it('composite WITHOUT ROWID key with a BLOB part', () => {
    const ddl = 'CREATE TABLE m (g BLOB, n INTEGER, v, PRIMARY KEY (n, g)) WITHOUT ROWID'
    const x = replica(ddl, ['m'])
    const y = replica(ddl, ['m'])
    const ins = conn(x).prepare('INSERT INTO m VALUES (?, ?, ?)')
    ins.run(Buffer.from([1]), 1n, 'a')
    ins.run(Buffer.from([1]), 2n, 'b')
    ins.run(Buffer.alloc(0), 1n, 'c')
    sync(x, y)
    conn(x).exec(`UPDATE m SET v = 'changed' WHERE g = x'01' AND n = 2; DELETE FROM m WHERE g = x'' AND n = 1`)
    sync(x, y)
    expectSameRows(x, y, 'm')
    expect(rows(y, 'm')).toHaveLength(2)
  })
})

// ---------------------------------------------------------------------------------------

describe('table shapes', () => {
  it('quoted table and column names with spaces, quotes and keywords', () => {
    const table = `my "odd" table's name`
    const ddl = `CREATE TABLE ${quoteId(table)} (
      ${quoteId('the id')} TEXT PRIMARY KEY,
      ${quoteId('col "one"')} INTEGER,
      ${quoteId("it's")} TEXT,
      ${quoteId('select')},
      ${quoteId('a.b')} REAL
    )`
    const x = replica(ddl, [table])
    const y = replica(ddl, [table])
    const t = quoteId(table)
    conn(x).prepare(`INSERT INTO ${t} VALUES (?, ?, ?, ?, ?)`).run('k 1', 1n, "o'neil", 'kw', 1.25)
    conn(x).prepare(`INSERT INTO ${t} VALUES (?, ?, ?, ?, ?)`).run(`k "2"`, 2n, 'two', null, null)
    sync(x, y)
    expectSameRows(x, y, table)
    conn(x).exec(`UPDATE ${t} SET ${quoteId('col "one"')} = 10 WHERE ${quoteId('the id')} = 'k 1'`)
    conn(y).exec(`UPDATE ${t} SET ${quoteId('select')} = 'y' WHERE ${quoteId('the id')} = 'k 1'`)
    syncBoth(x, y)
    expectSameRows(x, y, table)
    expect(
      y.db
        .prepare(`SELECT ${quoteId('col "one"')}, ${quoteId('select')} FROM ${t} WHERE ${quoteId('the id')} = 'k 1'`)
        .raw()
        .get(),
    ).toEqual([10, 'y'])
    // A conflict on a quoted column names it correctly.
    conn(x).exec(`UPDATE ${t} SET ${quoteId("it's")} = 'x wins?' WHERE ${quoteId('the id')} = 'k 1'`)
    conn(y).exec(`UPDATE ${t} SET ${quoteId("it's")} = 'y wins?' WHERE ${quoteId('the id')} = 'k 1'`)
    syncBoth(x, y)
    expectSameRows(x, y, table)
    const conflicts = [...x.conflicts(), ...y.conflicts()]
    expect(conflicts.length).toBeGreaterThan(0)
    for (const c of conflicts) {
      expect(c.table).toBe(table)
      expect(c.column).toBe("it's")
      expect(c.pk).toEqual(['k 1'])
    }
    conn(x).exec(`UPDATE ${t} SET ${quoteId('the id')} = 'k 3' WHERE ${quoteId('the id')} = 'k 1'`)
    conn(x).exec(`DELETE FROM ${t} WHERE ${quoteId('the id')} = 'k "2"'`)
    sync(x, y)
    expectSameRows(x, y, table)
    expect(rows(y, table)).toHaveLength(1)
  })

  it('NOT NULL columns without a default', () => {
    const ddl = 'CREATE TABLE nn (id INTEGER PRIMARY KEY, a TEXT NOT NULL, b INTEGER NOT NULL, c BLOB NOT NULL)'
    const x = replica(ddl, ['nn'])
    const y = replica(ddl, ['nn'])
    conn(x).exec(`INSERT INTO nn VALUES (1, 'a', 1, x''), (2, 'b', 2, x'02')`)
    sync(x, y)
    expectSameRows(x, y, 'nn')
    // Update single columns on each side; a late joiner receives complete rows.
    conn(x).exec(`UPDATE nn SET a = 'a2' WHERE id = 1`)
    conn(y).exec(`UPDATE nn SET b = 20 WHERE id = 1`)
    syncBoth(x, y)
    expectSameRows(x, y, 'nn')
    const late = replica(ddl, ['nn'])
    sync(y, late)
    expectSameRows(x, late, 'nn')
    // Delete and re-insert travels too.
    conn(x).exec(`DELETE FROM nn WHERE id = 2; INSERT INTO nn VALUES (2, 'again', 3, x'03')`)
    sync(x, y)
    sync(x, late)
    expectSameRows(x, y, 'nn')
    expectSameRows(x, late, 'nn')
    conn(y).exec(`UPDATE nn SET c = x'ff' WHERE id = 2`)
    sync(y, late)
    expectSameRows(y, late, 'nn')
  })

  it('columns with defaults, CHECK constraints and generated-free expressions sync', () => {
    const ddl = `CREATE TABLE d (id TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 7 CHECK (n >= 0),
      s TEXT DEFAULT 'dflt', at TEXT DEFAULT CURRENT_DATE)`
    const x = replica(ddl, ['d'])
    const y = replica(ddl, ['d'])
    conn(x).exec(`INSERT INTO d (id) VALUES ('a'); INSERT INTO d (id, n, s) VALUES ('b', 0, NULL)`)
    sync(x, y)
    expectSameRows(x, y, 'd')
  })

  it('more than 62 data columns (several change-mask words)', () => {
    const cols = Array.from({ length: 130 }, (_, i) => `c${i}`)
    const ddl = `CREATE TABLE wide (id INTEGER PRIMARY KEY, ${cols.map((c) => `${c} INTEGER`).join(', ')})`
    const x = replica(ddl, ['wide'])
    const y = replica(ddl, ['wide'])
    conn(x).exec(`INSERT INTO wide (id, ${cols.join(', ')}) VALUES (1, ${cols.map((_, i) => i).join(', ')})`)
    sync(x, y)
    expectSameRows(x, y, 'wide')
    for (const i of [0, 61, 62, 63, 100, 123, 124, 129]) {
      conn(x).exec(`UPDATE wide SET c${i} = ${1000 + i} WHERE id = 1`)
      expect(sync(x, y).applied).toBe(1)
      expectSameRows(x, y, 'wide')
    }
    // Concurrent edits of columns in different mask words merge per column.
    conn(x).exec('UPDATE wide SET c5 = -5, c70 = -70 WHERE id = 1')
    conn(y).exec('UPDATE wide SET c6 = -6, c128 = -128 WHERE id = 1')
    syncBoth(x, y)
    expectSameRows(x, y, 'wide')
    expect(conn(y).prepare('SELECT c5, c6, c70, c128 FROM wide').raw().get()).toEqual([-5, -6, -70, -128])
  })

  it('an update of a high column (bit >= 53 of a mask word) does not touch other columns', () => {
    const cols = Array.from({ length: 64 }, (_, i) => `c${i}`)
    const ddl = `CREATE TABLE wide (id INTEGER PRIMARY KEY, ${cols.map((c) => `${c} INTEGER`).join(', ')})`
    const x = replica(ddl, ['wide'])
    const y = replica(ddl, ['wide'])
    conn(x).exec(`INSERT INTO wide (id, ${cols.join(', ')}) VALUES (1, ${cols.map((_, i) => i).join(', ')})`)
    sync(x, y)
    // For each column: exactly one cell applied, and the new value arrived.
    const outcomes = []
    for (let i = 50; i < 64; i++) {
      conn(x).exec(`UPDATE wide SET c${i} = -${i} WHERE id = 1`)
      const applied = sync(x, y).applied
      const arrived = conn(y).prepare(`SELECT c${i} FROM wide`).pluck().get() === -i
      outcomes.push({ column: `c${i}`, applied, arrived })
    }
    expect(outcomes).toEqual(
      Array.from({ length: 14 }, (_, k) => ({ column: `c${50 + k}`, applied: 1, arrived: true })),
    )
    // The user-visible effect: y edits c3 first, x edits c60 afterwards; y's edit must survive.
    conn(y).exec('UPDATE wide SET c3 = 333, c4 = 444 WHERE id = 1')
    y.versionVector()
    conn(x).exec('UPDATE wide SET c60 = 600 WHERE id = 1')
    syncBoth(x, y)
    expectSameRows(x, y, 'wide')
    expect(conn(x).prepare('SELECT c3, c4, c60 FROM wide').raw().get()).toEqual([333, 444, 600])
    expect([...x.conflicts(), ...y.conflicts()]).toEqual([])
  })

  it('a table with only key columns', () => {
    const ddl = 'CREATE TABLE pairs (a TEXT, b TEXT, PRIMARY KEY (a, b))'
    const x = replica(ddl, ['pairs'])
    const y = replica(ddl, ['pairs'])
    conn(x).exec(`INSERT INTO pairs VALUES ('a', 'b'), ('a', 'c'), ('b', 'c')`)
    sync(x, y)
    conn(x).exec(`DELETE FROM pairs WHERE a = 'a' AND b = 'c'; UPDATE pairs SET b = 'z' WHERE a = 'b'`)
    sync(x, y)
    expectSameRows(x, y, 'pairs')
    expect(rows(y, 'pairs')).toHaveLength(2)
  })
})

// ---------------------------------------------------------------------------------------

describe('foreign keys', () => {
  const PARENT = 'CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT)'
  const CHILD = 'CREATE TABLE child (id INTEGER PRIMARY KEY, pid INTEGER NOT NULL REFERENCES parent (id), v TEXT)'
  const CASCADE_CHILD = `CREATE TABLE child (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent (id)
    ON DELETE CASCADE, v TEXT)`

  function fkReplica(order: string[], child = CHILD): Replica {
    const r = replica([], [])
    conn(r).exec('PRAGMA foreign_keys = ON')
    conn(r).exec(PARENT)
    conn(r).exec(child)
    for (const t of order) r.enableSync(t)
    return r
  }

  /** Every live metadata row has its user row and vice versa (single-column keys). */
  function expectMetadataMatchesTable(r: Replica, table: string, key: string): void {
    const id = conn(r).prepare('SELECT id FROM _converge_tables WHERE name = ?').pluck().get(table)
    const meta = conn(r).prepare(`SELECT k0 FROM _converge_rows_${id} WHERE cl % 2 = 1 ORDER BY k0`).pluck().all()
    const live = conn(r).prepare(`SELECT ${key} FROM ${table} ORDER BY ${key}`).pluck().all()
    expect(live, `${table}: live rows vs live metadata`).toEqual(meta)
  }

  for (const order of [
    ['child', 'parent'],
    ['parent', 'child'],
  ]) {
    it(`children arriving in the same payload as their parents (tables synced as ${order.join(', ')})`, () => {
      const x = fkReplica(order)
      const y = fkReplica(order)
      conn(x).exec(`INSERT INTO parent VALUES (1, 'p1'), (2, 'p2');
        INSERT INTO child VALUES (10, 1, 'c10'), (11, 1, 'c11'), (20, 2, 'c20')`)
      expect(sync(x, y).applied).toBeGreaterThan(0)
      expectSameRows(x, y, 'parent')
      expectSameRows(x, y, 'child')
      expect(conn(y).pragma('foreign_key_check')).toEqual([])
      expect(conn(y).pragma('foreign_keys', { simple: true })).toBe(1)

      // Re-parenting to a new parent and deleting the old one, in one payload.
      conn(x).exec(`INSERT INTO parent VALUES (3, 'p3'); UPDATE child SET pid = 3 WHERE pid = 1;
        DELETE FROM parent WHERE id = 1`)
      sync(x, y)
      expectSameRows(x, y, 'parent')
      expectSameRows(x, y, 'child')
      expect(conn(y).pragma('foreign_key_check')).toEqual([])

      // A parent and its children deleted and re-created in one payload.
      conn(x).exec(`DELETE FROM child WHERE pid = 2; DELETE FROM parent WHERE id = 2;
        INSERT INTO parent VALUES (2, 'p2 again'); INSERT INTO child VALUES (21, 2, 'c21')`)
      sync(x, y)
      expectSameRows(x, y, 'parent')
      expectSameRows(x, y, 'child')
      expect(conn(y).pragma('foreign_key_check')).toEqual([])
      expectMetadataMatchesTable(y, 'child', 'id')
    })

    it(`ON DELETE CASCADE on the receiver does not make replicas diverge (tables synced as ${order.join(', ')})`, () => {
      const x = fkReplica(order, CASCADE_CHILD)
      const y = fkReplica(order, CASCADE_CHILD)
      conn(x).exec(`INSERT INTO parent VALUES (1, 'p1'); INSERT INTO child VALUES (11, 1, 'c11'), (12, 1, 'c12')`)
      sync(x, y)
      // x moves child 11 to a new parent, then deletes the old parent (cascading to 12).
      conn(x).exec(`INSERT INTO parent VALUES (3, 'p3'); UPDATE child SET pid = 3 WHERE id = 11;
        DELETE FROM parent WHERE id = 1`)
      expect(conn(x).prepare('SELECT id, pid FROM child').raw().all()).toEqual([[11, 3]])
      sync(x, y)
      expectSameRows(x, y, 'parent')
      expectSameRows(x, y, 'child')
      expectMetadataMatchesTable(y, 'child', 'id')
      // A third replica fed only by y gets the same rows.
      const z = fkReplica(order, CASCADE_CHILD)
      sync(y, z)
      expectSameRows(x, z, 'child')
    })
  }

  it('ON DELETE CASCADE: a parent deleted while a peer adds a child converges', () => {
    const x = fkReplica(['parent', 'child'], CASCADE_CHILD)
    const y = fkReplica(['parent', 'child'], CASCADE_CHILD)
    conn(x).exec(`INSERT INTO parent VALUES (1, 'p1')`)
    sync(x, y)
    conn(x).exec('DELETE FROM parent WHERE id = 1')
    conn(y).exec(`INSERT INTO child VALUES (10, 1, 'added concurrently')`)
    syncBoth(x, y)
    syncBoth(x, y)
    expectSameRows(x, y, 'parent')
    expectSameRows(x, y, 'child')
    for (const r of [x, y]) {
      expect(conn(r).pragma('foreign_key_check')).toEqual([])
      expectMetadataMatchesTable(r, 'child', 'id')
    }
  })

  it('a payload that would leave a dangling reference is CONSTRAINT and changes nothing', () => {
    const x = fkReplica(['parent', 'child'])
    const y = fkReplica(['parent', 'child'])
    conn(x).exec(`INSERT INTO parent VALUES (1, 'p1')`)
    sync(x, y)
    // Concurrently: x deletes the parent, y adds a child to it.
    conn(x).exec('DELETE FROM parent WHERE id = 1')
    conn(y).exec(`INSERT INTO child VALUES (10, 1, 'orphan to be')`)
    const payload = x.exportChanges(y.versionVector())
    const hash = dbHash(conn(y))
    expect(codeOf(() => y.importChanges(payload))).toBe('CONSTRAINT')
    expect(dbHash(conn(y))).toBe(hash)
    expect(conn(y).pragma('foreign_key_check')).toEqual([])
    // The replica is still usable afterwards: triggers are in place and capture writes.
    conn(y).exec(`INSERT INTO parent VALUES (5, 'p5')`)
    const z = fkReplica(['parent', 'child'])
    sync(y, z)
    expect(conn(z).prepare('SELECT name FROM parent WHERE id = 5').pluck().get()).toBe('p5')
    expect(conn(z).prepare('SELECT v FROM child WHERE id = 10').pluck().get()).toBe('orphan to be')
  })
})

// ---------------------------------------------------------------------------------------

describe('enableSync', () => {
  it('a table without a primary key is NO_PRIMARY_KEY and nothing is installed', () => {
    const r = replica(['CREATE TABLE nopk (a, b)', 'CREATE TABLE rowidonly (a INTEGER, b UNIQUE)'])
    const hash = dbHash(conn(r))
    expect(codeOf(() => r.enableSync('nopk'))).toBe('NO_PRIMARY_KEY')
    expect(codeOf(() => r.enableSync('rowidonly'))).toBe('NO_PRIMARY_KEY')
    expect(dbHash(conn(r))).toBe(hash)
    expect(r.syncedTables()).toEqual([])
    try {
      r.enableSync('nopk')
    } catch (e) {
      expect((e as ConvergeError).message).toContain('nopk')
      expect((e as ConvergeError).details.table).toBe('nopk')
    }
  })

  it('a missing table (or a view) is NO_SUCH_TABLE; an internal table is BAD_ARGUMENT', () => {
    const r = replica(['CREATE TABLE t (id PRIMARY KEY)', 'CREATE VIEW vw AS SELECT * FROM t'], ['t'])
    const hash = dbHash(conn(r))
    expect(codeOf(() => r.enableSync('missing'))).toBe('NO_SUCH_TABLE')
    expect(codeOf(() => r.enableSync('vw'))).toBe('NO_SUCH_TABLE')
    expect(codeOf(() => r.enableSync('_converge_state'))).toBe('BAD_ARGUMENT')
    expect(dbHash(conn(r))).toBe(hash)
    expect(r.syncedTables()).toEqual(['t'])
  })

  it('is idempotent: a second call changes nothing and writes are captured once', () => {
    const ddl = 'CREATE TABLE t (id TEXT PRIMARY KEY, v)'
    const x = replica(ddl, ['t'])
    const triggers = () =>
      conn(x).prepare(`SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' ORDER BY name`).all()
    const before = triggers()
    expect(before.length).toBeGreaterThan(0)
    const hash = dbHash(conn(x))
    x.enableSync('t')
    x.enableSync('t')
    expect(dbHash(conn(x))).toBe(hash)
    expect(triggers()).toEqual(before)
    conn(x).exec(`INSERT INTO t VALUES ('a', 1); UPDATE t SET v = 2 WHERE id = 'a'`)
    const y = replica(ddl, ['t'])
    expect(sync(x, y).applied).toBe(2) // one row life + one cell, not doubled
    expect(x.syncedTables()).toEqual(['t'])
  })

  it('is idempotent across reopen of a file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'converge-types-'))
    try {
      const file = join(dir, 'r.db')
      const x = openReplica(file)
      conn(x).exec('CREATE TABLE t (id TEXT PRIMARY KEY, v)')
      x.enableSync('t')
      conn(x).exec(`INSERT INTO t VALUES ('a', 1)`)
      x.close()
      const again = openReplica(file)
      open.push(again)
      expect(again.syncedTables()).toEqual(['t'])
      again.versionVector()
      const hash = dbHash(conn(again))
      again.enableSync('t')
      expect(dbHash(conn(again))).toBe(hash)
      conn(again).exec(`INSERT INTO t VALUES ('b', 2)`)
      const y = replica('CREATE TABLE t (id TEXT PRIMARY KEY, v)', ['t'])
      sync(again, y)
      expectSameRows(again, y, 't')
      expect(rows(y, 't')).toHaveLength(2)
    } finally {
      for (const r of open.splice(0)) if (conn(r).open) r.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('rows already in the table when sync is enabled are synced', () => {
    const ddl = 'CREATE TABLE pre (id INTEGER PRIMARY KEY, v TEXT, w)'
    const x = replica(ddl)
    conn(x).exec(`INSERT INTO pre VALUES (1, 'one', 1.0), (2, 'two', x'02'), (3, NULL, NULL)`)
    x.enableSync('pre')
    const y = replica(ddl, ['pre'])
    expect(sync(x, y).applied).toBeGreaterThanOrEqual(3)
    expectSameRows(x, y, 'pre')
    // ...and they behave like any synced row afterwards.
    conn(y).exec(`UPDATE pre SET v = 'uno' WHERE id = 1; DELETE FROM pre WHERE id = 3`)
    sync(y, x)
    expectSameRows(x, y, 'pre')
    expect(rows(x, 'pre')).toHaveLength(2)
  })

  it('pre-existing rows on both sides with the same key merge like concurrent inserts', () => {
    const ddl = 'CREATE TABLE pre (id INTEGER PRIMARY KEY, v TEXT)'
    const x = replica(ddl)
    const y = replica(ddl)
    conn(x).exec(`INSERT INTO pre VALUES (1, 'x'), (2, 'only x')`)
    conn(y).exec(`INSERT INTO pre VALUES (1, 'y'), (3, 'only y')`)
    x.enableSync('pre')
    y.enableSync('pre')
    syncBoth(x, y)
    syncBoth(x, y)
    expectSameRows(x, y, 'pre')
    expect(rows(x, 'pre')).toHaveLength(3)
  })
})

// ---------------------------------------------------------------------------------------

describe('site id', () => {
  const dirs: string[] = []
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true })
  })
  const tempFile = () => {
    const dir = mkdtempSync(join(tmpdir(), 'converge-site-'))
    dirs.push(dir)
    return join(dir, 'site.db')
  }

  it('is 32 lowercase hex, random per new replica, and stable across reopen', () => {
    const file = tempFile()
    const x = openReplica(file)
    const id = x.siteId
    expect(id).toMatch(/^[0-9a-f]{32}$/)
    conn(x).exec('CREATE TABLE t (id PRIMARY KEY, v)')
    x.enableSync('t')
    conn(x).exec(`INSERT INTO t VALUES (1, 'a')`)
    const vector = x.versionVector()
    x.close()
    const again = openReplica(file)
    expect(again.siteId).toBe(id)
    expect(again.versionVector()).toEqual(vector)
    // Passing the same id again is fine.
    again.close()
    const third = openReplica(file, { siteId: id })
    expect(third.siteId).toBe(id)
    third.close()
    const other = openReplica(':memory:')
    expect(other.siteId).not.toBe(id)
    other.close()
  })

  it('a siteId given for a new file is used and kept', () => {
    const file = tempFile()
    const id = '0123456789abcdef0123456789abcdef'
    const x = openReplica(file, { siteId: id })
    expect(x.siteId).toBe(id)
    x.close()
    const again = openReplica(file)
    expect(again.siteId).toBe(id)
    again.close()
  })

  it('an invalid siteId is BAD_ARGUMENT', () => {
    for (const bad of [
      '',
      'abc',
      '0123456789ABCDEF0123456789ABCDEF',
      '0123456789abcdef0123456789abcdeg',
      '0123456789abcdef0123456789abcde',
      '0123456789abcdef0123456789abcdef0',
      ' 0123456789abcdef0123456789abcde',
      '0123456789abcdef\n123456789abcdef',
    ]) {
      expect(
        codeOf(() => openReplica(':memory:', { siteId: bad })),
        JSON.stringify(bad),
      ).toBe('BAD_ARGUMENT')
    }
    expect(codeOf(() => openReplica(':memory:', { siteId: 42 as unknown as string }))).toBe('BAD_ARGUMENT')
  })

  it('a different siteId for an existing file is BAD_ARGUMENT and leaves the file as it was', () => {
    const file = tempFile()
    const x = openReplica(file)
    conn(x).exec('CREATE TABLE t (id PRIMARY KEY)')
    x.enableSync('t')
    const id = x.siteId
    x.close()
    const other = id === 'f'.repeat(32) ? 'e'.repeat(32) : 'f'.repeat(32)
    expect(codeOf(() => openReplica(file, { siteId: other }))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => openReplica(file, { siteId: 'NOT HEX' }))).toBe('BAD_ARGUMENT')
    const again = openReplica(file)
    expect(again.siteId).toBe(id)
    again.close()
  })
})
