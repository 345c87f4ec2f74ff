/**
 * Living schemas: keeps a synced table's metadata and triggers in step with its definition
 * when the app changes it with plain SQL. `ALTER TABLE ... ADD COLUMN` is followed: the new
 * triggers watch the new column, existing metadata rows stop claiming a version for it,
 * and writes to it made before the engine noticed are logged. Dropping or renaming a
 * synced column, or changing the key, is refused with `SCHEMA_CHANGE_UNSUPPORTED`. New or
 * recreated indexes and foreign keys regenerate the triggers.
 */

import { sha256 } from '@noble/hashes/sha2.js'
import { ConvergeError } from '../core/errors.js'
import { sameBytes } from '../core/values.js'
import type { SqliteDatabase } from '../driver/types.js'
import { bytesToHex } from '../wire/payload.js'
import { keyColumns, logTable, MASK_BITS, maskWords, PREFIX, rowsTable } from './metadata.js'
import { checkTableOptions, readTableSchema, type TableSchema } from './schema.js'
import { NOW_MS_SQL, quoteId } from './sql.js'
import { createTriggersSql, dropTriggersSql, OP_INSERT, OP_UPDATE } from './triggers.js'

/** A row of `_converge_tables`. */
export interface StoredTable {
  id: number
  name: string
  hash: Uint8Array
  options: string | null
  /** JSON of the key and data columns (name, affinity) the metadata was built for. */
  columns: string | null
  /** Digest of the trigger SQL installed for the table. */
  triggers: string | null
  /** See SyncedTable.clFloor. */
  clfloor: number
}

interface StoredColumns {
  pk: [string, string][]
  data: [string, string][]
}

/** The column list stored with a synced table. */
export function columnsJson(schema: TableSchema): string {
  const cols: StoredColumns = {
    pk: schema.pk.map((c) => [c.name, c.affinity]),
    data: schema.data.map((c) => [c.name, c.affinity]),
  }
  return JSON.stringify(cols)
}

/** Digest of the trigger SQL of a table: tells whether the installed triggers are current. */
export function triggersDigest(id: number, schema: TableSchema): string {
  return bytesToHex(sha256(new TextEncoder().encode(createTriggersSql(id, schema))).subarray(0, 8))
}

function unsupported(table: string, what: string): ConvergeError {
  return new ConvergeError(
    'SCHEMA_CHANGE_UNSUPPORTED',
    `synced table ${table}: ${what}. Synced columns cannot be dropped, renamed or retyped and the primary key cannot change, because other replicas still merge by them. The safe path: add a new column (ALTER TABLE ... ADD COLUMN) or create a new table and enable sync on it, then stop using the old one.`,
    { table },
  )
}

/**
 * Reads a synced table's current definition and brings its metadata and triggers up to
 * date. `known` is the schema this object used so far (undefined on first load). Returns
 * the schema to use and whether anything was rebuilt (the caller then makes a new
 * SyncedTable). Runs inside the caller's write transaction.
 */
export function reconcileTable(
  db: SqliteDatabase,
  stored: StoredTable,
  known: TableSchema | undefined,
): { schema: TableSchema; rebuilt: boolean } {
  const options = checkTableOptions(stored.name, stored.options ? JSON.parse(stored.options) : undefined)
  let schema: TableSchema
  try {
    schema = readTableSchema(db, stored.name, options)
  } catch (err) {
    if (err instanceof ConvergeError && err.code === 'NO_SUCH_TABLE')
      throw unsupported(stored.name, 'the table is gone')
    if (err instanceof ConvergeError && err.code === 'NO_PRIMARY_KEY')
      throw unsupported(stored.name, 'its primary key is gone')
    throw err
  }
  let rebuilt = false
  if (!sameBytes(schema.hash, stored.hash)) {
    if (stored.columns === null) {
      throw new ConvergeError(
        'SCHEMA_MISMATCH',
        `synced table ${stored.name} was altered while an older version of sqlite-converge managed it; it cannot be migrated`,
        { table: stored.name },
      )
    }
    const old = JSON.parse(stored.columns) as StoredColumns
    checkExtension(stored.name, old, schema)
    addColumns(db, stored.id, old.data.length, schema)
    db.prepare(`UPDATE ${PREFIX}tables SET hash = ?, columns = ? WHERE id = ?`).run(
      schema.hash,
      columnsJson(schema),
      stored.id,
    )
    rebuilt = true
  } else if (stored.columns === null) {
    db.prepare(`UPDATE ${PREFIX}tables SET columns = ? WHERE id = ?`).run(columnsJson(schema), stored.id)
  }
  const digest = triggersDigest(stored.id, schema)
  const installed = (
    db
      .prepare(`SELECT count(*) AS n FROM sqlite_schema WHERE type = 'trigger' AND name LIKE ? ESCAPE '\\'`)
      .get(`${PREFIX.replaceAll('_', '\\_')}${stored.id}\\_%`) as { n: number }
  ).n
  const expected = (createTriggersSql(stored.id, schema).match(/CREATE TRIGGER/g) ?? []).length
  if (rebuilt || digest !== stored.triggers || installed !== expected) {
    db.exec(dropTriggersSql(stored.id))
    db.exec(createTriggersSql(stored.id, schema))
    db.prepare(`UPDATE ${PREFIX}tables SET triggers = ? WHERE id = ?`).run(digest, stored.id)
    rebuilt = true
  }
  if (known !== undefined && !sameSchema(known, schema)) rebuilt = true
  return { schema, rebuilt: rebuilt || known === undefined }
}

/** The only change allowed: the same key, the same data columns, new columns after them. */
function checkExtension(table: string, old: StoredColumns, schema: TableSchema): void {
  const pk = schema.pk.map((c) => [c.name, c.affinity])
  if (JSON.stringify(pk) !== JSON.stringify(old.pk)) {
    throw unsupported(
      table,
      `the primary key changed from (${old.pk.map((c) => c.join(' ')).join(', ')}) to (${pk.map((c) => c.join(' ')).join(', ')})`,
    )
  }
  const now = new Map(schema.data.map((c, i) => [c.name, { affinity: c.affinity, index: i }]))
  const gone = old.data.filter(([name]) => !now.has(name)).map(([name]) => name)
  if (gone.length) {
    const oldNames = new Set(old.data.map(([name]) => name))
    const added = schema.data.filter((c) => !oldNames.has(c.name)).map((c) => c.name)
    throw unsupported(
      table,
      `column${gone.length > 1 ? 's' : ''} ${gone.join(', ')} ${gone.length > 1 ? 'are' : 'is'} gone${added.length ? ` (renamed to ${added.join(', ')}?)` : ''}`,
    )
  }
  old.data.forEach(([name, affinity], i) => {
    const c = now.get(name) as { affinity: string; index: number }
    if (c.affinity !== affinity)
      throw unsupported(table, `column ${name} changed type from ${affinity} to ${c.affinity}`)
    if (c.index !== i) throw unsupported(table, `column ${name} moved`)
  })
}

/** Metadata work after `ALTER TABLE ADD COLUMN` appended data columns `oldCount..`. */
function addColumns(db: SqliteDatabase, id: number, oldCount: number, schema: TableSchema): void {
  const newCount = schema.data.length
  // Rows already here hold the new columns' DEFAULT since their life began: a stamp blob
  // shorter than the columns says so for the missing cells (see decodeRow), and every
  // write to the column wins over it. A NULL blob means "every cell has the row's stamp",
  // so those become explicit blobs for the old columns.
  if (oldCount > 0) {
    const uniform = `X'${'03'.repeat(oldCount)}'`
    db.exec(`UPDATE ${rowsTable(id)} SET v = ${uniform} WHERE v IS NULL AND cl % 2 = 1`)
  }
  for (let w = maskWords(oldCount); w < maskWords(newCount); w++) {
    db.exec(`ALTER TABLE ${logTable(id)} ADD COLUMN m${w} INTEGER NOT NULL DEFAULT 0`)
  }
  // Writes to the new columns made before the engine noticed them: the old triggers did
  // not watch them, but every row held the default when the column was added, so a row
  // holding anything else was written since.
  const added = schema.data.slice(oldCount)
  const masks = Array.from({ length: maskWords(newCount) }, (_, w) => {
    let m = 0n
    for (let c = oldCount; c < newCount; c++) if (Math.floor(c / MASK_BITS) === w) m |= 1n << BigInt(c % MASK_BITS)
    return m.toString()
  })
  const keys = keyColumns(schema.pk.length)
  const changed = added.map((c) => `${quoteId(c.name)} IS NOT ${c.dflt ?? 'NULL'}`).join(' OR ')
  // Rows whose insert is still in the log need nothing: the insert writes every column.
  const sameKey = keys.map((k, i) => `l.${k} IS t.${quoteId((schema.pk[i] as { name: string }).name)}`).join(' AND ')
  db.exec(
    `INSERT INTO ${logTable(id)} (op, ts, ${[...masks.map((_, w) => `m${w}`), ...keys].join(', ')})
     SELECT ${OP_UPDATE}, ${NOW_MS_SQL}, ${[...masks, ...schema.pk.map((c) => `t.${quoteId(c.name)}`)].join(', ')}
     FROM ${quoteId(schema.name)} t WHERE (${changed})
       AND NOT EXISTS (SELECT 1 FROM ${logTable(id)} l WHERE l.op = ${OP_INSERT} AND ${sameKey})`,
  )
}

function sameSchema(a: TableSchema, b: TableSchema): boolean {
  const sig = (s: TableSchema) =>
    JSON.stringify([s.hash.join(','), s.uniques, s.fkActions, s.parents, s.data.map((c) => [c.notNull, c.dflt])])
  return sig(a) === sig(b)
}
