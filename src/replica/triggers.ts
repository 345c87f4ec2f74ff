/**
 * Capture triggers: plain SQL that appends one row per write to the table's change log,
 * with the wall-clock time and, for updates, a bitmask of the columns that changed. They
 * call no function of ours, so writes from any process or an old `sqlite3` shell are
 * captured; SQL stays within what SQLite 3.35 understands.
 */
import { keyColumns, logTable, MASK_BITS, maskWords, PREFIX } from './metadata.js'
import type { TableSchema } from './schema.js'
import { NOW_MS_SQL, quoteId, quoteString } from './sql.js'

export const OP_INSERT = 1
export const OP_UPDATE = 2
export const OP_DELETE = 3
/** A row may have been deleted by a REPLACE on another UNIQUE constraint: the fold checks. */
export const OP_CHECK = 4

function triggerName(id: number, kind: string): string {
  return quoteId(`${PREFIX}${id}_${kind}`)
}

/** DROP statements for every capture trigger of a table. */
export function dropTriggersSql(id: number): string {
  return ['ins', 'upd', 'key', 'del', 'uins', 'uupd', 'cins', 'cupd', 'gdel', 'gkey']
    .map((k) => `DROP TRIGGER IF EXISTS ${triggerName(id, k)};`)
    .join('\n')
}

/** CREATE statements for the capture triggers of a table. */
export function createTriggersSql(id: number, schema: TableSchema): string {
  const table = quoteId(schema.name)
  const log = logTable(id)
  const keys = keyColumns(schema.pk.length)
  const words = maskWords(schema.data.length)
  const masks = Array.from({ length: words }, (_, i) => `m${i}`)
  const cols = ['op', 'ts', ...masks, ...keys].join(', ')
  const ref = (prefix: 'NEW' | 'OLD') => schema.pk.map((c) => `${prefix}.${quoteId(c.name)}`).join(', ')
  const all = masks.map(() => '-1').join(', ')
  const none = masks.map(() => '0').join(', ')
  const sameKey = schema.pk.map((c) => `OLD.${quoteId(c.name)} IS NEW.${quoteId(c.name)}`).join(' AND ')
  // One bit per changed data column; a column with no type affinity also compares storage
  // class, so 1 replaced by 1.0 still counts as a change.
  const changed = schema.data.map((c) => {
    const o = `OLD.${quoteId(c.name)}`
    const n = `NEW.${quoteId(c.name)}`
    return c.affinity === 'BLOB' ? `(${o} IS NOT ${n} OR typeof(${o}) <> typeof(${n}))` : `${o} IS NOT ${n}`
  })
  const maskExprs = Array.from({ length: words }, (_, w) => {
    const parts = changed.slice(w * MASK_BITS, (w + 1) * MASK_BITS).map(
      // Exact 64-bit constants: a double would print 2^57 as 144115188075855870.
      (test, i) => `(CASE WHEN ${test} THEN ${1n << BigInt(i)} ELSE 0 END)`,
    )
    return parts.length ? parts.join(' | ') : '0'
  })
  // The cheap test goes in WHEN: a row whose update changed nothing runs no trigger body.
  const anyChanged = changed.length ? changed.join(' OR ') : '0'
  // A key change is the rare case: with UPDATE OF, SQLite skips the trigger unless the
  // statement sets a key column. An INTEGER key may alias the rowid, which an UPDATE can
  // set by the name "rowid" without naming the column, so there it fires on every update.
  const rowidAlias = schema.pk.length === 1 && schema.pk[0]?.type.toUpperCase() === 'INTEGER'
  const keyOf = rowidAlias ? '' : ` OF ${schema.pk.map((c) => quoteId(c.name)).join(', ')}`
  return `
CREATE TRIGGER IF NOT EXISTS ${triggerName(id, 'ins')} AFTER INSERT ON ${table} BEGIN
  INSERT INTO ${log} (${cols}) VALUES (${OP_INSERT}, ${NOW_MS_SQL}, ${all}, ${ref('NEW')});
END;
CREATE TRIGGER IF NOT EXISTS ${triggerName(id, 'upd')} AFTER UPDATE ON ${table} WHEN ${sameKey} AND (${anyChanged}) BEGIN
  INSERT INTO ${log} (${cols}) VALUES (${OP_UPDATE}, ${NOW_MS_SQL}, ${maskExprs.join(', ')}, ${ref('NEW')});
END;
CREATE TRIGGER IF NOT EXISTS ${triggerName(id, 'key')} AFTER UPDATE${keyOf} ON ${table} WHEN NOT (${sameKey}) BEGIN
  INSERT INTO ${log} (${cols}) VALUES (${OP_DELETE}, ${NOW_MS_SQL}, ${none}, ${ref('OLD')});
  INSERT INTO ${log} (${cols}) VALUES (${OP_INSERT}, ${NOW_MS_SQL}, ${all}, ${ref('NEW')});
END;
CREATE TRIGGER IF NOT EXISTS ${triggerName(id, 'del')} AFTER DELETE ON ${table} BEGIN
  INSERT INTO ${log} (${cols}) VALUES (${OP_DELETE}, ${NOW_MS_SQL}, ${none}, ${ref('OLD')});
END;
${uniqueCheckTriggers(id, schema, cols, none)}${counterTriggers(id, schema)}${growOnlyTriggers(id, schema, sameKey)}`
}

/** SQL that aborts the statement with a message the app sees as the SQLite error. */
function raise(message: string): string {
  return `SELECT RAISE(ABORT, ${quoteString(`sqlite-converge: ${message}`)})`
}

/**
 * Counter columns hold INTEGER or REAL, text columns TEXT or NULL: anything else is
 * refused before it is written.
 */
function counterTriggers(id: number, schema: TableSchema): string {
  const counters = schema.data.filter((c) => c.algorithm === 'counter')
  const texts = schema.data.filter((c) => c.algorithm === 'text')
  if (counters.length === 0 && texts.length === 0) return ''
  const table = quoteId(schema.name)
  const notNumber = [
    ...counters.map((c) => `typeof(NEW.${quoteId(c.name)}) NOT IN ('integer', 'real')`),
    ...texts.map((c) => `typeof(NEW.${quoteId(c.name)}) NOT IN ('text', 'null')`),
  ].join(' OR ')
  const names = (cols: typeof counters) => cols.map((c) => c.name).join(', ')
  const rules = [
    counters.length
      ? `counter column${counters.length > 1 ? 's' : ''} ${names(counters)} take INTEGER or REAL values`
      : '',
    texts.length ? `text column${texts.length > 1 ? 's' : ''} ${names(texts)} take TEXT or NULL` : '',
  ]
  const message = raise(`in ${schema.name}, ${rules.filter(Boolean).join('; ')}`)

  return `
CREATE TRIGGER IF NOT EXISTS ${triggerName(id, 'cins')} BEFORE INSERT ON ${table} WHEN ${notNumber} BEGIN
  ${message};
END;
CREATE TRIGGER IF NOT EXISTS ${triggerName(id, 'cupd')} BEFORE UPDATE ON ${table} WHEN ${notNumber} BEGIN
  ${message};
END;
`
}

/** Grow-only tables refuse deletes and key changes (a key change deletes the old key). */
function growOnlyTriggers(id: number, schema: TableSchema, sameKey: string): string {
  if (schema.rows !== 'grow-only') return ''
  const table = quoteId(schema.name)
  return `
CREATE TRIGGER IF NOT EXISTS ${triggerName(id, 'gdel')} BEFORE DELETE ON ${table} BEGIN
  ${raise(`table ${schema.name} is grow-only: rows cannot be deleted`)};
END;
CREATE TRIGGER IF NOT EXISTS ${triggerName(id, 'gkey')} BEFORE UPDATE ON ${table} WHEN NOT (${sameKey}) BEGIN
  ${raise(`table ${schema.name} is grow-only: primary keys cannot change`)};
END;
`
}

/**
 * INSERT OR REPLACE (or UPDATE OR REPLACE) that collides on a secondary UNIQUE constraint
 * deletes the other row without firing DELETE triggers unless recursive_triggers is on,
 * which no other connection can be made to set. So before such a write, the rows it may
 * replace are logged for a check; the fold deletes them only if they are really gone.
 */
function uniqueCheckTriggers(id: number, schema: TableSchema, cols: string, none: string): string {
  if (schema.uniques.length === 0) return ''
  const table = quoteId(schema.name)
  const log = logTable(id)
  const collides = schema.uniques
    .map((set) => `(${set.map((c) => `${quoteId(c)} = NEW.${quoteId(c)}`).join(' AND ')})`)
    .join(' OR ')
  const changed = [...new Set(schema.uniques.flat())]
    .map((c) => `OLD.${quoteId(c)} IS NOT NEW.${quoteId(c)}`)
    .join(' OR ')
  const keys = schema.pk.map((c) => quoteId(c.name)).join(', ')
  const otherKey = schema.pk.map((c) => `${quoteId(c.name)} IS NOT NEW.${quoteId(c.name)}`).join(' OR ')
  // A grow-only table cannot lose a row, so a write that would replace another is refused.
  const check =
    schema.rows === 'grow-only'
      ? `${raise(`table ${schema.name} is grow-only: this write would replace another row`)} WHERE EXISTS (SELECT 1 FROM ${table} WHERE (${collides}) AND (${otherKey}));`
      : `INSERT INTO ${log} (${cols}) SELECT ${OP_CHECK}, ${NOW_MS_SQL}, ${none}, ${keys} FROM ${table} WHERE ${collides};`
  return `
CREATE TRIGGER IF NOT EXISTS ${triggerName(id, 'uins')} BEFORE INSERT ON ${table} BEGIN
  ${check}
END;
CREATE TRIGGER IF NOT EXISTS ${triggerName(id, 'uupd')} BEFORE UPDATE ON ${table} WHEN ${changed} BEGIN
  ${check}
END;
`
}
