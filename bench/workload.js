/** The benchmark workload shared by run.js and big.js: the todos table, its rows, and how they are written. */
import { randomUUID } from 'node:crypto'
import { openReplica } from 'sqlite-converge'

export const SCHEMA = 'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done INTEGER, body TEXT)'
const INSERT = 'INSERT INTO todos (id, title, done, body) VALUES (?, ?, ?, ?)'
const BODY_LENGTH = 100

/** A 100-character body of random lowercase words. */
function randomBody() {
  let s = ''
  while (s.length < BODY_LENGTH) {
    const len = 2 + Math.floor(Math.random() * 8)
    for (let i = 0; i < len; i++) s += String.fromCharCode(97 + Math.floor(Math.random() * 26))
    s += ' '
  }
  return s.slice(0, BODY_LENGTH)
}

/** `n` todo rows as [id, title, done, body], numbered from `first`. */
export function generateRows(n, first = 0) {
  return Array.from({ length: n }, (_, i) => [randomUUID(), `task ${first + i}`, (first + i) % 2, randomBody()])
}

/** Inserts `rows` in one transaction; returns the milliseconds it took. */
export function insertRows(db, rows) {
  const stmt = db.prepare(INSERT)
  const insertAll = db.transaction(() => {
    for (const row of rows) stmt.run(row)
  })
  const start = performance.now()
  insertAll()
  return performance.now() - start
}

/** A fresh replica at `file` with the empty todos table synced. */
export function openSynced(file) {
  const replica = openReplica(file)
  replica.db.exec(SCHEMA)
  replica.enableSync('todos')
  return replica
}
